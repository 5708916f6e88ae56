"""The ``petct-lesions`` command line: the same logic as the Slicer module, headless."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import List, Optional

from . import __version__


def _print_progress(fraction: float, message: str) -> None:
    print(f"[{fraction * 100:5.1f}%] {message}", flush=True)


def _cmd_synth(args: argparse.Namespace) -> int:
    from .synth import generate_dataset

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

    from .study import format_info, info_report

    missing = [p for p in args.paths if not Path(p).exists()]
    if missing:
        raise FileNotFoundError(f"{missing[0]}: no such file or folder")
    report = info_report([Path(p) for p in args.paths])
    print(json.dumps(report, indent=2) if args.json else format_info(report))
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    run_demo(Path(args.out), seed=args.seed, size=args.size, overwrite=args.overwrite, progress=_print_progress)
    return 0


def _cmd_convert(args: argparse.Namespace) -> int:
    try:
        from .mrml.convert import ConvertOptions, convert
    except ImportError as error:
        raise ValueError(
            f"convert builds Slicer's own nodes and needs the slicer-core package ({error}); "
            "install it with: pip install 'slicer-core==5.13.31053.0'"
        ) from error
    if args.nnunet and not args.case:
        raise ValueError("--nnunet needs --case (the case id to import)")
    for path in [*(args.dicom or []), args.voc, args.nnunet]:
        if path is not None and not Path(path).exists():
            raise FileNotFoundError(f"{path}: no such file or folder")
    exports = set(args.export.split(","))
    unknown = exports - {"voc", "nnunet"}
    if unknown:
        raise ValueError(f"--export: unknown format(s) {', '.join(sorted(unknown))}; use voc, nnunet or voc,nnunet")
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
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="petct-lesions",
        description="PET/CT lesion tools: inspect DICOM studies, generate synthetic studies, run the demo.",
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
    synth.add_argument("--cases", type=int, default=1, help="number of patients (default 1)")
    synth.add_argument("--seed", type=int, default=1, help="random seed: same seed, same patients (default 1)")
    synth.add_argument(
        "--size",
        choices=("small", "full"),
        default="full",
        help="full: 512x512 CT and 200x200 PET slices; small: reduced grids for quick tests",
    )
    synth.add_argument(
        "--flavour",
        choices=("lung", "autopet"),
        default="lung",
        help="lung: Lung-PET-CT-Dx-like chest study; autopet: whole-body FDG study",
    )
    synth.add_argument("--lesions", type=int, default=None, help="lesions per patient (default: drawn from the seed)")
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
        description="Generate the synthetic demo patient, write it as DICOM, VOC and nnU-Net, "
        "and render fused PET/CT pictures of its lesions.",
    )
    demo.add_argument("--out", required=True, help="output folder")
    demo.add_argument("--seed", type=int, default=1, help="demo patient seed (default 1)")
    demo.add_argument("--size", choices=("small", "full"), default="full", help="grid size (default full)")
    demo.add_argument("--overwrite", action="store_true", help="replace files from an earlier run")
    demo.set_defaults(func=_cmd_demo)

    conv = commands.add_parser(
        "convert",
        help="import a study and its annotations into Slicer's representation and export VOC and/or nnU-Net",
        description="Load every PET/CT (or CT-only) study under --dicom, import the VOC boxes (--voc) and/or an "
        "nnU-Net label (--nnunet/--case) as Slicer ROI boxes and lesion segments, and export from there: "
        "VOC XML in OUT/Annotation/<patient>/ and an nnU-Net case in OUT/nnUNet_raw/. Works over many "
        "patients in one run. Existing files are never replaced unless --overwrite is given.",
    )
    conv.add_argument("--dicom", nargs="+", help="DICOM files or folders (any layout, several patients)")
    conv.add_argument("--voc", help="Lung-PET-CT-Dx Annotation folder (with <A0001>/ subfolders) or one patient's")
    conv.add_argument("--nnunet", help="nnU-Net raw dataset folder to import a case from")
    conv.add_argument("--case", help="case id in --nnunet (spaces allowed; quote it)")
    conv.add_argument("--out", required=True, help="output folder")
    conv.add_argument("--export", default="voc,nnunet", help="what to write: voc, nnunet or voc,nnunet (default)")
    conv.add_argument("--one-segment", action="store_true", help="import a label as one segment, not one per lesion")
    conv.add_argument("--voc-from-segmentation", action="store_true", help="also write each lesion's box per CT slice")
    conv.add_argument(
        "--boxes-as-labels",
        action="store_true",
        help="without a segmentation, write the VOC boxes filled as the nnU-Net label (said in the output)",
    )
    conv.add_argument("--overwrite", action="store_true", help="replace files from an earlier run")
    conv.set_defaults(func=_cmd_convert)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except (OSError, ValueError) as error:
        # Errors from readers and writers name the file and the problem; show them without a traceback.
        print(f"petct-lesions {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
