"""A user's own nnU-Net v2 model (e.g. one trained on real autoPET patients), run by nnU-Net's own code.

A trained-model folder, as ``nnUNetv2_train`` leaves it::

    <trainer>__<plans>__<configuration>/      e.g. nnUNetTrainer__nnUNetPlans__3d_fullres
        dataset.json                          channel_names, labels
        plans.json                            preprocessing, target spacing, patch size, network
        fold_0/checkpoint_final.pth           (and checkpoint_best.pth), fold_1/ ... or fold_all/

is run by nnunetv2's ``nnUNetPredictor`` (``initialize_from_trained_model_folder``, then
``predict_single_npy_array`` with the properties ``{"spacing": ...}``), so normalisation, resampling
to the model's spacing, the sliding window (Gaussian-weighted tiles, ``tile_step``), mirroring and
the ensemble of folds are nnU-Net's own; none of them is re-implemented here. What this module adds:

- the input: the CT on the PET grid and the PET (SUV), numpy ``[k, j, i]``, which is the axis order
  nnU-Net's SimpleITK reader gives (``sitk.GetArrayFromImage``), with the spacing reversed to
  (z, y, x) as that reader reverses it; stacked in the order of ``dataset.json``'s ``channel_names``
  (:func:`channel_feed`: CT and PET by name, in any case);
- the output: nnU-Net's segmentation and class probabilities on the input grid (the PET grid) made
  into one lesion probability (:func:`lesion_probability`) that the bundled model's post-processing
  (``detection.lesions_from_probability`` at the model's threshold, 0.5) cuts into exactly nnU-Net's
  segmentation of the lesion labels; measurements, boxes and exports follow as for the bundled model;
- device choice, CUDA running out of memory (after nnU-Net's own fallback) moving the run to the CPU
  with a note, progress and cancel at each network pass.

Security: nnU-Net's checkpoints (``fold_N/checkpoint_*.pth``) are Python pickles, and nnU-Net loads
them with ``torch.load(weights_only=False)``: loading one can run any code its maker put in it. Use
only model folders from a source you trust, as you would a program (:data:`PICKLE_WARNING`). Nothing
is loaded before a run is asked for; describing a folder reads its JSON files and file names only.

Cancel: checked before each network pass (a forward pre-hook on nnU-Net's network) and between the
steps. nnU-Net's preprocessing (normalisation and resampling of the input), its resampling of the
probabilities back onto the PET grid and the loading of the checkpoints are single calls into
nnU-Net that cannot be interrupted; the detection worker is stopped whatever it runs (its process
ends). A run cancelled mid-window leaves nnU-Net's tile-feeding thread (a daemon) waiting, with the
preprocessed image, until the process ends.

Only the standard library and numpy are imported here; torch and nnunetv2 when a model is loaded,
so describing a folder (the module's panel) works without them.
"""

from __future__ import annotations

import importlib.util
import math
import re
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from ..errors import InputError, ModelFileError, SetupError
from ..formats.nnunet import channel_kind
from ..jobs import CancelCallback, ProgressCallback, check_cancel

if TYPE_CHECKING:
    from .inference import ProbabilityResult

DATASET_JSON = "dataset.json"
PLANS_JSON = "plans.json"
DEFAULT_CHECKPOINT = "checkpoint_final.pth"
CHECKPOINT_SHORT_NAMES = {"final": "checkpoint_final.pth", "best": "checkpoint_best.pth"}
DEFAULT_TILE_STEP = 0.5  # nnU-Net's own default: tiles overlap by half a patch
THRESHOLD = 0.5  # the lesion probability at which nnU-Net's segmentation is cut (see lesion_probability)

PICKLE_WARNING = (
    "nnU-Net checkpoints (fold_N/checkpoint_*.pth) are Python pickles: loading one can run any code its "
    "maker put in it. Use only model folders from a source you trust, as you would a program."
)
# nnunetv2 2.6 and later need Python 3.10 (Slicer 5.10 and later); 2.5.2 is the newest for Python 3.9 (Slicer 5.6, 5.8).
NNUNET_FOR_PYTHON_39 = "nnunetv2==2.5.2"
NNUNET_INSTALL_HINT = (
    "install it with: pip install nnunetv2 (on Python 3.9, e.g. Slicer 5.6 and 5.8: "
    f"pip install {NNUNET_FOR_PYTHON_39}); in Slicer the module offers to install it"
)

