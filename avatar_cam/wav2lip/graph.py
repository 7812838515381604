"""Build the Wav2Lip generator as an OpenVINO graph straight from its weights (no PyTorch, no ONNX).

BatchNorm is folded into each convolution (exact in eval mode): w' = w * g/sqrt(v+eps), b' = (b-m) * g/sqrt(v+eps) + beta.
"""

from __future__ import annotations

import numpy as np
import openvino as ov
import openvino.opset13 as ops

from avatar_cam.wav2lip.arch import AUDIO_ENCODER, BN_EPS, FACE_DECODER, FACE_ENCODER, OUTPUT_BLOCK, ConvLayer

# Bump when the graph changes, so IR files cached by an older version are rebuilt.
GRAPH_VERSION = 3


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


def _conv(x, kernel: np.ndarray, layer: ConvLayer) -> ov.Node:
    """The layer's (transposed) convolution with this kernel, without bias."""
    pads, one = [layer.pad, layer.pad], [1, 1]
    if layer.transposed:
        return ops.convolution_backprop_data(
            x, ops.constant(kernel), list(layer.stride), pads_begin=pads, pads_end=pads, dilations=one,
            output_padding=[layer.output_padding] * 2,
        )
    return ops.convolution(x, ops.constant(kernel), list(layer.stride), pads, pads, one)


def _finish(y: ov.Node, x, layer: ConvLayer, bias: np.ndarray) -> ov.Node:
    """Bias, then (unless the layer is plain) the residual add and ReLU."""
    y = ops.add(y, ops.constant(bias.reshape(1, -1, 1, 1)))
    if layer.plain:
        return y
    if layer.residual:  # the published block adds the input after BatchNorm, before ReLU
        y = ops.add(y, x)
    return ops.relu(y)


def _layer(x, layer: ConvLayer, w: dict[str, np.ndarray]) -> ov.Node:
    kernel, bias = fold_batchnorm(layer, w)
    return _finish(_conv(x, kernel, layer), x, layer, bias)


def _sequence(x, layers: list[ConvLayer], w: dict[str, np.ndarray]) -> ov.Node:
    for layer in layers:
        x = _layer(x, layer, w)
    return x


FEATURE_SHAPES = [(16, 96, 96), (32, 48, 48), (64, 24, 24), (128, 12, 12), (256, 6, 6), (512, 3, 3), (512, 1, 1)]


# The decoder's stages, then the output block. Every stage after the first convolves the previous one's output
# concatenated with a face feature (feat6 first, feat0 last).
STAGES: list[list[ConvLayer]] = [*FACE_DECODER, OUTPUT_BLOCK]


def _feature_of(stage: int) -> int:
    """Which face feature `STAGES[stage]` (stage >= 1) takes: feat6 for stage 1 ... feat0 for 7."""
    return len(STAGES) - 1 - stage


def _face_channels(stage: int) -> int:
    """How many of `STAGES[stage]`'s input channels come from the face."""
    return FEATURE_SHAPES[_feature_of(stage)][0]


def _out_size(layer: ConvLayer, n: int) -> int:
    """The output height (or width) of `layer` for an input of n rows (columns)."""
    s = layer.stride[0]
    if layer.transposed:
        return (n - 1) * s - 2 * layer.pad + layer.k + layer.output_padding
    return (n + 2 * layer.pad - layer.k) // s + 1


def _upsamples(stage: list[ConvLayer]) -> bool:
    return stage[0].transposed and stage[0].stride == (2, 2)


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


def _plan(first_row: int) -> list[tuple[int, int]]:
    """Per stage of STAGES: (the row of its input grid it starts at, the row of its output grid that row 0 of
    its output stands for)."""
    crops = [*decoder_crops(first_row), 0]
    plan, top = [], 0
    for stage, crop in zip(STAGES, crops, strict=True):
        start = max(top, crop)
        top = 2 * start if _upsamples(stage) else start
        plan.append((start, top))
    return plan


def _rows_from(x: ov.Node | ov.Output, start: int) -> ov.Node | ov.Output:
    """x[:, :, start:, :] (x itself when start is 0)."""
    if start == 0:
        return x
    big = np.iinfo(np.int64).max
    return ops.slice(x, ops.constant(np.array([start], np.int64)), ops.constant(np.array([big], np.int64)),
                     ops.constant(np.array([1], np.int64)), ops.constant(np.array([2], np.int64)))


def _split_kernel(layer: ConvLayer, w: dict[str, np.ndarray], face_channels: int):
    """(kernel for the decoder's own input channels, kernel for the face feature's, bias)."""
    kernel, bias = fold_batchnorm(layer, w)
    own = layer.cin - face_channels  # input channels: axis 1 of a Conv2d kernel, axis 0 of a transposed one
    if layer.transposed:
        return np.ascontiguousarray(kernel[:own]), np.ascontiguousarray(kernel[own:]), bias
    return np.ascontiguousarray(kernel[:, :own]), np.ascontiguousarray(kernel[:, own:]), bias


