"""The annotator's round trip on real MRML (mrml/annotations.py): the real TCIA A0001 VOC files imported onto
their CT, corrected, written back and compared field by field with the originals; a generated nnU-Net case
opened, one lesion edited as the Segment Editor edits, written back over the case with a backup; the change
summary; the refusals."""

from __future__ import annotations

import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import LUNG_DX_ANNOTATIONS, LUNG_DX_CT_SERIES

from PETCTLesionsLib.cli import main
from PETCTLesionsLib.dicom.index import scan_paths
from PETCTLesionsLib.errors import InputError
from PETCTLesionsLib.formats import nnunet, voc
from PETCTLesionsLib.geometry import Grid
from PETCTLesionsLib.lesions import label_lesions
from PETCTLesionsLib.study import load_series_image

pytestmark = pytest.mark.slicer  # skipped where slicer-core is not installed (Slicer 5.6's stack in CI)


def _real_ct_node():
    from PETCTLesionsLib.mrml.study_nodes import add_series_volume

    scan = scan_paths([LUNG_DX_CT_SERIES])
    (study,) = scan.studies
    image, info = load_series_image(study.series[0])
    return add_series_volume(image, info, study.patient_id, study.study_uid, "Lung_Dx-A0001 CT"), Grid.from_sitk(image)


def _fields(path: Path) -> tuple:
    """Every element of a VOC file with its attributes and text, in order, tag names as spelled."""

    def element(node: ET.Element) -> tuple:
        return (node.tag, dict(node.attrib), (node.text or "").strip(), [element(child) for child in node])

    return element(ET.parse(path).getroot())


def _annotation_copy(tmp_path: Path) -> Path:
    """The real A0001 files in a dataset layout the test may write into: ``<root>/Annotation/A0001``."""
    folder = tmp_path / "Annotation" / "A0001"
    shutil.copytree(LUNG_DX_ANNOTATIONS, folder)
    return folder


def _backups(folder: Path) -> list:
    return sorted(path for path in folder.iterdir() if ".bak-" in path.name)


