"""Thread priorities. Threads that give way: a thread lowers its own nice value so that others go first
(`give_way`). Threads that keep time: the camera's frame threads ask to run ahead of ordinary work, so that a busy
machine does not make frames late (`TimeKeeper`). And no hidden thread pools: numpy's BLAS works on the calling
thread (`one_blas_thread`). The busy threads carry their names into the OS (`name_os_thread`), so `top -H` and
/proc say which one spends the CPU.

Linux schedules threads one by one, so a thread can give way on its own (no privilege is needed to lower a
priority; raising it back is not possible without one, so only threads that end with their job do this). Keeping
time there is a low real-time priority (SCHED_RR), set directly where the user may (root, CAP_SYS_NICE, an rtprio
limit as audio groups give) or granted by rtkit, the desktop's service for it (rtkit.py). Windows raises the
thread's priority, macOS its QoS class; giving way does nothing on either (no per-thread nice value).
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import shutil
import sys
import threading
import time

log = logging.getLogger(__name__)

PER_THREAD = sys.platform.startswith("linux")
KEEP_TIME_PRIORITY = 2  # SCHED_RR 1-99: above every ordinary thread, below sound servers (PipeWire asks 20 or more)
LONG_FRAME_S = 0.05  # CPU a frame may take at real-time priority (a 720p frame takes 5-10 ms); beyond: a slow machine
MAX_SHARE = 0.8  # of a core, over SHARE_WINDOW_S: more, and a real-time thread would starve the rest of the machine
SHARE_WINDOW_S = 2.0
PR_SET_NAME = 15  # prctl option: the calling thread's name
AWAKE_S = 0.03  # CPU run without sleeping after which the thread sleeps a moment (rtkit's cap kills at 0.2 s)
_refusal_logged = False
_os_names = threading.local()  # the name each thread last gave itself (name_os_thread)


def give_way(nice: int) -> None:
    """Lower the calling thread's priority to `nice` (0 = like everyone else, 19 = only when nothing else runs)."""
    if nice <= 0 or not PER_THREAD:
        return
    with contextlib.suppress(OSError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), nice)
        return
    log.debug("could not lower %s's priority", threading.current_thread().name)


def name_os_thread(name: str) -> None:
    """Show the calling thread as `name` (at most 15 characters) in `top -H`, `ps -L` and /proc/PID/task/TID/comm;
    Python before 3.14 leaves every thread named after the process. Linux only; does nothing elsewhere. Cheap to
    call again on a thread already named so (an audio callback calls it every block: PortAudio's thread is new with
    each stream)."""
    if not PER_THREAD or getattr(_os_names, "name", None) == name:
        return
    _os_names.name = name
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_NAME, name.encode()[:15], 0, 0, 0)


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


def keep_time(priority: int = KEEP_TIME_PRIORITY) -> str:
    """Ask the OS to run the calling thread ahead of ordinary work. Returns how it was granted ("real-time",
    "real-time (rtkit)", "high") or "" when it was not (logged once, with how to allow it). Threads the caller
    starts afterwards do not inherit it. Use it through `TimeKeeper`, which hands it back if the thread runs long."""
    global _refusal_logged
    why = "not on this system"
    if PER_THREAD:
        from avatar_cam.rtkit import RtkitError, make_thread_realtime

        try:
            os.sched_setscheduler(0, os.SCHED_RR | os.SCHED_RESET_ON_FORK, os.sched_param(priority))
            return "real-time"
        except OSError as exc:
            why = f"not allowed to set it: {exc.strerror or exc}"
        try:
            make_thread_realtime(threading.get_native_id(), priority)
            return "real-time (rtkit)"
        except RtkitError as exc:
            why = f"{why}; {exc}"
    else:  # Windows, macOS: a call that cannot be made (an old system) is a refusal, never the camera's end
        try:
            if sys.platform == "win32":
                kernel32 = _kernel32()
                if kernel32.SetThreadPriority(kernel32.GetCurrentThread(), 2):  # THREAD_PRIORITY_HIGHEST
                    return "high"
                why = f"SetThreadPriority failed ({ctypes.get_last_error()})"
            elif sys.platform == "darwin":
                if ctypes.CDLL("/usr/lib/libSystem.dylib").pthread_set_qos_class_self_np(0x21, 0) == 0:  # USER_INTERACTIVE
                    return "high"
                why = "pthread_set_qos_class_self_np failed"
        except (OSError, AttributeError) as exc:
            why = f"{type(exc).__name__}: {exc}"
    if not _refusal_logged:
        _refusal_logged = True
        log.info("the camera's threads run at normal priority (%s): on a busy machine some frames may leave late. "
                 "%s", why, REALTIME_HINT if PER_THREAD else "")
    return ""


