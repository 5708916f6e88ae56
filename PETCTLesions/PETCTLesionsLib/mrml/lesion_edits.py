"""A reader's prompt (click, remove, box, split) applied to the lesion segments and their VOC boxes, with one undo.

The prompt engine (:mod:`PETCTLesionsLib.interactive.prompts`) works on the lesion map on the PET
grid and answers with a :class:`~PETCTLesionsLib.interactive.prompts.LesionEdit`; here that edit
becomes segment operations, lesion number n being the n-th segment (the numbering of
:func:`.segmentations.lesion_map_on`):

- an added lesion is a new segment named, coloured and tagged like a detected one ("Lesion <m>"
  continuing the names' numbering, :func:`.segmentations.lesion_colour`, the lesion terminology),
  with review status "added" (:data:`.review.ADDED`);
- a removed lesion's segment is deleted with its VOC boxes (:func:`.review.delete_lesion`);
- a changed lesion's voxels are replaced inside the edit's window (voxels outside it are kept);
- the VOC boxes of every added or changed lesion are traced again on the CT, each lesion's tight
  box on every CT slice it crosses, classed as its own boxes, the segmentation's other boxes, or
  the histology letter of the CT's Patient ID; without a class no boxes are made (a note says so).

Each prompt gives one :class:`AppliedEdit`, whose :meth:`~AppliedEdit.undo` restores the segments
(a :class:`.detection_nodes.SegmentationSnapshot`) and the boxes (the very box nodes removed, in
their folders) exactly: one undo takes the click back. In the Segment Editor, whose own Undo
restores only segments, :meth:`~AppliedEdit.boxes_follow_segments` brings the boxes back in line.
"""

from __future__ import annotations

import collections
import re
import uuid
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import slicer
import vtk
from vtk.util import numpy_support

from ..errors import InputError
from ..formats.voc import VALID_CLASSES, VocBox, histology_class
from ..geometry import Grid, lps_to_ras
from ..interactive import editor_options
from ..interactive.prompts import (
    AxialBox,
    LesionEdit,
    LiverReference,
    PromptOptions,
    PromptVolumes,
    box_prompt,
    liver_reference,
    negative_click,
    positive_click,
    split_lesion,
)
from ..lesions import slice_boxes
from .boxes import CLASS_ATTRIBUTE, LESION_ATTRIBUTE, SEGMENT_ID_ATTRIBUTE, add_lesion_boxes, colour_box
from .detection_nodes import DETECTION_FILL_OPACITY, SegmentationSnapshot
from .review import ADDED, CLASS_TAG, REJECTED, STATUS_TAG, boxes_of_segment, delete_lesion
from .segmentations import (
    LESION_TERMINOLOGY,
    SEGMENT_NAME,
    lesion_colour,
    lesion_map_on,
    segment_ids,
    segment_on,
    set_segment_terminology,
)
from .study_nodes import is_suv_bw, patient_id_of, place_in_hierarchy, slice_sop_instance_uids
from .volumes import grid_from_volume_node, volume_node_from_image

# The CT whose slices carry a segmentation's VOC boxes (set by the module when it opens the Segment Editor).
CT_REFERENCE_ROLE = "PETCTLesions.ct"
_LESION_NUMBER = re.compile(r"^Lesion (\d+)$")
Prompt = Callable[[PromptVolumes, np.ndarray], LesionEdit]
BEFORE, AFTER = "before", "after"
DEFAULT_OPTIONS = PromptOptions()  # the prompt engine's defaults (41% of SUVmax, 1 cm snap, 4 cm bound)


@dataclass(frozen=True)
class LesionScene:
    """What a prompt edits: the lesion segmentation, the PET (SUVbw) it is measured on, the CT its
    VOC boxes lie on (None: no boxes), the model's probability on the PET grid (for the
    probability rule), and the class of new boxes (None: found as the module finds it)."""

    segmentation: slicer.vtkMRMLSegmentationNode
    pet_node: slicer.vtkMRMLScalarVolumeNode
    ct_node: Optional[slicer.vtkMRMLScalarVolumeNode] = None
    probability_node: Optional[slicer.vtkMRMLScalarVolumeNode] = None
    class_name: Optional[str] = None


