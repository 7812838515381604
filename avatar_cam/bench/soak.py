"""`avatar-cam bench soak`: a long call, simulated: the live path in real time for N minutes.

Speech and silence alternate (espeak-ng sentences, then a few seconds of quiet), played in real time into the
ring as a microphone would, through the real pipeline into a counting camera. What a long call breaks is
measured while it runs, in bounded memory (the pipeline's own record list is bounded and trimmed, so it
cannot be the source of truth for an hours-long run):

- `fps`, `late_frames_pct`: as in `bench live` (late = left more than a frame period after its slot, or
  never);
- `latency_ms_p95_start` / `_end`: mouth latency (sound captured -> frame out) over the first and last 10 %;
- `av_drift_ms`: median latency of the last 10 % minus that of the first 10 %: how far picture and sound
  drifted apart over the call;
- `rss_growth_mb`: RSS at the end minus RSS after the warm-up (the first minute, or 10 % of a shorter run);
- `max_stall_ms`: the largest gap between two frames reaching the camera, after the first frame.

Threads: the frame thread calls `SoakMeter.on_frame` and the camera; an "rss" thread samples memory.
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pyvirtualcam

from avatar_cam.audio.ring import AudioRing
from avatar_cam.audio.sources import FileSource, load_audio
from avatar_cam.bench.cameras import COUNTING_BACKEND, CountingCamera
from avatar_cam.bench.common import answer, bench_renderer, bench_speech, picture_options, run_for
from avatar_cam.live.pipeline import LivePipeline
from avatar_cam.outputs.camera import VirtualCameraSink

SILENCE_S = 3.0  # between sentences: long enough for the voice gate to close and idle motion to take over


class SoakMeter:
    """Running figures over every frame of a run, without keeping every frame. Frame thread only."""

    def __init__(self, fps: float, seconds: float):
        self.fps, self.seconds = fps, seconds
        self.window = 0.1 * seconds
        self.t0: float | None = None
        self.last: float | None = None
        self.max_gap, self.max_gap_at = 0.0, 0.0
        self.stalls = 0  # gaps over 100 ms (the limit)
        self.stall_log: list[tuple[float, float]] = []  # (monotonic start, end) of the first 200 of them
        self.frames = self.live = self.late = self.skipped = 0
        self.first_live = self.last_live = None
        self.last_index: int | None = None
        self.start_lat: list[float] = []  # bounded: 10 % of the run's frames
        self.end_lat: list[float] = []

    def on_frame(self, frame, rec) -> None:
        now = rec.emitted
        if self.t0 is None:
            self.t0 = now
        if self.last is not None:
            gap = now - self.last
            if gap > self.max_gap:
                self.max_gap, self.max_gap_at = gap, now - self.t0
            if gap > 0.1:
                self.stalls += 1
                if len(self.stall_log) < 200:
                    self.stall_log.append((self.last, now))
        self.last = now
        self.frames += 1
        if rec.index < 0:  # a keep-alive frame: the audio stalled (it should not, from a file)
            return
        self.live += 1
        self.first_live = self.first_live if self.first_live is not None else now
        self.last_live = now
        if self.last_index is not None:
            self.skipped += max(0, rec.index - self.last_index - 1)
        self.last_index = rec.index
        if rec.late > 1.0 / self.fps:
            self.late += 1
        if rec.latency is not None:
            t = now - self.t0
            if t < self.window:
                self.start_lat.append(rec.latency)
            elif t >= self.seconds - self.window:
                self.end_lat.append(rec.latency)

    def _ours(self, canary: MachineCanary | None) -> dict:
        """Stalls over 100 ms split into the machine's (the canary saw them too) and ours."""
        if canary is None:
            return {"stalls": _describe(self.stall_log, self.t0 or 0.0)}
        theirs = [s for s in self.stall_log if canary.explains(*s)]
        ours = [s for s in self.stall_log if not canary.explains(*s)]
        return {
            "max_stall_ms_ours": round(1000 * max((b - a for a, b in ours), default=0.0), 1),
            "stalls_ours": _describe(ours, self.t0 or 0.0),
            "stalls_machine": _describe(theirs, self.t0 or 0.0),
            "machine_stall_ms_max": round(1000 * max((g for _, g in canary.gaps), default=0.0), 1),
        }

    def result(self, canary: MachineCanary | None = None) -> dict:
        def p(values: list[float], q: float) -> float | None:
            return round(1000.0 * float(np.percentile(values, q)), 1) if values else None

        span = (self.last_live or 0.0) - (self.first_live or 0.0)
        expected = self.live + self.skipped
        start50, end50 = p(self.start_lat, 50), p(self.end_lat, 50)
        return {
            "frames": self.frames,
            "fps": round((self.live - 1) / span, 2) if span > 0 else 0.0,
            "late_frames_pct": round(100.0 * (self.late + self.skipped) / expected, 2) if expected else 100.0,
            "latency_ms_p50_start": start50,
            "latency_ms_p50_end": end50,
            "latency_ms_p95_start": p(self.start_lat, 95),
            "latency_ms_p95_end": p(self.end_lat, 95),
            "av_drift_ms": round(end50 - start50, 1) if start50 is not None and end50 is not None else None,
            "max_stall_ms": round(1000.0 * self.max_gap, 1),
            "max_stall_at_s": round(self.max_gap_at, 1),
            "stalls_over_100ms": self.stalls,
            **self._ours(canary),
        }


