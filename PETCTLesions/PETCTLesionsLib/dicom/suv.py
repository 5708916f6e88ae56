"""Body-weight SUV conversion factors from PET DICOM headers.

SUVbw = C[Bq/mL] x weight[g] / (injected dose[Bq] x 2^(-dt / half-life)), where C is the
rescaled pixel value (stored x RescaleSlope + RescaleIntercept, per slice) and dt runs from
injection to the time the images are decay corrected to. :func:`suv_bw_factors` returns, for
every slice of a series, the factor that turns the rescaled value into SUVbw.

Sources: DICOM PS3.3 C.8.9.1 PET Series Module (Units (0054,1001), Decay Correction (0054,1102),
Corrected Image (0028,0051), SUV Type (0054,1006), Series Type (0054,1000)), C.8.9.2 PET Isotope
Module (Radiopharmaceutical Information Sequence: dose, half-life, start date/time) and C.8.9.4 PET
Image Module (Acquisition Date/Time, Frame Reference Time, Actual Frame Duration); QIBA's
vendor-neutral SUV pseudo-code (https://qibawiki.rsna.org/index.php/Standardized_Uptake_Value_(SUV));
for the private tags, the Philips and GE PET DICOM conformance statements.

Rules:

- Units BQML: the formula above. Units GML: values are already SUV (factor 1), provided SUV
  Type (0054,1006) is BW or absent (an SUVlbm or SUVbsa cannot become SUVbw). Units CNTS
  (Philips): the private SUV scale factor (7053,xx00) of creator "Philips PET Private Group"
  gives SUV directly from the rescaled value; failing that, the private Bq/mL scale factor
  (7053,xx09) turns the rescaled value into Bq/mL and the BQML formula follows. In a Philips
  file whose group 7053 lost its private creators (anonymisers), they are read at (7053,1000)
  and (7053,1009), where Philips writes them. Any other Units value is refused.
- DecayCorrection START: the reference is SeriesDate/SeriesTime, unless that is later than the
  earliest AcquisitionDate/AcquisitionTime of the series (a post-processing artefact: the
  series was re-created after the scan); then GE's private scan datetime (0009,xx0D) of
  creator "GEMS_PETD_01" when present, else the scan start worked back from each slice's
  AcquisitionTime, FrameReferenceTime and ActualFrameDuration when all slices have them and
  agree (QIBA's vendor-neutral pseudo-code), else the earliest acquisition datetime.
  DecayCorrection ADMIN: already corrected to the injection, dt = 0. Anything else is refused.
- Injection time: RadiopharmaceuticalStartDateTime (a date alone takes its time of day from
  RadiopharmaceuticalStartTime), used as it is when the uptake to the reference is between 0
  and 10 half-lives (days for Zr-89). Otherwise its date cannot be right (anonymisers shift
  series dates and miss this one) and its time of day is used as below, with a warning.
  Without it, RadiopharmaceuticalStartTime on the calendar day of the decay reference
  (SeriesDate in the usual case); when that puts the injection after the reference, on the
  day before (injected before midnight, scanned after). A time of day is accepted only for an
  uptake of at most 12 hours (and 10 half-lives), and only for half-lives up to 12 hours: a
  Zr-89 scan is days after its injection, which a time of day cannot place. Anything else is
  refused. An uptake over 4 half-lives (a blanked 000000 start time, say) is a warning, and
  so is one under 10 minutes for a static scan (an injection time equal to the series time,
  say): static imaging starts about an hour after the injection. A dynamic series (SeriesType
  DYNAMIC), which starts at the injection, and a radionuclide of half-life under an hour
  (C-11, N-13, O-15, Rb-82: imaged within minutes) are not warned about. The number is kept:
  the warning says by how much it may be too low, not that it is (a static frame reconstructed
  from a dynamic acquisition that started at the injection has the right SUV).
- A PET voxel above :data:`HIGH_SUV_WARNING` (SUV 1000) is warned about, naming the slice's
  file; one holding more than the whole injected dose (SUV above weight in g / voxel volume in
  mL) is refused (``study.check_suv_values``).
- Only what a computation uses is required: PatientWeight, dose, half-life and start time
  are needed for BQML (and Philips Bq/mL factors), not for GML or the Philips SUV factor.
  A Philips SUV scale factor of 0 means "cannot be converted" (Philips): the Bq/mL factor is
  used then. A dose under 1e4 is the dose in MBq (a common header error; no PET is made with
  under 10 kBq): read so, with a warning; 1e4 to 1e6 is refused. A weight over 400 kg is refused.
  Nothing is ever defaulted: a missing or invalid value raises :class:`SUVError` naming the
  file and the tag.
"""

from __future__ import annotations

import datetime
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, List, Optional, Sequence, Tuple

import numpy as np
import pydicom
from pydicom.datadict import tag_for_keyword
from pydicom.multival import MultiValue

from ..errors import InputError

SUPPORTED_UNITS = ("BQML", "GML", "CNTS")
SUPPORTED_DECAY_CORRECTIONS = ("START", "ADMIN")

PHILIPS_PRIVATE_CREATOR = "Philips PET Private Group"
PHILIPS_GROUP = 0x7053
PHILIPS_SUV_FACTOR_OFFSET = 0x00  # (7053,xx00) SUV Scale Factor, DS
PHILIPS_BQML_FACTOR_OFFSET = 0x09  # (7053,xx09) Activity Concentration Scale Factor, DS
GE_PRIVATE_CREATOR = "GEMS_PETD_01"
GE_GROUP = 0x0009
GE_SCAN_DATETIME_OFFSET = 0x0D  # (0009,xx0D) scan datetime the data are decay corrected to, DT

