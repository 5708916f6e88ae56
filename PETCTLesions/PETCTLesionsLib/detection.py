"""Lesion detection on one study, arrays in -> lesions and boxes out.

    CT on the PET grid + PET SUV --model--> probability --threshold--> mask
    --26-connected components, minimum volume--> numbered lesions (largest first)
    --> measurements (SUVmax/mean/peak, MTV, TLG, centroid, box, score)
    --> per-CT-slice boxes for the VOC export (when the CT grid is given).

The MRML layer turns a :class:`Detection` into segments and box markups; the command line
writes it as files. Both only ever see a finished result (see model.inference).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional, Sequence

import numpy as np
import SimpleITK as sitk

from .geometry import Grid
from .lesions import SliceBox, label_lesions, slice_boxes
from .measurements import LesionMeasurement, measure_lesions
from .resampling import resample_label_to_grid


@dataclass
class Detection:
    pet_grid: Grid
    probability: Optional[np.ndarray]  # float32 on the PET grid (None when detected in another process)
    lesion_map: np.ndarray  # uint16 on the PET grid, lesion n = voxels with value n, largest first
    lesions: List[LesionMeasurement]
    threshold: float
    min_volume_ml: float
    device: str = ""
    notes: List[str] = field(default_factory=list)

    @property
    def mask(self) -> np.ndarray:
        return (self.lesion_map > 0).astype(np.uint8)


def lesions_from_probability(
    probability: np.ndarray, threshold: float = 0.5, min_volume_ml: float = 0.0, voxel_ml: float = 1.0
) -> tuple:
    """(uint16 lesion map, count): components of probability >= threshold of at least ``min_volume_ml``."""
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold must be between 0 and 1 (exclusive), got {threshold}")
    if min_volume_ml < 0:
        raise ValueError(f"minimum lesion volume must be >= 0 mL, got {min_volume_ml}")
    lesion_map, count = label_lesions((probability >= threshold).astype(np.uint8))
    if count == 0 or min_volume_ml <= 0:
        return lesion_map, count
    sizes_ml = np.bincount(lesion_map.ravel(), minlength=count + 1)[1:] * voxel_ml
    keep = sizes_ml >= min_volume_ml - 1e-9
    # Lesions are numbered by decreasing size, so the kept ones are 1..n: renumbering is a cut.
    kept = int(keep.sum())
    lesion_map[lesion_map > kept] = 0
    return lesion_map, kept


def detect_lesions(
    model,
    ct_hu_on_pet: np.ndarray,
    pet_suv: np.ndarray,
    pet_grid: Grid,
    threshold: Optional[float] = None,
    min_volume_ml: float = 0.0,
    device: str = "auto",
    tile: Optional[Sequence[int]] = None,
    progress=None,
    cancel=None,
) -> Detection:
    """Run ``model`` (a weights.LoadedModel) on one study and measure what it finds."""
    from .model.inference import predict_probability  # torch is imported only when detection runs

    threshold = model.threshold if threshold is None else float(threshold)
    result = predict_probability(
        model.network,
        ct_hu_on_pet,
        pet_suv,
        pet_grid.spacing,
        device=device,
        tile=tile,
        progress=progress,
        cancel=cancel,
    )
    lesion_map, count = lesions_from_probability(result.probability, threshold, min_volume_ml, pet_grid.voxel_volume_ml)
    lesions = measure_lesions(lesion_map, count, pet_suv, pet_grid, result.probability)
    return Detection(
        pet_grid, result.probability, lesion_map, lesions, threshold, min_volume_ml, result.device, result.notes
    )


def lesion_map_on(lesion_map: np.ndarray, pet_grid: Grid, grid: Grid) -> np.ndarray:
    """The PET-grid lesion map moved onto another grid (nearest neighbour), e.g. the CT's."""
    return sitk.GetArrayFromImage(resample_label_to_grid(pet_grid.to_sitk(lesion_map.astype(np.uint16)), grid))


def ct_slice_boxes(lesion_map: np.ndarray, pet_grid: Grid, ct_grid: Grid) -> List[SliceBox]:
    """Every lesion's tight box on every CT slice it crosses (lesion map moved to the CT grid, nearest)."""
    return slice_boxes(lesion_map_on(lesion_map, pet_grid, ct_grid))
