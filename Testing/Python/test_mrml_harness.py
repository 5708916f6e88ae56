"""The headless harness gives real Slicer MRML: volumes built from SimpleITK images keep
their voxels and their place in space exactly, through the LPS -> RAS change."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from studies import oblique_direction

from PETCTLesionsLib.geometry import Grid, lps_to_ras_matrix

pytestmark = pytest.mark.slicer  # skipped where slicer-core is not installed (Slicer 5.6's stack in CI)


def _ct_image() -> sitk.Image:
    rng = np.random.default_rng(7)
    hu = rng.integers(-1024, 2000, size=(9, 14, 17), dtype=np.int16)  # [k, j, i]
    grid = Grid(
        size=(17, 14, 9),
        spacing=(0.8417, 0.9, 2.5),
        origin=(-228.04, -93.06, -184.0),
        direction=oblique_direction(17.0),
    )
    return grid.to_sitk(hu)


def _pet_image() -> sitk.Image:
    rng = np.random.default_rng(8)
    suv = rng.gamma(2.0, 1.5, size=(7, 11, 13)).astype(np.float32)
    grid = Grid(
        size=(13, 11, 7),
        spacing=(4.0728, 4.0728, 3.27),
        origin=(-405.3, -398.7, -612.25),
        direction=oblique_direction(-9.0),
    )
    return grid.to_sitk(suv)


def _ras_of_index(node, ijk) -> np.ndarray:
    import vtk

    matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    return np.array(matrix.MultiplyPoint((*ijk, 1.0))[:3])


@pytest.mark.parametrize("make_image, name", [(_ct_image, "CT"), (_pet_image, "PET")])
def test_volume_node_round_trip_is_voxel_and_position_exact(mrml_scene, make_image, name):
    import slicer

    from PETCTLesionsLib.mrml.volumes import image_from_volume_node, volume_node_from_image

    image = make_image()
    node = volume_node_from_image(image, name)

    assert node.IsA("vtkMRMLScalarVolumeNode")
    assert mrml_scene.GetNodeByID(node.GetID()) is node
    assert slicer.mrmlScene is mrml_scene
    # Voxels: same values, same numpy order, same dtype.
    voxels = slicer.util.arrayFromVolume(node)
    expected = sitk.GetArrayFromImage(image)
    assert voxels.dtype == expected.dtype
    np.testing.assert_array_equal(voxels, expected)
    # Position: every corner voxel lands where SimpleITK puts it, LPS flipped to RAS.
    size = image.GetSize()
    for ijk in [(0, 0, 0), (size[0] - 1, 0, 0), (0, size[1] - 1, size[2] - 1), (size[0] - 1, size[1] - 1, size[2] - 1)]:
        lps = np.array(image.TransformIndexToPhysicalPoint(ijk))
        ras = lps_to_ras_matrix()[:3, :3] @ lps
        np.testing.assert_allclose(_ras_of_index(node, ijk), ras, atol=1e-9)
    # And back: the image we get from the node is the image we gave it.
    back = image_from_volume_node(node)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), expected)
    np.testing.assert_allclose(back.GetOrigin(), image.GetOrigin(), atol=1e-9)
    np.testing.assert_allclose(back.GetSpacing(), image.GetSpacing(), atol=1e-9)
    np.testing.assert_allclose(back.GetDirection(), image.GetDirection(), atol=1e-9)


def test_each_test_gets_a_fresh_scene_with_default_colour_tables(mrml_scene):
    import slicer

    assert mrml_scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode") == 0
    for colour in ("Grey", "PET-Heat", "PET-Rainbow2", "PET-DICOM"):
        assert mrml_scene.GetFirstNodeByName(colour) is not None, colour
    assert slicer.modules.segmentations.logic().GetMRMLScene() is mrml_scene


def test_segment_helpers_work_on_the_headless_scene(mrml_scene):
    """slicer.util's segment helpers reach the Segmentations logic through slicer.modules."""
    import slicer

    from PETCTLesionsLib.mrml.volumes import volume_node_from_image

    image = _pet_image()
    reference = volume_node_from_image(image, "PET")
    mask = (sitk.GetArrayFromImage(image) > 4.0).astype(np.uint8)
    segmentation = mrml_scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "Lesions")
    segmentation.CreateDefaultDisplayNodes()
    segmentation.SetReferenceImageGeometryParameterFromVolumeNode(reference)
    segment_id = segmentation.GetSegmentation().AddEmptySegment("Lesion 1")
    slicer.util.updateSegmentBinaryLabelmapFromArray(mask, segmentation, segment_id, reference)
    back = slicer.util.arrayFromSegmentBinaryLabelmap(segmentation, segment_id, reference)
    assert int(mask.sum()) > 0
    np.testing.assert_array_equal(back, mask)


def test_volume_under_a_transform_is_refused(mrml_scene):
    from PETCTLesionsLib.mrml.volumes import image_from_volume_node, volume_node_from_image

    node = volume_node_from_image(_ct_image(), "CT")
    transform = mrml_scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    node.SetAndObserveTransformNodeID(transform.GetID())
    with pytest.raises(ValueError, match="under a transform"):
        image_from_volume_node(node)
