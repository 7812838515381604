"""Synthetic speech with its phoneme timeline: espeak-ng (through its library), flite and festival.

Each synthesizer says where every phoneme starts and ends in its own audio, which is what the mouth-shape
estimator is trained on (espeak-ng, and festival voices the benchmark does not use) and measured on (the flite
and festival voices of `bench.visemes.HELD_OUT_VOICES`, which it never trains on).
All audio comes back as float32, 16 kHz mono, with the phoneme times in seconds on that audio.

Needs the synthesizers as system programs (Debian: `espeak-ng flite festival festvox-kallpc16k
festvox-us-slt-hts`; for training also the voices of FESTIVAL_VOICES); a missing one raises `SynthesizerMissing` naming the package to install.
Threads: espeak-ng's library keeps global state; `espeak_speech` serialises its callers with a lock.
"""

from __future__ import annotations

import ctypes
import shutil
import subprocess
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SAMPLE_RATE = 16000


class SynthesizerMissing(RuntimeError):
    """A speech synthesizer this needs is not installed."""


@dataclass(frozen=True)
class Phone:
    symbol: str  # the synthesizer's own mnemonic ("eI" from espeak-ng, "ey" from flite and festival)
    start: float  # seconds
    end: float


@dataclass
class Speech:
    audio: np.ndarray  # float32, 16 kHz mono
    phones: list[Phone]
    phoneset: str  # "espeak" (espeak-ng's English mnemonics), "cmu" (flite's and festival's English), or a
    # festival voice's own language ("italian", "czech", "finnish", "catalan": see FESTIVAL_VOICES)
    voice: str


def _to_16k(audio: np.ndarray, rate: int) -> np.ndarray:
    audio = np.asarray(audio, np.float32)
    if rate == SAMPLE_RATE:
        return audio
    import soxr

    return soxr.resample(audio, rate, SAMPLE_RATE).astype(np.float32)


# --- espeak-ng, through libespeak-ng (its phoneme events carry their sample positions) ---------------------

class _EventId(ctypes.Union):
    _fields_ = [("number", ctypes.c_int), ("name", ctypes.c_char_p), ("string", ctypes.c_char * 8)]


class _Event(ctypes.Structure):  # espeak_EVENT in speak_lib.h
    _fields_ = [("type", ctypes.c_int), ("unique_identifier", ctypes.c_uint), ("text_position", ctypes.c_int),
                ("length", ctypes.c_int), ("audio_position", ctypes.c_int), ("sample", ctypes.c_int),
                ("user_data", ctypes.c_void_p), ("id", _EventId)]


_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.POINTER(_Event))
_EVENT_PHONEME, _EVENT_END_OF_LIST = 7, 0
_RATE, _PITCH, _RANGE = 1, 3, 4  # espeak_PARAMETER
_ESPEAK_LOCK = threading.Lock()
_espeak: dict = {}


def _espeak_lib():
    if not _espeak:
        try:
            lib = ctypes.CDLL("libespeak-ng.so.1")
        except OSError as e:
            raise SynthesizerMissing("libespeak-ng is not installed (Debian: apt-get install espeak-ng)") from e
        # Synchronous output (the callback runs inside espeak_Synth) with phoneme events.
        rate = lib.espeak_Initialize(2, 0, None, 1)
        if rate <= 0:
            raise SynthesizerMissing("libespeak-ng could not start (is espeak-ng-data installed?)")
        _espeak.update(lib=lib, rate=rate, chunks=[], events=[])

        def on_audio(wav, n, events):
            if n > 0:
                _espeak["chunks"].append(np.ctypeslib.as_array(wav, (n,)).copy())
            i = 0
            while events[i].type != _EVENT_END_OF_LIST:
                if events[i].type == _EVENT_PHONEME:
                    _espeak["events"].append((events[i].sample, events[i].id.string.decode("ascii", "replace")))
                i += 1
            return 0

        _espeak["callback"] = _CALLBACK(on_audio)  # kept referenced: the library holds the pointer
        lib.espeak_SetSynthCallback(_espeak["callback"])
    return _espeak


def espeak_speech(text: str, voice: str = "en-us", rate: int = 175, pitch: int = 50, pitch_range: int = 50) -> Speech:
    """Speak `text` with espeak-ng's `voice` (e.g. "en-us+f3"); rate in words per minute, pitch 0..100."""
    with _ESPEAK_LOCK:
        es = _espeak_lib()
        lib = es["lib"]
        if lib.espeak_SetVoiceByName(voice.encode()) != 0:
            raise ValueError(f"espeak-ng has no voice {voice!r} (see `espeak-ng --voices`)")
        for param, value in ((_RATE, rate), (_PITCH, pitch), (_RANGE, pitch_range)):
            lib.espeak_SetParameter(param, int(value), 0)
        es["chunks"].clear()
        es["events"].clear()
        data = text.encode("utf-8")
        lib.espeak_Synth(data, len(data) + 1, 0, 1, 0, 0, None, None)
        lib.espeak_Synchronize()
        sr = es["rate"]
        audio = np.concatenate(es["chunks"]).astype(np.float32) / 32768.0 if es["chunks"] else np.zeros(0, np.float32)
        events = list(es["events"])
    end = len(audio) / sr
    phones = []
    for (sample, sym), nxt in zip(events, events[1:] + [(len(audio), "")], strict=True):
        start, stop = sample / sr, min(nxt[0] / sr, end)
        if stop > start:
            phones.append(Phone(sym, start, stop))
    audio = _to_16k(audio, sr)
    return Speech(audio, _closures_to_stops(audio, phones), "espeak", f"espeak-ng {voice} rate {rate} pitch {pitch}")


