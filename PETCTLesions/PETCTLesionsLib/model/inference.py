"""Run the lesion network on a study: device choice, tiling, mixed precision, OOM fallback.

Input: CT (HU) already on the PET grid and PET (SUVbw), numpy [k, j, i], plus the PET
spacing. Output: the lesion probability on the PET grid. Nothing is written anywhere, so a
cancelled run (``cancel()`` returning True between tiles raises :class:`RunCancelledError`) leaves
nothing half-made; callers write their files only from a finished result.

Tiling: the working-grid volume is cut into overlapping tiles whose predictions are blended
with a weight that tapers towards each tile's border (the network sees less context there).
A tile as large as the whole volume is one pass; on CUDA the whole volume is tried first,
on CPU tiles keep peak memory bounded. On CUDA out-of-memory the tile is halved and the run
repeated; below the smallest tile the run moves to the CPU. Each such step is reported in
``ProbabilityResult.notes`` and through ``progress``.

Determinism: cuDNN's deterministic algorithms are used and benchmarking is off while the
model runs, so the same input on the same device gives the same output.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import Callable, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch

from . import preprocessing
from .network import LesionUNet

ProgressCallback = Callable[[float, str], None]
CancelCallback = Callable[[], bool]
DEVICES = ("auto", "cuda", "mps", "cpu")
CPU_TILE_VOXELS = 3_500_000  # working voxels per tile on CPU: about 2.5 GB peak with the default network
MIN_TILE = 32
TILE_OVERLAP = 16  # working voxels shared by neighbouring tiles (about 5 cm)


class RunCancelledError(RuntimeError):
    """The user cancelled the run; nothing was produced."""


@dataclass
class ProbabilityResult:
    probability: np.ndarray  # float32 [k, j, i] on the PET grid, 0..1
    device: str  # the device that produced it ("cuda:0", "cpu", ...)
    tile: Tuple[int, int, int]  # working-grid tile used (z, y, x)
    notes: List[str] = field(default_factory=list)  # fallbacks taken, in order


def choose_device(requested: str = "auto") -> torch.device:
    """'auto' picks CUDA, then Apple MPS, then CPU; an explicit device that is missing is an error."""
    if requested not in DEVICES and not requested.startswith("cuda:"):
        raise ValueError(f"device must be one of {', '.join(DEVICES)} (or cuda:N), got {requested!r}")
    has_mps = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    if requested == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps") if has_mps else torch.device("cpu")
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(
            f"device {requested!r} was asked for but torch sees no CUDA GPU (torch.cuda.is_available() is False)"
        )
    if requested == "mps" and not has_mps:
        raise ValueError("device 'mps' was asked for but torch's Apple MPS backend is not available")
    return torch.device(requested)


def predict_probability(
    model: LesionUNet,
    ct_hu_on_pet: np.ndarray,
    pet_suv: np.ndarray,
    pet_spacing_xyz: Sequence[float],
    device: str = "auto",
    tile: Optional[Sequence[int]] = None,
    progress: Optional[ProgressCallback] = None,
    cancel: Optional[CancelCallback] = None,
) -> ProbabilityResult:
    """Lesion probability on the PET grid for one study (see the module docstring)."""
    if ct_hu_on_pet.shape != pet_suv.shape:
        raise ValueError(
            f"CT on the PET grid {ct_hu_on_pet.shape} and PET {pet_suv.shape} differ: resample the CT onto the PET grid"
        )
    report = progress or (lambda fraction, message: None)
    target = choose_device(device)
    notes: List[str] = []
    tile_size = _initial_tile(target, tile, _working_shape(pet_suv.shape, pet_spacing_xyz))
    while True:
        try:
            probability = _predict_on(model, ct_hu_on_pet, pet_suv, pet_spacing_xyz, target, tile_size, report, cancel)
            return ProbabilityResult(probability, str(target), tile_size, notes)
        except torch.cuda.OutOfMemoryError:
            if target.type != "cuda":
                raise
            torch.cuda.empty_cache()
            if tile_size is not None and min(tile_size) <= MIN_TILE:
                note = f"CUDA ran out of memory even with {tile_size} tiles; running on the CPU instead"
                target = torch.device("cpu")
                tile_size = _initial_tile(target, None, _working_shape(pet_suv.shape, pet_spacing_xyz))
            else:
                smaller = _halve(tile_size, ct_hu_on_pet.shape, pet_spacing_xyz)
                note = f"CUDA ran out of memory with tile {tile_size or 'whole volume'}; retrying with tile {smaller}"
                tile_size = smaller
            notes.append(note)
            report(0.0, note)


def _working_shape(shape: Sequence[int], spacing_xyz: Sequence[float]) -> Tuple[int, ...]:
    spacing_zyx = tuple(reversed([float(s) for s in spacing_xyz]))
    return preprocessing.working_shape(shape, spacing_zyx, tuple(reversed(preprocessing.WORKING_SPACING_MM)))


def _initial_tile(
    device: torch.device, tile: Optional[Sequence[int]], working: Sequence[int]
) -> Optional[Tuple[int, int, int]]:
    """None (whole volume in one pass) on CUDA; on CPU slabs spanning the whole slice plane.

    Slabs rather than cubes: a tile pays for its overlap with its neighbours, and a slab that
    spans the body's full cross-section has neighbours only above and below it.
    """
    if tile is not None:
        if len(tile) != 3 or min(int(t) for t in tile) < MIN_TILE:
            raise ValueError(f"tile must be three sizes (z, y, x) of at least {MIN_TILE} working voxels, got {tile!r}")
        return tuple(int(t) for t in tile)
    if device.type == "cuda":
        return None
    plane = _round_up(working[1]) * _round_up(working[2])
    depth = max(MIN_TILE, (CPU_TILE_VOXELS // plane) // 8 * 8)
    if depth < 2 * TILE_OVERLAP:  # a very large slice plane: cut it in-plane too
        side = max(MIN_TILE, int(math.sqrt(CPU_TILE_VOXELS / MIN_TILE)) // 8 * 8)
        return (MIN_TILE, side, side)
    return (depth, _round_up(working[1]), _round_up(working[2]))


def _round_up(n: int, multiple: int = 8) -> int:
    return int(math.ceil(n / multiple)) * multiple


def _halve(tile: Optional[Tuple[int, int, int]], shape: Sequence[int], spacing_xyz: Sequence[float]):
    if tile is None:
        tile = _working_shape(shape, spacing_xyz)
    return tuple(max(MIN_TILE, _round_up(int(math.ceil(t / 2)))) for t in tile)


@contextlib.contextmanager
def _deterministic_cudnn() -> Iterator[None]:
    saved = (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    try:
        yield
    finally:
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = saved


def _predict_on(model, ct_hu, pet_suv, spacing_xyz, device, tile, report, cancel) -> np.ndarray:
    spacing_zyx = tuple(reversed([float(s) for s in spacing_xyz]))
    model = model.to(device).eval()
    with torch.inference_mode(), _deterministic_cudnn():
        report(0.02, f"preparing the input on {device}")
        image = preprocessing.normalise(
            torch.from_numpy(np.require(ct_hu, np.float32, ["C", "W"])).to(device),
            torch.from_numpy(np.require(pet_suv, np.float32, ["C", "W"])).to(device),
        )
        image = preprocessing.to_working_grid(image, spacing_zyx)
        logits = sliding_window_logits(model, image, tile, device, report, cancel)
        report(0.95, "resampling the probability onto the PET grid")
        probability = torch.sigmoid(logits)
        probability = preprocessing.from_working_grid(probability[None], pet_suv.shape, spacing_zyx)[0]
        return probability.float().cpu().numpy()


def sliding_window_logits(
    model: LesionUNet,
    image: torch.Tensor,
    tile: Optional[Tuple[int, int, int]],
    device: torch.device,
    report: ProgressCallback,
    cancel: Optional[CancelCallback],
) -> torch.Tensor:
    """[2, D, H, W] normalised working-grid image -> [D, H, W] float32 logits (tiles blended)."""
    multiple = model.size_multiple
    padded, shape = preprocessing.pad_to_multiple(image, multiple, preprocessing.padding_values())
    full = padded.shape[1:]
    tile = (
        tuple(full)
        if tile is None
        else tuple(min(int(math.ceil(t / multiple)) * multiple, n) for t, n in zip(tile, full))
    )
    starts = [_tile_starts(n, t) for n, t in zip(full, tile)]
    positions = [(z, y, x) for z in starts[0] for y in starts[1] for x in starts[2]]
    single = len(positions) == 1
    # One tile: its logits are the result; no accumulation buffers (a whole-volume pass on CUDA).
    total = None if single else torch.zeros(full, dtype=torch.float32, device=device)
    weights = None if single else torch.zeros(full, dtype=torch.float32, device=device)
    blend = None if single else _blend_weight(tile, device)
    autocast = torch.autocast("cuda", dtype=torch.float16) if device.type == "cuda" else contextlib.nullcontext()
    for index, (z, y, x) in enumerate(positions):
        if cancel is not None and cancel():
            raise RunCancelledError("lesion detection was cancelled")
        report(0.05 + 0.9 * index / len(positions), f"network: tile {index + 1} of {len(positions)} on {device}")
        window = (slice(z, z + tile[0]), slice(y, y + tile[1]), slice(x, x + tile[2]))
        with autocast:
            logits = model(padded[(slice(None),) + window][None])[0, 0].float()
        if single:
            total = logits
        else:
            total[window] += logits * blend
            weights[window] += blend
    if not single:
        total /= weights
    return total[: shape[0], : shape[1], : shape[2]]


def _tile_starts(size: int, tile: int) -> List[int]:
    if size <= tile:
        return [0]
    step = tile - TILE_OVERLAP
    count = int(math.ceil((size - tile) / step)) + 1
    return sorted({int(round(i * (size - tile) / (count - 1))) for i in range(count)})


def _blend_weight(tile: Sequence[int], device: torch.device) -> torch.Tensor:
    """Separable weight: 1 in the tile's core, falling linearly to ~0 over TILE_OVERLAP at its border."""
    axes = []
    for n in tile:
        index = torch.arange(n, dtype=torch.float32, device=device)
        distance = torch.minimum(index + 0.5, n - index - 0.5)
        axes.append((distance / (TILE_OVERLAP / 2)).clamp(1e-3, 1.0))
    return axes[0][:, None, None] * axes[1][None, :, None] * axes[2][None, None, :]
