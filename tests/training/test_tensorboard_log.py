"""TensorBoard extras: the HParams row lands in the run's own folder; overlay panels show the largest lesion."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2
from torch.utils.tensorboard import SummaryWriter

from lesionseg.config import Config
from lesionseg.training.tensorboard_log import (
    COLOURS,
    hparam_values,
    lesion_slice,
    log_hparams,
    log_validation_overlay,
    overlay_due,
    overlay_panel,
)


def events(run_dir) -> EventAccumulator:
    acc = EventAccumulator(str(run_dir), size_guidance={"images": 0, "scalars": 0, "tensors": 0})
    acc.Reload()
    return acc


def test_hparams_row_is_written_into_the_run_folder(tmp_path):
    cfg = Config.model_validate({"seed": 2, "loss": {"beta": 0.8}, "train": {"iterations": 30}})
    summary = {"per_case": {"dsc": {"mean": 0.61}, "f2": {"mean": 0.7}, "hd95_mm": {"mean": math.nan}},
               "pooled": {"apr": 0.55, "ece": 0.004}}
    tuned = {"dsc": {"threshold": 0.31, "per_case": {"dsc": {"mean": 0.66}}},
             "f2": {"threshold": 0.12, "per_case": {"f2": {"mean": 0.74}}}}
    metrics = log_hparams(tmp_path, cfg, summary, tuned)
    assert metrics == pytest.approx({"test/dsc": 0.61, "test/f2": 0.7, "test/hd95_mm": math.nan,
                                     "test/apr_pooled": 0.55, "test/ece_pooled": 0.004, "test/dsc_tuned": 0.66,
                                     "threshold/dsc": 0.31, "test/f2_tuned": 0.74, "threshold/f2": 0.12},
                                    nan_ok=True)
    assert [p.name for p in tmp_path.iterdir() if p.is_dir()] == []  # no timestamped sub-run (add_hparams does)
    acc = events(tmp_path)
    assert acc.Scalars("test/dsc")[0].value == pytest.approx(0.61) and acc.Scalars("test/dsc")[0].step == 30
    content = acc.PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
    hp = start.session_start_info.hparams
    assert hp["loss.beta"].number_value == 0.8 and hp["loss.alpha"].number_value == pytest.approx(0.2)
    assert hp["seed"].number_value == 2 and hp["loss.name"].string_value == "tversky"
    assert hp["model.channels"].string_value == "[16, 32, 64, 128]"
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    assert {m.name.tag for m in experiment.metric_infos} == set(metrics)


def test_hparam_values_are_scalars():
    values = hparam_values(Config())
    assert all(isinstance(v, (int, float, str, bool)) for v in values.values())
    assert values["loss.alpha"] == pytest.approx(0.3) and values["data.patch_size"] == "[64, 64, 64]"


@pytest.mark.parametrize(("every", "iterations", "expected"), [
    (1, 10, [2, 4, 6, 8, 10]),
    (2, 10, [4, 8, 10]),        # every second validation, and always the last
    (3, 7, [6, 7]),             # the final validation falls between two regular ones
    (0, 10, []),                # never
])
def test_overlay_due(every, iterations, expected):
    cfg = Config.model_validate({"train": {"iterations": iterations, "val_every": 2, "val_images_every": every}})
    validations = [i for i in range(1, iterations + 1) if i % 2 == 0 or i == iterations]
    assert [i for i in validations if overlay_due(i, cfg)] == expected


def test_lesion_slice_goes_through_the_largest_lesion():
    ref = np.zeros((10, 10, 12), bool)
    ref[1:3, 1:3, 2] = True           # 4 voxels
    ref[5:9, 5:9, 6:8] = True         # 32 voxels, widest on slices 6 and 7
    ref[5:7, 5:7, 8] = True           # joined to it (26-connected), narrower
    pred = np.zeros_like(ref)
    assert lesion_slice(ref, pred) == 6
    pred[0, 0, 9] = True
    assert lesion_slice(np.zeros_like(ref), pred) == 9
    assert lesion_slice(np.zeros_like(ref), np.zeros_like(ref)) == 6


def test_overlay_panel_shows_agreement_misses_and_false_alarms():
    rng = np.random.default_rng(0)
    image = rng.normal(1, 0.1, (16, 16, 8)).astype(np.float32)
    ref = np.zeros(image.shape, bool)
    ref[4:10, 4:10, 3] = True
    pred = np.zeros_like(ref)
    pred[6:12, 6:12, 3] = True
    panel = overlay_panel(image, ref, pred, "case_000")
    assert panel.dtype == np.uint8 and panel.ndim == 3 and panel.shape[2] == 3 and panel.shape[1] > panel.shape[0]
    pixels = panel.reshape(-1, 3).astype(int)
    for colour in COLOURS.values():
        target = np.round(np.array(colour) * 255)
        assert (np.abs(pixels - target).max(axis=1) <= 60).sum() > 50, colour


def test_log_validation_overlay_writes_an_image(tmp_path):
    image = torch.zeros(1, 12, 12, 6)
    image[0, 2:10, 2:10] = 1.0
    label = torch.zeros(1, 12, 12, 6)
    label[0, 4:7, 4:7, 2:4] = 1
    prob = torch.roll(label, 1, dims=1).float()
    cfg = Config()
    with SummaryWriter(str(tmp_path)) as writer:
        log_validation_overlay(writer, {"case": "c7", "image": image, "label": label}, prob, cfg, 5)
    (img,) = events(tmp_path).Images("val/overlay")
    assert img.step == 5 and img.width > img.height > 100
