"""Write synthetic CT and PET volumes as DICOM series that DICOM software loads like real ones.

Each series goes into its own folder with NBIA-style file names (``1-01.dcm``, ``1-02.dcm``,
... zero-padded to the width the slice count needs). Instance number 1 is the most superior
slice, as scanners number head to feet, so file order is generally not array order:
``SeriesWriteResult.paths[k]`` is the file of array slice ``k``.

CT: unsigned 16-bit stored values with RescaleIntercept -1024 and RescaleSlope 1 (HU exact).
PET: Units BQML, signed 16-bit stored values with a per-slice RescaleSlope that maps each
slice's largest magnitude to about 32766, DecayCorrection START to the series time, and every
header that body-weight SUV needs. ``SeriesWriteResult.stored_values`` holds the SUV a correct
reader decodes (stored x slope x SUV factor from the written headers), so tests can compare
exactly rather than within quantisation.

Everything is deterministic: UIDs are derived from the inputs, creation times from the study.
"""

from __future__ import annotations

import datetime
import hashlib
import io
import math
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import UID, ExplicitVRLittleEndian

from .. import __version__
from ..dicom.suv import suv_bw_factors
from ..errors import OutputExistsError
from ..fileio import atomic_write_bytes
from ..geometry import Grid

CT_IMAGE_STORAGE = UID("1.2.840.10008.5.1.4.1.1.2")
PET_IMAGE_STORAGE = UID("1.2.840.10008.5.1.4.1.1.128")
IMPLEMENTATION_CLASS_UID = UID("2.25.230547271359813006375196958419405383393")
IMPLEMENTATION_VERSION_NAME = f"PETCTL_{__version__}"[:16]

F18_HALF_LIFE_S = 6586.2  # physical constant of fluorine-18 (109.77 min)
F18_POSITRON_FRACTION = 0.9673  # physical constant of fluorine-18

CT_RESCALE_INTERCEPT = -1024
CT_MAX_HU = 65535 + CT_RESCALE_INTERCEPT
PET_STORED_PEAK = 32766  # one below int16 max so rounding the slope's decimal text can never overflow
PET_CORRECTED_IMAGE = ["DECY", "ATTN", "SCAT", "DTIM", "RAN", "NORM"]
# Axial length covered by one PET bed position of the modelled scanner: slices in the same
# bed share an acquisition time, later beds start one frame duration after another.
PET_BED_AXIAL_LENGTH_MM = 160.0

# Namespace of the name-based (version 5) UUIDs behind make_uid(): fixed, so UIDs repeat.
_UID_NAMESPACE = uuid.UUID("7d2c4f0e-4b43-5d2a-9a51-5045544354c1")
_MAX_DS_LENGTH = 16


# --------------------------------------------------------------------------- public data


@dataclass
class PatientInfo:
    patient_id: str
    patient_name: str
    sex: str  # DICOM PatientSex: "M", "F", "O" or "" (unknown)
    age_years: int
    weight_kg: float
    height_m: Optional[float] = None


@dataclass
class StudyInfo:
    patient: PatientInfo
    study_uid: str
    frame_of_reference_uid: str  # shared by the CT and PET series of the study
    study_date: datetime.date
    study_time: datetime.time
    study_description: str
    accession_number: str = ""
    study_id: str = "1"
    manufacturer: str = "PETCTLesions synthetic"


@dataclass
class PetAcquisition:
    injected_dose_bq: float
    injection_datetime: datetime.datetime
    series_datetime: datetime.datetime  # decay-correction reference (START); after the injection
    half_life_s: float = F18_HALF_LIFE_S  # F-18 physical constant (not a clinical default)
    radiopharmaceutical: str = "Fluorodeoxyglucose"
    frame_duration_ms: int = 120000


@dataclass
class SeriesWriteResult:
    series_uid: str
    paths: List[Path]  # paths[k] = file of grid slice k (array index k)
    sop_instance_uids: List[str]  # sop_instance_uids[k] for slice k
    stored_values: Optional[np.ndarray] = None  # float64, shape of the input: exactly what a correct reader decodes


def make_uid(*parts: object) -> str:
    """Deterministic DICOM UID ``2.25.<int>`` from ``parts`` (at most 44 characters).

    The integer is a name-based (version 5) UUID of the parts, the form ISO/IEC 9834-8 allows
    under root 2.25, so equal parts give equal UIDs and different parts practically never
    collide. (pydicom's generate_uid ignores its entropy sources under the 2.25 root.)
    """
    name = "\x1f".join(str(part) for part in parts)
    return f"2.25.{uuid.uuid5(_UID_NAMESPACE, name).int}"