# Plausible uptake (injection to decay reference). After 10 half-lives a thousandth of the
# activity is left: no one images then, so a longer delay means the injection date/time is
# wrong (an anonymiser that shifted the series dates but not this one, say).
MAX_UPTAKE_HALF_LIVES = 10.0
# A time of day alone says nothing about the day. It is taken on the decay reference's day,
# or on the day before (injected before midnight, scanned after), only when the uptake is then
# at most 12 hours, and only for radionuclides that are imaged within hours: with a longer
# half-life (Cu-64, Zr-89, I-124) scans are days after injection and the day is unknowable.
MAX_MIDNIGHT_ROLLOVER_DELAY = datetime.timedelta(hours=12)
MAX_HALF_LIFE_FOR_TIME_OF_DAY = datetime.timedelta(hours=12)
# An uptake of more than 4 half-lives is possible (late imaging) but more often a blanked or
# wrong injection time (000000): it is shown as a warning.
SUSPICIOUS_UPTAKE_HALF_LIVES = 4.0
# Static PET (SeriesType WHOLE BODY or STATIC) is acquired after the tracer has distributed:
# FDG imaging starts about 60 min after the injection (EANM/SNMMI guidelines: 55-75 min), Ga-68
# PSMA or DOTATATE 45-90 min. A shorter uptake to the decay reference than 10 min means a wrong
# injection time (equal to the series time in a real ACRIN series), which makes the SUV too low
# by the decay left out (32% for F-18 at 60 min) if the scan really started about 60 min after the
# injection: a warning that says "may be" (the number is what the headers say and is kept; it is
# right for a static frame reconstructed from a dynamic acquisition that started at the injection).
# Not warned about: a dynamic scan (SeriesType DYNAMIC), which starts at the injection, and
# radionuclides of half-lives under an hour (C-11 20 min, N-13 10 min, O-15, Rb-82 75 s), whose
# scans start within minutes. F-18 fluciclovine, imaged from 3-5 min, is the one common early
# static scan the warning still names.
MIN_STATIC_UPTAKE = datetime.timedelta(minutes=10)
MIN_HALF_LIFE_FOR_UPTAKE_CHECK = datetime.timedelta(hours=1)
USUAL_STATIC_UPTAKE = datetime.timedelta(minutes=60)  # only to say how wrong the SUV may be
DYNAMIC_SERIES_TYPE = "DYNAMIC"
# SUVs of patients' PETs: FDG tumours and the bladder rarely pass SUV 100, and the hottest organs
# with Ga-68/F-18 PSMA or DOTATATE (kidneys, bladder, salivary glands, spleen) stay in the low
# hundreds. Above HIGH_SUV_WARNING a load warns, naming the slice's file: a wrong RescaleSlope on a
# slice or wrong SUV headers are the likely cause, but an extravasated injection or a tracer line
# in the field of view can reach it, so the number is kept. What no scan can give is refused: a
# voxel holding more than the whole injected dose, i.e. an SUV above the body weight in grams over
# the voxel's volume in mL (SUVbw = concentration x weight / dose; 1.5e6 for 70 kg and 4x4x3 mm
# voxels). A slope of 1e30 on one slice gave SUV 2.8e28.
HIGH_SUV_WARNING = 1000.0
# RadionuclideTotalDose is in Bq, yet many real headers hold the dose in MBq (the IBSI SUV
# survey of 3433 series found a second peak of doses at about 4e2): no PET is made with under
# MEGA_BQ_DOSE_LIMIT Bq, so such a value is read as MBq, with a warning. Between that and
# MIN_DOSE_BQ (1 MBq) the unit cannot be told, and the value is refused.
MEGA_BQ_DOSE_LIMIT = 1e4
MIN_DOSE_BQ = 1e6
# PatientWeight is in kg; above this it is no patient's weight (grams, most likely): refused.
MAX_WEIGHT_KG = 400.0
# Slices whose scan starts, worked back from their frame timing, differ by more than this
# do not tell one start (see _frame_timing_start).
FRAME_START_AGREEMENT = datetime.timedelta(seconds=5)

# (gggg,eeee) of every public tag named in messages.
_TAGS = {
    "Modality": "(0008,0060)",
    "SeriesDate": "(0008,0021)",
    "SeriesTime": "(0008,0031)",
    "AcquisitionDate": "(0008,0022)",
    "AcquisitionTime": "(0008,0032)",
    "PatientWeight": "(0010,1030)",
    "RadiopharmaceuticalStartTime": "(0018,1072)",
    "RadionuclideTotalDose": "(0018,1074)",
    "RadionuclideHalfLife": "(0018,1075)",
    "RadiopharmaceuticalStartDateTime": "(0018,1078)",
    "CorrectedImage": "(0028,0051)",
    "RadiopharmaceuticalInformationSequence": "(0054,0016)",
    "Units": "(0054,1001)",
    "SUVType": "(0054,1006)",
    "DecayCorrection": "(0054,1102)",
    "FrameReferenceTime": "(0054,1300)",
    "ActualFrameDuration": "(0018,1242)",
    "SeriesType": "(0054,1000)",
}
_PHILIPS_SUV_TAG_NAME = f"Philips SUV scale factor (7053,1000) [{PHILIPS_PRIVATE_CREATOR}]"
_PHILIPS_BQML_TAG_NAME = f"Philips Bq/mL scale factor (7053,1009) [{PHILIPS_PRIVATE_CREATOR}]"
_GE_SCAN_TAG_NAME = f"GE private scan datetime (0009,100D) [{GE_PRIVATE_CREATOR}]"