_FOLD_FOLDER = re.compile(r"^fold_(\d+|all)$")
_CHECKPOINT_FILE = re.compile(r"^checkpoint_[A-Za-z0-9_.-]+\.pth$")
_RESULTS_FOLDER = re.compile(r"^(?P<trainer>.+?)__(?P<plans>.+?)__(?P<configuration>[^_].*)$")
_DATASET_FOLDER = re.compile(r"^Dataset\d{3}_")
# Files beside a published model that say under which terms it may be used (and how it was made).
_LICENCE_STEMS = ("license", "licence", "copying", "readme", "model_card", "modelcard")
_LICENCE_CHARACTERS = 20_000


# ------------------------------------------------------------------------------ the folder


@dataclass(frozen=True)
class ChannelFeed:
    """What each of the model's input channels is given, in channel order, and what a user should know."""

    inputs: Tuple[str, ...]  # "ct" (HU, on the PET grid) or "pet" (SUVbw) per model channel
    note: str = ""  # e.g. that the CT is not fed to a PET-only model; "" when nothing is unusual


@dataclass(frozen=True)
class NnUNetModelInfo:
    """What a trained-model folder holds, read from its JSON files and file names (nothing is unpickled)."""

    folder: Path
    name: str  # dataset.json's "name", else the dataset folder's name, else the folder's
    configuration: str  # from the folder's name <trainer>__<plans>__<configuration>; "" if named otherwise
    channel_names: Tuple[str, ...]  # dataset.json's channel_names, in channel order
    feed: ChannelFeed
    labels: Dict[str, int]  # the foreground labels by name (background and "ignore" left out)
    checkpoints: Dict[str, Tuple[str, ...]]  # fold ("0", "1", ..., "all") -> checkpoint files in fold_<fold>/
    licence_file: Optional[Path] = None  # a LICENSE / README / model card beside the model, if any
    licence: str = ""  # its text (the first 20,000 characters)

    @property
    def folds(self) -> Tuple[str, ...]:
        return tuple(self.checkpoints)

    def folds_with(self, checkpoint: str) -> Tuple[str, ...]:
        return tuple(fold for fold, files in self.checkpoints.items() if checkpoint in files)

    def summary(self) -> List[str]:
        """The lines a front end shows: name, inputs (and what each is fed), labels, folds and checkpoints, licence."""
        fed = ", ".join(
            f"{index} {name} <- {kind.upper()}"
            for index, (name, kind) in enumerate(zip(self.channel_names, self.feed.inputs))
        )
        return [
            f"nnU-Net model: {self.name}" + (f" ({self.configuration})" if self.configuration else ""),
            f"inputs: {fed}" + (f" ({self.feed.note})" if self.feed.note else ""),
            "labels: " + ", ".join(f"{value} {name}" for name, value in self.labels.items()),
            "folds: " + "; ".join(f"{fold} ({', '.join(files)})" for fold, files in self.checkpoints.items()),
            f"licence: {self.licence_file}" if self.licence_file else "licence: no LICENSE or README in the folder",
        ]


def is_nnunet_model_folder(path: Union[str, Path, None]) -> bool:
    """A folder with nnU-Net's ``dataset.json`` and ``plans.json`` (its folds are checked by :func:`describe_model`)."""
    if path is None:
        return False
    path = Path(path)
    return path.is_dir() and (path / DATASET_JSON).is_file() and (path / PLANS_JSON).is_file()


