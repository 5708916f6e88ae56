"""The module panel's presenter (PETCTLesionsLib/module_presenter.py), driven as the widget drives it.

The widget forwards each Qt signal to one presenter method and draws what the presenter asks
through its view. Here the view is :class:`RecordingView`, which keeps what it was asked to
show and, like Qt, reports a selection change when rows are removed or selected. The Logic is a
stand-in with the real Logic's method names (checked against PETCTLesions.py below), except in
the last test, which runs the panel on the demo study with the module's real Logic, scene and
detection worker.
"""

from __future__ import annotations

import ast
import functools
import inspect
import logging
import time
import types
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import pytest
import test_module_logic

from PETCTLesionsLib.detection_job import JobStatus
from PETCTLesionsLib.errors import Cancelled, InputError
from PETCTLesionsLib.module_presenter import ERROR, INFO, WARNING, ButtonState, Message, ModulePresenter, error_message

# PETCTLesions.py imported with stand-ins for what exists only in the application (a fixture), and its file.
slicer_module = test_module_logic.slicer_module
MODULE_FILE = test_module_logic.MODULE_FILE


class RecordingView:
    """The panel as the presenter sees it: what it was last asked to show, every dialog, and Qt's selection signal."""

    def __init__(self) -> None:
        self.presenter: Optional[ModulePresenter] = None
        self.choices: List[Tuple[str, str]] = []
        self.rows: List[Tuple[str, ...]] = []
        self.selection: Optional[int] = None
        self.lesion_class = ""
        self.buttons: Optional[ButtonState] = None
        self.progress: Optional[Tuple[Optional[float], str]] = None  # never shown
        self.messages: List[Message] = []
        self.questions: List[str] = []
        self.answer = True  # to every question
        self.polling = False
        self.busy_blocks = 0
        self.load_reports: List[Tuple[float, str]] = []  # what reached the load's progress dialog
        self.press_cancel = False  # the user presses Cancel in the load's progress dialog
        self.segment_editor: Optional[Tuple[Any, Any, Optional[str]]] = None
        self.summary = ""
        self.model_choice: Optional[Tuple[bool, str]] = None  # (the nnU-Net fields shown, the folder's description)
        self.cases: List[str] = []  # the nnU-Net dataset's cases to choose from

    # Qt's QTableWidget emits itemSelectionChanged when the selection changes, also from code.
    def _select(self, index: Optional[int]) -> None:
        changed = index != self.selection
        self.selection = index
        if changed and self.presenter is not None:
            self.presenter.select_row(index)

    def click_row(self, index: int) -> None:
        """The user clicks a row."""
        self._select(index)

    def set_study_choices(self, choices):
        self.choices = list(choices)

    def set_rows(self, rows):
        self.rows = [tuple(row) for row in rows]
        if self.selection is not None and self.selection >= len(rows):
            self._select(None)  # Qt drops the selection of a removed row, and says so

    def set_selection(self, index):
        self._select(index)

    def set_lesion_class(self, class_name):
        self.lesion_class = class_name

    def set_button_state(self, state):
        self.buttons = state

    def show_progress(self, fraction, text):
        self.progress = (fraction, text)

    def show_message(self, message):
        self.messages.append(message)

    def confirm(self, question):
        self.questions.append(question)
        return self.answer

    @contextmanager
    def busy(self):
        self.busy_blocks += 1
        yield

    def run_with_progress(self, title, work):
        return work(lambda fraction, message: self.load_reports.append((fraction, message)), lambda: self.press_cancel)

    def start_polling(self):
        self.polling = True

    def stop_polling(self):
        self.polling = False

    def open_segment_editor(self, segmentation, source_volume, segment_id):
        self.segment_editor = (segmentation, source_volume, segment_id)

    def show_export_summary(self, text):
        self.summary = text

    def show_model_choice(self, nnunet, text):
        self.model_choice = (nnunet, text)

    def set_case_choices(self, cases):
        self.cases = list(cases)


@dataclass
class Row:
    """The fields of ``mrml.review.LesionRow`` the panel reads."""

    segment_id: str
    name: str
    class_name: str = "A"
    status: str = ""
    mtv_ml: float = 1.5
    suv_max: float = 6.25
    suv_mean: float = 3.5
    tlg: float = 5.25
    slices_text: str = "3-5"
    centre_ras: Optional[Tuple[float, float, float]] = (1.0, 2.0, 3.0)


class Segmentation:
    def __init__(self, name: str) -> None:
        self._name = name

    def GetName(self) -> str:
        return self._name


