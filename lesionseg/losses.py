"""Losses for a binary lesion channel, configured from `cfg.loss`; MONAI does the arithmetic.

Tversky loss (Salehi et al. 2017, "Tversky loss function for image segmentation using 3D fully
convolutional deep networks"): with p = sigmoid(logits) and g the binary label,

    TP = Σ p·g,  FP = Σ p·(1 − g),  FN = Σ (1 − p)·g
    loss = 1 − (TP + s) / (TP + α·FP + β·FN + s)

α weights false positives, β false negatives; α = 1 − β unless `loss.alpha` is given, and α = β = 0.5 is
the soft Dice loss. With `loss.batch: true` (the default) the sums run over the whole batch (one index
per batch); with `false` the index is computed per patch and the losses averaged.

A summed index weighs every case by its lesion volume, so in a batch that mixes a heavy-load case with a
light one the light one's lesions hardly count; the per-patch mean weighs patches alike, as the per-case
mean DSC of the evaluation weighs patients alike (Eelbode et al. 2020 make the same point for per-image
vs batch Dice). On real MS scans (bench/RESULTS.md) the low-load patient's lesions were found only with
the per-patch index (and `model.prior` 0.5, which needs a long run); `configs/examples/` use both.
What the loss does to calibration: at its optimum a voxel whose lesion probability under the training
patches is q is predicted lesion when q > α·T, T the Tversky index reached on the training patches
(for Dice, Lipton et al.'s F*/2) — a larger β lowers that bar, and so does a harder training set.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from monai.losses import DiceLoss, TverskyLoss

from lesionseg.config import LossConfig


def _tversky(cfg: LossConfig) -> torch.nn.Module:
    return TverskyLoss(
        sigmoid=True,
        alpha=cfg.resolved_alpha,
        beta=cfg.beta,
        batch=cfg.batch,
        smooth_nr=cfg.smooth,
        smooth_dr=cfg.smooth,
    )


def _dice(cfg: LossConfig) -> torch.nn.Module:
    return DiceLoss(sigmoid=True, batch=cfg.batch, smooth_nr=cfg.smooth, smooth_dr=cfg.smooth)


LOSSES: dict[str, Callable[[LossConfig], torch.nn.Module]] = {"tversky": _tversky, "dice": _dice}


def build_loss(cfg: LossConfig) -> torch.nn.Module:
    """The configured loss as a module: `loss(logits, target)` with both shaped `(B, 1, D, H, W)`."""
    if cfg.name not in LOSSES:
        raise ValueError(f"Unsupported loss: {cfg.name!r}, available options are {sorted(LOSSES)}.")
    return LOSSES[cfg.name](cfg)
