#!/usr/bin/env python3
"""The false-positive filter on studies from generator settings it never saw (issue 23).

For each generated whole-body study the network runs once; its candidates (components of
probability >= the model's threshold) are then scored twice, without and with the filter, so both
columns come from the same probabilities:

- autoPET metrics (Dice, FPV, FNV), lesion sensitivity, false-positive lesions per study, box
  mAP@0.5 on CT slices (boxes traced at CT resolution as detection does);
- lesion sensitivity by true diameter and by site (the generator's own description of each lesion);
- every false positive by the physiology under its hottest voxel (the generator's tissue map: e.g.
  cancellous_bone = marrow, brown_fat, active_muscle, ureter, bowel);
- the filter's own time per study (features + classifier).

Studies: ``--variation held_out`` (default) draws physiology and scanners from the ranges held out
of the filter's training (``synthetic/variation.py`` lists them); seeds from ``--first-seed``
(default 700000: never used by training, validation, the tests or the other benchmarks).
``--variation none --first-seed 500000 --size full`` repeats the model benchmark's 20 held-out studies.

    python Testing/Benchmarks/benchmark_false_positives.py [--variation held_out] [--studies 12] [--size small]
        [--first-seed 700000] [--filter FILE] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "PETCTLesions"))

from benchmark_model import sensitivity_by  # noqa: E402  (this folder: the model benchmark's own breakdown)

from PETCTLesionsLib import detection, evaluation  # noqa: E402
from PETCTLesionsLib.hugepages import restart_with_huge_pages  # noqa: E402
from PETCTLesionsLib.lesions import slice_boxes  # noqa: E402
from PETCTLesionsLib.model import weights  # noqa: E402
from PETCTLesionsLib.model.false_positive_filter import apply_filter, read_filter  # noqa: E402
from PETCTLesionsLib.synthetic.phantom import PhantomConfig, make_phantom  # noqa: E402
from PETCTLesionsLib.training.data import phantom_study_arrays  # noqa: E402
from PETCTLesionsLib.training.false_positive_filter import tissue_under_peaks, touches_reference  # noqa: E402

HELD_OUT_FIRST_SEED = 700_000
COLUMNS = ("network", "network + filter")


class Column:
    """One way of scoring (without or with the filter): metrics, lesions found, false positives' tissues."""

    def __init__(self) -> None:
        self.evaluation = evaluation.Evaluation()
        self.found: List[tuple] = []  # (diameter mm, site, detected)
        self.false_positive_tissues: Counter = Counter()

    def add(self, name, study, arrays, lesion_map, probability, threshold) -> evaluation.metrics.CaseMetrics:
        grid = study.pet_grid
        _, boxes = detection.lesions_on_ct(lesion_map, grid, study.ct_grid, probability, threshold)
        case = self.evaluation.add(
            name,
            (lesion_map > 0).astype(np.uint8),
            arrays.label,
            grid.voxel_volume_ml,
            boxes,
            slice_boxes(study.ct_lesion_labels),
        )
        labels = study.pet_lesion_labels
        for lesion in study.lesions:
            self.found.append((lesion.diameter_mm, lesion.site, bool((lesion_map[labels == lesion.label] > 0).any())))
        count = int(lesion_map.max())
        tissues = tissue_under_peaks(lesion_map, count, arrays.pet_suv, study.pet_tissue, study.tissue_names)
        for tissue, true in zip(tissues, touches_reference(lesion_map, count, labels)):
            if tissue and not true:  # "": a number the filter left out of the map
                self.false_positive_tissues[tissue] += 1
        return case

    def summary(self, studies: int) -> Dict:
        pooled = self.evaluation.summary()
        return {
            **{key: float(value) for key, value in pooled.items()},
            "sensitivity_by": sensitivity_by(self.found),
            "false_positives_by_tissue": dict(self.false_positive_tissues.most_common()),
            "studies": studies,
        }


