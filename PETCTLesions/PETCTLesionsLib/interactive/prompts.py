"""The prompt engine: a reader's click, remove-click, box or split turned into an edit of the lesion map.

Pure functions on the PET grid: the PET in SUV (and the model's probability), the lesion map
(uint16 ``[k, j, i]``, 0 background, n = lesion n) and one prompt in LPS mm give a
:class:`LesionEdit`, the labels of one window of the map before and after; the inputs are never
modified and the same inputs give the same edit. The MRML layer applies the edit to segments and
VOC boxes and keeps it for undo; the click simulator applies it to an array.

How a positive click finds its lesion (each step bounds what the next one may take):

1. Snap. The clicked voxel climbs by steepest ascent over its 26 neighbours to a local maximum of
   the PET, never leaving the snap sphere (``snap_radius_mm``) about the clicked voxel: the seed is
   the hottest voxel uphill of the click. A plain argmax within the snap sphere would jump from a
   small lesion to a bladder or kidney 1 cm away; the climb stays on the hot spot the reader
   clicked (a climb stopped by a noise maximum is corrected in step 4).
2. Window. All further work happens in a box of ``max_radius_mm`` (plus one voxel) about the
   seed, clipped to the grid: about 50 000 voxels on a 2 mm grid whatever the size of the PET,
   which is what keeps a prompt far under 0.3 s on a whole-body PET. The growth bound is the sphere of
   ``max_radius_mm`` about the seed.
3. Leak guard. The region may not leave the seed's watershed basin of -SUV: the PET is flooded
   from its hot spots (``sitk.MorphologicalWatershed`` on the negated window, full connectivity,
   no watershed line), and hot spots that rise above the valley separating them by less than
   6% of the seed's SUV or 3 noise SDs (``BASIN_LEVEL_FRACTION``, ``BASIN_NOISE_SPREADS``) are
   merged: noise maxima and the bumps along the rim of a necrotic lesion are one basin, a lesion
   and its neighbouring bladder, kidney, heart or brain are two whether the organ is hotter or
   cooler. The noise SD is measured in the window (what a one-voxel Gaussian removes, relative to
   the square root of the uptake, as PET noise grows). The PET is not smoothed first: that would
   fill the one-voxel valley between a lesion and an organ.
4. Rule. The region is the 26-connected component about the seed of the voxels at or above the
   rule's threshold, inside the growth bound, the basin and (``protect_other_lesions``) outside
   every other lesion. 41% / 50% of SUVmax takes the SUVmax of the region; when the region holds
   a voxel hotter than the seed the seed moves there and the region is grown once more with the
   new threshold. Where that fraction of SUVmax lies within the background around the lesion
   (below the median of the basin within the bound + 2 robust SDs: a small or faint lesion whose
   SUVmax is lowered by the scanner's blur), the literal rule would take the background, whose
   noisy voxels connect into a region as large as the bound; the fraction is then taken of the
   lesion's rise above that background (the note says so, with both thresholds).
5. Join. The region joins the lesion the seed lies in, or else the one lesion it touches (an
   under-segmented lesion); otherwise it is a new lesion numbered max + 1.

Tuned on generated studies (``synthetic/phantom.py``): with a click at each lesion's centre (the
lesion removed from the map), the median Dice with the true lesion over the 58 lesions of four
small whole-body and two full-size torso phantoms is 0.94 (0.85 mean over lesions of 10 mm or
more); lesions of 10 and 20 mm placed 4-8 mm from the bladder, a kidney or the brain (68 cases)
stay out of the organ in 61; a necrotic lesion (a hot rim about a cold core), a graded and a
lobulated one each come whole from one click on noisy PETs. What is left is what no threshold on
the PET alone can do: a lesion cooler than an organ it touches without a dip between them (the
climb then reaches the organ), a faint lymph node on a vessel whose blood pool lies above 41% of
the node's SUVmax, and lesions of a voxel or two whose 41% region is the blur (a lesion of 5 mm
gives a region of about the PSF's FWHM). A fraction-of-SUVmax region that reaches the growth bound
may have leaked into the uptake around a faint hot spot: it is grown again with the threshold raised
by 15, 30 and 45% of the way up to SUVmax (from 41%: about 50, 59 and 68%), and the first region
inside the bound is taken (a leak comes off the bound at once; a lesion larger than the bound, or a
necrotic lesion's hot rim, does not), the note saying so. A region still stopped by the growth bound
says so in the note.

The model's probability rule climbs and thresholds the probability instead and uses no
watershed: the probability is low over normal organs (that is what the model learnt), and its
plateaus at 1 would not make basins.

PERCIST's threshold is 1.5 x the mean + 2 SD of a 3 cm sphere in the normal liver (Wahl et al.,
J Nucl Med 2009; 50 Suppl 1:122S). PERCIST defines it on SUL; here it is taken on the PET as given
(SUVbw).

Speed (``Testing/Benchmarks/benchmark_prompts.py``: the whole-body phantom on autoPET's 400 x 400
x 326 PET grid of 2.04 x 2.04 x 3 mm, ten lesions, 20 prompts of each kind, SimpleITK on 2 threads,
a shared 2-core AMD EPYC), median / largest seconds per prompt:

=============== ======================= ===================================
prompt          Python 3.11, SITK 2.5.7 Slicer 5.6's stack (3.9, SITK 2.2.1)
=============== ======================= ===================================
positive click  0.094 / 0.154           0.107 / 0.129
negative click  0.016 / 0.019           0.015 / 0.018
box             0.033 / 0.059           0.032 / 0.071
split           0.028 / 0.036           0.023 / 0.033
=============== ======================= ===================================

The issue asks for at most 0.3 s. The watershed takes most of a click (about 80 ms on its window
of 41 x 41 x 29 voxels); the one scan of the whole map, ``lesion_map.max()``, takes 3 ms.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Callable, Optional, Sequence, Set, Tuple

import numpy as np
import SimpleITK as sitk

from ..errors import InputError
from ..geometry import Grid

PERCENT_OF_MAX, FIXED_SUV, PERCIST, PROBABILITY = "percent_of_max", "fixed_suv", "percist", "probability"
RULE_KINDS = (PERCENT_OF_MAX, FIXED_SUV, PERCIST, PROBABILITY)

# The leak guard's watershed merges hot spots that rise above the valley between them by less than
# BASIN_LEVEL_FRACTION of the seed's SUV or BASIN_NOISE_SPREADS noise SDs at the seed's SUV (whichever
# is more): noise maxima and the bumps along one lesion's rim are one basin, a lesion and a
# neighbouring organ two. Tuned on generated studies (module docstring): a lower fraction lets more
# lesions beside organs be told apart, fewer noise SDs cut necrotic rims into pieces.
BASIN_LEVEL_FRACTION = 0.06
BASIN_NOISE_SPREADS = 3.0
# The Gaussian (SD in voxels) that separates noise from structure when the noise is measured, and that
# smooths the relief a split follows.
SMOOTHING_SIGMA_VOXELS = 1.0
# A box prompt follows its lesion onto the neighbouring slices within the box grown by this many voxels.
BOX_MARGIN_VOXELS = 1
# A fraction of SUVmax below the background's median + this many of its robust SDs would take the
# background (its noisy voxels above such a threshold connect into one region): the fraction is then
# taken of the lesion's rise above the background (module docstring).
BACKGROUND_NOISE_SPREADS = 2.0
# A fraction-of-SUVmax region that reaches the growth bound may have leaked: grown again with the threshold
# raised by these shares of the way up to SUVmax (from 41%: about 50, 59 and 68% of SUVmax) ...
TIGHTER_SHARES = (0.15, 0.3, 0.45)
MAX_LABEL = int(np.iinfo(np.uint16).max)
# Each face neighbour, edge neighbour and corner neighbour of a voxel, in a fixed order (ties in the climb).
_NEIGHBOURS = np.array(
    [(dk, dj, di) for dk in (-1, 0, 1) for dj in (-1, 0, 1) for di in (-1, 0, 1) if (dk, dj, di) != (0, 0, 0)]
)

Index = Tuple[int, int, int]  # a voxel as [k, j, i]
Region = Tuple[slice, slice, slice]


class PromptError(InputError):
    """A prompt or one of its options cannot be used (a click outside the PET, a rule without its reference)."""


# --------------------------------------------------------------------------------------------
# What a prompt is given


@dataclass(frozen=True)
class GrowthRule:
    """Which voxels around the seed belong to the lesion: at or above a threshold of one of four kinds.

    ``value`` is the fraction of SUVmax for ``PERCENT_OF_MAX`` (0.41, 0.50), the SUV for ``FIXED_SUV``
    (2.5, 4.0), the probability for ``PROBABILITY`` (e.g. 0.2); ``PERCIST`` takes its threshold from
    the liver reference and ignores it.
    """

    kind: str = PERCENT_OF_MAX
    value: float = 0.41

    def __post_init__(self) -> None:
        if self.kind not in RULE_KINDS:
            raise PromptError(f"growth rule must be one of {', '.join(RULE_KINDS)}, got {self.kind!r}")
        if self.kind == PERCIST:
            return
        value = self.value
        if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
            raise PromptError(f"growth rule {self.kind}: value must be a number, got {value!r}")
        if self.kind == PERCENT_OF_MAX and not 0.0 < value < 1.0:
            raise PromptError(f"growth rule {self.kind}: value must be a fraction of SUVmax in (0, 1), got {value!r}")
        if self.kind == FIXED_SUV and not 0.0 < value <= 1000.0:
            raise PromptError(f"growth rule {self.kind}: value must be an SUV in (0, 1000], got {value!r}")
        if self.kind == PROBABILITY and not 0.0 < value < 1.0:
            raise PromptError(f"growth rule {self.kind}: value must be a probability in (0, 1), got {value!r}")

    def describe(self) -> str:
        """The rule in a reader's words: "41% of SUVmax", "SUV 2.5", "PERCIST (...)", "model probability 0.20"."""
        if self.kind == PERCENT_OF_MAX:
            return f"{self.value * 100:g}% of SUVmax"
        if self.kind == FIXED_SUV:
            return f"SUV {self.value:g}"
        if self.kind == PERCIST:
            return "PERCIST (1.5 x liver mean + 2 SD)"
        return f"model probability {self.value:.2f}"


