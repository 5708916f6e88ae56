"""Annotations both ways through Slicer's representation: VOC boxes <-> ROI nodes on their CT
slice, nnU-Net labels <-> one segment per lesion, and the convert command that chains them.
Real TCIA files where we have them; synthetic studies with known truth elsewhere."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import LUNG_DX_ANNOTATIONS, LUNG_DX_CT_SERIES, LUNG_DX_ROOT, copy_series

from PETCTLesionsLib.cli import main
from PETCTLesionsLib.dicom.index import scan_paths
from PETCTLesionsLib.formats import nnunet, voc
from PETCTLesionsLib.geometry import Grid
from PETCTLesionsLib.lesions import LabelError, label_lesions
from PETCTLesionsLib.study import load_series_image

pytestmark = pytest.mark.slicer  # skipped where slicer-core is not installed (Slicer 5.6's stack in CI)


def _real_ct_node():
    from PETCTLesionsLib.mrml.study_nodes import add_series_volume

    scan = scan_paths([LUNG_DX_CT_SERIES])
    (study,) = scan.studies
    image, info = load_series_image(study.series[0])
    return add_series_volume(image, info, study.patient_id, study.study_uid, "Lung_Dx-A0001 CT")


def _boxes_by_file(folder: Path) -> dict:
    result = {}
    for path in sorted(folder.glob("*.xml")):
        annotation = voc.parse_voc_xml(path)
        result[path.name] = sorted(
            (b.name, b.xmin, b.ymin, b.xmax, b.ymax, b.truncated, b.difficult) for b in annotation.boxes
        )
    return result


def test_real_tcia_boxes_become_rois_on_their_slices_and_export_back_identically(mrml_scene, tmp_path):
    import slicer

    from PETCTLesionsLib.mrml.boxes import (
        CLASS_ATTRIBUTE,
        SOP_INSTANCE_UID_ATTRIBUTE,
        add_box_nodes,
        box_nodes_of,
        voc_from_box_nodes,
    )
    from PETCTLesionsLib.mrml.study_nodes import slice_sop_instance_uids

    ct = _real_ct_node()
    annotations, problems = voc.read_voc_folder(LUNG_DX_ANNOTATIONS)
    assert problems == [] and len(annotations) == 11

    imported = add_box_nodes(annotations, ct)

    assert imported.skipped == []
    assert len(imported.nodes) == sum(len(a.boxes) for a in annotations)
    uids = slice_sop_instance_uids(ct)
    spacing = np.array(ct.GetSpacing())
    for node, annotation in zip(imported.nodes, annotations):
        (box,) = annotation.boxes
        assert node.GetAttribute(CLASS_ATTRIBUTE) == box.name == "A"
        assert node.GetAttribute(SOP_INSTANCE_UID_ATTRIBUTE) == annotation.sop_instance_uid
        # The ROI lies on its slice: centre at that slice's z, one slice thick, the box's size in plane.
        k = uids.index(annotation.sop_instance_uid)
        ijk = np.linalg.inv(
            Grid.from_sitk(load_series_image(scan_paths([LUNG_DX_CT_SERIES]).series[0])[0]).ijk_to_ras()
        )
        centre_k = (ijk @ np.array([*node.GetCenter(), 1.0]))[2]
        assert centre_k == pytest.approx(k, abs=1e-6)
        expected_size = [(box.xmax - box.xmin) * spacing[0], (box.ymax - box.ymin) * spacing[1], spacing[2]]  # edges
        np.testing.assert_allclose(node.GetSize(), expected_size, rtol=1e-9)
    # Grouped in the subject hierarchy: VOC boxes / Lesion n, beside the CT.
    hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(mrml_scene)
    lesion_folder = hierarchy.GetItemParent(hierarchy.GetItemByDataNode(imported.nodes[0]))
    assert hierarchy.GetItemName(lesion_folder) == "Lesion 1"
    assert hierarchy.GetItemName(hierarchy.GetItemParent(lesion_folder)) == "VOC boxes"
    # The 11 boxes on 11 consecutive slices overlap: one lesion.
    assert {node.GetAttribute("VOC.lesion") for node in imported.nodes} == {"1"}

    exported, skipped = voc_from_box_nodes(box_nodes_of(ct), ct, default_class="A")
    assert skipped == []
    written = voc.write_voc_folder(exported, tmp_path / "A0001")

    assert sorted(p.name for p in written) == sorted(p.name for p in LUNG_DX_ANNOTATIONS.glob("*.xml"))
    assert _boxes_by_file(tmp_path / "A0001") == _boxes_by_file(LUNG_DX_ANNOTATIONS)
    # LabelImg-compatible: size from the CT slice, depth 1.
    first = voc.parse_voc_xml(written[0])
    assert (first.width, first.height, first.depth) == (512, 512, 1)


def test_a_dragged_box_exports_where_the_user_left_it(mrml_scene):
    from PETCTLesionsLib.mrml.boxes import add_box_nodes, voc_from_box_nodes
    from PETCTLesionsLib.mrml.study_nodes import slice_sop_instance_uids

    ct = _real_ct_node()
    annotations, _ = voc.read_voc_folder(LUNG_DX_ANNOTATIONS)
    node = add_box_nodes(annotations[:1], ct).nodes[0]
    spacing = ct.GetSpacing()
    centre = np.array(node.GetCenter())
    # Drag 3 columns to the right (R is -x in LPS: +i on this axial CT is -R... use the matrix).
    ijk_to_ras = Grid.from_sitk(load_series_image(scan_paths([LUNG_DX_CT_SERIES]).series[0])[0]).ijk_to_ras()
    node.SetCenter(*(centre + ijk_to_ras[:3, :3] @ np.array([3.0, 0.0, 2.0])))
    (annotation,), _ = voc_from_box_nodes([node], ct, default_class="A")
    original = annotations[0].boxes[0]
    moved = annotation.boxes[0]
    assert (moved.xmin, moved.xmax) == (original.xmin + 3, original.xmax + 3)
    assert (moved.ymin, moved.ymax) == (original.ymin, original.ymax)
    uids = slice_sop_instance_uids(ct)
    assert annotation.sop_instance_uid == uids[uids.index(annotations[0].sop_instance_uid) + 2]
    assert spacing[2] > 0


def test_boxes_for_other_slices_other_sizes_or_off_the_image_are_skipped_and_reported(mrml_scene):
    from PETCTLesionsLib.mrml.boxes import add_box_nodes

    ct = _real_ct_node()
    good, _ = voc.read_voc_folder(LUNG_DX_ANNOTATIONS)
    stranger = voc.VocAnnotation("1.2.3.4", 512, 512, boxes=[voc.VocBox("A", 10, 10, 20, 20)])
    small = voc.VocAnnotation(good[1].sop_instance_uid, 256, 256, boxes=[voc.VocBox("A", 10, 10, 20, 20)])
    outside = voc.VocAnnotation(good[2].sop_instance_uid, 512, 512, boxes=[voc.VocBox("A", 512, 10, 520, 20)])

    result = add_box_nodes([good[0], stranger, small, outside], ct)

    assert len(result.nodes) == 1
    assert len(result.skipped) == 3
    assert "1.2.3.4.xml: no slice of CT" in result.skipped[0]
    assert "drawn on a 256x256 image but the CT slice is 512x512" in result.skipped[1]
    assert "lies outside the 512x512 image" in result.skipped[2]


def test_a_real_file_without_size_is_placed_against_the_real_slice(mrml_scene, tmp_path):
    """<size> only repeats the slice's size: without it the boxes still land, checked on the CT."""
    from PETCTLesionsLib.mrml.boxes import add_box_nodes, voc_from_box_nodes

    ct = _real_ct_node()
    source = sorted(LUNG_DX_ANNOTATIONS.glob("*.xml"))[0]
    sizeless = tmp_path / source.name
    text = source.read_text()
    sizeless.write_text(text[: text.index("<size>")] + text[text.index("</size>") + len("</size>") :])
    (annotation,), problems = voc.read_voc_folder(tmp_path)
    assert problems == [] and (annotation.width, annotation.height) == (None, None)
    with_size, _ = voc.read_voc_file(source)

    imported = add_box_nodes([annotation], ct)

    assert imported.skipped == [] and len(imported.nodes) == 1
    assert imported.notes == [f"{sizeless}: no <size>; image size taken from the CT slice, boxes kept"]
    assert annotation.boxes == with_size.boxes
    # The real slice still bounds the boxes: one reaching past it is cut to it, one wholly off it skipped.
    annotation.boxes = [voc.VocBox("A", 500, 10, 520, 20), voc.VocBox("A", 512, 10, 520, 20)]
    placed = add_box_nodes([annotation], ct)
    assert len(placed.nodes) == 1 and "lies outside the 512x512 image" in placed.skipped[0]
    assert placed.notes[-1] == (
        f"{sizeless}: object 1 (A) reaches beyond the 512x512 image (xmin 500, ymin 10, xmax 520, ymax 20); "
        "cut to xmin 500, ymin 10, xmax 512, ymax 20"
    )
    (exported,), _ = voc_from_box_nodes(placed.nodes, ct, default_class="A")
    assert (exported.boxes[0].xmin, exported.boxes[0].xmax) == (500, 512)


