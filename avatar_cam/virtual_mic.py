"""'Avatar Cam Microphone': the microphone's sound, delayed to meet the lips, as a microphone call apps can pick.

Linux (PulseAudio or PipeWire's pulse server): at start we load a null sink `avatar_cam_sink` (we play into it)
and a remap source `avatar_cam_mic` of its monitor, described as "Avatar Cam Microphone" (what call apps list),
both through `pactl load-module`, and unload them at exit. The modules carry our process id and start time
(`avatar_cam.owner=...`), so a later start removes what a killed run left behind, and never what another
running Avatar Cam owns. They are removed:
- by `close()`: a `with` block, a `finally`, or `bind_to(frame_thread)` when the frame thread ends or crashes;
- by `atexit` on any interpreter exit, and on SIGTERM when nobody else handles it (we turn it into SystemExit);
- if the process dies without running Python code (SIGKILL, a segfault), by a tiny `sh` janitor started with
  the devices: it waits on a pipe from us, and unloads our modules when the pipe closes without a goodbye.
The user's default sink and source are read before loading and put back if loading changed them.

Routing: PortAudio reaches PulseAudio through ALSA's `pulse` device, which connects to the sink named in
PULSE_SINK at the moment the stream opens. We set it (and PIPEWIRE_NODE, for pipewire-alsa) just around the
open, then check with `pactl list sink-inputs` that our stream (tagged through PULSE_PROP) landed on our
sink, and move it there if it did not: our delayed voice must never play on the user's speakers.

Windows / macOS: no devices are created; we play into a virtual cable found by name (VB-CABLE's
"CABLE Input", BlackHole), and the call app picks the cable's other end as its microphone.

Threads: `start`, `close`, `set_offset_ms` and `status` run on the caller's thread (`close` may run on any
thread, at exit, or twice). `observe_frame` runs on the pipeline's frame thread. `_callback` runs on
PortAudio's output thread and alone owns the `DelayedPlayout` (it reads the input ring, which is built for that).
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import platform
import re
import shutil
import signal
import subprocess
import threading
import time

from . import paths
from .audio_source import PORTAUDIO_LOCK, AudioRing, _sounddevice
from .av_sync import DelayedPlayout, MeasuredDelay
from .errors import AvatarCamError

log = logging.getLogger(__name__)

SINK = "avatar_cam_sink"
SOURCE = "avatar_cam_mic"
DESCRIPTION = "Avatar Cam Microphone"
RATE = 48000
_OPEN_LOCK = threading.Lock()  # PULSE_SINK & co. are process-wide: one stream opens at a time

# Virtual cables by platform: (a name fragment of the output we play into, what the call app selects;
# None: the same device, which is both an output and an input).
CABLES: dict[str, list[tuple[str, str | None]]] = {
    "Windows": [("CABLE Input", "CABLE Output (VB-Audio Virtual Cable)")],
    "Darwin": [("BlackHole", None)],
}
CABLE_HINTS = {
    "Windows": "install VB-CABLE (free, https://vb-audio.com/Cable/), restart, then pick 'CABLE Output' as the "
               "microphone in your call app",
    "Darwin": "install BlackHole (`brew install --cask blackhole-2ch`, or https://existential.audio/blackhole/), then "
              "pick 'BlackHole 2ch' as the microphone in your call app",
}


class VirtualMicError(AvatarCamError):
    """The virtual microphone cannot be created or fed."""


# ------------------------------------------------------------------------------------------------- pactl


def pactl(*args: str, check: bool = True) -> str:
    """Run pactl (untranslated output); raise a VirtualMicError a person can act on."""
    if shutil.which("pactl") is None:
        raise VirtualMicError("the virtual microphone needs `pactl` (PulseAudio or PipeWire's pulse server)",
                              hint="sudo apt install pulseaudio-utils  (PipeWire: also pipewire-pulse)")
    try:
        done = subprocess.run(["pactl", *args], capture_output=True, text=True, timeout=10,
                              env={**os.environ, "LC_ALL": "C"})
    except subprocess.TimeoutExpired:
        raise VirtualMicError(f"`pactl {' '.join(args)}` did not answer within 10 s",
                              hint="is the sound server hung? restart it: systemctl --user restart pipewire-pulse "
                                   "(or pulseaudio -k)") from None
    if check and done.returncode != 0:
        raise VirtualMicError(f"`pactl {' '.join(args[:2])}` failed: {(done.stderr or done.stdout).strip()}",
                              hint="is PulseAudio or PipeWire (pipewire-pulse) running for this user? `pactl info` tells")
    return done.stdout


def server_defaults() -> tuple[str, str]:
    """(default sink, default source) of the running sound server."""
    info = pactl("info")
    found = dict(re.findall(r"^Default (Sink|Source): (.*)$", info, re.M))
    return found.get("Sink", ""), found.get("Source", "")


def _process_token(pid: int) -> str:
    """pid plus the process's start time (Linux): a token a recycled pid cannot fake."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f"{pid}.{f.read().rsplit(')', 1)[1].split()[19]}"
    except (OSError, IndexError):
        return str(pid)


