"""The mel front end against librosa, against an independent by-hand implementation, and streaming vs offline."""

from __future__ import annotations

import subprocess
import sys

import librosa
import numpy as np
import pytest
import scipy.signal
from hypothesis import given, settings
from hypothesis import strategies as st

from avatar_cam.audio.mel import (
    HOP,
    MEL_FPS,
    N_FFT,
    N_MELS,
    SAMPLE_RATE,
    StreamingMel,
    _mel_basis,
    melspectrogram,
)

LIBROSA_MEL = {"sr": 16000, "n_fft": 800, "n_mels": 80, "fmin": 55, "fmax": 7600}


def test_constants():
    assert (SAMPLE_RATE, HOP, N_FFT, N_MELS, MEL_FPS) == (16000, 200, 800, 80, 80)


def _test_signal(n: int, seed: int = 0) -> np.ndarray:
    """Noise, a chirp, a near-silent stretch (hits the -100 dB floor) and a loud burst (hits the +4 clip)."""
    rng = np.random.default_rng(seed)
    t = np.arange(n) / SAMPLE_RATE
    x = 0.05 * rng.standard_normal(n) + 0.3 * scipy.signal.chirp(t, 60, t[-1] + 1e-9, 7800)
    x[n // 3 : n // 2] *= 1e-7
    x[n // 2 : n // 2 + 1600] *= 30.0
    return x.astype(np.float32)


def _by_hand(wav: np.ndarray) -> np.ndarray:
    """The formula written out independently: lfilter, explicit reflect edges, an explicit DFT, one frame at a time."""
    y = scipy.signal.lfilter([1.0, -0.97], [1.0], wav.astype(np.float64))
    padded = np.concatenate([y[400:0:-1], y, y[-2:-402:-1]])
    window = scipy.signal.get_window("hann", 800)
    k, n = np.arange(401)[:, None], np.arange(800)[None, :]
    dft = np.exp(-2j * np.pi * k * n / 800)
    basis = librosa.filters.mel(**LIBROSA_MEL, dtype=np.float64)
    cols = []
    for j in range(1 + len(wav) // 200):
        magnitude = np.abs(dft @ (padded[j * 200 : j * 200 + 800] * window))
        s = 20 * np.log10(np.maximum(1e-5, basis @ magnitude)) - 20
        cols.append(np.clip(8 * (s + 100) / 100 - 4, -4, 4))
    return np.stack(cols, axis=1)


def _wav2lip_audio_py(wav: np.ndarray) -> np.ndarray:
    """Wav2Lip's audio.melspectrogram with its hparams, as it ran under the librosa it was trained with."""
    y = scipy.signal.lfilter([1, -0.97], [1], wav)
    d = librosa.stft(y=y, n_fft=800, hop_length=200, win_length=800, pad_mode="reflect")
    min_level = np.exp(-100 / 20 * np.log(10))
    s = 20 * np.log10(np.maximum(min_level, np.dot(librosa.filters.mel(**LIBROSA_MEL), np.abs(d)))) - 20
    return np.clip((2 * 4) * ((s - -100) / 100) - 4, -4, 4)


def test_filterbank_equals_librosa():
    basis = _mel_basis()
    assert basis.shape == (80, 401)
    for dtype in (np.float64, np.float32):  # float32 is the one Wav2Lip used
        ref = librosa.filters.mel(**LIBROSA_MEL, dtype=dtype)
        np.testing.assert_allclose(basis, ref, rtol=1e-6, atol=1e-9 * ref.max())
        assert np.array_equal(basis > 0, ref > 0)
    assert _mel_basis() is basis  # computed once


@pytest.mark.parametrize("n", [401, 599, 600, 800, 1001, 16000 + 123])
def test_offline_equals_by_hand(n):
    x = _test_signal(n, seed=n)
    m = melspectrogram(x)
    assert m.dtype == np.float32 and m.shape == (80, 1 + n // 200)
    ref = _by_hand(x)
    assert np.abs(m - ref).max() < 1e-4
    if n > 10000:  # the signal exercises both ends of the clip
        assert (m == -4).any() and (m == 4).any()


def test_offline_equals_wav2lip_audio_py():
    x = _test_signal(3 * SAMPLE_RATE + 77, seed=3)
    assert np.abs(melspectrogram(x) - _wav2lip_audio_py(x)).max() < 1e-5


def _expected_columns(n_samples: int) -> int:
    """Columns whose right edge has arrived: column 0 needs samples 0..400 (reflect), column j>0 up to j*200+399."""
    return 0 if n_samples <= 400 else 1 + (n_samples - 400) // 200


_STREAM_SIGNAL = _test_signal(4567, seed=11)
_STREAM_OFFLINE = melspectrogram(_STREAM_SIGNAL)


@settings(max_examples=120, deadline=None, database=None)
@given(st.lists(st.sampled_from([0, 1, 7, 160, 441, 3000]) | st.integers(0, 1200), min_size=1, max_size=30).filter(any))
def test_streaming_equals_offline(sizes):
    stream, pushed, parts, i = StreamingMel(), 0, [], 0
    while pushed < len(_STREAM_SIGNAL):
        block = _STREAM_SIGNAL[pushed : pushed + sizes[i % len(sizes)]]
        i += 1
        cols = stream.push(block)
        pushed += len(block)
        assert cols.dtype == np.float32 and cols.shape[0] == 80
        parts.append(cols)
        assert stream.columns_emitted == _expected_columns(pushed) == sum(p.shape[1] for p in parts)
        assert stream._tail.size < N_FFT  # bounded state, however much has been pushed
    out = np.concatenate(parts, axis=1)
    assert out.shape[1] == _STREAM_OFFLINE.shape[1] - 2  # all but the two that need the end padding
    assert np.abs(out - _STREAM_OFFLINE[:, : out.shape[1]]).max() < 1e-5


def test_streaming_sample_by_sample_and_reset():
    x = _STREAM_SIGNAL[:2000]
    stream = StreamingMel()
    counts = [stream.push(x[i : i + 1]).shape[1] for i in range(len(x))]
    assert [i + 1 for i, c in enumerate(counts) if c] == [401] + list(range(600, 2001, 200))
    stream.reset()
    assert stream.columns_emitted == 0
    again = stream.push(x)
    np.testing.assert_array_equal(again, melspectrogram(x)[:, : again.shape[1]])  # no state left from before


def test_speech(speech_16k):
    """espeak-ng speech with 0.5 s of digital silence either side (the speech_wav fixture in conftest)."""
    wav = speech_16k
    m = melspectrogram(wav)
    assert m.shape == (80, 1 + len(wav) // 200)
    edge = (8000 - 400) // 200 + 1  # columns whose whole frame lies in 0.5 s of padding
    assert (m[:, :edge] == -4).all() and (m[:, -edge:] == -4).all()  # digital silence sits on the -100 dB floor
    speech = m.mean(axis=0)[edge + 1 : -edge - 1]
    assert np.median(speech) > -4 + 2.0 and speech.max() > -4 + 3.0  # typical spoken frames, far above it
    assert np.abs(m - _wav2lip_audio_py(wav)).max() < 1e-5

    stream = StreamingMel()
    live = np.concatenate([stream.push(wav[i : i + 160]) for i in range(0, len(wav), 160)], axis=1)
    assert live.shape[1] == m.shape[1] - 2
    assert np.abs(live - m[:, : live.shape[1]]).max() < 1e-5


@pytest.mark.parametrize("n", [0, 1, 400])
def test_too_short_is_explained(n):
    with pytest.raises(ValueError, match=r"need more than 400"):
        melspectrogram(np.zeros(n, np.float32))


def test_input_types():
    x = _test_signal(1000)
    with pytest.raises(TypeError, match=r"float audio.*int16"):
        melspectrogram((x * 32767).astype(np.int16))
    with pytest.raises(ValueError, match=r"mono.*shape \(1000, 2\)"):
        melspectrogram(np.stack([x, x], axis=1))
    with pytest.raises(TypeError, match="float audio"):
        StreamingMel().push(np.zeros(160, np.int16))
    with pytest.raises(ValueError, match="mono"):
        StreamingMel().push(np.zeros((160, 2), np.float32))
    # A one-channel (n, 1) array, as sounddevice delivers mono, and float64 are taken as they are.
    np.testing.assert_array_equal(melspectrogram(x[:, None]), melspectrogram(x))
    np.testing.assert_array_equal(melspectrogram(x.astype(np.float64)), melspectrogram(x))
    assert StreamingMel().push(x[:, None]).shape == (80, 4)


def test_no_librosa_or_scipy_at_run_time():
    code = (
        "import sys, numpy as np\n"
        "from avatar_cam.audio.mel import melspectrogram, StreamingMel\n"
        "melspectrogram(np.zeros(16000, np.float32)); StreamingMel().push(np.zeros(1600, np.float32))\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('librosa', 'scipy', 'torch')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
