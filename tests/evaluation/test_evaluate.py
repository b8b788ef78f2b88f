"""Tests for lesionseg.evaluation.evaluate on tiny seeded NIfTI files written to tmp_path (one case without lesions)."""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, f1_score, precision_recall_curve, precision_score

from lesionseg import LesionsegError
from lesionseg.config import EVAL_DEFAULTS, eval_options
from lesionseg.evaluation import metrics
from lesionseg.evaluation.evaluate import evaluate_cases, evaluate_cases_at, evaluate_dirs
from lesionseg.evaluation.outputs import FIRST_COLUMNS
from lesionseg.evaluation.volumes import load_case

SHAPE = (6, 5, 4)
SPACING = (1.0, 1.5, 2.0)
AFFINE = np.diag([*SPACING, 1.0])


def save(path, data, affine=AFFINE):
    path.parent.mkdir(parents=True, exist_ok=True)
    img = nib.Nifti1Image(np.asarray(data), affine)
    img.header.set_zooms(tuple(np.abs(np.diag(affine)[: np.asarray(data).ndim])))
    nib.save(img, str(path))
    return path


def make_case(rng, lesion_share):
    ref = rng.random(SHAPE) < lesion_share
    prob = np.clip(0.55 * ref + 0.6 * rng.random(SHAPE), 0, 1)
    return np.round(prob, 1).astype(np.float32), ref.astype(np.uint8)  # rounded: ties across cases


@pytest.fixture
def dataset(tmp_path):
    """Four cases: three with lesions, `c_empty` without; returns (pred_dir, ref_dir, {case: (prob, ref)})."""
    rng = np.random.default_rng(0)
    arrays = {f"c{i}": make_case(rng, share) for i, share in enumerate([0.1, 0.2, 0.05])}
    arrays["c_empty"] = make_case(rng, 0.0)
    for case, (prob, ref) in arrays.items():
        save(tmp_path / "pred" / f"{case}.nii.gz", prob)
        save(tmp_path / "ref" / f"{case}.nii.gz", ref)
    return tmp_path / "pred", tmp_path / "ref", arrays


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def assert_curve_is_sklearns(path, y, p):
    """The written pr_curve.csv equals scikit-learn's precision_recall_curve (end point at threshold inf)."""
    curve = read_csv(path)
    precision, recall, thresholds = precision_recall_curve(y, p)
    np.testing.assert_allclose([float(r["precision"]) for r in curve], precision)
    np.testing.assert_allclose([float(r["recall"]) for r in curve], recall)
    np.testing.assert_allclose([float(r["threshold"]) for r in curve], [*thresholds, math.inf])



def test_outputs_match_direct_computation(dataset, tmp_path):
    pred_dir, ref_dir, arrays = dataset
    summary = evaluate_dirs(pred_dir, ref_dir, tmp_path / "out", threshold=0.5)
    rows = read_csv(tmp_path / "out" / "cases.csv")
    assert list(rows[0].keys())[: len(FIRST_COLUMNS)] == FIRST_COLUMNS
    assert {"iou", "tp", "fp", "fn", "tn"} <= rows[0].keys()
    assert [r["case"] for r in rows] == ["c0", "c1", "c2", "c_empty"]
    for row in rows:
        prob, ref = arrays[row["case"]]
        expected = metrics.overlap_metrics(
            metrics.confusion_counts(torch.from_numpy(prob >= 0.5), torch.from_numpy(ref == 1)))
        for key, value in expected.items():
            assert float(row[key]) == pytest.approx(value, nan_ok=True), (row["case"], key)
        if ref.any():
            assert float(row["apr"]) == pytest.approx(average_precision_score(ref.ravel(), prob.ravel()))
    empty = rows[-1]
    assert empty["sensitivity"] == "nan" and empty["apr"] == "nan" and float(empty["dsc"]) == 0.0

    assert json.loads((tmp_path / "out" / "summary.json").read_text()) == json.loads(json.dumps(summary))
    assert summary["threshold"] == 0.5 and summary["n_cases"] == 4
    dsc = [float(r["dsc"]) for r in rows]
    assert summary["per_case"]["dsc"] == pytest.approx(
        {"mean": np.mean(dsc), "sd": np.std(dsc, ddof=1), "median": np.median(dsc), "n": 4, "n_undefined": 0})
    sens = [float(r["sensitivity"]) for r in rows[:3]]  # undefined for c_empty
    assert summary["per_case"]["sensitivity"] == pytest.approx(
        {"mean": np.mean(sens), "sd": np.std(sens, ddof=1), "median": np.median(sens), "n": 3, "n_undefined": 1})
    assert summary["per_case"]["apr"]["n_undefined"] == 1

    all_prob = np.concatenate([arrays[c][0].ravel() for c in sorted(arrays)])
    all_ref = np.concatenate([arrays[c][1].ravel() for c in sorted(arrays)])
    pooled = summary["pooled"]
    for key in ("dsc", "f2", "sensitivity", "precision", "specificity", "iou", "apr", "tp", "fp", "fn", "tn"):
        assert key in pooled
    assert pooled["apr"] == pytest.approx(average_precision_score(all_ref, all_prob), abs=1e-12)
    assert pooled["tp"] == int(((all_prob >= 0.5) & (all_ref == 1)).sum())
    assert pooled["tp"] + pooled["fp"] + pooled["fn"] + pooled["tn"] == all_ref.size

    assert_curve_is_sklearns(tmp_path / "out" / "pr_curve.csv", all_ref, all_prob)