def _owner_alive(token: str) -> bool:
    pid = int(token.split(".")[0])
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return _process_token(pid) == token or "." not in token


def our_modules() -> list[tuple[int, str]]:
    """(module id, owner token) of every module an Avatar Cam loaded on this server, newest first."""
    found = []
    for line in pactl("list", "short", "modules").splitlines():
        m = re.search(r"avatar_cam\.owner=([\d.]+)", line)
        if m and line.split("\t")[0].isdigit():
            found.append((int(line.split("\t")[0]), m.group(1)))
    return sorted(found, reverse=True)


_JANITOR = r"""
IFS= read -r line
[ "$line" = released ] && exit 0
pactl list short modules | awk -v m="$MARK" 'index($0, m) {print $1}' | sort -rn |
while read -r id; do pactl unload-module "$id"; done
"""


class PulseDevices:
    """The null sink + remap source pair behind "Avatar Cam Microphone", on PulseAudio or PipeWire-pulse."""

    def __init__(self, sink: str = SINK, source: str = SOURCE, description: str = DESCRIPTION):
        self.sink, self.source, self.description = sink, source, description
        self.token = _process_token(os.getpid())
        self.modules: list[int] = []
        self.defaults: tuple[str, str] = ("", "")
        self._janitor: subprocess.Popen | None = None

    @property
    def marker(self) -> str:
        return f"avatar_cam.owner={self.token}'"

    def create(self) -> None:
        self.defaults = server_defaults()
        self._remove_leftovers()
        try:
            owner = f"avatar_cam.owner={self.token}"
            self.modules.append(self._load(
                "module-null-sink", f"sink_name={self.sink}", f"rate={RATE}", "channels=1",
                f"sink_properties='device.description=\"{self.description} (internal: plays into it)\" {owner}'"))
            self.modules.append(self._load(
                "module-remap-source", f"master={self.sink}.monitor", f"source_name={self.source}", "channels=1",
                f"source_properties='device.description=\"{self.description}\" "
                f"device.icon_name=audio-input-microphone {owner}'"))
            self._janitor = subprocess.Popen(
                ["sh", "-c", _JANITOR], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                env={**os.environ, "MARK": self.marker, "LC_ALL": "C"}, start_new_session=True)
            self._restore_defaults()
        except BaseException:
            self.remove()
            raise
        log.info("created %r (source %s, fed through sink %s; modules %s)", self.description, self.source,
                 self.sink, self.modules)

    def _load(self, module: str, *args: str) -> int:
        out = pactl("load-module", module, *args).strip()
        if not out.isdigit():
            raise VirtualMicError(f"loading {module} gave no module id: {out!r}")
        return int(out)

    def _remove_leftovers(self) -> None:
        for module_id, token in our_modules():
            if token != self.token and _owner_alive(token):
                raise VirtualMicError(f"{self.description} already belongs to another running Avatar Cam "
                                      f"(process {token.split('.')[0]})", hint="stop that one first, or use it")
            log.info("removing module %d left by an earlier run (owner %s)", module_id, token)
            pactl("unload-module", str(module_id), check=False)

    def _restore_defaults(self) -> None:
        """Put back the user's default sink/source if they changed (a new device may become the default)."""
        sink, source = server_defaults()
        old_sink, old_source = self.defaults
        if old_sink and sink != old_sink:
            log.info("default sink became %s: restoring %s", sink, old_sink)
            pactl("set-default-sink", old_sink, check=False)
        if old_source and source != old_source:
            log.info("default source became %s: restoring %s", source, old_source)
            pactl("set-default-source", old_source, check=False)

    def remove(self) -> None:
        """Unload our modules (idempotent); if the user had made ours the default, give the old default back."""
        modules, self.modules = self.modules, []
        janitor, self._janitor = self._janitor, None
        try:
            was_default = bool(modules) and any(d in (self.sink, self.source) for d in server_defaults())
        except VirtualMicError:
            was_default = False
        for module_id in modules[::-1]:
            with contextlib.suppress(VirtualMicError):
                pactl("unload-module", str(module_id), check=False)
        if was_default:
            with contextlib.suppress(VirtualMicError):
                self._restore_defaults()
        if janitor is not None:
            with contextlib.suppress(OSError, ValueError):
                janitor.stdin.write(b"released\n")
                janitor.stdin.close()
            with contextlib.suppress(subprocess.TimeoutExpired):
                janitor.wait(timeout=5)
        if modules:
            log.info("removed %r", self.description)

    def route(self, stream_tag: str) -> None:
        """Make sure the playback stream tagged `stream_tag` plays into our sink (move it if it landed elsewhere)."""
        sinks = dict(line.split("\t")[:2][::-1] for line in pactl("list", "short", "sinks").splitlines() if "\t" in line)
        for block in pactl("list", "sink-inputs").split("Sink Input #")[1:]:
            if f'avatar_cam.stream = "{stream_tag}"' not in block:
                continue
            index, on = block.split()[0], re.search(r"^\s*Sink: (\d+)", block, re.M)
            if on is None or on.group(1) != sinks.get(self.sink):
                log.warning("our stream went to sink %s: moving it to %s", on and on.group(1), self.sink)
                pactl("move-sink-input", index, self.sink)
            return
        log.warning("could not find our playback stream in `pactl list sink-inputs`; not checking where it plays")


