"""What pyvirtualcam leaves undone on a v4l2loopback device, done through a file of our own beside its writer.

- The frame rate readers are told (VIDIOC_S_PARM): pyvirtualcam sets only the size and pixel format, so the
  device kept announcing its default 30 fps whatever our rate was (ffmpeg stamped our frames at 30 fps,
  Chromium asked for 30). The driver keeps one frame interval per device, settable through any open file of
  it and reported to every reader (VIDIOC_G_PARM, VIDIOC_ENUM_FRAMEINTERVALS).
- The writer's role, on v4l2loopback 0.12 (Debian 12 ships 0.12.7): with exclusive_caps=1 a writer that only
  calls write(), as pyvirtualcam does, never becomes the device's "writer", so when it closes the device stops
  announcing its output side for good: every later open by pyvirtualcam said "No v4l2 loopback device found"
  (a reopen at a new size, a camera off and on, a daemon restart) until the module was reloaded. Our file
  calls VIDIOC_STREAMON for the output, which makes it the writer; closing it (after pyvirtualcam's, or by the
  kernel if the process dies) gives the output side back. Later releases make write() itself the writer, and
  our extra writer could then take the device's one output slot from pyvirtualcam: they are left alone.
- The size the device really has (`current_format`): while a reader holds it, v4l2loopback keeps its size
  and 0.12 silently ignores a writer asking for another one (later releases refuse with EBUSY).

The structures are <linux/videodev2.h>'s on every Linux ABI (32-bit fields only, so no padding):
v4l2_streamparm = u32 type + 200-byte union (v4l2_outputparm: capability, outputmode, timeperframe
{numerator, denominator}, extendedmode, writebuffers, reserved[4]); v4l2_capability = driver[16], card[32],
bus_info[32], version, capabilities, device_caps, reserved[3].
"""

from __future__ import annotations

import os
import re
import struct
from fractions import Fraction
from pathlib import Path

V4L2_BUF_TYPE_VIDEO_OUTPUT = 2
STREAMPARM_SIZE = 4 + 200
CAPABILITY_SIZE = 104
_PARM_HEAD = struct.Struct("=I II II II 4I")  # type; capability, outputmode; timeperframe; extendedmode, writebuffers; reserved
TIMEPERFRAME_OFFSET = 12  # offsetof(struct v4l2_streamparm, parm.output.timeperframe)
VERSION_OFFSET = 80  # offsetof(struct v4l2_capability, version)
WRITER_FIXED_IN = (0, 13, 0)  # v4l2loopback releases before this lose their output side (see above)


def _ioc(direction: int, kind: str, number: int, size: int) -> int:
    """The kernel's generic ioctl number (x86, ARM, RISC-V): _IOR is direction 2, _IOW 1, _IOWR 3."""
    return (direction << 30) | (size << 16) | (ord(kind) << 8) | number


VIDIOC_QUERYCAP = _ioc(2, "V", 0, CAPABILITY_SIZE)
VIDIOC_STREAMON = _ioc(1, "V", 18, 4)
VIDIOC_G_PARM = _ioc(3, "V", 21, STREAMPARM_SIZE)
VIDIOC_S_PARM = _ioc(3, "V", 22, STREAMPARM_SIZE)


def frame_interval(fps: float) -> tuple[int, int]:
    """The time per frame as (numerator, denominator) seconds: 30 -> (1, 30), 29.97 -> (100, 2997)."""
    if not fps > 0:
        raise ValueError(f"frame rate must be positive, not {fps!r}")
    rate = Fraction(fps).limit_denominator(1001)
    return rate.denominator, rate.numerator


def pack_output_parm(fps: float) -> bytearray:
    """A struct v4l2_streamparm asking an output device for `fps` frames per second."""
    numerator, denominator = frame_interval(fps)
    buf = bytearray(STREAMPARM_SIZE)
    _PARM_HEAD.pack_into(buf, 0, V4L2_BUF_TYPE_VIDEO_OUTPUT, 0, 0, numerator, denominator, 0, 0, 0, 0, 0, 0)
    return buf


