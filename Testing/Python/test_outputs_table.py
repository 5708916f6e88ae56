"""Issue 19: what a reader and a script get from ``predict`` and ``evaluate``.

- ``lesions.csv``: the study's identity on every row, units in the column names, the centroid in
  LPS and RAS, the CT slices (InstanceNumber, z in mm) a lesion crosses, the model's probability
  for the lesion, and the rows whose SUVpeak sphere is larger than the lesion flagged;
- ``synth --flavour autopet`` names its ground truth as ``predict`` names its result, so the
  README's ``evaluate`` route pairs them (both flavours);
- ``evaluate --json`` prints JSON alone on stdout.
"""

from __future__ import annotations

import csv
import io
import json

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from PETCTLesionsLib.cli import main
from PETCTLesionsLib.detection import Detection, lesions_from_probability, lesions_on_ct
from PETCTLesionsLib.formats import nifti, nnunet
from PETCTLesionsLib.geometry import Grid
from PETCTLesionsLib.measurements import PEAK_SPHERE_RADIUS_MM, measure_lesions, sphere_offsets
from PETCTLesionsLib.predict import (
    LESION_COLUMNS,
    PREDICTED_DATASET,
    LesionSlices,
    StudyIdentity,
    lesion_slices_on_ct,
    lesion_table_csv,
)
from PETCTLesionsLib.synthetic.synth import COLLECTION_FOLDERS, DATASET_FOLDER, FLAVOURS, generate_dataset

EXPECTED_COLUMNS = [
    "case_id",
    "patient_id",
    "study_instance_uid",
    "study_date",
    "pet_series_instance_uid",
    "lesion",
    "pet_voxels",
    "mtv_ml",
    "suvbw_max_g_ml",
    "suvbw_mean_g_ml",
    "suvbw_peak_g_ml",
    "suvbw_peak_sphere_exceeds_lesion",
    "tlg_g",
    "probability_max",
    "probability_mean",
    "centroid_lps_x_mm",
    "centroid_lps_y_mm",
    "centroid_lps_z_mm",
    "centroid_ras_x_mm",
    "centroid_ras_y_mm",
    "centroid_ras_z_mm",
    "ct_instance_number_min",
    "ct_instance_number_max",
    "ct_slice_z_min_mm",
    "ct_slice_z_max_mm",
    "pet_i_min",
    "pet_i_max",
    "pet_j_min",
    "pet_j_max",
    "pet_k_min",
    "pet_k_max",
]
IDENTITY_COLUMNS = EXPECTED_COLUMNS[:5]


def _rows(text: str):
    reader = csv.DictReader(io.StringIO(text))
    return list(reader.fieldnames or []), list(reader)


def _known_lesions():
    """Lesion 1: 5 x 7 x 8 voxels of SUV 4 with one of 10, probability 0.8 (0.95 at the hot voxel).
    Lesion 2: one voxel of SUV 3 in a background of 1, probability 0.55: far smaller than the 1 mL sphere."""
    grid = Grid((20, 20, 20), (2.0, 2.0, 3.0), (-10.0, 5.0, 100.0))
    pet = np.ones(grid.shape, np.float32)
    probability = np.zeros(grid.shape, np.float32)
    lesion_map = np.zeros(grid.shape, np.uint16)
    lesion_map[4:9, 3:10, 8:16] = 1  # k 4..8, j 3..9, i 8..15: 280 voxels
    pet[4:9, 3:10, 8:16] = 4.0
    probability[4:9, 3:10, 8:16] = 0.8
    pet[6, 6, 12] = 10.0
    probability[6, 6, 12] = 0.95
    lesion_map[15, 15, 15] = 2
    pet[15, 15, 15] = 3.0
    probability[15, 15, 15] = 0.55
    return grid, lesion_map, pet, probability


def test_suv_peak_of_a_lesion_smaller_than_the_peak_sphere_is_flagged():
    grid, lesion_map, pet, probability = _known_lesions()
    large, small = measure_lesions(lesion_map, 2, pet, grid, probability)
    sphere_voxels = len(sphere_offsets(grid.spacing, PEAK_SPHERE_RADIUS_MM))
    assert small.voxels == 1 < sphere_voxels <= large.voxels == 280
    # The one-voxel lesion's sphere is mostly background: SUVpeak below SUVmean, and said so.
    assert small.suv_peak == pytest.approx((3.0 + (sphere_voxels - 1) * 1.0) / sphere_voxels)
    assert small.suv_peak < small.suv_mean == pytest.approx(3.0)
    assert small.suv_peak_sphere_exceeds_lesion is True
    assert large.suv_peak_sphere_exceeds_lesion is False


