"""Where frames go: the virtual camera, a preview window, an mp4 file.

Every sink takes BGR uint8 frames of the output size through `send(frame)` and releases what it holds
in `close()` (idempotent). Sinks are called from the pipeline's frame thread only.
"""

from __future__ import annotations

import contextlib
import logging
import os
import platform
import queue
import shutil
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from .errors import AvatarCamError

log = logging.getLogger(__name__)


class CameraError(AvatarCamError):
    """The virtual camera is missing, busy, or failed."""


def camera_install_hint() -> str:
    system = platform.system()
    if system == "Linux":
        return ("install and load v4l2loopback: run install_scripts/install-linux.sh, or "
                "`sudo modprobe v4l2loopback devices=1 video_nr=10 card_label=\"Avatar Cam\" exclusive_caps=1`")
    if system == "Windows":
        return "install OBS Studio (it provides the virtual camera), or run install_scripts/install-windows.ps1"
    if system == "Darwin":
        return "install OBS Studio 30 or newer and start it once so its virtual camera is registered (install_scripts/install-macos.sh)"
    return "install a virtual camera driver supported by pyvirtualcam"


class VirtualCameraSink:
    """The "Avatar Cam" device that call apps and OBS select, through pyvirtualcam."""

    def __init__(self, width: int, height: int, fps: float, backend: str | None = None, device: str | None = None):
        import pyvirtualcam

        known = getattr(getattr(pyvirtualcam, "camera", None), "BACKENDS", None)
        if backend and known is not None and backend not in known:
            # Checked here: pyvirtualcam's half-built Camera would complain again when garbage-collected.
            raise CameraError(f"unknown virtual camera backend {backend!r}",
                              hint="leave --camera-backend out, or use v4l2loopback, obs or unitycapture")
        try:
            self._cam = pyvirtualcam.Camera(width, height, fps, fmt=pyvirtualcam.PixelFormat.BGR, backend=backend, device=device)
        except KeyError:
            raise CameraError(f"unknown virtual camera backend {backend!r}",
                              hint="leave --camera-backend out, or use v4l2loopback, obs or unitycapture") from None
        except RuntimeError as exc:
            detail = " ".join(str(exc).split())
            busy = "busy" in detail.lower() or "in use" in detail.lower()
            what = "the virtual camera is busy (another program is writing to it)" if busy else "no virtual camera is available"
            raise CameraError(f"{what}: {detail}", hint=camera_install_hint()) from None
        self.device = self._cam.device
        self.backend = self._cam.backend
        log.info("virtual camera %s (%s) open at %dx%d %.0f fps", self.device, self.backend, width, height, fps)

    def send(self, frame: np.ndarray) -> None:
        self._cam.send(frame)

    def close(self) -> None:
        cam, self._cam = getattr(self, "_cam", None), None
        if cam is not None:
            cam.close()


