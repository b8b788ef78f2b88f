"""Benchmark: training throughput of lesionseg's data path against the same step on a resident batch and
against the MONAI-tutorial loop. Prints figures; not a test.

On synthetic phantoms (`lesionseg.data.phantom`, written to a temporary folder), with the demo config
(configs/demo.yaml: 3 channels, 48³ patches, 2 volumes × 2 patches per step, U-Net 16→128) or, with
`--realistic`, an nnU-Net-sized setting meant for a GPU (4 channels, 128³ patches, 2 patches per step,
U-Net 32→320 over six levels, the first at full resolution; ≈ 4 TFLOP per step; phantoms of 160×192×160):

  (a) lesionseg: `train_batches` (cached volumes, patches cut and augmented in torch, batch `it` a function of
      (seed, it)) feeding `train.train_step`, in the configured AMP dtype; no host sync inside the loop;
  (b) the same step on one batch already on the device: a/b is the data path's overhead (target ≤ 1.10);
  (c) the obvious MONAI-tutorial loop: `monai.data.Dataset` (uncached) + torch `DataLoader` with the same
      transforms as MONAI objects (`RandCropByPosNegLabeld`, `RandFlipd` ×3, `RandScaleIntensityd`,
      `RandShiftIntensityd`), fp32, `loss.item()` every step.
(a) and (b) run in alternating blocks on one model, so load from other processes hits both alike; every
figure is the median over blocks (a shared machine's load comes in bursts).
On CUDA also: (b) in fp32 vs AMP, peak GPU memory, FLOPs of one step (`FlopCounterMode`) and the achieved
TFLOP/s against the GPU's dense bf16 peak.

    .venv/bin/python bench/bench_train.py [--realistic] [--iterations 30] [--baseline-workers N]
                                          [--channels-last] [--compile] [--device auto|cpu|cuda]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch
from monai.data import DataLoader, Dataset, list_data_collate
from monai.transforms import (
    Compose,
    RandCropByPosNegLabeld,
    RandFlipd,
    RandScaleIntensityd,
    RandShiftIntensityd,
    SelectItemsd,
)

from lesionseg.config import Config, load_config
from lesionseg.data.cache import train_batches
from lesionseg.data.demo_data import write_demo_dataset
from lesionseg.data.preprocessing import load_datalist, preprocessing, split_train_val
from lesionseg.devices import amp_dtype, resolve_device
from lesionseg.model import build_model
from lesionseg.training.loop import seed_everything, to_memory_format, train_step
from lesionseg.training.losses import build_loss

REPO = Path(__file__).resolve().parents[1]

# Dense (no sparsity) bf16 tensor-core peaks from NVIDIA's data sheets, TFLOP/s; matched in this order.
PEAK_BF16_TFLOPS = [("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.0), ("H200", 989.0),
                    ("GH200", 989.0), ("A100", 312.0), ("L40S", 362.0), ("A10", 125.0)]

REALISTIC = ["data.modalities=[flair,t1,t2,pd]", "data.patch_size=[128,128,128]", "data.samples_per_volume=1",
             "model.channels=[32,64,128,256,320,320]", "model.strides=[1,2,2,2,2]"]


def write_data(folder: Path, realistic: bool, cases: int | None = None, size: int | None = None) -> Path:
    """Phantoms (64³-ish demo size, or 160³ for --realistic); --realistic adds a fourth channel ("pd")."""
    datalist = write_demo_dataset(folder, cases=cases or (8 if realistic else 12),
                                  size=size or (160 if realistic else 64), seed=0)
    if realistic:
        raw = json.loads(datalist.read_text())
        raw["modalities"] = [*raw["modalities"], "pd"]
        for entry in raw["training"] + raw["test"]:
            t2 = folder / entry["image"][2]
            pd = t2.with_name(t2.name.replace("_t2", "_pd"))
            shutil.copyfile(t2, pd)
            entry["image"].append(str(pd.relative_to(folder)))
        datalist.write_text(json.dumps(raw))
    return datalist


def monai_augmentation(cfg: Config) -> list:
    """The random MONAI transforms lesionseg used before its torch sampler (and the baseline uses)."""
    keys, pos = ["image", "label"], cfg.data.pos_fraction
    return [
        RandCropByPosNegLabeld(keys=keys, label_key="label", spatial_size=cfg.data.patch_size, pos=pos, neg=1.0 - pos,
                               num_samples=cfg.data.samples_per_volume, fg_indices_key="label_fg_indices",
                               bg_indices_key="label_bg_indices"),
        *(RandFlipd(keys=keys, prob=0.5, spatial_axis=axis) for axis in range(3)),
        RandScaleIntensityd(keys="image", factors=0.1, prob=0.5),
        RandShiftIntensityd(keys="image", offsets=0.1, prob=0.5),
        SelectItemsd(keys=keys),
    ]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_tflops(name: str) -> float | None:
    return next((peak for key, peak in PEAK_BF16_TFLOPS if key in name), None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--realistic", action="store_true", help="4 channels, 128³ patches, U-Net 32→320 (GPU)")
    parser.add_argument("--iterations", type=int, default=30, help="timed iterations of each of (a), (b), (c)")
    parser.add_argument("--block", type=int, default=3, help="iterations per timed block (medians over blocks)")
    parser.add_argument("--baseline-workers", type=int, default=min(4, os.cpu_count() or 1))
    parser.add_argument("--channels-last", action="store_true", help="train.channels_last=true for (a) and (b)")
    parser.add_argument("--compile", action="store_true", help="train.compile=true (torch.compile) for (a) and (b)")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()

    device = resolve_device(args.device)
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, load average "
          f"{' '.join(f'{x:.1f}' for x in os.getloadavg())}; torch {torch.__version__} ({torch.get_num_threads()} "
          f"threads), cuDNN {torch.backends.cudnn.version()}, device {device}"
          + (f" = {torch.cuda.get_device_name(device)}" if device.type == "cuda" else ""))

    tmp = Path(tempfile.mkdtemp(prefix="bench_train_"))
    try:
        t0 = time.perf_counter()
        datalist = write_data(tmp, args.realistic)
        overrides = [f"data.datalist={datalist}", "data.val_cases=2", f"train.device={args.device}", f"output_dir={tmp}",
                     f"train.channels_last={str(args.channels_last).lower()}",
                     *(REALISTIC if args.realistic else [])]
        cfg = load_config(REPO / "configs" / "demo.yaml", overrides)
        seed_everything(cfg, device)
        train, _ = split_train_val(load_datalist(cfg)["training"], cfg)
        print(f"data: {len(train)} training phantoms written in {time.perf_counter() - t0:.1f} s; "
              f"{len(cfg.data.modalities)} channels, patch {cfg.data.patch_size}, "
              f"{cfg.train.batch_size} volumes × {cfg.data.samples_per_volume} patches per step, "
              f"U-Net {cfg.model.channels}")
        run(cfg, train, device, args)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def run(cfg: Config, train: list[dict], device: torch.device, args: argparse.Namespace) -> None:
    t0 = time.perf_counter()
    sampler = train_batches(train, cfg, device)
    cache_on = sampler.volumes[0].image.device
    print(f"cache: preprocessed {len(train)} volumes in {time.perf_counter() - t0:.1f} s, held on {cache_on}")
    model = build_model(cfg).to(device)
    if cfg.train.channels_last:
        model = model.to(memory_format=torch.channels_last_3d)
    step_model = torch.compile(model) if args.compile else model
    loss_fn = build_loss(cfg.loss, cfg.data.samples_per_volume)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.train.lr)
    dtype = amp_dtype(device, cfg.train.amp)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    patches = min(cfg.train.batch_size, len(train)) * cfg.data.samples_per_volume
    voxels = patches * cfg.data.patch_size[0] * cfg.data.patch_size[1] * cfg.data.patch_size[2]

    resident = to_memory_format(sampler(0), cfg.train.channels_last)

    def step_a(it: int, dt=dtype) -> torch.Tensor:
        image, label = to_memory_format(sampler(it), cfg.train.channels_last)
        return train_step(step_model, image, label, loss_fn, optimizer, scaler, dt)

    def step_b(it: int, dt=dtype) -> torch.Tensor:
        return train_step(step_model, *resident, loss_fn, optimizer, scaler, dt)

    for it in range(1, 4):  # warm-up: allocator, cuDNN autotuning, compilation
        step_a(it), step_b(it)
    sync(device)
    blocks: dict[str, list[float]] = {"a": [], "b": [], "sampler": []}
    it = 10
    for _ in range(max(1, args.iterations // args.block)):
        for key, step in (("a", step_a), ("b", step_b)):
            total = torch.zeros((), device=device)
            t = time.perf_counter()
            for _ in range(args.block):
                it += 1
                total += step(it)
            sync(device)
            float(total)
            blocks[key].append((time.perf_counter() - t) / args.block)
        t = time.perf_counter()
        for _ in range(args.block):
            it += 1
            sampler(it)
        sync(device)
        blocks["sampler"].append((time.perf_counter() - t) / args.block)
    rate = {k: 1.0 / statistics.median(v) for k, v in blocks.items()}
    amp_name = str(dtype).removeprefix("torch.") if dtype else "fp32"
    flags = ", ".join(f for f, on in (("channels_last", args.channels_last), ("compile", args.compile)) if on)
    print(f"precision {amp_name}{', ' + flags if flags else ''}; {args.iterations} timed iterations each")
    for key, label in (("a", "(a) lesionseg sampler + step"), ("b", "(b) step on a resident batch")):
        print(f"{label:34s} {rate[key]:7.2f} it/s  {rate[key] * voxels / 1e6:8.1f} Mvoxel/s")
    print(f"data-path overhead a/b (time per iteration): {rate['b'] / rate['a']:.3f}  (target ≤ 1.10); the sampler "
          f"alone: {1e3 / rate['sampler']:.1f} ms per batch = {rate['b'] / rate['sampler']:.3f} of a resident step")

    if device.type == "cuda":  # before (c), whose model would count in the peak memory
        cuda_figures(model, step_b, resident, loss_fn, optimizer, scaler, dtype, device, args, rate["b"])

    # (c) the MONAI-tutorial loop, fp32, loss.item() every step, on a fresh model.
    base_model = build_model(cfg).to(device)
    base_opt = torch.optim.Adam(base_model.parameters(), lr=cfg.train.lr)
    transforms = Compose([*preprocessing(cfg, with_label=True, with_indices=True).transforms, *monai_augmentation(cfg)])
    data = [{"image": e["image"], "label": e["label"], **({"mask": e["mask"]} if e.get("mask") else {})} for e in train]
    loader = DataLoader(Dataset(data, transform=transforms), batch_size=min(cfg.train.batch_size, len(data)),
                        shuffle=True, drop_last=True, num_workers=args.baseline_workers, collate_fn=list_data_collate,
                        pin_memory=device.type == "cuda", persistent_workers=args.baseline_workers > 0)

    def batches():
        while True:
            yield from loader

    stream = batches()
    times = []
    for i in range(3 + args.iterations):
        t = time.perf_counter()
        batch = next(stream)
        image, label = batch["image"].to(device), batch["label"].to(device)
        loss = loss_fn(base_model(image), label)
        base_opt.zero_grad(set_to_none=True)
        loss.backward()
        base_opt.step()
        loss.item()
        times.append(time.perf_counter() - t)
    blocks_c = [sum(times[i : i + args.block]) / args.block for i in range(3, len(times) - args.block + 1, args.block)]
    rate_c = 1.0 / statistics.median(blocks_c)
    del stream, loader
    print(f"{'(c) MONAI tutorial loop, fp32':34s} {rate_c:7.2f} it/s  {rate_c * voxels / 1e6:8.1f} Mvoxel/s  "
          f"({args.baseline_workers} DataLoader workers)")
    print(f"lesionseg / baseline (a/c, iterations per second): {rate['a'] / rate_c:.2f}×")


def cuda_figures(model, step_b, resident, loss_fn, optimizer, scaler, dtype, device, args, rate_amp) -> None:
    from torch.utils.flop_counter import FlopCounterMode

    sync(device)
    torch.cuda.reset_peak_memory_stats(device)
    step_b(0)
    sync(device)
    print(f"peak GPU memory, one {str(dtype).removeprefix('torch.') if dtype else 'fp32'} step: "
          f"{torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB")
    for _ in range(3):
        step_b(0, None)
    sync(device)
    t = time.perf_counter()
    for _ in range(args.iterations):
        step_b(0, None)
    sync(device)
    rate_fp32 = args.iterations / (time.perf_counter() - t)
    tf32 = "TF32 convolutions" if torch.backends.cudnn.allow_tf32 else "no TF32"
    print(f"(b) in fp32 ({tf32}): {rate_fp32:.2f} it/s; AMP/fp32 speed-up {rate_amp / rate_fp32:.2f}×")

    counter = FlopCounterMode(display=False)
    with counter:
        train_step(model, *resident, loss_fn, optimizer, scaler, dtype)
    flops = counter.get_total_flops()
    name = torch.cuda.get_device_name(device)
    peak = peak_tflops(name)
    achieved = flops * rate_amp / 1e12
    share = f" = {100 * achieved / peak:.1f} % of the {peak:.0f} TFLOP/s dense bf16 peak" if peak else " (peak unknown)"
    print(f"FLOPs per step (forward + backward): {flops / 1e9:.1f} GFLOP; achieved {achieved:.1f} TFLOP/s on "
          f"{name}{share}")


if __name__ == "__main__":
    main()
