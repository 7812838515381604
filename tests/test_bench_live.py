"""`avatar-cam bench live` as a user runs it: the real pipeline (Wav2Lip in OpenVINO on seeded random weights,
espeak-ng speech in real time) into the bench's counting camera, beside its neighbour process. Correctness of
what it reports, not the machine's speed: the keys older scripts read, and a CPU split that adds up."""

from __future__ import annotations

import json

from helpers import run_cli


def test_bench_live_reports_the_camera_the_mouth_the_neighbour_and_where_the_cpu_goes(astronaut_png):
    result = run_cli("bench", "live", "--seconds", "5", "--size", "320x180", "--photo", str(astronaut_png),
                     "--neighbour", "20", "--json", timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]
    r = json.loads(result.stdout)
    for key in ("camera_fps", "camera_late_pct", "mouth_hz", "latency_ms_p95", "cpu_pct", "neighbour_late_pct"):
        assert isinstance(r[key], (int, float)), key
    assert (r["fps"], r["late_frames_pct"]) == (r["camera_fps"], r["camera_late_pct"])  # the older names
    assert r["frames"] > 60 and r["mouth_hz"] > 0 and r["neighbour_jobs"] > 60
    threads = r["cpu_by_thread_pct"]
    assert {"MainThread", "mouths"} <= threads.keys(), threads  # the frame thread, and inference's
    # The split is of the same process time as the total (each sampled a little apart: within a few points).
    assert abs(sum(threads.values()) - r["cpu_pct"]) < 10, (threads, r["cpu_pct"])
    assert r["camera_priority"] in ("real-time", "real-time (rtkit)", "normal") and r["busy"] == 0


def test_bench_live_beside_busy_programs_at_normal_priority_for_comparison(astronaut_png):
    """`--busy N` starts N programs that each want a core, in sessions of their own, and stops them after;
    `--normal-priority` keeps the camera's threads ordinary (the other side of the comparison)."""
    import psutil

    before = {p.pid for p in psutil.process_iter()}
    result = run_cli("bench", "live", "--seconds", "3", "--size", "320x180", "--photo", str(astronaut_png),
                     "--engine", "lite", "--busy", "2", "--normal-priority", "--json", timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]
    r = json.loads(result.stdout)
    assert r["busy"] == 2 and r["camera_priority"] == "normal" and r["frames"] > 40
    left = [p for p in psutil.process_iter(["cmdline"]) if p.pid not in before
            and "avatar_cam.bench.neighbour" in " ".join(p.info["cmdline"] or [])]
    assert not left, left  # the busy programs are gone


def test_bench_live_unwatched_measures_the_camera_at_rest(astronaut_png):
    """`--unwatched`: no app reads the camera, so it rests: a frame a second and no inference while talking."""
    result = run_cli("bench", "live", "--seconds", "3", "--size", "320x180", "--photo", str(astronaut_png),
                     "--unwatched", "--json", timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]
    r = json.loads(result.stdout)
    assert r["unwatched"] and 2 <= r["frames_sent"] <= 5, r
    assert "mouths" not in r["cpu_by_thread_pct"], r["cpu_by_thread_pct"]  # no inference thread ever started
