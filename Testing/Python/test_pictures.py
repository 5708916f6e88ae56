"""The pictures `predict` writes (issue 19), read back as pixels: a picture of every lesion named by
the CT slice's InstanceNumber, text where a reader looks for it, the lung panel's outline and box,
a saturated PET centre in the colour map's top colour, and every lesion numbered on the MIP.

The study is generated (a small phantom's anatomy written as DICOM, with lesions placed where each
case needs them: a hot one above the SUV window, one at the top edge of the field of view, one
outside the CT, a one-voxel one); the detection is built from those lesions, so no model runs."""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from pathlib import Path
from typing import List

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from conftest import LUNG_DX_CT_SERIES
from studies import study_info, write_small_study

from PETCTLesionsLib import detection, preview
from PETCTLesionsLib.geometry import Grid
from PETCTLesionsLib.measurements import measure_lesions
from PETCTLesionsLib.predict import render_pictures
from PETCTLesionsLib.study import LoadedStudy, load_study
from PETCTLesionsLib.synthetic.dicom_writer import PatientInfo, PetAcquisition, SeriesWriteResult
from PETCTLesionsLib.synthetic.phantom import PhantomConfig, make_phantom

PATIENT = PatientInfo("PIC-0001", "Pictures^Patient", "F", 61, 72.0)
STUDY = study_info("pictures", PATIENT, datetime.datetime(2021, 3, 4, 10, 5), "PET/CT pictures")
ACQUISITION = PetAcquisition(3.5e8, datetime.datetime(2021, 3, 4, 9, 0, 0), datetime.datetime(2021, 3, 4, 10, 0, 0))
HOT, TOP_EDGE, OUTSIDE_CT, TINY = 1, 2, 3, 4  # lesion numbers, largest first as the detection numbers them
HOT_SUV = 25.0  # above the SUV window (0-10): its centre saturates
OUTLINE = tuple(preview.to_uint8(np.array(preview.LESION_OUTLINE_RGB)))
BOX = tuple(preview.to_uint8(np.array(preview.BOX_RGB)))


@dataclass
class PictureStudy:
    loaded: LoadedStudy
    ct: SeriesWriteResult
    found: detection.Detection
    lesion_map_ct: np.ndarray
    boxes: list
    hot_centre_lps: np.ndarray


def _place_lesions(pet_suv: np.ndarray) -> np.ndarray:
    """The lesions on the PET grid ([k, j, i]); their uptake written into ``pet_suv``."""
    lesion_map = np.zeros(pet_suv.shape, np.uint16)
    k, j, i = np.indices(pet_suv.shape)
    hot = (k - 30) ** 2 + (j - 45) ** 2 + (i - 30) ** 2 <= 9  # 12 mL: a sphere of radius 3 voxels
    lesion_map[hot] = HOT
    top = pet_suv.shape[0]
    lesion_map[top - 2 : top, 46:48, 52:54] = TOP_EDGE  # the last two slices: the top of the MIP
    lesion_map[20:22, 46:48, 0:2] = OUTSIDE_CT  # the PET's first columns: outside the CT's narrower field
    lesion_map[26, 45, 62] = TINY  # one PET voxel, 0.1 mL
    for label, suv in ((HOT, HOT_SUV), (TOP_EDGE, 8.0), (OUTSIDE_CT, 6.0), (TINY, 5.0)):
        pet_suv[lesion_map == label] = suv
    return lesion_map


