"""What the commands say and when they stop (issue 19, "Commands"): convert names the CT series
of each line, every option says what it does and its default, the demo's summary adds up, synth
and demo refuse an existing folder before generating anything, info exits 2 on a folder without
DICOM images, and the synthetic CT is described by its real slice thickness."""

from __future__ import annotations

import argparse
import datetime
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
from conftest import REPO_ROOT, copy_series

from PETCTLesionsLib import demo
from PETCTLesionsLib.cli import build_parser, main
from PETCTLesionsLib.formats import voc
from PETCTLesionsLib.geometry import Grid
from PETCTLesionsLib.metrics import case_metrics
from PETCTLesionsLib.synthetic import synth
from PETCTLesionsLib.synthetic.dicom_writer import PatientInfo, StudyInfo, make_uid, write_ct_series


@pytest.fixture(scope="module")
def small_lung_study(tmp_path_factory):
    """``synth --size small`` once: the earlier run that synth and demo must not overwrite."""
    root = tmp_path_factory.mktemp("synth")
    (case,) = synth.generate_dataset(root, cases=1, seed=1, size="small", flavour="lung", n_lesions=3)
    return root, case


def _tree(folder: Path) -> list:
    return sorted((str(p.relative_to(folder)), p.stat().st_size) for p in folder.rglob("*"))


def _refuse_to_generate(*args, **kwargs):
    raise AssertionError("a phantom was generated before the output folder was checked")


# ------------------------------------------------------------------------------------- help texts


def _commands(parser: argparse.ArgumentParser) -> dict:
    (subparsers,) = [action for action in parser._actions if isinstance(action, argparse._SubParsersAction)]
    return subparsers.choices


def test_every_option_of_every_command_has_a_help_text_that_shows_its_default():
    parser = build_parser()
    without_help, default_not_shown = [], []
    for name, command in _commands(parser).items():
        command.format_help()  # a stray '%' in a help text would make --help fail
        for action in command._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            option = f"{name} {'/'.join(action.option_strings) or action.dest}"
            if not (action.help or "").strip():
                without_help.append(option)
            # A value option with a default shows it from the parser itself, so the two never disagree.
            elif action.nargs != 0 and action.default not in (None, [], argparse.SUPPRESS):
                default_not_shown += [] if "%(default)" in action.help else [option]
    assert without_help == []
    assert default_not_shown == []

    train = _commands(parser)["train"]
    shown = "".join(train.format_help().split())  # argparse wraps lines, at spaces and hyphens
    expected = {
        "--epochs": "50",
        "--batch-size": "4",
        "--learning-rate": "0.002",
        "--seed": "0",
        "--steps-per-epoch": "250",
        "--warmup-steps": "200",
        "--synthetic-size": "full",
        "--foreground-fraction": "0.333",
    }
    for action in train._actions:
        if action.option_strings[0] in expected:
            described = action.help % dict(vars(action), prog=train.prog)  # as argparse expands it
            assert described.endswith(f"(default: {expected[action.option_strings[0]]})"), described
            assert "".join(described.split()) in shown


# ---------------------------------------------------------------------------------------- convert


