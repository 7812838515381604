"""Voice against lips, measured: where the input voice reappears in a recording of Avatar Cam Microphone, and
the offset between each talking frame and the voice it shows, on steady clocks fitted to the arrival stamps.
"""

from __future__ import annotations

import numpy as np

from avatar_cam.audio.ring import SAMPLE_RATE, AudioRing


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
    (audio time shown, time sent[, own]) of each frame with a moving mouth; `own`: the frame shows the mouth
    drawn for its own audio (not an earlier frame's, as a busy machine's frames do). An offset is (voice out) -
    (frame out) for the audio a frame shows: > 0 means the voice comes later than the lips. The offsets of the
    frames with their own mouths measure the pacing alone; all frames', what a viewer sees. The voice is looked
    for up to `max_delay_s` after it was heard.
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
    own = np.array([bool(f[2]) if len(f) > 2 else True for f in frames])
    keep = (shown >= centres[0]) & (shown <= centres[-1])
    offsets = left(np.interp(shown[keep], centres, found)) - sent[keep]
    if offsets.size < 10:
        raise ValueError("too few frames showed voice that was found")
    t = sent[keep] - sent[keep][0]
    slope, stderr = _slope(t, offsets)
    paced = offsets[own[keep]]
    return {
        "own_mouth_frames": int(paced.size),
        "own_mouth_offset_ms_p50": round(1000 * float(np.percentile(np.abs(paced), 50)), 1) if paced.size else None,
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
