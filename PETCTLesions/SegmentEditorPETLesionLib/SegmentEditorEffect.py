"""The "PET lesion" Segment Editor effect: add, remove, box or split lesions with a click on the PET.

A thin shell: the options and click sequences are PETCTLesionsLib/interactive/editor_options.py
(Qt-free), what a prompt does to segments and VOC boxes is PETCTLesionsLib/mrml/lesion_edits.py,
both tested headlessly. This file draws the options panel, forwards left clicks in slice views, and
saves the segmentation for the Segment Editor's Undo before each prompt (saveStateForUndo); after
an Undo or Redo the VOC boxes follow the segments (``EditHistory.boxes_follow_segments``).

Registered by the PETCTLesions module at startup (PETCTLesions.py, ``registerEditorEffect``), as
Slicer's scripted-effect template (Utilities/Templates/Modules/ScriptedSegmentEditorEffect) does.
"""

import logging
import os
import traceback

import qt
import slicer
import vtk
from SegmentEditorEffects import AbstractScriptedSegmentEditorEffect
from slicer.i18n import tr as _

from PETCTLesionsLib.errors import ISSUES_URL, PETCTLesionsError
from PETCTLesionsLib.interactive import editor_options as options
from PETCTLesionsLib.mrml import lesion_edits


class SegmentEditorEffect(AbstractScriptedSegmentEditorEffect):
    """Click-to-segment on the PET in SUV (the source volume); every prompt one Undo step."""

    def __init__(self, scriptedEffect):
        scriptedEffect.name = options.EFFECT_NAME  # no tr: the module finds the effect by this name
        scriptedEffect.title = _("PET lesion")
        scriptedEffect.perSegment = False  # it makes, removes and splits segments itself
        scriptedEffect.requireSegments = False  # the first lesion may be added by a click
        AbstractScriptedSegmentEditorEffect.__init__(self, scriptedEffect)
        self.clicks = options.ClickSequence()
        self.history = lesion_edits.EditHistory()
        self._observedSegmentation = None
        self._observerTags = []
        self._applying = False  # our own prompt is changing the segments: not an Undo
        self._followScheduled = False

    def clone(self):
        import qSlicerSegmentationsEditorEffectsPythonQt as effects

        clonedEffect = effects.qSlicerSegmentEditorScriptedEffect(None)
        clonedEffect.setPythonSource(__file__.replace("\\", "/"))
        return clonedEffect

    def icon(self):
        iconPath = os.path.join(os.path.dirname(__file__), "SegmentEditorEffect.png")
        return qt.QIcon(iconPath) if os.path.exists(iconPath) else qt.QIcon()

    def helpText(self):
        return "<html>" + _(
            "Correct lesions on the PET (the source volume, in SUV) with a click in a slice view.<br>"
            "<b>Add</b>: click a hot spot; the click moves to the hottest voxel nearby and the lesion is grown "
            "there by the rule (41% or 50% of its SUVmax, a fixed SUV, PERCIST or the model's probability). "
            "<b>Remove</b>: click a lesion to delete it with its VOC boxes. <b>Box</b>: drag a box around a "
            "lesion on an axial view. <b>Split</b>: click two points inside one lesion. "
            "<b>Liver reference</b>: click the normal liver once per study for PERCIST.<br>"
            "New lesions are named, coloured and tagged like detected ones, with review status 'added'; their "
            "VOC boxes are made on the CT. Undo takes a click back, boxes included."
        )

    # ------------------------------------------------------------------ options panel

    def setupOptionsFrame(self):
        self.modeButtons = {}
        modeLayout = qt.QVBoxLayout()
        self.modeGroup = qt.QButtonGroup()
        for mode in options.MODES:
            button = qt.QRadioButton(_(options.MODE_LABELS[mode]))
            button.setToolTip(_(options.MODE_HINTS[mode]))
            self.modeGroup.addButton(button)
            modeLayout.addWidget(button)
            self.modeButtons[mode] = button
            button.connect("toggled(bool)", lambda checked, mode=mode: self.onModeToggled(mode, checked))
        self.scriptedEffect.addLabeledOptionsWidget(_("Click:"), modeLayout)

        self.ruleComboBox = qt.QComboBox()
        for preset in options.RULE_PRESETS:
            self.ruleComboBox.addItem(_(preset.label))
        self.ruleComboBox.setToolTip(_("Which voxels around the hottest voxel of the click belong to the lesion."))
        self.scriptedEffect.addLabeledOptionsWidget(_("Rule:"), self.ruleComboBox)
        self.ruleComboBox.connect("activated(int)", self.onRuleChosen)

        self.ruleValueSpinBox = qt.QDoubleSpinBox()
        self.ruleValueSpinBox.setToolTip(_("The rule's value: a fraction of SUVmax, an SUV or a probability."))
        self.scriptedEffect.addLabeledOptionsWidget(_("Value:"), self.ruleValueSpinBox)
        self.ruleValueSpinBox.connect("valueChanged(double)", self.updateMRMLFromGUI)

        self.snapRadiusSpinBox = self._millimetres(
            0.0, 30.0, _("A click moves to the hottest voxel within this radius.")
        )
        self.scriptedEffect.addLabeledOptionsWidget(_("Snap radius:"), self.snapRadiusSpinBox)
        self.maxRadiusSpinBox = self._millimetres(
            5.0, 150.0, _("A lesion never reaches further than this from its hottest voxel.")
        )
        self.scriptedEffect.addLabeledOptionsWidget(_("Maximum radius:"), self.maxRadiusSpinBox)

        self.protectCheckBox = qt.QCheckBox(_("Never take voxels of other lesions"))
        self.scriptedEffect.addOptionsWidget(self.protectCheckBox)
        self.protectCheckBox.connect("toggled(bool)", self.updateMRMLFromGUI)

        self.liverLabel = qt.QLabel()
        self.liverLabel.wordWrap = True
        self.scriptedEffect.addOptionsWidget(self.liverLabel)
        self.statusLabel = qt.QLabel()
        self.statusLabel.wordWrap = True
        self.scriptedEffect.addOptionsWidget(self.statusLabel)

    def _millimetres(self, minimum, maximum, toolTip):
        spinBox = qt.QDoubleSpinBox()
        spinBox.setRange(minimum, maximum)
        spinBox.setSingleStep(1.0)
        spinBox.setDecimals(1)
        spinBox.setSuffix(" mm")
        spinBox.setToolTip(toolTip)
        spinBox.connect("valueChanged(double)", self.updateMRMLFromGUI)
        return spinBox

    def setMRMLDefaults(self):
        for name, value in options.DEFAULTS.items():
            self.scriptedEffect.setParameterDefault(name, value)

    def _parameters(self):
        return {name: self.scriptedEffect.parameter(name) for name in options.DEFAULTS}

    def updateGUIFromMRML(self):
        # The Segment Editor calls this on every registered effect when any effect's parameter changes.
        if not hasattr(self, "modeButtons"):
            return
        parameters = self._parameters()
        mode = options.mode_of(parameters)
        widgets = [*self.modeButtons.values(), self.ruleComboBox, self.ruleValueSpinBox]
        widgets += [self.snapRadiusSpinBox, self.maxRadiusSpinBox, self.protectCheckBox]
        blocked = [widget.blockSignals(True) for widget in widgets]
        try:
            self.modeButtons[mode].setChecked(True)
            preset = options.preset_index(parameters)
            if preset is not None:
                self.ruleComboBox.setCurrentIndex(preset)
            valueRange = options.VALUE_RANGES.get(parameters.get(options.RULE))
            self.ruleValueSpinBox.setEnabled(valueRange is not None)
            if valueRange is not None:
                self.ruleValueSpinBox.setRange(valueRange.minimum, valueRange.maximum)
                self.ruleValueSpinBox.setSingleStep(valueRange.step)
                self.ruleValueSpinBox.setDecimals(valueRange.decimals)
                self.ruleValueSpinBox.setSuffix(valueRange.suffix)
                self.ruleValueSpinBox.setValue(self.scriptedEffect.doubleParameter(options.RULE_VALUE))
            self.snapRadiusSpinBox.setValue(self.scriptedEffect.doubleParameter(options.SNAP_RADIUS))
            self.maxRadiusSpinBox.setValue(self.scriptedEffect.doubleParameter(options.MAX_RADIUS))
            self.protectCheckBox.setChecked(parameters.get(options.PROTECT) != "0")
        finally:
            for widget, wasBlocked in zip(widgets, blocked):
                widget.blockSignals(wasBlocked)
        self.liverLabel.text = options.describe_liver(parameters)
        if not self.clicks.waiting:
            self.statusLabel.text = _(options.MODE_HINTS[mode])

    def updateMRMLFromGUI(self):
        if not hasattr(self, "modeButtons"):
            return
        if options.VALUE_RANGES.get(self.scriptedEffect.parameter(options.RULE)) is not None:
            self.scriptedEffect.setParameter(options.RULE_VALUE, self.ruleValueSpinBox.value)
        self.scriptedEffect.setParameter(options.SNAP_RADIUS, self.snapRadiusSpinBox.value)
        self.scriptedEffect.setParameter(options.MAX_RADIUS, self.maxRadiusSpinBox.value)
        self.scriptedEffect.setParameter(options.PROTECT, "1" if self.protectCheckBox.checked else "0")

    def onModeToggled(self, mode, checked):
        if checked:
            self.clicks.reset()
            self.scriptedEffect.setParameter(options.MODE, mode)

    def onRuleChosen(self, index):
        for name, value in options.preset_parameters(index).items():
            self.scriptedEffect.setParameter(name, value)

    # ------------------------------------------------------------------ clicks

    def activate(self):
        self.clicks.reset()
        self._observeSegmentation(self.scriptedEffect.parameterSetNode().GetSegmentationNode())

    def deactivate(self):
        # The segmentation stays observed: the Segment Editor's Undo takes prompts back whichever effect is active.
        self.clicks.reset()

    def cleanup(self):
        self._observeSegmentation(None)

    def processInteractionEvents(self, callerInteractor, eventId, viewWidget):
        if viewWidget.className() != "qMRMLSliceWidget":
            return False
        press = eventId == vtk.vtkCommand.LeftButtonPressEvent
        if not press and eventId != vtk.vtkCommand.LeftButtonReleaseEvent:
            return False
        if callerInteractor.GetShiftKey() or callerInteractor.GetControlKey() or callerInteractor.GetAltKey():
            return False
        mode = options.mode_of(self._parameters())
        ras = self.xyToRas(callerInteractor.GetEventPosition(), viewWidget)
        points = self.clicks.press(mode, ras) if press else self.clicks.release(mode, ras)
        if points is not None:
            self._prompt(mode, points)
        elif self.clicks.waiting and press and mode == options.SPLIT:
            self.statusLabel.text = _("First point placed: click the second part of the lesion.")
        # A press is ours (no window/level drag under the click); a release only when it ends a box.
        return press or points is not None

    def _prompt(self, mode, points):
        parameterSet = self.scriptedEffect.parameterSetNode()
        segmentation, pet = parameterSet.GetSegmentationNode(), parameterSet.GetSourceVolumeNode()
        if segmentation is None or pet is None:
            self.statusLabel.text = _("Choose the lesion segmentation and the PET (in SUV) as source volume.")
            return
        qt.QApplication.setOverrideCursor(qt.Qt.WaitCursor)
        self._observeSegmentation(segmentation)  # the one chosen now (a prompt history per segmentation)
        try:
            if mode == options.LIVER:
                liver = lesion_edits.liver_at(pet, points[0])
                for name, value in options.liver_parameters(liver).items():
                    self.scriptedEffect.setParameter(name, value)
                self.statusLabel.text = options.describe_liver(self._parameters())
                return
            promptOptions = options.prompt_options(self._parameters())
            scene = lesion_edits.LesionScene(segmentation, pet, lesion_edits.ct_of(segmentation, pet))
            self.scriptedEffect.saveStateForUndo()  # the Segment Editor's Undo takes this prompt back
            self._applying = True
            try:
                applied = lesion_edits.apply_mode(scene, mode, points, promptOptions)
            finally:
                self._applying = False
            self.history.add(applied)
            self.statusLabel.text = applied.message
        except PETCTLesionsError as error:  # a refusal the reader can act on (the error contract)
            self.statusLabel.text = str(error)
        except Exception:
            logging.error(traceback.format_exc())
            slicer.util.errorDisplay(
                _("The PET lesion effect failed (a bug in PET/CT Lesions): please report it at {url}").format(
                    url=ISSUES_URL
                ),
                detailedText=traceback.format_exc(),
            )
        finally:
            qt.QApplication.restoreOverrideCursor()

    # ------------------------------------------------------------------ boxes follow the Segment Editor's Undo

    def _observeSegmentation(self, segmentation):
        if segmentation is self._observedSegmentation:
            return
        if self._observedSegmentation is not None:
            for tag in self._observerTags:
                self._observedSegmentation.RemoveObserver(tag)
        self._observerTags = []
        if segmentation is not self._observedSegmentation:
            self.history.clear()  # the prompts of another segmentation
        self._observedSegmentation = segmentation
        if segmentation is None:
            return
        for event in (
            slicer.vtkSegmentation.SegmentAdded,
            slicer.vtkSegmentation.SegmentRemoved,
            slicer.vtkSegmentation.SourceRepresentationModified,
        ):
            self._observerTags.append(segmentation.AddObserver(event, self._onSegmentsChanged))

    def _onSegmentsChanged(self, caller, event):
        # Undo and Redo change many segments, one event each: follow once, after they are done.
        if self._applying or self._followScheduled or not self.history.records:
            return
        self._followScheduled = True
        qt.QTimer.singleShot(0, self._boxesFollowSegments)

    def _boxesFollowSegments(self):
        self._followScheduled = False
        try:
            self.history.boxes_follow_segments()
        except Exception:
            logging.error("PET lesion effect: VOC boxes not updated after Undo/Redo\n" + traceback.format_exc())
