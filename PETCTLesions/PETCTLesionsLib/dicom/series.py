"""Build one DICOM series (its slice headers from :mod:`.index`) as a SimpleITK image.

Geometry (:func:`series_geometry`):

- Slices are sorted by their position along the slice normal, dot(ImagePositionPatient,
  row x column), never by file name or InstanceNumber. The image's k axis is that normal,
  so the direction is [row, column, normal] (right-handed) and the origin is the
  ImagePositionPatient of the lowest slice. Any orientation works, oblique included; every
  slice must share ImageOrientationPatient (within 1e-4), Rows, Columns and PixelSpacing,
  else the series is refused with the names of two disagreeing files.
- Two different instances at the same position are refused (naming both files); identical
  copies of one instance were already dropped by the index.
- Slices must lie on a line along the normal (in-plane drift at most 0.01 mm or 1% of the
  pixel spacing); a sheared stack (gantry tilt) is refused rather than shown distorted.
- Slice spacing: steps within 1% (or 0.01 mm) of the median step are uniform; the spacing
  is then (last - first) / (n - 1). A step of 1.5 times the median or more is long, and each
  long step is judged on its own:

  - a run of three or more consecutive long steps equal to each other (within 1%) is a second
    spacing (stacks of 1.25 and 2.5 mm, 2.5 and 5, 1 and 5): irregular spacing, below;
  - any other long step that is a whole multiple k >= 2 of the median (within 10%) in an
    otherwise regular series (90% of the other steps uniform) is a gap: k - 1 slices are
    missing and the slices left lie on the series' lattice. Such a series is refused with
    "k slices missing between z=a and z=b" (z = position along the normal, mm; the files on
    either side named), unless the caller passes ``allow_gaps=True``;
  - in a series that is not regular (jittered positions) or off the multiples, a long step is
    irregular spacing, unless it is over 2.5 times the median (or the second spacing, when
    there is one): jitter of half a slice either way makes steps of up to twice the nominal
    spacing, so a longer step is refused as a gap there.

  Irregular spacing is resampled with a warning that gives the steps measured ("slice spacing
  varies from a to b mm (median m mm; the series mixes slices m and c mm apart)", the second
  part when runs of another spacing were found). Resampling cuts the span from the first to the
  last slice into round(span / median) equal steps and interpolates each output slice linearly
  between its two neighbouring slices along the normal (across allowed gaps too, with a warning).
- A single slice takes its spacing along the normal from SpacingBetweenSlices, else
  SliceThickness (else 1 mm, with a warning: one slice has no extent to get wrong).
- Enhanced CT frames arrive as slice headers of their own (:func:`.index.read_image_headers`)
  and are sorted and checked like files. Other multi-frame images (Enhanced PET, whose SUV
  needs per-frame timing, and the like) are refused as not supported yet.

Pixels (:func:`read_series_image`):

- Each slice is rescaled with its own RescaleSlope/RescaleIntercept (PET slopes vary per
  slice, by orders of magnitude: vendors fit each slice's maximum to the stored range) and,
  when ``slice_scale`` is given (SUV factors), multiplied by its factor. A slope that is not
  a positive finite number, or an intercept that is not finite, is refused with the geometry
  (:func:`series_geometry`), naming the file: a slope of 0 would silently zero the slice.
- Native pixel data shorter than Rows x Columns x BitsAllocated / 8 are refused by
  :func:`check_series_decodable` from the lengths the header scan recorded (no pixel read),
  so ``info`` says so as the load would.
- Output type: int16 when every slope is 1, every intercept a whole number and the values
  fit (CT in HU); otherwise float32. When an int16 candidate turns out not to fit, the
  image is converted to float32 and loading goes on.
- Uncompressed transfer syntaxes are read with one seek and one read per file at the offset
  the header scan recorded (np.frombuffer; no pydicom pixel handling). JPEG (lossless and
  lossy), JPEG-LS, JPEG 2000 and RLE are decoded by the GDCM inside SimpleITK, as Slicer's
  own DICOM reader does: pydicom decodes JPEG Lossless, the commonest compression of CT,
  only with pylibjpeg or the gdcm package, which neither Slicer nor this module installs.
  GDCM decodes a multi-frame file whole, once per read (:mod:`.frame_cache`).
  Any other transfer syntax is decoded by pydicom with whatever handler is installed; one
  that nothing installed decodes is refused before anything is read, naming the file, the
  syntax and the packages that would decode it.
- Slices are decoded by a thread pool (file reads and numpy release the GIL) into slabs of
  a few slices (8 MiB) that are pasted into the preallocated SimpleITK image while the next
  slab is being decoded, so the peak memory is the final image plus two slabs. Progress and
  cancel callbacks run on the calling thread, once per slab.
"""

from __future__ import annotations

import math
import os
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian

from ..errors import InputError
from ..geometry import Grid
from ..jobs import CancelCallback, ProgressCallback, check_cancel, report
from .frame_cache import DecodedFrames, decode_frame
from .index import IndexedSeries, PathLike, scan_paths
from .part10 import NATIVE_TRANSFER_SYNTAXES, SliceHeader

