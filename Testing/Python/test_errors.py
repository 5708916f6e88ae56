"""The one error contract (errors.py) and the one progress/cancel mechanism (jobs.py).

What the command line does with each class of error, driven through ``main`` with inputs that
raise it for real where that is cheap (a missing path, a file in the way, a missing model file),
else by a library function made to raise it; that every exception class the library defines is
one of errors.py's; and that no source file decides by an error's words or defines a second
progress callback or cancellation.
"""

from __future__ import annotations

import errno
import importlib
import inspect
import pkgutil
import re
from pathlib import Path

import pytest

import PETCTLesionsLib
from PETCTLesionsLib import cli
from PETCTLesionsLib.cli import main
from PETCTLesionsLib.errors import (
    Cancelled,
    InputError,
    ModelFileError,
    NoSpaceError,
    OutputExistsError,
    PETCTLesionsError,
    WriteError,
)
from PETCTLesionsLib.jobs import check_cancel, sub_progress

LIBRARY = Path(PETCTLesionsLib.__file__).parent
BUG_LINE = (
    "petct-lesions {command}: internal error (a bug): please report it at "
    "https://github.com/PETCTLesions/SlicerPETCTLesions/issues with the traceback above\n"
)


# ------------------------------------------------------------------------------------- the classes


def test_the_classes_are_what_callers_catch():
    assert issubclass(InputError, ValueError) and issubclass(ModelFileError, InputError)
    assert issubclass(OutputExistsError, FileExistsError) and issubclass(NoSpaceError, WriteError)
    assert issubclass(WriteError, OSError) and not issubclass(Cancelled, (ValueError, OSError))
    full = NoSpaceError(errno.ENOSPC, "/out/a.nii.gz", "no space left on {path}")
    assert str(full) == "no space left on /out/a.nii.gz" and full.filename == "/out/a.nii.gz"
    assert str(full.naming("/out/b.nii.gz")) == "no space left on /out/b.nii.gz"
    refused = OutputExistsError("a.csv: already exists; refusing to overwrite it", " (choose another --out)")
    assert str(refused) == "a.csv: already exists; refusing to overwrite it (choose another --out)"
    assert refused.hint == " (choose another --out)" and OutputExistsError("a.csv: in the way").hint == ""


def _library_modules():
    """Every module of the package that imports here; those needing what is not installed are skipped."""
    for info in pkgutil.walk_packages([str(LIBRARY)], "PETCTLesionsLib."):
        try:
            yield importlib.import_module(info.name)
        except ModuleNotFoundError as missing:
            assert missing.name.split(".")[0] in ("torch", "slicer", "vtk", "qt"), info.name


def test_every_exception_class_of_the_library_is_a_petctlesions_error():
    defined = [
        (module.__name__, name, value)
        for module in _library_modules()
        for name, value in inspect.getmembers(module, inspect.isclass)
        if issubclass(value, BaseException) and value.__module__ == module.__name__
    ]
    assert len(defined) >= 20  # the readers', the formats', the writers', errors.py's own
    strays = [f"{module}.{name}" for module, name, value in defined if not issubclass(value, PETCTLesionsError)]
    assert strays == []


def _sources():
    return sorted(LIBRARY.rglob("*.py")) + [LIBRARY.parent / "PETCTLesions.py"]


def test_no_source_decides_by_an_errors_words():
    # Words of other libraries' errors, which carry nothing else: ITK's "Reason:" (fileio.itk_write_error)
    # and zlib's and gzip's (formats/nifti.py). Our own errors say what they are by their class.
    foreign = {("fileio.py", "Reason:"), ("nifti.py", "CRC check failed"), ("nifti.py", "incorrect data check")}
    foreign |= {("nifti.py", "Incorrect length"), ("nifti.py", "incorrect length check")}
    foreign |= {("nifti.py", "Not a gzipped file")}
    sniffing = re.compile(r"""["']([^"'\n]+)["']\s+(?:not\s+)?in\s+(?:str\(\w+\)|message|text|error|reason)\b""")
    found = [
        f"{path.name}: {words!r}"
        for path in _sources()
        for words in sniffing.findall(path.read_text(encoding="utf-8"))
        if (path.name, words) not in foreign
    ]
    assert found == []


