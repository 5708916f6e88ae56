"""The module's workflow, button by button, on real MRML (slicer-core) and real files.

Each step calls what the module's Logic calls for that button (PETCTLesions.py delegates to
these functions): load the demo study from DICOM, fused display presets, detection in a
background process on the CPU (with progress, and cancel), the lesion table, review
(accept / reject / delete / class / add box), an edit as the Segment Editor makes it,
export, and re-import of the exported files compared with what the scene held.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from PETCTLesionsLib.demo import write_demo_study
from PETCTLesionsLib.detection_job import DetectionJob, DetectionJobError, DetectionSettings, JobStatus
from PETCTLesionsLib.formats import nnunet, voc
from PETCTLesionsLib.study import load_study


@pytest.fixture(scope="module")
def demo_case(tmp_path_factory):
    """The module's demo patient (small size for speed): DICOM, ground-truth VOC and nnU-Net on disk."""
    return write_demo_study(tmp_path_factory.mktemp("demo"), seed=1, size="small")


def _run(job: DetectionJob, timeout_s: float = 300) -> list:
    """Poll the job as the Widget's timer does; returns every status seen."""
    seen = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = job.poll()
        seen.append(status)
        if status.done:
            return seen
        time.sleep(0.05)
    job.cancel()
    raise AssertionError(f"detection did not finish in {timeout_s} s:\n{job.log}")


