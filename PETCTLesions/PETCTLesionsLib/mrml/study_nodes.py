"""A PET/CT study as Slicer nodes: CT and PET (SUVbw) volumes with their DICOM identity."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, List, Optional, Tuple

import numpy as np
import SimpleITK as sitk
import slicer

from ..errors import InputError
from ..geometry import Grid
from ..resampling import resample_ct_to_pet
from .volumes import grid_from_volume_node, image_from_volume_node, volume_node_from_image

if TYPE_CHECKING:
    from ..study import LoadedPet, LoadedStudy, SeriesInfo
    from ..synthetic.phantom import PhantomStudy

# How Slicer's PETDICOM extension marks a volume as body-weight SUV (DICOM CID 7180 / UCUM),
# so that Slicer's data probe and other modules show "SUVbw" for our nodes too.
SUV_QUANTITY = ("126400", "DCM", "Standardized Uptake Value")
SUV_BW_UNITS = ("{SUVbw}g/ml", "UCUM", "Standardized Uptake Value body weight")
# Node attribute listing the SOPInstanceUID of each slice, in slice (k) order, as Slicer's
# DICOM scalar volume plugin stores it: the link between CT slices and VOC annotations.
INSTANCE_UIDS_ATTRIBUTE = "DICOM.instanceUIDs"
# Node attribute holding what the SUV computation warned about (one line each): it stays with the
# node (saved in the scene), so the module can show it whenever the study is shown.
SUV_WARNINGS_ATTRIBUTE = "PETCTLesions.SUVWarnings"
# Volume node attributes of a study opened from an nnU-Net case (mrml/annotations.py): where it came
# from, so that its label can be written back there and its case id stays its own.
NNUNET_DATASET_ATTRIBUTE = "PETCTLesions.nnunetDataset"
NNUNET_CASE_ATTRIBUTE = "PETCTLesions.nnunetCase"


def _coded_entry(value: str, scheme: str, meaning: str) -> slicer.vtkCodedEntry:
    entry = slicer.vtkCodedEntry()
    entry.SetValueSchemeMeaning(value, scheme, meaning)
    return entry


def mark_as_suv_bw(pet_node: slicer.vtkMRMLScalarVolumeNode) -> None:
    """Label the voxel values of ``pet_node`` as body-weight SUV (g/ml)."""
    pet_node.SetVoxelValueQuantity(_coded_entry(*SUV_QUANTITY))
    pet_node.SetVoxelValueUnits(_coded_entry(*SUV_BW_UNITS))


def is_suv_bw(volume_node: slicer.vtkMRMLScalarVolumeNode) -> bool:
    units = volume_node.GetVoxelValueUnits()
    return units is not None and units.GetCodeValue() == SUV_BW_UNITS[0]


def add_phantom_volumes(
    study: PhantomStudy, name_prefix: str
) -> Tuple[slicer.vtkMRMLScalarVolumeNode, slicer.vtkMRMLScalarVolumeNode]:
    """Add a synthetic study's CT (HU, CT grid) and PET (SUVbw, PET grid) as volume nodes."""
    ct_node = volume_node_from_image(study.ct_grid.to_sitk(study.ct_hu), f"{name_prefix} CT")
    pet_node = volume_node_from_image(study.pet_grid.to_sitk(study.pet_suv), f"{name_prefix} PET SUVbw")
    mark_as_suv_bw(pet_node)
    return ct_node, pet_node


def add_study_nodes(
    study: LoadedStudy, name_prefix: Optional[str] = None
) -> Tuple[slicer.vtkMRMLScalarVolumeNode, slicer.vtkMRMLScalarVolumeNode]:
    """Add a loaded study's CT (HU) and PET (SUVbw) as volume nodes under patient/study items.

    The subject hierarchy gets the items Slicer's DICOM module creates (patient and study
    items carrying their DICOM UIDs, one series item per volume with its SeriesInstanceUID),
    so the nodes keep their DICOM identity however they were loaded.
    """
    prefix = name_prefix or study.patient_id
    ct_node = add_series_volume(
        study.ct, study.ct_series, study.patient_id, study.study_uid, f"{prefix} CT", study.study_date
    )
    pet_node = add_series_volume(
        study.pet_suv, study.pet_series, study.patient_id, study.study_uid, f"{prefix} PET SUVbw", study.study_date
    )
    mark_as_suv_bw(pet_node)
    return ct_node, pet_node


