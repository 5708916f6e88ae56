"""One DICOM series becomes one SimpleITK image with the geometry and voxels of what was written:
the real Lung-PET-CT-Dx CT matches SimpleITK's own reader; synthetic series (dicom_writer) come
back on their Grid, oblique too, whatever the file order; gaps, uneven spacing, mixed
orientations, duplicates, multi-frame and undecodable transfer syntaxes are handled by the
documented policy with messages that name the files."""

from __future__ import annotations

import datetime
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from conftest import HTJ2K_LOSSLESS, LUNG_DX_CT_SERIES, LUNG_DX_ROOT, PYDICOM_3, save_dicom
from pydicom.uid import DeflatedExplicitVRLittleEndian, JPEG2000Lossless, JPEGLosslessSV1, JPEGLSLossless, RLELossless
from studies import oblique_direction, study_info

from PETCTLesionsLib.dicom.index import scan_paths
from PETCTLesionsLib.dicom.part10 import read_slice_header
from PETCTLesionsLib.dicom.series import (
    DicomSeriesError,
    MissingSlicesError,
    UnsupportedPixelDataError,
    load_series,
    read_series_image,
    series_geometry,
)
from PETCTLesionsLib.dicom.suv import suv_bw_factors
from PETCTLesionsLib.geometry import Grid
from PETCTLesionsLib.info import info_report
from PETCTLesionsLib.synthetic.dicom_writer import (
    PatientInfo,
    PetAcquisition,
    make_uid,
    write_ct_series,
    write_pet_series,
)

LUNG_DX_CT = LUNG_DX_CT_SERIES
CT_GRID = Grid(size=(40, 32, 12), spacing=(0.8417, 0.9123, 3.27), origin=(-120.53, -88.241, -301.7))
PET_GRID = Grid(size=(24, 20, 10), spacing=(4.0728, 4.0728, 2.027), origin=(-48.83, -40.71, -280.35))
PATIENT = PatientInfo("SER-0001", "Series^Test", "M", 55, 80.0)
STUDY = study_info("series test", PATIENT, datetime.datetime(2022, 1, 2, 8, 30), "series test")
ACQUISITION = PetAcquisition(3.0e8, datetime.datetime(2022, 1, 2, 7, 20), datetime.datetime(2022, 1, 2, 8, 25, 30))


def _hu(grid: Grid, high: int = 3071) -> np.ndarray:
    return np.random.default_rng(11).integers(-1024, high, size=grid.shape).astype(np.int32)


def _write_ct(folder: Path, grid: Grid = CT_GRID, hu: np.ndarray = None):
    hu = _hu(grid) if hu is None else hu
    return hu, write_ct_series(hu, grid, STUDY, folder)


def _series(paths) -> object:
    scan = scan_paths(paths)
    assert len(scan.series) == 1, [s.label for s in scan.series]
    return scan.series[0]


def _read(paths, **kwargs) -> sitk.Image:
    return read_series_image(series_geometry(_series(paths), **kwargs))


def _rewrite(path: Path, change) -> None:
    ds = pydicom.dcmread(path)
    change(ds)
    save_dicom(ds, path)


def test_real_lung_dx_ct_equals_simpleitk_series_reader():
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(LUNG_DX_CT)))
    expected = reader.Execute()

    image = load_series([LUNG_DX_CT])

    assert image.GetSize() == expected.GetSize() == (512, 512, 11)
    assert image.GetSpacing() == pytest.approx(expected.GetSpacing(), abs=1e-9)
    assert image.GetSpacing() == pytest.approx((0.841796875, 0.841796875, 5.0), abs=1e-12)
    assert image.GetOrigin() == pytest.approx(expected.GetOrigin(), abs=1e-9)
    assert image.GetDirection() == pytest.approx(expected.GetDirection(), abs=1e-12)
    assert image.GetPixelID() == sitk.sitkInt16  # slope 1, intercept -1024, 12 bits stored: HU fit int16
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), sitk.GetArrayFromImage(expected))


