"""The command line: info on real and synthetic data, the demo job."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import LUNG_DX_ROOT

from PETCTLesionsLib.cli import main


def test_info_on_the_real_lung_dx_ct_lists_the_series_and_says_there_is_no_pet(capsys):
    assert main(["info", str(LUNG_DX_ROOT), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert len(report["studies"]) == 1
    study = report["studies"][0]
    assert study["patient_id"] == "Lung_Dx-A0001"
    (series,) = study["series"]
    assert series["modality"] == "CT"
    assert series["files"] == 11
    assert series["size"] == [512, 512, 11]
    np.testing.assert_allclose(series["spacing"], [0.841796875, 0.841796875, 5.0])
    assert report["files"]["skipped"] == 12  # 11 XML annotations and the LICENSE


def test_info_reports_suv_factor_of_a_synthetic_pet(tmp_path, capsys):
    assert main(["synth", "--out", str(tmp_path), "--size", "small", "--quiet"]) == 0
    capsys.readouterr()
    assert main(["info", str(tmp_path / "Lung-PET-CT-Dx")]) == 0
    text = capsys.readouterr().out
    assert "PT series 3" in text and "CT series 2" in text
    assert "SUVbw" in text


def test_info_names_a_missing_path(tmp_path, capsys):
    assert main(["info", str(tmp_path / "nowhere")]) == 2
    assert "nowhere: no such file or folder" in capsys.readouterr().err


def _write_label(path, box=None, shape=(4, 8, 8)):
    import SimpleITK as sitk

    array = np.zeros(shape, np.uint8)
    if box is not None:
        array[box] = 1
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((2.0, 2.0, 2.0))  # 8 mm^3 = 0.008 mL per voxel
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path))


def _evaluate_folders(tmp_path):
    """References a, b (name with spaces), c; predictions a, b and x (which has no reference)."""
    ref, pred = tmp_path / "labelsTr", tmp_path / "pred"
    spaced = "fdg_0a1b2c3d4e_06-20-2003  PET-CT.nii.gz"
    _write_label(ref / "a.nii.gz", np.s_[1:3, 2:4, 2:4])  # 8 voxels
    _write_label(pred / "a.nii.gz", np.s_[1:3, 2:4, 2:4])  # identical: Dice 1
    _write_label(ref / spaced, np.s_[1:3, 2:6, 2:6])  # 32 voxels
    _write_label(pred / spaced, np.s_[1:3, 2:4, 2:6])  # 16 of them: Dice 2*16/48 = 2/3
    _write_label(ref / "c.nii.gz", np.s_[0:1, 0:2, 0:2])  # no prediction
    _write_label(pred / "x.nii.gz", np.s_[0:1, 0:1, 0:1])  # no reference
    return ref, pred


def test_evaluate_refuses_when_a_reference_case_has_no_prediction(tmp_path, capsys):
    ref, pred = _evaluate_folders(tmp_path)
    assert main(["evaluate", "--pred", str(pred), "--ref", str(ref)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""  # no table: nothing was evaluated
    assert captured.err == (
        f"petct-lesions evaluate: error: {pred}: 1 of the 3 reference case(s) in {ref} have no prediction: "
        f"missing {pred / 'c.nii.gz'}. Evaluate them all, or pass --partial to evaluate only the cases present\n"
    )


def test_evaluate_lists_the_first_missing_predictions_and_counts_the_rest(tmp_path, capsys):
    ref, pred = tmp_path / "labelsTr", tmp_path / "pred"
    for n in range(8):
        _write_label(ref / f"case{n}.nii.gz", np.s_[1:2, 1:2, 1:2])
    _write_label(pred / "case0.nii.gz", np.s_[1:2, 1:2, 1:2])
    assert main(["evaluate", "--pred", str(pred), "--ref", str(ref)]) == 2
    err = capsys.readouterr().err
    shown = ", ".join(str(pred / f"case{n}.nii.gz") for n in range(1, 6))
    assert f"7 of the 8 reference case(s) in {ref} have no prediction: missing {shown} and 2 more." in err
    assert "case6" not in err and "case7" not in err


def test_evaluate_partial_evaluates_the_cases_present_and_names_the_others(tmp_path, capsys):
    ref, pred = _evaluate_folders(tmp_path)
    assert main(["evaluate", "--pred", str(pred), "--ref", str(ref), "--partial", "--json"]) == 0
    captured = capsys.readouterr()
    summary = json.loads(captured.out)  # --json: stdout is the JSON alone, the table and notes are on stderr
    table = captured.err
    assert summary["cases"] == 2.0
    assert summary["dice"] == (1.0 + 2 / 3) / 2
    assert summary["fnv_ml"] == 0.0 and summary["fpv_ml"] == 0.0
    assert summary["references_not_evaluated"] == [str(ref / "c.nii.gz")]
    assert summary["predictions_not_evaluated"] == [str(pred / "x.nii.gz")]
    assert [(case["name"], case["dice"]) for case in summary["per_case"]] == [
        ("a.nii.gz", 1.0),
        ("fdg_0a1b2c3d4e_06-20-2003  PET-CT.nii.gz", 2 / 3),
    ]
    lines = table.splitlines()
    assert lines[2].startswith("fdg_0a1b2c3d4e_06-20-2003  PET-CT.nii.gz ")  # in full, never cut
    assert lines[1].split()[:2] == ["a.nii.gz", "1.000"] and lines[2].split()[2] == "0.667"
    assert "mean over 2 studies" in table
    assert f"note: 1 reference case(s) NOT evaluated (no prediction): {ref / 'c.nii.gz'}" in lines
    assert f"note: 1 prediction(s) NOT evaluated (no reference): {pred / 'x.nii.gz'}" in lines


def test_evaluate_library_keyword_partial(tmp_path):
    from PETCTLesionsLib.evaluation import evaluate_label_files, label_pairs

    ref, pred = _evaluate_folders(tmp_path)
    with pytest.raises(ValueError, match="1 of the 3 reference case"):
        label_pairs(pred, ref)
    pairs = label_pairs(pred, ref, partial=True)
    assert [name for name, _, _ in pairs.pairs] == ["a.nii.gz", "fdg_0a1b2c3d4e_06-20-2003  PET-CT.nii.gz"]
    assert (pairs.unpredicted, pairs.unreferenced) == ([ref / "c.nii.gz"], [pred / "x.nii.gz"])
    assert [case.dice for case in evaluate_label_files(pairs.pairs).cases] == [1.0, 2 / 3]
