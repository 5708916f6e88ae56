"""Detections into the scene: one segment per detected lesion and its boxes on the CT slices.

The user's own work is never lost: detected lesions are added to the chosen segmentation
next to the segments already there (new names continue the "Lesion <n>" numbering), and a
:class:`SegmentationSnapshot` of the segmentation is taken first so the whole addition can be
undone in one step. Lesion measurements are kept on each segment as tags (``PETCTLesions.*``),
so the module's lesion table reads them back from the scene.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import numpy as np
import SimpleITK as sitk
import slicer
import vtk

from ..detection import Detection, ct_slice_boxes
from ..errors import InputError
from ..formats.voc import VocBox, histology_class
from ..geometry import Grid
from .boxes import SEGMENT_ID_ATTRIBUTE, add_lesion_boxes, colour_box
from .segmentations import SEGMENT_NAME, segment_ids, segmentation_from_mask
from .study_nodes import is_suv_bw, patient_id_of, slice_sop_instance_uids, study_images
from .volumes import grid_from_volume_node

MEASUREMENT_TAGS = ("mtv_ml", "suv_max", "suv_mean", "suv_peak", "tlg", "score", "probability_mean")
TAG_PREFIX = "PETCTLesions."
DETECTION_FILL_OPACITY = 0.15
_LESION_NUMBER = re.compile(r"^Lesion (\d+)$")


class SegmentationSnapshot:
    """A copy of a segmentation's segments, to put back with :meth:`restore` (one-step undo)."""

    def __init__(self, segmentation_node: slicer.vtkMRMLSegmentationNode):
        self.node = segmentation_node
        self.copy = slicer.vtkSegmentation()
        self.copy.DeepCopy(segmentation_node.GetSegmentation())

    def restore(self) -> None:
        self.node.GetSegmentation().DeepCopy(self.copy)
        self.node.Modified()


@dataclass
class DetectionNodes:
    segmentation: slicer.vtkMRMLSegmentationNode
    segment_ids: List[str]  # the detected lesions' segments, lesion 1 first
    boxes: List[slicer.vtkMRMLMarkupsROINode] = field(default_factory=list)
    snapshot: Optional[SegmentationSnapshot] = None  # state before the detections were added
    notes: List[str] = field(default_factory=list)  # what was not made, and why


def undo_detection(nodes: DetectionNodes) -> None:
    """Take one detection back: its boxes removed, and the segmentation as it was before (a
    segmentation the detection created is removed; the user's own segments are never touched)."""
    scene = nodes.segmentation.GetScene()
    for box in nodes.boxes:
        if box.GetScene() is not None:  # the user may have deleted it already
            scene.RemoveNode(box)
    if nodes.snapshot is not None:
        nodes.snapshot.restore()
    else:
        scene.RemoveNode(nodes.segmentation)


def detection_inputs(
    ct_node: slicer.vtkMRMLScalarVolumeNode, pet_node: slicer.vtkMRMLScalarVolumeNode
) -> Tuple[np.ndarray, np.ndarray, Grid]:
    """What the model reads, from the study's nodes: CT (HU) on the PET grid, PET in SUVbw, the PET grid."""
    if not is_suv_bw(pet_node):
        raise InputError(f"PET volume {pet_node.GetName()!r} is not in SUVbw; load it through the module first")
    ct_on_pet, pet = study_images(ct_node, pet_node)
    ct_hu = sitk.GetArrayFromImage(ct_on_pet).astype(np.float32, copy=False)
    return ct_hu, sitk.GetArrayFromImage(pet), Grid.from_sitk(pet)


