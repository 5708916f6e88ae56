"""Bad input to the command line and its outputs (issue 18): numbers that would change a result
silently, model manifests that point out of their folder or hold no model, studies whose results
could not be written whole (each must leave nothing behind, and a re-run must not be refused),
a full disk, and paths that are pieces of an nnU-Net dataset.

A full disk cannot be made here without root; where a test needs one it says how it is
simulated. The writers' failures are real where possible: a file in the way of a folder, a
CT slice UID that cannot name a file, a process file-size limit (RLIMIT_FSIZE) that cuts what
ITK writes exactly as a full disk does, a worker killed with SIGKILL.
"""

from __future__ import annotations

import errno
import json
import math
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pydicom
import pytest
import SimpleITK as sitk
from conftest import copy_series, save_dicom

from PETCTLesionsLib import fileio
from PETCTLesionsLib.cli import main
from PETCTLesionsLib.errors import ModelFileError
from PETCTLesionsLib.formats import nnunet, parallel_gzip, voc

BUNDLED_MANIFEST = Path(__file__).resolve().parents[2] / "PETCTLesions" / "Resources" / "Models"
BUNDLED_MANIFEST = BUNDLED_MANIFEST / "petct_lesions_unet_v1.json"
PREDICTED_DATASET = "Dataset902_PETCTLesionsPredicted"


@pytest.fixture(scope="module")
def lung_study(tmp_path_factory):
    """A small generated Lung-PET-CT-Dx study (its Patient ID has a histology letter: VOC files are written)."""
    from PETCTLesionsLib.synthetic.synth import generate_dataset

    root = tmp_path_factory.mktemp("lung")
    (case,) = generate_dataset(root, cases=1, seed=3, size="small", flavour="lung")
    return root / "Lung-PET-CT-Dx", case


@pytest.fixture(scope="module")
def detection_once():
    """The bundled model's detection, computed on the first call and given again after: the tests
    that use it are about writing the result, and the study is the same in each."""
    from PETCTLesionsLib import detection

    found = {}

    def detect(*args, **kwargs):
        if "result" not in found:
            found["result"] = detection.detect_lesions(*args, **kwargs)
        return found["result"]

    return detect


def _files_under(folder: Path) -> list:
    return sorted(str(path.relative_to(folder)) for path in folder.rglob("*") if path.is_file())


# ------------------------------------------------------------------------------------ numbers


BAD_NUMBERS = [
    (["predict", "IN", "--out", "OUT"], "--min-volume", ["nan", "-1", "inf", "many"]),
    (["predict", "IN", "--out", "OUT"], "--threshold", ["nan", "0", "1", "1.5", "-0.2", "inf"]),
    (["synth", "--out", "OUT"], "--cases", ["0", "-3", "1.5"]),
    (["synth", "--out", "OUT"], "--seed", ["-1", "x"]),
    (["synth", "--out", "OUT"], "--lesions", ["-1"]),
    (["demo", "--out", "OUT"], "--seed", ["-2"]),
    (["train", "--out", "OUT"], "--fold", ["-1"]),
    (["train", "--out", "OUT"], "--epochs", ["0", "-5", "nan"]),
    (["train", "--out", "OUT"], "--steps-per-epoch", ["0"]),
    (["train", "--out", "OUT"], "--batch-size", ["0"]),
    (["train", "--out", "OUT"], "--learning-rate", ["nan", "0", "-1e-3", "inf"]),
    (["train", "--out", "OUT"], "--warmup-steps", ["-1"]),
    (["train", "--out", "OUT"], "--foreground-fraction", ["nan", "1.5", "-0.1"]),
    (["train", "--out", "OUT"], "--workers", ["-1"]),
    (["train", "--out", "OUT"], "--pool-size", ["0"]),
    (["train", "--out", "OUT"], "--validation-cases", ["0"]),
    (["train", "--out", "OUT"], "--seed", ["-1"]),
    (["train", "--out", "OUT"], "--max-minutes", ["nan", "0", "-1", "inf"]),
]


@pytest.mark.parametrize(
    "command, option, value",
    [(command, option, value) for command, option, values in BAD_NUMBERS for value in values],
    ids=lambda item: item if isinstance(item, str) else item[0],
)
def test_a_bad_number_in_any_option_is_refused_by_argparse_before_anything_is_read(
    tmp_path, capsys, command, option, value
):
    """``--min-volume nan`` used to drop every lesion and write an empty label, exit 0."""
    (tmp_path / "IN").mkdir()
    arguments = [str(tmp_path / part) if part in ("IN", "OUT") else part for part in command]
    with pytest.raises(SystemExit) as stopped:
        main([*arguments, f"{option}={value}"])
    assert stopped.value.code == 2
    error = capsys.readouterr().err
    assert f"argument {option}: must be a " in error and repr(value) in error
    assert not (tmp_path / "OUT").exists()


@pytest.mark.torch
@pytest.mark.parametrize("patch", ["80,128", "0,64,64", "30,64,64", "a,b,c", "-8,64,64"])
def test_a_patch_size_the_network_cannot_take_is_refused_by_argparse(tmp_path, capsys, patch):
    with pytest.raises(SystemExit) as stopped:
        main(["train", "--out", str(tmp_path / "run"), f"--patch={patch}"])
    assert stopped.value.code == 2
    assert "argument --patch: must be three sizes z,y,x in working voxels, each a positive multiple of 8" in (
        capsys.readouterr().err
    )
    assert not (tmp_path / "run").exists()


@pytest.mark.torch
def test_the_library_refuses_a_nan_minimum_volume_or_threshold_before_reading(tmp_path):
    from PETCTLesionsLib.detection import lesions_from_probability
    from PETCTLesionsLib.predict import PredictionOptions, predict

    (tmp_path / "in").mkdir()
    for options, message in (
        (PredictionOptions(min_volume_ml=math.nan), "minimum lesion volume must be a finite number of mL >= 0"),
        (PredictionOptions(threshold=math.nan), "threshold must be a probability between 0 and 1"),
    ):
        with pytest.raises(ValueError, match=message):
            predict([tmp_path / "in"], tmp_path / "out", options)
    assert not (tmp_path / "out").exists()
    probability = sitk.GetArrayFromImage(sitk.Image(4, 4, 4, sitk.sitkFloat32)) + 0.9
    with pytest.raises(ValueError, match="minimum lesion volume must be a finite number >= 0 mL, got nan"):
        lesions_from_probability(probability, 0.5, math.nan)


