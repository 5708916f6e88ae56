"""Evaluation metrics: the autoPET challenge metrics, lesion detection, and VOC box mAP.

autoPET, as the challenge defines them (https://autopet.grand-challenge.org/Evaluation/) and its
evaluation script computes them (https://github.com/lab-midas/autoPET, ``val_script.py``):
- Dice of the foreground over the whole case;
- false-positive volume (FPV, mL): predicted connected components that touch no reference
  voxel; false-negative volume (FNV, mL): reference components that no predicted voxel
  touches. Components are 18-connected by default (the official script's choice; 26 and 6
  are available). With an empty reference, Dice and FNV are NaN and FPV still counts (the
  challenge scores a case without lesions on FPV alone).
Lesion detection, with the same components: a reference lesion is detected when a predicted
voxel overlaps it; a predicted lesion that overlaps no reference voxel is a false positive.
Box mAP@0.5: PASCAL VOC average precision of per-slice boxes (one CT slice is one VOC
"image"), matched exactly as the PASCAL VOC devkit's ``VOCevaldet.m`` does and interpolated as its
``VOCap.m`` (VOC2012 devkit, http://host.robots.ox.ac.uk/pascal/VOC/voc2012/); see
:func:`box_average_precision`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, Hashable, List, Sequence, Tuple

import numpy as np
import SimpleITK as sitk

CONNECTIVITIES = (6, 18, 26)
AUTOPET_CONNECTIVITY = 18


def connected_components(mask: np.ndarray, connectivity: int = AUTOPET_CONNECTIVITY) -> Tuple[np.ndarray, int]:
    """Label the components of a binary [k, j, i] mask: (int32 labels 0..n, n). Order is arbitrary."""
    if connectivity not in CONNECTIVITIES:
        raise ValueError(f"connectivity must be one of {CONNECTIVITIES}, got {connectivity}")
    mask = np.asarray(mask).astype(bool)
    if not mask.any():
        return np.zeros(mask.shape, np.int32), 0
    if connectivity in (6, 26):
        image = sitk.ConnectedComponent(sitk.GetImageFromArray(mask.astype(np.uint8)), connectivity == 26)
        labels = sitk.GetArrayFromImage(image).astype(np.int32)
        return labels, int(labels.max())
    return _components_18(mask)


# The edge neighbours of the 18-neighbourhood, each neighbour pair once (the faces are SimpleITK's).
_EDGE_OFFSETS = ((0, 1, 1), (0, 1, -1), (1, 0, 1), (1, 0, -1), (1, 1, 0), (1, -1, 0))


def _components_18(mask: np.ndarray) -> Tuple[np.ndarray, int]:
    """18-connected components (SimpleITK offers only 6 and 26).

    SimpleITK labels the 6-connected (face) components in C++; components that touch along an
    edge are then merged, a union over the few label pairs that touch rather than over every
    voxel (which took minutes and gigabytes on a whole-body prediction with many false positives).
    """
    faces = sitk.ConnectedComponent(sitk.GetImageFromArray(mask.astype(np.uint8)), False)
    labels = sitk.GetArrayFromImage(faces).astype(np.int32)
    count = int(labels.max())
    touching = [_touching_labels(labels, offset, count) for offset in _EDGE_OFFSETS]
    heads = np.concatenate([pair[0] for pair in touching])
    if heads.size == 0:
        return labels, count
    tails = np.concatenate([pair[1] for pair in touching])
    root = _union_roots(count + 1, heads, tails)  # background 0 touches nothing: it stays 0
    _, numbers = np.unique(root, return_inverse=True)
    return numbers.astype(np.int32)[labels], int(numbers.max())


def _touching_labels(labels: np.ndarray, offset: Tuple[int, int, int], count: int) -> Tuple[np.ndarray, np.ndarray]:
    """Distinct pairs (a, b) of different labels with a voxel of ``a`` next to one of ``b`` at ``offset``."""
    here = tuple(slice(0, -1) if o == 1 else slice(1, None) if o == -1 else slice(None) for o in offset)
    there = tuple(slice(1, None) if o == 1 else slice(0, -1) if o == -1 else slice(None) for o in offset)
    a, b = labels[here], labels[there]
    differ = (a != b) & (a > 0) & (b > 0)
    keys = np.unique(a[differ].astype(np.int64) * (count + 1) + b[differ])
    return keys // (count + 1), keys % (count + 1)


def _union_roots(count: int, heads: np.ndarray, tails: np.ndarray) -> np.ndarray:
    """Smallest node index of each node's component (min-label propagation with pointer jumping)."""
    root = np.arange(count)
    while True:
        smaller = np.minimum(root[heads], root[tails])
        before = root.copy()
        np.minimum.at(root, heads, smaller)
        np.minimum.at(root, tails, smaller)
        while True:  # pointer jumping: follow parents until every node points at a root
            jumped = root[root]
            if np.array_equal(jumped, root):
                break
            root = jumped
        if np.array_equal(root, before):
            return root


