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
