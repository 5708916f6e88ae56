"""The synthetic-series writer produces DICOM that other software reads back exactly: SimpleITK
(GDCM) recovers the grid and the HU, pydicom plus the SUV rules recover the SUV, and the
files carry the NBIA layout, deterministic valid UIDs and every type-1/type-2 tag of the IODs."""

from __future__ import annotations

import datetime
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.uid import UID
from studies import oblique_direction

from PETCTLesionsLib.dicom.suv import suv_bw_factors
from PETCTLesionsLib.errors import OutputExistsError
from PETCTLesionsLib.geometry import Grid
from PETCTLesionsLib.synthetic.dicom_writer import (
    CT_IMAGE_STORAGE,
    PET_IMAGE_STORAGE,
    PatientInfo,
    PetAcquisition,
    StudyInfo,
    make_uid,
    nbia_file_names,
    pet_suv_to_bqml_factor,
    write_ct_series,
    write_pet_series,
)

F18_HALF_LIFE_S = 6586.2


AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
OBLIQUE = oblique_direction(17.0)
CT_GRID = Grid(size=(40, 32, 12), spacing=(0.8417, 0.9123, 3.27), origin=(-120.53, -88.241, -301.7))
PET_GRID = Grid(size=(24, 20, 10), spacing=(4.0728, 4.0728, 2.027), origin=(-48.83, -40.71, -280.35))


def _with_direction(grid: Grid, direction: tuple) -> Grid:
    return Grid(size=grid.size, spacing=grid.spacing, origin=grid.origin, direction=direction)


def _study(study_number: int = 1) -> StudyInfo:
    patient = PatientInfo("SYN-0001", "Synthetic^Patient", "F", 61, 72.5, 1.68)
    return StudyInfo(
        patient=patient,
        study_uid=make_uid("test study", study_number),
        frame_of_reference_uid=make_uid("test frame", study_number),
        study_date=datetime.date(2021, 3, 4),
        study_time=datetime.time(9, 58, 1),
        study_description="PET^CT whole body",
        accession_number="ACC123",
    )


ACQUISITION = PetAcquisition(
    injected_dose_bq=3.52e8,
    injection_datetime=datetime.datetime(2021, 3, 4, 8, 59, 12, 250000),
    series_datetime=datetime.datetime(2021, 3, 4, 10, 2, 3, 500000),
)


def _hu(grid: Grid) -> np.ndarray:
    return np.random.default_rng(3).integers(-1024, 3071, size=grid.shape).astype(np.int16)


def _suv(grid: Grid) -> np.ndarray:
    rng = np.random.default_rng(5)
    suv = rng.gamma(2.0, 0.8, size=grid.shape)
    suv *= np.linspace(0.5, 4.0, grid.shape[0])[:, None, None]  # different peaks -> different slopes
    return suv


def _read_series(folder: Path) -> sitk.Image:
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    return reader.Execute()


def _assert_grid(image: sitk.Image, grid: Grid) -> None:
    assert image.GetSize() == grid.size
    np.testing.assert_allclose(image.GetSpacing(), grid.spacing, atol=1e-4)
    np.testing.assert_allclose(image.GetOrigin(), grid.origin, atol=1e-4)
    np.testing.assert_allclose(image.GetDirection(), grid.direction, atol=1e-6)


@pytest.mark.parametrize("direction", [AXIAL, OBLIQUE], ids=["axial", "oblique"])
def test_ct_series_reads_back_with_grid_and_hu_exact(tmp_path, direction):
    grid = _with_direction(CT_GRID, direction)
    hu = _hu(grid)
    result = write_ct_series(hu, grid, _study(), tmp_path / "ct")

    image = _read_series(tmp_path / "ct")
    _assert_grid(image, grid)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), hu)
    np.testing.assert_array_equal(result.stored_values, hu.astype(np.float64))
    for k, path in enumerate(result.paths):
        ds = pydicom.dcmread(path)
        assert ds.SOPInstanceUID == result.sop_instance_uids[k]
        np.testing.assert_allclose([float(v) for v in ds.ImagePositionPatient], grid.index_to_lps((0, 0, k)), atol=1e-4)
        assert ds.pixel_array.dtype == np.uint16 and ds.PixelRepresentation == 0
        np.testing.assert_array_equal(ds.pixel_array.astype(np.int32) * int(ds.RescaleSlope) - 1024, hu[k])


