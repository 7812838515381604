"""The mp4 recorder: H.264 video through ffmpeg, with the sound muxed in at the end.

`send` and `write_audio` run on the thread that draws frames (the pipeline's, or the render loop's).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from avatar_cam.errors import AvatarCamError


def ffmpeg_exe() -> str:
    """The ffmpeg shipped inside the imageio-ffmpeg wheel, else one on PATH."""
    try:
        import imageio_ffmpeg

        return imageio_ffmpeg.get_ffmpeg_exe()
    except (ImportError, RuntimeError):
        exe = shutil.which("ffmpeg")
        if exe is None:
            raise AvatarCamError("ffmpeg is needed to write mp4 files", hint="pip install imageio-ffmpeg") from None
        return exe


class Mp4Recorder:
    """H.264 mp4 with the audio muxed in. Frames stream into ffmpeg as they come; audio is added at `close()`.

    `audio` is a file to mux, or None to mux what was given to `write_audio` (16 kHz mono, for live recording).
    The output appears only when complete: it is written under a temporary name and renamed.
    """

    def __init__(self, path: str | Path, width: int, height: int, fps: float, audio: str | Path | None = None):
        self.path = Path(path)
        self._audio_file = Path(audio) if audio else None
        self._tmpdir = Path(tempfile.mkdtemp(prefix="avatar-cam-rec-"))
        self._video = self._tmpdir / "video.mp4"
        self._pcm: list[np.ndarray] = []
        self.frames = 0
        cmd = [ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y",
               "-f", "rawvideo", "-pix_fmt", "bgr24", "-s", f"{width}x{height}", "-r", f"{fps}", "-i", "-",
               "-c:v", "libx264", "-preset", "veryfast", "-crf", "20", "-pix_fmt", "yuv420p", "-threads", "1",
               str(self._video)]
        self._proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stderr=subprocess.PIPE)

    def send(self, frame: np.ndarray) -> None:
        try:
            self._proc.stdin.write(np.ascontiguousarray(frame).tobytes())
        except BrokenPipeError:
            raise AvatarCamError(f"the mp4 encoder stopped: {self._proc.stderr.read().decode(errors='replace')[-300:]}") from None
        self.frames += 1

    def write_audio(self, samples: np.ndarray) -> None:
        self._pcm.append(np.asarray(samples, np.float32).copy())

    def close(self) -> None:
        if self._proc is None:
            return
        proc, self._proc = self._proc, None
        proc.stdin.close()
        err = proc.stderr.read().decode(errors="replace")
        if proc.wait() != 0:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            raise AvatarCamError(f"writing {self.path.name} failed: {err.strip()[-300:]}")
        audio = self._audio_file
        if audio is None and self._pcm:
            import soundfile

            audio = self._tmpdir / "audio.wav"
            soundfile.write(audio, np.concatenate(self._pcm), 16000)
        partial = self.path.with_name(f".{self.path.name}.part.mp4")
        cmd = [ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y", "-i", str(self._video)]
        if audio is not None:
            cmd += ["-i", str(audio), "-map", "0:v:0", "-map", "1:a:0", "-c:a", "aac", "-b:a", "128k"]
        cmd += ["-c:v", "copy", "-movflags", "+faststart", str(partial)]
        done = subprocess.run(cmd, capture_output=True, text=True)
        shutil.rmtree(self._tmpdir, ignore_errors=True)
        if done.returncode != 0:
            partial.unlink(missing_ok=True)
            raise AvatarCamError(f"muxing {self.path.name} failed: {done.stderr.strip()[-300:]}")
        os.replace(partial, self.path)
