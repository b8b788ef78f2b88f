"""Prediction: the input's geometry kept, the run's checkpoint used, and its inputs checked as training does."""

import gzip
import json
import re
import shutil
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
import torch

from lesionseg.errors import LesionsegError
from lesionseg.inference import predict_cases, predict_run
from lesionseg.model import build_model
from lesionseg.runs import start_run_dir


class Echo(torch.nn.Module):
    """Returns the logit of the first input channel's rank, so the output keeps the input's layout."""

    def forward(self, x):
        return x[:, :1] * 10.0


def test_prediction_has_the_input_geometry_and_orientation(tiny_config, tiny_dataset, tmp_path):
    """An oblique, LPS-ordered input (not the RAS the network sees) must come back voxel for voxel."""
    cfg = tiny_config()
    src = nib.load(str(tiny_dataset.parent / "images" / "case_000_flair.nii.gz"))
    data = np.asanyarray(src.dataobj).astype(np.float32)
    affine = np.array([[0.0, -1.5, 0.0, 30.0], [-2.0, 0.0, 0.0, 40.0], [0.0, 0.0, 2.5, -20.0], [0, 0, 0, 1]])
    paths = []
    for m in cfg.data.modalities:
        path = tmp_path / f"odd_{m}.nii.gz"
        nib.save(nib.Nifti1Image(data, affine), str(path))
        paths.append(str(path))
    (written,) = predict_cases(Echo(), cfg, [{"case": "odd", "image": paths}], tmp_path / "out", torch.device("cpu"),
                               progress=False)
    out = nib.load(str(written))
    assert out.shape == data.shape and np.allclose(out.affine, affine)
    prob = np.asanyarray(out.dataobj)
    assert prob.dtype == np.float32 and prob.min() >= 0 and prob.max() <= 1
    # Echo is monotonic in FLAIR inside the brain, so the prediction must rank voxels as the input does.
    brain = data > 0
    z = (data[brain] - data[brain].mean()) / data[brain].std()
    assert np.allclose(prob[brain], 1 / (1 + np.exp(-10 * z)), atol=1e-4)


def test_predict_run_uses_the_runs_checkpoint(tiny_config, tmp_path):
    cfg = tiny_config()
    run_dir = start_run_dir(tmp_path / "run", cfg)
    with pytest.raises(LesionsegError, match="no checkpoint"):
        predict_run(run_dir, progress=False)
    (run_dir / "checkpoints").mkdir()
    torch.save({"model": build_model(cfg).state_dict()}, run_dir / "checkpoints" / "best.pt")
    written = predict_run(run_dir, progress=False)
    assert [p.name for p in written] == ["case_003.nii.gz", "case_004.nii.gz"]
    with pytest.raises(LesionsegError, match="trained on 3 modalities"):
        predict_run(run_dir, images=["a.nii.gz"], progress=False)


def test_a_resampled_prediction_comes_back_on_the_input_grid(tiny_config, tiny_dataset, tmp_path):
    """data.spacing resamples for the network; the prediction is resampled back, with a brain mask given."""
    cfg = tiny_config("data.spacing=[3.0,2.5,3.0]")
    root = tiny_dataset.parent
    case = {"case": "c", "image": [str(root / "images" / f"case_000_{m}.nii.gz") for m in cfg.data.modalities],
            "mask": str(root / "masks" / "case_000.nii.gz")}
    (written,) = predict_cases(Echo(), cfg, [case], tmp_path / "out", torch.device("cpu"), progress=False)
    src, out = nib.load(case["image"][0]), nib.load(str(written))
    assert out.shape == src.shape and np.array_equal(out.affine, src.affine)
    # Echo follows FLAIR: the resampled-and-back probability still ranks lesion voxels above the rest.
    prob = np.asanyarray(out.dataobj)
    label = np.asanyarray(nib.load(str(root / "labels" / "case_000.nii.gz")).dataobj)
    assert prob[label > 0].mean() > prob[(label == 0) & (np.asanyarray(src.dataobj) > 0)].mean()


# ---- prediction checks its inputs as training does (checks.inspect_case), before the model or any output ----

def case_images(tiny_dataset, tmp_path, cfg, case="case_003"):
    """Copies of one phantom case's images, one per modality, to be damaged by a test."""
    paths = []
    for m in cfg.data.modalities:
        path = tmp_path / "in" / f"{case}_{m}.nii.gz"
        path.parent.mkdir(exist_ok=True)
        shutil.copyfile(tiny_dataset.parent / "images" / f"{case}_{m}.nii.gz", path)
        paths.append(path)
    return paths


def rewrite(path, edit):
    """`path` rewritten with `edit(array, affine) -> (array, affine)` applied."""
    img = nib.load(str(path))
    array, affine = edit(np.asanyarray(img.dataobj).astype(np.float32), img.affine.copy())
    nib.save(nib.Nifti1Image(array, affine), str(path))


def shifted(array, affine):
    affine[0, 3] += 0.5
    return array, affine


def with_nan(array, affine):
    array[10, 10, 10:13] = np.nan
    return array, affine


