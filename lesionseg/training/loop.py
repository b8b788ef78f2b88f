"""One training run: Adam on lesion-weighted patches, sliding-window validation, checkpoints, TensorBoard.

The loop counts iterations, not epochs (a lesion dataset has few, large volumes). Batch `it` is a pure
function of (seed, it) (`batches.py`), so a resumed run trains on the same batches as one left alone. The
step never waits on the host: the loss is accumulated on the device and read back only every
`train.log_every` iterations (fp16's gradient scaler is the exception: it checks for overflow each step).
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from lesionseg.config import Config
from lesionseg.data import store
from lesionseg.data.batches import Prefetched
from lesionseg.data.cache import train_batches, volume_dataset
from lesionseg.data.preprocessing import load_datalist, split_train_val
from lesionseg.devices import amp_dtype, autocast, resolve_device
from lesionseg.errors import LesionsegError
from lesionseg.evaluation import collapse, registry
from lesionseg.evaluation.lesionwise import scored_prediction
from lesionseg.evaluation.metrics import overlap_metrics
from lesionseg.files import write_atomic, write_json, write_text
from lesionseg.inference import infer_volume
from lesionseg.model import LesionUNet, build_model
from lesionseg.runs import RunPaths, read_checkpoint, record_split
from lesionseg.training.checkpoint import StopRequest, rng_state, save_checkpoint, set_rng_state
from lesionseg.training.losses import CrossEntropyTerm, training_loss
from lesionseg.training.offset import SHARE_BATCHES, lesion_share, starting_prior
from lesionseg.training.tensorboard_log import log_validation_overlay, overlay_due


def seed_everything(cfg: Config, device: torch.device) -> None:
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    if cfg.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=device.type == "cuda")
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
    else:
        torch.backends.cudnn.benchmark = device.type == "cuda"  # fixed patch size: let cuDNN pick kernels


def train_step(model: torch.nn.Module, image: torch.Tensor, label: torch.Tensor, loss_fn, optimizer,
               scaler: torch.amp.GradScaler, dtype: torch.dtype | None) -> torch.Tensor:
    """One optimiser step on one batch; the loss comes back detached, on the device (nothing is read back)."""
    with autocast(image.device, dtype):
        logits = model(image)  # a list of maps, finest first, under `model.deep_supervision`
    loss = loss_fn([x.float() for x in logits] if isinstance(logits, list) else logits.float(), label)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    return loss.detach()


def to_memory_format(batch: dict[str, torch.Tensor], channels_last: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The batch's image and label, in channels_last_3d layout when `train.channels_last` asks for it."""
    fmt = torch.channels_last_3d if channels_last else torch.contiguous_format
    return batch["image"].contiguous(memory_format=fmt), batch["label"].contiguous(memory_format=fmt)


def validate(model: torch.nn.Module, dataset, cfg: Config, device: torch.device) -> tuple[dict, torch.Tensor]:
    """Mean DSC, F2, sensitivity and precision over the validation volumes at the configured threshold,
    predicted over reference lesion voxels (`volume_ratio`) and the flags of a collapsed run (`collapse`,
    `lesionseg.evaluation.collapse`), and the first volume's probabilities (for the TensorBoard overlay,
    so it is not inferred twice). The probability SD is taken over the brain: the voxels that the
    preprocessing left non-zero in some channel (it sets everything outside the brain to 0)."""
    model.eval()
    scores, volumes, first = [], [], None
    for item in dataset:
        image = torch.as_tensor(item["image"]).to(device)  # moved once: for the network and for the brain
        prob = infer_volume(model, image, cfg, device)
        first = prob if first is None else first
        _, counts = scored_prediction(prob, item["label"].to(device) > 0.5, cfg.eval.threshold)
        scores.append(overlap_metrics(counts))
        brain = (image != 0).any(dim=0, keepdim=True)
        tp, fp, fn, _ = counts.tolist()
        volumes.append((tp + fp, tp + fn, collapse.probability_sd(prob, brain)))
    model.train()
    means = {key: float(np.nanmean([s[key] for s in scores])) for key in registry.names(curve=True)}
    pred, ref, spread = zip(*volumes)
    flags = collapse.collapse_flags(pred, ref, spread, cfg.eval.threshold)
    return {**means, "volume_ratio": collapse.volume_ratio(pred, ref), "collapse": flags}, first


