import json

import numpy as np
import pytest
import torch

from lesionseg.data.batches import BatchSampler, Prefetched, Volume, batch_seed, crop_box
from lesionseg.data.cache import cache_device, train_batches, volume_dataset
from lesionseg.data.preprocessing import BrainIndicesd, BrainZScored, load_datalist, read_datalist, split_train_val
from lesionseg.errors import LesionsegError


def test_datalist_paths_are_absolute_and_complete(tiny_config):
    cfg = tiny_config()
    lists = load_datalist(cfg)
    assert len(lists["training"]) == 3 and len(lists["test"]) == 2
    entry = lists["training"][0]
    assert entry["case"] == "case_000" and len(entry["image"]) == 3
    assert all(p.startswith("/") for p in [*entry["image"], entry["label"], entry["mask"]])


def test_modality_subset_picks_the_right_files(tiny_config):
    entry = load_datalist(tiny_config("data.modalities=[t2,flair]"))["training"][0]
    assert entry["image"][0].endswith("_t2.nii.gz") and entry["image"][1].endswith("_flair.nii.gz")


def test_split_is_seeded_and_disjoint(tiny_config):
    cfg = tiny_config()
    cases = load_datalist(cfg)["training"]
    train, val = split_train_val(cases, cfg)
    assert len(val) == 1 and len(train) == 2
    assert {e["case"] for e in train}.isdisjoint(e["case"] for e in val)
    assert split_train_val(cases, cfg) == (train, val)
    with pytest.raises(LesionsegError, match="leave none to train on"):
        split_train_val(cases, tiny_config("data.val_cases=3"))


def test_batches_hold_lesion_weighted_patches(tiny_config):
    cfg = tiny_config("data.pos_fraction=1.0", "train.batch_size=2", "data.samples_per_volume=3")
    train, _ = split_train_val(load_datalist(cfg)["training"], cfg)
    batch = train_batches(train, cfg)(1)
    assert batch["image"].shape == (6, 3, 16, 16, 16) and batch["label"].shape == (6, 1, 16, 16, 16)
    assert batch["image"].dtype == batch["label"].dtype == torch.float32
    # pos_fraction 1: every patch is centred on a lesion voxel, so none is empty.
    assert (batch["label"].flatten(1).sum(1) > 0).all()
    assert set(torch.unique(batch["label"]).tolist()) <= {0.0, 1.0}


def test_batch_is_a_function_of_seed_and_iteration_only(tiny_config):
    cfg = tiny_config("train.batch_size=2")
    train, _ = split_train_val(load_datalist(cfg)["training"], cfg)
    sampler = train_batches(train, cfg)
    later = [sampler(it) for it in (7, 3, 7)]  # any order, any sampler object
    again = train_batches(train, cfg)(7)
    for key in ("image", "label"):
        assert torch.equal(later[0][key], later[2][key]) and torch.equal(later[0][key], again[key])
    assert not torch.equal(later[0]["image"], later[1]["image"])
    other_seed = train_batches(train, tiny_config("train.batch_size=2", "seed=1"))(7)
    assert not torch.equal(later[0]["image"], other_seed["image"])
    # Without the cache each case is preprocessed when drawn: the same batches, bit for bit.
    uncached = train_batches(train, tiny_config("train.batch_size=2", "data.cache=false"))(7)
    assert torch.equal(later[0]["image"], uncached["image"]) and torch.equal(later[0]["label"], uncached["label"])


@pytest.mark.parametrize("cache", ["memory", "disk"])
def test_prefetched_batches_are_the_samplers_in_any_order(tiny_config, cache):
    """`data.prefetch`: batch it + 1 is cut in a background thread while it trains; a resume (a jump), a
    repeated iteration and the last iteration still give the sampler's own batches, and none past the last."""
    cfg = tiny_config(f"data.cache={cache}", "data.rotate_degrees=20", "data.spatial_prob=0.7")
    sampler = train_batches(split_train_val(load_datalist(cfg)["training"], cfg)[0], cfg)
    cut = []

    def counted(it):
        cut.append(it)
        return sampler(it)

    with Prefetched(counted, last=9) as fetch:
        for it in (3, 4, 5, 8, 8, 9):
            batch, own = fetch(it), sampler(it)
            assert torch.equal(batch["image"], own["image"]) and torch.equal(batch["label"], own["label"])
    assert max(cut) == 9 and sorted(set(cut)) == [3, 4, 5, 6, 8, 9]


def test_cached_volumes_stay_on_the_cpu_for_cpu_training(tiny_config):
    cfg = tiny_config()
    train, _ = split_train_val(load_datalist(cfg)["training"], cfg)
    sampler = train_batches(train, cfg, "cpu")
    assert all(v.image.device.type == "cpu" and v.label.dtype == torch.uint8 for v in sampler.volumes)
    assert cache_device(cfg, 10**12, torch.device("cpu")) == torch.device("cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message given without CUDA")
