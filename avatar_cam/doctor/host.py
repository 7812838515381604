"""What the doctor's checks ask of this machine: which system it is, a command's output, a small system file,
PortAudio's devices, and the install command for this distribution. Tests replace these to play another machine."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import sys
from pathlib import Path


def system() -> str:
    if sys.platform.startswith("win"):
        return "win32"
    return "darwin" if sys.platform == "darwin" else "linux"


def run(*cmd: str, timeout: float = 5.0) -> subprocess.CompletedProcess:
    return subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout, check=False,
                          stdin=subprocess.DEVNULL)


def linux_install(apt: str, dnf: str) -> str:
    """The install command for this distribution's package manager."""
    if shutil.which("dnf") and not shutil.which("apt-get"):
        return f"sudo dnf install -y {dnf}"
    return f"sudo apt-get install -y {apt}"


def sounddevice():
    import sounddevice  # raises OSError when the PortAudio library is missing

    return sounddevice


def read(path: Path) -> str:
    """A small system file's text, or "" if it is missing or unreadable (a dangling symlink, say)."""
    with contextlib.suppress(OSError):
        return path.read_text(errors="replace")
    return ""


def devices(kind: str) -> list[str]:
    """Names of the input ("input") or output ("output") devices PortAudio sees."""
    key = f"max_{kind}_channels"
    return [d["name"] for d in sounddevice().query_devices() if d[key] > 0]
