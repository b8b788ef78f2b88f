import math

import pytest
import torch

from lesionseg.config import Config
from lesionseg.model import build_model


def test_shapes_and_prior_offset():
    cfg = Config.model_validate({"data": {"modalities": ["flair", "t1"], "patch_size": [16, 16, 16]},
                                 "model": {"channels": [4, 8], "strides": [2], "prior": 0.02}})
    model = build_model(cfg)
    x = torch.randn(2, 2, 16, 16, 16)  # (B, C, D, H, W)
    assert model(x).shape == (2, 1, 16, 16, 16)
    assert model.offset.detach().item() == pytest.approx(math.log(0.02 / 0.98))


@pytest.mark.parametrize("prior, low, high", [(0.01, 0.0, 0.1), (0.5, 0.3, 0.7)])
def test_offset_sets_the_initial_mean_probability(prior, low, high):
    torch.manual_seed(0)
    cfg = Config.model_validate({"data": {"patch_size": [16, 16, 16]},
                                 "model": {"channels": [4, 8], "strides": [2], "prior": prior}})
    with torch.no_grad():
        probs = torch.sigmoid(build_model(cfg).eval()(torch.randn(1, 3, 16, 16, 16)))
    assert low < float(probs.median()) < high


def test_prior_one_half_starts_the_offset_at_zero():
    cfg = Config.model_validate({"model": {"prior": 0.5}})
    assert build_model(cfg).offset.detach().item() == 0.0
