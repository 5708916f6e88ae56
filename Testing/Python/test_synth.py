"""The synthetic study on disk: the physics survives the file formats.

Every check re-reads what was written with an independent reader (pydicom, SimpleITK) and
compares it with the phantom that was generated in memory.
"""

from __future__ import annotations

import json

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from PETCTLesionsLib.cli import main as cli_main
from PETCTLesionsLib.dicom.suv import suv_bw_factors
from PETCTLesionsLib.formats import nnunet, voc
from PETCTLesionsLib.geometry import Grid
from PETCTLesionsLib.synthetic.phantom import PhantomConfig, make_phantom
from PETCTLesionsLib.synthetic.synth import DATASET_FOLDER, case_seed, generate_dataset

SEED = 1


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    cases = generate_dataset(out, cases=2, seed=SEED, size="small", flavour="lung")
    phantoms = [make_phantom(PhantomConfig(seed=case_seed(SEED, i), size="small", body="torso")) for i in range(2)]
    return out, cases, phantoms


def test_suv_from_the_written_pet_tags_equals_the_phantom_suv(dataset):
    _, cases, phantoms = dataset
    for case, phantom in zip(cases, phantoms):
        datasets = [pydicom.dcmread(str(p)) for p in case.pet.paths]  # paths[k] is grid slice k
        suv = suv_bw_factors(datasets, source=str(case.pet.paths[0].parent))
        decoded = (
            np.stack([ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept) for ds in datasets])
            * suv.factors[:, None, None]
        )
        # What a correct reader decodes is exactly what the generator says it stored ...
        np.testing.assert_allclose(decoded, case.pet.stored_values, rtol=1e-6, atol=1e-9)
        # ... and that is the phantom's SUV up to int16 quantisation (half a step per slice).
        step = np.array([float(ds.RescaleSlope) for ds in datasets]) * suv.factors
        error = np.abs(decoded - phantom.pet_suv)
        assert np.all(error <= step[:, None, None] / 2 + 1e-6)
        assert suv.weight_kg > 0 and suv.injected_dose_bq > 0 and suv.decay_time_s > 0
        assert len({float(ds.RescaleSlope) for ds in datasets}) > 1  # per-slice slopes, as scanners write


def test_dicom_read_back_with_simpleitk_has_the_phantom_geometry_and_hu(dataset):
    _, cases, phantoms = dataset
    for case, phantom in zip(cases, phantoms):
        for series, grid in ((case.ct, phantom.ct_grid), (case.pet, phantom.pet_grid)):
            folder = str(series.paths[0].parent)
            reader = sitk.ImageSeriesReader()
            reader.SetFileNames(reader.GetGDCMSeriesFileNames(folder))
            image = reader.Execute()
            read_grid = Grid.from_sitk(image)
            assert read_grid.size == grid.size
            np.testing.assert_allclose(read_grid.spacing, grid.spacing, atol=1e-4)
            np.testing.assert_allclose(read_grid.origin, grid.origin, atol=1e-4)
            np.testing.assert_allclose(read_grid.direction, grid.direction, atol=1e-6)
        ct_image = sitk.ReadImage([str(p) for p in case.ct.paths])
        np.testing.assert_array_equal(sitk.GetArrayFromImage(ct_image), phantom.ct_hu)


def test_one_study_with_ct_and_pet_sharing_study_and_frame_of_reference(dataset):
    _, cases, _ = dataset
    for case in cases:
        ct = pydicom.dcmread(str(case.ct.paths[0]), stop_before_pixels=True)
        pet = pydicom.dcmread(str(case.pet.paths[0]), stop_before_pixels=True)
        assert ct.StudyInstanceUID == pet.StudyInstanceUID
        assert ct.FrameOfReferenceUID == pet.FrameOfReferenceUID
        assert ct.SeriesInstanceUID != pet.SeriesInstanceUID
        assert (ct.Modality, pet.Modality) == ("CT", "PT")
        assert ct.PatientID == pet.PatientID == case.patient_id
        assert voc.histology_class(case.patient_id) in ("A", "B", "E", "G")
        # NBIA layout: <collection>/<PatientID>/<date>-NA-<study>-<n>/<n>.000000-<series>-<n>/1-01.dcm
        assert case.study_dir.parent.name == case.patient_id
        assert case.ct.paths[0].parent.name.startswith("2.000000-")
        assert all(p.name.startswith("1-") for p in case.ct.paths)


def test_nnunet_label_is_the_ground_truth_and_images_share_the_pet_grid(dataset):
    out, cases, phantoms = dataset
    dataset_dir = out / "nnUNet_raw" / DATASET_FOLDER
    description = nnunet.read_dataset_json(dataset_dir)
    assert description["numTraining"] == 2
    assert description["channel_names"] == {"0": "CT", "1": "PET"}
    assert description["labels"] == {"background": 0, "tumor": 1}
    assert sorted(nnunet.list_cases(dataset_dir)) == sorted(c.case_id for c in cases)
    for case, phantom in zip(cases, phantoms):
        loaded = nnunet.read_case(dataset_dir, case.case_id)
        label = sitk.GetArrayFromImage(loaded.label)
        truth = (phantom.pet_lesion_labels > 0).astype(np.uint8)
        np.testing.assert_array_equal(label, truth)
        assert int(label.sum()) == int(np.count_nonzero(phantom.pet_lesion_labels)) > 0
        for image in (loaded.ct, loaded.pet, loaded.label):
            assert Grid.from_sitk(image).same_as(phantom.pet_grid)
        np.testing.assert_allclose(sitk.GetArrayFromImage(loaded.pet), case.pet.stored_values, rtol=1e-6)
        ct_on_pet = sitk.GetArrayFromImage(loaded.ct)
        # Lung lesions are soft tissue: CT inside the label is far denser than aerated lung.
        assert ct_on_pet[label > 0].mean() > -400
        assert ct_on_pet.min() == -1024  # air outside the CT field (PET field is wider)


