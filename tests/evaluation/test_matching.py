"""Lesion matching under `msseg` (Anima's rules, hand-made cases worked out from its source) and `panoptica`
(panoptica itself as the oracle, on random and on the open MS labels)."""

from __future__ import annotations

import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from scipy import ndimage

from lesionseg.config import eval_options
from lesionseg.evaluation.lesionwise import lesion_counts, lesion_metrics

OPEN_MS = Path(__file__).resolve().parents[3] / "shared" / "data" / "open_ms_data"


def counts(ref: np.ndarray, pred: np.ndarray, matching: str, voxel_ml: float = 0.001) -> dict:
    return lesion_counts(torch.from_numpy(pred.astype(bool)), torch.from_numpy(ref.astype(bool)), voxel_ml,
                         matching=matching)


def grid() -> np.ndarray:
    return np.zeros((24, 24, 24), dtype=bool)


# ---- msseg: every rule of animaSegPerfCAnalyzer.cxx, at its defaults (3 mm³, alpha 0.10, beta 0.70, gamma 0.65)

def test_msseg_ignores_lesions_of_3_mm3_or_less():
    """1 mm voxels: a lesion needs floor(3 / 1) + 1 = 4 voxels (strictly more than 3 mm³); at 0.5 × 0.5 × 3 mm
    (0.75 mm³) floor(4) + 1 = 5."""
    ref, pred = grid(), grid()
    ref[2, 2, 2:5] = True  # 3 voxels = 3 mm³: not a lesion
    ref[10, 10, 2:6] = True  # 4 voxels: a lesion
    pred[10, 10, 2:6] = True
    result = counts(ref, pred, "msseg")
    assert [result[k] for k in ("n_ref_lesions", "n_pred_lesions", "n_detected", "n_pred_tp")] == [1, 1, 1, 1]
    assert counts(ref, pred, "msseg", voxel_ml=0.00075)["n_ref_lesions"] == 0  # 4 × 0.75 = 3 mm³
    assert counts(ref, pred, "isbi2015")["n_ref_lesions"] == 2


def test_msseg_lesions_are_6_connected():
    """Two 2 × 2 × 1 squares touching at a corner only: two lesions for Anima, one under 26-connectivity."""
    ref = grid()
    ref[4:6, 4:6, 4] = True
    ref[6:8, 6:8, 5] = True  # (5, 5, 4) and (6, 6, 5) share a corner
    assert counts(ref, ref, "msseg")["n_ref_lesions"] == 2
    assert counts(ref, ref, "isbi2015")["n_ref_lesions"] == 1


@pytest.mark.parametrize("covered,detected", [(10, 0), (11, 1)])
def test_msseg_detects_a_lesion_covered_by_more_than_10_percent(covered, detected):
    """A 10 × 10 × 1 reference lesion (100 voxels); the prediction, a row inside it, covers 10 voxels (10 %:
    not > alpha) or 11 (a 10-voxel row and one voxel of the next; 11 %). Nothing of it lies outside."""
    ref, pred = grid(), grid()
    ref[2:12, 2:12, 5] = True
    pred[2:12, 2, 5] = True
    pred[2:2 + covered - 10, 3, 5] = True
    result = counts(ref, pred, "msseg")
    assert result["n_detected"] == detected
    # the predicted row is 0 % outside, but the reference lesion lies 89-90 % outside the prediction (> beta)
    assert result["n_pred_tp"] == 0


@pytest.mark.parametrize("depth,detected", [(4, 0), (3, 1)])
def test_msseg_rejects_a_prediction_spilling_out_of_the_lesion(depth, detected):
    """A 4 × 4 × 4 reference cube (64 voxels); the prediction, 4 × 4 × depth, overlaps one 4 × 4 slab of it (16
    voxels, 25 % covered > alpha). depth 4: 48 of its 64 voxels outside (75 % > beta): not detected; depth 3: 32
    of 48 (66.7 % ≤ 70 %): detected."""
    ref, pred = grid(), grid()
    ref[4:8, 4:8, 4:8] = True
    pred[4:8, 4:8, 7:7 + depth] = True
    assert counts(ref, pred, "msseg")["n_detected"] == detected


@pytest.mark.parametrize("clean_first,detected", [(True, 1), (False, 0)])
def test_msseg_weighs_overlapping_predictions_up_to_65_percent(clean_first, detected):
    """A 10 × 10 × 2 reference slab (200 voxels) overlapped by a clean prediction and by one spilling out (a
    block running far outside). Sorted by overlap, the components examined until 65 % of the covered voxels
    are reached must each be ≤ 70 % outside: when the clean one overlaps 30 voxels of the 40 covered (75 %)
    it alone reaches 65 %, and the spilling one is never examined; when the spilling one has the larger
    overlap it is examined first, and fails."""
    ref, pred = grid(), grid()
    ref[2:12, 2:12, 10:12] = True
    clean, spill = (slice(2, 5), slice(11, 12)) if clean_first else (slice(2, 3), slice(9, 12))
    pred[2:7, clean, 10:12] = True  # 30 (or 10) voxels, all inside the lesion
    pred[2:7, spill, 10:12] = True  # 10 (or 30) voxels inside …
    pred[2:7, spill, 12:24] = True  # … and 6 × as many outside: 86 % of the component
    result = counts(ref, pred, "msseg")
    assert result["n_ref_lesions"] == 1 and result["n_pred_lesions"] == 2
    assert result["n_detected"] == detected