_STOPS = {"p", "b", "t", "d", "k", "g", "tS", "dZ"}


def _closures_to_stops(audio: np.ndarray, phones: list[Phone]) -> list[Phone]:
    """espeak-ng's phoneme event for a stop comes at its release: the silent closure before it is reported
    as the end of the phoneme before. Give that silence (5 ms frames 35 dB under the loudest, up to 150 ms
    back) to the stop, where it belongs (lips shut for p and b)."""
    hop = SAMPLE_RATE // 200
    n = len(audio) // hop
    if n == 0:
        return phones
    db = 10 * np.log10(np.mean(audio[: n * hop].reshape(n, hop).astype(np.float64) ** 2, axis=1) + 1e-12)
    quiet = db < db.max() - 35.0
    out = list(phones)
    for i in range(1, len(out)):
        prev, cur = out[i - 1], out[i]
        if cur.symbol not in _STOPS or prev.symbol.startswith("_"):
            continue
        k = int(cur.start * 200)
        j = k
        while j > 0 and k - j < 30 and quiet[j - 1] and (j - 1) / 200 > prev.start + 0.02:
            j -= 1
        if j < k:
            out[i - 1] = Phone(prev.symbol, prev.start, j / 200)
            out[i] = Phone(cur.symbol, j / 200, cur.end)
    return out


# --- flite and festival: other synthesizers, other phone sets (CMU) ----------------------------------------

def _read_wav(path: Path) -> np.ndarray:
    import soundfile

    audio, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    return _to_16k(audio.mean(axis=1), rate)


def _need(program: str, package: str) -> str:
    exe = shutil.which(program)
    if exe is None:
        raise SynthesizerMissing(f"{program} is not installed (Debian: apt-get install {package})")
    return exe


def _ends_to_phones(pairs: list[tuple[str, float]]) -> list[Phone]:
    phones, start = [], 0.0
    for sym, end in pairs:
        if end > start:
            phones.append(Phone(sym, start, end))
            start = end
    return phones


def flite_speech(text: str, voice: str = "slt") -> Speech:
    """Speak `text` with one of flite's voices (`flite -lv`: kal, kal16, awb, rms, slt)."""
    exe = _need("flite", "flite")
    with tempfile.TemporaryDirectory() as d:
        wav = Path(d) / "out.wav"
        out = subprocess.run([exe, "-voice", voice, "-psdur", "-t", text, "-o", str(wav)],
                             capture_output=True, text=True, check=True, timeout=120)
        audio = _read_wav(wav)
    pairs = []
    for item in out.stdout.split():  # "pau:0.193 b:0.224 ...": each phone with its end time
        sym, _, end = item.rpartition(":")
        pairs.append((sym, float(end)))
    return Speech(audio, _ends_to_phones(pairs), "cmu", f"flite {voice}")


FESTIVAL_VOICES = {  # voice -> (the Debian package that has it, its phone set)
    "kal_diphone": ("festvox-kallpc16k", "cmu"),
    "ked_diphone": ("festvox-kdlpc16k", "cmu"),
    "cmu_us_slt_arctic_hts": ("festvox-us-slt-hts", "cmu"),
    # Other languages' voices (they read English text with their own letter-to-sound rules): more speakers and
    # more kinds of synthesis to train on. Their phone sets are mapped to shapes in `phonemes`.
    "lp_diphone": ("festvox-italp16k", "italian"),
    "pc_diphone": ("festvox-itapc16k", "italian"),
    "czech_dita": ("festvox-czech-dita", "czech"),
    "czech_krb": ("festvox-czech-krb", "czech"),
    "czech_ph": ("festival-czech", "czech"),
    "suo_fi_lj_diphone": ("festvox-suopuhe-lj", "finnish"),
    "hy_fi_mv_diphone": ("festvox-suopuhe-mv", "finnish"),
    "upc_ca_ona_hts": ("festvox-ca-ona-hts festival-ca", "catalan"),
}


def festival_speech(text: str, voice: str = "kal_diphone", stretch: float = 1.0) -> Speech:
    """Speak `text` with a festival voice (see FESTIVAL_VOICES); `stretch` > 1 speaks slower."""
    package, phoneset = FESTIVAL_VOICES.get(voice, ("", "cmu"))
    exe = _need("festival", "festival " + package)
    quoted = text.replace("\\", " ").replace('"', " ")
    with tempfile.TemporaryDirectory() as d:
        wav, segs, script = Path(d) / "out.wav", Path(d) / "out.segs", Path(d) / "say.scm"
        # Only when asked: setting it at all changes some voices' timing (the benchmark's must stay as they were).
        tempo = f"(Parameter.set 'Duration_Stretch {float(stretch):.3f})\n" if stretch != 1.0 else ""
        script.write_text(f'(voice_{voice})\n{tempo}'
                          f'(set! u (utt.synth (Utterance Text "{quoted}")))\n'
                          f'(utt.save.wave u "{wav}" \'riff)\n(utt.save.segs u "{segs}")\n')
        subprocess.run([exe, "-b", str(script)], capture_output=True, text=True, check=True, timeout=120)
        if not segs.exists():
            raise SynthesizerMissing(f"festival has no voice {voice} (Debian: apt-get install {package})")
        audio = _read_wav(wav)
        lines = segs.read_text().split("#", 1)[1].split("\n")
    pairs = []
    for line in lines:  # "0.3127 100 b": the end time of each segment
        parts = line.split()
        if len(parts) == 3:
            pairs.append((parts[2], float(parts[0])))
    return Speech(audio, _ends_to_phones(pairs), phoneset, f"festival {voice}" + (f" stretch {stretch:.2f}" if stretch != 1.0 else ""))
