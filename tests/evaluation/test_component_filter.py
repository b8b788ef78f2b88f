"""The size filter of predicted lesions (`eval.min_component_ml`, `lesionwise.remove_small_components`).

References: SciPy's 26-connected labelling (`ndimage.label` with a 3×3×3 structure, sizes by bincount)
and hand-built masks whose components and sizes are known; evaluation with the filter equals evaluation
of a prediction filtered by hand.
"""

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from helpers import REPO
from scipy import ndimage

from lesionseg.config import EVAL_DEFAULTS, eval_options, load_config
from lesionseg.errors import LesionsegError
from lesionseg.evaluation.evaluate import evaluate_cases
from lesionseg.evaluation.lesionwise import (
    component_sizes,
    min_component_voxels,
    remove_small_components,
    scored_prediction,
)


def save(path: Path, data: np.ndarray, affine: np.ndarray) -> Path:
    nib.save(nib.Nifti1Image(data, affine), str(path))
    return path


def _hand_mask() -> np.ndarray:
    """Components of 1, 2 (diagonal: 26-connected only), 4 and 8 voxels."""
    m = np.zeros((10, 10, 10), bool)
    m[0, 0, 0] = True                      # 1 voxel
    m[3, 3, 3] = m[4, 4, 4] = True         # 2 voxels, touching by a corner
    m[0, 6:8, 6:8] = True                  # 4 voxels
    m[7:9, 7:9, 0:2] = True                # 8 voxels
    return m


@pytest.mark.parametrize("min_voxels, kept_sizes", [(1, [1, 2, 4, 8]), (2, [2, 4, 8]), (3, [4, 8]), (5, [8]), (9, [])])
def test_hand_built_components(min_voxels, kept_sizes):
    out = remove_small_components(torch.from_numpy(_hand_mask()), min_voxels).numpy()
    labels, n = ndimage.label(out, structure=np.ones((3, 3, 3)))
    assert sorted(np.bincount(labels.ravel())[1:].tolist()) == kept_sizes
    assert not (out & ~_hand_mask()).any()  # only removes


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("min_voxels", [2, 4, 7])
def test_matches_scipy_labelling(seed, min_voxels):
    mask = np.random.default_rng(seed).random((12, 11, 10)) < 0.08
    labels, _ = ndimage.label(mask, structure=np.ones((3, 3, 3)))
    sizes = np.bincount(labels.ravel())
    expected = mask & (sizes[labels] >= min_voxels)
    out = remove_small_components(torch.from_numpy(mask), min_voxels)
    assert out.dtype == torch.bool and np.array_equal(out.numpy(), expected)
    assert np.array_equal((component_sizes(torch.from_numpy(mask)) >= min_voxels).numpy(), expected)
    assert np.array_equal(component_sizes(torch.from_numpy(mask)).numpy(), np.where(mask, sizes[labels], 0))


@pytest.mark.parametrize("seed", [0, 1])
def test_the_scored_prediction_is_the_filtered_mask_and_its_counts_by_hand(seed):
    rng = np.random.default_rng(seed)
    prob, ref = rng.random((12, 11, 10)), rng.random((12, 11, 10)) < 0.1
    inside = np.zeros(prob.shape, bool)
    inside[1:10, 2:9, :] = True
    for mask in (None, inside):
        region = np.ones(prob.shape, bool) if mask is None else mask
        labels, _ = ndimage.label((prob >= 0.9) & region, structure=np.ones((3, 3, 3)))
        sizes = np.bincount(labels.ravel())
        singles = []
        for n in (1, 2, 3):
            pred = (prob >= 0.9) & region & (sizes[labels] >= n)
            tp, fp = int((pred & ref)[region].sum()), int((pred & ~ref)[region].sum())
            fn, tn = int((~pred & ref)[region].sum()), int((~pred & ~ref)[region].sum())
            got_pred, got_counts = scored_prediction(torch.from_numpy(prob), torch.from_numpy(ref), 0.9, n,
                                                     None if mask is None else torch.from_numpy(mask))
            assert np.array_equal(got_pred.numpy(), pred) and got_counts.tolist() == [tp, fp, fn, tn]
            singles.append(got_counts.tolist())
        # several sizes at once (one labelling): the same as one at a time
        several = scored_prediction(torch.from_numpy(prob), torch.from_numpy(ref), 0.9, [1, 2, 3],
                                    None if mask is None else torch.from_numpy(mask))
        assert [c.tolist() for _, c in several] == singles


def test_min_voxels_from_volume():
    assert min_component_voxels(0.0, 0.001) == 1
    assert min_component_voxels(0.03, 0.001) == 30  # 0.03 / 0.001 is 29.999999999999996 in floats
    assert min_component_voxels(0.0301, 0.001) == 31
    assert min_component_voxels(0.01, 0.008) == 2  # 2 mm voxels: one is 0.008 mL, too small for 0.01
    assert min_component_voxels(0.001, 0.008) == 1


