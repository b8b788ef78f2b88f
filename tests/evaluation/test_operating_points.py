"""Tests for lesionseg.evaluation.operating_points against scikit-learn and brute force on the same voxels."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import f1_score, fbeta_score, precision_score, recall_score

from lesionseg.evaluation import metrics
from lesionseg.evaluation.nanstats import mean_over_cases
from lesionseg.evaluation.operating_points import CURVE_THRESHOLDS, counts_at, metrics_at, tune_threshold


def table(prob, ref):
    return metrics.pr_table(torch.as_tensor(np.asarray(prob, dtype=np.float32)), torch.as_tensor(np.asarray(ref, bool)))


def brute_counts(prob, ref, t):
    pred = np.asarray(prob, dtype=np.float32) >= np.float32(t) if t <= 1 else np.zeros(len(prob), bool)
    ref = np.asarray(ref, bool)
    return [int((pred & ref).sum()), int((pred & ~ref).sum()), int((~pred & ref).sum())]


def sk_dsc(prob, ref, t):
    """Per-case DSC by scikit-learn, with overlap_metrics' convention (1 when both are empty)."""
    pred = np.asarray(prob, dtype=np.float32) >= np.float32(t)
    return f1_score(ref, pred, zero_division=1.0)


def test_counts_at_every_kind_of_threshold_match_brute_force():
    rng = np.random.default_rng(1)
    prob = np.round(rng.random(500), 2).astype(np.float32)  # many ties
    ref = rng.random(500) < 0.3
    thresholds = [0.0, 1e-9, 0.25, float(np.float32(0.5)), 0.505, 0.99, 1.0, 1.5, *np.unique(prob)[:20].tolist()]
    got = counts_at(table(prob, ref), thresholds)
    assert got.dtype == torch.int64 and got.shape == (len(thresholds), 3)
    for row, t in zip(got.tolist(), thresholds):
        assert row == brute_counts(prob, ref, t), t


def test_metrics_at_equal_overlap_metrics_including_empty_cases():
    rows = [[3, 2, 1], [0, 0, 0], [0, 4, 0], [0, 0, 5], [7, 0, 0]]
    got = metrics_at(np.array(rows))
    for i, (tp, fp, fn) in enumerate(rows):
        want = metrics.overlap_metrics([tp, fp, fn, 10])
        for key in ("dsc", "f2", "sensitivity", "precision"):
            assert (math.isnan(want[key]) and math.isnan(got[key][i])) or got[key][i] == pytest.approx(want[key]), key


def test_metrics_at_against_scikit_learn_along_the_grid():
    rng = np.random.default_rng(2)
    prob = rng.random(2000).astype(np.float32)
    ref = rng.random(2000) < 0.1 + 0.5 * prob  # informative probabilities
    curve = metrics_at(counts_at(table(prob, ref), CURVE_THRESHOLDS))
    for i, t in enumerate(CURVE_THRESHOLDS[::7]):
        pred = prob >= np.float32(t)
        j = i * 7
        assert curve["dsc"][j] == pytest.approx(f1_score(ref, pred), abs=1e-12)
        assert curve["f2"][j] == pytest.approx(fbeta_score(ref, pred, beta=2), abs=1e-12)
        assert curve["sensitivity"][j] == pytest.approx(recall_score(ref, pred), abs=1e-12)
        assert curve["precision"][j] == pytest.approx(precision_score(ref, pred, zero_division=np.nan), abs=1e-12,
                                                      nan_ok=True)


def test_mean_over_cases_skips_undefined_values():
    got = mean_over_cases([np.array([1.0, np.nan, np.nan]), np.array([0.0, 0.5, np.nan])])
    assert got[0] == 0.5 and got[1] == 0.5 and math.isnan(got[2])


def test_a_constructed_case_with_a_known_optimum():
    # lesion voxels at 0.30 and 0.40; background at 0.10 (many), 0.35 (one) and 0.45 (one).
    prob = [0.30, 0.30, 0.40, 0.40, 0.40, 0.35, 0.45] + [0.10] * 50
    ref = [1, 1, 1, 1, 1, 0, 0] + [0] * 50
    # t = 0.45: DSC 0; t = 0.40: 2·3/(6+1+2) = 0.667; t = 0.35: 6/(6+2+2) = 0.6; t = 0.30: 10/(10+2) = 0.833
    # t = 0.10: 10/(10+52) — so the optimum is t = 0.30 with DSC 5/6.
    best = tune_threshold([table(prob, ref)], "dsc")
    assert best["threshold"] == pytest.approx(0.30) and best["value"] == pytest.approx(5 / 6)
    # F2 weighs misses 4×: 5·5/(25 + 0 + 2) = 0.926 at 0.30 beats 5·3/(15 + 8 + 1) = 0.625 at 0.40
    best_f2 = tune_threshold([table(prob, ref)], "f2")
    assert best_f2["threshold"] == pytest.approx(0.30) and best_f2["value"] == pytest.approx(25 / 27)


