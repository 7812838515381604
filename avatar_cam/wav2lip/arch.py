"""The Wav2Lip generator's layers as data: the one place that knows its key names and shapes.

Both the checkpoint validator and the OpenVINO graph builder read this table, so they cannot disagree.
Layout and numbers follow the published generator (see WAV2LIP.md in the design notes).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

BN_EPS = 1e-5

# Wav2Lip redraws the lower half of its 96x96 crop (the upper half is given to it). The compositor blends only
# that half, and scaling it up to the photo reads one row above it: the rows the product asks the generator for.
MOUTH_FIRST_ROW = 47
BN_KEYS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


@dataclass(frozen=True)
class ConvLayer:
    """One conv (or transposed conv) followed by BatchNorm and ReLU, as in the published `Conv2d` block.

    `prefix` is the key prefix in the state dict; `plain` marks the final bare Conv2d (no BN, no ReLU).
    """

    prefix: str
    cin: int
    cout: int
    k: int = 3
    stride: tuple[int, int] = (1, 1)
    pad: int = 1
    residual: bool = False
    transposed: bool = False
    output_padding: int = 0
    plain: bool = False

    def weight_shape(self) -> tuple[int, ...]:
        # ConvTranspose2d stores (cin, cout, kh, kw); Conv2d stores (cout, cin, kh, kw).
        if self.transposed:
            return (self.cin, self.cout, self.k, self.k)
        return (self.cout, self.cin, self.k, self.k)

    def keys(self) -> dict[str, tuple[int, ...]]:
        """State-dict keys this layer owns, with their shapes."""
        if self.plain:
            return {f"{self.prefix}.weight": self.weight_shape(), f"{self.prefix}.bias": (self.cout,)}
        keys = {
            f"{self.prefix}.conv_block.0.weight": self.weight_shape(),
            f"{self.prefix}.conv_block.0.bias": (self.cout,),
        }
        for name in BN_KEYS:
            keys[f"{self.prefix}.conv_block.1.{name}"] = () if name == "num_batches_tracked" else (self.cout,)
        return keys


def _res(prefix: str, c: int) -> ConvLayer:
    return ConvLayer(prefix, c, c, residual=True)


def _stage(name: str, first: ConvLayer, n_res: int, c: int) -> list[ConvLayer]:
    return [first] + [_res(f"{name}.{j}", c) for j in range(1, n_res + 1)]


def _encoder_stage(i: int, cin: int, cout: int, n_res: int) -> list[ConvLayer]:
    name = f"face_encoder_blocks.{i}"
    return _stage(name, ConvLayer(f"{name}.0", cin, cout, stride=(2, 2)), n_res, cout)


def _decoder_stage(i: int, cin: int, cout: int, n_res: int) -> list[ConvLayer]:
    name = f"face_decoder_blocks.{i}"
    up = ConvLayer(f"{name}.0", cin, cout, stride=(2, 2), transposed=True, output_padding=1)
    return _stage(name, up, n_res, cout)


FACE_ENCODER: list[list[ConvLayer]] = [
    [ConvLayer("face_encoder_blocks.0.0", 6, 16, k=7, pad=3)],
    _encoder_stage(1, 16, 32, 2),
    _encoder_stage(2, 32, 64, 3),
    _encoder_stage(3, 64, 128, 2),
    _encoder_stage(4, 128, 256, 2),
    _encoder_stage(5, 256, 512, 1),
    [
        ConvLayer("face_encoder_blocks.6.0", 512, 512, pad=0),
        ConvLayer("face_encoder_blocks.6.1", 512, 512, k=1, pad=0),
    ],
]

AUDIO_ENCODER: list[ConvLayer] = [
    ConvLayer("audio_encoder.0", 1, 32),
    _res("audio_encoder.1", 32),
    _res("audio_encoder.2", 32),
    ConvLayer("audio_encoder.3", 32, 64, stride=(3, 1)),
    _res("audio_encoder.4", 64),
    _res("audio_encoder.5", 64),
    ConvLayer("audio_encoder.6", 64, 128, stride=(3, 3)),
    _res("audio_encoder.7", 128),
    _res("audio_encoder.8", 128),
    ConvLayer("audio_encoder.9", 128, 256, stride=(3, 2)),
    _res("audio_encoder.10", 256),
    ConvLayer("audio_encoder.11", 256, 512, pad=0),
    ConvLayer("audio_encoder.12", 512, 512, k=1, pad=0),
]

FACE_DECODER: list[list[ConvLayer]] = [
    [ConvLayer("face_decoder_blocks.0.0", 512, 512, k=1, pad=0)],
    [
        ConvLayer("face_decoder_blocks.1.0", 1024, 512, pad=0, transposed=True),
        _res("face_decoder_blocks.1.1", 512),
    ],
    _decoder_stage(2, 1024, 512, 2),
    _decoder_stage(3, 768, 384, 2),
    _decoder_stage(4, 512, 256, 2),
    _decoder_stage(5, 320, 128, 2),
    _decoder_stage(6, 160, 64, 2),
]

OUTPUT_BLOCK: list[ConvLayer] = [
    ConvLayer("output_block.0", 80, 32),
    ConvLayer("output_block.1", 32, 3, k=1, pad=0, plain=True),
]


def all_layers() -> list[ConvLayer]:
    return [
        *(layer for stage in FACE_ENCODER for layer in stage),
        *AUDIO_ENCODER,
        *(layer for stage in FACE_DECODER for layer in stage),
        *OUTPUT_BLOCK,
    ]


def expected_keys() -> dict[str, tuple[int, ...]]:
    """Every key of the generator's state dict (352 of them) and its shape."""
    keys: dict[str, tuple[int, ...]] = {}
    for layer in all_layers():
        keys.update(layer.keys())
    return keys


def random_state_dict(seed: int = 0) -> dict[str, np.ndarray]:
    """Seeded random weights in the published layout, for benchmarks and for tests without trained weights.

    He-scaled kernels and BatchNorm near identity keep activations in a sane range through all 50 layers, so
    timings and shapes are those of the real network. (The parity tests calibrate BatchNorm on real inputs.)
    """
    rng = np.random.default_rng(seed)
    out: dict[str, np.ndarray] = {}
    for layer in all_layers():
        # Each output of a stride-s transposed conv sees about cin*k*k/s^2 inputs.
        fan_in = layer.cin * layer.k * layer.k // (layer.stride[0] * layer.stride[1] if layer.transposed else 1)
        for key, shape in layer.keys().items():
            if key.endswith("num_batches_tracked"):
                value = np.array(1000, dtype=np.int64)
            elif key.endswith("running_var"):
                value = rng.uniform(0.5, 1.5, shape)
            elif key.endswith(("running_mean", ".bias")):
                value = 0.05 * rng.standard_normal(shape)
            elif key.endswith("conv_block.1.weight"):
                value = rng.uniform(0.8, 1.2, shape)
            else:
                value = rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)
            out[key] = value if value.dtype == np.int64 else value.astype(np.float32)
    return out
