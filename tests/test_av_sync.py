"""The voice/lips alignment logic on simulated clocks: no devices, so hours of drift run in seconds.

A simulated microphone writes 16 kHz blocks into a real `AudioRing`, stamped with its own (fast or slow)
clock plus jitter; a simulated output device asks the real `DelayedPlayout` for blocks at its own rate and
tells it when each block will play (with jitter too). The truth is known, so for every block we can say how
far the voice left from `heard + delay`.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from avatar_cam.audio.ring import AudioRing
from avatar_cam.vmic.delay import MeasuredDelay
from avatar_cam.vmic.drift import DriftCorrector, InputClock
from avatar_cam.vmic.playout import DelayedPlayout, sinc_interpolate

OUT_RATE = 48000


def tone(s: np.ndarray) -> np.ndarray:
    return 0.5 * np.sin(2 * np.pi * 440 * s / 16000)


def simulate(seconds: float, in_ppm: float = 0.0, out_ppm: float = 0.0, in_block: int = 160, out_block: int = 480,
             delay=0.2, jitter_s: float = 0.002, signal=tone, render_audio: bool = True, corrector=None,
             stall: tuple[float, float] | None = None, seed: int = 0):
    """Run a playout between two simulated clocks. Returns (times, errors, output, playout).

    errors[i]: how late (s) the sample at the play head leaves, against its true capture time + delay, at
    the start of output block i (blocks that play silence are left out). `delay` may be a callable of time.
    """
    rng = np.random.default_rng(seed)
    ring = AudioRing(seconds=5)
    a_in, a_out = 1 + in_ppm * 1e-6, 1 + out_ppm * 1e-6
    now = {"t": 0.0}
    target = delay if callable(delay) else (lambda _t: delay)
    play = DelayedPlayout(ring, OUT_RATE, lambda: target(now["t"]), corrector=corrector)
    if not render_audio:  # an hour of real interpolation is too slow for a unit test; the control logic is the same
        play._interp = lambda pos, count, step: np.zeros(count, np.float32)
    lead, written, start = 0.03, 0, 0.5
    segments = [(0, 0.0)]  # (first sample, capture time of its start): a stall starts a new segment

    def captured(sample: float) -> float:  # true capture time of a sample (of a block's last sample: its arrival)
        first, t0 = next(seg for seg in reversed(segments) if seg[0] <= sample)
        return t0 + (sample - first + 1) / (16000 * a_in)

    times, errors, out = [], [], []
    for m in range(int(seconds * OUT_RATE / out_block)):
        true_play = start + m * out_block / (OUT_RATE * a_out)
        now["t"] = true_play - lead  # the callback runs `lead` before its block plays
        if stall is not None and stall[0] <= now["t"] < stall[1]:
            if segments[-1][0] != written:
                segments.append((written, stall[1]))  # the microphone delivers nothing until stall[1]
            continue_writing = False
        else:
            continue_writing = True
        while continue_writing and captured(written + in_block - 1) <= now["t"]:
            s = np.arange(written, written + in_block)
            ring.write(signal(s).astype(np.float32), arrival=captured(s[-1]) + abs(rng.normal(0, jitter_s)))
            written += in_block
        y = play.render(out_block, true_play + rng.normal(0, jitter_s / 4))
        if render_audio:
            out.append(y)
        if play.pos is not None and play._sounding and play._hold_left == 0:
            next_play = start + (m + 1) * out_block / (OUT_RATE * a_out)
            times.append(next_play)
            errors.append(next_play - captured(play.pos) - target(now["t"]))
    return np.array(times), np.array(errors), (np.concatenate(out) if out else None), play


@pytest.mark.parametrize(("in_ppm", "out_ppm"), [(0, 1000), (0, -1000), (-1000, 0)])
def test_an_hour_of_clock_drift_stays_within_20_ms(in_ppm, out_ppm):
    # 30 ms input and 50 ms output blocks keep an hour to ~2 s; the loop sees the same drift per second.
    t, err, _, play = simulate(3600, in_ppm, out_ppm, in_block=480, out_block=2400, jitter_s=0.005, render_audio=False)
    assert t[-1] > 3590
    assert np.abs(err).max() < 0.020
    assert np.abs(err[t > 600]).max() < 0.005  # and once converged, a few ms
    assert play.jumps == play.holds == play.underruns == 0  # by resampling alone
    mismatch = (in_ppm - out_ppm) * 1e-6
    assert play.corrector.drift == pytest.approx(mismatch, abs=0.05e-3)  # it learned the clock difference


def test_without_correction_the_voice_drifts_away():
    """The simulation can fail: a playout that never adjusts drifts by 0.1% of the time (3.6 s an hour)."""
    frozen = DriftCorrector(max_rate_dev=0.0, jump_above_s=1e9)
    t, err, _, _ = simulate(600, 0, -1000, in_block=480, out_block=2400, render_audio=False, corrector=frozen)
    assert err[-1] == pytest.approx(0.6, rel=0.02)


@pytest.mark.parametrize("out_ppm", [1000, -1000])
def test_drift_correction_is_glitch_free_on_a_sine(out_ppm):
    t, err, y, play = simulate(60, 0, out_ppm)
    assert np.abs(err[t > 2]).max() < 0.008  # while the loop learns the drift
    assert np.abs(err[t > 40]).max() < 0.003
    steady = y[OUT_RATE:]  # after the first second (the start fades in)
    # A 440 Hz sine at amplitude 0.5 never moves more than 0.5 * 2 pi 440 / 48000 = 0.0288 per sample;
    # a slip of even one input sample would jump by ~0.09.
    assert np.abs(np.diff(steady)).max() < 0.0288 * 1.02
    assert np.abs(steady).max() == pytest.approx(0.5, abs=0.002)  # no level wobble as the phase slides
    assert play.jumps == play.holds == play.underruns == 0


def test_a_changed_delay_is_applied_in_the_pauses_without_clicks():
    def bursts(s):  # 0.6 s of tone with 10 ms ramps, 0.4 s of silence
        phase = (s / 16000) % 1.0
        envelope = np.clip(np.minimum(phase, 0.6 - phase) / 0.01, 0.0, 1.0)
        return tone(s) * envelope

    t, err, y, play = simulate(20, signal=bursts, delay=lambda now: 0.2 if now < 8 else 0.225)
    assert play.jumps >= 1 or play.holds >= 1
    late = t > 10  # the 25 ms step was taken in the first pause after it
    assert np.abs(err[late]).max() < 0.004
    # Every transition (fades, the re-alignment) is smooth: no step larger than the sine's own, plus a fade's.
    assert np.abs(np.diff(y[OUT_RATE:])).max() < 0.0288 * 1.1


def test_a_late_voice_waits_for_a_pause_instead_of_cutting_words():
    def bursts(s):  # 0.6 s of tone with 10 ms ramps, 0.4 s of silence
        phase = (s / 16000) % 1.0
        return tone(s) * np.clip(np.minimum(phase, 0.6 - phase) / 0.01, 0.0, 1.0)

    # At 8.35 s the delay drops by 60 ms while a burst plays (captured at 8.10: phase 0.1); its pause starts
    # playing at 8.85 (captured at 8.60).
    t, err, y, play = simulate(12, signal=bursts, delay=lambda now: 0.25 if now < 8.35 else 0.19)
    waiting = (t > 8.45) & (t < 8.8)
    assert waiting.any() and np.all(np.abs(err[waiting] - 0.06) < 0.006)  # the burst plays on, whole
    assert np.abs(err[t > 9.1]).max() < 0.004  # re-aligned in the pause
    assert np.abs(np.diff(y[OUT_RATE:])).max() < 0.0288 * 1.1


def test_a_stalled_microphone_gives_silence_then_the_voice_at_the_right_delay():
    t, err, y, play = simulate(12, stall=(4.0, 5.5))
    assert play.underruns >= 1
    at = (np.arange(len(y)) / OUT_RATE) + 0.5
    quiet = (at > 4.0 + 0.2 + 0.05) & (at < 5.5 + 0.2 - 0.05)
    assert np.abs(y[quiet]).max() < 1e-6  # nothing to play: silence, not old audio
    assert np.abs(err[t > 6]).max() < 0.008  # after the stall, back on time (the clock restarts from one stamp)...
    assert np.abs(err[t > 11]).max() < 0.004  # ...and converging
    assert np.abs(np.diff(y)).max() < 0.0288 * 1.1  # faded out and in, no clicks


def test_sinc_interpolation_is_flat_through_the_voice_band():
    s = np.arange(4000)
    positions = 200 + np.arange(9000) / 3.0007  # 16 kHz -> ~48 kHz at a drifting ratio
    for freq in (200, 1000, 3000, 5000, 6000):
        x = np.sin(2 * np.pi * freq * s / 16000).astype(np.float32)
        y = sinc_interpolate(x, positions, 0.45)
        assert np.abs(y - np.sin(2 * np.pi * freq * positions / 16000)).max() < 2e-3, freq
    x = np.sin(2 * np.pi * 7800 * s / 16000).astype(np.float32)  # near Nyquist: filtered out, not aliased
    assert np.abs(sinc_interpolate(x, positions, 0.45)).max() < 0.1


def test_input_clock_smooths_jittery_stamps_and_follows_a_restart():
    rng = np.random.default_rng(1)
    clock = InputClock()
    for block in range(1, 3000):  # 90 s of 30 ms chunks, stamps late by 0-15 ms, input 0.1% fast
        last = block * 480 - 1
        clock.observe(last, (last + 1) / 16016 + rng.uniform(0, 0.015))
    truth = (last + 1) / 16016 + 0.0075  # the stamps' mean lateness stays: frames carry the same stamps
    assert clock.time_of(last) == pytest.approx(truth, abs=0.002)
    clock.observe(last + 480, 500.0)  # the microphone was restarted: its clock jumps
    assert clock.time_of(last + 480) == pytest.approx(500.0, abs=1e-6)


def record(index: int, lateness: float, inferred: bool) -> SimpleNamespace:
    """A frame whose sound was heard `lateness` before it could have left (it was sent later: pacing held it)."""
    return SimpleNamespace(index=index, lateness=lateness, emitted=100.5, inferred=inferred)


def test_measured_delay_covers_nearly_every_moving_mouth_plus_the_offset():
    delay = MeasuredDelay(offset_ms=10, initial_s=0.3)
    assert delay.seconds == pytest.approx(0.31)
    for k in range(10):  # too few frames to say
        delay.observe(None, record(k, 0.180, False))
    assert delay.seconds == pytest.approx(0.31)
    for k in range(10, 100):  # idle frames only: their lateness is all there is
        delay.observe(None, record(k, 0.180, False))
    assert delay.seconds == pytest.approx(0.180 + delay.headroom_s + 0.010)
    rng = np.random.default_rng(0)
    for k in range(100, 400):  # a mouth moving: inference makes these frames later, and they are what a viewer sees
        delay.observe(None, record(k, rng.uniform(0.190, 0.210), True))
        delay.observe(None, record(k, 0.180, False))
    # The voice waits until ~95% of the moving mouths are drawn; the time pacing holds them never counts.
    assert delay.seconds == pytest.approx(0.209 + delay.headroom_s + 0.010, abs=0.0015)
    for k in range(400, 600):  # frames a little earlier: not worth re-aligning the voice for
        delay.observe(None, record(k, rng.uniform(0.185, 0.205), True))
    assert delay.seconds == pytest.approx(0.209 + delay.headroom_s + 0.010, abs=0.0015)
    for k in range(600, 800):  # clearly earlier for a whole window: the voice waits less
        delay.observe(None, record(k, rng.uniform(0.160, 0.180), True))
    assert delay.seconds == pytest.approx(0.179 + delay.headroom_s + 0.010, abs=0.0015)
    delay.observe(None, SimpleNamespace(index=-1, lateness=None, emitted=5.0, inferred=False))  # keep-alive
    delay.offset_ms = -300
    assert delay.seconds == 0.0  # never negative


def test_the_playout_tells_when_each_input_sample_plays():
    """What frame pacing relies on: play_time_of(s) is when sample s actually leaves, to a fraction of a ms."""
    t, err, _, play = simulate(20, 0, 1000, jitter_s=0.002)
    pos, played_at, rate = play.anchor
    assert rate == pytest.approx(16000 / (1 + 1000e-6), rel=5e-4)  # the input keeps pace with the fast output clock
    assert play.play_time_of(pos) == pytest.approx(played_at, abs=1e-9)
    # a sample 30 ms before the play head, as a frame drawn a little late would ask about
    assert play.play_time_of(pos - 480) == pytest.approx(played_at - 480 / rate, abs=1e-6)
    assert play.play_time_of(pos + 10 * 16000) is None  # too far from the play head to say
    assert np.abs(err[t > 10]).max() < 0.004


def test_the_sync_report_is_not_fooled_by_a_looped_sentence(speech_16k):
    """`bench av-sync` loops one sentence for minutes, and its voice correlates with itself a loop later. The
    report must find the delay the voice really had even when the recording stopped before the last words
    left (it once reported the voice 19 s early), and call frames sent with their voice in sync."""
    from avatar_cam.bench.sync_analysis import sync_report

    loop = np.concatenate([speech_16k, np.zeros(16000, np.float32)])
    x = np.concatenate([np.zeros(3 * 16000, np.float32), np.tile(loop, 12)])
    x = x[: int(np.flatnonzero(np.abs(x) > 0.02)[-1]) + 1600]  # the player stopped in the middle of a word
    delay, started = 0.25, 0.8  # the voice leaves 250 ms after it is heard; the recording began 0.8 s later
    j = np.arange(len(x) - int(started * 16000))  # ...and ended at the same time as the input: the tail is cut
    y = np.interp((started - delay) * 16000 + j, np.arange(len(x)), x, left=0.0).astype(np.float32)
    heard = lambda s: np.asarray(s, dtype=float) / 16000  # noqa: E731
    left = lambda k: started + np.asarray(k, dtype=float) / 16000  # noqa: E731
    frames = [(t, t + delay) for t in np.arange(4.0, len(x) / 16000 - 1, 1 / 30)]  # lips leave with their voice
    r = sync_report(x, heard, y, left, frames)
    assert abs(r["voice_delay_ms_p50"] - 1000 * delay) < 2, r
    assert r["offset_ms_p95"] < 2 and r["voice_similarity_p5"] > 0.95, r
    assert r["own_mouth_frames"] == r["frames"] and r["own_mouth_offset_ms_p50"] < 2, r
    # Every other frame showing the previous frame's mouth (a busy machine): those are a frame period off.
    older = [(t - (i % 2) / 30, sent, i % 2 == 0) for i, (t, sent) in enumerate(frames)]
    r = sync_report(x, heard, y, left, older)
    assert r["own_mouth_offset_ms_p50"] < 2 and 2 * r["own_mouth_frames"] == pytest.approx(r["frames"], abs=2), r
    assert r["offset_ms_p95"] == pytest.approx(1000 / 30, abs=2), r
