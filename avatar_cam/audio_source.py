"""Where the product's audio comes from: a microphone or a file, as 16 kHz mono float32 in an `AudioRing`.

The ring's sample count (`AudioRing.total`) is the master clock of the whole pipeline: sample k is audio time
k / 16000 s. Each written block also carries its arrival time on the `time.monotonic()` clock: when the sound
was captured (the ADC time for a microphone, the paced wall-clock time for a realtime file), so later stages
can measure latency instead of guessing it.

Threads: a source has exactly one producer thread that writes to the ring (PortAudio's callback thread for
`MicrophoneSource`, a "file-source" thread for `FileSource`); the pipeline reads from one consumer thread.
"""

from __future__ import annotations

import contextlib
import threading
import time
from bisect import bisect_right
from pathlib import Path

import numpy as np
import soxr

from avatar_cam.errors import AvatarCamError

SAMPLE_RATE = 16000


class AudioError(AvatarCamError):
    """A microphone or audio file cannot be used."""


class AudioRing:
    """16 kHz mono float32 ring buffer with a sample clock and per-block arrival times.

    Threading: one producer thread calls `write` (the audio callback or the file thread); one consumer thread
    calls `read`, `wait_for` and `arrival_time`. Every method takes the same short lock (a copy of at most
    one block or one read window), so the producer never waits long; `wait_for` sleeps on a Condition.
    `reset` is for when the producer is stopped.
    """

    def __init__(self, seconds: float = 10.0):
        self.capacity = max(1, round(seconds * SAMPLE_RATE))
        self._buf = np.zeros(self.capacity, np.float32)  # sample k lives at k % capacity
        self._total = 0
        self._ends: list[int] = []  # per written block: index one past its last sample...
        self._times: list[float] = []  # ...the monotonic time that last sample arrived (was captured)...
        self._written: list[float] = []  # ...and when write() made it readable
        self._cond = threading.Condition()

    def write(self, block: np.ndarray, arrival: float | None = None) -> None:
        """Append `block`; `arrival` = time.monotonic() when its LAST sample reached us (default: now)."""
        now = time.monotonic()
        arrival = now if arrival is None else float(arrival)
        block = np.asarray(block, dtype=np.float32).reshape(-1)
        n = len(block)
        if n == 0:
            return
        with self._cond:
            tail = block[-self.capacity :]
            at = (self._total + n - len(tail)) % self.capacity
            first = min(len(tail), self.capacity - at)
            self._buf[at : at + first] = tail[:first]
            self._buf[: len(tail) - first] = tail[first:]
            self._total += n
            self._ends.append(self._total)
            self._times.append(arrival)
            self._written.append(now)
            stale = bisect_right(self._ends, self._total - self.capacity)  # anchors of blocks no longer kept
            if stale > 256:
                del self._ends[:stale], self._times[:stale], self._written[:stale]
            self._cond.notify_all()

    @property
    def total(self) -> int:
        """Samples written since start (or reset): the sample clock."""
        return self._total

    def read(self, start: int, n: int) -> np.ndarray:
        """Samples [start, start+n); zeros where they are older than the kept history or not written yet."""
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        out = np.zeros(n, np.float32)
        with self._cond:
            lo, hi = max(start, self._total - self.capacity, 0), min(start + n, self._total)
            if hi > lo:
                at, count = lo % self.capacity, hi - lo
                first = min(count, self.capacity - at)
                out[lo - start : lo - start + first] = self._buf[at : at + first]
                out[lo - start + first : hi - start] = self._buf[: count - first]
        return out

    def wait_for(self, sample: int, timeout: float) -> bool:
        """Block until total >= sample; False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: self._total >= sample, timeout)

    def arrival_time(self, sample: int) -> float | None:
        """time.monotonic() at which `sample` reached us, or None if it is not in the kept history."""
        with self._cond:
            if not max(0, self._total - self.capacity) <= sample < self._total:
                return None
            i = bisect_right(self._ends, sample)  # the block containing `sample`
            return self._times[i] - (self._ends[i] - 1 - sample) / SAMPLE_RATE

    def written_time(self, sample: int) -> float | None:
        """time.monotonic() at which `sample` became readable (>= its arrival: a resampler holds audio back)."""
        with self._cond:
            if not max(0, self._total - self.capacity) <= sample < self._total:
                return None
            return self._written[bisect_right(self._ends, sample)]

    def reset(self) -> None:
        with self._cond:
            self._buf[:], self._total, self._ends, self._times, self._written = 0, 0, [], [], []
            self._cond.notify_all()


def load_audio(path) -> np.ndarray:
    """Read wav/flac/ogg/mp3 (anything libsndfile reads) as float32 mono at 16 kHz."""
    import soundfile

    path = Path(path)
    if not path.is_file():
        raise AudioError(f"Audio file not found: {path}", hint="Check the path; WAV, FLAC, OGG and MP3 files are supported.")
    try:
        data, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    except (soundfile.SoundFileError, RuntimeError) as e:
        raise AudioError(
            f"Cannot read audio file {path}: {e}",
            hint=f"Use WAV, FLAC, OGG or MP3, or convert it: ffmpeg -i '{path}' -ac 1 -ar 16000 '{path.stem}.wav'",
        ) from None
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
    """

    def __init__(self, path_or_array, ring: AudioRing, realtime: bool = True, block: int = 160, loop: bool = False):
        is_array = isinstance(path_or_array, np.ndarray)  # an array is taken as 16 kHz mono already
        self.samples = np.asarray(path_or_array, np.float32).reshape(-1) if is_array else load_audio(path_or_array)
        self.ring, self.realtime, self.block, self.loop = ring, realtime, max(1, int(block)), loop
        self.duration_s = len(self.samples) / SAMPLE_RATE
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

    def _run(self) -> None:
        try:
            n, pos, t0 = len(self.samples), 0, time.monotonic()
            while n and not self._stop.is_set() and (self.loop or pos < n):
                offset = pos % n
                chunk = self.samples[offset : offset + self.block]
                pos += len(chunk)
                if not self.realtime:
                    self.ring.write(chunk)
                    continue
                due = t0 + pos / SAMPLE_RATE
                if self._stop.wait(max(0.0, due - time.monotonic())):
                    break
                self.ring.write(chunk, arrival=due)
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
        with PORTAUDIO_LOCK:  # the device's index stays valid until its stream is open
            self._open()

    def _open(self) -> None:
        if self._stream is not None:
            return
        sd = _sounddevice()
        index = find_input_device(self.device)
        try:
            info = sd.query_devices(index, kind="input")
        except (sd.PortAudioError, ValueError) as e:
            raise AudioError(f"No default microphone: {e}", hint=_devices_hint(list_input_devices())) from None
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
                hint="Close other programs using it, or pick another device. " + _devices_hint(list_input_devices()),
            ) from None
        self._stream, self.status = stream, "running"

    def stop(self) -> None:
        """Release the device; idempotent. The audio still inside the resampler is flushed to the ring."""
        stream, self._stream = self._stream, None
        if stream is None:
            return
        self._stopping = True
        with contextlib.suppress(_sounddevice().PortAudioError):  # the device may be gone; closing is what matters
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