ORIENTATION_TOLERANCE = 1e-4
SAME_POSITION_TOLERANCE_MM = 1e-3
UNIFORM_RELATIVE_TOLERANCE = 0.01
UNIFORM_ABSOLUTE_TOLERANCE_MM = 0.01
GAP_FACTOR = 1.5  # a step this many times the median or longer is long: slices missing, or another spacing
# A long step is missing slices when it is a whole multiple of the median step within this fraction
# of it: the slices left lie on the regular lattice of the series. Scanners write positions far
# closer (0.01 mm); jitter is further off.
LATTICE_TOLERANCE = 0.1
# ... and when the series around it is regular: this fraction of the other steps uniform. Real
# series are (all steps, to 0.01 mm); one odd step (a bed position joined a little off) must not
# turn a missing slice elsewhere into irregular spacing, but jittered positions are far below this.
REGULAR_FRACTION = 0.9
# This many consecutive long steps equal to each other are a second spacing (stacks of 1.25 and
# 2.5 mm, 2.5 and 5, 1 and 5: scanners reconstruct parts of a range finer), not a slice missing at
# every step. Two equal gaps in a row (every other slice missing over three slices) stay gaps.
SECOND_SPACING_RUN = 3
# Irregular steps up to 2.5 times the median (or the second spacing) are irregular spacing:
# positions jittered by up to half a slice either way give steps of up to twice the nominal spacing,
# and the median of such steps may lie below the nominal one. A longer step leaves room for missing
# slices.
IRREGULAR_STEP_FACTOR = 2.5
SHEAR_ABSOLUTE_TOLERANCE_MM = 0.01
SHEAR_RELATIVE_TOLERANCE = 0.01
INTERPOLATION_SNAP = 1e-6  # weights closer than this to 0 or 1 take the slice itself
SLAB_BYTES = 8 * 1024 * 1024
INT16_RANGE = (-32768, 32767)
# The transfer syntaxes GDCM's codecs (in every SimpleITK build, and in Slicer) decode. Spelt out:
# pydicom 2.x (Slicer's) names .4.70 "JPEGLossless", the name pydicom 3 gives .4.57.
SIMPLEITK_DECODED_TRANSFER_SYNTAXES = frozenset(
    (
        "1.2.840.10008.1.2.4.50",  # JPEG Baseline (Process 1)
        "1.2.840.10008.1.2.4.51",  # JPEG Extended (Process 2 & 4)
        "1.2.840.10008.1.2.4.57",  # JPEG Lossless, Non-Hierarchical (Process 14)
        "1.2.840.10008.1.2.4.70",  # JPEG Lossless, Process 14, Selection Value 1: what PACS write most
        "1.2.840.10008.1.2.4.80",  # JPEG-LS Lossless
        "1.2.840.10008.1.2.4.81",  # JPEG-LS Lossy (Near-Lossless)
        "1.2.840.10008.1.2.4.90",  # JPEG 2000 (Lossless Only)
        "1.2.840.10008.1.2.4.91",  # JPEG 2000
        "1.2.840.10008.1.2.5",  # RLE Lossless
    )
)
# High-Throughput JPEG 2000, by pydicom 3's names: pydicom 2.4 (Slicer 5.6-5.10) neither names nor
# decodes them; pydicom 3 decodes them with pylibjpeg-openjpeg.
HTJ2K_TRANSFER_SYNTAXES = {
    "1.2.840.10008.1.2.4.201": "High-Throughput JPEG 2000 Image Compression (Lossless Only)",
    "1.2.840.10008.1.2.4.202": "High-Throughput JPEG 2000 with RPCL Options Image Compression (Lossless Only)",
    "1.2.840.10008.1.2.4.203": "High-Throughput JPEG 2000 Image Compression",
}
STORED_VALUE_TOLERANCE = 1e-3  # how far GDCM's value, rescaled back, may lie from a whole stored value


class DicomSeriesError(InputError):
    """A series that cannot be built into an image; the message names the series or file."""


class MissingSlicesError(DicomSeriesError):
    """Slices are missing from the series (refused unless gaps are allowed)."""


class UnsupportedPixelDataError(DicomSeriesError):
    """Pixel data in a form no installed handler decodes (or not supported yet)."""


@dataclass
class SliceGap:
    """Where slices are missing: between two consecutive slices, positions along the normal (mm)."""

    below: float
    above: float
    missing: int
    below_file: Path
    above_file: Path


@dataclass
class SeriesGeometry:
    """Where the slices of a series are and the grid of the image built from them."""

    label: str
    headers: List[SliceHeader]  # sorted along the slice normal
    positions: np.ndarray  # position of each header along the normal (mm), ascending
    grid: Grid
    resampled: bool  # True when output slices are interpolated (varying spacing or allowed gaps)
    gaps: List[SliceGap] = field(default_factory=list)
    warnings: List[str] = field(default_factory=list)

    def slice_plan(self) -> List[Tuple[int, int, float]]:
        """For each output slice k: (a, b, w) meaning (1 - w) * slice a + w * slice b."""
        count = self.grid.size[2]
        if not self.resampled:
            return [(k, k, 0.0) for k in range(count)]
        step = self.grid.spacing[2]
        plan = []
        last = len(self.positions) - 1
        for k in range(count):
            target = self.positions[0] + k * step
            below = int(np.clip(np.searchsorted(self.positions, target, side="right") - 1, 0, max(0, last - 1)))
            above = min(below + 1, last)
            span = self.positions[above] - self.positions[below]
            weight = float(np.clip((target - self.positions[below]) / span, 0.0, 1.0)) if span > 0 else 0.0
            if weight < INTERPOLATION_SNAP:
                plan.append((below, below, 0.0))
            elif weight > 1.0 - INTERPOLATION_SNAP:
                plan.append((above, above, 0.0))
            else:
                plan.append((below, above, weight))
        return plan


