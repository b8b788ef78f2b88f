import pytest
import torch

from lesionseg.config import LossConfig
from lesionseg.losses import build_loss


def tversky_by_hand(p: torch.Tensor, g: torch.Tensor, alpha: float, beta: float, smooth: float) -> float:
    """Salehi et al. 2017, eq. (3) for one foreground class: 1 − TP / (TP + α·FP + β·FN)."""
    tp, fp, fn = (p * g).sum(), (p * (1 - g)).sum(), ((1 - p) * g).sum()
    return float(1 - (tp + smooth) / (tp + alpha * fp + beta * fn + smooth))


def logit(p: torch.Tensor) -> torch.Tensor:
    return torch.log(p / (1 - p))


# shape: (2, 1, 2, 2): two samples, one channel
PROBS = torch.tensor([[[[0.9, 0.2], [0.6, 0.1]]], [[[0.3, 0.8], [0.05, 0.5]]]], dtype=torch.float64)
LABEL = torch.tensor([[[[1.0, 0.0], [1.0, 0.0]]], [[[0.0, 1.0], [1.0, 0.0]]]], dtype=torch.float64)


@pytest.mark.parametrize("beta", [0.5, 0.6, 0.7, 0.8, 0.9])
def test_tversky_batch_matches_the_paper_formula(beta):
    loss = build_loss(LossConfig(beta=beta, batch=True, smooth=0.0))(logit(PROBS), LABEL)
    assert float(loss) == pytest.approx(tversky_by_hand(PROBS, LABEL, 1 - beta, beta, 0.0), rel=1e-9)


def test_tversky_per_sample_is_the_mean_of_samples():
    cfg = LossConfig(beta=0.7, batch=False, smooth=1e-5)
    expected = sum(tversky_by_hand(PROBS[i], LABEL[i], 0.3, 0.7, 1e-5) for i in range(2)) / 2
    assert float(build_loss(cfg)(logit(PROBS), LABEL)) == pytest.approx(expected, rel=1e-9)


def test_alpha_weighs_false_positives_and_beta_false_negatives():
    # One false positive (p = 1 where g = 0) and no false negative: only α can matter.
    p = torch.tensor([[[[1 - 1e-9, 1 - 1e-9], [1e-9, 1e-9]]]], dtype=torch.float64)
    g = torch.tensor([[[[1.0, 0.0], [0.0, 0.0]]]], dtype=torch.float64)
    fp_heavy = build_loss(LossConfig(beta=0.9, alpha=0.9, smooth=0.0))(logit(p), g)
    fp_light = build_loss(LossConfig(beta=0.9, alpha=0.1, smooth=0.0))(logit(p), g)
    assert float(fp_heavy) == pytest.approx(1 - 1 / (1 + 0.9), abs=1e-6)
    assert float(fp_light) == pytest.approx(1 - 1 / (1 + 0.1), abs=1e-6)
    # And the mirror case: one false negative, no false positive, only β matters.
    g2 = torch.tensor([[[[1.0, 0.0], [1.0, 0.0]]]], dtype=torch.float64)
    p2 = torch.tensor([[[[1 - 1e-9, 1e-9], [1e-9, 1e-9]]]], dtype=torch.float64)
    loss = build_loss(LossConfig(beta=0.7, smooth=0.0))(logit(p2), g2)  # α = 0.3 must not enter
    assert float(loss) == pytest.approx(1 - 1 / (1 + 0.7), abs=1e-6)


def test_beta_half_is_soft_dice():
    tversky = build_loss(LossConfig(name="tversky", beta=0.5, batch=True, smooth=0.0))(logit(PROBS), LABEL)
    dice = build_loss(LossConfig(name="dice", batch=True, smooth=0.0))(logit(PROBS), LABEL)
    tp, fp, fn = (PROBS * LABEL).sum(), (PROBS * (1 - LABEL)).sum(), ((1 - PROBS) * LABEL).sum()
    assert float(tversky) == pytest.approx(float(dice), rel=1e-9)
    assert float(dice) == pytest.approx(float(1 - 2 * tp / (2 * tp + fp + fn)), rel=1e-9)


def test_empty_patch_with_empty_prediction_is_no_loss():
    p = torch.full((1, 1, 2, 2, 2), 1e-12, dtype=torch.float64)
    assert float(build_loss(LossConfig(beta=0.7))(logit(p), torch.zeros_like(p))) == pytest.approx(0.0, abs=1e-6)


def test_gradient_flows_to_logits():
    logits = logit(PROBS).clone().requires_grad_(True)
    build_loss(LossConfig(beta=0.7))(logits, LABEL).backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0
