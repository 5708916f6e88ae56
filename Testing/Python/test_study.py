"""Loading a PET/CT study gives the CT in HU and the PET in SUVbw exactly as written, whatever the
file layout; the info report lists studies, series, pairing and SUV factors (or the reason SUV
cannot be computed) as JSON and as text."""

from __future__ import annotations

import dataclasses
import datetime
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from conftest import LUNG_DX_CT_SERIES, copy_series, save_bare_dicom, save_dicom
from studies import SmallStudy, oblique_direction, study_info, write_small_study

from PETCTLesionsLib.dicom.part10 import read_slice_header
from PETCTLesionsLib.dicom.series import MissingSlicesError
from PETCTLesionsLib.dicom.suv import SUVError
from PETCTLesionsLib.errors import Cancelled
from PETCTLesionsLib.geometry import Grid
from PETCTLesionsLib.info import format_info, info_report
from PETCTLesionsLib.study import StudyLoadError, load_study
from PETCTLesionsLib.synthetic.dicom_writer import (
    PatientInfo,
    PetAcquisition,
    StudyInfo,
    make_uid,
    write_ct_series,
    write_pet_series,
)

LUNG_DX_CT = LUNG_DX_CT_SERIES
CT_GRID = Grid(size=(36, 30, 14), spacing=(0.9, 0.95, 2.5), origin=(-16.0, -14.0, -20.0))
PET_GRID = Grid(size=(14, 12, 9), spacing=(4.07, 4.07, 3.0), origin=(-27.0, -23.0, -18.5))
ACQUISITION = PetAcquisition(
    3.3e8, datetime.datetime(2020, 11, 5, 9, 12, 40), datetime.datetime(2020, 11, 5, 10, 21, 5)
)
F18_HALF_LIFE_S = 6586.2


def _study(number: int = 1) -> StudyInfo:
    patient = PatientInfo(f"STU-{number:04d}", f"Study^Patient{number}", "F", 48, 64.5 + number)
    return study_info("study", patient, datetime.datetime(2020, 11, 5, 9, 55), f"PET/CT {number}", number)


def _write(root: Path, number: int = 1, ct_grid: Grid = CT_GRID, pet_grid: Grid = PET_GRID) -> SmallStudy:
    return write_small_study(
        root,
        _study(number),
        ACQUISITION,
        ct_grid,
        pet_grid,
        seed=number,
        hu_range=(-1024, 2000),
        suv_ramp=(0.3, 5.0),
        folders=("CT 2.5 mm", "PET  AC"),
    )


def _assert_loaded(loaded, written: SmallStudy, ct_grid: Grid = CT_GRID, pet_grid: Grid = PET_GRID) -> None:
    assert Grid.from_sitk(loaded.ct).same_as(ct_grid, tolerance_mm=1e-6)
    assert Grid.from_sitk(loaded.pet_suv).same_as(pet_grid, tolerance_mm=1e-6)
    assert loaded.ct.GetPixelID() == sitk.sitkInt16 and loaded.pet_suv.GetPixelID() == sitk.sitkFloat32
    np.testing.assert_array_equal(sitk.GetArrayFromImage(loaded.ct), written.hu)
    suv = sitk.GetArrayFromImage(loaded.pet_suv)
    assert np.max(np.abs(suv - written.suv) / np.abs(written.suv)) < 1e-6


def test_load_study_gives_hu_and_the_written_suv(tmp_path):
    written = _write(tmp_path)

    loaded = load_study([tmp_path])

    _assert_loaded(loaded, written)
    assert (loaded.patient_id, loaded.study_uid) == ("STU-0001", written.study.study_uid)
    uptake_s = (ACQUISITION.series_datetime - ACQUISITION.injection_datetime).total_seconds()
    expected_factor = 65.5 * 1000 / (3.3e8 * 2 ** (-uptake_s / F18_HALF_LIFE_S))
    np.testing.assert_allclose(loaded.suv.factors, expected_factor, rtol=1e-12)
    assert loaded.suv.decay_time_s == pytest.approx(uptake_s)
    assert loaded.warnings == []
    assert loaded.ct_series.series_uid == written.ct.series_uid and loaded.ct_series.size == CT_GRID.size
    assert loaded.pet_series.files and len(loaded.pet_series.files) == 9
    assert loaded.pairing_rule.startswith("the only CT series (same study)")


