"""Training batches as a pure function of (seed, iteration): patch sampling and augmentation in torch.

Batch `it` of a run depends only on `cfg.seed`, `it` and the preprocessed training volumes, never on the
batches before it, so a resumed run draws exactly the batches an uninterrupted one would have drawn.
For batch `it`, a CPU `torch.Generator` seeded from `(seed, it)` (through NumPy's `SeedSequence`, so that
neighbouring seeds and iterations give unrelated streams) decides:

1. which volumes: `min(train.batch_size, n)` of the n training volumes, without replacement;
2. for each of `data.samples_per_volume` patches per volume, its centre: with probability
   `data.pos_fraction` a lesion voxel, else a brain voxel without lesion (MONAI's
   `RandCropByPosNegLabeld` with precomputed indices; a volume without lesion gives brain centres), moved
   inward so that the patch fits (volumes are padded to the patch size when cached);
3. per patch, when spatial augmentation is on (`data.rotate_degrees` or `data.scale_fraction` > 0), with
   p = `data.spatial_prob`: a rotation by U(−r, r) degrees about each axis and a zoom by U(1 − s, 1 + s),
   about the patch centre, resampled from the whole cached volume (`grid_sample`: trilinear for the image,
   nearest for the label, zeros outside — the value outside the brain), as nnU-Net's spatial transform;
4. per patch, as the MONAI transforms did: a flip of each spatial axis with p = 0.5 (`RandFlipd`), image
   × (1 + U(−a, a)) with p = 0.5 (`RandScaleIntensityd(factors=a)`, a = `data.intensity_scale`), image +
   U(−b, b) with p = 0.5 (`RandShiftIntensityd(offsets=b)`, b = `data.intensity_shift`), one factor and one
   offset for all channels of a patch (0: off).

The random numbers are a few dozen scalars, drawn on the CPU so that crop positions are host integers:
cropping is then plain slicing of the cached tensors and no step waits for the GPU to report a value.
The voxel work (slice or resample, flip, scale, shift) runs on the device the volumes are cached on.
Rotations act on voxel axes: they suit (near-)isotropic training grids (`data.spacing`).
"""

from __future__ import annotations

import math
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch


@dataclass
class Volume:
    """One preprocessed training case, padded to at least the patch size.

    `image` `(C, D, H, W)` float32 and `label` `(1, D, H, W)` uint8 live on the cache device; `lesion` and
    `brain` are flat indices into `(D, H, W)` of lesion voxels and of brain voxels without lesion, on the
    CPU (they are only read to place crops).
    """

    image: torch.Tensor
    label: torch.Tensor
    lesion: torch.Tensor
    brain: torch.Tensor

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.image, self.label))