_CANARY = """
import sys, time
# A little work, a short sleep, forever: any gap over 50 ms means this machine stopped running us.
while True:
    t = time.monotonic()
    sum(range(2000))
    time.sleep(0.005)
    gap = time.monotonic() - t
    if gap > 0.05:
        print(f"{t:.4f} {gap:.4f}", flush=True)
"""


class MachineCanary:
    """A separate process that notices when the machine (not our process) stops running programs.

    Shared CI machines deschedule everything now and then; a frame gap that coincides with a canary gap is
    the machine's, one without is ours. time.monotonic() is one clock for every process on Linux and macOS.
    """

    def __init__(self):
        import subprocess
        import sys

        self._proc = subprocess.Popen([sys.executable, "-c", _CANARY], stdout=subprocess.PIPE, stdin=subprocess.DEVNULL,
                                      text=True)
        self.gaps: list[tuple[float, float]] = []  # (monotonic start, seconds)

    def stop(self) -> None:
        self._proc.terminate()
        out, _ = self._proc.communicate(timeout=10)
        self.gaps = [(float(a), float(b)) for a, b in (line.split() for line in out.splitlines() if line.strip())]

    def explains(self, start: float, end: float) -> bool:
        """Did the machine stall for at least half of [start, end]?"""
        covered = sum(max(0.0, min(end, t + g) - max(start, t)) for t, g in self.gaps)
        return covered >= 0.5 * (end - start)


def _describe(stalls: list[tuple[float, float]], t0: float) -> list[str]:
    return [f"{1000 * (b - a):.0f} ms at {a - t0:.1f} s" for a, b in stalls[:20]]


class RssSampler:
    """Samples this process's RSS once a second on an "rss" thread; `at(t)` is the sample nearest after t."""

    def __init__(self, every: float = 1.0):
        import psutil

        self._proc, self._every = psutil.Process(), every
        self.samples: list[tuple[float, int]] = []  # one a second: 3600 for an hour
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        while True:
            self.samples.append((time.monotonic(), self._proc.memory_info().rss))
            if self._stop.wait(self._every):
                return

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self.samples.append((time.monotonic(), self._proc.memory_info().rss))

    def at(self, t: float) -> int:
        return next((rss for when, rss in self.samples if when >= t), self.samples[-1][1])


