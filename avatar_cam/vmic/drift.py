"""The two clocks behind the delayed voice: when input samples were heard (`InputClock`), and how the playout
steers its rate so that the voice leaves exactly the target delay after it was heard (`DriftCorrector`).

Both are pure: they are given times and read no clock, so tests drive them with simulated clocks. They are
owned by the playout, on PortAudio's output thread.
"""

from __future__ import annotations

from dataclasses import dataclass

from avatar_cam.audio.ring import SAMPLE_RATE


class InputClock:
    """When input sample s was heard, smoothed: a steady clock fitted to the ring's jittery arrival stamps.

    The stamps wobble by +-10 ms (the microphone's resampler hands audio over in ~30 ms chunks, and callbacks
    run late while inference holds the CPU); the sound card's clock does not. A critically damped tracking
    loop (time constant `tau_s`) follows the stamps' offset and rate; a step larger than `reset_s` (a stalled
    or restarted microphone), or stamps that stay 20 ms off the line (a stream settling after the burst it
    starts with), restart it. Unbiased: on average it agrees with the stamps the frames carry.
    """

    def __init__(self, tau_s: float = 5.0, reset_s: float = 0.1):
        self.w = 1.0 / tau_s
        self.reset_s = reset_s
        self.offset = self.rate = 0.0  # stamp - s/16000, and its slope
        self._x: float | None = None  # nominal time (s/16000) of the last observed sample
        self._count = 0  # observations since the last (re)start
        self._off = 0  # consecutive observations more than 20 ms off the line

    def observe(self, sample: int, stamp: float) -> None:
        x = sample / SAMPLE_RATE
        if self._x is not None and x <= self._x:
            return
        if self._x is None:
            self.offset, self.rate, self._x, self._count = stamp - x, 0.0, x, 1
            return
        dx = x - self._x
        predicted = self.offset + self.rate * dx
        r = (stamp - x) - predicted
        self._off = self._off + 1 if abs(r) > 0.02 else 0
        if abs(r) > self.reset_s or self._off >= 5:  # a jump, or a stream settling after a start-up burst
            self.offset, self.rate, self._count, self._off = stamp - x, 0.0, 1, 0
        else:
            self._count += 1  # right after a (re)start, average plainly: one stamp is no estimate
            self.offset = predicted + max(min(1.0, 2 * self.w * dx), 1.0 / self._count) * r
            self.rate = min(max(self.rate + self.w**2 * dx * r, -0.002), 0.002)  # real clocks differ by < 0.1%
        self._x = x

    def time_of(self, sample: float) -> float | None:
        if self._x is None:
            return None
        x = sample / SAMPLE_RATE
        return x + self.offset + self.rate * (x - self._x)


@dataclass
class Correction:
    rate: float  # input consumed per output sample, relative to nominal (1.001: 0.1% faster)
    jump_s: float = 0.0  # re-align now: > 0 skip this much input, < 0 play this much silence; 0: no jump


class DriftCorrector:
    """Keeps (play time - heard time) of the sample at the play head at the target delay.

    A second-order loop (PI on a smoothed error) steers the playout rate: its integral converges to the
    clock mismatch between input and output, so a constant drift leaves no error; the rate never moves more
    than `max_rate_dev` (0.3%: 5 cents, inaudible) from nominal. Large errors (start, a stalled microphone,
    a changed offset) are removed by a jump once they persist for `confirm` blocks, and any error during
    silence at once; the playout crossfades jumps. A voice that is late waits up to `patience_s` for a pause
    before it jumps: jumping forward mid-phrase would cut words out.

    Pure: call `update` once per output block with that block's play time, the heard time of the sample at
    the play head, the target delay, and whether the audio there is silent.
    """

    def __init__(self, max_rate_dev: float = 0.003, loop_s: float = 10.0, smooth_s: float = 0.5,
                 jump_above_s: float = 0.04, snap_in_quiet_above_s: float = 0.005, confirm: int = 3,
                 patience_s: float = 2.0):
        self.max_rate_dev = max_rate_dev
        self.kp = 2.0 / loop_s  # critically damped, natural frequency 1/loop_s
        self.ki = 1.0 / loop_s**2
        self.smooth_s = smooth_s
        self.jump_above_s = jump_above_s
        self.snap_above_s = snap_in_quiet_above_s
        self.confirm = confirm  # a large error must persist this many blocks: one odd timestamp is not a jump
        self.patience_s = patience_s
        self._late_since: float | None = None  # when the voice, playing, was first found too late
        self.error_s = 0.0  # smoothed delay error (seconds; > 0: the voice is late)
        self.drift = 0.0  # the integral: the estimated rate mismatch between the two clocks
        self.rate = 1.0
        self._last: float | None = None
        self._large: list[float] = []  # consecutive large errors, waiting for confirmation

    def update(self, play_time: float, heard_time: float, target_delay: float, quiet: bool = False) -> Correction:
        error = play_time - heard_time - target_delay
        dt = 0.0 if self._last is None else min(max(play_time - self._last, 0.0), 0.1)
        self._last = play_time
        if abs(error) > self.jump_above_s:
            same_side = self._large and (self._large[-1] > 0) == (error > 0)
            self._large = [*self._large, error] if same_side else [error]
            if quiet or len(self._large) >= self.confirm:
                if error > 0 and not quiet:
                    self._late_since = play_time if self._late_since is None else self._late_since
                    if play_time - self._late_since < self.patience_s:
                        return Correction(self.rate)  # late, mid-phrase: wait for a pause
                jump = min(self._large, key=abs)  # the most cautious of the confirming errors: never overshoot
                self.error_s, self._large, self._late_since = 0.0, [], None
                return Correction(self.rate, jump)
            return Correction(self.rate)  # wait for confirmation; keep the loop's state as it was
        self._large, self._late_since = [], None
        self.error_s = error if not dt else self.error_s + (error - self.error_s) * min(1.0, dt / self.smooth_s)
        if quiet and abs(self.error_s) > self.snap_above_s:
            jump, self.error_s = self.error_s, 0.0
            return Correction(self.rate, jump)
        limit = self.max_rate_dev
        self.drift = min(max(self.drift + self.ki * self.error_s * dt, -limit), limit)
        self.rate = 1.0 + min(max(self.drift + self.kp * self.error_s, -limit), limit)
        return Correction(self.rate)
