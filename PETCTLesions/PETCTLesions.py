"""PETCTLesions: the 3D Slicer module (Module, parameter node, Widget, Logic, Test).

This file is the thin Slicer shell. The work lives in PETCTLesionsLib (plain Python) and its
MRML layer PETCTLesionsLib.mrml (Slicer nodes), both tested headlessly. The Widget binds the
.ui to the parameter node and forwards each Qt signal to the panel's presenter
(PETCTLesionsLib/module_presenter.py: the panel's state and decisions, without Qt), which calls
the Logic; every Logic method is one call into the library (Testing/Python/test_module_logic.py
runs them on real MRML, test_module_presenter.py drives the presenter).
"""

import importlib.metadata
import importlib.util
import logging
import os
import platform
import shutil
import sys
import time
from pathlib import Path
from typing import Annotated, List, Optional, Tuple

import qt
import slicer
import vtk
from slicer import vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import (
    Choice,
    Default,
    FloatRange,
    RangeBounds,
    WithinRange,
    parameterNodeWrapper,
)
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

from PETCTLesionsLib.errors import InputError, SetupError
from PETCTLesionsLib.model.nnunet_model import PICKLE_WARNING
from PETCTLesionsLib.module_presenter import (
    BUNDLED_MODEL,
    NNUNET_MODEL,
    ModulePresenter,
    chosen_path,
    detection_model,
)

DEMO_SAMPLE_NAME = "PETCTLesionsDemo"
MIN_TORCH_VERSION = (2, 1)
TORCH_REQUIREMENT = ">={}.{}".format(*MIN_TORCH_VERSION)
# The first torch built against numpy 2: an older one cannot hand arrays to numpy 2 ("Numpy is not
# available"). Detection does not need that (PETCTLesionsLib/model/inference.py); users are told.
TORCH_FOR_NUMPY_2 = (2, 3)
# The first torch whose Apple MPS backend has the model's 3D operations (ConvTranspose3d, 3D max
# pooling); detection probes MPS anyway and falls back to the CPU.
TORCH_FOR_MPS = (2, 8)
# The last torch built for Intel (x86_64) macOS; Slicer's macOS build is x86_64.
LAST_TORCH_FOR_INTEL_MACOS = "2.2.2"
# PET node attribute: its SUV warnings were shown. On the node, not in the widget: after a scene
# close the next study's PET may get the same node ID, and its own warnings must still be shown.
SUV_WARNINGS_SHOWN_ATTRIBUTE = "PETCTLesions.SUVWarningsShown"

#
# PETCTLesions
#


