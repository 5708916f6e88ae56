"""A loaded PET/CT study becomes Slicer nodes that keep their geometry, their SUV meaning and
their DICOM identity; the fused display sets the CT presets, the PET colour map in SUV, the
layers of every slice view and fits the views onto the study."""

from __future__ import annotations

import datetime

import numpy as np
import pytest
import SimpleITK as sitk

pytest.importorskip("slicer", reason="needs slicer-core (Slicer's MRML libraries)")

import vtk
from studies import study_info, write_small_study

from PETCTLesionsLib.geometry import Grid, lps_to_ras_matrix
from PETCTLesionsLib.study import load_study
from PETCTLesionsLib.synthetic.dicom_writer import PatientInfo, PetAcquisition

CT_GRID = Grid(
    size=(40, 32, 12),
    spacing=(0.9, 0.9, 2.5),
    origin=(-18.0, -14.4, -15.0),
    # Slightly tilted gantry: the slice normal is not the z axis.
    direction=(1.0, 0.0, 0.0, 0.0, 0.9945219, -0.1045285, 0.0, 0.1045285, 0.9945219),
)
PET_GRID = Grid(size=(12, 10, 8), spacing=(4.0, 4.0, 3.27), origin=(-22.0, -18.0, -12.0))
PATIENT = PatientInfo("Lung_Dx-A0042", "Test^Patient", "M", 61, 78.0)
STUDY = study_info("mrml study", PATIENT, datetime.datetime(2021, 3, 2, 8, 50), "PET/CT")
ACQUISITION = PetAcquisition(2.9e8, datetime.datetime(2021, 3, 2, 8, 5, 0), datetime.datetime(2021, 3, 2, 9, 7, 30))


@pytest.fixture(scope="module")
def written_study(tmp_path_factory):
    root = tmp_path_factory.mktemp("study")
    return write_small_study(
        root,
        STUDY,
        ACQUISITION,
        CT_GRID,
        PET_GRID,
        seed=3,
        hu_range=(-1024, 1500),
        suv_scale=1.5,
        folders=("CT", "PET"),
    )


@pytest.fixture(scope="module")
def loaded_study(written_study):
    return load_study([written_study.root])


def _ras_of_index(node, ijk) -> np.ndarray:
    matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    return np.array(matrix.MultiplyPoint((*ijk, 1.0))[:3])


def _assert_node_is_image(node, image: sitk.Image) -> None:
    import slicer

    np.testing.assert_array_equal(slicer.util.arrayFromVolume(node), sitk.GetArrayFromImage(image))
    size = image.GetSize()
    for ijk in [(0, 0, 0), (size[0] - 1, 0, 0), (0, size[1] - 1, 0), (size[0] - 1, size[1] - 1, size[2] - 1)]:
        lps = np.array(image.TransformIndexToPhysicalPoint(ijk))
        np.testing.assert_allclose(_ras_of_index(node, ijk), lps_to_ras_matrix()[:3, :3] @ lps, atol=1e-6)


def test_study_nodes_keep_geometry_values_and_suv_meaning(mrml_scene, loaded_study, written_study):
    from PETCTLesionsLib.mrml.study_nodes import add_study_nodes, is_suv_bw

    ct_node, pet_node = add_study_nodes(loaded_study)

    assert (ct_node.GetName(), pet_node.GetName()) == ("Lung_Dx-A0042 CT", "Lung_Dx-A0042 PET SUVbw")
    _assert_node_is_image(ct_node, loaded_study.ct)
    _assert_node_is_image(pet_node, loaded_study.pet_suv)
    # The values are the written ones: HU on the CT, SUVbw on the PET.
    import slicer

    np.testing.assert_array_equal(slicer.util.arrayFromVolume(ct_node), written_study.hu)
    pet = slicer.util.arrayFromVolume(pet_node)
    assert np.max(np.abs(pet - written_study.suv) / written_study.suv) < 1e-6
    # The PET is labelled the way Slicer's PETDICOM extension labels SUVbw; the CT is not.
    quantity, units = pet_node.GetVoxelValueQuantity(), pet_node.GetVoxelValueUnits()
    assert (quantity.GetCodeValue(), quantity.GetCodingSchemeDesignator()) == ("126400", "DCM")
    assert (units.GetCodeValue(), units.GetCodingSchemeDesignator()) == ("{SUVbw}g/ml", "UCUM")
    assert is_suv_bw(pet_node) and not is_suv_bw(ct_node)


