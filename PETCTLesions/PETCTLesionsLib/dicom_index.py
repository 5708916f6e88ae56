"""Find DICOM studies and series in files and folders, and pair each PET series with a CT.

:func:`scan_paths` accepts any mix of files and folders (any layout, any file names, several
studies mixed). It reads every file's header once (pydicom, ``stop_before_pixels``) and groups
the image files by StudyInstanceUID, SeriesInstanceUID and Modality; folder and file names are
never used. Files that are not DICOM, and DICOM files without an image (DICOMDIR, SR,
RTSTRUCT...), are skipped and counted; DICOM files that cannot be read (truncated, corrupt)
are reported by name. Identical copies of one instance (same SOPInstanceUID) are kept once.
An Enhanced (or Legacy Converted Enhanced) CT holds the whole series in one multi-frame file:
each frame becomes a slice header of its own, placed and rescaled by its functional groups.

For uncompressed (native) transfer syntaxes the header scan also records where the pixel data
start in the file, so that :mod:`dicom_series` can read them with one seek and one read. Such
Part 10 files skip dcmread's file-level work: the meta group's transfer syntax and SOP class are
taken from their bytes and the dataset is read with pydicom's ``read_dataset``; anything else
goes through ``dcmread``.

PET/CT pairing (:func:`pair_pet_with_ct`): each PT series is paired with a CT series of the
same study (StudyInstanceUID). When the study has no CT, a CT of another study of the same
patient that shares the PET's FrameOfReferenceUID is used. When several CT series qualify,
the first one in this order wins (the rule is reported with the alternatives):

1. the same FrameOfReferenceUID as the PET,
2. the largest overlap with the PET along the PET's slice normal (mm),
3. the most slices,
4. the lowest SeriesNumber (then the SeriesInstanceUID, so that the choice never depends on
   file order).

The CT must cover the PET along the PET's slice normal: outside the CT the PET is paired with
air (the CT resampled onto the PET grid, :mod:`resampling`), which the model and an nnU-Net
export take for outside the body. The fraction of the PET's extent along its normal that the
chosen CT covers (slice centres widened by half a slice thickness) is the pairing's
``ct_coverage``: under :data:`CT_COVERAGE_WARN_FRACTION` the pairing carries a warning, under
:data:`CT_COVERAGE_REFUSE_FRACTION` an ``error`` (the pair is not loaded). In-plane coverage is
not measured: a CT's field of view (about 500 mm) is routinely narrower than the PET's (600-700
mm), and both hold the patient.

A study often holds more than one PT series: the attenuation-corrected (AC) images, the same
data without attenuation correction (NAC), MIPs, screenshots. Series that are not a volume
(Secondary Capture, colour images, projections, localizers) are never paired. The others are
ranked (:data:`PET_PREFERENCE`) and the first one with a CT is the study's *preferred*
pairing: what a load picks when no series is named, and what a batch run processes. A
localizer (scout) stored inside an axial series is set aside from it, with a note.
"""

from __future__ import annotations

import dataclasses
import io
import os
import struct
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Generic, Iterable, List, Optional, Sequence, Tuple, TypeVar, Union

import numpy as np
import pydicom
from pydicom.datadict import tag_for_keyword
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.filereader import read_dataset
from pydicom.multival import MultiValue
from pydicom.tag import BaseTag
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

PathLike = Union[str, "os.PathLike[str]"]
ProgressCallback = Callable[[float, str], None]
CancelCallback = Callable[[], bool]

PAIRING_RULE = (
    "same StudyInstanceUID (else another study of the patient with the same FrameOfReferenceUID); "
    "among several CT series: same FrameOfReferenceUID first, then the largest z-overlap with the PET, "
    "then the most slices, then the lowest SeriesNumber"
)
PET_PREFERENCE = (
    "attenuation-corrected first (CorrectedImage has ATTN), then ORIGINAL before DERIVED images, "
    "then the most slices, then the lowest SeriesNumber"
)
DICOMDIR_SOP_CLASS = "1.2.840.10008.1.3.10"
SECONDARY_CAPTURE_SOP_CLASS_PREFIX = "1.2.840.10008.5.1.4.1.1.7"  # and its multi-frame kinds .7.1-.7.4
SEGMENTATION_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
# Multi-frame CT whose frames are the slices of one volume: Enhanced CT, Legacy Converted Enhanced CT.
ENHANCED_CT_SOP_CLASSES = frozenset(("1.2.840.10008.5.1.4.1.1.2.1", "1.2.840.10008.5.1.4.1.1.2.2"))
# ImageType values (third and later) of images that are not slices of a volume.
PROJECTION_IMAGE_TYPES = frozenset(("LOCALIZER", "MIP", "PROJECTION IMAGE"))
HEADER_CHUNK_BYTES = 64 * 1024
PIXEL_DATA_TAG = 0x7FE00010
PIXEL_DATA_TAGS = frozenset((0x7FE00008, 0x7FE00009, PIXEL_DATA_TAG))  # float, double float, integer pixels
# Transfer syntaxes whose pixel data lie in the file as plain little/big-endian integers.
NATIVE_TRANSFER_SYNTAXES: Dict[str, Tuple[bool, str]] = {
    str(ImplicitVRLittleEndian): (True, "<"),
    str(ExplicitVRLittleEndian): (False, "<"),
    str(ExplicitVRBigEndian): (False, ">"),
}
# The CT and the PET of a PET/CT are acquired over one planned range: the CT normally covers the
# whole PET. A few centimetres short (a CT range planned tighter than the PET's whole bed
# positions) leaves the PET's ends without anatomy: warned under 90%. Under half, most of the PET
# would be read with air as its CT (a 1-slice CT made lesion volumes 22% low): refused.
CT_COVERAGE_WARN_FRACTION = 0.9
CT_COVERAGE_REFUSE_FRACTION = 0.5
_LONG_LENGTH_VRS = (b"OB", b"OW", b"OF", b"OD", b"OL", b"OV", b"SQ", b"UC", b"UN", b"UR", b"UT")


class Cancelled(Exception):  # noqa: N818 - the name the callers use
    """The user cancelled a scan or a load; nothing was returned."""


class NotDicomError(ValueError):
    """The file is not a DICOM file."""


