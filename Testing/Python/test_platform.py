"""What Slicer on macOS and Windows would hit: torch without its numpy bridge, Apple MPS without the
model's 3D operations, worker output that is not in the locale's encoding, and a cancel (closing the
scene) that must not hold the GUI.

None of these platforms is here, so each is built from what it does: torch < 2.3 under numpy 2 raises
"Numpy is not available" from ``torch.from_numpy`` and ``Tensor.numpy``; an MPS device is a device that
torch reports and a probe that fails; a Windows code page is a byte UTF-8 cannot decode; a worker deaf
to the cancel file and to SIGTERM stands for one that is stuck. Everything else is the real code.
"""

from __future__ import annotations

import os
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import test_module_logic

from PETCTLesionsLib.detection_job import (
    CANCEL_WAIT_SECONDS,
    DetectionJob,
    DetectionJobError,
    DetectionSettings,
    _worker_environment,
)
from PETCTLesionsLib.geometry import Grid

slicer_module = test_module_logic.slicer_module  # fixture: PETCTLesions.py imported with the application stood in
POSIX_ONLY = pytest.mark.skipif(os.name != "posix", reason="the stand-in workers are executable scripts (POSIX)")
NUMPY_BRIDGE_ERROR = "Numpy is not available"  # what torch < 2.3 raises under numpy 2


@pytest.fixture(scope="module")
def study():
    """A small generated torso PET/CT with three lesions, as arrays on the PET grid."""
    from PETCTLesionsLib.synthetic.phantom import PhantomConfig, make_phantom
    from PETCTLesionsLib.training.data import phantom_study_arrays

    phantom = make_phantom(PhantomConfig(seed=77, size="small", body="torso", n_lesions=3))
    return phantom_study_arrays(phantom), phantom.pet_grid


@pytest.fixture(scope="module")
def found_normally(study):
    from PETCTLesionsLib.detection import detect_lesions
    from PETCTLesionsLib.model.weights import load_model

    arrays, grid = study
    return detect_lesions(load_model(), arrays.ct_hu_on_pet, arrays.pet_suv, grid, device="cpu")


def _same_detection(found, expected) -> None:
    assert np.array_equal(found.lesion_map, expected.lesion_map)
    assert [(x.voxels, x.suv_max, x.suv_peak) for x in found.lesions] == [
        (x.voxels, x.suv_max, x.suv_peak) for x in expected.lesions
    ]


# ------------------------------------------------------------------- torch built for numpy 1 under numpy 2


@pytest.mark.torch
def test_detection_is_the_same_when_torch_cannot_exchange_arrays_with_numpy(study, found_normally, monkeypatch):
    import torch

    from PETCTLesionsLib.detection import detect_lesions
    from PETCTLesionsLib.model.weights import load_model

    def no_bridge(*_args, **_kwargs):
        raise RuntimeError(NUMPY_BRIDGE_ERROR)

    # Slicer 5.10 on macOS: numpy 2.0.2 and torch <= 2.2.2 (the last built for x86_64 macOS, against numpy 1).
    monkeypatch.setattr(torch, "from_numpy", no_bridge)
    monkeypatch.setattr(torch.Tensor, "numpy", no_bridge)
    with pytest.raises(RuntimeError, match=NUMPY_BRIDGE_ERROR):
        torch.from_numpy(np.zeros(3))  # the stand-in is in place
    arrays, grid = study
    found = detect_lesions(load_model(), arrays.ct_hu_on_pet, arrays.pet_suv, grid, device="cpu")
    assert len(found_normally.lesions) == 3
    assert np.array_equal(found.probability, found_normally.probability)
    _same_detection(found, found_normally)


@pytest.mark.slicer
@pytest.mark.parametrize(
    "system, machine, torch_version, numpy_version, says",
    [
        # Slicer 5.10 on macOS: x86_64, numpy 2.0.2, torch 2.2.2 at most: CPU only, and the numpy warning explained.
        (
            "Darwin",
            "x86_64",
            "2.2.2",
            "2.0.2",
            ["Intel (x86_64)", "stops at 2.2.2", "runs on the CPU", "2.8", "NumPy 1"],
        ),
        # Slicer 5.6/5.8 on macOS: numpy 1: CPU only, nothing about numpy.
        ("Darwin", "x86_64", "2.2.2", "1.26.1", ["Intel (x86_64)", "runs on the CPU"]),
        # A native Apple-silicon Python (the command line, a future Slicer): MPS from torch 2.8 on.
        ("Darwin", "arm64", "2.5.1", "2.0.2", ["runs on the CPU with PyTorch 2.5.1", "update PyTorch"]),
        ("Darwin", "arm64", "2.9.0", "2.0.2", []),
        # Windows or Linux with an older torch left by another extension under Slicer 5.10's numpy.
        ("Windows", "AMD64", "2.2.1+cu121", "2.0.2", ["PyTorch 2.2.1+cu121 was built for NumPy 1", "same results"]),
        ("Linux", "x86_64", "2.13.0+cpu", "2.0.2", []),
        ("Linux", "x86_64", "2.2.1", "1.26.1", []),
    ],
)
def test_the_torch_check_tells_what_will_and_will_not_work_here(
    slicer_module, system, machine, torch_version, numpy_version, says
):
    note = slicer_module._torch_platform_note(system, machine, torch_version, numpy_version)
    assert all(part in note for part in says), note
    assert bool(note) == bool(says), note
    assert ("built for NumPy 1" in note) == any("NumPy 1" in part for part in says), note


