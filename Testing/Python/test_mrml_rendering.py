"""What the user sees, checked as a picture: Slicer's slice logic and its 2D displayable managers
render the fused axial (Red) and coronal (Green) views offscreen, and the pixels show the CT
window, the PET colours, the lesion's outline where the lesion is and the VOC box where it lies;
the study pictures (`slicer_*_fused.png`) show the whole body, boxes apart from outlines, and
the slice position, windows, orientation letters and the SUV colour bar.

Expected pixel values are derived from the data, not from a reference picture: each picture
pixel is mapped through the slice node's XY-to-RAS matrix onto the CT and PET voxels under it.
"""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from PETCTLesionsLib.display import CT_WINDOW_PRESETS, DEFAULT_PET_OPACITY, window_to_unit
from PETCTLesionsLib.synthetic.phantom import PhantomConfig, make_phantom

pytestmark = pytest.mark.slicer  # skipped where slicer-core is not installed (Slicer 5.6's stack in CI)

RED_SIZE = (512, 512)
GREEN_SIZE = (480, 360)  # not square: rows and columns must not be swapped anywhere
# A colour that the fused image never has (grey CT plus black-red-yellow-white PET has B <= R),
# given to the box so that its pixels are recognisable.
BOX_RGB = (0.0, 0.0, 1.0)


@pytest.fixture(scope="module")
def phantom():
    # Seed 4: the largest lesion is a hot lung nodule (~32 mm, SUV ~25) in the middle of the scan,
    # with dark lung around it: every view through it has room around the lesion.
    return make_phantom(PhantomConfig(seed=4, size="small"))


@pytest.fixture(scope="module")
def rendering_available():
    from PETCTLesionsLib.mrml.rendering import offscreen_rendering_problem

    problem = offscreen_rendering_problem()
    if problem:
        pytest.skip(f"no offscreen OpenGL context can be created here: {problem}")


