"""Run the lesion network on a study: device choice, tiling, mixed precision, OOM fallback.

Input: CT (HU) already on the PET grid and PET (SUVbw), numpy [k, j, i], plus the PET
spacing. Output: the lesion probability on the PET grid. Nothing is written anywhere, so a
cancelled run (``cancel()`` returning True between tiles raises :class:`~PETCTLesionsLib.errors.Cancelled`) leaves
nothing half-made; callers write their files only from a finished result.

Tiling: the working-grid volume is cut into overlapping tiles whose predictions are blended
with a weight that tapers towards each tile's border (the network sees less context there).
A tile as large as the whole volume is one pass; on CUDA the whole volume is tried first,
on CPU tiles keep peak memory bounded. On CUDA out-of-memory the tile is halved and the run
repeated; below the smallest tile the run moves to the CPU. Each such step is reported in
``ProbabilityResult.notes`` and through ``progress``.

Devices: ``auto`` takes CUDA, then Apple MPS, then the CPU. MPS is probed once per process (a
tiny network of the same layers run through the same steps, compared with the CPU), because
torch before 2.8 lacks some of the model's 3D operations there (ConvTranspose3d, 3D max
pooling): ``auto`` then falls back to the CPU with a note, and an explicit ``mps`` is refused.

Arrays cross into torch and back through the buffer protocol, never torch's numpy bridge
(``torch.from_numpy``, ``Tensor.numpy``): the bridge works only with the numpy major version
torch was built against, and Slicer 5.10's macOS build pairs numpy 2 with torch <= 2.2.2 (built
against numpy 1), where the bridge raises "Numpy is not available".

Determinism: cuDNN's deterministic algorithms are used and benchmarking is off while the
model runs, so the same input on the same device gives the same output.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch

from ..errors import InputError
from ..jobs import CancelCallback, ProgressCallback, check_cancel
from . import preprocessing
from .network import LesionUNet

DeviceProbe = Callable[[torch.device], Optional[str]]  # None: the device runs the model; else why it cannot
DEVICES = ("auto", "cuda", "mps", "cpu")
CPU_TILE_VOXELS = 3_500_000  # working voxels per tile on CPU: about 2.5 GB peak with the default network
MIN_TILE = 32
TILE_OVERLAP = 16  # working voxels shared by neighbouring tiles (about 5 cm)
# The probe's output (a probability) may differ from the CPU's by rounding (float16, other kernels),
# never by this much: a larger difference is a backend computing something else.
PROBE_TOLERANCE = 0.02


@dataclass
class ProbabilityResult:
    probability: np.ndarray  # float32 [k, j, i] on the PET grid, 0..1
    device: str  # the device that produced it ("cuda:0", "cpu", ...)
    tile: Tuple[int, int, int]  # working-grid tile used (z, y, x)
    notes: List[str] = field(default_factory=list)  # fallbacks taken, in order


def choose_device(requested: str = "auto") -> torch.device:
    """'auto' picks CUDA, then Apple MPS, then CPU; an explicit device that is missing is an error."""
    if requested not in DEVICES and not requested.startswith("cuda:"):
        raise InputError(f"device must be one of {', '.join(DEVICES)} (or cuda:N), got {requested!r}")
    has_mps = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    if requested == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps") if has_mps else torch.device("cpu")
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(
            f"device {requested!r} was asked for but torch sees no CUDA GPU (torch.cuda.is_available() is False)"
        )
    if requested == "mps" and not has_mps:
        raise InputError("device 'mps' was asked for but torch's Apple MPS backend is not available")
    return torch.device(requested)


@dataclass(frozen=True)
class DeviceChoice:
    device: torch.device
    note: str = ""  # why the device is not the one 'auto' first picked ("" when it is)


def choose_working_device(requested: str = "auto", probe: Optional[DeviceProbe] = None) -> DeviceChoice:
    """:func:`choose_device`, then a probe of Apple MPS (``probe``, default :func:`probe_device`).

    A failing probe sends 'auto' to the CPU with a note, as CUDA running out of memory does; an
    explicit 'mps' is refused (InputError), as a missing device is: the user asked for that device.
    CUDA is not probed: it has every operation the model uses, and running out of memory is handled
    where it happens.
    """
    device = choose_device(requested)
    if device.type != "mps":
        return DeviceChoice(device)
    failure = (probe or probe_device)(device)
    if failure is None:
        return DeviceChoice(device)
    why = f"Apple MPS cannot run the lesion model with torch {torch.__version__} ({failure})"
    if requested == "auto":
        return DeviceChoice(torch.device("cpu"), f"{why}; running on the CPU instead")
    raise InputError(f"device 'mps' was asked for but {why}; choose 'auto' or 'cpu' (torch 2.8 or later may run it)")


_PROBED: Dict[str, Optional[str]] = {}  # device -> None (works) or why not: probed once per process


def probe_device(device: torch.device) -> Optional[str]:
    """None when ``device`` runs the model's steps as the CPU does, else what went wrong (cached).

    A network with the model's layers (3D convolution, batch norm, max pooling, transposed
    convolution) but a few channels, on a few voxels, through the same steps as a study
    (normalisation, working grid, tiles, probability back on the input grid), compared with the
    CPU: a missing operation raises, a wrong one differs.
    """
    key = str(device)
    if key not in _PROBED:
        _PROBED[key] = _probe(device)
    return _PROBED[key]


def _probe(device: torch.device) -> Optional[str]:
    generator = torch.Generator().manual_seed(0)
    shape = (40, 10, 10)  # [k, j, i]: two tiles along k; at 4.07 mm the in-plane axes are resampled
    spacing_xyz, tile = (4.07, 4.07, 3.0), (32, 10, 10)
    ct = _array_from_tensor(torch.rand(shape, generator=generator) * 2000 - 1000)
    pet = _array_from_tensor(torch.rand(shape, generator=generator) * 10)
    with torch.random.fork_rng(devices=[]):  # the caller's random state stays as it was
        torch.manual_seed(0)
        network = LesionUNet(features=(4, 8)).eval()
    expected = _predict_on(network, ct, pet, spacing_xyz, torch.device("cpu"), tile, _quiet, None)
    try:
        found = _predict_on(network, ct, pet, spacing_xyz, device, tile, _quiet, None)
    except Exception as error:  # a backend lacking an operation raises NotImplementedError, RuntimeError, ...
        lines = str(error).strip().splitlines()
        return f"{type(error).__name__}: {lines[0] if lines else 'no message'}"
    difference = float(np.abs(found - expected).max())
    if not difference <= PROBE_TOLERANCE:  # NaN too
        return f"its result differs from the CPU's by {difference:.3g}"
    return None


def _quiet(fraction: float, message: str) -> None:
    pass


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
    choice = choose_working_device(device)
    target = choice.device
    notes: List[str] = [choice.note] if choice.note else []
    if choice.note:
        report(0.0, choice.note)
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
        image = preprocessing.normalise(_tensor_from_array(ct_hu).to(device), _tensor_from_array(pet_suv).to(device))
        image = preprocessing.to_working_grid(image, spacing_zyx)
        logits = sliding_window_logits(model, image, tile, device, report, cancel)
        report(0.95, "resampling the probability onto the PET grid")
        probability = torch.sigmoid(logits)
        probability = preprocessing.from_working_grid(probability[None], pet_suv.shape, spacing_zyx)[0]
        return _array_from_tensor(probability)


def _tensor_from_array(array: np.ndarray) -> torch.Tensor:
    """A float32 CPU tensor on ``array``'s memory (no copy when it is float32, C-ordered and writable).

    ``torch.frombuffer`` reads the buffer protocol, which does not depend on the numpy torch was
    built against (``torch.from_numpy`` does: see the module docstring); it is as cheap.
    """
    values = np.require(array, np.float32, ["C", "W"])
    if values.size == 0:  # frombuffer refuses an empty buffer
        return torch.empty(values.shape, dtype=torch.float32)
    return torch.frombuffer(values, dtype=torch.float32).view(values.shape)


def _array_from_tensor(tensor: torch.Tensor) -> np.ndarray:
    """``tensor`` (any device, any floating dtype) as a new float32 array, without ``Tensor.numpy``."""
    array = np.empty(tuple(tensor.shape), np.float32)
    _tensor_from_array(array).copy_(tensor)  # one copy, from the device and to float32 at once
    return array


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
        check_cancel(cancel, "lesion detection was cancelled")
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
