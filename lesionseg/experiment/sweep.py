"""Sweeps: every configuration of the `sweep:` block trained, predicted and evaluated (the report is the
next stage's: `lesionseg.api.sweep` writes it after `run_sweep`).

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

from pathlib import Path

from tqdm import tqdm

from lesionseg.config import Config, dump_yaml, expand_sweep
from lesionseg.errors import LesionsegError
from lesionseg.experiment.backends import run_all
from lesionseg.experiment.cv import merge_finished
from lesionseg.experiment.preflight import preflight
from lesionseg.files import disk_error, write_text
from lesionseg.runs import SweepPaths, config_differences, is_done, move_aside, saved_config


def run_sweep(cfg: Config, progress: bool = True, force: bool = False) -> tuple[Path, dict[str, str]]:
    """Run every configuration not finished yet and merge the folds of each cross-validated configuration
    whose runs are all finished; returns the sweep folder and the failed runs (id → what went wrong).

    The runs go to `sweep.backend` (`lesionseg.experiment.backends`): `sweep.parallel` at once, each its own process.
    A failed run does not stop the others (`failures` words them for the error the caller raises after the
    report of the finished ones); when every run failed, `LesionsegError` here.
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
    paths = SweepPaths(sweep_dir)
    write_text(paths.config, dump_yaml(cfg))
    todo = [(rid, c) for rid, c in runs if not is_done(paths.run(rid))]
    if len(todo) < len(runs):
        tqdm.write(f"{len(runs) - len(todo)} of {len(runs)} runs already finished in {paths.runs}")
    failed = run_all(todo, sweep_dir, cfg.sweep_options, progress=progress) if todo else {}
    if len(failed) == len(runs):
        raise LesionsegError(failures(failed, sweep_dir))
    for cid in merge_finished(sweep_dir, runs, cfg.sweep, progress):  # cross-validation: the folds together
        tqdm.write(f"merged the folds of {cid} into {paths.merged(cid)}")
    return sweep_dir, failed


def _refuse_relabelling(runs: list[tuple[str, Config]], sweep_dir: Path) -> None:
    """A finished run counts as finished for this sweep only if it was trained with the run's config now
    (`runs.config_differences`); otherwise the sweep would report it under settings it never had."""
    changed = {}
    for rid, run_cfg in runs:
        run_dir = SweepPaths(sweep_dir).run(rid)
        if is_done(run_dir) and (lines := config_differences(saved_config(run_dir), run_cfg)):
            changed[rid] = lines
    if changed:
        details = "\n".join(f"  {rid}: " + "; ".join(lines) for rid, lines in changed.items())
        raise LesionsegError(
            f"{len(changed)} finished run(s) of {sweep_dir} were trained with another config (run → now):\n"
            f"{details}\nA finished run is never relabelled: undo the change, give the sweep another name "
            "(name=...), or start it over with --force (moves the sweep folder aside; nothing is deleted).")


def failures(failed: dict[str, str], sweep_dir: Path) -> str:
    lines = [f"{len(failed)} run(s) of {sweep_dir} failed:"]
    lines += [f"  {rid}: {message}" for rid, message in failed.items()]
    lines.append("Fix the cause and run the same command again: finished runs are skipped, the failed ones "
                 "resume from their last checkpoint or start again.")
    return "\n".join(lines)
