"""Training: a real (tiny) run on CPU from generated studies and from an nnU-Net dataset, resume, torchrun."""

from __future__ import annotations

import csv
import errno
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch", reason="the model runs on torch")

import torch

from PETCTLesionsLib.cli import main
from PETCTLesionsLib.formats import nnunet
from PETCTLesionsLib.model import preprocessing, weights
from PETCTLesionsLib.training import data as training_data

TINY = ["--epochs", "1", "--steps-per-epoch", "2", "--batch-size", "1", "--patch", "32,48,48", "--workers", "0"]
TINY += ["--pool-size", "1", "--validation-cases", "1", "--synthetic-size", "small", "--warmup-steps", "1"]


def _log_rows(folder: Path):
    with open(folder / "training_log.csv", newline="") as stream:
        return list(csv.DictReader(stream))


def test_training_on_generated_studies_writes_a_loadable_model_and_resumes(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--out", str(out), *TINY]) == 0
    printed = capsys.readouterr().out
    assert "generated whole-body (75%) and torso (25%) studies, small size" in printed
    assert "val Dice" in printed and "threshold" in printed
    model = weights.load_model(out / "model.json")
    assert model.manifest["training"]["steps"] == 2
    assert set(model.manifest["threshold_choice"]) == {"0.2", "0.3", "0.4", "0.5", "0.6"}
    (row,) = _log_rows(out)
    assert row["epoch"] == "1" and float(row["loss"]) > 0
    # Resume: one more epoch continues the step count from the checkpoint.
    assert main(["train", "--out", str(out), *TINY[:1], "2", *TINY[2:], "--resume"]) == 0
    assert [r["epoch"] for r in _log_rows(out)] == ["1", "2"]
    assert weights.load_model(out / "model.json").manifest["training"]["steps"] == 4
    # A new run in the same folder would append to its log and replace its model: refused, named.
    capsys.readouterr()
    assert main(["train", "--out", str(out), *TINY]) != 0
    error = capsys.readouterr().err
    assert f"{out} holds an earlier training run (checkpoint_last.pt" in error and "--overwrite" in error
    assert [r["epoch"] for r in _log_rows(out)] == ["1", "2"]
    assert main(["train", "--out", str(out), *TINY, "--overwrite"]) == 0
    assert [r["epoch"] for r in _log_rows(out)] == ["1"]
    assert weights.load_model(out / "model.json").manifest["training"]["steps"] == 2


def test_fine_tune_with_frozen_batchnorm_keeps_the_statistics_and_fills_a_fixed_pool_once(tmp_path, capsys):
    out = tmp_path / "fine-tune"
    assert main(["train", "--out", str(out), *TINY, "--freeze-batchnorm"]) == 2  # statistics of what? refused
    assert "--freeze-batchnorm keeps the statistics of --init" in capsys.readouterr().err and not out.exists()
    bundled = weights.bundled_manifest_path()
    fixed_pool = ["--pool-size", "2", "--workers", "0"]  # no workers: the whole pool is prepared before step 1
    assert main(["train", "--out", str(out), *TINY, *fixed_pool, "--init", str(bundled), "--freeze-batchnorm"]) == 0
    before = weights.load_model(bundled).network.state_dict()
    after = weights.load_model(out / "model.json").network.state_dict()
    statistics = [name for name in before if name.endswith(("running_mean", "running_var"))]
    assert len(statistics) == 2 * 2 * 7  # two BatchNorms in each of the 7 double convolutions
    for name in statistics:  # saved as float16 both times: equal means untouched
        assert torch.equal(before[name], after[name]), name
    assert not torch.equal(before["encoders.0.0.weight"], after["encoders.0.0.weight"])  # the weights did learn
    (row,) = _log_rows(out)
    assert row["cases_prepared"] == "2"
    training = weights.load_model(out / "model.json").manifest["training"]
    assert training["batchnorm_statistics"] == "frozen (from the initial weights)"


def test_patches_centre_a_share_on_lesions_and_pad_outside_the_volume():
    rng = np.random.default_rng(0)
    label = np.zeros((20, 30, 30), np.uint8)
    label[10, 15, 15] = 1
    case = training_data.TrainingCase(
        "t", np.zeros((2, 20, 30, 30), np.float16), label, np.array([[10, 15, 15]], np.int32), np.array([0, 1]),
        np.array([[0, 0, 0]], np.int32),
    )  # fmt: skip
    images, labels = training_data.sample_patches([case], 400, (16, 16, 16), rng, foreground_fraction=0.5)
    with_lesion = (labels.reshape(400, -1).max(axis=1) > 0).mean()
    assert 0.4 < with_lesion < 0.6  # body centres are in the corner, far from the lesion
    padded = images[labels.reshape(400, -1).max(axis=1) == 0]
    assert (padded[:, 1] == np.float16(-1.0)).any()  # PET padding: zero uptake


def test_lesion_centred_patches_pick_each_lesion_equally_often_whatever_its_size():
    label = np.zeros((40, 40, 80), np.uint8)
    label[10:30, 10:30, 5:25] = 1  # 8000 voxels
    label[20, 20, 60] = 1  # one voxel, 35 voxels away
    case = training_data.prepare_case(
        training_data.StudyArrays("t", np.zeros(label.shape, np.float32), np.zeros(label.shape, np.float32), label,
                                  (4.0, 4.0, 3.0)),
    )  # fmt: skip
    assert list(np.diff(case.lesion_offsets)) == [8000, 1]
    _, labels = training_data.sample_patches([case], 400, (20, 20, 20), np.random.default_rng(1), 1.0)
    small_only = (labels.reshape(400, -1).sum(axis=1) == 1).mean()
    assert 0.4 < small_only < 0.6  # per voxel it would be 1 in 8001


def test_every_lesion_keeps_a_voxel_when_the_label_moves_to_the_working_grid():
    from PETCTLesionsLib.lesions import label_lesions

    # autoPET's PET grid (2.0364 mm, 3 mm): single-voxel lesions at odd indices fall between the 4 mm samples.
    label = np.zeros((12, 41, 41), np.uint8)
    singles = [(3, 5, 5), (3, 5, 35), (7, 35, 21), (9, 21, 9)]
    for voxel in singles:
        label[voxel] = 1
    label[2:10, 15:27, 15:27] = 1  # 1152 voxels, 4.6 mL
    spacing_zyx = (3.0, 2.0364, 2.0364)
    with torch.no_grad():
        soft = preprocessing.to_working_grid(torch.from_numpy(label).float()[None], spacing_zyx)[0].numpy()
    assert label_lesions((soft >= 0.5).astype(np.uint8))[1] == 1  # plain interpolation loses the four small ones
    working = training_data.label_on_working_grid(label, spacing_zyx)
    lesion_map, count = label_lesions(working)
    assert count == 5
    sizes = np.bincount(lesion_map.ravel())[1:]
    assert list(sizes[1:]) == [1, 1, 1, 1]
    assert sizes[0] == (soft >= 0.5).sum()  # the large lesion is the interpolated one, unchanged
    scale = np.array(spacing_zyx) / np.array([3.0, 4.0, 4.0])
    for voxel in singles:  # each kept voxel is the working voxel nearest the lesion
        assert working[tuple(np.rint(np.array(voxel) * scale).astype(int))] == 1


def test_training_reads_an_nnunet_dataset_and_its_splits(tmp_path, capsys):
    from PETCTLesionsLib.synthetic.synth import DATASET_FOLDER, generate_dataset

    generate_dataset(tmp_path / "data", cases=2, seed=8, size="small", flavour="autopet")
    dataset = tmp_path / "data" / "nnUNet_raw" / DATASET_FOLDER
    cases = nnunet.list_cases(dataset)
    nnunet.write_splits(dataset, [{"train": [cases[0]], "val": [cases[1]]}])
    # A pool of 6 would hold 6 copies of the one training case (prepared 6 times): it holds 1.
    assert main(["train", "--dataset", str(dataset), "--out", str(tmp_path / "run"), *TINY, "--pool-size", "6"]) == 0
    printed = capsys.readouterr().out
    assert "(1 training / 1 validation cases, splits_final.json fold 0)" in printed
    assert [row["cases_prepared"] for row in _log_rows(tmp_path / "run")] == ["1"]
    assert weights.load_model(tmp_path / "run" / "model.json").manifest["training"]["data"].startswith(str(dataset))

    # Refused runs say why and leave no --out folder behind.
    def refused(*arguments: str) -> str:
        assert main(["train", *arguments, "--out", str(tmp_path / "refused"), *TINY]) == 2
        assert not (tmp_path / "refused").exists()
        return capsys.readouterr().err

    nnunet.write_splits(dataset, [{"train": [], "val": cases}], overwrite=True)
    assert f"{dataset}: no training cases: its 2 case(s) are all in the validation split" in refused(
        "--dataset", str(dataset)
    )
    assert f"{tmp_path}: not an nnU-Net raw dataset (no dataset.json)" in refused("--dataset", str(tmp_path))
    missing = tmp_path / "no model.json"
    assert f"{missing}: model manifest not found" in refused("--dataset", str(dataset), "--init", str(missing))


def test_a_checkpoint_whose_write_fails_part_way_leaves_the_previous_one_whole(tmp_path, monkeypatch):
    from PETCTLesionsLib.errors import NoSpaceError
    from PETCTLesionsLib.training import train

    best = tmp_path / "checkpoint_best.pt"
    train._save_checkpoint(best, {"epoch": 1, "scores": {"dice": 0.5}})
    written = best.read_bytes()

    def disk_fills(checkpoint, path):  # half a checkpoint reaches the disk, then the disk is full
        Path(path).write_bytes(written[: len(written) // 2])
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(torch, "save", disk_fills)
    with pytest.raises(NoSpaceError, match=f"^no space left on {best}"):
        train._save_checkpoint(best, {"epoch": 2, "scores": {"dice": 0.6}})
    monkeypatch.undo()

    assert best.read_bytes() == written and torch.load(best, weights_only=False)["epoch"] == 1
    assert [path.name for path in tmp_path.iterdir()] == ["checkpoint_best.pt"]  # no temporary file left behind


@pytest.mark.skipif(sys.platform == "win32", reason="torchrun's gloo rendezvous is tested on Linux/macOS")
def test_the_same_command_runs_on_two_processes_with_torchrun(tmp_path):
    repo = Path(__file__).resolve().parents[2]
    environment = dict(os.environ, PYTHONPATH=str(repo / "PETCTLesions"), OMP_NUM_THREADS="1")
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29533"]
    command += ["-m", "PETCTLesionsLib.cli", "train", "--out", str(tmp_path / "ddp"), "--device", "cpu", *TINY]
    finished = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=600)
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert "on cpu x2" in finished.stdout
    assert weights.load_model(tmp_path / "ddp" / "model.json").manifest["training"]["devices"] == "cpu x2"
