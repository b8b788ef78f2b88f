"""One run, start to finish — the lifecycle that `lesionseg train`, sweeps and every backend share.

`run_one`: start the run folder (or find the interrupted run to resume) → train → and, for a run that is
evaluated (every sweep run), tune the thresholds on the validation cases → predict the test cases →
evaluate them at `eval.threshold` and at the tuned thresholds → `DONE`, written last. The folder's files
are named by `lesionseg.runs.RunPaths`. `DONE` records whether the run collapsed
(`lesionseg.evaluation.collapse`): `"collapse": {"validation": flags, "test": flags}` — the validation
cases at the best checkpoint (the weights that are tested; None without validation cases) and the test
cases at `eval.threshold` (an evaluated run only); `[]`: not collapsed.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import yaml
from tqdm import tqdm

from lesionseg.config import Config, validate
from lesionseg.data import store
from lesionseg.data.preprocessing import load_datalist, split_train_val
from lesionseg.devices import resolve_device
from lesionseg.errors import LesionsegError
from lesionseg.evaluation import collapse, froc, operating_points, registry
from lesionseg.evaluation.evaluate import evaluate_cases_at
from lesionseg.experiment.preflight import evaluation_problems
from lesionseg.files import write_json
from lesionseg.inference import load_model, predict_cases, validation_tables
from lesionseg.runs import RunPaths, mark_done, open_run_dir
from lesionseg.training.loop import train_run
from lesionseg.training.tensorboard_log import log_hparams


def run_one(cfg: Config, run_dir: Path, progress: bool = True, evaluate: bool = True) -> dict:
    """Train, then (`evaluate`) tune → predict → evaluate, in `run_dir`; `DONE` is written last. Returns
    the test summary (`metrics/summary.json`), or without `evaluate` the training summary."""
    lists = load_datalist(cfg)
    if evaluate and (problems := evaluation_problems(cfg, lists)):  # run_sweep checked; a Ray worker checks again
        raise LesionsegError("; ".join(problems))
    started = time.monotonic()
    # an interrupted run's last.pt, read once: open_run_dir checks that it reads, train_run resumes from it
    trained = train_run(cfg, run_dir, progress=progress, lists=lists, resume=open_run_dir(run_dir, cfg))
    best = trained["best"]
    validation = best.get("collapse")  # None: no validation cases
    tqdm.write(f"[{run_dir.name}] trained to iteration {cfg.train.iterations} in {time.monotonic() - started:.0f} s; "
               + (f"best validation DSC {best['dsc']:.3f} at iteration {best['iteration']}" if "dsc" in best
                  else "no validation cases: the last weights are kept"))
    if not evaluate:
        mark_done(run_dir, {"best_iteration": best["iteration"], "collapse": {"validation": validation}})
        return trained
    paths = RunPaths(run_dir)
    device = resolve_device(cfg.train.device)
    model = load_model(run_dir, cfg, device)
    thresholds = tune_thresholds(model, cfg, lists, run_dir, device, progress)
    predicted = predict_cases(model, cfg, lists["test"], paths.predictions, device, progress=progress)
    cases = [(e["case"], p, Path(e["label"])) for e, p in zip(lists["test"], predicted)]
    options = evaluation_options(cfg, lists["test"], device, progress,
                                 thresholds.get("component_filter", {}).get("min_component_ml", 0.0))
    # the test cases at eval.threshold and again at the thresholds chosen on the validation cases, in one pass
    tuned_dirs = {m: paths.tuned(m) for m in operating_points.TUNED_METRICS
                  if math.isfinite(thresholds[m]["threshold"])}
    summaries = evaluate_cases_at(
        cases, {paths.metrics: cfg.eval.threshold,
                **{folder: thresholds[m]["threshold"] for m, folder in tuned_dirs.items()}},
        froc_thresholds=[thresholds["froc"]["threshold"]] * len(cases), **options)
    summary = summaries[paths.metrics]
    tuned = {m: summaries[folder] for m, folder in tuned_dirs.items()}
    log_hparams(run_dir, cfg, summary, tuned)  # this run's row in TensorBoard's HParams dashboard
    if summary["collapse"]:
        tqdm.write(f"[{run_dir.name}] warning: collapsed on the test cases at p ≥ {cfg.eval.threshold:g}: "
                   f"{collapse.describe(summary['collapse'])}. Probably {collapse.advice(summary['collapse'])}.")
    seconds = round(time.monotonic() - started, 1)
    mark_done(run_dir, {"seconds": seconds, "best_iteration": best["iteration"],
                        "collapse": {"validation": validation, "test": summary["collapse"]}})
    return summary


def evaluation_options(cfg: Config, entries: list[dict], device, progress: bool, min_component_ml: float) -> dict:
    """The keyword arguments of `evaluate_cases_at` for the labelled `entries` under `cfg`: `cfg.eval` whole,
    with the component size as a volume (`min_component_ml`, the tuned one for `tune`)."""
    return dict(device=str(device), progress=progress,
                options=cfg.eval.model_copy(update={"min_component_ml": min_component_ml}),
                masks=[e["mask"] for e in entries] if cfg.eval.restrict_to_mask else None,
                # the calibration figures count the brain: its mask, else the non-zero voxels of the first image
                brains=[e["mask"] or e["image"][0] for e in entries])


def tune_thresholds(model, cfg: Config, lists: dict, run_dir: Path, device, progress: bool = True) -> dict:
    """The thresholds maximising the mean validation DSC and F2 (`operating_points`), in `thresholds.json`,
    the smallest-lesion size of the post-processing (`eval.min_component_ml`), and the threshold of one
    false-positive lesion per scan on the validation FROC (`froc`, at that size), where the test cases'
    `ltpr_1fp` is read.

    The validation cases are the run's own (`split.json`); the test cases play no part. Without
    validation cases both thresholds are NaN and the run is evaluated at `eval.threshold` only. With
    `min_component_ml: tune`, the size of `operating_points.COMPONENT_SIZES_ML` maximising the mean
    validation DSC at `eval.threshold` (`tune_component_size`); otherwise the configured one.
    """
    _, val_cases = split_train_val(lists["training"], cfg)
    tune_size = cfg.eval.min_component_ml == "tune"
    sizes = operating_points.COMPONENT_SIZES_ML if tune_size else ()
    tables, dsc, froc_counts = ([], None, [])
    if val_cases:
        tables, dsc, froc_counts = validation_tables(model, cfg, val_cases, device, progress, sizes,
                                                     store.cache_mode(lists["training"], cfg))
    if tune_size:
        component = operating_points.tune_component_size(dsc, sizes)
    else:
        component = {"min_component_ml": cfg.eval.min_component_ml, "method": "configured"}
    at_size = sizes.index(component["min_component_ml"]) if tune_size else 0
    result = {
        "configured": cfg.eval.threshold,
        "method": "maximum of the mean per-case metric over the validation cases, at every distinct "
                  "validation probability (highest threshold among ties); prob >= threshold is lesion",
        "validation_cases": [e["case"] for e in val_cases],
        **{m: operating_points.tune_threshold(tables, m) for m in operating_points.TUNED_METRICS},
        "froc": froc.validation_point([counts[at_size] for counts in froc_counts]),
    }
    if tune_size or cfg.eval.min_component_ml > 0:  # absent otherwise, as before the size filter existed
        result["component_filter"] = component
    write_json(RunPaths(run_dir).thresholds, result)
    return result


Runs = list[tuple[str, Config]]
RESUME = "Run the same command again to resume: finished runs are skipped, interrupted ones resume."


def summary_line(rid: str, summary: dict) -> str:
    """`[beta=0.7] test: DSC 0.677, F2 0.798, …`: the headline metrics of a finished run, per-case means."""
    pc = summary["per_case"]
    return f"[{rid}] test: " + ", ".join(f"{registry.label(m)} {pc[m]['mean']:.3f}"
                                        for m in registry.names(headline=True))


def run_from_yaml(config_yaml: str, run_dir: Path, progress: bool) -> str:
    """`run.run_one` of a run sent as config YAML (a child process or a Ray task); its summary line."""
    cfg = validate(yaml.safe_load(config_yaml), source=f"(sweep run {run_dir.name})")
    return summary_line(run_dir.name, run_one(cfg, run_dir, progress=progress))
