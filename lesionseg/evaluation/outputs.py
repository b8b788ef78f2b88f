"""The evaluator's files as text: `cases.csv`'s columns (from the registry) and rows, `pr_curve.csv`,
`threshold_curves.csv`, `froc.csv` and `calibration.csv` (the formats are in `lesionseg.evaluation.evaluate`'s docstring)."""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence

import numpy as np
import torch

from lesionseg.evaluation import lesionwise, metrics, operating_points, registry
from lesionseg.evaluation.nanstats import mean_over_cases

FIRST_COLUMNS = ["case", *registry.names("voxel")]  # cases.csv's columns by group, from the registry


COUNT_COLUMNS = list(registry.names("counts"))


def format_value(value: object) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else repr(value)
    return str(value)


def csv_text(columns: list[str], rows: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([format_value(row[c]) for c in columns])
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
    return csv_text(["threshold", "precision", "recall"], rows)


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
    return csv_text(columns, rows)


def case_columns(extra_f: list[str], surface: bool, size_bins: list[float], bins_in_voxels: bool) -> list[str]:
    columns = [*FIRST_COLUMNS, *extra_f, *COUNT_COLUMNS, *registry.names("volume")]
    columns += registry.names("surface") if surface else []
    columns += [*registry.names("lesion"), *registry.names("froc"), *registry.names("calibration")]
    for name in lesionwise.size_bin_names(size_bins, "vox" if bins_in_voxels else "ml"):
        columns += [f"n_ref_{name}", f"n_detected_{name}", f"ltpr_{name}"]
    return columns


def calibration_voxels(masks: list, brains: list) -> str:
    if all(m is not None for m in masks):
        return "brain mask"
    if all(m is not None or b is not None for m, b in zip(masks, brains)):
        return "brain (mask, or non-zero voxels of a skull-stripped image)"
    return "every voxel" if not any(masks) and not any(brains) else "brain where known, else every voxel"
