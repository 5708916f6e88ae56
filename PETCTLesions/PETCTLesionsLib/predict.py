"""The main job on the user's data: DICOM studies (or an nnU-Net dataset) -> detected lesions as files.

For each PET/CT study found under the given paths (any layout, several patients):

    DICOM -> CT + PET SUV (study.load_study) -> CT resampled onto the PET grid
    -> detection.detect_lesions (bundled or given model)
    -> OUT/<case id>/lesions.csv            one row per lesion: the study's identity, SUVbw max/mean/peak,
                                            MTV, TLG, probability, centroid, CT slices (LESION_COLUMNS)
    -> OUT/<case id>/pictures/*.png         a fused axial picture of every lesion, named by the CT slice's
                                            InstanceNumber, and a coronal PET MIP with every lesion numbered
    -> OUT/nnUNet_raw/<dataset>/            CT, PET and the predicted label as an nnU-Net case
    -> OUT/Annotation/<patient>/<UID>.xml   the lesions' boxes on each CT slice (VOC)

For an nnU-Net raw dataset (imagesTs, else imagesTr) each case's prediction is written as
``OUT/<case id>.nii.gz`` (nnU-Net's prediction layout) plus ``OUT/<case id>_lesions.csv``.
Nothing is replaced without ``overwrite``. A study's files are one unit: they are written in a
hidden staging folder in OUT and moved into place only when all of them are written
(:class:`fileio.StagedOutputs`), so a study reported as not processed leaves no file behind,
and a run killed part-way leaves only hidden ``.petct-staging-*`` folders, which the next run
removes once their process is gone. A study that cannot be read is reported and skipped; the others go on. The output
folder may not lie inside an input folder: the next run would read the results as input.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import io
import math
import numbers
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk

from . import preview
from .detection import Detection, detect_lesions, lesions_on_ct
from .errors import Cancelled, InputError, PETCTLesionsError, WriteError
from .fileio import StagedOutputs, atomic_output, atomic_write_text, is_inside, refuse_overwriting
from .formats import nnunet, parallel_gzip, voc
from .formats.voc import voc_annotations_from_boxes
from .geometry import Grid, lps_to_ras
from .jobs import CancelCallback, ProgressCallback
from .lesions import SliceBox
from .measurements import LesionMeasurement
from .model.nnunet_model import NnUNetOptions, load_detection_model
from .resampling import resample_ct_to_pet

if TYPE_CHECKING:
    from .study import DicomStudy, LoadedStudy, PetCtPair

PREDICTED_DATASET = "Dataset902_PETCTLesionsPredicted"
# The lesion table's columns (README, "lesions.csv"): the study on every row, so that the tables of many
# studies can be concatenated; units in the names (SUVbw is g/mL, TLG = SUVbw mean x MTV is g); plain
# names a spreadsheet and pandas take as they are (one value per cell, no spaces or brackets).
IDENTITY_COLUMNS = ("case_id", "patient_id", "study_instance_uid", "study_date", "pet_series_instance_uid")
LESION_COLUMNS = IDENTITY_COLUMNS + (
    "lesion",
    "pet_voxels",
    "mtv_ml",
    "suvbw_max_g_ml",
    "suvbw_mean_g_ml",
    "suvbw_peak_g_ml",
    "suvbw_peak_sphere_exceeds_lesion",
    "tlg_g",
    "probability_max",
    "probability_mean",
    "centroid_lps_x_mm",
    "centroid_lps_y_mm",
    "centroid_lps_z_mm",
    "centroid_ras_x_mm",
    "centroid_ras_y_mm",
    "centroid_ras_z_mm",
    "ct_instance_number_min",
    "ct_instance_number_max",
    "ct_slice_z_min_mm",
    "ct_slice_z_max_mm",
    "pet_i_min",
    "pet_i_max",
    "pet_j_min",
    "pet_j_max",
    "pet_k_min",
    "pet_k_max",
)


@dataclass
class PredictionOptions:
    model_path: Optional[Path] = None  # model manifest or nnU-Net trained-model folder; None: the bundled model
    nnunet: Optional[NnUNetOptions] = None  # an nnU-Net model's folds, checkpoint, mirroring, ...; None: its defaults
    device: str = "auto"
    threshold: Optional[float] = None  # None: the model's own
    min_volume_ml: float = 0.0
    filter_false_positives: bool = False  # apply the model's false-positive filter (off unless chosen)
    pictures: bool = True
    overwrite: bool = False
    # PET series (SeriesInstanceUID) to process instead of their study's preferred one, e.g. its NAC images
    pet_series_uids: Tuple[str, ...] = ()
    # Keep each DICOM study's loaded images in its result (StudyPrediction.loaded), for a caller that shows the
    # study again (the demo's Slicer views) without reading it twice; off, a run over many studies holds none.
    keep_loaded: bool = False


@dataclass
class StudyPrediction:
    name: str
    detection: Optional[Detection] = None
    written: List[Path] = field(default_factory=list)
    error: Optional[str] = None
    seconds: float = 0.0
    notes: List[str] = field(default_factory=list)
    left_out: str = ""  # why nothing under this name was processed, when that is no error (a CT-only study)
    loaded: Optional[LoadedStudy] = None  # the study as loaded, where PredictionOptions.keep_loaded asks for it


@dataclass(frozen=True)
class StudyIdentity:
    """What names a study's rows in the lesion table. An nnU-Net case has only its case id."""

    case_id: str
    patient_id: str = ""  # DICOM PatientID
    study_instance_uid: str = ""
    study_date: str = ""  # DICOM StudyDate as the PET gives it (YYYYMMDD); written as YYYY-MM-DD
    pet_series_instance_uid: str = ""  # the PET series the lesions were found in


