"""What test files share: the repository's paths, the tiny training settings, the CLI runner, small NIfTI
datasets and hand-made sweep folders. Fixtures live in conftest.py."""

from __future__ import annotations

import csv
import json
import math
import statistics
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np

from lesionseg.config import Config, dump_yaml, expand_sweep, load_config
from lesionseg.runs import mark_done

REPO = Path(__file__).resolve().parents[1]

# A run small enough for a test: a two-level U-Net on 16³ patches, a handful of iterations.
TINY = [
    "data.patch_size=[16,16,16]",
    "data.val_cases=1",
    "model.channels=[4,8]",
    "model.strides=[2]",
    "model.res_units=1",
    "train.iterations=4",
    "train.val_every=2",
    "train.log_every=2",
    "eval.sw_batch_size=2",
]

def tversky_by_hand(p, g, alpha: float, beta: float, smooth: float) -> float:
    """Salehi et al. 2017, eq. (3) for one foreground class: 1 − TP / (TP + α·FP + β·FN), on probabilities `p`
    and a binary label `g` (tensors)."""
    tp, fp, fn = (p * g).sum(), (p * (1 - g)).sum(), ((1 - p) * g).sum()
    return float(1 - (tp + smooth) / (tp + alpha * fp + beta * fn + smooth))


# Runs `lesionseg ARGS…` with writes past LIMIT bytes refused by the kernel (EFBIG; SIGXFSZ ignored so
# that the write fails instead of killing the process).
LIMITED = """\
import resource, runpy, signal, sys
limit = int(sys.argv.pop(1))
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
sys.argv[0] = "lesionseg"
runpy.run_module("lesionseg", run_name="__main__", alter_sys=True)
"""


def lesionseg(*args, cwd, check=True, fsize: int | None = None,
              prefix: list[str] | None = None) -> subprocess.CompletedProcess:
    """`python -m lesionseg ARGS…` in a subprocess; `check`: fail the test, with its output, unless it exits 0;
    `fsize`: the file-size limit; `prefix`: a command to run it under."""
    run = ["-c", LIMITED, str(fsize)] if fsize is not None else ["-m", "lesionseg"]
    result = subprocess.run([*(prefix or []), sys.executable, *run, *map(str, args)], cwd=cwd,
                            capture_output=True, text=True, timeout=600)
    if check and result.returncode != 0:
        raise AssertionError(f"lesionseg {' '.join(map(str, args))} failed:\n{result.stdout}\n{result.stderr}")
    return result


# Small NIfTI datasets (tests/data).
AFFINE = np.diag([-1.0, 1.0, 2.0, 1.0])  # LAS, 1 × 1 × 2 mm
SHAPE = (8, 8, 6)


def save(path, array, affine=AFFINE):
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(array), affine), str(path))
    return path


def config(datalist, *overrides):
    return load_config(REPO / "configs" / "base.yaml", [f"data.datalist={datalist}", *overrides])


# Hand-made sweep folders (tests/reporting): a finished run's files, no training.
COLUMNS = ["dsc", "f2", "sensitivity", "precision", "specificity", "apr", "hd95_mm", "ltpr", "lfdr", "lesion_f1",
           "cpm", "ltpr_1fp", "ece"]
BINS = ["0-0.01ml", "0.01-0.1ml", "0.1-1ml", "1ml+"]


def case_values(rng: np.random.Generator, beta: float, case: int) -> dict[str, float]:
    """Metrics of one case; recall rises with β. Case 0 has no reference lesion (sensitivity undefined)."""
    if case == 0:
        return {"dsc": 0.0, "f2": 0.0, "sensitivity": math.nan, "precision": 0.0, "specificity": 0.999,
                "apr": math.nan, "hd95_mm": math.nan, "ltpr": math.nan, "lfdr": 1.0, "lesion_f1": 0.0,
                "cpm": math.nan, "ltpr_1fp": math.nan, "ece": 0.001}
    sens = float(np.clip(0.4 + 0.6 * (beta - 0.5) + 0.05 * case / 10 + rng.normal(0, 0.03), 0, 1))
    prec = float(np.clip(0.9 - 0.8 * (beta - 0.5) + rng.normal(0, 0.03), 0, 1))
    return {"dsc": 2 * sens * prec / (sens + prec), "f2": 5 * sens * prec / (sens + 4 * prec),
            "sensitivity": sens, "precision": prec, "specificity": 0.999, "apr": float(rng.uniform(0.5, 0.7)),
            "hd95_mm": float(rng.uniform(2, 12)), "ltpr": sens, "lfdr": 1 - prec, "lesion_f1": 0.5 * (sens + prec),
            "cpm": 0.8 * sens, "ltpr_1fp": 0.9 * sens, "ece": float(rng.uniform(0.001, 0.01) * (1 + beta))}


def _stats(values: list[float]) -> dict:
    defined = [v for v in values if not math.isnan(v)]
    return {"mean": statistics.fmean(defined) if defined else math.nan,
            "sd": statistics.stdev(defined) if len(defined) > 1 else math.nan,
            "median": statistics.median(defined) if defined else math.nan,
            "n": len(defined), "n_undefined": len(values) - len(defined)}


