"""Sweeps: every configuration of the `sweep:` block trained, predicted and evaluated, then reported.

```
experiments/<name>/sweep.yaml         the resolved sweep config
experiments/<name>/runs/<run-id>/     one folder per configuration, e.g. beta=0.7_seed=0
    metrics/                          the test cases at eval.threshold (lesionseg.evaluation.evaluate)
    thresholds.json                   the thresholds maximising validation DSC and F2 (operating_points)
    metrics-tuned-dsc/, -tuned-f2/    the test cases again at those thresholds
experiments/<name>/report/            summary.md/.csv, stats.json, report.html, figures (lesionseg.reporting.report)
```
A run folder with a `DONE` marker is finished and skipped when the sweep is started again; an unfinished
one is resumed from its last checkpoint, or set aside (`<run-id>.old-<timestamp>`) and run again.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from lesionseg.config import Config, dump_yaml, expand_sweep
from lesionseg.data.preprocessing import load_datalist, split_train_val
from lesionseg.devices import resolve_device
from lesionseg.errors import LesionsegError
from lesionseg.evaluation import operating_points
from lesionseg.evaluation.evaluate import evaluate_cases_at
from lesionseg.experiment.backends import run_all
from lesionseg.experiment.cv import CV_DIR, merge_finished
from lesionseg.experiment.preflight import evaluation_problems, preflight
from lesionseg.files import disk_error, write_json, write_text
from lesionseg.inference import load_model, predict_cases, validation_tables
from lesionseg.reporting.report import write_report
from lesionseg.runs import config_differences, is_done, mark_done, move_aside, saved_config, start_run_dir
from lesionseg.training.loop import train_run
from lesionseg.training.tensorboard_log import log_hparams


def run_one(cfg: Config, run_dir: Path, progress: bool = True) -> dict:
    """Train → predict the test cases → evaluate them, in `run_dir`; `DONE` is written last."""
    lists = load_datalist(cfg)
    if problems := evaluation_problems(cfg, lists):  # checked by run_sweep already; a Ray worker checks again
        raise LesionsegError("; ".join(problems))
    started = time.monotonic()
    start_run_dir(run_dir, cfg)
    trained = train_run(cfg, run_dir, progress=progress, lists=lists)
    device = resolve_device(cfg.train.device)
    model = load_model(run_dir, cfg, device)
    thresholds = tune_thresholds(model, cfg, lists, run_dir, device, progress)
    paths = predict_cases(model, cfg, lists["test"], run_dir / "predictions", device, progress=progress)
    cases = [(e["case"], p, Path(e["label"])) for e, p in zip(lists["test"], paths)]
    options = evaluation_options(cfg, lists["test"], device, progress,
                                 thresholds.get("component_filter", {}).get("min_component_ml", 0.0))
    # the test cases at eval.threshold and again at the thresholds chosen on the validation cases, in one pass
    tuned_dirs = {m: run_dir / f"metrics-tuned-{m}" for m in operating_points.TUNED_METRICS
                  if math.isfinite(thresholds[m]["threshold"])}
    summaries = evaluate_cases_at(
        cases, {run_dir / "metrics": cfg.eval.threshold,
                **{folder: thresholds[m]["threshold"] for m, folder in tuned_dirs.items()}}, **options)
    summary = summaries[run_dir / "metrics"]
    tuned = {m: summaries[folder] for m, folder in tuned_dirs.items()}
    log_hparams(run_dir, cfg, summary, tuned)  # this run's row in TensorBoard's HParams dashboard
    seconds = round(time.monotonic() - started, 1)
    mark_done(run_dir, {"seconds": seconds, "best_iteration": trained["best"]["iteration"]})
    return summary


def evaluation_options(cfg: Config, entries: list[dict], device, progress: bool, min_component_ml: float) -> dict:
    """The keyword arguments of `evaluate_cases_at` for the labelled `entries` under `cfg`."""
    return dict(device=str(device), progress=progress, lesion_min_voxels=cfg.eval.lesion_min_voxels,
                lesion_min_overlap=cfg.eval.lesion_min_overlap, size_bins_ml=cfg.eval.size_bins_ml,
                masks=[e["mask"] for e in entries] if cfg.eval.restrict_to_mask else None,
                # the calibration figures count the brain: its mask, else the non-zero voxels of the first image
                brains=[e["mask"] or e["image"][0] for e in entries], calibration_bins=cfg.eval.calibration_bins,
                min_component_ml=min_component_ml)


# The sizes `eval.min_component_ml: tune` chooses from (mL; 0: no post-processing).
COMPONENT_SIZES_ML = (0.0, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2)


def tune_thresholds(model, cfg: Config, lists: dict, run_dir: Path, device, progress: bool = True) -> dict:
    """The thresholds maximising the mean validation DSC and F2 (`operating_points`), in `thresholds.json`,
    and the smallest-lesion size of the post-processing (`eval.min_component_ml`).

    The validation cases are the run's own (`split.json`); the test cases play no part. Without
    validation cases both thresholds are NaN and the run is evaluated at `eval.threshold` only. With
    `min_component_ml: tune`, the size of `COMPONENT_SIZES_ML` maximising the mean validation DSC at
    `eval.threshold` (the smallest among ties; 0 without validation cases); otherwise the configured one.
    """
    _, val_cases = split_train_val(lists["training"], cfg)
    tune_size = cfg.eval.min_component_ml == "tune"
    sizes = COMPONENT_SIZES_ML if tune_size else ()
    tables, dsc = validation_tables(model, cfg, val_cases, device, progress, sizes) if val_cases else ([], None)
    if not tune_size:
        component = {"min_component_ml": cfg.eval.min_component_ml, "method": "configured"}
    elif dsc is None or dsc.size == 0:
        component = {"min_component_ml": 0.0, "method": "tune: no validation case, none removed"}
    else:
        means = np.nanmean(dsc, axis=0)  # DSC is defined for every case (1 when both masks are empty)
        best = int(np.argmax(means))  # the first maximum: the smallest size
        component = {"min_component_ml": sizes[best], "method": "tune: the size maximising the mean validation "
                     "DSC at eval.threshold (smallest among ties)",
                     "validation_dsc": dict(zip(map(str, sizes), means.round(6).tolist()))}
    result = {
        "configured": cfg.eval.threshold,
        "method": "maximum of the mean per-case metric over the validation cases, at every distinct "
                  "validation probability (highest threshold among ties); prob >= threshold is lesion",
        "validation_cases": [e["case"] for e in val_cases],
        **{m: operating_points.tune_threshold(tables, m) for m in operating_points.TUNED_METRICS},
    }
    if tune_size or cfg.eval.min_component_ml > 0:  # absent otherwise, as before the size filter existed
        result["component_filter"] = component
    write_json(run_dir / "thresholds.json", result)
    return result


def run_sweep(cfg: Config, progress: bool = True, force: bool = False) -> Path:
    """Run every configuration not finished yet, then write the report; returns the report folder.

    The runs go to `sweep.backend` (`lesionseg.experiment.backends`): `sweep.parallel` at once, each its own process.
    A failed run does not stop the others; after the report of the finished ones, `LesionsegError` names it.
    `force`: start the whole sweep over, moving an existing sweep folder aside (never deleting it).
    """
    runs = expand_sweep(cfg) if cfg.sweep else [("run", cfg)]
    sweep_dir = cfg.output_dir / cfg.name
    preflight(runs, evaluates=True)  # every file read once, every setting tried: nothing written or moved yet
    if not force:
        _refuse_relabelling(runs, sweep_dir)
    elif aside := move_aside(sweep_dir):
        tqdm.write(f"--force: moved the earlier sweep to {aside}")
    try:
        sweep_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise disk_error(sweep_dir, err, action="create the sweep folder") from None
    write_text(sweep_dir / "sweep.yaml", dump_yaml(cfg))
    todo = [(rid, c) for rid, c in runs if not is_done(sweep_dir / "runs" / rid)]
    if len(todo) < len(runs):
        tqdm.write(f"{len(runs) - len(todo)} of {len(runs)} runs already finished in {sweep_dir / 'runs'}")
    failed = run_all(todo, sweep_dir, cfg.sweep_options, progress=progress) if todo else {}
    if len(failed) == len(runs):
        raise LesionsegError(_failures(failed, sweep_dir))
    for cid in merge_finished(sweep_dir, runs, cfg.sweep, progress):  # cross-validation: the folds together
        tqdm.write(f"merged the folds of {cid} into {sweep_dir / CV_DIR / cid}")
    report = write_report(sweep_dir)
    if failed:
        raise LesionsegError(f"{_failures(failed, sweep_dir)}\nThe report of the finished runs is in {report}.")
    return report


def _refuse_relabelling(runs: list[tuple[str, Config]], sweep_dir: Path) -> None:
    """A finished run counts as finished for this sweep only if it was trained with the run's config now
    (`runs.config_differences`); otherwise the sweep would report it under settings it never had."""
    changed = {}
    for rid, run_cfg in runs:
        run_dir = sweep_dir / "runs" / rid
        if is_done(run_dir) and (lines := config_differences(saved_config(run_dir), run_cfg)):
            changed[rid] = lines
    if changed:
        details = "\n".join(f"  {rid}: " + "; ".join(lines) for rid, lines in changed.items())
        raise LesionsegError(
            f"{len(changed)} finished run(s) of {sweep_dir} were trained with another config (run → now):\n"
            f"{details}\nA finished run is never relabelled: undo the change, give the sweep another name "
            "(name=...), or start it over with --force (moves the sweep folder aside; nothing is deleted).")


def _failures(failed: dict[str, str], sweep_dir: Path) -> str:
    lines = [f"{len(failed)} run(s) of {sweep_dir} failed:"]
    lines += [f"  {rid}: {message}" for rid, message in failed.items()]
    lines.append("Fix the cause and run the same command again: finished runs are skipped, the failed ones "
                 "resume from their last checkpoint or start again.")
    return "\n".join(lines)
