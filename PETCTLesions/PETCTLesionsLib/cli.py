"""The ``petct-lesions`` command line: the same logic as the Slicer module, headless."""

from __future__ import annotations

import argparse
import importlib.util
import math
import sys
import time
import traceback
from collections import Counter
from pathlib import Path
from typing import Callable, List, Optional, Tuple, Union

from . import __version__
from .errors import ISSUES_URL, Cancelled, InputError, OutputExistsError, PETCTLesionsError, SetupError
from .hugepages import restart_with_huge_pages

# Exit statuses (README, "Exit status"); a class of error chooses one, never its message's words.
EXIT_NOT_ALL_DONE = 1  # a study not processed, an export not written: the command's own lines say why
EXIT_REFUSED = 2  # bad arguments or input, an output in the way, a file not written, PyTorch missing: one line
EXIT_BUG = 3  # anything else: a bug, shown with its traceback and where to report it
EXIT_CANCELLED = 130  # the user cancelled (as a shell reports Ctrl-C, 128 + SIGINT)

# ------------------------------------------------------------------------- numeric options
# Every number is checked as argparse reads it: a bad value ends the command with argparse's
# "argument --x: ..." and exit status 2 before any file is read. NaN is refused everywhere: it
# compares false with everything, so "--min-volume nan" used to drop every lesion silently.


def _number(
    kind: type,
    low: Optional[float] = None,
    high: Optional[float] = None,
    low_open: bool = False,
    high_open: bool = False,
) -> Callable[[str], Union[int, float]]:
    """An argparse ``type`` reading an int or a finite float within [low, high] (or open at either end)."""
    parts = []
    if low is not None:
        parts.append(f"{'>' if low_open else '>='} {low:g}")
    if high is not None:
        parts.append(f"{'<' if high_open else '<='} {high:g}")
    rule = f"{'a whole number' if kind is int else 'a finite number'}{' ' if parts else ''}{' and '.join(parts)}"

    def parse(text: str) -> Union[int, float]:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {rule}, got {text!r}") from None
        too_low = low is not None and (value < low or (low_open and value == low))
        too_high = high is not None and (value > high or (high_open and value == high))
        # An int is finite (and math.isfinite would overflow on one too large for a float).
        if (kind is float and not math.isfinite(value)) or too_low or too_high:
            raise argparse.ArgumentTypeError(f"must be {rule}, got {text!r}")
        return value

    return parse


POSITIVE_INT = _number(int, low=1)
NON_NEGATIVE_INT = _number(int, low=0)
POSITIVE_FLOAT = _number(float, low=0, low_open=True)
NON_NEGATIVE_FLOAT = _number(float, low=0)
PROBABILITY = _number(float, low=0, high=1, low_open=True, high_open=True)  # a threshold: 0 or 1 keeps all or none
FRACTION = _number(float, low=0, high=1)


def _patch_size(text: str) -> Tuple[int, int, int]:
    """--patch: three positive whole numbers z,y,x, each a multiple of what the network's pooling needs."""
    try:
        from .model.network import DEFAULT_FEATURES
    except Exception:  # no torch, or one that cannot load (a missing DLL): train refuses it in one line after
        multiple = 1
    else:
        multiple = 2 ** (len(DEFAULT_FEATURES) - 1)  # LesionUNet.size_multiple of the network train builds
    try:
        sizes = tuple(int(part) for part in text.split(","))
    except ValueError:
        sizes = ()
    if len(sizes) != 3 or any(size <= 0 or size % multiple for size in sizes):
        raise argparse.ArgumentTypeError(
            f"must be three sizes z,y,x in working voxels, each a positive multiple of {multiple}, got {text!r}"
        )
    return sizes


# Help texts: every option with a default shows it, read from the parser ("%(default)s") so the two never differ.
DEFAULT = "(default: %(default)s)"
SIZE_HELP = "full: 512x512 CT and 200x200 PET slices; small: reduced grids for quick tests"
DEVICE_HELP = "auto (CUDA, then MPS, then CPU), cuda, mps or cpu"


MODEL_HELP = (
    "model manifest (.json), or an nnU-Net v2 trained-model folder (dataset.json, plans.json, "
    "fold_N/checkpoint_final.pth; its inputs CT and PET, or PET; see --folds): its checkpoints are Python pickles, "
    "which can run any code when loaded: use only a folder from a source you trust; default: the bundled model"
)


