"""The "PET lesion" Segment Editor effect (PETCTLesions/SegmentEditorPETLesionLib/SegmentEditorEffect.py).

Slicer's Segment Editor does not exist outside the application, so the effect file is run here with
stand-ins for what only the application has: ``qt`` (cursor, a zero-delay timer), Slicer's
``SegmentEditorEffects`` base class and the C++ side of a scripted effect (its parameters, the
parameter set node, ``saveStateForUndo``, which saves the segments in Slicer's own
``vtkSegmentationHistory`` as the Segment Editor does), and a slice view that maps a click to RAS.
Everything the effect then does is real: clicks in each mode through ``processInteractionEvents``,
segments and VOC boxes on real MRML, the Segment Editor's Undo restoring segments and the effect's
observer bringing the boxes along. Static checks cover what the stand-ins cannot: registration and
packaging, and that the effect calls only the scripted-effect API of Slicer 5.6.
"""

from __future__ import annotations

import ast
import importlib.util
import re
import sys
import types
from pathlib import Path

import numpy as np
import pytest
from test_lesion_edits import PET_GRID, SPHERES, _centre_lps, _scene, _state, lung_dx_study  # noqa: F401

from PETCTLesionsLib.geometry import lps_to_ras

MODULE_DIR = Path(__file__).resolve().parents[2] / "PETCTLesions"
EFFECT_FILE = MODULE_DIR / "SegmentEditorPETLesionLib" / "SegmentEditorEffect.py"
LEFT_PRESS, LEFT_RELEASE = 12, 13  # vtkCommand.LeftButtonPressEvent, LeftButtonReleaseEvent

# The scripted-effect API of Slicer 5.6 (qSlicerSegmentEditorAbstractEffect.h, tag v5.6.2) that the effect may call.
SCRIPTED_EFFECT_API_5_6 = {
    "addLabeledOptionsWidget",
    "addOptionsWidget",
    "confirmCurrentSegmentVisible",
    "doubleParameter",
    "integerParameter",
    "parameter",
    "parameterSetNode",
    "saveStateForUndo",
    "setParameter",
    "setParameterDefault",
}


def test_the_module_registers_the_effect_file_that_cmake_installs():
    module = (MODULE_DIR / "PETCTLesions.py").read_text()
    assert 'slicer.app.connect("startupCompleted()", registerEditorEffect)' in module
    assert '"SegmentEditorPETLesionLib", "SegmentEditorEffect.py"' in module and EFFECT_FILE.is_file()
    cmake = (MODULE_DIR / "CMakeLists.txt").read_text()
    effect_list = re.search(r"set\(EFFECT_PYTHON_SCRIPTS\n(.*?)\)", cmake, re.S).group(1).split()
    assert effect_list == ["SegmentEditorPETLesionLib/__init__.py", "SegmentEditorPETLesionLib/SegmentEditorEffect.py"]
    assert "SegmentEditorPETLesionLib/SegmentEditorEffect.png" in cmake
    assert "SCRIPTS ${MODULE_PYTHON_SCRIPTS} ${EFFECT_PYTHON_SCRIPTS}" in cmake
    assert "RESOURCES ${MODULE_PYTHON_RESOURCES} ${EFFECT_PYTHON_RESOURCES}" in cmake


def test_the_effect_is_the_class_slicer_loads_and_calls_only_slicer_5_6s_scripted_effect_api():
    tree = ast.parse(EFFECT_FILE.read_text())
    # Slicer instantiates the class named after the file (qSlicerSegmentEditorScriptedEffect::setPythonSource).
    (effect,) = [node for node in tree.body if isinstance(node, ast.ClassDef) and node.name == "SegmentEditorEffect"]
    assert [base.id for base in effect.bases] == ["AbstractScriptedSegmentEditorEffect"]
    methods = {node.name for node in effect.body if isinstance(node, ast.FunctionDef)}
    # The pure virtual methods of qSlicerSegmentEditorAbstractEffect, and the ones the effect relies on.
    assert {"clone", "setMRMLDefaults", "updateGUIFromMRML", "updateMRMLFromGUI"} <= methods
    assert {"icon", "helpText", "setupOptionsFrame", "activate", "deactivate", "processInteractionEvents"} <= methods
    called = {
        node.func.attr
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and isinstance(node.func.value, ast.Attribute)
        and node.func.value.attr == "scriptedEffect"
    }
    assert called and called <= SCRIPTED_EFFECT_API_5_6, called - SCRIPTED_EFFECT_API_5_6


# ----------------------------------------------------------------------------------------- the effect, run


