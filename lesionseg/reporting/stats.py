"""Is a β better than the Dice baseline, or is the difference noise? Paired tests across test cases.

Pure functions of per-case values (no I/O). Per configuration, each case's value is first averaged over the
seeds (`case_means`), so a case counts once however many repeats there are; two configurations are then
paired by case id (`paired`) and compared (`compare`) with

- the Wilcoxon signed-rank test (SciPy's `wilcoxon`, two-sided, zero differences dropped — Wilcoxon's
  own convention — exact p-value for small samples without ties), and
- a percentile bootstrap confidence interval of the mean paired difference (cases resampled with
  replacement, a seeded NumPy `Generator`, so the interval is the same on every run).

With fewer than `MIN_PAIRS` non-zero differences no test is run: with 5 pairs the smallest two-sided exact
p-value is 2 / 2⁵ = 0.0625, so the test could not reject at 0.05 whatever the data — saying "no
significant difference" there would be as empty as saying "better". The verdict then says "too few".
Several βs against one baseline are several tests: `holm` adjusts their p-values (Holm–Bonferroni), and
`verdict` speaks of a difference only when the adjusted p < 0.05 *and* the bootstrap interval excludes 0.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
from scipy import stats as sps

from lesionseg.evaluation.nanstats import is_defined, nan_mean

MIN_PAIRS = 6
N_BOOT = 10_000
LEVEL = 0.95
ALPHA = 0.05


def case_means(per_seed: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """Mean over seeds of each case's value (NaN seeds ignored; NaN when no seed defines it).

    `per_seed`: one `{case id: value}` per seed; cases missing from a seed count as undefined there.
    """
    cases = sorted({case for table in per_seed for case in table})
    out = {}
    for case in cases:
        out[case] = nan_mean(table[case] for table in per_seed if case in table)
    return out


def paired(baseline: Mapping[str, float], other: Mapping[str, float]) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Cases where both are defined, sorted by id: `(ids, baseline values, other values)`."""
    ids = sorted(c for c in baseline.keys() & other.keys() if is_defined(baseline[c]) and is_defined(other[c]))
    return ids, np.array([baseline[c] for c in ids], dtype=float), np.array([other[c] for c in ids], dtype=float)


def bootstrap_mean_ci(
    diff: Sequence[float], n_boot: int = N_BOOT, level: float = LEVEL, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of `diff`: resample the values with replacement `n_boot`
    times (NumPy `Generator(PCG64(seed))`), take the (1 − level)/2 and (1 + level)/2 quantiles of the
    resampled means. NaN for an empty sample."""
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level!r}.")
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot!r}.")
    diff = np.asarray(diff, dtype=float)
    if diff.size == 0:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    means = diff[rng.integers(0, diff.size, size=(n_boot, diff.size))].mean(axis=1)
    low, high = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return float(low), float(high)


def wilcoxon(baseline: Sequence[float], other: Sequence[float], min_pairs: int = MIN_PAIRS) -> dict:
    """Two-sided Wilcoxon signed-rank test of `other − baseline` (paired, same order).

    Returns `{"n", "n_nonzero", "statistic", "p", "note"}`; `statistic` and `p` are None, and `note`
    says why, when fewer than `min_pairs` differences are non-zero (zero differences carry no sign and
    are dropped, as in Wilcoxon's test).
    """
    baseline, other = np.asarray(baseline, dtype=float), np.asarray(other, dtype=float)
    if baseline.shape != other.shape or baseline.ndim != 1:
        raise ValueError(f"paired samples need equal 1-D shapes, got {baseline.shape} and {other.shape}.")
    n = int(baseline.size)
    nonzero = int(np.count_nonzero(other - baseline))
    result = {"n": n, "n_nonzero": nonzero, "statistic": None, "p": None, "note": ""}
    if nonzero < min_pairs:
        result["note"] = (f"too few pairs for a test: {nonzero} non-zero differences of {n} cases "
                          f"(at least {min_pairs} needed)")
        return result
    test = sps.wilcoxon(other, baseline, zero_method="wilcox", alternative="two-sided")
    result.update(statistic=float(test.statistic), p=float(test.pvalue))
    return result


def holm(pvalues: Sequence[float | None]) -> list[float | None]:
    """Holm–Bonferroni adjusted p-values, same order; None (no test) stays None and is not counted."""
    tested = sorted((p, i) for i, p in enumerate(pvalues) if p is not None)
    m = len(tested)
    adjusted: list[float | None] = [None] * len(pvalues)
    running = 0.0
    for rank, (p, i) in enumerate(tested):
        running = max(running, min(1.0, (m - rank) * p))
        adjusted[i] = running
    return adjusted


def compare(
    baseline: Mapping[str, float], other: Mapping[str, float], n_boot: int = N_BOOT, seed: int = 0
) -> dict:
    """`other` vs `baseline` (`{case: value}`, already averaged over seeds), paired by case id.

    `{"n", "n_nonzero", "mean_baseline", "mean_other", "mean_diff", "ci_low", "ci_high", "statistic",
    "p", "note"}`; differences are other − baseline; the interval is the `LEVEL` percentile bootstrap.
    """
    ids, base, oth = paired(baseline, other)
    diff = oth - base
    low, high = bootstrap_mean_ci(diff, n_boot=n_boot, seed=seed)
    test = wilcoxon(base, oth)
    return {
        "n": len(ids),
        "n_nonzero": test["n_nonzero"],
        "mean_baseline": float(base.mean()) if ids else math.nan,
        "mean_other": float(oth.mean()) if ids else math.nan,
        "mean_diff": float(diff.mean()) if ids else math.nan,
        "ci_low": low,
        "ci_high": high,
        "statistic": test["statistic"],
        "p": test["p"],
        "note": test["note"],
    }


def verdict(comparison: dict, p_adjusted: float | None, alpha: float = ALPHA) -> str:
    """Plain words for one comparison: a difference only with a test (adjusted p < alpha) and a bootstrap
    interval that excludes 0 on the same side."""
    if comparison["p"] is None:
        return f"no test ({comparison['note']})"
    low, high = comparison["ci_low"], comparison["ci_high"]
    if p_adjusted is not None and p_adjusted < alpha and (low > 0 or high < 0):
        return "higher than baseline" if low > 0 else "lower than baseline"
    return f"no significant difference (adjusted p = {p_adjusted:.3g})"
