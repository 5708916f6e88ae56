"""Simulated correction clicks: what N clicks of a reader make of the model's lesions (``simulate-clicks``).

:func:`simulate_clicks` takes a study's PET (SUV) on its grid, a reference lesion map and the lesions a
detection found, lets a simulated reader click through the prompt engine (:mod:`.prompts`: a positive
click adds or grows a lesion, a negative click removes one) and scores the lesions before the first
click (step 0) and after each step 1..N.

Protocols
---------
``corrective`` (the default; the error-driven correction autoPET V moves to). At each step the reader
corrects the largest remaining error, by volume:

- a false-negative component, a 26-connected component of reference voxels that no predicted lesion
  covers (a missed lesion, or the missed part of an under-segmented one), gets a positive click;
- a false-positive lesion, a predicted lesion that touches no reference voxel (what autoPET's FPV
  counts), gets a negative click;

at the component's voxel farthest from its border (the largest Euclidean distance, in mm, to a voxel
outside it; ties: the first in ``[k, j, i]`` order). Between errors of one size a missed component goes
first, then the lower number. Voxels of an over-segmented lesion outside the reference are no error to
click: a negative click removes the lesion it lands on whole, its true part with it. A click the reader
has made before (same kind, same voxel) is not made again: the engine could not correct that error, so
the next largest is taken. With no error left a step makes no click.
Deterministic: the same inputs give the same clicks.

``autopet4``: the click simulator of the autoPET IV challenge (MICCAI 2025, Task 1), as published in
github.com/lab-midas/autoPETCTIV: ``clicks/simulate_clicks.py`` (``simulate_clicks``), its README's
"Task 1" (11 steps: step s gives s tumour and s background clicks) and
``evaluation_metrics/evaluation_metrics.py`` (``compute_interactive_metrics``). Followed here:

- tumour clicks: the 26-connected components of the reference; ``min(N, count)`` of them drawn without
  replacement by ``numpy.random.RandomState(42)`` (the script seeds NumPy with 42); one click at each
  one's distance-transform centre (the maximum of the Euclidean distance transform in voxel units, as the
  script's ``distance_transform_edt`` without spacing); with fewer components than N, edge clicks fill
  in: cycling over the drawn components, a voxel drawn at random among each one's border voxels (those of
  least distance: a face neighbour outside), until there are N;
- background clicks: the 99.75th percentile of the PET over the voxels outside the reference, the
  26-connected components of the voxels above it outside the reference, drawn, centred and filled in
  the same way with the same generator (after the tumour clicks' draws, as in the script);
- all clicks are computed once, from the reference and the PET, never from the prediction; step s makes
  tumour click s (a positive click) and background click s (a negative click).

Where this differs from the published simulator and challenge:

- the challenge gives all clicks so far to the participant's network, which segments again from
  scratch; here each step's clicks go through the prompt engine onto the lesions as corrected so far
  (a background click on no lesion changes nothing). A background click is given to the engine without
  its snap radius: it marks a voxel as background and is not aimed at a lesion nearby (the PET's blur
  puts some of the hot non-tumour regions right beside a lesion, and a snapping negative click there
  would remove the lesion). On a predicted lesion it removes it as a negative click does: whole, its
  true part with it when it is an over-segmented true lesion;
- components are numbered in ``[k, j, i]`` raster order (SimpleITK) and border voxels listed in that
  order, where ``cc3d`` and ``cupy.nonzero`` scan the script's ``[x, y, z]`` array: with more components
  than clicks, and for edge clicks, the same seed draws other components and voxels;
- background edge clicks: the script selects ``labeled_mask == 0`` where its tumour loop selects
  ``labeled_mask > 0``, which leaves no candidate for a component thicker than one voxel, so it falls
  back to a random voxel of the component (and for a one-voxel-thin one to a random voxel anywhere
  outside it); here the component's border voxels, as for tumours;
- no random perturbation of the clicks (the script's optional ``center_offset`` / ``edge_offset``,
  meant for training augmentation); the budget is N (the script's ``click_budget``, 10 in the challenge).

Per step 0..N: Dice, FPV and FNV in mL, reference lesions detected (lesion sensitivity) and
false-positive lesions as :func:`..metrics.case_metrics` computes them (the autoPET definitions:
18-connected components; FPV = predicted components touching no reference voxel, FNV = reference
components no predicted voxel touches), and each click's time in the prompt engine, edit applied.

AUC over steps: the trapezoid of a value (Dice by default) over steps 0..N divided by N,
``(v0 / 2 + v1 + ... + v(N-1) + vN / 2) / N``, so that it lies in Dice's own range whatever N is.
autoPET IV's ``compute_interactive_metrics`` integrates the same trapezoid without dividing
(``cumulative_trapezoid(all_dice, np.arange(n_clicks))[-1]``: 0..10 for 11 steps): N times this AUC.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace
from typing import AbstractSet, Dict, Iterator, List, Optional, Sequence, Set, Tuple

import numpy as np
import SimpleITK as sitk

from .. import metrics
from ..errors import InputError
from ..geometry import Grid
from ..jobs import CancelCallback, ProgressCallback, check_cancel, report
from ..lesions import lesion_extents
from .prompts import PromptOptions, PromptVolumes, negative_click, positive_click

CORRECTIVE, AUTOPET4 = "corrective", "autopet4"
PROTOCOLS = (CORRECTIVE, AUTOPET4)
POSITIVE, NEGATIVE = "positive", "negative"

AUTOPET4_SEED = 42  # clicks/simulate_clicks.py: SEED = 42, np.random.seed(SEED)
AUTOPET4_BACKGROUND_PERCENTILE = 99.75  # of the PET outside the reference
AUTOPET4_BUDGET = 10  # the challenge's clicks of each kind (README, Task 1: 11 steps)
ERROR_CONNECTIVITY = 26  # false-negative components and the autoPET IV simulator's components (cc3d, 26)

VoxelKJI = Tuple[int, int, int]


@dataclass(frozen=True)
class Click:
    """One simulated click on the PET grid and what the prompt engine made of it."""

    kind: str  # POSITIVE or NEGATIVE
    voxel_kji: VoxelKJI
    point_lps: Tuple[float, float, float]  # the voxel's centre, what the engine is given
    target: str  # what the reader aimed at, e.g. "missed lesion, 2.30 mL", "background centre"
    seconds: float = 0.0  # the engine's time for this click, its edit applied to the lesion map
    note: str = ""  # the engine's note (what it did, or why nothing)
    # False: the click marks its voxel, it does not aim at a lesion near it (autoPET IV's background clicks),
    # so the engine is given no snap radius (a negative click then removes only a lesion it lands on).
    snaps: bool = True

    def as_dict(self) -> Dict[str, object]:
        return {
            "kind": self.kind,
            "voxel_kji": list(self.voxel_kji),
            "point_lps_mm": [round(value, 3) for value in self.point_lps],
            "target": self.target,
            "seconds": self.seconds,
            "note": self.note,
        }


@dataclass(frozen=True)
class Step:
    """The lesions after ``number`` steps (0: the detection as it came) and the clicks of this step."""

    number: int
    clicks: Tuple[Click, ...]
    scores: metrics.CaseMetrics

    @property
    def seconds(self) -> float:
        return sum(click.seconds for click in self.clicks)

    def as_dict(self) -> Dict[str, object]:
        scores = self.scores
        return {
            "step": self.number,
            "dice": _number(scores.dice),
            "fpv_ml": _number(scores.fpv_ml),
            "fnv_ml": _number(scores.fnv_ml),
            "lesion_sensitivity": _number(scores.sensitivity),
            "reference_lesions": scores.reference_lesions,
            "detected_lesions": scores.detected_lesions,
            "predicted_lesions": scores.predicted_lesions,
            "false_positive_lesions": scores.false_positive_lesions,
            "seconds": self.seconds,
            "clicks": [click.as_dict() for click in self.clicks],
        }


@dataclass(frozen=True)
class ClickSimulation:
    """One study's steps 0..N under one protocol."""

    protocol: str
    steps: Tuple[Step, ...]
    background_threshold_suv: Optional[float] = (
        None  # autopet4: the 99.75th percentile of the PET outside the reference
    )

    def values(self, name: str = "dice") -> List[float]:
        """A score of every step: ``dice``, ``fpv_ml``, ``fnv_ml``, ``sensitivity``, ``false_positive_lesions``."""
        return [float(getattr(step.scores, name)) for step in self.steps]

    def auc(self, name: str = "dice") -> float:
        """The area under the steps' ``name`` curve over 0..N, divided by N (see the module's docstring)."""
        return area_under_steps(self.values(name))

    @property
    def clicks(self) -> int:
        return sum(len(step.clicks) for step in self.steps)

    def as_dict(self) -> Dict[str, object]:
        return {
            "protocol": self.protocol,
            "auc": {name: _number(self.auc(name)) for name in AUC_VALUES},
            "background_threshold_suv": _number(self.background_threshold_suv),
            "steps": [step.as_dict() for step in self.steps],
        }


