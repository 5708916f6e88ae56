"""Detected lesions moved from the PET grid to the CT grid: traced at CT resolution from the
model's probability (the VOC boxes and the pictures), or nearest neighbour without it."""

from __future__ import annotations

import numpy as np
import pytest

from PETCTLesionsLib import detection, evaluation
from PETCTLesionsLib.geometry import Grid
from PETCTLesionsLib.lesions import SliceBox, slice_boxes

PET = Grid((24, 24, 20), (4.0, 4.0, 3.0), (0.0, 0.0, 0.0))
CT = Grid((96, 96, 24), (1.0, 1.0, 2.5), (-1.5, -1.5, 0.0))
CENTRE = np.array([48.3, 47.6, 30.2])  # mm, LPS
RADIUS = 9.0


def _distance_mm(grid: Grid, centre=CENTRE) -> np.ndarray:
    x, y, z = grid.axis_coordinates()
    return np.sqrt(
        (x[None, None, :] - centre[0]) ** 2 + (y[None, :, None] - centre[1]) ** 2 + (z[:, None, None] - centre[2]) ** 2
    )


def _ball_probability(grid: Grid) -> np.ndarray:
    """A smooth probability whose 0.5 level is the sphere of RADIUS around CENTRE."""
    return (1.0 / (1.0 + np.exp((_distance_mm(grid) - RADIUS) / 1.5))).astype(np.float32)


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * np.count_nonzero(a & b) / (np.count_nonzero(a) + np.count_nonzero(b))


def test_a_lesion_traced_from_the_probability_follows_its_outline_at_ct_resolution():
    probability = _ball_probability(PET)
    lesion_map, count = detection.lesions_from_probability(probability, 0.5)
    assert count == 1
    truth = _distance_mm(CT) <= RADIUS  # the ball on the CT voxels
    traced, boxes = detection.lesions_on_ct(lesion_map, PET, CT, probability, 0.5)
    nearest, nearest_boxes = detection.lesions_on_ct(lesion_map, PET, CT)
    assert _dice(traced > 0, truth) > 0.95 > _dice(nearest > 0, truth)
    # The boxes are the traced map's, each with the highest probability on its slice as score.
    assert [(b.lesion, b.k, b.c0, b.r0, b.c1, b.r1) for b in boxes] == [
        (b.lesion, b.k, b.c0, b.r0, b.c1, b.r1) for b in slice_boxes(traced)
    ]
    assert all(nearest_box.score is None for nearest_box in nearest_boxes)
    # On the slice through the centre the box is the ball's width within a CT pixel.
    k_centre = int(round((CENTRE[2] - CT.origin[2]) / CT.spacing[2]))
    (middle,) = [b for b in boxes if b.k == k_centre]
    true_columns = np.nonzero(truth[k_centre].any(axis=0))[0]
    assert abs(middle.c0 - true_columns[0]) <= 1 and abs(middle.c1 - true_columns[-1]) <= 1
    assert middle.score == pytest.approx(float(_ball_probability(CT)[k_centre].max()), abs=0.02)
    # The slices the lesion crosses are the ball's, and its end slices score below its middle.
    assert [b.k for b in boxes] == [int(k) for k in np.nonzero(truth.any(axis=(1, 2)))[0]]
    assert boxes[0].score < middle.score and boxes[-1].score < middle.score
    assert all(0.5 <= b.score <= 1.0 for b in boxes)


