"""PASCAL VOC boxes <-> markups ROI nodes lying on their CT slice.

A box becomes a vtkMRMLMarkupsROINode aligned with the CT's voxel axes, centred on the box,
as wide and high as the box and one slice thick. It carries its class, its slice's
SOPInstanceUID and the VOC flags as node attributes, and sits in the subject hierarchy
under "VOC boxes" / "Lesion <n>" beside the CT. Exporting reads the ROI back where the user
left it: the slice under its centre and the pixels its edges enclose.
"""

from __future__ import annotations

import colorsys
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import slicer

from ..errors import InputError
from ..formats.voc import (
    VALID_CLASSES,
    VocAnnotation,
    VocBox,
    group_boxes_into_lesions,
    voc_annotations_from_boxes,
)
from ..geometry import Grid
from ..lesions import slice_boxes
from .segmentations import lesion_map_on
from .study_nodes import place_in_hierarchy, slice_sop_instance_uids
from .volumes import grid_from_volume_node

CLASS_ATTRIBUTE = "VOC.class"
SOP_INSTANCE_UID_ATTRIBUTE = "DICOM.instanceUID"
LESION_ATTRIBUTE = "VOC.lesion"
SEGMENT_ID_ATTRIBUTE = "PETCTLesions.segmentID"  # the lesion segment a box belongs to (detections, review)
FLAG_ATTRIBUTES = ("VOC.pose", "VOC.truncated", "VOC.difficult")
# What a VOC import keeps, so that an export can keep the files' fields and say what changed since:
# each imported box node carries its key "<SOPInstanceUID>#<object number in its file>"; the CT node
# carries the folder, each imported file's text, and every imported box as it was read (JSON by key).
# A file's text is kept JSON-encoded: a scene file stores attributes as XML attribute values, and reading
# those back turns a tab into a space (XML attribute-value normalisation), which would change LabelImg's
# tab-indented files on the next write.
IMPORT_KEY_ATTRIBUTE = "PETCTLesions.vocImportKey"
VOC_FOLDER_ATTRIBUTE = "PETCTLesions.vocFolder"
VOC_IMPORTED_ATTRIBUTE = "PETCTLesions.vocImported"
VOC_ORIGINAL_PREFIX = "PETCTLesions.vocOriginal."
BOXES_FOLDER = "VOC boxes"
AXIAL_VIEW_NODE_ID = "vtkMRMLSliceNodeRed"  # Slicer's axial view in every default layout
BOX_FILL_OPACITY = 0.1
# A box is drawn in a pale tint of its lesion's colour: the lesion's hue (which lesion it is), but
# this saturation and full brightness, so that the segment's outline (saturated, drawn inside the
# box along the lesion's edge) and the box are told apart in the slice views and the pictures.
BOX_TINT_SATURATION = 0.4
# The ROI's centre point is its drag handle. Slicer draws it as a filled disc (the Sphere3D glyph),
# which in the lesion's centre reads as a focus of uptake; a thin cross marks it as a graphic.
BOX_HANDLE_GLYPH = slicer.vtkMRMLMarkupsDisplayNode.Cross2D


@dataclass
class BoxImport:
    """What a VOC import made: the ROI nodes, one message per file or box skipped, and notes."""

    nodes: List[slicer.vtkMRMLMarkupsROINode] = field(default_factory=list)
    skipped: List[str] = field(default_factory=list)
    notes: List[str] = field(default_factory=list)  # e.g. a file without <size>, read anyway


def _ct_slices(ct_node: slicer.vtkMRMLScalarVolumeNode) -> Tuple[Grid, List[str]]:
    uids = slice_sop_instance_uids(ct_node)
    grid = grid_from_volume_node(ct_node)
    if len(uids) != grid.size[2]:
        raise InputError(
            f"CT volume {ct_node.GetName()!r} does not know the SOPInstanceUID of each slice "
            f"({len(uids)} UIDs for {grid.size[2]} slices); VOC boxes need it: load the CT from DICOM"
        )
    return grid, uids


