"""Slice views as pictures: what Slicer's Red/Yellow/Green view shows, rendered offscreen.

A slice view in Slicer is two things drawn in one VTK renderer (``qMRMLSliceView``):

- the slice logic's image: Slicer's reslice of the background and foreground volumes,
  window/level, colour table and opacity blending (``vtkMRMLSliceLogic``), drawn by a
  ``vtkImageMapper`` with window 255 / level 127.5 (the CTK light box view does the same);
- Slicer's 2D displayable managers, instantiated for that renderer by the slice view
  displayable manager factory: segment outlines and fill
  (``vtkMRMLSegmentationsDisplayableManager2D``), markups such as VOC box ROIs
  (``vtkMRMLMarkupsDisplayableManager``) and colour legends such as the PET's SUV colour bar
  (``vtkMRMLColorLegendDisplayableManager``), drawn as the nodes' display nodes say;
- a corner annotation (``vtkCornerAnnotation``, the actor Slicer's DataProbe writes its layer
  lines into), here with what Slicer shows around the view rather than in it: the slice
  position (the slice controller's offset), the layers' windows, and orientation letters.

:class:`OffscreenSliceView` builds exactly that around an offscreen ``vtkRenderWindow`` instead
of a Qt widget, so the same pixels come out inside Slicer and headless (slicer-core, VTK's
EGL window on Mesa, no X server). Nothing here draws by itself: outlines, boxes, colours,
the colour bar and windowing are Slicer's own; only the annotation's text is composed here.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Dict, List, Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk
import slicer
import vtk
from vtk.util import numpy_support

from ..display import CT_WINDOW_PRESETS
from ..errors import SetupError
from ..fileio import atomic_output
from ..geometry import lps_to_ras
from .headless import application_logic, ensure_scene, in_slicer_application

if TYPE_CHECKING:
    from ..study import LoadedStudy

# The displayable managers a slice view needs for what this project shows. In Slicer the
# Segmentations, Markups and Colors modules register them with the slice view factory in their
# setup(); headless there are no modules, so this module does the registering.
SLICE_VIEW_DISPLAYABLE_MANAGERS = (
    "vtkMRMLSegmentationsDisplayableManager2D",
    "vtkMRMLMarkupsDisplayableManager",
    "vtkMRMLColorLegendDisplayableManager",
)
DEFAULT_SIZE = (512, 512)
# The corner annotation's text as Slicer's DataProbe draws it by default: Times 14 px with a shadow.
ANNOTATION_FONT_SIZE = 14
# A slice axis within this angle of a patient axis gets that axis' letter (R, L, A, P, S, I);
# further off, Slicer's label names the two or three axes it lies between (e.g. "RA").
ORIENTATION_LABEL_TOLERANCE_DEG = 30.0


class OffscreenRenderingError(SetupError):
    """No OpenGL context could be created (no display, no EGL/OSMesa): nothing can be rendered."""


def slice_logic(view_name: str) -> slicer.vtkMRMLSliceLogic:
    """The slice logic of the slice view with layout name ``view_name`` ("Red", "Yellow", "Green")."""
    ensure_scene()
    logic = application_logic().GetSliceLogicByLayoutName(view_name)
    if logic is None:
        raise ValueError(f"there is no slice view named {view_name!r}")
    return logic


def slice_node(view_name: str) -> slicer.vtkMRMLSliceNode:
    return slice_logic(view_name).GetSliceNode()


def centre_view_on(view_name: str, ras_point: Sequence[float]) -> None:
    """Move one slice view so that its slice goes through ``ras_point`` and the point is in its centre."""
    slice_node(view_name).JumpSliceByCentering(*(float(value) for value in ras_point[:3]))


def view_pixel_of_ras(view_name: str, ras_point: Sequence[float]) -> Tuple[float, float]:
    """(column, row) in a picture of the view (row 0 at the top) where ``ras_point`` is drawn.

    Uses the slice node's current XY-to-RAS matrix, so it describes the last picture while the
    node keeps the dimensions it was rendered at (headless it does; see :func:`render_slice_view`).
    """
    node = slice_node(view_name)
    ras_to_xy = vtk.vtkMatrix4x4()
    vtk.vtkMatrix4x4.Invert(node.GetXYToRAS(), ras_to_xy)
    x, y = ras_to_xy.MultiplyPoint((*(float(value) for value in ras_point[:3]), 1.0))[:2]
    height = node.GetDimensions()[1]
    # XY has its origin at the bottom-left pixel centre; picture rows count from the top.
    return x, height - 1 - y


def _window_preset_name(width: float, level: float) -> Optional[str]:
    for name, (preset_width, preset_level) in CT_WINDOW_PRESETS.items():
        if abs(width - preset_width) < 0.5 and abs(level - preset_level) < 0.5:
            return name
    return None


def _layer_line(prefix: str, volume: Optional[slicer.vtkMRMLScalarVolumeNode], opacity: Optional[float]) -> str:
    """One layer's line, as DataProbe's "F: name (50%)" / "B: name" with the layer's window added.

    A PET in SUVbw is named "PET" and given its colour table and its window as an SUV range;
    any other volume its DICOM modality (else its node name), window width and level, and the
    name of the project's window preset they are."""
    if volume is None:
        return ""
    from .study_nodes import dicom_attribute_above, is_suv_bw

    display = volume.GetDisplayNode()
    width, level = (display.GetWindow(), display.GetLevel()) if display is not None else (None, None)
    share = f" ({opacity * 100:.0f}%)" if opacity is not None else ""
    if is_suv_bw(volume):
        line = f"{prefix}: PET{share}"
        if display is not None:
            colours = display.GetColorNode()
            line += f" {colours.GetName()}" if colours is not None else ""
            line += f" SUVbw {level - width / 2:.4g}-{level + width / 2:.4g}"
        return line
    modality = dicom_attribute_above(
        volume, slicer.vtkMRMLSubjectHierarchyConstants.GetDICOMSeriesModalityAttributeName()
    )
    line = f"{prefix}: {modality or volume.GetName()}{share}"
    if display is None:
        return line
    preset = _window_preset_name(width, level)
    return f"{line} W {width:.4g} L {level:.4g}" + (f" ({preset})" if preset else "")


