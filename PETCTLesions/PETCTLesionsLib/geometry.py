"""Image grids: size, spacing, origin and direction in DICOM/ITK patient coordinates (LPS).

Conventions used throughout PETCTLesionsLib:
- Physical coordinates are LPS millimetres (as DICOM and SimpleITK use); Slicer's RAS is
  reached only through :func:`lps_to_ras_matrix` / :meth:`Grid.ijk_to_ras`.
- ``Grid.size`` is (i, j, k) = (columns, rows, slices), like ``sitk.Image.GetSize()``.
- Voxel arrays are numpy arrays indexed ``[k, j, i]`` (slice, row, column), like
  ``sitk.GetArrayFromImage``.
- ``Grid.direction`` is the 3x3 matrix whose columns are the i, j, k axis directions,
  flattened row-major, like ``sitk.Image.GetDirection()``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence, Tuple

import numpy as np
import SimpleITK as sitk

Vector3 = Tuple[float, float, float]
IDENTITY_DIRECTION: Tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)


@dataclass(frozen=True)
class Grid:
    """A regular voxel grid placed in LPS patient space."""

    size: Tuple[int, int, int]
    spacing: Vector3
    origin: Vector3
    direction: Tuple[float, ...] = IDENTITY_DIRECTION

    def __post_init__(self) -> None:
        if len(self.size) != 3 or min(self.size) < 1:
            raise ValueError(f"Grid size must be three positive integers, got {self.size}")
        if len(self.spacing) != 3 or min(self.spacing) <= 0:
            raise ValueError(f"Grid spacing must be three positive numbers, got {self.spacing}")
        if len(self.direction) != 9:
            raise ValueError("Grid direction must have 9 elements (3x3 row-major)")

    @property
    def shape(self) -> Tuple[int, int, int]:
        """numpy array shape (k, j, i) of a volume on this grid."""
        return (self.size[2], self.size[1], self.size[0])

    @property
    def direction_matrix(self) -> np.ndarray:
        return np.asarray(self.direction, dtype=float).reshape(3, 3)

    @property
    def is_axis_aligned(self) -> bool:
        return bool(np.allclose(self.direction_matrix, np.eye(3)))

    def ijk_to_lps(self) -> np.ndarray:
        """4x4 homogeneous matrix from (i, j, k) voxel indices to LPS millimetres."""
        matrix = np.eye(4)
        matrix[:3, :3] = self.direction_matrix @ np.diag(self.spacing)
        matrix[:3, 3] = self.origin
        return matrix

    def ijk_to_ras(self) -> np.ndarray:
        """4x4 matrix from (i, j, k) to Slicer's RAS millimetres."""
        return lps_to_ras_matrix() @ self.ijk_to_lps()

    def index_to_lps(self, ijk: Sequence[float]) -> np.ndarray:
        """LPS point(s) of voxel index/indices given as (..., 3) in (i, j, k) order."""
        ijk = np.asarray(ijk, dtype=float)
        m = self.ijk_to_lps()
        return ijk @ m[:3, :3].T + m[:3, 3]

    def lps_to_index(self, lps: Sequence[float]) -> np.ndarray:
        """Continuous (i, j, k) index of LPS point(s) given as (..., 3)."""
        lps = np.asarray(lps, dtype=float)
        m = np.linalg.inv(self.ijk_to_lps())
        return lps @ m[:3, :3].T + m[:3, 3]

    def sub_grid(self, low_ijk: Sequence[int], high_ijk: Sequence[int]) -> Grid:
        """Voxels ``low_ijk`` (inclusive) to ``high_ijk`` (exclusive) as a grid of their own, e.g. one slice."""
        origin = self.index_to_lps([float(v) for v in low_ijk])
        size = tuple(int(high) - int(low) for low, high in zip(low_ijk, high_ijk))
        return Grid(size, self.spacing, tuple(float(v) for v in origin), self.direction)

    def axis_coordinates(self) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """LPS x, y, z coordinates of voxel centres along each axis (axis-aligned grids only)."""
        if not self.is_axis_aligned:
            raise ValueError("axis_coordinates() needs an axis-aligned grid")
        return tuple(  # type: ignore[return-value]
            self.origin[a] + self.spacing[a] * np.arange(self.size[a]) for a in range(3)
        )

    def extent_lps(self) -> Tuple[np.ndarray, np.ndarray]:
        """Axis-aligned bounding box (min, max) of the voxel centres in LPS."""
        corners = np.array(
            [[i, j, k] for i in (0, self.size[0] - 1) for j in (0, self.size[1] - 1) for k in (0, self.size[2] - 1)],
            dtype=float,
        )
        points = self.index_to_lps(corners)
        return points.min(axis=0), points.max(axis=0)

    @property
    def voxel_volume_ml(self) -> float:
        return float(np.prod(self.spacing)) / 1000.0

    def to_sitk(self, array: np.ndarray) -> sitk.Image:
        """SimpleITK image of ``array`` (indexed [k, j, i]) placed on this grid."""
        if tuple(array.shape) != self.shape:
            raise ValueError(f"array shape {array.shape} does not match grid shape {self.shape}")
        image = sitk.GetImageFromArray(array)
        self.apply_to(image)
        return image

    def apply_to(self, image: sitk.Image) -> None:
        image.SetSpacing(tuple(float(s) for s in self.spacing))
        image.SetOrigin(tuple(float(o) for o in self.origin))
        image.SetDirection(tuple(float(d) for d in self.direction))

    @classmethod
    def from_sitk(cls, image: sitk.Image) -> Grid:
        return cls(
            size=tuple(int(s) for s in image.GetSize()),  # type: ignore[arg-type]
            spacing=tuple(float(s) for s in image.GetSpacing()),  # type: ignore[arg-type]
            origin=tuple(float(o) for o in image.GetOrigin()),  # type: ignore[arg-type]
            direction=tuple(float(d) for d in image.GetDirection()),
        )

    def same_as(self, other: Grid, tolerance_mm: float = 1e-4) -> bool:
        """True when both grids place every voxel at the same point (within tolerance)."""
        return (
            self.size == other.size
            and np.allclose(self.spacing, other.spacing, atol=tolerance_mm)
            and np.allclose(self.origin, other.origin, atol=tolerance_mm)
            and np.allclose(self.direction, other.direction, atol=1e-6)
        )

    def describe(self) -> str:
        """Size, spacing and origin in words, for messages."""
        size = "x".join(str(n) for n in self.size)
        spacing = "x".join(f"{s:.4g}" for s in self.spacing)
        origin = ", ".join(f"{o:.2f}" for o in self.origin)
        return f"{size} voxels of {spacing} mm at ({origin}) LPS"


def lps_to_ras_matrix() -> np.ndarray:
    """4x4 matrix flipping the first two axes (LPS <-> RAS; it is its own inverse)."""
    return np.diag([-1.0, -1.0, 1.0, 1.0])


def lps_to_ras(point: Sequence[float]) -> Vector3:
    """A point in LPS millimetres as RAS (Slicer's scene coordinates)."""
    return (-float(point[0]), -float(point[1]), float(point[2]))


def direction_from_dicom_orientation(image_orientation_patient: Sequence[float]) -> Tuple[float, ...]:
    """Grid direction (columns i, j, k) from DICOM ImageOrientationPatient (row, column cosines).

    The slice axis is the right-handed normal row x column; callers that stack slices
    along the opposite direction must flip k themselves.
    """
    row = np.asarray(image_orientation_patient[:3], dtype=float)
    col = np.asarray(image_orientation_patient[3:6], dtype=float)
    normal = np.cross(row, col)
    return tuple(np.column_stack([row, col, normal]).ravel().tolist())