class _ScriptedEffect:
    """The C++ side of a scripted effect: its attributes, parameters and the Segment Editor's undo."""

    def __init__(self, segmentation, pet, history) -> None:
        self.name = self.title = ""
        self.perSegment = self.requireSegments = True
        self.parameters = {}
        self._node = types.SimpleNamespace(GetSegmentationNode=lambda: segmentation, GetSourceVolumeNode=lambda: pet)
        self._history = history
        self.saved = 0

    def setParameterDefault(self, name, value):
        self.parameters.setdefault(name, str(value))

    def setParameter(self, name, value):
        self.parameters[name] = str(value)

    def parameter(self, name):
        return self.parameters.get(name, "")

    def doubleParameter(self, name):
        return float(self.parameters.get(name) or 0.0)

    def parameterSetNode(self):
        return self._node

    def saveStateForUndo(self):
        self._history.SaveState()
        self.saved += 1


class _SliceView:
    """A slice view: display point (x, y) -> the RAS point the test put there."""

    def __init__(self) -> None:
        self.points = {}

    def className(self):
        return "qMRMLSliceWidget"

    def at(self, ras):
        xy = (len(self.points), 0)
        self.points[xy] = [float(v) for v in ras]
        return xy


class _Interactor:
    def __init__(self, xy) -> None:
        self._xy = xy

    def GetEventPosition(self):
        return self._xy

    def GetShiftKey(self):
        return 0

    GetControlKey = GetAltKey = GetShiftKey


