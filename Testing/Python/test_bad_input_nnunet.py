"""Bad NIfTI / nnU-Net / VOC input (issue 18): each defect built from a generated study is refused
by name, never read as if it were fine.

- A cut-short or damaged ``.nii.gz`` (cut to 90%, 64 flipped bytes in the deflate stream, a gzip of
  a NIfTI shorter than its header says, an uncompressed ``.nii`` cut short, bytes after the gzip
  data) is refused by ``evaluate`` (exit 2), by ``nnunet.read_case`` (which ``predict``, ``convert``
  and the module use) and by the training reader; whole multi-member gzip files are read.
- A file longer than its header describes, or with a wrong bitpix (nifti1_io sizes voxels by the
  datatype), is read as every NIfTI reader reads it; bytes after the gzip stream are still refused.
- The channel order comes from ``channel_names`` in ``dataset.json`` (CT, PET/PT/SUV/FDG/PSMA, or
  nnU-Net's normalisation scheme names); names that cannot tell are refused, and so is a "PET"
  channel holding CT values or Bq/mL, or a "CT" channel without air.
- A NaN voxel in a label (SimpleITK reads it as 0) is refused; in a CT or PET too, saying what to
  replace it by.
- A zero-width VOC box is skipped with a note, as other unusable boxes are.
"""

from __future__ import annotations

import csv
import gzip
import json
import shutil
import zlib
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from PETCTLesionsLib.cli import main
from PETCTLesionsLib.formats import nifti, nnunet, parallel_gzip, voc
from PETCTLesionsLib.formats.nifti import NiftiError
from PETCTLesionsLib.formats.nnunet import NnUNetError
from PETCTLesionsLib.synthetic.synth import DATASET_FOLDER, generate_dataset


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> Path:
    """One small generated autoPET-style study (CT, PET, label), written once for the module."""
    out = tmp_path_factory.mktemp("generated")
    generate_dataset(out, cases=1, seed=18, size="small", flavour="autopet")
    return out


@pytest.fixture
def dataset(generated, tmp_path) -> Path:
    """A fresh copy of the generated nnU-Net dataset for one test to damage."""
    return Path(shutil.copytree(generated / "nnUNet_raw" / DATASET_FOLDER, tmp_path / DATASET_FOLDER))


def _case_id(dataset: Path) -> str:
    (case_id,) = nnunet.list_cases(dataset)
    return case_id


def _paths(dataset: Path):
    return nnunet.case_paths(dataset, _case_id(dataset))


# ----------------------------------------------------------------------------------------- damages


def _cut_to_90_percent(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * 0.9)])


def _flip_64_deflate_bytes(path: Path) -> None:
    data = bytearray(path.read_bytes())
    rng = np.random.default_rng(18)
    # Inside the deflate stream: after the 10-byte gzip header, before the 8-byte CRC/size trailer.
    for position in rng.choice(np.arange(10, len(data) - 8), 64, replace=False):
        data[position] ^= 0xFF
    path.write_bytes(bytes(data))


def _gzip_of_a_short_nifti(path: Path) -> None:
    """A valid gzip (CRC and size right) of a NIfTI that lacks its last 1000 bytes of voxels."""
    path.write_bytes(gzip.compress(gzip.decompress(path.read_bytes())[:-1000]))


def _uncompressed_nifti_cut_short(path: Path) -> None:
    path.write_bytes(gzip.decompress(path.read_bytes())[:-1000])


def _garbage_after_the_gzip_data(path: Path) -> None:
    path.write_bytes(path.read_bytes() + b"\x01garbage")


DAMAGES = {
    "cut to 90%": (_cut_to_90_percent, "the file is cut short: its gzip data stop after"),
    "64 flipped bytes": (_flip_64_deflate_bytes, "the file is damaged: its "),
    "gzip of a short NIfTI": (_gzip_of_a_short_nifti, "the file is cut short: its NIfTI header describes"),
    "uncompressed NIfTI cut short": (
        _uncompressed_nifti_cut_short,
        "the file is cut short: its NIfTI header describes",
    ),
    "garbage after the gzip data": (_garbage_after_the_gzip_data, "bytes follow its gzip data and are not gzip"),
}


