"""PASCAL VOC XML boxes as written by LabelImg and as published in TCIA Lung-PET-CT-Dx.

Lung-PET-CT-Dx keeps one XML file per annotated CT slice in ``Annotation/<A0001>/<SOPInstanceUID>.xml``;
the file name minus ``.xml`` is the only link to the slice. Each ``<object>`` is one box whose
``<name>`` is the histology letter (``A``, ``B``, ``E`` or ``G``).

Box coordinate convention: LabelImg's, the tool the Lung-PET-CT-Dx boxes were drawn with. ``x``
is the column and ``y`` the row of the slice (512x512 in Lung-PET-CT-Dx). LabelImg draws the
image with pixel column ``c`` spanning ``[c, c + 1)`` and stores the box's edges truncated to
integers (``libs/labelFile.py``, ``convertPoints2BndBox``), so a box covers the 0-based columns
``xmin .. xmax - 1`` and rows ``ymin .. ymax - 1`` of the slice array (indexed ``[row, column]``),
as ``array[ymin:ymax, xmin:xmax]`` does. Written boxes are what LabelImg saves for the same
pixels, ``xmin = c0``, ``xmax = c1 + 1`` (and rows alike), so that the files open in LabelImg
exactly where the pixels are; LabelImg also raises an ``xmin`` or ``ymin`` of 0 to 1, which
would drop a box's first column at the image edge: it is not done here. A box with
``xmin == xmax`` or ``ymin == ymax`` covers no pixel (LabelImg does not write one): it is
skipped with a note, as every unusable box is, rather than guessed to be one pixel wide. A valid
box satisfies ``0 <= xmin < xmax <= width`` and ``0 <= ymin < ymax <= height``; one that
reaches beyond the image but covers part of it is cut to the image, marked ``truncated`` (as VOC
means it), with a note; one wholly outside is skipped.

The PASCAL VOC devkit reads the same numbers as 1-based inclusive (columns ``xmin - 1 .. xmax -
1``): one column further left and up than LabelImg shows. This module used that reading until
2026-11-23; the difference is at most one pixel on each box's left and top edges.

``<size>`` only repeats the size of the CT slice, which the slice itself knows. A file without
``<size>``, or with width or height 0 (LabelImg writes 0 when it could not read the image), is
read with that dimension unknown (``None``), a note in :attr:`VocAnnotation.notes`, and all its
boxes: they are checked against the real slice size where the slice is known (placing boxes on
a CT volume), only for ``>= 1`` here.

Reading accepts the quirks of the real files: ``<annotation verified="no">``, ``Unknow`` in
``folder``/``filename``/``path``, mixed text in ``<source>``, ``<Difficult>`` as well as
``<difficult>``, float coordinates such as ``278.0`` (rounded half up) and stray whitespace.
Documents that declare a DOCTYPE or ENTITY are refused before any XML parser sees them, so
entity expansion (billion laughs, external entities) can never happen.

Lesions and boxes (:mod:`lesions` numbers lesions and finds their tight box on each slice):
:func:`voc_annotations_from_boxes` turns a lesion map's per-slice boxes into one annotation per
CT slice; :func:`group_boxes_into_lesions` gives boxes read from VOC files (which carry no lesion
identity) their lesion numbers.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, FrozenSet, List, Optional, Sequence, Tuple
from xml.sax.saxutils import escape

import numpy as np

from ..errors import InputError, OutputExistsError
from ..fileio import atomic_output, atomic_write_text
from ..lesions import SliceBox

VALID_CLASSES: Tuple[str, ...] = ("A", "B", "E", "G")
MAX_XML_BYTES = 1_000_000  # real files are ~0.5 kB; anything this large is not a LabelImg annotation
MAX_UID_LENGTH = 64  # DICOM UI value representation
_UID_PATTERN = re.compile(r"^[0-9]+(\.[0-9]+)*$")
# A DOCTYPE is the only place entities can be declared; refusing both markers keeps the
# parser away from every entity-expansion attack whatever the parser's own defences are.
_FORBIDDEN_MARKUP = re.compile(r"<!\s*(DOCTYPE|ENTITY)", re.IGNORECASE)
# What a file has before its root element: the XML declaration, comments, processing instructions.
_PROLOG = re.compile(r"\A(?:\s*(?:<\?.*?\?>|<!--.*?-->))*\s*", re.DOTALL)
_LUNG_DX_PATIENT = re.compile(r"^Lung_Dx-([A-Za-z])(\w*)$")
_UNSAFE_NAME_CHARS = re.compile(r'[\\/:*?"<>|\x00-\x1f\x7f]')
_INDENT = "  "
_SIZE_ELEMENT = f"<size>\n{_INDENT * 2}<width />\n{_INDENT * 2}<height />\n{_INDENT * 2}<depth />\n{_INDENT}</size>"


class VocError(InputError):
    """A VOC annotation file (or one to be written) is unusable; the message names file and problem."""


@dataclass
class VocBox:
    """One labelled box in LabelImg's pixel coordinates (edges; x = column, y = row; see the module)."""

    name: str
    xmin: int
    ymin: int
    xmax: int
    ymax: int
    pose: str = "Unspecified"
    truncated: int = 0
    difficult: int = 0
    # The 1-based <object> of the file this box was read from (None: not read from a file); an export
    # that keeps the file's fields writes the box in that element's place and spelling.
    source_object: Optional[int] = field(default=None, compare=False)

    def to_pixel_ranges(self) -> Tuple[int, int, int, int]:
        """0-based inclusive (c0, r0, c1, r1): the columns and rows of the slice array the box covers."""
        return (self.xmin, self.ymin, max(self.xmin, self.xmax - 1), max(self.ymin, self.ymax - 1))

    @classmethod
    def from_pixel_ranges(cls, name: str, c0: int, r0: int, c1: int, r1: int) -> VocBox:
        """Box covering 0-based inclusive columns c0..c1 and rows r0..r1, as LabelImg saves it."""
        return cls(name=name, xmin=int(c0), ymin=int(r0), xmax=int(c1) + 1, ymax=int(r1) + 1)

    def clipped(self, width: Optional[int], height: Optional[int]) -> Tuple[VocBox, Optional[str]]:
        """The box cut to a ``width`` x ``height`` image when it reaches beyond it but covers some of
        it (marked truncated, as VOC means it), and a note saying so; else the box itself and None.

        A reader's box one pixel past the edge still shows the lesion: dropping it would lose the
        annotation. A box wholly outside, or inverted, is left for :meth:`problem` to refuse.
        """
        low_x, low_y = max(self.xmin, 0), max(self.ymin, 0)
        high_x = self.xmax if width is None else min(self.xmax, width)
        high_y = self.ymax if height is None else min(self.ymax, height)
        if (low_x, low_y, high_x, high_y) == (self.xmin, self.ymin, self.xmax, self.ymax):
            return self, None
        if low_x >= high_x or low_y >= high_y or self.xmin > self.xmax or self.ymin > self.ymax:
            return self, None
        w, h = ("?" if width is None else width), ("?" if height is None else height)
        note = (
            f"reaches beyond the {w}x{h} image (xmin {self.xmin}, ymin {self.ymin}, xmax {self.xmax}, "
            f"ymax {self.ymax}); cut to xmin {low_x}, ymin {low_y}, xmax {high_x}, ymax {high_y}"
        )
        return dataclasses.replace(self, xmin=low_x, ymin=low_y, xmax=high_x, ymax=high_y, truncated=1), note

    def problem(
        self, width: Optional[int], height: Optional[int], valid_classes: Optional[Sequence[str]] = VALID_CLASSES
    ) -> Optional[str]:
        """Why this box is unusable on a ``width`` x ``height`` slice, or None when it is fine.

        An unknown (None) width or height checks only the lower bound, 0, of that axis; the
        caller checks the upper bound against the real slice when it knows it.
        """
        if not self.name:
            return "has no class name"
        if valid_classes is not None and self.name not in valid_classes:
            return f"has unknown class {self.name!r} (expected one of {', '.join(valid_classes)})"
        if self.xmin > self.xmax or self.ymin > self.ymax:
            return f"is inverted (xmin {self.xmin}, xmax {self.xmax}, ymin {self.ymin}, ymax {self.ymax})"
        if self.xmin == self.xmax or self.ymin == self.ymax:  # edges, not pixels: such a box covers none
            return (
                f"has zero {'width' if self.xmin == self.xmax else 'height'} (xmin {self.xmin}, xmax {self.xmax}, "
                f"ymin {self.ymin}, ymax {self.ymax}): it covers no pixel"
            )
        too_wide = width is not None and self.xmax > width
        too_high = height is not None and self.ymax > height
        if self.xmin < 0 or self.ymin < 0 or too_wide or too_high:
            w, h = ("?" if width is None else width), ("?" if height is None else height)
            return (
                f"lies outside the {w}x{h} image (xmin {self.xmin}, ymin {self.ymin}, "
                f"xmax {self.xmax}, ymax {self.ymax}; valid 0..{w} x 0..{h})"
            )
        return None


