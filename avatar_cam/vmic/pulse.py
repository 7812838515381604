"""The PulseAudio (or PipeWire-pulse) side of "Avatar Cam Microphone": pactl, and the null sink + remap source
pair that call apps list as the microphone.

At start we load a null sink `avatar_cam_sink` (we play into it) and a remap source `avatar_cam_mic` of its
monitor, described as "Avatar Cam Microphone", through `pactl load-module`, and unload them at exit. The modules
carry our process id and start time (`avatar_cam.owner=...`), so a later start removes what a killed run left
behind, and never what another running Avatar Cam owns. If the process dies without running Python code
(SIGKILL, a segfault), a tiny `sh` janitor started with the devices unloads them: it waits on a pipe from us, and
unloads our modules when the pipe closes without a goodbye. The user's default sink and source are read before
loading and put back if loading changed them.

Threads: whoever starts or closes the virtual microphone (see microphone.py); `pulse_env` serialises the
process-wide environment that libpulse reads when a stream opens.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import subprocess
import threading

from avatar_cam import paths
from avatar_cam.audio.devices import sounddevice_module
from avatar_cam.errors import VirtualMicError

log = logging.getLogger(__name__)

SINK = "avatar_cam_sink"
SOURCE = "avatar_cam_mic"
DESCRIPTION = "Avatar Cam Microphone"
RATE = 48000
_OPEN_LOCK = threading.Lock()  # PULSE_SINK & co. are process-wide: one stream opens at a time


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


def process_token(pid: int) -> str:
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
    return process_token(pid) == token or "." not in token


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
        self.token = process_token(os.getpid())
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
        _release(janitor)
        if modules:
            log.info("removed %r", self.description)

    def forget(self) -> None:
        """The server that held our modules is gone (and with it the modules): let the janitor go, unload nothing."""
        self.modules = []
        janitor, self._janitor = self._janitor, None
        _release(janitor)

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


@contextlib.contextmanager
def pulse_env(env: dict[str, str]):
    """Set PULSE_SINK / PULSE_SOURCE & co. while a stream opens (libpulse reads them then), then put them back."""
    with _OPEN_LOCK, paths.environ(env):
        yield


def pulse_output_index() -> int:
    sd = sounddevice_module()
    outputs = {d["name"]: d["index"] for d in sd.query_devices() if d["max_output_channels"] > 0}
    for name in ("pulse", "pipewire", "default"):
        if name in outputs:
            return outputs[name]
    raise VirtualMicError("PortAudio sees no 'pulse' output, so it cannot play into the virtual microphone",
                          hint="sudo apt install libasound2-plugins (ALSA's pulse plugin)")


def _release(janitor: subprocess.Popen | None) -> None:
    """Tell the janitor we cleaned up ourselves, so it unloads nothing, and let it end."""
    if janitor is None:
        return
    with contextlib.suppress(OSError, ValueError):
        janitor.stdin.write(b"released\n")
        janitor.stdin.close()
    with contextlib.suppress(subprocess.TimeoutExpired):
        janitor.wait(timeout=5)
