"""FROC per evaluation: the counts at every curve threshold against SciPy-labelled `lesion_counts` on the
same prediction (the reference), MONAI's FROC curve on isolated candidates, the operating points and the CPM
worked out by hand, and the evaluator's files."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.metrics import compute_froc_curve_data
from scipy import ndimage

from lesionseg.config import EVAL_DEFAULTS, eval_options
from lesionseg.evaluation import froc
from lesionseg.evaluation.evaluate import evaluate_cases
from lesionseg.evaluation.lesionwise import lesion_counts, min_component_voxels, scored_prediction


def blobs(seed: int, shape=(20, 22, 18)) -> tuple[torch.Tensor, torch.Tensor]:
    """(float32 probabilities, bool reference): smoothed noise, so that components merge and split as the
    threshold rises, and a reference of blobs partly under it."""
    rng = np.random.default_rng(seed)
    prob = ndimage.gaussian_filter(rng.random(shape), 1.2)
    prob = (prob - prob.min()) / (prob.max() - prob.min())
    ref = ndimage.gaussian_filter(rng.random(shape), 1.5) > 0.56
    return torch.from_numpy(prob.astype(np.float32)), torch.from_numpy(ref)


def by_scipy(prob, ref, voxel_ml, options, mask=None) -> np.ndarray:
    """The reference: at every threshold, the prediction as the evaluator scores it, labelled by SciPy."""
    rows = []
    for t in froc.THRESHOLDS:
        pred, _ = scored_prediction(prob, ref, float(t), min_component_voxels(options.min_component_ml, voxel_ml), mask)
        c = lesion_counts(pred, ref if mask is None else ref & mask, voxel_ml, options.lesion_min_voxels,
                          options.lesion_min_overlap, matching=options.lesion_matching)
        rows.append([c["n_detected"], c["n_ref_lesions"], c["n_pred_lesions"] - c["n_pred_tp"]])
    return np.array(rows)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("settings", [
    {},
    {"lesion_min_voxels": 3, "lesion_min_overlap": 0.3},
    {"lesion_matching": "msseg"},
    {"lesion_matching": "panoptica"},
    {"min_component_ml": 0.004},
    {"lesion_matching": "msseg", "min_component_ml": 0.003},
])
def test_counts_equal_scipy_labelling_at_every_threshold(seed, settings):
    prob, ref = blobs(seed)
    options = eval_options(**settings)
    expected = by_scipy(prob, ref, 0.001, options)
    assert len(np.unique(expected[:, [0, 2]], axis=0)) > 3  # the counts change with the threshold
    np.testing.assert_array_equal(froc.case_counts(prob, ref, 0.001, options), expected)


def test_counts_inside_a_mask_and_at_another_voxel_size():
    prob, ref = blobs(3)
    mask = torch.zeros_like(ref)
    mask[2:17, 3:20, 1:15] = True
    for options in (EVAL_DEFAULTS, eval_options(lesion_matching="msseg")):
        np.testing.assert_array_equal(froc.case_counts(prob, ref, 0.00075, options, mask),
                                      by_scipy(prob, ref, 0.00075, options, mask))


def test_edge_cases():
    shape = (6, 7, 8)
    nothing, empty = torch.zeros(shape), torch.zeros(shape, dtype=torch.bool)
    one = empty.clone()
    one[2, 3, 4] = True
    # no reference lesion, nothing predicted: all zero
    assert not froc.case_counts(nothing, empty, 0.001, EVAL_DEFAULTS).any()
    # a single reference voxel, nothing predicted: one lesion, never detected
    np.testing.assert_array_equal(froc.case_counts(nothing, one, 0.001, EVAL_DEFAULTS),
                                  np.tile([0, 1, 0], (103, 1)))
    # a single predicted voxel at exactly 0.29 in float32 without reference: a false lesion at t <= 0.29 only
    # (p >= t compared in float32, as the evaluator does), and the same voxel as reference: detected there
    prob = torch.where(one, torch.tensor(0.29, dtype=torch.float32), torch.tensor(0.0))
    false = froc.case_counts(prob, empty, 0.001, EVAL_DEFAULTS)
    assert false[:, 2].tolist() == [1] * 29 + [0] * 74 and not false[:, :2].any()
    hit = froc.case_counts(prob, one, 0.001, EVAL_DEFAULTS)
    assert hit[:, 0].tolist() == [1] * 29 + [0] * 74 and not hit[:, 2].any()
    # a saturated probability (exactly 1) is a lesion at every threshold, the last (p >= 1) included
    sure = torch.where(one, torch.tensor(1.0), torch.tensor(0.0))
    assert froc.case_counts(sure, empty, 0.001, EVAL_DEFAULTS)[:, 2].tolist() == [1] * 103
    # ties: two lesions at the same probability appear at the same threshold
    two = prob.clone()
    two[0, 0, 0] = 0.29
    assert froc.case_counts(two, empty, 0.001, EVAL_DEFAULTS)[:, 2].tolist() == [2] * 29 + [0] * 74


def test_curve_against_monai_on_isolated_candidates():
    """Lesions far apart, each of one probability: every predicted lesion is a candidate with that probability,
    as MONAI's `compute_froc_curve_data` (CAMELYON16's code) takes them; its points are at the candidates'
    probabilities (all but the lowest), which lie on the curve's grid here."""
    rng = np.random.default_rng(5)
    cases, tp_probs, fp_probs, n_targets = [], [], [], 0
    for _ in range(4):
        prob, ref = torch.zeros(40, 40, 12), torch.zeros(40, 40, 12, dtype=torch.bool)
        for k, (x, y) in enumerate([(x, y) for x in range(2, 38, 6) for y in range(2, 38, 6)][:30]):
            kind = rng.integers(3)  # 0: missed lesion, 1: detected lesion, 2: false positive
            p = float(np.round(rng.integers(5, 95) / 100, 2))
            if kind < 2:
                ref[x:x + 2, y:y + 2, 4:6] = True
                n_targets += 1
            if kind > 0:
                prob[x:x + 2, y:y + 2, 4:6] = p
                (tp_probs if kind == 1 else fp_probs).append(np.float32(p))
        cases.append(froc.case_counts(prob, ref, 0.001, EVAL_DEFAULTS))
    curve = froc.curve(cases)
    fps, sens = compute_froc_curve_data(np.array(fp_probs), np.array(tp_probs), n_targets, 4)
    grid = np.asarray(froc.THRESHOLDS, dtype=np.float32)
    for t, fp, s in zip(sorted(set(fp_probs + tp_probs))[1:], fps, sens):
        k = int(np.flatnonzero(grid == t)[0])
        assert curve["fp_per_scan"][k] == pytest.approx(fp) and curve["sensitivity_pooled"][k] == pytest.approx(s)


