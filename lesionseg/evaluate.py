"""Prediction folder + reference folder → per-case table, summary and pooled precision-recall curve.

Outputs (written atomically into `out_dir`):

- `cases.csv` — one row per case: `case, dsc, f2, sensitivity, precision, specificity, apr` first, then
  `iou, tp, fp, fn, tn`, volumes, surface distances and lesion-wise detection (`evaluate_cases` lists
  them); undefined values are written `nan`. Definitions: voxel-wise in `metrics`, HD95/ASSD in `surface`
  (MONAI's), lesion-wise in `lesionwise` (ISBI 2015).
- `summary.json` — `{"threshold", "n_cases", "per_case", "pooled"}`.
  **per_case**: for every metric, `mean`, `sd` (sample SD, ddof = 1), `median` over the cases where it is
  defined, `n` (cases where defined) and `n_undefined` (cases where NaN); mean/median are NaN with no
  defined value, sd with fewer than two. Each patient counts once.
  **pooled**: all test voxels together as one big case — confusion counts summed over cases and the
  metrics computed from the sums; APR from the merged precision-recall tables, i.e. exactly
  scikit-learn's `average_precision_score` on the concatenated voxels of every case.
- `pr_curve.csv` — the pooled precision-recall curve (`threshold, precision, recall`, thresholds
  increasing, as scikit-learn's `precision_recall_curve`; the end point precision 1, recall 0 has
  threshold `inf`). At most `pr_curve_max_points` rows: points of the exact curve, never interpolated.

A voxel is predicted lesion when `probability >= threshold` (the convention of the precision-recall curve,
so the at-threshold figures are a point of the curve). Binary masks (0/1, any dtype) are probabilities too.

With a brain mask per case (`masks=` / `mask_dir=`), every figure is restricted to the voxels inside it:
voxels outside are neither TP, FP, FN nor TN and are left out of the precision-recall tables, and
prediction and reference are set to 0 outside it for the surface distances and lesion-wise detection.
"""

from __future__ import annotations

import csv
import io
import math
import numbers
import statistics
from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from tqdm import tqdm

from lesionseg import lesionwise, metrics
from lesionseg.errors import LesionsegError
from lesionseg.files import write_json, write_text
from lesionseg.surface import surface_distances

FIRST_COLUMNS = ["case", "dsc", "f2", "sensitivity", "precision", "specificity", "apr"]
COUNT_COLUMNS = ["tp", "fp", "fn", "tn"]
VOLUME_COLUMNS = ["vol_ref_ml", "vol_pred_ml", "avd_ml", "rvd"]
SURFACE_COLUMNS = ["hd95_mm", "assd_mm"]
LESION_COLUMNS = ["n_ref_lesions", "n_pred_lesions", "n_detected", "n_pred_tp", "ltpr", "lfdr", "lesion_f1"]
AFFINE_ATOL_MM = 1e-4
NIFTI_SUFFIXES = (".nii.gz", ".nii")


def _load(path: Path, role: str, other: Path) -> nib.Nifti1Image:
    try:
        return nib.load(str(path))
    except FileNotFoundError as err:
        raise LesionsegError(f"{role} {path} does not exist (paired with {other}).") from err
    except Exception as err:  # nibabel raises many types for a damaged file
        raise LesionsegError(f"cannot read {role} {path} (paired with {other}): {err}") from err


def _array(img: nib.Nifti1Image, path: Path, role: str, other: Path) -> np.ndarray:
    try:
        return np.asanyarray(img.dataobj)
    except Exception as err:  # truncated gzip, short file, …
        raise LesionsegError(f"cannot read the voxels of {role} {path} (paired with {other}): {err}") from err


def _tensor(array: np.ndarray) -> torch.Tensor:
    """Tensor of a NIfTI array; big-endian files (some tools write them) are swapped to native order."""
    return torch.from_numpy(np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("=")))


def _require_same_grid(img: nib.Nifti1Image, ref_img: nib.Nifti1Image, pair: str, fix: str) -> None:
    """LesionsegError naming `pair` when the two images' shapes or affines (beyond tolerance) differ."""
    if img.shape != ref_img.shape:
        raise LesionsegError(f"{pair} have different shapes {img.shape} and {ref_img.shape}; {fix}")
    if not np.allclose(img.affine, ref_img.affine, rtol=0, atol=AFFINE_ATOL_MM):
        raise LesionsegError(
            f"{pair} have different affines (tolerance {AFFINE_ATOL_MM} mm):\n{img.affine}\nand\n"
            f"{ref_img.affine}\n{fix}"
        )