def test_binary_mask_predictions_and_uncompressed_nifti(tmp_path):
    ref = np.zeros(SHAPE, np.uint8)
    ref[1:3, 1:3, 1] = 1
    pred = np.zeros(SHAPE, np.uint8)
    pred[1:3, 1, 1] = 1
    save(tmp_path / "p" / "a.nii", pred)
    save(tmp_path / "r" / "a.nii.gz", ref)
    summary = evaluate_dirs(tmp_path / "p", tmp_path / "r", tmp_path / "o")
    pooled = summary["pooled"]
    assert (pooled["tp"], pooled["fp"], pooled["fn"]) == (2, 0, 2)
    assert pooled["dsc"] == pytest.approx(4 / 6)
    assert pooled["apr"] == pytest.approx(average_precision_score(ref.ravel(), pred.ravel()))


def test_both_empty_case_counts_as_perfect_overlap(tmp_path):
    zeros = np.zeros(SHAPE, np.float32)
    cases = [("none", save(tmp_path / "p.nii.gz", zeros), save(tmp_path / "r.nii.gz", zeros.astype(np.uint8)))]
    summary = evaluate_cases(cases, tmp_path / "o", progress=False)
    assert summary["per_case"]["dsc"] == {"mean": 1.0, "sd": pytest.approx(math.nan, nan_ok=True),
                                          "median": 1.0, "n": 1, "n_undefined": 0}
    assert summary["per_case"]["sensitivity"]["n_undefined"] == 1
    assert math.isnan(summary["pooled"]["apr"])


def test_extra_f_beta_column_and_ref_label(tmp_path):
    ref = np.zeros(SHAPE, np.int16)
    ref[0, 0, :2] = 3  # lesion label 3
    ref[5, 4, 3] = 1  # another structure, not lesion
    pred = np.zeros(SHAPE, np.float32)
    pred[0, 0, 0] = 0.9
    cases = [("a", save(tmp_path / "p.nii.gz", pred), save(tmp_path / "r.nii.gz", ref))]
    with pytest.raises(LesionsegError, match=r"not binary: values found 0, 1, 3"):
        evaluate_cases(cases, tmp_path / "o", progress=False)
    summary = evaluate_cases(cases, tmp_path / "o", progress=False, f_beta=0.5, ref_label=3)
    assert summary["pooled"]["f0.5"] == pytest.approx(1.25 / (1.25 + 0.25 * 1))
    assert "f0.5" in read_csv(tmp_path / "o" / "cases.csv")[0]