@pytest.mark.parametrize("damage", list(DAMAGES))
@pytest.mark.parametrize("channel", ["label", "pet", "ct"])
def test_read_case_refuses_a_damaged_file_naming_it_and_the_damage(dataset, channel, damage):
    damage_file, reason = DAMAGES[damage]
    path = _paths(dataset)[channel]
    damage_file(path)
    with pytest.raises(NnUNetError) as refused:
        nnunet.read_case(dataset, _case_id(dataset))
    message = str(refused.value)
    assert message.startswith(f"{path}: ") and reason in message, message
    if "cut short" in reason or "damaged" in reason:
        assert message.endswith("copy or export it again from its source")


def test_the_damages_say_exactly_what_is_wrong(dataset):
    """The sizes in the messages are the real ones (the label: uint8 voxels after SimpleITK's 352 header bytes)."""
    paths = _paths(dataset)
    i, j, k = sitk.ReadImage(str(paths["label"])).GetSize()
    _gzip_of_a_short_nifti(paths["label"])
    expected = 352 + i * j * k
    with pytest.raises(NiftiError, match="cut short") as refused:
        nifti.read_nifti(paths["label"])
    assert str(refused.value) == (
        f"{paths['label']}: the file is cut short: its NIfTI header describes {expected} bytes (352 + {i} x {j} x {k} "
        f"voxels of 1 byte(s)) but it holds {expected - 1000}; copy or export it again from its source"
    )
    size = paths["ct"].stat().st_size
    _cut_to_90_percent(paths["ct"])
    with pytest.raises(NiftiError) as refused:
        nifti.read_nifti(paths["ct"])
    assert f"its gzip data stop after {int(size * 0.9)} bytes, before the end of the compressed stream" in str(
        refused.value
    )
    # Flipped bytes where the deflate stream holds the NIfTI header: the damage is named, not "not a NIfTI file".
    data = bytearray(paths["pet"].read_bytes())
    for position in range(12, 20):
        data[position] ^= 0xFF
    header_damaged = paths["pet"].with_name("header damaged.nii.gz")
    header_damaged.write_bytes(bytes(data))
    with pytest.raises(NiftiError, match=r"header damaged\.nii\.gz: the file is damaged: its "):
        nifti.read_nifti(header_damaged)
    # A flipped byte in the CRC-32 field itself: the data are whole but do not match their check.
    data = bytearray(paths["pet"].read_bytes())
    data[-8] ^= 0x01
    paths["pet"].write_bytes(bytes(data))
    with pytest.raises(NiftiError, match="the file is damaged: its data do not match their gzip CRC-32 check"):
        nifti.read_nifti(paths["pet"])


def test_evaluate_refuses_damaged_labels_with_exit_2(dataset, tmp_path, capsys):
    """Before: a label cut to 90% scored Dice 0.930 and exit 0."""
    reference = _paths(dataset)["label"]
    for name, (damage_file, reason) in DAMAGES.items():
        suffix = ".nii" if name == "uncompressed NIfTI cut short" else ".nii.gz"
        prediction = tmp_path / f"prediction {len(name)}{suffix}"
        shutil.copyfile(reference, prediction)
        damage_file(prediction)
        assert main(["evaluate", "--pred", str(prediction), "--ref", str(reference)]) == 2, name
        captured = capsys.readouterr()
        assert captured.out == ""  # no table
        assert captured.err.startswith(f"petct-lesions evaluate: error: {prediction}: "), captured.err
        assert reason in captured.err, (name, captured.err)
    # The same file whole: evaluated.
    assert main(["evaluate", "--pred", str(reference), "--ref", str(reference), "--json"]) == 0
    assert '"dice": 1.0' in capsys.readouterr().out


@pytest.mark.slicer
def test_convert_refuses_a_label_cut_short_and_writes_nothing(dataset, tmp_path, capsys):
    """Before: convert wrote the damaged label as a training label (763 of 877 voxels), exit 0."""
    path = _paths(dataset)["label"]
    _cut_to_90_percent(path)
    out = tmp_path / "converted"
    assert main(["convert", "--nnunet", str(dataset), "--case", _case_id(dataset), "--out", str(out)]) == 2
    assert capsys.readouterr().err.startswith(f"petct-lesions convert: error: {path}: the file is cut short: ")
    assert not out.exists() or not any(path.is_file() for path in out.rglob("*"))


