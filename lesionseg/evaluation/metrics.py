"""Voxel-wise segmentation metrics as pure tensor functions (no I/O; any device, no loops over voxels).

Two families, both defined in SCIENCE.md:

- **At a threshold** — `confusion_counts(pred, ref)` gives `[tp, fp, fn, tn]`; `overlap_metrics(counts)`
  turns counts into DSC, IoU, Fβ, sensitivity, precision and specificity. Counts add up across cases,
  so pooled figures are `overlap_metrics(sum of counts)`.
- **Threshold-free** — `pr_table(prob, ref)` reduces a case to its distinct probability values (descending)
  with the number of positive and negative voxels at each; tables merge exactly (`merge_pr_tables`), so
  the pooled precision-recall curve of many cases never needs all their voxels at once. From a table,
  `average_precision` is scikit-learn's `average_precision_score` (Σ (Rₙ − Rₙ₋₁) Pₙ over distinct
  thresholds, equal probabilities being one threshold) and `pr_curve` is its `precision_recall_curve`.

Edge cases (SCIENCE.md): a ratio whose denominator is zero is NaN (undefined), except that DSC, IoU and
Fβ are 1 when reference and prediction are both empty. So an empty reference with lesions predicted gives
DSC = Fβ = precision = 0 and sensitivity NaN; lesions in the reference with an empty prediction give
DSC = Fβ = sensitivity = 0 and precision NaN. Average precision is NaN without positive voxels.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Sequence

import numpy as np
import torch

# (values, n_positive, n_negative): distinct probability values in descending order (float32; float64 for
# float64 probabilities) and the number of reference-positive / reference-negative voxels at each value
# (int64), all on one device.
PRTable = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def _check_same_shape(a: torch.Tensor, b: torch.Tensor, a_name: str, b_name: str) -> None:
    if a.shape != b.shape:
        raise ValueError(
            f"{a_name} and {b_name} must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}."
        )


def _check_bool(t: torch.Tensor, name: str) -> None:
    if t.dtype != torch.bool:
        raise ValueError(f"{name} must be a bool tensor (e.g. `prob >= threshold`), got dtype {t.dtype}.")


def confusion_counts(pred: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Voxel confusion counts of a binary prediction against a binary reference.

    Args:
        pred: bool tensor, any shape (e.g. `B, C, D, H, W` or `D, H, W`); True = lesion.
        ref: bool tensor of the same shape.

    Returns:
        int64 tensor `[tp, fp, fn, tn]` on the inputs' device, summed over every element.
    """
    _check_same_shape(pred, ref, "pred", "ref")
    _check_bool(pred, "pred")
    _check_bool(ref, "ref")
    tp = torch.count_nonzero(pred & ref)
    n_pred = torch.count_nonzero(pred)
    n_ref = torch.count_nonzero(ref)
    n = torch.tensor(pred.numel(), dtype=torch.int64, device=pred.device)
    return torch.stack([tp, n_pred - tp, n_ref - tp, n - n_pred - n_ref + tp]).to(torch.int64)


def _div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1), np.nan)


def ratios(tp, fp, fn, tn=None, f_beta: float = 2.0) -> dict[str, np.ndarray]:
    """DSC, IoU, Fβ, sensitivity, precision (and with `tn` specificity) as float64 arrays, from counts
    (scalars or equal-length arrays: one formula for one case and for every threshold of a curve).
    Integer counts below 2**53 are exact in float64, so each value is the correctly rounded quotient."""
    tp, fp, fn = (np.asarray(v, dtype=np.float64) for v in (tp, fp, fn))
    empty = tp + fp + fn == 0
    b2 = float(f_beta) ** 2
    out = {
        "dsc": np.where(empty, 1.0, _div(2 * tp, 2 * tp + fp + fn)),
        "iou": np.where(empty, 1.0, _div(tp, tp + fp + fn)),
        f_beta_key(f_beta): np.where(empty, 1.0, _div((1 + b2) * tp, (1 + b2) * tp + b2 * fn + fp)),
        "sensitivity": _div(tp, tp + fn),
        "precision": _div(tp, tp + fp),
    }
    if tn is not None:
        tn = np.asarray(tn, dtype=np.float64)
        out["specificity"] = _div(tn, tn + fp)
    return out


def f_beta_key(beta: float) -> str:
    """Column name of Fβ: `f2` for β = 2, `f0.5` for β = 0.5."""
    return f"f{beta:g}"


