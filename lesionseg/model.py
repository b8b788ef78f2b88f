"""The network: MONAI's residual 3D U-Net (Kerfoot et al. 2018), one logit channel for "lesion"."""

from __future__ import annotations

import math

import torch
from monai.networks.layers import SkipConnection
from monai.networks.nets import UNet

from lesionseg.config import Config


class LesionUNet(torch.nn.Module):
    """A U-Net with a learned output offset initialised at logit(`model.prior`).

    The offset is where every voxel starts, and the answer the network keeps where it has learned nothing
    else. Freshly initialised, a network outputs probability ≈ 0.5 on every voxel (`prior` 0.5: the offset
    starts at 0); with lesions at ~1 % of a patch an overlap loss (Tversky, Dice) then starts from a sea of
    false positives and leaves it only as fast as the learning rate lets it — a 400-iteration demo, a
    900-iteration real run under a cosine decay or a rate of 1e-4 end inside it. `auto` (the default)
    starts at the lesion share of the training patches (`training/offset.py`): the background starts where
    it belongs and stays there, lesions are raised; under no schedule measured (constant, cosine, poly) did a
    run collapse from there. Over longer runs with a constant rate it ends more conservative at p ≥ 0.5 than
    the start at 0.5 (bench/RESULTS.md, stop 23, issue 24).
    """

    def __init__(self, unet: torch.nn.Module, prior: float, deep_supervision: bool = False):
        super().__init__()
        self.unet = unet
        self.offset = torch.nn.Parameter(torch.zeros(()))
        self.start_at(prior)
        self._decoded: list[torch.Tensor] = []
        self.heads: torch.nn.ModuleList | tuple = ()  # no module without deep supervision: checkpoints as before
        if deep_supervision:
            lower = decoder_layers(unet)[1:]  # level k's `up` returns `unet.channels[k]` maps
            self.heads = torch.nn.ModuleList(torch.nn.Conv3d(unet.channels[k], 1, kernel_size=1)
                                             for k in range(len(lower)))
            for up in lower:
                up.register_forward_hook(self._keep)

    def _keep(self, module, inputs, output: torch.Tensor) -> None:
        if self.training:
            self._decoded.append(output)

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        """`(B, C, D, H, W)` → `(B, 1, D, H, W)` logits; training with `model.deep_supervision`, a list: those,
        then one logit map per lower decoder level, finest first (each through its 1×1×1 head and the offset)."""
        self._decoded.clear()
        logits = self.unet(x) + self.offset
        if not (self.training and self.heads):
            return logits
        lower = self._decoded[::-1]  # the hooks fire coarsest first
        self._decoded.clear()
        return [logits] + [head(out) + self.offset for head, out in zip(self.heads, lower)]

    @torch.no_grad()
    def start_at(self, prior: float) -> None:
        """Set the offset to logit(`prior`): at construction, or before the first step (the optimiser keeps no
        state of it yet)."""
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
    return LesionUNet(unet, 0.5 if cfg.model.prior == "auto" else cfg.model.prior, cfg.model.deep_supervision)


def decoder_layers(unet: UNet) -> list[torch.nn.Module]:
    """MONAI's UNet nests `Sequential(down, SkipConnection(inner), up)` per level: its `up` layers, top first."""
    ups, block = [], unet.model
    while isinstance(block, torch.nn.Sequential) and len(block) == 3 and isinstance(block[1], SkipConnection):
        ups.append(block[2])
        block = block[1].submodule
    return ups
