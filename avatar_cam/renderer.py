"""From a frame's audio to its picture: voice gate -> lip-sync engine -> compositor.

The live pipeline and the offline renderer both draw frames through `FrameRenderer`, so a live run over a
file and an offline render of the same file give the same frames.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from .compositor import Compositor, OutputFormat
from .frame_clock import MEL_WINDOW, FrameClock
from .portrait import Portrait
from .voice_gate import VoiceGate

SILENT_MEL = -4.0  # the normalised mel value of digital silence


class LipSync(Protocol):
    """A lip-sync engine: given the face once, draws the lower face for each mel window."""

    name: str

    def set_face(self, portrait: Portrait) -> None: ...

    def lower_faces(self, mels: np.ndarray) -> np.ndarray:
        """mels (B,1,80,16) -> (B,3,96,96) BGR in [0,1]."""
        ...


class Wav2LipLipSync:
    """Wav2Lip on OpenVINO, with the portrait's face features computed once per photo."""

    name = "wav2lip"

    def __init__(self, engine):
        self.engine = engine
        self._features: list[np.ndarray] | None = None

    def set_face(self, portrait: Portrait) -> None:
        self._features = self.engine.encode_face(portrait.face_input[None])

    def lower_faces(self, mels: np.ndarray) -> np.ndarray:
        if self._features is None:
            raise RuntimeError("set_face must be called before lower_faces")
        return self.engine.infer_encoded(mels, self._features)


@dataclass
class FrameInfo:
    index: int
    audio_time: float  # seconds on the audio clock that this frame shows
    alpha: float  # talking weight (0: idle face)
    inferred: bool  # whether the engine ran for this frame


class MelColumns:
    """The most recent mel columns, addressed by absolute column index (the live pipeline's view of the stream)."""

    def __init__(self, keep: int = 400):
        self._cols: deque[np.ndarray] = deque(maxlen=keep)
        self.end = 0  # absolute index one past the newest column

    def extend(self, cols: np.ndarray) -> None:
        for j in range(cols.shape[1]):
            self._cols.append(cols[:, j])
        self.end += cols.shape[1]

    def window(self, start: int) -> np.ndarray:
        out = np.full((80, MEL_WINDOW), SILENT_MEL, np.float32)
        first = self.end - len(self._cols)
        for i in range(MEL_WINDOW):
            j = start + i
            if first <= j < self.end:
                out[:, i] = self._cols[j - first]
        return out


def mel_window(mel: np.ndarray, start: int) -> np.ndarray:
    """Columns [start, start+16) of a whole mel spectrogram, silence outside it."""
    out = np.full((80, MEL_WINDOW), SILENT_MEL, np.float32)
    lo, hi = max(start, 0), min(start + MEL_WINDOW, mel.shape[1])
    if hi > lo:
        out[:, lo - start : hi - start] = mel[:, lo:hi]
    return out


class FrameRenderer:
    """Owned by one frame thread. `set_portrait` may be called between frames to switch the photo."""

    def __init__(self, lipsync: LipSync, portrait: Portrait, fmt: OutputFormat, clock: FrameClock):
        self.lipsync = lipsync
        self.clock = clock
        self.gate = VoiceGate(fps=clock.fps)
        self.set_portrait(portrait, fmt)

    def set_portrait(self, portrait: Portrait, fmt: OutputFormat | None = None) -> None:
        self.compositor = Compositor(portrait, fmt or self.compositor.fmt)
        self.lipsync.set_face(portrait)

    @property
    def idle_frame(self) -> np.ndarray:
        return self.compositor.idle_frame

    def render(self, index: int, mel_win: np.ndarray, audio: np.ndarray, paused: bool = False) -> tuple[np.ndarray, FrameInfo]:
        """One frame from its mel window (80,16) and the audio that window covers."""
        alpha = self.gate.update(audio)
        info = FrameInfo(index, self.clock.audio_time(index), 0.0 if paused else alpha, False)
        if info.alpha <= 0.0:
            return self.compositor.idle_frame.copy(), info
        lower = self.lipsync.lower_faces(mel_win[None, None])[0]
        info.inferred = True
        return self.compositor.compose(lower, info.alpha), info

    def render_clip(self, mel: np.ndarray, audio: np.ndarray, batch: int = 8):
        """Offline: yield (frame, info) for every frame of a whole clip, batching inference for speed.

        Gate decisions are made in frame order first, exactly as live; only the engine calls are batched.
        """
        n = self.clock.frame_count(len(audio) / 16000)
        for first in range(0, n, batch):
            infos, mels = [], []
            for k in range(first, min(first + batch, n)):
                a, b = self.clock.audio_span(k)
                alpha = self.gate.update(audio[max(a, 0) : max(b, 0)])
                infos.append(FrameInfo(k, self.clock.audio_time(k), alpha, alpha > 0))
                if alpha > 0:
                    mels.append(mel_window(mel, self.clock.mel_start(k)))
            lower = self.lipsync.lower_faces(np.stack(mels)[:, None]) if mels else None
            j = 0
            for info in infos:
                if info.inferred:
                    yield self.compositor.compose(lower[j], info.alpha), info
                    j += 1
                else:
                    yield self.compositor.idle_frame.copy(), info