def test_progress_and_cancellation_are_defined_once_in_jobs_and_errors():
    definitions = re.compile(
        r"Callable\[\[float, str\], None\]|Callable\[\[\], bool\]"
        r"|^class \w*Cancel\w*\(|^\s*def _?(?:sub_progress|check_cancel)\(",
        re.MULTILINE,
    )
    found = [
        f"{path.relative_to(LIBRARY.parent)}: {match}"
        for path in _sources()
        if path.name not in ("jobs.py", "errors.py")
        for match in definitions.findall(path.read_text(encoding="utf-8"))
    ]
    assert found == []


def test_sub_progress_maps_a_part_and_check_cancel_raises_cancelled():
    seen = []
    part = sub_progress(lambda fraction, message: seen.append((round(fraction, 6), message)), 0.2, 0.6)
    part(0.0, "start")
    part(0.5, "half")
    part(1.0, "end")
    assert seen == [(0.2, "start"), (0.4, "half"), (0.6, "end")]
    assert sub_progress(None, 0.2, 0.6) is None
    check_cancel(None)
    check_cancel(lambda: False)
    with pytest.raises(Cancelled, match="lesion detection was cancelled"):
        check_cancel(lambda: True, "lesion detection was cancelled")


# ------------------------------------------------------------------------------ the CLI's exit codes


def test_bad_input_is_refused_in_one_line_with_exit_2(tmp_path, capsys):
    missing = tmp_path / "missing"
    assert main(["info", str(missing)]) == 2
    assert capsys.readouterr().err == f"petct-lesions info: error: {missing}: no such file or folder\n"

    label = tmp_path / "case.nii.gz"
    label.write_bytes(b"")
    assert main(["evaluate", "--pred", str(label), "--ref", str(tmp_path)]) == 2
    assert capsys.readouterr().err == (
        f"petct-lesions evaluate: error: --pred {label} and --ref {tmp_path} must both be label files or both folders\n"
    )


def test_an_output_in_the_way_is_refused_with_how_to_replace_it(tmp_path, capsys, monkeypatch):
    from PETCTLesionsLib.synthetic import synth

    truth = synth._case_outputs(tmp_path, "lung", synth._identity("lung", 1, 0))[1]  # the first case's truth table
    truth.parent.mkdir(parents=True)
    truth.write_text("an earlier run's")
    monkeypatch.setattr(synth, "make_phantom", lambda config: pytest.fail("generated before refusing"))

    assert main(["synth", "--out", str(tmp_path), "--size", "small", "--quiet"]) == 2
    assert capsys.readouterr().err == (
        f"petct-lesions synth: error: {truth}: already exists; refusing to overwrite it (--overwrite replaces it)\n"
    )

    # A refusal that already says what to do gets no second hint.
    def refuse(*args, **kwargs):
        raise OutputExistsError(f"{truth}: already exists; refusing to overwrite it", " (choose another --out)")

    monkeypatch.setattr(synth, "generate_dataset", refuse)
    assert main(["synth", "--out", str(tmp_path), "--quiet"]) == 2
    assert capsys.readouterr().err == (
        f"petct-lesions synth: error: {truth}: already exists; refusing to overwrite it (choose another --out)\n"
    )


@pytest.mark.parametrize(
    "error",
    [
        NoSpaceError(errno.ENOSPC, "/out/case.nii.gz", "no space left on {path}; free some space"),
        PermissionError(errno.EACCES, "Permission denied", "/out"),
    ],
    ids=["WriteError", "OSError"],
)
def test_a_file_that_cannot_be_written_is_exit_2_in_one_line(error, tmp_path, capsys, monkeypatch):
    from PETCTLesionsLib.synthetic import synth

    def fail(*args, **kwargs):
        raise error

    monkeypatch.setattr(synth, "generate_dataset", fail)
    assert main(["synth", "--out", str(tmp_path), "--quiet"]) == 2
    assert capsys.readouterr().err == f"petct-lesions synth: error: {error}\n"