class DicomReadError(ValueError):
    """A DICOM file whose header cannot be read or is unusable; the message names the file.

    ``series_uid`` and ``sop_instance_uid`` name the series and instance when the header could
    be read (a file cut short in its pixel data): a load of that series must not go on without
    the instance (unless an intact copy of it was found).
    """

    def __init__(self, message: str, series_uid: str = "", sop_instance_uid: str = "") -> None:
        super().__init__(message)
        self.series_uid = series_uid
        self.sop_instance_uid = sop_instance_uid


class NoImageError(ValueError):
    """A DICOM file that holds no image (DICOMDIR, SR, RTSTRUCT...); the message says what it is."""


# --------------------------------------------------------------------------- data


@dataclass
class SliceHeader:
    """What indexing, geometry and decoding need from one DICOM image file (no pixels)."""

    path: Path
    sop_instance_uid: str
    study_uid: str
    series_uid: str
    modality: str
    frame_of_reference_uid: str
    patient_id: str
    patient_name: str
    study_date: str
    study_description: str
    series_description: str
    series_number: Optional[int]
    instance_number: Optional[int]
    rows: int
    columns: int
    pixel_spacing: Optional[Tuple[float, float]]  # (row spacing, column spacing) as in PixelSpacing
    orientation: Optional[Tuple[float, ...]]  # ImageOrientationPatient: row cosines, column cosines
    position: Optional[Tuple[float, float, float]]  # ImagePositionPatient
    slice_thickness: Optional[float]
    spacing_between_slices: Optional[float]
    number_of_frames: int
    samples_per_pixel: int
    bits_allocated: int
    bits_stored: int
    pixel_representation: int
    rescale_slope: float
    rescale_intercept: float
    # Without a meta group (an old ACR-NEMA style file) the encoding the dataset was read with.
    transfer_syntax: str
    pixel_data_offset: Optional[int] = None  # byte offset of the native pixel data value in the file
    pixel_data_length: Optional[int] = None
    dataset: Optional[Dataset] = None  # the whole header (no pixels), kept for PET: SUV needs it
    part10: bool = True  # False: no preamble and meta group (pydicom must be forced to read it)
    sop_class_uid: str = ""
    image_type: Tuple[str, ...] = ()  # ImageType values, upper case
    corrected_image: Tuple[str, ...] = ()  # CorrectedImage values (PET), upper case
    frame: Optional[int] = None  # the frame (from 0) of a multi-frame file that this slice is; None: single-frame

    @property
    def where(self) -> str:
        """How messages name the slice: its file, and its frame in a multi-frame file."""
        return str(self.path) if self.frame is None else f"{self.path} (frame {self.frame + 1})"

    @property
    def instance_key(self) -> Tuple[str, int]:
        """What identifies the slice: its SOPInstanceUID, and its frame in a multi-frame file."""
        return self.sop_instance_uid, -1 if self.frame is None else self.frame

    @property
    def is_projection(self) -> bool:
        """A localizer, MIP or other projection: an image, but not a slice of a volume."""
        return any(value in PROJECTION_IMAGE_TYPES for value in self.image_type[2:])

    @property
    def normal(self) -> np.ndarray:
        """Unit slice normal (row x column cosines); the z axis when the orientation is unknown."""
        if self.orientation is None:
            return np.array([0.0, 0.0, 1.0])
        row, column = np.asarray(self.orientation[:3]), np.asarray(self.orientation[3:])
        normal = np.cross(row, column)
        length = float(np.linalg.norm(normal))
        return normal / length if length > 0 else np.array([0.0, 0.0, 1.0])


@dataclass
class IndexedSeries:
    """The image files of one series (StudyInstanceUID, SeriesInstanceUID, Modality)."""

    study_uid: str
    series_uid: str
    modality: str
    headers: List[SliceHeader]
    duplicates: List[Tuple[Path, Path]] = field(default_factory=list)  # (ignored copy, kept file)
    # (file, earlier file): the same SOPInstanceUID on different slices (a broken anonymiser); both kept
    uid_clashes: List[Tuple[Path, Path]] = field(default_factory=list)
    set_aside: List[Tuple[Path, str]] = field(default_factory=list)  # (file, why it is not a slice of the volume)

    @property
    def first(self) -> SliceHeader:
        return self.headers[0]

    @property
    def description(self) -> str:
        return self.first.series_description

    @property
    def series_number(self) -> Optional[int]:
        return self.first.series_number

    @property
    def frame_of_reference_uid(self) -> str:
        return self.first.frame_of_reference_uid

    @property
    def files(self) -> List[Path]:
        return list(dict.fromkeys(header.path for header in self.headers))  # the frames of a file share it

    @property
    def label(self) -> str:
        """How messages name the series."""
        number = "?" if self.series_number is None else str(self.series_number)
        return f"{self.modality} series {number} '{self.description}' ({self.series_uid})"

    @property
    def attenuation_corrected(self) -> bool:
        return "ATTN" in self.first.corrected_image

    @property
    def derived(self) -> bool:
        return bool(self.first.image_type) and self.first.image_type[0] == "DERIVED"

    def volume_problem(self) -> Optional[str]:
        """Why the series is not a volume of slices (a screenshot, colour, projections), or None."""
        first = self.first
        if first.sop_class_uid == SEGMENTATION_SOP_CLASS or self.modality == "SEG":
            # Bit-packed frames of segments, not slices of an image: Slicer's QuantitativeReporting reads them.
            return "a DICOM Segmentation (SEG) object, not an image volume; Slicer loads it with QuantitativeReporting"
        if first.sop_class_uid.startswith(SECONDARY_CAPTURE_SOP_CLASS_PREFIX):
            return "Secondary Capture images (screenshots), not a volume"
        if first.samples_per_pixel != 1:
            return f"colour images ({first.samples_per_pixel} samples per pixel), not a volume"
        if all(header.is_projection for header in self.headers):
            kinds = sorted(
                {value for h in self.headers for value in h.image_type[2:] if value in PROJECTION_IMAGE_TYPES}
            )
            return f"projection images (ImageType {', '.join(kinds)}), not a volume"
        return None

    def z_extent(self, normal: np.ndarray) -> Optional[Tuple[float, float]]:
        """Extent (mm) of the slices along ``normal``: slice centres widened by half a slice thickness."""
        positions = [float(np.dot(h.position, normal)) for h in self.headers if h.position is not None]
        if not positions:
            return None
        half = 0.5 * (self.first.slice_thickness or 0.0)
        return min(positions) - half, max(positions) + half


