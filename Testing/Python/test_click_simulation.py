"""Simulated correction clicks (issue 21): the corrective and autoPET IV protocols on hand-made volumes, with
the clicks where they must land, and ``simulate-clicks`` on a small generated study (DICOM and nnU-Net)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from PETCTLesionsLib.cli import RULE_DEFAULT_VALUES, main
from PETCTLesionsLib.errors import InputError
from PETCTLesionsLib.geometry import Grid
from PETCTLesionsLib.interactive import click_simulation as cs
from PETCTLesionsLib.interactive.prompts import FIXED_SUV, RULE_KINDS, GrowthRule, PromptOptions, PromptVolumes
from PETCTLesionsLib.synthetic import synth

GRID = Grid(size=(24, 20, 16), spacing=(4.0, 4.0, 3.0), origin=(-40.0, -30.0, -20.0))


def _ball(grid: Grid, centre_kji, radius_mm: float) -> np.ndarray:
    """The voxels whose centres lie within ``radius_mm`` of voxel ``centre_kji``'s centre."""
    k, j, i = np.indices(grid.shape)
    sk, sj, si = grid.spacing[2], grid.spacing[1], grid.spacing[0]
    c = centre_kji
    return ((k - c[0]) * sk) ** 2 + ((j - c[1]) * sj) ** 2 + ((i - c[2]) * si) ** 2 <= radius_mm**2


def _farthest_by_brute_force(component: np.ndarray, spacing_xyz) -> list:
    """Every voxel of ``component`` whose distance (mm) to the nearest voxel of the volume outside it is the
    largest, in [k, j, i] order."""
    scale = np.array(spacing_xyz[::-1], float)
    inside = np.argwhere(component) * scale
    outside = np.argwhere(~component) * scale
    nearest = np.array([((outside - voxel) ** 2).sum(axis=1).min() for voxel in inside])
    return [tuple(int(v) for v in voxel) for voxel in np.argwhere(component)[nearest == nearest.max()]]


# -------------------------------------------------------------------------------------------- corrective


def test_a_corrective_click_lands_on_the_missed_components_voxel_farthest_from_its_border():
    # An irregular missed component: a ball with a bar sticking out of it, on an anisotropic grid (mm count).
    missed = _ball(GRID, (8, 10, 11), 9.0)
    missed[8, 10, 11:20] = True
    truth = missed.copy()
    truth[2:4, 2:4, 2:4] = True  # a smaller reference lesion, found
    lesion_map = np.zeros(GRID.shape, np.uint16)
    lesion_map[2:4, 2:4, 2:4] = 1

    (click,) = cs.corrective_clicks(truth, lesion_map, GRID)

    assert click.kind == cs.POSITIVE
    farthest = _farthest_by_brute_force(missed, GRID.spacing)
    assert click.voxel_kji == farthest[0]  # the farthest from the border; ties: the first in [k, j, i] order
    assert click.target == f"missed lesion, {missed.sum() * GRID.voxel_volume_ml:.2f} mL"
    i, j, k = GRID.lps_to_index(click.point_lps)
    assert (round(k), round(j), round(i)) == click.voxel_kji


def test_the_missed_part_of_an_under_segmented_lesion_is_named_as_such():
    truth = _ball(GRID, (8, 10, 12), 12.0)
    lesion_map = np.zeros(GRID.shape, np.uint16)
    lesion_map[truth & (np.indices(GRID.shape)[2] < 12)] = 4  # the lesion's half on the low-i side found

    (click,) = cs.corrective_clicks(truth, lesion_map, GRID)

    missed = truth & (lesion_map == 0)
    assert missed[click.voxel_kji]
    assert click.target == f"missed part of lesion 4, {missed.sum() * GRID.voxel_volume_ml:.2f} mL"


def _two_lesions_and_a_false_positive():
    """A PET (background SUV 1) with a found lesion, a larger missed one and a smaller false positive."""
    pet = np.ones(GRID.shape, np.float32)
    found, missed, false_positive = (
        _ball(GRID, (4, 5, 5), 6.0),
        _ball(GRID, (10, 12, 15), 8.5),
        _ball(GRID, (8, 4, 18), 4.5),
    )
    pet[found], pet[missed], pet[false_positive] = 10.0, 8.0, 6.0
    truth = found | missed
    lesion_map = np.zeros(GRID.shape, np.uint16)
    lesion_map[found], lesion_map[false_positive] = 1, 2
    return PromptVolumes(pet, GRID), truth, lesion_map, missed, false_positive


