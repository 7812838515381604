"""OpenVINO engine vs an independent PyTorch implementation, through a checkpoint in the published format."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pytest
import torch
from wav2lip_reference import calibrated_reference

from avatar_cam import Wav2LipEngine
from avatar_cam.audio.mel import melspectrogram
from avatar_cam.lipsync.wav2lip import Wav2LipLipSync
from avatar_cam.wav2lip.arch import MOUTH_FIRST_ROW

TOLERANCE = 1e-4


def face_batch(face96: np.ndarray, n: int) -> np.ndarray:
    """(n,6,96,96): masked crop + reference crop, with small shifts and gains so BatchNorm sees variety."""
    out = []
    for i in range(n):
        f = np.roll(face96, shift=(i % 3) - 1, axis=1) * (0.9 + 0.05 * (i % 5))
        masked = f.copy()
        masked[48:] = 0.0
        out.append(np.concatenate([masked, f], axis=2).transpose(2, 0, 1))
    return np.clip(np.stack(out), 0, 1).astype(np.float32)


def mel_windows(speech: np.ndarray, n: int) -> np.ndarray:
    m = melspectrogram(speech)
    starts = np.linspace(0, m.shape[1] - 16, n).astype(int)
    return np.stack([m[None, :, s : s + 16] for s in starts]).astype(np.float32)


@pytest.fixture(scope="module")
def reference(speech_16k, astronaut_face_96):
    mels = torch.from_numpy(mel_windows(speech_16k, 24))
    faces = torch.from_numpy(face_batch(astronaut_face_96, 24))
    return calibrated_reference(mels, faces, seed=0)


def save_published(model: torch.nn.Module, path, *, module_prefix: bool, legacy: bool = False) -> None:
    """torch.save the way the training script did: generator, optimizer state, step and epoch."""
    opt = torch.optim.Adam(model.parameters(), lr=0.0)
    # Eval mode: a train-mode pass would fold these inputs into the calibrated BatchNorm statistics.
    model(torch.rand(2, 1, 80, 16), torch.rand(2, 6, 96, 96)).mean().backward()
    opt.step()  # lr 0: fills the optimizer state without changing the weights
    opt.zero_grad()
    prefix = "module." if module_prefix else ""
    sd = OrderedDict((prefix + k, v) for k, v in model.state_dict().items())
    ckpt = {"state_dict": sd, "optimizer": opt.state_dict(), "global_step": 123456, "global_epoch": 42}
    torch.save(ckpt, path, _use_new_zipfile_serialization=not legacy)


@pytest.mark.parametrize(
    "module_prefix,legacy", [(True, False), (False, False), (True, True)], ids=["module-prefix", "plain-keys", "legacy-format"]
)
def test_openvino_matches_pytorch_on_real_face_and_speech(reference, speech_16k, astronaut_face_96, tmp_path, module_prefix, legacy):
    path = tmp_path / "wav2lip_gan.pth"
    save_published(reference, path, module_prefix=module_prefix, legacy=legacy)
    engine = Wav2LipEngine.from_checkpoint(path, device="CPU", precision="f32", cache_dir=tmp_path / "cache", first_row=0)
    assert engine.precision == "f32"

    mels = mel_windows(speech_16k, 6)
    faces = face_batch(astronaut_face_96, 6)
    with torch.no_grad():
        want = reference(torch.from_numpy(mels), torch.from_numpy(faces)).numpy()
    got = engine.infer(mels, faces)
    assert got.shape == (6, 3, 96, 96)
    err = np.abs(got - want).max()
    print(f"max abs difference OpenVINO vs PyTorch: {err:.2e}")
    assert err < TOLERANCE
    # batch 1 goes through the same dynamic-batch graph
    assert np.abs(engine.infer(mels[:1], faces[:1]) - want[:1]).max() < TOLERANCE


@pytest.mark.parametrize("first_row", [None, 1, 30, 64, 95], ids=["product", "from1", "from30", "from64", "from95"])
def test_the_live_form_draws_the_published_networks_rows(reference, speech_16k, astronaut_face_96, tmp_path, first_row):
    """The live form (the product's engine asks for it: only the rows the compositor blends) skips the rows
    above `first_row` and takes the face's share of each decoder convolution precomputed; both are exact in
    arithmetic, so every row it keeps must be the published network's."""
    path = tmp_path / "wav2lip.pth"
    save_published(reference, path, module_prefix=True)
    if first_row is None:  # what the live camera loads
        engine = Wav2LipLipSync.from_checkpoint(path, cache_dir=tmp_path / "cache").engine
        first_row = engine.first_row
        assert first_row == MOUTH_FIRST_ROW <= 47  # the lower half, and the row above it that scaling reads
    else:
        engine = Wav2LipEngine.from_checkpoint(path, cache_dir=tmp_path / "cache", first_row=first_row)
    mels, faces = mel_windows(speech_16k, 4), face_batch(astronaut_face_96, 4)
    with torch.no_grad():
        want = reference(torch.from_numpy(mels), torch.from_numpy(faces)).numpy()
    got = engine.infer(mels, faces)
    assert got.shape == (4, 3, 96 - first_row, 96)
    assert np.abs(got - want[:, :, first_row:]).max() < TOLERANCE
    features = engine.encode_face(faces[:1])  # one face for a batch of mels, as the live path does
    np.testing.assert_allclose(engine.infer_encoded(mels, features)[:1], got[:1], atol=1e-6)


def test_random_weights_are_well_conditioned(reference, speech_16k, astronaut_face_96):
    """The parity above proves little if the output ignored its inputs; check that it does not."""
    face = face_batch(astronaut_face_96, 1)
    m = melspectrogram(speech_16k)
    energy = m.mean(axis=0)
    loud, quiet = int(np.argmax(energy[: -16])), int(np.argmin(energy[: -16]))
    with torch.no_grad():
        out_loud = reference(torch.from_numpy(m[None, None, :, loud : loud + 16].copy()), torch.from_numpy(face)).numpy()
        out_quiet = reference(torch.from_numpy(m[None, None, :, quiet : quiet + 16].copy()), torch.from_numpy(face)).numpy()
    # not saturated: the sigmoid output spans a real range
    assert out_loud.std() > 0.05 and out_loud.min() > 0.02 and out_loud.max() < 0.98
    # changing only the audio changes the picture by far more than the parity tolerance
    assert np.abs(out_loud - out_quiet).mean() > 100 * TOLERANCE