AUC_VALUES = ("dice", "fpv_ml", "fnv_ml")


def area_under_steps(values: Sequence[float]) -> float:
    """``(v0 / 2 + v1 + ... + v(N-1) + vN / 2) / N``: the trapezoid over steps 0..N divided by N.

    NaN where a value is NaN (Dice and FNV of a study without reference lesions) or there is no step
    after step 0.
    """
    values = [float(value) for value in values]
    if len(values) < 2:
        return math.nan
    steps = len(values) - 1
    return (sum(values) - (values[0] + values[-1]) / 2.0) / steps


def reference_mask(labels: np.ndarray, what: str) -> np.ndarray:
    """The lesion voxels (bool) of a reference label map, binary (0/1) or one number per lesion.

    InputError naming ``what`` for values that are no lesion labels (negative, fractional, NaN).
    """
    values = np.asarray(labels)
    if values.dtype.kind == "f":
        bad = ~np.isfinite(values) | (values < 0) | (values != np.round(values))
    elif values.dtype.kind in "iu":
        bad = values < 0
    elif values.dtype.kind == "b":
        return values.copy()
    else:
        raise InputError(f"{what}: lesion labels must be numbers, got {values.dtype}")
    if bad.any():
        example = values[bad].flat[0]
        raise InputError(
            f"{what}: {int(np.count_nonzero(bad))} voxel(s) are no lesion label (e.g. {example}); "
            "a reference holds 0 for background and whole numbers > 0 for lesions"
        )
    return values > 0