def test_native_pixel_offset_reads_the_same_bytes_as_pydicom():
    for path in (LUNG_DX_CT / "1-13.dcm", LUNG_DX_CT / "1-23.dcm"):  # implicit VR little endian
        header = read_slice_header(path)
        assert header.transfer_syntax == pydicom.uid.ImplicitVRLittleEndian
        with open(path, "rb") as handle:
            handle.seek(header.pixel_data_offset)
            raw = np.frombuffer(handle.read(header.pixel_data_length), dtype="<u2").reshape(512, 512)
        np.testing.assert_array_equal(raw, pydicom.dcmread(path).pixel_array)


@pytest.mark.parametrize("direction", [None, oblique_direction(23.0)], ids=["axial", "oblique"])
def test_synthetic_ct_comes_back_on_its_grid_with_exact_hu(tmp_path, direction):
    grid = CT_GRID if direction is None else Grid(CT_GRID.size, CT_GRID.spacing, CT_GRID.origin, direction)
    hu, _ = _write_ct(tmp_path / "ct", grid)

    image = _read([tmp_path / "ct"])

    assert Grid.from_sitk(image).same_as(grid, tolerance_mm=1e-6)
    assert image.GetPixelID() == sitk.sitkInt16
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), hu)


def test_file_order_and_names_do_not_matter(tmp_path):
    hu, written = _write_ct(tmp_path / "ct")
    shuffled = tmp_path / "flat  folder with spaces"
    shuffled.mkdir()
    order = np.random.default_rng(3).permutation(len(written.paths))
    for rank, index in enumerate(order):
        shutil.copy(written.paths[index], shuffled / f"{rank * 7919 % 1000:03d} x {index}.bin")

    image = _read([shuffled])

    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), hu)
    assert Grid.from_sitk(image).same_as(CT_GRID, tolerance_mm=1e-6)


def test_pet_per_slice_slopes_and_suv_factors_give_the_written_suv(tmp_path):
    suv = np.random.default_rng(4).gamma(2.0, 1.0, size=PET_GRID.shape)
    suv *= np.linspace(0.5, 6.0, PET_GRID.size[2])[:, None, None]
    written = write_pet_series(suv, PET_GRID, STUDY, ACQUISITION, tmp_path / "pt")
    geometry = series_geometry(_series([tmp_path / "pt"]))
    slopes = {h.rescale_slope for h in geometry.headers}
    assert len(slopes) == PET_GRID.size[2]  # every slice its own slope
    factors = suv_bw_factors([h.dataset for h in geometry.headers]).factors

    image = read_series_image(geometry, slice_scale=factors, integer_output=False)

    assert image.GetPixelID() == sitk.sitkFloat32
    values = sitk.GetArrayFromImage(image)
    relative = np.abs(values - written.stored_values) / np.abs(written.stored_values).max(axis=(1, 2))[:, None, None]
    assert relative.max() < 1e-6


def test_single_pet_file_uses_spacing_between_slices(tmp_path):
    suv = np.random.default_rng(8).gamma(2.0, 1.0, size=PET_GRID.shape)
    written = write_pet_series(suv, PET_GRID, STUDY, ACQUISITION, tmp_path / "pt")
    k = 4
    series = _series([written.paths[k]])
    geometry = series_geometry(series)
    factors = suv_bw_factors([h.dataset for h in geometry.headers]).factors

    image = read_series_image(geometry, slice_scale=factors)

    assert image.GetSize() == (24, 20, 1)
    assert image.GetSpacing() == pytest.approx((4.0728, 4.0728, 2.027), abs=1e-9)
    assert image.GetOrigin() == pytest.approx(tuple(PET_GRID.index_to_lps((0, 0, k))), abs=1e-6)
    np.testing.assert_allclose(sitk.GetArrayFromImage(image)[0], written.stored_values[k], rtol=1e-6)
    assert geometry.warnings == []