REALTIME_HINT = ("Real-time priority comes from rtkit, which desktops with PipeWire or PulseAudio run: "
                 "sudo apt install rtkit (dnf install rtkit), then log in again.")


def back_to_normal() -> None:
    """The calling thread back to ordinary priority (always allowed)."""
    if PER_THREAD:  # (keeping SCHED_RESET_ON_FORK: only a privileged thread may clear it)
        os.sched_setscheduler(0, os.SCHED_OTHER | os.SCHED_RESET_ON_FORK, os.sched_param(0))
        return
    with contextlib.suppress(OSError, AttributeError):
        if sys.platform == "win32":
            kernel32 = _kernel32()
            kernel32.SetThreadPriority(kernel32.GetCurrentThread(), 0)  # THREAD_PRIORITY_NORMAL
        elif sys.platform == "darwin":
            ctypes.CDLL("/usr/lib/libSystem.dylib").pthread_set_qos_class_self_np(0x15, 0)  # QOS_CLASS_DEFAULT


def can_keep_time() -> str:
    """How this process's threads keep time (`keep_time`'s answer, asked on a short-lived thread and handed back)."""
    got: list[str] = []

    def probe() -> None:
        got.append(how := keep_time())
        if how:
            back_to_normal()

    thread = threading.Thread(target=probe, name="priority-probe")
    thread.start()
    thread.join(10)
    return got[0] if got else ""


def _kernel32():
    kernel32 = ctypes.WinDLL("kernel32", use_last_error=True)
    kernel32.GetCurrentThread.restype = ctypes.c_void_p  # a pseudo-handle: not to be truncated to an int
    kernel32.SetThreadPriority.argtypes = (ctypes.c_void_p, ctypes.c_int)
    return kernel32


class TimeKeeper:
    """The calling thread's priority for a deadline every frame (`keep_time`), for as long as it behaves: call
    `after_frame()` after each frame, on the same thread. A thread that runs AWAKE_S without sleeping sleeps a
    moment (rtkit's grant kills the process past 0.2 s); one whose frame takes LONG_FRAME_S of CPU, or that uses
    more than MAX_SHARE of a core, hands the priority back: the machine is too slow for the size, and at real-time
    priority the thread would starve everything else (the call app, the desktop). `release()` at the end.
    `ask=False`: normal priority (a benchmark's comparison)."""

    def __init__(self, name: str = "camera", ask: bool = True):
        self.name, self.how = name, keep_time() if ask else ""
        if self.how:
            log.info("the %s thread runs ahead of other programs (%s priority)", name, self.how)
        self._cpu, self._wall = time.thread_time(), time.monotonic()
        self._window = (self._cpu, self._wall)
        self._awake = 0.0

    def after_frame(self) -> None:
        if not self.how:
            return
        cpu, wall = time.thread_time(), time.monotonic()
        took = cpu - self._cpu
        # Off the CPU for a millisecond or more since the last frame: it slept (or waited), which resets the cap.
        self._awake = took if (wall - self._wall) - took >= 0.001 else self._awake + took
        self._cpu, self._wall = cpu, wall
        share = None
        if wall - self._window[1] >= SHARE_WINDOW_S:
            share = (cpu - self._window[0]) / (wall - self._window[1])
            self._window = (cpu, wall)
        if took > LONG_FRAME_S or (share is not None and share > MAX_SHARE):
            self.release()
            what = f"a frame took {1000 * took:.0f} ms of CPU" if took > LONG_FRAME_S else \
                f"it used {100 * share:.0f}% of a core"
            log.warning("the %s thread goes back to normal priority: %s, and at real-time priority it would starve "
                        "the rest of the machine (a smaller camera size or the Lite engine draws faster)", self.name, what)
        elif self._awake > AWAKE_S:
            time.sleep(0.001)
            self._awake = 0.0

    def release(self) -> None:
        if self.how:
            back_to_normal()
            self.how = ""

    @contextlib.contextmanager
    def ordinary(self):
        """Normal priority for work that may run long (a change built on the frame thread when another landed
        first: up to half a second at 1080p), then the priority again."""
        if not self.how:
            yield
            return
        back_to_normal()
        try:
            yield
        finally:
            self.how = keep_time()
            self._cpu, self._wall, self._awake = time.thread_time(), time.monotonic(), 0.0