def add_nnunet_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of a --model that is an nnU-Net trained-model folder (refused with any other model)."""
    group = parser.add_argument_group("nnU-Net model (--model FOLDER)")
    group.add_argument(
        "--folds",
        type=_names_list,
        default=None,
        metavar="F,F",
        help="folds to run and average, e.g. 0,1 or all (fold_all) (default: every fold holding the checkpoint)",
    )
    group.add_argument(
        "--checkpoint",
        default=None,
        help="final (checkpoint_final.pth), best (checkpoint_best.pth) or a checkpoint file name (default: final)",
    )
    group.add_argument(
        "--tta",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="mirroring test-time augmentation, nnU-Net's: up to 8 passes per tile (default: on with CUDA, off on "
        "the CPU and MPS)",
    )
    group.add_argument(
        "--tile-step",
        type=_number(float, low=0, high=1, low_open=True),
        default=None,
        help="sliding-window step as a fraction of the model's patch (default: nnU-Net's 0.5)",
    )
    group.add_argument(
        "--lesion-labels",
        type=_names_list,
        default=None,
        metavar="L,L",
        help="the model's labels (names or values) that are lesions (default: every label but background)",
    )


def _names_list(text: str) -> Tuple[str, ...]:
    """A comma-separated list of names or numbers (folds, labels), none empty."""
    names = tuple(part.strip() for part in text.split(","))
    if not all(names):
        raise argparse.ArgumentTypeError(f"must be names or numbers separated by commas, got {text!r}")
    return names


def _nnunet_options(args: argparse.Namespace):
    """The nnU-Net options given (None when none is: the defaults, and no refusal with a manifest)."""
    from .model.nnunet_model import NnUNetOptions

    given = {
        "folds": args.folds,
        "checkpoint": args.checkpoint,
        "tta": args.tta,
        "tile_step": args.tile_step,
        "lesion_labels": args.lesion_labels,
    }
    given = {key: value for key, value in given.items() if value is not None}
    return NnUNetOptions(**given) if given else None


FP_FILTER_HELP = (
    "apply the bundled model's false-positive filter: a lesion-level classifier, trained on generated studies, "
    "removes candidates whose measurements look like normal physiology (brown fat, muscle, bowel...); the notes "
    "list what it removed. Off by default: on studies without such uptake it can remove a true lesion "
    "(see the model card)"
)


def _print_progress(fraction: float, message: str) -> None:
    print(f"[{fraction * 100:5.1f}%] {message}", flush=True)


def _cmd_synth(args: argparse.Namespace) -> int:
    from .synthetic.synth import generate_dataset

    start = time.perf_counter()
    cases = generate_dataset(
        Path(args.out),
        cases=args.cases,
        seed=args.seed,
        size=args.size,
        flavour=args.flavour,
        n_lesions=args.lesions,
        overwrite=args.overwrite,
        progress=None if args.quiet else _print_progress,
        variation=None if args.variation == "none" else args.variation,
    )
    elapsed = time.perf_counter() - start
    for case in cases:
        print(
            f"{case.case_id}: {len(case.ct.paths)} CT + {len(case.pet.paths)} PET DICOM files in {case.study_dir}, "
            f"{len(case.voc_files)} VOC XML, nnU-Net case {case.nnunet_files['label'].name}"
        )
    print(f"Wrote {len(cases)} synthetic case(s) to {args.out} in {elapsed:.1f} s")
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    import json

    from .info import format_info, info_report

    missing = [p for p in args.paths if not Path(p).exists()]
    if missing:
        raise InputError(f"{missing[0]}: no such file or folder")
    report = info_report([Path(p) for p in args.paths])
    print(json.dumps(report, indent=2) if args.json else format_info(report))
    if not report["studies"]:  # the report above says what was there; a script gets exit status 2
        raise InputError(_no_images_found(report))
    return 0


def _no_images_found(report: dict) -> str:
    """Why ``info`` found nothing to report: no files at all, or how many files of which kind."""
    where = ", ".join(report["paths"])
    files = report["files"]
    if not files["found"]:
        return f"{where}: no DICOM image files found (no files at all)"
    kinds = Counter(item["reason"] for item in report["skipped_files"])
    if files["unreadable"]:
        kinds["unreadable"] = files["unreadable"]
    breakdown = ", ".join(f"{count} {kind}" for kind, count in kinds.items())
    count = files["found"]
    return f"{where}: no DICOM image files found among {count} file{'' if count == 1 else 's'} ({breakdown})"


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    result, case = run_demo(
        Path(args.out),
        seed=args.seed,
        size=args.size,
        overwrite=args.overwrite,
        device=args.device,
        progress=_print_progress,
    )
    _write_slicer_views(result, Path(args.out), args.overwrite)
    return 0


def _write_slicer_views(result, out_dir: Path, overwrite: bool) -> None:
    """The demo's detections as Slicer's own slice views draw them, when slicer-core is installed: on the
    study the demo's prediction loaded (``result.loaded``), which is not read from DICOM again."""
    try:
        from .mrml.rendering import offscreen_rendering_problem, write_detection_views
    except ImportError:
        print("Slicer views: skipped (install slicer-core, the 'slicer' extra, to have them)")
        return
    problem = offscreen_rendering_problem()
    if problem:
        print(f"Slicer views: skipped ({problem})")
        return
    folder = out_dir / "predicted" / result.name
    for path in write_detection_views(result.loaded, result.detection, folder, overwrite):
        print(f"Slicer view: {path}")


