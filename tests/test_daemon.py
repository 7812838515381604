"""The daemon as a user runs it: real `avatar-cam daemon --no-tray` processes, one per user, stopped by signals.

Each daemon runs through tests/run_product.py (the real CLI, with the recording camera backend registered).
These daemons keep the camera off unless a test needs it, so they start in well under a second.
"""

from __future__ import annotations

import signal
import stat
import time
from pathlib import Path

import pytest
from helpers import DaemonProcess, run_cli

from avatar_cam import paths
from avatar_cam.daemon import control_client, instance
from avatar_cam.daemon.runtime_dir import lock_path, socket_path
from avatar_cam.errors import AvatarCamError, NotRunningError
from avatar_cam.settings import Settings

RUN_PRODUCT = Path(__file__).with_name("run_product.py")
READY_TIMEOUT_S = 60.0  # generous: CI machines are small and shared




@pytest.fixture()
def daemons(tmp_path: Path):
    """Start daemons with `daemons.start(...)`; any still running at the end are killed (by pid)."""

    class Daemons(list):
        def start(self, *args: str, name: str = "daemon", env: dict | None = None) -> DaemonProcess:
            d = DaemonProcess(tmp_path / "daemons", *args, env=env, name=f"{name}{len(self)}")
            self.append(d)
            return d

    started = Daemons()
    yield started
    for d in started:
        d.kill()


@pytest.fixture()
def camera_off():
    Settings(camera_on=False).save()


def log_text() -> str:
    path = paths.log_dir() / "avatar-cam.log"
    return path.read_text(errors="replace") if path.exists() else ""


def test_second_instance_asks_the_first_to_show_itself(runtime_dir, daemons, camera_off):
    first = daemons.start()
    first.wait_ready()
    assert "asked to show itself" not in log_text()
    second = run_cli("daemon", "--no-tray", timeout=60)
    assert second.returncode == 0, second.stderr
    assert "Avatar Cam is already running; asked it to show itself" in second.stdout
    # `avatar-cam` with no arguments (the desktop launcher) does the same.
    bare = run_cli(timeout=60)
    assert bare.returncode == 0, bare.stderr
    assert "already running" in bare.stdout
    assert log_text().count("asked to show itself") == 2
    assert first.proc.poll() is None
    assert first.status()["state"] == "stopped"


def test_two_daemons_starting_at_once_one_wins(runtime_dir, daemons, camera_off):
    for _ in range(2):
        pair = [daemons.start(), daemons.start()]
        deadline = time.monotonic() + READY_TIMEOUT_S
        while all(d.proc.poll() is None for d in pair) and time.monotonic() < deadline:
            time.sleep(0.05)
        losers = [d for d in pair if d.proc.poll() is not None]
        assert len(losers) == 1, "\n".join(d.describe() for d in pair)
        loser, winner = losers[0], next(d for d in pair if d is not losers[0])
        assert loser.wait() == 0, loser.describe()
        assert "already running" in loser.stdout
        winner.wait_ready()
        assert winner.signal_and_wait() == 0, winner.describe()
        assert not socket_path().exists()


def test_a_socket_left_by_a_killed_daemon_is_replaced(runtime_dir, daemons, camera_off):
    crashed = daemons.start()
    crashed.wait_ready()
    crashed.proc.send_signal(signal.SIGKILL)
    crashed.wait()
    sock = socket_path()
    assert stat.S_ISSOCK(sock.lstat().st_mode)  # left behind: nobody removed it
    gone = run_cli("ctl", "status", timeout=60)
    assert gone.returncode == 2
    assert "Avatar Cam is not running" in gone.stderr and "avatar-cam" in gone.stderr

    fresh = daemons.start()
    assert fresh.wait_ready()["state"] == "stopped"
    assert "left behind by a daemon that did not exit cleanly" in fresh.stderr
    ok = run_cli("ctl", "status", timeout=60)
    assert ok.returncode == 0, ok.stderr
    assert fresh.signal_and_wait() == 0
    assert not sock.exists()


@pytest.mark.parametrize("how", ["SIGTERM", "SIGINT", "SIGHUP", "ctl quit"])
def test_daemon_stops_cleanly(runtime_dir, daemons, camera_off, how):
    d = daemons.start()
    d.wait_ready()
    sock = socket_path()
    assert sock.exists()
    if how == "ctl quit":
        quit_ = run_cli("ctl", "quit", timeout=60)
        assert quit_.returncode == 0, quit_.stderr
        code = d.wait()
    else:
        code = d.signal_and_wait(getattr(signal, how))
    assert code == 0, d.describe()
    assert not sock.exists()
    assert "Traceback" not in d.stderr
    assert "daemon stopped" in log_text()
    assert Settings.load().camera_on is False  # quitting does not change what the user chose
    assert lock_path().exists()  # the lock file stays (removing it would let two daemons lock two files)
    with pytest.raises(NotRunningError):
        control_client.send("status")


def test_a_camera_that_cannot_start_leaves_the_daemon_running(runtime_dir, daemons, astronaut_png):
    # camera_on with a good photo, but the virtual camera cannot open: the start fails; the daemon keeps serving.
    Settings(photo=str(astronaut_png), engine="lite", camera_backend="no-such-camera", camera_on=True).save()
    d = daemons.start()
    d.wait_ready()
    status = d.wait_status(lambda s: s["state"] == "error", what="error")
    assert "unknown virtual camera backend 'no-such-camera'" in status["error"]
    d.wait_stderr("the camera did not start")  # logged just after the status changed
    human = run_cli("ctl", "status", timeout=60)
    assert human.returncode == 0
    assert human.stdout.startswith("Error: unknown virtual camera backend")
    again = run_cli("ctl", "start", timeout=60)  # asking again gives the reason, not a hang or a crash
    assert again.returncode == 2 and "unknown virtual camera backend" in again.stderr
    assert d.proc.poll() is None
    assert d.signal_and_wait() == 0
    assert Settings.load().camera_on is True  # still wanted at the next start


def test_a_corrupt_settings_file_is_kept_aside_at_start(runtime_dir, daemons):
    path = Settings.path()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("camera_on = maybe\n[[[\n")
    d = daemons.start()
    status = d.wait_ready()
    assert status["photo"] is None and status["engine"] == Settings().engine  # defaults
    kept = list(path.parent.glob("settings.toml.corrupt-*"))
    assert len(kept) == 1 and kept[0].read_text() == "camera_on = maybe\n[[[\n"
    assert "was damaged" in d.stderr and str(kept[0]) in d.stderr
    assert d.signal_and_wait() == 0


def test_without_a_tray_avatar_cam_says_what_to_run_instead(runtime_dir, monkeypatch):
    Settings(camera_on=False).save()
    for var in ("DISPLAY", "WAYLAND_DISPLAY", "PYSTRAY_BACKEND"):
        monkeypatch.delenv(var, raising=False)
    result = run_cli(timeout=60)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "avatar-cam run --no-tray" in result.stderr and "Traceback" not in result.stderr
    assert not socket_path().exists()
    # ...and it did not keep the instance lock: a daemon can start right after.
    lock = instance.InstanceLock()
    assert lock.acquire()
    lock.release()


def test_ctl_without_a_daemon_says_how_to_start_one(runtime_dir):
    result = run_cli("ctl", "pause", timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == ["avatar-cam: Avatar Cam is not running", "  -> start it with `avatar-cam`"]
    with pytest.raises(AvatarCamError, match="not running"):
        control_client.send("status")