def simulate_clicks(
    volumes: PromptVolumes,
    reference: np.ndarray,
    lesion_map: np.ndarray,
    clicks: int,
    protocol: str = CORRECTIVE,
    options: Optional[PromptOptions] = None,
    progress: Optional[ProgressCallback] = None,
    cancel: Optional[CancelCallback] = None,
) -> ClickSimulation:
    """Steps 0..``clicks`` of ``protocol`` from ``lesion_map`` (uint16, the detection's lesions; not modified).

    ``reference``: the true lesions on ``volumes.grid``, binary or one number per lesion; ``options``: the
    prompt engine's (default ``PromptOptions()``: 41% of SUVmax).
    """
    options = PromptOptions() if options is None else options
    grid = volumes.grid
    if protocol not in PROTOCOLS:
        raise InputError(f"unknown click protocol {protocol!r}; use one of {', '.join(PROTOCOLS)}")
    if isinstance(clicks, bool) or not isinstance(clicks, (int, np.integer)) or clicks < 1:
        raise InputError(f"the number of clicks must be a whole number >= 1, got {clicks!r}")
    for name, array in (("PET", volumes.pet_suv), ("reference", reference), ("lesion map", lesion_map)):
        if np.shape(array) != grid.shape:
            raise InputError(f"the {name} ({np.shape(array)}) is not on the PET grid {grid.shape}")
    truth = reference_mask(reference, "reference")
    current = np.array(lesion_map, dtype=np.uint16)  # a copy: the caller's map stays as it was
    voxel_ml = grid.voxel_volume_ml
    steps = [Step(0, (), metrics.case_metrics(current > 0, truth, voxel_ml))]
    planned: Optional[Tuple[Tuple[Click, ...], Tuple[Click, ...]]] = None
    threshold = None
    if protocol == AUTOPET4:
        threshold = background_threshold(volumes.pet_suv, truth)
        planned = autopet4_clicks(truth, volumes.pet_suv, grid, clicks, threshold)
    made: Set[Tuple[str, VoxelKJI]] = set()
    for number in range(1, clicks + 1):
        check_cancel(cancel)
        report(progress, (number - 1) / clicks, f"{protocol}: step {number} of {clicks}")
        if planned is None:
            aimed = corrective_clicks(truth, current, grid, made)
        else:
            aimed = tuple(kind[number - 1] for kind in planned if number <= len(kind))
        done = tuple(_click(volumes, current, click, options) for click in aimed)
        made.update((click.kind, click.voxel_kji) for click in done)
        steps.append(Step(number, done, metrics.case_metrics(current > 0, truth, voxel_ml)))
    report(progress, 1.0, f"{protocol}: {clicks} steps done")
    return ClickSimulation(protocol, tuple(steps), threshold)