class SUVError(InputError):
    """SUV cannot be computed; the message names the file (when known) and the tag at fault."""


@dataclass
class SUVResult:
    """Per-slice SUVbw factors and the header values they were computed from.

    ``SUVbw = (stored * RescaleSlope + RescaleIntercept) * factors[n]`` for dataset ``n``.
    """

    factors: np.ndarray
    units: str
    weight_kg: Optional[float]
    injected_dose_bq: Optional[float]
    half_life_s: Optional[float]
    decay_time_s: Optional[float]
    reference_time: str
    warnings: List[str] = field(default_factory=list)


# --------------------------------------------------------------------------- DICOM date/time


_TIME_RE = re.compile(r"^(\d{2})(\d{2})?(\d{2})?(?:\.(\d+))?$")
_DATE_RE = re.compile(r"^(\d{4})(\d{2})(\d{2})$")
_DATETIME_RE = re.compile(r"^(\d{4})(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\d{2})?(?:\.(\d+))?([+-]\d{4})?$")


def _microseconds(fraction: Optional[str]) -> int:
    # DICOM allows up to 6 fraction digits; longer (non-conformant) fractions are truncated.
    return int((fraction or "0")[:6].ljust(6, "0"))


def parse_dicom_time(value: Any) -> datetime.time:
    """A DICOM TM value (``HHMMSS.FFFFFF``, ``HHMM``, ``HH``; old ``HH:MM:SS`` too) as a time."""
    if isinstance(value, datetime.time):
        return value
    text = _as_text(value).replace(":", "")
    match = _TIME_RE.match(text)
    if not match or (match.group(4) is not None and match.group(3) is None):
        raise InputError(f"{value!r} is not a DICOM time (HHMMSS.FFFFFF)")
    hour, minute, second, fraction = match.groups()
    return datetime.time(int(hour), int(minute or 0), int(second or 0), _microseconds(fraction))


def parse_dicom_date(value: Any) -> datetime.date:
    """A DICOM DA value (``YYYYMMDD``; old ``YYYY.MM.DD`` too) as a date."""
    if isinstance(value, datetime.datetime):
        return value.date()
    if isinstance(value, datetime.date):
        return value
    text = _as_text(value).replace(".", "").replace("-", "")
    match = _DATE_RE.match(text)
    if not match:
        raise InputError(f"{value!r} is not a DICOM date (YYYYMMDD)")
    return datetime.date(*(int(part) for part in match.groups()))


def parse_dicom_datetime(value: Any) -> datetime.datetime:
    """A DICOM DT value (``YYYYMMDDHHMMSS.FFFFFF&ZZXX``) as a naive local datetime.

    A UTC offset suffix is dropped: the series times it is compared with carry none, and
    all of them are the acquisition site's local time.
    """
    if isinstance(value, datetime.datetime):
        return value.replace(tzinfo=None)
    text = _as_text(value)
    match = _DATETIME_RE.match(text)
    if not match or (match.group(7) is not None and match.group(6) is None):
        raise InputError(f"{value!r} is not a DICOM datetime (YYYYMMDDHHMMSS.FFFFFF)")
    year, month, day, hour, minute, second, fraction, _offset = match.groups()
    return datetime.datetime(
        int(year),
        int(month or 1),
        int(day or 1),
        int(hour or 0),
        int(minute or 0),
        int(second or 0),
        _microseconds(fraction),
    )


def dicom_datetime_has_time(value: Any) -> bool:
    """Whether a DICOM DT value gives a time of day (at least the hour), not only a date."""
    if isinstance(value, datetime.datetime):
        return True
    match = _DATETIME_RE.match(_as_text(value))
    return bool(match and match.group(4))


# --------------------------------------------------------------------------- header access


def _as_text(value: Any) -> str:
    """Element value as stripped text; private tags read as UN arrive as bytes."""
    if isinstance(value, bytes):
        value = value.decode("ascii", errors="replace")
    return str(value).strip().strip("\x00").strip()


def _is_empty(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, (str, bytes)):
        return _as_text(value) == ""
    if isinstance(value, (list, tuple, MultiValue)):
        return len(value) == 0
    return False


def _tag_name(keyword: str) -> str:
    return f"{keyword} {_TAGS.get(keyword, '')}".strip()


def _dataset_label(dataset: pydicom.Dataset, index: int, count: int, source: str) -> str:
    filename = getattr(dataset, "filename", None)
    if isinstance(filename, (str, Path)) and str(filename):
        return str(filename)
    if count == 1:
        return source or "PET dataset"
    return f"{source or 'PET series'} (dataset #{index})"


