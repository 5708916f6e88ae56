"""Lesion measurements, the autoPET metrics, lesion detection counts and VOC box mAP."""

from __future__ import annotations

import math
from collections import deque

import numpy as np
import pytest

from PETCTLesionsLib import metrics
from PETCTLesionsLib.detection import lesions_from_probability
from PETCTLesionsLib.geometry import Grid
from PETCTLesionsLib.measurements import PEAK_SPHERE_RADIUS_MM, measure_lesions, sphere_offsets


def test_measurements_of_a_known_lesion():
    grid = Grid((20, 20, 20), (2.0, 2.0, 3.0), (-10.0, 5.0, 100.0))
    pet = np.ones(grid.shape, np.float32)
    lesion_map = np.zeros(grid.shape, np.uint16)
    lesion_map[5:8, 4:9, 10:14] = 1  # 3 x 5 x 4 = 60 voxels
    pet[5:8, 4:9, 10:14] = 4.0
    pet[6, 6, 12] = 10.0
    (lesion,) = measure_lesions(lesion_map, 1, pet, grid)
    assert lesion.voxels == 60
    assert lesion.mtv_ml == pytest.approx(60 * 12 / 1000)
    assert lesion.suv_max == pytest.approx(10.0)
    assert lesion.suv_mean == pytest.approx((59 * 4 + 10) / 60)
    assert lesion.tlg == pytest.approx(lesion.suv_mean * lesion.mtv_ml)
    assert lesion.bbox_kji == ((5, 7), (4, 8), (10, 13))
    assert lesion.centroid_lps == pytest.approx((-10 + 11.5 * 2, 5 + 6 * 2, 100 + 6 * 3))
    # SUVpeak: brute force over spheres centred on each lesion voxel (voxel centres within 6.2 mm).
    offsets = sphere_offsets(grid.spacing, PEAK_SPHERE_RADIUS_MM)
    best = 0.0
    for k, j, i in np.argwhere(lesion_map):
        values = [
            pet[k + a, j + b, i + c] for a, b, c in offsets if 0 <= k + a < 20 and 0 <= j + b < 20 and 0 <= i + c < 20
        ]
        best = max(best, float(np.mean(values)))
    assert lesion.suv_peak == pytest.approx(best)
    assert 1.0 < lesion.suv_peak < lesion.suv_mean  # a 0.72 mL lesion: the 1 mL sphere reaches background


def test_the_1ml_sphere_holds_about_1ml():
    offsets = sphere_offsets((1.0, 1.0, 1.0), PEAK_SPHERE_RADIUS_MM)
    assert len(offsets) / 1000.0 == pytest.approx(1.0, rel=0.05)


def test_minimum_volume_drops_small_lesions_and_keeps_numbering_largest_first():
    probability = np.zeros((10, 10, 10), np.float32)
    probability[1:4, 1:4, 1:4] = 0.9  # 27 voxels
    probability[6:8, 6:8, 6:8] = 0.7  # 8 voxels
    probability[0, 9, 9] = 0.6  # 1 voxel
    lesion_map, count = lesions_from_probability(probability, 0.5, 0.0, voxel_ml=0.1)
    assert count == 3 and (lesion_map == 1).sum() == 27 and (lesion_map == 3).sum() == 1
    lesion_map, count = lesions_from_probability(probability, 0.5, 0.8, voxel_ml=0.1)
    assert count == 2 and set(np.unique(lesion_map)) == {0, 1, 2}
    with pytest.raises(ValueError, match="threshold"):
        lesions_from_probability(probability, 1.0)


def _bfs_components(mask: np.ndarray, offsets) -> np.ndarray:
    """Labels 1..n by breadth-first search, the slow obvious way."""
    seen = np.zeros(mask.shape, np.int32)
    count = 0
    for start in map(tuple, np.argwhere(mask)):
        if seen[start]:
            continue
        count += 1
        queue = deque([start])
        seen[start] = count
        while queue:
            point = queue.popleft()
            for offset in offsets:
                other = tuple(p + o for p, o in zip(point, offset))
                if all(0 <= v < n for v, n in zip(other, mask.shape)) and mask[other] and not seen[other]:
                    seen[other] = count
                    queue.append(other)
    return seen


def test_18_connectivity_joins_edges_not_corners_and_matches_a_brute_force_count():
    corner = np.zeros((3, 3, 3), bool)
    corner[0, 0, 0] = corner[1, 1, 1] = True
    edge = np.zeros((3, 3, 3), bool)
    edge[0, 0, 0] = edge[0, 1, 1] = True
    assert metrics.connected_components(corner, 18)[1] == 2
    assert metrics.connected_components(corner, 26)[1] == 1
    assert metrics.connected_components(edge, 18)[1] == 1
    assert metrics.connected_components(edge, 6)[1] == 2
    all_18 = [
        (a, b, c) for a in (-1, 0, 1) for b in (-1, 0, 1) for c in (-1, 0, 1) if 0 < abs(a) + abs(b) + abs(c) <= 2
    ]
    rng = np.random.default_rng(5)
    for fraction in (0.15, 0.25, 0.3, 0.35, 0.45):  # sparse to nearly percolating
        mask = rng.random((12, 13, 14)) < fraction
        labels, count = metrics.connected_components(mask, 18)
        expected = _bfs_components(mask, all_18)
        assert count == expected.max()
        assert set(np.unique(labels[mask])) == set(range(1, count + 1)) and not labels[~mask].any()
        # The same partition of the voxels, not just the same number of parts.
        assert len(set(zip(labels[mask].tolist(), expected[mask].tolist()))) == count