@dataclass(frozen=True)
class LesionSlices:
    """The axial CT slices a lesion crosses, as a reader finds them in a viewer."""

    z_mm: Tuple[float, float]  # lowest and highest slice position, patient z (LPS z = RAS S), mm
    instance_numbers: Optional[Tuple[int, int]] = None  # lowest and highest InstanceNumber; None: none per slice


def lesion_slices_on_ct(
    boxes: Sequence[SliceBox], ct_grid: Grid, instance_numbers: Sequence[int]
) -> Dict[int, LesionSlices]:
    """Each lesion's CT slices (by lesion number) from its boxes on the CT slices (``lesions_on_ct``):
    the slices of its VOC boxes and its outline in the pictures. ``instance_numbers[k]`` is CT slice
    k's InstanceNumber, or empty when the slices have none of their own (multi-frame or resampled)."""
    numbered = len(instance_numbers) == ct_grid.size[2]
    slices_of: Dict[int, List[int]] = {}
    for box in boxes:
        slices_of.setdefault(box.lesion, []).append(box.k)
    return {
        lesion: LesionSlices(
            _slice_z_range(ct_grid, ks),
            (min(instance_numbers[k] for k in ks), max(instance_numbers[k] for k in ks)) if numbered else None,
        )
        for lesion, ks in slices_of.items()
    }


def lesion_slices_on_grid(lesions: Sequence[LesionMeasurement], grid: Grid) -> Dict[int, LesionSlices]:
    """Each lesion's slices of ``grid`` (an nnU-Net case's, where the CT lies on the PET grid); no numbers."""
    return {lesion.label: LesionSlices(_slice_z_range(grid, lesion.bbox_kji[0])) for lesion in lesions}


def _slice_z_range(grid: Grid, ks: Sequence[int]) -> Tuple[float, float]:
    # A slice's position is its first voxel's (ImagePositionPatient): what a viewer shows as its location.
    z = [float(grid.index_to_lps([0.0, 0.0, float(k)])[2]) for k in (min(ks), max(ks))]
    return (min(z), max(z))


