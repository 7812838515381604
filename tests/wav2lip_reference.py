"""An independent PyTorch implementation of the Wav2Lip generator, written from the architecture notes.

Test-only. It shares no code with `avatar_cam` (which has no PyTorch), so agreement between the two means
both read the published layout the same way. Module names follow the published key layout.
"""

from __future__ import annotations

import torch
from torch import nn


class ConvBlock(nn.Module):
    def __init__(self, cin, cout, kernel_size, stride, padding, residual=False):
        super().__init__()
        self.conv_block = nn.Sequential(nn.Conv2d(cin, cout, kernel_size, stride, padding), nn.BatchNorm2d(cout))
        self.residual = residual

    def forward(self, x):
        out = self.conv_block(x)
        if self.residual:
            out = out + x
        return torch.relu(out)


class ConvTransposeBlock(nn.Module):
    def __init__(self, cin, cout, kernel_size, stride, padding, output_padding=0):
        super().__init__()
        self.conv_block = nn.Sequential(
            nn.ConvTranspose2d(cin, cout, kernel_size, stride, padding, output_padding), nn.BatchNorm2d(cout)
        )

    def forward(self, x):
        return torch.relu(self.conv_block(x))


def res(c):
    return ConvBlock(c, c, 3, 1, 1, residual=True)


class Wav2LipReference(nn.Module):
    def __init__(self):
        super().__init__()
        self.face_encoder_blocks = nn.ModuleList([
            nn.Sequential(ConvBlock(6, 16, 7, 1, 3)),
            nn.Sequential(ConvBlock(16, 32, 3, 2, 1), res(32), res(32)),
            nn.Sequential(ConvBlock(32, 64, 3, 2, 1), res(64), res(64), res(64)),
            nn.Sequential(ConvBlock(64, 128, 3, 2, 1), res(128), res(128)),
            nn.Sequential(ConvBlock(128, 256, 3, 2, 1), res(256), res(256)),
            nn.Sequential(ConvBlock(256, 512, 3, 2, 1), res(512)),
            nn.Sequential(ConvBlock(512, 512, 3, 1, 0), ConvBlock(512, 512, 1, 1, 0)),
        ])
        self.audio_encoder = nn.Sequential(
            ConvBlock(1, 32, 3, 1, 1), res(32), res(32),
            ConvBlock(32, 64, 3, (3, 1), 1), res(64), res(64),
            ConvBlock(64, 128, 3, 3, 1), res(128), res(128),
            ConvBlock(128, 256, 3, (3, 2), 1), res(256),
            ConvBlock(256, 512, 3, 1, 0), ConvBlock(512, 512, 1, 1, 0),
        )
        self.face_decoder_blocks = nn.ModuleList([
            nn.Sequential(ConvBlock(512, 512, 1, 1, 0)),
            nn.Sequential(ConvTransposeBlock(1024, 512, 3, 1, 0), res(512)),
            nn.Sequential(ConvTransposeBlock(1024, 512, 3, 2, 1, 1), res(512), res(512)),
            nn.Sequential(ConvTransposeBlock(768, 384, 3, 2, 1, 1), res(384), res(384)),
            nn.Sequential(ConvTransposeBlock(512, 256, 3, 2, 1, 1), res(256), res(256)),
            nn.Sequential(ConvTransposeBlock(320, 128, 3, 2, 1, 1), res(128), res(128)),
            nn.Sequential(ConvTransposeBlock(160, 64, 3, 2, 1, 1), res(64), res(64)),
        ])
        self.output_block = nn.Sequential(ConvBlock(80, 32, 3, 1, 1), nn.Conv2d(32, 3, 1, 1, 0), nn.Sigmoid())

    def forward(self, mel, face):
        x = self.audio_encoder(mel)
        feats = []
        for block in self.face_encoder_blocks:
            face = block(face)
            feats.append(face)
        for block in self.face_decoder_blocks:
            x = torch.cat([block(x), feats.pop()], dim=1)
        return self.output_block(x)


def calibrated_reference(mels: torch.Tensor, faces: torch.Tensor, seed: int = 0) -> Wav2LipReference:
    """Seeded random weights, made well-conditioned: BatchNorm statistics measured on real inputs.

    PyTorch's default init alone leaves activations drifting layer by layer, so the output would be a
    saturated constant that any wrong wiring could match. After calibration every block's output is
    normalised on real data, and the output depends on both the face and the audio.
    """
    torch.manual_seed(seed)
    model = Wav2LipReference()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.7, 1.3)
                m.bias.normal_(0.0, 0.1)
                m.reset_running_stats()
                m.momentum = None  # cumulative average: one pass gives the exact statistics of the batch
        model.train()
        model(mels, faces)
    return model.eval()
