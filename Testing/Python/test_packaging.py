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


# Methods the slicer-core wheel of the tests (5.13) has but Slicer 5.6, the oldest release the
# extension supports, lacks: the tests cannot catch a call to them, so they are listed here as found.
NEWER_THAN_SLICER_5_6 = {
    "SetTerminology": "vtkSegment.SetTerminology() (Slicer 5.10+): set the TerminologyEntry tag",
    "GetTerminology": "vtkSegment.GetTerminology() (Slicer 5.10+): read the TerminologyEntry tag",
}


@pytest.mark.parametrize("path", _module_python_files())
def test_module_calls_no_slicer_api_newer_than_5_6(path):
    tree = ast.parse((MODULE_DIR / path).read_text())
    called = {
        node.func.attr for node in ast.walk(tree) if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
    }
    assert not called & NEWER_THAN_SLICER_5_6.keys(), [
        NEWER_THAN_SLICER_5_6[name] for name in called & NEWER_THAN_SLICER_5_6.keys()
    ]


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
    """PETCTLesionsLib (outside its mrml layer) must import with numpy/SimpleITK/pydicom/torch alone;
    without torch (Slicer without its PyTorch extension), all but the model's and training's own modules."""
    lib = MODULE_DIR / "PETCTLesionsLib"
    modules = sorted(
        "PETCTLesionsLib." + p.relative_to(lib).with_suffix("").as_posix().replace("/", ".")
        for p in lib.rglob("*.py")
        if "mrml" not in p.parts and p.name != "__init__.py"
    )
    code = (
        "import sys, importlib, importlib.util\n"
        "torch_missing = importlib.util.find_spec('torch') is None\n"
        f"for name in {modules!r}:\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "    except ModuleNotFoundError as error:\n"
        "        torch_only = name.startswith(('PETCTLesionsLib.model.', 'PETCTLesionsLib.training.'))\n"
        "        if not (torch_missing and error.name == 'torch' and torch_only):\n"
        "            raise\n"
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


# The catalogue entry's fields and their types, as Slicer's schema v1.0.2 defines them
# (https://raw.githubusercontent.com/Slicer/Slicer/main/Schemas/slicer-extension-catalog-entry-schema-v1.0.2.json,
# "additionalProperties": false).
CATALOGUE_SCHEMA_URL = (
    "https://raw.githubusercontent.com/Slicer/Slicer/main/Schemas/slicer-extension-catalog-entry-schema-v1.0.2.json#"
)
CATALOGUE_FIELDS = {
    "$schema": str,
    "category": str,
    "scm_url": str,
    "scm_revision": str,
    "scm_type": str,
    "build_dependencies": list,
    "dicom_support_rule": str,
    "build_subdirectory": str,
    "enabled": bool,
    "tier": int,
}
CATALOGUE_REQUIRED = {"$schema", "category", "scm_url"}


def _cmake_metadata(key):
    return re.search(rf'set\(EXTENSION_{key} "([^"]+)"\)', (REPO / "CMakeLists.txt").read_text()).group(1)


def test_catalogue_entry_has_only_schema_v1_0_2_fields_and_matches_the_cmake_metadata():
    import json

    entry = json.loads((REPO / "PETCTLesions.json").read_text())
    assert entry["$schema"] == CATALOGUE_SCHEMA_URL
    assert set(entry) >= CATALOGUE_REQUIRED
    assert set(entry) <= set(CATALOGUE_FIELDS), set(entry) - set(CATALOGUE_FIELDS)
    for key, value in entry.items():
        assert type(value) is CATALOGUE_FIELDS[key], key
    assert all(isinstance(d, str) for d in entry.get("build_dependencies", []))
    assert entry.get("scm_type", "git") in ("git", "local")
    assert 1 <= entry.get("tier", 1) <= 5
    assert entry["category"] == _cmake_metadata("CATEGORY")
    assert entry["build_dependencies"] == _cmake_metadata("DEPENDS").split(";")
    repository = entry["scm_url"].removesuffix(".git")
    assert _cmake_metadata("HOMEPAGE").startswith(repository)


def test_icon_and_screenshot_urls_name_pictures_in_this_repository():
    homepage_repo = "https://raw.githubusercontent.com/PETCTLesions/SlicerPETCTLesions/main/"
    urls = [_cmake_metadata("ICONURL"), *_cmake_metadata("SCREENSHOTURLS").split(" ")]
    for url in urls:
        assert url.startswith(homepage_repo), url
        picture = REPO / url[len(homepage_repo) :]
        image = sitk.ReadImage(str(picture))
        assert min(image.GetSize()[:2]) >= 128, picture
        pixels = sitk.GetArrayFromImage(image).astype(float)
        assert pixels.std() > 20, picture


# What Slicer's parameterNodeWrapper can connect (guiConnectors.py canRepresent): widget class
# in the .ui -> the parameter types it accepts.
_CONNECTABLE = {
    "QCheckBox": {"bool"},
    "QSpinBox": {"int"},
    "QDoubleSpinBox": {"float", "int"},
    "ctkSliderWidget": {"float", "int"},
    "QComboBox": {"str"},
    "QLineEdit": {"str"},
    "ctkRangeWidget": {"FloatRange"},
    "ctkPathLineEdit": {"Path"},
    "ctkDirectoryButton": {"Path"},
    "qMRMLNodeComboBox": {"vtkMRMLScalarVolumeNode", "vtkMRMLSegmentationNode"},
}


def _parameter_types():
    tree = ast.parse(MODULE_SCRIPT.read_text())
    parameter_class = next(
        node for node in tree.body if isinstance(node, ast.ClassDef) and node.name == "PETCTLesionsParameterNode"
    )
    types = {}
    for statement in parameter_class.body:
        if isinstance(statement, ast.AnnAssign):
            annotation = statement.annotation
            if isinstance(annotation, ast.Subscript):  # Annotated[type, ...]
                annotation = annotation.slice.elts[0]
            types[statement.target.id] = ast.unparse(annotation)
    return types, parameter_class


def test_every_bound_widget_can_represent_its_parameter_type():
    types, _ = _parameter_types()
    root = ET.parse(UI_FILE).getroot()
    bound = 0
    for widget in root.iter("widget"):
        for prop in widget.findall("property"):
            if prop.get("name") == "SlicerParameterName":
                name = prop.find("string").text
                assert types[name] in _CONNECTABLE[widget.get("class")], (widget.get("name"), name, types[name])
                bound += 1
    assert bound >= 15


def test_slider_bound_floats_are_bounded_and_choices_fill_their_combo_boxes():
    """parameterNodeWrapper refuses an unbounded float on a ctkSliderWidget, and fills combo boxes from Choice."""
    _, parameter_class = _parameter_types()
    source = {s.target.id: ast.unparse(s.annotation) for s in parameter_class.body if isinstance(s, ast.AnnAssign)}
    root = ET.parse(UI_FILE).getroot()
    for widget in root.iter("widget"):
        names = [p.find("string").text for p in widget.findall("property") if p.get("name") == "SlicerParameterName"]
        if not names:
            continue
        if widget.get("class") == "ctkSliderWidget":
            assert "WithinRange(" in source[names[0]], names[0]
        if widget.get("class") == "QComboBox":
            assert "Choice(" in source[names[0]], names[0]


# Signals the module connects to, per widget class (Qt / CTK documentation).
_SIGNALS = {
    "QPushButton": {"clicked(bool)", "clicked()", "toggled(bool)"},
    "QComboBox": {"currentIndexChanged(int)", "currentTextChanged(QString)"},
    "ctkRangeWidget": {"valuesChanged(double,double)"},
    "ctkSliderWidget": {"valueChanged(double)"},
    "QTableWidget": {"itemSelectionChanged()", "cellClicked(int,int)"},
    "QCheckBox": {"toggled(bool)", "stateChanged(int)"},
}


def test_every_connected_signal_exists_on_its_widget_class():
    root = ET.parse(UI_FILE).getroot()
    classes = {w.get("name"): w.get("class") for w in root.iter("widget")}
    connections = re.findall(r'self\.ui\.(\w+)\.connect\("([^"]+)"', MODULE_SCRIPT.read_text())
    assert len(connections) >= 15
    for widget, signal in connections:
        assert signal in _SIGNALS[classes[widget]], (widget, signal)


# ----------------------------------------------------------------------------------------- real Qt
# Slicer's Qt widgets checked against Qt's own meta-objects (PyQt5, offscreen): the .ui compiles
# with Qt's uic, and every property the .ui sets, every signal the code connects to and every
# attribute it uses on a standard Qt widget exists on that class. CTK and qMRML widgets have no
# Python binding outside Slicer; their signals are checked against _SIGNALS above.


@pytest.fixture(scope="module")
def qt_widgets():
    pytest.importorskip("PyQt5")
    import os

    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from PyQt5 import QtWidgets

    app = QtWidgets.QApplication.instance() or QtWidgets.QApplication([])
    yield QtWidgets
    del app


def _standard_qt_widgets(qt_widgets):
    root = ET.parse(UI_FILE).getroot()
    return [
        (w, getattr(qt_widgets, w.get("class"))) for w in root.iter("widget") if hasattr(qt_widgets, w.get("class"))
    ]


def test_ui_compiles_with_qts_own_uic(qt_widgets):
    import io

    from PyQt5 import uic

    code = io.StringIO()
    uic.compileUi(str(UI_FILE), code)
    compiled = code.getvalue()
    root = ET.parse(UI_FILE).getroot()
    for widget in root.iter("widget"):
        assert f'setObjectName("{widget.get("name")}")' in compiled, widget.get("name")


def test_ui_properties_exist_on_their_qt_classes(qt_widgets):
    checked = 0
    for widget, cls in _standard_qt_widgets(qt_widgets):
        meta = cls.staticMetaObject
        for prop in widget.findall("property"):
            if prop.get("stdset") == "0":
                continue  # a dynamic property (SlicerParameterName): any name is allowed
            assert meta.indexOfProperty(prop.get("name")) >= 0, (widget.get("name"), prop.get("name"))
            checked += 1
    assert checked >= 40


def test_code_uses_only_signals_and_members_that_qt_widgets_have(qt_widgets):
    from PyQt5 import QtCore

    source = MODULE_SCRIPT.read_text()
    classes = {w.get("name"): cls for w, cls in _standard_qt_widgets(qt_widgets)}
    aliases = dict(re.findall(r"^\s+(\w+) = self\.ui\.(\w+)$", source, flags=re.MULTILINE))
    uses = re.findall(r"self\.ui\.(\w+)\.(\w+)", source)
    uses += [(aliases[name], member) for name, member in re.findall(r"\b(\w+)\.(\w+)\(", source) if name in aliases]
    checked = 0
    for widget, member in uses:
        if widget not in classes or member == "connect":  # connect: PythonQt's signal connection
            continue
        # PythonQt offers a Qt property as an attribute (button.enabled), a method as a method.
        is_property = classes[widget].staticMetaObject.indexOfProperty(member) >= 0
        assert is_property or hasattr(classes[widget], member), (widget, member)
        checked += 1
    for widget, signal in re.findall(r'self\.ui\.(\w+)\.connect\("([^"]+)"', source):
        if widget in classes:
            normalized = QtCore.QMetaObject.normalizedSignature(signal).data().decode()
            assert classes[widget].staticMetaObject.indexOfSignal(normalized) >= 0, (widget, signal)
            checked += 1
    assert checked >= 35


def test_no_two_items_share_a_cell_of_a_form_layout():
    """Qt's uic accepts two widgets in one row and column and then draws them on top of each other."""
    root = ET.parse(UI_FILE).getroot()
    layouts = [layout for layout in root.iter("layout") if layout.get("class") in ("QFormLayout", "QGridLayout")]
    assert len(layouts) >= 4
    for layout in layouts:
        cells = [(item.get("row"), item.get("column")) for item in layout.findall("item")]
        assert len(cells) == len(set(cells)), layout.get("name")


# The model's path from the detection's arrays to its probability and back.
DETECTION_PATH = (
    "detection.py",
    "detection_job.py",
    "model/inference.py",
    "model/preprocessing.py",
    "model/network.py",
    "model/weights.py",
)
NUMPY_BRIDGE = {"from_numpy", "numpy", "as_tensor", "asarray", "__array__"}  # torch.*, Tensor.* (not np.*)


@pytest.mark.parametrize("path", DETECTION_PATH)
def test_the_detection_path_never_uses_torchs_numpy_bridge(path):
    """torch < 2.3 (Slicer 5.10 on macOS) has no numpy bridge under numpy 2: arrays cross by the buffer protocol."""
    tree = ast.parse((MODULE_DIR / "PETCTLesionsLib" / path).read_text())
    used = sorted(
        f"line {node.lineno}: .{node.attr}"
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute)
        and node.attr in NUMPY_BRIDGE
        and not (isinstance(node.value, ast.Name) and node.value.id in ("np", "numpy"))
    )
    assert used == []
