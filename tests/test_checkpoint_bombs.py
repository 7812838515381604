"""Hostile checkpoints: each is refused with a clear message (never a traceback), installs nothing, and costs
bounded memory, measured as the peak RSS of the `avatar-cam models import` process that reads it."""

from __future__ import annotations

import contextlib
import subprocess
import tracemalloc
from pathlib import Path

import hostile_checkpoints as h
import numpy as np
import pytest
from helpers import run_cli_peak_rss
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from avatar_cam import paths
from avatar_cam.errors import CheckpointError
from avatar_cam.wav2lip import torch_archive
from avatar_cam.wav2lip.arch import random_state_dict
from avatar_cam.wav2lip.checkpoint import BUDGET, load_checkpoint
from avatar_cam.wav2lip.safe_pickle import PickleBudget
from avatar_cam.wav2lip.torch_tensors import Budget

# A genuine checkpoint's weights are 145 MB; importing one peaks at ~190 MB here. Any input may cost at most
# about twice the weights.
PEAK_LIMIT_MB = 300


def import_measured(path: Path) -> tuple[subprocess.CompletedProcess, float]:
    """`avatar-cam models import PATH` in a child; returns its result and its own peak RSS in MB."""
    return run_cli_peak_rss("models", "import", str(path))


def installed() -> list[str]:
    folder = paths.models_dir()
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


@pytest.fixture(scope="session")
def genuine_sd() -> dict[str, np.ndarray]:
    return random_state_dict(1)


def _standalone(tmp: Path, name: str, sd_ops: bytes, storages: dict[str, bytes], **kw) -> Path:
    return h.zip_checkpoint(tmp / name, h.program(h.dict_of([("state_dict", sd_ops)])), storages, **kw)


BOMBS = {
    # defect 1: 389 bytes that asked for 3.6 GB; and the same hidden in an otherwise valid checkpoint
    "zero strides over 4 bytes": lambda tmp, sd: _standalone(tmp, "z.pth", *h.zero_stride_bomb()),
    "zero strides inside a valid checkpoint": lambda tmp, sd: h.genuine_with(tmp / "zv.pth", sd, *h.zero_stride_bomb()),
    "a zip member that inflates to 1 GB": lambda tmp, sd: h.add_raw_deflated(
        h.genuine_with(tmp / "zb.pth", sd, h.tensor("extra", 1, 0, (1,), (1,))), "archive/data/extra", 1 << 30),
    "a storage that declares 2 GB": lambda tmp, sd: h.genuine_with(
        tmp / "sd.pth", sd, h.tensor("extra", 1 << 29, 0, (1 << 29,), (1,)), {"extra": b"\0" * 64}),
    # defect 5
    "BUILD on an allowed storage type": lambda tmp, sd: h.genuine_with(tmp / "b1.pth", sd, h.build_on_storage_type()),
    "BUILD on an allowed function": lambda tmp, sd: h.genuine_with(tmp / "b2.pth", sd, h.build_on_rebuild_function()),
    # defect 6
    "lists nested 1000 deep": lambda tmp, sd: h.genuine_with(tmp / "n.pth", sd, h.nested_lists(1000)),
    "a negative size": lambda tmp, sd: _standalone(tmp, "s1.pth", h.tensor("a", 4, 0, (-1, 4), (4, 1)), {"a": bytes(16)}),
    "a string size": lambda tmp, sd: _standalone(tmp, "s2.pth", h.tensor("a", 4, 0, ("4",), (1,)), {"a": bytes(16)}),
    "a float size": lambda tmp, sd: _standalone(tmp, "s3.pth", h.tensor("a", 4, 0, (4.0,), (1,)), {"a": bytes(16)}),
    "a negative storage size": lambda tmp, sd: _standalone(tmp, "s4.pth", h.tensor("a", -4, 0, (4,), (1,)), {"a": bytes(16)}),
    "an offset past the storage": lambda tmp, sd: _standalone(tmp, "o1.pth", h.tensor("a", 4, 9, (4,), (1,)), {"a": bytes(16)}),
    "a 0-d tensor at offset -1": lambda tmp, sd: _standalone(tmp, "o2.pth", h.tensor("a", 4, -1, (), ()), {"a": bytes(16)}),
    "a duplicate zip member with short data": lambda tmp, sd: h.genuine_with(
        tmp / "d.pth", sd, h.value(None), extra_members=[("archive/data/w0", b"\0" * 8)]),
    "keys that are not strings, and a 100 kB key": lambda tmp, sd: h.genuine_with_keys(
        tmp / "k.pth", sd, h.value(5) + h.value(None) + h.value("x" * 100_000) + h.value(None)),
    "a legacy file whose storage claims 2**62 elements": lambda tmp, sd: h.legacy_checkpoint(
        tmp / "l.pth", h.dict_of([("state_dict", h.tensor("0", 4, 0, (4,), (1,)))]), ["0"], [(1 << 62, bytes(16))]),
    "a legacy file with a 4 GB string length": lambda tmp, sd: h.legacy_checkpoint(
        tmp / "l2.pth", b"\x8d" + (4 << 30).to_bytes(8, "little") + b"abc", ["0"], []),
}


