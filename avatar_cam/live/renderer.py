"""From a frame's audio to its picture: voice gate -> lip-sync engine -> compositor -> idle motion.

The live pipeline and the offline renderer both draw frames through `FrameRenderer`, so a live run over a
file and an offline render of the same file give the same frames (idle motion depends only on the frame
index and the engines' state only on the talking frames, in order).
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import queue
import threading
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import NamedTuple

import cv2
import numpy as np

from avatar_cam.audio.ring import SAMPLE_RATE
from avatar_cam.audio.voice_gate import VoiceGate
from avatar_cam.lipsync.protocol import LipSync
from avatar_cam.live.frame_clock import FrameClock
from avatar_cam.live.mel_windows import mel_window
from avatar_cam.thread_priority import give_way
from avatar_cam.video.compositor import Compositor, OutputFormat
from avatar_cam.video.idle_motion import IdleMotion, IdleSettings
from avatar_cam.video.portrait import Portrait

log = logging.getLogger(__name__)

DRAW_NICE = 10  # how much an offline render's drawing and encoding give way to its inference (see render_clip)


@dataclass
class FrameInfo:
    index: int
    audio_time: float  # seconds on the audio clock that this frame shows
    alpha: float  # talking weight (0: idle face)
    inferred: bool  # whether the engine ran for this frame


class Look(NamedTuple):
    """What the frame thread draws with; replaced whole, in one assignment, by `FrameRenderer.use`."""
    compositor: Compositor
    lipsync: LipSync
    painter: object  # the engine's own painter on this compositor's canvas (Lite), else None
    idle_settings: IdleSettings
    idle: IdleMotion | None


@dataclass(frozen=True)
class Prepared:
    """A change of photo, output format, engine or idle motion, built off the frame thread (`prepare`), for
    the frame thread to swap in between two frames (`use`): the look it was built on, the change itself (to
    build it again should another change land first), and the new look."""
    based_on: Look
    wanted: dict
    look: Look


class FrameRenderer:
    """Owned by one frame thread. Changes (photo, output format, engine, idle motion) are built on the caller's
    thread with `prepare` and swapped in between frames with `use`: building one takes 0.1-0.7 s (the face
    layout, the Lite painter, the idle motion's fields), which on the frame thread would freeze the camera.

    The live pipeline may run the engine on another thread (`infer`, see mouths.py): `engine_lock` is held by
    whoever runs the engine (one inference at a time), and `generation` counts face and engine changes, so a
    mouth drawn for the old face is never shown on the new one. A running engine is never given another face
    (a new photo comes with an engine of its own), so a change never waits for the inference in progress: that
    one finishes on the look it started with, and its mouth, of the old generation, is dropped."""

    def __init__(self, lipsync: LipSync, portrait: Portrait, fmt: OutputFormat, clock: FrameClock,
                 idle: IdleSettings | None = None):
        self.engine_lock = threading.Lock()
        self.generation = 0
        self.clock = clock
        self.gate = VoiceGate(fps=clock.fps)
        settings = idle if idle is not None else IdleSettings()
        lipsync.set_face(portrait)
        compositor = Compositor(portrait, fmt)
        self._look = Look(compositor, lipsync, _painter(lipsync, compositor), settings,
                          self._idle_motion(compositor, settings))

    # The parts of the look, as the frame thread sees them between changes.
    compositor = property(lambda self: self._look.compositor)
    lipsync = property(lambda self: self._look.lipsync)
    idle_settings = property(lambda self: self._look.idle_settings)
    idle = property(lambda self: self._look.idle)
    _painter = property(lambda self: self._look.painter)

    def prepare(self, *, portrait: Portrait | None = None, fmt: OutputFormat | None = None,
                lipsync: LipSync | None = None, idle: IdleSettings | None = None) -> Prepared:
        """Build a change on the caller's thread; hand it to `use` (the frame thread) to take effect.

        A new `lipsync` is given its face here (Wav2Lip encodes it and warms up); a new `portrait` needs a
        `lipsync` of its own, since the running engine may be busy with the old face on the mouths thread."""
        if portrait is not None and lipsync is None:
            raise ValueError("a new photo needs an engine of its own to take its face")
        base = self._look
        compositor, engine, painter, settings, motion = base
        if portrait is not None or fmt is not None:
            compositor = Compositor(portrait or compositor.portrait, fmt or compositor.fmt)
        if lipsync is not None:
            lipsync.set_face(compositor.portrait)
            engine = lipsync
        if compositor is not base.compositor or engine is not base.lipsync:
            painter = _painter(engine, compositor)
        if idle is not None:
            settings = idle
        if compositor is not base.compositor or settings != base.idle_settings:
            motion = self._idle_motion(compositor, settings)
        wanted = {"portrait": portrait, "fmt": fmt, "lipsync": lipsync, "idle": idle}
        return Prepared(base, wanted, Look(compositor, engine, painter, settings, motion))

    def use(self, prepared: Prepared) -> None:
        """Swap in a change `prepare` built. Frame thread, between two frames. Should another change have
        landed since it was prepared, it is built again here, on top of that one (slow, and rare)."""
        if prepared.based_on is not self._look:
            log.info("another change landed first: building this one on the frame thread")
            prepared = self.prepare(**prepared.wanted)
        old, new = self._look, prepared.look
        self._look = new
        if new.compositor.portrait is not old.compositor.portrait or new.lipsync is not old.lipsync:
            self.generation += 1  # (the same face and engine: the mouths drawn already stay good)

    @property
    def draws_inline(self) -> bool:
        """Whether the engine is cheap and keeps state over talking frames in order (the Lite engine draws its
        own mouth shapes on the canvas): then it runs on the frame thread, for every talking frame."""
        return self._painter is not None

    def infer(self, mels: np.ndarray, generation: int) -> np.ndarray | None:
        """The engine's mouths for these mel windows, drawn for face/engine `generation`; None if that changed.
        Any thread (the live pipeline's "mouths" thread)."""
        with self.engine_lock:
            if generation != self.generation:
                return None
            return self._engine(mels)

    def _idle_motion(self, compositor: Compositor, settings: IdleSettings) -> IdleMotion | None:
        return IdleMotion(compositor.canvas.shape, compositor.layout, settings, self.clock.fps) if settings.any else None

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
        look = self._look
        return look.lipsync.mouth_shapes(mels) if look.painter is not None else look.lipsync.lower_faces(mels)

    def gate_frame(self, index: int, audio: np.ndarray, paused: bool = False) -> FrameInfo:
        """Frame `index`'s talking weight, from the audio its mel window covers (call for every frame, in order)."""
        alpha = self.gate.update(audio)
        return FrameInfo(index, self.clock.audio_time(index), 0.0 if paused else alpha, False)

    def draw(self, index: int, mouth: np.ndarray | None, alpha: float, paused: bool = False) -> np.ndarray:
        """Frame `index` with `mouth` (what the engine drew, or None) at talking weight `alpha`."""
        if paused:  # Pause freezes the picture on the still photo: no mouth, no blinks
            return self.compositor.idle_frame.copy()
        return self._draw(index, mouth if alpha > 0.0 else None, alpha)

    def _draw(self, index: int, mouth: np.ndarray | None, alpha: float) -> np.ndarray:
        c, painter, idle = self._look.compositor, self._look.painter, self._look.idle
        if idle is None and (mouth is None or alpha <= 0.0):
            return c.idle_frame.copy()
        out = c.start()
        if mouth is not None and alpha > 0.0:
            if painter is not None:
                # A drawn mouth fades by closing, not by cross-fading two mouths (which would show both).
                painter.paint(out, *(float(v) * alpha for v in mouth))
            else:
                c.paste(out, mouth, alpha)
        if idle is not None:
            idle.apply(out, index)
        return c.finish(out)

    def render(self, index: int, mel_win: np.ndarray, audio: np.ndarray, paused: bool = False) -> tuple[np.ndarray, FrameInfo]:
        """One frame from its mel window (80,16) and the audio that window covers."""
        info = self.gate_frame(index, audio, paused)
        if paused:  # Pause freezes the picture on the still photo: no mouth, no blinks
            return self.compositor.idle_frame.copy(), info
        if info.alpha <= 0.0:
            return self._draw(index, None, 0.0), info
        with self.engine_lock:
            mouth = self._engine(mel_win[None, None])[0]
        info.inferred = True
        return self._draw(index, mouth, info.alpha), info

    def render_clip(self, mel: np.ndarray, audio: np.ndarray, batch: int = 8, ahead: int = 3):
        """Offline: yield (frame, info) for every frame of a whole clip, as fast as the machine allows.

        Gate decisions are made in frame order first, exactly as live. Threads overlap: the engine runs on
        batches of talking frames on "render-mouths" (as many at once as it has streams, up to `ahead` batches
        ahead of the drawing), frames are drawn on "render-draw", and the caller takes them (an encoder, in its
        turn, encodes them).

        Drawing gives way to inference (nice DRAW_NICE; the render's encoder does too): OpenVINO's threads meet
        at the end of every layer, so a core taken from one of them by drawing or encoding stalls the other and
        the wait is lost. Giving way, the engine runs undisturbed while it has batches to draw; the others catch
        up when it runs out (BENCHMARKS.md, session 5, has the render with and without).
        """
        n = self.clock.frame_count(len(audio) / SAMPLE_RATE)
        frames: queue.Queue = queue.Queue(2 * batch)
        stop = threading.Event()

        def gate_batches():
            for first in range(0, n, batch):
                infos, mels = [], []
                for k in range(first, min(first + batch, n)):
                    a, b = self.clock.audio_span(k)
                    alpha = self.gate.update(audio[max(a, 0) : max(b, 0)])
                    infos.append(FrameInfo(k, self.clock.audio_time(k), alpha, alpha > 0))
                    if alpha > 0:
                        mels.append(mel_window(mel, self.clock.mel_start(k)))
                yield infos, (np.stack(mels)[:, None] if mels else None)

        streams = getattr(self.lipsync, "streams", 1)

        def infer(mels):  # a "render-mouths" thread
            if mels is None:
                return None
            if streams > 1:  # batches side by side on the engine's streams (nothing changes the face mid-render)
                return self._engine(mels)
            with self.engine_lock:
                return self._engine(mels)

        def put(item) -> bool:
            while not stop.is_set():
                with contextlib.suppress(queue.Full):
                    frames.put(item, timeout=0.1)
                    return True
            return False

        def draw_all(pool: ThreadPoolExecutor) -> None:  # the "render-draw" thread
            give_way(DRAW_NICE)
            cv2.setNumThreads(1)  # as live (pipeline.py): OpenCV's pool costs more CPU than it saves time here
            try:
                todo = gate_batches()
                pending = deque((infos, pool.submit(infer, mels)) for infos, mels in itertools.islice(todo, ahead + 1))
                while pending:
                    infos, mouths = pending.popleft()
                    if (following := next(todo, None)) is not None:  # keep the engine `ahead` batches ahead
                        pending.append((following[0], pool.submit(infer, following[1])))
                    for item in self._draw_batch(infos, mouths):
                        if not put(item):
                            return
                put(None)
            except BaseException as exc:  # handed to the caller, who raises it
                put(exc)

        with ThreadPoolExecutor(max_workers=streams, thread_name_prefix="render-mouths") as pool:
            drawer = threading.Thread(target=draw_all, args=(pool,), name="render-draw", daemon=True)
            drawer.start()
            try:
                while (item := frames.get()) is not None:
                    if isinstance(item, BaseException):
                        raise item
                    yield item
            finally:  # finished, failed or abandoned by the caller (an interrupted render): the threads end
                stop.set()
                drawer.join()
                pool.shutdown(cancel_futures=True)

    def _draw_batch(self, infos: list[FrameInfo], mouths_future):
        mouths, j = mouths_future.result(), 0
        for info in infos:
            if info.inferred:
                yield self._draw(info.index, mouths[j], info.alpha), info
                j += 1
            else:
                yield self._draw(info.index, None, 0.0), info


def _painter(lipsync: LipSync, compositor: Compositor):
    """The painter of an engine that draws on the canvas itself (Lite), for this compositor's canvas; else None."""
    maker = getattr(lipsync, "canvas_painter", None)
    return maker(compositor.canvas_unmirrored(), compositor.layout) if maker is not None else None
