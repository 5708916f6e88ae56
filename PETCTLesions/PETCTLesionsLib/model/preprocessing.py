"""What the network sees: normalised CT and PET on the working grid (torch only).

Working grid: the PET grid resampled to ``WORKING_SPACING_MM`` (x, y, z) with linear
interpolation, keeping the position of voxel (0, 0, 0) and the axis directions. The spacing
is the median spacing of the data the bundled model was trained on (the generator's
whole-body PET, 4.07 x 4.07 x 3 mm), rounded, as nnU-Net would choose it; autoPET's
2.04 x 2.04 x 3 mm PET is halved in-plane, which costs nothing a 6-8 mm PET resolution
could show and makes a whole-body study cheap enough for two CPU cores.

Normalisation (fixed, so a study is processed the same wherever it comes from):
- CT: HU clipped to [-1000, 1000], divided by 500 (air -2, water 0, dense bone 2).
- PET: log(1 + SUV) - 1 with SUV clipped at 0: lesions of SUV 2 and of SUV 40 both stay in a
  range the network can use, and background (SUV < 1) is near -1..-0.3.
"""

from __future__ import annotations

import math
from typing import Sequence, Tuple

import torch

WORKING_SPACING_MM: Tuple[float, float, float] = (4.0, 4.0, 3.0)  # x, y, z like Grid.spacing
CT_CLIP_HU = (-1000.0, 1000.0)
CT_SCALE_HU = 500.0
CT_OUTSIDE_HU = -1024.0  # what resampling fills outside the CT field of view (air)


def normalise(ct_hu: torch.Tensor, pet_suv: torch.Tensor) -> torch.Tensor:
    """[D, H, W] CT (HU) and PET (SUV) -> [2, D, H, W] float32 network input."""
    if ct_hu.shape != pet_suv.shape:
        raise ValueError(
            f"CT and PET must be on the same grid, got shapes {tuple(ct_hu.shape)} and {tuple(pet_suv.shape)}"
        )
    ct = ct_hu.float().clamp(*CT_CLIP_HU) / CT_SCALE_HU
    pet = torch.log1p(pet_suv.float().clamp_min(0.0)) - 1.0
    return torch.stack([ct, pet])


def working_shape(shape: Sequence[int], spacing_zyx: Sequence[float], target_zyx: Sequence[float]) -> Tuple[int, ...]:
    """Number of working-grid samples per axis that fit inside the original grid's extent."""
    return tuple(
        int(math.floor((n - 1) * s / t + 1e-6)) + 1 if n > 1 else 1 for n, s, t in zip(shape, spacing_zyx, target_zyx)
    )


def resample_axis(volume: torch.Tensor, axis: int, positions: torch.Tensor) -> torch.Tensor:
    """Linear interpolation of ``volume`` along ``axis`` at fractional source indices ``positions``."""
    size = volume.shape[axis]
    positions = positions.clamp(0, size - 1)
    lower = positions.floor().long()
    upper = (lower + 1).clamp_max(size - 1)
    weight_shape = [1] * volume.dim()
    weight_shape[axis] = positions.numel()
    weight = (positions - lower.to(positions.dtype)).to(volume.dtype).reshape(weight_shape).to(volume.device)
    low_values = volume.index_select(axis, lower.to(volume.device))
    return torch.lerp(low_values, volume.index_select(axis, upper.to(volume.device)), weight)


def _is_same_spacing(a: float, b: float) -> bool:
    return abs(a - b) <= 1e-3 * b


def to_working_grid(volume: torch.Tensor, spacing_zyx: Sequence[float]) -> torch.Tensor:
    """[C, D, H, W] on a grid of ``spacing_zyx`` -> the same on the working grid (linear)."""
    target = tuple(reversed(WORKING_SPACING_MM))
    shape = working_shape(volume.shape[1:], spacing_zyx, target)
    return _resample_axes(volume, shape, spacing_zyx, target)


def from_working_grid(volume: torch.Tensor, shape_zyx: Sequence[int], spacing_zyx: Sequence[float]) -> torch.Tensor:
    """Inverse of :func:`to_working_grid`: [C, d, h, w] working grid -> [C, *shape_zyx] original grid."""
    return _resample_axes(volume, shape_zyx, tuple(reversed(WORKING_SPACING_MM)), spacing_zyx)


def _resample_axes(
    volume: torch.Tensor, shape_zyx: Sequence[int], from_spacing: Sequence[float], to_spacing: Sequence[float]
) -> torch.Tensor:
    """Each spatial axis from ``from_spacing`` to ``to_spacing`` (same first voxel), ``shape_zyx`` samples."""
    for axis, (n_out, source, goal) in enumerate(zip(shape_zyx, from_spacing, to_spacing), start=1):
        if _is_same_spacing(source, goal) and n_out == volume.shape[axis]:
            continue
        # Positions in float64 (exact for hundreds of slices), on the CPU: Apple's MPS has no float64.
        # resample_axis moves the indices and the weights (in the volume's dtype) to the volume's device.
        positions = torch.arange(n_out, dtype=torch.float64) * (goal / source)
        volume = resample_axis(volume, axis, positions)
    return volume


def pad_to_multiple(
    volume: torch.Tensor, multiple: int, values: Sequence[float]
) -> Tuple[torch.Tensor, Tuple[int, ...]]:
    """Pad [C, D, H, W] at the far end of each axis to a multiple; channel c is padded with values[c]."""
    shape = volume.shape[1:]
    padded_shape = tuple(int(math.ceil(n / multiple)) * multiple for n in shape)
    if padded_shape == tuple(shape):
        return volume, tuple(shape)
    padded = torch.empty((volume.shape[0],) + padded_shape, dtype=volume.dtype, device=volume.device)
    for channel, value in enumerate(values):
        padded[channel].fill_(float(value))
    padded[:, : shape[0], : shape[1], : shape[2]] = volume
    return padded, tuple(shape)


def padding_values() -> Tuple[float, float]:
    """Normalised values of 'nothing there': air for CT, zero uptake for PET."""
    return (max(CT_OUTSIDE_HU, CT_CLIP_HU[0]) / CT_SCALE_HU, -1.0)