def _model_copy(folder: Path, **changes) -> Path:
    """The bundled model copied into ``folder``, its manifest changed as given."""
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(BUNDLED_MANIFEST.with_suffix(".pt"), folder)
    manifest = json.loads(BUNDLED_MANIFEST.read_text())
    manifest.update(changes)
    path = folder / BUNDLED_MANIFEST.name
    path.write_text(json.dumps(manifest))  # json writes NaN as NaN, which json.loads reads back
    return path


@pytest.mark.torch
@pytest.mark.parametrize(
    "key, value, message",
    [
        ("threshold", math.nan, '"threshold" must be a probability between 0 and 1, got nan'),
        ("threshold", 1.5, '"threshold" must be a probability between 0 and 1, got 1.5'),
        ("threshold", "0.5", "\"threshold\" must be a probability between 0 and 1, got '0.5'"),
        ("working_spacing_mm", [2.0, 2.0, 2.0], '"working_spacing_mm" is [2.0, 2.0, 2.0], but this PETCTLesions'),
        ("working_spacing_mm", [4.0, math.nan, 3.0], '"working_spacing_mm" must be three numbers x, y, z'),
        ("features", [16, -32, 64, 128], '"features" must be a list of positive whole numbers'),
        ("sha256", "", '"sha256" must be 64 lower-case hexadecimal digits'),
    ],
)
def test_a_bad_number_in_the_model_manifest_is_refused_before_any_study_is_read(tmp_path, capsys, key, value, message):
    manifest = _model_copy(tmp_path / "model", **{key: value})
    (tmp_path / "in").mkdir()
    assert main(["predict", str(tmp_path / "in"), "--model", str(manifest), "--out", str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err
    assert error.startswith(f"petct-lesions predict: error: {manifest}: {message}"), error
    assert not (tmp_path / "out").exists()


@pytest.mark.torch
def test_a_manifest_naming_a_file_outside_its_folder_is_refused_before_it_is_read(tmp_path, monkeypatch):
    from PETCTLesionsLib.model import weights

    secret = tmp_path / "elsewhere" / "secret.pt"
    secret.parent.mkdir()
    shutil.copy(BUNDLED_MANIFEST.with_suffix(".pt"), secret)
    monkeypatch.setattr(weights, "sha256_of", lambda path: pytest.fail(f"{path} was read"))
    for name in ("../../../../etc/passwd", "../elsewhere/secret.pt", str(secret), "", None, 7):
        manifest = _model_copy(tmp_path / "model", file=name)
        with pytest.raises(ModelFileError, match=r'"file" must be the name of the weights file beside'):
            weights.load_model(manifest)
    link = tmp_path / "model" / "linked.pt"
    try:
        link.symlink_to(secret)
    except OSError:
        pytest.skip("this system cannot make symbolic links")
    manifest = _model_copy(tmp_path / "model", file="linked.pt")
    with pytest.raises(ModelFileError, match=r"is a link to a file outside the manifest's folder"):
        weights.load_model(manifest)


@pytest.mark.torch
@pytest.mark.parametrize(
    "content, reason",
    [
        (lambda whole: b"", "it is empty (0 bytes)"),
        (lambda whole: whole[: len(whole) // 2], "the zip archive is truncated or damaged"),
        (lambda whole: b"hello world" * 10, "it is not a torch.save zip archive (it starts with b'hell')"),
    ],
    ids=["empty", "truncated", "not-torch"],
)
def test_a_model_file_that_holds_no_model_says_why(tmp_path, content, reason):
    """An empty .pt whose manifest has its checksum used to read 'cannot be read as a model file ()'."""
    from PETCTLesionsLib.model import weights

    data = content(BUNDLED_MANIFEST.with_suffix(".pt").read_bytes())
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "bad.pt").write_bytes(data)
    manifest = _model_copy(tmp_path / "model", file="bad.pt", sha256=weights.sha256_of(tmp_path / "model" / "bad.pt"))
    with pytest.raises(ModelFileError) as refused:
        weights.load_model(manifest)
    assert str(refused.value).startswith(f"{tmp_path / 'model' / 'bad.pt'}: cannot be read as a model file: {reason}")


@pytest.mark.torch
def test_train_resume_in_a_missing_folder_is_refused_and_creates_nothing(tmp_path, capsys):
    out = tmp_path / "no such run"
    assert main(["train", "--out", str(out), "--resume", "--device", "cpu"]) == 2
    assert capsys.readouterr().err == (
        f"petct-lesions train: error: {out}: no such folder, so no training run to resume; "
        "leave out --resume to start one\n"
    )
    assert not out.exists()
    out.mkdir()
    assert main(["train", "--out", str(out), "--resume", "--device", "cpu"]) == 2
    assert f"{out / 'checkpoint_last.pt'}: no checkpoint to resume from" in capsys.readouterr().err
    assert list(out.iterdir()) == []


# ------------------------------------------------------------------------------ output folder


@pytest.mark.torch
def test_an_output_folder_inside_an_input_folder_is_refused_before_anything_is_read(lung_study, tmp_path, capsys):
    dicom, _ = lung_study
    for out in (dicom / "results", dicom):
        assert main(["predict", str(dicom), "--out", str(out), "--device", "cpu"]) == 2
        assert capsys.readouterr().err == (
            f"petct-lesions predict: error: {out}: the output folder is inside the input folder {dicom}, where the "
            "next run would read the results as input; choose an output folder outside the inputs\n"
        )
    assert not (dicom / "results").exists()


@pytest.mark.torch
def test_pieces_of_an_nnunet_dataset_are_answered_with_what_predict_accepts(lung_study, tmp_path, capsys):
    """They used to read 'no DICOM image files found'."""
    from PETCTLesionsLib.synthetic.synth import DATASET_FOLDER

    raw = tmp_path / "nnUNet_raw"
    shutil.copytree(lung_study[0].parent / "nnUNet_raw", raw)
    dataset = raw / DATASET_FOLDER
    accepted = "give the dataset folder that holds dataset.json (and imagesTs/ or imagesTr/)"
    (label,) = (dataset / "labelsTr").iterdir()
    expected = {
        dataset / "imagesTr": f"looks like part of an nnU-Net dataset: {accepted}, e.g. {dataset}",
        dataset / "labelsTr": f"looks like part of an nnU-Net dataset: {accepted}, e.g. {dataset}",
        raw: f"holds nnU-Net datasets ({DATASET_FOLDER}): {accepted}, e.g. {dataset}",
        label: f"is a NIfTI file: predict reads DICOM studies or an nnU-Net raw dataset: {accepted}",
    }
    for path, answer in expected.items():
        assert main(["predict", str(path), "--out", str(tmp_path / "out")]) == 2
        error = capsys.readouterr().err
        assert error == f"petct-lesions predict: error: {path}: no DICOM image files found; {path} {answer}\n"
    (dataset / "dataset.json").unlink()
    assert main(["predict", str(dataset), "--out", str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err
    assert f"{dataset} looks like an nnU-Net dataset but has no dataset.json: {accepted}" in error
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------- a study's files, one unit


@pytest.mark.torch
def test_a_study_whose_files_cannot_all_be_written_leaves_none_and_a_rerun_succeeds(
    lung_study, detection_once, tmp_path, monkeypatch, capsys
):
    """A file where the study's VOC folder must go: the commit fails after the lesion table and the
    nnU-Net case are in place, and takes them back. The run used to leave lesions.csv and the
    nnU-Net case, and the re-run refused them as an earlier run's result."""
    from PETCTLesionsLib import predict as predict_module
    from PETCTLesionsLib.formats.voc import patient_folder_name

    monkeypatch.setattr(predict_module, "detect_lesions", detection_once)
    dicom, case = lung_study
    out = tmp_path / "out"
    blocking = out / "Annotation" / patient_folder_name(case.patient_id)
    blocking.parent.mkdir(parents=True)
    blocking.write_text("a file where the patient's VOC folder belongs")
    arguments = ["predict", str(dicom), "--out", str(out), "--device", "cpu"]

    assert main(arguments) == 1
    printed = capsys.readouterr().out
    assert f"{case.case_id}: NOT processed: " in printed and str(blocking) in printed
    assert _files_under(out) == [str(blocking.relative_to(out))]  # the user's file, nothing of the study
    assert [p.name for p in out.iterdir()] == ["Annotation"]  # no folder left behind either, hidden or not

    blocking.unlink()
    assert main(arguments) == 0
    assert "NOT processed" not in capsys.readouterr().out
    assert (out / case.case_id / "lesions.csv").is_file()
    assert list((out / "Annotation" / patient_folder_name(case.patient_id)).glob("*.xml"))
    assert nnunet.read_dataset_json(out / "nnUNet_raw" / PREDICTED_DATASET)["numTraining"] == 1
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


@pytest.mark.torch
def test_a_ct_slice_uid_that_cannot_name_a_voc_file_leaves_nothing_and_the_rerun_says_the_same(
    lung_study, detection_once, tmp_path, monkeypatch, capsys
):
    """The VOC writer refuses the UIDs after the lesion table and the nnU-Net case were written:
    they used to stay, and the re-run then refused them instead of naming the UID again."""
    import warnings

    from PETCTLesionsLib import predict as predict_module

    monkeypatch.setattr(predict_module, "detect_lesions", detection_once)
    dicom, case = lung_study
    copy = tmp_path / "dicom"
    shutil.copytree(dicom, copy)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns about the invalid UIDs this test writes on purpose
        for path in case.ct.paths:
            ds = pydicom.dcmread(path)
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID + ".x"
            save_dicom(ds, copy / Path(path).relative_to(dicom))
    out = tmp_path / "out"
    for _ in range(2):
        assert main(["predict", str(copy), "--out", str(out), "--device", "cpu", "--no-pictures"]) == 1
        printed = capsys.readouterr().out
        assert f"{case.case_id}: NOT processed: SOPInstanceUID " in printed and "is not a DICOM UID" in printed
        assert _files_under(out) == [] and [p.name for p in out.iterdir()] == []


@pytest.mark.torch
def test_a_full_disk_while_writing_the_pictures_says_so_and_leaves_nothing(
    lung_study, detection_once, tmp_path, monkeypatch, capsys
):
    """The disk fills up at the study's last files, its pictures. Simulated: SimpleITK's writer
    raises for PNG files what ITK raises on a full disk (its message ends in the C library's
    strerror(ENOSPC)); other files are written as usual."""
    from PETCTLesionsLib import predict as predict_module

    monkeypatch.setattr(predict_module, "detect_lesions", detection_once)
    real_write = sitk.WriteImage

    def full_for_pictures(image, path, *args, **kwargs):
        if str(path).endswith(".png"):
            raise RuntimeError(
                f"ITK ERROR: PNGImageIO: Error while writing Slice to file: {path}\nReason: {os.strerror(errno.ENOSPC)}"
            )
        return real_write(image, path, *args, **kwargs)

    monkeypatch.setattr(sitk, "WriteImage", full_for_pictures)
    dicom, case = lung_study
    out = tmp_path / "out"
    assert main(["predict", str(dicom), "--out", str(out), "--device", "cpu"]) == 1
    printed = capsys.readouterr().out
    pictures = out / case.case_id / "pictures"
    assert f"{case.case_id}: NOT processed: no space left on {pictures / 'axial_lesion1_'}" in printed
    assert "; free some space or choose another output folder" in printed
    assert _files_under(out) == [] and [p.name for p in out.iterdir()] == []

    monkeypatch.setattr(sitk, "WriteImage", real_write)
    assert main(["predict", str(dicom), "--out", str(out), "--device", "cpu"]) == 0
    assert (pictures / "pet_mip_coronal.png").is_file()


@pytest.mark.torch
def test_a_full_disk_while_itk_writes_a_nifti_is_named_not_cannot_mmap_an_empty_file(
    lung_study, detection_once, tmp_path, monkeypatch, capsys
):
    """On a full disk ITK's NIfTI writer prints 'wrote only 0 of N bytes' and returns normally; the
    empty file then failed as 'cannot mmap an empty file'. Simulated at the lowest write calls:
    SimpleITK's writer leaves the .nii empty, as it does on a full disk, and writing to files in
    fileio (the check that asks the system why the bytes are missing) fails with ENOSPC."""
    from PETCTLesionsLib import predict as predict_module

    monkeypatch.setattr(predict_module, "detect_lesions", detection_once)
    real_write = sitk.WriteImage

    disk = {"full": False}

    def empty_nifti(image, path, *args, **kwargs):
        if str(path).endswith(".nii"):  # the first large file: the disk fills up here
            disk["full"] = True
            Path(path).write_bytes(b"")
            return None
        return real_write(image, path, *args, **kwargs)

    def disk_full_open(path, mode="r", *args, **kwargs):
        if disk["full"] and any(letter in mode for letter in "wax+"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return open(path, mode, *args, **kwargs)

    monkeypatch.setattr(sitk, "WriteImage", empty_nifti)
    monkeypatch.setattr(fileio, "open", disk_full_open, raising=False)
    dicom, case = lung_study
    out = tmp_path / "out"
    assert main(["predict", str(dicom), "--out", str(out), "--device", "cpu", "--no-pictures"]) == 1
    printed = capsys.readouterr().out
    assert "cannot mmap" not in printed
    images = out / "nnUNet_raw" / PREDICTED_DATASET / "imagesTr"
    assert f"no space left on {images / case.case_id}_000" in printed
    assert _files_under(out) == []


@pytest.mark.skipif(sys.platform == "win32", reason="RLIMIT_FSIZE is POSIX")
def test_a_nifti_that_itk_cuts_short_is_refused_by_name_and_leaves_nothing(tmp_path):
    """A real short write without root: a file-size limit (RLIMIT_FSIZE) on the process makes the
    system refuse bytes past it (EFBIG) as a full disk refuses them (ENOSPC), and ITK's NIfTI
    writer again reports nothing. The cut NIfTI used to be deflated and kept as the case's file:
    a damaged image that reads as whole."""
    target = tmp_path / "case_0001.nii.gz"
    script = textwrap.dedent(
        f"""
        import resource
        from pathlib import Path
        import numpy as np, SimpleITK as sitk
        from PETCTLesionsLib.fileio import atomic_output
        from PETCTLesionsLib.formats.parallel_gzip import write_nifti_gz
        image = sitk.GetImageFromArray(np.random.default_rng(0).random((40, 64, 64), dtype=np.float32))  # 655 kB
        resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))
        try:
            with atomic_output(Path({str(target)!r})) as temporary:
                write_nifti_gz(image, temporary)
        except OSError as error:
            print(type(error).__name__, error)
        """
    )
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout == f"WriteError {target}: only 100000 of 655712 bytes written (File too large)\n"
    assert list(tmp_path.iterdir()) == []


@pytest.mark.torch
def test_overwriting_an_earlier_result_that_fails_restores_it_and_one_that_succeeds_replaces_all_of_it(
    lung_study, detection_once, tmp_path, monkeypatch, capsys
):
    """--overwrite replaces a study's result as one unit: when the last step (dataset.json) fails,
    the earlier files are back as they were; when it succeeds, no file of the earlier result stays
    beside the new one (a picture of a lesion no longer found, say)."""
    from PETCTLesionsLib import predict as predict_module

    monkeypatch.setattr(predict_module, "detect_lesions", detection_once)
    dicom, case = lung_study
    out = tmp_path / "out"
    arguments = ["predict", str(dicom), "--out", str(out), "--device", "cpu"]
    assert main(arguments) == 0
    stale_picture = out / case.case_id / "pictures" / "axial_lesion9_slice1.png"
    shutil.copy(out / case.case_id / "pictures" / "pet_mip_coronal.png", stale_picture)
    before = {name: (out / name).read_bytes() for name in _files_under(out)}
    capsys.readouterr()

    real_update = nnunet.update_dataset_json

    def full_disk_at_the_end(dataset_dir, *args, **kwargs):
        if fileio.STAGING_PREFIX not in str(dataset_dir):  # the real dataset.json, after the files moved in
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(Path(dataset_dir) / "dataset.json"))
        return real_update(dataset_dir, *args, **kwargs)

    monkeypatch.setattr(nnunet, "update_dataset_json", full_disk_at_the_end)
    assert main([*arguments, "--overwrite"]) == 1
    assert f"NOT processed: no space left on {out / 'nnUNet_raw' / PREDICTED_DATASET / 'dataset.json'}" in (
        capsys.readouterr().out
    )
    assert {name: (out / name).read_bytes() for name in _files_under(out)} == before

    monkeypatch.setattr(nnunet, "update_dataset_json", real_update)
    assert main([*arguments, "--overwrite"]) == 0
    assert not stale_picture.exists() and (out / case.case_id / "pictures" / "pet_mip_coronal.png").is_file()
    assert set(_files_under(out)) == set(before) - {str(stale_picture.relative_to(out))}


@pytest.mark.torch
def test_staging_left_by_a_killed_run_is_removed_and_never_in_the_way(
    lung_study, detection_once, tmp_path, monkeypatch, capsys
):
    """A run killed with SIGKILL while its study's files were being staged leaves a hidden
    staging folder; the next run into the same folder removes it (its process is gone: the
    folder's lock is free) and succeeds. A folder without its lock file yet (a unit starting
    this moment) is left alone, one that stayed so for two days removed."""
    from PETCTLesionsLib import predict as predict_module

    out = tmp_path / "out"
    if sys.platform != "win32":
        killed = textwrap.dedent(
            f"""
            import os, signal
            from pathlib import Path
            from PETCTLesionsLib.fileio import StagedOutputs
            with StagedOutputs(Path({str(out)!r})) as staging:
                target = staging.path(Path({str(out)!r}) / "case" / "lesions.csv")
                target.parent.mkdir(parents=True)
                target.write_text("half")
                os.kill(os.getpid(), signal.SIGKILL)
            """
        )
        assert subprocess.run([sys.executable, "-c", killed], timeout=120).returncode == -9
    starting = out / f"{fileio.STAGING_PREFIX}starting"
    other_old = out / f"{fileio.STAGING_PREFIX}old"
    for folder in (starting, other_old):
        (folder / "new").mkdir(parents=True)
    two_days_ago = time.time() - 2 * 24 * 3600
    os.utime(other_old, (two_days_ago, two_days_ago))
    left = sorted(p.name for p in out.iterdir())
    assert all(name.startswith(fileio.STAGING_PREFIX) for name in left) and len(left) >= 2

    monkeypatch.setattr(predict_module, "detect_lesions", detection_once)
    dicom, case = lung_study
    assert main(["predict", str(dicom), "--out", str(out), "--device", "cpu", "--no-pictures"]) == 0
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == [starting.name]
    assert (out / case.case_id / "lesions.csv").is_file()


@pytest.mark.torch
def test_a_case_of_an_nnunet_dataset_is_written_whole_or_not_at_all(lung_study, tmp_path, monkeypatch, capsys):
    """Its label and lesion table are one unit: the disk filling up at the table (simulated at the
    lowest write call: opening the table's file for writing fails with ENOSPC) used to leave the
    label, which the re-run refused."""
    from PETCTLesionsLib import detection
    from PETCTLesionsLib import predict as predict_module
    from PETCTLesionsLib.synthetic.synth import DATASET_FOLDER

    dataset = lung_study[0].parent / "nnUNet_raw" / DATASET_FOLDER
    found = {}  # the model runs once: what is tested is the writing

    def detect_once(*args, **kwargs):
        return found.setdefault("result", detection.detect_lesions(*args, **kwargs))

    monkeypatch.setattr(predict_module, "detect_lesions", detect_once)
    out = tmp_path / "pred"

    def disk_full_for_the_table(path, mode="r", *args, **kwargs):
        if str(path).endswith(".csv") and "w" in mode:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # as write() raises it: no file name
        return open(path, mode, *args, **kwargs)

    monkeypatch.setattr(fileio, "open", disk_full_for_the_table, raising=False)
    arguments = ["predict", str(dataset), "--out", str(out), "--device", "cpu"]
    assert main(arguments) == 1
    printed = capsys.readouterr().out
    (case_id,) = nnunet.list_cases(dataset)
    assert f"{case_id}: NOT processed: no space left on {out / case_id}_lesions.csv" in printed
    assert _files_under(out) == [] and [p.name for p in out.iterdir()] == []

    monkeypatch.delattr(fileio, "open")
    assert main(arguments) == 0
    assert sorted(p.name for p in out.iterdir()) == [f"{case_id}.nii.gz", f"{case_id}_lesions.csv"]


def _moves_into_place(source, target) -> bool:
    """Whether an ``os.replace(source, target)`` moves a staged file out of its staging folder."""
    return fileio.STAGING_PREFIX in str(source) and fileio.STAGING_PREFIX not in str(target)


@pytest.mark.torch
def test_a_move_that_fails_part_way_through_an_overwrite_leaves_the_earlier_result_intact(
    lung_study, detection_once, tmp_path, monkeypatch, capsys
):
    """The second move of a study's files into place fails (simulated: os.replace raises EIO for it)
    after the file it replaces was set aside. The earlier file used to be left in the staging
    folder, out of the rollback's reach, and deleted with it."""
    from PETCTLesionsLib import predict as predict_module

    monkeypatch.setattr(predict_module, "detect_lesions", detection_once)
    dicom, case = lung_study
    out = tmp_path / "out"
    arguments = ["predict", str(dicom), "--out", str(out), "--device", "cpu", "--no-pictures"]
    assert main(arguments) == 0
    before = {name: (out / name).read_bytes() for name in _files_under(out)}
    capsys.readouterr()

    real_replace, moves = os.replace, []

    def second_move_fails(source, target, **kwargs):
        if _moves_into_place(source, target):
            moves.append(target)
            if len(moves) == 2:
                raise OSError(errno.EIO, os.strerror(errno.EIO), str(source), None, str(target))
        return real_replace(source, target, **kwargs)

    monkeypatch.setattr(os, "replace", second_move_fails)
    assert main([*arguments, "--overwrite"]) == 1
    printed = capsys.readouterr().out
    assert f"{case.case_id}: NOT processed: [Errno {errno.EIO}] {os.strerror(errno.EIO)}: '{moves[1]}'" in printed
    assert "undoing" not in printed
    assert {name: (out / name).read_bytes() for name in _files_under(out)} == before
    assert not list(out.rglob(".*"))  # no staging folder, no file set aside


@pytest.mark.torch
def test_an_earlier_file_that_cannot_be_put_back_is_kept_hidden_beside_it_named_and_never_removed(
    lung_study, detection_once, tmp_path, monkeypatch, capsys
):
    """--overwrite fails at its last step (dataset.json: a full disk, simulated) and putting the earlier
    lesions.csv back fails too (simulated: os.replace raises EACCES, as for a file another program holds
    open on Windows). The earlier file used to stay in the staging folder, unmentioned, which the next
    run deleted as stale."""
    from PETCTLesionsLib import predict as predict_module

    monkeypatch.setattr(predict_module, "detect_lesions", detection_once)
    dicom, case = lung_study
    out = tmp_path / "out"
    arguments = ["predict", str(dicom), "--out", str(out), "--device", "cpu", "--no-pictures"]
    assert main(arguments) == 0
    table = out / case.case_id / "lesions.csv"
    earlier = table.read_bytes()
    capsys.readouterr()

    real_update, real_replace, onto_table = nnunet.update_dataset_json, os.replace, []

    def full_disk_at_the_end(dataset_dir, *args, **kwargs):
        if fileio.STAGING_PREFIX not in str(dataset_dir):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(Path(dataset_dir) / "dataset.json"))
        return real_update(dataset_dir, *args, **kwargs)

    def table_cannot_be_put_back(source, target, **kwargs):
        if Path(target) == table:
            onto_table.append(source)
            if len(onto_table) == 2:  # the first moves the new table in, the second puts the earlier one back
                raise OSError(errno.EACCES, os.strerror(errno.EACCES), str(source), None, str(target))
        return real_replace(source, target, **kwargs)

    monkeypatch.setattr(nnunet, "update_dataset_json", full_disk_at_the_end)
    monkeypatch.setattr(os, "replace", table_cannot_be_put_back)
    assert main([*arguments, "--overwrite"]) == 1
    printed = capsys.readouterr().out
    kept = Path(onto_table[1])
    assert kept.parent == table.parent and kept.name.startswith(".lesions.csv.") and not kept.name.endswith(".csv")
    assert f"NOT processed: no space left on {out / 'nnUNet_raw' / PREDICTED_DATASET / 'dataset.json'}" in printed
    assert f"your earlier {table} is kept as {kept} ({os.strerror(errno.EACCES)}); rename it back" in printed
    assert kept.read_bytes() == earlier and not table.exists()

    monkeypatch.setattr(nnunet, "update_dataset_json", real_update)
    monkeypatch.setattr(os, "replace", real_replace)
    assert main([*arguments, "--overwrite"]) == 0
    assert kept.read_bytes() == earlier and table.is_file()


@pytest.mark.torch
def test_an_earlier_file_that_cannot_be_set_aside_is_named_as_itself_and_kept(
    lung_study, detection_once, tmp_path, monkeypatch, capsys
):
    """--overwrite cannot move the earlier lesions.csv out of the way (simulated: os.replace raises EACCES
    for it, as for a file another program holds open on Windows). The error named the hidden place it
    was being moved to in the staging folder as well."""
    from PETCTLesionsLib import predict as predict_module

    monkeypatch.setattr(predict_module, "detect_lesions", detection_once)
    dicom, case = lung_study
    out = tmp_path / "out"
    arguments = ["predict", str(dicom), "--out", str(out), "--device", "cpu", "--no-pictures"]
    assert main(arguments) == 0
    before = {name: (out / name).read_bytes() for name in _files_under(out)}
    capsys.readouterr()
    table, real_replace = out / case.case_id / "lesions.csv", os.replace

    def table_held_open(source, target, **kwargs):
        if Path(source) == table:
            raise OSError(errno.EACCES, os.strerror(errno.EACCES), str(source), None, str(target))
        return real_replace(source, target, **kwargs)

    monkeypatch.setattr(os, "replace", table_held_open)
    assert main([*arguments, "--overwrite"]) == 1
    printed = capsys.readouterr().out
    assert f"NOT processed: [Errno {errno.EACCES}] {os.strerror(errno.EACCES)}: '{table}'\n" in printed
    assert {name: (out / name).read_bytes() for name in _files_under(out)} == before
    assert not list(out.rglob(".*"))


@pytest.mark.torch
def test_a_new_file_that_cannot_be_taken_back_is_named_in_the_error(
    lung_study, detection_once, tmp_path, monkeypatch, capsys
):
    """The last step fails (dataset.json: a full disk, simulated) and the lesion table just moved in
    cannot be removed again (simulated: unlink raises EACCES, as for a file another program holds open
    on Windows). That used to be silent: the error said nothing of the table left behind."""
    from PETCTLesionsLib import predict as predict_module

    monkeypatch.setattr(predict_module, "detect_lesions", detection_once)
    dicom, case = lung_study
    out = tmp_path / "out"
    table = out / case.case_id / "lesions.csv"
    real_update, real_unlink = nnunet.update_dataset_json, Path.unlink

    def full_disk_at_the_end(dataset_dir, *args, **kwargs):
        if fileio.STAGING_PREFIX not in str(dataset_dir):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(Path(dataset_dir) / "dataset.json"))
        return real_update(dataset_dir, *args, **kwargs)

    def table_held_open(path, *args, **kwargs):
        if path == table:
            raise OSError(errno.EACCES, os.strerror(errno.EACCES), str(path))
        return real_unlink(path, *args, **kwargs)

    monkeypatch.setattr(nnunet, "update_dataset_json", full_disk_at_the_end)
    monkeypatch.setattr(Path, "unlink", table_held_open)
    assert main(["predict", str(dicom), "--out", str(out), "--device", "cpu", "--no-pictures"]) == 1
    printed = capsys.readouterr().out
    assert f"NOT processed: no space left on {out / 'nnUNet_raw' / PREDICTED_DATASET / 'dataset.json'}" in printed
    assert f"{table}: could not be removed ({os.strerror(errno.EACCES)}); remove it by hand" in printed
    assert _files_under(out) == [str(table.relative_to(out))]


@pytest.mark.torch
def test_results_on_another_file_system_than_the_output_folder_are_copied_into_place(
    lung_study, detection_once, tmp_path, monkeypatch, capsys
):
    """OUT/nnUNet_raw (or any folder in OUT) a link or mount to another disk: a rename from the staging
    folder cannot cross it. Simulated: os.replace raises EXDEV for every move out of the staging folder,
    as the system does across file systems. Every study used to be NOT processed there."""
    from PETCTLesionsLib import predict as predict_module

    monkeypatch.setattr(predict_module, "detect_lesions", detection_once)
    real_replace = os.replace

    def across_file_systems(source, target, **kwargs):
        if _moves_into_place(source, target):
            raise OSError(errno.EXDEV, os.strerror(errno.EXDEV), str(source), None, str(target))
        return real_replace(source, target, **kwargs)

    monkeypatch.setattr(os, "replace", across_file_systems)
    dicom, case = lung_study
    out = tmp_path / "out"
    arguments = ["predict", str(dicom), "--out", str(out), "--device", "cpu", "--no-pictures"]
    for again in ([], ["--overwrite"]):
        assert main([*arguments, *again]) == 0, capsys.readouterr().out
        assert "NOT processed" not in capsys.readouterr().out
        table = out / case.case_id / "lesions.csv"
        assert table.read_text().startswith("case_id,patient_id,")
        assert nnunet.read_dataset_json(out / "nnUNet_raw" / PREDICTED_DATASET)["numTraining"] == 1
        assert not list(out.rglob(".*"))  # no copy, set-aside file or staging folder left


@pytest.mark.torch
def test_a_folder_that_another_run_creates_at_the_same_moment_is_no_error(
    lung_study, detection_once, tmp_path, monkeypatch, capsys
):
    """Two runs writing into one --out: the other run creates the study's folder between this one's
    check and its mkdir (simulated: the folder is created just before this run's mkdir of it). That
    was a FileExistsError, and the study was NOT processed."""
    from PETCTLesionsLib import predict as predict_module

    monkeypatch.setattr(predict_module, "detect_lesions", detection_once)
    dicom, case = lung_study
    out = tmp_path / "out"
    real_mkdir = Path.mkdir

    def the_other_run_first(path, mode=0o777, parents=False, exist_ok=False):
        if path == out / case.case_id and not path.exists():
            real_mkdir(path)
        return real_mkdir(path, mode, parents, exist_ok)

    monkeypatch.setattr(Path, "mkdir", the_other_run_first)
    assert main(["predict", str(dicom), "--out", str(out), "--device", "cpu", "--no-pictures"]) == 0
    assert "NOT processed" not in capsys.readouterr().out
    assert (out / case.case_id / "lesions.csv").is_file()


@pytest.mark.torch
def test_a_crafted_slice_uid_never_makes_overwrite_touch_a_file_outside_the_output_folder(
    lung_study, detection_once, tmp_path, monkeypatch, capsys
):
    """A CT slice (one without a box) whose SOPInstanceUID is a path, '../../../elsewhere/thesis':
    --overwrite retires an earlier result's VOC file of every slice, and took OUT/Annotation/<patient>/
    ../../../elsewhere/thesis.xml, a file outside --out, and deleted it."""
    import warnings

    from PETCTLesionsLib import predict as predict_module

    monkeypatch.setattr(predict_module, "detect_lesions", detection_once)
    dicom, case = lung_study
    copy = tmp_path / "dicom"
    shutil.copytree(dicom, copy)
    first_slice = min(case.ct.paths, key=lambda path: pydicom.dcmread(path).InstanceNumber)
    ds = pydicom.dcmread(first_slice)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns about the invalid UID this test writes on purpose
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = "../../../elsewhere/thesis"
        save_dicom(ds, copy / Path(first_slice).relative_to(dicom))
    thesis = tmp_path / "elsewhere" / "thesis.xml"
    thesis.parent.mkdir()
    thesis.write_text("four years of work")
    out = tmp_path / "out"
    arguments = ["predict", str(copy), "--out", str(out), "--device", "cpu", "--no-pictures"]
    assert main(arguments) == 0
    assert main([*arguments, "--overwrite"]) == 0
    assert "NOT processed" not in capsys.readouterr().out
    assert thesis.read_text() == "four years of work"


@pytest.mark.torch
def test_a_permission_error_names_the_file_not_its_temporary_name(
    lung_study, detection_once, tmp_path, monkeypatch, capsys
):
    """Opening the lesion table's temporary file is refused (simulated: open raises EACCES naming it, as
    when another program or an antivirus holds the folder). The error named '.lesions.<random>.tmp.csv'."""
    from PETCTLesionsLib import predict as predict_module

    monkeypatch.setattr(predict_module, "detect_lesions", detection_once)
    dicom, case = lung_study

    def refused_for_the_table(path, mode="r", *args, **kwargs):
        if Path(path).name.startswith(".lesions.") and "w" in mode:
            raise OSError(errno.EACCES, os.strerror(errno.EACCES), str(path))
        return open(path, mode, *args, **kwargs)

    monkeypatch.setattr(fileio, "open", refused_for_the_table, raising=False)
    out = tmp_path / "out"
    assert main(["predict", str(dicom), "--out", str(out), "--device", "cpu", "--no-pictures"]) == 1
    printed = capsys.readouterr().out
    table = out / case.case_id / "lesions.csv"
    assert f"{case.case_id}: NOT processed: [Errno {errno.EACCES}] {os.strerror(errno.EACCES)}: '{table}'\n" in printed
    assert _files_under(out) == []


@pytest.mark.skipif(sys.platform == "win32", reason="Windows has no flock: there a staging folder ages out")
def test_a_live_staging_folder_is_never_removed_by_another_unit_and_a_dead_ones_is(tmp_path):
    """Liveness is the staging folder's lock, held by its process: a unit's cleanup used to judge by
    the host name and process id in the folder's name, and removed a live unit's folder whose process
    it could not see (a container with the same host name, another machine called localhost on a
    shared --out, a host name equal in its first 40 characters). Simulated: the live unit's process
    reports as its id that of a process that has ended."""
    out = tmp_path / "out"
    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    ended.wait()
    holder = textwrap.dedent(
        f"""
        import os, sys
        from pathlib import Path
        os.getpid = lambda: {ended.pid}  # as seen from another pid namespace or machine
        from PETCTLesionsLib.fileio import StagedOutputs
        with StagedOutputs(Path({str(out)!r})) as staging:
            print(staging.folder, flush=True)
            sys.stdin.readline()
        """
    )
    live = subprocess.Popen([sys.executable, "-c", holder], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        live_folder = Path(live.stdout.readline().strip())
        killed = textwrap.dedent(
            f"""
            import os, signal
            from pathlib import Path
            from PETCTLesionsLib.fileio import StagedOutputs
            with StagedOutputs(Path({str(out)!r})) as staging:
                print(staging.folder, flush=True)
                os.kill(os.getpid(), signal.SIGKILL)
            """
        )
        dead = subprocess.run([sys.executable, "-c", killed], capture_output=True, text=True, timeout=120)
        dead_folder = Path(dead.stdout.strip())
        assert dead.returncode == -9 and live_folder.is_dir() and dead_folder.is_dir()

        with fileio.StagedOutputs(out) as staging:
            assert staging.folder.is_dir()
        assert live_folder.is_dir() and not dead_folder.exists()
    finally:
        live.communicate("done\n", timeout=120)
    assert live.returncode == 0 and not live_folder.exists()


# ------------------------------------------------------------------------------------ convert


@pytest.mark.slicer
def test_convert_exits_1_and_says_no_space_when_a_requested_export_was_not_written(
    lung_study, tmp_path, monkeypatch, capsys
):
    """The VOC files are written, the nnU-Net case is not: the disk fills up (simulated: the gzip
    writer of parallel_gzip raises ENOSPC). convert used to print 'skipped: ... No space left on device'
    and exit 0."""
    dicom, case = lung_study
    annotation_root = case.voc_files[0].parent.parent

    def full_disk(data, strategy, pool, path):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(parallel_gzip, "_write_gzip", full_disk)
    out = tmp_path / "out"
    arguments = ["convert", "--dicom", str(dicom), "--voc", str(annotation_root), "--out", str(out)]
    assert main([*arguments, "--boxes-as-labels"]) == 1
    captured = capsys.readouterr()
    dataset = out / "nnUNet_raw" / "Dataset901_PETCTLesionsConverted"
    assert f"wrote {out / 'Annotation'}" in captured.out
    assert f"NOT written: case {case.case_id!r}: cannot write it under {dataset}: no space left on {dataset}" in (
        captured.out
    )
    assert captured.err == "petct-lesions convert: 1 export(s) NOT written\n"
    assert not (dataset / "labelsTr").exists() or not list((dataset / "labelsTr").iterdir())


@pytest.mark.slicer
def test_convert_exits_1_when_dataset_json_cannot_be_written(lung_study, tmp_path, monkeypatch, capsys):
    """The disk fills up at the nnU-Net dataset's dataset.json, after the case's images (simulated:
    opening dataset.json's temporary file for writing fails with ENOSPC). That OSError escaped the
    export: convert stopped with exit 2, 'refused before starting', after it had written files."""
    dicom, case = lung_study
    annotation_root = case.voc_files[0].parent.parent

    def full_disk_at_dataset_json(path, mode="r", *args, **kwargs):
        if Path(path).name.startswith(".dataset.") and "w" in mode:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return open(path, mode, *args, **kwargs)

    monkeypatch.setattr(fileio, "open", full_disk_at_dataset_json, raising=False)
    out = tmp_path / "out"
    arguments = ["convert", "--dicom", str(dicom), "--voc", str(annotation_root), "--out", str(out)]
    assert main([*arguments, "--boxes-as-labels"]) == 1
    captured = capsys.readouterr()
    dataset = out / "nnUNet_raw" / "Dataset901_PETCTLesionsConverted"
    assert f"wrote {out / 'Annotation'}" in captured.out
    assert (
        f"NOT written: case {case.case_id!r}: its images are written under {dataset}, but not listed in its "
        f"dataset.json: no space left on {dataset / 'dataset.json'}; free some space" in captured.out
    )
    assert captured.err == "petct-lesions convert: 1 export(s) NOT written\n"


@pytest.mark.slicer
def test_convert_skips_an_unreadable_ct_only_study_that_has_nothing_to_export(lung_study, tmp_path, capsys):
    """Beside the annotated PET/CT study, a CT-only study of the same patient without annotations whose
    series misses a slice (unreadable: a gap). No export was due for it, yet it counted as an export NOT
    written and convert exited 1."""
    from PETCTLesionsLib.synthetic.dicom_writer import make_uid

    dicom, case = lung_study
    copy = tmp_path / "dicom"
    shutil.copytree(dicom, copy)
    ct = sorted(case.ct.paths, key=lambda path: pydicom.dcmread(path).InstanceNumber)
    study_uid = make_uid("ct-only study", "unreadable")

    def of_another_study(ds) -> None:
        ds.StudyInstanceUID = study_uid

    copy_series(ct[:3] + ct[4:], copy / "ct only", "ct only", of_another_study)
    annotation_root = case.voc_files[0].parent.parent
    out = tmp_path / "out"
    assert main(["convert", "--dicom", str(copy), "--voc", str(annotation_root), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "NOT written" not in printed
    assert "skipped: " in printed and "no annotation on it, so nothing to export" in printed
    assert list((out / "Annotation" / voc.patient_folder_name(case.patient_id)).glob("*.xml"))


@pytest.mark.parametrize("command", ["predict", "train", "demo"])
def test_a_model_command_without_torch_is_one_line_not_a_traceback(tmp_path, capsys, monkeypatch, command):
    """Before: predict, train and demo stopped with ModuleNotFoundError's traceback where torch is missing
    (the CLI needs only numpy, SimpleITK and pydicom otherwise). torch's absence is what find_spec reports."""
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "torch" else find_spec(name, *a))
    arguments = {"predict": [str(tmp_path)], "train": [], "demo": []}[command]

    assert main([command, *arguments, "--out", str(tmp_path / "out")]) == 2

    error = capsys.readouterr().err
    assert error.startswith(f"petct-lesions {command}: error: {command} runs the lesion model, which needs PyTorch")
    assert (
        "(pip install torch; the CPU build used in CI is torch==" in error and "Intel Macs stop at torch 2.2.2" in error
    )
    assert not (tmp_path / "out").exists()


def test_a_whole_number_too_large_for_a_float_is_read_not_a_traceback():
    """A 400-digit --seed: argparse's check called math.isfinite on the int, which raised OverflowError."""
    from PETCTLesionsLib.cli import build_parser

    seed = "9" * 400
    assert build_parser().parse_args(["synth", "--out", "OUT", "--seed", seed]).seed == int(seed)


def test_a_torch_that_fails_to_load_is_one_line_not_a_traceback(tmp_path, capsys, monkeypatch):
    """A broken PyTorch install (on Windows a missing DLL: OSError [WinError 126]) raised its traceback
    while train's arguments were read (--patch imports the network to check the size). Simulated: importing
    torch or the network module raises that OSError."""
    import importlib.abc

    class BrokenTorch(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "torch" or name.startswith("torch.") or name == "PETCTLesionsLib.model.network":
                raise OSError(errno.ENOENT, "[WinError 126] The specified module could not be found", "c10.dll")
            return None

    broken = [name for name in sys.modules if name in ("torch", "PETCTLesionsLib.model.network")]
    for name in broken + [name for name in sys.modules if name.startswith("torch.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setattr(sys, "meta_path", [BrokenTorch(), *sys.meta_path])

    assert main(["train", "--out", str(tmp_path / "run")]) == 2

    error = capsys.readouterr().err
    assert error.startswith("petct-lesions train: error: train runs the lesion model, which needs PyTorch"), error
    assert error.count("\n") == 1 and not (tmp_path / "run").exists()
