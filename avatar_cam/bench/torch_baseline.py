"""PyTorch eager Wav2Lip, built from the layer table (wav2lip/arch.py), timed at batch 1: the baseline that
`avatar-cam bench engine` compares OpenVINO against. Runs in its own process, only where PyTorch is installed:

    python -m avatar_cam.bench.torch_baseline THREADS SECONDS    -> prints the median ms per frame

The weights are random (timing does not depend on them); the network is the published one, layer for layer.
"""

from __future__ import annotations

import sys
import time

import numpy as np
import torch
from torch import nn

from avatar_cam.wav2lip.arch import AUDIO_ENCODER, FACE_DECODER, FACE_ENCODER, OUTPUT_BLOCK, ConvLayer


class Block(nn.Module):
    """Conv (or transposed conv) -> BatchNorm -> (+ input) -> ReLU; a plain conv for the last layer."""

    def __init__(self, layer: ConvLayer):
        super().__init__()
        conv = nn.ConvTranspose2d if layer.transposed else nn.Conv2d
        extra = {"output_padding": layer.output_padding} if layer.transposed else {}
        self.conv = conv(layer.cin, layer.cout, layer.k, layer.stride, layer.pad, **extra)
        self.bn = None if layer.plain else nn.BatchNorm2d(layer.cout)
        self.residual = layer.residual

    def forward(self, x):
        y = self.conv(x)
        if self.bn is None:
            return y
        y = self.bn(y)
        return torch.relu(y + x if self.residual else y)


class Wav2LipEager(nn.Module):
    def __init__(self):
        super().__init__()
        self.face = nn.ModuleList(nn.Sequential(*map(Block, stage)) for stage in FACE_ENCODER)
        self.audio = nn.Sequential(*map(Block, AUDIO_ENCODER))
        self.decoder = nn.ModuleList(nn.Sequential(*map(Block, stage)) for stage in FACE_DECODER)
        self.output = nn.Sequential(*map(Block, OUTPUT_BLOCK))

    def forward(self, mel, face):
        feats = []
        for stage in self.face:
            face = stage(face)
            feats.append(face)
        x = self.audio(mel)
        for stage in self.decoder:
            x = torch.cat([stage(x), feats.pop()], dim=1)
        return torch.sigmoid(self.output(x))


def median_ms(threads: int, seconds: float) -> float:
    torch.set_num_threads(threads)
    model = Wav2LipEager().eval()
    mel, face = torch.rand(1, 1, 80, 16), torch.rand(1, 6, 96, 96)
    times = []
    with torch.no_grad():
        for _ in range(3):
            model(mel, face)
        end = time.perf_counter() + seconds
        while time.perf_counter() < end or len(times) < 5:
            t0 = time.perf_counter()
            model(mel, face)
            times.append(time.perf_counter() - t0)
    return 1000 * float(np.median(times))


if __name__ == "__main__":
    print(median_ms(int(sys.argv[1]), float(sys.argv[2])))