@dataclass
class _Slice:
    """One dataset with the label used in messages."""

    dataset: pydicom.Dataset
    label: str

    def value(self, keyword: str) -> Any:
        """The element's value as pydicom converts it (None when absent); conversion errors propagate.

        Converted by pydicom on every slice: a cache that converted each distinct byte string once per
        series took the SUV factors of 300 slices from 0.125 s to 0.025 s (median of 3, 2-core machine,
        2026-12-06), 0.1 s of a load: too little for its code, so it was removed (issue 20)."""
        tag = tag_for_keyword(keyword)
        return self.dataset[tag].value if tag in self.dataset else None

    def raw(self, keyword: str) -> Any:
        try:
            # pydicom converts a value read from file on first access; a malformed one fails here.
            value = self.value(keyword)
        except (ValueError, TypeError, OverflowError) as error:
            raise self.fail(f"{_tag_name(keyword)} cannot be read: {error}") from None
        return None if value is None or _is_empty(value) else value

    def text(self, keyword: str) -> Optional[str]:
        value = self.raw(keyword)
        if value is None:
            return None
        if isinstance(value, MultiValue):
            return "\\".join(_as_text(v) for v in value)
        return _as_text(value)

    def number(self, keyword: str) -> Optional[float]:
        value = self.raw(keyword)
        if value is None:
            return None
        return _parse_number(value, f"{self.label}: {_tag_name(keyword)}")

    def fail(self, message: str) -> SUVError:
        return SUVError(f"{self.label}: {message}")


def _parse_number(value: Any, what: str) -> float:
    if isinstance(value, MultiValue):
        raise SUVError(f"{what} has {len(value)} values where one number is expected")
    try:
        number = float(_as_text(value)) if isinstance(value, (str, bytes)) else float(value)
    except (TypeError, ValueError):
        raise SUVError(f"{what} is {value!r}, which is not a number") from None
    if not math.isfinite(number):
        raise SUVError(f"{what} is {value!r}, which is not a finite number")
    return number


def _radiopharmaceutical_item(item: _Slice) -> _Slice:
    sequence = item.value("RadiopharmaceuticalInformationSequence")
    if not sequence:
        raise item.fail(
            f"{_tag_name('RadiopharmaceuticalInformationSequence')} is missing or empty; "
            "the injected dose, half-life and injection time are needed for SUV"
        )
    label = f"{item.label}: {_tag_name('RadiopharmaceuticalInformationSequence')}[0]"
    return _Slice(sequence[0], label)


def _private_value(item: _Slice, group: int, creator: str, offset: int) -> Any:
    """Value of a private element found through its private creator, or None."""
    try:
        block = item.dataset.private_block(group, creator)
    except KeyError:
        return None
    if offset not in block:
        return None
    value = block[offset].value
    return None if _is_empty(value) else value


# --------------------------------------------------------------------------- series-level values


def _series_text(slices: Sequence[_Slice], keyword: str) -> str:
    """A text value every slice must carry, identical across the series."""
    values = []
    for item in slices:
        value = item.text(keyword)
        if value is None:
            raise item.fail(f"{_tag_name(keyword)} is missing or empty; SUV cannot be computed without it")
        values.append(value.upper())
    _require_same(slices, keyword, values)
    return values[0]


def _series_number(slices: Sequence[_Slice], keyword: str, *, in_sequence: bool = False) -> float:
    """A positive number every slice must carry, identical across the series."""
    values = []
    for item in slices:
        holder = _radiopharmaceutical_item(item) if in_sequence else item
        value = holder.number(keyword)
        if value is None:
            raise holder.fail(f"{_tag_name(keyword)} is missing or empty; SUV cannot be computed without it")
        if value <= 0:
            raise holder.fail(f"{_tag_name(keyword)} is {value:g}; it must be greater than zero to compute SUV")
        values.append(value)
    _require_same(slices, keyword, values)
    return values[0]


def _require_same(slices: Sequence[_Slice], keyword: str, values: Sequence[Any]) -> None:
    for item, value in zip(slices, values):
        same = math.isclose(value, values[0], rel_tol=1e-9) if isinstance(value, float) else value == values[0]
        if not same:
            raise item.fail(
                f"{_tag_name(keyword)} is {value!r} but {values[0]!r} in {slices[0].label}; "
                "one series must have one value"
            )


def _informative_number(slices: Sequence[_Slice], keyword: str, in_sequence: bool = False) -> Optional[float]:
    """A value reported for information only (not used by the computation), or None."""
    try:
        holder = _radiopharmaceutical_item(slices[0]) if in_sequence else slices[0]
        value = holder.number(keyword)
    except SUVError:
        return None
    return value if value is not None and value > 0 else None


def _corrected_image_warnings(slices: Sequence[_Slice]) -> List[str]:
    warnings: List[str] = []
    seen = set()
    for item in slices:
        raw = item.raw("CorrectedImage")
        raw_values = raw if isinstance(raw, (list, tuple, MultiValue)) else [raw]
        values = tuple(sorted(_as_text(v).upper() for v in raw_values if v))
        if values in seen:
            continue
        seen.add(values)
        if not values:
            warnings.append(
                f"{item.label}: {_tag_name('CorrectedImage')} is absent; attenuation and decay correction "
                "cannot be confirmed"
            )
            continue
        missing = [flag for flag in ("ATTN", "DECY") if flag not in values]
        if missing:
            warnings.append(
                f"{item.label}: {_tag_name('CorrectedImage')} is {'/'.join(values)} without "
                f"{' and '.join(missing)}; SUV from these images may be wrong"
            )
    return warnings


# --------------------------------------------------------------------------- decay reference


def _parse_or_fail(item: _Slice, keyword: str, parser: Any, value: Any) -> Any:
    try:
        return parser(value)
    except ValueError as error:
        raise item.fail(f"{_tag_name(keyword)}: {error}") from None


