"""The network: MONAI's residual 3D U-Net (Kerfoot et al. 2018), one logit channel for "lesion"."""

from __future__ import annotations

import math

import torch
from monai.networks.nets import UNet

from lesionseg.config import Config


class LesionUNet(torch.nn.Module):
    """A U-Net with a learned output offset initialised at logit(`model.prior`).

    Freshly initialised, a network outputs probability ≈ 0.5 on every voxel (`prior` 0.5, the default: the
    offset starts at 0). With lesions at 1 % of a patch a Tversky or Dice loss then starts from a sea of
    false positives and needs many iterations to leave it: the 400-iteration demo does not (DSC 0.1,
    sensitivity 0.99), so `configs/demo.yaml` starts at logit(0.01) (the focal-loss initialisation of Lin
    et al. 2017), "few lesions". On real scans, 1500 iterations and more, the start at 0.01 under-segments
    (the low-load patient's lesions never rise above 0.5) and 0.5 is level with or ahead of a plain MONAI
    loop at β 0.5, 0.7 and 0.9 (bench/RESULTS.md).
    """

    def __init__(self, unet: torch.nn.Module, prior: float):
        super().__init__()
        self.unet = unet
        self.offset = torch.nn.Parameter(torch.tensor(math.log(prior / (1.0 - prior))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, D, H, W) → (B, 1, D, H, W) logits
        return self.unet(x) + self.offset

    @torch.no_grad()
    def start_at(self, prior: float) -> None:
        """Set the offset to logit(`prior`): before the first step only (the optimiser keeps no state of it yet)."""
        self.offset.fill_(math.log(prior / (1.0 - prior)))


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
    # `prior: auto` is set from the training batches before the first step (training/offset.py); until then 0.5
    return LesionUNet(unet, 0.5 if cfg.model.prior == "auto" else cfg.model.prior)