def test_the_training_reader_refuses_a_damaged_channel(dataset):
    training_data = pytest.importorskip("PETCTLesionsLib.training.data")
    path = _paths(dataset)["pet"]
    _flip_64_deflate_bytes(path)
    with pytest.raises(NnUNetError, match="the file is damaged") as refused:
        training_data.nnunet_study(str(dataset), _case_id(dataset))
    assert str(refused.value).startswith(f"{path}: ")


def test_whole_files_in_other_gzip_layouts_are_read_voxel_identical(dataset):
    """Several gzip members (``cat a.gz b.gz``), NUL padding after the data, an uncompressed file
    named .nii.gz: all whole, all read as SimpleITK reads the original."""
    paths = _paths(dataset)
    original = sitk.GetArrayFromImage(sitk.ReadImage(str(paths["pet"])))
    raw = gzip.decompress(paths["pet"].read_bytes())
    # This project's own writer writes one gzip member.
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    assert inflater.decompress(paths["pet"].read_bytes()) == raw and inflater.eof and inflater.unused_data == b""
    third = len(raw) // 3
    layouts = {
        "members": b"".join(gzip.compress(raw[i : i + third]) for i in range(0, len(raw), third)),
        "padded": gzip.compress(raw) + bytes(4096),
        "uncompressed": raw,
    }
    for name, content in layouts.items():
        paths["pet"].write_bytes(content)
        read = nnunet.read_case(dataset, _case_id(dataset))
        np.testing.assert_array_equal(sitk.GetArrayFromImage(read.pet), original, err_msg=name)


# ----------------------------------------------------------------------------------------- NaN


def _label_with_a_nan_voxel(path: Path) -> None:
    label = sitk.ReadImage(str(path))
    values = sitk.GetArrayFromImage(label).astype(np.float32)
    values[10, 50, 60] = np.nan
    image = sitk.GetImageFromArray(values)
    image.CopyInformation(label)
    parallel_gzip.write_nifti_gz(image, path)


def test_a_nan_voxel_in_a_label_is_refused_by_every_label_reader(dataset, tmp_path, capsys):
    """Before: SimpleITK read the NaN as 0, and read_case, evaluate and training took the label."""
    path = _paths(dataset)["label"]
    whole = tmp_path / "whole.nii.gz"
    shutil.copyfile(path, whole)
    _label_with_a_nan_voxel(path)
    expected = (
        f"{path}: 1 voxel(s) are NaN or infinite (the first at voxel (60, 50, 10)), which SimpleITK would read as 0"
    )
    with pytest.raises(NnUNetError) as refused:
        nnunet.read_case(dataset, _case_id(dataset))
    assert str(refused.value).startswith(expected)
    assert main(["evaluate", "--pred", str(path), "--ref", str(whole)]) == 2
    assert capsys.readouterr().err.startswith(f"petct-lesions evaluate: error: {expected}")
    training_data = pytest.importorskip("PETCTLesionsLib.training.data")
    with pytest.raises(NnUNetError, match="NaN or infinite"):
        training_data.nnunet_study(str(dataset), _case_id(dataset))


# ----------------------------------------------------------------------------------------- channels


def _swap_channel_files(dataset: Path) -> None:
    paths = _paths(dataset)
    swap = paths["ct"].with_name("swap.tmp")
    paths["ct"].rename(swap)
    paths["pet"].rename(paths["ct"])
    swap.rename(paths["pet"])


def _set_channel_names(dataset: Path, channel_names) -> Path:
    path = dataset / "dataset.json"
    content = json.loads(path.read_text())
    content["channel_names"] = channel_names
    path.write_text(json.dumps(content))
    return path


def _arrays(case):
    return sitk.GetArrayFromImage(case.ct), sitk.GetArrayFromImage(case.pet)


