"""Benchmark: lesionseg against a plain MONAI tutorial loop on real MS patients, at the same CPU budget.

Real scans: the two open MS patients of Lesjak et al. 2018 in `../shared/data/open_ms_data/` (FLAIR, T1,
T2; 1 mm, skull-stripped, MNI space). Train on one patient, test on the other, both ways, at 2 mm with
48³ patches, for β in `--betas` (α = 1 − β). Both arms are scored by the same evaluator on the test scan's
own 1 mm grid, inside the brain (its non-zero FLAIR voxels), at threshold 0.5:

  tutorial   what a MONAI user writes first: LoadImaged → EnsureChannelFirstd → Orientationd(RAS) →
             Spacingd(2 mm) → NormalizeIntensityd(nonzero, channel_wise), CacheDataset, then per step
             RandCropByPosNegLabeld(pos=1, neg=1, 2 patches, centres on image > 0) and RandFlipd on each
             axis; UNet(16, 32, 64, 128; strides 2; 2 residual units), TverskyLoss(sigmoid, batch), Adam
             1e-3 constant; trained for exactly the CPU time of this process that lesionseg's training
             took (`--budget cpu`, the default: fair when other work shares the machine; `--budget wall`:
             the same wall-clock time, as before stop 18); Gaussian sliding window
             (overlap 0.5), the prediction brought back to 1 mm by MONAI's Invertd.
  lesionseg  `lesionseg train` with the real-data example `configs/examples/open_ms_patient.yaml` (and so
             `configs/base.yaml`'s defaults), plus `data.spacing=[2,2,2]`, 48³ patches, `--iterations`
             and any `--set key=value` (the ablation), then `lesionseg predict`'s path.

Prints one table per run and a side-by-side table (DSC, F2, sensitivity, precision, APR, lesions found);
every result is appended to `--results` (JSON lines) so that ablations over several calls can be compared.

    .venv/bin/python bench/bench_real.py                       # both directions, β 0.5 0.7 0.9, both arms
    .venv/bin/python bench/bench_real.py --arms lesionseg --betas 0.5 --directions 19:07 \
        --label prior=0.01 --set model.prior=0.01            # one ablation row
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from monai.data import CacheDataset, DataLoader, decollate_batch
from monai.inferers import sliding_window_inference
from monai.losses import TverskyLoss
from monai.networks.nets import UNet
from monai.transforms import (
    Compose,
    EnsureChannelFirstd,
    EnsureTyped,
    Invertd,
    LoadImaged,
    NormalizeIntensityd,
    Orientationd,
    RandCropByPosNegLabeld,
    RandFlipd,
    Spacingd,
)
from monai.utils import set_determinism

import lesionseg
from lesionseg.config import eval_options, load_config
from lesionseg.evaluation.evaluate import evaluate_cases
from lesionseg.inference import load_model, predict_cases
from lesionseg.runs import start_run_dir
from lesionseg.training.loop import train_run

REPO = Path(__file__).resolve().parents[1]
OPEN_MS = REPO.parent / "shared" / "data" / "open_ms_data"
MODALITIES = ["flair", "t1", "t2"]
SPACING = (2.0, 2.0, 2.0)
PATCH = (48, 48, 48)
COLUMNS = [("dsc", "DSC"), ("f2", "F2"), ("sensitivity", "sens."), ("precision", "prec."), ("apr", "APR")]


def case(patient: str, root: Path = OPEN_MS) -> dict:
    folder = root / patient
    return {"case": patient, "image": [str(folder / f"{m}.nii.gz") for m in MODALITIES],
            "label": str(folder / "label.nii.gz")}


def brain_mask(test: dict, out_dir: Path) -> Path:
    """The brain of a skull-stripped scan: its non-zero FLAIR voxels, as a mask on the scan's grid."""
    flair = nib.load(test["image"][0])
    path = out_dir / f"{test['case']}.nii.gz"
    nib.save(nib.Nifti1Image((np.asanyarray(flair.dataobj) != 0).astype(np.uint8), flair.affine), str(path))
    return path


# --- the reference: a plain MONAI tutorial loop -------------------------------------------------------------

