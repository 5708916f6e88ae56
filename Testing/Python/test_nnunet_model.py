"""A user's own nnU-Net v2 model run through the detection (model/nnunet_model.py), against nnU-Net itself.

The model is a real nnU-Net v2 trained-model folder that nnU-Net's own code makes in the test
(``nnunet_trained_models.build_trained_model``: plan and preprocess a tiny generated autoPET-layout
dataset, then save two folds through nnU-Net's trainer). The study is a generated case written as
nnU-Net files on another grid than the model's (spacing 4.5 x 5.5 x 3.5 mm against 5 x 5 x 4, an
oblique direction), so that nnU-Net resamples both ways and a spacing or axis in the wrong order
changes the result. The reference is nnU-Net's predictor on the same files, read by nnU-Net's own
reader (``SimpleITKIO``): our result must equal it voxel for voxel.

Tests that need nnunetv2 skip where it is not installed (the ``nnunet`` extra; ``.ci/run``); the
channel, label and option rules and the missing-nnunetv2 message run everywhere.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Optional

import numpy as np
import pytest
import SimpleITK as sitk
from nnunet_trained_models import build_trained_model, set_channel_names
from studies import oblique_direction

from PETCTLesionsLib import cli
from PETCTLesionsLib.errors import Cancelled, InputError, ModelFileError, SetupError
from PETCTLesionsLib.formats import nnunet
from PETCTLesionsLib.geometry import Grid
from PETCTLesionsLib.model import nnunet_model
from PETCTLesionsLib.model.nnunet_model import NnUNetOptions

needs_nnunet = pytest.mark.skipif(
    importlib.util.find_spec("nnunetv2") is None, reason="needs nnunetv2 (the nnunet extra), which is not installed"
)
STUDY_ID = "study_001"
STUDY_GRID = {"spacing": (4.5, 5.5, 3.5), "origin": (12.5, -40.25, -310.0), "direction": oblique_direction(20.0)}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The trained-model folder (folds 0 and 1) and a study dataset (one test case) beside it."""
    pytest.importorskip("nnunetv2")
    work = tmp_path_factory.mktemp("nnunet")
    folder = build_trained_model(work / "model")
    source = nnunet.read_case(work / "model" / "nnUNet_raw" / "Dataset951_TinyPETCT", "tiny_001")
    grid = Grid(Grid.from_sitk(source.pet).size, **STUDY_GRID)  # the same voxels on another grid
    study = nnunet.NnUNetCase(
        STUDY_ID,
        grid.to_sitk(sitk.GetArrayFromImage(source.ct)),
        grid.to_sitk(sitk.GetArrayFromImage(source.pet)),
        None,
    )
    dataset = work / "Dataset952_Study"
    nnunet.write_case(dataset, study)
    nnunet.update_dataset_json(dataset, dataset_name=dataset.name)
    return folder, dataset


def study_arrays(dataset: Path):
    """The study as predict reads it: CT and PET float32 [k, j, i] and the PET grid."""
    case = nnunet.read_case(dataset, STUDY_ID, images_only=True)
    as_float = [sitk.GetArrayFromImage(image).astype(np.float32) for image in (case.ct, case.pet)]
    return as_float[0], as_float[1], Grid.from_sitk(case.pet)


_REFERENCES = {}


def nnunets_own(folder: Path, dataset: Path, folds, mirroring: bool = False):
    """nnU-Net's own segmentation and probabilities: its predictor on the files as its own reader reads them."""
    key = (tuple(folds), mirroring)
    if key not in _REFERENCES:
        import torch
        from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO
        from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

        predictor = nnUNetPredictor(use_mirroring=mirroring, device=torch.device("cpu"), allow_tqdm=False)
        predictor.initialize_from_trained_model_folder(str(folder), tuple(folds), "checkpoint_final.pth")
        paths = nnunet.case_paths(dataset, STUDY_ID, test=True)
        image, properties = SimpleITKIO().read_images([str(paths["ct"]), str(paths["pet"])])
        _REFERENCES[key] = predictor.predict_single_npy_array(image, properties, None, None, True)
    return _REFERENCES[key]