class ScriptedJob:
    """A detection run that reports the given statuses, one per poll (the last one for ever)."""

    def __init__(self, *statuses: JobStatus) -> None:
        self._statuses = list(statuses)
        self.polls = 0
        self.cancelled = False

    def poll(self) -> JobStatus:
        self.polls += 1
        return self._statuses.pop(0) if len(self._statuses) > 1 else self._statuses[0]

    def cancel(self) -> None:
        self.cancelled = True


@dataclass
class StandInLogic:
    """``PETCTLesionsLogic``'s methods (the names are checked against PETCTLesions.py), on plain values."""

    torchRequirement = ">=2.1"
    rows: List[Row] = field(default_factory=list)  # the segments as lesionRows measures them
    found: List[Row] = field(default_factory=list)  # what finishDetection adds
    job: Optional[ScriptedJob] = None
    torch_installed: bool = True
    platform_note: str = ""
    choices: List[Any] = field(default_factory=list)
    problems: str = ""
    suv_warnings: Dict[str, List[str]] = field(default_factory=dict)  # PET node -> its SUV warnings
    errors: Dict[str, BaseException] = field(default_factory=dict)  # method name -> what it raises
    sources: List[str] = field(default_factory=list)  # where the study's annotations were imported from
    imported: List[Row] = field(default_factory=list)  # what importVocAnnotations / openNnUNetCase add
    changes: Optional[str] = None  # changesSinceImport's text (None: nothing imported)
    cases: Dict[Path, List[str]] = field(default_factory=dict)  # nnU-Net dataset folder -> its cases
    edited: List[str] = field(default_factory=list)  # segment IDs of imported lesions changed since import
    calls: List[Tuple[str, tuple]] = field(default_factory=list)

    def _call(self, name: str, *args) -> None:
        self.calls.append((name, args))
        if name in self.errors:
            raise self.errors[name]

    def called(self, name: str) -> List[tuple]:
        return [args for called, args in self.calls if called == name]

    def importDicomFolder(self, folder):
        self._call("importDicomFolder", folder)
        return self.choices, self.problems

    def loadStudyFromDatabase(self, choice, progress=None, cancel=None):
        self._call("loadStudyFromDatabase", choice)
        progress(0.5, "loading PET")
        if cancel():
            raise Cancelled("loading cancelled")
        return choice.ct, choice.pet

    def loadDemoStudy(self, seed, size="full", cacheFolder=None):
        self._call("loadDemoStudy", seed)
        return "demo CT", "demo PET"

    def studyWarningsToShow(self, petNode, pairWarnings=()):
        self._call("studyWarningsToShow", petNode)
        return list(pairWarnings) + self.suv_warnings.pop(petNode, [])  # the SUV ones once per PET node

    def showFusedStudy(self, parameterNode):
        self._call("showFusedStudy", parameterNode.ctVolume, parameterNode.petVolume)

    def applyCtPreset(self, ctNode, preset):
        self._call("applyCtPreset", ctNode, preset)

    def setPetColormap(self, petNode, name):
        self._call("setPetColormap", petNode, name)

    def setSuvWindow(self, petNode, suvMin, suvMax):
        self._call("setSuvWindow", petNode, suvMin, suvMax)

    def setPetOpacity(self, opacity):
        self._call("setPetOpacity", opacity)

    def ensureTorch(self):
        self._call("ensureTorch")
        return self.torch_installed

    def torchPlatformNote(self):
        return self.platform_note

    def startDetection(self, parameterNode):
        self._call("startDetection")
        return self.job

    def finishDetection(self, job, parameterNode):
        self._call("finishDetection", job)
        parameterNode.segmentation = parameterNode.segmentation or Segmentation("Lesions")
        self.rows += self.found
        return types.SimpleNamespace(
            segmentation=parameterNode.segmentation, segment_ids=[row.segment_id for row in self.found], notes=[]
        )

    def undoDetection(self, nodes, parameterNode):
        self._call("undoDetection", nodes)
        self.rows = [row for row in self.rows if row.segment_id not in nodes.segment_ids]

    def lesionRows(self, parameterNode):
        self._call("lesionRows")
        return list(self.rows)

    def centreViewsOn(self, ras):
        self._call("centreViewsOn", ras)

    def setReviewStatus(self, parameterNode, segmentId, status):
        self._call("setReviewStatus", segmentId, status)
        next(row for row in self.rows if row.segment_id == segmentId).status = status

    def setLesionClass(self, parameterNode, segmentId, className):
        self._call("setLesionClass", segmentId, className)
        next(row for row in self.rows if row.segment_id == segmentId).class_name = className

    def deleteLesion(self, parameterNode, segmentId):
        self._call("deleteLesion", segmentId)
        self.rows = [row for row in self.rows if row.segment_id != segmentId]
        return 1

    def addBoxOnSlice(self, parameterNode, sliceNode, className, segmentId=None):
        self._call("addBoxOnSlice", sliceNode, className, segmentId)

    def exportAnnotations(self, parameterNode):
        self._call("exportAnnotations")
        return types.SimpleNamespace(text=lambda: "wrote 1 nnU-Net case")

    def importVocAnnotations(self, parameterNode):
        self._call("importVocAnnotations", parameterNode.annotationFolder)
        parameterNode.segmentation = parameterNode.segmentation or Segmentation("Lesions")
        self.rows += self.imported
        self.sources = [f"VOC folder {parameterNode.annotationFolder / 'A0001'}"]
        self.changes = "changes since import: lesions 0 added, 0 removed, 0 changed, 2 unchanged"
        skipped = ["x.xml: no slice of CT 'CT' has this SOPInstanceUID; skipped"]
        return types.SimpleNamespace(skipped=skipped, text=lambda: "note: 3 VOC boxes imported\nskipped: " + skipped[0])

    def listNnUNetCases(self, folder):
        self._call("listNnUNetCases", folder)
        if folder not in self.cases:
            raise InputError(f"{folder}: not an nnU-Net raw dataset folder (no dataset.json)")
        return self.cases[folder]

    def openNnUNetCase(self, folder, caseId):
        self._call("openNnUNetCase", folder, caseId)
        self.rows = list(self.imported)
        self.sources = [f"nnU-Net case {caseId!r} of {folder}"]
        return types.SimpleNamespace(
            ct=f"{caseId} CT", pet=f"{caseId} PET", segmentation=Segmentation(f"{caseId} lesions"), notes=["no DICOM"]
        )

    def annotationSources(self, parameterNode):
        self._call("annotationSources")
        return list(self.sources)

    def changesSinceImport(self, parameterNode):
        self._call("changesSinceImport")
        if self.changes is None:
            return None
        return types.SimpleNamespace(text=lambda: self.changes, changed_lesions=frozenset(self.edited))

    def exportAnnotationsBack(self, parameterNode, replace):
        self._call("exportAnnotationsBack", replace)
        return types.SimpleNamespace(text=lambda: f"wrote 1 file\nnote: {self.changes}")


