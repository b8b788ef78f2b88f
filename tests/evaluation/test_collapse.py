"""The collapse rule on hand-made volumes: each flag, its boundaries, empty references and predictions."""

import math

import pytest
import torch

from lesionseg.evaluation.collapse import (
    FLAT,
    OVER,
    RULE,
    UNDER,
    advice,
    collapse_flags,
    describe,
    probability_sd,
    volume_ratio,
)

NAN = math.nan
VARIED = 0.2  # a probability SD well above FLAT


@pytest.mark.parametrize(("predicted", "reference", "sd", "expected"), [
    # predicted and reference lesion volume per case (voxels), probability SD per case → the flags raised
    ([10, 12], [10, 10], [VARIED, VARIED], []),                      # healthy: 1.1×
    ([50, 0], [5, 5], [VARIED, VARIED], []),                         # exactly 5×: not over
    ([51, 0], [5, 5], [VARIED, VARIED], ["over-segmented"]),         # just above 5× (summed over cases)
    ([2, 0], [5, 5], [VARIED, VARIED], []),                          # exactly 0.2×: not under
    ([1, 0], [0, 6], [VARIED, VARIED], ["under-segmented"]),         # 1/6 < 0.2, some lesion predicted
    ([0, 0], [3, 0], [VARIED, VARIED], ["no lesion predicted"]),     # said instead of under-segmented
    ([0, 0], [0, 0], [VARIED, VARIED], []),                          # no lesion anywhere: nothing to say
    ([40, 7], [0, 0], [VARIED, VARIED], []),                         # empty references: no ratio, no flag
    ([10, 10], [10, 10], [0.005, 0.009], ["near-constant probabilities"]),
    ([10, 10], [10, 10], [0.005, FLAT], []),                         # exactly FLAT on one case: not flat
    ([10, 10], [10, 0], [0.005, 0.3], ["near-constant probabilities"]),  # the lesion-free case does not count
    ([10, 10], [10, 10], [0.005, NAN], ["near-constant probabilities"]),  # SD unknown on one case: left out
    ([10, 10], [0, 0], [0.001, 0.001], []),                          # flat, but no case with lesion
    ([600, 400], [10, 10], [0.001, 0.002], ["over-segmented", "near-constant probabilities"]),
])
def test_flags(predicted, reference, sd, expected):
    assert [f["flag"] for f in collapse_flags(predicted, reference, sd)] == expected


def test_details_state_the_numbers_and_the_rule():
    over = collapse_flags([470], [20], [VARIED])[0]
    assert over == {"flag": "over-segmented", "value": 23.5,
                    "detail": "predicted 23.5× the reference lesion volume (470 against 20 voxels; rule: > 5×)"}
    under = collapse_flags([0.5], [10.0], [VARIED], unit="mL")[0]
    assert under["detail"] == "predicted 0.05× the reference lesion volume (0.5 against 10 mL; rule: < 0.2×)"
    none = collapse_flags([0, 0], [4, 2], [VARIED, VARIED], threshold=0.3)[0]
    assert none["detail"] == "no voxel reaches p ≥ 0.3 in 2 cases holding 6 voxels of reference lesion"
    flat = collapse_flags([10, 10], [10, 10], [0.004, 0.002])[0]
    assert flat["value"] == 0.004
    assert flat["detail"] == "probability SD at most 0.004 over 2 cases with lesion (rule: < 0.01 on every one)"


def test_one_line_message_and_advice():
    flags = collapse_flags([600], [10], [0.001])
    assert describe(flags) == ("over-segmented: predicted 60× the reference lesion volume (600 against 10 voxels; "
                               "rule: > 5×); near-constant probabilities: probability SD at most 0.001 over 1 "
                               "case with lesion (rule: < 0.01 on every one)")
    assert "train.lr" in advice(flags) and "model.prior" in advice(flags)
    assert describe([]) == "" and advice([]) == ""
    assert f"{OVER:g}×" in RULE and f"{UNDER:g}×" in RULE and f"{FLAT:g}" in RULE


def test_volume_ratio_sums_before_dividing():
    assert volume_ratio([30, 0], [10, 5]) == 2.0
    assert math.isnan(volume_ratio([3], [0]))


def test_probability_sd_inside_a_region():
    # shape: (1, 2, 2) — the region keeps the two voxels at 0.2 and 0.6
    prob = torch.tensor([[[0.2, 0.6], [0.9, 0.9]]])
    region = torch.tensor([[[True, True], [False, False]]])
    assert probability_sd(prob, region) == pytest.approx(0.2)
    assert probability_sd(prob) == pytest.approx(float(torch.tensor([0.2, 0.6, 0.9, 0.9]).std(correction=0)))
    assert math.isnan(probability_sd(prob, torch.zeros_like(region)))


def test_one_value_per_case_needed():
    with pytest.raises(ValueError, match=r"per case needed, got 2, 2 and 1"):
        collapse_flags([1, 2], [1, 2], [0.1])