def test_ref_label_held_by_no_reference_is_an_error(tmp_path):
    """`--ref-label 3` on references holding 0/1/2 used to score every case against an empty reference."""
    for case, values in (("a", (1, 2)), ("b", (2,))):
        ref = np.zeros(SHAPE, np.uint8)
        ref[0, 0, : len(values)] = values
        save(tmp_path / "ref" / f"{case}.nii.gz", ref)
        save(tmp_path / "pred" / f"{case}.nii.gz", np.zeros(SHAPE, np.float32))
    result = subprocess.run([sys.executable, "-m", "lesionseg", "evaluate", "--pred", "pred", "--ref", "ref",
                             "--out", "out", "--ref-label", "3"], cwd=tmp_path, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.startswith("lesionseg evaluate: error: no reference holds the lesion label 3 "), result.stderr
    assert "the 2 reference(s) in ref hold only the values 0, 1, 2; give the value that marks lesion" in result.stderr
    assert not (tmp_path / "out").exists()


def test_ref_label_missing_from_some_cases_is_fine(tmp_path):
    """A case may have no lesion: only a label held by no reference at all is refused."""
    ref = np.zeros(SHAPE, np.uint8)
    ref[1, 1, 1] = 3
    pred = np.zeros(SHAPE, np.float32)
    cases = [("lesion", save(tmp_path / "p1.nii.gz", pred), save(tmp_path / "r1.nii.gz", ref)),
             ("none", save(tmp_path / "p2.nii.gz", pred), save(tmp_path / "r2.nii.gz", np.ones(SHAPE, np.uint8)))]
    summary = evaluate_cases(cases, tmp_path / "o", progress=False, ref_label=3)
    assert summary["pooled"]["fn"] == 1 and summary["n_cases"] == 2


def test_one_3d_volume_per_file(pair):
    """A trailing axis of length 1 (some converters write one) is the same grid; several volumes are not."""
    tmp_path, _, ref_path = pair
    prob = np.zeros((*SHAPE, 1), np.float32)
    prob[2, 2, 2] = 0.9
    summary = run_one(tmp_path, save(tmp_path / "p4d.nii.gz", prob), ref_path)
    assert summary["pooled"]["tp"] == 1 and summary["pooled"]["dsc"] == 1.0
    series = save(tmp_path / "series.nii.gz", np.zeros((*SHAPE, 2), np.float32))
    with pytest.raises(LesionsegError, match=r"prediction .*series\.nii\.gz \(paired with .*ref\.nii\.gz\) has "
                                             r"shape \(6, 5, 4, 2\); one 3D volume per file is expected"):
        run_one(tmp_path, series, ref_path)


def test_pr_curve_csv_is_thinned(tmp_path):
    rng = np.random.default_rng(1)
    prob = rng.random(SHAPE).astype(np.float32)
    ref = (rng.random(SHAPE) < 0.3).astype(np.uint8)
    cases = [("a", save(tmp_path / "p.nii.gz", prob), save(tmp_path / "r.nii.gz", ref))]
    evaluate_cases(cases, tmp_path / "o", progress=False, pr_curve_max_points=20)
    curve = read_csv(tmp_path / "o" / "pr_curve.csv")
    assert len(curve) == 20 and curve[-1]["threshold"] == "inf" and float(curve[0]["recall"]) == 1.0
    precision, recall, thresholds = precision_recall_curve(ref.ravel(), prob.ravel())
    exact = dict(zip(thresholds.astype(float).tolist(), precision.tolist()))
    for row in curve[:-1]:  # points of the exact curve, not interpolated
        assert exact[float(row["threshold"])] == pytest.approx(float(row["precision"]))


# ---- every error path -----------------------------------------------------------------------------------

@pytest.fixture
def pair(tmp_path):
    prob = np.zeros(SHAPE, np.float32)
    ref = np.zeros(SHAPE, np.uint8)
    ref[2, 2, 2] = 1
    return tmp_path, save(tmp_path / "pred.nii.gz", prob), save(tmp_path / "ref.nii.gz", ref)


def run_one(tmp_path, pred_path, ref_path, **kwargs):
    return evaluate_cases([("a", pred_path, ref_path)], tmp_path / "out", progress=False, **kwargs)


def test_shape_mismatch_names_both_files(pair):
    tmp_path, _, ref_path = pair
    bad = save(tmp_path / "bad.nii.gz", np.zeros((6, 5, 3), np.float32))
    with pytest.raises(LesionsegError, match=r"prediction .*bad\.nii\.gz has shape \(6, 5, 3\) but reference "
                                             r".*ref\.nii\.gz has \(6, 5, 4\); predictions must be in"):
        run_one(tmp_path, bad, ref_path)


def test_affine_mismatch_names_both_files(pair):
    tmp_path, _, ref_path = pair
    shifted = AFFINE.copy()
    shifted[0, 3] = 5e-3
    bad = save(tmp_path / "bad.nii.gz", np.zeros(SHAPE, np.float32), affine=shifted)
    with pytest.raises(LesionsegError, match=r"prediction .*bad\.nii\.gz has an affine that differs from reference "
                                             r".*ref\.nii\.gz's by up to 0\.005 mm \(tolerance 0\.001 mm\)"):
        run_one(tmp_path, bad, ref_path)
    within = AFFINE.copy()
    within[0, 3] = 5e-4  # inside the tolerance
    run_one(tmp_path, save(tmp_path / "ok.nii.gz", np.zeros(SHAPE, np.float32), affine=within), ref_path)


@pytest.mark.parametrize("value, match", [(1.2, r"found values in \[0, 1.2\]"), (-0.5, r"\[-0.5, 0\]"),
                                          (math.nan, r"1 NaN value")])
def test_probabilities_outside_unit_interval(pair, value, match):
    tmp_path, _, ref_path = pair
    prob = np.zeros(SHAPE, np.float32)
    prob[0, 0, 0] = value
    bad = save(tmp_path / "bad.nii.gz", prob)
    with pytest.raises(LesionsegError, match=r"prediction .*bad\.nii\.gz \(paired with .*ref\.nii\.gz\).*" + match):
        run_one(tmp_path, bad, ref_path)


def test_label_map_as_prediction_is_rejected(pair):
    tmp_path, _, ref_path = pair
    labels = np.zeros(SHAPE, np.uint8)
    labels[0, 0, 0] = 2
    with pytest.raises(LesionsegError, match=r"found values in \[0, 2\]"):
        run_one(tmp_path, save(tmp_path / "labels.nii.gz", labels), ref_path)


def test_non_binary_reference_lists_values(pair):
    tmp_path, pred_path, _ = pair
    ref = np.zeros(SHAPE, np.float32)
    ref[0, 0, 0], ref[1, 0, 0] = 0.5, 2.0
    bad = save(tmp_path / "soft.nii.gz", ref)
    with pytest.raises(LesionsegError, match=r"reference .*soft\.nii\.gz \(paired with .*pred\.nii\.gz\) is not binary: "
                                             r"values found 0, 0\.5, 2"):
        run_one(tmp_path, pred_path, bad)


def test_missing_file(pair):
    tmp_path, pred_path, _ = pair
    with pytest.raises(LesionsegError, match=r"reference .*nothere\.nii\.gz does not exist \(paired with .*pred"):
        run_one(tmp_path, pred_path, tmp_path / "nothere.nii.gz")


def test_unreadable_file(pair):
    tmp_path, _, ref_path = pair
    junk = tmp_path / "junk.nii.gz"
    junk.write_bytes(b"this is not a nifti file")
    with pytest.raises(LesionsegError, match=r"cannot read .*prediction .*junk\.nii\.gz"):
        run_one(tmp_path, junk, ref_path)


def test_truncated_file(pair):
    tmp_path, pred_path, ref_path = pair
    data = pred_path.read_bytes()
    cut = tmp_path / "cut.nii.gz"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(LesionsegError, match=r"cut\.nii\.gz"):
        run_one(tmp_path, cut, ref_path)


@pytest.mark.parametrize("threshold", [0, -0.1, 1.5])
def test_bad_threshold(pair, threshold):
    tmp_path, pred_path, ref_path = pair
    with pytest.raises(LesionsegError, match=rf"evaluation option: threshold = {threshold}: Input should be "
                                             r"(greater than 0|less than or equal to 1)"):
        run_one(tmp_path, pred_path, ref_path, threshold=threshold)


def test_no_cases_and_duplicate_names(pair):
    tmp_path, pred_path, ref_path = pair
    with pytest.raises(LesionsegError, match="no cases"):
        evaluate_cases([], tmp_path / "out")
    with pytest.raises(LesionsegError, match="repeated: a"):
        evaluate_cases([("a", pred_path, ref_path), ("a", pred_path, ref_path)], tmp_path / "out", progress=False)


def test_unmatched_names_are_listed(dataset, tmp_path):
    pred_dir, ref_dir, _ = dataset
    (pred_dir / "c1.nii.gz").rename(pred_dir / "extra.nii.gz")
    with pytest.raises(LesionsegError, match=r"predictions without a reference .*: extra; "
                                             r"references without a prediction .*: c1"):
        evaluate_dirs(pred_dir, ref_dir, tmp_path / "out")


def test_folder_errors(dataset, tmp_path):
    pred_dir, ref_dir, _ = dataset
    with pytest.raises(LesionsegError, match=r"prediction folder .*missing does not exist"):
        evaluate_dirs(tmp_path / "missing", ref_dir, tmp_path / "out")
    (tmp_path / "empty").mkdir()
    with pytest.raises(LesionsegError, match=r"reference folder .*empty holds no NIfTI files"):
        evaluate_dirs(pred_dir, tmp_path / "empty", tmp_path / "out")
    save(pred_dir / "c0.nii", np.zeros(SHAPE, np.float32))
    with pytest.raises(LesionsegError, match=r"holds case 'c0' twice"):
        evaluate_dirs(pred_dir, ref_dir, tmp_path / "out")


def test_load_case_returns_device_tensors_and_spacing(pair):
    _, pred_path, ref_path = pair
    prob, ref, spacing = load_case(pred_path, ref_path)
    assert prob.dtype == torch.float32 and ref.dtype == torch.bool and ref.shape == SHAPE
    assert spacing == SPACING


def test_big_endian_files(tmp_path):
    prob = np.zeros(SHAPE, ">f4")
    prob[1, 1, 1] = 0.75
    ref = np.zeros(SHAPE, ">i2")
    ref[1, 1, 1] = 1
    pred_path, ref_path = tmp_path / "p.nii.gz", tmp_path / "r.nii.gz"
    for path, data in ((pred_path, prob), (ref_path, ref)):
        nib.save(nib.Nifti1Image(data, AFFINE, nib.Nifti1Header(endianness=">")), str(path))
    assert np.asanyarray(nib.load(str(pred_path)).dataobj).dtype.byteorder == ">"  # torch cannot take these
    summary = run_one(tmp_path, pred_path, ref_path)
    assert summary["pooled"]["tp"] == 1 and summary["pooled"]["dsc"] == 1.0


def test_progress_bar_is_optional(pair, capsys):
    tmp_path, pred_path, ref_path = pair
    run_one(tmp_path, pred_path, ref_path)
    assert "evaluate" not in capsys.readouterr().err
    evaluate_cases([("a", pred_path, ref_path)], tmp_path / "out", progress=True)
    assert "evaluate" in capsys.readouterr().err


# ---- stage 2: volumes, surface distances, lesion-wise detection ----------------------------------------

def test_volumes_surface_and_lesions(dataset, tmp_path):
    from lesionseg.evaluation.lesionwise import lesion_counts, lesion_metrics
    from lesionseg.evaluation.surface import surface_distances

    pred_dir, ref_dir, arrays = dataset
    summary = evaluate_dirs(pred_dir, ref_dir, tmp_path / "out", options=eval_options(lesion_min_overlap=0.2))
    rows = {r["case"]: r for r in read_csv(tmp_path / "out" / "cases.csv")}
    voxel_ml = 1.0 * 1.5 * 2.0 / 1000
    for case, (prob, ref) in arrays.items():
        row = rows[case]
        pred_t, ref_t = torch.from_numpy(prob >= 0.5), torch.from_numpy(ref == 1)
        assert float(row["vol_ref_ml"]) == pytest.approx(ref.sum() * voxel_ml)
        assert float(row["vol_pred_ml"]) == pytest.approx((prob >= 0.5).sum() * voxel_ml)
        assert float(row["avd_ml"]) == pytest.approx(abs(float(row["vol_pred_ml"]) - float(row["vol_ref_ml"])))
        distances = surface_distances(pred_t, ref_t, SPACING)
        assert float(row["hd95_mm"]) == pytest.approx(distances["hd95_mm"], nan_ok=True)
        assert float(row["assd_mm"]) == pytest.approx(distances["assd_mm"], nan_ok=True)
        counts = lesion_counts(pred_t, ref_t, voxel_ml, min_overlap=0.2)
        assert {k: int(row[k]) for k in counts} == counts
        for key, value in lesion_metrics(counts).items():
            assert float(row[key]) == pytest.approx(value, nan_ok=True), (case, key)
    assert rows["c_empty"]["rvd"] == "nan" and rows["c_empty"]["hd95_mm"] == "nan"
    assert summary["per_case"]["hd95_mm"]["n_undefined"] == 1
    assert "hd95_mm" not in summary["pooled"]
    pooled = summary["pooled"]
    assert pooled["n_ref_lesions"] == sum(int(r["n_ref_lesions"]) for r in rows.values())
    assert pooled["ltpr"] == pytest.approx(
        sum(int(r["n_detected"]) for r in rows.values()) / pooled["n_ref_lesions"])
    assert pooled["vol_ref_ml"] == pytest.approx(sum(float(r["vol_ref_ml"]) for r in rows.values()))
    assert {"ltpr_0-0.01ml", "ltpr_0.01-0.1ml", "ltpr_0.1-1ml", "ltpr_1ml+"} <= summary["per_case"].keys()


def test_hd95_in_mm_against_monai(tmp_path):
    import warnings

    from monai.metrics import compute_hausdorff_distance

    ref = np.zeros(SHAPE, np.uint8)
    ref[1:3, 1:3, 1:3] = 1
    pred = np.zeros(SHAPE, np.float32)
    pred[1:3, 1:4, 1:2] = 0.8
    pred[5, 4, 3] = 0.9
    cases = [("a", save(tmp_path / "p.nii.gz", pred), save(tmp_path / "r.nii.gz", ref))]
    summary = evaluate_cases(cases, tmp_path / "o", progress=False)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*always_return_as_numpy.*", category=FutureWarning)
        expected = compute_hausdorff_distance(torch.from_numpy(pred >= 0.5)[None, None].float(),
                                              torch.from_numpy(ref)[None, None].float(),
                                              percentile=95, spacing=list(SPACING)).item()
    assert summary["per_case"]["hd95_mm"]["mean"] == pytest.approx(expected, rel=1e-5)


def test_options_voxel_bins_and_no_surface(dataset, tmp_path):
    from scipy import ndimage

    pred_dir, ref_dir, arrays = dataset
    summary = evaluate_dirs(pred_dir, ref_dir, tmp_path / "out", surface=False, size_bins_voxels=[3, 10],
                            options=eval_options(lesion_min_voxels=2))
    columns = read_csv(tmp_path / "out" / "cases.csv")[0].keys()
    assert "hd95_mm" not in columns and "assd_mm" not in columns
    assert {"ltpr_0-3vox", "ltpr_3-10vox", "ltpr_10vox+"} <= columns
    pooled = summary["pooled"]
    assert pooled["n_ref_0-3vox"] + pooled["n_ref_3-10vox"] + pooled["n_ref_10vox+"] == pooled["n_ref_lesions"]
    n_big = 0  # reference lesions of at least 2 voxels (26-connectivity), counted with SciPy
    for _, ref in arrays.values():
        labels, n = ndimage.label(ref, structure=np.ones((3, 3, 3)))
        n_big += int((np.bincount(labels.ravel(), minlength=n + 1)[1:] >= 2).sum())
    assert pooled["n_ref_lesions"] == n_big


@pytest.mark.parametrize("kwargs, match", [
    ({"lesion_min_voxels": 0}, r"evaluation option: lesion_min_voxels = 0: Input should be greater than or equal"),
    ({"lesion_min_overlap": -0.1}, r"lesion_min_overlap = -0.1: Input should be greater than or equal to 0"),
    ({"size_bins_ml": [0.5, 0.1]}, r"size_bins_ml = \[0.5, 0.1\]: .* are not bin edges"),
    ({"calibration_bins": 1}, r"calibration_bins = 1: Input should be greater than or equal to 2"),
    ({"min_component_ml": -0.5}, r"min_component_ml = -0.5: -0.5 is not a volume >= 0"),
    ({"f_beta": 0}, r"f_beta must be a finite number > 0"),
])
def test_bad_options(pair, kwargs, match):
    # the options object is checked again whole: one changed without validation (model_copy) is refused
    tmp_path, pred_path, ref_path = pair
    f_beta = kwargs.pop("f_beta", 2.0)
    with pytest.raises(LesionsegError, match=match):
        run_one(tmp_path, pred_path, ref_path, f_beta=f_beta, options=EVAL_DEFAULTS.model_copy(update=kwargs))


# ---- brain mask: evaluation restricted to the voxels inside it ------------------------------------------

@pytest.fixture
def masked_case(tmp_path):
    """Reference lesion of 2 voxels; one FP inside the brain mask (rows 0-3), one FP outside it (row 5)."""
    ref = np.zeros(SHAPE, np.uint8)
    ref[1:3, 1, 1] = 1
    prob = np.zeros(SHAPE, np.float32)
    prob[1, 1, 1] = 0.9  # TP
    prob[2, 1, 1] = 0.3  # FN at 0.5
    prob[3, 0, 0] = 0.6  # FP inside the mask
    prob[5, 0, 0] = 0.8  # FP outside the mask
    mask = np.zeros(SHAPE, np.uint8)
    mask[:4] = 1
    paths = (save(tmp_path / "p.nii.gz", prob), save(tmp_path / "r.nii.gz", ref), save(tmp_path / "m.nii.gz", mask))
    return tmp_path, paths, (prob, ref, mask)


def test_mask_restricts_every_metric(masked_case):
    tmp_path, (pred_path, ref_path, mask_path), (prob, ref, mask) = masked_case
    cases = [("a", pred_path, ref_path)]
    full = evaluate_cases(cases, tmp_path / "full", progress=False)["pooled"]
    assert (full["tp"], full["fp"], full["fn"], full["tn"]) == (1, 2, 1, 116)
    assert full["dsc"] == pytest.approx(0.4) and full["precision"] == pytest.approx(1 / 3)
    assert full["apr"] == pytest.approx(0.5 * 1 + 0.5 * 2 / 4)  # 0.9 pos, 0.8 neg, 0.6 neg, 0.3 pos
    assert full["n_pred_lesions"] == 3

    summary = evaluate_cases(cases, tmp_path / "masked", progress=False, masks=[mask_path])
    pooled = summary["pooled"]
    assert (pooled["tp"], pooled["fp"], pooled["fn"], pooled["tn"]) == (1, 1, 1, 80 - 3)
    assert pooled["dsc"] == pytest.approx(0.5) and pooled["precision"] == pytest.approx(0.5)
    assert pooled["apr"] == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)  # 0.9 pos, 0.6 neg, 0.3 pos
    assert pooled["n_pred_lesions"] == 2 and pooled["n_detected"] == 1
    assert pooled["vol_pred_ml"] == pytest.approx(2 * 1.0 * 1.5 * 2.0 / 1000)

    inside = mask == 1  # scikit-learn on the voxels inside the mask
    y, p = ref[inside], prob[inside]
    assert pooled["apr"] == pytest.approx(average_precision_score(y, p))
    assert pooled["precision"] == pytest.approx(precision_score(y, p >= 0.5))
    assert pooled["dsc"] == pytest.approx(f1_score(y, p >= 0.5))
    assert summary["per_case"]["dsc"]["mean"] == pytest.approx(pooled["dsc"])
    assert_curve_is_sklearns(tmp_path / "masked" / "pr_curve.csv", y, p)


