"""The `ray` backend: every run of a sweep a Ray task needing one GPU (when the cluster has GPUs) and
`sweep.cpus_per_run` CPUs, on the cluster at `sweep.ray_address`; the workers must see `output_dir` and the
data at the same paths (a shared filesystem) and have lesionseg installed. A run whose worker or node dies
is run again by Ray (`RAY_RETRIES` times at most), resuming from its last checkpoint; a run that fails by
itself is not.
"""

from __future__ import annotations

import signal
import sys
import threading
from pathlib import Path

from lesionseg.config import SweepOptions, dump_yaml
from lesionseg.errors import LesionsegError
from lesionseg.experiment.run import RESUME, Runs, run_from_yaml, summary_line
from lesionseg.runs import RunPaths, SweepPaths, is_done, read_json


def _import_ray():
    try:
        import ray
    except ImportError:
        raise LesionsegError("sweep.backend: ray needs Ray, which is not installed: "
                             "pip install 'lesionseg[ray]'") from None
    return ray


# A run whose Ray worker process or node dies (a system failure: the process crashed or was killed, the
# raylet or the machine went away) is run again by Ray up to this many times, on any node with room; it
# goes through `run.run_one` again, which resumes it from its last checkpoint on the shared filesystem
# (`runs.open_run_dir` keeps an interrupted run of the same config). An error raised by the run itself (a bad
# config, a NaN loss) is not retried (`retry_exceptions=False`): it would fail the same way again.
RAY_RETRIES = 2


def _ray_attempt() -> int:
    """Which attempt of its Ray task this is: 0 the first, n the n-th retry (0 where Ray cannot say).

    Ray has no public API for it; its core worker knows (the attempt number its own task events carry).
    """
    try:
        from ray._private.worker import global_worker

        return int(global_worker.core_worker.get_current_task_attempt_number())
    except Exception:  # another Ray version: no retry notice, the retry itself is Ray's and happens anyway
        return 0


def _ray_run(config_yaml: str, run_dir: str) -> dict:
    """One run inside a Ray worker: `{"line": its summary line, "attempt": 0, or the retry it took}`."""
    run_dir = Path(run_dir)
    attempt = _ray_attempt()
    if attempt:  # Ray retries a task only when its worker or node died (`RAY_RETRIES`)
        if is_done(run_dir):  # that attempt finished the run, then died before its result came back
            return {"line": summary_line(run_dir.name, read_json(RunPaths(run_dir).summary)),
                    "attempt": attempt}
        checkpoint = RunPaths(run_dir).last
        how = f"resuming from {checkpoint}" if checkpoint.is_file() else "no checkpoint yet: starting over"
        print(f"[{run_dir.name}] Ray retry {attempt} of at most {RAY_RETRIES}: the worker or node of the "
              f"previous attempt died; {how}", flush=True)
    return {"line": run_from_yaml(config_yaml, run_dir, progress=False), "attempt": attempt}


def _ray_error(err: Exception) -> str:
    cause = getattr(err, "cause", None)  # ray.exceptions.RayTaskError wraps the task's own exception
    if isinstance(cause, LesionsegError):
        return str(cause)
    if cause is not None:
        return f"{type(cause).__name__}: {cause}"
    message = f"{type(err).__name__}: {str(err).strip().splitlines()[-1] if str(err).strip() else ''}"
    from ray import exceptions

    if isinstance(err, (exceptions.WorkerCrashedError, exceptions.NodeDiedError, exceptions.LocalRayletDiedError)):
        return (f"its Ray worker or node died on every attempt ({1 + RAY_RETRIES}: Ray retried it {RAY_RETRIES} "
                f"times): {message}")
    return message


def run_ray(runs: Runs, sweep_dir: Path, options: SweepOptions) -> dict[str, str]:
    """Every run a Ray task (1 GPU where the cluster has GPUs); at most `sweep.parallel` in flight if a number.

    Joins the cluster at `options.ray_address` unless this process is connected to one already (tests,
    notebooks); `ray.init(address=None)` itself reads $RAY_ADDRESS, else starts a local instance.
    """
    ray = _import_ray()
    if not ray.is_initialized():
        try:
            ray.init(address=options.ray_address, log_to_driver=True)
        except ConnectionError as err:
            raise LesionsegError(f"sweep.ray_address {options.ray_address!r}: cannot join the Ray cluster: "
                                 f"{err} (start one with `ray start --head`)") from None
    gpus = ray.cluster_resources().get("GPU", 0)
    task = ray.remote(_ray_run)
    # Each task named by its run id: Ray prefixes the run's output lines with it, `(beta=0.7 pid=…)`.
    resources = dict(num_cpus=options.cpus_per_run, num_gpus=1 if gpus else 0, max_retries=RAY_RETRIES,
                     retry_exceptions=False)
    limit = len(runs) if options.parallel == "auto" else options.parallel
    print(f"Ray: {len(runs)} runs on {ray.cluster_resources().get('CPU', 0):g} CPUs, {gpus:g} GPUs; each "
          f"{options.cpus_per_run} CPU{'s' if options.cpus_per_run > 1 else ''}{' and 1 GPU' if gpus else ''}; "
          f"a run whose worker or node dies is retried from its last checkpoint, {RAY_RETRIES} times at most",
          flush=True)
    pending = list(runs)
    in_flight: dict = {}
    failed: dict[str, str] = {}
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        while pending or in_flight:
            while pending and len(in_flight) < limit:
                rid, cfg = pending.pop(0)
                print(f"run submitted: {rid}", flush=True)
                ref = task.options(name=rid, **resources).remote(dump_yaml(cfg), str(SweepPaths(sweep_dir).run(rid)))
                in_flight[ref] = rid
            (ref,), _ = ray.wait(list(in_flight), num_returns=1)
            rid = in_flight.pop(ref)
            try:
                result = ray.get(ref)
                print(result["line"], flush=True)
                if result["attempt"]:
                    n = result["attempt"]
                    print(f"[{rid}] finished after {n} Ray retr{'y' if n == 1 else 'ies'}: the worker or node "
                          f"of {'its first attempt' if n == 1 else f'its first {n} attempts'} died", flush=True)
            except Exception as err:  # the task raised, or its worker died on every attempt
                failed[rid] = _ray_error(err)
                print(f"[{rid}] failed: {failed[rid]}", file=sys.stderr, flush=True)
    except KeyboardInterrupt as err:
        for ref in in_flight:
            ray.cancel(ref)  # interrupts the task: training checkpoints and stops (a cancelled task is not retried)
        name = err.args[0] if err.args else "SIGINT"
        raise LesionsegError(f"sweep stopped by {name}; the runs in flight were cancelled. " + RESUME) from None
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    return failed


def _raise_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)
