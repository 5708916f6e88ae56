"""The Detect panel's "nnU-Net model folder" choice (PETCTLesionsLib/module_presenter.py), as the widget drives it.

The folder is a real nnU-Net v2 trained-model folder's layout (dataset.json and plans.json as
nnU-Net writes them, fold_N/checkpoint_final.pth): the panel only describes it (JSON files and
file names; nothing is unpickled), so the checkpoints are placeholder files here. The Logic is the
presenter tests' stand-in with the real Logic's nnU-Net methods (names checked against PETCTLesions.py),
describing the folder with the library's real ``describe_model``.
"""

from __future__ import annotations

import ast
import inspect
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import List

import pytest
from test_module_presenter import MODULE_FILE, ScriptedJob, StandInLogic, panel, parameters

from PETCTLesionsLib.detection_job import JobStatus
from PETCTLesionsLib.errors import InputError
from PETCTLesionsLib.model.nnunet_model import PICKLE_WARNING, NnUNetOptions, describe_model, nnunet_pip_requirements
from PETCTLesionsLib.module_presenter import (
    BUNDLED_MODEL,
    NNUNET_MODEL,
    WARNING,
    DetectionModel,
    detection_model,
    parse_folds,
)


def model_folder(root: Path, channels=None, folds=("0", "1"), licence: str = "") -> Path:
    """A trained-model folder as nnUNetv2_train leaves it (placeholder checkpoints)."""
    folder = root / "Dataset221_autoPETII" / "nnUNetTrainer__nnUNetPlans__3d_fullres"
    folder.mkdir(parents=True)
    dataset = {
        "channel_names": channels or {"0": "CT", "1": "PET"},
        "labels": {"background": 0, "lesion": 1},
        "numTraining": 1014,
        "file_ending": ".nii.gz",
        "name": "autoPET II lesions",
    }
    (folder / "dataset.json").write_text(json.dumps(dataset))
    (folder / "plans.json").write_text(json.dumps({"dataset_name": "Dataset221_autoPETII", "configurations": {}}))
    for fold in folds:
        (folder / f"fold_{fold}").mkdir()
        (folder / f"fold_{fold}" / "checkpoint_final.pth").write_bytes(b"not unpickled by the panel")
    if licence:
        (folder.parent / "LICENSE").write_text(licence)
    return folder


@dataclass
class NnUNetLogic(StandInLogic):
    """The stand-in Logic with the nnU-Net methods (names and arguments checked against PETCTLesions.py)."""

    nnunet_present: bool = False
    installs: List[List[str]] = field(default_factory=list)

    def describeNnUNetModel(self, folder):
        self._call("describeNnUNetModel", folder)
        return describe_model(folder)

    def nnunetInstalled(self):
        return self.nnunet_present

    def nnunetRequirements(self):
        return nnunet_pip_requirements("2.5.1+cu121", (3, 9))

    def installNnUNet(self, requirements):
        self._call("installNnUNet", requirements)
        self.installs.append(list(requirements))
        self.nnunet_present = True


def nnunet_parameters(folder, **values):
    return parameters(ctVolume="CT", petVolume="PET", modelKind=NNUNET_MODEL, nnunetFolder=folder, **values)


def test_the_stand_in_nnunet_methods_are_the_real_logics():
    tree = ast.parse(MODULE_FILE.read_text())
    logic = next(node for node in tree.body if isinstance(node, ast.ClassDef) and node.name == "PETCTLesionsLogic")
    real = {node.name: [arg.arg for arg in node.args.args] for node in logic.body if isinstance(node, ast.FunctionDef)}
    for name in ("describeNnUNetModel", "nnunetInstalled", "nnunetRequirements", "installNnUNet"):
        assert real[name] == list(inspect.signature(getattr(NnUNetLogic, name)).parameters), name


def test_picking_a_folder_shows_its_name_channels_labels_folds_and_licence(tmp_path):
    folder = model_folder(tmp_path, licence="CC BY 4.0: cite the autoPET challenge.")
    logic = NnUNetLogic()
    presenter, view = panel(logic, parameters())
    assert view.model_choice == (False, "")  # Bundled: the manifest field, no nnU-Net fields

    params = nnunet_parameters(Path())
    presenter.set_parameter_node(params)
    assert view.model_choice[0] and "Choose the folder" in view.model_choice[1]

    params.nnunetFolder = folder
    presenter.parameters_changed()
    shown, text = view.model_choice
    assert shown
    assert "nnU-Net model: autoPET II lesions (3d_fullres)" in text
    assert "inputs: 0 CT <- CT, 1 PET <- PET" in text
    assert "labels: 1 lesion" in text
    assert "folds: 0 (checkpoint_final.pth); 1 (checkpoint_final.pth)" in text
    assert "----- LICENSE -----\nCC BY 4.0: cite the autoPET challenge." in text
    assert PICKLE_WARNING.startswith("nnU-Net checkpoints") and "run any code" in PICKLE_WARNING  # beside the picker

    presenter.parameters_changed()  # another parameter changed: the folder is not read again
    assert len(logic.called("describeNnUNetModel")) == 1


