"""Mouths drawn off the frame thread, so the camera's cadence never depends on inference.

The frame thread asks for the mouth of each talking frame the moment its audio is complete (`MouthWorker.request`)
and, at the frame's slot, shows the newest mouth there is (`MouthWorker.best`). The "mouths" thread runs the
engine on the newest request only: a request it had no time for is replaced by a newer one, so on a busy or slow
machine the mouth rate falls while the camera's frames keep leaving on time, and it rises again by itself when
the load falls. Within that, the user's performance mode caps the rate and the whole process's CPU (inference gets
what drawing, audio and the camera leave of the budget, measured while running), and the thread runs at the
mode's nice value, so the call app beside us is not starved.

Threads: `request`, `best` and `slot_wait_s` are called from the frame thread (which also measures the process's
CPU); `_run` is the "mouths" thread, the only one that runs the engine (under the renderer's `engine_lock`); the
figures are plain reads from any thread.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass

import numpy as np

from avatar_cam.live.performance import Performance
from avatar_cam.thread_priority import give_way, name_os_thread

log = logging.getLogger(__name__)

MAX_AGE_S = 0.3  # a mouth older than this (in audio time) is not shown: the face rests instead of freezing open
OTHERS_WINDOW_S = 2.0  # the rest of the process's CPU is averaged over this long
MIN_INFERENCE_SHARE = 0.25  # inference keeps at least this share of the budget, however busy the rest is


@dataclass(frozen=True)
class Mouth:
    index: int  # the frame (on the audio clock) whose mel window drew it
    audio_time: float
    pixels: np.ndarray  # what the renderer's `draw` takes
    generation: int  # the renderer's face/engine generation it was drawn for
    done: float  # time.monotonic() it was ready


class MouthWorker:
    """`taking_over`: the worker of the previous performance mode, whose mouths are shown until this one's come."""

    def __init__(self, renderer, fps: float, mode: Performance, taking_over: MouthWorker | None = None):
        self.renderer, self.fps, self.mode = renderer, fps, mode
        self._cond = threading.Condition()
        self._job: tuple[int, float, np.ndarray, int] | None = None  # the newest request not yet taken
        self._mouths: deque[Mouth] = deque(taking_over._mouths if taking_over is not None else (), maxlen=16)
        self._next_due = float("-inf")  # frame index from which the rate cap allows the next mouth
        self._wall: deque[float] = deque(maxlen=30)  # seconds per inference, recent
        # (monotonic, CPU seconds) of recent inferences (this thread's CPU): what one costs now is read over the
        # last OTHERS_WINDOW_S, so the rate rises as soon as a busy spell ends (30 inferences took up to 4 s to forget it).
        self._cpu: deque[tuple[float, float]] = deque(maxlen=64)
        self._inference_cpu = 0.0  # CPU seconds spent in inference so far (written by the mouths thread only)
        self._process: deque[tuple[float, float, float]] = deque()  # (monotonic, process CPU, inference CPU)
        self._target_hz = min(fps, mode.max_mouth_hz or fps)
        self._done: deque[float] = deque(maxlen=256)  # when recent mouths were ready
        self.requested = self.replaced = self.inferred = 0
        self._busy_with = -1  # the frame whose mouth the thread is drawing now (or drew last)
        self._stop = False
        self._thread: threading.Thread | None = None

    # --- life (the pipeline's run) ---------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="mouths", daemon=True)
        self._thread.start()

    def stop(self, wait: bool = True) -> None:
        """End the thread; `wait=False` (the frame thread, switching modes): it ends by itself after the inference
        it is in, if any (up to a frame or more on a slow machine, which the camera must not wait for)."""
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        if wait and self._thread is not None:
            self._thread.join(timeout=5)

    # --- the frame thread ----------------------------------------------------------------------------------
    def request(self, index: int, audio_time: float, mel_window: np.ndarray, generation: int) -> bool:
        """Frame `index` is talking and its mel window is complete: draw its mouth if the rate allows (True)."""
        self._target_hz = self._allowed_hz()
        gap = self.fps / self._target_hz
        if index + 0.5 < self._next_due:
            return False  # the rate cap: this frame will show the previous mouth
        self._next_due = max(self._next_due + gap, index + 0.5 * gap) if self._next_due > index - 2 * gap else index + gap
        with self._cond:
            if self._job is not None:
                self.replaced += 1  # the thread is busy: the newer frame's mouth is worth more
            self._job = (index, audio_time, mel_window, generation)
            self.requested += 1
            self._cond.notify_all()
        return True

    def wait_for_mouth(self, index: int, until: float) -> None:
        """Wait until frame `index`'s mouth is drawn (or a later one), or time.monotonic() reaches `until`."""
        with self._cond:
            while not (self._mouths and self._mouths[-1].index >= index) and not self._stop:
                left = until - time.monotonic()
                if left <= 0 or (self._job is None and self._busy_with < index):
                    return  # out of time, or its request was replaced: it will not come
                self._cond.wait(left)

    def best(self, index: int, generation: int) -> Mouth | None:
        """The newest mouth drawn for frame `index` or before it (never from its future), for the current face,
        at most MAX_AGE_S old; None when there is none."""
        oldest = index - MAX_AGE_S * self.fps
        for mouth in reversed(self._mouths):
            if mouth.generation == generation and oldest <= mouth.index <= index:
                return mouth
        return None

    def slot_wait_s(self) -> float:
        """How long after its audio is complete a frame leaves: time for its own mouth to be drawn (the recent
        inferences' 90th percentile), never more than most of a frame period, so frames stay on the audio clock."""
        if not self._wall:
            return 0.5 / self.fps
        return float(min(0.85 / self.fps, max(0.005, np.percentile(self._wall, 90) + 0.003)))

    # --- figures (any thread; plain reads) ---------------------------------------------------------------
    def target_hz(self) -> float:
        """The mouth rate the mode and the CPU budget allowed at the last request (the machine may allow less)."""
        return self._target_hz

    # --- the frame thread: the rate the budget allows -------------------------------------------------------
    def _allowed_hz(self) -> float:
        """Inference gets the budget's cores that the rest of the process (drawing, audio, the camera) leaves,
        at the CPU an inference costs now. Frame thread."""
        hz = min(self.fps, self.mode.max_mouth_hz or self.fps)
        budget = self.mode.cpu_budget
        if budget is not None and self._cpu:
            for_inference = max(budget - self.others_cores(), MIN_INFERENCE_SHARE * budget)
            hz = min(hz, for_inference / max(self.inference_cpu_s(), 1e-4))
        return max(hz, 1.0)

    def inference_cpu_s(self) -> float:
        """The CPU an inference costs now: the median over the last OTHERS_WINDOW_S (at least the last 5); 0.0 before
        the first."""
        now, recent = time.monotonic(), list(self._cpu)
        if not recent:
            return 0.0
        within = [cpu for t, cpu in recent if now - t <= OTHERS_WINDOW_S]
        return float(np.median(within if len(within) >= 5 else [cpu for _, cpu in recent[-5:]]))

    def others_cores(self) -> float:
        """Cores the process used outside inference over the last OTHERS_WINDOW_S (sampled on each call). Frame
        thread."""
        now, samples = time.monotonic(), self._process
        if not samples or now - samples[-1][0] >= 0.1:
            samples.append((now, time.process_time(), self._inference_cpu))
        while len(samples) > 2 and now - samples[1][0] >= OTHERS_WINDOW_S:
            samples.popleft()
        (t0, p0, i0), (t1, p1, i1) = samples[0], samples[-1]
        if t1 - t0 < 0.2:
            return 0.0
        return max(0.0, ((p1 - p0) - (i1 - i0)) / (t1 - t0))

    def mouth_hz(self, window_s: float = 2.0) -> float:
        """New mouths per second over the last `window_s` (0 in silence)."""
        now = time.monotonic()
        recent = [t for t in list(self._done) if now - t <= window_s]
        return len(recent) / window_s

    def inference_ms(self) -> float | None:
        return round(1000 * float(np.median(self._wall)), 1) if self._wall else None

    # --- the "mouths" thread -------------------------------------------------------------------------------
    def _run(self) -> None:
        name_os_thread("ac-mouths")
        give_way(self.mode.nice)
        while True:
            with self._cond:
                while self._job is None and not self._stop:
                    self._cond.wait()
                if self._stop:
                    return
                job, self._job = self._job, None
                self._busy_with = job[0]
            try:
                self._draw(*job)
            except Exception:  # noqa: BLE001 - the camera keeps going on the mouths it has
                log.exception("drawing a mouth failed")
                time.sleep(0.1)

    def _draw(self, index: int, audio_time: float, mel_window: np.ndarray, generation: int) -> None:
        t0, c0 = time.perf_counter(), time.thread_time()
        pixels = self.renderer.infer(mel_window[None, None], generation)
        if pixels is None:  # the face or engine changed meanwhile
            return
        self._wall.append(time.perf_counter() - t0)
        cpu, now = time.thread_time() - c0, time.monotonic()
        self._cpu.append((now, cpu))
        self._inference_cpu += cpu
        with self._cond:
            self._mouths.append(Mouth(index, audio_time, pixels[0], generation, now))
            self._cond.notify_all()
        self._done.append(now)
        self.inferred += 1