def test_corrective_steps_add_the_larger_missed_lesion_first_then_remove_the_false_positive():
    volumes, truth, lesion_map, missed, false_positive = _two_lesions_and_a_false_positive()
    before = lesion_map.copy()

    simulation = cs.simulate_clicks(volumes, truth, lesion_map, clicks=3)

    assert np.array_equal(lesion_map, before)  # the caller's map is not modified
    assert [step.number for step in simulation.steps] == [0, 1, 2, 3]
    start, first, second, third = simulation.steps
    assert (start.scores.detected_lesions, start.scores.reference_lesions, start.scores.false_positive_lesions) == (
        1,
        2,
        1,
    )
    (added,) = first.clicks
    assert added.kind == cs.POSITIVE and missed[added.voxel_kji]
    assert first.scores.detected_lesions == 2 and first.scores.fnv_ml == 0.0
    (removed,) = second.clicks
    assert removed.kind == cs.NEGATIVE and false_positive[removed.voxel_kji]
    assert removed.target.startswith("false positive")
    assert second.scores.false_positive_lesions == 0 and second.scores.fpv_ml == 0.0
    assert second.scores.dice == pytest.approx(1.0)
    assert third.clicks == ()  # nothing left to correct: no click, nothing changes
    assert third.scores == second.scores
    assert all(click.seconds > 0 and click.note for step in simulation.steps[1:3] for click in step.clicks)
    assert simulation.auc() == pytest.approx(cs.area_under_steps(simulation.values("dice")))
    assert simulation.auc() > start.scores.dice


def test_a_click_the_engine_could_not_use_is_not_made_again():
    pet = np.ones(GRID.shape, np.float32)  # nothing reaches SUV 2.5: a positive click adds nothing
    truth = _ball(GRID, (8, 10, 12), 6.0)
    options = PromptOptions(rule=GrowthRule(FIXED_SUV, 2.5))

    simulation = cs.simulate_clicks(
        PromptVolumes(pet, GRID), truth, np.zeros(GRID.shape, np.uint16), 2, options=options
    )

    (tried,) = simulation.steps[1].clicks
    assert tried.kind == cs.POSITIVE and truth[tried.voxel_kji]
    assert simulation.steps[2].clicks == ()
    assert [step.scores.detected_lesions for step in simulation.steps] == [0, 0, 0]


# -------------------------------------------------------------------------------------------- autopet4

BIG_GRID = Grid(size=(40, 40, 30), spacing=(4.0, 4.0, 3.0), origin=(0.0, 0.0, 0.0))


def _autopet4_case():
    """Background SUV 1 with two small hot boxes outside a hot reference lesion: fewer hot voxels than 0.25%
    of the non-tumour voxels, so the 99.75th percentile is the background's SUV and the boxes stand above it."""
    pet = np.ones(BIG_GRID.shape, np.float32)
    truth = _ball(BIG_GRID, (15, 20, 20), 7.0)
    pet[truth] = 10.0
    pet[3:6, 5:8, 5:8] = 5.0  # 27 voxels, centre (4, 6, 6)
    pet[21:24, 30:33, 30:33] = 6.0  # 27 voxels, centre (22, 31, 31)
    return pet, truth


def test_autopet4_background_clicks_are_at_the_centres_of_the_regions_above_the_99_75th_percentile():
    pet, truth = _autopet4_case()

    assert cs.background_threshold(pet, truth) == 1.0
    tumour, background = cs.autopet4_clicks(truth, pet, BIG_GRID, budget=2)

    assert {click.voxel_kji for click in background} == {(4, 6, 6), (22, 31, 31)}
    assert all(click.kind == cs.NEGATIVE and click.target == "background centre" for click in background)
    assert not any(click.snaps for click in background)  # a background click marks a voxel, it aims at no lesion
    # One reference lesion: its centre, then edge clicks (voxels with a face neighbour outside it) fill in.
    assert tumour[0].voxel_kji == (15, 20, 20) and tumour[0].target == "tumour centre"
    assert tumour[1].target == "tumour edge" and truth[tumour[1].voxel_kji]
    k, j, i = tumour[1].voxel_kji
    neighbours = [(k + 1, j, i), (k - 1, j, i), (k, j + 1, i), (k, j - 1, i), (k, j, i + 1), (k, j, i - 1)]
    assert not all(truth[n] for n in neighbours)


