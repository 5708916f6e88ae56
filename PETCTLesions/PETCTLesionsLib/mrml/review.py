"""Lesion review in the scene: the lesion table, accept / reject / delete, class, jump to a lesion, add a box.

The table is measured from the segments as they are now (after any Segment Editor work),
never from numbers stored at detection time, so it always describes what will be exported.
Review decisions live on the segments as tags, saved with the scene:

- ``PETCTLesions.status``: "accepted" or "rejected" (absent: not reviewed yet), or "added" for a
  lesion the reader added by a click (``mrml/lesion_edits.py``; kept and exported like an accepted
  one until accepted or rejected), or "imported" for a lesion read from the annotator's files (VOC boxes
  or an nnU-Net label, ``mrml/annotations.py``, which also keeps what was imported to say what changed
  since). A rejected lesion is hidden with its boxes and left out of every
  export, but kept so the decision can be undone; deleting removes the segment and its boxes.
- ``PETCTLesions.class``: the VOC class (A, B, E or G) of the lesion's boxes.

Box markups belong to a lesion through their ``PETCTLesions.segmentID`` attribute.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterator, List, Optional, Set, Tuple

import numpy as np
import slicer
import vtk

from ..errors import InputError
from ..formats.voc import VALID_CLASSES, VocBox, histology_class
from ..geometry import lps_to_ras
from ..lesions import slice_boxes
from ..measurements import LesionMeasurement, measure_lesions
from .boxes import CLASS_ATTRIBUTE, LESION_ATTRIBUTE, SEGMENT_ID_ATTRIBUTE, add_box_node, colour_box, roi_nodes
from .segmentations import lesion_map_on, segment_ids, segment_on
from .study_nodes import is_suv_bw
from .volumes import grid_from_volume_node, volume_node_from_image

STATUS_TAG = "PETCTLesions.status"
CLASS_TAG = "PETCTLesions.class"
ACCEPTED, REJECTED = "accepted", "rejected"
ADDED = "added"  # added by the reader with a click (lesion_edits), not by detection
IMPORTED = "imported"  # read from the annotator's VOC or nnU-Net files (mrml/annotations.py)
NEW_BOX_SIZE_MM = 30.0  # a box added where no lesion is drawn: about a typical nodule's reach


@dataclass(frozen=True)
class LesionRow:
    """One row of the lesion table."""

    segment_id: str
    name: str
    class_name: str  # A, B, E, G or "" (unknown)
    status: str  # "accepted", "rejected", "added" (by a click), "imported" (from files) or "" (not reviewed)
    voxels: int
    mtv_ml: float
    suv_max: float
    suv_mean: float
    suv_peak: float
    tlg: float
    slices: Optional[Tuple[int, int]]  # first and last axial slice it crosses, 1-based (CT slices when a CT is given)
    centre_ras: Optional[Tuple[float, float, float]]  # where "go to lesion" centres the views

    @property
    def slices_text(self) -> str:
        if self.slices is None:
            return ""
        first, last = self.slices
        return str(first) if first == last else f"{first}-{last}"


def segment_tag(segment: slicer.vtkSegment, name: str) -> str:
    """The value of a segment's tag ("" when it has none)."""
    value = vtk.reference("")
    return str(value) if segment.GetTag(name, value) else ""