@pytest.mark.parametrize("channel_names", [{"0": "PET", "1": "CT"}, {"0": " pet", "1": "Ct"}])
def test_channels_are_taken_in_the_order_dataset_json_gives(dataset, channel_names):
    case_id = _case_id(dataset)
    ct, pet = _arrays(nnunet.read_case(dataset, case_id))
    _swap_channel_files(dataset)
    _set_channel_names(dataset, channel_names)
    read_ct, read_pet = _arrays(nnunet.read_case(dataset, case_id))
    np.testing.assert_array_equal(read_ct, ct)
    np.testing.assert_array_equal(read_pet, pet)
    assert nnunet.channel_suffixes(dataset) == {"pet": "_0000", "ct": "_0001"}
    training_data = pytest.importorskip("PETCTLesionsLib.training.data")
    study = training_data.nnunet_study(str(dataset), case_id)
    np.testing.assert_array_equal(study.pet_suv, pet)
    np.testing.assert_array_equal(study.ct_hu_on_pet, ct)


@pytest.mark.torch
def test_predict_reads_swapped_channels_that_dataset_json_names(dataset, generated, tmp_path, capsys):
    """Before: HU read as SUV (in the issue 95 lesions, "SUVmax 934", SUVpeak -59; here SUVmax 60)."""
    pet_max = float(sitk.GetArrayViewFromImage(sitk.ReadImage(str(_paths(dataset)["pet"]))).max())
    _swap_channel_files(dataset)
    _set_channel_names(dataset, {"0": "PET", "1": "CT"})
    out = tmp_path / "predicted"
    assert main(["predict", str(dataset), "--out", str(out), "--device", "cpu", "--no-pictures"]) == 0
    assert "lesion(s) on cpu" in capsys.readouterr().out
    with open(out / f"{_case_id(dataset)}_lesions.csv", newline="") as table:
        found = list(csv.DictReader(table))
    for lesion in found:  # measured on the PET: SUVs within the PET's own range
        assert 0.0 < float(lesion["suvbw_peak_g_ml"]) <= float(lesion["suvbw_max_g_ml"]) <= pet_max
    # The largest generated lesion is found, with the SUVmax the generator put into it.
    (truth_file,) = (generated / "truth").glob("*.json")
    largest = max(json.loads(truth_file.read_text())["lesions"], key=lambda lesion: lesion["pet_voxels"])
    assert any(abs(float(lesion["suvbw_max_g_ml"]) - largest["suv_max"]) < 1e-3 for lesion in found)


def test_swapped_channels_that_dataset_json_does_not_name_are_refused(dataset):
    case_id = _case_id(dataset)
    _swap_channel_files(dataset)
    paths = _paths(dataset)
    with pytest.raises(NnUNetError) as refused:
        nnunet.read_case(dataset, case_id)
    message = str(refused.value)
    assert message.startswith(f"{paths['ct']}: read as the CT by channel_names in {dataset / 'dataset.json'}, but ")
    assert "of its voxels are below -100" in message and "the CT and PET files are swapped" in message
    training_data = pytest.importorskip("PETCTLesionsLib.training.data")
    with pytest.raises(NnUNetError, match="swapped"):
        training_data.nnunet_study(str(dataset), case_id)


def test_the_published_both_ct_variant_keeps_the_autopet_order_and_is_checked(dataset):
    case_id = _case_id(dataset)
    _set_channel_names(dataset, {"0": "CT", "1": "CT"})
    ct, pet = _arrays(nnunet.read_case(dataset, case_id))
    assert ct.min() <= -1000 and pet.min() >= 0
    _swap_channel_files(dataset)
    with pytest.raises(NnUNetError, match=r"_0000\.nii\.gz: read as the CT .* but none of its voxels are below -100"):
        nnunet.read_case(dataset, case_id)


def test_a_pet_channel_holding_ct_values_is_refused(dataset):
    """Both channels CT (a copy gone wrong): the PET is the one refused, with the share of air it holds."""
    paths = _paths(dataset)
    shutil.copyfile(paths["ct"], paths["pet"])
    with pytest.raises(NnUNetError) as refused:
        nnunet.read_case(dataset, _case_id(dataset))
    message = str(refused.value)
    assert message.startswith(f"{paths['pet']}: read as the PET by channel_names in ")
    assert "% of its voxels are below -100, which no PET in SUV has" in message


