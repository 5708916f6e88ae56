"""The Slicer module's panel without Qt: its state, and what each button does.

``PETCTLesionsWidget`` (PETCTLesions.py) forwards every Qt signal to one method of
:class:`ModulePresenter` and draws what the presenter asks through :class:`PanelView`. The
presenter holds what the panel knows and decides:

- the detection run: idle -> running (the widget's timer calls :meth:`ModulePresenter.poll_detection`;
  progress; Detect turns into Cancel) -> finished (lesions added, Undo enabled), failed or cancelled,
  each ending back at idle;
- the lesion table: the rows the Logic measures, and the selected lesion, kept by its segment ID
  when the rows are measured again (rows move when lesions are deleted, added or renamed);
- which buttons are enabled and what Detect says (:class:`ButtonState`);
- the annotations from files: a VOC folder's boxes imported onto the loaded DICOM study, an nnU-Net case
  opened as a study (its cases listed when its folder is chosen), the corrections written back over them
  once the user agreed, and what changed since the import shown after every export;
- what the user is told: the detection status and progress, and each dialog as a :class:`Message`
  (the widget shows it). Errors become dialogs by the library's error contract (:mod:`.errors`,
  :func:`error_message`).

The Logic (``PETCTLesionsLogic``: one call into the library per method), the view and the
parameter node are passed in, so that tests drive the panel with a recording view and a real or
stand-in Logic (Testing/Python/test_module_presenter.py). Nothing here imports Qt or Slicer.
"""

from __future__ import annotations

import logging
import traceback
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import (
    Any,
    Callable,
    ContextManager,
    FrozenSet,
    Iterator,
    List,
    Optional,
    Protocol,
    Sequence,
    Tuple,
    TypeVar,
)

from .errors import ISSUES_URL, Cancelled, InputError, PETCTLesionsError
from .jobs import CancelCallback, ProgressCallback
from .model.nnunet_model import NnUNetOptions, choose_folds

T = TypeVar("T")
Translate = Callable[[str], str]

INFO, WARNING, ERROR = "info", "warning", "error"
# Where the user can say "don't show this again" to the note on detection with this PyTorch (a settings key).
PLATFORM_NOTE_SETTINGS_KEY = "PETCTLesions/DontShowTorchPlatformNote"
# The parameter node's modelKind choices: the bundled model (or a manifest the user trained), or an nnU-Net folder.
BUNDLED_MODEL, NNUNET_MODEL = "Bundled", "nnU-Net model folder"


@dataclass(frozen=True)
class Message:
    """A dialog to show: ``kind`` is INFO, WARNING or ERROR; ``details`` is a traceback (a bug)."""

    kind: str
    text: str
    title: str = ""
    details: str = ""
    dont_show_again_key: str = ""  # a settings key: the dialog offers "Don't show again"


@dataclass(frozen=True)
class ButtonState:
    """Which of the panel's buttons are enabled, and what Detect says."""

    load_study: bool  # a PET/CT pair to load (from the last DICOM import)
    detect: bool  # a study to run on, or a run to cancel
    detect_text: str  # "Detect lesions", or "Cancel" while a run is going
    undo_detection: bool  # the last run's lesions can be taken back
    review: bool  # accept, reject, delete, class: a lesion is selected
    add_box: bool  # a CT to draw the box on
    export: bool  # a study to export
    threshold: bool  # the threshold slider: the user's own threshold, not the model's
    click_tools: bool = False  # "Add lesion by click", "Remove by click", the PET MIP: a PET to click on
    import_annotations: bool = False  # "Import VOC boxes": a CT (from DICOM) to put them on
    export_back: bool = False  # "Write back": a study whose annotations may have come from files


