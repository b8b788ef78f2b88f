"""Sliding-window inference; lesion probabilities written in each input's own geometry.

The network sees volumes reoriented (and optionally resampled) by `data.preprocessing`; the prediction is
brought back through the inverse of those steps, so that `predictions/<case>.nii.gz` has the shape and
affine of the case's first image and overlays it in any viewer.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from monai.data import MetaTensor
from monai.inferers import sliding_window_inference
from tqdm import tqdm

from lesionseg.config import Config, load_config
from lesionseg.data.cache import volume_dataset
from lesionseg.data.checks import check_prediction_inputs
from lesionseg.data.layouts import case_id_from_path
from lesionseg.data.preprocessing import load_datalist, preprocessing
from lesionseg.devices import amp_dtype, autocast, resolve_device
from lesionseg.errors import LesionsegError
from lesionseg.evaluation import froc
from lesionseg.evaluation.lesionwise import min_component_voxels, scored_prediction
from lesionseg.evaluation.metrics import PRTable, overlap_metrics, pr_table
from lesionseg.files import write_atomic
from lesionseg.model import build_model
from lesionseg.runs import RunPaths, claim_output, read_checkpoint

# Test-time flips (`eval.tta`): every subset of the three spatial axes of a (B, C, D, H, W) batch, the
# identity first — the 8 mirrorings nnU-Net averages over.
TTA_FLIPS: tuple[tuple[int, ...], ...] = ((), (2,), (3,), (4,), (2, 3), (2, 4), (3, 4), (2, 3, 4))


def infer_volume(model: torch.nn.Module, image: torch.Tensor, cfg: Config, device: torch.device,
                 tta: bool = False) -> torch.Tensor:
    """Lesion probabilities `(1, D, H, W)` for one preprocessed volume `(C, D, H, W)`, by sliding window
    (in the training AMP dtype on CUDA; in fp32 on the CPU).

    `tta`: the mean of the probabilities over the 8 mirrorings of the volume (`TTA_FLIPS`), each flipped
    back before averaging (8 times the work).
    """
    dtype = amp_dtype(device, cfg.train.amp) if device.type == "cuda" else None
    volume = image.as_tensor() if isinstance(image, MetaTensor) else image
    volume = volume.unsqueeze(0).to(device)
    flips = TTA_FLIPS if tta else TTA_FLIPS[:1]
    total = None
    with torch.no_grad(), autocast(device, dtype):
        for axes in flips:
            logits = sliding_window_inference(
                volume.flip(axes) if axes else volume,
                roi_size=cfg.data.patch_size,
                sw_batch_size=cfg.eval.sw_batch_size,
                predictor=model,
                overlap=cfg.eval.overlap,
                mode="gaussian",
            )
            prob = torch.sigmoid(logits.float())
            prob = prob.flip(axes) if axes else prob
            total = prob if total is None else total + prob
    return (total / len(flips))[0]


def load_model(run_dir: Path, cfg: Config, device: torch.device) -> torch.nn.Module:
    """The run's best checkpoint (by validation DSC), else its last one."""
    paths = RunPaths(run_dir)
    for path in (paths.best, paths.last):
        if path.is_file():
            model = build_model(cfg).to(device)
            model.load_state_dict(read_checkpoint(path, map_location=device)["model"])
            return model.eval()
    raise LesionsegError(f"no checkpoint in {paths.checkpoints}: train the run first (lesionseg train)")


def save_probability(prob: np.ndarray, reference: Path, path: Path) -> None:
    """Write `prob` (the reference's voxel grid) as float32 NIfTI with the reference image's affine."""
    ref = nib.load(str(reference))
    if prob.shape != ref.shape[:3]:
        raise RuntimeError(f"prediction shape {prob.shape} differs from {reference} shape {ref.shape}")
    out = nib.Nifti1Image(prob.astype(np.float32), ref.affine)
    out.header.set_xyzt_units(*ref.header.get_xyzt_units())
    write_atomic(path, lambda tmp: nib.save(out, str(tmp)))


def predict_cases(
    model: torch.nn.Module | Sequence[torch.nn.Module], cfg: Config, entries: list[dict], out_dir: Path,
    device: torch.device, progress: bool = True,
) -> list[Path]:
    """Predict each entry (`{"case", "image": [paths], "mask": path (optional)}`) into `out_dir/<case>.nii.gz`.

    Several models are an ensemble: the mean of their probabilities (each with test-time flips when
    `eval.tta`), on the network's grid, before the inverse of the preprocessing."""
    models = list(model) if isinstance(model, Sequence) else [model]
    pre = preprocessing(cfg, with_label=False)
    written = []
    for entry in tqdm(entries, desc="predict", disable=not progress, leave=False):
        item = pre({"image": entry["image"], **({"mask": entry["mask"]} if entry.get("mask") else {})})
        image: MetaTensor = item["image"]
        prob = sum(infer_volume(m, image, cfg, device, tta=cfg.eval.tta).cpu() for m in models) / len(models)
        # Carry the input's transform history so that the inverse undoes reorientation and resampling.
        restored = pre.inverse({"image": MetaTensor(prob, meta=image.meta, applied_operations=image.applied_operations)})
        array = restored["image"][0].numpy()
        path = out_dir / f"{entry['case']}.nii.gz"
        save_probability(np.clip(array, 0.0, 1.0), Path(entry["image"][0]), path)
        written.append(path)
    return written


