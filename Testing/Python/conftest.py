"""Shared pytest fixtures.

``mrml_scene`` gives each MRML-layer test a fresh, real Slicer scene from the slicer-core
wheel (see PETCTLesionsLib/mrml/headless.py for what is set up and why). Nothing is mocked:
the tests call the same MRML-layer code that runs inside Slicer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, List, Optional, Sequence

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
TEST_DATA = REPO_ROOT / "Testing" / "Data"
LUNG_DX_ROOT = TEST_DATA / "Lung-PET-CT-Dx"
LUNG_DX_CT_SERIES = LUNG_DX_ROOT / "Lung_Dx-A0001" / "04-04-2007-NA-Chest-07990" / "2.000000-5mm-40805"
LUNG_DX_ANNOTATIONS = LUNG_DX_ROOT / "Annotation" / "A0001"


def copy_series(paths: Sequence[Path], folder: Path, tag: str, edit: Optional[Callable] = None) -> List[Path]:
    """The files again in ``folder`` as another series, each header changed by ``edit(ds)``.

    New UIDs: the series is ``make_uid("copied series", tag)``, so a test can name it; each
    instance gets its own. File names are kept.
    """
    import pydicom

    from PETCTLesionsLib.dicom_writer import make_uid

    folder.mkdir(parents=True)
    copies = []
    for number, path in enumerate(paths):
        ds = pydicom.dcmread(path)
        ds.SeriesInstanceUID = make_uid("copied series", tag)
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = make_uid("copied instance", tag, number)
        if edit is not None:
            edit(ds)
        copies.append(folder / Path(path).name)
        ds.save_as(copies[-1], enforce_file_format=True)
    return copies


@pytest.fixture
def mrml_scene():
    """A real, empty vtkMRMLScene installed as ``slicer.mrmlScene`` (default colour tables present)."""
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
