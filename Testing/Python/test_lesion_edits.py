"""A reader's prompt applied to the scene (mrml/lesion_edits.py), on real MRML (slicer-core).

A small PET/CT study written as DICOM and loaded as the module loads it (CT slices with their
SOPInstanceUIDs, so VOC boxes can be made): uniform hot spheres on an SUV 1 background, so a
41%-of-SUVmax lesion is exactly its sphere. Each test checks what the reader gets: the segment
(name, colour, terminology, review status), its VOC boxes on the CT (the lesion's tight box on
every CT slice it crosses, as Slicer rasterises it on the whole CT), the lesion table, and that
one undo, or the Segment Editor's own Undo followed by the boxes, takes the prompt back exactly.
"""

from __future__ import annotations

import datetime

import numpy as np
import pytest
from studies import study_info, write_small_study

from PETCTLesionsLib.geometry import Grid, lps_to_ras
from PETCTLesionsLib.study import load_study
from PETCTLesionsLib.synthetic.dicom_writer import PatientInfo, PetAcquisition

pytestmark = pytest.mark.slicer

PET_GRID = Grid(size=(40, 40, 30), spacing=(4.0, 4.0, 3.0), origin=(-80.0, -80.0, 0.0))
CT_GRID = Grid(size=(64, 64, 37), spacing=(2.5, 2.5, 2.5), origin=(-80.0, -80.0, -1.0))
ACQUISITION = PetAcquisition(3.3e8, datetime.datetime(2022, 5, 4, 9, 0), datetime.datetime(2022, 5, 4, 10, 0))
# name -> (centre [k, j, i] on the PET grid, radius mm, SUV)
SPHERES = {
    "A": ((10, 12, 10), 10.0, 8.0),
    "B": ((18, 26, 28), 9.0, 6.0),  # the lesion the model missed
    "C": ((22, 30, 12), 7.0, 5.0),
}


def _sphere(centre_kji, radius_mm: float) -> np.ndarray:
    k, j, i = np.indices(PET_GRID.shape)
    offsets = [(index - c) * s for index, c, s in zip((i, j, k), centre_kji[::-1], PET_GRID.spacing)]
    return sum(o**2 for o in offsets) <= radius_mm**2


def _write(root, patient_id: str):
    suv = np.ones(PET_GRID.shape)
    for centre, radius, value in SPHERES.values():
        suv[_sphere(centre, radius)] = value
    study = study_info(
        patient_id, PatientInfo(patient_id, "Edit^Test", "F", 60, 70.0), datetime.datetime(2022, 5, 4, 8, 0), "PET/CT"
    )
    write_small_study(root, study, ACQUISITION, CT_GRID, PET_GRID, suv=suv, hu_range=(-100, 100), folders=("CT", "PET"))
    return load_study([root])


@pytest.fixture(scope="module")
def lung_dx_study(tmp_path_factory):
    return _write(tmp_path_factory.mktemp("lungdx"), "Lung_Dx-E0007")  # histology class E


@pytest.fixture(scope="module")
def plain_study(tmp_path_factory):
    return _write(tmp_path_factory.mktemp("plain"), "PETCT-0001")  # no histology letter


def _scene(loaded, with_boxes_class=None):
    """CT and PET nodes, and a segmentation holding lesions A and C (B missed), with boxes when a class is given."""
    from PETCTLesionsLib.formats.voc import VocBox
    from PETCTLesionsLib.lesions import slice_boxes
    from PETCTLesionsLib.mrml.boxes import SEGMENT_ID_ATTRIBUTE, add_lesion_boxes
    from PETCTLesionsLib.mrml.lesion_edits import LesionScene
    from PETCTLesionsLib.mrml.segmentations import lesion_map_on, segment_ids, segmentation_from_mask
    from PETCTLesionsLib.mrml.study_nodes import add_study_nodes

    ct, pet = add_study_nodes(loaded)
    lesions = np.zeros(PET_GRID.shape, np.uint16)
    lesions[_sphere(*SPHERES["A"][:2])] = 1
    lesions[_sphere(*SPHERES["C"][:2])] = 2
    segmentation = segmentation_from_mask(
        PET_GRID.to_sitk((lesions > 0).astype(np.uint8)), "lesions", lesion_map=lesions
    )
    if with_boxes_class:
        ids = segment_ids(segmentation)
        on_ct, _ = lesion_map_on(segmentation, ct)
        boxes = slice_boxes(on_ct)
        nodes = add_lesion_boxes(
            ct, [(b.k, VocBox.from_pixel_ranges(with_boxes_class, b.c0, b.r0, b.c1, b.r1), b.lesion) for b in boxes]
        )
        for node, box in zip(nodes, boxes):
            node.SetAttribute(SEGMENT_ID_ATTRIBUTE, ids[box.lesion - 1])
    return LesionScene(segmentation, pet, ct)