def test_a_cuda_cache_without_cuda_is_refused(tiny_config):
    with pytest.raises(LesionsegError, match=r"data.cache_device: 'cuda' asked for, but PyTorch sees no CUDA"):
        cache_device(tiny_config("data.cache_device=cuda"), 1, torch.device("cpu"))


def test_volume_selection_is_without_replacement(tiny_config):
    cfg = tiny_config("train.batch_size=2", "data.samples_per_volume=1")
    train, _ = split_train_val(load_datalist(cfg)["training"], cfg)
    sampler = train_batches(train, cfg)
    marked = [Volume(torch.full_like(v.image, float(i + 1)), v.label, v.lesion, v.brain)
              for i, v in enumerate(sampler.volumes)]
    sampler.volumes = marked
    for it in range(20):
        image = sampler(it)["image"]
        # Each patch is one volume's constant value, up to the intensity scale (±10 %) and shift (±0.1).
        ids = {round(float(p.mean())) for p in image}
        assert len(ids) == 2


def _synthetic_volume(shape=(12, 12, 12)) -> Volume:
    """Lesion voxels in one corner block, brain voxels far from it (so a lesion-free patch was brain-centred)."""
    label = torch.zeros(1, *shape, dtype=torch.uint8)
    label[0, :2, :2, :2] = 1
    image = torch.arange(shape[0], dtype=torch.float32).reshape(1, -1, 1, 1).expand(2, *shape).contiguous()
    brain = torch.zeros(shape, dtype=torch.bool)
    brain[8:, 8:, 8:] = True
    return Volume(image, label, label[0].flatten().nonzero()[:, 0], brain.flatten().nonzero()[:, 0])


def test_lesion_centred_share_flips_and_intensity_changes_follow_the_settings():
    sampler = BatchSampler([_synthetic_volume()], seed=0, patch_size=(4, 4, 4), batch_size=1,
                           samples_per_volume=8, pos_fraction=0.3)
    batches = [sampler(it) for it in range(100)]  # 800 patches
    image = torch.cat([b["image"] for b in batches])
    label = torch.cat([b["label"] for b in batches])
    assert image.shape == (800, 2, 4, 4, 4) and label.shape == (800, 1, 4, 4, 4)
    assert set(torch.unique(label).tolist()) == {0.0, 1.0}
    lesion_share = float((label.flatten(1).sum(1) > 0).float().mean())
    assert lesion_share == pytest.approx(0.3, abs=0.05)  # binomial sd 0.016
    # Channel 0 increases along the first axis; a flipped patch decreases.
    steps = image[:, 0, 1:, 0, 0] - image[:, 0, :-1, 0, 0]
    flipped = (steps < 0).all(1)
    assert ((steps > 0).all(1) | flipped).all()
    assert float(flipped.float().mean()) == pytest.approx(0.5, abs=0.06)
    # One scale factor in [0.9, 1.1] and one offset in [-0.1, 0.1] per patch, the same for both channels.
    assert torch.equal(image[:, 0], image[:, 1])
    step = steps.abs().mean(1)
    unscaled = (step - 1.0).abs() < 1e-5  # not exactly 1: the shift rounds
    assert float(unscaled.float().mean()) == pytest.approx(0.5, abs=0.06)
    assert float(step.min()) >= 0.9 - 1e-6 and float(step.max()) <= 1.1 + 1e-6


@pytest.mark.parametrize(
    "centre, expected",  # shape (10, 12, 8), patch (4, 4, 4): the start moves inward where the patch would not fit
    [((5, 6, 4), (3, 4, 2)), ((0, 0, 0), (0, 0, 0)), ((9, 11, 7), (6, 8, 4)), ((1, 10, 2), (0, 8, 0))],
)
def test_crop_box_keeps_the_patch_inside_the_volume(centre, expected):
    flat = int(np.ravel_multi_index(centre, (10, 12, 8)))
    box = crop_box(flat, (10, 12, 8), (4, 4, 4))
    assert tuple(b.start for b in box) == expected and all(b.stop - b.start == 4 for b in box)


