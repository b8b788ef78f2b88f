"""Operating points: the metrics at every threshold, and the threshold that maximises DSC or F2.

Everything is read off a case's precision-recall table (`metrics.pr_table`: the distinct probabilities in
descending order with the reference-positive and -negative voxels at each), so a threshold costs a binary
search, not a pass over the voxels. A voxel is lesion when `probability >= threshold`, as everywhere.

Tuning (`tune_threshold`) maximises the **mean over cases** of the per-case DSC (or F2), the figure the
reports give, exactly: that mean only changes where some case's prediction changes, i.e. at the distinct
probabilities of the cases, and it is evaluated at every one of them. Among equal maxima the highest
threshold wins (the smallest predicted lesion volume with that score). A run tunes on its validation cases
and applies the result to its test cases, which the choice never sees.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from lesionseg.evaluation import registry
from lesionseg.evaluation.metrics import PRTable, ratios

# The sizes `eval.min_component_ml: tune` chooses from (mL; 0: no post-processing).
COMPONENT_SIZES_ML = (0.0, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2)
CURVE_THRESHOLDS = np.round(np.arange(1, 100) / 100, 2)  # 0.01 … 0.99, the grid of the curves and figures
CURVE_METRICS = registry.names(curve=True)  # dsc, f2, sensitivity, precision
TUNED_METRICS = registry.names(tuned=True)  # dsc, f2


def counts_at(table: PRTable, thresholds: torch.Tensor | Sequence[float]) -> torch.Tensor:
    """`(len(thresholds), 3)` int64 `[tp, fp, fn]` when predicting `prob >= t`, for each threshold t."""
    values, n_pos, n_neg = (t.cpu() for t in table)
    # compared in the probabilities' own precision, as `prob >= threshold` on the volume itself is
    thresholds = torch.as_tensor(thresholds, dtype=torch.float64).to(values.dtype)
    tps = torch.cat([torch.zeros(1, dtype=torch.int64), torch.cumsum(n_pos, 0)])
    fps = torch.cat([torch.zeros(1, dtype=torch.int64), torch.cumsum(n_neg, 0)])
    # values descend: the number of values >= t is the length minus the number < t of the ascending copy
    n_at_least = values.numel() - torch.searchsorted(values.flip(0), thresholds, side="left")
    tp, fp = tps[n_at_least], fps[n_at_least]
    return torch.stack([tp, fp, tps[-1] - tp], dim=1)


def metrics_at(counts: torch.Tensor | np.ndarray) -> dict[str, np.ndarray]:
    """DSC, F2, sensitivity and precision (float64 arrays) from `[tp, fp, fn]` rows, with the conventions
    of `metrics.overlap_metrics`: DSC and F2 are 1 when reference and prediction are both empty,
    sensitivity is NaN without reference voxels, precision NaN without predicted ones."""
    c = np.asarray(counts, dtype=np.float64).reshape(-1, 3)
    every = ratios(c[:, 0], c[:, 1], c[:, 2])
    return {m: every[m] for m in CURVE_METRICS}


def tune_threshold(tables: Sequence[PRTable], metric: str = "dsc") -> dict:
    """The threshold in (0, 1] maximising the mean per-case `metric` ("dsc" or "f2") over `tables`.

    Returns `{"threshold", "value"}` (value: the mean at that threshold), both NaN when the metric is
    undefined for every case at every threshold (no case, or no voxel).
    """
    if metric not in TUNED_METRICS:
        raise ValueError(f"metric must be one of {TUNED_METRICS}, got {metric!r}.")
    values = [t[0].cpu().to(torch.float64) for t in tables]
    candidates = torch.unique(torch.cat(values)) if values else torch.zeros(0, dtype=torch.float64)
    candidates = candidates[candidates > 0].flip(0)  # descending; a threshold of 0 is no threshold
    if candidates.numel() == 0:
        return {"threshold": math.nan, "value": math.nan}
    total = np.zeros(candidates.numel())
    n_defined = np.zeros(candidates.numel())
    for table in tables:  # running sums: memory O(candidates), not O(cases × candidates)
        score = metrics_at(counts_at(table, candidates).numpy())[metric]
        defined = ~np.isnan(score)
        total += np.where(defined, score, 0.0)
        n_defined += defined
    mean = np.where(n_defined > 0, total / np.maximum(n_defined, 1), -np.inf)
    best = int(np.argmax(mean))  # the first maximum: candidates descend, so the highest threshold
    if not np.isfinite(mean[best]):
        return {"threshold": math.nan, "value": math.nan}
    return {"threshold": float(candidates[best]), "value": float(mean[best])}


def tune_component_size(dsc: np.ndarray | None, sizes: Sequence[float] = COMPONENT_SIZES_ML) -> dict:
    """The smallest-lesion size of the post-processing (`eval.min_component_ml: tune`): of `sizes` (mL), the
    one maximising the mean validation DSC at `eval.threshold`, the smallest among ties. `dsc`: `(cases,
    sizes)`, each case's DSC with the predicted lesions under each size removed (`inference.validation_tables`);
    None or empty without validation cases, when nothing is removed."""
    if dsc is None or dsc.size == 0:
        return {"min_component_ml": 0.0, "method": "tune: no validation case, none removed"}
    means = np.nanmean(dsc, axis=0)  # DSC is defined for every case (1 when both masks are empty)
    best = int(np.argmax(means))  # the first maximum: the smallest size
    return {"min_component_ml": sizes[best], "method": "tune: the size maximising the mean validation "
            "DSC at eval.threshold (smallest among ties)",
            "validation_dsc": dict(zip(map(str, sizes), means.round(6).tolist()))}