@dataclass
class _RemovedBox:
    """A box node taken out of the scene, kept whole to be put back: node, display node, folder."""

    node: slicer.vtkMRMLMarkupsROINode
    display: Optional[slicer.vtkMRMLDisplayNode]
    folder: int


@dataclass
class AppliedEdit:
    """One prompt as done to the scene, and how to take it back."""

    edit: LesionEdit
    segmentation: slicer.vtkMRMLSegmentationNode
    added_ids: List[str] = field(default_factory=list)  # new segments, in the edit's ``added`` order
    changed_ids: List[str] = field(default_factory=list)
    removed_ids: List[str] = field(default_factory=list)
    boxes: List[slicer.vtkMRMLMarkupsROINode] = field(default_factory=list)  # made for added/changed lesions
    notes: List[str] = field(default_factory=list)  # the prompt's note, then what was not made and why
    _snapshot: Optional[SegmentationSnapshot] = None
    _removed_boxes: List[_RemovedBox] = field(default_factory=list)
    _made_boxes: List[_RemovedBox] = field(default_factory=list)  # ``boxes`` with their display nodes and folders
    _changed_masks: Dict[str, Tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)  # before, after
    _region_grid: Optional[Grid] = None

    @property
    def is_empty(self) -> bool:
        """Nothing was changed (the note says why)."""
        return self._snapshot is None

    @property
    def message(self) -> str:
        return " ".join(self.notes)

    def undo(self) -> None:
        """The scene as before the prompt: its boxes removed, the segments restored, the boxes it
        removed put back where they were."""
        if self._snapshot is None:
            return
        _remove_nodes(self.boxes)
        self._snapshot.restore()
        _restore_boxes(self._removed_boxes)

    def segments_state(self) -> Optional[str]:
        """Whether the segments are now as before the prompt (BEFORE), as after it (AFTER), or
        neither (None: edited since), judged by the segments the prompt added, removed and changed."""
        if self._snapshot is None:
            return None
        present = set(segment_ids(self.segmentation))
        added = [sid in present for sid in self.added_ids]
        removed = [sid in present for sid in self.removed_ids]
        candidates = []
        if all(added) and not any(removed):
            candidates.append(AFTER)
        if not any(added) and all(removed):
            candidates.append(BEFORE)
        if self._changed_masks and candidates:
            candidates = [state for state in candidates if self._changed_segments_are(state)]
        return candidates[0] if len(candidates) == 1 else None

    def boxes_follow_segments(self) -> None:
        """After the Segment Editor's Undo or Redo restored the segments, the boxes follow: the
        prompt's boxes or the ones it removed, whichever belong to the segments as they are now."""
        state = self.segments_state()
        if state == BEFORE:
            _remove_nodes(self.boxes)
            _restore_boxes(self._removed_boxes)
        elif state == AFTER:
            _remove_nodes([box.node for box in self._removed_boxes])
            _restore_boxes(self._made_boxes)

    def _changed_segments_are(self, state: str) -> bool:
        reference = _reference_node(self._region_grid, "lesion edit window")
        try:
            for segment_id, (before, after) in self._changed_masks.items():
                if self.segmentation.GetSegmentation().GetSegment(segment_id) is None:
                    # Gone: an earlier prompt that made it was taken back too, so this one is.
                    if state == BEFORE:
                        continue
                    return False
                now = segment_on(self.segmentation, segment_id, reference).astype(bool)
                if not np.array_equal(now, before if state == BEFORE else after):
                    return False
        finally:
            _remove_volume(reference)
        return True


# ------------------------------------------------------------------------------------------- prompts


def add_by_click(
    scene: LesionScene, point_lps: Sequence[float], options: PromptOptions = DEFAULT_OPTIONS
) -> AppliedEdit:
    """A positive click: the lesion around the hottest voxel near ``point_lps`` added (or joined)."""
    return apply_prompt(scene, lambda volumes, lesions: positive_click(volumes, lesions, point_lps, options))


def remove_by_click(
    scene: LesionScene, point_lps: Sequence[float], options: PromptOptions = DEFAULT_OPTIONS
) -> AppliedEdit:
    """A negative click: the lesion at ``point_lps`` removed (or the part of it around the click)."""
    return apply_prompt(scene, lambda volumes, lesions: negative_click(volumes, lesions, point_lps, options))