def test_crop_box_agrees_with_monai():
    from monai.transforms.utils import correct_crop_centers

    rng = np.random.default_rng(0)
    for _ in range(200):
        shape = tuple(int(n) for n in rng.integers(16, 40, 3))
        patch = tuple(int(n) for n in rng.choice([8, 12, 16], 3))
        centre = tuple(int(rng.integers(0, n)) for n in shape)
        monai_centre = correct_crop_centers(list(centre), patch, shape)
        box = crop_box(int(np.ravel_multi_index(centre, shape)), shape, patch)
        assert tuple(b.start for b in box) == tuple(int(c) - p // 2 for c, p in zip(monai_centre, patch))


def test_batch_seeds_differ_between_neighbours():
    seeds = {batch_seed(seed, it) for seed in range(5) for it in range(200)}
    assert len(seeds) == 1000 and all(0 <= s < 2**63 for s in seeds)
    assert batch_seed(-1, 0) != batch_seed(1, 0)


def test_volumes_are_z_scored_inside_the_brain(tiny_config):
    cfg = tiny_config()
    item = volume_dataset(load_datalist(cfg)["training"][:1], cfg, with_label=True)[0]
    image = item["image"]
    brain = image[0] != 0
    for c in range(3):
        values = image[c][brain]
        assert abs(float(values.mean())) < 1e-3 and float(values.std()) == pytest.approx(1.0, abs=1e-2)
    assert set(torch.unique(item["label"]).tolist()) <= {0.0, 1.0}


def test_missing_files_are_all_listed(tiny_config, tiny_dataset, tmp_path):
    raw = json.loads(tiny_dataset.read_text())
    raw["training"][0]["label"] = "labels/nope.nii.gz"
    raw["test"][0]["image"][1] = "images/gone_t1.nii.gz"
    bad = tmp_path / "datalist.json"
    bad.write_text(json.dumps(raw).replace('"images/', f'"{tiny_dataset.parent}/images/')
                   .replace('"labels/', f'"{tiny_dataset.parent}/labels/').replace('"masks/', f'"{tiny_dataset.parent}/masks/'))
    with pytest.raises(LesionsegError, match=r"(?s)case_000: missing file .*nope.nii.gz.*case_003: missing file .*gone_t1"):
        load_datalist(tiny_config(f"data.datalist={bad}"))


@pytest.mark.parametrize(
    "content, message",
    [
        ("{", "not readable JSON"),
        ('{"test": []}', "needs a 'training' list"),
        ('{"training": [{"image": ["a.nii.gz"]}]}', "1 image.* for 3 modalities"),
        ('{"training": [{"image": ["a", "b", "c"]}]}', "training cases need a 'label'"),
        ('{"modalities": ["flair"], "training": []}', r"asks for \['t1', 't2'\]"),
        ('{"training": [{"case": "x", "image": ["a", "b", "c"], "label": "l"}, '
         '{"case": "x", "image": ["a", "b", "c"], "label": "l"}]}', "duplicate case ids"),
    ],
)
def test_bad_datalists_say_what_is_wrong(tmp_path, content, message):
    path = tmp_path / "datalist.json"
    path.write_text(content)
    with pytest.raises(LesionsegError, match=message):
        read_datalist(path, ["flair", "t1", "t2"])


def test_z_score_inside_a_brain_mask_after_clipping():
    # shape: (1, 1, 1, 6); the mask leaves out the last voxel, which is set to 0.
    image = torch.tensor([1.0, 2.0, 3.0, 4.0, 100.0, 7.0]).reshape(1, 1, 1, 6)
    mask = torch.tensor([1, 1, 1, 1, 1, 0]).reshape(1, 1, 1, 6)
    out = BrainZScored()({"image": image, "mask": mask})
    assert "mask" not in out
    brain = np.array([1.0, 2.0, 3.0, 4.0, 100.0])
    assert np.allclose(out["image"].flatten()[:5].numpy(), (brain - brain.mean()) / brain.std(), atol=1e-6)
    assert out["image"].flatten()[5] == 0
    clipped = np.clip(brain, *np.percentile(brain, [0, 75]))  # 100 → 4
    out = BrainZScored((0.0, 75.0))({"image": image, "mask": mask})["image"].flatten()
    assert np.allclose(out[:5].numpy(), (clipped - clipped.mean()) / clipped.std(), atol=1e-6)
    # Without a mask, each channel's non-zero voxels are the brain and zeros stay zero (MONAI's nonzero mode).
    out = BrainZScored()({"image": torch.tensor([0.0, 2.0, 4.0]).reshape(1, 1, 1, 3)})["image"].flatten()
    assert out.tolist() == [0.0, -1.0, 1.0]


def test_patches_are_centred_inside_the_brain_mask():
    label = torch.zeros(1, 1, 1, 6)
    label[..., 1] = 1
    image = torch.ones(1, 1, 1, 6)
    mask = torch.tensor([0, 1, 1, 1, 0, 0]).reshape(1, 1, 1, 6)
    out = BrainIndicesd()({"image": image, "label": label, "mask": mask})
    assert out["label_fg_indices"].tolist() == [1] and out["label_bg_indices"].tolist() == [2, 3]
    out = BrainIndicesd()({"image": image, "label": label})  # no mask: every non-zero voxel
    assert out["label_bg_indices"].tolist() == [0, 2, 3, 4, 5]


def test_clip_percentiles_are_checked_before_anything_runs(tiny_config):
    cfg = tiny_config("data.clip_percentiles=[0.5,99.5]")
    item = volume_dataset(load_datalist(cfg)["training"][:1], cfg, with_label=False)[0]
    assert float(item["image"].abs().max()) < 10
    with pytest.raises(LesionsegError, match=r"data.clip_percentiles: \[99.0, 1.0\] must be \[low, high\]"):
        load_datalist(tiny_config("data.clip_percentiles=[99,1]"))