# ----------------------------------------------------------------------------------------- nnU-Net


def _many_lesions_label(grid: Grid, count: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    label = np.zeros(grid.shape, np.uint8)
    placed = 0
    while placed < count:
        k, j, i = (int(rng.integers(1, n - 3)) for n in grid.shape)
        if label[k - 1 : k + 3, j - 1 : j + 3, i - 1 : i + 3].any():
            continue  # keep lesions apart so they stay separate components
        label[k : k + 2, j : j + int(rng.integers(1, 3)), i : i + 2] = 1
        placed += 1
    return label


def _write_autopet_case(dataset: Path, case_id: str, label: np.ndarray, grid: Grid) -> None:
    rng = np.random.default_rng(5)
    ct = grid.to_sitk(rng.integers(-1000, 1000, grid.shape).astype(np.int16))
    pet = grid.to_sitk(rng.gamma(2.0, 1.0, grid.shape).astype(np.float32))
    nnunet.write_case(dataset, nnunet.NnUNetCase(case_id, ct, pet, grid.to_sitk(label)))


def test_label_to_segments_to_label_is_voxel_identical_with_130_lesions_and_a_double_space_id(mrml_scene, tmp_path):
    from PETCTLesionsLib.mrml.segmentations import (
        LESION_TERMINOLOGY,
        mask_on,
        segment_terminology,
        segmentation_from_mask,
    )
    from PETCTLesionsLib.mrml.volumes import volume_node_from_image

    grid = Grid(size=(64, 60, 40), spacing=(2.036, 2.036, 3.0), origin=(-65.0, -61.0, -300.0))
    label = _many_lesions_label(grid, 130, seed=2)
    pet = volume_node_from_image(grid.to_sitk(np.zeros(grid.shape, np.float32)), "PET")

    segmentation = segmentation_from_mask(grid.to_sitk(label), "fdg_0a1b  lesions")

    content = segmentation.GetSegmentation()
    assert content.GetNumberOfSegments() == 130 == label_lesions(label)[1]
    names = [content.GetNthSegment(n).GetName() for n in range(130)]
    assert sorted(names) == sorted(f"Lesion {n}" for n in range(1, 131))
    colours = {tuple(round(c, 3) for c in content.GetNthSegment(n).GetColor()) for n in range(130)}
    assert len(colours) > 100  # distinct colours
    assert segment_terminology(content.GetNthSegment(0)) == LESION_TERMINOLOGY
    back = sitk.GetArrayFromImage(mask_on(segmentation, pet))
    assert back.dtype == np.uint8
    np.testing.assert_array_equal(back, label)

    one = segmentation_from_mask(grid.to_sitk(label), "one", per_lesion=False)
    assert one.GetSegmentation().GetNumberOfSegments() == 1
    np.testing.assert_array_equal(sitk.GetArrayFromImage(mask_on(one, pet)), label)


def test_convert_nnunet_case_round_trip_keeps_label_and_a_valid_dataset_json(tmp_path, capsys):
    grid = Grid(size=(48, 44, 30), spacing=(4.07, 4.07, 2.0), origin=(-97.0, -89.0, -500.0))
    label = _many_lesions_label(grid, 110, seed=9)
    source = tmp_path / "Dataset221_autoPETII"
    case_id = "fdg_3a5c  2004-05-12"
    _write_autopet_case(source, case_id, label, grid)
    _write_autopet_case(source, "psma_other_2019", label[::-1].copy(), grid)

    rc = main(["convert", "--nnunet", str(source), "--case", case_id, "--out", str(tmp_path / "out")])

    assert rc == 0
    printed = capsys.readouterr().out
    dataset = tmp_path / "out" / "nnUNet_raw" / "Dataset901_PETCTLesionsConverted"
    back = nnunet.read_case(dataset, case_id)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back.label), label)
    original = nnunet.read_case(source, case_id)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back.ct), sitk.GetArrayFromImage(original.ct))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back.pet), sitk.GetArrayFromImage(original.pet))
    content = nnunet.read_dataset_json(dataset)
    assert content["channel_names"] == {"0": "CT", "1": "PET"}
    assert content["labels"] == {"background": 0, "tumor": 1}
    assert (content["numTraining"], content["file_ending"]) == (1, ".nii.gz")
    assert f"wrote {dataset / 'labelsTr' / (case_id + '.nii.gz')}" in printed
    assert "VOC export impossible" in printed

    # Run again: the exported case exists and is not replaced; with nothing written the run fails.
    before = (dataset / "labelsTr" / f"{case_id}.nii.gz").stat().st_mtime_ns
    assert main(["convert", "--nnunet", str(source), "--case", case_id, "--out", str(tmp_path / "out")]) == 1
    captured = capsys.readouterr()
    assert "already exists" in captured.out and captured.err == "petct-lesions convert: nothing was written\n"
    assert (dataset / "labelsTr" / f"{case_id}.nii.gz").stat().st_mtime_ns == before


