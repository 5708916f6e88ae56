"""What is normal, varied: the ranges the generator draws physiology and scanners from (domain randomisation).

A :class:`Variation` holds a range for every quantity :func:`.phantom.make_phantom` randomises when
``PhantomConfig.variation`` names one of :data:`VARIATIONS`; :func:`draw_variation` draws one patient's
values from it (its own random stream, so the default generator's output is untouched).

Two named sets:

- ``"training"``: what a model may be trained on.
- ``"held_out"``: for validation on settings never seen in training. It differs from ``"training"`` by
  whole ranges that do not overlap training's (they share at most an end point):

  ====================================  ========================  ============================
  quantity                              training                  held_out
  ====================================  ========================  ============================
  PET PSF FWHM (mm)                     4.0-7.5                   7.5-9.0
  PET noise alpha (std / sqrt(SUV))     0.06-0.20                 0.20-0.30
  red marrow SUV (cancellous bone)      1.0-2.2                   2.2-3.2 (G-CSF, anaemia)
  brown fat SUV                         1.5-6.0                   6.0-15.0
  brown fat depots                      none, or 1-3 of 4 (60%)   all 4, always
  ureters (urine-filled)                never                     80% of patients
  ====================================  ========================  ============================

  Everything else (myocardium, exercised muscle, bowel, stomach, thyroid, tonsils, arms, the scanner
  grids, CT noise and kernel) is drawn from the same ranges in both. :func:`held_out_differences` lists
  the differences for a report.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Dict, List, Tuple

import numpy as np

BROWN_FAT_DEPOTS = ("supraclavicular", "axillary", "paravertebral", "perirenal")
MUSCLE_GROUPS = ("paraspinal", "psoas", "neck", "shoulder")
ARM_POSITIONS = ("down", "up")


@dataclass(frozen=True)
class Range:
    """A closed interval a value is drawn from: uniformly, or uniformly in log(value) when ``log``."""

    low: float
    high: float
    log: bool = False

    def __post_init__(self) -> None:
        if not (math.isfinite(self.low) and math.isfinite(self.high) and self.low <= self.high):
            raise ValueError(f"Range needs finite low <= high, got {self.low}, {self.high}")
        if self.log and self.low <= 0:
            raise ValueError(f"a log Range needs low > 0, got {self.low}")

    def draw(self, rng: np.random.Generator) -> float:
        if self.log:
            return float(math.exp(rng.uniform(math.log(self.low), math.log(self.high))))
        return float(rng.uniform(self.low, self.high))

    def contains(self, value: float, tolerance: float = 1e-9) -> bool:
        return self.low - tolerance <= float(value) <= self.high + tolerance

    def overlaps(self, other: Range) -> bool:
        """True when the two share more than an end point."""
        return min(self.high, other.high) > max(self.low, other.low)

    def describe(self) -> str:
        return f"{self.low:g}-{self.high:g}" + (" (log-uniform)" if self.log else "")


@dataclass(frozen=True)
class Scanner:
    """One family of scanner grids. Matrices come from a field of view and a pixel size, clipped."""

    pet_fov_mm: Range  # reconstructed transaxial field of view
    pet_pixel_mm: Range
    pet_matrix: Tuple[int, int]  # FOV / pixel is clipped into this range, then the pixel is FOV / matrix
    pet_slice_mm: Range
    ct_fov_mm: Range
    ct_matrix: Tuple[int, int]  # drawn uniformly (integers)
    ct_slice_mm: Range
    ct_noise_hu: Range  # std of the CT's white noise before the kernel
    ct_kernel: Range  # < 0: smoothing (soft-tissue kernel, Gaussian sigma -k voxels); > 0: sharpening (unsharp k)


@dataclass(frozen=True)
class Variation:
    """Every quantity make_phantom randomises with a variation, each with what real scans show."""

    # PET physics.
    psf_fwhm_mm: Range  # reconstructed resolution: ~4 mm (PSF+TOF, small voxels) to ~9 mm (older OSEM, smoothing)
    pet_noise_alpha: Range  # noise std / sqrt(SUV): short frames, heavy patients and low doses are noisier
    # Physiology (SUVbw of FDG at ~60 min).
    marrow_suv: Range  # red marrow ~1-2 normally; 2-3+ after G-CSF, in anaemia or with marrow reconversion
    myocardium_suv: Range  # from none (fasting, ~blood pool) to intense (~15) with insulin or carbohydrates
    brown_fat_probability: float  # brown fat is seen in a few % of adults, far more often in young and cold patients
    brown_fat_depots: Tuple[int, int]  # how many of BROWN_FAT_DEPOTS are active, when brown fat is present
    brown_fat_suv: Range  # active brown fat SUVmax ~2-6, up to ~15 in cold-activated patients
    brown_fat_hu: Range  # brown fat is denser than white fat (-90 to -50 HU; more water, mitochondria)
    active_muscle_probability: float  # each group of MUSCLE_GROUPS active on its own (exercise, tension, talking)
    active_muscle_suv: Range  # resting skeletal muscle ~0.7; after exercise or tension 1.5-5
    stomach_suv: Range  # gastric wall 1-5 (gastritis, distension)
    bowel_suv: Range  # bowel (each segment; metformin and peristalsis raise it to 6+)
    thyroid_suv: Range  # normal thyroid ~1-2; diffuse thyroiditis / Graves' up to ~6
    thyroid_hu: Range  # iodine makes the thyroid denser than muscle (70-120 HU)
    tonsil_suv: Range  # palatine tonsils: physiological uptake 1.5-6, symmetrical
    ureter_probability: float  # ureters hold urine in a fraction of scans (peristalsis)
    ureter_suv_fraction: Range  # a ureter's SUV as a fraction of the bladder urine's (partly filled, partial volume)
    ureter_radius_mm: Range  # urine-filled ureter lumen 2-4 mm
    arms_up_probability: float  # whole-body PET/CT: arms up (over the head) or down beside the trunk
    # Scanners: coarse family for size "small" (cheap on 2 CPU cores), real scanner ranges for size "full".
    scanner_small: Scanner
    scanner_full: Scanner

    def scanner(self, size: str) -> Scanner:
        return self.scanner_small if size == "small" else self.scanner_full


_SCANNER_SMALL = Scanner(
    pet_fov_mm=Range(450.0, 600.0),
    pet_pixel_mm=Range(3.3, 5.5),
    pet_matrix=(96, 192),
    pet_slice_mm=Range(3.0, 5.0),
    ct_fov_mm=Range(450.0, 600.0),
    ct_matrix=(128, 192),
    ct_slice_mm=Range(3.0, 5.0),
    ct_noise_hu=Range(8.0, 30.0),
    ct_kernel=Range(-1.0, 1.0),
)
_SCANNER_FULL = Scanner(
    pet_fov_mm=Range(500.0, 700.0),
    pet_pixel_mm=Range(2.0, 5.5),
    pet_matrix=(128, 440),
    pet_slice_mm=Range(2.0, 5.0),
    ct_fov_mm=Range(450.0, 650.0),
    ct_matrix=(512, 512),
    ct_slice_mm=Range(1.0, 5.0),
    ct_noise_hu=Range(8.0, 30.0),
    ct_kernel=Range(-1.0, 1.0),
)

_TRAINING = Variation(
    psf_fwhm_mm=Range(4.0, 7.5),
    pet_noise_alpha=Range(0.06, 0.20),
    marrow_suv=Range(1.0, 2.2),
    myocardium_suv=Range(1.5, 15.0, log=True),
    brown_fat_probability=0.6,
    brown_fat_depots=(1, 3),
    brown_fat_suv=Range(1.5, 6.0),
    brown_fat_hu=Range(-90.0, -50.0),
    active_muscle_probability=0.35,
    active_muscle_suv=Range(1.2, 4.5),
    stomach_suv=Range(1.0, 5.0),
    bowel_suv=Range(0.8, 6.0, log=True),
    thyroid_suv=Range(1.0, 6.0, log=True),
    thyroid_hu=Range(70.0, 120.0),
    tonsil_suv=Range(1.5, 6.0),
    ureter_probability=0.0,
    ureter_suv_fraction=Range(0.2, 1.0),
    ureter_radius_mm=Range(2.0, 4.0),
    arms_up_probability=0.5,
    scanner_small=_SCANNER_SMALL,
    scanner_full=_SCANNER_FULL,
)

VARIATIONS: Dict[str, Variation] = {
    "training": _TRAINING,
    "held_out": dataclasses.replace(
        _TRAINING,
        psf_fwhm_mm=Range(7.5, 9.0),
        pet_noise_alpha=Range(0.20, 0.30),
        marrow_suv=Range(2.2, 3.2),
        brown_fat_probability=1.0,
        brown_fat_depots=(len(BROWN_FAT_DEPOTS), len(BROWN_FAT_DEPOTS)),
        brown_fat_suv=Range(6.0, 15.0),
        ureter_probability=0.8,
    ),
}


def held_out_differences(training: str = "training", held_out: str = "held_out") -> List[str]:
    """One line per quantity whose range differs between two variations: 'name: training X, held_out Y'."""
    first, second = VARIATIONS[training], VARIATIONS[held_out]
    lines = []
    for spec in dataclasses.fields(Variation):
        a, b = getattr(first, spec.name), getattr(second, spec.name)
        if a != b:
            lines.append(f"{spec.name}: {training} {_describe(a)}, {held_out} {_describe(b)}")
    return lines


def _describe(value: object) -> str:
    if isinstance(value, Range):
        return value.describe()
    if isinstance(value, tuple) and len(value) == 2:
        return f"{value[0]}-{value[1]}"
    return f"{value:g}" if isinstance(value, float) else str(value)


@dataclass(frozen=True)
class VariationDraws:
    """One patient's values drawn from a :class:`Variation` (what make_phantom applies and records)."""

    variation: str
    psf_fwhm_mm: float
    pet_noise_alpha: float
    pet_pixel_mm: float
    pet_matrix: int
    pet_slice_mm: float
    ct_pixel_mm: float
    ct_matrix: int
    ct_slice_mm: float
    ct_noise_hu: float
    ct_kernel: float
    marrow_suv: float
    myocardium_suv: float
    stomach_suv: float
    bowel_suvs: Tuple[float, ...]  # one per bowel segment of the patient
    brown_fat_depots: Tuple[str, ...]  # empty: no active brown fat
    brown_fat_suv: float
    brown_fat_hu: float
    active_muscle_groups: Tuple[str, ...]
    active_muscle_suv: float
    thyroid_suv: float
    thyroid_hu: float
    tonsil_suv: float
    ureters: bool
    ureter_suv_fraction: float
    ureter_radius_mm: float
    arms: str  # "down" | "up"

    def record(self) -> Dict[str, object]:
        """JSON-ready dict of what was drawn (the bowel segments' SUVs as their range)."""
        record: Dict[str, object] = {}
        for spec in dataclasses.fields(self):
            value = getattr(self, spec.name)
            if spec.name == "bowel_suvs":
                record["bowel_suv_min"] = round(min(value), 4) if value else None
                record["bowel_suv_max"] = round(max(value), 4) if value else None
            elif isinstance(value, float):
                record[spec.name] = round(value, 4)
            elif isinstance(value, tuple):
                record[spec.name] = list(value)
            else:
                record[spec.name] = value
        return record