@dataclass(frozen=True)
class CaseMetrics:
    dice: float
    fpv_ml: float
    fnv_ml: float
    reference_lesions: int
    detected_lesions: int
    predicted_lesions: int
    false_positive_lesions: int

    @property
    def sensitivity(self) -> float:
        return self.detected_lesions / self.reference_lesions if self.reference_lesions else math.nan


def case_metrics(
    prediction: np.ndarray, reference: np.ndarray, voxel_ml: float, connectivity: int = AUTOPET_CONNECTIVITY
) -> CaseMetrics:
    """autoPET Dice/FPV/FNV and lesion counts for one case (binary masks on one grid)."""
    if prediction.shape != reference.shape:
        raise ValueError(f"prediction {prediction.shape} and reference {reference.shape} are on different grids")
    pred = np.asarray(prediction).astype(bool)
    ref = np.asarray(reference).astype(bool)
    ref_total = int(ref.sum())
    dice = 2.0 * int(np.count_nonzero(pred & ref)) / (int(pred.sum()) + ref_total) if ref_total else math.nan
    pred_labels, pred_count = connected_components(pred, connectivity)
    ref_labels, ref_count = connected_components(ref, connectivity)
    pred_hit = _touched(pred_labels, pred_count, ref)  # predicted components overlapping the reference
    ref_hit = _touched(ref_labels, ref_count, pred)
    pred_sizes = np.bincount(pred_labels.ravel(), minlength=pred_count + 1)[1:]
    ref_sizes = np.bincount(ref_labels.ravel(), minlength=ref_count + 1)[1:]
    return CaseMetrics(
        dice=dice,
        fpv_ml=float(pred_sizes[~pred_hit].sum() * voxel_ml),
        fnv_ml=float(ref_sizes[~ref_hit].sum() * voxel_ml) if ref_total else math.nan,
        reference_lesions=ref_count,
        detected_lesions=int(ref_hit.sum()),
        predicted_lesions=pred_count,
        false_positive_lesions=int((~pred_hit).sum()),
    )


def _touched(labels: np.ndarray, count: int, other: np.ndarray) -> np.ndarray:
    hit = np.zeros(count + 1, bool)
    hit[np.unique(labels[other])] = True
    return hit[1:]


Box = Tuple[float, float, float, float]  # xmin, ymin, xmax, ymax (inclusive pixel indices)


def box_iou(a: Box, b: Box) -> float:
    """IoU of two boxes given as inclusive pixel ranges (VOC convention: width = xmax - xmin + 1)."""
    width = min(a[2], b[2]) - max(a[0], b[0]) + 1
    height = min(a[3], b[3]) - max(a[1], b[1]) + 1
    if width <= 0 or height <= 0:
        return 0.0
    intersection = width * height
    area = (a[2] - a[0] + 1) * (a[3] - a[1] + 1) + (b[2] - b[0] + 1) * (b[3] - b[1] + 1)
    return intersection / (area - intersection)


