"""Lesion numbering, per-slice boxes and case ids: checked against brute force and by hand."""

from __future__ import annotations

import numpy as np
import pytest

from PETCTLesionsLib.formats.nnunet import case_id_for_study
from PETCTLesionsLib.formats.voc import tight_box
from PETCTLesionsLib.lesions import LabelError, label_lesions, slice_boxes


def test_lesions_are_26_connected_components_numbered_largest_first():
    mask = np.zeros((6, 10, 10), np.uint8)
    mask[1, 1, 1] = 1
    mask[2, 2, 2] = 1  # touches the first only by a corner: same lesion
    mask[3:6, 5:9, 5:9] = 1  # the big one
    labels, count = label_lesions(mask)
    assert count == 2
    assert labels[3, 5, 5] == 1 and labels[1, 1, 1] == labels[2, 2, 2] == 2
    assert label_lesions(np.zeros((2, 2, 2), np.uint8))[1] == 0
    with pytest.raises(LabelError, match="expected values 0 and 1 only, found 3"):
        label_lesions(mask * 3)


def test_slice_boxes_equal_brute_force_tight_boxes():
    rng = np.random.default_rng(1)
    lesion_map = (rng.random((7, 30, 40)) > 0.97).astype(np.uint16) * rng.integers(1, 6, (7, 30, 40)).astype(np.uint16)
    fast = {(b.k, b.lesion): (b.c0, b.r0, b.c1, b.r1) for b in slice_boxes(lesion_map)}
    slow = {}
    for k in range(lesion_map.shape[0]):
        for lesion in range(1, 6):
            box = tight_box(lesion_map[k] == lesion, "A")
            if box is not None:
                slow[(k, lesion)] = box.to_pixel_ranges()
    assert fast == slow and len(fast) > 20


def test_case_id_is_deterministic_file_safe_and_names_the_study():
    case_id = case_id_for_study("Lung_Dx-A0001", "1.2.840.113619.2.55.3", "20070404")
    assert case_id == case_id_for_study("Lung_Dx-A0001", "1.2.840.113619.2.55.3", "20070404")
    assert case_id.startswith("Lung_Dx-A0001_") and case_id.endswith("_2007-04-04")
    assert case_id != case_id_for_study("Lung_Dx-A0001", "1.2.840.113619.2.55.4", "20070404")
    odd = case_id_for_study("../PAT/1", "1.2", "")
    assert "/" not in odd and odd.endswith("_nodate")


@pytest.mark.parametrize(
    ("values", "binary"),
    [
        (np.array([0, 1, 1], np.uint8), True),
        (np.array([0, 2], np.uint8), False),
        (np.array([0, 1, -1], np.int16), False),
        (np.array([True, False]), True),
        (np.array([0.0, 1.0]), True),
        (np.array([0.0, 0.5]), False),
        (np.array([0.0, np.nan]), False),
        (np.zeros((0, 3), np.float32), True),
    ],
)
def test_is_binary_without_sorting_matches_the_set_of_values(values, binary):
    from PETCTLesionsLib.lesions import is_binary

    assert is_binary(values) is binary
    assert binary == (set(np.unique(values).tolist()) <= {0, 1})


def test_lesion_numbering_equals_itks_relabelling_with_many_equal_sizes():
    import SimpleITK as sitk

    rng = np.random.default_rng(8)
    mask = (rng.random((9, 40, 50)) > 0.93).astype(np.uint8)  # hundreds of lesions, many of one voxel
    labels, count = label_lesions(mask)
    components = sitk.ConnectedComponent(sitk.GetImageFromArray(mask), True)
    expected = sitk.GetArrayFromImage(sitk.RelabelComponent(components, sortByObjectSize=True))
    assert labels.dtype == np.uint16 and count == int(expected.max()) > 200
    np.testing.assert_array_equal(labels, expected)
