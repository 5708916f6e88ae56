"""PETCTLesions: the 3D Slicer module (Module, parameter node, Widget, Logic, Test).

This file is the thin Slicer shell. The work lives in PETCTLesionsLib (plain Python) and its
MRML layer PETCTLesionsLib.mrml (Slicer nodes), both tested headlessly; the Widget only
binds the .ui to the parameter node and calls the Logic, and every Logic method is one call
into the library (Testing/Python/test_module_workflow.py runs the same calls on real MRML).
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
            "generated demo study (also in Sample Data).<br>"
            "2. <b>Display</b>: CT window presets (Mediastinum W350/L40, Lung W1400/L-700, Bone), PET colour map "
            "over an SUV window, PET opacity.<br>"
            "3. <b>Detect</b>: run the bundled lesion model (GPU when there is one, else CPU) in the background; "
            "lesions are added as segments (one per lesion) beside your own, and as VOC boxes for Lung-PET-CT-Dx "
            "patients. Cancel at any time: nothing half-made is added.<br>"
            "4. <b>Review</b>: the lesion table (class, SUVmax, SUVmean, MTV, TLG, slices) is measured on the PET "
            "as the segments are now. Click a row to go to the lesion; accept, reject (hidden and not exported) or "
            "delete it; correct it in the Segment Editor; add a box on the slice shown.<br>"
            "5. <b>Export</b>: the kept lesions as an nnU-Net case (autoPET layout) and VOC XML (Lung-PET-CT-Dx "
            "layout). Existing files are never replaced unless you ask.<br>"
            "The bundled model was trained on generated studies only and is not validated on patients. See the "
            "<a href='https://github.com/PETCTLesions/SlicerPETCTLesions#readme'>README</a> "
            "for the command line and the model card."
        )
        self.parent.acknowledgementText = _(
            "Test data: TCIA Lung-PET-CT-Dx (Li P. et al., doi:10.7937/TCIA.2020.NNC2-0461, CC BY 4.0). "
            "Data layout and metrics: autoPET / PSMA-FDG-PET-CT-Lesions (Gatidis S. et al., TCIA, "
            "doi:10.7937/gkr0-xv29), nnU-Net (Isensee F. et al.)."
        )
        # Sample Data exists only once the application has started.
        slicer.app.connect("startupCompleted()", registerSampleData)


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


#
# Parameter node
#


@parameterNodeWrapper
class PETCTLesionsParameterNode:
    """The module's state, saved with the scene.

    Study: dicomFolder (last imported), ctVolume and petVolume (PET in SUVbw), demoSeed.
    Display: ctPreset, petColormap, suvWindow, petOpacity.
    Detect: segmentation (receives the lesions; none: a new one), device, modelPath (empty:
    the bundled model), useModelThreshold (the model's own, from its manifest) else threshold
    (model probability), minLesionVolumeMl.
    Export: nnunetRawFolder + nnunetDatasetName, vocFolder + exportVoc, overwriteExports.
    """

    dicomFolder: Path
    ctVolume: vtkMRMLScalarVolumeNode
    petVolume: vtkMRMLScalarVolumeNode
    demoSeed: Annotated[int, WithinRange(0, 999999)] = 1
    ctPreset: Annotated[str, Choice(["Mediastinum", "Lung", "Bone"])] = "Mediastinum"
    petColormap: Annotated[str, Choice(["PET-Heat", "PET-Rainbow2", "PET-DICOM"])] = "PET-Heat"
    suvWindow: Annotated[FloatRange, RangeBounds(0.0, 50.0), Default(FloatRange(0.0, 10.0))]
    petOpacity: Annotated[float, WithinRange(0.0, 1.0)] = 0.5
    segmentation: vtkMRMLSegmentationNode
    device: Annotated[str, Choice(["auto", "cuda", "mps", "cpu"])] = "auto"
    modelPath: Path
    useModelThreshold: bool = True
    threshold: Annotated[float, WithinRange(0.05, 0.95)] = 0.5
    minLesionVolumeMl: Annotated[float, WithinRange(0.0, 1000.0)] = 0.0
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


def _chosen(path: Optional[Path]) -> Optional[Path]:
    """A path the user chose, or None for an empty field (the wrapper stores it as '.')."""
    return None if path is None or str(path) in ("", ".") else Path(path)


#
# Widget
#


class PETCTLesionsWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._petCtChoices = []
        self._detectionJob = None
        self._lastDetection = None
        self._lesionRows = []
        self._platformNoteShown = False

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/PETCTLesions.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)

        self.logic = PETCTLesionsLogic()

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        # 1. Study
        self.ui.importDicomButton.connect("clicked(bool)", self.onImportDicomButton)
        self.ui.loadStudyButton.connect("clicked(bool)", self.onLoadStudyButton)
        self.ui.loadDemoButton.connect("clicked(bool)", self.onLoadDemoButton)
        # 2. Display: controls act at once on the study in view (values arrive with the signal).
        self.ui.showFusedButton.connect("clicked(bool)", self.onShowFusedButton)
        for button, preset in (
            (self.ui.mediastinumPresetButton, "Mediastinum"),
            (self.ui.lungPresetButton, "Lung"),
            (self.ui.bonePresetButton, "Bone"),
        ):
            button.connect("clicked(bool)", lambda _checked, preset=preset: self.onCtPresetButton(preset))
        self.ui.petColormapComboBox.connect("currentIndexChanged(int)", self.onPetColormapChanged)
        self.ui.suvWindowRangeWidget.connect("valuesChanged(double,double)", self.onSuvWindowChanged)
        self.ui.petOpacitySliderWidget.connect("valueChanged(double)", self.onPetOpacityChanged)
        # 3. Detect: the button starts a background run and turns into Cancel while it runs.
        self.ui.detectButton.connect("clicked(bool)", self.onDetectButton)
        self.ui.useModelThresholdCheckBox.connect(
            "toggled(bool)", lambda useModel: self.ui.thresholdSliderWidget.setEnabled(not useModel)
        )
        self.ui.bundledModelButton.connect("clicked(bool)", self.onBundledModelButton)
        self.ui.undoDetectionButton.connect("clicked(bool)", self.onUndoDetectionButton)
        self.ui.detectProgressBar.setVisible(False)
        self._detectionTimer = qt.QTimer()
        self._detectionTimer.setInterval(200)
        self._detectionTimer.connect("timeout()", self.onDetectionTimer)
        # 4. Review
        self.ui.lesionTable.connect("itemSelectionChanged()", self.onLesionSelectionChanged)
        self.ui.acceptButton.connect("clicked(bool)", lambda _checked: self.onReviewStatus("accepted"))
        self.ui.rejectButton.connect("clicked(bool)", lambda _checked: self.onReviewStatus("rejected"))
        self.ui.deleteButton.connect("clicked(bool)", self.onDeleteLesionButton)
        self.ui.lesionClassComboBox.addItems(["A", "B", "E", "G"])
        self.ui.setClassButton.connect("clicked(bool)", self.onSetClassButton)
        self.ui.segmentEditorButton.connect("clicked(bool)", self.onSegmentEditorButton)
        self.ui.addBoxButton.connect("clicked(bool)", self.onAddBoxButton)
        self.ui.refreshTableButton.connect("clicked(bool)", lambda _checked: self.updateLesionTable())
        # 5. Export
        self.ui.exportButton.connect("clicked(bool)", self.onExportButton)

        self.initializeParameterNode()

    def cleanup(self) -> None:
        self._cancelDetection()
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None

    def onSceneStartClose(self, caller, event) -> None:
        self._cancelDetection()
        self._lastDetection = None
        self.ui.undoDetectionButton.enabled = False
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())

    def setParameterNode(self, inputParameterNode: Optional[PETCTLesionsParameterNode]) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            # Widgets carrying a SlicerParameterName property in the .ui follow the parameter node.
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.ui.thresholdSliderWidget.setEnabled(not self._parameterNode.useModelThreshold)
        self.updateLesionTable(quiet=True)

    # ------------------------------------------------------------------------------- 1. Study

    def onImportDicomButton(self) -> None:
        folder = _chosen(self._parameterNode.dicomFolder)  # unset is Path("."): never import the working folder
        with slicer.util.tryWithErrorDisplay(_("Failed to import the DICOM folder."), waitCursor=True):
            choices, problems = self.logic.importDicomFolder(folder)
            self._petCtChoices = choices
            self.ui.studyComboBox.clear()
            for choice in choices:
                self.ui.studyComboBox.addItem(choice.label)
                self.ui.studyComboBox.setItemData(self.ui.studyComboBox.count - 1, choice.rule, qt.Qt.ToolTipRole)
            self.ui.loadStudyButton.enabled = bool(choices)
            if problems:
                slicer.util.warningDisplay(problems, windowTitle=_("Series that cannot be loaded"))

    def onLoadStudyButton(self) -> None:
        index = self.ui.studyComboBox.currentIndex
        if not 0 <= index < len(self._petCtChoices):
            return
        choice = self._petCtChoices[index]
        with slicer.util.tryWithErrorDisplay(_("Failed to load the PET/CT study."), waitCursor=True):
            with _ProgressDialog(_("Loading PET/CT study")) as dialog:
                ctNode, petNode = self.logic.loadStudyFromDatabase(
                    choice, progress=dialog.progress, cancel=dialog.cancelled
                )
            self._showStudy(ctNode, petNode, choice.warnings)

    def onLoadDemoButton(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Failed to create the demo study."), waitCursor=True):
            ctNode, petNode = self.logic.loadDemoStudy(self._parameterNode.demoSeed)
            self._showStudy(ctNode, petNode)

    def _showStudy(self, ctNode, petNode, pairWarnings=()) -> None:
        self._parameterNode.ctVolume = ctNode
        self._parameterNode.petVolume = petNode
        self._parameterNode.segmentation = None  # a new study's lesions go to a new segmentation
        self.logic.showFusedStudy(self._parameterNode)
        self._showStudyWarnings(petNode, pairWarnings)
        self.updateLesionTable()

    def _showStudyWarnings(self, petNode, pairWarnings=()) -> None:
        """In one dialog: what the PET/CT pairing warned about (e.g. a CT covering under 90% of the PET)
        and, once per PET node, what the SUV computation did (e.g. an uptake time unusual for a static scan)."""
        warnings = self.logic.studyWarningsToShow(petNode, pairWarnings)
        if warnings:
            slicer.util.warningDisplay("\n\n".join(warnings), windowTitle=_("Study loaded, but check these warnings"))

    # ------------------------------------------------------------------------------- 2. Display

    def onShowFusedButton(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Failed to show the fused study."), waitCursor=True):
            self.logic.showFusedStudy(self._parameterNode)
        self._showStudyWarnings(self._parameterNode.petVolume)

    def onCtPresetButton(self, preset: str) -> None:
        self._parameterNode.ctPreset = preset
        if self._parameterNode.ctVolume:
            with slicer.util.tryWithErrorDisplay(_("Failed to set the CT window.")):
                self.logic.applyCtPreset(self._parameterNode.ctVolume, preset)

    def onPetColormapChanged(self, index: int) -> None:
        petNode = self._parameterNode.petVolume if self._parameterNode else None
        if petNode and index >= 0:
            with slicer.util.tryWithErrorDisplay(_("Failed to set the PET colour map.")):
                self.logic.setPetColormap(petNode, self.ui.petColormapComboBox.itemText(index))

    def onSuvWindowChanged(self, suvMin: float, suvMax: float) -> None:
        petNode = self._parameterNode.petVolume if self._parameterNode else None
        if petNode and suvMax > suvMin:
            self.logic.setSuvWindow(petNode, suvMin, suvMax)

    def onPetOpacityChanged(self, opacity: float) -> None:
        if self._parameterNode and self._parameterNode.petVolume:
            self.logic.setPetOpacity(opacity)

    # ------------------------------------------------------------------------------- 3. Detect

    def onDetectButton(self) -> None:
        if self._detectionJob is not None:
            self._cancelDetection()
            self.ui.detectStatusLabel.text = _("Cancelled: nothing was added.")
            return
        with slicer.util.tryWithErrorDisplay(_("Failed to start lesion detection."), waitCursor=True):
            if not self.logic.ensureTorch():
                self.ui.detectStatusLabel.text = _(
                    "Lesion detection needs PyTorch {requirement}, which was not installed."
                ).format(requirement=TORCH_REQUIREMENT)
                return
            platformNote = self.logic.torchPlatformNote()
            if platformNote and not self._platformNoteShown:  # once a session, until the user ticks it off
                self._platformNoteShown = True
                slicer.util.infoDisplay(
                    platformNote,
                    windowTitle=_("Lesion detection on this computer"),
                    dontShowAgainSettingsKey="PETCTLesions/DontShowTorchPlatformNote",
                )
            self._detectionJob = self.logic.startDetection(self._parameterNode)
            self.ui.detectButton.text = _("Cancel")
            self.ui.detectProgressBar.value = 0
            self.ui.detectProgressBar.setVisible(True)
            self.ui.detectStatusLabel.text = _("Starting...")
            self._detectionTimer.start()

    def onDetectionTimer(self) -> None:
        job = self._detectionJob
        if job is None:
            self._detectionTimer.stop()
            return
        status = job.poll()
        for line in status.new_log_lines:
            logging.info(f"[lesion detection] {line}")
        self.ui.detectProgressBar.value = int(round(100 * status.fraction))
        self.ui.detectStatusLabel.text = status.message
        if not status.done:
            return
        self._endDetection()
        with slicer.util.tryWithErrorDisplay(_("Lesion detection failed."), waitCursor=True):
            nodes = self.logic.finishDetection(job, self._parameterNode)
            self._lastDetection = nodes
            self.ui.undoDetectionButton.enabled = True
            notes = "; ".join(nodes.notes)
            self.ui.detectStatusLabel.text = _("{count} lesions added to '{name}'.").format(
                count=len(nodes.segment_ids), name=nodes.segmentation.GetName()
            ) + (f" {notes}" if notes else "")
        self.updateLesionTable()  # outside: tryWithErrorDisplay re-raises, so nested ones show two dialogs

    def _endDetection(self) -> None:
        self._detectionTimer.stop()
        self._detectionJob = None
        self.ui.detectButton.text = _("Detect lesions")
        self.ui.detectProgressBar.setVisible(False)

    def _cancelDetection(self) -> None:
        if self._detectionJob is not None:
            self._detectionJob.cancel()
            self._endDetection()

    def onBundledModelButton(self) -> None:
        # Clearing the path field cannot do this: ctkPathLineEdit only reports acceptable input
        # (an existing .json), so an empty field never reaches the parameter node.
        if self._parameterNode is not None:
            self._parameterNode.modelPath = Path()  # what _chosen() reads as "the bundled model"
        self.ui.modelPathLineEdit.currentPath = ""

    def onUndoDetectionButton(self) -> None:
        if self._lastDetection is None:
            return
        with slicer.util.tryWithErrorDisplay(_("Failed to undo the detection.")):
            self.logic.undoDetection(self._lastDetection, self._parameterNode)
            self._lastDetection = None
            self.ui.undoDetectionButton.enabled = False
        self.updateLesionTable()

    # ------------------------------------------------------------------------------- 4. Review

    def updateLesionTable(self, quiet: bool = False) -> None:
        """Measure the segments again; ``quiet`` (module entered, scene changed): log problems, no dialog."""
        if not hasattr(self, "ui"):
            return
        node = self._parameterNode
        rows = []
        if node and node.segmentation and node.petVolume:
            if quiet:
                try:
                    rows = self.logic.lesionRows(node)
                except (ValueError, RuntimeError) as error:
                    logging.warning(f"Lesion table not updated: {error}")
            else:
                with slicer.util.tryWithErrorDisplay(_("Failed to measure the lesions."), waitCursor=True):
                    rows = self.logic.lesionRows(node)
        self._lesionRows = rows
        table = self.ui.lesionTable
        table.setRowCount(len(rows))
        for r, row in enumerate(rows):
            values = (
                row.name,
                row.class_name,
                f"{row.suv_max:.2f}",
                f"{row.suv_mean:.2f}",
                f"{row.mtv_ml:.2f}",
                f"{row.tlg:.1f}",
                row.slices_text,
                row.status,
            )
            for c, value in enumerate(values):
                table.setItem(r, c, qt.QTableWidgetItem(value))
        table.resizeColumnsToContents()
        self._updateReviewButtons()

    def _selectedRow(self):
        selected = self.ui.lesionTable.selectedItems()
        index = selected[0].row() if selected else -1
        return self._lesionRows[index] if 0 <= index < len(self._lesionRows) else None

    def _updateReviewButtons(self) -> None:
        row = self._selectedRow()
        for button in (self.ui.acceptButton, self.ui.rejectButton, self.ui.deleteButton, self.ui.setClassButton):
            button.enabled = row is not None
        self.ui.lesionClassComboBox.enabled = row is not None
        self.ui.addBoxButton.enabled = bool(self._parameterNode and self._parameterNode.ctVolume)

    def onLesionSelectionChanged(self) -> None:
        self._updateReviewButtons()
        row = self._selectedRow()
        if row is None:
            return
        if row.class_name:
            self.ui.lesionClassComboBox.setCurrentText(row.class_name)
        if row.centre_ras is not None:
            self.logic.centreViewsOn(row.centre_ras)

    def onReviewStatus(self, status: str) -> None:
        row = self._selectedRow()
        if row is not None:
            with slicer.util.tryWithErrorDisplay(_("Failed to record the review decision.")):
                self.logic.setReviewStatus(self._parameterNode, row.segment_id, status)
            self.updateLesionTable()

    def onDeleteLesionButton(self) -> None:
        row = self._selectedRow()
        if row is None:
            return
        if not slicer.util.confirmYesNoDisplay(
            _("Delete '{name}' and its boxes? (Reject keeps it, hidden and not exported.)").format(name=row.name)
        ):
            return
        with slicer.util.tryWithErrorDisplay(_("Failed to delete the lesion.")):
            self.logic.deleteLesion(self._parameterNode, row.segment_id)
        self.updateLesionTable()

    def onSetClassButton(self) -> None:
        row = self._selectedRow()
        if row is not None:
            with slicer.util.tryWithErrorDisplay(_("Failed to set the lesion class.")):
                self.logic.setLesionClass(self._parameterNode, row.segment_id, self.ui.lesionClassComboBox.currentText)
            self.updateLesionTable()

    def onSegmentEditorButton(self) -> None:
        node = self._parameterNode
        if not node.segmentation:
            slicer.util.warningDisplay(_("Run detection or choose a segmentation under Detect first."))
            return
        row = self._selectedRow()
        slicer.util.selectModule("SegmentEditor")
        editor = slicer.util.getModuleWidget("SegmentEditor").editor
        editor.setSegmentationNode(node.segmentation)
        if node.petVolume:
            editor.setSourceVolumeNode(node.petVolume)  # thresholds then work in SUV
        if row is not None:
            editor.setCurrentSegmentID(row.segment_id)

    def onAddBoxButton(self) -> None:
        row = self._selectedRow()
        with slicer.util.tryWithErrorDisplay(_("Failed to add the box.")):
            # The node, not the view: it exists in every layout, also those that show no Red view.
            sliceNode = slicer.mrmlScene.GetNodeByID("vtkMRMLSliceNodeRed")
            className = self.ui.lesionClassComboBox.currentText
            self.logic.addBoxOnSlice(self._parameterNode, sliceNode, className, row.segment_id if row else None)

    # ------------------------------------------------------------------------------- 5. Export

    def onExportButton(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Failed to export the annotations."), waitCursor=True):
            report = self.logic.exportAnnotations(self._parameterNode)
            self.ui.exportSummaryTextEdit.setPlainText(report.text())


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

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)

    def getParameterNode(self):
        return PETCTLesionsParameterNode(super().getParameterNode())

    # 1. Study

    def loadDemoStudy(self, seed: int, size: str = "full", cacheFolder: Optional[Path] = None):
        """The generated demo patient (as ``petct-lesions demo`` makes it), written as DICOM and loaded from it.

        The files are written once per seed (under Slicer's temporary folder unless
        ``cacheFolder``); the study is loaded by the same reader as a user's study, so its CT
        slices keep their SOPInstanceUIDs (VOC export works).
        """
        from PETCTLesionsLib.demo import write_demo_study
        from PETCTLesionsLib.mrml.study_nodes import add_study_nodes
        from PETCTLesionsLib.study import load_study

        root = Path(cacheFolder) if cacheFolder else Path(slicer.app.temporaryPath) / "PETCTLesionsDemo"
        folder = root / f"seed-{seed}-{size}"
        marker = folder / "complete"
        if not marker.is_file():
            shutil.rmtree(folder, ignore_errors=True)  # a half-written folder from an interrupted run
            logging.info(f"Generating the demo PET/CT study (seed {seed}) in {folder}")
            _, case = write_demo_study(folder, seed=seed, size=size)
            marker.write_text(str(case.study_dir.relative_to(folder)))
        studyDir = folder / marker.read_text().strip()
        return add_study_nodes(load_study([studyDir]))

    def importDicomFolder(self, folder: Optional[Path]):
        """Import ``folder`` into Slicer's DICOM database; return its PET/CT pairs and what cannot be paired."""
        from DICOMLib import DICOMUtils

        from PETCTLesionsLib.mrml.dicom_database import pet_ct_choices

        folder = _chosen(folder)
        if folder is None or not folder.is_dir():
            raise ValueError(_("Choose an existing DICOM folder first (got '{folder}').").format(folder=folder))
        if not slicer.dicomDatabase or not slicer.dicomDatabase.isOpen:
            raise RuntimeError(_("Slicer's DICOM database is not open: open the DICOM module once to create it."))
        if not DICOMUtils.importDicom(str(folder)):
            raise RuntimeError(_("Slicer could not import '{folder}' (see the Python console).").format(folder=folder))
        return pet_ct_choices([Path(folder)])

    def loadStudyFromDatabase(self, choice, progress=None, cancel=None):
        """Load a PET/CT pair with Slicer's DICOM plugins, the PET converted to SUVbw."""
        from PETCTLesionsLib.mrml.dicom_database import DicomDatabaseStudyLoader

        return DicomDatabaseStudyLoader().load(choice, progress=progress, cancel=cancel)

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
            raise ValueError(_("Choose both a CT and a PET volume."))
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
            raise RuntimeError(
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
            raise RuntimeError(
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

    def startDetection(self, parameterNode: PETCTLesionsParameterNode):
        """Start the model on the study in a PythonSlicer process; returns the job to poll or cancel."""
        from PETCTLesionsLib.detection_job import DetectionJob, DetectionSettings
        from PETCTLesionsLib.mrml.detection_nodes import detection_inputs

        ctNode, petNode = parameterNode.ctVolume, parameterNode.petVolume
        if not ctNode or not petNode:
            raise ValueError(_("Choose both a CT and a PET volume (Study panel)."))
        modelPath = _chosen(parameterNode.modelPath)
        settings = DetectionSettings(
            model_path=str(modelPath) if modelPath else None,
            device=parameterNode.device,
            threshold=None if parameterNode.useModelThreshold else parameterNode.threshold,
            min_volume_ml=parameterNode.minLesionVolumeMl,
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

    def addBoxOnSlice(self, parameterNode: PETCTLesionsParameterNode, sliceNode, className: str, segmentId=None):
        from PETCTLesionsLib.mrml.review import add_box_on_slice, view_centre_ras

        if not parameterNode.ctVolume:
            raise ValueError(_("Choose the CT first (Study panel)."))
        return add_box_on_slice(
            parameterNode.ctVolume, view_centre_ras(sliceNode), className, parameterNode.segmentation, segmentId
        )

    # 5. Export

    def exportAnnotations(self, parameterNode: PETCTLesionsParameterNode):
        """The kept lesions as an nnU-Net case and their boxes as VOC XML; returns what was written and skipped."""
        from PETCTLesionsLib.formats.nnunet import check_dataset_folder_name
        from PETCTLesionsLib.mrml.export import export_study

        if not parameterNode.ctVolume:
            raise ValueError(_("Choose the CT and PET first (Study panel)."))
        rawFolder, datasetName = _chosen(parameterNode.nnunetRawFolder), parameterNode.nnunetDatasetName.strip()
        dataset = rawFolder / check_dataset_folder_name(datasetName) if rawFolder and datasetName else None
        vocFolder = _chosen(parameterNode.vocFolder) if parameterNode.exportVoc else None
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
