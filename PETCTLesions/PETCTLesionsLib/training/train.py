"""Train the lesion network on an nnU-Net raw dataset (autoPET layout) or on generated studies.

One command for one CPU, one GPU or many: under ``torchrun`` (WORLD_SIZE > 1) each process
trains on its own GPU (or CPU with gloo) with DistributedDataParallel, draws its own
patients, and rank 0 validates, logs and writes checkpoints.

What a step does: draw a batch of patches (a third centred on lesions, each lesion as likely
as any other) from the case pool, augment on the device (mirroring on every axis, PET
intensity scaling, CT/PET noise), BCE + soft Dice loss, AdamW with warm-up then polynomial
decay, bf16 autocast on CUDA.
An epoch is ``steps_per_epoch`` steps followed by validation on whole studies with the
inference code users run (same tiling, same thresholds) and the autoPET metrics. Files in
the output folder: ``checkpoint_last.pt`` (resume), ``checkpoint_best.pt`` (best validation
Dice), ``training_log.csv``, and at the end the model files (``model.json`` + ``model.pt``,
the same format as the bundled model).
"""

from __future__ import annotations

import concurrent.futures
import csv
import math
import multiprocessing
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from .. import metrics
from ..errors import InputError, OutputExistsError
from ..fileio import atomic_output
from ..model.network import DEFAULT_FEATURES, LesionUNet, count_parameters
from ..model.preprocessing import WORKING_SPACING_MM
from . import data as training_data


@dataclass
class TrainingSettings:
    out_dir: Path
    dataset: Optional[Path] = None  # nnU-Net raw dataset; None: generated studies
    fold: int = 0
    epochs: int = 50
    steps_per_epoch: int = 250
    batch_size: int = 4
    patch: Tuple[int, int, int] = (80, 128, 128)  # z, y, x working voxels (24 x 51 x 51 cm)
    learning_rate: float = 2e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 200
    foreground_fraction: float = training_data.FOREGROUND_FRACTION  # patches centred on a lesion
    features: Tuple[int, ...] = DEFAULT_FEATURES
    workers: int = max(1, (os.cpu_count() or 2) - 1)
    pool_size: int = 48
    validation_cases: int = 6
    threshold: float = 0.5
    synthetic_size: str = "full"  # generator size of the synthetic studies ("small" for quick runs)
    seed: int = 0
    device: str = "auto"
    resume: bool = False
    init_model: Optional[Path] = None  # start from these weights (a model manifest), fresh optimizer
    freeze_batchnorm: bool = False  # keep the BatchNorm statistics of init_model (fine-tuning on small patches)
    overwrite: bool = False  # start again in an out_dir that holds an earlier run (its files are replaced)
    max_minutes: Optional[float] = None
    card: Dict[str, object] = field(default_factory=dict)


# ------------------------------------------------------------------------------ distribution


@dataclass
class _Rank:
    rank: int
    world: int
    device: torch.device

    @property
    def main(self) -> bool:
        return self.rank == 0


def _start_distributed(requested_device: str) -> _Rank:
    from ..model.inference import choose_device

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return _Rank(0, 1, choose_device(requested_device))
    import torch.distributed as dist

    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and requested_device in ("auto", "cuda")
    if use_cuda:
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    device = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    return _Rank(dist.get_rank(), dist.get_world_size(), device)


def _barrier(rank: _Rank) -> None:
    if rank.world > 1:
        import torch.distributed as dist

        dist.barrier()


# ------------------------------------------------------------------------------------- data


def _split(settings: TrainingSettings) -> Tuple[List[str], List[str], str]:
    """Training and validation case ids of an nnU-Net dataset, and where the split came from."""
    from ..formats import nnunet

    cases = nnunet.list_cases(settings.dataset)
    folds = nnunet.read_splits(settings.dataset)
    if folds:
        if not 0 <= settings.fold < len(folds):
            raise InputError(f"{settings.dataset}/splits_final.json has {len(folds)} folds; fold {settings.fold} asked")
        fold = folds[settings.fold]
        return list(fold["train"]), list(fold["val"]), f"splits_final.json fold {settings.fold}"
    # No split file: a fixed 80/20 split of the sorted case ids (every fifth case validates).
    validation = cases[settings.fold % 5 :: 5]
    return [c for c in cases if c not in set(validation)], validation, "every fifth case (no splits_final.json)"