@dataclass
class _Parts:
    """What one training run steps: the network (and its compiled wrapper), loss, optimiser, schedule,
    gradient scaler and autocast dtype."""

    model: torch.nn.Module
    step_model: torch.nn.Module
    loss_fn: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    dtype: torch.dtype | None
    ce_term: CrossEntropyTerm | None = None  # told the iteration before each step (its warm-up)
    prior: dict | None = None  # how the output offset started (`_start_offset`)

    def state(self, it: int, val: dict, best: dict | None = None) -> dict:
        """The checkpoint after iteration `it`: `best.pt` holds the weights and their validation (`val`);
        `last.pt`, which a run resumes from (`best` given), the best so far, every RNG's state and how the
        offset started too."""
        state = {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                 "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(), "iteration": it,
                 "val": val}
        return state if best is None else {**state, "best": best, "rng": rng_state(), "prior": self.prior}


def _build(cfg: Config, device: torch.device) -> _Parts:
    model = build_model(cfg).to(device)
    if cfg.train.channels_last:
        model = model.to(memory_format=torch.channels_last_3d)
    # Validation and checkpoints use `model`; the compiled wrapper shares its parameters.
    step_model = torch.compile(model) if cfg.train.compile else model
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    if cfg.train.lr_schedule == "cosine":
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.train.iterations)
    elif cfg.train.lr_schedule == "poly":  # nnU-Net's: lr · (1 − step / iterations)^0.9, 0 after the last step
        scheduler = torch.optim.lr_scheduler.PolynomialLR(optimizer, total_iters=cfg.train.iterations, power=0.9)
    else:
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    dtype = amp_dtype(device, cfg.train.amp)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    loss_fn, ce_term = training_loss(cfg)
    return _Parts(model, step_model, loss_fn, optimizer, scheduler, scaler, dtype, ce_term)


def _resume(parts: _Parts, state: dict | None, checkpoint: Path, name: str) -> tuple[int, dict, dict]:
    """`(first iteration, best so far, last validation)`: from `state`, the `checkpoint` an interrupted run
    left (read here, on the CPU, unless the caller has read it already), else those of a new run. A resumed
    run's `parts.prior` is its checkpoint's (None in a checkpoint written before it was kept there)."""
    if state is None and not checkpoint.is_file():
        return 1, {"iteration": 0, "dsc": -math.inf}, {}
    state = state if state is not None else read_checkpoint(checkpoint)
    parts.model.load_state_dict(state["model"])
    parts.optimizer.load_state_dict(state["optimizer"])
    parts.scheduler.load_state_dict(state["scheduler"])
    parts.scaler.load_state_dict(state["scaler"])
    set_rng_state(state["rng"])
    parts.prior = state.get("prior")
    tqdm.write(f"[{name}] resuming after iteration {state['iteration']} from {checkpoint}")
    return state["iteration"] + 1, state["best"], state["val"]


