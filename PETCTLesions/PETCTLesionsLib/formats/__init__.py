"""The file formats a study leaves in: PASCAL VOC boxes, nnU-Net raw datasets and their NIfTI files.

``voc`` reads and writes VOC XML (LabelImg / Lung-PET-CT-Dx) and turns lesion boxes into VOC
annotations and back; ``nnunet`` reads and writes nnU-Net v2 raw datasets (cases, ``dataset.json``,
splits, channel checks); ``nifti`` reads a NIfTI file only when it is whole; ``parallel_gzip``
writes .nii.gz on all cores. Import the submodules directly.
"""
