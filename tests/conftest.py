"""Shared fixtures. Every test runs with its own config/data/cache/log dirs (XDG_*), never the user's."""

from __future__ import annotations

from pathlib import Path

import pytest

from avatar_cam.wav2lip.arch import random_state_dict
from avatar_cam.wav2lip.checkpoint import write_checkpoint

# One real PulseAudio server per test session, for the tests that name the `pulse_server` fixture.
pytest_plugins = ["pulse"]


@pytest.fixture(autouse=True)
def user_dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "home"
    for var, sub in (("XDG_DATA_HOME", "data"), ("XDG_CACHE_HOME", "cache"), ("XDG_CONFIG_HOME", "config"), ("XDG_STATE_HOME", "state")):
        (home / sub).mkdir(parents=True)
        monkeypatch.setenv(var, str(home / sub))
    return home


@pytest.fixture(scope="session")
def random_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Seeded random generator weights written in the published checkpoint layout (no PyTorch needed)."""
    path = tmp_path_factory.mktemp("ckpt") / "wav2lip_random.pth"
    write_checkpoint(random_state_dict(seed=7), path, module_prefix=True)
    return path



@pytest.fixture(scope="session")
def speech_wav(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Real synthetic speech (espeak-ng), 16 kHz mono, with 0.5 s of silence before and after."""
    import subprocess

    d = tmp_path_factory.mktemp("speech")
    raw, out = d / "raw.wav", d / "speech_16k.wav"
    text = "Hello there. The quick brown fox jumps over the lazy dog, and we all watch it happen."
    subprocess.run(["espeak-ng", "-w", str(raw), text], check=True)
    subprocess.run(["sox", str(raw), "-r", "16000", "-c", "1", str(out), "pad", "0.5", "0.5"], check=True)
    return out


@pytest.fixture(scope="session")
def speech_16k(speech_wav: Path):
    import soundfile

    wav, sr = soundfile.read(speech_wav, dtype="float32")
    assert sr == 16000
    return wav


@pytest.fixture(scope="session")
def astronaut_face_96():
    """The astronaut portrait's face, cropped the way Wav2Lip expects (box + 10 px below the chin), 96x96 BGR/255."""
    import cv2
    import numpy as np
    from skimage import data

    bgr = cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR)
    cascade = cv2.CascadeClassifier(cv2.data.haarcascades + "haarcascade_frontalface_default.xml")
    faces = cascade.detectMultiScale(cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY), 1.1, 5, minSize=(60, 60))
    x, y, w, h = max(faces, key=lambda f: f[2] * f[3])
    crop = bgr[y : min(y + h + 10, bgr.shape[0]), x : x + w]
    return cv2.resize(crop, (96, 96), interpolation=cv2.INTER_AREA).astype(np.float32) / 255.0


@pytest.fixture(scope="session")
def astronaut_png(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """scikit-image's astronaut (NASA, public domain): a frontal portrait, as a file."""
    import cv2
    from skimage import data

    path = tmp_path_factory.mktemp("photos") / "astronaut.png"
    cv2.imwrite(str(path), cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR))
    return path


@pytest.fixture()
def installed_random_model(random_checkpoint: Path, user_dirs: Path) -> Path:
    """The seeded random checkpoint imported into this test's model store, as a user would with `models import`."""
    from avatar_cam.weights.store import import_checkpoint

    return import_checkpoint(random_checkpoint, name="wav2lip_gan").path


@pytest.fixture()
def server():
    """A local HTTP server whose misbehaviour each test chooses (helpers.LocalServer)."""
    from helpers import LocalServer

    s = LocalServer()
    yield s
    s.close()


@pytest.fixture()
def runtime_dir(monkeypatch: pytest.MonkeyPatch):
    """A private, short XDG_RUNTIME_DIR for the control socket (a Unix socket path must fit in ~100 bytes)."""
    import shutil

    from helpers import short_runtime_dir

    d = short_runtime_dir()
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(d))
    yield d
    shutil.rmtree(d, ignore_errors=True)