@pytest.mark.parametrize("build", BOMBS.values(), ids=BOMBS.keys())
def test_hostile_checkpoint_is_refused_cleanly_with_bounded_memory(tmp_path, genuine_sd, build):
    path = build(tmp_path, genuine_sd)
    result, peak_mb = import_measured(path)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("avatar-cam: ") and "\n  -> " in result.stderr  # the message and its fix
    assert installed() == []
    assert peak_mb < PEAK_LIMIT_MB, f"peak RSS {peak_mb:.0f} MB"


def test_genuine_import_stays_within_the_same_bound(random_checkpoint):
    result, peak_mb = import_measured(random_checkpoint)
    assert result.returncode == 0, result.stderr
    assert installed() == ["wav2lip.json", "wav2lip.pth"]  # named after the file: wav2lip_random.pth
    assert peak_mb < PEAK_LIMIT_MB, f"peak RSS {peak_mb:.0f} MB"


def test_a_genuine_file_loads_after_one_that_tried_to_change_the_loader(tmp_path, genuine_sd, random_checkpoint):
    for i, attack in enumerate((h.build_on_storage_type(), h.build_on_rebuild_function())):
        with pytest.raises(CheckpointError, match="BUILD"):
            load_checkpoint(h.genuine_with(tmp_path / f"{i}.pth", genuine_sd, attack))
    weights = load_checkpoint(random_checkpoint).state_dict
    assert all(w.dtype == np.float32 for w in weights.values())
    np.testing.assert_array_equal(weights["output_block.1.bias"], random_state_dict(7)["output_block.1.bias"])


def test_billion_laughs_costs_nothing(tmp_path, genuine_sd):
    """Shared references 30 deep (2**30 paths) around a 1 MB tensor: harmless junk beside valid weights, read once."""
    path = h.genuine_with(tmp_path / "bl.pth", genuine_sd, h.billion_laughs(30, h.tensor("t", 250_000, 0, (250_000,), (1,))),
                          {"t": bytes(1_000_000)})
    result, peak_mb = import_measured(path)
    assert result.returncode == 0, result.stderr
    assert peak_mb < PEAK_LIMIT_MB, f"peak RSS {peak_mb:.0f} MB"


def test_shared_references_are_not_copied(tmp_path, genuine_sd):
    """A tensor reached by 2**30 paths is read and converted once: `load` keeps it one shared array."""
    path = h.genuine_with(tmp_path / "bl.pth", genuine_sd, h.billion_laughs(30, h.tensor("t", 4, 0, (4,), (1,))),
                          {"t": bytes(16)})
    obj = torch_archive.load(path, BUDGET)
    level = obj["optimizer"]
    while isinstance(level, list) and len(level) == 2:
        assert level[0] is level[1]
        level = level[0]
    assert level[0].shape == (4,)


