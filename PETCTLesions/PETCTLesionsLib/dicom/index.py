"""Find DICOM studies and series in files and folders.

:func:`scan_paths` accepts any mix of files and folders (any layout, any file names, several
studies mixed). It reads every file's header once (:mod:`.part10`) and groups the image files by
StudyInstanceUID, SeriesInstanceUID and Modality; folder and file names are never used. Files
that are not DICOM, and DICOM files without an image (DICOMDIR, SR, RTSTRUCT...), are skipped
and counted; DICOM files that cannot be read (truncated, corrupt) are reported by name.
Identical copies of one instance (same SOPInstanceUID) are kept once. An Enhanced (or Legacy
Converted Enhanced) CT holds the whole series in one multi-frame file: each frame becomes a
slice header of its own, placed and rescaled by its functional groups. A localizer (scout)
stored inside an axial series is set aside from it, with a note. Which CT goes with which PET
is :mod:`.pairing`'s rule, applied to the studies found here.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from ..errors import InputError
from ..jobs import CancelCallback, ProgressCallback, check_cancel, report
from .part10 import (
    ENHANCED_CT_SOP_CLASSES,
    PROJECTION_IMAGE_TYPES,
    DicomReadError,
    NoImageError,
    NotDicomError,
    PathLike,
    SliceHeader,
    read_slice_header,
    tag_text,
)

SECONDARY_CAPTURE_SOP_CLASS_PREFIX = "1.2.840.10008.5.1.4.1.1.7"  # and its multi-frame kinds .7.1-.7.4
SEGMENTATION_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"


# --------------------------------------------------------------------------- data


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
    """What the files under the scanned paths hold: studies of series, and the files left out."""

    studies: List[IndexedStudy]
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
        raise InputError(f"no series with SeriesInstanceUID {series_uid} was found")


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


# --------------------------------------------------------------------------- frames


def read_image_headers(path: PathLike) -> List[SliceHeader]:
    """The slices one DICOM image file holds: itself, or each frame of an Enhanced CT.

    Raises what :func:`read_slice_header` raises; a frame without its position, orientation or
    pixel spacing is a :class:`DicomReadError` naming the file and the frame.
    """
    header = read_slice_header(path)
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
        raise ValueError(f"{keyword} ({tag_text(keyword)}) has {len(values)} values, {count} expected")
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


def scan_paths(
    paths: Sequence[PathLike],
    progress: Optional[ProgressCallback] = None,
    cancel: Optional[CancelCallback] = None,
) -> ScanResult:
    """Index every DICOM image under ``paths`` into studies and series.

    ``progress(fraction, message)`` is called as files are read; ``cancel()`` returning True
    stops the scan with :class:`~PETCTLesionsLib.errors.Cancelled`. Both run on the calling thread. The PET/CT pairs of
    the studies found are :func:`.pairing.pair_pet_with_ct`'s.

    Headers are read one after the other on purpose: pydicom's parsing is Python that holds
    the GIL (threads do not help), and a process pool measured 2x slower on 600 files
    (start-up and pickling the headers back cost more than the parsing).
    """
    files, problems = list_files(paths)
    skipped: List[FileProblem] = []
    headers: List[SliceHeader] = []
    for number, path in enumerate(files):
        check_cancel(cancel)
        if progress is not None and number % 25 == 0:
            progress(number / max(1, len(files)), f"reading DICOM headers ({number}/{len(files)})")
        try:
            headers.extend(read_image_headers(path))
        except (NotDicomError, NoImageError) as error:
            skipped.append(FileProblem(path, str(error)))
        except DicomReadError as error:
            problems.append(FileProblem(path, str(error), error.series_uid, error.sop_instance_uid))
        except OSError as error:
            problems.append(FileProblem(path, f"{path}: cannot be read: {error}"))
    report(progress, 1.0, f"read {len(files)} files")
    return ScanResult(
        studies=group_headers(headers),
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
