"""Benchmark: training from the preprocessed store against the in-memory cache as the cohort grows.
Prints figures; not a test.

Synthetic 1 mm cohorts (MS-like phantoms, `write_demo_dataset(spacing=1)`) of `--sizes` training cases. For each
size and each of `data.cache` = memory, disk, a child process (one thread) readies the training cases —
preprocesses them into memory, or builds the store (`--cold`) and opens it — then trains `--iterations`
steps of the demo network from them. Printed per child: its peak resident memory (`os.wait4`), the seconds
to ready the cases, and the seconds per training iteration; then the ratios that issue 25 asks about.
Last, a child confined with `RLIMIT_DATA` (as `prlimit --data` would) below what the largest cohort needs in
memory trains with `data.cache: auto`: it must choose the store by itself and train to the end.
Then validation's reading of a whole volume (`cache.volume_dataset`, in this process, one thread) at the size
of a real 1 mm scan (182×218×182): preprocessed from its files (what every validation of a run did when the
cases were not kept in memory) against read from the store (the same arrays, tested bit for bit).

    .venv/bin/python bench/bench_cohort.py [--sizes 20 40 80] [--size 80] [--iterations 20] [--validation-cases 4]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from lesionseg.data.demo_data import write_demo_dataset  # noqa: E402

CHILD = textwrap.dedent("""
    import json, sys, time
    import torch
    torch.set_num_threads(1)
    from lesionseg.config import load_config
    from lesionseg.data.cache import train_batches
    from lesionseg.data.preprocessing import load_datalist, split_train_val
    from lesionseg.devices import amp_dtype
    from lesionseg.model import build_model
    from lesionseg.training.loop import train_step
    from lesionseg.training.losses import build_loss

    repo, datalist, out, cache, iterations = sys.argv[1:6]
    cfg = load_config(f"{repo}/configs/demo.yaml", [f"data.datalist={datalist}", f"output_dir={out}",
                      f"data.cache={cache}", "data.val_cases=1", "train.device=cpu"])
    train, _ = split_train_val(load_datalist(cfg)["training"], cfg)
    told = []
    t0 = time.perf_counter()
    sampler = train_batches(train, cfg, "cpu", say=told.append)
    ready = time.perf_counter() - t0
    model = build_model(cfg)
    loss_fn = build_loss(cfg.loss, cfg.data.samples_per_volume)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.train.lr)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    dtype = amp_dtype(torch.device("cpu"), cfg.train.amp)
    for it in range(1, 3):  # warm-up
        train_step(model, sampler(it)["image"], sampler(it)["label"], loss_fn, optimizer, scaler, dtype)
    t0 = time.perf_counter()
    for it in range(3, 3 + int(iterations)):
        batch = sampler(it)
        train_step(model, batch["image"], batch["label"], loss_fn, optimizer, scaler, dtype)
    per_iteration = (time.perf_counter() - t0) / int(iterations)
    vm_data = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmData:"))
    print(json.dumps({"cases": len(train), "ready_s": ready, "iteration_s": per_iteration, "told": told[0],
                      "vm_data_mib": vm_data / 1024}))