def train_run(cfg: Config, run_dir: Path, progress: bool = True, lists: dict | None = None,
              resume: dict | None = None) -> dict:
    """Train one model into `run_dir` (which holds config.yaml already); return the validation summary.

    A `checkpoints/last.pt` already in `run_dir` (an interrupted run) is resumed: weights, optimiser,
    schedule, scaler, RNG states, iteration and best metric; batch `it` does not depend on the batches
    before it, so with `deterministic: true` on the CPU the resumed run ends bitwise where an uninterrupted
    one would. `resume`: that checkpoint's state when the caller has read it already (`runs.open_run_dir`).
    """
    device = resolve_device(cfg.train.device)
    seed_everything(cfg, device)
    if cfg.deterministic and device.type == "cuda":
        tqdm.write(f"[{run_dir.name}] deterministic: true on {device}: cuDNN autotuning is off and only "
                   "deterministic kernels run; this can slow 3D convolution training noticeably")
    lists = lists if lists is not None else load_datalist(cfg)  # the caller may have read it already
    train_cases, val_cases = split_train_val(lists["training"], cfg)
    paths = RunPaths(run_dir)
    record_split(paths, lists, train_cases, val_cases)
    parts = _build(cfg, device)
    start, best, last = _resume(parts, resume, paths.last, run_dir.name)
    del resume  # loaded into the model and optimiser: no second copy kept for the whole training
    if start == 1:
        _note_ce_weight(cfg, paths, run_dir.name)

    cache = store.cache_mode(lists["training"], cfg)  # one decision for the training and validation cases
    batches = train_batches(train_cases, cfg, device, lambda text: tqdm.write(f"[{run_dir.name}] {text}"), cache)
    if parts.prior is None:  # a new run (or a checkpoint without it): measured, and set when new
        parts.prior = _start_offset(parts.model, batches, cfg, paths, run_dir.name, fresh=start == 1)
    val_data = volume_dataset(val_cases, cfg, with_label=True, cache=cache) if val_cases else None
    writer = SummaryWriter(log_dir=str(run_dir))
    loss_sum, loss_count = torch.zeros((), device=device), 0
    bar = tqdm(range(start, cfg.train.iterations + 1), desc=f"train {run_dir.name}", disable=not progress,
               leave=False, initial=start - 1, total=cfg.train.iterations)
    stop = StopRequest()
    prefetch = device.type == "cuda" if cfg.data.prefetch == "auto" else cfg.data.prefetch
    with Prefetched(batches, cfg.train.iterations) if prefetch else contextlib.nullcontext(batches) as fetch:
        for it in bar:
            image, label = to_memory_format(fetch(it), cfg.train.channels_last)
            if parts.ce_term is not None:
                parts.ce_term.iteration = it
            loss_sum += train_step(parts.step_model, image, label, parts.loss_fn, parts.optimizer, parts.scaler,
                                   parts.dtype)
            parts.scheduler.step()
            loss_count += 1
            if it % cfg.train.log_every == 0 or it == cfg.train.iterations:
                bar.set_postfix(loss=f"{_log_loss(writer, loss_sum / loss_count, parts, it, run_dir):.4f}")
                loss_sum.zero_()
                loss_count = 0
            if stop.requested:
                save_checkpoint(paths.last, parts.state(it, last, best))
                stop.restore()
                raise LesionsegError(f"stopped by {stop.requested} after iteration {it}; the checkpoint {paths.last} "
                                     "holds it. Run the same command again to resume.")
            if it % cfg.train.val_every == 0 or it == cfg.train.iterations:
                if val_data is not None:
                    last = _validate_logged(writer, parts.model, val_data, cfg, device, it, run_dir.name)
                    if last["dsc"] > best["dsc"]:
                        best = {"iteration": it, **last}
                        save_checkpoint(paths.best, parts.state(it, last))
                save_checkpoint(paths.last, parts.state(it, last, best))
    stop.restore()
    writer.close()
    return _finish(paths, cfg, device, parts, best if val_data is not None else None, last)


def _finish(paths: RunPaths, cfg: Config, device: torch.device, parts: _Parts, best: dict | None,
            last: dict) -> dict:
    """`train_summary.json`, written and returned; without validation (`best` None) there was nothing to
    choose with: the last weights are the best we know, copied to `best.pt`."""
    if best is None:
        best = {"iteration": cfg.train.iterations}
        write_atomic(paths.best, lambda tmp: shutil.copyfile(paths.last, tmp))
    summary = {"best": best, "last": last, "device": str(device), "amp": str(parts.dtype) if parts.dtype else "off",
               "prior": parts.prior}
    write_json(paths.train_summary, summary)
    return summary