@pytest.mark.parametrize(
    "channel_names, problem",
    [
        ({"0": "PET", "1": "PET"}, "has two PET channels and no CT"),
        ({"0": "CT", "1": "MR"}, "'MR' is neither CT nor PET"),
        ({"0": "CT", "1": "PET", "2": "CT"}, "has 3 channel(s); a PET/CT case has two, CT and PET"),
        ({"0": "CT"}, "has 1 channel(s)"),
        ({"0": "CT", "2": "PET"}, "channel_names keys must be '0'..'1'"),
        ({"0": "CT", "1": 1}, "channel_names values must be non-empty strings"),
        (["CT", "PET"], "channel_names must be a non-empty object"),
        (None, "missing 'channel_names'"),
    ],
)
def test_a_dataset_json_that_cannot_tell_the_channels_is_refused(dataset, channel_names, problem):
    path = dataset / "dataset.json"
    if channel_names is None:
        content = json.loads(path.read_text())
        del content["channel_names"]
        path.write_text(json.dumps(content))
    else:
        _set_channel_names(dataset, channel_names)
    with pytest.raises(NnUNetError) as refused:
        nnunet.read_case(dataset, _case_id(dataset))
    assert str(refused.value).startswith(f"{path}: ") and problem in str(refused.value)


def test_writing_into_a_dataset_whose_channels_are_swapped_is_refused_before_any_file(dataset, tmp_path):
    """write_case keeps _0000 CT, _0001 PET: a dataset.json saying otherwise would then be wrong."""
    case = nnunet.read_case(dataset, _case_id(dataset))
    _set_channel_names(dataset, {"0": "PET", "1": "CT"})
    before = sorted(p.name for p in dataset.rglob("*"))
    case.case_id = "another case"
    with pytest.raises(
        NnUNetError,
        match=r"channel_names .* puts the PET first, but cases are written CT first \(_0000 CT, _0001 PET\)",
    ):
        nnunet.write_case(dataset, case)
    assert sorted(p.name for p in dataset.rglob("*")) == before


# ----------------------------------------------------------------------------------------- VOC


def test_a_zero_width_voc_box_is_skipped_with_a_note(tmp_path):
    """Before: xmin == xmax was read as the one column xmin (widened to 1 px), silently."""
    (case,) = generate_dataset(tmp_path, cases=1, seed=3, size="small", flavour="lung", n_lesions=2)
    path = sorted(case.voc_files)[0]
    first = voc.parse_voc_xml(path).boxes[0]
    text = path.read_text()
    path.write_text(text.replace(f"<xmax>{first.xmax}</xmax>", f"<xmax>{first.xmin}</xmax>", 1))
    annotation, problems = voc.read_voc_file(path)
    assert problems == [
        f"{path}: object 1 ({first.name}) has zero width (xmin {first.xmin}, xmax {first.xmin}, ymin {first.ymin}, "
        f"ymax {first.ymax}): it covers no pixel; skipped"
    ]
    assert len(annotation.boxes) == text.count("<object>") - 1
    annotations, folder_problems = voc.read_voc_folder(path.parent)
    assert problems[0] in folder_problems
    if not annotation.boxes:  # the file's only box: the file is skipped, never read as a lesion-free slice
        assert f"{path}: no usable box left; file skipped" in folder_problems
        assert annotation.sop_instance_uid not in {a.sop_instance_uid for a in annotations}
    # Zero height alike.
    box = voc.VocBox("A", 3, 7, 9, 7)
    assert box.problem(512, 512) == "has zero height (xmin 3, xmax 9, ymin 7, ymax 7): it covers no pixel"