def box_average_precision(
    predictions: Sequence[Tuple[Hashable, float, Box]],
    references: Dict[Hashable, List[Box]],
    iou_threshold: float = 0.5,
) -> float:
    """VOC AP of (image id, score, box) predictions against reference boxes per image id.

    Matching is the PASCAL VOC devkit's (``VOCcode/VOCevaldet.m``): predictions are taken in
    order of decreasing score (ties in input order, as MATLAB's stable sort); each one is
    compared with ALL reference boxes of its image and takes the one of maximum IoU (the first
    on ties). If that IoU reaches the threshold and that box is still unclaimed, the prediction
    is a true positive and claims it; if the box was already claimed, the prediction is a false
    positive (a duplicate), even when another reference box of the image would also overlap
    enough. Below the threshold, or on an image without reference boxes, it is a false positive.
    Here an image is one CT slice. There are no "difficult" boxes: every reference box counts.

    Threshold: IoU >= ``iou_threshold``, as the MATLAB devkit (``ovmax>=VOCopts.minoverlap``);
    the Python port used by py-faster-rcnn and detectron (``voc_eval.py``) tests ``ovmax >
    ovthresh`` instead. The two differ only for an IoU of exactly 0.5. IoU uses inclusive pixel
    boxes (``+ 1`` on widths), as both do.

    Interpolation: all points, as the devkit since VOC2010 (``VOCap.m``): the area under the
    precision envelope (precision made monotonically decreasing from the right), summed over
    every change of recall; not the VOC2007 11-point average.

    NaN when there are no reference boxes at all.
    """
    total = sum(len(boxes) for boxes in references.values())
    if total == 0:
        return math.nan
    claimed = {image: np.zeros(len(boxes), bool) for image, boxes in references.items()}
    order = sorted(range(len(predictions)), key=lambda n: (-predictions[n][1], n))
    true_positive = np.zeros(len(order))
    for rank, n in enumerate(order):
        image, _, box = predictions[n]
        candidates = references.get(image, [])
        if not candidates:
            continue  # false positive: nothing to find on this slice
        overlaps = [box_iou(box, other) for other in candidates]
        best = int(np.argmax(overlaps))  # among all reference boxes, claimed or not
        if overlaps[best] >= iou_threshold and not claimed[image][best]:
            claimed[image][best] = True
            true_positive[rank] = 1.0
    hits = np.cumsum(true_positive)
    recall = hits / total
    precision = hits / np.arange(1, len(order) + 1)
    # All-point interpolation (VOCap.m): precision envelope, summed over the recall steps.
    recall = np.concatenate([[0.0], recall, [1.0]])
    precision = np.concatenate([[0.0], precision, [0.0]])
    precision = np.maximum.accumulate(precision[::-1])[::-1]
    steps = np.flatnonzero(recall[1:] != recall[:-1])
    return float(np.sum((recall[steps + 1] - recall[steps]) * precision[steps + 1]))


def summarise(cases: Sequence[CaseMetrics]) -> Dict[str, float]:
    """Means over cases (NaN-aware, as the challenge averages), plus pooled lesion sensitivity."""
    reference = sum(c.reference_lesions for c in cases)
    return {
        "cases": float(len(cases)),
        "dice": _nanmean([c.dice for c in cases]),
        "fpv_ml": _nanmean([c.fpv_ml for c in cases]),
        "fnv_ml": _nanmean([c.fnv_ml for c in cases]),
        "lesion_sensitivity": sum(c.detected_lesions for c in cases) / reference if reference else math.nan,
        "false_positive_lesions_per_case": (
            sum(c.false_positive_lesions for c in cases) / len(cases) if cases else math.nan
        ),
    }


def _nanmean(values: Sequence[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return float(np.mean(finite)) if finite else math.nan
