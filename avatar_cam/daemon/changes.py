"""What a change of settings does to the running camera: checked first, then applied between two frames.

`prepare_changes` runs on the caller's thread (it loads a new photo, or a new engine, which can take seconds),
and returns calls that the controller applies to the running pipeline, each taking the pipeline.
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
    if changes.keys() & {"engine", "device", "precision"} or threads_change:
        check_engine_name(wanted.engine)
        if renderer is not None and not new_photo:  # with a new photo, the photo's preparation makes the engine
            lipsync = make_lipsync(wanted.engine, wanted.device, wanted.precision, threads=mode.threads)
            given = renderer.compositor.portrait
            lipsync.set_face(given)  # here, not on the frame thread: Wav2Lip encodes the face and warms up

            def swap_engine() -> None:
                if renderer.compositor.portrait is not given:  # the photo changed meanwhile
                    lipsync.set_face(renderer.compositor.portrait)
                renderer.lipsync = lipsync

            live.append(lambda pipeline: pipeline.call_between_frames(swap_engine))
    if "performance" in changes:
        live.append(lambda pipeline: pipeline.request_performance(mode))
    if new_photo:
        if not wanted.photo:
            raise AvatarCamError("no photo given", hint="avatar-cam ctl photo PATH")
        portrait = Portrait.load(Path(wanted.photo), face_box=tuple(wanted.face_box) if wanted.face_box else None)
        if renderer is not None:
            # Built here, on the caller's thread, with an engine of its own: the frame thread only swaps it in.
            engine = make_lipsync(wanted.engine, wanted.device, wanted.precision, threads=mode.threads)
            prepared = renderer.prepare_portrait(portrait, engine)

            def use_photo() -> None:
                renderer.use_portrait(prepared)
                log.info("photo switched to %s", portrait.path)

            live.append(lambda pipeline: pipeline.call_between_frames(use_photo))
    if changes.keys() & {"fit", "mirror", "width", "height"}:
        try:
            fmt = OutputFormat(wanted.width, wanted.height, wanted.fit, wanted.mirror)
        except ValueError as exc:
            raise AvatarCamError(str(exc)) from None
        if renderer is not None:
            live.append(lambda pipeline: pipeline.call_between_frames(
                lambda: renderer.set_portrait(renderer.compositor.portrait, fmt)))
    if changes.keys() & {"idle_blinks", "idle_head_motion", "idle_breathing"} and renderer is not None:
        idle = IdleSettings(wanted.idle_blinks, wanted.idle_head_motion, wanted.idle_breathing)
        live.append(lambda pipeline: pipeline.call_between_frames(lambda: renderer.set_idle(idle)))
    return live