def test_mask_per_case_may_be_none(masked_case):
    tmp_path, (pred_path, ref_path, mask_path), (prob, ref, mask) = masked_case
    cases = [("masked", pred_path, ref_path), ("whole", pred_path, ref_path)]
    summary = evaluate_cases(cases, tmp_path / "o", progress=False, masks=[mask_path, None])
    rows = {r["case"]: r for r in read_csv(tmp_path / "o" / "cases.csv")}
    assert float(rows["masked"]["dsc"]) == pytest.approx(0.5) and float(rows["whole"]["dsc"]) == pytest.approx(0.4)
    assert summary["pooled"]["fp"] == 1 + 2
    all_y = np.concatenate([ref[mask == 1], ref.ravel()])
    all_p = np.concatenate([prob[mask == 1], prob.ravel()])
    assert summary["pooled"]["apr"] == pytest.approx(average_precision_score(all_y, all_p))
    with pytest.raises(LesionsegError, match=r"one brain mask \(or None\) per case needed, got 1 for 2 cases"):
        evaluate_cases(cases, tmp_path / "o", progress=False, masks=[mask_path])


def test_mask_off_the_reference_grid_names_both_files(masked_case):
    tmp_path, (pred_path, ref_path, _), _ = masked_case
    small = save(tmp_path / "small.nii.gz", np.ones((6, 5, 3), np.uint8))
    with pytest.raises(LesionsegError, match=r"brain mask .*small\.nii\.gz has shape \(6, 5, 3\) but reference "
                                             r".*r\.nii\.gz has"):
        run_one(tmp_path, pred_path, ref_path, masks=[small])
    shifted = AFFINE.copy()
    shifted[0, 3] = 5e-3
    moved = save(tmp_path / "moved.nii.gz", np.ones(SHAPE, np.uint8), affine=shifted)
    with pytest.raises(LesionsegError, match=r"brain mask .*moved\.nii\.gz has an affine that differs from "
                                             r"reference .*r\.nii\.gz's"):
        run_one(tmp_path, pred_path, ref_path, masks=[moved])
    within = AFFINE.copy()
    within[0, 3] = 5e-4  # inside the tolerance
    run_one(tmp_path, pred_path, ref_path, masks=[save(tmp_path / "ok.nii.gz", np.ones(SHAPE, np.uint8), within)])