def add_in_box(scene: LesionScene, box: AxialBox, options: PromptOptions = DEFAULT_OPTIONS) -> AppliedEdit:
    """A box on an axial PET slice: the lesion inside it, followed onto the slices where it continues."""
    return apply_prompt(scene, lambda volumes, lesions: box_prompt(volumes, lesions, box, options))


def split_by_clicks(scene: LesionScene, first_lps: Sequence[float], second_lps: Sequence[float]) -> AppliedEdit:
    """Two clicks in one lesion: split into the part around each click (the second a new lesion)."""
    return apply_prompt(scene, lambda volumes, lesions: split_lesion(volumes, lesions, first_lps, second_lps))


def apply_mode(
    scene: LesionScene, mode: str, points_ras: Sequence[Sequence[float]], options: PromptOptions = DEFAULT_OPTIONS
) -> AppliedEdit:
    """What the Segment Editor effect does in ``mode`` (:mod:`..interactive.editor_options`) with the
    reader's points in a slice view (RAS, as Slicer gives them): one click, a split's two, a box's two corners."""
    points_lps = [lps_to_ras(point) for point in points_ras]  # RAS <-> LPS: the same flip both ways
    if mode == editor_options.ADD:
        return add_by_click(scene, points_lps[0], options)
    if mode == editor_options.REMOVE:
        return remove_by_click(scene, points_lps[0], options)
    if mode == editor_options.SPLIT:
        return split_by_clicks(scene, points_lps[0], points_lps[1])
    if mode == editor_options.BOX:
        return add_in_box(scene, axial_box_on_pet(scene.pet_node, points_ras[0], points_ras[1]), options)
    raise ValueError(f"no lesion edit for mode {mode!r}")


def liver_at(pet_node: slicer.vtkMRMLScalarVolumeNode, point_ras: Sequence[float]) -> LiverReference:
    """PERCIST's liver reference: the PET (SUVbw) in a 3 cm sphere centred where the reader clicked."""
    if not is_suv_bw(pet_node):
        raise InputError(f"PET volume {pet_node.GetName()!r} is not in SUVbw; load it through the module first")
    pet_suv = slicer.util.arrayFromVolume(pet_node)
    return liver_reference(pet_suv, grid_from_volume_node(pet_node), lps_to_ras(point_ras))


class EditHistory:
    """The prompts of one Segment Editor session, newest last, for the boxes to follow its Undo and Redo.

    The Segment Editor's Undo restores segments only (its ``saveStateForUndo`` saves the segmentation
    before each prompt); after it, :meth:`boxes_follow_segments` puts back the boxes of the prompts
    taken back and removes the boxes they made, and does the reverse for prompts redone.
    """

    def __init__(self, limit: int = 10) -> None:
        self.limit = limit  # as many as the Segment Editor keeps undo states by default
        self._records: List[AppliedEdit] = []

    @property
    def records(self) -> List[AppliedEdit]:
        return list(self._records)

    def add(self, applied: AppliedEdit) -> None:
        """A new prompt: prompts taken back can no longer be redone (the Segment Editor drops them too)."""
        if applied.is_empty:
            return
        # The prompts in force are the oldest ones: keep them up to the newest still in force.
        in_force = [n for n, record in enumerate(self._records) if record.segments_state() == AFTER]
        kept = self._records[: in_force[-1] + 1] if in_force else []
        self._records = [*kept, applied][-self.limit :]

    def boxes_follow_segments(self) -> None:
        """Boxes as the segments now are: prompts taken back newest first, then prompts in force oldest first."""
        states = [(record, record.segments_state()) for record in self._records]
        for record, state in reversed(states):
            if state == BEFORE:
                record.boxes_follow_segments()
        for record, state in states:
            if state == AFTER:
                record.boxes_follow_segments()

    def undo_last(self) -> Optional[AppliedEdit]:
        """Take the newest prompt back exactly (segments and boxes); the one taken back, or None."""
        while self._records:
            record = self._records.pop()
            if record.segments_state() == AFTER:
                record.undo()
                return record
        return None

    def clear(self) -> None:
        self._records = []


def apply_prompt(scene: LesionScene, prompt: Prompt) -> AppliedEdit:
    """Run ``prompt(volumes, lesion_map)`` on the scene's lesions and apply its edit."""
    volumes, lesion_map, ids = prompt_inputs(scene)
    edit = prompt(volumes, lesion_map)
    return apply_edit(scene, edit, ids, lesion_map)


