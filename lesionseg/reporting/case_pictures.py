"""Pictures of the cases (`cases.png`): for each configuration its test (or out-of-fold) cases with the lowest,
median and highest DSC (per-case means over the seeds), one axial slice each through the case's largest
reference lesion — so a case is cut at the same slice whatever the configuration — the first image channel
named FLAIR (else the first) in grey, with the true positive, false negative and false positive voxels of the
configuration's first run in three colours of Okabe and Ito's palette (yellow, blue, vermillion), which stay
apart in the common colour-vision deficiencies (the tests check them under Machado et al.'s simulation).

A voxel is predicted as the evaluator scored it: probability ≥ `eval.threshold`, inside the brain mask with
`eval.restrict_to_mask`, predicted lesions below the run's component size removed (`scored_prediction`).
Volumes are read in the closest canonical (RAS) orientation, so the slice is axial with anterior up and
the patient's left on the left (the neurological convention). This module and `results` are the report's
only readers of files: it reads the few volumes it draws.
"""

from __future__ import annotations

import math
from functools import lru_cache
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from matplotlib.colors import to_rgba
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from scipy import ndimage

from lesionseg.config import validate
from lesionseg.errors import LesionsegError
from lesionseg.data.preprocessing import load_datalist
from lesionseg.evaluation.lesionwise import label_lesions, min_component_voxels, scored_prediction
from lesionseg.reporting.figures import _png
from lesionseg.reporting.stats import case_means
from lesionseg.runs import RunPaths, SweepPaths, read_json, saved_config

ROLES = ("lowest", "median", "highest")
COLOURS = {"true positive": "#F0E442", "false negative": "#0072B2", "false positive": "#D55E00"}


