"""PETCTLesions: the 3D Slicer module (Module, parameter node, Widget, Logic, Test).

This file is the thin Slicer shell. The work lives in PETCTLesionsLib (plain Python) and its
MRML layer PETCTLesionsLib.mrml (Slicer nodes), both tested headlessly; the Widget only
binds the .ui to the parameter node and calls the Logic.
"""

import logging
from pathlib import Path
from typing import Annotated, Optional

import qt
import slicer
from slicer import vtkMRMLScalarVolumeNode
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
            "Review and annotate lesions on PET/CT.<br>"
            "1. Study: import a DICOM folder and load a PET/CT pair through Slicer's DICOM database, "
            "or pick CT and PET volumes already loaded (a PET loaded from DICOM is converted to SUVbw), "
            "or generate the synthetic demo study.<br>"
            "2. Display: CT window presets (Mediastinum W350/L40, Lung W1400/L-700, Bone), PET colour map "
            "over an SUV window, PET opacity.<br>"
            "See the <a href='https://github.com/PETCTLesions/SlicerPETCTLesions#readme'>README</a> "
            "for the whole workflow and the command line."
        )
        self.parent.acknowledgementText = _(
            "Test data: TCIA Lung-PET-CT-Dx (Li P. et al., doi:10.7937/TCIA.2020.NNC2-0461, CC BY 4.0). "
            "Data format conventions: autoPET / PSMA-FDG-PET-CT-Lesions (Gatidis S. et al.)."
        )


#
# Parameter node
#


