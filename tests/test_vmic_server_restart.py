"""Avatar Cam Microphone after the sound server is killed and started again: the status says so at once, and
the microphone comes back by itself (the real microphone already did); and when there was no sound server (or
none that answered in time) as the camera started, it starts by itself once there is. A real `avatar-cam daemon --no-tray` and
a real PulseAudio server of its own (tests/pulse.py's RestartablePulse: crashed and started at the same address)."""

from __future__ import annotations

import json

import pytest
from helpers import DaemonProcess, run_cli, wait_for
from pulse import RestartablePulse, serving

from avatar_cam.daemon import control_client
from avatar_cam.settings import Settings

GONE = "error: the sound server went away: reconnecting"


@pytest.fixture()
def own_pulse():
    with serving(RestartablePulse().start(), unset=("PULSE_SOURCE",)) as server:
        yield server


def vmic_state() -> str:
    return (control_client.send("status", timeout=30)["status"].get("virtual_mic") or {}).get("state", "")


def our_sources(server) -> list[str]:
    return [line.split("\t")[1] for line in server.pactl("list", "short", "sources").stdout.splitlines()
            if "avatar_cam_mic" in line]


def test_avatar_cam_microphone_comes_back_after_the_sound_server_restarts(own_pulse, astronaut_png, tmp_path):
    Settings(photo=str(astronaut_png), engine="lite", mic="pulse", camera_backend="test-recorder", width=320,
             height=180, fps=15.0, camera_on=True, virtual_mic=True).save()
    daemon = DaemonProcess(tmp_path / "daemon")
    try:
        daemon.wait_ready()
        wait_for(lambda: vmic_state() == "running", "Avatar Cam Microphone to run", timeout=30)
        assert our_sources(own_pulse) == ["avatar_cam_mic"]

        own_pulse.crash()
        wait_for(lambda: vmic_state().startswith(GONE), "the status to say the sound server went away", timeout=5)
        during = json.loads(run_cli("ctl", "status", "--json", timeout=60).stdout)
        assert during["virtual_mic"]["state"].startswith(GONE)
        assert during["state"] == "error", during  # no longer "running" with frozen counters

        own_pulse.come_back()
        wait_for(lambda: vmic_state() == "running", "Avatar Cam Microphone to come back by itself", timeout=20)
        assert our_sources(own_pulse) == ["avatar_cam_mic"]
        wait_for(lambda: "avatar_cam.stream" in own_pulse.pactl("list", "sink-inputs").stdout,
                 "our voice to play into the new sink", timeout=10)
        after = json.loads(run_cli("ctl", "status", "--json", timeout=60).stdout)
        assert after["virtual_mic"]["state"] == "running", after

        assert run_cli("ctl", "quit", timeout=60).returncode == 0
        assert daemon.wait() == 0, daemon.describe()
        assert our_sources(own_pulse) == []  # removed from the new server on the way out
        assert "Traceback" not in daemon.stderr
    finally:
        daemon.kill()


def test_avatar_cam_microphone_starts_by_itself_once_a_sound_server_answers(own_pulse, astronaut_png, tmp_path):
    # At login the daemon may start before the sound server, and a busy one may not answer `pactl` in time (an
    # emulated guest took over 10 s): "Avatar Cam Microphone" stayed in error until the user turned it off and on.
    own_pulse.crash()
    Settings(photo=str(astronaut_png), engine="lite", mic="pulse", camera_backend="test-recorder", width=320,
             height=180, fps=15.0, camera_on=True, virtual_mic=True).save()
    daemon = DaemonProcess(tmp_path / "daemon")
    try:
        daemon.wait_ready()
        wait_for(lambda: vmic_state().startswith("error"), "the status to say why there is no microphone", timeout=30)
        own_pulse.come_back()
        wait_for(lambda: vmic_state() == "running", "Avatar Cam Microphone to start by itself", timeout=60)
        assert our_sources(own_pulse) == ["avatar_cam_mic"]
        assert run_cli("ctl", "quit", timeout=60).returncode == 0
        assert daemon.wait() == 0, daemon.describe()
        assert our_sources(own_pulse) == []
        assert "Traceback" not in daemon.stderr
    finally:
        daemon.kill()
