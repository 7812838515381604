"""The live pipeline: audio ring -> streaming mel -> frame renderer -> sinks, paced by the audio clock.

Threads: the audio source's thread (PortAudio callback or file player) only writes the `AudioRing`. The frame
thread (`LivePipeline.run`) owns everything else here: the streaming mel, the renderer and the sinks; the
"mouths" thread (mouths.py) runs the Wav2Lip engine beside it. Control (CLI, tray, socket) talks to the frame
thread only through `request_*` methods, which take effect between two frames.

The camera's cadence never depends on inference. Frame k's slot is the moment the audio it needs has arrived
(see `FrameClock`) plus a short wait for its mouth (at most most of a frame period), so frames follow the audio
clock exactly and never drift from it, and none is skipped (unless drawing itself cannot keep up with the
camera's rate: then the frame thread skips ahead, and the lag stays bounded, see `_catch_up`). At its slot a frame
shows the newest mouth there is: its own when the "mouths" thread kept up, an earlier one when the machine is busy
(the mouth rate falls, not the frame rate). The Lite engine is cheap and draws its mouth on the frame thread, for every frame.
A frame leaves at its slot, or, when `pace` is set (the virtual microphone sets it), when the voice it shows
plays: then the lips meet the voice to the millisecond, not to the frame. Paced frames wait on a sender thread,
so the frame thread draws the next one meanwhile; the sinks are only ever used by one thread at a time
(`_emit_lock`), and requests (`call_between_frames`) run while no frame is being sent. When no audio arrives
(mic unplugged, stream stalled) the camera keeps showing the idle face on the wall clock, so the call app never
sees a frozen or closed camera. While no app reads the camera (a sink's `watched`, see outputs/readers.py) the
pipeline rests: it follows the audio as ever, but draws one frame a second and asks for no mouths, until an app
opens the camera (within a frame of the next audio block).
"""

from __future__ import annotations

import logging
import math
import queue
import threading
import time

import cv2
import numpy as np

from avatar_cam.audio.mel import StreamingMel
from avatar_cam.audio.ring import SAMPLE_RATE, AudioRing
from avatar_cam.live.frame_clock import FrameClock
from avatar_cam.live.mel_windows import MelColumns
from avatar_cam.live.mouths import MouthWorker
from avatar_cam.live.performance import Performance
from avatar_cam.live.performance import performance as performance_mode
from avatar_cam.live.records import FrameRecord, PipelineStats
from avatar_cam.live.renderer import FrameRenderer
from avatar_cam.thread_priority import TimeKeeper, name_os_thread, one_blas_thread

log = logging.getLogger(__name__)

MAX_HOLD_S = 0.1  # a paced frame waits for its own mouth at most this (+ 0.2 s) after its audio was complete
# Pacing holds a frame until its voice plays: on a slow or busy machine the voice waits for the latest frames (the
# p95 of their delay), so the earliest may be held several frame periods. Never later than this after its sound
# was heard, though: a wrong clock must not hold the camera back further (nor its frames pile up in memory).
MAX_PACED_DELAY_S = 1.5
# The frame thread skips ahead when frames this far past the one it is on could already be drawn: drawing itself
# cannot keep up (a machine too slow or too busy for the camera's rate). Longer than any wait of its own (a paced
# frame waits for its mouth up to MAX_HOLD_S + 0.2 s after its audio), so only a real backlog is skipped.
MAX_BACKLOG_S = 0.5
PACED_DRAW_S = 0.008  # a paced frame stops waiting for its own mouth this long before its voice plays
RESTING_FRAME_S = 1.0  # while no app reads any sink, one frame this often (the idle face), no mouths


