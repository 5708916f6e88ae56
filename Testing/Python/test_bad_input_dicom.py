"""Bad DICOM input that used to give a silently wrong result (issue 18) now gives a refusal naming
the file, or a warning where the data are still usable, in ``info``, in a load (what ``predict``
runs) and on the module's path: per-slice rescale values no scanner writes, SUVs no scan gives, a
CT covering a sliver of the PET, jittered or mixed slice spacings, a decoder without its package,
short pixel data, an uptake time no static scan usually has. Each study is generated (dicom_writer)
and then damaged with pydicom."""

from __future__ import annotations

import types
import warnings
from pathlib import Path
from typing import Callable, List

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from conftest import PYDICOM_3, save_dicom
from studies import SMALL_PET_GRID, write_small_study

from PETCTLesionsLib.dicom.index import scan_paths
from PETCTLesionsLib.dicom.pairing import pair_pet_with_ct
from PETCTLesionsLib.dicom.series import (
    DicomSeriesError,
    MissingSlicesError,
    UnsupportedPixelDataError,
    series_geometry,
)
from PETCTLesionsLib.dicom.suv import HIGH_SUV_WARNING, SUVError
from PETCTLesionsLib.geometry import Grid
from PETCTLesionsLib.info import format_info, info_report
from PETCTLesionsLib.study import StudyLoadError, load_pet_suv, load_study

# Each study is the small study (studies.py): a PET of 60 mm along z (20 slices of 3 mm) and a CT
# covering it (26 slices of 2.5 mm); 70 kg, 330 MBq injected at 09:00, the PET at 10:00.
PET_GRID = SMALL_PET_GRID


def _edit(paths: List[Path], change: Callable[[pydicom.Dataset], None]) -> None:
    for path in paths:
        ds = pydicom.dcmread(path)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydicom warns about invalid DS values ("nan"): that is the point
            change(ds)
            save_dicom(ds, path)


def _series_entry(report, modality: str):
    return next(s for s in report["studies"][0]["series"] if s["modality"] == modality)


# --------------------------------------------------------------------------- 1. rescale values


@pytest.mark.parametrize(
    "keyword, value, shown",
    [
        ("RescaleSlope", "0", "RescaleSlope (0028,1053) is 0;"),
        ("RescaleSlope", "-0.5", "RescaleSlope (0028,1053) is -0.5;"),
        ("RescaleSlope", "nan", "RescaleSlope (0028,1053) is nan;"),
        ("RescaleIntercept", "inf", "RescaleIntercept (0028,1052) is inf, not a finite number"),
    ],
)
def test_a_pet_slice_with_an_unusable_rescale_is_refused_by_info_and_the_load_naming_the_file(
    small_study, tmp_path, keyword, value, shown
):
    pet = small_study.pet
    damaged = pet.paths[5]
    _edit([damaged], lambda ds: setattr(ds, keyword, value))

    entry = _series_entry(info_report([tmp_path]), "PT")
    assert entry["error"].startswith(f"{damaged}: {shown}")
    assert f"cannot be loaded: {damaged}: {shown}" in format_info(info_report([tmp_path]))
    with pytest.raises(DicomSeriesError, match=f"^{damaged}: {shown}".replace("(", r"\(").replace(")", r"\)")):
        load_study([tmp_path])
    with pytest.raises(DicomSeriesError, match="RescaleS|RescaleI"):
        load_pet_suv([tmp_path / "pt"])  # the module's path (Slicer loads the PET, this gives its SUV)


def test_a_pet_slice_whose_slope_gives_suv_no_scan_gives_is_refused_by_info_and_the_load(small_study, tmp_path):
    pet = small_study.pet
    damaged = pet.paths[7]
    _edit([damaged], lambda ds: setattr(ds, "RescaleSlope", "1e30"))
    expected = f"{damaged}: its values reach SUV "

    entry = _series_entry(info_report([tmp_path]), "PT")
    assert entry["error"].startswith(expected)
    # 70 kg over 4 x 4 x 3 mm voxels (0.048 mL): the whole dose in one voxel is SUV 1.46e6
    assert (
        "more than the whole injected dose in one voxel (SUV 1.46e+06 for 70 kg and 0.048 mL voxels)"
        in (entry["error"])
    )
    assert "RescaleSlope 1e+30" in entry["error"]
    with pytest.raises(SUVError, match=f"^{damaged}: its values reach SUV [0-9.]+e\\+[0-9]+ "):
        load_study([tmp_path])
    with pytest.raises(SUVError, match="which no PET scan gives"):
        load_pet_suv([tmp_path / "pt"])


