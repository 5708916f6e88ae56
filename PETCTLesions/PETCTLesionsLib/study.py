"""Load a paired PET/CT study from DICOM files.

:func:`load_study` finds the studies under the given files or folders (:mod:`.dicom.index`),
takes the PET series asked for (or the only one), the CT paired with it (:mod:`.dicom.pairing`),
and builds the CT in HU and the PET in body-weight SUV (:mod:`.dicom.series`, :mod:`.dicom.suv`).
:func:`describe_scan` describes what a scan found (series geometry, PET/CT pairs) without
reading pixels; the ``info`` report (:mod:`.info`) is built on it. Everything that can
fail on the headers (geometry, SUV, a CT covering too little of the PET) is checked before
any pixel is read. So are SUVs no scan gives (:func:`check_suv_values`: more than the whole dose in one voxel
is refused, above :data:`suv.HIGH_SUV_WARNING` warned about): from each slice's header the
largest SUV its stored values allow is known, and only a slice where that passes the warning
level is decoded to see whether its values do.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk

from .dicom.index import IndexedSeries, PathLike, ScanResult, scan_paths
from .dicom.pairing import PET_PREFERENCE, SeriesPairing, pair_pet_with_ct
from .dicom.part10 import SliceHeader
from .dicom.series import (
    DicomSeriesError,
    MissingSlicesError,
    SeriesGeometry,
    check_series_decodable,
    decode_stored_slice,
    read_series_image,
    series_geometry,
    stored_value_range,
)
from .dicom.suv import HIGH_SUV_WARNING, MAX_WEIGHT_KG, SUVError, SUVResult, suv_bw_factors
from .errors import InputError
from .geometry import Grid, Vector3
from .jobs import CancelCallback, ProgressCallback, check_cancel, report, sub_progress
from .resampling import resample_ct_to_pet

__all__ = [
    "DicomStudy",
    "LoadedPet",
    "LoadedStudy",
    "PetCtPair",
    "SeriesInfo",
    "StudyLoadError",
    "check_suv_values",
    "describe_scan",
    "load_pet_suv",
    "load_study",
]


class StudyLoadError(InputError):
    """No loadable PET/CT pair (none found, several to choose from, no CT for the PET)."""


@dataclass
class SeriesInfo:
    """One series as found on disk: identity, files and the geometry of the image it gives."""

    series_uid: str
    modality: str
    description: str
    series_number: Optional[int]
    files: List[Path]
    size: Optional[Tuple[int, int, int]]  # (i, j, k); None when the geometry cannot be worked out
    spacing: Optional[Vector3]
    origin: Optional[Vector3]
    direction: Optional[Tuple[float, ...]]
    frame_of_reference_uid: str
    warnings: List[str] = field(default_factory=list)
    error: Optional[str] = None  # why the series cannot be loaded as it is
    # SOPInstanceUID of the file behind each image slice k (the link VOC annotations use);
    # empty when slices were interpolated and no file matches a slice exactly.
    slice_sop_instance_uids: List[str] = field(default_factory=list)
    # What a DICOM viewer numbers each image slice k by, for pictures and tables a reader finds the
    # slice with: the InstanceNumber of its file (empty when a slice has no file of its own, or the
    # files give no distinct numbers), or for the frames of one multi-frame file (Enhanced CT) the
    # frame number, from 1 (empty otherwise). Both empty: only the slice's position identifies it.
    slice_instance_numbers: List[int] = field(default_factory=list)
    slice_frame_numbers: List[int] = field(default_factory=list)

    @property
    def label(self) -> str:
        number = "?" if self.series_number is None else str(self.series_number)
        return f"{self.modality} series {number} '{self.description}'"

    @classmethod
    def from_series(cls, series: IndexedSeries, geometry: Optional[SeriesGeometry] = None) -> SeriesInfo:
        """Describe ``series``; the geometry is worked out from the headers unless given."""
        error = series.volume_problem()
        load_warnings = True
        if geometry is None and error is None:
            try:
                geometry = series_geometry(series)
            except MissingSlicesError as missing:
                error = str(missing)
                geometry = series_geometry(series, allow_gaps=True)  # still worth reporting the grid
                load_warnings = False  # how a load would fill the gap: none will, the error says why
            except DicomSeriesError as problem:
                error = str(problem)
            else:
                error = _undecodable(series)  # said now, not when a load is tried
        warnings = [
            f"{copy}: identical copy of {kept} (same SOPInstanceUID); ignored" for copy, kept in series.duplicates
        ]
        warnings.extend(
            f"{path}: the same SOPInstanceUID as {other}, but another slice (its position or size differs); both "
            "used, and no VOC file can be named after this series' slices"
            for path, other in series.uid_clashes
        )
        warnings.extend(
            f"{path}: {why}, stored in the series; kept out of its volume" for path, why in series.set_aside
        )
        grid = geometry.grid if geometry is not None else None
        if geometry is not None and load_warnings:
            warnings.extend(geometry.warnings)
        return cls(
            series_uid=series.series_uid,
            modality=series.modality,
            description=series.description,
            series_number=series.series_number,
            files=series.files,
            size=grid.size if grid else None,
            spacing=grid.spacing if grid else None,
            origin=grid.origin if grid else None,
            direction=grid.direction if grid else None,
            frame_of_reference_uid=series.frame_of_reference_uid,
            warnings=warnings,
            error=error,
            slice_sop_instance_uids=(
                [header.sop_instance_uid for header in geometry.headers]
                if geometry is not None
                and not geometry.resampled
                and all(h.frame is None for h in geometry.headers)
                and not series.uid_clashes
                else []  # VOC files are named after their slice's instance: a resampled or multi-frame CT has none
            ),
            slice_instance_numbers=_slice_instance_numbers(geometry),
            slice_frame_numbers=_slice_frame_numbers(geometry),
        )


def _slice_instance_numbers(geometry: Optional[SeriesGeometry]) -> List[int]:
    """InstanceNumber of each slice's own file, when every slice is a file with a number of its own."""
    if geometry is None or geometry.resampled or any(h.frame is not None for h in geometry.headers):
        return []
    numbers = [h.instance_number for h in geometry.headers]
    if any(n is None for n in numbers) or len(set(numbers)) != len(numbers):
        return []  # InstanceNumber is type 2 (may be empty); repeated numbers would name two slices alike
    return [int(n) for n in numbers if n is not None]


