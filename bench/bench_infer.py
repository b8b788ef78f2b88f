"""Benchmark: sliding-window inference seconds per case for a 182×218×182 four-channel volume. Prints
figures; not a test.

The volume is the real MS patient of `../shared/data/open_ms_data/patient07` (FLAIR, T1, T1POST, T2; 1 mm,
MNI space) when it is there, else random intensities of the same shape. Two timings per setting:

  infer    `train.infer_volume` on the preprocessed volume already in memory: Gaussian-weighted sliding
           window (`eval.overlap`, `eval.sw_batch_size` windows per forward pass), sigmoid; AMP on CUDA;
  predict  `predict.predict_cases` end to end: read the NIfTI files, preprocess, infer, invert the
           preprocessing, write the float32 probability map (patient07 only).

Networks are untrained (timing does not depend on the weights): the demo U-Net (16→128, 48³ windows) and,
with `--realistic`, the nnU-Net-sized one of `bench_train.py` (32→320, 128³ windows) meant for a GPU.

    .venv/bin/python bench/bench_infer.py [--realistic] [--repeats 3] [--sw-batch-size 4] [--device auto]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from lesionseg.config import load_config
from lesionseg.data.preprocessing import preprocessing
from lesionseg.devices import amp_dtype, resolve_device
from lesionseg.inference import infer_volume, predict_cases
from lesionseg.model import build_model

REPO = Path(__file__).resolve().parents[1]
PATIENT = REPO.parent / "shared" / "data" / "open_ms_data" / "patient07"
MODALITIES = ["flair", "t1", "t1post", "t2"]
SHAPE = (182, 218, 182)
REALISTIC = ["data.patch_size=[128,128,128]", "model.channels=[32,64,128,256,320,320]", "model.strides=[1,2,2,2,2]"]


def patient_files() -> list[str] | None:
    files = [PATIENT / f"{m}.nii.gz" for m in MODALITIES]
    return [str(f) for f in files] if all(f.is_file() for f in files) else None


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--realistic", action="store_true", help="U-Net 32→320 with 128³ windows (GPU)")
    parser.add_argument("--repeats", type=int, default=None, help="timed cases (default: 1 on CPU, 5 on CUDA)")
    parser.add_argument("--sw-batch-size", type=int, default=4)
    parser.add_argument("--overlap", type=float, default=0.5)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()

    files = patient_files()
    overrides = [f"data.modalities=[{','.join(MODALITIES)}]", f"eval.sw_batch_size={args.sw_batch_size}",
                 f"eval.overlap={args.overlap}", f"train.device={args.device}"]
    cfg = load_config(REPO / "configs" / "demo.yaml", overrides + (REALISTIC if args.realistic else []))
    device = resolve_device(cfg.train.device)
    repeats = args.repeats or (5 if device.type == "cuda" else 1)
    torch.manual_seed(0)
    model = build_model(cfg).to(device).eval()

    print(f"device {torch.cuda.get_device_name(device) if device.type == 'cuda' else platform.processor() or 'cpu'}"
          f", torch {torch.__version__}, cuDNN {torch.backends.cudnn.version()}, threads {torch.get_num_threads()}")
    print(f"network {'realistic 32→320' if args.realistic else 'demo 16→128'}, windows {cfg.data.patch_size}, "
          f"overlap {cfg.eval.overlap}, {cfg.eval.sw_batch_size} windows per pass, AMP {amp_dtype(device, cfg.train.amp)}")
    if files:
        item = preprocessing(cfg, with_label=False)({"image": files})
        image, source = item["image"], f"patient07 ({', '.join(MODALITIES)})"
    else:
        image, source = torch.randn(len(MODALITIES), *SHAPE), "random intensities (../shared absent)"
    print(f"volume {tuple(image.shape)} from {source}")

    infer_volume(model, image, cfg, device)  # warm-up: cuDNN autotuning, allocator
    times = timed(lambda: infer_volume(model, image, cfg, device), device, repeats)
    print(f"infer    {statistics.median(times):7.2f} s per case (median of {repeats}; all: "
          f"{', '.join(f'{t:.2f}' for t in times)})")
    if device.type == "cuda":
        print(f"peak GPU memory {torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB")
    if files:
        entry = {"case": "patient07", "image": files}
        with tempfile.TemporaryDirectory() as out:
            times = timed(lambda: predict_cases(model, cfg, [entry], Path(out), device, progress=False), device,
                          repeats)
        print(f"predict  {statistics.median(times):7.2f} s per case, read → preprocess → infer → invert → write")


if __name__ == "__main__":
    main()
