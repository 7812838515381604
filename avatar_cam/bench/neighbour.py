"""A busy neighbour, standing in for the call app beside us: it needs a share of one core in 30 Hz bursts (what a
call app does to encode our frames and decode the others') and counts its own jobs that finish late.

    python -m avatar_cam.bench.neighbour PCT [CORES]   -> runs until SIGTERM, then prints {"jobs": N, "late": L}

A job is `PCT`% of a 1/30 s period of busy CPU (measured on its own thread's CPU clock, so it needs that much CPU,
not that much wall time); it is late when it finishes after the next job was due.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

PERIOD_S = 1.0 / 30.0


def run(pct: float) -> dict:
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(True))
    need = PERIOD_S * pct / 100.0
    jobs = late = 0
    due = time.monotonic()
    while not stop:
        start = time.thread_time()
        while time.thread_time() - start < need:
            pass
        jobs += 1
        due += PERIOD_S
        now = time.monotonic()
        if now > due:
            late += 1
            due = now  # start again from now: one stall is one late job, not a cascade
        else:
            time.sleep(due - now)
    return {"jobs": jobs, "late": late}


class Neighbour:
    """The neighbour as a child process, pinned to `cores` (None: anywhere). `own_session`: in a session of its own,
    as another program the user started is (Linux's autogroups share the CPU between sessions first)."""

    def __init__(self, pct: float, cores: set[int] | None = None, own_session: bool = False):
        self.pct = pct
        self._proc = subprocess.Popen([sys.executable, "-m", "avatar_cam.bench.neighbour", str(pct),
                                       ",".join(map(str, sorted(cores))) if cores else ""],
                                      stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
                                      start_new_session=own_session)

    def stop(self) -> dict:
        """End it; {"jobs", "late", "late_pct"}."""
        self._proc.terminate()
        out, _ = self._proc.communicate(timeout=10)
        r = json.loads(out.strip().splitlines()[-1])
        r["late_pct"] = round(100.0 * r["late"] / max(r["jobs"], 1), 2)
        return r


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[2]:
        os.sched_setaffinity(0, {int(c) for c in sys.argv[2].split(",")})
    print(json.dumps(run(float(sys.argv[1]))), flush=True)