def test_demo_study_detect_review_edit_export_and_reimport(mrml_scene, demo_case, tmp_path):
    import slicer

    from PETCTLesionsLib.detection import ct_slice_boxes
    from PETCTLesionsLib.lesions import slice_boxes
    from PETCTLesionsLib.mrml import review
    from PETCTLesionsLib.mrml.boxes import SEGMENT_ID_ATTRIBUTE, box_nodes_of, voc_from_box_nodes
    from PETCTLesionsLib.mrml.detection_nodes import add_detection_nodes, detection_inputs
    from PETCTLesionsLib.mrml.display import apply_ct_preset, show_fused_study
    from PETCTLesionsLib.mrml.export import export_study
    from PETCTLesionsLib.mrml.segmentations import lesion_map_on
    from PETCTLesionsLib.mrml.study_nodes import add_study_nodes, slice_sop_instance_uids, study_case_id
    from PETCTLesionsLib.mrml.volumes import grid_from_volume_node

    study, case = demo_case
    # Study: load from DICOM (PET in SUVbw); Display: fused, then the Lung preset.
    loaded = load_study([case.study_dir])
    ct, pet = add_study_nodes(loaded)
    show_fused_study(ct, pet, preset="Mediastinum")
    assert (ct.GetDisplayNode().GetWindow(), ct.GetDisplayNode().GetLevel()) == (350.0, 40.0)
    apply_ct_preset(ct, "Lung")
    assert (ct.GetDisplayNode().GetWindow(), ct.GetDisplayNode().GetLevel()) == (1400.0, -700.0)

    # Detect: in a worker process on the CPU, progress rising to 1, then segments and boxes.
    ct_hu, pet_suv, pet_grid = detection_inputs(ct, pet)
    assert pet_suv.shape == study.pet_grid.shape
    np.testing.assert_allclose(pet_suv, study.pet_suv, rtol=1e-3, atol=1e-3)  # SUV as generated
    job = DetectionJob(ct_hu, pet_suv, pet_grid, DetectionSettings(device="cpu"))
    statuses = _run(job)
    assert statuses[-1].state == "finished", job.log
    fractions = [s.fraction for s in statuses]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    found = job.result()
    assert not job.job_dir.exists()  # the worker's files are gone once the result is taken
    assert found.device == "cpu" and len(found.lesions) == 3
    assert found.probability.dtype == np.float16 and found.probability.shape == pet_grid.shape
    truth = study.pet_lesion_labels > 0
    assert all(truth[found.lesion_map == lesion.label].mean() > 0.5 for lesion in found.lesions)
    nodes = add_detection_nodes(found, pet, ct)  # boxes of the Lung_Dx patient's histology class
    segmentation = nodes.segmentation
    assert len(nodes.segment_ids) == 3 and len(nodes.boxes) > 3
    traced = ct_slice_boxes(found, grid_from_volume_node(ct))
    assert len(nodes.boxes) == len(traced)  # traced at CT resolution from the worker's probability
    assert {box.GetAttribute(SEGMENT_ID_ATTRIBUTE) for box in nodes.boxes} == set(nodes.segment_ids)

    # Review: the table measures the segments on the PET as they are.
    rows = review.lesion_rows(segmentation, pet, ct, patient_id=case.patient_id)
    assert [row.segment_id for row in rows] == nodes.segment_ids
    for row, lesion in zip(rows, found.lesions):
        inside = found.lesion_map == lesion.label
        assert row.voxels == int(inside.sum())
        assert row.suv_max == pytest.approx(float(pet_suv[inside].max()), rel=1e-6)
        assert row.mtv_ml == pytest.approx(inside.sum() * pet_grid.voxel_volume_ml)
        assert row.tlg == pytest.approx(row.suv_mean * row.mtv_ml)
        assert row.class_name == voc.histology_class(case.patient_id) and row.status == ""
        assert row.slices is not None and row.slices[0] <= row.slices[1]
    first, second, third = rows

    # Clicking a row centres every slice view on the lesion.
    review.centre_views_on(mrml_scene, first.centre_ras)
    for layout in ("Red", "Yellow", "Green"):
        slice_node = mrml_scene.GetNodeByID(f"vtkMRMLSliceNode{layout}")
        centre = np.array([slice_node.GetSliceToRAS().GetElement(r, 3) for r in range(3)])
        np.testing.assert_allclose(centre, first.centre_ras, atol=1e-6)
        np.testing.assert_allclose(review.view_centre_ras(slice_node), first.centre_ras, atol=1e-6)

    # Reject the second lesion: hidden with its boxes. Delete the third with its boxes.
    review.set_status(segmentation, first.segment_id, review.ACCEPTED)
    review.set_status(segmentation, second.segment_id, review.REJECTED)
    assert not segmentation.GetDisplayNode().GetSegmentVisibility(second.segment_id)
    second_boxes = review.boxes_of_segment(segmentation, second.segment_id)
    assert second_boxes and not any(box.GetDisplayNode().GetVisibility() for box in second_boxes)
    third_boxes = len(review.boxes_of_segment(segmentation, third.segment_id))
    assert review.delete_lesion(segmentation, third.segment_id) == third_boxes > 0
    assert segmentation.GetSegmentation().GetSegment(third.segment_id) is None

    # Edit the first lesion as the Segment Editor would: erase its upper half (PET grid voxels).
    first_mask = slicer.util.arrayFromSegmentBinaryLabelmap(segmentation, first.segment_id, pet)
    k_top = int(np.nonzero(first_mask.any(axis=(1, 2)))[0].mean())
    edited = first_mask.copy()
    edited[k_top + 1 :] = 0
    slicer.util.updateSegmentBinaryLabelmapFromArray(edited, segmentation, first.segment_id, pet)
    edited_row = review.lesion_rows(segmentation, pet, ct, patient_id=case.patient_id)[0]
    assert edited_row.voxels == int(edited.sum()) < first.voxels
    assert edited_row.status == review.ACCEPTED

    # Add a box for the first lesion on the CT slice through its centre: its tight box there.
    box = review.add_box_on_slice(ct, edited_row.centre_ras, edited_row.class_name, segmentation, first.segment_id)
    assert box.GetAttribute(SEGMENT_ID_ATTRIBUTE) == first.segment_id
    # ... exactly the lesion's tight box on that slice, as Slicer rasterises it on the whole CT grid.
    (annotation,), _ = voc_from_box_nodes([box], ct, None)
    k = slice_sop_instance_uids(ct).index(annotation.sop_instance_uid)
    ct_map, _ = lesion_map_on(segmentation, ct)
    (expected,) = slice_boxes((ct_map[k : k + 1] == 1).astype(np.uint8))
    assert annotation.boxes[0].to_pixel_ranges() == (expected.c0, expected.r0, expected.c1, expected.r1)
    boxes_before_export = len(box_nodes_of(ct))

    # Export, then read the files back.
    dataset = tmp_path / "nnUNet_raw" / "Dataset905_Reviewed"
    voc_root = tmp_path / "Annotation"
    report = export_study(ct, pet, segmentation, nnunet_dataset=dataset, voc_root=voc_root)
    assert report.skipped == [], report.text()
    case_id = study_case_id(ct)  # named after the study, as the convert command names it
    assert case_id == nnunet.case_id_for_study(case.patient_id, loaded.study_uid, loaded.study_date)
    assert loaded.study_date and case_id.endswith(
        f"{loaded.study_date[:4]}-{loaded.study_date[4:6]}-{loaded.study_date[6:]}"
    )
    exported = nnunet.read_case(dataset, case_id)
    label = slicer_array(exported.label)
    # Only the accepted, edited lesion is labelled: the rejected one and the deleted one are not.
    assert int(label.sum()) == int(edited.sum())
    np.testing.assert_array_equal(label.astype(bool), edited.astype(bool))
    np.testing.assert_allclose(slicer_array(exported.pet), pet_suv, rtol=1e-6)

    annotations, problems = voc.read_voc_folder(voc_root / voc.patient_folder_name(case.patient_id))
    assert problems == []
    written_boxes = sum(len(a.boxes) for a in annotations)
    kept = boxes_before_export - len(second_boxes)
    assert written_boxes == kept
    assert {b.name for a in annotations for b in a.boxes} == {voc.histology_class(case.patient_id)}


