"""Voice in step with the lips: the delayed playout behind "Avatar Cam Microphone".

The call app gets our video about 0.2 s after the sound reached the microphone (`FrameRecord.latency`). The
virtual microphone plays each input sample exactly that much after it was heard, so voice and lips arrive
together. Everything here is scheduled from one clock, the input sample clock with its arrival times
(`AudioRing.arrival_time`): the frames follow it by construction (see live/pipeline.py), and the playout steers
its read position so that (play time - heard time) stays at the measured delay. The output device's clock
differs from the input's by up to ~0.1% (3.6 s an hour): `DriftCorrector` tracks that as a tiny resampling
ratio, and re-aligns by a crossfaded jump only when the error is large or the voice is silent.

The classes here do no I/O and read no clock: they are given times, so tests drive them with simulated
clocks. The sounddevice stream and the PulseAudio device live in microphone.py and pulse.py; `avatar-cam bench
av-sync` measures the result on real devices.
"""

from __future__ import annotations

import functools
import math

import numpy as np

from avatar_cam.audio.ring import SAMPLE_RATE, AudioRing
from avatar_cam.vmic.drift import DriftCorrector, InputClock

TAPS = 48  # windowed-sinc interpolation length (input samples)
QUIET_PEAK = 10 ** (-50 / 20)  # below this (peak, -50 dBFS) a re-alignment cannot be heard


PHASES = 256  # interpolation-table resolution (fractional positions in between are interpolated linearly)