def detect(folder: Path, dataset: Path, options: Optional[NnUNetOptions] = None, **kwargs):
    from PETCTLesionsLib.detection import detect_lesions

    ct, pet, grid = study_arrays(dataset)
    model = nnunet_model.load_detection_model(folder, options or NnUNetOptions())
    return detect_lesions(model, ct, pet, grid, device="cpu", **kwargs), grid


def assert_same_as_nnunet(found, segmentation: np.ndarray, probabilities: np.ndarray) -> None:
    """Our lesions are nnU-Net's segmentation voxel for voxel; our probability is nnU-Net's lesion probability,
    moved (by float rounding only) across 0.5 where nnU-Net's argmax and the 0.5 cut disagree."""
    np.testing.assert_array_equal(found.lesion_map > 0, segmentation == 1)
    moved = (probabilities[1] >= 0.5) != (segmentation == 1)
    np.testing.assert_array_equal(found.probability[~moved], probabilities[1][~moved])
    assert np.abs(found.probability - probabilities[1]).max() < 1e-6
    assert 0 < (segmentation == 1).sum() < segmentation.size  # lesions and background: a comparison that can fail


# ------------------------------------------------------------------ against nnU-Net itself


@needs_nnunet
@pytest.mark.torch
def test_the_result_is_nnunets_own_voxel_for_voxel_on_the_pet_grid(trained):
    folder, dataset = trained
    messages = []
    found, grid = detect(folder, dataset, progress=lambda fraction, message: messages.append(message))
    segmentation, probabilities = nnunets_own(folder, dataset, (0, 1))
    assert segmentation.shape == grid.shape and found.probability.shape == grid.shape
    assert found.pet_grid == grid
    assert_same_as_nnunet(found, segmentation, probabilities)
    assert found.lesions and found.threshold == 0.5 and found.device == "cpu" and found.notes == []
    passes = [message for message in messages if "network pass" in message]
    assert passes and passes[-1].startswith(f"nnU-Net: network pass {len(passes)} of {len(passes)} ")


@needs_nnunet
@pytest.mark.torch
def test_two_folds_are_nnunets_ensemble_and_one_fold_is_that_fold(trained):
    folder, dataset = trained
    one, _ = detect(folder, dataset, NnUNetOptions(folds=("0",)))
    assert_same_as_nnunet(one, *nnunets_own(folder, dataset, (0,)))
    both, _ = detect(folder, dataset)
    assert not np.array_equal(one.probability, both.probability)  # the second fold counts
    assert_same_as_nnunet(both, *nnunets_own(folder, dataset, (0, 1)))


@needs_nnunet
@pytest.mark.torch
def test_mirroring_is_nnunets_and_counted_in_the_progress(trained):
    folder, dataset = trained
    messages = []
    options = NnUNetOptions(folds=("0",), tta=True)
    found, _ = detect(folder, dataset, options, progress=lambda fraction, message: messages.append(message))
    assert_same_as_nnunet(found, *nnunets_own(folder, dataset, (0,), mirroring=True))
    plain = [m for m in messages if "network pass" in m]
    assert len(plain) % 8 == 0 and plain[-1].startswith(f"nnU-Net: network pass {len(plain)} of {len(plain)} ")


@needs_nnunet
@pytest.mark.torch
def test_cancel_stops_at_the_next_network_pass(trained):
    folder, dataset = trained
    passes = []

    def cancel() -> bool:
        return bool(passes)

    with pytest.raises(Cancelled):
        detect(
            folder,
            dataset,
            NnUNetOptions(folds=("0",)),
            progress=lambda fraction, message: passes.append(message) if "network pass" in message else None,
            cancel=cancel,
        )
    assert len(passes) == 1


