"""The one render loop: a renderer and a sound file -> an mp4 with the sound (`render`, `demo`, `bench render`).

Runs on the caller's thread; the renderer's `render_clip` draws mouths one batch ahead on a thread of its own, and
ffmpeg encodes in its own process, so inference, compositing and encoding overlap.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from avatar_cam.audio.mel import melspectrogram
from avatar_cam.audio.ring import SAMPLE_RATE
from avatar_cam.audio.sources import load_audio
from avatar_cam.outputs.recorder import Mp4Recorder


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
