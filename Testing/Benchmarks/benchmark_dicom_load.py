"""Benchmark: load a PET/CT study with PETCTLesionsLib.study.load_study against pydicom alone.

Writes (once) a synthetic study of 300 CT slices 512x512 and 300 PET slices 200x200 with
PETCTLesionsLib.synthetic.dicom_writer, then prints:

- the study loader's time (header scan, sorting, geometry, SUV, pixel decoding, SimpleITK images),
- the time pydicom alone takes to read and decode the same files (dcmread + pixel_array in a
  loop, nothing else),
- the loader's throughput as a fraction of pydicom's (goal: >= 0.8),
- the loader's peak memory increase (resident set high-water mark, VmHWM, of a fresh subprocess) against
  the bytes of the final CT and PET images (goal: < 2x).

Usage: python Testing/Benchmarks/benchmark_dicom_load.py [--folder DIR] [--repeats N]
Without --folder the study is written to a temporary folder that is removed afterwards; with
it, an existing study there is reused.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import List, Tuple

import numpy as np

CT_SLICES = 300
PET_SLICES = 300


def _proc_status_bytes(field: str) -> int:
    """A memory field of /proc/self/status (VmRSS: now; VmHWM: peak of this process image)."""
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not found in /proc/self/status (Linux only)")


def _synthetic_ct_slice(k: int, shape: tuple, rng: np.random.Generator) -> np.ndarray:
    rows, columns = shape
    y, x = np.mgrid[0:rows, 0:columns].astype(np.float32)
    cy, cx = rows / 2, columns / 2
    body = ((x - cx) / 200) ** 2 + ((y - cy) / 150) ** 2 <= 1
    lungs = (((x - cx + 90) / 60) ** 2 + ((y - cy) / 90) ** 2 <= 1) | (
        ((x - cx - 90) / 60) ** 2 + ((y - cy) / 90) ** 2 <= 1
    )
    spine = ((x - cx) / 18) ** 2 + ((y - cy - 100) / 18) ** 2 <= 1
    hu = np.full(shape, -1000.0, dtype=np.float32)
    hu[body] = 40.0
    hu[lungs & body] = -820.0 + 10 * np.sin(k / 7.0)
    hu[spine] = 700.0
    hu += rng.normal(0, 12, size=shape).astype(np.float32)
    return np.clip(np.rint(hu), -1024, 3071)


def write_study(folder: Path) -> None:
    """Write the synthetic CT and PET series into ``folder`` (ct/ and pet/)."""
    from PETCTLesionsLib.geometry import Grid
    from PETCTLesionsLib.synthetic.dicom_writer import (
        PatientInfo,
        PetAcquisition,
        StudyInfo,
        make_uid,
        write_ct_series,
        write_pet_series,
    )

    rng = np.random.default_rng(7)
    study = StudyInfo(
        patient=PatientInfo("BENCH-0001", "Benchmark^Patient", "M", 64, 81.0),
        study_uid=make_uid("benchmark study"),
        frame_of_reference_uid=make_uid("benchmark frame"),
        study_date=datetime.date(2022, 5, 17),
        study_time=datetime.time(10, 15, 0),
        study_description="PET CT benchmark",
    )
    ct_grid = Grid((512, 512, CT_SLICES), (0.9765625, 0.9765625, 3.0), (-250.0, -250.0, -900.0))
    ct = np.stack([_synthetic_ct_slice(k, (512, 512), rng) for k in range(CT_SLICES)]).astype(np.int16)
    write_ct_series(ct, ct_grid, study, folder / "ct")
    del ct
    pet_grid = Grid((200, 200, PET_SLICES), (4.07, 4.07, 3.0), (-405.0, -405.0, -900.0))
    y, x = np.mgrid[0:200, 0:200]
    body = (((x - 100) / 80.0) ** 2 + ((y - 100) / 60.0) ** 2 <= 1).astype(np.float64)
    suv = rng.gamma(4.0, 0.25, size=pet_grid.shape) * body[None] + 0.05
    suv[:, 95:105, 95:105] += 8.0 * np.exp(-(((np.arange(PET_SLICES) - 150) / 20.0) ** 2))[:, None, None]
    acquisition = PetAcquisition(
        injected_dose_bq=3.1e8,
        injection_datetime=datetime.datetime(2022, 5, 17, 9, 5, 0),
        series_datetime=datetime.datetime(2022, 5, 17, 10, 8, 30),
    )
    write_pet_series(suv, pet_grid, study, acquisition, folder / "pet")


def study_files(folder: Path) -> List[Path]:
    return sorted(folder.rglob("*.dcm"))


def time_loader(folder: Path) -> float:
    from PETCTLesionsLib.study import load_study

    start = time.perf_counter()
    loaded = load_study([folder])
    elapsed = time.perf_counter() - start
    assert loaded.ct.GetSize() == (512, 512, CT_SLICES) and loaded.pet_suv.GetSize() == (200, 200, PET_SLICES)
    return elapsed


def _rounded(times: List[float]) -> List[float]:
    return [round(t, 3) for t in times]


def loader_breakdown(folder: Path) -> List[Tuple[str, float]]:
    """Seconds spent in each step of one load (the steps load_study takes)."""
    from PETCTLesionsLib.dicom.index import scan_paths
    from PETCTLesionsLib.dicom.pairing import pair_pet_with_ct
    from PETCTLesionsLib.dicom.series import read_series_image, series_geometry
    from PETCTLesionsLib.dicom.suv import suv_bw_factors

    steps = []
    start = time.perf_counter()
    pairing = pair_pet_with_ct(scan_paths([folder]).studies)[0]
    steps.append(("header scan (pydicom, 600 files)", time.perf_counter() - start))
    start = time.perf_counter()
    pet_geometry, ct_geometry = series_geometry(pairing.pet), series_geometry(pairing.ct)
    steps.append(("geometry (sort, spacing checks)", time.perf_counter() - start))
    start = time.perf_counter()
    suv = suv_bw_factors([h.dataset for h in pet_geometry.headers])
    steps.append(("SUV factors (suv.suv_bw_factors)", time.perf_counter() - start))
    start = time.perf_counter()
    read_series_image(pet_geometry, slice_scale=suv.factors, integer_output=False)
    steps.append(("PET pixels -> float32 SUV image", time.perf_counter() - start))
    start = time.perf_counter()
    read_series_image(ct_geometry)
    steps.append(("CT pixels -> int16 HU image", time.perf_counter() - start))
    return steps


def time_pydicom(files: List[Path]) -> float:
    import pydicom

    start = time.perf_counter()
    for path in files:
        pixels = pydicom.dcmread(path).pixel_array
        assert pixels.size > 0
    return time.perf_counter() - start


def time_pydicom_volumes(files: List[Path]) -> float:
    """For context: pydicom alone, keeping the slices in preallocated numpy volumes (no sorting)."""
    import pydicom

    start = time.perf_counter()
    volumes = {}
    for path in files:
        pixels = pydicom.dcmread(path).pixel_array
        key = path.parent.name
        if key not in volumes:
            volumes[key] = [np.empty((CT_SLICES if key == "ct" else PET_SLICES, *pixels.shape), pixels.dtype), 0]
        volume, index = volumes[key]
        volume[index] = pixels
        volumes[key][1] += 1
    return time.perf_counter() - start


def memory_child(folder: Path) -> None:
    """Run in a fresh process: print the loader's peak RSS increase and the final image bytes (JSON)."""
    import SimpleITK as sitk

    from PETCTLesionsLib.study import load_study

    baseline = _proc_status_bytes("VmRSS")
    loaded = load_study([folder])
    # VmHWM, not ru_maxrss: ru_maxrss carries the parent's peak over fork and exec.
    peak = _proc_status_bytes("VmHWM")
    final = sum(
        image.GetNumberOfPixels() * sitk.GetArrayViewFromImage(image).itemsize for image in (loaded.ct, loaded.pet_suv)
    )
    print(json.dumps({"baseline": baseline, "peak": peak, "final": final}))