def test_non_binary_mask_is_rejected(masked_case):
    tmp_path, (pred_path, ref_path, _), _ = masked_case
    soft = np.zeros(SHAPE, np.float32)
    soft[0, 0, 0], soft[1, 0, 0] = 0.5, 2.0
    bad = save(tmp_path / "soft.nii.gz", soft)
    with pytest.raises(LesionsegError, match=r"brain mask .*soft\.nii\.gz \(paired with .*r\.nii\.gz\) is not binary: "
                                             r"values found 0, 0\.5, 2"):
        run_one(tmp_path, pred_path, ref_path, masks=[bad])
    with pytest.raises(LesionsegError, match=r"brain mask .*nothere\.nii\.gz does not exist"):
        run_one(tmp_path, pred_path, ref_path, masks=[tmp_path / "nothere.nii.gz"])


def test_evaluate_dirs_with_mask_dir(dataset, tmp_path):
    pred_dir, ref_dir, arrays = dataset
    rng = np.random.default_rng(2)
    masks = {case: (rng.random(SHAPE) < 0.7).astype(np.uint8) for case in arrays}
    for case, mask in masks.items():
        save(tmp_path / "masks" / f"{case}.nii.gz", mask)
    save(tmp_path / "masks" / "unused.nii.gz", np.ones(SHAPE, np.uint8))  # extra masks are ignored
    summary = evaluate_dirs(pred_dir, ref_dir, tmp_path / "out", mask_dir=tmp_path / "masks")
    rows = {r["case"]: r for r in read_csv(tmp_path / "out" / "cases.csv")}
    for case, (prob, ref) in arrays.items():
        inside = masks[case] == 1
        y, p = ref[inside], prob[inside]
        assert int(rows[case]["tp"]) + int(rows[case]["fp"]) + int(rows[case]["fn"]) + int(rows[case]["tn"]) == y.size
        assert float(rows[case]["precision"]) == pytest.approx(precision_score(y, p >= 0.5, zero_division=np.nan),
                                                               nan_ok=True)
        if y.any():
            assert float(rows[case]["apr"]) == pytest.approx(average_precision_score(y, p))
    all_y = np.concatenate([arrays[c][1][masks[c] == 1] for c in sorted(arrays)])
    all_p = np.concatenate([arrays[c][0][masks[c] == 1] for c in sorted(arrays)])
    assert summary["pooled"]["apr"] == pytest.approx(average_precision_score(all_y, all_p), abs=1e-12)
    assert summary["pooled"]["tn"] + summary["pooled"]["fp"] + summary["pooled"]["tp"] + summary["pooled"]["fn"] \
        == all_y.size

    (tmp_path / "masks" / "c1.nii.gz").unlink()
    (tmp_path / "masks" / "c_empty.nii.gz").unlink()
    with pytest.raises(LesionsegError, match=r"cases without a brain mask in .*masks: c1, c_empty"):
        evaluate_dirs(pred_dir, ref_dir, tmp_path / "out", mask_dir=tmp_path / "masks")


