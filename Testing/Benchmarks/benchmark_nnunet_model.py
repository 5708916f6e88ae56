#!/usr/bin/env python3
"""nnU-Net model benchmark: what running an nnU-Net model through this module costs over nnU-Net's own call.

Both sides run nnU-Net's one predictor (``nnUNetPredictor``, its checkpoints loaded once) on the
same CT and PET arrays of a generated whole-body patient on its PET grid:

- nnU-Net's own call: ``predict_single_npy_array(image, {"spacing": ...}, None, None, True)`` on the
  stacked [channel, k, j, i] image (segmentation and class probabilities);
- ours: ``NnUNetModel.predict_probability`` (stacking the channels in the model's order, the progress
  and cancel hook at each network pass, the lesion probability on the PET grid) from the two arrays.

Printed: the median of ``--repeats`` alternating runs of each and our overhead (target: <= 10% on the
CPU); our own steps (stacking, lesion probability) timed alone, as a share of nnU-Net's call, which
a busy machine's noise does not swamp; and the whole detection once (``detection.detect_lesions``:
the same lesion post-processing and measurements as the bundled model's) for scale.

The model is ``--model FOLDER`` (a real trained model, e.g. an autoPET nnU-Net) or, by default, the
tiny model the tests build with nnU-Net's own code (``Testing/Python/nnunet_trained_models.py``; 4
to 16 features per stage, so the time is mostly nnU-Net's pre- and post-processing, which is where a
wrapper would add cost). ``--grid small`` is the generated patient's PET grid (96 x 96 x 244 voxels of
5 x 5 x 4 mm); ``--grid autopet`` resamples it onto autoPET's (400 x 400 x 326 of 2.0364 x 2.0364 x 3 mm;
with a real 3d_fullres model on a GPU: the issue's GPU timing); ``--crop K`` keeps the K middle slices.

    python Testing/Benchmarks/benchmark_nnunet_model.py [--model FOLDER] [--grid small|autopet] [--crop 64]
        [--folds 0] [--device cpu|cuda] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "PETCTLesions"))
sys.path.insert(0, str(ROOT / "Testing" / "Python"))

from PETCTLesionsLib import detection  # noqa: E402
from PETCTLesionsLib.geometry import Grid  # noqa: E402
from PETCTLesionsLib.model.nnunet_model import NnUNetOptions, lesion_probability, load_nnunet_model  # noqa: E402
from PETCTLesionsLib.resampling import resample_ct_to_pet, resample_to_grid  # noqa: E402
from PETCTLesionsLib.synthetic.phantom import PhantomConfig, make_phantom  # noqa: E402

AUTOPET_GRID_SIZE = (400, 400, 326)
AUTOPET_SPACING = (2.0364, 2.0364, 3.0)


def whole_body_arrays(grid_name: str, crop: int):
    """CT (HU) on the PET grid, PET (SUV), float32 [k, j, i], and the PET grid of a generated whole-body patient."""
    import SimpleITK as sitk

    study = make_phantom(PhantomConfig(seed=11, size="small", body="wholebody"))
    pet_grid = study.pet_grid
    pet = pet_grid.to_sitk(study.pet_suv.astype(np.float32))
    if grid_name == "autopet":
        centre = pet_grid.index_to_lps((np.asarray(pet_grid.size, float) - 1) / 2)
        extent = (np.asarray(AUTOPET_GRID_SIZE) - 1) * np.asarray(AUTOPET_SPACING)
        pet_grid = Grid(AUTOPET_GRID_SIZE, AUTOPET_SPACING, tuple(centre - extent / 2))
        pet = resample_to_grid(pet, pet_grid, sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    ct = resample_ct_to_pet(study.ct_grid.to_sitk(study.ct_hu.astype(np.float32)), pet_grid)
    ct_array = sitk.GetArrayFromImage(ct).astype(np.float32)
    pet_array = sitk.GetArrayFromImage(pet).astype(np.float32)
    if crop and crop < pet_grid.size[2]:
        low = (pet_grid.size[2] - crop) // 2
        pet_grid = pet_grid.sub_grid((0, 0, low), (pet_grid.size[0], pet_grid.size[1], low + crop))
        ct_array, pet_array = ct_array[low : low + crop].copy(), pet_array[low : low + crop].copy()
    return ct_array, pet_array, pet_grid


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", help="an nnU-Net trained-model folder (default: the tests' tiny model)")
    parser.add_argument("--grid", choices=("small", "autopet"), default="small")
    parser.add_argument("--crop", type=int, default=0, help="keep this many middle slices (0: all)")
    parser.add_argument("--folds", default="0", help="folds, e.g. 0 or 0,1 (default: 0)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    import torch

    with tempfile.TemporaryDirectory(prefix="benchmark-nnunet-") as work:
        folder = Path(args.model) if args.model else None
        if folder is None:
            from nnunet_trained_models import build_trained_model

            started = time.perf_counter()
            folder = build_trained_model(Path(work), folds=(0,))
            print(f"tiny nnU-Net model built by nnU-Net's own code in {time.perf_counter() - started:.1f} s")
        ct, pet, grid = whole_body_arrays(args.grid, args.crop)
        print(f"study: PET grid {grid.size} (i, j, k) of {tuple(round(s, 4) for s in grid.spacing)} mm")
        model = load_nnunet_model(folder, NnUNetOptions(folds=tuple(args.folds.split(","))))
        device = torch.device(args.device)
        predictor = model.predictor(device)  # checkpoints loaded once, shared by both sides
        image = model.input_image(ct, pet)
        spacing_zyx = [float(s) for s in reversed(grid.spacing)]

        def nnunets_own() -> None:
            predictor.predict_single_npy_array(image, {"spacing": list(spacing_zyx)}, None, None, True)

        def ours() -> None:
            model.predict_probability(ct, pet, grid.spacing, device=args.device)

        ours()  # warm-up: kernels, caches, the first allocation of every buffer
        times = {"nnU-Net's own call": [], "ours (predict_probability)": []}
        for _ in range(args.repeats):
            for name, run in zip(times, (nnunets_own, ours)):
                started = time.perf_counter()
                run()
                times[name].append(time.perf_counter() - started)
        medians = {name: statistics.median(values) for name, values in times.items()}
        for name, values in times.items():
            print(f"{name:28s} median {medians[name]:7.2f} s  ({', '.join(f'{v:.2f}' for v in values)})")
        own, wrapped = medians.values()
        print(f"our overhead: {100 * (wrapped - own) / own:+.1f}% (target <= 10%)")
        # The same difference from our own steps alone, which a busy machine's noise does not swamp.
        segmentation, probabilities = predictor.predict_single_npy_array(
            image, {"spacing": list(spacing_zyx)}, None, None, True
        )
        channels = [predictor.label_manager.all_labels.index(value) for value in model.lesion_labels]
        started = time.perf_counter()
        for _ in range(args.repeats):
            model.input_image(ct, pet)
            lesion_probability(segmentation, probabilities, channels)
        steps = (time.perf_counter() - started) / args.repeats
        print(
            f"our own steps alone (channels stacked, lesion probability): {1000 * steps:.1f} ms = "
            f"{100 * steps / own:.2f}% of nnU-Net's call"
        )
        started = time.perf_counter()
        found = detection.detect_lesions(model, ct, pet, grid, device=args.device)
        print(
            f"whole detection (lesions, measurements): {time.perf_counter() - started:.2f} s, "
            f"{len(found.lesions)} lesion(s) on {found.device}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
