"""`model.prior: auto`: the network's output starts at the lesion share of the patches training draws.

The output offset (`model.LesionUNet`) is the answer the network gives where it has learned nothing else,
and where every voxel starts. Started at 0.5, every voxel is half lesion, and an overlap loss (Tversky,
Dice) pulls the background down only as fast as the schedule lets it: with too little learning rate over
the run (a cosine or polynomial decay, a low rate, a short run) the network ends in its starting sea of
false positives, on scans it has not seen first. Started at a constant such as 0.01, it suits one lesion
load and not another. The lesion share of the training patches is the prevalence the network is trained
at — the base rate that cross-entropy's optimal constant output would be (the logic of Lin et al.
2017's 0.01, measured instead of assumed) — so `auto` starts there: "few lesions" for MS scans,
"some" for tumours, from the data.

The share is measured on the first `SHARE_BATCHES` training batches themselves (batch `it` is a pure
function of (seed, it), so drawing them changes nothing that follows): the voxels labelled lesion over all
voxels of their patches, with `data.pos_fraction`, the patch size and the augmentation as configured.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

SHARE_BATCHES = 32  # batches drawn to measure the share (at most `train.iterations`)
FLOOR, CEILING = 1e-3, 0.5  # the offset starts within logit(0.001) … 0 (no lesion drawn: the floor)


def lesion_share(batches: Callable[[int], dict[str, torch.Tensor]], iterations: int) -> float:
    """The share of lesion voxels over every voxel of training batches 1 … min(`iterations`, SHARE_BATCHES)."""
    lesion, voxels = 0.0, 0
    for it in range(1, min(iterations, SHARE_BATCHES) + 1):
        label = batches(it)["label"]
        lesion += float(label.sum())
        voxels += label.numel()
    return lesion / voxels


def starting_prior(share: float) -> float:
    """The offset's starting probability for a measured lesion `share`: the share, within FLOOR … CEILING."""
    return min(max(share, FLOOR), CEILING)