def prompt_inputs(scene: LesionScene) -> Tuple[PromptVolumes, np.ndarray, List[str]]:
    """What a prompt reads: the PET's SUV (and probability) on the PET grid, the lesion map there
    (lesion n = the n-th segment) and the segment IDs in that order."""
    pet_node = scene.pet_node
    if not is_suv_bw(pet_node):
        raise InputError(f"PET volume {pet_node.GetName()!r} is not in SUVbw; load it through the module first")
    grid = grid_from_volume_node(pet_node)
    pet_suv = slicer.util.arrayFromVolume(pet_node).astype(np.float32, copy=False)
    probability = None
    if scene.probability_node is not None:
        if not grid_from_volume_node(scene.probability_node).same_as(grid, tolerance_mm=1e-3):
            raise InputError(
                f"probability volume {scene.probability_node.GetName()!r} does not lie on the grid of PET "
                f"{pet_node.GetName()!r}"
            )
        probability = slicer.util.arrayFromVolume(scene.probability_node)
    lesion_map, _ = lesion_map_on(scene.segmentation, pet_node)
    return PromptVolumes(pet_suv, grid, probability), lesion_map, segment_ids(scene.segmentation)


# ------------------------------------------------------------------------------------------- the edit


def apply_edit(
    scene: LesionScene, edit: LesionEdit, ids: Sequence[str], lesion_map: Optional[np.ndarray] = None
) -> AppliedEdit:
    """Apply ``edit`` (made on the lesion map whose lesion n is segment ``ids[n - 1]``) to the scene.

    ``lesion_map`` is that map (it is edited in place here, to find each changed lesion's extent);
    without it the map is read from the segments. Anything failing half-way is undone before the
    error goes on.
    """
    segmentation = scene.segmentation
    applied = AppliedEdit(edit, segmentation, notes=[edit.note] if edit.note else [])
    if edit.is_empty:
        return applied
    unknown = [n for n in (*edit.changed, *edit.removed) if not 1 <= n <= len(ids)]
    if unknown:
        raise ValueError(f"the edit names lesions {unknown}, but {segmentation.GetName()!r} has {len(ids)} segments")
    pet_grid = grid_from_volume_node(scene.pet_node)
    if lesion_map is None:
        lesion_map, _ = lesion_map_on(segmentation, scene.pet_node)
    applied._snapshot = SegmentationSnapshot(segmentation)
    try:
        _record_changed_masks(applied, edit, ids, pet_grid)
        _edit_segments(applied, edit, ids, pet_grid)
        edit.apply_in_place(lesion_map)
        _rebuild_boxes(applied, scene, edit, lesion_map, pet_grid)
        for number in edit.removed:
            applied._removed_boxes.extend(_take_out(boxes_of_segment(segmentation, ids[number - 1])))
            delete_lesion(segmentation, ids[number - 1])
            applied.removed_ids.append(ids[number - 1])
    except BaseException:
        applied.undo()
        raise
    return applied


def _record_changed_masks(applied: AppliedEdit, edit: LesionEdit, ids: Sequence[str], pet_grid: Grid) -> None:
    """Each changed lesion's voxels in the edit's window, before and after (to tell the Segment
    Editor's Undo from Redo later)."""
    low = [axis.start for axis in edit.region]
    high = [axis.stop for axis in edit.region]
    applied._region_grid = pet_grid.sub_grid(low[::-1], high[::-1])
    for number in edit.changed:
        applied._changed_masks[ids[number - 1]] = (edit.before == number, edit.after == number)


