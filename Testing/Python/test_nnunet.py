"""nnU-Net v2 raw datasets in the autoPET layout: cases (ids with double spaces included) written
and read back voxel-identical on exactly the same grid, dataset.json as nnU-Net v2 reads it,
splits_final.json, and the refusals (overwrite, bad labels, mismatched grids, bad ids)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import numpy as np
import pytest
import SimpleITK as sitk

from PETCTLesionsLib.errors import OutputExistsError
from PETCTLesionsLib.formats import nnunet, parallel_gzip
from PETCTLesionsLib.formats.nnunet import NnUNetCase, NnUNetError

SPACED_ID = "fdg_0a1b2c3d4e_06-20-2003  PET-CT"  # autoPET FDG ids carry runs of spaces
PLAIN_ID = "psma_0f1e2d3c4b5a6978_2019-03-21"
SHAPE = (8, 16, 20)  # numpy [k, j, i]: 20 x 16 x 8 voxels
# Values exactly representable in float32 (NIfTI stores geometry in float32), so "same grid" can be exact.
SPACING = (2.03125, 1.5, 3.0)
ORIGIN = (-200.5, 150.25, -1000.0)
DIRECTION = (0.0, 0.0, 1.0, -1.0, 0.0, 0.0, 0.0, -1.0, 0.0)  # axes permuted and flipped, det +1


def _image(array: np.ndarray, origin=ORIGIN, spacing=SPACING, direction=DIRECTION) -> sitk.Image:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    image.SetDirection(direction)
    return image


def _arrays(seed: int):
    rng = np.random.default_rng(seed)
    ct = rng.integers(-1024, 3071, size=SHAPE).astype(np.int16)
    pet = rng.gamma(2.0, 1.7, size=SHAPE).astype(np.float32)
    label = np.zeros(SHAPE, dtype=np.uint8)
    label[2:5, 3:9, 4:11] = 1
    label[6, 12, 15] = 1
    return ct, pet, label


def _case(case_id: str, seed: int = 0, label: Optional[np.ndarray] = None, **pet_geometry) -> NnUNetCase:
    ct, pet, default_label = _arrays(seed)
    label = default_label if label is None else label
    return NnUNetCase(case_id=case_id, ct=_image(ct), pet=_image(pet, **pet_geometry), label=_image(label))


def _all_files(folder: Path):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def _assert_same_geometry_exactly(image: sitk.Image) -> None:
    assert image.GetSize() == (SHAPE[2], SHAPE[1], SHAPE[0])
    assert image.GetSpacing() == SPACING
    assert image.GetOrigin() == ORIGIN
    assert image.GetDirection() == DIRECTION


# ----------------------------------------------------------------------------------------- round trips


def test_cases_round_trip_voxel_identical_with_exact_geometry(tmp_path):
    dataset = tmp_path / "Dataset901_autoPET"
    written_spaced = nnunet.write_case(dataset, _case(SPACED_ID, seed=1))
    written_plain = nnunet.write_case(dataset, _case(PLAIN_ID, seed=2))

    assert written_spaced == {
        "ct": dataset / "imagesTr" / f"{SPACED_ID}_0000.nii.gz",
        "pet": dataset / "imagesTr" / f"{SPACED_ID}_0001.nii.gz",
        "label": dataset / "labelsTr" / f"{SPACED_ID}.nii.gz",
    }
    assert written_plain == nnunet.case_paths(dataset, PLAIN_ID)
    # Exactly the case files and dataset.json: no temporary files left behind.
    assert _all_files(dataset) == sorted(
        [
            "dataset.json",
            f"imagesTr/{PLAIN_ID}_0000.nii.gz",
            f"imagesTr/{PLAIN_ID}_0001.nii.gz",
            f"imagesTr/{SPACED_ID}_0000.nii.gz",
            f"imagesTr/{SPACED_ID}_0001.nii.gz",
            f"labelsTr/{PLAIN_ID}.nii.gz",
            f"labelsTr/{SPACED_ID}.nii.gz",
        ]
    )
    assert nnunet.list_cases(dataset) == sorted([SPACED_ID, PLAIN_ID])

    for case_id, seed in ((SPACED_ID, 1), (PLAIN_ID, 2)):
        ct, pet, label = _arrays(seed)
        case = nnunet.read_case(dataset, case_id)
        assert case.case_id == case_id
        assert case.ct.GetPixelID() == sitk.sitkInt16
        assert case.pet.GetPixelID() == sitk.sitkFloat32
        assert case.label.GetPixelID() == sitk.sitkUInt8
        np.testing.assert_array_equal(sitk.GetArrayFromImage(case.ct), ct)
        np.testing.assert_array_equal(sitk.GetArrayFromImage(case.pet), pet)
        np.testing.assert_array_equal(sitk.GetArrayFromImage(case.label), label)
        assert int(sitk.GetArrayFromImage(case.label).sum()) == 3 * 6 * 7 + 1
        for image in (case.ct, case.pet, case.label):
            _assert_same_geometry_exactly(image)


def test_dataset_json_has_what_nnunet_v2_reads(tmp_path):
    dataset = tmp_path / "Dataset901_autoPET"
    nnunet.write_case(dataset, _case(SPACED_ID, seed=1))
    assert nnunet.read_dataset_json(dataset)["numTraining"] == 1
    nnunet.write_case(dataset, _case(PLAIN_ID, seed=2))

    content = json.loads((dataset / "dataset.json").read_text(encoding="utf-8"))
    assert content == {
        "channel_names": {"0": "CT", "1": "PET"},
        "labels": {"background": 0, "tumor": 1},
        "numTraining": 2,
        "file_ending": ".nii.gz",
    }
    assert nnunet.read_dataset_json(dataset) == content
    nnunet.update_dataset_json(dataset, dataset_name="Dataset901_autoPET")
    assert nnunet.read_dataset_json(dataset)["name"] == "Dataset901_autoPET"


def test_update_keeps_user_keys_and_published_channel_variant(tmp_path):
    dataset = tmp_path / "Dataset221_AutoPETII_2023"
    dataset.mkdir()
    original = {
        "channel_names": {"0": "CT", "1": "CT"},
        "labels": {"background": 0, "tumor": 1},
        "numTraining": 1014,
        "file_ending": ".nii.gz",
        "name": "AutoPETII_2023",
        "description": "kept verbatim: FDG PET/CT",
        "licence": "CC BY 4.0",
        "my_key": [1, 2, 3],
    }
    (dataset / "dataset.json").write_text(json.dumps(original), encoding="utf-8")

    nnunet.write_case(dataset, _case(PLAIN_ID))

    updated = nnunet.read_dataset_json(dataset)
    assert updated == dict(original, numTraining=1)
    assert list(updated) == list(original)  # key order kept too


def test_update_refuses_a_dataset_json_of_another_layout(tmp_path):
    dataset = tmp_path / "Dataset002_Heart"
    dataset.mkdir()
    other = {"channel_names": {"0": "MRI"}, "labels": {"background": 0, "left atrium": 1}, "numTraining": 20}
    (dataset / "dataset.json").write_text(json.dumps(other), encoding="utf-8")
    with pytest.raises(NnUNetError, match=r"dataset.json: channel_names \{'0': 'MRI'\} is not a CT/PET layout"):
        nnunet.update_dataset_json(dataset)
    assert json.loads((dataset / "dataset.json").read_text(encoding="utf-8")) == other


def test_test_case_without_label_goes_to_imagests(tmp_path):
    dataset = tmp_path / "Dataset901_autoPET"
    nnunet.write_case(dataset, _case(PLAIN_ID, seed=2))
    unlabelled = _case(SPACED_ID, seed=3)
    unlabelled.label = None
    written = nnunet.write_case(dataset, unlabelled)

    assert written == {
        "ct": dataset / "imagesTs" / f"{SPACED_ID}_0000.nii.gz",
        "pet": dataset / "imagesTs" / f"{SPACED_ID}_0001.nii.gz",
    }
    assert nnunet.list_cases(dataset) == [PLAIN_ID]
    assert nnunet.list_cases(dataset, test=True) == [SPACED_ID]
    assert nnunet.read_dataset_json(dataset)["numTraining"] == 1
    case = nnunet.read_case(dataset, SPACED_ID)
    assert case.label is None
    np.testing.assert_array_equal(sitk.GetArrayFromImage(case.pet), _arrays(3)[1])


def test_ct_is_rounded_to_int16_hu_and_pet_stored_as_float32(tmp_path):
    dataset = tmp_path / "Dataset901_autoPET"
    ct = np.full(SHAPE, 40.4, dtype=np.float64)
    ct[-1] = -1000.0  # air: read_case refuses a CT without any
    ct[0, 0, :5] = [-0.5, 2.5, -1024.49, 3070.6, -7.5]
    pet = np.full(SHAPE, 0.1, dtype=np.float64)
    label = np.zeros(SHAPE, dtype=np.float32)
    label[1, 1, 1] = 1.0
    nnunet.write_case(dataset, NnUNetCase(PLAIN_ID, _image(ct), _image(pet), _image(label)))

    case = nnunet.read_case(dataset, PLAIN_ID)
    stored_ct = sitk.GetArrayFromImage(case.ct)
    assert stored_ct.dtype == np.int16
    assert stored_ct[0, 0, :5].tolist() == [0, 3, -1024, 3071, -7]
    assert int((stored_ct == 40).sum()) == stored_ct.size - 5 - stored_ct[-1].size
    stored_pet = sitk.GetArrayFromImage(case.pet)
    assert stored_pet.dtype == np.float32
    assert np.all(stored_pet == np.float32(0.1))
    assert sitk.GetArrayFromImage(case.label).dtype == np.uint8
    assert int(sitk.GetArrayFromImage(case.label).sum()) == 1


# ----------------------------------------------------------------------------------------- refusals


def test_existing_case_is_not_overwritten_unless_asked(tmp_path):
    dataset = tmp_path / "Dataset901_autoPET"
    nnunet.write_case(dataset, _case(SPACED_ID, seed=1))
    with pytest.raises(OutputExistsError, match="already exists .*refusing to overwrite"):
        nnunet.write_case(dataset, _case(SPACED_ID, seed=5))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(nnunet.read_case(dataset, SPACED_ID).ct), _arrays(1)[0])

    nnunet.write_case(dataset, _case(SPACED_ID, seed=5), overwrite=True)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(nnunet.read_case(dataset, SPACED_ID).ct), _arrays(5)[0])
    assert nnunet.read_dataset_json(dataset)["numTraining"] == 1
    assert len(_all_files(dataset)) == 4


def test_label_with_value_two_is_refused(tmp_path):
    dataset = tmp_path / "Dataset901_autoPET"
    label = _arrays(0)[2]
    label[0, 0, 0] = 2
    with pytest.raises(NnUNetError, match=r"label has values other than 0 and 1: 2"):
        nnunet.write_case(dataset, _case(PLAIN_ID, label=label))
    assert not dataset.exists()


def test_label_on_disk_with_value_two_is_refused_when_read(tmp_path):
    dataset = tmp_path / "Dataset901_autoPET"
    paths = nnunet.write_case(dataset, _case(PLAIN_ID))
    label = _arrays(0)[2]
    label[3, 3, 3] = 2
    sitk.WriteImage(_image(label), str(paths["label"]))
    with pytest.raises(NnUNetError, match="values other than 0 and 1: 2") as raised:
        nnunet.read_case(dataset, PLAIN_ID)
    assert str(paths["label"]) in str(raised.value)


@pytest.mark.parametrize(
    ("pet_geometry", "message"),
    [
        ({"origin": (-200.5, 150.25, -999.99)}, "pet origin"),
        ({"spacing": (2.03125, 1.5, 3.5)}, "pet spacing"),
        ({"direction": (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)}, "pet direction"),
    ],
)
def test_geometry_mismatch_is_refused_naming_what_differs(tmp_path, pet_geometry, message):
    dataset = tmp_path / "Dataset901_autoPET"
    with pytest.raises(NnUNetError, match=f"{message} .* differs from CT") as raised:
        nnunet.write_case(dataset, _case(PLAIN_ID, **pet_geometry))
    assert PLAIN_ID in str(raised.value)
    assert not dataset.exists()


def test_size_mismatch_and_label_mismatch_are_refused(tmp_path):
    dataset = tmp_path / "Dataset901_autoPET"
    ct, pet, label = _arrays(0)
    smaller = NnUNetCase(PLAIN_ID, _image(ct), _image(pet[:, :, :19]), _image(label))
    with pytest.raises(NnUNetError, match=r"pet size \(19, 16, 8\) differs from CT size \(20, 16, 8\)"):
        nnunet.write_case(dataset, smaller)
    shifted_label = NnUNetCase(PLAIN_ID, _image(ct), _image(pet), _image(label, origin=(-200.4, 150.25, -1000.0)))
    with pytest.raises(NnUNetError, match="label origin"):
        nnunet.write_case(dataset, shifted_label)
    assert not dataset.exists()


def test_geometry_mismatch_on_reading_names_the_file_and_the_ct_file(tmp_path):
    dataset = tmp_path / "Dataset901_autoPET"
    paths = nnunet.write_case(dataset, _case(SPACED_ID))
    _, _, label = _arrays(0)
    sitk.WriteImage(_image(label, origin=(-200.5, 150.25, -997.0)), str(paths["label"]))  # moved 3 mm
    with pytest.raises(NnUNetError) as raised:
        nnunet.read_case(dataset, SPACED_ID)
    assert str(raised.value) == (
        f"{paths['label']}: case {SPACED_ID!r}: label origin (-200.5, 150.25, -997.0) differs from CT origin "
        f"(-200.5, 150.25, -1000.0) ({paths['ct']}) (tolerance 0.0001 mm + 1e-06 of the value)"
    )
    ct, pet, _ = _arrays(0)
    sitk.WriteImage(_image(pet[:, :, :19]), str(paths["pet"]))
    with pytest.raises(NnUNetError) as raised:
        nnunet.read_case(dataset, SPACED_ID)
    assert str(raised.value) == (
        f"{paths['pet']}: case {SPACED_ID!r}: pet size (19, 16, 8) differs from CT size (20, 16, 8) ({paths['ct']})"
    )


def test_geometry_within_tolerance_is_accepted(tmp_path):
    dataset = tmp_path / "Dataset901_autoPET"
    nnunet.write_case(dataset, _case(PLAIN_ID, origin=(-200.5 + 5e-5, 150.25, -1000.0)))
    assert nnunet.list_cases(dataset) == [PLAIN_ID]


def test_a_label_one_float32_step_off_at_a_whole_body_z_is_read(tmp_path):
    """NIfTI keeps positions as float32: at z = -1500 mm one step is 1.2e-4 mm, over an absolute 1e-4 mm."""
    dataset = tmp_path / "Dataset901_autoPET"
    ct, pet, label = _arrays(0)
    origin = (-200.5, 150.25, -1500.0)
    case = NnUNetCase(SPACED_ID, _image(ct, origin=origin), _image(pet, origin=origin), _image(label, origin=origin))
    paths = nnunet.write_case(dataset, case)
    one_step = float(np.spacing(np.float32(1500.0)))
    assert one_step > nnunet.GEOMETRY_TOLERANCE_MM
    sitk.WriteImage(_image(label, origin=(-200.5, 150.25, -1500.0 - one_step)), str(paths["label"]))

    case = nnunet.read_case(dataset, SPACED_ID)

    np.testing.assert_array_equal(sitk.GetArrayFromImage(case.label), label)
    sitk.WriteImage(_image(label, origin=(-200.5, 150.25, -1500.05)), str(paths["label"]))  # 0.05 mm: another grid
    with pytest.raises(NnUNetError, match="label origin"):
        nnunet.read_case(dataset, SPACED_ID)


def test_non_finite_pet_and_out_of_range_ct_are_refused(tmp_path):
    dataset = tmp_path / "Dataset901_autoPET"
    ct, pet, label = _arrays(0)
    pet[1, 2, 3] = np.nan
    with pytest.raises(NnUNetError, match="PET contains NaN or infinite values"):
        nnunet.write_case(dataset, NnUNetCase(PLAIN_ID, _image(ct), _image(pet), _image(label)))
    huge_ct = ct.astype(np.float32)
    huge_ct[0, 0, 0] = 40000.0
    with pytest.raises(NnUNetError, match="CT values .* do not fit int16"):
        nnunet.write_case(dataset, NnUNetCase(PLAIN_ID, _image(huge_ct), _image(_arrays(0)[1]), _image(label)))
    assert not dataset.exists()


@pytest.mark.parametrize(
    "bad_id", ["fdg/0a1b", "..\\up", "a/../b", "", " leading", "trailing ", "tab\there", "new\nline", "..", "c:x"]
)
def test_bad_case_ids_are_refused(tmp_path, bad_id):
    with pytest.raises(NnUNetError, match="case id"):
        nnunet.check_case_id(bad_id)
    with pytest.raises(NnUNetError, match="case id"):
        nnunet.write_case(tmp_path / "ds", _case(bad_id))
    assert not (tmp_path / "ds").exists()


def test_good_case_ids_are_accepted():
    for case_id in (SPACED_ID, PLAIN_ID, "fdg_1_a   b", "PETCT_0011f3deaf"):
        assert nnunet.check_case_id(case_id) == case_id


def test_failed_write_leaves_no_partial_case(tmp_path):
    dataset = tmp_path / "Dataset901_autoPET"
    dataset.mkdir()
    (dataset / "labelsTr").write_text("a file where the label folder should be")
    with pytest.raises(NnUNetError, match="cannot write it under"):
        nnunet.write_case(dataset, _case(PLAIN_ID))
    assert _all_files(dataset) == ["labelsTr"]
    assert nnunet.list_cases(dataset) == []


def test_read_case_reports_missing_files(tmp_path):
    dataset = tmp_path / "Dataset901_autoPET"
    paths = nnunet.write_case(dataset, _case(PLAIN_ID))
    paths["pet"].unlink()
    with pytest.raises(NnUNetError, match=f"missing .*{PLAIN_ID}_0001.nii.gz"):
        nnunet.read_case(dataset, PLAIN_ID)


_VALID_JSON = {"channel_names": {"0": "CT"}, "labels": {"background": 0}, "numTraining": 1, "file_ending": ".nii.gz"}


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"channel_names": None}, "missing 'channel_names'"),
        ({"channel_names": {"0": "CT", "2": "PET"}}, "channel_names keys must be '0'..'1'"),
        ({"labels": {"background": 1, "tumor": 0}}, "labels must map 'background' to 0"),
        ({"labels": {"background": 0, "tumor": -1}}, "label 'tumor' must be a non-negative integer"),
        ({"numTraining": "2"}, "numTraining must be a non-negative integer"),
        ({"file_ending": "nii"}, "file_ending must be a string"),
    ],
)
def test_read_dataset_json_names_the_problem(tmp_path, changes, message):
    content = {key: value for key, value in dict(_VALID_JSON, **changes).items() if value is not None}
    (tmp_path / "dataset.json").write_text(json.dumps(content), encoding="utf-8")
    with pytest.raises(NnUNetError, match=message):
        nnunet.read_dataset_json(tmp_path)


def test_read_dataset_json_accepts_region_labels_and_refuses_broken_json(tmp_path):
    regions = {
        "channel_names": {"0": "CT", "1": "PET"},
        "labels": {"background": 0, "whole": [1, 2], "core": 2},
        "numTraining": 0,
        "file_ending": ".nii.gz",
    }
    (tmp_path / "dataset.json").write_text(json.dumps(regions), encoding="utf-8")
    assert nnunet.read_dataset_json(tmp_path) == regions
    (tmp_path / "dataset.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(NnUNetError, match="cannot be read as JSON"):
        nnunet.read_dataset_json(tmp_path)


# ----------------------------------------------------------------------------------------- splits


def test_splits_round_trip(tmp_path):
    assert nnunet.read_splits(tmp_path) is None
    folds = [
        {"train": [SPACED_ID, "fdg_2"], "val": [PLAIN_ID]},
        {"train": [PLAIN_ID, "fdg_2"], "val": [SPACED_ID]},
        {"train": [SPACED_ID, PLAIN_ID], "val": ["fdg_2"]},
    ]
    path = nnunet.write_splits(tmp_path, folds)
    assert path == tmp_path / "splits_final.json"
    assert json.loads(path.read_text(encoding="utf-8")) == folds
    assert nnunet.read_splits(tmp_path) == folds
    with pytest.raises(FileExistsError):
        nnunet.write_splits(tmp_path, folds[:1])
    nnunet.write_splits(tmp_path, folds[:1], overwrite=True)
    assert nnunet.read_splits(tmp_path) == folds[:1]


def test_bad_splits_are_refused(tmp_path):
    with pytest.raises(NnUNetError, match="fold 0 has cases in both train and val: a"):
        nnunet.write_splits(tmp_path, [{"train": ["a", "b"], "val": ["a"]}])
    with pytest.raises(NnUNetError, match="fold 1 must be an object with exactly 'train' and 'val'"):
        nnunet.write_splits(tmp_path, [{"train": ["a"], "val": ["b"]}, {"train": ["a"]}])
    with pytest.raises(NnUNetError, match="fold 0 val: case id 'x/y'"):
        nnunet.write_splits(tmp_path, [{"train": ["a"], "val": ["x/y"]}])
    assert not (tmp_path / "splits_final.json").exists()
    (tmp_path / "splits_final.json").write_text('{"train": [], "val": []}', encoding="utf-8")
    with pytest.raises(NnUNetError, match="splits must be a non-empty list of folds"):
        nnunet.read_splits(tmp_path)


# ------------------------------------------------------------------ parallel gzip (see also test_speedups.py)


def test_a_failed_write_leaves_no_file_of_the_case(tmp_path, monkeypatch):
    dataset = tmp_path / "Dataset901_autoPET"
    real_deflate = parallel_gzip._deflate_chunk

    def failing_for_pet(data, start, strategy):
        if strategy == parallel_gzip.zlib.Z_RLE:  # the float32 PET
            raise RuntimeError("disk full")
        return real_deflate(data, start, strategy)

    monkeypatch.setattr(parallel_gzip, "_deflate_chunk", failing_for_pet)
    with pytest.raises(NnUNetError, match="cannot write it .*disk full"):
        nnunet.write_case(dataset, _case(PLAIN_ID))
    assert _all_files(dataset) == []


def test_ct_is_rounded_half_up_slab_by_slab_as_one_volume(tmp_path, monkeypatch):
    monkeypatch.setattr(nnunet, "_SLAB_VOXELS", 3 * SHAPE[1] * SHAPE[2])  # slabs of 3 slices: 3 + 3 + 2
    rng = np.random.default_rng(4)
    ct = rng.uniform(-1100.0, 3000.0, size=SHAPE)
    ct[0, 0, :5] = [-0.5, 0.5, -1.5, 2.5, -1024.5]
    ct[7, 15, :3] = [-32768.4, 32767.4, -3.5]

    written = nnunet.write_case(tmp_path / "ds", NnUNetCase(PLAIN_ID, _image(ct), _image(_arrays(0)[1]), None))

    back = sitk.GetArrayFromImage(sitk.ReadImage(str(written["ct"])))
    np.testing.assert_array_equal(back, np.floor(ct + 0.5).astype(np.int16))
    assert back[0, 0, :5].tolist() == [0, 1, -1, 3, -1024]
    assert back[7, 15, :3].tolist() == [-32768, 32767, -3]


def test_out_of_range_ct_is_refused_with_the_range_of_the_whole_volume(tmp_path, monkeypatch):
    monkeypatch.setattr(nnunet, "_SLAB_VOXELS", SHAPE[1] * SHAPE[2])  # one slice per slab
    ct = np.zeros(SHAPE, np.float32)
    ct[1, 0, 0], ct[6, 0, 0] = -40000.0, 50000.0
    with pytest.raises(NnUNetError, match=r"CT values -40000\.\.50000 HU do not fit int16"):
        nnunet.write_case(tmp_path / "ds", NnUNetCase(PLAIN_ID, _image(ct), _image(_arrays(0)[1]), None))
    ct[3, 2, 1] = np.inf
    with pytest.raises(NnUNetError, match="CT contains NaN or infinite values"):
        nnunet.write_case(tmp_path / "ds", NnUNetCase(PLAIN_ID, _image(ct), _image(_arrays(0)[1]), None))