def describe_model(folder: Union[str, Path]) -> NnUNetModelInfo:
    """What the trained-model ``folder`` holds, or a :class:`~PETCTLesionsLib.errors.ModelFileError` saying
    why this module cannot run it (not such a folder, no checkpoint, inputs it cannot feed, region labels)."""
    folder = Path(folder)
    if not is_nnunet_model_folder(folder):
        raise ModelFileError(
            f"{folder}: not an nnU-Net v2 trained-model folder (one holds dataset.json, plans.json and "
            "fold_N/checkpoint_final.pth, e.g. nnUNet_results/Dataset221_X/nnUNetTrainer__nnUNetPlans__3d_fullres)"
        )
    dataset_json = _read_json_object(folder / DATASET_JSON)
    _read_json_object(folder / PLANS_JSON)
    channel_names = _channel_names(dataset_json, folder / DATASET_JSON)
    checkpoints = _checkpoints(folder)
    licence_file = _licence_file(folder)
    parts = _RESULTS_FOLDER.match(folder.name)
    return NnUNetModelInfo(
        folder=folder,
        name=_model_name(dataset_json, folder),
        configuration=parts.group("configuration") if parts else "",
        channel_names=channel_names,
        feed=channel_feed(channel_names, folder / DATASET_JSON),
        labels=_foreground_labels(dataset_json.get("labels"), folder / DATASET_JSON),
        checkpoints=checkpoints,
        licence_file=licence_file,
        licence=_read_text(licence_file) if licence_file else "",
    )


def channel_feed(channel_names: Sequence[str], path: Path) -> ChannelFeed:
    """What to give each input channel of a model whose ``dataset.json`` (``path``) names them ``channel_names``.

    Names are read as :func:`formats.nnunet.channel_kind` reads a dataset's (any case; "PET", "PT",
    "SUV", ... name a PET; nnU-Net's normalisation schemes name neither). Two channels: CT and PET by
    their names in either order; one named and the other a scheme: the other is the other; both CT
    (published autoPET models normalise the PET as a CT) or both schemes: the autoPET order, 0 CT and
    1 PET, said in the note. One PET channel: the PET alone is fed, said in the note. Anything else
    (a CT-only model, MR, three channels) is refused with what the model expects: a lesion model here
    reads the PET, and the study has nothing else to give.
    """
    names = list(channel_names)
    kinds = [channel_kind(name) for name in names]
    expects = f"the model expects {len(names)} input channel(s) {_listed(names)}"
    if len(names) == 1 and kinds[0] == "pet":
        return ChannelFeed(("pet",), "the model reads the PET only: the CT is not fed to it")
    if len(names) == 2 and None not in kinds and kinds.count("pet") < 2:
        if "ct" in kinds and "pet" in kinds:
            return ChannelFeed(tuple(kinds))
        if kinds.count("ct") == 1 or kinds.count("pet") == 1:  # the other channel is named by a scheme
            known = "ct" if "ct" in kinds else "pet"
            other = "pet" if known == "ct" else "ct"
            return ChannelFeed(tuple(kind if kind == known else other for kind in kinds))
        return ChannelFeed(
            ("ct", "pet"),
            f"channel_names {_listed(names)} do not say which is the PET: fed in the autoPET order, 0 CT and 1 PET",
        )
    if len(names) == 1 and kinds[0] == "ct":
        why = "it reads the CT only, and a lesion model here must read the PET"
    elif len(names) > 2:
        why = "this module gives two: the CT (on the PET grid) and the PET (SUV)"
    elif kinds.count("pet") == 2:
        why = "both named PET, and the study has one PET"
    elif len(names) == 1 and kinds[0] == "scheme":
        why = f"{names[0]!r} is a normalisation scheme, which does not say that the channel is the PET"
    else:
        unknown = [name for name, kind in zip(names, kinds) if kind is None]
        why = f"{', '.join(repr(name) for name in unknown)} {'is' if len(unknown) == 1 else 'are'} neither CT nor PET"
    raise ModelFileError(
        f"{path}: {expects}; {why}. This module feeds CT and PET, or the PET alone: channel_names must name "
        "them (CT; PET, PT or SUV; or an nnU-Net normalisation scheme such as zscore for one of the two)"
    )


def _listed(names: Sequence[str]) -> str:
    return "(" + ", ".join(repr(name) for name in names) + ")"