SeriesT = TypeVar("SeriesT")
OtherSeriesT = TypeVar("OtherSeriesT")


@dataclass
class SeriesPairing(Generic[SeriesT]):
    """The CT chosen for one PET series, why, and the CT series that were not chosen.

    Generic in how a series is described: the scan pairs :class:`IndexedSeries`; the study
    report carries the same pairing over its geometry summaries (:meth:`with_series`).
    """

    study_uid: str
    pet: SeriesT
    ct: Optional[SeriesT]
    rule: str
    alternatives: List[str] = field(default_factory=list)
    warnings: List[str] = field(default_factory=list)
    # The study's first choice among its PET series (see PET_PREFERENCE); else why another one is.
    preferred: bool = True
    not_preferred_because: str = ""
    # Fraction of the PET's extent along its slice normal that the CT covers (None: no CT or no extent).
    ct_coverage: Optional[float] = None
    error: Optional[str] = None  # why the pair cannot be loaded (a CT covering too little of the PET)

    def with_series(self, describe: Callable[[SeriesT], OtherSeriesT]) -> SeriesPairing[OtherSeriesT]:
        """The same pairing (rule, alternatives, warnings) with each series replaced by ``describe(series)``."""
        return SeriesPairing(
            study_uid=self.study_uid,
            pet=describe(self.pet),
            ct=None if self.ct is None else describe(self.ct),
            rule=self.rule,
            alternatives=list(self.alternatives),
            warnings=list(self.warnings),
            preferred=self.preferred,
            not_preferred_because=self.not_preferred_because,
            ct_coverage=self.ct_coverage,
            error=self.error,
        )


@dataclass
class IndexedStudy:
    study_uid: str
    patient_id: str
    patient_name: str
    study_date: str
    description: str
    series: List[IndexedSeries]

    def series_of(self, modality: str) -> List[IndexedSeries]:
        return [s for s in self.series if s.modality == modality]


@dataclass
class FileProblem:
    path: Path
    message: str
    series_uid: str = ""  # the series and instance the file holds, when its header could be read
    sop_instance_uid: str = ""


@dataclass
class ScanResult:
    studies: List[IndexedStudy]
    pairings: List[SeriesPairing[IndexedSeries]]
    files_found: int
    skipped: List[FileProblem]  # not DICOM, or DICOM without an image: skipped on purpose
    problems: List[FileProblem]  # DICOM files that could not be read

    @property
    def series(self) -> List[IndexedSeries]:
        return [series for study in self.studies for series in study.series]

    def unreadable_files(self, series: IndexedSeries) -> List[FileProblem]:
        """Files of the series that could not be read (cut short, say) and of which no intact copy
        was found: a volume without them is incomplete."""
        present = {header.sop_instance_uid for header in series.headers}
        return [
            problem
            for problem in self.problems
            if problem.series_uid == series.series_uid and problem.sop_instance_uid not in present
        ]

    def find_series(self, series_uid: str) -> IndexedSeries:
        for series in self.series:
            if series.series_uid == series_uid:
                return series
        raise KeyError(f"no series with SeriesInstanceUID {series_uid} was found")


# --------------------------------------------------------------------------- files


def list_files(paths: Sequence[PathLike]) -> Tuple[List[Path], List[FileProblem]]:
    """Every file under ``paths`` (files as given, folders recursively), sorted; missing paths reported."""
    files: List[Path] = []
    problems: List[FileProblem] = []
    for raw in paths:
        path = Path(raw)
        if path.is_file():
            files.append(path)
        elif path.is_dir():
            for root, dirs, names in os.walk(path):
                dirs.sort()
                files.extend(Path(root) / name for name in sorted(names))
        else:
            problems.append(FileProblem(path, "does not exist (or is not a file or folder)"))
    unique = list(dict.fromkeys(files))  # a file named twice (a folder and a file in it) is read once
    return unique, problems


def _sniff(handle: Any) -> bool:
    """True for a DICOM Part 10 file; False for a bare dataset worth trying; NotDicomError otherwise."""
    head = handle.read(132)
    if len(head) == 132 and head[128:132] == b"DICM":
        return True
    # A dataset without preamble and meta group starts with a group 0008 (or 0002) element.
    if len(head) >= 8 and head[:2] in (b"\x08\x00", b"\x02\x00"):
        return False
    raise NotDicomError("not a DICOM file")


# --------------------------------------------------------------------------- one header


