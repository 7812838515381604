"""Voice in step with the lips: the delayed playout behind "Avatar Cam Microphone", and its measurement.

The call app gets our video about 0.2 s after the sound reached the microphone (`FrameRecord.latency`). The
virtual microphone plays each input sample exactly that much after it was heard, so voice and lips arrive
together. Everything here is scheduled from one clock, the input sample clock with its arrival times
(`AudioRing.arrival_time`): the frames follow it by construction (see pipeline.py), and the playout steers
its read position so that (play time - heard time) stays at the measured delay. The output device's clock
differs from the input's by up to ~0.1% (3.6 s an hour): `DriftCorrector` tracks that as a tiny resampling
ratio, and re-aligns by a crossfaded jump only when the error is large or the voice is silent.

The classes here do no I/O and read no clock: they are given times, so tests drive them with simulated
clocks. The sounddevice stream and the PulseAudio device live in virtual_mic.py; `avatar-cam bench av-sync`
(at the end of this file) measures the result on real devices.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import subprocess
import tempfile
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .audio_source import SAMPLE_RATE, AudioRing
from .bench import ProcessCpu, _CountingCamera, answer, picture_options

TAPS = 48  # windowed-sinc interpolation length (input samples)
QUIET_PEAK = 10 ** (-50 / 20)  # below this (peak, -50 dBFS) a re-alignment cannot be heard


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


# ------------------------------------------------------------------------------------------------- measurement


def steady_clock(ring: AudioRing, skip_s: float = 1.0):
    """time(sample) as a straight line through a ring's arrival stamps, ignoring the first `skip_s` and outliers.

    A sound card's clock is steady; its stamps are not (+-10 ms). Measuring against the line keeps the stamps'
    jitter out of the result. Raises ValueError when the stamps do not follow any line (a stalled stream).
    """
    idx = np.arange(int(skip_s * SAMPLE_RATE), ring.total, 160)
    stamps = [ring.arrival_time(int(i)) for i in idx]
    ok = np.array([t is not None for t in stamps])
    idx, t = idx[ok], np.array([v for v in stamps if v is not None])
    if len(idx) < 100:
        raise ValueError("too little audio to fit its clock")
    keep = np.ones(len(idx), bool)
    for _ in range(3):
        a, b = np.polyfit(idx[keep], t[keep], 1)
        residual = t - (a * idx + b)
        keep = np.abs(residual - np.median(residual[keep])) < 0.010
    if keep.mean() < 0.8:
        raise ValueError("the audio stamps follow no steady clock (did the stream stall?)")
    return lambda s: a * np.asarray(s, dtype=float) + b


def _magnitudes(x: np.ndarray) -> np.ndarray:
    frames = np.lib.stride_tricks.sliding_window_view(x, 512)[::128] * np.hanning(512)
    return np.abs(np.fft.rfft(frames, axis=1)).ravel()


def locate_voice(x: np.ndarray, y: np.ndarray, window_s: float = 0.5, search_s: float = 0.1,
                 lags: tuple[int, int] | None = None):
    """Where the voice of input `x` reappears in the recording `y` (both 16 kHz).

    One FFT cross-correlation finds the rough delay, looking only at lags in `lags` (lo, hi: y[s + lag] ~ x[s])
    when given: a looped sentence correlates with itself a loop later, and over a long run the playout's small
    resampling smears the true peak enough that a wrong loop can win. Then each voiced window of x is located
    again within +-`search_s`. Returns (window centres in x, their centres in y, spectral similarity of each):
    magnitude spectrograms, because the playout resamples by up to 0.3% while it follows the delay, which a
    waveform correlation over half a second would punish and which nobody hears.
    """
    voiced = np.flatnonzero(np.abs(x) > 0.02)
    if voiced.size == 0:
        raise ValueError("the input has no voice in it")
    a, b = voiced[0], min(len(x), voiced[-1] + 1)
    size = 1 << (len(x) + len(y)).bit_length()
    corr = np.fft.irfft(np.fft.rfft(y, size) * np.conj(np.fft.rfft(x[a:b], size)), size)
    if lags is None:  # x[a] may land anywhere that leaves room for all of x's voice
        first, last = 0, max(1, len(y) - (b - a))
    else:  # (the voice's tail may be missing: the recording stopped before it all left)
        first, last = max(0, a + lags[0]), min(len(y), a + lags[1] + 1)
        if first >= last:
            raise ValueError("the recording does not cover the time the voice should have left")
    lag = first + int(np.argmax(corr[first:last])) - a
    win, search = round(window_s * SAMPLE_RATE), round(search_s * SAMPLE_RATE)
    centres, found, similar = [], [], []
    for s0 in range(a, b - win, win // 2):
        seg = x[s0 : s0 + win]
        lo = s0 + lag - search
        if np.sqrt(np.mean(np.square(seg))) < 0.01 or lo < 0 or lo + win + 2 * search > len(y):
            continue
        ref = y[lo : lo + win + 2 * search]
        k = int(np.argmax(np.correlate(ref, seg, "valid")))
        centres.append(s0 + win / 2)
        found.append(lo + k + win / 2)
        similar.append(float(np.corrcoef(_magnitudes(seg), _magnitudes(ref[k : k + win]))[0, 1]))
    return np.array(centres), np.array(found), np.nan_to_num(np.array(similar))  # (silence: no similarity)


def sync_report(x: np.ndarray, heard, y: np.ndarray, left, frames: list[tuple[float, float]],
                max_delay_s: float = 2.0) -> dict:
    """Voice vs lips, from what left the virtual microphone and what left the camera.

    x: the input at 16 kHz, heard(s): when its sample s was heard; y: the virtual microphone recorded at
    16 kHz, left(j): when its sample j left the device (both steady clocks, see `steady_clock`). frames:
    (audio time shown, time sent) of each frame with a moving mouth. An offset is (voice out) - (frame out)
    for the audio a frame shows: > 0 means the voice comes later than the lips. The voice is looked for up to
    `max_delay_s` after it was heard.
    """
    # The voice leaves 0 to max_delay_s after it was heard: where x's first voiced sample can be in y.
    voiced = int(np.argmax(np.abs(x) > 0.02))
    t0, per_sample = float(left(0)), float(left(SAMPLE_RATE) - left(0)) / SAMPLE_RATE
    lo, hi = (round((float(heard(voiced)) + d - t0) / per_sample) - voiced for d in (0.0, max_delay_s))
    centres, found, similar = locate_voice(x, y, lags=(lo, hi))
    good = similar > 0.8
    if good.sum() < 3:
        raise ValueError("too little of the voice could be found in the recording")
    centres, found = centres[good], found[good]
    shown = np.array([f[0] for f in frames]) * SAMPLE_RATE
    sent = np.array([f[1] for f in frames])
    keep = (shown >= centres[0]) & (shown <= centres[-1])
    offsets = left(np.interp(shown[keep], centres, found)) - sent[keep]
    if offsets.size < 10:
        raise ValueError("too few frames showed voice that was found")
    t = sent[keep] - sent[keep][0]
    slope, stderr = _slope(t, offsets)
    return {
        "frames": int(offsets.size),
        "voice_similarity_p5": round(float(np.percentile(similar, 5)), 3),
        "offset_ms_p50": round(1000 * float(np.percentile(np.abs(offsets), 50)), 1),
        "offset_ms_p95": round(1000 * float(np.percentile(np.abs(offsets), 95)), 1),
        "offset_ms_mean": round(1000 * float(np.mean(offsets)), 1),
        "offset_ms_p5_p95_signed": [round(1000 * float(v), 1) for v in np.percentile(offsets, [5, 95])],
        "drift_ms_per_hour": round(1000 * 3600 * slope, 1),
        "drift_ms_per_hour_stderr": round(1000 * 3600 * stderr, 1),
        "voice_delay_ms_p50": round(1000 * float(np.median(left(found) - heard(centres))), 1),
        "span_s": round(float(t[-1]), 1),
    }


def _slope(t: np.ndarray, v: np.ndarray) -> tuple[float, float]:
    """Least-squares slope of v over t, and its standard error."""
    if t.size < 3 or np.ptp(t) == 0:
        return 0.0, float("inf")
    slope, icpt = np.polyfit(t, v, 1)
    res = v - (slope * t + icpt)
    stderr = float(np.sqrt(np.sum(res**2) / (t.size - 2) / np.sum((t - t.mean()) ** 2)))
    return float(slope), stderr


# ------------------------------------------------------------------------------------------------- the bench


class _TimedCamera(_CountingCamera):
    """A pyvirtualcam backend that notes when each frame was sent: the bench measures our side, not a driver."""

    last: _TimedCamera | None = None

    def __init__(self, *, width, height, fps, fourcc, device, **kw):
        super().__init__(width=width, height=height, fps=fps, fourcc=fourcc, device=device)
        self.times: list[float] = []
        _TimedCamera.last = self

    def send(self, frame) -> None:
        self.times.append(time.monotonic())

    def device(self) -> str:
        return "av-sync-bench"


def register(kinds) -> None:
    """Add `avatar-cam bench av-sync` to bench.py's KIND subparsers."""
    p = kinds.add_parser("av-sync", parents=[picture_options()],
                         help="voice vs lips as a call app gets them: Avatar Cam Microphone against the camera")
    p.add_argument("--seconds", type=float, default=30.0, help="how long to speak (default 30; drift needs minutes)")
    p.add_argument("--offset-ms", type=float, default=0.0, help="manual offset on top of the measured delay")
    p.set_defaults(func=run)


