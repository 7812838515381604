"""The preview window: what the camera sends, shown on the desktop by a child process.

Threads: `send` runs on the pipeline's frame thread and never waits; the "preview" thread feeds the child.
"""

from __future__ import annotations

import contextlib
import logging
import os
import platform
import queue
import subprocess
import sys
import tempfile
import threading

import numpy as np

from avatar_cam.errors import AvatarCamError
from avatar_cam.outputs.preview_window import HEADER

log = logging.getLogger(__name__)


def preview_unavailable() -> str | None:
    """Why no preview window can open here (no display), or None."""
    if platform.system() == "Linux" and not os.environ.get("DISPLAY") and not os.environ.get("WAYLAND_DISPLAY"):
        return "cannot open a preview window: no display (DISPLAY and WAYLAND_DISPLAY are not set)"
    return None


PREVIEW_HINT = "run it from a desktop session, or leave the preview off (the virtual camera works without it)"

# The window lives in its own process (outputs/preview_window.py): a GUI toolkit that fails can only end that
# process (OpenCV's Qt aborts the whole process when the display is gone), and its event loop never meets the
# tray's GTK loop.


class PreviewSink:
    """A window showing what the camera sends, drawn by a child process (outputs/preview_window.py).

    `opencv` asks for OpenCV's window where the X11 one would be used (to compare them: `bench preview`).
    `__init__` returns once the window is up, or raises AvatarCamError saying why it cannot be. `send` runs
    on the frame thread and never waits: the newest frame is handed to the "preview" thread, which scales it
    down to at most `max_width` and writes it to the child; frames are dropped, never queued up. When the
    child ends (the user closed the window, or it failed) `alive` turns False, `error` says why, and frames
    are dropped until `close()`.
    """

    def __init__(self, title: str = "Avatar Cam preview", max_width: int = 640, ready_timeout_s: float = 20.0,
                 opencv: bool = False):
        problem = preview_unavailable()
        if problem:
            raise AvatarCamError(problem, hint=PREVIEW_HINT)
        self.title, self.max_width = title, max_width
        self.error: str | None = None
        self._closing = False
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 - closed in close(); a toolkit may talk for hours: a file never fills up
        self._proc = subprocess.Popen([sys.executable, "-m", "avatar_cam.outputs.preview_window", title,
                                       *(["opencv"] if opencv else [])],
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr)
        self._frames: queue.Queue[np.ndarray | None] = queue.Queue(maxsize=1)
        self._frames.put(np.zeros((360, 640, 3), np.uint8))  # something to show until the first frame
        self._thread = threading.Thread(target=self._feed, name="preview", daemon=True)
        self._thread.start()
        if not self._wait_shown(ready_timeout_s):
            why = self._child_said() or f"it did not show within {ready_timeout_s:.0f} s"
            self.close()
            raise AvatarCamError(f"cannot open a preview window: {why}", hint=PREVIEW_HINT)
        log.info("preview window open (process %d)", self.pid)

    def _wait_shown(self, timeout: float) -> bool:
        said: list[bytes] = []
        answered = threading.Event()

        def listen() -> None:  # readline blocks: on a thread of its own, so the wait can time out
            said.append(self._proc.stdout.readline())
            answered.set()

        threading.Thread(target=listen, name="preview-ready", daemon=True).start()
        answered.wait(timeout)
        return bool(said) and said[0].strip() == b"shown"

    def _child_said(self) -> str:
        """Why the child failed, from its stderr: Qt's line about the display, else the last line, or ""."""
        self._stderr.seek(0)
        lines = [x.strip() for x in self._stderr.read()[-4000:].decode(errors="replace").splitlines() if x.strip()]
        about_display = [x for x in lines if "display" in x.lower()]
        return (about_display or lines or [""])[-1]

    @property
    def pid(self) -> int:
        """The window's process."""
        return self._proc.pid

    @property
    def alive(self) -> bool:
        return self._proc.poll() is None and self.error is None

    @property
    def closed_by_user(self) -> bool:
        """The child ended by itself without an error: the user closed the window."""
        return not self._closing and self._proc.poll() == 0

    def _feed(self) -> None:
        import cv2

        while not self._closing:
            try:
                frame = self._frames.get(timeout=0.25)
            except queue.Empty:
                continue
            if frame is None:
                return
            h, w = frame.shape[:2]
            if w > self.max_width:
                h, w = round(h * self.max_width / w) // 2 * 2, self.max_width
                frame = cv2.resize(frame, (w, h), interpolation=cv2.INTER_AREA)
            try:
                self._proc.stdin.write(HEADER.pack(h, w))
                self._proc.stdin.write(np.ascontiguousarray(frame).tobytes())
                self._proc.stdin.flush()
            except (BrokenPipeError, OSError, ValueError):
                if not self._closing:
                    code = self._proc.wait()
                    self.error = ("the preview window was closed" if code == 0 else
                                  f"the preview window failed (exit status {code}): {self._child_said()}")
                    log.info("%s", self.error)
                return

    def send(self, frame: np.ndarray) -> None:
        if self._closing or self.error is not None:
            return
        with contextlib.suppress(queue.Empty):
            self._frames.get_nowait()  # drop the frame not shown yet: the newest one wins
        with contextlib.suppress(queue.Full):
            self._frames.put_nowait(frame)

    def close(self) -> None:
        """Close the window and end its process (idempotent)."""
        if self._closing:
            return
        self._closing = True  # the feed thread ends within 0.25 s, or once its write returns
        with contextlib.suppress(queue.Full):
            self._frames.put_nowait(None)
        self._thread.join(timeout=2)
        with contextlib.suppress(OSError):
            self._proc.stdin.close()
        try:
            self._proc.wait(timeout=3)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        self._proc.stdout.close()
        self._stderr.close()