def _load_on_reference_grid(
    path: Path, role: str, ref_path: Path, fix: str
) -> tuple[np.ndarray, nib.Nifti1Image]:
    """The voxels of `path` (a prediction or mask) after checking it lies on the grid of `ref_path`;
    also the reference image (header read, voxels not yet)."""
    img = _load(path, role, ref_path)
    ref_img = _load(ref_path, "reference", path)
    _require_same_grid(img, ref_img, f"{role} {path} and reference {ref_path}", fix)
    return _array(img, path, role, ref_path), ref_img


def _values_found(array: np.ndarray) -> str:
    found = np.unique(array)
    return ", ".join(f"{v:g}" for v in found[:10]) + (", …" if found.size > 10 else "")


def load_case(
    pred_path: Path, ref_path: Path, device: str = "cpu", ref_label: int | None = None
) -> tuple[torch.Tensor, torch.Tensor, tuple[float, ...]]:
    """Load one prediction/reference pair and check that they can be compared.

    Returns `(prob, ref, spacing_mm)`: probabilities (float32, or float64 if stored so) and a bool
    reference on `device`, and the reference's voxel spacing. `ref_label`: the reference value that is
    lesion when the reference holds several labels; otherwise it must be binary (0/1).
    LesionsegError naming both files for unreadable files, shapes or affines that disagree, probabilities
    outside [0, 1] or NaN, and a non-binary reference.
    """
    pred_path, ref_path = Path(pred_path), Path(ref_path)
    pred_np, ref_img = _load_on_reference_grid(
        pred_path, "prediction", ref_path, "predictions must be in the reference's geometry (resample them first)."
    )
    ref_np = _array(ref_img, ref_path, "reference", pred_path)
    prob = _tensor(pred_np).to(device)
    if prob.dtype != torch.float64:
        prob = prob.to(torch.float32)
    try:
        metrics.check_probabilities(prob)
    except ValueError as err:
        raise LesionsegError(f"prediction {pred_path} (paired with {ref_path}): {err}") from err
    ref_t = _tensor(ref_np).to(device)
    if ref_label is not None:
        ref = ref_t == ref_label
    else:
        if not bool(((ref_t == 0) | (ref_t == 1)).all()):
            raise LesionsegError(
                f"reference {ref_path} (paired with {pred_path}) is not binary: values found "
                f"{_values_found(ref_np)}; "
                "give the lesion label (ref_label) or binarise the reference."
            )
        ref = ref_t != 0
    spacing = tuple(float(z) for z in ref_img.header.get_zooms()[: ref.ndim])
    return prob, ref, spacing


def load_mask(mask_path: Path, ref_path: Path, device: str = "cpu") -> torch.Tensor:
    """Load a brain mask for the case whose reference is `ref_path`: a bool tensor on `device`.

    LesionsegError naming both files for an unreadable mask, a shape or affine that differs from the
    reference's (same tolerance as `load_case`), or values other than 0/1.
    """
    mask_path, ref_path = Path(mask_path), Path(ref_path)
    mask_np, _ = _load_on_reference_grid(
        mask_path, "brain mask", ref_path, "the brain mask must be on the reference's grid (resample it first)."
    )
    mask_t = _tensor(mask_np).to(device)
    if not bool(((mask_t == 0) | (mask_t == 1)).all()):
        raise LesionsegError(
            f"brain mask {mask_path} (paired with {ref_path}) is not binary: values found {_values_found(mask_np)}."
        )
    return mask_t != 0


def _stats(values: list[float]) -> dict[str, float | int]:
    defined = [v for v in values if not math.isnan(v)]
    n = len(defined)
    return {
        "mean": statistics.fmean(defined) if n else math.nan,
        "sd": statistics.stdev(defined) if n >= 2 else math.nan,
        "median": statistics.median(defined) if n else math.nan,
        "n": n,
        "n_undefined": len(values) - n,
    }


def _format(value: object) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else repr(value)
    return str(value)


