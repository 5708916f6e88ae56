"""Model files: save, find and load the network weights with their manifest.

A model is two files side by side:
- ``<name>.pt``: ``torch.save`` of a plain dict (architecture, version, features, training
  facts, ``state_dict`` stored as float16 to halve the size). Loaded with
  ``weights_only=True``: a model file cannot run code.
- ``<name>.json``: the manifest: file name, SHA-256 of the ``.pt``, architecture and version,
  and the model card's numbers. The checksum catches a truncated download or a file replaced
  by another; the version catches weights made for another network.

The bundled model lives in ``PETCTLesions/Resources/Models`` (installed next to the module
by the extension's CMakeLists); ``PETCTLESIONS_MODEL`` (a manifest path) overrides it.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional, Union

import torch

from ..fileio import atomic_output, atomic_write_text
from .network import ARCHITECTURE, ARCHITECTURE_VERSION, LesionUNet

BUNDLED_MODEL_NAME = "petct_lesions_unet_v1"
MODELS_DIR = Path(__file__).resolve().parents[2] / "Resources" / "Models"
MODEL_ENV_VARIABLE = "PETCTLESIONS_MODEL"


class ModelFileError(ValueError):  # a bad input file, as the readers' errors are
    """A model file is missing, corrupt or made for another network; the message names the file."""


@dataclass
class LoadedModel:
    network: LesionUNet
    manifest: Dict[str, Any]
    manifest_path: Path

    @property
    def threshold(self) -> float:
        return float(self.manifest.get("threshold", 0.5))

    @property
    def name(self) -> str:
        return str(self.manifest.get("name", self.manifest_path.stem))


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
    weights_path = manifest_path.parent / str(manifest.get("file", ""))
    if not weights_path.is_file():
        raise ModelFileError(f"{weights_path}: model weights file is missing (named by {manifest_path})")
    actual = sha256_of(weights_path)
    if actual != manifest.get("sha256"):
        raise ModelFileError(
            f"{weights_path}: checksum {actual[:12]}... does not match the manifest's "
            f"{str(manifest.get('sha256'))[:12]}...: the file is corrupt or not the one the manifest describes"
        )
    try:
        payload = torch.load(weights_path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types for a damaged archive
        raise ModelFileError(f"{weights_path}: cannot be read as a model file ({error})") from error
    _check_architecture(payload, weights_path)
    network = LesionUNet(features=payload["features"])
    try:
        network.load_state_dict(
            {k: v.float() if v.is_floating_point() else v for k, v in payload["state_dict"].items()}
        )
    except RuntimeError as error:
        raise ModelFileError(f"{weights_path}: weights do not fit the {ARCHITECTURE} network ({error})") from error
    return LoadedModel(network.eval(), manifest, manifest_path)


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
    return manifest


def _check_architecture(content: Dict[str, Any], path: Path) -> None:
    if content.get("architecture") != ARCHITECTURE or content.get("version") != ARCHITECTURE_VERSION:
        raise ModelFileError(
            f"{path}: made for architecture {content.get('architecture')!r} version {content.get('version')!r}; "
            f"this PETCTLesions runs {ARCHITECTURE!r} version {ARCHITECTURE_VERSION}"
        )