@pytest.mark.slicer
def test_the_modules_torch_check_gives_the_note_of_this_computer(slicer_module, monkeypatch):
    import platform

    import numpy

    monkeypatch.setattr(platform, "system", lambda: "Darwin")
    monkeypatch.setattr(platform, "machine", lambda: "x86_64")
    monkeypatch.setattr(slicer_module, "_installed_torch_version", lambda: "2.2.2")
    monkeypatch.setattr(numpy, "__version__", "2.0.2")
    note = slicer_module.PETCTLesionsLogic().torchPlatformNote()
    assert note == slicer_module._torch_platform_note("Darwin", "x86_64", "2.2.2", "2.0.2") != ""
    monkeypatch.setattr(platform, "system", lambda: "Linux")
    monkeypatch.setattr(slicer_module, "_installed_torch_version", lambda: "2.13.0+cpu")
    assert slicer_module.PETCTLesionsLogic().torchPlatformNote() == ""


# ------------------------------------------------------------------------------------------- Apple MPS


def _torch_reports_mps_only(monkeypatch) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)


MPS_FAILURE = "NotImplementedError: The operator 'aten::slow_conv_transpose3d' is not implemented for MPS"


@pytest.mark.torch
def test_auto_falls_back_to_the_cpu_when_mps_fails_its_probe_and_an_explicit_mps_is_refused(monkeypatch):
    import torch

    from PETCTLesionsLib.model import inference

    _torch_reports_mps_only(monkeypatch)
    probed = []

    def failing_probe(device):
        probed.append(str(device))
        return MPS_FAILURE

    choice = inference.choose_working_device("auto", probe=failing_probe)
    assert choice.device == torch.device("cpu") and probed == ["mps"]
    assert choice.note == (
        f"Apple MPS cannot run the lesion model with torch {torch.__version__} ({MPS_FAILURE}); "
        "running on the CPU instead"
    )
    with pytest.raises(
        ValueError, match=r"device 'mps' was asked for but Apple MPS cannot run .*choose 'auto' or 'cpu'"
    ):
        inference.choose_working_device("mps", probe=failing_probe)
    # An MPS that passes is used; the CPU and CUDA are never probed.
    assert inference.choose_working_device("auto", probe=lambda device: None) == inference.DeviceChoice(
        torch.device("mps"), ""
    )
    assert inference.choose_working_device("cpu", probe=failing_probe).device == torch.device("cpu")
    assert probed == ["mps", "mps"]


@pytest.mark.torch
def test_a_detection_on_auto_with_a_failing_mps_runs_on_the_cpu_and_says_why(study, found_normally, monkeypatch):
    from PETCTLesionsLib.detection import detect_lesions
    from PETCTLesionsLib.model import inference
    from PETCTLesionsLib.model.weights import load_model

    _torch_reports_mps_only(monkeypatch)
    monkeypatch.setattr(inference, "probe_device", lambda device: MPS_FAILURE, raising=False)
    arrays, grid = study
    messages = []
    found = detect_lesions(
        load_model(),
        arrays.ct_hu_on_pet,
        arrays.pet_suv,
        grid,
        device="auto",
        progress=lambda fraction, message: messages.append(message),
    )
    assert found.device == "cpu"
    assert len(found.notes) == 1 and MPS_FAILURE in found.notes[0] and "running on the CPU instead" in found.notes[0]
    assert found.notes[0] in messages
    _same_detection(found, found_normally)


@pytest.mark.torch
def test_the_probe_runs_the_models_steps_once_per_device_and_names_what_fails(monkeypatch):
    import torch

    from PETCTLesionsLib.model import inference

    assert inference._probe(torch.device("cpu")) is None  # the real steps, on a device that has them all
    # The meta device has every operation but no data: the probe names the failure instead of raising.
    assert inference._probe(torch.device("meta")).startswith("NotImplementedError: ")
    # A backend that computes something else is caught by the comparison with the CPU.
    real_logits, calls = inference.sliding_window_logits, []

    def wrong_on_the_second_run(model, image, tile, device, report, cancel):
        calls.append(device)
        logits = real_logits(model, image, tile, device, report, cancel)
        return logits + 5.0 if len(calls) == 2 else logits

    monkeypatch.setattr(inference, "sliding_window_logits", wrong_on_the_second_run)
    assert inference._probe(torch.device("cpu")).startswith("its result differs from the CPU's by ")
    # Probed once per device and process.
    monkeypatch.setattr(inference, "_PROBED", {})
    probes = []
    monkeypatch.setattr(inference, "_probe", lambda device: probes.append(device) or MPS_FAILURE)
    assert inference.probe_device(torch.device("mps")) == inference.probe_device(torch.device("mps")) == MPS_FAILURE
    assert probes == [torch.device("mps")]


