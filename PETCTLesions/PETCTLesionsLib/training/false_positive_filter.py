"""Training the false-positive filter on two CPU cores (``petct-lesions train-fp-filter``).

    generated studies (a generator variation, seeds of its own)
    --the network, as detection runs it--> candidates at the model's threshold
    --model.false_positive_filter.candidate_features--> one row per candidate,
      labelled lesion when it touches a reference lesion (autoPET's rule for a true positive)
    --fit--> a small network (numpy, full-batch Adam, class-balanced cross-entropy, L2)
    --cut--> chosen out of fold (studies split into folds, never a study in two): the highest
             p(lesion) cut that keeps ``target_recall`` of the true lesions' candidates.

Everything is numpy and deterministic in its seed; the candidates of a run are cached (``.npz``) so
that fitting again costs seconds, not the network's minutes.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..detection import lesions_from_probability
from ..errors import InputError
from ..fileio import atomic_output, atomic_write_text
from ..geometry import Grid
from ..jobs import CancelCallback, ProgressCallback, check_cancel, report
from ..lesions import lesion_extents
from ..model.false_positive_filter import FEATURE_NAMES, FalsePositiveFilter, candidate_features

FILTER_SEED_BASE = 2_000_000  # generated studies for the filter; apart from the network's (>= 1,000,000 used so far)


@dataclass
class CandidateSet:
    """Every candidate of a set of studies: its features, whether it is a lesion, where it came from."""

    features: np.ndarray  # (n, len(FEATURE_NAMES))
    is_lesion: np.ndarray  # (n,) bool
    study: np.ndarray  # (n,) index into study_names
    tissue: List[str] = field(default_factory=list)  # physiology under the candidate's hottest voxel ("" unknown)
    study_names: List[str] = field(default_factory=list)

    @classmethod
    def empty(cls) -> CandidateSet:
        return cls(np.zeros((0, len(FEATURE_NAMES))), np.zeros(0, bool), np.zeros(0, np.int64))

    def extend(self, name: str, features: np.ndarray, is_lesion: np.ndarray, tissue: Sequence[str]) -> None:
        index = len(self.study_names)
        self.study_names.append(name)
        self.features = np.concatenate([self.features, features])
        self.is_lesion = np.concatenate([self.is_lesion, is_lesion])
        self.study = np.concatenate([self.study, np.full(len(features), index, np.int64)])
        self.tissue += list(tissue)

    def save(self, path: Path) -> None:
        with atomic_output(Path(path), overwrite=True) as temporary, open(temporary, "wb") as stream:
            np.savez_compressed(
                stream,
                features=self.features,
                is_lesion=self.is_lesion,
                study=self.study,
                tissue=np.array(self.tissue, dtype=str),
                study_names=np.array(self.study_names, dtype=str),
                feature_names=np.array(FEATURE_NAMES, dtype=str),
            )

    @classmethod
    def load(cls, path: Path) -> CandidateSet:
        with np.load(Path(path), allow_pickle=False) as content:
            if list(content["feature_names"]) != list(FEATURE_NAMES):
                raise InputError(f"{path}: candidates measured with other features; collect them again")
            return cls(
                content["features"],
                content["is_lesion"].astype(bool),
                content["study"],
                [str(t) for t in content["tissue"]],
                [str(s) for s in content["study_names"]],
            )


def study_candidates(
    probability: np.ndarray,
    threshold: float,
    pet_suv: np.ndarray,
    ct_hu_on_pet: np.ndarray,
    grid: Grid,
    reference: np.ndarray,
    tissue_map: Optional[np.ndarray] = None,
    tissue_names: Sequence[str] = (),
) -> Tuple[np.ndarray, np.ndarray, List[str]]:
    """(features, is_lesion, tissue under each candidate's hottest voxel) of one study's candidates."""
    lesion_map, count = lesions_from_probability(probability, threshold)
    features = candidate_features(lesion_map, count, pet_suv, ct_hu_on_pet, probability, grid)
    if tissue_map is None:
        tissue = [""] * count
    else:
        tissue = tissue_under_peaks(lesion_map, count, pet_suv, tissue_map, tissue_names)
    return features, touches_reference(lesion_map, count, reference), tissue


def touches_reference(lesion_map: np.ndarray, count: int, reference: np.ndarray) -> np.ndarray:
    """Per candidate 1..count: does it touch a reference lesion (autoPET's rule for a true positive)."""
    touched = np.zeros(count + 1, bool)
    touched[np.unique(lesion_map[(reference > 0) & (lesion_map > 0)])] = True
    return touched[1:]


def tissue_under_peaks(
    lesion_map: np.ndarray, count: int, pet_suv: np.ndarray, tissue_map: np.ndarray, tissue_names: Sequence[str]
) -> List[str]:
    """Per candidate 1..count: the generator's tissue under its hottest voxel ("" for a number not in the map)."""
    tissue = []
    for number, extent in enumerate(lesion_extents(lesion_map, count), start=1):
        if extent is None:
            tissue.append("")
            continue
        inside = lesion_map[extent] == number
        peak = np.unravel_index(int(np.argmax(np.where(inside, pet_suv[extent], -np.inf))), inside.shape)
        tissue_id = int(tissue_map[extent][peak])
        tissue.append(tissue_names[tissue_id] if tissue_id < len(tissue_names) else f"tissue {tissue_id}")
    return tissue


def study_name(seed: int, variation: Optional[str], size: str) -> str:
    """How a generated study is named in a candidate set and a filter's card."""
    return f"seed {seed} ({variation or 'no variation'}, {size})"


def generated_candidates(
    model,
    plan: Sequence[Tuple[int, Optional[str]]],
    size: str = "small",
    body: str = "wholebody",
    device: str = "cpu",
    progress: Optional[ProgressCallback] = None,
    cancel: Optional[CancelCallback] = None,
) -> CandidateSet:
    """The candidates ``model`` proposes on the generated studies of ``plan`` ((seed, variation) each),
    labelled from their truth."""
    from ..synthetic.phantom import PhantomConfig, make_phantom
    from .data import phantom_study_arrays

    candidates = CandidateSet.empty()
    for n, (seed, variation) in enumerate(plan):
        check_cancel(cancel)
        report(progress, n / max(len(plan), 1), f"study {n + 1} of {len(plan)} (seed {seed})")
        study = make_phantom(PhantomConfig(seed=int(seed), size=size, body=body, variation=variation))
        arrays = phantom_study_arrays(study)
        result = model.predict_probability(arrays.ct_hu_on_pet, arrays.pet_suv, study.pet_grid.spacing, device=device)
        features, is_lesion, tissue = study_candidates(
            result.probability,
            model.threshold,
            arrays.pet_suv,
            arrays.ct_hu_on_pet,
            study.pet_grid,
            study.pet_lesion_labels,
            study.pet_tissue,
            study.tissue_names,
        )
        candidates.extend(study_name(int(seed), variation, size), features, is_lesion, tissue)
    report(progress, 1.0, f"{len(candidates.is_lesion)} candidates from {len(plan)} studies")
    return candidates


# --------------------------------------------------------------------------------------------
# Fitting


@dataclass(frozen=True)
class FitOptions:
    # Chosen out of fold (hidden 0/4/8/16, L2 1e-3/1e-2/1e-1, recall 0.95-0.98): the bundled filter's.
    hidden: int = 16  # 0: logistic regression
    l2: float = 1e-3
    steps: int = 1500
    learning_rate: float = 0.03
    target_recall: float = 0.98  # of the true lesions' candidates, out of fold
    folds: int = 4
    seed: int = 0


def fit_filter(candidates: CandidateSet, options: FitOptions = FitOptions()) -> Tuple[FalsePositiveFilter, Dict]:
    """A filter fitted on all ``candidates``, its cut chosen out of fold; and the out-of-fold numbers."""
    x, y = candidates.features, candidates.is_lesion.astype(np.float64)
    if len(y) == 0 or y.all() or not y.any():
        raise InputError(
            f"the false-positive filter needs both lesion and non-lesion candidates; got {int(y.sum())} lesion and "
            f"{int(len(y) - y.sum())} other candidates: use more or more varied studies"
        )
    out_of_fold = np.zeros(len(y))
    folds = _study_folds(candidates.study, options.folds, options.seed)
    for fold in range(options.folds):
        test = folds == fold
        if test.any() and (~test).any() and 0 < y[~test].sum() < (~test).sum():
            out_of_fold[test] = _fit(x[~test], y[~test], options).probability(x[test])
        else:
            out_of_fold[test] = 1.0  # a fold that cannot be fitted keeps its candidates
    cut = _cut_for_recall(out_of_fold[y > 0], options.target_recall)
    fitted = _fit(x, y, options)
    fitted.cut = cut
    kept = out_of_fold >= cut
    studies = len(candidates.study_names) or int(candidates.study.max()) + 1
    numbers = {
        "candidates": int(len(y)),
        "lesion_candidates": int(y.sum()),
        "studies": studies,
        "cut": cut,
        "out_of_fold_recall": float(kept[y > 0].mean()),
        "out_of_fold_false_positives_per_study_before": float((y == 0).sum() / studies),
        "out_of_fold_false_positives_per_study_after": float((kept & (y == 0)).sum() / studies),
    }
    return fitted, numbers


def _study_folds(study: np.ndarray, folds: int, seed: int) -> np.ndarray:
    studies = np.unique(study)
    order = np.random.default_rng(seed).permutation(studies)
    fold_of = {int(s): n % folds for n, s in enumerate(order)}
    return np.array([fold_of[int(s)] for s in study], np.int64)


def _cut_for_recall(lesion_probabilities: np.ndarray, target_recall: float) -> float:
    """The highest cut that keeps ``target_recall`` of these candidates (ties kept)."""
    if len(lesion_probabilities) == 0:
        return 0.0
    ordered = np.sort(lesion_probabilities)
    allowed_losses = int(math.floor((1.0 - target_recall) * len(ordered) + 1e-9))
    return float(min(ordered[allowed_losses], 0.99))


def _fit(x: np.ndarray, y: np.ndarray, options: FitOptions) -> FalsePositiveFilter:
    """Full-batch Adam on class-balanced cross-entropy + L2 (numpy; a few hundred to thousands of rows)."""
    rng = np.random.default_rng(options.seed)
    mean = x.mean(axis=0)
    scale = x.std(axis=0)
    scale[scale < 1e-6] = 1.0
    z = (x - mean) / scale
    n, f = z.shape
    weight = np.where(y > 0, 0.5 / max(y.mean(), 1e-9), 0.5 / max(1.0 - y.mean(), 1e-9)) / n
    h = options.hidden
    params = {
        "w1": rng.normal(0.0, 1.0 / math.sqrt(f), (h, f)),
        "b1": np.zeros(h),
        "w2": rng.normal(0.0, 1.0 / math.sqrt(max(h, 1)), h if h else f),
        "b2": np.zeros(()),
    }
    moments = {key: (np.zeros_like(value), np.zeros_like(value)) for key, value in params.items()}
    for step in range(1, options.steps + 1):
        gradients = _gradients(params, z, y, weight, options.l2, h)
        for key, gradient in gradients.items():
            m, v = moments[key]
            m *= 0.9
            m += 0.1 * gradient
            v *= 0.999
            v += 0.001 * gradient * gradient
            params[key] = params[key] - options.learning_rate * (m / (1 - 0.9**step)) / (
                np.sqrt(v / (1 - 0.999**step)) + 1e-8
            )
    return FalsePositiveFilter(
        mean, scale, params["w1"] if h else np.zeros((0, f)), params["b1"], params["w2"], float(params["b2"]), 0.5
    )


def _gradients(params: Dict[str, np.ndarray], z, y, weight, l2: float, hidden: int) -> Dict[str, np.ndarray]:
    if hidden:
        activation = np.tanh(z @ params["w1"].T + params["b1"])
        logit = activation @ params["w2"] + params["b2"]
    else:
        activation, logit = z, z @ params["w2"] + params["b2"]
    error = weight * (1.0 / (1.0 + np.exp(-np.clip(logit, -60, 60))) - y)  # d loss / d logit
    gradients = {"w2": activation.T @ error + l2 * params["w2"], "b2": np.asarray(error.sum())}
    if hidden:
        back = np.outer(error, params["w2"]) * (1.0 - activation * activation)
        gradients["w1"] = back.T @ z + l2 * params["w1"]
        gradients["b1"] = back.sum(axis=0)
    else:
        gradients["w1"] = np.zeros_like(params["w1"])
        gradients["b1"] = np.zeros_like(params["b1"])
    return gradients


def write_filter(found_filter: FalsePositiveFilter, path: Path, card: Dict[str, Any], overwrite: bool = False) -> Path:
    """Write the filter's JSON (numbers only) atomically, with what it was trained on in its card."""
    found_filter.card = dict(card)
    text = json.dumps(found_filter.to_json(), indent=1, sort_keys=True) + "\n"
    atomic_write_text(Path(path), text, overwrite=overwrite)
    return Path(path)


VARIATION_SEED_STEP = 100_000  # the studies of the n-th variation start at first_seed + n * this


def filter_training_seeds(
    variations: Sequence[Optional[str]], studies: int, first_seed: int
) -> List[Tuple[int, Optional[str]]]:
    """(seed, variation) of every study: ``studies`` per variation, each variation's seeds apart from the others'."""
    if studies > VARIATION_SEED_STEP:
        raise InputError(f"at most {VARIATION_SEED_STEP} studies per variation, got {studies}")
    return [
        (first_seed + index * VARIATION_SEED_STEP + n, variation)
        for index, variation in enumerate(variations)
        for n in range(studies)
    ]


def train_filter_on_generated(
    model,
    studies: int,
    variations: Sequence[Optional[str]],
    size: str = "small",
    first_seed: int = FILTER_SEED_BASE,
    options: FitOptions = FitOptions(),
    cache: Optional[Path] = None,
    progress: Optional[ProgressCallback] = None,
    cancel: Optional[CancelCallback] = None,
) -> Tuple[FalsePositiveFilter, Dict[str, Any]]:
    """Collect candidates from ``studies`` generated studies per variation (or read them from ``cache``) and fit."""
    start = time.perf_counter()
    plan = filter_training_seeds(variations, studies, first_seed)
    if cache is not None and Path(cache).is_file():
        candidates = CandidateSet.load(cache)
        source = f"candidates read from {Path(cache).name}: {len(candidates.study_names)} studies"
    else:
        candidates = generated_candidates(model, plan, size, progress=progress, cancel=cancel)
        if cache is not None:
            candidates.save(cache)
        source = (
            f"{studies} generated whole-body studies per variation ({', '.join(v or 'none' for v in variations)}), "
            f"size {size}, seeds from {first_seed} (variation n: + n x {VARIATION_SEED_STEP})"
        )
    found_filter, numbers = fit_filter(candidates, options)
    card = {
        "trained_on": source,
        "studies": candidates.study_names,
        "model": getattr(model, "name", ""),
        "threshold": float(model.threshold),
        "hidden": options.hidden,
        "l2": options.l2,
        "steps": options.steps,
        "target_recall": options.target_recall,
        "out_of_fold": numbers,
        "seconds": round(time.perf_counter() - start, 1),
    }
    return found_filter, card