def test_a_pet_slice_hotter_than_patients_get_is_loaded_with_a_warning_naming_its_file(small_study, tmp_path):
    # A slope 300 times too large on one slice gives SUVs of a few thousand: possible (an
    # extravasated injection), so kept, but no reader should miss it.
    pet = small_study.pet
    damaged = pet.paths[4]
    slope = float(pydicom.dcmread(damaged, stop_before_pixels=True).RescaleSlope)
    _edit([damaged], lambda ds: setattr(ds, "RescaleSlope", f"{slope * 300:.6g}"))

    loaded = load_study([tmp_path])

    highest = float(sitk.GetArrayViewFromImage(loaded.pet_suv).max())
    assert HIGH_SUV_WARNING < highest < 1e5
    hot = [w for w in loaded.warnings if w.startswith(f"{damaged}: its values reach SUV ")]
    assert len(hot) == 1 and f"above {HIGH_SUV_WARNING:g}, which patients' PETs do not reach" in hot[0]
    assert f"SUV {highest:.3g}" in hot[0]
    entry = _series_entry(info_report([tmp_path]), "PT")
    assert entry["error"] is None and any(w.startswith(f"{damaged}: its values reach SUV") for w in entry["warnings"])
    assert load_pet_suv([tmp_path / "pt"]).warnings[-1] == hot[0]


def test_pet_slopes_varying_a_thousandfold_across_slices_load_with_the_written_values(tmp_path):
    # Vendors fit each slice's slope to the slice's maximum (int16 stored values): a PET whose
    # activity varies by 1e3 along z has slopes that vary by 1e3. None of that is refused.
    rng = np.random.default_rng(2)
    suv = rng.gamma(2.0, 1.2, PET_GRID.shape) * np.logspace(-3, 0, PET_GRID.size[2])[:, None, None] * 40
    pet = write_small_study(tmp_path, suv=suv).pet
    slopes = [float(pydicom.dcmread(path, stop_before_pixels=True).RescaleSlope) for path in pet.paths]
    assert max(slopes) / min(slopes) > 500

    loaded = load_study([tmp_path])

    values = sitk.GetArrayFromImage(loaded.pet_suv)
    np.testing.assert_allclose(values, pet.stored_values, rtol=1e-6)
    assert values.max() > 50 and loaded.warnings == []
    assert _series_entry(info_report([tmp_path]), "PT")["error"] is None


# --------------------------------------------------------------------------- 3. CT coverage


def test_a_ct_covering_a_sliver_of_the_pet_is_refused_naming_both_series(tmp_path):
    one_slice = Grid(size=(20, 16, 1), spacing=(2.0, 2.0, 2.5), origin=(-20.0, -16.0, 0.0))
    written = write_small_study(tmp_path, ct_grid=one_slice)
    ct, pet = written.ct, written.pet

    report = info_report([tmp_path])
    (pair,) = report["studies"][0]["pet_ct_pairs"]
    assert pair["ct_coverage"] == pytest.approx(2.5 / 60.0)
    assert f"CT series 2 'CT 2.5mm' ({ct.series_uid}) covers 2.5 mm of the 60.0 mm of PT series 3" in pair["error"]
    assert pet.series_uid in pair["error"] and "(4%), under 50%" in pair["error"]
    text = format_info(report)
    assert "the CT covers 4% of the PET's length along its slice axis" in text
    assert "      cannot be loaded: CT series 2 'CT 2.5mm'" in text
    with pytest.raises(StudyLoadError, match=f"CT series 2 'CT 2.5mm' \\({ct.series_uid}\\) covers 2.5 mm"):
        load_study([tmp_path])


def test_a_ct_covering_three_quarters_of_the_pet_loads_with_the_fraction_in_a_warning(tmp_path):
    # 18 CT slices of 2.5 mm from z=-15: covers z -16.25..28.5 of the PET's -31.5..28.5 mm.
    shorter = Grid(size=(20, 16, 18), spacing=(2.0, 2.0, 2.5), origin=(-20.0, -16.0, -15.0))
    write_small_study(tmp_path, ct_grid=shorter)

    loaded = load_study([tmp_path])

    (warning,) = [w for w in loaded.warnings if "covers" in w]
    assert "covers 44.8 mm of the 60.0 mm of PT series 3" in warning and "(75%), under 90%" in warning
    assert "read with air (-1024 HU) as its CT" in warning
    (pair,) = info_report([tmp_path])["studies"][0]["pet_ct_pairs"]
    assert pair["ct_coverage"] == pytest.approx(44.75 / 60.0) and pair["error"] is None
    assert pair["warnings"] == [warning]


