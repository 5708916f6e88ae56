"""The false-positive filter: a lesion-level classifier on the candidates the network proposes.

    candidates (26-connected components of probability >= threshold)
    --measure--> one feature row per candidate: its size, uptake and contrast to the tissue around it,
                 its CT numbers inside and around it (lung, fat, soft tissue, bone), its shape, the
                 network's probability, and how hot the mirror-image point across the body's midline is
    --classify--> p(lesion) from a small network stored as numbers in a JSON file
    --> candidates with p < the filter's cut are removed (and listed, so a reader can see them).

Why features and not image patches: the filter must train on two CPU cores from the candidates of a
few dozen generated studies, and the false positives it removes are physiology a reader recognises
by exactly these properties: marrow along the spine (bone HU, long in z, symmetric about the
midline), brown fat (fat HU, bilateral), muscle and ureters (elongated), bowel (low contrast to a
hot surround). Physiology that is symmetric about the midline is common, lesions rarely are.

The file is data only (JSON numbers, no pickle): loading it runs no code. Its SHA-256 is in the model
manifest that names it (``model.weights``), like the weights'. Inference is numpy only.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk

from ..errors import ModelFileError
from ..geometry import Grid
from ..lesions import lesion_extents

FILTER_FORMAT = "petct-lesions-fp-filter"
FILTER_FORMAT_VERSION = 1
SHELL_MM = (3.0, 12.0)  # the tissue around a candidate: voxel centres this far (mm) from its border
MIRROR_REACH_MM = 8.0  # the mirror point's neighbourhood searched for the hottest voxel
CONTEXT_MM = SHELL_MM[1] + 1.0
SUV_FLOOR = 0.1  # keeps logs and ratios finite in cold tissue (SUV of lung ~0.3)
# CT classes by HU: air and lung, fat, soft tissue and blood, bone.
HU_BANDS = ((-np.inf, -400.0), (-400.0, -30.0), (-30.0, 150.0), (150.0, np.inf))
BODY_HU = -500.0  # above: the patient (and the table) for the midline

FEATURE_NAMES: Tuple[str, ...] = (
    "log_volume_ml",
    "log_suv_max",
    "suv_mean_over_max",
    "log_contrast",
    "log_shell_suv",
    "shell_hot_fraction",
    "probability_max",
    "probability_mean",
    "ct_mean_inside",
    "inside_lung",
    "inside_fat",
    "inside_soft",
    "inside_bone",
    "shell_lung",
    "shell_fat",
    "shell_soft",
    "shell_bone",
    "log_elongation",
    "principal_axis_z",
    "mirror_over_max",
    "midline_offset",
    "depth",
    "neighbour_candidates",
    "mirror_candidate",
)
_PER_CANDIDATE = len(FEATURE_NAMES) - 2  # the last two compare a candidate with the others
NEIGHBOUR_MM = 50.0  # other candidates' centres this close count as neighbours (physiology comes in groups)
MIRROR_MATCH_MM = 15.0  # another candidate's centre this close to a candidate's mirror image: a symmetric pair
MIDLINE_MM = 15.0  # closer to the midline than this, a candidate is its own mirror image


@dataclass
class FilterDecision:
    """What the filter did with one study's candidates (numbered as in the lesion map it was given)."""

    probabilities: np.ndarray  # p(lesion) per candidate 1..n
    kept: np.ndarray  # bool per candidate
    cut: float

    @property
    def removed(self) -> List[int]:
        return [int(n) + 1 for n in np.flatnonzero(~self.kept)]


@dataclass
class FalsePositiveFilter:
    """A one-hidden-layer network over standardised candidate features (``hidden`` may be empty: logistic)."""

    mean: np.ndarray
    scale: np.ndarray
    hidden_weights: np.ndarray  # (h, f) or (0, f)
    hidden_bias: np.ndarray  # (h,)
    output_weights: np.ndarray  # (h,) or (f,) without a hidden layer
    output_bias: float
    cut: float  # p(lesion) below this removes the candidate
    card: Dict[str, Any] = field(default_factory=dict)

    def probability(self, features: np.ndarray) -> np.ndarray:
        """p(lesion) for each row of ``features`` (columns in FEATURE_NAMES order)."""
        x = (np.asarray(features, np.float64) - self.mean) / self.scale
        if self.hidden_weights.size:
            x = np.tanh(x @ self.hidden_weights.T + self.hidden_bias)
        logit = x @ self.output_weights + self.output_bias
        return 1.0 / (1.0 + np.exp(-np.clip(logit, -60.0, 60.0)))

    def decide(self, features: np.ndarray) -> FilterDecision:
        probabilities = self.probability(features) if len(features) else np.zeros(0)
        return FilterDecision(probabilities, probabilities >= self.cut, self.cut)

    def to_json(self) -> Dict[str, Any]:
        return {
            "format": FILTER_FORMAT,
            "version": FILTER_FORMAT_VERSION,
            "features": list(FEATURE_NAMES),
            "mean": self.mean.tolist(),
            "scale": self.scale.tolist(),
            "hidden_weights": self.hidden_weights.tolist(),
            "hidden_bias": self.hidden_bias.tolist(),
            "output_weights": self.output_weights.tolist(),
            "output_bias": float(self.output_bias),
            "cut": float(self.cut),
            "card": self.card,
        }