def _click(volumes: PromptVolumes, lesion_map: np.ndarray, click: Click, options: PromptOptions) -> Click:
    """Make ``click`` through the prompt engine and apply its edit to ``lesion_map`` in place; timed."""
    prompt = positive_click if click.kind == POSITIVE else negative_click
    if not click.snaps:
        options = replace(options, snap_radius_mm=0.0)
    start = time.perf_counter()
    edit = prompt(volumes, lesion_map, click.point_lps, options)
    edit.apply_in_place(lesion_map)
    return replace(click, seconds=time.perf_counter() - start, note=edit.note)


# ----------------------------------------------------------------------------------- corrective


def corrective_clicks(
    truth: np.ndarray, lesion_map: np.ndarray, grid: Grid, made: AbstractSet[Tuple[str, VoxelKJI]] = frozenset()
) -> Tuple[Click, ...]:
    """The corrective reader's next click (none when no error is left that it has not clicked already)."""
    for error in _errors_largest_first(truth, lesion_map):
        voxel = _farthest_from_border(error.inside, error.window, grid.spacing)
        if (error.kind, voxel) not in made:
            return (_aimed(error.kind, voxel, grid, error.describe(lesion_map, grid.voxel_volume_ml)),)
    return ()


@dataclass(frozen=True)
class _Error:
    """One error the corrective reader may click: a false-negative component or a false-positive lesion."""

    kind: str  # POSITIVE: a false-negative component; NEGATIVE: a false-positive lesion
    voxels: int
    number: int  # the component's number, or the lesion's
    window: Tuple[slice, slice, slice]  # its bounding box and one voxel around it
    inside: np.ndarray  # its voxels in the window

    def describe(self, lesion_map: np.ndarray, voxel_ml: float) -> str:
        """What the reader aims at: "missed lesion, 0.70 mL", "missed part of lesion 3, ...", "false positive ..."."""
        volume = f"{self.voxels * voxel_ml:.2f} mL"
        if self.kind == NEGATIVE:
            return f"false positive, {volume} (lesion {self.number})"
        # A missed part lies against the lesion that holds the rest (its 26-neighbourhood, inside the window).
        grown = sitk.BinaryDilate(sitk.GetImageFromArray(self.inside.astype(np.uint8)), [1, 1, 1], sitk.sitkBox)
        beside = lesion_map[self.window][sitk.GetArrayViewFromImage(grown) > 0]
        lesions = np.unique(beside[beside > 0])
        return f"missed part of lesion {int(lesions[0])}, {volume}" if lesions.size else f"missed lesion, {volume}"


