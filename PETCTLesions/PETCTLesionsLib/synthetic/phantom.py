"""Synthetic PET/CT patients with known lesions (numpy arrays only; no file I/O).

A seeded generator that stands in for real studies (Lung-PET-CT-Dx chest PET/CT, autoPET
whole-body FDG PET/CT) wherever the project needs data with a ground truth: tests, the demo
and the synthetic datasets written by :mod:`.synth`.

How a patient is made:

1. Anatomy is a list of analytic shapes in millimetres (ellipsoids, tubes, cylinders whose
   cross-section changes along z, rib arcs, ...), each tagged with a tissue. Shapes are
   painted in order (later ones win) into a tissue map on any grid by testing voxel
   centres, restricted to each shape's bounding box.
2. Per patient, every tissue gets a CT number (HU) and an FDG uptake (SUVbw) drawn from a
   physiological range (liver SUV 2.0-2.5, myocardium 1.5-10, urine 15-60, ...).
3. Lesions (lung nodules, lymph nodes at nodal stations, liver and bone lesions) are placed
   where their site allows, apart from each other, each centred on a PET voxel centre.
   Lesion ``l`` is exactly the set of voxels whose centre lies inside its shape, on both
   grids.
4. CT = tissue HU with lesions (partial volume at their borders) + Gaussian noise, int16.
   PET = true uptake (lesions with partial-volume fractions) blurred with a Gaussian PSF
   (FWHM 6-8 mm) + spatially correlated noise whose std grows with sqrt(activity), >= 0.

With ``PhantomConfig.variation`` (a name in :data:`.variation.VARIATIONS`) what is normal varies too
(domain randomisation): red marrow, myocardium, brown fat, exercised muscle, bowel and stomach, ureters,
thyroid and tonsils, arms up or down, and the scanner's grids, resolution, noise and CT kernel, each drawn
from its own random stream and recorded in ``PhantomStudy.variation_draws``. Without one the output is
exactly what it was before variations existed.

Coordinates are LPS millimetres (x towards the patient's left, y posterior, z superior);
arrays are indexed [k, j, i] like ``sitk.GetArrayFromImage``. The same config gives
bit-identical arrays; each seed gives a different patient.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk

from ..errors import InputError
from ..geometry import Grid
from .variation import VARIATIONS, VariationDraws, draw_variation

SIZES = ("small", "full")
BODIES = ("torso", "wholebody")
LESION_SITES = ("lung", "lymph_node", "liver", "bone")
LESION_SHAPES = ("ellipsoid", "irregular")
FWHM_TO_SIGMA = 1.0 / (2.0 * math.sqrt(2.0 * math.log(2.0)))
CT_AIR_HU = -1024  # outside the reconstruction circle and the floor of the HU range

# Tissue name, HU range, SUVbw range (FDG, ~60 min p.i.); each patient draws one value per tissue.
_TISSUE_TABLE: Tuple[Tuple[str, Tuple[float, float], Tuple[float, float]], ...] = (
    ("air", (-1000.0, -1000.0), (0.0, 0.0)),
    ("table", (150.0, 300.0), (0.0, 0.0)),
    ("table_foam", (-900.0, -850.0), (0.0, 0.0)),
    ("fat", (-110.0, -90.0), (0.25, 0.4)),
    ("muscle", (40.0, 55.0), (0.6, 0.9)),
    ("visceral_fat", (-100.0, -80.0), (0.35, 0.5)),
    ("mediastinum", (-90.0, -70.0), (0.4, 0.6)),
    ("lung", (-880.0, -820.0), (0.3, 0.5)),
    ("lung_vessel", (35.0, 45.0), (1.5, 2.0)),  # same blood as "blood"; own id so lungs can be told apart
    ("airway", (-1000.0, -985.0), (0.0, 0.0)),
    ("blood", (35.0, 45.0), (1.5, 2.0)),
    ("myocardium", (40.0, 50.0), (1.5, 10.0)),
    ("liver", (55.0, 65.0), (2.0, 2.5)),
    ("spleen", (45.0, 52.0), (1.6, 2.1)),
    ("kidney", (28.0, 36.0), (4.0, 10.0)),
    ("urine", (2.0, 12.0), (15.0, 60.0)),
    ("stomach", (30.0, 40.0), (1.3, 2.5)),
    ("gas", (-980.0, -900.0), (0.0, 0.0)),
    ("bowel", (20.0, 35.0), (1.0, 3.0)),
    ("esophagus", (35.0, 45.0), (1.2, 2.2)),
    ("cancellous_bone", (250.0, 400.0), (1.0, 1.6)),
    ("cortical_bone", (700.0, 1000.0), (0.4, 0.7)),
    ("skull", (1000.0, 1300.0), (0.4, 0.7)),
    ("yellow_marrow", (-70.0, -30.0), (0.5, 0.8)),
    ("disc", (70.0, 95.0), (0.5, 0.8)),
    ("spinal_cord", (30.0, 40.0), (1.2, 1.8)),
    ("brain", (35.0, 42.0), (7.0, 12.0)),
    ("white_matter", (25.0, 30.0), (0.4, 0.5)),  # SUV as a fraction of the brain (grey matter) SUV
)
TISSUE_NAMES: Tuple[str, ...] = tuple(row[0] for row in _TISSUE_TABLE)
TISSUE_ID: Dict[str, int] = {name: index for index, name in enumerate(TISSUE_NAMES)}
_MAX_BOWEL_SEGMENTS = 36  # each bowel segment gets its own tissue id (its own uptake)
# Tissues only a variation paints: their ids follow the bowel segments', so the default output keeps its ids.
VARIATION_TISSUES: Tuple[str, ...] = ("brown_fat", "active_muscle", "ureter", "thyroid", "tonsil")
VARIATION_TISSUE_ID: Dict[str, int] = {
    name: len(TISSUE_NAMES) + _MAX_BOWEL_SEGMENTS + index for index, name in enumerate(VARIATION_TISSUES)
}

# Where each lesion site may have its centre, and which tissues its whole extent may cover.
_SITE_CENTRE_TISSUES = {
    "lung": ("lung",),
    "lymph_node": ("mediastinum", "fat", "visceral_fat", "muscle"),
    "liver": ("liver",),
    "bone": ("cancellous_bone",),
}
_SITE_EXTENT_TISSUES = {
    "lung": ("lung", "lung_vessel"),
    "lymph_node": ("mediastinum", "fat", "visceral_fat", "muscle", "lung", "lung_vessel", "esophagus", "bowel"),
    "liver": ("liver",),
    "bone": ("cancellous_bone", "cortical_bone"),
}
_SITE_MARGIN_MM = {"lung": 2.0, "lymph_node": 0.0, "liver": 3.0, "bone": 0.0}
_SITE_BACKGROUND = {"lung": "lung", "lymph_node": "muscle", "liver": "liver", "bone": "cancellous_bone"}
_SITE_IRREGULAR_PROBABILITY = {"lung": 0.6, "lymph_node": 0.2, "liver": 0.4, "bone": 0.5}
_SITE_WEIGHTS = {
    "torso": {"lung": 0.55, "lymph_node": 0.35, "liver": 0.05, "bone": 0.05},
    "wholebody": {"lung": 0.25, "lymph_node": 0.4, "liver": 0.15, "bone": 0.2},
}
_DEFAULT_LESION_COUNT = {"torso": (1, 6), "wholebody": (2, 12)}
_MIN_UPTAKE_OVER_BACKGROUND = 2.0  # lesions are drawn at least this many times their tissue's SUV
_NODE_STATION_RADIUS_MM = 28.0

# Scan ranges in the patient's own z frame (mm, carina = 0, before the patient's size factor).
_SCAN_RANGE_MM = {
    ("torso", "small"): (-180.0, 60.0),
    ("torso", "full"): (-215.0, 95.0),
    ("wholebody", "small"): (-650.0, 280.0),
    ("wholebody", "full"): (-650.0, 280.0),
}


@dataclass(frozen=True)
class _GridSpec:
    ct_matrix: int
    ct_pixel_mm: float
    ct_slice_mm: float
    pet_matrix: int
    pet_pixel_mm: float
    pet_slice_mm: float


_GRID_SPECS = {
    "small": _GridSpec(128, 3.3203125, 4.0, 96, 5.0, 4.0),
    "full": _GridSpec(512, 0.9765625, 2.5, 200, 4.0728, 3.0),
}


# --------------------------------------------------------------------------------------------
# Public data types


@dataclass(frozen=True)
class PhantomConfig:
    """What to generate. Everything else (anatomy, lesions, noise) is drawn from ``seed``."""

    seed: int
    size: str = "small"
    body: str = "torso"
    n_lesions: Optional[int] = None
    lesion_diameter_mm: Tuple[float, float] = (5.0, 50.0)
    lesion_suvmax: Tuple[float, float] = (2.0, 25.0)
    variation: Optional[str] = None  # a name in variation.VARIATIONS: vary physiology and scanner; None: as always

    def __post_init__(self) -> None:
        if isinstance(self.seed, bool) or not isinstance(self.seed, (int, np.integer)) or self.seed < 0:
            raise InputError(f"PhantomConfig.seed must be a non-negative integer, got {self.seed!r}")
        if self.size not in SIZES:
            raise InputError(f"PhantomConfig.size must be one of {SIZES}, got {self.size!r}")
        if self.body not in BODIES:
            raise InputError(f"PhantomConfig.body must be one of {BODIES}, got {self.body!r}")
        if self.n_lesions is not None and (not isinstance(self.n_lesions, (int, np.integer)) or self.n_lesions < 0):
            raise InputError(f"PhantomConfig.n_lesions must be None or an integer >= 0, got {self.n_lesions!r}")
        _check_range("lesion_diameter_mm", self.lesion_diameter_mm, minimum=1.0)
        _check_range("lesion_suvmax", self.lesion_suvmax, minimum=1e-3)
        if self.variation is not None and self.variation not in VARIATIONS:
            raise InputError(
                f"PhantomConfig.variation must be None or one of {tuple(VARIATIONS)}, got {self.variation!r}"
            )


def _check_range(name: str, value: Sequence[float], minimum: float) -> None:
    if len(value) != 2 or not (minimum <= float(value[0]) <= float(value[1])) or not np.isfinite(value[1]):
        raise InputError(f"PhantomConfig.{name} must be (low, high) with {minimum} <= low <= high, got {value!r}")


@dataclass
class Lesion:
    """Ground truth of one lesion."""

    label: int  # 1..N, the value in the instance label volumes
    site: str  # "lung" | "lymph_node" | "liver" | "bone"
    center_lps: Tuple[float, float, float]  # a PET voxel centre
    diameter_mm: float  # nominal: diameter of the sphere with the ellipsoid's volume, before modulation
    shape: str  # "ellipsoid" | "irregular"
    uptake_suv: float  # true activity before PET blur
    ct_hu: float  # lesion HU on CT (before noise)


@dataclass(frozen=True)
class LesionShape:
    """A lesion's analytic shape in LPS mm: inside where :meth:`rho` <= 1.

    rho(p) = |A R^T (p - c)| / m(direction): an ellipsoid (semi-axes A^-1, rotation R)
    whose radius is modulated by ``m`` = 1 + a smooth polynomial of the direction
    (irregular lesions; ``modulation`` empty for plain ellipsoids). rho is homogeneous of
    degree one in (p - c), so scaling the lesion by s divides rho by s.
    """

    center: Tuple[float, float, float]
    semi_axes: Tuple[float, float, float]
    rotation: Tuple[float, ...]  # 3x3 row-major; columns are the lesion's axes in LPS
    modulation: Tuple[float, ...] = ()  # coefficients of _direction_monomials

    def rho(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        """rho at points given as broadcastable coordinate arrays (LPS mm)."""
        rot = np.asarray(self.rotation, dtype=float).reshape(3, 3)
        d = (x - self.center[0], y - self.center[1], z - self.center[2])
        v = [(rot[0, a] * d[0] + rot[1, a] * d[1] + rot[2, a] * d[2]) / self.semi_axes[a] for a in range(3)]
        norm = np.sqrt(v[0] * v[0] + v[1] * v[1] + v[2] * v[2])
        if not self.modulation:
            return norm
        safe = np.where(norm > 0, norm, 1.0)
        modulation = 1.0 + _direction_polynomial(self.modulation, v[0] / safe, v[1] / safe, v[2] / safe)
        return norm / modulation

    def boundary_offsets(self, directions: np.ndarray) -> np.ndarray:
        """Vectors from the centre to the surface along unit ``directions`` (n, 3)."""
        points = directions + np.asarray(self.center)
        rho = self.rho(points[:, 0], points[:, 1], points[:, 2])
        return directions / rho[:, None]

    def bounding_radius(self) -> float:
        """Radius (mm) of a sphere about the centre that contains the whole lesion."""
        radius = float(np.linalg.norm(self.boundary_offsets(_sphere_directions(600)), axis=1).max())
        return radius * 1.05 + 0.05  # margin for the gaps between sampled directions

    def scaled(self, factor: float) -> LesionShape:
        return LesionShape(self.center, tuple(s * factor for s in self.semi_axes), self.rotation, self.modulation)

    def moved_to(self, center: Sequence[float]) -> LesionShape:
        return LesionShape(tuple(float(c) for c in center), self.semi_axes, self.rotation, self.modulation)


@dataclass
class PhantomStudy:
    """One synthetic patient: CT and PET on their own grids, lesion labels on both, truth."""

    config: PhantomConfig
    ct_grid: Grid
    ct_hu: np.ndarray  # int16 [k, j, i], HU with noise
    ct_lesion_labels: np.ndarray  # uint16, 0 background, lesion.label inside lesion
    pet_grid: Grid
    pet_suv: np.ndarray  # float32 SUVbw: true uptake blurred by the PSF + correlated noise, >= 0
    pet_lesion_labels: np.ndarray  # uint16
    lesions: List[Lesion]
    # Extras for tests and analyses (anatomy and the values the patient was drawn with).
    tissue_names: List[str] = field(default_factory=list)  # index = tissue id in ct_tissue / pet_tissue
    ct_tissue: Optional[np.ndarray] = None  # uint8 tissue id per CT voxel (lesions not included)
    pet_tissue: Optional[np.ndarray] = None  # uint8 tissue id per PET voxel
    pet_uptake: Optional[np.ndarray] = None  # float32 true activity (SUV) on the PET grid, before PSF and noise
    tissue_hu: Dict[str, float] = field(default_factory=dict)
    tissue_suv: Dict[str, float] = field(default_factory=dict)  # "bowel": mean over the bowel segments
    lesion_shapes: List[LesionShape] = field(default_factory=list)  # lesion_shapes[l - 1] belongs to label l
    psf_fwhm_mm: float = 0.0
    pet_noise_alpha: float = 0.0  # noise std = alpha * sqrt(SUV) (before clipping at 0)
    ct_noise_hu: float = 0.0
    # With a variation: what was drawn ({"variation": name, "brown_fat_suv": 4.2, "arms": "up", ...}); else empty.
    variation_draws: Dict[str, object] = field(default_factory=dict)

    def lesion_mask_pet(self) -> np.ndarray:
        """uint8 0/1 mask of all lesions on the PET grid."""
        return (self.pet_lesion_labels > 0).astype(np.uint8)

    def lesion_mask_ct(self) -> np.ndarray:
        """uint8 0/1 mask of all lesions on the CT grid."""
        return (self.ct_lesion_labels > 0).astype(np.uint8)

    def tissue_mask(self, name: str, on: str = "ct") -> np.ndarray:
        """bool mask of one tissue (by name, e.g. "liver") on the "ct" or "pet" grid."""
        tissue = {"ct": self.ct_tissue, "pet": self.pet_tissue}.get(on)
        if tissue is None:
            raise ValueError(
                f"tissue_mask: 'on' must be 'ct' or 'pet' (and the study must carry tissue maps), got {on!r}"
            )
        ids = [index for index, tissue_name in enumerate(self.tissue_names) if tissue_name == name]
        if not ids:
            raise ValueError(f"tissue_mask: unknown tissue {name!r}; known: {sorted(set(self.tissue_names))}")
        return np.isin(tissue, ids)

    def lesion_labels_on(self, grid: Grid) -> np.ndarray:
        """uint16 instance labels of the lesions rasterised on any axis-aligned ``grid``."""
        labels = np.zeros(grid.shape, np.uint16)
        for label, shape in enumerate(self.lesion_shapes, start=1):
            _paint_lesion_label(labels, grid, shape, label)
        return labels


# --------------------------------------------------------------------------------------------
# Analytic shapes (patient frame: mm, origin at the carina on the body's midline)


class _Shape:
    """A region of space: ``contains`` takes broadcastable x, y, z arrays (mm)."""

    lo: np.ndarray
    hi: np.ndarray

    def contains(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        raise NotImplementedError


_UNBOUNDED = (np.full(3, -np.inf), np.full(3, np.inf))


class _Ellipsoid(_Shape):
    def __init__(self, center: Sequence[float], semi: Sequence[float], rotation: Optional[np.ndarray] = None):
        self.center = np.asarray(center, dtype=float)
        self.semi = np.asarray(semi, dtype=float)
        self.rotation = rotation
        half = self.semi if rotation is None else np.sqrt(((rotation * self.semi[None, :]) ** 2).sum(axis=1))
        self.lo, self.hi = self.center - half, self.center + half

    def contains(self, x, y, z):
        d = (x - self.center[0], y - self.center[1], z - self.center[2])
        if self.rotation is None:
            return (d[0] / self.semi[0]) ** 2 + (d[1] / self.semi[1]) ** 2 + (d[2] / self.semi[2]) ** 2 <= 1.0
        r = self.rotation
        total = 0.0
        for a in range(3):
            u = (r[0, a] * d[0] + r[1, a] * d[1] + r[2, a] * d[2]) / self.semi[a]
            total = total + u * u
        return total <= 1.0


class _Tube(_Shape):
    """Capsule: points within ``radius`` of the segment a-b."""

    def __init__(self, a: Sequence[float], b: Sequence[float], radius: float):
        self.a = np.asarray(a, dtype=float)
        self.b = np.asarray(b, dtype=float)
        self.radius = float(radius)
        self.lo = np.minimum(self.a, self.b) - radius
        self.hi = np.maximum(self.a, self.b) + radius

    def contains(self, x, y, z):
        d = self.b - self.a
        length2 = max(float(d @ d), 1e-12)
        p = (x - self.a[0], y - self.a[1], z - self.a[2])
        t = np.clip((p[0] * d[0] + p[1] * d[1] + p[2] * d[2]) / length2, 0.0, 1.0)
        q = (p[0] - t * d[0], p[1] - t * d[1], p[2] - t * d[2])
        return q[0] * q[0] + q[1] * q[1] + q[2] * q[2] <= self.radius * self.radius


class _ZProfile(_Shape):
    """Cylinder along z whose (super)elliptic cross-section (centre, semi-axes) varies with z."""

    def __init__(self, z, a, b, cx, cy, power: float = 2.0):
        self.z = np.asarray(z, dtype=float)
        self.a, self.b, self.cx, self.cy = (
            np.broadcast_to(np.asarray(v, dtype=float), self.z.shape) for v in (a, b, cx, cy)
        )
        self.power = float(power)
        self.lo = np.array([(self.cx - self.a).min(), (self.cy - self.b).min(), self.z[0]])
        self.hi = np.array([(self.cx + self.a).max(), (self.cy + self.b).max(), self.z[-1]])

    def section(self, z):
        """(a, b, cx, cy) at ``z``."""
        return tuple(np.interp(z, self.z, values) for values in (self.a, self.b, self.cx, self.cy))

    def contains(self, x, y, z):
        a, b, cx, cy = self.section(z)
        u, v = np.abs(x - cx) / a, np.abs(y - cy) / b
        inside = (u * u + v * v <= 1.0) if self.power == 2.0 else (u**self.power + v**self.power <= 1.0)
        return inside & (z >= self.z[0]) & (z <= self.z[-1])


def _z_profile(knots: Sequence[Sequence[float]], power: float = 2.0, grow: float = 0.0) -> _ZProfile:
    """_ZProfile from rows (z, a, b, cx, cy) sorted by z, semi-axes grown by ``grow`` mm."""
    rows = np.asarray(sorted(knots, key=lambda row: row[0]), dtype=float)
    return _ZProfile(rows[:, 0], rows[:, 1] + grow, rows[:, 2] + grow, rows[:, 3], rows[:, 4], power)


class _Predicate(_Shape):
    def __init__(self, lo, hi, predicate: Callable):
        self.lo, self.hi = np.asarray(lo, dtype=float), np.asarray(hi, dtype=float)
        self.predicate = predicate

    def contains(self, x, y, z):
        return self.predicate(x, y, z)


class _Intersection(_Shape):
    def __init__(self, *shapes: _Shape):
        self.shapes = shapes
        self.lo = np.max([s.lo for s in shapes], axis=0)
        self.hi = np.min([s.hi for s in shapes], axis=0)

    def contains(self, x, y, z):
        result = self.shapes[0].contains(x, y, z)
        for shape in self.shapes[1:]:
            result = result & shape.contains(x, y, z)
        return result


# --------------------------------------------------------------------------------------------
# Anatomy


@dataclass
class _PaintItem:
    tissue: int
    shape: _Shape
    feature_mm: float = 1e9  # smallest dimension; items much thinner than a voxel are skipped


@dataclass
class _Anatomy:
    items: List[_PaintItem]
    node_stations: np.ndarray  # (n, 3) lymph node stations, patient frame
    scale: float  # the patient's size factor (z ranges scale with it)
    bowel_ids: List[int]


def _rotation(axis: Sequence[float], angle_deg: float) -> np.ndarray:
    """3x3 rotation (columns = rotated axes) about ``axis`` by ``angle_deg`` (Rodrigues)."""
    axis = np.asarray(axis, dtype=float)
    axis = axis / np.linalg.norm(axis)
    angle = math.radians(angle_deg)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + math.sin(angle) * k + (1 - math.cos(angle)) * (k @ k)


class _AnatomyBuilder:
    """Builds one patient's paint list. Positions are nominal adult values times the size factor."""

    def __init__(self, rng: np.random.Generator):
        self.rng = rng
        self.k = float(rng.uniform(0.93, 1.06))  # skeleton and organ size factor
        self.obesity = float(rng.uniform(0.5, 1.5))  # scales subcutaneous fat thickness
        self.items: List[_PaintItem] = []
        self.bowel_ids: List[int] = []

    def p(self, x: float, y: float, z: float, jitter: float = 0.0) -> np.ndarray:
        """Nominal point scaled to this patient, optionally jittered (mm)."""
        point = np.array([x, y, z], dtype=float) * self.k
        if jitter:
            point = point + self.rng.normal(0.0, jitter, 3)
        return point

    def add(self, tissue: str, shape: _Shape, feature_mm: float = 1e9) -> None:
        self.items.append(_PaintItem(TISSUE_ID[tissue], shape, feature_mm))

    def add_id(self, tissue_id: int, shape: _Shape, feature_mm: float = 1e9) -> None:
        self.items.append(_PaintItem(tissue_id, shape, feature_mm))

    def tube(self, tissue: str, points: Sequence[np.ndarray], radius: float, within: Optional[_Shape] = None) -> None:
        for a, b in zip(points[:-1], points[1:]):
            shape: _Shape = _Tube(a, b, radius)
            self.add(tissue, _Intersection(shape, within) if within is not None else shape, 2 * radius)

    def bone(self, shape_outer: _Shape, shape_inner: Optional[_Shape]) -> None:
        """Cortical shell (outer shape) filled with cancellous bone (inner shape)."""
        self.add("cortical_bone", shape_outer)
        if shape_inner is not None:
            self.add("cancellous_bone", shape_inner)

    def build(self) -> _Anatomy:
        self._table_and_body()
        self._trunk_cavity()
        self._abdomen()
        self._thorax()
        self._spine()
        self._ribs_and_shoulders()
        self._pelvis_and_legs()
        self._head_and_neck()
        stations = self._node_stations()
        return _Anatomy(self.items, stations, self.k, self.bowel_ids)

    # Body wall ---------------------------------------------------------------------------

    def _table_and_body(self) -> None:
        k = self.k
        # Outer boundary of the muscles (z, a, b, cx, cy); subcutaneous fat lies outside it.
        muscle_knots = [
            (360, 68, 88, 0, -5),
            (290, 72, 92, 0, -5),
            (225, 68, 90, 0, -5),
            (205, 54, 68, 0, 0),
            (170, 50, 53, 0, 5),
            (110, 56, 55, 0, 5),
            (90, 140, 88, 0, 5),
            (65, 165, 98, 0, 3),
            (0, 157, 102, 0, 0),
            (-100, 152, 104, 0, 0),
            (-200, 144, 104, 0, -2),
            (-290, 138, 104, 0, -3),
            (-360, 146, 102, 0, -3),
            (-420, 158, 98, 0, 0),
            (-470, 163, 94, 0, 0),
            (-500, 160, 90, 0, 0),
        ]
        fat_knots = [(360, 4), (225, 4), (170, 6), (90, 8), (0, 12), (-150, 18), (-300, 22), (-500, 18), (-700, 12)]
        fat_z = np.array([f[0] for f in fat_knots], dtype=float)[::-1] * k
        fat_t = np.array([f[1] for f in fat_knots], dtype=float)[::-1] * self.obesity
        scaled = [(z * k, a * k, b * k, cx * k, cy * k) for z, a, b, cx, cy in muscle_knots]
        self.muscle = _z_profile(scaled, power=2.4)
        zs = np.arange(self.muscle.z[0], self.muscle.z[-1] + 1e-6, 5.0)
        a, b, cx, cy = self.muscle.section(zs)
        fat = np.interp(zs, fat_z, fat_t)
        body = _ZProfile(zs, a + fat, b + fat, cx, cy, power=2.4)
        self.body = body  # the skin (variations place arms beside it)
        thighs_muscle, thighs_body = [], []
        for side in (-1.0, 1.0):
            knots = [(-500 * k, 76 * k, 80 * k, side * 86 * k, 0.0), (-720 * k, 64 * k, 68 * k, side * 84 * k, -4 * k)]
            thighs_muscle.append(_z_profile(knots))
            thigh_fat = float(np.interp(-600 * k, fat_z, fat_t))
            thighs_body.append(_z_profile(knots, grow=thigh_fat))

        # Patient table under the back: a curved carbon-fibre shell filled with foam.
        back = float((body.cy + body.b).max()) + 2.0
        half_width, curvature, depth = 230.0, 0.0006, 45.0

        def table_region(inner: float):
            def predicate(x, y, z):
                top = back + curvature * x * x
                return (np.abs(x) <= half_width - inner) & (y >= top + inner) & (y <= top + depth - inner)

            return predicate

        lo, hi = [-half_width, back, -np.inf], [half_width, back + depth + curvature * half_width**2, np.inf]
        self.add("table", _Predicate(lo, hi, table_region(0.0)))
        self.add("table_foam", _Predicate(lo, hi, table_region(3.0)))
        self.add("fat", body)
        for thigh in thighs_body:
            self.add("fat", thigh)
        self.add("muscle", self.muscle)
        for thigh in thighs_muscle:
            self.add("muscle", thigh)

    def _trunk_cavity(self) -> None:
        k = self.k
        cavity_knots = [
            (90, 95, 65, 0, 0),
            (65, 125, 85, 0, -2),
            (0, 135, 90, 0, -3),
            (-100, 132, 92, 0, -5),
            (-200, 132, 90, 0, -8),
            (-290, 128, 86, 0, -12),
            (-360, 120, 80, 0, -10),
            (-420, 100, 70, 0, -5),
            (-470, 80, 60, 0, -5),
            (-490, 60, 45, 0, -5),
        ]
        self.cavity = _z_profile([(z * k, a * k, b * k, cx * k, cy * k) for z, a, b, cx, cy in cavity_knots], 2.2)
        self.add("visceral_fat", self.cavity)

        # Diaphragm domes: paraboloids, right higher than left; costophrenic recesses 70 mm lower.
        self.dome_top = {-1: (-100.0 + self.rng.normal(0, 8)) * k, 1: (-115.0 + self.rng.normal(0, 8)) * k}
        ref_a, ref_b, _, ref_cy = self.cavity.section(-100.0 * k)
        self.dome_depth = 70.0 * k

        def dome(x, y):
            q_right = ((x + 0.55 * ref_a) / (0.6 * ref_a)) ** 2 + ((y - ref_cy) / ref_b) ** 2
            q_left = ((x - 0.55 * ref_a) / (0.6 * ref_a)) ** 2 + ((y - ref_cy) / ref_b) ** 2
            return np.where(
                x < 0, self.dome_top[-1] - self.dome_depth * q_right, self.dome_top[1] - self.dome_depth * q_left
            )

        self.dome = dome
        self.below_dome = _Predicate(*_UNBOUNDED, lambda x, y, z: z < dome(x, y))
        self.above_dome = _Predicate(*_UNBOUNDED, lambda x, y, z: z > dome(x, y))

    # Abdomen and pelvis organs -------------------------------------------------------------

    def _abdomen(self) -> None:
        rng, k = self.rng, self.k
        first_bowel_id = len(TISSUE_NAMES)
        for segment in range(int(rng.integers(24, _MAX_BOWEL_SEGMENTS + 1))):
            tissue_id = first_bowel_id + segment
            self.bowel_ids.append(tissue_id)
            radius = float(rng.uniform(10.0, 16.0)) * k
            point = self.p(rng.uniform(-110, 110), rng.uniform(-80, 30), rng.uniform(-430, -190))
            direction = _unit(rng.normal(size=3))
            gas = rng.random() < 0.3
            for _ in range(4):
                direction = _unit(direction + 0.8 * rng.normal(size=3))
                end = point + direction * rng.uniform(25.0, 45.0) * k
                self.add_id(tissue_id, _Intersection(_Tube(point, end, radius), self.cavity), 2 * radius)
                if gas:
                    self.add("gas", _Intersection(_Tube(point, end, radius - 4.0), self.cavity), 2 * radius - 8)
                point = end
        belly = _Intersection(self.cavity, self.below_dome)
        stomach_c, stomach_s = self.p(55, -30, -150, 5), np.array([45, 38, 45]) * k
        self.add("stomach", _Intersection(_Ellipsoid(stomach_c, stomach_s), belly))
        gas_cap = _Predicate(*_UNBOUNDED, lambda x, y, z: z > stomach_c[2] + 12.0 * k)
        self.add("gas", _Intersection(_Ellipsoid(stomach_c, stomach_s - 6.0), gas_cap, belly))
        self.add(
            "spleen",
            _Intersection(
                _Ellipsoid(self.p(95, 40, -165, 5), np.array([45, 28, 55]) * k, _rotation((0, 0, 1), 30)), belly
            ),
        )
        liver_c = self.p(-55, -5, -170, 5)
        liver_c[2] = self.dome_top[-1] - 70.0 * k
        self.liver = _Intersection(
            _Ellipsoid(liver_c, np.array([100, 85, 80]) * k * rng.uniform(0.92, 1.08), _rotation((0, 1, 0), -10)), belly
        )
        self.add("liver", self.liver)
        self.kidneys: List[Tuple[np.ndarray, np.ndarray, np.ndarray]] = []  # centre, rotation, renal pelvis centre
        for side in (-1.0, 1.0):
            self.tube(
                "muscle",
                [self.p(side * 28, 38, -200), self.p(side * 45, 25, -330), self.p(side * 60, 15, -420)],
                16.0 * k,
            )
            drop = 15.0 if side < 0 else 0.0
            kidney_c = self.p(side * 68, 42, -250 - drop, 4)
            rot = _rotation((0, 0, 1), -side * 30) @ _rotation((0, 1, 0), side * 12)
            self.add("kidney", _Ellipsoid(kidney_c, np.array([27, 21, 52]) * k, rot))
            pelvis_c = kidney_c + rot @ np.array([-side * 12, -4, 0]) * k
            self.add("urine", _Ellipsoid(pelvis_c, np.array([8, 6, 16]) * k, rot))
            self.kidneys.append((kidney_c, rot, pelvis_c))
        bladder_c = self.p(0, -35, -445, 4)
        self.add("urine", _Ellipsoid(bladder_c, np.array([45, 38, 35]) * k * rng.uniform(0.7, 1.15)))

    # Thorax --------------------------------------------------------------------------------

    def _lung(self, side: float) -> _Shape:
        k = self.k
        apex, taper = 90.0 * k, 60.0 * k
        cavity = self.cavity
        dome = self.dome

        def inside(x, y, z):
            ca, cb, _, ccy = cavity.section(z)
            rel = np.clip((z - (apex - taper)) / taper, 0.0, 1.0)
            tau2 = 1.0 - rel * rel
            q = ((x - side * 0.55 * ca) / (0.6 * ca)) ** 2 + ((y - ccy) / (1.15 * cb)) ** 2
            return (q <= tau2) & (side * x > 2.0) & (z < apex) & (z > dome(x, y))

        lo = np.array([min(0.0, side * 200.0), -150.0, self.dome_top[int(side)] - self.dome_depth - 5.0])
        hi = np.array([max(0.0, side * 200.0), 150.0, apex])
        return _Intersection(_Predicate(lo, hi, inside), cavity)

    def _thorax(self) -> None:
        rng, k = self.rng, self.k
        self.lungs = {side: self._lung(side) for side in (-1.0, 1.0)}
        for lung in self.lungs.values():
            self.add("lung", lung)
        mediastinum_knots = [
            (90, 22, 40, 0, 0),
            (40, 32, 70, 3, -15),
            (0, 30, 72, 5, -12),
            (-60, 30, 72, 5, -10),
            (-100, 25, 40, 5, 20),
            (-130, 20, 30, 5, 20),
        ]
        self.add(
            "mediastinum", _z_profile([(z * k, a * k, b * k, cx * k, cy * k) for z, a, b, cx, cy in mediastinum_knots])
        )
        # Heart: all chambers blood, left ventricle wrapped in myocardium; it rests on the diaphragm.
        heart_rot = _rotation((0, 0, 1), 30) @ _rotation((1, 0, 0), 20)
        heart_c = self.p(22, -25, -75, 4)
        self.add("blood", _Intersection(_Ellipsoid(heart_c, np.array([62, 52, 58]) * k, heart_rot), self.above_dome))
        lv_c = heart_c + np.array([20, 4, -5]) * k
        lv_outer = np.array([38, 32, 44]) * k * rng.uniform(0.9, 1.1)
        self.add("myocardium", _Intersection(_Ellipsoid(lv_c, lv_outer, heart_rot), self.above_dome))
        self.add("blood", _Ellipsoid(lv_c, lv_outer - 11.0 * k, heart_rot))
        # Great vessels.
        p = self.p
        self.tube("blood", [p(-5, -40, -45), p(-3, -38, 10), p(5, -25, 35), p(20, 0, 38), p(25, 14, 20)], 13.0 * k)
        self.tube("blood", [p(25, 14, 20), p(25, 15, -110), p(10, 5, -200), p(6, -5, -340)], 11.0 * k)
        for side in (-1.0, 1.0):
            self.tube(
                "blood",
                [
                    p(6, -5, -340),
                    p(side * 45, 5, -430),
                    p(side * 70, -15, -500),
                    p(side * 85, -45, -560),
                    p(side * 90, -40, -700),
                ],
                7.0 * k,
            )
            self.tube("blood", [p(side * 45, 20, -440), p(side * 75, 0, -505), p(side * 80, -25, -700)], 8.0 * k)
            self.tube("blood", [p(side * 25, -15, 90), p(side * 28, -10, 210)], 5.0 * k)
            self.tube("blood", [p(side * 38, -5, 90), p(side * 40, 0, 210)], 6.5 * k)
        self.tube("blood", [p(-22, 5, -380), p(-22, 0, -200), p(-15, -8, -105)], 11.0 * k)
        self.tube("blood", [p(-18, -28, 80), p(-15, -25, -35)], 9.0 * k)
        self.tube("blood", [p(10, -55, -45), p(12, -30, -5)], 12.0 * k)
        hila = {side: p(side * 48, -5, -18) for side in (-1.0, 1.0)}
        for side, hilum in hila.items():
            self.tube("blood", [p(12, -30, -5), hilum], 10.0 * k)
            self.tube("blood", [p(side * 45, 5, -40), p(15, 15, -55)], 7.0 * k)
        # Airways: trachea and bronchi (soft-tissue wall, air lumen), oesophagus behind the trachea.
        trachea = [p(0, -22, 215), p(0, -15, 95), p(0, -5, 0)]
        self.tube("muscle", trachea, 11.0 * k)
        self.tube("airway", trachea, 8.5 * k)
        for side in (-1.0, 1.0):
            main = [p(0, -5, 0), p(side * 42, -2, -25)]
            lobar = [[p(side * 42, -2, -25), p(side * 55, -5, 10)], [p(side * 42, -2, -25), p(side * 58, 15, -60)]]
            if side < 0:
                lobar.append([p(side * 42, -2, -25), p(-65, -30, -40)])
            self.tube("muscle", main, 8.0 * k)
            self.tube("airway", main, 6.0 * k)
            for branch in lobar:
                self.tube("muscle", branch, 5.0 * k, within=self.lungs[side])
                self.tube("airway", branch, 3.5 * k, within=self.lungs[side])
        self.tube("esophagus", [p(0, -4, 215), p(3, 17, 90), p(5, 20, -90), p(25, -10, -140)], 7.0 * k)
        # Pulmonary vessel trees from the hila.
        for side, hilum in hila.items():
            directions = [
                (0.4, -0.1, 1.0),
                (1.0, -0.6, 0.2),
                (1.0, 0.2, -0.3),
                (0.5, -0.8, -0.6),
                (0.3, 0.6, -1.0),
                (0.6, 0.9, 0.3),
            ]
            for dx, dy, dz in directions:
                jittered = np.array([side * dx, dy, dz]) + rng.normal(0.0, 0.15, 3)
                self._vessel_tree(hilum, _unit(jittered), rng.uniform(4.5, 6.5) * k, self.lungs[side])

    def _vessel_tree(self, root: np.ndarray, direction: np.ndarray, radius: float, lung: _Shape) -> None:
        rng = self.rng
        stack = [(root, direction, radius, 0)]
        while stack:
            start, direction, radius, depth = stack.pop()
            end = start + direction * radius * rng.uniform(6.0, 9.0)
            if depth > 0 and not bool(lung.contains(end[0], end[1], end[2])):
                continue
            self.add("lung_vessel", _Tube(start, end, radius), 2 * radius)
            if depth >= 7 or radius < 1.0:
                continue
            for sign in (-1.0, 1.0):
                axis = _unit(np.cross(direction, rng.normal(size=3)))
                turned = _rotation(axis, sign * rng.uniform(20.0, 40.0)) @ direction
                stack.append((end, _unit(turned), radius * rng.uniform(0.7, 0.82), depth + 1))

    # Skeleton ------------------------------------------------------------------------------

    def _spine(self) -> None:
        k = self.k
        # Profiles along the column (nominal z knots from L5 to C2): body centre y, body and canal radii.
        y_body = _interpolator([-384, -300, -210, -150, 0, 60, 120, 205], [38, 33, 38, 42, 42, 38, 14, 10], k)
        radius_x = _interpolator([-384, -200, 95, 205], [24, 19, 13, 9], k)
        radius_y = _interpolator([-384, -200, 95, 205], [18, 15, 11, 8], k)
        canal_r = _interpolator([-384, -200, 95, 205], [9, 7, 6.5, 7], k)

        def canal_y(z):
            return y_body(z) + radius_y(z) + canal_r(z) + 2.0 * k

        zs = np.arange(-384.0, 205.0 + 1e-6, 5.0) * k
        self.paraspinal: List[_Shape] = []
        for side in (-1.0, 1.0):  # paraspinal muscles, carving the posterior lung gutters
            self.paraspinal.append(
                _ZProfile(zs[(zs < 110 * k)], 24 * k, 20 * k, side * 30 * k, canal_y(zs[zs < 110 * k]) + 14 * k)
            )
            self.add("muscle", self.paraspinal[-1])
        self.vertebral_body_y, self.vertebral_body_rx = y_body, radius_x
        self.add("disc", _ZProfile(zs, radius_x(zs), radius_y(zs), np.zeros_like(zs), y_body(zs)))
        # Levels top-down: C2-C7, T1-T12, L1-L5 as (height, disc below) in mm.
        levels = [("C", 14.0, 5.0)] * 6 + [("T", 20.0, 5.0)] * 12 + [("L", 27.0, 8.0)] * 5
        top = 205.0 * k
        self.thoracic_centres: List[float] = []
        for region, height, disc in levels:
            height, disc = height * k, disc * k
            zc = top - height / 2
            if region == "T":
                self.thoracic_centres.append(zc)
            body_z = np.array([top - height, top])
            rx, ry, yb = float(radius_x(zc)), float(radius_y(zc)), float(y_body(zc))
            self.bone(
                _ZProfile(body_z, [rx, rx], [ry, ry], [0, 0], [yb, yb]),
                _ZProfile(body_z + np.array([1.5, -1.5]) * k, [rx - 2.5 * k] * 2, [ry - 2.5 * k] * 2, [0, 0], [yb, yb]),
            )
            rc, yc = float(canal_r(zc)), float(canal_y(zc))
            self.add("cortical_bone", _ZProfile(body_z, [rc + 5.5 * k] * 2, [rc + 5.5 * k] * 2, [0, 0], [yc, yc]))
            self.add("cortical_bone", _Ellipsoid((0, yc + rc + 12 * k, zc - 4 * k), np.array([4.5, 14, 7]) * k))
            for side in (-1.0, 1.0):
                self.add("cortical_bone", _Ellipsoid((side * (rc + 14 * k), yc - 2 * k, zc), np.array([12, 6, 6]) * k))
            top -= height + disc
        self.add("spinal_cord", _ZProfile(zs, canal_r(zs), canal_r(zs), np.zeros_like(zs), canal_y(zs)))
        sacrum_c, sacrum_rot = self.p(0, 58, -425), _rotation((1, 0, 0), 30)
        self.bone(
            _Ellipsoid(sacrum_c, np.array([45, 20, 55]) * k, sacrum_rot),
            _Ellipsoid(sacrum_c, np.array([42, 17, 52]) * k, sacrum_rot),
        )

    def _ribs_and_shoulders(self) -> None:
        k, rng = self.k, self.rng
        cavity = self.cavity
        posterior_z = np.array(self.thoracic_centres) + 5.0 * k
        drops = np.array([40, 55, 70, 80, 85, 90, 90, 90, 85, 80, 40, 30], dtype=float) * k
        ends = np.array([0.88] * 7 + [0.8] * 3 + [0.55, 0.45]) * math.pi
        start = 0.13 * math.pi

        def rib(z_post: float, drop: float, end: float, radial_half: float, vertical_half: float):
            """One rib pair: an arc just outside the cavity, sloping down towards the front."""

            cy = float(cavity.section(z_post)[3])

            def predicate(x, y, z):
                # Angle and level first (cheap, 2D + one 3D test); the radial test only where they hold.
                dy = y - cy
                phi = np.arctan2(np.abs(x), dy)  # 0 at the back, pi at the front
                rib_z = np.where((phi >= start) & (phi <= end), z_post - drop * 0.5 * (1.0 - np.cos(phi)), np.inf)
                candidate = np.abs(z - rib_z) <= vertical_half
                xs, ys, zs = (np.broadcast_to(v, candidate.shape)[candidate] for v in (x, dy, z))
                ca, cb, _, _ = cavity.section(zs)
                dist = np.sqrt(xs * xs + ys * ys)
                r_ell = np.sqrt((xs / (ca + 6.0 * k)) ** 2 + (ys / (cb + 6.0 * k)) ** 2)
                candidate[candidate] = np.abs(dist - dist / np.maximum(r_ell, 1e-6)) <= radial_half
                return candidate

            lo = np.array([-200.0 * k, -160.0 * k, z_post - drop - vertical_half])
            hi = np.array([200.0 * k, 160.0 * k, z_post + vertical_half])
            return _Predicate(lo, hi, predicate)

        for z_post, drop, end in zip(posterior_z, drops, ends):
            self.add("cortical_bone", rib(z_post, drop, end, 4.0 * k, 6.0 * k), 8.0 * k)
            self.add("cancellous_bone", rib(z_post, drop, end, 2.0 * k, 3.5 * k), 4.0 * k)

        # Sternum in front of the cavity.
        zs = np.array([-100.0, 70.0]) * k
        ca, cb, _, ccy = cavity.section(zs)
        y_front = ccy - cb - 1.0 * k
        self.bone(
            _ZProfile(zs, [15 * k] * 2, [7 * k] * 2, [0, 0], y_front),
            _ZProfile(zs, [12 * k] * 2, [4 * k] * 2, [0, 0], y_front),
        )
        for side in (-1.0, 1.0):
            self.bone(
                _Tube(self.p(side * 20, -80, 88), self.p(side * 150, -25, 98), 8 * k),
                _Tube(self.p(side * 20, -80, 88), self.p(side * 150, -25, 98), 5 * k),
            )
            # Scapulae on the posterolateral chest wall, lateral border further forward.
            scapula = _Ellipsoid(
                self.p(side * 105, 72, 20),
                np.array([45, 6, 70]) * k,
                _rotation((0, 0, 1), -side * 30 + rng.normal(0, 3)),
            )
            self.add("cortical_bone", _Intersection(scapula, self.muscle), 12.0 * k)

    def _pelvis_and_legs(self) -> None:
        k = self.k
        p = self.p
        for side in (-1.0, 1.0):
            wing_c, wing_rot = p(side * 95, 40, -375), _rotation((0, 0, 1), side * 35)
            self.bone(
                _Ellipsoid(wing_c, np.array([14, 62, 58]) * k, wing_rot),
                _Ellipsoid(wing_c, np.array([10, 59, 55]) * k, wing_rot),
            )
            for a, b, r in (((75, -30, -455), (12, -65, -470), 10), ((80, 10, -465), (55, 25, -505), 12)):
                self.bone(
                    _Tube(p(side * a[0], a[1], a[2]), p(side * b[0], b[1], b[2]), r * k),
                    _Tube(p(side * a[0], a[1], a[2]), p(side * b[0], b[1], b[2]), (r - 3.5) * k),
                )
            head = p(side * 88, -5, -455)
            self.bone(_Ellipsoid(head, [24 * k] * 3), _Ellipsoid(head, [21 * k] * 3))
            self.bone(_Tube(head, p(side * 122, 0, -480), 13 * k), _Tube(head, p(side * 122, 0, -480), 9.5 * k))
            trochanter = p(side * 125, 5, -478)
            self.bone(_Ellipsoid(trochanter, [17 * k] * 3), _Ellipsoid(trochanter, [14 * k] * 3))
            shaft = (p(side * 120, 0, -490), p(side * 100, -5, -720))
            self.add("cortical_bone", _Tube(*shaft, 15 * k))
            self.add("yellow_marrow", _Tube(*shaft, 9 * k))

    def _head_and_neck(self) -> None:
        k = self.k
        centre = self.p(0, -5, 290)
        self.add("skull", _Ellipsoid(centre, np.array([67, 87, 75]) * k))
        self.add("brain", _Ellipsoid(centre, np.array([60, 80, 68]) * k))
        self.add("white_matter", _Ellipsoid(centre + np.array([0, 3, 6]) * k, np.array([44, 60, 48]) * k))

    def _node_stations(self) -> np.ndarray:
        nominal = [
            (40, -15, 160),
            (50, -25, 100),
            (150, 10, 45),
            (12, -22, 40),
            (52, -2, -20),
            (28, 5, -260),
            (40, 15, -380),
            (62, -8, -425),
            (80, -70, -490),
        ]
        midline = [(0, -50, 15), (20, -12, 10), (0, 12, -25), (5, 22, -80), (0, -45, -280)]
        points = [self.p(side * x, y, z) for x, y, z in nominal for side in (-1.0, 1.0)]
        points += [self.p(x, y, z) for x, y, z in midline]
        return np.array(points)


