"""`avatar-cam render` and `avatar-cam run` as a user runs them (subprocesses, real files)."""

from __future__ import annotations

import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import soundfile
from helpers import run_cli

from avatar_cam.outputs.recorder import ffmpeg_exe
from avatar_cam.video.compositor import Compositor, OutputFormat
from avatar_cam.video.portrait import Portrait

HERE = Path(__file__).parent


def decode(path: Path) -> list[np.ndarray]:
    cap = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, frame = cap.read()
        if not ok:
            return frames
        frames.append(frame)


def test_render_writes_the_right_frames_with_sound(installed_random_model, astronaut_png, speech_wav, tmp_path):
    out = tmp_path / "talk.mp4"
    # --idle off: silent frames must be the still photo, and only the mouth may move.
    done = run_cli("render", "--photo", str(astronaut_png), "--audio", str(speech_wav), "--output", str(out),
                   "--fps", "25", "--size", "640x360", "--no-progress", "--idle", "off")
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    assert "wav2lip engine" in done.stdout and "Lite engine" not in done.stderr

    duration = soundfile.info(speech_wav).duration
    frames = decode(out)
    assert abs(len(frames) - math.ceil(duration * 25)) <= 1
    assert frames[0].shape == (360, 640, 3)
    probe = subprocess.run([ffmpeg_exe(), "-hide_banner", "-i", str(out)], capture_output=True, text=True).stderr
    assert re.search(r"Stream #\d:\d.*Audio: aac", probe), probe

    # The mouth moves while speaking and only then (the file has 0.5 s of silence at both ends).
    region = Compositor(Portrait.load(astronaut_png), OutputFormat(640, 360)).blend_region
    x0, y0, x1, y1 = region
    still = frames[0][y0:y1, x0:x1].astype(int)
    change = np.array([np.abs(f[y0:y1, x0:x1].astype(int) - still).mean() for f in frames])
    t = np.arange(len(frames)) / 25
    speech = (t > 0.7) & (t < duration - 0.9)
    silence = (t < 0.25) | (t > duration - 0.2)
    assert np.median(change[speech]) > 4 * max(np.max(change[silence]), 0.5)
    # ... and nothing outside the face changes beyond compression noise
    outside = np.ones(frames[0].shape[:2], bool)
    outside[y0:y1, x0:x1] = False
    assert max(np.abs(f.astype(int) - frames[0])[outside].mean() for f in frames) < 1.0


def test_commands_without_weights_use_the_lite_engine_and_say_so(astronaut_png, speech_wav, tmp_path):
    """A fresh install has no Wav2Lip weights: the camera and the renderer work anyway, with the lite engine."""
    out = tmp_path / "x.mp4"
    for args in (["render", "--photo", str(astronaut_png), "--audio", str(speech_wav), "-o", str(out), "--no-progress"],
                 ["run", "--photo", str(astronaut_png), "--no-camera", "--seconds", "2", "--audio-file", str(speech_wav)]):
        done = run_cli(*args)
        assert done.returncode == 0, done.stderr
        assert "using the Lite engine" in done.stderr and "avatar-cam models fetch" in done.stderr
        assert "Traceback" not in done.stderr
    assert "(lite engine)" in done.stderr  # run's summary names the engine that ran
    frames = decode(out)
    assert abs(len(frames) - math.ceil(soundfile.info(speech_wav).duration * 25)) <= 1
    # The lite engine moves the mouth while she speaks.
    region = Compositor(Portrait.load(astronaut_png), OutputFormat()).layout
    y0, y1 = int(region.mouth_y - 20), int(region.chin_y)
    x0, x1 = int(region.mouth_x - region.mouth_half_width), int(region.mouth_x + region.mouth_half_width)
    change = [np.abs(f[y0:y1, x0:x1].astype(int) - frames[0][y0:y1, x0:x1]).mean() for f in frames]
    assert max(change[40:-40]) > 8 * max(max(change[:5]), 0.5)


def test_asking_for_wav2lip_without_weights_says_how_to_get_them(astronaut_png, speech_wav, tmp_path):
    done = run_cli("render", "--engine", "wav2lip", "--photo", str(astronaut_png), "--audio", str(speech_wav),
                   "-o", str(tmp_path / "x.mp4"))
    assert done.returncode == 2, done.stderr
    assert "not installed" in done.stderr and "avatar-cam models fetch" in done.stderr and "--engine lite" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "x.mp4").exists()


def test_run_without_a_virtual_camera_names_the_fix(installed_random_model, astronaut_png, speech_wav):
    # This machine has no /dev/video*: the real v4l2loopback backend must say what to install.
    done = run_cli("run", "--photo", str(astronaut_png), "--audio-file", str(speech_wav), "--seconds", "2")
    assert done.returncode == 2
    assert "virtual camera" in done.stderr and "install-linux.sh" in done.stderr
    assert "Traceback" not in done.stderr


def test_run_stops_cleanly_on_sigterm_and_releases_the_camera(installed_random_model, astronaut_png, speech_wav):
    """The real `run` command, through a launcher that only registers the recording camera backend."""
    proc = subprocess.Popen(
        [sys.executable, str(HERE / "run_product.py"), "run", "--photo", str(astronaut_png), "--audio-file",
         str(speech_wav), "--camera-backend", "test-recorder", "--size", "320x180"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=os.environ.copy(),
    )
    try:
        line = proc.stdout.readline()  # "Avatar Cam is live on ..."
        assert "live on test-recorder" in line, proc.stderr.read() if proc.poll() is not None else line
        time.sleep(2.0)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "camera closed after" in out
    frames = int(re.search(r"camera closed after (\d+) frames", out).group(1))
    assert frames > 30


def _run_with_virtual_mic(astronaut_png: Path, speech_wav: Path, env: dict) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(HERE / "run_product.py"), "run", "--photo", str(astronaut_png), "--audio-file",
         str(speech_wav), "--engine", "lite", "--camera-backend", "test-recorder", "--size", "320x180",
         "--virtual-mic", "--mic-offset-ms", "25", "--seconds", "4"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )


def test_run_with_the_virtual_microphone_makes_it_and_removes_it(pulse_server, astronaut_png, speech_wav):
    from helpers import defaults, device_names

    from avatar_cam.vmic.pulse import SINK, SOURCE

    before = defaults(pulse_server)
    proc = _run_with_virtual_mic(astronaut_png, speech_wav, os.environ.copy())
    try:
        deadline = time.monotonic() + 30
        while SOURCE not in device_names(pulse_server) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        seen = SOURCE in device_names(pulse_server)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0 and seen, err
    assert "Avatar Cam Microphone is live: choose 'Avatar Cam Microphone' as the microphone" in out
    assert int(re.search(r"camera closed after (\d+) frames", out).group(1)) > 30
    assert not {SINK, SOURCE} & device_names(pulse_server)
    assert defaults(pulse_server) == before


def test_run_without_a_sound_server_warns_and_the_camera_runs(astronaut_png, speech_wav):
    env = {**os.environ, "PULSE_SERVER": "unix:/nonexistent/avatar-cam-test/native"}
    proc = _run_with_virtual_mic(astronaut_png, speech_wav, env)
    try:
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "warning: no Avatar Cam Microphone" in err and "the camera runs without it" in err
    assert "pactl info" in err and "Traceback" not in err
    assert int(re.search(r"camera closed after (\d+) frames", out).group(1)) > 30
