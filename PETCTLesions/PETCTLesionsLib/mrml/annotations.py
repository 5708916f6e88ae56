"""The annotator's round trip: open existing labels for review, and write the corrections back.

Two kinds of labels come from files:

- **VOC boxes** (Lung-PET-CT-Dx: one XML per annotated CT slice, named by its SOPInstanceUID) onto a
  DICOM study already loaded (:func:`import_voc_annotations`). The boxes become ROI nodes on their
  slices (:mod:`.boxes`), grouped into lesions: two boxes belong to one lesion when they lie on the same
  or on neighbouring CT slices (k and k + 1) and share at least one pixel in plane (their column and row
  ranges overlap); groups are closed under that relation (a chain of overlapping boxes through the
  slices is one lesion, :func:`..formats.voc.group_boxes_into_lesions`). Each lesion becomes a lesion
  segment (a row in the lesion table, with the class its boxes carry), without voxels until the
  annotator draws it; its boxes are linked to it as detected boxes are.
- **An nnU-Net case** (autoPET layout: CT on the PET grid, PET in SUV, label) opened on its own
  (:func:`open_nnunet_case`): CT and PET volumes by the dataset's ``channel_names``, one segment per
  lesion (26-connected components of the label). Without DICOM there are no slice SOPInstanceUIDs, so
  such a study has no VOC boxes and gives no VOC export: that needs the DICOM study.

Lesions from files get the review status "imported" (:data:`.review.IMPORTED`), and what was imported
is kept on the nodes (saved with the scene): each imported box as read (:mod:`.boxes`) and a digest of
each imported segment's voxels. :func:`changes_since_import` compares the scene with it: lesions and
boxes added, removed (deleted or rejected), changed and unchanged. :func:`export_back` writes the
corrections where they came from: the VOC files back into their folder (:func:`.export.write_voc_annotations`:
unchanged slices left as they are, the others keeping their files' fields, replaced and removed files
kept as backups) and the label back into its nnU-Net case (the CT and PET files are not touched; the
replaced label is kept as a backup). Both replace files only when asked (``replace``). Exports anywhere
else go through :mod:`.export` (the Export panel, ``convert``) and keep the same fields.
"""

from __future__ import annotations

import hashlib
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, FrozenSet, List, Optional, Sequence, Set, Tuple

import numpy as np
import SimpleITK as sitk
import slicer

from ..errors import InputError
from ..fileio import atomic_output, back_up, backup_stamp
from ..formats import nnunet, voc
from ..formats.parallel_gzip import write_nifti_gz_files
from ..lesions import lesion_extents
from .boxes import (
    CLASS_ATTRIBUTE,
    LESION_ATTRIBUTE,
    SEGMENT_ID_ATTRIBUTE,
    SOP_INSTANCE_UID_ATTRIBUTE,
    VOC_IMPORTED_ATTRIBUTE,
    add_box_nodes,
    box_nodes_of,
    box_where_left,
    colour_box,
    import_key,
    imported_boxes,
    keep_voc_originals,
    set_imported_lesions,
    voc_import_folder,
)
from .export import ExportReport, StudyNodes, kept_voc_annotations, write_voc_annotations
from .review import CLASS_TAG, IMPORTED, STATUS_TAG, rejected_segment_ids, segment_tag, without_rejected
from .segmentations import (
    LESION_TERMINOLOGY,
    SEGMENT_NAME,
    lesion_colour,
    lesion_map_on,
    mask_on,
    segment_ids,
    segmentation_from_mask,
    set_segment_terminology,
)
from .study_nodes import (
    NNUNET_CASE_ATTRIBUTE,
    NNUNET_DATASET_ATTRIBUTE,
    mark_as_suv_bw,
    patient_id_of,
    place_in_hierarchy,
    slice_sop_instance_uids,
)
from .volumes import volume_node_from_image