def _errors_largest_first(truth: np.ndarray, lesion_map: np.ndarray) -> Iterator[_Error]:
    """Every error, the largest first (a missed component before a false positive of the same size, then by
    number); each one's window is cut out only when the reader gets to it."""
    missed, missed_count = metrics.connected_components(truth & (lesion_map == 0), ERROR_CONNECTIVITY)
    missed_sizes = np.bincount(missed.ravel(), minlength=missed_count + 1)
    lesion_count = int(lesion_map.max())
    lesion_sizes = np.bincount(lesion_map.ravel(), minlength=lesion_count + 1)
    touching = np.zeros(lesion_count + 1, bool)
    touching[np.unique(lesion_map[truth])] = True
    false_positives = [n for n in range(1, lesion_count + 1) if lesion_sizes[n] and not touching[n]]
    order = [(-int(missed_sizes[c]), 0, POSITIVE, c) for c in range(1, missed_count + 1)]
    order += [(-int(lesion_sizes[n]), 1, NEGATIVE, n) for n in false_positives]
    extents = {
        POSITIVE: lesion_extents(missed, missed_count) if missed_count else [],
        NEGATIVE: lesion_extents(lesion_map, lesion_count) if false_positives else [],
    }
    for negative_size, _, kind, number in sorted(order):
        labels = missed if kind == POSITIVE else lesion_map
        window = _padded(extents[kind][number - 1], labels.shape)
        yield _Error(kind, -negative_size, number, window, labels[window] == number)


def _padded(extent: Tuple[slice, slice, slice], shape: Tuple[int, ...]) -> Tuple[slice, slice, slice]:
    """A bounding box grown by one voxel (within the volume), so that its component's border lies inside it."""
    return tuple(slice(max(s.start - 1, 0), min(s.stop + 1, n)) for s, n in zip(extent, shape))  # type: ignore[return-value]


def _aimed(kind: str, voxel: VoxelKJI, grid: Grid, target: str) -> Click:
    k, j, i = voxel
    point = grid.index_to_lps([float(i), float(j), float(k)])
    return Click(kind, voxel, (float(point[0]), float(point[1]), float(point[2])), target)


# -------------------------------------------------------------------------------- distances


def distance_inside(inside: np.ndarray, spacing_xyz: Optional[Sequence[float]] = None) -> np.ndarray:
    """Squared Euclidean distance of each voxel of ``inside`` (bool, ``[k, j, i]``) to the nearest voxel
    outside it (mm with ``spacing_xyz``, else voxels); 0 outside. As ``scipy.ndimage.distance_transform_edt``
    squared: voxels beyond the array are not outside."""
    outside = sitk.GetImageFromArray((~inside).astype(np.uint8))
    if spacing_xyz is not None:
        outside.SetSpacing([float(s) for s in spacing_xyz])
    # The distance map of the outside is positive in the voxels it does not hold: each one's distance to it.
    distance = sitk.SignedMaurerDistanceMap(
        outside, insideIsPositive=False, squaredDistance=True, useImageSpacing=spacing_xyz is not None
    )
    return np.where(inside, sitk.GetArrayFromImage(distance), 0.0)


def _farthest_from_border(
    inside: np.ndarray, window: Tuple[slice, slice, slice], spacing_xyz: Optional[Sequence[float]]
) -> VoxelKJI:
    """The voxel of ``inside`` (a window's mask) farthest from its border, as an index of the whole volume;
    ties: the first in ``[k, j, i]`` order."""
    distance = distance_inside(inside, spacing_xyz)
    distance[~inside] = -1.0  # an isolated voxel has distance 1 and must win over everything outside
    offset = np.unravel_index(int(np.argmax(distance)), inside.shape)
    return tuple(int(o) + s.start for o, s in zip(offset, window))  # type: ignore[return-value]


def _border_voxels(inside: np.ndarray, window: Tuple[slice, slice, slice]) -> np.ndarray:
    """The voxels of ``inside`` nearest its border (least distance, in voxels), as ``(n, 3)`` volume indices
    in ``[k, j, i]`` order: those with a face neighbour outside, or all of a component that has no inner voxel."""
    distance = distance_inside(inside, None)
    least = distance[inside].min()
    starts = np.array([s.start for s in window])
    return np.argwhere(inside & (distance == least)) + starts


# -------------------------------------------------------------------------------- autopet4