def _sources(settings: TrainingSettings, rank: _Rank):
    if settings.dataset is None:
        size = settings.synthetic_size
        specs = training_data.synthetic_specs(rank.rank, rank.world, settings.seed, size)
        validation = [
            ("synthetic", training_data.VALIDATION_SEED_BASE + n, "wholebody", size)
            for n in range(settings.validation_cases)
        ]
        return specs, validation, f"generated whole-body (75%) and torso (25%) studies, {size} size", None
    from ..formats.nnunet import NnUNetError, list_cases

    dataset = Path(settings.dataset)
    if not (dataset / "dataset.json").is_file():
        raise NnUNetError(f"{dataset}: not an nnU-Net raw dataset (no dataset.json)")
    if not list_cases(dataset):
        raise NnUNetError(f"{dataset / 'imagesTr'}: no cases (no <case>_0000.nii.gz CT files)")
    train_ids, val_ids, how = _split(settings)
    if not train_ids:
        raise NnUNetError(
            f"{dataset}: no training cases: its {len(val_ids)} case(s) are all in the validation split ({how}); "
            "training needs cases outside it"
        )
    specs = training_data.nnunet_specs(settings.dataset, train_ids, rank.rank, settings.seed)
    validation = [("nnunet", str(settings.dataset), c) for c in val_ids[: settings.validation_cases]]
    description = f"{settings.dataset} ({len(train_ids)} training / {len(val_ids)} validation cases, {how})"
    return specs, validation, description, len(train_ids)


# -------------------------------------------------------------------------------- the steps


