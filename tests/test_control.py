"""The control socket and `avatar-cam ctl`, against a real daemon with a live camera.

One daemon for the module (`live`): the astronaut photo, the lite engine (no model), a PulseAudio microphone
(tests/pulse.py) and the recording camera backend, which prints "camera closed after N frames" on close.
The last test stops it with SIGTERM. The in-process tests at the end drive `ControlServer` with real sockets.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import stat
import threading
import time
from pathlib import Path

import cv2
import pytest
from helpers import DaemonProcess, run_cli, short_runtime_dir

from avatar_cam.daemon import control_client, control_server, instance
from avatar_cam.daemon.runtime_dir import lock_path, socket_path
from avatar_cam.daemon.runtime_dir import runtime_dir as runtime_folder
from avatar_cam.errors import AvatarCamError, NotRunningError
from avatar_cam.settings import Settings

STATUS_KEYS = {"state", "photo", "mic", "engine", "fps", "latency_ms_p95"}
RUNNING = ("silent", "live")


@pytest.fixture(scope="module")
def live_daemon(tmp_path_factory: pytest.TempPathFactory, astronaut_png: Path, pulse_server):
    home = tmp_path_factory.mktemp("live-daemon")
    run = short_runtime_dir()
    env = {"XDG_RUNTIME_DIR": str(run)}
    for var, sub in (("XDG_DATA_HOME", "data"), ("XDG_CACHE_HOME", "cache"), ("XDG_CONFIG_HOME", "config"),
                     ("XDG_STATE_HOME", "state")):
        env[var] = str(home / sub)
    settings_file = home / "config" / "avatar-cam" / "settings.toml"
    Settings(photo=str(astronaut_png), engine="lite", mic="pulse", camera_backend="test-recorder", width=640,
             height=360, fps=15.0, camera_on=True).save(settings_file)
    daemon = DaemonProcess(home, env=env)
    daemon.settings_file = settings_file
    try:
        yield daemon
    finally:
        daemon.kill()
        shutil.rmtree(run, ignore_errors=True)


@pytest.fixture()
def live(live_daemon: DaemonProcess, monkeypatch: pytest.MonkeyPatch) -> DaemonProcess:
    """The module's daemon, running with frames flowing; this test talks to its socket."""
    monkeypatch.setenv("XDG_RUNTIME_DIR", live_daemon.env["XDG_RUNTIME_DIR"])
    if live_daemon.proc.poll() is not None:
        pytest.fail(f"the module's daemon is gone:\n{live_daemon.describe()}")
    live_daemon.wait_ready()
    live_daemon.wait_status(lambda s: s["state"] in RUNNING and s["fps"] > 5, what="frames flowing")
    return live_daemon




def ctl(*args: str, ok: bool = True):
    result = run_cli("ctl", *args, timeout=120)
    if ok:
        assert result.returncode == 0, f"ctl {' '.join(args)}: {result.stderr}"
    else:
        assert result.returncode == 2, f"ctl {' '.join(args)} should have failed: {result.stdout}{result.stderr}"
        assert "Traceback" not in result.stderr
    return result


def camera_closes(daemon: DaemonProcess) -> list[int]:
    return [int(n) for n in re.findall(r"camera closed after (\d+) frames", daemon.stdout)]


def test_status_json_has_the_fields(live, astronaut_png):
    status = live.wait_status(lambda s: s["latency_ms_p95"] is not None, what="a measured latency")
    data = json.loads(ctl("status", "--json").stdout)
    assert set(data) >= STATUS_KEYS
    assert data["state"] in RUNNING
    assert data["photo"] == str(astronaut_png)
    assert data["mic"] == "pulse"
    assert data["engine"] == "lite"
    assert data["camera"] == "test-recorder"
    assert data["fps"] > 5  # frames are flowing (15 fps asked; the rate itself is for benchmarks)
    assert status["latency_ms_p95"] > 0
    assert data["error"] is None
    assert data["virtual_mic"] is None and data["preview"] is False  # both off in this daemon's settings

    human = ctl("status").stdout.splitlines()
    assert re.fullmatch(r"(Silent|Live): \d+ fps, \d+ ms", human[0]), human
    assert any(line.split() == ["photo:", str(astronaut_png)] for line in human)
    assert any(line.split() == ["microphone:", "pulse"] for line in human)
    assert any(line.split() == ["virtual", "mic:", "off"] for line in human)


def test_status_lines_for_the_virtual_microphone():
    from avatar_cam.cli.ctl import virtual_mic_line

    assert virtual_mic_line(None) == "off"
    assert virtual_mic_line({"state": "running", "device": "Avatar Cam Microphone", "delay_ms": 212.4}) == \
        "Avatar Cam Microphone (voice delayed 212 ms)"
    assert virtual_mic_line({"state": "error: no pactl", "device": None}) == "error: no pactl"


