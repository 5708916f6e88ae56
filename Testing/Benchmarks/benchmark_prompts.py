#!/usr/bin/env python3
"""Benchmark: each prompt of the prompt engine (interactive/prompts.py) on autoPET's whole-body PET grid.

The generated whole-body patient (seed 7, full size, ten lesions) resampled onto autoPET's PET grid,
400 x 400 x 326 voxels of 2.0364 x 2.0364 x 3 mm (float32 SUV, 52 M voxels; the lesion map uint16
on the same grid, its lesions rasterised there). SimpleITK runs on --threads threads (2: the
issue's two cores). About 20 prompts of each kind, each timed alone:

- positive click: each lesion missed (removed from the map) and clicked at its centre, then at a
  voxel half its radius off the centre;
- negative click: each lesion clicked at its centre, then beside it (3 voxels past its edge along i
  in the centre's row: 6 mm, within the snap radius), on the full map each time;
- box: each lesion missed and boxed on its centre slice and on the next slice (its tight box there
  grown by one voxel);
- split: each lesion of at least two voxels split between its first and last voxel along i, twice
  (the second time the other way round).

Printed: per kind the median and the largest time, how many prompts changed the map, and the load
average before and after (the machine may be shared). The issue's target: each prompt <= 0.3 s.

    python Testing/Benchmarks/benchmark_prompts.py [--threads 2] [--seed 7]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Tuple

import numpy as np
import SimpleITK as sitk

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "PETCTLesions"))

from PETCTLesionsLib.geometry import Grid  # noqa: E402
from PETCTLesionsLib.interactive.prompts import (  # noqa: E402
    AxialBox,
    LesionEdit,
    PromptVolumes,
    box_prompt,
    negative_click,
    positive_click,
    split_lesion,
)
from PETCTLesionsLib.resampling import resample_to_grid  # noqa: E402
from PETCTLesionsLib.synthetic.phantom import PhantomConfig, make_phantom  # noqa: E402

AUTOPET_GRID_SIZE = (400, 400, 326)
AUTOPET_SPACING = (2.0364, 2.0364, 3.0)
TARGET_SECONDS = 0.3


def _load() -> str:
    return "load average " + ", ".join(f"{value:.2f}" for value in os.getloadavg())


def autopet_sized_study(seed: int) -> Tuple[PromptVolumes, np.ndarray, List[Tuple[int, int, int]]]:
    """(volumes, lesion map, each lesion's centre voxel [k, j, i]) on autoPET's PET grid."""
    study = make_phantom(PhantomConfig(seed=seed, size="full", body="wholebody", n_lesions=10))
    size, spacing = np.array(AUTOPET_GRID_SIZE), np.array(AUTOPET_SPACING)
    phantom_grid = study.pet_grid
    centre = np.array(phantom_grid.origin) + (np.array(phantom_grid.size) - 1) * np.array(phantom_grid.spacing) / 2
    grid = Grid(tuple(int(n) for n in size), tuple(spacing), tuple(centre - (size - 1) * spacing / 2))
    pet = resample_to_grid(phantom_grid.to_sitk(study.pet_suv), grid, sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    lesion_map = study.lesion_labels_on(grid)
    centres = []
    for lesion in study.lesions:
        voxel = np.floor(grid.lps_to_index(lesion.center_lps) + 0.5).astype(int)[::-1]
        if np.all(voxel >= 0) and np.all(voxel < grid.shape) and lesion_map[tuple(voxel)] == lesion.label:
            centres.append(tuple(int(v) for v in voxel))
    return PromptVolumes(sitk.GetArrayFromImage(pet), grid), lesion_map, centres


def _timed(prompt: Callable[..., LesionEdit], *arguments) -> Tuple[float, bool]:
    """(seconds, whether the edit changes the map) of one prompt."""
    start = time.perf_counter()
    edit = prompt(*arguments)
    return time.perf_counter() - start, not edit.is_empty


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2, help="SimpleITK threads (default 2)")
    parser.add_argument("--seed", type=int, default=7, help="the generated patient (default 7)")
    args = parser.parse_args()
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(args.threads)

    start = time.perf_counter()
    volumes, lesion_map, centres = autopet_sized_study(args.seed)
    grid = volumes.grid
    print(f"study: {grid.describe()}, {len(centres)} lesions, made in {time.perf_counter() - start:.1f} s")
    print(f"SimpleITK threads: {args.threads}; {_load()}")

    def point(kji) -> np.ndarray:
        return grid.index_to_lps([kji[2], kji[1], kji[0]])

    times: Dict[str, List[Tuple[float, bool]]] = {"positive click": [], "negative click": [], "box": [], "split": []}
    for centre in centres:
        label = int(lesion_map[centre])
        lesion = lesion_map == label
        missed = np.where(lesion, 0, lesion_map).astype(np.uint16)
        k, j, i = np.nonzero(lesion)
        radius_voxels = max(1, int((i.max() - i.min()) // 4))
        off_centre = (centre[0], centre[1], min(centre[2] + radius_voxels, int(i.max())))
        for click in (centre, off_centre):
            times["positive click"].append(_timed(positive_click, volumes, missed, point(click)))
        row = np.nonzero(lesion[centre[0], centre[1]])[0]  # the lesion's columns in the centre's row
        beside = (centre[0], centre[1], int(row.max()) + 3)
        for click in (centre, beside):
            times["negative click"].append(_timed(negative_click, volumes, lesion_map, point(click)))
        for slice_k in (centre[0], min(centre[0] + 1, int(k.max()))):
            rows, columns = j[k == slice_k], i[k == slice_k]
            box = AxialBox(
                slice_k, int(columns.min()) - 1, int(rows.min()) - 1, int(columns.max()) + 1, int(rows.max()) + 1
            )
            times["box"].append(_timed(box_prompt, volumes, missed, box))
        if k.size >= 2:
            first, last = int(np.argmin(i)), int(np.argmax(i))
            ends = [(int(k[n]), int(j[n]), int(i[n])) for n in (first, last)]
            for a, b in (ends, ends[::-1]):
                times["split"].append(_timed(split_lesion, volumes, lesion_map, point(a), point(b)))

    print(f"{'prompt':<16}{'n':>4}{'changed':>9}{'median s':>10}{'max s':>8}  target <= {TARGET_SECONDS} s")
    for kind, runs in times.items():
        seconds = [s for s, _ in runs]
        changed = sum(1 for _, c in runs if c)
        verdict = "ok" if max(seconds) <= TARGET_SECONDS else "over"
        print(f"{kind:<16}{len(runs):>4}{changed:>9}{statistics.median(seconds):>10.3f}{max(seconds):>8.3f}  {verdict}")
    print(_load())


if __name__ == "__main__":
    main()
