"""`avatar-cam bench live`: the live path in real time into a counting camera: fps, late frames, mouth latency,
CPU and memory.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import resource
import tempfile
import time
from pathlib import Path

import psutil
import pyvirtualcam

from avatar_cam.audio.ring import AudioRing
from avatar_cam.audio.sources import FileSource
from avatar_cam.bench.cameras import COUNTING_BACKEND, CountingCamera, Unread
from avatar_cam.bench.common import ProcessCpu, answer, bench_renderer, bench_speech, picture_options, run_for
from avatar_cam.bench.neighbour import Neighbour
from avatar_cam.lipsync.registry import ENGINES
from avatar_cam.live.performance import DEFAULT, MODES
from avatar_cam.live.performance import performance as performance_mode
from avatar_cam.live.pipeline import LivePipeline
from avatar_cam.live.records import summarize
from avatar_cam.outputs.camera import VirtualCameraSink


def pin_to_cores(n: int) -> set[int]:
    """Pin this process (every thread it has now, and so every thread they start) to its first `n` cores."""
    cores = set(sorted(os.sched_getaffinity(0))[:n])
    for tid in os.listdir("/proc/self/task"):
        with contextlib.suppress(OSError):
            os.sched_setaffinity(int(tid), cores)
    return cores


def live_bench(seconds: float, photo: Path | None = None, audio: Path | None = None, checkpoint: Path | None = None,
               size: str = "1280x720", fps: float = 30.0, engine: str = "wav2lip", performance: str = DEFAULT,
               neighbour_pct: float = 0.0, cores: int | None = None, keep_time: bool = True, busy: int = 0,
               unwatched: bool = False) -> dict:
    pyvirtualcam.register_backend(COUNTING_BACKEND, CountingCamera)
    pinned = pin_to_cores(cores) if cores else None  # before the engine starts its threads
    with tempfile.TemporaryDirectory(prefix="avatar-cam-bench-") as tmp:
        work = Path(tmp)
        renderer, clock, weights_note = bench_renderer(work, engine, photo, checkpoint, size, fps, performance)
        speech = bench_speech(audio, work, seconds)
        ring = AudioRing()
        camera = VirtualCameraSink(renderer.compositor.fmt.width, renderer.compositor.fmt.height, fps,
                                   backend=COUNTING_BACKEND)
        pipeline = LivePipeline(renderer, [Unread(camera) if unwatched else camera], ring, clock,
                                performance=performance_mode(performance),
                                keep_time=keep_time)
        source = FileSource(speech, ring, realtime=True)
        neighbour = Neighbour(neighbour_pct, pinned) if neighbour_pct > 0 else None
        others = [Neighbour(100.0, pinned, own_session=True) for _ in range(busy)]
        cpu, t0 = ProcessCpu(), time.monotonic()
        threads: dict[str, float] = {}
        priority: list[str] = []

        def at_end() -> None:
            threads.update(cpu.by_thread())
            priority.append(pipeline.priority or "normal")

        try:
            run_for(pipeline, source, seconds, cleanup=(camera.close,), at_end=at_end)
        finally:
            theirs = neighbour.stop() if neighbour is not None else None
            for other in others:
                other.stop()
        cpu_pct, t1 = cpu.percent(), time.monotonic()
    result = summarize(pipeline.stats.records, fps)
    if theirs is not None:
        result.update({"neighbour_pct": neighbour_pct, "neighbour_late_pct": theirs["late_pct"],
                       "neighbour_jobs": theirs["jobs"]})
    result.update({
        "performance": performance,
        "busy": busy,
        "unwatched": unwatched,
        "frames_sent": len(pipeline.stats.records),  # with those a resting camera sends (no audio time of their own)
        "cores": len(pinned) if pinned else len(os.sched_getaffinity(0)),
        "inference_ms_p50": pipeline.mouths.inference_ms() if pipeline.mouths is not None else None,
        "seconds": round(t1 - t0, 1),
        "size": size,
        "engine": renderer.lipsync.name,
        "weights": weights_note,
        "cpu_pct": cpu_pct,
        "cpu_by_thread_pct": threads,  # "MainThread" draws the frames, "mouths" runs inference
        "camera_priority": priority[0] if priority else None,  # the frame thread's, at the end
        "rss_mb": round(psutil.Process().memory_info().rss / 2**20, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    })
    return result


def run(args: argparse.Namespace) -> int:
    return answer(args, live_bench(args.seconds, args.photo, args.audio, args.checkpoint, args.size, args.fps,
                                   args.engine, args.performance, args.neighbour, args.cores,
                                   not args.normal_priority, args.busy, args.unwatched), describe)


def describe(r: dict) -> None:
    print(f"live path, {r['seconds']} s at {r['size']}, {r['engine']} ({r['weights']}), {r['performance']}, "
          f"{r['cores']} core(s)")
    if r["unwatched"]:
        print(f"  no app reads the camera: it rests, {r['frames_sent']} frames sent in {r['seconds']} s, no lips")
    else:
        print(f"  camera {r['camera_fps']} fps, late frames {r['camera_late_pct']}%; lips {r['mouth_hz']} Hz while "
              f"talking (inference {r['inference_ms_p50']} ms), talking frames {r['inferred_pct']}%")
        print(f"  mouth latency p50 {r['latency_ms_p50']} ms, p95 {r['latency_ms_p95']} ms")
    if r["busy"]:
        print(f"  beside {r['busy']} other program(s) each wanting a whole core")
    if "neighbour_late_pct" in r:
        print(f"  the neighbour (a call app needing {r['neighbour_pct']}% of a core at 30 Hz): "
              f"{r['neighbour_late_pct']}% of its {r['neighbour_jobs']} jobs late")
    print(f"  the camera's thread ran at {r['camera_priority']} priority")
    print(f"  CPU {r['cpu_pct']}% of one core, RSS {r['rss_mb']} MB (peak {r['peak_rss_mb']} MB)")
    split = ", ".join(f"{'frames' if name == 'MainThread' else name} {pct}%" for name, pct in r["cpu_by_thread_pct"].items())
    print(f"  by thread: {split}")


def register(kinds: argparse._SubParsersAction) -> None:
    live = kinds.add_parser("live", parents=[picture_options()],
                            help="the live path in real time: fps, late frames, mouth latency, CPU, memory")
    live.add_argument("--seconds", type=float, default=60.0, help="how long to run (default 60)")
    live.add_argument("--engine", choices=ENGINES, default="wav2lip")
    live.add_argument("--performance", choices=tuple(MODES), default=DEFAULT, help=f"performance mode (default {DEFAULT})")
    live.add_argument("--neighbour", type=float, default=0.0, metavar="PCT",
                      help="beside a process of ours that needs PCT%% of one core in 30 Hz bursts (a call app), which "
                           "reports its own late jobs")
    live.add_argument("--cores", type=int, default=None, metavar="N", help="pin the run (and the neighbour) to N cores")
    live.add_argument("--busy", type=int, default=0, metavar="N",
                      help="beside N programs that each want a whole core, each in a session of its own (a build, a "
                           "busy browser)")
    live.add_argument("--normal-priority", action="store_true",
                      help="the camera's threads at normal priority, as where neither root nor rtkit grants more")
    live.add_argument("--unwatched", action="store_true",
                      help="with no app reading the camera: what the camera costs while it rests")
    live.set_defaults(func=run)
