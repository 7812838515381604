"""What a change of settings does to the running camera: checked first, then applied between two frames.

`prepare_changes` runs on the caller's thread (it loads a new photo, or a new engine, which can take seconds, and
builds the renderer's new look: `FrameRenderer.prepare`), and returns calls that the controller applies to the
running pipeline, each taking the pipeline: the frame thread only swaps the prepared look in.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from avatar_cam.errors import AvatarCamError
from avatar_cam.lipsync.registry import check_engine_name, make_lipsync
from avatar_cam.live.performance import MODES, performance
from avatar_cam.settings import Settings

log = logging.getLogger(__name__)


def prepare_changes(renderer, current: Settings, changes: dict, wanted: Settings) -> list[Callable]:
    """Check the changed settings; return what applies them to a running pipeline between two frames,
    as calls taking the pipeline, in order. Loads a new photo (always: that is how a photo is checked)
    and, while running, a new engine."""
    from avatar_cam.video.compositor import OutputFormat
    from avatar_cam.video.idle_motion import IdleSettings
    from avatar_cam.video.portrait import Portrait

    live: list[Callable] = []
    if wanted.performance not in MODES:
        raise AvatarCamError(f"unknown performance mode {wanted.performance!r}", hint=f"choose one of: {', '.join(MODES)}")
    mode = performance(wanted.performance)
    threads_change = "performance" in changes and mode.threads != performance(current.performance).threads
    new_photo = bool(changes.keys() & {"photo", "face_box"})
    new_engine = bool(changes.keys() & {"engine", "device", "precision"}) or threads_change
    if new_engine:
        check_engine_name(wanted.engine)
    if "performance" in changes:
        live.append(lambda pipeline: pipeline.request_performance(mode))
    portrait = None
    if new_photo:
        if not wanted.photo:
            raise AvatarCamError("no photo given", hint="avatar-cam ctl photo PATH")
        portrait = Portrait.load(Path(wanted.photo), face_box=tuple(wanted.face_box) if wanted.face_box else None)
    fmt = None
    if changes.keys() & {"fit", "mirror", "width", "height"}:  # (a new size reopens the camera: renderer None)
        try:
            fmt = OutputFormat(wanted.width, wanted.height, wanted.fit, wanted.mirror)
        except ValueError as exc:
            raise AvatarCamError(str(exc)) from None
    idle = None
    if changes.keys() & {"idle_blinks", "idle_head_motion", "idle_breathing"}:
        idle = IdleSettings(wanted.idle_blinks, wanted.idle_head_motion, wanted.idle_breathing)
    if renderer is not None and (new_engine or any(x is not None for x in (portrait, fmt, idle))):
        # Built here, on the caller's thread (a photo's face layout, an engine's warm-up, the Lite painter and
        # the idle motion take 0.1-0.7 s): a new photo or engine gets an engine of its own, since the running
        # one may be busy on the mouths thread.
        engine = make_lipsync(wanted.engine, wanted.device, wanted.precision, threads=mode.threads) \
            if portrait is not None or new_engine else None
        prepared = renderer.prepare(portrait=portrait, fmt=fmt, lipsync=engine, idle=idle)
        live.append(lambda pipeline: pipeline.call_between_frames(lambda: renderer.use(prepared)))
        if portrait is not None:
            log.info("photo %s prepared", portrait.path)
    return live
