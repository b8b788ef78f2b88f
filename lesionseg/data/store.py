"""The preprocessed store: each training case preprocessed once per dataset and setting, kept on disk, and
read by every run that needs it, for its training batches and as a validation volume (`data.cache: disk`, or
`auto` when the cohort does not fit in memory: `cache_mode` decides, from the cohort's size and what this
process may use, `lesionseg.memory`).

```
<data.store>/                    default <output_dir>/store/
    <key>/                       one case under one set of preprocessing settings
        image.npy                (C, D, H, W) float32 — the arrays of `cache.train_batches`' memory cache, as they
        label.npy                (1, D, H, W) uint8     are: batches from the store are those from memory, bit for bit
        lesion.npy brain.npy     flat indices of the patch centres (int32, or int64 past 2³¹ voxels)
        case.json                the case, its files, the settings, the arrays' shapes and the grid before padding
                                 (affine, box: validation reads the unpadded volume); written last
```

**The key** is a SHA-256 of `STORE_VERSION` (raised whenever the preprocessing code changes what it writes),
the settings that change the arrays (`KEYED_SETTINGS`: orientation, spacing, normalisation, clipping, the
patch size the volumes are padded to) and, per input file (the images in channel order, the label, the brain
mask), its absolute path, size and modification time. Not a hash of the contents: hashing every file at
every run start costs minutes on a cohort of a thousand patients, while a rewritten file changes its size or
time (`inputs.json` keeps the contents' SHA-256 for reproduction). A changed setting or file is a new key,
and so a new entry; the old one stays until removed by hand (`rm -r` of the folder is safe between runs).

**Writes are atomic and safe when processes race**: an entry is written into `.tmp-<key>-<pid>-<random>/`
and renamed to `<key>/` when complete; a process that loses the race to another finds `<key>/` there and
drops its copy. A killed build leaves only a `.tmp-*` folder, which no reader opens; the next build of that
key removes it once it is a day old (younger, it could be another node's build in progress). Entries are
read as memory maps: a batch reads its patches' pages, not whole volumes, so a run's memory does not grow
with the number of cases.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import mmap
import os
import shutil
import time
import uuid
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from monai.data import MetaTensor

from lesionseg.config import Config
from lesionseg.data.batches import Volume
from lesionseg.errors import LesionsegError
from lesionseg.files import disk_error
from lesionseg.memory import usable_memory

STORE_VERSION = 2  # 2: case.json keeps the grid before padding (validation reads the store)
KEYED_SETTINGS = ("orientation", "spacing", "normalize", "clip_percentiles", "patch_size")
ARRAYS = ("image", "label", "lesion", "brain")
STALE_SECONDS = 24 * 3600  # a temporary folder this old is a killed build's, not one in progress


def store_root(cfg: Config) -> Path:
    """`data.store`, or `<output_dir>/store`: where the entries of this config's cases live."""
    return Path(cfg.data.store) if cfg.data.store is not None else Path(cfg.output_dir) / "store"


