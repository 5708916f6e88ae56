"""Lesion detection on one study, arrays in -> lesions and boxes out.

    CT on the PET grid + PET SUV --model--> probability --threshold--> mask
    --26-connected components, minimum volume--> numbered lesions (largest first)
    --the model's false-positive filter, when it has one (model.false_positive_filter)--> candidates kept
    --> measurements (SUVmax/mean/peak, MTV, TLG, centroid, box, score)
    --> the lesions on the CT grid, traced at CT resolution from the probability,
        and their per-CT-slice boxes for the VOC export (when the CT grid is given).

The MRML layer turns a :class:`Detection` into segments and box markups; the command line
writes it as files. Both only ever see a finished result (see model.inference).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk

from .errors import InputError
from .geometry import Grid
from .jobs import CancelCallback, ProgressCallback
from .lesions import SliceBox, label_lesions, lesion_extents, slice_boxes
from .measurements import LesionMeasurement, measure_lesions
from .model.false_positive_filter import apply_filter, describe_removed
from .resampling import resample_label_to_grid, resample_to_grid


@dataclass
class Detection:
    pet_grid: Grid
    probability: Optional[np.ndarray]  # on the PET grid: float32, or float16 when read back from a worker
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
        raise InputError(f"threshold must be between 0 and 1 (exclusive), got {threshold}")
    if not 0 <= min_volume_ml < float("inf"):  # NaN too: it compares false and would keep no lesion
        raise InputError(f"minimum lesion volume must be a finite number >= 0 mL, got {min_volume_ml}")
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
    progress: Optional[ProgressCallback] = None,
    cancel: Optional[CancelCallback] = None,
    filter_false_positives: bool = False,
) -> Detection:
    """Run ``model`` (a weights.LoadedModel, or an nnunet_model.NnUNetModel: both have ``threshold`` and
    ``predict_probability``) on one study and measure what it finds.

    When the model carries a false-positive filter (``false_positive_filter``, ours only) and
    ``filter_false_positives`` is asked for, the candidates it rejects are removed and a note lists them.
    Off unless asked: on plain studies it removed 2 of 128 lesions (a 24 mL node among them) for 0.15
    false positives per study (model card), which a reader must choose knowingly."""
    threshold = model.threshold if threshold is None else float(threshold)
    result = model.predict_probability(
        ct_hu_on_pet,
        pet_suv,
        pet_grid.spacing,
        device=device,
        tile=tile,
        progress=progress,
        cancel=cancel,
    )
    lesion_map, count = lesions_from_probability(result.probability, threshold, min_volume_ml, pet_grid.voxel_volume_ml)
    notes = list(result.notes)
    candidate_filter = getattr(model, "false_positive_filter", None) if filter_false_positives else None
    if candidate_filter is not None and count:
        sizes_ml = np.bincount(lesion_map.ravel(), minlength=count + 1)[1:] * pet_grid.voxel_volume_ml
        lesion_map, count, decision = apply_filter(
            candidate_filter, lesion_map, count, pet_suv, ct_hu_on_pet, result.probability, pet_grid
        )
        notes += [line for line in [describe_removed(decision, sizes_ml)] if line]
    lesions = measure_lesions(lesion_map, count, pet_suv, pet_grid, result.probability)
    return Detection(pet_grid, result.probability, lesion_map, lesions, threshold, min_volume_ml, result.device, notes)


def lesion_map_on(lesion_map: np.ndarray, pet_grid: Grid, grid: Grid) -> np.ndarray:
    """The PET-grid lesion map moved onto another grid (nearest neighbour), e.g. the CT's."""
    return sitk.GetArrayFromImage(resample_label_to_grid(pet_grid.to_sitk(lesion_map.astype(np.uint16)), grid))