def lesion_rows(
    segmentation: slicer.vtkMRMLSegmentationNode,
    pet_node: slicer.vtkMRMLScalarVolumeNode,
    ct_node: Optional[slicer.vtkMRMLScalarVolumeNode] = None,
    patient_id: str = "",
) -> List[LesionRow]:
    """Every segment measured on the PET (SUVbw) as it is now, in segment order.

    The class is the segment's own, else the histology letter of ``patient_id`` (Lung-PET-CT-Dx).
    """
    if not is_suv_bw(pet_node):
        raise InputError(f"PET volume {pet_node.GetName()!r} is not in SUVbw; load it through the module first")
    ids = segment_ids(segmentation)
    lesion_map, _ = lesion_map_on(segmentation, pet_node)
    pet_grid = grid_from_volume_node(pet_node)
    pet_suv = slicer.util.arrayFromVolume(pet_node)
    measured = {m.label: m for m in measure_lesions(lesion_map, len(ids), pet_suv, pet_grid)}
    default_class = histology_class(patient_id) or ""
    scene_boxes = [box for box in roi_nodes(segmentation.GetScene()) if box.GetAttribute(SEGMENT_ID_ATTRIBUTE)]

    def boxes_of(segment_id: str) -> List[slicer.vtkMRMLMarkupsROINode]:
        return [box for box in scene_boxes if box.GetAttribute(SEGMENT_ID_ATTRIBUTE) == segment_id]

    # PET voxel -> CT voxel, to give each lesion's slices as CT slice numbers.
    pet_to_ct_ijk = None
    if ct_node is not None:
        pet_to_ct_ijk = np.linalg.inv(grid_from_volume_node(ct_node).ijk_to_ras()) @ pet_grid.ijk_to_ras()
    rows = []
    for number, segment_id in enumerate(ids, start=1):
        segment = segmentation.GetSegmentation().GetSegment(segment_id)
        lesion = measured.get(number)
        rows.append(
            LesionRow(
                segment_id=segment_id,
                name=segment.GetName(),
                class_name=segment_tag(segment, CLASS_TAG) or default_class,
                status=segment_tag(segment, STATUS_TAG),
                voxels=lesion.voxels if lesion else 0,
                mtv_ml=lesion.mtv_ml if lesion else 0.0,
                suv_max=lesion.suv_max if lesion else 0.0,
                suv_mean=lesion.suv_mean if lesion else 0.0,
                suv_peak=lesion.suv_peak if lesion else 0.0,
                tlg=lesion.tlg if lesion else 0.0,
                slices=_slice_range(lesion, pet_to_ct_ijk, ct_node)
                if lesion
                else _box_slices(boxes_of(segment_id), ct_node),
                centre_ras=lps_to_ras(lesion.centroid_lps) if lesion else _box_centre(boxes_of(segment_id)),
            )
        )
    return rows


def _box_centres(boxes: List[slicer.vtkMRMLMarkupsROINode]) -> np.ndarray:
    centres = np.zeros((len(boxes), 3))
    for n, box in enumerate(boxes):
        centre = [0.0, 0.0, 0.0]
        box.GetCenterWorld(centre)
        centres[n] = centre
    return centres


def _box_slices(
    boxes: List[slicer.vtkMRMLMarkupsROINode], ct_node: Optional[slicer.vtkMRMLScalarVolumeNode]
) -> Optional[Tuple[int, int]]:
    """The CT slices (1-based) under the boxes of a lesion without voxels (one imported from VOC boxes)."""
    if not boxes or ct_node is None:
        return None
    ras_to_ijk = np.linalg.inv(grid_from_volume_node(ct_node).ijk_to_ras())
    ks = [int(np.floor((ras_to_ijk @ np.array([*centre, 1.0]))[2] + 0.5)) + 1 for centre in _box_centres(boxes)]
    return (min(ks), max(ks))


def _box_centre(boxes: List[slicer.vtkMRMLMarkupsROINode]) -> Optional[Tuple[float, float, float]]:
    """Where "go to lesion" goes for a lesion without voxels: the centre of its boxes."""
    if not boxes:
        return None
    x, y, z = _box_centres(boxes).mean(axis=0)
    return (float(x), float(y), float(z))


def _slice_range(
    lesion: LesionMeasurement,
    pet_to_ct_ijk: Optional[np.ndarray],
    ct_node: Optional[slicer.vtkMRMLScalarVolumeNode],
) -> Tuple[int, int]:
    (k0, k1), (j0, j1), (i0, i1) = lesion.bbox_kji
    if pet_to_ct_ijk is None:
        return (k0 + 1, k1 + 1)
    # The lesion's first and last PET slice centres, found on the CT's slices.
    centre_ij = ((i0 + i1) / 2.0, (j0 + j1) / 2.0)
    ks = [(pet_to_ct_ijk @ np.array([*centre_ij, k, 1.0]))[2] for k in (k0, k1)]
    last_slice = ct_node.GetImageData().GetDimensions()[2] - 1
    first, last = (int(np.clip(np.floor(k + 0.5), 0, last_slice)) + 1 for k in sorted(ks))
    return (first, last)