class PETCTLesions(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("PET/CT Lesions")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Nuclear Medicine")]
        self.parent.dependencies = []
        self.parent.contributors = ["PETCTLesions developers"]
        self.parent.helpText = _(
            "Review, detect, correct and export lesions on PET/CT.<br>"
            "1. <b>Study</b>: import a DICOM folder into Slicer's DICOM database and load a PET/CT pair, or pick "
            "CT and PET volumes already loaded (a PET loaded from DICOM is converted to SUVbw), or load the "
            "generated demo study (also in Sample Data). <b>Annotations</b>: import the VOC boxes of the loaded DICOM "
            "study (the dataset's Annotation folder or a patient's), or open an nnU-Net case (dataset folder and "
            "case); their lesions are listed as 'imported' for review.<br>"
            "2. <b>Display</b>: CT window presets (Mediastinum W350/L40, Lung W1400/L-700, Bone), PET colour map "
            "over an SUV window, PET opacity.<br>"
            "3. <b>Detect</b>: run the bundled lesion model, or your own nnU-Net v2 model folder (its checkpoints "
            "are pickles that can run code when loaded: use only folders you trust), on the GPU when there is one, "
            "else the CPU, in the background; "
            "lesions are added as segments (one per lesion) beside your own, and as VOC boxes for Lung-PET-CT-Dx "
            "patients. Cancel at any time: nothing half-made is added.<br>"
            "4. <b>Review</b>: the lesion table (class, SUVmax, SUVmean, MTV, TLG, slices) is measured on the PET "
            "as the segments are now. Click a row to go to the lesion; accept, reject (hidden and not exported) or "
            "delete it; correct it in the Segment Editor; add a box on the slice shown. <b>Add lesion by click</b> "
            "and <b>Remove by click</b> open the Segment Editor's PET lesion effect (click, box, split; Undo takes a "
            "click back); <b>Show PET MIP</b> shows the PET as a MIP in the 3D view: click a hot spot to go there.<br>"
            "5. <b>Export</b>: the kept lesions as an nnU-Net case (autoPET layout) and VOC XML (Lung-PET-CT-Dx "
            "layout). Existing files are never replaced unless you ask. <b>Write back</b> writes the corrections over "
            "the VOC files or nnU-Net case they were imported from, after asking, keeping each replaced file as a "
            "backup beside it; the summary says what changed since the import.<br>"
            "The bundled model was trained on generated studies only and is not validated on patients. See the "
            "<a href='https://github.com/PETCTLesions/SlicerPETCTLesions#readme'>README</a> "
            "for the command line and the model card."
        )
        self.parent.acknowledgementText = _(
            "Test data: TCIA Lung-PET-CT-Dx (Li P. et al., doi:10.7937/TCIA.2020.NNC2-0461, CC BY 4.0). "
            "Data layout and metrics: autoPET / PSMA-FDG-PET-CT-Lesions (Gatidis S. et al., TCIA, "
            "doi:10.7937/gkr0-xv29), nnU-Net (Isensee F. et al.)."
        )
        # Sample Data exists only once the application has started; so does the Segment Editor's effect factory.
        slicer.app.connect("startupCompleted()", registerSampleData)
        slicer.app.connect("startupCompleted()", registerEditorEffect)


def registerSampleData() -> None:
    """The generated demo study as a Sample Data entry (made on this computer, nothing is downloaded)."""
    import SampleData

    def loadDemo(_source) -> None:
        with slicer.util.tryWithErrorDisplay(_("Failed to create the demo study."), waitCursor=True):
            logic = PETCTLesionsLogic()
            parameterNode = logic.getParameterNode()
            parameterNode.ctVolume, parameterNode.petVolume = logic.loadDemoStudy(parameterNode.demoSeed)
            logic.showFusedStudy(parameterNode)

    SampleData.SampleDataLogic.registerCustomSampleDataSource(
        category="PET/CT Lesions",
        sampleName=DEMO_SAMPLE_NAME,
        thumbnailFileName=os.path.join(os.path.dirname(__file__), "Resources", "Icons", "PETCTLesions.png"),
        uris="petctlesions://generated-demo-study",  # never fetched: loadDemo generates the study
        fileNames="PETCTLesionsDemo",
        customDownloader=loadDemo,
    )


def registerEditorEffect() -> None:
    """The "PET lesion" Segment Editor effect (SegmentEditorPETLesionLib/SegmentEditorEffect.py), registered the
    way Slicer's scripted-effect template registers its effect."""
    import qSlicerSegmentationsEditorEffectsPythonQt as qSlicerSegmentationsEditorEffects

    effect = qSlicerSegmentationsEditorEffects.qSlicerSegmentEditorScriptedEffect(None)
    effectFile = os.path.join(os.path.dirname(__file__), "SegmentEditorPETLesionLib", "SegmentEditorEffect.py")
    effect.setPythonSource(effectFile.replace("\\", "/"))
    effect.self().register()


#
# Parameter node
#


@parameterNodeWrapper
class PETCTLesionsParameterNode:
    """The module's state, saved with the scene.

    Study: dicomFolder (last imported), ctVolume and petVolume (PET in SUVbw), demoSeed; annotations
    from files: annotationFolder (VOC boxes for the loaded DICOM study), nnunetCaseFolder (an nnU-Net
    raw dataset whose case is opened).
    Display: ctPreset, petColormap, suvWindow, petOpacity.
    Detect: segmentation (receives the lesions; none: a new one), device, modelKind ("Bundled":
    modelPath, a manifest, empty: the bundled model; "nnU-Net model folder": nnunetFolder with
    nnunetFolds (empty: all, ensembled), nnunetCheckpoint and nnunetTta), useModelThreshold (the
    model's own, from its manifest) else threshold (model probability), minLesionVolumeMl,
    filterFalsePositives (the bundled model's false-positive filter; off unless chosen, see the model card).
    Export: nnunetRawFolder + nnunetDatasetName, vocFolder + exportVoc, overwriteExports.
    """

    dicomFolder: Path
    ctVolume: vtkMRMLScalarVolumeNode
    petVolume: vtkMRMLScalarVolumeNode
    demoSeed: Annotated[int, WithinRange(0, 999999)] = 1
    annotationFolder: Path
    nnunetCaseFolder: Path
    ctPreset: Annotated[str, Choice(["Mediastinum", "Lung", "Bone"])] = "Mediastinum"
    petColormap: Annotated[str, Choice(["PET-Heat", "PET-Rainbow2", "PET-DICOM"])] = "PET-Heat"
    suvWindow: Annotated[FloatRange, RangeBounds(0.0, 50.0), Default(FloatRange(0.0, 10.0))]
    petOpacity: Annotated[float, WithinRange(0.0, 1.0)] = 0.5
    segmentation: vtkMRMLSegmentationNode
    device: Annotated[str, Choice(["auto", "cuda", "mps", "cpu"])] = "auto"
    modelKind: Annotated[str, Choice([BUNDLED_MODEL, NNUNET_MODEL])] = BUNDLED_MODEL
    modelPath: Path
    nnunetFolder: Path
    nnunetFolds: str = ""
    nnunetCheckpoint: Annotated[str, Choice(["final", "best"])] = "final"
    nnunetTta: bool = False
    useModelThreshold: bool = True
    threshold: Annotated[float, WithinRange(0.05, 0.95)] = 0.5
    minLesionVolumeMl: Annotated[float, WithinRange(0.0, 1000.0)] = 0.0
    filterFalsePositives: bool = False
    nnunetRawFolder: Path
    nnunetDatasetName: str = "Dataset901_PETCTLesions"
    vocFolder: Path
    exportVoc: bool = True
    overwriteExports: bool = False


def _installed_torch_version() -> Optional[str]:
    """The installed torch's version from its package metadata, without importing it.

    Detection imports torch in its worker process; importing it into Slicer's own process too
    would hold its files open, and an upgrade could then not replace them (Windows).
    """
    try:
        return importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        return None


def _release(version: str) -> Optional[Tuple[int, int]]:
    """(major, minor) of a version such as '2.2.2+cpu' or '2.0.2'; None when it cannot be read."""
    parts = version.split("+")[0].split(".")
    try:
        return int(parts[0]), int(parts[1])
    except (IndexError, ValueError):
        return None


def _is_recent_enough(torch_version: str) -> bool:
    release = _release(torch_version)
    return release is None or release >= MIN_TORCH_VERSION  # a version this cannot read (a local build): let it try


def _torch_platform_note(system: str, machine: str, torch_version: Optional[str], numpy_version: str) -> str:
    """What lesion detection will and will not do with this torch, numpy and computer ("" when nothing to say).

    ``system`` and ``machine`` as ``platform.system()`` and ``platform.machine()`` give them.
    """
    torch_release = _release(torch_version) if torch_version else None
    numpy_release = _release(numpy_version)
    notes = []
    if system == "Darwin":
        if machine == "x86_64":
            notes.append(
                _(
                    "On macOS, Slicer runs as an Intel (x86_64) program, for which PyTorch stops at {last}: lesion "
                    "detection runs on the CPU (from about half a minute to a few minutes for a whole-body study), "
                    "not on the Mac's GPU (MPS), which needs PyTorch {mps} or later for the model's 3D operations."
                ).format(last=LAST_TORCH_FOR_INTEL_MACOS, mps="{}.{}".format(*TORCH_FOR_MPS))
            )
        elif torch_release is not None and torch_release < TORCH_FOR_MPS:
            notes.append(
                _(
                    "On macOS, lesion detection runs on the CPU with PyTorch {version}: the Mac's GPU (MPS) needs "
                    "PyTorch {mps} or later for the model's 3D operations (update PyTorch in the PyTorch module)."
                ).format(version=torch_version, mps="{}.{}".format(*TORCH_FOR_MPS))
            )
    built_for_numpy_1 = torch_release is not None and torch_release < TORCH_FOR_NUMPY_2
    if built_for_numpy_1 and numpy_release is not None and numpy_release >= (2, 0):
        notes.append(
            _(
                "PyTorch {torch} was built for NumPy 1 and Slicer has NumPy {numpy}: PyTorch warns about it when "
                "it starts ('A module that was compiled using NumPy 1.x cannot be run in NumPy 2'), and cannot "
                "exchange arrays with NumPy ('Numpy is not available'). Lesion detection does not need that "
                "exchange and gives the same results; other extensions that use this PyTorch may fail."
            ).format(torch=torch_version, numpy=numpy_version)
        )
    return " ".join(notes)


#
# Widget
#


class PETCTLesionsWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """The panel: binds the .ui to the parameter node and forwards each Qt signal to the presenter.

    What the panel shows and what its buttons do (the detection run, the lesion table and its
    selection, which buttons are enabled, which dialog to show) is decided by
    ``PETCTLesionsLib.module_presenter.ModulePresenter``, plain Python tested with pytest;
    ``_QtPanelView`` draws it with the .ui's widgets and Slicer's dialogs.
    """

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self.presenter = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/PETCTLesions.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)

        self.logic = PETCTLesionsLogic()
        detectionTimer = qt.QTimer()
        detectionTimer.setInterval(200)
        self._mipClicks = _MipClicks()
        self.presenter = presenter = ModulePresenter(
            self.logic, _QtPanelView(self.ui, detectionTimer, self._mipClicks), tr=_
        )
        self._mipClicks.presenter = presenter
        detectionTimer.connect("timeout()", presenter.poll_detection)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        # 1. Study
        self.ui.importDicomButton.connect("clicked(bool)", lambda _checked: presenter.import_dicom_folder())
        self.ui.loadStudyButton.connect(
            "clicked(bool)", lambda _checked: presenter.load_study(self.ui.studyComboBox.currentIndex)
        )
        self.ui.loadDemoButton.connect("clicked(bool)", lambda _checked: presenter.load_demo_study())
        self.ui.importVocButton.connect("clicked(bool)", lambda _checked: presenter.import_voc_annotations())
        self.ui.openNnunetCaseButton.connect(
            "clicked(bool)", lambda _checked: presenter.open_nnunet_case(self.ui.nnunetCaseComboBox.currentText)
        )
        # 2. Display: controls act at once on the study in view (values arrive with the signal).
        self.ui.showFusedButton.connect("clicked(bool)", lambda _checked: presenter.show_fused_study())
        for button, preset in (
            (self.ui.mediastinumPresetButton, "Mediastinum"),
            (self.ui.lungPresetButton, "Lung"),
            (self.ui.bonePresetButton, "Bone"),
        ):
            button.connect("clicked(bool)", lambda _checked, preset=preset: presenter.apply_ct_preset(preset))
        self.ui.petColormapComboBox.connect("currentIndexChanged(int)", self.onPetColormapChanged)
        self.ui.suvWindowRangeWidget.connect("valuesChanged(double,double)", presenter.set_suv_window)
        self.ui.petOpacitySliderWidget.connect("valueChanged(double)", presenter.set_pet_opacity)
        # 3. Detect: the button starts a background run and turns into Cancel while it runs.
        self.ui.detectButton.connect("clicked(bool)", lambda _checked: presenter.detect_or_cancel())
        self.ui.bundledModelButton.connect("clicked(bool)", self.onBundledModelButton)
        self.ui.nnunetWarningLabel.text = PICKLE_WARNING  # said where the user picks the folder
        self.ui.undoDetectionButton.connect("clicked(bool)", lambda _checked: presenter.undo_detection())
        # 4. Review
        self.ui.lesionTable.connect("itemSelectionChanged()", self.onLesionSelectionChanged)
        self.ui.acceptButton.connect("clicked(bool)", lambda _checked: presenter.set_review_status("accepted"))
        self.ui.rejectButton.connect("clicked(bool)", lambda _checked: presenter.set_review_status("rejected"))
        self.ui.deleteButton.connect("clicked(bool)", lambda _checked: presenter.delete_selected_lesion())
        self.ui.lesionClassComboBox.addItems(["A", "B", "E", "G"])
        self.ui.setClassButton.connect(
            "clicked(bool)", lambda _checked: presenter.set_lesion_class(self.ui.lesionClassComboBox.currentText)
        )
        self.ui.segmentEditorButton.connect("clicked(bool)", lambda _checked: presenter.open_segment_editor())
        self.ui.addBoxButton.connect(
            "clicked(bool)", lambda _checked: presenter.add_box(self.ui.lesionClassComboBox.currentText)
        )
        self.ui.refreshTableButton.connect("clicked(bool)", lambda _checked: presenter.refresh_table())
        self.ui.addByClickButton.connect("clicked(bool)", lambda _checked: presenter.correct_by_click("add"))
        self.ui.removeByClickButton.connect("clicked(bool)", lambda _checked: presenter.correct_by_click("remove"))
        self.ui.petMipButton.connect("clicked(bool)", lambda _checked: presenter.show_pet_mip())
        # 5. Export
        self.ui.exportButton.connect("clicked(bool)", lambda _checked: presenter.export())
        self.ui.exportBackButton.connect("clicked(bool)", lambda _checked: presenter.export_back())

        self.initializeParameterNode()

    def cleanup(self) -> None:
        if self.presenter is not None:
            self.presenter.cancel_detection()
            self._mipClicks.stop()
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None

    def onSceneStartClose(self, caller, event) -> None:
        self.presenter.scene_closing()
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())

    def setParameterNode(self, inputParameterNode: Optional[PETCTLesionsParameterNode]) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.onParameterNodeModified)
        self._parameterNode = inputParameterNode
        self.presenter.set_parameter_node(self._parameterNode)  # first: connecting the GUI fires display signals
        if self._parameterNode:
            # Widgets carrying a SlicerParameterName property in the .ui follow the parameter node;
            # the presenter hears of every change (a volume chosen, a box ticked) to enable the buttons.
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.onParameterNodeModified)

    def onParameterNodeModified(self, caller=None, event=None) -> None:
        self.presenter.parameters_changed()

    def onPetColormapChanged(self, index: int) -> None:
        self.presenter.set_pet_colormap(self.ui.petColormapComboBox.itemText(index) if index >= 0 else "")

    def onBundledModelButton(self) -> None:
        # Clearing the path field cannot do this: ctkPathLineEdit only reports acceptable input
        # (an existing .json), so an empty field never reaches the parameter node.
        self.presenter.use_bundled_model()
        self.ui.modelPathLineEdit.currentPath = ""

    def onLesionSelectionChanged(self) -> None:
        selected = self.ui.lesionTable.selectedItems()
        self.presenter.select_row(selected[0].row() if selected else None)


