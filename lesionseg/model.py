"""The network: MONAI's residual 3D U-Net (Kerfoot et al. 2018), one logit channel for "lesion"."""

from __future__ import annotations

import math

import torch
from monai.networks.nets import UNet

from lesionseg.config import Config


class LesionUNet(torch.nn.Module):
    """A U-Net with a learned output offset initialised at logit(`model.prior`).

    Freshly initialised, a network outputs probability ≈ 0.5 on every voxel; with lesions at 1 % of a patch,
    a Tversky or Dice loss then starts from a sea of false positives, and needs many iterations to leave it
    (the 400-iteration demo does not: DSC 0.1, sensitivity 0.99). An offset at logit(0.01) (the focal-loss
    initialisation of Lin et al. 2017, the default) starts from "few lesions" instead. On real scans with
    a per-patch loss and 1500 iterations, prior 0.5 found the low-load patient's lesions where 0.01 did not
    (test DSC 0.13 vs 0.02; bench/RESULTS.md): `configs/examples/` use 0.5 for their long runs.
    """

    def __init__(self, unet: torch.nn.Module, prior: float):
        super().__init__()
        self.unet = unet
        self.offset = torch.nn.Parameter(torch.tensor(math.log(prior / (1.0 - prior))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, D, H, W) → (B, 1, D, H, W) logits
        return self.unet(x) + self.offset


def build_model(cfg: Config) -> torch.nn.Module:
    """A 3D U-Net taking one input channel per modality and returning lesion logits `(B, 1, D, H, W)`.

    The sigmoid lives in the loss and in inference, not in the network, so that AMP and the loss see
    logits. Each side of the input must be divisible by the product of `model.strides`.
    """
    unet = UNet(
        spatial_dims=3,
        in_channels=len(cfg.data.modalities),
        out_channels=1,
        channels=cfg.model.channels,
        strides=cfg.model.strides,
        num_res_units=cfg.model.res_units,
        norm=cfg.model.norm.upper(),
        dropout=cfg.model.dropout,
    )
    return LesionUNet(unet, cfg.model.prior)
