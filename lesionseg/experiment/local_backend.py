"""The `local` backend: each run of a sweep in its own `python -m lesionseg.experiment.local_backend`
process, `sweep.parallel` at once, each pinned to one GPU (`CUDA_VISIBLE_DEVICES`, honouring the one this
process was given) and, when several run at once, with its share of the CPU threads. With one at a time
the child shows its progress bars; with more, each child's output lines are prefixed by its run id.
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

from lesionseg.config import Config, dump_yaml
from lesionseg.errors import LesionsegError
from lesionseg.experiment.run import RESUME, Runs, run_from_yaml
from lesionseg.runs import SweepPaths
from lesionseg.training.checkpoint import StopRequest


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


def cpu_count() -> int:
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
    threads = max(1, cpu_count() // parallel)
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
                child = _Child.start(rid, slot, cfg, SweepPaths(sweep_dir).run(rid), env, progress and parallel == 1, lock)
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
    """One run as `python -m lesionseg.experiment.local_backend`: config YAML on stdin, the outcome as JSON
    on a pipe."""

    def __init__(self, rid: str, slot: int, proc: subprocess.Popen, result_fd: int, reader) -> None:
        self.rid, self.slot, self.proc, self.result_fd, self.reader = rid, slot, proc, result_fd, reader

    @classmethod
    def start(cls, rid: str, slot: int, cfg: Config, run_dir: Path, env: dict, progress: bool,
              lock: threading.Lock) -> _Child:
        result_r, result_w = os.pipe()
        args = [sys.executable, "-m", "lesionseg.experiment.local_backend", str(run_dir), "--result-fd", str(result_w)]
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


def _child_main(argv: list[str]) -> int:
    """`python -m lesionseg.experiment.local_backend RUN_DIR --result-fd N [--progress]`, the run's config
    YAML on stdin."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m lesionseg.experiment.local_backend")
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--result-fd", type=int, required=True)
    parser.add_argument("--progress", action="store_true")
    args = parser.parse_args(argv)
    with os.fdopen(args.result_fd, "w", encoding="utf-8") as result:
        try:
            line = run_from_yaml(sys.stdin.read(), args.run_dir, progress=args.progress)
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


if __name__ == "__main__":
    sys.exit(_child_main(sys.argv[1:]))