def _read_json_object(path: Path) -> Dict[str, Any]:
    import json

    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise ModelFileError(f"{path}: cannot be read as JSON ({error})") from error
    if not isinstance(content, dict):
        raise ModelFileError(f"{path}: expected a JSON object")
    return content


def _channel_names(dataset_json: Mapping[str, Any], path: Path) -> Tuple[str, ...]:
    names = dataset_json.get("channel_names", dataset_json.get("modality"))  # "modality": nnU-Net v1's name
    if not isinstance(names, dict) or not names or not all(isinstance(v, str) for v in names.values()):
        raise ModelFileError(f'{path}: channel_names must be an object such as {{"0": "CT", "1": "PET"}}')
    if sorted(names, key=lambda key: (len(key), key)) != [str(i) for i in range(len(names))]:
        raise ModelFileError(f"{path}: channel_names keys must be '0'..'{len(names) - 1}', got {list(names)}")
    return tuple(names[str(i)] for i in range(len(names)))


def _foreground_labels(labels: object, path: Path) -> Dict[str, int]:
    """dataset.json's labels but background and nnU-Net's "ignore"; region-based models are refused."""
    if not isinstance(labels, dict) or labels.get("background") != 0:
        raise ModelFileError(f"{path}: labels must be an object mapping 'background' to 0, got {labels!r}")
    foreground = {}
    for name, value in labels.items():
        if name in ("background", "ignore"):
            continue
        if isinstance(value, (list, tuple)):
            raise ModelFileError(
                f"{path}: label {name!r} is a region ({value!r}): region-based nnU-Net models are not supported; "
                "use a model trained with one value per label"
            )
        if not (isinstance(value, int) and not isinstance(value, bool) and value > 0):
            raise ModelFileError(f"{path}: label {name!r} must be a whole number above 0, got {value!r}")
        foreground[str(name)] = value
    if not foreground:
        raise ModelFileError(f"{path}: labels has no label besides background: the model finds nothing")
    return dict(sorted(foreground.items(), key=lambda item: item[1]))


def _checkpoints(folder: Path) -> Dict[str, Tuple[str, ...]]:
    found = {}
    for child in folder.iterdir():
        match = _FOLD_FOLDER.match(child.name)
        if match and child.is_dir():
            files = sorted(f.name for f in child.iterdir() if _CHECKPOINT_FILE.match(f.name) and f.is_file())
            if files:
                found[match.group(1)] = tuple(files)
    if not found:
        raise ModelFileError(
            f"{folder}: no fold_N/checkpoint_*.pth in it: copy the trained folds (fold_0/checkpoint_final.pth, ...) "
            "with dataset.json and plans.json"
        )
    return dict(sorted(found.items(), key=lambda item: (item[0] == "all", int(item[0]) if item[0] != "all" else 0)))


def _model_name(dataset_json: Mapping[str, Any], folder: Path) -> str:
    name = dataset_json.get("name")
    if isinstance(name, str) and name.strip():
        return name.strip()
    parent = folder.resolve().parent.name
    return parent if _DATASET_FOLDER.match(parent) else folder.name


def _licence_file(folder: Path) -> Optional[Path]:
    """A LICENSE, README or model card in the model folder, else in its dataset folder (``Dataset<NNN>_...``)."""
    places = [folder]
    if _DATASET_FOLDER.match(folder.resolve().parent.name):
        places.append(folder.resolve().parent)
    for place in places:
        files = sorted((f for f in place.iterdir() if f.is_file()), key=lambda f: f.name.casefold())
        for stem in _LICENCE_STEMS:
            for file in files:
                if file.name.casefold().split(".")[0] == stem:
                    return file
    return None


def _read_text(path: Path) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as stream:
            return stream.read(_LICENCE_CHARACTERS)
    except OSError as error:
        return f"({path} could not be read: {error})"


# ----------------------------------------------------------------------------- the options