def _edit_segments(applied: AppliedEdit, edit: LesionEdit, ids: Sequence[str], pet_grid: Grid) -> None:
    segmentation = applied.segmentation
    logic = slicer.vtkSlicerSegmentationsModuleLogic
    was_modifying = segmentation.StartModify()  # one update of views and tables
    try:
        # Voxels leave their lesions first, then arrive in theirs, as the Segment Editor's Remove and
        # Add do it (MIN with the segment's own voxels; MASK writes the segment's label value, where
        # MAX would write the mask's 1, another segment's value in a shared labelmap). No voxel is ever
        # in two segments, which would split the shared labelmap into layers.
        for number in edit.changed:
            labelmap = _window_labelmap(edit.after == number, edit.region, pet_grid)
            logic.SetBinaryLabelmapToSegment(
                labelmap, segmentation, ids[number - 1], logic.MODE_MERGE_MIN, labelmap.GetExtent()
            )
            applied.changed_ids.append(ids[number - 1])
        first_name = _next_lesion_name_number(segmentation)
        for offset in range(len(edit.added)):
            applied.added_ids.append(_add_lesion_segment(segmentation, first_name + offset))
        targets = [*(ids[n - 1] for n in edit.changed), *applied.added_ids]
        for number, segment_id in zip((*edit.changed, *edit.added), targets):
            labelmap = _window_labelmap(edit.after == number, edit.region, pet_grid)
            logic.SetBinaryLabelmapToSegment(
                labelmap, segmentation, segment_id, logic.MODE_MERGE_MASK, labelmap.GetExtent()
            )
    finally:
        segmentation.EndModify(was_modifying)


def _window_labelmap(mask: np.ndarray, region: Tuple[slice, slice, slice], grid: Grid) -> slicer.vtkOrientedImageData:
    """A 0/1 labelmap of ``mask`` (the voxels of ``region``) placed on ``grid``: the window only."""
    k, j, i = (axis.start for axis in region)
    image = slicer.vtkOrientedImageData()
    image.SetExtent(i, i + mask.shape[2] - 1, j, j + mask.shape[1] - 1, k, k + mask.shape[0] - 1)
    image.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 1)
    numpy_support.vtk_to_numpy(image.GetPointData().GetScalars()).reshape(mask.shape)[...] = mask
    image.SetImageToWorldMatrix(slicer.util.vtkMatrixFromArray(grid.ijk_to_ras()))
    return image


def _next_lesion_name_number(segmentation: slicer.vtkMRMLSegmentationNode) -> int:
    """The number after the highest "Lesion <n>" name (as detections added to a segmentation continue)."""
    content = segmentation.GetSegmentation()
    names = (content.GetSegment(segment_id).GetName() for segment_id in segment_ids(segmentation))
    numbers = [int(m.group(1)) for m in (_LESION_NUMBER.match(name) for name in names) if m]
    return max(numbers, default=0) + 1


def _add_lesion_segment(segmentation: slicer.vtkMRMLSegmentationNode, name_number: int) -> str:
    """An empty lesion segment "Lesion <name_number>", coloured and tagged like a detected one, status "added"."""
    segment_id = f"PETCTLesions_{uuid.uuid4().hex[:16]}"  # an ID of its own, as segmentations.py explains
    content = segmentation.GetSegmentation()
    content.AddEmptySegment(segment_id, SEGMENT_NAME.format(name_number), list(lesion_colour(name_number)))
    segment = content.GetSegment(segment_id)
    set_segment_terminology(segment, LESION_TERMINOLOGY)
    segment.SetTag(STATUS_TAG, ADDED)
    return segment_id


# ------------------------------------------------------------------------------------------- boxes


