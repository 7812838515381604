"""`avatar-cam doctor` on this machine (no camera device, no kernel modules, a PulseAudio server only when a
test asks for one), and each check's verdict on fake Linux system trees.

The command runs in a subprocess (helpers.run_cli): PortAudio lists devices once, when it is first loaded, so
only a fresh process sees whether the sound server is there or not.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import pytest
from helpers import run_cli

from avatar_cam import doctor
from avatar_cam.cli.doctor import cmd_doctor

NO_SOUND_SERVER = {"PULSE_SERVER": "unix:/nonexistent/avatar-cam-test/native"}
HAS_LOOPBACK = Path("/sys/module/v4l2loopback").exists()


def run_doctor(env: dict | None = None) -> tuple[int, dict[str, dict]]:
    done = run_cli("doctor", "--json", env=env)
    assert "Traceback" not in done.stderr, done.stderr
    report = json.loads(done.stdout)
    checks = {c["name"]: c for c in report["checks"]}
    assert report["ok"] == (done.returncode == 0)
    return done.returncode, checks


def test_doctor_on_this_machine(user_dirs: Path):
    code, checks = run_doctor(env=NO_SOUND_SERVER)

    assert checks["python"]["ok"] and checks["portaudio"]["ok"]
    openvino = checks["openvino"]
    assert openvino["ok"] and "CPU" in openvino["detail"]

    if not HAS_LOOPBACK:  # this machine: no kernel modules, no /dev/video*
        cam = checks["virtual camera"]
        assert not cam["ok"] and cam["essential"]
        assert 'modprobe v4l2loopback devices=1 video_nr=10 card_label="Avatar Cam" exclusive_caps=1' in cam["fix"]
        assert "v4l2loopback-dkms" in cam["fix"] or "dnf install" in cam["fix"]
        assert code == 1  # an essential check failed

    models = checks["models"]
    assert not models["ok"] and not models["essential"]
    assert models["fix"] == "avatar-cam models fetch" and "Lite engine" in models["detail"]

    # The folders are the test's own (XDG_* set by conftest), and writable.
    for name, sub in (("config dir", "config"), ("data dir", "data"), ("cache dir", "cache")):
        assert checks[name]["ok"], checks[name]
        assert checks[name]["detail"] == str(user_dirs / sub / "avatar-cam")

    # The camera's threads may run ahead of other programs: as root directly; else rtkit, or the way to get it.
    priority = checks["camera priority"]
    assert not priority["essential"]
    if os.geteuid() == 0:
        assert priority["ok"] and "(real-time priority)" in priority["detail"], priority
    elif not priority["ok"]:
        assert "rtkit" in priority["fix"] and "normal priority" in priority["detail"]

    # No sound server: no microphone and no virtual microphone, each with a way out.
    mic = checks["microphone"]
    assert not mic["ok"] and mic["essential"] and "pactl" in mic["fix"]
    vmic = checks["virtual microphone"]
    assert not vmic["ok"] and not vmic["essential"] and "pipewire-pulse" in vmic["fix"]


def test_microphone_found_with_a_sound_server(pulse_server):
    _, checks = run_doctor()  # the fixture's PULSE_SERVER is in os.environ, so the subprocess sees it
    assert checks["microphone"]["ok"], checks["microphone"]
    assert checks["virtual microphone"]["ok"], checks["virtual microphone"]
    assert "PulseAudio" in checks["virtual microphone"]["detail"] or "pulse" in checks["virtual microphone"]["detail"].lower()


def test_installed_model_is_reported(installed_random_model: Path):
    _, checks = run_doctor(env=NO_SOUND_SERVER)
    assert checks["models"]["ok"] and "wav2lip_gan" in checks["models"]["detail"]


def test_text_output_has_one_line_per_check_and_the_fixes():
    done = run_cli("doctor", env=NO_SOUND_SERVER)
    assert "Traceback" not in done.stderr
    lines = done.stdout.splitlines()
    assert any(line.startswith("ok  openvino") for line in lines)
    assert any(line.startswith("!!  models") and "(optional)" in line for line in lines)
    assert any(line.strip() == "fix: avatar-cam models fetch" for line in lines)
    if not HAS_LOOPBACK:
        assert any(line.startswith("!!  virtual camera ") for line in lines)
        assert "essential problem(s)" in done.stdout and done.returncode == 1


def test_a_check_that_raises_is_reported_not_crashed(monkeypatch: pytest.MonkeyPatch, capsys):
    def broken():
        raise RuntimeError("the OpenVINO runtime exploded")

    def no_portaudio():
        raise OSError("PortAudio library not found")

    monkeypatch.setattr(doctor, "check_openvino", broken)
    # In this process, PortAudio must not be loaded (it would keep whatever device list it saw now, for the
    # tests after this one) and the tray check must not open a display.
    monkeypatch.setattr(doctor.host, "sounddevice", no_portaudio)
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)

    checks = {c.name: c for c in doctor.run_checks()}
    assert not checks["openvino"].ok
    assert "RuntimeError: the OpenVINO runtime exploded" in checks["openvino"].detail
    assert checks["python"].ok and checks["config dir"].ok  # the others still ran
    assert not checks["portaudio"].ok and "portaudio" in checks["portaudio"].fix  # an expected failure, with its fix
    assert not checks["microphone"].ok

    code = cmd_doctor(argparse.Namespace(json=False))
    out = capsys.readouterr().out
    assert code == 1
    assert "!!  openvino" in out and "exploded" in out and "Traceback" not in out


# --- the Linux virtual camera on fake /sys and /etc trees -------------------------------------------------


def fake_sys(root: Path, cards: dict[str, str], exclusive_caps: str | None) -> Path:
    for dev, name in cards.items():
        (root / "class/video4linux" / dev).mkdir(parents=True)
        (root / "class/video4linux" / dev / "name").write_text(name + "\n")
        (root / "devices/virtual/video4linux" / dev).mkdir(parents=True)
    if exclusive_caps is not None:
        (root / "module/v4l2loopback/parameters").mkdir(parents=True)
        (root / "module/v4l2loopback/parameters/exclusive_caps").write_text(exclusive_caps + "\n")
    return root


@pytest.fixture()
def linux(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(doctor.host, "system", lambda: "linux")
    return monkeypatch


def test_camera_ok_with_our_device_and_exclusive_caps(linux, tmp_path: Path):
    linux.setattr(doctor.camera, "SYS", fake_sys(tmp_path, {"video10": "Avatar Cam"}, "Y,N,N,N,N,N,N,N"))
    ok, detail, fix = doctor.check_virtual_camera()
    assert ok and "/dev/video10" in detail and fix is None


def test_camera_without_exclusive_caps_is_a_problem(linux, tmp_path: Path):
    linux.setattr(doctor.camera, "SYS", fake_sys(tmp_path, {"video10": "Avatar Cam"}, "N,N,N,N,N,N,N,N"))
    ok, detail, fix = doctor.check_virtual_camera()
    assert not ok and "Chrome" in detail
    assert fix.startswith("sudo modprobe -r v4l2loopback && sudo modprobe v4l2loopback") and "exclusive_caps=1" in fix


def test_loopback_loaded_by_someone_else(linux, tmp_path: Path):
    linux.setattr(doctor.camera, "SYS", fake_sys(tmp_path, {"video0": "OBS Virtual Camera"}, "Y"))
    ok, detail, fix = doctor.check_virtual_camera()
    assert not ok and '"OBS Virtual Camera"' in detail and "modprobe -r" in fix


def test_module_installed_but_not_loaded(linux, tmp_path: Path):
    linux.setattr(doctor.camera, "SYS", fake_sys(tmp_path, {}, None))
    linux.setattr(doctor.camera, "_module_available", lambda name: True)
    ok, detail, fix = doctor.check_virtual_camera()
    assert not ok and "not loaded" in detail and "Secure Boot" in detail
    assert fix == 'sudo modprobe v4l2loopback devices=1 video_nr=10 card_label="Avatar Cam" exclusive_caps=1'


def test_camera_at_boot_reads_what_the_installer_writes(linux, tmp_path: Path):
    etc = tmp_path / "etc"
    linux.setattr(doctor.camera, "ETC", etc)
    ok, detail, fix = doctor.check_camera_at_boot()
    assert not ok and "/etc/modprobe.d/avatar-cam.conf" in fix and "/etc/modules-load.d/avatar-cam.conf" in fix

    (etc / "modprobe.d").mkdir(parents=True)
    (etc / "modules-load.d").mkdir()
    (etc / "modprobe.d/avatar-cam.conf").write_text(
        '# the "Avatar Cam" camera\noptions v4l2loopback devices=1 video_nr=10 card_label="Avatar Cam" exclusive_caps=1\n')
    (etc / "modules-load.d/avatar-cam.conf").write_text("# at boot\nv4l2loopback\n")
    assert doctor.check_camera_at_boot()[0]

    (etc / "modules-load.d/avatar-cam.conf").write_text("# v4l2loopback\n")  # only in a comment: not loaded
    ok, _, fix = doctor.check_camera_at_boot()
    assert not ok and fix == "echo v4l2loopback | sudo tee /etc/modules-load.d/avatar-cam.conf"


def test_windows_and_macos_virtual_microphone_by_name(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(doctor.host, "devices", lambda kind: ["Speakers (Realtek)", "CABLE Input (VB-Audio Virtual Cable)"])
    monkeypatch.setattr(doctor.host, "system", lambda: "win32")
    assert doctor.check_virtual_microphone()[0]
    monkeypatch.setattr(doctor.host, "system", lambda: "darwin")
    ok, _, fix = doctor.check_virtual_microphone()
    assert not ok and fix == "brew install --cask blackhole-2ch"
    monkeypatch.setattr(doctor.host, "devices", lambda kind: ["MacBook Speakers", "BlackHole 2ch"])
    assert doctor.check_virtual_microphone()[0]


def test_macos_camera_needs_obs_30(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    import plistlib

    monkeypatch.setattr(doctor.host, "system", lambda: "darwin")
    monkeypatch.setattr(doctor.camera, "OBS_MAC_APP", tmp_path / "OBS.app")
    ok, _, fix = doctor.check_virtual_camera()
    assert not ok and fix == "brew install --cask obs"

    (tmp_path / "OBS.app/Contents").mkdir(parents=True)
    info = tmp_path / "OBS.app/Contents/Info.plist"
    info.write_bytes(plistlib.dumps({"CFBundleShortVersionString": "29.1.3"}))
    ok, detail, fix = doctor.check_virtual_camera()
    assert not ok and "29.1.3" in detail and fix == "brew upgrade --cask obs"

    info.write_bytes(plistlib.dumps({"CFBundleShortVersionString": "30.2.3"}))
    listing = "com.obsproject.obs-studio.mac-camera-extension (30.2.3/30.2.3)\tOBS Virtual Camera\t[activated enabled]"
    monkeypatch.setattr(doctor.host, "run", lambda *cmd, **kw: argparse.Namespace(stdout=listing, returncode=0))
    assert doctor.check_virtual_camera()[0]
    monkeypatch.setattr(doctor.host, "run", lambda *cmd, **kw: argparse.Namespace(stdout="0 extension(s)\n", returncode=0))
    ok, detail, fix = doctor.check_virtual_camera()
    assert not ok and "start OBS once" in detail and fix == "open -a OBS"


def test_the_tray_check_explains_the_daemon_s_own_verdict(monkeypatch: pytest.MonkeyPatch):
    from avatar_cam.tray import backends as tray

    def daemon_says(works: bool, backend: str) -> None:
        monkeypatch.setattr(tray, "tray_available", lambda: (works, backend))

    monkeypatch.setenv("DISPLAY", ":0")
    monkeypatch.delenv("PYSTRAY_BACKEND", raising=False)
    monkeypatch.delenv("XDG_SESSION_TYPE", raising=False)
    monkeypatch.setenv("XDG_CURRENT_DESKTOP", "ubuntu:GNOME")
    daemon_says(True, "appindicator")
    ok, detail, _ = doctor.check_tray()
    assert ok and "appindicator" in detail
    daemon_says(True, "gtk")  # GNOME does not show a GTK status icon: AppIndicator did not load
    ok, detail, fix = doctor.check_tray()
    assert not ok and "only through AppIndicator" in detail and "appindicator" in fix.lower()

    monkeypatch.setenv("XDG_CURRENT_DESKTOP", "XFCE")
    daemon_says(True, "gtk")
    assert doctor.check_tray()[0]
    daemon_says(True, "xorg")
    ok, detail, _ = doctor.check_tray()
    assert not ok and "plain X11 backend, which has no menu" in detail
    daemon_says(False, tray.NO_DISPLAY + " (DISPLAY and WAYLAND_DISPLAY are not set)")
    ok, detail, fix = doctor.check_tray()
    assert not ok and detail.startswith("no display") and "--no-tray" in fix
    daemon_says(False, "gtk: ValueError: Namespace Gtk not available")
    ok, detail, fix = doctor.check_tray()
    assert not ok and "Namespace Gtk" in detail and "PyGObject" in fix