@dataclass(frozen=True)
class NnUNetOptions:
    """How to run an nnU-Net model; the defaults are nnU-Net's own but for mirroring on the CPU."""

    folds: Optional[Tuple[str, ...]] = None  # None: every fold holding the checkpoint (their ensemble)
    checkpoint: str = DEFAULT_CHECKPOINT  # a file name in fold_N/, or "final" / "best"
    tta: Optional[bool] = None  # mirroring test-time augmentation; None: on with CUDA, off on the CPU and MPS
    tile_step: float = DEFAULT_TILE_STEP  # sliding-window step as a fraction of the patch (0 < step <= 1)
    lesion_labels: Optional[Tuple[str, ...]] = None  # label names or values that are lesions; None: every non-zero

    def __post_init__(self) -> None:
        # JSON (the detection worker's job file) gives lists and numbers: kept as tuples of text.
        if self.folds is not None:
            object.__setattr__(self, "folds", tuple(str(fold) for fold in self.folds))
        if self.lesion_labels is not None:
            object.__setattr__(self, "lesion_labels", tuple(str(label) for label in self.lesion_labels))
        object.__setattr__(self, "checkpoint", CHECKPOINT_SHORT_NAMES.get(self.checkpoint, self.checkpoint))
        if not _CHECKPOINT_FILE.match(self.checkpoint):
            raise InputError(
                f"checkpoint must be 'final', 'best' or a file name checkpoint_<name>.pth, got {self.checkpoint!r}"
            )
        if not (isinstance(self.tile_step, (int, float)) and 0 < self.tile_step <= 1 and math.isfinite(self.tile_step)):
            raise InputError(f"tile step must be a fraction of the patch above 0 and at most 1, got {self.tile_step!r}")

    def to_json(self) -> Dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, content: Optional[Mapping[str, Any]]) -> Optional[NnUNetOptions]:
        return None if content is None else cls(**content)


def choose_folds(info: NnUNetModelInfo, options: NnUNetOptions) -> Tuple[str, ...]:
    """The folds to run: those asked for (each must hold the checkpoint), else every one that holds it."""
    holding = info.folds_with(options.checkpoint)
    found = "; ".join(f"fold_{fold}: {', '.join(files)}" for fold, files in info.checkpoints.items())
    if options.folds is None:
        if not holding:
            raise InputError(f"{info.folder}: no fold holds {options.checkpoint} ({found}); choose another checkpoint")
        return holding
    missing = [fold for fold in options.folds if fold not in holding]
    if missing:
        raise InputError(f"{info.folder}: no fold_{missing[0]}/{options.checkpoint} ({found})")
    if not options.folds:
        raise InputError("folds: give at least one fold")
    return tuple(dict.fromkeys(options.folds))


def choose_lesion_labels(info: NnUNetModelInfo, chosen: Optional[Sequence[str]]) -> Tuple[int, ...]:
    """The label values that are lesions: ``chosen`` by name or value, else every foreground label."""
    if chosen is None:
        return tuple(info.labels.values())
    by_name = {name.casefold(): value for name, value in info.labels.items()}
    values = []
    for label in chosen:
        text = str(label).strip()
        value = by_name.get(text.casefold(), int(text) if text.isdigit() else None)
        if value not in info.labels.values():
            shown = ", ".join(f"{value} {name}" for name, value in info.labels.items())
            raise InputError(f"lesion label {text!r} is not one of the model's labels ({shown})")
        values.append(value)
    if not values:
        raise InputError("lesion labels: give at least one label")
    return tuple(dict.fromkeys(values))


# ------------------------------------------------------------------------------- the model


def nnunet_requirement(python_version: Sequence[int] = tuple(sys.version_info[:2])) -> str:
    """What to install for this Python (Slicer offers it with ``slicer.util.pip_install``): nnunetv2 2.6 and
    later need Python 3.10 (Slicer 5.10 and later); 2.5.2 is the newest for Python 3.9 (Slicer 5.6 and 5.8)."""
    return "nnunetv2" if tuple(python_version) >= (3, 10) else NNUNET_FOR_PYTHON_39


