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


def _deep(prior=0.5, **model):
    return Config.model_validate({"data": {"modalities": ["flair"], "patch_size": [16, 16, 16]},
                                  "model": {"channels": [4, 8, 16], "strides": [2, 2], "prior": prior,
                                            "deep_supervision": True, **model}})


def test_deep_supervision_trains_on_a_map_per_decoder_level_and_predicts_the_top_one():
    torch.manual_seed(0)
    model = build_model(_deep())
    x = torch.randn(2, 1, 16, 16, 16)
    maps = model.train()(x)
    assert [tuple(m.shape) for m in maps] == [(2, 1, 16, 16, 16), (2, 1, 8, 8, 8)]
    with torch.no_grad():
        assert torch.equal(model.eval()(x), maps[0].detach())  # instance norm, no dropout: the same network
        plain = build_model(_deep(deep_supervision=False))
        plain.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("heads.")})
        assert torch.equal(plain.eval()(x), maps[0].detach())  # the heads change nothing at test time


def test_each_lower_map_starts_at_the_prior_through_the_shared_offset():
    model = build_model(_deep(prior=0.02))
    with torch.no_grad():
        for head in model.heads:
            head.weight.zero_()
            head.bias.zero_()
        lower = model.train()(torch.randn(1, 1, 16, 16, 16))[1]
    assert torch.allclose(torch.sigmoid(lower), torch.full_like(lower, 0.02))


def test_deep_supervision_needs_a_lower_decoder_level():
    with pytest.raises(ValueError, match="model.deep_supervision needs a decoder level"):
        _deep(channels=[4, 8], strides=[2])
