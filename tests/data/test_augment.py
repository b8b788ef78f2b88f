"""Spatial augmentation of training patches (rotation and zoom, `batches.resample_patch`) and test-time flips.

References: a rotation by 90° is `torch.rot90` of the plain crop, zoom 1 without rotation is the crop
itself, and SciPy's `ndimage.affine_transform` (order 1, zeros outside) resamples the same patch by the
same matrix. Determinism: batch `it` is a function of (seed, it) with the augmentation on, and a resumed
run trains on the same batches (`tests/training/test_resume_exact.py` runs the whole loop with the augmentation on).
"""

import numpy as np
import pytest
import torch
from scipy import ndimage

from lesionseg.data.batches import BatchSampler, Volume, crop_box, resample_patch, rotation_matrix
from lesionseg.inference import TTA_FLIPS, infer_volume


def _volume(shape=(14, 16, 18), seed=0) -> Volume:
    g = torch.Generator().manual_seed(seed)
    image = torch.rand(2, *shape, generator=g)
    label = (torch.rand(1, *shape, generator=g) > 0.8).to(torch.uint8)
    flat = torch.arange(int(np.prod(shape)))
    return Volume(image, label, flat[label.flatten() > 0], flat[label.flatten() == 0])


def _centre(box):
    return [(b.start + b.stop - 1) / 2 for b in box]


def test_identity_is_the_plain_crop():
    v = _volume()
    box = crop_box(6 * 16 * 18 + 8 * 18 + 9, v.image.shape[1:], (6, 6, 6))
    image, label = resample_patch(v, _centre(box), (6, 6, 6), rotation_matrix([0, 0, 0]), 1.0)
    assert torch.allclose(image, v.image[(slice(None), *box)], atol=1e-5)
    assert torch.equal(label, v.label[(slice(None), *box)]) and label.dtype == torch.uint8


@pytest.mark.parametrize("axis, dims", [(0, (2, 3)), (1, (1, 3)), (2, (1, 2))])
def test_a_quarter_turn_is_rot90_of_the_crop(axis, dims):
    v = _volume()
    box = crop_box(7 * 16 * 18 + 8 * 18 + 9, v.image.shape[1:], (6, 6, 6))
    degrees = [0.0, 0.0, 0.0]
    degrees[axis] = 90.0
    image, label = resample_patch(v, _centre(box), (6, 6, 6), rotation_matrix(degrees), 1.0)
    crops = [v.image[(slice(None), *box)], v.label[(slice(None), *box)]]
    turned = [[torch.rot90(c, k, dims) for c in crops] for k in (1, -1)]
    assert any(torch.allclose(image, i, atol=1e-5) and torch.equal(label, l) for i, l in turned)


def test_rotation_and_zoom_match_scipy_affine_transform():
    v = _volume()
    patch = (8, 8, 8)
    centre = np.array([7.0, 7.5, 9.0])
    rotation, zoom = rotation_matrix([12.0, -7.0, 20.0]), 1.15
    image, _ = resample_patch(v, centre, patch, rotation, zoom)
    # output voxel j reads source R (j - c_patch) / zoom + centre = M j + offset
    matrix = rotation / zoom
    offset = centre - matrix @ ((np.array(patch) - 1) / 2)
    for c in range(2):
        expected = ndimage.affine_transform(v.image[c].double().numpy(), matrix, offset, output_shape=patch,
                                            order=1, mode="constant", cval=0.0)
        assert np.allclose(image[c].numpy(), expected, atol=1e-5)


def _sampler(**spatial) -> BatchSampler:
    return BatchSampler([_volume(), _volume(seed=1)], seed=3, patch_size=(6, 6, 6), batch_size=2,
                        samples_per_volume=2, pos_fraction=0.5, **spatial)


def test_augmented_batches_are_a_function_of_seed_and_iteration():
    on = dict(rotate_degrees=15.0, scale_fraction=0.1, spatial_prob=0.5)
    a, b = _sampler(**on), _sampler(**on)
    for it in (5, 0, 17, 5):
        x, y = a(it), b(it)
        assert torch.equal(x["image"], y["image"]) and torch.equal(x["label"], y["label"])
    assert not torch.equal(a(1)["image"], a(2)["image"])


def test_off_leaves_the_batches_as_they_were_and_on_changes_some_patches():
    plain, off = _sampler(), _sampler(rotate_degrees=0.0, scale_fraction=0.0, spatial_prob=0.9)
    on = _sampler(rotate_degrees=20.0, spatial_prob=0.5)
    changed = 0
    for it in range(30):
        assert torch.equal(plain(it)["image"], off(it)["image"])
        changed += int((plain(it)["image"] - on(it)["image"]).abs().flatten(1).amax(1).gt(1e-4).sum())
    # the augmentation draws from a generator of its own, so crops and flips stay and only the
    # augmented patches differ: each with p = 0.5 (120 patches, binomial sd 5.5)
    assert 40 <= changed <= 80


class NotSymmetric(torch.nn.Module):
    """Logits that depend on position (a ramp along each axis), so flips change the output."""

    def forward(self, x):
        ramps = [torch.linspace(-1, 1, n).reshape([-1 if i == d else 1 for i in range(3)])
                 for d, n in enumerate(x.shape[2:])]
        return x[:, :1] + 2 * ramps[0] - ramps[1] + 0.5 * ramps[2]


def test_tta_is_the_mean_of_the_flipped_back_predictions(tiny_config):
    cfg = tiny_config("eval.overlap=0")  # 16³ windows, no overlap: one window per 16³ block
    image = torch.randn(3, 32, 16, 16)
    model = NotSymmetric()
    plain = infer_volume(model, image, cfg, torch.device("cpu"))
    tta = infer_volume(model, image, cfg, torch.device("cpu"), tta=True)
    by_hand = torch.zeros_like(plain)
    for axes in TTA_FLIPS:
        dims = [a - 1 for a in axes]  # (C, D, H, W) axes of the unbatched volume
        flipped = image.flip(dims) if dims else image
        prob = infer_volume(model, flipped, cfg, torch.device("cpu"))
        by_hand += prob.flip(dims) if dims else prob
    by_hand /= len(TTA_FLIPS)
    assert len(set(TTA_FLIPS)) == 8 and TTA_FLIPS[0] == ()
    assert torch.allclose(tta, by_hand, atol=1e-6)
    assert not torch.allclose(tta, plain, atol=1e-3)


def test_tta_of_a_flip_equivariant_model_changes_nothing(tiny_config):
    cfg = tiny_config("eval.overlap=0")
    image = torch.randn(3, 16, 16, 16)

    def pointwise(x):
        return 3 * x[:, :1] - x[:, 1:2]

    plain = infer_volume(pointwise, image, cfg, torch.device("cpu"))
    assert torch.allclose(infer_volume(pointwise, image, cfg, torch.device("cpu"), tta=True), plain, atol=1e-6)
