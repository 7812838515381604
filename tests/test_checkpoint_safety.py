"""The checkpoint reader runs nothing from the file and explains every way a file can be wrong."""

from __future__ import annotations

import contextlib
import os
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from avatar_cam.errors import CheckpointError
from avatar_cam.wav2lip import torch_archive
from avatar_cam.wav2lip.arch import expected_keys, random_state_dict
from avatar_cam.wav2lip.checkpoint import load_checkpoint, write_checkpoint


class _CreatesFile:
    """What an attacker puts in a .pth: unpickling it calls os.system."""

    def __init__(self, target: Path):
        self.target = target

    def __reduce__(self):
        return (os.system, (f"touch {self.target}",))


class _ExecsCode:
    def __init__(self, target: Path):
        self.target = target

    def __reduce__(self):
        return (exec, (f"open({str(self.target)!r}, 'w').write('owned')",))


@pytest.mark.parametrize("payload", [_CreatesFile, _ExecsCode], ids=["os.system", "builtins.exec"])
@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_malicious_pickle_is_refused_and_nothing_runs(tmp_path, payload, legacy):
    target = tmp_path / "pwned"
    evil = tmp_path / "wav2lip_gan.pth"
    sd = {k: torch.from_numpy(v) for k, v in random_state_dict(0).items()}
    torch.save({"state_dict": sd, "optimizer": payload(target)}, evil, _use_new_zipfile_serialization=not legacy)

    with pytest.raises(CheckpointError) as err:
        load_checkpoint(evil)
    assert "refused" in str(err.value)
    assert "system" in str(err.value) or "exec" in str(err.value)
    assert not target.exists()


def test_malicious_tensor_rebuild_target_is_refused(tmp_path):
    """A payload hidden where a tensor should be: a zip whose data.pkl reduces to posix.system."""
    target = tmp_path / "pwned"
    path = tmp_path / "x.pth"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data.pkl", pickle.dumps({"state_dict": _CreatesFile(target)}, protocol=2))
        zf.writestr("archive/version", "3\n")
    with pytest.raises(CheckpointError, match="refused"):
        load_checkpoint(path)
    assert not target.exists()


def test_truncated_archive_says_cut_short(random_checkpoint, tmp_path):
    cut = tmp_path / "wav2lip_gan.pth"
    cut.write_bytes(random_checkpoint.read_bytes()[: random_checkpoint.stat().st_size // 2])
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(cut)
    assert "cut short" in str(err.value) or "incomplete" in str(err.value)
    assert "models fetch" in (err.value.hint or "")


def test_truncated_legacy_file_says_cut_short(tmp_path):
    sd = {k: torch.from_numpy(v) for k, v in random_state_dict(0).items()}
    full = tmp_path / "full.pth"
    torch.save({"state_dict": sd}, full, _use_new_zipfile_serialization=False)
    cut = tmp_path / "cut.pth"
    cut.write_bytes(full.read_bytes()[:-1000])
    with pytest.raises(CheckpointError, match="cut short"):
        load_checkpoint(cut)


def test_wrong_shape_names_the_key_and_both_shapes(tmp_path):
    sd = random_state_dict(0)
    key = "audio_encoder.3.conv_block.0.weight"
    sd[key] = np.zeros((64, 32, 5, 5), np.float32)
    path = tmp_path / "bad.pth"
    write_checkpoint(sd, path)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    msg = str(err.value)
    assert key in msg and "(64, 32, 5, 5)" in msg and "(64, 32, 3, 3)" in msg


def test_missing_key_is_named(tmp_path):
    sd = random_state_dict(0)
    del sd["face_decoder_blocks.3.0.conv_block.0.bias"]
    path = tmp_path / "bad.pth"
    write_checkpoint(sd, path, module_prefix=True)
    with pytest.raises(CheckpointError, match=r"missing 1 .*face_decoder_blocks\.3\.0\.conv_block\.0\.bias"):
        load_checkpoint(path)


def test_another_model_is_not_mistaken_for_wav2lip(tmp_path):
    path = tmp_path / "syncnet.pth"
    torch_archive.save({"state_dict": {f"face_encoder.{i}.conv_block.0.weight": np.zeros((4, 4, 3, 3), np.float32) for i in range(400)}}, path)
    with pytest.raises(CheckpointError, match="not a Wav2Lip generator"):
        load_checkpoint(path)


def test_html_page_instead_of_checkpoint(tmp_path):
    page = tmp_path / "wav2lip_gan.pth"
    page.write_text("<!DOCTYPE html><html><body>Sign in to SharePoint</body></html>")
    with pytest.raises(CheckpointError, match="HTML"):
        load_checkpoint(page)


def test_published_layout_is_352_keys_and_36_3m_numbers():
    keys = expected_keys()
    assert len(keys) == 352
    assert sum(int(np.prod(s)) for s in keys.values()) == 36_320_837


def test_written_checkpoint_is_what_torch_reads(tmp_path):
    sd = random_state_dict(3)
    path = tmp_path / "w.pth"
    write_checkpoint(sd, path, module_prefix=True)
    loaded = torch.load(path, weights_only=True)
    assert set(loaded) >= {"state_dict", "optimizer", "global_step", "global_epoch"}
    for k, v in sd.items():
        np.testing.assert_array_equal(loaded["state_dict"]["module." + k].numpy(), v)


def _small_archives() -> list[bytes]:
    """A tiny zip checkpoint and a tiny legacy one (whose pickle has no CRC to catch damage)."""
    import tempfile

    obj = {"state_dict": {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "n": np.array(3)}, "step": 7}
    with tempfile.TemporaryDirectory() as d:
        torch_archive.save(obj, Path(d) / "z.pth")
        torch.save({k: torch.from_numpy(v) for k, v in obj["state_dict"].items()}, Path(d) / "l.pth",
                   _use_new_zipfile_serialization=False)
        return [(Path(d) / "z.pth").read_bytes(), (Path(d) / "l.pth").read_bytes()]


SMALL = _small_archives()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fuzzed_archives_fail_only_with_checkpoint_errors(tmp_path, data):
    """Flipped bytes and cuts anywhere in a checkpoint: a clear CheckpointError or a load, never a crash or hang."""
    raw = bytearray(data.draw(st.sampled_from(SMALL)))
    for _ in range(data.draw(st.integers(1, 8))):
        raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
    raw = raw[: data.draw(st.integers(1, len(raw)))]
    path = tmp_path / "fuzz.pth"
    path.write_bytes(bytes(raw))
    with contextlib.suppress(CheckpointError):  # a clear error is fine; anything else fails the test
        torch_archive.load(path)