def view_annotations(view_name: str) -> Dict[int, str]:
    """The text around a slice view, by ``vtkCornerAnnotation`` position, from the scene as it is now.

    - upper left: the view's orientation and slice position as Slicer's slice controller shows
      it ("S: -42.5 mm": the slice offset along the positive axis of the slice normal), then
      DataProbe's layer lines, foreground over background, each with its window (at the top,
      where an axial view has air in front of the patient; the table lies at the bottom);
    - the four edges: the patient direction each edge of the picture faces (R on the left of an
      axial view seen from the feet, as radiologists read it).
    """
    logic = slice_logic(view_name)
    node = logic.GetSliceNode()
    composite = logic.GetSliceCompositeNode()
    scene = logic.GetMRMLScene()
    slice_to_ras = node.GetSliceToRAS()
    axes = [[slice_to_ras.GetElement(row, column) for row in range(3)] for column in range(3)]

    def label(axis: int, positive: bool) -> str:
        return node.GetDirectionLabel(axes[axis], positive, ORIENTATION_LABEL_TOLERANCE_DEG)

    lines = [
        f"{node.GetOrientation()} {label(2, True)}: {logic.GetSliceOffset():.1f} mm",
        _layer_line("F", scene.GetNodeByID(composite.GetForegroundVolumeID() or ""), composite.GetForegroundOpacity()),
        _layer_line("B", scene.GetNodeByID(composite.GetBackgroundVolumeID() or ""), None),
    ]
    return {
        vtk.vtkCornerAnnotation.UpperLeft: "\n".join(line for line in lines if line),
        vtk.vtkCornerAnnotation.LeftEdge: label(0, False),
        vtk.vtkCornerAnnotation.RightEdge: label(0, True),
        vtk.vtkCornerAnnotation.UpperEdge: label(1, True),
        vtk.vtkCornerAnnotation.LowerEdge: label(1, False),
    }


def _new_corner_annotation() -> vtk.vtkCornerAnnotation:
    """A corner annotation styled as DataProbe styles the slice views' one (fixed size, shadowed)."""
    annotation = vtk.vtkCornerAnnotation()
    annotation.SetMaximumFontSize(ANNOTATION_FONT_SIZE)
    annotation.SetMinimumFontSize(ANNOTATION_FONT_SIZE)
    annotation.SetNonlinearFontScaleFactor(1)
    text = annotation.GetTextProperty()
    text.SetFontFamilyToTimes()
    text.SetShadow(1)
    return annotation


