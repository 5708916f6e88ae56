"""PASCAL VOC boxes: the 11 real Lung-PET-CT-Dx annotations of patient A0001 (TCIA, CC BY 4.0)
read with their quirks, written back LabelImg-style and re-read unchanged; exact XML text; the
pixel-coordinate convention; and the refusals (hostile XML, bad boxes, bad names, bad targets)
that name the file and let a folder read go on with the good files."""

from __future__ import annotations

import os
import shutil
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from PETCTLesionsLib.errors import OutputExistsError
from PETCTLesionsLib.formats import voc
from PETCTLesionsLib.formats.voc import VocAnnotation, VocBox, VocError, group_boxes_into_lesions

_REPO_ANNOTATIONS = Path(__file__).resolve().parents[2] / "Testing" / "Data" / "Lung-PET-CT-Dx" / "Annotation" / "A0001"
_SHARED_ANNOTATIONS = Path("/work/shared/data/lung-pet-ct-dx/Annotation/A0001")
REAL_ANNOTATIONS = _REPO_ANNOTATIONS if _REPO_ANNOTATIONS.is_dir() else _SHARED_ANNOTATIONS

FIRST_UID = "1.3.6.1.4.1.14519.5.2.1.6655.2359.136943255924913899762603730997"
GOOD_UID = "1.2.826.0.1.3680043.8.498.12345"

# The expected boxes of all 11 real files (read off the files): uid suffix -> (xmin, ymin, xmax, ymax).
REAL_BOXES = {
    "136943255924913899762603730997": (278, 308, 360, 394),
    "155870813347987660555133803380": (290, 305, 338, 378),
    "184131899543495374569818432657": (301, 329, 351, 372),
    "185555685346057091761687385642": (298, 298, 335, 374),
    "187586942311847648079258238193": (287, 300, 342, 379),
    "216515627058008697217695696166": (288, 313, 351, 380),
}


def _voc_document(objects: str, width: int = 512, height: int = 512) -> str:
    return (
        '<annotation verified="no">\n  <folder>Unknow</folder>\n  <filename>Unknow</filename>\n'
        "  <path>Unknow</path>\n  <source>Unknow<database>Unknown</database>\n  </source>\n"
        f"  <size>\n    <width>{width}</width>\n    <height>{height}</height>\n    <depth>1</depth>\n  </size>\n"
        f"  <segmented>0</segmented>\n{objects}</annotation>"
    )


def _object(name: str, xmin, ymin, xmax, ymax, difficult_tag: str = "Difficult") -> str:
    return (
        f"  <object>\n    <name>{name}</name>\n    <pose>Unspecified</pose>\n    <truncated>0</truncated>\n"
        f"    <{difficult_tag}>0</{difficult_tag}>\n    <bndbox>\n"
        f"      <xmin>{xmin}</xmin>\n      <ymin>{ymin}</ymin>\n"
        f"      <xmax>{xmax}</xmax>\n      <ymax>{ymax}</ymax>\n    </bndbox>\n  </object>\n"
    )


def _write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path


# ----------------------------------------------------------------------------------------- real files


def test_all_real_annotations_parse_with_their_quirks():
    paths = sorted(REAL_ANNOTATIONS.glob("*.xml"))
    assert len(paths) == 11
    for path in paths:
        annotation = voc.parse_voc_xml(path)
        assert annotation.sop_instance_uid == path.name[: -len(".xml")]
        assert (annotation.width, annotation.height, annotation.depth) == (512, 512, 1)
        assert [box.name for box in annotation.boxes] == ["A"]
        assert annotation.folder == "Unknow"
        assert annotation.source_path == path
        box = annotation.boxes[0]
        suffix = annotation.sop_instance_uid.rsplit(".", 1)[1]
        if suffix in REAL_BOXES:
            assert (box.xmin, box.ymin, box.xmax, box.ymax) == REAL_BOXES[suffix]

    first = voc.parse_voc_xml(REAL_ANNOTATIONS / f"{FIRST_UID}.xml")
    assert first.boxes == [VocBox("A", 278, 308, 360, 394, pose="Unspecified", truncated=0, difficult=0)]


