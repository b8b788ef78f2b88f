"""Where the preprocessed cases are kept (`data.cache`): the training volumes, from which `batches.py` cuts
every step's patches, and the whole validation volumes.

`memory`: each case preprocessed once per run and held as tensors on the cache device (`data.cache_device`);
`disk`: the preprocessed store (`store.py`), built once per dataset and setting and read as memory maps;
`off`: preprocessed again whenever it is read. `auto` chooses memory or disk from the cohort's size
(`store.cache_mode`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from monai.data import CacheDataset, Dataset
from monai.transforms import Compose
from tqdm import tqdm

from lesionseg.config import Config
from lesionseg.data import store
from lesionseg.data.batches import BatchSampler, Volume
from lesionseg.data.preprocessing import preprocessing
from lesionseg.devices import resolve_device


def _mask(entry: dict) -> dict:
    """`{"mask": path}` for a case with a brain mask, else nothing (the transforms skip a missing mask)."""
    return {"mask": entry["mask"]} if entry.get("mask") else {}


def _labelled(entry: dict) -> dict:
    """A training case as the preprocessing takes it: its images, label and brain mask (where it has one)."""
    return {"image": entry["image"], "label": entry["label"], **_mask(entry)}


def _dataset(entries: list[dict], transform: Compose, cache: bool) -> Dataset:
    if cache:
        # One caching thread: with several, LoadImaged now and then stacked a multi-file case into one
        # channel (seen with MONAI 1.6.1, 1 case in ~75), a race we cannot afford in training data.
        return CacheDataset(entries, transform=transform, num_workers=1, progress=False)
    return Dataset(entries, transform=transform)


# The cache goes on the GPU when it takes at most this share of the GPU's free memory (the rest is for the
# network's activations); otherwise it stays in host memory and batches are copied from pinned memory.
GPU_CACHE_SHARE = 0.5


def _volume(item: dict) -> Volume:
    """A preprocessed training case (`preprocessing(..., with_indices=True)` output) as CPU tensors."""
    image = torch.as_tensor(item["image"], dtype=torch.float32).contiguous()
    label = (torch.as_tensor(item["label"]) > 0.5).to(torch.uint8).contiguous()
    index_dtype = torch.int32 if image[0].numel() < 2**31 else torch.int64
    lesion, brain = (torch.as_tensor(item[k]).to(index_dtype) for k in ("label_fg_indices", "label_bg_indices"))
    return Volume(image=image, label=label, lesion=lesion, brain=brain)


class _OnDemandVolumes(Sequence):
    """`data.cache: off`: each case is preprocessed again whenever a batch draws it (memory stays flat)."""

    def __init__(self, entries: list[dict], transform: Compose) -> None:
        self.entries, self.transform = entries, transform

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, index: int) -> Volume:
        return _volume(self.transform(self.entries[index]))


def cache_device(cfg: Config, nbytes: int, device: torch.device) -> torch.device:
    """Where the training volumes live: `data.cache_device`, or for `auto` the training device when the
    cache takes at most `GPU_CACHE_SHARE` of its free memory, else the CPU."""
    setting = cfg.data.cache_device
    if setting != "auto":
        return resolve_device(setting, "data.cache_device")
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        if nbytes <= GPU_CACHE_SHARE * free:
            return device
    return torch.device("cpu")


def build_store(entries: list[dict], cfg: Config, progress: bool = False) -> list[Path]:
    """The store entries of `entries` under `cfg` (`store`), each built unless it is there already."""
    pre = preprocessing(cfg, with_label=True, with_indices=True)
    root = store.store_root(cfg)

    def preprocessed(entry: dict) -> tuple[Volume, dict]:
        item = pre(_labelled(entry))
        return _volume(item), item["grid"]

    return [store.build_case(e, cfg, preprocessed, root)
            for e in tqdm(entries, desc="store", unit="case", disable=not progress)]


def train_batches(entries: list[dict], cfg: Config, device: torch.device | str = "cpu",
                  say: Callable[[str], None] | None = None, cache: tuple[str, str] | None = None) -> BatchSampler:
    """The training batches: `sampler(it)` is batch `it` (see `batches.py`), on `device`.

    `data.cache` (`cache`: the run's `store.cache_mode` decision for its training and validation cases together,
    default: made here for `entries`): `memory` — every case preprocessed once here and its tensors moved to the
    cache device; `disk` — every case from the preprocessed store (`store`, built here where missing), read
    as memory maps; `off` — cases preprocessed when a batch draws them. The same batches, bit for bit, from
    each. `say`: where the choice and its reason are told (the run's log).
    """
    device = torch.device(device)
    pre = preprocessing(cfg, with_label=True, with_indices=True)
    data = [_labelled(e) for e in entries]
    mode, why = store.cache_mode(entries, cfg) if cache is None else cache
    if mode == "memory":
        volumes: Sequence[Volume] = [_volume(pre(item)) for item in data]
        where = cache_device(cfg, sum(v.nbytes for v in volumes), device)
        volumes = [Volume(v.image.to(where), v.label.to(where), v.lesion, v.brain) for v in volumes]
        told = f"in memory ({where})"
    elif mode == "disk":
        volumes = store.StoredVolumes(build_store(entries, cfg))
        told = f"from the preprocessed store {store.store_root(cfg)} (memory maps)"
    else:
        volumes = _OnDemandVolumes(data, pre)
        told = "preprocessed at every draw"
    if say is not None:
        say(f"training cases {told} ({why})")
    return BatchSampler(
        volumes,
        seed=cfg.seed,
        patch_size=cfg.data.patch_size,
        batch_size=cfg.train.batch_size,
        samples_per_volume=cfg.data.samples_per_volume,
        pos_fraction=cfg.data.pos_fraction,
        rotate_degrees=cfg.data.rotate_degrees,
        scale_fraction=cfg.data.scale_fraction,
        spatial_prob=cfg.data.spatial_prob,
        intensity_scale=cfg.data.intensity_scale,
        intensity_shift=cfg.data.intensity_shift,
        device=device,
    )


def volume_dataset(entries: list[dict], cfg: Config, with_label: bool, cache: tuple[str, str] | None = None) -> Dataset:
    """Whole preprocessed volumes (validation), each with its case id, kept as the training cases are (`cache`:
    the run's `store.cache_mode` decision, default: made here for `entries`): in memory once read (`memory`),
    read from the preprocessed store (`disk`, labelled volumes: the entries training uses, built where missing,
    cropped to the unpadded volume — the same arrays bit for bit), or preprocessed at every reading."""
    mode = (store.cache_mode(entries, cfg) if cache is None else cache)[0]
    if with_label and mode == "disk":
        return store.StoredCases([e["case"] for e in entries], build_store(entries, cfg))
    data = [
        {"case": e["case"], "image": e["image"], **({"label": e["label"]} if with_label else {}), **_mask(e)}
        for e in entries
    ]
    return _dataset(data, preprocessing(cfg, with_label=with_label), mode == "memory")
