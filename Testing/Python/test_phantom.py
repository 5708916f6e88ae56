"""The synthetic PET/CT patient: determinism, grids, tissue physics, lesion ground truth, PSF and noise."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from PETCTLesionsLib.geometry import Grid
from PETCTLesionsLib.synthetic.phantom import CT_AIR_HU, FWHM_TO_SIGMA, PhantomConfig, PhantomStudy, make_phantom


@pytest.fixture(scope="module")
def torso() -> PhantomStudy:
    return make_phantom(PhantomConfig(seed=11, size="small", body="torso"))


@pytest.fixture(scope="module")
def wholebody() -> PhantomStudy:
    return make_phantom(PhantomConfig(seed=5, size="small", body="wholebody", n_lesions=12))


def _morph(mask: np.ndarray, grid: Grid, radius: int, erode: bool) -> np.ndarray:
    image = grid.to_sitk(mask.astype(np.uint8))
    result = sitk.BinaryErode(image, [radius] * 3) if erode else sitk.BinaryDilate(image, [radius] * 3)
    return sitk.GetArrayFromImage(result) > 0


def _interior(study: PhantomStudy, tissue: str, on: str) -> np.ndarray:
    """Voxels of ``tissue`` one voxel away from its border and three voxels away from any lesion."""
    grid = study.ct_grid if on == "ct" else study.pet_grid
    lesions = study.lesion_mask_ct() if on == "ct" else study.lesion_mask_pet()
    return _morph(study.tissue_mask(tissue, on), grid, 1, erode=True) & ~_morph(lesions, grid, 3, erode=False)


def _ring(mask: np.ndarray, grid: Grid, inner: int, outer: int) -> np.ndarray:
    return _morph(mask, grid, outer, erode=False) & ~_morph(mask, grid, inner, erode=False)


# Determinism and grids ------------------------------------------------------------------------


def test_same_config_gives_bit_identical_arrays_and_another_seed_another_patient(torso):
    again = make_phantom(PhantomConfig(seed=11, size="small", body="torso"))
    for name in ("ct_hu", "ct_lesion_labels", "pet_suv", "pet_lesion_labels"):
        assert np.array_equal(getattr(torso, name), getattr(again, name)), name
    assert torso.ct_grid == again.ct_grid and torso.pet_grid == again.pet_grid
    assert torso.lesions == again.lesions

    other = make_phantom(PhantomConfig(seed=12, size="small", body="torso"))
    assert other.ct_grid != torso.ct_grid
    assert [lesion.center_lps for lesion in other.lesions] != [lesion.center_lps for lesion in torso.lesions]
    assert other.tissue_suv["liver"] != torso.tissue_suv["liver"]


def test_grids_are_scanner_like(torso, wholebody):
    for study in (torso, wholebody):
        ct, pet = study.ct_grid, study.pet_grid
        assert ct.is_axis_aligned and pet.is_axis_aligned
        assert ct.size[:2] == (128, 128) and pet.size[:2] == (96, 96)
        assert ct.spacing[2] == 4.0 and pet.spacing[2] == 4.0
        assert study.ct_hu.shape == ct.shape and study.ct_hu.dtype == np.int16
        assert study.pet_suv.shape == pet.shape and study.pet_suv.dtype == np.float32
        assert study.ct_lesion_labels.dtype == np.uint16 and study.pet_lesion_labels.shape == pet.shape
        # PET field of view is wider in-plane and covers the CT's z range, on a different lattice.
        ct_lo, ct_hi = ct.extent_lps()
        pet_lo, pet_hi = pet.extent_lps()
        assert pet.size[0] * pet.spacing[0] > ct.size[0] * ct.spacing[0]
        assert pet_lo[2] <= ct_lo[2] and pet_hi[2] >= ct_hi[2] and pet_lo[2] != ct_lo[2]
        assert abs((pet_hi[2] - pet_lo[2]) - (ct_hi[2] - ct_lo[2])) <= pet.spacing[2] + 1e-6
        assert -1000.0 <= ct.origin[2] <= -600.0  # table coordinates of the lowest slice
    assert 215.0 <= torso.ct_grid.spacing[2] * (torso.ct_grid.size[2] - 1) <= 260.0  # ~240 mm x patient size
    assert wholebody.ct_grid.spacing[2] * (wholebody.ct_grid.size[2] - 1) > 850.0


def test_same_anatomy_on_both_grids(wholebody):
    for tissue in ("liver", "lung", "urine", "brain"):
        ct_ml = wholebody.tissue_mask(tissue, "ct").sum() * wholebody.ct_grid.voxel_volume_ml
        pet_ml = wholebody.tissue_mask(tissue, "pet").sum() * wholebody.pet_grid.voxel_volume_ml
        assert ct_ml > 50.0, tissue
        assert abs(ct_ml - pet_ml) / ct_ml < 0.08, (tissue, ct_ml, pet_ml)


# Tissue physics --------------------------------------------------------------------------------


def test_ct_numbers(torso, wholebody):
    for study in (torso, wholebody):
        lung = study.ct_hu[_interior(study, "lung", "ct")]
        assert -910.0 < lung.mean() < -790.0
        assert abs(lung.mean() - study.tissue_hu["lung"]) < 5.0
        liver = study.ct_hu[_interior(study, "liver", "ct")]
        assert 50.0 < liver.mean() < 70.0
        # Noise: std in a homogeneous organ is the drawn CT noise level.
        assert liver.std() == pytest.approx(study.ct_noise_hu, rel=0.15)
        assert study.ct_hu[study.tissue_mask("cancellous_bone", "ct")].mean() > 200.0
        assert study.ct_hu[study.tissue_mask("cortical_bone", "ct")].mean() > 600.0
        air = study.ct_tissue == 0
        assert study.ct_hu[air].mean() < -990.0 and study.ct_hu.min() == CT_AIR_HU
        assert study.ct_hu[0, 0, 0] == CT_AIR_HU  # outside the reconstruction circle
    assert wholebody.ct_hu[wholebody.tissue_mask("skull", "ct")].mean() > 900.0
    assert -20.0 < wholebody.ct_hu[_interior(wholebody, "urine", "ct")].mean() < 25.0


def test_pet_uptake_values(torso, wholebody):
    for study in (torso, wholebody):
        liver = study.pet_suv[_interior(study, "liver", "pet")].mean()
        assert 1.9 <= liver <= 2.6
        assert liver == pytest.approx(study.tissue_suv["liver"], abs=0.1)
        muscle = study.pet_suv[_interior(study, "muscle", "pet")].mean()
        assert 0.5 <= muscle <= 1.0
        lung = study.pet_suv[_interior(study, "lung", "pet")].mean()
        assert 0.25 <= lung <= 0.6
        assert study.pet_suv.min() >= 0.0
        assert study.pet_suv[study.pet_tissue == 0].mean() < 0.05  # air around the patient
    blood_pool = _morph(wholebody.tissue_mask("blood", "pet"), wholebody.pet_grid, 2, erode=True)
    assert blood_pool.sum() > 20
    assert 1.4 <= wholebody.pet_suv[blood_pool].mean() <= 2.1
    assert 6.0 <= wholebody.pet_suv[_interior(wholebody, "brain", "pet")].mean() <= 12.5
    assert wholebody.pet_suv[_interior(wholebody, "urine", "pet")].mean() > 12.0
    assert 4.0 <= wholebody.tissue_suv["kidney"] <= 10.0
    assert 1.5 <= wholebody.tissue_suv["myocardium"] <= 10.0


def test_pet_is_the_true_uptake_blurred_by_the_psf_plus_correlated_noise(wholebody):
    study = wholebody
    assert 6.0 <= study.psf_fwhm_mm <= 8.0

    def blurred(fwhm: float) -> np.ndarray:
        sigma = fwhm * FWHM_TO_SIGMA
        image = study.pet_grid.to_sitk(study.pet_uptake)
        return sitk.GetArrayFromImage(sitk.DiscreteGaussian(image, [sigma * sigma] * 3, 32, 0.001, True))

    expected = blurred(study.psf_fwhm_mm)
    body = expected > 0.3
    residual = (study.pet_suv - expected)[body]
    # Residual is the noise: zero mean, std = alpha * sqrt(activity).
    normalised = residual / (study.pet_noise_alpha * np.sqrt(expected[body] + 0.01))
    assert abs(normalised.mean()) < 0.05
    assert normalised.std() == pytest.approx(1.0, abs=0.1)
    # The right PSF explains the image better than a sharper or a blurrier one.
    error = np.abs(residual).mean()
    assert error < np.abs((study.pet_suv - blurred(study.psf_fwhm_mm - 3.0))[body]).mean()
    assert error < np.abs((study.pet_suv - blurred(study.psf_fwhm_mm + 3.0))[body]).mean()
    # Noise is spatially correlated (smoothed), not white.
    noise = np.where(body, study.pet_suv - expected, 0.0) / (study.pet_noise_alpha * np.sqrt(expected + 0.01))
    both = body[:, :, 1:] & body[:, :, :-1]
    lag1 = np.corrcoef(noise[:, :, 1:][both], noise[:, :, :-1][both])[0, 1]
    assert lag1 > 0.3


# Lesions ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["torso", "wholebody"])
def test_lesion_labels_are_instances_that_never_touch(name, request):
    study: PhantomStudy = request.getfixturevalue(name)
    count = len(study.lesions)
    assert count >= 1
    assert [lesion.label for lesion in study.lesions] == list(range(1, count + 1))
    for labels in (study.pet_lesion_labels, study.ct_lesion_labels):
        assert set(np.unique(labels).tolist()) == set(range(count + 1))
        assert np.bincount(labels.ravel(), minlength=count + 1)[1:].min() >= 1
    components = sitk.ConnectedComponent(study.pet_grid.to_sitk(study.lesion_mask_pet()), True)
    assert sitk.GetArrayFromImage(components).max() == count
    assert study.lesion_mask_ct().dtype == np.uint8 and study.lesion_mask_ct().max() == 1

    for lesion, shape in zip(study.lesions, study.lesion_shapes):
        # The centre is a PET voxel centre carrying the lesion's label.
        index = study.pet_grid.lps_to_index(lesion.center_lps)
        assert np.allclose(index, np.rint(index), atol=1e-6)
        i, j, k = np.rint(index).astype(int)
        assert study.pet_lesion_labels[k, j, i] == lesion.label
        # Labels are exactly the voxel centres inside the lesion's shape.
        x, y, z = study.ct_grid.axis_coordinates()
        inside = shape.rho(x[None, None, :], y[None, :, None], z[:, None, None]) <= 1.0
        assert np.array_equal(inside, study.ct_lesion_labels == lesion.label)
        assert lesion.site in ("lung", "lymph_node", "liver", "bone")
        assert lesion.shape in ("ellipsoid", "irregular")
        assert 5.0 <= lesion.diameter_mm <= 50.0 * 1.3
        assert 2.0 <= lesion.uptake_suv <= 25.0
    # Every lesion voxel is inside the patient.
    outside = np.isin(study.ct_tissue, [0, 1, 2])  # air, table, table foam
    assert not (outside & (study.ct_lesion_labels > 0)).any()


def test_lesions_sit_in_their_tissue_and_show_on_ct(wholebody):
    study = wholebody
    ct_lesions = study.lesion_mask_ct()
    for lesion in study.lesions:
        mask = study.ct_lesion_labels == lesion.label
        tissues = {study.tissue_names[t] for t in np.unique(study.ct_tissue[mask])}
        hu_inside = study.ct_hu[mask]
        if lesion.site == "lung":
            assert tissues <= {"lung", "lung_vessel"}
            surround = _ring(mask, study.ct_grid, 0, 1) & (ct_lesions == 0)
            assert study.ct_hu[surround].mean() < -500.0  # surrounded by lung
            assert hu_inside.max() > -600.0  # a visible nodule
            if lesion.diameter_mm >= 10.0:
                assert hu_inside.mean() > -300.0
        elif lesion.site == "liver":
            assert tissues == {"liver"}
            if lesion.diameter_mm >= 10.0:
                assert hu_inside.mean() < study.tissue_hu["liver"] - 8.0  # hypodense
        elif lesion.site == "bone":
            assert tissues <= {"cancellous_bone", "cortical_bone"}
        else:  # lymph node: centred in soft tissue or fat, may abut lung, never in bone, air or vessels
            assert tissues <= {
                "mediastinum",
                "fat",
                "visceral_fat",
                "muscle",
                "lung",
                "lung_vessel",
                "esophagus",
                "bowel",
            }
            i, j, k = np.rint(study.pet_grid.lps_to_index(lesion.center_lps)).astype(int)
            assert study.tissue_names[study.pet_tissue[k, j, i]] in ("mediastinum", "fat", "visceral_fat", "muscle")


def test_torso_lesions_are_mostly_lung_and_nodes():
    sites = [lesion.site for seed in range(6) for lesion in make_phantom(PhantomConfig(seed=seed)).lesions]
    assert sum(site in ("lung", "lymph_node") for site in sites) >= 0.75 * len(sites)
    assert "lung" in sites


def test_lesion_suvmax_is_above_local_background(wholebody, torso):
    for study in (wholebody, torso):
        for lesion in study.lesions:
            mask = study.pet_lesion_labels == lesion.label
            ring = _ring(mask, study.pet_grid, 1, 2) & (study.pet_lesion_labels == 0)
            suv_max, background = study.pet_suv[mask].max(), study.pet_suv[ring].mean()
            assert suv_max > background, lesion
            if lesion.diameter_mm >= 10.0:  # beyond partial volume: clear contrast to the host tissue
                host = {"lung": "lung", "liver": "liver", "bone": "cancellous_bone", "lymph_node": "muscle"}[
                    lesion.site
                ]
                assert suv_max > 1.5 * study.tissue_suv[host], lesion


def _assert_lesion_activity_is_its_volume(study: PhantomStudy) -> None:
    """Partial volume in the true uptake: excess activity / (uptake - background) = the lesion's volume."""
    background = np.zeros(256, np.float32)
    for tissue_id, name in enumerate(study.tissue_names):
        background[tissue_id] = study.tissue_suv.get(name, np.nan)
    x, y, z = study.pet_grid.axis_coordinates()
    checked = 0
    for lesion, shape in zip(study.lesions, study.lesion_shapes):
        if lesion.shape != "ellipsoid" or lesion.site not in ("lung", "liver"):
            continue
        c = lesion.center_lps
        distance2 = (x[None, None, :] - c[0]) ** 2 + (y[None, :, None] - c[1]) ** 2 + (z[:, None, None] - c[2]) ** 2
        window = distance2 <= (shape.bounding_radius() + 5.0) ** 2
        tissue_suv = background[study.pet_tissue[window]]
        fraction = (study.pet_uptake[window] - tissue_suv) / (lesion.uptake_suv - tissue_suv)
        volume_mm3 = fraction.sum() * study.pet_grid.voxel_volume_ml * 1000.0
        assert volume_mm3 == pytest.approx(4.0 / 3.0 * np.pi * np.prod(shape.semi_axes), rel=0.1), lesion
        checked += 1
    assert checked >= 1