def _new_render_window() -> vtk.vtkRenderWindow:
    """An offscreen render window; EGL directly when headless on Linux without a display.

    VTK's default window factory on Linux tries X first and logs a warning when there is no
    X server before falling back to EGL; going to EGL directly avoids that noise.
    """
    window = None
    headless_linux = (
        not in_slicer_application()
        and sys.platform.startswith("linux")
        and not os.environ.get("DISPLAY")
        and not os.environ.get("WAYLAND_DISPLAY")
    )
    if headless_linux:
        try:
            from vtkmodules.vtkRenderingOpenGL2 import vtkEGLRenderWindow

            window = vtkEGLRenderWindow()
        except ImportError:  # a VTK built without EGL: let the factory choose (OSMesa, ...)
            window = None
    if window is None:
        window = vtk.vtkRenderWindow()
    window.SetOffScreenRendering(1)
    # No multisampling: the picture must not depend on the driver's antialiasing.
    window.SetMultiSamples(0)
    return window


def _register_displayable_managers() -> slicer.vtkMRMLSliceViewDisplayableManagerFactory:
    """Slicer's slice view factory with the Segmentations and Markups 2D managers registered.

    The factory is Slicer's process-wide singleton: inside Slicer the modules have registered
    these (and more: crosshair, ruler, ...) already; headless this does what their setup() does.
    """
    factory = slicer.vtkMRMLSliceViewDisplayableManagerFactory.GetInstance()
    if factory.GetMRMLApplicationLogic() is None:
        factory.SetMRMLApplicationLogic(application_logic())
    for name in SLICE_VIEW_DISPLAYABLE_MANAGERS:
        if not factory.IsDisplayableManagerRegistered(name):
            factory.RegisterDisplayableManager(name)
    return factory


def _catch_up_colour_legends(composite: slicer.vtkMRMLSliceCompositeNode) -> None:
    """Let a new view's colour legend manager make the legends of nodes that are already in the scene.

    ``vtkMRMLColorLegendDisplayableManager`` makes a legend's actor when the legend node is added,
    or when the view's layers are changed (its ModifiedEvent with a layer flag set); a Qt view
    exists before the user loads anything, this view is made afterwards. Announcing the layers as
    changed replays what the manager missed. Not "interacting", so slice linking does not broadcast it.
    """
    layers = (
        slicer.vtkMRMLSliceCompositeNode.ForegroundVolumeFlag
        | slicer.vtkMRMLSliceCompositeNode.BackgroundVolumeFlag
        | slicer.vtkMRMLSliceCompositeNode.LabelVolumeFlag
    )
    flags = composite.GetInteractionFlags()
    composite.SetInteractionFlags(layers)
    try:
        composite.Modified()
    finally:
        composite.SetInteractionFlags(flags)


