"""`avatar-cam render`: photo + audio file -> a lip-synced mp4 with the sound, as fast as the machine allows
(the loop is offline/render.py's, which `demo` and `bench render` use too)."""

from __future__ import annotations

import argparse
from pathlib import Path

from avatar_cam.cli.picture_options import add_picture_options, renderer_from_args
from avatar_cam.offline.render import render_video

FPS_DEFAULT = 25.0


def register(sub: argparse._SubParsersAction) -> None:
    render = sub.add_parser("render", help="render a lip-synced mp4 from a photo and an audio file, as fast as possible")
    add_picture_options(render, photo_required=True)
    render.add_argument("--audio", type=Path, required=True, help="speech audio (wav, mp3, flac, ogg)")
    render.add_argument("--output", "-o", type=Path, required=True, help="the mp4 to write")
    render.add_argument("--no-progress", action="store_true")
    render.set_defaults(func=cmd_render, fps_default=FPS_DEFAULT)


def cmd_render(args: argparse.Namespace) -> int:
    renderer, _picture = renderer_from_args(args, FPS_DEFAULT, whole_machine=True)
    print(render_video(renderer, args.audio, args.output, progress=not args.no_progress))
    return 0