class ReconnectingCamera:
    """The virtual camera, reopened with back-off whenever it is missing, busy or fails mid-stream.

    A call app must never see the daemon die because the camera hiccuped, so `send` never raises: a failing
    send closes the camera and frames are dropped until a reopen succeeds. Reopen attempts wait 1, 2, 4, ...
    up to `max_backoff_s` seconds between tries and start again at 1 s after a success.
    Threads: `send` (and so every reopen) runs on the pipeline's frame thread, the camera's only user;
    `error`, `device` and `next_retry_in` are plain reads that the controller's watchdog may poll from
    another thread. `close` is for when the frame thread has stopped.
    """

    def __init__(self, open_camera: Callable[[], VirtualCameraSink], *, first_backoff_s: float = 1.0,
                 max_backoff_s: float = 30.0, camera: VirtualCameraSink | None = None, error: str | None = None):
        self._open = open_camera
        self.first_backoff_s, self.max_backoff_s = first_backoff_s, max_backoff_s
        self._cam = camera
        self.error: str | None = error  # why frames are not reaching the camera right now (None: they are)
        self.failures = 0  # reopen attempts that failed in a row
        self.reopened = 0  # successful reopens (after a failure)
        self._backoff = first_backoff_s
        self._next_try = time.monotonic() + (self._backoff if camera is None else 0.0)
        self._closed = False

    @property
    def device(self) -> str | None:
        cam = self._cam
        return getattr(cam, "device", None) if cam is not None else None

    @property
    def next_retry_in(self) -> float | None:
        """Seconds until the next reopen attempt, or None while the camera is open."""
        return None if self._cam is not None else max(0.0, self._next_try - time.monotonic())

    def send(self, frame: np.ndarray) -> None:
        if self._closed:
            return
        if self._cam is None and not self._reopen():
            return
        try:
            self._cam.send(frame)
        except Exception as exc:  # noqa: BLE001  (any driver failure: keep the frame thread alive)
            self._lost(f"the virtual camera failed: {' '.join(str(exc).split()) or type(exc).__name__}")

    def _lost(self, why: str) -> None:
        cam, self._cam = self._cam, None
        if cam is not None:
            try:
                cam.close()
            except Exception:  # noqa: BLE001
                log.debug("closing a failed camera raised", exc_info=True)
        self.error = why
        self._backoff = self.first_backoff_s
        self._next_try = time.monotonic() + self._backoff
        log.warning("%s; reopening it in %.0f s", why, self._backoff)

    def _reopen(self) -> bool:
        now = time.monotonic()
        if now < self._next_try:
            return False
        try:
            self._cam = self._open()
        except Exception as exc:  # noqa: BLE001
            self.failures += 1
            self._backoff = min(self._backoff * 2, self.max_backoff_s)
            self._next_try = now + self._backoff
            detail = " ".join(str(exc).splitlines()[0].split()) if str(exc) else type(exc).__name__
            self.error = f"{detail} (retrying in {self._backoff:.0f} s)"
            log.log(logging.WARNING if self.failures <= 3 else logging.DEBUG, "the virtual camera did not reopen: %s", self.error)
            return False
        log.info("the virtual camera is back (%s)", self.device)
        self.error, self.failures, self._backoff = None, 0, self.first_backoff_s
        self.reopened += 1
        return True

    def close(self) -> None:
        self._closed = True
        cam, self._cam = self._cam, None
        if cam is not None:
            cam.close()


def preview_unavailable() -> str | None:
    """Why no preview window can open here (no display), or None."""
    if platform.system() == "Linux" and not os.environ.get("DISPLAY") and not os.environ.get("WAYLAND_DISPLAY"):
        return "cannot open a preview window: no display (DISPLAY and WAYLAND_DISPLAY are not set)"
    return None


PREVIEW_HINT = "run it from a desktop session, or leave the preview off (the virtual camera works without it)"

# The window lives in its own process: OpenCV's GUI (Qt) aborts the whole process when the display is gone or
# unreachable, and its event loop must not meet the tray's GTK loop. Frames come in on stdin as an 8-byte
# header (height, width) and BGR bytes; "shown" on stdout once the window is up; it exits 0 on end of input
# or when the user closes the window.
_PREVIEW_WINDOW = r"""
import struct, sys
import cv2, numpy as np
title, stream, shown = sys.argv[1], sys.stdin.buffer, False
while len(head := stream.read(8)) == 8:
    h, w = struct.unpack("<II", head)
    data = stream.read(h * w * 3)
    if len(data) < h * w * 3:
        break
    cv2.imshow(title, np.frombuffer(data, np.uint8).reshape(h, w, 3))
    cv2.waitKey(1)
    if not shown:
        print("shown", flush=True)
        shown = True
        continue
    try:
        if cv2.getWindowProperty(title, cv2.WND_PROP_VISIBLE) < 1:
            break
    except cv2.error:  # Qt destroyed the window the user closed
        break
"""


