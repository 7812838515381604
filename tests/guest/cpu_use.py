"""Where the guest's CPU goes, from /proc: per thread of one process, and per process, between two moments.

Counters are clock ticks (100 a second, so ticks a second are % of one vCPU) and context switches: two
snapshots, seconds apart, say what each costs and how often it waits (voluntary switches) or is preempted.
(Not `top -H`: its line for a process's main thread shows the whole process, which once made the daemon's main
thread look busy at 31% of a vCPU while it only waited on an Event: 0.9% measured here.)
"""

from __future__ import annotations

import time
from pathlib import Path


def _counters(task: Path) -> list | None:
    try:
        fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        status = dict(line.split(":", 1) for line in (task / "status").read_text().splitlines() if ":" in line)
        return [(task / "comm").read_text().strip(), int(fields[11]) + int(fields[12]), int(fields[12]),
                int(status["voluntary_ctxt_switches"]), int(status["nonvoluntary_ctxt_switches"])]
    except (OSError, ValueError, KeyError, IndexError):
        return None


def threads(pid: int) -> dict:
    """Counters of each thread of `pid` now."""
    found = {"t": time.time() * 1000}
    for task in Path(f"/proc/{pid}/task").glob("*"):
        if (c := _counters(task)) is not None:
            found[task.name] = c
    return found


def processes() -> dict:
    """Counters of each process now (its threads together; switches are the main thread's), with its kind for
    Chromium's processes (--type=renderer...)."""
    found = {"t": time.time() * 1000}
    for proc in Path("/proc").glob("[0-9]*"):
        if (c := _counters(proc)) is None:
            continue
        try:
            args = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        kind = next((a.decode()[7:] for a in args if a.startswith(b"--type=")), "")
        found[proc.name] = [f"{c[0]} {kind}".strip(), *c[1:]]
    return found


def rates(before: dict, after: dict, least_pct: float = 0.5) -> list[dict]:
    """Between two snapshots: CPU (% of one vCPU; of it, the kernel's) and switches a second, busiest first."""
    seconds = (after.get("t", 0) - before.get("t", 0)) / 1000
    rows = []
    for key, now in after.items():
        if key == "t" or key not in before or seconds <= 0:
            continue
        (name, cpu, system, waits, preempted), (_, cpu0, system0, waits0, preempted0) = now, before[key]
        row = {"id": key, "name": name, "cpu_pct": round((cpu - cpu0) / seconds, 1),
               "sys_pct": round((system - system0) / seconds, 1), "waits_per_s": round((waits - waits0) / seconds, 1),
               "preempted_per_s": round((preempted - preempted0) / seconds, 1)}
        if row["cpu_pct"] >= least_pct:
            rows.append(row)
    return sorted(rows, key=lambda r: -r["cpu_pct"])
