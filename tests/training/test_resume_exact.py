"""A run killed with SIGKILL and resumed ends bitwise where the same run left alone ends (CPU, deterministic),
with every augmentation on (flips, intensity, rotation and zoom)."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from helpers import REPO, TINY

pytestmark = pytest.mark.slow

ITERATIONS = 30


def _train(folder, datalist, *settings):
    args = [sys.executable, "-m", "lesionseg", "train", str(REPO / "configs" / "demo.yaml"), f"data.datalist={datalist}",
            "output_dir=experiments", "name=run", *TINY, "deterministic=true", "train.device=cpu",
            f"train.iterations={ITERATIONS}", "train.val_every=10", "train.val_images_every=0",
            "data.rotate_degrees=15", "data.scale_fraction=0.1", "data.spatial_prob=0.5", "data.cache=memory",
            "data.prefetch=false", *settings, "-q"]
    # One thread each: the two runs go side by side without fighting over the cores (and both sums are
    # reduced in the same order, which bitwise equality needs).
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(args, cwd=folder, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.parametrize("settings", [[], ["data.cache=disk"], ["data.cache=disk", "data.prefetch=true"]])
def test_a_killed_and_resumed_run_ends_with_the_same_weights_and_metrics(tiny_dataset, tmp_path, settings):
    """`disk`: the killed run trains from the preprocessed store (memory maps), the one left alone from
    memory — the same weights to the bit; and with its batches cut one ahead in a background thread."""
    (tmp_path / "killed").mkdir()
    (tmp_path / "alone").mkdir()
    alone = _train(tmp_path / "alone", tiny_dataset)  # runs beside the other; deterministic on CPU either way

    proc = _train(tmp_path / "killed", tiny_dataset, *settings)
    checkpoint = tmp_path / "killed" / "experiments" / "run" / "checkpoints" / "last.pt"
    deadline = time.monotonic() + 120
    while not checkpoint.is_file():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    stopped_at = torch.load(checkpoint)["iteration"]
    assert proc.returncode == -signal.SIGKILL and 0 < stopped_at < ITERATIONS

    proc = _train(tmp_path / "killed", tiny_dataset, *settings)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert f"resuming after iteration {stopped_at}" in out + err
    assert ("from the preprocessed store" if "data.cache=disk" in settings else "in memory") in out + err
    out, err = alone.communicate(timeout=300)
    assert alone.returncode == 0, err

    runs = [tmp_path / name / "experiments" / "run" for name in ("killed", "alone")]
    killed, left_alone = (torch.load(run / "checkpoints" / "last.pt") for run in runs)
    assert killed["iteration"] == left_alone["iteration"] == ITERATIONS
    assert killed["model"].keys() == left_alone["model"].keys()
    assert all(torch.equal(killed["model"][k], left_alone["model"][k]) for k in killed["model"])
    summaries = [json.loads((run / "train_summary.json").read_text()) for run in runs]
    assert summaries[0]["best"] == summaries[1]["best"] and summaries[0]["last"] == summaries[1]["last"]