def _interpolator(z_knots: Sequence[float], values: Sequence[float], scale: float) -> Callable:
    """Piecewise-linear function of z through (z_knots, values), both scaled by ``scale``."""
    z_scaled = np.asarray(z_knots, dtype=float) * scale
    values_scaled = np.asarray(values, dtype=float) * scale
    return lambda z: np.interp(z, z_scaled, values_scaled)


def _unit(vector: np.ndarray) -> np.ndarray:
    return vector / np.linalg.norm(vector)


# --------------------------------------------------------------------------------------------
# Rasterisation


def _axes(grid: Grid, shift: np.ndarray, dtype=np.float32) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Voxel-centre coordinates along x, y, z of ``grid`` minus ``shift`` (LPS -> patient frame)."""
    return tuple((axis - shift[a]).astype(dtype) for a, axis in enumerate(grid.axis_coordinates()))  # type: ignore


def _bbox_slices(axes, lo: np.ndarray, hi: np.ndarray) -> Optional[Tuple[slice, slice, slice]]:
    """(k, j, i) slices of the voxels whose centres lie in [lo, hi]; None when empty."""
    ranges = []
    for a in range(3):
        start = int(np.searchsorted(axes[a], lo[a], side="left"))
        stop = int(np.searchsorted(axes[a], hi[a], side="right"))
        if stop <= start:
            return None
        ranges.append(slice(start, stop))
    return ranges[2], ranges[1], ranges[0]


def _paint_tissues(grid: Grid, shift: np.ndarray, items: Sequence[_PaintItem]) -> np.ndarray:
    """uint8 tissue map of ``grid``: items painted in order, each where its shape contains the voxel centre."""
    tissue = np.zeros(grid.shape, np.uint8)
    axes = _axes(grid, shift)
    thinnest = 0.5 * min(grid.spacing)
    for item in items:
        if item.feature_mm < thinnest:
            continue  # far thinner than a voxel: would only leave scattered dots
        slices = _bbox_slices(axes, item.shape.lo, item.shape.hi)
        if slices is None:
            continue
        ks, js, is_ = slices
        mask = item.shape.contains(axes[0][is_][None, None, :], axes[1][js][None, :, None], axes[2][ks][:, None, None])
        view = tissue[ks, js, is_]
        view[np.broadcast_to(mask, view.shape)] = item.tissue
    return tissue


def _lesion_window(grid: Grid, shape: LesionShape, pad_mm: float) -> Optional[Tuple[Tuple[slice, ...], Tuple]]:
    axes = grid.axis_coordinates()
    radius = shape.bounding_radius() + pad_mm
    center = np.asarray(shape.center)
    slices = _bbox_slices(axes, center - radius, center + radius)
    if slices is None:
        return None
    ks, js, is_ = slices
    return slices, (axes[0][is_], axes[1][js], axes[2][ks])


def _paint_lesion_label(labels: np.ndarray, grid: Grid, shape: LesionShape, label: int) -> int:
    """Set ``label`` where the voxel centre is inside ``shape``; returns the voxel count."""
    window = _lesion_window(grid, shape, 0.0)
    if window is None:
        return 0
    slices, (xs, ys, zs) = window
    inside = np.broadcast_to(
        shape.rho(xs[None, None, :], ys[None, :, None], zs[:, None, None]) <= 1.0, labels[slices].shape
    )
    labels[slices][inside] = label
    return int(inside.sum())


def _lesion_fraction(grid: Grid, shape: LesionShape, subsamples: int):
    """(slices, fraction of each voxel's volume inside ``shape``) from subsamples^3 points per voxel."""
    window = _lesion_window(grid, shape, 0.87 * max(grid.spacing))
    if window is None:
        return None
    slices, axes = window
    offsets = (np.arange(subsamples) + 0.5) / subsamples - 0.5
    fine = [(axis[:, None] + offsets[None, :] * grid.spacing[a]).ravel() for a, axis in enumerate(axes)]
    inside = shape.rho(fine[0][None, None, :], fine[1][None, :, None], fine[2][:, None, None]) <= 1.0
    n = subsamples
    shape3 = (len(axes[2]), n, len(axes[1]), n, len(axes[0]), n)
    return slices, inside.reshape(shape3).mean(axis=(1, 3, 5))


# --------------------------------------------------------------------------------------------
# Helpers: directions, irregular-shape polynomial


def _sphere_directions(n: int) -> np.ndarray:
    """n roughly uniform unit vectors (Fibonacci sphere)."""
    index = np.arange(n) + 0.5
    polar = np.arccos(1.0 - 2.0 * index / n)
    azimuth = math.pi * (1.0 + math.sqrt(5.0)) * index
    return np.stack([np.cos(azimuth) * np.sin(polar), np.sin(azimuth) * np.sin(polar), np.cos(polar)], axis=1)


_MONOMIAL_POWERS = [(i, j, d - i - j) for d in (2, 3) for i in range(d + 1) for j in range(d + 1 - i)]


def _direction_polynomial(coefficients: Sequence[float], u, v, w):
    total = 0.0
    for coefficient, (i, j, m) in zip(coefficients, _MONOMIAL_POWERS):
        total = total + coefficient * (u**i) * (v**j) * (w**m)
    return total


def _random_modulation(rng: np.random.Generator) -> Tuple[float, ...]:
    """Coefficients of a degree 2-3 direction polynomial with zero mean and |values| <= 0.15-0.3 on the sphere."""
    coefficients = rng.normal(size=len(_MONOMIAL_POWERS))
    directions = _sphere_directions(500)
    mean = float(_direction_polynomial(coefficients, *directions.T).mean())
    for powers in ((2, 0, 0), (0, 2, 0), (0, 0, 2)):  # x^2 + y^2 + z^2 = 1 on the sphere
        coefficients[_MONOMIAL_POWERS.index(powers)] -= mean
    peak = float(np.abs(_direction_polynomial(coefficients, *directions.T)).max())
    return tuple(float(c) for c in coefficients * (rng.uniform(0.15, 0.3) / peak))


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    q = _unit(rng.normal(size=4))
    w, x, y, z = q
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ]
    )


