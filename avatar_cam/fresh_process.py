"""Asking a fresh Python process what this one cannot see: PortAudio's device list as it is now (this
process's list dates from when PortAudio started here), OpenVINO's devices without loading OpenVINO here."""

from __future__ import annotations

import json
import logging
import subprocess
import sys

log = logging.getLogger(__name__)


def no_window() -> dict:
    """Popen arguments that keep a console window from flashing up on Windows."""
    return {"creationflags": subprocess.CREATE_NO_WINDOW} if sys.platform.startswith("win") else {}


def ask(code: str, timeout: float = 60.0):
    """Run `code` in a fresh Python and parse the JSON it prints; None if that failed."""
    try:
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL, check=True, **no_window())
        return json.loads(done.stdout)
    except (OSError, subprocess.SubprocessError, ValueError) as exc:
        log.debug("%s failed: %s", code, exc)
        return None