def unpack_fps(buf: bytes) -> float | None:
    """The rate a struct v4l2_streamparm says (None when its interval is zero)."""
    numerator, denominator = struct.unpack_from("=II", buf, TIMEPERFRAME_OFFSET)
    return denominator / numerator if numerator else None


def set_frame_rate(fd: int, fps: float) -> float | None:
    """Ask the V4L2 device open as `fd` to announce `fps`; returns the rate it announces now.
    Raises OSError as the ioctl does (ENOTTY: not a V4L2 device; EINVAL: a rate it refuses)."""
    import fcntl

    buf = pack_output_parm(fps)
    fcntl.ioctl(fd, VIDIOC_S_PARM, buf, True)  # the driver writes back what it keeps
    return unpack_fps(buf)


def driver_version(fd: int) -> tuple[int, int, int]:
    """The driver's version (VIDIOC_QUERYCAP), e.g. (0, 12, 7) for v4l2loopback 0.12.7."""
    import fcntl

    buf = bytearray(CAPABILITY_SIZE)
    fcntl.ioctl(fd, VIDIOC_QUERYCAP, buf, True)
    (code,) = struct.unpack_from("=I", buf, VERSION_OFFSET)
    return code >> 16, (code >> 8) & 0xFF, code & 0xFF


def start_output(fd: int) -> None:
    """VIDIOC_STREAMON for the output side: the file becomes the device's writer."""
    import fcntl

    fcntl.ioctl(fd, VIDIOC_STREAMON, struct.pack("=i", V4L2_BUF_TYPE_VIDEO_OUTPUT))


SYSFS = Path("/sys/class/video4linux")


def loopback_devices(sysfs: Path | None = None) -> list[str]:
    """The /dev paths of the v4l2loopback devices there are (they alone have a `max_openers` attribute)."""
    sysfs = sysfs or SYSFS
    try:
        return sorted(f"/dev/{d.name}" for d in sysfs.iterdir() if (d / "max_openers").exists())
    except OSError:
        return []


def current_format(device: str, sysfs: Path | None = None) -> tuple[str, int, int] | None:
    """(fourcc, width, height) a v4l2loopback device has while it holds frames (its sysfs `format`,
    e.g. "I420:320x180@5"), or None when it holds none or is not a v4l2loopback device."""
    try:
        text = ((sysfs or SYSFS) / Path(device).name / "format").read_text()
    except OSError:
        return None
    found = re.match(r"\s*(\w{1,4})\s*:(\d+)x(\d+)", text)
    return (found.group(1), int(found.group(2)), int(found.group(3))) if found else None


class WriterFile:
    """Our own file on a v4l2loopback device, open for as long as pyvirtualcam's: it sets the frame rate and,
    on 0.12, holds the writer's role (see the top). Close it after pyvirtualcam's camera."""

    def __init__(self, device: str, fps: float):
        self.fd: int | None = os.open(device, os.O_RDWR | os.O_NONBLOCK)
        self.problems: list[str] = []  # what the driver refused (the camera works without it)
        self.announced_fps: float | None = None
        self.holds_writer = False
        try:
            self.version = driver_version(self.fd)
            try:
                self.announced_fps = set_frame_rate(self.fd, fps)
            except OSError as exc:
                self.problems.append(f"could not set its frame rate to {fps:g} fps ({exc.strerror or exc})")
            if self.version < WRITER_FIXED_IN:
                try:
                    start_output(self.fd)
                    self.holds_writer = True
                except OSError as exc:
                    self.problems.append(f"could not hold its writer's role ({exc.strerror or exc}): after this "
                                         "camera closes it may need `sudo modprobe -r v4l2loopback && sudo modprobe v4l2loopback`")
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        fd, self.fd = self.fd, None
        if fd is not None:
            os.close(fd)
