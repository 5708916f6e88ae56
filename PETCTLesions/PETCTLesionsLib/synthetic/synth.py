"""Synthetic PET/CT studies on disk: the demo data and most of the test data.

One synthetic patient (:mod:`.phantom`) is written the way the two source datasets
publish theirs, so every reader in the project is exercised on real file formats:

- DICOM CT and PET series of one study, NBIA download layout
  (``<collection>/<PatientID>/<MM-DD-YYYY>-NA-<study>-<nnnnn>/<n>.000000-<series>-<nnnnn>/1-01.dcm``);
- Lung-PET-CT-Dx VOC boxes, one XML per annotated CT slice, ``Annotation/<A0001>/<SOPInstanceUID>.xml``
  (lung flavour only: its class letters come from the histology in the Patient ID);
- an autoPET-style nnU-Net v2 case (CT resampled onto the PET grid, PET in SUV, lesion label);
- ``truth/<case id>.json``: the lesions as generated (site, centre, size, uptake, voxel counts), and the
  generator's variation (:mod:`.variation`) with what it drew for the patient (``null`` and ``{}`` without one).

Flavours: ``lung`` = Lung-PET-CT-Dx-like chest study (Patient ID ``Lung_Dx-<A|B|E|G><nnnn>``);
``autopet`` = whole-body FDG study with autoPET-like identifiers (Patient ID ``PETCT_<hex>``, study
folders with spaces). In both flavours the case id (nnU-Net files, truth table) is the one ``predict``
gives the study from its DICOM (:func:`nnunet.case_id_for_study`), so ``evaluate`` pairs the ground
truth with the prediction. Case ``i`` of a run with seed ``S`` uses phantom seed ``S * 1000 + i``.
"""

from __future__ import annotations

import datetime as dt
import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np

from ..errors import InputError
from ..fileio import atomic_write_text, refuse_overwriting
from ..formats import nnunet, voc
from ..jobs import ProgressCallback, report
from ..lesions import slice_boxes
from ..resampling import resample_ct_to_pet
from .dicom_writer import (
    PatientInfo,
    PetAcquisition,
    SeriesWriteResult,
    StudyInfo,
    ct_series_description,
    make_uid,
    write_ct_series,
    write_pet_series,
)
from .phantom import PhantomConfig, PhantomStudy, make_phantom
from .variation import VARIATIONS

FLAVOURS = ("lung", "autopet")
DATASET_FOLDER = "Dataset900_PETCTLesionsSynthetic"
COLLECTION_FOLDERS = {"lung": "Lung-PET-CT-Dx", "autopet": "FDG-PET-CT-Lesions"}
HISTOLOGY_LETTERS = ("A", "B", "E", "G")
F18_HALF_LIFE_S = 6586.2  # physical constant of fluorine-18 (109.77 min)
FDG_ACTIVITY_BQ_PER_KG = 4.44e6  # the Lung-PET-CT-Dx protocol (4.44 MBq/kg); the synthetic patients follow it


@dataclass
class SyntheticCase:
    """What was written for one synthetic patient."""

    case_id: str
    patient_id: str
    study_dir: Path
    ct: SeriesWriteResult
    pet: SeriesWriteResult
    nnunet_files: Dict[str, Path]
    voc_files: List[Path] = field(default_factory=list)
    truth_file: Optional[Path] = None


@dataclass
class _Identity:
    patient: PatientInfo
    study: StudyInfo
    acquisition: PetAcquisition
    case_id: str
    study_folder: str


def case_seed(seed: int, index: int) -> int:
    return seed * 1000 + index


