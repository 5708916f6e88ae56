"""Static checks of the extension as Slicer would build and load it (no Slicer needed).

A file missing from the module's CMakeLists is silently left out of the installed
extension; a widget name the code uses but the .ui lacks fails only when a user clicks.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

REPO = Path(__file__).resolve().parents[2]
MODULE_DIR = REPO / "PETCTLesions"
MODULE_SCRIPT = MODULE_DIR / "PETCTLesions.py"
UI_FILE = MODULE_DIR / "Resources" / "UI" / "PETCTLesions.ui"


def _module_python_files():
    return sorted(
        p.relative_to(MODULE_DIR).as_posix() for p in MODULE_DIR.rglob("*.py") if "__pycache__" not in p.parts
    )


def _module_resources():
    resources = MODULE_DIR / "Resources"
    return sorted(p.relative_to(MODULE_DIR).as_posix() for p in resources.rglob("*") if p.is_file())


def _cmake_entries():
    text = (MODULE_DIR / "CMakeLists.txt").read_text()
    text = text.replace("${MODULE_NAME}", "PETCTLesions")
    return set(re.findall(r"^\s+([\w./-]+\.\w+)\s*$", text, flags=re.MULTILINE))


def test_every_module_python_file_and_resource_is_listed_in_cmake():
    listed = _cmake_entries()
    missing = [f for f in _module_python_files() + _module_resources() if f not in listed]
    assert missing == []
    stale = [f for f in listed if not (MODULE_DIR / f).is_file()]
    assert stale == []


def test_extension_metadata_is_complete():
    text = (REPO / "CMakeLists.txt").read_text()
    for key in ("HOMEPAGE", "CATEGORY", "CONTRIBUTORS", "DESCRIPTION", "ICONURL", "SCREENSHOTURLS", "DEPENDS"):
        assert re.search(rf'set\(EXTENSION_{key} "[^"]+"\)', text), key
    assert 'set(EXTENSION_CATEGORY "Nuclear Medicine")' in text
    assert 'set(EXTENSION_DEPENDS "PyTorch")' in text
    assert "find_package(Slicer REQUIRED)" in text
    assert "add_subdirectory(PETCTLesions)" in text


@pytest.mark.parametrize("path", _module_python_files() + ["../Testing/Python/conftest.py"])
def test_python_files_parse_as_python_39(path):
    source = (MODULE_DIR / path).read_text()
    ast.parse(source, filename=path, feature_version=(3, 9))


def test_ui_is_qt_designer_xml_and_has_every_widget_the_code_uses():
    root = ET.parse(UI_FILE).getroot()
    assert root.tag == "ui" and root.get("version") == "4.0"
    widget_names = {w.get("name") for w in root.iter("widget")}
    used = set(re.findall(r"self\.ui\.(\w+)", MODULE_SCRIPT.read_text()))
    assert used, "the widget uses no .ui widget: the check would be empty"
    assert used - widget_names == set()


def test_ui_parameter_names_are_fields_of_the_parameter_node():
    tree = ast.parse(MODULE_SCRIPT.read_text())
    parameter_class = next(
        node for node in tree.body if isinstance(node, ast.ClassDef) and node.name == "PETCTLesionsParameterNode"
    )
    fields = {s.target.id for s in parameter_class.body if isinstance(s, ast.AnnAssign)}
    root = ET.parse(UI_FILE).getroot()
    bound = {prop.find("string").text for prop in root.iter("property") if prop.get("name") == "SlicerParameterName"}
    assert bound and bound <= fields


def test_library_imports_without_slicer_or_qt():
    """PETCTLesionsLib (outside its mrml layer) must import with numpy/SimpleITK/pydicom/torch alone."""
    lib = MODULE_DIR / "PETCTLesionsLib"
    modules = sorted(
        "PETCTLesionsLib." + p.relative_to(lib).with_suffix("").as_posix().replace("/", ".")
        for p in lib.rglob("*.py")
        if "mrml" not in p.parts and p.name != "__init__.py"
    )
    code = (
        "import sys, importlib\n"
        f"for name in {modules!r}: importlib.import_module(name)\n"
        "gui = ('slicer', 'qt', 'ctk', 'PythonQt', 'PyQt5', 'PySide2', 'PySide6')\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in gui)\n"
        "assert not bad, bad\n"
        "print(len(sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("icon", ["PETCTLesions.png", "PETCTLesions/Resources/Icons/PETCTLesions.png"])
def test_icons_are_real_128px_pictures(icon):
    image = sitk.ReadImage(str(REPO / icon))
    assert image.GetSize() == (128, 128)
    pixels = sitk.GetArrayFromImage(image).astype(float)
    assert pixels.std() > 20  # not a flat placeholder square
    assert len(np.unique(pixels.reshape(-1, pixels.shape[-1]), axis=0)) > 200