def run(args) -> int:
    r = av_sync_bench(args.seconds, args.photo, args.audio, args.checkpoint, args.size, args.fps, args.offset_ms)
    return answer(args, r, _print_av_sync)


def _print_av_sync(r: dict) -> None:
    lo, hi = r["offset_ms_p5_p95_signed"]
    print(f"voice vs lips over {r['span_s']} s of speech, {r['frames']} talking frames ({r['weights']})")
    print(f"  |offset| p50 {r['offset_ms_p50']} ms, p95 {r['offset_ms_p95']} ms  (signed p5..p95 {lo:+}..{hi:+} ms, "
          f"mean {r['offset_ms_mean']:+} ms; > 0: the voice comes later)")
    print(f"  drift {r['drift_ms_per_hour']:+} ms/hour (+- {r['drift_ms_per_hour_stderr']}; longer runs narrow it)")
    print(f"  voice delayed {r['voice_delay_ms_p50']} ms (target {r['delay_ms']} ms); frames ready p5/p50/p95 "
          f"{r['frame_ready_ms_p5_p50_p95']} ms and sent p5/p50/p95 {r['frame_latency_ms_p5_p50_p95']} ms after "
          f"the sound was heard; voice similarity p5 {r['voice_similarity_p5']}")
    print(f"  playout: {r['jumps']} jumps, {r['holds']} holds, {r['underruns']} underruns, "
          f"clock drift {r['clock_drift_ppm']} ppm; CPU {r['cpu_pct']}% of one core while speaking")


