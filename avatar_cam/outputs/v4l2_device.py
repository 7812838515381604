"""What pyvirtualcam leaves undone on a v4l2loopback device, done through a file of our own beside its writer.

- The frame rate readers are told (VIDIOC_S_PARM): pyvirtualcam sets only the size and pixel format, so the
  device kept announcing its default 30 fps whatever our rate was (ffmpeg stamped our frames at 30 fps,
  Chromium asked for 30). The driver keeps one frame interval per device, settable through any open file of
  it and reported to every reader (VIDIOC_G_PARM, VIDIOC_ENUM_FRAMEINTERVALS).
- The writer's role (v4l2loopback 0.12; Debian 12 ships 0.12.7): with exclusive_caps=1 a writer that only
  calls write(), as pyvirtualcam does, never becomes the device's "writer", so when it closes the device stops
  announcing its output side for good: every later open by pyvirtualcam said "No v4l2 loopback device found"
  (a reopen at a new size, a camera off and on, a daemon restart) until the module was reloaded
  (v4l2loopback issue 470). The cure its maintainers give is VIDIOC_STREAMON on the writer's file before
  writing: we issue it on pyvirtualcam's own file (found in /proc/self/fd), which then gives the output side
  back when it closes. Later releases, which make write() itself the writer, take it as what it is there too:
  the writer starting its stream. (The driver's own version cannot be asked for: VIDIOC_QUERYCAP reports the kernel's.)
- The size the device really has (`current_format`): while a reader holds it, v4l2loopback keeps its size
  and 0.12 silently ignores a writer asking for another one (later releases refuse with EBUSY).

The structures are <linux/videodev2.h>'s on every Linux ABI (32-bit fields only, so no padding):
v4l2_streamparm = u32 type + 200-byte union (v4l2_outputparm: capability, outputmode, timeperframe
{numerator, denominator}, extendedmode, writebuffers, reserved[4]).
"""

from __future__ import annotations

import os
import re
import struct
from fractions import Fraction
from pathlib import Path

V4L2_BUF_TYPE_VIDEO_OUTPUT = 2
STREAMPARM_SIZE = 4 + 200
_PARM_HEAD = struct.Struct("=I II II II 4I")  # type; capability, outputmode; timeperframe; extendedmode, writebuffers; reserved
TIMEPERFRAME_OFFSET = 12  # offsetof(struct v4l2_streamparm, parm.output.timeperframe)


def _ioc(direction: int, kind: str, number: int, size: int) -> int:
    """The kernel's generic ioctl number (x86, ARM, RISC-V): _IOR is direction 2, _IOW 1, _IOWR 3."""
    return (direction << 30) | (size << 16) | (ord(kind) << 8) | number


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


def writer_fd(device: str, before: int | None = None) -> int | None:
    """The file descriptor this process has open for writing on `device` (pyvirtualcam's): the newest one
    below `before` when there are several. None if there is none (or no /proc)."""
    try:
        target = os.path.realpath(device)
        found = []
        for name in os.listdir("/proc/self/fd"):
            fd = int(name)
            if before is not None and fd >= before:
                continue
            try:
                if os.path.realpath(f"/proc/self/fd/{fd}") != target:
                    continue
                flags = int(Path(f"/proc/self/fdinfo/{fd}").read_text().split("flags:")[1].split()[0], 8)
            except (OSError, IndexError, ValueError):
                continue
            if flags & os.O_ACCMODE in (os.O_WRONLY, os.O_RDWR):
                found.append(fd)
        return max(found) if found else None
    except OSError:
        return None


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


def prepare_writer(device: str, fps: float) -> tuple[float | None, bool, list[str]]:
    """For a device pyvirtualcam has just opened for writing (before its first frame): set the rate readers
    are told, and make its file the device's writer (see the top). Returns (the rate the device announces
    now or None, whether the writer's file started its stream, what the driver refused)."""
    problems: list[str] = []
    announced = None
    fd = os.open(device, os.O_RDWR | os.O_NONBLOCK)  # a file of our own for the rate: it never reads nor writes
    try:
        try:
            announced = set_frame_rate(fd, fps)
        except OSError as exc:
            problems.append(f"could not set its frame rate to {fps:g} fps ({exc.strerror or exc})")
        writer = writer_fd(device, before=fd)
    finally:
        os.close(fd)
    started = False
    if writer is None:
        problems.append("could not find the writer's file to start its stream: after this camera closes the device "
                        "may need `sudo modprobe -r v4l2loopback && sudo modprobe v4l2loopback`")
    else:
        try:
            start_output(writer)
            started = True
        except OSError as exc:
            problems.append(f"could not start the writer's stream ({exc.strerror or exc})")
    return announced, started, problems