def run(model, candidate_filter, seeds: List[int], variation: Optional[str], size: str, device: str) -> Dict:
    columns = {name: Column() for name in COLUMNS}
    filter_seconds = []
    for seed in seeds:
        start = time.perf_counter()
        study = make_phantom(PhantomConfig(seed=seed, size=size, body="wholebody", variation=variation))
        arrays = phantom_study_arrays(study)
        generated = time.perf_counter()
        result = model.predict_probability(arrays.ct_hu_on_pet, arrays.pet_suv, study.pet_grid.spacing, device=device)
        detected = time.perf_counter()
        lesion_map, count = detection.lesions_from_probability(result.probability, model.threshold)
        filtered_map, _, decision = apply_filter(
            candidate_filter, lesion_map, count, arrays.pet_suv, arrays.ct_hu_on_pet, result.probability, study.pet_grid
        )
        filter_seconds.append(time.perf_counter() - detected)
        line = [f"seed {seed}:"]
        for name, found_map in zip(COLUMNS, (lesion_map, filtered_map)):
            case = columns[name].add(f"seed {seed}", study, arrays, found_map, result.probability, model.threshold)
            line.append(
                f"{name}: Dice {case.dice:.3f} lesions {case.detected_lesions}/{case.reference_lesions} "
                f"FP {case.false_positive_lesions};"
            )
        seconds = (generated - start, detected - generated, filter_seconds[-1])
        line.append("generate {:.1f} s, network {:.1f} s, filter {:.2f} s".format(*seconds))
        print(" ".join(line), flush=True)
    return {
        "studies": f"{len(seeds)} generated whole-body studies, size {size}, variation {variation or 'none'}, "
        f"seeds {seeds[0]}-{seeds[-1]}",
        "filter_seconds_mean": float(np.mean(filter_seconds)),
        "filter_seconds_max": float(np.max(filter_seconds)),
        **{name: column.summary(len(seeds)) for name, column in columns.items()},
    }


def print_report(numbers: Dict) -> None:
    print(f"\n{numbers['studies']}")
    keys = (
        ("dice", "Dice"),
        ("fpv_ml", "FPV mL"),
        ("fnv_ml", "FNV mL"),
        ("lesion_sensitivity", "lesion sensitivity"),
        ("false_positive_lesions_per_case", "FP lesions per study"),
        ("box_map50", "box mAP@0.5"),
    )
    print(f"{'':<22}" + "".join(f"{name:>18}" for name in COLUMNS))
    for key, label in keys:
        print(f"{label:<22}" + "".join(f"{numbers[name][key]:>18.3f}" for name in COLUMNS))
    print("lesions found by true diameter and by site:")
    for group, counts in numbers[COLUMNS[0]]["sensitivity_by"].items():
        cells = [f"{numbers[name]['sensitivity_by'][group]['detected']}/{counts['lesions']}" for name in COLUMNS]
        print(f"  {group:<20}" + "".join(f"{cell:>18}" for cell in cells))
    print("false positives by the physiology under their hottest voxel:")
    tissues = sorted(
        set(numbers[COLUMNS[0]]["false_positives_by_tissue"]) | set(numbers[COLUMNS[1]]["false_positives_by_tissue"])
    )
    for tissue in tissues:
        cells = [str(numbers[name]["false_positives_by_tissue"].get(tissue, 0)) for name in COLUMNS]
        print(f"  {tissue:<20}" + "".join(f"{cell:>18}" for cell in cells))
    print(
        f"filter time per study: mean {numbers['filter_seconds_mean']:.2f} s, max {numbers['filter_seconds_max']:.2f} s"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=None, help="model manifest (default: the bundled model)")
    parser.add_argument("--filter", type=Path, default=None, help="filter JSON (default: the model's own)")
    parser.add_argument("--variation", default="held_out", help="generator variation, or none")
    parser.add_argument("--studies", type=int, default=12)
    parser.add_argument("--first-seed", type=int, default=HELD_OUT_FIRST_SEED)
    parser.add_argument("--size", choices=("small", "full"), default="small")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", type=Path, default=None, help="also write the numbers to this JSON file")
    args = parser.parse_args()
    restart_with_huge_pages([sys.executable, *sys.argv])
    model = weights.load_model(args.model)
    candidate_filter = read_filter(args.filter) if args.filter else model.false_positive_filter
    if candidate_filter is None:
        parser.error("the model has no false-positive filter: pass --filter FILE")
    seeds = list(range(args.first_seed, args.first_seed + args.studies))
    variation = None if args.variation == "none" else args.variation
    numbers = run(model, candidate_filter, seeds, variation, args.size, args.device)
    print_report(numbers)
    if args.json:
        args.json.write_text(json.dumps(numbers, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
