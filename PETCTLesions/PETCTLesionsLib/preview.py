"""PNG pictures a reader looks at: a fused axial PET/CT picture per lesion, and a coronal PET MIP.

Axial pictures: each lesion gets one, through the CT slice where its cross-section on the CT is
largest (the most inferior such slice on a tie), so a false positive or a 0.2 mL lesion is shown
as well as the largest one. The left panel is the CT in the mediastinum window with the PET
blended over it, the right panel the CT alone in the lung window; both carry every lesion's
outline on that slice and its box (as in the VOC export). Text on the picture (on a darkened
band, so it reads over any image): the lesion's number (the ``lesion`` column of ``lesions.csv``,
and "Lesion <n>" of the Slicer module's segments) with its SUVmax and MTV, the slice as a DICOM
viewer numbers it (:class:`SliceNumbering`) and its z in mm, the windows, R/L markers and a colour
bar of the PET's SUV window. Each box on the slice has its lesion's number beside it.
Past :data:`AXIAL_PICTURES` lesions (a model gone astray can find hundreds), the smaller ones go on
contact sheets of :data:`CONTACT_SHEET_TILES` tiles each, one tile per lesion, cut from the same
kind of picture.

Orientation is radiological: patient right on the picture's left, anterior at the top (the
pixels are flipped where the CT's axes point the other way), and the edge markers name the
patient's side there. The MIP is an anterior view, head at the top, patient right on the left.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk
from PIL import Image, ImageDraw, ImageFont

from .display import CT_WINDOW_PRESETS, DEFAULT_SUV_WINDOW, heat_colors, window_to_unit
from .fileio import atomic_output, itk_write_error
from .geometry import Grid
from .lesions import SliceBox, lesion_extents
from .measurements import LesionMeasurement
from .resampling import resample_to_grid

Box = Tuple[int, int, int, int]  # 0-based inclusive (c0, r0, c1, r1)
Rgb = Tuple[int, int, int]
# Outline and box in colours that differ from each other and from the PET heat map and CT greys.
LESION_OUTLINE_RGB = (0.2, 1.0, 0.3)
BOX_RGB = (0.2, 0.8, 1.0)
MIP_OUTLINE_RGB = (0.9, 0.1, 0.1)
TEXT_RGB: Rgb = (255, 255, 255)
# Text sits on the picture darkened to this fraction of its brightness: white text reads on any image.
TEXT_BAND_DARKNESS = 0.3
# A picture per lesion up to this many lesions (largest first, as numbered); a study with more
# (a model gone astray on a whole-body study) puts the rest on contact sheets instead of
# hundreds of files.
AXIAL_PICTURES = 20
CONTACT_SHEET_COLUMNS = 6
CONTACT_SHEET_TILES = 36  # lesions per contact sheet (6 x 6 tiles)
TILE_PX = 200
TILE_GAP_PX = 4
TILE_FIELD_MM = 80.0  # a tile shows at least this much of the slice around its lesion
# PET below this fraction of the SUV window is left out of the fused picture, so anatomy stays readable.
PET_VISIBLE_FROM = 0.1
AXIAL_PANEL_PX = 512  # a CT slice is shown at least this wide (pixels repeated, never interpolated)
MIP_PX = 512  # the MIP is shown at least this wide


# ------------------------------------------------------------------------- slice numbering


@dataclass(frozen=True)
class SliceNumbering:
    """What a reader finds CT slice k by in a DICOM viewer: the InstanceNumber of its file, else
    its frame number in a multi-frame file (Enhanced CT); a slice that is neither (interpolated
    onto an even spacing) has only its z in mm (LPS z, which is Slicer's S)."""

    instance_numbers: Sequence[int] = ()
    frame_numbers: Sequence[int] = ()

    def file_part(self, k: int, z_mm: float) -> str:
        """The slice's part of a picture's file name: ``image68``, ``frame12`` or ``z-123.5mm``."""
        if self.instance_numbers:
            return f"image{self.instance_numbers[k]}"
        if self.frame_numbers:
            return f"frame{self.frame_numbers[k]}"
        return f"z{z_mm:.1f}mm"

    def text(self, k: int) -> str:
        if self.instance_numbers:
            return f"Image {self.instance_numbers[k]} (InstanceNumber)"
        if self.frame_numbers:
            return f"Frame {self.frame_numbers[k]} of the multi-frame CT"
        return "Resampled slice (no DICOM image)"

    def short_text(self, k: int, z_mm: float) -> str:
        """For a contact sheet's tile: ``Image 68``, ``Frame 12`` or ``z -123.5 mm``."""
        if self.instance_numbers:
            return f"Image {self.instance_numbers[k]}"
        if self.frame_numbers:
            return f"Frame {self.frame_numbers[k]}"
        return f"z {z_mm:.1f} mm"


def slice_z_mm(grid: Grid, k: int) -> float:
    """Patient z (LPS z = RAS S, mm) of slice ``k``: its first voxel's, the ImagePositionPatient a viewer
    shows as the slice's location (as lesions.csv gives it)."""
    return float(grid.index_to_lps([0.0, 0.0, float(k)])[2])


# ------------------------------------------------------------------------------- images


def pet_on_ct_slice(pet: sitk.Image, ct_grid: Grid, k: int) -> np.ndarray:
    """PET values (linear interpolation) at the voxel centres of CT slice ``k``: array [row, column]."""
    slice_grid = ct_grid.sub_grid((0, 0, k), (ct_grid.size[0], ct_grid.size[1], k + 1))
    return sitk.GetArrayFromImage(resample_to_grid(pet, slice_grid, sitk.sitkLinear, 0.0, sitk.sitkFloat32))[0]


def fused_axial_rgb(
    ct_slice_hu: np.ndarray,
    pet_slice_suv: np.ndarray,
    preset: str = "Mediastinum",
    suv_window: Tuple[float, float] = DEFAULT_SUV_WINDOW,
    pet_opacity: float = 0.6,
) -> np.ndarray:
    """CT in the named window with the PET heat map blended over it, RGB floats [row, column, 3].

    PET below :data:`PET_VISIBLE_FROM` of the SUV window is left transparent so anatomy stays
    readable. The PET's opacity rises from ``pet_opacity`` to 1 at the top of the window, so an
    uptake at or above it is the colour map's top colour: a saturated centre blended with CT at
    a fixed opacity would show the CT's texture through it and read as a necrotic ring.
    """
    width, level = CT_WINDOW_PRESETS[preset]
    grey = window_to_unit(ct_slice_hu, width, level)
    rgb = np.repeat(grey[..., None], 3, axis=-1)
    suv_unit = np.clip((pet_slice_suv - suv_window[0]) / (suv_window[1] - suv_window[0]), 0.0, 1.0)
    visible = np.clip(suv_unit / PET_VISIBLE_FROM, 0.0, 1.0)
    alpha = (visible * (pet_opacity + (1.0 - pet_opacity) * suv_unit**2))[..., None] if pet_opacity > 0 else 0.0
    return rgb * (1.0 - alpha) + heat_colors(suv_unit) * alpha


def outline(mask: np.ndarray) -> np.ndarray:
    """Pixels of a 2D mask that touch a pixel outside it (4-neighbourhood)."""
    mask = np.asarray(mask, dtype=bool)
    padded = np.pad(mask, 1)
    interior = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:] & mask
    return mask & ~interior