def parameters(**values) -> types.SimpleNamespace:
    """The parameter node's fields the panel reads, with the module's defaults."""
    node = types.SimpleNamespace(
        dicomFolder=Path(),
        annotationFolder=Path(),
        nnunetCaseFolder=Path(),
        ctVolume=None,
        petVolume=None,
        demoSeed=1,
        ctPreset="Mediastinum",
        segmentation=None,
        modelKind="Bundled",
        modelPath=Path(),
        nnunetFolder=Path(),
        nnunetFolds="",
        nnunetCheckpoint="final",
        nnunetTta=False,
        useModelThreshold=True,
    )
    for name, value in values.items():
        assert hasattr(node, name), name
        setattr(node, name, value)
    return node


def panel(logic: StandInLogic, params: types.SimpleNamespace) -> Tuple[ModulePresenter, RecordingView]:
    view = RecordingView()
    presenter = ModulePresenter(logic, view)
    view.presenter = presenter
    presenter.set_parameter_node(params)
    return presenter, view


def running(fraction: float, message: str, *log_lines: str) -> JobStatus:
    return JobStatus("running", fraction, message, list(log_lines))


def found() -> List[Row]:
    """The two lesions a detection run adds (new rows each time: the review changes them)."""
    return [Row("Segment_1", "Lesion 1"), Row("Segment_2", "Lesion 2", class_name="G", suv_max=12.0, slices_text="7")]


def test_the_stand_in_logic_has_only_the_real_logics_methods_and_arguments():
    tree = ast.parse(MODULE_FILE.read_text())
    logic = next(node for node in tree.body if isinstance(node, ast.ClassDef) and node.name == "PETCTLesionsLogic")
    real = {node.name: [arg.arg for arg in node.args.args] for node in logic.body if isinstance(node, ast.FunctionDef)}
    stand_in = {
        name: list(inspect.signature(method).parameters)
        for name, method in vars(StandInLogic).items()
        if inspect.isfunction(method) and not name.startswith("_") and name != "called"
    }
    assert {name: real.get(name) for name in stand_in} == stand_in
    attributes = {target.id for node in logic.body if isinstance(node, ast.Assign) for target in node.targets}
    assert "torchRequirement" in attributes


