"""`avatar-cam models list | fetch | import` as a user runs them, and the model store under them."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import Serve, Status, assert_clean_failure, closed_port_url, model_files, run_cli

from avatar_cam import paths
from avatar_cam.errors import AvatarCamError, CheckpointError, ModelNotInstalledError
from avatar_cam.weights import store as model_store


@pytest.fixture(scope="session")
def checkpoint_sha(random_checkpoint: Path) -> str:
    return hashlib.sha256(random_checkpoint.read_bytes()).hexdigest()


def listed(name: str) -> dict:
    result = run_cli("models", "list", "--json")
    assert result.returncode == 0, result.stderr
    return {m["name"]: m for m in json.loads(result.stdout)["models"]}[name]




# --- the manifest ---------------------------------------------------------------------------------------


def test_the_manifest_lists_both_checkpoints_from_the_documented_sources():
    assets = model_store.manifest()
    assert list(assets) == ["wav2lip_gan", "wav2lip"]
    gan, plain = assets["wav2lip_gan"], assets["wav2lip"]
    assert (gan.file, plain.file) == ("wav2lip_gan.pth", "wav2lip.pth")
    assert "share=EdjI7bZlgApMqsVoEUUXpLsBxqXbn5z8VTmoxp55YNDcIA" in gan.urls[0]
    assert "share=Eb3LEzbfuKlJiR600lQWRxgBIY27JZg80f7V9jtMfbNDaQ" in plain.urls[0]
    assert gan.urls[1:] == (
        "https://github.com/justinjohn0306/Wav2Lip/releases/download/models/wav2lip_gan.pth",
        "https://huggingface.co/Nekochu/Wav2Lip/resolve/main/wav2lip_gan.pth",
    )
    assert plain.urls[1:] == (
        "https://github.com/justinjohn0306/Wav2Lip/releases/download/models/wav2lip.pth",
        "https://huggingface.co/rippertnt/wav2lip/resolve/main/checkpoints/wav2lip.pth",
    )
    for a in assets.values():
        assert all(u.startswith("https://") for u in a.urls)
        assert (a.engine, a.license, a.size) == ("wav2lip", "wav2lip-noncommercial", None)  # no invented sizes
        assert "non-commercial" in model_store.license_notice(a)
    raw = model_store.tomllib.loads((paths.manifest_dir() / "manifest.toml").read_text())
    assert raw["default"] == model_store.DEFAULT_MODEL


# --- list -----------------------------------------------------------------------------------------------


def test_list_on_an_empty_store_says_nothing_is_installed_and_how_to_fetch():
    result = run_cli("models", "list")
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("not installed") == 2
    assert "avatar-cam models fetch" in result.stdout and "avatar-cam models import PATH" in result.stdout
    assert listed("wav2lip_gan")["installed"] is False


def test_no_model_installed_is_an_actionable_error():
    with pytest.raises(ModelNotInstalledError) as err:
        model_store.installed_checkpoint()
    assert "avatar-cam models fetch" in err.value.hint and "avatar-cam models import PATH" in err.value.hint
    assert "non-commercial" in err.value.hint


# --- import ---------------------------------------------------------------------------------------------


def test_import_records_the_sha256_and_list_shows_it(random_checkpoint, checkpoint_sha):
    result = run_cli("models", "import", str(random_checkpoint), "--name", "wav2lip_gan")
    assert result.returncode == 0, result.stderr
    entry = listed("wav2lip_gan")
    assert entry["installed"] is True
    assert entry["sha256"] == checkpoint_sha
    assert entry["size"] == random_checkpoint.stat().st_size
    assert entry["source"] == f"imported from {random_checkpoint.resolve()}"
    assert model_store.installed_checkpoint() == paths.models_dir() / "wav2lip_gan.pth"
    assert model_files() == ["wav2lip_gan.json", "wav2lip_gan.pth"]

    again = run_cli("models", "import", str(random_checkpoint), "--name", "wav2lip_gan")  # twice is fine
    assert again.returncode == 0, again.stderr
    table = run_cli("models", "list").stdout
    assert "installed" in table and checkpoint_sha[:12] in table


def test_import_guesses_the_name_and_the_default_falls_back_to_what_is_installed(random_checkpoint, tmp_path):
    downloaded = tmp_path / "Wav2Lip (1).pth"  # as a browser names a second download
    shutil.copyfile(random_checkpoint, downloaded)
    m = model_store.import_checkpoint(downloaded)
    assert m.name == "wav2lip" and m.path == paths.models_dir() / "wav2lip.pth"
    assert model_store.installed_checkpoint() == m.path  # the default (wav2lip_gan) is missing: use wav2lip
    with pytest.raises(ModelNotInstalledError, match="wav2lip_gan"):
        model_store.installed_checkpoint("wav2lip_gan")
    assert model_store.import_checkpoint(m.path).sha256 == m.sha256  # importing the installed file itself


def test_import_of_a_file_that_is_not_a_checkpoint_is_a_clean_error(tmp_path):
    junk = tmp_path / "wav2lip_gan.pth"
    junk.write_bytes(os.urandom(4096))
    result = run_cli("models", "import", str(junk))
    assert_clean_failure(result)
    assert "not a PyTorch checkpoint" in result.stderr
    assert model_files() == []
    with pytest.raises(CheckpointError):
        model_store.import_checkpoint(junk)


# --- fetch ----------------------------------------------------------------------------------------------


def test_fetch_with_accept_license_downloads_validates_and_records(server, random_checkpoint, checkpoint_sha):
    server.routes["/wav2lip_gan.pth"] = Serve(random_checkpoint.read_bytes())
    env = {model_store.URLS_ENV: f"{closed_port_url()}, {server.url('/wav2lip_gan.pth')}"}

    result = run_cli("models", "fetch", "--accept-license", env=env, input="")
    assert result.returncode == 0, result.stderr
    assert "Installed wav2lip_gan" in result.stdout
    entry = listed("wav2lip_gan")
    assert entry["sha256"] == checkpoint_sha
    assert entry["source"] == server.url("/wav2lip_gan.pth")
    assert model_files() == ["wav2lip_gan.json", "wav2lip_gan.pth"]

    again = run_cli("models", "fetch", env=env, input="")
    assert again.returncode == 0 and "already installed" in again.stdout and "--force" in again.stdout
    server.requests.clear()
    forced = run_cli("models", "fetch", "--force", env=env, input="")  # no flag, no TTY: accepted once, remembered
    assert forced.returncode == 0, forced.stderr
    assert [r.path for r in server.requests] == ["/wav2lip_gan.pth"]


def test_fetch_without_a_terminal_or_the_flag_refuses_cleanly(server, random_checkpoint):
    server.routes["/wav2lip_gan.pth"] = Serve(b"never sent")
    result = run_cli("models", "fetch", env={model_store.URLS_ENV: server.url("/wav2lip_gan.pth")}, input="")
    assert_clean_failure(result)
    assert "--accept-license" in result.stderr
    assert "non-commercial" in result.stderr  # the notice was shown
    assert server.requests == []
    assert model_files() == []


def test_the_store_will_not_fetch_before_the_licence_is_accepted(server, monkeypatch):
    server.routes["/w.pth"] = Serve(b"never sent")
    monkeypatch.setenv(model_store.URLS_ENV, server.url("/w.pth"))
    with pytest.raises(AvatarCamError, match="non-commercial") as err:
        model_store.fetch("wav2lip")
    assert "--accept-license" in err.value.hint
    assert server.requests == []


def test_a_failed_fetch_lists_the_sources_and_the_manual_way(server):
    server.routes["/bad"] = Status(500)
    result = run_cli("models", "fetch", "--accept-license", env={model_store.URLS_ENV: server.url("/bad")}, input="")
    assert_clean_failure(result)
    assert server.url("/bad") in result.stderr and "HTTP 500" in result.stderr
    assert "avatar-cam models import PATH" in result.stderr
    assert model_files() == []


@pytest.mark.skipif(sys.platform == "win32", reason="needs a pseudo-terminal")
@pytest.mark.parametrize("answer, installed", [("no", False), ("yes", True)])
def test_fetch_asks_on_a_terminal(server, random_checkpoint, answer, installed):
    import pty

    server.routes["/w.pth"] = Serve(random_checkpoint.read_bytes())
    main, terminal = pty.openpty()
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "avatar_cam", "models", "fetch"], stdin=terminal, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True, env={**os.environ, model_store.URLS_ENV: server.url("/w.pth")},
        )
        os.write(main, f"{answer}\n".encode())
        out, err = proc.communicate(timeout=120)
    finally:
        os.close(terminal)
        os.close(main)
    assert "Type yes" in out and "non-commercial" in out
    assert (proc.returncode == 0) == installed, err
    assert ("wav2lip_gan.pth" in model_files()) == installed
    assert model_store.license_accepted(model_store.asset("wav2lip_gan")) == installed