# --------------------------------------------------------------------------- geometry


def _headers_and_label(
    series: Union[IndexedSeries, Sequence[SliceHeader]], label: Optional[str]
) -> Tuple[List[SliceHeader], str]:
    if isinstance(series, IndexedSeries):
        return list(series.headers), label or series.label
    headers = list(series)
    if not headers:
        raise DicomSeriesError(f"{label or 'series'}: no slices")
    first = headers[0]
    return headers, label or f"{first.modality} series '{first.series_description}' ({first.series_uid})"


def _require_same(
    headers: Sequence[SliceHeader], label: str, what: str, value: Callable[[SliceHeader], object]
) -> None:
    reference = value(headers[0])
    for header in headers[1:]:
        if value(header) != reference:
            raise DicomSeriesError(
                f"{label}: slices differ in {what}: {headers[0].where} has {reference}, {header.where} has "
                f"{value(header)}; one image cannot hold them"
            )


def _check_slices(headers: Sequence[SliceHeader], label: str) -> None:
    for header in headers:
        if header.number_of_frames > 1:
            raise UnsupportedPixelDataError(
                f"{header.path}: multi-frame (enhanced) DICOM with {header.number_of_frames} frames is not "
                "supported yet; export the series as one file per slice"
            )
        if header.samples_per_pixel != 1:
            raise UnsupportedPixelDataError(
                f"{header.path}: {header.samples_per_pixel} samples per pixel (colour); "
                "only greyscale images are supported"
            )
        if header.rows < 1 or header.columns < 1:
            raise DicomSeriesError(f"{header.path}: Rows x Columns is {header.rows} x {header.columns}; no image")
        _check_rescale(header)
        for what, value in (
            ("ImageOrientationPatient (0020,0037)", header.orientation),
            ("ImagePositionPatient (0020,0032)", header.position),
            ("PixelSpacing (0028,0030)", header.pixel_spacing),
        ):
            if value is None:
                raise DicomSeriesError(f"{header.where}: {what} is missing; the slice cannot be placed in space")
    _require_same(headers, label, "size (Rows x Columns)", lambda h: (h.rows, h.columns))
    _require_same(headers, label, "PixelSpacing", lambda h: tuple(round(v, 6) for v in h.pixel_spacing or ()))
    reference = np.asarray(headers[0].orientation)
    for header in headers[1:]:
        if np.max(np.abs(np.asarray(header.orientation) - reference)) > ORIENTATION_TOLERANCE:
            raise DicomSeriesError(
                f"{label}: slices have different orientations: {headers[0].where} has ImageOrientationPatient "
                f"{list(headers[0].orientation or ())}, {header.where} has {list(header.orientation or ())}; "
                "a series must have one orientation"
            )


def _check_rescale(header: SliceHeader) -> None:
    """A slice's stored values become real values only through a positive, finite slope and a finite
    intercept: a slope of 0 zeroes the slice, a negative one inverts it, and neither is ever written
    on purpose (vendors vary the slope per slice, by orders of magnitude, but never to 0)."""
    slope, intercept = header.rescale_slope, header.rescale_intercept
    if not (math.isfinite(slope) and slope > 0):
        raise DicomSeriesError(
            f"{header.where}: RescaleSlope (0028,1053) is {slope:g}; stored values become real values only "
            "through a positive, finite slope, so the slice's values cannot be known: correct or replace the file"
        )
    if not math.isfinite(intercept):
        raise DicomSeriesError(
            f"{header.where}: RescaleIntercept (0028,1052) is {intercept:g}, not a finite number; the slice's "
            "values cannot be known: correct or replace the file"
        )


def _axes(header: SliceHeader) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    orientation = np.asarray(header.orientation, dtype=float)
    row, column = orientation[:3], orientation[3:]
    if abs(np.linalg.norm(row) - 1) > 1e-3 or abs(np.linalg.norm(column) - 1) > 1e-3 or abs(row @ column) > 1e-3:
        raise DicomSeriesError(
            f"{header.path}: ImageOrientationPatient {list(orientation)} is not two orthogonal unit vectors"
        )
    row, column = row / np.linalg.norm(row), column / np.linalg.norm(column)
    normal = np.cross(row, column)
    return row, column, normal / np.linalg.norm(normal)


