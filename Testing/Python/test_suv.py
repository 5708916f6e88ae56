"""Body-weight SUV factors from PET headers as the vendors write them (built to the DICOM
standard here, plus file round trips), checked against hand calculations; and the refusals
that keep a wrong SUV from ever being shown."""

from __future__ import annotations

import datetime
from typing import Dict, List, Optional

import numpy as np
import pydicom
import pytest
from conftest import save_dicom
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence

from PETCTLesionsLib.dicom.suv import (
    SUVError,
    parse_dicom_date,
    parse_dicom_datetime,
    parse_dicom_time,
    suv_bw_factors,
)

HALF_LIFE = 6586.2  # F-18, seconds


def _pet_slice(
    acquisition_time: str = "092006",
    *,
    units: str = "BQML",
    weight: Optional[str] = "81.3",
    dose: Optional[str] = "352000000",
    half_life: Optional[str] = "6586.2",
    start_time: Optional[str] = "081430",
    start_datetime: Optional[str] = None,
    series_date: str = "20190612",
    series_time: str = "092005.5",
    decay_correction: str = "START",
    corrected: Optional[List[str]] = None,
    manufacturer: str = "SIEMENS",
) -> Dataset:
    """Headers of one PET slice, Siemens-style by default (series time before acquisition)."""
    ds = Dataset()
    ds.Modality = "PT"
    ds.Manufacturer = manufacturer
    ds.SeriesDate = series_date
    ds.SeriesTime = series_time
    ds.AcquisitionDate = series_date
    ds.AcquisitionTime = acquisition_time
    if weight is not None:
        ds.PatientWeight = weight
    ds.Units = units
    ds.DecayCorrection = decay_correction
    ds.CorrectedImage = corrected if corrected is not None else ["NORM", "DTIM", "ATTN", "SCAT", "DECY", "RAN"]
    ds.RescaleSlope = "1.234"
    ds.RescaleIntercept = "0"
    info = Dataset()
    info.Radiopharmaceutical = "Fluorodeoxyglucose"
    for keyword, value in (
        ("RadiopharmaceuticalStartTime", start_time),
        ("RadiopharmaceuticalStartDateTime", start_datetime),
        ("RadionuclideTotalDose", dose),
        ("RadionuclideHalfLife", half_life),
    ):
        if value is not None:
            setattr(info, keyword, value)
    ds.RadiopharmaceuticalInformationSequence = Sequence([info])
    return ds


def _series(times=("092006", "092210", "092414"), **kwargs) -> List[Dataset]:
    return [_pet_slice(t, **kwargs) for t in times]


def _bw_factor(weight_kg: float, dose_bq: float, dt_s: float, half_life_s: float = HALF_LIFE) -> float:
    """The hand formula: weight[g] / (dose[Bq] x 2^(-dt / T1/2))."""
    return weight_kg * 1000.0 / (dose_bq * 2.0 ** (-dt_s / half_life_s))


def _add_private(ds: Dataset, group: int, creator: str, values: Dict[int, tuple]) -> None:
    block = ds.private_block(group, creator, create=True)
    for offset, (vr, value) in values.items():
        block.add_new(offset, vr, value)


def _save(ds: Dataset, path, implicit: bool) -> None:
    ds = ds.copy()
    ds.file_meta = FileMetaDataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.128"
    ds.SOPInstanceUID = pydicom.uid.generate_uid()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = (
        pydicom.uid.ImplicitVRLittleEndian if implicit else pydicom.uid.ExplicitVRLittleEndian
    )
    save_dicom(ds, path)


# --------------------------------------------------------------------------- vendor variants


