"""`avatar-cam demo`: a talking-portrait mp4 on any machine, before the user has chosen anything.

It renders with the same code as `avatar-cam render`. The photo is the user's current one, else scikit-image's
astronaut portrait (public domain, NASA) when the `demo` extra is installed. The voice is espeak-ng when it is
installed, else a synthetic voice-like signal (syllables of a vowel with a moving pitch).
"""

from __future__ import annotations

import argparse
import logging
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from avatar_cam.errors import AvatarCamError

log = logging.getLogger(__name__)

DEMO_TEXT = ("Hello! This is Avatar Cam. One photo, a microphone, and your face talks on any video call, "
             "on a plain laptop processor.")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="render a short talking-portrait video (no camera or microphone needed)")
    p.add_argument("--output", "-o", type=Path, default=Path("avatar-cam-demo.mp4"))
    p.add_argument("--photo", type=Path, help="portrait to use (default: your current photo, else a sample)")
    p.add_argument("--audio", type=Path, help="speech to use (default: espeak-ng, else a synthetic voice)")
    p.set_defaults(func=cmd_demo)


def synthetic_voice(seconds: float = 6.0, sr: int = 16000, seed: int = 0) -> np.ndarray:
    """Voice-like audio: syllables (~4 per second) of a harmonic vowel with formants, and short pauses."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    f0 = 130 + 25 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(f0) / sr
    voice = sum(np.sin(k * phase) * np.exp(-((k * f0 - 700) / 400) ** 2) for k in range(1, 30))
    voice += sum(0.5 * np.sin(k * phase) * np.exp(-((k * f0 - 1200) / 300) ** 2) for k in range(1, 30))
    syllables = np.clip(np.sin(2 * np.pi * 4.0 * t + rng.uniform(0, 1)), 0, None) ** 0.7
    phrases = (np.sin(2 * np.pi * 0.35 * t) > -0.6).astype(float)  # a pause now and then
    lead = (t > 0.5) & (t < seconds - 0.5)
    out = voice * syllables * phrases * lead
    return (0.3 * out / max(np.abs(out).max(), 1e-9)).astype(np.float32)


def _demo_audio(explicit: Path | None, workdir: Path) -> Path:
    if explicit is not None:
        return explicit
    import soundfile

    out = workdir / "voice.wav"
    espeak = shutil.which("espeak-ng") or shutil.which("espeak")
    if espeak:
        raw = workdir / "speech.wav"
        subprocess.run([espeak, "-w", str(raw), DEMO_TEXT], check=True, capture_output=True)
        speech, sr = soundfile.read(raw, dtype="float32")
        pad = np.zeros(sr // 2, np.float32)
        soundfile.write(out, np.concatenate([pad, speech, pad]), sr)
    else:
        print("espeak-ng is not installed: using a synthetic voice (install espeak-ng for real speech)")
        soundfile.write(out, synthetic_voice(), 16000)
    return out


def _demo_photo(explicit: Path | None, workdir: Path) -> Path:
    if explicit is not None:
        return explicit
    from avatar_cam.settings import Settings

    current = Settings.load().photo
    if current and Path(current).is_file():
        return Path(current)
    try:
        import cv2
        from skimage import data
    except ImportError:
        raise AvatarCamError(
            "no photo to animate yet",
            hint="pass --photo YOUR_PORTRAIT.jpg, or install the sample photos: pip install 'avatar-cam[demo]'",
        ) from None
    path = workdir / "astronaut.png"
    cv2.imwrite(str(path), cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR))
    return path


def cmd_demo(args: argparse.Namespace) -> int:
    from avatar_cam.cli.render import FPS_DEFAULT
    from avatar_cam.lipsync.registry import make_lipsync
    from avatar_cam.live.assemble import Picture, build_renderer, load_portrait
    from avatar_cam.live.frame_clock import FrameClock
    from avatar_cam.offline.render import render_video

    with tempfile.TemporaryDirectory(prefix="avatar-cam-demo-") as tmp:
        work = Path(tmp)
        photo, audio = _demo_photo(args.photo, work), _demo_audio(args.audio, work)
        picture = Picture(clock=FrameClock(FPS_DEFAULT))
        lipsync = make_lipsync(picture.engine, picture.device, picture.precision, streams=0)  # every core: offline
        renderer = build_renderer(load_portrait(photo), picture, lipsync)
        print(render_video(renderer, audio, args.output))
    print(f"open {args.output} to watch it; `avatar-cam run --photo YOUR_PHOTO` does this live into the Avatar Cam camera")
    return 0
