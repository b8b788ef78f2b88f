import nibabel as nib
import numpy as np
import pytest
import torch

from lesionseg.config import load_config
from lesionseg.errors import LesionsegError
from lesionseg.model import build_model
from lesionseg.predict import predict_cases, predict_run
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
