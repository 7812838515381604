"""Virtual audio cables on Windows and macOS: no devices are created there; we play into a cable found by name
(VB-CABLE's "CABLE Input", BlackHole), and the call app picks the cable's other end as its microphone.
"""

from __future__ import annotations

import platform

from avatar_cam.audio.devices import sounddevice_module
from avatar_cam.errors import VirtualMicError
from avatar_cam.vmic.pulse import DESCRIPTION

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


def find_virtual_cable(system: str | None = None) -> tuple[int, str, str]:
    """(PortAudio output index, its name, what call apps select) of a virtual cable; raise with how to get one."""
    system = system or platform.system()
    sd = sounddevice_module()
    outputs = [d for d in sd.query_devices() if d["max_output_channels"] > 0]
    for fragment, call_side in CABLES.get(system, []):
        for d in outputs:
            if fragment.lower() in d["name"].lower():
                return d["index"], d["name"], call_side or d["name"]
    names = ", ".join(repr(d["name"]) for d in outputs) or "none"
    raise VirtualMicError(f"no virtual audio cable found for {DESCRIPTION} (output devices: {names})",
                          hint=CABLE_HINTS.get(system, "pass an output device that loops back into a microphone"))