def test_a_detection_run_from_start_through_progress_to_its_lesions_in_the_table(caplog):
    job = ScriptedJob(
        running(0.25, "preprocessing"),
        running(0.75, "running the model", "tile 1 of 2", "tile 2 of 2"),
        JobStatus("finished", 1.0, "done"),
    )
    logic = StandInLogic(job=job, found=found())
    presenter, view = panel(logic, parameters(ctVolume="CT", petVolume="PET"))
    assert view.buttons.detect and view.buttons.detect_text == "Detect lesions" and not view.buttons.undo_detection

    presenter.detect_or_cancel()
    assert presenter.detection_running and view.polling
    assert view.progress == (0.0, "Starting...")
    assert view.buttons.detect and view.buttons.detect_text == "Cancel"  # the same button cancels

    presenter.poll_detection()
    assert view.progress == (0.25, "preprocessing")
    with caplog.at_level(logging.INFO):
        presenter.poll_detection()
    assert view.progress == (0.75, "running the model")
    assert "[lesion detection] tile 2 of 2" in caplog.messages  # the worker's output, in Slicer's log
    assert logic.called("finishDetection") == []  # nothing reaches the scene before the run is done

    presenter.poll_detection()
    assert logic.called("finishDetection") == [(job,)]
    assert not presenter.detection_running and not view.polling
    assert view.progress == (None, "2 lesions added to 'Lesions'.")  # the bar hidden, the status kept
    assert view.buttons.detect_text == "Detect lesions" and view.buttons.undo_detection
    assert view.rows == [
        ("Lesion 1", "A", "6.25", "3.50", "1.50", "5.2", "3-5", ""),
        ("Lesion 2", "G", "12.00", "3.50", "1.50", "5.2", "7", ""),
    ]
    assert view.messages == [] and not view.buttons.review  # nothing selected yet

    presenter.poll_detection()  # a tick the timer had queued: nothing happens twice
    assert job.polls == 3 and len(logic.called("finishDetection")) == 1

    presenter.undo_detection()
    assert logic.called("undoDetection") and view.rows == [] and not view.buttons.undo_detection


def test_cancel_mid_run_adds_nothing_and_puts_the_buttons_back():
    job = ScriptedJob(running(0.4, "running the model"))
    logic = StandInLogic(job=job, found=found())
    presenter, view = panel(logic, parameters(ctVolume="CT", petVolume="PET"))
    presenter.detect_or_cancel()
    presenter.poll_detection()
    assert view.progress == (0.4, "running the model")

    presenter.detect_or_cancel()  # the button says Cancel
    assert job.cancelled and not presenter.detection_running and not view.polling
    assert view.progress == (None, "Cancelled: nothing was added.")
    assert view.buttons.detect and view.buttons.detect_text == "Detect lesions" and not view.buttons.undo_detection
    presenter.poll_detection()  # a tick already queued
    assert logic.called("finishDetection") == [] and view.rows == [] and view.messages == []
    assert job.polls == 1


def test_closing_the_scene_mid_run_cancels_it_and_forgets_the_last_run():
    logic = StandInLogic(job=ScriptedJob(JobStatus("finished", 1.0, "done")), found=found())
    params = parameters(ctVolume="CT", petVolume="PET")
    presenter, view = panel(logic, params)
    presenter.detect_or_cancel()
    presenter.poll_detection()
    assert view.buttons.undo_detection
    second = logic.job = ScriptedJob(running(0.1, "preprocessing"))
    presenter.detect_or_cancel()
    presenter.poll_detection()

    presenter.scene_closing()  # then the widget lets go of the parameter node
    presenter.set_parameter_node(None)
    assert second.cancelled and not presenter.detection_running and not view.polling
    assert len(logic.called("finishDetection")) == 1  # the first run's only
    assert not view.buttons.undo_detection and not view.buttons.detect and view.rows == []