class _HeaderValues:
    """Values of one header, parsed from the raw element bytes.

    pydicom converts and validates an element on first access, which costs more than reading
    the whole file (measured: 0.85 ms per file for the ~25 elements used here, against 0.5 ms
    for dcmread). The values the index needs are UIDs, codes and numbers, simple to parse
    from their bytes. Text that depends on the character set (names, descriptions) still goes
    through pydicom, once per distinct raw value (``text_cache``).
    """

    def __init__(self, ds: Dataset, text_cache: Dict[Tuple[int, bytes], str]):
        self.ds = ds
        self.text_cache = text_cache
        # A plain dict of the top-level elements: looking 25 tags up through Dataset.get_item
        # (tag normalisation, deferred-read checks) cost a third of this class's time.
        self.elements: Dict[int, Any] = dict(ds.items())

    def _element(self, keyword: str) -> Tuple[Optional[RawDataElement], Any]:
        """(the raw element or None when already converted, value); value None when absent or empty."""
        element = self.elements.get(keyword_tag(keyword))
        if element is None:
            return None, None
        if isinstance(element, RawDataElement):
            return element, element.value or None
        return None, element.value

    def ascii(self, keyword: str) -> str:
        """UI, CS, DA, IS values as text (backslash-separated when several)."""
        raw, value = self._element(keyword)
        if value is None:
            return ""
        if raw is not None:
            return value.decode("ascii", errors="replace").strip(" \x00")
        if isinstance(value, (list, tuple, MultiValue)):
            return "\\".join(str(v) for v in value)
        return str(value).strip()

    def numbers(self, keyword: str, count: Optional[int] = None) -> Optional[Tuple[float, ...]]:
        """DS/IS values as floats; None when absent. ValueError names the element when malformed."""
        text = self.ascii(keyword)
        if not text:
            return None
        try:
            values = tuple(float(part) for part in text.split("\\"))
        except ValueError:
            raise ValueError(f"{keyword} ({_tag_text(keyword)}) is {text!r}, which is not numeric") from None
        if count is not None and len(values) != count:
            raise ValueError(f"{keyword} ({_tag_text(keyword)}) has {len(values)} values, {count} expected")
        return values

    def number(self, keyword: str) -> Optional[float]:
        values = self.numbers(keyword)
        return None if values is None else values[0]

    def integer(self, keyword: str) -> Optional[int]:
        value = self.number(keyword)
        return None if value is None else int(value)

    def unsigned_short(self, keyword: str) -> Optional[int]:
        raw, value = self._element(keyword)
        if value is None:
            return None
        if raw is not None:
            return int.from_bytes(value[:2], "little" if raw.is_little_endian else "big")
        return int(value[0] if isinstance(value, (list, tuple, MultiValue)) else value)

    def text(self, keyword: str) -> str:
        """Character-set dependent text (PN, LO, SH), decoded by pydicom."""
        raw, value = self._element(keyword)
        if value is None:
            return ""
        if raw is None:
            return str(value).strip()
        key = (keyword_tag(keyword), value + b"|" + self.ascii("SpecificCharacterSet").encode())
        if key not in self.text_cache:
            self.text_cache[key] = str(self.ds[keyword_tag(keyword)].value).strip()
        return self.text_cache[key]


_TAGS: Dict[str, BaseTag] = {}


def keyword_tag(keyword: str) -> BaseTag:
    """The tag of a DICOM keyword (cached: the lookup is on the per-file path)."""
    tag = _TAGS.get(keyword)
    if tag is None:
        number = tag_for_keyword(keyword)
        if number is None:  # pragma: no cover - only fixed keywords are used
            raise KeyError(keyword)
        tag = _TAGS[keyword] = BaseTag(number)
    return tag


def _tag_text(keyword: str) -> str:
    tag = keyword_tag(keyword)
    return f"{tag >> 16:04X},{tag & 0xFFFF:04X}"


def _pixel_data_location(handle: Any, transfer_syntax: str, file_size: int, path: Path) -> Tuple[Optional[int], int]:
    """(value offset, length) of the native PixelData element where the handle stands, or (None, 0).

    ``dcmread(..., stop_before_pixels=True)`` leaves a file object at the start of the
    top-level pixel data element. Offset None means "let pydicom decode" (compressed data,
    no meta information, or an unexpected element there).
    """
    encoding = NATIVE_TRANSFER_SYNTAXES.get(transfer_syntax)
    if encoding is None:
        return None, 0
    implicit, byte_order = encoding
    start = handle.tell()
    element_header = handle.read(12)
    if len(element_header) < 8:
        return None, 0
    group, element = struct.unpack(byte_order + "HH", element_header[:4])
    if (group << 16 | element) != PIXEL_DATA_TAG:
        return None, 0
    if implicit:
        (length,) = struct.unpack(byte_order + "I", element_header[4:8])
        offset = start + 8
    elif element_header[4:6] in _LONG_LENGTH_VRS:
        (length,) = struct.unpack(byte_order + "I", element_header[8:12])
        offset = start + 12
    else:
        (length,) = struct.unpack(byte_order + "H", element_header[6:8])
        offset = start + 8
    if length == 0xFFFFFFFF:  # encapsulated although the transfer syntax says native
        return None, 0
    if offset + length > file_size:
        raise DicomReadError(
            f"{path}: the file is truncated: its pixel data need {length} bytes from byte {offset}, "
            f"but the file has only {file_size} bytes"
        )
    return offset, length


@dataclass
class _RawHeader:
    """A header as read from a file: the dataset (no pixels), where reading stopped, and the meta values."""

    dataset: Dataset
    pixel_start: int  # file position of the element that stopped the reading (pixel data), or the end
    transfer_syntax: str  # "" when the file has no meta information
    sop_class: str


def _read_dataset(handle: Any, file_size: int, force: bool) -> _RawHeader:
    """The header (pydicom, ``stop_before_pixels``) and the file position where reading stopped.

    Reading stops at the start of the top-level pixel data element. The first 64 KiB are
    parsed from memory, which is about 10% faster than through a file object; a header that
    does not end inside them is parsed again from the file.
    """
    if force:  # a file without the DICM marker: probably not DICOM, so keep pydicom's complaints quiet
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return _read_dataset_from(handle, file_size, force)
    return _read_dataset_from(handle, file_size, force)


def _read_dataset_from(handle: Any, file_size: int, force: bool) -> _RawHeader:
    handle.seek(0)
    chunk = handle.read(HEADER_CHUNK_BYTES)
    buffer = io.BytesIO(chunk)
    try:
        header = None if force else _read_native_part10(chunk, buffer)
        if header is None:
            buffer.seek(0)
            header = _with_meta_values(pydicom.dcmread(buffer, stop_before_pixels=True, force=force), buffer.tell())
        # Stopping short of the chunk's end (room for the pixel element's 12-byte header) means
        # the header was complete; at the end it may have been cut by the chunk.
        if len(chunk) == file_size or header.pixel_start < len(chunk) - 12:
            return header
    except Exception:
        if len(chunk) == file_size:
            raise
    handle.seek(0)
    return _with_meta_values(pydicom.dcmread(handle, stop_before_pixels=True, force=force), handle.tell())


def _with_meta_values(ds: Dataset, pixel_start: int) -> _RawHeader:
    meta = getattr(ds, "file_meta", None)
    transfer_syntax = str(meta.get("TransferSyntaxUID", "")) if meta is not None else ""
    sop_class = str(meta.get("MediaStorageSOPClassUID", "")) if meta is not None else ""
    if not transfer_syntax:  # no meta group: the encoding pydicom found is the transfer syntax
        transfer_syntax = _encoding_transfer_syntax(ds)
    return _RawHeader(ds, pixel_start, transfer_syntax, sop_class)