def background_threshold(pet_suv: np.ndarray, truth: np.ndarray) -> float:
    """autoPET IV's background level: the 99.75th percentile of the PET outside the reference lesions."""
    outside = np.asarray(pet_suv)[~truth]
    return float(np.percentile(outside, AUTOPET4_BACKGROUND_PERCENTILE)) if outside.size else math.inf


def autopet4_clicks(
    truth: np.ndarray, pet_suv: np.ndarray, grid: Grid, budget: int, threshold: Optional[float] = None
) -> Tuple[Tuple[Click, ...], Tuple[Click, ...]]:
    """(tumour clicks, background clicks), up to ``budget`` of each, as autoPET IV's simulator places them
    (see the module's docstring): from the reference and the PET alone."""
    generator = np.random.RandomState(AUTOPET4_SEED)
    tumour = _component_clicks(truth, budget, generator, grid, POSITIVE, "tumour")
    if threshold is None:
        threshold = background_threshold(pet_suv, truth)
    hot = (np.asarray(pet_suv) > threshold) & ~truth
    background = _component_clicks(hot, budget, generator, grid, NEGATIVE, "background")
    return tumour, tuple(replace(click, snaps=False) for click in background)


def _component_clicks(
    mask: np.ndarray, budget: int, generator: np.random.RandomState, grid: Grid, kind: str, what: str
) -> Tuple[Click, ...]:
    """Centre clicks of up to ``budget`` components of ``mask`` drawn by ``generator``, then edge clicks
    (cycling over the drawn components) until there are ``budget``."""
    labels, count = metrics.connected_components(mask, ERROR_CONNECTIVITY)
    if count == 0:
        return ()
    drawn = generator.choice(np.arange(1, count + 1), size=min(budget, count), replace=False)
    extents = lesion_extents(labels, count)
    windows = {int(n): _padded(extents[n - 1], labels.shape) for n in drawn}
    clicks = [
        _aimed(kind, _farthest_from_border(labels[windows[n]] == n, windows[n], None), grid, f"{what} centre")
        for n in map(int, drawn)
    ]
    while len(clicks) < budget:
        for n in map(int, drawn):
            border = _border_voxels(labels[windows[n]] == n, windows[n])
            voxel = border[generator.choice(len(border))]
            clicks.append(_aimed(kind, (int(voxel[0]), int(voxel[1]), int(voxel[2])), grid, f"{what} edge"))
            if len(clicks) == budget:
                break
    return tuple(clicks)


# -------------------------------------------------------------------------------- over studies


def mean_curve(simulations: Sequence[ClickSimulation]) -> List[Dict[str, float]]:
    """Per step 0..N over the studies: mean Dice, FPV, FNV (NaN-aware, as the challenge averages), pooled
    lesion sensitivity, false-positive lesions per study (:func:`..metrics.summarise`) and the mean time
    per click of that step (NaN where no study clicked)."""
    if not simulations:
        return []
    counts = {len(simulation.steps) for simulation in simulations}
    if len(counts) != 1:
        raise InputError(f"the studies' curves have different numbers of steps ({sorted(counts)})")
    curve = []
    for number in range(counts.pop()):
        steps = [simulation.steps[number] for simulation in simulations]
        row: Dict[str, float] = {"step": number, **metrics.summarise([step.scores for step in steps])}
        clicks = sum(len(step.clicks) for step in steps)
        row["clicks"] = clicks
        row["seconds_per_click"] = sum(step.seconds for step in steps) / clicks if clicks else math.nan
        curve.append(row)
    return curve


def mean_auc(simulations: Sequence[ClickSimulation], name: str = "dice") -> float:
    """The mean over studies of each one's AUC (NaN-aware, as autoPET IV averages its per-case AUCs)."""
    values = [simulation.auc(name) for simulation in simulations]
    finite = [value for value in values if not math.isnan(value)]
    return float(np.mean(finite)) if finite else math.nan


def _number(value: Optional[float]) -> Optional[float]:
    """A value for JSON: NaN and infinity (no JSON number) as null."""
    return None if value is None or not math.isfinite(value) else float(value)