@needs_nnunet
@pytest.mark.torch
def test_predict_with_an_nnunet_folder_writes_nnunets_lesions_on_the_pet_grid(trained, tmp_path, capsys):
    folder, dataset = trained
    out = tmp_path / "out"
    code = cli.main(["predict", str(dataset), "--out", str(out), "--model", str(folder), "--folds", "0", "--no-tta"])
    assert code == 0, capsys.readouterr()
    label = sitk.ReadImage(str(out / f"{STUDY_ID}.nii.gz"))
    pet = sitk.ReadImage(str(nnunet.case_paths(dataset, STUDY_ID, test=True)["pet"]))
    assert label.GetSize() == pet.GetSize()
    np.testing.assert_allclose(label.GetOrigin(), pet.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(label.GetSpacing(), pet.GetSpacing(), atol=1e-6)
    np.testing.assert_allclose(label.GetDirection(), pet.GetDirection(), atol=1e-6)
    segmentation, _ = nnunets_own(folder, dataset, (0,))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(label) > 0, segmentation == 1)
    table = (out / f"{STUDY_ID}_lesions.csv").read_text(encoding="utf-8").splitlines()
    assert len(table) > 1  # a row per lesion, measured as the bundled model's


@needs_nnunet
@pytest.mark.torch
def test_the_detection_worker_runs_an_nnunet_folder(trained):
    from PETCTLesionsLib.detection_job import DetectionJob, DetectionSettings

    folder, dataset = trained
    ct, pet, grid = study_arrays(dataset)
    settings = DetectionSettings(model_path=str(folder), device="cpu", nnunet=NnUNetOptions(folds=("0",)))
    job = DetectionJob(ct, pet, grid, settings)
    status = job.wait(timeout=300)
    assert status.state == "finished", job.log
    found = job.result()
    segmentation, _ = nnunets_own(folder, dataset, (0,))
    np.testing.assert_array_equal(found.lesion_map > 0, segmentation == 1)


# ------------------------------------------------------------ models this module refuses


@needs_nnunet
@pytest.mark.parametrize(
    ("channel_names", "expected"),
    [
        ({"0": "CT"}, "the model expects 1 input channel(s) ('CT'); it reads the CT only"),
        ({"0": "CT", "1": "PET", "2": "MR"}, "the model expects 3 input channel(s) ('CT', 'PET', 'MR'); this module"),
    ],
)
def test_a_ct_only_or_three_channel_model_is_refused_with_what_it_expects(
    trained, tmp_path, capsys, channel_names, expected
):
    folder, dataset = trained
    other = tmp_path / folder.name
    shutil.copytree(folder, other)
    set_channel_names(other, channel_names)
    with pytest.raises(ModelFileError, match=re.escape(expected)):
        nnunet_model.load_detection_model(other)
    code = cli.main(["predict", str(dataset), "--out", str(tmp_path / "out"), "--model", str(other)])
    error = capsys.readouterr().err
    assert code == cli.EXIT_REFUSED and expected in error and "Traceback" not in error


# ---------------------------------------------------- rules that need no nnunetv2 (every stack)


@pytest.mark.parametrize(
    ("names", "inputs", "note"),
    [
        (("CT", "PET"), ("ct", "pet"), ""),
        (("pet", "ct"), ("pet", "ct"), ""),
        (("CT", "CT"), ("ct", "pet"), "autoPET order"),  # published autoPET models normalise the PET as a CT
        (("zscore", "CT"), ("pet", "ct"), ""),
        (("PT", "noNorm"), ("pet", "ct"), ""),
        (("PET",), ("pet",), "the CT is not fed"),
    ],
)
def test_channels_are_fed_by_their_names(names, inputs, note):
    feed = nnunet_model.channel_feed(names, Path("dataset.json"))
    assert feed.inputs == inputs and note in feed.note and bool(feed.note) == bool(note)


@pytest.mark.parametrize(
    ("names", "why"),
    [(("CT",), "reads the CT only"), (("MR", "PET"), "'MR' is neither CT nor PET"), (("PET", "SUV"), "both named PET")],
)
def test_inputs_the_study_cannot_give_are_refused(names, why):
    with pytest.raises(ModelFileError, match=re.escape(why)):
        nnunet_model.channel_feed(names, Path("dataset.json"))


