"""One daemon per user: an exclusive lock on `control.lock` beside the control socket, held for the daemon's life.

Of two daemons starting at once exactly one wins (the kernel drops the lock when the process dies, however it
dies); the loser connects and asks the winner to show itself.
"""

from __future__ import annotations

import os
import time

from avatar_cam import paths
from avatar_cam.daemon.control_client import send
from avatar_cam.daemon.runtime_dir import WINDOWS, lock_path, runtime_dir
from avatar_cam.errors import AvatarCamError, NotRunningError


class InstanceLock:
    """An exclusive lock on `control.lock`, held for the daemon's life; the OS releases it when the process dies."""

    def __init__(self) -> None:
        self.path = lock_path()
        self._file = None

    def acquire(self) -> bool:
        """Take the lock if it is free; False if another daemon holds it."""
        runtime_dir(create=True)
        f = open(self.path, "a+b")  # noqa: SIM115 - held open for the daemon's life
        try:
            if WINDOWS:  # pragma: no cover
                import msvcrt

                msvcrt.locking(f.fileno(), msvcrt.LK_NBLCK, 1)
            else:
                import fcntl

                os.chmod(self.path, 0o600)
                fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # BlockingIOError / PermissionError: taken
            f.close()
            return False
        self._file = f
        return True

    def release(self) -> None:
        f, self._file = self._file, None
        if f is not None:
            f.close()  # closing drops the lock; the file stays, so two daemons always lock the same inode


def claim_instance(wait_s: float = 15.0) -> InstanceLock | None:
    """Become the one daemon of this user: the held lock, or None after the running daemon was asked to show itself.

    The daemon holding the lock may still be starting (its socket not yet bound), so the request is retried for
    up to `wait_s` seconds before giving up with an error.
    """
    lock = InstanceLock()
    if lock.acquire():
        return lock
    deadline = time.monotonic() + wait_s
    while True:
        try:
            send("show", timeout=30.0)  # connected: it may still be busy opening the camera
            return None
        except NotRunningError:
            if time.monotonic() > deadline:
                break
            time.sleep(0.1)
            if lock.acquire():  # the other one exited meanwhile
                return lock
    raise AvatarCamError(f"another Avatar Cam holds {lock.path} but does not answer on its control socket",
                         hint=f"it may be stuck: see the log in {paths.log_dir()}, and end that process")