# ----------------------------------------------------------------------------------------- synthetic studies


@pytest.fixture(scope="module")
def synthetic_lung_study(tmp_path_factory):
    from PETCTLesionsLib.synthetic.synth import generate_dataset

    root = tmp_path_factory.mktemp("synth")
    (case,) = generate_dataset(root, cases=1, seed=4, size="small", flavour="lung", n_lesions=5)
    return root, case


def test_segmentation_to_voc_boxes_equals_the_generators_boxes(mrml_scene, synthetic_lung_study, tmp_path):
    from PETCTLesionsLib.mrml.boxes import voc_from_segmentation
    from PETCTLesionsLib.mrml.segmentations import segmentation_from_mask
    from PETCTLesionsLib.mrml.study_nodes import add_study_nodes
    from PETCTLesionsLib.study import load_study
    from PETCTLesionsLib.synthetic.phantom import PhantomConfig, make_phantom
    from PETCTLesionsLib.synthetic.synth import case_seed

    root, case = synthetic_lung_study
    loaded = load_study([case.study_dir])
    ct, _ = add_study_nodes(loaded)
    truth = make_phantom(PhantomConfig(seed=case_seed(4, 0), size="small", body="torso", n_lesions=5))
    segmentation = segmentation_from_mask(
        loaded.ct, "truth", lesion_map=truth.ct_lesion_labels
    )  # one segment per generated lesion, on the CT grid

    annotations = voc_from_segmentation(segmentation, ct, class_name=voc.histology_class(case.patient_id))
    voc.write_voc_folder(annotations, tmp_path / "voc")

    generated = case.voc_files[0].parent
    assert _boxes_by_file(tmp_path / "voc") == _boxes_by_file(generated)
    assert len(annotations) == len(case.voc_files) > 0