def test_study_nodes_sit_under_patient_and_study_items_with_their_dicom_uids(mrml_scene, loaded_study, written_study):
    import slicer

    from PETCTLesionsLib.mrml.study_nodes import INSTANCE_UIDS_ATTRIBUTE, add_study_nodes

    ct_node, pet_node = add_study_nodes(loaded_study)

    hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(mrml_scene)
    uid_name = slicer.vtkMRMLSubjectHierarchyConstants.GetDICOMUIDName()
    ct_item, pet_item = hierarchy.GetItemByDataNode(ct_node), hierarchy.GetItemByDataNode(pet_node)
    assert hierarchy.GetItemUID(ct_item, uid_name) == written_study.ct.series_uid
    assert hierarchy.GetItemUID(pet_item, uid_name) == written_study.pet.series_uid
    study_item = hierarchy.GetItemParent(ct_item)
    assert hierarchy.GetItemParent(pet_item) == study_item
    assert hierarchy.GetItemUID(study_item, uid_name) == written_study.study.study_uid
    assert hierarchy.GetItemLevel(study_item) == slicer.vtkMRMLSubjectHierarchyConstants.GetDICOMLevelStudy()
    patient_item = hierarchy.GetItemParent(study_item)
    assert hierarchy.GetItemUID(patient_item, uid_name) == "Lung_Dx-A0042"
    assert hierarchy.GetItemLevel(patient_item) == slicer.vtkMRMLSubjectHierarchyConstants.GetDICOMLevelPatient()
    assert hierarchy.GetItemAttribute(ct_item, "DICOM.Modality") == "CT"
    assert hierarchy.GetItemAttribute(pet_item, "DICOM.Modality") == "PT"
    # Slice k of the CT node is the file with the k-th SOPInstanceUID (the VOC annotations' key).
    assert ct_node.GetAttribute(INSTANCE_UIDS_ATTRIBUTE).split(" ") == written_study.ct.sop_instance_uids
    assert pet_node.GetAttribute(INSTANCE_UIDS_ATTRIBUTE).split(" ") == written_study.pet.sop_instance_uids

    # Loading the same study again reuses its patient and study items instead of duplicating them.
    ct_again, _ = add_study_nodes(loaded_study, name_prefix="again")
    assert hierarchy.GetItemParent(hierarchy.GetItemByDataNode(ct_again)) == study_item
    assert ct_again.GetName() == "again CT"


def test_real_lung_dx_ct_slices_keep_their_sop_instance_uids_in_slice_order():
    """The real Philips series: slice k of the image is the file whose position is k-th along the normal."""
    import pydicom
    from conftest import LUNG_DX_CT_SERIES

    from PETCTLesionsLib.dicom.index import scan_paths
    from PETCTLesionsLib.study import SeriesInfo

    index = scan_paths([LUNG_DX_CT_SERIES])
    (series,) = [s for study in index.studies for s in study.series]
    info = SeriesInfo.from_series(series)

    by_uid = {}
    for path in LUNG_DX_CT_SERIES.glob("*.dcm"):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        by_uid[ds.SOPInstanceUID] = float(ds.ImagePositionPatient[2])
    assert sorted(info.slice_sop_instance_uids) == sorted(by_uid)
    positions = [by_uid[uid] for uid in info.slice_sop_instance_uids]
    assert positions == sorted(positions)  # axial, increasing z = SimpleITK's slice order
    assert len(positions) == 11


