"""Losses for a binary lesion channel, configured from `cfg.loss`; MONAI does the arithmetic where it can.

With p = sigmoid(logits) and g the binary label, TP = Σ p·g, FP = Σ p·(1 − g), FN = Σ (1 − p)·g, s the
smoothing term (`loss.smooth`) and the means over voxels:

- `tversky` (Salehi et al. 2017): 1 − (TP + s) / (TP + α·FP + β·FN + s). α weights false positives, β
  false negatives; α = 1 − β unless `loss.alpha` is given. α = β = 0.5 is the soft Dice loss.
- `dice` (Milletari et al. 2016, without squares): 1 − (2·TP + s) / (2·TP + FP + FN + s).
- `jaccard` (soft IoU; Rahman & Wang 2016): 1 − (TP + s) / (TP + FP + FN + s), Tversky at α = β = 1.
- `focal_tversky` (Abraham & Khan 2019, eq. 4): (1 − T)^(1/γ) with T the Tversky index above and
  γ = `loss.gamma` (default 4/3, the paper's choice; γ > 1 puts more weight on patches the model already
  segments well in the paper's reading, less on easy ones). We follow the paper's exponent 1/γ; some
  implementations write the exponent as γ itself (γ = 0.75 there is γ = 4/3 here).
- `ce`: binary cross-entropy, mean over voxels of −[g·log p + (1 − g)·log(1 − p)].
- `wce`: the same with the lesion term weighted, −[w·g·log p + (1 − g)·log(1 − p)], w = `loss.pos_weight`
  (PyTorch's `pos_weight`; the mean is over voxels, not over weights). Eelbode et al. 2020 compare it with
  the metric-sensitive losses above.
- `focal` (Lin et al. 2017): mean over voxels of −(1 − p_t)^γ·log p_t, p_t = p where g = 1 and 1 − p
  elsewhere, γ = `loss.gamma` (default 2); no class weight α.
- `dice_ce` (nnU-Net's default pairing): `dice` + `ce`, with equal weights.

`loss.ce_weight` adds w·`ce` to any of them (`CrossEntropyTerm`; default `auto`: 1 for the overlap losses, as
nnU-Net pairs Dice with CE, 0 for `ce`, `wce`, `focal` and `dice_ce`, which have cross-entropy in them already;
`loss.ce_warmup` adds a term that fades from 1 to that weight over a share of the run; `training_loss` puts
them together, at every decoder level under `model.deep_supervision`). Why a default: an
overlap loss's gradient on a logit carries the sigmoid's p·(1 − p), so a voxel that is confidently wrong
(the background of a start at 0.5, lesions left under a low start) hardly moves, and a decaying rate
freezes it there; cross-entropy's gradient p − g does not vanish there. Near the threshold, where the
Tversky index decides, CE's per-voxel gradient (mean over N voxels) against the batch-summed index's (over G
lesion voxels) is of the order of the lesion share G / N: a few per cent at MS loads (share ≈ 0.01), a
quarter at tumour-like ones (≈ 0.05), so β still moves the operating point (bench/RESULTS.md, stop 24).

`loss.batch` (the overlap losses): true sums TP/FP/FN over the whole batch (one index per batch); `case`
sums them over each training case's patches in the batch (`data.samples_per_volume` of them, `PerCase`) and
averages the cases' indices; false computes the index per patch and averages. A summed index weighs every
case by its lesion volume, so in a batch that mixes a heavy-load case with a light one the light one's
lesions hardly count; the per-case mean weighs cases alike, as the per-case mean DSC of the evaluation weighs
patients alike (Eelbode et al. 2020 make the same point for per-image vs batch Dice), and the per-patch
mean weighs patches alike — a patch with a few lesion voxels as much as one full of them. On real MS scans
(bench/RESULTS.md) the low-load patient's lesions were found only with the per-patch index (and
`model.prior` 0.5, which needs a long run).
What the loss does to calibration: at its optimum a voxel whose lesion probability under the training
patches is q is predicted lesion when q > α·T, T the Tversky index reached on the training patches
(for Dice, Lipton et al.'s F*/2) — a larger β lowers that bar, and so does a harder training set.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from monai.losses import DeepSupervisionLoss, DiceCELoss, DiceLoss, FocalLoss, TverskyLoss

from lesionseg.config import Config, LossConfig

FOCAL_TVERSKY_GAMMA = 4.0 / 3.0  # Abraham & Khan 2019
FOCAL_GAMMA = 2.0  # Lin et al. 2017


def _tversky(cfg: LossConfig, alpha: float | None = None, beta: float | None = None,
             reduction: str = "mean") -> torch.nn.Module:
    return TverskyLoss(
        sigmoid=True,
        alpha=cfg.resolved_alpha if alpha is None else alpha,
        beta=cfg.beta if beta is None else beta,
        batch=cfg.batch,
        smooth_nr=cfg.smooth,
        smooth_dr=cfg.smooth,
        reduction=reduction,
    )


def _dice(cfg: LossConfig, jaccard: bool = False) -> torch.nn.Module:
    return DiceLoss(sigmoid=True, batch=cfg.batch, smooth_nr=cfg.smooth, smooth_dr=cfg.smooth, jaccard=jaccard)


class FocalTverskyLoss(torch.nn.Module):
    """(1 − T)^(1/γ), T the Tversky index of each patch (or of the batch, `loss.batch`), averaged."""

    def __init__(self, cfg: LossConfig):
        super().__init__()
        self.tversky = _tversky(cfg, reduction="none")
        self.exponent = 1.0 / (cfg.gamma or FOCAL_TVERSKY_GAMMA)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        # 1 − T is in [0, 1]; the floor keeps the gradient of x^(1/γ) finite where a patch is segmented exactly
        return self.tversky(logits, target).clamp_min(1e-12).pow(self.exponent).mean()


class WeightedBCELoss(torch.nn.Module):
    """Binary cross-entropy with the lesion term weighted by `pos_weight` (a float, not a tensor: the loss
    follows the logits to any device)."""

    def __init__(self, pos_weight: float | None = None):
        super().__init__()
        self.weight_of_lesion = pos_weight

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        weight = None if self.weight_of_lesion is None else torch.tensor(
            self.weight_of_lesion, dtype=logits.dtype, device=logits.device)
        return torch.nn.functional.binary_cross_entropy_with_logits(logits, target, pos_weight=weight)


class CrossEntropyTerm(torch.nn.Module):
    """`loss` + w·BCE with w = `weight` (`loss.ce_weight`) and, over a warm-up of `until` iterations
    (`loss.ce_warmup` × `train.iterations`; 0: none), w fading linearly from 1 at iteration 1 to `weight` at
    iteration `until` + 1. Cross-entropy's per-voxel gradient on the logit, p − g, does not vanish where a
    voxel is confidently wrong, where an overlap loss's does (its gradient through the sigmoid carries
    p·(1 − p)). The loop sets `iteration` before each step."""

    def __init__(self, loss: torch.nn.Module, weight: float = 0.0, until: int = 0):
        super().__init__()
        self.loss, self.floor, self.until, self.iteration = loss, weight, until, 1
        self.ce = WeightedBCELoss()

    def weight(self) -> float:
        fade = max(0.0, 1.0 - (self.iteration - 1) / self.until) if self.until > 0 else 0.0
        return self.floor + (1.0 - self.floor) * fade

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        w = self.weight()
        loss = self.loss(logits, target)
        return loss + w * self.ce(logits, target) if w > 0 else loss


LOSSES: dict[str, Callable[[LossConfig], torch.nn.Module]] = {
    "tversky": _tversky,
    "dice": _dice,
    "jaccard": lambda cfg: _dice(cfg, jaccard=True),
    "focal_tversky": FocalTverskyLoss,
    "ce": lambda cfg: WeightedBCELoss(),
    "wce": lambda cfg: WeightedBCELoss(cfg.pos_weight),
    "focal": lambda cfg: FocalLoss(gamma=cfg.gamma or FOCAL_GAMMA, use_softmax=False),
    "dice_ce": lambda cfg: DiceCELoss(sigmoid=True, batch=cfg.batch, smooth_nr=cfg.smooth, smooth_dr=cfg.smooth),
}


class PerCase(torch.nn.Module):
    """`loss.batch: case`: `loss` (computed per item of its batch, averaged) with each training case's
    `patches` consecutive patches of the batch (`batches.BatchSampler` orders them so) joined into one item
    along the first spatial axis — one Tversky index per case over its patches' voxels, the indices averaged:
    cases weigh alike, as in the per-case mean DSC of the evaluation, whatever their lesion volume."""

    def __init__(self, loss: torch.nn.Module, patches: int):
        super().__init__()
        self.loss, self.patches = loss, patches

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.loss(*(self.joined(t) for t in (logits, target)))

    def joined(self, x: torch.Tensor) -> torch.Tensor:
        n, c, d, *rest = x.shape
        if n % self.patches:
            raise ValueError(f"a batch of {n} patches is not whole cases of {self.patches} patches each")
        return x.reshape(n // self.patches, self.patches, c, d, *rest).transpose(1, 2).reshape(
            n // self.patches, c, self.patches * d, *rest)


def build_loss(cfg: LossConfig, patches_per_case: int = 1) -> torch.nn.Module:
    """The configured loss as a module: `loss(logits, target)` with both shaped `(B, 1, D, H, W)`;
    `patches_per_case` (`data.samples_per_volume`): for `loss.batch: case` (`PerCase`)."""
    if cfg.name not in LOSSES:
        raise ValueError(f"Unsupported loss: {cfg.name!r}, available options are {sorted(LOSSES)}.")
    if cfg.batch == "case":
        return PerCase(LOSSES[cfg.name](cfg.model_copy(update={"batch": False})), patches_per_case)
    return LOSSES[cfg.name](cfg)


def training_loss(cfg: Config) -> tuple[torch.nn.Module, CrossEntropyTerm | None]:
    """What a run steps on, and its cross-entropy term (None without one; the loop sets its `iteration`):
    `build_loss`, + `CrossEntropyTerm` when `loss.ce_weight` or `loss.ce_warmup` asks for it, and under
    `model.deep_supervision` the two at every decoder level (MONAI's `DeepSupervisionLoss`, as nnU-Net: the
    label resized to each lower map by nearest neighbour, the terms weighted 1, 1/2, 1/4 … from the top)."""
    ce_term = None
    loss = build_loss(cfg.loss, cfg.data.samples_per_volume)
    if cfg.loss.resolved_ce_weight > 0 or cfg.loss.ce_warmup > 0:
        loss = ce_term = CrossEntropyTerm(loss, cfg.loss.resolved_ce_weight,
                                          round(cfg.loss.ce_warmup * cfg.train.iterations))
    return (DeepSupervisionLoss(loss, weight_mode="exp") if cfg.model.deep_supervision else loss), ce_term
