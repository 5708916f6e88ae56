#!/usr/bin/env python3
"""Lesion model benchmark: speed and memory on an autoPET-sized study, accuracy on held-out studies.

Speed: a generated whole-body patient is resampled onto autoPET's PET grid (400 x 400 x 326
voxels of 2.0364 x 2.0364 x 3 mm, 2 channels). Printed: model time (network incl. moving to
and from the working grid, whole volume on CUDA / slabs on CPU), end-to-end time (arrays in ->
lesions with measurements + per-CT-slice boxes), peak RAM of the process (and peak GPU memory).
Targets (issue 5): H100 model <= 1.0 s, end-to-end <= 3 s; 2 CPU cores <= 120 s, <= 6 GB.

Accuracy (``--held-out N``): N generated whole-body studies with seeds HELD_OUT_SEED_BASE + n,
never used in training (training seeds start at 1,000,000, validation at 900,000): Dice,
FPV, FNV (autoPET), lesion sensitivity, false-positive lesions per study, box mAP@0.5 on
CT slices. Targets: Dice >= 0.85, sensitivity >= 0.90 at <= 1 FP per study, mAP >= 0.87.
The generator's own description of every lesion also gives the sensitivity by true diameter
and by site, which shows where the misses are, and whether the missed lesions were visible:
a missed lesion whose PET peak stands at least ``VISIBLE_CONTRAST`` local noise SDs above its
surroundings is a miss of the model, not of the physics; the same criterion counts the
background spots as strong (outside every lesion and finding), i.e. what such a plain
contrast rule would add as false positives. ``--box-ceiling`` scores the true lesions'
boxes drawn from PET voxels instead (no model): the box mAP a perfect PET-grid mask would get
without tracing at CT resolution.

    python Testing/Benchmarks/benchmark_model.py [--device cpu|cuda] [--held-out 20] [--no-speed] [--box-ceiling]

On Linux it starts again with ``GLIBC_TUNABLES=glibc.malloc.hugetlb=1``, as the command line's
model commands and the Slicer worker do (see PETCTLesionsLib/hugepages.py); run it with
``GLIBC_TUNABLES=glibc.malloc.hugetlb=0`` to time without huge pages.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import multiprocessing
import os
import resource
import sys
import time
from pathlib import Path
from typing import Iterator

import numpy as np
import SimpleITK as sitk

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "PETCTLesions"))

from PETCTLesionsLib import detection, evaluation  # noqa: E402
from PETCTLesionsLib.geometry import Grid  # noqa: E402
from PETCTLesionsLib.hugepages import restart_with_huge_pages  # noqa: E402
from PETCTLesionsLib.lesions import slice_boxes  # noqa: E402
from PETCTLesionsLib.model import weights  # noqa: E402
from PETCTLesionsLib.resampling import resample_ct_to_pet, resample_to_grid  # noqa: E402
from PETCTLesionsLib.synthetic.phantom import PhantomConfig, make_phantom  # noqa: E402
from PETCTLesionsLib.training.data import phantom_study_arrays  # noqa: E402

AUTOPET_GRID_SIZE = (400, 400, 326)
AUTOPET_SPACING = (2.0364, 2.0364, 3.0)


def _peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # kB on Linux


def autopet_sized_study(seed: int):
    study = make_phantom(PhantomConfig(seed=seed, size="full", body="wholebody"))
    centre = np.mean(study.pet_grid.extent_lps(), axis=0)
    half = (np.asarray(AUTOPET_GRID_SIZE) - 1) / 2.0 * np.asarray(AUTOPET_SPACING)
    grid = Grid(AUTOPET_GRID_SIZE, AUTOPET_SPACING, tuple(float(v) for v in centre - half))
    pet = sitk.GetArrayFromImage(resample_to_grid(study.pet_grid.to_sitk(study.pet_suv), grid, sitk.sitkLinear, 0.0))
    ct = sitk.GetArrayFromImage(resample_ct_to_pet(study.ct_grid.to_sitk(study.ct_hu), grid))
    return study, grid, ct.astype(np.float32), pet.astype(np.float32)


def speed(model, device: str) -> dict:
    import torch

    from PETCTLesionsLib.model.inference import predict_probability

    study, grid, ct, pet = autopet_sized_study(seed=evaluation.HELD_OUT_SEED_BASE + 999)
    print(f"speed study: {grid.describe()}, 2 channels; device {device}")
    cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    predict_probability(model.network, ct[:64], pet[:64], grid.spacing, device=device)  # warm-up (kernels, caches)
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    model_times, total_times = [], []
    for _ in range(3 if cuda else 1):
        start = time.perf_counter()
        predict_probability(model.network, ct, pet, grid.spacing, device=device)
        model_times.append(time.perf_counter() - start)
        start = time.perf_counter()
        found = detection.detect_lesions(model, ct, pet, grid, device=device)
        boxes = detection.ct_slice_boxes(found, study.ct_grid)
        total_times.append(time.perf_counter() - start)
    result = {
        "device": found.device,
        "model_s": min(model_times),
        "end_to_end_s": min(total_times),
        "lesions_found": len(found.lesions),
        "ct_slice_boxes": len(boxes),
        "peak_rss_gb": _peak_rss_gb(),
    }
    if cuda:
        result["peak_gpu_gb"] = torch.cuda.max_memory_allocated() / 1e9
        result["gpu"] = torch.cuda.get_device_name()
    return result


DIAMETER_BINS_MM = ((5.0, 10.0), (10.0, 20.0), (20.0, 50.0))
VISIBLE_CONTRAST = 7.0  # local noise SDs


def local_contrast(pet_suv: np.ndarray) -> tuple:
    """(contrast, local maxima) on the PET grid, in voxels: lightly smoothed SUV minus its local
    mean (9 x 9 x 5 voxels), over the local RMS of that difference (11 x 11 x 7 voxels)."""
    smooth = sitk.DiscreteGaussian(sitk.GetImageFromArray(pet_suv.astype(np.float32)), 0.49, 32, 0.01, False)
    residual = smooth - sitk.BoxMean(smooth, [4, 4, 2])
    noise = sitk.Sqrt(sitk.BoxMean(residual * residual, [5, 5, 3])) + 1e-3
    maxima = sitk.GetArrayFromImage(smooth) == sitk.GetArrayFromImage(sitk.GrayscaleDilate(smooth, [1, 1, 1]))
    return sitk.GetArrayFromImage(residual / noise), maxima


def _dilated(mask: np.ndarray, voxels: int) -> np.ndarray:
    image = sitk.GetImageFromArray(mask.astype(np.uint8))
    return sitk.GetArrayFromImage(sitk.BinaryDilate(image, [voxels] * 3, sitk.sitkBox)).astype(bool)


def visibility(pet_suv: np.ndarray, labels: np.ndarray, truth: list, found_mask: np.ndarray) -> tuple:
    """(peak local contrast of each true lesion, background spots at least VISIBLE_CONTRAST strong)."""
    contrast, maxima = local_contrast(pet_suv)
    # One voxel around each lesion (lesions are generated apart, so a grey dilation keeps their numbers).
    around = sitk.GetArrayFromImage(sitk.GrayscaleDilate(sitk.GetImageFromArray(labels.astype(np.uint16)), [1, 1, 1]))
    inside = around > 0
    peak_of = np.zeros(int(around.max()) + 1)
    np.maximum.at(peak_of, around[inside], contrast[inside])
    peaks = [float(peak_of[n]) if n < len(peak_of) else 0.0 for n, _, _ in truth]
    elsewhere = ~_dilated((labels > 0) | (found_mask > 0), 2)
    return peaks, int(np.count_nonzero(maxima & elsewhere & (contrast >= VISIBLE_CONTRAST)))


def _held_out_study(seed: int):
    """Generate one held-out study and keep what the evaluation needs (runs in a worker process)."""
    study = make_phantom(PhantomConfig(seed=seed, size="full", body="wholebody"))
    truth = [(lesion.label, lesion.diameter_mm, lesion.site) for lesion in study.lesions]
    return (
        seed,
        study.pet_grid,
        study.ct_grid,
        phantom_study_arrays(study),
        slice_boxes(study.ct_lesion_labels),
        study.pet_lesion_labels,
        truth,
    )


def sensitivity_by(found_lesions: list) -> dict:
    """Lesion sensitivity by true diameter and by site, from rows that start (diameter mm, site, detected)."""
    groups = {f"{lo:g}-{hi:g} mm": [row for row in found_lesions if lo <= row[0] < hi] for lo, hi in DIAMETER_BINS_MM}
    for site in sorted({row[1] for row in found_lesions}):
        groups[site] = [row for row in found_lesions if row[1] == site]
    return {
        name: {"lesions": len(rows), "detected": sum(row[2] for row in rows)} for name, rows in groups.items() if rows
    }


def _held_out_studies(count: int, workers: int) -> Iterator[tuple]:
    """The ``count`` held-out studies in seed order, generated by ``workers`` processes."""
    seeds = [evaluation.HELD_OUT_SEED_BASE + n for n in range(count)]
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(max(1, workers), context) as pool:
        yield from pool.map(_held_out_study, seeds)


def held_out(model, device: str, count: int, workers: int) -> dict:
    result = evaluation.Evaluation()
    found_lesions = []  # (true diameter mm, site, detected, peak local contrast) of every reference lesion
    background_spots = 0
    for seed, pet_grid, ct_grid, arrays, reference_boxes, labels, truth in _held_out_studies(count, workers):
        start = time.perf_counter()
        found = detection.detect_lesions(model, arrays.ct_hu_on_pet, arrays.pet_suv, pet_grid, device=device)
        predicted = detection.ct_slice_boxes(found, ct_grid)
        case = result.add(
            f"held-out seed {seed}",
            found.mask,
            arrays.label,
            pet_grid.voxel_volume_ml,
            predicted,
            reference_boxes,
            {lesion.label: lesion.score for lesion in found.lesions},
        )
        peaks, spots = visibility(arrays.pet_suv, labels, truth, found.mask)
        background_spots += spots
        for (n, diameter, site), peak in zip(truth, peaks):
            found_lesions.append((diameter, site, bool(found.mask[labels == n].any()), peak))
        print(
            f"  seed {seed}: Dice {case.dice:.3f}, lesions {case.detected_lesions}/{case.reference_lesions}, "
            f"FP {case.false_positive_lesions}  (detection {time.perf_counter() - start:.1f} s)",
            flush=True,
        )
    print(result.table())
    by = sensitivity_by(found_lesions)
    print("lesion sensitivity by true diameter and by site:")
    for name, group in by.items():
        print(f"  {name:<12} {group['detected']:>3}/{group['lesions']:<3} {group['detected'] / group['lesions']:.3f}")
    missed = [row for row in found_lesions if not row[2]]
    visible = [row for row in missed if row[3] >= VISIBLE_CONTRAST]
    print(
        f"missed lesions standing >= {VISIBLE_CONTRAST:g} local noise SDs above their surroundings: {len(visible)} of "
        f"{len(missed)} ({sum(row[0] < 10 for row in visible)} of them under 10 mm); background spots as strong, "
        f"outside lesions and findings: {background_spots} in {count} studies"
    )
    return {
        **result.summary(),
        "sensitivity_by": by,
        "missed_visible": len(visible),
        "missed": len(missed),
        "background_spots_as_visible": background_spots,
    }


def box_ceiling(count: int, workers: int) -> float:
    """Box mAP@0.5 of the true PET-grid lesion map moved to the CT by nearest neighbour: what a
    perfect PET-grid segmentation scores when its boxes are drawn from PET voxels (no model)."""
    result = evaluation.Evaluation()
    for seed, pet_grid, ct_grid, arrays, reference_boxes, labels, _ in _held_out_studies(count, workers):
        _, predicted = detection.lesions_on_ct(labels, pet_grid, ct_grid)
        result.add(f"seed {seed}", arrays.label, arrays.label, pet_grid.voxel_volume_ml, predicted, reference_boxes)
    box_map = result.summary()["box_map50"]
    print(f"box mAP@0.5 of the true PET-grid lesions, boxes from PET voxels, {count} studies: {box_map:.3f}")
    return box_map


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=None, help="model manifest (default: the bundled model)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--held-out", type=int, default=0, help="number of held-out studies to evaluate")
    parser.add_argument("--workers", type=int, default=1, help="processes generating the held-out studies")
    parser.add_argument("--no-speed", action="store_true")
    parser.add_argument(
        "--box-ceiling",
        action="store_true",
        help="with --held-out: score the true PET-grid lesions' boxes drawn from PET voxels instead of the model",
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the numbers to this JSON file")
    args = parser.parse_args()
    # Measure what users get: the command line and the Slicer worker run the model with huge pages.
    restart_with_huge_pages([sys.executable, __file__, *sys.argv[1:]])
    model = weights.load_model(args.model)
    numbers = {"model": model.name, "GLIBC_TUNABLES": os.environ.get("GLIBC_TUNABLES", "")}
    if not args.no_speed:
        numbers["speed"] = speed(model, args.device)
        print(json.dumps(numbers["speed"], indent=2))
    if args.held_out and args.box_ceiling:
        numbers["box_map50_true_pet_lesions_from_pet_voxels"] = box_ceiling(args.held_out, args.workers)
    elif args.held_out:
        numbers["held_out"] = held_out(model, args.device, args.held_out, args.workers)
        print(json.dumps(numbers["held_out"], indent=2))
    if args.json:
        args.json.write_text(json.dumps(numbers, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