def case_key(entry: dict, cfg: Config) -> str:
    """The store key of a training case under `cfg` (see the module docstring)."""
    files = [*entry["image"], entry["label"], entry.get("mask")]
    stated = []
    for path in files:
        if path is None:
            stated.append(None)
            continue
        stat = Path(path).stat()
        stated.append([str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns])
    settings = {name: getattr(cfg.data, name) for name in KEYED_SETTINGS}
    text = json.dumps({"version": STORE_VERSION, "settings": settings, "files": stated}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def build_case(entry: dict, cfg: Config, preprocess: Callable[[dict], tuple[Volume, dict]], root: Path) -> Path:
    """The store entry of `entry`, built with `preprocess` (the case → its `Volume` and its grid before padding,
    `preprocessing.Gridd`) unless it is there."""
    key = case_key(entry, cfg)
    final = root / key
    if (final / "case.json").is_file():
        return final
    for stale in root.glob(f".tmp-{key}-*"):  # left by a killed build; a day old, so no live builder's (any node)
        with contextlib.suppress(FileNotFoundError):  # another process may remove it first
            if time.time() - stale.stat().st_mtime > STALE_SECONDS:
                shutil.rmtree(stale, ignore_errors=True)
    volume, grid = preprocess(entry)
    tmp = root / f".tmp-{key}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        tmp.mkdir(parents=True)
        for name in ARRAYS:
            np.save(tmp / f"{name}.npy", getattr(volume, name).cpu().numpy())
        about = {"case": entry["case"], "files": {"image": entry["image"], "label": entry["label"],
                                                   "mask": entry.get("mask")},
                 "settings": {name: getattr(cfg.data, name) for name in KEYED_SETTINGS},
                 "version": STORE_VERSION,
                 "shapes": {name: list(getattr(volume, name).shape) for name in ARRAYS}, "grid": grid}
        (tmp / "case.json").write_text(json.dumps(about, indent=1, default=str), encoding="utf-8")
        try:
            tmp.rename(final)
        except OSError:
            if not (final / "case.json").is_file():  # not a race lost to another builder: a real failure
                raise
    except OSError as err:
        raise disk_error(tmp, err, action="write the preprocessed store entry") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def _mapped(path: Path) -> tuple[np.ndarray, mmap.mmap]:
    """A `.npy` file as a read-only array over a shared memory map of it, and the map. Shared and read-only:
    a private writable map would count against the process's data limit (`RLIMIT_DATA`) as if it were memory."""
    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        read_header = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
        shape, fortran, dtype = read_header[version](f)
        mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        array = np.frombuffer(mapped, dtype, count=math.prod(shape), offset=f.tell())
    return array.reshape(shape, order="F" if fortran else "C"), mapped


def _tensor(array: np.ndarray) -> torch.Tensor:
    """A tensor over a read-only array, without copying it; the batches only ever read it (they slice,
    resample and copy), which is what makes the sharing safe."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(array)


def open_case(path: Path) -> tuple[Volume, list[mmap.mmap], dict]:
    """A store entry as a `Volume` whose tensors are read-only memory maps of its files, the maps and its
    `case.json`. LesionsegError naming the entry when it is incomplete or damaged."""
    try:
        about = json.loads((path / "case.json").read_text(encoding="utf-8"))
        arrays, maps = {}, []
        for name in ARRAYS:
            arrays[name], mapped = _mapped(path / f"{name}.npy")
            maps.append(mapped)
    except (OSError, ValueError, KeyError) as err:
        raise LesionsegError(f"store entry {path} cannot be read ({err}); delete that folder and run again: "
                             "lesionseg builds it anew") from None
    shapes = {name: list(a.shape) for name, a in arrays.items()}
    if shapes != about.get("shapes"):
        raise LesionsegError(f"store entry {path} is damaged (arrays {shapes}, case.json says {about.get('shapes')}); "
                             "delete that folder and run again: lesionseg builds it anew")
    return Volume(**{name: _tensor(a) for name, a in arrays.items()}), maps, about


class StoredVolumes(Sequence):
    """The training volumes from the store, for `BatchSampler`: each entry opened once as memory maps. Drawing
    a volume gives the pages read from the one drawn before back to the kernel (`MADV_DONTNEED`; they stay in
    the page cache, and a later read maps them again), so the process holds about one volume's pages, however
    many cases there are, and its memory stays flat in the size of the cohort."""

    def __init__(self, paths: list[Path]) -> None:
        self.volumes, self.maps, _ = zip(*(open_case(p) for p in paths)) if paths else ((), (), ())
        self.last: int | None = None

    def __len__(self) -> int:
        return len(self.volumes)

    def __getitem__(self, index: int) -> Volume:
        if self.last is not None and self.last != index:
            for mapped in self.maps[self.last]:
                mapped.madvise(mmap.MADV_DONTNEED)
        self.last = index
        return self.volumes[index]


class StoredCases(Sequence):
    """Whole labelled volumes from the store, for validation: each entry opened when read and cropped to the
    volume before padding (`case.json`'s `grid`), `{"case", "image", "label"}` as `cache.volume_dataset` gives
    them from the files — the image a MetaTensor with the network grid's affine, the label float32 — equal bit
    for bit. The item is a copy: its maps are released with it, so memory holds one volume at a time."""

    def __init__(self, cases: list[str], paths: list[Path]) -> None:
        self.cases, self.paths = cases, paths

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict:
        volume, _, about = open_case(self.paths[index])
        box = (slice(None), *(slice(start, stop) for start, stop in about["grid"]["box"]))
        affine = torch.tensor(about["grid"]["affine"], dtype=torch.float64)
        return {"case": self.cases[index], "image": MetaTensor(volume.image[box].clone(), affine=affine),
                "label": volume.label[box].to(torch.float32)}


def estimated_bytes(entries: list[dict], cfg: Config) -> int:
    """The preprocessed training cases' size in memory, from the image headers: voxels after resampling to
    `data.spacing` and padding to the patch size, × (4 bytes per channel + the label + the patch-centre
    indices at most)."""
    total = 0
    for e in entries:
        header = nib.load(e["image"][0]).header
        shape, zooms = header.get_data_shape()[:3], header.get_zooms()[:3]
        voxels = math.prod(shape)
        if cfg.data.spacing is not None:
            voxels = math.prod(n * z for n, z in zip(shape, zooms)) / math.prod(cfg.data.spacing)
        total += int(max(voxels, math.prod(cfg.data.patch_size)) * (4 * len(e["image"]) + 1 + 4))
    return total


# `data.cache: auto` keeps the training cases in memory when they take at most this share of what the process
# may still use (the rest is for the network, the validation volumes and the batches).
MEMORY_SHARE = 0.5


def cache_mode(entries: list[dict], cfg: Config) -> tuple[str, str]:
    """(`memory`, `disk` or `off`, why): `data.cache`, or for `auto` memory when the cohort fits."""
    if cfg.data.cache != "auto":
        return cfg.data.cache, "data.cache"
    needed = estimated_bytes(entries, cfg)
    room, limit = usable_memory()
    fits = needed <= MEMORY_SHARE * room
    return ("memory" if fits else "disk"), (f"auto: {needed / 2**30:.2f} GiB of training cases "
                                            f"{'within' if fits else 'beyond'} half of {room / 2**30:.2f} GiB, "
                                            f"{limit}")


def cohort_text(entries: list[dict], cfg: Config) -> str:
    """What `lesionseg check` says of the training cases: their size preprocessed, and where training keeps them."""
    mode, why = cache_mode(entries, cfg)
    where = {"memory": "in memory", "disk": f"in the preprocessed store {store_root(cfg)}",
             "off": "nowhere (preprocessed at every draw)"}[mode]
    return (f"{len(entries)} training case(s), ≈ {estimated_bytes(entries, cfg) / 2**30:.2f} GiB preprocessed (from "
            f"the headers; as much again on disk in the store); training keeps them {where} ({why})")