# On the segmentation node: the IDs of the segments an import made (space-separated).
IMPORTED_SEGMENTS_ATTRIBUTE = "PETCTLesions.importedSegments"
# On each imported segment: a digest of its voxels as imported (see _voxel_digests).
IMPORTED_VOXELS_TAG = "PETCTLesions.importedVoxels"
_NO_VOXELS = "none"
_REPLACE_HINT = "replace=True (the module's Write back, once you agree) replaces {}, keeping a backup of each beside it"


@dataclass
class AnnotationImport:
    """What an import made and what it left out (a file matching no slice, a box cut or skipped: why)."""

    segmentation: Optional[slicer.vtkMRMLSegmentationNode]
    segment_ids: List[str] = field(default_factory=list)  # the imported lesions, lesion by lesion
    boxes: List[slicer.vtkMRMLMarkupsROINode] = field(default_factory=list)
    skipped: List[str] = field(default_factory=list)
    notes: List[str] = field(default_factory=list)

    def text(self) -> str:
        lines = [f"note: {note}" for note in self.notes] + [f"skipped: {reason}" for reason in self.skipped]
        return "\n".join(lines)


@dataclass
class OpenedCase:
    """An nnU-Net case as nodes: CT (HU) and PET (SUVbw) on the case's grid, its lesions as segments."""

    ct: slicer.vtkMRMLScalarVolumeNode
    pet: slicer.vtkMRMLScalarVolumeNode
    segmentation: slicer.vtkMRMLSegmentationNode
    has_label: bool  # False: a test case (imagesTs), its segmentation empty
    notes: List[str] = field(default_factory=list)


@dataclass(frozen=True)
class ChangeCounts:
    added: int = 0
    removed: int = 0  # deleted, or rejected in review (left out of every export)
    changed: int = 0
    unchanged: int = 0

    def text(self) -> str:
        return f"{self.added} added, {self.removed} removed, {self.changed} changed, {self.unchanged} unchanged"


@dataclass(frozen=True)
class ChangeSummary:
    """What the annotator changed since the import. A lesion is changed when its voxels differ from the
    imported ones or one of its boxes was added, removed or changed; a box is changed when it lies on
    another slice, covers other pixels or has another class or flag."""

    lesions: ChangeCounts
    boxes: ChangeCounts
    changed_lesions: FrozenSet[str] = frozenset()  # the segment IDs of the imported lesions that changed

    def text(self) -> str:
        return f"changes since import: lesions {self.lesions.text()}; VOC boxes {self.boxes.text()}"


# ----------------------------------------------------------------------------------------- VOC import


def patient_annotation_folder(voc_dir: Path, patient_id: str) -> Optional[Path]:
    """The folder of ``patient_id``'s VOC files: ``voc_dir/<A0001>`` under a dataset's ``Annotation/``,
    or ``voc_dir`` itself when it holds XML files (one patient's folder given directly); None otherwise."""
    voc_dir = Path(voc_dir)
    if patient_id:
        candidate = voc_dir / voc.patient_folder_name(patient_id)
        if candidate.is_dir():
            return candidate
    if voc_dir.is_dir() and any(p.suffix.lower() == ".xml" for p in voc_dir.iterdir()):
        return voc_dir
    return None