def _identity(flavour: str, seed: int, index: int) -> _Identity:
    rng = np.random.default_rng([seed, index, 0x1D])
    study_date = dt.date(2006, 1, 1) + dt.timedelta(days=int(rng.integers(0, 5 * 365)))
    injection = dt.datetime.combine(study_date, dt.time(8, 0)) + dt.timedelta(minutes=int(rng.integers(0, 8 * 60)))
    uptake = dt.timedelta(minutes=float(rng.uniform(55.0, 75.0)), seconds=int(rng.integers(0, 60)))
    series_start = injection + uptake
    weight_kg = round(float(rng.uniform(48.0, 112.0)), 1)
    sex = str(rng.choice(["M", "F"]))
    age = int(rng.integers(35, 86))
    if flavour == "lung":
        letter = HISTOLOGY_LETTERS[int(rng.integers(0, len(HISTOLOGY_LETTERS)))]
        patient_id = f"Lung_Dx-{letter}{index + 1:04d}"
        description = "Chest"
    else:
        patient_id = f"PETCT_{rng.bytes(5).hex()}"
        description = "PET-CT Ganzkoerper  primaer mit KM"  # autoPET descriptions carry double spaces
    study_uid = make_uid("study", flavour, seed, index)
    study_folder = f"{study_date:%m-%d-%Y}-NA-{description}-{study_uid[-5:]}"
    # The id predict and convert give the study from its DICOM (both flavours): evaluate pairs the
    # ground truth with predict's result by it. (autoPET's own ids, "fdg_<hex>_<study folder>" with
    # spaces, name no DICOM study predict could read back.)
    case_id = nnunet.case_id_for_study(patient_id, study_uid, f"{study_date:%Y%m%d}")
    patient = PatientInfo(patient_id=patient_id, patient_name=patient_id, sex=sex, age_years=age, weight_kg=weight_kg)
    study = StudyInfo(
        patient=patient,
        study_uid=study_uid,
        frame_of_reference_uid=make_uid("frame", flavour, seed, index),
        study_date=study_date,
        study_time=(series_start - dt.timedelta(minutes=5)).time().replace(microsecond=0),
        study_description=description,
    )
    dose = round(FDG_ACTIVITY_BQ_PER_KG * weight_kg * float(rng.uniform(0.9, 1.1)), -5)
    acquisition = PetAcquisition(
        injected_dose_bq=dose, injection_datetime=injection, series_datetime=series_start, half_life_s=F18_HALF_LIFE_S
    )
    return _Identity(patient, study, acquisition, case_id, study_folder)


def _series_folder(result: SeriesWriteResult, number: int, description: str) -> str:
    return f"{number}.000000-{description}-{result.series_uid[-5:]}"


def write_synthetic_case(
    study: PhantomStudy, out_dir: Path, flavour: str, seed: int, index: int, overwrite: bool = False
) -> SyntheticCase:
    """Write one generated patient as DICOM, VOC (lung flavour), nnU-Net and a truth table."""
    if flavour not in FLAVOURS:
        raise InputError(f"unknown flavour {flavour!r}; choose one of {', '.join(FLAVOURS)}")
    out_dir = Path(out_dir)
    identity = _identity(flavour, seed, index)
    study_dir, truth_path, dataset_dir = _output_places(out_dir, flavour, identity)
    # Refused before anything is written: a refused run leaves the folder as it was.
    refuse_overwriting(_case_outputs(out_dir, flavour, identity), overwrite)

    # Series folders are named after their UIDs, which the writer derives; write into a
    # staging folder beside the study first (removed if anything fails), then move the series
    # into the study folder under their NBIA-style names.
    ct_description, pet_description = ct_series_description(study.ct_grid), "PET WB AC"
    study_dir.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".staging-", dir=study_dir.parent) as staging:
        ct_tmp, pet_tmp = Path(staging) / "ct", Path(staging) / "pet"
        ct = write_ct_series(study.ct_hu, study.ct_grid, identity.study, ct_tmp, 2, ct_description)
        pet = write_pet_series(
            study.pet_suv, study.pet_grid, identity.study, identity.acquisition, pet_tmp, 3, pet_description
        )
        ct = _move_series(ct, ct_tmp, study_dir / _series_folder(ct, 2, ct_description), overwrite)
        pet = _move_series(pet, pet_tmp, study_dir / _series_folder(pet, 3, pet_description), overwrite)

    # The SUV a correct reader decodes from the DICOM (quantised) is the ground truth downstream.
    pet_suv_stored = pet.stored_values.astype(np.float32)
    ct_image = study.ct_grid.to_sitk(study.ct_hu)
    nnunet_case = nnunet.NnUNetCase(
        case_id=identity.case_id,
        ct=resample_ct_to_pet(ct_image, study.pet_grid),
        pet=study.pet_grid.to_sitk(pet_suv_stored),
        label=study.pet_grid.to_sitk((study.pet_lesion_labels > 0).astype(np.uint8)),
    )
    nnunet_files = nnunet.write_case(dataset_dir, nnunet_case, overwrite=overwrite)

    voc_files: List[Path] = []
    if flavour == "lung":
        voc_files = _write_voc(study, ct, identity.patient.patient_id, out_dir / "Annotation", overwrite)

    truth_file = atomic_write_text(
        truth_path,
        json.dumps(_truth_table(study, identity, pet_suv_stored), indent=2),
        overwrite=overwrite,
    )
    return SyntheticCase(
        case_id=identity.case_id,
        patient_id=identity.patient.patient_id,
        study_dir=study_dir,
        ct=ct,
        pet=pet,
        nnunet_files=nnunet_files,
        voc_files=voc_files,
        truth_file=truth_file,
    )


