"""How well mouth shapes follow speech, measured on voices the estimator never trained on.

Concern: the numbers of issue 15, from synthetic speech whose phoneme timing is known (flite and festival
voices; the estimator is trained on espeak-ng only). Per video frame (30 fps, the frame clock's window) the
true shape comes from `phonemes.segments`; the metrics are
- frame accuracy: the most likely shape is the true one (all frames, and speech frames only), per shape too;
- closure recall: frames inside m/b/p whose mouth is closed; false closures: frames inside vowels (not
  coarticulated consonants, not glides) whose mouth is closed;
- rounded vs spread: among frames whose true shape is rounded or spread, the share where the rounder of the
  two is the true one.
"Closed" is whatever the caller says the mouth does per frame (the estimator's own closed+rest probability
above one half, or the gap the lite engine draws).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..frame_clock import FrameClock
from ..mel import melspectrogram
from ..renderer import mel_window
from .phonemes import CLOSED, REST, ROUNDED, SPREAD, labels_at, segments
from .synthetic_speech import Speech, festival_speech, flite_speech
from .visemes import SHAPES

# Written for this benchmark: many closures, rounded and spread vowels, and ordinary running speech.
SENTENCES = (
    "Bob may buy my mother a map of Peru.",
    "Who knew you would choose the blue shoes too?",
    "Please keep the green sheep in the field, Steve.",
    "Father's car is parked in the dark yard.",
    "Move over, Mabel; the boat won't float in this pool.",
    "We need to meet at three, it is easy to see.",
    "Paul bought a warm coat for the whole family.",
    "My puppy ate both of my pumpkin pies.",
    "Five brave people waved from the very top.",
    "Look, the moon is full and the room is cool.",
    "Maybe Emma will bring some bread and butter home.",
    "Every evening the river runs past the old mill.",
)
HELD_OUT_VOICES = (("flite", "slt"), ("flite", "rms"), ("flite", "awb"), ("flite", "kal16"),
                   ("festival", "kal_diphone"), ("festival", "cmu_us_slt_arctic_hts"))


def held_out_speech(voices=HELD_OUT_VOICES, sentences=SENTENCES) -> list[Speech]:
    make = {"flite": flite_speech, "festival": festival_speech}
    return [make[synth](text, voice) for synth, voice in voices for text in sentences]


@dataclass
class Frames:
    """One clip cut into frames the way the pipeline does: windows (N,1,80,16) and the truth per frame."""

    mels: np.ndarray
    audio: np.ndarray
    shape: np.ndarray
    coarticulated: np.ndarray
    vowel: np.ndarray
    voice: str = ""


def frames_of(speech: Speech, fps: float = 30.0, lead_s: float = 0.3) -> Frames:
    """Frame k shows time k/fps of the speech with `lead_s` of silence put before and after it."""
    clock = FrameClock(fps=fps)
    pad = np.zeros(int(lead_s * 16000), np.float32)
    audio = np.concatenate([pad, speech.audio, pad])
    mel = melspectrogram(audio)
    n = clock.frame_count(len(audio) / 16000)
    mels = np.stack([mel_window(mel, clock.mel_start(k)) for k in range(n)])[:, None]
    shape, coart, vowel = labels_at(segments(speech), np.arange(n) / fps - lead_s)
    return Frames(mels, audio, shape, coart, vowel, speech.voice)


@dataclass
class Scores:
    frames: int
    frame_accuracy: float
    speech_frame_accuracy: float
    closure_recall: float
    false_closures: float
    rounded_vs_spread: float
    per_shape: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in self.__dict__.items()} | {
            "per_shape": {k: round(v, 4) for k, v in self.per_shape.items()}}


def score(probs: np.ndarray, closed: np.ndarray, clips: list[Frames]) -> Scores:
    """probs (N,K) and closed (N,) bool for the frames of `clips`, concatenated in order."""
    shape = np.concatenate([c.shape for c in clips])
    vowel = np.concatenate([c.vowel for c in clips])
    pred = probs.argmax(1)
    speech = shape != REST
    bilabial = shape == CLOSED
    rs = (shape == ROUNDED) | (shape == SPREAD)
    rounder = np.where(probs[:, ROUNDED] >= probs[:, SPREAD], ROUNDED, SPREAD)
    per = {s: float((pred[shape == i] == i).mean()) for i, s in enumerate(SHAPES) if (shape == i).any()}
    return Scores(
        frames=len(shape),
        frame_accuracy=float((pred == shape).mean()),
        speech_frame_accuracy=float((pred[speech] == shape[speech]).mean()),
        closure_recall=float(closed[bilabial].mean()),
        false_closures=float(closed[vowel].mean()),
        rounded_vs_spread=float((rounder[rs] == shape[rs]).mean()),
        per_shape=per,
    )


def estimator_closed(probs: np.ndarray) -> np.ndarray:
    """The estimator's own closed-mouth decision: closed or rest more likely than not."""
    return probs[:, CLOSED] + probs[:, REST] > 0.5