def test_a_temporary_label_left_by_a_killed_writer_is_not_counted_as_a_case(tmp_path):
    """Before: update_dataset_json counted every labelsTr/*.nii.gz, a killed writer's hidden
    temporary file (fileio.atomic_output's ``.<name>.<random>.tmp.nii.gz``) included."""
    labels = tmp_path / "labelsTr"
    labels.mkdir()
    for name in ("case_a.nii.gz", "case_b.nii.gz", ".case_c.x1y2.tmp.nii.gz"):
        (labels / name).write_bytes(b"")

    nnunet.update_dataset_json(tmp_path, dataset_name="Dataset990_Hidden")

    assert json.loads((tmp_path / "dataset.json").read_text())["numTraining"] == 2


# ----------------------------------------------------------------------------------------- channel names
#
# nnU-Net v2 picks a channel's normalisation by its name (CT -> CTNormalization; noNorm, zscore,
# rescale_to_0_1, rgb_to_0_1; anything else -> zscore), so real PET/CT datasets name their PET channel
# many ways. The case's files are swapped where the names put the PET first.

AUTOPET_ORDER = {"ct": "_0000", "pet": "_0001"}
PET_FIRST = {"pet": "_0000", "ct": "_0001"}


@pytest.mark.parametrize(
    "channel_names, suffixes",
    [
        ({"0": "CT", "1": "PT"}, AUTOPET_ORDER),
        ({"0": "CT", "1": "noNorm"}, AUTOPET_ORDER),
        ({"0": "CT", "1": "zscore"}, AUTOPET_ORDER),
        ({"0": "CT", "1": "SUV"}, AUTOPET_ORDER),
        ({"0": "CT", "1": "rescale_to_0_1"}, AUTOPET_ORDER),
        ({"0": " ct ", "1": "FDG-PET"}, AUTOPET_ORDER),
        ({"0": "CT", "1": "pet_suv"}, AUTOPET_ORDER),
        ({"0": "noNorm", "1": "zscore"}, AUTOPET_ORDER),  # two scheme names: the autoPET order
        ({"0": "PSMA", "1": "CT"}, PET_FIRST),
        ({"0": "zscore", "1": "CT"}, PET_FIRST),  # the CT is the CT, the other the PET
        ({"0": "PT", "1": "noNorm"}, PET_FIRST),  # the PET is the PET, the other the CT
        ({"0": "rgb_to_0_1", "1": "FDG"}, {"ct": "_0000", "pet": "_0001"}),
    ],
)
def test_common_channel_names_are_read(dataset, channel_names, suffixes):
    """Before: each was refused ("'PT' is neither CT nor PET; name the channels so")."""
    case_id = _case_id(dataset)
    ct, pet = _arrays(nnunet.read_case(dataset, case_id))
    if suffixes == PET_FIRST:
        _swap_channel_files(dataset)
    _set_channel_names(dataset, channel_names)
    assert nnunet.channel_suffixes(dataset) == suffixes
    read_ct, read_pet = _arrays(nnunet.read_case(dataset, case_id))
    np.testing.assert_array_equal(read_ct, ct)
    np.testing.assert_array_equal(read_pet, pet)


@pytest.mark.parametrize(
    "channel_names, problem",
    [
        ({"0": "CT", "1": "T1"}, 'channel_names {"0": "CT", "1": "T1"}: \'T1\' is neither CT nor PET'),
        ({"0": "ADC", "1": "zscore"}, "'ADC' is neither CT nor PET"),
        ({"0": "MR", "1": "PET"}, "'MR' is neither CT nor PET"),
        ({"0": "PET", "1": "SUV"}, "has two PET channels and no CT"),
        ({"0": "CT", "1": "PET", "2": "zscore"}, "has 3 channel(s); a PET/CT case has two, CT and PET"),
    ],
)
def test_channel_names_that_are_no_ct_pet_pair_are_refused(dataset, channel_names, problem):
    path = _set_channel_names(dataset, channel_names)
    with pytest.raises(NnUNetError) as refused:
        nnunet.read_case(dataset, _case_id(dataset))
    assert str(refused.value).startswith(f"{path}: ") and problem in str(refused.value), str(refused.value)