def _sounddevice():
    try:
        import sounddevice
    except OSError as e:
        raise AudioError(f"The PortAudio library is missing: {e}",
                         hint="Linux: sudo apt install libportaudio2 ; macOS: brew install portaudio") from None
    return sounddevice


def list_input_devices() -> list[dict]:
    """Input devices as PortAudio sees them (it scans when it starts, and again on `rescan_devices`)."""
    sd = _sounddevice()
    try:
        default = sd.query_devices(kind="input")["index"]
    except (sd.PortAudioError, ValueError):
        default = None
    return [
        {"index": d["index"], "name": d["name"], "default_samplerate": d["default_samplerate"],
         "channels": d["max_input_channels"], "is_default": d["index"] == default}
        for d in sd.query_devices() if d["max_input_channels"] > 0
    ]


def find_input_device(spec: str | int | None) -> int | None:
    """Device index from an index, an exact name or a case-insensitive substring; None means the default."""
    if spec is None:
        return None
    devices = list_input_devices()
    if isinstance(spec, int) or str(spec).strip().isdigit():
        found = [d for d in devices if d["index"] == int(spec)]
    else:
        wanted = str(spec).lower()
        found = ([d for d in devices if d["name"] == spec] or [d for d in devices if d["name"].lower() == wanted]
                 or [d for d in devices if wanted in d["name"].lower()])
    if not found:
        raise AudioError(f"No microphone (input device) matches {spec!r}.", hint=_devices_hint(devices))
    return found[0]["index"]


# Held while a stream opens and while PortAudio rescans: a rescan ends every stream, so none may open meanwhile.
PORTAUDIO_LOCK = threading.RLock()

_FRESH_INPUT_NAMES = ("import json, sounddevice as sd; "
                      "print(json.dumps([d['name'] for d in sd.query_devices() if d['max_input_channels'] > 0]))")


def fresh_input_device_names(timeout: float = 20.0) -> list[str] | None:
    """Input device names as a new process sees them now; None if asking failed.

    This process's PortAudio keeps the list it made when it started; asking a fresh one (a Python start,
    ~0.3 s) leaves the streams open here alone."""
    from .fresh_process import ask

    names = ask(_FRESH_INPUT_NAMES, timeout)
    return None if names is None else [str(n) for n in names]


def names_input_device(spec: str | int, names: list[str]) -> bool:
    """Whether `find_input_device(spec)` would pick one of `names` (by name: indexes differ between processes)."""
    if isinstance(spec, int) or str(spec).strip().isdigit():
        return False
    wanted = str(spec).lower()
    return any(wanted in n.lower() for n in names)


def rescan_devices() -> None:
    """Make PortAudio list the devices there are now (a microphone plugged in after it started).

    PortAudio enumerates devices only when it initialises, and re-initialising it ends every stream this
    process has open: the caller closes them first and reopens what it needs afterwards."""
    sd = _sounddevice()
    with PORTAUDIO_LOCK:
        sd._terminate()
        sd._initialize()


def _devices_hint(devices: list[dict]) -> str:
    if not devices:
        return ("No input devices found: plug in a microphone, or start PulseAudio/PipeWire "
                "(on Linux PortAudio reaches it through ALSA's 'pulse' device: apt install libasound2-plugins).")
    names = ", ".join(f"{d['index']}: {d['name']!r}{' (default)' if d['is_default'] else ''}" for d in devices)
    return f"Available input devices: {names}. Choose one by index or name."
