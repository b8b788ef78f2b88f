"""Shared fixtures: tiny seeded phantom datasets written to tmp folders, and CPU-sized configs."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import REPO, TINY

from lesionseg.config import load_config
from lesionseg.data.demo_data import write_demo_dataset


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
