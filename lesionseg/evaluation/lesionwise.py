"""Lesion-wise detection: connected components of reference and prediction, matched by overlap.

Definition — the ISBI 2015 longitudinal MS challenge (Carass et al. 2017, NeuroImage 148:77-102), with
the minimum-size and minimum-overlap parameters of MSSEG-2016 (Commowick et al. 2018, Sci Rep 8:13650):

- Lesions are the connected components of a mask under **26-connectivity** (faces, edges and corners;
  `scipy.ndimage.label` with a 3×3×3 structure), as SCIENCE.md prescribes; check the connectivity of any
  published figures you compare with. Components smaller than `min_voxels` are removed from the mask
  before anything else (MSSEG-2016 ignored lesions of a few mm³; the default 1 keeps all).
- A **reference lesion is detected** when the predicted mask covers at least
  max(1 voxel, `min_overlap` × its size) of it; a **predicted lesion is a true positive** when the
  reference mask covers at least max(1 voxel, `min_overlap` × its size) of it. `min_overlap = 0` is ISBI
  2015's "overlaps by at least one voxel"; MSSEG-2016 asked for a fraction (10 %), and its rule against
  predicted lesions that spill far outside the reference one is `msseg` matching's (`matching`).
- **LTPR** = detected reference lesions / reference lesions (NaN without reference lesions).
- **LFDR** = predicted lesions that are not true positives / predicted lesions (NaN without predicted
  lesions); ISBI 2015 calls this LFPR, but its denominator makes it a false discovery rate.
- **Lesion-wise F1** = 2·LTPR·(1 − LFDR) / (LTPR + 1 − LFDR); as for DSC it is 1 when neither mask has a
  lesion and 0 when exactly one has.
- **LTPR by size bin**: the same ratio among reference lesions whose volume falls in [lo, hi) of each bin.

This is `eval.lesion_matching: isbi2015`, the default; `msseg` (Anima's rules, with the spill-out rule) and
`panoptica` (one-to-one at IoU ≥ 0.5) are in `matching`, and use LTPR, LFDR and F1 as defined here.

Counts (not ratios) are returned so that they add up across cases; `lesion_metrics` turns them into
ratios, per case or pooled. Components are labelled on CPU with SciPy.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import cc3d
import numpy as np
import torch
from scipy import ndimage

from lesionseg.config import EVAL_DEFAULTS, eval_options
from lesionseg.evaluation import matching as matching_rules
from lesionseg.evaluation.metrics import confusion_counts

DEFAULT_SIZE_BINS_ML = tuple(EVAL_DEFAULTS.size_bins_ml)


def _edge_name(value: float) -> str:
    return f"{value:g}"


def size_bin_names(edges: Sequence[float], unit: str = "ml") -> list[str]:
    """Column suffixes of the bins [0, e₁), [e₁, e₂), …, [eₙ, ∞): `0-0.01ml`, …, `1ml+`."""
    bounds = [0.0, *edges]
    names = [f"{_edge_name(lo)}-{_edge_name(hi)}{unit}" for lo, hi in zip(bounds[:-1], bounds[1:])]
    return names + [f"{_edge_name(bounds[-1])}{unit}+"]


def check_parameters(min_voxels: int, min_overlap: float, edges: Sequence[float], matching: str = "isbi2015") -> None:
    """ValueError saying what is allowed for any bad lesion-wise parameter (`config.eval_options`' rules;
    `edges` in mL or in voxels, the same rule)."""
    eval_options(lesion_min_voxels=min_voxels, lesion_min_overlap=min_overlap, size_bins_ml=list(edges),
                 lesion_matching=matching)


def label_lesions(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """`(labels, n)`: the lesions of a mask, its 26-connected components (in 3D; every neighbour in any
    dimension), numbered 1..n by `scipy.ndimage.label`. The one definition of a lesion in lesionseg."""
    return ndimage.label(mask, structure=np.ones((3,) * mask.ndim, dtype=bool))


def _label_fast(mask: np.ndarray, faces_only: bool) -> tuple[np.ndarray, int]:
    """`scipy.ndimage.label`'s labels and count (26- or 6-connected, the same numbering), from cc3d: about 5×
    faster on a 1 mm volume, for the many labellings of a FROC curve (2D and 3D masks only)."""
    connectivity = (6 if faces_only else 26) if mask.ndim == 3 else (4 if faces_only else 8)
    labels, n = cc3d.connected_components(np.ascontiguousarray(mask), connectivity=connectivity, return_N=True)
    return labels, int(n)


def components(mask: np.ndarray, min_voxels: int, faces_only: bool = False, fast: bool = False
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(labels, sizes, kept mask): labels 1..n of 26-connected (`faces_only`: 6-connected) components of at
    least `min_voxels`; `fast`: labelled by cc3d instead of SciPy (the same labels)."""
    if fast:
        labels, n = _label_fast(mask, faces_only)
    else:
        labels, n = (ndimage.label(mask) if faces_only else label_lesions(mask))
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    if min_voxels > 1 and n:
        relabel = kept_numbers(sizes, min_voxels).astype(labels.dtype)
        labels = relabel[labels]
        sizes = np.concatenate([[0], sizes[relabel > 0]])
    return labels, sizes, labels > 0


