"""Model files: save, find and load the network weights with their manifest.

A model is two files side by side:
- ``<name>.pt``: ``torch.save`` of a plain dict (architecture, version, features, training
  facts, ``state_dict`` stored as float16 to halve the size). Loaded with
  ``weights_only=True``: a model file cannot run code.
- ``<name>.json``: the manifest: file name, SHA-256 of the ``.pt``, architecture and version,
  and the model card's numbers. The checksum catches a truncated download or a file replaced
  by another; the version catches weights made for another network.

The manifest's numbers that the code uses (``threshold``, ``working_spacing_mm``, ``features``)
and its ``file`` (a file name beside the manifest, never a path out of its folder) are checked
before the weights are read; a bad value names the manifest and the key.

A manifest may name a false-positive filter (``"false_positive_filter": {"file": ..., "sha256": ...}``,
a JSON file of numbers beside it, :mod:`.false_positive_filter`): it is checked the same way and
carried as ``LoadedModel.false_positive_filter``; detection applies it.

The bundled model lives in ``PETCTLesions/Resources/Models`` (installed next to the module
by the extension's CMakeLists); ``PETCTLESIONS_MODEL`` (a manifest path) overrides it.
"""

from __future__ import annotations

import hashlib
import json
import math
import numbers
import os
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Union

import numpy as np
import torch

from ..errors import ModelFileError
from ..fileio import atomic_output, atomic_write_bytes, atomic_write_text, is_inside, is_safe_file_name
from ..jobs import CancelCallback, ProgressCallback
from . import inference
from .false_positive_filter import FalsePositiveFilter, read_filter
from .network import ARCHITECTURE, ARCHITECTURE_VERSION, LesionUNet
from .preprocessing import WORKING_SPACING_MM

BUNDLED_MODEL_NAME = "petct_lesions_unet_v1"
MODELS_DIR = Path(__file__).resolve().parents[2] / "Resources" / "Models"
MODEL_ENV_VARIABLE = "PETCTLESIONS_MODEL"
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_ZIP_MAGIC = b"PK\x03\x04"  # torch.save writes a zip archive


@dataclass
class LoadedModel:
    network: LesionUNet
    manifest: Dict[str, Any]
    manifest_path: Path
    false_positive_filter: Optional[FalsePositiveFilter] = None

    @property
    def threshold(self) -> float:
        return float(self.manifest.get("threshold", 0.5))

    @property
    def name(self) -> str:
        return str(self.manifest.get("name", self.manifest_path.stem))

    def predict_probability(
        self,
        ct_hu_on_pet: np.ndarray,
        pet_suv: np.ndarray,
        pet_spacing_xyz: Sequence[float],
        device: str = "auto",
        tile: Optional[Sequence[int]] = None,
        progress: Optional[ProgressCallback] = None,
        cancel: Optional[CancelCallback] = None,
    ) -> inference.ProbabilityResult:
        """The lesion probability on the PET grid (:func:`.inference.predict_probability` with this network);
        an nnU-Net model (:class:`.nnunet_model.NnUNetModel`) answers the same call."""
        return inference.predict_probability(
            self.network, ct_hu_on_pet, pet_suv, pet_spacing_xyz, device, tile, progress, cancel
        )


def bundled_manifest_path() -> Path:
    override = os.environ.get(MODEL_ENV_VARIABLE)
    return Path(override) if override else MODELS_DIR / f"{BUNDLED_MODEL_NAME}.json"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save_model(network: LesionUNet, manifest_path: Path, card: Optional[Dict[str, Any]] = None) -> Path:
    """Write ``<name>.pt`` and its manifest ``<name>.json`` atomically (temp file, then rename)."""
    manifest_path = Path(manifest_path)
    weights_path = manifest_path.with_suffix(".pt")
    manifest_path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "architecture": ARCHITECTURE,
        "version": ARCHITECTURE_VERSION,
        "features": list(network.features),
        "state_dict": {k: (v.half() if v.is_floating_point() else v) for k, v in network.state_dict().items()},
    }
    _check_numbers(dict(card or {}), manifest_path)  # a model that could not be loaded again is not written
    with atomic_output(weights_path, overwrite=True) as temporary:
        torch.save(payload, temporary)
    manifest = dict(card or {})
    manifest.update(
        {
            "name": manifest_path.stem,
            "file": weights_path.name,
            "sha256": sha256_of(weights_path),
            "architecture": ARCHITECTURE,
            "version": ARCHITECTURE_VERSION,
            "features": list(network.features),
        }
    )
    text = json.dumps(manifest, indent=2, sort_keys=True) + "\n"
    atomic_write_text(manifest_path, text, overwrite=True)
    return manifest_path


