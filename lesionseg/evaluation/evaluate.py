"""Prediction folder + reference folder → per-case table, summary and pooled precision-recall curve.

Outputs (written atomically into `out_dir`):

- `cases.csv` — one row per case: `case, dsc, f2, sensitivity, precision, specificity, apr` first, then
  `iou, tp, fp, fn, tn`, volumes, surface distances and lesion-wise detection (`evaluate_cases` lists
  them); undefined values are written `nan`. Definitions: voxel-wise in `metrics`, HD95/ASSD in `surface`
  (MONAI's), lesion-wise in `lesionwise` and `matching` (the definition in `summary.json`'s `lesion_matching`).
- `summary.json` — `{"threshold", "n_cases", "per_case", "pooled", "calibration", "lesion_matching", "froc",
  "collapse"}`.
  **per_case**: for every metric, `mean`, `sd` (sample SD, ddof = 1), `median` over the cases where it is
  defined, `n` (cases where defined) and `n_undefined` (cases where NaN); mean/median are NaN with no
  defined value, sd with fewer than two. Each patient counts once.
  **pooled**: all test voxels together as one big case — confusion counts summed over cases and the
  metrics computed from the sums; APR from the merged precision-recall tables, i.e. exactly
  scikit-learn's `average_precision_score` on the concatenated voxels of every case.
  **collapse**: the flags of `lesionseg.evaluation.collapse` over the cases at this threshold (volumes in
  mL; the probability SD `prob_sd` over the brain voxels of the calibration figures); `[]`: not collapsed.
- `pr_curve.csv` — the pooled precision-recall curve (`threshold, precision, recall`, thresholds
  increasing, as scikit-learn's `precision_recall_curve`; the end point precision 1, recall 0 has
  threshold `inf`). At most `pr_curve_max_points` rows: points of the exact curve, never interpolated.
- `threshold_curves.csv` — DSC, F2, sensitivity and precision at the thresholds 0.01, 0.02, … 0.99: the
  mean over cases of the per-case values, then the pooled ones (`<metric>_pooled`); `operating_points`.
- `froc.csv` — lesion sensitivity against false-positive lesions per scan (`lesionseg.evaluation.froc`, which
  also gives `summary.json`'s **froc** and the `cpm` and `ltpr_1fp` columns of `cases.csv`).
- `calibration.csv` — the pooled reliability diagram (`bin_low, bin_high, n_voxels, confidence,
  observed`) over the brain voxels; the per-case ECE is the `ece` column of `cases.csv` and the pooled
  one `pooled.ece` of `summary.json` (`lesionseg.evaluation.calibration`: equal-width bins).

A voxel is lesion when `probability >= threshold` (the precision-recall curve's convention, so the figures at
the threshold are a point of the curve). Binary masks (0/1, any dtype) are probabilities too.

With a brain mask per case (`masks=` / `mask_dir=`), every figure is restricted to the voxels inside it:
voxels outside are neither TP, FP, FN nor TN and are left out of the precision-recall tables, and
prediction and reference are set to 0 outside it for the surface distances and lesion-wise detection.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from lesionseg.config import EVAL_DEFAULTS, EvalConfig
from lesionseg.evaluation import calibration, collapse, froc, lesionwise, metrics, operating_points
from lesionseg.evaluation.options import check_arguments, per_case_paths
from lesionseg.evaluation.nanstats import case_statistics
from lesionseg.evaluation.outputs import (
    COUNT_COLUMNS,
    calibration_voxels,
    case_columns,
    csv_text,
    pr_curve_csv,
    threshold_curves_csv,
)
from lesionseg.evaluation.surface import surface_distances
from lesionseg.evaluation.volumes import load_case, load_mask, load_region, match_folders, require_label
from lesionseg.files import write_json, write_text


def case_metrics(
    prob: torch.Tensor,
    ref: torch.Tensor,
    spacing: Sequence[float],
    threshold: float = EVAL_DEFAULTS.threshold,
    options: EvalConfig = EVAL_DEFAULTS,
    *,
    f_beta: float = 2.0,
    surface: bool = True,
    size_bins_voxels: Sequence[int] | None = None,
    mask: torch.Tensor | None = None,
    table: metrics.PRTable | None = None,
) -> tuple[dict, torch.Tensor, dict[str, int], metrics.PRTable]:
    """Every metric of one case from tensors already loaded (`load_case`): `(row, counts, lesion counts,
    pr table)`; the last three add up across cases for the pooled figures.

    `options`: the lesion-wise detection parameters, the size bins (`size_bins_voxels` replaces them by
    edges in voxels) and the post-processing, `options.min_component_ml` (a volume): predicted lesions
    (26-connected components of `prob >= threshold`, inside `mask`) smaller than it are removed before
    anything is counted; the APR, a figure of the probabilities, is unaffected. `mask` (bool, `load_mask`):
    only the voxels inside it count; outside, prediction and reference are 0 for the surface distances
    and lesion-wise detection. `table`: the case's precision-recall table when it is known already (it
    does not depend on the threshold), else it is computed.
    """
    voxel_ml = math.prod(spacing) / 1000.0
    bins_in_voxels = size_bins_voxels is not None
    size_bins = list(size_bins_voxels) if bins_in_voxels else options.size_bins_ml
    if mask is not None:
        metrics._check_same_shape(mask, ref, "mask", "ref")
        metrics._check_bool(mask, "mask")
    pred, counts = lesionwise.scored_prediction(
        prob, ref, threshold, lesionwise.min_component_voxels(options.min_component_ml, voxel_ml), mask)
    if mask is None:
        table = metrics.pr_table(prob, ref) if table is None else table
    else:
        table = metrics.pr_table(prob[mask], ref[mask]) if table is None else table
        ref = ref & mask
    row = {**metrics.overlap_metrics(counts), "apr": metrics.average_precision(table)}
    if metrics.f_beta_key(f_beta) != "f2":
        row.update(metrics.overlap_metrics(counts, f_beta=f_beta))
    row.update(zip(COUNT_COLUMNS, counts.tolist()))
    row.update(metrics.volume_metrics(counts, voxel_ml))
    if surface:
        row.update(surface_distances(pred, ref, spacing))
    lesions = lesionwise.lesion_counts(pred, ref, voxel_ml, options.lesion_min_voxels, options.lesion_min_overlap,
                                       size_bins, bins_in_voxels, options.lesion_matching)
    row.update(lesions)
    row.update(lesionwise.lesion_metrics(lesions))
    return row, counts, lesions, table


def evaluate_cases(
    cases: Sequence[tuple[str, Path, Path]], out_dir: Path, threshold: float = EVAL_DEFAULTS.threshold,
    device: str = "cpu",
    progress: bool = True, **options,
) -> dict:
    """`evaluate_cases_at` with one threshold: the outputs in `out_dir`, its summary returned."""
    return evaluate_cases_at(cases, {Path(out_dir): threshold}, device, progress, **options)[Path(out_dir)]


def evaluate_cases_at(  # over 60 lines: 34 are the docstring of the evaluator's public arguments
    cases: Sequence[tuple[str, Path, Path]],
    thresholds: Mapping[Path, float],
    device: str = "cpu",
    progress: bool = True,
    *,
    options: EvalConfig = EVAL_DEFAULTS,
    f_beta: float = 2.0,
    ref_label: int | None = None,
    surface: bool = True,
    size_bins_voxels: Sequence[int] | None = None,
    pr_curve_max_points: int | None = 10_000,
    masks: Sequence[Path | None] | None = None,
    brains: Sequence[Path | None] | None = None,
    froc_thresholds: Sequence[float | None] | None = None,
) -> dict[Path, dict]:
    """Evaluate `(case_id, prediction path, reference path)` pairs at each threshold of `thresholds` (output
    folder → threshold), write the outputs into each folder, return `{folder: summary}`. Every case is
    read once, and what does not depend on the threshold (precision-recall table and curve, threshold
    curves, calibration) is computed once and written into every folder.

    Args:
        thresholds: a voxel is lesion when its probability is >= threshold, in (0, 1].
        device: where the metrics run (`"cpu"`, `"cuda"`, …).
        options: the evaluation options, passed whole (`config.EvalConfig`, checked again here; its
            `threshold` is not used, `thresholds` are): `lesion_min_voxels`, `lesion_min_overlap` —
            lesion-wise detection under `lesion_matching` (`lesionwise`: ISBI 2015; `matching`: MSSEG, panoptica);
            `size_bins_ml`, the edges of the lesion-size bins of LTPR in mL (`size_bins_voxels` replaces them
            by edges in voxels); `calibration_bins`, equal-width bins of the reliability diagram and the
            ECE (`lesionseg.evaluation.calibration`); `min_component_ml` (a volume, not `tune`), the
            post-processing: predicted lesions smaller than this (mL) are removed before scoring
            (`case_metrics`), recorded in `summary.json` when > 0.
        f_beta: β of an extra Fβ column `f{β:g}` (F2 is always reported).
        ref_label: lesion value in a multi-label reference; None requires a binary reference. A case
            without it has no lesion, but no reference holding it at all is a LesionsegError.
        surface: compute `hd95_mm` and `assd_mm` (`lesionseg.evaluation.surface`: MONAI's definitions).
        pr_curve_max_points: most rows in `pr_curve.csv` (None: every point of the exact curve).
        masks: one brain-mask path (or None) per case, in the order of `cases`, on the reference's grid;
            a case with a mask is scored on the voxels inside it only (see the module docstring).
        brains: one image (or None) per case whose non-zero voxels are the brain (a brain mask or a
            skull-stripped image, on the reference's grid): the voxels of the calibration figures when the
            case has no `masks` entry. Neither: every voxel.
        froc_thresholds: per case, where its `ltpr_1fp` is read — its run's validation choice of 1 false
            positive per scan (`froc.validation_point`); None: these cases' own FROC point (`froc.summary`).

    Columns: `outputs.case_columns` (the registry's, by group; [`f<β>`]; per size bin `n_ref_`, `n_detected_`,
    `ltpr_<bin>` last). LesionsegError for bad inputs, naming the files."""
    bins_in_voxels = size_bins_voxels is not None
    size_bins = list(size_bins_voxels if bins_in_voxels else options.size_bins_ml)
    thresholds = {Path(folder): t for folder, t in thresholds.items()}
    check_arguments(cases, thresholds, f_beta, options, size_bins)
    froc.check_verdict_thresholds(froc_thresholds, len(cases))
    if ref_label is not None:  # before hours of metrics against references that are all empty
        require_label([(pred, ref) for _, pred, ref in cases], ref_label)
    masks = per_case_paths(masks, cases, "masks", "brain mask")
    brains = per_case_paths(brains, cases, "brains", "brain image")
    extra_f = [] if metrics.f_beta_key(f_beta) == "f2" else [metrics.f_beta_key(f_beta)]
    scoring = dict(options=options, f_beta=f_beta, surface=surface, size_bins_voxels=size_bins_voxels)
    scored = _score_cases(cases, masks, brains, thresholds, scoring, options.calibration_bins, device, ref_label,
                          progress)

    columns = case_columns(extra_f, surface, size_bins, bins_in_voxels)
    froc_rows, froc_block = froc.add_to_rows(scored.froc_counts, scored.rows.values(), froc_thresholds)
    shared = {  # the same in every folder
        "pr_curve.csv": pr_curve_csv(scored.pooled_table, pr_curve_max_points),
        "threshold_curves.csv": threshold_curves_csv(scored.curve_counts),
        "froc.csv": csv_text(froc.COLUMNS, froc_rows),
        "calibration.csv": csv_text(["bin_low", "bin_high", "n_voxels", "confidence", "observed"],
                                     calibration.reliability_rows(scored.total_bins)),
    }
    about = {"bins": options.calibration_bins, "binning": "equal-width", "voxels": calibration_voxels(masks, brains)}
    apr = metrics.average_precision(scored.pooled_table)
    summaries = {}
    for folder, threshold in thresholds.items():
        these = scored.rows[folder]
        pooled = {**_pooled(scored, folder, apr, f_beta if extra_f else None), **froc.pooled(froc_block)}
        summaries[folder] = {
            "threshold": threshold,
            "n_cases": len(these),
            "per_case": {c: case_statistics([float(r[c]) for r in these]) for c in columns[1:]},
            "pooled": {c: pooled[c] for c in columns[1:] if c in pooled},
            "calibration": dict(about),
            "lesion_matching": options.lesion_matching,  # lesion figures compare under one definition only
            "froc": froc_block,
            "collapse": collapse.collapse_flags([r["vol_pred_ml"] for r in these], [r["vol_ref_ml"] for r in these],
                                                [r["prob_sd"] for r in these], threshold, "mL"),
        }
        if options.min_component_ml > 0:  # absent otherwise, so that summaries without it read as before
            summaries[folder]["postprocessing"] = {"min_component_ml": options.min_component_ml}
        write_text(folder / "cases.csv", csv_text(columns, these))
        for name, text in shared.items():
            write_text(folder / name, text)
        write_json(folder / "summary.json", summaries[folder])
    return summaries


@dataclass
class _Scored:
    """Every case scored at every threshold: per output folder the rows of cases.csv and the confusion and
    lesion counts summed over the cases; once for all folders the per-case counts at the curves'
    thresholds, the calibration bins and the merged precision-recall table."""

    rows: dict[Path, list[dict]]
    total_counts: dict[Path, torch.Tensor]
    total_lesions: dict[Path, dict[str, int]]
    curve_counts: list[torch.Tensor] = field(default_factory=list)  # per case: [tp, fp, fn] per threshold
    froc_counts: list = field(default_factory=list)  # per case: [detected, lesions, false lesions] per threshold
    total_bins: torch.Tensor | None = None
    pooled_table: metrics.PRTable | None = None


def _score_cases(cases, masks, brains, thresholds: dict[Path, float], scoring: dict, calibration_bins: int,
                 device: str, ref_label: int | None, progress: bool) -> _Scored:
    """Read each case once and score it at every threshold (`case_metrics` with `scoring`)."""
    scored = _Scored(rows={f: [] for f in thresholds},
                     total_counts={f: torch.zeros(4, dtype=torch.int64) for f in thresholds},
                     total_lesions={f: {} for f in thresholds},
                     total_bins=torch.zeros(calibration_bins, 3, dtype=torch.float64))
    merged: list[metrics.PRTable] = []  # one table, merged with `pending` once they are as long as it
    pending: list[metrics.PRTable] = []
    for (case_id, pred_path, ref_path), mask_path, brain_path in tqdm(
            zip(cases, masks, brains), total=len(cases), desc="evaluate", unit="case", disable=not progress):
        prob, ref, spacing = load_case(pred_path, ref_path, device=device, ref_label=ref_label)
        mask = None if mask_path is None else load_mask(mask_path, ref_path, device=device)
        region = mask if mask is not None or brain_path is None else load_region(brain_path, ref_path, device)
        bins = calibration.calibration_bins(prob if region is None else prob[region],
                                            ref if region is None else ref[region], calibration_bins)
        scored.total_bins += bins
        spread = collapse.probability_sd(prob, region)  # over the calibration's voxels: the brain where known
        table = None  # computed at the first threshold, the same at the others
        for folder, threshold in thresholds.items():
            row, counts, lesions, table = case_metrics(prob, ref, spacing, threshold, mask=mask, table=table,
                                                       **scoring)
            row["ece"] = calibration.expected_calibration_error(bins)
            row["prob_sd"] = spread
            scored.rows[folder].append({"case": case_id, **row})
            scored.total_counts[folder] += counts.cpu()
            totals = scored.total_lesions[folder]
            scored.total_lesions[folder] = {k: totals.get(k, 0) + v for k, v in lesions.items()}
        scored.curve_counts.append(operating_points.counts_at(table, operating_points.CURVE_THRESHOLDS))
        scored.froc_counts.append(froc.case_counts(prob, ref, math.prod(spacing) / 1000.0, scoring["options"], mask))
        pending.append(table)
        if sum(t[0].numel() for t in pending) >= sum(t[0].numel() for t in merged):  # O(n log n) overall
            merged = [metrics.merge_pr_tables(merged + pending)] if merged or len(pending) > 1 else pending
            pending = []
    scored.pooled_table = metrics.merge_pr_tables(merged + pending) if pending else merged[0]
    return scored


def _pooled(scored: _Scored, folder: Path, apr: float, extra_f_beta: float | None) -> dict:
    """The pooled figures of one output folder: all its cases' voxels and lesions as one case."""
    counts, lesions, rows = scored.total_counts[folder], scored.total_lesions[folder], scored.rows[folder]
    pooled = {**metrics.overlap_metrics(counts), "apr": apr}
    if extra_f_beta is not None:
        pooled.update(metrics.overlap_metrics(counts, f_beta=extra_f_beta))
    pooled.update(zip(COUNT_COLUMNS, counts.tolist()))
    vol_ref, vol_pred = sum(r["vol_ref_ml"] for r in rows), sum(r["vol_pred_ml"] for r in rows)
    pooled.update({"vol_ref_ml": vol_ref, "vol_pred_ml": vol_pred, "avd_ml": abs(vol_pred - vol_ref),
                   "rvd": (vol_pred - vol_ref) / vol_ref if vol_ref > 0 else math.nan})
    pooled.update(lesions)
    pooled.update(lesionwise.lesion_metrics(lesions))
    pooled["ece"] = calibration.expected_calibration_error(scored.total_bins)
    return pooled


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
