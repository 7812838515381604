"""Where the control socket and the instance lock live, made private to the user.

On Linux and the BSDs `$XDG_RUNTIME_DIR/avatar-cam/`, or `<cache dir>/run/` when there is no usable runtime dir;
on macOS platformdirs' user runtime dir. The directory is 0700 and the socket 0600, so only the user can talk
to the daemon. On Windows the server is a named pipe (`\\\\.\\pipe\\avatar-cam-USER`); named pipes are readable by
other local users by default, so the pipe also demands an authentication key kept in the user's runtime dir.
"""

from __future__ import annotations

import getpass
import os
import secrets
import sys
from pathlib import Path

from avatar_cam import paths
from avatar_cam.errors import AvatarCamError, NotRunningError

WINDOWS = sys.platform == "win32"


def runtime_dir(create: bool = False) -> Path:
    """The per-user directory that holds the socket and the lock (0700 when created here)."""
    if WINDOWS or sys.platform == "darwin":
        import platformdirs

        folder = Path(platformdirs.user_runtime_dir(paths.APP, appauthor=False))
    else:
        # Read XDG_RUNTIME_DIR ourselves: newer platformdirs fall back to a shared /tmp path (with a warning).
        xdg = os.environ.get("XDG_RUNTIME_DIR", "")
        usable = xdg and os.path.isabs(xdg) and os.path.isdir(xdg) and os.access(xdg, os.W_OK | os.X_OK)
        folder = Path(xdg) / paths.APP if usable else paths.cache_dir() / "run"
    if create:
        _private_dir(folder)
    return folder


def _private_dir(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    if WINDOWS:
        return  # the per-user profile's ACL keeps it private
    st = folder.stat()
    if st.st_uid != os.getuid():
        raise AvatarCamError(f"{folder} belongs to another user, so the control socket cannot be made private there",
                             hint="set XDG_RUNTIME_DIR to a directory of your own")
    if st.st_mode & 0o077:
        os.chmod(folder, 0o700)


def socket_path() -> Path:
    return runtime_dir() / "control.sock"


def lock_path() -> Path:
    return runtime_dir() / "control.lock"


def pipe_address() -> str:
    return rf"\\.\pipe\avatar-cam-{getpass.getuser()}"


def pipe_authkey(create: bool) -> bytes:
    key_file = runtime_dir(create=create) / "control.key"
    if create:
        key_file.write_bytes(secrets.token_bytes(32))
    try:
        return key_file.read_bytes()
    except FileNotFoundError:
        raise NotRunningError() from None


def check_length(path: Path) -> None:
    if len(os.fsencode(path)) > 100:  # sun_path holds 104-108 bytes, depending on the OS
        raise AvatarCamError(f"the control socket path {path} is too long for a Unix socket",
                             hint="set XDG_RUNTIME_DIR to a shorter directory (e.g. /run/user/$(id -u))")