def _rebuild_boxes(
    applied: AppliedEdit, scene: LesionScene, edit: LesionEdit, lesion_map: np.ndarray, pet_grid: Grid
) -> None:
    """The boxes of every added and changed lesion traced again on the CT (old ones set aside)."""
    numbers = [*edit.changed, *edit.added]
    segment_ids_now = [*applied.changed_ids, *applied.added_ids]
    if not numbers or scene.ct_node is None:
        return
    ct_node = scene.ct_node
    if len(slice_sop_instance_uids(ct_node)) != ct_node.GetImageData().GetDimensions()[2]:
        applied.notes.append(
            f"no VOC boxes: CT {ct_node.GetName()!r} does not know the SOPInstanceUID of each slice "
            "(load it from DICOM)"
        )
        return
    segmentation = applied.segmentation
    for number, segment_id in zip(numbers, segment_ids_now):
        old_boxes = boxes_of_segment(segmentation, segment_id)
        segment = segmentation.GetSegmentation().GetSegment(segment_id)
        class_name = _box_class(scene, segment, old_boxes)
        if class_name is None:
            applied.notes.append(
                f"no VOC boxes for {segment.GetName()!r}: no class (A, B, E or G) on its boxes, the segmentation's "
                f"other boxes or the Patient ID of {ct_node.GetName()!r}; set its class to make them"
            )
            continue
        if not _tag(segment, CLASS_TAG) and class_name != histology_class(patient_id_of(ct_node)):
            segment.SetTag(CLASS_TAG, class_name)  # the table shows the class its boxes got
        applied._removed_boxes.extend(_take_out(old_boxes))
        folder_number = _folder_number(segment, old_boxes)
        placed = [
            (k, VocBox.from_pixel_ranges(class_name, c0, r0, c1, r1), folder_number)
            for k, c0, r0, c1, r1 in _ct_boxes(segmentation, segment_id, ct_node, _extent(lesion_map, number), pet_grid)
        ]
        nodes = add_lesion_boxes(ct_node, placed)
        hidden = _tag(segment, STATUS_TAG) == REJECTED  # a rejected lesion's boxes are hidden with it
        for node in nodes:
            node.SetAttribute(SEGMENT_ID_ATTRIBUTE, segment_id)
            colour_box(node, segment.GetColor())
            node.GetDisplayNode().SetVisibility(not hidden)
        applied.boxes.extend(nodes)
        applied._made_boxes.extend(_as_kept(nodes))


def _box_class(
    scene: LesionScene, segment: slicer.vtkSegment, old_boxes: Sequence[slicer.vtkMRMLMarkupsROINode]
) -> Optional[str]:
    """The class of a lesion's new boxes: the scene's, the lesion's own (tag, boxes), the most common
    among the segmentation's other boxes, the histology letter of the CT's Patient ID; else None."""
    own = [_tag(segment, CLASS_TAG)] + [box.GetAttribute(CLASS_ATTRIBUTE) or "" for box in old_boxes]
    others = collections.Counter(
        box.GetAttribute(CLASS_ATTRIBUTE)
        for segment_id in segment_ids(scene.segmentation)
        for box in boxes_of_segment(scene.segmentation, segment_id)
    ).most_common()
    candidates = [scene.class_name, *own, *(name for name, _ in others)]
    if scene.ct_node is not None:
        candidates.append(histology_class(patient_id_of(scene.ct_node)))
    return next((name for name in candidates if name in VALID_CLASSES), None)


def _folder_number(segment: slicer.vtkSegment, old_boxes: Sequence[slicer.vtkMRMLMarkupsROINode]) -> int:
    """The "Lesion <n>" box folder: the lesion's old boxes', else its name's number."""
    numbers = [box.GetAttribute(LESION_ATTRIBUTE) for box in old_boxes]
    old = next((int(n) for n in numbers if n and n.isdigit()), None)
    if old is not None:
        return old
    match = _LESION_NUMBER.match(segment.GetName())
    return int(match.group(1)) if match else 0


def _extent(lesion_map: np.ndarray, number: int) -> Tuple[Tuple[int, int], ...]:
    """First and last [k, j, i] index of lesion ``number`` in the map (one pass per axis)."""
    inside = lesion_map == number
    return tuple(
        (int(np.argmax(present)), int(len(present) - 1 - np.argmax(present[::-1])))
        for present in (inside.any(axis=(1, 2)), inside.any(axis=(0, 2)), inside.any(axis=(0, 1)))
    )


def _ct_boxes(
    segmentation: slicer.vtkMRMLSegmentationNode,
    segment_id: str,
    ct_node: slicer.vtkMRMLScalarVolumeNode,
    extent_kji: Tuple[Tuple[int, int], ...],
    pet_grid: Grid,
) -> List[Tuple[int, int, int, int, int]]:
    """The segment's tight box on every CT slice it crosses, as ``(k, c0, r0, c1, r1)``.

    Slicer rasterises the segment on the CT voxels around the lesion only (the block of CT voxels
    the lesion's PET extent covers, one voxel more each way): the same voxels as on the whole CT
    grid, which takes seconds on a whole-body study.
    """
    ct_grid = grid_from_volume_node(ct_node)
    (k0, k1), (j0, j1), (i0, i1) = extent_kji
    corners = np.array(
        [[i, j, k] for i in (i0 - 0.5, i1 + 0.5) for j in (j0 - 0.5, j1 + 0.5) for k in (k0 - 0.5, k1 + 0.5)]
    )
    on_ct = ct_grid.lps_to_index(pet_grid.index_to_lps(corners))
    low = np.clip(np.floor(on_ct.min(axis=0)).astype(int) - 1, 0, np.array(ct_grid.size) - 1)
    high = np.clip(np.ceil(on_ct.max(axis=0)).astype(int) + 2, 1, np.array(ct_grid.size))
    reference = _reference_node(ct_grid.sub_grid(low, high), "CT around the lesion")
    try:
        mask = segment_on(segmentation, segment_id, reference)
    finally:
        _remove_volume(reference)
    return [(b.k + low[2], b.c0 + low[0], b.r0 + low[1], b.c1 + low[0], b.r1 + low[1]) for b in slice_boxes(mask)]


