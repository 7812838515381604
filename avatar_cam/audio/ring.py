"""The audio ring: 16 kHz mono float32 samples with a sample clock, the master clock of the whole pipeline.

The ring's sample count (`AudioRing.total`) is the audio clock: sample k is audio time k / SAMPLE_RATE s. Each
written block also carries its arrival time on the `time.monotonic()` clock: when the sound was captured (the
ADC time for a microphone, the paced wall-clock time for a realtime file), so later stages can measure latency
instead of guessing it.

Threads: one producer thread writes (a source's, see sources.py); the pipeline reads from its frame thread,
and the virtual microphone's playout from PortAudio's output thread. Every method takes one short lock.
"""

from __future__ import annotations

import threading
import time
from bisect import bisect_right

import numpy as np

SAMPLE_RATE = 16000  # Hz: Wav2Lip's audio rate, and the rate of everything on the audio clock


class AudioRing:
    """16 kHz mono float32 ring buffer with a sample clock and per-block arrival times.

    Threading: one producer thread calls `write` (the audio callback or the file thread); one consumer thread
    calls `read`, `wait_for` and `arrival_time`. Every method takes the same short lock (a copy of at most
    one block or one read window), so the producer never waits long; `wait_for` sleeps on a Condition.
    `reset` is for when the producer is stopped.
    """

    def __init__(self, seconds: float = 10.0):
        self.capacity = max(1, round(seconds * SAMPLE_RATE))
        self._buf = np.zeros(self.capacity, np.float32)  # sample k lives at k % capacity
        self._total = 0
        self._ends: list[int] = []  # per written block: index one past its last sample...
        self._times: list[float] = []  # ...the monotonic time that last sample arrived (was captured)...
        self._written: list[float] = []  # ...and when write() made it readable
        self._cond = threading.Condition()

    def write(self, block: np.ndarray, arrival: float | None = None) -> None:
        """Append `block`; `arrival` = time.monotonic() when its LAST sample reached us (default: now)."""
        now = time.monotonic()
        arrival = now if arrival is None else float(arrival)
        block = np.asarray(block, dtype=np.float32).reshape(-1)
        n = len(block)
        if n == 0:
            return
        with self._cond:
            tail = block[-self.capacity :]
            at = (self._total + n - len(tail)) % self.capacity
            first = min(len(tail), self.capacity - at)
            self._buf[at : at + first] = tail[:first]
            self._buf[: len(tail) - first] = tail[first:]
            self._total += n
            self._ends.append(self._total)
            self._times.append(arrival)
            self._written.append(now)
            stale = bisect_right(self._ends, self._total - self.capacity)  # anchors of blocks no longer kept
            if stale > 256:
                del self._ends[:stale], self._times[:stale], self._written[:stale]
            self._cond.notify_all()

    @property
    def total(self) -> int:
        """Samples written since start (or reset): the sample clock."""
        return self._total

    def read(self, start: int, n: int) -> np.ndarray:
        """Samples [start, start+n); zeros where they are older than the kept history or not written yet."""
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        out = np.zeros(n, np.float32)
        with self._cond:
            lo, hi = max(start, self._total - self.capacity, 0), min(start + n, self._total)
            if hi > lo:
                at, count = lo % self.capacity, hi - lo
                first = min(count, self.capacity - at)
                out[lo - start : lo - start + first] = self._buf[at : at + first]
                out[lo - start + first : hi - start] = self._buf[: count - first]
        return out

    def wait_for(self, sample: int, timeout: float) -> bool:
        """Block until total >= sample; False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: self._total >= sample, timeout)

    def arrival_time(self, sample: int) -> float | None:
        """time.monotonic() at which `sample` reached us, or None if it is not in the kept history."""
        with self._cond:
            if not max(0, self._total - self.capacity) <= sample < self._total:
                return None
            i = bisect_right(self._ends, sample)  # the block containing `sample`
            return self._times[i] - (self._ends[i] - 1 - sample) / SAMPLE_RATE

    def written_time(self, sample: int) -> float | None:
        """time.monotonic() at which `sample` became readable (>= its arrival: a resampler holds audio back)."""
        with self._cond:
            if not max(0, self._total - self.capacity) <= sample < self._total:
                return None
            return self._written[bisect_right(self._ends, sample)]

    def reset(self) -> None:
        with self._cond:
            self._buf[:], self._total, self._ends, self._times, self._written = 0, 0, [], [], []
            self._cond.notify_all()
