"""install_scripts/install-linux.sh in its test mode: everything under a prefix, no root, no kernel module.

The script runs from a copy of the repository (so edits made meanwhile cannot change what it installs), into
a prefix whose path holds a space (quoting), with a venv that reuses this interpreter's packages and installs
only our package (`--system-site-packages --no-deps`): a few seconds, no download.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import avatar_cam
from avatar_cam.tray import autostart

REPO = Path(__file__).resolve().parent.parent
SCRIPT = Path("install_scripts") / "install-linux.sh"
REAL_SYSTEM_FILES = ("/etc/modprobe.d/avatar-cam.conf", "/etc/modules-load.d/avatar-cam.conf")
FAST = ["--no-system-packages", "--skip-modprobe", "--system-site-packages", "--no-deps", "--python", sys.executable]


@pytest.fixture(scope="module")
def repo_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    dest = tmp_path_factory.mktemp("repo") / "avatar-cam"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("avatar_cam", "models", "tray_assets", "install_scripts"):
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, dest / name, ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        if (REPO / name).is_file():
            shutil.copy2(REPO / name, dest / name)
    return dest


def install(repo: Path, *args: str, home: Path) -> subprocess.CompletedProcess:
    # HOME points at an empty folder of ours: anything written outside the prefix would show up there.
    env = {**os.environ, "HOME": str(home)}
    done = subprocess.run(["bash", str(repo / SCRIPT), *args], capture_output=True, text=True, env=env,
                          stdin=subprocess.DEVNULL, timeout=300)
    print(done.stdout, done.stderr)
    return done


def snapshot(root: Path) -> dict[str, tuple]:
    """Every file and link under root: content hash (or link target) and modification time.

    Left out: home/intel, where `import openvino` counts its own uses (telemetry) each time the doctor runs."""
    files = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        if rel.startswith("home/intel/"):
            continue
        if p.is_symlink():
            files[rel] = ("link", os.readlink(p), p.lstat().st_mtime_ns)
        elif p.is_file():
            files[rel] = (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
    return files


def desktop_exec(entry: Path) -> list[str]:
    line = next(x for x in entry.read_text().splitlines() if x.startswith("Exec="))
    return autostart.desktop_exec_split(line[len("Exec="):])


def files_under(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if not p.is_dir()] if folder.exists() else []


@pytest.fixture(scope="module")
def installed(repo_copy: Path, tmp_path_factory: pytest.TempPathFactory):
    base = tmp_path_factory.mktemp("install")
    prefix, home = base / "pre fix", base / "real-home"
    home.mkdir()
    etc_before = [Path(p).exists() for p in REAL_SYSTEM_FILES]
    first = install(repo_copy, "--prefix", str(prefix), "--autostart", *FAST, home=home)
    assert [Path(p).exists() for p in REAL_SYSTEM_FILES] == etc_before
    return prefix, home, first


def test_writes_the_virtual_camera_configuration(installed):
    prefix, _, first = installed
    assert first.returncode == 0, first.stderr
    modprobe = (prefix / "etc/modprobe.d/avatar-cam.conf").read_text()
    options = [x for x in modprobe.splitlines() if x.startswith("options v4l2loopback ")]
    assert len(options) == 1
    for option in ("exclusive_caps=1", 'card_label="Avatar Cam"', "devices=1", "video_nr=10"):
        assert option in options[0]
    modules = (prefix / "etc/modules-load.d/avatar-cam.conf").read_text().splitlines()
    assert "v4l2loopback" in [x.strip() for x in modules if not x.startswith("#")]


def test_says_the_module_was_not_loaded_and_what_to_do(installed):
    _, _, first = installed
    out = first.stdout
    assert "did NOT load the v4l2loopback kernel module" in out
    assert 'sudo modprobe v4l2loopback devices=1 video_nr=10 card_label="Avatar Cam" exclusive_caps=1' in out
    assert "reboot" in out


def test_the_installed_command_and_menu_entry_run(installed):
    prefix, _, _ = installed
    home = prefix / "home"
    venv_exe = home / ".local/share/avatar-cam/venv/bin/avatar-cam"
    link = home / ".local/bin/avatar-cam"
    assert link.is_symlink() and Path(os.readlink(link)) == venv_exe
    version = f"avatar-cam {avatar_cam.__version__}"
    assert subprocess.run([str(link), "--version"], capture_output=True, text=True, timeout=60).stdout.strip() == version

    menu = home / ".local/share/applications/avatar-cam.desktop"
    argv = desktop_exec(menu)
    assert argv == [str(venv_exe)]  # quoted in the file: the prefix has a space in it
    assert subprocess.run([*argv, "--version"], capture_output=True, text=True, timeout=60).stdout.strip() == version


def test_autostart_entry_is_the_one_the_tray_toggle_writes(installed):
    prefix, _, _ = installed
    home = prefix / "home"
    entry = home / ".config/autostart/avatar-cam.desktop"
    venv_python = home / ".local/share/avatar-cam/venv/bin/python"
    assert entry.read_text() == autostart.desktop_entry([str(venv_python.with_name("avatar-cam"))])
    # The installed package's own toggle, run the way the tray would: finds the entry on, and writes nothing new.
    before = snapshot(entry.parent)
    code = "from avatar_cam.tray import autostart as a; print(a.is_enabled()); print(a.set_enabled(True))"
    out = subprocess.run([str(venv_python), "-c", code], capture_output=True, text=True, timeout=60, check=True,
                         env={**os.environ, "XDG_CONFIG_HOME": str(home / ".config")}).stdout
    assert out.splitlines() == ["True", str(entry)]
    assert snapshot(entry.parent) == before


def test_ends_with_the_doctor(installed):
    _, _, first = installed
    doctor_part = first.stdout.split("==> avatar-cam doctor", 1)[1]
    assert any(line.startswith("ok  python") for line in doctor_part.splitlines())  # the doctor's own report
    assert "!!  virtual camera " in doctor_part or "ok  virtual camera " in doctor_part


def test_leaves_the_real_system_alone(installed):
    _, home, _ = installed
    assert files_under(home) == []  # nothing in $HOME (the pip cache and the doctor's folders stay in the prefix)
    # (the fixture checked that the real /etc files did not appear)


def test_second_run_changes_nothing(installed, repo_copy: Path):
    prefix, home, _ = installed
    before = snapshot(prefix)
    again = install(repo_copy, "--prefix", str(prefix), "--autostart", *FAST, home=home)
    assert again.returncode == 0, again.stderr
    assert snapshot(prefix) == before
    assert "change:" not in again.stdout
    for what in ("avatar-cam.conf is up to date", "already: " + str(prefix), "from this source is installed",
                 "avatar-cam.desktop is up to date"):
        assert what in again.stdout


def test_dry_run_writes_nothing(repo_copy: Path, tmp_path: Path):
    prefix, home = tmp_path / "dry", tmp_path / "home-dry"
    home.mkdir()
    done = install(repo_copy, "--prefix", str(prefix), "--dry-run", "--autostart", *FAST, home=home)
    assert done.returncode == 0, done.stderr
    assert files_under(prefix) == [] and files_under(home) == []
    assert "would run:" in done.stdout and "(dry run: not written)" in done.stdout
    assert "change: creating" in done.stdout  # it still says what it would change


def test_camera_only_sets_up_the_camera_and_nothing_else(repo_copy: Path, tmp_path: Path):
    prefix, home = tmp_path / "cam", tmp_path / "home-cam"
    home.mkdir()
    done = install(repo_copy, "--prefix", str(prefix), "--camera-only", home=home)
    assert done.returncode == 0, done.stderr
    written = sorted(str(p.relative_to(prefix)) for p in files_under(prefix))
    assert written == ["etc/modprobe.d/avatar-cam.conf", "etc/modules-load.d/avatar-cam.conf"]
    assert files_under(home) == []
    assert "--camera-only" in done.stdout and "sudo modprobe v4l2loopback" in done.stdout


def test_bad_option_is_a_message_not_a_mess(repo_copy: Path, tmp_path: Path):
    done = install(repo_copy, "--frobnicate", home=tmp_path)
    assert done.returncode != 0
    assert "unknown option: --frobnicate" in done.stderr


@pytest.mark.parametrize("script", ["install-linux.sh", "install-macos.sh"])
def test_shell_scripts_parse_and_pass_shellcheck(script: str):
    path = REPO / "install_scripts" / script
    subprocess.run(["bash", "-n", str(path)], check=True)
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck is not installed (apt-get install shellcheck)")
    done = subprocess.run(["shellcheck", str(path)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout


@pytest.mark.parametrize("arg", ["/usr/bin/avatar-cam", "/home/a b/venv/bin/avatar-cam", "/x/$HOME/`id`/p", 'say "hi"',
                                 "back\\slash", "50%", "", "tab\there", "new\nline", "it's", "~/x#1", "caf\u00e9 (2)"])
def test_script_quotes_exec_exactly_like_the_tray(arg: str):
    """The script's desktop_quote and autostart.desktop_exec_quote give the same bytes: one entry, two writers."""
    script = (REPO / SCRIPT).read_text()
    function = script[script.index("desktop_quote() {"):]
    function = function[: function.index("\n}\n") + 3]
    done = subprocess.run(["bash", "-c", function + 'desktop_quote "$1"', "_", arg], capture_output=True, text=True,
                          check=True, env={**os.environ, "LC_ALL": "C.UTF-8"})
    assert done.stdout == autostart.desktop_exec_quote(arg)