def test_control_socket_is_private(live):
    sock = socket_path()
    assert sock.parent == Path(os.environ["XDG_RUNTIME_DIR"]) / "avatar-cam"
    st = sock.lstat()
    assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600 and st.st_uid == os.getuid()
    assert stat.S_IMODE(sock.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(lock_path().stat().st_mode) == 0o600


def test_pause_resume_stop_start_change_the_status(live):
    assert ctl("pause").stdout.startswith("Paused")
    assert live.status()["state"] == "paused"
    live.wait_status(lambda s: s["fps"] > 5, what="frames while paused")  # the camera keeps sending the idle face
    assert ctl("resume").stdout.split(":")[0] in ("Silent", "Live")
    assert live.status()["state"] in RUNNING

    closes = len(camera_closes(live))
    assert ctl("stop").stdout.strip() == "Camera off"
    status = live.status()
    assert status["state"] == "stopped" and status["fps"] == 0 and status["camera"] is None
    assert len(camera_closes(live)) == closes + 1 and camera_closes(live)[-1] > 5  # it had been sending frames
    refused = ctl("pause", ok=False)
    assert "the camera is not running" in refused.stderr and "avatar-cam ctl start" in refused.stderr

    ctl("start")
    live.wait_status(lambda s: s["state"] in RUNNING and s["fps"] > 5, what="frames after start")
    assert len(camera_closes(live)) == closes + 1
    assert Settings.load(live.settings_file).camera_on is True


def test_photo_switch_and_bad_photos(live, astronaut_png, tmp_path):
    second = tmp_path / "mirrored astronaut.png"
    cv2.imwrite(str(second), cv2.flip(cv2.imread(str(astronaut_png)), 1))
    closes = len(camera_closes(live))
    ctl("photo", str(second))
    assert live.status()["photo"] == str(second)

    not_image = tmp_path / "notes.png"
    not_image.write_text("shopping list: eggs, milk\n")
    empty = tmp_path / "empty.jpg"
    empty.touch()
    for bad, message in ((tmp_path / "missing.png", "photo not found"), (not_image, "is not an image"),
                         (empty, "is empty (0 bytes)"), (tmp_path, "is not a file")):
        refused = ctl("photo", str(bad), ok=False)
        assert message in refused.stderr and str(bad) in refused.stderr
        assert "\n  -> " in refused.stderr  # and what to do about it
        status = live.status()
        assert status["photo"] == str(second) and status["state"] in RUNNING  # the previous photo stays live
    live.wait_status(lambda s: s["fps"] > 5, what="frames after the switch")
    assert len(camera_closes(live)) == closes  # switching never reopened the camera
    assert Settings.load(live.settings_file).photo == str(second)
    ctl("photo", str(astronaut_png))
    assert live.status()["photo"] == str(astronaut_png)


def test_mic_switch_and_a_missing_mic(live):
    closes = len(camera_closes(live))
    ctl("mic", "default")
    assert live.status()["mic"] == "default"
    refused = ctl("mic", "no-such-microphone", ok=False)
    assert "No microphone (input device) matches 'no-such-microphone'" in refused.stderr
    assert "'pulse'" in refused.stderr  # the hint lists what exists
    status = live.status()
    assert status["mic"] == "default" and status["state"] in RUNNING
    ctl("mic", "pulse")
    assert live.status()["mic"] == "pulse"
    live.wait_status(lambda s: s["fps"] > 5, what="frames after the switch")
    assert len(camera_closes(live)) == closes
    assert Settings.load(live.settings_file).mic == "pulse"


def raw_exchange(payload: bytes, timeout: float = 30.0) -> dict:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(str(socket_path()))
        s.sendall(payload)
        data = b""
        while not data.endswith(b"\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    return json.loads(data)


@pytest.mark.parametrize("payload, error", [
    (b"hello daemon\n", "not a JSON request"),
    (b"\xff\xfe\x00\x01\n", "not a JSON request"),
    (b"[" * 60000 + b"\n", "not a JSON request"),  # deep nesting: a RecursionError inside json
    (b"[1, 2, 3]\n", 'a request is a JSON object with a "cmd" string'),
    (b'{"cmd": 42}\n', 'a request is a JSON object with a "cmd" string'),
    (b'{"cmd": "format-disk"}\n', "unknown command 'format-disk'"),
    (b'{"cmd": "photo", "arg": {"path": 1}}\n', "photo needs a file path"),
    (b'{"cmd": "status"}' + b" " * (10 * 1024 * 1024) + b"\n", "request larger than 65536 bytes"),
    (b"x" * (10 * 1024 * 1024) + b"\n", "request larger than 65536 bytes"),
], ids=["text", "binary", "deep", "list", "cmd-int", "unknown", "photo-arg", "10MB-json", "10MB-line"])
def test_garbage_and_huge_requests_get_an_error_and_the_daemon_carries_on(live, payload, error):
    response = raw_exchange(payload)
    assert response["ok"] is False
    assert error in response["error"]
    assert response["hint"]
    assert live.status()["state"] in RUNNING
    assert live.proc.poll() is None


def test_clients_that_hang_up_do_not_disturb_the_daemon(live):
    for payload in (b"", b'{"cmd": "sta'):  # connect and leave; half a request and leave
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.connect(str(socket_path()))
            s.sendall(payload)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:  # ask, then leave before the answer
        s.connect(str(socket_path()))
        s.sendall(b'{"cmd": "status"}\n')
    assert ctl("status", "--json").stdout
    assert live.status()["state"] in RUNNING


def test_sigterm_releases_the_camera_and_removes_the_socket(live):
    sock = socket_path()
    closes = len(camera_closes(live))
    assert live.signal_and_wait(signal.SIGTERM) == 0, live.describe()
    assert not sock.exists()
    assert len(camera_closes(live)) == closes + 1 and camera_closes(live)[-1] > 5
    assert "Traceback" not in live.stderr
    assert Settings.load(live.settings_file).camera_on is True  # the next start opens the camera again
    with pytest.raises(NotRunningError):
        control_client.send("status")


# --- the server in this process, with real sockets -------------------------------------------------
class FakeStatus:
    def to_dict(self) -> dict:
        return {"state": "stopped"}


class FakeController:
    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def __getattr__(self, name):
        def call(*args):
            self.calls.append((name, *args))
            if name == "set_photo" and args[0].endswith("bad.png"):
                raise AvatarCamError("bad.png is not an image", hint="pick another")
            if name == "set_mic" and args[0] == "boom":
                raise RuntimeError("a bug")
            return FakeStatus()

        return call


@pytest.fixture()
def fake_server(runtime_dir):
    fake = FakeController()
    events: list[str] = []
    server = control_server.ControlServer(control_server.controller_handler(fake, lambda: events.append("show"),
                                                              lambda: events.append("quit")))
    lock = instance.InstanceLock()
    assert lock.acquire()
    server.start()
    yield server, fake, events
    server.close()
    lock.release()


def test_every_command_reaches_the_controller(fake_server):
    server, fake, events = fake_server
    for cmd, arg in (("status", None), ("start", None), ("stop", None), ("pause", None), ("resume", None),
                     ("photo", "/p/me.png"), ("mic", "USB"), ("mic", None), ("show", None), ("quit", None)):
        extra = {"pid": os.getpid()} if cmd == "quit" else {}  # quit says whose end to wait for
        assert control_client.send(cmd, arg) == {"ok": True, "status": {"state": "stopped"}, **extra}
    calls = [c for c in fake.calls if c[0] != "status"]
    assert calls == [("start",), ("stop",), ("pause",), ("resume",), ("set_photo", "/p/me.png"), ("set_mic", "USB"),
                     ("set_mic", None)]
    assert events == ["show", "quit"]
    with pytest.raises(AvatarCamError, match="bad.png is not an image") as err:
        control_client.send("photo", "/p/bad.png")
    assert err.value.hint == "pick another"
    with pytest.raises(AvatarCamError, match="mic failed: RuntimeError: a bug"):  # a bug answers, not kills
        control_client.send("mic", "boom")
    assert control_client.send("status")["ok"]


def test_a_silent_client_is_cut_off_and_the_next_one_served(fake_server, monkeypatch):
    monkeypatch.setattr(control_server, "CLIENT_DEADLINE_S", 0.5)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as silent:
        silent.connect(str(socket_path()))
        t0 = time.monotonic()
        answered = []
        asker = threading.Thread(target=lambda: answered.append(control_client.send("status", timeout=30)))
        asker.start()
        silent.settimeout(30)
        reply = json.loads(silent.makefile("rb").readline())
        asker.join(30)
    assert reply["ok"] is False and "no complete request line" in reply["error"]
    assert answered and answered[0]["ok"]
    assert time.monotonic() - t0 < 10


def test_second_claim_in_the_same_process_asks_the_server_to_show(fake_server):
    _, _, events = fake_server
    assert instance.claim_instance(wait_s=5) is None
    assert events == ["show"]


def test_socket_removed_on_close_and_stale_one_replaced(runtime_dir):
    lock = instance.InstanceLock()
    assert lock.acquire()
    try:
        path = socket_path()
        path.parent.chmod(0o755)  # a loose directory is tightened
        stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        stale.bind(str(path))  # bound, never listening: like the file a killed daemon leaves
        stale.close()
        server = control_server.ControlServer(lambda cmd, arg: {"ok": True, "status": {"cmd": cmd}}).start()
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
        assert control_client.send("status")["status"] == {"cmd": "status"}
        server.close()
        assert not path.exists()
        with pytest.raises(NotRunningError):
            control_client.send("status")
    finally:
        lock.release()


def test_runtime_dir_fallback_and_a_too_long_path(monkeypatch, tmp_path):
    monkeypatch.delenv("XDG_RUNTIME_DIR")
    folder = runtime_folder(create=True)
    assert folder == Path(os.environ["XDG_CACHE_HOME"]) / "avatar-cam" / "run"
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True, mode=0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(deep))
    with pytest.raises(AvatarCamError, match="too long") as err:
        control_server.ControlServer(lambda cmd, arg: {}).start()
    assert "XDG_RUNTIME_DIR" in err.value.hint