def test_convert_batch_over_patients_writes_voc_and_nnunet_and_says_when_boxes_are_labels(
    synthetic_lung_study, tmp_path, capsys
):
    root, case = synthetic_lung_study
    dicom_root = root / "Lung-PET-CT-Dx"
    annotation_root = case.voc_files[0].parent.parent
    # A second patient with only its CT (as many Lung-PET-CT-Dx patients) and the real TCIA XMLs.
    shutil.copytree(LUNG_DX_ROOT / "Lung_Dx-A0001", tmp_path / "dicom" / "Lung_Dx-A0001")
    shutil.copytree(dicom_root, tmp_path / "dicom" / "synthetic")
    shutil.copytree(LUNG_DX_ANNOTATIONS, tmp_path / "Annotation" / "A0001")
    shutil.copytree(annotation_root / voc.patient_folder_name(case.patient_id), tmp_path / "Annotation" / "x")
    (tmp_path / "Annotation" / "x").rename(tmp_path / "Annotation" / voc.patient_folder_name(case.patient_id))
    (tmp_path / "Annotation" / "A0001" / "1.2.3.bad.xml").write_text("<annotation><object>")

    args = ["convert", "--dicom", str(tmp_path / "dicom"), "--voc", str(tmp_path / "Annotation")]
    rc = main([*args, "--out", str(tmp_path / "out"), "--boxes-as-labels"])

    assert rc == 0
    printed = capsys.readouterr().out
    out = tmp_path / "out"
    assert _boxes_by_file(out / "Annotation" / "A0001") == _boxes_by_file(LUNG_DX_ANNOTATIONS)
    synthetic_folder = voc.patient_folder_name(case.patient_id)
    assert _boxes_by_file(out / "Annotation" / synthetic_folder) == _boxes_by_file(case.voc_files[0].parent)
    assert "1.2.3.bad.xml" in printed and "skipped" in printed
    assert "Lung_Dx-A0001: CT only, no nnU-Net case" in printed
    assert "VOC boxes filled (rectangles, not lesion outlines)" in printed
    (label_file,) = (out / "nnUNet_raw" / "Dataset901_PETCTLesionsConverted" / "labelsTr").glob("*.nii.gz")
    assert label_file.name.startswith(case.patient_id + "_")
    filled = sitk.GetArrayFromImage(sitk.ReadImage(str(label_file)))
    truth = sitk.GetArrayFromImage(sitk.ReadImage(str(case.nnunet_files["label"])))
    # Filled boxes (drawn on CT slices, sampled onto the PET grid) cover the lesions and more:
    # rectangles are bigger than round lesions. Sampling CT-slice boxes on 2 mm PET slices
    # misses some lesion-edge voxels, hence coverage rather than containment.
    assert set(np.unique(filled)) == {0, 1}
    assert filled.sum() > truth.sum() and filled[truth > 0].mean() > 0.75