class _QtPanelView:
    """The presenter's ``PanelView`` (PETCTLesionsLib/module_presenter.py) with Qt widgets and Slicer's dialogs."""

    def __init__(self, ui, detectionTimer, mipClicks=None) -> None:
        self.ui = ui
        self._detectionTimer = detectionTimer
        self._mipClicks = mipClicks or _MipClicks()

    def set_study_choices(self, choices) -> None:
        combo = self.ui.studyComboBox
        combo.clear()
        for label, tooltip in choices:
            combo.addItem(label)
            combo.setItemData(combo.count - 1, tooltip, qt.Qt.ToolTipRole)

    def set_rows(self, rows) -> None:
        table = self.ui.lesionTable
        table.setRowCount(len(rows))
        for r, cells in enumerate(rows):
            for c, text in enumerate(cells):
                table.setItem(r, c, qt.QTableWidgetItem(text))
        table.resizeColumnsToContents()

    def set_selection(self, index) -> None:
        if index is None:
            self.ui.lesionTable.clearSelection()
        else:
            self.ui.lesionTable.selectRow(index)

    def set_lesion_class(self, className: str) -> None:
        self.ui.lesionClassComboBox.setCurrentText(className)

    def set_button_state(self, state) -> None:
        self.ui.loadStudyButton.enabled = state.load_study
        self.ui.detectButton.enabled = state.detect
        self.ui.detectButton.text = state.detect_text
        self.ui.undoDetectionButton.enabled = state.undo_detection
        self.ui.acceptButton.enabled = state.review
        self.ui.rejectButton.enabled = state.review
        self.ui.deleteButton.enabled = state.review
        self.ui.setClassButton.enabled = state.review
        self.ui.lesionClassComboBox.enabled = state.review
        self.ui.addBoxButton.enabled = state.add_box
        self.ui.exportButton.enabled = state.export
        self.ui.thresholdSliderWidget.setEnabled(state.threshold)
        self.ui.addByClickButton.enabled = state.click_tools
        self.ui.removeByClickButton.enabled = state.click_tools
        self.ui.petMipButton.enabled = state.click_tools
        self.ui.importVocButton.enabled = state.import_annotations
        self.ui.exportBackButton.enabled = state.export_back

    def show_progress(self, fraction, text: str) -> None:
        self.ui.detectProgressBar.setVisible(fraction is not None)
        if fraction is not None:
            self.ui.detectProgressBar.value = int(round(100 * fraction))
        self.ui.detectStatusLabel.text = text

    def show_message(self, message) -> None:
        display = {
            "info": slicer.util.infoDisplay,
            "warning": slicer.util.warningDisplay,
            "error": slicer.util.errorDisplay,
        }[message.kind]
        options = {}
        if message.details:
            options["detailedText"] = message.details
        if message.dont_show_again_key:
            options["dontShowAgainSettingsKey"] = message.dont_show_again_key
        display(message.text, windowTitle=message.title or None, **options)

    def confirm(self, question: str) -> bool:
        return slicer.util.confirmYesNoDisplay(question)

    def busy(self):
        return slicer.util.WaitCursor()

    def run_with_progress(self, title: str, work):
        with _ProgressDialog(title) as dialog:
            return work(dialog.progress, dialog.cancelled)

    def start_polling(self) -> None:
        self._detectionTimer.start()

    def stop_polling(self) -> None:
        self._detectionTimer.stop()

    def open_segment_editor(self, segmentation, sourceVolume, segmentId) -> None:
        slicer.util.selectModule("SegmentEditor")
        editor = slicer.util.getModuleWidget("SegmentEditor").editor
        editor.setSegmentationNode(segmentation)
        if sourceVolume is not None:
            editor.setSourceVolumeNode(sourceVolume)  # thresholds then work in SUV
        if segmentId is not None:
            editor.setCurrentSegmentID(segmentId)

    def open_lesion_effect(self, segmentation, sourceVolume, mode: str) -> None:
        from PETCTLesionsLib.interactive.editor_options import EFFECT_NAME, MODE

        self.open_segment_editor(segmentation, sourceVolume, None)
        editor = slicer.util.getModuleWidget("SegmentEditor").editor
        editor.setActiveEffectByName(EFFECT_NAME)
        effect = editor.activeEffect()
        if effect is None:
            raise SetupError(_("The PET lesion effect is not registered in the Segment Editor: restart Slicer."))
        effect.setParameter(MODE, mode)

    def show_mip_view(self) -> None:
        layoutManager = slicer.app.layoutManager()
        if layoutManager.threeDViewCount == 0:
            layoutManager.setLayout(slicer.vtkMRMLLayoutNode.SlicerLayoutFourUpView)
        self._mipClicks.watch(layoutManager.threeDWidget(0).threeDView())

    def show_model_choice(self, nnunet: bool, text: str) -> None:
        for widget in (self.ui.modelPathLabel, self.ui.modelPathLineEdit, self.ui.bundledModelButton):
            widget.setVisible(not nnunet)
        self.ui.nnunetModelWidget.setVisible(nnunet)
        if self.ui.nnunetModelTextEdit.toPlainText() != text:  # setting it again scrolls back to the top
            self.ui.nnunetModelTextEdit.setPlainText(text)

    def show_export_summary(self, text: str) -> None:
        self.ui.exportSummaryTextEdit.setPlainText(text)

    def set_case_choices(self, cases) -> None:
        combo = self.ui.nnunetCaseComboBox
        combo.clear()
        combo.addItems(list(cases))


