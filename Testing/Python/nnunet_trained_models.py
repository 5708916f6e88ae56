"""A real nnU-Net v2 trained-model folder, made by nnU-Net's own code, for the tests and the benchmark.

``build_trained_model`` writes a tiny nnU-Net raw dataset of generated PET/CT cases (crops of a
small whole-body phantom, :mod:`PETCTLesionsLib.synthetic.phantom`, around its lesions, written
by :func:`PETCTLesionsLib.formats.nnunet.write_case`), then lets nnU-Net do the rest, as
``nnUNetv2_plan_and_preprocess`` and ``nnUNetv2_train`` would: fingerprint, experiment planning
(a planner with a few features per stage, so that the network runs in a second on the CPU),
preprocessing, and per fold a trainer (``nnUNetTrainer``) initialised and saved through its own
``save_checkpoint`` without training steps: an initialised network is a valid checkpoint. The
model folder is the trainer's output folder (``Dataset.../nnUNetTrainer__<plans>__3d_fullres``)
with ``dataset.json``, ``plans.json`` and ``fold_N/checkpoint_final.pth``, as training leaves it.

nnU-Net reads its folders from the environment (``nnUNet_raw``, ``nnUNet_preprocessed``,
``nnUNet_results``; nnunetv2 before 2.6 when it is imported), so nnU-Net's part runs in a child
process started with them: ``python nnunet_trained_models.py WORK``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Dict, Sequence

import numpy as np
import SimpleITK as sitk

DATASET_ID = 951
DATASET_NAME = f"Dataset{DATASET_ID}_TinyPETCT"
CONFIGURATION = "3d_fullres"
PLANS_NAME = "nnUNetTinyPlans"
CROP_SIZE = (36, 32, 40)  # PET voxels (i, j, k) of each training case: 180 x 160 x 160 mm at 5 x 5 x 4 mm


def write_tiny_dataset(raw_root: Path, seed: int = 5, cases: int = 3) -> Path:
    """``cases`` training cases (CT on the PET grid, PET SUV, lesion label) cropped around the lesions of
    one generated whole-body patient, as an nnU-Net raw dataset in the autoPET layout."""
    from PETCTLesionsLib.formats import nnunet
    from PETCTLesionsLib.resampling import resample_ct_to_pet
    from PETCTLesionsLib.synthetic.phantom import PhantomConfig, make_phantom

    study = make_phantom(PhantomConfig(seed=seed, size="small", body="wholebody", n_lesions=cases))
    ct = study.ct_grid.to_sitk(study.ct_hu.astype(np.float32))
    dataset = Path(raw_root) / DATASET_NAME
    for index, lesion in enumerate(study.lesions[:cases]):
        centre = np.round(study.pet_grid.lps_to_index(np.array([lesion.center_lps]))[0]).astype(int)
        low = np.clip(centre - np.array(CROP_SIZE) // 2, 0, np.array(study.pet_grid.size) - CROP_SIZE)
        grid = study.pet_grid.sub_grid(low.tolist(), (low + CROP_SIZE).tolist())
        window = tuple(slice(int(a), int(a + n)) for a, n in zip(low[::-1], CROP_SIZE[::-1]))
        label = (study.pet_lesion_labels[window] > 0).astype(np.uint8)
        case = nnunet.NnUNetCase(
            f"tiny_{index:03d}",
            resample_ct_to_pet(ct, grid),
            grid.to_sitk(study.pet_suv[window].astype(np.float32)),
            grid.to_sitk(label),
        )
        nnunet.write_case(dataset, case)
    nnunet.update_dataset_json(dataset, dataset_name=DATASET_NAME)
    return dataset


def build_trained_model(work: Path, folds: Sequence[int] = (0, 1), seed: int = 5) -> Path:
    """A trained-model folder of nnU-Net v2 under ``work`` (see the module docstring); returns its path."""
    work = Path(work)
    write_tiny_dataset(work / "nnUNet_raw", seed=seed)
    environment = dict(os.environ, **nnunet_environment(work))
    command = [sys.executable, str(Path(__file__).resolve()), str(work), ",".join(str(f) for f in folds)]
    run = subprocess.run(command, env=environment, capture_output=True, text=True)
    if run.returncode != 0:
        raise RuntimeError(f"nnU-Net could not build the test model:\n{run.stdout[-3000:]}\n{run.stderr[-5000:]}")
    return model_folder(work)


def nnunet_environment(work: Path) -> Dict[str, str]:
    return {
        "nnUNet_raw": str(work / "nnUNet_raw"),
        "nnUNet_preprocessed": str(work / "nnUNet_preprocessed"),
        "nnUNet_results": str(work / "nnUNet_results"),
        "nnUNet_n_proc_DA": "1",
        "nnUNet_def_n_proc": "1",
    }


def model_folder(work: Path) -> Path:
    return Path(work) / "nnUNet_results" / DATASET_NAME / f"nnUNetTrainer__{PLANS_NAME}__{CONFIGURATION}"


def _build_with_nnunet(work: Path, folds: Sequence[int]) -> None:
    """nnU-Net's part, in a process whose environment names its folders."""
    import torch
    from batchgenerators.utilities.file_and_folder_operations import load_json, save_json
    from nnunetv2.experiment_planning.dataset_fingerprint.fingerprint_extractor import DatasetFingerprintExtractor
    from nnunetv2.experiment_planning.experiment_planners.default_experiment_planner import ExperimentPlanner
    from nnunetv2.experiment_planning.plan_and_preprocess_api import (
        extract_fingerprint_dataset,
        plan_experiment_dataset,
        preprocess_dataset,
    )
    from nnunetv2.run.run_training import get_trainer_from_args

    class TinyFingerprintExtractor(DatasetFingerprintExtractor):
        """nnU-Net's fingerprint from 30,000 foreground intensities instead of 10^8 (seconds per case)."""

        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            self.num_foreground_voxels_for_intensitystats = 30_000

    class TinyPlanner(ExperimentPlanner):
        """nnU-Net's default planner with 4 to 16 features per stage instead of 32 to 320."""

        def __init__(self, *args, **kwargs) -> None:
            kwargs["plans_name"] = PLANS_NAME
            super().__init__(*args, **kwargs)
            self.UNet_base_num_features = 4
            self.UNet_max_features_3d = 16

    extract_fingerprint_dataset(DATASET_ID, TinyFingerprintExtractor, num_processes=1, verbose=False)
    plan_experiment_dataset(DATASET_ID, TinyPlanner)
    preprocess_dataset(DATASET_ID, PLANS_NAME, (CONFIGURATION,), (1,), show_progress_bar=False)
    preprocessed = work / "nnUNet_preprocessed" / DATASET_NAME
    plans = load_json(str(preprocessed / f"{PLANS_NAME}.json"))
    dataset_json = load_json(str(work / "nnUNet_raw" / DATASET_NAME / "dataset.json"))
    for fold in folds:
        torch.manual_seed(fold)  # each fold its own initial weights, as its own training run would have
        trainer = get_trainer_from_args(
            DATASET_NAME, CONFIGURATION, fold, "nnUNetTrainer", PLANS_NAME, device=torch.device("cpu")
        )
        trainer.initialize()
        # What on_train_start sets from the plans before training: the axes a prediction may mirror.
        trainer.configure_rotation_dummyDA_mirroring_and_inital_patch_size()
        trainer.save_checkpoint(os.path.join(trainer.output_folder, "checkpoint_final.pth"))
    # What nnUNetTrainer.on_train_start copies beside the folds for inference.
    folder = model_folder(work)
    save_json(plans, str(folder / "plans.json"), sort_keys=False)
    save_json(dataset_json, str(folder / "dataset.json"), sort_keys=False)
    (folder / "dataset_fingerprint.json").write_text(
        (preprocessed / "dataset_fingerprint.json").read_text(encoding="utf-8"), encoding="utf-8"
    )


def set_channel_names(folder: Path, channel_names: Dict[str, str]) -> None:
    """Rename a model folder's input channels in its dataset.json (what a model of other inputs has)."""
    path = Path(folder) / "dataset.json"
    content = json.loads(path.read_text(encoding="utf-8"))
    content["channel_names"] = channel_names
    path.write_text(json.dumps(content, indent=2), encoding="utf-8")


def read_case_arrays(dataset: Path, case_id: str):
    """A case's CT and PET as nnU-Net's reader gives them (float32 [k, j, i]) and its PET image."""
    from PETCTLesionsLib.formats import nnunet

    case = nnunet.read_case(dataset, case_id, images_only=True)
    return (
        sitk.GetArrayFromImage(case.ct).astype(np.float32),
        sitk.GetArrayFromImage(case.pet).astype(np.float32),
        case.pet,
    )


if __name__ == "__main__":
    _build_with_nnunet(Path(sys.argv[1]), [int(f) for f in sys.argv[2].split(",")])