def _centre_lps(name: str):
    (k, j, i), _, _ = SPHERES[name]
    return tuple(PET_GRID.index_to_lps([i, j, k]))


def _state(scene):
    """Everything a prompt may change: segments (ID, name, colour, tags, voxels on the PET) and boxes."""
    import slicer
    import vtk

    from PETCTLesionsLib.mrml.boxes import box_nodes_of
    from PETCTLesionsLib.mrml.review import CLASS_TAG, STATUS_TAG
    from PETCTLesionsLib.mrml.segmentations import lesion_map_on, segment_ids

    content = scene.segmentation.GetSegmentation()
    segments = []
    for segment_id in segment_ids(scene.segmentation):
        segment = content.GetSegment(segment_id)
        values = {}
        for tag in (STATUS_TAG, CLASS_TAG, segment.GetTerminologyEntryTagName()):  # vtkSegment cannot list its tags
            value = vtk.reference("")
            values[tag] = str(value) if segment.GetTag(tag, value) else None
        segments.append((segment_id, segment.GetName(), tuple(round(c, 6) for c in segment.GetColor()), values))
    lesion_map, _ = lesion_map_on(scene.segmentation, scene.pet_node)
    hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(slicer.mrmlScene)
    boxes = sorted(
        (
            node.GetID(),
            node.GetName(),
            tuple(node.GetSize()),
            tuple(node.GetCenter()),
            node.GetAttribute("VOC.class"),
            node.GetAttribute("PETCTLesions.segmentID"),
            hierarchy.GetItemName(hierarchy.GetItemParent(hierarchy.GetItemByDataNode(node))),
            node.GetDisplayNode().GetID(),
        )
        for node in box_nodes_of(scene.ct_node)
    )
    return segments, lesion_map, boxes


def _assert_same_state(before, after):
    assert before[0] == after[0]
    np.testing.assert_array_equal(before[1], after[1])
    assert before[2] == after[2]


def _assert_boxes_are_the_lesions_tight_boxes(scene, segment_id, class_name):
    """The segment's boxes are its tight box on every CT slice it crosses, as Slicer rasterises it on the whole CT."""
    from PETCTLesionsLib.lesions import slice_boxes
    from PETCTLesionsLib.mrml.boxes import voc_from_box_nodes
    from PETCTLesionsLib.mrml.review import boxes_of_segment
    from PETCTLesionsLib.mrml.segmentations import segment_on
    from PETCTLesionsLib.mrml.study_nodes import slice_sop_instance_uids

    boxes = boxes_of_segment(scene.segmentation, segment_id)
    annotations, skipped = voc_from_box_nodes(boxes, scene.ct_node, None)
    assert skipped == []
    uids = slice_sop_instance_uids(scene.ct_node)
    got = sorted((uids.index(a.sop_instance_uid), *b.to_pixel_ranges()) for a in annotations for b in a.boxes)
    expected = sorted(
        (b.k, b.c0, b.r0, b.c1, b.r1) for b in slice_boxes(segment_on(scene.segmentation, segment_id, scene.ct_node))
    )
    assert got == expected and len(got) > 1
    assert {b.name for a in annotations for b in a.boxes} == {class_name}


