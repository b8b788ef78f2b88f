"""Sweeps: every configuration of the `sweep:` block trained, predicted and evaluated, then reported.

```
experiments/<name>/sweep.yaml         the resolved sweep config
experiments/<name>/runs/<run-id>/     one folder per configuration, e.g. beta=0.7_seed=0
experiments/<name>/report/            summary.md/.csv, stats.json, report.html, figures (lesionseg.report)
```
A run folder with a `DONE` marker is finished and skipped when the sweep is started again; an unfinished
one is resumed from its last checkpoint, or set aside (`<run-id>.old-<timestamp>`) and run again.
"""

from __future__ import annotations

import time
from pathlib import Path

from tqdm import tqdm

from lesionseg.config import Config, dump_yaml, expand_sweep
from lesionseg.checks import check_configs
from lesionseg.data import load_datalist
from lesionseg.errors import LesionsegError
from lesionseg.evaluate import evaluate_cases
from lesionseg.files import write_text
from lesionseg.predict import load_model, predict_cases
from lesionseg.report import write_report
from lesionseg.runs import is_done, mark_done, move_aside, start_run_dir
from lesionseg.tensorboard_log import log_hparams
from lesionseg.train import resolve_device, train_run


def run_one(cfg: Config, run_dir: Path, progress: bool = True) -> dict:
    """Train → predict the test cases → evaluate them, in `run_dir`; `DONE` is written last."""
    lists = load_datalist(cfg)
    unlabelled = [e["case"] for e in lists["test"] if not e["label"]]
    if not lists["test"] or unlabelled:
        raise LesionsegError(
            f"datalist {cfg.data.datalist}: a sweep evaluates on the 'test' cases, which need labels "
            f"({'no test cases' if not lists['test'] else 'unlabelled: ' + ', '.join(unlabelled)})"
        )
    masks = [e["mask"] for e in lists["test"]] if cfg.eval.restrict_to_mask else None
    if masks is not None and None in masks:
        raise LesionsegError(
            f"datalist {cfg.data.datalist}: eval.restrict_to_mask needs a brain mask for every test case; "
            f"without one: {', '.join(e['case'] for e in lists['test'] if e['mask'] is None)}"
        )
    started = time.monotonic()
    start_run_dir(run_dir, cfg)
    trained = train_run(cfg, run_dir, progress=progress, lists=lists)
    device = resolve_device(cfg.train.device)
    model = load_model(run_dir, cfg, device)
    paths = predict_cases(model, cfg, lists["test"], run_dir / "predictions", device, progress=progress)
    cases = [(e["case"], p, Path(e["label"])) for e, p in zip(lists["test"], paths)]
    summary = evaluate_cases(
        cases, run_dir / "metrics", threshold=cfg.eval.threshold, device=str(device), progress=progress,
        lesion_min_voxels=cfg.eval.lesion_min_voxels, lesion_min_overlap=cfg.eval.lesion_min_overlap,
        size_bins_ml=cfg.eval.size_bins_ml, masks=masks,
    )
    log_hparams(run_dir, cfg, summary)  # this run's row in TensorBoard's HParams dashboard
    seconds = round(time.monotonic() - started, 1)
    mark_done(run_dir, {"seconds": seconds, "best_iteration": trained["best"]["iteration"]})
    return summary


def run_sweep(cfg: Config, progress: bool = True, force: bool = False) -> Path:
    """Run every configuration not finished yet, then write the report; returns the report folder.

    `force`: start the whole sweep over, moving an existing sweep folder aside (never deleting it).
    """
    runs = expand_sweep(cfg) if cfg.sweep else [("run", cfg)]
    sweep_dir = cfg.output_dir / cfg.name
    check_configs([c for _, c in runs])  # every file read once: bad data fails before the first run, not the third
    if force and (aside := move_aside(sweep_dir)):
        tqdm.write(f"--force: moved the earlier sweep to {aside}")
    sweep_dir.mkdir(parents=True, exist_ok=True)
    write_text(sweep_dir / "sweep.yaml", dump_yaml(cfg))
    todo = [(rid, c) for rid, c in runs if not is_done(sweep_dir / "runs" / rid)]
    if len(todo) < len(runs):
        tqdm.write(f"{len(runs) - len(todo)} of {len(runs)} runs already finished in {sweep_dir / 'runs'}")
    for i, (rid, run_cfg) in enumerate(todo, 1):
        tqdm.write(f"run {i}/{len(todo)}: {rid}")
        summary = run_one(run_cfg, sweep_dir / "runs" / rid, progress=progress)
        pc = summary["per_case"]
        tqdm.write(
            f"[{rid}] test: DSC {pc['dsc']['mean']:.3f}, F2 {pc['f2']['mean']:.3f}, "
            f"sensitivity {pc['sensitivity']['mean']:.3f}, precision {pc['precision']['mean']:.3f}, "
            f"APR {pc['apr']['mean']:.3f}"
        )
    return write_report(sweep_dir)
