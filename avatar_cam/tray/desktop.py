"""The tray's helpers that ask other programs: device lists (in fresh processes), the autostart entry, the file
dialog, and the desktop's opener. They block: the tray calls them from its helper threads, never its loop.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

from avatar_cam import fresh_process
from avatar_cam.daemon.photos import PHOTO_SUFFIXES
from avatar_cam.errors import AvatarCamError

log = logging.getLogger(__name__)

_LIST_OV_DEVICES = "import json, openvino; print(json.dumps(openvino.Core().available_devices))"


def current_microphones(in_process: bool = False) -> list[str] | None:
    """Input device names; None if listing failed.

    PortAudio lists devices once, when it starts, so a fresh list needs a fresh process (re-initialising it
    here would close the microphone stream the camera is using). `in_process`: the list this process sees."""
    from avatar_cam.audio.devices import fresh_input_device_names, list_input_devices

    if not in_process:
        return fresh_input_device_names()

    try:
        return [d["name"] for d in list_input_devices()]
    except Exception as exc:  # noqa: BLE001 - no PortAudio: "System default" only
        log.warning("cannot list microphones: %s", exc)
        return None


def openvino_devices() -> tuple[str, ...]:
    """OpenVINO devices that exist here (CPU, GPU, GPU.1, NPU...), then AUTO, which picks among them.

    Asked in another process: the tray of a Lite-engine user should not carry OpenVINO in memory."""
    found = fresh_process.ask(_LIST_OV_DEVICES)
    if not found:
        log.warning("cannot list OpenVINO devices: offering CPU only")
        found = ["CPU"]
    return (*(str(d) for d in found if d != "AUTO"), "AUTO")


def autostart_enabled() -> bool | None:
    try:
        from avatar_cam.tray import autostart
    except ImportError:
        return None
    try:
        return bool(autostart.is_enabled())
    except Exception as exc:  # noqa: BLE001 - show the toggle as off; toggling reports the problem
        log.warning("cannot read the autostart entry: %s", exc)
        return False


# --- helpers that wait on other programs ------------------------------------------------------------------

_TK_DIALOG = (
    "import sys, tkinter, tkinter.filedialog as fd; root = tkinter.Tk(); root.withdraw(); "
    "root.attributes('-topmost', True); "
    "print(fd.askopenfilename(parent=root, title=sys.argv[1], filetypes=[('Photos', sys.argv[2]), ('All files', '*')]))"
)


def photo_dialog_command() -> list[str] | None:
    """A command that asks for one photo and prints its path (empty or non-zero exit: cancelled)."""
    title = "Add a portrait photo"
    patterns = " ".join(f"*{s}" for s in sorted(PHOTO_SUFFIXES))
    if sys.platform.startswith("linux"):
        if shutil.which("zenity"):
            return ["zenity", "--file-selection", f"--title={title}", f"--file-filter=Photos | {patterns}"]
        if shutil.which("kdialog"):
            return ["kdialog", "--title", title, "--getopenfilename", str(Path.home()), f"{patterns}|Photos"]
    if importlib.util.find_spec("tkinter") is not None:
        return [sys.executable, "-c", _TK_DIALOG, title, patterns]
    return None


def open_in_desktop(path: Path) -> None:
    """Open a file or folder with the desktop's default application; raises AvatarCamError if there is none."""
    if sys.platform.startswith("win"):
        os.startfile(str(path))  # noqa: S606 - the documented way on Windows
        return
    opener = "open" if sys.platform == "darwin" else "xdg-open"
    if shutil.which(opener) is None:
        raise AvatarCamError(f"cannot open {path}: {opener} is not installed", hint="install xdg-utils, or open it by hand")
    proc = subprocess.Popen([opener, str(path)], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    threading.Thread(target=proc.wait, name="opener-reaper", daemon=True).start()
