"""The lesion network: a compact 3D U-Net over two channels (CT in HU, PET in SUV) on the PET grid.

Why this shape: lesions in FDG PET are bright, blob-like and 1-300 voxels across at the
working spacing, so a four-level U-Net (three poolings, receptive field ~ 100 voxels)
sees a lesion and its surroundings while staying small enough (about 1.2 M parameters,
a few MB of weights) to run on two CPU cores within the time a radiologist waits.

BatchNorm (not InstanceNorm) on purpose: in evaluation mode it is a fixed affine map, so a
tiled (sliding-window) prediction equals a whole-volume prediction away from tile borders,
whatever the tile size the device's memory allows.
"""

from __future__ import annotations

from typing import Sequence, Tuple

import torch
from torch import nn

ARCHITECTURE = "petct-unet3d"
ARCHITECTURE_VERSION = 1
DEFAULT_FEATURES: Tuple[int, ...] = (16, 32, 64, 128)
INPUT_CHANNELS = 2  # 0: CT (HU), 1: PET (SUVbw), both normalised by preprocessing.normalise


def _double_conv(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv3d(in_channels, out_channels, 3, padding=1, bias=False),
        nn.BatchNorm3d(out_channels),
        nn.LeakyReLU(0.01, inplace=True),
        nn.Conv3d(out_channels, out_channels, 3, padding=1, bias=False),
        nn.BatchNorm3d(out_channels),
        nn.LeakyReLU(0.01, inplace=True),
    )


class LesionUNet(nn.Module):
    """2 input channels -> 1 lesion logit per voxel. Spatial sizes must be multiples of ``size_multiple``."""

    def __init__(self, features: Sequence[int] = DEFAULT_FEATURES, in_channels: int = INPUT_CHANNELS):
        super().__init__()
        features = tuple(int(f) for f in features)
        if len(features) < 2:
            raise ValueError(f"LesionUNet needs at least two levels, got features={features}")
        self.features = features
        self.encoders = nn.ModuleList()
        channels = in_channels
        for width in features:
            self.encoders.append(_double_conv(channels, width))
            channels = width
        self.pool = nn.MaxPool3d(2)
        self.upsamplers = nn.ModuleList()
        self.decoders = nn.ModuleList()
        for width in reversed(features[:-1]):
            self.upsamplers.append(nn.ConvTranspose3d(channels, width, 2, stride=2))
            self.decoders.append(_double_conv(2 * width, width))
            channels = width
        self.head = nn.Conv3d(channels, 1, 1)

    @property
    def size_multiple(self) -> int:
        return 2 ** (len(self.features) - 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for level, encoder in enumerate(self.encoders):
            x = encoder(x)
            if level < len(self.encoders) - 1:
                skips.append(x)
                x = self.pool(x)
        for upsample, decoder, skip in zip(self.upsamplers, self.decoders, reversed(skips)):
            x = decoder(torch.cat([upsample(x), skip], dim=1))
        return self.head(x)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
