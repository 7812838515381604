"""Wav2Lip's mel spectrogram in plain numpy: offline (`melspectrogram`) and streaming (`StreamingMel`).

Equal to Wav2Lip's audio.py to float precision (pre-emphasis, librosa's centred STFT with reflect padding,
Slaney mel filterbank, its dB scaling), without librosa or scipy at run time. Column j is centred on sample
j*HOP and covers the pre-emphasised samples [j*HOP - N_FFT/2, j*HOP + N_FFT/2), reflect-padded at both ends.

Input audio: float, 16 kHz, mono, 1-D (a (n, 1) array, as sounddevice delivers mono, is accepted too).
Integer PCM and multi-channel audio are rejected with a message saying how to convert them: guessing the
scale of integer samples or how to mix channels would silently change the features the model sees.
"""

from __future__ import annotations

import functools

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from avatar_cam.audio.ring import SAMPLE_RATE

HOP = 200
N_FFT = 800
N_MELS = 80
MEL_FPS = SAMPLE_RATE // HOP  # 80 columns per second
SILENT_MEL = -4.0  # the normalised value of digital silence
MEL_WINDOW = 16  # columns Wav2Lip sees per video frame (200 ms)

_PAD = N_FFT // 2
_PREEMPHASIS = 0.97
FMIN, FMAX = 55.0, 7600.0
_MIN_AMP = np.exp(-100 / 20 * np.log(10))  # -100 dB, written as audio.py computes it (not exactly 1e-5)
_CHUNK_FRAMES = 2048  # bounds the temporary arrays (~20 MB) however long the input

# Periodic Hann (scipy's get_window fftbins=True, librosa's default), not the symmetric one np.hanning gives.
_WINDOW = 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(N_FFT) / N_FFT)


def hz_to_mel(hz: np.ndarray) -> np.ndarray:
    # Slaney scale (librosa htk=False): linear below 1 kHz, logarithmic above.
    hz = np.asarray(hz, np.float64)
    log_part = 15.0 + np.log(np.maximum(hz, 1000.0) / 1000.0) / (np.log(6.4) / 27.0)
    return np.where(hz >= 1000.0, log_part, hz / (200.0 / 3.0))


def mel_to_hz(mel: np.ndarray) -> np.ndarray:
    mel = np.asarray(mel, np.float64)
    log_part = 1000.0 * np.exp(np.log(6.4) / 27.0 * (np.maximum(mel, 15.0) - 15.0))
    return np.where(mel >= 15.0, log_part, mel * (200.0 / 3.0))


@functools.lru_cache(maxsize=1)
def _mel_basis() -> np.ndarray:
    """(N_MELS, N_FFT//2 + 1) float64, equal to librosa.filters.mel(sr=16000, n_fft=800, n_mels=80, fmin=55, fmax=7600)."""
    fft_hz = np.fft.rfftfreq(N_FFT, 1.0 / SAMPLE_RATE)
    edges = mel_to_hz(np.linspace(hz_to_mel(FMIN), hz_to_mel(FMAX), N_MELS + 2))
    lo, mid, hi = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    basis = np.maximum(0.0, np.minimum((fft_hz - lo) / (mid - lo), (hi - fft_hz) / (hi - mid)))
    basis *= 2.0 / (hi - lo)  # Slaney norm: unit area per triangle, so wide high bands are not louder
    basis.setflags(write=False)  # cached and shared: nobody may change it
    return basis


def _frames_to_columns(frames: np.ndarray) -> np.ndarray:
    """(n, N_FFT) pre-emphasised float64 frames -> (N_MELS, n) float32. The one place both paths do arithmetic."""
    parts = []
    for i in range(0, len(frames), _CHUNK_FRAMES):
        magnitude = np.abs(np.fft.rfft(frames[i : i + _CHUNK_FRAMES] * _WINDOW, axis=1))
        db = 20.0 * np.log10(np.maximum(_MIN_AMP, _mel_basis() @ magnitude.T)) - 20.0
        parts.append(np.clip(8.0 * (db + 100.0) / 100.0 - 4.0, -4.0, 4.0).astype(np.float32))
    return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=1)


