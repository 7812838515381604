"""`avatar-cam bench preview`: what the preview window's process costs, X11 window and OpenCV's side by side.

Both windows are opened in turn, in the same run, and fed the same frames (random pictures at `--size`, which the
preview scales to 640 wide) at `--fps` for `--seconds` each. Reported per window: the window process's CPU (% of
one core) and memory (RSS at the end). Our side (the sink's feeding thread) is the same for both and not counted.
Needs a display (DISPLAY on Linux).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import psutil

from avatar_cam.bench.common import answer
from avatar_cam.outputs.preview import PreviewSink
from avatar_cam.outputs.preview_window import x11_usable


def feed_window(opencv: bool, size: tuple[int, int], fps: float, seconds: float) -> dict:
    """One preview window fed for `seconds`: its process's CPU and memory."""
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 255, (size[1], size[0], 3), np.uint8) for _ in range(4)]
    sink = PreviewSink(title="Avatar Cam preview (bench)", opencv=opencv)
    try:
        window = psutil.Process(sink.pid)
        start_cpu, start = sum(window.cpu_times()[:2]), time.monotonic()
        n = 0
        while (now := time.monotonic()) - start < seconds:
            sink.send(frames[n % len(frames)])
            n += 1
            time.sleep(max(0.0, start + n / fps - now))
        cpu = sum(window.cpu_times()[:2]) - start_cpu
        return {"cpu_pct": round(100 * cpu / (time.monotonic() - start), 1),
                "rss_mb": round(window.memory_info().rss / 2**20), "frames_sent": n, "alive": sink.alive}
    finally:
        sink.close()


def preview_bench(size: tuple[int, int], fps: float, seconds: float) -> dict:
    kinds = {"x11": False, "opencv": True} if x11_usable() else {"opencv": True}
    result: dict = {"size": f"{size[0]}x{size[1]}", "fps": fps, "seconds": seconds}
    for name, opencv in kinds.items():
        result[name] = feed_window(opencv, size, fps, seconds)
    if "x11" in result:
        result["x11_vs_opencv_cpu"] = round(result["x11"]["cpu_pct"] / max(result["opencv"]["cpu_pct"], 0.1), 2)
    return result


def register(kinds: argparse._SubParsersAction) -> None:
    p = kinds.add_parser("preview", help="the preview window process's CPU and memory, X11 and OpenCV windows")
    p.add_argument("--size", default="1280x720", help="the frames' size (the preview shows them at most 640 wide)")
    p.add_argument("--fps", type=float, default=30.0)
    p.add_argument("--seconds", type=float, default=10.0, help="per window (default 10)")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    w, h = (int(x) for x in args.size.lower().split("x"))
    return answer(args, preview_bench((w, h), args.fps, args.seconds), describe)


def describe(r: dict) -> None:
    print(f"preview window, {r['size']} frames at {r['fps']:g} fps, {r['seconds']:g} s each:")
    for name in ("x11", "opencv"):
        if name in r:
            print(f"  {name:7s} {r[name]['cpu_pct']:5.1f}% of a core, {r[name]['rss_mb']} MB")
    if "x11_vs_opencv_cpu" in r:
        print(f"  X11 / OpenCV CPU: {r['x11_vs_opencv_cpu']:.2f}x")