def test_real_voc_files_imported_corrected_and_written_back_keep_every_field_the_annotator_left(mrml_scene, tmp_path):
    from PETCTLesionsLib.mrml.annotations import changes_since_import, export_back, import_voc_annotations
    from PETCTLesionsLib.mrml.boxes import SEGMENT_ID_ATTRIBUTE
    from PETCTLesionsLib.mrml.export import export_study
    from PETCTLesionsLib.mrml.review import CLASS_TAG, IMPORTED, STATUS_TAG, add_box_on_slice, segment_tag
    from PETCTLesionsLib.mrml.study_nodes import slice_sop_instance_uids

    folder = _annotation_copy(tmp_path)
    originals = {path.name: path.read_bytes() for path in folder.glob("*.xml")}
    ct, grid = _real_ct_node()
    uids = slice_sop_instance_uids(ct)

    imported = import_voc_annotations(ct, folder.parent)  # the dataset's Annotation/: A0001/ found by Patient ID

    # 11 boxes on 11 neighbouring slices, each overlapping the next: one lesion, classed A, status "imported".
    assert (len(imported.boxes), imported.skipped) == (11, [])
    (lesion_id,) = imported.segment_ids
    segment = imported.segmentation.GetSegmentation().GetSegment(lesion_id)
    assert (segment.GetName(), segment_tag(segment, STATUS_TAG), segment_tag(segment, CLASS_TAG)) == (
        "Lesion 1",
        IMPORTED,
        "A",
    )
    assert {box.GetAttribute(SEGMENT_ID_ATTRIBUTE) for box in imported.boxes} == {lesion_id}
    unchanged = changes_since_import(ct, None, imported.segmentation)
    assert unchanged.text() == (
        "changes since import: lesions 0 added, 0 removed, 0 changed, 1 unchanged; "
        "VOC boxes 0 added, 0 removed, 0 changed, 11 unchanged"
    )
    with pytest.raises(InputError, match="already imported"):
        import_voc_annotations(ct, folder)

    # The annotator moves one box 3 columns and adds a lesion (a segment and its box) on the first slice.
    moved = imported.boxes[5]
    moved_file = f"{moved.GetAttribute('DICOM.instanceUID')}.xml"
    moved.SetCenter(*(np.array(moved.GetCenter()) + grid.ijk_to_ras()[:3, :3] @ np.array([3.0, 0.0, 0.0])))
    new_id = imported.segmentation.GetSegmentation().AddEmptySegment("", "Lesion 2")
    add_box_on_slice(
        ct, tuple((grid.ijk_to_ras() @ np.array([100.0, 100.0, 0.0, 1.0]))[:3]), "A", imported.segmentation, new_id
    )
    first_file = f"{uids[0]}.xml"
    changed = changes_since_import(ct, None, imported.segmentation)
    assert (changed.lesions.added, changed.lesions.removed, changed.lesions.changed, changed.lesions.unchanged) == (
        1,
        0,
        1,
        0,
    )
    assert (changed.boxes.added, changed.boxes.removed, changed.boxes.changed, changed.boxes.unchanged) == (1, 0, 1, 10)
    assert changed.changed_lesions == {lesion_id}  # the table marks it "imported, edited"

    # Exported elsewhere (the Export panel): every file keeps the original's fields; unchanged slices are equal.
    elsewhere = export_study(ct, None, imported.segmentation, voc_root=tmp_path / "elsewhere")
    assert elsewhere.skipped == [] and elsewhere.failed == []
    written = tmp_path / "elsewhere" / "A0001"
    assert sorted(p.name for p in written.iterdir()) == sorted(originals)
    for name in originals:
        if name not in (moved_file, first_file):
            assert _fields(written / name) == _fields(folder / name), name

    # Back over the files they came from: refused without replace, nothing touched.
    refused = export_back(ct, None, imported.segmentation)
    assert refused.written == [] and "refusing to overwrite" in refused.skipped[0]
    assert {path.name: path.read_bytes() for path in folder.iterdir()} == originals
    before = {name: (folder / name).stat().st_mtime_ns for name in originals}

    report = export_back(ct, None, imported.segmentation, replace=True)

    assert report.failed == [] and report.skipped == []
    assert report.notes[-1] == changed.text()
    # Unchanged slices: the files left exactly as they were (not even rewritten).
    for name in originals:
        if name not in (moved_file, first_file):
            assert (folder / name).read_bytes() == originals[name]
            assert (folder / name).stat().st_mtime_ns == before[name]
    # The moved box: the same file, field by field, but for its two x edges.
    expected = ET.fromstring(originals[moved_file])
    for tag in ("xmin", "xmax"):
        element = expected.find(f"object/bndbox/{tag}")
        element.text = str(int(element.text) + 3)
    assert _fields(folder / moved_file) == _fields_of(expected)
    # The added lesion's box: a second object in the first slice's file, spelled as that file spells it.
    first = _fields(folder / first_file)
    original_first = _fields_of(ET.fromstring(originals[first_file]))
    assert first[:3] == original_first[:3] and first[3][:-1] == original_first[3]
    new_object = first[3][-1]
    assert [child[0] for child in new_object[3]] == ["name", "pose", "truncated", "Difficult", "bndbox"]
    (reread,) = [a for a in voc.read_voc_folder(folder)[0] if a.sop_instance_uid == uids[0]]
    assert len(reread.boxes) == 2 and reread.boxes[1].name == "A"
    # Each replaced file kept beside itself, as it was; no reader takes the backups for annotations.
    backups = _backups(folder)
    assert sorted(path.name.split(".bak-")[0] for path in backups) == sorted([moved_file, first_file])
    for backup in backups:
        assert backup.read_bytes() == originals[backup.name.split(".bak-")[0]]
    annotations, problems = voc.read_voc_folder(folder)
    assert problems == [] and len(annotations) == 11


def _fields_of(root: ET.Element) -> tuple:
    def element(node: ET.Element) -> tuple:
        return (node.tag, dict(node.attrib), (node.text or "").strip(), [element(child) for child in node])

    return element(root)


