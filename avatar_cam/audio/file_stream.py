"""An audio file read as it is needed, for offline rendering: memory does not grow with the file's length.

`StreamedAudio(path)` decodes the file block by block (libsndfile), downmixes, resamples to 16 kHz with one
soxr stream (the same samples as resampling the whole file at once) and computes the mel columns with
`StreamingMel`, plus the last two columns from the end of the file (what `melspectrogram` pads there). It
looks like the arrays a render loop reads: `len(audio)`, `audio[a:b]`, `audio.mel.shape`, `audio.mel[:, lo:hi]`,
read in increasing order; what lies behind the lowest position read is forgotten.

`check_audio_file(path)`: the clear message for a path that is not an audio file (missing, a folder, a FIFO).
"""

from __future__ import annotations

import stat
from pathlib import Path

import numpy as np
import soxr

from avatar_cam.audio.mel import HOP, N_FFT, N_MELS, StreamingMel, _frames_to_columns, _preemphasise
from avatar_cam.audio.ring import SAMPLE_RATE
from avatar_cam.errors import AudioError

BLOCK_S = 2.0  # decoded per read
MIN_SAMPLES = N_FFT  # 50 ms: the mel spectrogram needs more than N_FFT/2 samples, a frame needs 40 ms
_HINT = "use a WAV, FLAC, OGG or MP3 file"
_TAIL = N_FFT + 2 * HOP  # raw samples the last two mel columns are computed from


def check_audio_file(path: Path) -> None:
    """Raise AudioError unless `path` is an existing regular file (a FIFO would block, a folder is not audio)."""
    try:
        st = path.stat()
    except FileNotFoundError:
        raise AudioError(f"audio file not found: {path}", hint=f"check the path; {_HINT}") from None
    except OSError as exc:
        raise AudioError(f"cannot open {path}: {exc.strerror}", hint=_HINT) from None
    if stat.S_ISDIR(st.st_mode):
        raise AudioError(f"{path} is a folder, not an audio file", hint=f"give the path of the file inside it; {_HINT}")
    if not stat.S_ISREG(st.st_mode):
        raise AudioError(f"{path} is not a regular file (a pipe or a device), so it cannot be read as an audio file",
                         hint=f"save the audio to a file first; {_HINT}")
    if st.st_size == 0:
        raise AudioError(f"{path} is empty (0 bytes)", hint=f"the copy may have failed; {_HINT}")


def unreadable(path: Path, exc: Exception) -> AudioError:
    detail = str(exc).split(":", 1)[-1].strip() if str(exc) else type(exc).__name__
    return AudioError(
        f"{path} is damaged or not in an audio format that can be read ({detail[:120]})",
        hint=f"{_HINT}, or convert it: ffmpeg -i '{path}' -ac 1 -ar 16000 '{path.stem}.wav'",
    )


def too_short(path: Path, n: int) -> AudioError:
    return AudioError(f"{path} holds only {n * 1000 // SAMPLE_RATE} ms of audio ({n} samples at 16 kHz); "
                      f"at least {MIN_SAMPLES * 1000 // SAMPLE_RATE} ms is needed",
                      hint="give a recording with some speech in it")


class FileDecoder:
    """16 kHz mono blocks of a file (BLOCK_S of it at a time), in order, from the start: `next()` until `done`."""

    def __init__(self, path: Path):
        import soundfile

        self.path = path
        try:
            self._file = soundfile.SoundFile(str(path))
        except (soundfile.SoundFileError, RuntimeError, TypeError) as exc:
            raise unreadable(path, exc) from None
        self.rate = self._file.samplerate
        self.duration_s = self._file.frames / self.rate if self.rate else 0.0  # as the file's header says
        self._resampler = soxr.ResampleStream(self.rate, SAMPLE_RATE, 1, dtype="float32", quality="HQ") \
            if self.rate != SAMPLE_RATE else None
        self.done = False

    def next(self) -> np.ndarray:
        import soundfile

        try:
            data = self._file.read(max(1, int(self.rate * BLOCK_S)), dtype="float32", always_2d=True)
        except (soundfile.SoundFileError, RuntimeError) as exc:
            raise unreadable(self.path, exc) from None
        last = len(data) == 0
        mono = data.mean(axis=1, dtype=np.float32) if data.shape[1] > 1 else data[:, 0]
        if self._resampler is not None:
            mono = self._resampler.resample_chunk(np.ascontiguousarray(mono), last=last)
        if last:
            self.close()
        return np.ascontiguousarray(mono, dtype=np.float32)

    def close(self) -> None:
        self.done = True
        self._file.close()


