"""Load a PET/CT study through Slicer's DICOM database, keeping the nodes' DICOM identity.

Inside Slicer the files are imported into the DICOM database and each series is loaded by
Slicer's own scalar volume plugin (``DICOMUtils.loadSeriesByUID``), so the nodes get the
subject hierarchy items, ``DICOM.instanceUIDs`` and everything else Slicer's DICOM module
gives them. The PET values are then replaced by body-weight SUV computed by
:func:`PETCTLesionsLib.study.load_pet_suv` from the same files (our SUV handles the vendor
variants; the node keeps its identity). Which PET goes with which CT comes from our reader's
pairing (:func:`PETCTLesionsLib.study.describe_scan`).

The database and the series loader are injected, so tests run this code with a stand-in for
the parts that only exist in the application (the DICOM database and its plugins).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Optional, Protocol, Sequence, Tuple

import slicer

from ..dicom.index import scan_paths
from ..jobs import CancelCallback, ProgressCallback, check_cancel, report
from ..study import StudyLoadError, describe_scan, load_pet_suv
from .study_nodes import convert_pet_node_to_suv, is_suv_bw, slice_sop_instance_uids

# Slicer's scalar volume plugin: plain CT and PET volumes (the PET then converted to SUV here).
SCALAR_VOLUME_PLUGIN = "DICOMScalarVolumePlugin"


class DicomDatabase(Protocol):
    """The part of ``slicer.dicomDatabase`` (ctkDICOMDatabase) used here."""

    def filesForSeries(self, series_uid: str) -> Sequence[str]: ...  # noqa: N802 - ctk's name

    def fileForInstance(self, sop_instance_uid: str) -> str: ...  # noqa: N802 - ctk's name


# load_series(series_uid, cancel) -> IDs of the nodes Slicer loaded (DICOMUtils.loadSeriesByUID).
SeriesLoader = Callable[[str, Optional[CancelCallback]], List[str]]


@dataclass(frozen=True)
class PetCtChoice:
    """A PET series and the CT it is paired with, as offered to the user."""

    patient_id: str
    study_uid: str
    pet_series_uid: str
    ct_series_uid: str
    label: str  # one line for a combo box
    rule: str  # why this CT (the reader's pairing rule)
    # What the pairing warned about (a CT covering under 90% of the PET, say): shown when the study is loaded.
    warnings: Tuple[str, ...] = ()


def pet_ct_choices(paths: Sequence[Path], cancel: Optional[CancelCallback] = None) -> Tuple[List[PetCtChoice], str]:
    """PET/CT pairs found under ``paths``, and a text naming what could not be paired and why."""
    studies = describe_scan(scan_paths(paths, cancel=cancel))
    choices, problems = [], []
    for study in studies:
        for pair in study.pairs:  # the study's preferred PET first (e.g. attenuation-corrected before NAC)
            if pair.ct is None or pair.error:  # no CT, or one covering too little of the PET
                problems.append(pair.error or f"{pair.pet.label}: {pair.rule}")
                continue
            date = study.study_date or "no date"
            label = f"{study.patient_id} {date}: {pair.pet.description or 'PET'} + {pair.ct.description or 'CT'}"
            choices.append(
                PetCtChoice(
                    patient_id=study.patient_id,
                    study_uid=study.study_uid,
                    pet_series_uid=pair.pet.series_uid,
                    ct_series_uid=pair.ct.series_uid,
                    label=label if pair.preferred else f"{label} (not the study's first choice)",
                    rule=pair.rule if pair.preferred else f"{pair.rule}; {pair.not_preferred_because}",
                    warnings=tuple(pair.warnings),
                )
            )
    if not studies:
        problems.append("no DICOM image series found")
    return choices, "\n".join(problems)


def slicer_series_loader(series_uid: str, cancel: Optional[CancelCallback] = None) -> List[str]:
    """Load one series with Slicer's scalar volume plugin (only inside the application).

    The three steps of ``DICOMUtils.loadSeriesByUID`` with the plugin named: that function only
    takes ``enabledPluginClassNames`` from Slicer 5.8 on, and these steps are the same in 5.6.
    """
    from DICOMLib import DICOMUtils  # the application's DICOM module; not in slicer-core

    def plugin_progress(_plugin: str, _percent: float) -> bool:
        return bool(cancel and cancel())  # True asks DICOMUtils to stop

    files = list(slicer.dicomDatabase.filesForSeries(series_uid))
    if not files:
        raise StudyLoadError(f"series {series_uid} has no files in the DICOM database")
    messages: List[str] = []
    loadables_by_plugin, _ = DICOMUtils.getLoadablesFromFileLists(
        [files], [SCALAR_VOLUME_PLUGIN], messages=messages, progressCallback=plugin_progress
    )
    check_cancel(cancel)
    DICOMUtils.selectHighestConfidenceLoadables(loadables_by_plugin)
    node_ids = list(DICOMUtils.loadLoadables(loadables_by_plugin, messages=messages, progressCallback=plugin_progress))
    if cancel is not None and cancel():  # cancelled while loading: leave no half-loaded series behind
        for node_id in node_ids:
            node = slicer.mrmlScene.GetNodeByID(node_id)
            if node is not None:
                slicer.mrmlScene.RemoveNode(node)
        check_cancel(cancel)
    if not node_ids:
        detail = "; ".join(messages) or "the scalar volume plugin loaded nothing"
        raise StudyLoadError(f"series {series_uid} could not be loaded from the DICOM database: {detail}")
    return list(node_ids)


class DicomDatabaseStudyLoader:
    """CT and PET (SUVbw) volume nodes of a PET/CT pair, loaded through the DICOM database."""

    def __init__(self, database: Optional[DicomDatabase] = None, load_series: Optional[SeriesLoader] = None) -> None:
        self._database = database if database is not None else slicer.dicomDatabase
        self._load_series = load_series or slicer_series_loader

    def load(
        self,
        choice: PetCtChoice,
        progress: Optional[ProgressCallback] = None,
        cancel: Optional[CancelCallback] = None,
    ) -> Tuple[slicer.vtkMRMLScalarVolumeNode, slicer.vtkMRMLScalarVolumeNode]:
        """Load ``choice``'s CT and PET; the PET ends in SUVbw. Nodes of a failed load are removed."""
        added: List[slicer.vtkMRMLNode] = []
        try:
            report(progress, 0.0, "Loading CT from the DICOM database")
            ct_node = self._single_volume(choice.ct_series_uid, cancel, added)
            report(progress, 0.4, "Loading PET from the DICOM database")
            pet_node = self._single_volume(choice.pet_series_uid, cancel, added)
            report(progress, 0.7, "Computing SUVbw")
            self.convert_to_suv(pet_node, cancel=cancel)
        except BaseException:
            for node in added:
                slicer.mrmlScene.RemoveNode(node)
            raise
        report(progress, 1.0, "PET/CT study loaded")
        return ct_node, pet_node

    def convert_to_suv(self, pet_node: slicer.vtkMRMLScalarVolumeNode, cancel: Optional[CancelCallback] = None) -> None:
        """Make a PET node loaded from the database hold SUVbw (nothing to do when it already does)."""
        if is_suv_bw(pet_node):
            return
        uids = slice_sop_instance_uids(pet_node)
        files = [self._database.fileForInstance(uid) for uid in uids]
        if not uids or not all(files):
            raise StudyLoadError(
                f"PET volume {pet_node.GetName()!r} is not in SUV and its DICOM files are not in the DICOM "
                "database: load the PET from DICOM (or pick a volume already in SUVbw)"
            )
        pet = load_pet_suv([Path(f) for f in files], cancel=cancel)
        convert_pet_node_to_suv(pet_node, pet)

    def _single_volume(
        self, series_uid: str, cancel: Optional[CancelCallback], added: List[slicer.vtkMRMLNode]
    ) -> slicer.vtkMRMLScalarVolumeNode:
        if not self._database.filesForSeries(series_uid):
            raise StudyLoadError(f"series {series_uid} is not in the DICOM database; import its folder first")
        nodes = [slicer.mrmlScene.GetNodeByID(node_id) for node_id in self._load_series(series_uid, cancel)]
        added.extend(node for node in nodes if node is not None)
        volumes = [node for node in nodes if node is not None and node.IsA("vtkMRMLScalarVolumeNode")]
        if len(volumes) != 1:
            raise StudyLoadError(
                f"series {series_uid} loaded as {len(volumes)} volumes (Slicer split it into sub-series: "
                "several acquisitions, orientations or image types); load the wanted part from the DICOM module"
            )
        return volumes[0]
