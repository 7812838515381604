"""The control socket serves clients at the same time: idle connections or a client that sends half a line do not
stall `ctl status`, each client has a short deadline, and the number served at once is bounded (the one too many
gets a clear "busy" answer, never "not running"). Against a real `avatar-cam daemon --no-tray`."""

from __future__ import annotations

import json
import select
import shutil
import socket

import pytest
from helpers import DaemonProcess, eventually, run_cli, short_runtime_dir

from avatar_cam.daemon import control_client
from avatar_cam.daemon.control_server import MAX_CLIENTS
from avatar_cam.daemon.runtime_dir import socket_path
from avatar_cam.errors import AvatarCamError
from avatar_cam.settings import Settings


@pytest.fixture()
def daemon(tmp_path, monkeypatch):
    run = short_runtime_dir()
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(run))
    Settings(camera_on=False).save()
    d = DaemonProcess(tmp_path / "daemon")
    d.wait_ready()
    yield d
    d.kill()
    shutil.rmtree(run, ignore_errors=True)


def connect() -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(str(socket_path()))
    return s


def test_status_answers_while_idle_and_half_line_clients_are_connected(daemon):
    idle = [connect() for _ in range(20)]
    half = connect()
    half.sendall(b'{"cmd": "sta')  # and nothing more
    try:
        result = run_cli("ctl", "status", "--json", timeout=60)
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["state"]
        # The half-line client is still waiting for its deadline while others were answered...
        assert select.select([half], [], [], 0)[0] == [] or _reply(half)["ok"] is False
        # ...and then gets an error, not silence.
        half.settimeout(30)
        reply = _reply(half)
        assert reply["ok"] is False and "no complete request line" in reply["error"]
    finally:
        for s in [*idle, half]:
            s.close()
    assert "Traceback" not in daemon.stderr


def test_one_client_too_many_is_told_the_daemon_is_busy(daemon):
    idle = [connect() for _ in range(MAX_CLIENTS)]
    try:
        with pytest.raises(AvatarCamError, match="serving 64 control clients already") as err:
            control_client.send("status", timeout=30)
        assert "try again" in err.value.hint
    finally:
        for s in idle:
            s.close()
    assert eventually(_answers, timeout=10), "no answer once the idle clients left"


def _answers() -> bool:
    try:
        return control_client.send("status", timeout=30)["ok"]
    except AvatarCamError:
        return False


def _reply(sock: socket.socket) -> dict:
    return json.loads(sock.makefile("rb").readline())