def _encoding_transfer_syntax(ds: Dataset) -> str:
    """The native transfer syntax of the encoding a dataset was read with ("" when unknown)."""
    encoding = getattr(ds, "original_encoding", None)  # pydicom 3
    implicit, little = encoding if encoding is not None else (ds.is_implicit_VR, ds.is_little_endian)
    if implicit is None or little is None:
        return ""
    if implicit:
        return str(ImplicitVRLittleEndian) if little else ""
    return str(ExplicitVRLittleEndian if little else ExplicitVRBigEndian)


def _read_native_part10(data: bytes, buffer: io.BytesIO) -> Optional[_RawHeader]:
    """The header of a Part 10 file (``data``, the bytes in ``buffer``) with a native transfer syntax, or None.

    dcmread spends about a quarter of its time around the dataset: converting the meta group,
    probing for a command set. For the usual file (a well-formed explicit little-endian meta group
    and a native transfer syntax) the meta group's two needed values are taken from their bytes
    and the dataset is read by pydicom's own ``read_dataset`` (which also notices a dataset
    whose VR encoding contradicts the transfer syntax). Anything unusual returns None.
    """
    meta: Dict[int, bytes] = {}
    position = 132  # preamble and "DICM", checked by _sniff
    while position + 8 <= len(data):
        group, element = struct.unpack_from("<HH", data, position)
        if group != 0x0002:
            break
        vr = data[position + 4 : position + 6]
        if not (vr.isalpha() and vr.isupper()):
            return None  # an implicit VR meta group (not conformant): dcmread copes
        if vr in _LONG_LENGTH_VRS:
            (length,) = struct.unpack_from("<I", data, position + 8)
            value_start = position + 12
        else:
            (length,) = struct.unpack_from("<H", data, position + 6)
            value_start = position + 8
        if length == 0xFFFFFFFF or value_start + length > len(data):
            return None
        meta[element] = data[value_start : value_start + length]
        position = value_start + length
    transfer_syntax = meta.get(0x0010, b"").decode("ascii", errors="replace").strip(" \x00")
    encoding = NATIVE_TRANSFER_SYNTAXES.get(transfer_syntax)
    if encoding is None or not meta:
        return None
    implicit, byte_order = encoding
    buffer.seek(position)
    ds = read_dataset(buffer, implicit, byte_order == "<", stop_when=_at_pixel_data)
    sop_class = meta.get(0x0002, b"").decode("ascii", errors="replace").strip(" \x00")
    return _RawHeader(ds, buffer.tell(), transfer_syntax, sop_class)


def _at_pixel_data(tag: int, vr: Any, length: int) -> bool:
    return tag in PIXEL_DATA_TAGS


def read_slice_header(path: PathLike, text_cache: Optional[Dict[Tuple[int, bytes], str]] = None) -> SliceHeader:
    """The header of one DICOM image file.

    ``text_cache`` (shared by the files of one scan) saves decoding the same names again.

    Raises :class:`NotDicomError` (not DICOM), :class:`NoImageError` (DICOM without an image) or
    :class:`DicomReadError` (DICOM that cannot be read), each naming the file.
    """
    path = Path(path)
    with open(path, "rb") as handle:
        file_size = os.fstat(handle.fileno()).st_size
        is_part10 = _sniff(handle)
        try:
            raw_header = _read_dataset(handle, file_size, force=not is_part10)
        except Exception as error:  # pydicom raises many types on corrupt input
            if not is_part10:
                raise NotDicomError("not a DICOM file") from None
            raise DicomReadError(f"{path}: unreadable DICOM header: {error}") from None
        ds, pixel_start = raw_header.dataset, raw_header.pixel_start
        transfer_syntax, sop_class = raw_header.transfer_syntax, raw_header.sop_class
        ds.filename = str(path)  # messages (SUV) name the file
        if sop_class == DICOMDIR_SOP_CLASS or "DirectoryRecordSequence" in ds:
            raise NoImageError("DICOMDIR (a directory of other files, not an image)")
        has_image = "Rows" in ds and "Columns" in ds
        if not has_image:
            if not is_part10 and "SOPInstanceUID" not in ds:
                raise NotDicomError("not a DICOM file")
            if sop_class and UID(sop_class).name.endswith("Image Storage"):
                raise DicomReadError(
                    f"{path}: a {UID(sop_class).name} file without Rows, Columns or pixel data; "
                    "the file is truncated or corrupt"
                )
            modality = str(ds.get("Modality", "")).strip() or "unknown modality"
            raise NoImageError(f"DICOM without an image ({modality})")
        # A deflated file is read through an inflating stream, so the position means nothing there.
        if transfer_syntax != str(DeflatedExplicitVRLittleEndian) and pixel_start >= file_size:
            raise DicomReadError(
                f"{path}: has image attributes (Rows, Columns) but no pixel data; the file may be truncated"
            )
        handle.seek(pixel_start)
        try:
            offset, length = _pixel_data_location(handle, transfer_syntax, file_size, path)
        except DicomReadError as error:  # cut short: say which series it leaves incomplete
            uids = (str(ds.get(keyword, "")).strip() for keyword in ("SeriesInstanceUID", "SOPInstanceUID"))
            raise DicomReadError(str(error), *uids) from None
    try:
        return _header_from_dataset(
            raw_header, path, is_part10, offset, length, {} if text_cache is None else text_cache
        )
    except (ValueError, TypeError, OverflowError) as error:
        raise DicomReadError(f"{path}: {error}") from None


