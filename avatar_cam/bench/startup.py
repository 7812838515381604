"""`avatar-cam bench startup` and `avatar-cam bench photo-switch`: the daemon's two targets (issue 4).

- startup: from launching `avatar-cam daemon --no-tray` (or `avatar-cam run`) to its first frame in the
  virtual camera, with a warm model cache; target under 3 s. Each launch is a new process, as a user's start
  is. The first launch fills the caches (converted IR, compiled model) and is reported apart, as `cold_s`.
- photo-switch: from `Controller.set_photo` to the first camera frame that shows the new face, with the camera
  left open; target under 1 s. A frame shows the new face when it is nearer (mean absolute difference) to the
  new photo's still frame than to the old one's.

Both run in a private home (XDG dirs in a temporary folder) with the Wav2Lip weights installed there: the
user's installed model if there is one, else seeded random weights in the published layout (same network,
same cost). The camera is a pyvirtualcam backend registered here that notes when frames arrive: the bench
measures our side, not a device driver. Figures are medians over `--runs` repetitions.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from avatar_cam import paths
from avatar_cam.bench.cameras import FIRST_FRAME_BACKEND, FIRST_FRAME_ENV, FRAMES_BACKEND, FramesCamera
from avatar_cam.bench.common import answer, bench_photo, checkpoint_for_bench, picture_options

STARTUP_TARGET_S = 3.0
PHOTO_SWITCH_TARGET_S = 1.0


# Launched in a fresh Python: the real CLI, with the first-frame camera registered (as a backend named
# explicitly, so it can never stand in for a missing real camera).
_LAUNCH = f"""
import sys, pyvirtualcam
from avatar_cam.bench.cameras import FirstFrameCamera
pyvirtualcam.register_backend({FIRST_FRAME_BACKEND!r}, FirstFrameCamera)
from avatar_cam.cli import main
sys.exit(main(sys.argv[1:]))
"""


# ------------------------------------------------------------------------------------------- a private home


@contextlib.contextmanager
def private_home(checkpoint: Path | None):
    """A temporary home (XDG dirs, a short runtime dir for the control socket) with the Wav2Lip weights
    installed in it; yields (workdir, env, weights note). os.environ points at it while the block runs."""
    from avatar_cam.weights.store import import_checkpoint

    with tempfile.TemporaryDirectory(prefix="avatar-cam-bench-") as tmp:
        work = Path(tmp)
        runtime = Path(tempfile.mkdtemp(prefix="acb-", dir="/tmp" if os.name != "nt" else None))  # socket paths are short
        runtime.chmod(0o700)
        ckpt, weights = checkpoint_for_bench(checkpoint, work)  # the user's model, looked up before we move home
        env = {"XDG_RUNTIME_DIR": str(runtime)}
        for var, sub in (("XDG_DATA_HOME", "data"), ("XDG_CACHE_HOME", "cache"), ("XDG_CONFIG_HOME", "config"),
                         ("XDG_STATE_HOME", "state")):
            (work / "home" / sub).mkdir(parents=True)
            env[var] = str(work / "home" / sub)
        try:
            with paths.environ(env):
                import_checkpoint(ckpt, name="wav2lip_gan")
                yield work, env, weights
        finally:
            shutil.rmtree(runtime, ignore_errors=True)


def _photos(photo: Path | None, other: Path | None, work: Path) -> tuple[Path, Path]:
    """Two portraits: the given ones, or the astronaut and her mirror image (another picture of a face)."""
    import cv2

    first = bench_photo(photo, work)
    if other is None:
        other = work / "other.png"
        cv2.imwrite(str(other), np.ascontiguousarray(cv2.imread(str(first))[:, ::-1]))
    return first, other


def _median(values: list[float]) -> float:
    return round(float(np.median(values)), 3)


# ------------------------------------------------------------------------------------------------ startup


def _launch_once(argv: list[str], env: dict, marker: Path, log: Path, timeout: float) -> tuple[float, str | None]:
    """Launch the CLI with `argv`; (seconds from the launch to its first frame, the engine a daemon says it
    runs). Ends it with SIGTERM."""
    from avatar_cam.daemon import control_client
    from avatar_cam.errors import AvatarCamError

    marker.unlink(missing_ok=True)
    with open(log, "ab") as err:
        t0 = time.monotonic()
        proc = subprocess.Popen([sys.executable, "-c", _LAUNCH, *argv], env={**env, FIRST_FRAME_ENV: str(marker)},
                                stdin=subprocess.DEVNULL, stdout=err, stderr=err)
    try:
        while not marker.exists():
            if proc.poll() is not None or time.monotonic() - t0 > timeout:
                tail = log.read_text(errors="replace")[-1500:]
                raise AvatarCamError(f"`avatar-cam {' '.join(argv)}` showed no frame within {timeout:.0f} s "
                                     f"(exit status {proc.poll()}):\n{tail}")
            time.sleep(0.005)
        took = float(marker.read_text()) - t0
        engine = control_client.send("status", timeout=30)["status"]["engine"] if argv[0] == "daemon" else None
        return took, engine
    finally:
        if proc.poll() is None:
            proc.terminate()  # SIGTERM: the daemon shuts down as on logout
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def startup_bench(runs: int = 5, via: str = "daemon", photo: Path | None = None, checkpoint: Path | None = None,
                  size: str = "1280x720", fps: float = 30.0, engine: str = "wav2lip", timeout: float = 180.0) -> dict:
    from avatar_cam.settings import Settings
    from avatar_cam.video.compositor import parse_size

    w, h = parse_size(size)
    with private_home(checkpoint) as (work, env, weights):
        photo, _ = _photos(photo, None, work)
        if via == "daemon":
            Settings(photo=str(photo), engine=engine, camera_backend=FIRST_FRAME_BACKEND, width=w, height=h, fps=fps,
                     camera_on=True).save()
            argv = ["daemon", "--no-tray"]
        else:
            argv = ["run", "--photo", str(photo), "--engine", engine, "--camera-backend", FIRST_FRAME_BACKEND,
                    "--size", size, "--fps", str(fps)]
        launch_env = {**os.environ, **env}
        log, marker = work / "launches.log", work / "first-frame"
        cold, _ = _launch_once(argv, launch_env, marker, log, timeout)
        warm, used = zip(*(_launch_once(argv, launch_env, marker, log, timeout) for _ in range(runs)), strict=True)
    return {
        "via": via, "command": "avatar-cam daemon --no-tray" if via == "daemon" else "avatar-cam run", "runs": runs, "startup_s_p50": _median(warm),
        "startup_s": [round(t, 3) for t in warm], "cold_s": round(cold, 3), "target_s": STARTUP_TARGET_S,
        "meets_target": bool(np.median(warm) < STARTUP_TARGET_S), "engine": used[-1] or engine, "weights": weights,
        "size": size, "fps": fps,
    }


# ------------------------------------------------------------------------------------------- photo switch


def _still_frame(photo: Path, fmt) -> np.ndarray:
    from avatar_cam.video.compositor import Compositor
    from avatar_cam.video.portrait import Portrait

    return Compositor(Portrait.load(photo), fmt).idle_frame.astype(np.int16)


def _first_frame_of(camera: FramesCamera, since: float, want: np.ndarray, other: np.ndarray, timeout: float) -> float:
    """Time of the first frame after `since` nearer to `want` than to `other`."""
    from avatar_cam.errors import AvatarCamError

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for t, frame in camera.since(since):
            f = frame.astype(np.int16)
            if np.abs(f - want).mean() < np.abs(f - other).mean():
                return t
        time.sleep(0.005)
    raise AvatarCamError(f"no frame of the new photo within {timeout:.0f} s")


def photo_switch_bench(runs: int = 5, photo: Path | None = None, other: Path | None = None,
                       checkpoint: Path | None = None, size: str = "1280x720", fps: float = 30.0,
                       engine: str = "wav2lip", timeout: float = 30.0) -> dict:
    import pyvirtualcam

    from avatar_cam.daemon.controller import Controller
    from avatar_cam.errors import AvatarCamError
    from avatar_cam.settings import Settings
    from avatar_cam.video.compositor import OutputFormat, parse_size

    w, h = parse_size(size)
    pyvirtualcam.register_backend(FRAMES_BACKEND, FramesCamera)
    FramesCamera.opened.clear()
    with private_home(checkpoint) as (work, _env, weights):
        photos = _photos(photo, other, work)
        stills = [_still_frame(p, OutputFormat(w, h)) for p in photos]
        controller = Controller(Settings(photo=str(photos[0]), engine=engine, camera_backend=FRAMES_BACKEND,
                                         width=w, height=h, fps=fps), persist=False)
        controller.start()
        try:
            camera = FramesCamera.opened[0]
            _first_frame_of(camera, 0.0, stills[0], stills[1], timeout)  # running, on the first photo
            switch, load = [], []
            for i in range(runs):
                new = (i + 1) % 2
                t0 = time.monotonic()
                controller.set_photo(photos[new])
                load.append(time.monotonic() - t0)
                switch.append(_first_frame_of(camera, t0, stills[new], stills[1 - new], timeout) - t0)
            engine_used = controller.status().engine
        finally:
            controller.stop()
    if len(FramesCamera.opened) != 1:
        raise AvatarCamError(f"the camera was opened {len(FramesCamera.opened)} times: a photo switch reopened it")
    return {
        "runs": runs, "switch_s_p50": _median(switch), "switch_s": [round(t, 3) for t in switch],
        "set_photo_s_p50": _median(load), "camera_opens": len(FramesCamera.opened), "target_s": PHOTO_SWITCH_TARGET_S,
        "meets_target": bool(np.median(switch) < PHOTO_SWITCH_TARGET_S), "engine": engine_used, "weights": weights,
        "size": size, "fps": fps,
    }


# ------------------------------------------------------------------------------------------------ the CLI


def register(kinds: argparse._SubParsersAction) -> None:
    """Add `startup` and `photo-switch` to bench.py's KIND subparsers."""
    common = picture_options(audio_help=None)
    common.add_argument("--runs", type=int, default=5, help="repetitions; the median is reported (default 5)")
    common.add_argument("--engine", choices=("wav2lip", "lite"), default="wav2lip")
    p = kinds.add_parser("startup", parents=[common],
                         help=f"launch to first camera frame, warm model cache (target < {STARTUP_TARGET_S:g} s)")
    p.add_argument("--via", choices=("daemon", "run"), default="daemon",
                   help="launch `avatar-cam daemon --no-tray` (default: what `avatar-cam` starts) or `avatar-cam run`")
    p.set_defaults(func=run_startup)
    p = kinds.add_parser("photo-switch", parents=[common],
                         help=f"set_photo to the first frame of the new face, camera open (target < {PHOTO_SWITCH_TARGET_S:g} s)")
    p.add_argument("--other", type=Path, help="the second portrait (default: the first one mirrored)")
    p.set_defaults(func=run_photo_switch)


