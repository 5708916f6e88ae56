"""Benchmark: annotation import and export through Slicer's representation (slicer-core).

Prints the best of --repeats runs for VOC, the median and each run for nnU-Net:

- VOC export of 1000 CT slices with boxes: ROI nodes -> VOC annotations -> 1000 XML files
  (goal < 1 s), and the import of those files back onto the CT as ROI nodes;
- nnU-Net export of a 400x400x326 case (the autoPET FDG grid, 2.0364 x 2.0364 x 3 mm) with
  about 60 lesions, from a realistic whole-body phantom (see ``_autopet_like_case``):
  segmentation -> label on the PET grid, CT resampled onto it, three NIfTI files and
  dataset.json (goal < 5 s on 2 cores), with the time of each step and of each file written
  alone; and the import of that case (label -> one segment per lesion).

Usage: python Testing/Benchmarks/benchmark_annotations.py [--repeats N] [--only voc|nnunet]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Dict, List

import numpy as np
import SimpleITK as sitk

from PETCTLesionsLib.formats import nnunet, parallel_gzip, voc
from PETCTLesionsLib.geometry import Grid
from PETCTLesionsLib.mrml import headless


def _best(repeats: int, run, setup=None) -> float:
    times = []
    for _ in range(repeats):
        state = setup() if setup else None
        start = time.perf_counter()
        run(state)
        times.append(time.perf_counter() - start)
    return min(times)


def bench_voc(repeats: int, work: Path) -> None:
    import slicer

    from PETCTLesionsLib.mrml.boxes import add_box_nodes, box_nodes_of, voc_from_box_nodes
    from PETCTLesionsLib.mrml.study_nodes import INSTANCE_UIDS_ATTRIBUTE
    from PETCTLesionsLib.mrml.volumes import volume_node_from_image
    from PETCTLesionsLib.synthetic.dicom_writer import make_uid

    grid = Grid(size=(512, 512, 1000), spacing=(0.7, 0.7, 1.0), origin=(-180.0, -180.0, -500.0))
    uids = [make_uid("benchmark slice", k) for k in range(1000)]

    def fresh_ct():
        # A 1000-slice 512x512 CT in a fresh scene: boxes need only its geometry and slice UIDs.
        headless.reset_scene()
        ct = volume_node_from_image(sitk.Image([512, 512, 1000], sitk.sitkUInt8), "CT")
        ct.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(grid.ijk_to_ras()))
        ct.SetAttribute(INSTANCE_UIDS_ATTRIBUTE, " ".join(uids))
        return ct

    rng = np.random.default_rng(0)
    annotations = []
    for uid in uids:
        x, y = (int(v) for v in rng.integers(1, 450, 2))
        annotations.append(voc.VocAnnotation(uid, 512, 512, boxes=[voc.VocBox("A", x, y, x + 40, y + 30)]))
    source = work / "voc source"
    voc.write_voc_folder(annotations, source)

    def import_run(ct):
        read, problems = voc.read_voc_folder(source)
        assert not problems
        result = add_box_nodes(read, ct)
        assert len(result.nodes) == 1000

    import_s = _best(repeats, import_run, fresh_ct)
    ct = fresh_ct()
    import_run(ct)

    def export_run(out):
        exported, skipped = voc_from_box_nodes(box_nodes_of(ct), ct, default_class="A")
        assert len(exported) == 1000 and not skipped
        voc.write_voc_folder(exported, out)

    def fresh_folder():
        return work / f"voc out {time.perf_counter_ns()}"

    export_s = _best(repeats, export_run, fresh_folder)
    print(f"VOC import of 1000 slices (XML -> ROI nodes): {import_s:.2f} s")
    print(f"VOC export of 1000 slices (ROI nodes -> XML): {export_s:.2f} s (goal < 1 s)")


def _autopet_like_case(seed: int = 7, lesions: int = 60):
    """A realistic whole-body study on the autoPET grid: (CT image, PET image, lesion mask).

    The phantom (anatomy, lesions, PET blur and noise; wholebody, size "full") has its own PET
    grid (seed 7: 200x200x313, 4.07 x 4.07 x 3 mm); its PET is resampled (linear) onto the
    autoPET FDG grid 400x400x326, 2.0364 x 2.0364 x 3 mm, centred on the phantom's PET field of
    view (the 13 slices beyond it are 0), and its lesions are rasterised there. The CT keeps the
    phantom's grid (seed 7: 512x512x374, 0.98 x 0.98 x 2.5 mm), so the export resamples it.
    Noise drawn at random in every voxel (this benchmark's former data) compresses worse than PET.
    """
    from PETCTLesionsLib.resampling import resample_to_grid
    from PETCTLesionsLib.synthetic.phantom import PhantomConfig, make_phantom

    study = make_phantom(PhantomConfig(seed=seed, size="full", body="wholebody", n_lesions=lesions))
    size, spacing = np.array((400, 400, 326)), np.array((2.0364, 2.0364, 3.0))
    phantom_grid = study.pet_grid
    centre = np.array(phantom_grid.origin) + (np.array(phantom_grid.size) - 1) * np.array(phantom_grid.spacing) / 2
    origin = centre - (size - 1) * spacing / 2
    pet_grid = Grid(size=tuple(int(n) for n in size), spacing=tuple(spacing), origin=tuple(origin))
    pet = resample_to_grid(phantom_grid.to_sitk(study.pet_suv), pet_grid, sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    ct = study.ct_grid.to_sitk(study.ct_hu)
    mask = (study.lesion_labels_on(pet_grid) > 0).astype(np.uint8)
    return ct, pet, mask


def _timed(times: Dict[str, List[float]], name: str, run, *args):
    start = time.perf_counter()
    result = run(*args)
    times.setdefault(name, []).append(time.perf_counter() - start)
    return result


def _print_medians(title: str, times: Dict[str, List[float]], goal: str = "") -> None:
    runs = len(next(iter(times.values())))
    print(f"{title} (median of {runs} runs{goal}):")
    for name, values in times.items():
        shown = ", ".join(f"{v:.2f}" for v in values)
        print(f"  {name:<50} {statistics.median(values):6.2f} s   [{shown}]")


def bench_nnunet(repeats: int, work: Path) -> None:
    from PETCTLesionsLib.lesions import label_lesions
    from PETCTLesionsLib.mrml.export import export_nnunet_case
    from PETCTLesionsLib.mrml.segmentations import mask_on, segmentation_from_mask
    from PETCTLesionsLib.mrml.study_nodes import mark_as_suv_bw
    from PETCTLesionsLib.mrml.volumes import volume_node_from_image

    headless.reset_scene()
    ct, pet, mask = _autopet_like_case()
    ct_node = volume_node_from_image(ct, "CT")
    pet_node = volume_node_from_image(pet, "PET")
    mark_as_suv_bw(pet_node)
    segmentation = segmentation_from_mask(Grid.from_sitk(pet).to_sitk(mask), "lesions")
    lesion_count = segmentation.GetSegmentation().GetNumberOfSegments()
    dataset = work / "Dataset999_Bench"
    case_id = "fdg_bench  case"

    export_times: Dict[str, List[float]] = {}
    for _ in range(repeats):
        shutil.rmtree(dataset, ignore_errors=True)
        start = time.perf_counter()
        label = _timed(export_times, "rasterise segments on the PET grid", mask_on, segmentation, pet_node)
        case = _timed(
            export_times,
            "volumes from nodes, CT resampled to PET",
            export_nnunet_case,
            ct_node,
            pet_node,
            label,
            case_id,
        )
        _timed(export_times, "write_case (CT to int16, 3 NIfTI, dataset.json)", nnunet.write_case, dataset, case)
        export_times.setdefault("total", []).append(time.perf_counter() - start)
    size_mb = {path.name: path.stat().st_size / 1e6 for path in dataset.rglob("*.nii.gz")}
    # Each file alone, as written (CT as int16): the same writer write_case uses.
    for channel, path in nnunet.case_paths(dataset, case_id).items():
        image = sitk.ReadImage(str(path))
        alone = work / f"alone {path.name}"
        for _ in range(repeats):
            alone.unlink(missing_ok=True)
            _timed(export_times, f"  {channel} file alone", parallel_gzip.write_nifti_gz, image, alone)

    import_times: Dict[str, List[float]] = {}
    for _ in range(repeats):
        start = time.perf_counter()
        read = _timed(import_times, "read_case (3 NIfTI)", nnunet.read_case, dataset, case_id)
        _timed(import_times, "segmentation, one segment per lesion", segmentation_from_mask, read.label, "in")
        import_times.setdefault("total", []).append(time.perf_counter() - start)
    label_values = sitk.GetArrayViewFromImage(read.label)
    for _ in range(repeats):
        _timed(import_times, "  of which: lesions as connected components", label_lesions, label_values)
    sizes = ", ".join(f"{name} {mb:.0f} MB" for name, mb in sorted(size_mb.items()))
    print(
        f"nnU-Net case: PET 400x400x326 (2.0364 x 2.0364 x 3 mm), CT {'x'.join(map(str, ct.GetSize()))} "
        "resampled onto it, "
        f"{lesion_count} lesions; realistic whole-body phantom, files: {sizes}"
    )
    _print_medians("nnU-Net export", export_times, ", goal total < 5 s on 2 cores")
    _print_medians("nnU-Net import (3 NIfTI -> one segment per lesion)", import_times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--only", choices=("voc", "nnunet"), help="run one of the two benchmarks")
    args = parser.parse_args()
    headless.ensure_scene()
    work = Path(tempfile.mkdtemp(prefix="petct-bench-"))
    try:
        if args.only in (None, "voc"):
            bench_voc(args.repeats, work)
        if args.only in (None, "nnunet"):
            bench_nnunet(args.repeats, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        headless.shutdown()


if __name__ == "__main__":
    main()