def soak_audio(explicit: Path | None, workdir: Path) -> np.ndarray:
    """One period of the loop: a sentence (or the given file) and then SILENCE_S of quiet, 16 kHz mono."""
    if explicit is not None:
        speech = load_audio(explicit)
    else:  # espeak-ng's sentences, without the silence bench_speech puts after them
        speech = load_audio(bench_speech(None, workdir, 0.0))
        speech = speech[: int(np.flatnonzero(np.abs(speech) > 1e-3)[-1]) + 1]
    return np.concatenate([speech, np.zeros(round(SILENCE_S * 16000), np.float32)])


def soak(minutes: float, photo: Path | None = None, audio: Path | None = None, checkpoint: Path | None = None,
         engine: str = "wav2lip", size: str = "1280x720", fps: float = 30.0) -> dict:
    seconds = 60.0 * minutes
    pyvirtualcam.register_backend(COUNTING_BACKEND, CountingCamera)
    with tempfile.TemporaryDirectory(prefix="avatar-cam-soak-") as tmp:
        work = Path(tmp)
        renderer, clock, weights_note = bench_renderer(work, engine, photo, checkpoint, size, fps)
        loop = soak_audio(audio, work)
    w, h = renderer.compositor.fmt.width, renderer.compositor.fmt.height
    ring = AudioRing()
    camera = VirtualCameraSink(w, h, fps, backend=COUNTING_BACKEND)
    meter = SoakMeter(fps, seconds)
    pipeline = LivePipeline(renderer, [camera], ring, clock, on_frame=meter.on_frame)
    source = FileSource(loop, ring, realtime=True, loop=True)
    rss = RssSampler()
    canary = MachineCanary()
    t0 = time.monotonic()
    rss.start()
    run_for(pipeline, source, seconds, cleanup=(camera.close, rss.stop, canary.stop))
    t1 = time.monotonic()
    warm = t0 + min(60.0, 0.1 * seconds)
    result = meter.result(canary)
    result.update({
        "seconds": round(t1 - t0, 1),
        "size": size,
        "engine": engine,
        "weights": weights_note,
        "loop_s": round(len(loop) / 16000, 1),
        "rss_growth_mb": round((rss.samples[-1][1] - rss.at(warm)) / 2**20, 1),
        "rss_mb_after_warmup": round(rss.at(warm) / 2**20, 1),
        "rss_mb_end": round(rss.samples[-1][1] / 2**20, 1),
        "rss_mb_max": round(max(r for _, r in rss.samples) / 2**20, 1),
        "pipeline_records_kept": len(pipeline.stats.records),
    })
    return result


def register(kinds: argparse._SubParsersAction) -> None:
    options = picture_options("speech to loop, with silence added after it (default: espeak-ng speech)")
    p = kinds.add_parser("soak", parents=[options],
                         help="a long call: fps, latency at start vs end, memory growth, stalls, A/V drift")
    p.add_argument("--minutes", type=float, default=60.0, help="how long to run (default 60)")
    p.add_argument("--engine", choices=("wav2lip", "lite"), default="wav2lip")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    return answer(args, soak(args.minutes, args.photo, args.audio, args.checkpoint, args.engine, args.size, args.fps),
                  _print_soak)


def _print_soak(r: dict) -> None:
    print(f"soak: {r['seconds']} s at {r['size']}, {r['engine']} ({r['weights']}), speech/silence loop of {r['loop_s']} s")
    print(f"  fps {r['fps']}, late frames {r['late_frames_pct']}%, longest gap between frames {r['max_stall_ms']} ms "
          f"(at {r['max_stall_at_s']} s); over 100 ms: {r['stalls_over_100ms']}, of which ours: {r['stalls_ours']}")
    print(f"  the machine itself stalled (a canary process saw it) up to {r['machine_stall_ms_max']} ms")
    print(f"  mouth latency p95: first 10% {r['latency_ms_p95_start']} ms, last 10% {r['latency_ms_p95_end']} ms; "
          f"A/V drift {r['av_drift_ms']} ms")
    print(f"  RSS after warm-up {r['rss_mb_after_warmup']} MB, at the end {r['rss_mb_end']} MB "
          f"(growth {r['rss_growth_mb']} MB, max {r['rss_mb_max']} MB)")
