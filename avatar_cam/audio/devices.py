"""PortAudio's devices: the sounddevice module, input device lookup by name or index, and rescans.

PortAudio lists devices once, when it starts; `fresh_input_device_names` asks a new process for the list as it
is now, and `rescan_devices` makes this process's PortAudio list them again (which ends every open stream).
`PORTAUDIO_LOCK` is held while a stream opens and while PortAudio rescans.
"""

from __future__ import annotations

import sys
import threading

from avatar_cam.errors import AudioError


def sounddevice_module():
    """The sounddevice module, or an AudioError saying how to install PortAudio."""
    try:
        import sounddevice
    except OSError as e:
        raise AudioError(f"The PortAudio library is missing: {e}",
                         hint="Linux: sudo apt install libportaudio2 ; macOS: brew install portaudio") from None
    return sounddevice


def list_input_devices() -> list[dict]:
    """Input devices as PortAudio sees them (it scans when it starts, and again on `rescan_devices`)."""
    sd = sounddevice_module()
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
        raise AudioError(f"No microphone (input device) matches {spec!r}.", hint=devices_hint(devices))
    return found[0]["index"]


# How long a thread that wants the GIL may wait for a busy one to hand it over (CPython's default is 5 ms).
AUDIO_SWITCH_INTERVAL_S = 0.001


def favour_audio_threads() -> None:
    """Let PortAudio's callback threads have the GIL within ~1 ms of asking, process-wide.

    A stream calls its Python callback every block (10 ms here), and each call first waits for the GIL. While
    another thread runs Python code (the frame thread drawing), CPython makes a waiting thread wait up to its
    switch interval, 5 ms by default, before the busy one must let go: on a slow or starved machine, where the
    callback's own work takes a few ms, 5 ms of waiting per 10 ms block is more than real time allows, and the
    microphone falls behind the voice for good (seen in an emulated guest: the mouth 20-70 s late and growing;
    reproduced on a fast machine with a 4 ms callback beside a busy thread: 1.9 s behind after 12 s). With 1 ms
    the callbacks keep up. Only lowers the interval, never raises one set lower by someone else."""
    if sys.getswitchinterval() > AUDIO_SWITCH_INTERVAL_S:
        sys.setswitchinterval(AUDIO_SWITCH_INTERVAL_S)


# Held while a stream opens and while PortAudio rescans: a rescan ends every stream, so none may open meanwhile.
PORTAUDIO_LOCK = threading.RLock()

_FRESH_INPUT_NAMES = ("import json, sounddevice as sd; "
                      "print(json.dumps([d['name'] for d in sd.query_devices() if d['max_input_channels'] > 0]))")


def fresh_input_device_names(timeout: float = 20.0) -> list[str] | None:
    """Input device names as a new process sees them now; None if asking failed.

    This process's PortAudio keeps the list it made when it started; asking a fresh one (a Python start,
    ~0.3 s) leaves the streams open here alone."""
    from avatar_cam.fresh_process import ask

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
    sd = sounddevice_module()
    with PORTAUDIO_LOCK:
        sd._terminate()
        sd._initialize()


def devices_hint(devices: list[dict]) -> str:
    if not devices:
        return ("No input devices found: plug in a microphone, or start PulseAudio/PipeWire "
                "(on Linux PortAudio reaches it through ALSA's 'pulse' device: apt install libasound2-plugins).")
    names = ", ".join(f"{d['index']}: {d['name']!r}{' (default)' if d['is_default'] else ''}" for d in devices)
    return f"Available input devices: {names}. Choose one by index or name."

