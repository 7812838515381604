"""The v4l2loopback side of the camera that pyvirtualcam leaves undone (outputs/v4l2_device.py, camera.py).

This machine has no /dev/video* and cannot load v4l2loopback (TESTING.md), so:
- the ioctl numbers and struct layouts are checked against this machine's own <linux/videodev2.h>, compiled
  with gcc (skipped where there is no compiler or header);
- the ioctls are issued for real on file descriptors we can create (a pipe, /dev/null): the kernel answers
  ENOTTY, which shows the call reaches it, and the product's handling of a refusal is the real one;
- the device's state is a folder laid out like /sys/class/video4linux (the driver's `format` and
  `max_openers` attributes), and the device a recording pyvirtualcam backend (tests/camera_recorder.py),
  registered under the v4l2loopback name for one test only. The guest test (tests/guest/) runs all of
  this against the real driver, with ffmpeg and Chromium reading the device.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import pyvirtualcam
from camera_recorder import RecordingCamera
from helpers import wait_for

from avatar_cam.daemon.controller import Controller
from avatar_cam.outputs import camera as camera_module
from avatar_cam.outputs import v4l2_device as v4l2
from avatar_cam.settings import Settings

C_PROGRAM = r"""
#include <stdio.h>
#include <stddef.h>
#include <linux/videodev2.h>
int main(void) {
    printf("%lu %lu %lu\n", (unsigned long)VIDIOC_STREAMON, (unsigned long)VIDIOC_G_PARM,
           (unsigned long)VIDIOC_S_PARM);
    printf("%zu %zu\n", sizeof(struct v4l2_streamparm), offsetof(struct v4l2_streamparm, parm.output.timeperframe));
    printf("%d\n", V4L2_BUF_TYPE_VIDEO_OUTPUT);
    return 0;
}
"""


def test_ioctl_numbers_and_layouts_match_the_kernel_header(tmp_path):
    if shutil.which("gcc") is None or not Path("/usr/include/linux/videodev2.h").exists():
        pytest.skip("no gcc or no <linux/videodev2.h> (linux-libc-dev) here to check against")
    (tmp_path / "v.c").write_text(C_PROGRAM)
    subprocess.run(["gcc", "-o", str(tmp_path / "v"), str(tmp_path / "v.c")], check=True)
    lines = subprocess.run([str(tmp_path / "v")], capture_output=True, text=True, check=True).stdout.split("\n")
    assert [int(x) for x in lines[0].split()] == [v4l2.VIDIOC_STREAMON, v4l2.VIDIOC_G_PARM, v4l2.VIDIOC_S_PARM]
    assert [int(x) for x in lines[1].split()] == [v4l2.STREAMPARM_SIZE, v4l2.TIMEPERFRAME_OFFSET]
    assert int(lines[2]) == v4l2.V4L2_BUF_TYPE_VIDEO_OUTPUT


@pytest.mark.parametrize(("fps", "interval"), [(30, (1, 30)), (5, (1, 5)), (29.97, (100, 2997)),
                                               (30000 / 1001, (1001, 30000)), (12.5, (2, 25))])
def test_the_frame_interval_is_the_rate_upside_down_and_round_trips(fps, interval):
    assert v4l2.frame_interval(fps) == interval
    buf = v4l2.pack_output_parm(fps)
    assert len(buf) == v4l2.STREAMPARM_SIZE
    assert int.from_bytes(buf[:4], "little") == v4l2.V4L2_BUF_TYPE_VIDEO_OUTPUT
    assert v4l2.unpack_fps(buf) == pytest.approx(fps, rel=1e-6)
    assert not any(buf[20:])  # extendedmode, writebuffers, reserved and the rest of the union stay zero


def test_a_zero_or_negative_rate_is_refused():
    for bad in (0, -5, float("nan")):
        with pytest.raises(ValueError):
            v4l2.frame_interval(bad)


def test_the_ioctl_is_really_issued_and_a_refusal_is_an_oserror():
    read, write = os.pipe()
    try:
        with pytest.raises(OSError) as caught:
            v4l2.set_frame_rate(write, 5)
        assert caught.value.errno == errno.ENOTTY  # the kernel saw an ioctl a pipe does not know
    finally:
        os.close(read)
        os.close(write)



def test_the_writer_s_file_is_found_among_this_process_s_files(tmp_path):
    device = tmp_path / "video10"  # a file standing in for the device node: only its path and modes matter
    device.write_bytes(b"")
    reader = os.open(device, os.O_RDONLY)
    theirs = os.open(device, os.O_WRONLY | os.O_SYNC)  # as pyvirtualcam opens it
    later = os.open(device, os.O_RDWR)
    try:
        assert v4l2.writer_fd(str(device), before=later) == theirs  # our own (later) file is not theirs
        assert v4l2.writer_fd(str(device)) == later
        assert v4l2.writer_fd(str(tmp_path / "video11")) is None
    finally:
        for fd in (reader, theirs, later):
            os.close(fd)


def test_preparing_a_writer_on_a_file_that_is_no_v4l2_device_says_what_it_could_not_do(tmp_path):
    theirs = os.open("/dev/null", os.O_WRONLY)
    try:
        announced, started, problems = v4l2.prepare_writer("/dev/null", 5)  # both ioctls reach the kernel: ENOTTY
    finally:
        os.close(theirs)
    assert announced is None and started is False
    assert any("could not set its frame rate to 5 fps" in p for p in problems), problems
    assert any("could not start the writer's stream" in p for p in problems), problems


def _fake_sysfs(root: Path, formats: dict[str, str]) -> Path:
    for name, fmt in formats.items():
        (root / name).mkdir(parents=True)
        (root / name / "max_openers").write_text("10\n")
        (root / name / "format").write_text(fmt)  # empty while the device holds no frames, as the driver does
    (root / "video0").mkdir()  # a real webcam: no v4l2loopback attributes
    return root


def test_the_size_a_reader_holds_is_read_from_sysfs(tmp_path):
    sysfs = _fake_sysfs(tmp_path, {"video10": "I420:320x180@5\n", "video11": ""})
    assert v4l2.loopback_devices(sysfs) == ["/dev/video10", "/dev/video11"]
    assert v4l2.current_format("/dev/video10", sysfs) == ("I420", 320, 180)
    assert v4l2.current_format("/dev/video11", sysfs) is None
    assert v4l2.current_format("/dev/video42", sysfs) is None


def test_pyvirtualcam_finding_no_device_while_a_reader_holds_one_says_so_and_what_to_do(tmp_path, monkeypatch):
    # What v4l2loopback 0.12 made pyvirtualcam say while Chromium held the device at the old size.
    monkeypatch.setattr(v4l2, "SYSFS", _fake_sysfs(tmp_path, {"video10": "I420:320x180@5\n"}))
    monkeypatch.setattr(camera_module.platform, "system", lambda: "Linux")
    detail = ("'v4l2loopback' backend: No v4l2 loopback device found at /dev/video[0-99]. "
              "Did you run 'modprobe v4l2loopback'? See also pyvirtualcam's documentation.")
    error = camera_module._open_failure(detail, 256, 144)
    assert isinstance(error, camera_module.CameraInUseError)
    assert error.size == (320, 180) and error.device == "/dev/video10"
    text = f"{error} {error.hint}"
    assert "No v4l2 loopback" not in text and "in use by another program" in text and "320x180" in text
    assert "turn the camera off in the call app" in error.hint and "256x144" in str(error)
    # A later v4l2loopback refuses the new size itself ("busy"): the same true message.
    busy = camera_module._open_failure("Virtual camera device /dev/video10 could not be configured: "
                                       "Device or resource busy", 256, 144)
    assert isinstance(busy, camera_module.CameraInUseError) and busy.size == (320, 180)
    # No device at all: the install hint, as before.
    monkeypatch.setattr(v4l2, "SYSFS", tmp_path / "nothing")
    missing = camera_module._open_failure(detail, 256, 144)
    assert not isinstance(missing, camera_module.CameraInUseError)
    assert "no virtual camera is available" in str(missing) and "modprobe v4l2loopback" in missing.hint


class LoopbackStandIn(RecordingCamera):
    """Stands in for pyvirtualcam's v4l2loopback backend: /dev/video10 (which does not exist here)."""

    def device(self) -> str:
        return "/dev/video10"