def draw_outline(rgb: np.ndarray, mask: np.ndarray, color: Sequence[float] = LESION_OUTLINE_RGB) -> None:
    rgb[outline(mask)] = color


def draw_box(rgb: np.ndarray, box: Box, color: Sequence[float] = BOX_RGB, thickness: int = 1) -> None:
    """A rectangle just outside ``box`` (so it never covers the lesion's own pixels)."""
    c0, r0, c1, r1 = box
    rows, columns = rgb.shape[:2]
    for t in range(thickness):
        top, bottom = max(r0 - 1 - t, 0), min(r1 + 1 + t, rows - 1)
        left, right = max(c0 - 1 - t, 0), min(c1 + 1 + t, columns - 1)
        rgb[top, left : right + 1] = color
        rgb[bottom, left : right + 1] = color
        rgb[top : bottom + 1, left] = color
        rgb[top : bottom + 1, right] = color


def coronal_mip_rgb(
    pet_suv: np.ndarray,
    pet_grid: Grid,
    suv_window: Tuple[float, float] = DEFAULT_SUV_WINDOW,
    lesion_labels: Optional[np.ndarray] = None,
) -> np.ndarray:
    """Anterior maximum-intensity projection of the PET, inverted grey (the nuclear medicine habit),
    head at the top, patient right on the left, resampled to square millimetres; lesions outlined."""
    mip = np.asarray(pet_suv).max(axis=1)  # [k, i]: project along rows (anterior-posterior)
    unit = np.clip((mip - suv_window[0]) / (suv_window[1] - suv_window[0]), 0.0, 1.0)
    rgb = np.repeat((1.0 - unit)[..., None], 3, axis=-1)
    if lesion_labels is not None:
        draw_outline(rgb, lesion_labels.max(axis=1) > 0, color=MIP_OUTLINE_RGB)
    view = _MipView.of(pet_grid)
    return _resample_rows(view.orient(rgb), view.row_scale)