def test_ct_left_handed_grid_reads_back_as_the_same_voxels_in_space(tmp_path):
    """A grid whose k axis runs against row x column comes back right-handed, voxels unchanged in space."""
    grid = _with_direction(CT_GRID, (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, -1.0))
    hu = _hu(grid)
    write_ct_series(hu, grid, _study(), tmp_path / "ct")

    image = _read_series(tmp_path / "ct")
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), hu[::-1])
    np.testing.assert_allclose(image.GetOrigin(), grid.index_to_lps((0, 0, grid.size[2] - 1)), atol=1e-4)
    np.testing.assert_allclose(image.GetDirection(), AXIAL, atol=1e-6)


@pytest.mark.parametrize("direction", [AXIAL, OBLIQUE], ids=["axial", "oblique"])
def test_pet_series_decodes_to_the_input_suv(tmp_path, direction):
    grid = _with_direction(PET_GRID, direction)
    suv = _suv(grid)
    result = write_pet_series(suv, grid, _study(), ACQUISITION, tmp_path / "pt")

    datasets = [pydicom.dcmread(path) for path in result.paths]  # paths[k] is array slice k
    factors = suv_bw_factors(datasets, source=str(tmp_path / "pt"))
    assert factors.warnings == [] and factors.units == "BQML"
    uptake_s = 3600 + 2 * 60 + 51.25  # 08:59:12.25 -> 10:02:03.5
    expected_factor = 72.5 * 1000 / (3.52e8 * 2 ** (-uptake_s / F18_HALF_LIFE_S))
    np.testing.assert_allclose(factors.factors, expected_factor, rtol=1e-12)
    assert factors.decay_time_s == pytest.approx(uptake_s, abs=1e-9)

    slopes = np.array([float(ds.RescaleSlope) for ds in datasets])
    assert len(set(slopes.tolist())) == grid.size[2], "each slice has its own slope"
    decoded = np.stack([ds.pixel_array.astype(np.float64) * slope for ds, slope in zip(datasets, slopes)])
    decoded *= factors.factors[:, None, None]
    np.testing.assert_allclose(decoded, result.stored_values, rtol=1e-6, atol=0)
    quantisation = 0.5 * slopes * factors.factors
    assert np.all(np.abs(decoded - suv) <= quantisation[:, None, None] * (1 + 1e-9))
    for ds in datasets:
        assert ds.pixel_array.dtype == np.int16 and ds.PixelRepresentation == 1
        assert int(np.abs(ds.pixel_array).max()) in (32765, 32766)  # each slice's peak uses the range

    image = _read_series(tmp_path / "pt")
    _assert_grid(image, grid)
    bqml = sitk.GetArrayFromImage(image)
    np.testing.assert_allclose(bqml * expected_factor, result.stored_values, rtol=1e-6, atol=1e-9)


def test_pet_bqml_factor_is_the_decayed_dose_per_gram():
    uptake_s = 3771.25
    expected = 3.52e8 * 2 ** (-uptake_s / 6586.2) / 72500.0
    assert pet_suv_to_bqml_factor(72.5, ACQUISITION) == pytest.approx(expected, rel=1e-12)


# Type 1 (must be present and non-empty) and type 2 (must be present) tags of the IODs.
COMMON_TYPE1 = [
    "SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "Modality", "FrameOfReferenceUID",
    "PixelSpacing", "ImageOrientationPatient", "ImagePositionPatient", "SamplesPerPixel",
    "PhotometricInterpretation", "Rows", "Columns", "BitsAllocated", "BitsStored", "HighBit",
    "PixelRepresentation", "PixelData", "ImageType", "RescaleIntercept", "RescaleSlope", "SpecificCharacterSet",
]  # fmt: skip
COMMON_TYPE2 = [
    "PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime", "ReferringPhysicianName",
    "StudyID", "AccessionNumber", "SeriesNumber", "Manufacturer", "PositionReferenceIndicator", "InstanceNumber",
    "SliceThickness", "AcquisitionNumber",
]  # fmt: skip
PET_TYPE1 = [
    "SeriesDate", "SeriesTime", "Units", "CountsSource", "SeriesType", "NumberOfSlices", "DecayCorrection",
    "FrameReferenceTime", "ImageIndex", "DecayFactor", "PatientWeight",
]  # fmt: skip
PET_TYPE2 = [
    "CorrectedImage", "CollimatorType", "RadiopharmaceuticalInformationSequence", "PatientOrientationCodeSequence",
    "PatientGantryRelationshipCodeSequence", "AcquisitionDate", "AcquisitionTime", "ActualFrameDuration",
]  # fmt: skip