def test_fused_display_sets_presets_colour_map_suv_window_layers_and_fits_views(mrml_scene, loaded_study):

    from PETCTLesionsLib.mrml.display import apply_ct_preset, set_pet_opacity, set_suv_window, show_fused_study
    from PETCTLesionsLib.mrml.headless import SLICE_VIEWS
    from PETCTLesionsLib.mrml.study_nodes import add_study_nodes

    ct_node, pet_node = add_study_nodes(loaded_study)
    show_fused_study(ct_node, pet_node)

    ct_display, pet_display = ct_node.GetDisplayNode(), pet_node.GetDisplayNode()
    assert (ct_display.GetWindow(), ct_display.GetLevel()) == (350.0, 40.0)
    assert not ct_display.GetAutoWindowLevel()
    assert pet_display.GetColorNode().GetName() == "PET-Heat"
    assert (pet_display.GetWindowLevelMin(), pet_display.GetWindowLevelMax()) == (0.0, 10.0)
    composites = [mrml_scene.GetSingletonNode(name, "vtkMRMLSliceCompositeNode") for name, _ in SLICE_VIEWS]
    for composite in composites:
        assert composite.GetBackgroundVolumeID() == ct_node.GetID()
        assert composite.GetForegroundVolumeID() == pet_node.GetID()
        assert composite.GetForegroundOpacity() == 0.5
        assert composite.GetLinkedControl()
    # Each view is centred on the CT, shows all of it and, the CT being tilted, is turned onto the
    # CT's own slice planes (what Slicer does when it fits views: RotateSliceToLowestVolumeAxes).
    ijk_to_ras = vtk.vtkMatrix4x4()
    ct_node.GetIJKToRASMatrix(ijk_to_ras)
    ijk_axes = np.array([[ijk_to_ras.GetElement(r, c) for c in range(3)] for r in range(3)])
    ijk_axes /= np.linalg.norm(ijk_axes, axis=0)
    size = np.array(loaded_study.ct.GetSize())
    corners = np.array([_ras_of_index(ct_node, np.array(c) * (size - 1)) for c in np.ndindex(2, 2, 2)])
    ct_centre = corners.mean(axis=0)
    for name, orientation in SLICE_VIEWS:
        slice_node = mrml_scene.GetSingletonNode(name, "vtkMRMLSliceNode")
        assert slice_node.GetDefaultOrientation() == orientation
        slice_to_ras = np.array([[slice_node.GetSliceToRAS().GetElement(r, c) for c in range(4)] for r in range(3)])
        normal = slice_to_ras[:, 2]
        assert max(abs(normal @ ijk_axes[:, axis]) for axis in range(3)) == pytest.approx(1.0, abs=1e-6)
        offset = slice_to_ras[:, 3] - ct_centre
        # within a CT voxel (Slicer fits the voxel-edge bounds, the tilt skews them slightly)
        np.testing.assert_allclose([offset @ slice_to_ras[:, 0], offset @ slice_to_ras[:, 1]], 0.0, atol=2.5)
        projected = corners @ slice_to_ras[:, :2]
        extent = projected.max(axis=0) - projected.min(axis=0)
        field_of_view = slice_node.GetFieldOfView()
        assert field_of_view[0] >= extent[0] - 1e-3 and field_of_view[1] >= extent[1] - 1e-3
    red_normal = np.array(
        [mrml_scene.GetSingletonNode("Red", "vtkMRMLSliceNode").GetSliceToRAS().GetElement(r, 2) for r in range(3)]
    )
    assert abs(red_normal @ ijk_axes[:, 2]) == pytest.approx(1.0, abs=1e-6)  # axial view = the CT's slices

    # The module's buttons and sliders: Lung preset, another SUV window, opacity.
    apply_ct_preset(ct_node, "Lung")
    set_suv_window(pet_node, 1.0, 6.0)
    set_pet_opacity(mrml_scene, 0.8)
    assert (ct_display.GetWindow(), ct_display.GetLevel()) == (1400.0, -700.0)
    assert (pet_display.GetWindowLevelMin(), pet_display.GetWindowLevelMax()) == (1.0, 6.0)
    assert all(composite.GetForegroundOpacity() == pytest.approx(0.8) for composite in composites)