@dataclass(frozen=True)
class LiverReference:
    """The normal liver's SUV, measured once per study in a 3 cm sphere the reader places."""

    mean_suv: float
    sd_suv: float

    def __post_init__(self) -> None:
        if not (math.isfinite(self.mean_suv) and self.mean_suv > 0.0):
            raise PromptError(f"liver reference: mean SUV must be a positive number, got {self.mean_suv!r}")
        if not (math.isfinite(self.sd_suv) and self.sd_suv >= 0.0):
            raise PromptError(f"liver reference: SD must be a number >= 0, got {self.sd_suv!r}")

    @property
    def percist_threshold(self) -> float:
        """PERCIST's threshold for measurable disease: 1.5 x liver mean + 2 SD."""
        return 1.5 * self.mean_suv + 2.0 * self.sd_suv


def liver_reference(
    pet_suv: np.ndarray, grid: Grid, centre_lps: Sequence[float], diameter_mm: float = 30.0
) -> LiverReference:
    """Mean and SD (n - 1) of the PET voxels whose centres lie in a sphere of ``diameter_mm`` at ``centre_lps``.

    The sphere is clipped to the grid; its centre must lie on it.
    """
    _check_on_grid(pet_suv, grid, "PET")
    if not (math.isfinite(diameter_mm) and diameter_mm > 0.0):
        raise PromptError(f"liver reference sphere: diameter must be a positive number of mm, got {diameter_mm!r}")
    centre = _voxel_at(grid, centre_lps, "the liver reference sphere's centre")
    spacing = _spacing_kji(grid)
    window = _Window.around(centre, diameter_mm / 2.0, spacing, grid.shape)
    # Distances from the point itself (not its voxel): the sphere is where the reader put it.
    continuous = grid.lps_to_index(np.asarray(centre_lps, dtype=float))[::-1]
    inside = window.distance_sq_mm(continuous, spacing) <= (diameter_mm / 2.0) ** 2
    values = pet_suv[window.slices][inside].astype(np.float64)
    if values.size < 2:
        raise PromptError(
            f"liver reference sphere of {diameter_mm:g} mm holds {values.size} PET voxel(s); "
            "place a 3 cm sphere in the normal liver"
        )
    return LiverReference(mean_suv=float(values.mean()), sd_suv=float(values.std(ddof=1)))


@dataclass(frozen=True)
class PromptOptions:
    """How a prompt grows its lesion; the defaults are those of the Segment Editor effect."""

    rule: GrowthRule = GrowthRule()
    snap_radius_mm: float = 10.0  # the click moves to the hottest voxel uphill of it within this radius
    max_radius_mm: float = 40.0  # growth never goes further than this from the snapped seed
    protect_other_lesions: bool = True  # voxels of other lesions are never taken
    liver: Optional[LiverReference] = None  # required by PERCIST

    def __post_init__(self) -> None:
        if not isinstance(self.rule, GrowthRule):
            raise PromptError(f"prompt options: rule must be a GrowthRule, got {self.rule!r}")
        if not (math.isfinite(self.snap_radius_mm) and self.snap_radius_mm >= 0.0):
            raise PromptError(f"prompt options: snap radius must be a number of mm >= 0, got {self.snap_radius_mm!r}")
        if not (math.isfinite(self.max_radius_mm) and self.max_radius_mm > 0.0):
            raise PromptError(
                f"prompt options: maximum radius must be a positive number of mm, got {self.max_radius_mm!r}"
            )
        if self.liver is not None and not isinstance(self.liver, LiverReference):
            raise PromptError(f"prompt options: liver must be a LiverReference or None, got {self.liver!r}")


