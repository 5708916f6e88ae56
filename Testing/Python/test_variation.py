"""Domain randomisation in the generator: the default unchanged, draws in their ranges, physiology in the arrays."""

from __future__ import annotations

import dataclasses
import hashlib
import json

import numpy as np
import pytest
import SimpleITK as sitk

from PETCTLesionsLib.cli import main as cli_main
from PETCTLesionsLib.errors import InputError
from PETCTLesionsLib.study import load_study
from PETCTLesionsLib.synthetic.phantom import (
    VARIATION_TISSUE_ID,
    VARIATION_TISSUES,
    PhantomConfig,
    PhantomStudy,
    make_phantom,
)
from PETCTLesionsLib.synthetic.synth import case_seed
from PETCTLesionsLib.synthetic.variation import (
    BROWN_FAT_DEPOTS,
    MUSCLE_GROUPS,
    VARIATIONS,
    Range,
    Variation,
    draw_variation,
    held_out_differences,
)

# The generator's output BEFORE variations existed: hashes computed with phantom.py as it was before
# PhantomConfig.variation was added, per stack (SimpleITK's blur, and at full size numpy's float
# arithmetic, differ in the last bits between the two stacks the suite runs on).
_EXACT_AND_PET_HASHES_BEFORE_VARIATION = [
    (
        PhantomConfig(seed=0),
        {
            "numpy2-sitk2.5": (
                "009d7d0ddd6681ed0e086815d60103b86bc03a53eba34c8c699e3dfeca45fdc4",
                "0a84069a767fb015fa0ff4d0b81c108325533c3a663a00002e4d389102550a94",
            ),
            "numpy1-sitk2.2": (
                "009d7d0ddd6681ed0e086815d60103b86bc03a53eba34c8c699e3dfeca45fdc4",
                "ced9540ed5d771b437882f7346f1d60f6bb13bc553a253e1e069df3575b077ac",
            ),
        },
    ),
    (
        PhantomConfig(seed=7, body="wholebody"),
        {
            "numpy2-sitk2.5": (
                "536c86c9144a93fd0180c55b14da9732d0e7abbd308dafbb321c123816ff8a93",
                "0e0775465ca247e044bc9077a246196387cd6a6c3a7cd4a20438744296e9170f",
            ),
            "numpy1-sitk2.2": (
                "536c86c9144a93fd0180c55b14da9732d0e7abbd308dafbb321c123816ff8a93",
                "7412aff6fec12a80e50a7afccc6d4c9bbee6c008bbb12705fdfd2c728e0f6ed7",
            ),
        },
    ),
    (
        PhantomConfig(seed=12, size="full", body="torso", n_lesions=3),
        {
            "numpy2-sitk2.5": (
                "74af9268a138d85bb80b214b1247582046cca0a107e120c43c40dd736e0f96e5",
                "b578720e7c403d3a5d7e726ba4a280c7cc9c9d4a4d4685c55b5d5dc5be7f58cd",
            ),
            "numpy1-sitk2.2": (
                "c55881c12c9e57d2a78afb5ad68a007aae6f20eb8bad4916a3e96251f7f78e38",
                "725e1d2eb92a5a32c6ded6e77da97f98ed7facbfee1ab95819a4fc8e6850b85d",
            ),
        },
    ),
]


def _stack() -> str:
    return f"numpy{np.__version__.split('.')[0]}-sitk{sitk.Version_MajorVersion()}.{sitk.Version_MinorVersion()}"


def _exact_hash(study: PhantomStudy) -> str:
    """Everything but the blurred PET: arrays, grids, lesions, scanner values and tissue names."""
    digest = hashlib.sha256()
    for array in (
        study.ct_hu,
        study.ct_lesion_labels,
        study.pet_lesion_labels,
        study.ct_tissue,
        study.pet_tissue,
        study.pet_uptake,
    ):
        digest.update(str((array.dtype.str, array.shape)).encode())
        digest.update(np.ascontiguousarray(array).tobytes())
    grids = [
        [[float(v) for v in getattr(grid, name)] for name in ("size", "spacing", "origin")]
        for grid in (study.ct_grid, study.pet_grid)
    ]
    lesions = [
        [
            lesion.label,
            lesion.site,
            [float(c) for c in lesion.center_lps],
            float(lesion.uptake_suv),
            float(lesion.ct_hu),
        ]
        for lesion in study.lesions
    ]
    scalars = [float(study.psf_fwhm_mm), float(study.pet_noise_alpha), float(study.ct_noise_hu)]
    digest.update(json.dumps([grids, lesions, scalars, list(study.tissue_names)]).encode())
    return digest.hexdigest()