def import_voc_annotations(
    ct_node: slicer.vtkMRMLScalarVolumeNode,
    voc_dir: Path,
    pet_node: Optional[slicer.vtkMRMLScalarVolumeNode] = None,
    segmentation: Optional[slicer.vtkMRMLSegmentationNode] = None,
) -> AnnotationImport:
    """The VOC files of ``ct_node``'s patient under ``voc_dir`` as boxes on their CT slices and one lesion
    segment per group of boxes (see the module), in ``segmentation`` or a new one on the PET's grid (the
    CT's without a PET). Files whose name is no slice of this CT, and boxes cut to the image or skipped,
    are listed with the reason."""
    if not slice_sop_instance_uids(ct_node):
        raise InputError(
            f"CT volume {ct_node.GetName()!r} was not loaded from DICOM (no slice SOPInstanceUIDs): VOC boxes "
            "name their slice by its SOPInstanceUID, so they need the DICOM study"
        )
    if ct_node.GetAttribute(VOC_IMPORTED_ATTRIBUTE):
        raise InputError(
            f"VOC boxes were already imported onto {ct_node.GetName()!r} (from {voc_import_folder(ct_node)}); "
            "importing them again would put every box there twice"
        )
    patient_id = patient_id_of(ct_node)
    folder = patient_annotation_folder(Path(voc_dir), patient_id)
    if folder is None:
        raise InputError(
            f"{voc_dir}: no VOC files for {patient_id or ct_node.GetName()!r} (neither a folder "
            f"{voc.patient_folder_name(patient_id) if patient_id else '<patient>'}/ nor XML files in it)"
        )
    annotations, problems = voc.read_voc_folder(folder)
    first_lesion = _next_lesion_number(segmentation) if segmentation is not None else 1
    placed = add_box_nodes(annotations, ct_node, first_lesion=first_lesion)
    if not placed.nodes:  # nothing made: said as a refusal, with the first reasons
        reasons = "; ".join((problems + placed.skipped)[:3]) or "the files hold no box"
        raise InputError(
            f"{folder}: none of its {len(annotations)} VOC files gives a box on {ct_node.GetName()!r}: {reasons}"
        )
    keep_voc_originals(ct_node, _files_without_usable_boxes(folder, annotations))
    reference = pet_node if pet_node is not None else ct_node
    if segmentation is None:
        segmentation = segmentation_from_mask(_empty_mask_like(reference), f"{reference.GetName()} lesions")
    result = AnnotationImport(segmentation, boxes=placed.nodes, skipped=problems + placed.skipped, notes=placed.notes)
    result.segment_ids = _lesion_segments_for_boxes(segmentation, ct_node, placed.nodes, result.notes)
    _record_imported_segments(segmentation, result.segment_ids, reference)
    files = len({box.GetAttribute(SOP_INSTANCE_UID_ATTRIBUTE) for box in placed.nodes})
    result.notes.append(
        f"{len(placed.nodes)} VOC boxes from {files} files in {folder} imported onto {ct_node.GetName()!r} as "
        f"{len(result.segment_ids)} lesion(s) (boxes that overlap on the same or neighbouring slices are one lesion)"
    )
    return result


def _files_without_usable_boxes(folder: Path, annotations: Sequence[voc.VocAnnotation]) -> List[voc.VocAnnotation]:
    """The files of ``folder`` that :func:`voc.read_voc_folder` left out because none of their boxes was usable
    (an unknown class, say) but that parse: they are kept, so that writing back a box on their slice keeps
    their objects. A file that does not parse is not kept (a box on its slice replaces it, after a backup)."""
    read = {annotation.sop_instance_uid for annotation in annotations}
    found = []
    for path in sorted(p for p in folder.iterdir() if p.suffix.lower() == ".xml" and p.is_file()):
        if path.name[: -len(".xml")] in read:
            continue
        try:
            annotation, _ = voc.read_voc_file(path)
        except voc.VocError:
            continue
        found.append(annotation)
    return found


def _empty_mask_like(volume: slicer.vtkMRMLScalarVolumeNode) -> sitk.Image:
    from .volumes import grid_from_volume_node

    grid = grid_from_volume_node(volume)
    return grid.to_sitk(np.zeros(grid.shape, np.uint8))


def _next_lesion_number(segmentation: slicer.vtkMRMLSegmentationNode) -> int:
    content = segmentation.GetSegmentation()
    numbers = []
    for segment_id in segment_ids(segmentation):
        words = content.GetSegment(segment_id).GetName().split()
        if len(words) == 2 and words[0] == "Lesion" and words[1].isdigit():
            numbers.append(int(words[1]))
    return max(numbers, default=0) + 1


