"""Where the product's audio comes from: a microphone or a file, as 16 kHz mono float32 into an `AudioRing`.

Threads: a source has exactly one producer thread that writes to the ring (PortAudio's callback thread for
`MicrophoneSource`, a "file-source" thread for `FileSource`); the pipeline reads from one consumer thread.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from pathlib import Path

import numpy as np
import soxr

from avatar_cam.audio.devices import (
    PORTAUDIO_LOCK,
    devices_hint,
    favour_audio_threads,
    find_input_device,
    list_input_devices,
    sounddevice_module,
)
from avatar_cam.audio.file_stream import FileDecoder, check_audio_file, unreadable
from avatar_cam.audio.ring import SAMPLE_RATE, AudioRing
from avatar_cam.errors import AudioError
from avatar_cam.thread_priority import name_os_thread

log = logging.getLogger(__name__)


def load_audio(path) -> np.ndarray:
    """Read wav/flac/ogg/mp3 (anything libsndfile reads) as float32 mono at 16 kHz."""
    import soundfile

    path = Path(path)
    check_audio_file(path)
    try:
        data, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    except (soundfile.SoundFileError, RuntimeError, TypeError) as e:
        raise unreadable(path, e) from None
    mono = data.mean(axis=1, dtype=np.float32) if data.shape[1] > 1 else data[:, 0]
    if rate != SAMPLE_RATE and len(mono):
        mono = soxr.resample(mono, rate, SAMPLE_RATE, quality="HQ")
    return np.ascontiguousarray(mono, dtype=np.float32)


class FileSource:
    """Plays an audio file into a ring: `realtime=True` paces blocks by the wall clock (like a microphone), else as fast as possible.

    The "file-source" thread is the ring's producer. In realtime mode block k is written when its last sample
    is due (start + end_sample / 16000 on the monotonic clock) and that due time is its arrival time, so the
    arrival clock stays exact even when the thread wakes late. `finished` is set when the thread ends: the
    file played to its end, or `stop()` was called. `loop=True` plays forever, until `stop()`.
    A file is decoded as it plays, a few seconds at a time (an hour of sound never sits in memory); a file that
    cannot be opened fails here, one damaged further on stops playing there (`error` says why).
    """

    def __init__(self, path_or_array, ring: AudioRing, realtime: bool = True, block: int = 160, loop: bool = False):
        self._samples: np.ndarray | None = None  # an array is taken as 16 kHz mono already
        self._path: Path | None = None
        if isinstance(path_or_array, np.ndarray):
            self._samples = np.asarray(path_or_array, np.float32).reshape(-1)
            self.duration_s = len(self._samples) / SAMPLE_RATE
        else:
            self._path = Path(path_or_array)
            check_audio_file(self._path)
            decoder = FileDecoder(self._path)  # a file that cannot be opened fails now, not on the thread
            self.duration_s = decoder.duration_s
            decoder.close()
        self.ring, self.realtime, self.block, self.loop = ring, realtime, max(1, int(block)), loop
        self.error: AudioError | None = None  # why a file stopped playing before its end
        self.finished = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self.finished.clear()
        self._thread = threading.Thread(target=self._run, name="file-source", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def _pieces(self):
        """The sound from the start, in pieces: the array's blocks, or the file's as decoded."""
        if self._samples is not None:
            for offset in range(0, len(self._samples), self.block):
                yield self._samples[offset : offset + self.block]
            return
        decoder = FileDecoder(self._path)
        try:
            while not decoder.done and not self._stop.is_set():
                decoded = decoder.next()
                for offset in range(0, len(decoded), self.block):
                    yield decoded[offset : offset + self.block]
        finally:
            if not decoder.done:
                decoder.close()

    def _run(self) -> None:
        try:
            pos, t0 = 0, time.monotonic()
            while not self._stop.is_set():
                played = pos
                for chunk in self._pieces():
                    pos += len(chunk)
                    if not self.realtime:
                        self.ring.write(chunk)
                        continue
                    due = t0 + pos / SAMPLE_RATE
                    if self._stop.wait(max(0.0, due - time.monotonic())):
                        return
                    self.ring.write(chunk, arrival=due)
                if not self.loop or pos == played:  # played once, or there is nothing to loop
                    return
        except AudioError as exc:
            self.error = exc
            log.info("stopped playing %s early: %s", self._path, exc)
        finally:
            self.finished.set()


class MicrophoneSource:
    """sounddevice.InputStream at the device's native rate, downmixed and resampled to 16 kHz into a ring.

    Threads: `start`/`stop` run on the caller's thread; `_callback` runs on PortAudio's audio thread and is
    the ring's only producer while the stream runs. The callback never raises: it counts input overflows in
    `overflows` and records failures in `status` ("running" / "stopped" / "error: ...").
    Resampling is one soxr.ResampleStream per run, so blocks join without clicks. Its HQ filter holds back
    ~20 ms (up to ~40 ms) of audio; arrival times account for that: the arrival time of 16 kHz sample j is
    the capture time of input position j * native_rate / 16000, from the ADC time of the callback's block.
    """

    def __init__(self, ring: AudioRing, device: str | int | None = None, block_ms: float = 10.0):
        self.ring, self.device, self.block_ms = ring, device, block_ms
        self.device_name, self.native_rate, self.channels = "", 0, 0
        self.status, self.overflows = "stopped", 0
        self._stream, self._stopping = None, False

    def start(self) -> None:
        favour_audio_threads()  # the callback must not wait 5 ms for the GIL every 10 ms block
        with PORTAUDIO_LOCK:  # the device's index stays valid until its stream is open
            self._open()

    def _open(self) -> None:
        if self._stream is not None:
            return
        sd = sounddevice_module()
        index = find_input_device(self.device)
        try:
            info = sd.query_devices(index, kind="input")
        except (sd.PortAudioError, ValueError) as e:
            raise AudioError(f"No default microphone: {e}", hint=devices_hint(list_input_devices())) from None
        rate, self.device_name = round(info["default_samplerate"]), info["name"]
        self.channels = max(1, min(2, info["max_input_channels"]))  # ALSA plugins may claim 32 channels
        self._begin(rate)
        stream = None
        try:
            stream = sd.InputStream(
                device=info["index"], samplerate=rate, channels=self.channels, dtype="float32",
                blocksize=max(1, round(rate * self.block_ms / 1000)), latency="low",
                callback=self._callback, finished_callback=self._finished,
            )
            stream.start()
        except (sd.PortAudioError, ValueError) as e:
            if stream is not None:
                stream.close(ignore_errors=True)
            raise AudioError(
                f"Cannot open microphone {self.device_name!r} at {rate} Hz: {e}",
                hint="Close other programs using it, or pick another device. " + devices_hint(list_input_devices()),
            ) from None
        self._stream, self.status = stream, "running"

    def stop(self) -> None:
        """Release the device; idempotent. The audio still inside the resampler is flushed to the ring."""
        stream, self._stream = self._stream, None
        if stream is None:
            return
        self._stopping = True
        with contextlib.suppress(sounddevice_module().PortAudioError):  # the device may be gone; closing is what matters
            stream.stop()
        stream.close(ignore_errors=True)
        if not self.status.startswith("error"):  # the callback thread is gone: this thread is the producer now
            self._end()
        self.status = "stopped"

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def _begin(self, rate: int) -> None:
        self.native_rate = rate
        self._resampler = soxr.ResampleStream(rate, SAMPLE_RATE, 1, dtype="float32", quality="HQ")
        self._in_count = self._out_count = 0  # native samples in / 16 kHz samples out in this run
        self._anchor = (time.monotonic(), 0)  # (capture time, native index) of the latest block's first sample
        self._stopping, self.overflows = False, 0

    def _end(self) -> None:
        self._emit(self._resampler.resample_chunk(np.zeros(0, np.float32), last=True))

    def _callback(self, indata, frames, t, status) -> None:
        try:
            now = time.monotonic()
            name_os_thread("ac-mic-in")
            if status.input_overflow:
                self.overflows += 1
            # The block's last sample reached us by now, so its first one was captured at least a block ago.
            # The ADC time (on PortAudio's own clock) says how much earlier; ALSA's pulse plugin sometimes
            # reports no delay at all (seen at 48 kHz), so an implausible ADC time falls back to that bound.
            first = now - (frames - 1) / self.native_rate
            lag = t.currentTime - t.inputBufferAdcTime
            if t.inputBufferAdcTime > 0 and (frames - 1) / self.native_rate < lag < 1.0:
                first = now - lag
            self._anchor = (first, self._in_count)
            mono = indata[:, 0] if indata.shape[1] == 1 else indata.mean(axis=1, dtype=np.float32)
            self._in_count += frames
            self._emit(self._resampler.resample_chunk(np.ascontiguousarray(mono)))
        except Exception as e:  # noqa: BLE001  (never raise into PortAudio's thread)
            self.status = f"error: {type(e).__name__}: {e}"

    def _emit(self, out: np.ndarray) -> None:
        if len(out):
            first_time, first_index = self._anchor
            last_pos = (self._out_count + len(out) - 1) * self.native_rate / SAMPLE_RATE
            self.ring.write(out, arrival=first_time + (last_pos - first_index) / self.native_rate)
            self._out_count += len(out)

    def _finished(self) -> None:
        if not self._stopping:
            self.status = "error: the audio stream stopped by itself (device unplugged or sound server gone?)"