def test_autopet4_fills_the_budget_with_edge_clicks_and_draws_the_same_clicks_every_time():
    pet, truth = _autopet4_case()

    tumour, background = cs.autopet4_clicks(truth, pet, BIG_GRID, budget=5)

    assert [click.target for click in tumour] == ["tumour centre"] + ["tumour edge"] * 4
    assert [click.target for click in background] == ["background centre"] * 2 + ["background edge"] * 3
    boxes = pet == 5.0
    boxes |= pet == 6.0
    assert all(boxes[click.voxel_kji] and click.voxel_kji not in {(4, 6, 6), (22, 31, 31)} for click in background[2:])
    assert cs.autopet4_clicks(truth, pet, BIG_GRID, budget=5) == (tumour, background)


def test_autopet4_steps_make_one_tumour_and_one_background_click_each():
    pet, truth = _autopet4_case()
    lesion_map = np.zeros(BIG_GRID.shape, np.uint16)
    lesion_map[3:6, 5:8, 5:8] = 1  # a false positive on the first hot box

    simulation = cs.simulate_clicks(PromptVolumes(pet, BIG_GRID), truth, lesion_map, 2, protocol=cs.AUTOPET4)

    assert simulation.background_threshold_suv == 1.0
    assert [[click.kind for click in step.clicks] for step in simulation.steps] == [
        [],
        [cs.POSITIVE, cs.NEGATIVE],
        [cs.POSITIVE, cs.NEGATIVE],
    ]
    final = simulation.steps[-1].scores
    assert (final.detected_lesions, final.false_positive_lesions) == (1, 0)  # the lesion added, the box removed
    assert final.dice > simulation.steps[0].scores.dice


# -------------------------------------------------------------------------------------------- the numbers


def test_the_auc_is_the_trapezoid_over_the_steps_divided_by_their_number():
    assert cs.area_under_steps([0.5, 1.0, 1.0]) == pytest.approx((0.25 + 1.0 + 0.5) / 2)
    assert cs.area_under_steps([0.8] * 11) == pytest.approx(0.8)
    assert math.isnan(cs.area_under_steps([math.nan, 1.0]))
    assert math.isnan(cs.area_under_steps([0.7]))


def test_the_mean_curve_averages_dice_and_pools_lesions_over_studies():
    volumes, truth, lesion_map, _, _ = _two_lesions_and_a_false_positive()
    one = cs.simulate_clicks(volumes, truth, lesion_map, 2)
    other = cs.simulate_clicks(volumes, truth, np.zeros_like(lesion_map), 2)

    curve = cs.mean_curve([one, other])

    assert [row["step"] for row in curve] == [0, 1, 2]
    for row, a, b in zip(curve, one.steps, other.steps):
        assert row["dice"] == pytest.approx((a.scores.dice + b.scores.dice) / 2)
        detected = a.scores.detected_lesions + b.scores.detected_lesions
        assert row["lesion_sensitivity"] == pytest.approx(detected / 4)
    assert curve[0]["false_positive_lesions_per_case"] == 0.5
    assert cs.mean_auc([one, other]) == pytest.approx((one.auc() + other.auc()) / 2)


def test_a_reference_is_binary_or_one_number_per_lesion():
    labels = np.array([[[0, 1, 2, 7]]], np.uint16)
    assert cs.reference_mask(labels, "ref").tolist() == [[[False, True, True, True]]]
    for bad in (np.array([0.0, 0.5]), np.array([0, -1]), np.array([0.0, np.nan])):
        with pytest.raises(InputError, match="ref.nii.gz: 1 voxel"):
            cs.reference_mask(bad, "ref.nii.gz")


def test_an_unknown_protocol_or_no_click_is_refused():
    volumes, truth, lesion_map, _, _ = _two_lesions_and_a_false_positive()
    with pytest.raises(InputError, match="unknown click protocol"):
        cs.simulate_clicks(volumes, truth, lesion_map, 2, protocol="autopet5")
    with pytest.raises(InputError, match=">= 1"):
        cs.simulate_clicks(volumes, truth, lesion_map, 0)


def test_every_rule_the_command_offers_is_a_rule_of_the_prompt_engine_with_a_usable_default():
    assert set(RULE_DEFAULT_VALUES) < set(RULE_KINDS)
    for kind, value in RULE_DEFAULT_VALUES.items():
        GrowthRule(kind, value)  # refuses a value out of its range


# -------------------------------------------------------------------------------------------- simulate-clicks


@pytest.fixture(scope="module")
def lung_study(tmp_path_factory):
    """A small generated chest study with 3 lesions, as DICOM and as an nnU-Net dataset with its label."""
    root = tmp_path_factory.mktemp("clicks")
    (case,) = synth.generate_dataset(root, cases=1, seed=1, size="small", flavour="lung", n_lesions=3)
    return case