class OffscreenSliceView:
    """A slice view without a widget: one renderer holding the slice logic's image and
    Slicer's 2D displayable managers, in an offscreen render window of ``size`` pixels;
    ``annotate`` adds the text around the view (:func:`view_annotations`)."""

    def __init__(self, view_name: str = "Red", size: Tuple[int, int] = DEFAULT_SIZE, annotate: bool = False) -> None:
        width, height = (int(value) for value in size)
        if width < 1 or height < 1:
            raise ValueError(f"picture size must be positive, got {size!r}")
        self.view_name = view_name
        self.size = (width, height)
        self.logic = slice_logic(view_name)
        self.window = _new_render_window()
        self.window.SetSize(width, height)
        self.renderer = vtk.vtkRenderer()
        self.renderer.SetBackground(0.0, 0.0, 0.0)  # a slice view's background outside the volumes
        self.window.AddRenderer(self.renderer)
        # The displayable managers look for an interactor on the render window, as a Qt view
        # has one; a generic interactor needs no window system and never starts an event loop.
        self.interactor = vtk.vtkGenericRenderWindowInteractor()
        self.window.SetInteractor(self.interactor)
        # The slice logic's blended RGBA image, drawn 1:1 in the bottom-left corner as in a 1x1 light box.
        self.image_mapper = vtk.vtkImageMapper()
        self.image_mapper.SetColorWindow(255.0)
        self.image_mapper.SetColorLevel(127.5)
        self.image_mapper.SetInputConnection(self.logic.GetImageDataConnection())
        self.image_actor = vtk.vtkActor2D()
        self.image_actor.SetMapper(self.image_mapper)
        self.renderer.AddViewProp(self.image_actor)
        self.displayable_managers = _register_displayable_managers().InstantiateDisplayableManagers(self.renderer)
        self.displayable_managers.SetMRMLDisplayableNode(self.logic.GetSliceNode())
        _catch_up_colour_legends(self.logic.GetSliceCompositeNode())
        self.annotation = _new_corner_annotation() if annotate else None
        if self.annotation is not None:
            self.renderer.AddViewProp(self.annotation)
        self._capture = vtk.vtkWindowToImageFilter()
        self._capture.SetInput(self.window)
        self._capture.SetInputBufferTypeToRGB()
        self._capture.ReadFrontBufferOff()

    def displayable_manager_names(self) -> Tuple[str, ...]:
        group = self.displayable_managers
        return tuple(
            group.GetNthDisplayableManager(n).GetClassName() for n in range(group.GetDisplayableManagerCount())
        )

    def render(self, fit: bool = False) -> np.ndarray:
        """The view as a ``[row, column, 3]`` uint8 RGB picture, row 0 at the top.

        The slice node gets the picture's size as its dimensions (what a view's resize does,
        keeping the field of view's scale); ``fit=True`` then fits the view to its volumes.
        """
        width, height = self.size
        self.logic.ResizeSliceNode(width, height)
        if fit:  # to the background volume (what FitSliceToAll does in Slicer 5.6; 5.8+ fit all layers)
            background = self.logic.GetSliceCompositeNode().GetBackgroundVolumeID()
            volume = self.logic.GetMRMLScene().GetNodeByID(background) if background else None
            if volume is not None:
                self.logic.FitSliceToVolume(volume, width, height)
        if self.annotation is not None:
            for position, text in view_annotations(self.view_name).items():
                self.annotation.SetText(position, text)
        self.window.Render()
        if not self.window.SupportsOpenGL():
            raise OffscreenRenderingError(
                f"VTK could not create an OpenGL context for {self.window.GetClassName()} "
                "(no display and no working EGL/OSMesa driver)"
            )
        self._capture.Modified()
        self._capture.Update()
        image = self._capture.GetOutput()
        columns, rows, _ = image.GetDimensions()
        pixels = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars()).reshape(rows, columns, -1)
        # OpenGL rows start at the bottom of the window; a picture's at the top.
        return np.ascontiguousarray(pixels[::-1, :, :3])

    def close(self) -> None:
        """Detach the displayable managers from the scene and release the OpenGL context."""
        self.displayable_managers.SetMRMLDisplayableNode(None)
        self.renderer.RemoveAllViewProps()
        self.window.Finalize()

    def __enter__(self) -> OffscreenSliceView:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def render_slice_view(
    view_name: str = "Red", size: Tuple[int, int] = DEFAULT_SIZE, fit: bool = False, annotate: bool = False
) -> np.ndarray:
    """What the slice view ``view_name`` shows, at ``size`` (width, height) pixels: uint8 RGB, rows top-down;
    ``annotate`` writes the slice position, the windows and the orientation letters on it.

    Headless the slice node keeps the picture's dimensions afterwards (so :func:`view_pixel_of_ras`
    maps onto the picture). Inside Slicer the user's view is a real widget of another size, so its
    dimensions and field of view are put back after rendering.
    """
    node = slice_logic(view_name).GetSliceNode()
    saved = _view_geometry(node) if in_slicer_application() else None
    try:
        with OffscreenSliceView(view_name, size, annotate=annotate) as view:
            return view.render(fit=fit)
    finally:
        if saved is not None:
            _restore_view_geometry(node, saved)


def _view_geometry(node: slicer.vtkMRMLSliceNode) -> Tuple[Tuple[int, ...], Tuple[float, ...], Tuple[float, ...]]:
    return tuple(node.GetDimensions()), tuple(node.GetFieldOfView()), tuple(node.GetXYZOrigin())


