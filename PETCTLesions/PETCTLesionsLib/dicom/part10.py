"""Read one DICOM file's header into a :class:`SliceHeader`: what indexing, geometry and decoding need.

The header is read once per file (no pixels). For uncompressed (native) transfer syntaxes the
reader also records where the pixel data start in the file, so that :mod:`.series` can read them
with one seek and one read.

The fast path (:func:`read_slice_header`): native Part 10 files skip dcmread's file-level work:
the meta group's transfer syntax and SOP class are taken from their bytes and the dataset is read
with pydicom's ``read_dataset`` from the file's first 64 KiB in memory; anything else goes through
``dcmread``. The values the index needs (UIDs, codes, numbers) are parsed from the raw element
bytes (:class:`_HeaderValues`); text that depends on the character set is decoded by pydicom.
The reference path (:func:`read_slice_header_reference`) is the plain library call: ``dcmread``
of the file with ``stop_before_pixels``, every value converted by pydicom. Both give the same
headers (``Testing/Python/test_speedups.py``). Measured (``Testing/Benchmarks/benchmark_speedups.py``,
2-core machine, load average 1.2, 2026-12-06, median of 3): the 600 files of a whole-body study
(300 CT, 300 PET) in 0.45 s against 1.21 s, 2.7x (2.9x, 0.29 s against 0.85 s, in another run),
about 1 ms saved per file; measured apart, the raw values save about 60% of it, the meta group
read from its bytes about 40%.

Errors name the file: :class:`NotDicomError` (not DICOM), :class:`NoImageError` (DICOM without
an image: DICOMDIR, SR, RTSTRUCT...), :class:`DicomReadError` (DICOM that cannot be read).
"""

from __future__ import annotations

import io
import os
import struct
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Tuple, Union

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

from ..errors import InputError

PathLike = Union[str, "os.PathLike[str]"]

DICOMDIR_SOP_CLASS = "1.2.840.10008.1.3.10"
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
_LONG_LENGTH_VRS = (b"OB", b"OW", b"OF", b"OD", b"OL", b"OV", b"SQ", b"UC", b"UN", b"UR", b"UT")


class NotDicomError(InputError):
    """The file is not a DICOM file."""


class DicomReadError(InputError):
    """A DICOM file whose header cannot be read or is unusable; the message names the file.

    ``series_uid`` and ``sop_instance_uid`` name the series and instance when the header could
    be read (a file cut short in its pixel data): a load of that series must not go on without
    the instance (unless an intact copy of it was found).
    """

    def __init__(self, message: str, series_uid: str = "", sop_instance_uid: str = "") -> None:
        super().__init__(message)
        self.series_uid = series_uid
        self.sop_instance_uid = sop_instance_uid


class NoImageError(InputError):
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


# --------------------------------------------------------------------------- reading


def _sniff(handle: Any) -> bool:
    """True for a DICOM Part 10 file; False for a bare dataset worth trying; NotDicomError otherwise."""
    head = handle.read(132)
    if len(head) == 132 and head[128:132] == b"DICM":
        return True
    # A dataset without preamble and meta group starts with a group 0008 (or 0002) element.
    if len(head) >= 8 and head[:2] in (b"\x08\x00", b"\x02\x00"):
        return False
    raise NotDicomError("not a DICOM file")


class _FirstValue:
    """``number`` and ``integer`` from a ``numbers`` method (shared by both value readers)."""

    def numbers(self, keyword: str, count: Optional[int] = None) -> Optional[Tuple[float, ...]]:
        raise NotImplementedError

    def number(self, keyword: str) -> Optional[float]:
        values = self.numbers(keyword)
        return None if values is None else values[0]

    def integer(self, keyword: str) -> Optional[int]:
        value = self.number(keyword)
        return None if value is None else int(value)


class _HeaderValues(_FirstValue):
    """Values of one header, parsed from the raw element bytes (the fast path).

    pydicom converts and validates an element on first access, which costs more than reading
    the whole file (measured: 0.85 ms per file for the ~25 elements used here, against 0.5 ms
    for dcmread). The values the index needs are UIDs, codes and numbers, simple to parse
    from their bytes. Text that depends on the character set (names, descriptions) goes through
    pydicom. :class:`_PydicomValues` is the reference: every value converted by pydicom.
    """

    def __init__(self, ds: Dataset):
        self.ds = ds
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
            raise ValueError(f"{keyword} ({tag_text(keyword)}) is {text!r}, which is not numeric") from None
        if count is not None and len(values) != count:
            raise ValueError(f"{keyword} ({tag_text(keyword)}) has {len(values)} values, {count} expected")
        return values

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
        # Decoded by pydicom every time: a cache of decoded text shared by a scan's files saved 0.075 s
        # on 600 files (1.27x on the header scan, median of 3, 2-core machine, 2026-12-06): too little
        # for its code, so it was removed (issue 20).
        return str(self.ds[keyword_tag(keyword)].value).strip()


