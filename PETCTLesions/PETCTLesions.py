"""PETCTLesions: the 3D Slicer module (Module, parameter node, Widget, Logic, Test).

This file is the thin Slicer shell. The work lives in PETCTLesionsLib (plain Python) and its
MRML layer PETCTLesionsLib.mrml (Slicer nodes), both tested headlessly; the Widget only
binds the .ui to the parameter node and calls the Logic.
"""

import logging
from typing import Annotated, Optional

import slicer
from slicer import vtkMRMLScalarVolumeNode
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import WithinRange, parameterNodeWrapper
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
            "1. Study: pick the CT and the PET (SUV) volumes, or generate the synthetic demo study.<br>"
            "2. Review the fused views.<br>"
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

    ctVolume, petVolume: the study being reviewed (PET in SUVbw).
    demoSeed: seed of the synthetic demo study (same seed, same patient).
    """

    ctVolume: vtkMRMLScalarVolumeNode
    petVolume: vtkMRMLScalarVolumeNode
    demoSeed: Annotated[int, WithinRange(0, 999999)] = 1


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

        self.ui.loadDemoButton.connect("clicked(bool)", self.onLoadDemoButton)

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

    def onLoadDemoButton(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Failed to create the demo study."), waitCursor=True):
            ctNode, petNode = self.logic.loadSyntheticStudy(self._parameterNode.demoSeed)
            self._parameterNode.ctVolume = ctNode
            self._parameterNode.petVolume = petNode
            slicer.util.setSliceViewerLayers(background=ctNode, foreground=petNode, foregroundOpacity=0.5, fit=True)


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


#
# Test
#


class PETCTLesionsTest(ScriptedLoadableModuleTest):
    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_SyntheticStudyLoads()

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