def slicer_array(image) -> np.ndarray:
    import SimpleITK as sitk

    return sitk.GetArrayFromImage(image)


@pytest.mark.torch
def test_a_cancelled_detection_leaves_nothing_behind(demo_case, tmp_path):
    study, _ = demo_case
    from PETCTLesionsLib.training.data import phantom_study_arrays

    arrays = phantom_study_arrays(study)
    job = DetectionJob(
        arrays.ct_hu_on_pet, arrays.pet_suv, study.pet_grid, DetectionSettings(device="cpu"), work_root=tmp_path
    )
    assert job.job_dir.parent == tmp_path and (job.job_dir / "job.json").is_file()
    job.cancel()
    status = job.poll()
    assert status == JobStatus("cancelled", status.fraction, status.message, [])
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(DetectionJobError, match="did not finish"):
        job.result()


@pytest.mark.skipif(os.name != "posix", reason="the stand-in launcher is a POSIX shell script")
def _job_behind_launcher(study, launcher: Path, script: str, environment: dict, **options) -> DetectionJob:
    """A CPU detection job started through ``launcher``, a shell script standing in for PythonSlicer."""
    from PETCTLesionsLib.training.data import phantom_study_arrays

    launcher.write_text(script)
    launcher.chmod(0o755)
    arrays = phantom_study_arrays(study)
    settings = DetectionSettings(device="cpu")
    environment = {**environment, "REAL_PYTHON": sys.executable}
    return DetectionJob(
        arrays.ct_hu_on_pet,
        arrays.pet_suv,
        study.pet_grid,
        settings,
        python=str(launcher),
        environment=environment,
        **options,
    )