# --------------------------------------------------------------------------------------------
# Grids and tissue values


def _make_grids(
    rng: np.random.Generator, config: PhantomConfig, scale: float, spec: Optional[_GridSpec] = None
) -> Tuple[Grid, Grid, np.ndarray]:
    """CT grid, PET grid and the LPS position of the patient frame's origin (``spec``: the size's usual grids)."""
    spec = spec or _GRID_SPECS[config.size]
    z_lo, z_hi = (z * scale for z in _SCAN_RANGE_MM[(config.body, config.size)])
    n_ct_z = int(round((z_hi - z_lo) / spec.ct_slice_mm)) + 1
    ct_z0 = round(float(rng.uniform(-1000.0, -600.0)), 1)  # table position of the lowest slice
    shift = np.array([rng.uniform(-8.0, 8.0), rng.uniform(-10.0, 10.0), ct_z0 - z_lo])  # patient frame -> LPS

    def in_plane_origin(matrix: int, pixel: float) -> Tuple[float, float]:
        centre = rng.uniform(-6.0, 6.0, 2)  # reconstruction centre near the isocentre
        half = (matrix - 1) / 2.0 * pixel
        return round(float(centre[0] - half), 4), round(float(centre[1] - half), 4)

    ct_x0, ct_y0 = in_plane_origin(spec.ct_matrix, spec.ct_pixel_mm)
    ct = Grid(
        size=(spec.ct_matrix, spec.ct_matrix, n_ct_z),
        spacing=(spec.ct_pixel_mm, spec.ct_pixel_mm, spec.ct_slice_mm),
        origin=(ct_x0, ct_y0, ct_z0),
    )
    pet_x0, pet_y0 = in_plane_origin(spec.pet_matrix, spec.pet_pixel_mm)
    pet_z0 = round(ct_z0 - float(rng.uniform(0.2, 0.9)) * spec.pet_slice_mm, 3)
    ct_top = ct_z0 + (n_ct_z - 1) * spec.ct_slice_mm
    n_pet_z = int(math.ceil((ct_top - pet_z0) / spec.pet_slice_mm - 1e-9)) + 1
    pet = Grid(
        size=(spec.pet_matrix, spec.pet_matrix, n_pet_z),
        spacing=(spec.pet_pixel_mm, spec.pet_pixel_mm, spec.pet_slice_mm),
        origin=(pet_x0, pet_y0, pet_z0),
    )
    return ct, pet, shift