def test_a_slice_left_without_boxes_has_its_file_set_aside_and_a_rejected_lesion_counts_as_removed(
    mrml_scene, tmp_path
):
    from PETCTLesionsLib.mrml.annotations import changes_since_import, export_back, import_voc_annotations
    from PETCTLesionsLib.mrml.review import REJECTED, set_status

    folder = _annotation_copy(tmp_path)
    originals = {path.name: path.read_bytes() for path in folder.glob("*.xml")}
    ct, _ = _real_ct_node()
    imported = import_voc_annotations(ct, folder)  # one patient's folder, given directly
    deleted = imported.boxes[3]
    deleted_file = f"{deleted.GetAttribute('DICOM.instanceUID')}.xml"
    mrml_scene.RemoveNode(deleted)

    report = export_back(ct, None, imported.segmentation, replace=True)

    assert report.notes[-1] == (
        "changes since import: lesions 0 added, 0 removed, 1 changed, 0 unchanged; "
        "VOC boxes 0 added, 1 removed, 0 changed, 10 unchanged"
    )
    assert not (folder / deleted_file).exists()
    (backup,) = _backups(folder)
    assert backup.name.startswith(deleted_file + ".bak-") and backup.read_bytes() == originals[deleted_file]
    assert sorted(p.name for p in folder.glob("*.xml")) == sorted(set(originals) - {deleted_file})

    set_status(imported.segmentation, imported.segment_ids[0], REJECTED)
    rejected = changes_since_import(ct, None, imported.segmentation)
    assert (rejected.lesions.removed, rejected.boxes.removed, rejected.boxes.unchanged) == (1, 11, 0)


def test_nnunet_case_opened_edited_as_the_segment_editor_does_and_written_back_over_the_case(mrml_scene, tmp_path):
    import slicer

    from PETCTLesionsLib.mrml.annotations import (
        changes_since_import,
        export_back,
        import_voc_annotations,
        open_nnunet_case,
    )
    from PETCTLesionsLib.mrml.export import export_study
    from PETCTLesionsLib.mrml.review import IMPORTED, STATUS_TAG, segment_tag
    from PETCTLesionsLib.mrml.segmentations import segment_ids
    from PETCTLesionsLib.mrml.study_nodes import study_case_id
    from PETCTLesionsLib.synthetic.synth import generate_dataset

    (case,) = generate_dataset(tmp_path / "generated", cases=1, seed=4, size="small", flavour="autopet", n_lesions=3)
    dataset = case.nnunet_files["label"].parent.parent
    files = {channel: path.read_bytes() for channel, path in case.nnunet_files.items()}
    label = sitk.GetArrayFromImage(nnunet.read_case(dataset, case.case_id).label)

    opened = open_nnunet_case(dataset, case.case_id)

    ids = segment_ids(opened.segmentation)
    assert len(ids) == label_lesions(label)[1] >= 2
    assert {segment_tag(opened.segmentation.GetSegmentation().GetSegment(i), STATUS_TAG) for i in ids} == {IMPORTED}
    assert study_case_id(opened.ct) == case.case_id
    assert any("VOC export needs the DICOM study" in note for note in opened.notes)
    # Edited the way the Segment Editor edits: the segment's binary labelmap replaced (one voxel layer more in k).
    lesion = slicer.util.arrayFromSegmentBinaryLabelmap(opened.segmentation, ids[0], opened.pet).astype(bool)
    grown = lesion.copy()
    grown[1:] |= lesion[:-1]
    slicer.util.updateSegmentBinaryLabelmapFromArray(grown.astype(np.uint8), opened.segmentation, ids[0], opened.pet)
    summary = changes_since_import(opened.ct, opened.pet, opened.segmentation)
    assert summary.changed_lesions == {ids[0]}
    assert (summary.lesions.changed, summary.lesions.unchanged, summary.lesions.added, summary.boxes.added) == (
        1,
        len(ids) - 1,
        0,
        0,
    )

    refused = export_back(opened.ct, opened.pet, opened.segmentation)
    assert refused.written == [] and "refusing to overwrite" in refused.skipped[0]
    assert case.nnunet_files["label"].read_bytes() == files["label"]

    report = export_back(opened.ct, opened.pet, opened.segmentation, replace=True)

    assert report.written == [str(case.nnunet_files["label"])] and report.failed == []
    assert report.notes[-1] == summary.text()
    back = nnunet.read_case(dataset, case.case_id)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back.label), ((label > 0) | grown).astype(np.uint8))
    assert int(grown.sum()) > int(lesion.sum())
    # The CT and PET files are not touched; the replaced label is kept, byte for byte, beside the new one.
    assert case.nnunet_files["ct"].read_bytes() == files["ct"] and case.nnunet_files["pet"].read_bytes() == files["pet"]
    (backup,) = _backups(case.nnunet_files["label"].parent)
    assert backup.read_bytes() == files["label"]
    assert nnunet.list_cases(dataset) == [case.case_id]  # the backup is no case

    # No DICOM, no VOC: an import is refused and a VOC export says why.
    with pytest.raises(InputError, match="need the DICOM study"):
        import_voc_annotations(opened.ct, tmp_path)
    voc_export = export_study(opened.ct, opened.pet, opened.segmentation, voc_root=tmp_path / "voc")
    assert voc_export.written == [] and "no slice SOPInstanceUIDs" in voc_export.skipped[0]