def _lesion_segments_for_boxes(
    segmentation: slicer.vtkMRMLSegmentationNode,
    ct_node: slicer.vtkMRMLScalarVolumeNode,
    boxes: Sequence[slicer.vtkMRMLMarkupsROINode],
    notes: List[str],
) -> List[str]:
    """One empty lesion segment per lesion number of ``boxes`` (named, coloured and classed as its boxes),
    the boxes linked to it; the import's snapshot names the segment as each box's lesion."""
    by_lesion: Dict[int, List[slicer.vtkMRMLMarkupsROINode]] = {}
    for box in boxes:
        by_lesion.setdefault(int(box.GetAttribute(LESION_ATTRIBUTE)), []).append(box)
    content = segmentation.GetSegmentation()
    created, lesion_of_key = [], {}
    for number in sorted(by_lesion):
        members = by_lesion[number]
        classes = Counter(box.GetAttribute(CLASS_ATTRIBUTE) for box in members)
        class_name = classes.most_common(1)[0][0]
        if len(classes) > 1:
            shown = ", ".join(f"{name} x{count}" for name, count in sorted(classes.items()))
            notes.append(
                f"Lesion {number}: its boxes have several classes ({shown}); the lesion is classed {class_name}"
            )
        # An ID of its own, as segmentations.py gives one: boxes are linked to segments by ID.
        segment_id = content.AddEmptySegment(f"PETCTLesions_{uuid.uuid4().hex[:16]}")
        segment = content.GetSegment(segment_id)
        segment.SetName(SEGMENT_NAME.format(number))
        segment.SetColor(*lesion_colour(number))
        set_segment_terminology(segment, LESION_TERMINOLOGY)
        segment.SetTag(STATUS_TAG, IMPORTED)
        segment.SetTag(CLASS_TAG, class_name)
        for box in members:
            box.SetAttribute(SEGMENT_ID_ATTRIBUTE, segment_id)
            colour_box(box, segment.GetColor())
            key = import_key(box)
            if key is not None:
                lesion_of_key[key] = segment_id
        created.append(segment_id)
    if lesion_of_key:
        set_imported_lesions(ct_node, lesion_of_key)
    return created


# ----------------------------------------------------------------------------------------- nnU-Net case


def open_nnunet_case(dataset_dir: Path, case_id: str, per_lesion: bool = True) -> OpenedCase:
    """Case ``case_id`` of the nnU-Net raw dataset ``dataset_dir`` as CT and PET (SUVbw) volume nodes
    (by its ``channel_names``) and one lesion segment per connected lesion of its label (status
    "imported"), grouped under a subject hierarchy folder named after the case. A test case (imagesTs,
    no label) opens with an empty segmentation."""
    dataset_dir = Path(dataset_dir)
    case = nnunet.read_case(dataset_dir, case_id)
    ct = volume_node_from_image(case.ct, f"{case.case_id} CT")
    pet = volume_node_from_image(case.pet, f"{case.case_id} PET SUVbw")
    mark_as_suv_bw(pet)
    label = case.label if case.label is not None else _empty_mask_like(pet)
    segmentation = segmentation_from_mask(label, f"{case.case_id} lesions", per_lesion)
    ids = mark_imported_segments(segmentation, pet)
    for node in (ct, pet):
        node.SetAttribute(NNUNET_DATASET_ATTRIBUTE, str(dataset_dir))
        node.SetAttribute(NNUNET_CASE_ATTRIBUTE, case.case_id)
    hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(slicer.mrmlScene)
    folder = hierarchy.CreateFolderItem(hierarchy.GetSceneItemID(), f"nnU-Net case {case.case_id}")
    for node in (ct, pet, segmentation):
        place_in_hierarchy(node, folder)
    notes = [
        f"case {case.case_id!r} of {dataset_dir}: {len(ids)} lesions"
        + ("" if case.label is not None else " (a test case without a label)"),
        "no DICOM: VOC export needs the DICOM study (VOC files name their CT slice by its SOPInstanceUID)",
    ]
    return OpenedCase(ct, pet, segmentation, case.label is not None, notes)


