"""The guest's camera checks: install-linux.sh's camera step and a plain `modprobe` as at boot (with
`avatar-cam doctor` before and after), the device's name and options in sysfs, and ffmpeg reading the device
beside Chromium."""

from __future__ import annotations

import json
import re
from pathlib import Path

from guest_io import JOB, RESULTS, avatar_cam, product_env, sh, step


def camera_check() -> dict:
    out = avatar_cam("doctor", "--json")
    checks = json.loads(out["stdout"])["checks"] if out["stdout"].strip().startswith("{") else []
    found = {c["name"]: c for c in checks}
    return {"camera": found.get("virtual camera"), "at_boot": found.get("virtual camera at boot"),
            "seconds": out["seconds"], "stderr": out["stderr"][-500:]}


def video_devices() -> dict:
    devices = {}
    for name in sorted(Path("/sys/class/video4linux").glob("video*/name")):
        devices[f"/dev/{name.parent.name}"] = name.read_text().strip()
    return devices


def avatar_cam_device() -> str:
    return next((d for d, name in video_devices().items() if name == "Avatar Cam"), "/dev/video10")


def module_parameter(name: str) -> str | None:
    path = Path("/sys/module/v4l2loopback/parameters") / name
    return path.read_text().strip() if path.exists() else None


def device_format() -> str | None:
    """The device's sysfs `format` (FOURCC:WxH@fps, the rate readers are told), while it holds frames."""
    path = Path(f"/sys/class/video4linux/{Path(avatar_cam_device()).name}/format")
    return path.read_text().strip() if path.exists() else None


@step("camera install")
def install_camera() -> dict:
    before = camera_check()
    install = sh("bash", f"{JOB['repo']}/install_scripts/install-linux.sh", "--camera-only", timeout=120,
                 env=product_env())
    after_install = video_devices()
    unload = sh("modprobe", "-r", "v4l2loopback")
    plain = sh("modprobe", "v4l2loopback")  # as at boot: the options come from /etc/modprobe.d
    return {"doctor_before": before, "install": install, "devices_after_install": after_install,
            "unload": unload, "plain_modprobe": plain, "devices": video_devices(),
            "exclusive_caps": module_parameter("exclusive_caps"),
            "modprobe_conf": Path("/etc/modprobe.d/avatar-cam.conf").read_text(),
            "modules_load_conf": Path("/etc/modules-load.d/avatar-cam.conf").read_text(),
            "doctor_after": camera_check()}


@step("ffmpeg")
def ffmpeg_capture() -> dict:
    device = avatar_cam_device()
    # One ffmpeg for both (a start costs tens of seconds under emulation): every frame's info for a few seconds,
    # and the first frame as a PNG.
    out = sh("ffmpeg", "-hide_banner", "-y", "-f", "v4l2", "-t", str(JOB["ffmpeg_s"]), "-i", device, "-map", "0:v",
             "-vf", "showinfo", "-f", "null", "-", "-map", "0:v", "-frames:v", "1", str(RESULTS / "ffmpeg_frame.png"),
             timeout=120, keep=10**7)
    stream = re.search(r"Stream #0:0: Video: (.*)", out["stderr"])
    times = [float(x) for x in re.findall(r"pts_time:\s*([\d.]+)", out["stderr"])]
    rate = (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 and times[-1] > times[0] else None
    return {"stream": stream.group(1) if stream else None, "frames": len(times), "measured_fps": rate,
            "format": device_format(),
            "rc": out["rc"], "stderr_head": out["stderr"][:1500]}
