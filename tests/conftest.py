"""Shared fixtures. Every test runs with its own config/data/cache/log dirs (XDG_*), never the user's."""

from __future__ import annotations

import gc
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import camera_recorder
import cv2
import numpy as np
import pytest
from tray_desktop import (
    NOTIFY_SERVER,
    SCREEN,
    TIMEOUT,
    TRAY_HEIGHT,
    TRAY_WIDTH,
    Desktop,
    RecentFramesCamera,
    read_line,
    release_gtk,
    selection_owned,
    start_xvfb,
    stop_all,
)

from avatar_cam.daemon.photos import photos_dir
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


# --- the tray tests' virtual desktop (tray_desktop.py) -------------------------------------------------


@pytest.fixture(scope="module")
def desktop(tmp_path_factory: pytest.TempPathFactory):
    missing = [t for t in ("Xvfb", "openbox", "trayer", "xdotool", "import", "dbus-daemon") if shutil.which(t) is None]
    if missing:
        pytest.fail(f"{', '.join(missing)} not found: install them (tests/run.sh lists the packages)", pytrace=False)
    workdir = tmp_path_factory.mktemp("desktop")
    procs: list[subprocess.Popen] = []
    logs = open(workdir / "desktop.log", "wb")  # noqa: SIM115 - closed in finally
    try:
        xvfb, display = start_xvfb(*SCREEN, logs)
        procs.append(xvfb)
        env = {**os.environ, "DISPLAY": display, "NO_AT_BRIDGE": "1"}
        dbus = subprocess.Popen(["dbus-daemon", "--session", "--nofork", "--print-address=1"],
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=logs, env=env)
        procs.append(dbus)
        env["DBUS_SESSION_BUS_ADDRESS"] = read_line(dbus.stdout, TIMEOUT, "dbus-daemon")
        notifications = workdir / "notifications.jsonl"
        notifyd = subprocess.Popen([sys.executable, "-c", NOTIFY_SERVER, str(notifications)], env=env,
                                   stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=logs)
        procs.append(notifyd)
        assert read_line(notifyd.stdout, TIMEOUT, "the notification server") == "ready"
        # A window manager, as every desktop has: it reparents and places the preview window
        # (test_preview.py tries the preview on a bare X server).
        procs.append(subprocess.Popen(["openbox", "--sm-disable"], env=env, stdin=subprocess.DEVNULL,
                                      stdout=logs, stderr=logs))
        procs.append(subprocess.Popen(
            ["trayer", "--edge", "top", "--align", "left", "--widthtype", "pixel", "--width", str(TRAY_WIDTH),
             "--height", str(TRAY_HEIGHT), "--transparent", "false", "--expand", "false"],
            env=env, stdin=subprocess.DEVNULL, stdout=logs, stderr=logs))
        deadline = time.monotonic() + TIMEOUT
        for program, selection in (("openbox", "WM_S0"), ("trayer", "_NET_SYSTEM_TRAY_S0")):
            while not selection_owned(display, selection):
                assert time.monotonic() < deadline, \
                    f"{program} never took {selection}: {(workdir / 'desktop.log').read_text()}"
                time.sleep(0.05)
        with pytest.MonkeyPatch.context() as mp:
            for var in ("DISPLAY", "DBUS_SESSION_BUS_ADDRESS", "NO_AT_BRIDGE"):
                mp.setenv(var, env[var])
            mp.delenv("PYSTRAY_BACKEND", raising=False)
            yield Desktop(display, workdir, notifications)
            # Icons left for the garbage collector must go while their display lives: pystray's Xlib icon
            # raises from __del__ otherwise, and a traceback formatted inside a GC pass inside ast.parse
            # breaks CPython 3.11's AST recursion check ("AST constructor recursion depth mismatch").
            gc.collect()
            release_gtk()
    finally:
        stop_all(procs)
        logs.close()
    assert all(p.poll() is not None for p in procs)


@pytest.fixture()
def camera_backend():
    camera_recorder.register()
    import pyvirtualcam

    pyvirtualcam.register_backend(camera_recorder.BACKEND, RecentFramesCamera)
    return RecentFramesCamera


@pytest.fixture()
def photos(astronaut_png: Path) -> tuple[Path, Path]:
    """The astronaut in the library, and a mirrored astronaut (a different picture of a face) beside it."""
    folder = photos_dir()
    folder.mkdir(parents=True)
    first = folder / "astronaut.png"
    shutil.copy(astronaut_png, first)
    mirrored = folder.parent / "astronaut-mirrored.png"  # dropped into the folder later, by the test
    cv2.imwrite(str(mirrored), np.ascontiguousarray(cv2.imread(str(astronaut_png))[:, ::-1]))
    return first, mirrored


@pytest.fixture()
def still_idle(monkeypatch: pytest.MonkeyPatch):
    """No idle motion (blinks, sway), so the idle face is one fixed picture that paused frames must equal.

    Settings carry the user's choice; the renderer default is patched too, for a controller that does not pass
    those settings on yet."""
    from avatar_cam.live import renderer
    from avatar_cam.video.idle_motion import IdleSettings

    monkeypatch.setattr(renderer, "IdleSettings", IdleSettings.off)
    return {"idle_blinks": False, "idle_head_motion": False, "idle_breathing": False}


@pytest.fixture(scope="module")
def long_speech(speech_wav: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The test speech three times over (~20 s), so it is still playing through every step that needs it."""
    out = tmp_path_factory.mktemp("speech") / "speech_x3.wav"
    subprocess.run(["sox", str(speech_wav), str(speech_wav), str(speech_wav), str(out)], check=True)
    return out