def build_face_encoder(weights: dict[str, np.ndarray], first_row: int = 0) -> ov.Model:
    """face (B,6,96,96) -> what the generator of the same `first_row` takes from the face.

    first_row 0 (the published network, layer for layer): the seven feature maps `feat0`..`feat6` that the
    decoder concatenates. first_row > 0 (the live form, for a still portrait): each feature already convolved
    by the decoder layer that consumes it, cropped to the rows that generator computes (`skip1`..`skip7`).
    Convolution is linear, W * [y; f] = W_y * y + W_f * f, and W_f * f never changes while the photo does not:
    this runs once per photo, and every frame skips the face's share of those layers (20-50% of each).
    """
    face = ops.parameter([-1, 6, 96, 96], np.float32, name="face")
    feats, x = [], face
    for stage in FACE_ENCODER:
        x = _sequence(x, stage, weights)
        feats.append(x.output(0))
    if first_row == 0:
        outputs = feats
    else:
        outputs = []
        for i, (_, top) in enumerate(_plan(first_row)[1:], start=1):
            _, face_kernel, _ = _split_kernel(STAGES[i][0], weights, _face_channels(i))
            outputs.append(_rows_from(_conv(feats[_feature_of(i)], face_kernel, STAGES[i][0]), top).output(0))
    prefix = "feat" if first_row == 0 else "skip"
    for i, out in enumerate(outputs):
        out.get_tensor().set_names({f"{prefix}{i if first_row == 0 else i + 1}"})
    return ov.Model(outputs, [face], "wav2lip_face_encoder")


def build_generator(weights: dict[str, np.ndarray], first_row: int = 0) -> ov.Model:
    """mel (B,1,80,16) + the face encoder's outputs for the same `first_row` (batch B, or 1 to share one face
    across the batch) -> (B,3,96-first_row,96) in [0,1]: rows [first_row, 96) of the generated face.

    Each stage is cropped to the rows its successor needs plus the rows zero padding spoils (`decoder_crops`),
    so the rows kept are the whole network's while the work above them is skipped. With first_row > 0 the face's
    share of each concatenating layer comes precomputed from the encoder (see `build_face_encoder`).
    """
    if not 0 <= first_row < 96:
        raise ValueError(f"first_row must be in [0, 96), not {first_row}")
    plan = _plan(first_row)
    mel = ops.parameter([-1, 1, 80, 16], np.float32, name="mel")
    if first_row == 0:
        face_params = [ops.parameter([-1, *shape], np.float32, name=f"feat{i}") for i, shape in enumerate(FEATURE_SHAPES)]
    else:
        face_params = []
        for i, (_, top) in enumerate(plan[1:], start=1):
            layer, (_, h, w) = STAGES[i][0], FEATURE_SHAPES[_feature_of(i)]
            h, w = _out_size(layer, h), _out_size(layer, w)
            face_params.append(ops.parameter([-1, layer.cout, h - top, w], np.float32, name=f"skip{i}"))
    x = _sequence(mel, AUDIO_ENCODER, weights)
    top = 0  # the full-size row that row 0 of x stands for
    for i, (stage, (start, out_top)) in enumerate(zip(STAGES, plan, strict=True)):
        x = _rows_from(x, start - top)
        if i == 0 or first_row == 0:
            y = _sequence(x, stage, weights)
        else:
            own, _, bias = _split_kernel(stage[0], weights, _face_channels(i))
            # numpy broadcasting spreads a batch-1 face over any batch of mels
            y = _finish(ops.add(_conv(x, own, stage[0]), face_params[i - 1]), x, stage[0], bias)
            y = _sequence(y, stage[1:], weights)
        top = out_top
        if first_row == 0 and i < len(FACE_DECODER):
            skip = _rows_from(face_params[_feature_of(i + 1)], top)  # what the next stage takes
            c, h, w = FEATURE_SHAPES[_feature_of(i + 1)]
            batch = ops.gather(ops.shape_of(y), ops.constant(np.array([0], np.int64)), ops.constant(np.int64(0)))
            target = ops.concat([batch, ops.constant(np.array([c, h - top, w], np.int64))], axis=0)
            y = ops.concat([y, ops.broadcast(skip, target)], axis=1)
        x = y
    out = ops.sigmoid(_rows_from(x, first_row - top))
    out.output(0).get_tensor().set_names({"lower_face"})
    return ov.Model([out], [mel, *face_params], "wav2lip_generator")