@dataclass(frozen=True)
class ImportedBox:
    """A box as a VOC import read it: its file's slice, the lesion it was grouped into (a lesion segment's
    ID once the import made segments, else "group <n>"), and the box."""

    key: str  # "<SOPInstanceUID>#<object number in the file>"
    slice_uid: str
    lesion: str
    box: VocBox


def add_box_nodes(
    annotations: Sequence[VocAnnotation], ct_node: slicer.vtkMRMLScalarVolumeNode, first_lesion: int = 1
) -> BoxImport:
    """One ROI node per box of ``annotations`` on the CT slice its file names; the rest reported.

    Boxes are grouped into lesions by :func:`group_boxes_into_lesions`, numbered from ``first_lesion``.
    What was imported is kept on the nodes for exports (:func:`imported_boxes`, :func:`voc_originals`).
    """
    grid, uids = _ct_slices(ct_node)
    slice_of = {uid: k for k, uid in enumerate(uids)}
    width, height = grid.size[0], grid.size[1]
    result = BoxImport()
    placed: List[Tuple[int, VocBox]] = []
    placed_from: List[VocAnnotation] = []
    on_slices: List[VocAnnotation] = []  # files of this CT's slices, even those none of whose boxes was placed
    for annotation in annotations:
        where = str(annotation.source_path or f"{annotation.sop_instance_uid}.xml")
        k = slice_of.get(annotation.sop_instance_uid)
        if k is None:
            result.skipped.append(f"{where}: no slice of CT {ct_node.GetName()!r} has this SOPInstanceUID; skipped")
            continue
        # A size the file does not give (no <size>) is the slice's: only a stated one can disagree.
        if (annotation.width or width, annotation.height or height) != (width, height):
            result.skipped.append(
                f"{where}: drawn on a {annotation.width}x{annotation.height} image but the CT slice is "
                f"{width}x{height}; skipped"
            )
            continue
        result.notes.extend(annotation.notes)
        on_slices.append(annotation)
        for index, box in enumerate(annotation.boxes, start=1):
            box, cut = box.clipped(width, height)  # the file gave no size: the slice's is known here
            if cut:
                result.notes.append(f"{where}: object {index} ({box.name}) {cut}")
            problem = box.problem(width, height)
            if problem:
                result.skipped.append(f"{where}: object {index} ({box.name or 'no name'}) {problem}; skipped")
                continue
            placed.append((k, box))
            placed_from.append(annotation)
    lesions = [
        first_lesion - 1 + n for n in group_boxes_into_lesions([(k, *box.to_pixel_ranges()) for k, box in placed])
    ]
    result.nodes = _place_boxes(ct_node, grid, uids, [(k, box, lesion) for (k, box), lesion in zip(placed, lesions)])
    _record_import(ct_node, result.nodes, placed, placed_from, lesions)
    if result.nodes:  # a refused import (nothing placed) leaves no file of its own on the CT
        keep_voc_originals(ct_node, on_slices)
    return result


def _record_import(
    ct_node: slicer.vtkMRMLScalarVolumeNode,
    nodes: Sequence[slicer.vtkMRMLMarkupsROINode],
    placed: Sequence[Tuple[int, VocBox]],
    sources: Sequence[VocAnnotation],
    lesions: Sequence[int],
) -> None:
    """Keep on the nodes what was imported: each box's key, and on the CT the boxes as read and their folder
    (the files' texts: :func:`keep_voc_originals`)."""
    snapshot = _imported_json(ct_node)
    for node, (_, box), source, lesion in zip(nodes, placed, sources, lesions):
        if box.source_object is None:
            continue  # made in memory, not read from a file: nothing to keep
        key = f"{source.sop_instance_uid}#{box.source_object}"
        node.SetAttribute(IMPORT_KEY_ATTRIBUTE, key)
        snapshot[key] = {"lesion": f"group {lesion}", "box": _box_fields(box)}
    if snapshot:
        ct_node.SetAttribute(VOC_IMPORTED_ATTRIBUTE, json.dumps(snapshot, sort_keys=True))
    folders = {source.source_path.parent for source in sources if source.source_path is not None}
    if len(folders) == 1:
        ct_node.SetAttribute(VOC_FOLDER_ATTRIBUTE, str(folders.pop()))