def lesion_table_csv(
    lesions: Sequence[LesionMeasurement],
    identity: StudyIdentity,
    slices: Optional[Mapping[int, LesionSlices]] = None,
) -> str:
    """The lesion table as CSV text: one row per lesion, columns LESION_COLUMNS (see the README).

    ``slices`` gives each lesion's CT slices by lesion number; a lesion without (outside the CT)
    and a value not measured (no model probability) are empty cells, never 0.
    """
    stream = io.StringIO()
    writer = csv.DictWriter(stream, fieldnames=list(LESION_COLUMNS), lineterminator="\n")
    writer.writeheader()
    study = {
        "case_id": identity.case_id,
        "patient_id": identity.patient_id,
        "study_instance_uid": identity.study_instance_uid,
        "study_date": _iso_date(identity.study_date),
        "pet_series_instance_uid": identity.pet_series_instance_uid,
    }
    for lesion in lesions:
        on_ct = (slices or {}).get(lesion.label)
        instance_range = on_ct.instance_numbers if on_ct is not None else None
        lps = lesion.centroid_lps
        (k0, k1), (j0, j1), (i0, i1) = lesion.bbox_kji
        row = {
            **study,
            "lesion": lesion.label,
            "pet_voxels": lesion.voxels,
            "mtv_ml": _value(lesion.mtv_ml),
            "suvbw_max_g_ml": _value(lesion.suv_max),
            "suvbw_mean_g_ml": _value(lesion.suv_mean),
            "suvbw_peak_g_ml": _value(lesion.suv_peak),
            "suvbw_peak_sphere_exceeds_lesion": "true" if lesion.suv_peak_sphere_exceeds_lesion else "false",
            "tlg_g": _value(lesion.tlg),
            "probability_max": _value(lesion.score),
            "probability_mean": _value(lesion.probability_mean),
            **{f"centroid_lps_{axis}_mm": _mm(value) for axis, value in zip("xyz", lps)},
            **{f"centroid_ras_{axis}_mm": _mm(value) for axis, value in zip("xyz", lps_to_ras(lps))},
            "ct_instance_number_min": "" if instance_range is None else instance_range[0],
            "ct_instance_number_max": "" if instance_range is None else instance_range[1],
            "ct_slice_z_min_mm": "" if on_ct is None else _mm(on_ct.z_mm[0]),
            "ct_slice_z_max_mm": "" if on_ct is None else _mm(on_ct.z_mm[1]),
            "pet_i_min": i0,
            "pet_i_max": i1,
            "pet_j_min": j0,
            "pet_j_max": j1,
            "pet_k_min": k0,
            "pet_k_max": k1,
        }
        writer.writerow(row)
    return stream.getvalue()


def _value(value: Optional[float]) -> str:
    """A measurement (SUV, mL, g, probability) to 4 decimals; empty when there is none."""
    return "" if value is None or not math.isfinite(value) else f"{value:.4f}"


def _mm(value: float) -> str:
    text = f"{value:.2f}"
    return "0.00" if text == "-0.00" else text


def _iso_date(study_date: str) -> str:
    """DICOM's YYYYMMDD as YYYY-MM-DD (what spreadsheets and pandas read as a date); anything else as given."""
    date = study_date.strip()
    return f"{date[:4]}-{date[4:6]}-{date[6:]}" if re.fullmatch(r"\d{8}", date) else date


def is_nnunet_dataset(path: Path) -> bool:
    return (
        path.is_dir()
        and (path / "dataset.json").is_file()
        and any((path / f).is_dir() for f in ("imagesTs", "imagesTr"))
    )


