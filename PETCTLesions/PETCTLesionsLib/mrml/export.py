"""A study's annotations in the scene -> VOC XML (Lung-PET-CT-Dx layout) and an nnU-Net case (autoPET layout).

Used by the module's Export panel and by ``petct-lesions convert``: both read what the user
sees (volume nodes, lesion segments, box markups), so an export is exactly the corrected
annotations. Lesions the user rejected in review, and their boxes, are left out. A VOC box
never silently becomes a voxel label: filled boxes are written as an nnU-Net label only when
asked, and the report says so. Every file is written atomically and never over a user's file
unless ``overwrite``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, List, Optional

import numpy as np
import SimpleITK as sitk
import slicer

from ..errors import InputError, OutputExistsError
from ..formats import nnunet, voc
from ..resampling import resample_label_to_grid
from .boxes import SEGMENT_ID_ATTRIBUTE, box_nodes_of, voc_from_box_nodes, voc_from_segmentation
from .review import rejected_segment_ids, without_rejected
from .segmentations import mask_on
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
    annotations, skipped = voc_from_box_nodes(list(_kept_boxes(nodes)), nodes.ct, default_class)
    report.skipped.extend(skipped)
    if from_segmentation and nodes.segmentation is not None:
        if default_class is None:
            report.skipped.append(f"{nodes.patient_id}: no histology letter in the Patient ID to class segment boxes")
        else:
            with without_rejected(nodes.segmentation) as kept:
                annotations = _merge(annotations, voc_from_segmentation(kept, nodes.ct, default_class))
    if not annotations:
        report.skipped.append(f"{nodes.patient_id}: no VOC boxes to write from {nodes.ct_label}")
        return
    folder = Path(annotation_root) / voc.patient_folder_name(nodes.patient_id)
    for annotation in annotations:
        annotation.folder = folder.name
    try:
        written = voc.write_voc_folder(annotations, folder, overwrite=overwrite)
    except OutputExistsError as error:
        report.skipped.append(f"{error} ({report.replace_hint.format('them')})")
        return
    except (OSError, voc.VocError) as error:  # e.g. a full disk, a slice UID that cannot name a file
        report.failed.append(str(error))
        return
    report.written.append(f"{folder}/ ({len(written)} VOC XML files from {nodes.ct_label})")


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
    case = export_nnunet_case(nodes.ct, nodes.pet, label, nodes.case_id)
    try:
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
