"""Smoke test on real scans: check both open MS patients → train on patient07 → predict and evaluate patient19.

Three training iterations say nothing about accuracy (`bench/bench_real.py` measures that); the test proves
that a real LAS 1 mm dataset goes through every stage, that the prediction of an unseen patient lands on its
own grid, and that the folder-of-patients layout reads both patients. The run resamples to 1.5 mm, so the
inverse of both reorientation and resampling is exercised.
"""

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from lesionseg.config import load_config
from lesionseg.data.checks import check_dataset
from lesionseg.data.preprocessing import load_datalist
from lesionseg.evaluation.evaluate import evaluate_dirs
from lesionseg.inference import load_model, predict_cases
from lesionseg.runs import mark_done, start_run_dir
from lesionseg.training.loop import train_run

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(__file__).resolve().parents[2] / "shared"
OPEN_MS = SHARED / "data" / "open_ms_data"
PATIENT, OTHER = OPEN_MS / "patient07", OPEN_MS / "patient19"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not PATIENT.is_dir(), reason=f"real data absent: {PATIENT} (the open MS data in ../shared)"),
    pytest.mark.skipif(not OTHER.is_dir(), reason=f"real data absent: {OTHER} (the open MS data in ../shared)"),
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


def test_folder_of_patients_reads_both_patients():
    cfg = load_config(REPO / "configs" / "examples" / "open_ms_patient.yaml", [f"data.datalist={OPEN_MS}"])
    report = check_dataset(cfg)
    assert not report.problems
    seen = {c.case: c for c in report.cases}
    assert sorted(seen) == ["patient07", "patient19"]
    for case in seen.values():
        assert (case.split, case.shape, case.spacing, case.orientation) == (
            "training", (182, 218, 182), (1.0, 1.0, 1.0), "LAS")
    # Lesion loads as the data's README gives them (26-connected components).
    assert seen["patient07"].lesions == 37 and seen["patient07"].lesion_ml == pytest.approx(1.30, abs=0.005)
    assert seen["patient19"].lesions == 98 and seen["patient19"].lesion_ml == pytest.approx(49.77, abs=0.005)


def _datalist(tmp_path: Path) -> Path:
    """Train on patient07, test on patient19: a Decathlon datalist pointing into ../shared."""
    def case(folder: Path) -> dict:
        return {"case": folder.name, "image": [str(folder / f"{m}.nii.gz") for m in ("flair", "t1", "t2")],
                "label": str(folder / "label.nii.gz")}

    path = tmp_path / "datalist.json"
    path.write_text(json.dumps({"modalities": ["flair", "t1", "t2"], "training": [case(PATIENT)],
                                "test": [case(OTHER)]}))
    return path


def test_train_on_patient07_predict_and_evaluate_patient19(tmp_path):
    cfg = load_config(REPO / "configs" / "examples" / "open_ms_patient.yaml",
                      [f"data.datalist={_datalist(tmp_path)}", f"output_dir={tmp_path / 'experiments'}", *SMALL])
    report = check_dataset(cfg)
    assert not report.problems
    assert [(c.case, c.split) for c in report.cases] == [("patient07", "training"), ("patient19", "test")]

    run_dir = start_run_dir(cfg.output_dir / cfg.name, cfg)
    train_run(cfg, run_dir, progress=False)
    mark_done(run_dir)
    device = torch.device("cpu")
    entries = load_datalist(cfg)["test"]
    (written,) = predict_cases(load_model(run_dir, cfg, device), cfg, entries, run_dir / "predictions", device,
                               progress=False)

    flair = nib.load(str(OTHER / "flair.nii.gz"))
    pred = nib.load(str(written))
    assert written.name == "patient19.nii.gz"
    assert pred.shape == flair.shape and np.array_equal(pred.affine, flair.affine)
    assert nib.aff2axcodes(pred.affine) == ("L", "A", "S") and pred.header.get_zooms() == (1.0, 1.0, 1.0)
    prob = np.asanyarray(pred.dataobj)
    assert prob.dtype == np.float32 and np.isfinite(prob).all() and 0 <= prob.min() <= prob.max() <= 1

    refs = tmp_path / "reference"
    refs.mkdir()
    (refs / "patient19.nii.gz").symlink_to(OTHER / "label.nii.gz")
    summary = evaluate_dirs(run_dir / "predictions", refs, tmp_path / "metrics", progress=False)
    assert summary["n_cases"] == 1 and (tmp_path / "metrics" / "cases.csv").is_file()