def draw_variation(name: str, rng: np.random.Generator, size: str, bowel_segments: int) -> VariationDraws:
    """Draw one patient's physiology and scanner from ``VARIATIONS[name]`` (fixed draw order: deterministic)."""
    variation = VARIATIONS[name]
    scanner = variation.scanner(size)
    pet_matrix, pet_pixel = _matrix_and_pixel(scanner.pet_fov_mm.draw(rng), scanner.pet_pixel_mm.draw(rng), scanner)
    ct_fov = scanner.ct_fov_mm.draw(rng)
    ct_matrix = int(rng.integers(scanner.ct_matrix[0], scanner.ct_matrix[1] + 1))
    brown_fat = bool(rng.random() < variation.brown_fat_probability)
    depot_count = int(rng.integers(variation.brown_fat_depots[0], variation.brown_fat_depots[1] + 1))
    depot_order = rng.permutation(len(BROWN_FAT_DEPOTS))
    depots = tuple(BROWN_FAT_DEPOTS[i] for i in sorted(depot_order[:depot_count])) if brown_fat else ()
    muscle_active = rng.random(len(MUSCLE_GROUPS)) < variation.active_muscle_probability
    return VariationDraws(
        variation=name,
        psf_fwhm_mm=variation.psf_fwhm_mm.draw(rng),
        pet_noise_alpha=variation.pet_noise_alpha.draw(rng),
        pet_pixel_mm=pet_pixel,
        pet_matrix=pet_matrix,
        pet_slice_mm=round(scanner.pet_slice_mm.draw(rng), 3),
        ct_pixel_mm=round(ct_fov / ct_matrix, 6),
        ct_matrix=ct_matrix,
        ct_slice_mm=round(scanner.ct_slice_mm.draw(rng), 3),
        ct_noise_hu=scanner.ct_noise_hu.draw(rng),
        ct_kernel=scanner.ct_kernel.draw(rng),
        marrow_suv=variation.marrow_suv.draw(rng),
        myocardium_suv=variation.myocardium_suv.draw(rng),
        stomach_suv=variation.stomach_suv.draw(rng),
        bowel_suvs=tuple(variation.bowel_suv.draw(rng) for _ in range(bowel_segments)),
        brown_fat_depots=depots,
        brown_fat_suv=variation.brown_fat_suv.draw(rng),
        brown_fat_hu=variation.brown_fat_hu.draw(rng),
        active_muscle_groups=tuple(group for group, on in zip(MUSCLE_GROUPS, muscle_active) if on),
        active_muscle_suv=variation.active_muscle_suv.draw(rng),
        thyroid_suv=variation.thyroid_suv.draw(rng),
        thyroid_hu=variation.thyroid_hu.draw(rng),
        tonsil_suv=variation.tonsil_suv.draw(rng),
        ureters=bool(rng.random() < variation.ureter_probability),
        ureter_suv_fraction=variation.ureter_suv_fraction.draw(rng),
        ureter_radius_mm=variation.ureter_radius_mm.draw(rng),
        arms="up" if rng.random() < variation.arms_up_probability else "down",
    )


def _matrix_and_pixel(fov_mm: float, pixel_mm: float, scanner: Scanner) -> Tuple[int, float]:
    """A PET matrix from FOV / pixel, clipped to the scanner's range; the pixel then follows from the FOV."""
    low, high = scanner.pet_matrix
    matrix = int(np.clip(int(round(fov_mm / pixel_mm)), low, high))
    pixel = fov_mm / matrix
    # Clipping the matrix can push the pixel out of its range: keep the pixel, let the FOV follow instead.
    if not scanner.pet_pixel_mm.contains(pixel):
        pixel = pixel_mm
    return matrix, round(pixel, 6)
