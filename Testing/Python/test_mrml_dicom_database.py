"""Loading a study through Slicer's DICOM database: the pairs offered to the user, the PET turned
into SUVbw in place (identity kept), and nothing left behind when a load fails.

The DICOM database and its scalar volume plugin exist only in the application, so they are the
one thing replaced here: a dictionary of files and a loader that reads a series the way the
plugin does (ITK's GDCM series reader, slices by position, SOPInstanceUIDs in DICOM.instanceUIDs).
Everything else is the real code on a real scene.
"""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Dict, List

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from studies import SmallStudy, study_info, write_small_study

from PETCTLesionsLib.geometry import Grid
from PETCTLesionsLib.study import StudyLoadError
from PETCTLesionsLib.synthetic.dicom_writer import PatientInfo, PetAcquisition

pytestmark = pytest.mark.slicer  # skipped where slicer-core is not installed (Slicer 5.6's stack in CI)

CT_GRID = Grid(size=(24, 20, 10), spacing=(1.2, 1.2, 3.0), origin=(-14.0, -12.0, -15.0))
PET_GRID = Grid(size=(10, 8, 7), spacing=(4.0, 4.0, 4.0), origin=(-18.0, -14.0, -12.0))


def _write_study(root: Path, number: int, with_ct: bool = True, ct_grid: Grid = CT_GRID) -> SmallStudy:
    patient = PatientInfo(f"PAT-{number}", f"Patient^{number}", "F", 50, 60.0 + number)
    study = study_info("database", patient, datetime.datetime(2022, 5, number, 10, 0), "PET/CT", number)
    injection, series_start = datetime.datetime(2022, 5, number, 9, 0), datetime.datetime(2022, 5, number, 10, 2)
    acquisition = PetAcquisition(3.0e8, injection, series_start)
    return write_small_study(
        root / f"patient {number}",
        study,
        acquisition,
        ct_grid,
        PET_GRID,
        seed=number,
        hu_range=(-1000, 1200),
        suv_scale=1.3,
        folders=("CT", "PET"),
        with_ct=with_ct,
    )


class FakeDicomDatabase:
    """What the module asks ctkDICOMDatabase: files of a series, the file of an instance."""

    def __init__(self, root: Path) -> None:
        self.series_files: Dict[str, List[str]] = {}
        self.instance_files: Dict[str, str] = {}
        for path in sorted(root.rglob("*.dcm")):
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            self.series_files.setdefault(ds.SeriesInstanceUID, []).append(str(path))
            self.instance_files[ds.SOPInstanceUID] = str(path)

    def filesForSeries(self, series_uid):  # noqa: N802 - ctk's name
        return self.series_files.get(series_uid, [])

    def fileForInstance(self, sop_instance_uid):  # noqa: N802 - ctk's name
        return self.instance_files.get(sop_instance_uid, "")


def scalar_plugin_stand_in(database: FakeDicomDatabase, fail_on: str = ""):
    """Loads a series like Slicer's DICOMScalarVolumePlugin: rescaled values, DICOM.instanceUIDs."""

    def load(series_uid, cancel=None):
        from PETCTLesionsLib.mrml.volumes import volume_node_from_image

        if series_uid == fail_on:
            raise RuntimeError("plugin failed")
        folder = str(Path(database.filesForSeries(series_uid)[0]).parent)
        files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(folder, series_uid)
        image = sitk.ReadImage(files, sitk.sitkFloat32)
        node = volume_node_from_image(image, f"series {series_uid[-6:]}")
        uids = [pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in files]
        node.SetAttribute("DICOM.instanceUIDs", " ".join(uids))
        return [node.GetID()]

    return load


def test_choices_pair_each_pet_with_its_ct_and_name_what_cannot_be_paired(tmp_path):
    from PETCTLesionsLib.mrml.dicom_database import pet_ct_choices

    first, second = _write_study(tmp_path, 1), _write_study(tmp_path, 2)
    _write_study(tmp_path / "orphan", 3, with_ct=False)

    choices, problems = pet_ct_choices([tmp_path])

    by_patient = {choice.patient_id: choice for choice in choices}
    assert sorted(by_patient) == ["PAT-1", "PAT-2"]
    for patient, written in (("PAT-1", first), ("PAT-2", second)):
        assert by_patient[patient].pet_series_uid == written.pet.series_uid
        assert by_patient[patient].ct_series_uid == written.ct.series_uid
        assert by_patient[patient].study_uid == written.study.study_uid
        assert by_patient[patient].label.startswith(f"{patient} 2022")
        assert by_patient[patient].warnings == ()
    assert problems.startswith("PT series") and "no CT" in problems