@dataclass
class VocAnnotation:
    """All boxes of one CT slice, identified by the slice's SOPInstanceUID.

    ``width``/``height`` are None when the file did not say (no ``<size>``, or 0); ``notes``
    then says so. Writing needs them: take them from the CT slice.
    """

    sop_instance_uid: str
    width: Optional[int]
    height: Optional[int]
    depth: int = 1
    boxes: List[VocBox] = field(default_factory=list)
    folder: str = ""
    source_path: Optional[Path] = None
    notes: List[str] = field(default_factory=list)
    source_xml: Optional[str] = None  # the text of the file it was read from
    # Written keeping this file's fields (root attributes, folder, filename, path, source, size, element
    # order and spelling; see keep_fields_text) when set; else written afresh (voc_xml_text).
    keep_fields_of: Optional[str] = None
    # With keep_fields_of: its <object>s that were imported as boxes. Each is written only where a box
    # still refers to it (source_object); the file's other objects (skipped at import) are kept as they are.
    imported_objects: FrozenSet[int] = frozenset()


def is_dicom_uid(text: str) -> bool:
    """True when ``text`` looks like a DICOM UID: digits and dots, at most 64 characters."""
    return len(text) <= MAX_UID_LENGTH and bool(_UID_PATTERN.match(text))