def nnunet_case_of(volume: slicer.vtkMRMLScalarVolumeNode) -> Optional[Tuple[Path, str]]:
    """(dataset folder, case id) of a volume opened from an nnU-Net case, else None."""
    dataset, case_id = volume.GetAttribute(NNUNET_DATASET_ATTRIBUTE), volume.GetAttribute(NNUNET_CASE_ATTRIBUTE)
    return (Path(dataset), case_id) if dataset and case_id else None


def list_nnunet_cases(dataset_dir: Path) -> List[str]:
    """The cases of an nnU-Net raw dataset folder: training cases, then test cases (imagesTs)."""
    dataset_dir = Path(dataset_dir)
    if not (dataset_dir / nnunet.DATASET_JSON).is_file():
        raise InputError(f"{dataset_dir}: not an nnU-Net raw dataset folder (no {nnunet.DATASET_JSON})")
    training = nnunet.list_cases(dataset_dir)
    return training + [case for case in nnunet.list_cases(dataset_dir, test=True) if case not in training]


# ----------------------------------------------------------------------------------------- snapshot


def mark_imported_segments(
    segmentation: slicer.vtkMRMLSegmentationNode, reference: slicer.vtkMRMLVolumeNode
) -> List[str]:
    """Every segment of a segmentation just made from a file's label: status "imported", and its voxels
    (on ``reference``'s grid) kept for :func:`changes_since_import`. Returns the segment IDs."""
    ids = segment_ids(segmentation)
    for segment_id in ids:
        segmentation.GetSegmentation().GetSegment(segment_id).SetTag(STATUS_TAG, IMPORTED)
    _record_imported_segments(segmentation, ids, reference)
    return ids


def _record_imported_segments(
    segmentation: slicer.vtkMRMLSegmentationNode, ids: Sequence[str], reference: slicer.vtkMRMLVolumeNode
) -> None:
    digests = _voxel_digests(segmentation, reference)
    content = segmentation.GetSegmentation()
    for segment_id in ids:
        content.GetSegment(segment_id).SetTag(IMPORTED_VOXELS_TAG, digests.get(segment_id, _NO_VOXELS))
    earlier = (segmentation.GetAttribute(IMPORTED_SEGMENTS_ATTRIBUTE) or "").split()
    segmentation.SetAttribute(IMPORTED_SEGMENTS_ATTRIBUTE, " ".join([*earlier, *ids]))


def _voxel_digests(segmentation: slicer.vtkMRMLSegmentationNode, reference: slicer.vtkMRMLVolumeNode) -> Dict[str, str]:
    """Each segment's voxels on ``reference``'s grid as a digest of its bounding box and mask in it
    (segments without voxels left out): equal digests, equal voxels."""
    lesion_map, _ = lesion_map_on(segmentation, reference)
    ids = segment_ids(segmentation)
    digests = {}
    for number, extent in enumerate(lesion_extents(lesion_map, len(ids)), start=1):
        if extent is None:
            continue
        mask = np.packbits(lesion_map[extent] == number)
        box = repr([(axis.start, axis.stop) for axis in extent]).encode()
        digests[ids[number - 1]] = hashlib.sha1(box + mask.tobytes()).hexdigest()
    return digests


def _imported_segment_ids(segmentation: Optional[slicer.vtkMRMLSegmentationNode]) -> List[str]:
    if segmentation is None:
        return []
    return (segmentation.GetAttribute(IMPORTED_SEGMENTS_ATTRIBUTE) or "").split()


