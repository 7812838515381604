"""The mp4 recorder: H.264 video through ffmpeg, with the sound muxed in at the end.

`send` and `write_audio` run on the thread that draws frames (the pipeline's, or the render loop's); the
recorder's own "mp4-writer" thread owns ffmpeg's input: it converts each frame to I420 and writes it, so the
drawing thread never waits while ffmpeg encodes (a live camera keeps its cadence; a render draws the next
frames meanwhile).
"""

from __future__ import annotations

import contextlib
import os
import queue
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

import cv2
import numpy as np

from avatar_cam.errors import AvatarCamError
from avatar_cam.thread_priority import give_way, niced


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


# x264 at veryfast with the cheapest motion search (diamond, sub-pixel level 1, one reference frame): 5.3 ms of
# CPU a 720p frame instead of 9.4 (with the frame handed over in I420, not BGR), for files ~15% larger
# (BENCHMARKS.md, session 5). A render shares two cores with the engine: the encoder's CPU is the render's speed.
X264 = ["-c:v", "libx264", "-preset", "veryfast", "-x264-params", "me=dia:subme=1:ref=1", "-crf", "20"]
QUEUED_FRAMES = 8  # frames drawn but not yet handed to ffmpeg (~11 MB at 720p); `send` waits beyond this


class Mp4Recorder:
    """H.264 mp4 with the audio muxed in. Frames stream into ffmpeg as they come; audio is added at `close()`.

    `audio` is a file to mux, or None to mux what was given to `write_audio` (16 kHz mono, for live recording).
    The output appears only when complete: it is written under a temporary name and renamed by `close()`.
    `abort()` (an interrupted render) throws the partial video away and leaves an existing output as it was.
    `nice` > 0: the encoder (the writer thread and ffmpeg) gives way to the rest of the machine (a render's
    inference); a live recording leaves it at 0, so a busy machine never holds the camera's frames back.
    """

    def __init__(self, path: str | Path, width: int, height: int, fps: float, audio: str | Path | None = None,
                 nice: int = 0):
        self.path = Path(path)
        self._audio_file = Path(audio) if audio else None
        self._tmpdir = Path(tempfile.mkdtemp(prefix="avatar-cam-rec-"))
        self._video = self._tmpdir / "video.mp4"
        self._pcm: list[np.ndarray] = []
        self.frames = 0
        self._size = (width, height)
        cmd = [ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y",
               "-f", "rawvideo", "-pix_fmt", "yuv420p", "-s", f"{width}x{height}", "-r", f"{fps}", "-i", "-",
               *X264, "-pix_fmt", "yuv420p", "-threads", "1", str(self._video)]
        self._proc = subprocess.Popen(niced(cmd, nice), stdin=subprocess.PIPE, stderr=subprocess.PIPE)
        self._nice = nice
        self._frames: queue.Queue[np.ndarray | None] = queue.Queue(QUEUED_FRAMES)
        self._failed: str | None = None  # why ffmpeg stopped taking frames (set by the writer)
        self._writer = threading.Thread(target=self._write_frames, args=(self._proc.stdin,), name="mp4-writer",
                                        daemon=True)
        self._writer.start()

    def send(self, frame: np.ndarray) -> None:
        """Queue a BGR frame of the recorder's size (waits only when QUEUED_FRAMES are not yet encoded)."""
        if self._failed is not None:
            said = self._proc.stderr.read().decode(errors="replace").strip() if self._proc is not None else ""
            raise AvatarCamError(f"the mp4 encoder stopped: {said[-300:] or self._failed}")
        if frame.shape[:2] != self._size[::-1]:
            raise ValueError(f"frame is {frame.shape[1]}x{frame.shape[0]}, the recording {self._size[0]}x{self._size[1]}")
        self._frames.put(frame)
        self.frames += 1

    def _write_frames(self, stdin) -> None:
        """The mp4-writer thread: frames from the queue -> I420 -> ffmpeg, until None."""
        give_way(self._nice)
        while (frame := self._frames.get()) is not None:
            if self._failed is not None:
                continue  # keep draining so `send` never waits on a dead encoder
            try:
                stdin.write(cv2.cvtColor(frame, cv2.COLOR_BGR2YUV_I420).data)
            except (BrokenPipeError, ValueError, OSError):  # ffmpeg died, or `abort` closed its input
                self._failed = "ffmpeg exited"

    def _stop_writer(self) -> None:
        self._frames.put(None)
        self._writer.join()

    def write_audio(self, samples: np.ndarray) -> None:
        self._pcm.append(np.asarray(samples, np.float32).copy())

    def close(self) -> None:
        if self._proc is None:
            return
        proc, self._proc = self._proc, None
        self._stop_writer()
        with contextlib.suppress(BrokenPipeError):
            proc.stdin.close()
        err = proc.stderr.read().decode(errors="replace")
        if proc.wait() != 0 or self._failed is not None:
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
        try:
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode != 0:
                raise AvatarCamError(f"muxing {self.path.name} failed: {done.stderr.strip()[-300:]}")
            os.replace(partial, self.path)
        finally:  # an interrupt while muxing leaves neither the partial file nor the temporary folder
            partial.unlink(missing_ok=True)
            shutil.rmtree(self._tmpdir, ignore_errors=True)

    def abort(self) -> None:
        """Stop the encoder and delete everything written so far; the output path is not touched."""
        proc, self._proc = self._proc, None
        if proc is not None:
            proc.kill()
            proc.wait()
            self._failed = "aborted"
            self._stop_writer()
            for pipe in (proc.stdin, proc.stderr):
                with contextlib.suppress(OSError):
                    pipe.close()
        shutil.rmtree(self._tmpdir, ignore_errors=True)