@parameterNodeWrapper
class PETCTLesionsParameterNode:
    """The module's state, saved with the scene.

    dicomFolder: folder last imported into the DICOM database.
    ctVolume, petVolume: the study being reviewed (PET in SUVbw).
    demoSeed: seed of the synthetic demo study (same seed, same patient).
    ctPreset: CT window preset; petColormap: Slicer colour table of the PET;
    suvWindow: SUV range spread over the colour table; petOpacity: PET layer opacity.
    """

    dicomFolder: Path
    ctVolume: vtkMRMLScalarVolumeNode
    petVolume: vtkMRMLScalarVolumeNode
    demoSeed: Annotated[int, WithinRange(0, 999999)] = 1
    ctPreset: Annotated[str, Choice(["Mediastinum", "Lung", "Bone"])] = "Mediastinum"
    petColormap: Annotated[str, Choice(["PET-Heat", "PET-Rainbow2", "PET-DICOM"])] = "PET-Heat"
    suvWindow: Annotated[FloatRange, RangeBounds(0.0, 50.0), Default(FloatRange(0.0, 10.0))]
    petOpacity: Annotated[float, WithinRange(0.0, 1.0)] = 0.5


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

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/PETCTLesions.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)

        self.logic = PETCTLesionsLogic()

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        self.ui.importDicomButton.connect("clicked(bool)", self.onImportDicomButton)
        self.ui.loadStudyButton.connect("clicked(bool)", self.onLoadStudyButton)
        self.ui.loadDemoButton.connect("clicked(bool)", self.onLoadDemoButton)
        self.ui.showFusedButton.connect("clicked(bool)", self.onShowFusedButton)
        for button, preset in (
            (self.ui.mediastinumPresetButton, "Mediastinum"),
            (self.ui.lungPresetButton, "Lung"),
            (self.ui.bonePresetButton, "Bone"),
        ):
            button.connect("clicked(bool)", lambda _checked, preset=preset: self.onCtPresetButton(preset))
        # Display controls act at once on the study in view (values arrive with the signal).
        self.ui.petColormapComboBox.connect("currentIndexChanged(int)", self.onPetColormapChanged)
        self.ui.suvWindowRangeWidget.connect("valuesChanged(double,double)", self.onSuvWindowChanged)
        self.ui.petOpacitySliderWidget.connect("valueChanged(double)", self.onPetOpacityChanged)
        self._petCtChoices = []

        self.initializeParameterNode()

    def cleanup(self) -> None:
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None

    def onSceneStartClose(self, caller, event) -> None:
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

    def onImportDicomButton(self) -> None:
        folder = self._parameterNode.dicomFolder
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
        with slicer.util.tryWithErrorDisplay(_("Failed to load the PET/CT study."), waitCursor=True):
            with _ProgressDialog(_("Loading PET/CT study")) as dialog:
                ctNode, petNode = self.logic.loadStudyFromDatabase(
                    self._petCtChoices[index], progress=dialog.progress, cancel=dialog.cancelled
                )
            self._showStudy(ctNode, petNode)

    def onLoadDemoButton(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Failed to create the demo study."), waitCursor=True):
            ctNode, petNode = self.logic.loadSyntheticStudy(self._parameterNode.demoSeed)
            self._showStudy(ctNode, petNode)

    def onShowFusedButton(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Failed to show the fused study."), waitCursor=True):
            self.logic.showFusedStudy(self._parameterNode)

    def _showStudy(self, ctNode, petNode) -> None:
        self._parameterNode.ctVolume = ctNode
        self._parameterNode.petVolume = petNode
        self.logic.showFusedStudy(self._parameterNode)

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


class _ProgressDialog:
    """A modal progress dialog with a Cancel button, fed by the library's progress callbacks.

    The library calls ``progress`` between slices; processing events there keeps the window
    responsive and lets the user press Cancel (``cancelled`` is then what the library polls).
    """

    def __init__(self, title: str) -> None:
        self._title = title
        self._dialog = None

    def __enter__(self):
        self._dialog = slicer.util.createProgressDialog(windowTitle=self._title, labelText=self._title, maximum=100)
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

    def loadSyntheticStudy(self, seed: int):
        """Generate the synthetic demo patient and add its CT and PET (SUV) volumes to the scene."""
        from PETCTLesionsLib.mrml.study_nodes import add_phantom_volumes
        from PETCTLesionsLib.phantom import PhantomConfig, make_phantom

        logging.info(f"Generating synthetic PET/CT study (seed {seed})")
        study = make_phantom(PhantomConfig(seed=seed, size="small"))
        return add_phantom_volumes(study, name_prefix=f"Synthetic {seed}")

    def importDicomFolder(self, folder: Path):
        """Import ``folder`` into Slicer's DICOM database; return its PET/CT pairs and what cannot be paired."""
        from DICOMLib import DICOMUtils

        from PETCTLesionsLib.mrml.dicom_database import pet_ct_choices

        if not folder or not Path(folder).is_dir():
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


#
# Test
#


class PETCTLesionsTest(ScriptedLoadableModuleTest):
    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_SyntheticStudyLoads()
        self.setUp()
        self.test_FusedDisplay()

    def test_SyntheticStudyLoads(self):
        self.delayDisplay("Generating and loading the synthetic study")
        logic = PETCTLesionsLogic()
        ctNode, petNode = logic.loadSyntheticStudy(seed=3)
        ctVoxels = slicer.util.arrayFromVolume(ctNode)
        petVoxels = slicer.util.arrayFromVolume(petNode)
        # Air around the body, bone in it; PET in SUV with hot spots above the liver level.
        self.assertLess(ctVoxels.min(), -900)
        self.assertGreater(ctVoxels.max(), 300)
        self.assertGreater(petVoxels.max(), 2.0)
        self.assertEqual(ctNode.GetImageData().GetDimensions()[::-1], ctVoxels.shape)
        self.delayDisplay("Test passed")

    def test_FusedDisplay(self):
        self.delayDisplay("Fused display of the synthetic study")
        logic = PETCTLesionsLogic()
        parameterNode = logic.getParameterNode()
        parameterNode.ctVolume, parameterNode.petVolume = logic.loadSyntheticStudy(seed=3)
        parameterNode.ctPreset = "Lung"
        logic.showFusedStudy(parameterNode)
        ctDisplay = parameterNode.ctVolume.GetDisplayNode()
        self.assertEqual((ctDisplay.GetWindow(), ctDisplay.GetLevel()), (1400.0, -700.0))
        self.assertEqual(parameterNode.petVolume.GetDisplayNode().GetColorNode().GetName(), "PET-Heat")
        composite = slicer.app.layoutManager().sliceWidget("Red").mrmlSliceCompositeNode()
        self.assertEqual(composite.GetForegroundVolumeID(), parameterNode.petVolume.GetID())
        self.delayDisplay("Test passed")