def test_threshold_curves_agree_with_the_evaluation_at_each_threshold(dataset, tmp_path):
    pred_dir, ref_dir, arrays = dataset
    evaluate_dirs(pred_dir, ref_dir, tmp_path / "curves", progress=False)
    curves = {round(float(r["threshold"]), 2): r for r in read_csv(tmp_path / "curves" / "threshold_curves.csv")}
    assert sorted(curves) == [round(0.01 * i, 2) for i in range(1, 100)]
    assert list(next(iter(curves.values())))[:5] == ["threshold", "dsc", "f2", "sensitivity", "precision"]
    for t in (0.2, 0.5, 0.7):
        summary = evaluate_dirs(pred_dir, ref_dir, tmp_path / f"at{t}", threshold=t, progress=False)
        for m in ("dsc", "f2", "sensitivity", "precision"):
            assert float(curves[t][m]) == pytest.approx(summary["per_case"][m]["mean"], nan_ok=True), (t, m)
            assert float(curves[t][f"{m}_pooled"]) == pytest.approx(summary["pooled"][m], nan_ok=True), (t, m)


def test_calibration_over_the_brain_by_hand(masked_case):
    tmp_path, (pred_path, ref_path, mask_path), (prob, ref, mask) = masked_case
    cases = [("a", pred_path, ref_path)]

    def ece_of(p, y):  # the definition, 10 equal-width bins (k/10, (k+1)/10], the first closed at 0
        index = np.clip(np.ceil(p.astype(np.float64) * 10) - 1, 0, 9)
        return sum((index == b).sum() / p.size * abs(y[index == b].mean() - p[index == b].mean())
                   for b in range(10) if (index == b).any())

    whole = evaluate_cases(cases, tmp_path / "whole", progress=False)
    assert whole["calibration"] == {"bins": 10, "binning": "equal-width", "voxels": "every voxel"}
    assert whole["pooled"]["ece"] == pytest.approx(ece_of(prob.ravel(), ref.ravel()))
    brain = evaluate_cases(cases, tmp_path / "brain", progress=False, brains=[mask_path])
    inside = mask == 1
    assert brain["pooled"]["ece"] == pytest.approx(ece_of(prob[inside], ref[inside]))
    assert brain["per_case"]["ece"]["mean"] == pytest.approx(brain["pooled"]["ece"])
    assert brain["pooled"]["dsc"] == whole["pooled"]["dsc"]  # `brains` only changes the calibration voxels
    masked = evaluate_cases(cases, tmp_path / "masked", progress=False, masks=[mask_path])
    assert masked["pooled"]["ece"] == brain["pooled"]["ece"] and masked["calibration"]["voxels"] == "brain mask"
    bins = read_csv(tmp_path / "brain" / "calibration.csv")
    assert [int(b["n_voxels"]) for b in bins][0] == int(((prob[inside] <= 0.1)).sum())
    assert sum(int(b["n_voxels"]) for b in bins) == int(inside.sum())
    # a skull-stripped image works as the brain: its non-zero voxels
    image = save(tmp_path / "t1.nii.gz", np.where(inside, 100.0 + np.arange(inside.size).reshape(SHAPE), 0.0))
    assert evaluate_cases(cases, tmp_path / "img", progress=False, brains=[image])["pooled"]["ece"] == \
        pytest.approx(brain["pooled"]["ece"])
    with pytest.raises(LesionsegError, match="calibration_bins = 0: Input should be greater than or equal to 2"):
        evaluate_cases(cases, tmp_path / "bad", progress=False,
                       options=EVAL_DEFAULTS.model_copy(update={"calibration_bins": 0}))


