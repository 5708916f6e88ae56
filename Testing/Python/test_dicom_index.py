"""Scanning files and folders finds studies and series by their UIDs (never by folder names),
skips and counts what is not an image, reports unreadable DICOM by name, and pairs every PET
with a CT by the documented rule."""

from __future__ import annotations

import dataclasses
import datetime
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from conftest import save_dicom
from pydicom.dataset import Dataset, FileMetaDataset
from studies import study_info, write_small_study

from PETCTLesionsLib.dicom.index import scan_paths
from PETCTLesionsLib.dicom.pairing import PAIRING_RULE, pair_pet_with_ct
from PETCTLesionsLib.dicom.part10 import NoImageError, NotDicomError, read_slice_header
from PETCTLesionsLib.errors import Cancelled
from PETCTLesionsLib.geometry import Grid
from PETCTLesionsLib.synthetic.dicom_writer import (
    PatientInfo,
    PetAcquisition,
    StudyInfo,
    make_uid,
    write_ct_series,
    write_pet_series,
)

LUNG_DX_ROOT = Path(__file__).resolve().parents[1] / "Data" / "Lung-PET-CT-Dx"
CT_GRID = Grid(size=(20, 16, 10), spacing=(1.5, 1.5, 3.0), origin=(-15.0, -12.0, -30.0))
PET_GRID = Grid(size=(8, 8, 6), spacing=(4.0, 4.0, 4.0), origin=(-14.0, -14.0, -20.0))


def _study(number: int, frame: str = "") -> StudyInfo:
    patient = PatientInfo(f"IDX-{number:04d}", f"Index^Patient{number}", "F", 50 + number, 60.0 + number)
    study = study_info("index", patient, datetime.datetime(2021, 6, number, 9, 0), f"study {number}", number)
    return dataclasses.replace(study, frame_of_reference_uid=frame) if frame else study


def _acquisition(day: int) -> PetAcquisition:
    return PetAcquisition(2.5e8, datetime.datetime(2021, 6, day, 8, 0), datetime.datetime(2021, 6, day, 9, 5))


def _write_study(root: Path, number: int):
    study, acquisition = _study(number), _acquisition(number)
    written = write_small_study(
        root, study, acquisition, CT_GRID, PET_GRID, seed=number, suv_scale=1.0, folders=("CT  series", "PET")
    )
    return written.study, written.ct, written.pet


def test_real_lung_dx_folder_is_one_ct_study_with_no_pet():
    scan = scan_paths([LUNG_DX_ROOT])  # the CT slices, the LICENSE and any annotation XML files

    assert scan.problems == [] and scan.files_found == 11 + len(scan.skipped)
    assert "LICENSE" in [item.path.name for item in scan.skipped]
    assert {item.message for item in scan.skipped} == {"not a DICOM file"}
    assert len(scan.studies) == 1
    study = scan.studies[0]
    assert (study.patient_id, study.study_date, study.description) == ("Lung_Dx-A0001", "20070404", "Chest")
    assert [(s.modality, s.series_number, s.description, len(s.headers)) for s in study.series] == [
        ("CT", 2, "5mm", 11)
    ]
    assert pair_pet_with_ct(scan.studies) == []


def test_two_studies_mixed_into_one_shuffled_flat_folder_are_told_apart(tmp_path):
    written = [_write_study(tmp_path / f"study {n}", n) for n in (1, 2)]
    flat = tmp_path / "all  files"
    flat.mkdir()
    files = [p for _, ct, pet in written for p in ct.paths + pet.paths]
    for rank, index in enumerate(np.random.default_rng(9).permutation(len(files))):
        shutil.copy(files[index], flat / f"{rank:03d} {index * 37 % 101}")

    scan = scan_paths([flat])

    assert scan.files_found == len(files) and scan.skipped == [] and scan.problems == []
    assert [s.study_uid for s in scan.studies] == [written[0][0].study_uid, written[1][0].study_uid]
    for (study, ct, pet), indexed in zip(written, scan.studies):
        assert indexed.patient_id == study.patient.patient_id
        assert {(s.modality, s.series_uid, len(s.headers)) for s in indexed.series} == {
            ("CT", ct.series_uid, 10),
            ("PT", pet.series_uid, 6),
        }
    pairings = pair_pet_with_ct(scan.studies)
    assert [(p.pet.series_uid, p.ct.series_uid) for p in pairings] == [
        (written[0][2].series_uid, written[0][1].series_uid),
        (written[1][2].series_uid, written[1][1].series_uid),
    ]
    assert pairings[0].rule.startswith("the only CT series (same study)")
    # One study's pairings alone are those the whole run gives it.
    assert pair_pet_with_ct(scan.studies, written[1][0].study_uid) == pairings[1:]


