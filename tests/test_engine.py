"""Engine loading: caches, devices, precisions, and the promise of no PyTorch at run time."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import openvino as ov
import pytest

from avatar_cam import Wav2LipEngine
from avatar_cam.errors import CheckpointError, EngineError
from avatar_cam.wav2lip.arch import MOUTH_FIRST_ROW
from avatar_cam.wav2lip.engine import supported_precisions


@pytest.fixture()
def inputs():
    rng = np.random.default_rng(1)
    return rng.uniform(-4, 4, (2, 1, 80, 16)).astype(np.float32), rng.uniform(0, 1, (2, 6, 96, 96)).astype(np.float32)


def test_second_start_uses_the_cached_ir_and_gives_the_same_frames(random_checkpoint, tmp_path, inputs):
    first = Wav2LipEngine.from_checkpoint(random_checkpoint, cache_dir=tmp_path)
    second = Wav2LipEngine.from_checkpoint(random_checkpoint, cache_dir=tmp_path)
    assert not first.report.ir_cached and second.report.ir_cached
    assert second.report.read_s == 0.0  # the checkpoint was not even opened
    np.testing.assert_array_equal(first.infer(*inputs), second.infer(*inputs))
    assert list((tmp_path / "compiled").iterdir()), "OpenVINO's compiled-model cache should be populated"


def test_damaged_ir_and_compiled_cache_are_rebuilt(random_checkpoint, tmp_path, inputs):
    want = Wav2LipEngine.from_checkpoint(random_checkpoint, cache_dir=tmp_path).infer(*inputs)
    for f in (tmp_path / "ir").glob("*.xml"):
        f.write_text("<net>cut")
    for f in (tmp_path / "compiled").iterdir():
        f.write_bytes(b"\0garbage")
    again = Wav2LipEngine.from_checkpoint(random_checkpoint, cache_dir=tmp_path)
    assert not again.report.ir_cached
    np.testing.assert_array_equal(again.infer(*inputs), want)


def test_streams_run_batches_side_by_side_and_each_caller_gets_its_own(random_checkpoint, tmp_path):
    """An offline render runs two batches at once (one per core): each thread gets the mouths of its own mel
    windows, the same as one stream gives them."""
    one = Wav2LipEngine.from_checkpoint(random_checkpoint, cache_dir=tmp_path, first_row=MOUTH_FIRST_ROW)
    two = Wav2LipEngine.from_checkpoint(random_checkpoint, cache_dir=tmp_path, first_row=MOUTH_FIRST_ROW, streams=2)
    assert (one.report.streams, two.report.streams) == (1, 2)
    rng = np.random.default_rng(3)
    face = rng.random((1, 6, 96, 96), dtype=np.float32)
    mels = [rng.standard_normal((b, 1, 80, 16)).astype(np.float32) for b in (8, 8, 3, 8, 5, 8, 8, 1)]
    want = [one.infer_encoded(m, one.encode_face(face)) for m in mels]
    features = two.encode_face(face)
    with ThreadPoolExecutor(2) as pool:
        got = list(pool.map(lambda m: two.infer_encoded(m, features), mels * 3))
    for g, w in zip(got, want * 3, strict=True):
        np.testing.assert_allclose(g, w, atol=1e-3)  # (other kernels: float rounding, ~0.03 of a grey level)


def test_disk_full_while_saving_ir_leaves_nothing_half_written(random_checkpoint, tmp_path, inputs, monkeypatch):
    def full_disk(model, path, **kw):
        with open(path, "w") as f:
            f.write("<partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ov, "save_model", full_disk)
    engine = Wav2LipEngine.from_checkpoint(random_checkpoint, cache_dir=tmp_path)
    assert engine.infer(*inputs).shape == (2, 3, 96 - engine.first_row, 96)  # still runs, from memory
    assert list((tmp_path / "ir").iterdir()) == []


def test_precision_is_f32_unless_asked_and_lower_precision_is_logged(random_checkpoint, tmp_path, inputs, caplog):
    caplog.set_level(logging.INFO, logger="avatar_cam")
    f32 = Wav2LipEngine.from_checkpoint(random_checkpoint, cache_dir=tmp_path)
    assert f32.precision == "f32"
    if "bf16" not in supported_precisions("CPU"):
        pytest.skip("this CPU has no bf16")
    bf16 = Wav2LipEngine.from_checkpoint(random_checkpoint, cache_dir=tmp_path, precision="bf16")
    assert bf16.precision == "bf16"
    assert "at bf16" in caplog.text
    diff = np.abs(bf16.infer(*inputs) - f32.infer(*inputs)).max()
    assert diff > 0  # it really ran at another precision


def test_unavailable_device_and_precision_are_clear(random_checkpoint, tmp_path):
    with pytest.raises(EngineError, match="no NPU device"):
        Wav2LipEngine.from_checkpoint(random_checkpoint, device="NPU", cache_dir=tmp_path)
    with pytest.raises(EngineError, match="unknown precision"):
        Wav2LipEngine.from_checkpoint(random_checkpoint, precision="int3", cache_dir=tmp_path)
    if "f16" not in supported_precisions("CPU"):
        with pytest.raises(EngineError, match="cannot run f16"):
            Wav2LipEngine.from_checkpoint(random_checkpoint, precision="f16", cache_dir=tmp_path)


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint at"):
        Wav2LipEngine.from_checkpoint(tmp_path / "nope.pth", cache_dir=tmp_path)


def test_bad_input_shapes_are_explained(random_checkpoint, tmp_path):
    engine = Wav2LipEngine.from_checkpoint(random_checkpoint, cache_dir=tmp_path)
    with pytest.raises(ValueError, match=r"mel must be \(B,1,80,16\)"):
        engine.infer(np.zeros((1, 80, 16), np.float32), np.zeros((1, 6, 96, 96), np.float32))
    with pytest.raises(ValueError, match="batch sizes differ"):
        engine.infer(np.zeros((2, 1, 80, 16), np.float32), np.zeros((1, 6, 96, 96), np.float32))


def test_no_pytorch_at_run_time(random_checkpoint, tmp_path):
    """Loading and running everything imports no torch; the package does not depend on it."""
    code = f"""
