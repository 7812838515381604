"""Changes to the running camera are built off the frame thread, which only swaps them in between two frames.

A photo switch (issue 14's guest: under emulation the frame thread spent >10 s building the new photo's
compositor, engine face, painter and idle motion, sent nothing meanwhile, and Chromium ended the camera track),
and a mirror toggle, idle motion settings or an engine switch (each 0.1-0.7 s of building here: a camera that
froze for up to 20 frames). Real controller, Lite engine, live pipeline and PulseAudio microphone; the camera is
the recording backend (no /dev/video here). The work is watched by wrapping the real classes, to see which
thread runs it."""

from __future__ import annotations

import threading
import time

import cv2
import numpy as np
from camera_recorder import BACKEND, register
from helpers import wait_for

from avatar_cam.daemon.controller import Controller
from avatar_cam.lipsync import lite
from avatar_cam.lipsync.lite import LiteLipSync
from avatar_cam.live import renderer as renderer_module
from avatar_cam.live.frame_clock import FrameClock
from avatar_cam.live.renderer import FrameRenderer
from avatar_cam.settings import Settings
from avatar_cam.video.compositor import OutputFormat
from avatar_cam.video.idle_motion import IdleSettings
from avatar_cam.video.portrait import Portrait


def _watch(monkeypatch) -> list[tuple[str, str]]:
    """(what was built, on which thread), for the per-look work: compositor, engine face, painter, idle motion."""
    work: list[tuple[str, str]] = []

    def watched(what, real):
        def call(*args, **kwargs):
            work.append((what, threading.current_thread().name))
            return real(*args, **kwargs)
        return call

    monkeypatch.setattr(renderer_module, "Compositor", watched("compositor", renderer_module.Compositor))
    monkeypatch.setattr(renderer_module, "IdleMotion", watched("idle motion", renderer_module.IdleMotion))
    monkeypatch.setattr(lite.LiteLipSync, "set_face", watched("set_face", lite.LiteLipSync.set_face))
    monkeypatch.setattr(lite.LiteLipSync, "canvas_painter", watched("painter", lite.LiteLipSync.canvas_painter))
    return work


def _running(photo, monkeypatch) -> tuple[Controller, list[tuple[str, str]]]:
    """A started camera (Lite, 320x180 at 15 fps) sending frames, and the watch on its per-look work."""
    register()
    work = _watch(monkeypatch)
    ctl = Controller(Settings(photo=str(photo), engine="lite", mic="pulse", camera_backend=BACKEND,
                              width=320, height=180, fps=15.0), persist=False)
    ctl.start()
    wait_for(lambda: len(ctl._pipeline.stats.records) > 5, "frames")
    return ctl, work


def _frames_keep_coming(ctl) -> None:
    n = len(ctl._pipeline.stats.records)
    wait_for(lambda: len(ctl._pipeline.stats.records) > n + 5, "frames after the change")
    assert ctl._pipeline.stats.records[-1].emitted > time.monotonic() - 5


def test_the_frame_thread_only_swaps_a_photo_prepared_elsewhere(pulse_server, astronaut_png, tmp_path, monkeypatch):
    other = tmp_path / "mirrored.png"
    cv2.imwrite(str(other), cv2.flip(cv2.imread(str(astronaut_png)), 1))
    ctl, work = _running(astronaut_png, monkeypatch)
    try:
        renderer = ctl._renderer
        work.clear()
        before = renderer.compositor
        ctl.set_photo(other)
        wait_for(lambda: renderer.compositor is not before, "the new photo on the frame thread", timeout=10)
        assert {what for what, _ in work} == {"compositor", "set_face", "painter", "idle motion"}, work
        assert all(thread != "frames" for _, thread in work), work  # all of it on the caller's thread
        assert str(renderer.compositor.portrait.path) == str(other)
        _frames_keep_coming(ctl)
    finally:
        ctl.stop()


def test_mirror_idle_motion_and_engine_changes_are_built_off_the_frame_thread(pulse_server, astronaut_png, monkeypatch):
    ctl, work = _running(astronaut_png, monkeypatch)
    try:
        renderer = ctl._renderer
        for change, done, built in [
            ({"mirror": not ctl.settings.mirror}, lambda _: renderer.compositor.fmt.mirror == ctl.settings.mirror,
             {"compositor", "painter", "idle motion"}),
            ({"idle_blinks": False}, lambda _: not renderer.idle_settings.blinks, {"idle motion"}),
            ({"engine": "lite"}, lambda engine: renderer.lipsync is not engine, {"set_face", "painter"}),
        ]:
            work.clear()
            before, engine = renderer.generation, renderer.lipsync
            ctl.update_settings(**change)
            wait_for(lambda: done(engine), f"{change} on the frame thread", timeout=10)  # noqa: B023 (waited for here)
            assert {what for what, _ in work} == built, (change, work)
            assert all(thread != "frames" for _, thread in work), (change, work)
            # Only a new face or engine retires the mouths drawn so far.
            assert (renderer.generation > before) == ("engine" in change), change
            _frames_keep_coming(ctl)
        assert renderer.compositor.portrait.path == astronaut_png
    finally:
        ctl.stop()


def test_changes_prepared_side_by_side_all_take_effect(astronaut_png):
    """Two changes prepared from the same picture (two commands at once): the second to be swapped in is built
    again on top of the first, so neither is lost."""
    renderer = FrameRenderer(LiteLipSync(), Portrait.load(astronaut_png), OutputFormat(320, 180), FrameClock(15.0))
    mirror = renderer.prepare(fmt=OutputFormat(320, 180, mirror=True))
    still = renderer.prepare(idle=IdleSettings.off())
    renderer.use(mirror)
    renderer.use(still)
    assert renderer.compositor.fmt.mirror and renderer.idle is None
    # And the picture is what both say: mirrored, and no motion between two frames of silence.
    first, later = renderer.idle_at(0), renderer.idle_at(40)
    assert np.array_equal(first, later)
    assert np.array_equal(first, FrameRenderer(LiteLipSync(), Portrait.load(astronaut_png),
                                               OutputFormat(320, 180, mirror=True), FrameClock(15.0),
                                               idle=IdleSettings.off()).idle_at(0))