def test_oblique_study_comes_back_on_the_written_grids(tmp_path):
    direction = oblique_direction(14.0, axis=(-0.2, 0.6, 0.77))
    ct_grid = dataclasses.replace(CT_GRID, direction=direction)
    pet_grid = dataclasses.replace(PET_GRID, direction=direction)
    written = _write(tmp_path, ct_grid=ct_grid, pet_grid=pet_grid)

    _assert_loaded(load_study([tmp_path]), written, ct_grid, pet_grid)


def test_two_studies_shuffled_into_one_flat_folder_load_identically(tmp_path):
    first, second = _write(tmp_path / "study one", 1), _write(tmp_path / "study two", 2)
    flat = tmp_path / "everything  mixed"
    flat.mkdir()
    files = [p for w in (first, second) for p in w.ct.paths + w.pet.paths]
    for rank, index in enumerate(np.random.default_rng(5).permutation(len(files))):
        shutil.copy(files[index], flat / f"img {rank:03d}")

    with pytest.raises(StudyLoadError, match="2 PET series under .*choose one with study_uid or pet_series_uid"):
        load_study([flat])
    for written in (first, second):
        loaded = load_study([flat], study_uid=written.study.study_uid)
        _assert_loaded(loaded, written)
        assert loaded.patient_id == written.study.patient.patient_id
    by_series = load_study([flat], pet_series_uid=second.pet.series_uid)
    assert by_series.study_uid == second.study.study_uid


def test_ct_on_pet_grid_is_on_the_pet_grid_with_air_outside_the_ct(tmp_path):
    written = _write(tmp_path)
    rng = np.random.default_rng(2)
    constant = tmp_path / "constant"
    write_ct_series(np.full(CT_GRID.shape, 140), CT_GRID, written.study, constant / "ct", series_number=4)
    write_pet_series(rng.gamma(2.0, 1.0, PET_GRID.shape), PET_GRID, written.study, ACQUISITION, constant / "pt")

    resampled = load_study([constant]).ct_on_pet_grid()

    assert Grid.from_sitk(resampled).same_as(PET_GRID, tolerance_mm=1e-9)
    assert resampled.GetPixelID() == sitk.sitkFloat32
    # Inside the CT buffer (continuous index within [-0.5, size - 0.5]) linear interpolation of a
    # constant is that constant; outside, air.
    k, j, i = np.indices(PET_GRID.shape)
    points = PET_GRID.index_to_lps(np.stack([i, j, k], axis=-1).reshape(-1, 3).astype(float))
    ct_index = CT_GRID.lps_to_index(points)
    limit = np.array(CT_GRID.size) - 0.5
    margin = np.minimum(ct_index + 0.5, limit - ct_index).min(axis=1)
    assert np.all(np.abs(margin) > 1e-3)  # no PET voxel sits on the CT's border
    inside = (margin > 0).reshape(PET_GRID.shape)
    values = sitk.GetArrayFromImage(resampled)
    assert 0 < inside.sum() < inside.size
    np.testing.assert_array_equal(values[inside], 140.0)
    np.testing.assert_array_equal(values[~inside], -1024.0)


def test_missing_slice_refuses_the_load_and_info_names_it(tmp_path):
    written = _write(tmp_path)
    written.ct.paths[6].unlink()
    z5, z7 = (CT_GRID.index_to_lps((0, 0, k))[2] for k in (5, 7))
    expected = f"1 slice missing between z={z5:.2f} and z={z7:.2f} mm"

    with pytest.raises(MissingSlicesError, match=expected):
        load_study([tmp_path])
    loaded = load_study([tmp_path], allow_gaps=True)
    assert loaded.ct.GetSize() == CT_GRID.size and any(expected in warning for warning in loaded.warnings)

    report = info_report([tmp_path])
    ct_entry = next(s for s in report["studies"][0]["series"] if s["modality"] == "CT")
    assert expected in ct_entry["error"] and ct_entry["size"] == [36, 30, 14] and ct_entry["files"] == 13
    assert ct_entry["warnings"] == []  # not how a load would fill the gap: no load will
    # A file cut short in the middle: the same, with the file named instead of the gap.
    middle = written.ct.paths[3]
    middle.write_bytes(middle.read_bytes()[:-100])
    ct_entry = next(s for s in info_report([tmp_path])["studies"][0]["series"] if s["modality"] == "CT")
    assert "could not be read" in ct_entry["error"] and str(middle) in ct_entry["error"]
    assert ct_entry["warnings"] == []