class PanelView(Protocol):
    """What the presenter asks of the panel; ``PETCTLesionsWidget`` does it with Qt calls."""

    def set_study_choices(self, choices: Sequence[Tuple[str, str]]) -> None:
        """The PET/CT pairs to choose from, as (label, tooltip: the pairing's rule)."""

    def set_rows(self, rows: Sequence[Sequence[str]]) -> None:
        """The lesion table's cells, row by row, in the .ui's column order (:func:`table_cells`)."""

    def set_selection(self, index: Optional[int]) -> None:
        """Select the table row ``index`` (None: no row)."""

    def set_lesion_class(self, class_name: str) -> None:
        """Show ``class_name`` in the class chooser."""

    def set_button_state(self, state: ButtonState) -> None:
        """Enable the buttons and word Detect as ``state`` says."""

    def show_progress(self, fraction: Optional[float], text: str) -> None:
        """The detection's progress bar at ``fraction`` (None: hidden) and its status line."""

    def show_message(self, message: Message) -> None:
        """Show ``message`` as a dialog."""

    def confirm(self, question: str) -> bool:
        """Ask a yes/no question; True for yes."""

    def busy(self) -> ContextManager[Any]:
        """The wait cursor while the block runs."""

    def run_with_progress(self, title: str, work: Callable[[ProgressCallback, CancelCallback], T]) -> T:
        """``work(progress, cancel)`` under a modal progress dialog, whose Cancel button ``cancel()`` reports."""

    def start_polling(self) -> None:
        """Call :meth:`ModulePresenter.poll_detection` on a timer until :meth:`stop_polling`."""

    def stop_polling(self) -> None:
        """Stop the timer."""

    def open_segment_editor(self, segmentation: Any, source_volume: Any, segment_id: Optional[str]) -> None:
        """Switch to the Segment Editor on ``segmentation`` (thresholds on ``source_volume``), at ``segment_id``."""

    def open_lesion_effect(self, segmentation: Any, source_volume: Any, mode: str) -> None:
        """Switch to the Segment Editor on ``segmentation`` with ``source_volume`` (the PET in SUV) as source
        volume, its "PET lesion" effect active in ``mode`` (``interactive.editor_options``: "add", "remove")."""

    def show_mip_view(self) -> None:
        """A layout with the 3D view that shows the PET MIP; its clicks go to :meth:`ModulePresenter.mip_clicked`."""

    def show_export_summary(self, text: str) -> None:
        """What the export wrote and left alone."""

    def show_model_choice(self, nnunet: bool, text: str) -> None:
        """The nnU-Net folder's fields shown (``nnunet``) or the bundled model's, and the folder's description."""

    def set_case_choices(self, cases: Sequence[str]) -> None:
        """The cases of the chosen nnU-Net dataset folder to choose from (empty: none, or not a dataset)."""


def table_cells(row: Any, edited: bool = False) -> Tuple[str, ...]:
    """One lesion row (``mrml.review.LesionRow``) as the table's text cells, in the .ui's column order:
    Lesion, Class, SUVmax, SUVmean, MTV (mL), TLG, Slices, Status. ``edited``: a lesion imported from files
    that the annotator changed since (its status then says so, e.g. "imported, edited")."""
    status = f"{row.status}, edited" if edited and row.status else ("edited" if edited else row.status)
    return (
        row.name,
        row.class_name,
        f"{row.suv_max:.2f}",
        f"{row.suv_mean:.2f}",
        f"{row.mtv_ml:.2f}",
        f"{row.tlg:.1f}",
        row.slices_text,
        status,
    )


def error_message(failure: str, error: BaseException, details: str, tr: Translate = str) -> Optional[Message]:
    """The dialog for ``error`` raised while doing what ``failure`` ("Failed to ...") names; None for none.

    By the error contract (:mod:`.errors`): the user's own cancel is no failure; an error the
    library raised on purpose, or an operating-system error, is shown with its message; anything
    else is a bug, shown with its traceback (``details``) and a request to report it.
    """
    if isinstance(error, Cancelled):
        return None
    text = f"{failure}\n\n{error}"
    if isinstance(error, PETCTLesionsError):
        return Message(WARNING, text)
    if isinstance(error, OSError):
        return Message(ERROR, text)
    bug = tr("This is an unexpected error (a bug in PET/CT Lesions): please report it, with the details, at {url}")
    return Message(ERROR, f"{text}\n\n{bug.format(url=ISSUES_URL)}", details=details)


def chosen_path(path: Any) -> Optional[Path]:
    """A path the user chose, or None for an empty field (the parameter node stores it as '.')."""
    return None if path is None or str(path) in ("", ".") else Path(path)


def parse_folds(text: str) -> Optional[Tuple[str, ...]]:
    """The folds field: empty -> None (every fold that holds the checkpoint, ensembled); "0, 1" or "0 1" ->
    ("0", "1"); "all" is nnU-Net's fold_all (a model trained on all cases). Anything else: InputError."""
    folds = tuple(fold for fold in text.replace(",", " ").split() if fold)
    bad = [fold for fold in folds if not (fold.isdigit() or fold == "all")]
    if bad:
        raise InputError(f"folds: {bad[0]!r} is not a fold number (0, 1, ...) or 'all'; leave empty for every fold")
    return folds or None