def test_convert_finds_the_annotated_ct_when_the_pet_is_paired_with_another(synthetic_lung_study, tmp_path, capsys):
    """A study with two CT series (say a diagnostic and a low-dose one): the boxes are on the one
    the PET is not paired with. They used to be skipped, every one of them."""
    import pydicom

    root, case = synthetic_lung_study
    dicom = tmp_path / "dicom"
    shutil.copytree(root / "Lung-PET-CT-Dx", dicom)
    annotated = sorted({path.parent for path in dicom.rglob("*.dcm") if pydicom.dcmread(path).Modality == "CT"})
    (ct_folder,) = annotated

    def numbered_first(ds) -> None:  # series number 0: first by the pairing rule's last key
        ds.SeriesNumber = 0

    copy_series(
        sorted(ct_folder.glob("*.dcm")), ct_folder.parent / "0.000000-low dose copy", "low dose", numbered_first
    )
    annotation_root = case.voc_files[0].parent.parent

    rc = main(["convert", "--dicom", str(dicom), "--voc", str(annotation_root), "--out", str(tmp_path / "out")])

    assert rc == 0
    printed = capsys.readouterr().out
    assert "is not the CT paired with the PET; loaded on its own for its VOC boxes" in printed
    assert "no slice of" not in printed
    folder = voc.patient_folder_name(case.patient_id)
    assert _boxes_by_file(tmp_path / "out" / "Annotation" / folder) == _boxes_by_file(case.voc_files[0].parent)