def fake_model_folder(root: Path, labels=None, folds=("0", "1"), files=("checkpoint_final.pth",), licence=None) -> Path:
    """A folder laid out as a trained model (its checkpoints empty files): enough for what reads no checkpoint."""
    folder = root / "Dataset221_Fake" / "nnUNetTrainer__nnUNetPlans__3d_fullres"
    for fold in folds:
        (folder / f"fold_{fold}").mkdir(parents=True)
        for name in files:
            (folder / f"fold_{fold}" / name).write_bytes(b"")
    dataset_json = {"channel_names": {"0": "CT", "1": "PET"}, "labels": labels or {"background": 0, "tumor": 1}}
    (folder / "dataset.json").write_text(json.dumps(dataset_json), encoding="utf-8")
    (folder / "plans.json").write_text("{}", encoding="utf-8")
    if licence:
        (folder.parent / "LICENSE.txt").write_text(licence, encoding="utf-8")
    return folder


def test_a_model_folder_is_described_from_its_files(tmp_path):
    folder = fake_model_folder(tmp_path, labels={"background": 0, "tumor": 1, "organ": 2, "ignore": 3}, licence="CC BY")
    info = nnunet_model.describe_model(folder)
    assert info.name == "Dataset221_Fake" and info.configuration == "3d_fullres"
    assert info.labels == {"tumor": 1, "organ": 2} and info.folds == ("0", "1")
    assert info.licence == "CC BY" and info.licence_file == folder.parent / "LICENSE.txt"
    assert any("licence" in line and "LICENSE.txt" in line for line in info.summary())
    assert nnunet_model.choose_lesion_labels(info, None) == (1, 2)
    assert nnunet_model.choose_lesion_labels(info, ["Tumor"]) == (1,)
    with pytest.raises(InputError, match="'liver' is not one of the model's labels"):
        nnunet_model.choose_lesion_labels(info, ["liver"])


def test_folds_and_checkpoints_are_chosen_among_those_found(tmp_path):
    info = nnunet_model.describe_model(fake_model_folder(tmp_path, folds=("0", "1", "all")))
    assert nnunet_model.choose_folds(info, NnUNetOptions()) == ("0", "1", "all")
    assert nnunet_model.choose_folds(info, NnUNetOptions(folds=["1"])) == ("1",)
    with pytest.raises(InputError, match="no fold_3/checkpoint_final.pth"):
        nnunet_model.choose_folds(info, NnUNetOptions(folds=("3",)))
    with pytest.raises(InputError, match="no fold holds checkpoint_best.pth"):
        nnunet_model.choose_folds(info, NnUNetOptions(checkpoint="best"))
    with pytest.raises(InputError, match="checkpoint must be"):
        NnUNetOptions(checkpoint="../elsewhere.pth")


def test_options_of_an_nnunet_folder_are_refused_with_the_bundled_model(tmp_path):
    with pytest.raises(InputError, match="apply to an nnU-Net model folder"):
        nnunet_model.load_detection_model(None, NnUNetOptions(folds=("0",)))
    with pytest.raises(ModelFileError, match="neither a model manifest"):
        nnunet_model.load_detection_model(tmp_path)


def test_a_region_based_model_is_refused(tmp_path):
    folder = fake_model_folder(tmp_path, labels={"background": 0, "lesion": [1, 2], "core": 2})
    with pytest.raises(ModelFileError, match="region-based nnU-Net models are not supported"):
        nnunet_model.describe_model(folder)