def keep_voc_originals(ct_node: slicer.vtkMRMLScalarVolumeNode, files: Sequence[VocAnnotation]) -> None:
    """Keep on the CT the text of each of ``files`` that belongs to one of its slices (its SOPInstanceUID, and
    its size when it states one), so that an export over it keeps its fields. Also for a file none of whose
    boxes could be placed (all skipped): a box the annotator adds on its slice then joins its objects
    instead of replacing them."""
    grid, uids = _ct_slices(ct_node)
    slices = set(uids)
    for source in files:
        size = (source.width or grid.size[0], source.height or grid.size[1])
        if source.source_xml is not None and source.sop_instance_uid in slices and size == tuple(grid.size[:2]):
            ct_node.SetAttribute(VOC_ORIGINAL_PREFIX + source.sop_instance_uid, json.dumps(source.source_xml))


def _box_fields(box: VocBox) -> list:
    return [box.name, box.xmin, box.ymin, box.xmax, box.ymax, box.pose, box.truncated, box.difficult]


def _imported_json(ct_node: slicer.vtkMRMLScalarVolumeNode) -> Dict[str, dict]:
    value = ct_node.GetAttribute(VOC_IMPORTED_ATTRIBUTE)
    return json.loads(value) if value else {}


def imported_boxes(ct_node: slicer.vtkMRMLScalarVolumeNode) -> Dict[str, ImportedBox]:
    """Every box a VOC import placed on ``ct_node``, as it was read, by key (empty: nothing imported)."""
    result = {}
    for key, value in _imported_json(ct_node).items():
        name, xmin, ymin, xmax, ymax, pose, truncated, difficult = value["box"]
        box = VocBox(name, xmin, ymin, xmax, ymax, pose, truncated, difficult, source_object=int(key.split("#")[1]))
        result[key] = ImportedBox(key, key.split("#")[0], value["lesion"], box)
    return result


def set_imported_lesions(ct_node: slicer.vtkMRMLScalarVolumeNode, lesion_of: Dict[str, str]) -> None:
    """Name the lesion each imported box (by key) was grouped into, e.g. by its lesion segment's ID."""
    snapshot = _imported_json(ct_node)
    for key, lesion in lesion_of.items():
        snapshot[key]["lesion"] = lesion
    ct_node.SetAttribute(VOC_IMPORTED_ATTRIBUTE, json.dumps(snapshot, sort_keys=True))


def voc_import_folder(ct_node: slicer.vtkMRMLScalarVolumeNode) -> Optional[Path]:
    """The folder the CT's VOC boxes were imported from (None: none imported)."""
    value = ct_node.GetAttribute(VOC_FOLDER_ATTRIBUTE)
    return Path(value) if value else None


def voc_originals(ct_node: slicer.vtkMRMLScalarVolumeNode) -> Dict[str, str]:
    """The text of each VOC file imported onto ``ct_node``, by its slice's SOPInstanceUID."""
    stored = {uid: ct_node.GetAttribute(VOC_ORIGINAL_PREFIX + uid) for uid in slice_sop_instance_uids(ct_node)}
    return {uid: json.loads(value) for uid, value in stored.items() if value is not None}


def import_key(node: slicer.vtkMRMLMarkupsROINode) -> Optional[str]:
    """The key of the imported box ``node`` shows (None: a box added since)."""
    return node.GetAttribute(IMPORT_KEY_ATTRIBUTE) or None


def _place_boxes(
    ct_node: slicer.vtkMRMLScalarVolumeNode, grid: Grid, uids: Sequence[str], placed: Sequence[Tuple[int, VocBox, int]]
) -> List[slicer.vtkMRMLMarkupsROINode]:
    """ROI nodes for ``(slice k, box, lesion number)`` triples, each in its folder "Lesion <n>"."""
    folders = _lesion_folders(ct_node, sorted({lesion for _, _, lesion in placed}))
    nodes = []
    for k, box, lesion in placed:
        node = _box_node(box, k, grid, uids[k], lesion)
        place_in_hierarchy(node, folders[lesion])
        nodes.append(node)
    return nodes