# ----------------------------------------------------------------------------------------- reading


def parse_voc_xml(path: Path, valid_classes: Optional[Sequence[str]] = VALID_CLASSES) -> VocAnnotation:
    """Read one VOC XML file strictly: any unusable box raises :class:`VocError`.

    ``valid_classes=None`` accepts any non-empty class name.
    """
    annotation, box_problems = read_voc_file(path, valid_classes)
    if box_problems:
        raise VocError(box_problems[0])
    return annotation


def read_voc_file(
    path: Path, valid_classes: Optional[Sequence[str]] = VALID_CLASSES
) -> Tuple[VocAnnotation, List[str]]:
    """Read one VOC XML file, keeping only its usable boxes.

    Returns the annotation and one message per skipped box. A file that cannot be read as a
    whole (not XML, forbidden DOCTYPE, negative or non-numeric size, file name not a UID) raises
    :class:`VocError`. A missing ``<size>``, or a width or height of 0, leaves that dimension
    None with a note in ``annotation.notes``; the boxes are kept.
    """
    path = Path(path)
    uid = path.name[: -len(".xml")] if path.name.lower().endswith(".xml") else path.name
    if not is_dicom_uid(uid):
        raise VocError(f"{path}: file name is not <SOPInstanceUID>.xml (digits and dots, at most {MAX_UID_LENGTH})")
    text = _read_xml_text(path)
    root = _parse_xml_text(text, path)
    if root.tag != "annotation":
        raise VocError(f"{path}: root element is <{root.tag}>, expected <annotation>")
    width, height, depth, notes = _read_size(root, path)
    boxes: List[VocBox] = []
    problems: List[str] = []
    for index, element in enumerate(root.findall("object"), start=1):
        try:
            box = _read_box(element)
        except VocError as error:
            problems.append(f"{path}: object {index}: {error}")
            continue
        box.source_object = index
        box, cut = box.clipped(width, height)
        if cut:
            notes.append(f"{path}: object {index} ({box.name or 'no name'}) {cut}")
        problem = box.problem(width, height, valid_classes)
        if problem:
            problems.append(f"{path}: object {index} ({box.name or 'no name'}) {problem}; skipped")
            continue
        boxes.append(box)
    annotation = VocAnnotation(
        sop_instance_uid=uid,
        width=width,
        height=height,
        depth=depth,
        boxes=boxes,
        folder=_child_text(root, "folder"),
        source_path=path,
        notes=notes,
        source_xml=text,
    )
    return annotation, problems


