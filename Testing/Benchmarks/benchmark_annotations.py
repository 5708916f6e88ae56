"""Benchmark: annotation import and export through Slicer's representation (slicer-core).

Prints, each the best of --repeats runs:

- VOC export of 1000 CT slices with boxes: ROI nodes -> VOC annotations -> 1000 XML files
  (goal < 1 s), and the import of those files back onto the CT as ROI nodes;
- nnU-Net export of a 400x400x326 case (the autoPET FDG grid, 2.036 x 2.036 x 3 mm) with 60
  lesions: segmentation -> label on the PET grid, CT resampled onto it, three NIfTI files and
  dataset.json (goal < 5 s on 2 cores), and the import of that case (label -> one segment per lesion).

Usage: python Testing/Benchmarks/benchmark_annotations.py [--repeats N]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from PETCTLesionsLib import nnunet, voc
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

    from PETCTLesionsLib.dicom_writer import make_uid
    from PETCTLesionsLib.mrml.boxes import add_box_nodes, box_nodes_of, voc_from_box_nodes
    from PETCTLesionsLib.mrml.study_nodes import INSTANCE_UIDS_ATTRIBUTE
    from PETCTLesionsLib.mrml.volumes import volume_node_from_image

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


def bench_nnunet(repeats: int, work: Path) -> None:
    from PETCTLesionsLib.mrml.convert import export_nnunet_case
    from PETCTLesionsLib.mrml.segmentations import mask_on, segmentation_from_mask
    from PETCTLesionsLib.mrml.study_nodes import mark_as_suv_bw
    from PETCTLesionsLib.mrml.volumes import volume_node_from_image

    headless.reset_scene()
    pet_grid = Grid(size=(400, 400, 326), spacing=(2.036, 2.036, 3.0), origin=(-406.9, -406.9, -975.0))
    ct_grid = Grid(size=(512, 512, 326), spacing=(0.98, 0.98, 3.0), origin=(-250.0, -250.0, -975.0))
    rng = np.random.default_rng(1)
    pet = pet_grid.to_sitk(rng.gamma(2.0, 0.8, pet_grid.shape).astype(np.float32))
    ct = ct_grid.to_sitk(rng.integers(-1000, 1500, ct_grid.shape).astype(np.int16))
    label = np.zeros(pet_grid.shape, np.uint8)
    for _ in range(60):
        k, j, i = (int(rng.integers(10, n - 10)) for n in pet_grid.shape)
        label[k - 2 : k + 3, j - 3 : j + 4, i - 3 : i + 4] = 1
    ct_node = volume_node_from_image(ct, "CT")
    pet_node = volume_node_from_image(pet, "PET")
    mark_as_suv_bw(pet_node)
    segmentation = segmentation_from_mask(pet_grid.to_sitk(label), "lesions")
    dataset = work / "Dataset999_Bench"

    def export_run(_):
        shutil.rmtree(dataset, ignore_errors=True)
        case = export_nnunet_case(ct_node, pet_node, mask_on(segmentation, pet_node), "fdg_bench  case")
        nnunet.write_case(dataset, case)

    export_s = _best(repeats, export_run)

    def import_run(_):
        case = nnunet.read_case(dataset, "fdg_bench  case")
        segmentation_from_mask(case.label, "imported")

    import_s = _best(repeats, import_run)
    size_mb = sum(p.stat().st_size for p in dataset.rglob("*.nii.gz")) / 1e6
    what = "nnU-Net export of a 400x400x326 case (CT 512x512x326 resampled, 60 lesions)"
    print(f"{what}: {export_s:.2f} s (goal < 5 s), {size_mb:.0f} MB written")
    print(f"nnU-Net import of that case (3 NIfTI -> one segment per lesion): {import_s:.2f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    headless.ensure_scene()
    work = Path(tempfile.mkdtemp(prefix="petct-bench-"))
    try:
        bench_voc(args.repeats, work)
        bench_nnunet(args.repeats, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        headless.shutdown()


if __name__ == "__main__":
    main()
