"""`avatar-cam` with no arguments, and `avatar-cam daemon [--no-tray]`: take the one-per-user lock, pick the tray,
and run the daemon (daemon/service.py) until it is told to quit.
"""

from __future__ import annotations

import argparse

from avatar_cam.daemon.instance import claim_instance
from avatar_cam.daemon.service import Daemon
from avatar_cam.errors import AvatarCamError

NO_TRAY_HINT = ("`avatar-cam run --no-tray` runs the camera in the foreground; "
                "`avatar-cam daemon --no-tray` runs the daemon without an icon (drive it with `avatar-cam ctl`)")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("daemon", help="run the background daemon: tray icon, control socket and camera")
    p.add_argument("--no-tray", action="store_true",
                   help="no tray icon: control socket and camera only, until SIGTERM or `avatar-cam ctl quit`")
    p.set_defaults(func=main)


def main(args: argparse.Namespace | None = None) -> int:
    """Run the daemon until it is told to quit. Returns the exit status."""
    no_tray = bool(getattr(args, "no_tray", False))
    lock = claim_instance()
    if lock is None:
        print("Avatar Cam is already running; asked it to show itself", flush=True)
        return 0
    try:
        tray = None
        if not no_tray:
            tray, reason = load_tray()
            if tray is None:
                raise AvatarCamError(f"cannot show a tray icon: {reason}", hint=NO_TRAY_HINT)
        return Daemon(tray).run()
    finally:
        lock.release()


def load_tray():
    """(the tray module, None) when a tray can be shown here, else (None, why not)."""
    try:
        from avatar_cam.tray import app as tray
        from avatar_cam.tray.backends import tray_available
    except ImportError as exc:
        return None, f"the tray module is not available ({exc})"
    try:
        ok, reason = tray_available()
    except Exception as exc:  # noqa: BLE001 - a broken desktop setup must give a message, not a traceback
        return None, f"{type(exc).__name__}: {exc}"
    return (tray, None) if ok else (None, reason)