def _resample_rows(rgb: np.ndarray, row_scale: float) -> np.ndarray:
    rows = max(1, int(round(rgb.shape[0] * row_scale)))
    source = np.minimum((np.arange(rows) / row_scale).astype(int), rgb.shape[0] - 1)
    return rgb[source]


def upscale(rgb: np.ndarray, factor: int) -> np.ndarray:
    return np.repeat(np.repeat(rgb, factor, axis=0), factor, axis=1) if factor > 1 else rgb


def to_uint8(rgb: np.ndarray) -> np.ndarray:
    """RGB floats in [0, 1] as 8-bit pixels (8-bit pixels as they are)."""
    rgb = np.asarray(rgb)
    if rgb.dtype == np.uint8:
        return rgb
    return np.clip(np.round(rgb * 255.0), 0, 255).astype(np.uint8)


def write_png(path: Path, rgb: np.ndarray, overwrite: bool = False) -> Path:
    """Write RGB floats in [0, 1] or 8-bit pixels ([row, column, 3]) as an 8-bit PNG, atomically."""
    image = sitk.GetImageFromArray(to_uint8(rgb), isVector=True)
    with atomic_output(path, overwrite=overwrite) as tmp:
        try:
            sitk.WriteImage(image, str(tmp))
        except RuntimeError as error:  # ITK reports a full disk as a RuntimeError: make it the OSError it is
            raise itk_write_error(error, path) from error
    return Path(path)


def largest_cross_sections(ct_lesion_labels: np.ndarray) -> Dict[int, int]:
    """For each lesion on the CT map: the slice k of its largest cross-section (the lowest k on a tie).

    One pass over the lesion voxels, whatever the number of lesions."""
    k = np.nonzero(ct_lesion_labels)[0]
    if k.size == 0:
        return {}
    labels = ct_lesion_labels[ct_lesion_labels > 0].astype(np.int64)  # same C order as np.nonzero
    slices = ct_lesion_labels.shape[0]
    areas = np.bincount(labels * slices + k, minlength=(int(labels.max()) + 1) * slices).reshape(-1, slices)
    return {int(label): int(np.argmax(areas[label])) for label in np.unique(labels)}


# ------------------------------------------------------------------------- orientation

_LPS_LETTERS = (("R", "L"), ("A", "P"), ("I", "S"))  # (negative, positive) end of the x, y and z axes


def _axis_letters(vector: np.ndarray) -> Tuple[str, str]:
    """(letter of the -vector end, letter of the +vector end): the patient side each end points to."""
    axis = int(np.argmax(np.abs(vector)))
    negative, positive = _LPS_LETTERS[axis]
    return (negative, positive) if vector[axis] > 0 else (positive, negative)


@dataclass(frozen=True)
class _AxialView:
    """How an axial slice's pixels are turned for a radiological view, and the side at each edge."""

    flip_rows: bool
    flip_columns: bool
    left_letter: str
    right_letter: str

    @classmethod
    def of(cls, grid: Grid) -> _AxialView:
        direction = grid.direction_matrix
        column_axis, row_axis = direction[:, 0], direction[:, 1]
        # Column index toward the patient's left (x+): right on the picture's left. Rows toward
        # posterior (y+): anterior at the top. Along whichever axis each mostly runs.
        flip_columns = column_axis[int(np.argmax(np.abs(column_axis)))] < 0
        flip_rows = row_axis[int(np.argmax(np.abs(row_axis)))] < 0
        left, right = _axis_letters(-column_axis if flip_columns else column_axis)
        return cls(flip_rows, flip_columns, left, right)

    def orient(self, pixels: np.ndarray) -> np.ndarray:
        if self.flip_rows:
            pixels = pixels[::-1]
        if self.flip_columns:
            pixels = pixels[:, ::-1]
        return pixels

    def box(self, box: Box, rows: int, columns: int) -> Box:
        c0, r0, c1, r1 = box
        if self.flip_columns:
            c0, c1 = columns - 1 - c1, columns - 1 - c0
        if self.flip_rows:
            r0, r1 = rows - 1 - r1, rows - 1 - r0
        return c0, r0, c1, r1


