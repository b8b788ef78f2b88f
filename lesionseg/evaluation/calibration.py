"""Calibration of lesion probabilities: reliability bins and the expected calibration error (ECE).

Bins are **equal-width** on [0, 1]: `n_bins` intervals `(k/n, (k+1)/n]`, the first one closed at 0,
assigned exactly as scikit-learn's `calibration_curve(strategy="uniform")` (a probability on an inner
edge goes to the bin below it). For each bin: the number of voxels, their mean probability (confidence) and the
share of them that is lesion in the reference (observed frequency). Then

    ECE = Σ_b (n_b / N) · |observed_b − confidence_b|      (empty bins contribute nothing)

(Naeini et al. 2015; Guo et al. 2017). Equal-width rather than equal-mass bins: on lesion maps almost
every brain voxel has a probability near 0, so equal-mass bins would spend nearly all bins there and
leave one bin for everything the network calls lesion. The voxels counted are those of the case's brain
(a brain mask, or the non-zero voxels of a skull-stripped image) — outside it every voxel is an easy
0, which would only dilute the ECE. Bins of several cases add up (`bins` of each, summed) to the pooled
calibration of all their voxels together.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from lesionseg.config import EVAL_DEFAULTS

DEFAULT_BINS = EVAL_DEFAULTS.calibration_bins


def calibration_bins(prob: torch.Tensor, ref: torch.Tensor, n_bins: int = DEFAULT_BINS) -> torch.Tensor:
    """`(n_bins, 3)` float64 on the CPU: per bin, the voxel count, the sum of probabilities and the number
    of reference-lesion voxels. `prob` in [0, 1] and bool `ref` of the same shape (already restricted to
    the voxels that count)."""
    if not (isinstance(n_bins, int) and n_bins >= 1):
        raise ValueError(f"n_bins must be an integer >= 1, got {n_bins!r}.")
    p = prob.reshape(-1).to(torch.float64)
    inner_edges = torch.linspace(0.0, 1.0, n_bins + 1, dtype=torch.float64, device=p.device)[1:-1]
    index = torch.bucketize(p, inner_edges)  # = numpy searchsorted(side="left"), as scikit-learn
    out = torch.zeros(n_bins, 3, dtype=torch.float64, device=p.device)
    out[:, 0].index_add_(0, index, torch.ones_like(p))
    out[:, 1].index_add_(0, index, p)
    out[:, 2].index_add_(0, index, ref.reshape(-1).to(torch.float64))
    return out.cpu()


def expected_calibration_error(bins: torch.Tensor) -> float:
    """ECE from `calibration_bins` (or their sum over cases); NaN without voxels."""
    count, prob_sum, pos_sum = (bins[:, i].double() for i in range(3))
    total = float(count.sum())
    if total == 0:
        return math.nan
    filled = count > 0
    gap = (pos_sum[filled] - prob_sum[filled]).abs()  # n_b · |observed_b − confidence_b|
    return float(gap.sum() / total)


def reliability_rows(bins: torch.Tensor) -> list[dict]:
    """One row per bin: `bin_low, bin_high, n_voxels, confidence, observed` (NaN for an empty bin)."""
    n_bins = bins.shape[0]
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    rows = []
    for b in range(n_bins):
        count, prob_sum, pos_sum = (float(v) for v in bins[b])
        rows.append({
            "bin_low": float(edges[b]),
            "bin_high": float(edges[b + 1]),
            "n_voxels": int(count),
            "confidence": prob_sum / count if count else math.nan,
            "observed": pos_sum / count if count else math.nan,
        })
    return rows
