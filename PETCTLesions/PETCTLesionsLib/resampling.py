"""Resampling between the CT and PET grids (SimpleITK).

The model and the nnU-Net/autoPET export work on the PET grid: CT is resampled onto it
with linear interpolation, and voxels outside the CT's field of view are air. How much of the
PET the CT covers is checked when the two are paired (``dicom.pairing``: a warning under
``CT_COVERAGE_WARN_FRACTION`` of the PET's length, a refusal under ``CT_COVERAGE_REFUSE_FRACTION``),
before anything is resampled.
"""

from __future__ import annotations

import SimpleITK as sitk

from .geometry import Grid

AIR_HU = -1024.0


def resample_to_grid(
    image: sitk.Image,
    grid: Grid,
    interpolator: int = sitk.sitkLinear,
    default_value: float = 0.0,
    pixel_type: int = sitk.sitkUnknown,
) -> sitk.Image:
    """``image`` resampled onto ``grid`` (identity transform: both are in the same patient space)."""
    reference = sitk.Image(list(grid.size), sitk.sitkUInt8)
    grid.apply_to(reference)
    output_type = image.GetPixelID() if pixel_type == sitk.sitkUnknown else pixel_type
    return sitk.Resample(image, reference, sitk.Transform(), interpolator, float(default_value), output_type)


def resample_ct_to_pet(ct_hu: sitk.Image, pet_grid: Grid) -> sitk.Image:
    """CT (HU) on the PET grid, linear interpolation, air (-1024 HU) outside the CT field of view.

    The result is float32: rounding interpolated HU to integers would add quantisation the
    model does not need; the nnU-Net writer decides the stored type.
    """
    return resample_to_grid(ct_hu, pet_grid, sitk.sitkLinear, AIR_HU, sitk.sitkFloat32)


def resample_label_to_grid(label: sitk.Image, grid: Grid) -> sitk.Image:
    """A label image (instance or binary) on another grid, nearest neighbour, background 0."""
    return resample_to_grid(label, grid, sitk.sitkNearestNeighbor, 0, label.GetPixelID())