# ------------------------------------------------------------------------------------------------- cables


def find_virtual_cable(system: str | None = None) -> tuple[int, str, str]:
    """(PortAudio output index, its name, what call apps select) of a virtual cable; raise with how to get one."""
    system = system or platform.system()
    sd = _sounddevice()
    outputs = [d for d in sd.query_devices() if d["max_output_channels"] > 0]
    for fragment, call_side in CABLES.get(system, []):
        for d in outputs:
            if fragment.lower() in d["name"].lower():
                return d["index"], d["name"], call_side or d["name"]
    names = ", ".join(repr(d["name"]) for d in outputs) or "none"
    raise VirtualMicError(f"no virtual audio cable found for {DESCRIPTION} (output devices: {names})",
                          hint=CABLE_HINTS.get(system, "pass an output device that loops back into a microphone"))


@contextlib.contextmanager
def pulse_env(env: dict[str, str]):
    """Set PULSE_SINK / PULSE_SOURCE & co. while a stream opens (libpulse reads them then), then put them back."""
    with _OPEN_LOCK, paths.environ(env):
        yield


def _pulse_output_index() -> int:
    sd = _sounddevice()
    outputs = {d["name"]: d["index"] for d in sd.query_devices() if d["max_output_channels"] > 0}
    for name in ("pulse", "pipewire", "default"):
        if name in outputs:
            return outputs[name]
    raise VirtualMicError("PortAudio sees no 'pulse' output, so it cannot play into the virtual microphone",
                          hint="sudo apt install libasound2-plugins (ALSA's pulse plugin)")


# ------------------------------------------------------------------------------------------------- the microphone


class VirtualMicrophone:
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
        self.devices: PulseDevices | None = None
        self.call_app_device = ""  # what the user picks as the microphone in the call app
        self.status_text = "stopped"
        self.playout: DelayedPlayout | None = None
        self._stream = None
        self._lock = threading.RLock()
        self._old_sigterm = None
        self._closed = False
        self._fallback_lead = 0.03  # the stream's reported latency, once it is open

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
        sd = _sounddevice()
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
            return _pulse_output_index(), RATE, 1
        else:
            index, _name, self.call_app_device = find_virtual_cable(system)
            info = sd.query_devices(index)
        return info["index"], round(info["default_samplerate"]), max(1, min(2, info["max_output_channels"]))

    def _open(self, index: int, rate: int, channels: int) -> None:
        sd = _sounddevice()
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

    # --- from other threads ----------------------------------------------------------------------------
    def observe_frame(self, frame, record) -> None:
        """`LivePipeline.on_frame`: every frame's measured latency steers the delay (frame thread)."""
        self.delay.observe(frame, record)

    def frame_due(self, audio_time: float) -> float | None:
        """`LivePipeline.pace`: when the voice at `audio_time` (input clock seconds) plays, so the frame showing
        it leaves with it (frame thread; None while nothing plays yet)."""
        playout = self.playout
        return playout.play_time_of(audio_time * 16000) if playout is not None else None

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
            "drift_ppm": round(1e6 * p.corrector.drift, 1) if p else None,
            "jumps": p.jumps if p else 0, "holds": p.holds if p else 0, "underruns": p.underruns if p else 0,
        }

    # --- PortAudio's output thread ---------------------------------------------------------------------
    def _callback(self, outdata, frames, t, status) -> None:
        try:
            now = time.monotonic()
            lead = t.outputBufferDacTime - t.currentTime  # when this block's first sample will play
            if not 0.0 < lead < 1.0:
                lead = self._fallback_lead
            block = self.playout.render(frames, now + lead)
            outdata[:] = block[:, None]
        except Exception as e:  # noqa: BLE001  (never raise into PortAudio's thread)
            outdata.fill(0)
            self.status_text = f"error: {type(e).__name__}: {e}"

