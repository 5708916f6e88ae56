"""The false-positive filter: candidate features on hand-built volumes, the file format and its refusals,
fitting, and detection applying the filter a model manifest names."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from PETCTLesionsLib.errors import InputError, ModelFileError, OutputExistsError
from PETCTLesionsLib.geometry import Grid
from PETCTLesionsLib.model.false_positive_filter import (
    FEATURE_NAMES,
    FalsePositiveFilter,
    apply_filter,
    candidate_features,
    describe_removed,
    filter_from_json,
    read_filter,
)
from PETCTLesionsLib.training.false_positive_filter import CandidateSet, FitOptions, fit_filter, write_filter

F = {name: n for n, name in enumerate(FEATURE_NAMES)}
GRID = Grid(size=(60, 40, 30), spacing=(4.0, 4.0, 3.0), origin=(-118.0, -78.0, 0.0))


def _body():
    """CT: a soft-tissue body (40 HU) centred on column 29.5, a bone block, air outside; PET: SUV 1 in the body."""
    ct = np.full(GRID.shape, -1000.0, np.float32)
    ct[:, 5:35, 5:55] = 40.0
    ct[10:20, 25:33, 27:33] = 700.0  # a vertebra-like bone block on the midline
    pet = np.where(ct > -500, 1.0, 0.0).astype(np.float32)
    return ct, pet


def _cube(lesion_map, number, k, j, i, half=1):
    lesion_map[k - half : k + half + 1, j - half : j + half + 1, i - half : i + half + 1] = number


def test_features_measure_size_uptake_contrast_ct_and_mirror_image():
    ct, pet = _body()
    lesion_map = np.zeros(GRID.shape, np.uint16)
    _cube(lesion_map, 1, 15, 15, 15)  # 27 voxels in soft tissue, left of the midline, SUV 8
    pet[lesion_map == 1] = 8.0
    pet[15, 15, 15] = 9.0  # its hottest voxel, 14.5 columns left of the midline (column 29.5)
    pet[15, 15, 44] = 6.0  # the mirror image across the midline is hot too
    _cube(lesion_map, 2, 15, 29, 30, half=0)  # one voxel in the bone block, SUV 3, nothing mirrored
    pet[15, 29, 30] = 3.0
    probability = np.where(lesion_map > 0, 0.9, 0.0).astype(np.float32)
    rows = candidate_features(lesion_map, 2, pet, ct, probability, GRID)
    soft, bone = rows
    assert soft[F["log_volume_ml"]] == pytest.approx(math.log(27 * GRID.voxel_volume_ml + 0.01))
    assert soft[F["log_suv_max"]] == pytest.approx(math.log(9.1))
    assert soft[F["suv_mean_over_max"]] == pytest.approx((26 * 8.0 + 9.0) / 27 / 9.0)
    assert soft[F["log_contrast"]] == pytest.approx(math.log(9.1 / 1.1))  # the shell is body at SUV 1
    assert soft[F["inside_soft"]] == 1.0 and soft[F["inside_bone"]] == 0.0
    assert soft[F["ct_mean_inside"]] == pytest.approx(0.04)
    assert soft[F["mirror_over_max"]] == pytest.approx(6.0 / 9.0)
    assert soft[F["midline_offset"]] == pytest.approx(abs(15 - 29.5) * 4.0 / 100.0)
    assert soft[F["log_elongation"]] == pytest.approx(math.log(4.0 / 3.0), abs=1e-6)  # a cube of 4x4x3 mm voxels
    assert bone[F["inside_bone"]] == 1.0 and bone[F["ct_mean_inside"]] == pytest.approx(0.7)
    assert bone[F["mirror_over_max"]] == pytest.approx(1.0)  # on the midline: its own mirror image
    assert bone[F["probability_max"]] == pytest.approx(0.9)
    # Depth: in-slice distance to the body's outermost voxel centres (column 5 and row 34 here).
    assert soft[F["depth"]] == pytest.approx(0.40) and bone[F["depth"]] == pytest.approx(0.20)
    assert soft[F["neighbour_candidates"]] == 0.0 and soft[F["mirror_candidate"]] == 0.0


def test_group_features_count_neighbours_and_find_a_candidate_at_the_mirror_image():
    ct, pet = _body()
    lesion_map = np.zeros(GRID.shape, np.uint16)
    _cube(lesion_map, 1, 15, 15, 15, half=0)  # 14.5 columns left of the midline
    _cube(lesion_map, 2, 15, 15, 44, half=0)  # its mirror image: a symmetric pair (tonsils, brown fat)
    _cube(lesion_map, 3, 15, 20, 19, half=0)  # 25.6 mm from candidate 1, no partner
    _cube(lesion_map, 4, 15, 29, 30, half=0)  # on the midline: never a pair
    rows = candidate_features(lesion_map, 4, pet, ct, np.zeros(GRID.shape, np.float32), GRID)
    assert rows[:, F["mirror_candidate"]].tolist() == [1.0, 1.0, 0.0, 0.0]
    assert rows[:, F["neighbour_candidates"]].tolist() == pytest.approx([math.log(2), 0.0, math.log(2), 0.0])


def test_a_candidate_number_absent_from_the_map_gets_no_row_and_is_not_kept():
    ct, pet = _body()
    lesion_map = np.zeros(GRID.shape, np.uint16)
    _cube(lesion_map, 2, 15, 15, 15)
    rows = candidate_features(lesion_map, 2, pet, ct, np.zeros(GRID.shape, np.float32), GRID)
    assert np.isnan(rows[0]).all() and np.isfinite(rows[1]).all()
    keep_all = _constant_filter(logit=5.0, cut=0.5)
    new_map, kept, decision = apply_filter(keep_all, lesion_map, 2, pet, ct, np.zeros(GRID.shape, np.float32), GRID)
    assert kept == 1 and decision.removed == [1]
    assert int((new_map == 1).sum()) == 27 and new_map.max() == 1


def _constant_filter(logit: float, cut: float) -> FalsePositiveFilter:
    n = len(FEATURE_NAMES)
    return FalsePositiveFilter(np.zeros(n), np.ones(n), np.zeros((0, n)), np.zeros(0), np.zeros(n), logit, cut)


def _linear_filter(feature: str, weight: float, bias: float, cut: float) -> FalsePositiveFilter:
    found = _constant_filter(bias, cut)
    found.output_weights[F[feature]] = weight
    return found


def test_apply_filter_removes_rejected_candidates_and_renumbers_the_rest_in_order():
    ct, pet = _body()
    lesion_map = np.zeros(GRID.shape, np.uint16)
    _cube(lesion_map, 1, 15, 15, 15, half=2)  # 125 voxels, soft tissue
    _cube(lesion_map, 2, 15, 29, 30, half=1)  # 27 voxels, in bone: rejected
    _cube(lesion_map, 3, 5, 15, 45, half=0)  # 1 voxel, soft tissue
    no_bone = _linear_filter("inside_bone", -20.0, 10.0, cut=0.5)
    probability = np.where(lesion_map > 0, 0.8, 0.0).astype(np.float32)
    new_map, kept, decision = apply_filter(no_bone, lesion_map, 3, pet, ct, probability, GRID)
    assert kept == 2 and decision.removed == [2]
    assert [int((new_map == n).sum()) for n in (1, 2, 3)] == [125, 1, 0]
    sizes = np.bincount(lesion_map.ravel())[1:] * GRID.voxel_volume_ml
    assert describe_removed(decision, sizes).startswith(
        f"false-positive filter: removed 1 of 3 candidate(s) with p(lesion) < 0.50: {sizes[1]:.2f} mL (p=0.00)"
    )


def test_the_filter_file_round_trips_and_bad_files_are_refused_by_name(tmp_path: Path):
    found = _linear_filter("log_contrast", 2.0, -1.0, cut=0.3)
    found.hidden_weights = np.ones((2, len(FEATURE_NAMES))) * 0.1
    found.hidden_bias = np.array([0.1, -0.2])
    found.output_weights = np.array([1.5, -0.5])
    path = write_filter(found, tmp_path / "filter.json", {"trained_on": "test"})
    again = read_filter(path)
    x = np.random.default_rng(0).normal(size=(5, len(FEATURE_NAMES)))
    assert np.array_equal(again.probability(x), found.probability(x))
    assert again.cut == 0.3 and again.card == {"trained_on": "test"}
    with pytest.raises(OutputExistsError):  # never replaced without asking
        write_filter(found, path, {})
    content = json.loads(path.read_text())
    for key, value, words in (
        ("output_bias", float("nan"), "'output_bias' must be finite numbers"),
        ("scale", [0.0] * len(FEATURE_NAMES), '"scale" must be positive'),
        ("version", 99, "filter version 99"),
        ("cut", 1.0, '"cut" must be a probability'),
        ("hidden_bias", [0.0], "'hidden_bias' must be finite numbers of shape (2,)"),
    ):
        bad = dict(content, **{key: value})
        with pytest.raises(ModelFileError, match=str(tmp_path).replace("\\", "\\\\")) as caught:
            filter_from_json(bad, tmp_path / "bad.json")
        assert words in str(caught.value)


def _separable_candidates(studies: int = 12) -> CandidateSet:
    """Lesions hot and compact, physiology cool and in bone, one feature each noisy (seeded)."""
    rng = np.random.default_rng(3)
    candidates = CandidateSet.empty()
    for study in range(studies):
        rows, labels = [], []
        for is_lesion in [True] * 5 + [False] * 3:
            row = rng.normal(0.0, 0.3, len(FEATURE_NAMES))
            row[F["log_contrast"]] += 2.0 if is_lesion else 0.5
            row[F["inside_bone"]] = 0.0 if is_lesion else 1.0
            rows.append(row)
            labels.append(is_lesion)
        candidates.extend(f"study {study}", np.array(rows), np.array(labels), ["lung"] * 5 + ["cancellous_bone"] * 3)
    return candidates


@pytest.mark.parametrize("hidden", [0, 8])
def test_fit_separates_lesions_from_physiology_and_its_cut_keeps_the_target_recall(hidden, tmp_path: Path):
    candidates = _separable_candidates()
    found, numbers = fit_filter(candidates, FitOptions(hidden=hidden, steps=400, target_recall=0.98))
    assert numbers["candidates"] == 96 and numbers["lesion_candidates"] == 60 and numbers["studies"] == 12
    assert numbers["out_of_fold_recall"] >= 0.98
    assert numbers["out_of_fold_false_positives_per_study_before"] == 3.0
    assert numbers["out_of_fold_false_positives_per_study_after"] == 0.0
    kept = found.decide(candidates.features).kept
    assert kept[candidates.is_lesion].all() and not kept[~candidates.is_lesion].any()
    candidates.save(tmp_path / "candidates.npz")
    again = CandidateSet.load(tmp_path / "candidates.npz")
    assert np.array_equal(again.features, candidates.features) and again.tissue == candidates.tissue


def test_fit_refuses_candidates_of_one_kind():
    candidates = _separable_candidates()
    lesions_only = CandidateSet.empty()
    lesions_only.extend("a", candidates.features[:5], candidates.is_lesion[:5], [""] * 5)
    with pytest.raises(InputError, match="needs both lesion and non-lesion candidates; got 5 lesion and 0 other"):
        fit_filter(lesions_only)


@pytest.mark.torch
def test_detection_applies_the_filter_its_manifest_names_and_refuses_a_changed_file(tmp_path: Path):
    from PETCTLesionsLib.detection import detect_lesions
    from PETCTLesionsLib.model import weights
    from PETCTLesionsLib.synthetic.phantom import PhantomConfig, make_phantom
    from PETCTLesionsLib.training.data import phantom_study_arrays

    manifest = _model_copy(tmp_path / "model")
    model_dir = manifest.parent
    reject_all = write_filter(_constant_filter(-30.0, 0.5), tmp_path / "reject_all.json", {})
    weights.attach_filter(manifest, reject_all)
    model = weights.load_model(manifest)
    assert model.false_positive_filter is not None and model.false_positive_filter.cut == 0.5

    study = make_phantom(PhantomConfig(seed=2_000_000, size="small", body="wholebody"))
    arrays = phantom_study_arrays(study)
    ct, pet, grid = arrays.ct_hu_on_pet, arrays.pet_suv, study.pet_grid
    unfiltered = detect_lesions(model, ct, pet, grid, device="cpu")  # off unless asked
    filtered = detect_lesions(model, ct, pet, grid, device="cpu", filter_false_positives=True)
    assert len(unfiltered.lesions) >= 1 and not any("false-positive" in note for note in unfiltered.notes)
    assert filtered.lesions == [] and not filtered.lesion_map.any()
    assert any(f"removed {len(unfiltered.lesions)} of {len(unfiltered.lesions)}" in note for note in filtered.notes)

    (model_dir / "reject_all.json").write_text((model_dir / "reject_all.json").read_text() + " ")
    with pytest.raises(ModelFileError, match="reject_all.json: checksum"):
        weights.load_model(manifest)


def _model_copy(folder: Path) -> Path:
    """The bundled model's two files copied into ``folder``, without a filter: its manifest."""
    import shutil

    from PETCTLesionsLib.model import weights

    bundled = weights.bundled_manifest_path()
    folder.mkdir()
    manifest = folder / bundled.name
    content = json.loads(bundled.read_text())
    content.pop(weights.FILTER_KEY, None)
    manifest.write_text(json.dumps(content))
    shutil.copy(bundled.with_suffix(".pt"), folder / bundled.with_suffix(".pt").name)
    return manifest