def overlap_metrics(counts: torch.Tensor | Sequence[int], f_beta: float = 2.0) -> dict[str, float]:
    """DSC, IoU, Fβ, sensitivity, precision and specificity from `[tp, fp, fn, tn]`.

    Fβ = (1 + β²)TP / ((1 + β²)TP + β²FN + FP); its key is `f_beta_key(f_beta)` (`"f2"` by default).
    Undefined ratios are NaN; DSC, IoU and Fβ are 1.0 when reference and prediction are both empty
    (tp = fp = fn = 0). Returns Python floats in the order dsc, iou, fβ, sensitivity, precision,
    specificity.
    """
    if not (isinstance(f_beta, numbers.Real) and f_beta > 0 and math.isfinite(f_beta)):
        raise ValueError(f"f_beta must be a finite number > 0, got {f_beta!r}.")
    values = counts.tolist() if isinstance(counts, torch.Tensor) else list(counts)
    if len(values) != 4 or any(v < 0 for v in values):
        raise ValueError(f"counts must be four non-negative numbers [tp, fp, fn, tn], got {values}.")
    tp, fp, fn, tn = (int(v) for v in values)
    return {key: float(value) for key, value in ratios(tp, fp, fn, tn, f_beta=f_beta).items()}


def check_probabilities(prob: torch.Tensor) -> None:
    """ValueError naming the range found if `prob` has NaN or values outside [0, 1]."""
    if prob.dtype == torch.bool or prob.numel() == 0:
        return
    n_nan = int(torch.isnan(prob).sum()) if prob.is_floating_point() else 0
    finite = prob[~torch.isnan(prob)] if n_nan else prob
    lo = float(finite.min()) if finite.numel() else math.nan
    hi = float(finite.max()) if finite.numel() else math.nan
    if n_nan or lo < 0 or hi > 1:
        nan_note = f" and {n_nan} NaN value(s)" if n_nan else ""
        raise ValueError(f"probabilities must lie in [0, 1]; found values in [{lo:g}, {hi:g}]{nan_note}.")


def pr_table(prob: torch.Tensor, ref: torch.Tensor) -> PRTable:
    """Reduce a case to its precision-recall table.

    Args:
        prob: lesion probabilities in [0, 1] (float, or a bool/integer binary mask), any shape.
        ref: bool reference of the same shape.

    Returns:
        `(values, n_pos, n_neg)`: the distinct values of `prob` in descending order (float64 for float64
        input, else float32 — float16 and integer masks convert exactly) and, at each,
        the number of reference-positive and reference-negative voxels (int64), on the inputs' device.
        Memory is O(number of distinct values); tables of several cases merge exactly.
    """
    _check_same_shape(prob, ref, "prob", "ref")
    _check_bool(ref, "ref")
    check_probabilities(prob)
    flat = prob.reshape(-1)
    if flat.dtype != torch.float64:
        flat = flat.to(torch.float32)
    # Non-negative IEEE floats sort like their bit patterns read as integers, and integer sorts are several
    # times faster than float sorts on CPU; `+ 0.0` turns -0.0 (sign bit set) into +0.0.
    int_type = torch.int64 if flat.dtype == torch.float64 else torch.int32
    keys = (flat + 0.0).view(int_type)
    distinct, totals = torch.unique_consecutive(torch.sort(keys).values, return_counts=True)
    pos_keys, pos_counts = torch.unique(keys[ref.reshape(-1)], sorted=True, return_counts=True)
    n_pos = torch.zeros(distinct.numel(), dtype=torch.int64, device=distinct.device)
    n_pos[torch.searchsorted(distinct, pos_keys)] = pos_counts.to(torch.int64)
    n_neg = totals.to(torch.int64) - n_pos
    return distinct.view(flat.dtype).flip(0), n_pos.flip(0), n_neg.flip(0)