def test_evaluation_with_the_filter_equals_evaluation_of_the_filtered_prediction(tmp_path):
    rng = np.random.default_rng(4)
    ref = np.zeros((10, 10, 10), np.uint8)
    ref[2:5, 2:5, 2:5] = 1
    prob = np.where(_hand_mask(), 0.9, 0.1 * rng.random((10, 10, 10))).astype(np.float32)
    prob[2:5, 2:5, 2:4] = 0.8
    spacing_ml = 2.0 ** 3 / 1000  # 2 mm voxels
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    r = save(tmp_path / "r.nii.gz", ref, affine)
    filtered = remove_small_components(torch.from_numpy(prob >= 0.5), 4).numpy()
    hand = save(tmp_path / "hand.nii.gz", np.where(filtered, prob, 0.0).astype(np.float32), affine)
    raw = save(tmp_path / "raw.nii.gz", prob, affine)
    with_filter = evaluate_cases([("a", raw, r)], tmp_path / "f", progress=False, surface=True,
                                 options=eval_options(min_component_ml=3.5 * spacing_ml))  # 1, 2 voxels go
    by_hand = evaluate_cases([("a", hand, r)], tmp_path / "h", progress=False, surface=True)
    for key in ("dsc", "f2", "sensitivity", "precision", "tp", "fp", "fn", "n_pred_lesions", "hd95_mm"):
        assert with_filter["pooled"].get(key) == by_hand["pooled"].get(key), key
    assert with_filter["pooled"]["n_pred_lesions"] == 3  # the 18-voxel lesion, the 4 and the 8
    assert with_filter["postprocessing"] == {"min_component_ml": pytest.approx(0.028)}
    assert "postprocessing" not in by_hand
    # the probabilities are untouched: APR is that of the raw map
    plain = evaluate_cases([("a", raw, r)], tmp_path / "p", progress=False)
    assert with_filter["pooled"]["apr"] == plain["pooled"]["apr"]


def test_bad_sizes_are_rejected(tmp_path):
    with pytest.raises(LesionsegError, match="min_component_ml"):
        evaluate_cases([("a", tmp_path / "x", tmp_path / "y")], tmp_path / "o",
                       options=EVAL_DEFAULTS.model_copy(update={"min_component_ml": -1.0}))
    repo = REPO
    assert load_config(repo / "configs" / "base.yaml", ["eval.min_component_ml=tune"]).eval.min_component_ml == "tune"
    assert load_config(repo / "configs" / "base.yaml", ["eval.min_component_ml=0.05"]).eval.min_component_ml == 0.05
    for bad in ("-0.1", "big"):
        with pytest.raises(LesionsegError, match="min_component_ml"):
            load_config(repo / "configs" / "base.yaml", [f"eval.min_component_ml={bad}"])


class Echo(torch.nn.Module):
    """Logits that follow FLAIR, so small bright specks and the lesions both cross the threshold."""

    def forward(self, x):
        return 4.0 * (x[:, :1] - 1.0)


def test_a_run_tunes_the_size_on_its_validation_cases_as_by_hand(tiny_config, tmp_path):
    from lesionseg.data.cache import volume_dataset
    from lesionseg.data.preprocessing import load_datalist, split_train_val
    from lesionseg.evaluation.operating_points import COMPONENT_SIZES_ML
    from lesionseg.experiment.run import tune_thresholds
    from lesionseg.inference import infer_volume

    cfg = tiny_config("data.val_cases=2", "eval.min_component_ml=tune")
    lists = load_datalist(cfg)
    result = tune_thresholds(Echo(), cfg, lists, tmp_path, torch.device("cpu"), progress=False)
    # by hand: SciPy's labelling of each validation case's prediction at eval.threshold, DSC by numpy
    _, val = split_train_val(lists["training"], cfg)
    means = []
    for size in COMPONENT_SIZES_ML:
        scores = []
        for item in volume_dataset(val, cfg, with_label=True):
            pred = infer_volume(Echo(), item["image"], cfg, torch.device("cpu"))[0].numpy() >= 0.5
            ref = item["label"][0].numpy() > 0.5
            labels, _ = ndimage.label(pred, structure=np.ones((3, 3, 3)))
            sizes = np.bincount(labels.ravel())
            voxel_ml = float(np.prod(item["image"].pixdim[:3].tolist())) / 1000
            kept = pred & (sizes[labels] * voxel_ml >= size - 1e-12) if size > 0 else pred
            scores.append(2 * (kept & ref).sum() / (kept.sum() + ref.sum()))
        means.append(np.mean(scores))
    best = COMPONENT_SIZES_ML[int(np.argmax(means))]
    chosen = result["component_filter"]
    assert chosen["min_component_ml"] == best
    assert [chosen["validation_dsc"][str(s)] for s in COMPONENT_SIZES_ML] == pytest.approx(means, abs=1e-6)
    assert len(set(np.round(means, 6))) > 1, "the test needs sizes that change the validation DSC"
    saved = __import__("json").loads((tmp_path / "thresholds.json").read_text())
    assert saved["component_filter"]["min_component_ml"] == best


def test_without_the_filter_thresholds_json_is_as_before(tiny_config, tmp_path):
    from lesionseg.data.preprocessing import load_datalist
    from lesionseg.experiment.run import tune_thresholds

    cfg = tiny_config()
    tune_thresholds(Echo(), cfg, load_datalist(cfg), tmp_path, torch.device("cpu"), progress=False)
    assert "component_filter" not in (tmp_path / "thresholds.json").read_text()