def validation_tables(model: torch.nn.Module, cfg: Config, entries: list[dict], device: torch.device,
                      progress: bool = True, sizes_ml: Sequence[float] = (), cache: tuple[str, str] | None = None
                      ) -> tuple[list[PRTable], np.ndarray, list[list[np.ndarray]]]:
    """Predict the validation cases (labelled) in the training geometry and reduce each to its
    precision-recall table (`metrics.pr_table`), from which thresholds are tuned (`operating_points`),
    to its DSC at `eval.threshold` after removing predicted lesions smaller than each of `sizes_ml`
    (`(cases, sizes)`; the size filter is tuned from it), and to its FROC counts (`froc.case_counts`) under
    `eval`'s lesion definition, per size of `sizes_ml` (or at `eval.min_component_ml` without sizes), from
    which the threshold of one false-positive lesion per scan is chosen. The volumes are read as training read
    them (`cache.volume_dataset`; `cache`: the `store.cache_mode` decision for the run's training cases)."""
    froc_sizes = list(sizes_ml) or [cfg.eval.min_component_ml]
    tables, dsc, froc_counts = [], [], []
    for item in tqdm(volume_dataset(entries, cfg, with_label=True, cache=cache), desc="validation",
                     disable=not progress, leave=False):
        prob = infer_volume(model, item["image"], cfg, device, tta=cfg.eval.tta)[0]
        label = item["label"][0].to(device) > 0.5
        tables.append(pr_table(prob, label))
        voxel_ml = math.prod(item["image"].pixdim[:3].tolist()) / 1000.0
        scored = scored_prediction(prob, label, cfg.eval.threshold,
                                   [min_component_voxels(size, voxel_ml) for size in sizes_ml])
        dsc.append([overlap_metrics(counts)["dsc"] for _, counts in scored])
        froc_counts.append([froc.case_counts(prob, label, voxel_ml, cfg.eval.model_copy(update={"min_component_ml": size}))
                            for size in froc_sizes])
    return tables, np.asarray(dsc, dtype=np.float64).reshape(len(tables), len(sizes_ml)), froc_counts


def predict_run(run_dir: Path, images: list[str] | None = None, out_dir: Path | None = None,
                progress: bool = True, force: bool = False) -> list[Path]:
    """`lesionseg predict`: the run's test cases (or one case given as `images`, one file per modality).

    Their files pass the checks of training first (`checks.check_prediction_inputs`: unreadable or
    truncated files, 4D files, modalities off the first one's grid, NaN/infinite, empty or constant
    images); any problem is a LesionsegError listing all of them, and nothing is written. An output folder
    that holds files already is refused (`runs.claim_output`); `force` moves it aside first."""
    run_dir = Path(run_dir)
    if not RunPaths(run_dir).config.is_file():
        raise LesionsegError(f"{run_dir} is not a run folder (no config.yaml): give the folder `lesionseg train` "
                             "wrote (<output_dir>/<name>/) or a sweep's runs/<run-id>/")
    cfg = load_config(RunPaths(run_dir).config)
    if images:
        if len(images) != len(cfg.data.modalities):
            raise LesionsegError(
                f"--images got {len(images)} file(s); this run was trained on {len(cfg.data.modalities)} "
                f"modalities, in this order: {cfg.data.modalities}"
            )
        entries = [{"case": case_id_from_path(images[0]), "image": [str(Path(p).resolve()) for p in images]}]
        source = "--images"
    else:
        entries = load_datalist(cfg)["test"]
        if not entries:
            raise LesionsegError(f"datalist {cfg.data.datalist} has no 'test' cases; pass --images instead")
        source = f"the test cases of dataset {cfg.data.datalist}"
    check_prediction_inputs(entries, cfg.data.modalities, source)  # before the model, before any output
    device = resolve_device(cfg.train.device)
    model = load_model(run_dir, cfg, device)
    out_dir = Path(out_dir or RunPaths(run_dir).predictions)
    if aside := claim_output(out_dir, force, "write the predictions elsewhere with --out DIR"):
        tqdm.write(f"--force: moved the earlier predictions to {aside}")
    return predict_cases(model, cfg, entries, out_dir, device, progress)