def _augment(
    images: torch.Tensor, labels: torch.Tensor, generator: torch.Generator
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Mirroring on each axis, PET intensity x0.75-1.33, Gaussian noise; on the training device."""
    device = images.device
    for axis in (2, 3, 4):
        if torch.rand((), generator=generator).item() < 0.5:
            images, labels = images.flip(axis), labels.flip(axis - 1)
    batch = images.shape[0]
    scale = torch.exp((torch.rand(batch, generator=generator) - 0.5) * 0.575).to(device).view(batch, 1, 1, 1)
    suv = torch.expm1(images[:, 1] + 1.0).clamp_min(0.0) * scale
    images = images.clone()
    images[:, 1] = torch.log1p(suv) - 1.0
    noise_level = (torch.rand(batch, 2, generator=generator) * 0.05).to(device).view(batch, 2, 1, 1, 1)
    # The noise itself is drawn on the training device: on the CPU it costs more than the step.
    noise = torch.randn(images.shape, device=device, generator=_device_generator(device, generator))
    return images + noise * noise_level, labels


_DEVICE_GENERATORS: Dict[str, torch.Generator] = {}


def _device_generator(device: torch.device, seed_source: torch.Generator) -> torch.Generator:
    """A generator living on ``device``, seeded once from the CPU generator (reproducible runs)."""
    key = str(device)
    if key not in _DEVICE_GENERATORS:
        seed = int(torch.randint(0, 2**62, (), generator=seed_source))
        _DEVICE_GENERATORS[key] = torch.Generator(device=device).manual_seed(seed)
    return _DEVICE_GENERATORS[key]


def _loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    target = labels.float()
    bce = F.binary_cross_entropy_with_logits(logits, target)
    probability = torch.sigmoid(logits)
    intersection = (probability * target).sum()
    dice = (2 * intersection + 1.0) / (probability.sum() + target.sum() + 1.0)
    return bce + (1.0 - dice)


def _learning_rate(settings: TrainingSettings, step: int, total: int, elapsed_s: float) -> float:
    """Linear warm-up, then polynomial decay to zero at the step budget or the time limit, whichever comes first."""
    if step < settings.warmup_steps:
        return settings.learning_rate * (step + 1) / settings.warmup_steps
    progress = (step - settings.warmup_steps) / max(1, total - settings.warmup_steps)
    if settings.max_minutes:
        progress = max(progress, elapsed_s / (60.0 * settings.max_minutes))
    return settings.learning_rate * (1.0 - min(progress, 1.0)) ** 0.9


def validate(network: LesionUNet, studies, threshold: float, device: torch.device) -> Dict[str, float]:
    """autoPET metrics of the network on whole validation studies (the users' inference path)."""
    return metrics.summarise(_case_metrics_at(network, studies, (threshold,), device)[threshold])


def _case_metrics_at(
    network: LesionUNet, studies, thresholds: Sequence[float], device: torch.device
) -> Dict[float, List[metrics.CaseMetrics]]:
    """Each study's autoPET metrics at each threshold, from the whole-study probability.

    One study at a time: a whole-body probability map is 200 MB at autoPET's 2 mm grid, and
    only the counts are kept.
    """
    from ..detection import lesions_from_probability
    from ..model.inference import predict_probability

    was_training = network.training
    cases: Dict[float, List[metrics.CaseMetrics]] = {threshold: [] for threshold in thresholds}
    for study in studies:
        probability = predict_probability(
            network, study.ct_hu_on_pet, study.pet_suv, study.spacing_xyz, str(device)
        ).probability
        for threshold in thresholds:
            lesion_map, _ = lesions_from_probability(probability, threshold, 0.0, study.voxel_ml)
            cases[threshold].append(metrics.case_metrics(lesion_map > 0, study.label, study.voxel_ml))
        del probability
    network.train(was_training)
    return cases


# ---------------------------------------------------------------------------- the training


def _train_mode(model: torch.nn.Module, freeze_batchnorm: bool) -> None:
    """Training mode; with ``freeze_batchnorm`` the BatchNorm layers stay in evaluation mode.

    A fine-tune on small patches (or small batches) would otherwise replace the running
    statistics learned on large patches with noisy ones, and whole-study inference uses
    those statistics. Their affine weights still learn.
    """
    model.train()
    if freeze_batchnorm:
        for module in model.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.eval()


def train(settings: TrainingSettings, log=print) -> Path:
    """Train as ``settings`` says; returns the manifest path of the final model (rank 0)."""
    out = Path(settings.out_dir)
    if settings.resume:  # before anything is created: a refused resume leaves no empty --out behind
        _check_resumable(out)
    rank = _start_distributed(settings.device)
    torch.manual_seed(settings.seed * 1000 + rank.rank)
    rng = np.random.default_rng(settings.seed * 1000 + rank.rank)
    generator = torch.Generator().manual_seed(settings.seed * 1000 + rank.rank)

    network = LesionUNet(settings.features).to(rank.device)
    optimizer = torch.optim.AdamW(network.parameters(), lr=settings.learning_rate, weight_decay=settings.weight_decay)
    state = {"epoch": 0, "step": 0, "best_dice": -1.0, "history": []}
    if settings.init_model is not None and not settings.resume:
        from ..model.weights import load_model

        network.load_state_dict(load_model(settings.init_model).network.state_dict())
    # The inputs are checked before --out is touched: a run refused for its data leaves no folder.
    specs, validation_specs, data_description, distinct_cases = _sources(settings, rank)
    if rank.main:
        _claim_output_folder(out, settings)
    if settings.resume:
        state = _load_checkpoint(out / "checkpoint_last.pt", network, optimizer, rank.device)
    model = network
    if rank.world > 1:
        model = torch.nn.parallel.DistributedDataParallel(
            network, device_ids=[rank.device.index] if rank.device.type == "cuda" else None
        )

    # A dataset smaller than the pool would fill it with copies: memory and preparation for nothing.
    pool_size = settings.pool_size if distinct_cases is None else min(settings.pool_size, distinct_cases)
    pool = training_data.CasePool(specs, pool_size, settings.workers, seed=settings.seed * 31 + rank.rank)
    studies = _validation_studies(validation_specs, settings.workers) if rank.main else []
    if rank.main:
        log(
            f"training {count_parameters(network) / 1e6:.2f} M parameters on {rank.device} x{rank.world}; data: "
            f"{data_description}; validation: {len(studies)} studies; {settings.epochs} epochs x "
            f"{settings.steps_per_epoch} steps x batch {settings.batch_size} of {settings.patch}"
        )
    total_steps = settings.epochs * settings.steps_per_epoch
    use_cuda = rank.device.type == "cuda"
    started = time.monotonic()
    try:
        pool.refresh(minimum=min(pool_size, max(4, settings.workers // 2)))
        while state["epoch"] < settings.epochs:
            epoch_start = time.monotonic()
            _train_mode(model, settings.freeze_batchnorm)
            losses = []
            for _ in range(settings.steps_per_epoch):
                pool.refresh(minimum=1)
                images, labels = training_data.sample_patches(
                    pool.cases, settings.batch_size, settings.patch, rng, settings.foreground_fraction
                )
                images = torch.from_numpy(images).to(rank.device, non_blocking=True).float()
                labels = torch.from_numpy(labels).to(rank.device, non_blocking=True)
                images, labels = _augment(images, labels, generator)
                for group in optimizer.param_groups:
                    group["lr"] = _learning_rate(settings, state["step"], total_steps, time.monotonic() - started)
                with torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_cuda):
                    logits = model(images)[:, 0]
                loss = _loss(logits.float(), labels)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(network.parameters(), 12.0)
                optimizer.step()
                losses.append(float(loss.detach()))
                state["step"] += 1
            state["epoch"] += 1
            if rank.main:
                scores = validate(network, studies, settings.threshold, rank.device)
                row = {
                    "epoch": state["epoch"],
                    "loss": float(np.mean(losses)),
                    "learning_rate": optimizer.param_groups[0]["lr"],
                    "cases_prepared": pool.prepared,
                    "seconds": time.monotonic() - epoch_start,
                    **{f"val_{k}": v for k, v in scores.items() if k != "cases"},
                }
                state["history"].append(row)
                _log_epoch(out, row, settings, log)
                if scores["dice"] > state["best_dice"]:
                    state["best_dice"] = scores["dice"]
                    best = {"model": network.state_dict(), "epoch": state["epoch"], "scores": scores}
                    _save_checkpoint(out / "checkpoint_best.pt", best)
                last = {"model": network.state_dict(), "optimizer": optimizer.state_dict(), "state": state}
                _save_checkpoint(out / "checkpoint_last.pt", last)
            _barrier(rank)
            if settings.max_minutes is not None and (time.monotonic() - started) / 60.0 >= settings.max_minutes:
                if rank.main:
                    log(f"stopping after epoch {state['epoch']}: time limit of {settings.max_minutes} min reached")
                break
    finally:
        pool.close()
    manifest = out / "model.json"
    if rank.main:
        _restore_best(out, network, rank.device)
        state["threshold"], state["threshold_scores"] = choose_threshold(network, studies, rank.device)
        log(f"threshold {state['threshold']} chosen on the validation studies")
        manifest = _export(out, network, settings, state, data_description, rank)
        log(f"model written: {manifest}")
    _barrier(rank)
    return manifest


RUN_FILES = ("checkpoint_last.pt", "checkpoint_best.pt", "training_log.csv", "model.json", "model.pt")


def _check_resumable(out: Path) -> None:
    checkpoint = out / "checkpoint_last.pt"
    if not out.is_dir():
        raise InputError(f"{out}: no such folder, so no training run to resume; leave out --resume to start one")
    if not checkpoint.is_file():
        raise InputError(
            f"{checkpoint}: no checkpoint to resume from (the run stopped before its first epoch ended, or {out} "
            "holds no run); leave out --resume to start again"
        )


def _claim_output_folder(out: Path, settings: TrainingSettings) -> None:
    """Create ``out``; an earlier run in it is continued (resume), replaced (overwrite) or an error.

    Without this a new run would append to the old log and replace its checkpoints silently.
    """
    out.mkdir(parents=True, exist_ok=True)
    earlier = [name for name in RUN_FILES if (out / name).exists()]
    if not earlier or settings.resume:
        return
    if not settings.overwrite:
        raise OutputExistsError(
            f"{out} holds an earlier training run ({', '.join(earlier)})",
            ": use --resume to continue it, --overwrite to start again there, or another --out",
        )
    for name in earlier:
        (out / name).unlink()


def _validation_studies(specs: Sequence[Tuple], workers: int):
    if workers <= 1 or len(specs) <= 1:
        return [training_data.study_from_spec(spec) for spec in specs]
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(min(workers, len(specs)), context) as executor:
        return list(executor.map(training_data.study_from_spec, specs))


def _log_epoch(out: Path, row: Dict[str, float], settings: TrainingSettings, log) -> None:
    log(
        f"epoch {row['epoch']:>3}/{settings.epochs}  loss {row['loss']:.4f}  val Dice {row['val_dice']:.3f}  "
        f"FPV {row['val_fpv_ml']:.2f} mL  FNV {row['val_fnv_ml']:.2f} mL  "
        f"sensitivity {row['val_lesion_sensitivity']:.2f}  FP/case {row['val_false_positive_lesions_per_case']:.2f}  "
        f"lr {row['learning_rate']:.2e}  {row['seconds']:.0f} s  ({row['cases_prepared']} cases prepared)"
    )
    path = out / "training_log.csv"
    new = not path.exists()
    with open(path, "a", newline="", encoding="utf-8") as stream:
        writer = csv.DictWriter(stream, fieldnames=list(row))
        if new:
            writer.writeheader()
        writer.writerow(row)


def _save_checkpoint(path: Path, checkpoint: Dict) -> None:
    """Write ``checkpoint`` through a temporary file renamed onto ``path`` (``fileio.atomic_output``): a run
    killed or a write that fails (a full disk) part-way leaves the previous checkpoint whole, never a cut one."""
    with atomic_output(path, overwrite=True) as temporary:
        torch.save(checkpoint, temporary)


def _load_checkpoint(path: Path, network: LesionUNet, optimizer, device: torch.device) -> Dict:
    if not path.is_file():
        raise InputError(f"{path}: no checkpoint to resume from")
    checkpoint = torch.load(path, map_location=device, weights_only=False)
    network.load_state_dict(checkpoint["model"])
    optimizer.load_state_dict(checkpoint["optimizer"])
    return checkpoint["state"]


def _restore_best(out: Path, network: LesionUNet, device: torch.device) -> None:
    best = out / "checkpoint_best.pt"
    if best.is_file():
        network.load_state_dict(torch.load(best, map_location=device, weights_only=False)["model"])


THRESHOLD_CANDIDATES = (0.2, 0.3, 0.4, 0.5, 0.6)


def choose_threshold(network: LesionUNet, studies, device: torch.device) -> Tuple[float, Dict[str, Dict]]:
    """The probability threshold with the best Dice + lesion sensitivity on the validation studies,
    among those with at most one false-positive lesion per study (0.5 when none qualifies)."""
    cases = _case_metrics_at(network, studies, THRESHOLD_CANDIDATES, device)
    scores: Dict[str, Dict] = {}
    best, best_value = 0.5, -math.inf
    for threshold in THRESHOLD_CANDIDATES:
        summary = metrics.summarise(cases[threshold])
        scores[str(threshold)] = summary
        value = np.nan_to_num(summary["dice"]) + np.nan_to_num(summary["lesion_sensitivity"])
        if summary["false_positive_lesions_per_case"] <= 1.0 and value > best_value:
            best, best_value = threshold, value
    return best, scores


def _export(out: Path, network: LesionUNet, settings: TrainingSettings, state: Dict, data: str, rank) -> Path:
    from ..model.weights import save_model

    card = dict(settings.card)
    card.update(
        {
            "threshold": state.get("threshold", settings.threshold),
            "working_spacing_mm": list(WORKING_SPACING_MM),
            "training": {
                "data": data,
                "epochs": state["epoch"],
                "steps": state["step"],
                "batch_size": settings.batch_size,
                "patch_zyx": list(settings.patch),
                "learning_rate": settings.learning_rate,
                "foreground_fraction": settings.foreground_fraction,
                "devices": f"{rank.device.type} x{rank.world}",
                "best_validation_dice": state["best_dice"],
                "initial_weights": str(settings.init_model) if settings.init_model else None,
                "batchnorm_statistics": "frozen (from the initial weights)" if settings.freeze_batchnorm else "learned",
            },
            "threshold_choice": state.get("threshold_scores", {}),
            "validation_history": state["history"],
        }
    )
    return save_model(network.cpu(), out / "model.json", _plain_json(card))


def _plain_json(value):
    """JSON-safe copy: NaN (an undefined metric) becomes null, paths become strings."""
    if isinstance(value, dict):
        return {str(k): _plain_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain_json(v) for v in value]
    if isinstance(value, float):
        return None if math.isnan(value) else value
    if isinstance(value, (int, str, bool)) or value is None:
        return value
    return str(value)
