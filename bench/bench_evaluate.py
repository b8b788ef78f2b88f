"""Benchmark: lesionseg's evaluator against scikit-learn + MedPy (+ MONAI) on the same volumes.

Prints figures; not a test. Synthetic MS-like cases of 182×218×182 voxels (1 mm, MNI-sized): ~25 lesions
of 1–6 mm radius per case (a few mL of lesion load), float32 "network" probabilities with blurred
boundaries, missed small lesions, false-positive blobs, noise inside the brain and exact zeros outside.

The metric set timed on both sides, per case: DSC, IoU, F2, sensitivity, precision, specificity, APR,
volumes, HD95, ASSD and lesion-wise detection (26-connected components), plus the pooled APR over all voxels
of all cases. The alternative is the obvious code: scikit-learn's scores on the flattened voxels, MedPy's
`hd95`/`assd`, SciPy components with `ndimage.sum_labels` for the lesion overlaps, and scikit-learn's
`average_precision_score` on the concatenated voxels for the pooled APR. MONAI's metric classes are run on
a few cases to check HD95/ASSD (its HD95 definition is ours; MedPy's differs, see lesionseg/evaluation/surface.py).

    .venv/bin/python bench/bench_evaluate.py [--cases 20] [--threads N] [--monai-cases 3]
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import tempfile
import time
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from medpy.metric.binary import assd as medpy_assd
from medpy.metric.binary import hd95 as medpy_hd95
from scipy import ndimage
from sklearn.metrics import average_precision_score, f1_score, fbeta_score, jaccard_score, precision_score, recall_score

from lesionseg.config import EVAL_DEFAULTS
from lesionseg.evaluation import froc, metrics
from lesionseg.evaluation.evaluate import case_metrics, evaluate_cases
from lesionseg.evaluation.lesionwise import lesion_counts
from lesionseg.evaluation.volumes import load_case

SHAPE = (182, 218, 182)
SPACING = (1.0, 1.0, 1.0)
THRESHOLD = 0.5


def synthetic_case(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(prob float32, ref uint8) of one MS-like case."""
    rng = np.random.default_rng(seed)
    grid = np.ogrid[tuple(slice(0, n) for n in SHAPE)]
    centre = [n / 2 for n in SHAPE]
    brain = sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, (70, 90, 72))) <= 1
    ref = np.zeros(SHAPE, bool)
    detected = np.zeros(SHAPE, bool)
    for _ in range(rng.poisson(25)):
        radius = np.exp(rng.uniform(np.log(1.0), np.log(6.0))) * rng.uniform(0.7, 1.3, 3)
        c = [int(x) for x in rng.normal(centre, (20, 28, 18))]
        box = tuple(slice(max(ci - 8, 0), min(ci + 9, n)) for ci, n in zip(c, SHAPE))
        local = np.ogrid[box]
        blob = sum(((g - ci) / r) ** 2 for g, ci, r in zip(local, c, radius)) <= 1
        ref[box] |= blob
        if rng.random() < min(0.95, 0.35 + 0.15 * radius.mean()):  # small lesions are missed more often
            detected[box] |= blob
    for _ in range(rng.poisson(6)):  # false-positive blobs
        c = [int(x) for x in rng.normal(centre, (22, 30, 20))]
        box = tuple(slice(max(ci - 2, 0), min(ci + 2, n)) for ci, n in zip(c, SHAPE))
        detected[box] = True
    ref &= brain
    signal = ndimage.gaussian_filter(detected.astype(np.float32), sigma=1.2)
    logit = 10 * (signal - 0.45) + rng.normal(0, 1.0, SHAPE).astype(np.float32) - 2
    prob = np.where(brain, 1 / (1 + np.exp(-logit)), 0).astype(np.float32)
    return prob, ref.astype(np.uint8)


