"""`avatar-cam ctl ...` starts fast: it imports the control client and what that needs, not NumPy, OpenCV,
OpenVINO, sounddevice or pyvirtualcam (the other commands' modules). Under emulation, or on a slow laptop
from a keyboard shortcut, those imports took seconds per command. Checked in a fresh interpreter, through
the real entry point, against a runtime dir where no daemon runs (so it answers "not running")."""

from __future__ import annotations

import json
import os
import subprocess
import sys

HEAVY = ("numpy", "cv2", "openvino", "sounddevice", "pyvirtualcam", "scipy", "librosa", "PIL")

PROBE = r"""
import json, sys
from avatar_cam.cli import main
code = main(sys.argv[1:])
heavy = sorted({m.split(".")[0] for m in sys.modules} & set(json.loads(HEAVY)))
print(json.dumps({"code": code, "heavy": heavy, "modules": len(sys.modules)}))
"""


def _probe(args: list[str], runtime_dir) -> dict:
    env_code = PROBE.replace("json.loads(HEAVY)", repr(list(HEAVY)))
    done = subprocess.run([sys.executable, "-c", env_code, *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "XDG_RUNTIME_DIR": str(runtime_dir)})
    assert done.stdout.strip(), done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_ctl_through_the_entry_point_imports_nothing_heavy(runtime_dir):
    for args in (["ctl", "status"], ["-v", "ctl", "status", "--json"], ["ctl", "quit"]):
        seen = _probe(args, runtime_dir)
        assert seen["code"] == 2  # "Avatar Cam is not running", as a user sees it
        assert seen["heavy"] == [], f"avatar-cam {' '.join(args)} imported {seen['heavy']}"


def test_the_ctl_module_alone_imports_nothing_heavy():
    done = subprocess.run([sys.executable, "-c", "import sys, avatar_cam.cli.ctl; print(' '.join(sys.modules))"],
                          capture_output=True, text=True, timeout=120, check=True)
    loaded = {m.split(".")[0] for m in done.stdout.split()}
    assert not loaded & set(HEAVY), loaded & set(HEAVY)


def test_the_other_commands_are_still_there():
    # The fast path must not hide the rest of the command line.
    done = subprocess.run([sys.executable, "-m", "avatar_cam", "--help"], capture_output=True, text=True, timeout=120)
    for command in ("run", "render", "demo", "models", "bench", "ctl", "daemon", "doctor"):
        assert command in done.stdout
