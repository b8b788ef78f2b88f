"""Tests for lesionseg.evaluation.calibration: a hand computation, scikit-learn's calibration_curve, edge cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.calibration import calibration_curve

from lesionseg.evaluation.calibration import calibration_bins, expected_calibration_error, reliability_rows


def bins_of(prob, ref, n_bins=10):
    return calibration_bins(torch.tensor(prob, dtype=torch.float32), torch.tensor(ref, dtype=torch.bool), n_bins)


def test_ece_by_hand():
    # 4 bins of width 0.25. Bin 0: 0.1, 0.2 (no lesion) → conf 0.15, obs 0.  Bin 1: empty.
    # Bin 2: 0.6 (lesion), 0.7 (not) → conf 0.65, obs 0.5.  Bin 3: 0.9, 1.0 (both lesion) → conf 0.95, obs 1.
    prob = [0.1, 0.2, 0.6, 0.7, 0.9, 1.0]
    ref = [0, 0, 1, 0, 1, 1]
    bins = bins_of(prob, ref, 4)
    np.testing.assert_allclose(bins[:, 0], [2, 0, 2, 2])
    ece = (2 * 0.15 + 2 * 0.15 + 2 * 0.05) / 6
    assert expected_calibration_error(bins) == pytest.approx(ece, abs=1e-7)
    rows = reliability_rows(bins)
    assert [r["n_voxels"] for r in rows] == [2, 0, 2, 2]
    assert rows[0]["bin_low"] == 0 and rows[-1]["bin_high"] == 1
    assert rows[2]["confidence"] == pytest.approx(0.65) and rows[2]["observed"] == 0.5
    assert math.isnan(rows[1]["confidence"]) and math.isnan(rows[1]["observed"])


def test_bins_match_scikit_learn_including_probabilities_on_edges():
    rng = np.random.default_rng(0)
    prob = np.concatenate([rng.random(3000), np.linspace(0, 1, 11), [0.0, 1.0, 0.3, 0.6, 0.7]]).astype(np.float32)
    ref = rng.random(prob.size) < prob
    for n_bins in (5, 10, 15):
        bins = bins_of(prob, ref, n_bins)
        filled = bins[:, 0] > 0
        observed = (bins[filled, 2] / bins[filled, 0]).numpy()
        confidence = (bins[filled, 1] / bins[filled, 0]).numpy()
        sk_true, sk_pred = calibration_curve(ref, prob.astype(np.float64), n_bins=n_bins, strategy="uniform")
        np.testing.assert_allclose(observed, sk_true, atol=1e-12)
        np.testing.assert_allclose(confidence, sk_pred, atol=1e-7)


def test_ece_against_a_plain_numpy_loop():
    rng = np.random.default_rng(1)
    prob = np.concatenate([rng.random(5000) ** 3, np.linspace(0, 1, 11)]).astype(np.float32)
    ref = rng.random(prob.size) < np.sqrt(prob)  # under-confident
    edges = np.linspace(0, 1, 11)
    ece = 0.0
    for b in range(10):
        inside = ((prob > edges[b]) if b > 0 else (prob >= 0)) & (prob <= edges[b + 1])
        if inside.any():
            ece += inside.mean() * abs(ref[inside].mean() - prob[inside].astype(np.float64).mean())
    assert expected_calibration_error(bins_of(prob, ref)) == pytest.approx(ece, abs=1e-7)


def test_perfect_and_worst_calibration_and_no_voxels():
    assert expected_calibration_error(bins_of([0.0, 0.0, 1.0], [0, 0, 1])) == 0.0
    assert expected_calibration_error(bins_of([1.0, 1.0, 0.0], [0, 0, 1])) == 1.0
    assert math.isnan(expected_calibration_error(bins_of([], [])))


def test_bins_of_cases_add_up_to_the_bins_of_all_voxels():
    rng = np.random.default_rng(2)
    parts = [(rng.random(n).astype(np.float32), rng.random(n) < 0.2) for n in (100, 1, 57)]
    summed = sum(bins_of(p, r) for p, r in parts)
    together = bins_of(np.concatenate([p for p, _ in parts]), np.concatenate([r for _, r in parts]))
    torch.testing.assert_close(summed, together)


def test_bad_bin_counts_are_refused():
    with pytest.raises(ValueError, match="n_bins"):
        bins_of([0.5], [1], 0)
