"""Things the tray tells the user unasked, once: Wav2Lip's lips too slow on this machine (offer the Lite engine;
never switch without asking). Owned by the tray's watch thread.
"""

from __future__ import annotations

import time

SLOW_LIPS_HZ, SLOW_LIPS_S = 10.0, 20.0  # Wav2Lip this slow for this long: offer the Lite engine


class SlowLips:
    def __init__(self, slow_hz: float = SLOW_LIPS_HZ, for_s: float = SLOW_LIPS_S):
        self.slow_hz, self.for_s = slow_hz, for_s
        self._since: float | None = None  # since when Wav2Lip's lips have been slow
        self.offered = False

    def check(self, status, now: float | None = None) -> str | None:
        """The notification to show now, if any (at most once)."""
        now = time.monotonic() if now is None else now
        slow = status.engine == "wav2lip" and status.mouth_hz is not None and status.mouth_hz < self.slow_hz
        if not slow:
            self._since = None
            return None
        if self._since is None:
            self._since = now
        if now - self._since < self.for_s or self.offered:
            return None
        self.offered = True
        return (f"The lips move only {status.mouth_hz:.0f} times a second: this machine is busy. The camera stays "
                "smooth; for livelier lips choose Engine > Lite (or Camera > Performance > Light to leave more room "
                "for the call app).")