def add_lesion_boxes(
    ct_node: slicer.vtkMRMLScalarVolumeNode, placed: Sequence[Tuple[int, VocBox, int]]
) -> List[slicer.vtkMRMLMarkupsROINode]:
    """Boxes given as ``(CT slice k, box, lesion number)``, in the lesions' folders; a box that
    does not fit its slice is refused (ValueError) before any node is made."""
    grid, uids = _ct_slices(ct_node)
    for k, box, _ in placed:
        problem = box.problem(grid.size[0], grid.size[1])
        if problem:
            raise ValueError(f"box on slice {k + 1} of {ct_node.GetName()!r}: {problem}")
    return _place_boxes(ct_node, grid, uids, placed)


def add_box_node(
    ct_node: slicer.vtkMRMLScalarVolumeNode, k: int, box: VocBox, lesion: Optional[int] = None
) -> slicer.vtkMRMLMarkupsROINode:
    """One more box on CT slice ``k`` (0-based), in folder "Lesion <lesion>" (default: a new lesion number)."""
    if lesion is None:
        numbers = [int(n.GetAttribute(LESION_ATTRIBUTE) or 0) for n in box_nodes_of(ct_node)]
        lesion = max(numbers, default=0) + 1
    (node,) = add_lesion_boxes(ct_node, [(k, box, lesion)])
    return node


def box_colour(lesion_rgb: Sequence[float]) -> Tuple[float, float, float]:
    """The colour of a box of the lesion coloured ``lesion_rgb``: a pale tint of it (same hue)."""
    hue, _, _ = colorsys.rgb_to_hsv(*(float(value) for value in lesion_rgb[:3]))
    return colorsys.hsv_to_rgb(hue, BOX_TINT_SATURATION, 1.0)


def colour_box(node: slicer.vtkMRMLMarkupsROINode, lesion_rgb: Sequence[float]) -> None:
    """Draw a box in a pale tint of its lesion's colour (:func:`box_colour`), selected and unselected alike."""
    rgb = box_colour(lesion_rgb)
    display = node.GetDisplayNode()
    display.SetColor(*rgb)
    display.SetSelectedColor(*rgb)


def _box_node(box: VocBox, k: int, grid: Grid, uid: str, lesion: int) -> slicer.vtkMRMLMarkupsROINode:
    c0, r0, c1, r1 = box.to_pixel_ranges()
    centre_ijk = ((c0 + c1) / 2.0, (r0 + r1) / 2.0, float(k))
    # Object axes = the CT's voxel axes (unit length), origin = the box centre.
    ijk_to_ras = grid.ijk_to_ras()
    object_to_node = np.eye(4)
    object_to_node[:3, :3] = ijk_to_ras[:3, :3] / np.array(grid.spacing)
    object_to_node[:3, 3] = (ijk_to_ras @ np.array([*centre_ijk, 1.0]))[:3]
    matrix = slicer.util.vtkMatrixFromArray(object_to_node)
    node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsROINode", f"Lesion {lesion} {box.name} slice {k + 1}")
    node.CreateDefaultDisplayNodes()
    # A VOC box belongs to one axial CT slice. Cut by a coronal or sagittal plane, the boxes of a
    # lesion's slices would stack into a solid block over it (names piled on top), hiding the
    # PET: boxes are shown in the axial (Red) view only, faintly filled, names in the Data module.
    display = node.GetDisplayNode()
    display.SetViewNodeIDs([AXIAL_VIEW_NODE_ID])
    display.SetPropertiesLabelVisibility(False)
    display.SetFillOpacity(BOX_FILL_OPACITY)
    display.SetGlyphType(BOX_HANDLE_GLYPH)
    node.SetAndObserveObjectToNodeMatrix(matrix)
    node.SetSize((c1 - c0 + 1) * grid.spacing[0], (r1 - r0 + 1) * grid.spacing[1], grid.spacing[2])
    node.SetAttribute(CLASS_ATTRIBUTE, box.name)
    node.SetAttribute(SOP_INSTANCE_UID_ATTRIBUTE, uid)
    node.SetAttribute(LESION_ATTRIBUTE, str(lesion))
    for attribute, value in zip(FLAG_ATTRIBUTES, (box.pose, box.truncated, box.difficult)):
        node.SetAttribute(attribute, str(value))
    return node