def _output_places(out_dir: Path, flavour: str, identity: _Identity) -> Tuple[Path, Path, Path]:
    """Where a case goes: its DICOM study folder, its truth table and the nnU-Net dataset."""
    study_dir = out_dir / COLLECTION_FOLDERS[flavour] / identity.patient.patient_id / identity.study_folder
    return study_dir, out_dir / "truth" / f"{identity.case_id}.json", out_dir / "nnUNet_raw" / DATASET_FOLDER


def _case_outputs(out_dir: Path, flavour: str, identity: _Identity) -> List[Path]:
    """The files and folders of a case whose names do not depend on the generated images: an earlier run's."""
    study_dir, truth_path, dataset_dir = _output_places(out_dir, flavour, identity)
    return [study_dir, truth_path, *nnunet.case_paths(dataset_dir, identity.case_id).values()]


def refuse_earlier_cases(out_dir: Path, flavour: str, seed: int, cases: int, overwrite: bool = False) -> None:
    """Refuse before any phantom is generated (seconds each) when an earlier run's case is in the way."""
    for index in range(cases):
        refuse_overwriting(_case_outputs(Path(out_dir), flavour, _identity(flavour, seed, index)), overwrite)


def _move_series(result: SeriesWriteResult, staging: Path, final: Path, overwrite: bool) -> SeriesWriteResult:
    if final.exists():
        refuse_overwriting([final], overwrite)
        for old in final.glob("*.dcm"):
            old.unlink()
        final.rmdir()
    final.parent.mkdir(parents=True, exist_ok=True)
    staging.rename(final)
    result.paths = [final / p.name for p in result.paths]
    return result


def voc_boxes_per_slice(lesion_labels_ct: np.ndarray, class_name: str) -> Dict[int, List[voc.VocBox]]:
    """Tight box of every lesion on every CT slice it crosses: {slice index k: boxes}."""
    boxes: Dict[int, List[voc.VocBox]] = {}
    for box in slice_boxes(lesion_labels_ct):
        boxes.setdefault(box.k, []).append(voc.VocBox.from_pixel_ranges(class_name, box.c0, box.r0, box.c1, box.r1))
    return boxes


def _write_voc(
    study: PhantomStudy, ct: SeriesWriteResult, patient_id: str, annotation_root: Path, overwrite: bool
) -> List[Path]:
    class_name = voc.histology_class(patient_id)
    if class_name is None:
        raise ValueError(f"Patient ID {patient_id!r} carries no Lung-PET-CT-Dx histology letter")
    folder = annotation_root / voc.patient_folder_name(patient_id)
    rows, columns = study.ct_grid.size[1], study.ct_grid.size[0]
    written = []
    for k, boxes in sorted(voc_boxes_per_slice(study.ct_lesion_labels, class_name).items()):
        annotation = voc.VocAnnotation(
            sop_instance_uid=ct.sop_instance_uids[k],
            width=columns,
            height=rows,
            depth=1,
            boxes=boxes,
            folder=folder.name,
        )
        written.append(voc.write_voc_annotation(annotation, folder, overwrite=overwrite))
    return written