class PreviewSink:
    """A window showing what the camera sends, drawn by a child process (see `_PREVIEW_WINDOW`).

    `__init__` returns once the window is up, or raises AvatarCamError saying why it cannot be. `send` runs
    on the frame thread and never waits: the newest frame is handed to the "preview" thread, which scales it
    down to at most `max_width` and writes it to the child; frames are dropped, never queued up. When the
    child ends (the user closed the window, or it failed) `alive` turns False, `error` says why, and frames
    are dropped until `close()`.
    """

    def __init__(self, title: str = "Avatar Cam preview", max_width: int = 640, ready_timeout_s: float = 20.0):
        problem = preview_unavailable()
        if problem:
            raise AvatarCamError(problem, hint=PREVIEW_HINT)
        self.title, self.max_width = title, max_width
        self.error: str | None = None
        self._closing = False
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 - closed in close(); Qt may talk for hours: a file never fills up
        self._proc = subprocess.Popen([sys.executable, "-c", _PREVIEW_WINDOW, title], stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, stderr=self._stderr)
        self._frames: queue.Queue[np.ndarray | None] = queue.Queue(maxsize=1)
        self._frames.put(np.zeros((360, 640, 3), np.uint8))  # something to show until the first frame
        self._thread = threading.Thread(target=self._feed, name="preview", daemon=True)
        self._thread.start()
        if not self._wait_shown(ready_timeout_s):
            why = self._child_said() or f"it did not show within {ready_timeout_s:.0f} s"
            self.close()
            raise AvatarCamError(f"cannot open a preview window: {why}", hint=PREVIEW_HINT)
        log.info("preview window open (process %d)", self._proc.pid)

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
                self._proc.stdin.write(struct.pack("<II", h, w))
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


def ffmpeg_exe() -> str:
    """The ffmpeg shipped inside the imageio-ffmpeg wheel, else one on PATH."""
    try:
        import imageio_ffmpeg

        return imageio_ffmpeg.get_ffmpeg_exe()
    except (ImportError, RuntimeError):
        exe = shutil.which("ffmpeg")
        if exe is None:
            raise AvatarCamError("ffmpeg is needed to write mp4 files", hint="pip install imageio-ffmpeg") from None
        return exe


class Mp4Recorder:
    """H.264 mp4 with the audio muxed in. Frames stream into ffmpeg as they come; audio is added at `close()`.

    `audio` is a file to mux, or None to mux what was given to `write_audio` (16 kHz mono, for live recording).
    The output appears only when complete: it is written under a temporary name and renamed.
    """

    def __init__(self, path: str | Path, width: int, height: int, fps: float, audio: str | Path | None = None):
        self.path = Path(path)
        self._audio_file = Path(audio) if audio else None
        self._tmpdir = Path(tempfile.mkdtemp(prefix="avatar-cam-rec-"))
        self._video = self._tmpdir / "video.mp4"
        self._pcm: list[np.ndarray] = []
        self.frames = 0
        cmd = [ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y",
               "-f", "rawvideo", "-pix_fmt", "bgr24", "-s", f"{width}x{height}", "-r", f"{fps}", "-i", "-",
               "-c:v", "libx264", "-preset", "veryfast", "-crf", "20", "-pix_fmt", "yuv420p", "-threads", "1",
               str(self._video)]
        self._proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stderr=subprocess.PIPE)

    def send(self, frame: np.ndarray) -> None:
        try:
            self._proc.stdin.write(np.ascontiguousarray(frame).tobytes())
        except BrokenPipeError:
            raise AvatarCamError(f"the mp4 encoder stopped: {self._proc.stderr.read().decode(errors='replace')[-300:]}") from None
        self.frames += 1

    def write_audio(self, samples: np.ndarray) -> None:
        self._pcm.append(np.asarray(samples, np.float32).copy())

    def close(self) -> None:
        if self._proc is None:
            return
        proc, self._proc = self._proc, None
        proc.stdin.close()
        err = proc.stderr.read().decode(errors="replace")
        if proc.wait() != 0:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            raise AvatarCamError(f"writing {self.path.name} failed: {err.strip()[-300:]}")
        audio = self._audio_file
        if audio is None and self._pcm:
            import soundfile

            audio = self._tmpdir / "audio.wav"
            soundfile.write(audio, np.concatenate(self._pcm), 16000)
        partial = self.path.with_name(f".{self.path.name}.part.mp4")
        cmd = [ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y", "-i", str(self._video)]
        if audio is not None:
            cmd += ["-i", str(audio), "-map", "0:v:0", "-map", "1:a:0", "-c:a", "aac", "-b:a", "128k"]
        cmd += ["-c:v", "copy", "-movflags", "+faststart", str(partial)]
        done = subprocess.run(cmd, capture_output=True, text=True)
        shutil.rmtree(self._tmpdir, ignore_errors=True)
        if done.returncode != 0:
            partial.unlink(missing_ok=True)
            raise AvatarCamError(f"muxing {self.path.name} failed: {done.stderr.strip()[-300:]}")
        os.replace(partial, self.path)