def test_operating_points_and_cpm_by_hand():
    """Three thresholds only (the first three of the grid; the other 100 as the third); two cases with 4 and 2
    lesions:
    t=0.01: case A 4/4 detected, 6 false; case B 2/2, 4 false → sensitivity 1, 5 FP per scan
    t=0.02: A 3/4, 1 false; B 1/2, 1 false                   → 0.625, 1
    t=0.03: A 2/4, 0 false; B 0/2, 0 false                   → 0.25, 0   (the rest of the grid: as 0.03)
    Operating points: 1/8, 1/4, 1/2 → t=1 (0.25, the highest of the ties); 1, 2, 4 → t=0.02 (0.625); 8 → t=0.01.
    CPM = (3 × 0.25 + 3 × 0.625 + 1) / 7 = 3.625 / 7. Per case: A (3 × 0.5 + 3 × 0.75 + 1) / 7 = 4.75 / 7,
    B (0 + 3 × 0.5 + 1) / 7 = 2.5 / 7 — their mean is the CPM. Pooled: t=0.02 has 4/6 (not 0.625)."""
    a = np.tile([2, 4, 0], (103, 1))
    a[:2] = [[4, 4, 6], [3, 4, 1]]
    b = np.tile([0, 2, 0], (103, 1))
    b[:2] = [[2, 2, 4], [1, 2, 1]]
    curve = froc.curve([a, b])
    block, per_case = froc.summary(curve)
    assert [p["threshold"] for p in block["operating_points"]] == [1.0] * 3 + [0.02] * 3 + [0.01]
    assert block["cpm"] == pytest.approx(3.625 / 7)
    np.testing.assert_allclose(per_case["cpm"], [4.75 / 7, 2.5 / 7])
    np.testing.assert_allclose(per_case["ltpr_1fp"], [0.75, 0.5])
    assert block["cpm_pooled"] == pytest.approx((3 * 2 / 6 + 3 * 4 / 6 + 1) / 7)
    assert block["verdict"] == {"fp_per_scan": 1.0, "chosen_on": "these cases' curve", "thresholds": [0.02],
                                "sensitivity_pooled": pytest.approx(4 / 6)}