@dataclass(frozen=True, eq=False)  # arrays inside: compared by identity
class PromptVolumes:
    """The volumes prompts read, on the PET grid."""

    pet_suv: np.ndarray  # float32 SUVbw
    grid: Grid
    probability: Optional[np.ndarray] = None  # the model's probability (float16/32), for PROBABILITY

    def __post_init__(self) -> None:
        _check_on_grid(self.pet_suv, self.grid, "PET")
        if self.probability is not None:
            _check_on_grid(self.probability, self.grid, "model probability")


@dataclass(frozen=True)
class AxialBox:
    """A box drawn on one axial slice of the PET grid: slice ``k``, inclusive columns i0..i1 and rows j0..j1."""

    k: int
    i0: int
    j0: int
    i1: int
    j1: int


# --------------------------------------------------------------------------------------------
# What a prompt gives


@dataclass(frozen=True, eq=False)  # arrays inside: compared by identity
class LesionEdit:
    """What one prompt changes: the labels inside one window of the lesion map, before and after.

    The window is the bounding box of the changed voxels (one voxel at the prompt when nothing
    changed). Applying and undoing write only the voxels that differ between ``before`` and
    ``after``, so edits of neighbouring windows undone in reverse order restore the map exactly.
    """

    region: Region  # [k, j, i] window of the lesion map
    before: np.ndarray  # lesion labels in region before (uint16), a copy
    after: np.ndarray  # lesion labels in region after (uint16)
    added: Tuple[int, ...]  # lesion numbers that did not exist before
    removed: Tuple[int, ...]  # lesion numbers that no longer exist anywhere in the map
    changed: Tuple[int, ...]  # lesion numbers that exist before and after with different voxels
    seed_kji: Optional[Index]  # the voxel the lesion was grown from (positive click, box), or None
    threshold: Optional[float]  # the SUV (or probability) threshold used, or None
    note: str  # one sentence for the reader: what was done, or why nothing was

    @property
    def is_empty(self) -> bool:
        """True when the edit changes no voxel."""
        return not bool(np.any(self.before != self.after))

    def applied_to(self, lesion_map: np.ndarray) -> np.ndarray:
        """A new lesion map (a copy) with the edit applied."""
        result = np.array(lesion_map, copy=True)
        self.apply_in_place(result)
        return result

    def apply_in_place(self, lesion_map: np.ndarray) -> None:
        self._write(lesion_map, self.after)

    def undo_in_place(self, lesion_map: np.ndarray) -> None:
        self._write(lesion_map, self.before)

    def _write(self, lesion_map: np.ndarray, labels: np.ndarray) -> None:
        window = lesion_map[self.region]
        if window.shape != labels.shape:
            raise ValueError(f"edit region {self.region} does not fit a lesion map of shape {lesion_map.shape}")
        changed = self.before != self.after
        window[changed] = labels[changed]


# --------------------------------------------------------------------------------------------
# The prompts


def positive_click(
    volumes: PromptVolumes, lesion_map: np.ndarray, point_lps: Sequence[float], options: PromptOptions = PromptOptions()
) -> LesionEdit:
    """The lesion at a click: snapped to the hot spot uphill of it, grown by the rule (module docstring)."""
    _check_lesion_map(volumes, lesion_map)
    rule = _Rule.of(volumes, options)
    click = _voxel_at(volumes.grid, point_lps, "the click")
    seed = _snap(rule, volumes.grid, click, click, options.snap_radius_mm)
    keep = int(lesion_map[seed])  # a click on lesion n may grow n: n's voxels are not "other lesions"
    growth = _grow_around(rule, volumes.grid, lesion_map, seed, options, keep, options.protect_other_lesions)
    if growth.region is None:
        return _unchanged(
            lesion_map, click, seed, growth.threshold, f"{growth.why_empty('near the click')} nothing added."
        )
    if growth.faint:
        note = (
            f"The hot spot near the click (SUVmax {growth.peak:.2f}) does not stand out from the uptake around it: "
            f"above SUV {growth.threshold:.2f} and every higher threshold tried, its region runs to the "
            f"{options.max_radius_mm:g} mm growth bound; nothing added. Draw it (Paint) or drag a box around it."
        )
        return _unchanged(lesion_map, click, seed, growth.threshold, note)
    return _join_or_add(lesion_map, volumes.grid, growth, options)


def negative_click(
    volumes: PromptVolumes, lesion_map: np.ndarray, point_lps: Sequence[float], options: PromptOptions = PromptOptions()
) -> LesionEdit:
    """Remove the lesion at a click (the voxel clicked, else the nearest lesion voxel within the snap radius).

    The lesion goes whole, unless it reaches further than ``max_radius_mm`` from its hottest voxel:
    no positive prompt could have made it (a prompt grows at most that far from the hot spot it
    snaps to), so it is a lesion merged with normal uptake (a lymph node run into the heart, a
    lesion into the bladder), and only the positive rule's region around the click (snapped within
    the lesion, then the same bound, basin and threshold) is removed from it.
    """
    _check_lesion_map(volumes, lesion_map)
    rule = _Rule.of(volumes, options)
    grid = volumes.grid
    click = _voxel_at(grid, point_lps, "the click")
    anchor = _nearest_lesion_voxel(lesion_map, click, options.snap_radius_mm, _spacing_kji(grid))
    if anchor is None:
        return _unchanged(
            lesion_map,
            click,
            None,
            None,
            f"No lesion at the click or within {options.snap_radius_mm:g} mm of it; nothing removed.",
        )
    label = int(lesion_map[anchor])
    extent = _label_extent(lesion_map, label)
    assert extent is not None  # the anchor is one of its voxels
    hottest = _hottest_voxel(rule.values, lesion_map, extent, label)
    if _lies_within(lesion_map, extent, label, hottest, options.max_radius_mm, _spacing_kji(grid)):
        window = _Window.of(extent)
        after = lesion_map[extent].astype(np.uint16)
        voxels = int(np.count_nonzero(after == label))
        after[after == label] = 0
        note = f"Removed lesion {label} ({voxels} voxels, {voxels * grid.voxel_volume_ml:.2f} mL)."
        return _make_edit(lesion_map, window, after, None, None, note, note, known_removed=(label,))

    seed = _snap(rule, grid, anchor, click, options.snap_radius_mm, lesion_map, label)
    growth = _grow_around(rule, grid, lesion_map, seed, options, label, protect=False)
    bound = f"Lesion {label} reaches further than the {options.max_radius_mm:g} mm one prompt can grow"
    if growth.region is None:
        return _unchanged(
            lesion_map,
            click,
            seed,
            growth.threshold,
            f"{bound}; {growth.why_empty('of it near the click')} nothing removed.",
        )
    labels = lesion_map[growth.window.slices]
    part = growth.region & (labels == label)
    after = labels.astype(np.uint16)
    after[part] = 0
    voxels = int(np.count_nonzero(part))
    note = (
        f"{bound}: removed only its part around the click above {growth.rule_text} "
        f"({voxels} voxels, {voxels * grid.voxel_volume_ml:.2f} mL)."
    )
    return _make_edit(lesion_map, growth.window, after, growth.seed_global, growth.threshold, note, note)