@dataclass
class _TissueValues:
    names: List[str]
    hu: np.ndarray  # float32 lookup table indexed by tissue id (256 entries)
    suv: np.ndarray


def _draw_tissue_values(rng: np.random.Generator, bowel_ids: Sequence[int]) -> _TissueValues:
    hu = np.zeros(256, np.float32)
    suv = np.zeros(256, np.float32)
    names = list(TISSUE_NAMES)
    for index, (name, hu_range, suv_range) in enumerate(_TISSUE_TABLE):
        hu[index] = rng.uniform(*hu_range)
        if name == "myocardium":  # FDG myocardial uptake spans an order of magnitude
            suv[index] = math.exp(rng.uniform(math.log(suv_range[0]), math.log(suv_range[1])))
        else:
            suv[index] = rng.uniform(*suv_range)
    suv[TISSUE_ID["white_matter"]] *= suv[TISSUE_ID["brain"]]
    hu[TISSUE_ID["lung_vessel"]], suv[TISSUE_ID["lung_vessel"]] = hu[TISSUE_ID["blood"]], suv[TISSUE_ID["blood"]]
    bowel_hu, bowel_suv = _TISSUE_TABLE[TISSUE_ID["bowel"]][1:]
    for tissue_id in bowel_ids:
        while len(names) <= tissue_id:
            names.append("bowel")
        hu[tissue_id] = rng.uniform(*bowel_hu)
        suv[tissue_id] = math.exp(rng.uniform(math.log(bowel_suv[0]), math.log(bowel_suv[1])))
    if bowel_ids:
        hu[TISSUE_ID["bowel"]] = hu[list(bowel_ids)].mean()
        suv[TISSUE_ID["bowel"]] = suv[list(bowel_ids)].mean()
    return _TissueValues(names, hu, suv)


