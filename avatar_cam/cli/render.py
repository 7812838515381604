"""`avatar-cam render`: photo + audio file -> a lip-synced mp4 with the sound, as fast as the machine allows.

`render_video` is the one render loop: `render` and `demo` both call it.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import time
from pathlib import Path

from avatar_cam.audio.file_stream import StreamedAudio
from avatar_cam.audio.ring import SAMPLE_RATE
from avatar_cam.cli.picture_options import add_picture_options, renderer_from_args
from avatar_cam.errors import AvatarCamError
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

    audio = StreamedAudio(audio_path)  # decoded as the frames need it: memory does not grow with the length
    fmt, clock = renderer.compositor.fmt, renderer.clock
    n = clock.frame_count(len(audio) / SAMPLE_RATE)
    rec = Mp4Recorder(output, fmt.width, fmt.height, clock.fps, audio=audio_path)
    t0 = time.perf_counter()
    try:
        with tqdm(total=n, unit="frame", desc=f"rendering {output.name}", disable=not progress, file=sys.stderr) as bar:
            for frame, _info in renderer.render_clip(audio.mel, audio):
                rec.send(frame)
                bar.update()
    except BaseException:  # Ctrl-C, SIGTERM, an error: no partial video, an existing output stays as it was
        rec.abort()
        raise
    rec.close()
    took = time.perf_counter() - t0
    seconds = len(audio) / SAMPLE_RATE
    return (f"wrote {output}: {rec.frames} frames at {clock.fps:g} fps, {seconds:.2f} s of audio, "
            f"{seconds / took:.1f}x real time ({renderer.lipsync.name} engine)")


def refuse_overwriting_inputs(output: Path, **inputs: Path | None) -> None:
    """An output that is one of the inputs would destroy it: refuse, before anything is read or written."""
    for what, path in inputs.items():
        if path is None:
            continue
        same = output.resolve() == path.resolve()
        with contextlib.suppress(OSError):
            same = same or (output.exists() and os.path.samefile(output, path))
        if same:
            raise AvatarCamError(f"the output {output} is the {what} file: rendering would overwrite it",
                                 hint="choose another output name, e.g. --output talk.mp4")


@contextlib.contextmanager
def interrupt_on_termination():
    """SIGTERM and SIGHUP end a render like Ctrl-C: through the cleanup, not around it."""
    def handler(signum, _frame):
        raise KeyboardInterrupt

    wanted = [s for s in ("SIGTERM", "SIGHUP") if hasattr(signal, s)]
    previous = {name: signal.signal(getattr(signal, name), handler) for name in wanted}
    try:
        yield
    finally:
        for name, old in previous.items():
            signal.signal(getattr(signal, name), old)


def cmd_render(args: argparse.Namespace) -> int:
    refuse_overwriting_inputs(args.output, audio=args.audio, photo=args.photo)
    renderer, _picture = renderer_from_args(args, FPS_DEFAULT)
    existed = args.output.exists()
    try:
        with interrupt_on_termination():
            print(render_video(renderer, args.audio, args.output, progress=not args.no_progress))
    except KeyboardInterrupt:
        kept = "; the existing file is unchanged" if existed else ""
        print(f"avatar-cam: interrupted: {args.output} was not written{kept}", file=sys.stderr)
        return 130
    return 0