def add_series_volume(
    image: sitk.Image, series: SeriesInfo, patient_id: str, study_uid: str, name: str, study_date: str = ""
) -> slicer.vtkMRMLScalarVolumeNode:
    """One series' image as a volume node under its patient and study items, with its slice UIDs."""
    node = volume_node_from_image(image, name)
    _add_series_item(node, series, _patient_study_items(patient_id, study_uid, study_date))
    return node


def _patient_study_items(patient_id: str, study_uid: str, study_date: str = "") -> int:
    """The subject hierarchy study item of a study (created with its patient item when missing)."""
    hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(slicer.mrmlScene)
    constants = slicer.vtkMRMLSubjectHierarchyConstants
    uid_name = constants.GetDICOMUIDName()
    patient_item = hierarchy.GetItemByUID(uid_name, patient_id)
    if not patient_item:
        patient_item = hierarchy.CreateSubjectItem(hierarchy.GetSceneItemID(), patient_id)
        hierarchy.SetItemUID(patient_item, uid_name, patient_id)
        hierarchy.SetItemAttribute(patient_item, constants.GetDICOMPatientIDAttributeName(), patient_id)
    study_item = hierarchy.GetItemByUID(uid_name, study_uid)
    if not study_item:
        study_item = hierarchy.CreateStudyItem(patient_item, f"Study {study_uid[-8:]}")
        hierarchy.SetItemUID(study_item, uid_name, study_uid)
        hierarchy.SetItemAttribute(study_item, constants.GetDICOMStudyInstanceUIDAttributeName(), study_uid)
        if study_date:
            hierarchy.SetItemAttribute(study_item, constants.GetDICOMStudyDateAttributeName(), study_date)
    return study_item


def place_in_hierarchy(node: slicer.vtkMRMLNode, parent_item: int) -> int:
    """Put ``node``'s subject hierarchy item under ``parent_item``; returns the item.

    Inside Slicer the subject hierarchy plugins give every new data node an item; headless
    nothing does, so the item is created here when missing.
    """
    hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(slicer.mrmlScene)
    item = hierarchy.GetItemByDataNode(node)
    if item:
        hierarchy.SetItemParent(item, parent_item)
        return item
    return hierarchy.CreateItem(parent_item, node)


def _add_series_item(node: slicer.vtkMRMLScalarVolumeNode, series: SeriesInfo, study_item: int) -> None:
    hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(slicer.mrmlScene)
    constants = slicer.vtkMRMLSubjectHierarchyConstants
    item = place_in_hierarchy(node, study_item)
    hierarchy.SetItemUID(item, constants.GetDICOMUIDName(), series.series_uid)
    hierarchy.SetItemAttribute(item, constants.GetDICOMSeriesModalityAttributeName(), series.modality)
    if series.series_number is not None:
        hierarchy.SetItemAttribute(item, constants.GetDICOMSeriesNumberAttributeName(), str(series.series_number))
    if series.slice_sop_instance_uids:
        node.SetAttribute(INSTANCE_UIDS_ATTRIBUTE, " ".join(series.slice_sop_instance_uids))


def slice_sop_instance_uids(volume_node: slicer.vtkMRMLVolumeNode) -> List[str]:
    """SOPInstanceUID of each slice k of a volume loaded from DICOM (empty when unknown)."""
    value = volume_node.GetAttribute(INSTANCE_UIDS_ATTRIBUTE)
    return value.split() if value else []