@pytest.mark.parametrize(
    ("error", "kind", "bug"),
    [
        (InputError("CT 'ct' and PET 'pet' are not on one grid"), WARNING, False),
        (KeyError("segment"), ERROR, True),
    ],
)
def test_a_failing_run_says_why_and_puts_the_buttons_back(error, kind, bug):
    logic = StandInLogic(job=ScriptedJob(JobStatus("finished", 1.0, "done")), found=found())
    logic.errors["finishDetection"] = error
    presenter, view = panel(logic, parameters(ctVolume="CT", petVolume="PET"))
    presenter.detect_or_cancel()
    presenter.poll_detection()

    (message,) = view.messages
    assert message.kind == kind and message.text.startswith(f"Lesion detection failed.\n\n{error}")
    assert ("please report it" in message.text) is bug
    assert ("Traceback" in message.details) is bug and ("finishDetection" in message.details) is bug
    assert not presenter.detection_running and not view.polling
    assert view.buttons.detect_text == "Detect lesions" and not view.buttons.undo_detection
    assert view.rows == [] and logic.called("lesionRows") == []  # nothing was added, nothing to measure


def test_detection_without_pytorch_or_with_a_platform_note():
    logic = StandInLogic(job=ScriptedJob(running(0.1, "preprocessing")), torch_installed=False)
    presenter, view = panel(logic, parameters(ctVolume="CT", petVolume="PET"))
    presenter.detect_or_cancel()  # the user declined the PyTorch install
    assert view.progress == (None, "Lesion detection needs PyTorch >=2.1, which was not installed.")
    assert logic.called("startDetection") == [] and not view.polling

    logic.torch_installed, logic.platform_note = True, "On macOS, lesion detection runs on the CPU"
    presenter.detect_or_cancel()
    presenter.detect_or_cancel()  # cancelled
    presenter.detect_or_cancel()  # and again: the note is not shown twice in a session
    (note,) = view.messages
    assert (note.kind, note.text, note.title) == (INFO, logic.platform_note, "Lesion detection on this computer")
    assert note.dont_show_again_key == "PETCTLesions/DontShowTorchPlatformNote"
    assert len(logic.called("startDetection")) == 2


def test_the_selected_lesion_stays_selected_by_its_segment_when_the_rows_move():
    logic = StandInLogic(rows=[Row("Segment_1", "Lesion 1"), Row("Segment_2", "Lesion 2", class_name="G")])
    logic.rows.append(Row("Segment_3", "Lesion 3", centre_ras=(9.0, 9.0, 9.0)))
    params = parameters(ctVolume="CT", petVolume="PET", segmentation=Segmentation("S"))
    presenter, view = panel(logic, params)
    assert [row[0] for row in view.rows] == ["Lesion 1", "Lesion 2", "Lesion 3"]
    assert not view.buttons.review

    view.click_row(2)
    assert presenter.selected_row.segment_id == "Segment_3" and view.buttons.review
    assert logic.called("centreViewsOn") == [((9.0, 9.0, 9.0),)]
    assert view.lesion_class == "A"

    # Lesion 1 is deleted elsewhere (Segment Editor) and the table measured again: Lesion 3 moves up
    # a row, and Qt drops the selection of the row that went; the lesion stays selected.
    logic.rows = logic.rows[1:]
    presenter.refresh_table()
    assert [row[0] for row in view.rows] == ["Lesion 2", "Lesion 3"]
    assert view.selection == 1 and presenter.selected_row.segment_id == "Segment_3" and view.buttons.review
    assert len(logic.called("centreViewsOn")) == 1  # the redraw is not a click: the views stay where they are

    presenter.set_review_status("rejected")
    assert logic.called("setReviewStatus") == [("Segment_3", "rejected")]
    assert view.rows[1][-1] == "rejected" and view.selection == 1

    presenter.set_lesion_class("G")
    assert logic.called("setLesionClass") == [("Segment_3", "G")] and view.rows[1][1] == "G"

    presenter.add_box("G")
    assert logic.called("addBoxOnSlice") == [(None, "G", "Segment_3")]  # None: the Logic's slice (Red)

    presenter.open_segment_editor()
    assert view.segment_editor == (params.segmentation, "PET", "Segment_3")

    view.answer = False
    presenter.delete_selected_lesion()
    assert view.questions == ["Delete 'Lesion 3' and its boxes? (Reject keeps it, hidden and not exported.)"]
    assert logic.called("deleteLesion") == []
    view.answer = True
    presenter.delete_selected_lesion()
    assert logic.called("deleteLesion") == [("Segment_3",)]
    assert [row[0] for row in view.rows] == ["Lesion 2"]
    assert view.selection is None and presenter.selected_row is None and not view.buttons.review