def _cmd_convert(args: argparse.Namespace) -> int:
    try:
        from .mrml.convert import ConvertOptions, convert
    except ImportError as error:
        raise SetupError(
            f"convert builds Slicer's own nodes and needs the slicer-core package ({error}); "
            "install it with: pip install 'slicer-core==5.13.31053.0'"
        ) from error
    if args.nnunet and not args.case:
        raise InputError("--nnunet needs --case (the case id to import)")
    for path in [*(args.dicom or []), args.voc, args.nnunet]:
        if path is not None and not Path(path).exists():
            raise InputError(f"{path}: no such file or folder")
    exports = set(args.export.split(","))
    unknown = exports - {"voc", "nnunet"}
    if unknown:
        raise InputError(f"--export: unknown format(s) {', '.join(sorted(unknown))}; use voc, nnunet or voc,nnunet")
    options = ConvertOptions(
        voc_dir=Path(args.voc) if args.voc else None,
        nnunet_dataset=Path(args.nnunet) if args.nnunet else None,
        case_id=args.case,
        per_lesion=not args.one_segment,
        voc_from_segmentation=args.voc_from_segmentation,
        boxes_as_labels=args.boxes_as_labels,
        export_voc="voc" in exports,
        export_nnunet="nnunet" in exports,
        overwrite=args.overwrite,
    )
    report = convert([Path(p) for p in args.dicom or []], Path(args.out), options)
    print(report.text())
    # A script must be able to tell that something asked for did not come out (the lines above say why).
    if not report.written:
        print("petct-lesions convert: nothing was written", file=sys.stderr)
        return EXIT_NOT_ALL_DONE
    if report.failed:
        print(f"petct-lesions convert: {len(report.failed)} export(s) NOT written", file=sys.stderr)
        return EXIT_NOT_ALL_DONE
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from .training.train import TrainingSettings, train

    if args.dataset is not None and not Path(args.dataset).is_dir():
        raise InputError(f"{args.dataset}: no such dataset folder")
    if args.freeze_batchnorm and not (args.init or args.resume):
        raise InputError(
            "--freeze-batchnorm keeps the statistics of --init (or of the run --resume continues): give one"
        )
    settings = TrainingSettings(
        out_dir=Path(args.out),
        dataset=Path(args.dataset) if args.dataset else None,
        fold=args.fold,
        epochs=args.epochs,
        steps_per_epoch=args.steps_per_epoch,
        batch_size=args.batch_size,
        patch=args.patch,
        learning_rate=args.learning_rate,
        warmup_steps=args.warmup_steps,
        foreground_fraction=args.foreground_fraction,
        workers=args.workers if args.workers is not None else TrainingSettings.workers,
        pool_size=args.pool_size,
        validation_cases=args.validation_cases,
        synthetic_size=args.synthetic_size,
        seed=args.seed,
        device=args.device,
        resume=args.resume,
        init_model=Path(args.init) if args.init else None,
        max_minutes=args.max_minutes,
        freeze_batchnorm=args.freeze_batchnorm,
        overwrite=args.overwrite,
    )
    train(settings, log=lambda line: print(line, flush=True))
    return 0