def _as_kept(boxes: Sequence[slicer.vtkMRMLMarkupsROINode]) -> List[_RemovedBox]:
    """Box nodes with what putting them back needs: display node and folder."""
    hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(slicer.mrmlScene)
    kept = []
    for node in boxes:
        item = hierarchy.GetItemByDataNode(node)
        kept.append(_RemovedBox(node, node.GetDisplayNode(), hierarchy.GetItemParent(item) if item else 0))
    return kept


def _take_out(boxes: Sequence[slicer.vtkMRMLMarkupsROINode]) -> List[_RemovedBox]:
    """Remove box nodes from the scene, keeping each whole (with its display node and folder)."""
    removed = _as_kept(boxes)
    _remove_nodes(boxes)
    return removed


def _remove_nodes(nodes: Sequence[slicer.vtkMRMLNode]) -> None:
    for node in nodes:
        scene = node.GetScene()
        if scene is not None:  # the user may have deleted it already
            scene.RemoveNode(node)


def _restore_boxes(removed: Sequence[_RemovedBox]) -> None:
    """Put box nodes back into the scene as they were: same node, display node and folder."""
    scene = slicer.mrmlScene
    hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    folders = vtk.vtkIdList()
    hierarchy.GetItemChildren(hierarchy.GetSceneItemID(), folders, True)
    existing = {folders.GetId(n) for n in range(folders.GetNumberOfIds())}
    for box in removed:
        if box.node.GetScene() is None:
            scene.AddNode(box.node)
        if box.display is not None:
            if box.display.GetScene() is None:  # the application removes a node's display nodes with it
                scene.AddNode(box.display)
            if box.node.GetDisplayNode() is not box.display:
                box.node.SetAndObserveDisplayNodeID(box.display.GetID())
        if box.folder and box.folder in existing:
            place_in_hierarchy(box.node, box.folder)


def _reference_node(grid: Grid, name: str) -> slicer.vtkMRMLScalarVolumeNode:
    """A small volume node with ``grid``'s geometry, to rasterise a segment onto."""
    return volume_node_from_image(grid.to_sitk(np.zeros(grid.shape, np.uint8)), name)


def _remove_volume(node: slicer.vtkMRMLVolumeNode) -> None:
    display = node.GetDisplayNode()
    scene = node.GetScene()
    scene.RemoveNode(node)
    if display is not None and display.GetScene() is not None:
        scene.RemoveNode(display)


def _tag(segment: slicer.vtkSegment, name: str) -> str:
    value = vtk.reference("")
    return str(value) if segment.GetTag(name, value) else ""


# ------------------------------------------------------------------------------------------- where the reader pointed


def axial_box_on_pet(
    pet_node: slicer.vtkMRMLScalarVolumeNode, corner_ras: Sequence[float], other_corner_ras: Sequence[float]
) -> AxialBox:
    """The box a reader dragged from ``corner_ras`` to ``other_corner_ras`` on an axial view, on the
    PET grid: the slice through its middle, the columns and rows of the voxels it covers."""
    grid = grid_from_volume_node(pet_node)
    corners = grid.lps_to_index([lps_to_ras(corner_ras), lps_to_ras(other_corner_ras)])  # RAS <-> LPS: one flip
    return _axial_box(grid, corners, pet_node.GetName())