def test_real_folder_reads_without_problems():
    annotations, problems = voc.read_voc_folder(REAL_ANNOTATIONS)
    assert problems == []
    assert len(annotations) == 11
    assert [a.sop_instance_uid for a in annotations] == sorted(p.stem for p in REAL_ANNOTATIONS.glob("*.xml"))


def test_real_annotations_survive_write_and_reread(tmp_path):
    originals, _ = voc.read_voc_folder(REAL_ANNOTATIONS)
    out_dir = tmp_path / "Annotation" / "A0001"
    written = [voc.write_voc_annotation(annotation, out_dir) for annotation in originals]

    assert sorted(p.name for p in written) == sorted(p.name for p in REAL_ANNOTATIONS.glob("*.xml"))
    assert sorted(p.name for p in out_dir.iterdir()) == sorted(p.name for p in written)  # no temporary files left
    rereads, problems = voc.read_voc_folder(out_dir)
    assert problems == []
    for original, reread in zip(originals, rereads):
        assert reread.sop_instance_uid == original.sop_instance_uid
        assert (reread.width, reread.height, reread.depth) == (original.width, original.height, original.depth)
        assert reread.boxes == original.boxes
    # What is written is exactly what voc_xml_text renders (deterministic).
    assert written[0].read_text(encoding="utf-8") == voc.voc_xml_text(originals[0], originals[0].folder)


# ----------------------------------------------------------------------------------------- writing


def test_exact_xml_text():
    annotation = VocAnnotation(
        sop_instance_uid=GOOD_UID,
        width=512,
        height=400,
        depth=1,
        boxes=[VocBox("A", 10, 20, 30, 40), VocBox("G", 1, 1, 512, 400, truncated=1, difficult=1)],
    )
    expected = (
        "<annotation>\n"
        "  <folder>A&amp;0001</folder>\n"
        f"  <filename>{GOOD_UID}</filename>\n"
        f"  <path>{GOOD_UID}</path>\n"
        "  <source>\n"
        "    <database>Unknown</database>\n"
        "  </source>\n"
        "  <size>\n"
        "    <width>512</width>\n"
        "    <height>400</height>\n"
        "    <depth>1</depth>\n"
        "  </size>\n"
        "  <segmented>0</segmented>\n"
        "  <object>\n"
        "    <name>A</name>\n"
        "    <pose>Unspecified</pose>\n"
        "    <truncated>0</truncated>\n"
        "    <difficult>0</difficult>\n"
        "    <bndbox>\n"
        "      <xmin>10</xmin>\n"
        "      <ymin>20</ymin>\n"
        "      <xmax>30</xmax>\n"
        "      <ymax>40</ymax>\n"
        "    </bndbox>\n"
        "  </object>\n"
        "  <object>\n"
        "    <name>G</name>\n"
        "    <pose>Unspecified</pose>\n"
        "    <truncated>1</truncated>\n"
        "    <difficult>1</difficult>\n"
        "    <bndbox>\n"
        "      <xmin>1</xmin>\n"
        "      <ymin>1</ymin>\n"
        "      <xmax>512</xmax>\n"
        "      <ymax>400</ymax>\n"
        "    </bndbox>\n"
        "  </object>\n"
        "</annotation>\n"
    )
    assert voc.voc_xml_text(annotation, "A&0001") == expected


def test_writer_refuses_overwrite_and_writes_when_asked(tmp_path):
    first = VocAnnotation(GOOD_UID, 64, 64, boxes=[VocBox("B", 5, 6, 7, 8)], folder="B0002")
    path = voc.write_voc_annotation(first, tmp_path)
    assert path == tmp_path / f"{GOOD_UID}.xml"
    second = VocAnnotation(GOOD_UID, 64, 64, boxes=[VocBox("B", 1, 2, 3, 4)], folder="B0002")
    with pytest.raises(OutputExistsError):
        voc.write_voc_annotation(second, tmp_path)
    assert voc.parse_voc_xml(path).boxes == [VocBox("B", 5, 6, 7, 8)]
    voc.write_voc_annotation(second, tmp_path, overwrite=True)
    assert voc.parse_voc_xml(path).boxes == [VocBox("B", 1, 2, 3, 4)]
    assert [p.name for p in tmp_path.iterdir()] == [f"{GOOD_UID}.xml"]