def test_lesion_score_is_the_highest_probability_and_its_mean_is_given_too():
    grid, lesion_map, pet, probability = _known_lesions()
    large, small = measure_lesions(lesion_map, 2, pet, grid, probability)
    assert large.score == pytest.approx(0.95) and large.probability_mean == pytest.approx((279 * 0.8 + 0.95) / 280)
    assert small.score == pytest.approx(0.55) and small.probability_mean == pytest.approx(0.55)
    # Measured without a model (the module's lesion table): no probability, none invented.
    plain = measure_lesions(lesion_map, 2, pet, grid)
    assert [(m.score, m.probability_mean) for m in plain] == [(None, None), (None, None)]


def test_lesion_table_has_identity_units_both_coordinate_systems_and_ct_slices():
    grid, lesion_map, pet, probability = _known_lesions()
    lesions = measure_lesions(lesion_map, 2, pet, grid, probability)
    # A CT with 1 mm pixels on the PET's slices, numbered as scanners do: 1 = most superior.
    ct_grid = Grid((40, 40, 20), (1.0, 1.0, 3.0), (-10.5, 4.5, 100.0))
    _, boxes = lesions_on_ct(lesion_map, grid, ct_grid)
    instance_numbers = [20 - k for k in range(20)]
    identity = StudyIdentity("PAT_1_0123456789_2008-04-12", "PAT 1", "1.2.3", "20080412", "1.2.3.4")
    header, rows = _rows(lesion_table_csv(lesions, identity, lesion_slices_on_ct(boxes, ct_grid, instance_numbers)))
    assert header == EXPECTED_COLUMNS == list(LESION_COLUMNS)
    large, small = lesions
    assert rows[0] == {
        "case_id": "PAT_1_0123456789_2008-04-12",
        "patient_id": "PAT 1",
        "study_instance_uid": "1.2.3",
        "study_date": "2008-04-12",
        "pet_series_instance_uid": "1.2.3.4",
        "lesion": "1",
        "pet_voxels": "280",
        "mtv_ml": "3.3600",  # 280 x 12 mm^3
        "suvbw_max_g_ml": "10.0000",
        "suvbw_mean_g_ml": "4.0214",  # (279 x 4 + 10) / 280
        "suvbw_peak_g_ml": f"{large.suv_peak:.4f}",
        "suvbw_peak_sphere_exceeds_lesion": "false",
        "tlg_g": "13.5120",  # 4.0214 g/mL x 3.36 mL
        "probability_max": "0.9500",
        "probability_mean": "0.8005",
        "centroid_lps_x_mm": "13.00",  # i 8..15 -> -10 + 11.5 x 2
        "centroid_lps_y_mm": "17.00",  # j 3..9 -> 5 + 6 x 2
        "centroid_lps_z_mm": "118.00",  # k 4..8 -> 100 + 6 x 3
        "centroid_ras_x_mm": "-13.00",
        "centroid_ras_y_mm": "-17.00",
        "centroid_ras_z_mm": "118.00",
        "ct_instance_number_min": "12",  # CT slices 4..8 carry InstanceNumbers 16..12
        "ct_instance_number_max": "16",
        "ct_slice_z_min_mm": "112.00",
        "ct_slice_z_max_mm": "124.00",
        "pet_i_min": "8",
        "pet_i_max": "15",
        "pet_j_min": "3",
        "pet_j_max": "9",
        "pet_k_min": "4",
        "pet_k_max": "8",
    }
    assert {key: rows[1][key] for key in IDENTITY_COLUMNS} == {key: rows[0][key] for key in IDENTITY_COLUMNS}
    assert rows[1]["lesion"] == "2" and rows[1]["suvbw_peak_sphere_exceeds_lesion"] == "true"
    assert float(rows[1]["suvbw_peak_g_ml"]) < float(rows[1]["suvbw_mean_g_ml"]) == pytest.approx(small.suv_mean)
    assert (rows[1]["ct_instance_number_min"], rows[1]["ct_instance_number_max"]) == ("5", "5")
    assert (rows[1]["ct_slice_z_min_mm"], rows[1]["ct_slice_z_max_mm"]) == ("145.00", "145.00")
    # A CT without one InstanceNumber per slice (multi-frame, resampled): numbers empty, z still given.
    _, rows = _rows(lesion_table_csv(lesions, identity, lesion_slices_on_ct(boxes, ct_grid, [])))
    assert rows[0]["ct_instance_number_min"] == rows[0]["ct_instance_number_max"] == ""
    assert rows[0]["ct_slice_z_min_mm"] == "112.00"
    # A lesion outside the CT's field of view, and a table without a model's probability: empty, not 0.
    plain = measure_lesions(lesion_map, 2, pet, grid)
    _, rows = _rows(lesion_table_csv(plain, identity, {1: LesionSlices((112.0, 124.0), (12, 16))}))
    assert rows[1]["ct_slice_z_min_mm"] == rows[1]["ct_instance_number_min"] == ""
    assert rows[0]["probability_max"] == rows[0]["probability_mean"] == ""


