import json

import pytest
import torch
from helpers import tversky_by_hand
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lesionseg.config import Config
from lesionseg.devices import amp_dtype, resolve_device
from lesionseg.errors import LesionsegError
from lesionseg.model import build_model
from lesionseg.runs import start_run_dir
from lesionseg.training.loop import train_run

pytestmark = pytest.mark.slow


def test_a_short_run_writes_checkpoints_and_tensorboard(tiny_config, tmp_path):
    cfg = tiny_config()
    run_dir = start_run_dir(tmp_path / "run", cfg)
    summary = train_run(cfg, run_dir, progress=False)
    assert (run_dir / "checkpoints" / "best.pt").is_file() and (run_dir / "checkpoints" / "last.pt").is_file()
    last = torch.load(run_dir / "checkpoints" / "last.pt")
    assert last["iteration"] == 4 and set(last) >= {"model", "optimizer", "scheduler", "scaler"}
    assert summary["best"]["iteration"] in (2, 4) and 0.0 <= summary["last"]["dsc"] <= 1.0
    split = json.loads((run_dir / "split.json").read_text())
    assert len(split["train"]) == 2 and len(split["validation"]) == 1 and len(split["test"]) == 2
    events = EventAccumulator(str(run_dir))
    events.Reload()
    assert {"train/loss", "train/lr", "val/dsc", "val/f2", "val/volume_ratio", "val/collapsed"} <= set(
        events.Tags()["scalars"])
    assert [e.step for e in events.Scalars("val/dsc")] == [2, 4]
    # the collapse check at every validation: 0/1 in TensorBoard, the flags themselves in the summary
    assert events.Scalars("val/collapsed")[-1].value == float(bool(summary["last"]["collapse"]))


def test_same_seed_same_weights_on_cpu(tiny_config, tmp_path):
    weights = []
    for name in ("a", "b"):
        cfg = tiny_config("deterministic=true", "train.iterations=2")
        run_dir = start_run_dir(tmp_path / name, cfg)
        train_run(cfg, run_dir, progress=False)
        weights.append(torch.load(run_dir / "checkpoints" / "last.pt")["model"])
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    torch.use_deterministic_algorithms(False)


def test_cpu_runs_without_amp():
    assert resolve_device("cpu") == torch.device("cpu")
    assert amp_dtype(torch.device("cpu"), "auto") is None


@pytest.mark.parametrize(
    "setting, expected",
    [("auto", None), ("off", None), ("bf16", torch.bfloat16), ("on", None), (False, None)],
)
def test_amp_settings_on_the_cpu(setting, expected):
    amp = Config.model_validate({"train": {"amp": setting}}).train.amp  # YAML reads a bare on/off as a bool
    assert amp in ("auto", "bf16", "fp16", "off")
    assert amp_dtype(torch.device("cpu"), amp) == expected


def test_fp16_asks_for_cuda():
    with pytest.raises(LesionsegError, match=r"train.amp: fp16 needs a CUDA device, not cpu"):
        amp_dtype(torch.device("cpu"), "fp16")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_amp_auto_on_cuda_is_bf16_where_supported():
    expected = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    assert amp_dtype(torch.device("cuda"), "auto") == expected


@pytest.mark.parametrize("option", ["train.channels_last=true", "train.amp=bf16"])
def test_training_options_run_on_the_cpu(tiny_config, tmp_path, option):
    cfg = tiny_config(option, "train.iterations=2")
    run_dir = start_run_dir(tmp_path / "run", cfg)
    summary = train_run(cfg, run_dir, progress=False)
    assert torch.load(run_dir / "checkpoints" / "last.pt")["iteration"] == 2 and "dsc" in summary["last"]