def test_siemens_bqml_start_uses_the_series_time():
    result = suv_bw_factors(_series(), source="siemens")
    dt = (9 * 3600 + 20 * 60 + 5.5) - (8 * 3600 + 14 * 60 + 30)  # 3935.5 s
    assert result.decay_time_s == dt
    np.testing.assert_allclose(result.factors, [_bw_factor(81.3, 3.52e8, 3935.5)] * 3, rtol=1e-12)
    assert result.factors[0] == pytest.approx(81300 / (352000000 * 2 ** (-3935.5 / 6586.2)), rel=1e-12)
    assert (result.units, result.weight_kg, result.injected_dose_bq, result.half_life_s) == (
        "BQML",
        81.3,
        3.52e8,
        6586.2,
    )
    assert "series date/time 2019-06-12 09:20:05.500000" in result.reference_time
    assert result.warnings == []


def _ge_series(private_scan: Optional[str], series_time: str = "140500") -> List[Dataset]:
    """GE: series re-created at 14:05 after a scan acquired from 11:30; injection 10:20:00."""
    datasets = _series(
        ("113000.00", "113300"),
        series_date="20200101",
        series_time=series_time,
        start_time=None,
        start_datetime="20200101102000.00",
        manufacturer="GE MEDICAL SYSTEMS",
    )
    if private_scan is not None:
        for ds in datasets:
            _add_private(ds, 0x0009, "GEMS_PETD_01", {0x0D: ("DT", private_scan)})
    return datasets


def test_ge_series_after_acquisition_uses_the_private_scan_datetime():
    result = suv_bw_factors(_ge_series("20200101112945.00"))
    assert result.decay_time_s == 4185.0  # 10:20:00 -> 11:29:45
    np.testing.assert_allclose(result.factors, _bw_factor(81.3, 3.52e8, 4185.0), rtol=1e-12)
    assert "(0009,100D)" in result.reference_time and "11:29:45" in result.reference_time


def test_ge_series_after_acquisition_without_private_uses_the_earliest_acquisition():
    result = suv_bw_factors(_ge_series(None))
    assert result.decay_time_s == 4200.0  # 10:20:00 -> 11:30:00 (earliest acquisition)
    np.testing.assert_allclose(result.factors, _bw_factor(81.3, 3.52e8, 4200.0), rtol=1e-12)
    assert "earliest acquisition" in result.reference_time


def test_ge_private_datetime_is_ignored_when_the_series_time_is_consistent():
    result = suv_bw_factors(_ge_series("20200101112945.00", series_time="112958"))
    assert result.decay_time_s == 4198.0  # series time 11:29:58 is before the acquisitions: it is the reference
    assert result.reference_time.startswith("series date/time")


def test_ge_private_tag_survives_an_implicit_vr_file(tmp_path):
    paths = []
    for n, ds in enumerate(_ge_series("20200101112945")):
        paths.append(tmp_path / f"ge{n}.dcm")
        _save(ds, paths[-1], implicit=True)
    result = suv_bw_factors([pydicom.dcmread(p) for p in paths])
    assert result.decay_time_s == 4185.0
    np.testing.assert_allclose(result.factors, _bw_factor(81.3, 3.52e8, 4185.0), rtol=1e-12)


def test_ge_private_tag_as_unknown_bytes_is_decoded():
    """Anonymisers and old toolkits leave private elements as UN: padded ASCII bytes."""
    datasets = _ge_series(None)
    for ds in datasets:
        _add_private(ds, 0x0009, "GEMS_PETD_01", {0x0D: ("UN", b"20200101112945.00 ")})
    assert isinstance(datasets[0][0x0009100D].value, bytes)
    assert suv_bw_factors(datasets).decay_time_s == 4185.0


