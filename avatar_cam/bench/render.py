"""`avatar-cam bench render`: an offline render (photo + speech -> mp4, as `avatar-cam render` does it) against the
engine's own batch throughput measured in the same run: how much of the machine the render loop leaves unused.

It also says where the render's CPU goes, per frame (inference, drawing, handing frames to the encoder, the
encoder), and so the most the render could reach against the engine alone on this machine however well its parts
overlap: the engine alone's CPU per frame over the render's (both fill the same cores).
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from avatar_cam.audio.mel import melspectrogram
from avatar_cam.audio.ring import SAMPLE_RATE
from avatar_cam.audio.sources import load_audio
from avatar_cam.bench.common import ProcessCpu, answer, bench_photo, bench_speech, checkpoint_for_bench, picture_options
from avatar_cam.lipsync.wav2lip import Wav2LipLipSync
from avatar_cam.live.assemble import Picture, build_renderer, load_portrait
from avatar_cam.live.frame_clock import FrameClock
from avatar_cam.live.mel_windows import mel_window
from avatar_cam.offline.render import render_video
from avatar_cam.video.compositor import OutputFormat, parse_size

BATCH = 8


def engine_fps(lipsync, mel: np.ndarray, clock: FrameClock, seconds: float) -> tuple[float, float]:
    """(frames per second, ms of CPU a frame) of the engine alone on batches of BATCH real mel windows, as many
    batches at once as it has streams (as the render runs them)."""
    windows = np.stack([mel_window(mel, clock.mel_start(k)) for k in range(BATCH)])[:, None]
    lipsync.lower_faces(windows)  # warm up
    streams = getattr(lipsync, "streams", 1)
    t0, cpu0 = time.perf_counter(), time.process_time()

    def batches() -> int:
        done = 0
        while time.perf_counter() - t0 < seconds or done < 3 * BATCH:
            lipsync.lower_faces(windows)
            done += BATCH
        return done

    with ThreadPoolExecutor(streams) as pool:
        done = sum(pool.map(lambda _: batches(), range(streams)))
    return done / (time.perf_counter() - t0), 1000.0 * (time.process_time() - cpu0) / done


def _children_cpu_s() -> float:
    used = resource.getrusage(resource.RUSAGE_CHILDREN)
    return used.ru_utime + used.ru_stime


def cpu_split_ms(by_thread_s: dict[str, float], encoder_s: float, total_s: float, frames: int) -> dict[str, float]:
    """A render's CPU seconds by thread, its encoder processes' and its whole (the watcher's excepted) -> ms a
    frame by part. OpenVINO runs a batch on threads of its own ("native") while the render's "render-mouths"
    threads wait for it; "other" is the rest: the render loop, and what the looks at ending threads missed."""
    parts = {"inference": 0.0, "drawing": 0.0, "to_encoder": 0.0, "encoder": encoder_s}
    for name, seconds in by_thread_s.items():
        part = ("inference" if name == "native" or name.startswith("render-mouths") else
                "drawing" if name == "render-draw" else "to_encoder" if name == "mp4-writer" else None)
        if part is not None:
            parts[part] += seconds
    parts["other"] = max(0.0, total_s + encoder_s - sum(parts.values()))
    return {part: round(1000.0 * seconds / max(frames, 1), 2) for part, seconds in parts.items()}


def render_bench(seconds: float = 10.0, photo: Path | None = None, audio: Path | None = None,
                 checkpoint: Path | None = None, size: str = "1280x720", fps: float = 25.0) -> dict:
    with tempfile.TemporaryDirectory(prefix="avatar-cam-bench-") as tmp:
        work = Path(tmp)
        ckpt, weights = checkpoint_for_bench(checkpoint, work)
        lipsync = Wav2LipLipSync.from_checkpoint(ckpt, cache_dir=work / "cache", streams=0)  # as `render` runs it
        w, h = parse_size(size)
        picture = Picture(fmt=OutputFormat(w, h), clock=FrameClock(fps))
        renderer = build_renderer(load_portrait(bench_photo(photo, work)), picture, lipsync)
        speech = bench_speech(audio, work, seconds)
        clip = load_audio(speech)[: round(seconds * SAMPLE_RATE)]
        cut = work / "clip.wav"
        import soundfile

        soundfile.write(cut, clip, SAMPLE_RATE)
        alone, alone_ms = engine_fps(lipsync, melspectrogram(clip), picture.clock, 3.0)
        encoder0, cpu = _children_cpu_s(), ProcessCpu()
        t0 = time.perf_counter()
        with cpu.sampling():  # the render's threads end with it
            render_video(renderer, cut, work / "out.mp4", progress=False)
        took = time.perf_counter() - t0
        frames = picture.clock.frame_count(seconds)
        by_thread = cpu.seconds_by_thread()
        own = cpu.seconds() - by_thread.pop("cpu-watch", 0.0)
        split = cpu_split_ms(by_thread, _children_cpu_s() - encoder0, own, frames)
    render_ms = sum(split.values())
    return {"seconds": seconds, "size": size, "fps": fps, "weights": weights, "frames": frames,
            "render_fps": round(frames / took, 1), "realtime_x": round(seconds / took, 2),
            "engine_batch_fps": round(alone, 1), "render_vs_engine": round(frames / took / alone, 2),
            "cpu_ms_per_frame": split, "engine_cpu_ms_per_frame": round(alone_ms, 2),
            "cpu_bound_vs_engine": round(alone_ms / render_ms, 2) if render_ms > 0 else None}


def describe(r: dict) -> None:
    print(f"render: {r['seconds']} s of speech at {r['size']}, {r['fps']:g} fps ({r['weights']})")
    print(f"  {r['render_fps']} frames/s = {r['realtime_x']}x real time; the engine alone (batch {BATCH}) "
          f"{r['engine_batch_fps']} frames/s in the same run -> the render runs at {r['render_vs_engine']:.0%} of it")
    split = ", ".join(f"{part.replace('_', ' ')} {ms}" for part, ms in r["cpu_ms_per_frame"].items())
    print(f"  CPU a frame (ms): {split}; the engine alone {r['engine_cpu_ms_per_frame']}")
    if r["cpu_bound_vs_engine"] is not None:
        print(f"  so on this machine the render can reach at most {r['cpu_bound_vs_engine']:.0%} of the engine alone, "
              "however well its parts overlap")


def run(args: argparse.Namespace) -> int:
    return answer(args, render_bench(args.seconds, args.photo, args.audio, args.checkpoint, args.size, args.fps), describe)


def register(kinds: argparse._SubParsersAction) -> None:
    p = kinds.add_parser("render", parents=[picture_options()],
                         help="offline render speed against the engine's own batch throughput, same run")
    p.add_argument("--seconds", type=float, default=10.0, help="length of the speech to render (default 10)")
    p.set_defaults(func=run, fps=25.0)