# --------------------------------------------------------------------------------------------
# Lesion placement


@dataclass
class _LookupMap:
    """Nearest-voxel tissue lookup at LPS points."""

    grid: Grid
    tissue: np.ndarray

    def at(self, points: np.ndarray) -> np.ndarray:
        """Tissue id at (..., 3) LPS points; 255 outside the grid."""
        index = np.rint((points - np.asarray(self.grid.origin)) / np.asarray(self.grid.spacing)).astype(np.int64)
        size = np.asarray(self.grid.size)
        valid = np.all((index >= 0) & (index < size), axis=-1)
        index = np.where(valid[..., None], index, 0)
        values = self.tissue[index[..., 2], index[..., 1], index[..., 0]]
        return np.where(valid, values, 255)


def _tissue_lut(names: Sequence[str], allowed: Sequence[str]) -> np.ndarray:
    lut = np.zeros(256, bool)
    for index, name in enumerate(names):
        lut[index] = name in allowed
    return lut


class _LesionPlacer:
    """Draws lesions one by one where their site allows, keeping them apart."""

    def __init__(
        self,
        rng,
        config: PhantomConfig,
        anatomy: _Anatomy,
        values: _TissueValues,
        ct_grid: Grid,
        ct_tissue: np.ndarray,
        pet_grid: Grid,
        pet_tissue: np.ndarray,
        shift: np.ndarray,
    ):
        self.rng, self.config, self.values = rng, config, values
        self.ct_map = _LookupMap(ct_grid, ct_tissue)
        self.ct_grid = ct_grid
        self.gap_mm = 2.0 * max(pet_grid.spacing) + 0.5  # >= 2 PET voxels between any two lesions
        self.pet_centres = _pet_centre_pools(config, anatomy, values.names, pet_grid, pet_tissue, shift)
        self.extent_luts = {site: _tissue_lut(values.names, _SITE_EXTENT_TISSUES[site]) for site in LESION_SITES}
        self.placed: List[Tuple[LesionShape, float]] = []  # shape, bounding radius
        # Lung nodules keep at least a CT voxel of lung around them (fully inside the lung on CT).
        self.margins = dict(_SITE_MARGIN_MM, lung=max(_SITE_MARGIN_MM["lung"], max(ct_grid.spacing)))

    def place(self, count: int) -> List[Tuple[Lesion, LesionShape]]:
        weights = _SITE_WEIGHTS[self.config.body]
        result = []
        for label in range(1, count + 1):
            site = LESION_SITES[int(self.rng.choice(len(LESION_SITES), p=[weights[s] for s in LESION_SITES]))]
            placed = self._place_one(label, site, count)
            result.append(placed)
        return result

    def _place_one(self, label: int, first_site: str, count: int) -> Tuple[Lesion, LesionShape]:
        rng, config = self.rng, self.config
        lo, hi = config.lesion_diameter_mm
        diameter = math.exp(rng.uniform(math.log(lo), math.log(hi)))
        ratios = rng.uniform(0.75, 1.25, 3)
        ratios = ratios / np.prod(ratios) ** (1.0 / 3.0)
        rotation = _random_rotation(rng)
        irregular_draw = rng.random()
        modulation = _random_modulation(rng)
        sites = [first_site] + [s for s in LESION_SITES if s != first_site]
        for site in sites:
            irregular = irregular_draw < _SITE_IRREGULAR_PROBABILITY[site]
            trial = diameter
            for _ in range(8):
                shape = LesionShape(
                    (0.0, 0.0, 0.0),
                    tuple(ratios * trial / 2.0),
                    tuple(rotation.ravel()),
                    modulation if irregular else (),
                )
                found = self._find_position(site, shape)
                if found is not None:
                    return self._make_lesion(label, site, found, irregular)
                if trial <= lo:
                    break
                trial = max(lo, trial * 0.75)
        raise InputError(
            f"phantom seed {config.seed}: could not place lesion {label} of {count} "
            f"(diameters {lo}-{hi} mm): no site in the {config.body} has room for it apart from the other lesions; "
            "ask for fewer or smaller lesions"
        )

    def _find_position(self, site: str, shape: LesionShape) -> Optional[LesionShape]:
        pool = self.pet_centres[site]
        if pool.size == 0:
            return None
        radius = shape.bounding_radius()
        n_dirs = int(np.clip(4.0 * math.pi * radius * radius / 9.0, 64, 1500))
        surface = shape.boundary_offsets(_sphere_directions(n_dirs))
        length = np.linalg.norm(surface, axis=1, keepdims=True)
        margin = self.margins[site]
        probes = np.concatenate([surface * (length + margin) / length, surface * 0.5, np.zeros((1, 3))])
        lut = self.extent_luts[site]
        for _ in range(6):
            centres = pool[self.rng.integers(0, len(pool), 48)]
            ok = self._apart(centres, radius)
            if not ok.any():
                continue
            centres = centres[ok]
            inside = lut[self.ct_map.at(centres[:, None, :] + probes[None, :, :])].all(axis=1)
            for centre in centres[inside]:
                moved = shape.moved_to(centre)
                candidate = self._with_ct_voxel(moved)
                if candidate is None:
                    continue
                if candidate is not moved and not self._fits(candidate, site):
                    continue
                if not self._covers_only_allowed(candidate, site):
                    continue
                self.placed.append((candidate, candidate.bounding_radius()))
                return candidate
        return None

    def _apart(self, centres: np.ndarray, radius: float) -> np.ndarray:
        if not self.placed:
            return np.ones(len(centres), bool)
        others = np.array([s.center for s, _ in self.placed])
        others_r = np.array([r for _, r in self.placed])
        distance = np.linalg.norm(centres[:, None, :] - others[None, :, :], axis=2)
        return np.all(distance >= radius + others_r[None, :] + self.gap_mm, axis=1)

    def _with_ct_voxel(self, shape: LesionShape) -> Optional[LesionShape]:
        """The shape, grown just enough to hold the CT voxel centre nearest to its centre."""
        grid = self.ct_grid
        index = np.rint((np.asarray(shape.center) - np.asarray(grid.origin)) / np.asarray(grid.spacing))
        if np.any(index < 0) or np.any(index >= np.asarray(grid.size)):
            return None
        point = np.asarray(grid.origin) + index * np.asarray(grid.spacing)
        rho = float(shape.rho(point[0], point[1], point[2]))
        if rho <= 1.0:
            return shape
        if rho > 2.0:
            return None
        return shape.scaled(rho * 1.001)

    def _covers_only_allowed(self, shape: LesionShape, site: str) -> bool:
        """Exact test on the CT grid: every voxel the lesion will label lies in a tissue its site allows."""
        window = _lesion_window(self.ct_grid, shape, 0.0)
        if window is None:
            return False
        slices, (xs, ys, zs) = window
        inside = shape.rho(xs[None, None, :], ys[None, :, None], zs[:, None, None]) <= 1.0
        return bool(self.extent_luts[site][self.ct_map.tissue[slices][inside]].all())

    def _fits(self, shape: LesionShape, site: str) -> bool:
        """Full placement test for a grown shape."""
        radius = shape.bounding_radius()
        if not self._apart(np.asarray(shape.center)[None, :], radius)[0]:
            return False
        surface = shape.boundary_offsets(_sphere_directions(int(np.clip(4.0 * math.pi * radius**2 / 9.0, 64, 1500))))
        length = np.linalg.norm(surface, axis=1, keepdims=True)
        probes = np.asarray(shape.center) + surface * (length + self.margins[site]) / length
        return bool(self.extent_luts[site][self.ct_map.at(probes)].all())

    def _make_lesion(self, label: int, site: str, shape: LesionShape, irregular: bool) -> Tuple[Lesion, LesionShape]:
        rng, config = self.rng, self.config
        lo, hi = config.lesion_suvmax
        background = float(self.values.suv[TISSUE_ID[_SITE_BACKGROUND[site]]])
        lo = min(hi, max(lo, _MIN_UPTAKE_OVER_BACKGROUND * background))  # keep lesions above their surroundings
        uptake = math.exp(rng.uniform(math.log(lo), math.log(hi)))
        if site == "lung":
            hu = rng.uniform(20.0, 50.0)
        elif site == "lymph_node":
            hu = rng.uniform(30.0, 45.0)
        elif site == "liver":
            hu = rng.uniform(35.0, 45.0)
        else:
            hu = rng.uniform(80.0, 150.0) if rng.random() < 0.5 else rng.uniform(700.0, 900.0)  # lytic / sclerotic
        nominal = 2.0 * float(np.prod(shape.semi_axes)) ** (1.0 / 3.0)
        lesion = Lesion(
            label=label,
            site=site,
            center_lps=tuple(float(c) for c in shape.center),  # type: ignore[arg-type]
            diameter_mm=round(nominal, 4),
            shape="irregular" if irregular else "ellipsoid",
            uptake_suv=float(uptake),
            ct_hu=float(round(hu, 1)),
        )
        return lesion, shape


