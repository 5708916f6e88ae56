"""Run the MRML layer without the Slicer application.

The ``slicer-core`` wheel provides Slicer's real MRML nodes and module logics but none of
what the application normally sets up: no ``slicer.app``, ``slicer.mrmlScene`` or
``slicer.modules``. :func:`ensure_scene` builds the minimum the MRML layer needs, the same
objects the application would create:

- one ``vtkMRMLScene`` installed as ``slicer.mrmlScene``;
- a ``vtkSlicerApplicationLogic`` bound to it first (it creates the selection and
  interaction singletons that the Markups logic looks for);
- the Colors, Volumes, Segmentations, Markups and SubjectHierarchy module logics, each
  given the application logic before the scene (the order Slicer uses) and reachable as
  ``slicer.modules.<name>.logic()``, which is how ``slicer.util`` helpers find them;
- the Red (axial), Yellow (sagittal) and Green (coronal) slice views: slice nodes,
  slice composite nodes and slice logics registered with the application logic.

Inside the real application (``slicer.app`` exists) :func:`ensure_scene` does nothing but
return the application's scene, so code that calls it runs unchanged in both places.
"""

from __future__ import annotations

import types
from typing import Dict, Optional

import slicer
import vtk

# Slicer's module names (slicer.modules.<lowercase>) and the logic class each one uses.
_MODULE_LOGIC_CLASSES = (
    ("Colors", "vtkSlicerColorLogic"),
    ("Volumes", "vtkSlicerVolumesLogic"),
    ("Segmentations", "vtkSlicerSegmentationsModuleLogic"),
    ("Markups", "vtkSlicerMarkupsLogic"),
    ("SubjectHierarchy", "vtkSlicerSubjectHierarchyModuleLogic"),
)

# The slice views of Slicer's default layout: (layout name, orientation).
SLICE_VIEWS = (("Red", "Axial"), ("Yellow", "Sagittal"), ("Green", "Coronal"))

_headless: Optional[HeadlessSlicer] = None


class HeadlessSlicer:
    """The scene, application logic and module logics of a headless session."""

    def __init__(self) -> None:
        self.scene = slicer.vtkMRMLScene()
        self.application_logic = slicer.vtkSlicerApplicationLogic()
        self.application_logic.SetMRMLScene(self.scene)
        self.module_logics: Dict[str, vtk.vtkObject] = {}
        for module_name, class_name in _MODULE_LOGIC_CLASSES:
            logic = getattr(slicer, class_name)()
            logic.SetMRMLApplicationLogic(self.application_logic)
            if class_name == "vtkSlicerColorLogic":
                _set_color_logic_scene(logic, self.scene)
            else:
                logic.SetMRMLScene(self.scene)
            self.application_logic.SetModuleLogic(module_name, logic)
            self.module_logics[module_name] = logic
        self.slice_logics = self._create_slice_views()

    def _create_slice_views(self) -> vtk.vtkCollection:
        """Red/Yellow/Green slice nodes, composite nodes and slice logics, as Slicer's layout makes them.

        Display code (fused PET/CT, fitting views) then finds the same nodes and logics it
        finds in the application, through the application logic.
        """
        slicer.vtkMRMLSliceNode.AddDefaultSliceOrientationPresets(self.scene)
        logics = vtk.vtkCollection()
        for layout_name, orientation in SLICE_VIEWS:
            logic = slicer.vtkMRMLSliceLogic()
            logic.SetMRMLApplicationLogic(self.application_logic)
            logic.SetMRMLScene(self.scene)
            slice_node = logic.AddSliceNode(layout_name)
            slice_node.SetDefaultOrientation(orientation)
            slice_node.SetOrientation(orientation)
            logics.AddItem(logic)
        self.application_logic.SetSliceLogics(logics)
        return logics

    def install(self) -> None:
        """Make the scene and logics reachable the way Slicer's own Python code looks for them."""
        slicer.mrmlScene = self.scene
        modules = getattr(slicer, "modules", None) or types.SimpleNamespace()
        for module_name, logic in self.module_logics.items():
            setattr(modules, module_name.lower(), _ModuleStub(module_name, logic))
        slicer.modules = modules

    def shutdown(self) -> None:
        """Remove every node, singletons included, and release the logics.

        Done once at exit: a colour or slice logic left observing a half-destroyed scene
        has crashed the interpreter at exit before.
        """
        self.scene.Clear(True)
        self.module_logics.clear()


class _ModuleStub:
    """What ``slicer.modules.<name>`` offers that the MRML layer uses: its name and logic."""

    def __init__(self, name: str, logic: vtk.vtkObject) -> None:
        self.name = name
        self._logic = logic

    def logic(self) -> vtk.vtkObject:
        return self._logic


def _set_color_logic_scene(color_logic: vtk.vtkObject, scene: slicer.vtkMRMLScene) -> None:
    # The colour logic looks for colour files under the application's home directory,
    # which a wheel install does not have. It logs an error and carries on with the
    # built-in tables (Grey, PET-Heat, PET-Rainbow2, PET-DICOM, ...), which is all we use,
    # so that one expected message is silenced.
    cutoff = vtk.vtkLogger.GetCurrentVerbosityCutoff()
    vtk.vtkLogger.SetStderrVerbosity(vtk.vtkLogger.VERBOSITY_OFF)
    try:
        color_logic.SetMRMLScene(scene)
    finally:
        vtk.vtkLogger.SetStderrVerbosity(cutoff)


def in_slicer_application() -> bool:
    """True inside the 3D Slicer application (as opposed to the slicer-core wheel)."""
    return getattr(slicer, "app", None) is not None


def ensure_scene() -> slicer.vtkMRMLScene:
    """Return the scene to work in, setting up a headless one once when outside Slicer."""
    global _headless
    if in_slicer_application():
        return slicer.mrmlScene
    if _headless is None:
        _headless = HeadlessSlicer()
        _headless.install()
    return _headless.scene


def application_logic() -> slicer.vtkSlicerApplicationLogic:
    """The application logic (slice logics, FitSliceToAll, ...): the application's, or the headless one."""
    if in_slicer_application():
        return slicer.app.applicationLogic()
    ensure_scene()
    return _headless.application_logic


def reset_scene() -> slicer.vtkMRMLScene:
    """Headless only: a fresh scene (all user nodes removed, default colour tables kept)."""
    if in_slicer_application():
        raise RuntimeError("reset_scene() would close the user's scene; it is for headless use only")
    scene = ensure_scene()
    scene.Clear(False)
    return scene


def shutdown() -> None:
    """Headless only: tear the scene and logics down (call once, at exit)."""
    global _headless
    if _headless is not None:
        _headless.shutdown()
        _headless = None
