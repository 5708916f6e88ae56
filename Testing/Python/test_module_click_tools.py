"""The Review panel's click tools and the PET MIP: the presenter (as the Widget drives it, with a recording
view and a stand-in Logic checked against PETCTLesions.py) and the module's real Logic on real MRML."""

from __future__ import annotations

import ast
import inspect
from typing import List

import numpy as np
import pytest
import test_module_logic
from test_module_presenter import MODULE_FILE, RecordingView, StandInLogic, parameters

from PETCTLesionsLib.errors import InputError
from PETCTLesionsLib.geometry import Grid, lps_to_ras
from PETCTLesionsLib.module_presenter import WARNING, Message, ModulePresenter

slicer_module = test_module_logic.slicer_module  # PETCTLesions.py with stand-ins for the application's imports


class ClickView(RecordingView):
    def __init__(self) -> None:
        super().__init__()
        self.effects: List[tuple] = []
        self.mip_views = 0

    def open_lesion_effect(self, segmentation, source_volume, mode):
        self.effects.append((segmentation, source_volume, mode))

    def show_mip_view(self):
        self.mip_views += 1


class ClickLogic(StandInLogic):
    """The stand-in Logic with the click tools' methods (names and arguments checked against PETCTLesions.py)."""

    def lesionSegmentation(self, parameterNode):
        self._call("lesionSegmentation")
        parameterNode.segmentation = parameterNode.segmentation or "new lesions"
        return parameterNode.segmentation

    def showPetMip(self, parameterNode):
        self._call("showPetMip", parameterNode.petVolume)

    def centreOnMipClick(self, parameterNode, nearRas, farRas):
        self._call("centreOnMipClick", nearRas, farRas)


def _panel(logic, params):
    view = ClickView()
    presenter = ModulePresenter(logic, view)
    view.presenter = presenter
    presenter.set_parameter_node(params)
    return presenter, view


def test_the_stand_in_click_methods_are_the_real_logics():
    tree = ast.parse(MODULE_FILE.read_text())
    logic = next(node for node in tree.body if isinstance(node, ast.ClassDef) and node.name == "PETCTLesionsLogic")
    real = {node.name: [arg.arg for arg in node.args.args] for node in logic.body if isinstance(node, ast.FunctionDef)}
    for name in ("lesionSegmentation", "showPetMip", "centreOnMipClick"):
        assert real[name] == list(inspect.signature(getattr(ClickLogic, name)).parameters), name


def test_add_and_remove_by_click_open_the_pet_lesion_effect_on_the_lesions_with_the_pet():
    logic = ClickLogic()
    params = parameters()
    presenter, view = _panel(logic, params)
    assert not view.buttons.click_tools
    presenter.correct_by_click("add")  # no PET yet
    assert view.messages[-1] == Message(WARNING, "Choose the PET first (Study panel).") and view.effects == []

    params.petVolume = "PET"
    presenter.parameters_changed()
    assert view.buttons.click_tools
    presenter.correct_by_click("add")  # no segmentation yet: the Logic makes one
    assert view.effects == [("new lesions", "PET", "add")] and params.segmentation == "new lesions"
    presenter.correct_by_click("remove")
    assert view.effects[-1] == ("new lesions", "PET", "remove")

    logic.errors["lesionSegmentation"] = InputError("PET volume 'x' is not in SUVbw")
    presenter.correct_by_click("add")
    assert "PET volume 'x' is not in SUVbw" in view.messages[-1].text and len(view.effects) == 2


def test_the_pet_mip_is_shown_and_a_click_on_it_goes_to_the_logic():
    logic = ClickLogic()
    params = parameters(petVolume="PET")
    presenter, view = _panel(logic, params)
    presenter.show_pet_mip()
    assert logic.called("showPetMip") == [("PET",)] and view.mip_views == 1
    presenter.mip_clicked((0.0, 100.0, 5.0), (0.0, -100.0, 5.0))
    assert logic.called("centreOnMipClick") == [((0.0, 100.0, 5.0), (0.0, -100.0, 5.0))]

    logic.errors["showPetMip"] = InputError("SUV window must have its top above its bottom")
    presenter.show_pet_mip()
    assert view.mip_views == 1 and "SUV window" in view.messages[-1].text
    presenter.set_parameter_node(None)  # the scene closes: a late click does nothing
    presenter.mip_clicked((0.0, 100.0, 5.0), (0.0, -100.0, 5.0))
    assert len(logic.called("centreOnMipClick")) == 1


# ----------------------------------------------------------------------------------------- the real Logic

GRID = Grid(size=(24, 20, 16), spacing=(4.0, 4.0, 3.0), origin=(-48.0, -40.0, 0.0))


@pytest.mark.slicer
def test_the_logic_makes_the_lesion_segmentation_shows_the_mip_and_goes_to_a_clicked_hot_spot(
    slicer_module, mrml_scene
):
    from PETCTLesionsLib.mrml.lesion_edits import ct_of
    from PETCTLesionsLib.mrml.study_nodes import mark_as_suv_bw
    from PETCTLesionsLib.mrml.volumes import volume_node_from_image

    suv = np.ones(GRID.shape, np.float32)
    suv[8, 10, 12] = 9.0
    pet = volume_node_from_image(GRID.to_sitk(suv), "PET SUVbw")
    mark_as_suv_bw(pet)
    ct = volume_node_from_image(GRID.to_sitk(np.zeros(GRID.shape, np.int16)), "CT")
    params = test_module_logic._parameter_node(slicer_module, ctVolume=ct, petVolume=pet, segmentation=None)
    logic = slicer_module.PETCTLesionsLogic()

    segmentation = logic.lesionSegmentation(params)
    assert params.segmentation is segmentation and segmentation.GetName() == "PET SUVbw lesions"
    assert segmentation.GetSegmentation().GetNumberOfSegments() == 0 and ct_of(segmentation, pet) is ct
    assert logic.lesionSegmentation(params) is segmentation  # the same one again

    logic.showPetMip(params)
    display = mrml_scene.GetFirstNodeByClass("vtkMRMLGPURayCastVolumeRenderingDisplayNode") or (
        mrml_scene.GetFirstNodeByClass("vtkMRMLVolumeRenderingDisplayNode")
    )
    assert display is not None and display.GetVolumeNode() is pet and display.GetVisibility()

    hot = np.array(lps_to_ras(GRID.index_to_lps([12, 10, 8])))
    ras = logic.centreOnMipClick(params, tuple(hot + [0, 300.0, 0]), tuple(hot - [0, 300.0, 0]))
    np.testing.assert_allclose(ras, hot, atol=1e-6)
    red = mrml_scene.GetNodeByID("vtkMRMLSliceNodeRed")
    np.testing.assert_allclose([red.GetSliceToRAS().GetElement(r, 3) for r in range(3)], hot, atol=1e-6)

    params.petVolume = None
    with pytest.raises(InputError):
        logic.showPetMip(params)