def test_a_choice_carries_its_pairs_warnings_for_the_module_to_show_when_it_loads_the_study(tmp_path):
    from PETCTLesionsLib.mrml.dicom_database import pet_ct_choices

    # 7 CT slices of 3 mm from z=-9 cover z -10.5..10.5 of the PET's -14..14 mm: 75%, loaded with a warning.
    short_ct = Grid(size=(24, 20, 7), spacing=(1.2, 1.2, 3.0), origin=(-14.0, -12.0, -9.0))
    written = _write_study(tmp_path, 6, ct_grid=short_ct)

    (choice,), problems = pet_ct_choices([tmp_path])

    assert problems == "" and choice.ct_series_uid == written.ct.series_uid
    (warning,) = choice.warnings
    assert f"({written.ct.series_uid}) covers 21.0 mm of the 28.0 mm of PT series" in warning
    assert "(75%), under 90%: the rest of the PET is read with air (-1024 HU) as its CT" in warning


def test_loading_a_pair_gives_ct_in_hu_and_the_loaded_pet_converted_to_suv(mrml_scene, tmp_path):
    import slicer

    from PETCTLesionsLib.mrml.dicom_database import DicomDatabaseStudyLoader, pet_ct_choices
    from PETCTLesionsLib.mrml.study_nodes import is_suv_bw

    written = _write_study(tmp_path, 4)
    database = FakeDicomDatabase(tmp_path)
    (choice,) = pet_ct_choices([tmp_path])[0]
    steps = []

    ct_node, pet_node = DicomDatabaseStudyLoader(database, scalar_plugin_stand_in(database)).load(
        choice, progress=lambda fraction, message: steps.append(fraction)
    )

    np.testing.assert_array_equal(slicer.util.arrayFromVolume(ct_node), written.hu)
    suv = slicer.util.arrayFromVolume(pet_node)
    assert np.max(np.abs(suv - written.pet.stored_values) / written.pet.stored_values) < 1e-5
    assert is_suv_bw(pet_node) and not is_suv_bw(ct_node)
    assert pet_node.GetName() == f"series {choice.pet_series_uid[-6:]}"  # the plugin's node, kept
    assert steps[0] == 0.0 and steps[-1] == 1.0 and steps == sorted(steps)
    assert mrml_scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode") == 2


def test_a_failed_load_leaves_no_half_loaded_study_and_says_why(mrml_scene, tmp_path):
    from PETCTLesionsLib.mrml.dicom_database import DicomDatabaseStudyLoader, PetCtChoice, pet_ct_choices

    _write_study(tmp_path, 5)
    database = FakeDicomDatabase(tmp_path)
    (choice,) = pet_ct_choices([tmp_path])[0]

    with pytest.raises(RuntimeError, match="plugin failed"):
        DicomDatabaseStudyLoader(database, scalar_plugin_stand_in(database, fail_on=choice.pet_series_uid)).load(choice)
    assert mrml_scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode") == 0  # the CT was removed again

    missing = PetCtChoice("PAT-5", choice.study_uid, "1.2.3.4", choice.ct_series_uid, "x", "rule")
    with pytest.raises(StudyLoadError, match=r"series 1\.2\.3\.4 is not in the DICOM database; import its folder"):
        DicomDatabaseStudyLoader(database, scalar_plugin_stand_in(database)).load(missing)
    assert mrml_scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode") == 0


def test_a_pet_volume_without_dicom_identity_is_refused_not_guessed(mrml_scene, tmp_path):
    from PETCTLesionsLib.mrml.dicom_database import DicomDatabaseStudyLoader
    from PETCTLesionsLib.mrml.study_nodes import mark_as_suv_bw
    from PETCTLesionsLib.mrml.volumes import volume_node_from_image

    node = volume_node_from_image(PET_GRID.to_sitk(np.ones(PET_GRID.shape, np.float32) * 5000.0), "PET from NIfTI")
    loader = DicomDatabaseStudyLoader(FakeDicomDatabase(tmp_path), scalar_plugin_stand_in(FakeDicomDatabase(tmp_path)))
    with pytest.raises(StudyLoadError, match="'PET from NIfTI' is not in SUV and its DICOM files are not in"):
        loader.convert_to_suv(node)

    mark_as_suv_bw(node)  # e.g. loaded by the PETDICOM extension's SUV plugin: used as it is
    loader.convert_to_suv(node)
    import slicer

    assert float(slicer.util.arrayFromVolume(node).max()) == 5000.0