def test_the_reader_does_not_read_the_optimizer_state(tmp_path, genuine_sd):
    """The published files carry Adam's moments (twice the weights): only the generator's weights are read."""
    big = {f"m{i}": bytes(4_000_000) for i in range(20)}
    ops = h.dict_of([(k, h.tensor(k, 1_000_000, 0, (1_000_000,), (1,))) for k in big])
    path = h.genuine_with(tmp_path / "adam.pth", genuine_sd, ops, big)
    tracemalloc.start()
    try:
        load_checkpoint(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 * 36_320_837 + 40_000_000  # the weights and one tensor's temporaries, not the 80 MB of moments


# --- fuzzing the fields an attacker controls ----------------------------------------------------------------

SMALL_BUDGET = Budget(pickle=PickleBudget(max_ops=20_000, max_depth=16), max_declared_bytes=1 << 20, max_read_bytes=1 << 20)
anything = st.one_of(
    st.integers(-(2**70), 2**70), st.integers(-3, 300), st.floats(allow_nan=True), st.text(max_size=4), st.none(),
    st.booleans(),
)
dims = st.one_of(st.lists(st.one_of(st.integers(0, 2**40), st.integers(-2, 64), anything), max_size=5).map(tuple), anything)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(numel=st.one_of(st.integers(-2, 2**63), anything), offset=st.one_of(st.integers(-2, 64), anything),
       size=dims, stride=dims, data_len=st.integers(0, 300), storage=st.sampled_from(["FloatStorage", "HalfStorage",
       "BFloat16Storage", "LongStorage", "BoolStorage"]), legacy=st.booleans(), nest=st.integers(0, 40),
       shared=st.integers(0, 40))
def test_fuzzed_tensor_fields_fail_only_with_checkpoint_errors_and_small_memory(
        tmp_path, numel, offset, size, stride, data_len, storage, legacy, nest, shared):
    ops = h.tensor("0", numel, offset, size, stride, storage)
    ops = h.billion_laughs(shared, ops) if shared else ops
    ops = b"]" * nest + ops + b"a" * nest
    obj = h.dict_of([("state_dict", ops)])
    path = tmp_path / "f.pth"
    if legacy:
        h.legacy_checkpoint(path, obj, ["0"], [(numel if type(numel) is int and -2**63 <= numel < 2**63 else 0,
                                                bytes(data_len))])
    else:
        h.zip_checkpoint(path, h.program(obj), {"0": bytes(data_len)})
    tracemalloc.start()
    try:
        with contextlib.suppress(CheckpointError):  # a clear error is fine; anything else fails the test
            torch_archive.load(path, SMALL_BUDGET)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 << 20


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_a_file_as_pytorch_saves_it_with_adam_state_still_loads(tmp_path, legacy):
    """The published layout, written by PyTorch itself: a module's state_dict (with its `_metadata`, set by
    pickle BUILD on the OrderedDict), Adam's moments, step counters. The frozen loader still reads it."""
    import torch
    from wav2lip_reference import Wav2LipReference

    model = Wav2LipReference()
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    model(torch.rand(2, 1, 80, 16), torch.rand(2, 6, 96, 96)).mean().backward()
    opt.step()
    path = tmp_path / "wav2lip_gan.pth"
    torch.save({"state_dict": model.state_dict(), "optimizer": opt.state_dict(), "global_step": 5, "global_epoch": 1},
               path, _use_new_zipfile_serialization=not legacy)
    ckpt = load_checkpoint(path)
    assert ckpt.global_step == 5
    key = "face_decoder_blocks.3.0.conv_block.0.weight"
    np.testing.assert_array_equal(ckpt.state_dict[key], model.state_dict()[key].numpy())