def test_the_buttons_need_a_study_a_ct_or_a_selection():
    logic = StandInLogic()
    params = parameters()
    presenter, view = panel(logic, params)
    assert view.buttons == ButtonState(
        load_study=False,
        detect=False,
        detect_text="Detect lesions",
        undo_detection=False,
        review=False,
        add_box=False,
        export=False,
        threshold=False,  # the model's own threshold by default
    )
    assert view.progress == (None, "")  # no progress bar until a run starts
    params.ctVolume = "CT"  # chosen in the Study panel: the parameter node tells the widget
    presenter.parameters_changed()
    assert view.buttons.add_box and not view.buttons.detect and not view.buttons.export
    params.petVolume, params.useModelThreshold = "PET", False
    presenter.parameters_changed()
    assert view.buttons.detect and view.buttons.export and view.buttons.threshold and not view.buttons.review

    presenter.open_segment_editor()  # no segmentation yet
    assert view.messages[-1] == Message(WARNING, "Run detection or choose a segmentation under Detect first.")
    assert view.segment_editor is None
    presenter.set_parameter_node(None)  # the scene closes
    assert not view.buttons.detect and not view.buttons.add_box and not view.buttons.threshold


def test_a_loaded_study_shows_the_pairs_and_suv_warnings_in_one_dialog_and_the_suv_ones_once():
    choice = types.SimpleNamespace(
        label="Chest PET/CT", rule="attenuation-corrected PET", ct="CT 2", pet="PET 3", warnings=["CT covers 75%"]
    )
    logic = StandInLogic(choices=[choice], problems="series 7: a screenshot")
    logic.suv_warnings["PET 3"] = ["the uptake time is 2 min"]
    params = parameters(dicomFolder=Path("/data/dicom"), segmentation=Segmentation("old"))
    presenter, view = panel(logic, params)

    presenter.import_dicom_folder()
    assert logic.called("importDicomFolder") == [(Path("/data/dicom"),)]
    assert view.choices == [("Chest PET/CT", "attenuation-corrected PET")] and view.buttons.load_study
    assert view.messages == [Message(WARNING, "series 7: a screenshot", title="Series that cannot be loaded")]

    presenter.load_study(0)
    assert view.load_reports == [(0.5, "loading PET")]  # the loader's progress reached the dialog
    assert (params.ctVolume, params.petVolume, params.segmentation) == ("CT 2", "PET 3", None)
    assert logic.called("showFusedStudy") == [("CT 2", "PET 3")]
    assert view.messages[-1] == Message(
        WARNING, "CT covers 75%\n\nthe uptake time is 2 min", title="Study loaded, but check these warnings"
    )
    presenter.show_fused_study()  # "Show fused PET/CT" again: the SUV warnings were shown already
    presenter.load_study(0)  # the pair's warnings, at each load
    assert [m.text for m in view.messages[1:]] == ["CT covers 75%\n\nthe uptake time is 2 min", "CT covers 75%"]
    assert view.busy_blocks >= 3


def test_a_cancelled_or_failed_load_changes_nothing():
    choice = types.SimpleNamespace(label="Chest", rule="", ct="CT 2", pet="PET 3", warnings=[])
    logic = StandInLogic(choices=[choice])
    params = parameters(ctVolume="old CT", petVolume="old PET")
    presenter, view = panel(logic, params)
    presenter.import_dicom_folder()
    view.press_cancel = True
    presenter.load_study(0)
    assert view.messages == []  # the user's own cancel needs no dialog
    assert (params.ctVolume, params.petVolume) == ("old CT", "old PET") and logic.called("showFusedStudy") == []

    logic.errors["loadDemoStudy"] = OSError(28, "No space left on device")
    presenter.load_demo_study()
    (message,) = view.messages
    assert message == Message(ERROR, "Failed to create the demo study.\n\n[Errno 28] No space left on device")
    presenter.load_study(5)  # no such pair (the list was emptied): nothing happens
    assert len(logic.called("loadStudyFromDatabase")) == 1


def test_entering_the_module_measures_the_table_quietly(caplog):
    logic = StandInLogic(rows=[Row("Segment_1", "Lesion 1")])
    logic.errors["lesionRows"] = InputError("PET volume 'PET' is not in SUVbw; load it through the module first")
    with caplog.at_level(logging.WARNING):
        presenter, view = panel(logic, parameters(ctVolume="CT", petVolume="PET", segmentation=Segmentation("S")))
    assert view.messages == [] and view.rows == []
    assert "Lesion table not updated: PET volume 'PET' is not in SUVbw" in caplog.text
    presenter.refresh_table()  # the Refresh button: the same problem in a dialog
    assert view.messages[-1].text.startswith("Failed to measure the lesions.\n\nPET volume 'PET' is not in SUVbw")