def test_missing_slice_is_refused_with_positions_unless_gaps_are_allowed(tmp_path):
    hu, written = _write_ct(tmp_path / "ct")
    written.paths[5].unlink()
    z4, z6 = (CT_GRID.index_to_lps((0, 0, k))[2] for k in (4, 6))

    with pytest.raises(MissingSlicesError) as refused:
        series_geometry(_series([tmp_path / "ct"]))
    message = str(refused.value)
    assert f"1 slice missing between z={z4:.2f} and z={z6:.2f} mm" in message
    assert written.paths[4].name in message and written.paths[6].name in message

    geometry = series_geometry(_series([tmp_path / "ct"]), allow_gaps=True)
    assert geometry.resampled and len(geometry.gaps) == 1 and geometry.gaps[0].missing == 1
    assert "interpolated across the gap" in geometry.warnings[0]
    image = read_series_image(geometry)
    assert Grid.from_sitk(image).same_as(CT_GRID, tolerance_mm=1e-6)
    values = sitk.GetArrayFromImage(image)
    np.testing.assert_array_equal(values[[0, 1, 2, 3, 4, 6, 7]], hu[[0, 1, 2, 3, 4, 6, 7]])
    np.testing.assert_allclose(values[5], 0.5 * hu[4] + 0.5 * hu[6], atol=1e-3)


def test_uneven_spacing_is_resampled_to_the_median_with_a_warning(tmp_path):
    hu, written = _write_ct(tmp_path / "ct")
    k = 7
    moved_z = CT_GRID.index_to_lps((0, 0, k))[2] + 1.0

    def move(ds):
        x, y, _ = (float(v) for v in ds.ImagePositionPatient)
        ds.ImagePositionPatient = [x, y, round(moved_z, 6)]

    _rewrite(written.paths[k], move)

    geometry = series_geometry(_series([tmp_path / "ct"]))
    image = read_series_image(geometry)

    assert geometry.resampled and geometry.gaps == []
    assert "slice spacing varies from 2.270 to 4.270 mm (median 3.270 mm)" in geometry.warnings[0]
    assert Grid.from_sitk(image).same_as(CT_GRID, tolerance_mm=1e-6)
    assert image.GetPixelID() == sitk.sitkFloat32
    values = sitk.GetArrayFromImage(image)
    unchanged = [i for i in range(12) if i != k]
    np.testing.assert_allclose(values[unchanged], hu[unchanged], atol=1e-3)
    weight = 3.27 / 4.27  # target z_k lies 3.27 mm above slice k-1 and 1 mm below the moved slice
    np.testing.assert_allclose(values[k], (1 - weight) * hu[k - 1] + weight * hu[k], atol=2e-3)


def test_small_spacing_jitter_is_uniform(tmp_path):
    _, written = _write_ct(tmp_path / "ct")

    def jitter(ds):
        x, y, z = (float(v) for v in ds.ImagePositionPatient)
        ds.ImagePositionPatient = [x, y, z + 0.005]

    _rewrite(written.paths[3], jitter)
    geometry = series_geometry(_series([tmp_path / "ct"]))
    assert not geometry.resampled and geometry.warnings == []
    assert geometry.grid.spacing[2] == pytest.approx(3.27, abs=1e-9)


def test_mixed_orientations_are_refused_naming_both_files(tmp_path):
    _, written = _write_ct(tmp_path / "ct")
    _rewrite(written.paths[2], lambda ds: setattr(ds, "ImageOrientationPatient", [1, 0, 0, 0, 0.99955, 0.03]))

    with pytest.raises(DicomSeriesError, match="slices have different orientations") as refused:
        series_geometry(_series([tmp_path / "ct"]))
    assert str(written.paths[2]) in str(refused.value)


def test_two_instances_at_one_position_are_refused_and_identical_copies_dropped(tmp_path):
    hu, written = _write_ct(tmp_path / "ct")
    copy_folder = tmp_path / "copies"
    copy_folder.mkdir()
    shutil.copy(written.paths[3], copy_folder / "same instance.dcm")
    series = _series([tmp_path / "ct", copy_folder])
    # The copy kept is the first by path ("copies/..." sorts before "ct/...").
    assert len(series.headers) == 12 and series.duplicates == [(written.paths[3], copy_folder / "same instance.dcm")]
    np.testing.assert_array_equal(sitk.GetArrayFromImage(read_series_image(series_geometry(series))), hu)

    other = copy_folder / "other instance.dcm"
    shutil.copy(written.paths[3], other)
    _rewrite(other, lambda ds: setattr(ds, "SOPInstanceUID", make_uid("another instance")))
    with pytest.raises(DicomSeriesError, match="two different slices at the same position") as refused:
        series_geometry(_series([tmp_path / "ct", other]))
    assert str(other) in str(refused.value) and str(written.paths[3]) in str(refused.value)


