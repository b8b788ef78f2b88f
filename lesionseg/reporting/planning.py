"""Is the study big enough? The power of the report's paired test, the smallest difference it could detect
and the number of cases (and seeds) a difference would need — `stats.json`'s `planning` and a sentence of
*The answer*.

The test is the report's (`stats.wilcoxon`: two-sided Wilcoxon signed-rank over the cases). Its power for n
paired cases whose differences are normal with mean δ and SD σ (σ: the SD of the differences observed in
the sweep) is computed

- for n < `stats.MIN_PAIRS`: 0, no test is run;
- for n ≤ `EXACT_MAX`: by simulation — the share of `SIMULATIONS` seeded samples that the exact test
  rejects (min(W+, W−) against the exact null distribution, what SciPy uses without ties up to 50 pairs),
  so the discreteness of small samples counts (6 pairs cannot reach p < 0.0125 at all);
- above: as the paired t-test's power (noncentral t) at n × 3/π cases, 3/π being the Wilcoxon test's
  asymptotic relative efficiency against t under normal differences (Lehmann 1975).

The tests check both against SciPy's own test on simulated data. Holm-aware: the level is α / m, m the
comparisons in the metric's Holm family — Holm's first and strictest step, so the power holds whichever
rank the comparison's p-value takes (conservative for the others). A claim in the report also needs the
bootstrap interval to exclude 0; at these sizes a rejection all but implies it, so the power is the test's.

Seeds: each case's value is a mean over K seeds, so the observed variance of the differences is
σ²_case + σ²_seed / K; σ²_seed is estimated from the spread of each case's values over the seeds. More
seeds shrink only that part: `seeds_needed` is the fewest seeds with which the cases needed are within 10 %
(or 2 cases) of what infinitely many seeds would need. `seed_share`, the part of the observed variance that
is training noise, is capped at 1: with few cases the two estimates are noisy.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from functools import lru_cache

import numpy as np
from scipy import stats as sps

from lesionseg.reporting.stats import ALPHA, MIN_PAIRS

POWER = 0.8
EXACT_MAX = 50
SIMULATIONS = 4000
ARE = 3 / math.pi  # Wilcoxon signed-rank against the t-test, normal differences
MOST_CASES = 1_000_000
MOST_SEEDS = 20


@lru_cache(maxsize=None)
def _critical_value(n: int, alpha: float) -> int:
    """The largest t with 2·P(T ≤ t) < alpha under the null (T: W+ of n untied pairs), −1 if none: the exact
    two-sided test rejects when min(W+, W−) ≤ t."""
    counts = np.zeros(n * (n + 1) // 2 + 1)
    counts[0] = 1.0
    for rank in range(1, n + 1):  # subsets of {1 … n} by their sum: float64 holds 2**50 exactly
        counts[rank:] = counts[rank:] + counts[:-rank].copy()
    cdf = np.cumsum(counts) / 2.0**n
    below = np.nonzero(2 * cdf < alpha)[0]
    return int(below[-1]) if below.size else -1


@lru_cache(maxsize=None)
def _noise(n: int) -> np.ndarray:
    """Standard normal draws, the same for every call (common random numbers: power is smooth in δ)."""
    return np.random.default_rng(n).standard_normal((SIMULATIONS, n))


def power(delta: float, sd: float, n: int, alpha: float = ALPHA) -> float:
    """Power of the two-sided Wilcoxon signed-rank test at level `alpha` for `n` paired cases whose differences
    are normal with mean `delta` and SD `sd` (see the module docstring for how)."""
    if n < MIN_PAIRS:
        return 0.0
    if sd <= 0:
        return 1.0 if delta != 0 and 2.0 / 2**n < alpha else 0.0
    if n <= EXACT_MAX:
        diff = delta / sd + _noise(n)
        order = np.argsort(np.abs(diff), axis=1)  # the rank of |d| is its place in this order, + 1
        positive = np.take_along_axis(diff, order, axis=1) > 0
        w_plus = (positive * np.arange(1, n + 1)).sum(axis=1)
        statistic = np.minimum(w_plus, n * (n + 1) // 2 - w_plus)
        return float(np.mean(statistic <= _critical_value(n, alpha)))
    n_t = n * ARE
    df, shift = n_t - 1, delta * math.sqrt(n_t) / sd
    t = sps.t.ppf(1 - alpha / 2, df)
    return float(sps.nct.sf(t, df, shift) + sps.nct.cdf(-t, df, shift))


def min_detectable(sd: float, n: int, alpha: float = ALPHA, target: float = POWER) -> float:
    """The smallest difference detected with power ≥ `target` by `n` cases (bisection over δ); inf where no
    difference can be (too few cases for the level)."""
    if n < MIN_PAIRS or power(1.0, 0.0, n, alpha) < target:
        return math.inf
    if sd <= 0:
        return 0.0
    low, high = 0.0, 1.0
    while power(high * sd, sd, n, alpha) < target:
        low, high = high, 2 * high
    for _ in range(40):
        mid = (low + high) / 2
        low, high = (mid, high) if power(mid * sd, sd, n, alpha) < target else (low, mid)
    return high * sd


def cases_needed(delta: float, sd: float, alpha: float = ALPHA, target: float = POWER) -> int | None:
    """The fewest cases whose test detects `delta` with power ≥ `target` (bisection over n; None: more than
    `MOST_CASES`)."""
    if delta == 0:
        return None
    low, high = MIN_PAIRS - 1, MIN_PAIRS  # power(low) < target
    while power(delta, sd, high, alpha) < target:
        low, high = high, 2 * high
        if low > MOST_CASES:
            return None
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (mid, high) if power(delta, sd, mid, alpha) < target else (low, mid)
    return high


def seed_variance(per_seed: Sequence[Mapping[str, float]]) -> float:
    """The variance of one case's value over training seeds, pooled over the cases (mean of each case's
    variance over its seeds, ddof = 1); NaN with fewer than 2 seeds."""
    cases = sorted({c for table in per_seed for c in table})
    variances = [np.var(v, ddof=1) for c in cases
                 if len(v := [t[c] for t in per_seed if c in t and math.isfinite(t[c])]) > 1]
    return float(np.mean(variances)) if variances else math.nan


def plan(diff: Sequence[float], family: int, difference: float, seeds: tuple[Sequence, Sequence] | None = None,
         alpha: float = ALPHA) -> dict:
    """The planning of one comparison: `diff` the paired differences of the case means (other − baseline),
    `family` the comparisons in its Holm family, `difference` the difference to plan for
    (`report.planning_difference`), `seeds` the per-seed `{case: value}` tables of (baseline, other)."""
    diff = np.asarray(diff, dtype=float)
    level = alpha / max(family, 1)
    out = {"alpha": level, "holm_family": family, "power_target": POWER, "difference": difference,
           "n": int(diff.size)}
    if diff.size < 2:
        return {**out, "note": "the spread of the differences cannot be estimated from "
                                     f"{diff.size} case{'' if diff.size == 1 else 's'}"}
    sd = float(np.std(diff, ddof=1))
    if sd == 0:
        return {**out, "note": f"all {diff.size} paired differences are {diff[0]:g}, no spread to plan with"}
    needed = cases_needed(difference, sd, level)
    out.update(sd_diff=sd, min_detectable=min_detectable(sd, int(diff.size), level),
               power_at_difference=power(difference, sd, int(diff.size), level), cases_needed=needed)
    if seeds is not None and min(len(seeds[0]), len(seeds[1])) >= 2:
        out.update(_seeds(sd**2, seeds, difference, level))
    return out


def _seeds(observed: float, seeds: tuple[Sequence, Sequence], difference: float, level: float) -> dict:
    """How much of the observed variance of the differences is training noise, and how many seeds pay."""
    var_base, var_other = seed_variance(seeds[0]), seed_variance(seeds[1])
    part = var_base / len(seeds[0]) + var_other / len(seeds[1])
    between = max(observed - part, 0.0)
    best = cases_needed(difference, math.sqrt(between), level) if between > 0 else MIN_PAIRS
    enough = None
    for k in range(1, MOST_SEEDS + 1) if best is not None else ():
        needed = cases_needed(difference, math.sqrt(between + (var_base + var_other) / k), level)
        if needed is not None and needed <= max(1.1 * best, best + 2):
            enough = k
            break
    return {"seed_share": min(part / observed, 1.0) if observed > 0 else math.nan, "cases_needed_infinite_seeds": best,
            "seeds_needed": enough}
