"""Whether any program has the camera device open besides us (Linux), so the camera can rest while no call app,
browser or OBS uses it: a tray daemon runs all day, and drawing 30 frames a second that nobody sees costs a
fifth of a core, and the lips most of a core while the user talks (BENCHMARKS.md, session 10).

Opens and closes of the device node are seen through inotify; they are rare (an app starting or stopping its
camera, an app listing cameras), and each wakes a recount of the processes that hold the device (their
/proc/PID/fd links), ours excepted. The recount waits until the node has been quiet for `SETTLE_S`: the kernel
reports an open before the opener holds the descriptor. Another recount runs every `RECOUNT_S` in case an event
was missed. For `GRACE_S` after any open or close the camera counts as watched: an app that lists cameras opens
each one briefly, then opens the one it wants, and must find it at its full rate.
Where this cannot work (not Linux, no inotify, a device that is not a file), the camera always counts as watched.

Threads: the "ac-readers" thread owns the inotify descriptor and writes `readers` and `touched`; `watched` is
read by the frame thread (plain reads of values written in one step).
"""

from __future__ import annotations

import logging
import os
import threading
import time

from avatar_cam.thread_priority import name_os_thread

log = logging.getLogger(__name__)

SETTLE_S = 0.2
RECOUNT_S = 30.0
GRACE_S = 3.0


def processes_holding(path: str, me: int | None = None) -> int:
    """How many processes other than `me` (default: this one) have `path` open. Other users' processes are not
    visible to us: call apps run as the user."""
    me = os.getpid() if me is None else me
    target = os.path.realpath(path)
    count = 0
    try:
        pids = [e.name for e in os.scandir("/proc") if e.name.isdigit() and int(e.name) != me]
    except OSError:
        return 0
    for pid in pids:
        try:
            with os.scandir(f"/proc/{pid}/fd") as fds:
                if any(_points_to(fd.path, target) for fd in fds):
                    count += 1
        except OSError:  # gone meanwhile, or another user's
            continue
    return count


def _points_to(link: str, target: str) -> bool:
    try:
        return os.readlink(link) == target
    except OSError:
        return False


class CameraReaders:
    """Who reads `device` besides us; see the module's docstring. `start()` says whether it can tell."""

    def __init__(self, device: str, grace_s: float = GRACE_S, recount_s: float = RECOUNT_S):
        self.device = os.path.realpath(device)
        self.grace_s, self.recount_s = grace_s, recount_s
        self.readers: int | None = None  # None: unknown (then the camera counts as watched)
        self.touched = float("-inf")  # monotonic time of the last open or close of the device, or a reader leaving
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def watched(self) -> bool:
        readers = self.readers
        return (readers is None or readers > 0 or time.monotonic() - self.touched < self.grace_s
                or self._stop.is_set())

    def start(self) -> bool:
        inotify = None
        try:
            from inotify_simple import INotify, flags

            inotify = INotify()
            inotify.add_watch(self.device, flags.OPEN | flags.CLOSE_WRITE | flags.CLOSE_NOWRITE)
        except (ImportError, OSError) as exc:
            if inotify is not None:
                inotify.close()
            log.info("cannot tell whether an app uses %s (%s): the camera keeps its full rate", self.device, exc)
            return False
        self._count()
        self._thread = threading.Thread(target=self._watch, args=(inotify,), name="ac-readers", daemon=True)
        self._thread.start()
        return True

    def stop(self) -> None:
        """Stop watching (at once: the thread ends, and lets go of inotify, within a second)."""
        self._stop.set()
        self.readers = None

    def _watch(self, inotify) -> None:
        """The "ac-readers" thread: recount once the device's opens and closes have settled, and now and then."""
        name_os_thread("ac-readers")
        counted = time.monotonic()
        unsettled = False
        try:
            while not self._stop.is_set():
                events = inotify.read(timeout=round(1000 * (SETTLE_S if unsettled else min(1.0, self.recount_s))))
                now = time.monotonic()
                if events:
                    self.touched, unsettled = now, True
                elif unsettled or now - counted >= self.recount_s:
                    self._count()
                    counted, unsettled = now, False
        except Exception:  # noqa: BLE001  (never lose the camera over this: it then counts as watched)
            log.exception("watching %s for readers failed; the camera keeps its full rate", self.device)
            self.readers = None
        finally:
            inotify.close()

    def _count(self) -> None:
        before, now = self.readers, processes_holding(self.device)
        if before is not None and before > 0 and now == 0:
            self.touched = time.monotonic()
        self.readers = now
        if now != before:
            apps = f"{now} app{'s' if now > 1 else ''}"
            log.info("%s: %s", self.device, f"{apps} reading" if now else "no app is reading: the camera rests")