def series_geometry(
    series: Union[IndexedSeries, Sequence[SliceHeader]], allow_gaps: bool = False, label: Optional[str] = None
) -> SeriesGeometry:
    """Sort the slices along their normal and work out the image grid (see the module docstring).

    Raises :class:`DicomSeriesError` (or :class:`MissingSlicesError`) with a message naming the
    series and the files at fault.
    """
    headers, label = _headers_and_label(series, label)
    _check_slices(headers, label)
    row, column, normal = _axes(headers[0])
    positions = np.array([np.dot(h.position, normal) for h in headers])
    order = np.argsort(positions, kind="stable")
    headers = [headers[i] for i in order]
    positions = positions[order]
    _check_distinct_positions(headers, positions, label)
    _check_stacking(headers, normal, label)

    warnings: List[str] = []
    gaps: List[SliceGap] = []
    resampled = False
    if len(headers) == 1:
        slice_spacing, count = _single_slice_spacing(headers[0], warnings), 1
    else:
        slice_spacing, count, gaps, resampled = _slice_spacing(headers, positions, allow_gaps, label, warnings)
    row_spacing, column_spacing = headers[0].pixel_spacing  # type: ignore[misc]
    grid = Grid(
        size=(headers[0].columns, headers[0].rows, count),
        spacing=(float(column_spacing), float(row_spacing), float(slice_spacing)),
        origin=tuple(float(v) for v in headers[0].position),  # type: ignore[arg-type, union-attr]
        direction=tuple(np.column_stack([row, column, normal]).ravel().tolist()),
    )
    return SeriesGeometry(label, headers, positions, grid, resampled, gaps, warnings)


def _check_distinct_positions(headers: Sequence[SliceHeader], positions: np.ndarray, label: str) -> None:
    for index in np.nonzero(np.diff(positions) < SAME_POSITION_TOLERANCE_MM)[0]:
        first, second = headers[index], headers[index + 1]
        raise DicomSeriesError(
            f"{label}: two different slices at the same position ({positions[index]:.3f} mm along the normal): "
            f"{first.where} (SOPInstanceUID {first.sop_instance_uid}) and {second.where} "
            f"(SOPInstanceUID {second.sop_instance_uid}); the series mixes two acquisitions"
        )


def _check_stacking(headers: Sequence[SliceHeader], normal: np.ndarray, label: str) -> None:
    origin = np.asarray(headers[0].position)
    tolerance = max(SHEAR_ABSOLUTE_TOLERANCE_MM, SHEAR_RELATIVE_TOLERANCE * min(headers[0].pixel_spacing or (1.0,)))
    for header in headers[1:]:
        offset = np.asarray(header.position) - origin
        drift = float(np.linalg.norm(offset - np.dot(offset, normal) * normal))
        if drift > tolerance:
            raise DicomSeriesError(
                f"{label}: slices are not stacked along their normal: {header.where} is shifted {drift:.3f} mm "
                f"in-plane from {headers[0].where} (gantry tilt or sheared series); this is not supported"
            )


def _single_slice_spacing(header: SliceHeader, warnings: List[str]) -> float:
    for value in (header.spacing_between_slices, header.slice_thickness):
        if value is not None and value > 0:
            return float(value)
    warnings.append(
        f"{header.path}: a single slice without SpacingBetweenSlices or SliceThickness; its spacing along "
        "the normal is set to 1 mm"
    )
    return 1.0


def _slice_spacing(
    headers: Sequence[SliceHeader], positions: np.ndarray, allow_gaps: bool, label: str, warnings: List[str]
) -> Tuple[float, int, List[SliceGap], bool]:
    """(spacing, slice count, gaps, resampled) of a stack of two or more slices (see the module docstring)."""
    steps = np.diff(positions)
    median = float(np.median(steps))
    span = float(positions[-1] - positions[0])
    tolerance = max(UNIFORM_RELATIVE_TOLERANCE * median, UNIFORM_ABSOLUTE_TOLERANCE_MM)
    gap_steps, reference = _gap_steps(steps, median, tolerance)
    gaps = [
        SliceGap(
            below=float(positions[i]),
            above=float(positions[i + 1]),
            missing=max(1, int(round(steps[i] / reference)) - 1),
            below_file=headers[i].path,
            above_file=headers[i + 1].path,
        )
        for i in np.nonzero(gap_steps)[0]
    ]
    if gaps:
        description = "; ".join(
            f"{gap.missing} slice{'s' if gap.missing > 1 else ''} missing between z={gap.below:.2f} and "
            f"z={gap.above:.2f} mm (between {gap.below_file.name} and {gap.above_file.name}; step "
            f"{gap.above - gap.below:.3f} mm where the series has {reference:.3f} mm)"
            for gap in gaps
        )
        if not allow_gaps:
            raise MissingSlicesError(
                f"{label}: {description}; find the missing files (a gap is not filled in: interpolating across "
                "it would make up the missing slices)"
            )
        warnings.append(f"{label}: {description}; interpolated across the gap")
    if not gaps and float(np.max(np.abs(steps - median))) <= tolerance:
        return span / (len(positions) - 1), len(positions), gaps, False
    count = int(round(span / median)) + 1
    spacing = span / (count - 1)
    warnings.append(
        f"{label}: slice spacing varies from {steps.min():.3f} to {steps.max():.3f} mm (median {median:.3f} mm"
        f"{_mixed_spacings(steps, median, tolerance)}); resampled onto {count} slices {spacing:.4f} mm apart by "
        "linear interpolation along the slice normal"
    )
    return spacing, count, gaps, True