def batch_seed(seed: int, iteration: int, stream: int = 0) -> int:
    """A 63-bit generator seed that depends on both numbers (any int seed; iteration ≥ 0); `stream` > 0
    gives further independent generators for the same batch."""
    entropy = [seed % 2**64, iteration] + ([stream] if stream else [])
    state = np.random.SeedSequence(entropy).generate_state(2, np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


def crop_box(flat: int, shape: Sequence[int], patch: Sequence[int]) -> tuple[slice, ...]:
    """The patch around flat voxel index `flat` of a `shape` volume, moved inward to fit inside it.

    The centre voxel is at `patch // 2` within the patch (MONAI's `correct_crop_centers` convention).
    """
    starts = []
    for size, dim in zip(reversed(patch), reversed(shape)):  # unravel the flat index, last axis first
        flat, centre = divmod(flat, dim)
        starts.append(min(max(centre - size // 2, 0), dim - size))
    return tuple(slice(start, start + size) for start, size in zip(reversed(starts), patch))


def rotation_matrix(degrees: Sequence[float]) -> np.ndarray:
    """R = R₀ · R₁ · R₂, Rₖ the rotation by `degrees[k]` about voxel axis k (float64, 3 × 3)."""
    out = np.eye(3)
    for axis, angle in enumerate(np.deg2rad(degrees)):
        i, j = [a for a in range(3) if a != axis]
        r = np.eye(3)
        r[i, i] = r[j, j] = math.cos(angle)
        r[i, j], r[j, i] = -math.sin(angle), math.sin(angle)
        out = out @ r
    return out


def resample_patch(volume: Volume, centre: Sequence[float], patch: Sequence[int], rotation: np.ndarray,
                   zoom: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The `patch`-sized patch whose voxel at offset o from its centre is read from `centre + R·o / zoom`
    of the volume (voxel coordinates; zoom > 1 magnifies), image trilinear and label nearest, 0 outside."""
    device = volume.image.device
    offsets = torch.stack(torch.meshgrid(
        *[torch.arange(n, dtype=torch.float64) - (n - 1) / 2 for n in patch], indexing="ij"), dim=-1)
    source = offsets @ torch.from_numpy(rotation).T / zoom + torch.tensor(centre, dtype=torch.float64)
    sizes = torch.tensor(volume.image.shape[1:], dtype=torch.float64)
    normalised = 2 * source / (sizes - 1) - 1  # align_corners=True: -1 and 1 are the first and last voxel
    grid = normalised.flip(-1).to(device=device, dtype=torch.float32)[None]  # grid_sample wants (x, y, z) = (W, H, D)
    image = torch.nn.functional.grid_sample(volume.image[None], grid, mode="bilinear", padding_mode="zeros",
                                            align_corners=True)[0]
    label = torch.nn.functional.grid_sample(volume.label[None].float(), grid, mode="nearest",
                                            padding_mode="zeros", align_corners=True)[0]
    return image, label.to(volume.label.dtype)


class BatchSampler:
    """`sampler(it)` → `{"image": (N, C, *patch), "label": (N, 1, *patch)}` float32 on `device`,
    N = min(batch_size, len(volumes)) × samples_per_volume.

    `volumes` is a sequence of `Volume`s: a list of cached ones, or a lazy sequence that preprocesses a
    case when it is indexed (`data.cache: false`). Where the volumes are cached on the CPU and `device` is
    a GPU, the batch is assembled in pinned memory and copied without blocking.
    """

    def __init__(
        self,
        volumes: Sequence[Volume],
        *,
        seed: int,
        patch_size: Sequence[int],
        batch_size: int,
        samples_per_volume: int,
        pos_fraction: float,
        rotate_degrees: float = 0.0,
        scale_fraction: float = 0.0,
        spatial_prob: float = 0.0,
        intensity_scale: float = 0.1,
        intensity_shift: float = 0.1,
        device: torch.device | str = "cpu",
    ) -> None:
        if len(volumes) == 0:
            raise ValueError("BatchSampler needs at least one training volume")
        self.volumes = volumes
        self.seed = seed
        self.patch = tuple(int(p) for p in patch_size)
        self.batch_size = min(batch_size, len(volumes))
        self.samples = samples_per_volume
        self.pos_fraction = pos_fraction
        self.rotate_degrees, self.scale_fraction = float(rotate_degrees), float(scale_fraction)
        self.intensity_scale, self.intensity_shift = float(intensity_scale), float(intensity_shift)
        self.spatial_prob = spatial_prob if (rotate_degrees > 0 or scale_fraction > 0) else 0.0
        self.device = torch.device(device)

    def __call__(self, iteration: int) -> dict[str, torch.Tensor]:
        g = torch.Generator().manual_seed(batch_seed(self.seed, iteration))
        # The spatial augmentation has a generator of its own, so that turning it on changes no crop or flip.
        spatial = (torch.Generator().manual_seed(batch_seed(self.seed, iteration, stream=1))
                   if self.spatial_prob > 0 else None)
        chosen = torch.randperm(len(self.volumes), generator=g)[: self.batch_size].tolist()
        images, labels = [], []
        for index in chosen:
            volume = self.volumes[index]
            for _ in range(self.samples):
                image, label = self._patch(volume, g, spatial)
                images.append(image)
                labels.append(label)
        return {"image": self._stack(images, torch.float32), "label": self._stack(labels, torch.float32)}

    def _patch(self, volume: Volume, g: torch.Generator, spatial: torch.Generator | None
               ) -> tuple[torch.Tensor, torch.Tensor]:
        # Always draw the same count of numbers, whichever branches are taken.
        u = torch.rand(9, generator=g, dtype=torch.float64).tolist()
        lesion_centred = u[0] < self.pos_fraction and volume.lesion.numel() > 0
        centres = volume.lesion if lesion_centred or volume.brain.numel() == 0 else volume.brain
        flat = int(centres[min(int(u[1] * centres.numel()), centres.numel() - 1)])
        box = crop_box(flat, volume.image.shape[1:], self.patch)
        image, label = volume.image[(slice(None), *box)], volume.label[(slice(None), *box)]
        if spatial is not None:
            v = torch.rand(5, generator=spatial, dtype=torch.float64).tolist()
            if v[0] < self.spatial_prob:
                degrees = [(2 * x - 1) * self.rotate_degrees for x in v[1:4]]
                zoom = 1.0 + (2 * v[4] - 1) * self.scale_fraction
                centre = [(b.start + b.stop - 1) / 2 for b in box]
                image, label = resample_patch(volume, centre, self.patch, rotation_matrix(degrees), zoom)
        flips = [axis + 1 for axis in range(3) if u[2 + axis] < 0.5]
        if flips:
            image, label = image.flip(flips), label.flip(flips)
        if u[5] < 0.5 and self.intensity_scale > 0:
            image = image * (1.0 + (u[6] * (2 * self.intensity_scale) - self.intensity_scale))
        if u[7] < 0.5 and self.intensity_shift > 0:
            image = image + (u[8] * (2 * self.intensity_shift) - self.intensity_shift)
        return image, label

    def _stack(self, patches: list[torch.Tensor], dtype: torch.dtype) -> torch.Tensor:
        source = patches[0].device
        pin = source.type == "cpu" and self.device.type == "cuda"
        out = torch.empty((len(patches), *patches[0].shape), dtype=dtype, device=source, pin_memory=pin)
        for i, patch in enumerate(patches):
            out[i].copy_(patch)
        # Non-blocking only towards the GPU: a copy back to host memory must be complete when returned.
        return out.to(self.device, non_blocking=self.device.type == "cuda")


class Prefetched:
    """`sampler(it)`, with batch `it + 1` cut in a background thread while the caller trains on batch `it`
    (`data.prefetch`): on a GPU the host then reads, crops and augments while the device computes. The same
    batches as `sampler`, whatever the order of the calls — each is a pure function of (seed, it) — so exact
    resume holds. Nothing is cut past `last`. A context manager: leaving it waits for the thread."""

    def __init__(self, sampler: Callable[[int], dict[str, torch.Tensor]], last: int) -> None:
        self.sampler, self.last = sampler, last
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lesionseg-batches")
        self.ahead: tuple[int, Future] | None = None

    def __call__(self, iteration: int) -> dict[str, torch.Tensor]:
        ahead, self.ahead = self.ahead, None
        batch = ahead[1].result() if ahead is not None else None  # waited for even when not the one asked for
        if ahead is None or ahead[0] != iteration:
            batch = self.sampler(iteration)
        if iteration < self.last:
            self.ahead = (iteration + 1, self.pool.submit(self.sampler, iteration + 1))
        return batch

    def __enter__(self) -> Prefetched:
        return self

    def __exit__(self, *exc: object) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)