def _header_from_dataset(
    raw_header: _RawHeader,
    path: Path,
    part10: bool,
    offset: Optional[int],
    length: int,
    text_cache: Dict[Tuple[int, bytes], str],
) -> SliceHeader:
    ds = raw_header.dataset
    values = _HeaderValues(ds, text_cache)
    required = {}
    for keyword in ("SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"):
        required[keyword] = values.ascii(keyword)
        if not required[keyword]:
            raise ValueError(f"{keyword} ({_tag_text(keyword)}) is missing")
    modality = values.ascii("Modality").upper()
    slope = values.number("RescaleSlope")
    intercept = values.number("RescaleIntercept")
    bits_allocated = values.unsigned_short("BitsAllocated") or 16
    sop_class = raw_header.sop_class or values.ascii("SOPClassUID")
    return SliceHeader(
        path=path,
        sop_instance_uid=required["SOPInstanceUID"],
        study_uid=required["StudyInstanceUID"],
        series_uid=required["SeriesInstanceUID"],
        modality=modality,
        frame_of_reference_uid=values.ascii("FrameOfReferenceUID"),
        patient_id=values.text("PatientID"),
        patient_name=values.text("PatientName"),
        study_date=values.ascii("StudyDate"),
        study_description=values.text("StudyDescription"),
        series_description=values.text("SeriesDescription"),
        series_number=values.integer("SeriesNumber"),
        instance_number=values.integer("InstanceNumber"),
        rows=values.unsigned_short("Rows") or 0,
        columns=values.unsigned_short("Columns") or 0,
        pixel_spacing=values.numbers("PixelSpacing", 2),  # type: ignore[arg-type]
        orientation=values.numbers("ImageOrientationPatient", 6),
        position=values.numbers("ImagePositionPatient", 3),  # type: ignore[arg-type]
        slice_thickness=values.number("SliceThickness"),
        spacing_between_slices=values.number("SpacingBetweenSlices"),
        number_of_frames=values.integer("NumberOfFrames") or 1,
        samples_per_pixel=values.unsigned_short("SamplesPerPixel") or 1,
        bits_allocated=bits_allocated,
        bits_stored=values.unsigned_short("BitsStored") or bits_allocated,
        pixel_representation=values.unsigned_short("PixelRepresentation") or 0,
        # Absent rescale attributes mean identity (stored value = output value), as every reader takes it.
        rescale_slope=1.0 if slope is None else slope,
        rescale_intercept=0.0 if intercept is None else intercept,
        transfer_syntax=raw_header.transfer_syntax,
        pixel_data_offset=offset,
        pixel_data_length=length if offset is not None else None,
        # PET for its SUV attributes, Enhanced CT for its functional groups (where its frames lie).
        dataset=ds if modality == "PT" or sop_class in ENHANCED_CT_SOP_CLASSES else None,
        part10=part10,
        sop_class_uid=sop_class,
        image_type=_upper_values(values.ascii("ImageType")),
        corrected_image=_upper_values(values.ascii("CorrectedImage")),
    )


def _upper_values(text: str) -> Tuple[str, ...]:
    return tuple(part.strip().upper() for part in text.split("\\")) if text else ()


def read_image_headers(path: PathLike, text_cache: Optional[Dict[Tuple[int, bytes], str]] = None) -> List[SliceHeader]:
    """The slices one DICOM image file holds: itself, or each frame of an Enhanced CT.

    Raises what :func:`read_slice_header` raises; a frame without its position, orientation or
    pixel spacing is a :class:`DicomReadError` naming the file and the frame.
    """
    header = read_slice_header(path, text_cache)
    if header.sop_class_uid not in ENHANCED_CT_SOP_CLASSES:
        return [header]  # a classic slice, or a multi-frame kind the series reader refuses by name
    try:
        return frame_headers(header)
    except ValueError as error:
        raise DicomReadError(f"{header.path}: {error}", header.series_uid, header.sop_instance_uid) from None


def _first_item(dataset: Optional[Dataset], keyword: str) -> Optional[Dataset]:
    sequence = None if dataset is None else dataset.get(keyword)
    return sequence[0] if sequence else None


def _item_numbers(item: Optional[Dataset], keyword: str, count: int) -> Optional[Tuple[float, ...]]:
    value = None if item is None else item.get(keyword)
    if value is None or value == "":
        return None
    values = tuple(float(v) for v in (value if isinstance(value, (list, tuple, MultiValue)) else [value]))
    if len(values) != count:
        raise ValueError(f"{keyword} ({_tag_text(keyword)}) has {len(values)} values, {count} expected")
    return values


def frame_headers(header: SliceHeader) -> List[SliceHeader]:
    """One slice header per frame of a multi-frame file (``header.dataset`` holds its functional groups).

    Each attribute comes from the frame's PerFrameFunctionalGroupsSequence item, else from the
    SharedFunctionalGroupsSequence, else from the top level: ImagePositionPatient (Plane Position),
    ImageOrientationPatient (Plane Orientation), PixelSpacing, SliceThickness and
    SpacingBetweenSlices (Pixel Measures), RescaleSlope/Intercept (Pixel Value Transformation).
    Native pixel data are located frame by frame (frames are stored one after the other).
    """
    ds = header.dataset
    if ds is None:
        raise ValueError("the header of the multi-frame file was not kept")
    shared = _first_item(ds, "SharedFunctionalGroupsSequence")
    per_frame = ds.get("PerFrameFunctionalGroupsSequence") or []
    if len(per_frame) != header.number_of_frames:
        raise ValueError(
            f"NumberOfFrames is {header.number_of_frames} but the PerFrameFunctionalGroupsSequence (5200,9230) "
            f"has {len(per_frame)} items"
        )
    frame_bytes = header.rows * header.columns * header.samples_per_pixel * header.bits_allocated // 8
    frames = []
    for number, item in enumerate(per_frame):

        def group(keyword: str, item: Dataset = item) -> Optional[Dataset]:
            return _first_item(item, keyword) or _first_item(shared, keyword)

        position = _item_numbers(group("PlanePositionSequence"), "ImagePositionPatient", 3) or header.position
        orientation = (
            _item_numbers(group("PlaneOrientationSequence"), "ImageOrientationPatient", 6) or header.orientation
        )
        if position is None or orientation is None:
            missing = "ImagePositionPatient (Plane Position)" if position is None else "ImageOrientationPatient"
            raise ValueError(f"frame {number + 1} has no {missing} in its functional groups")
        measures = group("PixelMeasuresSequence")
        transform = group("PixelValueTransformationSequence")
        slope = _item_numbers(transform, "RescaleSlope", 1)
        intercept = _item_numbers(transform, "RescaleIntercept", 1)
        thickness = _item_numbers(measures, "SliceThickness", 1)
        between = _item_numbers(measures, "SpacingBetweenSlices", 1)
        frames.append(
            dataclasses.replace(
                header,
                frame=number if header.number_of_frames > 1 else None,  # one frame: the file is the slice
                number_of_frames=1,
                position=position,  # type: ignore[arg-type]
                orientation=orientation,
                pixel_spacing=_item_numbers(measures, "PixelSpacing", 2) or header.pixel_spacing,  # type: ignore[arg-type]
                slice_thickness=thickness[0] if thickness else header.slice_thickness,
                spacing_between_slices=between[0] if between else header.spacing_between_slices,
                rescale_slope=slope[0] if slope else header.rescale_slope,
                rescale_intercept=intercept[0] if intercept else header.rescale_intercept,
                pixel_data_offset=None
                if header.pixel_data_offset is None
                else header.pixel_data_offset + number * frame_bytes,
                # A pixel data element cut short leaves its last frames short (refused when read).
                pixel_data_length=None
                if header.pixel_data_offset is None
                else max(0, min(frame_bytes, (header.pixel_data_length or 0) - number * frame_bytes)),
                dataset=None,
            )
        )
    return frames


