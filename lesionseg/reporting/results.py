"""A sweep folder's finished runs, read back: which are finished, where the others stand, and their files.

Each finished run (a `DONE` marker) is read once, all the report needs of it (`collect_runs`, `read_run`):
`{"id", "dir", "assignment", "cross_validated", "values", "beta", "alpha"}` — its swept values and whole
config — then its files: `summary` (`metrics/summary.json`), `thresholds` (`thresholds.json`, thresholds tuned
on validation; `{}` without), `tuned` (the summaries of `metrics-tuned-<metric>/`), `ensemble` (the fold
ensemble's summary of a cross-validated configuration; None without), `cases` (`metrics/cases.csv`, per case),
`tuned_cases` (`metrics-tuned-<metric>/cases.csv` per tuned metric; `{}` without), `pr_curve`
(`metrics/pr_curve.csv`), `threshold_curves`, `calibration` and `froc` (`metrics/<key>.csv`; None without). The other
reporting modules read no file, except `case_pictures`, which reads the few volumes it draws.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import torch
import yaml

from lesionseg.config import Config, expand_sweep, flat_keys, validate
from lesionseg.errors import LesionsegError
from lesionseg.evaluation.froc import COLUMNS as FROC_COLUMNS
from lesionseg.evaluation.operating_points import CURVE_METRICS, TUNED_METRICS
from lesionseg.experiment.cv import configurations
from lesionseg.runs import RunPaths, SweepPaths, is_done, read_json


def sweep_config(sweep_dir: Path) -> Config:
    """The resolved config of a sweep folder (`sweep.yaml`)."""
    sweep_file = SweepPaths(sweep_dir).config
    if not sweep_file.is_file():
        raise LesionsegError(f"{sweep_dir} is not a sweep folder (no sweep.yaml); run `lesionseg sweep` first")
    return validate(yaml.safe_load(sweep_file.read_text(encoding="utf-8")), source=str(sweep_file))


def collect_runs(sweep_dir: Path, cfg: Config | None = None) -> tuple[list[dict], list[str]]:
    """Finished runs as `{"id", "dir", "assignment", "values", "beta", "alpha", "summary", …}` (`values`:
    the run's whole resolved config, dotted keys; then its files, `read_run`), and the ids missing.

    In a cross-validated sweep (`data.fold` swept) each configuration's merged folder `cv/<id>/` is its
    run (`lesionseg.experiment.cv`), finished when all its folds are; the missing ids are the unfinished fold runs."""
    cfg = cfg if cfg is not None else sweep_config(sweep_dir)  # the caller may have read sweep.yaml already
    expanded = expand_sweep(cfg) if cfg.sweep else [("run", cfg)]
    folded, paths = configurations(expanded, cfg.sweep), SweepPaths(sweep_dir)
    if folded:
        entries = [(cid, members[0][1], paths.merged(cid), [rid for rid, _ in members])
                   for cid, members in folded.items()]
    else:
        entries = [(rid, run_cfg, paths.run(rid), [rid]) for rid, run_cfg in expanded]
    runs, missing = [], []
    for rid, run_cfg, run_dir, parts in entries:
        if not is_done(run_dir):
            missing += [p for p in parts if not is_done(paths.run(p))] or [rid]
            continue
        values = flat_keys(run_cfg.model_dump())
        assignment = {key: values[key] for key in cfg.sweep if not (folded and key == "data.fold")}
        runs.append({
            "id": rid,
            "dir": run_dir,
            "assignment": assignment,
            "cross_validated": bool(folded),
            "values": {**flat_keys(run_cfg.model_dump(mode="json")), **({"data.fold": None} if folded else {})},
            "beta": run_cfg.loss.beta,
            "alpha": run_cfg.loss.resolved_alpha,
            **read_run(run_dir),
        })
    return runs, missing


def read_run(run_dir: Path) -> dict:
    """Every file of a finished run that the report reads, each read once (the keys: the module docstring)."""
    paths = RunPaths(run_dir)
    return {
        "summary": read_json(paths.summary),
        "thresholds": read_json(paths.thresholds) if paths.thresholds.is_file() else {},
        "tuned": {m: read_json(path) for m in TUNED_METRICS if (path := paths.tuned(m) / "summary.json").is_file()},
        "ensemble": read_json(path) if (path := RunPaths(paths.ensemble).summary).is_file() else None,
        "cases": read_cases(run_dir),
        "tuned_cases": {m: read_cases(run_dir, m) for m in TUNED_METRICS},
        "pr_curve": read_pr_curve(run_dir),
        "threshold_curves": read_threshold_curves(run_dir),
        "calibration": read_calibration(run_dir),
        "froc": read_froc(run_dir),
    }


def run_state(run_dir: Path) -> str:
    """Where an unfinished run stands: not started, interrupted (after which iteration), or trained but
    not yet evaluated; re-running the sweep resumes it from there."""
    paths = RunPaths(run_dir)
    checkpoint = paths.last
    if not run_dir.is_dir():
        return "not started"
    if paths.train_summary.is_file():
        return "trained, prediction or evaluation unfinished"
    if checkpoint.is_file():
        try:
            iteration = torch.load(checkpoint, map_location="cpu", weights_only=True)["iteration"]
        except Exception:  # a checkpoint we cannot read says nothing about the iteration; still unfinished
            return "interrupted (checkpoint unreadable)"
        return f"interrupted after iteration {iteration}"
    return "started, stopped before its first checkpoint"


def _read_csv_rows(path: Path) -> list[dict[str, str]]:
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            return list(csv.DictReader(handle))
    except FileNotFoundError:
        raise LesionsegError(f"missing file {path}") from None
    except OSError as err:
        raise LesionsegError(f"cannot read {path}: {err}") from None


def _columns(path: Path, names: tuple[str, ...]) -> dict[str, np.ndarray]:
    try:
        rows = _read_csv_rows(path)
        return {k: np.array([float(r[k]) for r in rows]) for k in names}
    except (ValueError, KeyError) as err:
        raise LesionsegError(f"cannot read {path}: {err}") from None


def read_cases(run_dir: Path, tuned: str | None = None) -> dict[str, dict[str, float]]:
    """`metrics/cases.csv` (or, for the threshold tuned for metric `tuned`, `metrics-tuned-<tuned>/`) as
    `{case: {column: value}}` (`nan` read as NaN); `{}` when a tuned-threshold folder does not exist (a run
    without validation cases, or from before tuning)."""
    paths = RunPaths(run_dir)
    path = (paths.tuned(tuned) if tuned else paths.metrics) / "cases.csv"
    if tuned and not path.is_file():
        return {}
    try:
        return {r["case"]: {k: float(v) for k, v in r.items() if k != "case"} for r in _read_csv_rows(path)}
    except (ValueError, KeyError) as err:
        raise LesionsegError(f"cannot read {path}: {err}") from None


def read_pr_curve(run_dir: Path) -> dict[str, np.ndarray]:
    """`metrics/pr_curve.csv` as arrays `threshold, precision, recall`."""
    return _columns(RunPaths(run_dir).metrics / "pr_curve.csv", ("threshold", "precision", "recall"))


def read_threshold_curves(run_dir: Path) -> dict[str, np.ndarray] | None:
    """`metrics/threshold_curves.csv` as arrays (`threshold` and the per-case means); None if absent."""
    path = RunPaths(run_dir).metrics / "threshold_curves.csv"
    return _columns(path, ("threshold", *CURVE_METRICS)) if path.is_file() else None


def read_calibration(run_dir: Path) -> dict[str, np.ndarray] | None:
    """`metrics/calibration.csv` as arrays; None if absent."""
    path = RunPaths(run_dir).metrics / "calibration.csv"
    names = ("bin_low", "bin_high", "n_voxels", "confidence", "observed")
    return _columns(path, names) if path.is_file() else None


def read_froc(run_dir: Path) -> dict[str, np.ndarray] | None:
    """`metrics/froc.csv` as arrays (`evaluation.froc.COLUMNS`); None if absent (evaluated before it existed)."""
    path = RunPaths(run_dir).metrics / "froc.csv"
    return _columns(path, tuple(FROC_COLUMNS)) if path.is_file() else None
