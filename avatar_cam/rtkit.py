"""RealtimeKit (rtkit): the system service through which Linux desktops let an ordinary program give one of its
threads a real-time priority, within limits (PipeWire, PulseAudio and browsers ask it for their audio threads).

One call over the system D-Bus (jeepney: pure Python). rtkit grants only to a process that has capped how long a
real-time thread of it may run without sleeping (RLIMIT_RTTIME, at most the service's RTTimeUSecMax); the kernel
kills a process whose thread goes past the hard cap, so the caller's thread must sleep often (ours waits for
every frame) and `thread_priority` hands the priority back when a frame runs long.
"""

from __future__ import annotations

import resource

SERVICE = "org.freedesktop.RealtimeKit1"
PATH = "/org/freedesktop/RealtimeKit1"
TIMEOUT_S = 1.0  # a hung system bus must not hold up the camera's start for long (it answers in milliseconds)
RTTIME_CAP_US = 200_000  # what we ask to be killed after: rtkit's usual RTTimeUSecMax


class RtkitError(Exception):
    """rtkit is not there, or it said no (the message says why)."""


def make_thread_realtime(thread_id: int, priority: int) -> int:
    """Ask rtkit for SCHED_RR at `priority` (clamped to what it allows) for our thread `thread_id`; returns the
    priority granted. Sets the process's RLIMIT_RTTIME first, as rtkit requires."""
    try:
        from jeepney import DBusAddress, Properties, new_method_call
        from jeepney.io.blocking import open_dbus_connection
        from jeepney.wrappers import DBusErrorResponse, unwrap_msg
    except ImportError as exc:
        raise RtkitError(f"jeepney, the D-Bus client, is not installed ({exc})") from None
    rtkit = DBusAddress(PATH, bus_name=SERVICE, interface=SERVICE)
    try:
        with open_dbus_connection(bus="SYSTEM") as bus:
            def get(name: str) -> int:
                return int(unwrap_msg(bus.send_and_get_reply(Properties(rtkit).get(name), timeout=TIMEOUT_S))[0][1])

            cap_us = min(get("RTTimeUSecMax"), RTTIME_CAP_US)
            granted = max(1, min(priority, get("MaxRealtimePriority")))
            if cap_us <= 0:
                raise RtkitError(f"rtkit allows no real-time CPU time (RTTimeUSecMax {cap_us})")
            # (Lowering a hard limit cannot be undone without privilege; it only ever applies to real-time threads.)
            hard = resource.getrlimit(resource.RLIMIT_RTTIME)[1]
            hard = cap_us if hard == resource.RLIM_INFINITY else min(hard, cap_us)
            resource.setrlimit(resource.RLIMIT_RTTIME, (hard, hard))
            unwrap_msg(bus.send_and_get_reply(
                new_method_call(rtkit, "MakeThreadRealtime", "tu", (thread_id, granted)), timeout=TIMEOUT_S))
            return granted
    except DBusErrorResponse as exc:
        raise RtkitError(f"rtkit said no: {exc.name}: {' '.join(map(str, exc.data))}") from None
    except (OSError, TimeoutError, KeyError, ValueError, IndexError, TypeError) as exc:
        # no system bus, no rtkit, a hung bus, an answer not shaped as rtkit's
        raise RtkitError(f"no answer from rtkit on the system bus ({type(exc).__name__}: {exc})") from None