@pytest.mark.torch
def test_train_fp_filter_command_fits_from_cached_candidates_and_attaches_the_filter(tmp_path: Path, capsys):
    from PETCTLesionsLib.cli import main
    from PETCTLesionsLib.model import weights

    manifest = _model_copy(tmp_path / "model")
    cache = tmp_path / "candidates.npz"
    _separable_candidates().save(cache)
    out = tmp_path / "filter.json"
    argv = ["train-fp-filter", "--model", str(manifest), "--cache", str(cache), "--out", str(out)]
    assert main([*argv, "--attach", str(manifest)]) == 0
    printed = capsys.readouterr().out
    assert (
        "96 candidates (60 on lesions) from 12 studies" in printed
        and "false positives per study 3.00 -> 0.00" in printed
    )
    entry = json.loads(manifest.read_text())[weights.FILTER_KEY]
    assert entry == {"file": "filter.json", "sha256": weights.sha256_of(manifest.parent / "filter.json")}
    model = weights.load_model(manifest)
    assert model.false_positive_filter.card["trained_on"] == "candidates read from candidates.npz: 12 studies"
    assert main(argv) == 2  # the filter file is not replaced without --overwrite
    assert "filter.json: the filter file already exists (--overwrite replaces it)" in capsys.readouterr().err


def test_each_variation_trains_on_seeds_of_its_own():
    from PETCTLesionsLib.training.false_positive_filter import filter_training_seeds, study_name

    plan = filter_training_seeds(["training", None], 3, 2_000_000)
    assert plan == [
        (2_000_000, "training"),
        (2_000_001, "training"),
        (2_000_002, "training"),
        (2_100_000, None),
        (2_100_001, None),
        (2_100_002, None),
    ]
    assert study_name(2_100_000, None, "small") == "seed 2100000 (no variation, small)"
    with pytest.raises(InputError, match="at most 100000 studies per variation"):
        filter_training_seeds(["training"], 100_001, 0)