def _cmd_train_fp_filter(args: argparse.Namespace) -> int:
    from .model import weights
    from .training.false_positive_filter import FitOptions, train_filter_on_generated, write_filter

    out = Path(args.out)
    if out.exists() and not args.overwrite:
        raise OutputExistsError(f"{out}: the filter file already exists")
    model = weights.load_model(args.model)
    options = FitOptions(hidden=args.hidden, target_recall=args.target_recall)
    variations = [None if name.strip() == "none" else name.strip() for name in args.variation.split(",")]
    found_filter, card = train_filter_on_generated(
        model,
        args.studies,
        variations,
        size=args.size,
        first_seed=args.first_seed,
        options=options,
        cache=Path(args.cache) if args.cache else None,
        progress=_print_progress,
    )
    write_filter(found_filter, out, card, overwrite=args.overwrite)
    numbers = card["out_of_fold"]
    print(
        f"{numbers['candidates']} candidates ({numbers['lesion_candidates']} on lesions) from {numbers['studies']} "
        f"studies; out of fold at cut {numbers['cut']:.3f}: lesion candidates kept "
        f"{numbers['out_of_fold_recall']:.3f}, false positives per study "
        f"{numbers['out_of_fold_false_positives_per_study_before']:.2f} -> "
        f"{numbers['out_of_fold_false_positives_per_study_after']:.2f}"
    )
    print(f"Wrote {out}")
    if args.attach:
        print(f"Named {weights.attach_filter(Path(args.attach), out).name} in {args.attach}")
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    from .predict import PredictionOptions, predict

    for path in args.paths:
        if not Path(path).exists():
            raise InputError(f"{path}: no such file or folder")
    options = PredictionOptions(
        model_path=Path(args.model) if args.model else None,
        device=args.device,
        threshold=args.threshold,
        min_volume_ml=args.min_volume,
        filter_false_positives=args.fp_filter,
        pictures=not args.no_pictures,
        overwrite=args.overwrite,
        pet_series_uids=tuple(args.pet_series),
        nnunet=_nnunet_options(args),
    )
    results = predict([Path(p) for p in args.paths], Path(args.out), options, progress=_print_progress)
    failed = 0
    for result in results:
        if result.left_out:
            print(f"{result.name}: left out: {result.left_out}")
            continue
        if result.error:
            failed += 1
            print(f"{result.name}: NOT processed: {result.error}")
            continue
        found = result.detection
        notes = f" ({'; '.join(found.notes)})" if found.notes else ""
        print(f"{result.name}: {len(found.lesions)} lesion(s) on {found.device} in {result.seconds:.1f} s{notes}")
        for lesion in found.lesions[:10]:
            print(
                f"  lesion {lesion.label}: {lesion.mtv_ml:.2f} mL, SUVmax {lesion.suv_max:.2f}, "
                f"SUVpeak {lesion.suv_peak:.2f}, TLG {lesion.tlg:.1f}"
            )
        for note in result.notes:
            print(f"  note: {note}")
        print(f"  {len(result.written)} file(s) written under {args.out}")
    return EXIT_NOT_ALL_DONE if failed else 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    import json
    from dataclasses import asdict

    from .evaluation import evaluate_label_files, label_pairs

    for path in (args.pred, args.ref):
        if not Path(path).exists():
            raise InputError(f"{path}: no such file or folder")
    pairs = label_pairs(Path(args.pred), Path(args.ref), partial=args.partial)
    result = evaluate_label_files(pairs.pairs)
    # With --json, stdout is the JSON alone (`| jq`, json.loads); the table and notes go to the terminal.
    readable = sys.stderr if args.json else sys.stdout
    print(result.table(), file=readable)
    for note in pairs.notes():
        print(f"note: {note}", file=readable)
    if args.json:
        summary = dict(result.summary())
        summary["references_not_evaluated"] = [str(path) for path in pairs.unpredicted]
        summary["predictions_not_evaluated"] = [str(path) for path in pairs.unreferenced]
        summary["per_case"] = [{"name": name, **asdict(case)} for name, case in zip(result.names, result.cases)]
        print(json.dumps(summary, indent=2))
    return 0


# The growth rules simulate-clicks offers (PERCIST needs a liver reference, which no simulated reader places),
# each with the value a reader would start from: 41% of SUVmax, SUV 2.5, or the model's probability at 0.2.
RULE_DEFAULT_VALUES = {"percent_of_max": 0.41, "fixed_suv": 2.5, "probability": 0.2}


