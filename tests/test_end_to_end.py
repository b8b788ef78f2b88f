"""The whole path through the command line: demo data → a two-β sweep → report; then each command alone."""

import csv
import json
import shutil
import signal
import subprocess
import sys
import time

import nibabel as nib
import numpy as np
import pytest
import torch
from helpers import REPO, TINY, lesionseg
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

pytestmark = pytest.mark.slow


def test_two_beta_sweep_through_the_cli(tmp_path):
    lesionseg("demo-data", tmp_path / "data", "--cases", 5, "--size", 24, cwd=tmp_path)
    overrides = [f"data.datalist={tmp_path / 'data' / 'datalist.json'}", "output_dir=experiments", "name=mini",
                 "sweep={loss.beta: [0.5, 0.8]}", *TINY]
    out = lesionseg("sweep", REPO / "configs" / "sweep_beta.yaml", *overrides, "-q", cwd=tmp_path)
    sweep = tmp_path / "experiments" / "mini"
    assert "| beta | alpha |" in out.stdout

    for rid, beta in (("beta=0.5", 0.5), ("beta=0.8", 0.8)):
        run = sweep / "runs" / rid
        assert (run / "DONE").is_file() and (run / "env.json").is_file()
        assert f"beta: {beta}" in (run / "config.yaml").read_text()
        assert list(run.glob("events.out.tfevents.*"))
        for case in ("case_003", "case_004"):
            pred = nib.load(str(run / "predictions" / f"{case}.nii.gz"))
            image = nib.load(str(tmp_path / "data" / "images" / f"{case}_flair.nii.gz"))
            assert pred.shape == image.shape and np.allclose(pred.affine, image.affine)
        rows = list(csv.DictReader((run / "metrics" / "cases.csv").read_text().splitlines()))
        assert [r["case"] for r in rows] == ["case_003", "case_004"]
        assert list(rows[0])[:7] == ["case", "dsc", "f2", "sensitivity", "precision", "specificity", "apr"]
        summary = json.loads((run / "metrics" / "summary.json").read_text())
        assert summary["n_cases"] == 2 and 0 <= summary["per_case"]["dsc"]["mean"] <= 1
        assert summary["calibration"]["voxels"].startswith("brain") and 0 <= summary["pooled"]["ece"] <= 1
        # DONE records the test cases' collapse flags, and they follow the volume rule (4 iterations may or may
        # not have learned: the rule, not the outcome, is what is checked here)
        done = json.loads((run / "DONE").read_text())["collapse"]
        assert done["test"] == summary["collapse"] and isinstance(done["validation"], list)
        ratio = summary["pooled"]["vol_pred_ml"] / summary["pooled"]["vol_ref_ml"]
        volume_flags = {f["flag"] for f in done["test"]} - {"near-constant probabilities"}
        expected = (set() if 0.2 <= ratio <= 5 else {"over-segmented"} if ratio > 5
                    else {"no lesion predicted"} if ratio == 0 else {"under-segmented"})
        assert volume_flags == expected, (ratio, done["test"])
        thresholds = json.loads((run / "thresholds.json").read_text())
        split = json.loads((run / "split.json").read_text())
        assert thresholds["validation_cases"] == split["validation"] and thresholds["configured"] == 0.5
        for m in ("dsc", "f2"):  # tuned on validation, then the test cases evaluated again at it
            tuned = json.loads((run / f"metrics-tuned-{m}" / "summary.json").read_text())
            assert 0 < thresholds[m]["threshold"] <= 1 and tuned["threshold"] == thresholds[m]["threshold"]
        chosen = thresholds["froc"]["threshold"]  # 1 false-positive lesion per scan on the validation FROC
        assert summary["froc"]["verdict"]["chosen_on"] == ("validation" if chosen is not None else "these cases' curve")
        assert chosen is None or summary["froc"]["verdict"]["thresholds"] == [chosen]

    report = list(csv.DictReader((sweep / "report" / "summary.csv").read_text().splitlines()))
    assert [(float(r["beta"]), float(r["alpha"])) for r in report] == [(0.5, 0.5), (0.8, 0.2)]
    for row, rid in zip(report, ("beta=0.5", "beta=0.8")):
        summary = json.loads((sweep / "runs" / rid / "metrics" / "summary.json").read_text())
        for metric in ("dsc", "f2", "sensitivity", "precision", "apr"):
            assert float(row[metric]) == pytest.approx(summary["per_case"][metric]["mean"], nan_ok=True)
    assert "## Is a larger β more than a lower threshold?" in (sweep / "report" / "summary.md").read_text()
    page = (sweep / "report" / "report.html").read_text()  # the pictures of the cases right after the answer
    assert (sweep / "report" / "cases.png").is_file()
    assert page.index("</section>") < page.index('<figure id="cases.png">') < page.index("<h2>", page.index("</section>"))

    # A re-run finds both runs finished and only rebuilds the report.
    again = lesionseg("sweep", REPO / "configs" / "sweep_beta.yaml", *overrides, "-q", cwd=tmp_path)
    assert "2 of 2 runs already finished" in again.stdout + again.stderr

    # The stand-alone evaluator on the same files gives the same numbers.
    run = sweep / "runs" / "beta=0.8"
    (tmp_path / "test_labels").mkdir()
    for case in ("case_003", "case_004"):
        shutil.copy(tmp_path / "data" / "labels" / f"{case}.nii.gz", tmp_path / "test_labels")
    lesionseg("evaluate", "--pred", run / "predictions", "--ref", tmp_path / "test_labels", "--out",
              tmp_path / "eval", "--brain-dir", tmp_path / "data" / "masks", cwd=tmp_path)
    assert (tmp_path / "eval" / "cases.csv").read_text() == (run / "metrics" / "cases.csv").read_text()


