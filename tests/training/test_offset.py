"""`model.prior: auto` (the offset starts at the lesion share of the training patches) and the poly schedule."""

import json
import math

import numpy as np
import pytest
import torch

from lesionseg.config import Config
from lesionseg.data.cache import train_batches
from lesionseg.data.preprocessing import load_datalist, split_train_val
from lesionseg.runs import start_run_dir
from lesionseg.training.loop import _build, train_run
from lesionseg.training.offset import CEILING, FLOOR, SHARE_BATCHES, lesion_share, starting_prior


def _batches_with(lesion_voxels: list[int], voxels: int = 1000):
    """Batch `it` (1-based) holds `lesion_voxels[it - 1]` lesion voxels out of `voxels`."""
    def batches(it):
        label = torch.zeros(1, 1, voxels)
        label[..., : lesion_voxels[it - 1]] = 1
        return {"label": label}
    return batches


def test_the_share_is_lesion_voxels_over_all_voxels_of_the_first_batches():
    # 3 batches of 1000 voxels: (10 + 0 + 50) / 3000 by hand
    assert lesion_share(_batches_with([10, 0, 50]), iterations=3) == pytest.approx(60 / 3000)
    # a run shorter than SHARE_BATCHES: only its own batches are read (batch 3 would fail)
    assert lesion_share(_batches_with([10, 30]), iterations=2) == pytest.approx(40 / 2000)
    # a long run: the first SHARE_BATCHES only
    counts = [7] * SHARE_BATCHES + [1000]
    assert lesion_share(_batches_with(counts), iterations=10_000) == pytest.approx(7 / 1000)


@pytest.mark.parametrize("share, expected", [(0.0, FLOOR), (1e-5, FLOOR), (0.02, 0.02), (0.9, CEILING)])
def test_the_starting_prior_is_the_share_within_its_bounds(share, expected):
    assert starting_prior(share) == expected


def test_prior_auto_is_accepted_and_other_words_or_bounds_are_not():
    assert Config.model_validate({"model": {"prior": "auto"}}).model.prior == "auto"
    for bad in ("often", 0.0, 1.0, -0.1):
        with pytest.raises(ValueError, match="prior"):
            Config.model_validate({"model": {"prior": bad}})


@pytest.mark.slow
def test_an_auto_run_starts_its_offset_at_the_measured_share_and_says_so(tiny_config, tmp_path, capsys):
    cfg = tiny_config("model.prior=auto", "train.iterations=1", "train.val_every=1", "train.lr=0.0001")
    # the reference: the mean label of the same batches, drawn here with numpy
    lists = load_datalist(cfg)
    batches = train_batches(split_train_val(lists["training"], cfg)[0], cfg, "cpu")
    share = float(np.mean(batches(1)["label"].numpy()))
    run_dir = start_run_dir(tmp_path / "run", cfg)
    summary = train_run(cfg, run_dir, progress=False)
    assert summary["prior"] == {"setting": "auto", "start": pytest.approx(max(share, FLOOR)),
                                "lesion_share": pytest.approx(share)}
    # after one Adam step of 1e-4 the offset is within 1e-4 (plus rounding) of where it started
    offset = torch.load(run_dir / "checkpoints" / "last.pt")["model"]["offset"].item()
    start = max(share, FLOOR)
    assert offset == pytest.approx(math.log(start / (1 - start)), abs=2e-4)
    note = f"model.prior: auto → {start:.4g}, the lesion share of the first 1 training batches"
    printed = capsys.readouterr()
    assert note in printed.out + printed.err
    assert (run_dir / "config.yaml").read_text().rstrip().splitlines()[-1].startswith(f"# {note}")
    # the other auto setting of the recipe, said the same way
    assert "loss.ce_weight: auto → 1 (tversky is an overlap loss)" in printed.out + printed.err
    assert "# loss.ce_weight: auto → 1 (tversky is an overlap loss)\n" in (run_dir / "config.yaml").read_text()
    assert json.loads((run_dir / "train_summary.json").read_text())["prior"]["setting"] == "auto"


@pytest.mark.slow
def test_a_resumed_auto_run_keeps_its_checkpoints_start_without_measuring_again(tiny_config, tmp_path,
                                                                               monkeypatch):
    cfg = tiny_config("model.prior=auto", "train.iterations=1", "train.val_every=1", "train.lr=0.0001")
    run_dir = start_run_dir(tmp_path / "run", cfg)
    first = train_run(cfg, run_dir, progress=False)["prior"]
    assert torch.load(run_dir / "checkpoints" / "last.pt")["prior"] == first

    def no_second_measurement(*args, **kwargs):
        raise AssertionError("the lesion share was measured again on resume")

    monkeypatch.setattr("lesionseg.training.loop.lesion_share", no_second_measurement)
    longer = tiny_config("model.prior=auto", "train.iterations=2", "train.val_every=1", "train.lr=0.0001")
    resumed = train_run(longer, run_dir, progress=False)  # resumes after iteration 1 from last.pt
    assert resumed["prior"] == first
    assert (run_dir / "config.yaml").read_text().count("model.prior: auto →") == 1


def test_a_fixed_prior_is_reported_as_set():
    from lesionseg.training.loop import _start_offset
    cfg = Config.model_validate({"model": {"prior": 0.02}})
    assert _start_offset(None, None, cfg, None, "run", fresh=True) == {"setting": 0.02, "start": 0.02}


def test_poly_schedule_is_nnunets_decay_to_zero():
    cfg = Config.model_validate({"data": {"patch_size": [16, 16, 16]},
                                 "model": {"channels": [4, 8], "strides": [2]},
                                 "train": {"lr": 0.01, "iterations": 10, "lr_schedule": "poly"}})
    parts = _build(cfg, torch.device("cpu"))
    rates = []
    for _ in range(10):
        rates.append(parts.optimizer.param_groups[0]["lr"])
        parts.optimizer.step()
        parts.scheduler.step()
    assert rates == pytest.approx([0.01 * (1 - k / 10) ** 0.9 for k in range(10)])
    assert parts.optimizer.param_groups[0]["lr"] == 0.0
