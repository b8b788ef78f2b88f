import pytest
import torch
from helpers import tversky_by_hand

from lesionseg.config import LossConfig
from lesionseg.training.losses import build_loss


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


@pytest.mark.parametrize("name", ["tversky", "focal_tversky", "dice"])
def test_per_case_is_the_mean_over_cases_of_the_index_over_their_patches(name):
    """`loss.batch: case`: 3 cases × 2 patches (consecutive, as the sampler orders them); each case's index
    sums TP, FP and FN over its two patches (Salehi's formula by hand), the indices averaged."""
    g = torch.Generator().manual_seed(0)
    p = torch.rand(6, 1, 3, 4, 2, generator=g, dtype=torch.float64).clamp(0.02, 0.98)
    y = (torch.rand(6, 1, 3, 4, 2, generator=g) < 0.3).to(torch.float64)
    y[4:] = 0  # the third case has no lesion in either patch
    beta = 0.5 if name == "dice" else 0.8
    per_case = [tversky_by_hand(p[2 * c: 2 * c + 2], y[2 * c: 2 * c + 2], 1 - beta, beta, 0.0) for c in range(3)]
    if name == "focal_tversky":
        per_case = [t ** 0.75 for t in per_case]
    loss = build_loss(LossConfig(name=name, beta=beta, batch="case", smooth=0.0), patches_per_case=2)
    assert float(loss(logit(p), y)) == pytest.approx(sum(per_case) / 3, rel=1e-9)
    assert float(build_loss(LossConfig(name=name, beta=beta, batch="case", smooth=0.0), 1)(logit(p), y)) == \
        pytest.approx(float(build_loss(LossConfig(name=name, beta=beta, batch=False, smooth=0.0))(logit(p), y)))
    with pytest.raises(ValueError, match="not whole cases"):
        build_loss(LossConfig(name=name, batch="case"), patches_per_case=4)(logit(p), y)


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


# Every other loss of `loss.name` against its paper's formula by hand, on the same probabilities.
def bce_by_hand(p, g, w=1.0):
    return float(-(w * g * torch.log(p) + (1 - g) * torch.log(1 - p)).mean())


def focal_by_hand(p, g, gamma):
    p_t = torch.where(g > 0.5, p, 1 - p)
    return float((-(1 - p_t) ** gamma * torch.log(p_t)).mean())


def counts(p, g):
    return (p * g).sum(), (p * (1 - g)).sum(), ((1 - p) * g).sum()


@pytest.mark.parametrize("batch", [True, False])
def test_jaccard_is_tversky_at_alpha_beta_one(batch):
    loss = float(build_loss(LossConfig(name="jaccard", batch=batch, smooth=0.0))(logit(PROBS), LABEL))
    samples = [(PROBS, LABEL)] if batch else [(PROBS[i], LABEL[i]) for i in range(2)]
    expected = sum(1 - float(tp / (tp + fp + fn)) for tp, fp, fn in (counts(p, g) for p, g in samples)) / len(samples)
    assert loss == pytest.approx(expected, rel=1e-9)
    assert loss == pytest.approx(sum(tversky_by_hand(p, g, 1.0, 1.0, 0.0) for p, g in samples) / len(samples))


@pytest.mark.parametrize("gamma, batch", [(None, True), (None, False), (2.0, True), (1.0, True)])
def test_focal_tversky_is_one_minus_t_to_the_one_over_gamma(gamma, batch):
    cfg = LossConfig(name="focal_tversky", beta=0.7, gamma=gamma, batch=batch, smooth=0.0)
    exponent = 1 / (gamma or 4 / 3)  # Abraham & Khan 2019: γ = 4/3 by default
    samples = [(PROBS, LABEL)] if batch else [(PROBS[i], LABEL[i]) for i in range(2)]
    expected = sum(tversky_by_hand(p, g, 0.3, 0.7, 0.0) ** exponent for p, g in samples) / len(samples)
    assert float(build_loss(cfg)(logit(PROBS), LABEL)) == pytest.approx(expected, rel=1e-9)
    if gamma == 1.0:  # γ = 1 is the Tversky loss itself
        tversky = build_loss(LossConfig(name="tversky", beta=0.7, batch=batch, smooth=0.0))(logit(PROBS), LABEL)
        assert float(build_loss(cfg)(logit(PROBS), LABEL)) == pytest.approx(float(tversky), rel=1e-9)


def test_focal_tversky_has_a_finite_gradient_on_an_exact_segmentation():
    p = torch.tensor([[[[1 - 1e-12, 1e-12]]]], dtype=torch.float64)
    logits = logit(p).requires_grad_()
    g = torch.tensor([[[[1.0, 0.0]]]], dtype=torch.float64)
    build_loss(LossConfig(name="focal_tversky", smooth=0.0))(logits, g).backward()
    assert torch.isfinite(logits.grad).all()