def merge_pr_tables(tables: Iterable[PRTable]) -> PRTable:
    """One table for the voxels of all `tables` together (exact); on the first table's device.

    Values stay float32 when every table is float32, else become float64 (float32 converts exactly).
    """
    tables = list(tables)
    if not tables:
        raise ValueError("merge_pr_tables needs at least one table, got none.")
    device = tables[0][0].device
    dtype = torch.float32 if all(t[0].dtype == torch.float32 for t in tables) else torch.float64
    values = torch.cat([t[0].to(device, dtype) for t in tables]) + 0.0
    counts = torch.stack([torch.cat([t[i].to(device, torch.int64) for t in tables]) for i in (1, 2)], dim=1)
    int_type = torch.int32 if dtype == torch.float32 else torch.int64
    keys, order = torch.sort(values.view(int_type))  # bit patterns: see pr_table
    last = torch.ones(keys.numel(), dtype=torch.bool, device=device)
    last[:-1] = keys[1:] != keys[:-1]
    ends = torch.nonzero(last)[:, 0]
    distinct = keys[ends]
    # (pos, neg) per distinct value: differences of the running sums at the last entry of each value
    sums = torch.cumsum(counts[order], dim=0)[ends]
    sums = torch.diff(sums, dim=0, prepend=torch.zeros(1, 2, dtype=torch.int64, device=device))
    n_pos, n_neg = sums[:, 0], sums[:, 1]
    return distinct.view(dtype).flip(0), n_pos.flip(0), n_neg.flip(0)


def _cumulative(table: PRTable) -> tuple[torch.Tensor, torch.Tensor]:
    """True and false positives when predicting `prob >= value`, for each value in descending order."""
    _, n_pos, n_neg = table
    return torch.cumsum(n_pos, 0).to(torch.float64), torch.cumsum(n_neg, 0).to(torch.float64)


def average_precision(table: PRTable) -> float:
    """Average precision Σ (Rₙ − Rₙ₋₁) Pₙ over the distinct thresholds of `table` (R₀ = 0).

    Identical to scikit-learn's `average_precision_score` on the voxels the table came from; NaN when
    there is no positive voxel (recall undefined), where scikit-learn warns and returns 0.
    """
    tps, fps = _cumulative(table)
    if tps.numel() == 0 or tps[-1] == 0:
        return math.nan
    precision = tps / (tps + fps)
    recall_steps = table[1].to(torch.float64) / tps[-1]
    return float(torch.sum(recall_steps * precision).clamp(0.0, 1.0))


def average_precision_score(prob: torch.Tensor, ref: torch.Tensor) -> float:
    """`average_precision(pr_table(prob, ref))`: scikit-learn's definition, NaN without positives."""
    return average_precision(pr_table(prob, ref))


def pr_curve(table: PRTable) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Precision, recall and thresholds exactly as scikit-learn's `precision_recall_curve`.

    Thresholds are the distinct values in increasing order (predict positive when `prob >= threshold`);
    precision and recall have one more element, the end point (precision 1, recall 0). Without positive
    voxels recall is NaN (scikit-learn sets it to 1 with a warning). Precision and recall are float64,
    thresholds keep the table's dtype; all on the table's device.
    """
    values = table[0]
    tps, fps = _cumulative(table)
    total = tps[-1] if tps.numel() else torch.tensor(0.0, dtype=torch.float64, device=values.device)
    precision = tps / (tps + fps)
    recall = tps / total if total > 0 else torch.full_like(tps, math.nan)
    one = torch.ones(1, dtype=torch.float64, device=values.device)
    return torch.cat([precision.flip(0), one]), torch.cat([recall.flip(0), one * 0]), values.flip(0)


def volume_metrics(counts: torch.Tensor | Sequence[int], voxel_ml: float) -> dict[str, float]:
    """Lesion volumes from `[tp, fp, fn, tn]` and the volume of one voxel in mL (spacing product / 1000).

    `vol_ref_ml` = (TP + FN)·v, `vol_pred_ml` = (TP + FP)·v, `avd_ml` = |vol_pred − vol_ref| (absolute
    volume difference, mL) and `rvd` = (vol_pred − vol_ref) / vol_ref (relative volume difference, signed:
    > 0 over-segments; NaN for an empty reference; the WMH challenge's "AVD in %" is 100·|rvd|).
    """
    if not (voxel_ml > 0 and math.isfinite(voxel_ml)):
        raise ValueError(f"voxel_ml must be a finite number > 0, got {voxel_ml!r}.")
    tp, fp, fn, _ = (int(v) for v in (counts.tolist() if isinstance(counts, torch.Tensor) else counts))
    ref_ml, pred_ml = (tp + fn) * voxel_ml, (tp + fp) * voxel_ml
    return {
        "vol_ref_ml": ref_ml,
        "vol_pred_ml": pred_ml,
        "avd_ml": abs(pred_ml - ref_ml),
        "rvd": (pred_ml - ref_ml) / ref_ml if ref_ml > 0 else math.nan,
    }