def tutorial_preprocessing(keys: list[str]) -> Compose:
    return Compose([
        LoadImaged(keys=keys, image_only=True),
        EnsureChannelFirstd(keys=keys),
        Orientationd(keys=keys, axcodes="RAS", labels=None),
        Spacingd(keys=keys, pixdim=SPACING, mode=["bilinear", "nearest"][: len(keys)]),
        NormalizeIntensityd(keys="image", nonzero=True, channel_wise=True),
        EnsureTyped(keys=keys),
    ])


def tutorial_run(train: list[dict], tests: list[dict], beta: float, seconds: float, out_dir: Path, seed: int,
                 clock=time.perf_counter) -> dict:
    """Train the tutorial loop for `seconds` of `clock` (wall time, or this process's CPU time), write its
    predictions of `tests`; iterations done."""
    set_determinism(seed)
    torch.manual_seed(seed)
    augment = [
        RandCropByPosNegLabeld(keys=["image", "label"], label_key="label", spatial_size=PATCH, pos=1, neg=1,
                               num_samples=2, image_key="image", image_threshold=0),
        *[RandFlipd(keys=["image", "label"], prob=0.5, spatial_axis=axis) for axis in range(3)],
    ]
    # One flat Compose: CacheDataset caches the steps before the first random one (a nested Compose counts
    # as random, and every step would run again on each draw).
    steps = Compose([*tutorial_preprocessing(["image", "label"]).transforms, *augment])
    data = CacheDataset([{"image": t["image"], "label": t["label"]} for t in train], steps, progress=False)
    # as many volumes per step as lesionseg's train.batch_size (2) draws, 2 patches each
    loader = DataLoader(data, batch_size=min(2, len(train)), shuffle=True, num_workers=0)
    model = UNet(spatial_dims=3, in_channels=len(MODALITIES), out_channels=1, channels=(16, 32, 64, 128),
                 strides=(2, 2, 2), num_res_units=2)
    loss_fn = TverskyLoss(sigmoid=True, batch=True, alpha=1 - beta, beta=beta)
    optimizer = torch.optim.Adam(model.parameters(), 1e-3)
    model.train()
    start, wall, cpu, iterations = clock(), time.perf_counter(), time.process_time(), 0
    while clock() - start < seconds:
        for batch in loader:
            optimizer.zero_grad()
            loss = loss_fn(model(batch["image"]), batch["label"])
            loss.backward()
            optimizer.step()
            iterations += 1
            if clock() - start >= seconds:
                break
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu

    pre = tutorial_preprocessing(["image"])
    invert = Invertd(keys="pred", transform=pre, orig_keys="image", nearest_interp=False)
    model.eval()
    out_dir.mkdir(parents=True, exist_ok=True)
    for test in tests:
        item = pre({"image": test["image"]})
        with torch.no_grad():
            logits = sliding_window_inference(item["image"][None], PATCH, 4, model, overlap=0.5, mode="gaussian")
        item["pred"] = decollate_batch(torch.sigmoid(logits))[0]
        prob = invert(item)["pred"][0].numpy()
        reference = nib.load(test["image"][0])
        nib.save(nib.Nifti1Image(np.clip(prob, 0, 1).astype(np.float32), reference.affine),
                 str(out_dir / f"{test['case']}.nii.gz"))
    return {"iterations": iterations, "seconds": wall, "cpu_seconds": cpu}


# --- lesionseg ----------------------------------------------------------------------------------------------

def lesionseg_run(train: list[dict], tests: list[dict], beta: float, iterations: int, overrides: list[str], work: Path,
                  out_dir: Path, seed: int, tta_dir: Path | None = None) -> dict:
    work.mkdir(parents=True, exist_ok=True)
    datalist = work / "datalist.json"
    datalist.write_text(json.dumps({"modalities": MODALITIES, "training": train, "test": tests}))
    cfg = load_config(REPO / "configs" / "examples" / "open_ms_patient.yaml", [
        f"data.datalist={datalist}", f"output_dir={work / 'experiments'}", f"seed={seed}",
        f"data.modalities={MODALITIES}", f"data.spacing={list(SPACING)}", f"data.patch_size={list(PATCH)}",
        "data.val_fraction=0", f"loss.beta={beta}", "loss.alpha=null", f"train.iterations={iterations}",
        f"train.val_every={iterations}", "train.device=cpu", *overrides])
    run_dir = start_run_dir(cfg.output_dir / cfg.name, cfg)
    start, cpu_start = time.perf_counter(), time.process_time()
    train_run(cfg, run_dir, progress=False)
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    device = torch.device("cpu")
    model = load_model(run_dir, cfg, device)
    predict_cases(model, cfg, tests, out_dir, device, progress=False)
    if tta_dir is not None:  # the same model again with test-time flips
        predict_cases(model, lesionseg.load(cfg, ["eval.tta=true"]), tests, tta_dir, device, progress=False)
    return {"iterations": iterations, "seconds": seconds, "cpu_seconds": cpu_seconds}