def test_display_and_export_go_to_the_logic():
    logic = StandInLogic()
    params = parameters(ctVolume="CT", petVolume="PET")
    presenter, view = panel(logic, params)
    presenter.apply_ct_preset("Lung")
    presenter.set_pet_colormap("PET-Rainbow2")
    presenter.set_pet_colormap("")  # the combo box emptied
    presenter.set_suv_window(2.0, 2.0)  # an empty window is not applied
    presenter.set_suv_window(0.0, 6.0)
    presenter.set_pet_opacity(0.7)
    assert params.ctPreset == "Lung"
    assert [(name, args) for name, args in logic.calls if name != "lesionRows"] == [
        ("applyCtPreset", ("CT", "Lung")),
        ("setPetColormap", ("PET", "PET-Rainbow2")),
        ("setSuvWindow", ("PET", 0.0, 6.0)),
        ("setPetOpacity", (0.7,)),
    ]
    params.modelPath = Path("/models/mine.json")
    presenter.use_bundled_model()
    assert params.modelPath == Path()
    presenter.export()
    assert view.summary == "wrote 1 nnU-Net case"


def test_voc_boxes_imported_onto_the_study_reviewed_and_written_back_after_asking():
    logic = StandInLogic(imported=[Row("Segment_1", "Lesion 1", status="imported", mtv_ml=0.0)])
    params = parameters()
    presenter, view = panel(logic, params)
    assert not view.buttons.import_annotations and not view.buttons.export_back
    presenter.import_voc_annotations()  # no study yet
    assert view.messages[-1] == Message(WARNING, "Load the DICOM study first: VOC files name its CT slices.")

    params.ctVolume, params.petVolume = "CT", "PET"
    presenter.parameters_changed()
    assert view.buttons.import_annotations and view.buttons.export_back
    presenter.import_voc_annotations()  # no folder chosen
    assert "Choose the VOC folder" in view.messages[-1].text and logic.called("importVocAnnotations") == []
    params.annotationFolder = Path("/data/Annotation")
    presenter.import_voc_annotations()
    assert logic.called("importVocAnnotations") == [(Path("/data/Annotation"),)]
    assert view.rows[0][0] == "Lesion 1" and view.rows[0][-1] == "imported"
    assert view.messages[-1] == Message(
        WARNING,
        "note: 3 VOC boxes imported\nskipped: x.xml: no slice of CT 'CT' has this SOPInstanceUID; skipped",
        title="VOC annotations imported, but some were left out",
    )

    logic.edited = ["Segment_1"]  # the annotator corrects the lesion: the table says so
    presenter.refresh_table()
    assert view.rows[0][-1] == "imported, edited"

    view.answer = False  # "Write back?" -> No: nothing written
    presenter.export_back()
    assert view.questions[-1].startswith("Write the corrected annotations back over VOC folder /data/Annotation/A0001?")
    assert ".bak-" in view.questions[-1] and logic.called("exportAnnotationsBack") == []
    view.answer = True
    presenter.export_back()
    assert logic.called("exportAnnotationsBack") == [(True,)]
    assert view.summary.endswith("changes since import: lesions 0 added, 0 removed, 0 changed, 2 unchanged")
    presenter.export()  # elsewhere: the Export panel's report, then the same summary
    assert (
        view.summary == "wrote 1 nnU-Net case\nchanges since import: lesions 0 added, 0 removed, 0 changed, 2 unchanged"
    )


def test_write_back_without_an_import_says_so_and_asks_nothing():
    logic = StandInLogic()
    presenter, view = panel(logic, parameters(ctVolume="CT", petVolume="PET"))
    presenter.export_back()
    assert view.questions == [] and "nothing to write back to" in view.messages[-1].text
    presenter.export()
    assert view.summary == "wrote 1 nnU-Net case"  # nothing imported: no summary of changes