def test_collapse_is_checked_at_each_threshold(dataset, tmp_path):
    pred_dir, ref_dir, arrays = dataset
    cases = [(c, pred_dir / f"{c}.nii.gz", ref_dir / f"{c}.nii.gz") for c in sorted(arrays)]
    summaries = evaluate_cases_at(cases, {tmp_path / "a": 0.5, tmp_path / "b": 0.01}, progress=False)
    rows = read_csv(tmp_path / "a" / "cases.csv")
    for row in rows:  # every voxel counts without a brain: the SD over the whole case
        assert float(row["prob_sd"]) == pytest.approx(float(np.std(arrays[row["case"]][0], dtype=np.float64)))
    assert summaries[tmp_path / "a"]["collapse"] == []
    (over,) = summaries[tmp_path / "b"]["collapse"]  # p ≥ 0.01: nearly every voxel is lesion
    pooled = summaries[tmp_path / "b"]["pooled"]
    assert over["flag"] == "over-segmented"
    assert over["value"] == pytest.approx(pooled["vol_pred_ml"] / pooled["vol_ref_ml"])
    assert over["detail"].endswith(f"({pooled['vol_pred_ml']:.4g} against {pooled['vol_ref_ml']:.4g} mL; rule: > 5×)")


def test_a_constant_prediction_is_flagged(dataset, tmp_path):
    _, ref_dir, arrays = dataset
    cases = [(c, save(tmp_path / "flat" / f"{c}.nii.gz", np.full(SHAPE, 0.3, np.float32)), ref_dir / f"{c}.nii.gz")
             for c in sorted(arrays)]
    summary = evaluate_cases(cases, tmp_path / "out", progress=False)
    assert [f["flag"] for f in summary["collapse"]] == ["no lesion predicted", "near-constant probabilities"]
    assert summary["per_case"]["prob_sd"]["mean"] == 0.0