def test_pet_without_patient_weight_info_names_the_tag_and_load_raises(tmp_path):
    written = _write(tmp_path)
    for path in written.pet.paths:
        ds = pydicom.dcmread(path)
        del ds.PatientWeight
        save_dicom(ds, path)

    report = info_report([tmp_path])
    pet_entry = next(s for s in report["studies"][0]["series"] if s["modality"] == "PT")
    assert "PatientWeight (0010,1030) is missing or empty" in pet_entry["suv"]["error"]
    assert "SUVbw cannot be computed:" in format_info(report) and "PatientWeight (0010,1030)" in format_info(report)
    with pytest.raises(SUVError, match=r"PatientWeight \(0010,1030\) is missing or empty"):
        load_study([tmp_path])


def test_info_report_is_json_and_text(tmp_path):
    written = _write(tmp_path / "study")
    (tmp_path / "study" / "readme.txt").write_text("hello")
    broken = tmp_path / "study" / "broken.dcm"
    broken.write_bytes(written.ct.paths[0].read_bytes()[:-50])

    report = info_report([tmp_path])

    assert json.loads(json.dumps(report)) == report
    assert report["files"] == {"found": 25, "dicom_images": 23, "skipped": 1, "unreadable": 1}
    assert report["unreadable_files"][0]["path"] == str(broken)
    (study,) = report["studies"]
    assert (study["patient_id"], study["study_uid"], study["pairing_note"]) == (
        "STU-0001",
        written.study.study_uid,
        None,
    )
    ct_entry, pet_entry = study["series"]
    assert (ct_entry["modality"], ct_entry["files"], ct_entry["size"]) == ("CT", 14, [36, 30, 14])
    assert ct_entry["spacing"] == pytest.approx([0.9, 0.95, 2.5])
    assert ct_entry["folders"] == [str(tmp_path / "study" / "CT 2.5 mm")] and ct_entry["error"] is None
    assert pet_entry["suv"]["factor"] == pytest.approx(load_study([tmp_path]).suv.factors[0], rel=1e-12)
    assert pet_entry["suv"]["units"] == "BQML" and pet_entry["suv"]["weight_kg"] == 65.5
    (pair,) = study["pet_ct_pairs"]
    assert (pair["pet_series_uid"], pair["ct_series_uid"]) == (written.pet.series_uid, written.ct.series_uid)

    text = format_info(report)
    assert "Scanned 25 files: 23 DICOM images, 1 skipped, 1 unreadable" in text
    assert f"UNREADABLE {broken}: the file is truncated" in text
    assert "CT series 2 'CT 2.5mm': 14 files, size 36 x 30 x 14, spacing 0.900 x 0.950 x 2.500 mm" in text
    assert f"SUVbw factor {pet_entry['suv']['factor']:.6g} (units BQML, weight 65.5 kg, dose 330 MBq" in text
    assert "PET/CT pairing: PT series 3 'PET WB AC' -> CT series 2 'CT 2.5mm'" in text


def test_real_lung_dx_ct_info_reports_no_pet_and_load_refuses():
    report = info_report([LUNG_DX_CT])

    (study,) = report["studies"]
    assert study["pairing_note"] == "no PET series in this study" and study["pet_ct_pairs"] == []
    (series,) = study["series"]
    assert (series["modality"], series["files"], series["size"]) == ("CT", 11, [512, 512, 11])
    assert series["spacing"] == pytest.approx([0.841796875, 0.841796875, 5.0])
    assert series["origin"] == pytest.approx([-228.036842, -93.0631599, -234.0])
    assert "PET/CT pairing: no PET series in this study" in format_info(report)
    with pytest.raises(StudyLoadError, match=r"no PET series under .* \(found: CT series 2 '5mm'"):
        load_study([LUNG_DX_CT])