def test_user_errors_print_one_line_and_write_nothing(tmp_path):
    bad = lesionseg("train", REPO / "configs" / "demo.yaml", "loss.beta=1.5", cwd=tmp_path, check=False)
    assert bad.returncode == 1 and "loss.beta = 1.5" in bad.stderr and "Traceback" not in bad.stderr
    missing = lesionseg("train", REPO / "configs" / "demo.yaml", f"data.datalist={tmp_path}/none.json",
                        cwd=tmp_path, check=False)
    assert missing.returncode == 1 and "datalist not found" in missing.stderr
    assert not (tmp_path / "experiments").exists()


def test_training_refuses_nan_intensities_before_writing_anything(tmp_path):
    lesionseg("demo-data", tmp_path / "data", "--cases", 3, "--size", 24, cwd=tmp_path)
    bad = tmp_path / "data" / "images" / "case_001_t2.nii.gz"
    img = nib.load(str(bad))
    data = np.asanyarray(img.dataobj).astype(np.float32)
    data[5, 5, 5] = np.nan
    nib.save(nib.Nifti1Image(data, img.affine), str(bad))
    result = lesionseg("train", REPO / "configs" / "demo.yaml", f"data.datalist={tmp_path / 'data' / 'datalist.json'}",
                       "output_dir=experiments", *TINY, cwd=tmp_path, check=False)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "case_001" in result.stderr and "case_001_t2.nii.gz" in result.stderr and "NaN" in result.stderr
    assert not (tmp_path / "experiments").exists()


def test_finished_runs_are_kept_and_force_moves_them_aside(tmp_path):
    lesionseg("demo-data", tmp_path / "data", "--cases", 3, "--size", 24, cwd=tmp_path)
    args = ["train", REPO / "configs" / "demo.yaml", f"data.datalist={tmp_path / 'data' / 'datalist.json'}",
            "output_dir=experiments", "name=once", *TINY]
    first = lesionseg(*args, cwd=tmp_path)
    # not a terminal (a log): no progress bar frames, one line per validation and for the finished training
    log = first.stdout + first.stderr
    assert "\r" not in log and "it/s" not in log
    assert "[once] iteration 2/4: validation dsc" in log and "[once] trained to iteration 4 in" in log
    run = tmp_path / "experiments" / "once"
    inputs = json.loads((run / "inputs.json").read_text())
    assert set(inputs["training"]["case_000"]) == {"case_000_flair.nii.gz", "case_000_t1.nii.gz",
                                                  "case_000_t2.nii.gz", "case_000.nii.gz"}
    assert all(len(h) == 64 for h in inputs["training"]["case_000"].values())
    done = (run / "DONE").read_text()
    best = json.loads((run / "train_summary.json").read_text())["best"]  # the validation of the weights kept
    assert json.loads(done)["collapse"] == {"validation": best["collapse"]} and isinstance(best["collapse"], list)

    again = lesionseg(*args, cwd=tmp_path, check=False)
    assert again.returncode == 1 and "holds a finished run" in again.stderr and "--force" in again.stderr
    assert (run / "DONE").read_text() == done

    lesionseg(*args, "--force", cwd=tmp_path)
    (old,) = (tmp_path / "experiments").glob("once.old-*")
    assert (old / "DONE").read_text() == done and (run / "DONE").is_file()


