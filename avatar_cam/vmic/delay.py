"""How long "Avatar Cam Microphone" holds the voice: the measured delay of the frames that show it.

Threads: `observe` runs on the pipeline's frame thread (as `LivePipeline.on_frame`); `seconds` may be read from
any thread (a float written in one step).
"""

from __future__ import annotations

from collections import deque

import numpy as np


class MeasuredDelay:
    """How long to hold the voice: nearly all frames must be drawn by the time the sound they show plays.

    The delay is the p95 of recent frames' `lateness` (sound heard -> frame drawable, pacing aside) plus
    `headroom_s`, plus the manual offset. Frames then leave when their sound plays (`LivePipeline.pace`), so the
    few drawn later than that are the only ones off, and by little. Every change of the delay makes the playout
    re-align the voice, so it moves with hysteresis: up at once when frames get later, down only when they have
    been clearly earlier (by `settle_s`) for a whole window. Only frames with a moving mouth count when
    there are some: idle frames skip inference and are ready earlier, and only the moving mouth shows whether
    voice and lips agree.
    Threads: `observe` runs on the pipeline's frame thread (as `LivePipeline.on_frame`); `seconds` may be read
    from any thread (a float written in one step).
    """

    def __init__(self, offset_ms: float = 0.0, initial_s: float = 0.2, window: int = 150,
                 percentile: float = 95.0, headroom_s: float = 0.004, settle_s: float = 0.010):
        self.offset_ms = float(offset_ms)
        self.measured_s = float(initial_s)
        self.percentile = percentile
        self.headroom_s = headroom_s
        self.settle_s = settle_s
        self._measured_once = False
        # Five seconds of frames: a steady target the playout can follow without audible slews.
        self._talking: deque[float] = deque(maxlen=window)
        # A p95 of a handful of frames is just the slowest one (a busy moment); of 20, one slow frame weighs 5%.
        self._enough = min(20, window)
        self._any: deque[float] = deque(maxlen=window)
        self._seen = 0

    def observe(self, frame, record) -> None:
        lateness = record.lateness
        if record.index < 0 or lateness is None:
            return
        (self._talking if record.inferred else self._any).append(lateness)
        self._seen += 1
        if self._seen % 5 == 0:  # the percentile is cheap, but not free at 30 fps
            enough = self._enough
            pool = self._talking if len(self._talking) >= enough else self._any if len(self._any) >= enough else None
            if pool is not None:
                wanted = float(np.percentile(pool, self.percentile)) + self.headroom_s
                if not self._measured_once or wanted > self.measured_s or wanted < self.measured_s - self.settle_s:
                    self.measured_s, self._measured_once = wanted, True

    @property
    def seconds(self) -> float:
        return max(0.0, self.measured_s + self.offset_ms / 1000.0)