@pytest.mark.slicer
def test_convert_names_the_ct_series_of_each_line_and_its_refusals_name_overwrite(tmp_path, capsys):
    """A patient with two CT series and no PET (as many Lung-PET-CT-Dx patients), boxes on both:
    each 'wrote ... VOC XML files' and 'CT only' line used to be the same but for the count."""
    root = tmp_path / "synth"
    (case,) = synth.generate_dataset(root, cases=1, seed=4, size="small", flavour="lung", n_lesions=5)
    ct_files = sorted(case.ct.paths)
    study = tmp_path / "dicom" / case.patient_id / case.study_dir.name
    shutil.copytree(ct_files[0].parent, study / ct_files[0].parent.name)

    def low_dose(ds) -> None:
        ds.SeriesNumber, ds.SeriesDescription = 7, "low dose"

    copies = copy_series(ct_files, study / "7.000000-low dose", "low dose", low_dose)
    copy_of = {pydicom.dcmread(o).SOPInstanceUID: pydicom.dcmread(c).SOPInstanceUID for o, c in zip(ct_files, copies)}
    annotations = tmp_path / "Annotation" / voc.patient_folder_name(case.patient_id)
    shutil.copytree(case.voc_files[0].parent, annotations)
    for path in sorted(case.voc_files)[:5]:  # the low-dose copy has boxes on 5 slices
        annotation = voc.parse_voc_xml(path)
        annotation.sop_instance_uid = copy_of[annotation.sop_instance_uid]
        voc.write_voc_annotation(annotation, annotations)
    first = pydicom.dcmread(ct_files[0], stop_before_pixels=True)
    original = f"CT series {first.SeriesNumber} '{first.SeriesDescription}'"
    args = ["convert", "--dicom", str(tmp_path / "dicom"), "--voc", str(tmp_path / "Annotation")]
    out = tmp_path / "out"

    assert main([*args, "--out", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()

    folder = out / "Annotation" / annotations.name
    assert f"wrote {folder}/ ({len(case.voc_files)} VOC XML files from {original})" in lines
    assert f"wrote {folder}/ (5 VOC XML files from CT series 7 'low dose')" in lines
    for series in (original, "CT series 7 'low dose'"):
        assert f"skipped: {case.patient_id}: CT only, no nnU-Net case from {series} (it needs the PET)" in lines

    assert main([*args, "--out", str(out)]) == 1
    captured = capsys.readouterr()
    refusals = [line for line in captured.out.splitlines() if "refusing to overwrite" in line]
    assert len(refusals) == 2
    assert all(
        line.endswith("already exist; refusing to overwrite them (--overwrite replaces them)") for line in refusals
    )
    assert "allow overwriting" not in captured.out
    assert captured.err == "petct-lesions convert: nothing was written\n"


# ------------------------------------------------------------------------------------------- demo


def _lesion_map(shape, *boxes) -> np.ndarray:
    labels = np.zeros(shape, np.uint16)
    for number, box in enumerate(boxes, start=1):
        labels[box] = number
    return labels


def test_demo_summary_says_how_many_detections_are_true_lesions_and_how_many_false_positives():
    shape = (8, 20, 20)
    truth = _lesion_map(
        shape, np.s_[1:3, 1:3, 1:3], np.s_[1:3, 6:8, 6:8], np.s_[5:7, 1:3, 12:14], np.s_[5:7, 15:17, 2:4]
    )
    # Four detections: three on three of the four true lesions, one where there is none.
    found = _lesion_map(
        shape, np.s_[1:3, 1:3, 1:3], np.s_[1:3, 6:8, 6:8], np.s_[5:7, 1:3, 12:14], np.s_[6:7, 10:12, 17:19]
    )
    metrics = case_metrics(found > 0, truth > 0, 0.064)

    assert demo.detections_against_truth(found, truth > 0, metrics) == (
        "4 detected: 3 of the 4 true lesions, 1 false positive"
    )

    # One true lesion found as two detections (its two slices): the counts say so instead of not adding up.
    split = _lesion_map(
        shape,
        np.s_[1:3, 1:3, 1:3],
        np.s_[1:2, 6:8, 6:8],
        np.s_[2:3, 6:8, 6:8],
        np.s_[5:7, 1:3, 12:14],
        np.s_[3, 10, 10],
    )
    metrics = case_metrics(split > 0, truth > 0, 0.064)
    assert demo.detections_against_truth(split, truth > 0, metrics) == (
        "5 detected: 3 of the 4 true lesions (by 4 detections), 1 false positive"
    )

    nothing = np.zeros(shape, np.uint16)
    metrics = case_metrics(nothing > 0, truth > 0, 0.064)
    assert demo.detections_against_truth(nothing, truth > 0, metrics) == (
        "0 detected: 0 of the 4 true lesions, 0 false positives"
    )


@pytest.mark.torch
def test_demo_refuses_an_earlier_demo_folder_before_generating_anything(tmp_path, capsys, monkeypatch):
    demo.write_demo_study(tmp_path, seed=1, size="small")
    before = _tree(tmp_path)
    monkeypatch.setattr(demo, "make_phantom", _refuse_to_generate)

    assert main(["demo", "--out", str(tmp_path), "--size", "small", "--device", "cpu"]) == 2

    error = capsys.readouterr().err
    assert error.startswith("petct-lesions demo: error: ")
    assert error.endswith(": already exists; refusing to overwrite it (--overwrite replaces it)\n")
    assert _tree(tmp_path) == before


# ------------------------------------------------------------------------------------------ synth


def test_synth_refuses_an_earlier_run_before_generating_anything(small_lung_study, capsys, monkeypatch):
    root, case = small_lung_study
    before = _tree(root)
    monkeypatch.setattr(synth, "make_phantom", _refuse_to_generate)

    assert main(["synth", "--out", str(root), "--size", "small", "--lesions", "3", "--quiet"]) == 2

    assert capsys.readouterr().err == (
        f"petct-lesions synth: error: {case.study_dir}: already exists; refusing to overwrite it "
        "(--overwrite replaces it)\n"
    )
    assert _tree(root) == before  # no staging folder, nothing new


def test_the_synthetic_ct_is_described_by_its_real_slice_thickness(small_lung_study, tmp_path):
    _, case = small_lung_study
    headers = sorted(
        (pydicom.dcmread(path, stop_before_pixels=True) for path in case.ct.paths),
        key=lambda ds: float(ds.ImagePositionPatient[2]),
    )
    steps = np.diff([float(ds.ImagePositionPatient[2]) for ds in headers])
    thickness = float(headers[0].SliceThickness)
    assert steps == pytest.approx(thickness)  # SliceThickness agrees with the slices' spacing
    description = f"CT {thickness:g}mm"
    assert all(ds.SeriesDescription == description for ds in headers)
    assert f"-{description}-" in case.ct.paths[0].parent.name  # the NBIA series folder carries it too

    # Any CT the writer writes without a description is described by its own thickness.
    patient = PatientInfo("SYN-1", "Synthetic^One", "F", 60, 70.0)
    study = StudyInfo(patient, make_uid("s"), make_uid("f"), datetime.date(2020, 1, 2), datetime.time(9, 0), "CT")
    grid = Grid(size=(4, 4, 3), spacing=(1.0, 1.0, 2.5), origin=(0.0, 0.0, 0.0))
    written = write_ct_series(np.zeros(grid.shape), grid, study, tmp_path / "ct")
    ds = pydicom.dcmread(written.paths[0], stop_before_pixels=True)
    assert (ds.SeriesDescription, float(ds.SliceThickness)) == ("CT 2.5mm", 2.5)


# ------------------------------------------------------------------------------------------- info


def test_info_on_a_folder_without_dicom_images_exits_2_saying_what_it_found(tmp_path, capsys):
    empty, other = tmp_path / "empty", tmp_path / "notes"
    empty.mkdir()
    other.mkdir()
    (other / "a.txt").write_text("not DICOM")
    (other / "b.xml").write_text("<annotation/>")

    assert main(["info", str(empty)]) == 2
    captured = capsys.readouterr()
    assert "Scanned 0 files" in captured.out
    assert captured.err == f"petct-lesions info: error: {empty}: no DICOM image files found (no files at all)\n"

    assert main(["info", str(other), "--json"]) == 2
    captured = capsys.readouterr()
    assert json.loads(captured.out)["files"] == {"found": 2, "dicom_images": 0, "skipped": 2, "unreadable": 0}
    assert captured.err == (
        f"petct-lesions info: error: {other}: no DICOM image files found among 2 files (2 not a DICOM file)\n"
    )


# -------------------------------------------------------------------------------------- the clone


def test_the_readme_demo_output_folder_is_ignored_by_git():
    if shutil.which("git") is None or not (REPO_ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    ignored = subprocess.run(
        ["git", "check-ignore", "--no-index", "-q", "demo-output/predicted/lesions.csv"], cwd=REPO_ROOT
    )
    assert ignored.returncode == 0