class LivePipeline:
    def __init__(self, renderer: FrameRenderer, sinks: list, ring: AudioRing, clock: FrameClock,
                 on_frame=None, audio_taps: list | None = None, stall_s: float = 0.25, every_mouth: bool = False,
                 performance: Performance | None = None, keep_time: bool = True):
        self.renderer = renderer
        self.sinks = sinks
        self.ring = ring
        self.clock = clock
        self.stats = PipelineStats()
        self.on_frame = on_frame  # optional callback(frame, record), called on the frame thread
        self.audio_taps = audio_taps or []  # callbacks(samples) given every 16 kHz block as the frame thread takes it
        self.stall_s = stall_s
        # True: every talking frame draws its own mouth on the frame thread, however long that takes (a live run
        # that must equal an offline render); False: mouths are drawn off the frame thread (mouths.py).
        self.every_mouth = every_mouth
        self.performance = performance or performance_mode(None)
        self.mouths: MouthWorker | None = None  # the frame thread's; replaced when the performance mode changes
        self._retired: MouthWorker | None = None  # the previous mode's, whose mouths show until the new one's come
        # pace(audio_time) -> monotonic time the frame showing it should leave (None: at once). Called on the
        # frame thread. Set by whoever plays the voice out, so each frame leaves with the sound it shows.
        self.pace = None
        self.paused = False
        self.audio_stalled = False
        self._stop = threading.Event()
        self._requests: list = []  # callables queued by other threads, run by the frame thread
        self._lock = threading.Lock()
        self._emit_lock = threading.Lock()  # held while frames go to the sinks, and while requests run
        self._held: queue.Queue | None = None  # paced frames waiting for the sender thread
        self._sender: threading.Thread | None = None
        self._mel = StreamingMel()
        self._cols = MelColumns()
        self._consumed = 0
        self.next_frame = 0
        self.skipped = 0  # frames skipped because drawing could not keep up (`_catch_up`)
        self.keep_time = keep_time  # the frame threads ask to run ahead of ordinary work (thread_priority.py)
        self._keeper: TimeKeeper | None = None  # the frame thread's priority (set and used by it)
        self._skip_logged = float("-inf")
        self._idle_index = 0  # frame counter for idle motion while no audio arrives
        self._rested_at = float("-inf")  # when the last frame left while no app read the camera (`_rest`)
        self.sink_errors: dict[str, str] = {}  # sink class name -> its last send failure (frame thread writes)
        self._sink_failures: dict[str, int] = {}

    # --- control, from any thread -------------------------------------------------------------
    def stop(self) -> None:
        self._stop.set()

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    @property
    def watched(self) -> bool:
        """Whether anyone may see the frames: false only when every sink knows that no app reads it (sinks that
        cannot tell count as read, and frames with no sink at all go to `on_frame`)."""
        return not self.sinks or any(getattr(sink, "watched", True) for sink in self.sinks)

    @property
    def priority(self) -> str:
        """How the frame thread keeps time: "real-time", "real-time (rtkit)", "high", or "" (normal priority)."""
        return self._keeper.how if self._keeper is not None else ""

    def request_performance(self, mode: Performance) -> None:
        """Use another performance mode from the next frame on (a new "mouths" thread, at the mode's priority)."""

        def switch() -> None:
            self.performance = mode
            if self.mouths is not None:
                self.mouths.stop(wait=False)
                self._retired, self.mouths = self.mouths, None

        self.call_between_frames(switch)

    def call_between_frames(self, fn) -> None:
        """Run `fn()` on the frame thread before the next frame: the only way to change what it owns."""
        with self._lock:
            self._requests.append(fn)

    # --- the frame thread ---------------------------------------------------------------------
    def _apply_requests(self) -> None:
        with self._lock:
            requests, self._requests = self._requests, []
        if requests:
            # A request may change the sinks: never while the sender uses them. It may also run long (a change
            # built here when another landed first): at normal priority, not starving the machine (nor, under
            # rtkit's cap, getting the process killed).
            with self._emit_lock, self._keeper.ordinary():
                for fn in requests:
                    fn()

    def _pull_audio(self) -> None:
        total = self.ring.total
        if total > self._consumed:
            block = self.ring.read(self._consumed, total - self._consumed)
            for tap in self.audio_taps:
                tap(block)
            cols = self._mel.push(block)
            self._cols.extend(cols)
            self._consumed = total

    def _emit(self, frame: np.ndarray, rec: FrameRecord) -> None:
        with self._emit_lock:
            for sink in self.sinks:
                try:
                    sink.send(frame)
                except Exception as exc:  # noqa: BLE001  (one broken sink must not freeze the others or kill this thread)
                    self._sink_failed(sink, exc)
            rec.emitted = time.monotonic()
            self.stats.add(rec)
            if self.on_frame is not None:
                self.on_frame(frame, rec)

    def _send(self, frame: np.ndarray, rec: FrameRecord) -> None:
        """Emit now, or, when pacing, hand the frame to the sender thread to leave when it is due."""
        due = self._due(rec.audio_time)
        if due is None:
            if self._held is not None:
                self._held.join()  # frames still held leave first, in order
            self._emit(frame, rec)
            return
        if self._sender is None:
            # Room for every frame a hold can keep back, so the frame thread never waits for the sender.
            self._held = queue.Queue(maxsize=math.ceil(MAX_PACED_DELAY_S * self.clock.fps) + 2)
            self._sender = threading.Thread(target=self._send_when_due, name="frame-sender", daemon=True)
            self._sender.start()
        self._held.put((frame, rec, min(due, (rec.heard or rec.drawn) + MAX_PACED_DELAY_S)))

    def _send_when_due(self) -> None:
        """The sender thread: each held frame leaves at its due time (or at once, if that has passed)."""
        name_os_thread("ac-sender")
        keeper = TimeKeeper("frame sender", ask=self.keep_time)
        while True:
            item = self._held.get()
            try:
                if item is None:
                    keeper.release()
                    return
                frame, rec, due = item
                wait = due - time.monotonic()
                if wait <= 0 or not self._stop.wait(wait):  # (a stop while waiting drops the frame)
                    self._emit(frame, rec)
                keeper.after_frame()
            except Exception:  # noqa: BLE001  (never let a callback kill the camera's frames)
                log.exception("sending a paced frame failed")
            finally:
                self._held.task_done()

    def _stop_sender(self) -> None:
        if self._sender is not None:
            self._held.put(None)
            self._sender.join(timeout=1.0)
            self._sender = self._held = None

    def _sink_failed(self, sink, exc: Exception) -> None:
        name = type(sink).__name__
        self.sink_errors[name] = f"{name}: {' '.join(str(exc).split()) or type(exc).__name__}"
        if self._sink_failures.get(name, 0) % 300 == 0:  # log the first failure, then one in 300 (every ~10 s)
            log.warning("a sink failed: %s", self.sink_errors[name])
        self._sink_failures[name] = self._sink_failures.get(name, 0) + 1

    def _keep_alive(self, last_emit: float) -> float:
        """No audio: show the idle face at the frame rate so the camera never freezes (resting: once a second)."""
        now = time.monotonic()
        if now - last_emit >= (1.0 / self.clock.fps if self.watched else RESTING_FRAME_S):
            if not self.audio_stalled:
                log.warning("no audio for %.0f ms: showing the idle face until it returns", 1000 * self.stall_s)
                self._idle_index = self.next_frame
            self.audio_stalled = True
            # Idle life goes on (blinks, sway) so a stalled microphone never looks like a frozen camera.
            frame = self.renderer.idle_frame.copy() if self.paused else self.renderer.idle_at(self._idle_index)
            self._idle_index += 1
            self._emit(frame, FrameRecord(-1, -1.0, None, now, now, 0.0, False))
            return now
        return last_emit

    def run(self) -> None:
        """Draw frames until `stop()`. Runs on the calling thread (the frame thread)."""
        name_os_thread("ac-frames")
        # A frame's OpenCV work is a millisecond or two: OpenCV's thread pool would add ~70% more CPU to it for
        # little time saved, and wake threads that OpenVINO's inference needs. (This is process-wide.)
        cv2.setNumThreads(1)
        one_blas_thread()  # the same for numpy's BLAS (the mel's products, the Lite engine's mouth shapes)
        # Ahead of ordinary work: on a busy machine a frame thread at normal priority waits its turn behind every
        # other program, and its frames leave late (BENCHMARKS.md, session 7: 16-29% late -> 0-0.5% at load 7-9).
        self._keeper = TimeKeeper("camera", ask=self.keep_time)
        try:
            self._draw_frames()
        finally:
            self._keeper.release()
            self._stop_sender()
            if self.mouths is not None:
                self.mouths.stop()

    def _draw_frames(self) -> None:
        clock, ring = self.clock, self.ring
        last_emit = time.monotonic()
        while not self._stop.is_set():
            self._keeper.after_frame()
            self._apply_requests()
            k = self.next_frame
            need = clock.samples_needed(k)
            if not ring.wait_for(need, timeout=min(self.stall_s, 1.0 / clock.fps)):
                if self.audio_stalled or time.monotonic() - last_emit > self.stall_s:
                    last_emit = self._keep_alive(last_emit)
                continue
            if self.audio_stalled:
                log.info("audio is back")
                self.audio_stalled = False
            k = self._catch_up(k)
            need = clock.samples_needed(k)
            ready = ring.written_time(need - 1) or time.monotonic()
            self._pull_audio()
            audio = self._frame_audio(k)
            if not self.watched:
                self._rest(k, audio)
                last_emit = time.monotonic()  # (a frame handled: the audio flows)
                self.next_frame = k + 1
                continue
            window = self._cols.window(clock.mel_start(k))
            if self.every_mouth or self.renderer.draws_inline:
                started = time.monotonic()
                frame, info = self.renderer.render(k, window, audio, paused=self.paused)
                rec = self._record(k, info, ready, ready, started, k if info.inferred else -1)
            else:
                frame, info, rec = self._draw_with_mouths(k, window, audio, ready)
            self._send(frame, rec)
            last_emit = time.monotonic()
            self.next_frame = k + 1

    def _rest(self, k: int, audio: np.ndarray) -> None:
        """Frame k while no app reads the camera: the voice gate hears it, and once a second the idle face leaves
        (so the device always holds a recent frame)."""
        self.renderer.gate_frame(k, audio, self.paused)
        now = time.monotonic()
        if now - self._rested_at < RESTING_FRAME_S:
            return
        self._rested_at = now
        if self._held is not None:
            self._held.join()  # frames still held leave first, in order
        self._emit(self.renderer.draw(k, None, 0.0, self.paused), FrameRecord(-1, -1.0, None, now, now, 0.0, False))

    def _catch_up(self, k: int) -> int:
        """The frame to draw next: k, or, when the audio of frames more than MAX_BACKLOG_S past k has arrived
        already, the newest frame that can be drawn. The skipped frames never leave (the camera's rate drops for a
        moment, and the lips stay with the voice instead of falling further and further behind it, with Avatar
        Cam Microphone's delay following them); the voice gate still hears their audio, in order."""
        clock, total = self.clock, self.ring.total
        # (every_mouth: every frame, however long it takes)
        if self.every_mouth or clock.samples_needed(k + math.floor(MAX_BACKLOG_S * clock.fps) + 1) > total:
            return k
        newest = clock.newest_ready(total)
        for j in range(k, newest):
            self.renderer.gate_frame(j, self._frame_audio(j), self.paused)
        self.skipped += newest - k
        if time.monotonic() - self._skip_logged > 30.0:
            self._skip_logged = time.monotonic()
            log.warning("drawing cannot keep up with the camera's rate: %d frames skipped so far to stay with the "
                        "voice (a busy or slow machine; the Lite engine or a smaller size draws faster)", self.skipped)
        return newest

    def _frame_audio(self, k: int) -> np.ndarray:
        """The audio frame k's mel window covers (what the voice gate listens to)."""
        a, b = self.clock.audio_span(k)
        return self.ring.read(max(a, 0), max(b, 0) - max(a, 0))

    def _draw_with_mouths(self, k: int, window: np.ndarray, audio: np.ndarray, ready: float):
        """Frame k at its slot, with the newest mouth the "mouths" thread has drawn by then (see mouths.py)."""
        renderer = self.renderer
        if self.mouths is None:
            self.mouths = MouthWorker(renderer, self.clock.fps, self.performance, taking_over=self._retired)
            self._retired = None
            self.mouths.start()
        info = renderer.gate_frame(k, audio, self.paused)
        generation = renderer.generation
        asked = info.alpha > 0 and self.mouths.request(k, info.audio_time, window, generation)
        slot = ready + self.mouths.slot_wait_s()
        due = self._due(info.audio_time) if asked else None
        if due is not None:
            # Paced by the voice: the frame leaves when its voice plays, later than its slot, so it may wait for its
            # own mouth until just before then (the lips then match the voice to the frame, not to the mouth rate).
            self.mouths.wait_for_mouth(k, min(due - PACED_DRAW_S, ready + MAX_HOLD_S + 0.2))
            slot = max(slot, time.monotonic())
        wait = slot - time.monotonic()
        if wait > 0:
            self._stop.wait(wait)
        started = time.monotonic()
        mouth = self.mouths.best(k, generation) if info.alpha > 0 else None
        frame = renderer.draw(k, mouth.pixels if mouth is not None else None, info.alpha, self.paused)
        info.inferred = mouth is not None and not self.paused
        return frame, info, self._record(k, info, ready, slot, started, mouth.index if info.inferred else -1)

    def _record(self, k: int, info, ready: float, slot: float, started: float, mouth_index: int) -> FrameRecord:
        ring = self.ring
        heard = ring.arrival_time(round(info.audio_time * SAMPLE_RATE))
        mouth_heard = None
        if mouth_index >= 0:
            mouth_heard = heard if mouth_index == k else ring.arrival_time(round(self.clock.audio_time(mouth_index) * SAMPLE_RATE))
        return FrameRecord(k, info.audio_time, heard, ready, 0.0, info.alpha, info.inferred, time.monotonic(), started,
                           slot, mouth_index, mouth_heard)

    def _due(self, audio_time: float) -> float | None:
        if self.pace is None:
            return None
        try:
            return self.pace(audio_time)
        except Exception:  # noqa: BLE001  (pacing is a refinement: never let it stop the camera)
            log.exception("frame pacing failed; sending frames as soon as they are drawn")
            self.pace = None
            return None
