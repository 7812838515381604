"""`avatar-cam bench live`: the live path in real time into a counting camera: fps, late frames, mouth latency,
CPU and memory.
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

import psutil
import pyvirtualcam

from avatar_cam.audio.ring import AudioRing
from avatar_cam.audio.sources import FileSource
from avatar_cam.bench.cameras import COUNTING_BACKEND, CountingCamera
from avatar_cam.bench.common import ProcessCpu, answer, bench_renderer, bench_speech, picture_options, run_for
from avatar_cam.live.pipeline import LivePipeline
from avatar_cam.live.records import summarize
from avatar_cam.outputs.camera import VirtualCameraSink


def live_bench(seconds: float, photo: Path | None = None, audio: Path | None = None, checkpoint: Path | None = None,
               size: str = "1280x720", fps: float = 30.0, engine: str = "wav2lip") -> dict:
    pyvirtualcam.register_backend(COUNTING_BACKEND, CountingCamera)
    with tempfile.TemporaryDirectory(prefix="avatar-cam-bench-") as tmp:
        work = Path(tmp)
        renderer, clock, weights_note = bench_renderer(work, engine, photo, checkpoint, size, fps)
        speech = bench_speech(audio, work, seconds)
        ring = AudioRing()
        camera = VirtualCameraSink(renderer.compositor.fmt.width, renderer.compositor.fmt.height, fps,
                                   backend=COUNTING_BACKEND)
        pipeline = LivePipeline(renderer, [camera], ring, clock)
        source = FileSource(speech, ring, realtime=True)
        cpu, t0 = ProcessCpu(), time.monotonic()
        run_for(pipeline, source, seconds, cleanup=(camera.close,))
        cpu_pct, t1 = cpu.percent(), time.monotonic()
    result = summarize(pipeline.stats.records, fps)
    result.update({
        "seconds": round(t1 - t0, 1),
        "size": size,
        "engine": renderer.lipsync.name,
        "weights": weights_note,
        "cpu_pct": cpu_pct,
        "rss_mb": round(psutil.Process().memory_info().rss / 2**20, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    })
    return result


def run(args: argparse.Namespace) -> int:
    return answer(args, live_bench(args.seconds, args.photo, args.audio, args.checkpoint, args.size, args.fps,
                                   args.engine), describe)


def describe(r: dict) -> None:
    print(f"live path, {r['seconds']} s at {r['size']}, {r['engine']} ({r['weights']})")
    print(f"  fps {r['fps']}, late frames {r['late_frames_pct']}%, frames with inference {r['inferred_pct']}%")
    print(f"  mouth latency p50 {r['latency_ms_p50']} ms, p95 {r['latency_ms_p95']} ms")
    print(f"  CPU {r['cpu_pct']}% of one core, RSS {r['rss_mb']} MB (peak {r['peak_rss_mb']} MB)")


def register(kinds: argparse._SubParsersAction) -> None:
    live = kinds.add_parser("live", parents=[picture_options()],
                            help="the live path in real time: fps, late frames, mouth latency, CPU, memory")
    live.add_argument("--seconds", type=float, default=60.0, help="how long to run (default 60)")
    live.add_argument("--engine", choices=("wav2lip", "lite"), default="wav2lip")
    live.set_defaults(func=run)