def _cmd_simulate_clicks(args: argparse.Namespace) -> int:
    import json

    from .click_studies import ClickStudyOptions, mean_table, results_json, simulate_click_studies, study_table
    from .interactive.prompts import GrowthRule, PromptOptions
    from .predict import PredictionOptions

    for path in [*args.paths, args.ref]:
        if not Path(path).exists():
            raise InputError(f"{path}: no such file or folder")
    value = RULE_DEFAULT_VALUES[args.rule] if args.rule_value is None else args.rule_value
    options = ClickStudyOptions(
        clicks=args.clicks,
        protocol=args.protocol,
        prompt=PromptOptions(rule=GrowthRule(args.rule, value)),
        prediction=PredictionOptions(
            model_path=Path(args.model) if args.model else None,
            nnunet=_nnunet_options(args),
            device=args.device,
            threshold=args.threshold,
            filter_false_positives=args.fp_filter,
            pictures=False,
        ),
    )
    # With --json, stdout is the JSON alone (`| jq`, json.loads); progress and tables go to the terminal.
    readable = sys.stderr if args.json else sys.stdout

    def progress(fraction: float, message: str) -> None:
        print(f"[{fraction * 100:5.1f}%] {message}", file=readable, flush=True)

    results = simulate_click_studies([Path(p) for p in args.paths], Path(args.ref), options, progress=progress)
    for result in results:
        print(study_table(result), file=readable)
    print(f"growth rule: {options.prompt.rule.describe()}", file=readable)
    print(mean_table(results), file=readable)
    if args.json:
        print(json.dumps(results_json(results, options), indent=2))
    return EXIT_NOT_ALL_DONE if any(result.error for result in results) else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="petct-lesions",
        description="PET/CT lesion tools: inspect DICOM studies (info), detect lesions in them (predict), convert "
        "annotations between DICOM, PASCAL VOC and nnU-Net (convert), score predictions (evaluate), correct the "
        "model's lesions with simulated clicks (simulate-clicks), train the model (train), generate synthetic "
        "studies (synth) and run it all on a demo study (demo). Exit status: "
        "0 done, 1 a study could not be processed (none of its files is left) or convert could not write an export "
        "(each line says why), 2 refused before starting: bad arguments or input (the message says why), 3 an "
        "internal error (a bug: the traceback is printed; please report it), 130 cancelled.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    synth = commands.add_parser(
        "synth",
        help="generate synthetic PET/CT studies (DICOM, VOC boxes, nnU-Net cases, ground truth)",
        description="Generate deterministic synthetic PET/CT patients with known lesions and write them "
        "as DICOM (NBIA layout), Lung-PET-CT-Dx VOC XML and an autoPET-style nnU-Net v2 dataset.",
    )
    synth.add_argument("--out", required=True, help="output folder")
    synth.add_argument("--cases", type=POSITIVE_INT, default=1, help=f"number of patients {DEFAULT}")
    synth.add_argument(
        "--seed", type=NON_NEGATIVE_INT, default=1, help=f"random seed: same seed, same patients {DEFAULT}"
    )
    synth.add_argument("--size", choices=("small", "full"), default="full", help=f"{SIZE_HELP} {DEFAULT}")
    synth.add_argument(
        "--flavour",
        choices=("lung", "autopet"),
        default="lung",
        help=f"lung: Lung-PET-CT-Dx-like chest study; autopet: whole-body FDG study {DEFAULT}",
    )
    synth.add_argument(
        "--lesions", type=NON_NEGATIVE_INT, default=None, help="lesions per patient (default: drawn from the seed)"
    )
    synth.add_argument(
        "--variation",
        default="none",
        help="vary normal physiology and the scanner (domain randomisation): training, held_out (ranges disjoint "
        f"from training's, for validation), or none: the generator as always {DEFAULT}",
    )
    synth.add_argument("--overwrite", action="store_true", help="replace files from an earlier run")
    synth.add_argument("--quiet", action="store_true", help="no progress lines")
    synth.set_defaults(func=_cmd_synth)

    info = commands.add_parser(
        "info",
        help="list the DICOM studies and series under paths, the PET/CT pairing and each PET's SUVbw factor",
        description="Scan files or folders (any layout) and report studies, series (modality, files, size, "
        "spacing), how each PET is paired with a CT, and per PET series the SUVbw factor or the exact "
        "reason it cannot be computed. Reads headers only.",
    )
    info.add_argument("paths", nargs="+", help="DICOM files or folders")
    info.add_argument("--json", action="store_true", help="machine-readable output")
    info.set_defaults(func=_cmd_info)

    demo = commands.add_parser(
        "demo",
        help="the main job on the built-in synthetic demo study",
        description="Generate the synthetic demo patient (DICOM + ground truth), load it from DICOM, detect its "
        "lesions with the bundled model and write the lesion table, pictures, nnU-Net case and VOC boxes "
        "under OUT/predicted.",
    )
    demo.add_argument("--out", required=True, help="output folder")
    demo.add_argument("--seed", type=NON_NEGATIVE_INT, default=1, help=f"demo patient seed {DEFAULT}")
    demo.add_argument("--size", choices=("small", "full"), default="full", help=f"{SIZE_HELP} {DEFAULT}")
    demo.add_argument("--device", default="auto", help=f"{DEVICE_HELP} {DEFAULT}")
    demo.add_argument("--overwrite", action="store_true", help="replace files from an earlier run")
    demo.set_defaults(func=_cmd_demo)

    conv = commands.add_parser(
        "convert",
        help="import a study and its annotations into Slicer's representation and export VOC and/or nnU-Net",
        description="Load every PET/CT (or CT-only) study under --dicom, import the VOC boxes (--voc) and/or an "
        "nnU-Net label (--nnunet/--case) as Slicer ROI boxes and lesion segments, and export from there: "
        "VOC XML in OUT/Annotation/<patient>/ and an nnU-Net case in OUT/nnUNet_raw/. Works over many "
        "patients in one run. Existing files are never replaced unless --overwrite is given; a replaced file is "
        "kept beside itself as <name>.bak-<time>. Written over its own input (--out where --voc or --nnunet read "
        "from), VOC files of unchanged slices are left as they are and the output says what changed since the import.",
    )
    conv.add_argument("--dicom", nargs="+", help="DICOM files or folders (any layout, several patients)")
    conv.add_argument("--voc", help="Lung-PET-CT-Dx Annotation folder (with <A0001>/ subfolders) or one patient's")
    conv.add_argument("--nnunet", help="nnU-Net raw dataset folder to import a case from")
    conv.add_argument("--case", help="case id in --nnunet (spaces allowed; quote it)")
    conv.add_argument("--out", required=True, help="output folder")
    conv.add_argument("--export", default="voc,nnunet", help=f"what to write: voc, nnunet or voc,nnunet {DEFAULT}")
    conv.add_argument("--one-segment", action="store_true", help="import a label as one segment, not one per lesion")
    conv.add_argument("--voc-from-segmentation", action="store_true", help="also write each lesion's box per CT slice")
    conv.add_argument(
        "--boxes-as-labels",
        action="store_true",
        help="without a segmentation, write the VOC boxes filled as the nnU-Net label (said in the output)",
    )
    conv.add_argument("--overwrite", action="store_true", help="replace files from an earlier run")
    conv.set_defaults(func=_cmd_convert)

    pr = commands.add_parser(
        "predict",
        help="detect lesions in DICOM PET/CT studies (or an nnU-Net dataset) with the bundled model or your own",
        description="Run the lesion model on every PET/CT study under the paths (any layout, many patients) and "
        "write per study a lesion table (CSV), pictures, an nnU-Net case with the predicted label and VOC boxes "
        "on the CT slices. Given an nnU-Net raw dataset folder, write <case>.nii.gz predictions instead. "
        "--model takes a model manifest or an nnU-Net v2 trained-model folder (e.g. a published autoPET model), "
        "which nnU-Net's own predictor runs (pip install nnunetv2); its lesions go through the same measurements, "
        "boxes and exports.",
    )
    pr.add_argument("paths", nargs="+", help="DICOM files/folders, or one nnU-Net raw dataset folder")
    pr.add_argument("--out", required=True, help="output folder")
    pr.add_argument("--model", help=MODEL_HELP)
    pr.add_argument("--device", default="auto", help=f"{DEVICE_HELP} {DEFAULT}")
    pr.add_argument(
        "--threshold", type=PROBABILITY, default=None, help="lesion probability threshold (default: the model's)"
    )
    pr.add_argument(
        "--min-volume", type=NON_NEGATIVE_FLOAT, default=0.0, help=f"drop lesions smaller than this many mL {DEFAULT}"
    )
    pr.add_argument("--fp-filter", action="store_true", help=FP_FILTER_HELP)
    pr.add_argument("--no-pictures", action="store_true", help="skip the PNG pictures")
    pr.add_argument("--overwrite", action="store_true", help="replace files from an earlier run")
    pr.add_argument(
        "--pet-series",
        action="append",
        default=[],
        metavar="UID",
        help="process this PET series (SeriesInstanceUID, as `info` lists them) instead of its study's preferred "
        "one, e.g. the non-attenuation-corrected images; repeat for series of other studies",
    )
    add_nnunet_arguments(pr)
    pr.set_defaults(func=_cmd_predict)

    ev = commands.add_parser(
        "evaluate",
        help="autoPET metrics (Dice, FPV, FNV), lesion sensitivity, FP lesions and box mAP of predicted labels",
        description="Compare predicted label files with reference labels: two .nii.gz files, or two folders "
        "matched by file name (nnU-Net's labelsTr and a prediction folder). Components are 18-connected as in "
        "the autoPET evaluation; boxes are the lesions' tight boxes on each axial slice (every prediction "
        "scored 1).",
    )
    ev.add_argument("--pred", required=True, help="predicted label file or folder")
    ev.add_argument("--ref", required=True, help="reference label file or folder")
    ev.add_argument(
        "--json",
        action="store_true",
        help="print the pooled and per-study numbers as JSON, alone on stdout (the table goes to stderr)",
    )
    ev.add_argument(
        "--partial",
        action="store_true",
        help="evaluate only the reference cases that have a prediction and list the others (default: refuse "
        "when a reference case has no prediction, as nnU-Net's evaluation without --chill)",
    )
    ev.set_defaults(func=_cmd_evaluate)

    sc = commands.add_parser(
        "simulate-clicks",
        help="interactive benchmark: the model's lesions corrected by N simulated clicks, scored after each",
        description="Detect the lesions of every study under the paths (as predict: DICOM studies or an nnU-Net "
        "dataset), then let a simulated reader correct them with --clicks steps of positive (add, grow) and "
        "negative (remove) clicks through the prompt engine, and print per step the Dice, FPV and FNV (autoPET), "
        "lesion sensitivity, false-positive lesions and seconds per click, per study and as the mean over "
        "studies, and the AUC over steps (the trapezoid over steps 0..N divided by N). Nothing is written.",
    )
    sc.add_argument("paths", nargs="+", help="DICOM files/folders, or one nnU-Net raw dataset folder (as predict)")
    sc.add_argument(
        "--ref",
        required=True,
        help="reference labels on the PET grid: a folder of <case id>.nii.gz (as evaluate's --ref, e.g. a labelsTr "
        "folder), or one label file for a single study; binary or one number per lesion",
    )
    sc.add_argument("--clicks", type=POSITIVE_INT, default=10, help=f"correction steps after the detection {DEFAULT}")
    sc.add_argument(
        "--protocol",
        choices=("corrective", "autopet4"),
        default="corrective",
        help="corrective: each step clicks the largest remaining error (a missed lesion or part: positive; a "
        "false-positive lesion: negative) at its point farthest from its border; autopet4: autoPET IV's "
        f"simulator (one tumour and one background click per step, placed once from the reference) {DEFAULT}",
    )
    sc.add_argument(
        "--rule",
        choices=tuple(RULE_DEFAULT_VALUES),
        default="percent_of_max",
        help=f"how a positive click grows its lesion: a fraction of its SUVmax, a fixed SUV or the model's "
        f"probability {DEFAULT}",
    )
    sc.add_argument(
        "--rule-value",
        type=POSITIVE_FLOAT,
        default=None,
        help="the rule's value: fraction of SUVmax (default 0.41), SUV (default 2.5) or probability (default 0.2)",
    )
    sc.add_argument("--model", help=MODEL_HELP)
    sc.add_argument("--fp-filter", action="store_true", help=FP_FILTER_HELP)
    sc.add_argument("--device", default="auto", help=f"{DEVICE_HELP} {DEFAULT}")
    sc.add_argument(
        "--threshold", type=PROBABILITY, default=None, help="lesion probability threshold (default: the model's)"
    )
    sc.add_argument(
        "--json",
        action="store_true",
        help="print the per-study and mean curves as JSON, alone on stdout (progress and tables go to stderr)",
    )
    add_nnunet_arguments(sc)
    sc.set_defaults(func=_cmd_simulate_clicks)

    fp = commands.add_parser(
        "train-fp-filter",
        help="train the false-positive filter (a lesion-level classifier) on the model's candidates in generated "
        "studies; 2 CPU cores are enough",
        description="Run the model on generated whole-body studies, measure every candidate lesion it proposes "
        "(size, uptake, contrast, CT numbers inside and around it, shape, its mirror image across the midline) and "
        "fit a small classifier that tells lesions from normal physiology. The cut keeps --target-recall of the "
        "lesions' candidates, out of fold. The filter is a JSON file of numbers (loading it runs no code); "
        "--attach names it, with its checksum, in a model manifest, and detection then applies it.",
    )
    fp.add_argument("--out", required=True, help="the filter's JSON file")
    fp.add_argument("--model", help="model manifest (default: the bundled model)")
    fp.add_argument("--studies", type=POSITIVE_INT, default=48, help=f"generated studies {DEFAULT}")
    fp.add_argument("--first-seed", type=NON_NEGATIVE_INT, default=2_000_000, help=f"their first seed {DEFAULT}")
    fp.add_argument(
        "--variation",
        default="training,none",
        help="generator variations (see synth --variation; none: the plain generator), comma-separated; --studies "
        f"studies of each, the n-th variation's seeds from --first-seed + n x 100000 {DEFAULT}",
    )
    fp.add_argument("--size", choices=("small", "full"), default="small", help=f"study size {DEFAULT}")
    fp.add_argument("--hidden", type=NON_NEGATIVE_INT, default=16, help=f"hidden units, 0: logistic {DEFAULT}")
    fp.add_argument(
        "--target-recall",
        type=PROBABILITY,
        default=0.98,
        help=f"share of the lesions' candidates the cut keeps, out of fold {DEFAULT}",
    )
    fp.add_argument("--cache", help="candidates file (.npz): read when it exists, else written")
    fp.add_argument("--attach", help="model manifest that will name the filter (copied beside it)")
    fp.add_argument("--overwrite", action="store_true", help="replace --out")
    fp.set_defaults(func=_cmd_train_fp_filter)

    tr = commands.add_parser(
        "train",
        help="train the lesion model on an nnU-Net raw dataset (autoPET layout) or on generated studies",
        description="Train the lesion network. With --dataset: any nnU-Net v2 raw dataset whose channels are "
        "0000 CT and 0001 PET (the autoPET download works as is); splits_final.json is used when present. "
        "Without: generated studies, drawn on the fly. Checkpoints, the log and the final model (model.json + "
        "model.pt) go to --out. Several GPUs: torchrun --nproc_per_node=N -m PETCTLesionsLib.cli train ...",
    )
    tr.add_argument("--dataset", help="nnU-Net raw dataset folder (default: generated studies)")
    tr.add_argument("--out", required=True, help="folder for checkpoints, log and the trained model")
    tr.add_argument(
        "--fold",
        type=NON_NEGATIVE_INT,
        default=0,
        help=f"fold of splits_final.json to train (with --dataset) {DEFAULT}",
    )
    tr.add_argument(
        "--epochs",
        type=POSITIVE_INT,
        default=50,
        help=f"epochs to train, each --steps-per-epoch steps and then a validation; the learning rate decays to "
        f"zero at the last one {DEFAULT}",
    )
    tr.add_argument("--steps-per-epoch", type=POSITIVE_INT, default=250, help=f"optimizer steps per epoch {DEFAULT}")
    tr.add_argument(
        "--batch-size", type=POSITIVE_INT, default=4, help=f"patches per step (per GPU under torchrun) {DEFAULT}"
    )
    tr.add_argument(
        "--patch",
        type=_patch_size,
        default="80,128,128",
        help=f"patch size z,y,x in working voxels (4 x 4 x 3 mm) {DEFAULT}",
    )
    tr.add_argument(
        "--learning-rate",
        type=POSITIVE_FLOAT,
        default=2e-3,
        help=f"AdamW's peak learning rate, reached after --warmup-steps, then decayed to zero {DEFAULT}",
    )
    tr.add_argument(
        "--warmup-steps",
        type=NON_NEGATIVE_INT,
        default=200,
        help=f"steps over which the learning rate rises linearly to --learning-rate {DEFAULT}",
    )
    tr.add_argument(
        "--foreground-fraction",
        type=FRACTION,
        default=1 / 3,
        help="share of patches centred on a lesion (default: %(default).3g)",
    )
    tr.add_argument(
        "--workers",
        type=NON_NEGATIVE_INT,
        default=None,
        help="data preparation processes (default: cores - 1; 0: the pool is filled once, here, and kept)",
    )
    tr.add_argument("--pool-size", type=POSITIVE_INT, default=48, help=f"prepared studies kept in memory {DEFAULT}")
    tr.add_argument(
        "--validation-cases", type=POSITIVE_INT, default=6, help=f"whole studies validated each epoch {DEFAULT}"
    )
    tr.add_argument(
        "--synthetic-size",
        choices=("small", "full"),
        default="full",
        help=f"without --dataset, the generated studies' size; {SIZE_HELP} {DEFAULT}",
    )
    tr.add_argument(
        "--seed",
        type=NON_NEGATIVE_INT,
        default=0,
        help=f"random seed of the weights, the patches and (without --dataset) the generated studies {DEFAULT}",
    )
    tr.add_argument("--device", default="auto", help=f"{DEVICE_HELP} {DEFAULT}")
    again = tr.add_mutually_exclusive_group()
    again.add_argument("--resume", action="store_true", help="continue from --out/checkpoint_last.pt")
    again.add_argument("--overwrite", action="store_true", help="start again in an --out that holds an earlier run")
    tr.add_argument("--init", help="start from this model's weights (a model .json manifest), new optimizer")
    tr.add_argument(
        "--freeze-batchnorm",
        action="store_true",
        help="with --init: keep its BatchNorm statistics (fine-tuning on small patches or batches)",
    )
    tr.add_argument(
        "--max-minutes", type=POSITIVE_FLOAT, default=None, help="stop after the epoch that passes this time"
    )
    tr.set_defaults(func=_cmd_train)
    return parser


