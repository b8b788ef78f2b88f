import json

import numpy as np
import pytest
import torch

from lesionseg.data import (
    BrainIndicesd,
    BrainZScored,
    load_datalist,
    read_datalist,
    split_train_val,
    train_batches,
    volume_dataset,
)
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
    torch.manual_seed(0)
    cfg = tiny_config("data.pos_fraction=1.0", "train.batch_size=2", "data.samples_per_volume=3")
    train, _ = split_train_val(load_datalist(cfg)["training"], cfg)
    batch = next(train_batches(train, cfg))
    assert batch["image"].shape == (6, 3, 16, 16, 16) and batch["label"].shape == (6, 1, 16, 16, 16)
    assert batch["image"].dtype == torch.float32
    # pos_fraction 1: every patch is centred on a lesion voxel, so none is empty.
    assert (batch["label"].flatten(1).sum(1) > 0).all()


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