def changes_since_import(
    ct_node: Optional[slicer.vtkMRMLScalarVolumeNode],
    pet_node: Optional[slicer.vtkMRMLScalarVolumeNode],
    segmentation: Optional[slicer.vtkMRMLSegmentationNode],
) -> Optional[ChangeSummary]:
    """Lesions and boxes added, removed, changed and unchanged since they were imported (None: nothing
    on these nodes came from files). Rejected lesions and their boxes count as removed: no export has them."""
    imported = imported_boxes(ct_node) if ct_node is not None else {}
    imported_segments = _imported_segment_ids(segmentation)
    if not imported and not imported_segments:
        return None
    rejected = rejected_segment_ids(segmentation) if segmentation is not None else set()
    touched: Set[str] = set()  # lesions with a box added, removed or changed
    boxes = {"added": 0, "changed": 0, "unchanged": 0}
    seen: Set[str] = set()
    current_lesions: Set[str] = set()
    for node in box_nodes_of(ct_node) if ct_node is not None and slice_sop_instance_uids(ct_node) else []:
        lesion = node.GetAttribute(SEGMENT_ID_ATTRIBUTE) or f"group {node.GetAttribute(LESION_ATTRIBUTE)}"
        if lesion in rejected:
            continue
        current_lesions.add(lesion)
        key = import_key(node)
        if key is None or key not in imported:
            boxes["added"] += 1
            touched.add(lesion)
            continue
        seen.add(key)
        before = imported[key]
        now = box_where_left(node, ct_node, None)
        same = not isinstance(now, str) and now[1] == before.box and now[1].source_object == before.box.source_object
        if same and lesion == before.lesion:
            boxes["unchanged"] += 1
        else:
            boxes["changed"] += 1
            touched.update((lesion, before.lesion))
    removed_boxes = [key for key in imported if key not in seen]
    touched.update(imported[key].lesion for key in removed_boxes)
    imported_lesions = set(imported_segments) | {value.lesion for value in imported.values()}
    if segmentation is not None:
        current_lesions |= {sid for sid in segment_ids(segmentation) if sid not in rejected}
    kept = imported_lesions & current_lesions
    changed = (kept & touched) | _segments_with_other_voxels(segmentation, kept - touched, pet_node or ct_node)
    lesions = ChangeCounts(
        added=len(current_lesions - imported_lesions),
        removed=len(imported_lesions - current_lesions),
        changed=len(changed),
        unchanged=len(kept - changed),
    )
    box_counts = ChangeCounts(boxes["added"], len(removed_boxes), boxes["changed"], boxes["unchanged"])
    return ChangeSummary(lesions, box_counts, frozenset(changed))


def _segments_with_other_voxels(
    segmentation: Optional[slicer.vtkMRMLSegmentationNode],
    candidates: Set[str],
    reference: Optional[slicer.vtkMRMLVolumeNode],
) -> Set[str]:
    """Those of ``candidates`` (imported segments still there) whose voxels differ from the imported ones."""
    if segmentation is None or reference is None:
        return set()
    content = segmentation.GetSegmentation()
    ids = [sid for sid in candidates if content.GetSegment(sid) is not None]
    if not ids:
        return set()
    digests = _voxel_digests(segmentation, reference)
    changed = set()
    for segment_id in ids:
        before = segment_tag(content.GetSegment(segment_id), IMPORTED_VOXELS_TAG)
        if before and digests.get(segment_id, _NO_VOXELS) != before:
            changed.add(segment_id)
    return changed


# ----------------------------------------------------------------------------------------- export back


def import_sources(
    ct_node: Optional[slicer.vtkMRMLScalarVolumeNode], pet_node: Optional[slicer.vtkMRMLScalarVolumeNode]
) -> List[str]:
    """Where the study's annotations were imported from (what :func:`export_back` writes over)."""
    sources = []
    folder = voc_import_folder(ct_node) if ct_node is not None else None
    if folder is not None:
        sources.append(f"VOC folder {folder}")
    case = nnunet_case_of(pet_node) if pet_node is not None else None
    if case is not None:
        sources.append(f"nnU-Net case {case[1]!r} of {case[0]}")
    return sources


