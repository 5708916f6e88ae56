"""Synthetic PET/CT patients with known lesions, for the demo, the tests, the benchmarks and training.

``phantom`` makes a deterministic patient (anatomy, lesions, PET physics) as arrays;
``dicom_writer`` writes it as CT and PET DICOM series; ``synth`` writes a patient in every format
the module reads (DICOM, VOC, nnU-Net) with its truth table. Import the submodules directly.
"""