def _slice_frame_numbers(geometry: Optional[SeriesGeometry]) -> List[int]:
    """Frame number (from 1) of each slice, when every slice is a frame of one multi-frame file."""
    if geometry is None or geometry.resampled or any(h.frame is None for h in geometry.headers):
        return []
    if len({h.instance_key[0] for h in geometry.headers}) != 1:
        return []  # frames of several files: a frame number alone does not say which image
    return [h.frame + 1 for h in geometry.headers if h.frame is not None]


# A PET/CT pairing as the study report shows it: the scan's pairing over series summaries.
PetCtPair = SeriesPairing[SeriesInfo]


@dataclass
class DicomStudy:
    study_uid: str
    patient_id: str
    patient_name: str
    study_date: str
    description: str
    series: List[SeriesInfo]
    pairs: List[PetCtPair]


def _undecodable(series: IndexedSeries) -> Optional[str]:
    """Why the series' pixel data cannot be decoded here (a compression nothing installed reads), or None."""
    try:
        check_series_decodable(series.headers)
    except DicomSeriesError as problem:
        return str(problem)
    return None


def _key(series: IndexedSeries) -> Tuple[str, str]:
    return series.series_uid, series.modality


def describe_scan(scan: ScanResult) -> List[DicomStudy]:
    """Studies with their series (geometry worked out) and PET/CT pairs, from a scan."""
    infos = {_key(series): SeriesInfo.from_series(series) for series in scan.series}
    for series in scan.series:
        unreadable = _unreadable_text(scan, series)
        if unreadable:
            infos[_key(series)].error = unreadable
    pairings = pair_pet_with_ct(scan.studies)
    result = []
    for study in scan.studies:
        pairs = [
            pairing.with_series(lambda series: infos[_key(series)])
            for pairing in pairings
            if pairing.study_uid == study.study_uid
        ]
        result.append(
            DicomStudy(
                study_uid=study.study_uid,
                patient_id=study.patient_id,
                patient_name=study.patient_name,
                study_date=study.study_date,
                description=study.description,
                series=[infos[_key(series)] for series in study.series],
                pairs=pairs,
            )
        )
    return result