def test_a_click_on_a_missed_lesion_adds_it_with_status_added_and_its_boxes_and_one_undo_takes_it_back(
    mrml_scene, plain_study
):
    from PETCTLesionsLib.mrml import review
    from PETCTLesionsLib.mrml.lesion_edits import add_by_click
    from PETCTLesionsLib.mrml.segmentations import LESION_TERMINOLOGY, lesion_colour, segment_terminology

    scene = _scene(plain_study, with_boxes_class="G")  # a non-Lung_Dx patient whose boxes were classed G
    rows_before = review.lesion_rows(scene.segmentation, scene.pet_node, scene.ct_node)
    before = _state(scene)
    # The reader clicks a little off the lesion's centre: the click snaps to its hottest voxel.
    point = np.array(_centre_lps("B")) + [4.0, -3.0, 2.0]
    applied = add_by_click(scene, point)

    assert len(applied.added_ids) == 1 and applied.removed_ids == [] and applied.changed_ids == []
    (new_id,) = applied.added_ids
    segment = scene.segmentation.GetSegmentation().GetSegment(new_id)
    assert segment.GetName() == "Lesion 3"  # after "Lesion 1" and "Lesion 2"
    np.testing.assert_allclose(segment.GetColor(), lesion_colour(3))
    assert segment_terminology(segment) == LESION_TERMINOLOGY
    # Its voxels: exactly the missed sphere (41% of SUVmax 6 on a background of SUV 1).
    rows = review.lesion_rows(scene.segmentation, scene.pet_node, scene.ct_node)
    assert [row.segment_id for row in rows] == [row.segment_id for row in rows_before] + [new_id]
    added = rows[-1]
    assert added.status == review.ADDED == "added"
    assert added.voxels == int(_sphere(*SPHERES["B"][:2]).sum())
    assert added.suv_max == pytest.approx(6.0, rel=1e-3)
    assert added.class_name == "G"  # as the segmentation's other boxes
    # Its boxes: made on the CT, classed like the segmentation's other boxes, in the lesion's colour.
    assert applied.boxes and all(box.GetAttribute("PETCTLesions.segmentID") == new_id for box in applied.boxes)
    _assert_boxes_are_the_lesions_tight_boxes(scene, new_id, "G")

    applied.undo()
    _assert_same_state(before, _state(scene))
    assert [row.segment_id for row in review.lesion_rows(scene.segmentation, scene.pet_node, scene.ct_node)] == [
        row.segment_id for row in rows_before
    ]


def test_the_boxes_class_comes_from_the_patient_id_and_without_one_no_boxes_are_made_with_a_note(
    mrml_scene, lung_dx_study, plain_study
):
    from PETCTLesionsLib.mrml.lesion_edits import add_by_click

    scene = _scene(lung_dx_study)  # no boxes yet: the class is the Patient ID's histology letter
    applied = add_by_click(scene, _centre_lps("B"))
    _assert_boxes_are_the_lesions_tight_boxes(scene, applied.added_ids[0], "E")

    mrml_scene.Clear(False)
    scene = _scene(plain_study)  # no boxes and no histology letter: no class to give boxes
    applied = add_by_click(scene, _centre_lps("B"))
    assert len(applied.added_ids) == 1 and applied.boxes == []
    assert "no VOC boxes for 'Lesion 3'" in applied.message


def test_a_negative_click_removes_the_lesion_and_its_boxes_and_undo_puts_back_the_same_nodes(mrml_scene, lung_dx_study):
    from PETCTLesionsLib.mrml import review
    from PETCTLesionsLib.mrml.lesion_edits import remove_by_click
    from PETCTLesionsLib.mrml.segmentations import segment_ids

    scene = _scene(lung_dx_study, with_boxes_class="E")
    first = segment_ids(scene.segmentation)[0]  # lesion A
    a_boxes = review.boxes_of_segment(scene.segmentation, first)
    assert a_boxes
    before = _state(scene)
    applied = remove_by_click(scene, np.array(_centre_lps("A")) + [0.0, 5.0, 0.0])
    assert applied.removed_ids == [first] and applied.added_ids == [] and applied.boxes == []
    assert first not in segment_ids(scene.segmentation)
    assert review.boxes_of_segment(scene.segmentation, first) == []
    assert all(box.GetScene() is None for box in a_boxes)
    rows = review.lesion_rows(scene.segmentation, scene.pet_node, scene.ct_node)
    assert [row.name for row in rows] == ["Lesion 2"]

    applied.undo()  # the same segment ID, name, colour, tags and voxels; the same box nodes in their folder
    _assert_same_state(before, _state(scene))
    assert all(box.GetScene() is mrml_scene for box in a_boxes)


