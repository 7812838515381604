"""How much "Avatar Cam Microphone" buffers: small blocks for a short voice delay, larger when the voice breaks up.

A quiet machine plays 10 ms blocks through a 100 ms buffer. On a starved one (a busy laptop, an emulated guest)
the output thread now and then cannot deliver a block before the buffer runs dry: the sound server plays a gap,
and the call hears the voice break up. When that keeps happening, the stream is opened again with twice the
block and the buffer (up to 40 ms blocks in a 400 ms buffer): fewer wake-ups cost less CPU, and a longer buffer
rides out a longer stall. The voice stays in step with the lips (the playout reads when each block will play from
the stream), only the delay both share may grow. It never shrinks back during a run: a machine that starved once
will again, and every reopen is a moment of silence.

Threads: `underflow` is called from the output stream's callback; `due` and `grow` from the watchdog's thread
(a deque's append and a read of its ends are safe between the two).
"""

from __future__ import annotations

import time
from collections import deque


class OutputBuffering:
    WINDOW_S = 10.0  # underflows are counted over this long...
    LIMIT = 5  # ...and this many in it make the buffer grow
    MAX_BLOCK_MS = 40.0
    MAX_BUFFER_S = 0.4

    def __init__(self, block_ms: float = 10.0, buffer_s: float = 0.1):
        self.block_ms = float(block_ms)
        self.buffer_s = float(buffer_s)
        self.underflows = 0  # over the whole run (status)
        self._recent: deque[float] = deque(maxlen=self.LIMIT)

    def underflow(self, now: float | None = None) -> None:
        """The output callback was told the buffer ran dry before this block (output callback's thread)."""
        self.underflows += 1
        self._recent.append(time.monotonic() if now is None else now)

    def due(self, now: float | None = None) -> bool:
        """Whether the voice broke up often enough lately to buffer more (and there is more to give)."""
        now = time.monotonic() if now is None else now
        recent = self._recent
        full = len(recent) == recent.maxlen and now - recent[0] <= self.WINDOW_S
        return full and (self.block_ms < self.MAX_BLOCK_MS or self.buffer_s < self.MAX_BUFFER_S)

    def grow(self) -> None:
        """Twice the block and the buffer, within the limits; the count starts again."""
        self.block_ms = min(2 * self.block_ms, self.MAX_BLOCK_MS)
        self.buffer_s = min(2 * self.buffer_s, self.MAX_BUFFER_S)
        self._recent.clear()
