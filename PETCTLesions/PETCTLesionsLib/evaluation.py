"""Evaluate detections against references: per study and pooled over a set of studies.

Used by ``petct-lesions evaluate`` (files), by the model benchmark on held-out generated
studies, and by the model card. The metric definitions are in :mod:`.metrics`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Hashable, List, Optional, Sequence, Tuple

import numpy as np

from . import metrics
from .errors import InputError
from .lesions import SliceBox, label_lesions, slice_boxes

HELD_OUT_SEED_BASE = 500_000  # generated studies for the model card; below the validation/training seeds


@dataclass
class Evaluation:
    """Accumulates per-study metrics and per-slice boxes; :meth:`summary` pools them."""

    cases: List[metrics.CaseMetrics] = field(default_factory=list)
    names: List[str] = field(default_factory=list)
    box_predictions: List[Tuple[Hashable, float, metrics.Box]] = field(default_factory=list)
    box_references: Dict[Hashable, List[metrics.Box]] = field(default_factory=dict)

    def add(
        self,
        name: str,
        prediction: np.ndarray,
        reference: np.ndarray,
        voxel_ml: float,
        predicted_boxes: Sequence[SliceBox] = (),
        reference_boxes: Sequence[SliceBox] = (),
        lesion_scores: Optional[Dict[int, float]] = None,
    ) -> metrics.CaseMetrics:
        """Add one study: binary masks on one grid, and optionally its per-slice boxes.

        A predicted box is ranked by its own score when it has one, else by its lesion's:
        ``lesion_scores`` maps a predicted lesion number to its confidence (1.0 when absent).
        """
        result = metrics.case_metrics(prediction, reference, voxel_ml)
        self.cases.append(result)
        self.names.append(name)
        for box in reference_boxes:
            self.box_references.setdefault((name, box.k), []).append(_as_box(box))
        for box in predicted_boxes:
            if box.score is not None:
                score = float(box.score)
            else:
                score = 1.0 if lesion_scores is None else float(lesion_scores.get(box.lesion, 1.0))
            self.box_predictions.append(((name, box.k), score, _as_box(box)))
        return result

    def summary(self) -> Dict[str, float]:
        pooled = metrics.summarise(self.cases)
        pooled["box_map50"] = (
            metrics.box_average_precision(self.box_predictions, self.box_references)
            if self.box_references
            else math.nan
        )
        return pooled

    def table(self) -> str:
        """A plain-text table, one row per study and the pooled summary (names in full: autoPET's
        FDG case ids are long, and their endings tell them apart)."""
        mean_label = f"mean over {len(self.cases)} studies"
        width = max([len("study"), len(mean_label)] + [len(name) for name in self.names])
        lines = [f"{'study':<{width}} {'Dice':>6} {'FPV mL':>8} {'FNV mL':>8} {'lesions':>8} {'found':>6} {'FP':>4}"]
        for name, case in zip(self.names, self.cases):
            lines.append(
                f"{name:<{width}} {_fmt(case.dice):>6} {_fmt(case.fpv_ml, 2):>8} {_fmt(case.fnv_ml, 2):>8} "
                f"{case.reference_lesions:>8} {case.detected_lesions:>6} {case.false_positive_lesions:>4}"
            )
        pooled = self.summary()
        lines.append(
            f"{mean_label:<{width}} {_fmt(pooled['dice']):>6} "
            f"{_fmt(pooled['fpv_ml'], 2):>8} {_fmt(pooled['fnv_ml'], 2):>8}"
        )
        lines.append(
            f"lesion sensitivity {_fmt(pooled['lesion_sensitivity'])}, false-positive lesions per study "
            f"{_fmt(pooled['false_positive_lesions_per_case'], 2)}, box mAP@0.5 {_fmt(pooled['box_map50'])}"
        )
        return "\n".join(lines)


def _as_box(box: SliceBox) -> metrics.Box:
    return (box.c0, box.r0, box.c1, box.r1)


def _fmt(value: float, digits: int = 3) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def axial_boxes(mask: np.ndarray) -> List[SliceBox]:
    """Per-slice boxes of the 26-connected lesions of a binary mask (for file-based evaluation)."""
    lesion_map, _ = label_lesions((np.asarray(mask) > 0).astype(np.uint8))
    return slice_boxes(lesion_map)


LABEL_ENDING = ".nii.gz"
_SHOWN_NAMES = 5  # file names listed in a message before "and N more"


@dataclass
class LabelPairs:
    """What ``evaluate`` compares: (name, predicted file, reference file) pairs, and what it leaves out.

    ``unpredicted``: reference files without a prediction of the same name (not evaluated; only
    with ``partial``, else :func:`label_pairs` refuses). ``unreferenced``: prediction files
    without a reference (never evaluated).
    """

    pairs: List[Tuple[str, Path, Path]]
    unpredicted: List[Path] = field(default_factory=list)
    unreferenced: List[Path] = field(default_factory=list)

    def notes(self) -> List[str]:
        """One line per kind of file left out, naming the files (the first few, then a count)."""
        notes = []
        if self.unpredicted:
            notes.append(
                f"{len(self.unpredicted)} reference case(s) NOT evaluated (no prediction): {_names(self.unpredicted)}"
            )
        if self.unreferenced:
            notes.append(
                f"{len(self.unreferenced)} prediction(s) NOT evaluated (no reference): {_names(self.unreferenced)}"
            )
        return notes


def _names(paths: Sequence[Path]) -> str:
    shown = ", ".join(str(path) for path in paths[:_SHOWN_NAMES])
    return shown + (f" and {len(paths) - _SHOWN_NAMES} more" if len(paths) > _SHOWN_NAMES else "")


def label_pairs(prediction: Path, reference: Path, partial: bool = False) -> LabelPairs:
    """Pair two label files, or two folders of ``<case>.nii.gz`` by file name.

    As nnU-Net's ``nnUNetv2_evaluate_folder`` (without ``--chill``), every reference file needs a
    prediction of the same name: otherwise ValueError naming the missing prediction files (the
    first few and their count), since a mean over fewer cases is not the result asked for. With
    ``partial=True`` the cases present are paired and the others listed in
    :attr:`LabelPairs.unpredicted`. Predictions without a reference are listed in
    :attr:`LabelPairs.unreferenced` either way.
    """
    prediction, reference = Path(prediction), Path(reference)
    if prediction.is_file() and reference.is_file():
        return LabelPairs([(reference.name, prediction, reference)])
    if not (prediction.is_dir() and reference.is_dir()):
        raise InputError(f"--pred {prediction} and --ref {reference} must both be label files or both folders")
    references = label_files(reference)
    predictions = label_files(prediction)
    if not references:
        raise InputError(f"{reference}: no {LABEL_ENDING} label file to evaluate against")
    unpredicted = [path for name, path in references.items() if name not in predictions]
    unreferenced = [path for name, path in predictions.items() if name not in references]
    if unpredicted and not partial:
        missing = [prediction / path.name for path in unpredicted]
        raise InputError(
            f"{prediction}: {len(missing)} of the {len(references)} reference case(s) in {reference} have no "
            f"prediction: missing {_names(missing)}. Evaluate them all, or pass --partial to evaluate only the "
            "cases present"
        )
    pairs = [(name, predictions[name], path) for name, path in references.items() if name in predictions]
    if not pairs:
        raise InputError(f"no label file in {reference} has a prediction of the same name in {prediction}")
    return LabelPairs(pairs, unpredicted=unpredicted, unreferenced=unreferenced)


def label_files(folder: Path) -> Dict[str, Path]:
    """The ``<case>.nii.gz`` label files in ``folder`` by file name."""
    # Hidden files (".case.nii.gz": macOS resource forks, editors' leftovers) are not cases.
    return {
        p.name: p
        for p in sorted(folder.iterdir())
        if p.name.endswith(LABEL_ENDING) and not p.name.startswith(".") and p.is_file()
    }


def evaluate_label_files(pairs: Sequence[Tuple[str, Path, Path]]) -> Evaluation:
    """autoPET metrics and axial-slice box mAP (every predicted box scored 1) for label file pairs."""
    import SimpleITK as sitk

    from .geometry import Grid
    from .lesions import check_binary

    result = Evaluation()
    for name, predicted_path, reference_path in pairs:
        predicted, reference = (read_label(path) for path in (predicted_path, reference_path))
        if not Grid.from_sitk(predicted).same_as(Grid.from_sitk(reference), tolerance_mm=1e-3):
            raise InputError(
                f"{predicted_path}: grid {Grid.from_sitk(predicted).describe()} differs from the reference "
                f"{reference_path}: {Grid.from_sitk(reference).describe()}"
            )
        pred = sitk.GetArrayFromImage(predicted)
        ref = sitk.GetArrayFromImage(reference)
        check_binary(pred, str(predicted_path))
        check_binary(ref, str(reference_path))
        voxel_ml = float(np.prod(predicted.GetSpacing())) / 1000.0
        result.add(name, pred, ref, voxel_ml, axial_boxes(pred), axial_boxes(ref))
    return result


def read_label(path: Path):
    """A label file as a SimpleITK image, checked whole (``formats.nifti.read_nifti``)."""
    from .formats.nifti import read_nifti

    # Checked whole: SimpleITK alone reads a cut-short or damaged file, and NaN voxels as 0.
    return read_nifti(path)