def kept_numbers(sizes: np.ndarray, min_voxels: int) -> np.ndarray:
    """New numbers (int64; 0: dropped) of components 0..n of `sizes` voxels: those of at least `min_voxels`
    renumbered 1..m in their order, the background and smaller ones 0."""
    keep = sizes >= min_voxels
    keep[0] = False
    relabel = np.zeros(sizes.size, dtype=np.int64)
    relabel[keep] = np.arange(1, int(keep.sum()) + 1)
    return relabel


def min_component_voxels(min_ml: float, voxel_ml: float) -> int:
    """The fewest voxels a component of voxels of `voxel_ml` mL needs to reach `min_ml` mL (1 for 0)."""
    if min_ml <= 0:
        return 1
    return max(1, math.ceil(round(min_ml / voxel_ml, 9)))  # round: 0.03 / 0.001 is 29.999999999999996


def component_sizes(mask: torch.Tensor) -> torch.Tensor:
    """Each voxel's 26-connected component size in voxels (0 outside `mask`), int64 on `mask`'s device;
    `component_sizes(mask) >= n` is `remove_small_components(mask, n)` for every n, from one labelling."""
    labels, sizes, _ = components(mask.cpu().numpy(), 1)
    sizes[0] = 0
    return torch.from_numpy(sizes[labels]).to(mask.device)


def remove_small_components(mask: torch.Tensor, min_voxels: int) -> torch.Tensor:
    """Post-processing of a predicted mask: its 26-connected components of fewer than `min_voxels`
    voxels set to False (labelled on CPU; the result is on `mask`'s device)."""
    if min_voxels <= 1:
        return mask
    kept = components(mask.cpu().numpy(), min_voxels)[2]
    return torch.from_numpy(kept).to(mask.device)


def scored_prediction(prob: torch.Tensor, ref: torch.Tensor, threshold: float, min_voxels: int | Sequence[int] = 1,
                      mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor] | list:
    """What every evaluation scores — validation during training, the validation cases of size tuning, the
    test cases: the predicted mask `prob >= threshold` (inside `mask`, when given), without its predicted
    lesions (26-connected components) of fewer than `min_voxels` voxels, and its confusion counts
    `[tp, fp, fn, tn]` against `ref` (inside `mask`). Returns `(prediction, counts)`; for a sequence of
    sizes, one such pair per size, the components labelled once."""
    pred = prob >= threshold
    pred = pred if mask is None else pred & mask
    sizes = [min_voxels] if isinstance(min_voxels, int) else list(min_voxels)
    if all(n <= 1 for n in sizes):
        kept = [pred] * len(sizes)
    elif len(sizes) == 1:
        kept = [remove_small_components(pred, sizes[0])]
    else:
        voxels = component_sizes(pred)
        kept = [voxels >= n for n in sizes]
    scored = [(p, confusion_counts(p, ref) if mask is None else confusion_counts(p[mask], ref[mask])) for p in kept]
    return scored[0] if isinstance(min_voxels, int) else scored


def lesion_rule(matching: str, min_voxels: int, voxel_ml: float) -> tuple[int, bool]:
    """`(fewest voxels of a lesion, 6-connected?)` under a definition: ISBI 2015 26-connected components of
    `min_voxels`, msseg 6-connected ones of more than 3 mm³, panoptica 26-connected ones of any size."""
    if matching == "msseg":
        return matching_rules.msseg_min_voxels(voxel_ml * 1000), True
    return (min_voxels if matching == "isbi2015" else 1), False


def match_lesions(ref_lesions: tuple, pred_lesions: tuple, matching: str, min_overlap: float) -> tuple[np.ndarray,
                                                                                                      np.ndarray]:
    """(detected per reference lesion, true per predicted lesion) of two masks' lesions, each `(labels,
    sizes, kept mask)` as `components` gives them under `lesion_rule`, by the rule of `matching`."""
    (ref_labels, ref_sizes, _), (pred_labels, pred_sizes, _) = ref_lesions, pred_lesions
    table = matching_rules.overlap_table(ref_labels, ref_sizes.size - 1, pred_labels, pred_sizes.size - 1)
    return match_table(table, matching, min_overlap)


