"""The "Avatar Cam" device that call apps and OBS select (pyvirtualcam), kept open through hiccups.

Sinks take BGR uint8 frames of the output size through `send(frame)` and release what they hold in `close()`
(idempotent). They are called from the pipeline's frame thread only (or its sender thread, never both at once).
"""

from __future__ import annotations

import logging
import platform
import re
import time
from collections.abc import Callable

import numpy as np

from avatar_cam.errors import CameraError, UnknownCameraBackendError

log = logging.getLogger(__name__)


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


class CameraInUseError(CameraError):
    """A reader (a call app) holds the v4l2loopback device at another size, which it keeps until released."""

    def __init__(self, device: str, held: tuple[int, int], wanted: tuple[int, int]):
        self.device, self.size, self.wanted = device, held, wanted
        super().__init__(
            f"{device} is in use by another program (a call app?) at {held[0]}x{held[1]}, so it cannot switch to "
            f"{wanted[0]}x{wanted[1]} now",
            hint="turn the camera off in the call app (or leave the call), then turn Avatar Cam's camera off and on "
                 "(tray: Stop and Start camera; or `avatar-cam ctl stop`, `avatar-cam ctl start`); until then it "
                 f"keeps sending {held[0]}x{held[1]}")


def _open_failure(detail: str, width: int, height: int) -> CameraError:
    """What pyvirtualcam's refusal means for the user, with what to do. On Linux the v4l2loopback devices'
    state says more than pyvirtualcam does: one held by a reader at another size (later v4l2loopback releases
    refuse the size change as "busy"; 0.12 hid such a device: "No v4l2 loopback device found")."""
    if platform.system() == "Linux" and ("v4l2" in detail.lower() or "/dev/video" in detail):
        from avatar_cam.outputs.v4l2_device import current_format, loopback_devices

        named = re.search(r"/dev/video\d+", detail)
        for device in [named.group(0)] if named else loopback_devices():
            held = current_format(device)
            if held is not None and (held[1], held[2]) != (width, height):
                return CameraInUseError(device, (held[1], held[2]), (width, height))
        if not named and loopback_devices():
            return CameraError(f"no v4l2loopback device would take the camera: {detail}",
                               hint="another program may be writing to it; if none is, v4l2loopback 0.12 can lose "
                                    "its output side after a writer closed: `sudo modprobe -r v4l2loopback && "
                                    "sudo modprobe v4l2loopback` (with call apps closed)")
    busy = "busy" in detail.lower() or "in use" in detail.lower()
    what = "the virtual camera is busy (another program is writing to it)" if busy else "no virtual camera is available"
    return CameraError(f"{what}: {detail}", hint=camera_install_hint())


class VirtualCameraSink:
    """The "Avatar Cam" device that call apps and OBS select, through pyvirtualcam."""

    def __init__(self, width: int, height: int, fps: float, backend: str | None = None, device: str | None = None):
        import pyvirtualcam

        known = getattr(getattr(pyvirtualcam, "camera", None), "BACKENDS", None)
        if backend and known is not None and backend not in known:
            # Checked here: pyvirtualcam's half-built Camera would complain again when garbage-collected.
            raise UnknownCameraBackendError(f"unknown virtual camera backend {backend!r}",
                              hint="leave --camera-backend out, or use v4l2loopback, obs or unitycapture")
        try:
            self._cam = pyvirtualcam.Camera(width, height, fps, fmt=pyvirtualcam.PixelFormat.BGR, backend=backend, device=device)
        except KeyError:
            raise UnknownCameraBackendError(f"unknown virtual camera backend {backend!r}",
                              hint="leave --camera-backend out, or use v4l2loopback, obs or unitycapture") from None
        except RuntimeError as exc:
            raise _open_failure(" ".join(str(exc).split()), width, height) from None
        self.device = self._cam.device
        self.backend = self._cam.backend
        self.announced_fps: float | None = None  # the rate the device tells readers, where we set it
        self._readers = None  # who reads the device besides us (outputs/readers.py), where that can be known
        if self.backend == "v4l2loopback" and str(self.device).startswith("/dev/"):
            self._prepare_loopback(width, height, fps)
            from avatar_cam.outputs.readers import CameraReaders

            readers = CameraReaders(self.device)
            self._readers = readers if readers.start() else None
        log.info("virtual camera %s (%s) open at %dx%d %.0f fps", self.device, self.backend, width, height, fps)

    @property
    def watched(self) -> bool:
        """Whether an app may be reading the camera (False only when known that none is)."""
        readers = self._readers
        return readers is None or readers.watched

    def _prepare_loopback(self, width: int, height: int, fps: float) -> None:
        """v4l2loopback: our rate and the writer's role (outputs/v4l2_device.py), and a refusal, rather than
        frames the device would misread, when a reader holds it at another size."""
        from avatar_cam.outputs.v4l2_device import current_format, prepare_writer

        try:
            self.announced_fps, started, problems = prepare_writer(self.device, fps)
            for problem in problems:
                log.warning("%s: %s", self.device, problem)
            log.info("%s announces %s fps to readers; writer's stream %s", self.device, self.announced_fps,
                     "started" if started else "not started")
        except OSError as exc:
            log.warning("%s: could not set its frame rate to %g fps (%s); call apps may expect another rate",
                        self.device, fps, exc)
        held = current_format(self.device)
        if held is not None and (held[1], held[2]) != (width, height):
            self.close()
            raise CameraInUseError(self.device, (held[1], held[2]), (width, height))

    def send(self, frame: np.ndarray) -> None:
        self._cam.send(frame)

    def close(self) -> None:
        readers, self._readers = getattr(self, "_readers", None), None
        if readers is not None:
            readers.stop()
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
    def watched(self) -> bool:
        """Whether an app may be reading the camera (while it is closed: yes, so that frames keep reopening it)."""
        cam = self._cam
        return cam is None or getattr(cam, "watched", True)

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