@pytest.mark.parametrize("config, hashes", _EXACT_AND_PET_HASHES_BEFORE_VARIATION, ids=["torso", "wholebody", "full"])
def test_without_a_variation_the_output_is_bit_identical_to_before(config, hashes):
    if _stack() not in hashes:
        pytest.skip(f"hashes recorded for {sorted(hashes)} only, this is {_stack()}")
    exact, pet = hashes[_stack()]
    study = make_phantom(config)
    assert config.variation is None and study.variation_draws == {}
    assert _exact_hash(study) == exact
    assert hashlib.sha256(np.ascontiguousarray(study.pet_suv).tobytes()).hexdigest() == pet


def test_a_variation_must_be_a_known_name():
    with pytest.raises(InputError, match="held_out"):
        PhantomConfig(seed=1, variation="heldout")


# The ranges ----------------------------------------------------------------------------------------------

_DECLARED_HELD_OUT = {"psf_fwhm_mm", "pet_noise_alpha", "marrow_suv", "brown_fat_suv"}


def test_held_out_ranges_are_disjoint_from_training_where_declared_and_the_same_elsewhere():
    training, held_out = VARIATIONS["training"], VARIATIONS["held_out"]
    for name in _DECLARED_HELD_OUT:
        first, second = getattr(training, name), getattr(held_out, name)
        assert not first.overlaps(second) and first.high <= second.low, name
    assert training.ureter_probability == 0.0 < held_out.ureter_probability
    assert training.brown_fat_depots[1] < len(BROWN_FAT_DEPOTS) == held_out.brown_fat_depots[0]
    assert training.brown_fat_probability < held_out.brown_fat_probability == 1.0
    changed = _DECLARED_HELD_OUT | {"ureter_probability", "brown_fat_depots", "brown_fat_probability"}
    for spec in dataclasses.fields(Variation):
        if spec.name not in changed:
            assert getattr(training, spec.name) == getattr(held_out, spec.name), spec.name
    lines = held_out_differences()
    assert sorted(line.split(":")[0] for line in lines) == sorted(changed)
    assert "psf_fwhm_mm: training 4-7.5, held_out 7.5-9" in lines


def test_a_range_draws_inside_itself_and_log_ranges_uniformly_in_log():
    rng = np.random.default_rng(0)
    values = np.array([Range(1.5, 15.0, log=True).draw(rng) for _ in range(2000)])
    assert values.min() >= 1.5 and values.max() <= 15.0
    assert abs(np.mean(values < np.sqrt(1.5 * 15.0)) - 0.5) < 0.05  # the geometric mean halves them
    assert Range(4.0, 7.5).overlaps(Range(7.0, 9.0)) and not Range(4.0, 7.5).overlaps(Range(7.5, 9.0))