@pytest.mark.parametrize(
    "channel_names",
    [
        {"0": "CT", "1": "SUV"},
        {"0": "CT", "1": "zscore"},
        {"0": "noNorm", "1": "rescale_to_0_1"},
        {"0": "ct", "1": "PT"},
    ],
)
def test_cases_are_written_into_a_dataset_whose_names_mean_ct_then_pet(dataset, channel_names):
    """Before: {"0": "CT", "1": "SUV"} and the like were refused as "not a CT/PET layout"."""
    case = nnunet.read_case(dataset, _case_id(dataset))
    path = _set_channel_names(dataset, channel_names)
    case.case_id = "another case"
    nnunet.write_case(dataset, case)
    assert json.loads(path.read_text())["channel_names"] == channel_names  # kept as the user wrote them
    np.testing.assert_array_equal(_arrays(nnunet.read_case(dataset, "another case"))[1], _arrays(case)[1])


@pytest.mark.parametrize("channel_names", [{"0": "zscore", "1": "CT"}, {"0": "SUV", "1": "noNorm"}])
def test_writing_into_a_dataset_whose_names_put_the_pet_first_is_refused(dataset, channel_names):
    case = nnunet.read_case(dataset, _case_id(dataset))
    _set_channel_names(dataset, channel_names)
    before = sorted(p.name for p in dataset.rglob("*"))
    case.case_id = "another case"
    with pytest.raises(NnUNetError, match=r"puts the PET first, but cases are written CT first"):
        nnunet.write_case(dataset, case)
    assert sorted(p.name for p in dataset.rglob("*")) == before


# ----------------------------------------------------------------------------------------- PET not in SUV

BQ_PER_ML_PER_SUV = 5000.0  # 350 MBq in 70 kg: SUV 1 is 5000 Bq/mL


def _rewrite(path: Path, change) -> np.ndarray:
    """Write ``change(values)`` (as float32) over the image at ``path``, on its grid; returns the new values."""
    image = sitk.ReadImage(str(path))
    values = change(sitk.GetArrayFromImage(image).astype(np.float32)).astype(np.float32)
    changed = sitk.GetImageFromArray(values)
    changed.CopyInformation(image)
    parallel_gzip.write_nifti_gz(changed, path)
    return values


def test_a_pet_in_bq_per_ml_is_refused(dataset):
    """Before: read as SUV, silently (SUVmax 127,000)."""
    path = _paths(dataset)["pet"]
    _rewrite(path, lambda pet: pet * BQ_PER_ML_PER_SUV)
    with pytest.raises(NnUNetError) as refused:
        nnunet.read_case(dataset, _case_id(dataset))
    message = str(refused.value)
    assert message.startswith(f"{path}: read as the PET by channel_names in "), message
    assert "% of its voxels are above 100, which in a PET in SUV only the bladder, kidneys" in message
    assert "not in SUV (Bq/mL?)" in message


def test_a_pet_in_bq_per_ml_with_negative_noise_is_not_called_a_swap(dataset):
    """Filtered back-projection leaves noise around 0 outside the body, a third of it below -100 Bq/mL.
    Before: "... below -100, which no PET in SUV has ...: the CT and PET files are swapped"."""
    path = _paths(dataset)["pet"]
    noise = np.random.default_rng(18)
    values = _rewrite(path, lambda pet: pet * BQ_PER_ML_PER_SUV + noise.normal(0.0, 300.0, pet.shape))
    assert (values < -100).mean() > 0.2  # as much "air" as a CT would have
    with pytest.raises(NnUNetError) as refused:
        nnunet.read_case(dataset, _case_id(dataset))
    message = str(refused.value)
    assert "not in SUV (Bq/mL?)" in message and "swapped" not in message, message


def test_a_pet_with_a_few_voxels_above_suv_100_is_read(dataset):
    """A hot bladder: under 1% of the voxels above SUV 100 is SUV."""
    path = _paths(dataset)["pet"]

    def hot_bladder(pet):
        pet.reshape(-1)[: int(pet.size * 0.009)] = 400.0
        return pet

    values = _rewrite(path, hot_bladder)
    np.testing.assert_array_equal(_arrays(nnunet.read_case(dataset, _case_id(dataset)))[1], values)


# ----------------------------------------------------------------------------------------- NIfTI sizes