def test_post_processed_series_without_ge_tag_works_back_the_scan_start_from_the_frame_timing():
    """QIBA's third choice: two beds of 3 minutes from 11:30:00; each slice's AcquisitionTime is
    when its bed started counting (the first one 20 s late), FrameReferenceTime counts from the
    scan start to the bed's average-count-rate moment. The series was re-created at 14:05."""
    start = datetime.datetime(2020, 1, 1, 11, 30, 0)
    decay_rate = np.log(2.0) / HALF_LIFE
    average = np.log(decay_rate * 180.0 / (1.0 - np.exp(-decay_rate * 180.0))) / decay_rate  # ~ 90 s
    datasets = _ge_series(None)
    for ds, bed_start_s in zip(datasets, (20.0, 200.0)):
        ds.AcquisitionTime = (start + datetime.timedelta(seconds=bed_start_s)).strftime("%H%M%S.%f")
        ds.ActualFrameDuration = 180000
        ds.FrameReferenceTime = f"{(bed_start_s + average) * 1000.0:.3f}"

    result = suv_bw_factors(datasets)

    assert result.decay_time_s == pytest.approx(4200.0, abs=0.01)  # 10:20:00 -> 11:30:00, not 11:30:20
    assert result.reference_time.startswith("scan start 2020-01-01 11:30:00")
    np.testing.assert_allclose(result.factors, _bw_factor(81.3, 3.52e8, 4200.0), rtol=1e-6)
    # Slices that do not agree on the start tell none: the earliest acquisition is taken.
    datasets[1].FrameReferenceTime = "1000"
    assert suv_bw_factors(datasets).reference_time.startswith("earliest acquisition date/time 2020-01-01 11:30:20")


def test_a_dose_written_in_mbq_is_read_as_mbq_with_a_warning():
    result = suv_bw_factors(_series(dose="352"))
    np.testing.assert_allclose(result.factors, suv_bw_factors(_series()).factors, rtol=1e-12)
    assert result.injected_dose_bq == 3.52e8
    assert any("RadionuclideTotalDose (0018,1074) is 352: DICOM gives it in Bq" in w for w in result.warnings)


def test_a_philips_suv_scale_factor_of_zero_falls_back_to_the_bqml_factor():
    datasets = _series(("092006", "092006"), units="CNTS")
    for ds in datasets:
        _add_private(ds, 0x7053, "Philips PET Private Group", {0x00: ("DS", "0"), 0x09: ("DS", "3.2")})
    np.testing.assert_allclose(suv_bw_factors(datasets).factors, 3.2 * _bw_factor(81.3, 3.52e8, 3935.5), rtol=1e-12)


def test_philips_factors_whose_private_creator_was_removed_are_found_where_philips_writes_them():
    datasets = _series(("092006", "092006"), units="CNTS", manufacturer="Philips Medical Systems")
    for ds in datasets:
        ds.add_new(0x70531009, "DS", "3.2")  # (7053,1009) without its (7053,0010) creator
    np.testing.assert_allclose(suv_bw_factors(datasets).factors, 3.2 * _bw_factor(81.3, 3.52e8, 3935.5), rtol=1e-12)
    for ds in datasets:  # another vendor's element at that place means nothing
        ds.Manufacturer = "SIEMENS"
    with pytest.raises(SUVError, match="Units \\(0054,1001\\) is CNTS but neither"):
        suv_bw_factors(datasets)


def test_philips_cnts_with_the_private_suv_scale_factor():
    datasets = _series(("100000", "100000"), units="CNTS", weight=None, decay_correction="NONE")
    for ds, factor in zip(datasets, ("0.000123", "0.000456")):
        _add_private(ds, 0x7053, "Philips PET Private Group", {0x00: ("DS", factor)})
    result = suv_bw_factors(datasets)
    np.testing.assert_array_equal(result.factors, [0.000123, 0.000456])  # applied to the rescaled value
    assert (result.units, result.decay_time_s, result.weight_kg) == ("CNTS", None, None)
    assert "(7053,1000)" in result.reference_time


def test_philips_cnts_with_the_private_bqml_scale_factor(tmp_path):
    datasets = _series(("092006", "092006"), units="CNTS")
    for ds, factor in zip(datasets, ("3.2", "3.55")):
        _add_private(ds, 0x7053, "Philips PET Private Group", {0x09: ("DS", factor)})
    bw = _bw_factor(81.3, 3.52e8, 3935.5)
    np.testing.assert_allclose(suv_bw_factors(datasets).factors, [3.2 * bw, 3.55 * bw], rtol=1e-12)

    # The same through Explicit VR files: the private creator is found in a later block too.
    path = tmp_path / "philips.dcm"
    moved = _pet_slice(units="CNTS")
    _add_private(moved, 0x7053, "Other Creator", {0x01: ("LO", "x")})
    _add_private(moved, 0x7053, "Philips PET Private Group", {0x09: ("DS", "3.55")})
    assert (0x7053, 0x1109) in moved
    _save(moved, path, implicit=False)
    np.testing.assert_allclose(suv_bw_factors([pydicom.dcmread(path)]).factors, [3.55 * bw], rtol=1e-12)