def test_files_and_folders_can_be_mixed_and_named_twice(tmp_path):
    _, ct, pet = _write_study(tmp_path / "one", 1)
    scan = scan_paths([pet.paths[0], tmp_path / "one", ct.paths[2]])
    assert scan.files_found == 16
    assert sorted(len(s.headers) for s in scan.series) == [6, 10]

    missing = tmp_path / "not there"
    assert [(p.path, p.message) for p in scan_paths([missing]).problems] == [
        (missing, "does not exist (or is not a file or folder)")
    ]


def test_junk_non_image_and_truncated_files_are_counted_and_named(tmp_path):
    _, ct, _ = _write_study(tmp_path / "study", 1)
    junk = tmp_path / "study" / "notes.txt"
    junk.write_text("not DICOM at all")
    fake = tmp_path / "study" / "looks like a dataset"
    fake.write_bytes(b"\x08\x00\x05\x00" + bytes(range(200)))
    report = tmp_path / "study" / "report.dcm"
    _write_structured_report(report)
    truncated = tmp_path / "study" / "truncated.dcm"
    data = ct.paths[4].read_bytes()
    truncated.write_bytes(data[: len(data) - 100])
    header_only = tmp_path / "study" / "cut in header.dcm"
    header_only.write_bytes(data[:600])

    scan = scan_paths([tmp_path / "study"])

    skipped = {item.path.name: item.message for item in scan.skipped}
    assert skipped == {
        "notes.txt": "not a DICOM file",
        "looks like a dataset": "not a DICOM file",
        "report.dcm": "DICOM without an image (SR)",
    }
    problems = {item.path: item.message for item in scan.problems}
    assert set(problems) == {truncated, header_only}
    assert problems[truncated].startswith(f"{truncated}: the file is truncated: its pixel data need 640 bytes")
    assert problems[header_only] == (
        f"{header_only}: a CT Image Storage file without Rows, Columns or pixel data; the file is truncated or corrupt"
    )
    assert sorted(len(s.headers) for s in scan.series) == [6, 10]  # the good files are all there


def _write_structured_report(path: Path) -> None:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.88.11"
    ds.file_meta.MediaStorageSOPInstanceUID = make_uid("sr instance")
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = make_uid("index study", 1)
    ds.SeriesInstanceUID = make_uid("sr series")
    ds.Modality = "SR"
    save_dicom(ds, path)


def test_read_slice_header_raises_the_documented_errors(tmp_path):
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"\x00" * 10)
    with pytest.raises(NotDicomError):
        read_slice_header(junk)
    report = tmp_path / "sr.dcm"
    _write_structured_report(report)
    with pytest.raises(NoImageError, match=r"DICOM without an image \(SR\)"):
        read_slice_header(report)


def test_pet_headers_are_kept_for_suv_and_ct_headers_are_not(tmp_path):
    _, ct, pet = _write_study(tmp_path, 1)
    pet_header, ct_header = read_slice_header(pet.paths[0]), read_slice_header(ct.paths[0])
    assert pet_header.dataset is not None and pet_header.dataset.filename == str(pet.paths[0])
    assert float(pet_header.dataset.PatientWeight) == 61.0
    assert ct_header.dataset is None
    assert (ct_header.rows, ct_header.columns, ct_header.bits_allocated, ct_header.rescale_intercept) == (
        16,
        20,
        16,
        -1024.0,
    )
    assert ct_header.position == pytest.approx(tuple(CT_GRID.index_to_lps((0, 0, 0))))
    assert pet_header.rescale_slope == float(pydicom.dcmread(pet.paths[0]).RescaleSlope)


