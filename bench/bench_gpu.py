"""`make bench-gpu`: what a first GPU should tell us, in one script meant to finish within 8 minutes on one GPU,
written as one Markdown table (printed, and to `--out`). Without CUDA it says so and exits 0.

Rows, each in its own try (a failure is a row saying so; the rest still run), each skipped when the time
left (`--budget`, default 450 s) is below what it needs:

1. the CUDA tests (`pytest -k cuda`): the tests that skip without a GPU, and their neighbours;
2. training throughput in bf16 at 128³ patches with bench_train's nnU-Net-sized U-Net (`--realistic`: 4
   channels, 32→320 over six levels), the training volumes cached on the GPU: iterations and voxels per second,
   TFLOP/s from `FlopCounterMode` and the share of the GPU's dense bf16 peak (MFU);
3. the same from the preprocessed store (`data.cache: disk`: patches cut from memory maps on the CPU, copied
   through pinned memory);
4. the loader's share of a step, both ways: 1 − (a step on a resident batch) / (sampler + step), and with the
   next batch cut in a background thread meanwhile (`data.prefetch`, on by default on a GPU);
5. the evaluator on the GPU against the CPU: `evaluate_cases` on synthetic 182×218×182 cases, s/case;
6. a two-run β sweep end to end (demo phantoms, 200 iterations each, train → predict → evaluate → report).

    .venv/bin/python bench/bench_gpu.py [--budget 450] [--out gpu.md] [--cpu-smoke]

`--cpu-smoke` runs every row on the CPU at toy sizes, to check the script itself where there is no GPU.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "bench")]

from bench_train import REALISTIC, peak_tflops, sync, write_data  # noqa: E402

from lesionseg.config import load_config  # noqa: E402
from lesionseg.data.batches import Prefetched  # noqa: E402
from lesionseg.data.cache import train_batches  # noqa: E402
from lesionseg.data.demo_data import write_demo_dataset  # noqa: E402
from lesionseg.data.preprocessing import load_datalist, split_train_val  # noqa: E402
from lesionseg.devices import amp_dtype  # noqa: E402
from lesionseg.model import build_model  # noqa: E402
from lesionseg.training.loop import train_step  # noqa: E402
from lesionseg.training.losses import build_loss  # noqa: E402

SMOKE = ["data.modalities=[flair,t1,t2]", "data.patch_size=[32,32,32]", "model.channels=[8,16]", "model.strides=[2]"]


class Table:
    def __init__(self, deadline: float) -> None:
        self.rows: list[tuple[str, str]] = []
        self.deadline = deadline

    def row(self, what: str, needs_s: float, measure) -> None:
        left = self.deadline - time.monotonic()
        if left < needs_s:
            self.rows.append((what, f"skipped: {left:.0f} s left, needs ≈ {needs_s:.0f} s"))
            return
        t = time.monotonic()
        try:
            result = measure()
        except Exception as err:  # noqa: BLE001 — a failed row is a result too
            result = f"failed: {type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''}"
        self.rows.append((what, f"{result} ({time.monotonic() - t:.0f} s)"))
        print(f"| {what} | {self.rows[-1][1]} |", flush=True)

    def markdown(self, header: str) -> str:
        return "\n".join([header, "", "| what | result |", "|---|---|", *(f"| {w} | {r} |" for w, r in self.rows)]) + "\n"


def cuda_tests() -> str:
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", "cuda",
                           "tests/evaluation", "tests/training/test_train.py", "tests/data"],
                          cwd=REPO, capture_output=True, text=True, timeout=240)
    return done.stdout.strip().splitlines()[-1] if done.stdout.strip() else f"exit {done.returncode}"


def throughput(datalist: Path, out: Path, device: torch.device, cache: str, sizes: list[str], iterations: int,
               figures: dict) -> str:
    """Sampler + step and resident step, it/s; FLOPs per step and MFU (CUDA)."""
    cfg = load_config(REPO / "configs" / "demo.yaml", [f"data.datalist={datalist}", f"output_dir={out}",
                      "data.val_cases=1", f"data.cache={cache}", f"train.device={device}", *sizes])
    train, _ = split_train_val(load_datalist(cfg)["training"], cfg)
    sampler = train_batches(train, cfg, device)
    model = build_model(cfg).to(device)
    loss_fn = build_loss(cfg.loss, cfg.data.samples_per_volume)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.train.lr)
    dtype = amp_dtype(device, cfg.train.amp)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    resident = sampler(0)
    for it in range(1, 4):
        train_step(model, sampler(it)["image"], sampler(it)["label"], loss_fn, optimizer, scaler, dtype)
    rates = {}
    last = 10 + iterations - 1
    for name, fetch in (("sampler + step", contextlib.nullcontext(sampler)),
                        ("prefetched + step", Prefetched(sampler, last)),  # data.prefetch: the next batch cut meanwhile
                        ("resident step", contextlib.nullcontext(lambda _: resident))):
        sync(device)
        t = time.perf_counter()
        with fetch as get:
            for it in range(10, last + 1):
                b = get(it)
                train_step(model, b["image"], b["label"], loss_fn, optimizer, scaler, dtype)
        sync(device)
        rates[name] = iterations / (time.perf_counter() - t)
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        train_step(model, resident["image"], resident["label"], loss_fn, optimizer, scaler, dtype)
    flops = counter.get_total_flops()
    voxels = resident["image"].shape[0] * resident["image"][0, 0].numel()
    achieved = flops * rates["sampler + step"] / 1e12
    peak = peak_tflops(torch.cuda.get_device_name(device)) if device.type == "cuda" else None
    figures[cache] = rates
    return (f"{rates['sampler + step']:.2f} it/s ({rates['sampler + step'] * voxels / 1e6:.0f} Mvoxel/s), "
            f"prefetched {rates['prefetched + step']:.2f} it/s, resident {rates['resident step']:.2f} it/s; "
            f"{flops / 1e9:.0f} GFLOP/step, {achieved:.1f} TFLOP/s"
            + (f" = MFU {100 * achieved / peak:.1f} % of {peak:.0f}" if peak else "")
            + f", {str(dtype).removeprefix('torch.') if dtype else 'fp32'}")


def loader_share(figures: dict) -> str:
    return "; ".join(f"{cache}: {100 * (1 - r['sampler + step'] / r['resident step']):.1f} % of a step, prefetched "
                     f"{100 * (1 - r['prefetched + step'] / r['resident step']):.1f} %" for cache, r in figures.items())


def evaluator(device: torch.device, n: int, folder: Path) -> str:
    import nibabel as nib
    import numpy as np
    from bench_evaluate import SPACING, synthetic_case

    from lesionseg.evaluation.evaluate import evaluate_cases

    cases = []
    for i in range(n):
        prob, ref = synthetic_case(i)
        for name, array in (("pred", prob), ("ref", ref)):
            nib.save(nib.Nifti1Image(array, np.diag([*SPACING, 1.0])), str(folder / f"{name}{i}.nii.gz"))
        cases.append((f"c{i}", folder / f"pred{i}.nii.gz", folder / f"ref{i}.nii.gz"))
    times = {}
    for where in dict.fromkeys([str(device), "cpu"]):
        evaluate_cases(cases[:1], folder / f"warm-{where}", device=where, progress=False)
        t = time.perf_counter()
        evaluate_cases(cases, folder / f"out-{where}", device=where, progress=False)
        times[where] = (time.perf_counter() - t) / n
    return ", ".join(f"{where} {s:.2f} s/case" for where, s in times.items())


def sweep(folder: Path, device: torch.device, iterations: int) -> str:
    datalist = write_demo_dataset(folder / "demo", cases=16, size=48, seed=0)
    t = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "lesionseg", "sweep", str(REPO / "configs" / "sweep_beta.yaml"),
                           f"data.datalist={datalist}", f"output_dir={folder / 'exp'}", "sweep={loss.beta: [0.5, 0.7]}",
                           f"train.iterations={iterations}", f"train.device={device}", "-q"],
                          cwd=REPO, capture_output=True, text=True, timeout=400)
    if done.returncode != 0:
        return f"failed: {(done.stderr.strip().splitlines() or ['?'])[-1][:200]}"
    return f"2 runs of {iterations} iterations, train → report, {time.perf_counter() - t:.0f} s wall"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=450.0, help="seconds for all rows together")
    parser.add_argument("--out", type=Path, default=None, help="also write the table here")
    parser.add_argument("--cpu-smoke", action="store_true", help="every row on the CPU at toy sizes")
    args = parser.parse_args()
    if not torch.cuda.is_available() and not args.cpu_smoke:
        print("no CUDA device: nothing to measure (bench_gpu.py needs a GPU; --cpu-smoke checks the script)")
        return
    device = torch.device("cpu" if args.cpu_smoke else "cuda")
    name = "CPU (smoke run, toy sizes)" if args.cpu_smoke else torch.cuda.get_device_name(device)
    header = (f"## bench_gpu.py on {name} — torch {torch.__version__}, CUDA {torch.version.cuda}, "
              f"{os.cpu_count()} CPUs")
    table = Table(time.monotonic() + args.budget)
    sizes = SMOKE if args.cpu_smoke else REALISTIC
    small = args.cpu_smoke
    with tempfile.TemporaryDirectory(prefix="bench_gpu_") as tmp:
        tmp = Path(tmp)
        if not args.cpu_smoke:
            table.row("CUDA tests (pytest -k cuda)", 60, cuda_tests)
        t = time.perf_counter()
        datalist = write_data(tmp / "big", realistic=not small, cases=6, size=48 if small else 128)
        print(f"data written in {time.perf_counter() - t:.0f} s", flush=True)
        figures: dict = {}
        its = 3 if small else 20
        table.row("training, volumes cached on the device (data.cache memory)", 40,
                  lambda: throughput(datalist, tmp / "o1", device, "memory", sizes, its, figures))
        table.row("training from the preprocessed store (data.cache disk)", 60,
                  lambda: throughput(datalist, tmp / "o2", device, "disk", sizes, its, figures))
        table.row("the loader's share of a step", 0, lambda: loader_share(figures))
        table.row("evaluator, 182×218×182 cases, device vs CPU", 60,
                  lambda: evaluator(device, 1 if small else 3, tmp))
        table.row("two-run β sweep end to end", 120 if not small else 30,
                  lambda: sweep(tmp / "sweep", device, 4 if small else 200))
    text = table.markdown(header)
    print("\n" + text)
    if args.out:
        args.out.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