def _gap_steps(steps: np.ndarray, median: float, tolerance: float) -> Tuple[np.ndarray, float]:
    """Which steps are gaps (slices missing), and the spacing they are measured against: the median,
    or the longest second spacing (see the module docstring)."""
    long = steps >= GAP_FACTOR * median
    second_spacing = _in_equal_runs(steps, long)
    multiples = np.round(steps / median)
    on_lattice = (
        long
        & ~second_spacing
        & (multiples >= 2)
        & (np.abs(steps - multiples * median) <= max(LATTICE_TOLERANCE * median, UNIFORM_ABSOLUTE_TOLERANCE_MM))
    )
    others = steps[~on_lattice]  # never empty: the median step is not long
    regular = float(np.mean(np.abs(others - median) <= tolerance)) >= REGULAR_FRACTION
    reference = max(median, float(steps[second_spacing].max())) if second_spacing.any() else median
    too_long = long & ~second_spacing & (steps > IRREGULAR_STEP_FACTOR * reference)
    return (on_lattice & regular) | too_long, reference


def _equal_runs(steps: np.ndarray, candidate: np.ndarray) -> List[Tuple[int, int]]:
    """(start, stop) of each run of :data:`SECOND_SPACING_RUN` or more consecutive candidate steps
    equal to the run's first step (within 1% of it, or 0.01 mm)."""
    runs = []
    start = 0
    while start < len(steps):
        stop = start + 1
        if candidate[start]:
            same = max(UNIFORM_RELATIVE_TOLERANCE * steps[start], UNIFORM_ABSOLUTE_TOLERANCE_MM)
            while stop < len(steps) and candidate[stop] and abs(steps[stop] - steps[start]) <= same:
                stop += 1
            if stop - start >= SECOND_SPACING_RUN:
                runs.append((start, stop))
        start = stop
    return runs


def _in_equal_runs(steps: np.ndarray, candidate: np.ndarray) -> np.ndarray:
    """Which steps belong to a run of :func:`_equal_runs`."""
    in_run = np.zeros(len(steps), dtype=bool)
    for start, stop in _equal_runs(steps, candidate):
        in_run[start:stop] = True
    return in_run


def _mixed_spacings(steps: np.ndarray, median: float, tolerance: float) -> str:
    """'; the series mixes slices a and b mm apart' when runs of steps other than the median were found."""
    runs = _equal_runs(steps, np.abs(steps - median) > tolerance)
    if not runs:
        return ""
    spacings = sorted({f"{median:.3f}"} | {f"{np.mean(steps[start:stop]):.3f}" for start, stop in runs}, key=float)
    return f"; the series mixes slices {', '.join(spacings[:-1])} and {spacings[-1]} mm apart"


# --------------------------------------------------------------------------- pixels


def _transfer_syntax_name(uid: str) -> str:
    if not uid:
        return "no transfer syntax (file without meta information)"
    return f"{HTJ2K_TRANSFER_SYNTAXES.get(uid, UID(uid).name)} ({uid})"


def check_decodable(header: SliceHeader) -> None:
    """Raise :class:`UnsupportedPixelDataError` when nothing installed decodes this file's pixel data."""
    if (
        header.pixel_data_offset is not None
        or not header.transfer_syntax
        or header.transfer_syntax in SIMPLEITK_DECODED_TRANSFER_SYNTAXES
    ):
        return
    name = _transfer_syntax_name(header.transfer_syntax)
    no_decoder = f"{header.path}: pixel data in transfer syntax {name}: pydicom has no decoder for it"
    try:
        from pydicom.pixels import get_decoder
    except ImportError:  # pydicom 2.x (Slicer 5.6-5.10 bundle 2.4): its pixel data handlers
        _check_pydicom_2_handlers(header, name, no_decoder)
        return
    try:
        decoder = get_decoder(UID(header.transfer_syntax))
    except NotImplementedError:
        raise UnsupportedPixelDataError(no_decoder) from None
    if not decoder.is_available:
        raise UnsupportedPixelDataError(
            f"{header.path}: pixel data are compressed as {name} and no installed package decodes them; "
            f"install one of: {'; '.join(decoder.missing_dependencies)}"
        )


def _check_pydicom_2_handlers(header: SliceHeader, name: str, no_decoder: str) -> None:
    """pydicom 2.x lists every handler whether or not its package is installed: one that supports
    the syntax decodes it only when ``is_available()`` (e.g. gdcm_handler needs the gdcm package)."""
    uid = UID(header.transfer_syntax)
    supporting = [handler for handler in pydicom.config.pixel_data_handlers if handler.supports_transfer_syntax(uid)]
    if any(handler.is_available() for handler in supporting):
        return
    if not supporting:
        if header.transfer_syntax in HTJ2K_TRANSFER_SYNTAXES:
            no_decoder += f" (pydicom {pydicom.__version__}); pydicom 3 with pylibjpeg-openjpeg decodes it"
        raise UnsupportedPixelDataError(no_decoder)
    packages = [
        ", ".join(package for module, (_, package) in handler.DEPENDENCIES.items() if module != "numpy")
        or handler.HANDLER_NAME
        for handler in supporting
    ]
    raise UnsupportedPixelDataError(
        f"{header.path}: pixel data are compressed as {name} and no installed package decodes them; "
        f"install one of: {'; '.join(packages)}"
    )


def check_series_decodable(headers: Sequence[SliceHeader]) -> None:
    """:func:`check_decodable` for a series (one file per transfer syntax is enough), and every native
    slice's pixel data long enough for its Rows x Columns (from the header scan: nothing is read)."""
    for header in {h.transfer_syntax: h for h in headers}.values():
        check_decodable(header)
    for header in headers:
        if header.pixel_data_offset is not None:
            _check_native_length(header)


def _native_bytes(header: SliceHeader) -> int:
    return header.rows * header.columns * _native_dtype(header).itemsize