class _MipClicks:
    """Left clicks (a press and release without a drag, which rotates the view) in the 3D view of the PET MIP,
    sent to the presenter as the ray under the mouse."""

    DRAG_PIXELS = 3

    def __init__(self) -> None:
        self.presenter = None
        self._interactor = None
        self._tags = []
        self._pressedAt = None
        self._renderer = None

    def watch(self, threeDView) -> None:
        interactor = threeDView.interactor()
        if interactor is self._interactor:
            return
        self.stop()
        self._interactor = interactor
        self._renderer = threeDView.renderWindow().GetRenderers().GetFirstRenderer()
        for event, callback in (
            (vtk.vtkCommand.LeftButtonPressEvent, self._onPress),
            (vtk.vtkCommand.LeftButtonReleaseEvent, self._onRelease),
        ):
            self._tags.append(interactor.AddObserver(event, callback, 1.0))  # before the view's own handling

    def stop(self) -> None:
        if self._interactor is not None:
            for tag in self._tags:
                self._interactor.RemoveObserver(tag)
        self._interactor, self._tags, self._pressedAt = None, [], None

    def _onPress(self, interactor, event) -> None:
        self._pressedAt = interactor.GetEventPosition()

    def _onRelease(self, interactor, event) -> None:
        pressedAt, self._pressedAt = self._pressedAt, None
        x, y = interactor.GetEventPosition()
        if pressedAt is None or max(abs(x - pressedAt[0]), abs(y - pressedAt[1])) > self.DRAG_PIXELS:
            return  # a drag: the view was rotated
        from PETCTLesionsLib.mrml.mip_view import ray_under_mouse

        near, far = ray_under_mouse(self._renderer, x, y)
        self.presenter.mip_clicked(near, far)