def box_prompt(
    volumes: PromptVolumes, lesion_map: np.ndarray, box: AxialBox, options: PromptOptions = PromptOptions()
) -> LesionEdit:
    """The lesion inside a box drawn on one axial slice, followed onto the slices where it continues.

    The seed is the hottest voxel in the box on its slice; the region is grown as for a click, but
    bounded by the box on its slice, by the box grown by ``BOX_MARGIN_VOXELS`` on the other slices,
    and by ``max_radius_mm`` through the slices. The leak guard keeps every basin that has voxels
    above the threshold inside the box on its slice (the reader's box says they belong to the
    lesion, e.g. two peaks of one heterogeneous lesion) and no other.
    """
    _check_lesion_map(volumes, lesion_map)
    rule = _Rule.of(volumes, options)
    grid = volumes.grid
    spacing = _spacing_kji(grid)
    k, (j0, j1), (i0, i1) = _box_on_grid(box, grid.shape)
    reach_k = int(math.floor(options.max_radius_mm / spacing[0]))
    ring = BOX_MARGIN_VOXELS + 1  # the margin, and one voxel beyond it to see which lesions the region touches
    low = (k - reach_k - 1, j0 - ring, i0 - ring)
    high = (k + reach_k + 2, j1 + ring + 1, i1 + ring + 1)
    window = _Window.clipped(low, high, grid.shape)
    values = rule.values[window.slices].astype(np.float32)
    labels = lesion_map[window.slices]
    lk, lj0, li0 = window.local((k, j0, i0))
    lj1, li1 = lj0 + (j1 - j0), li0 + (i1 - i0)

    in_box = np.zeros(values.shape, bool)  # the box on its slice
    in_box[lk, lj0 : lj1 + 1, li0 : li1 + 1] = True
    prism = np.zeros(values.shape, bool)  # the box grown by the margin on every slice within reach
    m = BOX_MARGIN_VOXELS
    k_local = np.arange(values.shape[0])
    near = np.abs(k_local - lk) * spacing[0] <= options.max_radius_mm
    near_inside = np.abs(k_local - lk) * spacing[0] <= options.max_radius_mm - spacing[0]
    prism[near, max(lj0 - m, 0) : lj1 + m + 1, max(li0 - m, 0) : li1 + m + 1] = True
    prism[lk] = in_box[lk]

    on_slice = values[lk, lj0 : lj1 + 1, li0 : li1 + 1]
    flat = int(np.argmax(on_slice))
    seed = (lk, lj0 + flat // on_slice.shape[1], li0 + flat % on_slice.shape[1])
    keep = int(labels[seed])
    allowed = prism & _unprotected(labels, keep) if options.protect_other_lesions else prism
    background = None
    basins = None
    if rule.uses_basins:
        noise = _relative_noise_sd(values, spacing)
        basins = _basins(values, seed, noise)
        background = _Background.of(values[allowed & (basins == basins[seed])])

    def allowed_for(threshold: float) -> np.ndarray:
        if basins is None:
            return allowed
        hot_in_box = np.unique(basins[in_box & (values >= threshold)])  # depends on the threshold
        return allowed & np.isin(basins, hot_in_box)

    region, seed, threshold = _grow(values, seed, lambda peak: rule.threshold(peak, background), allowed_for)
    last_slices = ~near_inside[:, None, None]  # the outermost slices within reach: the region was stopped there
    bounded = region is not None and bool(np.any(region & last_slices))
    growth = _Growth.of(rule, window, region, seed, threshold, float(values[seed]), bounded, background)
    if growth.region is None:
        where = window.global_(seed)
        return _unchanged(lesion_map, where, where, threshold, f"{growth.why_empty('in the box')} nothing added.")
    return _join_or_add(lesion_map, grid, growth, options)


def split_lesion(
    volumes: PromptVolumes, lesion_map: np.ndarray, first_lps: Sequence[float], second_lps: Sequence[float]
) -> LesionEdit:
    """Split the lesion holding both points: it keeps the part around the first, max + 1 gets the second's.

    The parts are the watershed of -SUV inside the lesion flooded from the two points
    (``sitk.MorphologicalWatershedFromMarkers``; everything outside the lesion is higher than every
    voxel inside, so each part grows through the lesion alone and is connected): the cut runs
    along the valley between the two hot spots, e.g. between two nodes of a chain.
    """
    _check_lesion_map(volumes, lesion_map)
    grid = volumes.grid
    first = _voxel_at(grid, first_lps, "the first point")
    second = _voxel_at(grid, second_lps, "the second point")
    label, other = int(lesion_map[first]), int(lesion_map[second])
    if label == 0 or label != other:
        where = ", ".join(
            f"the {name} point is {'in lesion ' + str(n) if n else 'in no lesion'}"
            for name, n in (("first", label), ("second", other))
        )
        return _unchanged(lesion_map, first, None, None, f"Both points must lie in one lesion to split it: {where}.")
    if first == second:
        return _unchanged(lesion_map, first, None, None, "Both points are the same voxel; nothing to split.")

    extent = _label_extent(lesion_map, label)
    assert extent is not None
    spacing = _spacing_kji(grid)
    # Two voxels of PET around the lesion, so that smoothing sees what surrounds its border.
    window = _Window.clipped([s.start - 2 for s in extent], [s.stop + 2 for s in extent], grid.shape)
    labels = lesion_map[window.slices]
    inside = labels == label
    relief = -_smoothed(volumes.pet_suv[window.slices].astype(np.float32), spacing)
    relief[~inside] = float(relief[inside].max()) + 1.0
    markers = np.zeros(relief.shape, np.uint32)
    markers[window.local(first)] = 1
    markers[window.local(second)] = 2
    flooded = sitk.GetArrayViewFromImage(
        sitk.MorphologicalWatershedFromMarkers(
            sitk.GetImageFromArray(relief),
            sitk.GetImageFromArray(markers),
            markWatershedLine=False,
            fullyConnected=True,
        )
    )
    second_part = _component((flooded == 2) & inside, window.local(second))
    new_label = _next_label(lesion_map)
    after = labels.astype(np.uint16)
    after[second_part] = new_label
    kept = int(np.count_nonzero(after == label))
    moved = int(np.count_nonzero(second_part))
    note = (
        f"Split lesion {label}: it keeps {kept} voxels ({kept * grid.voxel_volume_ml:.2f} mL) around the first point, "
        f"new lesion {new_label} has {moved} voxels ({moved * grid.voxel_volume_ml:.2f} mL) around the second."
    )
    return _make_edit(lesion_map, window, after, None, None, note, note, new_label=new_label)


# --------------------------------------------------------------------------------------------
# The rule's volume and threshold


@dataclass(frozen=True, eq=False)
class _Rule:
    rule: GrowthRule
    values: np.ndarray  # what the rule climbs and thresholds: the PET, or the model's probability
    liver: Optional[LiverReference]

    @classmethod
    def of(cls, volumes: PromptVolumes, options: PromptOptions) -> _Rule:
        """The rule with the volume it reads; refuses a rule whose reference is missing."""
        rule = options.rule
        if rule.kind == PERCIST and options.liver is None:
            raise PromptError(
                "PERCIST needs a liver reference: place the 3 cm liver sphere first (PromptOptions.liver)"
            )
        if rule.kind == PROBABILITY:
            if volumes.probability is None:
                raise PromptError(
                    "the model probability rule needs the model's probability map: run detection first "
                    "(PromptVolumes.probability)"
                )
            return cls(rule, volumes.probability, options.liver)
        return cls(rule, volumes.pet_suv, options.liver)

    @property
    def uses_basins(self) -> bool:
        """The leak guard is for the PET; the model's probability needs none (module docstring)."""
        return self.rule.kind != PROBABILITY

    @property
    def unit(self) -> str:
        return "probability" if self.rule.kind == PROBABILITY else "SUV"

    def threshold(self, peak: float, background: Optional[_Background] = None) -> float:
        """The threshold for a region whose hottest voxel is ``peak`` (and the background around it)."""
        kind = self.rule.kind
        if kind == PERCENT_OF_MAX:
            fraction = float(self.rule.value)
            if background is None or fraction * peak >= background.floor:
                return fraction * peak
            # The fraction of SUVmax lies in the background's noise: take the fraction of the rise above it.
            return max(background.level + fraction * (peak - background.level), background.floor)
        if kind == PERCIST:
            assert self.liver is not None
            return self.liver.percist_threshold
        return float(self.rule.value)

    def describe_threshold(self, threshold: float, peak: float, background: Optional[_Background] = None) -> str:
        kind = self.rule.kind
        if kind == PERCENT_OF_MAX:
            literal = float(self.rule.value) * peak
            if background is None or literal >= background.floor:
                return f"SUV {threshold:.2f} ({self.rule.describe()} {peak:.2f})"
            return (
                f"SUV {threshold:.2f} ({self.rule.describe()} {peak:.2f} would be SUV {literal:.2f}, within the "
                f"background around it, SUV {background.level:.2f} +- {background.spread:.2f}; taken above that "
                "background instead)"
            )
        if kind == PERCIST:
            assert self.liver is not None
            return (
                f"SUV {threshold:.2f} (PERCIST: 1.5 x liver mean {self.liver.mean_suv:.2f} "
                f"+ 2 SD {self.liver.sd_suv:.2f})"
            )
        if kind == FIXED_SUV:
            return f"SUV {threshold:.2f}"
        return f"probability {threshold:.2f}"


# --------------------------------------------------------------------------------------------
# Windows, snapping and growing


@dataclass(frozen=True)
class _Window:
    """A box of the grid, [low, high) per axis in [k, j, i]."""

    low: Index
    high: Index

    @classmethod
    def clipped(cls, low: Sequence[int], high: Sequence[int], shape: Sequence[int]) -> _Window:
        return cls(
            tuple(max(int(v), 0) for v in low),  # type: ignore[arg-type]
            tuple(min(int(v), int(n)) for v, n in zip(high, shape)),  # type: ignore[arg-type]
        )

    @classmethod
    def around(cls, centre: Index, radius_mm: float, spacing: np.ndarray, shape: Sequence[int]) -> _Window:
        """The box holding the sphere of ``radius_mm`` about ``centre`` and one voxel beyond it, clipped.

        The voxel beyond lets the region's neighbours be seen (which lesions it touches).
        """
        reach = [int(math.floor(radius_mm / s)) + 1 for s in spacing]
        return cls.clipped([c - r for c, r in zip(centre, reach)], [c + r + 1 for c, r in zip(centre, reach)], shape)

    @classmethod
    def of(cls, region: Region) -> _Window:
        return cls(tuple(s.start for s in region), tuple(s.stop for s in region))  # type: ignore[arg-type]

    @property
    def slices(self) -> Region:
        return tuple(slice(lo, hi) for lo, hi in zip(self.low, self.high))  # type: ignore[return-value]

    def local(self, index: Sequence[int]) -> Index:
        return tuple(int(v) - lo for v, lo in zip(index, self.low))  # type: ignore[return-value]

    def global_(self, index: Sequence[int]) -> Index:
        return tuple(int(v) + lo for v, lo in zip(index, self.low))  # type: ignore[return-value]

    def distance_sq_mm(self, centre: Sequence[float], spacing: np.ndarray) -> np.ndarray:
        """Squared distance (mm) of every voxel of the window from ``centre`` ([k, j, i], maybe fractional)."""
        axes = np.ogrid[tuple(slice(lo, hi) for lo, hi in zip(self.low, self.high))]
        total = np.zeros([hi - lo for lo, hi in zip(self.low, self.high)], np.float32)
        for axis, c, s in zip(axes, centre, spacing):
            total = total + ((axis - float(c)) * float(s)).astype(np.float32) ** 2
        return total


@dataclass(frozen=True)
class _Background:
    """The uptake around a hot spot: the median of the seed's basin within the growth bound, and its spread.

    The lesion is a small part of that domain (a lesion of 60 mm is less than half of the
    40 mm sphere), so the median is the tissue it sits in. The spread is the robust SD of the
    voxels below the median: noise and the mix of tissues around (muscle, fat, air), both of which
    a threshold must clear not to run through the background (on generated studies this does
    better than the noise alone).
    """

    level: float
    spread: float

    @property
    def floor(self) -> float:
        """Below this a threshold lies in the background's noise, whose voxels connect into a region of their own."""
        return self.level + BACKGROUND_NOISE_SPREADS * self.spread

    @classmethod
    def of(cls, values: np.ndarray) -> Optional[_Background]:
        if values.size < 2:
            return None
        level = float(np.median(values))
        below = values[values <= level]
        return cls(level, 1.4826 * float(np.median(level - below)))


@dataclass(frozen=True, eq=False)
class _Growth:
    """A region grown in a window: ``region`` is None when the seed is below the threshold."""

    window: _Window
    region: Optional[np.ndarray]  # bool, window's shape
    seed: Index  # local to the window
    threshold: float
    peak: float  # the rule's value at the seed
    bounded: bool  # the region reached the growth bound
    rule_text: str  # the threshold in words, for notes
    unit: str
    faint: bool = False  # a faint hot spot whose region is at the bound at every threshold tried (a leak)

    @classmethod
    def of(
        cls,
        rule: _Rule,
        window: _Window,
        region: Optional[np.ndarray],
        seed: Index,
        threshold: float,
        peak: float,
        bounded: bool,
        background: Optional[_Background],
    ) -> _Growth:
        text = rule.describe_threshold(threshold, peak, background)
        return cls(window, region, seed, threshold, peak, bounded, text, rule.unit)

    @property
    def seed_global(self) -> Index:
        return self.window.global_(self.seed)

    def why_empty(self, where: str) -> str:
        """Why no region grew: the hottest voxel ``where`` is below the threshold."""
        return f"The hottest voxel {where} has {self.unit} {self.peak:.2f}, below the threshold {self.rule_text};"


def _snap(
    rule: _Rule,
    grid: Grid,
    start: Index,
    centre: Index,
    radius_mm: float,
    lesion_map: Optional[np.ndarray] = None,
    label: int = 0,
) -> Index:
    """The hottest voxel uphill of ``start`` within ``radius_mm`` of ``centre`` (and inside lesion ``label`` if given).

    Steepest ascent over the 26 neighbours on the rule's own values (the PET, or the probability), so
    that the result is a local maximum of what the rule thresholds.
    """
    spacing = _spacing_kji(grid)
    window = _Window.around(centre, radius_mm, spacing, grid.shape)
    values = rule.values[window.slices].astype(np.float32)
    allowed = window.distance_sq_mm(centre, spacing) <= radius_mm**2 + 1e-6
    if lesion_map is not None:
        allowed &= lesion_map[window.slices] == label
    return window.global_(_climb(values, window.local(start), allowed))


def _climb(values: np.ndarray, start: Index, allowed: np.ndarray) -> Index:
    """Steepest ascent from ``start`` over the 26 neighbours, through ``allowed`` voxels, to a local maximum."""
    shape = np.asarray(values.shape)
    current = np.asarray(start)
    while True:  # each step goes strictly uphill, so the climb ends
        neighbours = current + _NEIGHBOURS
        neighbours = neighbours[np.all((neighbours >= 0) & (neighbours < shape), axis=1)]
        neighbours = neighbours[allowed[tuple(neighbours.T)]]
        if not len(neighbours):
            break
        heights = values[tuple(neighbours.T)]
        best = int(np.argmax(heights))  # the first of equals, in _NEIGHBOURS' order: deterministic
        if heights[best] <= values[tuple(current)]:
            break
        current = neighbours[best]
    return tuple(int(v) for v in current)  # type: ignore[return-value]


def _grow_around(
    rule: _Rule, grid: Grid, lesion_map: np.ndarray, seed: Index, options: PromptOptions, keep: int, protect: bool
) -> _Growth:
    """The rule's region around ``seed``: in the growth bound and basin, outside other lesions (``protect``)."""
    spacing = _spacing_kji(grid)
    window = _Window.around(seed, options.max_radius_mm, spacing, grid.shape)
    values = rule.values[window.slices].astype(np.float32)
    local_seed = window.local(seed)
    distance_sq = window.distance_sq_mm(seed, spacing)
    within_bound = distance_sq <= options.max_radius_mm**2 + 1e-6
    allowed = within_bound & _unprotected(lesion_map[window.slices], keep) if protect else within_bound
    background = None
    if rule.uses_basins:
        noise = _relative_noise_sd(values, spacing)
        basins = _basins(values, local_seed, noise)
        allowed &= basins == basins[local_seed]
        background = _Background.of(values[allowed])
    region, local_seed, threshold = _grow(
        values, local_seed, lambda peak: rule.threshold(peak, background), lambda threshold: allowed
    )
    # The outermost shell of the sphere (one voxel thick): a region there was stopped by the bound.
    shell = distance_sq > (options.max_radius_mm - float(spacing.max())) ** 2
    bounded = region is not None and bool(np.any(region & shell))
    growth = _Growth.of(rule, window, region, local_seed, threshold, float(values[local_seed]), bounded, background)
    if bounded and rule.rule.kind == PERCENT_OF_MAX:
        return _tightened(growth, values, allowed, shell, options.max_radius_mm, rule.rule.describe(), rule.rule.value)
    return growth


def _tightened(
    growth: _Growth,
    values: np.ndarray,
    allowed: np.ndarray,
    shell: np.ndarray,
    bound_mm: float,
    asked: str,
    fraction: float,
) -> _Growth:
    """A fraction-of-SUVmax region that ran into the growth bound, grown again at higher fractions.

    A region can reach the bound because the lesion is large, or because it leaked: a faint hot spot
    (SUVmax 2-4 over a background of about 1) connects at 41% into the uptake around it, up to the
    bound (57 mL from a 0.1 mL lesion in the click benchmark). A leak comes off the bound when the
    threshold rises a little; a lesion larger than the bound (or a necrotic one's hot rim) stays there.
    So the threshold is raised by each of ``TIGHTER_SHARES`` of the way up to SUVmax in turn, and the
    first region inside the bound is taken. When none is, the region is kept as grown (a large lesion),
    unless its threshold had already been lifted above the background (a faint spot): then ``faint`` is
    set and the caller adds nothing. The note says which and why. A fixed SUV or PERCIST threshold is the
    reader's own: kept as is.
    """
    assert growth.region is not None
    peak, first = float(values[growth.seed]), growth.threshold
    for share in TIGHTER_SHARES:
        threshold = first + share * (peak - first)
        region = _component((values >= threshold) & allowed, growth.seed)
        if np.any(region & shell):
            continue  # still at the bound
        text = (
            f"SUV {threshold:.2f} ({threshold / peak:.0%} of SUVmax {peak:.2f}: at SUV {first:.2f}, from {asked}, "
            f"the region leaked into the uptake around the hot spot, up to the {bound_mm:g} mm growth bound)"
        )
        return replace(growth, region=region, threshold=threshold, bounded=False, rule_text=text)
    if first > float(fraction) * peak * (1 + 1e-6):
        # The threshold was already taken above the background (a faint hot spot) and no higher one gets
        # the region off the bound: the spot does not stand out from the uptake around it.
        return replace(growth, faint=True)
    return growth  # at the bound at every threshold: a lesion larger than the bound, kept as grown


def _grow(
    values: np.ndarray,
    seed: Index,
    threshold_of_peak: Callable[[float], float],
    allowed_for: Callable[[float], np.ndarray],
) -> Tuple[Optional[np.ndarray], Index, float]:
    """(region, seed, threshold): the component of allowed voxels >= threshold around the seed, or None.

    A threshold taken from the region's peak (41% of SUVmax) is taken again, once, when the region
    holds a voxel hotter than the seed: the seed moves to it and the region is grown anew.
    """
    threshold = threshold_of_peak(float(values[seed]))
    if values[seed] < threshold:
        return None, seed, threshold
    region = _component((values >= threshold) & allowed_for(threshold), seed)
    if not region.any():  # the seed itself is not allowed (a caller's bound excludes it)
        return None, seed, threshold
    hottest = np.unravel_index(int(np.argmax(np.where(region, values, -np.inf))), values.shape)
    hottest = tuple(int(v) for v in hottest)
    if values[hottest] > values[seed]:
        retaken = threshold_of_peak(float(values[hottest]))
        if retaken != threshold:
            seed, threshold = hottest, retaken  # type: ignore[assignment]
            region = _component((values >= threshold) & allowed_for(threshold), seed)
    return region, seed, threshold  # type: ignore[return-value]


def _smoothed(values: np.ndarray, spacing: np.ndarray) -> np.ndarray:
    """The values under a Gaussian of ``SMOOTHING_SIGMA_VOXELS`` voxels (float32, same shape)."""
    image = sitk.GetImageFromArray(values.astype(np.float32, copy=False))
    image.SetSpacing([float(s) for s in spacing[::-1]])
    variance = [float(SMOOTHING_SIGMA_VOXELS * s) ** 2 for s in spacing[::-1]]
    return sitk.GetArrayFromImage(sitk.DiscreteGaussian(image, variance, 32, 0.01, True))


def _basins(values: np.ndarray, seed: Index, relative_noise_sd: float) -> np.ndarray:
    """The watershed basins of -values: one label per hot spot, those rising less than the level merged.

    The level is ``BASIN_LEVEL_FRACTION`` of the seed's value or ``BASIN_NOISE_SPREADS`` noise SDs
    at it, whichever is more. The PET is flooded as it is: smoothing would fill the one-voxel
    valley between a lesion and an organ, while the noise-scaled level already merges noise maxima.
    """
    peak = max(float(values[seed]), 0.0)
    level = max(BASIN_LEVEL_FRACTION * peak, BASIN_NOISE_SPREADS * relative_noise_sd * math.sqrt(peak))
    image = sitk.GetImageFromArray(-values.astype(np.float32, copy=False))
    return sitk.GetArrayFromImage(
        sitk.MorphologicalWatershed(image, level, markWatershedLine=False, fullyConnected=True)
    )


def _relative_noise_sd(values: np.ndarray, spacing: np.ndarray) -> float:
    """The PET's noise SD relative to the square root of the uptake (PET noise grows so), from the whole window.

    The noise is what a one-voxel Gaussian removes; its robust SD over the window is that of the
    tissue without edges, which is most of it.
    """
    smooth = _smoothed(values, spacing)
    relative = (values - smooth) / np.sqrt(np.maximum(smooth, 0.0) + 0.01)
    return 1.4826 * float(np.median(np.abs(relative - np.median(relative))))


def _component(mask: np.ndarray, seed: Index) -> np.ndarray:
    """The 26-connected component of ``mask`` holding ``seed`` (all False when the seed is not in the mask)."""
    if not mask[seed]:
        return np.zeros(mask.shape, bool)
    components = sitk.ConnectedComponent(sitk.GetImageFromArray(mask.astype(np.uint8)), True)
    labels = sitk.GetArrayViewFromImage(components)
    return labels == labels[seed]


def _unprotected(labels: np.ndarray, keep: int) -> np.ndarray:
    """Voxels a protected growth may take: background, and lesion ``keep`` (the one the seed lies in)."""
    return (labels == 0) | (labels == keep) if keep else labels == 0


# --------------------------------------------------------------------------------------------
# Edits of the lesion map


def _join_or_add(lesion_map: np.ndarray, grid: Grid, growth: _Growth, options: PromptOptions) -> LesionEdit:
    """The region joins the seed's lesion, else the one lesion it touches, else becomes lesion max + 1."""
    assert growth.region is not None
    window, region = growth.window, growth.region
    labels = lesion_map[window.slices]
    target = int(labels[growth.seed])
    new_label = None
    if not target:
        touching = _touching_labels(labels, region)
        if len(touching) == 1:
            target = touching.pop()
        else:
            target = new_label = _next_label(lesion_map)
    after = labels.astype(np.uint16)
    painted = region & _unprotected(labels, target) if options.protect_other_lesions else region
    after[painted] = target
    grown = int(np.count_nonzero(painted & (labels != target)))
    rule_text = growth.rule_text
    bound = f" (stopped by the {options.max_radius_mm:g} mm growth bound)" if growth.bounded else ""
    ml = grid.voxel_volume_ml
    if new_label is not None:
        note = f"Added lesion {target}: {grown} voxels ({grown * ml:.2f} mL) above {rule_text}{bound}."
    else:
        note = f"Lesion {target} grew by {grown} voxels ({grown * ml:.2f} mL) above {rule_text}{bound}."
    unchanged = f"Lesion {target} already holds the region above {rule_text} at the prompt; nothing changed."
    return _make_edit(
        lesion_map, window, after, growth.seed_global, growth.threshold, note, unchanged, new_label=new_label
    )


def _touching_labels(labels: np.ndarray, region: np.ndarray) -> Set[int]:
    """Lesion numbers of the voxels in or 26-adjacent to ``region``."""
    grown = sitk.BinaryDilate(sitk.GetImageFromArray(region.astype(np.uint8)), [1, 1, 1], sitk.sitkBox)
    near = labels[sitk.GetArrayViewFromImage(grown).astype(bool)]
    return {int(v) for v in np.unique(near) if v}


def _make_edit(
    lesion_map: np.ndarray,
    window: _Window,
    after: np.ndarray,
    seed: Optional[Index],
    threshold: Optional[float],
    note: str,
    unchanged_note: str,
    new_label: Optional[int] = None,
    known_removed: Tuple[int, ...] = (),
) -> LesionEdit:
    """The edit from the window's labels to ``after``, cropped to the voxels that change.

    A lesion that vanishes from the window is "removed" when it is known to lie wholly in it
    (``known_removed``) or a count over the map finds none of it outside (the one scan of the map).
    """
    before_window = lesion_map[window.slices]
    differs = before_window != after
    if not differs.any():
        return _unchanged(lesion_map, seed or window.low, seed, threshold, unchanged_note)
    crop = tuple(slice(int(idx.min()), int(idx.max()) + 1) for idx in np.nonzero(differs))
    region = tuple(slice(lo + s.start, lo + s.stop) for lo, s in zip(window.low, crop))
    before, after_crop = before_window[crop].astype(np.uint16), after[crop].copy()
    changed_voxels = differs[crop]
    touched = {int(v) for v in np.unique(before[changed_voxels])} | {
        int(v) for v in np.unique(after_crop[changed_voxels])
    }
    touched.discard(0)
    added = {new_label} & touched if new_label is not None else set()
    removed = set()
    for label in touched - added:
        if np.any(after == label):
            continue
        in_window = int(np.count_nonzero(before_window == label))
        if label in known_removed or int(np.count_nonzero(lesion_map == label)) == in_window:
            removed.add(label)
    changed = touched - added - removed
    return LesionEdit(
        region=region,  # type: ignore[arg-type]
        before=before,
        after=after_crop,
        added=tuple(sorted(added)),
        removed=tuple(sorted(removed)),
        changed=tuple(sorted(changed)),
        seed_kji=seed,
        threshold=threshold,
        note=note,
    )


def _unchanged(
    lesion_map: np.ndarray, voxel: Sequence[int], seed: Optional[Index], threshold: Optional[float], note: str
) -> LesionEdit:
    """An edit that changes nothing: one voxel at the prompt, before = after."""
    region = tuple(slice(int(v), int(v) + 1) for v in voxel)
    labels = lesion_map[region].astype(np.uint16)
    return LesionEdit(region, labels, labels.copy(), (), (), (), seed, threshold, note)  # type: ignore[arg-type]


def _next_label(lesion_map: np.ndarray) -> int:
    """max + 1 (gaps in the numbering are kept): the one scan of the whole map a prompt makes."""
    label = int(lesion_map.max()) + 1
    if label > MAX_LABEL:
        raise PromptError(f"the lesion map already uses lesion number {label - 1}; no number is left for a new lesion")
    return label


def _label_extent(lesion_map: np.ndarray, label: int) -> Optional[Region]:
    """The bounding box of lesion ``label`` in the whole map (None when absent)."""
    slices_with = np.flatnonzero((lesion_map == label).reshape(lesion_map.shape[0], -1).any(axis=1))
    if not slices_with.size:
        return None
    k0, k1 = int(slices_with[0]), int(slices_with[-1]) + 1
    mask = lesion_map[k0:k1] == label
    rows = np.flatnonzero(mask.any(axis=(0, 2)))
    columns = np.flatnonzero(mask.any(axis=(0, 1)))
    return (slice(k0, k1), slice(int(rows[0]), int(rows[-1]) + 1), slice(int(columns[0]), int(columns[-1]) + 1))


def _hottest_voxel(values: np.ndarray, lesion_map: np.ndarray, extent: Region, label: int) -> Index:
    """The voxel of lesion ``label`` where ``values`` is highest (the first of equals)."""
    inside = lesion_map[extent] == label
    flat = int(np.argmax(np.where(inside, values[extent], -np.inf)))
    return tuple(int(v) + s.start for v, s in zip(np.unravel_index(flat, inside.shape), extent))  # type: ignore[return-value]


def _lies_within(
    lesion_map: np.ndarray, extent: Region, label: int, centre: Index, radius_mm: float, spacing: np.ndarray
) -> bool:
    """True when every voxel of lesion ``label`` lies within ``radius_mm`` of ``centre``."""
    for s, c, step in zip(extent, centre, spacing):  # the box alone already says no for large lesions
        if max(c - s.start, s.stop - 1 - c) * step > radius_mm + 1e-6:
            return False
    window = _Window.of(extent)
    inside = lesion_map[extent] == label
    return bool(np.all(window.distance_sq_mm(centre, spacing)[inside] <= radius_mm**2 + 1e-6))


def _nearest_lesion_voxel(
    lesion_map: np.ndarray, click: Index, radius_mm: float, spacing: np.ndarray
) -> Optional[Index]:
    """The clicked voxel when it is in a lesion, else the nearest lesion voxel within ``radius_mm`` (None: none)."""
    if lesion_map[click]:
        return click
    window = _Window.around(click, radius_mm, spacing, lesion_map.shape)
    distance_sq = window.distance_sq_mm(click, spacing)
    candidates = (lesion_map[window.slices] != 0) & (distance_sq <= radius_mm**2 + 1e-6)
    if not candidates.any():
        return None
    nearest = int(np.argmin(np.where(candidates, distance_sq, np.inf)))  # the first of equals: deterministic
    return window.global_(np.unravel_index(nearest, distance_sq.shape))


# --------------------------------------------------------------------------------------------
# Checks of what a prompt is given


def _spacing_kji(grid: Grid) -> np.ndarray:
    """Voxel size (mm) along the array axes [k, j, i]."""
    return np.asarray(grid.spacing[::-1], dtype=float)


def _voxel_at(grid: Grid, point_lps: Sequence[float], what: str) -> Index:
    """The voxel [k, j, i] whose centre is nearest ``point_lps``; a point outside the grid is refused."""
    point = np.asarray(point_lps, dtype=float).reshape(-1)
    if point.shape != (3,) or not np.all(np.isfinite(point)):
        raise PromptError(f"{what} must be three finite LPS coordinates in mm, got {point_lps!r}")
    index = np.floor(grid.lps_to_index(point) + 0.5).astype(int)
    if np.any(index < 0) or np.any(index >= np.asarray(grid.size)):
        x, y, z = point
        raise PromptError(f"{what} at ({x:.1f}, {y:.1f}, {z:.1f}) mm LPS lies outside the PET ({grid.describe()})")
    return (int(index[2]), int(index[1]), int(index[0]))


def _check_on_grid(values: np.ndarray, grid: Grid, what: str) -> None:
    if not isinstance(values, np.ndarray) or values.shape != grid.shape:
        shape = getattr(values, "shape", type(values).__name__)
        raise PromptError(f"the {what} must be an array of shape {grid.shape} (the PET grid [k, j, i]), got {shape}")


def _check_lesion_map(volumes: PromptVolumes, lesion_map: np.ndarray) -> None:
    _check_on_grid(lesion_map, volumes.grid, "lesion map")
    if lesion_map.dtype.kind not in "iu":
        raise PromptError(f"the lesion map must hold lesion numbers (uint16), got {lesion_map.dtype}")


def _box_on_grid(box: AxialBox, shape: Sequence[int]) -> Tuple[int, Tuple[int, int], Tuple[int, int]]:
    """(k, (j0, j1), (i0, i1)) of a box clipped to the grid, corners in either order; a box off the grid is refused."""
    if not isinstance(box, AxialBox):
        raise PromptError(f"a box prompt needs an AxialBox, got {box!r}")
    k = int(box.k)
    j0, j1 = sorted((int(box.j0), int(box.j1)))
    i0, i1 = sorted((int(box.i0), int(box.i1)))
    depth, rows, columns = (int(n) for n in shape)
    if not 0 <= k < depth or j1 < 0 or j0 >= rows or i1 < 0 or i0 >= columns:
        raise PromptError(
            f"the box (slice {box.k}, columns {box.i0}..{box.i1}, rows {box.j0}..{box.j1}) lies outside the PET "
            f"({columns} columns x {rows} rows x {depth} slices)"
        )
    return k, (max(j0, 0), min(j1, rows - 1)), (max(i0, 0), min(i1, columns - 1))
