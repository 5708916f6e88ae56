"""Per-lesion PET measurements as a report or a lesion table would give them.

For each lesion of a numbered lesion map on the PET grid:
- MTV (mL): voxel count x voxel volume.
- SUVmax, SUVmean over the lesion's voxels; TLG = SUVmean x MTV (g, since SUV is g/mL).
- SUVpeak: the highest mean SUV in a 1 mL sphere (radius 6.2 mm) centred on any voxel of
  the lesion (PERCIST's definition, with the sphere made of the voxels whose centres lie in
  it; the sphere may reach outside the lesion, not outside the image). A lesion with fewer
  voxels than the sphere cannot hold it: its SUVpeak mixes in the tissue around it and can be
  below its SUVmean, which ``suv_peak_sphere_exceeds_lesion`` says.
- centroid (LPS mm), bounding box in voxel indices, and, when a probability map is given, the
  model's probability for the lesion: its highest value over the lesion's voxels (``score``,
  the lesion's detection score, like a box's score on its slice) and its mean over them
  (``probability_mean``: the highest saturates at 1 in most true lesions, the mean tells them apart).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Optional, Tuple

import numpy as np

from .geometry import Grid
from .lesions import lesion_extents

PEAK_SPHERE_ML = 1.0
_PEAK_CHUNK = 16384
PEAK_SPHERE_RADIUS_MM = (3.0 * PEAK_SPHERE_ML * 1000.0 / (4.0 * math.pi)) ** (1.0 / 3.0)  # 6.2035 mm


@dataclass(frozen=True)
class LesionMeasurement:
    label: int
    voxels: int
    mtv_ml: float
    suv_max: float
    suv_mean: float
    suv_peak: float
    tlg: float
    centroid_lps: Tuple[float, float, float]
    bbox_kji: Tuple[Tuple[int, int], Tuple[int, int], Tuple[int, int]]  # inclusive (first, last) per axis
    score: Optional[float] = None  # highest model probability inside the lesion (None: measured without a model)
    probability_mean: Optional[float] = None  # mean model probability over the lesion's voxels
    # The lesion has fewer voxels than the SUVpeak sphere, so the sphere reaches outside it wherever it is put.
    suv_peak_sphere_exceeds_lesion: bool = False


def measure_lesions(
    lesion_map: np.ndarray, count: int, pet_suv: np.ndarray, grid: Grid, probability: Optional[np.ndarray] = None
) -> List[LesionMeasurement]:
    """Measurements of lesions 1..count (absent numbers are skipped), in label order."""
    if lesion_map.shape != pet_suv.shape or lesion_map.shape != grid.shape:
        raise ValueError(
            f"lesion map {lesion_map.shape}, PET {pet_suv.shape} and grid {grid.shape} must have the same shape"
        )
    if probability is not None and probability.shape != lesion_map.shape:
        raise ValueError(f"probability {probability.shape} and lesion map {lesion_map.shape} are on different grids")
    offsets = sphere_offsets(grid.spacing, PEAK_SPHERE_RADIUS_MM)
    reach = np.abs(offsets).max(axis=0)
    result = []
    for label, extent in enumerate(lesion_extents(lesion_map, count), start=1):
        if extent is None:
            continue
        inside = lesion_map[extent] == label
        values = pet_suv[extent][inside].astype(np.float64)
        k, j, i = np.nonzero(inside)
        index = np.stack([i + extent[2].start, j + extent[1].start, k + extent[0].start], axis=1)
        centroid = grid.index_to_lps(index.mean(axis=0))
        mtv = float(values.size * grid.voxel_volume_ml)
        suv_mean = float(values.mean())
        # float64: a worker's float16 probability summed over a large lesion would lose its digits.
        lesion_probability = None if probability is None else probability[extent][inside].astype(np.float64)
        result.append(
            LesionMeasurement(
                label=label,
                voxels=int(values.size),
                mtv_ml=mtv,
                suv_max=float(values.max()),
                suv_mean=suv_mean,
                suv_peak=_suv_peak(pet_suv, extent, inside, offsets, reach),
                tlg=suv_mean * mtv,
                centroid_lps=tuple(float(c) for c in centroid),  # type: ignore[arg-type]
                bbox_kji=tuple((int(s.start), int(s.stop) - 1) for s in extent),  # type: ignore[arg-type]
                score=None if lesion_probability is None else float(lesion_probability.max()),
                probability_mean=None if lesion_probability is None else float(lesion_probability.mean()),
                suv_peak_sphere_exceeds_lesion=bool(values.size < len(offsets)),
            )
        )
    return result


def sphere_offsets(spacing_xyz, radius_mm: float) -> np.ndarray:
    """(n, 3) [dk, dj, di] voxel offsets whose centres lie within ``radius_mm`` of the centre voxel's."""
    sx, sy, sz = (float(s) for s in spacing_xyz)
    rk, rj, ri = (int(math.floor(radius_mm / s)) for s in (sz, sy, sx))
    dk, dj, di = np.meshgrid(np.arange(-rk, rk + 1), np.arange(-rj, rj + 1), np.arange(-ri, ri + 1), indexing="ij")
    inside = (dk * sz) ** 2 + (dj * sy) ** 2 + (di * sx) ** 2 <= radius_mm**2 + 1e-9
    return np.stack([dk[inside], dj[inside], di[inside]], axis=1)


def _suv_peak(pet_suv: np.ndarray, extent, inside: np.ndarray, offsets: np.ndarray, reach: np.ndarray) -> float:
    """Highest sphere mean over the lesion's voxels (sphere clipped to the image)."""
    shape = pet_suv.shape
    lo = [max(0, s.start - r) for s, r in zip(extent, reach)]
    hi = [min(n, s.stop + r) for s, n, r in zip(extent, shape, reach)]
    window = pet_suv[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]].astype(np.float64)
    padded = np.pad(window, [(int(r), int(r)) for r in reach], constant_values=np.nan)
    # Lesion voxels' positions inside the padded window.
    k, j, i = np.nonzero(inside)
    k = k + extent[0].start - lo[0] + reach[0]
    j = j + extent[1].start - lo[1] + reach[1]
    i = i + extent[2].start - lo[2] + reach[2]
    # Voxels outside the image are NaN in ``padded``; voxels inside the image but outside the
    # window cannot be reached because the window extends by the sphere's reach where it can.
    best = -np.inf
    for start in range(0, k.size, _PEAK_CHUNK):  # bounded memory for very large lesions
        part = slice(start, start + _PEAK_CHUNK)
        samples = padded[
            k[part, None] + offsets[None, :, 0],
            j[part, None] + offsets[None, :, 1],
            i[part, None] + offsets[None, :, 2],
        ]
        best = max(best, float(np.nanmean(samples, axis=1).max()))
    return best
