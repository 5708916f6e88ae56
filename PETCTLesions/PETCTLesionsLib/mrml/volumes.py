"""SimpleITK images <-> Slicer scalar volume nodes, with exact geometry.

SimpleITK (like DICOM) places voxels in LPS; Slicer's IJKToRAS matrix is in RAS. The one
conversion between them is :meth:`PETCTLesionsLib.geometry.Grid.ijk_to_ras`.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import SimpleITK as sitk
import slicer

from ..errors import InputError
from ..geometry import Grid, lps_to_ras_matrix
from .headless import ensure_scene


def volume_node_from_image(
    image: sitk.Image,
    name: str,
    node_class: str = "vtkMRMLScalarVolumeNode",
) -> slicer.vtkMRMLScalarVolumeNode:
    """Add a volume node holding a copy of ``image``'s voxels at ``image``'s position."""
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise ValueError(f"{name}: expected a 3D single-component image")
    ensure_scene()
    grid = Grid.from_sitk(image)
    return slicer.util.addVolumeFromArray(
        sitk.GetArrayViewFromImage(image), ijkToRAS=grid.ijk_to_ras(), name=name, nodeClassName=node_class
    )


def grid_from_volume_node(node: slicer.vtkMRMLVolumeNode) -> Grid:
    """The LPS grid of a volume node (its IJKToRAS matrix and image dimensions)."""
    image_data = node.GetImageData()
    if image_data is None:
        raise InputError(f"volume node {node.GetName()!r} has no voxels")
    ijk_to_ras = np.array(slicer.util.arrayFromVTKMatrix(_ijk_to_ras_vtk(node)))
    ijk_to_lps = lps_to_ras_matrix() @ ijk_to_ras
    axes = ijk_to_lps[:3, :3]
    spacing = np.linalg.norm(axes, axis=0)
    direction = axes / spacing
    return Grid(
        size=tuple(int(d) for d in image_data.GetDimensions()),  # type: ignore[arg-type]
        spacing=tuple(float(s) for s in spacing),  # type: ignore[arg-type]
        origin=tuple(float(o) for o in ijk_to_lps[:3, 3]),  # type: ignore[arg-type]
        direction=tuple(direction.ravel().tolist()),
    )


def image_from_volume_node(node: slicer.vtkMRMLVolumeNode, pixel_type: Optional[int] = None) -> sitk.Image:
    """A SimpleITK image (LPS) with a copy of the node's voxels, optionally cast."""
    if node.GetParentTransformNode() is not None:
        # A transformed volume's voxels are not where its IJKToRAS says; exporting it
        # silently would misplace every lesion.
        raise InputError(f"volume node {node.GetName()!r} is under a transform; harden the transform first")
    grid = grid_from_volume_node(node)
    image = grid.to_sitk(slicer.util.arrayFromVolume(node))  # GetImageFromArray copies the voxels
    if pixel_type is not None and image.GetPixelID() != pixel_type:
        image = sitk.Cast(image, pixel_type)
    return image


def _ijk_to_ras_vtk(node: slicer.vtkMRMLVolumeNode):
    import vtk

    matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    return matrix
