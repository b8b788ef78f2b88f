"""Statistics over values that may be undefined: a metric is NaN where it has no meaning (sensitivity
without reference lesion, precision without prediction), and such a value is left out — never counted as
0 — by every mean and SD of lesionseg: over cases, over seeds, and over cases at each threshold."""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence

import numpy as np


def is_defined(value: float | None) -> bool:
    return value is not None and not math.isnan(value)


def defined(values: Iterable[float | None]) -> list[float]:
    """The values that are defined (not None, not NaN), as floats, in order."""
    return [float(v) for v in values if is_defined(v)]


def nan_mean(values: Iterable[float | None]) -> float:
    """Mean of the defined values (NumPy's); NaN when none is."""
    finite = defined(values)
    return float(np.mean(finite)) if finite else math.nan


def nan_sd(values: Iterable[float | None]) -> float:
    """Sample SD (ddof = 1, NumPy's) of the defined values; NaN with fewer than two."""
    finite = defined(values)
    return float(np.std(finite, ddof=1)) if len(finite) >= 2 else math.nan


def case_statistics(values: Sequence[float]) -> dict[str, float | int]:
    """Mean, SD, median and counts of a metric over cases (`summary.json`'s `per_case`): the mean and SD
    exactly rounded (`statistics.fmean`, `statistics.stdev`), undefined values left out and counted."""
    finite = [v for v in values if is_defined(v)]  # as they are: the median of counts stays an integer
    n = len(finite)
    return {
        "mean": statistics.fmean(finite) if n else math.nan,
        "sd": statistics.stdev(finite) if n >= 2 else math.nan,
        "median": statistics.median(finite) if n else math.nan,
        "n": n,
        "n_undefined": len(values) - n,
    }


def mean_over_cases(per_case: Sequence[np.ndarray]) -> np.ndarray:
    """Mean over cases at each threshold (equal-length arrays, one per case), the undefined left out."""
    stacked = np.stack(per_case)
    known = ~np.isnan(stacked)
    n = known.sum(axis=0)
    return np.where(n > 0, np.where(known, stacked, 0.0).sum(axis=0) / np.maximum(n, 1), np.nan)
