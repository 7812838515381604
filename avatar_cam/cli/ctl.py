"""`avatar-cam ctl ...`: drive the running daemon from scripts and keyboard shortcuts (through daemon/control_client.py)."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from avatar_cam import paths
from avatar_cam.daemon import control_client
from avatar_cam.errors import AvatarCamError

# Starting the camera loads the photo and the engine (seconds on a slow CPU); the rest answer at once, but
# a command arriving during a start waits for it.
TIMEOUT_S = {"start": 120.0, "photo": 60.0, "mic": 30.0}
DEFAULT_TIMEOUT_S = 60.0
QUIT_WAIT_S = 150.0  # after `quit` answers: the daemon waits up to 120 s for a camera that is still opening


def register(sub: argparse._SubParsersAction) -> None:
    ctl = sub.add_parser("ctl", help="control the running Avatar Cam (for scripts and keyboard shortcuts)",
                         description="Send one command to the running Avatar Cam daemon.")
    actions = ctl.add_subparsers(dest="action", metavar="ACTION", required=True)
    status = actions.add_parser("status", help="print the state: live/silent/paused/stopped/error, fps, latency")
    status.add_argument("--json", action="store_true",
                        help="print the status as JSON (state, photo, mic, engine, fps, latency_ms_p95, ...)")
    actions.add_parser("start", help="start the camera")
    actions.add_parser("stop", help="stop the camera (releases camera and microphone)")
    actions.add_parser("pause", help="freeze on the idle face (the camera stays open)")
    actions.add_parser("resume", help="lip-sync again after pause")
    photo = actions.add_parser("photo", help="switch to another photo (the current one stays if it cannot be used)")
    photo.add_argument("path", type=Path)
    mic = actions.add_parser("mic", help="switch microphone (a name, part of one, or an index)")
    mic.add_argument("name")
    actions.add_parser("show", help="bring the tray menu forward")
    actions.add_parser("quit", help="stop the camera and end the daemon (returns once it has ended)")
    ctl.set_defaults(func=cmd_ctl)


def cmd_ctl(args: argparse.Namespace) -> int:
    action = args.action
    arg = None
    if action == "photo":
        arg = str(args.path.expanduser().absolute())  # the daemon does not share our working directory
    elif action == "mic":
        arg = args.name
    response = control_client.send(action, arg, timeout=TIMEOUT_S.get(action, DEFAULT_TIMEOUT_S))
    status = response.get("status") or {}
    if getattr(args, "json", False):
        print(json.dumps(status, indent=2))
    elif action == "status":
        print(describe(status))
    elif action == "quit":
        waited = QUIT_WAIT_S
        if not wait_until_ended(waited):
            pid = response.get("pid")
            raise AvatarCamError(f"Avatar Cam{f' (pid {pid})' if pid else ''} was asked to quit but is still running "
                                 f"after {waited:g} s", hint=f"it may be stuck releasing the camera or microphone: "
                                 f"see the log in {paths.log_dir()}" + (f", or end it with `kill {pid}`" if pid else ""))
        print("Avatar Cam has quit.")
    else:
        print(status_line(status))
    return 0


def wait_until_ended(timeout: float) -> bool:
    """After `quit`: wait until the daemon has ended, i.e. released its one-per-user lock (it does that after
    closing camera and microphone, as the last thing it does; the OS does it if the process dies). True if so."""
    from avatar_cam.daemon.instance import InstanceLock

    deadline = time.monotonic() + timeout
    while True:
        lock = InstanceLock()
        if lock.acquire():  # free: nobody holds it any more (let go at once, for the next daemon)
            lock.release()
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)


def status_line(status: dict) -> str:
    state = status.get("state", "?")
    if state == "error":
        return f"Error: {status.get('error')}"
    if state == "stopped":
        return "Camera off"
    lat, lips = status.get("latency_ms_p95"), status.get("lips")
    return (f"{state.capitalize()}: {status.get('fps', 0):.0f} fps" + (f", {lat:.0f} ms" if lat is not None else "")
            + (f", {lips}" if lips else ""))


def describe(status: dict) -> str:
    lines = [status_line(status)]
    for label, key in (("photo", "photo"), ("microphone", "mic"), ("engine", "engine"), ("device", "device"),
                       ("camera", "camera")):
        value = status.get(key)
        lines.append(f"  {label + ':':<13}{value if value is not None else '(default)' if key == 'mic' else '-'}")
    lines.append(f"  {'virtual mic:':<13}{virtual_mic_line(status.get('virtual_mic'))}")
    lines.append(f"  {'preview:':<13}{'on' if status.get('preview') else 'off'}")
    lines.append(f"  {'performance:':<13}{status.get('performance', '-')}")
    if status.get("notice"):
        lines.append(f"  {'note:':<13}{status['notice']}")
    return "\n".join(lines)


def virtual_mic_line(vmic: dict | None) -> str:
    """"Avatar Cam Microphone"'s state in a few words: off, its error, or what to pick and the voice's delay."""
    if not vmic:
        return "off"
    state = str(vmic.get("state", "?"))
    if state != "running":
        return state
    return f"{vmic.get('device')} (voice delayed {vmic.get('delay_ms', 0):.0f} ms)"
