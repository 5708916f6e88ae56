"""The ``simulate-clicks`` command's work: studies and their reference labels -> detection -> simulated clicks.

For every study under the paths (what ``predict`` takes: DICOM studies in any layout, or one nnU-Net raw
dataset) the model finds the lesions as ``predict`` does (:func:`predict.detect_in_study`,
:func:`predict.detect_in_case`), and :func:`interactive.click_simulation.simulate_clicks` corrects them
with N simulated clicks against the study's reference label: ``<case id>.nii.gz`` in the reference
folder, the file names ``evaluate`` pairs by and ``synth`` writes its ground truth under (or one label
file for a single study). The reference lies on the PET grid, as an nnU-Net label does. Nothing is written.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk

from .detection import Detection
from .errors import Cancelled, InputError, PETCTLesionsError
from .evaluation import LABEL_ENDING, label_files, read_label
from .formats import nnunet
from .geometry import Grid
from .interactive.click_simulation import (
    AUC_VALUES,
    AUTOPET4_BUDGET,
    CORRECTIVE,
    NEGATIVE,
    ClickSimulation,
    mean_auc,
    mean_curve,
    reference_mask,
    simulate_clicks,
)
from .interactive.prompts import PromptOptions, PromptVolumes
from .jobs import CancelCallback, ProgressCallback, report
from .predict import PredictionOptions, check_options, chosen_pairs, detect_in_case, detect_in_study, is_nnunet_dataset

REFERENCE_GRID_TOLERANCE_MM = 1e-3  # as evaluate compares a prediction's grid with its reference's
_SHOWN_NAMES = 5  # names listed in a message before "and N more"

# A study's detection by a model (as predict loads it), run when its turn comes: (PET SUV, the lesions found).
DetectStudy = Callable[[object], Tuple[np.ndarray, Detection]]


@dataclass
class ClickStudyOptions:
    clicks: int = AUTOPET4_BUDGET
    protocol: str = CORRECTIVE
    prompt: PromptOptions = field(default_factory=PromptOptions)
    prediction: PredictionOptions = field(default_factory=lambda: PredictionOptions(pictures=False))


@dataclass
class StudyClicks:
    """One study's simulation, or why there is none."""

    name: str
    reference: Optional[Path] = None
    simulation: Optional[ClickSimulation] = None
    lesions_found: int = 0
    error: Optional[str] = None  # why the study was not simulated (it could not be read, its reference did not fit)


def simulate_click_studies(
    paths: Sequence[Path],
    reference: Path,
    options: ClickStudyOptions,
    progress: Optional[ProgressCallback] = None,
    cancel: Optional[CancelCallback] = None,
) -> List[StudyClicks]:
    """Detect the lesions of every study under ``paths`` and simulate ``options.clicks`` correction steps on
    each against its reference under ``reference``. A study that cannot be read, or whose reference does
    not fit it, is reported in its result and the others go on; a study without a reference file refuses
    the whole run before the model is loaded (InputError naming the missing files)."""
    from .model.inference import choose_working_device
    from .model.nnunet_model import load_detection_model

    check_options(options.prediction)
    studies = _studies([Path(p) for p in paths], options.prediction, cancel)
    references = reference_files(Path(reference), [name for name, _ in studies])  # before the model loads
    model = load_detection_model(options.prediction.model_path, options.prediction.nnunet)  # as predict loads it
    choose_working_device(options.prediction.device)  # a misspelt or missing device fails here, before any study
    results = []
    for index, (name, detect) in enumerate(studies):
        report(progress, index / len(studies), f"study {index + 1} of {len(studies)}: {name}")
        result = StudyClicks(name, references[name])
        try:
            pet, found = detect(model)
            result.lesions_found = len(found.lesions)
            truth = _reference_on(references[name], found.pet_grid)
            volumes = PromptVolumes(pet, found.pet_grid, found.probability)
            result.simulation = simulate_clicks(
                volumes, truth, found.lesion_map, options.clicks, options.protocol, options.prompt, cancel=cancel
            )
        except Cancelled:
            raise
        except (PETCTLesionsError, OSError) as error:  # the library's refusals name the file and the problem
            result.error = str(error)
        results.append(result)
    report(progress, 1.0, f"{len(results)} stud{'y' if len(results) == 1 else 'ies'} done")
    return results