@pytest.mark.parametrize("threshold", [0.6, 0.45])
def test_the_traced_lesions_hold_exactly_the_voxels_of_the_lesion_map_whatever_the_rounding(threshold):
    """Where a CT voxel centre is a PET voxel centre, the traced map equals the lesion map: with a
    float16 probability (a detection worker's), values at the threshold, and a dropped component."""
    k, j, i = np.indices(PET.shape, dtype=np.float32)
    probability = np.zeros(PET.shape, np.float32)
    for centre, sigma, peak in (((6, 6, 6), 2.5, 0.95), ((13, 16, 15), 1.7, 0.8), ((15, 5, 19), 0.6, 0.7)):
        blob = peak * np.exp(-((k - centre[0]) ** 2 + (j - centre[1]) ** 2 + (i - centre[2]) ** 2) / (2 * sigma**2))
        probability = np.maximum(probability, blob)
    # At the first lesion's edge: a lesion voxel at the threshold, then a background voxel just
    # below it. In float16 neither threshold is exact: 0.45 rounds down, 0.6 - 1e-5 rounds up.
    edge = 6 + int(np.count_nonzero(probability[6, 6, 7:] >= threshold))
    probability[6, 6, edge] = threshold
    probability[6, 6, edge + 1] = threshold - 1e-5
    pet = Grid(PET.size, PET.spacing, (10.0, -20.0, 5.0))
    lesion_map, count = detection.lesions_from_probability(probability, threshold, 0.2, pet.voxel_volume_ml)
    assert count == 2 and ((probability >= threshold) & (lesion_map == 0)).any()  # the third blob is too small
    assert lesion_map[6, 6, edge] == 1 and lesion_map[6, 6, edge + 1] == 0
    half = Grid((47, 47, 39), (2.0, 2.0, 1.5), pet.origin)  # every PET voxel centre is a CT voxel centre
    traced, boxes = detection.lesions_on_ct(lesion_map, pet, half, probability.astype(np.float16), threshold)
    np.testing.assert_array_equal(traced[::2, ::2, ::2], lesion_map)
    assert {b.lesion for b in boxes} == {1, 2}


def test_a_lesion_smaller_than_the_ct_voxels_keeps_the_footprint_of_its_pet_voxel():
    probability = np.full(PET.shape, 0.1, np.float32)
    probability[10, 12, 12] = 0.55  # the 0.5 level is a 0.4 mm ball: between the CT voxel centres
    lesion_map, _ = detection.lesions_from_probability(probability, 0.5)
    shifted_ct = Grid(CT.size, CT.spacing, (-1.0, -1.0, 1.25))
    traced, boxes = detection.lesions_on_ct(lesion_map, PET, shifted_ct, probability, 0.5)
    nearest, _ = detection.lesions_on_ct(lesion_map, PET, shifted_ct)
    np.testing.assert_array_equal(traced, nearest)
    assert boxes and all(b.lesion == 1 and b.score < 0.5 for b in boxes)


def test_lesions_outside_the_ct_field_of_view_have_no_boxes_and_two_lesions_never_mix():
    probability = np.zeros(PET.shape, np.float32)
    probability[10, 5:9, 5:9] = 0.9  # lesion inside the CT
    probability[10, 5:9, 10:14] = 0.8  # a second one, one voxel apart
    probability[10, 20:23, 20:23] = 0.95  # beyond the small CT below
    lesion_map, count = detection.lesions_from_probability(probability, 0.5)
    assert count == 3
    small_ct = Grid((60, 60, 24), (1.0, 1.0, 2.5), (0.0, 0.0, 0.0))
    traced, boxes = detection.lesions_on_ct(lesion_map, PET, small_ct, probability, 0.5)
    on_ct = {b.lesion for b in boxes}
    far = int(lesion_map[10, 21, 21])
    assert far not in on_ct and len(on_ct) == 2
    first, second = sorted(on_ct)
    columns = [np.nonzero((traced == n).any(axis=(0, 1)))[0] for n in (first, second)]
    assert columns[0][-1] < columns[1][0] or columns[1][-1] < columns[0][0]  # apart, as on the PET


def test_the_box_ap_ranks_boxes_by_their_own_score_before_their_lesions():
    reference = [SliceBox(1, 0, 10, 10, 19, 19)]
    right, wrong = SliceBox(1, 0, 10, 10, 19, 19, score=0.9), SliceBox(1, 0, 40, 40, 49, 49, score=0.3)
    ranked = evaluation.Evaluation()
    ranked.add("case", np.ones((1, 2, 2)), np.ones((1, 2, 2)), 1.0, [wrong, right], reference, {1: 0.5})
    assert ranked.summary()["box_map50"] == pytest.approx(1.0)
    unscored = evaluation.Evaluation()
    plain = [SliceBox(1, 0, 40, 40, 49, 49), SliceBox(1, 0, 10, 10, 19, 19)]
    unscored.add("case", np.ones((1, 2, 2)), np.ones((1, 2, 2)), 1.0, plain, reference, {1: 0.5})
    assert unscored.summary()["box_map50"] == pytest.approx(0.5)  # equal lesion scores: listed order
