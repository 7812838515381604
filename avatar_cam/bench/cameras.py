"""pyvirtualcam backends the benches register: they stand where the kernel camera device would be, so a bench
measures our side, not a driver. Each is registered by name and named explicitly when a camera opens (never
`backend=None`, which would let one stand in for a missing real camera).
"""

from __future__ import annotations

import os
import threading
import time

import numpy as np

COUNTING_BACKEND = "avatar-cam-bench"
TIMED_BACKEND = "avatar-cam-av-sync"
FIRST_FRAME_BACKEND = "avatar-cam-bench-first-frame"
FIRST_FRAME_ENV = "AVATAR_CAM_BENCH_FIRST_FRAME"  # where the launched process writes its first frame's time
FRAMES_BACKEND = "avatar-cam-bench-frames"


class CountingCamera:
    """A pyvirtualcam backend that only counts frames: the bench measures our side, not a device driver."""

    def __init__(self, *, width, height, fps, fourcc, device, **kw):
        self.frames = 0

    def send(self, frame) -> None:
        self.frames += 1

    def close(self) -> None:
        pass

    def device(self) -> str:
        return "bench-counter"

    def native_fourcc(self):
        return None


class TimedCamera(CountingCamera):
    """A pyvirtualcam backend that notes when each frame was sent: the bench measures our side, not a driver."""

    last: TimedCamera | None = None

    def __init__(self, *, width, height, fps, fourcc, device, **kw):
        super().__init__(width=width, height=height, fps=fps, fourcc=fourcc, device=device)
        self.times: list[float] = []
        TimedCamera.last = self

    def send(self, frame) -> None:
        self.times.append(time.monotonic())

    def device(self) -> str:
        return "av-sync-bench"


class FirstFrameCamera(CountingCamera):
    """A pyvirtualcam backend that writes the `time.monotonic()` of the first frame to $AVATAR_CAM_BENCH_FIRST_FRAME.

    The monotonic clock is the machine's, so the launching process can compare it with its own."""

    def __init__(self, *, width, height, fps, fourcc, device, **kw):
        super().__init__(width=width, height=height, fps=fps, fourcc=fourcc, device=device)
        self._path = os.environ.get(FIRST_FRAME_ENV)

    def send(self, frame) -> None:
        if self._path:
            now = time.monotonic()
            tmp = f"{self._path}.part"
            with open(tmp, "w") as f:
                f.write(repr(now))
            os.replace(tmp, self._path)  # the reader never sees half a number
            self._path = None

    def device(self) -> str:
        return "bench-first-frame"


class FramesCamera(CountingCamera):
    """A pyvirtualcam backend that keeps the last second or so of frames with their arrival times."""

    opened: list[FramesCamera] = []

    def __init__(self, *, width, height, fps, fourcc, device, **kw):
        super().__init__(width=width, height=height, fps=fps, fourcc=fourcc, device=device)
        self.shape = (height, width, 3)
        self._lock = threading.Lock()
        self._frames: list[tuple[float, np.ndarray]] = []
        self.keep = max(10, int(fps * 1.5))
        FramesCamera.opened.append(self)

    def send(self, frame) -> None:
        now = time.monotonic()
        with self._lock:
            self._frames.append((now, np.asarray(frame).reshape(self.shape).copy()))
            del self._frames[: -self.keep]

    def since(self, t: float) -> list[tuple[float, np.ndarray]]:
        with self._lock:
            return [(ft, f) for ft, f in self._frames if ft > t]

    def device(self) -> str:
        return "bench-frames"


class Unread:
    """A camera sink that no app reads (as the product's reader watch finds it when no call app has the camera
    open, outputs/readers.py): the pipeline rests behind it."""

    watched = False

    def __init__(self, sink):
        self.sink = sink

    def send(self, frame) -> None:
        self.sink.send(frame)

    def close(self) -> None:
        self.sink.close()