class _ProgressDialog:
    """A modal progress dialog with a Cancel button, fed by the library's progress callbacks.

    The library calls ``progress`` between slices; processing events there keeps the window
    responsive and lets the user press Cancel (``cancelled`` is then what the library polls).
    """

    def __init__(self, title: str) -> None:
        self._title = title
        self._dialog = None

    def __enter__(self):
        # QProgressDialog is not modal by itself: without this, Load or Close Scene could be pressed mid-load.
        self._dialog = slicer.util.createProgressDialog(
            windowTitle=self._title, labelText=self._title, maximum=100, windowModality=qt.Qt.ApplicationModal
        )
        return self

    def __exit__(self, *exc_info) -> None:
        self._dialog.close()

    def progress(self, fraction: float, message: str) -> None:
        self._dialog.labelText = message
        self._dialog.value = int(round(100 * fraction))
        slicer.app.processEvents()

    def cancelled(self) -> bool:
        slicer.app.processEvents()
        return self._dialog.wasCanceled


#
# Logic
#


class PETCTLesionsLogic(ScriptedLoadableModuleLogic):
    """GUI-free entry points of the module; each delegates to PETCTLesionsLib."""

    torchRequirement = TORCH_REQUIREMENT  # the PyTorch versions detection runs with (ensureTorch)

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)

    def getParameterNode(self):
        return PETCTLesionsParameterNode(super().getParameterNode())

    # 1. Study

    def loadDemoStudy(self, seed: int, size: str = "full", cacheFolder: Optional[Path] = None):
        """The generated demo patient (as ``petct-lesions demo`` makes it), written as DICOM and loaded from it.

        The files are written once per seed and size (``demo.cached_demo_study``, under Slicer's
        temporary folder unless ``cacheFolder``); the study is loaded by the same reader as a
        user's study, so its CT slices keep their SOPInstanceUIDs (VOC export works).
        """
        from PETCTLesionsLib.demo import cached_demo_study
        from PETCTLesionsLib.mrml.study_nodes import add_study_nodes
        from PETCTLesionsLib.study import load_study

        root = Path(cacheFolder) if cacheFolder else Path(slicer.app.temporaryPath) / "PETCTLesionsDemo"
        studyDir = cached_demo_study(root, seed, size, progress=lambda _fraction, message: logging.info(message))
        return add_study_nodes(load_study([studyDir]))

    def importDicomFolder(self, folder: Optional[Path]):
        """Import ``folder`` into Slicer's DICOM database; return its PET/CT pairs and what cannot be paired."""
        from DICOMLib import DICOMUtils

        from PETCTLesionsLib.mrml.dicom_database import pet_ct_choices

        folder = chosen_path(folder)
        if folder is None or not folder.is_dir():
            raise InputError(_("Choose an existing DICOM folder first (got '{folder}').").format(folder=folder))
        if not slicer.dicomDatabase or not slicer.dicomDatabase.isOpen:
            raise SetupError(_("Slicer's DICOM database is not open: open the DICOM module once to create it."))
        if not DICOMUtils.importDicom(str(folder)):
            raise InputError(_("Slicer could not import '{folder}' (see the Python console).").format(folder=folder))
        return pet_ct_choices([Path(folder)])

    def loadStudyFromDatabase(self, choice, progress=None, cancel=None):
        """Load a PET/CT pair with Slicer's DICOM plugins, the PET converted to SUVbw."""
        from PETCTLesionsLib.mrml.dicom_database import DicomDatabaseStudyLoader

        return DicomDatabaseStudyLoader().load(choice, progress=progress, cancel=cancel)

    def importVocAnnotations(self, parameterNode: PETCTLesionsParameterNode):
        """The VOC files of the loaded DICOM study's patient under annotationFolder as boxes on their CT slices and
        one lesion per group of boxes (AnnotationImport: what was made, left out and why)."""
        from PETCTLesionsLib.mrml.annotations import import_voc_annotations

        folder = chosen_path(parameterNode.annotationFolder)
        if not parameterNode.ctVolume or folder is None:
            raise InputError(_("Load the DICOM study and choose the VOC folder first (Study panel)."))
        result = import_voc_annotations(
            parameterNode.ctVolume, folder, parameterNode.petVolume or None, parameterNode.segmentation or None
        )
        parameterNode.segmentation = result.segmentation
        return result

    def listNnUNetCases(self, folder: Path) -> List[str]:
        """The case ids of an nnU-Net raw dataset folder (training cases, then test cases)."""
        from PETCTLesionsLib.mrml.annotations import list_nnunet_cases

        return list_nnunet_cases(folder)

    def openNnUNetCase(self, folder: Path, caseId: str):
        """An nnU-Net case as CT and PET (SUVbw) volumes and one lesion segment per lesion (OpenedCase)."""
        from PETCTLesionsLib.mrml.annotations import open_nnunet_case

        return open_nnunet_case(folder, caseId)

    def suvWarnings(self, petNode) -> List[str]:
        """What converting this PET node to SUVbw warned about (kept on the node; none if never converted)."""
        from PETCTLesionsLib.mrml.study_nodes import suv_warnings

        return suv_warnings(petNode)

    def studyWarningsToShow(self, petNode, pairWarnings=()) -> List[str]:
        """The warnings to show for a study just shown: its PET/CT pairing's (``PetCtChoice.warnings``, at
        each load) and its PET's SUV warnings, the first time only: the node is marked as shown."""
        warnings = list(pairWarnings)
        suvWarnings = self.suvWarnings(petNode) if petNode else []
        if suvWarnings and not petNode.GetAttribute(SUV_WARNINGS_SHOWN_ATTRIBUTE):
            petNode.SetAttribute(SUV_WARNINGS_SHOWN_ATTRIBUTE, "true")
            warnings.extend(suvWarnings)
        return warnings

    # 2. Display

    def showFusedStudy(self, parameterNode: PETCTLesionsParameterNode) -> None:
        """CT with the chosen window preset behind the PET colour map in SUV, in every view, fitted.

        A PET volume that Slicer loaded from DICOM (Bq/mL) is converted to SUVbw first; a PET
        with no DICOM identity and no SUV units is refused rather than shown on a wrong scale.
        """
        from PETCTLesionsLib.mrml.dicom_database import DicomDatabaseStudyLoader
        from PETCTLesionsLib.mrml.display import show_fused_study
        from PETCTLesionsLib.mrml.study_nodes import is_suv_bw

        ctNode, petNode = parameterNode.ctVolume, parameterNode.petVolume
        if not ctNode or not petNode:
            raise InputError(_("Choose both a CT and a PET volume."))
        if not is_suv_bw(petNode):
            DicomDatabaseStudyLoader().convert_to_suv(petNode)
        window = parameterNode.suvWindow
        show_fused_study(
            ctNode,
            petNode,
            preset=parameterNode.ctPreset,
            suv_window=(window.minimum, window.maximum),
            pet_colormap=parameterNode.petColormap,
            opacity=parameterNode.petOpacity,
        )

    def applyCtPreset(self, ctNode, preset: str) -> None:
        from PETCTLesionsLib.mrml.display import apply_ct_preset

        apply_ct_preset(ctNode, preset)

    def setPetColormap(self, petNode, name: str) -> None:
        from PETCTLesionsLib.mrml.display import set_pet_colormap

        set_pet_colormap(petNode, name)

    def setSuvWindow(self, petNode, suvMin: float, suvMax: float) -> None:
        from PETCTLesionsLib.mrml.display import set_suv_window

        set_suv_window(petNode, suvMin, suvMax)

    def setPetOpacity(self, opacity: float) -> None:
        from PETCTLesionsLib.mrml.display import set_pet_opacity

        set_pet_opacity(slicer.mrmlScene, opacity)

    # 3. Detect

    def ensureTorch(self) -> bool:
        """True when torch can be imported; otherwise offer to install it with the PyTorch extension."""
        try:
            import PyTorchUtils
        except ImportError as error:
            raise SetupError(
                _(
                    "Lesion detection needs PyTorch: install the 'PyTorch' extension from the Extension Manager, "
                    "restart Slicer, and try again."
                )
            ) from error
        # Not PyTorchUtils' torchInstalled(): it imports torch, and an older torch left by another
        # extension passes it.
        version = _installed_torch_version()
        if version is not None and _is_recent_enough(version):
            return True
        if version is not None and "torch" in sys.modules:
            raise SetupError(
                _(
                    "PyTorch {version} is already loaded in Slicer, and lesion detection needs {requirement}. "
                    "Restart Slicer, update PyTorch in the PyTorch module, and try again."
                ).format(version=version, requirement=TORCH_REQUIREMENT)
            )
        torch = PyTorchUtils.PyTorchUtilsLogic().installTorch(
            askConfirmation=True, torchVersionRequirement=TORCH_REQUIREMENT
        )
        return torch is not None

    def torchPlatformNote(self) -> str:
        """What detection will and will not do with the installed PyTorch on this computer ("": nothing to say)."""
        import numpy

        torchVersion = _installed_torch_version()
        return _torch_platform_note(platform.system(), platform.machine(), torchVersion, numpy.__version__)

    def describeNnUNetModel(self, folder: Path):
        """What an nnU-Net trained-model folder holds (NnUNetModelInfo), from its JSON files and file names."""
        from PETCTLesionsLib.model.nnunet_model import describe_model

        return describe_model(folder)

    def nnunetInstalled(self) -> bool:
        from PETCTLesionsLib.model.nnunet_model import nnunet_installed

        return nnunet_installed()

    def nnunetRequirements(self) -> List[str]:
        """What to pip-install: nnunetv2 for this Python, with the installed torch pinned so pip keeps it."""
        from PETCTLesionsLib.model.nnunet_model import nnunet_pip_requirements

        return nnunet_pip_requirements(_installed_torch_version())

    def installNnUNet(self, requirements: List[str]) -> None:
        """pip-install ``requirements`` into Slicer's Python (the user agreed: ModulePresenter asks first)."""
        from PETCTLesionsLib.model.nnunet_model import NNUNET_INSTALL_HINT, nnunet_installed

        slicer.util.pip_install(" ".join(requirements))
        importlib.invalidate_caches()  # find_spec must see the new package
        if not nnunet_installed():
            raise SetupError(_("nnunetv2 was not installed ({hint}).").format(hint=NNUNET_INSTALL_HINT))

    def startDetection(self, parameterNode: PETCTLesionsParameterNode):
        """Start the model on the study in a PythonSlicer process; returns the job to poll or cancel."""
        from PETCTLesionsLib.detection_job import DetectionJob, DetectionSettings
        from PETCTLesionsLib.mrml.detection_nodes import detection_inputs

        ctNode, petNode = parameterNode.ctVolume, parameterNode.petVolume
        if not ctNode or not petNode:
            raise InputError(_("Choose both a CT and a PET volume (Study panel)."))
        model = detection_model(parameterNode)
        settings = DetectionSettings(
            model_path=str(model.path) if model.path else None,
            nnunet=model.nnunet,
            device=parameterNode.device,
            threshold=None if parameterNode.useModelThreshold else parameterNode.threshold,
            min_volume_ml=parameterNode.minLesionVolumeMl,
            filter_false_positives=parameterNode.filterFalsePositives,
        )
        python = shutil.which("PythonSlicer") or sys.executable
        environment = slicer.util.startupEnvironment() if hasattr(slicer.util, "startupEnvironment") else None
        return DetectionJob(*detection_inputs(ctNode, petNode), settings, python=python, environment=environment)

    def finishDetection(self, job, parameterNode: PETCTLesionsParameterNode):
        """The finished job's lesions as segments (in the chosen segmentation, or a new one) and boxes."""
        from PETCTLesionsLib.mrml.detection_nodes import add_detection_nodes

        found = job.result()
        nodes = add_detection_nodes(
            found, parameterNode.petVolume, parameterNode.ctVolume, segmentation=parameterNode.segmentation
        )
        parameterNode.segmentation = nodes.segmentation
        if nodes.segmentation.GetDisplayNode() is None:
            nodes.segmentation.CreateDefaultDisplayNodes()
        return nodes

    def undoDetection(self, nodes, parameterNode: PETCTLesionsParameterNode) -> None:
        """The last detection taken back: its boxes removed, the segmentation as it was before."""
        from PETCTLesionsLib.mrml.detection_nodes import undo_detection

        createdSegmentation = nodes.snapshot is None
        undo_detection(nodes)
        if createdSegmentation:
            parameterNode.segmentation = None

    # 4. Review

    def lesionRows(self, parameterNode: PETCTLesionsParameterNode):
        from PETCTLesionsLib.mrml.review import lesion_rows
        from PETCTLesionsLib.mrml.study_nodes import patient_id_of

        ctNode = parameterNode.ctVolume
        patientId = patient_id_of(ctNode) if ctNode else ""
        return lesion_rows(parameterNode.segmentation, parameterNode.petVolume, ctNode, patient_id=patientId)

    def centreViewsOn(self, ras) -> None:
        from PETCTLesionsLib.mrml.review import centre_views_on

        centre_views_on(slicer.mrmlScene, ras)

    def setReviewStatus(self, parameterNode: PETCTLesionsParameterNode, segmentId: str, status: str) -> None:
        from PETCTLesionsLib.mrml.review import set_status

        set_status(parameterNode.segmentation, segmentId, status)

    def setLesionClass(self, parameterNode: PETCTLesionsParameterNode, segmentId: str, className: str) -> None:
        from PETCTLesionsLib.mrml.review import set_class

        set_class(parameterNode.segmentation, segmentId, className)

    def deleteLesion(self, parameterNode: PETCTLesionsParameterNode, segmentId: str) -> int:
        from PETCTLesionsLib.mrml.review import delete_lesion

        return delete_lesion(parameterNode.segmentation, segmentId)

    def lesionSegmentation(self, parameterNode: PETCTLesionsParameterNode):
        """The study's lesion segmentation for the click tools (a new, empty one when there is none), knowing
        the CT its VOC boxes lie on."""
        from PETCTLesionsLib.mrml.lesion_edits import lesion_segmentation

        if not parameterNode.petVolume:
            raise InputError(_("Choose the PET first (Study panel)."))
        segmentation = lesion_segmentation(parameterNode.petVolume, parameterNode.ctVolume, parameterNode.segmentation)
        parameterNode.segmentation = segmentation
        return segmentation

    def showPetMip(self, parameterNode: PETCTLesionsParameterNode) -> None:
        """The PET as an inverted-grey MIP in the 3D view over the SUV window, with the lesions."""
        from PETCTLesionsLib.mrml.mip_view import show_pet_mip

        if not parameterNode.petVolume:
            raise InputError(_("Choose the PET first (Study panel)."))
        window = parameterNode.suvWindow
        show_pet_mip(
            parameterNode.petVolume,
            (window.minimum, window.maximum),
            segmentation=parameterNode.segmentation or None,
        )

    def centreOnMipClick(self, parameterNode: PETCTLesionsParameterNode, nearRas, farRas):
        """The slice views at the hottest PET voxel on the ray of a click on the MIP; its RAS, or None (a miss)."""
        from PETCTLesionsLib.mrml.mip_view import centre_on_mip_click

        return centre_on_mip_click(parameterNode.petVolume, nearRas, farRas)

    def addBoxOnSlice(self, parameterNode: PETCTLesionsParameterNode, sliceNode, className: str, segmentId=None):
        """A VOC box at the centre of ``sliceNode``'s view (None: the Red view's) on the CT slice shown."""
        from PETCTLesionsLib.mrml.review import add_box_on_slice, view_centre_ras

        if not parameterNode.ctVolume:
            raise InputError(_("Choose the CT first (Study panel)."))
        if sliceNode is None:
            # The node, not the view: it exists in every layout, also those that show no Red view.
            sliceNode = slicer.mrmlScene.GetNodeByID("vtkMRMLSliceNodeRed")
        return add_box_on_slice(
            parameterNode.ctVolume, view_centre_ras(sliceNode), className, parameterNode.segmentation, segmentId
        )

    # 5. Export

    def annotationSources(self, parameterNode: PETCTLesionsParameterNode) -> List[str]:
        """Where the study's annotations came from (a VOC folder, an nnU-Net case): what Write back replaces."""
        from PETCTLesionsLib.mrml.annotations import import_sources

        return import_sources(parameterNode.ctVolume or None, parameterNode.petVolume or None)

    def changesSinceImport(self, parameterNode: PETCTLesionsParameterNode):
        """Lesions and boxes added, removed, changed and unchanged since import (ChangeSummary), or None."""
        from PETCTLesionsLib.mrml.annotations import changes_since_import

        return changes_since_import(
            parameterNode.ctVolume or None, parameterNode.petVolume or None, parameterNode.segmentation or None
        )

    def exportAnnotationsBack(self, parameterNode: PETCTLesionsParameterNode, replace: bool):
        """The corrections written over the VOC folder or nnU-Net case they came from (backups kept beside the
        replaced files; ``replace`` once the user agreed); returns what was written and what changed."""
        from PETCTLesionsLib.mrml.annotations import export_back

        if not parameterNode.ctVolume:
            raise InputError(_("Choose the CT and PET first (Study panel)."))
        return export_back(
            parameterNode.ctVolume, parameterNode.petVolume or None, parameterNode.segmentation or None, replace
        )

    def exportAnnotations(self, parameterNode: PETCTLesionsParameterNode):
        """The kept lesions as an nnU-Net case and their boxes as VOC XML; returns what was written and skipped."""
        from PETCTLesionsLib.formats.nnunet import check_dataset_folder_name
        from PETCTLesionsLib.mrml.export import export_study

        if not parameterNode.ctVolume:
            raise InputError(_("Choose the CT and PET first (Study panel)."))
        rawFolder, datasetName = chosen_path(parameterNode.nnunetRawFolder), parameterNode.nnunetDatasetName.strip()
        dataset = rawFolder / check_dataset_folder_name(datasetName) if rawFolder and datasetName else None
        vocFolder = chosen_path(parameterNode.vocFolder) if parameterNode.exportVoc else None
        return export_study(
            parameterNode.ctVolume,
            parameterNode.petVolume,
            parameterNode.segmentation,
            nnunet_dataset=dataset,
            voc_root=vocFolder,
            overwrite=parameterNode.overwriteExports,
        )