def _pet_centre_pools(config, anatomy: _Anatomy, names, pet_grid: Grid, pet_tissue: np.ndarray, shift) -> Dict:
    """Per site: LPS centres of the PET voxels where a lesion of that site may be centred."""
    origin, spacing = np.asarray(pet_grid.origin), np.asarray(pet_grid.spacing)
    pools = {}
    for site in LESION_SITES:
        mask = _tissue_lut(names, _SITE_CENTRE_TISSUES[site])[pet_tissue]
        if site == "lymph_node":
            mask &= _near_points(pet_grid, anatomy.node_stations + shift, _NODE_STATION_RADIUS_MM * anatomy.scale)
        k, j, i = np.nonzero(mask)
        pools[site] = origin + np.stack([i, j, k], axis=1) * spacing
    return pools


def _near_points(grid: Grid, points: np.ndarray, radius: float) -> np.ndarray:
    mask = np.zeros(grid.shape, bool)
    axes = grid.axis_coordinates()
    for point in points:
        slices = _bbox_slices(axes, point - radius, point + radius)
        if slices is None:
            continue
        ks, js, is_ = slices
        d2 = (
            (axes[0][is_] - point[0])[None, None, :] ** 2
            + (axes[1][js] - point[1])[None, :, None] ** 2
            + (axes[2][ks] - point[2])[:, None, None] ** 2
        )
        mask[ks, js, is_] |= d2 <= radius * radius
    return mask