def _series_datetime(slices: Sequence[_Slice]) -> datetime.datetime:
    values = []
    for item in slices:
        date_text, time_text = item.raw("SeriesDate"), item.raw("SeriesTime")
        for keyword, value in (("SeriesDate", date_text), ("SeriesTime", time_text)):
            if value is None:
                raise item.fail(f"{_tag_name(keyword)} is missing; it is the decay-correction reference (START)")
        date = _parse_or_fail(item, "SeriesDate", parse_dicom_date, date_text)
        time = _parse_or_fail(item, "SeriesTime", parse_dicom_time, time_text)
        values.append(datetime.datetime.combine(date, time))
    _require_same(slices, "SeriesTime", values)
    return values[0]


def _acquisition_datetime(item: _Slice, series_date: datetime.date) -> Optional[datetime.datetime]:
    """AcquisitionDate/AcquisitionTime (the series date when the date is absent); None without a time."""
    time_text = item.raw("AcquisitionTime")
    if time_text is None:
        return None
    date_text = item.raw("AcquisitionDate")
    date = series_date if date_text is None else _parse_or_fail(item, "AcquisitionDate", parse_dicom_date, date_text)
    return datetime.datetime.combine(date, _parse_or_fail(item, "AcquisitionTime", parse_dicom_time, time_text))


def _earliest_acquisition(slices: Sequence[_Slice], series_date: datetime.date) -> Optional[datetime.datetime]:
    moments = [moment for moment in (_acquisition_datetime(item, series_date) for item in slices) if moment]
    return min(moments, default=None)


def _ge_scan_datetime(slices: Sequence[_Slice]) -> Optional[datetime.datetime]:
    values = []
    for item in slices:
        value = _private_value(item, GE_GROUP, GE_PRIVATE_CREATOR, GE_SCAN_DATETIME_OFFSET)
        if value is None:
            continue
        try:
            values.append((item, parse_dicom_datetime(value)))
        except ValueError as error:
            raise item.fail(f"{_GE_SCAN_TAG_NAME}: {error}") from None
    if not values:
        return None
    for item, moment in values:
        if moment != values[0][1]:
            raise item.fail(f"{_GE_SCAN_TAG_NAME} is {moment} but {values[0][1]} in {values[0][0].label}")
    return values[0][1]


def _start_reference(slices: Sequence[_Slice], half_life_s: float) -> Tuple[datetime.datetime, str]:
    """Decay-correction reference datetime for DecayCorrection START, with a description.

    The order of QIBA's vendor-neutral SUV pseudo-code: SeriesDate/SeriesTime, unless it is
    after an acquisition (a series re-created later); then GE's private scan datetime; then the
    scan start worked back from the frame timing; then the earliest acquisition.
    """
    series = _series_datetime(slices)
    earliest = _earliest_acquisition(slices, series.date())
    if earliest is None or series <= earliest:
        return series, f"series date/time {series.isoformat(sep=' ')}"
    later = (
        f"series date/time {series.isoformat(sep=' ')} is after the earliest acquisition {earliest.isoformat(sep=' ')}"
    )
    ge_scan = _ge_scan_datetime(slices)
    if ge_scan is not None:
        return ge_scan, f"{_GE_SCAN_TAG_NAME} {ge_scan.isoformat(sep=' ')} ({later})"
    start = _frame_timing_start(slices, series.date(), half_life_s)
    if start is not None and start <= earliest + datetime.timedelta(seconds=1):
        return start, (
            f"scan start {start.isoformat(sep=' ')} worked back from AcquisitionTime, "
            f"{_tag_name('FrameReferenceTime')} and {_tag_name('ActualFrameDuration')} ({later}: post-processed series)"
        )
    return earliest, f"earliest acquisition date/time {earliest.isoformat(sep=' ')} ({later}: post-processed series)"


def _frame_timing_start(
    slices: Sequence[_Slice], series_date: datetime.date, half_life_s: float
) -> Optional[datetime.datetime]:
    """The scan start as QIBA works it back from one slice: its acquisition time, plus the time
    within the frame at which the decaying count rate equals its average, minus the
    FrameReferenceTime (which counts from the decay reference to that point). None unless every
    slice has both frame times (> 0) and the slices agree."""
    decay_rate = math.log(2.0) / half_life_s
    starts = []
    for item in slices:
        reference_ms, duration_ms = item.number("FrameReferenceTime"), item.number("ActualFrameDuration")
        acquired = _acquisition_datetime(item, series_date)
        if reference_ms is None or duration_ms is None or reference_ms <= 0 or duration_ms <= 0 or acquired is None:
            return None
        frame_s = duration_ms / 1000.0
        average_count_time_s = math.log(decay_rate * frame_s / (1.0 - math.exp(-decay_rate * frame_s))) / decay_rate
        starts.append(acquired + datetime.timedelta(seconds=average_count_time_s - reference_ms / 1000.0))
    return min(starts) if max(starts) - min(starts) <= FRAME_START_AGREEMENT else None


def _dose_in_bq(slices: Sequence[_Slice], warnings: List[str]) -> float:
    dose = _series_number(slices, "RadionuclideTotalDose", in_sequence=True)
    if dose < MEGA_BQ_DOSE_LIMIT:
        warnings.append(
            f"{slices[0].label}: {_tag_name('RadionuclideTotalDose')} is {dose:g}: DICOM gives it in Bq, and no "
            f"PET is made with {dose:g} Bq; read as {dose:g} MBq"
        )
        return dose * 1e6
    if dose < MIN_DOSE_BQ:
        raise slices[0].fail(
            f"{_tag_name('RadionuclideTotalDose')} is {dose:g} Bq, below any imaging dose (1 MBq), and too large "
            "to be in MBq; correct the header to compute SUV"
        )
    return dose