def test_f2_prefers_a_lower_threshold_than_dsc():
    # a lesion whose border is uncertain: DSC wants the core only, F2 takes the border too
    prob = [0.9] * 10 + [0.4] * 10 + [0.4] * 30 + [0.05] * 100
    ref = [1] * 10 + [1] * 10 + [0] * 30 + [0] * 100
    # t = 0.9: DSC 20/30, F2 50/90;  t = 0.4: DSC 40/70, F2 100/130
    dsc, f2 = tune_threshold([table(prob, ref)], "dsc"), tune_threshold([table(prob, ref)], "f2")
    assert dsc["threshold"] == pytest.approx(0.9) and dsc["value"] == pytest.approx(20 / 30)
    assert f2["threshold"] == pytest.approx(0.4) and f2["value"] == pytest.approx(100 / 130)


def test_ties_go_to_the_highest_threshold_and_the_mean_is_per_case():
    # two cases, each perfect at its own threshold: case A at 0.8, case B at 0.2 → per-case mean decides
    a = table([0.8, 0.8, 0.2, 0.2, 0.2, 0.2], [1, 1, 0, 0, 0, 0])
    b = table([0.2, 0.2, 0.1, 0.1], [1, 1, 0, 0])
    best = tune_threshold([a, b], "dsc")
    # t = 0.8: A 1, B 0 → 0.5;  t = 0.2: A 4/(4+4) = 0.5, B 1 → 0.75;  t = 0.1: A 0.5, B 4/6 → 0.583
    assert best == {"threshold": pytest.approx(0.2), "value": pytest.approx(0.75)}
    flat = table([0.7, 0.3], [1, 1])  # DSC 2/3 at 0.7 and 1 at 0.3; both cases below tie at 1 → highest wins
    same = tune_threshold([flat, table([0.3, 0.3], [1, 1])], "dsc")
    assert same["threshold"] == pytest.approx(0.3)
    constant = tune_threshold([table([0.6, 0.6, 0.6], [1, 1, 1])], "dsc")
    assert constant["threshold"] == pytest.approx(0.6)  # every threshold ≤ 0.6 ties; the highest is taken


def test_a_case_without_lesions_counts_as_dsc_1_when_nothing_is_predicted():
    lesion = table([0.9, 0.6, 0.1, 0.1], [1, 1, 0, 0])
    empty = table([0.6, 0.1, 0.1, 0.1], [0, 0, 0, 0])  # DSC 1 only while 0.6 is not predicted
    best = tune_threshold([lesion, empty], "dsc")
    # t = 0.9: (2/3 + 1)/2 = 0.833;  t = 0.6: (1 + 0)/2 = 0.5
    assert best["threshold"] == pytest.approx(0.9) and best["value"] == pytest.approx(5 / 6)


def test_zero_probabilities_are_never_the_threshold_and_no_voxels_give_nan():
    assert tune_threshold([table([0.0, 0.0], [1, 0])], "dsc") == {"threshold": pytest.approx(math.nan, nan_ok=True),
                                                                  "value": pytest.approx(math.nan, nan_ok=True)}
    assert math.isnan(tune_threshold([], "f2")["threshold"])
    with pytest.raises(ValueError, match="metric"):
        tune_threshold([table([0.5], [1])], "sensitivity")


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 10_000), st.integers(1, 3), st.integers(2, 60), st.sampled_from(["dsc", "f2"]))
def test_the_tuned_threshold_beats_every_candidate_by_scikit_learn(seed, n_cases, size, metric):
    rng = np.random.default_rng(seed)
    cases = []
    for _ in range(n_cases):
        ref = rng.random(size) < rng.uniform(0, 0.5)
        prob = np.clip(0.4 * ref + rng.random(size) * 0.7, 0, 1).round(rng.integers(1, 4)).astype(np.float32)
        cases.append((prob, ref))
    best = tune_threshold([table(p, r) for p, r in cases], metric)
    candidates = sorted({float(v) for p, _ in cases for v in p if v > 0}, reverse=True)
    if not candidates:
        assert math.isnan(best["threshold"])
        return

    def score(t):
        values = []
        for p, r in cases:
            pred = p >= np.float32(t)
            if metric == "dsc":
                values.append(f1_score(r, pred, zero_division=1.0))
            else:
                values.append(fbeta_score(r, pred, beta=2, zero_division=1.0))
        return float(np.mean(values))

    scores = [score(t) for t in candidates]
    top = max(scores)
    assert best["value"] == pytest.approx(top, abs=1e-12)
    assert best["threshold"] == pytest.approx(candidates[scores.index(top)])  # first = highest of the ties