def nnunet_pip_requirements(
    torch_version: Optional[str], python_version: Sequence[int] = tuple(sys.version_info[:2])
) -> List[str]:
    """What a front end installs (``pip install ...``; Slicer: ``slicer.util.pip_install``): nnunetv2 for this
    Python, and the installed torch held where it is (its version without the build label, e.g. ``torch==2.13.0``
    for 2.13.0+cu121): nnunetv2 needs timm, timm needs torchvision, and the newest torchvision would otherwise
    bring another torch (a download of several GB that replaces the PyTorch extension's)."""
    requirements = [nnunet_requirement(python_version)]
    if torch_version:
        requirements.append(f"torch=={torch_version.split('+')[0]}")
    return requirements


def nnunet_installed() -> bool:
    """Whether nnunetv2 is installed, without importing it (which imports torch): for a panel's install offer."""
    return importlib.util.find_spec("nnunetv2") is not None


def require_nnunetv2() -> None:
    """A :class:`~PETCTLesionsLib.errors.SetupError` with the install hint where nnunetv2 cannot be imported."""
    try:
        import nnunetv2.inference.predict_from_raw_data  # noqa: F401
    except ImportError as error:
        raise SetupError(
            f"running an nnU-Net model needs the nnunetv2 package ({error}); {NNUNET_INSTALL_HINT}"
        ) from error


