"""Report what a set of files holds, without loading it: the ``info`` command.

:func:`info_report` describes the files without reading pixels (but those of a PET slice whose
header allows SUVs beyond :data:`.dicom.suv.HIGH_SUV_WARNING`, see :func:`.study.check_suv_values`):
studies, series (modality, files, size, spacing...), the PET/CT pairing with its rule,
alternatives and the CT's coverage of the PET, and per PET series the SUVbw factor or the
exact reason it cannot be computed. :func:`format_info` turns that report into text.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from .dicom.index import IndexedSeries, PathLike, scan_paths
from .dicom.series import DicomSeriesError, series_geometry
from .dicom.suv import SUVError, SUVResult, suv_bw_factors
from .jobs import CancelCallback, ProgressCallback
from .study import SeriesInfo, check_suv_values, describe_scan


def _suv_summary(series: IndexedSeries) -> Tuple[Dict[str, Any], Optional[SUVResult]]:
    try:
        result = suv_bw_factors([h.dataset for h in series.headers], source=series.label)  # type: ignore[misc]
    except SUVError as error:
        return {"error": str(error)}, None
    factors = np.asarray(result.factors, dtype=float)
    constant = bool(np.allclose(factors, factors[0], rtol=1e-12, atol=0))
    return {
        "factor": float(factors[0]) if constant else None,
        "factor_min": float(factors.min()),
        "factor_max": float(factors.max()),
        "units": result.units,
        "weight_kg": result.weight_kg,
        "injected_dose_bq": result.injected_dose_bq,
        "half_life_s": result.half_life_s,
        "decay_time_s": result.decay_time_s,
        "reference_time": result.reference_time,
        "warnings": list(result.warnings),
    }, result


def _floats(values: Optional[Sequence[float]]) -> Optional[List[float]]:
    return None if values is None else [float(v) for v in values]


def _series_entry(info: SeriesInfo, series: IndexedSeries) -> Dict[str, Any]:
    entry: Dict[str, Any] = {
        "series_uid": info.series_uid,
        "modality": info.modality,
        "description": info.description,
        "series_number": info.series_number,
        "files": len(info.files),
        "folders": sorted({str(path.parent) for path in info.files}),
        "size": None if info.size is None else [int(v) for v in info.size],
        "spacing": _floats(info.spacing),
        "origin": _floats(info.origin),
        "direction": _floats(info.direction),
        "frame_of_reference_uid": info.frame_of_reference_uid,
        "warnings": list(info.warnings),
        "error": info.error,
    }
    if info.modality == "PT":
        entry["suv"], suv = _suv_summary(series)
        if suv is not None and info.error is None:
            try:  # SUVs no scan gives (a wrong slope on a slice): what a load would refuse or warn about
                geometry = series_geometry(series)
                factor_of = {id(header): factor for header, factor in zip(series.headers, suv.factors)}
                sorted_suv = replace(suv, factors=np.array([factor_of[id(h)] for h in geometry.headers]))
                entry["warnings"].extend(check_suv_values(geometry, sorted_suv))
            except (SUVError, DicomSeriesError) as problem:
                entry["error"] = str(problem)
    return entry


def info_report(
    paths: Sequence[PathLike],
    progress: Optional[ProgressCallback] = None,
    cancel: Optional[CancelCallback] = None,
) -> Dict[str, Any]:
    """What the files under ``paths`` hold, as a JSON-able dict (no pixel data are read, but those of a
    PET slice whose header allows SUVs beyond :data:`suv.HIGH_SUV_WARNING`: see :func:`check_suv_values`)."""
    scan = scan_paths(paths, progress=progress, cancel=cancel)
    series_by_key = {(series.series_uid, series.modality): series for series in scan.series}
    studies = []
    for study in describe_scan(scan):
        studies.append(
            {
                "study_uid": study.study_uid,
                "patient_id": study.patient_id,
                "patient_name": study.patient_name,
                "study_date": study.study_date,
                "description": study.description,
                "series": [
                    _series_entry(info, series_by_key[(info.series_uid, info.modality)]) for info in study.series
                ],
                "pet_ct_pairs": [
                    {
                        "pet_series_uid": pair.pet.series_uid,
                        "ct_series_uid": None if pair.ct is None else pair.ct.series_uid,
                        "rule": pair.rule,
                        "alternatives": list(pair.alternatives),
                        "warnings": list(pair.warnings),
                        "preferred": pair.preferred,
                        "not_preferred_because": pair.not_preferred_because,
                        "ct_coverage": pair.ct_coverage,
                        "error": pair.error,
                    }
                    for pair in study.pairs
                ],
                "pairing_note": None if study.pairs else "no PET series in this study",
            }
        )
    return {
        "paths": [str(p) for p in paths],
        "files": {
            "found": scan.files_found,
            # Every file with pixel data: slices, copies, and localizers set aside from their series.
            "dicom_images": sum(
                len(s.files) + len({copy for copy, _ in s.duplicates}) + len(s.set_aside) for s in scan.series
            ),
            "skipped": len(scan.skipped),
            "unreadable": len(scan.problems),
        },
        "skipped_files": [{"path": str(p.path), "reason": p.message} for p in scan.skipped],
        "unreadable_files": [{"path": str(p.path), "message": p.message} for p in scan.problems],
        "studies": studies,
    }


def _format_vector(values: Optional[Sequence[float]], digits: int = 3) -> str:
    return "?" if values is None else " x ".join(f"{v:.{digits}f}" for v in values)


def _format_suv(suv: Dict[str, Any]) -> str:
    if "error" in suv:
        return f"SUVbw cannot be computed: {suv['error']}"
    if suv["factor"] is not None:
        text = f"SUVbw factor {suv['factor']:.6g}"
    else:
        text = f"SUVbw factor per slice {suv['factor_min']:.6g} .. {suv['factor_max']:.6g}"
    details = [f"units {suv['units']}"]
    if suv["weight_kg"] is not None:
        details.append(f"weight {suv['weight_kg']:g} kg")
    if suv["injected_dose_bq"] is not None:
        details.append(f"dose {suv['injected_dose_bq'] / 1e6:.4g} MBq")
    if suv["decay_time_s"] is not None:
        details.append(f"decay time {suv['decay_time_s']:.0f} s")
    return f"{text} ({', '.join(details)}; reference: {suv['reference_time']})"


def _skipped_summary(skipped: List[Dict[str, str]], examples: int = 3) -> List[str]:
    """Skipped files grouped by reason, a few examples each: a folder of 1000 XMLs stays readable."""
    by_reason: Dict[str, List[str]] = {}
    for item in skipped:
        by_reason.setdefault(item["reason"], []).append(item["path"])
    lines = []
    for reason, paths in by_reason.items():
        lines.append(f"  skipped {len(paths)} file(s): {reason}, e.g.")
        lines.extend(f"    {path}" for path in paths[:examples])
        if len(paths) > examples:
            lines.append(f"    ... and {len(paths) - examples} more (--json lists them all)")
    return lines


def format_info(report: Dict[str, Any]) -> str:
    """Human-readable text of an :func:`info_report` dict."""
    files = report["files"]
    lines = [
        f"Scanned {files['found']} files: {files['dicom_images']} DICOM images, {files['skipped']} skipped, "
        f"{files['unreadable']} unreadable"
    ]
    lines.extend(_skipped_summary(report["skipped_files"]))
    lines.extend(f"  UNREADABLE {item['message']}" for item in report["unreadable_files"])
    if not report["studies"]:
        lines.append("No DICOM image series found.")
    series_labels = {}
    for study in report["studies"]:
        for series in study["series"]:
            number = "?" if series["series_number"] is None else series["series_number"]
            series_labels[series["series_uid"]] = f"{series['modality']} series {number} '{series['description']}'"
    for study in report["studies"]:
        lines.append("")
        lines.append(
            f"Study {study['study_uid']}: patient {study['patient_id']} ({study['patient_name']}), "
            f"date {study['study_date'] or '?'}, '{study['description']}'"
        )
        for series in study["series"]:
            lines.append(
                f"  {series_labels[series['series_uid']]}: {series['files']} files, "
                f"size {_format_vector(series['size'], 0)}, spacing {_format_vector(series['spacing'])} mm"
            )
            lines.append(f"      SeriesInstanceUID {series['series_uid']}")
            if series["error"]:
                lines.append(f"      cannot be loaded: {series['error']}")
            lines.extend(f"      warning: {warning}" for warning in series["warnings"])
            if "suv" in series:
                lines.append(f"      {_format_suv(series['suv'])}")
                lines.extend(f"      warning: {warning}" for warning in series["suv"].get("warnings", []))
        if study["pairing_note"]:
            lines.append(f"  PET/CT pairing: {study['pairing_note']}")
        for pair in study["pet_ct_pairs"]:
            ct = (
                "no CT"
                if pair["ct_series_uid"] is None
                else series_labels.get(pair["ct_series_uid"], pair["ct_series_uid"])
            )
            lines.append(f"  PET/CT pairing: {series_labels[pair['pet_series_uid']]} -> {ct}")
            lines.append(f"      rule: {pair['rule']}")
            if pair["ct_coverage"] is not None:
                lines.append(f"      the CT covers {pair['ct_coverage']:.0%} of the PET's length along its slice axis")
            if pair["error"]:
                lines.append(f"      cannot be loaded: {pair['error']}")
            if pair["not_preferred_because"]:
                lines.append(f"      not the study's first choice: {pair['not_preferred_because']}")
            lines.extend(f"      not chosen: {alternative}" for alternative in pair["alternatives"])
            lines.extend(f"      warning: {warning}" for warning in pair["warnings"])
    return "\n".join(lines) + "\n"