def chosen_cases(group: dict) -> list[tuple[str, str, float]]:
    """`(role, case, DSC)` for the lowest, median (the lower of two middles) and highest per-case mean DSC;
    a case is shown once when the group has fewer than three (ties: by case id)."""
    means = case_means([{c: v["dsc"] for c, v in run["cases"].items()} for run in group["runs"]])
    ranked = sorted((v, c) for c, v in means.items() if math.isfinite(v))
    if not ranked:
        return []
    picks = dict(zip(ROLES, (ranked[0], ranked[(len(ranked) - 1) // 2], ranked[-1])))
    seen, out = set(), []
    for role, (value, case) in picks.items():
        if case not in seen:
            seen.add(case)
            out.append((role, case, value))
    return out


def case_sources(run: dict) -> dict[str, dict]:
    """`{case: {"image", "label", "mask", "prediction", "cfg"}}` of a run's test cases — for a cross-validated
    configuration, each out-of-fold case from the fold run that tested it."""
    done = read_json(RunPaths(run["dir"]).done)
    folds = [SweepPaths(run["dir"].parent.parent).run(rid) for rid in done.get("folds", [])] or [run["dir"]]
    out = {}
    for run_dir in folds:
        paths = RunPaths(run_dir)
        if (saved := saved_config(run_dir)) is None:
            raise LesionsegError(f"{paths.config} is missing or unreadable")
        cfg = validate(saved, source=str(paths.config))
        names = [m.lower() for m in cfg.data.modalities]
        channel = names.index("flair") if "flair" in names else 0
        for entry in load_datalist(cfg)["test"]:
            out[entry["case"]] = {"image": entry["image"][channel], "label": entry["label"], "mask": entry.get("mask"),
                                  "prediction": paths.predictions / f"{entry['case']}.nii.gz", "cfg": cfg}
    return out


@lru_cache(maxsize=8)  # a case's image and label, read once for all configurations
def _volume(path: str) -> tuple[np.ndarray, float]:
    """The volume in the closest canonical orientation and its voxel volume in mL."""
    image = nib.as_closest_canonical(nib.load(path))
    return np.ascontiguousarray(image.dataobj, dtype=np.float32), float(np.prod(image.header.get_zooms()[:3])) / 1000.0


@lru_cache(maxsize=256)
def lesion_slice(label: str) -> int:
    """The axial slice through the centre of the largest 26-connected reference lesion (the middle slice
    of a case without lesion)."""
    ref = _volume(label)[0] > 0
    components, n = label_lesions(ref)
    if n == 0:
        return ref.shape[2] // 2
    largest = 1 + int(np.argmax(np.bincount(components.ravel())[1:]))
    return int(round(ndimage.center_of_mass(components == largest)[2]))


def _panel(source: dict, min_ml: float) -> tuple[np.ndarray, np.ndarray]:
    """The grey slice and its RGBA overlay (true positive, false negative, false positive), cropped to the brain."""
    cfg = source["cfg"]
    image, _ = _volume(str(source["image"]))
    ref = _volume(str(source["label"]))[0] > 0
    prob, voxel_ml = _volume(str(source["prediction"]))
    mask = _volume(str(source["mask"]))[0] > 0 if cfg.eval.restrict_to_mask and source["mask"] else None
    pred, _ = scored_prediction(torch.from_numpy(prob), torch.from_numpy(ref), cfg.eval.threshold,
                                min_component_voxels(min_ml, voxel_ml),
                                None if mask is None else torch.from_numpy(mask))
    z = lesion_slice(str(source["label"]))
    grey, ref, pred = image[:, :, z], ref[:, :, z], pred.numpy()[:, :, z]
    overlay = np.zeros((*grey.shape, 4))
    for (name, colour), voxels in zip(COLOURS.items(), (ref & pred, ref & ~pred, pred & ~ref)):
        overlay[voxels] = to_rgba(colour, 0.75)
    inside = np.nonzero(grey > 0)
    if inside[0].size:
        (x0, x1), (y0, y1) = [(max(int(a.min()) - 2, 0), int(a.max()) + 3) for a in inside]
        grey, overlay = grey[x0:x1, y0:y1], overlay[x0:x1, y0:y1]
    # array axes (x: right, y: anterior) → an image with anterior up and the patient's left on the left
    return np.flipud(grey.T), np.flipud(overlay.transpose(1, 0, 2))


def cases_figure(groups: list[dict], kind: str = "test") -> bytes | None:
    """`cases.png`: one row per configuration, its lowest, median and highest-DSC cases; None when no run has
    its predictions and images at hand (moved, or deleted to save space)."""
    rows = []
    for group in groups:
        run = group["runs"][0]
        try:
            sources = case_sources(run)
        except (LesionsegError, OSError):  # the images or predictions are gone: the report goes on without them
            return None
        rows.append((group["label"], [(role, case, dsc, sources.get(case)) for role, case, dsc in chosen_cases(group)],
                     run["summary"].get("postprocessing", {}).get("min_component_ml", 0.0)))
    if not any(picks for _, picks, _ in rows):
        return None
    fig = Figure(figsize=(3.2 * len(ROLES), 3.0 * len(rows) + 0.8), layout="constrained")
    axes = fig.subplots(len(rows), len(ROLES), squeeze=False)
    for (label, picks, min_ml), row in zip(rows, axes):
        for ax in row:
            ax.set_axis_off()
        for ax, (role, case, dsc, source) in zip(row, picks):
            if source is None or not Path(source["prediction"]).is_file():
                continue
            grey, overlay = _panel(source, min_ml)
            low, high = np.percentile(grey[grey > 0], [1, 99]) if (grey > 0).any() else (0, 1)
            ax.imshow(grey, cmap="gray", vmin=low, vmax=high, interpolation="nearest")
            ax.imshow(overlay, interpolation="nearest")
            ax.set_title(f"{label}\n{role} DSC: {case} ({dsc:.3f})", fontsize=8)
    handles = [Patch(color=c, label=name) for name, c in COLOURS.items()]
    fig.legend(handles=handles, loc="outside lower center", ncol=3, fontsize=9, frameon=False)
    fig.suptitle(f"The {kind} cases with the lowest, median and highest DSC", fontsize=10)
    _volume.cache_clear()  # read again by the next report: the files may have changed in between
    lesion_slice.cache_clear()
    return _png(fig)