def match_table(table: np.ndarray, matching: str, min_overlap: float) -> tuple[np.ndarray, np.ndarray]:
    """(detected per reference lesion, true per predicted lesion) from an overlap table (`matching.overlap_table`:
    row and column 0 background) by the rule of `matching`; ISBI 2015: a lesion covered by the other mask's
    lesions on at least max(1, `min_overlap` × its size) voxels."""
    if matching != "isbi2015":
        return getattr(matching_rules, matching)(table)
    ref_sizes, pred_sizes = table.sum(axis=1)[1:], table.sum(axis=0)[1:]
    return (table[1:, 1:].sum(axis=1) >= np.maximum(1.0, min_overlap * ref_sizes),
            table[1:, 1:].sum(axis=0) >= np.maximum(1.0, min_overlap * pred_sizes))


def lesion_counts(
    pred: torch.Tensor,
    ref: torch.Tensor,
    voxel_ml: float,
    min_voxels: int = EVAL_DEFAULTS.lesion_min_voxels,
    min_overlap: float = EVAL_DEFAULTS.lesion_min_overlap,
    size_bins: Sequence[float] = DEFAULT_SIZE_BINS_ML,
    bins_in_voxels: bool = False,
    matching: str = EVAL_DEFAULTS.lesion_matching,
) -> dict[str, int]:
    """Lesion counts of one case: bool masks `pred`, `ref` (same shape, any device; labelled on CPU).

    `voxel_ml`: volume of one voxel in mL; `size_bins`: bin edges in mL (or voxels if `bins_in_voxels`);
    `matching`: the definition (`isbi2015`, this module's; `msseg`, `panoptica`: `matching`), which for those
    two sets its own connectivity and minimum size (`min_voxels` and `min_overlap` are ISBI 2015's).
    Returns `n_ref_lesions`, `n_pred_lesions`, `n_detected` (reference lesions detected), `n_pred_tp`
    (predicted lesions that are true positives), and per bin `n_ref_<bin>`, `n_detected_<bin>`.
    """
    if pred.shape != ref.shape:
        raise ValueError(
            f"pred and ref must have the same shape, got {tuple(pred.shape)} and {tuple(ref.shape)}."
        )
    check_parameters(min_voxels, min_overlap, size_bins, matching)
    least, faces_only = lesion_rule(matching, min_voxels, voxel_ml)
    ref_lesions = components(ref.cpu().numpy(), least, faces_only)
    pred_lesions = components(pred.cpu().numpy(), least, faces_only)
    detected, pred_tp = match_lesions(ref_lesions, pred_lesions, matching, min_overlap)
    ref_sizes, pred_sizes = ref_lesions[1], pred_lesions[1]
    counts = {
        "n_ref_lesions": int(ref_sizes.size - 1),
        "n_pred_lesions": int(pred_sizes.size - 1),
        "n_detected": int(detected.sum()),
        "n_pred_tp": int(pred_tp.sum()),
    }
    size = ref_sizes[1:] if bins_in_voxels else ref_sizes[1:] * voxel_ml
    which = np.searchsorted(np.asarray(size_bins, dtype=np.float64), size, side="right")
    for i, name in enumerate(size_bin_names(size_bins, "vox" if bins_in_voxels else "ml")):
        counts[f"n_ref_{name}"] = int((which == i).sum())
        counts[f"n_detected_{name}"] = int(((which == i) & detected).sum())
    return counts


def lesion_metrics(counts: dict[str, int]) -> dict[str, float]:
    """`ltpr`, `lfdr`, `lesion_f1` and `ltpr_<bin>` from `lesion_counts` (or their sums over cases)."""
    n_ref, n_pred = counts["n_ref_lesions"], counts["n_pred_lesions"]
    ltpr = counts["n_detected"] / n_ref if n_ref else math.nan
    lfdr = (n_pred - counts["n_pred_tp"]) / n_pred if n_pred else math.nan
    if n_ref == 0 and n_pred == 0:
        f1 = 1.0
    elif n_ref == 0 or n_pred == 0 or ltpr + (1 - lfdr) == 0:
        f1 = 0.0
    else:
        f1 = 2 * ltpr * (1 - lfdr) / (ltpr + 1 - lfdr)
    out = {"ltpr": ltpr, "lfdr": lfdr, "lesion_f1": f1}
    for key, n in counts.items():
        if key.startswith("n_ref_") and key != "n_ref_lesions":
            name = key[len("n_ref_"):]
            out[f"ltpr_{name}"] = counts[f"n_detected_{name}"] / n if n else math.nan
    return out
