"""Lesion matching rules beside ISBI 2015's (`eval.lesion_matching`): which reference lesions a prediction
detects and which predicted lesions are true, from the two masks' lesions already labelled
(`lesionwise.lesion_counts` labels them as each definition says). Lesion counts are only comparable under
the same definition, so every table of lesion figures names it.

- `msseg`: MSSEG-2016 and MSSEG-2, as Anima's `animaSegPerfAnalyzer -l` computes them
  (Inria-Empenn/Anima-Public, `Anima/segmentation/validation_tools/segmentation_performance_analyzer/`:
  `animaSegPerfApp.cxx` lines 55-58 and 112-127 for the defaults, `animaSegPerfCAnalyzer.cxx` 854-994 and
  1018-1058 for the rules; read at commit d9fb323). Lesions are 6-connected components (ITK's
  `ConnectedComponentImageFilter` without `FullyConnected`) of more than `MSSEG_MIN_MM3` (3 mm³, strictly)
  in both masks; smaller ones become background before matching. A reference lesion is detected when
  (α) the predicted lesions together cover more than `MSSEG_ALPHA` (10 %) of it, and (β, γ) the predicted
  lesions overlapping it, largest overlap first, up to and including the one that brings their share of the
  covered voxels to `MSSEG_GAMMA` (65 %), each lie at most `MSSEG_BETA` (70 %) outside the reference lesions.
  A predicted lesion is a true positive by the same rule with the masks' roles swapped. There is no
  one-to-one pairing: the two counts differ (a thin slab inside a large lesion detects it, and is not a true
  positive itself). Anima reports no lesion figure for an empty reference; lesionseg keeps its convention
  (`lesion_metrics`).
- `panoptica`: BrainLesion/panoptica's instance matching for binary masks (`ConnectedComponentsInstanceApproximator`
  with cc3d's 26-connectivity, `NaiveThresholdMatching(Metric.IOU, 0.5, allow_many_to_one=False)`:
  `panoptica/instance_matcher.py`, version 2.1.7): every lesion of any size, pairs taken greedily in
  decreasing IoU, one-to-one, accepted at IoU ≥ `PANOPTICA_IOU`; a matched pair is a detected reference
  lesion and a true predicted one, so lesion F1 is panoptica's recognition quality tp / (tp + ½fp + ½fn).
  Ties in IoU are taken by lesion numbers (panoptica's order is that of its sort, which the tests check
  against it).
"""

from __future__ import annotations

import math

import numpy as np

MATCHINGS = ("isbi2015", "msseg", "panoptica")
DESCRIPTIONS = {  # what the report's tables and captions say of the lesion figures
    "isbi2015": "lesions matched as in ISBI 2015 (26-connected; detected by overlapping voxels, "
                "eval.lesion_min_overlap)",
    "msseg": "lesions matched as in MSSEG (Anima's rules: 6-connected, over 3 mm³, detected when over 10 % is "
             "covered by predictions that do not spill out)",
    "panoptica": "lesions matched as panoptica does (26-connected, one-to-one at IoU ≥ 0.5)",
}
MSSEG_MIN_MM3, MSSEG_ALPHA, MSSEG_BETA, MSSEG_GAMMA = 3.0, 0.10, 0.70, 0.65
PANOPTICA_IOU = 0.5


def overlap_table(ref_labels: np.ndarray, n_ref: int, pred_labels: np.ndarray, n_pred: int) -> np.ndarray:
    """`O[i, j]`: voxels in reference lesion i and predicted lesion j; row and column 0 are background."""
    joint = ref_labels.astype(np.int64).ravel() * (n_pred + 1) + pred_labels.ravel()
    return np.bincount(joint, minlength=(n_ref + 1) * (n_pred + 1)).reshape(n_ref + 1, n_pred + 1)


def msseg_min_voxels(voxel_mm3: float) -> int:
    """The fewest voxels of a lesion of more than 3 mm³: floor(3 / voxel volume) + 1 (Anima's rule)."""
    return math.floor(MSSEG_MIN_MM3 / voxel_mm3) + 1


def _anima_true(table: np.ndarray) -> np.ndarray:
    """Bool per row lesion (1..n): true by Anima's rule, rows the side scored, columns the other
    (`getTruePositiveLesions` and `falsePositiveRatioTester`)."""
    sizes = table.sum(axis=0)
    covered = table[:, 1:].sum(axis=1)
    out = np.zeros(table.shape[0] - 1, dtype=bool)
    for i in range(1, table.shape[0]):
        total = covered[i] + table[i, 0]
        if total == 0 or not covered[i] / total > MSSEG_ALPHA:
            continue
        order = np.argsort(-table[i, 1:], kind="stable") + 1
        share, spills = 0.0, False
        for j in order:
            if share >= MSSEG_GAMMA:
                break
            spills = table[0, j] / sizes[j] > MSSEG_BETA
            if spills:
                break
            share += table[i, j] / covered[i]
        out[i - 1] = not spills
    return out


def msseg(table: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(detected per reference lesion, true per predicted lesion) of an overlap table of 6-connected lesions
    of more than 3 mm³."""
    if table.shape[0] == 1 or table.shape[1] == 1:
        return np.zeros(table.shape[0] - 1, dtype=bool), np.zeros(table.shape[1] - 1, dtype=bool)
    return _anima_true(table), _anima_true(np.ascontiguousarray(table.T))


def panoptica(table: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(detected per reference lesion, true per predicted lesion): pairs matched one-to-one, greedily in
    decreasing IoU, at IoU ≥ 0.5."""
    detected, true = np.zeros(table.shape[0] - 1, dtype=bool), np.zeros(table.shape[1] - 1, dtype=bool)
    ref_sizes, pred_sizes = table.sum(axis=1), table.sum(axis=0)
    rows, cols = np.nonzero(table[1:, 1:])
    rows, cols = rows + 1, cols + 1
    inter = table[rows, cols]
    iou = inter / (ref_sizes[rows] + pred_sizes[cols] - inter)
    for k in np.argsort(-iou, kind="stable"):
        if iou[k] < PANOPTICA_IOU:
            break
        i, j = rows[k] - 1, cols[k] - 1
        if not detected[i] and not true[j]:
            detected[i] = true[j] = True
    return detected, true
