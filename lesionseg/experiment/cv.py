"""Cross-validated configurations: the K fold runs of one configuration merged into one result.

A sweep over `data.fold` (with `data.folds: K`, `lesionseg.data.folds`) trains each configuration K times, each
run tested on its own fold. Once all K runs of a configuration are finished, `merge_configuration` writes

```
<sweep>/cv/<config-id>/          e.g. cv/beta=0.7_seed=0 (the run id without its fold)
    metrics/                     every training case, each predicted by the fold model that never saw it,
                                 evaluated together at eval.threshold (lesionseg.evaluation.evaluate: per-case and
                                 pooled metrics, APR and the calibration over all out-of-fold voxels)
    metrics-tuned-<m>/           each case at its own fold's threshold tuned on that fold's validation
                                 cases: the folds' cases.csv rows together, their statistics recomputed
    thresholds.json              the folds' tuned thresholds and their mean
    ensemble/predictions/        the datalist's test cases, predicted by the mean probability of the K fold
    ensemble/metrics/            models (with test-time flips when eval.tta), evaluated when labelled
    DONE                         written last
```
The report reads `cv/<config-id>/` as one run of that configuration (`results.collect_runs`): every patient
counts once, and the paired statistics run over the whole cohort.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

import numpy as np

from lesionseg.config import Config, flat_keys, run_id
from lesionseg.data.preprocessing import load_datalist
from lesionseg.devices import resolve_device
from lesionseg.errors import LesionsegError
from lesionseg.evaluation import operating_points
from lesionseg.evaluation.evaluate import evaluate_cases_at
from lesionseg.evaluation.nanstats import case_statistics
from lesionseg.experiment.run import evaluation_options  # the options every run evaluates with
from lesionseg.files import write_json, write_text
from lesionseg.runs import RunPaths, SweepPaths, is_done, mark_done, read_json


def configurations(runs: list[tuple[str, Config]], swept: dict) -> dict[str, list[tuple[str, Config]]]:
    """The fold runs of each configuration: configuration id (the run id without `fold=`) → its runs in
    fold order. Empty when the sweep does not sweep `data.fold`."""
    if "data.fold" not in swept:
        return {}
    out: dict[str, list[tuple[str, Config]]] = {}
    for rid, cfg in runs:
        values = flat_keys(cfg.model_dump(mode="json"))
        out.setdefault(run_id({k: values[k] for k in swept if k != "data.fold"}), []).append((rid, cfg))
    return {cid: sorted(members, key=lambda m: m[1].data.fold) for cid, members in out.items()}


def _read_rows(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        return list(reader.fieldnames or []), list(reader)


def _merge_tuned(fold_dirs: list[Path], metric: str, thresholds: list[float], out: Path) -> None:
    """`metrics-tuned-<metric>/` of the folds, together: their cases.csv rows (each case at its own fold's
    threshold) and the per-case statistics over all of them."""
    columns, rows = [], []
    for fold_dir in fold_dirs:
        columns, these = _read_rows(RunPaths(fold_dir).tuned(metric) / "cases.csv")
        rows += these
    folder = RunPaths(out).tuned(metric)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text(folder / "cases.csv", buffer.getvalue())
    write_json(folder / "summary.json", {
        "threshold": float(np.mean(thresholds)), "thresholds_per_fold": thresholds, "n_cases": len(rows),
        "per_case": {c: case_statistics([float(r[c]) for r in rows]) for c in columns[1:]},
        "note": "each case at the threshold tuned on its own fold's validation cases; threshold: their mean"})


def merge_configuration(sweep_dir: Path, cid: str, members: list[tuple[str, Config]], progress: bool = True) -> Path:
    """Write `<sweep_dir>/cv/<cid>/` from the finished fold runs `members` (see the module docstring)."""
    from lesionseg.inference import load_model, predict_cases  # inference; imported late (torch, MONAI)

    out = SweepPaths(sweep_dir).merged(cid)
    paths = RunPaths(out)
    cfg = members[0][1]
    if cfg.eval.min_component_ml == "tune":
        raise LesionsegError("eval.min_component_ml: tune chooses a size per fold; with data.folds give a size")
    fold_dirs = [SweepPaths(sweep_dir).run(rid) for rid, _ in members]
    device = resolve_device(cfg.train.device)
    cases, entries, froc_thresholds = [], [], []
    fold_thresholds = [read_json(RunPaths(d).thresholds) for d in fold_dirs]
    for (rid, run_cfg), fold_dir, chosen in zip(members, fold_dirs, fold_thresholds):
        test = load_datalist(run_cfg)["test"]  # this fold's cases
        entries += test
        cases += [(e["case"], RunPaths(fold_dir).predictions / f"{e['case']}.nii.gz", Path(e["label"])) for e in test]
        froc_thresholds += [chosen.get("froc", {}).get("threshold")] * len(test)  # each at its fold's choice
    options = evaluation_options(cfg, entries, device, progress, cfg.eval.min_component_ml)
    evaluate_cases_at(cases, {paths.metrics: cfg.eval.threshold}, froc_thresholds=froc_thresholds, **options)
    tuned = {m: [chosen[m]["threshold"] for chosen in fold_thresholds] for m in operating_points.TUNED_METRICS}
    for m, values in tuned.items():
        if all(math.isfinite(v) for v in values):
            _merge_tuned(fold_dirs, m, values, out)
    write_json(paths.thresholds, {
        "method": "the folds' thresholds, each tuned on its own fold's validation cases; threshold: their mean",
        "folds": [rid for rid, _ in members],
        **{m: {"threshold": float(np.mean(v)), "per_fold": v} for m, v in tuned.items()}})
    ensemble = load_datalist(cfg)["ensemble"]
    if ensemble:
        models = [load_model(d, run_cfg, device) for d, (_, run_cfg) in zip(fold_dirs, members)]
        together = RunPaths(paths.ensemble)  # laid out as a run's predictions/ and metrics/
        predicted = predict_cases(models, cfg, ensemble, together.predictions, device, progress)
        labelled = [(e, p) for e, p in zip(ensemble, predicted) if e["label"]]
        if labelled:
            evaluate_cases_at([(e["case"], p, Path(e["label"])) for e, p in labelled],
                              {together.metrics: cfg.eval.threshold},
                              **evaluation_options(cfg, [e for e, _ in labelled], device, progress,
                                                   cfg.eval.min_component_ml))
    mark_done(out, {"folds": [rid for rid, _ in members]})
    return out


def merge_finished(sweep_dir: Path, runs: list[tuple[str, Config]], swept: dict, progress: bool = True) -> list[str]:
    """Merge every configuration whose fold runs are all finished and that is not merged yet; returns the
    configuration ids merged now."""
    merged, paths = [], SweepPaths(sweep_dir)
    for cid, members in configurations(runs, swept).items():
        if is_done(paths.merged(cid)) or not all(is_done(paths.run(rid)) for rid, _ in members):
            continue
        merge_configuration(sweep_dir, cid, members, progress)
        merged.append(cid)
    return merged