def test_several_thresholds_in_one_pass_equal_separate_evaluations(dataset, tmp_path):
    pred_dir, ref_dir, arrays = dataset
    cases = [(c, pred_dir / f"{c}.nii.gz", ref_dir / f"{c}.nii.gz") for c in sorted(arrays)]
    together = evaluate_cases_at(cases, {tmp_path / "a": 0.5, tmp_path / "b": 0.3}, progress=False)
    for folder, threshold in (("a", 0.5), ("b", 0.3)):
        alone = evaluate_cases(cases, tmp_path / f"{folder}-alone", threshold=threshold, progress=False)
        assert json.dumps(together[tmp_path / folder]) == json.dumps(alone)
        for name in ("cases.csv", "summary.json", "pr_curve.csv", "threshold_curves.csv", "calibration.csv"):
            assert (tmp_path / folder / name).read_text() == (tmp_path / f"{folder}-alone" / name).read_text()
    with pytest.raises(LesionsegError, match="no threshold to evaluate at"):
        evaluate_cases_at(cases, {}, progress=False)


def test_evaluate_scores_lesions_under_the_chosen_matching_and_records_it(dataset, tmp_path):
    import lesionseg
    from lesionseg.evaluation.lesionwise import lesion_counts

    pred_dir, ref_dir, arrays = dataset
    summary = lesionseg.evaluate(pred_dir, ref_dir, tmp_path / "out", lesion_matching="panoptica", progress=False)
    assert summary["lesion_matching"] == "panoptica"
    rows = {r["case"]: r for r in read_csv(tmp_path / "out" / "cases.csv")}
    for case, (prob, ref) in arrays.items():
        expected = lesion_counts(torch.from_numpy(prob >= 0.5), torch.from_numpy(ref > 0), 0.001,
                                 matching="panoptica")
        assert {k: int(rows[case][k]) for k in ("n_detected", "n_pred_tp", "n_pred_lesions")} == \
            {k: expected[k] for k in ("n_detected", "n_pred_tp", "n_pred_lesions")}
    with pytest.raises(LesionsegError, match="lesion_min_voxels and lesion_min_overlap are isbi2015 matching's"):
        lesionseg.evaluate(pred_dir, ref_dir, tmp_path / "other", lesion_matching="msseg", lesion_min_voxels=3)
    assert not (tmp_path / "other").exists()
