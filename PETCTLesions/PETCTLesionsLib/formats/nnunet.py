"""nnU-Net v2 raw datasets in the autoPET layout (PSMA-FDG-PET-CT-Lesions).

One training case ``<id>`` is three NIfTI files on one grid (the PET grid)::

    imagesTr/<id>_0000.nii.gz   CT resampled onto the PET grid, HU, stored as int16
    imagesTr/<id>_0001.nii.gz   PET, SUV (body weight), stored as float32
    labelsTr/<id>.nii.gz        lesion mask, 0 background / 1 tumor, stored as uint8

A case without a label is a test case and goes to ``imagesTs/``. The files are standard gzip
(one member), deflated on all cores (:func:`.parallel_gzip.write_nifti_gz`). ``dataset.json`` holds
``channel_names``, ``labels``, ``numTraining`` and ``file_ending``; ``splits_final.json`` is a
list of ``{"train": [...], "val": [...]}`` folds. autoPET case ids contain spaces, sometimes
two in a row; every function here takes them as they are.

Reading a case takes the CT and PET channels in the order ``channel_names`` gives (other
datasets put PET first; see :func:`channel_suffixes` for the names understood) and checks what
SimpleITK does not: that each file is whole and intact (:func:`.nifti.read_nifti`: gzip CRC and length,
the header's byte count, no NaN) and that the CT and PET channels hold CT values in HU and PET
values in SUV (:func:`check_channel_values`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
import SimpleITK as sitk

from ..errors import InputError, OutputExistsError
from ..fileio import atomic_output, atomic_write_text
from ..lesions import is_binary
from .nifti import NiftiError, read_nifti
from .parallel_gzip import usable_cores, write_nifti_gz_files

CHANNEL_NAMES: Dict[str, str] = {"0": "CT", "1": "PET"}
LABELS: Dict[str, int] = {"background": 0, "tumor": 1}
FILE_ENDING = ".nii.gz"
DATASET_JSON = "dataset.json"
SPLITS_JSON = "splits_final.json"
# Channels and label must share one grid: 1e-4 mm plus 1e-6 of the value. NIfTI stores positions
# as float32, whose step is already 1.2e-4 mm at a whole-body z of 1000-2000 mm, so files that
# different tools wrote from one grid may differ by a few steps; 1e-6 allows about ten.
GEOMETRY_TOLERANCE_MM = 1e-4
GEOMETRY_RELATIVE_TOLERANCE = 1e-6
_CHANNEL_SUFFIX = {"ct": "_0000", "pet": "_0001"}
_UNSAFE_ID_CHARS = re.compile(r'[\\/:*?"<>|\x00-\x1f\x7f]')
_INT16_RANGE = (-32768, 32767)
_SLAB_VOXELS = 1 << 20  # voxels converted at a time: float64 temporaries stay in cache, not 400 MB


class NnUNetError(InputError):
    """An nnU-Net raw dataset, case or file is unusable; the message names what and why."""


@dataclass
class NnUNetCase:
    """One case: CT (HU) and PET (SUV) on the same grid, plus the lesion label when known."""

    case_id: str
    ct: sitk.Image
    pet: sitk.Image
    label: Optional[sitk.Image]


def check_case_id(case_id: str) -> str:
    """Return ``case_id`` when it can name nnU-Net files; raise :class:`NnUNetError` otherwise.

    Inner spaces (also several in a row) are allowed; empty ids, leading or trailing spaces,
    path separators, characters Windows refuses in file names and control codes are not.
    """
    if not isinstance(case_id, str) or not case_id:
        raise NnUNetError(f"case id {case_id!r} is empty")
    if case_id != case_id.strip():
        raise NnUNetError(f"case id {case_id!r} starts or ends with white space")
    bad = _UNSAFE_ID_CHARS.search(case_id)
    if bad:
        raise NnUNetError(f"case id {case_id!r} contains {bad.group()!r}, which cannot be part of a file name")
    if set(case_id) <= {"."}:
        raise NnUNetError(f"case id {case_id!r} cannot be used as a file name")
    return case_id


_DATASET_FOLDER = re.compile(r"^Dataset\d{3}_[A-Za-z0-9_.-]+$")


def check_dataset_folder_name(name: str) -> str:
    """Return ``name`` when it is an nnU-Net v2 dataset folder name (``Dataset<3 digits>_<Name>``)."""
    if not _DATASET_FOLDER.match(name or ""):
        raise NnUNetError(
            f"{name!r} is not an nnU-Net dataset name: use Dataset<3 digits>_<Name>, e.g. Dataset901_PETCTLesions"
        )
    return name


def case_id_from_name(name: str, fallback: str = "case") -> str:
    """``name`` (a patient ID, a volume's name) made into a valid case id."""
    return check_case_id(re.sub(r"\s+", " ", _UNSAFE_ID_CHARS.sub("_", name)).strip().strip(".") or fallback)


def case_id_for_study(patient_id: str, study_uid: str, study_date: str = "") -> str:
    """A case id that names the study and is safe as a file name: ``<PatientID>_<10 hex>_<date>``.

    Like autoPET's ``fdg_<hex>_<date>``: the hex digits come from the StudyInstanceUID (so two
    studies of one patient on one day differ), the date is the StudyDate (YYYY-MM-DD) when known.
    The same study always gives the same id.
    """
    name = case_id_from_name(patient_id, "patient")
    digest = hashlib.sha1(study_uid.encode("ascii", "replace")).hexdigest()[:10]
    date = study_date.strip()
    if re.fullmatch(r"\d{8}", date):
        date = f"{date[:4]}-{date[4:6]}-{date[6:]}"
    elif not re.fullmatch(r"\d{4}-\d{2}-\d{2}", date):
        date = "nodate"
    return check_case_id(f"{name}_{digest}_{date}")


def case_paths(
    dataset_dir: Path, case_id: str, test: bool = False, suffixes: Optional[Dict[str, str]] = None
) -> Dict[str, Path]:
    """File paths of a case: {"ct", "pet", "label"} for training, {"ct", "pet"} in imagesTs for ``test``.

    ``suffixes`` maps "ct" and "pet" to their channel suffixes (:func:`channel_suffixes`); by
    default the autoPET order this module writes, ``_0000`` CT and ``_0001`` PET.
    """
    check_case_id(case_id)
    dataset_dir = Path(dataset_dir)
    images = dataset_dir / ("imagesTs" if test else "imagesTr")
    suffixes = _CHANNEL_SUFFIX if suffixes is None else suffixes
    paths = {channel: images / f"{case_id}{suffixes[channel]}{FILE_ENDING}" for channel in ("ct", "pet")}
    if not test:
        paths["label"] = dataset_dir / "labelsTr" / f"{case_id}{FILE_ENDING}"
    return paths


# ----------------------------------------------------------------------------------------- cases


def write_case(dataset_dir: Path, case: NnUNetCase, overwrite: bool = False) -> Dict[str, Path]:
    """Write one case (CT int16 HU, PET float32, label uint8) and update ``dataset.json``.

    All images must share one grid. A case without a label is written to ``imagesTs``. The files
    appear together or not at all when writing fails; existing files are only replaced with
    ``overwrite``. Returns the written paths by channel.
    """
    dataset_dir = Path(dataset_dir)
    paths = case_paths(dataset_dir, case.case_id, test=case.label is None)
    images = {"ct": _ct_to_int16(case.ct, case.case_id), "pet": _pet_to_float32(case.pet, case.case_id)}
    if case.label is not None:
        images["label"] = _label_to_uint8(case.label, f"case {case.case_id!r}: label")
    _check_same_grid(images, f"case {case.case_id!r}")
    existing = [str(path) for path in paths.values() if path.exists()]
    if existing and not overwrite:
        raise OutputExistsError(
            f"case {case.case_id!r} already exists ({', '.join(existing)}); refusing to overwrite it"
        )
    _dataset_json_for_update(dataset_dir)  # one that contradicts this layout is refused before any file is written
    try:
        with contextlib.ExitStack() as stack:
            # Every file goes to a temporary name first; the renames happen only after all writes
            # succeeded, so a failure leaves no partial case behind.
            tmps = {channel: stack.enter_context(atomic_output(paths[channel], overwrite)) for channel in images}
            write_nifti_gz_files({tmps[channel]: image for channel, image in images.items()})
    except OutputExistsError:  # a file that appeared since the check above
        raise
    except (OSError, RuntimeError) as error:
        raise NnUNetError(f"case {case.case_id!r}: cannot write it under {dataset_dir}: {error}") from error
    update_dataset_json(dataset_dir)
    return paths


def read_case(dataset_dir: Path, case_id: str, images_only: bool = False) -> NnUNetCase:
    """Read a training case (or, when it has none, a test case from imagesTs with label None).

    The CT and PET files are those ``channel_names`` of ``dataset.json`` names (any order, see
    :func:`channel_suffixes`). Checks that the files are whole (:func:`.nifti.read_nifti`), 3D and on
    one grid, that the label values are 0 or 1, and that the CT and PET channels hold CT and
    PET values (:func:`check_channel_values`). ``images_only`` reads CT and PET alone (label
    None), e.g. to predict on ``imagesTr`` of a dataset whose labels are elsewhere or not there.
    """
    dataset_dir = Path(dataset_dir)
    suffixes = channel_suffixes(dataset_dir)
    paths = case_paths(dataset_dir, case_id, suffixes=suffixes)
    if not paths["ct"].exists():
        test_paths = case_paths(dataset_dir, case_id, test=True, suffixes=suffixes)
        if test_paths["ct"].exists():
            paths = test_paths
    if images_only:
        paths.pop("label", None)
    missing = [str(path) for path in paths.values() if not path.is_file()]
    if missing:
        raise NnUNetError(f"case {case_id!r}: missing {', '.join(missing)}")
    images = {channel: _read_image(path, channel) for channel, path in paths.items()}
    _check_same_grid(images, f"case {case_id!r}", paths)
    for channel in ("ct", "pet"):
        what = f"{paths[channel]}: read as the {channel.upper()} by {_channel_source(dataset_dir)}"
        check_channel_values(images[channel], channel, what)
    if "label" in images:
        _check_label_values(sitk.GetArrayViewFromImage(images["label"]), str(paths["label"]))
    return NnUNetCase(case_id=case_id, ct=images["ct"], pet=images["pet"], label=images.get("label"))


def list_cases(dataset_dir: Path, test: bool = False) -> List[str]:
    """Sorted ids of the cases in imagesTr (or imagesTs), from their ``_0000`` files (the first channel)."""
    folder = Path(dataset_dir) / ("imagesTs" if test else "imagesTr")
    suffix = _CHANNEL_SUFFIX["ct"] + FILE_ENDING
    if not folder.is_dir():
        return []
    return sorted(p.name[: -len(suffix)] for p in folder.iterdir() if p.name.endswith(suffix) and p.is_file())


def _read_image(path: Path, channel: str) -> sitk.Image:
    try:
        image = read_nifti(path, channel)
    except NiftiError as error:  # a damaged file makes the case unusable: said in the file's words
        raise NnUNetError(str(error)) from error
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise NnUNetError(f"{path}: expected a 3D scalar image, got {image.GetDimension()}D")
    return image


def _check_image(image: sitk.Image, what: str) -> None:
    if not isinstance(image, sitk.Image):
        raise NnUNetError(f"{what} is not a SimpleITK image")
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise NnUNetError(f"{what} must be a 3D scalar image")


def _with_geometry(array: np.ndarray, reference: sitk.Image) -> sitk.Image:
    image = sitk.GetImageFromArray(array)
    image.CopyInformation(reference)
    return image


def _ct_to_int16(ct: sitk.Image, case_id: str) -> sitk.Image:
    what = f"case {case_id!r}: CT"
    _check_image(ct, what)
    values = sitk.GetArrayViewFromImage(ct)
    if values.dtype == np.int16:
        return ct
    rounded = np.empty(values.shape, np.int16)
    slab = max(1, _SLAB_VOXELS // max(1, values[0].size))
    with ThreadPoolExecutor(usable_cores()) as pool:  # numpy releases the GIL on whole slabs
        ranges = list(pool.map(lambda k: _round_slab(values, rounded, k, slab), range(0, values.shape[0], slab)))
    if any(low is None for low, _ in ranges):
        raise NnUNetError(f"{what} contains NaN or infinite values")
    low, high = min(low for low, _ in ranges), max(high for _, high in ranges)
    if low < _INT16_RANGE[0] or high > _INT16_RANGE[1]:
        raise NnUNetError(f"{what} values {low:g}..{high:g} HU do not fit int16; is this really CT in HU?")
    return _with_geometry(rounded, ct)


def _round_slab(values: np.ndarray, rounded: np.ndarray, k: int, slab: int) -> Tuple[Optional[float], float]:
    """Round slices k..k+slab half up (floor(x + 0.5) in float64) into ``rounded``; return
    their (min, max), or (None, nan) for NaN or infinite values. Slabs keep float64 temporaries
    in cache (8 MB, not 400 MB for the whole volume)."""
    part = values[k : k + slab].astype(np.float64)
    if not np.isfinite(part).all():
        return None, float("nan")
    np.floor(part + 0.5, out=part)
    low, high = float(part.min()), float(part.max())
    if _INT16_RANGE[0] <= low and high <= _INT16_RANGE[1]:  # else the whole CT is refused
        rounded[k : k + slab] = part
    return low, high


def _pet_to_float32(pet: sitk.Image, case_id: str) -> sitk.Image:
    what = f"case {case_id!r}: PET"
    _check_image(pet, what)
    values = sitk.GetArrayViewFromImage(pet)
    with np.errstate(over="ignore", invalid="ignore"):
        as_float32 = values if values.dtype == np.float32 else values.astype(np.float32)
    if not np.isfinite(as_float32).all():
        raise NnUNetError(f"{what} contains NaN or infinite values (or values beyond float32)")
    return pet if values.dtype == np.float32 else _with_geometry(as_float32, pet)


def _label_to_uint8(label: sitk.Image, what: str) -> sitk.Image:
    _check_image(label, what)
    values = sitk.GetArrayViewFromImage(label)
    _check_label_values(values, what)
    return label if values.dtype == np.uint8 else _with_geometry(values.astype(np.uint8), label)


def _check_label_values(values: np.ndarray, what: str) -> None:
    if is_binary(values):
        return
    found = np.unique(values)
    unexpected = [v for v in found.tolist() if v not in (0, 1)]
    if unexpected:
        shown = ", ".join(f"{v:g}" for v in unexpected[:5])
        raise NnUNetError(f"{what} has values other than 0 and 1: {shown}")


def _check_same_grid(images: Dict[str, sitk.Image], what: str, paths: Optional[Dict[str, Path]] = None) -> None:
    """Raise naming the image and the property (size, spacing, origin, direction) that differs from the CT.

    With ``paths`` (images read from files) the message starts with the differing file and ends
    with the CT file it was compared with.
    """
    reference = images["ct"]
    for channel, image in images.items():
        if channel == "ct":
            continue
        where = f"{paths[channel]}: " if paths else ""
        against = f" ({paths['ct']})" if paths else ""
        if image.GetSize() != reference.GetSize():
            raise NnUNetError(
                f"{where}{what}: {channel} size {image.GetSize()} differs from CT size {reference.GetSize()}{against}"
            )
        for name in ("spacing", "origin", "direction"):
            mine = np.asarray(getattr(image, f"Get{name.capitalize()}")())
            theirs = np.asarray(getattr(reference, f"Get{name.capitalize()}")())
            if not np.allclose(mine, theirs, rtol=GEOMETRY_RELATIVE_TOLERANCE, atol=GEOMETRY_TOLERANCE_MM):
                raise NnUNetError(
                    f"{where}{what}: {channel} {name} {tuple(mine.round(6).tolist())} differs from CT {name} "
                    f"{tuple(theirs.round(6).tolist())}{against} (tolerance {GEOMETRY_TOLERANCE_MM} mm + "
                    f"{GEOMETRY_RELATIVE_TOLERANCE:g} of the value)"
                )


# ----------------------------------------------------------------------------------------- channels

# Which channel is CT and which PET is read from dataset.json, and the values must agree: a voxel
# below -100 is air, lung or fat in CT (HU), and impossible in PET: SUV is never negative beyond
# reconstruction noise (a few tenths). A CT on the PET grid always holds air around the body (-1000
# HU; resampling fills the space outside the CT with air too), tens of percent of its voxels; a PET
# holds none. So a channel with at least 0.1% of its voxels below -100 is a CT, one with fewer is a
# PET (or a CT not in HU, e.g. stored values with air at 0): either way not what the model reads.
CT_AIR_BELOW = -100.0
CT_AIR_SHARE = 0.001
# A PET in SUV reaches 100 only in the bladder, the kidneys and the hottest lesions, far under 1% of
# the field of view; a PET in Bq/mL has its whole body in the thousands (SUV 1 is 5,000 Bq/mL after
# 350 MBq in 70 kg), 10-50% of the voxels. So a PET with at least 1% of its voxels above 100 is not in SUV.
PET_SUV_ABOVE = 100.0
PET_SUV_ABOVE_SHARE = 0.01
# A PET in Bq/mL reconstructed by filtered back-projection also has noise around 0 outside the body,
# often a third of the field of view below -100, as a CT has air. The two differ in how low: a CT's
# voxels below -100 are mostly air at -1000 HU (on the PET grid the air around the body is most of the
# field of view), the noise's are mostly above -900 (a few hundred Bq/mL). So a PET channel with voxels
# above 100 is taken for a CT only when at least half of those below -100 are below -900.
CT_AIR_CORE_BELOW = -900.0

# Channel names, compared case-insensitively without white space, "-" and "_". nnU-Net v2 reads a
# channel's name as its normalisation: "CT" gives CTNormalization; "noNorm", "zscore", "rescale_to_0_1"
# and "rgb_to_0_1" are normalisation schemes that say nothing about the modality; any other name gives
# zscore. So PET/CT datasets name their PET channel many ways: these name a PET.
_CT_NAMES = frozenset({"ct"})
_PET_NAMES = frozenset({"pet", "pt", "suv", "fdg", "psma", "fdgpet", "psmapet", "petsuv"})
_NORMALISATION_NAMES = frozenset({"nonorm", "zscore", "rescaleto01", "rgbto01"})
_NAMES_UNDERSTOOD = (
    "name one channel CT and the other PET (or PT, SUV, FDG, PSMA, FDG-PET, PSMA-PET, PET_SUV), or either by "
    "an nnU-Net normalisation scheme (noNorm, zscore, rescale_to_0_1, rgb_to_0_1)"
)


def channel_suffixes(dataset_dir: Path) -> Dict[str, str]:
    """{"ct": "_000n", "pet": "_000m"}: the channel files of the dataset's CT and PET.

    From ``channel_names`` in ``dataset.json``, which must name exactly two channels. Names are
    compared case-insensitively, without white space, "-" and "_": "CT" names a CT; "PET", "PT",
    "SUV", "FDG", "PSMA", "FDG-PET", "PSMA-PET" and "PET_SUV" name a PET; nnU-Net's normalisation
    schemes "noNorm", "zscore", "rescale_to_0_1" and "rgb_to_0_1" name neither (nnU-Net reads a
    channel name as its normalisation, so datasets name their PET channel by the one they chose):

    - one CT and one PET: each by its name, in either order;
    - one CT and one scheme name: the CT is the CT, the other the PET;
    - one PET and one scheme name: the PET is the PET, the other the CT;
    - two CT (published autoPET copies, for CT normalisation of the PET) or two scheme names: the
      autoPET order, ``_0000`` CT and ``_0001`` PET, as without ``dataset.json``.

    Anything else (another number of channels, two PET, a name such as MR, T1 or ADC) is refused
    naming the file and the channel. :func:`read_case` checks the values either way
    (:func:`check_channel_values`), so a swap the names hide is still refused.
    """
    path = Path(dataset_dir) / DATASET_JSON
    if not path.is_file():
        return dict(_CHANNEL_SUFFIX)
    content = _load_json(path)
    if not isinstance(content, dict):
        raise NnUNetError(f"{path}: expected a JSON object")
    if "channel_names" not in content:
        raise NnUNetError(f"{path}: missing 'channel_names'; give the channels as {json.dumps(CHANNEL_NAMES)}")
    return _suffixes_of_channel_names(content["channel_names"], path)


def channel_kind(name: str) -> Optional[str]:
    """ "ct", "pet", "scheme" (an nnU-Net normalisation scheme) or None for a name that is none of them."""
    key = re.sub(r"[\s_-]", "", name.casefold())
    if key in _CT_NAMES:
        return "ct"
    if key in _PET_NAMES:
        return "pet"
    return "scheme" if key in _NORMALISATION_NAMES else None


def _suffixes_of_channel_names(names: object, path: Path) -> Dict[str, str]:
    _check_channel_names(names, path)
    assert isinstance(names, dict)  # for the type checker: _check_channel_names refused anything else
    shown = json.dumps(names)
    if len(names) != 2:
        raise NnUNetError(
            f"{path}: channel_names {shown} has {len(names)} channel(s); a PET/CT case has two, CT and PET"
        )
    kinds = {key: channel_kind(value) for key, value in names.items()}
    unknown = [value for key, value in names.items() if kinds[key] is None]
    if unknown:
        raise NnUNetError(f"{path}: channel_names {shown}: {unknown[0]!r} is neither CT nor PET; {_NAMES_UNDERSTOOD}")
    ct_keys = [key for key, kind in kinds.items() if kind == "ct"]
    pet_keys = [key for key, kind in kinds.items() if kind == "pet"]
    if len(pet_keys) == 2:
        raise NnUNetError(f"{path}: channel_names {shown} has two PET channels and no CT")
    if len(ct_keys) == 1:
        (ct_key,) = ct_keys
        (pet_key,) = set(names) - {ct_key}
    elif len(pet_keys) == 1:
        (pet_key,) = pet_keys
        (ct_key,) = set(names) - {pet_key}
    else:
        return dict(_CHANNEL_SUFFIX)  # two CT or two scheme names: nothing says otherwise, the autoPET order
    return {"ct": f"_{int(ct_key):04d}", "pet": f"_{int(pet_key):04d}"}


def _channel_source(dataset_dir: Path) -> str:
    json_file = Path(dataset_dir) / DATASET_JSON
    return f"channel_names in {json_file}" if json_file.is_file() else "the autoPET order (there is no dataset.json)"


def check_channel_values(image: sitk.Image, channel: str, what: str) -> None:
    """Refuse a "ct" image that holds no air (``CT_AIR_SHARE``), and a "pet" image not in SUV:
    holding CT values, or in Bq/mL (``PET_SUV_ABOVE_SHARE``).

    ``what`` names the image and why it was taken for that channel; the message goes on from it.
    A PET in Bq/mL whose noise dips below -100 gets the Bq/mL message, not the swap's
    (``CT_AIR_CORE_BELOW``). Voxels are counted slice by slice: no temporary larger than a slice.
    """
    values = sitk.GetArrayViewFromImage(image)
    voxels = max(1, values.size)
    hint = "the CT and PET files are swapped, or channel_names is wrong"
    if channel == "ct":
        below = sum(int(np.count_nonzero(part < CT_AIR_BELOW)) for part in values)
        if below / voxels < CT_AIR_SHARE:
            amount = "none" if not below else f"only {below / voxels:.2%}"
            raise NnUNetError(
                f"{what}, but {amount} of its voxels are below {CT_AIR_BELOW:g} (lowest {float(values.min()):g}): "
                f"no air at -1000 HU, as in a PET or a CT not in HU: {hint}"
            )
        return
    below = above = air = 0
    for part in values:
        below += int(np.count_nonzero(part < CT_AIR_BELOW))
        above += int(np.count_nonzero(part > PET_SUV_ABOVE))
        air += int(np.count_nonzero(part < CT_AIR_CORE_BELOW))
    in_bq_per_ml = above / voxels >= PET_SUV_ABOVE_SHARE
    ct_values = below / voxels >= CT_AIR_SHARE and (not in_bq_per_ml or 2 * air >= below)
    if ct_values:
        raise NnUNetError(
            f"{what}, but {below / voxels:.1%} of its voxels are below {CT_AIR_BELOW:g}, which no PET in SUV has "
            f"and a CT has wherever there is air: {hint}"
        )
    if in_bq_per_ml:
        raise NnUNetError(
            f"{what}, but {above / voxels:.1%} of its voxels are above {PET_SUV_ABOVE:g}, which in a PET in SUV only "
            f"the bladder, kidneys and the hottest lesions reach, far under {PET_SUV_ABOVE_SHARE:.0%} (highest "
            f"{float(values.max()):g}): it is not in SUV (Bq/mL?); convert it to SUV (body weight) where it was made"
        )


# ----------------------------------------------------------------------------------------- dataset.json


def update_dataset_json(dataset_dir: Path, dataset_name: Optional[str] = None) -> Path:
    """Create or update ``dataset.json``: channel_names, labels, numTraining, file_ending (and name).

    ``numTraining`` becomes the number of ``labelsTr/*.nii.gz``. Other keys already present are
    kept, and so are channel_names that put the CT at ``_0000`` and the PET at ``_0001`` (e.g.
    {"0": "CT", "1": "CT"}, {"0": "CT", "1": "SUV"}, {"0": "CT", "1": "zscore"}; see
    :func:`channel_suffixes`) and labels that map background to 0 and one lesion class to 1. A
    dataset.json that contradicts the autoPET layout is refused rather than rewritten.
    """
    dataset_dir = Path(dataset_dir)
    path = dataset_dir / DATASET_JSON
    content = _dataset_json_for_update(dataset_dir)
    labels_dir = dataset_dir / "labelsTr"
    # Hidden files are no cases: a writer's temporary file (see fileio.atomic_output) left by a killed run.
    label_files = [p for p in labels_dir.iterdir() if p.name.endswith(FILE_ENDING)] if labels_dir.is_dir() else []
    label_files = [p for p in label_files if not p.name.startswith(".")]
    content["numTraining"] = sum(1 for p in label_files if p.is_file())
    if dataset_name is not None:
        content["name"] = dataset_name
    return atomic_write_text(path, json.dumps(content, indent=4, ensure_ascii=False) + "\n", overwrite=True)


def _dataset_json_for_update(dataset_dir: Path) -> dict:
    """The dataset's ``dataset.json`` (empty when there is none) with the autoPET layout merged in;
    NnUNetError when it contradicts the layout this module writes."""
    path = Path(dataset_dir) / DATASET_JSON
    content = _load_json(path) if path.exists() else {}
    if not isinstance(content, dict):
        raise NnUNetError(f"{path}: expected a JSON object")
    _merge_layout(content, path)
    return content


def _merge_layout(content: dict, path: Path) -> None:
    channel_names = content.get("channel_names")
    if channel_names is None:
        content["channel_names"] = dict(CHANNEL_NAMES)
    else:
        try:  # any names that mean _0000 CT, _0001 PET are the layout written here
            suffixes = _suffixes_of_channel_names(channel_names, path)
        except NnUNetError:
            raise NnUNetError(
                f"{path}: channel_names {channel_names} is not a CT/PET layout; refusing to change it"
            ) from None
        if suffixes != _CHANNEL_SUFFIX:
            raise NnUNetError(
                f"{path}: channel_names {channel_names} puts the PET first, but cases are written CT first "
                "(_0000 CT, _0001 PET); refusing to add one: write it into another dataset"
            )
    labels = content.get("labels")
    if labels is None:
        content["labels"] = dict(LABELS)
    elif not (isinstance(labels, dict) and labels.get("background") == 0 and sorted(labels.values()) == [0, 1]):
        raise NnUNetError(f"{path}: labels {labels} are not background 0 / one lesion class 1; refusing to change them")
    file_ending = content.get("file_ending")
    if file_ending is None:
        content["file_ending"] = FILE_ENDING
    elif file_ending != FILE_ENDING:
        raise NnUNetError(f"{path}: file_ending {file_ending!r} is not {FILE_ENDING!r}; refusing to change it")


def read_dataset_json(dataset_dir: Path) -> dict:
    """Read ``dataset.json`` and check the fields nnU-Net v2 reads; returns the whole object."""
    path = Path(dataset_dir) / DATASET_JSON
    if not path.is_file():
        raise NnUNetError(f"{path}: not found")
    content = _load_json(path)
    if not isinstance(content, dict):
        raise NnUNetError(f"{path}: expected a JSON object")
    for key in ("channel_names", "labels", "numTraining", "file_ending"):
        if key not in content:
            raise NnUNetError(f"{path}: missing {key!r}")
    _check_channel_names(content["channel_names"], path)
    _check_labels(content["labels"], path)
    number = content["numTraining"]
    if not isinstance(number, int) or isinstance(number, bool) or number < 0:
        raise NnUNetError(f"{path}: numTraining must be a non-negative integer, got {number!r}")
    ending = content["file_ending"]
    if not isinstance(ending, str) or not ending.startswith("."):
        raise NnUNetError(f"{path}: file_ending must be a string such as '.nii.gz', got {ending!r}")
    return content


def _check_channel_names(channel_names: object, path: Path) -> None:
    if not isinstance(channel_names, dict) or not channel_names:
        raise NnUNetError(f"{path}: channel_names must be a non-empty object")
    expected_keys = [str(i) for i in range(len(channel_names))]
    if sorted(channel_names, key=lambda k: (len(k), k)) != expected_keys:
        last = len(channel_names) - 1
        raise NnUNetError(f"{path}: channel_names keys must be '0'..'{last}', got {list(channel_names)}")
    if not all(isinstance(v, str) and v for v in channel_names.values()):
        raise NnUNetError(f"{path}: channel_names values must be non-empty strings")


def _check_labels(labels: object, path: Path) -> None:
    if not isinstance(labels, dict) or not labels:
        raise NnUNetError(f"{path}: labels must be a non-empty object")
    if labels.get("background") != 0 or isinstance(labels.get("background"), bool):
        raise NnUNetError(f"{path}: labels must map 'background' to 0, got {labels.get('background')!r}")
    for name, value in labels.items():
        # nnU-Net v2 region-based training gives a label a list of integer values.
        values = value if isinstance(value, list) and value else [value]
        if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in values):
            raise NnUNetError(f"{path}: label {name!r} must be a non-negative integer (or a list), got {value!r}")


def _load_json(path: Path) -> object:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise NnUNetError(f"{path}: cannot be read as JSON ({error})") from error


# ----------------------------------------------------------------------------------------- splits


def write_splits(dataset_dir: Path, folds: List[Dict[str, List[str]]], overwrite: bool = False) -> Path:
    """Write ``splits_final.json`` (a list of {"train": [...], "val": [...]} folds); returns its path."""
    path = Path(dataset_dir) / SPLITS_JSON
    _check_splits(folds, str(path))
    content = [{"train": list(fold["train"]), "val": list(fold["val"])} for fold in folds]
    return atomic_write_text(path, json.dumps(content, indent=4, ensure_ascii=False) + "\n", overwrite=overwrite)


def read_splits(dataset_dir: Path) -> Optional[list]:
    """The folds of ``splits_final.json``, or None when the dataset has none."""
    path = Path(dataset_dir) / SPLITS_JSON
    if not path.exists():
        return None
    folds = _load_json(path)
    _check_splits(folds, str(path))
    return folds  # type: ignore[return-value]


def _check_splits(folds: object, what: str) -> None:
    if not isinstance(folds, list) or not folds:
        raise NnUNetError(f"{what}: splits must be a non-empty list of folds")
    for index, fold in enumerate(folds):
        if not isinstance(fold, dict) or set(fold) != {"train", "val"}:
            raise NnUNetError(f"{what}: fold {index} must be an object with exactly 'train' and 'val'")
        for part in ("train", "val"):
            if not isinstance(fold[part], list) or not all(isinstance(c, str) for c in fold[part]):
                raise NnUNetError(f"{what}: fold {index} {part} must be a list of case ids")
            for case_id in fold[part]:
                try:
                    check_case_id(case_id)
                except NnUNetError as error:
                    raise NnUNetError(f"{what}: fold {index} {part}: {error}") from None
        overlap = sorted(set(fold["train"]) & set(fold["val"]))
        if overlap:
            raise NnUNetError(f"{what}: fold {index} has cases in both train and val: {', '.join(overlap[:5])}")