def test_gml_is_already_suv():
    result = suv_bw_factors(_series(units="GML", weight=None, dose=None))
    np.testing.assert_array_equal(result.factors, [1.0, 1.0, 1.0])
    assert (result.units, result.weight_kg, result.injected_dose_bq) == ("GML", None, None)


def test_admin_decay_correction_means_no_decay():
    result = suv_bw_factors(_series(decay_correction="ADMIN", start_time=None))
    assert result.decay_time_s == 0.0
    np.testing.assert_allclose(result.factors, 81.3 * 1000 / 3.52e8, rtol=1e-12)
    assert result.reference_time.startswith("ADMIN")


def test_start_datetime_is_preferred_and_carries_the_day_before():
    """Injected 23:40:10 on 11 June, scanned 00:35:40 on 12 June: dt = 55 min 30 s."""
    kwargs = {"series_date": "20190612", "series_time": "003540", "start_time": "234010"}
    with_datetime = suv_bw_factors(_series(("003541",), start_datetime="20190611234010", **kwargs))
    assert with_datetime.decay_time_s == 3330.0 and with_datetime.warnings == []
    np.testing.assert_allclose(with_datetime.factors, _bw_factor(81.3, 3.52e8, 3330.0), rtol=1e-12)

    # Only StartTime + SeriesDate: 23:40 is taken on the day before, and the result says so.
    time_only = suv_bw_factors(_series(("003541",), **kwargs))
    assert time_only.decay_time_s == 3330.0
    np.testing.assert_array_equal(time_only.factors, with_datetime.factors)
    assert len(time_only.warnings) == 1 and "day before" in time_only.warnings[0]

    # Same day: StartTime combined with SeriesDate directly, no warning.
    same_day = suv_bw_factors(_series(start_time="090005.5"))
    assert same_day.decay_time_s == 1200.0 and same_day.warnings == []


ZR89_HALF_LIFE = 282276.0  # 78.41 h
RB82_HALF_LIFE = 75.45


def test_a_start_datetime_on_the_wrong_day_falls_back_to_its_time_of_day_and_says_so():
    """Series 2019-06-12 09:20:05.5, injection 08:14:30: dt = 3935.5 s whatever the date says.

    Anonymisers that shift the series dates but not RadiopharmaceuticalStartDateTime give a
    date days away; the time of day is still right.
    """
    expected = _bw_factor(81.3, 3.52e8, 3935.5)
    for start_datetime, start_time in (
        ("20190611081430", "081430"),  # a day early, StartTime agrees
        ("20190611081430", None),  # a day early, no StartTime: the DT's own time of day
        ("19000101081430", None),  # used to underflow the decay to 0 (ZeroDivisionError)
        ("20190613081430", "081430"),  # a day late: after the scan
    ):
        result = suv_bw_factors(_series(start_datetime=start_datetime, start_time=start_time))
        assert result.decay_time_s == 3935.5, start_datetime
        np.testing.assert_allclose(result.factors, expected, rtol=1e-12)
        assert len(result.warnings) == 1 and "its date cannot be right" in result.warnings[0]
        assert "2019-06-12 08:14:30" in result.warnings[0] and "(0018,1078)" in result.warnings[0]


def test_a_start_datetime_with_only_a_date_takes_the_time_from_start_time():
    result = suv_bw_factors(_series(start_datetime="20190612", start_time="081430"))
    assert result.decay_time_s == 3935.5 and result.warnings == []
    with pytest.raises(SUVError, match=r"RadiopharmaceuticalStartDateTime \(0018,1078\) '20190612' has no time of day"):
        suv_bw_factors(_series(start_datetime="20190612", start_time=None))


