"""The PET MIP view (mrml/mip_view.py) on real MRML (slicer-core): the volume rendering set as an
inverted-grey MIP over the SUV window, and a click in a 3D view sending the slice views to the
hottest voxel under the mouse (a real vtkRenderer's camera gives the ray, as in the application)."""

from __future__ import annotations

import numpy as np
import pytest

from PETCTLesionsLib.geometry import Grid, lps_to_ras

pytestmark = pytest.mark.slicer

GRID = Grid(size=(30, 24, 20), spacing=(4.0, 4.0, 3.0), origin=(-60.0, -50.0, 10.0))
HOT = (12, 9, 17)  # [k, j, i] where the reader points
BEHIND = (12, 12, 17)  # 12 mm posterior to it, hotter: on the ray from the front, so the MIP pixel shows it


def _pet():
    from PETCTLesionsLib.mrml.study_nodes import mark_as_suv_bw
    from PETCTLesionsLib.mrml.volumes import volume_node_from_image

    suv = np.random.default_rng(4).uniform(0.5, 1.5, GRID.shape).astype(np.float32)
    suv[HOT] = 12.0
    suv[BEHIND] = 30.0
    suv[HOT[0] + 1, HOT[1] + 1, HOT[2]] = 50.0  # the next slice, hottest of all: not on the ray
    node = volume_node_from_image(GRID.to_sitk(suv), "PET SUVbw")
    mark_as_suv_bw(node)
    return node, suv


def test_the_pet_is_shown_as_an_inverted_grey_mip_over_the_suv_window_in_the_3d_view(mrml_scene):
    import slicer

    from PETCTLesionsLib.mrml.mip_view import show_pet_mip

    pet, _ = _pet()
    display = show_pet_mip(pet, suv_window=(0.0, 8.0))
    assert display.IsA("vtkMRMLVolumeRenderingDisplayNode") and display.GetVisibility()
    assert display.GetVolumeNode() is pet
    view = mrml_scene.GetNodeByID(display.GetViewNodeIDs()[0])
    assert view.IsA("vtkMRMLViewNode")
    assert view.GetRaycastTechnique() == slicer.vtkMRMLViewNode.MaximumIntensityProjection
    assert view.GetBackgroundColor() == (1.0, 1.0, 1.0)
    volume_property = display.GetVolumePropertyNode().GetVolumeProperty()
    colours = volume_property.GetRGBTransferFunction()
    assert colours.GetColor(0.0) == (1.0, 1.0, 1.0)  # low uptake white
    assert colours.GetColor(8.0) == (0.0, 0.0, 0.0)  # high uptake black
    assert colours.GetColor(20.0) == (0.0, 0.0, 0.0)
    np.testing.assert_allclose(colours.GetColor(4.0), (0.5, 0.5, 0.5), atol=0.02)
    assert volume_property.GetScalarOpacity().GetValue(4.0) == 1.0
    # Shown again (another window): the same nodes, the new window.
    again = show_pet_mip(pet, suv_window=(1.0, 5.0))
    assert again is display and colours.GetColor(5.0) == (0.0, 0.0, 0.0)


def test_a_click_on_the_mip_centres_the_slice_views_on_the_hottest_voxel_under_the_mouse(mrml_scene):
    import vtk

    from PETCTLesionsLib.mrml.mip_view import centre_on_mip_click, ray_under_mouse

    pet, _ = _pet()
    hot_ras = np.array(lps_to_ras(GRID.index_to_lps([HOT[2], HOT[1], HOT[0]])))
    # A 3D view looking at the patient from the front (anterior), rotated a little, as a reader might leave it.
    renderer = vtk.vtkRenderer()
    window = vtk.vtkRenderWindow()
    window.SetOffScreenRendering(True)
    window.SetSize(400, 300)
    window.AddRenderer(renderer)
    camera = renderer.GetActiveCamera()
    camera.SetFocalPoint(*hot_ras)
    camera.SetPosition(*(hot_ras + [30.0, 500.0, 20.0]))
    camera.SetViewUp(0.0, 0.0, 1.0)
    renderer.ResetCameraClippingRange(-200, 200, -200, 200, -200, 200)
    # The mouse over the hot voxel: where the camera projects its centre.
    renderer.SetWorldPoint(*hot_ras, 1.0)
    renderer.WorldToDisplay()
    x, y, _ = renderer.GetDisplayPoint()
    near, far = ray_under_mouse(renderer, x, y)
    direction = np.subtract(far, near) / np.linalg.norm(np.subtract(far, near))
    offset = hot_ras - near
    assert np.linalg.norm(offset - (offset @ direction) * direction) < 1e-6  # the ray passes through the voxel
    # The MIP pixel under the mouse shows the hottest voxel along this ray: the one behind.
    ras = centre_on_mip_click(pet, near, far)
    expected = np.array(lps_to_ras(GRID.index_to_lps([BEHIND[2], BEHIND[1], BEHIND[0]])))
    np.testing.assert_allclose(ras, expected, atol=1e-6)
    for layout in ("Red", "Yellow", "Green"):
        slice_node = mrml_scene.GetNodeByID(f"vtkMRMLSliceNode{layout}")
        centre = np.array([slice_node.GetSliceToRAS().GetElement(r, 3) for r in range(3)])
        np.testing.assert_allclose(centre, expected, atol=1e-6)

    # A click beside the PET: nothing moves.
    renderer.SetWorldPoint(*(hot_ras + [400.0, 0.0, 0.0]), 1.0)
    renderer.WorldToDisplay()
    x, y, _ = renderer.GetDisplayPoint()
    assert centre_on_mip_click(pet, *ray_under_mouse(renderer, x, y)) is None


def test_the_mip_needs_a_pet_in_suv_and_a_window(mrml_scene):
    from PETCTLesionsLib.errors import InputError
    from PETCTLesionsLib.mrml.mip_view import show_pet_mip
    from PETCTLesionsLib.mrml.volumes import volume_node_from_image

    pet, _ = _pet()
    with pytest.raises(InputError, match="SUV window"):
        show_pet_mip(pet, suv_window=(5.0, 5.0))
    bq = volume_node_from_image(GRID.to_sitk(np.ones(GRID.shape, np.float32)), "PET Bq/mL")
    with pytest.raises(InputError, match="SUVbw"):
        show_pet_mip(bq)
