"""Smoke test on real scans: check → a few training iterations → predict → evaluate on open MS patient07.

Training and testing on the same single patient says nothing about accuracy; it proves that a real LAS
1 mm dataset goes through every stage and that the prediction lands on the input's grid. The run
resamples to 1.5 mm, so the inverse of both reorientation and resampling is exercised.
"""

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from lesionseg.checks import check_dataset
from lesionseg.config import load_config
from lesionseg.data import load_datalist
from lesionseg.evaluate import evaluate_dirs
from lesionseg.predict import load_model, predict_cases
from lesionseg.runs import mark_done, start_run_dir
from lesionseg.train import train_run

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(__file__).resolve().parents[2] / "shared"
PATIENT = SHARED / "data" / "open_ms_data" / "patient07"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not PATIENT.is_dir(), reason=f"real data absent: {PATIENT} (the open MS data in ../shared)"),
]

SMALL = [
    "data.spacing=[1.5,1.5,1.5]",
    "data.patch_size=[48,48,48]",
    "data.samples_per_volume=1",
    "model.channels=[4,8]",
    "model.strides=[2]",
    "model.res_units=1",
    "train.batch_size=1",
    "train.iterations=3",
    "train.val_every=3",
    "train.log_every=1",
    "train.device=cpu",
    "eval.overlap=0",
]


def test_patient07_from_check_to_evaluation(tmp_path):
    cfg = load_config(REPO / "configs" / "examples" / "open_ms_patient.yaml",
                      [f"data.datalist={PATIENT.parent}", f"output_dir={tmp_path / 'experiments'}", *SMALL])
    report = check_dataset(cfg)
    (case,) = report.cases
    assert (case.case, case.shape, case.spacing) == ("patient07", (182, 218, 182), (1.0, 1.0, 1.0))
    assert case.orientation == "LAS"
    assert case.lesions == 37 and case.lesion_ml == pytest.approx(1.30, abs=0.005)

    run_dir = start_run_dir(cfg.output_dir / cfg.name, cfg)
    train_run(cfg, run_dir, progress=False)
    mark_done(run_dir)
    device = torch.device("cpu")
    entries = load_datalist(cfg)["training"]  # the training patient, predicted as if it were a test case
    (written,) = predict_cases(load_model(run_dir, cfg, device), cfg, entries, run_dir / "predictions", device,
                               progress=False)

    flair = nib.load(str(PATIENT / "flair.nii.gz"))
    pred = nib.load(str(written))
    assert written.name == "patient07.nii.gz"
    assert pred.shape == flair.shape and np.array_equal(pred.affine, flair.affine)
    assert nib.aff2axcodes(pred.affine) == ("L", "A", "S") and pred.header.get_zooms() == (1.0, 1.0, 1.0)
    prob = np.asanyarray(pred.dataobj)
    assert prob.dtype == np.float32 and np.isfinite(prob).all() and 0 <= prob.min() <= prob.max() <= 1

    refs = tmp_path / "reference"
    refs.mkdir()
    (refs / "patient07.nii.gz").symlink_to(PATIENT / "label.nii.gz")
    summary = evaluate_dirs(run_dir / "predictions", refs, tmp_path / "metrics", progress=False)
    assert summary["n_cases"] == 1 and (tmp_path / "metrics" / "cases.csv").is_file()