def test_cross_entropies_and_focal_match_their_formulas():
    ce = build_loss(LossConfig(name="ce"))(logit(PROBS), LABEL)
    assert float(ce) == pytest.approx(bce_by_hand(PROBS, LABEL), rel=1e-9)
    wce = build_loss(LossConfig(name="wce", pos_weight=9.0))(logit(PROBS), LABEL)
    assert float(wce) == pytest.approx(bce_by_hand(PROBS, LABEL, 9.0), rel=1e-9)
    for gamma in (None, 0.0001, 3.0):
        focal = build_loss(LossConfig(name="focal", gamma=gamma))(logit(PROBS), LABEL)
        assert float(focal) == pytest.approx(focal_by_hand(PROBS, LABEL, gamma or 2.0), rel=1e-7)
    # γ → 0 is the cross-entropy
    assert focal_by_hand(PROBS, LABEL, 1e-9) == pytest.approx(bce_by_hand(PROBS, LABEL), rel=1e-6)


@pytest.mark.parametrize("batch", [True, False])
def test_dice_ce_is_dice_plus_ce(batch):
    loss = float(build_loss(LossConfig(name="dice_ce", batch=batch, smooth=0.0))(logit(PROBS), LABEL))
    samples = [(PROBS, LABEL)] if batch else [(PROBS[i], LABEL[i]) for i in range(2)]
    dice = sum(1 - float(2 * tp / (2 * tp + fp + fn))
               for tp, fp, fn in (counts(p, g) for p, g in samples)) / len(samples)
    assert loss == pytest.approx(dice + bce_by_hand(PROBS, LABEL), rel=1e-9)


def test_wce_needs_its_weight():
    with pytest.raises(ValueError, match="wce needs loss.pos_weight"):
        LossConfig(name="wce")


@pytest.mark.parametrize("name", ["tversky", "dice", "jaccard", "focal_tversky", "ce", "wce", "focal", "dice_ce"])
def test_every_loss_trains_a_step_and_falls_on_a_perfect_prediction(name):
    cfg = LossConfig(name=name, pos_weight=5.0 if name == "wce" else None)
    loss_fn = build_loss(cfg)
    good = loss_fn(logit(LABEL.clamp(1e-6, 1 - 1e-6)), LABEL)
    bad = loss_fn(logit((1 - LABEL).clamp(1e-6, 1 - 1e-6)), LABEL)
    assert float(good) < float(bad)
    logits = torch.zeros_like(LABEL, dtype=torch.float32, requires_grad=True)
    loss_fn(logits, LABEL.float()).backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0


def test_the_cross_entropy_warmup_fades_from_one_to_zero_and_leaves_the_tversky_index_alone():
    from lesionseg.training.losses import CrossEntropyTerm

    loss = CrossEntropyTerm(build_loss(LossConfig(beta=0.7, batch=True, smooth=0.0)), until=4)
    tversky = tversky_by_hand(PROBS, LABEL, 0.3, 0.7, 0.0)
    # binary cross-entropy by hand: mean over the 8 voxels of −[g log p + (1 − g) log(1 − p)]
    ce = float(-(LABEL * PROBS.log() + (1 - LABEL) * (1 - PROBS).log()).mean())
    for iteration, weight in [(1, 1.0), (2, 0.75), (3, 0.5), (4, 0.25), (5, 0.0), (100, 0.0)]:
        loss.iteration = iteration
        assert loss.weight() == weight
        assert float(loss(logit(PROBS), LABEL)) == pytest.approx(tversky + weight * ce, rel=1e-9)


@pytest.mark.parametrize("term, until, schedule", [
    (0.4, 0, [(1, 0.4), (2, 0.4), (1000, 0.4)]),  # a constant term
    (0.4, 2, [(1, 1.0), (2, 0.7), (3, 0.4), (50, 0.4)]),  # a warm-up fading from 1 to the constant weight
    (2.0, 2, [(1, 1.0), (2, 1.5), (3, 2.0), (50, 2.0)]),  # … or rising to a weight above 1
])
def test_a_cross_entropy_term_is_tversky_plus_its_weight_times_bce(term, until, schedule):
    from lesionseg.training.losses import CrossEntropyTerm

    loss = CrossEntropyTerm(build_loss(LossConfig(beta=0.9, batch=True, smooth=0.0)), weight=term, until=until)
    tversky = tversky_by_hand(PROBS, LABEL, 0.1, 0.9, 0.0)
    ce = float(torch.nn.functional.binary_cross_entropy(PROBS.double(), LABEL.double()))  # PyTorch's reference
    for iteration, weight in schedule:
        loss.iteration = iteration
        assert loss.weight() == pytest.approx(weight)
        assert float(loss(logit(PROBS), LABEL)) == pytest.approx(tversky + weight * ce, rel=1e-6)