def _check_native_length(header: SliceHeader) -> None:
    needed = _native_bytes(header)
    if (header.pixel_data_length or 0) < needed:
        raise DicomSeriesError(
            f"{header.where}: the pixel data hold {header.pixel_data_length} bytes; {header.rows} x "
            f"{header.columns} pixels of {header.bits_allocated} bits need {needed}: the file is damaged"
        )


def stored_value_range(header: SliceHeader) -> Tuple[int, int]:
    """The smallest and largest stored value BitsStored and PixelRepresentation allow."""
    bits = header.bits_stored if 0 < header.bits_stored <= header.bits_allocated else header.bits_allocated
    if header.pixel_representation == 1:
        return -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    return 0, (1 << bits) - 1


def _check_one_rescale_per_gdcm_file(headers: Sequence[SliceHeader]) -> None:
    """GDCM rescales every frame of a file alike, so a compressed multi-frame file whose frames
    have rescales of their own cannot be read back through it (pydicom would need a decoder)."""
    first: Dict[Path, SliceHeader] = {}
    for header in headers:
        if header.frame is None or header.transfer_syntax not in SIMPLEITK_DECODED_TRANSFER_SYNTAXES:
            continue
        other = first.setdefault(header.path, header)
        if (header.rescale_slope, header.rescale_intercept) != (other.rescale_slope, other.rescale_intercept):
            raise UnsupportedPixelDataError(
                f"{header.path}: compressed frames with rescales of their own (frame {other.frame + 1}: slope "
                f"{other.rescale_slope:g}, intercept {other.rescale_intercept:g}; frame {header.frame + 1}: "
                f"{header.rescale_slope:g}, {header.rescale_intercept:g}) are not supported yet"
            )


def _stored_dtype(header: SliceHeader, byte_order: str) -> np.dtype:
    if header.bits_allocated not in (8, 16, 32):
        raise UnsupportedPixelDataError(f"{header.path}: BitsAllocated {header.bits_allocated} is not supported")
    kind = "i" if header.pixel_representation == 1 else "u"
    return np.dtype(f"{byte_order}{kind}{header.bits_allocated // 8}")


def _clear_unused_bits(stored: np.ndarray, header: SliceHeader) -> None:
    """Keep BitsStored bits: mask unsigned values, sign-extend signed ones (as pydicom does)."""
    unused = header.bits_allocated - header.bits_stored
    if unused <= 0 or header.bits_stored <= 0:
        return
    if header.pixel_representation == 1:
        np.left_shift(stored, unused, out=stored)
        np.right_shift(stored, unused, out=stored)
    else:
        np.bitwise_and(stored, (1 << header.bits_stored) - 1, out=stored)


def _native_dtype(header: SliceHeader) -> np.dtype:
    return _stored_dtype(header, NATIVE_TRANSFER_SYNTAXES[header.transfer_syntax][1])


def _read_native(header: SliceHeader, into: Optional[np.ndarray] = None) -> np.ndarray:
    """Stored values of a native slice; read straight into ``into``'s memory when given.

    ``into`` must be a C-contiguous Rows x Columns array of the stored item size; the result is
    then a view of its memory with the stored dtype. Reading into the output slice saves
    allocating (and page-faulting) a fresh buffer for every file.
    """
    dtype = _native_dtype(header)
    _check_native_length(header)
    needed = _native_bytes(header)
    buffer = bytearray(needed) if into is None else memoryview(into).cast("B")
    with open(header.path, "rb") as handle:
        handle.seek(header.pixel_data_offset)  # type: ignore[arg-type]
        read = handle.readinto(buffer)
    if read != needed:
        raise DicomSeriesError(f"{header.where}: the file is truncated ({read} of {needed} pixel bytes)")
    stored = np.frombuffer(buffer, dtype=dtype).reshape(header.rows, header.columns)
    _clear_unused_bits(stored, header)
    return stored


def _read_with_pydicom(header: SliceHeader) -> np.ndarray:
    if header.frame is None:
        return pydicom.dcmread(header.path, force=not header.transfer_syntax).pixel_array
    # pydicom 3 decodes only the frame asked for, but from the file as stored: a deflated one is not inflated.
    if header.transfer_syntax != DeflatedExplicitVRLittleEndian:
        try:
            from pydicom.pixels import pixel_array
        except ImportError:  # pydicom 2.x (Slicer 5.6-5.10 bundle 2.4)
            pass
        else:
            return pixel_array(str(header.path), index=header.frame)
    return pydicom.dcmread(header.path).pixel_array[header.frame]  # decodes every frame


def _decode_with_gdcm(path: Path) -> sitk.Image:
    """Every frame of a file, as GDCM hands them over (rescaled)."""
    reader = sitk.ImageFileReader()
    reader.SetImageIO("GDCMImageIO")
    reader.SetFileName(str(path))
    return reader.Execute()


