"""The control socket lives only in a folder that is the user's own and private: a runtime dir others can
write (where another user could plant a symlink) is refused with a clear message, and nothing is chmod-ed
through a symlink."""

from __future__ import annotations

import os
import shutil
import stat

import pytest
from helpers import run_cli, short_runtime_dir


@pytest.fixture()
def xdg(monkeypatch):
    d = short_runtime_dir()
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(d))
    yield d
    shutil.rmtree(d, ignore_errors=True)


def assert_refused(result, words: str) -> None:
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert words in result.stderr and "XDG_RUNTIME_DIR to a private directory of your own" in result.stderr


def test_a_runtime_dir_other_users_can_write_is_refused(xdg):
    xdg.chmod(0o1777)  # like /tmp
    assert_refused(run_cli("daemon", "--no-tray", timeout=60), "open to other users (mode 1777)")
    assert_refused(run_cli("ctl", "status", timeout=60), "open to other users")
    assert list(xdg.iterdir()) == []  # nothing was created there


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a folder to another user needs root")
def test_a_runtime_dir_of_another_user_is_refused(xdg):
    os.chown(xdg, 65534, 65534)  # nobody
    assert_refused(run_cli("daemon", "--no-tray", timeout=60), "belongs to another user")


def test_a_symlink_in_place_of_the_folder_is_refused_and_its_target_left_alone(xdg, tmp_path):
    mine = tmp_path / "my-folder"
    mine.mkdir(mode=0o755)
    mine.chmod(0o755)
    (xdg / "avatar-cam").symlink_to(mine)
    result = run_cli("daemon", "--no-tray", timeout=60)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert "is not a plain folder" in result.stderr
    assert stat.S_IMODE(mine.stat().st_mode) == 0o755
    assert list(mine.iterdir()) == []
