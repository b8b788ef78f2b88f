"""The sweep report: one row per configuration (per β in a β sweep), the shape of the paper's table.

Each figure is the per-case mean over the test cases (each patient counts once), averaged over seeds when
the sweep repeats seeds; `apr_pooled` is the average precision of all test voxels pooled together.
Only finished runs (with a `DONE` marker) count; the report lists the runs that are missing.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

import numpy as np
import yaml

from lesionseg.config import expand_sweep, validate
from lesionseg.errors import LesionsegError
from lesionseg.files import write_text
from lesionseg.runs import is_done, read_json

METRICS = ("dsc", "f2", "sensitivity", "precision", "apr")
REPEAT_KEYS = ("seed",)  # swept keys that are repeats, averaged over, not rows of their own


def collect_runs(sweep_dir: Path) -> tuple[list[dict], list[str]]:
    """Finished runs as `{"id", "assignment", "beta", "alpha", "summary"}`, and the ids still missing."""
    sweep_file = sweep_dir / "sweep.yaml"
    if not sweep_file.is_file():
        raise LesionsegError(f"{sweep_dir} is not a sweep folder (no sweep.yaml); run `lesionseg sweep` first")
    cfg = validate(yaml.safe_load(sweep_file.read_text(encoding="utf-8")), source=str(sweep_file))
    runs, missing = [], []
    for rid, run_cfg in expand_sweep(cfg) if cfg.sweep else [("run", cfg)]:
        run_dir = sweep_dir / "runs" / rid
        if not is_done(run_dir):
            missing.append(rid)
            continue
        assignment = {key: _get(run_cfg.model_dump(), key) for key in cfg.sweep}
        runs.append({
            "id": rid,
            "assignment": assignment,
            "beta": run_cfg.loss.beta,
            "alpha": run_cfg.loss.resolved_alpha,
            "summary": read_json(run_dir / "metrics" / "summary.json"),
        })
    return runs, missing


def _get(tree: dict, key: str):
    for part in key.split("."):
        tree = tree[part]
    return tree


def summarise(runs: list[dict]) -> list[dict]:
    """Group runs by their swept values other than repeats; average each metric over the group."""
    groups: dict[tuple, list[dict]] = {}
    for run in runs:
        key = tuple((k, v) for k, v in run["assignment"].items() if k not in REPEAT_KEYS)
        groups.setdefault(key, []).append(run)
    rows = []
    for key, members in groups.items():
        row: dict = {"beta": members[0]["beta"], "alpha": round(members[0]["alpha"], 6)}
        row.update({k.split(".")[-1]: v for k, v in key if k not in ("loss.beta", "loss.alpha")})
        for metric in METRICS:
            values = [m["summary"]["per_case"][metric]["mean"] for m in members]
            row[metric] = _nanmean(values)
        row["apr_pooled"] = _nanmean([m["summary"]["pooled"]["apr"] for m in members])
        row["n_cases"] = members[0]["summary"]["n_cases"]
        row["n_seeds"] = len(members)
        rows.append(row)
    return rows


def _nanmean(values: list[float]) -> float:
    finite = [v for v in values if v is not None and not math.isnan(v)]
    return float(np.mean(finite)) if finite else math.nan


def to_csv(rows: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def to_markdown(rows: list[dict], missing: list[str], sweep_dir: Path) -> str:
    columns = list(rows[0])
    best = {m: np.nanmax([r[m] for r in rows]) for m in (*METRICS, "apr_pooled") if any(not math.isnan(r[m]) for r in rows)}

    def cell(row: dict, col: str) -> str:
        value = row[col]
        if isinstance(value, float) and col in best:
            text = "nan" if math.isnan(value) else f"{value:.3f}"
            return f"**{text}**" if value == best[col] else text
        return f"{value:g}" if isinstance(value, float) else str(value)

    lines = [
        f"# Sweep report: {sweep_dir.name}",
        "",
        "Per-case means over the test cases (each case counts once), averaged over seeds; `apr_pooled` is the "
        "average precision of all test voxels together. Threshold-based metrics at each run's `eval.threshold`. "
        "Best value per column in bold.",
        "",
        "| " + " | ".join(columns) + " |",
        "| " + " | ".join("---" for _ in columns) + " |",
        *("| " + " | ".join(cell(r, c) for c in columns) + " |" for r in rows),
    ]
    if missing:
        lines += ["", f"Missing (not finished, not counted): {', '.join(missing)}"]
    return "\n".join(lines) + "\n"


def write_report(sweep_dir: Path) -> Path:
    """Write `report/summary.md` and `report/summary.csv` for the finished runs of a sweep."""
    sweep_dir = Path(sweep_dir)
    runs, missing = collect_runs(sweep_dir)
    if not runs:
        raise LesionsegError(f"no finished runs in {sweep_dir / 'runs'}; nothing to report")
    rows = sorted(summarise(runs), key=lambda r: (r["beta"], r["alpha"]))
    out = sweep_dir / "report"
    write_text(out / "summary.csv", to_csv(rows))
    write_text(out / "summary.md", to_markdown(rows, missing, sweep_dir))
    return out