def write_run(run_dir: Path, cfg: Config, n_cases: int, rng: np.random.Generator, tuned: bool = True) -> None:
    """A finished run's files as `run_one` writes them; `tuned`: with thresholds tuned on validation, where
    every β reaches the same operating point (the β effect is only a threshold shift, by construction)."""
    beta = cfg.loss.beta
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(dump_yaml(cfg))
    write_metrics(run_dir / "metrics", {f"case_{i:02d}": case_values(rng, beta, i) for i in range(n_cases)}, beta,
                  rng, 0.5)
    grid = np.round(np.arange(1, 100) / 100, 2)
    curves = {"dsc": 0.8 - (grid - 0.6 + beta / 3) ** 2, "f2": 0.85 - (grid - 0.4 + beta / 3) ** 2,
              "sensitivity": 1 - grid ** (2 - beta), "precision": grid ** (0.5 + beta)}
    lines = "".join(",".join(repr(float(v)) for v in [t, *(curves[m][i] for m in curves), *(curves[m][i] for m in curves)])
                    + "\n" for i, t in enumerate(grid))
    names = ",".join(curves)
    (run_dir / "metrics" / "threshold_curves.csv").write_text(
        f"threshold,{names},{','.join(f'{m}_pooled' for m in curves)}\n" + lines)
    fp, sens = 40 * (1 - grid) ** (4 - 2 * beta), (1 - grid ** (1 + beta)) * 0.9
    (run_dir / "metrics" / "froc.csv").write_text(
        "threshold,sensitivity,fp_per_scan,sensitivity_pooled,n_detected,n_ref_lesions,n_false_lesions\n" + "".join(
            f"{float(t)!r},{float(s)!r},{float(f)!r},{float(s)!r},{round(26 * s)},26,{round(f * n_cases)}\n"
            for t, s, f in zip(grid, sens, fp)))
    edges = np.linspace(0, 1, 11)
    counts = [100_000, 500, 200, 100, 80, 60, 50, 40, 30, int(20 + 100 * beta)]
    (run_dir / "metrics" / "calibration.csv").write_text(
        "bin_low,bin_high,n_voxels,confidence,observed\n" + "".join(
            f"{edges[b]:.17g},{edges[b + 1]:.17g},{counts[b]},{edges[b] + 0.05:.17g},{min(1.0, edges[b] + 0.05 * (1 - beta)):.17g}\n"
            for b in range(10)))
    if tuned:
        thresholds = {"configured": 0.5}
        for m, base in (("dsc", 0.7), ("f2", 0.5)):
            t = round(base - 0.5 * (beta - 0.5) + float(rng.normal(0, 0.01)), 4)
            thresholds[m] = {"threshold": t, "value": 0.7}
            write_metrics(run_dir / f"metrics-tuned-{m}",
                          {f"case_{i:02d}": case_values(rng, 0.6, i) for i in range(n_cases)}, 0.6, rng, t)
        (run_dir / "thresholds.json").write_text(json.dumps(thresholds))
    mark_done(run_dir)


def write_metrics(metrics: Path, rows: dict, beta: float, rng: np.random.Generator, threshold: float) -> None:
    metrics.mkdir(parents=True)
    with (metrics / "cases.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["case", *COLUMNS])
        writer.writerows([case, *(repr(v[c]) if not math.isnan(v[c]) else "nan" for c in COLUMNS)]
                         for case, v in rows.items())
    sens, prec = 0.5 + 0.5 * (beta - 0.5), 0.8 - 0.5 * (beta - 0.5)
    n_ref = {"0-0.01ml": 8, "0.01-0.1ml": 12, "0.1-1ml": 6, "1ml+": 0}
    n_det = {"0-0.01ml": int(rng.integers(2, 8)), "0.01-0.1ml": int(rng.integers(6, 12)), "0.1-1ml": 6, "1ml+": 0}
    pooled = {"dsc": 2 * sens * prec / (sens + prec), "f2": 5 * sens * prec / (sens + 4 * prec),
              "sensitivity": sens, "precision": prec, "apr": float(rng.uniform(0.5, 0.7)),
              "n_ref_lesions": 26, "ltpr": 0.7, "lfdr": 0.3, "lesion_f1": 0.7, "cpm": 0.5 * sens, "ltpr_1fp": 0.6 * sens,
              "ece": 0.004 * (1 + beta)}
    for b in BINS:
        pooled.update({f"n_ref_{b}": n_ref[b], f"n_detected_{b}": n_det[b],
                       f"ltpr_{b}": n_det[b] / n_ref[b] if n_ref[b] else math.nan})
    summary = {"threshold": threshold, "n_cases": len(rows),
               "per_case": {c: _stats([v[c] for v in rows.values()]) for c in COLUMNS}, "pooled": pooled}
    (metrics / "summary.json").write_text(json.dumps(summary))
    curve = [(0.1, 0.2, 0.95), (0.5, prec, sens), (0.9, 0.97, 0.2), (math.inf, 1.0, 0.0)]
    lines = "".join(f"{t},{p},{r}\n" for t, p, r in curve)
    (metrics / "pr_curve.csv").write_text("threshold,precision,recall\n" + lines)


def make_sweep(root: Path, betas, seeds=None, n_cases: int = 8, skip=(), tuned: bool = True) -> Path:
    sweep = {"loss.beta": list(betas), **({"seed": list(seeds)} if seeds else {})}
    cfg = Config.model_validate({"name": "hand", "sweep": sweep})
    sweep_dir = root / "hand"
    sweep_dir.mkdir(parents=True)
    (sweep_dir / "sweep.yaml").write_text(dump_yaml(cfg))
    for i, (rid, run_cfg) in enumerate(expand_sweep(cfg)):
        if rid not in skip:
            write_run(sweep_dir / "runs" / rid, run_cfg, n_cases, np.random.default_rng(i), tuned)
    return sweep_dir