def set_status(segmentation: slicer.vtkMRMLSegmentationNode, segment_id: str, status: str) -> None:
    """Accept or reject a lesion ("" clears the decision); a rejected lesion and its boxes are hidden."""
    if status not in (ACCEPTED, REJECTED, ""):
        raise ValueError(f"review status must be {ACCEPTED!r}, {REJECTED!r} or '' (got {status!r})")
    segment = _segment(segmentation, segment_id)
    if status:
        segment.SetTag(STATUS_TAG, status)
    else:
        segment.RemoveTag(STATUS_TAG)
    visible = status != REJECTED
    display = segmentation.GetDisplayNode()
    if display is not None:
        display.SetSegmentVisibility(segment_id, visible)
    for box in boxes_of_segment(segmentation, segment_id):
        box.GetDisplayNode().SetVisibility(visible)


def set_class(segmentation: slicer.vtkMRMLSegmentationNode, segment_id: str, class_name: str) -> None:
    """The lesion's VOC class; its existing boxes take it too."""
    if class_name not in VALID_CLASSES:
        raise ValueError(f"lesion class must be one of {', '.join(VALID_CLASSES)} (got {class_name!r})")
    _segment(segmentation, segment_id).SetTag(CLASS_TAG, class_name)
    for box in boxes_of_segment(segmentation, segment_id):
        box.SetAttribute(CLASS_ATTRIBUTE, class_name)


def rejected_segment_ids(segmentation: slicer.vtkMRMLSegmentationNode) -> Set[str]:
    content = segmentation.GetSegmentation()
    return {sid for sid in segment_ids(segmentation) if segment_tag(content.GetSegment(sid), STATUS_TAG) == REJECTED}


@contextlib.contextmanager
def without_rejected(segmentation: slicer.vtkMRMLSegmentationNode) -> Iterator[slicer.vtkMRMLSegmentationNode]:
    """The segmentation with the rejected lesions left out: itself when none is, else a temporary copy."""
    rejected = rejected_segment_ids(segmentation)
    if not rejected:
        yield segmentation
        return
    scene = segmentation.GetScene()
    copy = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", f"{segmentation.GetName()} (kept lesions)")
    try:
        copy.GetSegmentation().DeepCopy(segmentation.GetSegmentation())
        for segment_id in rejected:
            copy.GetSegmentation().RemoveSegment(segment_id)
        yield copy
    finally:
        scene.RemoveNode(copy)


def delete_lesion(segmentation: slicer.vtkMRMLSegmentationNode, segment_id: str) -> int:
    """Remove the lesion's segment and its boxes; returns how many boxes went with it."""
    _segment(segmentation, segment_id)
    boxes = boxes_of_segment(segmentation, segment_id)
    for box in boxes:
        box.GetScene().RemoveNode(box)
    segmentation.GetSegmentation().RemoveSegment(segment_id)
    return len(boxes)


def boxes_of_segment(
    segmentation: slicer.vtkMRMLSegmentationNode, segment_id: str
) -> List[slicer.vtkMRMLMarkupsROINode]:
    return [box for box in roi_nodes(segmentation.GetScene()) if box.GetAttribute(SEGMENT_ID_ATTRIBUTE) == segment_id]


def _segment(segmentation: slicer.vtkMRMLSegmentationNode, segment_id: str) -> slicer.vtkSegment:
    segment = segmentation.GetSegmentation().GetSegment(segment_id)
    if segment is None:
        raise KeyError(f"segmentation {segmentation.GetName()!r} has no segment {segment_id!r}")
    return segment


def centre_views_on(scene: slicer.vtkMRMLScene, ras: Tuple[float, float, float]) -> None:
    """Every slice view moved to go through ``ras`` and centred on it (as clicking a lesion row does)."""
    slicer.vtkMRMLSliceNode.JumpAllSlices(scene, *map(float, ras), slicer.vtkMRMLSliceNode.CenteredJumpSlice)


