"""A photo switch prepares the new photo off the frame thread (issue 14's guest: under emulation the frame
thread spent >10 s building the new photo's compositor, engine face, painter and idle motion, sent nothing
meanwhile, and Chromium ended the camera track). Real controller, Lite engine, live pipeline and PulseAudio
microphone; the camera is the recording backend (no /dev/video here). The per-photo work is watched by
wrapping the real classes, to see which thread runs it."""

from __future__ import annotations

import threading
import time

import cv2
from camera_recorder import BACKEND, register
from helpers import wait_for

from avatar_cam.daemon.controller import Controller
from avatar_cam.lipsync import lite
from avatar_cam.live import renderer as renderer_module
from avatar_cam.settings import Settings


def test_the_frame_thread_only_swaps_a_photo_prepared_elsewhere(pulse_server, astronaut_png, tmp_path, monkeypatch):
    other = tmp_path / "mirrored.png"
    cv2.imwrite(str(other), cv2.flip(cv2.imread(str(astronaut_png)), 1))
    register()
    work: list[tuple[str, str]] = []  # (what, thread name)
    real_compositor, real_set_face = renderer_module.Compositor, lite.LiteLipSync.set_face

    def compositor(*args, **kwargs):
        work.append(("compositor", threading.current_thread().name))
        return real_compositor(*args, **kwargs)

    def set_face(self, portrait):
        work.append(("set_face", threading.current_thread().name))
        return real_set_face(self, portrait)

    monkeypatch.setattr(renderer_module, "Compositor", compositor)
    monkeypatch.setattr(lite.LiteLipSync, "set_face", set_face)
    ctl = Controller(Settings(photo=str(astronaut_png), engine="lite", mic="pulse", camera_backend=BACKEND,
                              width=320, height=180, fps=15.0), persist=False)
    ctl.start()
    try:
        renderer = ctl._renderer
        wait_for(lambda: len(ctl._pipeline.stats.records) > 5, "frames")
        work.clear()
        before = renderer.compositor
        ctl.set_photo(other)
        wait_for(lambda: renderer.compositor is not before, "the new photo on the frame thread", timeout=10)
        assert {what for what, _ in work} == {"compositor", "set_face"}, work
        assert all(thread != "frames" for _, thread in work), work  # all of it on the caller's thread
        assert str(renderer.compositor.portrait.path) == str(other)
        n = len(ctl._pipeline.stats.records)
        wait_for(lambda: len(ctl._pipeline.stats.records) > n + 5, "frames of the new photo")
        assert ctl._pipeline.stats.records[-1].emitted > time.monotonic() - 5
    finally:
        ctl.stop()