def _csv_text(columns: list[str], rows: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([_format(row[c]) for c in columns])
    return buffer.getvalue()


def _thin(n: int, recall: np.ndarray, max_points: int | None) -> np.ndarray:
    """Indices of curve points to keep: all when few, else first/last of each recall run, evenly sampled."""
    if max_points is None or n <= max_points:
        return np.arange(n)
    change = np.flatnonzero(np.diff(recall) != 0)
    keep = np.unique(np.concatenate([[0, n - 1], change, change + 1]))
    if keep.size > max_points:
        keep = keep[np.unique(np.linspace(0, keep.size - 1, max_points).round().astype(np.int64))]
    return keep


def pr_curve_csv(table: metrics.PRTable, max_points: int | None = 10_000) -> str:
    precision, recall, thresholds = (t.cpu().numpy() for t in metrics.pr_curve(table))
    thresholds = np.append(thresholds, math.inf)
    rows = [
        {"threshold": float(thresholds[i]), "precision": float(precision[i]), "recall": float(recall[i])}
        for i in _thin(precision.size, recall, max_points)
    ]
    return _csv_text(["threshold", "precision", "recall"], rows)


def case_metrics(
    prob: torch.Tensor,
    ref: torch.Tensor,
    spacing: Sequence[float],
    threshold: float = 0.5,
    *,
    f_beta: float = 2.0,
    surface: bool = True,
    lesion_min_voxels: int = 1,
    lesion_min_overlap: float = 0.0,
    size_bins: Sequence[float] = lesionwise.DEFAULT_SIZE_BINS_ML,
    bins_in_voxels: bool = False,
    mask: torch.Tensor | None = None,
) -> tuple[dict, torch.Tensor, dict[str, int], metrics.PRTable]:
    """Every metric of one case from tensors already loaded (`load_case`): `(row, counts, lesion counts,
    pr table)`; the last three add up across cases for the pooled figures.

    `mask` (bool, `load_mask`): only the voxels inside it count; outside, prediction and reference are 0
    for the surface distances and lesion-wise detection.
    """
    pred = prob >= threshold
    if mask is None:
        counts = metrics.confusion_counts(pred, ref)
        table = metrics.pr_table(prob, ref)
    else:
        metrics._check_same_shape(mask, ref, "mask", "ref")
        metrics._check_bool(mask, "mask")
        counts = metrics.confusion_counts(pred[mask], ref[mask])
        table = metrics.pr_table(prob[mask], ref[mask])
        pred, ref = pred & mask, ref & mask
    row = {**metrics.overlap_metrics(counts), "apr": metrics.average_precision(table)}
    if metrics.f_beta_key(f_beta) != "f2":
        row.update(metrics.overlap_metrics(counts, f_beta=f_beta))
    row.update(zip(COUNT_COLUMNS, counts.tolist()))
    voxel_ml = math.prod(spacing) / 1000.0
    row.update(metrics.volume_metrics(counts, voxel_ml))
    if surface:
        row.update(surface_distances(pred, ref, spacing))
    lesions = lesionwise.lesion_counts(pred, ref, voxel_ml, lesion_min_voxels, lesion_min_overlap,
                                       size_bins, bins_in_voxels)
    row.update(lesions)
    row.update(lesionwise.lesion_metrics(lesions))
    return row, counts, lesions, table


def _check_options(threshold, f_beta, lesion_min_voxels, lesion_min_overlap, size_bins) -> None:
    if not (isinstance(threshold, numbers.Real) and 0 < threshold <= 1):
        raise LesionsegError(f"threshold must be in (0, 1], got {threshold!r}.")
    try:
        metrics.overlap_metrics([0, 0, 0, 0], f_beta=f_beta)
        lesionwise.check_parameters(lesion_min_voxels, lesion_min_overlap, size_bins)
    except ValueError as err:
        raise LesionsegError(f"evaluation option: {err}") from err


def evaluate_cases(
    cases: Sequence[tuple[str, Path, Path]],
    out_dir: Path,
    threshold: float = 0.5,
    device: str = "cpu",
    progress: bool = True,
    *,
    f_beta: float = 2.0,
    ref_label: int | None = None,
    surface: bool = True,
    lesion_min_voxels: int = 1,
    lesion_min_overlap: float = 0.0,
    size_bins_ml: Sequence[float] = lesionwise.DEFAULT_SIZE_BINS_ML,
    size_bins_voxels: Sequence[int] | None = None,
    pr_curve_max_points: int | None = 10_000,
    masks: Sequence[Path | None] | None = None,
) -> dict:
    """Evaluate `(case_id, prediction path, reference path)` pairs, write the three outputs, return the summary.

    Args:
        threshold: a voxel is lesion when its probability is >= threshold, in (0, 1].
        device: where the metrics run (`"cpu"`, `"cuda"`, …).
        f_beta: β of an extra Fβ column `f{β:g}` (F2 is always reported).
        ref_label: lesion value in a multi-label reference; None requires a binary reference.
        surface: compute `hd95_mm` and `assd_mm` (`lesionseg.surface`: MONAI's definitions).
        lesion_min_voxels, lesion_min_overlap: lesion-wise detection parameters (`lesionseg.lesionwise`:
            ISBI 2015 definitions, 26-connectivity).
        size_bins_ml: edges of the lesion-size bins of LTPR in mL, or `size_bins_voxels` in voxels.
        pr_curve_max_points: most rows in `pr_curve.csv` (None: every point of the exact curve).
        masks: one brain-mask path (or None) per case, in the order of `cases`, on the reference's grid;
            a case with a mask is scored on the voxels inside it only (see the module docstring).

    Columns after `case, dsc, f2, sensitivity, precision, specificity, apr`: `iou`, [`f<β>`],
    `tp, fp, fn, tn`, `vol_ref_ml, vol_pred_ml, avd_ml, rvd`, `hd95_mm, assd_mm`, `n_ref_lesions,
    n_pred_lesions, n_detected, n_pred_tp, ltpr, lfdr, lesion_f1`, then `n_ref_<bin>, n_detected_<bin>,
    ltpr_<bin>` per size bin. per_case statistics weigh every patient once; pooled figures treat all
    voxels (and all lesions) as one case; surface distances have no pooled value. LesionsegError for bad
    inputs, naming the files.
    """
    bins_in_voxels = size_bins_voxels is not None
    size_bins = list(size_bins_voxels if bins_in_voxels else size_bins_ml)
    _check_options(threshold, f_beta, lesion_min_voxels, lesion_min_overlap, size_bins)
    if not cases:
        raise LesionsegError("no cases to evaluate: the list of (case, prediction, reference) is empty.")
    ids = [c[0] for c in cases]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise LesionsegError(f"case names must be unique; repeated: {', '.join(duplicates)}.")
    masks = [None] * len(cases) if masks is None else list(masks)
    if len(masks) != len(cases):
        raise LesionsegError(f"masks: one brain mask (or None) per case needed, got {len(masks)} for "
                             f"{len(cases)} cases.")
    extra_f = [] if metrics.f_beta_key(f_beta) == "f2" else [metrics.f_beta_key(f_beta)]

    rows: list[dict] = []
    total_counts = torch.zeros(4, dtype=torch.int64)
    total_lesions: dict[str, int] = {}
    merged: list[metrics.PRTable] = []  # one table, merged with `pending` once they are as long as it
    pending: list[metrics.PRTable] = []
    for (case_id, pred_path, ref_path), mask_path in tqdm(
            zip(cases, masks), total=len(cases), desc="evaluate", unit="case", disable=not progress):
        prob, ref, spacing = load_case(pred_path, ref_path, device=device, ref_label=ref_label)
        mask = None if mask_path is None else load_mask(mask_path, ref_path, device=device)
        row, counts, lesions, table = case_metrics(
            prob, ref, spacing, threshold, f_beta=f_beta, surface=surface,
            lesion_min_voxels=lesion_min_voxels, lesion_min_overlap=lesion_min_overlap,
            size_bins=size_bins, bins_in_voxels=bins_in_voxels, mask=mask)
        rows.append({"case": case_id, **row})
        total_counts += counts.cpu()
        total_lesions = {k: total_lesions.get(k, 0) + v for k, v in lesions.items()}
        pending.append(table)
        if sum(t[0].numel() for t in pending) >= sum(t[0].numel() for t in merged):  # O(n log n) overall
            merged = [metrics.merge_pr_tables(merged + pending)] if merged or len(pending) > 1 else pending
            pending = []

    pooled_table = metrics.merge_pr_tables(merged + pending) if pending else merged[0]

    columns = _columns(extra_f, surface, size_bins, bins_in_voxels)
    pooled = {**metrics.overlap_metrics(total_counts), "apr": metrics.average_precision(pooled_table)}
    if extra_f:
        pooled.update(metrics.overlap_metrics(total_counts, f_beta=f_beta))
    pooled.update(zip(COUNT_COLUMNS, total_counts.tolist()))
    vol_ref, vol_pred = sum(r["vol_ref_ml"] for r in rows), sum(r["vol_pred_ml"] for r in rows)
    pooled.update({"vol_ref_ml": vol_ref, "vol_pred_ml": vol_pred, "avd_ml": abs(vol_pred - vol_ref),
                   "rvd": (vol_pred - vol_ref) / vol_ref if vol_ref > 0 else math.nan})
    pooled.update(total_lesions)
    pooled.update(lesionwise.lesion_metrics(total_lesions))
    summary = {
        "threshold": threshold,
        "n_cases": len(rows),
        "per_case": {c: _stats([float(r[c]) for r in rows]) for c in columns[1:]},
        "pooled": {c: pooled[c] for c in columns[1:] if c in pooled},
    }
    out_dir = Path(out_dir)
    write_text(out_dir / "cases.csv", _csv_text(columns, rows))
    write_text(out_dir / "pr_curve.csv", pr_curve_csv(pooled_table, pr_curve_max_points))
    write_json(out_dir / "summary.json", summary)
    return summary


def _columns(extra_f: list[str], surface: bool, size_bins: list[float], bins_in_voxels: bool) -> list[str]:
    columns = FIRST_COLUMNS + ["iou", *extra_f, *COUNT_COLUMNS, *VOLUME_COLUMNS]
    columns += SURFACE_COLUMNS if surface else []
    columns += LESION_COLUMNS
    for name in lesionwise.size_bin_names(size_bins, "vox" if bins_in_voxels else "ml"):
        columns += [f"n_ref_{name}", f"n_detected_{name}", f"ltpr_{name}"]
    return columns


def _nifti_files(folder: Path, role: str) -> dict[str, Path]:
    if not folder.is_dir():
        raise LesionsegError(f"{role} folder {folder} does not exist or is not a folder.")
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        suffix = next((s for s in NIFTI_SUFFIXES if path.name.endswith(s)), None)
        if suffix is None or not path.is_file():
            continue
        case = path.name[: -len(suffix)]
        if case in found:
            raise LesionsegError(
                f"{role} folder {folder} holds case {case!r} twice: {found[case].name} and {path.name}."
            )
        found[case] = path
    if not found:
        raise LesionsegError(f"{role} folder {folder} holds no NIfTI files (<case>.nii.gz or <case>.nii).")
    return found


def evaluate_dirs(
    pred_dir: Path, ref_dir: Path, out_dir: Path, threshold: float = 0.5, device: str = "cpu",
    mask_dir: Path | None = None, **kwargs
) -> dict:
    """Match `<case>.nii.gz` / `<case>.nii` by case name in both folders and `evaluate_cases` them.

    A prediction without a reference, or a reference without a prediction, is a LesionsegError listing
    the unmatched names. `mask_dir`: brain masks `<case>.nii.gz` / `<case>.nii` restricting each case's
    evaluation; a case without one is a LesionsegError listing them (extra masks are ignored). Keyword
    arguments go to `evaluate_cases`.
    """
    preds = _nifti_files(Path(pred_dir), "prediction")
    refs = _nifti_files(Path(ref_dir), "reference")
    no_ref, no_pred = sorted(preds.keys() - refs.keys()), sorted(refs.keys() - preds.keys())
    if no_ref or no_pred:
        problems = []
        if no_ref:
            problems.append(f"predictions without a reference in {ref_dir}: {', '.join(no_ref)}")
        if no_pred:
            problems.append(f"references without a prediction in {pred_dir}: {', '.join(no_pred)}")
        raise LesionsegError("cases do not match; " + "; ".join(problems) + ".")
    cases = [(case, preds[case], refs[case]) for case in sorted(preds)]
    if mask_dir is not None:
        found = _nifti_files(Path(mask_dir), "brain mask")
        no_mask = [case for case, _, _ in cases if case not in found]
        if no_mask:
            raise LesionsegError(f"cases without a brain mask in {mask_dir}: {', '.join(no_mask)}.")
        kwargs["masks"] = [found[case] for case, _, _ in cases]
    return evaluate_cases(cases, Path(out_dir), threshold=threshold, device=device, **kwargs)
