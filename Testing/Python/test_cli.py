"""The command line: info on real and synthetic data, the demo job."""

from __future__ import annotations

import json

import numpy as np
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
