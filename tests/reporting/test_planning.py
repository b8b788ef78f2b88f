"""Study planning (`lesionseg.reporting.planning`) against SciPy: the exact test's critical values, and the
power of the Wilcoxon signed-rank test as SciPy's own test rejects simulated samples."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

from lesionseg.reporting import planning
from lesionseg.reporting.stats import MIN_PAIRS


def _with_negative_ranks(n: int, total: int) -> np.ndarray:
    """Differences ±rank (ranks 1 … n, no ties) whose negative ranks sum to `total` (greedy, largest first)."""
    signs, left = np.ones(n), total
    for rank in range(n, 0, -1):
        if rank <= left:
            signs[rank - 1], left = -1, left - rank
    assert left == 0
    return signs * np.arange(1, n + 1)


@pytest.mark.parametrize("n", [6, 7, 10, 17, 25, 40])
@pytest.mark.parametrize("alpha", [0.05, 0.0125])
def test_critical_value_is_where_scipys_exact_test_starts_to_reject(n, alpha):
    c = planning._critical_value(n, alpha)
    if c >= 0:
        assert sps.wilcoxon(_with_negative_ranks(n, c), method="exact").pvalue < alpha
    assert sps.wilcoxon(_with_negative_ranks(n, c + 1), method="exact").pvalue >= alpha


def test_six_pairs_cannot_reach_a_holm_level_of_four_comparisons():
    # the smallest two-sided exact p of 6 pairs is 2 / 2**6 = 0.031 > 0.05 / 4
    assert planning._critical_value(6, 0.0125) == -1
    assert planning.power(10.0, 1.0, 6, 0.0125) == 0.0
    assert math.isinf(planning.min_detectable(1.0, 6, 0.0125))


@pytest.mark.parametrize("n", [6, 10, 20, 60])
@pytest.mark.parametrize("sd", [0.05, 0.2])
@pytest.mark.parametrize("effect", [0.5, 1.0])
@pytest.mark.parametrize("alpha", [0.05, 0.0125])
def test_power_agrees_with_simulated_scipy_tests(n, sd, effect, alpha):
    """Within ±0.05 of the share of 2000 normal samples (mean effect × sd, SD sd) that SciPy's test rejects."""
    rng = np.random.default_rng(int(1000 * sd) + n)
    samples = rng.normal(effect * sd, sd, size=(2000, n))
    simulated = float(np.mean(sps.wilcoxon(samples, axis=1).pvalue < alpha))
    assert planning.power(effect * sd, sd, n, alpha) == pytest.approx(simulated, abs=0.05)


def test_min_detectable_is_where_power_reaches_80_percent():
    sd, n, alpha = 0.04, 12, 0.025
    mdd = planning.min_detectable(sd, n, alpha)
    assert planning.power(mdd, sd, n, alpha) >= 0.8 > planning.power(0.98 * mdd, sd, n, alpha)


@pytest.mark.parametrize("delta,sd,alpha", [(0.01, 0.05, 0.05), (0.01, 0.03, 0.0125), (0.02, 0.2, 0.05)])
def test_cases_needed_follows_the_normal_formula_over_the_efficiency(delta, sd, alpha):
    """Many cases: ((z(1 − α/2) + z(0.8)) σ / δ)² + z(1 − α/2)² / 2 paired t-test cases (Guenther's
    correction for the t quantiles), / (3/π) for the Wilcoxon test."""
    z = sps.norm.ppf(1 - alpha / 2) + sps.norm.ppf(0.8)
    formula = ((z * sd / delta) ** 2 + sps.norm.ppf(1 - alpha / 2) ** 2 / 2) / (3 / math.pi)
    needed = planning.cases_needed(delta, sd, alpha)
    assert needed == pytest.approx(formula, rel=0.03, abs=2)
    assert planning.power(delta, sd, needed, alpha) >= 0.8 > planning.power(delta, sd, needed - 1, alpha)


def test_plan_of_one_case_or_equal_differences_says_why_there_is_none():
    out = planning.plan([0.02], family=2, difference=0.01)
    assert out["alpha"] == 0.025 and "cannot be estimated from 1 case" in out["note"]
    assert "cases_needed" not in out
    out = planning.plan([0.0] * 8, family=1, difference=0.01)  # e.g. DSC 0 on every case in both
    assert out["note"] == "all 8 paired differences are 0, no spread to plan with" and "cases_needed" not in out


def test_plan_splits_the_variance_between_cases_and_seeds():
    """Per-case differences with a known spread between cases (SD 0.02) and per-seed noise (SD 0.01 per
    configuration): the seed share and the cases needed with infinitely many seeds follow."""
    rng = np.random.default_rng(0)
    n, k = 200, 3
    case_effect = rng.normal(0.01, 0.02, n)
    base = [{f"c{i}": 0.5 + rng.normal(0, 0.01) for i in range(n)} for _ in range(k)]
    other = [{f"c{i}": 0.5 + case_effect[i] + rng.normal(0, 0.01) for i in range(n)} for _ in range(k)]
    diff = [np.mean([t[f"c{i}"] for t in other]) - np.mean([t[f"c{i}"] for t in base]) for i in range(n)]
    out = planning.plan(diff, family=1, difference=0.01, seeds=(base, other))
    seed_part = 2 * 0.01**2 / k
    assert out["seed_share"] == pytest.approx(seed_part / (seed_part + 0.02**2), abs=0.08)
    assert out["cases_needed_infinite_seeds"] == pytest.approx(planning.cases_needed(0.01, 0.02), rel=0.25)
    assert out["cases_needed"] > out["cases_needed_infinite_seeds"]
    # with K seeds the variance is 0.02² + 2 · 0.01² / K: within 10 % of 0.02² from K = 5 on
    assert 3 <= out["seeds_needed"] <= 8
    assert out["n"] == n >= MIN_PAIRS
