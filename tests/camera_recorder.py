"""A pyvirtualcam backend that records what the product sends, for tests.

This machine has no /dev/video* and cannot load v4l2loopback, so the kernel device is the one part we
stand in for: the product still goes through the real `pyvirtualcam.Camera` API, with this backend named
explicitly (never `backend=None`, which would let a test backend replace a missing real camera).
"""

from __future__ import annotations

import time

import numpy as np
import pyvirtualcam

BACKEND = "test-recorder"


class RecordingCamera:
    instances: list[RecordingCamera] = []

    def __init__(self, *, width, height, fps, fourcc, device, keep_frames: bool = True, **kw):
        self.shape = (height, width, 3)
        self.fps = fps
        self.keep_frames = keep_frames
        self.frames: list[np.ndarray] = []
        self.times: list[float] = []
        self.closed = False
        RecordingCamera.instances.append(self)

    def send(self, frame) -> None:
        now = time.monotonic()
        if self.keep_frames:  # the frame first: a reader that sees a time always finds its frame
            self.frames.append(np.asarray(frame).reshape(self.shape).copy())
        self.times.append(now)

    def close(self) -> None:
        self.closed = True

    def device(self) -> str:
        return "test-recorder"

    def native_fourcc(self):
        return None


def register() -> type[RecordingCamera]:
    RecordingCamera.instances.clear()
    pyvirtualcam.register_backend(BACKEND, RecordingCamera)
    return RecordingCamera