class _MelView:
    def __init__(self, audio: StreamedAudio):
        self._audio = audio
        self.shape = (N_MELS, 1 + len(audio) // HOP)

    def __getitem__(self, index) -> np.ndarray:
        _rows, cols = index
        return self._audio.columns(cols.start, cols.stop)


class StreamedAudio:
    """A file's 16 kHz mono samples and mel columns, decoded as they are read (in increasing order)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        check_audio_file(self.path)
        n, decoder = 0, FileDecoder(self.path)  # one pass to count: frame count and mel length must be known first
        while not decoder.done:
            n += len(decoder.next())
        if n < MIN_SAMPLES:
            raise too_short(self.path, n)
        self._n = n
        self.mel = _MelView(self)
        self._decoder = FileDecoder(self.path)
        self._samples = np.empty(0, np.float32)  # decoded samples [self._s0, self._s0 + len)
        self._s0 = 0
        self._mel_stream = StreamingMel()
        self._cols = np.empty((N_MELS, 0), np.float32)  # mel columns [self._c0, self._c0 + width)
        self._c0 = 0
        self._tail_done = False
        self._read_from = 0  # audio before this was read for the last time
        self.peak_buffered = 0  # samples held at most (for tests: bounded, whatever the length)

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, index: slice) -> np.ndarray:
        a, b = max(0, index.start or 0), min(self._n, self._n if index.stop is None else index.stop)
        if b <= a:
            return np.empty(0, np.float32)
        self._decode_until(lambda: self._s0 + len(self._samples) >= b)
        self._read_from = max(self._read_from, a)
        self._forget()
        return self._samples[a - self._s0 : b - self._s0].copy()

    def columns(self, lo: int, hi: int) -> np.ndarray:
        self._decode_until(lambda: self._c0 + self._cols.shape[1] >= hi)
        if self._c0 + self._cols.shape[1] < hi:
            self._finish_mel()
        keep = lo - self._c0
        if keep > 0:
            self._cols, self._c0 = self._cols[:, keep:].copy(), lo
        return self._cols[:, lo - self._c0 : hi - self._c0]

    # --- decoding ---------------------------------------------------------------------------------------

    def _decode_until(self, enough) -> None:
        while not enough() and not self._decoder.done:
            block = self._decoder.next()
            if len(block) == 0:
                continue
            self._samples = np.concatenate((self._samples, block))
            self._cols = np.concatenate((self._cols, self._mel_stream.push(block)), axis=1)
            self.peak_buffered = max(self.peak_buffered, len(self._samples))
            self._forget()

    def _forget(self) -> None:
        """Drop samples behind the lowest position still to be read, but never the file's last _TAIL samples
        (the end columns are computed from them)."""
        before = min(self._read_from, self._n - _TAIL)
        drop = before - self._s0
        if drop > 0:
            self._samples, self._s0 = self._samples[drop:].copy(), before

    def _finish_mel(self) -> None:
        """The last two columns: their frames reach past the end, which melspectrogram reflect-pads."""
        if self._tail_done:
            return
        self._tail_done = True
        have = self._c0 + self._cols.shape[1]
        total = self.mel.shape[1]
        first_sample = have * HOP - N_FFT // 2 - 1  # one more, for the pre-emphasis of the first
        if first_sample < self._s0:
            raise AudioError("internal error: the end of the audio was forgotten before its mel columns")
        raw = self._samples[first_sample - self._s0 :].astype(np.float64)
        y = _preemphasise(raw[1:], float(raw[0]))
        padded = np.pad(y, (0, N_FFT // 2), mode="reflect")
        frames = np.stack([padded[j * HOP - have * HOP : j * HOP - have * HOP + N_FFT] for j in range(have, total)])
        self._cols = np.concatenate((self._cols, _frames_to_columns(frames)), axis=1)