def view_centre_ras(slice_node: slicer.vtkMRMLSliceNode) -> Tuple[float, float, float]:
    """The RAS point at the centre of a slice view (panning included): where a new box goes."""
    width, height, _ = slice_node.GetDimensions()
    centre = slice_node.GetXYToRAS().MultiplyPoint((width / 2.0, height / 2.0, 0.0, 1.0))
    return (centre[0], centre[1], centre[2])


def add_box_on_slice(
    ct_node: slicer.vtkMRMLScalarVolumeNode,
    ras: Tuple[float, float, float],
    class_name: str,
    segmentation: Optional[slicer.vtkMRMLSegmentationNode] = None,
    segment_id: Optional[str] = None,
) -> slicer.vtkMRMLMarkupsROINode:
    """A VOC box on the CT slice through ``ras`` (the slice the user looks at).

    With a lesion chosen, the box is the lesion's tight box on that slice when the lesion
    crosses it; otherwise a square of :data:`NEW_BOX_SIZE_MM` centred on ``ras`` for the user
    to drag to the lesion's edges.
    """
    if class_name not in VALID_CLASSES:
        raise ValueError(f"box class must be one of {', '.join(VALID_CLASSES)} (got {class_name!r})")
    grid = grid_from_volume_node(ct_node)
    ijk = (np.linalg.inv(grid.ijk_to_ras()) @ np.array([*ras, 1.0]))[:3]
    k = int(np.floor(ijk[2] + 0.5))
    if not 0 <= k < grid.size[2]:
        raise InputError(f"the point {tuple(round(v, 1) for v in ras)} (RAS) is outside CT {ct_node.GetName()!r}")
    box = None
    if segmentation is not None and segment_id:
        box = _segment_box_on_slice(segmentation, segment_id, ct_node, k)
    if box is None:
        half = (NEW_BOX_SIZE_MM / grid.spacing[0] / 2.0, NEW_BOX_SIZE_MM / grid.spacing[1] / 2.0)
        c0, c1 = (int(np.clip(np.floor(ijk[0] + s * half[0] + 0.5), 0, grid.size[0] - 1)) for s in (-1, 1))
        r0, r1 = (int(np.clip(np.floor(ijk[1] + s * half[1] + 0.5), 0, grid.size[1] - 1)) for s in (-1, 1))
        box = (c0, r0, c1, r1)
    lesion = None
    if segmentation is not None and segment_id:
        numbers = [n.GetAttribute(LESION_ATTRIBUTE) for n in boxes_of_segment(segmentation, segment_id)]
        lesion = next((int(n) for n in numbers if n), None)  # beside the lesion's other boxes
    node = add_box_node(ct_node, k, VocBox.from_pixel_ranges(class_name, *box), lesion)
    if segmentation is not None and segment_id:
        node.SetAttribute(SEGMENT_ID_ATTRIBUTE, segment_id)
        colour_box(node, _segment(segmentation, segment_id).GetColor())
    return node


def _segment_box_on_slice(
    segmentation: slicer.vtkMRMLSegmentationNode, segment_id: str, ct_node: slicer.vtkMRMLScalarVolumeNode, k: int
) -> Optional[Tuple[int, int, int, int]]:
    """The segment's tight box on CT slice ``k``, rasterised by Slicer: that segment on that slice
    only (all segments on the whole CT grid take seconds on a whole-body study)."""
    grid = grid_from_volume_node(ct_node)
    one_slice = grid.sub_grid((0, 0, k), (grid.size[0], grid.size[1], k + 1))
    reference = volume_node_from_image(one_slice.to_sitk(np.zeros(one_slice.shape, np.uint8)), "slice reference")
    try:
        mask = segment_on(segmentation, segment_id, reference)
    finally:
        reference.GetScene().RemoveNode(reference)
    boxes = slice_boxes(mask)
    if not boxes:
        return None
    return (boxes[0].c0, boxes[0].r0, boxes[0].c1, boxes[0].r1)