def _strict_read(path: Path) -> pydicom.Dataset:
    """dcmread that fails on any invalid value or warning, with the pixel data decoded."""
    saved = pydicom.config.settings.reading_validation_mode
    pydicom.config.settings.reading_validation_mode = pydicom.config.RAISE
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            ds = pydicom.dcmread(path, force=False)
            for element in ds.iterall():
                _ = element.value  # converts (and so validates) every value
            _ = ds.pixel_array
    finally:
        pydicom.config.settings.reading_validation_mode = saved
    return ds


def _assert_tags(ds: pydicom.Dataset, type1: list, type2: list) -> None:
    missing1 = [keyword for keyword in type1 if keyword not in ds or ds[keyword].is_empty]
    missing2 = [keyword for keyword in type2 if keyword not in ds]
    assert (missing1, missing2) == ([], [])


def test_files_are_valid_part10_with_all_required_tags(tmp_path):
    study = _study()
    ct = write_ct_series(_hu(CT_GRID), CT_GRID, study, tmp_path / "ct")
    pet = write_pet_series(_suv(PET_GRID), PET_GRID, study, ACQUISITION, tmp_path / "pt")
    for path in ct.paths:
        ds = _strict_read(path)
        _assert_tags(ds, COMMON_TYPE1, COMMON_TYPE2 + ["KVP"])
        assert (ds.SOPClassUID, ds.file_meta.MediaStorageSOPClassUID) == (CT_IMAGE_STORAGE, CT_IMAGE_STORAGE)
        assert (float(ds.RescaleIntercept), float(ds.RescaleSlope), ds.Modality) == (-1024.0, 1.0, "CT")
    for path in pet.paths:
        ds = _strict_read(path)
        _assert_tags(ds, COMMON_TYPE1 + PET_TYPE1, COMMON_TYPE2 + PET_TYPE2)
        assert (ds.SOPClassUID, ds.Modality, ds.Units, ds.DecayCorrection) == (PET_IMAGE_STORAGE, "PT", "BQML", "START")
        assert list(ds.CorrectedImage) == ["DECY", "ATTN", "SCAT", "DTIM", "RAN", "NORM"]
        assert list(ds.SeriesType) == ["WHOLE BODY", "IMAGE"] and ds.CountsSource == "EMISSION"
        info = ds.RadiopharmaceuticalInformationSequence[0]
        assert (info.RadiopharmaceuticalStartDateTime, info.RadiopharmaceuticalStartTime) == (
            "20210304085912.250000",
            "085912.250000",
        )
        assert (float(info.RadionuclideTotalDose), float(info.RadionuclideHalfLife)) == (3.52e8, 6586.2)
        assert float(info.RadionuclidePositronFraction) == 0.9673
        code = info.RadionuclideCodeSequence[0]
        assert (code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning) == ("C-111A1", "SRT", "^18^Fluorine")
        acquired = datetime.datetime.strptime(ds.AcquisitionDate + ds.AcquisitionTime, "%Y%m%d%H%M%S.%f")
        assert acquired >= ACQUISITION.series_datetime
        assert float(ds.PatientWeight) == 72.5 and float(ds.PatientSize) == 1.68
        assert ds.NumberOfSlices == PET_GRID.size[2] and ds.ImageIndex == ds.InstanceNumber
    for path in ct.paths + pet.paths:
        ds = pydicom.dcmread(path)
        assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
        assert (ds.StudyInstanceUID, ds.FrameOfReferenceUID) == (study.study_uid, study.frame_of_reference_uid)
        for uid in (ds.SOPInstanceUID, ds.SeriesInstanceUID, ds.StudyInstanceUID, ds.FrameOfReferenceUID):
            assert UID(uid).is_valid
    assert ct.series_uid != pet.series_uid


