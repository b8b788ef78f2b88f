"""A run's checkpoint on disk, every random generator's state in it, and the stop request (SIGINT/SIGTERM)
that makes the loop checkpoint and leave after the current iteration."""

from __future__ import annotations

import random
import signal
import threading
from pathlib import Path

import numpy as np
import torch

from lesionseg.files import write_atomic


def save_checkpoint(path: Path, state: dict) -> None:
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as handle:  # a file object: a full disk surfaces as the OSError it is
            torch.save(state, handle)

    write_atomic(path, write)


def rng_state() -> dict:
    """Every RNG's state, in types that `torch.load(weights_only=True)` accepts (tensors, tuples, ints)."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    return {"python": random.getstate(),
            "numpy": (name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss),
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    name, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class StopRequest:
    """SIGINT/SIGTERM ask the loop to stop after the current iteration (and checkpoint it), not mid-step."""

    def __init__(self) -> None:
        self.requested: str | None = None
        self._previous = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:
        self.requested = signal.Signals(signum).name

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}