def test_a_new_size_while_a_call_app_holds_the_camera_keeps_the_old_size_live_and_says_why(
        pulse_server, astronaut_png, tmp_path, monkeypatch):
    monkeypatch.setitem(pyvirtualcam.camera.BACKENDS, "v4l2loopback", LoopbackStandIn)
    monkeypatch.setattr(v4l2, "SYSFS", _fake_sysfs(tmp_path / "sys", {"video10": "I420:320x180@5\n"}))
    RecordingCamera.instances.clear()
    settings = Settings(photo=str(astronaut_png), engine="lite", mic="pulse", camera_backend="v4l2loopback",
                        width=256, height=144, fps=5.0)
    ctl = Controller(settings, persist=False)
    status = ctl.start()
    try:
        # The first open at 256x144 was given back (the device holds 320x180); the camera runs at 320x180.
        assert RecordingCamera.instances[0].shape == (144, 256, 3) and RecordingCamera.instances[0].closed
        live = RecordingCamera.instances[-1]
        assert live.shape == (180, 320, 3) and not live.closed
        wait_for(lambda: len(live.frames) >= 3, "frames at the size the call app holds", timeout=30)
        assert all(f.shape == (180, 320, 3) for f in live.frames)
        assert status.state in ("live", "silent"), status
        assert status.camera == "/dev/video10"
        assert "in use by another program" in status.notice and "320x180" in status.notice, status.notice
        assert "turn the camera off in the call app" in status.notice
        assert (settings.width, settings.height) == (256, 144)  # the user's choice stays, for the next start
        assert "(/dev/video10 is in use" in status.line()
    finally:
        ctl.stop()
    assert ctl.status().notice is None