def test_uids_are_deterministic_and_valid(tmp_path):
    assert make_uid("a", 1) == make_uid("a", 1)
    assert make_uid("a", 1) != make_uid("a", 2) != make_uid("a1")
    assert make_uid("ab", "c") != make_uid("a", "bc")
    assert all(UID(make_uid("x", n)).is_valid and len(make_uid("x", n)) <= 64 for n in range(50))

    hu = _hu(CT_GRID)
    first = write_ct_series(hu, CT_GRID, _study(), tmp_path / "one")
    second = write_ct_series(hu, CT_GRID, _study(), tmp_path / "two")
    other_study = write_ct_series(hu, CT_GRID, _study(2), tmp_path / "three")
    assert (first.series_uid, first.sop_instance_uids) == (second.series_uid, second.sop_instance_uids)
    assert len(set(first.sop_instance_uids)) == CT_GRID.size[2]
    assert other_study.series_uid != first.series_uid
    assert not set(other_study.sop_instance_uids) & set(first.sop_instance_uids)
    assert [p.read_bytes() for p in first.paths] == [p.read_bytes() for p in second.paths]


def test_nbia_numbering_runs_head_to_feet(tmp_path):
    result = write_ct_series(_hu(CT_GRID), CT_GRID, _study(), tmp_path / "ct")
    files = sorted((tmp_path / "ct").iterdir())
    assert [f.name for f in files] == [f"1-{n:02d}.dcm" for n in range(1, 13)]
    z = [float(pydicom.dcmread(f).ImagePositionPatient[2]) for f in files]
    assert z == sorted(z, reverse=True), "1-01.dcm is the most superior slice"
    for f in files:
        assert pydicom.dcmread(f).InstanceNumber == int(f.stem.split("-")[1])
    assert result.paths[0].name == "1-12.dcm" and result.paths[-1].name == "1-01.dcm"  # array k=0 is inferior

    assert nbia_file_names(99)[-1] == "1-99.dcm"
    tall = Grid(size=(2, 3, 101), spacing=(1.0, 1.0, 1.5), origin=(0.0, 0.0, 0.0))
    tall_result = write_ct_series(np.zeros(tall.shape), tall, _study(), tmp_path / "tall")
    assert tall_result.paths[-1].name == "1-001.dcm" and tall_result.paths[0].name == "1-101.dcm"
    assert len(list((tmp_path / "tall").iterdir())) == 101


def test_refuses_to_overwrite_unless_asked(tmp_path):
    hu = _hu(CT_GRID)
    result = write_ct_series(hu, CT_GRID, _study(), tmp_path / "ct")
    before = {p: p.read_bytes() for p in result.paths}
    with pytest.raises(OutputExistsError, match="1-01.dcm"):
        write_ct_series(hu + 1, CT_GRID, _study(), tmp_path / "ct")
    assert {p: p.read_bytes() for p in result.paths} == before

    # One stray file blocks the whole series before anything is written.
    (tmp_path / "pt").mkdir()
    (tmp_path / "pt" / "1-07.dcm").write_bytes(b"not mine")
    with pytest.raises(OutputExistsError, match="1-07.dcm"):
        write_pet_series(_suv(PET_GRID), PET_GRID, _study(), ACQUISITION, tmp_path / "pt")
    assert [p.name for p in (tmp_path / "pt").iterdir()] == ["1-07.dcm"]

    again = write_ct_series(hu + 1, CT_GRID, _study(), tmp_path / "ct", overwrite=True)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(_read_series(tmp_path / "ct")), hu + 1)
    assert again.paths == result.paths
    assert not [p for p in (tmp_path / "ct").iterdir() if p.suffix != ".dcm"], "no temporary files left"


def test_rejects_values_and_settings_it_cannot_write(tmp_path):
    with pytest.raises(ValueError, match="-1025"):
        write_ct_series(np.full(CT_GRID.shape, -1025), CT_GRID, _study(), tmp_path / "a")
    with pytest.raises(ValueError, match="shape"):
        write_ct_series(np.zeros((3, 3, 3)), CT_GRID, _study(), tmp_path / "b")
    early = PetAcquisition(3.52e8, ACQUISITION.series_datetime, ACQUISITION.injection_datetime)
    with pytest.raises(ValueError, match="after the injection"):
        write_pet_series(_suv(PET_GRID), PET_GRID, _study(), early, tmp_path / "c")
    with pytest.raises(ValueError, match="NaN"):
        write_pet_series(np.full(PET_GRID.shape, np.nan), PET_GRID, _study(), ACQUISITION, tmp_path / "d")
    sheared = _with_direction(PET_GRID, (1.0, 0.5, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))
    with pytest.raises(ValueError, match="orthonormal"):
        write_pet_series(_suv(PET_GRID), sheared, _study(), ACQUISITION, tmp_path / "e")
    assert not any((tmp_path / name).exists() for name in "abcde")
