"""Datalists, MONAI transforms, cached datasets and loaders.

A datalist is the Medical Segmentation Decathlon JSON that MONAI users know:
`{"modalities": [...], "training": [{"case": ..., "image": [...], "label": ...}, ...], "test": [...]}`,
paths relative to the datalist file. `modalities` (optional) names the image channels in order, so a
config may train on a subset (`data.modalities=[flair]`); without it, the entries must hold exactly the
configured modalities, in that order.

Preprocessing is deterministic and cached once per run (load, channel-first, reorient, optional
resampling, z-score inside the brain, lesion/brain voxel indices); only patch sampling and augmentation
run per step.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Iterator

import numpy as np
from monai.data import CacheDataset, DataLoader, Dataset, list_data_collate
from monai.transforms import (
    Compose,
    EnsureChannelFirstd,
    EnsureTyped,
    FgBgToIndicesd,
    LoadImaged,
    NormalizeIntensityd,
    Orientationd,
    RandCropByPosNegLabeld,
    RandFlipd,
    RandScaleIntensityd,
    RandShiftIntensityd,
    SelectItemsd,
    Spacingd,
    SpatialPadd,
)

from lesionseg.config import Config
from lesionseg.errors import LesionsegError

NIFTI_SUFFIXES = (".nii.gz", ".nii")


def case_id_from_path(path: str | Path) -> str:
    name = Path(path).name
    for suffix in NIFTI_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return Path(name).stem


def read_datalist(path: str | Path, modalities: list[str]) -> dict[str, list[dict[str, Any]]]:
    """Read a datalist and return `{"training": [...], "test": [...]}` with absolute paths.

    Each entry becomes `{"case": id, "image": [one path per configured modality], "label": path | None,
    "mask": path | None}`. Missing files are not checked here (see `missing_files`).
    """
    path = Path(path)
    if not path.is_file():
        raise LesionsegError(f"datalist not found: {path} (set data.datalist, or run `make demo-data`)")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise LesionsegError(f"datalist {path} is not readable JSON: {err}") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("training"), list):
        raise LesionsegError(f"datalist {path} needs a 'training' list of cases (Decathlon format)")
    listed = raw.get("modalities")
    if listed is not None:
        unknown = [m for m in modalities if m not in listed]
        if unknown:
            raise LesionsegError(
                f"data.modalities asks for {unknown}, which datalist {path} does not have (it has {listed})"
            )
        channels = [listed.index(m) for m in modalities]
    else:
        channels = list(range(len(modalities)))
    root = path.parent
    out: dict[str, list[dict[str, Any]]] = {}
    for split in ("training", "test"):
        entries = []
        for i, item in enumerate(raw.get(split) or []):
            where = f"datalist {path}, {split}[{i}]"
            if not isinstance(item, dict) or "image" not in item:
                raise LesionsegError(f"{where}: each case needs an 'image' (a path or a list of paths)")
            images = [item["image"]] if isinstance(item["image"], str) else list(item["image"])
            expected = len(listed) if listed is not None else len(modalities)
            if len(images) != expected:
                raise LesionsegError(
                    f"{where}: {len(images)} image(s) for {expected} modalities ({listed or modalities})"
                )
            if split == "training" and not item.get("label"):
                raise LesionsegError(f"{where}: training cases need a 'label'")
            entries.append(
                {
                    "case": str(item.get("case") or case_id_from_path(images[0])),
                    "image": [str(root / images[c]) for c in channels],
                    "label": str(root / item["label"]) if item.get("label") else None,
                    "mask": str(root / item["mask"]) if item.get("mask") else None,
                }
            )
        out[split] = entries
    ids = [e["case"] for split in out.values() for e in split]
    duplicates = sorted({c for c in ids if ids.count(c) > 1})
    if duplicates:
        raise LesionsegError(f"datalist {path}: duplicate case ids {duplicates}; give each case a unique 'case'")
    return out


def missing_files(entries: list[dict[str, Any]]) -> list[str]:
    """Every file the entries name that does not exist, as 'case: path' lines."""
    problems = []
    for e in entries:
        for p in [*e["image"], e.get("label"), e.get("mask")]:
            if p is not None and not Path(p).is_file():
                problems.append(f"{e['case']}: missing file {p}")
    return problems


def load_datalist(cfg: Config) -> dict[str, list[dict[str, Any]]]:
    """The configured datalist, with every referenced file checked to exist (all problems at once)."""
    if cfg.data.datalist is None:
        raise LesionsegError("data.datalist is not set: point it at a datalist JSON (see README, 'Data')")
    lists = read_datalist(cfg.data.datalist, cfg.data.modalities)
    if not lists["training"]:
        raise LesionsegError(f"datalist {cfg.data.datalist} has no training cases")
    problems = missing_files(lists["training"] + lists["test"])
    if problems:
        raise LesionsegError(f"datalist {cfg.data.datalist} names files that do not exist:\n  " + "\n  ".join(problems))
    return lists


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


def preprocessing(cfg: Config, with_label: bool, with_indices: bool = False) -> Compose:
    """Deterministic steps: load channels → reorient → (resample) → z-score in brain → patch indices."""
    keys = ["image", "label"] if with_label else ["image"]
    steps: list = [
        LoadImaged(keys=keys, image_only=True),
        EnsureChannelFirstd(keys=keys),
        Orientationd(keys=keys, axcodes=cfg.data.orientation, labels=None),
    ]
    if cfg.data.spacing is not None:
        modes = ["bilinear", "nearest"] if with_label else ["bilinear"]
        steps.append(Spacingd(keys=keys, pixdim=cfg.data.spacing, mode=modes))
    if with_indices:
        # Pad first so that every patch fits, then index lesion voxels and brain (non-zero) voxels on the
        # raw intensities: after z-scoring, brain voxels may be negative and could not be told from air.
        steps += [
            SpatialPadd(keys=keys, spatial_size=cfg.data.patch_size),
            FgBgToIndicesd(keys="label", image_key="image", image_threshold=0.0),
        ]
    steps += [
        NormalizeIntensityd(keys="image", nonzero=True, channel_wise=True),
        EnsureTyped(keys=keys, dtype=np.float32, track_meta=not with_indices),
    ]
    return Compose(steps)


def augmentation(cfg: Config) -> Compose:
    """Random steps run every iteration: lesion-weighted patches, flips, small intensity changes."""
    keys = ["image", "label"]
    pos = cfg.data.pos_fraction
    return Compose(
        [
            RandCropByPosNegLabeld(
                keys=keys,
                label_key="label",
                spatial_size=cfg.data.patch_size,
                pos=pos,
                neg=1.0 - pos,
                num_samples=cfg.data.samples_per_volume,
                fg_indices_key="label_fg_indices",
                bg_indices_key="label_bg_indices",
            ),
            *(RandFlipd(keys=keys, prob=0.5, spatial_axis=axis) for axis in range(3)),
            RandScaleIntensityd(keys="image", factors=0.1, prob=0.5),
            RandShiftIntensityd(keys="image", offsets=0.1, prob=0.5),
            SelectItemsd(keys=keys),
        ]
    )


def _dataset(entries: list[dict], transform: Compose, cache: bool) -> Dataset:
    if cache:
        # One caching thread: with several, LoadImaged now and then stacked a multi-file case into one
        # channel (seen with MONAI 1.6.1, 1 case in ~75), a race we cannot afford in training data.
        return CacheDataset(entries, transform=transform, num_workers=1, progress=False)
    return Dataset(entries, transform=transform)


def train_batches(entries: list[dict], cfg: Config, pin_memory: bool = False) -> Iterator[dict]:
    """An endless stream of training batches of `batch_size × samples_per_volume` patches."""
    pre = preprocessing(cfg, with_label=True, with_indices=True)
    data = [{"image": e["image"], "label": e["label"]} for e in entries]
    dataset = _dataset(data, Compose([*pre.transforms, *augmentation(cfg).transforms]), cfg.data.cache)
    loader = DataLoader(
        dataset,
        batch_size=min(cfg.train.batch_size, len(dataset)),
        shuffle=True,
        drop_last=True,
        num_workers=cfg.data.num_workers,
        collate_fn=list_data_collate,
        pin_memory=pin_memory,
        persistent_workers=cfg.data.num_workers > 0,
    )
    while True:
        yield from loader


def volume_dataset(entries: list[dict], cfg: Config, with_label: bool) -> Dataset:
    """Whole preprocessed volumes (validation, prediction), each with its case id."""
    data = [
        {"case": e["case"], "image": e["image"], **({"label": e["label"]} if with_label else {})} for e in entries
    ]
    return _dataset(data, preprocessing(cfg, with_label=with_label), cfg.data.cache)