def lesions_on_ct(
    lesion_map: np.ndarray,
    pet_grid: Grid,
    ct_grid: Grid,
    probability: Optional[np.ndarray] = None,
    threshold: float = 0.5,
) -> Tuple[np.ndarray, List[SliceBox]]:
    """The lesions on the CT grid (uint16 map) and every lesion's tight box on every CT slice it crosses.

    Without ``probability`` the PET-grid map is moved by nearest neighbour: outlines are steps of
    PET voxels (4 mm) against CT pixels of about 1 mm, and a lesion's first and last CT slices
    are off by up to half a PET slice, which costs the boxes their overlap with a reader's.
    With the model's ``probability`` (the one ``threshold`` cut into ``lesion_map``) each lesion
    is traced at CT resolution instead: where its probability, interpolated linearly onto the
    CT voxels, reaches the threshold. Each box then scores the highest interpolated probability
    on its slice, so a lesion's faint end slices rank below its middle ones.
    """
    if probability is None:
        ct_map = lesion_map_on(lesion_map, pet_grid, ct_grid)
        return ct_map, slice_boxes(ct_map)
    if probability.shape != lesion_map.shape:
        raise ValueError(f"probability {probability.shape} and lesion map {lesion_map.shape} are on different grids")
    ct_map = np.zeros(ct_grid.shape, np.uint16)
    boxes: List[SliceBox] = []
    for number, extent in enumerate(lesion_extents(lesion_map, int(lesion_map.max())), start=1):
        if extent is not None:
            boxes += _trace_lesion(number, extent, lesion_map, probability, float(threshold), pet_grid, ct_grid, ct_map)
    boxes.sort(key=lambda box: (box.k, box.lesion))
    return ct_map, boxes


def _trace_lesion(
    number: int,
    extent: Tuple[slice, slice, slice],
    lesion_map: np.ndarray,
    probability: np.ndarray,
    threshold: float,
    pet_grid: Grid,
    ct_grid: Grid,
    ct_map: np.ndarray,
) -> List[SliceBox]:
    """Paint lesion ``number`` into ``ct_map`` at CT resolution; return its CT-slice boxes."""
    # One PET voxel around the lesion holds its whole outline: the cut lies between a lesion
    # voxel and a neighbour. Clamping makes the outline agree with the lesion map exactly:
    # every lesion voxel centre is inside, every other voxel centre (background, another
    # lesion, a component dropped for its size) outside, whatever the probability's rounding.
    window = tuple(slice(max(s.start - 1, 0), min(s.stop + 1, n)) for s, n in zip(extent, lesion_map.shape))
    inside = lesion_map[window] == number
    window_probability = probability[window].astype(np.float32)
    values = np.minimum(window_probability, np.nextafter(np.float32(threshold), np.float32(0)))
    values[inside] = np.maximum(window_probability[inside], np.float32(threshold))
    pet_window = pet_grid.sub_grid([s.start for s in window[::-1]], [s.stop for s in window[::-1]])
    low, high = _ct_index_range(pet_window, ct_grid)
    if np.any(high <= low):
        return []  # outside the CT's field of view
    ct_window = ct_grid.sub_grid(low, high)
    interpolated = sitk.GetArrayFromImage(
        resample_to_grid(pet_window.to_sitk(values), ct_window, sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    )
    traced = interpolated >= threshold
    if not traced.any():  # smaller than the CT's voxel spacing: keep the PET voxels' footprint
        traced = lesion_map_on(inside.astype(np.uint16), pet_window, ct_window) > 0
    target = ct_map[low[2] : high[2], low[1] : high[1], low[0] : high[0]]
    target[traced & (target == 0)] = number
    return [
        SliceBox(
            number,
            box.k + int(low[2]),
            box.c0 + int(low[0]),
            box.r0 + int(low[1]),
            box.c1 + int(low[0]),
            box.r1 + int(low[1]),
            float(interpolated[box.k][traced[box.k]].max()),
        )
        for box in slice_boxes(traced.astype(np.uint8))
    ]


def _ct_index_range(pet_window: Grid, ct_grid: Grid) -> Tuple[np.ndarray, np.ndarray]:
    """The CT voxels (i, j, k from ``low`` inclusive to ``high`` exclusive) among a PET window's voxel centres."""
    corners = np.array([[i, j, k] for i in (0, 1) for j in (0, 1) for k in (0, 1)], float)
    corners *= np.asarray(pet_window.size, float) - 1.0
    ct_index = ct_grid.lps_to_index(pet_window.index_to_lps(corners))
    low = np.maximum(np.floor(ct_index.min(axis=0) - 1e-6).astype(int), 0)
    high = np.minimum(np.ceil(ct_index.max(axis=0) + 1e-6).astype(int) + 1, np.asarray(ct_grid.size))
    return low, high


def ct_slice_boxes(found: Detection, ct_grid: Grid) -> List[SliceBox]:
    """A detection's boxes on every CT slice its lesions cross, traced from its probability when it
    has one (see :func:`lesions_on_ct`)."""
    return lesions_on_ct(found.lesion_map, found.pet_grid, ct_grid, found.probability, found.threshold)[1]
