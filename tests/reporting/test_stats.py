"""Paired statistics of the sweep report, checked by hand and against SciPy / NumPy on small known inputs."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

from lesionseg.reporting import stats


def test_bootstrap_of_equal_differences_is_a_zero_width_interval():
    assert stats.bootstrap_mean_ci([0.1, 0.1, 0.1, 0.1], n_boot=500) == pytest.approx((0.1, 0.1), abs=1e-15)
    assert stats.bootstrap_mean_ci([0.0] * 7) == (0.0, 0.0)


def test_bootstrap_matches_numpy_by_hand():
    diff = np.array([0.05, -0.02, 0.10, 0.03, 0.07, -0.01, 0.04, 0.02])
    rng = np.random.default_rng(7)
    means = diff[rng.integers(0, diff.size, size=(2000, diff.size))].mean(axis=1)
    expected = tuple(np.quantile(means, [0.025, 0.975]))
    assert stats.bootstrap_mean_ci(diff, n_boot=2000, seed=7) == pytest.approx(expected, abs=0)
    # Same seed, same interval; the interval holds the sample mean and lies within the data's range.
    low, high = stats.bootstrap_mean_ci(diff, n_boot=2000, seed=7)
    assert (low, high) == stats.bootstrap_mean_ci(diff, n_boot=2000, seed=7)
    assert diff.min() <= low < diff.mean() < high <= diff.max()


def test_bootstrap_level_and_empty_sample():
    diff = np.linspace(-1, 1, 11)
    narrow = stats.bootstrap_mean_ci(diff, level=0.5)
    wide = stats.bootstrap_mean_ci(diff, level=0.99)
    assert wide[0] < narrow[0] < narrow[1] < wide[1]
    assert all(math.isnan(v) for v in stats.bootstrap_mean_ci([]))
    with pytest.raises(ValueError, match="level must be in"):
        stats.bootstrap_mean_ci(diff, level=95)
    with pytest.raises(ValueError, match="n_boot must be"):
        stats.bootstrap_mean_ci(diff, n_boot=0)


def test_wilcoxon_equals_scipy_and_the_exact_value_by_hand():
    base = np.array([0.50, 0.60, 0.55, 0.70, 0.40, 0.65])
    other = base + np.array([0.01, 0.02, 0.03, 0.04, 0.05, 0.06])  # six positive differences, distinct sizes
    result = stats.wilcoxon(base, other)
    # By hand: W- = 0, and of the 2⁶ = 64 sign patterns only all-plus and all-minus are as extreme.
    assert result["statistic"] == 0.0
    assert result["p"] == pytest.approx(2 / 64)
    assert result["p"] == sps.wilcoxon(other, base).pvalue
    assert (result["n"], result["n_nonzero"], result["note"]) == (6, 6, "")


def test_wilcoxon_drops_zero_differences_like_scipy():
    base = np.array([0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.2, 0.1])
    other = base + np.array([0.02, -0.01, 0.0, 0.05, 0.03, 0.0, 0.04, 0.06])
    result = stats.wilcoxon(base, other)
    assert (result["n"], result["n_nonzero"]) == (8, 6)
    expected = sps.wilcoxon(other, base, zero_method="wilcox")
    assert (result["statistic"], result["p"]) == (expected.statistic, expected.pvalue)


@pytest.mark.parametrize("other_shift", [[0.1] * 5, [0.0] * 8, [0.1, 0.2, 0.0, 0.0, 0.3, 0.0, 0.1]])
def test_wilcoxon_with_too_few_pairs_claims_nothing(other_shift):
    base = np.linspace(0.2, 0.8, len(other_shift))
    result = stats.wilcoxon(base, base + np.array(other_shift))  # no warning either: filterwarnings = error
    assert result["p"] is None and result["statistic"] is None
    assert "too few pairs" in result["note"] and f"of {len(other_shift)} cases" in result["note"]


def test_wilcoxon_shape_mismatch():
    with pytest.raises(ValueError, match=r"equal 1-D shapes, got \(3,\) and \(2,\)"):
        stats.wilcoxon([1, 2, 3], [1, 2])


def test_holm_by_hand():
    # Sorted: 0.01 × 3 = 0.03; 0.03 × 2 = 0.06; 0.04 × 1 = 0.04 → kept monotone at 0.06. None is not a test.
    assert stats.holm([0.01, 0.04, 0.03, None]) == pytest.approx([0.03, 0.06, 0.06, None])
    assert stats.holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])
    assert stats.holm([]) == []


def test_case_means_average_over_seeds_ignoring_undefined():
    seeds = [{"a": 0.2, "b": math.nan, "c": 0.5}, {"a": 0.4, "b": math.nan}]
    means = stats.case_means(seeds)
    assert means["a"] == pytest.approx(0.3) and means["c"] == 0.5 and math.isnan(means["b"])


def test_paired_keeps_cases_defined_in_both():
    ids, base, other = stats.paired({"x": 0.1, "y": math.nan, "z": 0.3, "w": 0.9}, {"x": 0.2, "y": 0.5, "z": 0.1})
    assert ids == ["x", "z"]
    assert base.tolist() == [0.1, 0.3] and other.tolist() == [0.2, 0.1]


def test_compare_and_verdict():
    base = {f"c{i}": 0.5 + 0.01 * i for i in range(8)}
    better = {c: v + 0.05 + 0.001 * i for i, (c, v) in enumerate(base.items())}
    result = stats.compare(base, better, n_boot=1000)
    assert result["n"] == 8 and result["mean_diff"] == pytest.approx(0.0535)
    assert 0 < result["ci_low"] <= 0.0535 <= result["ci_high"]
    assert result["p"] == sps.wilcoxon(list(better.values()), list(base.values())).pvalue
    assert stats.verdict(result, result["p"]) == "higher than baseline"
    assert stats.verdict(result, 0.2).startswith("no significant difference")
    worse = stats.compare(better, base, n_boot=1000)
    assert stats.verdict(worse, worse["p"]) == "lower than baseline"
    few = stats.compare({"a": 0.5, "b": 0.6}, {"a": 0.9, "b": 0.9})
    assert few["p"] is None and stats.verdict(few, None).startswith("no test (too few pairs")
    none = stats.compare({"a": math.nan}, {"a": 0.3})
    assert none["n"] == 0 and math.isnan(none["mean_diff"]) and math.isnan(none["ci_low"])