def export_back(
    ct_node: slicer.vtkMRMLScalarVolumeNode,
    pet_node: Optional[slicer.vtkMRMLScalarVolumeNode],
    segmentation: Optional[slicer.vtkMRMLSegmentationNode],
    replace: bool = False,
) -> ExportReport:
    """The corrected annotations written back where they were imported from, and what changed since.

    VOC boxes go back into their folder (:func:`.export.write_voc_annotations`), the label into its
    nnU-Net case (:func:`write_label_back`). Files are replaced only with ``replace``, each kept first
    as ``<name>.bak-<time>`` beside itself; without it the report says what was left alone.
    """
    if not import_sources(ct_node, pet_node):
        raise InputError(
            f"nothing on {ct_node.GetName()!r} was imported from VOC files or an nnU-Net case, so there is no "
            "place to write back to: use the Export panel"
        )
    report = ExportReport(replace_hint=_REPLACE_HINT)
    summary = changes_since_import(ct_node, pet_node, segmentation)
    folder = voc_import_folder(ct_node)
    nodes = StudyNodes(patient_id_of(ct_node) or ct_node.GetName(), "", ct_node, pet_node, segmentation)
    if folder is not None:
        annotations, skipped = kept_voc_annotations(nodes)
        report.skipped.extend(skipped)
        write_voc_annotations(nodes, annotations, folder, report, replace)
    if pet_node is not None and nnunet_case_of(pet_node) is not None:
        write_label_back(pet_node, segmentation, report, replace)
    if summary is not None:
        report.notes.append(summary.text())
    return report


def write_label_back(
    pet_node: slicer.vtkMRMLScalarVolumeNode,
    segmentation: Optional[slicer.vtkMRMLSegmentationNode],
    report: ExportReport,
    replace: bool = False,
) -> None:
    """The kept lesions as the label of the nnU-Net case ``pet_node`` was opened from, in place.

    Only the label is written: the CT and PET files are the annotator's input, left as they are (a
    rewrite would round a float CT to int16). The replaced label is kept as ``<name>.bak-<time>``; the
    new one appears whole or not at all (:func:`fileio.atomic_output`). A test case (no label, images in
    imagesTs) is refused: a label for it belongs in another dataset (the Export panel)."""
    found = nnunet_case_of(pet_node)
    if found is None:
        raise InputError(f"PET volume {pet_node.GetName()!r} was not opened from an nnU-Net case")
    dataset, case_id = found
    paths = nnunet.case_paths(dataset, case_id, suffixes=nnunet.channel_suffixes(dataset))
    if not paths["label"].is_file():
        report.skipped.append(
            f"case {case_id!r} of {dataset} has no label file ({paths['label']}), e.g. a test case in imagesTs; "
            "export it into another dataset instead"
        )
        return
    if segmentation is None:
        report.skipped.append(f"case {case_id!r}: no lesion segmentation to write as its label")
        return
    target = paths["label"]
    if not replace:
        report.skipped.append(
            f"{target}: already exists; refusing to overwrite it ({report.replace_hint.format('it')})"
        )
        return
    with without_rejected(segmentation) as kept:
        label = mask_on(kept, pet_node)
    stamp = backup_stamp()
    try:
        backup = back_up(target, stamp)
        with atomic_output(target, overwrite=True) as tmp:
            write_nifti_gz_files({tmp: label})
    except (OSError, RuntimeError) as error:  # e.g. a full disk: the label is as it was
        report.failed.append(f"case {case_id!r}: cannot write its label {target}: {error}")
        return
    report.written.append(str(target))
    report.notes.append(
        f"case {case_id!r}: the replaced label is kept as {backup.name}; its CT and PET files are left as they are"
    )
