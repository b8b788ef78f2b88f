"""Executing the runs of a sweep: `local` (one process per run, one GPU each) or `ray` (tasks on a cluster).

Both take the unfinished runs as `(run id, config)` pairs, run each with `run.run_one` in
`<sweep_dir>/runs/<run id>/`, and return `{run id: error message}` for the runs that failed: a failing run
never stops the others. SIGINT/SIGTERM stop the sweep: no run is started any more, the running ones are
told to stop (training checkpoints and exits), and `LesionsegError` says how to resume (the same command).

`local` (`local_backend.py`): each run its own process, `sweep.parallel` at once, one GPU each.
`ray` (`ray_backend.py`): each run a Ray task on the cluster at `sweep.ray_address`, retried from its last
checkpoint when its worker or node dies.
"""

from __future__ import annotations

from pathlib import Path

from lesionseg.config import SweepOptions
from lesionseg.experiment.local_backend import resolve_parallel, run_local
from lesionseg.experiment.ray_backend import run_ray
from lesionseg.experiment.run import Runs


def run_all(runs: Runs, sweep_dir: Path, options: SweepOptions, progress: bool = True) -> dict[str, str]:
    """Run `runs` on the configured backend; `{run id: error}` of those that failed."""
    if options.backend == "ray":
        return run_ray(runs, sweep_dir, options)
    return run_local(runs, sweep_dir, resolve_parallel(options.parallel, runs), progress)