def _set_bitpix(path: Path, bitpix: int) -> bytes:
    """The file with another bitpix in its NIfTI-1 header (ITK writes little endian); the datatype stays."""
    content = bytearray(gzip.decompress(path.read_bytes()))
    content[72:74] = bitpix.to_bytes(2, "little")
    path.write_bytes(gzip.compress(bytes(content)))
    return bytes(content)


@pytest.mark.parametrize("channel, bitpix", [("pet", 16), ("label", 32), ("ct", 0)])
def test_a_wrong_bitpix_is_read_as_nifti_readers_do_from_the_datatype(dataset, channel, bitpix):
    """nifti1_io sizes voxels by the datatype and ignores bitpix. Before: "the file is damaged: its NIfTI header
    describes ... voxels of 2 byte(s)" (or "0 bits per voxel"), for a file SimpleITK reads right."""
    path = _paths(dataset)[channel]
    original = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
    _set_bitpix(path, bitpix)
    case = nnunet.read_case(dataset, _case_id(dataset))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(getattr(case, channel)), original)


def test_a_nan_in_a_float32_file_with_a_wrong_bitpix_is_still_found(dataset):
    """Before: bitpix 16 made the float32 PET no float to scan, and (with the size check gone) its NaN read as 0."""
    path = _paths(dataset)["pet"]
    _rewrite(path, lambda pet: np.where(np.arange(pet.size).reshape(pet.shape) == 1234, np.nan, pet))
    _set_bitpix(path, 16)
    with pytest.raises(NiftiError, match=r"1 voxel\(s\) are NaN or infinite"):
        nifti.read_nifti(path)


@pytest.mark.parametrize("compressed", [False, True])
def test_a_file_longer_than_its_header_describes_is_read(dataset, compressed):
    """NIfTI readers read the voxels the header describes and ignore bytes after them.
    Before: "the file is damaged: its NIfTI header describes N bytes ... but it holds N + 80"."""
    paths = _paths(dataset)
    for channel in ("ct", "pet", "label"):
        content = gzip.decompress(paths[channel].read_bytes()) + b"\x01trailing" * 8
        paths[channel].write_bytes(gzip.compress(content) if compressed else content)
    ct, pet = _arrays(nnunet.read_case(dataset, _case_id(dataset)))
    assert ct.min() <= -1000 and pet.max() > 1


def test_bytes_after_the_gzip_stream_are_still_refused(dataset):
    """A damaged or concatenated file: after one whole gzip member, bytes that are not gzip (or a gzip cut short)."""
    path = _paths(dataset)["pet"]
    whole = path.read_bytes()
    for tail, problem in [
        (b"\x01", "bytes follow its gzip data and are not gzip"),
        (b"\x00\x00\x00\x00x", "bytes follow its gzip data and are not gzip"),
        (b"\x1f\x8b", "the file is cut short: its gzip data stop after"),
    ]:
        path.write_bytes(whole + tail)
        with pytest.raises(NiftiError, match=problem):
            nifti.read_nifti(path)


# ----------------------------------------------------------------------------------------- NaN in images


@pytest.mark.parametrize(
    "channel, fix",
    [
        ("pet", "replace NaN by 0 where the file was made (e.g. where it masks voxels outside the field of view)"),
        ("ct", "replace NaN by -1000 (air) where the file was made"),
    ],
)
def test_nan_in_an_image_channel_is_refused_saying_how_to_fix_it(dataset, channel, fix):
    """SimpleITK (2.2 and 2.5) reads a NaN in a NIfTI file as 0: SUV 0, or water in a CT.
    Before: "... replace them where the file was made", without what to put there."""
    path = _paths(dataset)[channel]
    _rewrite(path, lambda values: np.where(np.arange(values.size).reshape(values.shape) < 3 * 96, np.nan, values))
    with pytest.raises(NnUNetError) as refused:
        nnunet.read_case(dataset, _case_id(dataset))
    message = str(refused.value)
    assert message.startswith(f"{path}: 288 voxel(s) are NaN or infinite (the first at voxel (0, 0, 0)), which"), (
        message
    )
    assert message.endswith(fix), message