def read_voc_folder(
    folder: Path, valid_classes: Optional[Sequence[str]] = VALID_CLASSES
) -> Tuple[List[VocAnnotation], List[str]]:
    """Read every ``*.xml`` in ``folder`` (sorted by name), skipping what is unusable.

    Returns (annotations, problems). Malformed files and unusable boxes are reported (the
    message names the file and the object) and skipped; reading goes on with the rest. A file
    whose boxes were all unusable is skipped too, so that it never reads as a lesion-free slice.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise VocError(f"{folder}: not a folder of VOC XML files")
    annotations: List[VocAnnotation] = []
    problems: List[str] = []
    for path in sorted(p for p in folder.iterdir() if p.suffix.lower() == ".xml" and p.is_file()):
        try:
            annotation, box_problems = read_voc_file(path, valid_classes)
        except VocError as error:
            problems.append(f"{error}; file skipped")
            continue
        problems.extend(box_problems)
        if box_problems and not annotation.boxes:
            problems.append(f"{path}: no usable box left; file skipped")
            continue
        annotations.append(annotation)
    return annotations, problems


def _read_xml_text(path: Path) -> str:
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_XML_BYTES + 1)
    except OSError as error:
        raise VocError(f"{path}: cannot read: {error.strerror or error}") from error
    if len(data) > MAX_XML_BYTES:
        raise VocError(f"{path}: larger than {MAX_XML_BYTES} bytes; not a LabelImg annotation")
    try:
        # Decoding ourselves means the DOCTYPE check below sees the same characters the parser
        # would (a UTF-16 document could otherwise hide its DOCTYPE from a byte search).
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise VocError(f"{path}: not UTF-8 text ({error.reason} at byte {error.start})") from error
    return text


def _parse_xml_text(text: str, path: object, keep_comments: bool = False) -> ET.Element:
    """The root element of ``text``; ``keep_comments``: with its comments and processing instructions as
    elements (for rewriting the file; a reader skips them)."""
    if _FORBIDDEN_MARKUP.search(text):
        raise VocError(f"{path}: contains a DOCTYPE or ENTITY declaration; refused (entities are never expanded)")
    try:
        if not keep_comments:
            return ET.fromstring(text)
        parser = ET.XMLParser(target=ET.TreeBuilder(insert_comments=True, insert_pis=True))
        parser.feed(text)
        return parser.close()
    except ET.ParseError as error:
        raise VocError(f"{path}: malformed XML ({error})") from error


def _child_text(element: ET.Element, tag: str) -> str:
    """Stripped text of the first child ``tag`` (case-insensitive match on the tag), "" if absent."""
    child = _find_child(element, tag)
    return (child.text or "").strip() if child is not None else ""


def _find_child(element: ET.Element, tag: str) -> Optional[ET.Element]:
    exact = element.find(tag)
    if exact is not None:
        return exact
    # LabelImg writes <difficult>, Lung-PET-CT-Dx has <Difficult>: accept either spelling.
    wanted = tag.lower()
    return next((child for child in element if isinstance(child.tag, str) and child.tag.lower() == wanted), None)


def _read_size(root: ET.Element, path: Path) -> Tuple[Optional[int], Optional[int], int, List[str]]:
    """(width, height, depth, notes): width/height None when absent, empty or 0 (with a note)."""
    size = _find_child(root, "size")
    if size is None:
        return None, None, 1, [f"{path}: no <size>; image size taken from the CT slice, boxes kept"]
    try:
        values = {}
        for tag in ("width", "height", "depth"):
            text = _child_text(size, tag)
            values[tag] = _parse_int(text, tag) if text else 0
    except VocError as error:
        raise VocError(f"{path}: <size>: {error}") from None
    negative = {tag: value for tag, value in values.items() if value < 0}
    if negative:
        shown = ", ".join(f"{tag} {value}" for tag, value in negative.items())
        raise VocError(f"{path}: <size> must not be negative ({shown})")
    unknown = [tag for tag in ("width", "height") if values[tag] == 0]
    notes = []
    if unknown:
        said = " and ".join(unknown)
        notes.append(f"{path}: <size> gives no {said} (missing or 0); image size taken from the CT slice, boxes kept")
    width = values["width"] or None
    height = values["height"] or None
    return width, height, values["depth"] or 1, notes


def _read_box(element: ET.Element) -> VocBox:
    bndbox = _find_child(element, "bndbox")
    if bndbox is None:
        raise VocError("has no <bndbox>")
    coordinates = {tag: _parse_int(_child_text(bndbox, tag), tag) for tag in ("xmin", "ymin", "xmax", "ymax")}
    return VocBox(
        name=_child_text(element, "name"),
        pose=_child_text(element, "pose") or "Unspecified",
        truncated=_parse_flag(_child_text(element, "truncated"), "truncated"),
        difficult=_parse_flag(_child_text(element, "difficult"), "difficult"),
        **coordinates,
    )


def _parse_int(text: str, what: str) -> int:
    """Integer from text such as "278" or "278.0"; non-integral values are rounded half up."""
    if not text:
        raise VocError(f"<{what}> is missing or empty")
    try:
        value = float(text)
    except ValueError:
        raise VocError(f"<{what}> is not a number: {text!r}") from None
    if not math.isfinite(value):
        raise VocError(f"<{what}> is not a finite number: {text!r}")
    return int(math.floor(value + 0.5))


def _parse_flag(text: str, what: str) -> int:
    return _parse_int(text, what) if text else 0


# ----------------------------------------------------------------------------------------- writing


def voc_xml_text(annotation: VocAnnotation, folder: str) -> str:
    """LabelImg-compatible VOC XML for ``annotation`` (deterministic, two-space indented).

    ``filename`` and ``path`` carry the SOPInstanceUID: the slice is a DICOM instance, not an
    image file, and the UID is what links the boxes to it.
    """
    _check_annotation(annotation)
    uid = escape(annotation.sop_instance_uid)
    lines = [
        "<annotation>",
        f"{_INDENT}<folder>{escape(folder)}</folder>",
        f"{_INDENT}<filename>{uid}</filename>",
        f"{_INDENT}<path>{uid}</path>",
        f"{_INDENT}<source>",
        f"{_INDENT * 2}<database>Unknown</database>",
        f"{_INDENT}</source>",
        f"{_INDENT}<size>",
        f"{_INDENT * 2}<width>{annotation.width}</width>",
        f"{_INDENT * 2}<height>{annotation.height}</height>",
        f"{_INDENT * 2}<depth>{annotation.depth}</depth>",
        f"{_INDENT}</size>",
        f"{_INDENT}<segmented>0</segmented>",
    ]
    for box in annotation.boxes:
        lines.extend(_box_lines(box))
    lines.append("</annotation>")
    return "\n".join(lines) + "\n"


def _box_lines(box: VocBox) -> List[str]:
    i1, i2, i3 = _INDENT, _INDENT * 2, _INDENT * 3
    return [
        f"{i1}<object>",
        f"{i2}<name>{escape(box.name)}</name>",
        f"{i2}<pose>{escape(box.pose)}</pose>",
        f"{i2}<truncated>{int(box.truncated)}</truncated>",
        f"{i2}<difficult>{int(box.difficult)}</difficult>",
        f"{i2}<bndbox>",
        f"{i3}<xmin>{int(box.xmin)}</xmin>",
        f"{i3}<ymin>{int(box.ymin)}</ymin>",
        f"{i3}<xmax>{int(box.xmax)}</xmax>",
        f"{i3}<ymax>{int(box.ymax)}</ymax>",
        f"{i2}</bndbox>",
        f"{i1}</object>",
    ]


def annotation_xml_text(annotation: VocAnnotation, folder: str) -> str:
    """What a writer writes for ``annotation``: its original file's fields kept when it has one
    (:func:`keep_fields_text`), else a fresh LabelImg file (:func:`voc_xml_text`)."""
    if annotation.keep_fields_of is None:
        return voc_xml_text(annotation, folder)
    _check_annotation(annotation)
    return keep_fields_text(annotation)


def keep_fields_text(annotation: VocAnnotation) -> str:
    """``annotation`` written into its original file (``keep_fields_of``), changing only what changed.

    Kept as the file has them: what precedes the root element (the XML declaration, comments), comments
    inside it, the root element and its attributes (``verified="no"``), ``folder``,
    ``filename``, ``path``, ``source`` (mixed text included), ``size`` when it gives width and height,
    ``segmented``, any other element, element order, indentation, and each object whose box is unchanged,
    as written (its ``<Difficult>`` spelling, ``278.0`` coordinates). Rewritten: an object whose box the
    annotator changed gets the new name, pose, truncated, difficult and bndbox values in its own element
    (its spelling and extra children kept); an added box is a copy of the file's first object with its
    values (or LabelImg's layout when the file had none); a removed box's object is left out; a ``<size>``
    without width or height gets the CT slice's (a reader needs it). Objects the import skipped (an
    unknown class, say) are kept as they are: they are the annotator's data too.
    """
    original = annotation.keep_fields_of
    assert original is not None
    root = _parse_xml_text(original, f"{annotation.sop_instance_uid}.xml", keep_comments=True)
    children = list(root)
    objects = [child for child in children if child.tag == "object"]
    objects_rebuilt = _objects_for(annotation, objects)
    if objects:
        position = children.index(objects[0])
        last_tail = objects[-1].tail
        # Between two objects: as between the file's first two, else as before the first one.
        between = objects[0].tail if len(objects) > 1 else (children[position - 1].tail if position else root.text)
        for element in objects:
            root.remove(element)
    else:  # objects go last, indented as the file's other elements
        position = len(children)
        last_tail = (children[-1].tail if children else root.text) or "\n"
        between = (children[-2].tail if len(children) > 1 else root.text) or "\n" + _INDENT
        if children and objects_rebuilt:
            children[-1].tail = between
    for offset, element in enumerate(objects_rebuilt):
        element.tail = last_tail if offset == len(objects_rebuilt) - 1 else between
        root.insert(position + offset, element)
    if objects and not objects_rebuilt and position > 0:
        root[position - 1].tail = last_tail  # the element before the objects now closes the file
    _fill_missing_size(root, annotation)
    prolog = _PROLOG.match(original).group(0)  # type: ignore[union-attr]  # matches any text, if only ""
    text = ET.tostring(root, encoding="unicode")
    return prolog + text + ("\n" if original.endswith("\n") else "")


def objects_to_write(annotation: VocAnnotation) -> int:
    """How many <object>s :func:`keep_fields_text` writes: the boxes and the original's never-imported objects."""
    if annotation.keep_fields_of is None:
        return len(annotation.boxes)
    objects = _parse_xml_text(annotation.keep_fields_of, f"{annotation.sop_instance_uid}.xml").findall("object")
    never_imported = [n for n in range(1, len(objects) + 1) if n not in annotation.imported_objects]
    return len(annotation.boxes) + len(never_imported)


