"""Boundary distances between two binary masks, in mm: HD95 and ASSD — MONAI's definitions.

Definitions (identical to MONAI 1.x `compute_hausdorff_distance(percentile=95)` and
`compute_average_surface_distance(symmetric=True)` with `spacing` given, which the tests check):

- **Surface** of a mask: its voxels with at least one of their 6 face neighbours outside the mask
  (mask XOR its erosion by the 3D cross; outside the image counts as background) — the same surface
  voxels as MONAI and MedPy.
- **Directed distances** d(A→B): for each surface voxel of A, the Euclidean distance in mm (voxel centres
  scaled by the header spacing) to the nearest surface voxel of B.
- **HD95** = max(P95 d(pred→ref), P95 d(ref→pred)): the larger of the two *directed* 95th percentiles
  (linear interpolation between order statistics, as `numpy.percentile`), the robust analogue of
  Hausdorff's max(h(A, B), h(B, A)).
  MedPy's `hd95` instead takes P95 of both directions' distances pooled; it is (up to interpolation)
  never larger, and much smaller when one direction has a tail of a few per cent of its surface (e.g. a
  distant false-positive lesion) — tests/evaluation/test_surface.py shows both on such a case.
- **ASSD** = (Σ d(pred→ref) + Σ d(ref→pred)) / (|∂pred| + |∂ref|): the mean over all surface voxels of
  both masks (Heimann et al. 2009). MONAI and MedPy 0.5.2 agree on this one (older MedPy releases
  averaged the two directed means instead, which differs when the surfaces differ in size).
- **Empty masks**: both empty → 0 mm (perfect agreement on "no lesion", as DSC = 1); exactly one empty →
  NaN (no surface to measure to; undefined and counted as such, where MONAI returns inf/NaN with a warning).

Surfaces are found with tensor operations on the masks' device; nearest-neighbour search then runs on the
surface points only (a k-d tree on CPU, blocked `torch.cdist` on GPU), never on a full distance map.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from scipy.spatial import cKDTree

HD_PERCENTILE = 95.0
_CDIST_ELEMENTS = 2**25  # distances held at once on GPU (256 MiB in float64)


def surface_voxels(mask: torch.Tensor) -> torch.Tensor:
    """Bool tensor, same shape and device: voxels of `mask` with a face neighbour outside it."""
    if mask.dtype != torch.bool:
        raise ValueError(f"mask must be a bool tensor, got dtype {mask.dtype}.")
    padded = torch.zeros([n + 2 for n in mask.shape], dtype=torch.bool, device=mask.device)
    padded[(slice(1, -1),) * mask.ndim] = mask
    interior = mask.clone()
    for axis in range(mask.ndim):
        for shift in (0, 2):
            index = [slice(1, -1)] * mask.ndim
            index[axis] = slice(shift, shift + mask.shape[axis])
            interior &= padded[tuple(index)]
    return mask & ~interior


def _percentile(values: torch.Tensor, q: float) -> float:
    """`numpy.percentile(values, 100 q)` (linear interpolation), without torch.quantile's size limit."""
    ordered = torch.sort(values).values
    position = q * (ordered.numel() - 1)
    lo, hi = math.floor(position), math.ceil(position)
    return float(ordered[lo] + (ordered[hi] - ordered[lo]) * (position - lo))


def _points_mm(surface: torch.Tensor, spacing: Sequence[float]) -> torch.Tensor:
    scale = torch.tensor(list(spacing), dtype=torch.float64, device=surface.device)
    return torch.nonzero(surface).to(torch.float64) * scale


def _crop_to_union(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Both masks cropped to the bounding box of their union: exact, since every surface voxel and every
    nearest surface voxel lies inside it, and outside the box is background as outside the image is."""
    union = a | b
    if not bool(union.any()):
        return a, b
    box = []
    for axis in range(union.ndim):
        present = torch.nonzero(union.any(dim=[d for d in range(union.ndim) if d != axis]) if union.ndim > 1
                                else union)[:, 0]
        box.append(slice(int(present[0]), int(present[-1]) + 1))
    return a[tuple(box)], b[tuple(box)]


def _nearest(query: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Distance from each query point to its nearest target point (float64, on query's device)."""
    if query.device.type == "cpu":
        distances, _ = cKDTree(target.numpy()).query(query.numpy(), k=1)
        return torch.from_numpy(np.asarray(distances, dtype=np.float64))
    return _nearest_blocked(query, target)


def _nearest_blocked(
    query: torch.Tensor, target: torch.Tensor, max_elements: int = _CDIST_ELEMENTS
) -> torch.Tensor:
    """Brute force in blocks of query rows (for GPUs, where it beats moving points to a k-d tree)."""
    rows = max(1, max_elements // max(target.shape[0], 1))
    blocks = [torch.cdist(q, target).min(dim=1).values for q in query.split(rows)]
    return torch.cat(blocks) if blocks else query.new_zeros(0)


def directed_surface_distances(
    a: torch.Tensor, b: torch.Tensor, spacing: Sequence[float]
) -> tuple[torch.Tensor, torch.Tensor]:
    """(d(a→b), d(b→a)) in mm, float64, one value per surface voxel; empty tensors for an empty mask."""
    if a.shape != b.shape:
        raise ValueError(f"masks must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}.")
    if len(spacing) != a.ndim or any(not (s > 0) for s in spacing):
        raise ValueError(f"spacing must be {a.ndim} positive numbers (mm), got {tuple(spacing)}.")
    a, b = _crop_to_union(a, b)
    pa, pb = _points_mm(surface_voxels(a), spacing), _points_mm(surface_voxels(b), spacing)
    if pa.numel() == 0 or pb.numel() == 0:
        empty = torch.zeros(0, dtype=torch.float64, device=a.device)
        return empty, empty
    return _nearest(pa, pb), _nearest(pb, pa)


def surface_distances(
    pred: torch.Tensor, ref: torch.Tensor, spacing: Sequence[float], percentile: float = HD_PERCENTILE
) -> dict[str, float]:
    """`{"hd95_mm", "assd_mm"}` between bool masks `pred` and `ref` (module docstring for definitions).

    `spacing`: voxel size in mm along each axis of the masks. The key of the percentile Hausdorff distance
    is `f"hd{percentile:g}_mm"`.
    """
    if not 0 <= percentile <= 100:
        raise ValueError(f"percentile must be in [0, 100], got {percentile}.")
    key = f"hd{percentile:g}_mm"
    pred_any, ref_any = bool(pred.any()), bool(ref.any())
    if not pred_any and not ref_any:
        return {key: 0.0, "assd_mm": 0.0}
    if not pred_any or not ref_any:
        return {key: math.nan, "assd_mm": math.nan}
    d_pr, d_rp = directed_surface_distances(pred, ref, spacing)
    q = percentile / 100
    hd = max(_percentile(d_pr, q), _percentile(d_rp, q))
    assd = float((d_pr.sum() + d_rp.sum()) / (d_pr.numel() + d_rp.numel()))
    return {key: hd, "assd_mm": assd}
