"""``petct-lesions convert``: DICOM study + annotations -> Slicer nodes -> VOC and/or nnU-Net.

Every study goes through the same representation a user edits in Slicer (volume nodes,
one segment per lesion, ROI boxes), and the exports read from there, so a conversion is an
import-export round trip through the module's own code. A VOC box never silently becomes a
voxel label: boxes are written as nnU-Net labels only when asked, and the report says so.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np
import SimpleITK as sitk
import slicer

from .. import nnunet, voc
from ..dicom_index import IndexedStudy, scan_paths
from ..fileio import OutputExistsError
from ..geometry import Grid
from ..resampling import resample_ct_to_pet, resample_label_to_grid
from ..study import load_series_image, load_study
from .boxes import add_box_nodes, box_nodes_of, voc_from_box_nodes, voc_from_segmentation
from .headless import ensure_scene, in_slicer_application, reset_scene
from .segmentations import mask_on, segmentation_from_mask
from .study_nodes import add_series_volume, add_study_nodes, mark_as_suv_bw, slice_sop_instance_uids
from .volumes import grid_from_volume_node, image_from_volume_node, volume_node_from_image

NNUNET_DATASET_NAME = "Dataset901_PETCTLesionsConverted"


@dataclass
class ConvertOptions:
    voc_dir: Optional[Path] = None  # Annotation root (Annotation/<A0001>/) or one patient's folder
    nnunet_dataset: Optional[Path] = None  # dataset to import a case from
    case_id: Optional[str] = None  # the case to import
    per_lesion: bool = True  # one segment per connected lesion (else one segment)
    voc_from_segmentation: bool = False  # also write the segments' boxes as VOC
    boxes_as_labels: bool = False  # no segmentation: write filled VOC boxes as the nnU-Net label
    export_voc: bool = True
    export_nnunet: bool = True
    overwrite: bool = False


@dataclass
class ConvertReport:
    written: List[str] = field(default_factory=list)
    skipped: List[str] = field(default_factory=list)
    notes: List[str] = field(default_factory=list)

    def text(self) -> str:
        lines = [f"wrote {path}" for path in self.written]
        lines += [f"note: {note}" for note in self.notes]
        lines += [f"skipped: {reason}" for reason in self.skipped]
        return "\n".join(lines) if lines else "nothing to do"


@dataclass
class _StudyNodes:
    patient_id: str
    case_id: str
    ct: slicer.vtkMRMLScalarVolumeNode
    pet: Optional[slicer.vtkMRMLScalarVolumeNode]
    segmentation: Optional[slicer.vtkMRMLSegmentationNode] = None


def convert(dicom_paths: Sequence[Path], out_dir: Path, options: ConvertOptions) -> ConvertReport:
    """Convert every study under ``dicom_paths`` (or only the nnU-Net case when no DICOM is given)."""
    ensure_scene()
    report = ConvertReport()
    out_dir = Path(out_dir)
    if not dicom_paths:
        if options.nnunet_dataset is None or options.case_id is None:
            raise ValueError("give --dicom, or --nnunet DATASET --case ID")
        nodes = _nodes_from_nnunet_case(options, report)
        _export(nodes, out_dir, options, report)
        return report
    scan = scan_paths(dicom_paths)
    report.skipped.extend(f"{problem.path}: {problem.message}" for problem in scan.problems)
    if not scan.studies:
        raise ValueError(f"no DICOM image series under {', '.join(str(p) for p in dicom_paths)}")
    for study in scan.studies:
        for nodes in _nodes_from_dicom_study(study, scan, report):
            _import_annotations(nodes, options, report)
            _export(nodes, out_dir, options, report)
        _remove_study_nodes()  # batch over many patients: memory stays that of one study
    return report


def _remove_study_nodes() -> None:
    if not in_slicer_application():  # never clear a user's scene inside Slicer
        reset_scene()


# ----------------------------------------------------------------------------------------- loading


def _nodes_from_dicom_study(study: IndexedStudy, scan, report: ConvertReport) -> List[_StudyNodes]:
    """The study as nodes: each PET with its CT, or (no PET) each CT alone for its VOC boxes."""
    pairings = [p for p in scan.pairings if p.study_uid == study.study_uid]
    result = []
    for pairing in pairings:
        if pairing.ct is None:
            report.skipped.append(f"{pairing.pet.label}: {pairing.rule}")
            continue
        try:
            loaded = load_study([], scan=scan, study_uid=study.study_uid, pet_series_uid=pairing.pet.series_uid)
        except ValueError as error:
            report.skipped.append(str(error))
            continue
        report.notes.extend(loaded.warnings)
        ct, pet = add_study_nodes(loaded)
        case_id = nnunet.case_id_for_study(study.patient_id, study.study_uid, study.study_date)
        result.append(_StudyNodes(study.patient_id, case_id, ct, pet))
    if not pairings:
        for series in (s for s in study.series if s.modality == "CT"):
            try:
                image, info = load_series_image(series)
            except ValueError as error:
                report.skipped.append(str(error))
                continue
            ct = add_series_volume(image, info, study.patient_id, study.study_uid, f"{study.patient_id} CT")
            case_id = nnunet.case_id_for_study(study.patient_id, study.study_uid, study.study_date)
            result.append(_StudyNodes(study.patient_id, case_id, ct, None))
    return result


def _nodes_from_nnunet_case(options: ConvertOptions, report: ConvertReport) -> _StudyNodes:
    case = nnunet.read_case(options.nnunet_dataset, options.case_id)
    ct = volume_node_from_image(case.ct, f"{case.case_id} CT")
    pet = volume_node_from_image(case.pet, f"{case.case_id} PET SUVbw")
    mark_as_suv_bw(pet)
    nodes = _StudyNodes(case.case_id, case.case_id, ct, pet)
    if case.label is not None:
        nodes.segmentation = segmentation_from_mask(case.label, f"{case.case_id} lesions", options.per_lesion)
    report.notes.append(
        f"no DICOM: VOC export impossible (no slice SOPInstanceUIDs); case {case.case_id!r} kept its id"
    )
    return nodes


def _import_annotations(nodes: _StudyNodes, options: ConvertOptions, report: ConvertReport) -> None:
    if options.voc_dir is not None:
        folder = _patient_annotation_folder(Path(options.voc_dir), nodes.patient_id)
        if folder is None:
            report.skipped.append(f"{options.voc_dir}: no annotation folder for {nodes.patient_id}")
        else:
            annotations, problems = voc.read_voc_folder(folder)
            report.skipped.extend(problems)
            imported = add_box_nodes(annotations, nodes.ct)
            report.skipped.extend(imported.skipped)
            report.notes.append(f"{nodes.patient_id}: {len(imported.nodes)} VOC boxes imported from {folder}")
    if options.nnunet_dataset is not None and options.case_id is not None:
        if nodes.pet is None:
            report.skipped.append(f"{nodes.patient_id}: no PET, so no PET grid for nnU-Net case {options.case_id!r}")
            return
        case = nnunet.read_case(options.nnunet_dataset, options.case_id)
        if case.label is None:
            report.skipped.append(f"nnU-Net case {options.case_id!r} has no label")
            return
        pet_grid, label_grid = grid_from_volume_node(nodes.pet), Grid.from_sitk(case.label)
        if not label_grid.same_as(pet_grid, tolerance_mm=1e-3):
            raise ValueError(
                f"nnU-Net label of case {options.case_id!r} ({label_grid.describe()}) is not on the PET grid of "
                f"{nodes.patient_id} ({pet_grid.describe()}): it belongs to another study or was resampled"
            )
        nodes.segmentation = segmentation_from_mask(case.label, f"{nodes.patient_id} lesions", options.per_lesion)


def _patient_annotation_folder(voc_dir: Path, patient_id: str) -> Optional[Path]:
    candidate = voc_dir / voc.patient_folder_name(patient_id)
    if candidate.is_dir():
        return candidate
    if voc_dir.is_dir() and any(p.suffix.lower() == ".xml" for p in voc_dir.iterdir()):
        return voc_dir  # one patient's folder given directly
    return None


# ----------------------------------------------------------------------------------------- export


def _export(nodes: _StudyNodes, out_dir: Path, options: ConvertOptions, report: ConvertReport) -> None:
    if options.export_voc:
        _export_voc(nodes, out_dir, options, report)
    if options.export_nnunet:
        _export_nnunet(nodes, out_dir, options, report)


def _export_voc(nodes: _StudyNodes, out_dir: Path, options: ConvertOptions, report: ConvertReport) -> None:
    if not slice_sop_instance_uids(nodes.ct):
        return
    default_class = voc.histology_class(nodes.patient_id)
    annotations, skipped = voc_from_box_nodes(box_nodes_of(nodes.ct), nodes.ct, default_class)
    report.skipped.extend(skipped)
    if options.voc_from_segmentation and nodes.segmentation is not None:
        if default_class is None:
            report.skipped.append(f"{nodes.patient_id}: no histology letter in the Patient ID to class segment boxes")
        else:
            annotations = _merge(annotations, voc_from_segmentation(nodes.segmentation, nodes.ct, default_class))
    if not annotations:
        report.skipped.append(f"{nodes.patient_id}: no VOC boxes to write")
        return
    folder = out_dir / "Annotation" / voc.patient_folder_name(nodes.patient_id)
    for annotation in annotations:
        annotation.folder = folder.name
    try:
        written = voc.write_voc_folder(annotations, folder, overwrite=options.overwrite)
    except OutputExistsError as error:
        report.skipped.append(f"{error} (use --overwrite to replace them)")
        return
    report.written.append(f"{folder}/ ({len(written)} VOC XML files)")


def _merge(first: List[voc.VocAnnotation], second: List[voc.VocAnnotation]) -> List[voc.VocAnnotation]:
    by_uid = {a.sop_instance_uid: a for a in first}
    for annotation in second:
        if annotation.sop_instance_uid in by_uid:
            by_uid[annotation.sop_instance_uid].boxes.extend(annotation.boxes)
        else:
            by_uid[annotation.sop_instance_uid] = annotation
    return list(by_uid.values())


def _export_nnunet(nodes: _StudyNodes, out_dir: Path, options: ConvertOptions, report: ConvertReport) -> None:
    if nodes.pet is None:
        report.skipped.append(f"{nodes.patient_id}: CT only, no nnU-Net case (it needs the PET)")
        return
    if nodes.segmentation is not None:
        label = mask_on(nodes.segmentation, nodes.pet)
    elif options.boxes_as_labels and box_nodes_of(nodes.ct):
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
    dataset = out_dir / "nnUNet_raw" / NNUNET_DATASET_NAME
    try:
        paths = nnunet.write_case(dataset, case, overwrite=options.overwrite)
    except nnunet.NnUNetError as error:
        report.skipped.append(
            f"{error} (use --overwrite to replace it)" if "already exists" in str(error) else str(error)
        )
        return
    report.written.extend(str(path) for path in paths.values())


def export_nnunet_case(
    ct_node: slicer.vtkMRMLScalarVolumeNode, pet_node: slicer.vtkMRMLScalarVolumeNode, label: sitk.Image, case_id: str
) -> nnunet.NnUNetCase:
    """An autoPET case from the study's nodes: CT resampled onto the PET grid, PET in SUV, the label."""
    pet = image_from_volume_node(pet_node, sitk.sitkFloat32)
    ct = image_from_volume_node(ct_node)
    pet_grid = Grid.from_sitk(pet)
    ct_on_pet = ct if Grid.from_sitk(ct).same_as(pet_grid) else resample_ct_to_pet(ct, pet_grid)
    return nnunet.NnUNetCase(nnunet.check_case_id(case_id), ct_on_pet, pet, label)


def _filled_boxes_on_pet_grid(nodes: _StudyNodes) -> sitk.Image:
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