def filter_from_json(content: Any, path: Path) -> FalsePositiveFilter:
    """A filter from its JSON content, every number checked (a NaN weight would keep or drop everything)."""
    if not isinstance(content, dict) or content.get("format") != FILTER_FORMAT:
        raise ModelFileError(f"{path}: not a PETCTLesions false-positive filter (no format {FILTER_FORMAT!r})")
    if content.get("version") != FILTER_FORMAT_VERSION or content.get("features") != list(FEATURE_NAMES):
        raise ModelFileError(
            f"{path}: made for filter version {content.get('version')!r} with other candidate features; "
            f"this PETCTLesions measures version {FILTER_FORMAT_VERSION}"
        )
    n = len(FEATURE_NAMES)
    mean = _array(content, "mean", path, (n,))
    scale = _array(content, "scale", path, (n,))
    if np.any(scale <= 0):
        raise ModelFileError(f'{path}: "scale" must be positive numbers')
    hidden = _array(content, "hidden_weights", path, None).reshape(-1, n)
    hidden_bias = _array(content, "hidden_bias", path, (hidden.shape[0],))
    output = _array(content, "output_weights", path, (hidden.shape[0] or n,))
    output_bias = _array(content, "output_bias", path, ())
    cut = _array(content, "cut", path, ())
    if not 0.0 <= float(cut) < 1.0:
        raise ModelFileError(f'{path}: "cut" must be a probability in [0, 1), got {float(cut)}')
    card = content.get("card", {})
    return FalsePositiveFilter(
        mean, scale, hidden, hidden_bias, output, float(output_bias), float(cut), card if isinstance(card, dict) else {}
    )


def _array(content: Dict[str, Any], key: str, path: Path, shape: Optional[Tuple[int, ...]]) -> np.ndarray:
    try:
        values = np.asarray(content[key], dtype=np.float64)
    except (KeyError, TypeError, ValueError) as error:
        raise ModelFileError(f"{path}: {key!r} is missing or not numbers ({error})") from error
    if (shape is not None and values.shape != shape) or not np.all(np.isfinite(values)):
        raise ModelFileError(f"{path}: {key!r} must be finite numbers of shape {shape}, got shape {values.shape}")
    return values


def read_filter(path: Path) -> FalsePositiveFilter:
    path = Path(path)
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ModelFileError(f"{path}: cannot read the false-positive filter ({error})") from error
    return filter_from_json(content, path)


# --------------------------------------------------------------------------------------------
# Candidate features


def candidate_features(
    lesion_map: np.ndarray,
    count: int,
    pet_suv: np.ndarray,
    ct_hu_on_pet: np.ndarray,
    probability: np.ndarray,
    grid: Grid,
) -> np.ndarray:
    """(count, len(FEATURE_NAMES)) float64: one row per candidate 1..count of ``lesion_map`` (all on the PET grid).

    A number absent from the map gets a row of NaN (the caller keeps no such candidate)."""
    rows = np.full((count, len(FEATURE_NAMES)), np.nan)
    if count == 0:
        return rows
    spacing = np.asarray(grid.spacing, float)  # x, y, z
    midline_i = _body_midline(ct_hu_on_pet)
    pad = [int(math.ceil(CONTEXT_MM / s)) for s in spacing[::-1]]  # k, j, i
    centres = np.full((count, 3), np.nan)  # i, j, k in millimetres along the grid's axes
    for number, extent in enumerate(lesion_extents(lesion_map, count), start=1):
        if extent is None:
            continue
        window = tuple(slice(max(s.start - p, 0), min(s.stop + p, n)) for s, p, n in zip(extent, pad, lesion_map.shape))
        inside = lesion_map[window] == number
        rows[number - 1, :_PER_CANDIDATE] = _features_of(
            inside, window, pet_suv, ct_hu_on_pet, probability, spacing, grid.voxel_volume_ml, midline_i
        )
        k, j, i = (index.mean() + start.start for index, start in zip(np.nonzero(inside), window))
        centres[number - 1] = (i * spacing[0], j * spacing[1], k * spacing[2])
    rows[:, _PER_CANDIDATE:] = _group_features(centres, midline_i, spacing)
    return rows


