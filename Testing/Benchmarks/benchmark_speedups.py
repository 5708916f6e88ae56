#!/usr/bin/env python3
"""Benchmark: each hand-written speed-up against the plain library call it replaces (issue 20).

Each is timed --repeats times (default 3), fast path and reference alternating; the medians
and their ratio are printed, with the load average before and after (the machine may be shared):

- headers: the Part 10 header parser (``dicom/part10.read_slice_header``) against
  ``read_slice_header_reference`` (``pydicom.dcmread(stop_before_pixels=True)``, every value
  converted by pydicom) on the 600 files of ``benchmark_dicom_load.py``'s study (300 CT slices
  512 x 512, 300 PET slices 200 x 200; written once, or taken from --folder);
- frames: every frame of a 32-frame JPEG Lossless CT file (512 x 512) through one
  ``dicom/frame_cache.DecodedFrames`` against ``decode_frame`` (the whole file decoded per frame);
- gzip: an autoPET-sized nnU-Net case (400 x 400 x 326: PET float32 in SUV, CT int16, label uint8,
  from the whole-body phantom) written by ``formats/parallel_gzip.write_nifti_gz_files`` against
  ``write_nifti_gz_reference`` (SimpleITK's own compression) file after file; each file alone too;
- hugepages: the model (``predict_probability``, CPU) on the same autoPET-sized study, each run a
  fresh process, with ``glibc.malloc.hugetlb=1`` against ``=0`` (needs torch).

Usage: python Testing/Benchmarks/benchmark_speedups.py [--only headers|frames|gzip|hugepages]
       [--repeats N] [--folder DIR]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List, Tuple

import numpy as np
import SimpleITK as sitk

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "PETCTLesions"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

AUTOPET_GRID_SIZE = (400, 400, 326)
AUTOPET_SPACING = (2.0364, 2.0364, 3.0)
FRAMES = 32


def _load() -> str:
    return "load average " + ", ".join(f"{value:.2f}" for value in os.getloadavg())


def compare(
    what: str, fast: Callable[[], object], reference: Callable[[], object], repeats: int, setup=None
) -> Tuple[float, float]:
    """Median seconds of ``fast`` and ``reference`` (alternating runs; ``setup()`` before each, untimed)."""
    times: Dict[str, List[float]] = {"fast": [], "reference": []}
    print(f"{what} ({_load()})", flush=True)
    for _ in range(repeats):
        for name, run in (("fast", fast), ("reference", reference)):
            if setup is not None:
                setup()
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    medians = {name: statistics.median(values) for name, values in times.items()}
    for name, values in times.items():
        print(f"  {name:<9s} median {medians[name]:7.3f} s   runs {[round(v, 3) for v in values]}")
    fast_s, reference_s = medians["fast"], medians["reference"]
    print(f"  speed-up {reference_s / fast_s:.2f}x, {reference_s - fast_s:.2f} s saved  ({_load()})", flush=True)
    return fast_s, reference_s


# --------------------------------------------------------------------------- headers


def bench_headers(folder: Path, repeats: int) -> None:
    from benchmark_dicom_load import CT_SLICES, PET_SLICES, study_files, write_study

    from PETCTLesionsLib.dicom.part10 import read_slice_header, read_slice_header_reference

    if len(study_files(folder)) != CT_SLICES + PET_SLICES:
        print(f"writing {CT_SLICES} CT + {PET_SLICES} PET slices to {folder} ...", flush=True)
        write_study(folder)
    files = study_files(folder)
    for path in files:  # the page cache warm for both
        path.read_bytes()
    compare(
        f"headers: {len(files)} files (CT 512x512, PET 200x200)",
        lambda: [read_slice_header(path) for path in files],
        lambda: [read_slice_header_reference(path) for path in files],
        repeats,
    )


# --------------------------------------------------------------------------- frames


def _multi_frame_ct(path: Path) -> None:
    """A 32-frame JPEG Lossless CT (GDCM's encoder; stored values HU + 1024) of the benchmark's CT slices."""
    from benchmark_dicom_load import _synthetic_ct_slice

    rng = np.random.default_rng(7)
    hu = np.stack([_synthetic_ct_slice(k, (512, 512), rng) for k in range(FRAMES)])
    writer = sitk.ImageFileWriter()
    writer.SetImageIO("GDCMImageIO")
    writer.SetFileName(str(path))
    writer.UseCompressionOn()
    writer.SetCompressor("JPEG")
    writer.Execute(sitk.GetImageFromArray((hu + 1024).astype(np.uint16)))


def bench_frames(work: Path, repeats: int) -> None:
    from PETCTLesionsLib.dicom.frame_cache import DecodedFrames, decode_frame
    from PETCTLesionsLib.dicom.series import _decode_with_gdcm

    path = work / "multi-frame.dcm"
    _multi_frame_ct(path)

    def cached() -> None:
        frames = DecodedFrames(_decode_with_gdcm)  # one per read, as read_series_image makes it
        for k in range(FRAMES):
            frames.frame(path, k)

    compare(
        f"frames: the {FRAMES} frames of a 512x512 JPEG Lossless multi-frame CT",
        cached,
        lambda: [decode_frame(_decode_with_gdcm, path, k) for k in range(FRAMES)],
        repeats,
    )


# --------------------------------------------------------------------------- the autoPET-sized study


def autopet_sized_case() -> Dict[str, sitk.Image]:
    """The whole-body phantom on autoPET's PET grid: PET (float32 SUV), CT (int16 HU) and lesion label."""
    from PETCTLesionsLib.geometry import Grid
    from PETCTLesionsLib.resampling import resample_ct_to_pet, resample_to_grid
    from PETCTLesionsLib.synthetic.phantom import PhantomConfig, make_phantom

    study = make_phantom(PhantomConfig(seed=7, size="full", body="wholebody"))
    size, spacing = np.array(AUTOPET_GRID_SIZE), np.array(AUTOPET_SPACING)
    phantom_grid = study.pet_grid
    centre = np.array(phantom_grid.origin) + (np.array(phantom_grid.size) - 1) * np.array(phantom_grid.spacing) / 2
    grid = Grid(tuple(int(n) for n in size), tuple(spacing), tuple(centre - (size - 1) * spacing / 2))
    pet = resample_to_grid(phantom_grid.to_sitk(study.pet_suv), grid, sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    ct = sitk.Cast(resample_ct_to_pet(study.ct_grid.to_sitk(study.ct_hu), grid), sitk.sitkInt16)
    label = grid.to_sitk((study.lesion_labels_on(grid) > 0).astype(np.uint8))
    return {"pet": pet, "ct": ct, "label": label}


def bench_gzip(work: Path, repeats: int) -> None:
    from PETCTLesionsLib.formats.parallel_gzip import write_nifti_gz, write_nifti_gz_files, write_nifti_gz_reference

    print("making the autoPET-sized case ...", flush=True)
    case = autopet_sized_case()
    out = work / "nifti"

    def empty() -> None:
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir()

    compare(
        "gzip: the nnU-Net case's three files (PET float32, CT int16, label uint8; 400x400x326)",
        lambda: write_nifti_gz_files({out / f"{name}.nii.gz": image for name, image in case.items()}),
        lambda: [write_nifti_gz_reference(image, out / f"{name}.nii.gz") for name, image in case.items()],
        repeats,
        setup=empty,
    )
    for name, image in case.items():
        compare(
            f"gzip: {name} alone",
            lambda image=image, name=name: write_nifti_gz(image, out / f"{name}.nii.gz"),
            lambda image=image, name=name: write_nifti_gz_reference(image, out / f"{name}.nii.gz"),
            repeats,
            setup=empty,
        )


# --------------------------------------------------------------------------- huge pages


def model_child(folder: Path) -> None:
    """In a fresh process (its tunables fixed at start): time one prediction, print the seconds."""
    import torch

    from PETCTLesionsLib.model import inference, weights

    torch.set_num_threads(len(os.sched_getaffinity(0)))
    ct, pet = np.load(folder / "ct.npy"), np.load(folder / "pet.npy")
    model = weights.load_model()
    start = time.perf_counter()
    inference.predict_probability(model.network, ct, pet, AUTOPET_SPACING, device="cpu")
    print(time.perf_counter() - start)


def bench_hugepages(work: Path, repeats: int) -> None:
    from PETCTLesionsLib.hugepages import environment_with_huge_pages, environment_without_huge_pages

    print("making the autoPET-sized study ...", flush=True)
    case = autopet_sized_case()
    np.save(work / "ct.npy", sitk.GetArrayFromImage(case["ct"]).astype(np.float32))
    np.save(work / "pet.npy", sitk.GetArrayFromImage(case["pet"]))
    base = {key: value for key, value in os.environ.items() if key != "GLIBC_TUNABLES"}
    inside: Dict[str, List[float]] = {"with": [], "without": []}  # the model's own time, printed by the child

    def run(name: str, environment: Dict[str, str]) -> None:
        command = [sys.executable, __file__, "--model-child", str(work)]
        output = subprocess.run(command, env=environment, check=True, capture_output=True, text=True).stdout
        inside[name].append(float(output.strip().splitlines()[-1]))

    compare(
        "hugepages: the model on 400x400x326 (CPU, a fresh process each run: start, model load, prediction)",
        lambda: run("with", environment_with_huge_pages(base)),
        lambda: run("without", environment_without_huge_pages(base)),
        repeats,
    )
    medians = {name: statistics.median(seconds) for name, seconds in inside.items()}
    for name, seconds in inside.items():
        runs = [round(s, 1) for s in seconds]
        print(f"  prediction alone, {name} huge pages: median {medians[name]:.1f} s  runs {runs}")
    with_pages, without = medians["with"], medians["without"]
    print(f"  prediction alone: {without / with_pages:.2f}x, {without - with_pages:.1f} s saved")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=("headers", "frames", "gzip", "hugepages"))
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each path; the median counts")
    parser.add_argument("--folder", type=Path, help="the header benchmark's study (written when absent)")
    parser.add_argument("--model-child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.model_child:
        model_child(args.model_child)
        return
    print(f"{len(os.sched_getaffinity(0))} CPU cores; {args.repeats} runs of each path, medians")
    work = Path(tempfile.mkdtemp(prefix="petct-speedups-"))
    try:
        if args.only in (None, "headers"):
            bench_headers(args.folder or work / "study", args.repeats)
        if args.only in (None, "frames"):
            bench_frames(work, args.repeats)
        if args.only in (None, "gzip"):
            bench_gzip(work, args.repeats)
        if args.only in (None, "hugepages"):
            bench_hugepages(work, args.repeats)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
