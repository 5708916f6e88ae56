"""Each hand-written speed-up gives what the plain library call it replaces gives (issue 20).

- The Part 10 header parser (``dicom/part10.py``): :func:`read_slice_header` against
  :func:`read_slice_header_reference` (``pydicom.dcmread(stop_before_pixels=True)``, every value
  converted by pydicom), every field and every header element, on the real Lung-PET-CT-Dx slices,
  the JPEG-LS test slice, Enhanced CT files made from them, and generated CT and PET series of
  several vendors (Siemens, GE's private scan time, Philips' private SUV factors in CNTS),
  character sets and encodings.
- The multi-frame decoder cache (``dicom/frame_cache.py``): each frame of compressed Enhanced CT
  files (made from the real slices and from a generated CT) against a decode of its whole file
  alone; whole series reads against slices decoded without the cache.
- The parallel gzip writer (``formats/parallel_gzip.py``): against SimpleITK's own compression, on
  the real CT, a generated PET in SUV and a label.
- Huge pages (``hugepages.py``): the model's probabilities with and without the tunable.

(The two pydicom value caches, of decoded names in the header scan and of converted SUV tags,
were removed: too little gain for their code; the benchmark numbers are in the docstrings that
replaced them.)
"""

from __future__ import annotations

import dataclasses
import gzip
import os
import subprocess
import sys
import threading
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from conftest import LUNG_DX_CT_SERIES, PYDICOM_3, TEST_DATA, save_bare_dicom, save_dicom
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian, ImplicitVRLittleEndian, RLELossless
from studies import SMALL_STUDY, write_small_study
from test_dicom_series import _enhanced_ct_from

from PETCTLesionsLib.dicom import series
from PETCTLesionsLib.dicom.frame_cache import DecodedFrames, decode_frame
from PETCTLesionsLib.dicom.index import frame_headers, scan_paths
from PETCTLesionsLib.dicom.part10 import read_slice_header, read_slice_header_reference
from PETCTLesionsLib.dicom.series import decode_stored_slice, load_series, read_series_image, series_geometry
from PETCTLesionsLib.formats import parallel_gzip
from PETCTLesionsLib.formats.nifti import read_nifti
from PETCTLesionsLib.hugepages import environment_with_huge_pages, environment_without_huge_pages
from PETCTLesionsLib.study import load_study

LUNG_DX_FILES = sorted(LUNG_DX_CT_SERIES.glob("*.dcm"))
# Six real slices in the cached-frame tests: their reference decodes the whole file for each frame.
FRAMED_LUNG_DX_FILES = LUNG_DX_FILES[:6]
JPEG_LS_FILE = TEST_DATA / "Compressed" / "Lung_Dx-A0001 1-18 JPEG-LS.dcm"


def _rewrite(path: Path, change) -> None:
    ds = pydicom.dcmread(path)
    change(ds)
    save_dicom(ds, path)


def _rewrite_big_endian(path: Path) -> None:
    ds = pydicom.dcmread(path)
    ds.file_meta.TransferSyntaxUID = ExplicitVRBigEndian
    if PYDICOM_3:  # its save_as refuses to change the byte order; dcmwrite changes it
        pydicom.dcmwrite(path, ds, enforce_file_format=True)
    else:
        save_dicom(ds, path)


# --------------------------------------------------------------------------- Part 10 header parser


def _fields(header) -> dict:
    """Every field of a SliceHeader; the kept dataset as its elements' VRs and converted values."""
    fields = {name: value for name, value in vars(header).items() if name != "dataset"}
    fields["dataset"] = None if header.dataset is None else {e.tag: (e.VR, e.value) for e in header.dataset}
    return fields


def _assert_fast_reads_what_the_reference_reads(paths) -> None:
    for path in paths:
        fast, reference = read_slice_header(path), read_slice_header_reference(path)
        assert _fields(fast) == _fields(reference), path


def test_headers_of_the_real_slices_and_the_jpeg_ls_slice():
    _assert_fast_reads_what_the_reference_reads([*LUNG_DX_FILES, JPEG_LS_FILE])
    assert read_slice_header(LUNG_DX_FILES[0]).pixel_data_offset is not None  # the native path was taken
    assert read_slice_header(JPEG_LS_FILE).pixel_data_offset is None