def test_a_folder_the_module_cannot_run_says_why_in_the_box_without_a_dialog(tmp_path):
    ct_only = model_folder(tmp_path, channels={"0": "CT"})
    presenter, view = panel(NnUNetLogic(), nnunet_parameters(ct_only))
    shown, text = view.model_choice
    assert shown and text.startswith("This folder cannot be used:") and "reads the CT only" in text
    assert view.messages == []

    presenter.detect_or_cancel()  # Detect says it as a dialog, and starts nothing
    assert [m.kind for m in view.messages] == [WARNING] and "reads the CT only" in view.messages[0].text
    assert not presenter.detection_running


def test_detect_offers_to_install_nnunet_once_and_never_without_asking(tmp_path):
    folder = model_folder(tmp_path)
    job = ScriptedJob(JobStatus("running", 0.1, "loading the nnU-Net model"))
    logic = NnUNetLogic(job=job)
    presenter, view = panel(logic, nnunet_parameters(folder))

    view.answer = False  # the user declines: nothing installed, nothing started
    presenter.detect_or_cancel()
    assert len(view.questions) == 1 and "nnunetv2==2.5.2 torch==2.5.1" in view.questions[0]
    assert logic.installs == [] and logic.called("startDetection") == [] and not presenter.detection_running
    assert view.progress[1] == "Running an nnU-Net model needs nnunetv2, which was not installed."

    view.answer = True
    presenter.detect_or_cancel()
    assert logic.installs == [["nnunetv2==2.5.2", "torch==2.5.1"]]  # torch held at the installed version
    assert presenter.detection_running and len(logic.called("startDetection")) == 1

    presenter.cancel_detection()
    presenter.detect_or_cancel()  # installed now: not asked again
    assert len(view.questions) == 2 and len(logic.installs) == 1


def test_folds_that_do_not_hold_the_checkpoint_stop_detect_with_a_dialog(tmp_path):
    folder = model_folder(tmp_path, folds=("0",))
    logic = NnUNetLogic(nnunet_present=True)
    presenter, view = panel(logic, nnunet_parameters(folder, nnunetFolds="0, 3"))
    presenter.detect_or_cancel()
    assert "no fold_3/checkpoint_final.pth" in view.messages[-1].text and logic.called("startDetection") == []

    presenter.set_parameter_node(nnunet_parameters(folder, nnunetCheckpoint="best"))
    presenter.detect_or_cancel()
    assert "no fold holds checkpoint_best.pth" in view.messages[-1].text and logic.called("startDetection") == []


def test_the_detection_model_the_panel_passes_to_the_worker(tmp_path):
    assert detection_model(parameters()) == DetectionModel(None, None)  # the bundled model
    manifest = tmp_path / "model.json"
    assert detection_model(parameters(modelPath=manifest)) == DetectionModel(manifest, None)
    assert parameters().modelKind == BUNDLED_MODEL

    folder = tmp_path / "model"
    assert detection_model(nnunet_parameters(folder)) == DetectionModel(folder, NnUNetOptions(tta=False))
    chosen = detection_model(nnunet_parameters(folder, nnunetFolds="1 0", nnunetCheckpoint="best", nnunetTta=True))
    assert chosen.nnunet == NnUNetOptions(folds=("1", "0"), checkpoint="checkpoint_best.pth", tta=True)
    assert NnUNetOptions.from_json(chosen.nnunet.to_json()) == chosen.nnunet  # as the worker's job file carries it
    with pytest.raises(InputError, match="Choose an nnU-Net trained-model folder"):
        detection_model(nnunet_parameters(Path()))


@pytest.mark.parametrize(
    "text, folds", [("", None), ("  ", None), ("0", ("0",)), ("0,1, 2", ("0", "1", "2")), ("all", ("all",))]
)
def test_the_folds_field(text, folds):
    assert parse_folds(text) == folds


def test_the_folds_field_refuses_what_is_not_a_fold():
    with pytest.raises(InputError, match="'fold_0' is not a fold number"):
        parse_folds("fold_0")
