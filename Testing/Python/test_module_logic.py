"""The module's own Logic class (PETCTLesions.py), button by button, on real MRML (slicer-core).

PETCTLesions.py imports what exists only inside the application: Qt, Slicer's i18n, the
parameterNodeWrapper (which imports Qt) and the ScriptedLoadableModule base classes. Those
are replaced by minimal stand-ins while the file is imported (``slicer_module`` below), and
the parameter node is a plain namespace with the fields and defaults the module declares.
Everything the Logic then calls is real: the MRML scene and logics, files on disk, the
detection worker process on the CPU.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import sys
import time
import types
import typing
from pathlib import Path

import pytest
import SimpleITK as sitk

pytestmark = pytest.mark.slicer  # skipped where slicer-core is not installed (Slicer 5.6's stack in CI)

MODULE_FILE = Path(__file__).resolve().parents[2] / "PETCTLesions" / "PETCTLesions.py"


class _FloatRange:
    def __init__(self, minimum: float, maximum: float) -> None:
        self.minimum, self.maximum = minimum, maximum


def _annotation(*_args, **_kwargs):
    return object()


def _application_only_modules() -> dict:
    """Stand-ins for the imports that exist only inside the Slicer application."""
    qt = types.ModuleType("qt")
    i18n = types.ModuleType("slicer.i18n")
    i18n.tr = lambda text: text
    i18n.translate = lambda _context, text: text
    wrapper = types.ModuleType("slicer.parameterNodeWrapper")
    wrapper.parameterNodeWrapper = lambda cls: cls
    wrapper.FloatRange = _FloatRange
    wrapper.Choice = wrapper.Default = wrapper.RangeBounds = wrapper.WithinRange = _annotation
    scripted = types.ModuleType("slicer.ScriptedLoadableModule")

    class _Base:
        def __init__(self, *args) -> None:
            pass

    for name in ("ScriptedLoadableModule", "ScriptedLoadableModuleLogic", "ScriptedLoadableModuleWidget"):
        setattr(scripted, name, type(name, (_Base,), {}))
    scripted.ScriptedLoadableModuleTest = type("ScriptedLoadableModuleTest", (object,), {})
    return {
        "qt": qt,
        "slicer.i18n": i18n,
        "slicer.parameterNodeWrapper": wrapper,
        "slicer.ScriptedLoadableModule": scripted,
    }


@pytest.fixture(scope="module")
def slicer_module():
    saved = {name: sys.modules.get(name) for name in _application_only_modules()}
    sys.modules.update(_application_only_modules())
    try:
        spec = importlib.util.spec_from_file_location("PETCTLesions", MODULE_FILE)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        for name, previous in saved.items():
            if previous is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = previous
    return module


def _parameter_node(module, **values) -> types.SimpleNamespace:
    """The parameter node's fields with the module's declared defaults (unset paths are '.')."""
    declared = typing.get_type_hints(module.PETCTLesionsParameterNode, include_extras=False)
    node = types.SimpleNamespace()
    for name, kind in declared.items():
        default = getattr(module.PETCTLesionsParameterNode, name, None)
        setattr(node, name, Path() if kind is Path and default is None else default)
    node.suvWindow = _FloatRange(0.0, 10.0)
    for name, value in values.items():
        assert hasattr(node, name), name
        setattr(node, name, value)
    return node


def test_each_button_of_the_module_through_its_logic(slicer_module, mrml_scene, tmp_path, monkeypatch):
    import slicer

    from PETCTLesionsLib.formats import nnunet, voc
    from PETCTLesionsLib.mrml.study_nodes import patient_id_of, study_case_id

    # PythonSlicer's launcher environment exists only in the application: the worker gets ours.
    monkeypatch.setattr(slicer.util, "startupEnvironment", lambda: None)
    logic = slicer_module.PETCTLesionsLogic()
    params = _parameter_node(slicer_module, device="cpu")
    assert (params.threshold, params.minLesionVolumeMl, params.ctPreset) == (0.5, 0.0, "Mediastinum")

    # Study: the demo study, written once per seed and loaded from its DICOM files.
    params.ctVolume, params.petVolume = logic.loadDemoStudy(1, size="small", cacheFolder=tmp_path / "cache")
    assert len(list((tmp_path / "cache").glob("seed-1-small/complete"))) == 1
    # Display
    logic.showFusedStudy(params)
    red = mrml_scene.GetNodeByID("vtkMRMLSliceCompositeNodeRed")
    assert red.GetBackgroundVolumeID() == params.ctVolume.GetID()
    assert red.GetForegroundVolumeID() == params.petVolume.GetID() and red.GetForegroundOpacity() == 0.5
    logic.applyCtPreset(params.ctVolume, "Lung")
    assert params.ctVolume.GetDisplayNode().GetWindow() == 1400.0
    logic.setSuvWindow(params.petVolume, 0.0, 6.0)
    assert params.petVolume.GetDisplayNode().GetWindowLevelMax() == pytest.approx(6.0)
    logic.setPetOpacity(0.7)
    assert red.GetForegroundOpacity() == pytest.approx(0.7)

    # Detect: started, polled as the Widget's timer does, finished into a new segmentation.
    assert params.useModelThreshold  # by default the model's own threshold (from its manifest) is used
    job = logic.startDetection(params)
    assert job.settings.threshold is None and job.settings.device == "cpu"
    deadline = time.monotonic() + 300
    while not job.poll().done and time.monotonic() < deadline:
        time.sleep(0.1)
    nodes = logic.finishDetection(job, params)
    assert params.segmentation is nodes.segmentation and len(nodes.segment_ids) == 3
    params.useModelThreshold, params.threshold = False, 0.3
    chosen = logic.startDetection(params)
    assert chosen.settings.threshold == 0.3
    chosen.cancel()
    assert nodes.segmentation.GetDisplayNode() is not None and nodes.boxes

    # Review
    rows = logic.lesionRows(params)
    assert [row.segment_id for row in rows] == nodes.segment_ids
    assert all(row.class_name == voc.histology_class(patient_id_of(params.ctVolume)) for row in rows)
    logic.centreViewsOn(rows[0].centre_ras)
    logic.setReviewStatus(params, rows[1].segment_id, "rejected")
    logic.setLesionClass(params, rows[0].segment_id, "G")
    assert logic.deleteLesion(params, rows[2].segment_id) > 0
    red_slice = mrml_scene.GetNodeByID("vtkMRMLSliceNodeRed")
    box = logic.addBoxOnSlice(params, red_slice, "G", rows[0].segment_id)
    assert box.GetAttribute("VOC.class") == "G"
    rows = logic.lesionRows(params)
    assert [(row.class_name, row.status) for row in rows] == [("G", ""), (rows[1].class_name, "rejected")]

    # Export: the kept lesion only, as the nnU-Net case of the study and its boxes as class G.
    params.nnunetRawFolder = tmp_path / "nnUNet_raw"
    params.vocFolder = tmp_path / "Annotation"
    report = logic.exportAnnotations(params)
    assert report.skipped == [], report.text()
    case = nnunet.read_case(params.nnunetRawFolder / params.nnunetDatasetName, study_case_id(params.ctVolume))
    assert int(sitk.GetArrayFromImage(case.label).sum()) == rows[0].voxels
    annotations, problems = voc.read_voc_folder(
        params.vocFolder / voc.patient_folder_name(patient_id_of(params.ctVolume))
    )
    assert problems == [] and {b.name for a in annotations for b in a.boxes} == {"G"}
    # Exporting again never replaces the files silently.
    again = logic.exportAnnotations(params)
    assert again.written == [] and len(again.skipped) == 2
    params.nnunetDatasetName = "not a dataset"
    with pytest.raises(nnunet.NnUNetError, match="Dataset<3 digits>_<Name>"):
        logic.exportAnnotations(params)

    # Undo the detection: its new segmentation and remaining boxes go.
    logic.undoDetection(nodes, params)
    assert params.segmentation is None
    assert mrml_scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode") == 0


def test_detection_needs_pytorch_from_the_pytorch_extension(slicer_module, monkeypatch):
    from PETCTLesionsLib.errors import SetupError

    logic = slicer_module.PETCTLesionsLogic()
    monkeypatch.setitem(sys.modules, "PyTorchUtils", None)  # the PyTorch extension is not installed
    with pytest.raises(SetupError, match="install the 'PyTorch' extension"):
        logic.ensureTorch()
    offered = []

    class _PyTorchUtilsLogic:  # the extension's logic: the user declines the install
        def installTorch(self, askConfirmation=False, forceComputationBackend=None, torchVersionRequirement=None):
            offered.append((askConfirmation, torchVersionRequirement))
            return None

    monkeypatch.setitem(sys.modules, "PyTorchUtils", types.SimpleNamespace(PyTorchUtilsLogic=_PyTorchUtilsLogic))
    # The real check reads the installed package's metadata (the torch of these tests).
    assert slicer_module._installed_torch_version() == importlib.metadata.version("torch")
    monkeypatch.delitem(sys.modules, "torch", raising=False)  # Slicer's process has not loaded torch
    installed = {"version": None}  # what the package metadata say is installed
    monkeypatch.setattr(slicer_module, "_installed_torch_version", lambda: installed["version"])
    assert logic.ensureTorch() is False
    assert offered == [(True, ">=2.1")]  # asked, through the extension (never pip)

    # An older torch (left by another extension) is offered the upgrade, unless Slicer has loaded it.
    installed["version"] = "1.13.1+cu117"
    assert logic.ensureTorch() is False and offered[-1] == (True, ">=2.1") and len(offered) == 2
    monkeypatch.setitem(sys.modules, "torch", types.SimpleNamespace(__version__="1.13.1+cu117"))
    with pytest.raises(SetupError, match=r"PyTorch 1.13.1\+cu117 is already loaded in Slicer.*needs >=2.1"):
        logic.ensureTorch()
    installed["version"] = "2.13.0+cpu"
    assert logic.ensureTorch() is True and len(offered) == 2


def test_detection_refuses_a_study_without_both_volumes(slicer_module, mrml_scene):
    from PETCTLesionsLib.errors import InputError

    logic = slicer_module.PETCTLesionsLogic()
    params = _parameter_node(slicer_module)
    with pytest.raises(InputError, match="CT and a PET"):
        logic.startDetection(params)
    with pytest.raises(InputError, match="CT and PET first"):
        logic.exportAnnotations(params)
    assert mrml_scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode") == 0  # nothing was made


def test_a_pets_load_warnings_are_shown_once_and_a_later_scenes_pet_shows_its_own(slicer_module, mrml_scene):
    import slicer

    from PETCTLesionsLib.mrml.study_nodes import SUV_WARNINGS_ATTRIBUTE

    logic = slicer_module.PETCTLesionsLogic()
    coverage = "CT series 2 covers 44.8 mm of the 60.0 mm of PT series 3 (75%), under 90%"

    def converted_pet(suv_warning: str):
        node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "PET")
        node.SetAttribute(SUV_WARNINGS_ATTRIBUTE, suv_warning)  # what the SUV conversion keeps on the node
        return node

    study_a = converted_pet("study A: the uptake time is 0 min")
    assert logic.studyWarningsToShow(study_a, (coverage,)) == [coverage, "study A: the uptake time is 0 min"]
    assert logic.studyWarningsToShow(study_a) == []  # "Show fused study" again: shown already
    assert logic.studyWarningsToShow(study_a, (coverage,)) == [coverage]  # the pair's, at each load
    first_id = study_a.GetID()
    slicer.mrmlScene.Clear(0)  # the scene closed: the next PET may get the same node ID
    study_b = converted_pet("study B: the uptake time is 2 min")
    assert study_b.GetID() == first_id
    assert logic.studyWarningsToShow(study_b) == ["study B: the uptake time is 2 min"]
    assert logic.studyWarningsToShow(None, (coverage,)) == [coverage]


def test_annotations_from_files_through_the_logic_imported_reviewed_and_written_back(
    slicer_module, mrml_scene, tmp_path
):
    from PETCTLesionsLib.formats import voc
    from PETCTLesionsLib.mrml.study_nodes import add_study_nodes
    from PETCTLesionsLib.study import load_study
    from PETCTLesionsLib.synthetic.synth import generate_dataset

    (case,) = generate_dataset(tmp_path, cases=1, seed=2, size="small", flavour="lung", n_lesions=2)
    logic = slicer_module.PETCTLesionsLogic()
    params = _parameter_node(slicer_module)
    params.ctVolume, params.petVolume = add_study_nodes(load_study([case.study_dir]))
    assert logic.annotationSources(params) == [] and logic.changesSinceImport(params) is None

    # Study panel, "Annotations": the dataset's Annotation folder, the patient's files found by Patient ID.
    params.annotationFolder = tmp_path / "Annotation"
    imported = logic.importVocAnnotations(params)
    assert params.segmentation is imported.segmentation and imported.skipped == []
    rows = logic.lesionRows(params)
    assert len(rows) == len(imported.segment_ids) >= 1
    assert {row.status for row in rows} == {"imported"} and {row.voxels for row in rows} == {0}
    assert all(row.slices is not None and row.centre_ras is not None for row in rows)  # from the boxes
    folder = case.voc_files[0].parent
    assert logic.annotationSources(params) == [f"VOC folder {folder}"]
    # Boxes are no lesion outlines: until drawn, imported lesions give no nnU-Net label, and the export says so.
    params.nnunetRawFolder, params.exportVoc = tmp_path / "nnUNet_raw", False
    no_label = logic.exportAnnotations(params)
    assert no_label.written == [] and "have VOC boxes but no voxels" in no_label.skipped[0]

    # Reviewed: the first lesion rejected; written back over its files after the user agreed.
    logic.setReviewStatus(params, rows[0].segment_id, "rejected")
    report = logic.exportAnnotationsBack(params, True)
    changes = logic.changesSinceImport(params)
    assert report.notes[-1] == changes.text() and changes.lesions.removed == 1
    remaining, problems = voc.read_voc_folder(folder)
    assert problems == [] and sum(len(a.boxes) for a in remaining) == changes.boxes.unchanged
    # Each file that held a box of the rejected lesion is kept as a backup; a file left without boxes is gone.
    rejected_files = {
        box.GetAttribute("DICOM.instanceUID")
        for box in imported.boxes
        if box.GetAttribute("PETCTLesions.segmentID") == rows[0].segment_id
    }
    kept_files = {box.GetAttribute("DICOM.instanceUID") for box in imported.boxes} - rejected_files
    assert sorted(path.name.split(".xml.bak-")[0] for path in folder.glob("*.bak-*")) == sorted(rejected_files)
    assert {path.stem for path in folder.glob("*.xml")} == kept_files | {
        uid for uid in rejected_files if any(a.sop_instance_uid == uid for a in remaining)
    }

    # Study panel, "Open nnU-Net case": the generated case's CT and PET, its lesions "imported".
    dataset = case.nnunet_files["label"].parent.parent
    assert logic.listNnUNetCases(dataset) == [case.case_id]
    opened = logic.openNnUNetCase(dataset, case.case_id)
    params.ctVolume, params.petVolume, params.segmentation = opened.ct, opened.pet, opened.segmentation
    logic.showFusedStudy(params)
    assert {row.status for row in logic.lesionRows(params)} == {"imported"}
    assert logic.annotationSources(params) == [f"nnU-Net case {case.case_id!r} of {dataset}"]
    unchanged = logic.exportAnnotationsBack(params, False)
    assert unchanged.written == [] and "refusing to overwrite" in unchanged.skipped[0]