def test_partial_volume_small_lesions_lose_contrast_large_keep_it():
    small = make_phantom(
        PhantomConfig(seed=3, body="wholebody", n_lesions=8, lesion_diameter_mm=(5.0, 6.0), lesion_suvmax=(10.0, 12.0))
    )
    for lesion in small.lesions:
        mask = small.pet_lesion_labels == lesion.label
        assert small.pet_suv[mask].max() < 0.7 * lesion.uptake_suv
    _assert_lesion_activity_is_its_volume(small)
    large = make_phantom(
        PhantomConfig(
            seed=3, body="wholebody", n_lesions=2, lesion_diameter_mm=(40.0, 50.0), lesion_suvmax=(10.0, 12.0)
        )
    )
    for lesion in large.lesions:
        mask = large.pet_lesion_labels == lesion.label
        assert large.pet_uptake[mask].max() == pytest.approx(lesion.uptake_suv, rel=1e-5)
        assert large.pet_suv[mask].max() > 0.9 * lesion.uptake_suv


def test_many_small_lesions_fit_in_a_small_wholebody():
    study = make_phantom(PhantomConfig(seed=2, body="wholebody", n_lesions=120, lesion_diameter_mm=(5.0, 12.0)))
    assert len(study.lesions) == 120
    assert {lesion.site for lesion in study.lesions} == {"lung", "lymph_node", "liver", "bone"}
    components = sitk.ConnectedComponent(study.pet_grid.to_sitk(study.lesion_mask_pet()), True)
    assert sitk.GetArrayFromImage(components).max() == 120
    assert np.bincount(study.pet_lesion_labels.ravel(), minlength=121)[1:].min() >= 1
    assert np.bincount(study.ct_lesion_labels.ravel(), minlength=121)[1:].min() >= 1


def test_no_lesions_is_a_valid_negative_case():
    study = make_phantom(PhantomConfig(seed=4, body="wholebody", n_lesions=0))
    assert study.lesions == [] and not study.pet_lesion_labels.any() and not study.ct_lesion_labels.any()


def test_lesion_labels_on_another_grid(torso):
    assert np.array_equal(torso.lesion_labels_on(torso.pet_grid), torso.pet_lesion_labels)


# Bad requests ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"seed": -1}, "seed"),
        ({"seed": 1, "size": "medium"}, "size"),
        ({"seed": 1, "body": "head"}, "body"),
        ({"seed": 1, "n_lesions": -2}, "n_lesions"),
        ({"seed": 1, "lesion_diameter_mm": (20.0, 10.0)}, "lesion_diameter_mm"),
        ({"seed": 1, "lesion_suvmax": (0.0, 5.0)}, "lesion_suvmax"),
    ],
)
def test_bad_config_is_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        PhantomConfig(**kwargs)


def test_impossible_lesion_request_says_so():
    with pytest.raises(ValueError, match="could not place lesion"):
        make_phantom(PhantomConfig(seed=1, n_lesions=40, lesion_diameter_mm=(45.0, 50.0)))
