"""Lesion detection in a separate process, so that the caller (Slicer's GUI) never waits for it.

    caller                                          worker: python -m PETCTLesionsLib.detection_job JOB
    DetectionJob.start(ct, pet, grid, settings) --> JOB/inputs: ct_hu.npy, pet_suv.npy, job.json
    DetectionJob.poll() <-- progress lines ------- detect_lesions(...) reporting "fraction message"
    DetectionJob.poll() -> finished  <------------ JOB/lesion_map.npy, probability.npy, then result.json (atomic)
    DetectionJob.cancel() --> JOB/cancel, JOB removed -> the worker exits within 0.2 s; nothing half-made

A process (not a thread) because the model holds the interpreter for long stretches of
preprocessing, and because stopping a process is a clean cancel whatever it is doing. The
worker stops itself: inside Slicer it runs under the PythonSlicer launcher, which starts the
real Python as its own child and does not pass signals on, so terminating the launcher would
leave the model running. A watchdog thread in the worker ends it as soon as the caller asks
(a ``cancel`` file) or the job folder is gone. ``cancel()`` is called on the GUI thread (Cancel,
closing the scene), so it waits for that at most ``CANCEL_WAIT_SECONDS``; a worker still there
then is killed (a launcher's child still ends itself through its watchdog) and reaped by a
background thread. Data
goes through uncompressed ``.npy`` files in a private temporary folder (fast, no pickling).
The worker's output is UTF-8 both ways (``PYTHONIOENCODING``), decoded with replacement: a path
in another code page costs a character, never the thread that reads the output.
Everything here is plain Python: Slicer's Widget polls :meth:`DetectionJob.poll` from a
timer; tests and the command line can poll it in a loop.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

from .detection import Detection
from .errors import PETCTLesionsError
from .fileio import atomic_output, atomic_write_text
from .geometry import Grid
from .hugepages import environment_with_huge_pages
from .jobs import sub_progress
from .measurements import LesionMeasurement
from .model.nnunet_model import NnUNetOptions, load_detection_model

PROGRESS_PREFIX = "PETCTLESIONS-PROGRESS"
RESULT_FILE = "result.json"
CANCEL_FILE = "cancel"  # written by the caller: the worker exits
WATCHDOG_SECONDS = 0.2
# How long cancel() waits for the worker to stop itself (its watchdog looks every WATCHDOG_SECONDS)
# before killing it: the GUI thread waits this long at most when the user cancels or closes the scene.
CANCEL_WAIT_SECONDS = 0.5
WORKER_OUTPUT_ENCODING = "utf-8"
LESION_MAP_FILE = "lesion_map.npy"
PROBABILITY_FILE = "probability.npy"  # float16: the caller traces lesions at CT resolution from it
_LIBRARY_PARENT = Path(__file__).resolve().parents[1]  # the folder that holds PETCTLesionsLib/


@dataclass(frozen=True)
class DetectionSettings:
    """What the user chose for one detection run (``None`` threshold: the model's own)."""

    model_path: Optional[str] = None  # model manifest (.json) or nnU-Net trained-model folder; None: the bundled model
    device: str = "auto"  # auto, cuda, mps or cpu
    threshold: Optional[float] = None
    min_volume_ml: float = 0.0
    nnunet: Optional[NnUNetOptions] = None  # folds, checkpoint, ... of an nnU-Net model folder; None: its defaults
    filter_false_positives: bool = False  # apply the model's false-positive filter (off unless chosen)

    @classmethod
    def from_json(cls, content: Dict[str, object]) -> DetectionSettings:
        """The settings as ``asdict`` wrote them into the job file (the nnU-Net options as an object)."""
        return cls(**{**content, "nnunet": NnUNetOptions.from_json(content.get("nnunet"))})


@dataclass
class JobStatus:
    """One look at a running job: where it is, and every output line since the last look."""

    state: str  # "running", "finished", "failed" or "cancelled"
    fraction: float = 0.0
    message: str = ""
    new_log_lines: List[str] = field(default_factory=list)

    @property
    def done(self) -> bool:
        return self.state != "running"


class DetectionJobError(PETCTLesionsError):
    """The worker failed or left an unusable result; the message carries its last output lines."""


class DetectionJob:
    """One detection in a worker process; poll it, cancel it, or take its result.

    ``python`` and ``environment`` are injected: inside Slicer the Logic passes PythonSlicer
    and Slicer's startup environment (where torch from the PyTorch extension lives); tests and
    the command line use the running interpreter.
    """

    def __init__(
        self,
        ct_hu_on_pet: np.ndarray,
        pet_suv: np.ndarray,
        pet_grid: Grid,
        settings: DetectionSettings,
        python: Optional[str] = None,
        environment: Optional[Dict[str, str]] = None,
        work_root: Optional[Path] = None,
    ) -> None:
        if ct_hu_on_pet.shape != pet_grid.shape or pet_suv.shape != pet_grid.shape:
            raise ValueError(
                f"CT {ct_hu_on_pet.shape} and PET {pet_suv.shape} must both be on the PET grid {pet_grid.shape}"
            )
        self.pet_grid = pet_grid
        self.settings = settings
        self.job_dir = Path(tempfile.mkdtemp(prefix="petctlesions-job-", dir=work_root))
        self._lines: queue.Queue = queue.Queue()
        self._log: List[str] = []
        self._state = "running"
        self._fraction, self._message = 0.0, "starting"
        try:
            np.save(self.job_dir / "ct_hu.npy", np.ascontiguousarray(ct_hu_on_pet, dtype=np.float32))
            np.save(self.job_dir / "pet_suv.npy", np.ascontiguousarray(pet_suv, dtype=np.float32))
            job = {"pet_grid": _grid_to_json(pet_grid), "settings": asdict(settings)}
            atomic_write_text(self.job_dir / "job.json", json.dumps(job, indent=1))
            self._process = subprocess.Popen(
                [python or sys.executable, "-u", "-m", "PETCTLesionsLib.detection_job", str(self.job_dir)],
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                # Not the locale's encoding: strict decoding of one byte it cannot read (a path in a
                # Windows code page) ended the reader thread, the pipe filled, and the job hung at
                # "running". The worker writes UTF-8 (_worker_environment); anything else is replaced.
                encoding=WORKER_OUTPUT_ENCODING,
                errors="replace",
                env=_worker_environment(environment),
                # No console window flashing up on Windows (as slicer.util.launchConsoleProcess).
                creationflags=getattr(subprocess, "CREATE_NO_WINDOW", 0),
            )
        except BaseException:
            shutil.rmtree(self.job_dir, ignore_errors=True)
            raise
        self._reader = threading.Thread(target=self._read_output, name="petctlesions-job-output", daemon=True)
        self._reader.start()

    def _read_output(self) -> None:
        for line in self._process.stdout:
            self._lines.put(line.rstrip("\n"))
        self._process.stdout.close()

    def poll(self) -> JobStatus:
        """Progress and output since the last call; never blocks."""
        if self._state == "cancelled":  # whatever the stopped worker still says is not wanted
            return JobStatus(self._state, self._fraction, self._message, [])
        exited = self._process.poll() is not None
        if exited:
            self._reader.join(timeout=5)  # the pipe is at its end: every line is queued
        new_lines = []
        while True:
            try:
                line = self._lines.get_nowait()
            except queue.Empty:
                break
            if line.startswith(PROGRESS_PREFIX + " "):
                _, fraction, message = (line.split(" ", 2) + [""])[:3]
                self._fraction, self._message = float(fraction), message
            else:
                new_lines.append(line)
        self._log.extend(new_lines)
        if self._state == "running" and exited:
            if self._process.returncode == 0 and (self.job_dir / RESULT_FILE).is_file():
                self._state, self._fraction, self._message = "finished", 1.0, "finished"
            else:
                self._state = "failed"
                self._message = f"the detection process stopped (exit code {self._process.returncode})"
        return JobStatus(self._state, self._fraction, self._message, new_lines)

    def wait(self, timeout: Optional[float] = None) -> JobStatus:
        """Block until the job ends (for the command line and tests)."""
        self._process.wait(timeout=timeout)
        return self.poll()

    @property
    def log(self) -> str:
        return "\n".join(self._log)

    def cancel(self) -> None:
        """Stop the worker and remove everything it wrote; a finished result is discarded too.

        Returns within about ``CANCEL_WAIT_SECONDS`` whatever the worker does (the GUI thread calls it).
        """
        self._state = "cancelled"
        if self._process.poll() is None:
            try:
                (self.job_dir / CANCEL_FILE).touch()  # the worker's watchdog ends it, launcher or not
                self._process.wait(timeout=CANCEL_WAIT_SECONDS)
            except (OSError, subprocess.TimeoutExpired):
                # Killing a launcher leaves its child, which still sees the cancel file (or the
                # missing folder) and ends itself.
                self._process.kill()
                threading.Thread(target=self._reap, name="petctlesions-job-reaper", daemon=True).start()
        self.cleanup()

    def _reap(self) -> None:
        """Wait for a killed worker (no zombie) and a launcher's child (the end of their shared output),
        then remove what they held open (Windows keeps such files)."""
        self._process.wait()
        self._reader.join()
        self.cleanup()

    def result(self) -> Detection:
        """The finished detection (PET grid, lesion map, measurements); the job folder is removed either way."""
        try:
            status = self.poll()
            if status.state != "finished":
                tail = "\n".join(self._log[-15:])
                detail = f":\n{tail}" if tail else ""
                raise DetectionJobError(f"lesion detection did not finish ({status.message}){detail}")
            return read_result(self.job_dir, self.pet_grid)
        finally:
            self.cleanup()

    def cleanup(self) -> None:
        shutil.rmtree(self.job_dir, ignore_errors=True)


def _worker_environment(environment: Optional[Dict[str, str]]) -> Dict[str, str]:
    env = environment_with_huge_pages(os.environ if environment is None else environment)
    # The worker imports this library from where it is installed (an extension's module folder
    # is on Slicer's sys.path but not on PythonSlicer's).
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(_LIBRARY_PARENT), env.get("PYTHONPATH", "")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    # The worker's stdout in UTF-8 whatever the locale or Windows code page; a character UTF-8 cannot
    # hold (an undecodable file name's surrogate) is escaped rather than ending the worker.
    env["PYTHONIOENCODING"] = f"{WORKER_OUTPUT_ENCODING}:backslashreplace"
    return env


def _grid_to_json(grid: Grid) -> Dict[str, list]:
    return {
        "size": list(grid.size),
        "spacing": list(grid.spacing),
        "origin": list(grid.origin),
        "direction": list(grid.direction),
    }


def _grid_from_json(content: Dict[str, Sequence[float]]) -> Grid:
    return Grid(
        tuple(int(v) for v in content["size"]),
        tuple(float(v) for v in content["spacing"]),
        tuple(float(v) for v in content["origin"]),
        tuple(float(v) for v in content["direction"]),
    )


def read_result(job_dir: Path, pet_grid: Grid) -> Detection:
    """The worker's result files as a :class:`Detection` (its probability map in float16)."""
    content = json.loads((job_dir / RESULT_FILE).read_text(encoding="utf-8"))  # as atomic_write_text writes
    lesion_map, probability = (np.load(job_dir / name) for name in (LESION_MAP_FILE, PROBABILITY_FILE))
    for name, array in ((LESION_MAP_FILE, lesion_map), (PROBABILITY_FILE, probability)):
        if array.shape != pet_grid.shape:
            raise DetectionJobError(f"{job_dir / name}: shape {array.shape}, expected {pet_grid.shape}")
    lesions = [
        LesionMeasurement(
            **{
                **row,
                "centroid_lps": tuple(row["centroid_lps"]),
                "bbox_kji": tuple(tuple(pair) for pair in row["bbox_kji"]),
            }
        )
        for row in content["lesions"]
    ]
    return Detection(
        pet_grid,
        probability,
        lesion_map,
        lesions,
        content["threshold"],
        content["min_volume_ml"],
        content["device"],
        content["notes"],
    )


def run_job(job_dir: Path) -> None:
    """The worker: read the inputs, detect, write the result (lesion map first, result.json last)."""
    from .detection import detect_lesions

    _start_watchdog(job_dir)
    job = json.loads((job_dir / "job.json").read_text(encoding="utf-8"))
    settings = DetectionSettings.from_json(job["settings"])
    pet_grid = _grid_from_json(job["pet_grid"])
    report_progress(0.0, "loading the model")
    model = load_detection_model(settings.model_path, settings.nnunet)
    ct_hu = np.load(job_dir / "ct_hu.npy")
    pet_suv = np.load(job_dir / "pet_suv.npy")
    found = detect_lesions(
        model,
        ct_hu,
        pet_suv,
        pet_grid,
        threshold=settings.threshold,
        min_volume_ml=settings.min_volume_ml,
        device=settings.device,
        progress=sub_progress(report_progress, 0.0, 0.95),
        filter_false_positives=settings.filter_false_positives,
    )
    report_progress(0.97, f"writing {len(found.lesions)} lesions")
    for name, array in ((LESION_MAP_FILE, found.lesion_map), (PROBABILITY_FILE, found.probability.astype(np.float16))):
        with atomic_output(job_dir / name) as tmp, open(tmp, "wb") as stream:
            np.save(stream, array)
    result = {
        "lesions": [asdict(lesion) for lesion in found.lesions],
        "threshold": found.threshold,
        "min_volume_ml": found.min_volume_ml,
        "device": found.device,
        "notes": list(found.notes),
        "model": model.name,
    }
    atomic_write_text(job_dir / RESULT_FILE, json.dumps(result, indent=1))
    report_progress(1.0, f"{len(found.lesions)} lesions found on {found.device}")


def _start_watchdog(job_dir: Path) -> None:
    """End this process as soon as the caller cancels (``cancel`` file) or its job folder is gone.

    ``os._exit`` because the main thread may be deep in torch: no exception would reach it in
    time, and there is nothing to tidy (the caller removes the job folder).
    """

    def watch() -> None:
        while True:
            if (job_dir / CANCEL_FILE).exists() or not job_dir.is_dir():
                os._exit(3)
            time.sleep(WATCHDOG_SECONDS)

    threading.Thread(target=watch, name="petctlesions-cancel-watchdog", daemon=True).start()


def report_progress(fraction: float, message: str) -> None:
    print(f"{PROGRESS_PREFIX} {fraction:.4f} {' '.join(message.split())}", flush=True)


def main(argv: Optional[List[str]] = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or not (Path(args[0]) / "job.json").is_file():
        print("usage: python -m PETCTLesionsLib.detection_job JOB_DIR (a folder made by DetectionJob)", file=sys.stderr)
        return 2
    run_job(Path(args[0]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