def is_unchanged(annotation: VocAnnotation) -> bool:
    """True when keeping the original file's fields writes exactly the boxes it holds: every imported
    object referred to once, in the file's order, by a box equal to it, and no other box."""
    if annotation.keep_fields_of is None:
        return False
    root = _parse_xml_text(annotation.keep_fields_of, f"{annotation.sop_instance_uid}.xml")
    objects = root.findall("object")
    referred = [box.source_object for box in annotation.boxes]
    if None in referred or sorted(referred) != sorted(annotation.imported_objects):  # type: ignore[type-var]
        return False
    for box in annotation.boxes:
        if not 1 <= box.source_object <= len(objects) or not _same_box(objects[box.source_object - 1], box, annotation):
            return False
    return True


def _objects_for(annotation: VocAnnotation, objects: List[ET.Element]) -> List[ET.Element]:
    """The <object> elements to write, in order: the boxes (each in its original element when it has one)
    and, in their places, the original objects that were never imported."""
    by_index = dict(enumerate(objects, start=1))
    difficult_tag = _difficult_spelling(objects)
    template = objects[0] if objects else None
    result: List[Tuple[float, ET.Element]] = []
    for index, element in by_index.items():
        if index not in annotation.imported_objects:
            result.append((index, element))  # skipped at import: kept as it is
    new_boxes = 0
    for box in annotation.boxes:
        element = by_index.get(box.source_object) if box.source_object in annotation.imported_objects else None
        if element is not None and _same_box(element, box, annotation):
            result.append((box.source_object, element))
            continue
        if element is not None:
            result.append((box.source_object, _set_box_values(copy.deepcopy(element), box, difficult_tag)))
            continue
        new_boxes += 1
        made = copy.deepcopy(template) if template is not None else _fresh_object_element()
        result.append((len(objects) + new_boxes, _set_box_values(made, box, difficult_tag)))
    return [element for _, element in sorted(result, key=lambda pair: pair[0])]