def test_values_beyond_int16_turn_the_image_to_float32(tmp_path):
    hu = _hu(CT_GRID)
    hu[9, 3, 4] = 40000  # above int16; the writer stores up to 64511 HU
    _write_ct(tmp_path / "ct", hu=hu)

    image = _read([tmp_path / "ct"])

    assert image.GetPixelID() == sitk.sitkFloat32
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), hu.astype(np.float32))


def test_rle_lossless_is_decoded(tmp_path):
    hu, written = _write_ct(tmp_path / "ct")
    for path in written.paths[::2]:
        _rewrite(path, lambda ds: ds.compress(RLELossless))
    assert read_slice_header(written.paths[0]).pixel_data_offset is None  # not the native fast path

    np.testing.assert_array_equal(sitk.GetArrayFromImage(_read([tmp_path / "ct"])), hu)


def _deflate(ds) -> None:
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian


def test_deflated_series_is_decoded_by_pydicom(tmp_path):
    """Deflated Explicit VR Little Endian is read by pydicom, not GDCM: on pydicom 2.4 as on 3."""
    hu, written = _write_ct(tmp_path / "ct")
    for path in written.paths:
        _rewrite(path, _deflate)
    header = read_slice_header(written.paths[0])
    assert header.pixel_data_offset is None and header.transfer_syntax == DeflatedExplicitVRLittleEndian

    np.testing.assert_array_equal(sitk.GetArrayFromImage(_read([tmp_path / "ct"])), hu)


def _compress_with_gdcm(path: Path, compressor: str) -> None:
    """Encode the slice's stored values with GDCM's own encoder (SimpleITK) and put that frame,
    with the pixel description GDCM wrote for it, into the file; everything else (rescale,
    geometry, SUV attributes) stays as it was."""
    ds = pydicom.dcmread(path)
    encoded_path = path.with_name(path.name + ".gdcm.dcm")
    writer = sitk.ImageFileWriter()
    writer.SetImageIO("GDCMImageIO")
    writer.SetFileName(str(encoded_path))
    writer.UseCompressionOn()
    writer.SetCompressor(compressor)
    writer.Execute(sitk.GetImageFromArray(ds.pixel_array[np.newaxis]))
    encoded = pydicom.dcmread(encoded_path)
    encoded_path.unlink()
    ds.file_meta.TransferSyntaxUID = encoded.file_meta.TransferSyntaxUID
    for keyword in ("BitsAllocated", "BitsStored", "HighBit", "PixelRepresentation"):
        setattr(ds, keyword, getattr(encoded, keyword))
    ds.PixelData = encoded.PixelData
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    save_dicom(ds, path)


@pytest.mark.parametrize(
    "compressor, transfer_syntax", [("JPEG", JPEGLosslessSV1), ("JPEG2000", JPEG2000Lossless)], ids=["jpeg", "j2k"]
)
def test_real_ct_compressed_reads_as_the_uncompressed_series(tmp_path, compressor, transfer_syntax):
    """JPEG Lossless is what PACS exports of CT usually are; pydicom alone has no decoder for it."""
    copied = tmp_path / "ct"
    shutil.copytree(LUNG_DX_CT, copied)
    compressed = sorted(copied.glob("*.dcm"))[::2]
    for path in compressed:
        _compress_with_gdcm(path, compressor)
    assert all(pydicom.dcmread(path).file_meta.TransferSyntaxUID == transfer_syntax for path in compressed)
    assert read_slice_header(compressed[0]).pixel_data_offset is None  # not the native fast path

    image = _read([copied])
    expected = load_series([LUNG_DX_CT])

    assert image.GetPixelID() == expected.GetPixelID() == sitk.sitkInt16
    assert (image.GetOrigin(), image.GetSpacing()) == (expected.GetOrigin(), expected.GetSpacing())
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), sitk.GetArrayFromImage(expected))


