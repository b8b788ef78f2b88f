"""Prediction folder + reference folder → per-case table, summary and pooled precision-recall curve.

Outputs (written atomically into `out_dir`):

- `cases.csv` — one row per case: `case, dsc, f2, sensitivity, precision, specificity, apr` first, then
  `iou, tp, fp, fn, tn`, volumes, surface distances and lesion-wise detection (`evaluate_cases` lists
  them); undefined values are written `nan`. Definitions: voxel-wise in `metrics`, HD95/ASSD in `surface`
  (MONAI's), lesion-wise in `lesionwise` (ISBI 2015).
- `summary.json` — `{"threshold", "n_cases", "per_case", "pooled", "calibration"}`.
  **per_case**: for every metric, `mean`, `sd` (sample SD, ddof = 1), `median` over the cases where it is
  defined, `n` (cases where defined) and `n_undefined` (cases where NaN); mean/median are NaN with no
  defined value, sd with fewer than two. Each patient counts once.
  **pooled**: all test voxels together as one big case — confusion counts summed over cases and the
  metrics computed from the sums; APR from the merged precision-recall tables, i.e. exactly
  scikit-learn's `average_precision_score` on the concatenated voxels of every case.
- `pr_curve.csv` — the pooled precision-recall curve (`threshold, precision, recall`, thresholds
  increasing, as scikit-learn's `precision_recall_curve`; the end point precision 1, recall 0 has
  threshold `inf`). At most `pr_curve_max_points` rows: points of the exact curve, never interpolated.
- `threshold_curves.csv` — DSC, F2, sensitivity and precision at the thresholds 0.01, 0.02, … 0.99: the
  mean over cases of the per-case values, then the pooled ones (`<metric>_pooled`); `operating_points`.
- `calibration.csv` — the pooled reliability diagram (`bin_low, bin_high, n_voxels, confidence,
  observed`) over the brain voxels; the per-case ECE is the `ece` column of `cases.csv` and the pooled
  one `pooled.ece` of `summary.json` (`lesionseg.evaluation.calibration`: equal-width bins).

A voxel is predicted lesion when `probability >= threshold` (the convention of the precision-recall curve,
so the at-threshold figures are a point of the curve). Binary masks (0/1, any dtype) are probabilities too.

With a brain mask per case (`masks=` / `mask_dir=`), every figure is restricted to the voxels inside it:
voxels outside are neither TP, FP, FN nor TN and are left out of the precision-recall tables, and
prediction and reference are set to 0 outside it for the surface distances and lesion-wise detection.
"""

from __future__ import annotations

import csv
import io
import math
import numbers
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from lesionseg.config import EVAL_DEFAULTS
from lesionseg.errors import LesionsegError
from lesionseg.evaluation import calibration, lesionwise, metrics, operating_points, registry
from lesionseg.evaluation.nanstats import case_statistics, mean_over_cases
from lesionseg.evaluation.surface import surface_distances
from lesionseg.evaluation.volumes import load_case, load_mask, load_region, nifti_files, require_label
from lesionseg.files import write_json, write_text

FIRST_COLUMNS = ["case", *registry.names("voxel")]  # cases.csv's columns by group, from the registry
COUNT_COLUMNS = list(registry.names("counts"))


def _format(value: object) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else repr(value)
    return str(value)


