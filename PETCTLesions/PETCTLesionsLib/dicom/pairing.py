"""Pair each PET series with a CT, and rank a study's PET series.

PET/CT pairing (:func:`pair_pet_with_ct`, over the studies :func:`.index.scan_paths` found): each
PT series is paired with a CT series of the same study (StudyInstanceUID). When the study has
no CT, a CT of another study of the same patient that shares the PET's FrameOfReferenceUID is
used. When several CT series qualify, the first one in this order wins (the rule is reported
with the alternatives):

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
pairing: what a load picks when no series is named, and what a batch run processes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Generic, List, Optional, Sequence, Tuple, TypeVar

from .index import IndexedSeries, IndexedStudy

PAIRING_RULE = (
    "same StudyInstanceUID (else another study of the patient with the same FrameOfReferenceUID); "
    "among several CT series: same FrameOfReferenceUID first, then the largest z-overlap with the PET, "
    "then the most slices, then the lowest SeriesNumber"
)
PET_PREFERENCE = (
    "attenuation-corrected first (CorrectedImage has ATTN), then ORIGINAL before DERIVED images, "
    "then the most slices, then the lowest SeriesNumber"
)
# The CT and the PET of a PET/CT are acquired over one planned range: the CT normally covers the
# whole PET. A few centimetres short (a CT range planned tighter than the PET's whole bed
# positions) leaves the PET's ends without anatomy: warned under 90%. Under half, most of the PET
# would be read with air as its CT (a 1-slice CT made lesion volumes 22% low): refused.
CT_COVERAGE_WARN_FRACTION = 0.9
CT_COVERAGE_REFUSE_FRACTION = 0.5


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


def pair_pet_with_ct(
    studies: Sequence[IndexedStudy], study_uid: Optional[str] = None
) -> List[SeriesPairing[IndexedSeries]]:
    """One pairing per PT series, the study's preferred one first (see the module docstring).

    With ``study_uid``, the pairings of that study only (its CT may still come from another of
    ``studies``), as the whole run gives them.
    """
    pairings = []
    for study in studies:
        if study_uid is not None and study.study_uid != study_uid:
            continue
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