class NnUNetModel:
    """An nnU-Net trained-model folder ready to run; :meth:`predict_probability` as the bundled model's.

    The checkpoints are loaded (unpickled, see the module docstring) by nnU-Net's predictor the first
    time a device needs them, and kept for the next study.
    """

    threshold = THRESHOLD

    def __init__(
        self, info: NnUNetModelInfo, options: NnUNetOptions, folds: Tuple[str, ...], lesion_labels: Tuple[int, ...]
    ) -> None:
        self.info = info
        self.options = options
        self.folds = folds
        self.lesion_labels = lesion_labels
        self._predictors: Dict[Tuple[str, bool], Any] = {}  # (device, mirroring) -> nnUNetPredictor

    @property
    def name(self) -> str:
        return self.info.name

    def predict_probability(
        self,
        ct_hu_on_pet: np.ndarray,
        pet_suv: np.ndarray,
        pet_spacing_xyz: Sequence[float],
        device: str = "auto",
        tile: Optional[Sequence[int]] = None,
        progress: Optional[ProgressCallback] = None,
        cancel: Optional[CancelCallback] = None,
    ) -> ProbabilityResult:
        """The lesion probability on the PET grid (:func:`lesion_probability`) from nnU-Net's prediction.

        ``tile`` is the bundled model's; nnU-Net's tiles are its plans' patch, stepped by ``options.tile_step``.
        """
        import torch

        from .inference import ProbabilityResult, choose_device

        if ct_hu_on_pet.shape != pet_suv.shape:
            raise ValueError(
                f"CT on the PET grid {ct_hu_on_pet.shape} and PET {pet_suv.shape} differ: "
                "resample the CT onto the PET grid"
            )
        report = progress or (lambda fraction, message: None)
        target = choose_device(device)
        notes: List[str] = []
        image = self.input_image(ct_hu_on_pet, pet_suv)
        spacing_zyx = [float(s) for s in reversed(list(pet_spacing_xyz))]  # as nnU-Net's SimpleITK reader gives it
        while True:
            check_cancel(cancel, "lesion detection was cancelled")
            try:
                segmentation, probabilities, predictor = self._run(target, image, spacing_zyx, report, cancel)
                break
            except torch.cuda.OutOfMemoryError:
                if target.type != "cuda":
                    raise
                torch.cuda.empty_cache()
                note = "CUDA ran out of memory running the nnU-Net model; running on the CPU instead"
            except (NotImplementedError, RuntimeError) as error:  # a backend lacking an operation of the network
                if target.type != "mps":
                    raise
                why = f"Apple MPS cannot run this nnU-Net model with torch {torch.__version__} ({_first_line(error)})"
                if device != "auto":
                    raise InputError(f"device 'mps' was asked for but {why}; choose 'auto' or 'cpu'") from error
                note = f"{why}; running on the CPU instead"
            target = torch.device("cpu")
            notes.append(note)
            report(0.0, note)
        report(0.97, "nnU-Net: lesion probability from the labels' probabilities")
        channels = [predictor.label_manager.all_labels.index(value) for value in self.lesion_labels]
        probability = lesion_probability(segmentation, probabilities, channels)
        patch = tuple(int(size) for size in predictor.configuration_manager.patch_size)
        return ProbabilityResult(probability, str(target), patch, notes)

    def input_image(self, ct_hu_on_pet: np.ndarray, pet_suv: np.ndarray) -> np.ndarray:
        """[channel, k, j, i] float32 in the model's channel order (``info.feed``)."""
        arrays = {"ct": ct_hu_on_pet, "pet": pet_suv}
        image = np.empty((len(self.info.feed.inputs),) + tuple(pet_suv.shape), np.float32)
        for index, kind in enumerate(self.info.feed.inputs):
            image[index] = arrays[kind]
        return image

    def mirroring(self, device: Any) -> bool:
        return self.options.tta if self.options.tta is not None else device.type == "cuda"

    def predictor(self, device: Any) -> Any:
        """nnU-Net's predictor on ``device``, the chosen folds' checkpoints loaded (once per device)."""
        key = (str(device), self.mirroring(device))
        if key not in self._predictors:
            self._predictors[key] = self._load_predictor(device, key[1])
        return self._predictors[key]

    def _load_predictor(self, device: Any, mirroring: bool) -> Any:
        require_nnunetv2()
        from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

        predictor = nnUNetPredictor(
            tile_step_size=float(self.options.tile_step),
            use_gaussian=True,
            use_mirroring=mirroring,
            perform_everything_on_device=device.type == "cuda",
            device=device,
            verbose=False,
            allow_tqdm=False,
        )
        try:
            predictor.initialize_from_trained_model_folder(str(self.info.folder), self.folds, self.options.checkpoint)
        except Exception as error:  # nnU-Net raises what torch.load, its trainer lookup or the network raise
            raise ModelFileError(
                f"{self.info.folder}: nnU-Net could not load folds {', '.join(self.folds)} "
                f"({self.options.checkpoint}): {type(error).__name__}: {_first_line(error)}"
            ) from error
        if predictor.configuration_manager.previous_stage_name is not None:
            raise ModelFileError(
                f"{self.info.folder}: a cascade's second stage, which needs the prediction of its first stage "
                f"({predictor.configuration_manager.previous_stage_name}): choose a 3d_fullres or 3d_lowres model"
            )
        return predictor

    def _run(self, device: Any, image: np.ndarray, spacing_zyx: List[float], report: ProgressCallback, cancel):
        """nnU-Net's segmentation and probabilities of ``image``, reporting and checking ``cancel`` at each pass."""
        import torch

        report(0.0, f"nnU-Net: loading folds {', '.join(self.folds)} ({self.options.checkpoint}) for {device}")
        predictor = self.predictor(device)
        passes = expected_network_passes(predictor, image.shape[1:], spacing_zyx)
        done = [0]

        def before_pass(module: Any, inputs: Any) -> None:
            check_cancel(cancel, "lesion detection was cancelled")
            report(
                0.1 + 0.85 * min(done[0], passes) / passes,
                f"nnU-Net: network pass {done[0] + 1} of {passes} on {device}",
            )
            done[0] += 1

        report(0.05, "nnU-Net: preprocessing (normalisation, resampling to the model's spacing)")
        hook = predictor.network.register_forward_pre_hook(before_pass)
        threads = torch.get_num_threads()  # nnU-Net sets its own and does not restore it when a pass raises
        try:
            segmentation, probabilities = predictor.predict_single_npy_array(
                image, {"spacing": spacing_zyx}, None, None, True
            )
        finally:
            hook.remove()
            torch.set_num_threads(threads)
        return segmentation, probabilities, predictor