def test_a_click_on_no_lesion_changes_nothing_and_says_so(mrml_scene, lung_dx_study):
    from PETCTLesionsLib.mrml.lesion_edits import remove_by_click

    scene = _scene(lung_dx_study, with_boxes_class="E")
    before = _state(scene)
    applied = remove_by_click(scene, PET_GRID.index_to_lps([35, 3, 3]))
    assert applied.is_empty and applied.message
    _assert_same_state(before, _state(scene))
    applied.undo()  # nothing to take back
    _assert_same_state(before, _state(scene))


def test_a_box_drawn_on_the_slice_gives_the_lesion_and_its_boxes(mrml_scene, lung_dx_study):
    from PETCTLesionsLib.mrml import review
    from PETCTLesionsLib.mrml.lesion_edits import add_in_box, axial_box_on_pet

    scene = _scene(lung_dx_study, with_boxes_class="E")
    (k, j, i), radius, _ = SPHERES["B"]
    # Dragged on the axial view through the lesion's centre, a little wider than the lesion.
    corner = PET_GRID.index_to_lps([i - 4, j - 4, k])
    other = PET_GRID.index_to_lps([i + 4, j + 4, k])
    box = axial_box_on_pet(scene.pet_node, lps_to_ras(corner), lps_to_ras(other))
    assert (box.k, box.i0, box.j0, box.i1, box.j1) == (k, i - 4, j - 4, i + 4, j + 4)
    applied = add_in_box(scene, box)
    (new_id,) = applied.added_ids
    row = review.lesion_rows(scene.segmentation, scene.pet_node, scene.ct_node)[-1]
    assert row.segment_id == new_id and row.status == review.ADDED
    assert row.voxels == int(_sphere((k, j, i), radius).sum())
    _assert_boxes_are_the_lesions_tight_boxes(scene, new_id, "E")


def test_split_turns_one_segment_into_two_and_rebuilds_both_lesions_boxes(mrml_scene, lung_dx_study):
    from PETCTLesionsLib.mrml import review
    from PETCTLesionsLib.mrml.lesion_edits import add_by_click, split_by_clicks
    from PETCTLesionsLib.mrml.segmentations import lesion_map_on, segment_ids

    scene = _scene(lung_dx_study, with_boxes_class="E")
    # Lesions A and C joined into one segment, as a detection that merged a chain of nodes would give.
    ids = segment_ids(scene.segmentation)
    joined = add_by_click(scene, _centre_lps("B"))  # a third lesion with boxes, to split against the others
    assert joined.added_ids
    before = _state(scene)
    lesion_map, _ = lesion_map_on(scene.segmentation, scene.pet_node)
    first_id = ids[0]
    old_boxes = review.boxes_of_segment(scene.segmentation, first_id)
    # Split lesion A at two points inside it: its two halves.
    (k, j, i), _, _ = SPHERES["A"]
    first, second = PET_GRID.index_to_lps([i - 1, j, k - 2]), PET_GRID.index_to_lps([i + 1, j, k + 2])
    applied = split_by_clicks(scene, first, second)
    assert applied.changed_ids == [first_id] and len(applied.added_ids) == 1
    after_map, _ = lesion_map_on(scene.segmentation, scene.pet_node)
    new_number = segment_ids(scene.segmentation).index(applied.added_ids[0]) + 1
    # The two parts are lesion A exactly, each holding its own click.
    np.testing.assert_array_equal((after_map == 1) | (after_map == new_number), lesion_map == 1)
    assert (after_map == 1).any() and (after_map == new_number).any()
    assert after_map[k - 2, j, i - 1] == 1 and after_map[k + 2, j, i + 1] == new_number
    # Both parts' boxes traced again; A's old boxes set aside.
    assert all(box.GetScene() is None for box in old_boxes)
    _assert_boxes_are_the_lesions_tight_boxes(scene, first_id, "E")
    _assert_boxes_are_the_lesions_tight_boxes(scene, applied.added_ids[0], "E")

    applied.undo()
    _assert_same_state(before, _state(scene))


