"""Detection end to end: the bundled model on a generated study, the demo, predict, evaluate,
and the detections as Slicer nodes next to the user's own segments (real MRML, slicer-core)."""

from __future__ import annotations

import csv
import re
import shutil

import numpy as np
import pytest
import SimpleITK as sitk

pytest.importorskip("torch", reason="the model runs on torch")

from PETCTLesionsLib import detection, metrics
from PETCTLesionsLib.cli import main
from PETCTLesionsLib.measurements import measure_lesions
from PETCTLesionsLib.model import weights
from PETCTLesionsLib.synthetic.phantom import PhantomConfig, make_phantom
from PETCTLesionsLib.training.data import phantom_study_arrays


@pytest.fixture(scope="module")
def chest_study():
    """A full-size generated chest PET/CT (the demo's kind of study), seed never used in training."""
    return make_phantom(PhantomConfig(seed=77, size="full", body="torso", n_lesions=4))


@pytest.fixture(scope="module")
def found(chest_study):
    arrays = phantom_study_arrays(chest_study)
    return detection.detect_lesions(weights.load_model(), arrays.ct_hu_on_pet, arrays.pet_suv, chest_study.pet_grid)


def test_the_bundled_model_finds_the_generated_lesions_on_cpu(chest_study, found):
    truth = metrics.case_metrics(found.mask, chest_study.lesion_mask_pet(), chest_study.pet_grid.voxel_volume_ml)
    assert truth.dice > 0.75
    assert truth.detected_lesions >= 3 and truth.false_positive_lesions <= 1
    assert found.device == "cpu" and found.lesion_map.dtype == np.uint16
    # Measurements are those of the PET inside each detected lesion.
    for lesion in found.lesions:
        inside = found.lesion_map == lesion.label
        assert lesion.voxels == int(inside.sum())
        assert lesion.suv_max == pytest.approx(float(chest_study.pet_suv[inside].max()))
        assert 0.5 <= lesion.score <= 1.0
    assert [lesion.voxels for lesion in found.lesions] == sorted(
        (lesion.voxels for lesion in found.lesions), reverse=True
    )


def test_detections_become_segments_and_boxes_beside_the_users_own_segment(mrml_scene, chest_study, found):
    import slicer

    from PETCTLesionsLib.mrml.detection_nodes import add_detection_nodes, segment_measurements, undo_detection
    from PETCTLesionsLib.mrml.segmentations import lesion_map_on, segmentation_from_mask
    from PETCTLesionsLib.mrml.volumes import volume_node_from_image

    pet = volume_node_from_image(chest_study.pet_grid.to_sitk(chest_study.pet_suv), "PET")
    user_mask = np.zeros(chest_study.pet_grid.shape, np.uint8)
    user_mask[5:8, 90:95, 90:95] = 1
    user = segmentation_from_mask(chest_study.pet_grid.to_sitk(user_mask), "my work")
    user.GetSegmentation().GetNthSegment(0).SetName("Lesion 1")  # the user's own "Lesion 1"
    user.GetSegmentation().AddEmptySegment("", "my note")

    nodes = add_detection_nodes(found, pet, segmentation=user)
    content = user.GetSegmentation()
    names = [content.GetNthSegment(n).GetName() for n in range(content.GetNumberOfSegments())]
    assert names[:2] == ["Lesion 1", "my note"]
    assert names[2:] == [f"Lesion {n + 2}" for n in range(len(found.lesions))]  # numbering continues
    first = content.GetSegment(nodes.segment_ids[0])
    measured = segment_measurements(first)
    assert measured["suv_max"] == pytest.approx(found.lesions[0].suv_max, rel=1e-5)
    assert measured["mtv_ml"] == pytest.approx(found.lesions[0].mtv_ml, rel=1e-5)
    assert measured["probability_mean"] == pytest.approx(found.lesions[0].probability_mean, rel=1e-5)
    assert segment_measurements(content.GetNthSegment(1)) == {}  # the user's note has none
    # The detections are on the PET grid voxel for voxel; the user's segment is untouched.
    on_pet, order = lesion_map_on(user, pet)
    assert order == names
    assert np.array_equal(on_pet >= 3, found.mask > 0)  # segments 3.. are the detections
    assert np.array_equal(on_pet == 1, user_mask > 0)
    # One step back: only the user's segments are left.
    undo_detection(nodes)
    assert [content.GetNthSegment(n).GetName() for n in range(content.GetNumberOfSegments())] == ["Lesion 1", "my note"]
    assert slicer.mrmlScene.GetNodesByClass("vtkMRMLSegmentationNode").GetNumberOfItems() == 1