def _same_box(element: ET.Element, box: VocBox, annotation: VocAnnotation) -> bool:
    """True when ``box`` is what reading ``element`` gave: its values, cut to the image as an import cuts them
    (a box one pixel past the edge comes back as the file has it, not rewritten to the cut one)."""
    try:
        return _read_box(element).clipped(annotation.width, annotation.height)[0] == box
    except VocError:
        return False


def _difficult_spelling(objects: Sequence[ET.Element]) -> str:
    for element in objects:
        for child in element:
            if isinstance(child.tag, str) and child.tag.lower() == "difficult":
                return child.tag
    return "difficult"


def _fresh_object_element() -> ET.Element:
    """An <object> laid out as :func:`voc_xml_text` lays it out (values set by the caller)."""
    return ET.fromstring("\n".join(_box_lines(VocBox("A", 0, 0, 1, 1))).strip())


def _set_box_values(element: ET.Element, box: VocBox, difficult_tag: str) -> ET.Element:
    values = {"name": box.name, "pose": box.pose, "truncated": str(int(box.truncated))}
    values[difficult_tag] = str(int(box.difficult))
    for tag, text in values.items():
        _child_to_write(element, tag).text = text
    bndbox = _child_to_write(element, "bndbox")
    for tag in ("xmin", "ymin", "xmax", "ymax"):
        _child_to_write(bndbox, tag).text = str(int(getattr(box, tag)))
    return element


