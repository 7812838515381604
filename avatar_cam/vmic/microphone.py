"""'Avatar Cam Microphone': the microphone's sound, delayed to meet the lips, as a microphone call apps can pick.

Linux (PulseAudio or PipeWire's pulse server): the devices are pulse.py's `PulseDevices`. They are removed:
- by `close()`: a `with` block, a `finally`, or `bind_to(frame_thread)` when the frame thread ends or crashes;
- by `atexit` on any interpreter exit, and on SIGTERM when nobody else handles it (we turn it into SystemExit);
- by the janitor process (pulse.py) if this process dies without running Python code.

Routing: PortAudio reaches PulseAudio through ALSA's `pulse` device, which connects to the sink named in
PULSE_SINK at the moment the stream opens. We set it (and PIPEWIRE_NODE, for pipewire-alsa) just around the
open, then check with `pactl list sink-inputs` that our stream (tagged through PULSE_PROP) landed on our
sink, and move it there if it did not: our delayed voice must never play on the user's speakers.

Windows / macOS: no devices are created; we play into a virtual cable (cables.py).

The sound server going away (crash, `pulseaudio -k`, a restart) takes our modules with it and silences the
output stream: `check()`, called by the daemon's watchdog, notices that no output callback came for `LOST_S`,
says so in the status at once ("error: the sound server went away: reconnecting"), and every `RETRY_S` tries
to create the devices again on the server that is there now and to reopen the stream.

Threads: `start`, `close`, `set_offset_ms` and `status` run on the caller's thread (`close` may run on any
thread, at exit, or twice); `check` on the watchdog's. `observe_frame` runs on the pipeline's frame thread. `_callback` runs on
PortAudio's output thread and alone owns the `DelayedPlayout` (it reads the input ring, which is built for that).
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import platform
import signal
import threading
import time

from avatar_cam.audio.devices import PORTAUDIO_LOCK, favour_audio_threads, sounddevice_module
from avatar_cam.audio.ring import SAMPLE_RATE, AudioRing
from avatar_cam.errors import VirtualMicError
from avatar_cam.thread_priority import name_os_thread
from avatar_cam.vmic.cables import find_virtual_cable
from avatar_cam.vmic.delay import MeasuredDelay
from avatar_cam.vmic.playout import DelayedPlayout
from avatar_cam.vmic.pulse import (
    DESCRIPTION,
    PulseDevices,
    our_modules,
    pulse_env,
    pulse_output_index,
    server_defaults,
)

log = logging.getLogger(__name__)


class VirtualMicrophone:
    LOST_S = 1.0  # no output callback for this long: the sound server is gone
    OPEN_GRACE_S = 3.0  # a stream opened on a server that just came back may take this long to start
    RETRY_S = 1.0  # between attempts to come back (a stream that fails to reopen: doubling up to RETRY_MAX_S)
    RETRY_MAX_S = 8.0
    STALL_S = 5.0  # no callback for this long while the server still holds our devices: reopen the stream
    LOOK_CAP_S = 0.5  # the most one look of the watchdog adds to the silence (see `_silence`)
    GONE = "the sound server went away: reconnecting"

    """Plays `ring` (the microphone at 16 kHz), delayed by the frames' measured latency + `offset_ms`, into
    "Avatar Cam Microphone". Use as a context manager, or `start()` ... `close()`.

    `initial_delay_s` is used until frames have been measured (feed them with `observe_frame`, e.g. as
    `LivePipeline.on_frame`). `device` overrides the output (name fragment or index) on any platform; on
    Linux it skips creating devices.
    """

    def __init__(self, ring: AudioRing, offset_ms: float = 0.0, initial_delay_s: float = 0.2,
                 device: str | int | None = None, block_ms: float = 10.0, buffer_s: float = 0.1):
        self.ring = ring
        self.delay = MeasuredDelay(offset_ms, initial_delay_s)
        self.device = device
        self.block_ms = block_ms
        # The voice waits ~0.2 s for the lips anyway, so a deep output buffer costs nothing and rides out the
        # moments when inference starves the audio thread (a 2-core machine underran with 20 ms).
        self.buffer_s = buffer_s
        # Blocks the sound server played a gap before (the output thread was late: a starved CPU): the voice broke
        # up. (Growing the buffer when they repeat did not help where they happen, a CPU too slow for the whole
        # job, and never triggered on a busy host: BENCHMARKS.md, session 8.)
        self.breakups = 0
        self.devices: PulseDevices | None = None
        self.call_app_device = ""  # what the user picks as the microphone in the call app
        self.status_text = "stopped"
        self.playout: DelayedPlayout | None = None
        self._stream = None
        self._lock = threading.RLock()
        self._old_sigterm = None
        self._closed = False
        self._fallback_lead = 0.03  # the stream's reported latency, once it is open
        self._last_callback = 0.0  # monotonic time of the newest output callback (or of the open, at first)
        self._retry_at = 0.0
        self._retry_s = self.RETRY_S
        # No callback for how long, counting only time this process ran (see `_silence`): the watchdog's view.
        self._silent_s = 0.0
        self._looked_at = 0.0
        self._last_frame: float | None = None  # when the frame thread last drew (observe_frame)

    @classmethod
    def for_clock(cls, ring: AudioRing, clock, offset_ms: float = 0.0) -> VirtualMicrophone:
        """One for a pipeline on `clock` (a FrameClock): until frames are measured, the voice waits for the
        lookahead plus ~40 ms (inference, compositing, frame phase)."""
        return cls(ring, offset_ms, initial_delay_s=clock.lookahead_s + 0.04)

    # --- lifecycle, on the caller's thread -------------------------------------------------------------
    def start(self, devices: PulseDevices | None = None) -> VirtualMicrophone:
        """Create "Avatar Cam Microphone" (or play into `devices`, kept by an earlier one's `close`) and start
        playing into it."""
        with self._lock:
            if self._stream is not None:
                return self
            if devices is not None:
                self.devices = devices
            self._closed = False
            atexit.register(self.close)
            self._exit_on_sigterm()
            try:
                with PORTAUDIO_LOCK:  # the output's index stays valid until its stream is open
                    index, rate, channels = self._prepare_output()
                    self.playout = DelayedPlayout(self.ring, rate, lambda: self.delay.seconds)
                    self._open(index, rate, channels)
            except BaseException:
                self.close()
                raise
            self.status_text = "running"
            log.info("%s live: pick %r as the microphone in the call app; voice delayed %.0f ms to meet the lips",
                     DESCRIPTION, self.call_app_device, 1000 * self.delay.seconds)
        return self

    def _prepare_output(self) -> tuple[int, int, int]:
        """(PortAudio index, rate, channels) of what we play into; on Linux, creates the devices first."""
        sd = sounddevice_module()
        system = platform.system()
        if self.device is not None:
            matches = [d for d in sd.query_devices() if d["max_output_channels"] > 0
                       and (str(d["index"]) == str(self.device) or str(self.device).lower() in d["name"].lower())]
            if not matches:
                raise VirtualMicError(f"no output device matches {self.device!r}")
            info, self.call_app_device = matches[0], f"the microphone side of {matches[0]['name']!r}"
        elif system == "Linux":
            if self.devices is None:
                self.devices = PulseDevices()
                self.devices.create()
            self.call_app_device = DESCRIPTION
            # At the voice's own 16 kHz: the sound server (in C) converts it for the sink, and our callback handles a
            # third of the samples (the playout's 10 ms block: 216 -> 94 us of a core on the dev machine).
            return pulse_output_index(), SAMPLE_RATE, 1
        else:
            index, _name, self.call_app_device = find_virtual_cable(system)
            info = sd.query_devices(index)
        return info["index"], round(info["default_samplerate"]), max(1, min(2, info["max_output_channels"]))

    def _open(self, index: int, rate: int, channels: int) -> None:
        favour_audio_threads()  # the output callback, every 10 ms block, must not wait 5 ms for the GIL
        sd = sounddevice_module()
        tag = f"virtual-mic-{os.getpid()}"
        env = {}
        if self.devices is not None:
            env = {"PULSE_SINK": self.devices.sink, "PIPEWIRE_NODE": self.devices.sink,
                   "PULSE_PROP": f'avatar_cam.stream={tag} application.name="Avatar Cam" media.role=phone'}
        with pulse_env(env):
            try:
                self._stream = sd.OutputStream(device=index, samplerate=rate, channels=channels, dtype="float32",
                                               blocksize=max(1, round(rate * self.block_ms / 1000)), latency=self.buffer_s,
                                               callback=self._callback)
                self._stream.start()
            except (sd.PortAudioError, ValueError) as e:
                raise VirtualMicError(f"cannot play into {self.call_app_device!r}: {e}") from None
        self._fallback_lead = float(self._stream.latency)
        self._last_callback = time.monotonic() + self.OPEN_GRACE_S - self.LOST_S
        if self.devices is not None:
            self.devices.route(tag)

    def reopen_stream(self, meanwhile) -> None:
        """Close the output stream, run `meanwhile()` (a PortAudio rescan, which would end the stream anyway),
        then open it again on the same devices. The voice pauses for that long; the playout re-aligns after."""
        with self._lock:
            if self._stream is None:
                meanwhile()
                return
            self._close_stream()
            try:
                meanwhile()
            finally:
                try:
                    with PORTAUDIO_LOCK:
                        self._open(*self._prepare_output())
                except VirtualMicError as exc:
                    self.status_text = f"error: {exc}"
                    raise

    def _close_stream(self) -> None:
        stream, self._stream = self._stream, None
        if stream is not None:
            with contextlib.suppress(Exception):
                stream.stop()
            stream.close(ignore_errors=True)

    def close(self, keep_devices: bool = False) -> PulseDevices | None:
        """Stop playing, then remove the devices (in that order: a stream left on a removed sink would be moved
        to the user's speakers). Idempotent; safe from any thread and at exit.

        `keep_devices`: leave "Avatar Cam Microphone" in place and return it (None if there is none), for the
        next VirtualMicrophone to play into (`start(devices=...)`): a call app listening to it hears a moment of
        silence instead of losing its microphone. Whoever takes it must remove it."""
        with self._lock:
            if self._closed:
                return None
            self._closed = True
            self._close_stream()
            kept, self.devices = (self.devices, None) if keep_devices else (None, self.devices)
            if self.devices is not None:
                self.devices.remove()
            if self._old_sigterm is not None and threading.current_thread() is threading.main_thread():
                with contextlib.suppress(ValueError):
                    signal.signal(signal.SIGTERM, self._old_sigterm)
                self._old_sigterm = None
            atexit.unregister(self.close)
            if not self.status_text.startswith("error"):
                self.status_text = "stopped"
        return kept

    def __enter__(self) -> VirtualMicrophone:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    def bind_to(self, thread: threading.Thread) -> None:
        """Close when `thread` ends, however it ends (the frame thread stopping or crashing)."""

        def watch() -> None:
            while thread.ident is None and not self._closed:  # bound before it was started
                time.sleep(0.05)
            thread.join()
            if not self._closed:
                log.info("the frame thread ended: removing %s", DESCRIPTION)
                self.close()

        threading.Thread(target=watch, name="virtual-mic-watch", daemon=True).start()

    def _exit_on_sigterm(self) -> None:
        """A default SIGTERM kills Python without running `finally` or atexit: make it a SystemExit instead."""
        if threading.current_thread() is not threading.main_thread():
            return
        if signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None):
            def exit_now(signum, _frame):
                raise SystemExit(128 + signum)

            self._old_sigterm = signal.signal(signal.SIGTERM, exit_now)

    def check(self) -> None:
        """The watchdog's look (every ~0.25 s): notice the sound server going away, and come back with it."""
        with self._lock:
            if self._closed or self.devices is None and self._stream is not None:
                return  # closed, or playing into a cable / a device we did not create
            now = time.monotonic()
            silent = self._silence(now)
            if self._stream is not None:
                if silent <= self.LOST_S or self._devices_still_there():
                    if silent > self.STALL_S:  # the server is there, the stream is stuck: open it again
                        log.warning("%s: no sound for %.1f s: reopening its stream", DESCRIPTION, silent)
                        self._close_stream()
                        self._reopen_or_say_why()
                    return
                log.warning("%s: no sound for %.1f s: %s", DESCRIPTION, silent, self.GONE)
                self.status_text = f"error: {self.GONE}"
                self._close_stream()
                self.devices.forget()  # its modules went with the server: never unload those ids on a new one
                self.devices = None
                self._retry_at = now
            if now < self._retry_at:
                return
            self._retry_at = now + self.RETRY_S
            if self.devices is not None:  # the devices are there, a reopen of the stream failed: again
                self._reopen_or_say_why()
            else:
                self._come_back()

    def _silence(self, now: float) -> float:
        """Seconds with no output callback, counting only time this process ran: on a starved CPU (a busy
        machine, an emulator) the output thread, the watchdog and the frame thread are held up together, and
        that is no sign of a lost server. A late look adds at most LOOK_CAP_S; an interval in which the frame
        thread drew nothing (it draws at the camera's rate, sound or not) adds nothing."""
        since, self._looked_at = self._looked_at, now
        if self._last_callback >= since or self._stream is None:  # a callback since the last look (or in grace)
            self._silent_s = 0.0
        elif self._last_frame is None or self._last_frame >= since:
            self._silent_s += min(max(now - since, 0.0), self.LOOK_CAP_S)
        return self._silent_s

    def _devices_still_there(self) -> bool:
        """Whether the server answers and still holds our modules (a busy machine can delay callbacks too)."""
        try:
            loaded = {module_id for module_id, _owner in our_modules()}
        except VirtualMicError:
            return False
        return bool(self.devices.modules) and set(self.devices.modules) <= loaded

    def _reopen_or_say_why(self) -> None:
        try:
            with PORTAUDIO_LOCK:
                self._open(*self._prepare_output())
        except VirtualMicError as exc:
            self.status_text = f"error: {str(exc).splitlines()[0]}"
            # Back off: a stream that cannot start (PortAudio's thread start times out on a starved CPU) is
            # not helped by trying every second.
            self._retry_s = min(2 * self._retry_s, self.RETRY_MAX_S)
            self._retry_at = time.monotonic() + self._retry_s
            return
        self._retry_s = self.RETRY_S
        self.status_text = "running"

    def _come_back(self) -> None:
        try:
            server_defaults()  # is a server there?
            with PORTAUDIO_LOCK:
                index, rate, channels = self._prepare_output()
                self.playout = DelayedPlayout(self.ring, rate, lambda: self.delay.seconds)
                self._open(index, rate, channels)
        except VirtualMicError as exc:
            self._close_stream()
            if self.devices is not None:
                self.devices.remove()
                self.devices = None
            self.status_text = f"error: {self.GONE} ({str(exc).splitlines()[0][:120]})"
            return
        self.status_text = "running"
        log.info("%s is back", DESCRIPTION)

    # --- from other threads ----------------------------------------------------------------------------
    def observe_frame(self, frame, record) -> None:
        """`LivePipeline.on_frame`: every frame's measured latency steers the delay (frame thread)."""
        self._last_frame = time.monotonic()
        self.delay.observe(frame, record)

    def frame_due(self, audio_time: float) -> float | None:
        """`LivePipeline.pace`: when the voice at `audio_time` (input clock seconds) plays, so the frame showing
        it leaves with it (frame thread; None while nothing plays yet)."""
        playout = self.playout
        # However long the voice waits (seconds, on a slow machine), the frame showing it waits with it.
        horizon = self.delay.seconds + 0.5
        return playout.play_time_of(audio_time * 16000, horizon) if playout is not None else None

    def set_offset_ms(self, offset_ms: float) -> None:
        """Manual correction on top of the measured delay (> 0 delays the voice more)."""
        self.delay.offset_ms = float(offset_ms)

    @property
    def delay_s(self) -> float:
        return self.delay.seconds

    def status(self) -> dict:
        p = self.playout
        return {
            "state": self.status_text, "device": self.call_app_device,
            "delay_ms": round(1000 * self.delay.seconds, 1), "offset_ms": self.delay.offset_ms,
            "error_ms": round(1000 * p.last_error_s, 2) if p else None,
            "breakups": self.breakups,
            "drift_ppm": round(1e6 * p.corrector.drift, 1) if p else None,
            "jumps": p.jumps if p else 0, "holds": p.holds if p else 0, "underruns": p.underruns if p else 0,
        }

    # --- PortAudio's output thread ---------------------------------------------------------------------
    def _callback(self, outdata, frames, t, status) -> None:
        try:
            now = self._last_callback = time.monotonic()
            name_os_thread("ac-mic-out")
            if status.output_underflow:
                self.breakups += 1
            lead = t.outputBufferDacTime - t.currentTime  # when this block's first sample will play
            if not 0.0 < lead < 1.0:
                lead = self._fallback_lead
            block = self.playout.render(frames, now + lead)
            outdata[:] = block[:, None]
        except Exception as e:  # noqa: BLE001  (never raise into PortAudio's thread)
            outdata.fill(0)
            self.status_text = f"error: {type(e).__name__}: {e}"