def test_cancelled_is_exit_130_as_ctrl_c(tmp_path, capsys, monkeypatch):
    from PETCTLesionsLib.synthetic import synth

    def cancelled(*args, progress=None, **kwargs):
        check_cancel(lambda: True)

    monkeypatch.setattr(synth, "generate_dataset", cancelled)
    assert main(["synth", "--out", str(tmp_path), "--quiet"]) == cli.EXIT_CANCELLED == 130
    assert capsys.readouterr().err == "petct-lesions synth: cancelled by the user\n"


def test_pytorch_missing_is_exit_2_in_one_line(tmp_path, capsys, monkeypatch):
    find_spec = cli.importlib.util.find_spec
    monkeypatch.setattr(
        cli.importlib.util, "find_spec", lambda name, *a: None if name == "torch" else find_spec(name, *a)
    )
    assert main(["predict", str(tmp_path), "--out", str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err
    assert error.startswith("petct-lesions predict: error: predict runs the lesion model, which needs PyTorch (not ")
    assert error.count("\n") == 1


@pytest.mark.torch
def test_a_missing_model_file_is_exit_2_in_one_line(tmp_path, capsys):
    (tmp_path / "in").mkdir()
    missing = tmp_path / "no-such-model.json"
    command = ["predict", str(tmp_path / "in"), "--out", str(tmp_path / "out"), "--model", str(missing)]
    assert main(command) == 2
    assert capsys.readouterr().err.startswith(f"petct-lesions predict: error: {missing}: model manifest not found")


def test_a_bug_is_shown_with_its_traceback_and_exit_3(tmp_path, capsys, monkeypatch):
    from PETCTLesionsLib import info

    def broken(*args, **kwargs):
        return {}["studies"]  # a KeyError, as a bug gives one

    monkeypatch.setattr(info, "info_report", broken)
    assert main(["info", str(tmp_path)]) == cli.EXIT_BUG == 3
    error = capsys.readouterr().err
    assert error.startswith("Traceback (most recent call last):\n") and "in broken\n" in error
    assert error.endswith("KeyError: 'studies'\n" + BUG_LINE.format(command="info"))


@pytest.mark.torch
def test_predict_does_not_take_a_bug_for_a_study_it_could_not_process(
    small_study, tmp_path_factory, capsys, monkeypatch
):
    from PETCTLesionsLib import study

    def broken(*args, **kwargs):
        raise KeyError("pet_series")

    monkeypatch.setattr(study, "load_study", broken)
    out = tmp_path_factory.mktemp("out")
    assert main(["predict", str(small_study.root), "--out", str(out), "--device", "cpu", "--no-pictures"]) == 3
    captured = capsys.readouterr()
    assert "NOT processed" not in captured.out
    assert captured.err.endswith("KeyError: 'pet_series'\n" + BUG_LINE.format(command="predict"))
    assert list(out.iterdir()) == []


@pytest.mark.torch
def test_predict_reports_a_refused_study_and_goes_on_with_exit_1(small_study, tmp_path_factory, capsys, monkeypatch):
    from PETCTLesionsLib import study

    def unreadable(*args, **kwargs):
        raise InputError("ct/1-01.dcm: cannot decode the pixel data")

    monkeypatch.setattr(study, "load_study", unreadable)
    out = tmp_path_factory.mktemp("out")
    assert main(["predict", str(small_study.root), "--out", str(out), "--device", "cpu", "--no-pictures"]) == 1
    assert "NOT processed: ct/1-01.dcm: cannot decode the pixel data" in capsys.readouterr().out