# --- the comparison -----------------------------------------------------------------------------------------

def score(tests: list[dict], pred_dir: Path, masks: list[Path], out_dir: Path, min_component_ml: float = 0.0) -> dict:
    """Mean over the test cases of each metric (one case: its value), lesions summed over them; `masks`:
    each test case's brain mask (`brain_mask`)."""
    cases = [(t["case"], pred_dir / f"{t['case']}.nii.gz", Path(t["label"])) for t in tests]
    summary = evaluate_cases(cases, out_dir, masks=masks, progress=False, surface=False,
                             options=eval_options(min_component_ml=min_component_ml))
    means, pooled = summary["per_case"], summary["pooled"]
    with open(out_dir / "cases.csv", newline="") as handle:
        per_case = {row["case"]: {k: float(row[k]) for k in ("dsc", "sensitivity", "precision", "apr")}
                    for row in csv.DictReader(handle)}
    return {**{key: means[key]["mean"] for key, _ in COLUMNS}, "cases": per_case,
            "detected": int(pooled["n_detected"]), "lesions": int(pooled["n_ref_lesions"]),
            "predicted_lesions": int(pooled["n_pred_lesions"])}


def hemispheres(root: Path, patients: list[str], out: Path) -> Path:
    """`<patient>L` and `<patient>R` folders under `out`: each image and label with the other hemisphere
    (world x on the other side of the midline, x = 0 in MNI space) set to 0 — two cases per patient."""
    for patient in patients:
        for side, keep in (("L", lambda x: x < 0), ("R", lambda x: x >= 0)):
            folder = out / f"{patient}{side}"
            folder.mkdir(parents=True, exist_ok=True)
            for name in [*MODALITIES, "label"]:
                img = nib.load(str(root / patient / f"{name}.nii.gz"))
                i = np.arange(img.shape[0])
                x = img.affine[0, 0] * i + img.affine[0, 3]  # world x of each first-axis index (no obliquity)
                data = np.asanyarray(img.dataobj).copy()
                data[~keep(x)] = 0
                nib.save(nib.Nifti1Image(data, img.affine, img.header), str(folder / f"{name}.nii.gz"))
    return out


def row_text(r: dict) -> str:
    cells = [f"{r[key]:.3f}" if not math.isnan(r[key]) else "n/a" for key, _ in COLUMNS]
    found = f"{r['detected']}/{r['lesions']} ({r['predicted_lesions']} pred.)"
    return (f"| {r['direction']} | {r['beta']:.1f} | {r['label']} | " + " | ".join(cells)
            + f" | {found} | {r['iterations']} | {r['seconds']:.0f} | {r.get('cpu_seconds', math.nan):.0f} |")


