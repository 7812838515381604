"""Installing a model is all or nothing: a hostile download leaves nothing behind (no `.part` that fails the
next fetch too), a server that never stops sending is cut off, and a full disk while writing the model's
record installs neither the checkpoint nor the record."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import hostile_checkpoints as h
import pytest
from helpers import Endless, Serve, assert_clean_failure, model_files, run_cli

from avatar_cam import paths
from avatar_cam.errors import DownloadError
from avatar_cam.wav2lip.checkpoint import MAX_FILE_BYTES, validate_checkpoint
from avatar_cam.weights import store
from avatar_cam.weights.download import download


def test_a_hostile_download_leaves_no_part_and_the_next_fetch_says_the_same(server, tmp_path):
    bomb = h.zip_checkpoint(tmp_path / "bomb.pth", h.program(h.dict_of([("state_dict", h.zero_stride_bomb()[0])])),
                            h.zero_stride_bomb()[1])
    server.routes["/wav2lip_gan.pth"] = Serve(bomb.read_bytes())
    env = {store.URLS_ENV: server.url("/wav2lip_gan.pth")}
    first = run_cli("models", "fetch", "--accept-license", env=env)
    assert_clean_failure(first, with_fix=True)
    assert "more than a Wav2Lip checkpoint can hold" in first.stderr
    assert model_files() == []
    second = run_cli("models", "fetch", "--accept-license", env=env)
    assert_clean_failure(second, with_fix=True)
    assert "more than a Wav2Lip checkpoint can hold" in second.stderr
    assert model_files() == []


def test_a_server_that_sends_no_length_is_cut_off_at_the_bound(server, tmp_path):
    server.routes["/w.pth"] = Endless()
    (tmp_path / "dl").mkdir()
    dest = tmp_path / "dl" / "w.pth"
    with pytest.raises(DownloadError, match="cannot be over 5.2 MB"):
        download([server.url("/w.pth")], dest, validate=validate_checkpoint, progress=False, max_size=5 << 20)
    assert list(dest.parent.iterdir()) == []


def test_models_fetch_bounds_what_a_server_may_send(server):
    server.routes["/wav2lip_gan.pth"] = Endless()
    result = run_cli("models", "fetch", "--accept-license", env={store.URLS_ENV: server.url("/wav2lip_gan.pth")})
    assert_clean_failure(result, with_fix=True)
    assert f"cannot be over {MAX_FILE_BYTES / 1e6:.1f} MB" in result.stderr
    assert model_files() == []


# --- a full disk, for real: the models folder on a tmpfs just big enough for the checkpoint ------------------


@pytest.fixture
def small_disk(tmp_path, monkeypatch):
    """A tmpfs as the data dir, sized later by the test (mount needs root; CI runs as root)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if shutil.which("mount") is None or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4k", "tmpfs", str(mount)],
                                                       capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root) to fill a disk for real")
    monkeypatch.setenv("XDG_DATA_HOME", str(mount))

    def resize(size: int) -> None:
        subprocess.run(["mount", "-o", f"remount,size={size}", str(mount)], check=True)

    yield resize
    subprocess.run(["umount", "-l", str(mount)], check=False)


def _pages(n: int) -> int:
    return -(-n // 4096) * 4096


def test_a_full_disk_while_writing_the_record_installs_nothing(small_disk, random_checkpoint):
    small_disk(_pages(random_checkpoint.stat().st_size))  # room for the checkpoint's copy, not one page more
    result = run_cli("models", "import", str(random_checkpoint), "--name", "wav2lip_gan")
    assert_clean_failure(result, with_fix=True)
    assert "cannot install wav2lip_gan.pth" in result.stderr  # the copy fitted: the record is what failed
    assert "nothing was installed" in result.stderr and "disk space" in result.stderr
    assert model_files() == []


def test_a_fetch_stopped_by_a_full_disk_installs_the_part_next_time(small_disk, server, random_checkpoint):
    body = random_checkpoint.read_bytes()
    server.routes["/wav2lip_gan.pth"] = Serve(body)
    env = {store.URLS_ENV: server.url("/wav2lip_gan.pth")}
    small_disk(_pages(len(body)) + 2 * 4096)  # the part, its source note and the licence note fit; the record not
    first = run_cli("models", "fetch", "--accept-license", env=env)
    assert_clean_failure(first, with_fix=True)
    assert not (paths.models_dir() / "wav2lip_gan.pth").exists()
    small_disk(_pages(len(body)) + (1 << 20))
    server.requests.clear()
    second = run_cli("models", "fetch", "--accept-license", env=env)
    assert second.returncode == 0, second.stderr
    assert model_files() == ["wav2lip_gan.json", "wav2lip_gan.pth"]
    record = json.loads((paths.models_dir() / "wav2lip_gan.json").read_text())
    assert record["size"] == len(body) and record["source"] == server.url("/wav2lip_gan.pth")
    assert [r.range for r in server.requests] == [f"bytes={len(body)}-"]  # resumed: nothing downloaded twice


def test_importing_writes_no_temporary_files_on_success(random_checkpoint):
    m = store.import_checkpoint(random_checkpoint, name="wav2lip_gan")
    assert model_files() == ["wav2lip_gan.json", "wav2lip_gan.pth"]
    assert json.loads(Path(m.path.with_suffix(".json")).read_text())["sha256"] == m.sha256
