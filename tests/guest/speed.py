"""How fast a machine runs the kind of work that must keep real time in the guest: small Python and numpy
steps, as an audio callback or a frame takes them. The same workload runs on the host before the boot and in
the guest before anything starts, so the report says how fast the emulated guest was that day (the host's
speed moves from day to day, and the emulated guest's with it) before any of the product ran."""

from __future__ import annotations

import statistics
import time

import numpy as np


def workload_seconds() -> float:
    """One pass: 1M Python loop steps and 2000 small numpy reductions (a 10 ms block at 48 kHz)."""
    block = np.random.default_rng(0).standard_normal(480).astype(np.float32)
    start = time.perf_counter()
    total = 0
    for i in range(1_000_000):
        total += i & 7
    for _ in range(2000):
        float(np.sqrt((block * block).mean()))
    return time.perf_counter() - start


def measure(passes: int = 3) -> float:
    """The median of `passes` passes, in seconds."""
    return round(statistics.median(workload_seconds() for _ in range(passes)), 4)
