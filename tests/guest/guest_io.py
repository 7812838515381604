"""The guest scenario's shared plumbing: the job the host wrote, the report (saved after every step), the
timeline of marks, running commands, the product's environment, and the `step` wrapper that records each
step's result, time or traceback. Used by the step modules and in_guest.py, inside the guest."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import traceback
from pathlib import Path

RESULTS = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("/tmp/results")
JOB = json.loads((RESULTS / "job.json").read_text()) if (RESULTS / "job.json").exists() else {}
REPORT: dict = {"steps": {}, "timeline": []}
PAGES: list = []  # the call page's reports (one Page), saved with the report
EXTRA: dict = {}  # name -> function returning a JSON-able snapshot, saved with the report (e.g. the voice probe)
RUNTIME = Path("/run/user/0")


def save() -> None:
    """Write the report, with what the page (and any EXTRA recorder) has reported so far."""
    if PAGES:
        page = PAGES[0]
        with page.lock:
            REPORT["page"] = {"video": list(page.video), "audio": list(page.audio), "events": list(page.events),
                              "last": page.last, "fatal": page.fatal, "snapshots": dict(page.snapshots)}
    for name, snapshot in EXTRA.items():
        REPORT[name] = snapshot()
    (RESULTS / "report.json").write_text(json.dumps(REPORT))


def mark(what: str, **detail) -> None:
    """A moment in the scenario, on the clock the page's samples use (epoch ms)."""
    REPORT["timeline"].append({"t": time.time() * 1000, "what": what, **detail})
    print(f"[{time.monotonic():8.1f}] {what} {detail or ''}", flush=True)


def sh(*cmd: str, timeout: float = 120, env: dict | None = None, keep: int = 6000) -> dict:
    start = time.monotonic()
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
        out = {"rc": done.returncode, "stdout": done.stdout[-keep:], "stderr": done.stderr[-keep:]}
    except subprocess.TimeoutExpired:
        out = {"rc": None, "stdout": "", "stderr": f"timed out after {timeout} s"}
    out["seconds"] = round(time.monotonic() - start, 2)
    return out


def product_env() -> dict:
    home = Path("/root")
    # The state dir (the daemon's debug log) is in the results, so the host keeps it.
    return {**os.environ, "HOME": str(home), "XDG_RUNTIME_DIR": str(RUNTIME),
            "XDG_CONFIG_HOME": str(home / ".config"), "XDG_DATA_HOME": str(home / ".local/share"),
            "XDG_CACHE_HOME": str(home / ".cache"), "XDG_STATE_HOME": str(RESULTS / "state"),
            "PULSE_SERVER": f"unix:{RUNTIME}/pulse/native"}


def autogroup(pid: int, nice: int | None = None) -> str:
    """The process's scheduling group (a session of its own gets one: kernel.sched_autogroup_enabled), optionally
    setting the group's nice first. A desktop gives each app its own group (systemd's app scopes, or autogroup per
    session), so one app's own priorities (Chromium raises its threads to nice -8) weigh only among its own
    threads; in one group they would starve every other process in the guest at nice 0, the daemon included."""
    path = Path(f"/proc/{pid}/autogroup")
    try:
        if nice is not None:
            path.write_text(str(nice))
        return path.read_text().strip()
    except OSError as exc:
        return f"unknown ({exc})"


def avatar_cam(*args: str, timeout: float = 120) -> dict:
    return sh(JOB["python"], "-m", "avatar_cam", *args, timeout=timeout, env=product_env())


def wait_for(predicate, limit_s: float, what: str) -> None:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.5)
    raise RuntimeError(f"{what}: not within {limit_s} s")


def step(name: str):
    """Run fn as a named step: its result, duration or traceback land in the report."""
    def wrap(fn):
        def run(*args, **kwargs):
            start = time.monotonic()
            mark(f"step {name}")
            try:
                result = fn(*args, **kwargs)
                REPORT["steps"][name] = {"ok": True, "seconds": round(time.monotonic() - start, 1), "result": result}
                return result
            except Exception:  # noqa: BLE001  (recorded, and the next steps still run where they can)
                REPORT["steps"][name] = {"ok": False, "seconds": round(time.monotonic() - start, 1),
                                         "error": traceback.format_exc()[-3000:]}
                raise
            finally:
                save()
        return run
    return wrap