def baseline_case(prob: np.ndarray, ref: np.ndarray) -> dict[str, float]:
    """The same metric set with scikit-learn, MedPy and SciPy, written the obvious way."""
    y, s = ref.ravel().astype(bool), prob.ravel()
    p = s >= THRESHOLD
    out = {
        "dsc": f1_score(y, p, zero_division=1.0),
        "iou": jaccard_score(y, p, zero_division=1.0),
        "f2": fbeta_score(y, p, beta=2, zero_division=1.0),
        "sensitivity": recall_score(y, p, zero_division=np.nan),
        "precision": precision_score(y, p, zero_division=np.nan),
        "specificity": recall_score(y, p, pos_label=0, zero_division=np.nan),
        "apr": average_precision_score(y, s) if y.any() else math.nan,
        "vol_ref_ml": y.sum() * math.prod(SPACING) / 1000,
        "vol_pred_ml": p.sum() * math.prod(SPACING) / 1000,
    }
    pred3, ref3 = p.reshape(SHAPE), y.reshape(SHAPE)
    if pred3.any() and ref3.any():
        out["hd95_medpy_mm"] = medpy_hd95(pred3, ref3, voxelspacing=SPACING)
        out["assd_mm"] = medpy_assd(pred3, ref3, voxelspacing=SPACING)
    structure = np.ones((3, 3, 3), bool)
    ref_labels, n_ref = ndimage.label(ref3, structure=structure)
    pred_labels, n_pred = ndimage.label(pred3, structure=structure)
    ref_hit = ndimage.sum_labels(pred3, ref_labels, index=np.arange(1, n_ref + 1)) >= 1
    pred_hit = ndimage.sum_labels(ref3, pred_labels, index=np.arange(1, n_pred + 1)) >= 1
    out.update(n_ref_lesions=n_ref, n_pred_lesions=n_pred, n_detected=int(ref_hit.sum()), n_pred_tp=int(pred_hit.sum()))
    return out