@dataclass(frozen=True)
class _MipView:
    """An anterior MIP's [k, i] pixels turned head up, patient right on the left, in square mm."""

    flip_rows: bool
    flip_columns: bool
    row_scale: float
    left_letter: str
    right_letter: str

    @classmethod
    def of(cls, grid: Grid) -> _MipView:
        direction = grid.direction_matrix
        column_axis, slice_axis = direction[:, 0], direction[:, 2]
        flip_columns = column_axis[int(np.argmax(np.abs(column_axis)))] < 0
        left, right = _axis_letters(-column_axis if flip_columns else column_axis)
        head_up = slice_axis[int(np.argmax(np.abs(slice_axis)))] > 0  # k toward the head: last slice at the top
        return cls(head_up, flip_columns, grid.spacing[2] / grid.spacing[0], left, right)

    def orient(self, pixels: np.ndarray) -> np.ndarray:
        if self.flip_rows:
            pixels = pixels[::-1]
        if self.flip_columns:
            pixels = pixels[:, ::-1]
        return pixels

    def box(self, extent: Tuple[slice, slice, slice], shape: Tuple[int, int, int], factor: int) -> Box:
        """A lesion's ``[k, j, i]`` extent as a box on the shown MIP (resampled, upscaled by ``factor``)."""
        k0, k1 = extent[0].start, extent[0].stop - 1
        i0, i1 = extent[2].start, extent[2].stop - 1
        if self.flip_rows:
            k0, k1 = shape[0] - 1 - k1, shape[0] - 1 - k0
        if self.flip_columns:
            i0, i1 = shape[2] - 1 - i1, shape[2] - 1 - i0
        top = int(math.ceil(k0 * self.row_scale - 1e-9))
        bottom = max(top, int(math.ceil((k1 + 1) * self.row_scale - 1e-9)) - 1)
        return i0 * factor, top * factor, (i1 + 1) * factor - 1, (bottom + 1) * factor - 1


# --------------------------------------------------------------------------------- text


def label_font(size: int) -> ImageFont.ImageFont:
    """Pillow's own font at ``size`` pixels (Pillow >= 10.1 with FreeType), else its fixed bitmap font."""
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: no sizes, the small bitmap font
        return ImageFont.load_default()


def font_size_for(width: int) -> int:
    """Text height for a picture ``width`` pixels wide: about 32 characters across a 512-pixel panel."""
    return max(11, int(round(width / 32)))


@dataclass
class TextLine:
    text: str
    color: Rgb = TEXT_RGB