@pytest.mark.parametrize("transfer_syntax", [None, RLELossless, DeflatedExplicitVRLittleEndian])
def test_headers_and_frames_of_an_enhanced_ct_made_from_the_real_slices(tmp_path, transfer_syntax):
    path = tmp_path / "enhanced.dcm"
    _enhanced_ct_from(LUNG_DX_FILES, path, [3, 0, 10, 7, 1, 9, 2, 8, 5, 4, 6])
    if transfer_syntax == DeflatedExplicitVRLittleEndian:
        _rewrite(path, lambda ds: setattr(ds.file_meta, "TransferSyntaxUID", transfer_syntax))
    elif transfer_syntax is not None:
        _rewrite(path, lambda ds: ds.compress(transfer_syntax))

    _assert_fast_reads_what_the_reference_reads([path])
    fast, reference = frame_headers(read_slice_header(path)), frame_headers(read_slice_header_reference(path))
    assert len(fast) == 11 and [_fields(h) for h in fast] == [_fields(h) for h in reference]


def _ge_private_scan_time(ds) -> None:
    ds.private_block(0x0009, "GEMS_PETD_01", create=True).add_new(0x0D, "DT", "20200101093000.00")


def _philips_counts(ds) -> None:
    ds.Units = "CNTS"
    block = ds.private_block(0x7053, "Philips PET Private Group", create=True)
    block.add_new(0x00, "DS", "0.000123")  # SUV scale factor
    block.add_new(0x09, "DS", "3.2")  # Bq/mL scale factor


VENDORS = {
    "siemens": ("SIEMENS", "Müller^Jürgen", None),  # ISO_IR 100
    "ge": ("GE MEDICAL SYSTEMS", "Smith^John", _ge_private_scan_time),
    "philips": ("Philips Medical Systems", "山田^太郎", _philips_counts),  # ISO_IR 192 (UTF-8)
}


@pytest.mark.parametrize("vendor", VENDORS)
def test_headers_of_generated_ct_and_pet_of_several_vendors_and_encodings(tmp_path, vendor):
    manufacturer, name, private = VENDORS[vendor]
    patient = dataclasses.replace(SMALL_STUDY.patient, patient_name=name)
    study = dataclasses.replace(SMALL_STUDY, patient=patient, manufacturer=manufacturer, study_description="Ganzkörper")
    written = write_small_study(tmp_path, study)
    if private is not None:
        for path in written.pet.paths:
            _rewrite(path, private)
    ct = written.ct.paths
    # The other encodings a file may come in: implicit VR, explicit VR big endian, no meta group.
    _rewrite(ct[0], lambda ds: setattr(ds.file_meta, "TransferSyntaxUID", ImplicitVRLittleEndian))
    _rewrite_big_endian(ct[1])
    bare = pydicom.dcmread(ct[2])
    save_bare_dicom(bare, ct[2])

    _assert_fast_reads_what_the_reference_reads([*ct, *written.pet.paths])
    assert read_slice_header(written.pet.paths[0]).patient_name == name
    assert not read_slice_header(ct[2]).part10


# --------------------------------------------------------------------------- multi-frame decoder cache


def _rle_enhanced_ct(slice_paths, path: Path) -> Path:
    _enhanced_ct_from(slice_paths, path, list(range(len(slice_paths)))[::-1])
    _rewrite(path, lambda ds: ds.compress(RLELossless))
    return path


@pytest.fixture(scope="module")
def enhanced_files(tmp_path_factory):
    """Two RLE Enhanced CT files: the real slices, and a generated CT series."""
    folder = tmp_path_factory.mktemp("enhanced")
    written = write_small_study(folder / "study")
    return [
        _rle_enhanced_ct(FRAMED_LUNG_DX_FILES, folder / "lung.dcm"),
        _rle_enhanced_ct(written.ct.paths, folder / "generated.dcm"),
    ]


DECODE_WITH_GDCM = series._decode_with_gdcm  # the real one, also while a test counts its calls


class _CountingDecoder:
    def __init__(self) -> None:
        self.decoded = []
        self.lock = threading.Lock()

    def __call__(self, path: Path) -> sitk.Image:
        with self.lock:
            self.decoded.append(path)
        return DECODE_WITH_GDCM(path)


def test_each_cached_frame_is_the_frame_its_file_gives_decoded_alone(enhanced_files):
    lung, generated = enhanced_files
    decoder = _CountingDecoder()
    frames = DecodedFrames(decoder)
    order = [(lung, 0), (lung, 5), (lung, 2), (generated, 3), (generated, 0), (lung, 4), (lung, 4)]
    for path, index in order:
        np.testing.assert_array_equal(frames.frame(path, index), decode_frame(DECODE_WITH_GDCM, path, index))
    assert decoder.decoded == [lung, generated, lung]  # once per run of frames of one file


