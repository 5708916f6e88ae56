"""A click on the PET MIP -> the hottest voxel along the viewing ray (interactive/mip.py), exact answers."""

from __future__ import annotations

import numpy as np
import pytest
from studies import oblique_direction

from PETCTLesionsLib.errors import InputError
from PETCTLesionsLib.geometry import Grid
from PETCTLesionsLib.interactive.mip import hottest_voxel_on_ray, ray_through, voxels_on_ray

AXIAL = Grid(size=(20, 16, 12), spacing=(2.0, 2.5, 3.0), origin=(-20.0, -30.0, 100.0))
OBLIQUE = Grid(
    size=(20, 16, 12), spacing=(2.0, 2.5, 3.0), origin=(-20.0, -30.0, 100.0), direction=oblique_direction(25)
)


def _cool_pet(grid: Grid, seed: int = 3) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0.0, 1.0, grid.shape).astype(np.float32)


def _centre(grid: Grid, kji) -> np.ndarray:
    k, j, i = kji
    return grid.index_to_lps([i, j, k])


@pytest.mark.parametrize("grid", [AXIAL, OBLIQUE], ids=["axial", "oblique"])
@pytest.mark.parametrize("axis", [0, 1, 2])
def test_a_ray_along_a_voxel_axis_finds_the_hot_voxel_of_its_column_not_a_hotter_neighbour(grid, axis):
    pet = _cool_pet(grid)
    hot = (7, 9, 11)
    pet[hot] = 10.0
    neighbour = list(hot)
    neighbour[2 - ((axis + 1) % 3)] += 1  # the next voxel across the column: never crossed
    pet[tuple(neighbour)] = 50.0
    axis_direction = grid.direction_matrix[:, axis]
    for sign in (1.0, -1.0):  # from either side
        origin = _centre(grid, hot) - sign * 1000.0 * axis_direction
        assert hottest_voxel_on_ray(pet, grid, origin, sign * axis_direction) == hot
        column = voxels_on_ray(grid, origin, sign * axis_direction)
        assert len(column) == grid.size[axis]  # every voxel of the column, each once


@pytest.mark.parametrize("grid", [AXIAL, OBLIQUE], ids=["axial", "oblique"])
def test_an_oblique_ray_through_a_voxel_centre_finds_it(grid):
    pet = _cool_pet(grid)
    hot = (4, 10, 6)
    pet[hot] = 7.5
    direction = np.array([0.31, -0.62, 0.72])
    origin = _centre(grid, hot) + 400.0 * direction  # behind the volume, looking back through it
    assert hottest_voxel_on_ray(pet, grid, origin, -direction) == hot


def test_of_equal_maxima_the_voxel_nearest_the_viewer_is_taken():
    pet = np.zeros(AXIAL.shape, np.float32)
    pet[2, 5, 5] = pet[9, 5, 5] = 4.0
    top, bottom = _centre(AXIAL, (11, 5, 5)) + [0, 0, 50.0], _centre(AXIAL, (0, 5, 5)) - [0, 0, 50.0]
    assert hottest_voxel_on_ray(pet, AXIAL, top, [0, 0, -1.0]) == (9, 5, 5)
    assert hottest_voxel_on_ray(pet, AXIAL, bottom, [0, 0, 1.0]) == (2, 5, 5)


@pytest.mark.parametrize("grid", [AXIAL, OBLIQUE], ids=["axial", "oblique"])
def test_a_ray_that_misses_the_grid_gives_none(grid):
    pet = _cool_pet(grid)
    low, high = grid.extent_lps()
    outside = high + 100.0
    assert hottest_voxel_on_ray(pet, grid, outside, [1.0, 0.0, 0.0]) is None  # parallel to the grid, beside it
    assert hottest_voxel_on_ray(pet, grid, outside, outside - low) is None  # pointing away: the grid is behind it
    assert len(voxels_on_ray(grid, outside, [0.0, 1.0, 0.0])) == 0


def test_the_ray_starts_at_its_origin():
    pet = np.zeros(AXIAL.shape, np.float32)
    pet[1, 5, 5] = 9.0  # behind the origin
    pet[6, 5, 5] = 2.0
    origin = _centre(AXIAL, (4, 5, 5))
    assert hottest_voxel_on_ray(pet, AXIAL, origin, [0, 0, 1.0]) == (6, 5, 5)


@pytest.mark.parametrize("grid", [AXIAL, OBLIQUE], ids=["axial", "oblique"])
def test_every_voxel_the_ray_samples_lies_on_it_and_none_is_skipped_along_it(grid):
    rng = np.random.default_rng(11)
    half_diagonal = float(np.linalg.norm(grid.spacing)) / 2.0
    for _ in range(20):
        centre = grid.index_to_lps(rng.uniform(0, np.array(grid.size) - 1))
        direction = rng.normal(size=3)
        direction /= np.linalg.norm(direction)
        voxels = voxels_on_ray(grid, centre - 300.0 * direction, direction)
        assert len(voxels) > 0
        centres = grid.index_to_lps(voxels[:, ::-1].astype(float))
        offsets = centres - centre
        distance_to_line = np.linalg.norm(offsets - (offsets @ direction)[:, None] * direction, axis=1)
        assert distance_to_line.max() <= half_diagonal + 1e-9
        # In order along the ray, and consecutive voxels touch (face, edge or corner).
        assert (np.diff(offsets @ direction) > -half_diagonal).all()
        assert np.abs(np.diff(voxels, axis=0)).max() <= 1


def test_ray_through_two_points_and_bad_input():
    origin, direction = ray_through([0, 0, 0], [0, 0, 10])
    assert origin == (0.0, 0.0, 0.0) and direction == (0.0, 0.0, 1.0)
    with pytest.raises(InputError):
        ray_through([1, 2, 3], [1, 2, 3])
    with pytest.raises(InputError):
        hottest_voxel_on_ray(np.zeros((2, 2, 2), np.float32), AXIAL, [0, 0, 0], [0, 0, 1])