# --------------------------------------------------------------------------------------------
# Image formation


def _make_ct(
    rng, grid: Grid, tissue: np.ndarray, values: _TissueValues, lesions, noise_hu: float, kernel: float = 0.0
) -> np.ndarray:
    hu = values.hu[tissue]
    subsamples = 3 if min(grid.spacing) < 2.0 else 4
    for lesion, shape in lesions:
        window = _lesion_fraction(grid, shape, subsamples)
        if window is not None:
            slices, fraction = window
            hu[slices] += fraction.astype(np.float32) * (np.float32(lesion.ct_hu) - hu[slices])
    hu += rng.standard_normal(hu.shape, dtype=np.float32) * np.float32(noise_hu)
    hu = _ct_kernel(hu, grid, kernel)
    # Outside the reconstruction circle the scanner writes its air floor.
    x, y, _ = grid.axis_coordinates()
    centre = np.array([x[[0, -1]].mean(), y[[0, -1]].mean()])
    radius = 0.5 * min(x[-1] - x[0], y[-1] - y[0])
    outside = (x[None, :] - centre[0]) ** 2 + (y[:, None] - centre[1]) ** 2 > radius * radius
    hu[:, outside] = CT_AIR_HU
    np.clip(hu, CT_AIR_HU, 3071, out=hu)
    return np.rint(hu).astype(np.int16)


def _make_pet(
    rng, grid: Grid, tissue: np.ndarray, values: _TissueValues, lesions, fwhm_mm: float, alpha: float
) -> Tuple[np.ndarray, np.ndarray]:
    uptake = values.suv[tissue]
    for lesion, shape in lesions:
        window = _lesion_fraction(grid, shape, 5)
        if window is not None:
            slices, fraction = window
            uptake[slices] += fraction.astype(np.float32) * (np.float32(lesion.uptake_suv) - uptake[slices])
    sigma = fwhm_mm * FWHM_TO_SIGMA
    blurred = sitk.GetArrayFromImage(sitk.DiscreteGaussian(grid.to_sitk(uptake), [sigma * sigma] * 3, 32, 0.001, True))
    # Noise: white Gaussian smoothed over ~1 voxel (reconstruction correlates neighbours),
    # normalised to unit std, scaled by alpha * sqrt(activity) (Poisson-like).
    noise = sitk.GetImageFromArray(rng.standard_normal(grid.shape, dtype=np.float32))
    noise = sitk.GetArrayFromImage(sitk.DiscreteGaussian(noise, [1.0, 1.0, 1.0], 32, 0.001, False))
    noise /= np.float32(noise.std())
    pet = blurred + np.float32(alpha) * np.sqrt(np.maximum(blurred, 0.0) + np.float32(0.01)) * noise
    np.maximum(pet, 0.0, out=pet)
    return pet.astype(np.float32), uptake


def _lesion_labels(grid: Grid, lesions) -> np.ndarray:
    labels = np.zeros(grid.shape, np.uint16)
    for lesion, shape in lesions:
        _paint_lesion_label(labels, grid, shape, lesion.label)
    return labels


# --------------------------------------------------------------------------------------------
# Variations: what is normal, varied (domain randomisation; see variation.py for the ranges)


@dataclass
class _OverPaint:
    """Items painted only over voxels that held one of the ``over`` tissues before the group began.

    How a variation adds physiology to an anatomy it must not otherwise change: brown fat replaces fat,
    active muscle replaces muscle, an arm fills air beside the body, a ureter crosses soft tissue only.
    """

    over: Tuple[str, ...]
    items: List[_PaintItem]


def _varied_grid_spec(draws: VariationDraws) -> _GridSpec:
    return _GridSpec(
        draws.ct_matrix, draws.ct_pixel_mm, draws.ct_slice_mm, draws.pet_matrix, draws.pet_pixel_mm, draws.pet_slice_mm
    )


def _apply_variation_values(values: _TissueValues, draws: VariationDraws, bowel_ids: Sequence[int]) -> None:
    """Set the drawn uptakes on the usual tissues and add the variation's own tissues."""
    suv, hu = values.suv, values.hu
    suv[TISSUE_ID["cancellous_bone"]] = draws.marrow_suv  # red marrow: spine, pelvis, ribs, sternum, femoral heads
    suv[TISSUE_ID["myocardium"]] = draws.myocardium_suv
    suv[TISSUE_ID["stomach"]] = draws.stomach_suv
    for tissue_id, segment_suv in zip(bowel_ids, draws.bowel_suvs):
        suv[tissue_id] = segment_suv
    if bowel_ids:
        suv[TISSUE_ID["bowel"]] = suv[list(bowel_ids)].mean()
    while len(values.names) < VARIATION_TISSUE_ID[VARIATION_TISSUES[0]]:
        values.names.append("unused")  # ids of bowel segments this patient does not have
    values.names.extend(VARIATION_TISSUES)
    new = {
        "brown_fat": (draws.brown_fat_hu, draws.brown_fat_suv),
        "active_muscle": (hu[TISSUE_ID["muscle"]], draws.active_muscle_suv),
        "ureter": (hu[TISSUE_ID["urine"]], suv[TISSUE_ID["urine"]] * draws.ureter_suv_fraction),
        "thyroid": (draws.thyroid_hu, draws.thyroid_suv),
        "tonsil": (hu[TISSUE_ID["muscle"]], draws.tonsil_suv),
    }
    for name, (tissue_hu, tissue_suv) in new.items():
        hu[VARIATION_TISSUE_ID[name]], suv[VARIATION_TISSUE_ID[name]] = tissue_hu, tissue_suv


def _ureter_radius(draws: VariationDraws, pet_grid: Grid) -> float:
    """The drawn lumen, but at least half a PET voxel's diagonal: a connected path on the PET grid."""
    return max(draws.ureter_radius_mm, 0.5 * float(np.linalg.norm(pet_grid.spacing)) + 0.05)


_SIDES = (-1.0, 1.0)
_SOFT_TISSUES = ("fat", "visceral_fat", "muscle", "mediastinum")


def _ellipsoid_item(builder: _AnatomyBuilder, tissue_id: int, centre, semi, rotation=None) -> _PaintItem:
    """An ellipsoid with nominal semi-axes (mm) scaled to the patient."""
    return _PaintItem(tissue_id, _Ellipsoid(centre, np.asarray(semi, dtype=float) * builder.k, rotation))


def _tube_items(tissue_id: int, points: Sequence[np.ndarray], radius: float) -> List[_PaintItem]:
    return [_PaintItem(tissue_id, _Tube(a, b, radius), 2 * radius) for a, b in zip(points[:-1], points[1:])]


def _brown_fat_depots(builder: _AnatomyBuilder) -> Dict[str, _OverPaint]:
    """Each depot of variation.BROWN_FAT_DEPOTS: where brown fat lies and what it may replace."""
    k, p, brown = builder.k, builder.p, VARIATION_TISSUE_ID["brown_fat"]

    def paravertebral(side: float) -> List[_PaintItem]:  # beside the thoracic vertebral bodies
        zs = np.array([95.0, 0.0, -100.0, -190.0]) * k
        points = [np.array([side * (builder.vertebral_body_rx(z) + 9 * k), builder.vertebral_body_y(z), z]) for z in zs]
        return _tube_items(brown, points, 8.0 * k)

    # The phantom's neck, shoulders and spine are solid muscle where patients have fat between the muscles:
    # those depots may replace muscle too.
    return {
        "supraclavicular": _OverPaint(
            _SOFT_TISSUES,
            [_ellipsoid_item(builder, brown, p(s * 60, 0, 110), (40, 35, 28)) for s in _SIDES]
            + [_ellipsoid_item(builder, brown, p(s * 35, 5, 150), (16, 22, 35)) for s in _SIDES],
        ),
        "axillary": _OverPaint(
            _SOFT_TISSUES, [_ellipsoid_item(builder, brown, p(s * 135, 15, 50), (30, 35, 40)) for s in _SIDES]
        ),
        "paravertebral": _OverPaint(_SOFT_TISSUES, [item for s in _SIDES for item in paravertebral(s)]),
        "perirenal": _OverPaint(
            ("fat", "visceral_fat"),
            [_ellipsoid_item(builder, brown, c, (27 + 14, 21 + 14, 52 + 14), rot) for c, rot, _ in builder.kidneys],
        ),
    }


