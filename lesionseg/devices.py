"""Device settings (`train.device`, `data.cache_device`) to torch devices."""

from __future__ import annotations

import torch

from lesionseg.errors import LesionsegError


def resolve_device(name: str, key: str = "train.device") -> torch.device:
    """The device of a setting (auto: CUDA when present); LesionsegError naming `key` for CUDA without one."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise LesionsegError(f"{key}: {name!r} asked for, but PyTorch sees no CUDA device; use auto or cpu")
    return torch.device(name)
