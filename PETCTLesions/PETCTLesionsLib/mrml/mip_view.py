"""The PET MIP view: the PET as a maximum-intensity projection in a 3D view, and a click on it.

Readers find lesions on the MIP first. The PET is volume-rendered in a 3D view with the view's
ray casting set to maximum-intensity projection, in inverted grey over the SUV window (SUV at
the window's bottom white, at its top black, on a white background, as nuclear medicine reads
it), with the lesion segments drawn as surfaces; the view rotates as every Slicer 3D view does.
A click on a hot spot sends the slice views to the hottest PET voxel along the ray under the
mouse (:func:`PETCTLesionsLib.interactive.mip.hottest_voxel_on_ray`), the voxel the MIP pixel shows.

Volume rendering is set through Slicer's VolumeRendering module logic (in the application its
module's; headless one made here, as ``headless.py`` makes the others).
"""

from __future__ import annotations

from typing import Optional, Tuple

import numpy as np
import slicer
import vtk

from ..display import DEFAULT_SUV_WINDOW
from ..errors import InputError
from ..geometry import lps_to_ras
from ..interactive.mip import hottest_voxel_on_ray, ray_through
from .headless import application_logic, ensure_scene, in_slicer_application
from .review import centre_views_on
from .study_nodes import is_suv_bw
from .volumes import grid_from_volume_node

Ras = Tuple[float, float, float]
MIP_VIEW_NAME = "PET MIP"
WHITE = (1.0, 1.0, 1.0)
_headless_logic: Optional[vtk.vtkObject] = None


def volume_rendering_logic() -> slicer.vtkSlicerVolumeRenderingLogic:
    """The VolumeRendering module's logic (the application's; headless, one bound to the scene once)."""
    global _headless_logic
    if in_slicer_application():
        return slicer.modules.volumerendering.logic()
    scene = ensure_scene()
    if _headless_logic is None or _headless_logic.GetMRMLScene() is not scene:
        logic = slicer.vtkSlicerVolumeRenderingLogic()
        logic.SetMRMLApplicationLogic(application_logic())
        logic.SetMRMLScene(scene)
        application_logic().SetModuleLogic("VolumeRendering", logic)
        _headless_logic = logic
    return _headless_logic


def mip_view_node(scene: slicer.vtkMRMLScene) -> slicer.vtkMRMLViewNode:
    """The 3D view that shows the MIP: the first 3D view of the layout (one is made where none exists, headless)."""
    view = scene.GetFirstNodeByClass("vtkMRMLViewNode")
    if view is None:
        view = scene.AddNewNodeByClass("vtkMRMLViewNode")
        view.SetLayoutName("1")
    return view


def show_pet_mip(
    pet_node: slicer.vtkMRMLScalarVolumeNode,
    suv_window: Tuple[float, float] = DEFAULT_SUV_WINDOW,
    view_node: Optional[slicer.vtkMRMLViewNode] = None,
    segmentation: Optional[slicer.vtkMRMLSegmentationNode] = None,
) -> slicer.vtkMRMLVolumeRenderingDisplayNode:
    """Show ``pet_node`` (SUVbw) as an inverted-grey MIP over ``suv_window`` in ``view_node`` (default:
    the first 3D view), with ``segmentation``'s lesions as surfaces; returns the volume rendering display node."""
    if not is_suv_bw(pet_node):
        raise InputError(f"PET volume {pet_node.GetName()!r} is not in SUVbw; load it through the module first")
    suv_min, suv_max = (float(v) for v in suv_window)
    if not suv_max > suv_min:
        raise InputError(f"SUV window must have its top above its bottom (got {suv_min:g} to {suv_max:g})")
    scene = pet_node.GetScene()
    view = view_node or mip_view_node(scene)
    display = volume_rendering_logic().CreateDefaultVolumeRenderingNodes(pet_node)
    _inverted_grey(display.GetVolumePropertyNode().GetVolumeProperty(), suv_min, suv_max)
    display.SetViewNodeIDs([view.GetID()])  # the MIP in its view only
    display.SetVisibility(True)
    # Maximum-intensity projection is a property of the view's ray casting, not of the volume.
    view.SetRaycastTechnique(slicer.vtkMRMLViewNode.MaximumIntensityProjection)
    view.SetBackgroundColor(*WHITE)
    view.SetBackgroundColor2(*WHITE)
    view.SetBoxVisible(False)
    view.SetAxisLabelsVisible(False)
    if segmentation is not None:
        segmentation.CreateClosedSurfaceRepresentation()
        segments_display = segmentation.GetDisplayNode()
        if segments_display is not None:
            segments_display.SetVisibility3D(True)
    return display


def _inverted_grey(volume_property: vtk.vtkVolumeProperty, suv_min: float, suv_max: float) -> None:
    """SUV ``suv_min`` and below white, ``suv_max`` and above black, linear between; every voxel opaque
    (a MIP shows the ray's maximum, whatever lies in front of it)."""
    colours = volume_property.GetRGBTransferFunction()
    colours.RemoveAllPoints()
    colours.AddRGBPoint(suv_min, *WHITE)
    colours.AddRGBPoint(suv_max, 0.0, 0.0, 0.0)
    opacity = volume_property.GetScalarOpacity()
    opacity.RemoveAllPoints()
    opacity.AddPoint(suv_min, 1.0)
    opacity.AddPoint(suv_max, 1.0)
    volume_property.SetInterpolationTypeToNearest()  # each voxel's own SUV, as the MIP's hottest voxel is found
    volume_property.ShadeOff()


def ray_under_mouse(renderer: vtk.vtkRenderer, x: float, y: float) -> Tuple[Ras, Ras]:
    """The viewing ray under display point (``x``, ``y``) of a 3D view: its points on the near and far
    clipping planes, RAS (the renderer's world coordinates)."""
    points = []
    for depth in (0.0, 1.0):
        renderer.SetDisplayPoint(float(x), float(y), depth)
        renderer.DisplayToWorld()
        world = renderer.GetWorldPoint()
        points.append(tuple(float(world[axis] / world[3]) for axis in range(3)))
    return points[0], points[1]


def hottest_voxel_under_ray(pet_node: slicer.vtkMRMLScalarVolumeNode, near_ras: Ras, far_ras: Ras) -> Optional[Ras]:
    """RAS centre of the hottest PET voxel on the ray from ``near_ras`` through ``far_ras`` (None: the ray misses
    the PET)."""
    if pet_node.GetParentTransformNode() is not None:
        raise InputError(f"PET volume {pet_node.GetName()!r} is under a transform; harden it first")
    grid = grid_from_volume_node(pet_node)
    origin, direction = ray_through(lps_to_ras(near_ras), lps_to_ras(far_ras))  # RAS <-> LPS: one flip
    voxel = hottest_voxel_on_ray(slicer.util.arrayFromVolume(pet_node), grid, origin, direction)
    if voxel is None:
        return None
    k, j, i = voxel
    return lps_to_ras(grid.index_to_lps(np.array([i, j, k], dtype=float)))


def centre_on_mip_click(pet_node: slicer.vtkMRMLScalarVolumeNode, near_ras: Ras, far_ras: Ras) -> Optional[Ras]:
    """A click on the MIP: every slice view centred on the hottest voxel under it; that voxel's RAS, or None."""
    ras = hottest_voxel_under_ray(pet_node, near_ras, far_ras)
    if ras is not None:
        centre_views_on(pet_node.GetScene(), ras)
    return ras