def monai_surface(pred: np.ndarray, ref: np.ndarray) -> tuple[float, float]:
    from monai.metrics import HausdorffDistanceMetric, SurfaceDistanceMetric

    p, r = torch.from_numpy(pred)[None, None].float(), torch.from_numpy(ref)[None, None].float()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*always_return_as_numpy.*", category=FutureWarning)
        hd = HausdorffDistanceMetric(percentile=95)(p, r, spacing=list(SPACING)).item()
        asd = SurfaceDistanceMetric(symmetric=True)(p, r, spacing=list(SPACING)).item()
    return hd, asd


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=20)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--monai-cases", type=int, default=3, help="cases checked against MONAI's classes")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"torch {torch.__version__} ({torch.get_num_threads()} threads), device {args.device}, "
          f"cuda available: {torch.cuda.is_available()}")

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        t0 = time.perf_counter()
        cases = []
        for i in range(args.cases):
            prob, ref = synthetic_case(i)
            affine = np.diag([*SPACING, 1.0])
            nib.save(nib.Nifti1Image(prob, affine), str(folder / f"pred_{i:02d}.nii.gz"))
            nib.save(nib.Nifti1Image(ref, affine), str(folder / f"ref_{i:02d}.nii.gz"))
            cases.append((f"case{i:02d}", folder / f"pred_{i:02d}.nii.gz", folder / f"ref_{i:02d}.nii.gz"))
        print(f"{args.cases} cases of {SHAPE} written in {time.perf_counter() - t0:.1f} s")

        t0 = time.perf_counter()
        loaded = [load_case(p, r, device=args.device) for _, p, r in cases]
        t_load = time.perf_counter() - t0
        loads = [(prob.cpu().numpy(), ref.cpu().numpy().astype(np.uint8)) for prob, ref, _ in loaded]
        loads_bytes = sum(p.nbytes + r.nbytes for p, r in loads)
        print(f"reading the NIfTI files (both sides pay this): {t_load:.2f} s, {t_load / args.cases:.3f} s/case")
        print(f"lesion load: {np.mean([r.sum() for _, r in loads]) / 1000:.1f} mL/case, "
              f"{np.mean([ndimage.label(r, np.ones((3, 3, 3)))[1] for _, r in loads]):.0f} lesions/case; "
              f"{loads_bytes / 2**20:.0f} MiB of voxels in memory")

        # --- lesionseg: metrics on loaded tensors (the evaluator's per-case work) + pooled table merge
        t0 = time.perf_counter()
        ours, tables = [], []
        for prob, ref, spacing in loaded:
            row, _, _, table = case_metrics(prob, ref, spacing, THRESHOLD)
            ours.append(row)
            tables.append(table)
        t_ours_cases = time.perf_counter() - t0
        pooled_table = metrics.merge_pr_tables(tables)
        pooled_ours = metrics.average_precision(pooled_table)
        t_ours = time.perf_counter() - t0
        n_distinct = pooled_table[0].numel()
        del tables, pooled_table

        # --- the FROC (part of every evaluation): its share, and SciPy labelling at every threshold on one case
        t0 = time.perf_counter()
        froc_counts = [froc.case_counts(prob, ref, math.prod(spacing) / 1000.0, EVAL_DEFAULTS)
                       for prob, ref, spacing in loaded]
        t_froc = time.perf_counter() - t0
        prob, ref, spacing = loaded[0]
        t0 = time.perf_counter()
        by_scipy = []
        for t in froc.THRESHOLDS:
            c = lesion_counts(prob >= float(t), ref, math.prod(spacing) / 1000.0)
            by_scipy.append([c["n_detected"], c["n_ref_lesions"], c["n_pred_lesions"] - c["n_pred_tp"]])
        t_froc_scipy = time.perf_counter() - t0
        same = bool(np.array_equal(np.array(by_scipy), froc_counts[0]))
        del loaded

        t0 = time.perf_counter()
        evaluate_cases(cases, folder / "out", threshold=THRESHOLD, device=args.device, progress=False)
        t_end_to_end = time.perf_counter() - t0

        # --- the alternative
        t0 = time.perf_counter()
        theirs = [baseline_case(prob, ref) for prob, ref in loads]
        t_theirs_cases = time.perf_counter() - t0
        t0 = time.perf_counter()
        all_ref = np.concatenate([r.ravel() for _, r in loads]).astype(bool)
        all_prob = np.concatenate([p.ravel() for p, _ in loads])
        pooled_theirs = average_precision_score(all_ref, all_prob)
        t_theirs_pooled = time.perf_counter() - t0
        del all_ref, all_prob
        t_theirs = t_theirs_cases + t_theirs_pooled

        # --- agreement
        worst: dict[str, float] = {}
        for a, b in zip(ours, theirs):
            for key in ("dsc", "iou", "f2", "sensitivity", "precision", "specificity", "apr", "vol_ref_ml",
                        "vol_pred_ml", "assd_mm", "n_ref_lesions", "n_pred_lesions", "n_detected", "n_pred_tp"):
                if key in b:
                    diff = 0.0 if (math.isnan(a[key]) and math.isnan(b[key])) else abs(a[key] - b[key])
                    worst[key] = max(worst.get(key, 0.0), diff)
        print("\nlargest |lesionseg − reference| over cases:")
        print("  " + ", ".join(f"{k} {v:.1e}" for k, v in worst.items()))
        print(f"  pooled APR: lesionseg {pooled_ours:.12f}, scikit-learn {pooled_theirs:.12f}, "
              f"|diff| {abs(pooled_ours - pooled_theirs):.1e}")
        hd_ours = [r["hd95_mm"] for r in ours]
        hd_medpy = [r.get("hd95_medpy_mm", math.nan) for r in theirs]
        print(f"  HD95 mean over cases: lesionseg {np.nanmean(hd_ours):.2f} mm (MONAI's definition), "
              f"MedPy {np.nanmean(hd_medpy):.2f} mm (pooled-directions definition; expected to differ)")

        t0 = time.perf_counter()
        for (prob, ref), row in zip(loads[: args.monai_cases], ours):
            hd, asd = monai_surface(prob >= THRESHOLD, ref.astype(bool))
            print(f"  MONAI HD95 {hd:.4f} vs lesionseg {row['hd95_mm']:.4f}; "
                  f"MONAI ASSD {asd:.4f} vs lesionseg {row['assd_mm']:.4f}")
        t_monai = time.perf_counter() - t0

        n = args.cases
        print(f"\ntimes for {n} cases (metrics only, volumes already in memory):")
        print(f"  lesionseg:                    {t_ours:7.2f} s  ({t_ours_cases / n:.3f} s/case "
              f"+ {t_ours - t_ours_cases:.1f} s pooled APR from {n_distinct:,} distinct values)")
        print(f"  scikit-learn + MedPy + SciPy: {t_theirs:7.2f} s  ({t_theirs_cases / n:.3f} s/case "
              f"+ {t_theirs_pooled:.1f} s pooled APR)")
        print(f"  ratio: {t_theirs / t_ours:.1f}x faster in all, {t_theirs_cases / t_ours_cases:.1f}x per case, "
              f"{t_theirs_pooled / (t_ours - t_ours_cases):.1f}x pooled APR")
        if args.monai_cases:
            print(f"  MONAI HD95 + ASSD classes: {t_monai / min(n, args.monai_cases):7.3f} s/case (check only)")
        print(f"end to end `evaluate_cases` (read files + metrics + write outputs): {t_end_to_end:.2f} s "
              f"({t_end_to_end / n:.3f} s/case; of which reading ≈ {t_load / n:.3f} s/case)")
        print(f"FROC at {len(froc.THRESHOLDS)} thresholds (inside the end-to-end figure): {t_froc / n:.3f} s/case, "
              f"the evaluator {t_end_to_end / (t_end_to_end - t_froc):.2f}x what it takes without it; SciPy "
              f"`lesion_counts` at every threshold: {t_froc_scipy:.2f} s on case 0 "
              f"({'identical counts' if same else 'COUNTS DIFFER'})")


if __name__ == "__main__":
    main()