def convert_pet_node_to_suv(pet_node: slicer.vtkMRMLScalarVolumeNode, pet: LoadedPet) -> List[str]:
    """Replace the voxels of a PET node Slicer loaded from DICOM (Bq/mL or counts) by SUVbw.

    ``pet`` is the same series read by :func:`PETCTLesionsLib.study.load_pet_suv`. The node
    keeps its place in the scene and subject hierarchy (its DICOM identity); only values and
    their units change. Refuses when the node and the files do not describe the same slices
    in the same order at the same place, since the values would then land on wrong voxels.

    Returns the load's warnings (an implausible uptake time, say), which are also logged
    (Slicer's error log and Python console) and kept on the node (:func:`suv_warnings`).
    """
    name = pet_node.GetName()
    node_grid = grid_from_volume_node(pet_node)
    pet_grid = pet.series_grid
    if not node_grid.same_as(pet_grid, tolerance_mm=1e-3):
        raise InputError(
            f"PET volume {name!r} does not lie where its DICOM files {pet.series.label} put it "
            f"(node: {node_grid.describe()}; files: {pet_grid.describe()})"
        )
    node_uids = slice_sop_instance_uids(pet_node)
    if node_uids and pet.series.slice_sop_instance_uids and node_uids != pet.series.slice_sop_instance_uids:
        raise InputError(f"PET volume {name!r} has its slices in another order than {pet.series.label}")
    slicer.util.updateVolumeFromArray(pet_node, np.ascontiguousarray(sitk.GetArrayViewFromImage(pet.pet_suv)))
    mark_as_suv_bw(pet_node)
    if pet.series.slice_sop_instance_uids and not node_uids:
        pet_node.SetAttribute(INSTANCE_UIDS_ATTRIBUTE, " ".join(pet.series.slice_sop_instance_uids))
    for warning in pet.warnings:  # SUV was computed, but the headers leave a doubt the user must see
        logging.warning(f"PET volume {name!r} in SUVbw: {warning}")
    if pet.warnings:
        pet_node.SetAttribute(SUV_WARNINGS_ATTRIBUTE, "\n".join(pet.warnings))
    else:
        pet_node.RemoveAttribute(SUV_WARNINGS_ATTRIBUTE)
    return list(pet.warnings)


def suv_warnings(volume_node: slicer.vtkMRMLScalarVolumeNode) -> List[str]:
    """What the conversion of this PET node to SUVbw warned about (none for a node never converted)."""
    value = volume_node.GetAttribute(SUV_WARNINGS_ATTRIBUTE)
    return value.split("\n") if value else []


def dicom_attribute_above(node: slicer.vtkMRMLNode, attribute: str) -> str:
    """A DICOM attribute of the nearest subject hierarchy item above ``node`` that has it ('' if none)."""
    hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(slicer.mrmlScene)
    item = hierarchy.GetItemByDataNode(node)
    while item and item != hierarchy.GetSceneItemID():
        value = hierarchy.GetItemAttribute(item, attribute)
        if value:
            return value
        item = hierarchy.GetItemParent(item)
    return ""


def patient_id_of(node: slicer.vtkMRMLNode) -> str:
    """The DICOM Patient ID of the patient item above ``node`` in the subject hierarchy ('' if none)."""
    return dicom_attribute_above(node, slicer.vtkMRMLSubjectHierarchyConstants.GetDICOMPatientIDAttributeName())


def study_case_id(node: slicer.vtkMRMLNode) -> str:
    """The nnU-Net case id of ``node``'s study (``<PatientID>_<10 hex>_<date>``), or one made from its name.

    Slicer's DICOM module and :func:`add_study_nodes` put the Patient ID, StudyInstanceUID and
    StudyDate on the patient and study items; a volume opened from an nnU-Net case keeps that case's
    id; any other volume (not from DICOM) is named after the node.
    """
    from ..formats.nnunet import case_id_for_study, case_id_from_name

    if node.GetAttribute(NNUNET_CASE_ATTRIBUTE):
        return node.GetAttribute(NNUNET_CASE_ATTRIBUTE)
    constants = slicer.vtkMRMLSubjectHierarchyConstants
    patient_id = patient_id_of(node)
    study_uid = dicom_attribute_above(node, constants.GetDICOMStudyInstanceUIDAttributeName())
    if patient_id and study_uid:
        study_date = dicom_attribute_above(node, constants.GetDICOMStudyDateAttributeName())
        return case_id_for_study(patient_id, study_uid, study_date)
    return case_id_from_name(node.GetName())


def study_images(
    ct_node: slicer.vtkMRMLScalarVolumeNode, pet_node: slicer.vtkMRMLScalarVolumeNode
) -> Tuple[sitk.Image, sitk.Image]:
    """The study as the model and the nnU-Net export see it: the CT on the PET grid (as stored
    when it is already there, else resampled: float32 HU, air outside) and the PET (float32)."""
    pet = image_from_volume_node(pet_node, sitk.sitkFloat32)
    ct = image_from_volume_node(ct_node)
    pet_grid = Grid.from_sitk(pet)
    ct_on_pet = ct if Grid.from_sitk(ct).same_as(pet_grid) else resample_ct_to_pet(ct, pet_grid)
    return ct_on_pet, pet