def test_a_single_pet_file_loads_with_its_ct(tmp_path):
    written = _write(tmp_path)

    loaded = load_study([written.pet.paths[4], tmp_path / "CT 2.5 mm"])

    assert loaded.pet_suv.GetSize() == (14, 12, 1)
    assert loaded.pet_suv.GetOrigin() == pytest.approx(tuple(PET_GRID.index_to_lps((0, 0, 4))), abs=1e-6)
    np.testing.assert_allclose(sitk.GetArrayFromImage(loaded.pet_suv)[0], written.suv[4], rtol=1e-6)


def test_pet_without_ct_is_refused_with_the_reason(tmp_path):
    written = _write(tmp_path)
    with pytest.raises(StudyLoadError, match="no CT series in the study"):
        load_study([tmp_path / "PET  AC"])
    assert written.pet.paths


def test_progress_rises_to_one_and_cancel_leaves_nothing(tmp_path):
    _write(tmp_path)
    seen = []
    load_study([tmp_path], progress=lambda fraction, message: seen.append((fraction, message)))
    fractions = [fraction for fraction, _ in seen]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0 and fractions[0] == 0.0
    assert seen[-1][1] == "PET/CT study loaded"

    calls = []
    load_study([tmp_path], cancel=lambda: bool(calls.append(1)))
    assert len(calls) == 23 + 1 + 1 + 1  # every file of the scan, after the SUV, one slab of PET, one of CT

    calls.clear()
    with pytest.raises(Cancelled):  # the last check: before the CT pixels are decoded
        load_study([tmp_path], cancel=lambda: calls.append(1) or len(calls) == 26)


def test_load_pet_suv_reads_one_pet_series_without_its_ct_and_refuses_a_folder_without_pet(tmp_path):
    from PETCTLesionsLib.study import load_pet_suv

    written = _write(tmp_path)
    pet = load_pet_suv([tmp_path / "PET  AC"])
    assert Grid.from_sitk(pet.pet_suv).same_as(PET_GRID, tolerance_mm=1e-6)
    suv = sitk.GetArrayFromImage(pet.pet_suv)
    assert np.max(np.abs(suv - written.suv) / np.abs(written.suv)) < 1e-6
    assert pet.series.slice_sop_instance_uids == written.pet.sop_instance_uids
    with pytest.raises(StudyLoadError, match=r"no PET series under .*2\.000000-5mm-40805.*found: CT series 2"):
        load_pet_suv([LUNG_DX_CT])


# --------------------------------------------------------------------------- what real exports hold


def _nac(ds) -> None:
    ds.CorrectedImage = ["DECY", "RAN", "NORM"]  # no ATTN: the non-attenuation-corrected images
    ds.SeriesNumber = 1  # before the AC series: file order and numbers must not decide
    ds.SeriesDescription = "PET NAC"


def test_the_attenuation_corrected_pet_is_chosen_over_nac_and_screenshots(tmp_path):
    written = _write(tmp_path / "study")
    copy_series(written.pet.paths, tmp_path / "study" / "NAC", "nac", _nac)

    def screenshot(ds) -> None:
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
        ds.SeriesNumber = 900

    copy_series(written.pet.paths[:1], tmp_path / "study" / "capture", "capture", screenshot)

    loaded = load_study([tmp_path])

    _assert_loaded(loaded, written)
    assert loaded.pet_series.series_uid == written.pet.series_uid
    assert any("3 PET series in the study" in w and "'PET NAC'" in w for w in loaded.warnings)
    pairs = info_report([tmp_path])["studies"][0]["pet_ct_pairs"]
    assert [(p["pet_series_uid"] == written.pet.series_uid, p["preferred"]) for p in pairs] == [
        (True, True),
        (False, False),
        (False, False),
    ]
    assert "not attenuation-corrected" in pairs[1]["not_preferred_because"]
    assert pairs[2]["ct_series_uid"] is None and "Secondary Capture" in pairs[2]["rule"]
    # Asking for the NAC series by UID still loads it (with the SUV warning about ATTN).
    nac_uid = make_uid("copied series", "nac")
    nac = load_study([tmp_path], pet_series_uid=nac_uid)
    assert nac.pet_series.series_uid == nac_uid and any("ATTN" in w for w in nac.warnings)