def _as_mono_float64(audio: np.ndarray, name: str) -> np.ndarray:
    a = np.asarray(audio)
    if a.ndim == 2 and a.shape[1] == 1:
        a = a[:, 0]
    if a.ndim != 1:
        raise ValueError(f"{name} must be mono audio, a 1-D array; got shape {a.shape}. Mix it down first, e.g. x.mean(axis=1)")
    if not np.issubdtype(a.dtype, np.floating):
        raise TypeError(f"{name} must be float audio in [-1, 1], got {a.dtype}; for int16 PCM use x.astype(np.float32) / 32768")
    return a.astype(np.float64, copy=False)


def _preemphasise(x: np.ndarray, previous: float) -> np.ndarray:
    # Same rounding as scipy.signal.lfilter([1, -0.97], [1], x), which is what audio.py calls.
    y = x.copy()
    y[1:] -= _PREEMPHASIS * x[:-1]
    if len(y):
        y[0] -= _PREEMPHASIS * previous
    return y


def melspectrogram(wav: np.ndarray) -> np.ndarray:
    """Float 16 kHz mono audio -> (N_MELS, 1 + len(wav) // HOP) float32 in [-4, 4], as Wav2Lip's audio.py."""
    x = _as_mono_float64(wav, "wav")
    if len(x) <= _PAD:
        raise ValueError(
            f"audio too short for the mel spectrogram: {len(x)} samples, need more than {_PAD} "
            f"({_PAD * 1000 // SAMPLE_RATE} ms at {SAMPLE_RATE} Hz) for the reflect padding Wav2Lip was trained with"
        )
    padded = np.pad(_preemphasise(x, 0.0), _PAD, mode="reflect")
    return _frames_to_columns(sliding_window_view(padded, N_FFT)[::HOP])


class StreamingMel:
    """`melspectrogram` for audio arriving in blocks of any size, emitting each column as soon as it is complete.

    Column j is emitted once sample j*HOP + N_FFT/2 - 1 has arrived (column 0 needs sample N_FFT/2 too, for the
    same reflect padding as the offline function), so after n >= 401 samples exactly 1 + (n - 400) // 200
    columns have been emitted: every column of `melspectrogram(all audio)` but the last two, which depend on
    the end padding that a stream never sees. Work and memory per push are bounded by the block size plus a
    tail of fewer than N_FFT pre-emphasised samples.

    Threading: not thread-safe. A single owner thread calls push, reset and columns_emitted: in LivePipeline
    the frame thread, which reads the audio ring; never the audio device's callback.
    """

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Forget all audio: the next push starts a new stream, with column 0 at its first sample."""
        self._tail = np.empty(0, np.float64)  # pre-emphasised samples not yet behind a whole frame
        self._previous = 0.0  # last raw sample: the pre-emphasis state carried across blocks
        self._started = False  # has the left reflect padding been put in front of the tail yet?
        self._emitted = 0

    @property
    def columns_emitted(self) -> int:
        """Columns returned so far; the next column returned is centred on sample columns_emitted * HOP."""
        return self._emitted

    def push(self, block: np.ndarray) -> np.ndarray:
        """Append a block of float 16 kHz mono audio; return the (N_MELS, k) float32 columns it completed (k >= 0)."""
        x = _as_mono_float64(block, "block")
        if len(x) == 0:
            return np.empty((N_MELS, 0), np.float32)
        y = _preemphasise(x, self._previous)
        self._previous = float(x[-1])
        buf = np.concatenate((self._tail, y))
        if not self._started:
            if len(buf) <= _PAD:
                self._tail = buf
                return np.empty((N_MELS, 0), np.float32)
            buf = np.concatenate((buf[_PAD:0:-1], buf))  # the left edge np.pad(mode="reflect") makes
            self._started = True
        n = 0 if len(buf) < N_FFT else 1 + (len(buf) - N_FFT) // HOP
        self._tail = buf[n * HOP :].copy()  # a copy, so the tail does not keep a large block alive
        if n == 0:
            return np.empty((N_MELS, 0), np.float32)
        self._emitted += n
        return _frames_to_columns(sliding_window_view(buf, N_FFT)[::HOP][:n])