def _csv_text(columns: list[str], rows: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([_format(row[c]) for c in columns])
    return buffer.getvalue()


def _thin(n: int, recall: np.ndarray, max_points: int | None) -> np.ndarray:
    """Indices of curve points to keep: all when few, else first/last of each recall run, evenly sampled."""
    if max_points is None or n <= max_points:
        return np.arange(n)
    change = np.flatnonzero(np.diff(recall) != 0)
    keep = np.unique(np.concatenate([[0, n - 1], change, change + 1]))
    if keep.size > max_points:
        keep = keep[np.unique(np.linspace(0, keep.size - 1, max_points).round().astype(np.int64))]
    return keep


def pr_curve_csv(table: metrics.PRTable, max_points: int | None = 10_000) -> str:
    precision, recall, thresholds = (t.cpu().numpy() for t in metrics.pr_curve(table))
    thresholds = np.append(thresholds, math.inf)
    rows = [
        {"threshold": float(thresholds[i]), "precision": float(precision[i]), "recall": float(recall[i])}
        for i in _thin(precision.size, recall, max_points)
    ]
    return _csv_text(["threshold", "precision", "recall"], rows)


def case_metrics(
    prob: torch.Tensor,
    ref: torch.Tensor,
    spacing: Sequence[float],
    threshold: float = EVAL_DEFAULTS.threshold,
    *,
    f_beta: float = 2.0,
    surface: bool = True,
    lesion_min_voxels: int = EVAL_DEFAULTS.lesion_min_voxels,
    lesion_min_overlap: float = EVAL_DEFAULTS.lesion_min_overlap,
    size_bins: Sequence[float] = lesionwise.DEFAULT_SIZE_BINS_ML,
    bins_in_voxels: bool = False,
    mask: torch.Tensor | None = None,
    table: metrics.PRTable | None = None,
    min_component_ml: float = EVAL_DEFAULTS.min_component_ml,
) -> tuple[dict, torch.Tensor, dict[str, int], metrics.PRTable]:
    """Every metric of one case from tensors already loaded (`load_case`): `(row, counts, lesion counts,
    pr table)`; the last three add up across cases for the pooled figures.

    `mask` (bool, `load_mask`): only the voxels inside it count; outside, prediction and reference are 0
    for the surface distances and lesion-wise detection. `table`: the case's precision-recall table when
    it is known already (it does not depend on the threshold), else it is computed. `min_component_ml`:
    predicted lesions (26-connected components of `prob >= threshold`, inside `mask`) smaller than this
    volume are removed before anything is counted; the APR, a figure of the probabilities, is unaffected.
    """
    voxel_ml = math.prod(spacing) / 1000.0
    pred = prob >= threshold
    if min_component_ml > 0:
        pred = lesionwise.remove_small_components(pred if mask is None else pred & mask,
                                                  lesionwise.min_component_voxels(min_component_ml, voxel_ml))
    if mask is None:
        counts = metrics.confusion_counts(pred, ref)
        table = metrics.pr_table(prob, ref) if table is None else table
    else:
        metrics._check_same_shape(mask, ref, "mask", "ref")
        metrics._check_bool(mask, "mask")
        counts = metrics.confusion_counts(pred[mask], ref[mask])
        table = metrics.pr_table(prob[mask], ref[mask]) if table is None else table
        pred, ref = pred & mask, ref & mask
    row = {**metrics.overlap_metrics(counts), "apr": metrics.average_precision(table)}
    if metrics.f_beta_key(f_beta) != "f2":
        row.update(metrics.overlap_metrics(counts, f_beta=f_beta))
    row.update(zip(COUNT_COLUMNS, counts.tolist()))
    row.update(metrics.volume_metrics(counts, voxel_ml))
    if surface:
        row.update(surface_distances(pred, ref, spacing))
    lesions = lesionwise.lesion_counts(pred, ref, voxel_ml, lesion_min_voxels, lesion_min_overlap,
                                       size_bins, bins_in_voxels)
    row.update(lesions)
    row.update(lesionwise.lesion_metrics(lesions))
    return row, counts, lesions, table


def check_options(threshold, f_beta, lesion_min_voxels, lesion_min_overlap, size_bins) -> None:
    """LesionsegError naming the evaluation option that is out of range."""
    if not (isinstance(threshold, numbers.Real) and 0 < threshold <= 1):
        raise LesionsegError(f"threshold must be in (0, 1], got {threshold!r}.")
    try:
        metrics.overlap_metrics([0, 0, 0, 0], f_beta=f_beta)
        lesionwise.check_parameters(lesion_min_voxels, lesion_min_overlap, size_bins)
    except ValueError as err:
        raise LesionsegError(f"evaluation option: {err}") from err


def evaluate_cases(
    cases: Sequence[tuple[str, Path, Path]], out_dir: Path, threshold: float = EVAL_DEFAULTS.threshold,
    device: str = "cpu",
    progress: bool = True, **options,
) -> dict:
    """`evaluate_cases_at` with one threshold: the outputs in `out_dir`, its summary returned."""
    return evaluate_cases_at(cases, {Path(out_dir): threshold}, device, progress, **options)[Path(out_dir)]


def evaluate_cases_at(
    cases: Sequence[tuple[str, Path, Path]],
    thresholds: Mapping[Path, float],
    device: str = "cpu",
    progress: bool = True,
    *,
    f_beta: float = 2.0,
    ref_label: int | None = None,
    surface: bool = True,
    lesion_min_voxels: int = EVAL_DEFAULTS.lesion_min_voxels,
    lesion_min_overlap: float = EVAL_DEFAULTS.lesion_min_overlap,
    size_bins_ml: Sequence[float] = lesionwise.DEFAULT_SIZE_BINS_ML,
    size_bins_voxels: Sequence[int] | None = None,
    pr_curve_max_points: int | None = 10_000,
    masks: Sequence[Path | None] | None = None,
    brains: Sequence[Path | None] | None = None,
    calibration_bins: int = calibration.DEFAULT_BINS,
    min_component_ml: float = EVAL_DEFAULTS.min_component_ml,
) -> dict[Path, dict]:
    """Evaluate `(case_id, prediction path, reference path)` pairs at each threshold of `thresholds` (output
    folder → threshold), write the outputs into each folder, return `{folder: summary}`. Every case is
    read once, and what does not depend on the threshold (precision-recall table and curve, threshold
    curves, calibration) is computed once and written into every folder.

    Args:
        thresholds: a voxel is lesion when its probability is >= threshold, in (0, 1].
        device: where the metrics run (`"cpu"`, `"cuda"`, …).
        f_beta: β of an extra Fβ column `f{β:g}` (F2 is always reported).
        ref_label: lesion value in a multi-label reference; None requires a binary reference. A case
            without it has no lesion, but no reference holding it at all is a LesionsegError.
        surface: compute `hd95_mm` and `assd_mm` (`lesionseg.evaluation.surface`: MONAI's definitions).
        lesion_min_voxels, lesion_min_overlap: lesion-wise detection parameters (`lesionseg.evaluation.lesionwise`:
            ISBI 2015 definitions, 26-connectivity).
        size_bins_ml: edges of the lesion-size bins of LTPR in mL, or `size_bins_voxels` in voxels.
        pr_curve_max_points: most rows in `pr_curve.csv` (None: every point of the exact curve).
        masks: one brain-mask path (or None) per case, in the order of `cases`, on the reference's grid;
            a case with a mask is scored on the voxels inside it only (see the module docstring).
        brains: one image (or None) per case whose non-zero voxels are the brain (a brain mask or a
            skull-stripped image, on the reference's grid): the voxels of the calibration figures when the
            case has no `masks` entry. Neither: every voxel.
        calibration_bins: equal-width bins of the reliability diagram and the ECE (`lesionseg.evaluation.calibration`).
        min_component_ml: post-processing: predicted lesions smaller than this (mL) are removed before
            scoring (`case_metrics`); recorded in `summary.json` when > 0.

    Columns after `case, dsc, f2, sensitivity, precision, specificity, apr`: `iou`, [`f<β>`],
    `tp, fp, fn, tn`, `vol_ref_ml, vol_pred_ml, avd_ml, rvd`, `hd95_mm, assd_mm`, `n_ref_lesions,
    n_pred_lesions, n_detected, n_pred_tp, ltpr, lfdr, lesion_f1`, then `n_ref_<bin>, n_detected_<bin>,
    ltpr_<bin>` per size bin. per_case statistics weigh every patient once; pooled figures treat all
    voxels (and all lesions) as one case; surface distances have no pooled value. LesionsegError for bad
    inputs, naming the files.
    """
    bins_in_voxels = size_bins_voxels is not None
    size_bins = list(size_bins_voxels if bins_in_voxels else size_bins_ml)
    thresholds = {Path(folder): t for folder, t in thresholds.items()}
    if not thresholds:
        raise LesionsegError("no threshold to evaluate at: give at least one output folder and threshold.")
    for threshold in thresholds.values():
        check_options(threshold, f_beta, lesion_min_voxels, lesion_min_overlap, size_bins)
    if not cases:
        raise LesionsegError("no cases to evaluate: the list of (case, prediction, reference) is empty.")
    ids = [c[0] for c in cases]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise LesionsegError(f"case names must be unique; repeated: {', '.join(duplicates)}.")
    if not (isinstance(min_component_ml, numbers.Real) and 0 <= min_component_ml < math.inf):
        raise LesionsegError(f"min_component_ml must be a volume >= 0 in mL, got {min_component_ml!r}.")
    if not (isinstance(calibration_bins, int) and calibration_bins >= 1):
        raise LesionsegError(f"calibration_bins must be an integer >= 1, got {calibration_bins!r}.")
    if ref_label is not None:  # before hours of metrics against references that are all empty
        require_label([(pred, ref) for _, pred, ref in cases], ref_label)
    masks = _per_case(masks, cases, "masks", "brain mask")
    brains = _per_case(brains, cases, "brains", "brain image")
    extra_f = [] if metrics.f_beta_key(f_beta) == "f2" else [metrics.f_beta_key(f_beta)]

    # per output folder: the rows of cases.csv, and confusion and lesion counts summed over the cases
    rows: dict[Path, list[dict]] = {folder: [] for folder in thresholds}
    total_counts = {folder: torch.zeros(4, dtype=torch.int64) for folder in thresholds}
    total_lesions: dict[Path, dict[str, int]] = {folder: {} for folder in thresholds}
    curve_counts: list[torch.Tensor] = []  # per case: [tp, fp, fn] at each threshold of the curves
    total_bins = torch.zeros(calibration_bins, 3, dtype=torch.float64)
    merged: list[metrics.PRTable] = []  # one table, merged with `pending` once they are as long as it
    pending: list[metrics.PRTable] = []
    for (case_id, pred_path, ref_path), mask_path, brain_path in tqdm(
            zip(cases, masks, brains), total=len(cases), desc="evaluate", unit="case", disable=not progress):
        prob, ref, spacing = load_case(pred_path, ref_path, device=device, ref_label=ref_label)
        mask = None if mask_path is None else load_mask(mask_path, ref_path, device=device)
        region = mask if mask is not None or brain_path is None else load_region(brain_path, ref_path, device)
        bins = calibration.calibration_bins(prob if region is None else prob[region],
                                            ref if region is None else ref[region], calibration_bins)
        total_bins += bins
        table = None  # computed at the first threshold, the same at the others
        for folder, threshold in thresholds.items():
            row, counts, lesions, table = case_metrics(
                prob, ref, spacing, threshold, f_beta=f_beta, surface=surface,
                lesion_min_voxels=lesion_min_voxels, lesion_min_overlap=lesion_min_overlap,
                size_bins=size_bins, bins_in_voxels=bins_in_voxels, mask=mask, table=table,
                min_component_ml=min_component_ml)
            row["ece"] = calibration.expected_calibration_error(bins)
            rows[folder].append({"case": case_id, **row})
            total_counts[folder] += counts.cpu()
            total_lesions[folder] = {k: total_lesions[folder].get(k, 0) + v for k, v in lesions.items()}
        curve_counts.append(operating_points.counts_at(table, operating_points.CURVE_THRESHOLDS))
        pending.append(table)
        if sum(t[0].numel() for t in pending) >= sum(t[0].numel() for t in merged):  # O(n log n) overall
            merged = [metrics.merge_pr_tables(merged + pending)] if merged or len(pending) > 1 else pending
            pending = []

    pooled_table = metrics.merge_pr_tables(merged + pending) if pending else merged[0]

    columns = _columns(extra_f, surface, size_bins, bins_in_voxels)
    apr = metrics.average_precision(pooled_table)
    shared = {  # the same in every folder
        "pr_curve.csv": pr_curve_csv(pooled_table, pr_curve_max_points),
        "threshold_curves.csv": threshold_curves_csv(curve_counts),
        "calibration.csv": _csv_text(["bin_low", "bin_high", "n_voxels", "confidence", "observed"],
                                     calibration.reliability_rows(total_bins)),
    }
    summaries = {}
    for folder, threshold in thresholds.items():
        these, counts, lesions = rows[folder], total_counts[folder], total_lesions[folder]
        pooled = {**metrics.overlap_metrics(counts), "apr": apr}
        if extra_f:
            pooled.update(metrics.overlap_metrics(counts, f_beta=f_beta))
        pooled.update(zip(COUNT_COLUMNS, counts.tolist()))
        vol_ref, vol_pred = sum(r["vol_ref_ml"] for r in these), sum(r["vol_pred_ml"] for r in these)
        pooled.update({"vol_ref_ml": vol_ref, "vol_pred_ml": vol_pred, "avd_ml": abs(vol_pred - vol_ref),
                       "rvd": (vol_pred - vol_ref) / vol_ref if vol_ref > 0 else math.nan})
        pooled.update(lesions)
        pooled.update(lesionwise.lesion_metrics(lesions))
        pooled["ece"] = calibration.expected_calibration_error(total_bins)
        summaries[folder] = {
            "threshold": threshold,
            "n_cases": len(these),
            "per_case": {c: case_statistics([float(r[c]) for r in these]) for c in columns[1:]},
            "pooled": {c: pooled[c] for c in columns[1:] if c in pooled},
            "calibration": {"bins": calibration_bins, "binning": "equal-width",
                            "voxels": _calibration_voxels(masks, brains)},
        }
        if min_component_ml > 0:  # absent otherwise, so that summaries without it read as before
            summaries[folder]["postprocessing"] = {"min_component_ml": min_component_ml}
        write_text(folder / "cases.csv", _csv_text(columns, these))
        for name, text in shared.items():
            write_text(folder / name, text)
        write_json(folder / "summary.json", summaries[folder])
    return summaries


def _per_case(paths: Sequence[Path | None] | None, cases: Sequence, name: str, what: str) -> list[Path | None]:
    paths = [None] * len(cases) if paths is None else list(paths)
    if len(paths) != len(cases):
        raise LesionsegError(f"{name}: one {what} (or None) per case needed, got {len(paths)} for {len(cases)} cases.")
    return paths


def _calibration_voxels(masks: list, brains: list) -> str:
    if all(m is not None for m in masks):
        return "brain mask"
    if all(m is not None or b is not None for m, b in zip(masks, brains)):
        return "brain (mask, or non-zero voxels of a skull-stripped image)"
    return "every voxel" if not any(masks) and not any(brains) else "brain where known, else every voxel"


def threshold_curves_csv(curve_counts: Sequence[torch.Tensor]) -> str:
    """`threshold_curves.csv`: at each threshold of `operating_points.CURVE_THRESHOLDS`, the mean over
    cases of the per-case DSC, F2, sensitivity and precision, then the same from the pooled counts."""
    per_case = [operating_points.metrics_at(c.numpy()) for c in curve_counts]
    pooled = operating_points.metrics_at(torch.stack(curve_counts).sum(dim=0).numpy())
    names = operating_points.CURVE_METRICS
    columns = ["threshold", *names, *(f"{m}_pooled" for m in names)]
    means = {m: mean_over_cases([pc[m] for pc in per_case]) for m in names}
    rows = [{"threshold": float(t), **{m: float(means[m][i]) for m in names},
             **{f"{m}_pooled": float(pooled[m][i]) for m in names}}
            for i, t in enumerate(operating_points.CURVE_THRESHOLDS)]
    return _csv_text(columns, rows)


def _columns(extra_f: list[str], surface: bool, size_bins: list[float], bins_in_voxels: bool) -> list[str]:
    columns = [*FIRST_COLUMNS, *extra_f, *COUNT_COLUMNS, *registry.names("volume")]
    columns += registry.names("surface") if surface else []
    columns += [*registry.names("lesion"), *registry.names("calibration")]
    for name in lesionwise.size_bin_names(size_bins, "vox" if bins_in_voxels else "ml"):
        columns += [f"n_ref_{name}", f"n_detected_{name}", f"ltpr_{name}"]
    return columns


def match_folders(pred_dir: Path, ref_dir: Path, mask_dir: Path | None = None,
                  brain_dir: Path | None = None) -> tuple[list[tuple[str, Path, Path]], dict]:
    """Match `<case>.nii.gz` / `<case>.nii` by case name in the folders: `[(case, prediction, reference)]`
    and `{"masks": [...], "brains": [...]}` for the folders given.

    A prediction without a reference, or a reference without a prediction, is a LesionsegError listing
    the unmatched names; so is a case without a mask in `mask_dir` or `brain_dir` (extra ones are ignored).
    """
    preds = nifti_files(Path(pred_dir), "prediction")
    refs = nifti_files(Path(ref_dir), "reference")
    no_ref, no_pred = sorted(preds.keys() - refs.keys()), sorted(refs.keys() - preds.keys())
    if no_ref or no_pred:
        problems = []
        if no_ref:
            problems.append(f"predictions without a reference in {ref_dir}: {', '.join(no_ref)}")
        if no_pred:
            problems.append(f"references without a prediction in {pred_dir}: {', '.join(no_pred)}")
        raise LesionsegError("cases do not match; " + "; ".join(problems) + ".")
    cases = [(case, preds[case], refs[case]) for case in sorted(preds)]
    paths = {}
    for key, folder, role in (("masks", mask_dir, "brain mask"), ("brains", brain_dir, "brain image")):
        if folder is not None:
            found = nifti_files(Path(folder), role)
            lacking = [case for case, _, _ in cases if case not in found]
            if lacking:
                raise LesionsegError(f"cases without a {role} in {folder}: {', '.join(lacking)}.")
            paths[key] = [found[case] for case, _, _ in cases]
    return cases, paths


def evaluate_dirs(
    pred_dir: Path, ref_dir: Path, out_dir: Path, threshold: float = EVAL_DEFAULTS.threshold,
    device: str = "cpu",
    mask_dir: Path | None = None, brain_dir: Path | None = None, **kwargs
) -> dict:
    """`evaluate_cases` on the cases of `match_folders`. `mask_dir`: brain masks restricting each case's
    evaluation; `brain_dir`: the `brains` of the calibration figures. Keyword arguments go to
    `evaluate_cases`.
    """
    cases, paths = match_folders(pred_dir, ref_dir, mask_dir, brain_dir)
    return evaluate_cases(cases, Path(out_dir), threshold=threshold, device=device, **paths, **kwargs)
