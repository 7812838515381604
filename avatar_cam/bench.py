"""`avatar-cam bench ...`: measurements a user (or CI) can rerun, printed as a table or JSON.

Speeds are only compared inside one run (the machines are shared and noisy), so every figure that has a
baseline is reported as a ratio measured side by side.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

BATCHES = (1, 2, 4, 8)


def register(sub: argparse._SubParsersAction) -> None:
    bench = sub.add_parser("bench", help="measure speed, latency and memory")
    kinds = bench.add_subparsers(dest="bench_kind", metavar="KIND", required=True)
    eng = kinds.add_parser("engine", help="Wav2Lip inference: ms/frame per batch and precision, load times, memory")
    eng.add_argument("--device", default="CPU")
    eng.add_argument("--checkpoint", type=Path, help="weights to time (default: the installed model, else seeded random weights)")
    eng.add_argument("--seconds", type=float, default=2.0, help="time spent on each batch size (default 2)")
    eng.add_argument("--no-torch", action="store_true", help="skip the PyTorch eager baseline even if PyTorch is installed")
    eng.add_argument("--json", action="store_true", help="print JSON instead of a table")
    eng.set_defaults(func=run_engine_bench)

    live = kinds.add_parser("live", parents=[picture_options()],
                            help="the live path in real time: fps, late frames, mouth latency, CPU, memory")
    live.add_argument("--seconds", type=float, default=60.0, help="how long to run (default 60)")
    live.set_defaults(func=run_live_bench)

    from . import soak

    soak.register(kinds)

    from . import av_sync

    av_sync.register(kinds)

    from . import daemon_bench

    daemon_bench.register(kinds)


def picture_options(audio_help: str | None = "speech to play, looped (default: espeak-ng speech with pauses)"):
    """The options of every bench that runs the picture path: photo, (audio,) weights, size, fps, --json."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--photo", type=Path, help="portrait (default: scikit-image's astronaut, if installed)")
    if audio_help:
        p.add_argument("--audio", type=Path, help=audio_help)
    p.add_argument("--checkpoint", type=Path, help="weights (default: the installed model, else seeded random weights)")
    p.add_argument("--size", default="1280x720")
    p.add_argument("--fps", type=float, default=30.0)
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    return p


def answer(args: argparse.Namespace, result: dict, describe) -> int:
    """A bench's result: JSON with --json, else `describe(result)` prints it for people."""
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        describe(result)
    return 0


def run_for(pipeline, source, seconds: float, cleanup=()) -> None:
    """Feed `pipeline` from `source` and run it on this thread for `seconds`; then stop both and run `cleanup`."""
    timer = threading.Timer(seconds, pipeline.stop)
    source.start()
    timer.start()
    try:
        pipeline.run()
    finally:
        source.stop()
        timer.cancel()
        for close in cleanup:
            close()


class ProcessCpu:
    """This process's CPU use since it was made, in % of one core."""

    def __init__(self):
        import psutil

        self._proc = psutil.Process()
        self._t0, self._cpu0 = time.monotonic(), self._cpu()

    def _cpu(self) -> float:
        t = self._proc.cpu_times()
        return t.user + t.system

    def percent(self) -> float:
        return round(100.0 * (self._cpu() - self._cpu0) / max(time.monotonic() - self._t0, 1e-9), 1)


