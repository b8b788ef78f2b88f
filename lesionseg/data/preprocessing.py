"""Datalists and MONAI preprocessing.

A dataset is a Medical Segmentation Decathlon datalist JSON, an nnU-Net raw folder or a folder of patient
folders (`layouts.py`), read into `{"training": [...], "test": [...]}` entries with one image per configured
modality (`data.modalities`, a subset of the dataset's channels in any order), a label and an optional
brain mask. `checks.py` checks its files.

Preprocessing is deterministic (load, channel-first, reorient, optional resampling, pad to the patch size,
lesion/brain voxel indices, z-score inside the brain); `cache.py` decides where its results are kept
(`data.cache`) and `batches.py` cuts and augments the patches of every step from them in torch.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import (
    Compose,
    EnsureChannelFirstd,
    EnsureTyped,
    LoadImaged,
    Orientationd,
    Spacingd,
    SpatialPad,
    SpatialPadd,
)
from monai.transforms.utils import map_binary_to_indices

from lesionseg.config import Config
from lesionseg.data.checks import check_data_settings, inspect_dataset, raise_problems, require_datalist
from lesionseg.data.folds import with_fold
from lesionseg.data.layouts import Lists, duplicate_problems, read_layout
from lesionseg.errors import LesionsegError


def read_datalist(path: str | Path, modalities: list[str]) -> Lists:
    """Read a dataset in any layout (see `layouts`) as `{"training": [...], "test": [...]}`, absolute paths.

    Each entry is `{"case": id, "image": [one path per configured modality], "label": path | None,
    "mask": path | None}`. Duplicate case ids are an error; files are not opened (see `checks`).
    """
    lists, _ = read_layout(path, modalities)
    problems = duplicate_problems(lists)
    if problems:
        raise LesionsegError(f"datalist {path}:\n  " + "\n  ".join(problems))
    return lists


def load_datalist(cfg: Config) -> Lists:
    """The configured dataset, every file checked to exist and its header to fit (all problems at once);
    with `data.folds`, as the run of `data.fold` sees it (`folds.with_fold`).

    Only headers are read, so this is cheap enough to run in every command; `checks.check_dataset` reads
    the voxels too (NaN, empty or non-binary labels, truncated files).
    """
    require_datalist(cfg)
    lists, report = inspect_dataset(cfg.data.datalist, cfg.data.modalities, read_voxels=False,
                                    test_cases=cfg.data.test_cases)
    raise_problems(report, "names files that do not exist or do not fit")
    return with_fold(lists, cfg)  # cross-validation: this run's fold is its test list


def split_train_val(entries: list[dict[str, Any]], cfg: Config) -> tuple[list[dict], list[dict]]:
    """A seeded shuffle, then the first `val_cases` (or `val_fraction` of the cases) for validation."""
    order = np.random.default_rng(cfg.seed).permutation(len(entries))
    if cfg.data.val_cases is not None:
        n_val = cfg.data.val_cases
    else:
        n_val = math.ceil(len(entries) * cfg.data.val_fraction) if cfg.data.val_fraction > 0 else 0
    if n_val >= len(entries):
        raise LesionsegError(
            f"{len(entries)} training case(s) leave none to train on after {n_val} for validation; "
            "lower data.val_cases / data.val_fraction or add cases"
        )
    val = [entries[i] for i in order[:n_val]]
    train = [entries[i] for i in order[n_val:]]
    return train, val


class BrainIndicesd:
    """Patch centres: lesion voxels, and brain voxels without lesion (`label_fg_indices`, `label_bg_indices`).

    The brain is the case's mask where it has one, else the voxels non-zero in some channel. Run on the raw
    intensities: after z-scoring, brain voxels may be negative and could not be told from air.
    """

    def __call__(self, data: dict) -> dict:
        d = dict(data)
        brain = d["mask"] if "mask" in d else d["image"]
        d["label_fg_indices"], d["label_bg_indices"] = map_binary_to_indices(d["label"], brain, 0.0)
        return d


class Gridd:
    """Keep the volume's grid before it is padded to the patch size, `d["grid"]`: its affine and the box it
    will take in the padded arrays (`[[start, stop]]` per axis, MONAI's symmetric padding), so that the store
    can give validation the unpadded volume (`store.StoredCases`)."""

    def __init__(self, patch_size: list[int]) -> None:
        self.pad = SpatialPad(patch_size)

    def __call__(self, data: dict) -> dict:
        image = data["image"]
        widths = self.pad.compute_pad_width(image.shape[1:])[1:]
        box = [[before, before + n] for (before, _), n in zip(widths, image.shape[1:])]
        return {**data, "grid": {"affine": image.affine.tolist(), "box": box}}


class BrainZScored:
    """Normalise each image channel over the brain, optionally after clipping it to percentiles of the brain.

    `zscore`: (x − mean) / SD over the brain (MONAI's `NormalizeIntensity(nonzero=True, channel_wise=True)`;
    a channel of one value is only centred). `median`: x / median − 1 over the brain, the brain's median at
    0 and a lesion 30 % brighter than it at 0.3: MR intensities have an arbitrary *scale*, and a ratio to a
    robust level does not move with the lesion load or atrophy as the SD does (see bench/RESULTS.md).
    The brain is the case's mask where it has one (voxels outside it become 0, as in nnU-Net), else the
    channel's non-zero voxels (which stay 0). The mask is dropped afterwards; nothing downstream needs it.
    """

    def __init__(self, clip_percentiles: tuple[float, float] | None = None, method: str = "zscore") -> None:
        self.clip_percentiles = clip_percentiles
        self.method = method

    def __call__(self, data: dict) -> dict:
        d = dict(data)
        mask = d.pop("mask", None)
        out = d["image"].float().clone()  # a MetaTensor keeps its metadata and transform history
        array = out.as_tensor() if isinstance(out, MetaTensor) else out  # (C, D, H, W), shares storage
        for channel in array:
            region = mask[0] > 0 if mask is not None else channel != 0
            values = channel[region].double()
            if values.numel() == 0:
                continue
            if self.clip_percentiles is not None:
                low, high = np.percentile(values.numpy(), self.clip_percentiles)
                values = values.clamp(float(low), float(high))
            if self.method == "median":
                median = float(np.median(values.numpy()))
                channel[region] = (values / (median if median != 0 else 1.0) - 1.0).to(channel.dtype)
            else:
                std = values.std(correction=0)
                channel[region] = ((values - values.mean()) / (std if std > 0 else 1.0)).to(channel.dtype)
            if mask is not None:
                channel[~region] = 0.0
        d["image"] = out
        return d


def preprocessing(cfg: Config, with_label: bool, with_indices: bool = False) -> Compose:
    """Deterministic steps: load channels → reorient → (resample) → patch indices → (clip,) z-score in brain.

    The input is `{"image": [paths], "label": path, "mask": path}`; the brain mask is optional per case
    (the steps skip it where a case has none) and is dropped after normalisation.
    """
    keys = ["image", "label"] if with_label else ["image"]
    loaded = [*keys, "mask"]
    steps: list = [
        LoadImaged(keys=loaded, image_only=True, allow_missing_keys=True),
        EnsureChannelFirstd(keys=loaded, allow_missing_keys=True),
        Orientationd(keys=loaded, axcodes=cfg.data.orientation, labels=None, allow_missing_keys=True),
    ]
    if cfg.data.spacing is not None:
        modes = ["bilinear" if k == "image" else "nearest" for k in loaded]
        steps.append(Spacingd(keys=loaded, pixdim=cfg.data.spacing, mode=modes, allow_missing_keys=True))
    if with_indices:
        # Pad first so that every patch fits.
        steps += [Gridd(cfg.data.patch_size),
                  SpatialPadd(keys=loaded, spatial_size=cfg.data.patch_size, allow_missing_keys=True), BrainIndicesd()]
    check_data_settings(cfg)
    clip = cfg.data.clip_percentiles
    steps += [
        BrainZScored(None if clip is None else (clip[0], clip[1]), cfg.data.normalize),
        EnsureTyped(keys=keys, dtype=np.float32, track_meta=not with_indices),
    ]
    return Compose(steps)
