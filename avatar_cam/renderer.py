"""From a frame's audio to its picture: voice gate -> lip-sync engine -> compositor -> idle motion.

The live pipeline and the offline renderer both draw frames through `FrameRenderer`, so a live run over a
file and an offline render of the same file give the same frames (idle motion depends only on the frame
index and the engines' state only on the talking frames, in order).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from .compositor import Compositor, OutputFormat
from .frame_clock import MEL_WINDOW, FrameClock
from .idle_motion import IdleMotion, IdleSettings
from .portrait import Portrait
from .voice_gate import VoiceGate

SILENT_MEL = -4.0  # the normalised mel value of digital silence


class LipSync(Protocol):
    """A lip-sync engine: given the face once, draws the lower face for each mel window."""

    name: str  # what the tray and `status` show: "wav2lip", "lite"

    def set_face(self, portrait: Portrait) -> None: ...

    def lower_faces(self, mels: np.ndarray) -> np.ndarray:
        """mels (B,1,80,16) -> (B,3,R,96) BGR in [0,1]: the bottom R rows of the 96x96 face crop (R >= 49, see
        `Compositor.paste`); an engine may skip the rows above, which are never shown."""
        ...


class MouthPainter(Protocol):
    region: tuple[int, int, int, int]  # (x0, y0, x1, y1) of the unmirrored canvas that `paint` may change

    def paint(self, img: np.ndarray, opening: float, width: float = 0.0) -> None: ...


class CanvasLipSync(LipSync, Protocol):
    """An engine that draws on the full-resolution canvas itself instead of a 96x96 patch (the lite engine).

    The renderer asks it for one small mouth shape per talking frame, then has its painter draw it.
    """

    def mouth_shapes(self, mels: np.ndarray) -> np.ndarray:
        """mels (B,1,80,16), in frame order -> (B, 2): opening in [0, 1], width in [-1, 1]."""
        ...

    def canvas_painter(self, canvas: np.ndarray, layout) -> MouthPainter: ...


class Wav2LipLipSync:
    """Wav2Lip on OpenVINO, with the portrait's face features computed once per photo."""

    name = "wav2lip"

    def __init__(self, engine):
        self.engine = engine
        self._features: list[np.ndarray] | None = None
        self._warm = False

    def set_face(self, portrait: Portrait) -> None:
        self._features = self.engine.encode_face(portrait.face_input[None])
        if not self._warm:  # OpenVINO's first inference is slow (0.1-0.5 s): take it now, not on the first word
            self.engine.infer_encoded(np.full((1, 1, 80, MEL_WINDOW), SILENT_MEL, np.float32), self._features)
            self._warm = True

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
    """Owned by one frame thread. `set_portrait`, `set_idle` and assigning `lipsync` may be called between
    frames (to switch photo, idle motion or engine)."""

    def __init__(self, lipsync: LipSync, portrait: Portrait, fmt: OutputFormat, clock: FrameClock,
                 idle: IdleSettings | None = None):
        self._lipsync = lipsync
        self.clock = clock
        self.gate = VoiceGate(fps=clock.fps)
        self.idle_settings = idle if idle is not None else IdleSettings()
        self.set_portrait(portrait, fmt)

    @property
    def lipsync(self) -> LipSync:
        return self._lipsync

    @lipsync.setter
    def lipsync(self, engine: LipSync) -> None:
        """Switch engine; it must already have been given the current face (`set_face`)."""
        self._lipsync = engine
        self._bind_painter()

    def set_portrait(self, portrait: Portrait, fmt: OutputFormat | None = None) -> None:
        self.compositor = Compositor(portrait, fmt or self.compositor.fmt)
        self._lipsync.set_face(portrait)
        self._bind_painter()
        self.set_idle(self.idle_settings)

    def set_idle(self, settings: IdleSettings) -> None:
        self.idle_settings = settings
        c = self.compositor
        self.idle = IdleMotion(c.canvas.shape, c.layout, settings, self.clock.fps) if settings.any else None

    def _bind_painter(self) -> None:
        maker = getattr(self._lipsync, "canvas_painter", None)
        c = self.compositor
        self._painter = maker(c.canvas_unmirrored(), c.layout) if maker is not None else None

    @property
    def idle_frame(self) -> np.ndarray:
        """The photo as it is, with no motion (what a frame with nothing to draw shows)."""
        return self.compositor.idle_frame

    @property
    def face_region(self) -> tuple[int, int, int, int]:
        """(x0, y0, x1, y1) of the output that the engine may change in talking frames."""
        if self._painter is not None:
            return self.compositor.output_region(self._painter.region)
        return self.compositor.blend_region

    @property
    def idle_region(self) -> tuple[int, int, int, int] | None:
        """(x0, y0, x1, y1) of the output that idle motion may change, in any frame; None when it is off."""
        return self.compositor.output_region(self.idle.region) if self.idle is not None else None

    def idle_at(self, index: int) -> np.ndarray:
        """Frame `index` with nobody talking."""
        return self._draw(index, None, 0.0)

    def _engine(self, mels: np.ndarray) -> np.ndarray:
        """Talking frames' mel windows (B,1,80,16), in frame order -> what `_draw` takes per frame."""
        if self._painter is not None:
            return self._lipsync.mouth_shapes(mels)
        return self._lipsync.lower_faces(mels)

    def _draw(self, index: int, mouth: np.ndarray | None, alpha: float) -> np.ndarray:
        c = self.compositor
        if self.idle is None and (mouth is None or alpha <= 0.0):
            return c.idle_frame.copy()
        out = c.start()
        if mouth is not None and alpha > 0.0:
            if self._painter is not None:
                # A drawn mouth fades by closing, not by cross-fading two mouths (which would show both).
                self._painter.paint(out, float(mouth[0]) * alpha, float(mouth[1]) * alpha)
            else:
                c.paste(out, mouth, alpha)
        if self.idle is not None:
            self.idle.apply(out, index)
        return c.finish(out)

    def render(self, index: int, mel_win: np.ndarray, audio: np.ndarray, paused: bool = False) -> tuple[np.ndarray, FrameInfo]:
        """One frame from its mel window (80,16) and the audio that window covers."""
        alpha = self.gate.update(audio)
        info = FrameInfo(index, self.clock.audio_time(index), 0.0 if paused else alpha, False)
        if paused:  # Pause freezes the picture on the still photo: no mouth, no blinks
            return self.compositor.idle_frame.copy(), info
        if info.alpha <= 0.0:
            return self._draw(index, None, 0.0), info
        mouth = self._engine(mel_win[None, None])[0]
        info.inferred = True
        return self._draw(index, mouth, info.alpha), info

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
            mouths = self._engine(np.stack(mels)[:, None]) if mels else None
            j = 0
            for info in infos:
                if info.inferred:
                    yield self._draw(info.index, mouths[j], info.alpha), info
                    j += 1
                else:
                    yield self._draw(info.index, None, 0.0), info
