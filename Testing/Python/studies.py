"""The small generated PET/CT study the tests write as DICOM, and the pieces to vary it.

``write_small_study`` writes a CT and a PET series of random values (a seeded generator, so the
files repeat byte for byte) for a study identity made by ``study_info``. With no arguments it
writes the default study (``SMALL_STUDY`` on ``SMALL_CT_GRID`` / ``SMALL_PET_GRID``), which the
``small_study`` fixture (conftest.py) gives a test in its ``tmp_path``; a test that needs another
patient, other grids, other values or folder names passes them. A plain module, not a fixture
file, so that module-scoped fixtures and test helpers can call it too.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Tuple

import numpy as np

from PETCTLesionsLib.geometry import Grid
from PETCTLesionsLib.synthetic.dicom_writer import (
    PatientInfo,
    PetAcquisition,
    SeriesWriteResult,
    StudyInfo,
    make_uid,
    write_ct_series,
    write_pet_series,
)


def study_info(
    name: str, patient: PatientInfo, start: datetime.datetime, description: str, number: Optional[int] = None
) -> StudyInfo:
    """A study of ``patient`` started at ``start``; its study and frame of reference UIDs are
    ``make_uid(f"{name} study", number)`` and ``make_uid(f"{name} frame", number)`` (``number``
    left out where it is None), so a test can name them again."""
    numbered = () if number is None else (number,)
    return StudyInfo(
        patient=patient,
        study_uid=make_uid(f"{name} study", *numbered),
        frame_of_reference_uid=make_uid(f"{name} frame", *numbered),
        study_date=start.date(),
        study_time=start.time(),
        study_description=description,
    )


def oblique_direction(angle_deg: float, axis: Tuple[float, float, float] = (0.3, -0.5, 0.81)) -> tuple:
    """A grid direction rotated ``angle_deg`` about ``axis``, not a coordinate axis, so that every
    entry of the direction matrix is non-zero (row-major, as ``Grid.direction``)."""
    unit = np.array(axis) / np.linalg.norm(axis)
    a = np.deg2rad(angle_deg)
    k = np.array([[0, -unit[2], unit[1]], [unit[2], 0, -unit[0]], [-unit[1], unit[0], 0]])
    return tuple((np.eye(3) + np.sin(a) * k + (1 - np.cos(a)) * (k @ k)).ravel().tolist())


# The default study: a PET of 60 mm along z (20 slices of 3 mm) and a CT covering it (26 slices of
# 2.5 mm); 70 kg, 330 MBq injected an hour before the PET (DecayCorrection START at 10:00).
SMALL_PET_GRID = Grid(size=(12, 10, 20), spacing=(4.0, 4.0, 3.0), origin=(-22.0, -18.0, -30.0))
SMALL_CT_GRID = Grid(size=(20, 16, 26), spacing=(2.0, 2.0, 2.5), origin=(-20.0, -16.0, -32.0))
SMALL_STUDY = study_info(
    "small", PatientInfo("SMALL-0001", "Small^Study", "F", 50, 70.0), datetime.datetime(2020, 1, 1, 9, 0), "small study"
)
SMALL_ACQUISITION = PetAcquisition(3.3e8, datetime.datetime(2020, 1, 1, 9, 0), datetime.datetime(2020, 1, 1, 10, 0))


@dataclass(frozen=True)
class SmallStudy:
    """What ``write_small_study`` wrote: the study folder, the identity and the values written."""

    root: Path  # the folder holding the CT and PET series folders
    study: StudyInfo
    acquisition: PetAcquisition
    ct_grid: Grid
    pet_grid: Grid
    hu: np.ndarray  # the CT's HU, [k, j, i] on ct_grid (drawn even where no CT is written)
    ct: Optional[SeriesWriteResult]  # None where the study was written without a CT
    pet: SeriesWriteResult

    @property
    def suv(self) -> np.ndarray:
        """The PET's SUV as a correct reader decodes it (``SeriesWriteResult.stored_values``)."""
        return self.pet.stored_values


def write_small_study(
    root: Path,
    study: StudyInfo = SMALL_STUDY,
    acquisition: PetAcquisition = SMALL_ACQUISITION,
    ct_grid: Grid = SMALL_CT_GRID,
    pet_grid: Grid = SMALL_PET_GRID,
    *,
    seed: int = 1,
    hu_range: Tuple[int, int] = (-1000, 1000),
    suv_scale: float = 1.2,
    suv_ramp: Optional[Tuple[float, float]] = None,
    hu: Optional[np.ndarray] = None,
    suv: Optional[np.ndarray] = None,
    folders: Tuple[str, str] = ("ct", "pt"),
    with_ct: bool = True,
) -> SmallStudy:
    """Write a CT series into ``root / folders[0]`` and a PET series into ``root / folders[1]``.

    The CT's HU are uniform integers in ``hu_range`` (upper bound excluded), the PET's SUV a
    gamma(2, ``suv_scale``) noise, multiplied slice by slice by a linear ramp from
    ``suv_ramp[0]`` to ``suv_ramp[1]`` where given (PET slopes that differ a lot between slices);
    both are drawn, CT first, from ``numpy.random.default_rng(seed)``. ``hu`` and ``suv`` replace
    the values that would be drawn; where only ``suv`` is given the CT is still drawn, so it stays
    the one ``seed`` gives.
    """
    rng = np.random.default_rng(seed)
    if hu is None:
        hu = rng.integers(*hu_range, size=ct_grid.shape)
    if suv is None:
        suv = rng.gamma(2.0, suv_scale, size=pet_grid.shape)
        if suv_ramp is not None:
            suv = suv * np.linspace(*suv_ramp, pet_grid.size[2])[:, None, None]
    ct = write_ct_series(hu, ct_grid, study, root / folders[0]) if with_ct else None
    pet = write_pet_series(suv, pet_grid, study, acquisition, root / folders[1])
    return SmallStudy(root, study, acquisition, ct_grid, pet_grid, hu, ct, pet)