def _injection_datetime(
    slices: Sequence[_Slice], reference: datetime.datetime, half_life_s: float, warnings: List[str]
) -> datetime.datetime:
    """Injection datetime, identical across the series (see the module docstring for the rules)."""
    values = []
    for index, item in enumerate(slices):
        info = _radiopharmaceutical_item(item)
        # Every slice is checked; the first one speaks for the series in warnings.
        values.append(_slice_injection(info, reference, half_life_s, warnings if index == 0 else []))
    _require_same(slices, "RadiopharmaceuticalStartDateTime", values)
    injection = values[0]
    uptake_s = (reference - injection).total_seconds()
    if uptake_s > SUSPICIOUS_UPTAKE_HALF_LIVES * half_life_s:
        warnings.append(
            f"{slices[0].label}: the uptake time from the injection ({injection}) to the decay reference "
            f"({reference}) is {_hours(uptake_s)}, more than {SUSPICIOUS_UPTAKE_HALF_LIVES:g} half-lives of the "
            f"radionuclide ({_hours(half_life_s)}); check the injection time in the headers"
        )
    elif (
        uptake_s < MIN_STATIC_UPTAKE.total_seconds()
        and half_life_s >= MIN_HALF_LIFE_FOR_UPTAKE_CHECK.total_seconds()
        and not _is_dynamic(slices[0])
    ):
        usual_s = USUAL_STATIC_UPTAKE.total_seconds()
        low = 1.0 - 2.0 ** (-(usual_s - uptake_s) / half_life_s)  # the decay left out
        warnings.append(
            f"{slices[0].label}: the uptake time from the injection ({injection}) to the decay reference "
            f"({reference}) is {uptake_s / 60:.3g} min, under {MIN_STATIC_UPTAKE.total_seconds() / 60:g} min, "
            f"unusual for a static scan ({_tag_name('SeriesType')} {slices[0].text('SeriesType') or 'absent'}); "
            f"check the injection time ({_tag_name('RadiopharmaceuticalStartDateTime')}) in the headers: SUV was "
            f"computed with it, and these SUVs may be {low:.0%} too low (if the scan started about "
            f"{usual_s / 60:g} min after the injection, as static imaging usually does; they are right for a "
            "static frame reconstructed from a dynamic acquisition starting at the injection, or a tracer "
            "imaged early, as F-18 fluciclovine from 3-5 min)"
        )
    return injection


def _is_dynamic(item: _Slice) -> bool:
    """Whether the series is dynamic (SeriesType DYNAMIC): it starts at the injection."""
    series_type = item.text("SeriesType") or ""
    return series_type.split("\\")[0].strip().upper() == DYNAMIC_SERIES_TYPE


def _hours(seconds: float) -> str:
    return f"{seconds / 3600:.3g} h"


def _max_uptake(half_life_s: float) -> datetime.timedelta:
    return datetime.timedelta(seconds=MAX_UPTAKE_HALF_LIVES * half_life_s)


def _slice_injection(
    info: _Slice, reference: datetime.datetime, half_life_s: float, warnings: List[str]
) -> datetime.datetime:
    start_datetime, start_time = info.raw("RadiopharmaceuticalStartDateTime"), info.raw("RadiopharmaceuticalStartTime")
    time_of_day = None
    if start_time is not None:
        time_of_day = _parse_or_fail(info, "RadiopharmaceuticalStartTime", parse_dicom_time, start_time)
    if start_datetime is None:
        if time_of_day is None:
            raise info.fail(
                f"{_tag_name('RadiopharmaceuticalStartTime')} and {_tag_name('RadiopharmaceuticalStartDateTime')} "
                "are missing; the injection time is needed for decay correction"
            )
        try:
            return _injection_on_reference_day(info, time_of_day, reference, half_life_s, warnings)
        except _UnknowableDay as reason:
            raise info.fail(str(reason)) from None
        except _ImplausibleTimeOfDay as reason:
            raise info.fail(f"{reason}; the injection time is wrong") from None

    injection = _parse_or_fail(info, "RadiopharmaceuticalStartDateTime", parse_dicom_datetime, start_datetime)
    if not dicom_datetime_has_time(start_datetime):
        # A date alone: the time of day can only come from RadiopharmaceuticalStartTime.
        if time_of_day is None:
            raise info.fail(
                f"{_tag_name('RadiopharmaceuticalStartDateTime')} {_as_text(start_datetime)!r} has no time of day "
                f"and {_tag_name('RadiopharmaceuticalStartTime')} is missing; the injection time is needed for "
                "decay correction"
            )
        injection = datetime.datetime.combine(injection.date(), time_of_day)
    elif time_of_day is not None and time_of_day != injection.time():
        warnings.append(
            f"{info.label}: {_tag_name('RadiopharmaceuticalStartTime')} {time_of_day} differs from "
            f"{_tag_name('RadiopharmaceuticalStartDateTime')} {injection}; the date/time was used"
        )
    uptake = reference - injection
    if datetime.timedelta(0) <= uptake <= _max_uptake(half_life_s):
        return injection

    # The date/time cannot be right. Its time of day may still be (a date not shifted with the
    # series dates): it is taken on the reference's day under the time-of-day rule, and said so.
    problem = (
        f"{_tag_name('RadiopharmaceuticalStartDateTime')} {injection} is after the decay reference {reference}"
        if uptake < datetime.timedelta(0)
        else f"{_tag_name('RadiopharmaceuticalStartDateTime')} {injection} is {_hours(uptake.total_seconds())} "
        f"before the decay reference {reference}, more than {MAX_UPTAKE_HALF_LIVES:g} half-lives "
        f"({_hours(half_life_s)})"
    )
    fallback_time = time_of_day if time_of_day is not None else injection.time()
    try:
        fallback = _injection_on_reference_day(info, fallback_time, reference, half_life_s, [])
    except _ImplausibleTimeOfDay as reason:
        raise info.fail(
            f"{problem}, and the time of day {fallback_time} does not fit the reference day either "
            f"({reason}); the injection time is wrong"
        ) from None
    warnings.append(
        f"{info.label}: {problem}, so its date cannot be right; the injection was taken at its time of day "
        f"on the day of the decay reference or the day before: {fallback}"
    )
    return fallback