def print_table(rows: list[dict]) -> None:
    print("| train→test | β | arm | " + " | ".join(name for _, name in COLUMNS)
          + " | lesions found | iterations | train s | train CPU s |")
    print("|---" * (len(COLUMNS) + 7) + "|")
    for r in sorted(rows, key=lambda r: (r["direction"], r["beta"], r["label"] != "tutorial", r["label"])):
        print(row_text(r))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--betas", type=float, nargs="+", default=[0.5, 0.7, 0.9])
    parser.add_argument("--directions", nargs="+", default=["patient07:patient19", "patient19:patient07"],
                        help="TRAIN:TEST patient folders, several training patients joined by '+' (p1+p2:p3)")
    parser.add_argument("--data", type=Path, default=OPEN_MS, help="folder of patient folders (flair.nii.gz, "
                        "t1.nii.gz, t2.nii.gz, label.nii.gz each)")
    parser.add_argument("--arms", nargs="+", default=["lesionseg", "tutorial"], choices=["lesionseg", "tutorial"])
    parser.add_argument("--iterations", type=int, default=3000, help="lesionseg iterations; the tutorial "
                        "trains for the time they took (or --seconds without a lesionseg arm)")
    parser.add_argument("--seconds", type=float, default=240.0)
    parser.add_argument("--budget", choices=["cpu", "wall"], default="cpu",
                        help="what the tutorial gets the same of: this process's CPU seconds (default: fair even "
                             "when other work shares the machine) or wall-clock seconds")
    parser.add_argument("--set", dest="overrides", nargs="*", default=[], help="lesionseg key=value overrides")
    parser.add_argument("--label", default="lesionseg", help="name of the lesionseg arm in the table")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tta", action="store_true", help="also score lesionseg's model with test-time flips")
    parser.add_argument("--filter-ml", type=float, nargs="*", default=[],
                        help="also score lesionseg's prediction with predicted lesions below each volume removed "
                             "(fixed sizes, not tuned: one training patient leaves no validation case)")
    parser.add_argument("--hemispheres", action="store_true",
                        help="split each patient into its left and right hemisphere (…L, …R cases); default "
                             "directions then train on the left halves of patient07 and patient19 and test on "
                             "their right halves, and the other way round")
    parser.add_argument("--results", type=Path, default=REPO / "experiments" / "bench_real.jsonl")
    args = parser.parse_args()
    if args.hemispheres:
        source, args.data = args.data, Path(tempfile.mkdtemp())
        if args.directions == parser.get_default("directions"):
            args.directions = ["patient07L+patient19L:patient07R+patient19R",
                               "patient07R+patient19R:patient07L+patient19L"]
        patients = {p[:-1] for d in args.directions for part in d.split(":") for p in part.split("+")}
        hemispheres(source, sorted(patients), args.data)
    wanted = {p for d in args.directions for part in d.split(":") for p in part.split("+")}
    missing = sorted(p for p in wanted if not (args.data / p).is_dir())
    if missing:
        print(f"skipped: patient folder(s) {', '.join(missing)} not in {args.data}")
        return
    rows = []
    for direction in args.directions:
        train_ids, test_ids = (part.split("+") for part in direction.split(":"))
        train, tests = [case(p, args.data) for p in train_ids], []
        for test_id in test_ids:
            if test_id in train_ids:  # a sanity check: a training patient again, through a link
                links = Path(tempfile.mkdtemp())
                (links / test_id).symlink_to((args.data / test_id).resolve())
                tests.append({**case(test_id, links), "case": f"{test_id}-again"})
            else:
                tests.append(case(test_id, args.data))
        short = "→".join("+".join(p.removeprefix("patient") for p in ids) for ids in (train_ids, test_ids))
        mask_dir = Path(tempfile.mkdtemp())
        masks = [brain_mask(t, mask_dir) for t in tests]
        for beta in args.betas:
            with tempfile.TemporaryDirectory() as tmp:
                tmp = Path(tmp)
                seconds = args.seconds
                for arm in args.arms:
                    preds = tmp / arm / "predictions"
                    (tmp / arm).mkdir(parents=True, exist_ok=True)
                    variants = [(preds, 0.0, "")]
                    if arm == "lesionseg":
                        tta = tmp / arm / "predictions-tta" if args.tta else None
                        run = lesionseg_run(train, tests, beta, args.iterations, args.overrides, tmp / arm, preds,
                                            args.seed, tta)
                        seconds = run["cpu_seconds" if args.budget == "cpu" else "seconds"]  # the tutorial's
                        variants += [(preds, ml, f" + filter {ml:g} mL") for ml in args.filter_ml]
                        variants += [(tta, 0.0, " + TTA")] if tta else []
                    else:
                        clock = time.process_time if args.budget == "cpu" else time.perf_counter
                        run = {**tutorial_run(train, tests, beta, seconds, preds, args.seed, clock),
                               "budget": args.budget}
                    for i, (folder, ml, suffix) in enumerate(variants):
                        label = (args.label if arm == "lesionseg" else "tutorial") + suffix
                        row = {"direction": short, "beta": beta, "label": label,
                               "overrides": args.overrides if arm == "lesionseg" else [], **run,
                               **score(tests, folder, masks, tmp / arm / f"metrics{i}", ml)}
                        rows.append(row)
                        print(row_text(row), flush=True)
                        args.results.parent.mkdir(parents=True, exist_ok=True)
                        with open(args.results, "a", encoding="utf-8") as handle:
                            handle.write(json.dumps(row) + "\n")
    print()
    print_table(rows)


if __name__ == "__main__":
    main()