def _child_to_write(parent: ET.Element, tag: str) -> ET.Element:
    """``parent``'s child ``tag`` (any spelling of it), appended when missing, indented as its siblings."""
    child = _find_child(parent, tag)
    if child is not None:
        return child
    siblings = list(parent)
    child = ET.SubElement(parent, tag)
    if siblings:
        child.tail = siblings[-1].tail
        siblings[-1].tail = siblings[0].tail if len(siblings) > 1 else parent.text
    return child


def _fill_missing_size(root: ET.Element, annotation: VocAnnotation) -> None:
    size = _find_child(root, "size")
    if size is None:  # after <source> (or <path>), as LabelImg places it
        size = ET.fromstring(_SIZE_ELEMENT)
        anchors = [n for n, child in enumerate(root) if isinstance(child.tag, str) and child.tag in ("source", "path")]
        position = anchors[-1] + 1 if anchors else 0
        size.tail = root[position - 1].tail if position > 0 else root.text
        root.insert(position, size)
    for tag, value in (("width", annotation.width), ("height", annotation.height), ("depth", annotation.depth)):
        child = _child_to_write(size, tag)
        text = (child.text or "").strip()
        if not text or text in ("0", "0.0"):
            child.text = str(value)


def write_voc_annotation(annotation: VocAnnotation, out_dir: Path, overwrite: bool = False) -> Path:
    """Write ``out_dir/<SOPInstanceUID>.xml`` atomically; returns its path.

    Raises :class:`VocError` for an unusable annotation or an ``out_dir`` that is not a folder,
    and :class:`~PETCTLesionsLib.errors.OutputExistsError` when the file exists and ``overwrite``
    is False.
    """
    out_dir = Path(out_dir)
    _check_annotation(annotation)
    if out_dir.exists() and not out_dir.is_dir():
        raise VocError(f"{out_dir}: exists and is not a folder; cannot write {annotation.sop_instance_uid}.xml")
    target = out_dir / f"{annotation.sop_instance_uid}.xml"
    text = annotation_xml_text(annotation, annotation.folder or out_dir.name)
    try:
        return atomic_write_text(target, text, overwrite=overwrite)
    except OutputExistsError:
        raise
    except OSError as error:
        raise VocError(f"{target}: cannot write: {error.strerror or error}") from error


def write_voc_folder(annotations: Sequence[VocAnnotation], out_dir: Path, overwrite: bool = False) -> List[Path]:
    """Write one ``<SOPInstanceUID>.xml`` per annotation into ``out_dir``, all or nothing.

    Everything is checked before the first byte is written (each annotation, duplicate UIDs,
    existing files unless ``overwrite``); the files are then written to temporary names and
    renamed together, so a failure part-way leaves no new file behind.
    """
    out_dir = Path(out_dir)
    uids = [annotation.sop_instance_uid for annotation in annotations]
    for annotation in annotations:
        _check_annotation(annotation)
    duplicates = sorted({uid for uid in uids if uids.count(uid) > 1}) if len(set(uids)) != len(uids) else []
    if duplicates:
        raise VocError(f"two annotations for one slice: {', '.join(duplicates)}; merge their boxes first")
    if out_dir.exists() and not out_dir.is_dir():
        raise VocError(f"{out_dir}: exists and is not a folder")
    targets = [out_dir / f"{uid}.xml" for uid in uids]
    existing = [str(target) for target in targets if target.exists()]
    if existing and not overwrite:
        shown = ", ".join(existing[:3]) + (f" and {len(existing) - 3} more" if len(existing) > 3 else "")
        raise OutputExistsError(f"{shown}: already exist; refusing to overwrite them")
    try:
        with contextlib.ExitStack() as stack:
            for annotation, target in zip(annotations, targets):
                tmp = stack.enter_context(atomic_output(target, overwrite=overwrite))
                tmp.write_text(annotation_xml_text(annotation, annotation.folder or out_dir.name), encoding="utf-8")
    except OSError as error:
        if isinstance(error, OutputExistsError):
            raise
        raise VocError(f"{out_dir}: cannot write the VOC files: {error.strerror or error}") from error
    return targets


def _check_annotation(annotation: VocAnnotation) -> None:
    uid = annotation.sop_instance_uid
    if not is_dicom_uid(uid):
        raise VocError(f"SOPInstanceUID {uid!r} is not a DICOM UID (digits and dots, at most {MAX_UID_LENGTH})")
    if annotation.width is None or annotation.height is None:
        where = f" (read from {annotation.source_path})" if annotation.source_path else ""
        raise VocError(
            f"{uid}: image size unknown{where}; set width and height from the CT slice before writing "
            "(<size> is required in a VOC file)"
        )
    if annotation.width < 1 or annotation.height < 1 or annotation.depth < 1:
        size = f"{annotation.width}x{annotation.height}x{annotation.depth}"
        raise VocError(f"{uid}: image size must be positive ({size})")
    for index, box in enumerate(annotation.boxes, start=1):
        problem = box.problem(annotation.width, annotation.height, valid_classes=None)
        if problem:
            raise VocError(f"{uid}: object {index} ({box.name or 'no name'}) {problem}")