def test_a_dicom_seg_in_the_study_is_named_as_such_and_does_not_disturb_the_load(tmp_path):
    written = _write(tmp_path)
    seg = pydicom.dcmread(written.ct.paths[0])  # a real header to start from, then a SEG's attributes
    seg.SOPClassUID = seg.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.66.4"
    seg.SOPInstanceUID = seg.file_meta.MediaStorageSOPInstanceUID = make_uid("seg instance")
    seg.SeriesInstanceUID = make_uid("seg series")
    seg.Modality, seg.SeriesNumber, seg.SeriesDescription = "SEG", 300, "lesions"
    seg.NumberOfFrames, seg.BitsAllocated, seg.BitsStored, seg.HighBit = 3, 1, 1, 0
    for keyword in ("RescaleSlope", "RescaleIntercept"):
        delattr(seg, keyword)
    seg.PixelData = np.packbits(np.ones(3 * seg.Rows * seg.Columns, np.uint8), bitorder="little").tobytes()
    (tmp_path / "SEG").mkdir()
    save_dicom(seg, tmp_path / "SEG" / "seg.dcm")

    _assert_loaded(load_study([tmp_path]), written)
    report = info_report([tmp_path])
    (entry,) = [series for series in report["studies"][0]["series"] if series["modality"] == "SEG"]
    assert entry["error"] == (
        "a DICOM Segmentation (SEG) object, not an image volume; Slicer loads it with QuantitativeReporting"
    )
    assert "multi-frame" not in format_info(report)


def test_a_localizer_inside_the_ct_series_is_kept_out_of_the_volume(tmp_path):
    written = _write(tmp_path)
    scout = pydicom.dcmread(written.ct.paths[3])
    scout.SOPInstanceUID = scout.file_meta.MediaStorageSOPInstanceUID = make_uid("scout")
    scout.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
    scout.ImageOrientationPatient = [1, 0, 0, 0, 0, -1]  # coronal, as a topogram is
    scout.Rows = 20
    scout.PixelData = scout.PixelData[: 20 * scout.Columns * 2]
    save_dicom(scout, tmp_path / "CT 2.5 mm" / "scout.dcm")

    loaded = load_study([tmp_path])

    _assert_loaded(loaded, written)
    assert any(w.startswith(str(tmp_path / "CT 2.5 mm" / "scout.dcm")) and "LOCALIZER" in w for w in loaded.warnings)
    files = info_report([tmp_path])["files"]
    written_files = len(written.ct.paths) + len(written.pet.paths) + 1
    assert files == {"found": written_files, "dicom_images": written_files, "skipped": 0, "unreadable": 0}


def test_a_file_cut_short_refuses_the_load_naming_it(tmp_path):
    """An interrupted download: the last CT file is truncated. Its slice must not just vanish."""
    written = _write(tmp_path)
    last = written.ct.paths[-1]
    last.write_bytes(last.read_bytes()[:-100])

    with pytest.raises(StudyLoadError, match=rf"1 of its files could not be read.*{last}: the file is truncated"):
        load_study([tmp_path])
    ct_entry = info_report([tmp_path])["studies"][0]["series"][0]
    assert ct_entry["modality"] == "CT" and "could not be read" in ct_entry["error"]


def test_files_without_a_meta_group_load_like_part10_files(tmp_path):
    """Old ACR-NEMA style exports: a bare implicit little-endian dataset, no preamble, no meta."""
    written = _write(tmp_path / "part10")
    bare = tmp_path / "bare"
    bare.mkdir()
    for path in written.ct.paths + written.pet.paths:
        ds = pydicom.dcmread(path)
        target = bare / f"{path.parent.name}-{path.name}"
        save_bare_dicom(ds, target)
        assert target.read_bytes()[:2] == b"\x08\x00"  # the dataset's first element: no preamble, no meta
    headers = [read_slice_header(p) for p in sorted(bare.iterdir())]
    assert {h.part10 for h in headers} == {False} and {h.pixel_data_offset is not None for h in headers} == {True}

    _assert_loaded(load_study([bare]), written)