# --------------------------------------------------------------------------- loading


@dataclass
class LoadedStudy:
    """A PET/CT pair in memory: CT in HU (its own grid), PET in SUVbw (float32)."""

    patient_id: str
    study_uid: str
    ct: sitk.Image
    pet_suv: sitk.Image
    suv: SUVResult
    ct_series: SeriesInfo
    pet_series: SeriesInfo
    pairing_rule: str  # which CT was chosen for the PET, and by which rule
    pairing_alternatives: List[str] = field(default_factory=list)  # CT series not chosen
    warnings: List[str] = field(default_factory=list)
    study_date: str = ""  # DICOM StudyDate (YYYYMMDD) as the PET gives it

    @property
    def pet_grid(self) -> Grid:
        return Grid.from_sitk(self.pet_suv)

    @property
    def ct_grid(self) -> Grid:
        return Grid.from_sitk(self.ct)

    def ct_on_pet_grid(self) -> sitk.Image:
        """CT resampled onto the PET grid (float32 HU, linear, -1024 HU outside the CT field)."""
        return resample_ct_to_pet(self.ct, self.pet_grid)


def _paths_text(paths: Sequence[PathLike]) -> str:
    return ", ".join(str(p) for p in paths) or "(no paths)"


def choose_pairing(
    scan: ScanResult, study_uid: Optional[str] = None, pet_series_uid: Optional[str] = None, where: str = ""
) -> SeriesPairing[IndexedSeries]:
    """The one PET/CT pairing matching the filters; :class:`StudyLoadError` when none or several do."""
    pairings = [
        p
        for p in pair_pet_with_ct(scan.studies, study_uid)
        if pet_series_uid is None or p.pet.series_uid == pet_series_uid
    ]
    if not pairings:
        found = ", ".join(s.label for s in scan.series) or "no image series"
        wanted = " and ".join(
            text
            for text in (
                f"StudyInstanceUID {study_uid}" if study_uid else "",
                f"SeriesInstanceUID {pet_series_uid}" if pet_series_uid else "",
            )
            if text
        )
        raise StudyLoadError(f"no PET series{' with ' + wanted if wanted else ''} under {where} (found: {found})")
    if len(pairings) > 1:
        preferred = [p for p in pairings if p.preferred]
        if len(preferred) != 1:  # several studies (or none with a CT): only the caller can choose
            listing = "; ".join(f"{p.pet.label} in study {p.study_uid}" for p in pairings)
            raise StudyLoadError(
                f"{len(pairings)} PET series under {where}: {listing}; choose one with study_uid or pet_series_uid"
            )
        others = "; ".join(p.pet.label for p in pairings if not p.preferred)
        note = (
            f"{len(pairings)} PET series in the study: {preferred[0].pet.label} was loaded "
            f"({PET_PREFERENCE}); not loaded: {others} (name one with pet_series_uid to load it)"
        )
        if preferred[0].error:  # a CT covering too little of the PET
            raise StudyLoadError(preferred[0].error)
        return replace(preferred[0], warnings=list(preferred[0].warnings) + [note])
    pairing = pairings[0]
    if pairing.ct is None:
        raise StudyLoadError(f"{pairing.pet.label}: {pairing.rule}")
    if pairing.error:  # a CT covering too little of the PET
        raise StudyLoadError(pairing.error)
    return pairing


def _unreadable_text(scan: ScanResult, series: IndexedSeries) -> str:
    """Why the series is incomplete (files of it that could not be read), or ""."""
    problems = scan.unreadable_files(series)
    if not problems:
        return ""
    listed = "; ".join(problem.message for problem in problems[:3])
    more = f" and {len(problems) - 3} more" if len(problems) > 3 else ""
    return (
        f"{series.label}: {len(problems)} of its files could not be read, so its volume would be "
        f"incomplete: {listed}{more}"
    )


def _check_complete(scan: ScanResult, series: IndexedSeries) -> None:
    unreadable = _unreadable_text(scan, series)
    if unreadable:
        raise StudyLoadError(unreadable)


