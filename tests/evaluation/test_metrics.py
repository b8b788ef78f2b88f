"""Tests for lesionseg.evaluation.metrics: hand-checked tables of tiny tensors, then scikit-learn on random inputs."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import (
    average_precision_score,
    f1_score,
    fbeta_score,
    jaccard_score,
    precision_recall_curve,
    precision_score,
    recall_score,
)

from lesionseg.evaluation import metrics

NAN = math.nan


def t(values, dtype=torch.bool):
    return torch.tensor(values, dtype=dtype)


def assert_metrics_equal(got: dict, expected: dict) -> None:
    assert got.keys() >= expected.keys()
    for key, value in expected.items():
        if math.isnan(value):
            assert math.isnan(got[key]), (key, got[key])
        else:
            assert got[key] == pytest.approx(value, abs=1e-12), key


# [pred, ref, counts [tp, fp, fn, tn], expected metrics] — every number checkable by hand.
OVERLAP_CASES = [
    # shape (2, 3): one hit, one false alarm, one miss
    [[[1, 1, 0], [0, 0, 0]], [[1, 0, 1], [0, 0, 0]], [1, 1, 1, 3],
     {"dsc": 0.5, "iou": 1 / 3, "f2": 5 / 10, "sensitivity": 0.5, "precision": 0.5, "specificity": 0.75}],
    # shape (2, 2): both empty → DSC = IoU = F2 = 1, sensitivity and precision undefined
    [[[0, 0], [0, 0]], [[0, 0], [0, 0]], [0, 0, 0, 4],
     {"dsc": 1.0, "iou": 1.0, "f2": 1.0, "sensitivity": NAN, "precision": NAN, "specificity": 1.0}],
    # shape (4,): empty reference, one voxel predicted
    [[0, 1, 0, 0], [0, 0, 0, 0], [0, 1, 0, 3],
     {"dsc": 0.0, "iou": 0.0, "f2": 0.0, "sensitivity": NAN, "precision": 0.0, "specificity": 0.75}],
    # shape (4,): lesion in the reference, empty prediction
    [[0, 0, 0, 0], [0, 0, 1, 0], [0, 0, 1, 3],
     {"dsc": 0.0, "iou": 0.0, "f2": 0.0, "sensitivity": 0.0, "precision": NAN, "specificity": 1.0}],
    # shape (1,): a single voxel, hit; no negatives → specificity undefined
    [[1], [1], [1, 0, 0, 0],
     {"dsc": 1.0, "iou": 1.0, "f2": 1.0, "sensitivity": 1.0, "precision": 1.0, "specificity": NAN}],
    # shape (1, 1, 5): asymmetric errors — F2 weighs misses 4x: 5·1 / (5·1 + 4·2 + 0) = 5/13
    [[[[1, 0, 0, 0, 0]]], [[[1, 1, 1, 0, 0]]], [1, 0, 2, 2],
     {"dsc": 2 / 4, "iou": 1 / 3, "f2": 5 / 13, "sensitivity": 1 / 3, "precision": 1.0, "specificity": 1.0}],
    # shape (5,): the mirror image — false alarms weigh 1x: 5·1 / (5·1 + 0 + 2) = 5/7
    [[1, 1, 1, 0, 0], [1, 0, 0, 0, 0], [1, 2, 0, 2],
     {"dsc": 2 / 4, "iou": 1 / 3, "f2": 5 / 7, "sensitivity": 1.0, "precision": 1 / 3, "specificity": 0.5}],
]


@pytest.mark.parametrize("pred, ref, counts, expected", OVERLAP_CASES)
def test_overlap_table(pred, ref, counts, expected):
    got_counts = metrics.confusion_counts(t(pred), t(ref))
    assert got_counts.dtype == torch.int64
    assert got_counts.tolist() == counts
    assert_metrics_equal(metrics.overlap_metrics(got_counts), expected)
    assert_metrics_equal(metrics.overlap_metrics(counts), expected)  # plain sequence too


def test_f_beta_key_and_values():
    counts = [1, 2, 3, 10]
    assert metrics.overlap_metrics(counts)["f2"] == pytest.approx(5 / (5 + 4 * 3 + 2))
    half = metrics.overlap_metrics(counts, f_beta=0.5)
    assert half["f0.5"] == pytest.approx(1.25 / (1.25 + 0.25 * 3 + 2))
    one = metrics.overlap_metrics(counts, f_beta=1)
    assert one["f1"] == pytest.approx(one["dsc"])


@pytest.mark.parametrize("bad", [0, -1.0, math.nan, math.inf])
def test_f_beta_must_be_positive(bad):
    with pytest.raises(ValueError, match="f_beta must be a finite number > 0"):
        metrics.overlap_metrics([1, 0, 0, 1], f_beta=bad)


def test_counts_must_be_four_non_negative():
    with pytest.raises(ValueError, match=r"four non-negative numbers"):
        metrics.overlap_metrics([1, 2, 3])
    with pytest.raises(ValueError, match=r"four non-negative numbers"):
        metrics.overlap_metrics([1, -2, 3, 4])


def test_confusion_counts_shape_mismatch_shows_both_shapes():
    with pytest.raises(ValueError, match=r"\(2, 3\) and \(3, 2\)"):
        metrics.confusion_counts(torch.zeros(2, 3, dtype=torch.bool), torch.zeros(3, 2, dtype=torch.bool))


def test_confusion_counts_needs_bool():
    with pytest.raises(ValueError, match="pred must be a bool tensor"):
        metrics.confusion_counts(torch.zeros(3), torch.zeros(3, dtype=torch.bool))
    with pytest.raises(ValueError, match="ref must be a bool tensor"):
        metrics.confusion_counts(torch.zeros(3, dtype=torch.bool), torch.zeros(3, dtype=torch.int64))


# [prob, ref, (values, n_pos, n_neg), average precision] — shape (n,), hand-checked.
PR_CASES = [
    # thresholds 0.9: P 1 R .5 | 0.8: P .5 R .5 | 0.7: P 2/3 R 1 | 0.6 → AP = .5·1 + .5·2/3
    [[0.9, 0.8, 0.7, 0.6], [1, 0, 1, 0], ([0.9, 0.8, 0.7, 0.6], [1, 0, 1, 0], [0, 1, 0, 1]), 0.5 + 1 / 3],
    # a tie is one threshold: 0.5: P 1/2 R 1/2 | 0.2: P 2/3 R 1 → AP = .25 + 1/3
    [[0.5, 0.2, 0.5], [1, 1, 0], ([0.5, 0.2], [1, 1], [1, 0]), 0.25 + 1 / 3],
    # all probabilities equal: one threshold, AP = prevalence
    [[0.3, 0.3, 0.3, 0.3], [0, 1, 0, 0], ([0.3], [1], [3]), 0.25],
    # binary mask as probabilities
    [[1.0, 0.0, 1.0, 0.0, 0.0], [1, 1, 0, 0, 0], ([1.0, 0.0], [1, 1], [1, 2]), 0.5 * 0.5 + 0.5 * 0.4],
    # single voxel
    [[0.7], [1], ([0.7], [1], [0]), 1.0],
    # no positive voxel: AP undefined
    [[0.7, 0.1], [0, 0], ([0.7, 0.1], [0, 0], [1, 1]), NAN],
]


@pytest.mark.parametrize("prob, ref, table, ap", PR_CASES)
def test_pr_table_and_average_precision(prob, ref, table, ap):
    got = metrics.pr_table(t(prob, torch.float32), t(ref))
    assert got[0].dtype == torch.float32 and got[1].dtype == got[2].dtype == torch.int64
    assert got[0].tolist() == pytest.approx(table[0])
    assert got[1].tolist() == table[1] and got[2].tolist() == table[2]
    if math.isnan(ap):
        assert math.isnan(metrics.average_precision(got))
    else:
        assert metrics.average_precision(got) == pytest.approx(ap, abs=1e-12)


def test_pr_curve_hand_example():
    precision, recall, thresholds = metrics.pr_curve(metrics.pr_table(t([0.5, 0.2, 0.5], torch.float64), t([1, 1, 0])))
    assert thresholds.tolist() == [0.2, 0.5]
    assert precision.tolist() == pytest.approx([2 / 3, 0.5, 1.0])
    assert recall.tolist() == [1.0, 0.5, 0.0]


def test_pr_curve_without_positives_has_nan_recall():
    _, recall, _ = metrics.pr_curve(metrics.pr_table(t([0.2, 0.4], torch.float32), t([0, 0])))
    assert math.isnan(recall[0]) and math.isnan(recall[1]) and recall[2] == 0


def test_negative_zero_is_zero():
    table = metrics.pr_table(t([-0.0, 0.0, 0.5], torch.float32), t([0, 1, 1]))
    assert table[0].tolist() == [0.5, 0.0] and table[1].tolist() == [1, 1] and table[2].tolist() == [0, 1]


def test_pr_table_accepts_bool_and_integer_masks():
    ref = t([1, 0, 1, 0])
    for prob in (t([1, 1, 0, 0]), t([1, 1, 0, 0], torch.uint8), t([1, 1, 0, 0], torch.int64)):
        assert metrics.pr_table(prob, ref)[0].tolist() == [1.0, 0.0]


@pytest.mark.parametrize(
    "prob, match",
    [([0.2, 1.5], r"\[0, 1\]; found values in \[0.2, 1.5\]"),
     ([-0.25, 0.5], r"found values in \[-0.25, 0.5\]"),
     ([0.5, NAN], r"found values in \[0.5, 0.5\] and 1 NaN value"),
     ([2.0, 3.0], r"found values in \[2, 3\]")],
)
def test_probabilities_outside_unit_interval(prob, match):
    with pytest.raises(ValueError, match=match):
        metrics.pr_table(t(prob, torch.float32), t([0, 1]))


def test_pr_table_shape_mismatch():
    with pytest.raises(ValueError, match=r"\(2,\) and \(3,\)"):
        metrics.pr_table(torch.zeros(2), torch.zeros(3, dtype=torch.bool))


def test_merge_keeps_float32_and_widens_mixed_tables():
    a = metrics.pr_table(t([0.1, 0.3], torch.float32), t([1, 0]))
    b = metrics.pr_table(t([0.3, 0.7], torch.float64), t([1, 1]))
    assert metrics.merge_pr_tables([a, a])[0].dtype == torch.float32
    merged = metrics.merge_pr_tables([a, b])
    assert merged[0].dtype == torch.float64
    # float32(0.3) and float64 0.3 are different numbers, hence different thresholds
    assert merged[0].tolist() == [0.7, float(np.float32(0.3)), 0.3, float(np.float32(0.1))]
    assert merged[1].tolist() == [1, 0, 1, 1] and merged[2].tolist() == [0, 1, 0, 0]


def test_merge_needs_a_table():
    with pytest.raises(ValueError, match="at least one table"):
        metrics.merge_pr_tables([])


def test_empty_input():
    table = metrics.pr_table(torch.zeros(0), torch.zeros(0, dtype=torch.bool))
    assert table[0].numel() == 0 and math.isnan(metrics.average_precision(table))
    assert metrics.confusion_counts(torch.zeros(0, dtype=torch.bool), torch.zeros(0, dtype=torch.bool)).tolist() == [0] * 4


# ---- scikit-learn on random inputs ----------------------------------------------------------------------

def sklearn_overlap(pred: np.ndarray, ref: np.ndarray) -> dict[str, float]:
    y, p = ref.ravel(), pred.ravel()
    return {
        "dsc": f1_score(y, p, zero_division=1.0),
        "iou": jaccard_score(y, p, zero_division=1.0),
        "f2": fbeta_score(y, p, beta=2, zero_division=1.0),
        "sensitivity": recall_score(y, p, zero_division=np.nan),
        "precision": precision_score(y, p, zero_division=np.nan),
        "specificity": recall_score(y, p, pos_label=0, zero_division=np.nan),
    }


def check_threshold_free(prob: np.ndarray, ref: np.ndarray) -> None:
    table = metrics.pr_table(torch.from_numpy(prob), torch.from_numpy(ref))
    ap = metrics.average_precision(table)
    precision, recall, thresholds = (x.numpy() for x in metrics.pr_curve(table))
    if not ref.any():
        assert math.isnan(ap) and np.isnan(recall[:-1]).all()
        if ref.size == 0:
            return
        with pytest.warns(UserWarning, match="No positive class found"):
            precision_recall_curve(ref.ravel(), prob.ravel())  # sklearn's choice differs: recall 1, AP 0
        return
    assert ap == pytest.approx(average_precision_score(ref.ravel(), prob.ravel()), abs=1e-12)
    sk_precision, sk_recall, sk_thresholds = precision_recall_curve(ref.ravel(), prob.ravel())
    np.testing.assert_array_equal(thresholds, sk_thresholds)
    np.testing.assert_allclose(precision, sk_precision, rtol=0, atol=1e-12)
    np.testing.assert_allclose(recall, sk_recall, rtol=0, atol=1e-12)


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("levels", [0, 4, 50])  # 0: continuous; else quantised → many ties
def test_random_against_sklearn(seed, levels):
    rng = np.random.default_rng(seed)
    shape = (7, 9, 11)
    ref = rng.random(shape) < rng.choice([0.0, 0.02, 0.3])
    prob = np.clip(0.6 * ref + 0.6 * rng.random(shape), 0, 1).astype(np.float32)
    if levels:
        prob = np.round(prob * levels) / levels
    pred = prob >= 0.5
    counts = metrics.confusion_counts(torch.from_numpy(pred), torch.from_numpy(ref))
    assert_metrics_equal(metrics.overlap_metrics(counts), sklearn_overlap(pred, ref))
    check_threshold_free(prob, ref)


@settings(max_examples=150, deadline=None)
@given(
    shape=st.lists(st.integers(1, 6), min_size=1, max_size=4).map(tuple),
    sparsity=st.sampled_from([0.0, 0.05, 0.3, 0.9, 1.0]),
    levels=st.sampled_from([1, 2, 3, 10, 0]),
    seed=st.integers(0, 2**32 - 1),
    dtype=st.sampled_from([np.float32, np.float64]),
)
def test_property_against_sklearn(shape, sparsity, levels, seed, dtype):
    rng = np.random.default_rng(seed)
    ref = rng.random(shape) < sparsity
    prob = rng.random(shape).astype(dtype)
    if levels:
        prob = (np.round(prob * levels) / levels).astype(dtype)
    pred = prob >= 0.5
    counts = metrics.confusion_counts(torch.from_numpy(pred), torch.from_numpy(ref))
    assert counts.sum() == ref.size
    assert_metrics_equal(metrics.overlap_metrics(counts), sklearn_overlap(pred, ref))
    check_threshold_free(prob, ref)


@settings(max_examples=60, deadline=None)
@given(
    sizes=st.lists(st.integers(0, 40), min_size=1, max_size=6),
    levels=st.sampled_from([2, 5, 0]),
    seed=st.integers(0, 2**32 - 1),
)
def test_merged_tables_equal_concatenated_voxels(sizes, levels, seed):
    rng = np.random.default_rng(seed)
    probs = [rng.random(n).astype(np.float32) for n in sizes]
    if levels:
        probs = [(np.round(p * levels) / levels).astype(np.float32) for p in probs]
    refs = [rng.random(n) < 0.2 for n in sizes]
    tables = [metrics.pr_table(torch.from_numpy(p), torch.from_numpy(r)) for p, r in zip(probs, refs)]
    merged = metrics.merge_pr_tables(tables)
    direct = metrics.pr_table(torch.from_numpy(np.concatenate(probs)), torch.from_numpy(np.concatenate(refs)))
    for a, b in zip(merged, direct):
        assert torch.equal(a, b)
    check_threshold_free(np.concatenate(probs), np.concatenate(refs))


def test_threshold_point_lies_on_the_curve():
    rng = np.random.default_rng(3)
    ref = rng.random(500) < 0.1
    prob = np.round(rng.random(500), 2)
    counts = metrics.confusion_counts(torch.from_numpy(prob >= 0.5), torch.from_numpy(ref))
    at = metrics.overlap_metrics(counts)
    precision, recall, thresholds = metrics.pr_curve(metrics.pr_table(torch.from_numpy(prob), torch.from_numpy(ref)))
    i = int(torch.searchsorted(thresholds, torch.tensor(0.5, dtype=torch.float64)))
    assert precision[i] == pytest.approx(at["precision"]) and recall[i] == pytest.approx(at["sensitivity"])


def test_average_precision_score_convenience():
    prob, ref = t([0.9, 0.8, 0.7, 0.6], torch.float32), t([1, 0, 1, 0])
    assert metrics.average_precision_score(prob, ref) == pytest.approx(0.5 + 1 / 3)


def test_no_warnings_on_edge_cases():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        empty = torch.zeros(5, dtype=torch.bool)
        metrics.overlap_metrics(metrics.confusion_counts(empty, empty))
        metrics.average_precision(metrics.pr_table(torch.zeros(5), empty))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_results_stay_on_cuda():
    prob = torch.rand(4, 5, 6, device="cuda")
    ref = torch.rand(4, 5, 6, device="cuda") < 0.2
    counts = metrics.confusion_counts(prob >= 0.5, ref)
    table = metrics.pr_table(prob, ref)
    assert counts.device.type == "cuda" and table[0].device.type == "cuda"
    cpu = metrics.pr_table(prob.cpu(), ref.cpu())
    assert metrics.average_precision(table) == pytest.approx(metrics.average_precision(cpu))