@pytest.mark.torch
def test_predict_processes_each_study_once_with_its_attenuation_corrected_pet(tmp_path):
    """A study with AC and NAC PET used to give two results under one case id (the second one
    refused as 'already exists', or with --overwrite silently replacing the first)."""
    from PETCTLesionsLib.predict import PredictionOptions, predict

    written = _write(tmp_path / "study")
    copy_series(written.pet.paths, tmp_path / "study" / "NAC", "nac", _nac)

    (result,) = predict([tmp_path / "study"], tmp_path / "out", PredictionOptions(device="cpu", pictures=False))

    assert result.error is None and result.name.startswith("STU-0001_")
    (skipped,) = [note for note in result.notes if note.startswith("not processed")]
    assert skipped.startswith("not processed: PT series 1 'PET NAC'") and "not attenuation-corrected" in skipped
    assert (tmp_path / "out" / result.name / "lesions.csv").is_file()


@pytest.mark.torch
def test_predict_reports_a_study_whose_pet_has_no_ct_and_processes_the_others(tmp_path):
    """Such a study used to be left out without a word."""
    from PETCTLesionsLib.predict import PredictionOptions, predict

    _write(tmp_path / "a", number=1)
    pet_only = _write(tmp_path / "b", number=2)
    shutil.rmtree(tmp_path / "b" / "CT 2.5 mm")

    studies = [tmp_path / "a", tmp_path / "b"]  # not tmp_path itself: the output folder may not be inside an input
    results = predict(studies, tmp_path / "out", PredictionOptions(device="cpu", pictures=False))

    by_patient = {result.name.split("_")[0].split(" ")[0]: result for result in results}
    assert sorted(by_patient) == ["STU-0001", "STU-0002"]
    assert by_patient["STU-0001"].error is None
    assert by_patient["STU-0002"].error == (
        f"PT series 3 'PET WB AC' ({pet_only.pet.series_uid}): no CT series in the study (nor one sharing the "
        "PET's FrameOfReferenceUID)"
    )


@pytest.mark.torch
def test_predict_pet_series_processes_the_named_pet_instead_of_the_preferred_one(tmp_path, capsys):
    from PETCTLesionsLib.cli import main
    from PETCTLesionsLib.predict import PredictionOptions, predict
    from PETCTLesionsLib.synthetic.dicom_writer import format_ds

    def half_as_bright_nac(ds) -> None:  # so that the output shows which series was processed
        _nac(ds)
        ds.RescaleSlope = format_ds(float(ds.RescaleSlope) / 2)

    written = _write(tmp_path / "study")
    copy_series(written.pet.paths, tmp_path / "study" / "NAC", "nac", half_as_bright_nac)
    nac_uid = make_uid("copied series", "nac")

    arguments = ["predict", str(tmp_path / "study"), "--out", str(tmp_path / "out"), "--device", "cpu"]
    assert main(arguments + ["--no-pictures", "--pet-series", nac_uid]) == 0
    assert "NOT processed" not in capsys.readouterr().out
    (pet_file,) = (tmp_path / "out" / "nnUNet_raw").glob("*/imagesTr/STU-0001_*_0001.nii.gz")
    suv = sitk.GetArrayFromImage(sitk.ReadImage(str(pet_file)))
    np.testing.assert_allclose(suv, written.suv / 2, rtol=1e-5)

    options = PredictionOptions(device="cpu", pictures=False, pet_series_uids=(nac_uid,))
    (result,) = predict([tmp_path / "study"], tmp_path / "again", options)
    assert result.error is None
    (skipped,) = [note for note in result.notes if note.startswith("not processed")]
    assert skipped == (
        "not processed: PT series 3 'PET WB AC': the study's preferred PET; another series was asked for (--pet-series)"
    )

    with pytest.raises(
        ValueError, match=r"no PET series 1\.2\.3; PET series found: PT series 3 'PET WB AC' .*PT series 1 'PET NAC'"
    ):
        predict([tmp_path / "study"], tmp_path / "x", PredictionOptions(device="cpu", pet_series_uids=("1.2.3",)))
    both = (nac_uid, written.pet.series_uid)
    with pytest.raises(ValueError, match=r"are of one study \(patient STU-0001\).*one at a time"):
        predict([tmp_path / "study"], tmp_path / "x", PredictionOptions(device="cpu", pet_series_uids=both))