def load_study(
    paths: Sequence[PathLike],
    study_uid: Optional[str] = None,
    pet_series_uid: Optional[str] = None,
    progress: Optional[ProgressCallback] = None,
    cancel: Optional[CancelCallback] = None,
    allow_gaps: bool = False,
    scan: Optional[ScanResult] = None,
) -> LoadedStudy:
    """Load the PET series under ``paths`` (the one asked for, or the only one) and its CT.

    Raises :class:`StudyLoadError` (no or several PET series, no CT), :class:`SUVError` (SUV
    cannot be computed: the message names the file and tag), :class:`DicomSeriesError`
    (geometry or pixel data) or :class:`~PETCTLesionsLib.errors.Cancelled`. ``scan`` reuses an earlier
    :func:`scan_paths` result instead of reading the headers again.
    """
    if scan is None:
        scan = scan_paths(paths, progress=sub_progress(progress, 0.0, 0.2), cancel=cancel)
    pairing = choose_pairing(scan, study_uid, pet_series_uid, _paths_text(paths))
    assert pairing.ct is not None  # choose_pairing refuses a PET without CT
    _check_complete(scan, pairing.pet)
    _check_complete(scan, pairing.ct)
    pet_geometry = series_geometry(pairing.pet, allow_gaps=allow_gaps)
    ct_geometry = series_geometry(pairing.ct, allow_gaps=allow_gaps)
    pet_headers = pet_geometry.headers
    suv = suv_bw_factors([h.dataset for h in pet_headers], source=pairing.pet.label)  # type: ignore[misc]
    suv_warnings = check_suv_values(pet_geometry, suv)
    check_cancel(cancel)

    pet_voxels = float(np.prod(pet_geometry.grid.size))
    ct_voxels = float(np.prod(ct_geometry.grid.size))
    split = 0.2 + 0.8 * pet_voxels / (pet_voxels + ct_voxels)
    pet_image = read_series_image(
        pet_geometry,
        slice_scale=suv.factors,
        integer_output=False,
        progress=sub_progress(progress, 0.2, split),
        cancel=cancel,
    )
    ct_image = read_series_image(ct_geometry, progress=sub_progress(progress, split, 1.0), cancel=cancel)
    pet_info = SeriesInfo.from_series(pairing.pet, pet_geometry)
    ct_info = SeriesInfo.from_series(pairing.ct, ct_geometry)
    report(progress, 1.0, "PET/CT study loaded")
    return LoadedStudy(
        patient_id=pet_headers[0].patient_id,
        study_uid=pairing.study_uid,
        ct=ct_image,
        pet_suv=pet_image,
        suv=suv,
        ct_series=ct_info,
        pet_series=pet_info,
        pairing_rule=pairing.rule,
        pairing_alternatives=list(pairing.alternatives),
        warnings=list(pairing.warnings) + ct_info.warnings + pet_info.warnings + list(suv.warnings) + suv_warnings,
        study_date=pet_headers[0].study_date,
    )


@dataclass
class LoadedPet:
    """One PET series in SUVbw (float32), e.g. to convert a PET that Slicer loaded in Bq/mL."""

    pet_suv: sitk.Image
    suv: SUVResult
    series: SeriesInfo
    warnings: List[str] = field(default_factory=list)

    @property
    def series_grid(self) -> Grid:
        return Grid.from_sitk(self.pet_suv)


def load_pet_suv(
    paths: Sequence[PathLike],
    series_uid: Optional[str] = None,
    progress: Optional[ProgressCallback] = None,
    cancel: Optional[CancelCallback] = None,
) -> LoadedPet:
    """The PET series under ``paths`` (the one asked for, or the only one) in SUVbw, no CT needed.

    Same geometry rules and errors as :func:`load_study`; ``series.slice_sop_instance_uids``
    names the file behind each slice, which is how a volume loaded elsewhere is matched.
    """
    scan = scan_paths(paths, progress=sub_progress(progress, 0.0, 0.2), cancel=cancel)
    candidates = [s for s in scan.series if s.modality == "PT" and (series_uid is None or s.series_uid == series_uid)]
    where = _paths_text(paths)
    if not candidates:
        found = ", ".join(s.label for s in scan.series) or "no image series"
        wanted = f" with SeriesInstanceUID {series_uid}" if series_uid else ""
        raise StudyLoadError(f"no PET series{wanted} under {where} (found: {found})")
    if len(candidates) > 1:
        listing = "; ".join(s.label for s in candidates)
        raise StudyLoadError(f"{len(candidates)} PET series under {where}: {listing}; choose one by SeriesInstanceUID")
    series = candidates[0]
    _check_complete(scan, series)
    geometry = series_geometry(series)
    suv = suv_bw_factors([h.dataset for h in geometry.headers], source=series.label)  # type: ignore[misc]
    suv_warnings = check_suv_values(geometry, suv)
    check_cancel(cancel)
    image = read_series_image(
        geometry,
        slice_scale=suv.factors,
        integer_output=False,
        progress=sub_progress(progress, 0.2, 1.0),
        cancel=cancel,
    )
    info = SeriesInfo.from_series(series, geometry)
    return LoadedPet(pet_suv=image, suv=suv, series=info, warnings=info.warnings + list(suv.warnings) + suv_warnings)


