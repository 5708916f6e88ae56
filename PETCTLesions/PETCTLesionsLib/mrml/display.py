"""Fused PET/CT display on Slicer nodes: CT window presets, PET colour map in SUV, slice views.

One call, :func:`show_fused_study`, sets everything a reader expects when a study opens
(the SUV colour bar included); the smaller functions serve the module's buttons and sliders.
"""

from __future__ import annotations

from typing import List, Tuple

import slicer

from ..display import (
    CT_WINDOW_PRESETS,
    DEFAULT_CT_PRESET,
    DEFAULT_PET_COLORMAP,
    DEFAULT_PET_OPACITY,
    DEFAULT_SUV_WINDOW,
    PET_COLORMAPS,
)
from ..errors import InputError
from .headless import application_logic

# The PET's colour bar: Slicer's colour legend (a vtkMRMLColorLegendDisplayNode on the PET, drawn by
# the Colors module's vtkMRMLColorLegendDisplayableManager in every view showing the PET; Slicer 5.0+).
# It follows the PET display node: its colour table and its window as the range.
SUV_LEGEND_TITLE = "SUVbw"
# Vertical, near the views' top-right corner (fractions of the view; its title goes above the bar, so
# not at the very top): beside the body in an axial view, and clear of the middle of the right edge,
# where the slice pictures put their orientation letter.
SUV_LEGEND_POSITION = (0.97, 0.9)
SUV_LEGEND_SIZE = (0.12, 0.36)


def _display_node(volume_node: slicer.vtkMRMLScalarVolumeNode) -> slicer.vtkMRMLScalarVolumeDisplayNode:
    if volume_node.GetDisplayNode() is None:
        volume_node.CreateDefaultDisplayNodes()
    return volume_node.GetDisplayNode()


def apply_ct_preset(ct_node: slicer.vtkMRMLScalarVolumeNode, name: str) -> None:
    """Set the CT window to one of the project's presets (Mediastinum W350/L40, Lung W1400/L-700, Bone)."""
    if name not in CT_WINDOW_PRESETS:
        raise InputError(f"unknown CT window preset {name!r}; choose one of {', '.join(CT_WINDOW_PRESETS)}")
    width, level = CT_WINDOW_PRESETS[name]
    display = _display_node(ct_node)
    display.SetAutoWindowLevel(False)
    display.SetWindowLevel(width, level)


def set_pet_colormap(pet_node: slicer.vtkMRMLScalarVolumeNode, name: str) -> None:
    """Colour the PET with one of Slicer's PET colour tables (PET-Heat, PET-Rainbow2, PET-DICOM)."""
    if name not in PET_COLORMAPS:
        raise InputError(f"unknown PET colour map {name!r}; choose one of {', '.join(PET_COLORMAPS)}")
    scene = pet_node.GetScene()
    color_node = next(
        (node for node in scene.GetNodesByClass("vtkMRMLColorNode") if node.GetName() == name),
        None,
    )
    if color_node is None:
        raise ValueError(f"the scene has no colour table named {name!r}")
    _display_node(pet_node).SetAndObserveColorNodeID(color_node.GetID())


def set_suv_window(pet_node: slicer.vtkMRMLScalarVolumeNode, suv_min: float, suv_max: float) -> None:
    """Map SUV ``suv_min``..``suv_max`` onto the colour table (values above saturate)."""
    if not suv_max > suv_min:
        raise InputError(f"SUV window maximum ({suv_max}) must be above its minimum ({suv_min})")
    display = _display_node(pet_node)
    display.SetAutoWindowLevel(False)
    display.SetWindowLevelMinMax(float(suv_min), float(suv_max))


def show_suv_colour_legend(pet_node: slicer.vtkMRMLScalarVolumeNode) -> slicer.vtkMRMLColorLegendDisplayNode:
    """The PET's SUV colour bar (Slicer's colour legend of its display node), shown; the existing one
    is reused, so calling again adds nothing. Its range is the SUV window, its colours the PET's table."""
    display = _display_node(pet_node)
    # A static method of the Colors module logic (vtkSlicerColorLogic, Slicer 5.0+): the same node the
    # Colors module's "Color legend" section and the Data module's "Show color legend" create.
    legend = slicer.vtkSlicerColorLogic.AddDefaultColorLegendDisplayNode(display)
    if legend is None:
        raise ValueError(f"could not add a colour legend to PET volume {pet_node.GetName()!r}")
    was_modifying = legend.StartModify()
    try:
        legend.SetTitleText(SUV_LEGEND_TITLE)
        legend.SetOrientation(slicer.vtkMRMLColorLegendDisplayNode.Vertical)
        legend.SetPosition(*SUV_LEGEND_POSITION)
        legend.SetSize(*SUV_LEGEND_SIZE)
        legend.SetVisibility(True)
    finally:
        legend.EndModify(was_modifying)
    return legend


def slice_composite_nodes(scene: slicer.vtkMRMLScene) -> List[slicer.vtkMRMLSliceCompositeNode]:
    return [
        scene.GetNthNodeByClass(i, "vtkMRMLSliceCompositeNode")
        for i in range(scene.GetNumberOfNodesByClass("vtkMRMLSliceCompositeNode"))
    ]


def set_pet_opacity(scene: slicer.vtkMRMLScene, opacity: float) -> None:
    """Opacity of the PET (foreground) layer in every slice view."""
    if not 0.0 <= opacity <= 1.0:
        raise InputError(f"PET opacity must be between 0 and 1, got {opacity}")
    for composite in slice_composite_nodes(scene):
        composite.SetForegroundOpacity(float(opacity))


def show_fused_study(
    ct_node: slicer.vtkMRMLScalarVolumeNode,
    pet_node: slicer.vtkMRMLScalarVolumeNode,
    preset: str = DEFAULT_CT_PRESET,
    suv_window: Tuple[float, float] = DEFAULT_SUV_WINDOW,
    pet_colormap: str = DEFAULT_PET_COLORMAP,
    opacity: float = DEFAULT_PET_OPACITY,
) -> None:
    """CT in a window preset behind the PET colour map in SUV with its colour bar, in every slice view,
    linked and fitted."""
    apply_ct_preset(ct_node, preset)
    set_pet_colormap(pet_node, pet_colormap)
    set_suv_window(pet_node, *suv_window)
    show_suv_colour_legend(pet_node)
    scene = ct_node.GetScene()
    for composite in slice_composite_nodes(scene):
        composite.SetBackgroundVolumeID(ct_node.GetID())
        composite.SetForegroundVolumeID(pet_node.GetID())
        composite.SetLinkedControl(True)
    set_pet_opacity(scene, opacity)
    fit_slice_views_to(ct_node)


def fit_slice_views_to(volume_node: slicer.vtkMRMLVolumeNode) -> None:
    """Centre and zoom every slice view on ``volume_node`` (the CT: the PET's wider field of view
    holds no anatomy), as Slicer's FitSliceToAll does for each view, but on this volume alone:
    that one fits to the background volume in Slicer 5.6 and to all layers from 5.8 on."""
    logics = application_logic().GetSliceLogics()
    for index in range(logics.GetNumberOfItems() if logics is not None else 0):
        logic = logics.GetItemAsObject(index)
        node = logic.GetSliceNode()
        if node is None:
            continue
        node.SetOrientationToDefault()
        logic.RotateSliceToLowestVolumeAxes(False)
        width, height, _ = node.GetDimensions()
        logic.FitSliceToVolume(volume_node, width, height)
        logic.SnapSliceOffsetToIJK()