def test_real_ct_slice_in_jpeg_ls_reads_as_the_uncompressed_slice():
    """Lung_Dx-A0001 1-18.dcm, JPEG-LS encoded by pydicom with pyjpegls (SimpleITK has no JPEG-LS
    encoder) and kept in Testing/Data; no JPEG-LS decoder is installed for pydicom here."""
    path = LUNG_DX_ROOT.parent / "Compressed" / "Lung_Dx-A0001 1-18 JPEG-LS.dcm"
    assert pydicom.dcmread(path).file_meta.TransferSyntaxUID == JPEGLSLossless

    image = load_series([path])
    original = load_series([LUNG_DX_CT / "1-18.dcm"])

    assert image.GetPixelID() == sitk.sitkInt16 and image.GetOrigin() == original.GetOrigin()
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), sitk.GetArrayFromImage(original))
    assert int(sitk.GetArrayFromImage(image).max()) > 1000  # a real slice (bone), not an empty one


def test_jpeg_lossless_pet_gives_the_written_suv_with_its_per_slice_slopes(tmp_path):
    suv = np.random.default_rng(6).gamma(2.0, 1.0, size=PET_GRID.shape)
    suv *= np.linspace(0.5, 6.0, PET_GRID.size[2])[:, None, None]
    written = write_pet_series(suv, PET_GRID, STUDY, ACQUISITION, tmp_path / "pt")
    for path in written.paths:
        _compress_with_gdcm(path, "JPEG")
    geometry = series_geometry(_series([tmp_path / "pt"]))
    assert len({h.rescale_slope for h in geometry.headers}) == PET_GRID.size[2]
    factors = suv_bw_factors([h.dataset for h in geometry.headers]).factors

    values = sitk.GetArrayFromImage(read_series_image(geometry, slice_scale=factors, integer_output=False))

    relative = np.abs(values - written.stored_values) / np.abs(written.stored_values).max(axis=(1, 2))[:, None, None]
    assert relative.max() < 1e-6


MPEG2_MAIN_PROFILE = "1.2.840.10008.1.2.4.100"  # a transfer syntax pydicom 2.4 knows, as long as HTJ2K's


def _declare_compressed(path: Path, transfer_syntax: str) -> None:
    """Claim a compressed transfer syntax, with encapsulated junk as the 'compressed' frame.

    pydicom 2.4 writes no transfer syntax it does not know (HTJ2K): the file is then written as
    MPEG2, whose UID has the same even length, and that UID replaced in the file's bytes."""
    written_as = transfer_syntax if pydicom.uid.UID(transfer_syntax).is_transfer_syntax else MPEG2_MAIN_PROFILE

    def change(ds):
        ds.file_meta.TransferSyntaxUID = written_as
        ds.PixelData = pydicom.encaps.encapsulate([b"\xff\xd8not really compressed\xff\xd9"])
        ds["PixelData"].VR = "OB"
        ds["PixelData"].is_undefined_length = True

    _rewrite(path, change)
    if written_as != transfer_syntax:
        padded, wanted = written_as.encode() + b"\0", transfer_syntax.encode() + b"\0"
        assert len(padded) == len(wanted) and path.read_bytes().count(padded) == 1
        path.write_bytes(path.read_bytes().replace(padded, wanted))


def test_corrupt_compressed_frame_names_the_file_and_the_transfer_syntax(tmp_path):
    _, written = _write_ct(tmp_path / "ct")
    _declare_compressed(written.paths[6], JPEGLSLossless)

    with pytest.raises(DicomSeriesError, match="cannot decode the pixel data") as refused:
        _read([tmp_path / "ct"])

    assert str(written.paths[6]) in str(refused.value) and JPEGLSLossless.name in str(refused.value)


def test_compressed_data_without_a_usable_decoder_give_a_clear_message(tmp_path):
    """High-Throughput JPEG 2000: GDCM has no codec for it, pydicom only with pylibjpeg-openjpeg."""
    _, written = _write_ct(tmp_path / "ct")
    _declare_compressed(written.paths[6], HTJ2K_LOSSLESS)
    geometry = series_geometry(_series([tmp_path / "ct"]))
    # pydicom 2.4 (Slicer 5.6-5.10) has no HTJ2K decoder at all; pydicom 3 with pylibjpeg-openjpeg.
    decodable = PYDICOM_3 and pydicom.pixels.get_decoder(HTJ2K_LOSSLESS).is_available

    with pytest.raises(DicomSeriesError) as refused:
        read_series_image(geometry)

    message = str(refused.value)
    assert str(written.paths[6]) in message and HTJ2K_LOSSLESS.name in message
    # info says so before any load is tried.
    (ct_entry,) = info_report([tmp_path / "ct"])["studies"][0]["series"]
    if not decodable:
        assert ct_entry["error"] == message
    if decodable:  # pylibjpeg-openjpeg installed: the junk frame itself fails
        assert "cannot decode the pixel data" in message
    elif PYDICOM_3:
        assert isinstance(refused.value, UnsupportedPixelDataError)
        assert "no installed package decodes them; install one of:" in message
    else:
        assert isinstance(refused.value, UnsupportedPixelDataError)
        expected_end = (
            f"pydicom has no decoder for it (pydicom {pydicom.__version__}); pydicom 3 with pylibjpeg-openjpeg"
        )
        assert message.endswith(f": {expected_end} decodes it")