def truncate(path):
    path.write_bytes(gzip.compress(gzip.decompress(path.read_bytes())[:400]))  # header, then a few voxels


DAMAGE = {  # what is done to the t1 image, and what the error says about it
    "nan": (lambda p: rewrite(p, with_nan), r"image {t1} has 3 NaN and 0 infinite voxels"),
    "shifted": (lambda p: rewrite(p, shifted), r"t1 image {t1} has an affine that differs from flair image .*'s "
                                               r"by up to 0.5 mm \(tolerance 0.001 mm\)"),
    "shape": (lambda p: rewrite(p, lambda a, aff: (a[:-1], aff)), r"t1 image {t1} has shape \(23, 29, 24\) but"),
    "4d": (lambda p: rewrite(p, lambda a, aff: (np.stack([a, a], -1), aff)),
           r"{t1} has shape \(24, 29, 24, 2\); one 3D volume per file is expected"),
    "truncated": (truncate, r"unreadable file {t1} \(truncated or corrupt\?\)"),
    "missing": (lambda p: p.unlink(), r"missing file {t1}"),
}


@pytest.mark.parametrize("damage", DAMAGE)
def test_images_are_checked_before_the_model_is_loaded(tiny_config, tiny_dataset, tmp_path, damage):
    """Each of these used to end in a MONAI traceback, or (NaN) in a map that is NaN everywhere. The run has
    no checkpoint: the image's problem is reported first, so nothing was loaded and nothing is written."""
    cfg = tiny_config()
    run_dir = start_run_dir(tmp_path / "run", cfg)
    images = case_images(tiny_dataset, tmp_path, cfg)
    edit, message = DAMAGE[damage]
    edit(images[1])
    expected = message.format(t1=re.escape(str(images[1])))
    with pytest.raises(LesionsegError, match=r"^--images cannot be predicted; fix or replace these files first "
                                             r"\(1\):\n  case_003_flair: " + expected):
        predict_run(run_dir, images=[str(p) for p in images], out_dir=tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists() and not (run_dir / "predictions").exists()


def run_with_checkpoint(cfg, tmp_path):
    """A run folder with an untrained model's weights as its best checkpoint."""
    run_dir = start_run_dir(tmp_path / "run", cfg)
    (run_dir / "checkpoints").mkdir()
    torch.save({"model": build_model(cfg).state_dict()}, run_dir / "checkpoints" / "best.pt")
    return run_dir


def test_predict_command_refuses_nan_images_and_writes_nothing(tiny_config, tiny_dataset, tmp_path):
    """The issue's case: a few NaN voxels used to exit 0 with a map NaN everywhere. Clean images (which carry
    no label) predict; with NaN the command names the file, exits 1 and writes nothing."""
    cfg = tiny_config()
    run_dir = run_with_checkpoint(cfg, tmp_path)
    images = case_images(tiny_dataset, tmp_path, cfg)

    def predict(out):
        return subprocess.run([sys.executable, "-m", "lesionseg", "predict", run_dir, "--images", *images, "--out", out,
                               "-q"], cwd=tmp_path, capture_output=True, text=True, timeout=300)

    ok = predict(tmp_path / "ok")
    assert ok.returncode == 0, ok.stderr
    assert np.isfinite(np.asanyarray(nib.load(str(tmp_path / "ok" / "case_003_flair.nii.gz")).dataobj)).all()
    rewrite(images[0], with_nan)
    bad = predict(tmp_path / "bad")
    assert bad.returncode == 1 and "Traceback" not in bad.stderr
    assert bad.stderr.startswith("lesionseg predict: error: --images cannot be predicted"), bad.stderr
    assert f"case_003_flair: image {images[0]} has 3 NaN and 0 infinite voxels" in bad.stderr
    assert not (tmp_path / "bad").exists()


def test_a_runs_test_cases_are_checked_and_need_no_label(tiny_config, tiny_dataset, tmp_path):
    """`lesionseg predict RUN` checks the datalist's test cases the same way; their labels are not read."""
    data = tmp_path / "data"
    shutil.copytree(tiny_dataset.parent, data)
    raw = json.loads((data / "datalist.json").read_text())
    for entry in raw["test"]:
        del entry["label"]
    (data / "datalist.json").write_text(json.dumps(raw))
    cfg = tiny_config(f"data.datalist={data / 'datalist.json'}")
    run_dir = run_with_checkpoint(cfg, tmp_path)
    bad = data / "images" / "case_004_t2.nii.gz"
    good = bad.read_bytes()
    truncate(bad)
    with pytest.raises(LesionsegError, match=rf"^the test cases of dataset {re.escape(str(data / 'datalist.json'))} "
                                             rf"cannot be predicted.*\(1\):\n  case_004: unreadable file "
                                             rf"{re.escape(str(bad))} \(truncated"):
        predict_run(run_dir, progress=False)
    assert not (run_dir / "predictions").exists()
    bad.write_bytes(good)
    assert [p.name for p in predict_run(run_dir, progress=False)] == ["case_003.nii.gz", "case_004.nii.gz"]
