"""CT onto the PET grid: linear interpolation at the right place, air outside the CT field."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from PETCTLesionsLib.geometry import Grid
from PETCTLesionsLib.resampling import AIR_HU, resample_ct_to_pet, resample_label_to_grid, resample_to_grid


def _ramp_ct() -> sitk.Image:
    """HU = 2 * x_mm + 3 * z_mm: linear in space, so linear interpolation must be exact."""
    grid = Grid(size=(40, 30, 20), spacing=(1.0, 1.0, 2.5), origin=(-20.0, -15.0, -25.0))
    x, y, z = grid.axis_coordinates()
    hu = 2.0 * x[None, None, :] + 3.0 * z[:, None, None] + 0.0 * y[None, :, None]
    return grid.to_sitk(hu.astype(np.float32))


def test_ct_resampled_on_pet_grid_is_exact_inside_and_air_outside():
    ct = _ramp_ct()
    # PET voxels larger, offset by a non-integer amount, and reaching beyond the CT in x.
    pet_grid = Grid(size=(16, 8, 6), spacing=(4.07, 3.0, 3.27), origin=(-30.3, -10.1, -20.2))
    out = resample_ct_to_pet(ct, pet_grid)

    assert Grid.from_sitk(out).same_as(pet_grid)
    assert out.GetPixelID() == sitk.sitkFloat32
    values = sitk.GetArrayFromImage(out)
    x, y, z = pet_grid.axis_coordinates()
    expected = 2.0 * x[None, None, :] + 3.0 * z[:, None, None] + 0.0 * y[None, :, None]
    inside_x = (x >= -20.0) & (x <= 19.0)
    inside_z = (z >= -25.0) & (z <= 22.5)
    inside = inside_z[:, None, None] & np.ones(len(y), bool)[None, :, None] & inside_x[None, None, :]
    np.testing.assert_allclose(values[inside], expected[inside], atol=1e-3)
    assert np.all(values[~inside] == AIR_HU)
    assert (~inside).sum() > 0


def test_label_resampling_keeps_label_values():
    grid = Grid(size=(10, 10, 10), spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0))
    labels = np.zeros(grid.shape, np.uint16)
    labels[2:5, 2:5, 2:5] = 7
    labels[6:9, 6:9, 6:9] = 300
    out = resample_label_to_grid(
        grid.to_sitk(labels), Grid(size=(5, 5, 5), spacing=(2.0, 2.0, 2.0), origin=(0.5, 0.5, 0.5))
    )
    assert set(np.unique(sitk.GetArrayFromImage(out)).tolist()) == {0, 7, 300}
    assert out.GetPixelID() == sitk.sitkUInt16


def test_a_sub_grid_holds_the_same_voxels_as_its_parent_on_an_oblique_grid():
    tilted = Grid(
        (40, 32, 12),
        (0.9, 0.8, 2.5),
        (-18.0, -14.4, -15.0),
        (1.0, 0.0, 0.0, 0.0, 0.9945219, -0.1045285, 0.0, 0.1045285, 0.9945219),
    )
    window = tilted.sub_grid((3, 5, 7), (10, 9, 8))
    assert window.size == (7, 4, 1) and window.spacing == tilted.spacing and window.direction == tilted.direction
    inner = np.array([[0, 0, 0], [6, 3, 0], [2, 1, 0]], float)
    np.testing.assert_allclose(window.index_to_lps(inner), tilted.index_to_lps(inner + [3, 5, 7]), atol=1e-9)
    values = np.arange(np.prod(tilted.shape), dtype=np.float32).reshape(tilted.shape)
    cut = sitk.GetArrayFromImage(resample_to_grid(tilted.to_sitk(values), window, sitk.sitkNearestNeighbor))
    np.testing.assert_array_equal(cut, values[7:8, 5:9, 3:10])
