"""Shared fixtures: tiny seeded phantom datasets written to tmp folders, and CPU-sized configs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from lesionseg.config import load_config
from lesionseg.data.demo_data import write_demo_dataset

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data" / "open_ms_data" / "patient07"

# A run small enough for a test: a two-level U-Net on 16³ patches, a handful of iterations.
TINY = [
    "data.patch_size=[16,16,16]",
    "data.val_cases=1",
    "model.channels=[4,8]",
    "model.strides=[2]",
    "model.res_units=1",
    "train.iterations=4",
    "train.val_every=2",
    "train.log_every=2",
    "eval.sw_batch_size=2",
]


def lesionseg(*args, cwd, check=True) -> subprocess.CompletedProcess:
    """`python -m lesionseg ARGS…` in a subprocess; `check`: fail the test, with its output, unless it exits 0."""
    result = subprocess.run([sys.executable, "-m", "lesionseg", *map(str, args)], cwd=cwd,
                            capture_output=True, text=True, timeout=600)
    if check and result.returncode != 0:
        raise AssertionError(f"lesionseg {' '.join(map(str, args))} failed:\n{result.stdout}\n{result.stderr}")
    return result


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> Path:
    """Five 24-voxel phantoms (four training, one test) and their datalist."""
    return write_demo_dataset(tmp_path_factory.mktemp("phantoms"), cases=5, size=24, seed=3)


@pytest.fixture
def tiny_config(tiny_dataset, tmp_path):
    def make(*overrides: str):
        return load_config(
            REPO / "configs" / "demo.yaml",
            [f"data.datalist={tiny_dataset}", f"output_dir={tmp_path / 'experiments'}", *TINY, *overrides],
        )

    return make
