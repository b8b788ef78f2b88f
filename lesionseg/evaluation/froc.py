"""FROC: lesion sensitivity against false-positive lesions per scan, at the curves' thresholds.

Detection is a count, and its operating curve is FROC (free-response ROC; LUNA16, PI-CAI, nnDetection): at
each threshold t of `THRESHOLDS` — the curves' 0.01 … 0.99 and, above them, 0.995, 0.999, 0.9999 and 1 (a
confident network puts its lesions at p > 0.99, so without these a curve could never reach a few false
positives per scan, and the CPM would count a false 0 there) — the prediction `prob >= t` (inside the
case's mask, its predicted lesions under `eval.min_component_ml` removed, as at the evaluation threshold) is
matched with the reference by the evaluation's lesion definition (`eval.lesion_matching`: `lesionwise`,
`matching`), and per case we count the detected reference lesions, the reference lesions and the predicted
lesions that are not true positives (the false-positive lesions). Over the cases:

- **sensitivity** — the mean over cases with a reference lesion of the case's lesion sensitivity (each patient
  counts once, as every per-case figure of the evaluator); `sensitivity_pooled` — all lesions as one set
  (detected / reference lesions summed over cases: LUNA16's and MONAI's `compute_froc_curve_data`);
- **fp_per_scan** — the mean number of false-positive lesions per case.

**Operating points at a number of false positives per scan** x: the curve threshold with the highest
sensitivity among those with at most x false-positive lesions per scan (the fewest false positives, then the
highest threshold, among ties), read off the curve of the mean (or, for the pooled figures, the pooled one);
where no threshold has so few false positives, sensitivity 0 (predict nothing). A point of the curve, not an
interpolation: a threshold a researcher can use, and a per-case value at it (the case's sensitivity at that
threshold) for the paired statistics. (FP per scan need not fall as t rises: a lesion can split in two.)

- **CPM** (`cpm`) — the mean sensitivity at 1/8, 1/4, 1/2, 1, 2, 4 and 8 false positives per scan, LUNA16's
  competition performance metric (Setio et al. 2017), read at those operating points instead of interpolated
  between thresholds as LUNA16 does; per case, the mean of the case's sensitivity at the seven thresholds (so
  the mean over cases is the CPM of the mean curve).
- **LTPR at 1 FP/scan** (`ltpr_1fp`) — the case's lesion sensitivity at the operating point of one
  false-positive lesion per scan: does a configuration find more lesions at the same cost in false ones?

Labelling at 103 thresholds is what costs: the volume is cropped to the box of `prob >= 0.01` and the reference,
a threshold that changes no voxel reuses the counts of the one before, and the components are labelled by cc3d
(the same components and numbering as SciPy, which `lesionwise.lesion_counts` uses and the tests compare with).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from lesionseg.config import EvalConfig
from lesionseg.errors import LesionsegError
from lesionseg.evaluation import lesionwise
from lesionseg.evaluation import matching as matching_rules
from lesionseg.evaluation.nanstats import mean_over_cases
from lesionseg.evaluation.operating_points import CURVE_THRESHOLDS

THRESHOLDS = np.concatenate([CURVE_THRESHOLDS, [0.995, 0.999, 0.9999, 1.0]])

FP_RATES = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)  # LUNA16's CPM
VERDICT_FP_RATE = 1.0  # the operating point of `ltpr_1fp`
COLUMNS = ["threshold", "sensitivity", "fp_per_scan", "sensitivity_pooled", "n_detected", "n_ref_lesions",
           "n_false_lesions"]


def case_counts(prob: torch.Tensor, ref: torch.Tensor, voxel_ml: float, options: EvalConfig,
                mask: torch.Tensor | None = None, thresholds: Sequence[float] = THRESHOLDS) -> np.ndarray:
    """`(len(thresholds), 3)` int64 `[detected, reference lesions, false-positive lesions]` of one case at each
    threshold (ascending), under `options`' lesion definition and post-processing: at every t the counts of
    `lesionwise.lesion_counts` on `scored_prediction(prob, ref, t, min_component, mask)`."""
    prob, ref = prob.detach().cpu().numpy(), ref.cpu().numpy().astype(bool)
    if mask is not None:
        mask = mask.cpu().numpy()
        prob, ref = np.where(mask, prob, 0), ref & mask
    levels = np.asarray(thresholds, dtype=np.float64).astype(prob.dtype)  # compared in the probabilities' precision
    if levels.size == 0 or np.any(np.diff(levels) <= 0):
        raise ValueError("thresholds must be given, increasing.")
    out = np.zeros((levels.size, 3), dtype=np.int64)
    box = _box(np.argwhere((prob >= levels[0]) | ref))
    if box is None:  # nothing predicted at any threshold, no reference lesion
        return out
    prob, ref = prob[box], ref[box]
    least, faces_only = lesionwise.lesion_rule(options.lesion_matching, options.lesion_min_voxels, voxel_ml)
    post = lesionwise.min_component_voxels(options.min_component_ml, voxel_ml)
    ref_labels, ref_sizes, _ = lesionwise.components(ref, least, faces_only, fast=True)
    out[:, 1] = ref_sizes.size - 1
    level = np.searchsorted(levels, prob, side="right")  # a voxel is in `prob >= levels[k]` when level > k
    coords = np.argwhere(level > 0)  # the voxels ever predicted, in raster order
    voxel_level, ref_at = level[tuple(coords.T)], ref_labels[tuple(coords.T)].astype(np.int64)
    changes = np.bincount(voxel_level, minlength=levels.size + 1)
    for k in range(levels.size):
        if k > 0 and changes[k] == 0:  # no voxel between levels[k-1] and levels[k]: the same prediction
            out[k] = out[k - 1]
            continue
        alive = voxel_level > k
        pred = _lesions(level, coords[alive], k, post, least, faces_only)
        table = _overlaps(ref_at[alive], ref_sizes, pred)
        detected, true = lesionwise.match_table(table, options.lesion_matching, options.lesion_min_overlap)
        out[k, 0], out[k, 2] = detected.sum(), true.size - true.sum()
    return out


def _box(points: np.ndarray) -> tuple[slice, ...] | None:
    """The smallest box holding every point (`np.argwhere` rows); None without points."""
    if points.size == 0:
        return None
    return tuple(slice(int(lo), int(hi) + 1) for lo, hi in zip(points.min(axis=0), points.max(axis=0)))


def _lesions(level: np.ndarray, points: np.ndarray, k: int, post: int, least: int, faces_only: bool) -> np.ndarray:
    """The lesion number (1..n, SciPy's raster order; 0: removed) of each of `points`, the voxels of
    `level > k`: its predicted lesions under the post-processing (26-connected components of at least `post`
    voxels kept) and the definition (`least`, `faces_only`), labelled in the points' box only."""
    if points.size == 0:
        return np.zeros(0, dtype=np.int64)
    box = _box(points)
    local = tuple((points - [b.start for b in box]).T)
    pred = level[box] > k
    if post > 1:
        labels, n = lesionwise._label_fast(pred, False)
        small = np.bincount(labels[local], minlength=n + 1)[labels[local]] < post
        pred[tuple(c[small] for c in local)] = False
    labels, n = lesionwise._label_fast(pred, faces_only)
    at = labels[local].astype(np.int64)
    return lesionwise.kept_numbers(np.bincount(at, minlength=n + 1), least)[at]


def _overlaps(ref_at: np.ndarray, ref_sizes: np.ndarray, pred_at: np.ndarray) -> np.ndarray:
    """`matching.overlap_table` from the voxels of the prediction alone: `O[i, j]` voxels of reference lesion
    i in predicted lesion j; column 0 (reference voxels predicted by no lesion) from the reference sizes."""
    n_ref, n_pred = ref_sizes.size - 1, int(pred_at.max(initial=0))
    table = np.bincount(ref_at * (n_pred + 1) + pred_at, minlength=(n_ref + 1) * (n_pred + 1))
    table = table.reshape(n_ref + 1, n_pred + 1)
    table[1:, 0] = ref_sizes[1:] - table[1:, 1:].sum(axis=1)
    return table


def curve(case_counts_list: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
    """The FROC curve of the cases: per threshold `sensitivity` (mean over cases with a reference lesion),
    `fp_per_scan`, `sensitivity_pooled` and the summed counts; the per-case sensitivities under `per_case`
    (cases × thresholds, NaN for a case without reference lesions) and the counts under `counts`."""
    if not case_counts_list:
        raise ValueError("a FROC curve needs at least one case.")
    counts = np.stack(case_counts_list).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        per_case = np.where(counts[..., 1] > 0, counts[..., 0] / counts[..., 1], math.nan)
        total = counts.sum(axis=0)
        pooled = np.where(total[:, 1] > 0, total[:, 0] / total[:, 1], math.nan)
    return {"per_case": per_case, "counts": counts, "sensitivity": mean_over_cases(list(per_case)), "fp_per_scan":
            counts[..., 2].mean(axis=0), "sensitivity_pooled": pooled,
            "n_detected": total[:, 0], "n_ref_lesions": total[:, 1], "n_false_lesions": total[:, 2]}


def operating_point(sensitivity: np.ndarray, fp_per_scan: np.ndarray, rate: float) -> int | None:
    """Index of the threshold with the highest `sensitivity` among those with `fp_per_scan <= rate` (fewest
    false positives, then the highest threshold, among ties); None when there is none (or sensitivity is
    undefined everywhere)."""
    allowed = np.flatnonzero((fp_per_scan <= rate) & ~np.isnan(sensitivity))
    if allowed.size == 0:
        return None
    order = np.lexsort((-allowed, fp_per_scan[allowed], -sensitivity[allowed]))
    return int(allowed[order[0]])


def _at(values: np.ndarray, index: int | None, defined: np.ndarray | bool) -> np.ndarray | float:
    """`values[..., index]`, or 0 where nothing is predicted (no operating point) and the value is defined."""
    if index is None:
        return np.where(defined, 0.0, math.nan)
    return values[..., index]


def summary(froc: dict[str, np.ndarray], rates: Sequence[float] = FP_RATES,
            verdict_thresholds: Sequence[float | None] | None = None) -> tuple[dict, dict[str, np.ndarray]]:
    """(`summary.json`'s `froc` block, per-case `{"cpm", "ltpr_1fp"}` arrays) of a `curve`: the operating
    point at each rate of `rates` on the mean and on the pooled curve, the CPM of both, each case's values at
    the mean curve's operating points, and `ltpr_1fp` at `verdict_thresholds` — per case, the threshold chosen
    on validation (`validation_point`; a fold's, in a cross-validated merge) — or, where that is None, at the
    operating point of these cases' own curve."""
    thresholds = np.asarray(THRESHOLDS)
    defined = ~np.isnan(froc["per_case"]).all(axis=1)  # cases with a reference lesion
    points, per_rate = [], []
    for rate in rates:
        i = operating_point(froc["sensitivity"], froc["fp_per_scan"], rate)
        j = operating_point(froc["sensitivity_pooled"], froc["fp_per_scan"], rate)
        per_rate.append(_at(froc["per_case"], i, defined))
        points.append({"fp_per_scan": rate,
                       "threshold": None if i is None else float(thresholds[i]),
                       "sensitivity": float(_at(froc["sensitivity"], i, bool(defined.any()))),
                       "threshold_pooled": None if j is None else float(thresholds[j]),
                       "sensitivity_pooled": float(_at(froc["sensitivity_pooled"], j, bool(defined.any())))})
    own = operating_point(froc["sensitivity"], froc["fp_per_scan"], VERDICT_FP_RATE)
    given = list(verdict_thresholds) if verdict_thresholds is not None else [None] * len(defined)
    index = [own if t is None else int(np.argmin(np.abs(thresholds - t))) for t in given]
    ltpr = np.array([math.nan if not d else 0.0 if k is None else froc["per_case"][c, k]
                     for c, (d, k) in enumerate(zip(defined, index))])
    counts = [froc["counts"][c, k, :2] if k is not None else [0, froc["counts"][c, 0, 1]]
              for c, k in enumerate(index)]
    detected, lesions = np.sum(counts, axis=0) if counts else (0, 0)
    block = {"operating_points": points,
             "cpm": float(np.mean([p["sensitivity"] for p in points])),
             "cpm_pooled": float(np.mean([p["sensitivity_pooled"] for p in points])),
             "verdict": {"fp_per_scan": VERDICT_FP_RATE,
                         "chosen_on": ("validation" if all(t is not None for t in given) else
                                       "these cases' curve" if all(t is None for t in given) else
                                       "validation where the run had it, else these cases' curve"),
                         "thresholds": sorted({float(thresholds[k]) for k in index if k is not None}),
                         "sensitivity_pooled": float(detected / lesions) if lesions else math.nan}}
    return block, {"cpm": np.mean(per_rate, axis=0), "ltpr_1fp": ltpr}


def check_verdict_thresholds(values: Sequence[float | None] | None, n_cases: int) -> None:
    """LesionsegError unless `values` is None or has one entry per case, each None or one of `THRESHOLDS`."""
    if values is None:
        return
    if len(values) != n_cases:
        raise LesionsegError(f"froc_thresholds: one per case is needed, got {len(values)} for {n_cases} cases.")
    stray = sorted({v for v in values if v is not None and not np.isclose(THRESHOLDS, v).any()})
    if stray:
        raise LesionsegError(f"froc_thresholds: {stray} are not FROC thresholds (0.01 … 0.99, 0.995, 0.999, 0.9999, 1).")


def validation_point(case_counts_list: Sequence[np.ndarray], rate: float = VERDICT_FP_RATE) -> dict:
    """`thresholds.json`'s `froc`: the threshold of the validation cases' operating point at `rate` false
    positives per scan (`operating_point`; the highest threshold, 1, when none has so few), which the test
    cases' `ltpr_1fp` is read at; `threshold` None without validation cases with lesions."""
    out = {"fp_per_scan": rate, "method": "the validation cases' FROC operating point at this many false-positive "
           "lesions per scan (the most lesion sensitivity within it; the highest threshold when none has so few)"}
    if not case_counts_list:
        return {**out, "threshold": None}
    validation = curve(case_counts_list)
    i = operating_point(validation["sensitivity"], validation["fp_per_scan"], rate)
    if np.isnan(validation["sensitivity"]).all():
        return {**out, "threshold": None}
    i = len(THRESHOLDS) - 1 if i is None else i
    return {**out, "threshold": float(THRESHOLDS[i]), "validation_sensitivity": float(validation["sensitivity"][i]),
            "validation_fp_per_scan": float(validation["fp_per_scan"][i])}


def add_to_rows(case_counts_list: Sequence[np.ndarray], rows_per_folder, verdict_thresholds=None
                ) -> tuple[list[dict], dict]:
    """The evaluator's FROC: each case's `cpm` and `ltpr_1fp` added to its row in every output folder (they need
    every case, so they come once all are scored), and (`froc.csv`'s rows, `summary.json`'s `froc` block)."""
    froc = curve(case_counts_list)
    block, per_case = summary(froc, verdict_thresholds=verdict_thresholds)
    for rows in rows_per_folder:
        for i, row in enumerate(rows):
            row.update({name: float(values[i]) for name, values in per_case.items()})
    return froc_csv_rows(froc), block


def pooled(block: dict) -> dict[str, float]:
    """The pooled `cpm` and `ltpr_1fp` (all lesions as one set) from `summary`'s block."""
    return {"cpm": block["cpm_pooled"], "ltpr_1fp": block["verdict"]["sensitivity_pooled"]}


def froc_csv_rows(froc: dict[str, np.ndarray]) -> list[dict]:
    """`froc.csv`'s rows: one per curve threshold, the columns of `COLUMNS`."""
    return [{"threshold": float(t), **{c: float(froc[c][k]) if c in ("sensitivity", "fp_per_scan",
                                                                      "sensitivity_pooled") else int(froc[c][k])
                                        for c in COLUMNS[1:]}}
            for k, t in enumerate(THRESHOLDS)]
