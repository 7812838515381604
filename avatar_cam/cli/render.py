"""`avatar-cam render`: photo + audio file -> a lip-synced mp4 with the sound, as fast as the machine allows.

`render_video` is the one render loop: `render` and `demo` both call it.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from avatar_cam.audio.mel import melspectrogram
from avatar_cam.audio.ring import SAMPLE_RATE
from avatar_cam.audio.sources import load_audio
from avatar_cam.cli.picture_options import add_picture_options, renderer_from_args
from avatar_cam.outputs.recorder import Mp4Recorder

FPS_DEFAULT = 25.0


def register(sub: argparse._SubParsersAction) -> None:
    render = sub.add_parser("render", help="render a lip-synced mp4 from a photo and an audio file, as fast as possible")
    add_picture_options(render, photo_required=True)
    render.add_argument("--audio", type=Path, required=True, help="speech audio (wav, mp3, flac, ogg)")
    render.add_argument("--output", "-o", type=Path, required=True, help="the mp4 to write")
    render.add_argument("--no-progress", action="store_true")
    render.set_defaults(func=cmd_render, fps_default=FPS_DEFAULT)


def render_video(renderer, audio_path: Path, output: Path, progress: bool = True) -> str:
    """Render `audio_path` through `renderer` into `output` (mp4 with the sound); returns what to tell the user."""
    from tqdm import tqdm

    audio = load_audio(audio_path)
    fmt, clock = renderer.compositor.fmt, renderer.clock
    n = clock.frame_count(len(audio) / SAMPLE_RATE)
    mel = melspectrogram(audio)
    rec = Mp4Recorder(output, fmt.width, fmt.height, clock.fps, audio=audio_path)
    t0 = time.perf_counter()
    try:
        with tqdm(total=n, unit="frame", desc=f"rendering {output.name}", disable=not progress, file=sys.stderr) as bar:
            for frame, _info in renderer.render_clip(mel, audio):
                rec.send(frame)
                bar.update()
    finally:
        rec.close()
    took = time.perf_counter() - t0
    seconds = len(audio) / SAMPLE_RATE
    return (f"wrote {output}: {rec.frames} frames at {clock.fps:g} fps, {seconds:.2f} s of audio, "
            f"{seconds / took:.1f}x real time ({renderer.lipsync.name} engine)")


def cmd_render(args: argparse.Namespace) -> int:
    renderer, _picture = renderer_from_args(args, FPS_DEFAULT)
    print(render_video(renderer, args.audio, args.output, progress=not args.no_progress))
    return 0