def axial_box_from_roi(roi_node: slicer.vtkMRMLMarkupsROINode, pet_node: slicer.vtkMRMLScalarVolumeNode) -> AxialBox:
    """A VOC box (an ROI on a CT slice) as the PET grid's axial box over the same area."""
    grid = grid_from_volume_node(pet_node)
    ras_to_ijk = np.linalg.inv(grid.ijk_to_ras())
    object_to_world = roi_node.GetObjectToWorldMatrix()
    matrix = np.array([[object_to_world.GetElement(r, c) for c in range(4)] for r in range(4)])
    half = np.array(roi_node.GetSize()) / 2.0
    corners = np.array([[sx * half[0], sy * half[1], 0.0, 1.0] for sx in (-1, 1) for sy in (-1, 1)])
    return _axial_box(grid, (ras_to_ijk @ matrix @ corners.T).T[:, :3], roi_node.GetName())


def _axial_box(grid: Grid, corners_ijk: np.ndarray, what: str) -> AxialBox:
    low, high = np.asarray(corners_ijk).min(axis=0), np.asarray(corners_ijk).max(axis=0)
    if high[2] - low[2] > 0.5:
        raise InputError(f"box {what!r} does not lie on one axial PET slice: draw it on an axial view")
    k = int(np.floor((low[2] + high[2]) / 2.0 + 0.5))
    i0, j0 = (int(np.floor(v + 0.5)) for v in low[:2])
    i1, j1 = (int(np.floor(v + 0.5)) for v in high[:2])
    if not 0 <= k < grid.size[2] or i1 < 0 or j1 < 0 or i0 >= grid.size[0] or j0 >= grid.size[1]:
        raise InputError(f"box {what!r} lies outside the PET")
    return AxialBox(k=k, i0=max(i0, 0), j0=max(j0, 0), i1=min(i1, grid.size[0] - 1), j1=min(j1, grid.size[1] - 1))


def lesion_segmentation(
    pet_node: slicer.vtkMRMLScalarVolumeNode,
    ct_node: Optional[slicer.vtkMRMLScalarVolumeNode] = None,
    segmentation: Optional[slicer.vtkMRMLSegmentationNode] = None,
) -> slicer.vtkMRMLSegmentationNode:
    """The segmentation the click tools edit: ``segmentation``, else a new empty one on the PET grid named and
    shown as detection makes it ("<PET> lesions", mostly outline); it remembers the CT of its boxes."""
    if segmentation is None:
        segmentation = pet_node.GetScene().AddNewNodeByClass("vtkMRMLSegmentationNode", f"{pet_node.GetName()} lesions")
        segmentation.CreateDefaultDisplayNodes()
        segmentation.SetReferenceImageGeometryParameterFromVolumeNode(pet_node)
        segmentation.GetDisplayNode().SetOpacity2DFill(DETECTION_FILL_OPACITY)
    if ct_node is not None:
        remember_ct(segmentation, ct_node)
    return segmentation


def ct_of(segmentation: slicer.vtkMRMLSegmentationNode, pet_node: slicer.vtkMRMLScalarVolumeNode):
    """The CT a segmentation's boxes lie on: the one the module named on it, else the CT of the PET's study."""
    node = segmentation.GetNodeReference(CT_REFERENCE_ROLE)
    if node is not None:
        return node
    hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(slicer.mrmlScene)
    pet_item = hierarchy.GetItemByDataNode(pet_node)
    if not pet_item:
        return None
    siblings = vtk.vtkIdList()
    hierarchy.GetItemChildren(hierarchy.GetItemParent(pet_item), siblings)
    modality = slicer.vtkMRMLSubjectHierarchyConstants.GetDICOMSeriesModalityAttributeName()
    for n in range(siblings.GetNumberOfIds()):
        item = siblings.GetId(n)
        node = hierarchy.GetItemDataNode(item)
        is_volume = node is not None and node.IsA("vtkMRMLScalarVolumeNode")
        if is_volume and hierarchy.GetItemAttribute(item, modality) == "CT":
            return node
    return None


def remember_ct(
    segmentation: slicer.vtkMRMLSegmentationNode, ct_node: Optional[slicer.vtkMRMLScalarVolumeNode]
) -> None:
    """Name the CT whose slices carry the segmentation's boxes (:func:`ct_of` finds it again)."""
    segmentation.SetNodeReferenceID(CT_REFERENCE_ROLE, ct_node.GetID() if ct_node is not None else None)
