"""Which mouth shape each moment of synthetic speech shows: phonemes -> shapes, with a written rule.

The shapes are `visemes.SHAPES`. The rule, for espeak-ng's English mnemonics and the CMU phone set that
flite and festival use (and, for training, the phone sets of festival's Italian, Czech, Finnish and Catalan
voices, read the same way: a open, e mid, i spread, o u rounded):
- pauses -> rest; m b p -> closed; f v -> lip_teeth; w and the rounded vowels (u, o, aw as in "thought")
  -> rounded; a-like vowels (father, cat, cup) -> open; e-like vowels and schwa (bed, about, bird) -> mid;
  i-like vowels and y (see, sit, yes) -> spread.
- Diphthongs are two shapes in turn, half the duration each: "my" open then spread, "now" open then
  rounded, "day" mid then spread, "boy" rounded then spread.
- Every other consonant (t d n l s z th k g ng h r sh ch j ...) is made by the tongue, not the lips: the
  lips already hold the vowel the consonant leads into (coarticulation). It takes the shape of the next
  vowel within 0.3 s without a pause between, else the previous one, else mid; such frames are marked
  `coarticulated` (training weighs them half, and the evaluation reports them apart).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from avatar_cam.lipsync.synthetic_speech import Phone, Speech
from avatar_cam.lipsync.visemes import SHAPES

REST, CLOSED, LIP_TEETH, ROUNDED, OPEN, MID, SPREAD = (SHAPES.index(s) for s in
                                                      ("rest", "closed", "lip_teeth", "rounded", "open", "mid", "spread"))
VOWEL_SHAPES = (ROUNDED, OPEN, MID, SPREAD)
_LOOK = 0.3  # s: how far a lingual consonant looks for its vowel

_LIPS = {"p": CLOSED, "b": CLOSED, "m": CLOSED, "f": LIP_TEETH, "v": LIP_TEETH, "w": ROUNDED}

_ESPEAK = {
    **_LIPS, "j": SPREAD,
    "a": OPEN, "aa": OPEN, "a#": OPEN, "A:": OPEN, "A@": OPEN, "A": OPEN, "V": OPEN, "0": OPEN, "a2": MID, "VR": OPEN,
    "u:": ROUNDED, "U": ROUNDED, "O:": ROUNDED, "O@": ROUNDED, "o@": ROUNDED, "O": ROUNDED, "o": ROUNDED,
    "oU": ROUNDED, "0@": ROUNDED, "u": ROUNDED,
    "@": MID, "@2": MID, "@5": MID, "@L": MID, "3": MID, "3:": MID, "e": MID, "E": MID, "e@": MID, "E2": MID,
    "E#": MID, "@-": MID, "I#": SPREAD,
    "i": SPREAD, "i:": SPREAD, "I": SPREAD, "I2": SPREAD, "IR": SPREAD,
    "aI": (OPEN, SPREAD), "aI@": (OPEN, SPREAD, MID), "aI3": (OPEN, SPREAD, MID), "aU": (OPEN, ROUNDED),
    "aU@": (OPEN, ROUNDED, MID), "eI": (MID, SPREAD), "OI": (ROUNDED, SPREAD), "@U": (MID, ROUNDED),
    "i@": (SPREAD, MID), "i@3": (SPREAD, MID), "U@": (ROUNDED, MID),
}
_CMU = {
    **_LIPS, "y": SPREAD,
    "aa": OPEN, "ae": OPEN, "ah": OPEN, "ao": ROUNDED, "uh": ROUNDED, "uw": ROUNDED, "ow": ROUNDED,
    "ax": MID, "axr": MID, "er": MID, "eh": MID, "ih": SPREAD, "iy": SPREAD,
    "aw": (OPEN, ROUNDED), "ay": (OPEN, SPREAD), "ey": (MID, SPREAD), "oy": (ROUNDED, SPREAD),
}
_CMU_PAUSES = {"pau", "h#", "brth", "sil", "#"}
# festival's voices in other languages (training only): plain five-vowel systems, stress marked by "1" and
# length by ":". Finnish "y" is a rounded front vowel; Catalan "ax" a schwa and "J" its palatal glide.
_VOWELS5 = {**_LIPS, "a": OPEN, "e": MID, "E": MID, "i": SPREAD, "o": ROUNDED, "O": ROUNDED, "u": ROUNDED}
_OTHER = {
    "italian": {**_VOWELS5, "j": SPREAD},
    "czech": {**_VOWELS5, "j": SPREAD},
    "finnish": {**_VOWELS5, "y": ROUNDED},
    "catalan": {**_VOWELS5, "ax": MID, "J": SPREAD},
}
_OTHER_PAUSES = {"#", "pau", "sil"}
_GLIDES = {"w", "j", "y", "J"}
_VOWEL_GLIDES = {("finnish", "y")}  # a vowel here, though a glide elsewhere


def _shapes_of(symbol: str, phoneset: str):
    """A shape, a tuple of shapes (in turn), REST, or None (a lingual consonant: coarticulated)."""
    if phoneset == "espeak":
        if symbol.startswith("_") or symbol in ("", "||", "|"):
            return REST
        return _ESPEAK.get(symbol, _ESPEAK.get(symbol.rstrip("0123456789;#")))
    if phoneset in _OTHER:
        return REST if symbol in _OTHER_PAUSES else _OTHER[phoneset].get(symbol.rstrip("01:"))
    if symbol in _CMU_PAUSES:
        return REST
    return _CMU.get(symbol.rstrip("012"))


def _glide(symbol: str, phoneset: str) -> bool:
    return symbol in _GLIDES and (phoneset, symbol) not in _VOWEL_GLIDES


@dataclass(frozen=True)
class Segment:
    start: float
    end: float
    shape: int  # index into SHAPES
    symbol: str
    coarticulated: bool  # a lingual consonant that took a vowel's lip shape


def segments(speech: Speech) -> list[Segment]:
    """The speech's timeline as shape segments (diphthongs split, lingual consonants coarticulated)."""
    phones: list[Phone] = speech.phones
    mapped = [_shapes_of(p.symbol, speech.phoneset) for p in phones]

    def vowel(i: int, step: int) -> int | None:
        """The lip shape of the nearest vowel from phone i in direction `step`, not across a pause."""
        j, t0 = i + step, phones[i].start
        while 0 <= j < len(phones) and mapped[j] != REST and abs(phones[j].start - t0) <= _LOOK:
            m = mapped[j]
            if isinstance(m, tuple):  # a diphthong: the part nearest to phone i
                return m[0] if step > 0 else m[-1]
            if m in VOWEL_SHAPES and not _glide(phones[j].symbol, speech.phoneset):
                return m
            j += step
        return None

    out = []
    for i, (p, m) in enumerate(zip(phones, mapped, strict=True)):
        if m is None:
            shape = vowel(i, +1)
            shape = vowel(i, -1) if shape is None else shape
            out.append(Segment(p.start, p.end, MID if shape is None else shape, p.symbol, True))
        elif isinstance(m, tuple):
            edges = np.linspace(p.start, p.end, len(m) + 1)
            out.extend(Segment(a, b, s, p.symbol, False) for a, b, s in zip(edges[:-1], edges[1:], m, strict=True))
        else:
            out.append(Segment(p.start, p.end, m, p.symbol, False))
    return out


