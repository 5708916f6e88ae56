"""Lesion segments <-> label maps, the fast ways: the import puts every lesion in one shared
labelmap layer, the export reads the layers directly when they lie on the reference grid. Both
are checked against Slicer's own per-segment APIs and ExportSegmentsToLabelmapNode, on the
geometries where the fast path applies and on those where Slicer must resample instead."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from PETCTLesionsLib.geometry import Grid

pytestmark = pytest.mark.slicer  # skipped where slicer-core is not installed (Slicer 5.6's stack in CI)

GRID = Grid(size=(30, 24, 12), spacing=(2.0364, 2.0364, 3.0), origin=(-30.0, -24.0, -900.0))


def _lesion_lattice(grid: Grid, count: int) -> np.ndarray:
    """``count`` one-voxel lesions two voxels apart, numbered 1..count in raster order."""
    lesion_map = np.zeros(grid.shape, np.uint16)
    k, j, i = np.meshgrid(*(np.arange(1, n - 1, 2) for n in grid.shape), indexing="ij")
    positions = np.stack([k.ravel(), j.ravel(), i.ravel()], axis=1)[:count]
    assert len(positions) == count
    lesion_map[tuple(positions.T)] = np.arange(1, count + 1)
    return lesion_map


def _blobs(grid: Grid) -> np.ndarray:
    mask = np.zeros(grid.shape, np.uint8)
    mask[2:5, 3:8, 4:9] = 1
    mask[7:9, 10:15, 20:26] = 1
    mask[1, 20, 2] = 1
    mask[10:12, 0:3, 27:30] = 1  # touches the grid's border
    return mask


def _reference(grid: Grid, name: str = "PET"):
    from PETCTLesionsLib.mrml.volumes import volume_node_from_image

    return volume_node_from_image(grid.to_sitk(np.zeros(grid.shape, np.float32)), name)


def _both_ways(segmentation, reference):
    import slicer

    from PETCTLesionsLib.mrml.segmentations import _lesion_map_by_slicer, _lesion_map_from_layers, segment_ids

    ids = segment_ids(segmentation)
    kinds = ("vtkMRMLVolumeNode", "vtkMRMLDisplayNode", "vtkMRMLColorNode", "vtkMRMLStorageNode")
    before = [slicer.mrmlScene.GetNumberOfNodesByClass(kind) for kind in kinds]
    by_slicer = _lesion_map_by_slicer(segmentation, ids, reference)
    # No labelmap, display node or colour table left behind (one per call used to pile up).
    assert [slicer.mrmlScene.GetNumberOfNodesByClass(kind) for kind in kinds] == before
    return _lesion_map_from_layers(segmentation, ids, reference), by_slicer


def _add_painted_segment(segmentation, reference, voxels: np.ndarray, name: str) -> str:
    import slicer

    segment_id = segmentation.GetSegmentation().AddEmptySegment("", name)
    slicer.util.updateSegmentBinaryLabelmapFromArray(voxels.astype(np.uint8), segmentation, segment_id, reference)
    return segment_id


# ----------------------------------------------------------------------------------------- import


@pytest.mark.parametrize("count", [3, 300])  # 300: more lesions than uint8 label values
def test_import_puts_each_lesion_in_one_shared_layer_with_the_right_voxels(mrml_scene, count):
    import slicer

    from PETCTLesionsLib.mrml.segmentations import (
        LESION_TERMINOLOGY,
        lesion_colour,
        segment_terminology,
        segmentation_from_mask,
    )

    lesion_map = _lesion_lattice(GRID, count)
    reference = _reference(GRID)

    segmentation = segmentation_from_mask(GRID.to_sitk((lesion_map > 0).astype(np.uint8)), "in", lesion_map=lesion_map)

    content = segmentation.GetSegmentation()
    assert content.GetNumberOfSegments() == count
    assert content.GetNumberOfLayers() == 1
    for position in sorted({0, 1, count // 2, count - 1}):
        segment_id = content.GetNthSegmentID(position)
        segment = content.GetSegment(segment_id)
        number = position + 1
        assert segment.GetName() == f"Lesion {number}"
        assert segment_id.startswith("PETCTLesions_")  # never the name, which Slicer 5.6 would reuse as the ID
        assert segment.GetColor() == pytest.approx(lesion_colour(number))
        assert segment_terminology(segment) == LESION_TERMINOLOGY
        voxels = slicer.util.arrayFromSegmentBinaryLabelmap(segmentation, segment_id, reference)
        np.testing.assert_array_equal(voxels > 0, lesion_map == number)


def test_import_keeps_lesion_numbers_when_the_map_skips_some_and_ignores_negatives(mrml_scene):
    from vtk.util import numpy_support

    from PETCTLesionsLib.mrml.segmentations import lesion_map_on, segmentation_from_mask

    lesion_map = _lesion_lattice(GRID, 6).astype(np.int32)
    lesion_map[lesion_map == 2] = 0
    lesion_map[lesion_map == 5] = 0
    lesion_map[1, 1, 2] = -1  # between lesions 1 and 2: not a lesion number, background as before

    mask = GRID.to_sitk((lesion_map > 0).astype(np.uint8))
    segmentation = segmentation_from_mask(mask, "gaps", lesion_map=lesion_map)

    values, names = lesion_map_on(segmentation, _reference(GRID))
    assert names == ["Lesion 1", "Lesion 3", "Lesion 4", "Lesion 6"]
    # The shared layer holds only the segments' label values: a value without a segment would
    # join the next segment the user paints with that value.
    layer = segmentation.GetSegmentation().GetLayerDataObject(0)
    layer_values = set(np.unique(numpy_support.vtk_to_numpy(layer.GetPointData().GetScalars())).tolist())
    assert layer_values == {0, 1, 3, 4, 6}
    np.testing.assert_array_equal(values, np.select([lesion_map == n for n in (1, 3, 4, 6)], [1, 2, 3, 4]))


def test_import_of_an_empty_mask_gives_no_segments(mrml_scene):
    from PETCTLesionsLib.mrml.segmentations import mask_on, segmentation_from_mask

    segmentation = segmentation_from_mask(GRID.to_sitk(np.zeros(GRID.shape, np.uint8)), "none")

    assert segmentation.GetSegmentation().GetNumberOfSegments() == 0
    assert not sitk.GetArrayViewFromImage(mask_on(segmentation, _reference(GRID))).any()


# ----------------------------------------------------------------------------------------- export


@pytest.mark.parametrize("count", [4, 300])
def test_export_from_layers_equals_slicers_export_for_an_imported_label(mrml_scene, count):
    from PETCTLesionsLib.mrml.segmentations import segmentation_from_mask

    lesion_map = _lesion_lattice(GRID, count) if count > 4 else None
    mask = _blobs(GRID) if lesion_map is None else (lesion_map > 0).astype(np.uint8)
    segmentation = segmentation_from_mask(GRID.to_sitk(mask), "in", lesion_map=lesion_map)

    from_layers, by_slicer = _both_ways(segmentation, _reference(GRID))

    assert from_layers is not None
    np.testing.assert_array_equal(from_layers, by_slicer)
    np.testing.assert_array_equal(from_layers > 0, mask > 0)


def test_export_from_layers_equals_slicers_export_for_overlapping_segments_in_two_layers(mrml_scene):
    from PETCTLesionsLib.mrml.segmentations import segmentation_from_mask

    reference = _reference(GRID)
    segmentation = segmentation_from_mask(GRID.to_sitk(_blobs(GRID)), "edited")
    painted = np.zeros(GRID.shape, np.uint8)
    painted[1:9, 2:12, 3:22] = 1  # over lesions 1 and 2
    overlapping = _add_painted_segment(segmentation, reference, painted, "painted")
    content = segmentation.GetSegmentation()
    assert content.GetNumberOfLayers() == 2

    # Last, first, and between lesions 1 and 2: there the later lesion 2 (first layer) wins
    # over the painted segment (second layer).
    for position in (content.GetNumberOfSegments() - 1, 0, 1, 2):
        content.SetSegmentIndex(overlapping, position)
        from_layers, by_slicer = _both_ways(segmentation, reference)
        assert from_layers is not None
        np.testing.assert_array_equal(from_layers, by_slicer)

    # Two segments of one layer with one label value (not made by Slicer's tools): the later wins.
    lesion_1, lesion_2 = (content.GetSegment(content.GetNthSegmentID(n)) for n in (0, 3))
    lesion_2.SetLabelValue(lesion_1.GetLabelValue())
    from_layers, by_slicer = _both_ways(segmentation, reference)
    np.testing.assert_array_equal(from_layers, by_slicer)

    content.RemoveSegment(content.GetNthSegmentID(1))  # its voxels leave the shared layer
    from_layers, by_slicer = _both_ways(segmentation, reference)
    np.testing.assert_array_equal(from_layers, by_slicer)


def test_export_from_layers_clips_a_segmentation_larger_than_the_reference(mrml_scene):
    from PETCTLesionsLib.mrml.segmentations import segmentation_from_mask

    # Same origin, spacing and axes, 8 more columns and 4 more slices: one matrix, a larger extent.
    larger = Grid(size=(38, 24, 16), spacing=GRID.spacing, origin=GRID.origin)
    mask = np.zeros(larger.shape, np.uint8)
    mask[3:6, 5:9, 25:35] = 1  # crosses the reference's last column
    mask[13:15, 2:4, 2:4] = 1  # beyond its last slice
    mask[1:3, 1:3, 1:3] = 1
    segmentation = segmentation_from_mask(larger.to_sitk(mask), "larger")

    from_layers, by_slicer = _both_ways(segmentation, _reference(GRID))

    assert from_layers is not None
    np.testing.assert_array_equal(from_layers, by_slicer)
    np.testing.assert_array_equal(from_layers > 0, mask[:12, :24, :30] > 0)


def test_export_on_another_grid_is_left_to_slicer_and_gives_its_result(mrml_scene):
    from PETCTLesionsLib.mrml.segmentations import lesion_map_on, segmentation_from_mask

    ct_grid = Grid(size=(60, 48, 36), spacing=(1.0182, 1.0182, 1.0), origin=GRID.origin)
    mask = np.zeros(ct_grid.shape, np.uint8)
    mask[4:15, 6:16, 8:20] = 1
    mask[20:30, 30:40, 40:55] = 1
    segmentation = segmentation_from_mask(ct_grid.to_sitk(mask), "on CT")
    reference = _reference(GRID)

    from_layers, by_slicer = _both_ways(segmentation, reference)

    assert from_layers is None  # the layer is on the CT grid: Slicer resamples it
    values, _ = lesion_map_on(segmentation, reference)
    np.testing.assert_array_equal(values, by_slicer)
    assert set(np.unique(values).tolist()) == {0, 1, 2}


def test_export_of_closed_surfaces_is_left_to_slicer(mrml_scene):
    from PETCTLesionsLib.mrml.segmentations import segmentation_from_mask

    segmentation = segmentation_from_mask(GRID.to_sitk(_blobs(GRID)), "surfaces")
    content = segmentation.GetSegmentation()
    assert content.CreateRepresentation("Closed surface")
    content.SetSourceRepresentationName("Closed surface")

    from_layers, by_slicer = _both_ways(segmentation, _reference(GRID))

    assert from_layers is None
    assert by_slicer.any()
