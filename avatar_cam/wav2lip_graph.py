"""Build the Wav2Lip generator as an OpenVINO graph straight from its weights (no PyTorch, no ONNX).

BatchNorm is folded into each convolution (exact in eval mode): w' = w * g/sqrt(v+eps), b' = (b-m) * g/sqrt(v+eps) + beta.
"""

from __future__ import annotations

import numpy as np
import openvino as ov
import openvino.opset13 as ops

from .wav2lip_arch import AUDIO_ENCODER, BN_EPS, FACE_DECODER, FACE_ENCODER, OUTPUT_BLOCK, ConvLayer

# Bump when the graph changes, so IR files cached by an older version are rebuilt.
GRAPH_VERSION = 2


def fold_batchnorm(layer: ConvLayer, w: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """The layer's kernel and bias with its BatchNorm folded in (float64 arithmetic, float32 result)."""
    if layer.plain:
        return w[f"{layer.prefix}.weight"], w[f"{layer.prefix}.bias"]
    conv, bn = f"{layer.prefix}.conv_block.0", f"{layer.prefix}.conv_block.1"
    scale = w[f"{bn}.weight"].astype(np.float64) / np.sqrt(w[f"{bn}.running_var"].astype(np.float64) + BN_EPS)
    kernel = w[f"{conv}.weight"].astype(np.float64)
    # Output channels are axis 0 of a Conv2d kernel, axis 1 of a ConvTranspose2d kernel.
    kernel = kernel * (scale[None, :, None, None] if layer.transposed else scale[:, None, None, None])
    bias = (w[f"{conv}.bias"] - w[f"{bn}.running_mean"]) * scale + w[f"{bn}.bias"]
    return kernel.astype(np.float32), bias.astype(np.float32)


def _layer(x: ov.Node, layer: ConvLayer, w: dict[str, np.ndarray]) -> ov.Node:
    kernel, bias = fold_batchnorm(layer, w)
    pads, one = [layer.pad, layer.pad], [1, 1]
    if layer.transposed:
        y = ops.convolution_backprop_data(
            x, ops.constant(kernel), list(layer.stride), pads_begin=pads, pads_end=pads, dilations=one,
            output_padding=[layer.output_padding] * 2,
        )
    else:
        y = ops.convolution(x, ops.constant(kernel), list(layer.stride), pads, pads, one)
    y = ops.add(y, ops.constant(bias.reshape(1, -1, 1, 1)))
    if layer.plain:
        return y
    if layer.residual:  # the published block adds the input after BatchNorm, before ReLU
        y = ops.add(y, x)
    return ops.relu(y)


def _sequence(x: ov.Node, layers: list[ConvLayer], w: dict[str, np.ndarray]) -> ov.Node:
    for layer in layers:
        x = _layer(x, layer, w)
    return x


FEATURE_SHAPES = [(16, 96, 96), (32, 48, 48), (64, 24, 24), (128, 12, 12), (256, 6, 6), (512, 3, 3), (512, 1, 1)]


def build_face_encoder(weights: dict[str, np.ndarray]) -> ov.Model:
    """face (B,6,96,96) -> the seven feature maps the decoder's skip connections take (`feat0`..`feat6`).

    For a still portrait the face never changes, so the pipeline runs this once per photo.
    """
    face = ops.parameter([-1, 6, 96, 96], np.float32, name="face")
    feats, x = [], face
    for i, stage in enumerate(FACE_ENCODER):
        x = _sequence(x, stage, weights)
        x.output(0).get_tensor().set_names({f"feat{i}"})
        feats.append(x.output(0))
    return ov.Model(feats, [face], "wav2lip_face_encoder")


def _k3_after_upsampling(layers: list[ConvLayer]) -> int:
    """How many rows at the top a cropped input spoils in these layers: one per zero-padded k>1 conv."""
    return sum(1 for layer in layers if layer.k > 1 and layer.pad > 0 and not layer.transposed)


def decoder_crops(first_row: int) -> list[int]:
    """For output rows [first_row, 96): the first row of its own grid each decoder stage needs to compute.

    A stage is an upsampling (transposed, stride 2) conv and residual convs at the new size. Cropping a
    stage's input at row s makes its first computed row 2s; the transposed conv reads no row above the one it
    maps from, but each zero-padded 3x3 conv after it sees zeros where row s-1 was, so the top row of the
    crop goes wrong, then the next: `n` such convs spoil `n` rows. Working back from the output, each stage
    starts at the first row its successor needs minus that margin, halved. The rows kept are then exactly the
    full network's, while the work above the mouth is skipped (~30% of the decoder for the lower half).
    """
    crops = [0] * len(FACE_DECODER)
    need = first_row  # the first output row that must be right
    spoil = _k3_after_upsampling(OUTPUT_BLOCK)
    for i in range(len(FACE_DECODER) - 1, 0, -1):
        stage = FACE_DECODER[i]
        if not stage[0].transposed or stage[0].stride != (2, 2):
            break
        start = max(0, (need - spoil - _k3_after_upsampling(stage[1:])) // 2)
        crops[i] = start
        need, spoil = start, 0
        if start == 0:
            break
    return crops


def _rows_from(x: ov.Node | ov.Output, start: int) -> ov.Node | ov.Output:
    """x[:, :, start:, :] (x itself when start is 0)."""
    if start == 0:
        return x
    big = np.iinfo(np.int64).max
    return ops.slice(x, ops.constant(np.array([start], np.int64)), ops.constant(np.array([big], np.int64)),
                     ops.constant(np.array([1], np.int64)), ops.constant(np.array([2], np.int64)))


def build_generator(weights: dict[str, np.ndarray], first_row: int = 0) -> ov.Model:
    """mel (B,1,80,16) + feat0..feat6 (batch B, or 1 to share one face across the batch) -> (B,3,96-first_row,96)
    in [0,1]: rows [first_row, 96) of the generated face, computing only what those rows depend on."""
    if not 0 <= first_row < 96:
        raise ValueError(f"first_row must be in [0, 96), not {first_row}")
    crops = decoder_crops(first_row)
    mel = ops.parameter([-1, 1, 80, 16], np.float32, name="mel")
    feat_params = [ops.parameter([-1, *shape], np.float32, name=f"feat{i}") for i, shape in enumerate(FEATURE_SHAPES)]
    feats = list(feat_params)
    x = _sequence(mel, AUDIO_ENCODER, weights)
    top = 0  # the full-size row that row 0 of x stands for
    for stage, crop in zip(FACE_DECODER, crops, strict=True):
        if crop > top:
            x, top = _rows_from(x, crop - top), crop
        y = _sequence(x, stage, weights)
        if stage[0].transposed and stage[0].stride == (2, 2):
            top *= 2
        skip = _rows_from(feats.pop(), top)
        c, h, w = FEATURE_SHAPES[len(feats)]
        batch = ops.gather(ops.shape_of(y), ops.constant(np.array([0], np.int64)), ops.constant(np.int64(0)))
        target = ops.concat([batch, ops.constant(np.array([c, h - top, w], np.int64))], axis=0)
        x = ops.concat([y, ops.broadcast(skip, target)], axis=1)
    out = ops.sigmoid(_rows_from(_sequence(x, OUTPUT_BLOCK, weights), first_row - top))
    out.output(0).get_tensor().set_names({"lower_face"})
    return ov.Model([out], [mel, *feat_params], "wav2lip_generator")