def _need_sound_server() -> None:
    from .errors import AvatarCamError
    from .virtual_mic import VirtualMicError, pactl

    try:
        pactl("info")
    except VirtualMicError as e:
        raise AvatarCamError(
            f"bench av-sync needs a PulseAudio or PipeWire sound server (it plays speech into a test sink, hears it "
            f"as the microphone and records Avatar Cam Microphone): {str(e).splitlines()[0]}",
            hint="run it in your desktop session; on a headless machine: apt install pulseaudio pulseaudio-utils "
                 "libasound2-plugins && pulseaudio --daemonize=yes --exit-idle-time=-1") from None


def _wait_until_flowing(ring: AudioRing, timeout: float = 10.0) -> None:
    """Until the ring has grown steadily for half a second."""
    from .errors import AvatarCamError

    deadline, since, last = time.monotonic() + timeout, None, ring.total
    while time.monotonic() < deadline:
        time.sleep(0.05)
        grew, last = ring.total > last, ring.total
        since = (since or time.monotonic()) if grew else None
        if since is not None and time.monotonic() - since > 0.5:
            return
    raise AvatarCamError(f"no audio arrived within {timeout:.0f} s", hint="is the sound server running? `pactl info`")


def _wait_until_settled(pipeline, timeout: float = 20.0) -> None:
    """Until frames have come for 3 s and their lateness holds still (within 3 ms over a second).

    A sound server may hand a new stream's first seconds over late and then catch up (PulseAudio does, for a
    null sink's monitor); measuring sync while the delay still follows that would measure the catching up.
    """
    start, previous = time.monotonic(), None
    while time.monotonic() - start < timeout:
        time.sleep(1.0)
        recent = [r.lateness for r in pipeline.stats.records[-30:] if r.index >= 0 and r.lateness is not None]
        now = float(np.median(recent)) if len(recent) >= 10 else None
        if now is not None and previous is not None and abs(now - previous) < 0.003 and time.monotonic() - start >= 3:
            return
        previous = now