def test_injection_before_midnight_with_equal_dates_is_taken_on_the_day_before():
    """Dates set equal (23:40:10 on the scan day, scan 00:35:40): the day before, with a warning."""
    result = suv_bw_factors(
        _series(("003541",), series_time="003540", start_datetime="20190612234010", start_time=None)
    )
    assert result.decay_time_s == 3330.0
    assert any("day before" in warning for warning in result.warnings)


def test_long_lived_radionuclides_keep_days_of_uptake_but_need_the_date():
    """Zr-89 antibodies are imaged days after injection: the date/time is taken as it is."""
    three_days = 3 * 86400 + 3935.5
    result = suv_bw_factors(_series(start_datetime="20190609081430", start_time=None, half_life=str(ZR89_HALF_LIFE)))
    assert result.decay_time_s == three_days and result.warnings == []
    np.testing.assert_allclose(result.factors, _bw_factor(81.3, 3.52e8, three_days, ZR89_HALF_LIFE), rtol=1e-12)
    # A time of day alone cannot say which day: refused rather than assumed to be the scan day.
    with pytest.raises(SUVError, match=r"half-life is 78.4 h .* RadiopharmaceuticalStartDateTime \(0018,1078\)"):
        suv_bw_factors(_series(half_life=str(ZR89_HALF_LIFE)))


def test_uptake_longer_than_ten_half_lives_is_refused():
    """Rb-82 (75 s): an injection an hour before the scan is 48 half-lives, a wrong time."""
    with pytest.raises(SUVError, match=r"RadiopharmaceuticalStartTime \(0018,1072\) 08:14:30 is 1.09 h before"):
        suv_bw_factors(_series(half_life=str(RB82_HALF_LIFE)))
    ok = suv_bw_factors(_series(start_time="091835.5", half_life=str(RB82_HALF_LIFE)))
    assert ok.decay_time_s == 90.0 and ok.warnings == []
    # F-18 over 12 hours on the same day (injection 00:10, scan 20:00): refused too.
    with pytest.raises(SUVError, match="more than the longest plausible uptake"):
        suv_bw_factors(_series(("200006",), series_time="200005", start_time="001000"))


def test_a_blanked_injection_time_gives_a_warning():
    """StartTime 000000 (an anonymiser's blank) is 9.3 h before the scan: possible, so only warned."""
    result = suv_bw_factors(_series(start_time="000000"))
    assert result.decay_time_s == 9 * 3600 + 20 * 60 + 5.5
    assert len(result.warnings) == 1 and "more than 4 half-lives" in result.warnings[0]


def test_an_infinite_factor_is_refused():
    with pytest.raises(SUVError, match="the SUV factor is inf"):
        suv_bw_factors(_series(dose="1e-320"))


def test_stored_suv_must_be_body_weight_suv():
    datasets = _series(units="GML", weight=None, dose=None)
    for ds in datasets:
        ds.SUVType = "BW"
    assert suv_bw_factors(datasets).reference_time == "GML with SUV Type BW: values are already SUVbw"
    for ds in datasets:
        ds.SUVType = "LBM"
    with pytest.raises(SUVError, match=r"Units \(0054,1001\) is GML with SUVType \(0054,1006\) 'LBM'"):
        suv_bw_factors(datasets)


def test_start_time_with_fractional_and_missing_seconds():
    assert suv_bw_factors(_series(start_time="0814")).decay_time_s == 3965.5
    assert suv_bw_factors(_series(start_time="081429.75")).decay_time_s == 3935.75
    assert suv_bw_factors(_series(start_datetime="201906120814")).decay_time_s == 3965.5


