"""`avatar-cam bench startup` and `avatar-cam bench photo-switch`, run small: the figures are there and sane.

Timing targets (3 s, 1 s) belong to the benchmarks themselves (see BENCHMARKS.md), not to pass/fail here."""

from __future__ import annotations

import json

from helpers import run_cli


def bench(*args: str) -> dict:
    done = run_cli("bench", *args, "--json", timeout=600)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_bench_startup_launches_the_daemon_and_times_its_first_frame(pulse_server, random_checkpoint):
    r = bench("startup", "--runs", "2", "--size", "320x180", "--checkpoint", str(random_checkpoint))
    assert r["command"] == "avatar-cam daemon --no-tray" and r["engine"] == "wav2lip" and r["runs"] == 2
    assert len(r["startup_s"]) == 2 and all(0 < t < 120 for t in r["startup_s"])
    assert min(r["startup_s"]) <= r["startup_s_p50"] <= max(r["startup_s"]) and r["cold_s"] > 0
    assert r["target_s"] == 3.0 and r["meets_target"] == (r["startup_s_p50"] < 3.0)
    assert r["weights"] == str(random_checkpoint)

    r = bench("startup", "--via", "run", "--engine", "lite", "--runs", "1", "--size", "320x180",
              "--checkpoint", str(random_checkpoint))
    assert r["command"] == "avatar-cam run" and r["engine"] == "lite" and 0 < r["startup_s_p50"] < 120


def test_bench_photo_switch_times_the_new_face_without_reopening_the_camera(random_checkpoint):
    r = bench("photo-switch", "--runs", "3", "--size", "320x180", "--checkpoint", str(random_checkpoint))
    assert r["engine"] == "wav2lip" and r["runs"] == 3 and r["camera_opens"] == 1
    assert len(r["switch_s"]) == 3 and all(0 < t < 30 for t in r["switch_s"])
    assert 0 < r["set_photo_s_p50"] <= r["switch_s_p50"] + 0.05  # the frame comes after the photo is loaded
    assert r["target_s"] == 1.0 and r["meets_target"] == (r["switch_s_p50"] < 1.0)