def test_a_ct_covering_the_whole_pet_is_reported_without_a_warning(small_study, tmp_path):
    (pairing,) = pair_pet_with_ct(scan_paths([tmp_path]).studies)
    assert pairing.ct_coverage == pytest.approx(1.0) and pairing.error is None and pairing.warnings == []
    assert "the CT covers 100% of the PET's length along its slice axis" in format_info(info_report([tmp_path]))


@pytest.mark.slicer
def test_the_module_lists_a_pet_whose_ct_covers_a_sliver_as_not_loadable(mrml_scene, tmp_path):
    from PETCTLesionsLib.mrml.dicom_database import pet_ct_choices

    write_small_study(tmp_path, ct_grid=Grid(size=(20, 16, 1), spacing=(2.0, 2.0, 2.5), origin=(-20.0, -16.0, 0.0)))

    choices, problems = pet_ct_choices([tmp_path])

    assert choices == [] and "covers 2.5 mm of the 60.0 mm of PT series 3" in problems


# --------------------------------------------------------------------------- slice positions


def _jitter(paths: List[Path], offsets: np.ndarray) -> None:
    for path, offset in zip(paths, offsets):

        def move(ds, offset=offset):
            x, y, z = (float(v) for v in ds.ImagePositionPatient)
            ds.ImagePositionPatient = [x, y, round(z + float(offset), 4)]

        _edit([path], move)


def test_jittered_slice_positions_are_irregular_spacing_resampled_not_missing_slices(tmp_path):
    pet_grid = Grid(size=(12, 10, 40), spacing=(4.0, 4.0, 3.0), origin=(-22.0, -18.0, -60.0))
    ct_grid = Grid(size=(20, 16, 50), spacing=(2.0, 2.0, 2.5), origin=(-20.0, -16.0, -62.0))
    pet = write_small_study(tmp_path, ct_grid=ct_grid, pet_grid=pet_grid).pet
    _jitter(pet.paths, np.random.default_rng(7).uniform(-1.5, 1.5, len(pet.paths)))
    series = scan_paths([tmp_path / "pt"]).series[0]
    steps = np.diff(sorted(header.position[2] for header in series.headers))
    assert np.sum(steps >= 1.5 * np.median(steps)) >= 3  # what was read as slices missing

    geometry = series_geometry(series)
    loaded = load_study([tmp_path])

    assert geometry.resampled and geometry.gaps == []
    (warning,) = geometry.warnings
    assert (
        f"slice spacing varies from {steps.min():.3f} to {steps.max():.3f} mm (median {np.median(steps):.3f} mm); "
        "resampled onto" in warning
    )
    assert warning in loaded.warnings and not any("missing" in w for w in loaded.warnings)


def test_a_missing_slice_on_a_regular_lattice_is_still_refused_without_naming_an_option(small_study, tmp_path):
    pet = small_study.pet
    pet.paths[8].unlink()

    with pytest.raises(MissingSlicesError, match="1 slice missing between z=") as refused:
        load_study([tmp_path])
    assert "allow_gaps" not in str(refused.value) and "find the missing files" in str(refused.value)
    assert "allow_gaps" not in _series_entry(info_report([tmp_path]), "PT")["error"]


def test_a_gap_of_three_slices_in_jittered_positions_is_refused_as_missing_slices(small_study, tmp_path):
    pet = small_study.pet
    for path in pet.paths[8:11]:
        path.unlink()
    kept = [p for p in pet.paths if p.exists()]
    _jitter(kept, np.random.default_rng(3).uniform(-0.6, 0.6, len(kept)))

    with pytest.raises(MissingSlicesError, match="3 slices missing between z="):
        load_study([tmp_path])