def test_per_slice_factors_follow_the_slices():
    datasets = _series(("092006", "092210"), units="CNTS")
    for ds, factor in zip(datasets, ("2", "5")):
        _add_private(ds, 0x7053, "Philips PET Private Group", {0x09: ("DS", factor)})
    factors = suv_bw_factors(datasets).factors
    assert factors.shape == (2,) and factors[1] / factors[0] == pytest.approx(2.5, rel=1e-15)
    stored, slope = np.array([100, -3, 0]), 1.234
    suv = (stored * slope + 0.0) * factors[1]
    np.testing.assert_allclose(suv, stored * 1.234 * 5 * _bw_factor(81.3, 3.52e8, 3935.5), rtol=1e-12)


def test_corrected_image_without_attenuation_or_decay_is_a_warning():
    result = suv_bw_factors(_series(corrected=["NORM", "DECY"]))
    assert len(result.warnings) == 1 and "ATTN" in result.warnings[0] and "(0028,0051)" in result.warnings[0]
    both = suv_bw_factors(_series(corrected=["NORM"])).warnings
    assert len(both) == 1 and "ATTN and DECY" in both[0]


# --------------------------------------------------------------------------- refusals


def _without(keyword: str) -> List[Dataset]:
    datasets = _series()
    del datasets[1][keyword]
    return datasets


def _without_in_sequence(keyword: str) -> List[Dataset]:
    datasets = _series()
    for ds in datasets:
        del ds.RadiopharmaceuticalInformationSequence[0][keyword]
    return datasets


REFUSALS = {
    "missing weight": (lambda: _without("PatientWeight"), "PatientWeight (0010,1030) is missing"),
    "empty weight": (lambda: _series(weight=""), "PatientWeight (0010,1030) is missing or empty"),
    "zero weight": (lambda: _series(weight="0"), "PatientWeight (0010,1030) is 0"),
    "weight in grams": (lambda: _series(weight="81300"), "PatientWeight (0010,1030) is 81300: DICOM gives it in kg"),
    "dose neither Bq nor MBq": (lambda: _series(dose="50000"), "RadionuclideTotalDose (0018,1074) is 50000 Bq, below"),
    "missing dose": (lambda: _without_in_sequence("RadionuclideTotalDose"), "RadionuclideTotalDose (0018,1074)"),
    "missing half-life": (lambda: _without_in_sequence("RadionuclideHalfLife"), "RadionuclideHalfLife (0018,1075)"),
    "missing start time": (
        lambda: _without_in_sequence("RadiopharmaceuticalStartTime"),
        "RadiopharmaceuticalStartTime (0018,1072) and RadiopharmaceuticalStartDateTime (0018,1078) are missing",
    ),
    "missing sequence": (
        lambda: _without("RadiopharmaceuticalInformationSequence"),
        "RadiopharmaceuticalInformationSequence (0054,0016) is missing",
    ),
    "unknown units": (lambda: _series(units="PROPCPS"), "Units (0054,1001) is 'PROPCPS'"),
    "missing units": (lambda: _without("Units"), "Units (0054,1001) is missing"),
    "CNTS without private factors": (
        lambda: _series(units="CNTS"),
        "Units (0054,1001) is CNTS but neither Philips SUV scale factor (7053,1000)",
    ),
    "unknown decay correction": (lambda: _series(decay_correction="BOGUS"), "DecayCorrection (0054,1102) is 'BOGUS'"),
    "decay correction NONE": (lambda: _series(decay_correction="NONE"), "DecayCorrection (0054,1102) is 'NONE'"),
    "weights disagree": (
        lambda: [_pet_slice(weight="81.3"), _pet_slice(weight="80")],
        "PatientWeight (0010,1030) is 80.0 but 81.3",
    ),
    "doses disagree": (
        lambda: [_pet_slice(dose="352000000"), _pet_slice(dose="351000000")],
        "RadionuclideTotalDose (0018,1074) is 351000000.0",
    ),
    "units disagree": (lambda: [_pet_slice(units="BQML"), _pet_slice(units="GML")], "Units (0054,1001) is 'GML'"),
    "not a number": (lambda: _malformed_dose("LO", "lots"), "RadionuclideTotalDose (0018,1074) is 'lots'"),
    "undecodable number": (
        lambda: _malformed_dose("DS", "1e8x"),
        "RadionuclideTotalDose (0018,1074) is '1e8x', which is not a number",
    ),
    "two numbers": (lambda: _series(dose=["1e8", "2e8"]), "RadionuclideTotalDose (0018,1074) has 2 values"),
    "injection after the scan": (
        lambda: _series(start_time="093000"),
        "RadiopharmaceuticalStartTime (0018,1072) 09:30:00 is after the decay reference",
    ),
    "start datetime after the scan": (
        lambda: _series(start_datetime="20190612093000", start_time=None),
        "RadiopharmaceuticalStartDateTime (0018,1078) 2019-06-12 09:30:00 is after",
    ),
    "bad series time": (lambda: _malformed_series_time("9h20"), "SeriesTime (0008,0031): '9h20' is not a DICOM time"),
    "not PET": (lambda: [_pet_slice()] + [_ct_slice()], "Modality (0008,0060) is 'CT'"),
}