def _lesion_folders(ct_node: slicer.vtkMRMLScalarVolumeNode, lesions: Sequence[int]) -> Dict[int, int]:
    """Subject hierarchy folders "VOC boxes" / "Lesion <n>" beside the CT (under its study when it has one)."""
    hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(slicer.mrmlScene)
    ct_item = hierarchy.GetItemByDataNode(ct_node)
    parent = hierarchy.GetItemParent(ct_item) if ct_item else hierarchy.GetSceneItemID()
    boxes_folder = hierarchy.GetItemChildWithName(parent, BOXES_FOLDER) or hierarchy.CreateFolderItem(
        parent, BOXES_FOLDER
    )
    folders = {}
    for lesion in lesions:
        name = f"Lesion {lesion}"
        folders[lesion] = hierarchy.GetItemChildWithName(boxes_folder, name) or hierarchy.CreateFolderItem(
            boxes_folder, name
        )
    return folders


# ----------------------------------------------------------------------------------------- export


def _round_half_up(value: float) -> int:
    return int(math.floor(value + 0.5))


def voc_from_box_nodes(
    roi_nodes: Sequence[slicer.vtkMRMLMarkupsROINode],
    ct_node: slicer.vtkMRMLScalarVolumeNode,
    default_class: Optional[str],
) -> Tuple[List[VocAnnotation], List[str]]:
    """VOC annotations (one per CT slice with boxes) from ROI nodes where the user left them.

    The slice is the one under the ROI's centre; the box is the pixels its edges enclose,
    clipped to the image. The class is the node's ``VOC.class`` attribute, else ``default_class``
    (the histology letter of the Patient ID). Boxes off the image or without a class are reported.
    """
    grid, uids = _ct_slices(ct_node)
    width, height = grid.size[0], grid.size[1]
    by_slice: Dict[int, VocAnnotation] = {}
    skipped: List[str] = []
    for node in roi_nodes:
        placed = box_where_left(node, ct_node, default_class, (grid, uids))
        if isinstance(placed, str):
            skipped.append(placed)
            continue
        k, box = placed
        annotation = by_slice.get(k)
        if annotation is None:
            annotation = by_slice[k] = VocAnnotation(uids[k], width=width, height=height)
        annotation.boxes.append(box)
    annotations = [by_slice[k] for k in sorted(by_slice)]
    _keep_original_fields(annotations, ct_node)
    return annotations, skipped


def box_where_left(
    node: slicer.vtkMRMLMarkupsROINode,
    ct_node: slicer.vtkMRMLScalarVolumeNode,
    default_class: Optional[str],
    slices: Optional[Tuple[Grid, List[str]]] = None,
) -> Union[Tuple[int, VocBox], str]:
    """(CT slice k, VOC box) of an ROI node where the user left it, or why it gives no box.

    The slice is the one under the ROI's centre; the box is the pixels its edges enclose, clipped
    to the image. A box still on the slice of the file it was imported from keeps its object number
    (``source_object``), so that an export writes it in its original element.
    """
    grid, uids = slices if slices is not None else _ct_slices(ct_node)
    width, height = grid.size[0], grid.size[1]
    name = node.GetName()
    class_name = node.GetAttribute(CLASS_ATTRIBUTE) or default_class
    if not class_name:
        return f"box {name!r}: no class (attribute {CLASS_ATTRIBUTE}) and no histology letter in the Patient ID"
    corners_ijk = _roi_corners_ijk(node, np.linalg.inv(grid.ijk_to_ras()))
    low, high = corners_ijk.min(axis=0), corners_ijk.max(axis=0)
    k = _round_half_up((low[2] + high[2]) / 2.0)
    c0, r0 = _round_half_up(low[0] + 0.5), _round_half_up(low[1] + 0.5)
    c1, r1 = _round_half_up(high[0] - 0.5), _round_half_up(high[1] - 0.5)
    c0, r0, c1, r1 = max(c0, 0), max(r0, 0), min(c1, width - 1), min(r1, height - 1)
    if not 0 <= k < len(uids) or c0 > c1 or r0 > r1:
        return f"box {name!r}: lies outside CT {ct_node.GetName()!r}; skipped"
    box = VocBox.from_pixel_ranges(class_name, c0, r0, c1, r1)
    pose, truncated, difficult = (node.GetAttribute(a) for a in FLAG_ATTRIBUTES)
    box.pose = pose or box.pose
    box.truncated = int(truncated or 0)
    box.difficult = int(difficult or 0)
    key = import_key(node)
    if key is not None and key.split("#")[0] == uids[k]:
        box.source_object = int(key.split("#")[1])
    return k, box