@dataclass(frozen=True)
class DetectionModel:
    """The model a detection run uses, as the Detect panel chose it."""

    path: Optional[Path]  # a model manifest (.json) or an nnU-Net trained-model folder; None: the bundled model
    nnunet: Optional[NnUNetOptions] = None  # with an nnU-Net folder: folds, checkpoint, mirroring


def detection_model(parameters: Any) -> DetectionModel:
    """The model and options the parameter node's Detect fields choose (modelKind, modelPath, nnunet*)."""
    if parameters.modelKind != NNUNET_MODEL:
        return DetectionModel(chosen_path(parameters.modelPath))
    folder = chosen_path(parameters.nnunetFolder)
    if folder is None:
        raise InputError("Choose an nnU-Net trained-model folder (Detect panel), or the bundled model.")
    options = NnUNetOptions(
        folds=parse_folds(parameters.nnunetFolds),
        checkpoint=parameters.nnunetCheckpoint,
        tta=bool(parameters.nnunetTta),
    )
    return DetectionModel(folder, options)


def nnunet_model_text(info: Any) -> str:
    """What the panel's model box shows for an nnU-Net folder (``model.nnunet_model.NnUNetModelInfo``): its
    name, inputs and what feeds each, labels, folds and checkpoints, and its licence text when it has one.
    (The pickle warning, :data:`.model.nnunet_model.PICKLE_WARNING`, stands beside the folder picker.)"""
    lines = list(info.summary())
    if info.licence:
        lines += ["", f"----- {info.licence_file.name} -----", info.licence]
    return "\n".join(lines)


class _Attempt:
    """What a block run by ``ModulePresenter._attempt`` came to: ``failed`` once it raised (and was shown)."""

    failed = False