def load_model(manifest_path: Optional[Union[str, Path]] = None) -> LoadedModel:
    """Load a model by its manifest (default: the bundled one), checking checksum and version."""
    manifest_path = Path(manifest_path) if manifest_path is not None else bundled_manifest_path()
    manifest = _read_manifest(manifest_path)
    weights_path = _checked_file(manifest_path, manifest, "model weights file")
    payload = _read_weights(weights_path)
    _check_architecture(payload, weights_path)
    _check_features(payload["features"], weights_path)
    if "features" in manifest and list(payload["features"]) != list(manifest["features"]):
        raise ModelFileError(
            f"{weights_path}: holds a network with features {list(payload['features'])}, its manifest {manifest_path} "
            f"says {manifest['features']}: the two files are not of one model"
        )
    network = LesionUNet(features=payload["features"])
    try:
        network.load_state_dict(
            {k: v.float() if v.is_floating_point() else v for k, v in payload["state_dict"].items()}
        )
    except RuntimeError as error:
        raise ModelFileError(f"{weights_path}: weights do not fit the {ARCHITECTURE} network ({error})") from error
    return LoadedModel(network.eval(), manifest, manifest_path, _load_filter(manifest, manifest_path))


FILTER_KEY = "false_positive_filter"


def _load_filter(manifest: Dict[str, Any], manifest_path: Path) -> Optional[FalsePositiveFilter]:
    """The false-positive filter the manifest names (file beside it, checksum checked), or None."""
    entry = manifest.get(FILTER_KEY)
    if entry is None:
        return None
    if not isinstance(entry, dict):
        raise ModelFileError(f'{manifest_path}: "{FILTER_KEY}" must be an object with "file" and "sha256"')
    _check_weights_name(entry, manifest_path, "false-positive filter file")
    return read_filter(_checked_file(manifest_path, entry, "false-positive filter file"))


def _checked_file(manifest_path: Path, entry: Dict[str, Any], what: str) -> Path:
    """The file ``entry`` names beside the manifest, present and with the SHA-256 the entry gives."""
    path = manifest_path.parent / entry["file"]
    if not path.is_file():
        raise ModelFileError(f"{path}: {what} is missing (named by {manifest_path})")
    actual = sha256_of(path)
    if actual != entry.get("sha256"):
        raise ModelFileError(
            f"{path}: checksum {actual[:12]}... does not match the manifest's {str(entry.get('sha256'))[:12]}...: "
            "the file is corrupt or not the one the manifest describes"
        )
    return path


def attach_filter(manifest_path: Path, filter_path: Path) -> Path:
    """Name ``filter_path`` (copied beside the manifest when elsewhere) in the model's manifest, with its checksum."""
    manifest_path, filter_path = Path(manifest_path), Path(filter_path)
    manifest = _read_manifest(manifest_path)
    read_filter(filter_path)  # a file detection could not use is not attached
    target = manifest_path.parent / filter_path.name
    if target.resolve() != filter_path.resolve():
        atomic_write_bytes(target, filter_path.read_bytes(), overwrite=False)
    manifest[FILTER_KEY] = {"file": target.name, "sha256": sha256_of(target)}
    atomic_write_text(manifest_path, json.dumps(manifest, indent=2, sort_keys=True) + "\n", overwrite=True)
    return target


def _read_weights(path: Path) -> Dict[str, Any]:
    """The ``.pt`` payload, or an error that says why it is not one (empty, not a zip, truncated...)."""
    with open(path, "rb") as stream:
        start = stream.read(len(_ZIP_MAGIC))
    if not start:
        raise ModelFileError(
            f"{path}: cannot be read as a model file: it is empty (0 bytes); copy or download it again"
        )
    if start != _ZIP_MAGIC:
        raise ModelFileError(
            f"{path}: cannot be read as a model file: it is not a torch.save zip archive (it starts with {start!r})"
        )
    if not zipfile.is_zipfile(path):
        raise ModelFileError(
            f"{path}: cannot be read as a model file: the zip archive is truncated or damaged (no central directory); "
            "copy or download it again"
        )
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types for a damaged archive, some without a message
        reason = str(error).strip().splitlines()[0] if str(error).strip() else "no message"
        raise ModelFileError(f"{path}: cannot be read as a model file ({type(error).__name__}: {reason})") from error
    if not isinstance(payload, dict) or not {"features", "state_dict"} <= set(payload):
        raise ModelFileError(f"{path}: not a PETCTLesions model file (no features and state_dict in it)")
    return payload