import sys, numpy as np
import avatar_cam, avatar_cam.cli
from avatar_cam import Wav2LipEngine, melspectrogram, StreamingMel
e = Wav2LipEngine.from_checkpoint({str(random_checkpoint)!r}, cache_dir={str(tmp_path)!r})
e.infer(np.zeros((1, 1, 80, 16), np.float32), np.zeros((1, 6, 96, 96), np.float32))
melspectrogram(np.zeros(16000, np.float32)); StreamingMel().push(np.zeros(1600, np.float32))
avatar_cam.cli.build_parser()
print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'librosa', 'torchaudio')))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    from importlib.metadata import requires

    runtime = [r for r in requires("avatar-cam") if "extra ==" not in r]
    assert not [r for r in runtime if r.lower().startswith(("torch", "librosa"))]


def test_bench_engine_reports_every_figure(random_checkpoint):
    from helpers import run_cli

    out = run_cli("bench", "engine", "--json", "--seconds", "0.1", "--no-torch", "--checkpoint", str(random_checkpoint),
                  timeout=600)  # it compiles the network six times: minutes on a loaded 2-core machine
    assert out.returncode == 0, out.stderr
    r = json.loads(out.stdout)
    for table in ("ms_per_frame", "ms_per_frame_still_face", "ms_per_frame_live"):
        assert set(r[table]["f32"]) == {"1", "2", "4", "8"}
        assert all(v > 0 for row in r[table].values() for v in row.values())
    assert r["load_warm_s"] > 0 and r["load_cold_s"] > 0 and r["peak_rss_mb_warm"] > 50


def test_the_readme_python_example_runs_as_written(random_checkpoint, tmp_path, monkeypatch):
    """The README's Python API example, run as a user would copy it, next to a checkpoint named as it says."""
    import shutil
    from pathlib import Path

    readme = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")
    example = readme.split("## Python API", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    shutil.copy(random_checkpoint, tmp_path / "wav2lip_gan.pth")
    monkeypatch.chdir(tmp_path)
    names: dict = {}
    exec(compile(example, "README.md", "exec"), names)  # noqa: S102 - the documented example itself
    assert names["out"].shape == (1, 3, 96, 96)
    assert names["out"].min() >= 0.0 and names["out"].max() <= 1.0
    assert names["m"].shape[0] == 80 and names["cols"].shape[0] == 80