class FusedScene:
    """The phantom shown fused, its truth lesions as segments and one VOC box through the largest lesion."""

    def __init__(self, study) -> None:
        import slicer

        from PETCTLesionsLib.formats.voc import VocAnnotation, VocBox
        from PETCTLesionsLib.mrml.boxes import add_box_nodes
        from PETCTLesionsLib.mrml.display import show_fused_study
        from PETCTLesionsLib.mrml.review import centre_views_on
        from PETCTLesionsLib.mrml.segmentations import lesion_colour, segmentation_from_mask
        from PETCTLesionsLib.mrml.study_nodes import INSTANCE_UIDS_ATTRIBUTE, add_phantom_volumes

        self.study = study
        self.ct, self.pet = add_phantom_volumes(study, "Phantom")
        show_fused_study(self.ct, self.pet, preset="Mediastinum")
        self.segmentation = segmentation_from_mask(
            study.pet_grid.to_sitk(study.lesion_mask_pet()), "Truth", lesion_map=study.pet_lesion_labels
        )
        labels, counts = np.unique(study.pet_lesion_labels[study.pet_lesion_labels > 0], return_counts=True)
        self.lesion = int(labels[np.argmax(counts)])
        self.lesion_rgb = np.array(lesion_colour(self.lesion)) * 255.0
        k, j, i = np.nonzero(study.pet_lesion_labels == self.lesion)
        centroid = study.pet_grid.ijk_to_ras() @ np.array([i.mean(), j.mean(), k.mean(), 1.0])
        # The VOC box: the lesion's tight box on the CT slice nearest its centroid.
        ct_ras_to_ijk = np.linalg.inv(study.ct_grid.ijk_to_ras())
        self.ct_slice = int(round((ct_ras_to_ijk @ centroid)[2]))
        rows, columns = np.nonzero(study.ct_lesion_labels[self.ct_slice] == self.lesion)
        box = VocBox.from_pixel_ranges("A", columns.min(), rows.min(), columns.max(), rows.max())
        self.box_ijk = (columns.min(), rows.min(), columns.max(), rows.max())
        uids = [f"2.25.{n + 1}" for n in range(study.ct_grid.size[2])]
        self.ct.SetAttribute(INSTANCE_UIDS_ATTRIBUTE, " ".join(uids))
        width, height = study.ct_grid.size[:2]
        (self.box,) = add_box_nodes([VocAnnotation(uids[self.ct_slice], width, height, boxes=[box])], self.ct).nodes
        box_display = self.box.GetDisplayNode()
        box_display.SetColor(*BOX_RGB)
        box_display.SetSelectedColor(*BOX_RGB)
        # Its name label and interaction handles would be pixels off the box; a VOC box picture needs neither.
        box_display.SetPropertiesLabelVisibility(False)
        box_display.SetHandlesInteractive(False)
        # Centre on the lesion in-plane, on the box's CT slice through-plane, so both views cut the box.
        slice_centre = study.ct_grid.ijk_to_ras() @ np.array([0.0, 0.0, self.ct_slice, 1.0])
        self.centre = np.array([centroid[0], centroid[1], slice_centre[2]])
        centre_views_on(slicer.mrmlScene, self.centre)
        self.slicer = slicer

    def render(self, view_name: str, size) -> np.ndarray:
        from PETCTLesionsLib.mrml.rendering import render_slice_view

        return render_slice_view(view_name, size)

    def picture_ras(self, view_name: str, shape) -> np.ndarray:
        """RAS (3, rows, columns) of every pixel centre of the last picture of ``view_name``."""
        from PETCTLesionsLib.mrml.rendering import slice_node

        xy_to_ras = self.slicer.util.arrayFromVTKMatrix(slice_node(view_name).GetXYToRAS())
        rows, columns = np.mgrid[0 : shape[0], 0 : shape[1]]
        xy = np.stack([columns, shape[0] - 1 - rows, np.zeros(rows.shape), np.ones(rows.shape)]).reshape(4, -1)
        return (xy_to_ras @ xy)[:3].reshape(3, *shape[:2])

    def sample(self, grid, values: np.ndarray, ras: np.ndarray, outside: float) -> np.ndarray:
        """Nearest-voxel values of ``values`` (on ``grid``) at points ``ras`` (3, ...)."""
        ijk = np.tensordot(np.linalg.inv(grid.ijk_to_ras())[:3, :3], ras, axes=1)
        ijk = np.rint(ijk + np.linalg.inv(grid.ijk_to_ras())[:3, 3].reshape(3, *([1] * (ras.ndim - 1)))).astype(int)
        inside = np.all([(ijk[a] >= 0) & (ijk[a] < grid.size[a]) for a in range(3)], axis=0)
        result = np.full(ras.shape[1:], outside, dtype=float)
        result[inside] = values[ijk[2][inside], ijk[1][inside], ijk[0][inside]]
        return result

    def pet_neighbourhood(self, ras: np.ndarray):
        """The lowest and highest SUV among the PET voxel under each pixel and its 26 neighbours:
        bounds of the SUV that Slicer interpolates there."""
        suv = self.study.pet_suv
        lowest, highest = suv.copy(), suv.copy()
        for shift in [(a, b, c) for a in (-1, 0, 1) for b in (-1, 0, 1) for c in (-1, 0, 1)]:
            rolled = np.roll(suv, shift, axis=(0, 1, 2))
            lowest, highest = np.minimum(lowest, rolled), np.maximum(highest, rolled)
        grid = self.study.pet_grid
        return self.sample(grid, lowest, ras, np.nan), self.sample(grid, highest, ras, np.nan)

    def show_only_images(self) -> None:
        """Hide the segments and the box: the picture is the fused PET/CT alone."""
        self.segmentation.GetDisplayNode().SetVisibility(False)
        self.box.GetDisplayNode().SetVisibility(False)

    def tissue_interior(self, name: str, ras: np.ndarray) -> np.ndarray:
        """Pixels whose CT voxel and its 6 neighbours are all tissue ``name`` (no partial volume)."""
        study = self.study
        wanted = np.isin(study.ct_tissue, [n for n, tissue in enumerate(study.tissue_names) if tissue == name])
        interior = wanted.copy()
        for axis in range(3):
            for shift in (-1, 1):
                interior &= np.roll(wanted, shift, axis=axis)
        return self.sample(study.ct_grid, interior, ras, 0.0) > 0


@pytest.fixture
def fused(mrml_scene, phantom, rendering_available):
    return FusedScene(phantom)


def _grey(hu: float, preset: str) -> float:
    """The CT's grey level (0..255) through a preset window, as Slicer's window/level maps it."""
    width, level = CT_WINDOW_PRESETS[preset]
    return 255.0 * float(window_to_unit(np.array([hu]), width, level)[0])


def test_views_use_slicer_displayable_managers_for_segments_and_markups(fused):
    from PETCTLesionsLib.mrml.rendering import OffscreenSliceView

    with OffscreenSliceView("Red", (64, 48)) as view:
        names = view.displayable_manager_names()
        picture = view.render()
    assert "vtkMRMLSegmentationsDisplayableManager2D" in names
    assert "vtkMRMLMarkupsDisplayableManager" in names
    assert picture.shape == (48, 64, 3) and picture.dtype == np.uint8
    assert tuple(fused.slicer.mrmlScene.GetNodeByID("vtkMRMLSliceNodeRed").GetDimensions()[:2]) == (64, 48)


