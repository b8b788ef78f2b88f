"""Shared fixtures: tiny seeded phantom datasets written to tmp folders, and CPU-sized configs."""

from __future__ import annotations

from pathlib import Path

import pytest

from lesionseg.config import load_config
from lesionseg.phantom import write_demo_dataset

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
