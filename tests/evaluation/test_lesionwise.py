"""Tests for lesionseg.evaluation.lesionwise: hand-checked tables, SciPy components, an independent brute-force matcher."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage

from lesionseg.evaluation.lesionwise import check_parameters, lesion_counts, lesion_metrics, size_bin_names

NAN = math.nan


def vol(shape, *boxes):
    """Bool tensor of `shape` with the given index boxes set."""
    m = torch.zeros(shape, dtype=torch.bool)
    for box in boxes:
        m[box] = True
    return m


def assert_close(got: dict, expected: dict) -> None:
    for key, value in expected.items():
        assert (math.isnan(got[key]) if math.isnan(value) else got[key] == pytest.approx(value)), (key, got[key])


S = (8, 8, 8)
BIG = (slice(0, 2), slice(0, 2), slice(0, 2))  # 8 voxels
DOT = (5, 5, 5)  # 1 voxel
# [pred, ref, kwargs, counts, metrics] — shape (8, 8, 8), voxel 1 mm³ = 0.001 mL.
TABLE = [
    # ref: 8-voxel lesion + 1-voxel lesion; pred touches the big one by 1 voxel + a false positive far away
    [vol(S, (1, 1, 1), (7, 0, 7)), vol(S, BIG, DOT), {},
     {"n_ref_lesions": 2, "n_pred_lesions": 2, "n_detected": 1, "n_pred_tp": 1},
     {"ltpr": 0.5, "lfdr": 0.5, "lesion_f1": 0.5}],
    # same, but a detection needs 50 % overlap: 1/8 of the big lesion is not enough; the pred voxel is
    # fully inside the reference, so it is a true positive in the other direction
    [vol(S, (1, 1, 1), (7, 0, 7)), vol(S, BIG, DOT), {"min_overlap": 0.5},
     {"n_ref_lesions": 2, "n_pred_lesions": 2, "n_detected": 0, "n_pred_tp": 1},
     {"ltpr": 0.0, "lfdr": 0.5, "lesion_f1": 0.0}],
    # min_voxels = 2 removes the 1-voxel reference lesion and both 1-voxel predicted lesions
    [vol(S, (1, 1, 1), (7, 0, 7)), vol(S, BIG, DOT), {"min_voxels": 2},
     {"n_ref_lesions": 1, "n_pred_lesions": 0, "n_detected": 0, "n_pred_tp": 0},
     {"ltpr": 0.0, "lfdr": NAN, "lesion_f1": 0.0}],
    # voxels touching only at a corner are one lesion under 26-connectivity (two under 6)
    [vol(S, (0, 0, 0), (1, 1, 1)), vol(S, (0, 0, 0), (1, 1, 1)), {},
     {"n_ref_lesions": 1, "n_pred_lesions": 1, "n_detected": 1, "n_pred_tp": 1},
     {"ltpr": 1.0, "lfdr": 0.0, "lesion_f1": 1.0}],
    # one predicted lesion bridging two reference lesions detects both and is one true positive
    [vol(S, (0, slice(0, 5), 0)), vol(S, (0, 0, 0), (0, 4, 0)), {},
     {"n_ref_lesions": 2, "n_pred_lesions": 1, "n_detected": 2, "n_pred_tp": 1},
     {"ltpr": 1.0, "lfdr": 0.0, "lesion_f1": 1.0}],
    # both empty
    [vol(S), vol(S), {}, {"n_ref_lesions": 0, "n_pred_lesions": 0, "n_detected": 0, "n_pred_tp": 0},
     {"ltpr": NAN, "lfdr": NAN, "lesion_f1": 1.0}],
    # empty reference, one predicted lesion
    [vol(S, DOT), vol(S), {}, {"n_ref_lesions": 0, "n_pred_lesions": 1, "n_detected": 0, "n_pred_tp": 0},
     {"ltpr": NAN, "lfdr": 1.0, "lesion_f1": 0.0}],
    # a reference lesion, empty prediction
    [vol(S), vol(S, DOT), {}, {"n_ref_lesions": 1, "n_pred_lesions": 0, "n_detected": 0, "n_pred_tp": 0},
     {"ltpr": 0.0, "lfdr": NAN, "lesion_f1": 0.0}],
    # single voxel, hit
    [vol((1, 1, 1), (0, 0, 0)), vol((1, 1, 1), (0, 0, 0)), {},
     {"n_ref_lesions": 1, "n_pred_lesions": 1, "n_detected": 1, "n_pred_tp": 1},
     {"ltpr": 1.0, "lfdr": 0.0, "lesion_f1": 1.0}],
    # 2 of 3 reference lesions found, 3 of 5 predicted lesions false: F1 = 2·(2/3)(2/5) / (2/3 + 2/5)
    [vol(S, (0, 0, 0), (0, 4, 0), (7, 7, 7), (3, 3, 3), (4, 0, 4)), vol(S, (0, 0, 0), (0, 4, 0), (7, 0, 0)), {},
     {"n_ref_lesions": 3, "n_pred_lesions": 5, "n_detected": 2, "n_pred_tp": 2},
     {"ltpr": 2 / 3, "lfdr": 3 / 5, "lesion_f1": 2 * (2 / 3) * (2 / 5) / (2 / 3 + 2 / 5)}],
]


@pytest.mark.parametrize("pred, ref, kwargs, counts, expected", TABLE)
def test_lesion_table(pred, ref, kwargs, counts, expected):
    got = lesion_counts(pred, ref, voxel_ml=0.001, **kwargs)
    assert {k: got[k] for k in counts} == counts
    assert_close(lesion_metrics(got), expected)


def test_size_bins_in_voxels_and_ml():
    # reference lesions of 1, 3 and 8 voxels; only the 8-voxel one is detected
    ref = vol(S, DOT, (7, slice(0, 3), 7), BIG)
    pred = vol(S, (0, 0, 0))
    got = lesion_counts(pred, ref, voxel_ml=0.001, size_bins=(3, 8), bins_in_voxels=True)
    # a lesion exactly on an edge goes to the upper bin: [0, 3), [3, 8), [8, ∞)
    assert [got[f"n_ref_{b}"] for b in ("0-3vox", "3-8vox", "8vox+")] == [1, 1, 1]
    assert [got[f"n_detected_{b}"] for b in ("0-3vox", "3-8vox", "8vox+")] == [0, 0, 1]
    m = lesion_metrics(got)
    assert m["ltpr_0-3vox"] == 0.0 and m["ltpr_8vox+"] == 1.0
    got_ml = lesion_counts(pred, ref, voxel_ml=0.002, size_bins=(0.01,))  # 2, 6, 16 µL
    assert (got_ml["n_ref_0-0.01ml"], got_ml["n_ref_0.01ml+"]) == (2, 1)
    assert lesion_metrics(got_ml)["ltpr_0-0.01ml"] == 0.0
    empty_bin = lesion_counts(pred, vol(S), voxel_ml=0.001)
    assert all(math.isnan(v) for k, v in lesion_metrics(empty_bin).items() if k.startswith("ltpr_"))


def test_bin_names():
    assert size_bin_names([0.01, 0.1, 1]) == ["0-0.01ml", "0.01-0.1ml", "0.1-1ml", "1ml+"]
    assert size_bin_names([], "vox") == ["0vox+"]


@pytest.mark.parametrize("kwargs, match", [
    ({"min_voxels": 0}, r"lesion_min_voxels = 0: Input should be greater than or equal to 1"),
    ({"min_voxels": 2.5}, r"lesion_min_voxels = 2.5: Input should be a valid integer"),
    ({"min_overlap": 1.5}, r"lesion_min_overlap = 1.5: Input should be less than or equal to 1"),
    ({"size_bins": (0.1, 0.01)}, r"size_bins_ml = \[0.1, 0.01\]: \[0.1, 0.01\] are not bin edges: increasing positive"),
    ({"size_bins": (0, 1)}, r"are not bin edges"),
])
def test_parameter_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        lesion_counts(vol(S), vol(S), 0.001, **kwargs)


def test_shape_mismatch():
    with pytest.raises(ValueError, match=r"\(2, 2, 2\) and \(3, 3, 3\)"):
        lesion_counts(vol((2, 2, 2)), vol((3, 3, 3)), 0.001)


# ---- independent reference: 26-connected flood fill and matching written out plainly -------------------

def brute_components(mask: np.ndarray) -> list[set]:
    todo, comps = set(zip(*np.nonzero(mask))), []
    while todo:
        stack, comp = [todo.pop()], set()
        while stack:
            v = stack.pop()
            comp.add(v)
            for d in itertools.product((-1, 0, 1), repeat=3):
                n = tuple(int(a + b) for a, b in zip(v, d))
                if n in todo:
                    todo.remove(n)
                    stack.append(n)
        comps.append(comp)
    return comps


def brute_counts(pred: np.ndarray, ref: np.ndarray, min_voxels: int, min_overlap: float) -> dict:
    ref_c = [c for c in brute_components(ref) if len(c) >= min_voxels]
    pred_c = [c for c in brute_components(pred) if len(c) >= min_voxels]
    ref_all, pred_all = set().union(*ref_c), set().union(*pred_c)
    hit = lambda comp, other: len(comp & other) >= max(1, min_overlap * len(comp))  # noqa: E731
    return {"n_ref_lesions": len(ref_c), "n_pred_lesions": len(pred_c),
            "n_detected": sum(hit(c, pred_all) for c in ref_c), "n_pred_tp": sum(hit(c, ref_all) for c in pred_c)}


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), shape=st.tuples(*[st.integers(1, 7)] * 3),
       density=st.sampled_from([0.0, 0.05, 0.15, 0.4]), min_voxels=st.sampled_from([1, 2, 4]),
       min_overlap=st.sampled_from([0.0, 0.3, 1.0]))
def test_matches_brute_force(seed, shape, density, min_voxels, min_overlap):
    rng = np.random.default_rng(seed)
    ref, pred = rng.random(shape) < density, rng.random(shape) < density
    got = lesion_counts(torch.from_numpy(pred), torch.from_numpy(ref), 0.001, min_voxels, min_overlap)
    expected = brute_counts(pred, ref, min_voxels, min_overlap)
    assert {k: got[k] for k in expected} == expected
    n_scipy = ndimage.label(ref, structure=np.ones((3, 3, 3)))[1]
    assert got["n_ref_lesions"] == n_scipy if min_voxels == 1 else got["n_ref_lesions"] <= n_scipy
    assert sum(got[k] for k in got if k.startswith("n_ref_") and k != "n_ref_lesions") == got["n_ref_lesions"]


def test_check_parameters_accepts_defaults():
    check_parameters(1, 0.0, (0.01, 0.1, 1.0))