@pytest.mark.parametrize("name", sorted(VARIATIONS))
@pytest.mark.parametrize("size", ["small", "full"])
def test_every_draw_lies_in_its_variations_range(name, size):
    variation = VARIATIONS[name]
    scanner = variation.scanner(size)
    for seed in range(30):
        draws = draw_variation(name, np.random.default_rng(seed), size, bowel_segments=30)
        for field in ("psf_fwhm_mm", "pet_noise_alpha", "marrow_suv", "myocardium_suv", "stomach_suv"):
            assert getattr(variation, field).contains(getattr(draws, field)), field
        for field in ("brown_fat_suv", "brown_fat_hu", "active_muscle_suv", "thyroid_suv", "thyroid_hu", "tonsil_suv"):
            assert getattr(variation, field).contains(getattr(draws, field)), field
        assert len(draws.bowel_suvs) == 30 and all(variation.bowel_suv.contains(v) for v in draws.bowel_suvs)
        assert variation.ureter_suv_fraction.contains(draws.ureter_suv_fraction)
        if draws.brown_fat_depots:
            low, high = variation.brown_fat_depots
            assert low <= len(draws.brown_fat_depots) <= high and set(draws.brown_fat_depots) <= set(BROWN_FAT_DEPOTS)
        assert set(draws.active_muscle_groups) <= set(MUSCLE_GROUPS) and draws.arms in ("up", "down")
        assert draws.ureters is False if variation.ureter_probability == 0.0 else draws.ureters in (True, False)
        # Grids: matrices in their clipped ranges, pixels and slices in theirs.
        assert scanner.pet_matrix[0] <= draws.pet_matrix <= scanner.pet_matrix[1]
        assert scanner.pet_pixel_mm.contains(draws.pet_pixel_mm, 1e-6)
        assert scanner.pet_slice_mm.contains(draws.pet_slice_mm, 1e-3)
        assert scanner.ct_matrix[0] <= draws.ct_matrix <= scanner.ct_matrix[1]
        assert scanner.ct_fov_mm.contains(draws.ct_pixel_mm * draws.ct_matrix, 1e-3)
        assert scanner.ct_slice_mm.contains(draws.ct_slice_mm, 1e-3)
        assert scanner.ct_noise_hu.contains(draws.ct_noise_hu) and scanner.ct_kernel.contains(draws.ct_kernel)
    assert json.loads(json.dumps(draws.record()))["variation"] == name  # JSON-ready


# Studies --------------------------------------------------------------------------------------------------

_HELD_OUT_SEED = 2  # draws: all brown fat depots, ureters, arms down
_TRAINING_SEED = 3  # draws: no brown fat, every muscle group active, arms up


@pytest.fixture(scope="module")
def held_out() -> PhantomStudy:
    return make_phantom(PhantomConfig(seed=_HELD_OUT_SEED, body="wholebody", variation="held_out"))


@pytest.fixture(scope="module")
def training() -> PhantomStudy:
    return make_phantom(PhantomConfig(seed=_TRAINING_SEED, body="wholebody", variation="training"))


def _uptake_of(study: PhantomStudy, tissue: str) -> np.ndarray:
    """The noise-free PET uptake of a tissue's voxels away from every lesion's partial volume."""
    lesions = sitk.GetArrayFromImage(sitk.BinaryDilate(study.pet_grid.to_sitk(study.lesion_mask_pet()), [2] * 3))
    return study.pet_uptake[study.tissue_mask(tissue, "pet") & (lesions == 0)]


def test_the_study_records_its_draws_and_its_grids_are_the_drawn_ones(held_out, training):
    for study in (held_out, training):
        draws = study.variation_draws
        assert draws["variation"] == study.config.variation
        assert study.pet_grid.size[:2] == (draws["pet_matrix"],) * 2
        assert study.ct_grid.size[:2] == (draws["ct_matrix"],) * 2
        np.testing.assert_allclose(study.pet_grid.spacing, [draws["pet_pixel_mm"]] * 2 + [draws["pet_slice_mm"]], 1e-4)
        np.testing.assert_allclose(study.ct_grid.spacing, [draws["ct_pixel_mm"]] * 2 + [draws["ct_slice_mm"]], 1e-4)
        assert study.psf_fwhm_mm == pytest.approx(draws["psf_fwhm_mm"], abs=1e-4)
        assert study.pet_noise_alpha == pytest.approx(draws["pet_noise_alpha"], abs=1e-4)
        for name in VARIATION_TISSUES:
            assert study.tissue_names[VARIATION_TISSUE_ID[name]] == name
    assert held_out.variation_draws["brown_fat_depots"] == list(BROWN_FAT_DEPOTS)
    assert held_out.variation_draws["ureters"] is True and held_out.variation_draws["arms"] == "down"
    assert training.variation_draws["brown_fat_depots"] == [] and training.variation_draws["arms"] == "up"
    assert training.variation_draws["active_muscle_groups"] == list(MUSCLE_GROUPS)


