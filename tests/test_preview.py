"""The preview window on a real X server: a bare Xvfb, no window manager (the tray tests' desktop has one).

Its picture is read back with a screenshot of the window. The CPU is kept busy meanwhile: OpenCV's Qt window,
which the preview used before, missed its MapNotify about 1 open in 5 like this and stayed black for good.
"""

from __future__ import annotations

import os
import subprocess
import sys

import cv2
import numpy as np
import pytest
from helpers import wait_for
from tray_desktop import Desktop, preview_window, start_xvfb, stop_all, window_shows

from avatar_cam.outputs.preview import PreviewSink


def blocks(width: int, height: int, seed: int) -> np.ndarray:
    """A picture of coloured blocks, different for every seed."""
    rng = np.random.default_rng(seed)
    return cv2.resize(rng.integers(0, 255, (9, 16, 3), np.uint8), (width, height), interpolation=cv2.INTER_NEAREST)


@pytest.fixture()
def bare_x(tmp_path, monkeypatch) -> Desktop:
    """An X server and nothing else on it."""
    xvfb, display = start_xvfb(1600, 1000, subprocess.DEVNULL)
    try:
        monkeypatch.setenv("DISPLAY", display)
        yield Desktop(display, tmp_path, tmp_path / "no-notifications.jsonl")
    finally:
        stop_all([xvfb])


@pytest.fixture()
def busy_cpu():
    """A spinning process per core, for the length of the test."""
    spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(os.cpu_count() or 2)]
    yield
    for p in spinners:
        p.kill()
        p.wait()


def open_and_look(desktop: Desktop, i: int, width: int, height: int) -> None:
    """Open a preview, send it a picture, then one of half the size; each must show; then close it."""
    sink = PreviewSink()
    try:
        window = wait_for(lambda: preview_window(desktop), "the preview window")
        picture = blocks(width, height, seed=i)
        sink.send(picture)
        shown = picture if width <= sink.max_width else cv2.resize(
            picture, (sink.max_width, height * sink.max_width // width), interpolation=cv2.INTER_AREA)
        wait_for(lambda: window_shows(desktop, window, shown), f"picture {i} ({width}x{height}) in the window")
        smaller = blocks(width // 2, height // 2, seed=100 + i)  # a new size while open: the window takes it
        sink.send(smaller)
        wait_for(lambda: window_shows(desktop, window, smaller), f"picture {i} at half size in the window")
        assert sink.alive and not sink.closed_by_user
    finally:
        sink.close()
    wait_for(lambda: preview_window(desktop) is None, "the window gone with close()")


def test_each_preview_window_shows_the_camera_picture_on_a_busy_cpu(bare_x, busy_cpu):
    for i, (width, height) in enumerate([(320, 180), (640, 360), (1280, 720), (480, 270), (960, 540)] * 2):
        open_and_look(bare_x, i, width, height)


def test_bench_preview_measures_both_windows_side_by_side(bare_x):
    from avatar_cam.bench.preview import preview_bench

    r = preview_bench((1280, 720), fps=15.0, seconds=1.0)
    for window in ("x11", "opencv"):
        assert r[window]["alive"] and r[window]["frames_sent"] >= 10, r
        assert r[window]["cpu_pct"] > 0 and r[window]["rss_mb"] > 10, r
    assert r["x11_vs_opencv_cpu"] == round(r["x11"]["cpu_pct"] / r["opencv"]["cpu_pct"], 2)