class _ImplausibleTimeOfDay(SUVError):  # noqa: N818 - a reason, worded by the caller
    """Why a time of day gives no plausible injection (the callers word the error around it)."""


class _UnknowableDay(_ImplausibleTimeOfDay):
    """The time may be right, but with a long half-life no time of day can place the day."""


def _injection_on_reference_day(
    info: _Slice, time_of_day: datetime.time, reference: datetime.datetime, half_life_s: float, warnings: List[str]
) -> datetime.datetime:
    """The injection at ``time_of_day`` on the reference's day, or the day before (see the constants).

    Raises :class:`_ImplausibleTimeOfDay` with the reason when neither fits.
    """
    if half_life_s > MAX_HALF_LIFE_FOR_TIME_OF_DAY.total_seconds():
        raise _UnknowableDay(
            f"the radionuclide's half-life is {_hours(half_life_s)} and only a time of day ({time_of_day}) gives "
            f"the injection: with a half-life over {_hours(MAX_HALF_LIFE_FOR_TIME_OF_DAY.total_seconds())} "
            f"scans are days after the injection, so {_tag_name('RadiopharmaceuticalStartDateTime')} with its "
            "date is needed"
        )
    longest = min(MAX_MIDNIGHT_ROLLOVER_DELAY, _max_uptake(half_life_s))
    same_day = datetime.datetime.combine(reference.date(), time_of_day)
    if same_day <= reference:
        uptake_s = (reference - same_day).total_seconds()
        if uptake_s > longest.total_seconds():
            raise _ImplausibleTimeOfDay(
                f"{_tag_name('RadiopharmaceuticalStartTime')} {time_of_day} is {_hours(uptake_s)} "
                f"before the decay reference {reference}, more than the longest plausible uptake "
                f"({_hours(longest.total_seconds())})"
            )
        return same_day
    day_before = same_day - datetime.timedelta(days=1)
    if reference - day_before > longest:
        raise _ImplausibleTimeOfDay(
            f"{_tag_name('RadiopharmaceuticalStartTime')} {time_of_day} is after the decay reference {reference} "
            "on the same day, and taking it on the day before would mean an uptake of more than "
            f"{_hours(longest.total_seconds())}"
        )
    warnings.append(
        f"{info.label}: {_tag_name('RadiopharmaceuticalStartTime')} {time_of_day} is later in the day than the "
        f"decay reference {reference}; the injection was taken to be on the day before ({day_before})"
    )
    return day_before


# --------------------------------------------------------------------------- the computation


def _philips_value(item: _Slice, offset: int) -> Any:
    """A Philips private factor, through its private creator; in a Philips file whose group 7053
    has lost every creator (some anonymisers keep private elements but not their creators), at
    the place Philips writes it, (7053,10xx)."""
    value = _private_value(item, PHILIPS_GROUP, PHILIPS_PRIVATE_CREATOR, offset)
    if value is not None or "PHILIPS" not in (item.text("Manufacturer") or "").upper():
        return value
    dataset = item.dataset
    if any((PHILIPS_GROUP << 16) | element in dataset for element in range(0x10, 0x100)):
        return None  # creators present, Philips's not among them: the block is someone else's
    element = dataset.get((PHILIPS_GROUP << 16) | (0x1000 + offset))
    return None if element is None or _is_empty(element.value) else element.value


def _philips_factors(slices: Sequence[_Slice], offset: int, tag_name: str) -> Optional[np.ndarray]:
    """Per-slice Philips private factors, None when no slice has them; all or none must."""
    values = [_philips_value(item, offset) for item in slices]
    if all(value is None for value in values):
        return None
    factors = []
    for item, value in zip(slices, values):
        if value is None:
            raise item.fail(f"{tag_name} is missing although other slices of the series have it")
        factor = _parse_number(value, f"{item.label}: {tag_name}")
        if factor < 0:
            raise item.fail(f"{tag_name} is {factor:g}; it must be greater than zero")
        factors.append(factor)
    if all(factor == 0 for factor in factors):
        return None  # Philips: "if the SUV Scale Factor is 0.0, the voxel data cannot be converted" with it
    for item, factor in zip(slices, factors):
        if factor == 0:
            raise item.fail(f"{tag_name} is 0 although other slices of the series have a factor")
    return np.asarray(factors, dtype=np.float64)