def test_convert_over_its_own_input_says_what_changed_and_leaves_unchanged_files_alone(tmp_path, capsys):
    folder = _annotation_copy(tmp_path)
    originals = {path.name: path.read_bytes() for path in folder.glob("*.xml")}

    rc = main(
        [
            "convert",
            "--dicom",
            str(LUNG_DX_CT_SERIES),
            "--voc",
            str(folder.parent),
            "--out",
            str(tmp_path),
            "--export",
            "voc",
            "--overwrite",
        ]
    )

    printed = capsys.readouterr()
    assert (
        "Lung_Dx-A0001: changes since import: lesions 0 added, 0 removed, 0 changed, 1 unchanged; "
        "VOC boxes 0 added, 0 removed, 0 changed, 11 unchanged" in printed.out
    )
    assert "11 VOC XML files unchanged since import, left as they are" in printed.out
    assert rc == 1 and printed.err == "petct-lesions convert: nothing was written\n"
    assert {path.name: path.read_bytes() for path in folder.iterdir()} == originals


def test_files_for_no_slice_and_cut_boxes_are_listed_and_a_folder_with_nothing_to_place_is_refused(
    mrml_scene, tmp_path
):
    from PETCTLesionsLib.mrml.annotations import export_back, import_voc_annotations

    first = sorted(LUNG_DX_ANNOTATIONS.glob("*.xml"))[0]
    stray = tmp_path / "stray"
    stray.mkdir()
    (stray / "1.2.3.4.xml").write_text(first.read_text(encoding="utf-8"), encoding="utf-8")
    ct, _ = _real_ct_node()
    with pytest.raises(InputError, match="none of its 1 VOC files gives a box on 'Lung_Dx-A0001 CT'") as refused:
        import_voc_annotations(ct, stray)
    assert f"{stray / '1.2.3.4.xml'}: no slice of CT 'Lung_Dx-A0001 CT' has this SOPInstanceUID" in str(refused.value)
    assert mrml_scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode") == 0
    assert mrml_scene.GetNumberOfNodesByClass("vtkMRMLMarkupsROINode") == 0

    folder = _annotation_copy(tmp_path)
    shutil.copy(stray / "1.2.3.4.xml", folder)
    wide = folder / first.name
    wide.write_text(first.read_text(encoding="utf-8").replace("<xmax>360</xmax>", "<xmax>530</xmax>"), encoding="utf-8")
    imported = import_voc_annotations(ct, folder)
    assert imported.skipped == [
        f"{folder / '1.2.3.4.xml'}: no slice of CT 'Lung_Dx-A0001 CT' has this SOPInstanceUID; skipped"
    ]
    assert any(note.startswith(f"{wide}: object 1 (A) reaches beyond the 512x512 image") for note in imported.notes)
    assert len(imported.boxes) == 11
    # Written back untouched, the cut box's file stays as it is: the same box and fields as the file has.
    report = export_back(ct, None, imported.segmentation)
    assert report.skipped == [] and report.written == [] and wide.read_text(encoding="utf-8").count("<xmax>530") == 1


def test_what_an_import_keeps_survives_a_scene_save_tabs_included(mrml_scene, tmp_path):
    # LabelImg indents its files with tabs; a scene file stores node attributes as XML attribute values, whose
    # tabs come back as spaces. The files' texts must come back as they were, or a write back changes them.
    import slicer

    from PETCTLesionsLib.mrml.annotations import import_voc_annotations
    from PETCTLesionsLib.mrml.boxes import imported_boxes, voc_originals

    folder = _annotation_copy(tmp_path)
    for path in folder.glob("*.xml"):
        path.write_text(path.read_text(encoding="utf-8").replace("  ", "\t"), encoding="utf-8")
    texts = {path.name[: -len(".xml")]: path.read_text(encoding="utf-8") for path in folder.glob("*.xml")}
    ct, _ = _real_ct_node()
    import_voc_annotations(ct, folder)
    assert voc_originals(ct) == texts

    mrml_scene.SetSaveToXMLString(1)
    mrml_scene.Commit()
    reloaded_scene = slicer.vtkMRMLScene()
    reloaded_scene.SetLoadFromXMLString(1)
    reloaded_scene.SetSceneXMLString(mrml_scene.GetSceneXMLString())
    reloaded_scene.Import()
    (reloaded,) = [node for node in reloaded_scene.GetNodesByName(ct.GetName()) if node.IsA("vtkMRMLScalarVolumeNode")]

    assert voc_originals(reloaded) == texts
    assert imported_boxes(reloaded) == imported_boxes(ct)


