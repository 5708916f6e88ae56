"""Benchmark: what the module's Detect / Review / Export buttons cost on the GUI's thread, and the worker's overhead.

On the realistic whole-body study of benchmark_annotations (autoPET FDG grid 400x400x326,
about 60 lesions; CT 512x512x374 with a SOPInstanceUID per slice so boxes are made):

- the GUI thread while the model runs: one ``DetectionJob.poll()`` (the Widget's timer calls
  it every 200 ms);
- after the model: its lesions -> segments + VOC box markups (``add_detection_nodes``);
- the Review table (``lesion_rows``: every segment measured on the PET) and one box added;
- the Export button (``export_study``: nnU-Net case + VOC XML);

and, on the small demo study, the worker process's overhead: the same detection run in
process and as a ``DetectionJob`` (process start, imports, .npy files).

Usage: python Testing/Benchmarks/benchmark_module.py [--repeats N]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchmark_annotations import _autopet_like_case  # noqa: E402  (the same study as the annotation benchmark)

from PETCTLesionsLib.geometry import Grid  # noqa: E402
from PETCTLesionsLib.mrml import headless  # noqa: E402


def _median(values):
    return f"{statistics.median(values):7.3f} s   [{', '.join(f'{v:.3f}' for v in values)}]"


def bench_gui_thread(repeats: int) -> None:
    from PETCTLesionsLib.detection import Detection
    from PETCTLesionsLib.lesions import label_lesions
    from PETCTLesionsLib.measurements import measure_lesions
    from PETCTLesionsLib.mrml import review
    from PETCTLesionsLib.mrml.detection_nodes import add_detection_nodes
    from PETCTLesionsLib.mrml.export import export_study
    from PETCTLesionsLib.mrml.study_nodes import INSTANCE_UIDS_ATTRIBUTE, mark_as_suv_bw
    from PETCTLesionsLib.mrml.volumes import volume_node_from_image
    from PETCTLesionsLib.synthetic.dicom_writer import make_uid

    ct, pet, mask = _autopet_like_case()
    pet_grid = Grid.from_sitk(pet)
    pet_suv = sitk.GetArrayFromImage(pet)
    lesion_map, count = label_lesions(mask)
    found = Detection(pet_grid, None, lesion_map, measure_lesions(lesion_map, count, pet_suv, pet_grid), 0.5, 0.0)
    uids = [make_uid("benchmark CT slice", k) for k in range(ct.GetSize()[2])]
    print(f"study: PET {pet_grid.size}, CT {ct.GetSize()}, {count} lesions")
    times = {"add_detection_nodes (segments + boxes)": [], "lesion table (lesion_rows)": [], "add a box": []}
    times["export_study (nnU-Net + VOC)"] = []
    boxes = 0
    for _ in range(repeats):
        headless.reset_scene()
        ct_node = volume_node_from_image(ct, "CT")
        ct_node.SetAttribute(INSTANCE_UIDS_ATTRIBUTE, " ".join(uids))
        pet_node = volume_node_from_image(pet, "PET")
        mark_as_suv_bw(pet_node)
        start = time.perf_counter()
        nodes = add_detection_nodes(found, pet_node, ct_node, class_name="A")
        times["add_detection_nodes (segments + boxes)"].append(time.perf_counter() - start)
        boxes = len(nodes.boxes)
        start = time.perf_counter()
        rows = review.lesion_rows(nodes.segmentation, pet_node, ct_node)
        times["lesion table (lesion_rows)"].append(time.perf_counter() - start)
        assert len(rows) == count
        start = time.perf_counter()
        review.add_box_on_slice(ct_node, rows[0].centre_ras, "A", nodes.segmentation, rows[0].segment_id)
        times["add a box"].append(time.perf_counter() - start)
        review.set_status(nodes.segmentation, rows[1].segment_id, review.REJECTED)
        with tempfile.TemporaryDirectory() as folder:
            start = time.perf_counter()
            report = export_study(
                ct_node,
                pet_node,
                nodes.segmentation,
                nnunet_dataset=Path(folder) / "Dataset999_Bench",
                voc_root=Path(folder) / "Annotation",
            )
            times["export_study (nnU-Net + VOC)"].append(time.perf_counter() - start)
            assert not report.skipped, report.text()
    print(f"{boxes} box markups made; median of {repeats} runs:")
    for name, values in times.items():
        print(f"  {name:<42} {_median(values)}")


def bench_worker_overhead(repeats: int) -> None:
    from PETCTLesionsLib.demo import write_demo_study
    from PETCTLesionsLib.detection import detect_lesions
    from PETCTLesionsLib.detection_job import DetectionJob, DetectionSettings
    from PETCTLesionsLib.model.weights import load_model
    from PETCTLesionsLib.training.data import phantom_study_arrays

    with tempfile.TemporaryDirectory() as folder:
        study, _ = write_demo_study(Path(folder), seed=1, size="small")
    arrays = phantom_study_arrays(study)
    model = load_model()
    in_process, as_job, polls = [], [], []
    for _ in range(repeats):
        start = time.perf_counter()
        expected = detect_lesions(model, arrays.ct_hu_on_pet, arrays.pet_suv, study.pet_grid, device="cpu")
        in_process.append(time.perf_counter() - start)
        start = time.perf_counter()
        job = DetectionJob(arrays.ct_hu_on_pet, arrays.pet_suv, study.pet_grid, DetectionSettings(device="cpu"))
        while True:
            poll_start = time.perf_counter()
            status = job.poll()
            polls.append(time.perf_counter() - poll_start)
            if status.done:
                break
            time.sleep(0.05)
        found = job.result()
        as_job.append(time.perf_counter() - start)
        assert np.array_equal(found.lesion_map, expected.lesion_map)  # same result either way
    print(f"detection on the small demo study {study.pet_grid.size}, median of {repeats} runs:")
    print(f"  {'in process':<42} {_median(in_process)}")
    print(f"  {'DetectionJob (worker process)':<42} {_median(as_job)}")
    poll_us = statistics.median(polls) * 1e6
    print(f"  {'one poll() on the GUI thread':<42} {poll_us:7.1f} us (max {max(polls) * 1e6:.0f} us)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    headless.ensure_scene()
    bench_worker_overhead(args.repeats)
    bench_gui_thread(args.repeats)


if __name__ == "__main__":
    main()