def _stored_suv_is_body_weight(slices: Sequence[_Slice]) -> str:
    """Units GML holds an SUV already; SUV Type says which one (absent: body weight, the usual one)."""
    types = [item.text("SUVType") for item in slices]
    if all(value is None for value in types):
        return "GML: values are already SUV (SUV Type absent: body weight)"
    _require_same(slices, "SUVType", types)
    if types[0].upper() != "BW":  # type: ignore[union-attr]
        raise slices[0].fail(
            f"{_tag_name('Units')} is GML with {_tag_name('SUVType')} {types[0]!r}: the stored values are an SUV "
            "normalised by something other than body weight, and they cannot be turned into SUVbw"
        )
    return "GML with SUV Type BW: values are already SUVbw"


def _check_modality(slices: Sequence[_Slice]) -> None:
    for item in slices:
        modality = item.text("Modality")
        if modality is not None and modality.upper() != "PT":
            raise item.fail(f"{_tag_name('Modality')} is {modality!r}; SUV needs a PET (PT) image")


def suv_bw_factors(datasets: Sequence[pydicom.Dataset], source: str = "") -> SUVResult:
    """Body-weight SUV factors for the slices (headers) of one PET series, one per dataset.

    ``source`` (a path or description) names the data in messages when a dataset has no
    ``filename``. Raises :class:`SUVError` when SUV cannot be computed from the headers.
    """
    datasets = list(datasets)
    if not datasets:
        raise SUVError(f"{source or 'PET series'}: no DICOM datasets given")
    slices = [_Slice(ds, _dataset_label(ds, n, len(datasets), source)) for n, ds in enumerate(datasets)]
    _check_modality(slices)
    units = _series_text(slices, "Units")
    if units not in SUPPORTED_UNITS:
        raise slices[0].fail(
            f"{_tag_name('Units')} is {units!r}; SUV can only be computed from {', '.join(SUPPORTED_UNITS)}"
        )
    warnings = _corrected_image_warnings(slices)

    if units == "GML":
        return _without_decay(slices, units, np.ones(len(slices)), _stored_suv_is_body_weight(slices), warnings)

    bqml_scale = np.ones(len(slices))
    if units == "CNTS":
        suv_scale = _philips_factors(slices, PHILIPS_SUV_FACTOR_OFFSET, _PHILIPS_SUV_TAG_NAME)
        if suv_scale is not None:
            return _without_decay(slices, units, suv_scale, f"CNTS: {_PHILIPS_SUV_TAG_NAME}", warnings)
        philips_bqml = _philips_factors(slices, PHILIPS_BQML_FACTOR_OFFSET, _PHILIPS_BQML_TAG_NAME)
        if philips_bqml is None:
            raise slices[0].fail(
                f"{_tag_name('Units')} is CNTS but neither {_PHILIPS_SUV_TAG_NAME} nor {_PHILIPS_BQML_TAG_NAME} "
                "is present (or non-zero); counts cannot be converted to SUV"
            )
        bqml_scale = philips_bqml

    weight_kg = _series_number(slices, "PatientWeight")
    if weight_kg > MAX_WEIGHT_KG:
        raise slices[0].fail(
            f"{_tag_name('PatientWeight')} is {weight_kg:g}: DICOM gives it in kg, and no patient weighs that "
            "much (grams?); correct the header to compute SUV"
        )
    dose_bq = _dose_in_bq(slices, warnings)
    decay_correction = _series_text(slices, "DecayCorrection")
    if decay_correction == "ADMIN":
        half_life_s = _informative_number(slices, "RadionuclideHalfLife", in_sequence=True)
        decay_time_s = 0.0
        reference = "ADMIN: images are decay corrected to the administration (injection) time, dt = 0"
    elif decay_correction == "START":
        half_life_s = _series_number(slices, "RadionuclideHalfLife", in_sequence=True)
        reference_datetime, reference = _start_reference(slices, half_life_s)
        injection = _injection_datetime(slices, reference_datetime, half_life_s, warnings)
        decay_time_s = (reference_datetime - injection).total_seconds()
    else:
        raise slices[0].fail(
            f"{_tag_name('DecayCorrection')} is {decay_correction!r}; only "
            f"{' and '.join(SUPPORTED_DECAY_CORRECTIONS)} are supported"
        )
    decay = 1.0 if decay_time_s == 0.0 else 2.0 ** (-decay_time_s / half_life_s)  # type: ignore[operator]
    factor = weight_kg * 1000.0 / (dose_bq * decay)
    if not (math.isfinite(factor) and factor > 0.0):
        raise slices[0].fail(
            f"the SUV factor is {factor!r} (weight {weight_kg:g} kg, dose {dose_bq:g} Bq, decay {decay:g}); "
            "the headers are inconsistent"
        )
    return SUVResult(
        factors=bqml_scale * factor,
        units=units,
        weight_kg=weight_kg,
        injected_dose_bq=dose_bq,
        half_life_s=half_life_s,
        decay_time_s=decay_time_s,
        reference_time=reference,
        warnings=warnings,
    )


def _without_decay(
    slices: Sequence[_Slice], units: str, factors: np.ndarray, reference: str, warnings: List[str]
) -> SUVResult:
    """Result for data whose SUV needs no decay computation (GML, Philips SUV factor)."""
    return SUVResult(
        factors=np.asarray(factors, dtype=np.float64),
        units=units,
        weight_kg=_informative_number(slices, "PatientWeight"),
        injected_dose_bq=_informative_number(slices, "RadionuclideTotalDose", in_sequence=True),
        half_life_s=_informative_number(slices, "RadionuclideHalfLife", in_sequence=True),
        decay_time_s=None,
        reference_time=reference,
        warnings=warnings,
    )