""")


def child(datalist: Path, out: Path, cache: str, iterations: int, data_limit: int | None = None) -> dict:
    """Run CHILD (confined to `data_limit` bytes of RLIMIT_DATA when given); its result and its peak RSS in
    MiB — RUSAGE_CHILDREN's peak, which is this child's alone when `measured` runs this in a fresh process."""
    def confine() -> None:
        if data_limit is not None:
            resource.setrlimit(resource.RLIMIT_DATA, (data_limit, resource.getrlimit(resource.RLIMIT_DATA)[1]))

    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(REPO), str(datalist), str(out), cache, str(iterations)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, preexec_fn=confine)
    stdout, stderr = proc.communicate()
    if proc.returncode != 0:
        return {"failed": stderr.strip().splitlines()[-1] if stderr.strip() else f"exit {proc.returncode}"}
    result = json.loads(stdout.strip().splitlines()[-1])
    result["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return result


def measured(datalist: Path, out: Path, cache: str, iterations: int, data_limit: int | None = None) -> dict:
    """`child` in a helper process of its own, so that the peak it reads is that child's alone."""
    code = (f"import sys, json; sys.path.insert(0, {str(REPO / 'bench')!r}); import bench_cohort as b; "
            f"print(json.dumps(b.child(b.Path({str(datalist)!r}), b.Path({str(out)!r}), {cache!r}, {iterations}, "
            f"{data_limit!r})))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def validation_reading(tmp: Path, cases: int) -> None:
    """Seconds per validation volume of 182×218×182 at 1 mm (3 channels), from the files and from the store."""
    import torch

    from lesionseg.config import load_config
    from lesionseg.data.cache import build_store, volume_dataset
    from lesionseg.data.preprocessing import load_datalist

    torch.set_num_threads(1)
    datalist = write_demo_dataset(tmp / "validation", cases=round(cases / 0.75) + 1, size=182, seed=1, spacing=1.0)
    overrides = [f"data.datalist={datalist}", f"output_dir={tmp / 'validation-out'}"]
    cfg = {c: load_config(REPO / "configs" / "demo.yaml", [*overrides, f"data.cache={c}"]) for c in ("off", "disk")}
    entries = load_datalist(cfg["disk"])["training"][:cases]
    t0 = time.perf_counter()
    build_store(entries, cfg["disk"])
    built = (time.perf_counter() - t0) / len(entries)
    seconds = {}
    for name, c in cfg.items():
        t0 = time.perf_counter()
        for item in volume_dataset(entries, c, with_label=True):
            float(item["image"][0, 0, 0, 0])
        seconds[name] = (time.perf_counter() - t0) / len(entries)
    print(f"\na validation volume of 182×218×182 × 3 channels at 1 mm, {len(entries)} cases: preprocessed from its files "
          f"{seconds['off']:.2f} s, read from the store {seconds['disk']:.3f} s (×{seconds['off'] / seconds['disk']:.0f}); "
          f"the store entry built once in {built:.2f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="*", default=[20, 40, 80], help="training cases per cohort (none: skip)")
    parser.add_argument("--size", type=int, default=80, help="phantom voxels along the first axis (1 mm)")
    parser.add_argument("--iterations", type=int, default=20)
    parser.add_argument("--validation-cases", type=int, default=4, help="182×218×182 cases for validation's reading; 0: skip")
    parser.add_argument("--keep", type=Path, default=None, help="write the cohorts here (default: a temporary folder)")
    args = parser.parse_args()
    tmp = args.keep or Path(tempfile.mkdtemp(prefix="bench_cohort_"))
    rows = []
    try:
        for n in args.sizes:
            t0 = time.perf_counter()
            total = round(n / 0.75) + 2  # the demo keeps a quarter as test cases; one more for validation
            datalist = write_demo_dataset(tmp / f"cohort{n}", cases=total, size=args.size, seed=n, spacing=1.0)
            written = time.perf_counter() - t0
            out = tmp / f"out{n}"
            memory = measured(datalist, out, "memory", args.iterations)
            cold = measured(datalist, out, "disk", args.iterations)  # builds the store
            disk = measured(datalist, out, "disk", args.iterations)  # reads it
            rows.append((n, memory, cold, disk))
            print(f"{memory.get('cases', n)} training cases of {args.size}×{round(args.size * 1.2)}×{args.size} at 1 mm "
                  f"(written in {written:.0f} s):")
            for name, r in (("memory", memory), ("store, built", cold), ("store, read", disk)):
                if "failed" in r:
                    print(f"  {name:13s} failed: {r['failed']}")
                    continue
                print(f"  {name:13s} peak RSS {r['peak_rss_mib']:7.0f} MiB, ready in {r['ready_s']:6.1f} s, "
                      f"{r['iteration_s']:.3f} s per iteration")
            if "failed" not in memory and "failed" not in disk:
                print(f"  iterations per second, store / memory: {memory['iteration_s'] / disk['iteration_s']:.2f}")
        ok = [(n, m, d) for n, m, _, d in rows if "failed" not in m and "failed" not in d]
        if len(ok) > 1:
            (n0, m0, d0), (n1, m1, d1) = ok[0], ok[-1]
            print(f"\npeak RSS from {n0} to {n1} cases: memory {m0['peak_rss_mib']:.0f} → {m1['peak_rss_mib']:.0f} MiB "
                  f"(×{m1['peak_rss_mib'] / m0['peak_rss_mib']:.2f}), store {d0['peak_rss_mib']:.0f} → "
                  f"{d1['peak_rss_mib']:.0f} MiB (×{d1['peak_rss_mib'] / d0['peak_rss_mib']:.2f})")
            print(f"a 5-β sweep readies its cases: in memory 5 × {m1['ready_s']:.1f} s = {5 * m1['ready_s']:.0f} s; "
                  f"from the store {rows[-1][2]['ready_s']:.1f} s once + 5 × {d1['ready_s']:.1f} s = "
                  f"{rows[-1][2]['ready_s'] + 5 * d1['ready_s']:.0f} s")
            n, memory, _, disk = rows[-1]
            # what the store path used, plus half of what the cases add in memory: the in-memory path cannot fit
            limit = int((disk["vm_data_mib"] + (memory["vm_data_mib"] - disk["vm_data_mib"]) / 2) * 2**20)
            datalist = tmp / f"cohort{n}" / "datalist.json"
            print(f"\nconfined to RLIMIT_DATA {limit / 2**20:.0f} MiB (the store path's data segment "
                  f"{disk['vm_data_mib']:.0f} MiB + half the {memory['vm_data_mib'] - disk['vm_data_mib']:.0f} MiB "
                  "the in-memory cases add):")
            for cache in ("memory", "auto"):
                r = measured(datalist, tmp / f"confined-{cache}", cache, args.iterations, limit)
                print(f"  data.cache {cache}: " + (f"failed: {r['failed'][:160]}" if "failed" in r else
                                                   f"{r['told']}; trained {args.iterations} iterations, peak RSS "
                                                   f"{r['peak_rss_mib']:.0f} MiB"))
        if args.validation_cases:
            validation_reading(tmp, args.validation_cases)
    finally:
        if args.keep is None:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
