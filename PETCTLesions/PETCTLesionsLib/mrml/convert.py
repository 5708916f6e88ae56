"""``petct-lesions convert``: DICOM study + annotations -> Slicer nodes -> VOC and/or nnU-Net.

Every study goes through the same representation a user edits in Slicer (volume nodes,
one segment per lesion, ROI boxes), and the exports read from there, so a conversion is an
import-export round trip through the module's own code (the exports live in ``export.py``,
shared with the module's Export panel).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Set, Tuple

import slicer

from ..dicom.index import IndexedStudy, scan_paths
from ..dicom.pairing import pair_pet_with_ct
from ..errors import InputError
from ..formats import nnunet, voc
from ..geometry import Grid
from ..study import load_series_image, load_study
from .annotations import changes_since_import, mark_imported_segments, open_nnunet_case, patient_annotation_folder
from .boxes import add_box_nodes, voc_import_folder
from .export import ExportReport, StudyNodes, export_nnunet, export_voc, same_folder
from .headless import ensure_scene, in_slicer_application, reset_scene
from .segmentations import segmentation_from_mask
from .study_nodes import NNUNET_CASE_ATTRIBUTE, add_series_volume, add_study_nodes, slice_sop_instance_uids
from .volumes import grid_from_volume_node

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


def convert(dicom_paths: Sequence[Path], out_dir: Path, options: ConvertOptions) -> ExportReport:
    """Convert every study under ``dicom_paths`` (or only the nnU-Net case when no DICOM is given)."""
    ensure_scene()
    report = ExportReport(replace_hint="--overwrite replaces {}")  # as the other commands say it
    out_dir = Path(out_dir)
    if not dicom_paths:
        if options.nnunet_dataset is None or options.case_id is None:
            raise InputError("give --dicom, or --nnunet DATASET --case ID")
        nodes = _nodes_from_nnunet_case(options, report)
        _export(nodes, out_dir, options, report)
        return report
    scan = scan_paths(dicom_paths)
    report.skipped.extend(f"{problem.path}: {problem.message}" for problem in scan.problems)
    if not scan.studies:
        raise InputError(f"no DICOM image series under {', '.join(str(p) for p in dicom_paths)}")
    voc_files = _PatientAnnotations(options.voc_dir, report)
    for study in scan.studies:
        for nodes in _nodes_from_dicom_study(study, scan, report, voc_files.uids(study.patient_id)):
            _import_annotations(nodes, options, report, voc_files)
            _export(nodes, out_dir, options, report)
        _remove_study_nodes()  # batch over many patients: memory stays that of one study
    voc_files.report_unplaced()
    return report


def _remove_study_nodes() -> None:
    if not in_slicer_application():  # never clear a user's scene inside Slicer
        reset_scene()


# ----------------------------------------------------------------------------------------- loading


def _nodes_from_dicom_study(
    study: IndexedStudy, scan, report: ExportReport, annotated_uids: Set[str] = frozenset()
) -> List[StudyNodes]:
    """The study as nodes: its PET with its CT, or (no PET) each CT alone for its VOC boxes.

    A CT series that holds annotated slices (``annotated_uids``) but is not the one paired with
    the PET (a study with a diagnostic and a low-dose CT, say) is loaded alone as well, so that
    its boxes are not lost.
    """
    pairings = pair_pet_with_ct(scan.studies, study.study_uid)
    result = []
    loaded_cts: Set[str] = set()
    for pairing in pairings:
        if pairing.ct is None:
            report.skipped.append(f"{pairing.pet.label}: {pairing.rule}")
            continue
        if not pairing.preferred:  # one case per study: its case id names the study
            report.skipped.append(f"{pairing.pet.label}: {pairing.not_preferred_because}")
            continue
        try:
            loaded = load_study([], scan=scan, study_uid=study.study_uid, pet_series_uid=pairing.pet.series_uid)
        except InputError as error:  # a study given but unreadable: its exports are due and missing
            report.failed.append(str(error))
            continue
        report.notes.extend(loaded.warnings)
        ct, pet = add_study_nodes(loaded)
        case_id = nnunet.case_id_for_study(study.patient_id, study.study_uid, study.study_date)
        result.append(StudyNodes(study.patient_id, case_id, ct, pet, ct_series=loaded.ct_series.label))
        loaded_cts.add(loaded.ct_series.series_uid)
    for series in study.series_of("CT"):
        if series.series_uid in loaded_cts:
            continue
        annotated = sum(header.sop_instance_uid in annotated_uids for header in series.headers)
        if pairings and not annotated:
            continue  # a CT beside the PET's own, without annotations: nothing to convert
        if pairings:
            report.notes.append(
                f"{series.label}: holds {annotated} annotated slice(s) but is not the CT paired with the PET; "
                "loaded on its own for its VOC boxes"
            )
        nodes = _ct_only_nodes(study, series, report, annotated)
        if nodes is not None:
            result.append(nodes)
    return result


def _ct_only_nodes(study: IndexedStudy, series, report: ExportReport, annotated: int) -> Optional[StudyNodes]:
    """A CT without PET, for its VOC boxes. Unreadable, it fails an export only when it has annotated slices:
    without them (and without a PET, no nnU-Net case) no export was due from it."""
    try:
        image, info = load_series_image(series)
    except InputError as error:
        if annotated:
            report.failed.append(str(error))
        else:
            report.skipped.append(f"{error} (no annotation on it, so nothing to export)")
        return None
    # Named by its series: a patient's CT series (diagnostic, low dose) each give their own lines.
    ct = add_series_volume(image, info, study.patient_id, study.study_uid, f"{study.patient_id} {info.label}")
    case_id = nnunet.case_id_for_study(study.patient_id, study.study_uid, study.study_date)
    return StudyNodes(study.patient_id, case_id, ct, None, ct_series=info.label)


def _nodes_from_nnunet_case(options: ConvertOptions, report: ExportReport) -> StudyNodes:
    case = open_nnunet_case(options.nnunet_dataset, options.case_id, options.per_lesion)  # as the module opens it
    case_id = case.ct.GetAttribute(NNUNET_CASE_ATTRIBUTE)
    nodes = StudyNodes(case_id, case_id, case.ct, case.pet)
    if case.has_label:
        nodes.segmentation = case.segmentation
    else:  # a test case stays one: no empty label is made up for it
        slicer.mrmlScene.RemoveNode(case.segmentation)
    report.notes.append(f"no DICOM: VOC export impossible (no slice SOPInstanceUIDs); case {case_id!r} kept its id")
    return nodes


class _PatientAnnotations:
    """Each patient's VOC files, read once, and which of them found their CT slice.

    A patient's files are spread over the CT series of several studies (each file names its
    slice by SOPInstanceUID): each CT gets the files of its own slices, and the files that no
    CT under --dicom holds are reported once, at the end.
    """

    def __init__(self, voc_dir: Optional[Path], report: ExportReport) -> None:
        self.voc_dir = None if voc_dir is None else Path(voc_dir)
        self.report = report
        self._by_patient: Dict[str, Tuple[Optional[Path], List[voc.VocAnnotation]]] = {}
        self._placed: Set[Tuple[str, str]] = set()

    def of(self, patient_id: str) -> Tuple[Optional[Path], List[voc.VocAnnotation]]:
        if self.voc_dir is None:
            return None, []
        if patient_id not in self._by_patient:
            folder = patient_annotation_folder(self.voc_dir, patient_id)
            found: List[voc.VocAnnotation] = []
            if folder is None:
                self.report.skipped.append(f"{self.voc_dir}: no annotation folder for {patient_id}")
            else:
                found, problems = voc.read_voc_folder(folder)
                self.report.skipped.extend(problems)
            self._by_patient[patient_id] = (folder, found)
        return self._by_patient[patient_id]

    def uids(self, patient_id: str) -> Set[str]:
        return {annotation.sop_instance_uid for annotation in self.of(patient_id)[1]}

    def place_on(self, nodes: StudyNodes) -> None:
        folder, found = self.of(nodes.patient_id)
        if folder is None:
            return
        slices = set(slice_sop_instance_uids(nodes.ct))
        mine = [annotation for annotation in found if annotation.sop_instance_uid in slices]
        if not mine:
            return  # none of this patient's files is for this CT (another study's, say)
        imported = add_box_nodes(mine, nodes.ct)
        self.report.skipped.extend(imported.skipped)
        self.report.notes.extend(imported.notes)
        self.report.notes.append(
            f"{nodes.patient_id}: {len(imported.nodes)} VOC boxes imported from {folder} onto {nodes.ct_label}"
        )
        self._placed.update((nodes.patient_id, annotation.sop_instance_uid) for annotation in mine)

    def report_unplaced(self) -> None:
        for patient_id, (_, found) in self._by_patient.items():
            self.report.skipped.extend(
                f"{annotation.source_path}: no slice of any CT series under --dicom has this SOPInstanceUID; skipped"
                for annotation in found
                if (patient_id, annotation.sop_instance_uid) not in self._placed
            )


def _import_annotations(
    nodes: StudyNodes, options: ConvertOptions, report: ExportReport, voc_files: _PatientAnnotations
) -> None:
    voc_files.place_on(nodes)
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
            raise InputError(
                f"nnU-Net label of case {options.case_id!r} ({label_grid.describe()}) is not on the PET grid of "
                f"{nodes.patient_id} ({pet_grid.describe()}): it belongs to another study or was resampled"
            )
        nodes.segmentation = segmentation_from_mask(case.label, f"{nodes.patient_id} lesions", options.per_lesion)
        mark_imported_segments(nodes.segmentation, nodes.pet)


def _export(nodes: StudyNodes, out_dir: Path, options: ConvertOptions, report: ExportReport) -> None:
    voc_root, dataset = out_dir / "Annotation", out_dir / "nnUNet_raw" / NNUNET_DATASET_NAME
    # Written back over its input (--out where --voc or --nnunet read from): say what changed since the import,
    # as the module's "export back" does. Nothing changes between a convert's import and its export, unless
    # the export itself cannot keep something (a box cut to the image, a lesion rejected).
    voc_folder = voc_import_folder(nodes.ct)
    over_input = (
        options.export_voc
        and voc_folder is not None
        and same_folder(voc_folder, voc_root / voc.patient_folder_name(nodes.patient_id))
    ) or (options.export_nnunet and options.nnunet_dataset is not None and same_folder(options.nnunet_dataset, dataset))
    summary = changes_since_import(nodes.ct, nodes.pet, nodes.segmentation) if over_input else None
    if options.export_voc:
        export_voc(nodes, voc_root, report, options.overwrite, options.voc_from_segmentation)
    if options.export_nnunet:
        export_nnunet(nodes, dataset, report, options.overwrite, options.boxes_as_labels)
    if summary is not None:
        report.notes.append(f"{nodes.patient_id}: {summary.text()}")