def test_no_operating_point_is_predicting_nothing():
    """Every threshold has 3 false lesions per scan: below 3 FP per scan nothing may be predicted
    (sensitivity 0); a case without reference lesions has no sensitivity at all."""
    a = np.tile([1, 2, 3], (103, 1))
    empty = np.tile([0, 0, 3], (103, 1))
    block, per_case = froc.summary(froc.curve([a, empty]))
    assert [p["threshold"] for p in block["operating_points"]] == [None] * 5 + [1.0] * 2  # the highest of ties
    assert block["cpm"] == pytest.approx(2 * 0.5 / 7)
    assert per_case["cpm"][0] == pytest.approx(2 * 0.5 / 7) and math.isnan(per_case["cpm"][1])
    assert per_case["ltpr_1fp"][0] == 0 and math.isnan(per_case["ltpr_1fp"][1])


def test_the_evaluator_writes_the_froc(tmp_path):
    affine = np.diag([1.0, 1.0, 1.0, 1.0])
    cases = []
    for seed in range(3):
        prob, ref = blobs(seed)
        for name, array in (("pred", prob.numpy()), ("ref", ref.numpy().astype(np.uint8))):
            nib.save(nib.Nifti1Image(array, affine), tmp_path / f"{name}{seed}.nii.gz")
        cases.append((f"case{seed}", tmp_path / f"pred{seed}.nii.gz", tmp_path / f"ref{seed}.nii.gz"))
    summary = evaluate_cases(cases, tmp_path / "out", progress=False)
    with open(tmp_path / "out" / "froc.csv") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == froc.COLUMNS and len(rows) == 103
    expected = froc.curve([by_scipy(*blobs(seed), 0.001, EVAL_DEFAULTS) for seed in range(3)])
    np.testing.assert_allclose([float(r["fp_per_scan"]) for r in rows], expected["fp_per_scan"])
    np.testing.assert_allclose([float(r["sensitivity"]) for r in rows], expected["sensitivity"])
    with open(tmp_path / "out" / "cases.csv") as f:
        per_case = [float(r["cpm"]) for r in csv.DictReader(f)]
    assert summary["per_case"]["cpm"]["mean"] == pytest.approx(summary["froc"]["cpm"])
    assert np.mean(per_case) == pytest.approx(summary["froc"]["cpm"])
    assert summary["pooled"]["cpm"] == summary["froc"]["cpm_pooled"]
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["froc"]["verdict"]["fp_per_scan"] == 1.0


def test_ltpr_at_1_fp_at_thresholds_chosen_on_validation():
    """The hand-made curve above; case A read at a validation threshold of 0.01 (4/4), case B at None — the
    cases' own operating point, 0.02 (1/2). Pooled: 5 of 6 lesions."""
    a = np.tile([2, 4, 0], (103, 1))
    a[:2] = [[4, 4, 6], [3, 4, 1]]
    b = np.tile([0, 2, 0], (103, 1))
    b[:2] = [[2, 2, 4], [1, 2, 1]]
    block, per_case = froc.summary(froc.curve([a, b]), verdict_thresholds=[0.01, None])
    np.testing.assert_allclose(per_case["ltpr_1fp"], [1.0, 0.5])
    assert block["verdict"]["thresholds"] == [0.01, 0.02] and block["verdict"]["sensitivity_pooled"] == 5 / 6
    assert block["verdict"]["chosen_on"].startswith("validation where")
    block, per_case = froc.summary(froc.curve([a, b]), verdict_thresholds=[1.0, 1.0])
    np.testing.assert_allclose(per_case["ltpr_1fp"], [0.5, 0.0])
    assert block["verdict"]["chosen_on"] == "validation"


def test_the_validation_point():
    a = np.tile([2, 4, 0], (103, 1))
    a[:2] = [[4, 4, 6], [3, 4, 1]]
    assert froc.validation_point([a])["threshold"] == 0.02  # 3/4 at 1 false lesion
    assert froc.validation_point([])["threshold"] is None  # no validation case
    assert froc.validation_point([np.tile([0, 0, 2], (103, 1))])["threshold"] is None  # none with a lesion
    always = froc.validation_point([np.tile([1, 2, 5], (103, 1))])  # 5 false lesions at every threshold
    assert always["threshold"] == 1.0 and always["validation_fp_per_scan"] == 5


def test_verdict_thresholds_are_checked(tmp_path):
    from lesionseg.errors import LesionsegError

    with pytest.raises(LesionsegError, match="one per case"):
        froc.check_verdict_thresholds([0.5], 2)
    with pytest.raises(LesionsegError, match="0.505"):
        froc.check_verdict_thresholds([0.5, 0.505], 2)
    froc.check_verdict_thresholds([0.5, None, 0.9999], 3)