def test_detections_get_voc_boxes_on_the_ct_slices_of_a_lung_dx_patient(mrml_scene, tmp_path):
    from PETCTLesionsLib.mrml.boxes import voc_from_box_nodes
    from PETCTLesionsLib.mrml.detection_nodes import add_detection_nodes, undo_detection
    from PETCTLesionsLib.mrml.study_nodes import add_study_nodes
    from PETCTLesionsLib.study import load_study
    from PETCTLesionsLib.synthetic.synth import generate_dataset

    (case,) = generate_dataset(tmp_path, cases=1, seed=4, size="small", flavour="lung", n_lesions=3)
    loaded = load_study([case.study_dir])
    ct, pet = add_study_nodes(loaded)
    pet_grid = detection.Grid.from_sitk(loaded.pet_suv)
    truth = sitk.GetArrayFromImage(sitk.ReadImage(str(case.nnunet_files["label"])))
    lesion_map, count = detection.lesions_from_probability(truth.astype(np.float32), 0.5, 0.0, pet_grid.voxel_volume_ml)
    pet_suv = sitk.GetArrayFromImage(loaded.pet_suv)
    filter_note = "false-positive filter: removed 1 of 4 candidate(s) with p(lesion) < 0.12: 0.30 mL (p=0.01)"
    known = detection.Detection(
        pet_grid,
        truth.astype(np.float32),
        lesion_map,
        measure_lesions(lesion_map, count, pet_suv, pet_grid),
        0.5,
        0.0,
        notes=[filter_note],
    )
    nodes = add_detection_nodes(known, pet, ct_node=ct)
    class_letter = case.patient_id.split("-")[-1][0]
    expected = detection.ct_slice_boxes(known, detection.Grid.from_sitk(loaded.ct))
    assert len(nodes.boxes) == len(expected) > 0 and nodes.notes == [filter_note]  # shown after the run
    annotations, skipped = voc_from_box_nodes(nodes.boxes, ct, class_letter)
    exported = sorted((a.sop_instance_uid, b.to_pixel_ranges(), b.name) for a in annotations for b in a.boxes)
    uids = loaded.ct_series.slice_sop_instance_uids
    assert exported == sorted((uids[b.k], (b.c0, b.r0, b.c1, b.r1), class_letter) for b in expected)
    assert skipped == []
    # Undo removes what the detection made: its new segmentation and every box.
    undo_detection(nodes)
    assert mrml_scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode") == 0
    assert mrml_scene.GetNumberOfNodesByClass("vtkMRMLMarkupsROINode") == 0
    assert ct.GetScene() is mrml_scene and pet.GetScene() is mrml_scene


