"""TensorBoard extras of a run: its row in the HParams dashboard, and validation image panels.

Both write into the run's own folder, so `tensorboard --logdir experiments/<sweep>` shows one HParams row
per run (hyperparameters beside the final test metrics) and each run's panels under IMAGES.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import hparams

from lesionseg.config import Config, flat_keys
from lesionseg.evaluation import registry
from lesionseg.evaluation.lesionwise import label_lesions

HPARAM_KEYS = ("seed", "loss.name", "loss.beta", "loss.alpha", "loss.gamma", "loss.pos_weight", "loss.batch",
               "train.lr", "train.iterations", "train.batch_size", "train.lr_schedule", "model.channels",
               "data.patch_size", "eval.threshold")
TEST_METRICS = registry.names(report=True)  # the report's per-case metrics
# Overlay colours: agreement, missed lesion, false alarm (distinguishable with red-green colour blindness).
COLOURS = {"both": (1.0, 0.84, 0.0), "reference only (missed)": (0.0, 0.9, 1.0),
           "prediction only (false positive)": (1.0, 0.0, 1.0)}


def hparam_values(cfg: Config) -> dict[str, float | str | bool]:
    """The hyperparameters shown in the dashboard: numbers, text and booleans only (lists as text)."""
    values = flat_keys(cfg.model_dump(mode="json"))
    out: dict[str, float | str | bool] = {}
    for key in HPARAM_KEYS:
        value = values[key]
        if key == "loss.alpha":
            value = cfg.loss.resolved_alpha
        out[key] = str(value) if isinstance(value, (list, dict)) or value is None else value
    return out


def log_hparams(run_dir: Path, cfg: Config, summary: dict, tuned: dict[str, dict] | None = None) -> dict[str, float]:
    """Write the run's hyperparameters and final test metrics (`test/<metric>`: per-case means, and
    `test/apr_pooled`, `test/ece_pooled`; with `tuned` — metric → the evaluation summary at the threshold
    tuned on validation for it — also `test/<metric>_tuned` and `threshold/<metric>`) into `run_dir`'s
    events; returns the metrics written."""
    per_case = summary.get("per_case", {})
    metrics = {f"test/{m}": float(per_case[m]["mean"]) for m in TEST_METRICS if m in per_case}
    metrics["test/apr_pooled"] = float(summary.get("pooled", {}).get("apr", math.nan))
    metrics["test/ece_pooled"] = float(summary.get("pooled", {}).get("ece", math.nan))
    for m, at_tuned in (tuned or {}).items():
        metrics[f"test/{m}_tuned"] = float(at_tuned["per_case"][m]["mean"])
        metrics[f"threshold/{m}"] = float(at_tuned["threshold"])
    experiment, start, end = hparams(hparam_values(cfg), metrics)
    with SummaryWriter(log_dir=str(run_dir)) as writer:
        for proto in (experiment, start, end):
            writer.file_writer.add_summary(proto)
        for tag, value in metrics.items():
            writer.add_scalar(tag, value, cfg.train.iterations)
    return metrics


def overlay_due(iteration: int, cfg: Config) -> bool:
    """Every `train.val_images_every`-th validation, and the last one; never when it is 0."""
    every = cfg.train.val_images_every
    if not every:
        return False
    return iteration == cfg.train.iterations or (iteration // cfg.train.val_every) % every == 0


def lesion_slice(ref: np.ndarray, pred: np.ndarray) -> int:
    """Index along the last (axial, RAS) axis through the largest reference lesion (26-connected), where
    it is widest; without a reference lesion, the slice with most predicted lesion; else the middle."""
    if ref.any():
        labels, n = label_lesions(ref)
        sizes = np.bincount(labels.ravel(), minlength=n + 1)[1:]
        largest = labels == 1 + int(np.argmax(sizes))
        return int(np.argmax(largest.sum(axis=(0, 1))))
    if pred.any():
        return int(np.argmax(pred.sum(axis=(0, 1))))
    return ref.shape[-1] // 2


def overlay_panel(image: np.ndarray, ref: np.ndarray, pred: np.ndarray, title: str) -> np.ndarray:
    """An RGB picture `(H, W, 3)` uint8: the axial slice of `lesion_slice` of `image` (D, H, W), plain on
    the left, with reference and prediction overlaid on the right (colours in `COLOURS`, with a legend)."""
    z = lesion_slice(ref, pred)
    plane, r, p = (a[:, :, z].T for a in (image, ref, pred))  # rows: anterior-posterior, columns: left-right
    brain = plane[plane != 0]
    low, high = np.percentile(brain, [1, 99]) if brain.size else (0.0, 1.0)
    layer = np.zeros((*plane.shape, 4))
    for mask, colour in zip((r & p, r & ~p, p & ~r), COLOURS.values()):
        layer[mask] = (*colour, 0.85)
    fig = Figure(figsize=(7.2, 4.2), dpi=100, layout="constrained")
    canvas = FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2)
    for ax in axes:
        ax.imshow(plane, cmap="gray", vmin=low, vmax=max(high, low + 1e-6), origin="lower",
                  interpolation="nearest")
        ax.set_axis_off()
    axes[1].imshow(layer, origin="lower", interpolation="nearest")
    counts = f"TP {int((r & p).sum())}, FN {int((r & ~p).sum())}, FP {int((p & ~r).sum())} voxels"
    axes[0].set_title(f"axial slice {z}", fontsize=10)
    axes[1].set_title(counts, fontsize=10)
    fig.suptitle(title, fontsize=11)
    fig.legend(handles=[Patch(color=c, label=k) for k, c in COLOURS.items()], loc="outside lower center",
               ncols=3, fontsize=9, frameon=False)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def log_validation_overlay(
    writer: SummaryWriter, item: dict, prob: torch.Tensor, cfg: Config, iteration: int
) -> None:
    """Log the overlay panel of one validation volume and its predicted probabilities `(1, D, H, W)`
    as `val/overlay` (tag shared across iterations: TensorBoard's slider steps through training)."""
    image = np.asarray(torch.as_tensor(item["image"])[0].detach().cpu().float())
    ref = np.asarray(torch.as_tensor(item["label"])[0].detach().cpu()) > 0.5
    pred = np.asarray(prob[0].detach().cpu()) >= cfg.eval.threshold
    title = f"{item.get('case', 'validation case')}, iteration {iteration}: largest reference lesion"
    writer.add_image("val/overlay", overlay_panel(image, ref, pred, title), iteration, dataformats="HWC")