def expected_network_passes(predictor: Any, shape_zyx: Sequence[int], spacing_zyx: Sequence[float]) -> int:
    """How many times nnU-Net will run its network on an image (for the progress bar): tiles of its patch over
    the image resampled to its spacing, times the mirrorings, times the folds. nnU-Net crops the image to
    its non-zero voxels first (a CT on the PET grid has none zero), which can only make it fewer."""
    from nnunetv2.inference.sliding_window_prediction import compute_steps_for_sliding_window
    from nnunetv2.preprocessing.resampling.default_resampling import compute_new_shape

    order = predictor.plans_manager.transpose_forward
    shape = [shape_zyx[i] for i in order]
    spacing = [spacing_zyx[i] for i in order]
    patch = list(predictor.configuration_manager.patch_size)
    target = list(predictor.configuration_manager.spacing)
    if len(target) < len(shape):  # a 2d model: slices keep their spacing and are predicted one by one
        target = [spacing[0]] + target
    new_shape = [int(n) for n in compute_new_shape(shape, spacing, target)]
    slices = new_shape[0] if len(patch) < len(new_shape) else 1
    planar = new_shape[len(new_shape) - len(patch) :]
    steps = compute_steps_for_sliding_window(
        [max(n, p) for n, p in zip(planar, patch)], patch, predictor.tile_step_size
    )
    tiles = slices * int(np.prod([len(s) for s in steps]))
    axes = predictor.allowed_mirroring_axes if predictor.use_mirroring else None
    mirrorings = 2 ** len(axes) if axes else 1
    return max(1, tiles * mirrorings * len(predictor.list_of_parameters))


def lesion_probability(
    segmentation: np.ndarray, probabilities: np.ndarray, lesion_channels: Sequence[int]
) -> np.ndarray:
    """One float32 lesion probability that :data:`THRESHOLD` cuts into nnU-Net's own segmentation of the lesions.

    The lesion labels' summed probability (nnU-Net's softmax over its labels), moved where it and
    nnU-Net's argmax disagree: at a voxel nnU-Net labels a lesion it is at least 0.5, elsewhere below
    0.5. With one lesion label they disagree at most where two classes tie exactly; with several
    labels, where the lesions together outweigh the background but another label outweighs each
    (then nnU-Net's label stands). A threshold other than 0.5 (``predict --threshold``) then cuts
    nnU-Net's lesions where their probability is lower, or adds voxels where it is higher.
    """
    channels = list(lesion_channels)
    summed = probabilities[channels[0]].astype(np.float32, copy=True)
    for channel in channels[1:]:
        summed += probabilities[channel]
    inside = np.isin(segmentation, channels)
    below = np.nextafter(np.float32(THRESHOLD), np.float32(0))
    np.minimum(summed, below, out=summed, where=~inside)
    np.maximum(summed, np.float32(THRESHOLD), out=summed, where=inside)
    return np.clip(summed, 0.0, 1.0, out=summed)


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else "no message"


def load_nnunet_model(folder: Union[str, Path], options: Optional[NnUNetOptions] = None) -> NnUNetModel:
    """An nnU-Net model to run: the folder described and checked, the folds, checkpoint and labels chosen,
    and nnunetv2 importable (:func:`require_nnunetv2`). Nothing is unpickled yet (see :class:`NnUNetModel`)."""
    options = options or NnUNetOptions()
    info = describe_model(folder)
    folds = choose_folds(info, options)
    labels = choose_lesion_labels(info, options.lesion_labels)
    require_nnunetv2()
    return NnUNetModel(info, options, folds, labels)


def load_detection_model(path: Union[str, Path, None] = None, nnunet: Optional[NnUNetOptions] = None):
    """The model a detection runs: an nnU-Net trained-model folder, else a model manifest (default: the bundled
    model, ``weights.load_model``). Both have ``name``, ``threshold`` and ``predict_probability``."""
    if path is not None and is_nnunet_model_folder(path):
        return load_nnunet_model(path, nnunet)
    if nnunet is not None and nnunet != NnUNetOptions():
        raise InputError(
            f"folds, checkpoint, mirroring, tile step and lesion labels apply to an nnU-Net model folder; "
            f"{path or 'the bundled model'} is not one"
        )
    if path is not None and Path(path).is_dir():
        raise ModelFileError(
            f"{path}: neither a model manifest (.json) nor an nnU-Net v2 trained-model folder (dataset.json, "
            "plans.json, fold_N/checkpoint_final.pth)"
        )
    from .weights import load_model

    return load_model(path)