def _read_manifest(path: Path) -> Dict[str, Any]:
    if not path.is_file():
        raise ModelFileError(f"{path}: model manifest not found (set {MODEL_ENV_VARIABLE} or pass a model path)")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ModelFileError(f"{path}: model manifest is not valid JSON ({error})") from error
    if not isinstance(manifest, dict):
        raise ModelFileError(f"{path}: model manifest must be a JSON object")
    _check_architecture(manifest, path)
    _check_weights_name(manifest, path)
    if not (isinstance(manifest.get("sha256"), str) and _SHA256.match(manifest["sha256"])):
        raise ModelFileError(
            f'{path}: "sha256" must be 64 lower-case hexadecimal digits, got {manifest.get("sha256")!r}'
        )
    _check_numbers(manifest, path)
    return manifest


def _check_weights_name(manifest: Dict[str, Any], path: Path, what: str = "weights file") -> None:
    """The weights are a file beside the manifest: a path elsewhere (``..``, absolute, a link out) is refused
    before anything is opened, so a manifest cannot make the model loader read and hash any file."""
    name = manifest.get("file")
    if not (isinstance(name, str) and is_safe_file_name(name) and not Path(name).is_absolute()):
        raise ModelFileError(f'{path}: "file" must be the name of the {what} beside the manifest, got {name!r}')
    if not is_inside(path.parent / name, path.parent):
        raise ModelFileError(
            f'{path}: "file" {name!r} is a link to a file outside the manifest\'s folder; '
            f"put the {what} itself beside the manifest"
        )


def _check_numbers(manifest: Dict[str, Any], path: Path) -> None:
    """The manifest's numbers that detection uses: a bad one would change every result silently."""
    if "threshold" in manifest:
        threshold = manifest["threshold"]
        if not (_is_finite_number(threshold) and 0.0 < threshold < 1.0):
            raise ModelFileError(f'{path}: "threshold" must be a probability between 0 and 1, got {threshold!r}')
    if "working_spacing_mm" in manifest:
        spacing = manifest["working_spacing_mm"]
        if not (isinstance(spacing, list) and len(spacing) == 3 and all(_is_finite_number(v) for v in spacing)):
            raise ModelFileError(f'{path}: "working_spacing_mm" must be three numbers x, y, z, got {spacing!r}')
        # The grid the network works on is fixed in preprocessing: weights trained on another one would see
        # every structure at the wrong size.
        if any(not math.isclose(v, w, rel_tol=1e-6) for v, w in zip(spacing, WORKING_SPACING_MM)):
            raise ModelFileError(
                f'{path}: "working_spacing_mm" is {spacing}, but this PETCTLesions resamples to '
                f"{list(WORKING_SPACING_MM)} mm: the model was trained for another working grid"
            )
    if "features" in manifest:
        _check_features(manifest["features"], path)


def _check_features(features: object, path: Path) -> None:
    """The network's widths, level by level: a list of positive whole numbers, at least two (a U-Net of one level
    is none), so that a file that says otherwise is refused as such, not by the network's constructor."""
    if not (
        isinstance(features, (list, tuple))
        and len(features) >= 2
        and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in features)
    ):
        raise ModelFileError(
            f'{path}: "features" must be a list of positive whole numbers, at least two, got {features!r}'
        )


def _is_finite_number(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def _check_architecture(content: Dict[str, Any], path: Path) -> None:
    if content.get("architecture") != ARCHITECTURE or content.get("version") != ARCHITECTURE_VERSION:
        raise ModelFileError(
            f"{path}: made for architecture {content.get('architecture')!r} version {content.get('version')!r}; "
            f"this PETCTLesions runs {ARCHITECTURE!r} version {ARCHITECTURE_VERSION}"
        )