@pytest.fixture(scope="module")
def picture_study(tmp_path_factory) -> PictureStudy:
    root = tmp_path_factory.mktemp("pictures")
    phantom = make_phantom(PhantomConfig(seed=5, size="small", body="torso", n_lesions=0))
    pet_suv = phantom.pet_suv.copy()
    lesion_map = _place_lesions(pet_suv)
    pet_grid = phantom.pet_grid
    hot_centre_lps = pet_grid.index_to_lps([30.0, 45.0, 30.0])
    ct_hu = phantom.ct_hu.copy()
    ct_lps = phantom.ct_grid.index_to_lps(np.argwhere(np.ones(phantom.ct_grid.shape, bool))[:, ::-1].astype(float))
    near_hot = np.linalg.norm(ct_lps - hot_centre_lps, axis=1).reshape(phantom.ct_grid.shape) <= 14.0
    ct_hu[near_hot] = 30  # soft tissue where the PET lesion is
    written = write_small_study(
        root / "dicom", STUDY, ACQUISITION, phantom.ct_grid, pet_grid, hu=ct_hu, suv=pet_suv, folders=("ct", "pet")
    )

    loaded = load_study([written.root])
    pet_grid = Grid.from_sitk(loaded.pet_suv)
    probability = (lesion_map > 0).astype(np.float32)
    pet = sitk.GetArrayFromImage(loaded.pet_suv)
    lesions = measure_lesions(lesion_map, int(lesion_map.max()), pet, pet_grid, probability)
    found = detection.Detection(pet_grid, probability, lesion_map, lesions, 0.5, 0.0)
    lesion_map_ct, boxes = detection.lesions_on_ct(lesion_map, pet_grid, Grid.from_sitk(loaded.ct), probability, 0.5)
    return PictureStudy(loaded, written.ct, found, lesion_map_ct, boxes, hot_centre_lps)


@pytest.fixture(scope="module")
def written(picture_study, tmp_path_factory):
    folder = tmp_path_factory.mktemp("out") / "pictures"
    notes: List[str] = []
    s = picture_study
    paths = render_pictures(s.loaded, s.found, s.lesion_map_ct, s.boxes, folder, notes=notes)
    return {path.name: path for path in paths}, notes


