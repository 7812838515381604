"""`avatar-cam render` writes all or nothing: interrupted (Ctrl-C, SIGTERM, SIGHUP) it leaves an existing output
as it was and no partial video anywhere; an output that is one of its inputs is refused before anything runs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
from helpers import run_cli


@pytest.fixture(scope="module")
def long_audio(tmp_path_factory):
    """Two minutes of a voiced tone: long enough that a render is still running when it is interrupted."""
    path = tmp_path_factory.mktemp("audio") / "long.wav"
    subprocess.run(["sox", "-n", "-r", "16000", "-c", "1", str(path), "synth", "120", "sine", "180", "tremolo", "4", "90"],
                   check=True)
    return path


@pytest.mark.parametrize("how", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP], ids=["Ctrl-C", "SIGTERM", "SIGHUP"])
def test_an_interrupted_render_keeps_the_old_output_and_leaves_nothing(astronaut_png, long_audio, tmp_path, how):
    (tmp_path / "videos").mkdir()
    out = tmp_path / "videos" / "talk.mp4"
    out.write_bytes(b"the video from yesterday")
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    proc = subprocess.Popen(
        [sys.executable, "-m", "avatar_cam", "render", "--engine", "lite", "--photo", str(astronaut_png), "--audio",
         str(long_audio), "--output", str(out), "--size", "320x240", "--no-progress"],
        env={**os.environ, "TMPDIR": str(scratch)}, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not any(p.stat().st_size > 0 for p in scratch.glob("avatar-cam-rec-*/video.mp4")):  # encoding has begun
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.05)
        proc.send_signal(how)
        _stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr
    assert "interrupted" in stderr and "the existing file is unchanged" in stderr
    assert out.read_bytes() == b"the video from yesterday"
    assert list(out.parent.iterdir()) == [out]  # no .talk.mp4.part.mp4 beside it
    assert list(scratch.iterdir()) == []  # no partial video in the temp dir


@pytest.mark.parametrize("which", ["audio", "photo"])
def test_an_output_that_is_an_input_is_refused(astronaut_png, speech_wav, tmp_path, which):
    audio, photo = tmp_path / "v.wav", tmp_path / "p.png"
    audio.write_bytes(speech_wav.read_bytes())
    photo.write_bytes(astronaut_png.read_bytes())
    before = (audio.read_bytes(), photo.read_bytes())
    target = audio if which == "audio" else photo
    result = run_cli("render", "--engine", "lite", "--photo", str(photo), "--audio", str(audio), "-o", str(target))
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert f"is the {which} file" in result.stderr and "choose another output name" in result.stderr
    assert (audio.read_bytes(), photo.read_bytes()) == before
