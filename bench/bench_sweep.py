"""Benchmark: one small sweep run one at a time (`sweep.parallel: 1`) and N at once (`sweep.parallel: N`).

Prints figures; not a test. N is the number of visible CUDA devices (one run per GPU), or 2 on a machine
without one. The sweep is the demo config on small phantoms with a few iterations per β, so that the fixed
costs of a run (its process starting, data checks and caching, prediction and evaluation) are a fair share
of its time, as they are in real sweeps with short runs.

On GPUs, N runs at once on N GPUs should take about 1/N of the time (the ratio close to N). On a CPU
there is no such gain to expect in principle: one run at a time already uses every core through torch's
threads, and N at once split them (each run gets cores/N threads); what is gained is what one run leaves
idle (serial data loading and evaluation, threading overhead on small tensors).

    .venv/bin/python bench/bench_sweep.py [--runs 4] [--parallel N] [--iterations 30] [--size 32]
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import torch

import lesionseg
from lesionseg.experiment.local_backend import cpu_count, visible_gpus

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=4, help="β values in the sweep")
    parser.add_argument("--parallel", type=int, help="runs at once (default: visible GPUs, or 2 on CPU)")
    parser.add_argument("--iterations", type=int, default=30)
    parser.add_argument("--size", type=int, default=32, help="phantom size (voxels along the first axis)")
    parser.add_argument("--cases", type=int, default=8)
    args = parser.parse_args()

    gpus = visible_gpus()
    n = args.parallel or (len(gpus) if gpus else 2)
    betas = [round(0.5 + 0.4 * i / max(1, args.runs - 1), 3) for i in range(args.runs)]
    print(f"machine: {platform.machine()}, {cpu_count()} CPU cores, GPUs: {', '.join(gpus) or 'none'}; "
          f"torch {torch.__version__}")
    with tempfile.TemporaryDirectory() as tmp:
        datalist = lesionseg.demo_data(Path(tmp) / "data", cases=args.cases, size=args.size, seed=0)
        overrides = [f"data.datalist={datalist}", f"output_dir={Path(tmp) / 'experiments'}",
                     f"sweep={{loss.beta: {betas}}}", f"train.iterations={args.iterations}",
                     f"train.val_every={args.iterations}", "data.patch_size=[32,32,32]", "data.val_cases=1"]
        print(f"sweep: {args.runs} runs (β = {betas}), {args.iterations} iterations each, "
              f"{args.cases} phantoms of size {args.size}")
        times = {}
        for parallel in (1, n):
            start = time.perf_counter()
            lesionseg.sweep(REPO / "configs" / "demo.yaml", [*overrides, f"name=parallel{parallel}",
                                                             f"sweep.parallel={parallel}"], progress=False)
            times[parallel] = time.perf_counter() - start
            print(f"parallel {parallel}: {times[parallel]:.1f} s (report included)", flush=True)
    ratio = times[1] / times[n]
    print(f"\nwall time, parallel 1 / parallel {n}: {ratio:.2f} (ideal with {n} devices: {n})")
    if not gpus:
        print(f"caveat: no GPU, so the {n} runs at once share the {cpu_count()} CPU cores that one run alone uses "
              "through torch's threads: the ratio only shows how badly one small run uses them (serial data "
              "loading, evaluation, thread overhead); near 1 if it used them fully. On N GPUs expect close to N.")
    if os.getloadavg()[0] > cpu_count():
        print(f"caveat: load average {os.getloadavg()[0]:.1f} on {cpu_count()} cores: the machine is busy")


if __name__ == "__main__":
    main()
