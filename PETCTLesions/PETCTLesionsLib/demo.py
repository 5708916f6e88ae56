"""The main job on the built-in demo study.

Generate the synthetic demo patient (chest PET/CT with known lesions), write it as DICOM
(NBIA layout) with its ground truth as Lung-PET-CT-Dx VOC boxes and an nnU-Net case, then do
what a user does with their own data: load the study from DICOM, run the bundled model and
write the detected lesions (lesion table, pictures, nnU-Net case, VOC boxes) under
``OUT/predicted``. The ground truth is only used at the end, to say how the model did.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Optional, Tuple

import numpy as np

from . import metrics
from .errors import PETCTLesionsError
from .fileio import atomic_write_text
from .formats import nnunet
from .jobs import ProgressCallback, report, sub_progress
from .predict import PredictionOptions, StudyPrediction, predict
from .synthetic.phantom import PhantomConfig, PhantomStudy, make_phantom
from .synthetic.synth import DATASET_FOLDER, SyntheticCase, case_seed, refuse_earlier_cases, write_synthetic_case


def run_demo(
    out_dir: Path,
    seed: int = 1,
    size: str = "full",
    overwrite: bool = False,
    device: str = "auto",
    progress: Optional[ProgressCallback] = None,
) -> Tuple[StudyPrediction, SyntheticCase]:
    """Write the demo study, detect its lesions with the bundled model; returns the prediction and the study.

    The prediction keeps the study as ``predict`` loaded it (``StudyPrediction.loaded``), so that
    what is drawn next (the CLI's Slicer views) is the study the lesions were found in, not read again.
    """
    out_dir = Path(out_dir)
    refuse_earlier_cases(out_dir, "lung", seed, cases=1, overwrite=overwrite)  # before saying it started
    report(progress, 0.0, f"generating synthetic patient (seed {seed}, {size} size)")
    study, case = write_demo_study(out_dir, seed, size, overwrite)
    options = PredictionOptions(device=device, overwrite=overwrite, keep_loaded=True)
    results = predict([case.study_dir], out_dir / "predicted", options, progress=sub_progress(progress, 0.4, 1.0))
    (result,) = [r for r in results if not r.left_out]  # the demo folder holds the one study
    if result.error:  # the reason was one of the library's refusals (an earlier result, a full disk), worded
        raise PETCTLesionsError(f"demo study {case.study_dir}: {result.error}")
    report(progress, 1.0, "done")
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


DEMO_COMPLETE_MARKER = "complete"  # written last in a cached demo folder; names the study's DICOM folder


def cached_demo_study(
    cache_root: Path, seed: int = 1, size: str = "full", progress: Optional[ProgressCallback] = None
) -> Path:
    """The demo study's DICOM folder under ``cache_root``, written the first time it is asked for.

    What the module's demo button loads. Each seed and size has its own folder (``seed-1-full``);
    a marker written after the study names its DICOM folder, so a folder without one (an
    interrupted run) is removed and written again.
    """
    folder = Path(cache_root) / f"seed-{seed}-{size}"
    marker = folder / DEMO_COMPLETE_MARKER
    if not marker.is_file():
        shutil.rmtree(folder, ignore_errors=True)
        report(progress, 0.0, f"Generating the demo PET/CT study (seed {seed}) in {folder}")
        _, case = write_demo_study(folder, seed=seed, size=size)
        atomic_write_text(marker, str(case.study_dir.relative_to(folder)))
    return folder / marker.read_text().strip()


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