#
# Test
#


class PETCTLesionsTest(ScriptedLoadableModuleTest):
    """The whole workflow inside Slicer on a small generated study: load, display, detect, review, export."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_FusedDisplay()
        self.setUp()
        self.test_Workflow()

    def test_FusedDisplay(self):
        self.delayDisplay("Fused display of the demo study")
        logic = PETCTLesionsLogic()
        parameterNode = logic.getParameterNode()
        parameterNode.ctVolume, parameterNode.petVolume = logic.loadDemoStudy(seed=1, size="small")
        parameterNode.ctPreset = "Lung"
        logic.showFusedStudy(parameterNode)
        ctDisplay = parameterNode.ctVolume.GetDisplayNode()
        self.assertEqual((ctDisplay.GetWindow(), ctDisplay.GetLevel()), (1400.0, -700.0))
        self.assertEqual(parameterNode.petVolume.GetDisplayNode().GetColorNode().GetName(), "PET-Heat")
        composite = slicer.app.layoutManager().sliceWidget("Red").mrmlSliceCompositeNode()
        self.assertEqual(composite.GetForegroundVolumeID(), parameterNode.petVolume.GetID())
        self.delayDisplay("Test passed")

    def test_Workflow(self):
        import tempfile

        import SimpleITK as sitk

        from PETCTLesionsLib.formats import nnunet, voc
        from PETCTLesionsLib.mrml.study_nodes import patient_id_of, study_case_id

        self.delayDisplay("Detect, review and export on the demo study")
        logic = PETCTLesionsLogic()
        parameterNode = logic.getParameterNode()
        parameterNode.ctVolume, parameterNode.petVolume = logic.loadDemoStudy(seed=1, size="small")
        parameterNode.segmentation = None
        parameterNode.device = "cpu"
        logic.showFusedStudy(parameterNode)
        # Never ensureTorch() here: under ctest (testing enabled) PyTorchUtils installs torch
        # without asking, a download of several GB. Without torch the detection part is skipped.
        if importlib.util.find_spec("torch") is None:
            self.delayDisplay("PyTorch is not installed: detection, review and export not tested")
            return
        job = logic.startDetection(parameterNode)
        deadline = time.monotonic() + 600
        while not job.poll().done and time.monotonic() < deadline:
            slicer.app.processEvents()  # the GUI keeps running while the model works
            time.sleep(0.1)
        nodes = logic.finishDetection(job, parameterNode)
        self.assertGreaterEqual(len(nodes.segment_ids), 2, job.log)
        rows = logic.lesionRows(parameterNode)
        self.assertEqual([row.segment_id for row in rows], nodes.segment_ids)
        logic.centreViewsOn(rows[0].centre_ras)
        logic.setReviewStatus(parameterNode, rows[1].segment_id, "rejected")
        with tempfile.TemporaryDirectory() as folder:
            parameterNode.nnunetRawFolder = Path(folder) / "nnUNet_raw"
            parameterNode.nnunetDatasetName = "Dataset990_SelfTest"
            parameterNode.vocFolder = Path(folder) / "Annotation"
            report = logic.exportAnnotations(parameterNode)
            self.assertEqual(report.skipped, [], report.text())
            dataset = parameterNode.nnunetRawFolder / parameterNode.nnunetDatasetName
            case = nnunet.read_case(dataset, study_case_id(parameterNode.ctVolume))
            # Every kept (not rejected) lesion is in the exported label, and nothing else.
            kept = sum(row.voxels for row in rows if row.segment_id != rows[1].segment_id)
            self.assertEqual(int(sitk.GetArrayFromImage(case.label).sum()), kept)
            patientFolder = parameterNode.vocFolder / voc.patient_folder_name(patient_id_of(parameterNode.ctVolume))
            annotations, problems = voc.read_voc_folder(patientFolder)
            self.assertEqual(problems, [])
            self.assertGreater(len(annotations), 0)
        self.delayDisplay("Test passed")