def test_evaluate_json_prints_json_alone_on_stdout(tmp_path, capsys):
    grid = Grid((8, 8, 6), (4.0, 4.0, 3.0), (0.0, 0.0, 0.0))
    label = np.zeros(grid.shape, np.uint8)
    label[2:4, 2:5, 2:5] = 1
    for folder in ("pred", "ref"):
        (tmp_path / folder).mkdir()
        sitk.WriteImage(grid.to_sitk(label), str(tmp_path / folder / "case_a.nii.gz"))
    sitk.WriteImage(grid.to_sitk(label), str(tmp_path / "ref" / "case_b.nii.gz"))  # no prediction: a note
    pred, ref = str(tmp_path / "pred"), str(tmp_path / "ref")
    assert main(["evaluate", "--pred", pred, "--ref", ref, "--json", "--partial"]) == 0
    captured = capsys.readouterr()
    result = json.loads(captured.out)  # `| jq` works: nothing else on stdout
    assert result["dice"] == pytest.approx(1.0) and [case["name"] for case in result["per_case"]] == ["case_a.nii.gz"]
    assert result["references_not_evaluated"] == [str(tmp_path / "ref" / "case_b.nii.gz")]
    # The table and the note are still there for the person at the terminal, on stderr.
    assert "mean over 1 studies" in captured.err and "1 reference case(s) NOT evaluated" in captured.err
    # Without --json the table stays on stdout.
    assert main(["evaluate", "--pred", pred, "--ref", ref, "--partial"]) == 0
    assert "mean over 1 studies" in capsys.readouterr().out


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_synth_names_its_truth_with_the_case_id_predict_gives_the_study(tmp_path, flavour):
    from PETCTLesionsLib.dicom.index import scan_paths
    from PETCTLesionsLib.study import describe_scan

    (case,) = generate_dataset(tmp_path, cases=1, seed=6, size="small", flavour=flavour, n_lesions=1)
    (study,) = describe_scan(scan_paths([case.study_dir]))
    expected = nnunet.case_id_for_study(study.patient_id, study.study_uid, study.study_date)
    assert case.case_id == expected
    assert (tmp_path / "truth" / f"{expected}.json").is_file()
    assert nnunet.list_cases(tmp_path / "nnUNet_raw" / DATASET_FOLDER) == [expected]


# ------------------------------------------------------------------ the README's route, with the model


@pytest.fixture(scope="module", params=FLAVOURS)
def predicted(request, tmp_path_factory):
    """A small generated study of each flavour, and predict's results on its DICOM."""
    flavour = request.param
    out = tmp_path_factory.mktemp(f"route-{flavour}")
    (case,) = generate_dataset(out / "data", cases=1, seed=19, size="small", flavour=flavour, n_lesions=2)
    dicom = out / "data" / COLLECTION_FOLDERS[flavour]
    assert main(["predict", str(dicom), "--out", str(out / "pred"), "--device", "cpu", "--no-pictures"]) == 0
    return case, out


@pytest.mark.torch
def test_evaluate_pairs_predict_results_with_synth_truth(predicted, capsys):
    case, out = predicted
    truth = json.loads((out / "data" / "truth" / f"{case.case_id}.json").read_text())
    capsys.readouterr()
    arguments = [
        "evaluate",
        "--pred",
        str(out / "pred" / "nnUNet_raw" / PREDICTED_DATASET / "labelsTr"),
        "--ref",
        str(out / "data" / "nnUNet_raw" / DATASET_FOLDER / "labelsTr"),
        "--json",
    ]
    assert main(arguments) == 0
    result = json.loads(capsys.readouterr().out)
    (scored,) = result["per_case"]
    assert scored["name"] == f"{case.case_id}.nii.gz"
    assert scored["reference_lesions"] == len(truth["lesions"]) == 2
    assert scored["detected_lesions"] >= 1 and scored["dice"] > 0.5
    assert result["references_not_evaluated"] == [] and result["predictions_not_evaluated"] == []