def test_multi_frame_is_refused_as_not_supported_yet(tmp_path):
    _, written = _write_ct(tmp_path / "ct")
    _rewrite(written.paths[0], lambda ds: setattr(ds, "NumberOfFrames", 2))

    with pytest.raises(UnsupportedPixelDataError, match="multi-frame .* not supported yet") as refused:
        series_geometry(_series([tmp_path / "ct"]))
    assert str(written.paths[0]) in str(refused.value)


def test_signed_values_with_unused_high_bits_are_sign_extended(tmp_path):
    _, written = _write_ct(tmp_path / "ct", hu=np.zeros(CT_GRID.shape, dtype=np.int32))
    stored = np.full((32, 40), -5, dtype="<i2")
    stored[0, 0] = 0x0123 | 0x7000  # bits above BitsStored (12) set: garbage pydicom and GDCM discard

    def signed12(ds):
        ds.PixelRepresentation, ds.BitsStored, ds.HighBit = 1, 12, 11
        ds.RescaleIntercept = "0"
        ds.PixelData = stored.tobytes()

    _rewrite(written.paths[0], signed12)
    header = read_slice_header(written.paths[0])
    image = read_series_image(series_geometry([header]))

    expected = stored.copy()
    expected[0, 0] = 0x0123
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image)[0], expected)
    if PYDICOM_3:  # pydicom 2.4 keeps the unused bits
        np.testing.assert_array_equal(pydicom.dcmread(written.paths[0]).pixel_array, expected)


# --------------------------------------------------------------------------- fast paths (issue 3)


def _header_fields(header) -> dict:
    fields = {name: value for name, value in vars(header).items() if name != "dataset"}
    if header.dataset is not None:
        fields["dataset"] = {element.tag: (element.VR, element.value) for element in header.dataset}
    return fields


def test_native_header_fast_path_reads_what_dcmread_reads(tmp_path, monkeypatch):
    from PETCTLesionsLib.dicom import part10

    write_pet_series(np.ones(PET_GRID.shape), PET_GRID, STUDY, ACQUISITION, tmp_path / "pt")
    _write_ct(tmp_path / "ct")
    paths = [LUNG_DX_CT / "1-13.dcm", sorted((tmp_path / "ct").iterdir())[1], *sorted((tmp_path / "pt").iterdir())[:2]]
    fast = [read_slice_header(path) for path in paths]
    monkeypatch.setattr(part10, "_read_native_part10", lambda data, buffer: None)
    general = [read_slice_header(path) for path in paths]

    syntaxes = [pydicom.uid.ImplicitVRLittleEndian, pydicom.uid.ExplicitVRLittleEndian]
    assert [h.transfer_syntax for h in fast[:2]] == syntaxes
    for quick, reference in zip(fast, general):
        assert _header_fields(quick) == _header_fields(reference)


def test_int16_read_in_place_wraps_a_large_intercept_exactly(tmp_path):
    hu, _ = _write_ct(tmp_path / "ct")
    shift = 38976  # stored values near 40000 with intercept -40000: the same HU through 16-bit wrap-around

    def shifted(ds):
        stored = ds.pixel_array.astype(np.int64) + shift
        ds.PixelData = stored.astype(np.uint16).tobytes()
        ds.RescaleIntercept = int(ds.RescaleIntercept) - shift

    for path in (tmp_path / "ct").iterdir():
        _rewrite(path, shifted)

    image = _read([tmp_path / "ct"])

    assert image.GetPixelID() == sitk.sitkInt16
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), hu)