def test_a_file_that_fails_is_decoded_once_and_every_frame_reports_it(tmp_path):
    calls = []

    def failing(path: Path) -> sitk.Image:
        calls.append(path)
        raise RuntimeError("GDCM cannot decode it")

    frames = DecodedFrames(failing)
    for index in range(3):
        with pytest.raises(RuntimeError, match="GDCM cannot decode it"):
            frames.frame(tmp_path / "broken.dcm", index)
    assert calls == [tmp_path / "broken.dcm"]


def _image_from_slices_decoded_alone(geometry) -> np.ndarray:
    """The reference: each slice decoded on its own (no cache) and rescaled."""
    return np.stack(
        [decode_stored_slice(h) * h.rescale_slope + h.rescale_intercept for h in geometry.headers]  # no frames
    )


def test_series_reads_at_the_same_time_decode_each_file_once_and_agree_with_the_reference(enhanced_files, monkeypatch):
    decoder = _CountingDecoder()
    monkeypatch.setattr(series, "_decode_with_gdcm", decoder)
    geometries = [series_geometry(scan_paths([path]).series[0]) for path in enhanced_files]
    expected = [_image_from_slices_decoded_alone(geometry) for geometry in geometries]
    decoder.decoded.clear()

    with ThreadPoolExecutor(2) as pool:  # two reads at once: each has its own cache
        images = list(pool.map(lambda geometry: read_series_image(geometry, workers=2), geometries))

    assert sorted(decoder.decoded) == sorted(enhanced_files)
    for image, reference in zip(images, expected):
        np.testing.assert_array_equal(sitk.GetArrayFromImage(image), reference)
    classic = load_series(FRAMED_LUNG_DX_FILES)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(images[0]), sitk.GetArrayFromImage(classic))


# --------------------------------------------------------------------------- parallel gzip writer

SPACING = (2.03125, 1.5, 3.0)  # exactly representable in float32, as NIfTI stores them
ORIGIN = (-200.5, 150.25, -1000.0)
DIRECTION = (0.0, 0.0, 1.0, -1.0, 0.0, 0.0, 0.0, -1.0, 0.0)


def _image(array: np.ndarray) -> sitk.Image:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(SPACING)
    image.SetOrigin(ORIGIN)
    image.SetDirection(DIRECTION)
    return image


@pytest.mark.parametrize("pixel_type", [np.float32, np.int16, np.uint8])
def test_nifti_gz_is_one_gzip_member_holding_exactly_simpleitks_nifti(tmp_path, monkeypatch, pixel_type):
    rng = np.random.default_rng(3)
    image = _image((rng.gamma(2.0, 1.7, size=(30, 40, 50)) * 100).astype(pixel_type))
    sitk.WriteImage(image, str(tmp_path / "reference.nii"), useCompression=False)
    expected = (tmp_path / "reference.nii").read_bytes()
    # Small chunks: many of them, the last one partial, as a 400x400x326 PET in 4 MiB chunks.
    monkeypatch.setattr(parallel_gzip, "_DEFLATE_CHUNK_BYTES", 7001)

    path = parallel_gzip.write_nifti_gz(image, tmp_path / "case_0001.nii.gz")

    data = path.read_bytes()
    stream = zlib.decompressobj(wbits=31)  # exactly one gzip member, nothing after it
    assert stream.decompress(data) == expected
    assert stream.eof and stream.unused_data == b""
    assert gzip.decompress(data) == expected
    back = sitk.ReadImage(str(path))
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(back), sitk.GetArrayViewFromImage(image))
    assert (back.GetSpacing(), back.GetOrigin(), back.GetDirection()) == (SPACING, ORIGIN, DIRECTION)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["case_0001.nii.gz", "reference.nii"]