def _muscle_groups(builder: _AnatomyBuilder) -> Dict[str, _OverPaint]:
    """Each group of variation.MUSCLE_GROUPS, replacing the muscle it lies in."""
    k, p, active = builder.k, builder.p, VARIATION_TISSUE_ID["active_muscle"]

    def psoas(s: float) -> List[np.ndarray]:  # as in _AnatomyBuilder._abdomen
        return [p(s * 28, 38, -200), p(s * 45, 25, -330), p(s * 60, 15, -420)]

    items = {
        "paraspinal": [_PaintItem(active, shape) for shape in builder.paraspinal],
        "psoas": [item for s in _SIDES for item in _tube_items(active, psoas(s), 16.0 * k)],
        "neck": [item for s in _SIDES for item in _tube_items(active, [p(s * 45, 10, 215), p(s * 20, -45, 95)], 9 * k)],
        "shoulder": [_ellipsoid_item(builder, active, p(s * 140, 10, 75), (35, 50, 35)) for s in _SIDES],
    }
    return {name: _OverPaint(("muscle",), group) for name, group in items.items()}


def _neck_glands(builder: _AnatomyBuilder) -> List[_OverPaint]:
    """Thyroid lobes beside the trachea and palatine tonsils beside the upper airway, in the neck's muscle."""
    p, ids = builder.p, VARIATION_TISSUE_ID
    thyroid = [_ellipsoid_item(builder, ids["thyroid"], p(s * 20, -28, 150), (9, 10, 22)) for s in _SIDES]
    tonsils = [_ellipsoid_item(builder, ids["tonsil"], p(s * 17, -20, 198), (7, 9, 12)) for s in _SIDES]
    return [_OverPaint(("muscle", "fat"), thyroid), _OverPaint(("muscle", "fat"), tonsils)]


def _ureters(builder: _AnatomyBuilder, radius: float) -> List[_OverPaint]:
    """Renal pelvis -> along the psoas -> over the pelvic brim -> into the bladder, through soft tissue only."""
    p = builder.p
    crossed = ("fat", "visceral_fat", "muscle", "blood", "kidney", "bowel", "gas")
    groups = []
    for s, (_, _, pelvis) in zip(_SIDES, builder.kidneys):
        path = [pelvis, p(s * 50, 25, -300), p(s * 45, 12, -360), p(s * 48, 0, -410), p(s * 15, -30, -440)]
        groups.append(_OverPaint(crossed, _tube_items(VARIATION_TISSUE_ID["ureter"], path, radius)))
    return groups


def _variation_paint(builder: _AnatomyBuilder, draws: VariationDraws, ureter_radius: float) -> List[_OverPaint]:
    """What a variation paints over the patient's anatomy, in order (patient frame, scaled to the patient)."""
    depots, muscles = _brown_fat_depots(builder), _muscle_groups(builder)
    groups = [depots[name] for name in draws.brown_fat_depots]
    groups += [muscles[name] for name in draws.active_muscle_groups]
    groups += _neck_glands(builder)
    if draws.ureters:
        groups += _ureters(builder, ureter_radius)
    # Each arm fills only air: it never overwrites the trunk or head it touches.
    groups += [_OverPaint(("air",), _arm(builder, side, draws.arms)) for side in _SIDES]
    return groups


def _arm(builder: _AnatomyBuilder, side: float, position: str) -> List[_PaintItem]:
    """One arm (fat, muscle, humerus with yellow marrow, forearm bones), down beside the trunk or up by the head."""
    k, p = builder.k, builder.p
    if position == "down":
        x = side * (float(builder.body.section(0.0)[0]) + 8.0 * k + 45.0 * k)
        shoulder, elbow, wrist = np.array([x, 0, 80 * k]), np.array([x, 0, -200 * k]), np.array([x, -10 * k, -460 * k])
    else:
        shoulder, elbow, wrist = p(side * 150, 5, 90), p(side * 115, 5, 370), p(side * 40, 5, 600)
    fat_mm = 6.0 * builder.obesity * k
    items = []
    for (a, b), radius in (((shoulder, elbow), 45.0 * k), ((elbow, wrist), 35.0 * k)):
        items.append(_PaintItem(TISSUE_ID["fat"], _Tube(a, b, radius), 2 * radius))
        items.append(_PaintItem(TISSUE_ID["muscle"], _Tube(a, b, radius - fat_mm), 2 * radius))
    items.append(_PaintItem(TISSUE_ID["cortical_bone"], _Tube(shoulder, elbow, 11.0 * k), 22.0 * k))
    items.append(_PaintItem(TISSUE_ID["yellow_marrow"], _Tube(shoulder, elbow, 6.5 * k), 13.0 * k))
    for offset in (-12.0 * k, 12.0 * k):  # radius and ulna, one before the other (the forearm lies in an x-z plane)
        beside = np.array([0.0, offset, 0.0])
        items.append(_PaintItem(TISSUE_ID["cortical_bone"], _Tube(elbow + beside, wrist + beside, 7.0 * k), 14.0 * k))
    return items


def _paint_over(tissue: np.ndarray, grid: Grid, shift: np.ndarray, groups: Sequence[_OverPaint], names) -> None:
    """Paint each group's items in order, only over the voxels that held one of its ``over`` tissues before it."""
    axes = _axes(grid, shift)
    thinnest = 0.5 * min(grid.spacing)
    for group in groups:
        lo = np.min([item.shape.lo for item in group.items], axis=0)
        hi = np.max([item.shape.hi for item in group.items], axis=0)
        window = _bbox_slices(axes, lo, hi)
        if window is None:
            continue
        ks, js, is_ = window
        block = tissue[ks, js, is_]
        allowed = _tissue_lut(names, group.over)[block]
        local_axes = (axes[0][is_], axes[1][js], axes[2][ks])
        for item in group.items:
            if item.feature_mm < thinnest:
                continue
            slices = _bbox_slices(local_axes, item.shape.lo, item.shape.hi)
            if slices is None:
                continue
            k2, j2, i2 = slices
            inside = item.shape.contains(
                local_axes[0][i2][None, None, :], local_axes[1][j2][None, :, None], local_axes[2][k2][:, None, None]
            )
            view = block[k2, j2, i2]
            view[np.broadcast_to(inside, view.shape) & allowed[k2, j2, i2]] = item.tissue


def _ct_kernel(hu: np.ndarray, grid: Grid, kernel: float) -> np.ndarray:
    """A reconstruction kernel in-plane: < 0 smooths (Gaussian, sigma -kernel voxels), > 0 sharpens (unsharp mask)."""
    if kernel == 0.0:
        return hu
    sigma_voxels = -kernel if kernel < 0 else 1.0
    variance = [(sigma_voxels * grid.spacing[0]) ** 2, (sigma_voxels * grid.spacing[1]) ** 2, 0.0]
    blurred = sitk.GetArrayFromImage(sitk.DiscreteGaussian(grid.to_sitk(hu), variance, 32, 0.001, True))
    if kernel < 0:
        return blurred.astype(np.float32)
    return (hu + np.float32(kernel) * (hu - blurred)).astype(np.float32)


# --------------------------------------------------------------------------------------------
# Entry point

_BODY_CODE = {"torso": 1, "wholebody": 2}


def make_phantom(config: PhantomConfig) -> PhantomStudy:
    """Generate one synthetic PET/CT patient described by ``config`` (deterministic in it)."""
    streams = np.random.SeedSequence([int(config.seed), _BODY_CODE[config.body], 0x9E7C]).spawn(5)
    anatomy_rng, grid_rng, value_rng, lesion_rng, noise_rng = (np.random.default_rng(s) for s in streams)

    builder = _AnatomyBuilder(anatomy_rng)
    anatomy = builder.build()
    draws = _draw_variation(config, len(anatomy.bowel_ids))
    ct_grid, pet_grid, shift = _make_grids(grid_rng, config, anatomy.scale, draws and _varied_grid_spec(draws))
    values = _draw_tissue_values(value_rng, anatomy.bowel_ids)
    ct_tissue = _paint_tissues(ct_grid, shift, anatomy.items)
    pet_tissue = _paint_tissues(pet_grid, shift, anatomy.items)
    variation_draws: Dict[str, object] = {}
    if draws is not None:
        _apply_variation_values(values, draws, anatomy.bowel_ids)
        ureter_radius = _ureter_radius(draws, pet_grid)
        groups = _variation_paint(builder, draws, ureter_radius)
        _paint_over(ct_tissue, ct_grid, shift, groups, values.names)
        _paint_over(pet_tissue, pet_grid, shift, groups, values.names)
        variation_draws = {**draws.record(), "ureter_painted_radius_mm": round(ureter_radius, 4)}

    if config.n_lesions is None:
        low, high = _DEFAULT_LESION_COUNT[config.body]
        count = int(lesion_rng.integers(low, high + 1))
    else:
        count = int(config.n_lesions)
    placer = _LesionPlacer(lesion_rng, config, anatomy, values, ct_grid, ct_tissue, pet_grid, pet_tissue, shift)
    lesions = placer.place(count)

    fwhm = float(noise_rng.uniform(6.0, 8.0))
    alpha = float(noise_rng.uniform(0.1, 0.2))
    ct_noise = float(noise_rng.uniform(10.0, 20.0))
    kernel = 0.0
    if draws is not None:
        fwhm, alpha, ct_noise, kernel = draws.psf_fwhm_mm, draws.pet_noise_alpha, draws.ct_noise_hu, draws.ct_kernel
    ct_hu = _make_ct(noise_rng, ct_grid, ct_tissue, values, lesions, ct_noise, kernel)
    pet_suv, pet_uptake = _make_pet(noise_rng, pet_grid, pet_tissue, values, lesions, fwhm, alpha)

    return PhantomStudy(
        config=config,
        ct_grid=ct_grid,
        ct_hu=ct_hu,
        ct_lesion_labels=_lesion_labels(ct_grid, lesions),
        pet_grid=pet_grid,
        pet_suv=pet_suv,
        pet_lesion_labels=_lesion_labels(pet_grid, lesions),
        lesions=[lesion for lesion, _ in lesions],
        tissue_names=values.names,
        ct_tissue=ct_tissue,
        pet_tissue=pet_tissue,
        pet_uptake=pet_uptake,
        tissue_hu={name: float(values.hu[i]) for name, i in _named_tissue_ids(draws is not None)},
        tissue_suv={name: float(values.suv[i]) for name, i in _named_tissue_ids(draws is not None)},
        lesion_shapes=[shape for _, shape in lesions],
        psf_fwhm_mm=fwhm,
        pet_noise_alpha=alpha,
        ct_noise_hu=ct_noise,
        variation_draws=variation_draws,
    )


def _draw_variation(config: PhantomConfig, bowel_segments: int) -> Optional[VariationDraws]:
    """The variation's draws from a stream of their own (the default streams stay as they were); None without one."""
    if config.variation is None:
        return None
    name_code = zlib.crc32(config.variation.encode("utf-8"))
    stream = np.random.SeedSequence([int(config.seed), _BODY_CODE[config.body], 0x7A41, name_code])
    return draw_variation(config.variation, np.random.default_rng(stream), config.size, bowel_segments)


def _named_tissue_ids(varied: bool) -> List[Tuple[str, int]]:
    """(name, id) of the tissues the study reports values for: the table's, and a variation's own."""
    named = [(name, index) for index, name in enumerate(TISSUE_NAMES)]
    return named + list(VARIATION_TISSUE_ID.items()) if varied else named
