"""Load a Wav2Lip generator checkpoint and check, by structure, that it is one.

No official checksum exists for the published files, so a file is accepted when it holds exactly the
generator's keys with the right shapes and nothing but numbers; its SHA-256 is recorded by the model store.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from avatar_cam.errors import CheckpointError
from avatar_cam.wav2lip import torch_archive
from avatar_cam.wav2lip.arch import expected_keys

log = logging.getLogger(__name__)

CHECKPOINT_HINT = "get a genuine wav2lip.pth or wav2lip_gan.pth (avatar-cam models fetch) or import one (avatar-cam models import PATH)"


@dataclass(frozen=True)
class Checkpoint:
    state_dict: dict[str, np.ndarray]  # float32 arrays, published key names without any `module.` prefix
    global_step: int | None


def _find_state_dict(obj: object, name: str) -> dict:
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        return obj["state_dict"]
    if isinstance(obj, dict) and obj and all(isinstance(k, str) for k in obj) and any(
        k.endswith("conv_block.0.weight") for k in obj
    ):
        return obj  # a bare state dict, as some re-saved copies are
    raise CheckpointError(f"{name} is a PyTorch file but holds no generator state_dict", hint=CHECKPOINT_HINT)


def _strip_prefix(sd: dict) -> dict:
    """Copies saved from DataParallel prefix every key with `module.`."""
    if sd and all(isinstance(k, str) and k.startswith("module.") for k in sd):
        return {k[len("module.") :]: v for k, v in sd.items()}
    return dict(sd)


def validate_state_dict(sd: dict, name: str = "checkpoint") -> dict[str, np.ndarray]:
    """Check every key and shape against the published generator; return float32 weights.

    `num_batches_tracked` counters are not needed at inference, so a copy without them is accepted.
    """
    sd = _strip_prefix(sd)
    expected = expected_keys()
    missing = [k for k in expected if k not in sd and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in sd if k not in expected]
    if unexpected and len(unexpected) >= len(expected) // 2:
        raise CheckpointError(
            f"{name} is not a Wav2Lip generator: {len(unexpected)} of its {len(sd)} keys are unknown "
            f"(for example {unexpected[0]!r}); it may be a SyncNet, a discriminator or another model",
            hint=CHECKPOINT_HINT,
        )
    if missing:
        raise CheckpointError(
            f"{name} is missing {len(missing)} of the generator's weights, for example {missing[0]!r}", hint=CHECKPOINT_HINT
        )
    if unexpected:
        raise CheckpointError(f"{name} has keys the Wav2Lip generator does not: {', '.join(unexpected[:3])}", hint=CHECKPOINT_HINT)
    weights: dict[str, np.ndarray] = {}
    for key, shape in expected.items():
        if key not in sd:
            continue
        value = sd[key]
        if not isinstance(value, np.ndarray):
            raise CheckpointError(f"{name}: {key!r} is a {type(value).__name__}, not a tensor", hint=CHECKPOINT_HINT)
        if tuple(value.shape) != shape and not (shape == () and value.shape == (1,)):
            raise CheckpointError(
                f"{name}: {key!r} has shape {tuple(value.shape)}, the Wav2Lip generator needs {shape}; "
                "this is a different or modified architecture",
                hint=CHECKPOINT_HINT,
            )
        if key.endswith("num_batches_tracked"):
            continue
        if not np.issubdtype(value.dtype, np.floating):
            raise CheckpointError(f"{name}: {key!r} holds {value.dtype} values, expected floating point", hint=CHECKPOINT_HINT)
        weights[key] = value.astype(np.float32, copy=False)
        if not np.isfinite(weights[key]).all():
            raise CheckpointError(f"{name}: {key!r} contains NaN or infinite values; the file is damaged", hint=CHECKPOINT_HINT)
    return weights


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Read a Wav2Lip checkpoint safely (nothing in it runs) and validate it. Raises CheckpointError."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}", hint=CHECKPOINT_HINT)
    obj = torch_archive.load(path)
    sd = _find_state_dict(obj, path.name)
    weights = validate_state_dict(sd, path.name)
    step = obj.get("global_step") if isinstance(obj, dict) else None
    return Checkpoint(weights, step if isinstance(step, int) else None)


def validate_checkpoint(path: str | Path) -> None:
    """Raise CheckpointError unless `path` is a loadable Wav2Lip generator checkpoint."""
    load_checkpoint(path)


def sha256_of(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def write_checkpoint(state_dict: dict[str, np.ndarray], path: str | Path, *, module_prefix: bool = False) -> None:
    """Write weights as a checkpoint in the published layout (state_dict, optimizer, global_step, global_epoch).

    Used for seeded random weights in benchmarks and tests; never for shipping real weights.
    """
    from collections import OrderedDict

    prefix = "module." if module_prefix else ""
    sd = OrderedDict((prefix + k, v) for k, v in state_dict.items())
    torch_archive.save(
        {"state_dict": sd, "optimizer": {"state": {}, "param_groups": []}, "global_step": 0, "global_epoch": 0}, path
    )