def test_other_pet_colour_maps_and_bad_display_values_are_refused_clearly(mrml_scene, loaded_study):
    from PETCTLesionsLib.mrml.display import apply_ct_preset, set_pet_colormap, set_pet_opacity, set_suv_window
    from PETCTLesionsLib.mrml.study_nodes import add_study_nodes

    ct_node, pet_node = add_study_nodes(loaded_study)
    for name in ("PET-Rainbow2", "PET-DICOM"):
        set_pet_colormap(pet_node, name)
        assert pet_node.GetDisplayNode().GetColorNode().GetName() == name
    with pytest.raises(ValueError, match="unknown CT window preset 'Brain'.*Mediastinum, Lung, Bone"):
        apply_ct_preset(ct_node, "Brain")
    with pytest.raises(ValueError, match="unknown PET colour map 'Inferno'"):
        set_pet_colormap(pet_node, "Inferno")
    with pytest.raises(ValueError, match=r"maximum \(2.0\) must be above its minimum \(5.0\)"):
        set_suv_window(pet_node, 5.0, 2.0)
    with pytest.raises(ValueError, match="between 0 and 1"):
        set_pet_opacity(mrml_scene, 1.5)


def _pet_as_slicer_loads_it(written_study):
    """The PET as Slicer's scalar volume plugin loads it: ITK's GDCM series reader (rescaled Bq/mL),
    slices sorted by position, the SOPInstanceUID of each slice in the DICOM.instanceUIDs attribute."""
    import pydicom

    from PETCTLesionsLib.mrml.study_nodes import INSTANCE_UIDS_ATTRIBUTE
    from PETCTLesionsLib.mrml.volumes import volume_node_from_image

    pet_folder = str(written_study.root / "PET")
    files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(pet_folder)
    bq_per_ml = sitk.ReadImage(files, sitk.sitkFloat32)
    node = volume_node_from_image(bq_per_ml, "PET AC")
    node.SetAttribute(
        INSTANCE_UIDS_ATTRIBUTE, " ".join(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in files)
    )
    return node, bq_per_ml


def test_a_pet_slicer_loaded_in_bq_per_ml_is_converted_to_suv_in_place(mrml_scene, written_study):
    import slicer

    from PETCTLesionsLib.mrml.study_nodes import convert_pet_node_to_suv, is_suv_bw
    from PETCTLesionsLib.study import load_pet_suv

    node, bq_per_ml = _pet_as_slicer_loads_it(written_study)
    node_id = node.GetID()
    pet = load_pet_suv([written_study.root])

    convert_pet_node_to_suv(node, pet)

    assert node.GetID() == node_id and is_suv_bw(node)
    suv = slicer.util.arrayFromVolume(node)
    assert suv.dtype == np.float32
    assert np.max(np.abs(suv - written_study.suv) / written_study.suv) < 1e-5
    # Bq/mL -> SUV is the one factor of this series (weight 78 kg, decay-corrected dose).
    ratio = suv / sitk.GetArrayFromImage(bq_per_ml)
    np.testing.assert_allclose(ratio, pet.suv.factors[0], rtol=1e-5)


def test_converting_a_pet_node_that_does_not_match_its_files_is_refused(mrml_scene, written_study):
    import slicer

    from PETCTLesionsLib.mrml.study_nodes import INSTANCE_UIDS_ATTRIBUTE, convert_pet_node_to_suv
    from PETCTLesionsLib.study import load_pet_suv

    pet = load_pet_suv([written_study.root / "PET"])
    node, _ = _pet_as_slicer_loads_it(written_study)
    before = slicer.util.arrayFromVolume(node).copy()
    node.SetOrigin(np.array(node.GetOrigin()) + np.array([0.0, 0.0, 3.27]))
    with pytest.raises(ValueError, match="does not lie where its DICOM files PT series"):
        convert_pet_node_to_suv(node, pet)

    node, _ = _pet_as_slicer_loads_it(written_study)
    node.SetAttribute(INSTANCE_UIDS_ATTRIBUTE, " ".join(reversed(node.GetAttribute(INSTANCE_UIDS_ATTRIBUTE).split())))
    with pytest.raises(ValueError, match="slices in another order"):
        convert_pet_node_to_suv(node, pet)
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(node), before)  # nothing changed