def test_nifti_gz_of_a_chunk_multiple_and_of_one_chunk(tmp_path, monkeypatch):
    image = _image(np.arange(8 * 16 * 20, dtype=np.float32).reshape(8, 16, 20))
    sitk.WriteImage(image, str(tmp_path / "reference.nii"), useCompression=False)
    expected = (tmp_path / "reference.nii").read_bytes()
    for chunk_bytes in (len(expected) // 4, len(expected), 1 << 30):
        assert len(expected) % 4 == 0
        monkeypatch.setattr(parallel_gzip, "_DEFLATE_CHUNK_BYTES", chunk_bytes)
        path = parallel_gzip.write_nifti_gz(image, tmp_path / f"{chunk_bytes}.nii.gz")
        assert gzip.decompress(path.read_bytes()) == expected


def test_parallel_and_simpleitk_compression_write_the_same_nifti(tmp_path, small_study):
    """The real CT (int16 HU), a generated PET in SUV (float32) and a label (uint8), each written by
    both writers and by the case writer: the same NIfTI bytes inside, the same image read back."""
    loaded = load_study([small_study.root])
    label = sitk.Cast(loaded.pet_suv > 2.0, sitk.sitkUInt8)
    images = {"ct": load_series(LUNG_DX_FILES), "pet": loaded.pet_suv, "label": label}
    together = {tmp_path / f"together_{name}.nii.gz": image for name, image in images.items()}
    parallel_gzip.write_nifti_gz_files(together)
    for name, image in images.items():
        fast = parallel_gzip.write_nifti_gz(image, tmp_path / f"fast_{name}.nii.gz")
        reference = parallel_gzip.write_nifti_gz_reference(image, tmp_path / f"reference_{name}.nii.gz")
        inside = gzip.decompress(reference.read_bytes())
        assert gzip.decompress(fast.read_bytes()) == inside
        assert gzip.decompress((tmp_path / f"together_{name}.nii.gz").read_bytes()) == inside
        back, expected = read_nifti(fast), read_nifti(reference)
        np.testing.assert_array_equal(sitk.GetArrayViewFromImage(back), sitk.GetArrayViewFromImage(image))
        np.testing.assert_array_equal(sitk.GetArrayViewFromImage(back), sitk.GetArrayViewFromImage(expected))
        assert (back.GetSpacing(), back.GetOrigin(), back.GetDirection()) == (
            expected.GetSpacing(),
            expected.GetOrigin(),
            expected.GetDirection(),
        )


# --------------------------------------------------------------------------- huge pages


def test_the_reference_environment_turns_the_tunable_off_and_keeps_the_others():
    off = {"PATH": "/bin", "GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}
    assert environment_without_huge_pages({"PATH": "/bin"}) == off
    tuned = {"GLIBC_TUNABLES": "glibc.malloc.check=3:glibc.malloc.hugetlb=1"}
    assert environment_without_huge_pages(tuned)["GLIBC_TUNABLES"] == "glibc.malloc.check=3:glibc.malloc.hugetlb=0"
    assert environment_with_huge_pages(off) == off  # the restart leaves the reference alone


PROBABILITY_CHILD = """
import os, sys
import numpy as np, torch
from PETCTLesionsLib.model import inference, weights
torch.set_num_threads(2)
rng = np.random.default_rng(4)
shape = (48, 96, 96)
k, j, i = np.indices(shape)
ct = np.where((j - 48) ** 2 + (i - 48) ** 2 < 40**2, 40.0, -1000.0).astype(np.float32)
pet = (np.where(ct > -500, 1.0, 0.0) + rng.gamma(2.0, 0.1, shape)).astype(np.float32)
pet[(k - 24) ** 2 + (j - 40) ** 2 + (i - 50) ** 2 < 25] = 9.0
model = weights.load_model()
result = inference.predict_probability(model.network, ct, pet, (4.0, 4.0, 3.0), device="cpu")
np.save(sys.argv[1], result.probability)
print(os.environ.get("GLIBC_TUNABLES"))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="a glibc (Linux) setting")
@pytest.mark.torch
def test_the_model_gives_the_same_probabilities_with_and_without_huge_pages(tmp_path):
    base = {key: value for key, value in os.environ.items() if key != "GLIBC_TUNABLES"}
    outputs = {}
    for name, environment in (
        ("with", environment_with_huge_pages(base)),
        ("without", environment_without_huge_pages(base)),
    ):
        outputs[name] = tmp_path / f"{name}.npy"
        run = subprocess.run(
            [sys.executable, "-c", PROBABILITY_CHILD, str(outputs[name])],
            env=environment,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert run.returncode == 0, run.stderr
        assert run.stdout.strip() == f"glibc.malloc.hugetlb={1 if name == 'with' else 0}"
    with_pages, without_pages = np.load(outputs["with"]), np.load(outputs["without"])
    assert with_pages.shape == (48, 96, 96) and float(with_pages.max()) > 0.5  # the hot sphere is found
    np.testing.assert_array_equal(with_pages, without_pages)