def test_ct_window_is_applied_under_the_pet(fused):
    from PETCTLesionsLib.mrml.display import apply_ct_preset

    study = fused.study
    picture = fused.render("Red", RED_SIZE).astype(float)
    ras = fused.picture_ras("Red", picture.shape)
    suv = fused.pet_neighbourhood(ras)[1]
    hu = fused.sample(study.ct_grid, study.ct_hu.astype(float), ras, np.nan)
    cold = suv < 0.05
    air = fused.tissue_interior("air", ras) & cold
    assert air.sum() > 1000
    # Air under no uptake: black (-1000 HU is far below the mediastinum window's 40 - 175 HU).
    assert picture[air].max() <= 2
    # Muscle (~45 HU) is mid-grey. PET-Heat has no green or blue below a third of the SUV window,
    # so in those channels the pixel is the CT grey times (1 - PET opacity), the rest is PET red.
    muscle = fused.tissue_interior("muscle", ras) & (suv < 3.0)
    lung = fused.tissue_interior("lung", ras) & (suv < 3.0)
    assert muscle.sum() > 200 and lung.sum() > 1000
    ct_share = 1.0 - DEFAULT_PET_OPACITY
    for channel in (1, 2):
        assert picture[muscle][:, channel].mean() == pytest.approx(
            ct_share * _grey(np.mean(hu[muscle]), "Mediastinum"), abs=3.0
        )
        assert picture[lung][:, channel].max() <= 2  # lung (-860 HU) is below the window: black

    apply_ct_preset(fused.ct, "Lung")
    lung_window = fused.render("Red", RED_SIZE).astype(float)
    # W1400/L-700: muscle is above the window (white), lung parenchyma is a darker grey.
    assert lung_window[muscle][:, 1].mean() == pytest.approx(ct_share * 255.0, abs=3.0)
    assert lung_window[lung][:, 1].mean() == pytest.approx(ct_share * _grey(np.mean(hu[lung]), "Lung"), abs=3.0)
    assert lung_window[lung][:, 1].mean() > 30


def test_pet_colours_show_over_hot_tissue_and_not_over_cold(fused):
    study = fused.study
    fused.show_only_images()
    picture = fused.render("Red", RED_SIZE).astype(float)
    ras = fused.picture_ras("Red", picture.shape)
    low, high = fused.pet_neighbourhood(ras)
    red, green, blue = picture[..., 0], picture[..., 1], picture[..., 2]
    # SUV 1.5-3 is 15-30 % of the 0-10 SUV window, where PET-Heat is pure red (0.39-0.79): the
    # fused pixel is redder than green by the PET opacity times that: 50 or more (30 leaves room
    # for where Slicer's linear interpolation and this nearest-voxel bound disagree at edges).
    warm = (low > 1.5) & (high < 3.0)
    assert warm.sum() > 100
    assert (red - green)[warm].min() >= 30
    assert np.median((red - green)[warm]) >= 50
    # Over the hot lesion (SUV above 3.3: PET-Heat turns yellow, then white) the pixel is bright
    # and yellow-white, not grey-dark as the lung around it.
    hot = low > 5.0
    lesion_section = fused.sample(study.pet_grid, study.pet_lesion_labels, ras, 0.0) == fused.lesion
    assert np.count_nonzero(hot & lesion_section) > 50
    assert red[hot].min() >= DEFAULT_PET_OPACITY * 255 - 3 and green[hot].min() >= DEFAULT_PET_OPACITY * 255 - 3
    # Its warm rim (the PET blur, outside the lesion) rings it in red.
    column, row = _pixel_of(fused, "Red", fused.centre)
    rows, columns = np.mgrid[0 : picture.shape[0], 0 : picture.shape[1]]
    section_radius = np.hypot(*(np.nonzero(lesion_section) - np.array([[row], [column]]))).max()
    near_lesion = np.hypot(rows - row, columns - column) < 2 * section_radius
    assert np.count_nonzero(near_lesion & ~lesion_section & (red - green > 40)) > 20
    # Where there is no uptake there is no colour: grey, R == G == B.
    cold = high < 0.05
    assert cold.sum() > 1000
    assert max(np.abs(red - green)[cold].max(), np.abs(green - blue)[cold].max()) <= 2