def _start_training(tmp_path, *extra):
    args = [sys.executable, "-m", "lesionseg", "train", str(REPO / "configs" / "demo.yaml"),
            f"data.datalist={tmp_path / 'data' / 'datalist.json'}", "output_dir=experiments", "name=long", *TINY,
            "train.iterations=60", "train.val_every=3", "-q", *extra]
    return subprocess.Popen(args, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(path, proc, timeout=120):
    deadline = time.monotonic() + timeout
    while not path.is_file():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.1)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_an_interrupted_run_resumes_from_its_checkpoint(tmp_path, sig):
    lesionseg("demo-data", tmp_path / "data", "--cases", 3, "--size", 24, cwd=tmp_path)
    run = tmp_path / "experiments" / "long"
    proc = _start_training(tmp_path)
    _wait_for(run / "checkpoints" / "last.pt", proc)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode != 0 and not (run / "DONE").exists()
    stopped_at = torch.load(run / "checkpoints" / "last.pt")["iteration"]
    if sig == signal.SIGTERM:
        assert proc.returncode == 1 and "stopped by SIGTERM" in err and "Run the same command again" in err
        assert "Traceback" not in err
    assert 0 < stopped_at < 60

    proc = _start_training(tmp_path)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert f"resuming after iteration {stopped_at}" in out + err
    assert (run / "DONE").is_file() and not list((tmp_path / "experiments").glob("long.old-*"))
    assert torch.load(run / "checkpoints" / "last.pt")["iteration"] == 60



def test_a_run_that_cannot_leave_its_start_says_it_collapsed(tiny_dataset, tmp_path):
    # From prior 0.5 every voxel starts at p = 0.5: a sea of false positives. A learning rate of 1e-12 keeps it
    # there (train.lr must be > 0; at 1e-12 Adam moves no weight visibly).
    overrides = [f"data.datalist={tiny_dataset}", "output_dir=experiments", "name=stuck",
                 "sweep={loss.beta: [0.7]}", *TINY, "model.prior=0.5", "train.lr=1e-12"]
    out = lesionseg("sweep", REPO / "configs" / "sweep_beta.yaml", *overrides, "-q", cwd=tmp_path)
    log = out.stdout + out.stderr
    for it in (2, 4):
        assert (f"[beta=0.7] warning: collapsed at iteration {it} on the validation cases: over-segmented: "
                "predicted ") in log
    assert "Probably the output has not left its start" in log
    assert "[beta=0.7] warning: collapsed on the test cases at p ≥ 0.5: over-segmented: predicted " in log

    run = tmp_path / "experiments" / "stuck" / "runs" / "beta=0.7"
    done = json.loads((run / "DONE").read_text())
    for where in ("validation", "test"):
        (flag,) = done["collapse"][where]
        assert flag["flag"] == "over-segmented" and flag["value"] > 5 and "rule: > 5×)" in flag["detail"]
    assert done["collapse"]["test"] == json.loads((run / "metrics" / "summary.json").read_text())["collapse"]
    events = EventAccumulator(str(run))
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("val/collapsed")] == [(2, 1.0), (4, 1.0)]
    assert all(e.value > 5 for e in events.Scalars("val/volume_ratio"))
    assert "val/collapse/text_summary" in events.Tags()["tensors"]  # add_text: the warning

    report = (tmp_path / "experiments" / "stuck" / "report" / "summary.md").read_text()
    answer = report.split("## The answer")[1].split("##")[0]
    assert "- β = 0.7 ⚠ collapsed on the test cases: over-segmented (predicted " in answer
    assert "Every configuration collapsed (predicted lesion volume over 5×" in answer
    assert "DSC: best with β = 0.7 ⚠ (" in answer
    stats = json.loads((tmp_path / "experiments" / "stuck" / "report" / "stats.json").read_text())
    assert stats["collapsed"]["β = 0.7"]["runs"] == 1 and stats["collapsed"]["β = 0.7"]["of"] == 1