def pet_suv_to_bqml_factor(weight_kg: float, acquisition: PetAcquisition) -> float:
    """Bq/mL per SUVbw unit for images decay corrected to the series time (DecayCorrection START)."""
    _require_positive(weight_kg, "patient weight (kg)")
    _require_positive(acquisition.injected_dose_bq, "injected dose (Bq)")
    _require_positive(acquisition.half_life_s, "half-life (s)")
    uptake_s = (acquisition.series_datetime - acquisition.injection_datetime).total_seconds()
    if uptake_s <= 0:
        raise ValueError(
            f"PET series time {acquisition.series_datetime} must be after the injection "
            f"{acquisition.injection_datetime}"
        )
    decayed_dose_bq = acquisition.injected_dose_bq * 2.0 ** (-uptake_s / acquisition.half_life_s)
    return decayed_dose_bq / (weight_kg * 1000.0)


# --------------------------------------------------------------------------- value formatting


def _require_positive(value: float, what: str) -> None:
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
        raise ValueError(f"{what} must be a positive number, got {value!r}")


def format_ds(value: float) -> str:
    """Decimal String text (at most 16 characters) closest to ``value``."""
    if not math.isfinite(value):
        raise ValueError(f"{value!r} cannot be written as a DICOM decimal string")
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))
    for digits in range(_MAX_DS_LENGTH, 0, -1):
        text = f"{value:.{digits}g}"
        if len(text) <= _MAX_DS_LENGTH:
            return text
    raise ValueError(f"{value!r} cannot be written in 16 characters")  # pragma: no cover - g format always fits


def format_da(value: datetime.date) -> str:
    return value.strftime("%Y%m%d")


def format_tm(value: datetime.time) -> str:
    text = f"{value.hour:02d}{value.minute:02d}{value.second:02d}"
    return text + (f".{value.microsecond:06d}" if value.microsecond else "")


def format_dt(value: datetime.datetime) -> str:
    return format_da(value.date()) + format_tm(value.time())


# --------------------------------------------------------------------------- geometry


@dataclass(frozen=True)
class _SliceGeometry:
    """Per-slice placement derived from the grid, in array (k) order."""

    orientation: List[str]
    positions: List[List[str]]
    slice_locations: List[str]
    instance_numbers: List[int]  # instance_numbers[k]: 1 = most superior slice


def _slice_geometry(grid: Grid) -> _SliceGeometry:
    direction = grid.direction_matrix
    if not np.allclose(direction.T @ direction, np.eye(3), atol=1e-6):
        raise ValueError(f"grid direction {grid.direction} is not orthonormal; DICOM cannot represent it")
    row, column = direction[:, 0], direction[:, 1]
    normal = np.cross(row, column)
    count = grid.size[2]
    points = grid.index_to_lps(np.array([[0.0, 0.0, float(k)] for k in range(count)]))
    # Head to feet: the largest LPS z (superior) first; ties keep array order.
    order = sorted(range(count), key=lambda k: (-round(float(points[k][2]), 6), k))
    instance_numbers = [0] * count
    for rank, k in enumerate(order):
        instance_numbers[k] = rank + 1
    return _SliceGeometry(
        orientation=[format_ds(float(v)) for v in (*row, *column)],
        positions=[[format_ds(float(v)) for v in point] for point in points],
        slice_locations=[format_ds(round(float(np.dot(point, normal)), 6)) for point in points],
        instance_numbers=instance_numbers,
    )


def nbia_file_names(count: int) -> List[str]:
    """File names ``1-01.dcm`` ... for instance numbers 1..count, zero-padded to a common width."""
    width = max(2, len(str(count)))
    return [f"1-{number:0{width}d}.dcm" for number in range(1, count + 1)]


# --------------------------------------------------------------------------- dataset building


def _character_set(texts: Sequence[str]) -> str:
    try:
        for text in texts:
            text.encode("latin-1")
    except UnicodeEncodeError:
        return "ISO_IR 192"
    return "ISO_IR 100"