def _restore_view_geometry(node: slicer.vtkMRMLSliceNode, saved: Tuple[Tuple, Tuple, Tuple]) -> None:
    dimensions, field_of_view, origin = saved
    was_modifying = node.StartModify()
    try:
        node.SetDimensions(*dimensions)
        node.SetFieldOfView(*field_of_view)
        node.SetXYZOrigin(*origin)
    finally:
        node.EndModify(was_modifying)


def write_view_png(
    path: os.PathLike,
    view_name: str = "Red",
    size: Tuple[int, int] = DEFAULT_SIZE,
    fit: bool = False,
    overwrite: bool = False,
    annotate: bool = False,
) -> np.ndarray:
    """Render the view and write it as an 8-bit RGB PNG (atomically, never over an existing file
    unless ``overwrite``); returns the picture written."""
    pixels = render_slice_view(view_name, size, fit=fit, annotate=annotate)
    image = sitk.GetImageFromArray(pixels, isVector=True)
    with atomic_output(Path(path), overwrite=overwrite) as tmp:
        sitk.WriteImage(image, str(tmp))
    return pixels


def offscreen_rendering_problem() -> Optional[str]:
    """None when an offscreen OpenGL context can be made here, else why not (for skipping tests)."""
    try:
        window = _new_render_window()
        window.SetSize(4, 4)
        window.Render()
        supported = bool(window.SupportsOpenGL())
        window.Finalize()
    except Exception as error:  # a VTK without any usable OpenGL window class
        return f"VTK offscreen render window failed: {error}"
    return None if supported else "VTK could not create an OpenGL context (no display, no EGL/OSMesa)"


# The views a reviewer looks at first: axial and coronal, each with its picture's file name.
STUDY_VIEWS = (("Red", "slicer_axial_fused.png"), ("Green", "slicer_coronal_fused.png"))


def frame_study_views(
    ct_node: slicer.vtkMRMLScalarVolumeNode,
    through_ras: Optional[Sequence[float]] = None,
    size: Tuple[int, int] = DEFAULT_SIZE,
) -> None:
    """The study's views sized as the pictures and fitted to the whole CT (the patient and the table
    centred, no part of the view outside the CT's field of view when the aspects agree), then each
    moved along its normal only, onto the CT slice through ``through_ras``: not panned, since centring
    on a lesion off the body's centre pushes the body to the side and the view past the CT's edge.
    (The PET's wider field of view holds no anatomy, so the CT, not the PET, is fitted.)"""
    for view_name, _ in STUDY_VIEWS:
        node = slice_node(view_name)
        logic = slice_logic(view_name)
        node.SetDimensions(*size, 1)
        logic.FitSliceToVolume(ct_node, *size)
        if through_ras is not None:
            node.JumpSliceByOffsetting(*(float(value) for value in through_ras[:3]))
        logic.SnapSliceOffsetToIJK()  # a CT slice itself, as the user steps through them


def write_detection_views(loaded: LoadedStudy, found, folder: Path, overwrite: bool = False) -> List[Path]:
    """A loaded DICOM study and its detections as the module shows them, written as PNGs of the Slicer views.

    The study (``loaded``, as ``study.load_study`` gives it: the one the detections were found in,
    not read again) is added to the (headless) scene, shown fused with the mediastinum window and
    the SUV colour bar, the detections (``found``, a ``detection.Detection`` on its PET grid) added
    as segments and boxes, and the axial and coronal views fitted to the CT and moved to the slices
    through the largest lesion; each picture carries the view's text (:func:`view_annotations`).
    """
    from .detection_nodes import add_detection_nodes
    from .display import show_fused_study
    from .study_nodes import add_study_nodes

    ensure_scene()
    ct_node, pet_node = add_study_nodes(loaded)
    show_fused_study(ct_node, pet_node, preset="Mediastinum")
    add_detection_nodes(found, pet_node, ct_node)
    largest = lps_to_ras(found.lesions[0].centroid_lps) if found.lesions else None
    frame_study_views(ct_node, largest, DEFAULT_SIZE)
    written = []
    for view_name, file_name in STUDY_VIEWS:
        write_view_png(Path(folder) / file_name, view_name, DEFAULT_SIZE, overwrite=overwrite, annotate=True)
        written.append(Path(folder) / file_name)
    return written
