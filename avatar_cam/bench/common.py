"""What every bench shares: its options, its answer (JSON or text), a timed run, CPU use, and its inputs
(the installed weights or seeded random ones, the astronaut portrait, espeak-ng speech with pauses).

Speeds are only compared inside one run (the machines are shared and noisy), so every figure that has a
baseline is reported as a ratio measured side by side.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import subprocess
import threading
import time
from pathlib import Path

import numpy as np

from avatar_cam.errors import AvatarCamError, ModelNotInstalledError


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


def run_for(pipeline, source, seconds: float, cleanup=(), at_end=None) -> None:
    """Feed `pipeline` from `source` and run it on this thread for `seconds`; then stop both and run `cleanup`.
    `at_end()` is called once the time is up, while every thread still runs."""

    def end() -> None:
        if at_end is not None:
            at_end()
        pipeline.stop()

    timer = threading.Timer(seconds, end)
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
    """This process's CPU use since it was made, in % of one core; `by_thread` splits it by thread.

    A thread's time is gone from the OS once it ends: call `by_thread` while the threads still run, or run the
    work inside `sampling()`, which looks every `every_s` and keeps each thread's last reading (a render's
    threads end with it). A thread's last `every_s` may go unseen, and more while a thread computes in Python
    (a look waits for the GIL); the total, `seconds()`, is exact."""

    def __init__(self):
        import psutil

        self._proc = psutil.Process()
        self._t0, self._cpu0 = time.monotonic(), self._cpu()
        self._threads0 = self._thread_cpu()
        self._seen: dict[int, tuple[str, float]] = {}  # thread id -> (name, CPU seconds) at the last look
        self._lock = threading.Lock()

    def _thread_cpu(self) -> dict[int, float]:
        return {t.id: t.user_time + t.system_time for t in self._proc.threads()}

    def _look(self) -> None:
        names = {t.native_id: t.name for t in threading.enumerate()}
        now = self._thread_cpu()
        with self._lock:
            for tid, cpu in now.items():
                # A name once known sticks: an ending thread leaves Python's list a moment before the OS's.
                known = self._seen.get(tid, ("native", 0.0))[0]
                self._seen[tid] = (names.get(tid, known), cpu)

    @contextlib.contextmanager
    def sampling(self, every_s: float = 0.02):
        """Look at the threads every `every_s` while the block runs (on a thread of its own)."""
        done = threading.Event()

        def look() -> None:
            while not done.wait(every_s):
                self._look()

        watcher = threading.Thread(target=look, name="cpu-watch", daemon=True)
        watcher.start()
        try:
            yield self
        finally:
            done.set()
            watcher.join()

    def seconds_by_thread(self) -> dict[str, float]:
        """CPU seconds per thread name since this was made (threads Python did not start, OpenVINO's and
        PortAudio's, are summed as "native"; `sampling`'s own is "cpu-watch")."""
        self._look()
        out: dict[str, float] = {}
        with self._lock:
            for tid, (name, cpu) in self._seen.items():
                out[name] = out.get(name, 0.0) + cpu - self._threads0.get(tid, 0.0)
        return out

    def seconds(self) -> float:
        """CPU seconds of the whole process since this was made, ended threads included."""
        return self._cpu() - self._cpu0

    def by_thread(self) -> dict[str, float]:
        """% of one core per thread since this was made, by the thread's name (the pipeline's frame thread is
        the caller's, "MainThread"; see `seconds_by_thread`)."""
        took = max(time.monotonic() - self._t0, 1e-9)
        pcts = {name: 100.0 * cpu / took for name, cpu in self.seconds_by_thread().items()}
        return {name: round(pct, 1) for name, pct in sorted(pcts.items(), key=lambda kv: -kv[1]) if pct >= 0.05}

    def _cpu(self) -> float:
        t = self._proc.cpu_times()
        return t.user + t.system

    def percent(self) -> float:
        return round(100.0 * (self._cpu() - self._cpu0) / max(time.monotonic() - self._t0, 1e-9), 1)


def checkpoint_for_bench(explicit: Path | None, workdir: Path) -> tuple[Path, str]:
    if explicit is not None:
        return explicit, str(explicit)
    try:
        from avatar_cam.weights.store import installed_checkpoint

        path = installed_checkpoint()
        return path, f"installed {path.name}"
    except ModelNotInstalledError:
        from avatar_cam.wav2lip.arch import random_state_dict
        from avatar_cam.wav2lip.checkpoint import write_checkpoint

        path = workdir / "wav2lip_random.pth"
        write_checkpoint(random_state_dict(seed=0), path)
        return path, "seeded random weights in the published layout (same network, same cost)"


def bench_photo(explicit: Path | None, workdir: Path) -> Path:
    if explicit is not None:
        return explicit
    try:
        import cv2
        from skimage import data
    except ImportError:
        raise AvatarCamError("no portrait to benchmark with", hint="pass --photo PATH") from None
    path = workdir / "astronaut.png"
    cv2.imwrite(str(path), cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR))
    return path


def bench_speech(explicit: Path | None, workdir: Path, seconds: float) -> Path:
    """Speech with pauses, long enough for the run: espeak-ng sentences separated by silence."""
    import soundfile

    from avatar_cam.audio.sources import load_audio

    if explicit is not None:
        audio = load_audio(explicit)
    else:
        if shutil.which("espeak-ng") is None:
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


def bench_renderer(work: Path, engine: str = "wav2lip", photo: Path | None = None, checkpoint: Path | None = None,
                   size: str = "1280x720", fps: float = 30.0, performance: str = "balanced"):
    """(renderer, clock, weights note) for a bench: the product's wiring (live/assemble.py), the engine loaded
    from the installed or seeded weights with its caches in `work`, and warmed up."""
    from avatar_cam.lipsync.lite import LiteLipSync
    from avatar_cam.lipsync.wav2lip import Wav2LipLipSync
    from avatar_cam.live.assemble import Picture, build_renderer, load_portrait
    from avatar_cam.live.frame_clock import FrameClock
    from avatar_cam.live.performance import performance as mode
    from avatar_cam.video.compositor import OutputFormat, parse_size

    if engine == "lite":
        lipsync, weights_note = LiteLipSync(), "lite engine (no model)"
    else:
        ckpt, weights_note = checkpoint_for_bench(checkpoint, work)
        lipsync = Wav2LipLipSync.from_checkpoint(ckpt, cache_dir=work / "cache", threads=mode(performance).threads)
    w, h = parse_size(size)
    picture = Picture(fmt=OutputFormat(w, h), clock=FrameClock(fps), engine=engine, performance=performance)
    return build_renderer(load_portrait(bench_photo(photo, work)), picture, lipsync), picture.clock, weights_note
