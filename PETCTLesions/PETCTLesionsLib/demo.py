"""The main job on the built-in demo study.

Today: generate the synthetic demo patient, write it as DICOM (NBIA layout), Lung-PET-CT-Dx
VOC boxes and an nnU-Net case, and render fused pictures of its ground-truth lesions.
Detection by the bundled model joins this pipeline when the model lands.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, List, Optional

import numpy as np

from . import nnunet, preview
from .phantom import PhantomConfig, make_phantom
from .synth import DATASET_FOLDER, SyntheticCase, case_seed, voc_boxes_per_slice, write_synthetic_case

ProgressCallback = Callable[[float, str], None]
PICTURE_LESIONS = 3


def run_demo(
    out_dir: Path,
    seed: int = 1,
    size: str = "full",
    overwrite: bool = False,
    progress: Optional[ProgressCallback] = None,
) -> SyntheticCase:
    """Write the demo study and its pictures under ``out_dir``; returns what was written."""
    report = progress or (lambda fraction, message: None)
    out_dir = Path(out_dir)
    report(0.0, f"generating synthetic patient (seed {seed}, {size} size)")
    study = make_phantom(PhantomConfig(seed=case_seed(seed, 0), size=size, body="torso"))
    report(0.3, "writing DICOM, VOC and nnU-Net files")
    case = write_synthetic_case(study, out_dir, "lung", seed, 0, overwrite=overwrite)
    nnunet.update_dataset_json(out_dir / "nnUNet_raw" / DATASET_FOLDER, dataset_name=DATASET_FOLDER)

    report(0.8, "rendering pictures")
    pictures = _render_pictures(study, case, out_dir / "pictures", overwrite)
    report(1.0, "done")
    print(f"Patient {case.patient_id}: {len(study.lesions)} lesion(s)")
    print(f"{'lesion':>6} {'site':<11} {'diam mm':>7} {'SUVmax':>7} {'CT HU':>6}")
    for lesion in study.lesions:
        inside = study.pet_lesion_labels == lesion.label
        suv_max = float(case.pet.stored_values[inside].max())
        print(f"{lesion.label:>6} {lesion.site:<11} {lesion.diameter_mm:>7.1f} {suv_max:>7.2f} {lesion.ct_hu:>6.0f}")
    print(f"DICOM study:  {case.study_dir}")
    print(f"VOC XML:      {len(case.voc_files)} file(s) in {case.voc_files[0].parent if case.voc_files else '-'}")
    print(f"nnU-Net case: {case.nnunet_files['label'].parent.parent}")
    print(f"Pictures:     {', '.join(p.name for p in pictures)} in {out_dir / 'pictures'}")
    return case


def _render_pictures(study, case: SyntheticCase, folder: Path, overwrite: bool) -> List[Path]:
    pet_image = study.pet_grid.to_sitk(case.pet.stored_values.astype(np.float32))
    class_name = case.patient_id.split("-")[-1][0]
    boxes_by_slice = voc_boxes_per_slice(study.ct_lesion_labels, class_name)
    written = []
    for label, k in preview.lesion_slices_by_size(study.ct_lesion_labels, PICTURE_LESIONS):
        pet_slice = preview.pet_on_ct_slice(pet_image, study.ct_grid, k)
        rgb = preview.fused_axial_rgb(study.ct_hu[k], pet_slice, "Mediastinum")
        preview.draw_outline(rgb, study.ct_lesion_labels[k] > 0)
        for box in boxes_by_slice.get(k, []):
            preview.draw_box(rgb, box.to_pixel_ranges())
        lung = preview.fused_axial_rgb(study.ct_hu[k], pet_slice, "Lung", pet_opacity=0.0)
        picture = np.concatenate([rgb, lung], axis=1)
        factor = max(1, 512 // study.ct_grid.size[0])
        written.append(
            preview.write_png(
                folder / f"axial_lesion{label}_slice{k + 1}.png", preview.upscale(picture, factor), overwrite
            )
        )
    mip = preview.coronal_mip_rgb(case.pet.stored_values, study.pet_grid, lesion_labels=study.pet_lesion_labels)
    written.append(preview.write_png(folder / "pet_mip_coronal.png", preview.upscale(mip, 2), overwrite))
    return written