def test_brown_fat_has_fat_hu_on_ct_and_its_drawn_suv_on_pet(held_out, training):
    draws, variation = held_out.variation_draws, VARIATIONS["held_out"]
    assert variation.brown_fat_hu.contains(held_out.tissue_hu["brown_fat"])
    ct_values = held_out.ct_hu[held_out.tissue_mask("brown_fat", "ct")]
    assert ct_values.size > 500 and np.median(ct_values) < -30  # fat, not muscle (40-55 HU)
    uptake = _uptake_of(held_out, "brown_fat")
    assert uptake.size > 100 and np.all(uptake == np.float32(held_out.tissue_suv["brown_fat"]))
    assert held_out.tissue_suv["brown_fat"] == pytest.approx(draws["brown_fat_suv"], abs=1e-4)
    assert variation.brown_fat_suv.contains(held_out.tissue_suv["brown_fat"])
    assert not training.tissue_mask("brown_fat", "pet").any()


def test_marrow_myocardium_and_active_muscle_carry_their_drawn_uptake(held_out, training):
    for study in (held_out, training):
        draws = study.variation_draws
        for tissue, key in (("cancellous_bone", "marrow_suv"), ("myocardium", "myocardium_suv")):
            uptake = _uptake_of(study, tissue)
            assert uptake.size > 50 and np.all(uptake == np.float32(study.tissue_suv[tissue]))
            assert study.tissue_suv[tissue] == pytest.approx(draws[key], abs=1e-4)
    assert VARIATIONS["held_out"].marrow_suv.contains(held_out.tissue_suv["cancellous_bone"])
    assert VARIATIONS["training"].marrow_suv.contains(training.tissue_suv["cancellous_bone"])
    active = _uptake_of(training, "active_muscle")
    assert active.size > 1000 and np.all(active == np.float32(training.tissue_suv["active_muscle"]))
    assert training.tissue_suv["active_muscle"] == pytest.approx(
        training.variation_draws["active_muscle_suv"], abs=1e-4
    )
    assert not held_out.tissue_mask("active_muscle", "pet").any()  # held_out seed 2 drew no active group


def test_lesions_stay_at_least_twice_their_varied_background(held_out, training):
    background = {"lung": "lung", "lymph_node": "muscle", "liver": "liver", "bone": "cancellous_bone"}
    high = PhantomConfig(seed=0).lesion_suvmax[1]
    for study in (held_out, training):
        for lesion in study.lesions:
            floor = min(high, 2.0 * study.tissue_suv[background[lesion.site]])
            assert lesion.uptake_suv >= floor * (1 - 1e-6), lesion


def test_ureters_are_a_connected_path_from_both_kidneys_into_the_bladder(held_out, training):
    urine_tract = held_out.tissue_mask("ureter", "pet") | held_out.tissue_mask("urine", "pet")
    components = sitk.GetArrayFromImage(
        sitk.ConnectedComponent(held_out.pet_grid.to_sitk(urine_tract.astype(np.uint8)), True)
    )
    bladder_k = int(np.argmax(held_out.tissue_mask("urine", "pet").sum(axis=(1, 2))))  # its widest slice
    bladder_label = np.bincount(components[bladder_k][components[bladder_k] > 0]).argmax()
    connected = components == bladder_label
    # Renal pelvises: urine 150 mm and more above the bladder, one on each side of the midline.
    z = held_out.pet_grid.axis_coordinates()[2]
    high = z >= z[bladder_k] + 150.0
    pelvis = held_out.tissue_mask("urine", "pet") & high[:, None, None]
    k, _, i = np.nonzero(pelvis)
    x = held_out.pet_grid.axis_coordinates()[0][i]
    midline = np.median(held_out.pet_grid.axis_coordinates()[0][np.nonzero(held_out.tissue_mask("brain", "pet"))[2]])
    for side in (x < midline, x > midline):
        assert side.any() and connected[pelvis][side].any()
    assert held_out.tissue_mask("ureter", "pet")[connected].sum() > 20
    fraction = held_out.tissue_suv["ureter"] / held_out.tissue_suv["urine"]
    assert fraction == pytest.approx(held_out.variation_draws["ureter_suv_fraction"], abs=1e-4)
    assert not training.tissue_mask("ureter", "pet").any()