class ModulePresenter:
    """The panel's state and decisions; the widget forwards each Qt signal to one method here.

    ``logic`` is the module's ``PETCTLesionsLogic`` (or a stand-in with its methods), ``view`` a
    :class:`PanelView`, ``tr`` Slicer's translation function (it finds the translation context
    from the calling file, so it is called here, where the texts are).
    """

    def __init__(self, logic: Any, view: PanelView, tr: Translate = str) -> None:
        self._logic = logic
        self._view = view
        self._tr = tr
        self._parameters: Any = None  # the parameter node (PETCTLesionsParameterNode); None while the scene closes
        self._study_choices: List[Any] = []  # PET/CT pairs of the last DICOM import (PetCtChoice)
        self._job: Any = None  # the running detection (DetectionJob); None: idle
        self._last_detection: Any = None  # the last finished run's nodes (DetectionNodes), for Undo
        self._progress: Optional[float] = None  # the running detection's fraction done
        self._status = ""  # the detection status line
        self._rows: List[Any] = []  # the lesion table (mrml.review.LesionRow)
        self._edited: FrozenSet[str] = frozenset()  # segment IDs of imported lesions changed since their import
        self._selected_segment: Optional[str] = None  # the selected lesion's segment ID
        self._platform_note_shown = False  # the note on this PyTorch: once a session
        self._refreshing = False  # the view is being redrawn: its selection signals are ours, not the user's
        self._described_folder: Optional[Path] = None  # the nnU-Net folder whose description the panel shows
        self._model_text = ""  # that description (or why the folder cannot be used)
        self._listed_dataset: Optional[Path] = None  # the nnU-Net dataset folder whose cases the panel lists
        self._case_list_problem = ""  # why that folder lists no case

    # ------------------------------------------------------------------ what the panel shows

    @property
    def rows(self) -> List[Any]:
        """The lesion table's rows, as the Logic measured them last."""
        return list(self._rows)

    @property
    def selected_row(self) -> Any:
        """The selected lesion's row, or None."""
        return next((row for row in self._rows if row.segment_id == self._selected_segment), None)

    @property
    def detection_running(self) -> bool:
        return self._job is not None

    @property
    def last_detection(self) -> Any:
        """The last finished run's nodes (``DetectionNodes``: what Undo takes back), or None."""
        return self._last_detection

    @property
    def status(self) -> str:
        """The detection status line."""
        return self._status

    def button_state(self) -> ButtonState:
        params = self._parameters
        has_study = bool(params and params.ctVolume and params.petVolume)
        running = self._job is not None
        return ButtonState(
            load_study=bool(self._study_choices),
            detect=running or has_study,
            detect_text=self._tr("Cancel") if running else self._tr("Detect lesions"),
            undo_detection=self._last_detection is not None,
            review=self.selected_row is not None,
            add_box=bool(params and params.ctVolume),
            export=has_study,
            threshold=bool(params) and not params.useModelThreshold,
            click_tools=bool(params and params.petVolume),
            import_annotations=bool(params and params.ctVolume),
            export_back=bool(params and params.ctVolume),
        )

    def _update_buttons(self) -> None:
        self._view.set_button_state(self.button_state())

    def _show_progress(self, fraction: Optional[float], status: Optional[str] = None) -> None:
        self._progress = fraction
        if status is not None:
            self._status = status
        self._view.show_progress(self._progress, self._status)

    @contextmanager
    def _attempt(self, failure: str, busy: bool = False) -> Iterator[_Attempt]:
        """Run the block; an error in it is shown (:func:`error_message`) and ``failed`` set, not raised."""
        attempt = _Attempt()
        try:
            with self._view.busy() if busy else nullcontext():
                yield attempt
        except Exception as error:
            attempt.failed = True
            details = traceback.format_exc()
            message = error_message(failure, error, details, self._tr)
            if message is not None and message.details:
                logging.error(f"{failure}\n{details}")  # a bug: its traceback in the log as well
            if message is not None:
                self._view.show_message(message)

    # ------------------------------------------------------------------ the parameter node

    def set_parameter_node(self, parameters: Any) -> None:
        """The module's parameter node (None while the scene closes); the panel is drawn again, the
        table measured quietly."""
        self._parameters = parameters
        self._view.show_progress(self._progress, self._status)
        self._show_model_choice()
        self._show_case_choices()
        self.refresh_table(quiet=True)

    def parameters_changed(self) -> None:
        """A parameter changed (a volume chosen, a box ticked, a model folder picked): what can be done now."""
        self._show_model_choice()
        self._show_case_choices()
        self._update_buttons()

    def scene_closing(self) -> None:
        """The scene is about to close: a run is stopped and the last one cannot be undone any more."""
        self.cancel_detection()
        self._last_detection = None
        self._update_buttons()

    # ------------------------------------------------------------------ 1. Study

    def import_dicom_folder(self) -> None:
        with self._attempt(self._tr("Failed to import the DICOM folder."), busy=True) as attempt:
            choices, problems = self._logic.importDicomFolder(self._parameters.dicomFolder)
        if attempt.failed:
            return
        self._study_choices = list(choices)
        self._view.set_study_choices([(choice.label, choice.rule) for choice in choices])
        self._update_buttons()
        if problems:
            self._view.show_message(Message(WARNING, problems, title=self._tr("Series that cannot be loaded")))

    def load_study(self, index: int) -> None:
        """Load the PET/CT pair ``index`` of the last import (under a progress dialog with Cancel)."""
        if not 0 <= index < len(self._study_choices):
            return
        choice = self._study_choices[index]

        def load(progress: ProgressCallback, cancel: CancelCallback) -> Tuple[Any, Any]:
            return self._logic.loadStudyFromDatabase(choice, progress=progress, cancel=cancel)

        with self._attempt(self._tr("Failed to load the PET/CT study."), busy=True) as attempt:
            ct_node, pet_node = self._view.run_with_progress(self._tr("Loading PET/CT study"), load)
            self._show_study(ct_node, pet_node)
        if not attempt.failed:
            self._study_shown(pet_node, choice.warnings)

    def load_demo_study(self) -> None:
        with self._attempt(self._tr("Failed to create the demo study."), busy=True) as attempt:
            ct_node, pet_node = self._logic.loadDemoStudy(self._parameters.demoSeed)
            self._show_study(ct_node, pet_node)
        if not attempt.failed:
            self._study_shown(pet_node)

    def _show_study(self, ct_node: Any, pet_node: Any) -> None:
        params = self._parameters
        params.ctVolume, params.petVolume = ct_node, pet_node
        params.segmentation = None  # a new study's lesions go to a new segmentation
        self._logic.showFusedStudy(params)

    def _study_shown(self, pet_node: Any, pair_warnings: Sequence[str] = ()) -> None:
        self._show_study_warnings(pet_node, pair_warnings)
        self.refresh_table()

    # ------------------------------------------------------------------ 1. Study: annotations from files

    def import_voc_annotations(self) -> None:
        """ "Import VOC boxes": the chosen VOC folder's files for the loaded DICOM study's CT become boxes on their
        slices and one lesion per group of boxes (status "imported"); what was left out is shown, and why."""
        params = self._parameters
        if not (params and params.ctVolume):
            self._view.show_message(
                Message(WARNING, self._tr("Load the DICOM study first: VOC files name its CT slices."))
            )
            return
        if chosen_path(params.annotationFolder) is None:
            text = self._tr("Choose the VOC folder: the dataset's Annotation folder or one patient's folder.")
            self._view.show_message(Message(WARNING, text))
            return
        with self._attempt(self._tr("Failed to import the VOC annotations."), busy=True) as attempt:
            result = self._logic.importVocAnnotations(params)
        if attempt.failed:
            return
        self.refresh_table()
        title = self._tr("VOC annotations imported, but some were left out") if result.skipped else ""
        self._view.show_message(Message(WARNING if result.skipped else INFO, result.text(), title=title))

    def _show_case_choices(self) -> None:
        """The cases of the nnU-Net dataset folder chosen under Study, listed once when it is picked; why a
        folder lists none is said when the user tries to open a case."""
        folder = chosen_path(self._parameters.nnunetCaseFolder) if self._parameters is not None else None
        if folder == self._listed_dataset:
            return
        self._listed_dataset, self._case_list_problem = folder, ""
        cases: List[str] = []
        if folder is not None:
            try:
                cases = list(self._logic.listNnUNetCases(folder))
            except (PETCTLesionsError, OSError) as error:
                self._case_list_problem = str(error)
        self._view.set_case_choices(cases)

    def open_nnunet_case(self, case_id: str) -> None:
        """ "Open case": the chosen case's CT and PET (SUV) shown fused as a study is, its label as one lesion per
        segment (status "imported"); the notes say what an nnU-Net case cannot give (VOC needs DICOM)."""
        params = self._parameters
        folder = chosen_path(params.nnunetCaseFolder) if params is not None else None
        if folder is None or not case_id:
            text = self._case_list_problem or self._tr(
                "Choose an nnU-Net dataset folder (the one holding dataset.json) and one of its cases."
            )
            self._view.show_message(Message(WARNING, text))
            return
        with self._attempt(self._tr("Failed to open the nnU-Net case."), busy=True) as attempt:
            opened = self._logic.openNnUNetCase(folder, case_id)
            self._show_study(opened.ct, opened.pet)
            params.segmentation = opened.segmentation
        if attempt.failed:
            return
        self._study_shown(opened.pet)
        self._view.show_message(Message(INFO, "\n".join(opened.notes), title=self._tr("nnU-Net case opened")))

    def _show_study_warnings(self, pet_node: Any, pair_warnings: Sequence[str] = ()) -> None:
        """In one dialog: what the PET/CT pairing warned about (e.g. a CT covering under 90% of the PET)
        and, once per PET node, what the SUV computation did (e.g. an uptake time unusual for a static scan)."""
        warnings = self._logic.studyWarningsToShow(pet_node, pair_warnings)
        if warnings:
            title = self._tr("Study loaded, but check these warnings")
            self._view.show_message(Message(WARNING, "\n\n".join(warnings), title=title))

    # ------------------------------------------------------------------ 2. Display

    def show_fused_study(self) -> None:
        with self._attempt(self._tr("Failed to show the fused study."), busy=True) as attempt:
            self._logic.showFusedStudy(self._parameters)
        if not attempt.failed:
            self._show_study_warnings(self._parameters.petVolume)

    def apply_ct_preset(self, preset: str) -> None:
        self._parameters.ctPreset = preset
        if self._parameters.ctVolume:
            with self._attempt(self._tr("Failed to set the CT window.")):
                self._logic.applyCtPreset(self._parameters.ctVolume, preset)

    def set_pet_colormap(self, name: str) -> None:
        pet_node = self._parameters.petVolume if self._parameters else None
        if pet_node and name:
            with self._attempt(self._tr("Failed to set the PET colour map.")):
                self._logic.setPetColormap(pet_node, name)

    def set_suv_window(self, suv_min: float, suv_max: float) -> None:
        pet_node = self._parameters.petVolume if self._parameters else None
        if pet_node and suv_max > suv_min:
            self._logic.setSuvWindow(pet_node, suv_min, suv_max)

    def set_pet_opacity(self, opacity: float) -> None:
        if self._parameters and self._parameters.petVolume:
            self._logic.setPetOpacity(opacity)

    # ------------------------------------------------------------------ 3. Detect

    def use_bundled_model(self) -> None:
        """Detection with the bundled model again (the widget also empties the path field)."""
        if self._parameters is not None:
            self._parameters.modelPath = Path()  # what the Logic reads as "the bundled model"

    def _show_model_choice(self) -> None:
        """The Detect panel's model fields: an nnU-Net folder is described once when picked (JSON and file names
        only, nothing unpickled); why it cannot be used is shown in its place, not as a dialog, while the user
        browses (Detect says it as a dialog)."""
        params = self._parameters
        nnunet = params is not None and params.modelKind == NNUNET_MODEL
        folder = chosen_path(params.nnunetFolder) if nnunet else None
        if nnunet and (folder != self._described_folder or not self._model_text):
            self._described_folder = folder
            self._model_text = self._describe_nnunet_folder(folder)
        self._view.show_model_choice(nnunet, self._model_text if nnunet else "")

    def _describe_nnunet_folder(self, folder: Optional[Path]) -> str:
        if folder is None:
            return self._tr("Choose the folder nnU-Net's training wrote (dataset.json, plans.json, fold_N/).")
        with self._attempt(self._tr("Failed to read the nnU-Net model folder.")):
            try:
                return nnunet_model_text(self._logic.describeNnUNetModel(folder))
            except PETCTLesionsError as error:  # the folder's fault, said in the box
                return f"{self._tr('This folder cannot be used:')} {error}"
        return ""  # a bug, shown as a dialog by _attempt

    def _ensure_nnunet(self, model: DetectionModel) -> bool:
        """The chosen nnU-Net folder can run (else a dialog says why) and nnunetv2 is installed, or the user
        agreed to install it; False when the user declined (the status line says what is missing)."""
        info = self._logic.describeNnUNetModel(model.path)  # the folder as it is now, not as it was picked
        self._described_folder, self._model_text = model.path, nnunet_model_text(info)
        self._view.show_model_choice(True, self._model_text)
        choose_folds(info, model.nnunet)  # the folds asked for hold the checkpoint asked for
        if self._logic.nnunetInstalled():
            return True
        requirements = self._logic.nnunetRequirements()
        question = self._tr(
            "Running an nnU-Net model needs the Python package nnunetv2, which is not installed.\n\n"
            "Install it now ({requirements})? pip downloads it and its dependencies from the Python Package "
            "Index, which can take several minutes; the installed PyTorch is kept."
        ).format(requirements=" ".join(requirements))
        if not self._view.confirm(question):
            self._show_progress(None, self._tr("Running an nnU-Net model needs nnunetv2, which was not installed."))
            return False
        self._logic.installNnUNet(requirements)
        return True

    def detect_or_cancel(self) -> None:
        """The Detect button: start a run in the background, or cancel the one running."""
        if self._job is not None:
            self.cancel_detection()
            self._show_progress(None, self._tr("Cancelled: nothing was added."))
            return
        with self._attempt(self._tr("Failed to start lesion detection."), busy=True):
            model = detection_model(self._parameters)
            if not self._logic.ensureTorch():
                text = self._tr("Lesion detection needs PyTorch {requirement}, which was not installed.")
                self._show_progress(None, text.format(requirement=self._logic.torchRequirement))
                return
            if model.nnunet is not None and not self._ensure_nnunet(model):
                return
            self._show_platform_note()
            self._job = self._logic.startDetection(self._parameters)
            self._show_progress(0.0, self._tr("Starting..."))
            self._update_buttons()
            self._view.start_polling()

    def _show_platform_note(self) -> None:
        """What detection can and cannot do with this PyTorch here: once a session, until the user ticks it off."""
        note = self._logic.torchPlatformNote()
        if note and not self._platform_note_shown:
            self._platform_note_shown = True
            title = self._tr("Lesion detection on this computer")
            self._view.show_message(Message(INFO, note, title=title, dont_show_again_key=PLATFORM_NOTE_SETTINGS_KEY))

    def poll_detection(self) -> None:
        """The timer's tick: the run's progress; once it is done, its lesions into the scene."""
        job = self._job
        if job is None:
            self._view.stop_polling()
            return
        status = job.poll()
        for line in status.new_log_lines:
            logging.info(f"[lesion detection] {line}")
        self._show_progress(status.fraction, status.message)
        if not status.done:
            return
        self._end_run()
        with self._attempt(self._tr("Lesion detection failed."), busy=True) as attempt:
            nodes = self._logic.finishDetection(job, self._parameters)
        if attempt.failed:
            return
        self._last_detection = nodes
        notes = "; ".join(nodes.notes)
        added = self._tr("{count} lesions added to '{name}'.").format(
            count=len(nodes.segment_ids), name=nodes.segmentation.GetName()
        )
        self._show_progress(None, added + (f" {notes}" if notes else ""))
        self.refresh_table()

    def cancel_detection(self) -> None:
        """Stop a running detection (module closed, scene closing): nothing of it reaches the scene."""
        if self._job is not None:
            self._job.cancel()
            self._end_run()

    def _end_run(self) -> None:
        self._view.stop_polling()
        self._job = None
        self._show_progress(None)
        self._update_buttons()

    def undo_detection(self) -> None:
        if self._last_detection is None:
            return
        with self._attempt(self._tr("Failed to undo the detection.")) as attempt:
            self._logic.undoDetection(self._last_detection, self._parameters)
            self._last_detection = None
        if not attempt.failed:
            self.refresh_table()

    # ------------------------------------------------------------------ 4. Review

    def refresh_table(self, quiet: bool = False) -> None:
        """Measure the segments again; the selected lesion stays selected (by its segment ID) while it exists.

        ``quiet`` (module entered, scene changed): a failure is logged, not shown, and the table emptied.
        """
        params = self._parameters
        rows: List[Any] = []
        changes: Any = None
        if params and params.segmentation and params.petVolume:
            if quiet:
                try:
                    rows = self._logic.lesionRows(params)
                    changes = self._logic.changesSinceImport(params)
                except Exception as error:
                    known = isinstance(error, (PETCTLesionsError, OSError))
                    logging.log(
                        logging.WARNING if known else logging.ERROR,
                        "Lesion table not updated: %s",
                        error,
                        exc_info=not known,
                    )
            else:
                with self._attempt(self._tr("Failed to measure the lesions."), busy=True) as attempt:
                    rows = self._logic.lesionRows(params)
                    changes = self._logic.changesSinceImport(params)
                if attempt.failed:
                    return
        self._rows = list(rows)
        self._edited = changes.changed_lesions if changes is not None else frozenset()
        selected = self.selected_row
        self._selected_segment = selected.segment_id if selected is not None else None
        self._refreshing = True
        try:
            self._view.set_rows([table_cells(row, row.segment_id in self._edited) for row in self._rows])
            self._view.set_selection(self._rows.index(selected) if selected is not None else None)
        finally:
            self._refreshing = False
        self._update_buttons()

    def select_row(self, index: Optional[int]) -> None:
        """The user selected table row ``index`` (None or out of range: none): the views go to the lesion."""
        if self._refreshing:
            return
        row = self._rows[index] if index is not None and 0 <= index < len(self._rows) else None
        self._selected_segment = row.segment_id if row is not None else None
        self._update_buttons()
        if row is None:
            return
        if row.class_name:
            self._view.set_lesion_class(row.class_name)
        if row.centre_ras is not None:
            self._logic.centreViewsOn(row.centre_ras)

    def set_review_status(self, status: str) -> None:
        """Accept or reject the selected lesion (``status``: "accepted" or "rejected")."""
        row = self.selected_row
        if row is None:
            return
        with self._attempt(self._tr("Failed to record the review decision.")) as attempt:
            self._logic.setReviewStatus(self._parameters, row.segment_id, status)
        if not attempt.failed:
            self.refresh_table()

    def delete_selected_lesion(self) -> None:
        row = self.selected_row
        if row is None:
            return
        question = self._tr("Delete '{name}' and its boxes? (Reject keeps it, hidden and not exported.)")
        if not self._view.confirm(question.format(name=row.name)):
            return
        with self._attempt(self._tr("Failed to delete the lesion.")) as attempt:
            self._logic.deleteLesion(self._parameters, row.segment_id)
        if not attempt.failed:
            self.refresh_table()

    def set_lesion_class(self, class_name: str) -> None:
        row = self.selected_row
        if row is None:
            return
        with self._attempt(self._tr("Failed to set the lesion class.")) as attempt:
            self._logic.setLesionClass(self._parameters, row.segment_id, class_name)
        if not attempt.failed:
            self.refresh_table()

    def open_segment_editor(self) -> None:
        """Correct the lesions in the Segment Editor, at the selected one, thresholds in SUV."""
        params = self._parameters
        if not params.segmentation:
            text = self._tr("Run detection or choose a segmentation under Detect first.")
            self._view.show_message(Message(WARNING, text))
            return
        row = self.selected_row
        self._view.open_segment_editor(params.segmentation, params.petVolume or None, row.segment_id if row else None)

    def correct_by_click(self, mode: str) -> None:
        """The buttons "Add lesion by click" and "Remove by click": the Segment Editor's PET lesion effect in
        ``mode`` ("add", "remove") on the study's lesions (a new, empty segmentation when there are none yet),
        the PET as source volume."""
        params = self._parameters
        if not (params and params.petVolume):
            self._view.show_message(Message(WARNING, self._tr("Choose the PET first (Study panel).")))
            return
        with self._attempt(self._tr("Failed to open the PET lesion effect.")) as attempt:
            segmentation = self._logic.lesionSegmentation(params)
        if not attempt.failed:
            self._view.open_lesion_effect(segmentation, params.petVolume, mode)

    def show_pet_mip(self) -> None:
        """The PET as an inverted-grey MIP in the 3D view, in the SUV window, with the lesions."""
        with self._attempt(self._tr("Failed to show the PET MIP."), busy=True) as attempt:
            self._logic.showPetMip(self._parameters)
        if not attempt.failed:
            self._view.show_mip_view()

    def mip_clicked(self, near_ras: Tuple[float, float, float], far_ras: Tuple[float, float, float]) -> None:
        """A click on the MIP (the ray under the mouse, from the view's near to its far plane): the slice views
        go to the hottest PET voxel along it."""
        if not (self._parameters and self._parameters.petVolume):
            return
        with self._attempt(self._tr("Failed to go to the hot spot.")):
            self._logic.centreOnMipClick(self._parameters, near_ras, far_ras)

    def add_box(self, class_name: str) -> None:
        """A VOC box of ``class_name`` on the slice shown, for the selected lesion (if any)."""
        row = self.selected_row
        with self._attempt(self._tr("Failed to add the box.")):
            self._logic.addBoxOnSlice(self._parameters, None, class_name, row.segment_id if row else None)

    # ------------------------------------------------------------------ 5. Export

    def export(self) -> None:
        """Export where the Export panel says; then what changed since the annotations were imported, if they were."""
        with self._attempt(self._tr("Failed to export the annotations."), busy=True):
            report = self._logic.exportAnnotations(self._parameters)
            changes = self._logic.changesSinceImport(self._parameters)
            self._view.show_export_summary(report.text() + (f"\n{changes.text()}" if changes is not None else ""))

    def export_back(self) -> None:
        """ "Write back": the corrections written over the VOC folder or nnU-Net case they were imported from, once
        the user agreed (every replaced or removed file is kept as a backup); then what changed since the import."""
        params = self._parameters
        with self._attempt(self._tr("Failed to write the annotations back."), busy=True) as attempt:
            sources = self._logic.annotationSources(params)
        if attempt.failed:
            return
        if not sources:
            text = self._tr(
                "Nothing in this study was imported from VOC files or an nnU-Net case, so there is nothing to write "
                "back to: Export writes the annotations elsewhere."
            )
            self._view.show_message(Message(WARNING, text))
            return
        question = self._tr(
            "Write the corrected annotations back over {sources}?\n\nEach file this replaces or removes is kept "
            "beside itself as <name>.bak-<date and time>; the files of slices you did not change are left as they are."
        ).format(sources="; ".join(sources))
        if not self._view.confirm(question):
            return
        with self._attempt(self._tr("Failed to write the annotations back."), busy=True):
            report = self._logic.exportAnnotationsBack(params, True)
            self._view.show_export_summary(report.text())