def test_msseg_a_thin_slab_inside_a_lesion_detects_it_and_is_not_true_itself():
    """6 × 6 × 6 reference cube, a 6 × 6 × 1 predicted slab inside it: the lesion is 1/6 covered (> 10 %) by a
    prediction 0 % outside: detected. The roles swapped, the slab lies wholly on the lesion, but the lesion is
    5/6 = 83 % outside the prediction (> 70 %): the slab is not a true positive (no one-to-one pairing)."""
    ref, pred = grid(), grid()
    ref[5:11, 5:11, 5:11] = True
    pred[5:11, 5:11, 7] = True
    result = counts(ref, pred, "msseg")
    assert (result["n_detected"], result["n_pred_tp"]) == (1, 0)
    metrics = lesion_metrics(result)
    assert (metrics["ltpr"], metrics["lfdr"], metrics["lesion_f1"]) == (1.0, 1.0, 0.0)


def test_msseg_and_panoptica_leave_the_isbi_parameters_alone():
    with pytest.raises(ValueError, match="lesion_min_voxels and lesion_min_overlap are isbi2015 matching's"):
        eval_options(lesion_matching="msseg", lesion_min_overlap=0.1)


# ---- panoptica: the library is the oracle

def panoptica_counts(ref: np.ndarray, pred: np.ndarray) -> tuple[int, int, int, float]:
    from panoptica import (CCABackend, ConnectedComponentsInstanceApproximator, InputType, NaiveThresholdMatching,
                           Panoptica_Evaluator)
    from panoptica.metrics import Metric

    evaluator = Panoptica_Evaluator(
        expected_input=InputType.SEMANTIC,
        instance_approximator=ConnectedComponentsInstanceApproximator(cca_backend=CCABackend.cc3d),
        instance_matcher=NaiveThresholdMatching(matching_metric=Metric.IOU, matching_threshold=0.5,
                                                allow_many_to_one=False),
        instance_metrics=[Metric.IOU], global_metrics=[Metric.DSC], log_times=False, verbose=False)
    result = evaluator.evaluate(pred.astype(np.uint8), ref.astype(np.uint8), verbose=False)["ungrouped"]
    return int(result.tp), int(result.fp), int(result.fn), float(result.rq)


def agree_with_panoptica(ref: np.ndarray, pred: np.ndarray) -> None:
    tp, fp, fn, rq = panoptica_counts(ref, pred)
    ours = counts(ref, pred, "panoptica")
    assert (ours["n_detected"], ours["n_pred_tp"]) == (tp, tp)
    assert (ours["n_pred_lesions"] - tp, ours["n_ref_lesions"] - tp) == (fp, fn)
    f1 = lesion_metrics(ours)["lesion_f1"]
    assert f1 == pytest.approx(rq) or (math.isnan(rq) and f1 == 1.0)  # both empty: panoptica NaN, lesionseg 1


def blobs(rng: np.random.Generator, shape=(32, 32, 32), n=12) -> np.ndarray:
    out = np.zeros(shape, dtype=bool)
    for _ in range(n):
        centre = rng.integers(2, np.array(shape) - 2)
        radius = rng.integers(1, 4, size=3)
        lo, hi = np.maximum(centre - radius, 0), centre + radius + 1
        out[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] = True
    return out


@pytest.mark.parametrize("seed", range(6))
def test_panoptica_matching_agrees_with_panoptica_on_random_lesions(seed):
    rng = np.random.default_rng(seed)
    ref = blobs(rng)
    pred = ndimage.shift(ref.astype(float), rng.integers(-2, 3, size=3), order=0) > 0.5
    pred |= blobs(rng, n=4)
    pred &= rng.random(pred.shape) > 0.05
    agree_with_panoptica(ref, pred)


def test_panoptica_matching_agrees_at_the_iou_threshold_and_when_empty():
    ref, pred = grid(), grid()
    ref[2:6, 2:6, 2:6] = True  # 64 voxels; a prediction of 32 inside it: IoU 0.5, matched
    pred[2:6, 2:6, 2:4] = True
    ref[12:16, 12:16, 12:16] = True  # 64; 31 of them predicted: IoU 0.484, not matched
    pred[12:16, 12:16, 12:14] = True
    pred[15, 15, 13] = False
    agree_with_panoptica(ref, pred)
    assert counts(ref, pred, "panoptica")["n_detected"] == 1
    agree_with_panoptica(ref, grid())
    agree_with_panoptica(grid(), pred)


@pytest.mark.skipif(not OPEN_MS.is_dir(), reason=f"real data absent: {OPEN_MS} (the open MS data in ../shared)")
def test_panoptica_matching_agrees_with_panoptica_on_the_open_ms_labels():
    """Each patient's consensus label against a prediction made from it: eroded, its smallest lesions dropped,
    shifted by a voxel, with the other patient's lesions added as false positives."""
    labels = [np.asarray(nib.load(OPEN_MS / p / "label.nii.gz").dataobj) > 0 for p in ("patient07", "patient19")]
    for ref, other in (labels, labels[::-1]):
        pred = np.roll(ndimage.binary_erosion(ref, iterations=1) | (ref & ~ndimage.binary_opening(ref)), 1, axis=0)
        pred |= other & ~ndimage.binary_dilation(ref, iterations=3)
        agree_with_panoptica(ref, pred)