def predict(
    paths: Sequence[Path],
    out_dir: Path,
    options: PredictionOptions,
    progress: Optional[ProgressCallback] = None,
    cancel: Optional[CancelCallback] = None,
) -> List[StudyPrediction]:
    """Detect lesions in every study under ``paths`` and write the results under ``out_dir``."""
    from .model.inference import choose_working_device

    report = progress or (lambda fraction, message: None)
    check_options(options)
    refuse_output_inside_inputs(paths, Path(out_dir))
    model = load_detection_model(options.model_path, options.nnunet)  # imports torch (and nnunetv2) only here
    choose_working_device(options.device)  # a misspelt, missing or unusable device fails here, before any study
    if len(paths) == 1 and is_nnunet_dataset(Path(paths[0])):
        return _predict_dataset(Path(paths[0]), Path(out_dir), model, options, report, cancel)
    return _predict_dicom(paths, Path(out_dir), model, options, report, cancel)


def check_options(options: PredictionOptions) -> None:
    """Refuse a threshold or minimum volume that would silently change the result (NaN keeps no lesion)."""
    threshold = options.threshold
    if threshold is not None and not (_is_finite_number(threshold) and 0.0 < threshold < 1.0):
        raise InputError(f"threshold must be a probability between 0 and 1 (exclusive), got {threshold!r}")
    volume = options.min_volume_ml
    if not (_is_finite_number(volume) and volume >= 0.0):
        raise InputError(f"minimum lesion volume must be a finite number of mL >= 0, got {volume!r}")