def _studies(paths: List[Path], options: PredictionOptions, cancel) -> List[Tuple[str, DetectStudy]]:
    """Each study's case id (as ``predict`` names it) and its detection, in ``predict``'s order."""
    if len(paths) == 1 and is_nnunet_dataset(paths[0]):
        return list(_dataset_studies(paths[0], options, cancel))
    return list(_dicom_studies(paths, options, cancel))


def _dicom_studies(paths: List[Path], options: PredictionOptions, cancel) -> Iterator[Tuple[str, DetectStudy]]:
    from .dicom.index import scan_paths
    from .study import describe_scan, load_study

    scan = scan_paths(paths, cancel=cancel)
    for study, pair in chosen_pairs(describe_scan(scan), options.pet_series_uids, paths):

        def detect(model, study=study, pair=pair) -> Tuple[np.ndarray, Detection]:
            loaded = load_study(paths, study.study_uid, pair.pet.series_uid, scan=scan, cancel=cancel)
            found, _ = detect_in_study(loaded, model, options, cancel)
            return sitk.GetArrayFromImage(loaded.pet_suv).astype(np.float32), found

        yield nnunet.case_id_for_study(study.patient_id, study.study_uid, study.study_date), detect


def _dataset_studies(dataset: Path, options: PredictionOptions, cancel) -> Iterator[Tuple[str, DetectStudy]]:
    test = bool(nnunet.list_cases(dataset, test=True))  # as predict: imagesTs, else imagesTr
    case_ids = nnunet.list_cases(dataset, test=test)
    if not case_ids:
        raise InputError(f"{dataset}: no cases in imagesTs or imagesTr")
    for case_id in case_ids:

        def detect(model, case_id=case_id) -> Tuple[np.ndarray, Detection]:
            case = nnunet.read_case(dataset, case_id, images_only=True)
            found = detect_in_case(case, model, options, cancel)
            return sitk.GetArrayFromImage(case.pet).astype(np.float32), found

        yield case_id, detect


def reference_files(reference: Path, names: Sequence[str]) -> Dict[str, Path]:
    """Each study's reference label: ``<name>.nii.gz`` in the folder ``reference``, or the file ``reference``
    itself for a single study. InputError naming the studies without one (the first few and their count)."""
    if reference.is_file():
        if len(names) != 1:
            raise InputError(
                f"--ref {reference} is one label file, but the paths hold {len(names)} studies: give the folder "
                f"of their <case id>{LABEL_ENDING} labels"
            )
        return {names[0]: reference}
    if not reference.is_dir():
        raise InputError(f"{reference}: no such file or folder")
    files = label_files(reference)
    missing = [name + LABEL_ENDING for name in names if name + LABEL_ENDING not in files]
    if missing:
        shown = ", ".join(missing[:_SHOWN_NAMES]) + (
            f" and {len(missing) - _SHOWN_NAMES} more" if len(missing) > _SHOWN_NAMES else ""
        )
        raise InputError(
            f"{reference}: {len(missing)} of the {len(names)} studies have no reference label there: missing "
            f"{shown} (a reference is named after the case id predict gives the study)"
        )
    return {name: files[name + LABEL_ENDING] for name in names}


def _reference_on(path: Path, pet_grid: Grid) -> np.ndarray:
    """The reference's lesion voxels (bool), refused when it does not lie on the PET grid."""
    image = read_label(path)
    grid = Grid.from_sitk(image)
    if not grid.same_as(pet_grid, tolerance_mm=REFERENCE_GRID_TOLERANCE_MM):
        raise InputError(
            f"{path}: grid {grid.describe()} differs from the PET's {pet_grid.describe()}; the reference must lie "
            "on the PET grid (as an nnU-Net label does)"
        )
    return reference_mask(sitk.GetArrayViewFromImage(image), str(path))


# ------------------------------------------------------------------------------------ reports