# --------------------------------------------------------------------------- scanning


def check_cancel(cancel: Optional[CancelCallback]) -> None:
    """Raise :class:`Cancelled` when the caller's cancel callback says so."""
    if cancel is not None and cancel():
        raise Cancelled("cancelled by the user")


def scan_paths(
    paths: Sequence[PathLike],
    progress: Optional[ProgressCallback] = None,
    cancel: Optional[CancelCallback] = None,
) -> ScanResult:
    """Index every DICOM image under ``paths`` into studies and series, and pair PET with CT.

    ``progress(fraction, message)`` is called as files are read; ``cancel()`` returning True
    stops the scan with :class:`Cancelled`. Both run on the calling thread.

    Headers are read one after the other on purpose: pydicom's parsing is Python that holds
    the GIL (threads do not help), and a process pool measured 2x slower on 600 files
    (start-up and pickling the headers back cost more than the parsing).
    """
    files, problems = list_files(paths)
    skipped: List[FileProblem] = []
    headers: List[SliceHeader] = []
    text_cache: Dict[Tuple[int, bytes], str] = {}
    for number, path in enumerate(files):
        check_cancel(cancel)
        if progress is not None and number % 25 == 0:
            progress(number / max(1, len(files)), f"reading DICOM headers ({number}/{len(files)})")
        try:
            headers.extend(read_image_headers(path, text_cache))
        except (NotDicomError, NoImageError) as error:
            skipped.append(FileProblem(path, str(error)))
        except DicomReadError as error:
            problems.append(FileProblem(path, str(error), error.series_uid, error.sop_instance_uid))
        except OSError as error:
            problems.append(FileProblem(path, f"{path}: cannot be read: {error}"))
    if progress is not None:
        progress(1.0, f"read {len(files)} files")
    studies = group_headers(headers)
    return ScanResult(
        studies=studies,
        pairings=pair_pet_with_ct(studies),
        files_found=len(files),
        skipped=skipped,
        problems=problems,
    )


def _series_sort_key(series: IndexedSeries) -> Tuple[Any, ...]:
    number = series.series_number
    return (number is None, number if number is not None else 0, series.modality, series.series_uid)


def group_headers(headers: Iterable[SliceHeader]) -> List[IndexedStudy]:
    """Studies (by StudyInstanceUID) of series (by SeriesInstanceUID and Modality), copies of an instance kept once."""
    by_series: Dict[Tuple[str, str, str], IndexedSeries] = {}
    seen: Dict[Tuple[str, str, str], Dict[Tuple[str, int], SliceHeader]] = {}
    for header in sorted(headers, key=lambda h: str(h.path)):
        key = (header.study_uid, header.series_uid, header.modality)
        series = by_series.get(key)
        if series is None:
            series = by_series[key] = IndexedSeries(header.study_uid, header.series_uid, header.modality, [])
            seen[key] = {}
        kept = seen[key].get(header.instance_key)
        if kept is not None and _same_slice(kept, header):
            series.duplicates.append((header.path, kept.path))
            continue
        if kept is not None:
            series.uid_clashes.append((header.path, kept.path))
        else:
            seen[key][header.instance_key] = header
        series.headers.append(header)

    for series in by_series.values():
        _set_aside_projections(series)
    studies: Dict[str, IndexedStudy] = {}
    for series in by_series.values():
        study = studies.get(series.study_uid)
        if study is None:
            first = series.first
            study = studies[series.study_uid] = IndexedStudy(
                study_uid=series.study_uid,
                patient_id=first.patient_id,
                patient_name=first.patient_name,
                study_date=first.study_date,
                description=first.study_description,
                series=[],
            )
        study.series.append(series)
    for study in studies.values():
        study.series.sort(key=_series_sort_key)
    return sorted(studies.values(), key=lambda s: (s.patient_id, s.study_date, s.study_uid))


def _same_slice(first: SliceHeader, second: SliceHeader) -> bool:
    """Whether two files of one SOPInstanceUID are copies of one slice (same place, same size)."""
    if (first.rows, first.columns) != (second.rows, second.columns):
        return False
    if first.position is None or second.position is None:
        return first.position == second.position
    return bool(np.allclose(first.position, second.position, atol=1e-3))


def _set_aside_projections(series: IndexedSeries) -> None:
    """Keep a localizer (scout, topogram) stored among a series' axial slices out of its volume."""
    projections = [header for header in series.headers if header.is_projection]
    if not projections or len(projections) == len(series.headers):
        return
    series.headers = [header for header in series.headers if not header.is_projection]
    for header in projections:
        kind = "/".join(value for value in header.image_type[2:] if value in PROJECTION_IMAGE_TYPES)
        series.set_aside.append((header.path, f"a {kind} image (ImageType {'/'.join(header.image_type)})"))


# --------------------------------------------------------------------------- pairing


@dataclass
class _Candidate:
    ct: IndexedSeries
    same_frame: bool
    overlap_mm: float
    slices: int

    def sort_key(self) -> Tuple[Any, ...]:
        number = self.ct.series_number
        return (
            not self.same_frame,
            -round(self.overlap_mm, 3),
            -self.slices,
            number is None,
            number if number is not None else 0,
            self.ct.series_uid,
        )

    def describe(self) -> str:
        frame = "same FrameOfReferenceUID" if self.same_frame else "different FrameOfReferenceUID"
        return f"{self.ct.label}: {frame}, z-overlap {self.overlap_mm:.1f} mm, {self.slices} slices"