def _checkpoint_for_bench(explicit: Path | None, workdir: Path) -> tuple[Path, str]:
    from .errors import ModelNotInstalledError

    if explicit is not None:
        return explicit, str(explicit)
    try:
        from .model_store import installed_checkpoint

        path = installed_checkpoint()
        return path, f"installed {path.name}"
    except ModelNotInstalledError:
        from .checkpoint import write_checkpoint
        from .wav2lip_arch import random_state_dict

        path = workdir / "wav2lip_random.pth"
        write_checkpoint(random_state_dict(seed=0), path)
        return path, "seeded random weights in the published layout (same network, same cost)"


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
from avatar_cam.engine import Wav2LipEngine
import numpy as np
e = Wav2LipEngine.from_checkpoint(sys.argv[1], device=sys.argv[2], precision="f32", cache_dir=sys.argv[3])
t1 = time.perf_counter()
e.infer(np.zeros((1, 1, 80, 16), np.float32), np.zeros((1, 6, 96, 96), np.float32))
t2 = time.perf_counter()
print(json.dumps({"load_s": t1 - t0, "first_call_ms": 1000 * (t2 - t1), "to_first_frame_s": t2 - t0,
                  "ir_cached": e.report.ir_cached, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""

_TORCH_BASELINE = """
import sys, time, torch, numpy as np
sys.path.insert(0, sys.argv[1])
from wav2lip_reference import Wav2LipReference
torch.set_num_threads(int(sys.argv[2]))
m = Wav2LipReference().eval()
mel, face = torch.rand(1, 1, 80, 16), torch.rand(1, 6, 96, 96)
times = []
with torch.no_grad():
    for _ in range(3): m(mel, face)
    end = time.perf_counter() + float(sys.argv[3])
    while time.perf_counter() < end or len(times) < 5:
        t0 = time.perf_counter(); m(mel, face); times.append(time.perf_counter() - t0)
print(1000 * float(np.median(times)))
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
    """PyTorch eager f32 at batch 1, in its own process; only where PyTorch and the reference model exist (dev/CI)."""
    reference_dir = Path(__file__).resolve().parent.parent / "tests"
    if importlib.util.find_spec("torch") is None or not (reference_dir / "wav2lip_reference.py").exists():
        return None
    import os

    threads = str(len(os.sched_getaffinity(0)))
    out = subprocess.run([sys.executable, "-c", _TORCH_BASELINE, str(reference_dir), threads, str(seconds)],
                         capture_output=True, text=True)
    return float(out.stdout.strip().splitlines()[-1]) if out.returncode == 0 else None


def engine_bench(device: str = "CPU", checkpoint: Path | None = None, seconds: float = 2.0, torch_baseline: bool = True) -> dict:
    from .engine import Wav2LipEngine, supported_precisions

    with tempfile.TemporaryDirectory(prefix="avatar-cam-bench-") as tmp:
        work = Path(tmp)
        ckpt, weights_note = _checkpoint_for_bench(checkpoint, work)
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
            live = Wav2LipEngine.from_checkpoint(ckpt, device=device, precision=precision, cache_dir=cache)
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
    import resource

    results["peak_rss_mb_bench"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    return results


def run_engine_bench(args: argparse.Namespace) -> int:
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


# ---------------------------------------------------------------------------------------------- live


class _CountingCamera:
    """A pyvirtualcam backend that only counts frames: the bench measures our side, not a device driver."""

    def __init__(self, *, width, height, fps, fourcc, device, **kw):
        self.frames = 0

    def send(self, frame) -> None:
        self.frames += 1

    def close(self) -> None:
        pass

    def device(self) -> str:
        return "bench-counter"

    def native_fourcc(self):
        return None


def bench_photo(explicit: Path | None, workdir: Path) -> Path:
    if explicit is not None:
        return explicit
    try:
        import cv2
        from skimage import data
    except ImportError:
        from .errors import AvatarCamError

        raise AvatarCamError("no portrait to benchmark with", hint="pass --photo PATH") from None
    path = workdir / "astronaut.png"
    cv2.imwrite(str(path), cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR))
    return path


def bench_speech(explicit: Path | None, workdir: Path, seconds: float) -> Path:
    """Speech with pauses, long enough for the run: espeak-ng sentences separated by silence."""
    import shutil

    import soundfile

    from .audio_source import load_audio

    if explicit is not None:
        audio = load_audio(explicit)
    else:
        if shutil.which("espeak-ng") is None:
            from .errors import AvatarCamError

            raise AvatarCamError("espeak-ng is needed to make test speech", hint="install espeak-ng, or pass --audio FILE")
        raw = workdir / "say.wav"
        text = "The quick brown fox jumps over the lazy dog. We are testing a live lip sync camera today."
        subprocess.run(["espeak-ng", "-w", str(raw), text], check=True)
        speech = load_audio(raw)
        audio = np.concatenate([speech, np.zeros(16000, np.float32)])  # one second of silence between sentences
    reps = int(np.ceil((seconds + 2) * 16000 / len(audio)))
    out = workdir / "speech.wav"
    soundfile.write(out, np.tile(audio, reps), 16000)
    return out


def live_bench(seconds: float, photo: Path | None = None, audio: Path | None = None, checkpoint: Path | None = None,
               size: str = "1280x720", fps: float = 30.0) -> dict:
    import resource

    import psutil
    import pyvirtualcam

    from .audio_source import AudioRing, FileSource
    from .compositor import OutputFormat, parse_size
    from .engine import Wav2LipEngine
    from .frame_clock import FrameClock
    from .pipeline import LivePipeline, summarize
    from .portrait import Portrait
    from .renderer import FrameRenderer, Wav2LipLipSync
    from .sinks import VirtualCameraSink

    pyvirtualcam.register_backend("avatar-cam-bench", _CountingCamera)
    with tempfile.TemporaryDirectory(prefix="avatar-cam-bench-") as tmp:
        work = Path(tmp)
        ckpt, weights_note = _checkpoint_for_bench(checkpoint, work)
        speech = bench_speech(audio, work, seconds)
        w, h = parse_size(size)
        clock = FrameClock(fps)
        engine = Wav2LipEngine.from_checkpoint(ckpt, cache_dir=work / "cache")
        renderer = FrameRenderer(Wav2LipLipSync(engine), Portrait.load(bench_photo(photo, work)), OutputFormat(w, h), clock)
        ring = AudioRing()
        camera = VirtualCameraSink(w, h, fps, backend="avatar-cam-bench")
        pipeline = LivePipeline(renderer, [camera], ring, clock)
        source = FileSource(speech, ring, realtime=True)
        cpu, t0 = ProcessCpu(), time.monotonic()
        run_for(pipeline, source, seconds, cleanup=(camera.close,))
        cpu_pct, t1 = cpu.percent(), time.monotonic()
    result = summarize(pipeline.stats.records, fps)
    result.update({
        "seconds": round(t1 - t0, 1),
        "size": size,
        "weights": weights_note,
        "cpu_pct": cpu_pct,
        "rss_mb": round(psutil.Process().memory_info().rss / 2**20, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    })
    return result


def run_live_bench(args: argparse.Namespace) -> int:
    return answer(args, live_bench(args.seconds, args.photo, args.audio, args.checkpoint, args.size, args.fps),
                  _describe_live)


def _describe_live(r: dict) -> None:
    print(f"live path, {r['seconds']} s at {r['size']} ({r['weights']})")
    print(f"  fps {r['fps']}, late frames {r['late_frames_pct']}%, frames with inference {r['inferred_pct']}%")
    print(f"  mouth latency p50 {r['latency_ms_p50']} ms, p95 {r['latency_ms_p95']} ms")
    print(f"  CPU {r['cpu_pct']}% of one core, RSS {r['rss_mb']} MB (peak {r['peak_rss_mb']} MB)")