def _truth_table(study: PhantomStudy, identity: _Identity, pet_suv: np.ndarray) -> dict:
    pet_voxel_ml = study.pet_grid.voxel_volume_ml
    pet_counts = np.bincount(study.pet_lesion_labels.ravel(), minlength=len(study.lesions) + 1)
    ct_counts = np.bincount(study.ct_lesion_labels.ravel(), minlength=len(study.lesions) + 1)
    lesions = []
    for lesion in study.lesions:
        inside = study.pet_lesion_labels == lesion.label
        lesions.append(
            {
                "label": lesion.label,
                "site": lesion.site,
                "shape": lesion.shape,
                "center_lps_mm": [round(float(c), 3) for c in lesion.center_lps],
                "diameter_mm": round(float(lesion.diameter_mm), 3),
                "uptake_suv": round(float(lesion.uptake_suv), 4),
                "ct_hu": round(float(lesion.ct_hu), 1),
                "pet_voxels": int(pet_counts[lesion.label]),
                "ct_voxels": int(ct_counts[lesion.label]),
                "volume_ml_pet_grid": round(float(pet_counts[lesion.label] * pet_voxel_ml), 4),
                "suv_max": round(float(pet_suv[inside].max()), 4),
                "suv_mean": round(float(pet_suv[inside].mean()), 4),
            }
        )
    return {
        "case_id": identity.case_id,
        "patient_id": identity.patient.patient_id,
        "phantom_seed": study.config.seed,
        "body": study.config.body,
        "size": study.config.size,
        "patient_weight_kg": identity.patient.weight_kg,
        "injected_dose_bq": identity.acquisition.injected_dose_bq,
        "variation": study.config.variation,
        "variation_draws": study.variation_draws,
        "lesions": lesions,
    }


def generate_dataset(
    out_dir: Path,
    cases: int,
    seed: int,
    size: str = "small",
    flavour: str = "lung",
    n_lesions: Optional[int] = None,
    overwrite: bool = False,
    progress: Optional[ProgressCallback] = None,
    variation: Optional[str] = None,
) -> List[SyntheticCase]:
    """Generate and write ``cases`` synthetic patients; returns what was written for each.

    ``variation``: a name in :data:`.variation.VARIATIONS` to vary normal physiology and the scanner, or None.
    """
    if flavour not in FLAVOURS:
        raise InputError(f"unknown flavour {flavour!r}; choose one of {', '.join(FLAVOURS)}")
    if variation is not None and variation not in VARIATIONS:
        raise InputError(f"unknown variation {variation!r}; choose one of {', '.join(VARIATIONS)}, or none")
    if cases < 1:
        raise InputError("cases must be at least 1")
    refuse_earlier_cases(out_dir, flavour, seed, cases, overwrite)
    body = "torso" if flavour == "lung" else "wholebody"
    written = []
    for index in range(cases):
        report(progress, index / cases, f"case {index + 1}/{cases}: generating phantom")
        config = PhantomConfig(
            seed=case_seed(seed, index), size=size, body=body, n_lesions=n_lesions, variation=variation
        )
        study = make_phantom(config)
        report(
            progress, (index + 0.5) / cases, f"case {index + 1}/{cases}: writing DICOM, annotations and nnU-Net files"
        )
        written.append(write_synthetic_case(study, out_dir, flavour, seed, index, overwrite=overwrite))
    nnunet.update_dataset_json(Path(out_dir) / "nnUNet_raw" / DATASET_FOLDER, dataset_name=DATASET_FOLDER)
    report(progress, 1.0, f"wrote {cases} case(s) to {out_dir}")
    return written