def _is_finite_number(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def refuse_output_inside_inputs(paths: Sequence[Path], out_dir: Path) -> None:
    """Refuse an output folder inside (or equal to) an input folder, before anything is read or written.

    There the results would mix with the user's files and the next run would scan them as input.
    An input inside the output folder is fine: results go only to folders named after studies
    (``<case id>/``, ``nnUNet_raw/``, ``Annotation/``), never into an input.
    """
    for path in paths:
        if Path(path).is_dir() and is_inside(out_dir, path):
            raise InputError(
                f"{out_dir}: the output folder is inside the input folder {path}, where the next run would read "
                "the results as input; choose an output folder outside the inputs"
            )


# ------------------------------------------------------------------------------------- DICOM


def _predict_dicom(paths, out_dir: Path, model, options, report, cancel) -> List[StudyPrediction]:
    from .dicom.index import scan_paths
    from .study import describe_scan, load_study

    scan = scan_paths(paths, cancel=cancel)
    studies = describe_scan(scan)
    pairs = chosen_pairs(studies, options.pet_series_uids, paths)
    results = []
    for index, (study, pair) in enumerate(pairs):
        name = f"{study.patient_id} / PET series {pair.pet.series_number} ({pair.pet.description})"
        report(index / len(pairs), f"study {index + 1} of {len(pairs)}: {name}")
        started = time.perf_counter()
        result = StudyPrediction(name)
        result.notes.extend(
            f"not processed: {other.pet.label}: {_why_not_chosen(other)}" for other in study.pairs if other is not pair
        )
        try:
            case_id = nnunet.case_id_for_study(study.patient_id, study.study_uid, study.study_date)
            _refuse_earlier_results(_dicom_outputs(out_dir, case_id), options.overwrite)
            loaded = load_study(paths, study.study_uid, pair.pet.series_uid, scan=scan, cancel=cancel)
            result.loaded = loaded if options.keep_loaded else None
            result.notes.extend(loaded.warnings)  # e.g. a dose read as MBq, duplicates ignored, spacing evened
            result.name = case_id
            result.detection, result.written = _predict_loaded(
                loaded, case_id, out_dir, model, options, cancel, result.notes
            )
        except Cancelled:
            raise
        except (PETCTLesionsError, OSError) as error:  # the library's refusals name the file and the problem
            result.error = str(error)
        result.seconds = time.perf_counter() - started
        results.append(result)
    report(1.0, f"{len(results)} stud{'y' if len(results) == 1 else 'ies'} done")
    return results + _left_out(scan, studies, pairs, paths, results)


def _left_out(
    scan, studies, chosen, paths: Sequence[Path], results: Sequence[StudyPrediction]
) -> List[StudyPrediction]:
    """What was given but is in no processed study, each with the reason: nothing goes unmentioned."""
    used = {series.series_uid for _, pair in chosen for series in (pair.pet, pair.ct) if series is not None}
    left = []
    for study in studies:
        if not study.pairs and not any(series.series_uid in used for series in study.series):
            kinds = ", ".join(sorted({series.modality for series in study.series}))
            name = f"{study.patient_id} study {study.study_date or '(no date)'} '{study.description}'"
            left.append(StudyPrediction(name, left_out=f"no PET series in the study ({kinds} only)"))
    errors = " ".join(result.error or "" for result in results)
    unreadable = [problem for problem in scan.problems if str(problem.path) not in errors]
    if unreadable:  # those that stopped a study are in its result; the others (copies too) are here
        more = f" (and {len(unreadable) - 1} more)" if len(unreadable) > 1 else ""
        left.append(StudyPrediction(f"{len(unreadable)} unreadable file(s)", left_out=unreadable[0].message + more))
    images = [header.path for series in scan.series for header in series.headers]
    images += [path for series in scan.series for pair in series.duplicates + series.set_aside for path in pair[:1]]
    images += [problem.path for problem in scan.problems]
    holding = set()  # every image file and every folder above one
    for file in map(os.path.abspath, images):
        holding.add(Path(file))
        holding.update(Path(file).parents)
    left.extend(
        StudyPrediction(
            str(path), left_out="not a DICOM image file" if Path(path).is_file() else "no DICOM image file in it"
        )
        for path in paths
        if Path(os.path.abspath(path)) not in holding
    )
    return left


def chosen_pairs(
    studies: Sequence[DicomStudy], pet_series_uids: Sequence[str], paths: Sequence[Path]
) -> List[Tuple[DicomStudy, PetCtPair]]:
    """The PET/CT pair to process in each study: the named PET series, else the preferred one.

    One per study because the case id names the study: the attenuation-corrected PET and not
    the NAC images beside it, unless ``pet_series_uids`` names another series of that study.
    The pairs not chosen are named in each result's notes.
    """
    where = ", ".join(str(p) for p in paths)
    if not studies:
        raise InputError(f"{where}: no DICOM image files found{_nnunet_hint(paths)}")
    named = set(pet_series_uids)
    known = {pair.pet.series_uid for study in studies for pair in study.pairs}
    unknown = [uid for uid in dict.fromkeys(pet_series_uids) if uid not in known]
    if unknown:
        found = "; ".join(f"{pair.pet.label} {pair.pet.series_uid}" for study in studies for pair in study.pairs)
        raise InputError(f"{where}: no PET series {', '.join(unknown)}; PET series found: {found or 'none'}")
    chosen = []
    for study in studies:
        asked = [pair for pair in study.pairs if pair.pet.series_uid in named]
        if len(asked) > 1:
            raise InputError(
                f"PET series {', '.join(pair.pet.series_uid for pair in asked)} are of one study (patient "
                f"{study.patient_id}), whose results share one case id: process them one at a time, "
                "each with its own --out"
            )
        # A study whose PET has no CT stays in the list (its first-ranked PET): its result says why.
        chosen.extend((study, pair) for pair in (asked or [p for p in study.pairs if p.preferred] or study.pairs[:1]))
    if not any(pair.ct is not None for _, pair in chosen):
        raise InputError(f"{where}: no PET series with a CT of the same study found")
    return chosen


_DATASET_NAME = re.compile(r"^Dataset\d{3}_")
_NNUNET_PARTS = ("imagesTr", "imagesTs", "labelsTr")


def _nnunet_hint(paths: Sequence[Path]) -> str:
    """What predict takes, when a path is a piece of an nnU-Net dataset rather than the dataset folder."""
    accepted = "give the dataset folder that holds dataset.json (and imagesTs/ or imagesTr/)"
    for path in map(Path, paths):
        if path.is_file() and path.name.endswith((".nii.gz", ".nii")):
            return f"; {path} is a NIfTI file: predict reads DICOM studies or an nnU-Net raw dataset: {accepted}"
        if not path.is_dir():
            continue
        if path.name in _NNUNET_PARTS:
            return f"; {path} looks like part of an nnU-Net dataset: {accepted}, e.g. {path.parent}"
        if any((path / part).is_dir() for part in _NNUNET_PARTS):
            return f"; {path} looks like an nnU-Net dataset but has no dataset.json: {accepted}"
        datasets = sorted(child.name for child in path.iterdir() if child.is_dir() and _DATASET_NAME.match(child.name))
        if datasets:
            return f"; {path} holds nnU-Net datasets ({', '.join(datasets)}): {accepted}, e.g. {path / datasets[0]}"
        if any(child.name.endswith((".nii.gz", ".nii")) for child in path.iterdir()):
            return f"; {path} holds NIfTI files: predict reads DICOM studies or an nnU-Net raw dataset: {accepted}"
    return ""


def _why_not_chosen(pair: PetCtPair) -> str:
    if pair.preferred:
        return "the study's preferred PET; another series was asked for (--pet-series)"
    return pair.not_preferred_because or pair.rule


def _refuse_earlier_results(paths: Sequence[Path], overwrite: bool) -> None:
    """Refuse before the model runs, not after, when a result of an earlier run is in the way."""
    refuse_overwriting(
        paths, overwrite, why=" (an earlier run's result)", hint=" (--overwrite replaces it, or choose another --out)"
    )


def _dicom_outputs(out_dir: Path, case_id: str) -> List[Path]:
    """The files of a study's result whose names do not depend on what the model finds."""
    dataset = out_dir / "nnUNet_raw" / PREDICTED_DATASET
    return [out_dir / case_id / "lesions.csv", *nnunet.case_paths(dataset, case_id).values()]


def detect_in_study(
    loaded: LoadedStudy, model, options: PredictionOptions, cancel: Optional[CancelCallback] = None
) -> Tuple[Detection, sitk.Image]:
    """A loaded DICOM study's lesions, found by ``model`` (a weights.LoadedModel) with ``options``' threshold,
    minimum volume and device; and the CT resampled onto the PET grid that the model was given."""
    pet_grid = Grid.from_sitk(loaded.pet_suv)
    ct_on_pet = resample_ct_to_pet(loaded.ct, pet_grid)
    pet = sitk.GetArrayFromImage(loaded.pet_suv).astype(np.float32)
    found = detect_lesions(
        model,
        sitk.GetArrayViewFromImage(ct_on_pet),
        pet,
        pet_grid,
        threshold=options.threshold,
        min_volume_ml=options.min_volume_ml,
        device=options.device,
        cancel=cancel,
        filter_false_positives=options.filter_false_positives,
    )
    return found, ct_on_pet


def detect_in_case(
    case: nnunet.NnUNetCase, model, options: PredictionOptions, cancel: Optional[CancelCallback] = None
) -> Detection:
    """An nnU-Net case's lesions (its CT already lies on the PET grid), as :func:`detect_in_study`."""
    return detect_lesions(
        model,
        sitk.GetArrayViewFromImage(case.ct).astype(np.float32),
        sitk.GetArrayViewFromImage(case.pet).astype(np.float32),
        Grid.from_sitk(case.pet),
        threshold=options.threshold,
        min_volume_ml=options.min_volume_ml,
        device=options.device,
        cancel=cancel,
        filter_false_positives=options.filter_false_positives,
    )


def _predict_loaded(loaded, case_id: str, out_dir: Path, model, options, cancel, notes: List[str]):
    pet_grid = Grid.from_sitk(loaded.pet_suv)
    ct_grid = Grid.from_sitk(loaded.ct)
    found, ct_on_pet = detect_in_study(loaded, model, options, cancel)
    # Once, for the boxes and the pictures: the lesions traced at CT resolution.
    lesion_map_ct, boxes = lesions_on_ct(found.lesion_map, pet_grid, ct_grid, found.probability, found.threshold)
    annotations, voc_folder = _voc_annotations(loaded, ct_grid, boxes, out_dir, notes)
    dataset = out_dir / "nnUNet_raw" / PREDICTED_DATASET
    folder = out_dir / case_id
    with StagedOutputs(out_dir, options.overwrite) as staging, _named_as_targets(staging):
        table = _study_lesion_table(loaded, case_id, found, ct_grid, boxes, notes)
        staged = [atomic_write_text(staging.path(folder / "lesions.csv"), table)]
        case = nnunet.NnUNetCase(case_id, ct_on_pet, loaded.pet_suv, pet_grid.to_sitk(found.mask))
        staged += nnunet.write_case(staging.path(dataset), case).values()  # its dataset.json stays behind
        if annotations:
            staged += voc.write_voc_folder(annotations, staging.path(voc_folder))
        if options.pictures:
            pictures = staging.path(folder / "pictures")
            staged += render_pictures(loaded, found, lesion_map_ct, boxes, pictures, False, notes)
        _refuse_earlier_results([staging.target_of(path) for path in staged], options.overwrite)
        if options.overwrite:  # an earlier result's files that the new one does not replace by name go too
            staging.retire((folder / "pictures").glob("*.png"))
            if voc_folder is not None:  # only names a VOC file can have: a crafted UID is no path out of OUT
                uids = loaded.ct_series.slice_sop_instance_uids
                staging.retire(voc_folder / f"{uid}.xml" for uid in uids if voc.is_dicom_uid(uid))
        # dataset.json last, counted from the cases then present: it never lists a case that is not there.
        written = staging.commit(staged, finish=lambda: nnunet.update_dataset_json(dataset))
    return found, written


def _study_lesion_table(
    loaded, case_id: str, found: Detection, ct_grid: Grid, boxes: Sequence[SliceBox], notes: List[str]
) -> str:
    """A DICOM study's lesions.csv: its identity on every row, each lesion's CT slices from its boxes."""
    identity = StudyIdentity(
        case_id, loaded.patient_id, loaded.study_uid, loaded.study_date, loaded.pet_series.series_uid
    )
    instance_numbers = loaded.ct_series.slice_instance_numbers
    if found.lesions and len(instance_numbers) != ct_grid.size[2]:
        notes.append(
            "lesions.csv: no CT InstanceNumbers (ct_instance_number_min/max empty): this CT's slices have none of "
            "their own (a multi-frame CT, slices resampled onto an even spacing, or numbers missing or repeated); "
            "ct_slice_z_min/max_mm give the slices' positions"
        )
    return lesion_table_csv(found.lesions, identity, lesion_slices_on_ct(boxes, ct_grid, instance_numbers))


class StudyOutputError(WriteError):
    """A study's results could not be written; none of its files was left behind."""


@contextlib.contextmanager
def _named_as_targets(staging: StagedOutputs) -> Iterator[None]:
    """Errors while staging name the file the staged one was to become, not the hidden staging folder."""
    try:
        yield
    except Cancelled:
        raise
    except (PETCTLesionsError, OSError) as error:
        code = getattr(error, "errno", None) or errno.EIO
        raise StudyOutputError(code, staging.root, staging.message(error)) from error


def _voc_annotations(
    loaded, ct_grid: Grid, boxes: Sequence[SliceBox], out_dir: Path, notes: List[str]
) -> Tuple[list, Optional[Path]]:
    """The study's VOC annotations (one per CT slice with a box) and their folder; none, with a note, when
    VOC files cannot be named or classed. The folder is also returned without boxes, for overwriting."""
    uids = loaded.ct_series.slice_sop_instance_uids
    if len(uids) != ct_grid.size[2]:
        if boxes:
            notes.append(
                "no VOC XML: a VOC file is named after its CT slice's SOPInstanceUID, and this CT's slices "
                "have none of their own (a multi-frame CT, or slices resampled onto an even spacing)"
            )
        return [], None
    class_name = voc.histology_class(loaded.patient_id)
    if class_name is None:  # VOC classes are histology letters, which the model cannot know
        if boxes:
            notes.append(f"no VOC XML: Patient ID {loaded.patient_id!r} has no Lung-PET-CT-Dx histology letter")
        return [], None
    folder = out_dir / "Annotation" / voc.patient_folder_name(loaded.patient_id)
    annotations = voc_annotations_from_boxes(boxes, uids, ct_grid.size[0], ct_grid.size[1], class_name)
    for annotation in annotations:
        annotation.folder = folder.name
    return annotations, folder


# ---------------------------------------------------------------------------------- nnU-Net


def _predict_dataset(dataset: Path, out_dir: Path, model, options, report, cancel) -> List[StudyPrediction]:
    test = bool(nnunet.list_cases(dataset, test=True))
    case_ids = nnunet.list_cases(dataset, test=test)
    results = []
    for index, case_id in enumerate(case_ids):
        report(index / max(1, len(case_ids)), f"case {index + 1} of {len(case_ids)}: {case_id}")
        started = time.perf_counter()
        result = StudyPrediction(case_id)
        try:
            label_path = out_dir / f"{case_id}{nnunet.FILE_ENDING}"
            _refuse_earlier_results([label_path, out_dir / f"{case_id}_lesions.csv"], options.overwrite)
            case = nnunet.read_case(dataset, case_id, images_only=True)  # labels are not needed, maybe not there
            pet_grid = Grid.from_sitk(case.pet)
            result.detection = detect_in_case(case, model, options, cancel)
            # The label and the lesion table of a case are one unit: both or neither.
            with StagedOutputs(out_dir, options.overwrite) as staging, _named_as_targets(staging):
                staged_label = staging.path(label_path)
                with atomic_output(staged_label) as temporary:
                    parallel_gzip.write_nifti_gz(pet_grid.to_sitk(result.detection.mask), temporary)
                # No DICOM behind an nnU-Net case: its id names the rows, and its CT lies on the PET grid.
                lesions = result.detection.lesions
                table = lesion_table_csv(lesions, StudyIdentity(case_id), lesion_slices_on_grid(lesions, pet_grid))
                staged = [staged_label, atomic_write_text(staging.path(out_dir / f"{case_id}_lesions.csv"), table)]
                result.written = staging.commit(staged)
        except Cancelled:
            raise
        except (PETCTLesionsError, OSError) as error:  # the library's refusals name the file and the problem
            result.error = str(error)
        result.seconds = time.perf_counter() - started
        results.append(result)
    report(1.0, f"{len(results)} case(s) done")
    return results


# --------------------------------------------------------------------------------- pictures


def render_pictures(
    loaded: LoadedStudy,
    found: Detection,
    lesion_map_ct: np.ndarray,
    boxes: Sequence[SliceBox],
    folder: Path,
    overwrite: bool = False,
    notes: Optional[List[str]] = None,
) -> List[Path]:
    """A fused axial picture of every lesion (the smallest on contact sheets past ``preview.AXIAL_PICTURES``),
    named by the CT slice's InstanceNumber, and the coronal PET MIP with every lesion numbered (see
    :mod:`preview`). A lesion the CT does not reach is on the MIP only, which ``notes`` says."""
    ct_series = loaded.ct_series
    pictures = preview.StudyPictures(
        ct_hu=sitk.GetArrayViewFromImage(loaded.ct),
        ct_grid=Grid.from_sitk(loaded.ct),
        numbering=preview.SliceNumbering(ct_series.slice_instance_numbers, ct_series.slice_frame_numbers),
        pet_suv=loaded.pet_suv,
        lesion_map=found.lesion_map,
        lesions=found.lesions,
        lesion_map_ct=lesion_map_ct,
        boxes=boxes,
    )
    written, picture_notes = pictures.write(folder, overwrite)
    if notes is not None:
        notes.extend(f"pictures: {note}" for note in picture_notes)
    return written
