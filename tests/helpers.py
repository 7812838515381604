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