def test_the_segment_editors_own_undo_and_redo_take_the_boxes_along(mrml_scene, lung_dx_study):
    """The Segment Editor saves the segments before the effect edits them (saveStateForUndo) and its Undo
    restores them; the effect then calls boxes_follow_segments. Its history is Slicer's vtkSegmentationHistory."""
    import slicer

    from PETCTLesionsLib.mrml.lesion_edits import AFTER, BEFORE, add_by_click, remove_by_click

    scene = _scene(lung_dx_study, with_boxes_class="E")
    history = slicer.vtkSegmentationHistory()
    history.SetSegmentation(scene.segmentation.GetSegmentation())
    before = _state(scene)
    history.SaveState()
    added = add_by_click(scene, _centre_lps("B"))
    after_add = _state(scene)
    history.SaveState()
    removed = remove_by_click(scene, _centre_lps("C"))
    after_remove = _state(scene)

    history.RestorePreviousState()  # Undo: C back
    assert removed.segments_state() == BEFORE and added.segments_state() == AFTER
    removed.boxes_follow_segments()
    _assert_same_state(after_add, _state(scene))
    history.RestorePreviousState()  # Undo: B gone
    added.boxes_follow_segments()
    _assert_same_state(before, _state(scene))
    history.RestoreNextState()  # Redo: B again, with the same box nodes
    added.boxes_follow_segments()
    _assert_same_state(after_add, _state(scene))
    history.RestoreNextState()
    removed.boxes_follow_segments()
    _assert_same_state(after_remove, _state(scene))


def test_the_effects_history_follows_two_undos_and_two_redos_and_new_prompts_drop_what_was_undone(
    mrml_scene, lung_dx_study
):
    """Prompts as the effect makes them (apply_mode with RAS points from a slice view); the Segment Editor's
    Undo twice and Redo twice: the boxes follow through the history, newest prompt first on Undo."""
    import slicer

    from PETCTLesionsLib.interactive import editor_options
    from PETCTLesionsLib.mrml.lesion_edits import EditHistory, apply_mode

    scene = _scene(lung_dx_study, with_boxes_class="E")
    segment_history = slicer.vtkSegmentationHistory()
    segment_history.SetSegmentation(scene.segmentation.GetSegmentation())
    history = EditHistory()
    states = [_state(scene)]
    (k, j, i), _, _ = SPHERES["B"]
    steps = [
        (editor_options.ADD, [lps_to_ras(_centre_lps("B"))]),  # B added with its boxes
        (editor_options.SPLIT, [lps_to_ras(PET_GRID.index_to_lps(p)) for p in ([i, j, k - 2], [i, j, k + 2])]),
    ]
    for mode, points in steps:
        segment_history.SaveState()  # what the effect's saveStateForUndo() does
        history.add(apply_mode(scene, mode, points))
        states.append(_state(scene))
    assert len(history.records) == 2 and len(states[2][0]) == len(states[1][0]) + 1  # B split in two

    for expected in (states[1], states[0]):
        segment_history.RestorePreviousState()
        history.boxes_follow_segments()
        _assert_same_state(expected, _state(scene))
    for expected in (states[1], states[2]):
        segment_history.RestoreNextState()
        history.boxes_follow_segments()
        _assert_same_state(expected, _state(scene))

    # Two undos, then a new prompt: the two undone prompts are gone from both histories.
    segment_history.RestorePreviousState()
    segment_history.RestorePreviousState()
    history.boxes_follow_segments()  # once for both: the boxes still follow
    _assert_same_state(states[0], _state(scene))
    segment_history.SaveState()
    history.add(apply_mode(scene, editor_options.REMOVE, [lps_to_ras(_centre_lps("C"))]))
    assert len(history.records) == 1
    # The module's own undo of the newest prompt: exact.
    assert history.undo_last() is not None
    _assert_same_state(states[0], _state(scene))
    assert history.undo_last() is None


def test_a_box_across_slices_is_refused_and_the_liver_reference_is_the_pet_in_a_3_cm_sphere(mrml_scene, lung_dx_study):
    from PETCTLesionsLib.errors import InputError
    from PETCTLesionsLib.mrml.lesion_edits import axial_box_on_pet, liver_at

    scene = _scene(lung_dx_study)
    with pytest.raises(InputError, match="axial view"):
        axial_box_on_pet(scene.pet_node, lps_to_ras(_centre_lps("B")), lps_to_ras(np.add(_centre_lps("B"), 9.0)))
    liver = liver_at(scene.pet_node, lps_to_ras(PET_GRID.index_to_lps([30, 8, 24])))  # background: SUV 1
    assert liver.mean_suv == pytest.approx(1.0, abs=1e-3) and liver.sd_suv == pytest.approx(0.0, abs=1e-3)
