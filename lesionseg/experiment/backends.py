"""Executing the runs of a sweep: `local` (one process per run, one GPU each) or `ray` (tasks on a cluster).

Both take the unfinished runs as `(run id, config)` pairs, run each with `lesionseg.experiment.run.run_one` in
`<sweep_dir>/runs/<run id>/`, and return `{run id: error message}` for the runs that failed: a failing run
never stops the others. SIGINT/SIGTERM stop the sweep: no run is started any more, the running ones are
told to stop (training checkpoints and exits), and `LesionsegError` says how to resume (the same command).

local  `sweep.parallel` runs at once, each a `python -m lesionseg.experiment.backends` process pinned to one GPU
       (`CUDA_VISIBLE_DEVICES`, honouring the one this process was given) and, when several run at once,
       with its share of the CPU threads. With one at a time the child shows its progress bars; with more,
       each child's output lines are prefixed by its run id.
ray    every run a Ray task needing one GPU (when the cluster has GPUs) and `sweep.cpus_per_run` CPUs,
       on the cluster at `sweep.ray_address`; the workers must see `output_dir` and the data at the same
       paths (a shared filesystem) and have lesionseg installed. A run whose worker or node dies is run
       again by Ray (`RAY_RETRIES` times at most), resuming from its last checkpoint; a run that fails by
       itself is not.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path

import yaml

from lesionseg.config import Config, SweepOptions, dump_yaml, validate
from lesionseg.errors import LesionsegError
from lesionseg.evaluation import registry
from lesionseg.runs import sweep_run
from lesionseg.training.loop import StopRequest

Runs = list[tuple[str, Config]]
RESUME = "Run the same command again to resume: finished runs are skipped, interrupted ones resume."


def summary_line(rid: str, summary: dict) -> str:
    pc = summary["per_case"]
    return f"[{rid}] test: " + ", ".join(f"{registry.label(m)} {pc[m]['mean']:.3f}" for m in registry.names(headline=True))


def run_all(runs: Runs, sweep_dir: Path, options: SweepOptions, progress: bool = True) -> dict[str, str]:
    """Run `runs` on the configured backend; `{run id: error}` of those that failed."""
    if options.backend == "ray":
        return run_ray(runs, sweep_dir, options)
    return run_local(runs, sweep_dir, resolve_parallel(options.parallel, runs), progress)


# ---------------------------------------------------------------------------------------------- local

def visible_gpus() -> list[str]:
    """The CUDA devices this process may use, as `CUDA_VISIBLE_DEVICES` entries (indices, UUIDs or MIG ids)."""
    import torch

    count = torch.cuda.device_count()  # honours CUDA_VISIBLE_DEVICES
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is None:
        return [str(i) for i in range(count)]
    return [d.strip() for d in listed.split(",") if d.strip()][:count]


def _gpus_for(runs: Runs) -> list[str]:
    # Pinning needs runs that pick "the" GPU; `cuda:N` or `cpu` runs are left where they asked to be.
    if not runs or any(c.train.device not in ("auto", "cuda") for _, c in runs):
        return []
    return visible_gpus()


def resolve_parallel(parallel: int | str, runs: Runs) -> int:
    """`auto`: one run per visible GPU, 1 on CPU; never more than there are runs."""
    n = max(1, len(_gpus_for(runs))) if parallel == "auto" else int(parallel)
    return max(1, min(n, len(runs)))


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS
        return os.cpu_count() or 1


class _Stop(StopRequest):
    """While running children: SIGINT/SIGTERM are recorded (the first one) and passed on to every running child."""

    def __init__(self, children: dict) -> None:
        self._children = children
        super().__init__()

    def _handle(self, signum, frame) -> None:
        first = self.requested
        super()._handle(signum, frame)
        self.requested = first or self.requested
        for proc in list(self._children):
            if proc.poll() is None:
                proc.send_signal(signum)


def _echo_prefixed(stream, rid: str, lock: threading.Lock) -> None:
    """Copy a child's output line by line, each with its run id (train's own lines carry it already)."""
    prefix = f"[{rid}]"
    for line in stream:
        line = line.rstrip("\n")
        with lock:
            print(line if line.startswith(prefix) else f"{prefix} {line}", flush=True)
    stream.close()


def run_local(runs: Runs, sweep_dir: Path, parallel: int, progress: bool = True) -> dict[str, str]:
    """Each run in its own process, `parallel` at once, one GPU each (round robin when there are fewer)."""
    gpus = _gpus_for(runs)
    threads = max(1, _cpu_count() // parallel)
    pending = list(enumerate(runs, 1))
    children: dict[subprocess.Popen, _Child] = {}
    failed: dict[str, str] = {}
    free_slots = list(range(parallel))
    lock = threading.Lock()
    stop = _Stop(children)
    if parallel > 1:
        where = f"GPUs {','.join(gpus)}" if gpus else f"CPU, {threads} thread{'s' if threads > 1 else ''} each"
        print(f"running {len(runs)} runs, {parallel} at once ({where})", flush=True)
    try:
        while (pending and not stop.requested) or children:  # told to stop: wait for the running runs only
            while pending and free_slots and not stop.requested:
                i, (rid, cfg) = pending.pop(0)
                slot = free_slots.pop(0)
                env = dict(os.environ, PYTHONUNBUFFERED="1")
                gpu = gpus[slot % len(gpus)] if gpus else None
                if gpu is not None:
                    env["CUDA_VISIBLE_DEVICES"] = gpu
                if parallel > 1:  # N processes × all cores each would oversubscribe the CPU
                    env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
                with lock:
                    print(f"run {i}/{len(runs)}: {rid}" + (f" (GPU {gpu})" if gpu is not None else ""), flush=True)
                child = _Child.start(rid, slot, cfg, sweep_run(sweep_dir, rid), env, progress and parallel == 1, lock)
                children[child.proc] = child
            time.sleep(0.1)
            for proc in [p for p in children if p.poll() is not None]:
                child = children.pop(proc)
                free_slots.append(child.slot)
                error = child.finish()
                if error is not None and not stop.requested:
                    failed[child.rid] = error
                    with lock:
                        print(f"[{child.rid}] failed: {error}", file=sys.stderr, flush=True)
    finally:
        stop.restore()
    if stop.requested:
        also = f" Failed before that: {', '.join(failed)}." if failed else ""
        raise LesionsegError(f"sweep stopped by {stop.requested}; interrupted runs keep their last checkpoint."
                             f"{also} " + RESUME)
    return failed


class _Child:
    """One run as `python -m lesionseg.experiment.backends`: config YAML on stdin, the outcome as JSON on a pipe."""

    def __init__(self, rid: str, slot: int, proc: subprocess.Popen, result_fd: int, reader) -> None:
        self.rid, self.slot, self.proc, self.result_fd, self.reader = rid, slot, proc, result_fd, reader

    @classmethod
    def start(cls, rid: str, slot: int, cfg: Config, run_dir: Path, env: dict, progress: bool,
              lock: threading.Lock) -> _Child:
        result_r, result_w = os.pipe()
        args = [sys.executable, "-m", "lesionseg.experiment.backends", str(run_dir), "--result-fd", str(result_w)]
        # With progress bars the child owns the terminal; otherwise its lines are read and prefixed.
        piped = subprocess.PIPE if not progress else None
        proc = subprocess.Popen([*args, *(["--progress"] if progress else [])], env=env, stdin=subprocess.PIPE,
                                stdout=piped, stderr=subprocess.STDOUT if piped else None, pass_fds=(result_w,),
                                text=True)
        os.close(result_w)
        proc.stdin.write(dump_yaml(cfg))
        proc.stdin.close()
        reader = None
        if piped:
            reader = threading.Thread(target=_echo_prefixed, args=(proc.stdout, rid, lock), daemon=True)
            reader.start()
        return cls(rid, slot, proc, result_r, reader)

    def finish(self) -> str | None:
        """After the process ended: None if the run finished, else its error message or how it died."""
        if self.reader is not None:
            self.reader.join()
        with os.fdopen(self.result_fd, encoding="utf-8") as f:
            text = f.read()
        result = json.loads(text) if text else {}
        code = self.proc.returncode
        if code == 0 and "error" not in result:
            return None
        if "error" in result:
            return result["error"]
        return f"killed by {signal.Signals(-code).name}" if code < 0 else f"exited with status {code}"


def _run_from_yaml(config_yaml: str, run_dir: Path, progress: bool) -> str:
    """`run.run_one` of a run sent as config YAML (a child process or a Ray task); its summary line."""
    from lesionseg.experiment.run import run_one

    cfg = validate(yaml.safe_load(config_yaml), source=f"(sweep run {run_dir.name})")
    return summary_line(run_dir.name, run_one(cfg, run_dir, progress=progress))


def _child_main(argv: list[str]) -> int:
    """`python -m lesionseg.experiment.backends RUN_DIR --result-fd N [--progress]`, the run's config YAML on stdin."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m lesionseg.experiment.backends")
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--result-fd", type=int, required=True)
    parser.add_argument("--progress", action="store_true")
    args = parser.parse_args(argv)
    with os.fdopen(args.result_fd, "w", encoding="utf-8") as result:
        try:
            line = _run_from_yaml(sys.stdin.read(), args.run_dir, progress=args.progress)
        except LesionsegError as err:  # the sweep prints it, with the run id
            json.dump({"error": str(err)}, result)
            return 1
        except KeyboardInterrupt:
            json.dump({"error": "interrupted (SIGINT)"}, result)
            return 130
        except Exception as err:  # a bug: keep the traceback for the log, the message for the summary
            traceback.print_exc()
            json.dump({"error": f"{type(err).__name__}: {err}"}, result)
            return 1
        print(line, flush=True)
        json.dump({}, result)
    return 0


# ------------------------------------------------------------------------------------------------ ray

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
# (`start_run_dir` keeps an interrupted run of the same config). An error raised by the run itself (a bad
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
    from lesionseg.runs import RunPaths, is_done, read_json

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
    return {"line": _run_from_yaml(config_yaml, run_dir, progress=False), "attempt": attempt}


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
                ref = task.options(name=rid, **resources).remote(dump_yaml(cfg), str(sweep_run(sweep_dir, rid)))
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


if __name__ == "__main__":
    sys.exit(_child_main(sys.argv[1:]))