def _code_item(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = scheme
    item.CodeMeaning = meaning
    return item


def _content_digest(*arrays: np.ndarray) -> str:
    digest = hashlib.sha256()
    for array in arrays:
        digest.update(str(array.dtype).encode() + str(array.shape).encode())
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


@dataclass(frozen=True)
class _SeriesHeader:
    """What every slice of a series shares."""

    study: StudyInfo
    grid: Grid
    modality: str
    sop_class_uid: UID
    series_uid: str
    series_number: int
    series_description: str
    series_datetime: datetime.datetime


def _validate_study(study: StudyInfo) -> None:
    patient = study.patient
    if patient.sex not in ("M", "F", "O", ""):
        raise ValueError(f"patient sex must be 'M', 'F', 'O' or '' (unknown), got {patient.sex!r}")
    if not 0 <= int(patient.age_years) <= 999:
        raise ValueError(f"patient age must be 0..999 years, got {patient.age_years!r}")
    _require_positive(patient.weight_kg, "patient weight (kg)")
    if patient.height_m is not None:
        _require_positive(patient.height_m, "patient height (m)")
    for what, uid in (("study UID", study.study_uid), ("frame of reference UID", study.frame_of_reference_uid)):
        if not UID(uid).is_valid:
            raise ValueError(f"{what} {uid!r} is not a valid DICOM UID")


def _base_dataset(header: _SeriesHeader, geometry: _SliceGeometry, k: int, sop_instance_uid: str) -> Dataset:
    study, patient, grid = header.study, header.study.patient, header.grid
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = header.sop_class_uid
    ds.file_meta.MediaStorageSOPInstanceUID = UID(sop_instance_uid)
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.ImplementationClassUID = IMPLEMENTATION_CLASS_UID
    ds.file_meta.ImplementationVersionName = IMPLEMENTATION_VERSION_NAME

    texts = [patient.patient_name, patient.patient_id, study.study_description, header.series_description]
    ds.SpecificCharacterSet = _character_set(texts + [study.manufacturer, study.accession_number])
    ds.InstanceCreationDate = format_da(header.series_datetime.date())
    ds.InstanceCreationTime = format_tm(header.series_datetime.time())
    ds.SOPClassUID = header.sop_class_uid
    ds.SOPInstanceUID = sop_instance_uid
    ds.StudyDate = format_da(study.study_date)
    ds.SeriesDate = format_da(header.series_datetime.date())
    ds.StudyTime = format_tm(study.study_time)
    ds.SeriesTime = format_tm(header.series_datetime.time())
    ds.AccessionNumber = study.accession_number
    ds.Modality = header.modality
    ds.Manufacturer = study.manufacturer
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = study.study_description
    ds.SeriesDescription = header.series_description
    ds.ManufacturerModelName = "PETCTLesions phantom generator"

    ds.PatientName = patient.patient_name
    ds.PatientID = patient.patient_id
    ds.PatientBirthDate = ""
    ds.PatientSex = patient.sex
    ds.PatientAge = f"{int(patient.age_years):03d}Y"
    if patient.height_m is not None:
        ds.PatientSize = format_ds(float(patient.height_m))
    ds.PatientWeight = format_ds(float(patient.weight_kg))

    ds.SliceThickness = format_ds(float(grid.spacing[2]))
    ds.SpacingBetweenSlices = format_ds(float(grid.spacing[2]))
    ds.SoftwareVersions = __version__
    ds.PatientPosition = "HFS"

    ds.StudyInstanceUID = study.study_uid
    ds.SeriesInstanceUID = header.series_uid
    ds.StudyID = study.study_id
    ds.SeriesNumber = int(header.series_number)
    ds.AcquisitionNumber = 1
    ds.InstanceNumber = geometry.instance_numbers[k]
    ds.ImagePositionPatient = geometry.positions[k]
    ds.ImageOrientationPatient = geometry.orientation
    ds.FrameOfReferenceUID = study.frame_of_reference_uid
    ds.PositionReferenceIndicator = ""
    ds.SliceLocation = geometry.slice_locations[k]

    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = int(grid.size[1])
    ds.Columns = int(grid.size[0])
    ds.PixelSpacing = [format_ds(float(grid.spacing[1])), format_ds(float(grid.spacing[0]))]
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    return ds


def _encode(ds: Dataset) -> bytes:
    """The dataset as a DICOM Part 10 file (preamble, meta group, Explicit VR Little Endian)."""
    buffer = io.BytesIO()
    if int(pydicom.__version__.split(".")[0]) >= 3:
        pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
    else:  # pragma: no cover - pydicom 2.x (older Slicer releases)
        ds.is_little_endian = True
        ds.is_implicit_VR = False
        ds.save_as(buffer, write_like_original=False)
    return buffer.getvalue()


def _prepare_output(out_dir: Path, count: int, overwrite: bool) -> List[Path]:
    """Target paths by instance number (index 0 = instance 1); refuse before writing anything."""
    out_dir = Path(out_dir)
    targets = [out_dir / name for name in nbia_file_names(count)]
    if not overwrite:
        existing = [path for path in targets if path.exists()]
        if existing:
            raise OutputExistsError(
                f"{existing[0]}: already exists ({len(existing)} of the {count} files of this series do); "
                "refusing to overwrite them"
            )
    return targets


def _sop_instance_uid(series_uid: str, k: int) -> str:
    return make_uid(series_uid, "instance", k)


def _write_series(
    grid: Grid, out_dir: Path, overwrite: bool, slice_dataset: Callable[[int], Dataset]
) -> Tuple[List[Path], List[str]]:
    """Write ``slice_dataset(k)`` for every slice k under its NBIA name; return paths and SOP UIDs by k."""
    count = grid.size[2]
    targets = _prepare_output(Path(out_dir), count, overwrite)
    paths: List[Path] = []
    sop_uids: List[str] = []
    for k in range(count):
        ds = slice_dataset(k)
        path = targets[int(ds.InstanceNumber) - 1]
        atomic_write_bytes(path, _encode(ds), overwrite=overwrite)
        paths.append(path)
        sop_uids.append(str(ds.SOPInstanceUID))
    return paths, sop_uids


def _check_volume(volume: np.ndarray, grid: Grid, what: str) -> np.ndarray:
    volume = np.asarray(volume)
    if tuple(volume.shape) != grid.shape:
        raise ValueError(f"{what} array shape {volume.shape} does not match the grid shape {grid.shape} (k, j, i)")
    if not np.issubdtype(volume.dtype, np.number) or np.issubdtype(volume.dtype, np.complexfloating):
        raise ValueError(f"{what} array must be real numbers, got dtype {volume.dtype}")
    if not np.all(np.isfinite(volume)):
        raise ValueError(f"{what} array contains NaN or infinite values")
    return volume


# --------------------------------------------------------------------------- CT


def ct_series_description(grid: Grid) -> str:
    """A CT series' description from the slice thickness its SliceThickness says (the slice spacing): "CT 2.5mm"."""
    return f"CT {round(float(grid.spacing[2]), 2):g}mm"


def write_ct_series(
    hu: np.ndarray,
    grid: Grid,
    study: StudyInfo,
    out_dir: Path,
    series_number: int = 2,
    series_description: Optional[str] = None,
    overwrite: bool = False,
) -> SeriesWriteResult:
    """Write ``hu`` (indexed [k, j, i], rounded to whole HU, -1024..64511) as a CT series in ``out_dir``.

    Without ``series_description`` the series is described by its slice thickness (:func:`ct_series_description`).
    """
    _validate_study(study)
    if series_description is None:
        series_description = ct_series_description(grid)
    hu = _check_volume(hu, grid, "CT")
    hu_int = np.rint(hu).astype(np.int64)
    if hu_int.min() < CT_RESCALE_INTERCEPT or hu_int.max() > CT_MAX_HU:
        raise ValueError(
            f"CT values {hu_int.min()}..{hu_int.max()} HU do not fit {CT_RESCALE_INTERCEPT}..{CT_MAX_HU} HU "
            "(unsigned 16-bit with intercept -1024)"
        )
    stored = (hu_int - CT_RESCALE_INTERCEPT).astype("<u2")
    series_datetime = datetime.datetime.combine(study.study_date, study.study_time)
    header = _SeriesHeader(
        study=study,
        grid=grid,
        modality="CT",
        sop_class_uid=CT_IMAGE_STORAGE,
        series_uid=make_uid(
            "series", study.study_uid, "CT", series_number, series_description, grid, _content_digest(stored)
        ),
        series_number=series_number,
        series_description=series_description,
        series_datetime=series_datetime,
    )

    geometry = _slice_geometry(grid)

    def slice_dataset(k: int) -> Dataset:
        ds = _base_dataset(header, geometry, k, _sop_instance_uid(header.series_uid, k))
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.AcquisitionDate = format_da(series_datetime.date())
        ds.AcquisitionTime = format_tm(series_datetime.time())
        ds.ContentDate = ds.AcquisitionDate
        ds.ContentTime = ds.AcquisitionTime
        ds.KVP = "120"
        ds.PixelRepresentation = 0
        ds.WindowCenter = "40"  # mediastinum window named by the Lung-PET-CT-Dx dataset
        ds.WindowWidth = "350"
        ds.RescaleIntercept = str(CT_RESCALE_INTERCEPT)
        ds.RescaleSlope = "1"
        ds.RescaleType = "HU"
        ds.PixelData = stored[k].tobytes()
        return ds

    paths, sop_uids = _write_series(grid, out_dir, overwrite, slice_dataset)
    return SeriesWriteResult(
        series_uid=header.series_uid,
        paths=paths,
        sop_instance_uids=sop_uids,
        stored_values=hu_int.astype(np.float64),
    )


# --------------------------------------------------------------------------- PET


def _radiopharmaceutical_item(acquisition: PetAcquisition) -> Dataset:
    item = Dataset()
    item.Radiopharmaceutical = acquisition.radiopharmaceutical
    item.RadiopharmaceuticalStartTime = format_tm(acquisition.injection_datetime.time())
    item.RadiopharmaceuticalStartDateTime = format_dt(acquisition.injection_datetime)
    item.RadionuclideTotalDose = format_ds(float(acquisition.injected_dose_bq))
    item.RadionuclideHalfLife = format_ds(float(acquisition.half_life_s))
    is_f18 = math.isclose(acquisition.half_life_s, F18_HALF_LIFE_S, rel_tol=1e-3)
    if is_f18:
        item.RadionuclidePositronFraction = format_ds(F18_POSITRON_FRACTION)
        item.RadionuclideCodeSequence = DicomSequence([_code_item("C-111A1", "SRT", "^18^Fluorine")])
    else:  # another nuclide: its code is unknown here, and the sequence is type 2 (may be empty)
        item.RadionuclideCodeSequence = DicomSequence([])
    if is_f18 and acquisition.radiopharmaceutical.strip().lower() == "fluorodeoxyglucose":
        item.RadiopharmaceuticalCodeSequence = DicomSequence([_code_item("C-B1031", "SRT", "Fluorodeoxyglucose F^18^")])
    return item


def _bed_timing(rank: int, grid: Grid, acquisition: PetAcquisition) -> Tuple[float, float]:
    """(acquisition start offset s, decay factor) of the slice with instance index ``rank``."""
    bed = int(rank * float(grid.spacing[2]) // PET_BED_AXIAL_LENGTH_MM)
    start_s = bed * acquisition.frame_duration_ms / 1000.0
    decay_constant = math.log(2.0) / acquisition.half_life_s
    duration_s = acquisition.frame_duration_ms / 1000.0
    # Correction from the frame's mean activity back to the series start (DecayCorrection START).
    decay_factor = math.exp(decay_constant * start_s) * (
        decay_constant * duration_s / (1.0 - math.exp(-decay_constant * duration_s))
    )
    return start_s, decay_factor


def _pet_slice_headers(
    ds: Dataset, k: int, rank: int, grid: Grid, acquisition: PetAcquisition, radiopharmaceutical: Dataset
) -> None:
    """PET Series, PET Isotope, PET Multi-gated... and PET Image module tags of slice k (no pixels)."""
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    start_s, decay_factor = _bed_timing(rank, grid, acquisition)
    acquired = acquisition.series_datetime + datetime.timedelta(seconds=start_s)
    ds.AcquisitionDate = format_da(acquired.date())
    ds.AcquisitionTime = format_tm(acquired.time())
    ds.ContentDate = ds.SeriesDate
    ds.ContentTime = ds.SeriesTime
    ds.Units = "BQML"
    ds.CountsSource = "EMISSION"
    ds.SeriesType = ["WHOLE BODY", "IMAGE"]
    ds.NumberOfSlices = int(grid.size[2])
    ds.CorrectedImage = list(PET_CORRECTED_IMAGE)
    ds.DecayCorrection = "START"
    ds.CollimatorType = "NONE"
    ds.RadiopharmaceuticalInformationSequence = DicomSequence([radiopharmaceutical])
    orientation = _code_item("F-10450", "SRT", "recumbent")
    orientation.PatientOrientationModifierCodeSequence = DicomSequence([_code_item("F-10340", "SRT", "supine")])
    ds.PatientOrientationCodeSequence = DicomSequence([orientation])
    ds.PatientGantryRelationshipCodeSequence = DicomSequence([_code_item("F-10470", "SRT", "headfirst")])
    decay_constant = math.log(2.0) / acquisition.half_life_s
    ds.FrameReferenceTime = format_ds(round(1000.0 * math.log(decay_factor) / decay_constant, 3))
    ds.ActualFrameDuration = int(acquisition.frame_duration_ms)
    ds.DecayFactor = format_ds(round(decay_factor, 9))
    ds.ImageIndex = rank + 1
    ds.PixelRepresentation = 1
    ds.RescaleIntercept = "0"


def _pet_slopes(activity_bqml: np.ndarray) -> Tuple[List[str], np.ndarray]:
    """Per-slice RescaleSlope texts and the int16 stored values they give."""
    slopes: List[str] = []
    stored = np.zeros(activity_bqml.shape, dtype="<i2")
    for k, plane in enumerate(activity_bqml):
        peak = float(np.max(np.abs(plane)))
        slope_text = format_ds(peak / PET_STORED_PEAK) if peak > 0 else "1"
        slope = float(slope_text)
        if slope <= 0:  # a peak below ~1e-300 Bq/mL: nothing to store
            slope_text, slope = "1", 1.0
        stored[k] = np.rint(plane / slope).astype(np.int64)
        slopes.append(slope_text)
    return slopes, stored


def write_pet_series(
    suv: np.ndarray,
    grid: Grid,
    study: StudyInfo,
    acquisition: PetAcquisition,
    out_dir: Path,
    series_number: int = 3,
    series_description: str = "PET WB AC",
    overwrite: bool = False,
) -> SeriesWriteResult:
    """Write ``suv`` (SUVbw, indexed [k, j, i]) as a BQML PET series in ``out_dir``.

    ``stored_values`` of the result is the SUV a correct reader decodes from the files.
    """
    _validate_study(study)
    suv = _check_volume(suv, grid, "PET SUV").astype(np.float64)
    if int(acquisition.frame_duration_ms) <= 0:
        raise ValueError(f"frame duration must be positive, got {acquisition.frame_duration_ms!r} ms")
    bqml_per_suv = pet_suv_to_bqml_factor(study.patient.weight_kg, acquisition)
    slopes, stored = _pet_slopes(suv * bqml_per_suv)
    series_uid = make_uid(
        "series", study.study_uid, "PT", series_number, series_description, grid, acquisition, _content_digest(stored)
    )
    header = _SeriesHeader(
        study=study,
        grid=grid,
        modality="PT",
        sop_class_uid=PET_IMAGE_STORAGE,
        series_uid=series_uid,
        series_number=series_number,
        series_description=series_description,
        series_datetime=acquisition.series_datetime,
    )
    geometry = _slice_geometry(grid)
    radiopharmaceutical = _radiopharmaceutical_item(acquisition)

    # SUV factors from exactly the headers that are written (decimal text included), so
    # stored_values is what any correct reader computes.
    headers = []
    for k in range(grid.size[2]):
        ds = _base_dataset(header, geometry, k, _sop_instance_uid(series_uid, k))
        _pet_slice_headers(ds, k, geometry.instance_numbers[k] - 1, grid, acquisition, radiopharmaceutical)
        ds.RescaleSlope = slopes[k]
        headers.append(ds)
    suv_result = suv_bw_factors(headers, source=f"{out_dir} (being written)")
    if suv_result.warnings:  # pragma: no cover - the writer's own headers are complete
        raise RuntimeError("; ".join(suv_result.warnings))
    slope_values = np.array([float(ds.RescaleSlope) for ds in headers])
    # Same operation order as a reader: (stored * slope + intercept) * factor, intercept 0.
    stored_values = (stored.astype(np.float64) * slope_values[:, None, None]) * suv_result.factors[:, None, None]

    def slice_dataset(k: int) -> Dataset:
        ds = headers[k]
        ds.PixelData = stored[k].tobytes()
        return ds

    paths, sop_uids = _write_series(grid, out_dir, overwrite, slice_dataset)
    return SeriesWriteResult(
        series_uid=series_uid, paths=paths, sop_instance_uids=sop_uids, stored_values=stored_values
    )