def test_several_ct_candidates_are_ranked_by_the_documented_rule(tmp_path):
    study = _study(3)
    rng = np.random.default_rng(3)
    other_frame = dataclasses.replace(study, frame_of_reference_uid=make_uid("another frame"))
    # Best overlap but another frame of reference: loses to every same-frame CT.
    write_ct_series(rng.integers(-900, 900, CT_GRID.shape), CT_GRID, other_frame, tmp_path / "a", series_number=1)
    # Same frame, overlaps the PET (slices widened by half their thickness) by 20.5 mm.
    covering = write_ct_series(rng.integers(-900, 900, CT_GRID.shape), CT_GRID, study, tmp_path / "b", series_number=7)
    # Same frame, more slices, but shifted so that it overlaps the PET by 4.5 mm only.
    shifted_grid = Grid((20, 16, 14), (1.5, 1.5, 3.0), (-15.0, -12.0, -1.0))
    shifted = write_ct_series(
        rng.integers(-900, 900, shifted_grid.shape), shifted_grid, study, tmp_path / "c", series_number=2
    )
    # Same frame and same overlap as "b", same slice count, higher series number: loses the last tie.
    twin = write_ct_series(rng.integers(-900, 900, CT_GRID.shape), CT_GRID, study, tmp_path / "d", series_number=9)
    pet = write_pet_series(rng.gamma(2.0, 1.0, PET_GRID.shape), PET_GRID, study, _acquisition(3), tmp_path / "pt")

    (pairing,) = pair_pet_with_ct(scan_paths([tmp_path]).studies)

    assert pairing.pet.series_uid == pet.series_uid
    assert pairing.ct.series_uid == covering.series_uid
    assert pairing.rule == (
        f"chosen among 4 CT series (same study) by the rule [{PAIRING_RULE}]: CT series 7 'CT 3mm' "
        f"({covering.series_uid}): same FrameOfReferenceUID, z-overlap 20.5 mm, 10 slices"
    )
    assert [alternative.split(" (")[0] for alternative in pairing.alternatives] == [
        "CT series 9 'CT 3mm'",
        "CT series 2 'CT 3mm'",
        "CT series 1 'CT 3mm'",
    ]
    assert pairing.alternatives[1].endswith("same FrameOfReferenceUID, z-overlap 4.5 mm, 14 slices")
    assert pairing.alternatives[2].endswith("different FrameOfReferenceUID, z-overlap 20.5 mm, 10 slices")
    assert twin.series_uid in pairing.alternatives[0] and shifted.series_uid in pairing.alternatives[1]
    # The chosen CT covers 20.5 of the PET's 24 mm along z: said, and the pair still loads.
    (warning,) = pairing.warnings
    assert "covers 20.5 mm of the 24.0 mm" in warning and "(85%), under 90%" in warning and pairing.error is None


def test_pet_without_ct_in_its_study_uses_a_ct_sharing_its_frame_of_reference(tmp_path):
    frame = make_uid("shared frame")
    ct_study, pet_study = _study(4, frame), dataclasses.replace(_study(4, frame), study_uid=make_uid("pet only"))
    rng = np.random.default_rng(4)
    ct = write_ct_series(rng.integers(-900, 900, CT_GRID.shape), CT_GRID, ct_study, tmp_path / "ct")
    write_pet_series(rng.gamma(2.0, 1.0, PET_GRID.shape), PET_GRID, pet_study, _acquisition(4), tmp_path / "pt")

    (pairing,) = pair_pet_with_ct(scan_paths([tmp_path]).studies)
    assert pairing.ct.series_uid == ct.series_uid
    assert pairing.rule.startswith(
        "the only CT series (another study of the patient with the same FrameOfReferenceUID)"
    )

    (alone,) = pair_pet_with_ct(scan_paths([tmp_path / "pt"]).studies)
    assert alone.ct is None
    assert alone.rule == "no CT series in the study (nor one sharing the PET's FrameOfReferenceUID)"


def test_scan_reports_progress_and_can_be_cancelled(tmp_path):
    _write_study(tmp_path, 1)
    fractions = []
    scan_paths([tmp_path], progress=lambda fraction, message: fractions.append(fraction))
    assert fractions[0] == 0.0 and fractions[-1] == 1.0 and fractions == sorted(fractions)

    calls = []
    with pytest.raises(Cancelled):
        scan_paths([tmp_path], cancel=lambda: calls.append(1) or len(calls) > 3)
    assert len(calls) == 4