@functools.lru_cache(maxsize=4)
def _sinc_table(cutoff: float) -> np.ndarray:
    """(PHASES+1, TAPS) Blackman-windowed sinc weights for fractional phases 0..1, each row summing to 1."""
    k = np.arange(1 - TAPS // 2, TAPS // 2 + 1)
    d = k[None, :] - (np.arange(PHASES + 1) / PHASES)[:, None]
    u = d / (TAPS // 2)
    w = np.sinc(2 * cutoff * d) * (0.42 + 0.5 * np.cos(np.pi * u) + 0.08 * np.cos(2 * np.pi * u))
    return (w / w.sum(axis=1, keepdims=True)).astype(np.float32)


def sinc_interpolate(x: np.ndarray, positions: np.ndarray, cutoff: float) -> np.ndarray:
    """Band-limited values of `x` at fractional `positions` (indices into x, at least TAPS/2 from its ends).

    Windowed sinc, `cutoff` in cycles per input sample (< 0.5). The rows are normalised, so the gain stays
    exactly 1 while the fractional phase slides (no flutter as the rate drifts).
    """
    table = _sinc_table(round(cutoff, 6))
    base = np.floor(positions).astype(np.int64)
    phase = (positions - base) * PHASES
    row = np.minimum(phase.astype(np.int64), PHASES - 1)
    a = (phase - row).astype(np.float32)[:, None]
    w = table[row] * (1 - a) + table[row + 1] * a
    windows = np.lib.stride_tricks.sliding_window_view(x, TAPS)
    return np.einsum("ij,ij->i", windows[base - (TAPS // 2 - 1)], w)


class DelayedPlayout:
    """The 16 kHz input ring, played at `out_rate` with each sample leaving `delay()` seconds after it was heard.

    `render(n, play_time)` returns the next n output samples, given when the first of them will play (on the
    clock of the ring's arrival times, time.monotonic()). Owned by one thread: the output stream's callback.
    When the input has nothing due yet (start, a stalled microphone) it plays silence and waits; every
    transition between sound and silence is faded over 2.5 ms and every jump is crossfaded, across block
    boundaries when need be, so nothing clicks. Counters (`jumps`, `holds`, `underruns`) and `last_error_s`
    may be read from other threads.
    """

    def __init__(self, ring: AudioRing, out_rate: float, delay, corrector: DriftCorrector | None = None):
        self.ring = ring
        self.out_rate = float(out_rate)
        self.delay = delay  # callable -> seconds, read once per block
        self.corrector = corrector or DriftCorrector()
        self.clock = InputClock()
        self.nominal_step = SAMPLE_RATE / self.out_rate  # input samples per output sample
        self.step = self.nominal_step
        self.cutoff = 0.45 * min(1.0, self.out_rate / SAMPLE_RATE)
        self.fade = max(1, round(0.0025 * self.out_rate))
        self._ramp = (0.5 - 0.5 * np.cos(np.pi * (np.arange(self.fade) + 0.5) / self.fade)).astype(np.float32)
        self.pos: float | None = None  # input sample at the play head
        self._observed = 0  # ring.total when the clock last looked
        self._sounding = False  # whether audio is playing (at full level or fading in)
        self._ramp_at: int | None = None  # how far a fade-in has got
        self._tail = np.zeros(0, np.float32)  # the rest of a fade-out, mixed into the next block
        self._hold_left = 0  # output samples of silence still to play for a hold
        self.jumps = self.holds = self.underruns = 0
        self.last_error_s = 0.0
        # (input position, the time it plays, input samples per second) after the last block played through:
        # when any input sample will play. Replaced whole (one reference), so other threads read it safely.
        self.anchor: tuple[float, float, float] | None = None

    # --- helpers -----------------------------------------------------------------------------------------
    def _interp(self, pos: float, count: int, step: float) -> np.ndarray:
        start = math.floor(pos) - TAPS // 2
        x = self.ring.read(start, math.ceil(count * step) + TAPS + 2)
        return sinc_interpolate(x, pos - start + step * np.arange(count), self.cutoff).astype(np.float32)

    def _play(self, out: np.ndarray, i: int, count: int) -> int:
        """Add `count` samples from the play head into out[i:] (continuing any fade-in); returns the new i."""
        if count <= 0:
            return i
        y = self._interp(self.pos, count, self.step)
        if self._ramp_at is not None:
            k = min(count, self.fade - self._ramp_at)
            y[:k] *= self._ramp[self._ramp_at : self._ramp_at + k]
            self._ramp_at = None if self._ramp_at + k >= self.fade else self._ramp_at + k
        out[i : i + count] += y
        self.pos += self.step * count
        self._sounding = True
        return i + count

    def _fade_out(self, out: np.ndarray, i: int) -> None:
        """Fade out what is playing (the input kept in hand allows it), mixed in from out[i] on."""
        if not self._sounding:
            return
        gain = self._ramp[::-1].copy()
        if self._ramp_at is not None:  # still fading in: fade out from the level reached
            gain *= self._ramp[self._ramp_at]
        self._tail = self._interp(self.pos, self.fade, self.step) * gain
        self.pos += self.step * self.fade
        self._sounding, self._ramp_at = False, None
        self._mix_tail(out, i)

    def _mix_tail(self, out: np.ndarray, i: int) -> None:
        k = min(len(out) - i, len(self._tail))
        out[i : i + k] += self._tail[:k]
        self._tail = self._tail[k:]

    def _playable(self) -> int:
        """Output samples we can play from the play head, keeping input in hand for the filter and a fade-out."""
        spare = self.ring.total - self.pos - (TAPS // 2 + 2) - self.fade * self.step
        return max(0, int(spare / self.step))

    def _heard(self, pos: float) -> float | None:
        """When the sample at `pos` was heard (smoothed); None if the ring no longer (or not yet) holds it."""
        total = self.ring.total
        if total > self._observed:
            self.clock.observe(total - 1, self.ring.arrival_time(total - 1))
            self._observed = total
        if self.ring.arrival_time(math.floor(pos)) is None:
            return None
        return self.clock.time_of(pos)

    def _due(self, play_time: float, delay: float) -> float | None:
        """The input sample that should play at play_time, from the newest sample's arrival."""
        latest = self.ring.total - 1
        t = self.ring.arrival_time(latest) if latest >= 0 else None
        if t is None:
            return None
        due = latest - (t - (play_time - delay)) * SAMPLE_RATE
        oldest = max(0, self.ring.total - self.ring.capacity) + TAPS
        return float(min(max(due, oldest), self.ring.total))

    def _quiet_until(self, target: float) -> float:
        """`target`, or, if there is sound between the play head and it, a few ms before that sound starts."""
        start = math.floor(self.pos)
        x = self.ring.read(start, max(0, math.ceil(target) - start))
        loud = np.flatnonzero(np.abs(x) >= QUIET_PEAK)
        if loud.size == 0:
            return target
        return min(target, start + int(loud[0]) - 2 * self.fade * self.step)

    def _quiet(self, count: int) -> bool:
        x = self.ring.read(math.floor(self.pos), math.ceil(count * self.step) + 2)
        return float(np.abs(x).max(initial=0.0)) < QUIET_PEAK

    # --- the output thread's entry point ---------------------------------------------------------------------
    def render(self, n: int, play_time: float) -> np.ndarray:
        out = np.zeros(n, np.float32)
        self._mix_tail(out, 0)
        i = min(n, self._hold_left)
        self._hold_left -= i
        if i == n:
            return out
        t = play_time + i / self.out_rate
        delay = float(self.delay())
        if self.pos is None or self._heard(self.pos) is None:  # first audio, or the play head fell out of the ring
            self._fade_out(out, i)
            self.pos = self._due(t, delay)
            if self.pos is None:
                return out
        heard = self._heard(self.pos)
        if heard is None or self._playable() <= 0:  # nothing to play yet, or the microphone stalled
            self.underruns += self._sounding
            self._fade_out(out, i)
            return out
        quiet = not self._sounding or self._quiet(n - i)  # re-aligning silence cannot be heard
        correction = self.corrector.update(t, heard, delay, quiet=quiet)
        self.last_error_s = t - heard - delay
        self.step = self.nominal_step * correction.rate
        if correction.jump_s < 0:  # the voice would leave early: fade out what plays, then wait
            self.holds += 1
            self._fade_out(out, i)
            hold = round(-correction.jump_s * self.out_rate) + self.fade  # the fade-out used `fade` of input
            taken = min(n - i, hold)
            i, self._hold_left = i + taken, hold - taken
        elif correction.jump_s > 0:  # the voice is late: crossfade to the audio that is due now
            # If the input itself comes later than the delay allows (a stream starting with a backlog), play
            # the newest audio, but with a cushion of one resampler chunk, so it plays on instead of stuttering.
            newest = self.ring.total - (TAPS // 2 + 2) - (n + 2 * self.fade) * self.step - 0.06 * SAMPLE_RATE
            target = min(self.pos + correction.jump_s * SAMPLE_RATE, newest)
            if quiet and self._sounding:  # in a pause: skip only the pause, never the next word's start
                target = self._quiet_until(target)
            if target > self.pos + self.fade * self.step:
                self.jumps += 1
                self._fade_out(out, i)
                self.pos = target
        if i < n:
            if not self._sounding:
                self._ramp_at = 0
            count = min(n - i, self._playable())
            i = self._play(out, i, count)
            if i < n:  # ran out of input inside this block
                self.underruns += 1
                self._fade_out(out, i)
        self.anchor = (self.pos, play_time + n / self.out_rate, self.step * self.out_rate) if self._sounding else None
        return out

    def play_time_of(self, sample: float, horizon_s: float = 1.0) -> float | None:
        """When input `sample` will play (or played), from the last block; None while nothing plays steadily
        or when it is more than `horizon_s` away from the play head. Safe from any thread."""
        anchor = self.anchor
        if anchor is None:
            return None
        pos, t, rate = anchor
        ahead = (sample - pos) / rate
        return t + ahead if abs(ahead) <= horizon_s else None
