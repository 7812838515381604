"""`avatar-cam doctor [--json]`: what this machine is missing for Avatar Cam, and the exact command that fixes it.

Every check runs on its own: one that raises becomes a failed check carrying the message, never a traceback.
Essential checks are the ones without which the live camera cannot run (Python, PortAudio, a microphone, the
virtual camera, OpenVINO on the CPU, writable config/data/cache folders); the exit status is 1 if any of them
fails. The others (tray, models, the virtual microphone, autostart, the camera at boot) print their advice
but do not fail the run: the camera works without them (`run --no-tray`, the Lite engine, ...).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from avatar_cam import paths
from avatar_cam.doctor import host
from avatar_cam.doctor.camera import check_camera_at_boot, check_virtual_camera
from avatar_cam.doctor.environment import (
    check_autostart,
    check_camera_priority,
    check_microphone,
    check_models,
    check_openvino,
    check_portaudio,
    check_python,
    check_tray,
    check_virtual_microphone,
    check_writable,
)

__all__ = ["Check", "run_checks", "check_autostart", "check_camera_at_boot", "check_camera_priority",
           "check_microphone", "check_models", "check_openvino", "check_portaudio", "check_python", "check_tray",
           "check_virtual_camera", "check_virtual_microphone", "check_writable"]


@dataclass
class Check:
    name: str
    ok: bool
    detail: str
    fix: str | None = None
    essential: bool = True


def _checks():
    """(name, essential, function) for this OS, in the order they are shown."""
    checks = [
        ("python", True, check_python),
        ("portaudio", True, check_portaudio),
        ("microphone", True, check_microphone),
        ("virtual camera", True, check_virtual_camera),
    ]
    if host.system() == "linux":
        checks.append(("virtual camera at boot", False, check_camera_at_boot))
    checks += [
        ("tray", False, check_tray),
        ("openvino", True, check_openvino),
        ("models", False, check_models),
        ("virtual microphone", False, check_virtual_microphone),
        ("start at login", False, check_autostart),
        ("camera priority", False, check_camera_priority),
        ("config dir", True, functools.partial(check_writable, "config", paths.config_dir)),
        ("data dir", True, functools.partial(check_writable, "data", paths.data_dir)),
        ("cache dir", True, functools.partial(check_writable, "cache", paths.cache_dir)),
    ]
    return checks


def run_checks() -> list[Check]:
    results = []
    for name, essential, fn in _checks():
        try:
            ok, detail, fix = fn()
        except Exception as exc:  # isolation: a broken check is one failed line, never a traceback
            ok, detail, fix = False, f"the check itself failed: {type(exc).__name__}: {exc}", None
        results.append(Check(name, bool(ok), detail, fix, essential))
    return results