def _read_with_simpleitk(header: SliceHeader, frames: Optional[DecodedFrames]) -> np.ndarray:
    """Stored values decoded by GDCM, which hands them over rescaled: the rescale is undone here.

    A frame of a multi-frame file comes from ``frames`` (the read's decoded file), or without it
    from a decode of its whole file (the reference path, :func:`.frame_cache.decode_frame`)."""
    if header.frame is None:
        values = sitk.GetArrayFromImage(_decode_with_gdcm(header.path))
        values = values[0] if values.ndim == 3 else values
    elif frames is not None:
        values = frames.frame(header.path, header.frame)
    else:
        values = decode_frame(_decode_with_gdcm, header.path, header.frame)
    if header.rescale_slope == 1.0 and float(header.rescale_intercept).is_integer():
        return values.astype(np.int64) - int(header.rescale_intercept)
    stored = (values.astype(np.float64) - header.rescale_intercept) / header.rescale_slope
    whole = np.round(stored)
    if stored.size and float(np.max(np.abs(stored - whole))) > STORED_VALUE_TOLERANCE:
        raise ValueError(
            f"GDCM's values are not whole stored values times RescaleSlope {header.rescale_slope} plus "
            f"RescaleIntercept {header.rescale_intercept}"
        )
    return whole.astype(np.int64)


def _read_compressed(header: SliceHeader, frames: Optional[DecodedFrames]) -> np.ndarray:
    check_decodable(header)
    by_gdcm = header.transfer_syntax in SIMPLEITK_DECODED_TRANSFER_SYNTAXES
    try:
        stored = _read_with_simpleitk(header, frames) if by_gdcm else _read_with_pydicom(header)
    except Exception as error:  # decoders raise many types on corrupt data
        raise DicomSeriesError(
            f"{header.path}: cannot decode the pixel data ({_transfer_syntax_name(header.transfer_syntax)}): {error}"
        ) from None
    if stored.shape != (header.rows, header.columns):
        raise DicomSeriesError(
            f"{header.path}: decoded pixel data have shape {stored.shape}, {header.rows} x {header.columns} expected"
        )
    return stored


def decode_stored_slice(header: SliceHeader, frames: Optional[DecodedFrames] = None) -> np.ndarray:
    """Stored pixel values of one slice (Rows x Columns), before rescaling.

    ``frames``: the compressed multi-frame file decoded last in this read, kept for its next frames
    (:mod:`.frame_cache`); without it a frame is decoded from its whole file."""
    if header.pixel_data_offset is not None:
        return _read_native(header)
    return _read_compressed(header, frames)


def _fits_int16(stored: np.ndarray, intercept: int) -> bool:
    return int(stored.min()) + intercept >= INT16_RANGE[0] and int(stored.max()) + intercept <= INT16_RANGE[1]


def _reads_in_place_as_int16(header: SliceHeader) -> bool:
    """True when the stored values are native 16-bit integers in this machine's byte order."""
    if header.pixel_data_offset is None or header.bits_allocated != 16:
        return False
    return _native_dtype(header).isnative


def _default_workers() -> int:
    return max(2, min(8, os.cpu_count() or 1))


class _SliceDecoder:
    """Fills output slices from source slices: rescale, scale factor, interpolation."""

    def __init__(self, geometry: SeriesGeometry, slice_scale: Optional[np.ndarray]):
        self.headers = geometry.headers
        self.plan = geometry.slice_plan()
        self.scale = None if slice_scale is None else np.asarray(slice_scale, dtype=np.float64)
        self.frames = DecodedFrames(_decode_with_gdcm)  # this read's: freed with it, shared by its threads

    def integer_candidate(self) -> bool:
        """True when int16 may hold the output exactly (checked per slice while decoding)."""
        return (
            self.scale is None
            and all(a == b for a, b, _ in self.plan)
            and all(h.rescale_slope == 1.0 and float(h.rescale_intercept).is_integer() for h in self.headers)
        )

    def rescaled(self, index: int) -> Tuple[np.ndarray, float, float]:
        """(stored values, multiplier, offset) of source slice ``index``: value = stored * m + o."""
        header = self.headers[index]
        factor = 1.0 if self.scale is None else float(self.scale[index])
        stored = decode_stored_slice(header, self.frames)
        return stored, header.rescale_slope * factor, header.rescale_intercept * factor

    def fill_int16(self, k: int, out: np.ndarray) -> bool:
        """Write slice k as int16; False when its values do not fit int16."""
        index = self.plan[k][0]
        header = self.headers[index]
        if _reads_in_place_as_int16(header):
            return self._fill_int16_in_place(header, out)
        stored, _, offset = self.rescaled(index)
        intercept = int(offset)
        if not _fits_int16(stored, intercept):
            return False
        np.add(stored, np.int32(intercept), out=out, casting="unsafe")
        return True

    @staticmethod
    def _fill_int16_in_place(header: SliceHeader, out: np.ndarray) -> bool:
        """Read 16-bit native values into ``out`` and add the intercept there (no copy)."""
        stored = _read_native(header, into=out)  # a view of out's memory with the stored dtype
        intercept = int(header.rescale_intercept)
        if not _fits_int16(stored, intercept):
            return False
        # Adding in 16-bit arithmetic wraps modulo 2**16; the result is exact because it fits int16
        # (checked above), whatever the stored signedness and however large the intercept.
        np.add(out, np.int16((intercept + 32768) % 65536 - 32768), out=out)
        return True

    def fill_float32(self, k: int, out: np.ndarray) -> bool:
        below, above, weight = self.plan[k]
        stored, multiplier, offset = self.rescaled(below)
        if weight == 0.0:
            if offset == 0.0:
                np.multiply(stored, multiplier, out=out, casting="unsafe")
            else:
                out[...] = stored * multiplier + offset
            return True
        upper, upper_multiplier, upper_offset = self.rescaled(above)
        low = stored * multiplier + offset
        high = upper * upper_multiplier + upper_offset
        out[...] = (1.0 - weight) * low + weight * high
        return True