@pytest.mark.torch
def test_predict_names_everything_it_left_out(tmp_path, capsys):
    """Several paths: a PET/CT study, a CT-only study, a folder without DICOM and a file cut short.
    Only the first is processed; each of the others gets a line saying why, and the run succeeds."""
    from PETCTLesionsLib.cli import main

    petct = _write(tmp_path / "petct")
    for path in petct.pet.paths:  # the dose in MBq, as many real headers have it: read so, and said
        ds = pydicom.dcmread(path)
        ds.RadiopharmaceuticalInformationSequence[0].RadionuclideTotalDose = "300"
        save_dicom(ds, path)
    ct_only = _write(tmp_path / "ct only", number=2)
    shutil.rmtree(tmp_path / "ct only" / "PET  AC")
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("no images here")
    (cut,) = copy_series(ct_only.ct.paths[:1], tmp_path / "cut", "cut short")
    cut.write_bytes(cut.read_bytes()[:-200])

    shutil.copytree(tmp_path / "petct" / "CT 2.5 mm", tmp_path / "backup")  # copies: images, not left out
    cut_copy = tmp_path / "backup" / petct.ct.paths[0].name  # a damaged copy of a slice read intact elsewhere
    cut_copy.write_bytes(cut_copy.read_bytes()[:-200])
    paths = [tmp_path / name for name in ("petct", "ct only", "notes", "cut", "backup")]
    arguments = ["predict", *map(str, paths), "--out", str(tmp_path / "out"), "--device", "cpu", "--no-pictures"]
    assert main(arguments) == 0
    printed = capsys.readouterr().out
    assert re.search(r"^STU-0001_\w+_\d{4}-\d\d-\d\d: \d+ lesion\(s\) on cpu", printed, flags=re.MULTILINE)
    assert "STU-0002 study 20201105 'PET/CT 2': left out: no PET series in the study (CT only)" in printed
    assert f"{tmp_path / 'notes'}: left out: no DICOM image file in it" in printed
    assert (
        f"2 unreadable file(s): left out: {cut_copy}: " in printed
        or f"2 unreadable file(s): left out: {cut}: " in printed
    )
    assert "note: " in printed and "RadionuclideTotalDose (0018,1074) is 300: DICOM gives it in Bq" in printed
    assert f"{tmp_path / 'backup'}: left out" not in printed

    # Nothing to process at all, or a device that does not exist: one line, before any model run.
    assert main(["predict", str(tmp_path / "notes"), "--out", str(tmp_path / "x")]) == 2
    assert (
        capsys.readouterr().err == f"petct-lesions predict: error: {tmp_path / 'notes'}: no DICOM image files found\n"
    )
    assert main(["predict", str(tmp_path / "petct"), "--out", str(tmp_path / "x"), "--device", "gpu"]) == 2
    assert "device must be one of auto, cuda, mps, cpu (or cuda:N), got 'gpu'" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_different_slices_sharing_one_sop_instance_uid_are_both_kept_and_named(tmp_path):
    """A broken anonymiser gave every CT slice one SOPInstanceUID: not copies (their places differ)."""
    written = _write(tmp_path)
    for path in written.ct.paths:
        ds = pydicom.dcmread(path)
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = "1.2.3.4.5"
        save_dicom(ds, path)

    loaded = load_study([tmp_path])

    _assert_loaded(loaded, written)
    clashes = [w for w in loaded.warnings if "the same SOPInstanceUID as" in w]
    assert len(clashes) == len(written.ct.paths) - 1 and "both used" in clashes[0]
    assert loaded.ct_series.slice_sop_instance_uids == []  # VOC files are named by it: none can be written
