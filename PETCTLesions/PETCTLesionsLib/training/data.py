"""Training data: cases from an nnU-Net raw dataset or from the study generator, as patches.

A case is prepared once (in a worker process) into what the network sees: the normalised
two-channel image on the working grid (float16, to halve memory) and the lesion label on the
same grid, in which every lesion keeps at least one voxel (:func:`label_on_working_grid`).
Patches centred on lesions pick the lesion first, uniformly, then a voxel in it, so a 5 mm
node is centred as often as a 50 mm mass (per voxel it would be a thousand times rarer).
A :class:`CasePool` keeps a rolling set of prepared cases filled by worker processes while
training draws patches from it, so data preparation (seconds per synthetic whole-body
patient) overlaps with the GPU's work.

Synthetic seeds: training patients use seeds >= ``TRAIN_SEED_BASE``; validation patients
``VALIDATION_SEED_BASE + n``; everything below ``VALIDATION_SEED_BASE`` (the demo, the tests,
the held-out benchmark) is never seen in training.
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch

from ..errors import InputError
from ..lesions import label_lesions
from ..model import preprocessing

TRAIN_SEED_BASE = 1_000_000
VALIDATION_SEED_BASE = 900_000
SYNTHETIC_BODIES = (("wholebody", 0.75), ("torso", 0.25))
FOREGROUND_FRACTION = 1.0 / 3.0  # share of patches centred on a lesion (nnU-Net's oversampling)
_BODY_HU = -500.0  # voxels denser than this are inside the patient: the other patches are centred there
_MAX_CENTRES = 20000


@dataclass
class StudyArrays:
    """One study on the PET grid: what inference and the metrics work on."""

    name: str
    ct_hu_on_pet: np.ndarray  # float32 [k, j, i]
    pet_suv: np.ndarray  # float32
    label: np.ndarray  # uint8 0/1
    spacing_xyz: Tuple[float, float, float]

    @property
    def voxel_ml(self) -> float:
        return float(np.prod(self.spacing_xyz)) / 1000.0


@dataclass
class TrainingCase:
    """One study on the working grid, ready for patch sampling."""

    name: str
    image: np.ndarray  # float16 [2, D, H, W], normalised
    label: np.ndarray  # uint8 [D, H, W]
    lesion_centres: np.ndarray  # (n, 3) int32 voxel indices inside lesions (subsampled), lesion by lesion
    lesion_offsets: np.ndarray  # (lesions + 1,) int: lesion m's centres are lesion_centres[offsets[m]:offsets[m + 1]]
    body_centres: np.ndarray  # (n, 3) int32 voxel indices inside the body (subsampled)


# ------------------------------------------------------------------------------------ sources


def synthetic_study(seed: int, body: str = "wholebody", size: str = "full") -> StudyArrays:
    """A generated patient with the CT resampled onto the PET grid, as the real pipeline does."""
    from ..synthetic.phantom import PhantomConfig, make_phantom

    return phantom_study_arrays(make_phantom(PhantomConfig(seed=int(seed), size=size, body=body)))


def phantom_study_arrays(study) -> StudyArrays:
    """A generated ``PhantomStudy`` as the model sees it: CT resampled onto the PET grid (linear, air outside)."""
    import SimpleITK as sitk

    from ..resampling import resample_ct_to_pet

    ct_on_pet = sitk.GetArrayFromImage(resample_ct_to_pet(study.ct_grid.to_sitk(study.ct_hu), study.pet_grid))
    config = study.config
    return StudyArrays(
        name=f"synthetic-{config.body}-{config.seed}",
        ct_hu_on_pet=ct_on_pet.astype(np.float32),
        pet_suv=study.pet_suv.astype(np.float32),
        label=(study.pet_lesion_labels > 0).astype(np.uint8),
        spacing_xyz=tuple(float(s) for s in study.pet_grid.spacing),  # type: ignore[arg-type]
    )


def nnunet_study(dataset_dir: str, case_id: str) -> StudyArrays:
    """A training case of an nnU-Net raw dataset: CT and PET as its dataset.json names them, read
    checked by :func:`nnunet.read_case` (whole files, channel values, a 0/1 label without NaN)."""
    import SimpleITK as sitk

    from ..formats import nnunet

    case = nnunet.read_case(Path(dataset_dir), case_id)
    if case.label is None:
        raise nnunet.NnUNetError(f"case {case_id!r} in {dataset_dir} has no label in labelsTr")
    return StudyArrays(
        name=case_id,
        ct_hu_on_pet=sitk.GetArrayFromImage(case.ct).astype(np.float32),
        pet_suv=sitk.GetArrayFromImage(case.pet).astype(np.float32),
        label=sitk.GetArrayFromImage(case.label).astype(np.uint8),
        spacing_xyz=tuple(float(s) for s in case.pet.GetSpacing()),  # type: ignore[arg-type]
    )


def study_from_spec(spec: Tuple) -> StudyArrays:
    """('synthetic', seed, body, size) or ('nnunet', dataset_dir, case_id) -> StudyArrays."""
    if spec[0] == "synthetic":
        return synthetic_study(spec[1], spec[2], spec[3])
    if spec[0] == "nnunet":
        return nnunet_study(spec[1], spec[2])
    raise ValueError(f"unknown case source {spec!r}")


def prepare_case(study: StudyArrays, seed: int = 0) -> TrainingCase:
    """StudyArrays (PET grid) -> TrainingCase (working grid, normalised, with patch centres)."""
    spacing_zyx = tuple(reversed(study.spacing_xyz))
    with torch.no_grad():
        image = preprocessing.normalise(torch.from_numpy(study.ct_hu_on_pet), torch.from_numpy(study.pet_suv))
        image = preprocessing.to_working_grid(image, spacing_zyx)
    label = label_on_working_grid(study.label, spacing_zyx)
    rng = np.random.default_rng(seed)
    lesion_centres, lesion_offsets = _centres_by_lesion(label, rng)
    ct_hu = image[0].numpy() * preprocessing.CT_SCALE_HU
    return TrainingCase(
        name=study.name,
        image=image.numpy().astype(np.float16),
        label=label,
        lesion_centres=lesion_centres,
        lesion_offsets=lesion_offsets,
        body_centres=_some(np.argwhere(ct_hu > _BODY_HU), rng),
    )


def label_on_working_grid(label: np.ndarray, spacing_zyx: Sequence[float]) -> np.ndarray:
    """A 0/1 lesion label moved onto the working grid: interpolated value >= 0.5, and every
    lesion (26-connected) keeps at least the working voxel nearest its centroid.

    Why the second rule: a lesion of one or two PET voxels (5-8 mm) stays under 0.5 when the
    grid moves by a fraction of a voxel (4.07 -> 4 mm) or halves (autoPET's 2 mm -> 4 mm).
    Dropped from the label, such lesions teach the network that a small hot spot is background.
    """
    label = np.asarray(label, np.uint8)
    with torch.no_grad():
        soft = preprocessing.to_working_grid(torch.from_numpy(label).float()[None], spacing_zyx)[0].numpy()
    interpolated = soft >= 0.5
    working = interpolated.copy()
    # Working index = original index x original spacing / working spacing (both grids share voxel 0).
    scale = np.asarray(spacing_zyx, float) / np.asarray(tuple(reversed(preprocessing.WORKING_SPACING_MM)))
    last = np.asarray(working.shape) - 1
    for voxels in _voxels_by_lesion(label):
        if not interpolated[tuple(np.minimum(np.rint(voxels * scale).astype(np.int64), last).T)].any():
            working[tuple(np.minimum(np.rint(voxels.mean(axis=0) * scale).astype(np.int64), last))] = True
    return working.astype(np.uint8)


def _centres_by_lesion(label: np.ndarray, rng: np.random.Generator) -> Tuple[np.ndarray, np.ndarray]:
    """Patch centres inside the lesions grouped lesion by lesion (at most ``_MAX_CENTRES`` in all), and offsets."""
    lesions = _voxels_by_lesion(label)
    if not lesions:
        return np.zeros((0, 3), np.int32), np.zeros(1, np.int64)
    groups = [_some(voxels, rng, max(1, _MAX_CENTRES // len(lesions))) for voxels in lesions]
    return np.concatenate(groups), np.cumsum([0] + [len(group) for group in groups])


def _voxels_by_lesion(mask: np.ndarray) -> List[np.ndarray]:
    """The (n, 3) voxel indices of each 26-connected lesion of a 0/1 mask, largest lesion first."""
    lesion_map, count = label_lesions(mask)
    if count == 0:
        return []
    voxels = np.argwhere(lesion_map)
    lesion_of_voxel = lesion_map[tuple(voxels.T)]
    sizes = np.bincount(lesion_of_voxel, minlength=count + 1)[1:]
    return np.split(voxels[np.argsort(lesion_of_voxel, kind="stable")], np.cumsum(sizes)[:-1])


def _some(points: np.ndarray, rng: np.random.Generator, most: int = _MAX_CENTRES) -> np.ndarray:
    if len(points) > most:
        points = points[rng.choice(len(points), most, replace=False)]
    return points.astype(np.int32)


def _prepare_from_spec(spec: Tuple, seed: int) -> TrainingCase:
    return prepare_case(study_from_spec(spec), seed)


def _worker_init() -> None:
    # One thread each: the pool's processes already use every core.
    torch.set_num_threads(1)
    try:
        import SimpleITK as sitk

        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)
    except ImportError:  # pragma: no cover - SimpleITK is a hard dependency elsewhere
        pass


def synthetic_specs(rank: int = 0, world: int = 1, seed: int = 0, size: str = "full") -> Iterator[Tuple]:
    """Endless training patients: seeds TRAIN_SEED_BASE + n (disjoint per rank), body by SYNTHETIC_BODIES."""
    rng = random.Random(seed * 7919 + rank)
    bodies, weights = zip(*SYNTHETIC_BODIES)
    n = 0
    while True:
        seed_n = TRAIN_SEED_BASE + seed * 10_000_000 + n * world + rank
        yield ("synthetic", seed_n, rng.choices(bodies, weights)[0], size)
        n += 1


def nnunet_specs(dataset_dir: Path, case_ids: Sequence[str], rank: int = 0, seed: int = 0) -> Iterator[Tuple]:
    """Endless passes over the training cases, each pass shuffled (differently per rank)."""
    if not case_ids:
        raise InputError(f"{dataset_dir}: no training cases")
    rng = random.Random(seed * 7919 + rank)
    while True:
        order = list(case_ids)
        rng.shuffle(order)
        for case_id in order:
            yield ("nnunet", str(dataset_dir), case_id)


# --------------------------------------------------------------------------------------- pool


class CasePool:
    """Prepared cases drawn from an endless spec iterator by worker processes, refreshed as they come."""

    def __init__(self, specs: Iterator[Tuple], size: int, workers: int, seed: int = 0):
        self.specs = specs
        self.size = max(1, int(size))
        self.cases: List[TrainingCase] = []
        self.rng = random.Random(seed)
        self.prepared = 0
        self.workers = max(0, int(workers))
        self._executor = None
        self._pending: List[concurrent.futures.Future] = []
        if self.workers:
            context = multiprocessing.get_context("spawn")  # safe next to an initialised CUDA context
            self._executor = concurrent.futures.ProcessPoolExecutor(self.workers, context, initializer=_worker_init)
            for _ in range(2 * self.workers):
                self._submit()

    def _submit(self) -> None:
        self._pending.append(self._executor.submit(_prepare_from_spec, next(self.specs), self.rng.randrange(1 << 30)))

    def _add(self, case: TrainingCase) -> None:
        self.prepared += 1
        if len(self.cases) < self.size:
            self.cases.append(case)
        else:
            self.cases[self.rng.randrange(self.size)] = case

    def refresh(self, minimum: int = 1) -> None:
        """Take in finished cases; block until the pool holds at least ``minimum`` cases.

        Without workers nothing would ever add to the pool later, so the first call fills it
        whole, here, and the pool is then kept as it is.
        """
        minimum = min(minimum, self.size)
        if self._executor is None:
            while len(self.cases) < self.size:
                self._add(_prepare_from_spec(next(self.specs), self.rng.randrange(1 << 30)))
            return
        while True:
            done = [future for future in self._pending if future.done()]
            for future in done:
                self._pending.remove(future)
                self._add(future.result())
                self._submit()
            if len(self.cases) >= minimum:
                return
            concurrent.futures.wait(self._pending, return_when=concurrent.futures.FIRST_COMPLETED)

    def close(self) -> None:
        if self._executor is not None:
            for future in self._pending:
                future.cancel()
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None


def sample_patches(
    cases: Sequence[TrainingCase],
    count: int,
    patch: Sequence[int],
    rng: np.random.Generator,
    foreground_fraction: float = FOREGROUND_FRACTION,
) -> Tuple[np.ndarray, np.ndarray]:
    """``count`` random patches (float16 [n, 2, *patch], uint8 [n, *patch]), some centred on lesions.

    A lesion-centred patch picks one of the case's lesions uniformly, then one of its voxels.
    """
    images = np.empty((count, 2) + tuple(patch), np.float16)
    labels = np.zeros((count,) + tuple(patch), np.uint8)
    pad = preprocessing.padding_values()
    for n in range(count):
        case = cases[int(rng.integers(len(cases)))]
        if len(case.lesion_centres) and rng.random() < foreground_fraction:
            lesion = int(rng.integers(len(case.lesion_offsets) - 1))
            centres = case.lesion_centres[case.lesion_offsets[lesion] : case.lesion_offsets[lesion + 1]]
        else:
            centres = case.body_centres
        if len(centres) == 0:
            centres = np.array([[s // 2 for s in case.label.shape]])
        centre = centres[int(rng.integers(len(centres)))] + rng.integers(-8, 9, 3)
        _crop_into(case, centre, patch, images[n], labels[n], pad)
    return images, labels


def _crop_into(case: TrainingCase, centre, patch, image_out: np.ndarray, label_out: np.ndarray, pad) -> None:
    shape = case.label.shape
    start = [int(c) - p // 2 for c, p in zip(centre, patch)]
    source = tuple(slice(max(0, s), min(n, s + p)) for s, p, n in zip(start, patch, shape))
    target = tuple(slice(src.start - s, src.stop - s) for src, s in zip(source, start))
    for channel, value in enumerate(pad):
        image_out[channel].fill(value)
    image_out[(slice(None),) + target] = case.image[(slice(None),) + source]
    label_out[target] = case.label[source]


def validation_studies(specs: Sequence[Tuple], limit: Optional[int] = None) -> List[StudyArrays]:
    return [study_from_spec(spec) for spec in list(specs)[: limit if limit else None]]