def _keep_original_fields(annotations: Sequence[VocAnnotation], ct_node: slicer.vtkMRMLScalarVolumeNode) -> None:
    """Annotations of slices whose file was imported are written keeping that file's fields."""
    originals = voc_originals(ct_node)
    imported: Dict[str, set] = {}
    for value in imported_boxes(ct_node).values():
        imported.setdefault(value.slice_uid, set()).add(value.box.source_object)
    for annotation in annotations:
        original = originals.get(annotation.sop_instance_uid)
        if original is not None:
            annotation.keep_fields_of = original
            annotation.imported_objects = frozenset(imported.get(annotation.sop_instance_uid, ()))


def emptied_original_annotations(
    annotations: Sequence[VocAnnotation], ct_node: slicer.vtkMRMLScalarVolumeNode
) -> List[VocAnnotation]:
    """An annotation without boxes for each imported file whose slice has none of ``annotations`` any more
    (every box of it removed, rejected or moved): written, it keeps only what the import skipped."""
    grid, uids = _ct_slices(ct_node)
    present = {annotation.sop_instance_uid for annotation in annotations}
    emptied = [
        VocAnnotation(uid, width=grid.size[0], height=grid.size[1])
        for uid in voc_originals(ct_node)
        if uid not in present
    ]
    _keep_original_fields(emptied, ct_node)
    return emptied


def _roi_corners_ijk(node: slicer.vtkMRMLMarkupsROINode, ras_to_ijk: np.ndarray) -> np.ndarray:
    object_to_world = node.GetObjectToWorldMatrix()  # includes any transform the ROI is under
    matrix = np.array([[object_to_world.GetElement(r, c) for c in range(4)] for r in range(4)])
    half = np.array(node.GetSize()) / 2.0
    corners = np.array(
        [[sx * half[0], sy * half[1], sz * half[2], 1.0] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)]
    )
    return (ras_to_ijk @ matrix @ corners.T).T[:, :3]


def box_nodes_of(ct_node: slicer.vtkMRMLScalarVolumeNode) -> List[slicer.vtkMRMLMarkupsROINode]:
    """The ROI nodes that are VOC boxes on ``ct_node``'s slices (their SOPInstanceUID is one of its slices)."""
    uids = set(slice_sop_instance_uids(ct_node))
    return [node for node in roi_nodes(ct_node.GetScene()) if node.GetAttribute(SOP_INSTANCE_UID_ATTRIBUTE) in uids]


def roi_nodes(scene: slicer.vtkMRMLScene) -> List[slicer.vtkMRMLMarkupsROINode]:
    """Every markups ROI node of the scene."""
    count = scene.GetNumberOfNodesByClass("vtkMRMLMarkupsROINode")
    return [scene.GetNthNodeByClass(n, "vtkMRMLMarkupsROINode") for n in range(count)]


def voc_from_segmentation(
    segmentation: slicer.vtkMRMLSegmentationNode, ct_node: slicer.vtkMRMLScalarVolumeNode, class_name: str
) -> List[VocAnnotation]:
    """The tight box of every segment (lesion) on every CT slice it crosses, classed ``class_name``."""
    if class_name not in VALID_CLASSES:
        raise ValueError(f"class {class_name!r} is not one of {', '.join(VALID_CLASSES)}")
    grid, uids = _ct_slices(ct_node)
    lesion_map, _ = lesion_map_on(segmentation, ct_node)
    return voc_annotations_from_boxes(slice_boxes(lesion_map), uids, grid.size[0], grid.size[1], class_name)