def test_without_nnunetv2_the_install_hint_not_a_traceback(tmp_path, monkeypatch, capsys):
    folder = fake_model_folder(tmp_path)
    for name in [name for name in sys.modules if name == "nnunetv2" or name.startswith("nnunetv2.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "nnunetv2", None)  # import nnunetv2 raises ImportError
    with pytest.raises(SetupError, match=re.escape("pip install nnunetv2")):
        nnunet_model.load_detection_model(folder)
    study = tmp_path / "Dataset001_Nothing"
    (study / "imagesTs").mkdir(parents=True)
    (study / "dataset.json").write_text(json.dumps({"channel_names": nnunet.CHANNEL_NAMES}), encoding="utf-8")
    if importlib.util.find_spec("torch") is None:
        return  # the CLI refuses the missing torch first (test_cli); the library's message is checked above
    code = cli.main(["predict", str(study), "--out", str(tmp_path / "out"), "--model", str(folder)])
    error = capsys.readouterr().err
    assert code == cli.EXIT_REFUSED and "pip install nnunetv2" in error and "Traceback" not in error


def test_the_lesion_probability_cuts_into_nnunets_segmentation():
    # Three classes at four voxels: background, lesion 1, lesion 2 (nnU-Net's softmax and argmax).
    probabilities = np.array(
        [
            [0.6, 0.2, 0.4, 0.3],
            [0.3, 0.7, 0.35, 0.2],
            [0.1, 0.1, 0.25, 0.5],
        ],
        np.float32,
    ).reshape(3, 1, 1, 4)
    segmentation = probabilities.argmax(0)
    both = nnunet_model.lesion_probability(segmentation, probabilities, [1, 2])
    # voxel 2: the lesions together (0.6) outweigh the background, but the background is nnU-Net's label
    np.testing.assert_array_equal(both.ravel() >= 0.5, [False, True, False, True])
    np.testing.assert_allclose(both.ravel(), [0.4, 0.8, np.nextafter(np.float32(0.5), 0), 0.7], rtol=1e-6)
    only_two = nnunet_model.lesion_probability(segmentation, probabilities, [2])
    np.testing.assert_array_equal(only_two.ravel() >= 0.5, [False, False, False, True])


def test_the_nnunetv2_to_install_fits_the_running_python():
    assert nnunet_model.nnunet_requirement((3, 9)) == "nnunetv2==2.5.2"  # Slicer 5.6 and 5.8
    assert nnunet_model.nnunet_requirement((3, 12)) == "nnunetv2"  # Slicer 5.10 and later
    assert nnunet_model.nnunet_installed() == (importlib.util.find_spec("nnunetv2") is not None)
    # The installed torch stays (a CUDA build's local label dropped, so that it still satisfies the pin).
    assert nnunet_model.nnunet_pip_requirements("2.13.0+cu121", (3, 12)) == ["nnunetv2", "torch==2.13.0"]
    assert nnunet_model.nnunet_pip_requirements(None, (3, 9)) == ["nnunetv2==2.5.2"]


@pytest.mark.torch
def test_cuda_out_of_memory_moves_the_run_to_the_cpu_and_says_so(tmp_path, monkeypatch):
    import torch

    from PETCTLesionsLib.model import inference

    info = nnunet_model.describe_model(fake_model_folder(tmp_path))
    model = nnunet_model.NnUNetModel(info, NnUNetOptions(), info.folds, (1,))
    predictor = SimpleNamespace(
        label_manager=SimpleNamespace(all_labels=[0, 1]), configuration_manager=SimpleNamespace(patch_size=[8, 8, 8])
    )
    shape = (4, 5, 6)
    probabilities = np.stack([np.full(shape, 0.7, np.float32), np.full(shape, 0.3, np.float32)])
    runs = []

    def run(device, image, spacing_zyx, report, cancel):
        runs.append(device.type)
        if device.type == "cuda":
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return np.zeros(shape, np.uint8), probabilities, predictor

    monkeypatch.setattr(inference, "choose_device", lambda requested: torch.device("cuda"))
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    monkeypatch.setattr(model, "_run", run)
    messages = []
    ct = np.zeros(shape, np.float32)
    result = model.predict_probability(ct, ct, (4.0, 4.0, 3.0), "cuda", progress=lambda f, m: messages.append(m))
    assert runs == ["cuda", "cpu"] and result.device == "cpu"
    assert result.notes == ["CUDA ran out of memory running the nnU-Net model; running on the CPU instead"]
    assert result.notes[0] in messages
    np.testing.assert_array_equal(result.probability, probabilities[1])
