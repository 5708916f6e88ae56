"""A study's annotations in the scene -> VOC XML (Lung-PET-CT-Dx layout) and an nnU-Net case (autoPET layout).

Used by the module's Export panel and by ``petct-lesions convert``: both read what the user
sees (volume nodes, lesion segments, box markups), so an export is exactly the corrected
annotations. Lesions the user rejected in review, and their boxes, are left out. A VOC box
never silently becomes a voxel label: filled boxes are written as an nnU-Net label only when
asked, and the report says so. Every file is written atomically and never over a user's file
unless ``overwrite``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, List, Optional, Tuple

import numpy as np
import SimpleITK as sitk
import slicer

from ..errors import InputError, OutputExistsError
from ..fileio import BACKUP_MARK, back_up, backup_stamp
from ..formats import nnunet, voc
from ..resampling import resample_label_to_grid
from .boxes import (
    SEGMENT_ID_ATTRIBUTE,
    box_nodes_of,
    emptied_original_annotations,
    voc_from_box_nodes,
    voc_from_segmentation,
    voc_import_folder,
)
from .review import IMPORTED, STATUS_TAG, rejected_segment_ids, segment_tag, without_rejected
from .segmentations import lesion_map_on, mask_on, segment_ids
from .study_nodes import patient_id_of, slice_sop_instance_uids, study_case_id, study_images
from .volumes import grid_from_volume_node


@dataclass
class ExportReport:
    written: List[str] = field(default_factory=list)
    skipped: List[str] = field(default_factory=list)
    notes: List[str] = field(default_factory=list)
    failed: List[str] = field(default_factory=list)  # exports that were due but could not be written, and why
    # How a refusal to replace files says what to do: the Export panel's check box, or convert's --overwrite.
    replace_hint: str = "allow overwriting to replace {}"

    def text(self) -> str:
        lines = [f"wrote {path}" for path in self.written]
        lines += [f"note: {note}" for note in self.notes]
        lines += [f"skipped: {reason}" for reason in self.skipped]
        lines += [f"NOT written: {reason}" for reason in self.failed]
        return "\n".join(lines) if lines else "nothing to do"


@dataclass
class StudyNodes:
    """One study in the scene: what an export reads."""

    patient_id: str
    case_id: str
    ct: slicer.vtkMRMLScalarVolumeNode
    pet: Optional[slicer.vtkMRMLScalarVolumeNode]
    segmentation: Optional[slicer.vtkMRMLSegmentationNode] = None
    ct_series: str = ""  # how messages name the CT series (SeriesInfo.label): a patient may have several

    @property
    def ct_label(self) -> str:
        return self.ct_series or self.ct.GetName()


def export_study(
    ct_node: slicer.vtkMRMLScalarVolumeNode,
    pet_node: Optional[slicer.vtkMRMLScalarVolumeNode],
    segmentation: Optional[slicer.vtkMRMLSegmentationNode],
    nnunet_dataset: Optional[Path] = None,
    voc_root: Optional[Path] = None,
    overwrite: bool = False,
    voc_from_segmentation: bool = False,
) -> ExportReport:
    """The Export panel: the study's kept lesions as a case of ``nnunet_dataset`` and its boxes under ``voc_root``.

    The case id and the VOC patient folder come from the study's DICOM identity (Patient ID,
    StudyInstanceUID, StudyDate); either export is skipped when its folder is not given.
    """
    if nnunet_dataset is None and voc_root is None:
        raise InputError("choose an nnU-Net dataset folder, a VOC folder, or both")
    nodes = StudyNodes(
        patient_id_of(ct_node) or ct_node.GetName(), study_case_id(ct_node), ct_node, pet_node, segmentation
    )
    report = ExportReport()
    if voc_root is not None:
        export_voc(nodes, Path(voc_root), report, overwrite, voc_from_segmentation)
    if nnunet_dataset is not None:
        export_nnunet(nodes, Path(nnunet_dataset), report, overwrite)
    return report


def export_voc(
    nodes: StudyNodes,
    annotation_root: Path,
    report: ExportReport,
    overwrite: bool = False,
    from_segmentation: bool = False,
) -> None:
    """The CT's box markups (and, if asked, every kept segment's boxes) as ``annotation_root/<A0001>/<UID>.xml``."""
    if not slice_sop_instance_uids(nodes.ct):
        report.skipped.append(f"{nodes.ct.GetName()}: not loaded from DICOM (no slice SOPInstanceUIDs), so no VOC")
        return
    default_class = voc.histology_class(nodes.patient_id)
    annotations, skipped = kept_voc_annotations(nodes)
    report.skipped.extend(skipped)
    if from_segmentation and nodes.segmentation is not None:
        if default_class is None:
            report.skipped.append(f"{nodes.patient_id}: no histology letter in the Patient ID to class segment boxes")
        else:
            with without_rejected(nodes.segmentation) as kept:
                annotations = _merge(annotations, voc_from_segmentation(kept, nodes.ct, default_class))
    folder = Path(annotation_root) / voc.patient_folder_name(nodes.patient_id)
    write_voc_annotations(nodes, annotations, folder, report, overwrite)


def write_voc_annotations(
    nodes: StudyNodes, annotations: List[voc.VocAnnotation], folder: Path, report: ExportReport, overwrite: bool
) -> None:
    """Write ``annotations`` (one per CT slice) into ``folder``; a replaced file is kept beside itself first
    (``<name>.bak-<time>``, :func:`fileio.back_up`).

    Written back into the folder the CT's boxes were imported from, a slice the annotator did not change
    keeps its file untouched, and the file of a slice whose boxes are all gone is set aside as a backup
    (or, when it held objects the import skipped, written with those alone). Files written from an
    imported one keep its fields (:func:`voc.keep_fields_text`).
    """
    back_into_source = same_folder(voc_import_folder(nodes.ct), folder)
    removed: List[Path] = []
    if back_into_source:
        for emptied in emptied_original_annotations(annotations, nodes.ct):
            if voc.objects_to_write(emptied):
                annotations = [*annotations, emptied]  # it keeps objects the import skipped
            else:
                removed.append(folder / f"{emptied.sop_instance_uid}.xml")
        unchanged = [a for a in annotations if voc.is_unchanged(a) and (folder / f"{a.sop_instance_uid}.xml").is_file()]
        annotations = [a for a in annotations if not any(a is same for same in unchanged)]
        if unchanged:
            report.notes.append(f"{folder}/: {len(unchanged)} VOC XML files unchanged since import, left as they are")
        removed = [path for path in removed if path.is_file()]
    if not annotations and not removed:
        if not back_into_source:
            report.skipped.append(f"{nodes.patient_id}: no VOC boxes to write from {nodes.ct_label}")
        return
    for annotation in annotations:
        if annotation.keep_fields_of is None:
            annotation.folder = folder.name
    replaced = [folder / f"{a.sop_instance_uid}.xml" for a in annotations]
    replaced = [path for path in replaced if path.exists()] + removed
    if replaced and not overwrite:
        shown = ", ".join(str(path) for path in replaced[:3]) + (
            f" and {len(replaced) - 3} more" if len(replaced) > 3 else ""
        )
        report.skipped.append(
            f"{shown}: already exist; refusing to overwrite them ({report.replace_hint.format('them')})"
        )
        return
    stamp = backup_stamp()
    try:
        # Every file this replaces or removes is copied aside before the first one changes: a failure
        # part-way (a full disk) then loses none of them.
        backups = [back_up(path, stamp) for path in replaced]
        written = voc.write_voc_folder(annotations, folder, overwrite=overwrite) if annotations else []
    except OutputExistsError as error:  # a file that appeared since the check above
        report.skipped.append(f"{error} ({report.replace_hint.format('them')})")
        return
    except (OSError, voc.VocError) as error:  # e.g. a full disk, a slice UID that cannot name a file
        report.failed.append(str(error))
        return
    if written:
        report.written.append(f"{folder}/ ({len(written)} VOC XML files from {nodes.ct_label})")
    gone = _remove_emptied_files(removed, report)
    if gone:
        report.notes.append(f"{folder}/: {gone} VOC XML files of slices left without boxes removed")
    if backups:
        report.notes.append(
            f"{folder}/: the {len(backups)} replaced or removed files are kept as <name>{BACKUP_MARK}{stamp}"
        )


def _remove_emptied_files(paths: List[Path], report: ExportReport) -> int:
    """Remove the files (already backed up) of slices left without boxes; one that cannot be removed is
    reported as failed, saying that the rest was written (its boxes would come back on the next import).
    Returns how many were removed."""
    removed = 0
    for path in paths:
        try:
            path.unlink()
        except OSError as error:
            report.failed.append(
                f"{path}: its slice has no box left, but the file cannot be removed ({error.strerror or error}); "
                "the other VOC files were written"
            )
            continue
        removed += 1
    return removed


def same_folder(first: Optional[Path], second: Path) -> bool:
    """True when both name the same folder (links resolved); False when ``first`` is None."""
    return first is not None and os.path.realpath(first) == os.path.realpath(second)


def kept_voc_annotations(nodes: StudyNodes) -> Tuple[List[voc.VocAnnotation], List[str]]:
    """The boxes of the lesions not rejected, one annotation per CT slice (:func:`.boxes.voc_from_box_nodes`)."""
    return voc_from_box_nodes(list(_kept_boxes(nodes)), nodes.ct, voc.histology_class(nodes.patient_id))


def _kept_boxes(nodes: StudyNodes) -> Iterator[slicer.vtkMRMLMarkupsROINode]:
    rejected = rejected_segment_ids(nodes.segmentation) if nodes.segmentation is not None else set()
    for box in box_nodes_of(nodes.ct):
        if box.GetAttribute(SEGMENT_ID_ATTRIBUTE) not in rejected:
            yield box


def _merge(first: List[voc.VocAnnotation], second: List[voc.VocAnnotation]) -> List[voc.VocAnnotation]:
    by_uid = {a.sop_instance_uid: a for a in first}
    for annotation in second:
        if annotation.sop_instance_uid in by_uid:
            by_uid[annotation.sop_instance_uid].boxes.extend(annotation.boxes)
        else:
            by_uid[annotation.sop_instance_uid] = annotation
    return list(by_uid.values())


def export_nnunet(
    nodes: StudyNodes,
    dataset_dir: Path,
    report: ExportReport,
    overwrite: bool = False,
    boxes_as_labels: bool = False,
) -> None:
    """The study as case ``nodes.case_id`` of the nnU-Net dataset ``dataset_dir`` (CT on the PET grid, SUV, label)."""
    if nodes.pet is None:
        report.skipped.append(f"{nodes.patient_id}: CT only, no nnU-Net case from {nodes.ct_label} (it needs the PET)")
        return
    if nodes.segmentation is not None:
        with without_rejected(nodes.segmentation) as kept:
            label = mask_on(kept, nodes.pet)
    elif boxes_as_labels and box_nodes_of(nodes.ct):
        label = _filled_boxes_on_pet_grid(nodes)
        report.notes.append(
            f"{nodes.case_id}: the nnU-Net label is the VOC boxes filled (rectangles, not lesion outlines)"
        )
    else:
        report.skipped.append(
            f"{nodes.patient_id}: no lesion segmentation for an nnU-Net label "
            "(give --nnunet DATASET --case ID, or --boxes-as-labels to write filled VOC boxes)"
        )
        return
    if nodes.segmentation is not None:
        _note_lesions_without_voxels(nodes, report)
        if not sitk.GetArrayViewFromImage(label).any() and any(_kept_boxes(nodes)) and not boxes_as_labels:
            report.skipped.append(
                f"{nodes.patient_id}: its lesions have VOC boxes but no voxels, so no nnU-Net label "
                "(draw them in the Segment Editor, or write filled boxes as labels)"
            )
            return
    case = export_nnunet_case(nodes.ct, nodes.pet, label, nodes.case_id)
    targets = list(nnunet.case_paths(Path(dataset_dir), case.case_id).values())
    existing = [path for path in targets if path.exists()]
    try:
        if existing and overwrite:
            stamp = backup_stamp()
            for path in existing:
                back_up(path, stamp)
            report.notes.append(f"case {case.case_id!r}: the replaced files are kept as <name>{BACKUP_MARK}{stamp}")
        paths = nnunet.write_case(Path(dataset_dir), case, overwrite=overwrite)
    except OutputExistsError as error:
        report.skipped.append(f"{error} ({report.replace_hint.format('it')})")
        return
    except nnunet.NnUNetError as error:  # e.g. a full disk
        report.failed.append(str(error))
        return
    except OSError as error:  # dataset.json, written after the case's files (e.g. a full disk there)
        report.failed.append(
            f"case {nodes.case_id!r}: its images are written under {dataset_dir}, but not listed in its "
            f"dataset.json: {error}"
        )
        return
    report.written.extend(str(path) for path in paths.values())


def _note_lesions_without_voxels(nodes: StudyNodes, report: ExportReport) -> None:
    """A lesion imported from VOC boxes has no voxels until drawn: the label does not hold it, and says so."""
    assert nodes.segmentation is not None
    content = nodes.segmentation.GetSegmentation()
    ids = segment_ids(nodes.segmentation)
    imported = {sid for sid in ids if segment_tag(content.GetSegment(sid), STATUS_TAG) == IMPORTED}
    boxed = {box.GetAttribute(SEGMENT_ID_ATTRIBUTE) for box in _kept_boxes(nodes)} & imported
    if not boxed:
        return  # only lesions imported with boxes can lack voxels: no second rasterisation for the others
    lesion_map, _ = lesion_map_on(nodes.segmentation, nodes.pet)
    present = set(np.unique(lesion_map).tolist())
    for number, segment_id in enumerate(ids, start=1):
        if segment_id in boxed and number not in present:
            report.notes.append(
                f"{nodes.case_id}: {content.GetSegment(segment_id).GetName()} has VOC boxes but no voxels; "
                "it is not in the nnU-Net label"
            )


def export_nnunet_case(
    ct_node: slicer.vtkMRMLScalarVolumeNode, pet_node: slicer.vtkMRMLScalarVolumeNode, label: sitk.Image, case_id: str
) -> nnunet.NnUNetCase:
    """An autoPET case from the study's nodes: CT resampled onto the PET grid, PET in SUV, the label."""
    ct_on_pet, pet = study_images(ct_node, pet_node)
    return nnunet.NnUNetCase(nnunet.check_case_id(case_id), ct_on_pet, pet, label)


def _filled_boxes_on_pet_grid(nodes: StudyNodes) -> sitk.Image:
    annotations, _ = voc_from_box_nodes(box_nodes_of(nodes.ct), nodes.ct, default_class="box")
    ct_grid = grid_from_volume_node(nodes.ct)
    slice_of = {uid: k for k, uid in enumerate(slice_sop_instance_uids(nodes.ct))}
    filled = np.zeros(ct_grid.shape, np.uint8)
    for annotation in annotations:
        k = slice_of[annotation.sop_instance_uid]
        for box in annotation.boxes:
            c0, r0, c1, r1 = box.to_pixel_ranges()
            filled[k, r0 : r1 + 1, c0 : c1 + 1] = 1
    return resample_label_to_grid(ct_grid.to_sitk(filled), grid_from_volume_node(nodes.pet))