def _read(path: Path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def _largest_slice(lesion_map_ct: np.ndarray, label: int) -> int:
    return int(np.argmax([(ct_slice == label).sum() for ct_slice in lesion_map_ct]))


def _instance_number(ct: SeriesWriteResult, k: int) -> int:
    return int(pydicom.dcmread(ct.paths[k], stop_before_pixels=True).InstanceNumber)


def test_every_lesion_the_ct_reaches_gets_a_picture_named_by_its_instance_number(picture_study, written):
    """The tiny lesion too; the name is the InstanceNumber of the slice of the lesion's largest
    cross-section (the generated CT numbers its slices head first, so it is not the index k)."""
    names, notes = written
    s = picture_study
    expected = set()
    for label in (HOT, TOP_EDGE, TINY):
        k = _largest_slice(s.lesion_map_ct, label)
        number = _instance_number(s.ct, k)
        assert number == len(s.ct.paths) - k  # head first: image 1 is the top slice
        expected.add(f"axial_lesion{label}_image{number}.png")
    assert set(names) == expected | {"pet_mip_coronal.png"}
    assert notes == [f"pictures: lesion {OUTSIDE_CT} lies outside the CT's field of view: shown on the PET MIP only"]


def _panel_width(picture: np.ndarray) -> int:
    return picture.shape[1] // 2


def test_the_lung_panel_has_the_outline_and_the_box(picture_study, written):
    picture = _hot_picture(picture_study, written)
    lung = picture[:, _panel_width(picture) :]
    assert np.all(lung == OUTLINE, axis=-1).sum() > 20
    assert np.all(lung == BOX, axis=-1).sum() > 20


def _hot_picture(picture_study, written) -> np.ndarray:
    names, _ = written
    (name,) = [n for n in names if n.startswith(f"axial_lesion{HOT}_")]
    return _read(names[name])


def test_a_saturated_pet_centre_is_the_colour_maps_top_colour(picture_study, written):
    """SUV 25 against a 0-10 window: the centre is the map's top colour, no CT texture through it."""
    picture = _hot_picture(picture_study, written)
    ct_grid = Grid.from_sitk(picture_study.loaded.ct)
    i, j, _ = np.round(ct_grid.lps_to_index(picture_study.hot_centre_lps)).astype(int)
    scale = _panel_width(picture) // ct_grid.size[0]
    top = preview.to_uint8(preview.heat_colors(np.array([1.0]))[0])
    centre = picture[(j - 1) * scale : (j + 2) * scale, (i - 1) * scale : (i + 2) * scale]  # 3 x 3 CT pixels
    assert np.all(centre == top)


def test_the_axial_picture_carries_its_text_in_the_corners(picture_study):
    """Lesion number and measurements top left, slice top right, windows bottom left, the colour
    bar bottom right, R and L at the sides: each block has white text the plain picture lacks."""
    s = picture_study
    ct_grid = Grid.from_sitk(s.loaded.ct)
    k = _largest_slice(s.lesion_map_ct, HOT)
    panels = preview.ct_slice_panels(
        sitk.GetArrayViewFromImage(s.loaded.ct), ct_grid, s.loaded.pet_suv, s.lesion_map_ct, s.boxes, k
    )
    numbering = preview.SliceNumbering(s.loaded.ct_series.slice_instance_numbers)
    lesion = s.found.lesions[HOT - 1]
    z_mm = float(ct_grid.index_to_lps([0, 0, k])[2])
    texts = preview.axial_texts(lesion, numbering.text(k), z_mm)
    annotated, placed = preview.axial_picture(panels, texts)
    plain, _ = preview.axial_picture(panels, None)

    number = _instance_number(s.ct, k)
    assert [line.text for line in texts["mediastinum top-left"]] == [
        "Lesion 1 (lesions.csv lesion 1)",
        f"SUVmax {lesion.suv_max:.1f}  MTV {lesion.mtv_ml:.2f} mL",
    ]
    assert [line.text for line in texts["mediastinum top-right"]] == [
        f"Image {number} (InstanceNumber)",
        f"z {z_mm:.1f} mm",
    ]
    assert [line.text for line in texts["mediastinum bottom-left"]][0] == "Mediastinum W350/L40"
    assert [line.text for line in texts["lung bottom-left"]][0] == "Lung W1400/L-700"
    rows, width = annotated.shape[0], _panel_width(annotated)
    expected_corner = {
        "mediastinum top-left": (0, 0),
        "mediastinum top-right": (width - 1, 0),
        "mediastinum bottom-left": (0, rows - 1),
        "mediastinum bottom-right": (width - 1, rows - 1),
        "lung top-left": (width, 0),
        "lung bottom-left": (width, rows - 1),
    }
    for place, (x, y) in expected_corner.items():
        c0, r0, c1, r1 = placed[place]
        assert c0 <= x <= c1 and r0 <= y <= r1, place
    for place, (c0, r0, c1, r1) in placed.items():
        block, before = annotated[r0 : r1 + 1, c0 : c1 + 1], plain[r0 : r1 + 1, c0 : c1 + 1]
        assert np.any(block != before), place
        if place == f"lesion {HOT}":  # the box's number, in the box's colour
            assert np.all(block == BOX, axis=-1).sum() >= 5
        elif place == "lung top-left":  # the legend: each line in its mark's colour
            assert np.all(block == OUTLINE, axis=-1).sum() >= 5 and np.all(block == BOX, axis=-1).sum() >= 5
        else:
            assert np.all(block == 255, axis=-1).sum() >= 5, place  # white glyphs
    # R on the picture's left side of each panel, L on its right (radiological).
    assert placed["mediastinum middle-left"][0] == 0 and placed["mediastinum middle-right"][2] == width - 1
    assert (panels.view.left_letter, panels.view.right_letter) == ("R", "L")
    # The colour bar: the map's colours from its bottom (black) to its top (white) under "PET SUV 0-10".
    c0, r0, c1, r1 = placed["mediastinum bottom-right"]
    bar = annotated[r0 : r1 + 1, c0 : c1 + 1]
    red, green, blue = (bar[..., n].astype(int) for n in range(3))
    assert ((red == 255) & (green < 100) & (blue == 0)).any()  # red
    assert ((red == 255) & (green > 200) & (blue < 60)).any()  # yellow


def test_every_lesion_is_numbered_on_the_mip_inside_the_picture(picture_study):
    """Each number beside its own lesion's outline and whole inside the picture: the lesion at the
    top edge of the field of view too, and the one outside the CT."""
    s = picture_study
    pet = sitk.GetArrayViewFromImage(s.loaded.pet_suv)
    grid, lesion_map = s.found.pet_grid, s.found.lesion_map
    annotated, placed = preview.mip_picture(pet, grid, lesion_map, s.found.lesions)
    plain, _ = preview.mip_picture(pet, grid, lesion_map, s.found.lesions, annotate=False)
    rows, columns = annotated.shape[:2]
    red = preview.to_uint8(np.array(preview.MIP_OUTLINE_RGB))
    for lesion in s.found.lesions:
        alone = preview.coronal_mip_rgb(pet, grid, lesion_labels=(lesion_map == lesion.label).astype(np.uint8))
        own_outline = np.all(preview.upscale(preview.to_uint8(alone), columns // alone.shape[1]) == red, axis=-1)
        c0, r0, c1, r1 = placed[f"lesion {lesion.label}"]
        assert 0 <= c0 <= c1 < columns and 0 <= r0 <= r1 < rows
        assert np.any(annotated[r0 : r1 + 1, c0 : c1 + 1] != plain[r0 : r1 + 1, c0 : c1 + 1])
        assert not own_outline[r0 : r1 + 1, c0 : c1 + 1].any()  # beside the lesion, not over it
        near = own_outline[max(r0 - 10, 0) : r1 + 11, max(c0 - 10, 0) : c1 + 11]
        assert near.any(), lesion.label  # within 10 pixels of its own lesion
        if lesion.label == TOP_EDGE:
            assert own_outline[0].any()  # the lesion touches the picture's top edge


def test_lesions_past_the_limit_go_on_a_contact_sheet(picture_study, tmp_path, monkeypatch):
    monkeypatch.setattr(preview, "AXIAL_PICTURES", 1)
    s = picture_study
    paths = render_pictures(s.loaded, s.found, s.lesion_map_ct, s.boxes, tmp_path)
    names = sorted(path.name for path in paths)
    hot_image = _instance_number(s.ct, _largest_slice(s.lesion_map_ct, HOT))
    contact = f"axial_lesions{TOP_EDGE}-{TINY}_contact.png"  # the lesions past the first, by number
    assert names == [f"axial_lesion{HOT}_image{hot_image}.png", contact, "pet_mip_coronal.png"]
    sheet = _read(tmp_path / contact)
    assert sheet.shape[1] == 2 * preview.TILE_PX + preview.TILE_GAP_PX  # two tiles: the lesions the CT reaches
    assert np.all(sheet == BOX, axis=-1).any() and np.all(sheet == OUTLINE, axis=-1).any()


def test_slices_without_an_instance_number_of_their_own_are_named_by_frame_or_z():
    assert preview.SliceNumbering([5, 4, 3]).file_part(1, -12.5) == "image4"
    assert preview.SliceNumbering((), [3, 1, 2]).file_part(0, -12.5) == "frame3"
    assert preview.SliceNumbering().file_part(7, -12.54) == "z-12.5mm"
    assert preview.SliceNumbering().text(7) == "Resampled slice (no DICOM image)"


def test_a_multi_frame_ct_numbers_its_slices_by_frame(tmp_path):
    """An Enhanced CT file holds the slices as frames (in any order): each slice is named by its frame."""
    from test_dicom_series import _enhanced_ct_from

    from PETCTLesionsLib.dicom.index import scan_paths
    from PETCTLesionsLib.study import SeriesInfo

    sources = sorted(LUNG_DX_CT_SERIES.glob("*.dcm"))
    order = [3, 0, 10, 7, 1, 9, 2, 8, 5, 4, 6]  # frame f holds source slice order[f]
    _enhanced_ct_from(sources, tmp_path / "enhanced.dcm", order)
    (series,) = scan_paths([tmp_path / "enhanced.dcm"]).series
    info = SeriesInfo.from_series(series)

    z = [float(pydicom.dcmread(p, stop_before_pixels=True).ImagePositionPatient[2]) for p in sources]
    by_position = sorted(range(len(order)), key=lambda frame: z[order[frame]])
    assert info.slice_frame_numbers == [frame + 1 for frame in by_position]
    assert info.slice_instance_numbers == []

    (classic,) = scan_paths([LUNG_DX_CT_SERIES]).series
    numbers = SeriesInfo.from_series(classic).slice_instance_numbers
    bottom_up = sorted(range(len(sources)), key=lambda n: z[n])
    assert numbers == [int(pydicom.dcmread(sources[n], stop_before_pixels=True).InstanceNumber) for n in bottom_up]