def unmapped(speech: Speech) -> set[str]:
    """Symbols this module treats as lingual consonants (for checking the tables against a synthesizer)."""
    return {p.symbol for p in speech.phones if _shapes_of(p.symbol, speech.phoneset) is None}


def labels_at(segs: list[Segment], times: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Shape index, coarticulated flag and "inside a vowel" flag at each time (rest outside the speech)."""
    times = np.asarray(times, np.float64)
    shape = np.full(len(times), REST, np.int64)
    coart = np.zeros(len(times), bool)
    vowel = np.zeros(len(times), bool)
    if not segs:
        return shape, coart, vowel
    starts = np.array([s.start for s in segs])
    ends = np.array([s.end for s in segs])
    idx = np.searchsorted(starts, times, side="right") - 1
    inside = (idx >= 0) & (times < ends[np.clip(idx, 0, None)])
    seg_shape = np.array([s.shape for s in segs])
    seg_coart = np.array([s.coarticulated for s in segs])
    seg_vowel = np.array([(not s.coarticulated) and s.shape in VOWEL_SHAPES and s.symbol not in _GLIDES
                          for s in segs])
    shape[inside] = seg_shape[idx[inside]]
    coart[inside] = seg_coart[idx[inside]]
    vowel[inside] = seg_vowel[idx[inside]]
    return shape, coart, vowel