def run_startup(args: argparse.Namespace) -> int:
    r = startup_bench(args.runs, args.via, args.photo, args.checkpoint, args.size, args.fps, args.engine)
    return answer(args, r, _describe_startup)


def _describe_startup(r: dict) -> None:
    print(f"startup: `{r['command']}` to the first camera frame, {r['engine']} ({r['weights']}), {r['size']}")
    print(f"  warm: median {r['startup_s_p50']:.2f} s over {r['runs']} launches {r['startup_s']} "
          f"(target < {r['target_s']:g} s: {'met' if r['meets_target'] else 'MISSED'})")
    print(f"  cold (first launch, caches empty): {r['cold_s']:.2f} s")


def run_photo_switch(args: argparse.Namespace) -> int:
    r = photo_switch_bench(args.runs, args.photo, args.other, args.checkpoint, args.size, args.fps, args.engine)
    return answer(args, r, _describe_photo_switch)


def _describe_photo_switch(r: dict) -> None:
    print(f"photo switch: set_photo to the first frame of the new face, {r['engine']} ({r['weights']}), {r['size']}")
    print(f"  median {r['switch_s_p50']:.3f} s over {r['runs']} switches {r['switch_s']} "
          f"(target < {r['target_s']:g} s: {'met' if r['meets_target'] else 'MISSED'}); "
          f"set_photo itself (loading the photo) {r['set_photo_s_p50']:.3f} s; camera opened {r['camera_opens']}x")
