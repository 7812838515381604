"""`avatar-cam bench engine`: Wav2Lip inference in ms per frame per batch and precision, load times, memory,
against PyTorch eager (when PyTorch is installed) measured in the same run.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from avatar_cam.bench.common import answer, checkpoint_for_bench
from avatar_cam.wav2lip.arch import MOUTH_FIRST_ROW
from avatar_cam.wav2lip.engine import Wav2LipEngine, supported_precisions

BATCHES = (1, 2, 4, 8)


def _inputs(batch: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    return (
        rng.uniform(-4, 4, (batch, 1, 80, 16)).astype(np.float32),
        rng.uniform(0, 1, (batch, 6, 96, 96)).astype(np.float32),
    )


def _time_per_frame(infer, batch: int, seconds: float) -> float:
    """Median ms per frame over repeated calls (after two warm-up calls)."""
    mel, face = _inputs(batch, np.random.default_rng(batch))
    for _ in range(2):
        infer(mel, face)
    times: list[float] = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end or len(times) < 5:
        t0 = time.perf_counter()
        infer(mel, face)
        times.append(time.perf_counter() - t0)
    return 1000.0 * float(np.median(times)) / batch


_PROBE = """
import json, resource, sys, time
t0 = time.perf_counter()
from avatar_cam.lipsync.wav2lip import Wav2LipLipSync
import numpy as np
e = Wav2LipLipSync.from_checkpoint(sys.argv[1], device=sys.argv[2], precision="f32", cache_dir=sys.argv[3]).engine
t1 = time.perf_counter()
e.infer(np.zeros((1, 1, 80, 16), np.float32), np.zeros((1, 6, 96, 96), np.float32))
t2 = time.perf_counter()
print(json.dumps({"load_s": t1 - t0, "first_call_ms": 1000 * (t2 - t1), "to_first_frame_s": t2 - t0,
                  "ir_cached": e.report.ir_cached, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def _time_still_face(engine, seconds: float) -> dict[str, float]:
    """ms/frame per batch size of the generator alone (a still portrait's face encoded once)."""
    features = engine.encode_face(_inputs(1, np.random.default_rng(0))[1])
    return {str(b): round(_time_per_frame(lambda mel, _face: engine.infer_encoded(mel, features), b, seconds), 2)
            for b in BATCHES}


# What each table times: the published network whole (like for like with PyTorch), the same with the face
# encoded once, and what the live path runs: that, computing only the rows the compositor blends.
TABLES = {"ms_per_frame": "full network", "ms_per_frame_still_face": "still face, all 96 rows",
          "ms_per_frame_live": "live path: still face, mouth rows only"}


def _probe_load(checkpoint: Path, device: str, cache: Path) -> dict:
    """Load in a fresh process, so load time and peak RSS are what a user's start-up sees."""
    out = subprocess.run([sys.executable, "-c", _PROBE, str(checkpoint), device, str(cache)], capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"engine load probe failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _torch_eager_ms(seconds: float) -> float | None:
    """PyTorch eager f32 at batch 1, in its own process; only where PyTorch is installed (dev/CI)."""
    if importlib.util.find_spec("torch") is None:
        return None
    threads = str(len(os.sched_getaffinity(0)))
    out = subprocess.run([sys.executable, "-m", "avatar_cam.bench.torch_baseline", threads, str(seconds)],
                         capture_output=True, text=True)
    return float(out.stdout.strip().splitlines()[-1]) if out.returncode == 0 else None


def engine_bench(device: str = "CPU", checkpoint: Path | None = None, seconds: float = 2.0, torch_baseline: bool = True) -> dict:
    with tempfile.TemporaryDirectory(prefix="avatar-cam-bench-") as tmp:
        work = Path(tmp)
        ckpt, weights_note = checkpoint_for_bench(checkpoint, work)
        cache = work / "cache"
        cold = _probe_load(ckpt, device, cache)
        warm = _probe_load(ckpt, device, cache)
        results: dict = {"device": device, "weights": weights_note, **{key: {} for key in TABLES},
                         "load_cold_s": round(cold["load_s"], 3), "load_warm_s": round(warm["load_s"], 3),
                         "warm_to_first_frame_s": round(warm["to_first_frame_s"], 3),
                         "first_call_ms": round(warm["first_call_ms"], 2),
                         "peak_rss_mb_cold": round(cold["peak_rss_mb"], 1), "peak_rss_mb_warm": round(warm["peak_rss_mb"], 1)}
        for precision in supported_precisions(device):
            whole = Wav2LipEngine.from_checkpoint(ckpt, device=device, precision=precision, cache_dir=cache, first_row=0)
            live = Wav2LipEngine.from_checkpoint(ckpt, device=device, precision=precision, cache_dir=cache,
                                                first_row=MOUTH_FIRST_ROW)
            results["ms_per_frame"][precision] = {str(b): round(_time_per_frame(whole.infer, b, seconds), 2)
                                                  for b in BATCHES}
            results["ms_per_frame_still_face"][precision] = _time_still_face(whole, seconds)
            results["ms_per_frame_live"][precision] = _time_still_face(live, seconds)
    torch_ms = _torch_eager_ms(seconds) if torch_baseline else None
    if torch_ms is not None:
        results["torch_eager_f32_ms_b1"] = round(torch_ms, 2)
        results["speedup_f32_b1_vs_torch"] = round(torch_ms / results["ms_per_frame"]["f32"]["1"], 2)
        results["speedup_still_face_f32_b1_vs_torch"] = round(torch_ms / results["ms_per_frame_still_face"]["f32"]["1"], 2)
        results["speedup_live_f32_b1_vs_torch"] = round(torch_ms / results["ms_per_frame_live"]["f32"]["1"], 2)
    results["peak_rss_mb_bench"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    return results


def run(args: argparse.Namespace) -> int:
    r = engine_bench(args.device, args.checkpoint, args.seconds, torch_baseline=not args.no_torch)
    return answer(args, r, _describe_engine)


def _describe_engine(r: dict) -> None:
    print(f"Wav2Lip engine on {r['device']} ({r['weights']})")
    print(f"{'precision':<10}" + "".join(f"{'batch ' + str(b):>10}" for b in BATCHES) + "   (ms per frame)")
    for key, label in TABLES.items():
        print(f"  {label}")
        for precision, row in r[key].items():
            print(f"{precision:<10}" + "".join(f"{row[str(b)]:>10.2f}" for b in BATCHES))
    print(f"load: cold {r['load_cold_s']:.2f} s (read + convert + compile), warm {r['load_warm_s']:.2f} s "
          f"(cached IR + compiled model); warm start to first frame {r['warm_to_first_frame_s']:.2f} s")
    print(f"first inference after load: {r['first_call_ms']:.1f} ms")
    print(f"peak RSS: cold start {r['peak_rss_mb_cold']:.0f} MB, warm start {r['peak_rss_mb_warm']:.0f} MB")
    if "torch_eager_f32_ms_b1" in r:
        print(f"PyTorch eager f32 batch 1: {r['torch_eager_f32_ms_b1']:.2f} ms -> OpenVINO f32 is "
              f"{r['speedup_f32_b1_vs_torch']:.2f}x faster (same run; the live path {r['speedup_live_f32_b1_vs_torch']:.2f}x)")


def register(kinds: argparse._SubParsersAction) -> None:
    eng = kinds.add_parser("engine", help="Wav2Lip inference: ms/frame per batch and precision, load times, memory")
    eng.add_argument("--device", default="CPU")
    eng.add_argument("--checkpoint", type=Path, help="weights to time (default: the installed model, else seeded random weights)")
    eng.add_argument("--seconds", type=float, default=2.0, help="time spent on each batch size (default 2)")
    eng.add_argument("--no-torch", action="store_true", help="skip the PyTorch eager baseline even if PyTorch is installed")
    eng.add_argument("--json", action="store_true", help="print JSON instead of a table")
    eng.set_defaults(func=run)
