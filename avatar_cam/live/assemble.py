"""The one place that wires a frame renderer: photo + lip-sync engine + output format + frame clock + idle life.

The controller, `run`, `render`, `demo` and the benches all build their renderer here, so a choice (an engine,
a lookahead, idle motion) means the same everywhere. Sinks and audio sources are the caller's: the pipeline
takes them as they are.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from avatar_cam.lipsync.registry import make_lipsync
from avatar_cam.live.frame_clock import FrameClock
from avatar_cam.live.performance import DEFAULT, performance
from avatar_cam.live.renderer import FrameRenderer
from avatar_cam.video.compositor import OutputFormat
from avatar_cam.video.idle_motion import IdleSettings
from avatar_cam.video.portrait import Portrait


@dataclass(frozen=True)
class Picture:
    """What the camera or a render draws: size and fit, rate and lookahead, engine, idle life."""

    fmt: OutputFormat = OutputFormat()
    clock: FrameClock = FrameClock()
    engine: str = "wav2lip"
    device: str = "CPU"
    precision: str = "f32"
    idle: IdleSettings = IdleSettings()
    performance: str = DEFAULT  # how much of the machine lip-sync may take (performance.py)
    fallback: bool = True  # Wav2Lip without weights: the Lite engine (and a note) instead of an error


def load_portrait(photo: str | Path, face_box=None) -> Portrait:
    return Portrait.load(Path(photo), face_box=tuple(face_box) if face_box else None)


def build_renderer(portrait: Portrait, picture: Picture, lipsync=None) -> FrameRenderer:
    """A renderer for `portrait` as `picture` says; `lipsync` is an engine already loaded (else one is made)."""
    if lipsync is None:
        lipsync = make_lipsync(picture.engine, picture.device, picture.precision, fallback=picture.fallback,
                               threads=performance(picture.performance).threads)
    return FrameRenderer(lipsync, portrait, picture.fmt, picture.clock, idle=picture.idle)


def picture_from_settings(s) -> Picture:
    """The picture the user's settings (`avatar_cam.settings.Settings`) ask for; raises ValueError for a size,
    fit or frame rate that cannot be."""
    return Picture(fmt=OutputFormat(s.width, s.height, s.fit, s.mirror), clock=FrameClock(s.fps, s.lookahead_ms / 1000.0),
                   engine=s.engine, device=s.device, precision=s.precision,
                   idle=IdleSettings(s.idle_blinks, s.idle_head_motion, s.idle_breathing), performance=s.performance)