def check_suv_values(geometry: SeriesGeometry, suv: SUVResult) -> List[str]:
    """Warn about SUVs above :data:`suv.HIGH_SUV_WARNING` and refuse those no scan can give.

    No scan can give a voxel more than the whole injected dose: SUVbw above the weight in grams
    over the voxel's volume in mL (400 kg, the largest weight accepted, when the series' SUV did not
    need the weight) is refused with :class:`SUVError` naming the slice's file; such a value comes
    from a wrong RescaleSlope on a slice or wrong SUV headers. From each slice's header the highest
    SUV it can hold is (largest stored value BitsStored allows x slope + intercept) x factor;
    vendors fit each slice's slope to its maximum, so that bound is the slice's real maximum and
    nothing is read. Only a slice whose bound passes the warning level is decoded to see whether
    its values do. Returns the warnings (one line naming the hottest slice's file).
    """
    spacing = geometry.grid.spacing
    voxel_ml = spacing[0] * spacing[1] * spacing[2] / 1000.0
    weight_kg = suv.weight_kg if suv.weight_kg else MAX_WEIGHT_KG
    impossible = weight_kg * 1000.0 / voxel_ml
    hottest: Optional[Tuple[float, SliceHeader, float]] = None
    over = 0
    for header, factor in zip(geometry.headers, suv.factors):
        largest = header.rescale_slope * stored_value_range(header)[1] + header.rescale_intercept
        if largest * factor <= HIGH_SUV_WARNING:
            continue
        stored = decode_stored_slice(header)
        highest = (header.rescale_slope * float(stored.max()) + header.rescale_intercept) * factor
        if highest > HIGH_SUV_WARNING:
            over += 1
            if hottest is None or highest > hottest[0]:
                hottest = (highest, header, factor)
    if hottest is None:
        return []
    highest, header, factor = hottest
    others = f" ({over - 1} other slice{'s' if over > 2 else ''} above {HIGH_SUV_WARNING:g} too)" if over > 1 else ""
    where = (
        f"{header.where}: its values reach SUV {highest:.3g}{others} (RescaleSlope {header.rescale_slope:g}, "
        f"RescaleIntercept {header.rescale_intercept:g}, SUV factor {factor:.6g})"
    )
    if highest > impossible:
        raise SUVError(
            f"{where}, more than the whole injected dose in one voxel (SUV {impossible:.3g} for "
            f"{weight_kg:g} kg and {voxel_ml:.3g} mL voxels), which no PET scan gives; the slice's "
            "RescaleSlope/RescaleIntercept or the series' SUV headers (Units, dose, weight) are wrong: "
            "correct or replace the file"
        )
    return [
        f"{where}, above {HIGH_SUV_WARNING:g}, which patients' PETs do not reach: check that slice's "
        "RescaleSlope and the series' SUV headers (an extravasated injection or a tracer line in the field "
        "of view can be this hot)"
    ]


def load_series_image(series: IndexedSeries, allow_gaps: bool = False) -> Tuple[sitk.Image, SeriesInfo]:
    """One series (e.g. a CT without PET, for its VOC annotations) as stored values x rescale."""
    geometry = series_geometry(series, allow_gaps=allow_gaps)
    return read_series_image(geometry), SeriesInfo.from_series(series, geometry)
