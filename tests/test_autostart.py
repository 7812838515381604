"""The "Start at login" entry: written where the desktop looks for it, starts this installation, and turning
it on or off twice is the same as once."""

from __future__ import annotations

import os
import plistlib
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

import avatar_cam
from avatar_cam.tray import autostart


def exec_of(entry: Path) -> list[str]:
    line = next(x for x in entry.read_text().splitlines() if x.startswith("Exec="))
    return autostart.desktop_exec_split(line[len("Exec="):])


@given(st.lists(st.text(st.characters(blacklist_categories=("Cs", "Cc")) | st.sampled_from("\t\n"), max_size=12),
                min_size=1, max_size=4))
def test_exec_quoting_round_trips(argv: list[str]):
    line = " ".join(autostart.desktop_exec_quote(a) for a in argv)
    assert "\n" not in line  # one line in the file, whatever the path holds
    assert autostart.desktop_exec_split(line) == argv


def test_exec_quoting_matches_the_shell_for_plain_paths():
    argv = ["/home/a b/venv/bin/avatar-cam", "-m", "50%"]
    line = " ".join(autostart.desktop_exec_quote(a) for a in argv)
    assert line == '"/home/a b/venv/bin/avatar-cam" -m 50%%'
    assert shlex.split(line.replace("%%", "%")) == argv


def test_on_writes_a_working_xdg_autostart_entry(user_dirs: Path):
    assert not autostart.is_enabled()
    path = autostart.set_enabled(True)
    assert path == user_dirs / "config" / "autostart" / "avatar-cam.desktop"  # XDG_CONFIG_HOME, set by conftest
    assert autostart.is_enabled()

    text = path.read_text()
    assert "[Desktop Entry]" in text and "Type=Application" in text and "X-GNOME-Autostart-enabled=true" in text
    argv = exec_of(path)
    assert Path(argv[0]).is_absolute()
    done = subprocess.run([*argv, "--version"], capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == f"avatar-cam {avatar_cam.__version__}", done.stderr


def test_on_and_off_are_idempotent(user_dirs: Path):
    path = autostart.set_enabled(True)
    first = (path.read_bytes(), path.stat().st_mtime_ns)
    assert autostart.set_enabled(True) == path
    assert (path.read_bytes(), path.stat().st_mtime_ns) == first  # not even rewritten

    assert autostart.set_enabled(False) == path
    assert not path.exists() and not autostart.is_enabled()
    autostart.set_enabled(False)  # off when already off: fine
    assert not autostart.is_enabled()
    assert list(path.parent.iterdir()) == []  # no temporary files left behind


def test_an_entry_hidden_by_the_desktop_counts_as_off(user_dirs: Path):
    path = autostart.set_enabled(True)
    path.write_text(path.read_text() + "Hidden=true\n")
    assert not autostart.is_enabled()
    autostart.set_enabled(True)  # turning it on again restores our entry
    assert autostart.is_enabled()


def test_relative_xdg_config_home_is_ignored(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    monkeypatch.setenv("XDG_CONFIG_HOME", "relative/config")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert autostart.entry_path() == tmp_path / ".config" / "autostart" / "avatar-cam.desktop"


def test_without_the_script_it_runs_python_dash_m(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    python = tmp_path / "bin with space" / "python3"
    python.parent.mkdir()
    # A Python with no avatar-cam script beside it (a wrapper, not a symlink: a venv's python must keep its venv).
    python.write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    python.chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(python))
    assert autostart.command() == [str(python), "-m", "avatar_cam"]
    path = autostart.set_enabled(True)
    argv = exec_of(path)
    assert argv == [str(python), "-m", "avatar_cam"]
    done = subprocess.run([*argv, "--version"], capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == f"avatar-cam {avatar_cam.__version__}", done.stderr


def test_macos_launch_agent(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    monkeypatch.setattr(autostart, "_system", lambda: "darwin")
    monkeypatch.setenv("HOME", str(tmp_path))
    path = autostart.set_enabled(True)
    assert path == tmp_path / "Library" / "LaunchAgents" / "io.avatar-cam.tray.plist"
    agent = plistlib.loads(path.read_bytes())
    assert agent["Label"] == "io.avatar-cam.tray"
    assert agent["ProgramArguments"] == autostart.command() and agent["RunAtLoad"] is True
    assert autostart.is_enabled()
    autostart.set_enabled(False)
    assert not path.exists() and not autostart.is_enabled()


def test_windows_startup_folder_without_powershell_falls_back_to_cmd(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    monkeypatch.setattr(autostart, "_system", lambda: "win32")
    monkeypatch.setenv("APPDATA", str(tmp_path))
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))  # no powershell here
    lnk = autostart.set_enabled(True)
    startup = tmp_path / "Microsoft" / "Windows" / "Start Menu" / "Programs" / "Startup"
    assert lnk == startup / "Avatar Cam.lnk"
    cmd = startup / "Avatar Cam.cmd"
    assert cmd.read_text().startswith('@start "" ') and "-m avatar_cam" in cmd.read_text()
    assert autostart.is_enabled()
    autostart.set_enabled(False)
    assert not cmd.exists() and not autostart.is_enabled()


def test_windows_without_appdata_is_an_actionable_error(monkeypatch: pytest.MonkeyPatch):
    from avatar_cam.errors import AvatarCamError

    monkeypatch.setattr(autostart, "_system", lambda: "win32")
    monkeypatch.delenv("APPDATA", raising=False)
    with pytest.raises(AvatarCamError, match="APPDATA"):
        autostart.set_enabled(True)


def test_unwritable_folder_is_an_actionable_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    from avatar_cam.errors import AvatarCamError

    blocker = tmp_path / "config"
    blocker.write_text("a file where the config folder should be")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(blocker))
    with pytest.raises(AvatarCamError, match="could not create the login entry"):
        autostart.set_enabled(True)
    assert os.path.isfile(blocker)


def test_doctor_flags_an_entry_whose_program_is_gone(user_dirs: Path):
    from avatar_cam import doctor

    path = autostart.set_enabled(True)
    assert doctor.check_autostart()[0]
    gone = user_dirs / "deleted venv" / "bin" / "avatar-cam"
    path.write_text(autostart.desktop_entry([str(gone)]))
    assert autostart.entry_command() == [str(gone)]
    ok, detail, fix = doctor.check_autostart()
    assert not ok and str(gone) in detail and "Start at login" in fix