def test_demo_detects_the_lesions_and_writes_table_pictures_nnunet_and_voc(tmp_path, capsys, monkeypatch):
    from PETCTLesionsLib import study

    loads, series_read = [], []
    load_study, read_series_image = study.load_study, study.read_series_image
    monkeypatch.setattr(study, "load_study", lambda *a, **k: loads.append(a[0]) or load_study(*a, **k))
    monkeypatch.setattr(study, "read_series_image", lambda *a, **k: series_read.append(1) or read_series_image(*a, **k))

    assert main(["demo", "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    # The study is read from DICOM once (its CT and PET pixels once each): predict loads it, and the
    # Slicer views at the end draw the study predict loaded.
    assert len(loads) == 1 and len(series_read) == 2
    assert " true lesion" in printed and "Against the ground truth: Dice" in printed
    (case_dir,) = [p for p in (tmp_path / "predicted").iterdir() if p.is_dir() and p.name.startswith("Lung_Dx-")]
    with open(case_dir / "lesions.csv", newline="") as stream:
        rows = list(csv.DictReader(stream))
    assert rows and float(rows[0]["mtv_ml"]) > 0
    assert float(rows[0]["suvbw_max_g_ml"]) >= float(rows[0]["suvbw_peak_g_ml"]) > 0
    pictures = sorted(p.name for p in (case_dir / "pictures").glob("*.png"))
    assert "pet_mip_coronal.png" in pictures and any(name.startswith("axial_lesion1_") for name in pictures)
    axial = sitk.GetArrayFromImage(sitk.ReadImage(str(next((case_dir / "pictures").glob("axial_lesion1_*.png")))))
    left = axial[:, : axial.shape[1] // 2].astype(int)
    heat = (left[..., 0] > 150) & (left[..., 0] > left[..., 2] + 80)  # PET colours
    outline = (left[..., 1] > 200) & (left[..., 0] < 100) & (left[..., 2] < 120)  # lesion contour
    assert heat.sum() > 50 and outline.sum() > 10
    label = next((tmp_path / "predicted" / "nnUNet_raw").glob("*/labelsTr/*.nii.gz"))
    assert sitk.GetArrayFromImage(sitk.ReadImage(str(label))).sum() == sum(int(r["pet_voxels"]) for r in rows)
    assert list((tmp_path / "predicted" / "Annotation").glob("*/*.xml"))
    # The prediction is named as the ground truth case, so evaluate pairs the two.
    truth_labels = next((tmp_path / "nnUNet_raw").glob("*/labelsTr"))
    assert [p.name for p in truth_labels.iterdir()] == [label.name] == [f"{case_dir.name}.nii.gz"]
    assert main(["evaluate", "--pred", str(label.parent), "--ref", str(truth_labels)]) == 0
    dice = re.search(r"Against the ground truth: Dice (\d\.\d{3})", printed).group(1)
    assert re.search(rf"^{re.escape(label.name)} +{dice} ", capsys.readouterr().out, flags=re.MULTILINE)
    # Predicting the same study into the same folder again is refused before the model runs.
    from PETCTLesionsLib import predict as predict_module

    monkeypatch.setattr(predict_module, "detect_lesions", lambda *a, **k: pytest.fail("the model ran"))
    assert main(["predict", str(tmp_path / "Lung-PET-CT-Dx"), "--out", str(tmp_path / "predicted")]) == 1
    assert f"{case_dir / 'lesions.csv'}: already exists (an earlier run's result)" in capsys.readouterr().out
    # The same detections as Slicer's own axial and coronal views draw them (slicer-core, offscreen), on the
    # study read once above.
    from PETCTLesionsLib.mrml.boxes import BOX_FILL_OPACITY, box_colour
    from PETCTLesionsLib.mrml.segmentations import lesion_colour

    segment_colour = np.array(lesion_colour(1)) * 255.0
    # In the axial view the outline runs inside the lesion's box, under the box's faint fill.
    box_rgb = np.array(box_colour(lesion_colour(1))) * 255.0
    under_box = (1 - BOX_FILL_OPACITY) * segment_colour + BOX_FILL_OPACITY * box_rgb
    for name in ("slicer_axial_fused.png", "slicer_coronal_fused.png"):
        view = sitk.GetArrayFromImage(sitk.ReadImage(str(case_dir / name))).astype(float)
        assert view.shape == (512, 512, 3) and f"Slicer view: {case_dir / name}" in printed
        assert ((view[..., 0] > 150) & (view[..., 0] > view[..., 2] + 80)).sum() > 50  # PET colours
        outline = [np.all(np.abs(view - colour) <= 3, axis=-1) for colour in (segment_colour, under_box)]
        assert (outline[0] | outline[1]).sum() > 20  # lesion 1's outline


def test_predict_on_an_nnunet_dataset_then_evaluate_against_its_labels(tmp_path, capsys, monkeypatch):
    from PETCTLesionsLib.synthetic.synth import DATASET_FOLDER, generate_dataset

    generate_dataset(tmp_path / "data", cases=1, seed=12, size="small", flavour="autopet")
    dataset = tmp_path / "data" / "nnUNet_raw" / DATASET_FOLDER
    assert main(["predict", str(dataset), "--out", str(tmp_path / "pred"), "--device", "cpu", "--no-pictures"]) == 0
    assert "lesion(s) on cpu" in capsys.readouterr().out
    # Never overwrites silently, and says so before the model runs, not after.
    from PETCTLesionsLib import predict as predict_module

    with monkeypatch.context() as patched:
        patched.setattr(predict_module, "detect_lesions", lambda *a, **k: pytest.fail("the model ran"))
        assert main(["predict", str(dataset), "--out", str(tmp_path / "pred")]) == 1
    printed = capsys.readouterr().out
    assert "already exists (an earlier run's result); refusing to overwrite it (--overwrite replaces it" in printed
    # A model file that is not there: one line naming it, no traceback.
    missing = tmp_path / "no such model.json"
    assert main(["predict", str(dataset), "--model", str(missing), "--out", str(tmp_path / "other")]) == 2
    error = capsys.readouterr().err
    assert error.startswith(f"petct-lesions predict: error: {missing}") and "Traceback" not in error
    assert main(["evaluate", "--pred", str(tmp_path / "pred"), "--ref", str(dataset / "labelsTr"), "--json"]) == 0
    printed = capsys.readouterr()  # --json: the JSON alone on stdout, the table on stderr
    assert "mean over 1 studies" in printed.err and '"box_map50"' in printed.out
    # The same label against itself: perfect scores.
    label = next((dataset / "labelsTr").glob("*.nii.gz"))
    assert main(["evaluate", "--pred", str(label), "--ref", str(label), "--json"]) == 0
    assert '"dice": 1.0' in capsys.readouterr().out
    # Predicting needs no labels: imagesTr without labelsTr (used to fail every case).
    shutil.move(str(dataset / "labelsTr"), str(tmp_path / "labels elsewhere"))
    assert main(["predict", str(dataset), "--out", str(tmp_path / "unlabelled"), "--device", "cpu"]) == 0
    assert [p.name for p in (tmp_path / "unlabelled").glob("*.nii.gz")] == [label.name]