@pytest.mark.parametrize("fine_mm, coarse_every", [(1.25, 2), (1.0, 5)])
def test_stacks_of_two_spacings_load_resampled_with_a_warning_giving_both(tmp_path, fine_mm, coarse_every):
    # A CT of two stacks: 20 steps of fine_mm, then every coarse_every-th slice (steps of 2.5 or 5 mm),
    # whole multiples of the median step that once read as a slice missing at every coarse step.
    count = int(70 / fine_mm)
    ct_grid = Grid(size=(20, 16, count), spacing=(2.0, 2.0, fine_mm), origin=(-20.0, -16.0, -32.0))
    ct = write_small_study(tmp_path, ct_grid=ct_grid).ct
    for k in range(21, count):
        if (k - 20) % coarse_every:
            ct.paths[k].unlink()
    coarse_mm = fine_mm * coarse_every
    series = scan_paths([tmp_path / "ct"]).series[0]

    geometry = series_geometry(series)
    loaded = load_study([tmp_path])

    assert geometry.resampled and geometry.gaps == []
    span = fine_mm * (20 + coarse_every * ((count - 21) // coarse_every))
    assert geometry.grid.size[2] == round(span / fine_mm) + 1
    assert geometry.grid.spacing[2] == pytest.approx(fine_mm)
    (warning,) = geometry.warnings
    assert (
        f"slice spacing varies from {fine_mm:.3f} to {coarse_mm:.3f} mm (median {fine_mm:.3f} mm; the series "
        f"mixes slices {fine_mm:.3f} and {coarse_mm:.3f} mm apart); resampled onto" in warning
    )
    assert warning in loaded.warnings and not any("missing" in w for w in loaded.warnings)
    ct_entry = _series_entry(info_report([tmp_path]), "CT")
    assert ct_entry["error"] is None and warning in ct_entry["warnings"]


def test_a_missing_slice_is_refused_though_one_step_elsewhere_is_slightly_off(small_study, tmp_path):
    # Slices 14-19 lie 0.5 mm higher (one step of 3.5 mm, 17% off the 3 mm lattice): that step no
    # longer lets the missing slice 6 pass as irregular spacing.
    pet = small_study.pet
    _jitter(pet.paths[14:], np.full(6, 0.5))
    pet.paths[6].unlink()
    z5, z7 = (PET_GRID.index_to_lps((0, 0, k))[2] for k in (5, 7))

    with pytest.raises(MissingSlicesError) as refused:
        load_study([tmp_path])

    message = str(refused.value)
    assert f"1 slice missing between z={z5:.2f} and z={z7:.2f} mm (between {pet.paths[5].name} and" in message
    assert pet.paths[7].name in message and message.count("missing between") == 1
    assert "1 slice missing between" in _series_entry(info_report([tmp_path]), "PT")["error"]


# --------------------------------------------------------------------------- short pixel data


def test_short_pixel_data_make_info_say_the_series_cannot_be_loaded(small_study, tmp_path):
    pet = small_study.pet
    damaged = pet.paths[4]
    _edit([damaged], lambda ds: setattr(ds, "PixelData", ds.PixelData[: len(ds.PixelData) // 2]))
    expected = f"{damaged}: the pixel data hold 120 bytes; 10 x 12 pixels of 16 bits need 240"

    assert _series_entry(info_report([tmp_path]), "PT")["error"].startswith(expected)
    with pytest.raises(DicomSeriesError, match=expected):
        load_study([tmp_path])


# --------------------------------------------------------------------------- decoders

JPEG2000_PART2_LOSSLESS = "1.2.840.10008.1.2.4.92"  # no codec in SimpleITK's GDCM: pydicom's handlers only


@pytest.mark.skipif(PYDICOM_3, reason="pydicom 2.x's pixel data handlers (Slicer 5.6-5.10 bundle pydicom 2.4)")
def test_a_syntax_whose_pydicom_2_handler_lacks_its_package_is_refused_by_info_and_the_load(
    small_study, tmp_path, monkeypatch
):
    # pydicom 2.4 lists every handler, installed package or not (its gdcm_handler without the gdcm
    # package): a stand-in that claims JPEG 2000 Part 2 and whose package is missing.
    handler = types.SimpleNamespace(
        HANDLER_NAME="GDCM",
        DEPENDENCIES={"numpy": ("http://www.numpy.org/", "NumPy"), "gdcm": ("http://gdcm.sourceforge.net", "GDCM")},
        is_available=lambda: False,
        supports_transfer_syntax=lambda uid: uid == JPEG2000_PART2_LOSSLESS,
    )
    monkeypatch.setattr(pydicom.config, "pixel_data_handlers", [handler, *pydicom.config.pixel_data_handlers])
    damaged = small_study.ct.paths[3]

    def compressed(ds) -> None:
        ds.file_meta.TransferSyntaxUID = JPEG2000_PART2_LOSSLESS
        ds.PixelData = pydicom.encaps.encapsulate([b"\xff\x4f\xff\x51 not decoded \xff\xd9"])
        ds["PixelData"].VR = "OB"
        ds["PixelData"].is_undefined_length = True

    _edit([damaged], compressed)
    expected = (
        f"{damaged}: pixel data are compressed as JPEG 2000 Part 2 Multi-component Image Compression (Lossless "
        f"Only) ({JPEG2000_PART2_LOSSLESS}) and no installed package decodes them; install one of: GDCM"
    )

    assert _series_entry(info_report([tmp_path]), "CT")["error"] == expected
    with pytest.raises(UnsupportedPixelDataError) as refused:
        load_study([tmp_path])
    assert str(refused.value) == expected


# --------------------------------------------------------------------------- uptake time


def _injected_at_series_time(ds) -> None:
    item = ds.RadiopharmaceuticalInformationSequence[0]
    item.RadiopharmaceuticalStartDateTime = ds.SeriesDate + ds.SeriesTime
    item.RadiopharmaceuticalStartTime = ds.SeriesTime


def test_a_static_pet_injected_at_its_series_time_is_warned_about_and_its_suv_kept(small_study, tmp_path):
    pet = small_study.pet
    _edit(pet.paths, _injected_at_series_time)

    loaded = load_study([tmp_path])

    (warning,) = [w for w in loaded.warnings if "uptake" in w]
    assert "the uptake time from the injection (2020-01-01 10:00:00) to the decay reference" in warning
    assert "is 0 min, under 10 min, unusual for a static scan (SeriesType (0054,1000) WHOLE BODY\\IMAGE);" in warning
    # A static frame reconstructed from a dynamic acquisition that started at the injection has the right SUV.
    assert "these SUVs may be 32% too low (if the scan started about 60 min after the injection" in warning
    assert "reconstructed from a dynamic acquisition starting at the injection" in warning
    assert loaded.suv.decay_time_s == 0.0
    np.testing.assert_allclose(loaded.suv.factors, 70.0 * 1000 / 3.3e8, rtol=1e-12)  # the number is kept
    suv_entry = _series_entry(info_report([tmp_path]), "PT")["suv"]
    assert warning.split(": ", 1)[1] in " ".join(suv_entry["warnings"])
    assert "is 0 min, under 10 min" in format_info(info_report([tmp_path]))


def test_a_dynamic_pet_starting_at_the_injection_is_not_warned_about(small_study, tmp_path):
    pet = small_study.pet

    def dynamic(ds) -> None:
        _injected_at_series_time(ds)
        ds.SeriesType = ["DYNAMIC", "IMAGE"]

    _edit(pet.paths, dynamic)

    assert not any("uptake" in w for w in load_study([tmp_path]).warnings)


@pytest.mark.slicer
def test_the_module_shows_the_uptake_warning_when_it_converts_a_pet_to_suv(mrml_scene, small_study, tmp_path, caplog):
    from PETCTLesionsLib.mrml.study_nodes import (
        INSTANCE_UIDS_ATTRIBUTE,
        convert_pet_node_to_suv,
        is_suv_bw,
        suv_warnings,
    )
    from PETCTLesionsLib.mrml.volumes import volume_node_from_image

    _edit(small_study.pet.paths, _injected_at_series_time)
    pet = load_pet_suv([tmp_path / "pt"])
    node = volume_node_from_image(pet.pet_suv, "PET as Slicer loads it")  # the grid Slicer gives it
    node.SetAttribute(INSTANCE_UIDS_ATTRIBUTE, " ".join(pet.series.slice_sop_instance_uids))

    with caplog.at_level("WARNING"):
        shown = convert_pet_node_to_suv(node, pet)

    assert is_suv_bw(node)
    (warning,) = [w for w in shown if "uptake" in w]
    assert "is 0 min, under 10 min" in warning
    logged = [record.getMessage() for record in caplog.records]
    assert any(warning in message and "'PET as Slicer loads it'" in message for message in logged)
    assert suv_warnings(node) == shown  # kept on the node: what the module shows when it shows the study
