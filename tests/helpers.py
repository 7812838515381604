"""Helpers the tests share (import as `from helpers import ...`)."""

from __future__ import annotations

import os


def run_cli(*args: str, env: dict | None = None, input: str | None = None, timeout: float = 120):
    """Run `python -m avatar_cam ARGS` in a subprocess, as a user would run `avatar-cam ARGS`."""
    import subprocess
    import sys

    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "avatar_cam", *args], capture_output=True, text=True, env=full_env, timeout=timeout,
        # No terminal unless a test types into it: a prompt must never wait for a person in CI.
        **({"input": input} if input is not None else {"stdin": subprocess.DEVNULL}),
    )


_MEASURE = """
import os, subprocess, sys
proc = subprocess.Popen(sys.argv[2:])
_, status, usage = os.wait4(proc.pid, 0)
with open(sys.argv[1], "w") as f:
    f.write(str(usage.ru_maxrss))
sys.exit(os.waitstatus_to_exitcode(status))
"""


def run_cli_peak_rss(*args: str, env: dict | None = None, timeout: float = 300):
    """`run_cli`, and the peak RSS of that `avatar-cam` process in MB.

    The process is started by a small launcher, not by pytest: Linux counts the RSS of the parent a child was
    forked from in the child's peak, so a child of a big pytest process would report pytest's size.
    """
    import subprocess
    import sys
    import tempfile

    with tempfile.NamedTemporaryFile("r", suffix=".rss") as rss:
        result = subprocess.run(
            [sys.executable, "-c", _MEASURE, rss.name, sys.executable, "-m", "avatar_cam", *args], capture_output=True,
            text=True, env={**os.environ, **(env or {})}, timeout=timeout, stdin=subprocess.DEVNULL,
        )
        peak_kib = int(rss.read() or 0)
    return result, peak_kib / 1024