@pytest.mark.torch
def test_predicted_lesion_table_names_the_study_and_its_ct_slices(predicted):
    case, out = predicted
    header, rows = _rows((out / "pred" / case.case_id / "lesions.csv").read_text())
    assert header == EXPECTED_COLUMNS and rows
    pet = pydicom.dcmread(case.pet.paths[0], stop_before_pixels=True)
    study_date = f"{pet.StudyDate[:4]}-{pet.StudyDate[4:6]}-{pet.StudyDate[6:]}"
    identity = [case.case_id, case.patient_id, pet.StudyInstanceUID, study_date, case.pet.series_uid]
    assert all([row[key] for key in IDENTITY_COLUMNS] == identity for row in rows)
    # The CT slices as a viewer lists them: z (ImagePositionPatient) -> InstanceNumber, read from the files.
    ct = [pydicom.dcmread(path, stop_before_pixels=True) for path in case.ct.paths]
    number_at_z = {round(float(ds.ImagePositionPatient[2]), 2): int(ds.InstanceNumber) for ds in ct}
    for row in rows:
        low, high = float(row["ct_slice_z_min_mm"]), float(row["ct_slice_z_max_mm"])
        assert low <= high and low in number_at_z and high in number_at_z
        crossed = [number for z, number in number_at_z.items() if low <= z <= high]
        assert (int(row["ct_instance_number_min"]), int(row["ct_instance_number_max"])) == (min(crossed), max(crossed))
        assert low - 5.0 <= float(row["centroid_lps_z_mm"]) <= high + 5.0
        lps = [float(row[f"centroid_lps_{axis}_mm"]) for axis in "xyz"]
        ras = [float(row[f"centroid_ras_{axis}_mm"]) for axis in "xyz"]
        assert ras == [-lps[0], -lps[1], lps[2]]
        assert 0.0 < float(row["probability_mean"]) <= float(row["probability_max"]) <= 1.0
        assert row["suvbw_peak_sphere_exceeds_lesion"] in ("true", "false")


@pytest.mark.torch
def test_nnunet_dataset_lesion_table_has_the_case_id_and_no_dicom_identity(predicted, tmp_path, monkeypatch):
    """An nnU-Net case has no DICOM: the case id names its rows, the DICOM columns are empty."""
    from PETCTLesionsLib import predict as predict_module

    case, out = predicted
    dataset = out / "data" / "nnUNet_raw" / DATASET_FOLDER
    truth = sitk.GetArrayFromImage(nifti.read_nifti(case.nnunet_files["label"])).astype(np.float32)

    def known_lesions(model, ct, pet, grid, threshold=None, min_volume_ml=0.0, **_):
        lesion_map, count = lesions_from_probability(truth, 0.5, 0.0, grid.voxel_volume_ml)
        return Detection(grid, truth, lesion_map, measure_lesions(lesion_map, count, pet, grid, truth), 0.5, 0.0)

    monkeypatch.setattr(predict_module, "detect_lesions", known_lesions)
    assert main(["predict", str(dataset), "--out", str(tmp_path / "pred"), "--device", "cpu"]) == 0
    header, rows = _rows((tmp_path / "pred" / f"{case.case_id}_lesions.csv").read_text())
    assert header == EXPECTED_COLUMNS and len(rows) == 2
    grid = Grid.from_sitk(nifti.read_nifti(case.nnunet_files["pet"]))
    for row in rows:
        assert [row[key] for key in IDENTITY_COLUMNS] == [case.case_id, "", "", "", ""]
        assert row["ct_instance_number_min"] == row["ct_instance_number_max"] == ""
        # The case's CT lies on the PET grid: its slices are the grid's.
        k0, k1 = int(row["pet_k_min"]), int(row["pet_k_max"])
        z = sorted(float(grid.index_to_lps([0, 0, k])[2]) for k in (k0, k1))
        assert (float(row["ct_slice_z_min_mm"]), float(row["ct_slice_z_max_mm"])) == pytest.approx(z, abs=0.005)
        assert row["probability_max"] == row["probability_mean"] == "1.0000"