def test_compiled_training_runs_and_saves_plain_weights(tiny_config, tmp_path, monkeypatch):
    # Inductor (the default backend) compiles C++ on the CPU: ~45 s cold on 2 cores, too slow for the suite.
    # aot_eager traces the same graphs (Dynamo + AOTAutograd, forward and backward) without code generation.
    real_compile = torch.compile
    monkeypatch.setattr(torch, "compile", lambda model: real_compile(model, backend="aot_eager"))
    cfg = tiny_config("train.compile=true", "train.iterations=2")
    run_dir = start_run_dir(tmp_path / "run", cfg)
    train_run(cfg, run_dir, progress=False)
    weights = torch.load(run_dir / "checkpoints" / "last.pt")["model"]
    assert not any(key.startswith("_orig_mod.") for key in weights)  # loads into an uncompiled model
    build_model(cfg).load_state_dict(weights)


def test_a_non_finite_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tiny_config, tmp_path, monkeypatch):
    import lesionseg.training.losses as losses_module
    from lesionseg.errors import LesionsegError
    from lesionseg.training.losses import build_loss

    calls = []

    def exploding_loss(cfg, patches_per_case=1):
        real = build_loss(cfg, patches_per_case)

        def loss(logits, label):
            calls.append(1)
            value = real(logits, label)
            return value * float("nan") if len(calls) > 2 else value

        return loss

    monkeypatch.setattr(losses_module, "build_loss", exploding_loss)
    cfg = tiny_config()
    run_dir = start_run_dir(tmp_path / "run", cfg)
    with pytest.raises(LesionsegError, match=r"training loss became nan by iteration 4"):
        train_run(cfg, run_dir, progress=False)
    assert torch.load(run_dir / "checkpoints" / "last.pt")["iteration"] == 2
    assert not (run_dir / "DONE").exists()


def test_rng_state_survives_a_weights_only_checkpoint(tmp_path):
    import random

    import numpy as np

    from lesionseg.training.checkpoint import rng_state, set_rng_state

    torch.save({"rng": rng_state()}, tmp_path / "c.pt")
    first = (random.random(), np.random.rand(), torch.rand(1).item())
    set_rng_state(torch.load(tmp_path / "c.pt")["rng"])
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == first


DEEP = ("model.channels=[4,8,16]", "model.strides=[2,2]", "model.deep_supervision=true")


def test_deep_supervised_training_saves_weights_that_predict(tiny_config, tmp_path):
    cfg = tiny_config(*DEEP, "train.iterations=2")
    run_dir = start_run_dir(tmp_path / "run", cfg)
    summary = train_run(cfg, run_dir, progress=False)
    weights = torch.load(run_dir / "checkpoints" / "last.pt")["model"]
    assert "heads.0.weight" in weights and "dsc" in summary["last"]
    model = build_model(cfg)
    model.load_state_dict(weights)
    assert model.eval()(torch.randn(1, 3, 16, 16, 16)).shape == (1, 1, 16, 16, 16)


def test_deep_supervision_adds_each_lower_map_at_half_the_weight_against_the_nearest_label(tiny_config):
    from lesionseg.training.losses import training_loss

    def index_plus_ce(logits, label):  # the default: the Tversky index (β 0.7, batch-summed) + 1 × BCE
        ce = torch.nn.functional.binary_cross_entropy_with_logits(logits, label)
        return tversky_by_hand(torch.sigmoid(logits), label, 0.3, 0.7, 1e-5) + float(ce)

    torch.manual_seed(0)
    top, lower = torch.randn(2, 1, 16, 16, 16), torch.randn(2, 1, 8, 8, 8)
    label = (torch.rand(2, 1, 16, 16, 16) > 0.9).float()
    loss = training_loss(tiny_config(*DEEP))[0]([top, lower], label)
    # nearest-neighbour halving (sample centres, "nearest-exact") keeps the odd-indexed voxels
    expected = index_plus_ce(top, label) + 0.5 * index_plus_ce(lower, label[..., 1::2, 1::2, 1::2])
    assert float(loss) == pytest.approx(expected, rel=1e-5)