def _pet_headers(folder: Path):
    return series_geometry(_series([folder])).headers


def test_suv_factors_from_scanned_headers_equal_fully_converted_datasets(tmp_path):
    suv = np.random.default_rng(5).gamma(2.0, 1.0, size=PET_GRID.shape)
    write_pet_series(suv, PET_GRID, STUDY, ACQUISITION, tmp_path / "pt")
    headers = _pet_headers(tmp_path / "pt")
    converted = [pydicom.dcmread(h.path, stop_before_pixels=True) for h in headers]
    for ds in converted:
        [element.value for element in ds.iterall()]  # converted up front: nothing left to share

    shared = suv_bw_factors([h.dataset for h in headers])
    direct = suv_bw_factors(converted)

    np.testing.assert_array_equal(shared.factors, direct.factors)
    assert (shared.decay_time_s, shared.weight_kg, shared.reference_time) == (
        direct.decay_time_s,
        direct.weight_kg,
        direct.reference_time,
    )


@pytest.mark.parametrize("what", ["PatientWeight", "RadionuclideTotalDose"])
def test_a_series_value_differing_on_one_slice_is_refused_naming_that_file(tmp_path, what):
    from PETCTLesionsLib.dicom.suv import SUVError

    write_pet_series(np.ones(PET_GRID.shape), PET_GRID, STUDY, ACQUISITION, tmp_path / "pt")
    odd = sorted((tmp_path / "pt").iterdir())[3]

    def change(ds):
        holder = ds if what == "PatientWeight" else ds.RadiopharmaceuticalInformationSequence[0]
        setattr(holder, what, float(getattr(holder, what)) * 1.1)

    _rewrite(odd, change)
    headers = _pet_headers(tmp_path / "pt")

    with pytest.raises(SUVError, match="one series must have one value") as error:
        suv_bw_factors([h.dataset for h in headers])
    assert str(odd) in str(error.value) and what in str(error.value)


def _enhanced_ct_from(slice_paths, path: Path, frame_order) -> None:
    """One Enhanced CT file holding the given classic CT slices as frames, in ``frame_order``:
    geometry and rescale in the functional groups (shared: orientation, spacing, rescale;
    per frame: position), as scanners write them."""
    slices = [pydicom.dcmread(p) for p in slice_paths]
    first = slices[0]
    ds = pydicom.Dataset()
    for keyword in (
        "PatientID", "PatientName", "StudyInstanceUID", "SeriesInstanceUID", "StudyDate", "Modality",
        "FrameOfReferenceUID", "SeriesNumber", "Rows", "Columns", "SamplesPerPixel", "PhotometricInterpretation",
        "BitsAllocated", "BitsStored", "HighBit", "PixelRepresentation",
    ):  # fmt: skip
        setattr(ds, keyword, getattr(first, keyword))
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2.1"  # Enhanced CT Image Storage
    ds.SOPInstanceUID = make_uid("enhanced ct")
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL", "NONE"]
    ds.NumberOfFrames = len(frame_order)
    shared = pydicom.Dataset()
    measures, orientation, transform = pydicom.Dataset(), pydicom.Dataset(), pydicom.Dataset()
    measures.PixelSpacing, measures.SliceThickness = first.PixelSpacing, first.SliceThickness
    orientation.ImageOrientationPatient = first.ImageOrientationPatient
    transform.RescaleSlope, transform.RescaleIntercept, transform.RescaleType = 1, first.RescaleIntercept, "HU"
    shared.PixelMeasuresSequence = [measures]
    shared.PlaneOrientationSequence = [orientation]
    shared.PixelValueTransformationSequence = [transform]
    ds.SharedFunctionalGroupsSequence = [shared]
    frames = []
    for index in frame_order:
        position, item = pydicom.Dataset(), pydicom.Dataset()
        position.ImagePositionPatient = slices[index].ImagePositionPatient
        item.PlanePositionSequence = [position]
        frames.append(item)
    ds.PerFrameFunctionalGroupsSequence = frames
    ds.PixelData = b"".join(slices[index].pixel_array.astype("<u2").tobytes() for index in frame_order)
    ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    save_dicom(ds, path)


