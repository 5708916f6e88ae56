"""nnU-Net v2 raw datasets in the autoPET layout (PSMA-FDG-PET-CT-Lesions).

One training case ``<id>`` is three NIfTI files on one grid (the PET grid)::

    imagesTr/<id>_0000.nii.gz   CT resampled onto the PET grid, HU, stored as int16
    imagesTr/<id>_0001.nii.gz   PET, SUV (body weight), stored as float32
    labelsTr/<id>.nii.gz        lesion mask, 0 background / 1 tumor, stored as uint8

A case without a label is a test case and goes to ``imagesTs/``. The files are standard gzip
(one member), deflated on all cores (:func:`write_nifti_gz`). ``dataset.json`` holds
``channel_names``, ``labels``, ``numTraining`` and ``file_ending``; ``splits_final.json`` is a
list of ``{"train": [...], "val": [...]}`` folds. autoPET case ids contain spaces, sometimes
two in a row; every function here takes them as they are.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import mmap
import os
import re
import struct
import tempfile
import zlib
from concurrent import futures
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
import SimpleITK as sitk

from .fileio import atomic_output, atomic_write_text
from .lesions import is_binary

CHANNEL_NAMES: Dict[str, str] = {"0": "CT", "1": "PET"}
# Published autoPET copies also name both channels "CT" to get CT-style normalisation for PET.
PUBLISHED_CHANNEL_NAMES = ({"0": "CT", "1": "PET"}, {"0": "CT", "1": "CT"})
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

# gzip: 10-byte header without name or time (so the same case gives the same bytes), XFL 4 =
# fastest compression, OS 255 = unknown; then raw deflate data, CRC-32 and size (RFC 1952).
_GZIP_HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x04\xff"
_DEFLATE_LEVEL = 1
_DEFLATE_CHUNK_BYTES = 4 << 20  # one job per chunk; a 400x400x326 PET gives 50, enough for any core count


class NnUNetError(ValueError):
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


def case_paths(dataset_dir: Path, case_id: str, test: bool = False) -> Dict[str, Path]:
    """File paths of a case: {"ct", "pet", "label"} for training, {"ct", "pet"} in imagesTs for ``test``."""
    check_case_id(case_id)
    dataset_dir = Path(dataset_dir)
    images = dataset_dir / ("imagesTs" if test else "imagesTr")
    paths = {channel: images / f"{case_id}{suffix}{FILE_ENDING}" for channel, suffix in _CHANNEL_SUFFIX.items()}
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
        raise NnUNetError(f"case {case.case_id!r} already exists ({', '.join(existing)}); refusing to overwrite it")
    try:
        with contextlib.ExitStack() as stack:
            # Every file goes to a temporary name first; the renames happen only after all writes
            # succeeded, so a failure leaves no partial case behind.
            tmps = {channel: stack.enter_context(atomic_output(paths[channel], overwrite)) for channel in images}
            _write_files_together({tmps[channel]: image for channel, image in images.items()})
    except (OSError, RuntimeError) as error:
        raise NnUNetError(f"case {case.case_id!r}: cannot write it under {dataset_dir}: {error}") from error
    update_dataset_json(dataset_dir)
    return paths


def _write_files_together(images: Dict[Path, sitk.Image]) -> None:
    """Write the files at the same time, their deflate chunks sharing one pool: while SimpleITK
    writes one file, the cores deflate another, and no core idles at the end of a file."""
    with ThreadPoolExecutor(_cores()) as deflate_pool, ThreadPoolExecutor(len(images)) as file_pool:
        writes = [file_pool.submit(write_nifti_gz, image, path, deflate_pool) for path, image in images.items()]
        for write in writes:
            write.result()  # raises the first error; the pools wait for the other writes to end


def write_nifti_gz(image: sitk.Image, path: Path, pool: Optional[Executor] = None) -> Path:
    """Write ``image`` to ``path`` as gzip-compressed NIfTI (.nii.gz), deflated on all cores.

    SimpleITK writes the NIfTI uncompressed (a hidden file beside ``path``, removed after); its
    bytes are then deflated in 4 MiB chunks in parallel (zlib releases the GIL) and joined into
    one standard gzip member, as pigz does: each chunk but the last ends on a byte boundary
    (Z_SYNC_FLUSH), so the chunks form one deflate stream that every gzip reader (ITK, nibabel,
    Python's gzip) reads, and it holds exactly SimpleITK's .nii. SimpleITK's own compression runs
    on one core at zlib's default level: a 400x400x326 float32 PET takes 6.7 s on 2 cores, here 2 s.
    ``pool`` runs the chunks (default: a pool of one worker per core). ``path`` is written in
    place: callers make it atomic (:func:`atomic_output`).
    """
    path = Path(path)
    if pool is None:
        with ThreadPoolExecutor(_cores()) as own_pool:
            return write_nifti_gz(image, path, own_pool)
    fd, raw_name = tempfile.mkstemp(prefix=f".{path.name[:40]}.", suffix=".nii", dir=path.parent)
    os.close(fd)
    try:
        sitk.WriteImage(image, raw_name, useCompression=False)
        with open(raw_name, "rb") as raw, mmap.mmap(raw.fileno(), 0, access=mmap.ACCESS_READ) as data:
            view = memoryview(data)
            try:
                _write_gzip(view, _deflate_strategy(image), pool, path)
            finally:
                view.release()  # the map closes only when no view of it is left
    finally:
        os.unlink(raw_name)  # after closing it: Windows cannot remove an open file
    return path


def _write_gzip(data: memoryview, strategy: int, pool: Executor, path: Path) -> None:
    starts = range(0, len(data), _DEFLATE_CHUNK_BYTES)
    blocks = [pool.submit(_deflate_chunk, data, start, strategy) for start in starts]
    try:
        crc = zlib.crc32(data)  # while the pool deflates
        with open(path, "wb") as handle:
            handle.write(_GZIP_HEADER)
            for block in blocks:  # in order, each as soon as it is ready
                handle.write(block.result())
            handle.write(struct.pack("<II", crc, len(data) & 0xFFFFFFFF))
    finally:
        for block in blocks:
            block.cancel()
        futures.wait(blocks)  # no worker may still read ``data`` once the caller releases it


def _deflate_strategy(image: sitk.Image) -> int:
    # Measured on the benchmark case: float32 PET noise has almost no repeated byte strings, so
    # run-length matching (Z_RLE) gives the size of level 1 (163 MB vs 161 MB; level 6: 159) in
    # half the time. CT (int16) and labels repeat whole strings: LZ77 level 1 halves their size.
    floating = image.GetPixelID() in (sitk.sitkFloat32, sitk.sitkFloat64)
    return zlib.Z_RLE if floating else zlib.Z_DEFAULT_STRATEGY


def _deflate_chunk(data: memoryview, start: int, strategy: int) -> bytes:
    stop = start + _DEFLATE_CHUNK_BYTES
    # Negative window bits: raw deflate, no zlib header, so the blocks can be concatenated.
    compressor = zlib.compressobj(_DEFLATE_LEVEL, zlib.DEFLATED, -zlib.MAX_WBITS, 8, strategy)
    with data[start:stop] as chunk:
        return compressor.compress(chunk) + compressor.flush(zlib.Z_FINISH if stop >= len(data) else zlib.Z_SYNC_FLUSH)


def _cores() -> int:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(cores or 1, 16))


def read_case(dataset_dir: Path, case_id: str, images_only: bool = False) -> NnUNetCase:
    """Read a training case (or, when it has none, a test case from imagesTs with label None).

    Checks that the files exist, are 3D, share one grid and that label values are 0 or 1.
    ``images_only`` reads CT and PET alone (label None), e.g. to predict on ``imagesTr`` of a
    dataset whose labels are elsewhere or not there.
    """
    dataset_dir = Path(dataset_dir)
    paths = case_paths(dataset_dir, case_id)
    if not paths["ct"].exists():
        test_paths = case_paths(dataset_dir, case_id, test=True)
        if test_paths["ct"].exists():
            paths = test_paths
    if images_only:
        paths.pop("label", None)
    missing = [str(path) for path in paths.values() if not path.is_file()]
    if missing:
        raise NnUNetError(f"case {case_id!r}: missing {', '.join(missing)}")
    images = {channel: _read_image(path) for channel, path in paths.items()}
    _check_same_grid(images, f"case {case_id!r}", paths)
    if "label" in images:
        _check_label_values(sitk.GetArrayViewFromImage(images["label"]), str(paths["label"]))
    return NnUNetCase(case_id=case_id, ct=images["ct"], pet=images["pet"], label=images.get("label"))


def list_cases(dataset_dir: Path, test: bool = False) -> List[str]:
    """Sorted ids of the cases in imagesTr (or imagesTs), from their ``_0000`` CT files."""
    folder = Path(dataset_dir) / ("imagesTs" if test else "imagesTr")
    suffix = _CHANNEL_SUFFIX["ct"] + FILE_ENDING
    if not folder.is_dir():
        return []
    return sorted(p.name[: -len(suffix)] for p in folder.iterdir() if p.name.endswith(suffix) and p.is_file())


def _read_image(path: Path) -> sitk.Image:
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as error:
        raise NnUNetError(f"{path}: cannot be read as an image ({str(error).strip().splitlines()[-1]})") from error
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
    with ThreadPoolExecutor(_cores()) as pool:  # numpy releases the GIL on whole slabs
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


# ----------------------------------------------------------------------------------------- dataset.json


def update_dataset_json(dataset_dir: Path, dataset_name: Optional[str] = None) -> Path:
    """Create or update ``dataset.json``: channel_names, labels, numTraining, file_ending (and name).

    ``numTraining`` becomes the number of ``labelsTr/*.nii.gz``. Other keys already present are
    kept, and so are published channel_names variants and labels that map background to 0 and
    one lesion class to 1. A dataset.json that contradicts the autoPET layout is refused rather
    than rewritten.
    """
    dataset_dir = Path(dataset_dir)
    path = dataset_dir / DATASET_JSON
    content = _load_json(path) if path.exists() else {}
    if not isinstance(content, dict):
        raise NnUNetError(f"{path}: expected a JSON object")
    _merge_layout(content, path)
    labels_dir = dataset_dir / "labelsTr"
    label_files = [p for p in labels_dir.iterdir() if p.name.endswith(FILE_ENDING)] if labels_dir.is_dir() else []
    content["numTraining"] = sum(1 for p in label_files if p.is_file())
    if dataset_name is not None:
        content["name"] = dataset_name
    return atomic_write_text(path, json.dumps(content, indent=4, ensure_ascii=False) + "\n", overwrite=True)


def _merge_layout(content: dict, path: Path) -> None:
    channel_names = content.get("channel_names")
    if channel_names is None:
        content["channel_names"] = dict(CHANNEL_NAMES)
    elif channel_names not in PUBLISHED_CHANNEL_NAMES:
        raise NnUNetError(f"{path}: channel_names {channel_names} is not a CT/PET layout; refusing to change it")
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