def test_a_box_added_on_a_slice_whose_file_had_only_skipped_objects_joins_them(mrml_scene, tmp_path):
    # The file of the first slice holds one object of a class the import skips: the annotator's box for that
    # slice is written beside it, in that file, not over it.
    from PETCTLesionsLib.mrml.annotations import export_back, import_voc_annotations
    from PETCTLesionsLib.mrml.review import add_box_on_slice
    from PETCTLesionsLib.mrml.study_nodes import slice_sop_instance_uids

    folder = _annotation_copy(tmp_path)
    ct, grid = _real_ct_node()
    first_file = folder / f"{slice_sop_instance_uids(ct)[0]}.xml"
    first_file.write_text(first_file.read_text(encoding="utf-8").replace("<name>A</name>", "<name>Z</name>"))
    original_first = _fields(first_file)
    imported = import_voc_annotations(ct, folder)
    assert len(imported.boxes) == 10 and any("unknown class 'Z'" in reason for reason in imported.skipped)
    new_id = imported.segmentation.GetSegmentation().AddEmptySegment("", "Lesion 2")
    add_box_on_slice(
        ct, tuple((grid.ijk_to_ras() @ np.array([100.0, 100.0, 0.0, 1.0]))[:3]), "A", imported.segmentation, new_id
    )

    report = export_back(ct, None, imported.segmentation, replace=True)

    assert report.failed == [] and report.skipped == []
    written = _fields(first_file)
    assert written[:3] == original_first[:3] and written[3][:-1] == original_first[3]  # the Z object kept
    new_object = written[3][-1]
    assert [child[0] for child in new_object[3]] == ["name", "pose", "truncated", "Difficult", "bndbox"]
    assert new_object[3][0][2] == "A"
    assert [path.name.split(".bak-")[0] for path in _backups(folder)] == [first_file.name]


def test_a_file_that_cannot_be_removed_is_reported_with_what_was_written(mrml_scene, tmp_path, monkeypatch):
    # One slice's box deleted (its file to be removed), another's moved (its file rewritten); the removal fails.
    from PETCTLesionsLib.mrml.annotations import export_back, import_voc_annotations

    folder = _annotation_copy(tmp_path)
    originals = {path.name: path.read_bytes() for path in folder.glob("*.xml")}
    ct, grid = _real_ct_node()
    imported = import_voc_annotations(ct, folder)
    deleted, moved = imported.boxes[3], imported.boxes[5]
    deleted_file = folder / f"{deleted.GetAttribute('DICOM.instanceUID')}.xml"
    moved_file = folder / f"{moved.GetAttribute('DICOM.instanceUID')}.xml"
    mrml_scene.RemoveNode(deleted)
    moved.SetCenter(*(np.array(moved.GetCenter()) + grid.ijk_to_ras()[:3, :3] @ np.array([3.0, 0.0, 0.0])))
    unlink = Path.unlink

    def refuse_deleted_file(path, *args, **kwargs):
        if path == deleted_file:
            raise PermissionError(13, "Permission denied", str(path))
        return unlink(path, *args, **kwargs)

    monkeypatch.setattr(Path, "unlink", refuse_deleted_file)

    report = export_back(ct, None, imported.segmentation, replace=True)

    assert report.written == [f"{folder}/ (1 VOC XML files from {ct.GetName()})"]
    assert report.failed == [
        f"{deleted_file}: its slice has no box left, but the file cannot be removed (Permission denied); "
        "the other VOC files were written"
    ]
    assert deleted_file.read_bytes() == originals[deleted_file.name]
    assert moved_file.read_bytes() != originals[moved_file.name]
    backups = {path.name.split(".bak-")[0]: path.read_bytes() for path in _backups(folder)}
    assert backups == {name: originals[name] for name in (deleted_file.name, moved_file.name)}
