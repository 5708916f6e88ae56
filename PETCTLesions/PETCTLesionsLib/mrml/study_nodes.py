"""A PET/CT study as Slicer volume nodes."""

from __future__ import annotations

from typing import TYPE_CHECKING, Tuple

from .volumes import volume_node_from_image

if TYPE_CHECKING:
    import slicer

    from ..phantom import PhantomStudy


def add_phantom_volumes(
    study: PhantomStudy, name_prefix: str
) -> Tuple[slicer.vtkMRMLScalarVolumeNode, slicer.vtkMRMLScalarVolumeNode]:
    """Add a synthetic study's CT (HU, CT grid) and PET (SUVbw, PET grid) as volume nodes."""
    ct_node = volume_node_from_image(study.ct_grid.to_sitk(study.ct_hu), f"{name_prefix} CT")
    pet_node = volume_node_from_image(study.pet_grid.to_sitk(study.pet_suv), f"{name_prefix} PET SUVbw")
    return ct_node, pet_node
