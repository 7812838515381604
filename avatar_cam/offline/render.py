"""The one render loop: a renderer and a sound file -> an mp4 with the sound (`render`, `demo`, `bench render`).

Runs on the caller's thread; the sound file is read as the frames need it (audio/file_stream.py), and an
interrupted render leaves no partial video and an existing output as it was. Inference, drawing and encoding
overlap on threads of their own (the renderer's `render_clip`, the recorder's writer, ffmpeg's process), and
drawing and encoding give way to inference (`DRAW_NICE`).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from pathlib import Path

from avatar_cam.audio.file_stream import StreamedAudio
from avatar_cam.audio.ring import SAMPLE_RATE
from avatar_cam.errors import AvatarCamError
from avatar_cam.live.renderer import DRAW_NICE
from avatar_cam.outputs.recorder import Mp4Recorder


def render_video(renderer, audio_path: Path, output: Path, progress: bool = True) -> str:
    """Render `audio_path` through `renderer` into `output` (mp4 with the sound); returns what to tell the user."""
    from tqdm import tqdm

    audio = StreamedAudio(audio_path)  # decoded as the frames need it: memory does not grow with the length
    fmt, clock = renderer.compositor.fmt, renderer.clock
    n = clock.frame_count(len(audio) / SAMPLE_RATE)
    rec = Mp4Recorder(output, fmt.width, fmt.height, clock.fps, audio=audio_path, nice=DRAW_NICE)
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
    """SIGTERM and SIGHUP end a render like Ctrl-C: through the cleanup, not around it (main thread only)."""
    def handler(signum, _frame):
        raise KeyboardInterrupt

    wanted = [s for s in ("SIGTERM", "SIGHUP") if hasattr(signal, s)]
    previous = {name: signal.signal(getattr(signal, name), handler) for name in wanted}
    try:
        yield
    finally:
        for name, old in previous.items():
            signal.signal(getattr(signal, name), old)