# --------------------------------------------------------------------- worker output not in UTF-8


def _stand_in_worker(path: Path, body: str) -> str:
    """An executable Python script used as the job's ``python`` (as PythonSlicer is inside Slicer)."""
    path.write_text(f"#!{sys.executable}\n" + textwrap.dedent(body))
    path.chmod(0o755)
    return str(path)


@POSIX_ONLY
@pytest.mark.torch
def test_worker_output_that_is_not_utf8_neither_hangs_the_job_nor_loses_its_result(study, found_normally, tmp_path):
    # Before the real worker starts, its launcher writes two bytes no UTF-8 reader accepts (a Windows
    # code page's text), non-ASCII text, then more than a pipe holds: if the output reader dies,
    # nobody empties the pipe and the job never ends.
    launcher = _stand_in_worker(
        tmp_path / "PythonSlicer",
        """
        import os, sys
        sys.stdout.buffer.write(b"\\xff\\xfe written in another code page\\n")
        sys.stdout.buffer.flush()
        print("na\\u00efve \\u00fcn\\u00efc\\u00f6d\\u00e9")  # in the encoding PYTHONIOENCODING names
        for line in range(4000):
            print(f"filler line {line:05d} of a launcher that talks a lot")
        sys.stdout.flush()
        os.execv(sys.executable, [sys.executable] + sys.argv[1:])
        """,
    )
    arrays, grid = study
    job = DetectionJob(arrays.ct_hu_on_pet, arrays.pet_suv, grid, DetectionSettings(device="cpu"), python=launcher)
    deadline = time.monotonic() + 180
    while not job.poll().done:
        if time.monotonic() > deadline:
            read = len(job._log)
            job.cancel()
            pytest.fail(f"the job hung at 'running'; its output reader read {read} lines")
        time.sleep(0.05)
    assert job.poll().state == "finished", job.log
    lines = job.log.splitlines()
    assert lines[0] == "\ufffd\ufffd written in another code page"
    assert lines[1] == "na\u00efve \u00fcn\u00efc\u00f6d\u00e9"
    assert sum(line.startswith("filler line ") for line in lines) == 4000
    _same_detection(job.result(), found_normally)


def test_the_worker_writes_its_output_in_utf8_whatever_the_locale():
    environment = _worker_environment({"PATH": os.environ.get("PATH", ""), "PYTHONIOENCODING": "cp1252"})
    assert environment["PYTHONIOENCODING"] == "utf-8:backslashreplace"


# ----------------------------------------------------------------------- cancel, closing the scene


@POSIX_ONLY
def test_cancel_returns_at_once_even_when_the_worker_ignores_it_and_the_worker_is_killed(tmp_path):
    started = tmp_path / "started"
    worker = _stand_in_worker(
        tmp_path / "stuck-worker",
        f"""
        import os, signal, sys, time
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # deaf to terminate(), and it has no cancel watchdog
        job_dir = sys.argv[-1]
        with open(os.path.join(job_dir, "result.json"), "w") as stream:
            stream.write("{{}}")  # what a finished worker leaves: it must not reach the caller
        print("PETCTLESIONS-PROGRESS 0.5000 stuck", flush=True)
        open({str(started)!r}, "w").close()
        time.sleep(600)
        """,
    )
    grid = Grid((4, 4, 4), (4.0, 4.0, 3.0), (0.0, 0.0, 0.0), (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))
    volume = np.zeros(grid.shape, np.float32)
    job = DetectionJob(volume, volume, grid, DetectionSettings(device="cpu"), python=worker, work_root=tmp_path)
    deadline = time.monotonic() + 60
    while not started.exists() or job.poll().fraction == 0.0:
        assert time.monotonic() < deadline and job.poll().state == "running", job.log
        time.sleep(0.02)

    begun = time.monotonic()
    job.cancel()
    took = time.monotonic() - begun

    assert took < CANCEL_WAIT_SECONDS + 0.5, f"cancel() held the caller for {took:.2f} s"
    status = job.poll()
    assert (status.state, status.new_log_lines) == ("cancelled", [])
    with pytest.raises(DetectionJobError, match="did not finish"):
        job.result()
    assert not job.job_dir.exists()
    while job._process.returncode is None:  # reaped in the background
        assert time.monotonic() < begun + 10, "the stuck worker was never killed"
        time.sleep(0.02)
    assert job._process.returncode == -9  # SIGKILL
    assert sorted(tmp_path.iterdir()) == sorted([Path(worker), started])  # the job folder is gone
