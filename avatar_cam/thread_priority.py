"""Threads that give way: a thread lowers its own scheduling priority (its nice value) so that others go first;
and no hidden thread pools: numpy's BLAS works on the calling thread (`one_blas_thread`).

Linux schedules threads one by one, so a thread can give way on its own (no privilege is needed to lower a
priority; raising it back is not possible without one, so only threads that end with their job do this).
Elsewhere this does nothing: macOS and Windows have no per-thread nice value.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import sys
import threading

log = logging.getLogger(__name__)

PER_THREAD = sys.platform.startswith("linux")


def give_way(nice: int) -> None:
    """Lower the calling thread's priority to `nice` (0 = like everyone else, 19 = only when nothing else runs)."""
    if nice <= 0 or not PER_THREAD:
        return
    with contextlib.suppress(OSError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), nice)
        return
    log.debug("could not lower %s's priority", threading.current_thread().name)


def niced(cmd: list[str], nice: int) -> list[str]:
    """`cmd` run at priority `nice` (through the POSIX `nice` tool when there is one), all its threads included."""
    tool = shutil.which("nice") if nice > 0 and os.name == "posix" else None
    return [tool, "-n", str(nice), *cmd] if tool else cmd


def one_blas_thread() -> None:
    """Make numpy's BLAS (OpenBLAS, MKL...) compute on the calling thread only, process-wide.

    Our matrix products are small and many (the mouth-shape estimator's 1 x 1281 by 1281 x 1024, 30 times a
    second): OpenBLAS splits anything that size over every core and its threads then spin waiting for the next
    one. Measured with `bench live --engine lite`: 88% of a core of spinning BLAS threads for ~0.3 ms of work a
    frame (the whole process 108% of a core, against 22% with one thread). The same reason as OpenCV's
    `cv2.setNumThreads(1)` in the live pipeline."""
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=1, user_api="blas")