def _note(paths: RunPaths, name: str, note: str) -> None:
    """Log what an `auto` setting became and note it at the end of the run's config.yaml."""
    tqdm.write(f"[{name}] {note}")
    write_text(paths.config, paths.config.read_text(encoding="utf-8") + f"# {note}\n")


def _note_ce_weight(cfg: Config, paths: RunPaths, name: str) -> None:
    if cfg.loss.ce_weight == "auto":
        has = "has cross-entropy in it" if cfg.loss.resolved_ce_weight == 0 else "is an overlap loss"
        _note(paths, name, f"loss.ce_weight: auto → {cfg.loss.resolved_ce_weight:g} ({cfg.loss.name} {has})")


def _start_offset(model: LesionUNet, batches, cfg: Config, paths: RunPaths, name: str, fresh: bool) -> dict:
    """`model.prior`, and for `auto` the lesion share it was set from (`offset.py`): on a `fresh` run the
    offset is set to it, logged, and noted at the end of the run's config.yaml; a resumed run's checkpoint
    holds the offset already (and, since it is kept there, this record: it is not measured again)."""
    if cfg.model.prior != "auto":
        return {"setting": cfg.model.prior, "start": cfg.model.prior}
    share = lesion_share(batches, cfg.train.iterations)
    start = starting_prior(share)
    if fresh:
        model.start_at(start)
        _note(paths, name, f"model.prior: auto → {start:.4g}, the lesion share of the first "
                           f"{min(cfg.train.iterations, SHARE_BATCHES)} training batches ({share:.4g})")
    return {"setting": "auto", "start": start, "lesion_share": share}


def _log_loss(writer: SummaryWriter, mean: torch.Tensor, parts: _Parts, it: int, run_dir: Path) -> float:
    """Read the mean loss back (the only host sync of the loop), stop on a NaN or infinite one, log it."""
    mean_loss = mean.item()
    if not math.isfinite(mean_loss):
        raise LesionsegError(f"training loss became {mean_loss} by iteration {it} in {run_dir}; lower train.lr or "
                             "check the data for NaN/infinite intensities (lesionseg check)")
    writer.add_scalar("train/loss", mean_loss, it)
    writer.add_scalar("train/lr", parts.scheduler.get_last_lr()[0], it)
    return mean_loss


def _validate_logged(writer: SummaryWriter, model: torch.nn.Module, val_data, cfg: Config, device: torch.device,
                     it: int, name: str) -> dict:
    """`validate`, its means, volume ratio and `val/collapsed` (0/1) written to TensorBoard (with an overlay
    when due) and to the log; a collapse (`lesionseg.evaluation.collapse`) is a warning in both."""
    last, first_prob = validate(model, val_data, cfg, device)
    flags = last["collapse"]
    for key, value in last.items():
        if key != "collapse":
            writer.add_scalar(f"val/{key}", value, it)
    writer.add_scalar("val/collapsed", float(bool(flags)), it)
    if overlay_due(it, cfg):
        log_validation_overlay(writer, val_data[0], first_prob, cfg, it)
    message = ", ".join(f"{k} {last[k]:.3f}" for k in registry.names(curve=True))
    tqdm.write(f"[{name}] iteration {it}/{cfg.train.iterations}: validation {message}, "
               f"volume ratio {last['volume_ratio']:.3g}")
    if flags:
        warning = (f"[{name}] warning: collapsed at iteration {it} on the validation cases: "
                   f"{collapse.describe(flags)}. Probably {collapse.advice(flags)}.")
        tqdm.write(warning)
        writer.add_text("val/collapse", warning, it)
    return last