def _simulate(capsys, *arguments) -> dict:
    status = main(["simulate-clicks", *map(str, arguments), "--json"])
    out = capsys.readouterr().out
    assert status == 0
    return json.loads(out)


@pytest.mark.torch
def test_simulate_clicks_corrects_the_models_lesions_of_a_dicom_study(lung_study, capsys):
    labels = lung_study.nnunet_files["label"].parent
    result = _simulate(capsys, lung_study.study_dir, "--ref", labels, "--clicks", 3)

    assert (result["protocol"], result["clicks"], result["rule"]) == ("corrective", 3, "41% of SUVmax")
    (study,) = result["studies"]
    assert study["name"] == lung_study.case_id and result["not_simulated"] == []
    steps = study["steps"]
    assert [step["step"] for step in steps] == [0, 1, 2, 3]
    assert steps[0]["clicks"] == [] and steps[0]["reference_lesions"] == 3
    assert steps[-1]["dice"] >= steps[0]["dice"]
    assert steps[-1]["lesion_sensitivity"] >= steps[0]["lesion_sensitivity"]
    assert steps[-1]["fnv_ml"] <= steps[0]["fnv_ml"]
    assert all(len(step["clicks"]) <= 1 for step in steps)
    assert study["auc"]["dice"] == pytest.approx(cs.area_under_steps([step["dice"] for step in steps]))
    assert [row["dice"] for row in result["mean"]["steps"]] == pytest.approx([step["dice"] for step in steps])
    assert result["mean"]["auc"]["dice"] == pytest.approx(study["auc"]["dice"])


@pytest.mark.torch
def test_simulate_clicks_runs_autopet4_on_an_nnunet_dataset(lung_study, capsys):
    label = lung_study.nnunet_files["label"]
    dataset = label.parent.parent
    result = _simulate(capsys, dataset, "--ref", label, "--clicks", 2, "--protocol", "autopet4")

    (study,) = result["studies"]
    steps = study["steps"]
    assert len(steps) == 3 and study["background_threshold_suv"] > 0
    truth = sitk.GetArrayFromImage(sitk.ReadImage(str(label))) > 0
    for step in steps[1:]:
        tumour, background = step["clicks"]
        assert (tumour["kind"], tumour["target"]) == ("positive", "tumour centre")
        assert (background["kind"], background["target"]) == ("negative", "background centre")
        assert truth[tuple(tumour["voxel_kji"])] and not truth[tuple(background["voxel_kji"])]
    assert steps[-1]["dice"] >= steps[0]["dice"]


@pytest.mark.torch
def test_simulate_clicks_refuses_a_study_without_a_reference_before_running_the_model(
    lung_study, tmp_path, capsys, monkeypatch
):
    from PETCTLesionsLib.model import nnunet_model

    monkeypatch.setattr(nnunet_model, "load_detection_model", lambda *a, **k: pytest.fail("the model was loaded"))
    (tmp_path / "other.nii.gz").write_bytes(Path(lung_study.nnunet_files["label"]).read_bytes())

    status = main(["simulate-clicks", str(lung_study.study_dir), "--ref", str(tmp_path)])

    err = capsys.readouterr().err
    assert status == 2
    assert f"missing {lung_study.case_id}.nii.gz" in err


@pytest.mark.torch
def test_a_reference_off_the_pet_grid_leaves_its_study_not_simulated_with_exit_1(lung_study, tmp_path, capsys):
    label = lung_study.nnunet_files["label"]
    shifted = sitk.ReadImage(str(label))
    shifted.SetOrigin([value + 2.0 for value in shifted.GetOrigin()])
    sitk.WriteImage(shifted, str(tmp_path / label.name))

    status = main(["simulate-clicks", str(label.parent.parent), "--ref", str(tmp_path), "--clicks", "1"])

    out = capsys.readouterr().out
    assert status == 1
    assert f"{lung_study.case_id}: NOT simulated: {tmp_path / label.name}: grid" in out
    assert "the reference must lie on the PET grid" in out
    assert "no study simulated" in out


@pytest.mark.torch
def test_a_rule_value_out_of_its_range_is_refused_with_exit_2(lung_study, capsys):
    labels = lung_study.nnunet_files["label"].parent
    arguments = ["simulate-clicks", str(lung_study.study_dir), "--ref", str(labels), "--rule-value", "1.5"]

    assert main(arguments) == 2
    err = capsys.readouterr().err
    assert err.startswith("petct-lesions simulate-clicks: error: growth rule percent_of_max") and "1.5" in err