class _SlabFiller:
    """Decodes slabs of output slices in a thread pool into two alternating buffers per type,
    so that the next slab is decoded while the caller pastes the previous one."""

    def __init__(self, pool: ThreadPoolExecutor, decoder: _SliceDecoder, grid: Grid, as_int16: bool):
        self.pool = pool
        self.decoder = decoder
        self.columns, self.rows, self.count = grid.size
        self.depth = max(1, min(self.count, SLAB_BYTES // (self.rows * self.columns * 4)))
        self.as_int16 = as_int16
        self.buffers: Dict[Tuple[type, int], np.ndarray] = {}

    @property
    def slab_count(self) -> int:
        return -(-self.count // self.depth)

    def bounds(self, index: int) -> Tuple[int, int]:
        return index * self.depth, min(self.count, (index + 1) * self.depth)

    def submit(self, index: int) -> Tuple[np.ndarray, List[Future]]:
        """Start decoding slab ``index``; (its buffer, the futures: True when the slice fitted its type)."""
        start, stop = self.bounds(index)
        dtype = np.int16 if self.as_int16 else np.float32
        key = (dtype, index % 2)
        if key not in self.buffers:  # reused: fresh memory for every slab would cost page faults
            self.buffers[key] = np.empty((self.depth, self.rows, self.columns), dtype=dtype)
        slab = self.buffers[key][: stop - start]
        fill = self.decoder.fill_int16 if self.as_int16 else self.decoder.fill_float32
        return slab, [self.pool.submit(fill, k, slab[k - start]) for k in range(start, stop)]


def _all_fitted(futures: Sequence[Future]) -> bool:
    """Wait for every slice of a slab (all of them: the buffer is reused) and say whether all fitted."""
    fitted = [future.result() for future in futures]
    return all(fitted)


def read_series_image(
    geometry: SeriesGeometry,
    slice_scale: Optional[Sequence[float]] = None,
    integer_output: bool = True,
    workers: Optional[int] = None,
    progress: Optional[ProgressCallback] = None,
    cancel: Optional[CancelCallback] = None,
) -> sitk.Image:
    """The series as a SimpleITK image on ``geometry.grid`` (see the module docstring).

    ``slice_scale[n]`` multiplies the rescaled values of ``geometry.headers[n]`` (SUV factors).
    ``integer_output=False`` forces float32. ``progress(fraction, message)`` and ``cancel()`` are
    called from the calling thread only, once per slab of slices; ``cancel()`` returning True
    stops with :class:`~PETCTLesionsLib.errors.Cancelled` (nothing returned).
    """
    if slice_scale is not None and len(slice_scale) != len(geometry.headers):
        raise ValueError(f"{len(slice_scale)} slice factors given for {len(geometry.headers)} slices")
    check_series_decodable(geometry.headers)
    _check_one_rescale_per_gdcm_file(geometry.headers)
    decoder = _SliceDecoder(geometry, None if slice_scale is None else np.asarray(slice_scale))
    pool = ThreadPoolExecutor(max_workers=workers or _default_workers())
    try:
        filler = _SlabFiller(pool, decoder, geometry.grid, integer_output and decoder.integer_candidate())
        pending = filler.submit(0)
        image = sitk.Image(list(geometry.grid.size), sitk.sitkInt16 if filler.as_int16 else sitk.sitkFloat32)
        geometry.grid.apply_to(image)
        index = 0
        while index < filler.slab_count:
            check_cancel(cancel)
            upcoming = filler.submit(index + 1) if index + 1 < filler.slab_count else None
            slab, futures = pending
            if not _all_fitted(futures):  # values beyond int16: float32 from here on, this slab again
                if upcoming is not None:
                    _all_fitted(upcoming[1])  # its buffer must not be written while it is reused
                image = sitk.Cast(image, sitk.sitkFloat32)
                filler.as_int16 = False
                pending = filler.submit(index)
                continue
            start, stop = filler.bounds(index)
            image[:, :, start:stop] = sitk.GetImageFromArray(slab)
            report(progress, stop / filler.count, f"{geometry.label}: {stop}/{filler.count} slices")
            pending, index = upcoming, index + 1  # type: ignore[assignment]
    finally:
        # On an error or a cancel, queued slices are dropped and running ones finish before returning.
        pool.shutdown(wait=True, cancel_futures=True)
    return image


def load_series(
    paths: Sequence[PathLike],
    series_uid: Optional[str] = None,
    allow_gaps: bool = False,
    integer_output: bool = True,
) -> sitk.Image:
    """The one image series under ``paths`` (or the one with ``series_uid``) as a SimpleITK image."""
    scan = scan_paths(paths)
    if series_uid is not None:
        series = scan.find_series(series_uid)
    else:
        found = scan.series
        if len(found) != 1:
            names = ", ".join(s.label for s in found) or "none"
            raise DicomSeriesError(f"{len(found)} image series found under {list(map(str, paths))} ({names}); name one")
        series = found[0]
    return read_series_image(series_geometry(series, allow_gaps=allow_gaps), integer_output=integer_output)