def test_every_voc_box_is_the_tight_per_slice_box_of_each_lesion(dataset):
    out, cases, phantoms = dataset
    for case, phantom in zip(cases, phantoms):
        folder = out / "Annotation" / voc.patient_folder_name(case.patient_id)
        annotations, problems = voc.read_voc_folder(folder)
        assert problems == []
        by_uid = {a.sop_instance_uid: a for a in annotations}
        labels = phantom.ct_lesion_labels
        expected_files = 0
        for k in range(labels.shape[0]):
            present = [int(v) for v in np.unique(labels[k]) if v > 0]
            uid = case.ct.sop_instance_uids[k]
            if not present:
                assert uid not in by_uid
                continue
            expected_files += 1
            annotation = by_uid[uid]
            assert (annotation.width, annotation.height) == (phantom.ct_grid.size[0], phantom.ct_grid.size[1])
            expected = set()
            for value in present:
                rows, columns = np.nonzero(labels[k] == value)
                expected.add((columns.min(), rows.min(), columns.max(), rows.max()))
            assert {b.to_pixel_ranges() for b in annotation.boxes} == expected
            assert {b.name for b in annotation.boxes} == {voc.histology_class(case.patient_id)}
        assert len(annotations) == expected_files > 0


def test_truth_table_matches_the_label_volumes(dataset):
    _, cases, phantoms = dataset
    for case, phantom in zip(cases, phantoms):
        truth = json.loads(case.truth_file.read_text())
        assert truth["case_id"] == case.case_id
        assert len(truth["lesions"]) == len(phantom.lesions)
        for row in truth["lesions"]:
            assert row["pet_voxels"] == int(np.count_nonzero(phantom.pet_lesion_labels == row["label"]))
            assert row["ct_voxels"] == int(np.count_nonzero(phantom.ct_lesion_labels == row["label"]))


def test_generation_is_deterministic_and_refuses_to_overwrite(dataset, tmp_path):
    out, cases, _ = dataset
    again = generate_dataset(tmp_path, cases=1, seed=SEED, size="small", flavour="lung")
    assert again[0].case_id == cases[0].case_id
    assert again[0].ct.sop_instance_uids == cases[0].ct.sop_instance_uids
    assert again[0].pet.paths[3].read_bytes() == cases[0].pet.paths[3].read_bytes()
    with pytest.raises(FileExistsError):
        generate_dataset(tmp_path, cases=1, seed=SEED, size="small", flavour="lung")


def test_autopet_flavour_has_whole_body_and_autopet_like_names(tmp_path):
    cases = generate_dataset(tmp_path, cases=1, seed=4, size="small", flavour="autopet")
    case = cases[0]
    # autoPET's Patient ID and study folder (spaces included); the case id is predict's (issue 19).
    assert case.patient_id.startswith("PETCT_") and "  " in case.study_dir.name
    assert case.case_id.startswith(f"{case.patient_id}_")
    assert case.voc_files == []  # no histology letter, so no Lung-PET-CT-Dx boxes
    loaded = nnunet.read_case(tmp_path / "nnUNet_raw" / DATASET_FOLDER, case.case_id)
    pet = sitk.GetArrayFromImage(loaded.pet)
    # Whole body: brain and bladder are the hottest organs, so the PET reaches far above liver level.
    assert pet.max() > 6.0
    assert loaded.pet.GetSize()[2] * loaded.pet.GetSpacing()[2] > 600


def test_synth_command_writes_all_three_formats(tmp_path, capsys):
    assert cli_main(["synth", "--out", str(tmp_path), "--cases", "2", "--seed", "1", "--size", "small"]) == 0
    printed = capsys.readouterr().out
    assert "Wrote 2 synthetic case(s)" in printed
    assert len(list((tmp_path / "Lung-PET-CT-Dx").glob("*/*/*/*.dcm"))) > 100
    assert list((tmp_path / "Annotation").glob("*/*.xml"))
    assert len(list((tmp_path / "nnUNet_raw" / DATASET_FOLDER / "labelsTr").glob("*.nii.gz"))) == 2
    # A second run into the same folder must not overwrite the user's files silently, and leaves
    # the folder exactly as it was (no staging copy of the study beside the first one).
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    assert cli_main(["synth", "--out", str(tmp_path), "--cases", "1", "--seed", "1", "--size", "small"]) == 2
    assert "refusing to overwrite it (--overwrite replaces it)" in capsys.readouterr().err
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before
