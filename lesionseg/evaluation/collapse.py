"""Collapsed runs: predictions no ranking should be read from without saying so (pure computation, no I/O).

Over the cases a run is scored on — its validation cases at every validation, its test cases after
training — at the threshold `t` (a voxel is lesion when its probability is ≥ t), `collapse_flags` raises:

- **over-segmented** when the predicted lesion volume, summed over the cases, is more than `OVER` (5) times
  the reference lesion volume summed over them: the "sea of false positives" of a network that has not
  left its start at prior 0.5 (sensitivity near 1, precision near 0);
- **under-segmented** when it is less than `UNDER` (0.2) times the reference volume, some lesion predicted;
- **no lesion predicted** when no voxel of any case reaches t while some reference holds lesion (said
  instead of under-segmented, of which it is the extreme);
- **near-constant probabilities** when, on every case whose reference holds lesion, the probabilities'
  SD over the case's scored voxels (the brain where it is known, else every voxel) is below `FLAT`
  (0.01): the output does not depend on the image. Lesion-free cases do not count: there a confident
  network is rightly flat near 0.

The volume rules need reference lesion in some case; without any they say nothing. Volumes are summed
before they are divided (a case with more lesion weighs more): voxel counts on one grid (validation) or
mL (test). The bounds are strict: exactly 5× or 0.2× is not flagged. An empty list: not collapsed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

OVER = 5.0  # predicted / reference lesion volume above this: over-segmented
UNDER = 0.2  # below this (some lesion predicted): under-segmented
FLAT = 0.01  # probability SD below this on every case with lesion: near-constant probabilities
RULE = (f"predicted lesion volume over {OVER:g}× or under {UNDER:g}× the reference, no lesion predicted, or a "
        f"probability SD under {FLAT:g} on every case with lesion")  # the rule in one line, for the report

# The likely cause and the fix of each flag, for the warnings (`advice`).
_ADVICE = {
    "over-segmented": "the output has not left its start (from model.prior 0.5 every voxel is half lesion): "
                      "train longer (train.iterations), raise train.lr or use a constant train.lr_schedule, "
                      "or start from a lower model.prior",
    "near-constant probabilities": "the output does not depend on the image: train longer (train.iterations), "
                                   "raise train.lr or use a constant train.lr_schedule, and check the "
                                   "images (lesionseg check)",
    "no lesion predicted": "the network calls nothing lesion: from a low model.prior it may never have risen "
                           "above the threshold; train longer, start from a higher model.prior or raise loss.beta",
    "under-segmented": "the network calls too little lesion: train longer, start from a higher model.prior or "
                       "raise loss.beta (the thresholds tuned on validation, thresholds.json, may recover some)",
}


def volume_ratio(predicted: Sequence[float], reference: Sequence[float]) -> float:
    """Predicted over reference lesion volume, each summed over the cases; NaN without reference lesion."""
    ref = float(sum(reference))
    return float(sum(predicted)) / ref if ref > 0 else math.nan


def probability_sd(prob: torch.Tensor, region: torch.Tensor | None = None) -> float:
    """SD (population, ddof = 0) of the probabilities inside the bool `region` (None: every voxel); NaN
    when the region is empty."""
    values = prob.reshape(-1) if region is None else prob[region]
    return float(values.double().std(correction=0)) if values.numel() else math.nan


def collapse_flags(predicted: Sequence[float], reference: Sequence[float], prob_sd: Sequence[float],
                   threshold: float = 0.5, unit: str = "voxels") -> list[dict]:
    """The rules of the module docstring over the cases: per case its predicted and reference lesion
    volume (in `unit`) and probability SD (NaN: not known). Returns one `{"flag", "detail", "value"}` per
    rule that holds (`value`: the volume ratio, or the largest SD); an empty list when none does."""
    if not len(predicted) == len(reference) == len(prob_sd):
        raise ValueError(f"one predicted volume, reference volume and probability SD per case needed, got "
                         f"{len(predicted)}, {len(reference)} and {len(prob_sd)}.")
    flags = []
    ref, pred = float(sum(reference)), float(sum(predicted))
    ratio = volume_ratio(predicted, reference)
    volumes = f"{pred:.4g} against {ref:.4g} {unit}"
    if ref > 0 and pred == 0:
        flags.append({"flag": "no lesion predicted", "value": 0.0,
                      "detail": f"no voxel reaches p ≥ {threshold:g} in {_cases(len(predicted))} holding "
                                f"{ref:.4g} {unit} of reference lesion"})
    elif ratio > OVER:
        flags.append({"flag": "over-segmented", "value": ratio, "detail": f"predicted {ratio:.3g}× the reference "
                      f"lesion volume ({volumes}; rule: > {OVER:g}×)"})
    elif ratio < UNDER:
        flags.append({"flag": "under-segmented", "value": ratio, "detail": f"predicted {ratio:.3g}× the reference "
                      f"lesion volume ({volumes}; rule: < {UNDER:g}×)"})
    spread = [s for s, r in zip(prob_sd, reference) if r > 0 and not math.isnan(s)]
    if spread and max(spread) < FLAT:
        flags.append({"flag": "near-constant probabilities", "value": max(spread),
                      "detail": f"probability SD at most {max(spread):.2g} over {_cases(len(spread))} with lesion "
                                f"(rule: < {FLAT:g} on every one)"})
    return flags


def _cases(n: int) -> str:
    return f"{n} case{'' if n == 1 else 's'}"


def describe(flags: list[dict]) -> str:
    """One line: `over-segmented: predicted 23.5× the reference lesion volume (…; rule: > 5×)`, flags
    joined by `; `; empty without flags."""
    return "; ".join(f"{f['flag']}: {f['detail']}" for f in flags)


def advice(flags: list[dict]) -> str:
    """The likely cause and the fix of the first flag (the volume rules come first); empty without flags."""
    return _ADVICE.get(flags[0]["flag"], "") if flags else ""