class _PydicomValues(_FirstValue):
    """The reference for :class:`_HeaderValues`: every value as pydicom converts it (``Dataset.get``),
    in the forms :class:`_HeaderValues` gives them."""

    def __init__(self, ds: Dataset):
        self.ds = ds

    def _value(self, keyword: str) -> Any:
        """The converted value; None when absent or empty."""
        value = self.ds.get(keyword)
        if value is None or (isinstance(value, (str, bytes, list, tuple, MultiValue)) and len(value) == 0):
            return None
        return value

    def ascii(self, keyword: str) -> str:
        value = self._value(keyword)
        if value is None:
            return ""
        if isinstance(value, (list, tuple, MultiValue)):
            return "\\".join(str(v) for v in value)
        return str(value).strip(" \x00")

    def numbers(self, keyword: str, count: Optional[int] = None) -> Optional[Tuple[float, ...]]:
        value = self._value(keyword)
        if value is None:
            return None
        values = tuple(float(v) for v in (value if isinstance(value, (list, tuple, MultiValue)) else [value]))
        if count is not None and len(values) != count:
            raise ValueError(f"{keyword} ({tag_text(keyword)}) has {len(values)} values, {count} expected")
        return values

    def unsigned_short(self, keyword: str) -> Optional[int]:
        value = self._value(keyword)
        if value is None:
            return None
        return int(value[0] if isinstance(value, (list, tuple, MultiValue)) else value)

    def text(self, keyword: str) -> str:
        value = self._value(keyword)
        return "" if value is None else str(value).strip()


_Values = Union[_HeaderValues, _PydicomValues]


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


def tag_text(keyword: str) -> str:
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


def _read_dataset_with_dcmread(handle: Any, file_size: int, force: bool) -> _RawHeader:
    """The reference for :func:`_read_dataset`: ``dcmread`` of the file, as it is."""
    handle.seek(0)
    with warnings.catch_warnings():
        if force:  # as _read_dataset: a file without the DICM marker is probably not DICOM
            warnings.simplefilter("ignore")
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


def read_slice_header(path: PathLike) -> SliceHeader:
    """The header of one DICOM image file, read by the fast path (see the module docstring).

    Raises :class:`NotDicomError` (not DICOM), :class:`NoImageError` (DICOM without an image) or
    :class:`DicomReadError` (DICOM that cannot be read), each naming the file.
    """
    return _read_slice_header(Path(path), _read_dataset, _HeaderValues)


def read_slice_header_reference(path: PathLike) -> SliceHeader:
    """The same header read the plain library way: ``pydicom.dcmread(stop_before_pixels=True)`` of the
    file and every value converted by pydicom. The fast path must give what this gives
    (``Testing/Python/test_speedups.py``) and is timed against it (``Testing/Benchmarks/benchmark_speedups.py``)."""
    return _read_slice_header(Path(path), _read_dataset_with_dcmread, _PydicomValues)


def _read_slice_header(
    path: Path,
    read_dataset: Callable[[Any, int, bool], _RawHeader],
    values: Callable[[Dataset], _Values],
) -> SliceHeader:
    """The rules of :func:`read_slice_header`, with the dataset read by ``read_dataset`` and its values
    taken by ``values``."""
    with open(path, "rb") as handle:
        file_size = os.fstat(handle.fileno()).st_size
        is_part10 = _sniff(handle)
        try:
            raw_header = read_dataset(handle, file_size, not is_part10)
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
        return _header_from_dataset(raw_header, path, is_part10, offset, length, values(raw_header.dataset))
    except (ValueError, TypeError, OverflowError) as error:
        raise DicomReadError(f"{path}: {error}") from None


def _header_from_dataset(
    raw_header: _RawHeader,
    path: Path,
    part10: bool,
    offset: Optional[int],
    length: int,
    values: _Values,
) -> SliceHeader:
    ds = raw_header.dataset
    required = {}
    for keyword in ("SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"):
        required[keyword] = values.ascii(keyword)
        if not required[keyword]:
            raise ValueError(f"{keyword} ({tag_text(keyword)}) is missing")
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
