"""How much of the machine lip-sync may take: the user's performance setting, and the mouth rate it allows.

The camera's frame rate never depends on this: frames leave on the audio clock whatever inference does. These
modes only decide how often a new mouth is drawn, how many OpenVINO threads draw it, and how nicely the
inference thread treats the call app beside us (its nice value; 0 = like everyone else).
"""

from __future__ import annotations

from dataclasses import dataclass

from avatar_cam.settings import PERFORMANCE_MODES


@dataclass(frozen=True)
class Performance:
    name: str
    label: str  # what the tray's Camera > Performance menu shows
    max_mouth_hz: float | None  # None: up to the camera's frame rate
    threads: int  # OpenVINO CPU threads per inference (one costs ~20% less CPU per inference than two)
    cpu_budget: float | None  # cores the whole process may use while you talk (None: no cap); inference gets
    #                           what drawing, audio and the camera leave, measured while running (mouths.py)
    nice: int  # the inference thread's nice value (Linux and macOS; higher = gives way sooner)
    summary: str  # what it costs and gives, for the README and `--help`


MODES: dict[str, Performance] = {mode.name: mode for mode in (
    Performance("smooth", "Smooth", None, 2, None, 0,
                "lips up to the camera's rate; the most CPU (about 1.3 cores while you talk, two inference threads)"),
    Performance("balanced", "Balanced", 25.0, 1, 0.75, 5,
                "lips up to 25 Hz, the rate Wav2Lip was trained at, with the whole camera kept within 0.75 of a "
                "core; it gives way to the call app when the machine is busy"),
    Performance("light", "Light", 12.5, 1, 0.45, 10,
                "lips up to 12.5 Hz, the whole camera within 0.45 of a core, for slow or busy machines"),
)}
DEFAULT = "balanced"
assert tuple(MODES) == PERFORMANCE_MODES, "settings.py lists the modes users may choose"


def performance(name: str | None) -> Performance:
    """The mode called `name` (unknown or None: the default)."""
    return MODES.get(name or DEFAULT, MODES[DEFAULT])