def test_autopet_metrics_on_known_masks():
    reference = np.zeros((20, 20, 20), bool)
    prediction = np.zeros_like(reference)
    reference[2:6, 2:6, 2:6] = True  # 64 voxels, found (half of it predicted)
    prediction[2:4, 2:6, 2:6] = True  # 32 voxels
    reference[10:12, 10:12, 10:12] = True  # 8 voxels, missed
    prediction[15:18, 15:18, 15:18] = True  # 27 voxels, false positive
    result = metrics.case_metrics(prediction, reference, voxel_ml=0.5)
    assert result.dice == pytest.approx(2 * 32 / (59 + 72))
    assert result.fpv_ml == pytest.approx(27 * 0.5)
    assert result.fnv_ml == pytest.approx(8 * 0.5)
    assert (result.reference_lesions, result.detected_lesions) == (2, 1)
    assert (result.predicted_lesions, result.false_positive_lesions) == (2, 1)
    assert result.sensitivity == 0.5
    empty = metrics.case_metrics(prediction, np.zeros_like(reference), voxel_ml=0.5)
    assert math.isnan(empty.dice) and math.isnan(empty.fnv_ml) and empty.fpv_ml == pytest.approx(59 * 0.5)


def test_box_average_precision_follows_voc_all_point_interpolation():
    references = {"a": [(0, 0, 9, 9)], "b": [(10, 10, 19, 19)]}
    perfect = [("a", 0.9, (0, 0, 9, 9)), ("b", 0.8, (10, 10, 19, 19))]
    assert metrics.box_average_precision(perfect, references) == pytest.approx(1.0)
    # A confident false positive first: precision 0 then 1/2 at recall 1/2, then 2/3 at recall 1.
    with_fp = [("a", 0.95, (50, 50, 60, 60))] + perfect
    assert metrics.box_average_precision(with_fp, references) == pytest.approx(0.5 * 2 / 3 + 0.5 * 2 / 3)
    # A duplicate of a matched box is a false positive; a box with IoU < 0.5 does not match.
    assert metrics.box_iou((0, 0, 9, 9), (0, 0, 9, 4)) == pytest.approx(0.5)
    assert metrics.box_iou((0, 0, 9, 9), (5, 5, 14, 14)) == pytest.approx(25 / 175)
    half = [("a", 0.9, (0, 0, 9, 9)), ("a", 0.8, (0, 0, 9, 9))]
    assert metrics.box_average_precision(half, references) == pytest.approx(0.5)
    assert math.isnan(metrics.box_average_precision(perfect, {}))


def test_box_average_precision_matches_the_voc_devkit_on_a_duplicate_next_to_a_second_box():
    # Two overlapping reference boxes on one slice (10x10 pixels each, inclusive ranges).
    references = {"slice": [(0, 0, 9, 9), (2, 0, 11, 9)]}
    predictions = [("slice", 0.9, (0, 0, 9, 9)), ("slice", 0.8, (0, 0, 10, 9))]
    # Second prediction (11x10 = 110 px): against ref 0, intersection 10x10 = 100, union
    # 110 + 100 - 100 = 110, IoU 10/11; against ref 1, intersection cols 2..10 = 9x10 = 90,
    # union 110 + 100 - 90 = 120, IoU 0.75.
    assert metrics.box_iou(predictions[1][2], references["slice"][0]) == pytest.approx(10 / 11)
    assert metrics.box_iou(predictions[1][2], references["slice"][1]) == pytest.approx(0.75)
    # Devkit: prediction 1 (0.9) takes ref 0 (IoU 1): TP. Prediction 2 (0.8): its best box of
    # ALL references is ref 0 (10/11), already claimed: FP (a duplicate), although ref 1 would
    # pass 0.5. tp = [1, 0], recall = [1/2, 1/2], precision = [1, 1/2]; envelope over recall
    # 0 -> 1/2 is 1, nothing from 1/2 -> 1: AP = 1/2 * 1 = 0.5 (claiming ref 1 would give 1.0).
    assert metrics.box_average_precision(predictions, references) == pytest.approx(0.5)
    # Swapped scores: (0,0,10,9) first takes ref 0 (10/11); (0,0,9,9) then finds ref 0 (IoU 1)
    # claimed: FP again, AP 0.5.
    swapped = [("slice", 0.8, (0, 0, 9, 9)), ("slice", 0.9, (0, 0, 10, 9))]
    assert metrics.box_average_precision(swapped, references) == pytest.approx(0.5)


def test_box_average_precision_threshold_is_inclusive_and_interpolation_is_all_points():
    references = {"a": [(0, 0, 9, 9)]}
    # IoU exactly 0.5 (the MATLAB devkit's ovmax >= minoverlap) is a match.
    assert metrics.box_average_precision([("a", 1.0, (0, 0, 9, 4))], references) == pytest.approx(1.0)
    assert metrics.box_average_precision([("a", 1.0, (0, 0, 9, 3))], references) == 0.0  # IoU 0.4
    # All points, not VOC2007's 11 points.
    two = {"a": [(0, 0, 9, 9)], "b": [(20, 20, 29, 29)]}
    ranked = [("a", 0.9, (0, 0, 9, 9)), ("c", 0.8, (0, 0, 9, 9)), ("c", 0.7, (0, 0, 9, 9))]
    # tp = [1, 0, 0]: recall 1/2 at precision 1, never reaches 1. All points: 1/2 * 1 = 0.5;
    # the 11-point average would be 6/11 (recall thresholds 0, 0.1, ..., 0.5 at precision 1).
    assert metrics.box_average_precision(ranked, two) == pytest.approx(0.5)