def _pixel_of(fused: FusedScene, view_name: str, ras) -> tuple:
    from PETCTLesionsLib.mrml.rendering import view_pixel_of_ras

    return view_pixel_of_ras(view_name, ras)


def _box_rectangle(fused: FusedScene, view_name: str):
    """(min column, min row), (max column, max row) of the ROI's corners projected into the picture."""
    bounds = [0.0] * 6
    fused.box.GetRASBounds(bounds)
    corners = [(x, y, z) for x in bounds[0:2] for y in bounds[2:4] for z in bounds[4:6]]
    pixels = np.array([_pixel_of(fused, view_name, corner) for corner in corners])
    return pixels.min(axis=0), pixels.max(axis=0)


@pytest.mark.parametrize("view_name, size", [("Red", RED_SIZE), ("Green", GREEN_SIZE)])
def test_lesion_outline_rings_the_lesion(fused, view_name, size):
    study = fused.study
    fused.box.GetDisplayNode().SetVisibility(False)  # the tight box would be drawn over the outline
    picture = fused.render(view_name, size).astype(float)
    assert picture.shape == (size[1], size[0], 3)
    ras = fused.picture_ras(view_name, picture.shape)
    inside = fused.sample(study.pet_grid, study.pet_lesion_labels, ras, 0.0) == fused.lesion
    # The outline is drawn opaque in the segment's colour; the fill only blends it in.
    outline = np.all(np.abs(picture - fused.lesion_rgb) <= 3.0, axis=-1)
    rows, columns = np.nonzero(outline)
    assert len(rows) > 20
    column, row = _pixel_of(fused, view_name, fused.centre)
    assert 0 <= column < size[0] and 0 <= row < size[1]
    assert not outline[int(round(row)), int(round(column))]  # the centre is fill, not outline
    # Every outline pixel is on the lesion's cross-section boundary: inside it, next to outside.
    pixel_mm = np.linalg.norm(ras[:, 0, 1] - ras[:, 0, 0])
    voxel = max(study.pet_grid.spacing) / pixel_mm  # a PET voxel, in pixels
    section_rows, section_columns = np.nonzero(inside)
    radius = np.hypot(section_rows - row, section_columns - column).max()
    distance = np.hypot(rows - row, columns - column)
    assert distance.max() <= radius + 1.5
    assert np.median(distance) >= radius - 1.5 * voxel
    assert inside[rows, columns].mean() > 0.9
    # ... and it goes all the way round the centre.
    angles = np.degrees(np.arctan2(rows - row, columns - column))
    assert len(np.unique(((angles + 180.0) // 45).astype(int) % 8)) == 8


@pytest.mark.parametrize("view_name, size", [("Red", RED_SIZE)])
def test_box_outline_is_drawn_around_the_box(fused, view_name, size):
    fused.segmentation.GetDisplayNode().SetVisibility(False)
    picture = fused.render(view_name, size).astype(float)
    box_pixels = np.all(np.abs(picture - np.array(BOX_RGB) * 255.0) <= 40.0, axis=-1)
    rows, columns = np.nonzero(box_pixels)
    assert len(rows) > 20
    low, high = _box_rectangle(fused, view_name)
    # Slicer draws the ROI's section as a rectangle, with its centre point as a cross: every
    # box-coloured pixel is on the rectangle's edges or within that glyph (3 % of the view's height).
    edge = np.minimum.reduce(
        [np.abs(columns - low[0]), np.abs(columns - high[0]), np.abs(rows - low[1]), np.abs(rows - high[1])]
    )
    within = (columns >= low[0] - 5) & (columns <= high[0] + 5) & (rows >= low[1] - 5) & (rows <= high[1] + 5)
    centre_column, centre_row = _pixel_of(fused, view_name, _box_centre(fused))
    on_disc = np.hypot(columns - centre_column, rows - centre_row) <= 0.03 * size[1] + 1
    assert np.all(within & ((edge <= 5) | on_disc))  # the lines are a few pixels wide
    # ... and the rectangle is there on all four sides, along most of each side.
    width, height = high - low
    for distance, length in (
        (columns - low[0], height),
        (high[0] - columns, height),
        (rows - low[1], width),
        (high[1] - rows, width),
    ):
        on_side = np.abs(distance) <= 2
        assert len(np.unique(np.rint(rows[on_side] if length == height else columns[on_side]))) >= 0.8 * length
    # The box is where the lesion is: it contains the lesion's centre.
    column, row = _pixel_of(fused, view_name, fused.centre)
    assert low[0] <= column <= high[0] and low[1] <= row <= high[1]


def test_boxes_show_in_the_axial_view_only(fused):
    """A VOC box is an axial-slice annotation: cut by the coronal plane, a lesion's boxes would stack
    into a block over the PET, so Slicer is told to draw them in the Red (axial) view only."""
    fused.segmentation.GetDisplayNode().SetVisibility(False)
    box_colour = np.array(BOX_RGB) * 255.0
    for view_name, size, expected in (("Red", RED_SIZE, True), ("Green", GREEN_SIZE, False)):
        picture = fused.render(view_name, size).astype(float)
        box_pixels = np.all(np.abs(picture - box_colour) <= 40.0, axis=-1)
        assert bool(box_pixels.sum() > 20) is expected, view_name


def _box_centre(fused: FusedScene) -> np.ndarray:
    centre = [0.0, 0.0, 0.0]
    fused.box.GetCenterWorld(centre)
    return np.array(centre)


def test_views_centre_on_a_point_and_pictures_are_written_as_png(fused, tmp_path):
    from PETCTLesionsLib.errors import OutputExistsError
    from PETCTLesionsLib.mrml.rendering import centre_view_on, write_view_png

    pictures = {}
    for view_name, size in (("Red", RED_SIZE), ("Green", GREEN_SIZE)):
        path = tmp_path / f"fused_{view_name.lower()}.png"
        pictures[view_name] = write_view_png(path, view_name, size)
        written = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
        np.testing.assert_array_equal(written, pictures[view_name])
        with pytest.raises(OutputExistsError):
            write_view_png(path, view_name, size)
        # The centred lesion is in the middle of the picture.
        column, row = _pixel_of(fused, view_name, fused.centre)
        assert abs(column - (size[0] - 1) / 2) <= 1.0 and abs(row - (size[1] - 1) / 2) <= 1.0

    # Moving one view moves only that view, and the point it was moved to is at its centre.
    point = fused.centre + np.array([30.0, -20.0, 8.0])
    before = np.array(fused.slicer.mrmlScene.GetNodeByID("vtkMRMLSliceNodeGreen").GetSliceToRAS().GetElement(1, 3))
    centre_view_on("Red", point)
    assert fused.slicer.mrmlScene.GetNodeByID("vtkMRMLSliceNodeGreen").GetSliceToRAS().GetElement(1, 3) == before
    column, row = _pixel_of(fused, "Red", point)
    assert abs(column - (RED_SIZE[0] - 1) / 2) <= 1.0 and abs(row - (RED_SIZE[1] - 1) / 2) <= 1.0


def test_unknown_view_is_refused(mrml_scene):
    from PETCTLesionsLib.mrml.rendering import render_slice_view

    with pytest.raises(ValueError, match="Purple"):
        render_slice_view("Purple")


# ------------------------------------------------------------------ the study pictures (demo, predict)


@pytest.fixture(scope="module")
def study_views(tmp_path_factory, rendering_available):
    """A generated Lung-PET-CT-Dx study (DICOM) and its true lesions as a detection, drawn by
    ``write_detection_views`` as the demo draws its detections; what the checks need is kept
    from the scene before it is cleared."""
    import slicer

    from PETCTLesionsLib import detection
    from PETCTLesionsLib.geometry import lps_to_ras
    from PETCTLesionsLib.measurements import measure_lesions
    from PETCTLesionsLib.mrml import headless
    from PETCTLesionsLib.mrml.boxes import roi_nodes
    from PETCTLesionsLib.mrml.rendering import STUDY_VIEWS, slice_logic, view_annotations, write_detection_views
    from PETCTLesionsLib.study import load_study
    from PETCTLesionsLib.synthetic.synth import generate_dataset

    root = tmp_path_factory.mktemp("study_views")
    # Seed 4: the largest lesion lies in the right lung, far off the body's centre.
    (case,) = generate_dataset(root / "data", cases=1, seed=4, size="small", flavour="lung", n_lesions=3)
    loaded = load_study([case.study_dir])
    pet_grid = detection.Grid.from_sitk(loaded.pet_suv)
    truth = sitk.GetArrayFromImage(sitk.ReadImage(str(case.nnunet_files["label"])))
    lesion_map, count = detection.lesions_from_probability(truth.astype(np.float32), 0.5, 0.0, pet_grid.voxel_volume_ml)
    suv = sitk.GetArrayFromImage(loaded.pet_suv)
    found = detection.Detection(
        pet_grid, truth.astype(np.float32), lesion_map, measure_lesions(lesion_map, count, suv, pet_grid), 0.5, 0.0
    )
    headless.reset_scene()
    try:
        paths = write_detection_views(loaded, found, root / "views")
        views = {}
        for (view_name, file_name), path in zip(STUDY_VIEWS, paths):
            assert path.name == file_name
            logic = slice_logic(view_name)
            views[view_name] = {
                "picture": sitk.GetArrayFromImage(sitk.ReadImage(str(path))),
                "xy_to_ras": slicer.util.arrayFromVTKMatrix(logic.GetSliceNode().GetXYToRAS()),
                "offset": logic.GetSliceOffset(),
                "annotations": view_annotations(view_name),
            }
        axial_z = views["Red"]["offset"]
        boxes = []
        for node in roi_nodes(slicer.mrmlScene):
            bounds = [0.0] * 6
            node.GetRASBounds(bounds)
            if bounds[4] <= axial_z <= bounds[5]:  # cut by the axial view's slice
                centre = [0.0] * 3
                node.GetCenterWorld(centre)
                boxes.append({"bounds": bounds, "centre": centre, "colour": node.GetDisplayNode().GetColor()})
        legend = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLColorLegendDisplayNode")
        pet_colours = legend.GetPrimaryDisplayNode().GetColorNode().GetLookupTable()
        return {
            "views": views,
            "ct_grid": detection.Grid.from_sitk(loaded.ct),
            "ct_hu": sitk.GetArrayFromImage(loaded.ct),
            "largest_ras": np.array(lps_to_ras(found.lesions[0].centroid_lps)),
            "boxes": boxes,
            "legend_frame": (legend.GetPosition(), legend.GetSize()),
            "pet_colours": np.array(
                [pet_colours.GetTableValue(n)[:3] for n in range(pet_colours.GetNumberOfTableValues())]
            ),
        }
    finally:
        headless.reset_scene()


def _picture_xy(xy_to_ras: np.ndarray, ras: np.ndarray, height: int) -> np.ndarray:
    """(column, row) in the picture (row 0 at the top) of RAS points ``ras`` (N, 3)."""
    xy = (np.linalg.inv(xy_to_ras) @ np.c_[ras, np.ones(len(ras))].T)[:2].T
    return np.c_[xy[:, 0], height - 1 - xy[:, 1]]


def _ct_corners_ras(grid, k: float) -> np.ndarray:
    """RAS of the outer corners (voxel edges, not centres) of CT slice ``k``."""
    i_edges, j_edges = (-0.5, grid.size[0] - 0.5), (-0.5, grid.size[1] - 0.5)
    corners = np.array([[i, j, k, 1.0] for i in i_edges for j in j_edges])
    return (grid.ijk_to_ras() @ corners.T)[:3].T


def test_study_views_show_the_whole_ct_with_the_body_centred(study_views):
    """The axial picture is the CT's whole field of view, patient and table centred in it: not
    panned to the lesion (which pushed the body aside, cut the table and left bands outside the
    CT), but moved only through-plane onto the CT slice through the largest lesion."""
    grid, hu = study_views["ct_grid"], study_views["ct_hu"]
    axial = study_views["views"]["Red"]
    height, width = axial["picture"].shape[:2]
    ras_to_ijk = np.linalg.inv(grid.ijk_to_ras())
    lesion_k = (ras_to_ijk @ np.r_[study_views["largest_ras"], 1.0])[2]
    k = (ras_to_ijk @ (axial["xy_to_ras"] @ np.array([width / 2, height / 2, 0.0, 1.0])))[2]
    # A CT slice itself (snapped), the one nearest the largest lesion's centre.
    assert k == pytest.approx(round(k), abs=1e-3) and abs(k - lesion_k) <= 0.5 + 1e-3
    k = int(round(k))
    # The CT slice's outer corners are the picture's corners: no band outside the CT on any side.
    corners = _picture_xy(axial["xy_to_ras"], _ct_corners_ras(grid, k), height)
    assert sorted(map(tuple, np.round(corners + 0.5).astype(int))) == [(0, 0), (0, height), (width, 0), (width, height)]
    # Everything that is not air on that slice (the body and the table under it) is in the picture,
    # and the body is centred left to right.
    rows, columns = np.nonzero(hu[k] > -500)
    voxels = np.c_[columns, rows, np.full(len(rows), k), np.ones(len(rows))]
    tissue = _picture_xy(axial["xy_to_ras"], (grid.ijk_to_ras() @ voxels.T)[:3].T, height)
    assert tissue.min() >= 0 and tissue[:, 0].max() <= width - 1 and tissue[:, 1].max() <= height - 1
    assert abs((tissue[:, 0].min() + tissue[:, 0].max()) / 2 - (width - 1) / 2) <= 0.05 * width
    # The coronal view too: the CT's width fills the picture, through the largest lesion.
    coronal = study_views["views"]["Green"]
    centre_ras = coronal["xy_to_ras"] @ np.array([width / 2, height / 2, 0.0, 1.0])
    assert abs(centre_ras[1] - study_views["largest_ras"][1]) <= grid.spacing[1] / 2 + 1e-3
    corners = _picture_xy(coronal["xy_to_ras"], _ct_corners_ras(grid, (grid.size[2] - 1) / 2), height)
    assert sorted(np.round(corners[:, 0] + 0.5).astype(int)) == [0, 0, width, width]


def _colour_mask(picture: np.ndarray, rgb, tolerance: float = 3.0) -> np.ndarray:
    return np.all(np.abs(picture.astype(float) - np.array(rgb) * 255.0) <= tolerance, axis=-1)


def test_study_views_tell_box_from_outline_and_the_box_handle_is_no_disc(study_views):
    """The box is drawn in a pale tint of its lesion's colour, the segment outline in the colour itself;
    the box's centre handle is a thin cross, not a filled disc that would read as a focus of uptake."""
    from PETCTLesionsLib.mrml.boxes import BOX_FILL_OPACITY, box_colour
    from PETCTLesionsLib.mrml.segmentations import lesion_colour

    axial = study_views["views"]["Red"]
    picture = axial["picture"]
    height = picture.shape[0]
    outline_rgb, box_rgb = lesion_colour(1), box_colour(lesion_colour(1))
    assert max(abs(a - b) for a, b in zip(outline_rgb, box_rgb)) * 255 >= 60  # far apart, not a shade
    # The box of lesion 1 on the slice shown: its node has that colour, and the picture has both.
    (box,) = [box for box in study_views["boxes"] if np.allclose(box["colour"], box_rgb, atol=1e-6)]
    # The outline runs inside the box, under its faint fill.
    under_fill = (1 - BOX_FILL_OPACITY) * np.array(outline_rgb) + BOX_FILL_OPACITY * np.array(box_rgb)
    outline = _colour_mask(picture, outline_rgb) | _colour_mask(picture, under_fill)
    box_pixels = _colour_mask(picture, box_rgb)
    assert outline.sum() > 10 and box_pixels.sum() > 40
    bounds = box["bounds"]
    corners = np.array([(x, y, box["centre"][2]) for x in bounds[0:2] for y in bounds[2:4]])
    corners = _picture_xy(axial["xy_to_ras"], corners, height)
    low, high = corners.min(axis=0), corners.max(axis=0)
    rows, columns = np.nonzero(box_pixels)
    assert np.all((columns >= low[0] - 3) & (columns <= high[0] + 3) & (rows >= low[1] - 3) & (rows <= high[1] + 3))
    # Around the box's centre, inside its edges, no 5 x 5 patch is all box colour: the handle is
    # strokes 3 pixels wide, not a disc (Slicer's default handle: 3 % of the view's height across).
    centre = np.round(_picture_xy(axial["xy_to_ras"], np.array([box["centre"]]), height)[0]).astype(int)
    reach = int(min((high - low) / 2)) - 4  # the edges are drawn 3 pixels wide
    assert reach >= 0.03 * height / 2
    near = box_pixels[centre[1] - reach : centre[1] + reach + 1, centre[0] - reach : centre[0] + reach + 1]
    assert near.sum() > 0  # the handle is there...
    assert not np.lib.stride_tricks.sliding_window_view(near, (5, 5)).all(axis=(-2, -1)).any()  # ... and thin


def test_study_views_carry_slice_position_windows_orientation_and_suv_colour_bar(study_views):
    views = study_views["views"]
    upper_left, left, right, top, bottom = 2, 6, 5, 7, 4  # vtkCornerAnnotation's positions
    for view_name, orientation, axis, letters in (
        ("Red", "Axial", "S", ("R", "L", "A", "P")),
        ("Green", "Coronal", "A", ("R", "L", "S", "I")),
    ):
        view = views[view_name]
        text = view["annotations"]
        assert text[upper_left].split("\n") == [
            f"{orientation} {axis}: {view['offset']:.1f} mm",
            "F: PET (50%) PET-Heat SUVbw 0-10",
            "B: CT W 350 L 40 (Mediastinum)",
        ]
        assert (text[left], text[right], text[top], text[bottom]) == letters
    # The axial slice's position is the largest lesion's S coordinate, to half a CT slice.
    assert abs(views["Red"]["offset"] - study_views["largest_ras"][2]) <= study_views["ct_grid"].spacing[2] / 2 + 1e-3

    picture = views["Red"]["picture"].astype(int)
    height, width = picture.shape[:2]
    white = np.all(picture >= 200, axis=-1)  # the text is white (shadowed); air around the body is black
    assert white[:45, :230].sum() > 150  # three lines, upper left
    middle = slice(height // 2 - 12, height // 2 + 12)
    assert white[middle, :16].sum() > 5 and white[middle, -16:].sum() > 5  # R and L at the edges
    assert white[:16, width // 2 - 12 : width // 2 + 12].sum() > 5  # A
    assert white[-16:, width // 2 - 12 : width // 2 + 12].sum() > 5  # P
    # The SUV colour bar: PET-Heat's own colours, from black at the bottom to white at the top
    # (SUV 0 to 10), in the legend's frame in the top right corner, with its text beside it.
    (x, y), (frame_width, frame_height) = study_views["legend_frame"]
    left_edge, bottom_edge = x * (1 - frame_width) * width, y * (1 - frame_height) * height
    frame = picture[
        int(height - bottom_edge - frame_height * height) : int(height - bottom_edge),
        int(left_edge) : int(left_edge + frame_width * width) + 1,
    ]
    colours = study_views["pet_colours"] * 255.0
    distance = np.abs(frame[:, :, None, :] - colours[None, None]).max(axis=-1)
    index = distance.argmin(axis=-1)
    on_bar = (distance.min(axis=-1) <= 2) & (frame[..., 0] - frame[..., 2] > 60)  # coloured, not grey text
    assert len(np.unique(index[on_bar])) > 40
    rows = np.nonzero(on_bar)[0]
    assert np.median(rows[index[on_bar] > 192]) < np.median(rows[index[on_bar] < 64])  # SUV goes up
    assert white[: int(height - bottom_edge), int(left_edge) :].sum() > 100  # labels and the title


def test_suv_colour_bar_follows_the_pet_window_and_colour_table(fused):
    """Slicer's colour legend of the PET display node: its range is the SUV window, its colours the
    PET's colour table, in every view that shows the PET, and the view's text follows the window too."""
    from PETCTLesionsLib.mrml.display import SUV_LEGEND_TITLE, set_pet_colormap, set_suv_window
    from PETCTLesionsLib.mrml.rendering import OffscreenSliceView, view_annotations

    legends = fused.slicer.mrmlScene.GetNodesByClass("vtkMRMLColorLegendDisplayNode")
    assert legends.GetNumberOfItems() == 1
    legend = legends.GetItemAsObject(0)
    assert legend.GetPrimaryDisplayNode() is fused.pet.GetDisplayNode()
    assert fused.pet.GetDisplayNode() is fused.pet.GetNthDisplayNode(0)  # still the volume's display node

    def legend_actor(view):
        (manager,) = [
            view.displayable_managers.GetNthDisplayableManager(n)
            for n in range(view.displayable_managers.GetDisplayableManagerCount())
            if view.displayable_managers.GetNthDisplayableManager(n).GetClassName()
            == "vtkMRMLColorLegendDisplayableManager"
        ]
        return manager.GetColorLegendActor(legend)

    with OffscreenSliceView("Green", GREEN_SIZE) as view:
        view.render()
        actor = legend_actor(view)
        assert actor.GetVisibility() and actor.GetTitle() == SUV_LEGEND_TITLE
        assert actor.GetLookupTable().GetRange() == pytest.approx((0.0, 10.0))
        set_suv_window(fused.pet, 2.0, 6.0)
        set_pet_colormap(fused.pet, "PET-Rainbow2")
        view.render()
        actor = legend_actor(view)
        assert actor.GetLookupTable().GetRange() == pytest.approx((2.0, 6.0))
        rainbow = fused.slicer.mrmlScene.GetFirstNodeByName("PET-Rainbow2").GetLookupTable()
        assert actor.GetLookupTable().GetTableValue(200) == pytest.approx(rainbow.GetTableValue(200))
    assert view_annotations("Green")[2].split("\n")[1] == "F: PET (50%) PET-Rainbow2 SUVbw 2-6"
    # Shown again, the study keeps one legend.
    from PETCTLesionsLib.mrml.display import show_fused_study

    show_fused_study(fused.ct, fused.pet)
    assert fused.slicer.mrmlScene.GetNodesByClass("vtkMRMLColorLegendDisplayNode").GetNumberOfItems() == 1