@pytest.mark.parametrize("uid", ["../x", "a/b", "1.2/3", "..", "", "1.2.3 ", "1." + "2" * 70])
def test_writer_refuses_uid_that_is_not_a_uid(tmp_path, uid):
    out_dir = tmp_path / "out"
    annotation = VocAnnotation(uid, 64, 64, boxes=[VocBox("A", 1, 1, 2, 2)])
    with pytest.raises(VocError, match="is not a DICOM UID"):
        voc.write_voc_annotation(annotation, out_dir)
    assert sorted(p.name for p in tmp_path.rglob("*")) == []


def test_writer_refuses_unusable_boxes(tmp_path):
    outside = VocAnnotation(GOOD_UID, 64, 64, boxes=[VocBox("A", 1, 1, 65, 10)])
    with pytest.raises(VocError, match=r"object 1 \(A\) lies outside the 64x64 image"):
        voc.write_voc_annotation(outside, tmp_path)
    inverted = VocAnnotation(GOOD_UID, 64, 64, boxes=[VocBox("A", 1, 1, 2, 2), VocBox("A", 9, 1, 8, 2)])
    with pytest.raises(VocError, match=r"object 2 \(A\) is inverted"):
        voc.write_voc_annotation(inverted, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_writer_into_a_file_posing_as_folder_fails_and_leaves_nothing(tmp_path):
    blocker = tmp_path / "A0001"
    blocker.write_text("not a folder")
    annotation = VocAnnotation(GOOD_UID, 64, 64, boxes=[VocBox("A", 1, 1, 2, 2)])
    with pytest.raises(VocError, match=r"A0001: exists and is not a folder"):
        voc.write_voc_annotation(annotation, blocker)
    with pytest.raises(VocError, match="cannot write"):
        voc.write_voc_annotation(annotation, blocker / "sub")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["A0001"]
    assert blocker.read_text() == "not a folder"


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root ignores folder permissions")
def test_writer_into_read_only_folder_fails_clearly(tmp_path):
    out_dir = tmp_path / "locked"
    out_dir.mkdir()
    out_dir.chmod(0o500)
    annotation = VocAnnotation(GOOD_UID, 64, 64, boxes=[VocBox("A", 1, 1, 2, 2)])
    try:
        with pytest.raises(VocError, match=r"locked.*cannot write"):
            voc.write_voc_annotation(annotation, out_dir)
        assert list(out_dir.iterdir()) == []
    finally:
        out_dir.chmod(0o700)


# ----------------------------------------------------------------------------------------- coordinates


def test_pixel_ranges_round_trip_and_convention():
    """LabelImg's convention: edges, so array[ymin:ymax, xmin:xmax] are the pixels the box covers."""
    box = VocBox.from_pixel_ranges("E", 0, 5, 511, 9)
    assert (box.xmin, box.ymin, box.xmax, box.ymax) == (0, 5, 512, 10)
    assert box.to_pixel_ranges() == (0, 5, 511, 9)
    real = voc.parse_voc_xml(REAL_ANNOTATIONS / f"{FIRST_UID}.xml").boxes[0]
    assert (real.xmin, real.ymin, real.xmax, real.ymax) == (278, 308, 360, 394)  # as in the file
    assert real.to_pixel_ranges() == (278, 308, 359, 393)
    covered = np.zeros((512, 512), bool)
    covered[real.ymin : real.ymax, real.xmin : real.xmax] = True
    assert voc.tight_box(covered, "A") == real
    assert VocBox.from_pixel_ranges("A", *real.to_pixel_ranges()) == real
    # xmin == xmax (LabelImg never writes it) covers no pixel: refused, not read as one column.
    assert (
        VocBox("A", 40, 7, 40, 9).problem(512, 512)
        == "has zero width (xmin 40, xmax 40, ymin 7, ymax 9): it covers no pixel"
    )


def test_tight_box_of_a_hand_made_mask():
    mask = np.zeros((12, 10), dtype=bool)  # [row, column]
    mask[2, 3] = True
    mask[5, 7] = True
    mask[4, 4:6] = True
    box = voc.tight_box(mask, "G")
    assert box == VocBox("G", xmin=3, ymin=2, xmax=8, ymax=6)
    assert box.to_pixel_ranges() == (3, 2, 7, 5)
    assert voc.tight_box(np.zeros((12, 10), dtype=bool), "G") is None
    single = np.zeros((12, 10), dtype=np.uint8)
    single[11, 9] = 1
    assert voc.tight_box(single, "A") == VocBox("A", 9, 11, 10, 12)
    corner = np.zeros((12, 10), dtype=np.uint8)
    corner[0, 0] = 1  # at the image edge: xmin 0 (LabelImg would raise it to 1 and lose the pixel)
    assert voc.tight_box(corner, "A") == VocBox("A", 0, 0, 1, 1)


def test_patient_folder_and_histology():
    assert voc.patient_folder_name("Lung_Dx-A0001") == "A0001"
    assert voc.patient_folder_name("Lung_Dx-G0012") == "G0012"
    assert voc.patient_folder_name("PETCT_0a1b2c") == "PETCT_0a1b2c"
    assert voc.patient_folder_name("odd/id: x") == "odd_id_ x"
    with pytest.raises(VocError):
        voc.patient_folder_name("..")
    assert voc.histology_class("Lung_Dx-A0001") == "A"
    assert voc.histology_class("Lung_Dx-G0012") == "G"
    assert voc.histology_class("Lung_Dx-B0003") == "B"
    assert voc.histology_class("Lung_Dx-X0001") is None
    assert voc.histology_class("PETCT_0a1b2c") is None


# ----------------------------------------------------------------------------------------- lenient parsing


def test_parser_accepts_float_coordinates_whitespace_and_either_difficult(tmp_path):
    objects = _object("A", " 278.0 ", "308.4", "\n360.5\n", "394", difficult_tag="difficult")
    objects = objects.replace("<difficult>0</difficult>", "<difficult> 1 </difficult>")
    path = _write(tmp_path, f"{GOOD_UID}.xml", '<?xml version="1.0" encoding="utf-8"?>\n' + _voc_document(objects))
    annotation = voc.parse_voc_xml(path)
    assert annotation.boxes == [VocBox("A", 278, 308, 361, 394, difficult=1)]


# ----------------------------------------------------------------------------------------- refusals


BILLION_LAUGHS = (
    '<?xml version="1.0"?>\n<!DOCTYPE lolz [\n <!ENTITY lol "lol">\n'
    + "".join(f' <!ENTITY lol{i} "{("&lol" + (str(i - 1) if i > 1 else "") + ";") * 10}">\n' for i in range(1, 10))
    + "]>\n"
    + _voc_document(_object("&lol9;", 1, 1, 2, 2))
)
EXTERNAL_ENTITY = (
    '<?xml version="1.0"?>\n<!DOCTYPE annotation [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>\n'
    + _voc_document(_object("&xxe;", 1, 1, 2, 2))
)


def test_billion_laughs_is_refused_before_expansion(tmp_path):
    path = _write(tmp_path, f"{GOOD_UID}.xml", BILLION_LAUGHS)
    tracemalloc.start()
    started = time.perf_counter()
    try:
        with pytest.raises(VocError, match="DOCTYPE or ENTITY declaration; refused") as raised:
            voc.parse_voc_xml(path)
        elapsed = time.perf_counter() - started
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert str(path) in str(raised.value)
    assert elapsed < 1.0
    assert peak < 5_000_000  # 10^9 "lol"s would need gigabytes


def test_external_entity_is_refused(tmp_path):
    path = _write(tmp_path, f"{GOOD_UID}.xml", EXTERNAL_ENTITY)
    with pytest.raises(VocError, match="DOCTYPE or ENTITY") as raised:
        voc.parse_voc_xml(path)
    assert str(path) in str(raised.value)


def test_doctype_hidden_in_utf16_is_refused(tmp_path):
    path = tmp_path / f"{GOOD_UID}.xml"
    path.write_bytes(EXTERNAL_ENTITY.replace('version="1.0"', 'version="1.0" encoding="UTF-16"').encode("utf-16"))
    with pytest.raises(VocError, match="not UTF-8 text"):
        voc.parse_voc_xml(path)


def test_oversized_file_is_refused(tmp_path):
    padding = "<!-- " + "x" * voc.MAX_XML_BYTES + " -->"
    path = _write(tmp_path, f"{GOOD_UID}.xml", _voc_document(_object("A", 1, 1, 2, 2)) + padding)
    with pytest.raises(VocError, match=f"larger than {voc.MAX_XML_BYTES} bytes"):
        voc.parse_voc_xml(path)


def test_strict_parse_refuses_bad_boxes(tmp_path):
    path = _write(tmp_path, f"{GOOD_UID}.xml", _voc_document(_object("X", 1, 1, 2, 2)))
    with pytest.raises(VocError, match=r"object 1 \(X\) has unknown class 'X' \(expected one of A, B, E, G\)"):
        voc.parse_voc_xml(path)
    assert voc.parse_voc_xml(path, valid_classes=None).boxes == [VocBox("X", 1, 1, 2, 2)]


def test_folder_read_reports_every_bad_file_and_keeps_the_good_ones(tmp_path):
    folder = tmp_path / "A0001"
    folder.mkdir()
    for path in sorted(REAL_ANNOTATIONS.glob("*.xml"))[:3]:
        shutil.copy(path, folder / path.name)
    bad = {
        "malformed": _write(folder, "1.2.3.1.xml", _voc_document(_object("A", 1, 1, 2, 2)).replace("</size>", "")),
        "billion": _write(folder, "1.2.3.2.xml", BILLION_LAUGHS),
        "external": _write(folder, "1.2.3.3.xml", EXTERNAL_ENTITY),
        "unknown class": _write(folder, "1.2.3.4.xml", _voc_document(_object("X", 10, 10, 20, 20))),
        "outside": _write(folder, "1.2.3.5.xml", _voc_document(_object("A", 512, 10, 530, 20))),
        "negative": _write(folder, "1.2.3.6.xml", _voc_document(_object("A", -9, 10, -1, 20))),
        "inverted": _write(folder, "1.2.3.7.xml", _voc_document(_object("B", 30, 10, 20, 20))),
        "no name": _write(folder, "1.2.3.8.xml", _voc_document(_object("", 10, 10, 20, 20))),
        "not a number": _write(folder, "1.2.3.9.xml", _voc_document(_object("A", "ten", 10, 20, 20))),
        "not a uid": _write(folder, "slice 12.xml", _voc_document(_object("A", 10, 10, 20, 20))),
        "path-like uid": _write(folder, "1.2..3.xml", _voc_document(_object("A", 10, 10, 20, 20))),
        "no bndbox": _write(folder, "1.2.3.10.xml", "<annotation><object/></annotation>"),
        "wrong root": _write(folder, "1.2.3.11.xml", "<labels/>"),
    }
    mixed = _write(folder, "1.2.3.12.xml", _voc_document(_object("E", 10, 10, 20, 20) + _object("Q", 10, 10, 20, 20)))
    # One pixel past the right edge, the other past the top: still the reader's lesion, cut to the image.
    edge = _write(folder, "1.2.3.13.xml", _voc_document(_object("A", 500, 10, 513, 20) + _object("G", 3, -1, 9, 6)))
    (folder / "notes.txt").write_text("ignored: not XML")

    annotations, problems = voc.read_voc_folder(folder)

    good_uids = sorted(p.stem for p in REAL_ANNOTATIONS.glob("*.xml"))[:3] + ["1.2.3.12", "1.2.3.13"]
    assert sorted(a.sop_instance_uid for a in annotations) == sorted(good_uids)
    cut = next(a for a in annotations if a.sop_instance_uid == "1.2.3.13")
    assert cut.boxes == [VocBox("A", 500, 10, 512, 20, truncated=1), VocBox("G", 3, 0, 9, 6, truncated=1)]
    assert cut.notes == [
        f"{edge}: object 1 (A) reaches beyond the 512x512 image (xmin 500, ymin 10, xmax 513, ymax 20); "
        "cut to xmin 500, ymin 10, xmax 512, ymax 20",
        f"{edge}: object 2 (G) reaches beyond the 512x512 image (xmin 3, ymin -1, xmax 9, ymax 6); "
        "cut to xmin 3, ymin 0, xmax 9, ymax 6",
    ]
    kept_mixed = next(a for a in annotations if a.sop_instance_uid == "1.2.3.12")
    assert kept_mixed.boxes == [VocBox("E", 10, 10, 20, 20)]
    expected_fragments = {
        "malformed": "malformed XML",
        "billion": "DOCTYPE or ENTITY declaration",
        "external": "DOCTYPE or ENTITY declaration",
        "unknown class": "object 1 (X) has unknown class 'X'",
        "outside": "object 1 (A) lies outside the 512x512 image",
        "negative": "object 1 (A) lies outside the 512x512 image",
        "inverted": "object 1 (B) is inverted",
        "no name": "object 1 (no name) has no class name",
        "not a number": "<xmin> is not a number: 'ten'",
        "not a uid": "file name is not <SOPInstanceUID>.xml",
        "path-like uid": "file name is not <SOPInstanceUID>.xml",
        "no bndbox": "object 1: has no <bndbox>",
        "wrong root": "root element is <labels>, expected <annotation>",
    }
    for key, path in bad.items():
        mentions = [p for p in problems if p.startswith(f"{path}:")]
        assert any(expected_fragments[key] in p for p in mentions), (key, mentions)
    assert f"{mixed}: object 2 (Q) has unknown class 'Q' (expected one of A, B, E, G); skipped" in problems
    # One message per bad file, plus a "no usable box left" for each file whose every box was bad,
    # plus the skipped box of the mixed file.
    box_only_files = ["unknown class", "outside", "negative", "inverted", "no name", "not a number", "no bndbox"]
    assert len(problems) == len(bad) + len(box_only_files) + 1
    for key in box_only_files:
        assert f"{bad[key]}: no usable box left; file skipped" in problems


def test_folder_read_of_missing_folder_is_an_error(tmp_path):
    with pytest.raises(VocError, match="not a folder"):
        voc.read_voc_folder(tmp_path / "missing")


# ----------------------------------------------------------------------------------------- unknown size


def _real_without_size(tmp_path: Path, size_xml: str = "") -> Path:
    """The first real A0001 file with its <size> element replaced by ``size_xml``."""
    text = (REAL_ANNOTATIONS / f"{FIRST_UID}.xml").read_text(encoding="utf-8")
    start, end = text.index("<size>"), text.index("</size>") + len("</size>")
    assert "<width>512</width>" in text[start:end]
    folder = tmp_path / "A0001"
    folder.mkdir(exist_ok=True)
    return _write(folder, f"{FIRST_UID}.xml", text[:start] + size_xml + text[end:])


def test_real_file_without_size_keeps_its_boxes_and_notes_the_unknown_size(tmp_path):
    path = _real_without_size(tmp_path)
    assert "<size>" not in path.read_text(encoding="utf-8")
    annotation, problems = voc.read_voc_file(path)
    assert problems == []
    assert (annotation.width, annotation.height, annotation.depth) == (None, None, 1)
    assert annotation.notes == [f"{path}: no <size>; image size taken from the CT slice, boxes kept"]
    original = voc.parse_voc_xml(REAL_ANNOTATIONS / f"{FIRST_UID}.xml")
    assert annotation.boxes == original.boxes == [VocBox("A", 278, 308, 360, 394)]
    # A folder read keeps the file (a note is not a problem).
    annotations, folder_problems = voc.read_voc_folder(path.parent)
    assert [a.sop_instance_uid for a in annotations] == [FIRST_UID] and folder_problems == []
    assert annotations[0].boxes == original.boxes and annotations[0].notes == annotation.notes


def test_size_zero_is_unknown_and_boxes_are_checked_only_where_the_size_is_known(tmp_path):
    path = _real_without_size(tmp_path, "<size><width>0</width><height>0</height><depth>1</depth></size>")
    annotation = voc.parse_voc_xml(path)
    assert (annotation.width, annotation.height) == (None, None)
    assert annotation.notes == [
        f"{path}: <size> gives no width and height (missing or 0); image size taken from the CT slice, boxes kept"
    ]
    assert annotation.boxes == [VocBox("A", 278, 308, 360, 394)]
    only_height = _real_without_size(tmp_path, "<size><width>512</width><height>0</height></size>")
    annotation = voc.parse_voc_xml(only_height)
    assert (annotation.width, annotation.height, annotation.depth) == (512, None, 1)
    assert "gives no height (missing or 0)" in annotation.notes[0]
    # Without a size only the lower bound can be checked; the upper one is the slice's business.
    beyond = VocBox("A", 500, 10, 600, 20)
    assert beyond.problem(None, None) is None
    assert beyond.problem(512, 512) == (
        "lies outside the 512x512 image (xmin 500, ymin 10, xmax 600, ymax 20; valid 0..512 x 0..512)"
    )
    assert VocBox("A", 0, 10, 5, 20).problem(None, None) is None  # column 0 is on the image
    assert VocBox("A", -1, 10, 5, 20).problem(None, None) == (
        "lies outside the ?x? image (xmin -1, ymin 10, xmax 5, ymax 20; valid 0..? x 0..?)"
    )
    negative = _real_without_size(tmp_path, "<size><width>-512</width><height>512</height></size>")
    with pytest.raises(VocError, match=r"<size> must not be negative \(width -512\)") as raised:
        voc.parse_voc_xml(negative)
    assert str(negative) in str(raised.value)


def test_annotation_of_unknown_size_is_written_only_once_the_slice_size_is_set(tmp_path):
    annotation = voc.parse_voc_xml(_real_without_size(tmp_path))
    out_dir = tmp_path / "out"
    with pytest.raises(VocError) as raised:
        voc.write_voc_annotation(annotation, out_dir)
    assert str(raised.value) == (
        f"{FIRST_UID}: image size unknown (read from {annotation.source_path}); set width and height from the "
        "CT slice before writing (<size> is required in a VOC file)"
    )
    assert not out_dir.exists()
    annotation.width, annotation.height = 512, 512  # from the CT slice
    written = voc.write_voc_annotation(annotation, out_dir)
    reread = voc.parse_voc_xml(written)
    assert (reread.width, reread.height, reread.depth, reread.notes) == (512, 512, 1, [])
    assert reread.boxes == [VocBox("A", 278, 308, 360, 394)]


def test_boxes_on_adjacent_slices_that_overlap_form_one_lesion():
    boxes = [
        (3, 10, 10, 20, 20),
        (4, 15, 15, 25, 25),  # overlaps the first, next slice
        (5, 100, 100, 110, 110),  # elsewhere
        (7, 16, 16, 18, 18),  # same place but a slice gap: another lesion
    ]
    assert group_boxes_into_lesions(boxes) == [1, 1, 2, 3]


# ----------------------------------------------------------------------------------------- keeping a file's fields


def _kept(path: Path, boxes, imported) -> VocAnnotation:
    """The file at ``path`` read, given ``boxes``, to be written keeping its fields (as an export does)."""
    annotation, _ = voc.read_voc_file(path)
    annotation.boxes = list(boxes)
    annotation.keep_fields_of = annotation.source_xml
    annotation.imported_objects = frozenset(imported)
    annotation.width = annotation.width or 512
    annotation.height = annotation.height or 512
    return annotation


def test_a_file_written_keeping_its_fields_changes_only_the_boxes_the_annotator_changed(tmp_path):
    text = _voc_document(_object("A", "278.0", 308, 360, 394) + _object("Z", 1, 1, 9, 9) + _object("A", 20, 30, 40, 50))
    path = _write(tmp_path, f"{GOOD_UID}.xml", text)
    annotation, problems = voc.read_voc_file(path)
    assert [box.source_object for box in annotation.boxes] == [1, 3] and len(problems) == 1  # class Z skipped

    same = _kept(path, annotation.boxes, {1, 3})
    assert voc.is_unchanged(same)
    assert voc.keep_fields_text(same) == text  # "278.0", <Difficult>, verified="no", the skipped Z object: all kept

    moved = VocBox("A", 23, 30, 43, 50, source_object=3)
    added = VocBox("B", 10, 20, 30, 40)
    changed = _kept(path, [annotation.boxes[0], moved, added], {1, 3})
    assert not voc.is_unchanged(changed)
    assert voc.keep_fields_text(changed) == _voc_document(
        _object("A", "278.0", 308, 360, 394)
        + _object("Z", 1, 1, 9, 9)
        + _object("A", 23, 30, 43, 50)
        + _object("B", 10, 20, 30, 40)
    )
    # The annotator removed both imported boxes: only the object the import skipped is left.
    assert voc.keep_fields_text(_kept(path, [], {1, 3})) == _voc_document(_object("Z", 1, 1, 9, 9))


def test_a_file_without_size_is_written_with_the_slice_size_and_its_other_fields(tmp_path):
    text = _voc_document(_object("A", 1, 2, 3, 4, "difficult"))
    no_size = text.replace("<width>512</width>", "<width>0</width>").replace("    <height>512</height>\n", "")
    path = _write(tmp_path, f"{GOOD_UID}.xml", no_size)
    annotation, _ = voc.read_voc_file(path)
    assert (annotation.width, annotation.height) == (None, None)

    written = voc.write_voc_annotation(_kept(path, annotation.boxes, {1}), tmp_path / "out")

    size = "<size>\n    <width>512</width>\n    <depth>1</depth>\n    <height>512</height>\n  </size>"
    assert written.read_text(encoding="utf-8") == no_size.replace(
        "<size>\n    <width>0</width>\n    <depth>1</depth>\n  </size>", size
    )
    assert voc.parse_voc_xml(written).boxes == annotation.boxes


def test_a_changed_file_keeps_its_declaration_comments_and_tab_indentation(tmp_path):
    # LabelImg indents with tabs; files may start with an XML declaration and carry comments. A changed box
    # changes its values, and nothing else of the file.
    text = (
        _voc_document(_object("A", 20, 30, 40, 50))
        .replace("  ", "\t")
        .replace("<segmented>", "<!-- checked by reader 2 --><segmented>")
    )
    text = '<?xml version="1.0" encoding="utf-8"?>\n<!-- LabelImg -->\n' + text
    path = _write(tmp_path, f"{GOOD_UID}.xml", text)
    annotation, _ = voc.read_voc_file(path)

    moved = VocBox("A", 23, 30, 43, 50, source_object=1)
    written = voc.keep_fields_text(_kept(path, [moved], {1}))

    assert written == text.replace("<xmin>20</xmin>", "<xmin>23</xmin>").replace("<xmax>40</xmax>", "<xmax>43</xmax>")
    assert voc.keep_fields_text(_kept(path, annotation.boxes, {1})) == text
