"""The metrics: one table that the evaluator, the report, the figures, TensorBoard and the CLI all read.

Each entry is a column of `cases.csv` (in this order) and a key of `summary.json`'s `per_case` (and of
`pooled`, where the metric has a pooled value). The roles say where else it appears:

- `report`: its place among the columns of the report's per-case table (`summary.csv`, `summary.md`,
  `report.html`) and of TensorBoard's `test/<name>`; None: in `cases.csv` and `summary.json` only.
- `headline`: one sentence of the report's answer, and the CLI's summary line.
- `tested`: compared with the baseline by the paired tests (`stats.json`).
- `curve`: computed at every threshold of the curves (`threshold_curves.csv`, validation during training).
- `tuned`: a threshold is tuned on the validation cases to maximise it (`thresholds.json`).

Adding a metric: its function (where its inputs are: `metrics.overlap_metrics` for confusion counts,
`lesionwise.lesion_metrics`, `surface.surface_distances` …) and one entry here.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Metric:
    name: str
    label: str
    group: str  # voxel, counts, volume, surface, lesion, calibration: the block of cases.csv it is in
    lower_is_better: bool = False
    pooled: bool = True  # has a value over all cases together (surface distances have none)
    decimals: int = 3  # in the report
    report: int | None = None
    headline: bool = False
    tested: bool = False
    curve: bool = False
    tuned: bool = False


METRICS: tuple[Metric, ...] = (
    Metric("dsc", "DSC", "voxel", report=1, headline=True, tested=True, curve=True, tuned=True),
    Metric("f2", "F2", "voxel", report=2, headline=True, tested=True, curve=True, tuned=True),
    Metric("sensitivity", "sensitivity", "voxel", report=3, headline=True, tested=True, curve=True),
    Metric("precision", "precision", "voxel", report=4, headline=True, curve=True),
    Metric("specificity", "specificity", "voxel"),
    Metric("apr", "APR", "voxel", report=5, headline=True),
    Metric("iou", "IoU", "voxel"),
    Metric("tp", "TP", "counts"),
    Metric("fp", "FP", "counts", lower_is_better=True),
    Metric("fn", "FN", "counts", lower_is_better=True),
    Metric("tn", "TN", "counts"),
    Metric("vol_ref_ml", "reference volume (mL)", "volume"),
    Metric("vol_pred_ml", "predicted volume (mL)", "volume"),
    Metric("avd_ml", "absolute volume difference (mL)", "volume", lower_is_better=True),
    Metric("rvd", "relative volume difference", "volume"),
    Metric("hd95_mm", "HD95 (mm)", "surface", lower_is_better=True, pooled=False, decimals=2, report=9),
    Metric("assd_mm", "ASSD (mm)", "surface", lower_is_better=True, pooled=False, decimals=2),
    Metric("n_ref_lesions", "reference lesions", "lesion"),
    Metric("n_pred_lesions", "predicted lesions", "lesion"),
    Metric("n_detected", "detected lesions", "lesion"),
    Metric("n_pred_tp", "true predicted lesions", "lesion"),
    Metric("ltpr", "LTPR", "lesion", report=7),
    Metric("lfdr", "LFDR", "lesion", lower_is_better=True, report=8),
    Metric("lesion_f1", "lesion F1", "lesion", report=6),
    Metric("ece", "ECE", "calibration", lower_is_better=True, report=10),
    # the SD of the case's probabilities over its brain voxels: near 0 on every case, a collapsed run (`collapse`)
    Metric("prob_sd", "probability SD", "calibration", pooled=False),
)
BY_NAME = {m.name: m for m in METRICS}


def names(group: str | None = None, **role) -> tuple[str, ...]:
    """The metric names of `group` (all groups: None) with the given roles, in `cases.csv` order;
    `names(report=True)` is in the report's order instead."""
    chosen = [m for m in METRICS if (group is None or m.group == group)
              and all(bool(getattr(m, key)) == want for key, want in role.items())]
    if role.get("report"):
        chosen.sort(key=lambda m: m.report)
    return tuple(m.name for m in chosen)


def label(name: str) -> str:
    """The metric's label; `<m>_tuned` (a metric at its tuned threshold) reads `<label> at tuned t`."""
    if name.endswith("_tuned") and name[:-6] in BY_NAME:
        return f"{BY_NAME[name[:-6]].label} at tuned t"
    return BY_NAME[name].label


def lower_is_better(name: str) -> bool:
    return name in BY_NAME and BY_NAME[name].lower_is_better


def decimals(name: str) -> int:
    return BY_NAME[name].decimals if name in BY_NAME else 3