def _group_features(centres: np.ndarray, midline_i: np.ndarray, spacing: np.ndarray) -> np.ndarray:
    """(log(1 + other candidates within NEIGHBOUR_MM), 1 when another candidate sits at the mirror image)."""
    present = np.all(np.isfinite(centres), axis=1)
    result = np.full((len(centres), 2), np.nan)
    result[present] = 0.0
    for n in np.flatnonzero(present):
        others = present.copy()
        others[n] = False
        distances = np.linalg.norm(centres[others] - centres[n], axis=1)
        result[n, 0] = math.log1p(int((distances <= NEIGHBOUR_MM).sum()))
        k = int(np.clip(round(centres[n, 2] / spacing[2]), 0, len(midline_i) - 1))
        middle_mm = midline_i[k] * spacing[0]
        if np.isfinite(middle_mm) and abs(centres[n, 0] - middle_mm) > MIDLINE_MM and others.any():
            mirror = centres[n].copy()
            mirror[0] = 2.0 * middle_mm - mirror[0]
            result[n, 1] = float(np.linalg.norm(centres[others] - mirror, axis=1).min() <= MIRROR_MATCH_MM)
    return result


def _features_of(
    inside: np.ndarray,
    window: Tuple[slice, slice, slice],
    pet_suv: np.ndarray,
    ct_hu: np.ndarray,
    probability: np.ndarray,
    spacing: np.ndarray,
    voxel_ml: float,
    midline_i: np.ndarray,
) -> np.ndarray:
    suv = pet_suv[window].astype(np.float64)
    hu = ct_hu[window].astype(np.float64)
    values = suv[inside]
    suv_max = float(values.max())
    shell = _shell(inside, spacing)
    shell_suv = suv[shell] if shell.any() else np.array([suv_max])
    shell_median = float(np.median(shell_suv))
    peak = np.unravel_index(int(np.argmax(np.where(inside, suv, -np.inf))), suv.shape)
    peak_kji = tuple(int(p) + int(s.start) for p, s in zip(peak, window))
    mirror_max, offset_mm = _mirror(pet_suv, peak_kji, midline_i, spacing)
    lesion_probability = probability[window][inside].astype(np.float64)
    elongation, axis_z = _shape(inside, spacing)
    return np.array(
        [
            math.log(values.size * voxel_ml + 0.01),
            math.log(suv_max + SUV_FLOOR),
            float(values.mean()) / max(suv_max, 1e-6),
            math.log((suv_max + SUV_FLOOR) / (shell_median + SUV_FLOOR)),
            math.log(shell_median + SUV_FLOOR),
            float(np.mean(shell_suv >= 0.5 * suv_max)),
            float(lesion_probability.max()),
            float(lesion_probability.mean()),
            float(np.clip(hu[inside].mean(), -1000.0, 1500.0)) / 1000.0,
            *_band_fractions(hu[inside]),
            *_band_fractions(hu[shell] if shell.any() else hu[inside]),
            elongation,
            axis_z,
            min(mirror_max / max(suv_max, 1e-6), 2.0),
            offset_mm / 100.0,
            _depth_mm(ct_hu, peak_kji, spacing) / 100.0,
        ]
    )


def _depth_mm(ct_hu: np.ndarray, peak_kji: Tuple[int, int, int], spacing: np.ndarray) -> float:
    """How deep in the body (mm, in the slice) the peak lies: brown fat and muscle lie near the skin, nodes deeper.

    The body is the slice's voxels above BODY_HU with its holes (lungs, gas) filled."""
    k, j, i = peak_kji
    body = sitk.GetImageFromArray((ct_hu[k] > BODY_HU).astype(np.uint8))
    body = sitk.BinaryFillhole(body, fullyConnected=False, foregroundValue=1)
    body.SetSpacing((float(spacing[0]), float(spacing[1])))
    distance = sitk.SignedMaurerDistanceMap(body, insideIsPositive=True, squaredDistance=False, useImageSpacing=True)
    return max(float(distance.GetPixel(int(i), int(j))), 0.0)