# ----------------------------------------------------------------------------------------- helpers


def tight_box(mask2d: np.ndarray, name: str) -> Optional[VocBox]:
    """Tight box of all true pixels of a slice mask indexed [row, column]; None when empty."""
    mask2d = np.asarray(mask2d)
    if mask2d.ndim != 2:
        raise ValueError(f"tight_box needs a 2D [row, column] mask, got shape {mask2d.shape}")
    rows = np.flatnonzero(mask2d.any(axis=1))
    if rows.size == 0:
        return None
    columns = np.flatnonzero(mask2d.any(axis=0))
    return VocBox.from_pixel_ranges(name, int(columns[0]), int(rows[0]), int(columns[-1]), int(rows[-1]))


def patient_folder_name(patient_id: str) -> str:
    """Annotation folder of a patient: "Lung_Dx-A0001" -> "A0001" (TCIA layout); others sanitized."""
    match = _LUNG_DX_PATIENT.match(patient_id.strip())
    if match:
        return match.group(1) + match.group(2)
    name = _UNSAFE_NAME_CHARS.sub("_", patient_id).strip()
    if not name or set(name) <= {"."}:
        raise VocError(f"Patient ID {patient_id!r} cannot be used as an annotation folder name")
    return name


def histology_class(patient_id: str) -> Optional[str]:
    """Histology letter of a Lung-PET-CT-Dx Patient ID ("Lung_Dx-G0012" -> "G"); None when unknown."""
    match = _LUNG_DX_PATIENT.match(patient_id.strip())
    if not match:
        return None
    letter = match.group(1)
    return letter if letter in VALID_CLASSES else None


# ----------------------------------------------------------------------------------------- lesions


def voc_annotations_from_boxes(
    boxes: Sequence[SliceBox],
    slice_uids: Sequence[str],
    width: int,
    height: int,
    class_name: str,
    classes: Optional[Dict[int, str]] = None,
) -> List[VocAnnotation]:
    """One VOC annotation per slice with boxes, named by the slice's SOPInstanceUID.

    ``classes`` gives a class per lesion number (default ``class_name`` for all).
    """
    by_slice: Dict[int, VocAnnotation] = {}
    for box in boxes:
        if not 0 <= box.k < len(slice_uids):
            raise IndexError(f"box on slice {box.k} but the series has {len(slice_uids)} slices")
        annotation = by_slice.get(box.k)
        if annotation is None:
            annotation = by_slice[box.k] = VocAnnotation(slice_uids[box.k], width=width, height=height)
        name = (classes or {}).get(box.lesion, class_name)
        annotation.boxes.append(VocBox.from_pixel_ranges(name, box.c0, box.r0, box.c1, box.r1))
    return [by_slice[k] for k in sorted(by_slice)]


def group_boxes_into_lesions(boxes: Sequence[Tuple[int, int, int, int, int]]) -> List[int]:
    """Lesion number (1-based) for each box ``(k, c0, r0, c1, r1)``: boxes on adjacent slices
    that overlap in plane belong to one lesion (VOC files carry no lesion identity)."""
    parent = list(range(len(boxes)))

    def root(index: int) -> int:
        while parent[index] != index:
            parent[index] = parent[parent[index]]
            index = parent[index]
        return index

    by_slice: Dict[int, List[int]] = {}
    for index, box in enumerate(boxes):
        by_slice.setdefault(box[0], []).append(index)
    for k, indices in by_slice.items():
        for index in indices:
            for other in by_slice.get(k + 1, []) + [o for o in indices if o > index]:
                if _overlap(boxes[index], boxes[other]):
                    parent[root(other)] = root(index)
    numbers: Dict[int, int] = {}
    result = []
    for index in sorted(range(len(boxes)), key=lambda n: (boxes[n][0], n)):
        numbers.setdefault(root(index), len(numbers) + 1)
    for index in range(len(boxes)):
        result.append(numbers[root(index)])
    return result


def _overlap(a: Tuple[int, int, int, int, int], b: Tuple[int, int, int, int, int]) -> bool:
    return a[1] <= b[3] and b[1] <= a[3] and a[2] <= b[4] and b[2] <= a[4]