AUC_DEFINITION = "trapezoid of the value over steps 0..N divided by N: (v0/2 + v1 + ... + v(N-1) + vN/2) / N"
_HEADER = f"{'step':>4} {'Dice':>6} {'FPV mL':>8} {'FNV mL':>8} {'sensitivity':>12} {'FP lesions':>11} {'s/click':>8}"


def study_table(result: StudyClicks) -> str:
    """One study's steps: a row per step (its scores and the clicks made), then its AUC."""
    simulation = result.simulation
    if simulation is None:
        return f"{result.name}: NOT simulated: {result.error}"
    steps = len(simulation.steps) - 1
    lines = [
        f"{result.name}: {result.lesions_found} lesion(s) found; {simulation.protocol} protocol, {steps} step(s)",
        f"{_HEADER}  clicks",
    ]
    for step in simulation.steps:
        scores = step.scores
        clicks = "; ".join(f"{'-' if c.kind == NEGATIVE else '+'} {c.target}" for c in step.clicks)
        per_click = step.seconds / len(step.clicks) if step.clicks else math.nan
        lines.append(
            f"{step.number:>4} {_fmt(scores.dice, 3):>6} {_fmt(scores.fpv_ml, 2):>8} {_fmt(scores.fnv_ml, 2):>8} "
            f"{_fmt(scores.sensitivity, 3):>12} {scores.false_positive_lesions:>11} {_fmt(per_click, 3):>8}  "
            f"{clicks or ('(detection)' if step.number == 0 else '(no click)')}"
        )
    lines.append(f"AUC over steps 0..{steps}: Dice {_fmt(simulation.auc('dice'), 3)}")
    return "\n".join(lines)


def mean_table(results: Sequence[StudyClicks]) -> str:
    """The mean curve over the simulated studies (sensitivity pooled, FP lesions per study) and the mean AUC."""
    simulations = [result.simulation for result in results if result.simulation is not None]
    if not simulations:
        return "no study simulated"
    lines = [f"mean over {len(simulations)} stud{'y' if len(simulations) == 1 else 'ies'}", _HEADER]
    for row in mean_curve(simulations):
        lines.append(
            f"{int(row['step']):>4} {_fmt(row['dice'], 3):>6} {_fmt(row['fpv_ml'], 2):>8} {_fmt(row['fnv_ml'], 2):>8} "
            f"{_fmt(row['lesion_sensitivity'], 3):>12} {_fmt(row['false_positive_lesions_per_case'], 2):>11} "
            f"{_fmt(row['seconds_per_click'], 3):>8}"
        )
    steps = len(simulations[0].steps) - 1
    dice, fpv, fnv = (_fmt(mean_auc(simulations, name), 3) for name in AUC_VALUES)
    lines.append(
        f"AUC over steps 0..{steps} (trapezoid / {steps}), mean over studies: Dice {dice}, FPV {fpv} mL, FNV {fnv} mL"
    )
    return "\n".join(lines)


def results_json(results: Sequence[StudyClicks], options: ClickStudyOptions) -> Dict[str, object]:
    """Everything the tables say, as JSON-ready values (NaN as null)."""
    simulations = [result.simulation for result in results if result.simulation is not None]
    return {
        "protocol": options.protocol,
        "clicks": options.clicks,
        "rule": options.prompt.rule.describe(),
        "auc_definition": AUC_DEFINITION,
        "studies": [
            {"name": result.name, "reference": str(result.reference), "lesions_found": result.lesions_found}
            | result.simulation.as_dict()
            for result in results
            if result.simulation is not None
        ],
        "not_simulated": [{"name": result.name, "error": result.error} for result in results if result.error],
        "mean": {
            "studies": len(simulations),
            "auc": {name: _json_number(mean_auc(simulations, name)) for name in AUC_VALUES},
            "steps": [
                {name: value if isinstance(value, int) else _json_number(value) for name, value in row.items()}
                for row in mean_curve(simulations)
            ],
        },
    }


def _fmt(value: float, digits: int) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value:.{digits}f}"


def _json_number(value: float) -> Optional[float]:
    return float(value) if math.isfinite(value) else None