def _shell(inside: np.ndarray, spacing: np.ndarray) -> np.ndarray:
    """Voxels whose centres lie SHELL_MM from the candidate's border (physical distance, any grid)."""
    image = sitk.GetImageFromArray(inside.astype(np.uint8))
    image.SetSpacing(tuple(float(s) for s in spacing))
    distance = sitk.GetArrayFromImage(sitk.SignedMaurerDistanceMap(image, False, False, True))
    return (distance > SHELL_MM[0]) & (distance <= SHELL_MM[1])


def _band_fractions(hu: np.ndarray) -> List[float]:
    return [float(np.mean((hu >= low) & (hu < high))) for low, high in HU_BANDS]


def _shape(inside: np.ndarray, spacing: np.ndarray) -> Tuple[float, float]:
    """(log of the longest over the shortest principal extent, |z| of the longest axis), in millimetres.

    Each voxel adds its own extent (spacing^2 / 12 per axis), so one voxel is not a line."""
    k, j, i = np.nonzero(inside)
    points = np.stack([i * spacing[0], j * spacing[1], k * spacing[2]], axis=1)
    covariance = np.cov(points.T, bias=True) if len(points) > 1 else np.zeros((3, 3))
    covariance = covariance + np.diag(spacing**2 / 12.0)
    eigenvalues, eigenvectors = np.linalg.eigh(covariance)
    return 0.5 * math.log(eigenvalues[-1] / eigenvalues[0]), abs(float(eigenvectors[2, -1]))


def _body_midline(ct_hu: np.ndarray) -> np.ndarray:
    """The body's left-right centre (column index) on each slice; NaN on a slice without body."""
    body = ct_hu > BODY_HU
    per_column = body.sum(axis=1, dtype=np.int64)  # (k, i)
    total = per_column.sum(axis=1)
    columns = np.arange(ct_hu.shape[2], dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, (per_column * columns).sum(axis=1) / np.maximum(total, 1), np.nan)


def _mirror(
    pet_suv: np.ndarray, peak_kji: Tuple[int, int, int], midline_i: np.ndarray, spacing: np.ndarray
) -> Tuple[float, float]:
    """(hottest SUV near the peak's mirror image across the midline, the peak's distance to the midline in mm)."""
    k, j, i = peak_kji
    middle = midline_i[k]
    if not np.isfinite(middle):
        return 0.0, 0.0
    mirror_i = int(round(2.0 * middle - i))
    reach = [int(math.ceil(MIRROR_REACH_MM / s)) for s in (spacing[2], spacing[1], spacing[0])]
    centre = (k, j, mirror_i)
    box = tuple(slice(max(c - r, 0), min(c + r + 1, n)) for c, r, n in zip(centre, reach, pet_suv.shape))
    region = pet_suv[box]
    mirror_max = float(region.max()) if region.size else 0.0
    return mirror_max, abs(i - middle) * float(spacing[0])


def apply_filter(
    found_filter: FalsePositiveFilter,
    lesion_map: np.ndarray,
    count: int,
    pet_suv: np.ndarray,
    ct_hu_on_pet: np.ndarray,
    probability: np.ndarray,
    grid: Grid,
) -> Tuple[np.ndarray, int, FilterDecision]:
    """(the lesion map without the removed candidates, renumbered 1..kept in the same order, kept, decision)."""
    features = candidate_features(lesion_map, count, pet_suv, ct_hu_on_pet, probability, grid)
    present = np.all(np.isfinite(features), axis=1)
    decision = found_filter.decide(np.nan_to_num(features))
    decision.kept &= present
    renumber = np.zeros(count + 1, lesion_map.dtype)
    renumber[1:][decision.kept] = np.arange(1, int(decision.kept.sum()) + 1, dtype=lesion_map.dtype)
    return renumber[lesion_map], int(decision.kept.sum()), decision


def describe_removed(decision: FilterDecision, sizes_ml: Sequence[float]) -> str:
    """A line for the reader: what the filter removed."""
    removed = decision.removed
    if not removed:
        return ""
    shown = ", ".join(f"{sizes_ml[n - 1]:.2f} mL (p={decision.probabilities[n - 1]:.2f})" for n in removed[:5])
    more = f" and {len(removed) - 5} more" if len(removed) > 5 else ""
    return (
        f"false-positive filter: removed {len(removed)} of {len(decision.kept)} candidate(s) with "
        f"p(lesion) < {decision.cut:.2f}: {shown}{more}"
    )