def add_detection_nodes(
    found: Detection,
    pet_node: slicer.vtkMRMLScalarVolumeNode,
    ct_node: Optional[slicer.vtkMRMLScalarVolumeNode] = None,
    segmentation: Optional[slicer.vtkMRMLSegmentationNode] = None,
    with_boxes: bool = True,
    class_name: Optional[str] = None,
) -> DetectionNodes:
    """Add ``found`` (computed on ``pet_node``'s grid) as lesion segments and, with a CT, as VOC box markups.

    Boxes carry ``class_name`` (A, B, E or G), by default the histology letter of the CT's
    Lung-PET-CT-Dx Patient ID; without one no boxes are made (the model does not know histology).
    """
    pet_grid = grid_from_volume_node(pet_node)
    if not pet_grid.same_as(found.pet_grid, tolerance_mm=1e-3):
        raise InputError(
            f"detections were made on {found.pet_grid.describe()}, but PET node {pet_node.GetName()!r} is "
            f"{pet_grid.describe()}"
        )
    detected = segmentation_from_mask(
        found.pet_grid.to_sitk(found.mask), "PETCTLesions detections", lesion_map=found.lesion_map
    )
    try:
        if segmentation is None:
            segmentation = detected
            detected = None
            segmentation.SetName(f"{pet_node.GetName()} lesions")
            # Mostly outline: the PET uptake under a detected lesion is what the reviewer judges.
            segmentation.GetDisplayNode().SetOpacity2DFill(DETECTION_FILL_OPACITY)
            snapshot = None
            ids = segment_ids(segmentation)
        else:
            snapshot = SegmentationSnapshot(segmentation)
            ids = _move_segments(detected, segmentation)
    finally:
        if detected is not None:
            slicer.mrmlScene.RemoveNode(detected)
    _tag_measurements(segmentation, ids, found)
    # The detection's own notes (a device fallback, what the false-positive filter removed) reach the reader.
    result = DetectionNodes(segmentation, ids, snapshot=snapshot, notes=list(found.notes))
    if with_boxes and ct_node is not None:
        class_name = class_name or histology_class(patient_id_of(ct_node))
        if class_name is None:
            result.notes.append(
                f"no VOC boxes: the Patient ID of {ct_node.GetName()!r} has no Lung-PET-CT-Dx histology letter; "
                "choose the class (A, B, E or G) to make them"
            )
        else:
            result.boxes = _add_boxes(found, ct_node, class_name, segmentation, ids)
    return result


def _move_segments(source: slicer.vtkMRMLSegmentationNode, target: slicer.vtkMRMLSegmentationNode) -> List[str]:
    """Copy every segment of ``source`` into ``target`` (Slicer resamples to the target's geometry),
    renamed so that "Lesion <n>" numbers continue after those already in ``target``."""
    existing = [
        target.GetSegmentation().GetNthSegment(n).GetName()
        for n in range(target.GetSegmentation().GetNumberOfSegments())
    ]
    numbers = [int(m.group(1)) for m in (_LESION_NUMBER.match(name) for name in existing) if m]
    next_number = max(numbers, default=0) + 1
    copied = []
    was_modifying = target.StartModify()
    try:
        for offset, segment_id in enumerate(segment_ids(source)):
            before = set(segment_ids(target))
            if not target.GetSegmentation().CopySegmentFromSegmentation(source.GetSegmentation(), segment_id):
                raise RuntimeError(f"Slicer could not copy {segment_id} into segmentation {target.GetName()!r}")
            (new_id,) = set(segment_ids(target)) - before
            target.GetSegmentation().GetSegment(new_id).SetName(SEGMENT_NAME.format(next_number + offset))
            copied.append(new_id)
    finally:
        target.EndModify(was_modifying)
    return copied


def _tag_measurements(segmentation: slicer.vtkMRMLSegmentationNode, ids: List[str], found: Detection) -> None:
    for segment_id, lesion in zip(ids, found.lesions):
        segment = segmentation.GetSegmentation().GetSegment(segment_id)
        for tag in MEASUREMENT_TAGS:
            value = getattr(lesion, tag)
            if value is not None:
                segment.SetTag(TAG_PREFIX + tag, f"{value:.6g}")


def segment_measurements(segment: slicer.vtkSegment) -> Dict[str, float]:
    """The measurements a detection stored on ``segment`` (empty for a segment the user drew)."""
    result = {}
    for tag in MEASUREMENT_TAGS:
        value = vtk.reference("")
        if segment.GetTag(TAG_PREFIX + tag, value):
            result[tag] = float(str(value))
    return result


def _add_boxes(
    found: Detection, ct_node: slicer.vtkMRMLScalarVolumeNode, class_name: str, segmentation, ids: List[str]
) -> List[slicer.vtkMRMLMarkupsROINode]:
    """Each detected lesion's tight box on every CT slice it crosses, as VOC box markups of its segment:
    named and grouped like the segment ("Lesion <n>"), drawn in its colour, linked by segment ID."""
    uids = slice_sop_instance_uids(ct_node)
    ct_grid = grid_from_volume_node(ct_node)
    if len(uids) != ct_grid.size[2]:
        return []
    content = segmentation.GetSegmentation()
    boxes = ct_slice_boxes(found, ct_grid)
    segments = [content.GetSegment(ids[box.lesion - 1]) for box in boxes]
    numbers = [_LESION_NUMBER.match(segment.GetName()) for segment in segments]
    nodes = add_lesion_boxes(
        ct_node,
        [
            (
                box.k,
                VocBox.from_pixel_ranges(class_name, box.c0, box.r0, box.c1, box.r1),
                int(n.group(1)) if n else box.lesion,
            )
            for box, n in zip(boxes, numbers)
        ],
    )
    for node, box, segment in zip(nodes, boxes, segments):
        node.SetAttribute(SEGMENT_ID_ATTRIBUTE, ids[box.lesion - 1])
        colour_box(node, segment.GetColor())
    return nodes