def _malformed_dose(vr: str, text: str) -> List[Dataset]:
    """A dose element as a file reader leaves it: raw bytes, converted (and failing) on access."""
    datasets = _series()
    for ds in datasets:
        info = ds.RadiopharmaceuticalInformationSequence[0]
        tag = pydicom.tag.Tag("RadionuclideTotalDose")
        info[tag] = RawDataElement(tag, vr, len(text), text.encode(), 0, False, True)
    return datasets


def _malformed_series_time(text: str) -> List[Dataset]:
    datasets = _series()
    tag = pydicom.tag.Tag("SeriesTime")
    for ds in datasets:
        ds[tag] = RawDataElement(tag, "TM", len(text), text.encode(), 0, False, True)
    return datasets


def _ct_slice() -> Dataset:
    ds = _pet_slice()
    ds.Modality = "CT"
    return ds


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_refuses_with_a_message_naming_the_tag(case):
    build, message = REFUSALS[case]
    with pytest.raises(SUVError) as raised:
        suv_bw_factors(build(), source="/data/pet-series")
    assert message in str(raised.value)
    assert str(raised.value).startswith("/data/pet-series")


def test_philips_factor_on_only_some_slices_is_refused():
    datasets = _series(("092006", "092210"), units="CNTS")
    _add_private(datasets[0], 0x7053, "Philips PET Private Group", {0x00: ("DS", "0.0001")})
    with pytest.raises(SUVError, match=r"\(dataset #1\): Philips SUV scale factor \(7053,1000\).* is missing"):
        suv_bw_factors(datasets, source="series")


def test_error_names_the_file(tmp_path):
    path = tmp_path / "slice 007.dcm"
    _save(_pet_slice(weight="0"), path, implicit=False)
    with pytest.raises(SUVError) as raised:
        suv_bw_factors([pydicom.dcmread(path)])
    assert str(raised.value).startswith(f"{path}: PatientWeight (0010,1030) is 0")
    with pytest.raises(SUVError, match="no DICOM datasets"):
        suv_bw_factors([], source="empty folder")


# --------------------------------------------------------------------------- DICOM date/time parsing


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("092005.5", datetime.time(9, 20, 5, 500000)),
        ("092005.123456", datetime.time(9, 20, 5, 123456)),
        ("092005", datetime.time(9, 20, 5)),
        ("0920", datetime.time(9, 20)),
        ("09", datetime.time(9)),
        ("09:20:05.25", datetime.time(9, 20, 5, 250000)),
        (" 092005 ", datetime.time(9, 20, 5)),
        (b"092005.5\x00", datetime.time(9, 20, 5, 500000)),
    ],
)
def test_parse_dicom_time(text, expected):
    assert parse_dicom_time(text) == expected


@pytest.mark.parametrize("text", ["", "9", "0920.5", "2500", "092075", "ab"])
def test_parse_dicom_time_rejects_malformed(text):
    with pytest.raises(ValueError):
        parse_dicom_time(text)


