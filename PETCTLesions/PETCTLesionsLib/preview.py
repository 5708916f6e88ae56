"""PNG pictures a reader looks at: fused axial PET/CT slices and a coronal PET MIP.

Axial pictures follow the radiological convention (patient right on the picture's left,
anterior at the top), which is what array rows/columns of an axial LPS grid already give.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk

from .display import CT_WINDOW_PRESETS, DEFAULT_SUV_WINDOW, heat_colors, window_to_unit
from .fileio import atomic_output, itk_write_error
from .geometry import Grid
from .resampling import resample_to_grid

Box = Tuple[int, int, int, int]  # 0-based inclusive (c0, r0, c1, r1)
LESION_OUTLINE_RGB = (0.2, 1.0, 0.3)
BOX_RGB = (0.2, 0.8, 1.0)


def pet_on_ct_slice(pet: sitk.Image, ct_grid: Grid, k: int) -> np.ndarray:
    """PET values (linear interpolation) at the voxel centres of CT slice ``k``: array [row, column]."""
    slice_grid = ct_grid.sub_grid((0, 0, k), (ct_grid.size[0], ct_grid.size[1], k + 1))
    return sitk.GetArrayFromImage(resample_to_grid(pet, slice_grid, sitk.sitkLinear, 0.0, sitk.sitkFloat32))[0]


def fused_axial_rgb(
    ct_slice_hu: np.ndarray,
    pet_slice_suv: np.ndarray,
    preset: str = "Mediastinum",
    suv_window: Tuple[float, float] = DEFAULT_SUV_WINDOW,
    pet_opacity: float = 0.6,
) -> np.ndarray:
    """CT in the named window with the PET heat map blended over it, RGB floats [row, column, 3].

    PET below 10% of the SUV window is left transparent so anatomy stays readable.
    """
    width, level = CT_WINDOW_PRESETS[preset]
    grey = window_to_unit(ct_slice_hu, width, level)
    rgb = np.repeat(grey[..., None], 3, axis=-1)
    suv_unit = np.clip((pet_slice_suv - suv_window[0]) / (suv_window[1] - suv_window[0]), 0.0, 1.0)
    alpha = pet_opacity * np.clip(suv_unit / 0.1, 0.0, 1.0)[..., None]
    return rgb * (1.0 - alpha) + heat_colors(suv_unit) * alpha


def outline(mask: np.ndarray) -> np.ndarray:
    """Pixels of a 2D mask that touch a pixel outside it (4-neighbourhood)."""
    mask = np.asarray(mask, dtype=bool)
    padded = np.pad(mask, 1)
    interior = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:] & mask
    return mask & ~interior


def draw_outline(rgb: np.ndarray, mask: np.ndarray, color: Sequence[float] = LESION_OUTLINE_RGB) -> None:
    rgb[outline(mask)] = color


def draw_box(rgb: np.ndarray, box: Box, color: Sequence[float] = BOX_RGB, thickness: int = 1) -> None:
    c0, r0, c1, r1 = box
    rows, columns = rgb.shape[:2]
    for t in range(thickness):
        top, bottom = max(r0 - 1 - t, 0), min(r1 + 1 + t, rows - 1)
        left, right = max(c0 - 1 - t, 0), min(c1 + 1 + t, columns - 1)
        rgb[top, left : right + 1] = color
        rgb[bottom, left : right + 1] = color
        rgb[top : bottom + 1, left] = color
        rgb[top : bottom + 1, right] = color


def coronal_mip_rgb(
    pet_suv: np.ndarray,
    pet_grid: Grid,
    suv_window: Tuple[float, float] = DEFAULT_SUV_WINDOW,
    lesion_labels: Optional[np.ndarray] = None,
) -> np.ndarray:
    """Anterior maximum-intensity projection of the PET, inverted grey (the nuclear medicine habit),
    head at the top, patient right on the left, resampled to square millimetres; lesions outlined."""
    mip = pet_suv.max(axis=1)  # [k, i]: project along rows (anterior-posterior)
    unit = np.clip((mip - suv_window[0]) / (suv_window[1] - suv_window[0]), 0.0, 1.0)
    rgb = np.repeat((1.0 - unit)[..., None], 3, axis=-1)
    if lesion_labels is not None:
        draw_outline(rgb, lesion_labels.max(axis=1) > 0, color=(0.9, 0.1, 0.1))
    rgb = rgb[::-1]  # superior (largest k) at the top
    return _resample_rows(rgb, pet_grid.spacing[2] / pet_grid.spacing[0])


def _resample_rows(rgb: np.ndarray, row_scale: float) -> np.ndarray:
    rows = max(1, int(round(rgb.shape[0] * row_scale)))
    source = np.minimum((np.arange(rows) / row_scale).astype(int), rgb.shape[0] - 1)
    return rgb[source]


def upscale(rgb: np.ndarray, factor: int) -> np.ndarray:
    return np.repeat(np.repeat(rgb, factor, axis=0), factor, axis=1) if factor > 1 else rgb


def write_png(path: Path, rgb: np.ndarray, overwrite: bool = False) -> Path:
    """Write RGB floats in [0, 1] ([row, column, 3]) as an 8-bit PNG, atomically."""
    pixels = np.clip(np.round(np.asarray(rgb) * 255.0), 0, 255).astype(np.uint8)
    image = sitk.GetImageFromArray(pixels, isVector=True)
    with atomic_output(path, overwrite=overwrite) as tmp:
        try:
            sitk.WriteImage(image, str(tmp))
        except RuntimeError as error:  # ITK reports a full disk as a RuntimeError: make it the OSError it is
            raise itk_write_error(error, path) from error
    return Path(path)


def lesion_slices_by_size(ct_lesion_labels: np.ndarray, count: int) -> Iterable[Tuple[int, int]]:
    """(lesion label, CT slice index of its largest cross-section) for the ``count`` largest lesions."""
    labels, voxels = np.unique(ct_lesion_labels[ct_lesion_labels > 0], return_counts=True)
    for label in labels[np.argsort(-voxels)][:count]:
        per_slice = (ct_lesion_labels == label).reshape(ct_lesion_labels.shape[0], -1).sum(axis=1)
        yield int(label), int(np.argmax(per_slice))
