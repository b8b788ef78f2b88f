"""k-fold cross-validation: every training case tested once, by the model of the fold that left it out.

`data.folds: K` and `data.fold: i` (swept, `sweep: {data.fold: [0, …, K-1]}`): the training cases are dealt
into K folds (`assign_folds`, seeded by `data.fold_seed`, not by `seed`, so that repeats of a configuration
keep the folds), and the run of fold i trains on the other folds — its validation cases, for the best
checkpoint and the tuned thresholds, taken from them as usual — and is tested on fold i. The datalist's own
test cases are set aside for the ensemble of the K fold models (`lists["ensemble"]`).

Balanced by lesion load (a stratified deal, as scikit-learn's `StratifiedKFold` on load strata): the cases
are sorted by lesion volume and dealt in blocks of K, each block to the K folds in a seeded random order.
Every fold then holds one case of each load stratum, the fold sizes differ by at most one, and no fold gets
all the heavy or all the light cases — with lesion loads spread 40-fold between patients, an unbalanced
fold would test on one end of the range with a model trained on the other.
"""

from __future__ import annotations

import os

import nibabel as nib
import numpy as np

from lesionseg.config import Config
from lesionseg.data.layouts import Lists
from lesionseg.errors import LesionsegError


def assign_folds(loads: dict[str, float], k: int, seed: int) -> dict[str, int]:
    """Case id → fold in 0 … k-1, stratified by `loads` (lesion volume per case; ties broken by id)."""
    if not 2 <= k <= len(loads):
        raise LesionsegError(f"data.folds = {k}: needs 2 <= folds <= the {len(loads)} training case(s)")
    order = sorted(loads, key=lambda case: (loads[case], case))
    rng = np.random.default_rng(seed)
    folds = {}
    for start in range(0, len(order), k):
        block = order[start:start + k]
        # the last, shorter block goes to the folds that are smallest so far (a random subset of them)
        for case, fold in zip(block, rng.permutation(k)[:len(block)]):
            folds[case] = int(fold)
    return folds


def lesion_volumes_ml(entries: list[dict]) -> dict[str, float]:
    """Each case's lesion volume (mL) from its label file (a file read once per process while unchanged)."""
    return {entry["case"]: _label_volume_ml(entry["label"]) for entry in entries}


# (path, inode, size, mtime) → lesion volume (mL). Every run of a cross-validated sweep needs the same labels
# for its fold assignment — preflight checks each run, the merge reads each fold's lists — so a process reads
# each file once (a run's own process reads them once too); a rewritten file is read again.
_VOLUMES_ML: dict[tuple, float] = {}


def _label_volume_ml(path: str | os.PathLike) -> float:
    stat = os.stat(path)
    key = (os.fspath(path), stat.st_ino, stat.st_size, stat.st_mtime_ns)
    if key not in _VOLUMES_ML:
        img = nib.load(path)
        voxel_ml = float(np.prod(img.header.get_zooms()[:3])) / 1000.0
        _VOLUMES_ML[key] = float((np.asanyarray(img.dataobj) > 0).sum()) * voxel_ml
    return _VOLUMES_ML[key]


def apply_fold(lists: Lists, folds: int, fold: int, seed: int) -> Lists:
    """`lists` for the run of `fold`: training = the other folds' cases, test = this fold's, and the
    datalist's own test cases under `"ensemble"` (predicted by the ensemble of the fold models)."""
    assignment = assign_folds(lesion_volumes_ml(lists["training"]), folds, seed)
    return {"training": [e for e in lists["training"] if assignment[e["case"]] != fold],
            "test": [e for e in lists["training"] if assignment[e["case"]] == fold],
            "ensemble": list(lists["test"])}


def with_fold(lists: Lists, cfg: Config) -> Lists:
    """`lists` as the run of `cfg` sees them: unchanged without `data.folds`, else `apply_fold`."""
    if cfg.data.folds is None:
        return lists
    if cfg.data.fold is None:
        raise LesionsegError(f"data.folds = {cfg.data.folds} needs data.fold, the fold a run is tested on: sweep it, "
                             f"sweep: {{data.fold: {list(range(cfg.data.folds))}}}")
    return apply_fold(lists, cfg.data.folds, cfg.data.fold, cfg.data.fold_seed)