# ----------------------------------------------------------------------------------------- bad input


def test_bad_annotations_and_labels_get_clear_messages_and_nothing_half_written(mrml_scene, tmp_path):
    from PETCTLesionsLib.mrml.segmentations import segmentation_from_mask

    laughs = tmp_path / "1.2.3.xml"
    laughs.write_text(
        '<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;">]>'
        "<annotation><size><width>5</width><height>5</height></size>&lol2;</annotation>"
    )
    with pytest.raises(voc.VocError, match="1.2.3.xml.*DOCTYPE"):
        voc.parse_voc_xml(laughs)

    box = voc.VocBox("A", 1, 1, 2, 2)
    out = tmp_path / "out"
    good = voc.VocAnnotation("1.2.840.1", 5, 5, boxes=[box])
    with pytest.raises(voc.VocError, match=r"'\.\./\.\./etc/x' is not a DICOM UID"):
        voc.write_voc_folder([good, voc.VocAnnotation("../../etc/x", 5, 5, boxes=[box])], out)
    assert not out.exists()  # checked before anything was written

    blocker = tmp_path / "a file"
    blocker.write_text("user data")
    with pytest.raises(voc.VocError, match="exists and is not a folder"):
        voc.write_voc_folder([good], blocker)
    assert blocker.read_text() == "user data"

    grid = Grid(size=(8, 8, 4), spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0))
    multi = np.zeros(grid.shape, np.uint8)
    multi[1, 1, 1], multi[2, 2, 2] = 1, 2
    with pytest.raises(LabelError, match="expected values 0 and 1 only, found 2"):
        segmentation_from_mask(grid.to_sitk(multi), "multi-class")
    assert mrml_scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode") == 0


def test_convert_refuses_a_label_from_another_grid_naming_both_grids(synthetic_lung_study, tmp_path, capsys):
    root, case = synthetic_lung_study
    grid = Grid(size=(10, 10, 5), spacing=(4.0, 4.0, 4.0), origin=(0.0, 0.0, 0.0))
    _write_autopet_case(tmp_path / "ds", "other case", np.zeros(grid.shape, np.uint8), grid)

    rc = main(
        ["convert", "--dicom", str(case.study_dir), "--nnunet", str(tmp_path / "ds"), "--case", "other case"]
        + ["--out", str(tmp_path / "out")]
    )

    assert rc == 2
    error = capsys.readouterr().err
    assert "nnU-Net label of case 'other case' (10x10x5 voxels" in error and "is not on the PET grid" in error
    assert not (tmp_path / "out" / "nnUNet_raw").exists()


def test_dataset_json_of_the_export_keeps_other_cases(tmp_path):
    grid = Grid(size=(6, 6, 4), spacing=(2.0, 2.0, 2.0), origin=(0.0, 0.0, 0.0))
    dataset = tmp_path / "ds"
    _write_autopet_case(dataset, "first", np.zeros(grid.shape, np.uint8), grid)
    content = json.loads((dataset / "dataset.json").read_text())
    content["description"] = "kept"
    (dataset / "dataset.json").write_text(json.dumps(content))
    _write_autopet_case(dataset, "second  case", np.zeros(grid.shape, np.uint8), grid)
    content = nnunet.read_dataset_json(dataset)
    assert content["numTraining"] == 2 and content["description"] == "kept"