def _body_parts_on_slice(study: PhantomStudy, k: int) -> int:
    """Separate pieces of body (not air, not table) on CT slice k."""
    outside = [study.tissue_names.index(name) for name in ("air", "table", "table_foam")]
    body = ~np.isin(study.ct_tissue[k], outside)
    labels = sitk.GetArrayFromImage(sitk.ConnectedComponent(sitk.GetImageFromArray(body.astype(np.uint8)), True))
    sizes = np.bincount(labels.ravel())[1:]
    return int(np.sum(sizes >= 30))


def test_arms_lie_beside_the_trunk_or_beside_the_head_as_drawn(held_out, training):
    liver_k = int(np.argmax(held_out.tissue_mask("liver", "ct").sum(axis=(1, 2))))
    assert _body_parts_on_slice(held_out, liver_k) == 3  # arms down: trunk and two arms
    brain_k = int(np.argmax(training.tissue_mask("brain", "ct").sum(axis=(1, 2))))
    assert _body_parts_on_slice(training, brain_k) == 3  # arms up: head and two arms
    # ... and then none beside the other.
    assert _body_parts_on_slice(held_out, int(np.argmax(held_out.tissue_mask("brain", "ct").sum(axis=(1, 2))))) == 1
    assert _body_parts_on_slice(training, int(np.argmax(training.tissue_mask("liver", "ct").sum(axis=(1, 2))))) == 1


def test_thyroid_and_tonsils_in_the_neck_carry_their_uptake(held_out):
    draws = held_out.variation_draws
    for tissue, key in (("thyroid", "thyroid_suv"), ("tonsil", "tonsil_suv")):
        uptake = _uptake_of(held_out, tissue)
        assert uptake.size > 10 and np.all(uptake == np.float32(held_out.tissue_suv[tissue]))
        assert held_out.tissue_suv[tissue] == pytest.approx(draws[key], abs=1e-4)
        k = np.nonzero(held_out.tissue_mask(tissue, "pet"))[0]
        brain_k = np.nonzero(held_out.tissue_mask("brain", "pet"))[0]
        assert k.max() < brain_k.min()  # below the head


def test_varied_studies_are_deterministic_per_seed_and_differ_between_variations(held_out):
    again = make_phantom(PhantomConfig(seed=_HELD_OUT_SEED, body="wholebody", variation="held_out"))
    assert again.variation_draws == held_out.variation_draws
    for name in ("ct_hu", "pet_suv", "pet_tissue", "pet_lesion_labels"):
        assert np.array_equal(getattr(again, name), getattr(held_out, name)), name
    other = draw_variation("training", np.random.default_rng(5), "small", 30)
    assert other.record() == draw_variation("training", np.random.default_rng(5), "small", 30).record()
    assert other.record() != draw_variation("training", np.random.default_rng(6), "small", 30).record()


def test_synth_writes_a_varied_study_that_reads_back_with_its_draws(tmp_path, capsys):
    out = tmp_path / "data"
    argv = ["synth", "--out", str(out), "--seed", "4", "--size", "small", "--flavour", "lung", "--lesions", "1"]
    assert cli_main([*argv, "--variation", "held_out", "--quiet"]) == 0
    phantom = make_phantom(
        PhantomConfig(seed=case_seed(4, 0), size="small", body="torso", n_lesions=1, variation="held_out")
    )
    (truth_file,) = (out / "truth").glob("*.json")
    truth = json.loads(truth_file.read_text())
    assert truth["variation"] == "held_out" and truth["variation_draws"] == phantom.variation_draws
    loaded = load_study([out])
    assert loaded.pet_grid.size == phantom.pet_grid.size and loaded.ct_grid.size == phantom.ct_grid.size
    np.testing.assert_allclose(loaded.pet_grid.spacing, phantom.pet_grid.spacing, atol=1e-4)
    assert np.array_equal(sitk.GetArrayFromImage(loaded.ct), phantom.ct_hu)
    capsys.readouterr()
    assert cli_main([*argv, "--out", str(tmp_path / "other"), "--variation", "heldout", "--quiet"]) == 2
    assert "heldout" in capsys.readouterr().err and not (tmp_path / "other" / "truth").exists()