def measure_memory(folder: Path) -> dict:
    output = subprocess.run(
        [sys.executable, __file__, "--memory-child", str(folder)], check=True, capture_output=True, text=True
    ).stdout
    return json.loads(output.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folder", type=Path, help="where the synthetic study is (written when absent)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each method; the best counts")
    parser.add_argument("--memory-child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        memory_child(args.memory_child)
        return

    temporary = None
    folder = args.folder
    if folder is None:
        temporary = tempfile.TemporaryDirectory(prefix="petct-benchmark-")
        folder = Path(temporary.name)
    try:
        if len(study_files(folder)) != CT_SLICES + PET_SLICES:
            print(f"writing {CT_SLICES} CT + {PET_SLICES} PET slices to {folder} ...", flush=True)
            start = time.perf_counter()
            write_study(folder)
            print(f"  written in {time.perf_counter() - start:.1f} s")
        files = study_files(folder)
        size_mb = sum(path.stat().st_size for path in files) / 1e6
        print(f"{len(files)} files, {size_mb:.0f} MB; {os.cpu_count()} CPU cores; {args.repeats} runs each, best kept")

        time_pydicom(files)  # warm the page cache for both methods
        loader_times, pydicom_times = [], []
        for _ in range(args.repeats):
            loader_times.append(time_loader(folder))
            pydicom_times.append(time_pydicom(files))
        loader, alone = min(loader_times), min(pydicom_times)
        print(f"study loader (scan + geometry + SUV + decode): {loader:.3f} s   runs {_rounded(loader_times)}")
        print(f"pydicom alone (dcmread + pixel_array):        {alone:.3f} s   runs {_rounded(pydicom_times)}")
        print(f"throughput fraction (pydicom time / loader time): {alone / loader:.2f}  (goal >= 0.80)")
        kept = min(time_pydicom_volumes(files) for _ in range(args.repeats))
        print(f"for context, pydicom alone keeping numpy volumes: {kept:.3f} s (fraction {kept / loader:.2f})")
        for step, seconds in loader_breakdown(folder):
            print(f"  {step:<36s} {seconds:.3f} s")

        memory = measure_memory(folder)
        increase = memory["peak"] - memory["baseline"]
        print(
            f"peak memory increase {increase / 1e6:.0f} MB for final images of {memory['final'] / 1e6:.0f} MB: "
            f"{increase / memory['final']:.2f}x  (goal < 2x; RSS of a fresh process, baseline "
            f"{memory['baseline'] / 1e6:.0f} MB after imports)"
        )
    finally:
        if temporary is not None:
            temporary.cleanup()


if __name__ == "__main__":
    main()
