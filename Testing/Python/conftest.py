"""Shared pytest fixtures.

``mrml_scene`` gives each MRML-layer test a fresh, real Slicer scene from the slicer-core
wheel (see PETCTLesionsLib/mrml/headless.py for what is set up and why). Nothing is mocked:
the tests call the same MRML-layer code that runs inside Slicer.

``small_study`` writes the small generated PET/CT study (studies.py) into the test's
``tmp_path``: the study most DICOM, loading and bad-input tests start from. Tests that need it
varied (another patient, grids, values, folders; several studies; a module-scoped study) call
``studies.write_small_study`` with what differs.

The library tests also run on Slicer 5.6's stack (Python 3.9, numpy 1.26, pydicom 2.4,
SimpleITK 2.2; no torch, no slicer-core; see .ci/run): tests write DICOM files with
:func:`save_dicom`, which works on pydicom 2.4 and 3, and a test needing torch or slicer-core
says so (``@pytest.mark.torch``, ``@pytest.mark.slicer``, or ``pytest.importorskip`` for a whole
file), so that it is skipped there instead of failing.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Callable, List, Optional, Sequence

import pydicom
import pytest
from pydicom.uid import ExplicitVRBigEndian, ImplicitVRLittleEndian
from studies import SmallStudy, write_small_study

REPO_ROOT = Path(__file__).resolve().parents[2]
TEST_DATA = REPO_ROOT / "Testing" / "Data"
LUNG_DX_ROOT = TEST_DATA / "Lung-PET-CT-Dx"
LUNG_DX_CT_SERIES = LUNG_DX_ROOT / "Lung_Dx-A0001" / "04-04-2007-NA-Chest-07990" / "2.000000-5mm-40805"
LUNG_DX_ANNOTATIONS = LUNG_DX_ROOT / "Annotation" / "A0001"

# High-Throughput JPEG 2000 (pydicom 3 names them in pydicom.uid; pydicom 2.4 does not know them).
HTJ2K_LOSSLESS = pydicom.uid.UID("1.2.840.10008.1.2.4.201")

PYDICOM_3 = int(pydicom.__version__.split(".")[0]) >= 3

# Markers for what Slicer 5.6's stack lacks: the test is skipped where the module is not installed.
OPTIONAL_MODULE_OF_MARKER = {"torch": "torch", "slicer": "slicer"}


def skip_unless_installed(module: str) -> None:
    """Skip the test where ``module`` is not installed at all. An installed module that fails to
    import is not skipped: the test fails, as it should where everything is installed."""
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"needs {module}, which is not installed here")


def pytest_runtest_setup(item: pytest.Item) -> None:
    for marker, module in OPTIONAL_MODULE_OF_MARKER.items():
        if item.get_closest_marker(marker) is not None:
            skip_unless_installed(module)


def save_dicom(ds: pydicom.Dataset, path: Path) -> None:
    """Write ``ds`` as a DICOM Part 10 file (preamble, meta group) in the transfer syntax its
    meta group names, on pydicom 3 and on pydicom 2.4 (what Slicer 5.6-5.10 bundle)."""
    if PYDICOM_3:
        ds.save_as(path, enforce_file_format=True)
        return
    transfer_syntax = ds.file_meta.TransferSyntaxUID
    ds.is_little_endian = transfer_syntax != ExplicitVRBigEndian
    ds.is_implicit_VR = transfer_syntax == ImplicitVRLittleEndian
    ds.save_as(path, write_like_original=False)


def save_bare_dicom(ds: pydicom.Dataset, path: Path) -> None:
    """Write ``ds`` as an old ACR-NEMA style file: implicit VR little endian, no preamble, no meta group."""
    ds.file_meta, ds.preamble = pydicom.dataset.FileMetaDataset(), None
    if PYDICOM_3:
        ds.save_as(path, implicit_vr=True, little_endian=True, enforce_file_format=False)
        return
    ds.is_implicit_VR, ds.is_little_endian = True, True
    ds.save_as(path, write_like_original=True)


def copy_series(paths: Sequence[Path], folder: Path, tag: str, edit: Optional[Callable] = None) -> List[Path]:
    """The files again in ``folder`` as another series, each header changed by ``edit(ds)``.

    New UIDs: the series is ``make_uid("copied series", tag)``, so a test can name it; each
    instance gets its own. File names are kept.
    """
    from PETCTLesionsLib.synthetic.dicom_writer import make_uid

    folder.mkdir(parents=True)
    copies = []
    for number, path in enumerate(paths):
        ds = pydicom.dcmread(path)
        ds.SeriesInstanceUID = make_uid("copied series", tag)
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = make_uid("copied instance", tag, number)
        if edit is not None:
            edit(ds)
        copies.append(folder / Path(path).name)
        save_dicom(ds, copies[-1])
    return copies


@pytest.fixture
def small_study(tmp_path: Path) -> SmallStudy:
    """The default small study (``studies.SMALL_STUDY``) written into ``tmp_path`` (ct/, pt/)."""
    return write_small_study(tmp_path)


@pytest.fixture
def mrml_scene():
    """A real, empty vtkMRMLScene installed as ``slicer.mrmlScene`` (default colour tables present)."""
    skip_unless_installed("slicer")
    from PETCTLesionsLib.mrml import headless

    if headless.in_slicer_application():
        pytest.skip("inside the Slicer application the module's own self-test runs instead")
    scene = headless.reset_scene()
    yield scene
    headless.reset_scene()


@pytest.fixture(scope="session", autouse=True)
def _shutdown_headless_slicer():
    yield
    import sys

    headless = sys.modules.get("PETCTLesionsLib.mrml.headless")
    if headless is not None:
        headless.shutdown()
