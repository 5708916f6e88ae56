"""A click on a PET maximum-intensity projection (MIP) -> the voxel the reader saw.

A MIP pixel shows the hottest voxel along its line of sight, so the voxel behind a click is
the hottest one the viewing ray crosses: :func:`hottest_voxel_on_ray` finds it on the PET grid.
The ray is followed in the grid's continuous index space (``Grid.lps_to_index``), which is an
affine image of patient space, so an oblique grid is handled exactly; it is sampled every
half of the smallest voxel spacing (or finer), so no voxel it runs through for more than half
a spacing is missed.

Plain numpy: the 3D view's wiring (camera -> ray, centring the slice views) is in
``mrml/mip_view.py``.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple

import numpy as np

from ..errors import InputError
from ..geometry import Grid, Vector3

VoxelKJI = Tuple[int, int, int]


def ray_through(near_lps: Sequence[float], far_lps: Sequence[float]) -> Tuple[Vector3, Vector3]:
    """The ray from ``near_lps`` towards ``far_lps`` (e.g. a click's points on a view's near and far
    clipping planes) as (origin, unit direction)."""
    near = np.asarray(near_lps, dtype=float)
    direction = np.asarray(far_lps, dtype=float) - near
    length = float(np.linalg.norm(direction))
    if not length > 0:
        raise InputError("a viewing ray needs two different points")
    return _vector(near), _vector(direction / length)


def ray_grid_interval(
    grid: Grid, origin_lps: Sequence[float], direction_lps: Sequence[float]
) -> Optional[Tuple[float, float]]:
    """The part of the ray ``origin + t * direction`` (t >= 0, t in the direction's units) inside
    the grid's voxels (their faces at index -0.5 .. size - 0.5), or None when the ray misses them."""
    origin_ijk = grid.lps_to_index(origin_lps)
    # A direction is a difference of points: the index matrix without the translation.
    direction_ijk = grid.lps_to_index(np.asarray(origin_lps, float) + np.asarray(direction_lps, float)) - origin_ijk
    t_enter, t_exit = 0.0, math.inf
    for axis in range(3):
        low, high = -0.5, grid.size[axis] - 0.5
        if abs(direction_ijk[axis]) < 1e-12:
            if not low <= origin_ijk[axis] <= high:
                return None  # parallel to this axis' faces, and outside them
            continue
        t0 = (low - origin_ijk[axis]) / direction_ijk[axis]
        t1 = (high - origin_ijk[axis]) / direction_ijk[axis]
        t_enter, t_exit = max(t_enter, min(t0, t1)), min(t_exit, max(t0, t1))
    if t_enter > t_exit:
        return None
    return t_enter, t_exit


def voxels_on_ray(grid: Grid, origin_lps: Sequence[float], direction_lps: Sequence[float]) -> np.ndarray:
    """The voxels the ray crosses, in order from its origin, each once: ``(n, 3)`` ``[k, j, i]`` rows
    (empty when the ray misses the grid). Sampled every half smallest spacing or finer."""
    direction = np.asarray(direction_lps, dtype=float)
    length = float(np.linalg.norm(direction))
    if not length > 0:
        raise InputError("a viewing ray needs a direction")
    direction = direction / length
    interval = ray_grid_interval(grid, origin_lps, direction)
    if interval is None:
        return np.zeros((0, 3), np.int64)
    t_enter, t_exit = interval
    step = min(grid.spacing) / 2.0
    count = max(int(math.ceil((t_exit - t_enter) / step)), 0) + 1
    t = np.linspace(t_enter, t_exit, count)
    points = np.asarray(origin_lps, float) + t[:, None] * direction
    # Nearest voxel, rounding half up as the rest of the library; the ends lie on the grid's outer
    # faces, where rounding can step one past the last voxel.
    ijk = np.floor(grid.lps_to_index(points) + 0.5).astype(np.int64)
    ijk = np.clip(ijk, 0, np.asarray(grid.size) - 1)
    kji = ijk[:, ::-1]
    # Consecutive samples in one voxel are one voxel; a voxel is never entered twice along a line.
    keep = np.ones(len(kji), bool)
    keep[1:] = (kji[1:] != kji[:-1]).any(axis=1)
    return kji[keep]


def hottest_voxel_on_ray(
    pet_suv: np.ndarray, grid: Grid, origin_lps: Sequence[float], direction_lps: Sequence[float]
) -> Optional[VoxelKJI]:
    """``[k, j, i]`` of the hottest voxel of ``pet_suv`` (on ``grid``) that the ray
    ``origin + t * direction``, t >= 0, crosses; the one nearest the origin among equals; None when
    the ray misses the grid."""
    if tuple(pet_suv.shape) != grid.shape:
        raise InputError(f"PET of shape {tuple(pet_suv.shape)} does not lie on {grid.describe()}")
    voxels = voxels_on_ray(grid, origin_lps, direction_lps)
    if len(voxels) == 0:
        return None
    values = pet_suv[voxels[:, 0], voxels[:, 1], voxels[:, 2]]
    k, j, i = (int(v) for v in voxels[int(np.argmax(values))])  # argmax: the first of equal maxima
    return (k, j, i)


def _vector(values: Sequence[float]) -> Vector3:
    return (float(values[0]), float(values[1]), float(values[2]))