@pytest.mark.parametrize(
    "transfer_syntax", [None, RLELossless, DeflatedExplicitVRLittleEndian], ids=["native", "rle", "deflated"]
)
def test_enhanced_ct_reads_as_the_classic_series_it_was_made_from(tmp_path, transfer_syntax):
    """Each frame is a slice placed by its functional groups, whatever the frame order."""
    slice_paths = sorted(LUNG_DX_CT.glob("*.dcm"))
    path = tmp_path / "enhanced.dcm"
    order = [3, 0, 10, 7, 1, 9, 2, 8, 5, 4, 6]
    _enhanced_ct_from(slice_paths, path, order)
    if transfer_syntax == DeflatedExplicitVRLittleEndian:  # pydicom decodes the frames
        _rewrite(path, _deflate)
    elif transfer_syntax is not None:
        _rewrite(path, lambda ds: ds.compress(transfer_syntax))

    series = _series([path])
    image = read_series_image(series_geometry(series))
    expected = load_series([LUNG_DX_CT])

    assert len(series.headers) == 11 and series.files == [path]
    assert sorted(h.frame for h in series.headers) == list(range(11))
    assert image.GetPixelID() == sitk.sitkInt16
    assert (image.GetOrigin(), image.GetDirection()) == (expected.GetOrigin(), expected.GetDirection())
    assert image.GetSpacing() == pytest.approx(expected.GetSpacing(), abs=1e-9)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), sitk.GetArrayFromImage(expected))


def test_enhanced_ct_frame_without_a_position_is_named(tmp_path):
    path = tmp_path / "enhanced.dcm"
    _enhanced_ct_from(sorted(LUNG_DX_CT.glob("*.dcm"))[:3], path, [0, 1, 2])
    _rewrite(path, lambda ds: delattr(ds.PerFrameFunctionalGroupsSequence[1], "PlanePositionSequence"))

    scan = scan_paths([path])

    assert scan.series == [] and len(scan.problems) == 1
    assert (
        scan.problems[0].message
        == f"{path}: frame 2 has no ImagePositionPatient (Plane Position) in its functional groups"
    )


def test_enhanced_ct_one_frame_per_file_reads_as_the_classic_series(tmp_path):
    """Some scanners write Enhanced CT one frame per file: each file is a slice, placed by its
    functional groups, with its own SOPInstanceUID (which VOC files are named after)."""
    for n, source in enumerate(sorted(LUNG_DX_CT.glob("*.dcm"))):
        _enhanced_ct_from([source], tmp_path / f"e{n}.dcm", [0])
        _rewrite(tmp_path / f"e{n}.dcm", lambda ds, n=n: setattr(ds, "SOPInstanceUID", make_uid("one frame", n)))

    series = _series([tmp_path])
    image = read_series_image(series_geometry(series))

    assert len(series.files) == 11 and all(h.frame is None for h in series.headers)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), sitk.GetArrayFromImage(load_series([LUNG_DX_CT])))


def test_enhanced_ct_messages_name_the_frame_and_compressed_per_frame_rescales_are_refused(tmp_path):
    path = tmp_path / "enhanced.dcm"
    _enhanced_ct_from(sorted(LUNG_DX_CT.glob("*.dcm"))[:3], path, [0, 1, 1])  # frame 3 repeats frame 2's place
    with pytest.raises(DicomSeriesError, match="two different slices at the same position") as refused:
        series_geometry(_series([path]))
    assert f"{path} (frame 2)" in str(refused.value) and f"{path} (frame 3)" in str(refused.value)

    def own_intercepts(ds) -> None:  # each frame rescaled on its own, then compressed
        for number, item in enumerate(ds.PerFrameFunctionalGroupsSequence):
            transform = pydicom.Dataset()
            transform.RescaleSlope, transform.RescaleIntercept = 1, -1024 + 10 * number
            item.PixelValueTransformationSequence = [transform]
        ds.compress(RLELossless)

    _enhanced_ct_from(sorted(LUNG_DX_CT.glob("*.dcm"))[:3], path, [0, 1, 2])
    _rewrite(path, own_intercepts)
    with pytest.raises(UnsupportedPixelDataError, match=r"dcm: compressed frames with rescales of their own \(frame"):
        read_series_image(series_geometry(_series([path])))