def test_parse_dicom_date_and_datetime():
    assert parse_dicom_date("20190612") == datetime.date(2019, 6, 12)
    assert parse_dicom_date("2019.06.12") == datetime.date(2019, 6, 12)
    assert parse_dicom_datetime("20190611234010.25") == datetime.datetime(2019, 6, 11, 23, 40, 10, 250000)
    assert parse_dicom_datetime("20190611234010.25+0200") == datetime.datetime(2019, 6, 11, 23, 40, 10, 250000)
    assert parse_dicom_datetime("201906112340") == datetime.datetime(2019, 6, 11, 23, 40)
    for bad in ("2019061", "20191312", "20190611234010."):
        with pytest.raises(ValueError):
            (parse_dicom_date if len(bad) < 9 else parse_dicom_datetime)(bad)


# Headers of real Siemens, GE and Philips PET scans and the SUVbw factor each should give, from the
# test data of cornerstonejs/calculate-suv (test/metadata/*.json, MIT licence): the attributes SUV
# reads, of the first instance of each series (the others agree in them).
# (name, SeriesTime, AcquisitionTime, PatientWeight, Units, dose Bq, half-life s, start time,
#  start datetime, FrameReferenceTime ms, ActualFrameDuration ms, Philips SUV factor, Philips Bq/mL factor, factor)
REAL_SCANNER_HEADERS = [
    ("SIEMENS", "104829.000000", "104830.351370", "67", "BQML", "374000000", "6586.2", "083045.000000",
     "20201217083045.000000", "38513.36", 74324, None, None, 0.00042748316187197236),
    ("SIEMENS series time after acquisition", "123515.000000", "123514.999995", "65", "BQML", "225000000", "6586.2",
     "114100.000000", None, "59936.854672596", 120000, None, None, 0.0004069156854009332),
    ("SIEMENS post-processed", "134918.000000", "130348.234000", "69", "BQML", "388000000", "6586.2",
     "120037.000000", None, "0", 180000, None, None, 0.00026503312764157046),
    ("SIEMENS without start datetime", "135431.843000", "141555.687000", "102", "BQML", "412000000", "6586.2",
     "125000.000000", None, "1372857.9232493", 180000, None, None, 0.0003721089202818729),
    ("GE MEDICAL SYSTEMS", "095621", "095621", "52", "BQML", "152022720", "6586.2001953125", "084500.00",
     "20201217084500.00", "0", 120000, None, None, 0.0005367387681819742),
    ("PHILIPS BQML", "110155", "110156", "64", "BQML", "126000000", "6586.199707", "100058", "20201217100058",
     "1328700", 120700, "0.003515736", "4.709921", 0.0007463747013889488),
    ("PHILIPS CNTS with both factors", "093556", "095439", "54", "CNTS", "238000000", "6588", "083000", None,
     "1183000", 120000, "0.000551", "1.602563", 0.000551),
    ("PHILIPS CNTS with the SUV factor", "134551", "141336", "47", "CNTS", "208230000", "6588", "123000", None,
     "1755000", 180000, "0.000728", None, 0.000728),
]  # fmt: skip


@pytest.mark.parametrize("header", REAL_SCANNER_HEADERS, ids=[h[0] for h in REAL_SCANNER_HEADERS])
def test_real_scanner_headers_give_the_reference_factor(header):
    (_, series_time, acquisition_time, weight, units, dose, half_life, start_time, start_datetime) = header[:9]
    frame_reference, frame_duration, philips_suv, philips_bqml, expected = header[9:]
    ds = _pet_slice(
        acquisition_time, units=units, weight=weight, dose=dose, half_life=half_life, start_time=start_time,
        start_datetime=start_datetime, series_date="20201217", series_time=series_time,
    )  # fmt: skip
    ds.FrameReferenceTime, ds.ActualFrameDuration = frame_reference, frame_duration
    private = {offset: ("DS", value) for offset, value in ((0x00, philips_suv), (0x09, philips_bqml)) if value}
    if private:
        _add_private(ds, 0x7053, "Philips PET Private Group", private)

    result = suv_bw_factors([ds])

    assert result.factors[0] == pytest.approx(expected, rel=1e-9)