def test_an_nnunet_case_is_listed_when_its_dataset_is_chosen_and_opens_as_a_study():
    dataset = Path("/data/nnUNet_raw/Dataset221_autoPETII")
    logic = StandInLogic(cases={dataset: ["fdg_0a1b  2004-05-12", "psma_2c3d"]})
    logic.imported = [Row("Segment_1", "Lesion 1", status="imported"), Row("Segment_2", "Lesion 2", status="imported")]
    params = parameters(segmentation=Segmentation("old"))
    presenter, view = panel(logic, params)
    presenter.open_nnunet_case("")  # nothing chosen
    assert "Choose an nnU-Net dataset folder" in view.messages[-1].text

    params.nnunetCaseFolder = Path("/data/not a dataset")
    presenter.parameters_changed()
    assert view.cases == []
    presenter.open_nnunet_case("")
    assert view.messages[-1].text == "/data/not a dataset: not an nnU-Net raw dataset folder (no dataset.json)"
    params.nnunetCaseFolder = dataset
    presenter.parameters_changed()
    presenter.parameters_changed()  # another field changed: the folder is not listed again
    assert view.cases == ["fdg_0a1b  2004-05-12", "psma_2c3d"] and len(logic.called("listNnUNetCases")) == 2

    presenter.open_nnunet_case("fdg_0a1b  2004-05-12")
    assert (params.ctVolume, params.petVolume) == ("fdg_0a1b  2004-05-12 CT", "fdg_0a1b  2004-05-12 PET")
    assert params.segmentation.GetName() == "fdg_0a1b  2004-05-12 lesions"
    assert logic.called("showFusedStudy") == [("fdg_0a1b  2004-05-12 CT", "fdg_0a1b  2004-05-12 PET")]
    assert [row[-1] for row in view.rows] == ["imported", "imported"]
    assert view.messages[-1] == Message(INFO, "no DICOM", title="nnU-Net case opened")

    logic.errors["openNnUNetCase"] = InputError("case 'psma_2c3d': missing labelsTr/psma_2c3d.nii.gz")
    presenter.open_nnunet_case("psma_2c3d")  # refused: the study shown stays
    assert params.ctVolume == "fdg_0a1b  2004-05-12 CT"
    assert (
        view.messages[-1].text
        == "Failed to open the nnU-Net case.\n\ncase 'psma_2c3d': missing labelsTr/psma_2c3d.nii.gz"
    )


def test_errors_become_dialogs_by_the_error_contract():
    assert error_message("Failed to load.", Cancelled("cancelled"), "") is None
    refusal = error_message("Failed to load.", InputError("series 3: slices missing"), "Traceback ...")
    assert refusal == Message(WARNING, "Failed to load.\n\nseries 3: slices missing")  # no traceback for a refusal
    environment = error_message("Failed to load.", PermissionError(13, "Permission denied", "/data"), "Traceback ...")
    assert environment == Message(ERROR, "Failed to load.\n\n[Errno 13] Permission denied: '/data'")
    bug = error_message("Failed to load.", ValueError("could not broadcast"), "Traceback ...")
    assert bug.kind == ERROR and bug.details == "Traceback ..."
    assert bug.text.startswith("Failed to load.\n\ncould not broadcast\n\nThis is an unexpected error (a bug")
    assert "https://github.com/PETCTLesions/SlicerPETCTLesions/issues" in bug.text


@pytest.mark.slicer
@pytest.mark.torch
def test_the_panel_on_the_demo_study_with_the_modules_logic_and_worker(
    slicer_module, mrml_scene, tmp_path, monkeypatch
):
    import slicer

    monkeypatch.setattr(slicer.util, "startupEnvironment", lambda: None)  # the worker gets this interpreter
    logic = slicer_module.PETCTLesionsLogic()
    monkeypatch.setattr(
        logic, "loadDemoStudy", functools.partial(logic.loadDemoStudy, size="small", cacheFolder=tmp_path)
    )
    monkeypatch.setattr(logic, "ensureTorch", lambda: True)  # PyTorchUtils exists only in the application
    params = test_module_logic._parameter_node(slicer_module, device="cpu")
    presenter, view = panel(logic, params)
    assert not view.buttons.detect

    presenter.load_demo_study()
    assert view.messages == [] and view.buttons.detect and view.buttons.export
    red = mrml_scene.GetNodeByID("vtkMRMLSliceCompositeNodeRed")
    assert red.GetForegroundVolumeID() == params.petVolume.GetID()

    presenter.detect_or_cancel()
    deadline = time.monotonic() + 300
    while presenter.detection_running and time.monotonic() < deadline:
        time.sleep(0.2)
        presenter.poll_detection()  # the widget's timer
    assert view.messages == [] and not view.polling
    assert view.progress[0] is None and view.progress[1].startswith("3 lesions added to ")
    assert [row.segment_id for row in presenter.rows] == presenter.last_detection.segment_ids
    assert len(view.rows) == 3 and view.buttons.undo_detection

    view.click_row(1)
    second = presenter.selected_row.segment_id
    presenter.set_review_status("rejected")
    assert presenter.selected_row.segment_id == second and view.rows[1][-1] == "rejected"
    presenter.delete_selected_lesion()
    assert len(view.rows) == 2 and presenter.selected_row is None and view.messages == []
    presenter.undo_detection()
    assert params.segmentation is None and view.rows == []
    assert mrml_scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode") == 0