def _overlap_mm(pet: IndexedSeries, ct: IndexedSeries) -> float:
    normal = pet.first.normal
    pet_extent, ct_extent = pet.z_extent(normal), ct.z_extent(normal)
    if pet_extent is None or ct_extent is None:
        return 0.0
    return max(0.0, min(pet_extent[1], ct_extent[1]) - max(pet_extent[0], ct_extent[0]))


def _ct_volumes(study: IndexedStudy) -> List[IndexedSeries]:
    return [series for series in study.series_of("CT") if series.volume_problem() is None]


def _ct_candidates(pet: IndexedSeries, studies: Sequence[IndexedStudy]) -> Tuple[List[IndexedSeries], str]:
    """CT series the PET may be paired with, and where they come from."""
    own = [s for study in studies if study.study_uid == pet.study_uid for s in _ct_volumes(study)]
    if own:
        return own, "same study"
    frame = pet.frame_of_reference_uid
    if not frame:
        return [], ""
    others = [
        s
        for study in studies
        if study.study_uid != pet.study_uid and study.patient_id == pet.first.patient_id
        for s in _ct_volumes(study)
        if s.frame_of_reference_uid == frame
    ]
    return others, "another study of the patient with the same FrameOfReferenceUID"


def pet_preference_key(pet: IndexedSeries) -> Tuple[Any, ...]:
    """Sort key of a study's PT series, the preferred first (:data:`PET_PREFERENCE`)."""
    number = pet.series_number
    return (
        pet.volume_problem() is not None,
        not pet.attenuation_corrected,
        pet.derived,
        -len(pet.headers),
        number is None,
        number if number is not None else 0,
        pet.series_uid,
    )


def _pet_summary(pet: IndexedSeries) -> str:
    corrected = "attenuation-corrected" if pet.attenuation_corrected else "not attenuation-corrected"
    kind = "DERIVED" if pet.derived else "ORIGINAL"
    return f"{pet.label}: {corrected}, {kind}, {len(pet.headers)} slices"


def pair_pet_with_ct(studies: Sequence[IndexedStudy]) -> List[SeriesPairing[IndexedSeries]]:
    """One pairing per PT series, the study's preferred one first (see the module docstring)."""
    pairings = []
    for study in studies:
        ranked = sorted(study.series_of("PT"), key=pet_preference_key)
        study_pairings = [_pair_one(pet, studies) for pet in ranked]
        chosen = next((p for p in study_pairings if p.ct is not None), None)
        for pairing in study_pairings:
            pairing.preferred = pairing is chosen
            if not pairing.preferred and chosen is not None:
                pairing.not_preferred_because = (
                    f"the study's {_pet_summary(chosen.pet)} comes first by the rule [{PET_PREFERENCE}]; "
                    f"this one: {_pet_summary(pairing.pet)}"
                )
        pairings.extend(study_pairings)
    return pairings


def _pair_one(pet: IndexedSeries, studies: Sequence[IndexedStudy]) -> SeriesPairing[IndexedSeries]:
    problem = pet.volume_problem()
    if problem is not None:
        return SeriesPairing(pet.study_uid, pet, None, f"not paired: {problem}")
    cts, origin = _ct_candidates(pet, studies)
    if not cts:
        return SeriesPairing(
            pet.study_uid, pet, None, "no CT series in the study (nor one sharing the PET's FrameOfReferenceUID)"
        )
    candidates = [
        _Candidate(
            ct=ct,
            same_frame=bool(pet.frame_of_reference_uid) and ct.frame_of_reference_uid == pet.frame_of_reference_uid,
            overlap_mm=_overlap_mm(pet, ct),
            slices=len(ct.headers),
        )
        for ct in cts
    ]
    candidates.sort(key=_Candidate.sort_key)
    chosen = candidates[0]
    if len(candidates) == 1:
        rule = f"the only CT series ({origin}): {chosen.describe()}"
    else:
        rule = f"chosen among {len(candidates)} CT series ({origin}) by the rule [{PAIRING_RULE}]: {chosen.describe()}"
    warnings = []
    if not chosen.same_frame:
        warnings.append(
            f"{pet.label} and {chosen.ct.label} have different FrameOfReferenceUIDs: "
            "their patient coordinates may not match (not registered)"
        )
    coverage, error = _ct_coverage(pet, chosen, warnings)
    return SeriesPairing(
        study_uid=pet.study_uid,
        pet=pet,
        ct=chosen.ct,
        rule=rule,
        alternatives=[candidate.describe() for candidate in candidates[1:]],
        warnings=warnings,
        ct_coverage=coverage,
        error=error,
    )


def _ct_coverage(pet: IndexedSeries, chosen: _Candidate, warnings: List[str]) -> Tuple[Optional[float], Optional[str]]:
    """(fraction of the PET's extent along its normal that the CT covers, why the pair is refused or None);
    a warning is added under :data:`CT_COVERAGE_WARN_FRACTION`."""
    extent = pet.z_extent(pet.first.normal)
    if extent is None or extent[1] <= extent[0]:
        return None, None  # no extent to cover (positions missing: the geometry refuses the PET)
    length = extent[1] - extent[0]
    coverage = min(1.0, chosen.overlap_mm / length)
    covered = (
        f"{chosen.ct.label} covers {chosen.overlap_mm:.1f} mm of the {length:.1f} mm of {pet.label} along the "
        f"PET's slice axis ({coverage:.0%})"
    )
    if coverage < CT_COVERAGE_REFUSE_FRACTION:
        return coverage, (
            f"{covered}, under {CT_COVERAGE_REFUSE_FRACTION:.0%}: most of the PET would be read with air as its CT; "
            "give the CT series that covers the PET"
        )
    if coverage < CT_COVERAGE_WARN_FRACTION:
        warnings.append(
            f"{covered}, under {CT_COVERAGE_WARN_FRACTION:.0%}: the rest of the PET is read with air (-1024 HU) as "
            "its CT, where lesions may be missed or measured too small"
        )
    return coverage, None