MODEL_COMMANDS = ("demo", "predict", "train", "train-fp-filter", "simulate-clicks")  # the commands that run the network


# Which torch to install depends on the computer (CUDA, ROCm, CPU; Intel Macs have no build after 2.2.2).
TORCH_HINT = (
    "install a build for this computer (pip install torch; the CPU build used in CI is torch==2.13.0, "
    "and Intel Macs stop at torch 2.2.2); see the README"
)


def _require_torch(command: str) -> None:
    """A one-line refusal instead of a traceback when the model's torch is not installed or cannot load."""
    try:
        installed = importlib.util.find_spec("torch") is not None
        if installed:
            import torch  # noqa: F401  (a broken install fails here, e.g. OSError [WinError 126] for a DLL)
    except Exception as error:
        raise SetupError(
            f"{command} runs the lesion model, which needs PyTorch, but the installed one cannot be loaded "
            f"({error}): {TORCH_HINT}"
        ) from error
    if not installed:
        raise SetupError(f"{command} runs the lesion model, which needs PyTorch (not installed): {TORCH_HINT}")


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if argv is None and args.command in MODEL_COMMANDS:
        # Started from a shell: start again once with huge pages for the network's memory (see hugepages).
        restart_with_huge_pages([sys.executable, "-m", "PETCTLesionsLib.cli", *sys.argv[1:]])
    try:
        if args.command in MODEL_COMMANDS:
            _require_torch(args.command)
        return int(args.func(args))
    except Cancelled as error:
        print(f"petct-lesions {args.command}: {error}", file=sys.stderr)
        return EXIT_CANCELLED
    except (PETCTLesionsError, OSError) as error:
        # The library's refusals and the system's errors name the file and the problem: one line, no traceback.
        print(f"petct-lesions {args.command}: error: {_refusal_text(error, args)}", file=sys.stderr)
        return EXIT_REFUSED
    except Exception:
        traceback.print_exc()
        print(
            f"petct-lesions {args.command}: internal error (a bug): please report it at {ISSUES_URL} "
            "with the traceback above",
            file=sys.stderr,
        )
        return EXIT_BUG


def _refusal_text(error: Exception, args: argparse.Namespace) -> str:
    """The error's message; an output in the way says how to replace it when the refusal did not."""
    if isinstance(error, OutputExistsError) and not error.hint and hasattr(args, "overwrite"):
        return f"{error} (--overwrite replaces it)"
    return str(error)


if __name__ == "__main__":
    sys.exit(main())
