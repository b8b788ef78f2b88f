"""Device settings to torch: `train.device` and `data.cache_device` to devices, `train.amp` to an autocast
dtype (the one rule training and inference share)."""

from __future__ import annotations

from contextlib import nullcontext

import torch

from lesionseg.errors import LesionsegError


def resolve_device(name: str, key: str = "train.device") -> torch.device:
    """The device of a setting (auto: CUDA when present); LesionsegError naming `key` for CUDA without one."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise LesionsegError(f"{key}: {name!r} asked for, but PyTorch sees no CUDA device; use auto or cpu")
    return torch.device(name)


def amp_dtype(device: torch.device, setting: str) -> torch.dtype | None:
    """The autocast dtype for `train.amp`; None means full precision (fp32).

    auto: bf16 on a GPU that has it, else fp16 (with a gradient scaler); fp32 on the CPU. bf16 and fp16
    ask for that dtype (bf16 also on the CPU; fp16 only on CUDA).
    """
    if setting == "off" or (setting == "auto" and device.type != "cuda"):
        return None
    bf16_ok = device.type != "cuda" or torch.cuda.is_bf16_supported()
    if setting == "auto":
        return torch.bfloat16 if bf16_ok else torch.float16
    if setting == "bf16" and not bf16_ok:
        raise LesionsegError(f"train.amp: bf16 is not supported on {device} ({torch.cuda.get_device_name(device)}); "
                             "use auto or fp16")
    if setting == "fp16" and device.type != "cuda":
        raise LesionsegError(f"train.amp: fp16 needs a CUDA device, not {device}; use auto, bf16 or off")
    return torch.bfloat16 if setting == "bf16" else torch.float16


def autocast(device: torch.device, dtype: torch.dtype | None):
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()
