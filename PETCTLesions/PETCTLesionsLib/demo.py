"""The main job on the built-in demo study.

Generate the synthetic demo patient (chest PET/CT with known lesions), write it as DICOM
(NBIA layout) with its ground truth as Lung-PET-CT-Dx VOC boxes and an nnU-Net case, then do
what a user does with their own data: load the study from DICOM, run the bundled model and
write the detected lesions (lesion table, pictures, nnU-Net case, VOC boxes) under
``OUT/predicted``. The ground truth is only used at the end, to say how the model did.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional, Tuple

import numpy as np

from . import metrics
from .formats import nnunet
from .predict import PredictionOptions, StudyPrediction, predict
from .synthetic.phantom import PhantomConfig, PhantomStudy, make_phantom
from .synthetic.synth import DATASET_FOLDER, SyntheticCase, case_seed, refuse_earlier_cases, write_synthetic_case

ProgressCallback = Callable[[float, str], None]


def run_demo(
    out_dir: Path,
    seed: int = 1,
    size: str = "full",
    overwrite: bool = False,
    device: str = "auto",
    progress: Optional[ProgressCallback] = None,
) -> Tuple[StudyPrediction, SyntheticCase]:
    """Write the demo study, detect its lesions with the bundled model; returns the prediction and the study."""
    report = progress or (lambda fraction, message: None)
    out_dir = Path(out_dir)
    refuse_earlier_cases(out_dir, "lung", seed, cases=1, overwrite=overwrite)  # before saying it started
    report(0.0, f"generating synthetic patient (seed {seed}, {size} size)")
    study, case = write_demo_study(out_dir, seed, size, overwrite)

    def detection_progress(fraction: float, message: str) -> None:
        report(0.4 + 0.6 * fraction, message)

    options = PredictionOptions(device=device, overwrite=overwrite)
    results = predict([case.study_dir], out_dir / "predicted", options, progress=detection_progress)
    (result,) = [r for r in results if not r.left_out]  # the demo folder holds the one study
    if result.error:
        raise ValueError(f"demo study {case.study_dir}: {result.error}")
    report(1.0, "done")
    _print_summary(study, case, result, out_dir)
    return result, case


def write_demo_study(
    out_dir: Path, seed: int = 1, size: str = "full", overwrite: bool = False
) -> Tuple[PhantomStudy, SyntheticCase]:
    """The demo patient on disk: DICOM (NBIA layout), ground-truth VOC boxes and nnU-Net case.

    The same seed always gives the same patient (also the one the module's demo button loads).
    An earlier demo's study in ``out_dir`` is refused before the patient is generated.
    """
    refuse_earlier_cases(Path(out_dir), "lung", seed, cases=1, overwrite=overwrite)
    study = make_phantom(PhantomConfig(seed=case_seed(seed, 0), size=size, body="torso"))
    case = write_synthetic_case(study, Path(out_dir), "lung", seed, 0, overwrite=overwrite)
    nnunet.update_dataset_json(Path(out_dir) / "nnUNet_raw" / DATASET_FOLDER, dataset_name=DATASET_FOLDER)
    return study, case


def _print_summary(study, case: SyntheticCase, result: StudyPrediction, out_dir: Path) -> None:
    found = result.detection
    reference = study.lesion_mask_pet()
    truth = metrics.case_metrics(found.mask, reference, study.pet_grid.voxel_volume_ml)
    print(f"Patient {case.patient_id}: {detections_against_truth(found.lesion_map, reference, truth)}")
    print(f"Against the ground truth: Dice {truth.dice:.3f}, FPV {truth.fpv_ml:.2f} mL, FNV {truth.fnv_ml:.2f} mL")
    print(f"{'lesion':>6} {'MTV mL':>8} {'SUVmax':>7} {'SUVpeak':>8} {'SUVmean':>8} {'TLG':>8}")
    for lesion in found.lesions:
        print(
            f"{lesion.label:>6} {lesion.mtv_ml:>8.2f} {lesion.suv_max:>7.2f} {lesion.suv_peak:>8.2f} "
            f"{lesion.suv_mean:>8.2f} {lesion.tlg:>8.1f}"
        )
    predicted = out_dir / "predicted"
    print(f"DICOM study:     {case.study_dir}")
    print(f"Ground truth:    {out_dir / 'Annotation'} (VOC), {out_dir / 'nnUNet_raw'} (nnU-Net)")
    print(f"Detections:      {predicted} (lesions.csv, pictures/, nnUNet_raw/, Annotation/)")
    notes = f" ({'; '.join(found.notes)})" if found.notes else ""
    print(f"Model on:        {found.device} in {result.seconds:.1f} s{notes}")


def detections_against_truth(lesion_map: np.ndarray, reference: np.ndarray, truth: metrics.CaseMetrics) -> str:
    """How the detections compare with the truth, e.g. "4 detected: 3 of the 4 true lesions, 1 false positive".

    The detections are the lesion table's rows (``lesion_map``'s lesions); a false positive is one
    that touches no true lesion. The true lesions found are ``truth``'s (autoPET's 18-connected
    count), so where a detection covers two true lesions or one true lesion is detected in pieces,
    the detections on true lesions are counted too, and the numbers still add up.
    """
    detected = int(lesion_map.max())
    on_truth = np.unique(lesion_map[np.asarray(reference) > 0])
    true_detections = int(np.count_nonzero(on_truth))
    false_positives = detected - true_detections
    plural = "" if truth.reference_lesions == 1 else "s"
    text = f"{detected} detected: {truth.detected_lesions} of the {truth.reference_lesions} true lesion{plural}"
    if true_detections != truth.detected_lesions:
        text += f" (by {true_detections} detection{'' if true_detections == 1 else 's'})"
    return text + f", {false_positives} false positive{'' if false_positives == 1 else 's'}"