@pytest.mark.torch
def test_cancel_stops_the_model_behind_a_launcher_that_passes_no_signals(demo_case, tmp_path):
    """Inside Slicer the worker runs under PythonSlicer, a launcher that starts the real Python as
    its child and does not forward signals: terminating it used to leave the model running."""
    study, _ = demo_case
    pid_file, work = tmp_path / "worker.pid", tmp_path / "jobs"
    work.mkdir()
    script = (
        "#!/bin/sh\n"
        "trap '' TERM  # deaf to terminate(): only the worker's own watchdog can end the job\n"
        '"$REAL_PYTHON" "$@" &\n'
        'echo $! > "$PID_FILE"\n'
        "wait $!\n"
    )
    environment = {**os.environ, "PID_FILE": str(pid_file)}
    job = _job_behind_launcher(study, tmp_path / "PythonSlicer", script, environment, work_root=work)
    while job.poll().fraction == 0.0 and job.poll().state == "running":  # the worker is at work
        time.sleep(0.05)
    worker = int(pid_file.read_text())

    job.cancel()

    # The launcher ended because its child ended (exit code 3: the watchdog), not by SIGKILL.
    assert job._process.returncode == 3
    assert not Path(f"/proc/{worker}").exists() or "State:\tZ" in Path(f"/proc/{worker}/status").read_text()
    assert list(work.iterdir()) == []


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="a glibc (Linux) setting")
@pytest.mark.torch
def test_the_worker_runs_the_model_with_huge_pages(demo_case, tmp_path):
    """glibc.malloc.hugetlb=1 (PETCTLesionsLib/hugepages.py): far fewer page faults, a third less model time."""
    study, _ = demo_case
    seen = tmp_path / "tunables.txt"
    script = '#!/bin/sh\necho "$GLIBC_TUNABLES" > "$SEEN"\nexec "$REAL_PYTHON" "$@"\n'
    environment = {key: value for key, value in os.environ.items() if key != "GLIBC_TUNABLES"}
    environment["SEEN"] = str(seen)
    job = _job_behind_launcher(study, tmp_path / "PythonSlicer", script, environment)
    assert job.wait(timeout=300).state == "finished", job.log
    assert seen.read_text() == "glibc.malloc.hugetlb=1\n"


@pytest.mark.torch
def test_a_failing_detection_reports_the_workers_message(demo_case, tmp_path):
    study, _ = demo_case
    from PETCTLesionsLib.training.data import phantom_study_arrays

    arrays = phantom_study_arrays(study)
    missing = tmp_path / "no-such-model.json"
    job = DetectionJob(arrays.ct_hu_on_pet, arrays.pet_suv, study.pet_grid, DetectionSettings(model_path=str(missing)))
    status = job.wait(timeout=120)
    assert status.state == "failed"
    with pytest.raises(DetectionJobError, match="no-such-model.json"):
        job.result()
    assert not job.job_dir.exists()


def test_a_worker_result_on_another_grid_is_refused_naming_the_file(tmp_path):
    import json

    from PETCTLesionsLib.detection_job import LESION_MAP_FILE, PROBABILITY_FILE, RESULT_FILE, read_result
    from PETCTLesionsLib.geometry import Grid

    grid = Grid((6, 5, 4), (4.0, 4.0, 3.0), (0.0, 0.0, 0.0))
    result = {"lesions": [], "threshold": 0.5, "min_volume_ml": 0.0, "device": "cpu", "notes": []}
    (tmp_path / RESULT_FILE).write_text(json.dumps(result))
    np.save(tmp_path / LESION_MAP_FILE, np.zeros(grid.shape, np.uint16))
    np.save(tmp_path / PROBABILITY_FILE, np.full(grid.shape, 0.25, np.float16))
    found = read_result(tmp_path, grid)
    assert found.probability.dtype == np.float16 and float(found.probability.max()) == 0.25
    np.save(tmp_path / PROBABILITY_FILE, np.zeros((4, 5, 5), np.float16))
    with pytest.raises(DetectionJobError, match=rf"{PROBABILITY_FILE}: shape \(4, 5, 5\), expected \(4, 5, 6\)"):
        read_result(tmp_path, grid)