def av_sync_bench(seconds: float = 30.0, photo: Path | None = None, audio: Path | None = None,
                  checkpoint: Path | None = None, size: str = "1280x720", fps: float = 30.0,
                  offset_ms: float = 0.0) -> dict:
    import pyvirtualcam

    from .audio_source import MicrophoneSource
    from .bench import _checkpoint_for_bench, bench_photo, bench_speech
    from .compositor import OutputFormat, parse_size
    from .engine import Wav2LipEngine
    from .frame_clock import FrameClock
    from .pipeline import LivePipeline
    from .portrait import Portrait
    from .renderer import FrameRenderer, Wav2LipLipSync
    from .sinks import VirtualCameraSink
    from .virtual_mic import SOURCE, VirtualMicrophone, _process_token, pactl, pulse_env

    _need_sound_server()
    pyvirtualcam.register_backend("avatar-cam-av-sync", _TimedCamera)
    speaker = "avatar_cam_bench_speaker"
    with tempfile.TemporaryDirectory(prefix="avatar-cam-bench-") as tmp, contextlib.ExitStack() as stack:
        work = Path(tmp)
        ckpt, weights_note = _checkpoint_for_bench(checkpoint, work)
        speech = bench_speech(audio, work, seconds)
        w, h = parse_size(size)
        clock = FrameClock(fps)
        engine = Wav2LipEngine.from_checkpoint(ckpt, cache_dir=work / "cache")
        renderer = FrameRenderer(Wav2LipLipSync(engine), Portrait.load(bench_photo(photo, work)), OutputFormat(w, h), clock)

        module = pactl("load-module", "module-null-sink", f"sink_name={speaker}", "rate=48000", "channels=1",
                       f"sink_properties='device.description=\"Avatar Cam bench speaker\" "
                       f"avatar_cam.bench={_process_token(os.getpid())}'").strip()
        stack.callback(pactl, "unload-module", module, check=False)
        ring, recorded = AudioRing(seconds + 20), AudioRing(seconds + 20)
        mic, listener = MicrophoneSource(ring, device="pulse"), MicrophoneSource(recorded, device="pulse")
        camera = VirtualCameraSink(w, h, fps, backend="avatar-cam-av-sync")
        stack.callback(camera.close)
        vmic = stack.enter_context(VirtualMicrophone(ring, offset_ms, initial_delay_s=clock.lookahead_s + 0.04))
        shown: list[tuple[int, float, bool, float | None, float | None]] = []  # every frame: stats.records is bounded

        def on_frame(frame, rec) -> None:
            vmic.observe_frame(frame, rec)
            shown.append((rec.index, rec.audio_time, rec.inferred, rec.latency,
                          rec.lateness))

        pipeline = LivePipeline(renderer, [camera], ring, clock, on_frame=on_frame)
        pipeline.pace = vmic.frame_due
        with pulse_env({"PULSE_SOURCE": f"{speaker}.monitor"}):
            mic.start()
        stack.callback(mic.stop)
        with pulse_env({"PULSE_SOURCE": SOURCE}):
            listener.start()
        stack.callback(listener.stop)
        _wait_until_flowing(ring)  # a new null sink's monitor may hold audio back for a second or two
        _wait_until_flowing(recorded)
        frames = threading.Thread(target=pipeline.run, name="frames", daemon=True)
        frames.start()
        stack.callback(frames.join, 10)
        stack.callback(pipeline.stop)
        _wait_until_settled(pipeline)  # silence first: the input's latency settles and the delay is measured
        player = subprocess.Popen(["paplay", "-d", speaker, str(speech)], stdin=subprocess.DEVNULL,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        stack.callback(player.kill)
        cpu = ProcessCpu()  # (the bench's own recorder included: a call app's share is not ours to count)
        time.sleep(seconds)
        cpu_pct = cpu.percent()
        player.kill()
        time.sleep(vmic.delay_s + 0.5)  # the last voice leaves the virtual microphone
        status = vmic.status()
        pipeline.stop()
        frames.join(10)
        mic.stop()
        listener.stop()
        cam_times = _TimedCamera.last.times
        talking = [(t_audio, sent) for (k, t_audio, inferred, *_), sent in zip(shown, cam_times, strict=True)
                   if k >= 0 and inferred]
        x, y = ring.read(0, ring.total), recorded.read(0, recorded.total)
        try:
            result = sync_report(x, steady_clock(ring), y, steady_clock(recorded), talking,
                                 max_delay_s=max(2.0, offset_ms / 1000 + 1.0))
        except ValueError as exc:  # the recording or its clocks do not allow a measurement
            from .errors import AvatarCamError

            raise AvatarCamError(f"bench av-sync could not measure voice against lips: {exc}",
                                 hint="run it again for longer (--seconds 60) with nothing else using the sound "
                                      "server; `pactl list short sources` should list avatar_cam_mic while it runs"
                                 ) from None
        latency = [lat for k, _, inferred, lat, _ in shown if k >= 0 and inferred and lat is not None]
        ready = [d for k, _, inferred, _, d in shown if k >= 0 and inferred and d is not None]
    result.update({
        "weights": weights_note, "delay_ms": status["delay_ms"], "offset_setting_ms": offset_ms,
        "frame_latency_ms_p5_p50_p95": [round(1000 * float(v), 1) for v in np.percentile(latency, [5, 50, 95])],
        "frame_ready_ms_p5_p50_p95": [round(1000 * float(v), 1) for v in np.percentile(ready, [5, 50, 95])],
        "clock_drift_ppm": status["drift_ppm"], "jumps": status["jumps"], "holds": status["holds"],
        "underruns": status["underruns"], "cpu_pct": cpu_pct,
    })
    return result