@dataclass
class Annotator:
    """Text blocks on a picture: each on a darkened band, placed in a corner or next to a mark.

    The bands are darkened at once; the text is drawn by :meth:`pixels`. Every block is kept
    inside the picture, and ``blocks`` records where each went (for the tests and for placing
    more blocks clear of them)."""

    rgb: np.ndarray  # uint8 [row, column, 3], changed in place
    font_px: int
    margin: int = 4
    blocks: List[Box] = field(default_factory=list)
    _texts: List[Tuple[Tuple[int, int], str, Rgb]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.rgb = to_uint8(self.rgb).copy()
        self.font = label_font(self.font_px)
        self._measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
        ascent_box = self._measure.textbbox((0, 0), "Ag|", font=self.font)
        self.line_px = ascent_box[3] + max(2, self.font_px // 6)

    @property
    def width(self) -> int:
        return self.rgb.shape[1]

    @property
    def height(self) -> int:
        return self.rgb.shape[0]

    def text_size(self, lines: Sequence[TextLine]) -> Tuple[int, int]:
        widths = [self._measure.textbbox((0, 0), line.text, font=self.font)[2] for line in lines]
        return max(widths, default=0) + 2 * self.margin, len(lines) * self.line_px + 2 * self.margin

    def corner(self, lines: Sequence[TextLine], where: str, region: Optional[Box] = None) -> Box:
        """A block in a corner ("top-left", "top-right", "bottom-left", "bottom-right") or at the
        middle of a side ("middle-left", "middle-right") of ``region`` (the whole picture by default)."""
        c0, r0, c1, r1 = region if region is not None else (0, 0, self.width - 1, self.height - 1)
        width, height = self.text_size(lines)
        vertical, horizontal = where.split("-")
        x = c0 if horizontal == "left" else c1 + 1 - width
        y = {"top": r0, "bottom": r1 + 1 - height, "middle": (r0 + r1 + 1 - height) // 2}[vertical]
        return self.block(lines, x, y)

    def block(self, lines: Sequence[TextLine], x: int, y: int) -> Box:
        width, height = self.text_size(lines)
        x = int(min(max(x, 0), max(self.width - width, 0)))
        y = int(min(max(y, 0), max(self.height - height, 0)))
        box = (x, y, min(x + width, self.width) - 1, min(y + height, self.height) - 1)
        self.darken(box)
        for n, line in enumerate(lines):
            self._texts.append(((x + self.margin, y + self.margin + n * self.line_px), line.text, line.color))
        self.blocks.append(box)
        return box

    def darken(self, box: Box) -> None:
        c0, r0, c1, r1 = box
        band = self.rgb[r0 : r1 + 1, c0 : c1 + 1]
        band[...] = (band * TEXT_BAND_DARKNESS).astype(np.uint8)

    def near(self, lines: Sequence[TextLine], target: Box, gap: int = 3) -> Box:
        """A block beside ``target``: right, left, above or below it, the first place inside the
        picture that covers neither the target nor another block (else the least covering one)."""
        width, height = self.text_size(lines)
        c0, r0, c1, r1 = target
        middle_y, middle_x = (r0 + r1 + 1 - height) // 2, (c0 + c1 + 1 - width) // 2
        candidates = [
            (c1 + 1 + gap, middle_y),
            (c0 - gap - width, middle_y),
            (middle_x, r0 - gap - height),
            (middle_x, r1 + 1 + gap),
        ]
        placed = []
        for x, y in candidates:
            x = min(max(x, 0), max(self.width - width, 0))
            y = min(max(y, 0), max(self.height - height, 0))
            box = (x, y, x + width - 1, y + height - 1)
            covered = sum(_overlap(box, other) for other in [target, *self.blocks])
            placed.append((covered, box))
            if covered == 0:
                break
        _, (x, y, _, _) = min(placed, key=lambda item: item[0])
        return self.block(lines, x, y)

    def colour_bar(self, suv_window: Tuple[float, float], where: str, region: Optional[Box] = None) -> Box:
        """The PET colour map as a bar under its range ("PET SUV 0-10"), in a corner of ``region``."""
        label = [TextLine(f"PET SUV {_number(suv_window[0])}-{_number(suv_window[1])}")]
        bar_height = max(6, self.font_px // 2)
        block = self.corner([*label, TextLine("")], where, region)  # a blank line's room for the bar
        c0, _, c1, r1 = block
        bar = (c0 + self.margin, r1 - self.margin - bar_height + 1, c1 - self.margin, r1 - self.margin)
        ramp = heat_colors(np.linspace(0.0, 1.0, bar[2] - bar[0] + 1))
        self.rgb[bar[1] : bar[3] + 1, bar[0] : bar[2] + 1] = to_uint8(ramp)[None]
        return block

    def pixels(self) -> np.ndarray:
        """The picture with its text drawn: uint8 [row, column, 3]."""
        image = Image.fromarray(self.rgb)
        draw = ImageDraw.Draw(image)
        for xy, text, color in self._texts:
            draw.text(xy, text, fill=color, font=self.font)
        return np.asarray(image, dtype=np.uint8).copy()


def _overlap(a: Box, b: Box) -> int:
    width = min(a[2], b[2]) - max(a[0], b[0]) + 1
    height = min(a[3], b[3]) - max(a[1], b[1]) + 1
    return max(width, 0) * max(height, 0)


def _number(value: float) -> str:
    return f"{value:g}"


def _rgb255(color: Sequence[float]) -> Rgb:
    return tuple(int(round(c * 255)) for c in color)  # type: ignore[return-value]


# ---------------------------------------------------------------------- the study's pictures


@dataclass(frozen=True)
class CtSlice:
    """One CT slice as the pictures show it: the fused and lung panels, lesions and boxes drawn,
    turned radiologically, at the picture's scale, with where each box went."""

    mediastinum: np.ndarray  # float RGB [row, column, 3], upscaled
    lung: np.ndarray
    boxes: List[Tuple[int, Box]]  # (lesion number, box on the shown panel)
    view: _AxialView
    scale: int


def ct_slice_panels(
    ct_hu: np.ndarray,
    ct_grid: Grid,
    pet_suv: sitk.Image,
    lesion_map_ct: np.ndarray,
    boxes: Sequence[SliceBox],
    k: int,
    suv_window: Tuple[float, float] = DEFAULT_SUV_WINDOW,
) -> CtSlice:
    """Slice ``k``'s two panels: mediastinum window with the PET, lung window (CT alone), each with
    every lesion's outline and box on the slice."""
    pet_slice = pet_on_ct_slice(pet_suv, ct_grid, k)
    mediastinum = fused_axial_rgb(ct_hu[k], pet_slice, "Mediastinum", suv_window)
    lung = fused_axial_rgb(ct_hu[k], pet_slice, "Lung", suv_window, pet_opacity=0.0)
    on_slice = [box for box in boxes if box.k == k]
    for panel in (mediastinum, lung):
        draw_outline(panel, lesion_map_ct[k] > 0)
        for box in on_slice:
            draw_box(panel, (box.c0, box.r0, box.c1, box.r1))
    view = _AxialView.of(ct_grid)
    rows, columns = ct_hu.shape[1:]
    scale = max(1, -(-AXIAL_PANEL_PX // columns))
    shown = []
    for box in on_slice:
        c0, r0, c1, r1 = view.box((box.c0, box.r0, box.c1, box.r1), rows, columns)
        shown.append((box.lesion, (c0 * scale, r0 * scale, (c1 + 1) * scale - 1, (r1 + 1) * scale - 1)))
    return CtSlice(upscale(view.orient(mediastinum), scale), upscale(view.orient(lung), scale), shown, view, scale)


def lesion_lines(lesion: LesionMeasurement) -> List[TextLine]:
    return [
        TextLine(f"Lesion {lesion.label} (lesions.csv lesion {lesion.label})"),
        TextLine(f"SUVmax {lesion.suv_max:.1f}  MTV {lesion.mtv_ml:.2f} mL"),
    ]


def axial_texts(
    lesion: LesionMeasurement,
    slice_text: str,
    z_mm: float,
    suv_window: Tuple[float, float] = DEFAULT_SUV_WINDOW,
) -> Dict[str, List[TextLine]]:
    """The text of a lesion's axial picture, by place: "<panel> <corner>"."""
    return {
        "mediastinum top-left": lesion_lines(lesion),
        "mediastinum top-right": [TextLine(slice_text), TextLine(f"z {z_mm:.1f} mm")],
        "mediastinum bottom-left": [TextLine(_window_name("Mediastinum")), TextLine("CT + PET")],
        "lung top-left": [
            TextLine("outline: lesion", _rgb255(LESION_OUTLINE_RGB)),
            TextLine("box: lesion box (VOC)", _rgb255(BOX_RGB)),
        ],
        "lung bottom-left": [TextLine(_window_name("Lung")), TextLine("CT only")],
    }


def _window_name(preset: str) -> str:
    width, level = CT_WINDOW_PRESETS[preset]
    return f"{preset} W{_number(width)}/L{_number(level)}"


def axial_picture(
    panels: CtSlice,
    texts: Optional[Dict[str, List[TextLine]]],
    suv_window: Tuple[float, float] = DEFAULT_SUV_WINDOW,
) -> Tuple[np.ndarray, Dict[str, Box]]:
    """The two panels side by side (uint8), with ``texts`` and the markers drawn unless None;
    and where each text block went."""
    pixels = np.concatenate([panels.mediastinum, panels.lung], axis=1)
    if texts is None:
        return to_uint8(pixels), {}
    rows, width = pixels.shape[0], panels.mediastinum.shape[1]
    annotator = Annotator(pixels, font_size_for(width))
    regions = {"mediastinum": (0, 0, width - 1, rows - 1), "lung": (width, 0, 2 * width - 1, rows - 1)}
    placed: Dict[str, Box] = {}
    for place, lines in texts.items():
        panel, corner = place.split(" ")
        placed[place] = annotator.corner(lines, corner, regions[panel])
    placed["mediastinum bottom-right"] = annotator.colour_bar(suv_window, "bottom-right", regions["mediastinum"])
    for panel, region in regions.items():
        placed[f"{panel} middle-left"] = annotator.corner([TextLine(panels.view.left_letter)], "middle-left", region)
        placed[f"{panel} middle-right"] = annotator.corner([TextLine(panels.view.right_letter)], "middle-right", region)
    for lesion, box in panels.boxes:  # each box's lesion number beside it, on the fused panel
        placed[f"lesion {lesion}"] = annotator.near([TextLine(str(lesion), _rgb255(BOX_RGB))], box)
    return annotator.pixels(), placed


def contact_tile(panels: CtSlice, lesion: LesionMeasurement, slice_text: str, ct_grid: Grid) -> np.ndarray:
    """A square tile of the fused panel around ``lesion`` (at least :data:`TILE_FIELD_MM` across),
    TILE_PX wide, with the lesion's number, SUVmax, MTV and slice."""
    mine = [box for number, box in panels.boxes if number == lesion.label]
    rows, columns = panels.mediastinum.shape[:2]
    c0, r0, c1, r1 = mine[0] if mine else (0, 0, columns - 1, rows - 1)
    side = max(TILE_FIELD_MM / ct_grid.spacing[0] * panels.scale, 1.5 * max(c1 - c0 + 1, r1 - r0 + 1))
    side = int(min(side, rows, columns))
    left = int(min(max((c0 + c1 + 1) // 2 - side // 2, 0), columns - side))
    top = int(min(max((r0 + r1 + 1) // 2 - side // 2, 0), rows - side))
    crop = panels.mediastinum[top : top + side, left : left + side]
    source = np.minimum((np.arange(TILE_PX) * side / TILE_PX).astype(int), side - 1)
    tile = Annotator(crop[source][:, source], max(11, TILE_PX // 16), margin=2)
    tile.corner([TextLine(f"Lesion {lesion.label}")], "top-left")
    tile.corner([TextLine(slice_text)], "top-right")
    tile.corner([TextLine(f"SUVmax {lesion.suv_max:.1f}  {lesion.mtv_ml:.2f} mL")], "bottom-left")
    return tile.pixels()


def contact_sheet(tiles: Sequence[np.ndarray], title: str, suv_window: Tuple[float, float]) -> np.ndarray:
    """Tiles in rows of :data:`CONTACT_SHEET_COLUMNS`, apart by a black line, under a title band
    with the colour bar."""
    columns = min(CONTACT_SHEET_COLUMNS, len(tiles))
    rows = -(-len(tiles) // columns)
    pitch = TILE_PX + TILE_GAP_PX
    annotator = Annotator(np.zeros((1, 1, 3), np.uint8), font_size_for(AXIAL_PANEL_PX))
    header = 2 * annotator.line_px + 2 * annotator.margin + TILE_GAP_PX
    sheet = np.zeros((header + rows * pitch - TILE_GAP_PX, columns * pitch - TILE_GAP_PX, 3), np.uint8)
    for n, tile in enumerate(tiles):
        row, column = divmod(n, columns)
        top, left = header + row * pitch, column * pitch
        sheet[top : top + TILE_PX, left : left + TILE_PX] = tile
    annotator = Annotator(sheet, annotator.font_px)
    band = (0, 0, sheet.shape[1] - 1, header - 1)
    lines = [TextLine(title), TextLine(f"{_window_name('Mediastinum')} + PET; patient right on the left")]
    annotator.corner(lines, "top-left", band)
    annotator.colour_bar(suv_window, "top-right", band)
    return annotator.pixels()


def mip_picture(
    pet_suv: np.ndarray,
    pet_grid: Grid,
    lesion_map: np.ndarray,
    lesions: Sequence[LesionMeasurement],
    suv_window: Tuple[float, float] = DEFAULT_SUV_WINDOW,
    annotate: bool = True,
) -> Tuple[np.ndarray, Dict[str, Box]]:
    """The coronal MIP with every lesion outlined and numbered (each number beside its lesion and
    inside the picture, also for a lesion at the edge of the field of view), the view, the SUV
    window and R/L markers; and where each text block went ("lesion <n>" for the numbers)."""
    mip = coronal_mip_rgb(pet_suv, pet_grid, suv_window, lesion_map)
    factor = max(2, -(-MIP_PX // mip.shape[1]))
    pixels = upscale(mip, factor)
    if not annotate:
        return to_uint8(pixels), {}
    view = _MipView.of(pet_grid)
    annotator = Annotator(pixels, font_size_for(pixels.shape[1]))
    placed = {
        "top-left": annotator.corner(
            [TextLine("PET MIP, anterior view"), TextLine(f"SUV {_number(suv_window[0])}-{_number(suv_window[1])}")],
            "top-left",
        ),
        "middle-left": annotator.corner([TextLine(view.left_letter)], "middle-left"),
        "middle-right": annotator.corner([TextLine(view.right_letter)], "middle-right"),
    }
    extents = lesion_extents(lesion_map, max((lesion.label for lesion in lesions), default=0))
    targets = {}
    for lesion in lesions:
        extent = extents[lesion.label - 1]
        if extent is not None:
            targets[lesion.label] = view.box(extent, lesion_map.shape, factor)
    annotator.blocks.extend(targets.values())  # numbers are placed clear of every lesion, not only their own
    for label, target in targets.items():
        placed[f"lesion {label}"] = annotator.near([TextLine(str(label), _rgb255(MIP_OUTLINE_RGB))], target)
    return annotator.pixels(), placed


@dataclass
class StudyPictures:
    """What a study's pictures are made from: the CT (HU, its own grid) with how a viewer numbers
    its slices, the PET (SUVbw), and the lesions on both grids."""

    ct_hu: np.ndarray
    ct_grid: Grid
    numbering: SliceNumbering
    pet_suv: sitk.Image
    lesion_map: np.ndarray  # on the PET grid, lesion n = value n (the lesions.csv label)
    lesions: Sequence[LesionMeasurement]
    lesion_map_ct: np.ndarray
    boxes: Sequence[SliceBox]
    suv_window: Tuple[float, float] = DEFAULT_SUV_WINDOW

    def write(self, folder: Path, overwrite: bool = False) -> Tuple[List[Path], List[str]]:
        """Write the pictures into ``folder``; return their paths and notes (a lesion the CT does
        not reach is shown on the MIP only). Names:

        - ``axial_lesion<n>_image<InstanceNumber>.png`` (``_frame<n>`` for a multi-frame CT,
          ``_z<z>mm`` for a resampled one),
        - ``axial_lesions<first>-<last>_contact.png`` for the lesions past :data:`AXIAL_PICTURES`,
        - ``pet_mip_coronal.png``.
        """
        slices = largest_cross_sections(self.lesion_map_ct)
        written: List[Path] = []
        notes = [
            f"lesion {lesion.label} lies outside the CT's field of view: shown on the PET MIP only"
            for lesion in self.lesions
            if lesion.label not in slices
        ]
        shown = [lesion for lesion in self.lesions if lesion.label in slices]
        for lesion in shown[:AXIAL_PICTURES]:
            k = slices[lesion.label]
            panels = self._panels(k)
            z_mm = slice_z_mm(self.ct_grid, k)
            texts = axial_texts(lesion, self.numbering.text(k), z_mm, self.suv_window)
            pixels, _ = axial_picture(panels, texts, self.suv_window)
            name = f"axial_lesion{lesion.label}_{self.numbering.file_part(k, z_mm)}.png"
            written.append(write_png(folder / name, pixels, overwrite))
        rest = shown[AXIAL_PICTURES:]
        for start in range(0, len(rest), CONTACT_SHEET_TILES):
            group = rest[start : start + CONTACT_SHEET_TILES]
            tiles = []
            for lesion in group:
                k = slices[lesion.label]
                slice_text = self.numbering.short_text(k, slice_z_mm(self.ct_grid, k))
                tiles.append(contact_tile(self._panels(k), lesion, slice_text, self.ct_grid))
            first, last = group[0].label, group[-1].label
            title = f"Lesions {first}-{last}: each at its largest CT cross-section"
            name = f"axial_lesions{first}-{last}_contact.png"
            written.append(write_png(folder / name, contact_sheet(tiles, title, self.suv_window), overwrite))
        pet = sitk.GetArrayViewFromImage(self.pet_suv)
        mip, _ = mip_picture(pet, Grid.from_sitk(self.pet_suv), self.lesion_map, self.lesions, self.suv_window)
        written.append(write_png(folder / "pet_mip_coronal.png", mip, overwrite))
        return written, notes

    def _panels(self, k: int) -> CtSlice:
        return ct_slice_panels(
            self.ct_hu, self.ct_grid, self.pet_suv, self.lesion_map_ct, self.boxes, k, self.suv_window
        )
