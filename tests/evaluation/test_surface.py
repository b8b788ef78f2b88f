"""Tests for lesionseg.evaluation.surface: hand-checked distances, MONAI (same definition) and MedPy (shown, differs)."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from medpy.metric.binary import assd as medpy_assd
from medpy.metric.binary import hd95 as medpy_hd95
from monai.metrics import compute_average_surface_distance, compute_hausdorff_distance
from scipy import ndimage

from lesionseg.evaluation.surface import directed_surface_distances, surface_distances, surface_voxels


def mask(shape, *voxels):
    m = torch.zeros(shape, dtype=torch.bool)
    for v in voxels:
        m[v] = True
    return m


def monai_values(pred: np.ndarray, ref: np.ndarray, spacing) -> tuple[float, float]:
    p, r = torch.from_numpy(pred)[None, None].float(), torch.from_numpy(ref)[None, None].float()
    with warnings.catch_warnings():
        # MONAI 1.6 passes its own deprecated argument internally; nothing we can act on.
        warnings.filterwarnings("ignore", message=".*always_return_as_numpy.*", category=FutureWarning)
        hd = compute_hausdorff_distance(p, r, percentile=95, spacing=list(spacing)).item()
        asd = compute_average_surface_distance(p, r, symmetric=True, spacing=list(spacing)).item()
    return hd, asd


def test_surface_of_a_cube_and_a_voxel():
    cube = torch.zeros(5, 5, 5, dtype=torch.bool)
    cube[1:4, 1:4, 1:4] = True  # shape (5, 5, 5): a 3×3×3 cube; only its centre is interior
    surface = surface_voxels(cube)
    assert int(surface.sum()) == 26 and not surface[2, 2, 2]
    single = mask((3, 3, 3), (1, 1, 1))
    assert torch.equal(surface_voxels(single), single)
    full = torch.ones(3, 3, 3, dtype=torch.bool)  # outside the image is background
    assert int(surface_voxels(full).sum()) == 26


# [pred voxels, ref voxels, shape, spacing, hd95, assd] — checked by hand.
DISTANCE_CASES = [
    # one voxel each, 3 voxels apart along an axis of 2 mm: every distance is 6 mm
    [[(0, 0, 0)], [(3, 0, 0)], (5, 2, 2), (2.0, 1.0, 1.0), 6.0, 6.0],
    # diagonal neighbours in an anisotropic grid: sqrt(1² + 1.5² + 2²)
    [[(0, 0, 0)], [(1, 1, 1)], (2, 2, 2), (1.0, 1.5, 2.0), math.sqrt(7.25), math.sqrt(7.25)],
    # identical masks
    [[(1, 1, 1), (1, 2, 1)], [(1, 1, 1), (1, 2, 1)], (3, 4, 3), (1.0, 1.0, 1.0), 0.0, 0.0],
    # ref = two voxels 0 and 4 apart (1 mm), pred = voxel 0: d(pred→ref) = [0]; d(ref→pred) = [0, 4]
    # HD95 = max(0, P95([0, 4]) = 3.8); ASSD = (0 + 0 + 4) / 3
    [[(0, 0, 0)], [(0, 0, 0), (4, 0, 0)], (5, 1, 1), (1.0, 1.0, 1.0), 3.8, 4 / 3],
]


@pytest.mark.parametrize("pred, ref, shape, spacing, hd95, assd", DISTANCE_CASES)
def test_distance_table(pred, ref, shape, spacing, hd95, assd):
    got = surface_distances(mask(shape, *pred), mask(shape, *ref), spacing)
    assert got == pytest.approx({"hd95_mm": hd95, "assd_mm": assd})
    p, r = mask(shape, *pred).numpy(), mask(shape, *ref).numpy()
    assert monai_values(p, r, spacing) == pytest.approx((hd95, assd), rel=1e-5)


def test_empty_masks():
    empty, one = mask((3, 3, 3)), mask((3, 3, 3), (1, 1, 1))
    assert surface_distances(empty, empty, (1, 1, 1)) == {"hd95_mm": 0.0, "assd_mm": 0.0}
    for a, b in ((empty, one), (one, empty)):
        got = surface_distances(a, b, (1, 1, 1))
        assert math.isnan(got["hd95_mm"]) and math.isnan(got["assd_mm"])
    d_ab, d_ba = directed_surface_distances(empty, one, (1, 1, 1))
    assert d_ab.numel() == 0 and d_ba.numel() == 0


def test_other_percentile_key():
    got = surface_distances(mask((5, 1, 1), (0, 0, 0)), mask((5, 1, 1), (0, 0, 0), (4, 0, 0)), (1, 1, 1), 100)
    assert got["hd100_mm"] == 4.0


def test_argument_errors():
    with pytest.raises(ValueError, match=r"\(2, 2\) and \(3, 3\)"):
        directed_surface_distances(torch.ones(2, 2, dtype=torch.bool), torch.ones(3, 3, dtype=torch.bool), (1, 1))
    with pytest.raises(ValueError, match=r"spacing must be 3 positive numbers"):
        surface_distances(mask((2, 2, 2), (0, 0, 0)), mask((2, 2, 2), (1, 1, 1)), (1, 1))
    with pytest.raises(ValueError, match=r"percentile must be in \[0, 100\]"):
        surface_distances(mask((2, 2, 2), (0, 0, 0)), mask((2, 2, 2), (1, 1, 1)), (1, 1, 1), 101)
    with pytest.raises(ValueError, match="bool tensor"):
        surface_voxels(torch.zeros(2, 2))


def blobs(rng, shape, n, radius):
    seeds = np.zeros(shape, bool)
    seeds[tuple(rng.integers(0, s, n) for s in shape)] = True
    return ndimage.binary_dilation(seeds, iterations=radius)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 4), radius=st.integers(0, 3),
       spacing=st.tuples(*[st.sampled_from([0.5, 1.0, 1.2, 3.0])] * 3))
def test_matches_monai_on_random_blobs(seed, n, radius, spacing):
    rng = np.random.default_rng(seed)
    shape = (14, 12, 10)
    pred, ref = blobs(rng, shape, n, radius), blobs(rng, shape, n, radius)
    got = surface_distances(torch.from_numpy(pred), torch.from_numpy(ref), spacing)
    hd, asd = monai_values(pred, ref, spacing)
    assert got["hd95_mm"] == pytest.approx(hd, rel=1e-5, abs=1e-5)
    assert got["assd_mm"] == pytest.approx(asd, rel=1e-5, abs=1e-5)


def test_medpy_differs_and_why():
    """A large lesion found well plus one distant false positive: the directed tail decides HD95."""
    ref = np.zeros((40, 20, 20), bool)
    ref[2:12, 5:15, 5:15] = True
    pred = ref.copy()
    pred[3:12, 5:15, 5:15] = True
    pred[33:37, 8:11, 8:11] = True  # 34 surface voxels ~22-25 mm away: 6 % of pred's surface, 3 % of both
    spacing = (1.0, 1.0, 1.0)
    ours = surface_distances(torch.from_numpy(pred), torch.from_numpy(ref), spacing)
    assert (ours["hd95_mm"], ours["assd_mm"]) == pytest.approx(monai_values(pred, ref, spacing), rel=1e-5)
    medpy = medpy_hd95(pred, ref, voxelspacing=spacing), medpy_assd(pred, ref, voxelspacing=spacing)
    # MedPy pools both directions before the percentile, so the far-away voxels are a smaller share:
    d_pr, d_rp = (d.numpy() for d in directed_surface_distances(torch.from_numpy(pred), torch.from_numpy(ref), spacing))
    assert medpy[0] == pytest.approx(np.percentile(np.concatenate([d_pr, d_rp]), 95))
    assert medpy[1] == pytest.approx(ours["assd_mm"])  # ASSD: MedPy 0.5.2 and MONAI agree
    assert medpy[0] == 0.0 and ours["hd95_mm"] > 20  # MedPy: 0 mm; ours and MONAI's: > 20 mm


def test_blocked_brute_force_matches_kd_tree():
    """The GPU path's nearest-neighbour search, run on CPU: same distances as the k-d tree."""
    from lesionseg.evaluation.surface import _nearest, _nearest_blocked

    gen = torch.Generator().manual_seed(0)
    query, target = torch.rand(300, 3, generator=gen, dtype=torch.float64), torch.rand(70, 3, generator=gen, dtype=torch.float64)
    torch.testing.assert_close(_nearest_blocked(query, target, max_elements=1000), _nearest(query, target))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu():
    rng = np.random.default_rng(0)
    pred, ref = (torch.from_numpy(blobs(rng, (20, 20, 20), 3, 2)) for _ in range(2))
    cpu = surface_distances(pred, ref, (1.0, 1.2, 2.0))
    assert surface_distances(pred.cuda(), ref.cuda(), (1.0, 1.2, 2.0)) == pytest.approx(cpu)