@pytest.fixture
def effect_class(monkeypatch):
    """The effect file loaded with stand-ins for qt, slicer.i18n and SegmentEditorEffects."""
    queued = []
    qt = types.ModuleType("qt")
    qt.QApplication = types.SimpleNamespace(setOverrideCursor=lambda cursor: None, restoreOverrideCursor=lambda: None)
    qt.Qt = types.SimpleNamespace(WaitCursor=0)
    qt.QTimer = types.SimpleNamespace(singleShot=lambda delay, callback: queued.append(callback))
    i18n = types.ModuleType("slicer.i18n")
    i18n.tr = lambda text: text
    base = types.ModuleType("SegmentEditorEffects")

    class AbstractScriptedSegmentEditorEffect:
        def __init__(self, scriptedEffect):
            self.scriptedEffect = scriptedEffect

        def xyToRas(self, xy, viewWidget):
            return viewWidget.points[tuple(xy)]

    base.AbstractScriptedSegmentEditorEffect = AbstractScriptedSegmentEditorEffect
    for name, module in (("qt", qt), ("slicer.i18n", i18n), ("SegmentEditorEffects", base)):
        monkeypatch.setitem(sys.modules, name, module)
    spec = importlib.util.spec_from_file_location("PETLesionEffectUnderTest", EFFECT_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.SegmentEditorEffect.run_queued = staticmethod(lambda: [queued.pop(0)() for _ in list(queued)])
    return module.SegmentEditorEffect


def _effect(effect_class, scene):
    import slicer

    history = slicer.vtkSegmentationHistory()
    history.SetSegmentation(scene.segmentation.GetSegmentation())
    scripted = _ScriptedEffect(scene.segmentation, scene.pet_node, history)
    effect = effect_class(scripted)
    assert scripted.name == "PET lesion" and not scripted.perSegment and not scripted.requireSegments
    effect.statusLabel = types.SimpleNamespace(text="")  # setupOptionsFrame's widgets: Qt only
    effect.setMRMLDefaults()
    effect.activate()
    return effect, scripted, history


def _click(effect, view, ras, event=LEFT_PRESS):
    return effect.processInteractionEvents(_Interactor(view.at(ras)), event, view)


@pytest.mark.slicer
def test_clicks_in_each_mode_edit_the_lesions_and_the_segment_editors_undo_takes_boxes_along(
    effect_class,
    mrml_scene,
    lung_dx_study,  # noqa: F811
):
    from PETCTLesionsLib.interactive import editor_options as options
    from PETCTLesionsLib.mrml.review import ADDED, boxes_of_segment, lesion_rows

    scene = _scene(lung_dx_study, with_boxes_class="E")
    scene.segmentation.SetNodeReferenceID("PETCTLesions.ct", scene.ct_node.GetID())  # as the module leaves it
    effect, scripted, history = _effect(effect_class, scene)
    view = _SliceView()
    before = _state(scene)

    # Add: one click on the missed lesion, one Undo step, a segment "added" with its boxes.
    assert _click(effect, view, lps_to_ras(_centre_lps("B"))) is True
    assert scripted.saved == 1
    row = lesion_rows(scene.segmentation, scene.pet_node, scene.ct_node)[-1]
    assert row.status == ADDED and row.name == "Lesion 3" and boxes_of_segment(scene.segmentation, row.segment_id)
    assert effect.statusLabel.text  # the prompt's note
    after_add = _state(scene)
    assert _click(effect, view, lps_to_ras(_centre_lps("B")), LEFT_RELEASE) is False  # a release is not ours

    # The Segment Editor's Undo: segments restored by Slicer, then the effect's observer brings the boxes back.
    history.RestorePreviousState()
    effect.run_queued()
    _assert_equal_states(before, _state(scene))
    history.RestoreNextState()  # Redo
    effect.run_queued()
    _assert_equal_states(after_add, _state(scene))

    # Split: the first click is held, the second splits lesion A.
    scripted.setParameter(options.MODE, options.SPLIT)
    (k, j, i), _, _ = SPHERES["A"]
    assert _click(effect, view, lps_to_ras(PET_GRID.index_to_lps([i, j, k - 2]))) is True and scripted.saved == 1
    _click(effect, view, lps_to_ras(PET_GRID.index_to_lps([i, j, k + 2])))
    assert scripted.saved == 2 and len(_state(scene)[0]) == len(after_add[0]) + 1

    # Remove: lesion C and its boxes.
    scripted.setParameter(options.MODE, options.REMOVE)
    c_id = before[0][1][0]
    _click(effect, view, lps_to_ras(_centre_lps("C")))
    assert c_id not in [segment[0] for segment in _state(scene)[0]]
    assert boxes_of_segment(scene.segmentation, c_id) == []

    # PERCIST before the liver reference: refused in the panel, nothing changed, no Undo step.
    scripted.setParameter(options.MODE, options.ADD)
    scripted.setParameter(options.RULE, "percist")
    unchanged = _state(scene)
    _click(effect, view, lps_to_ras(_centre_lps("C")))
    assert "liver reference" in effect.statusLabel.text and scripted.saved == 3
    _assert_equal_states(unchanged, _state(scene))
    # The liver reference, then PERCIST finds lesion C again (SUV 5 > 1.5 x 1 + 2 x 0).
    scripted.setParameter(options.MODE, options.LIVER)
    _click(effect, view, lps_to_ras(PET_GRID.index_to_lps([30, 8, 24])))
    assert float(scripted.parameters[options.LIVER_MEAN]) == pytest.approx(1.0, abs=1e-3)
    scripted.setParameter(options.MODE, options.ADD)
    _click(effect, view, lps_to_ras(_centre_lps("C")))
    assert scripted.saved == 4 and lesion_rows(scene.segmentation, scene.pet_node, scene.ct_node)[-1].status == ADDED

    # Box: lesion B removed, then drawn again as a box: pressed at one corner on the axial view, released at the other.
    scripted.setParameter(options.MODE, options.REMOVE)
    _click(effect, view, lps_to_ras(_centre_lps("B")))
    segments = len(_state(scene)[0])
    scripted.setParameter(options.MODE, options.BOX)
    scripted.setParameter(options.RULE, "percent_of_max")
    (k, j, i), _, _ = SPHERES["B"]
    assert _click(effect, view, lps_to_ras(PET_GRID.index_to_lps([i - 4, j - 4, k]))) is True
    assert scripted.saved == 5  # nothing yet: a box ends on release
    assert _click(effect, view, lps_to_ras(PET_GRID.index_to_lps([i + 4, j + 4, k])), LEFT_RELEASE) is True
    assert scripted.saved == 6 and len(_state(scene)[0]) == segments + 1
    row = lesion_rows(scene.segmentation, scene.pet_node, scene.ct_node)[-1]
    assert row.status == ADDED and row.suv_max == pytest.approx(6.0, rel=1e-3)
    assert boxes_of_segment(scene.segmentation, row.segment_id)

    # Not a slice view: not the effect's.
    three_d = types.SimpleNamespace(className=lambda: "qMRMLThreeDWidget")
    assert effect.processInteractionEvents(_Interactor((0, 0)), LEFT_PRESS, three_d) is False
    effect.deactivate()


def _assert_equal_states(expected, got):
    assert expected[0] == got[0]
    np.testing.assert_array_equal(expected[1], got[1])
    assert expected[2] == got[2]


def test_the_options_panel_uses_only_members_and_signals_its_qt_widgets_have():
    """The panel's widgets (setupOptionsFrame) against Qt's own classes (PyQt5, offscreen), as for the module's .ui."""
    pytest.importorskip("PyQt5")
    import os

    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from PyQt5 import QtWidgets

    source = EFFECT_FILE.read_text()
    made = dict(re.findall(r"self\.(\w+) = qt\.(Q\w+)\(", source))
    made.update(dict(re.findall(r"(\w+) = qt\.(Q\w+)\(", source)))
    assert {"ruleComboBox", "ruleValueSpinBox", "protectCheckBox", "statusLabel", "spinBox", "button"} <= set(made)
    checked = 0
    for name, member in re.findall(r"\b(?:self\.)?(\w+)\.(\w+)\b", source):
        cls = getattr(QtWidgets, made.get(name, ""), None)
        if cls is None or member == "connect":
            continue
        assert cls.staticMetaObject.indexOfProperty(member) >= 0 or hasattr(cls, member), (name, member)
        checked += 1
    for name, signal in re.findall(r'\b(?:self\.)?(\w+)\.connect\("([^"]+)"', source):
        assert getattr(QtWidgets, made[name]).staticMetaObject.indexOfSignal(signal) >= 0, (name, signal)
        checked += 1
    assert checked >= 25
