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
    group: str  # voxel, counts, volume, surface, lesion, froc, calibration: the block of cases.csv it is in
    lower_is_better: bool = False
    pooled: bool = True  # has a value over all cases together (surface distances have none)
    decimals: int = 3  # in the report
    report: int | None = None
    headline: bool = False
    tested: bool = False
    curve: bool = False
    tuned: bool = False
    definition: str = ""  # the formula, for the documentation's metric reference


METRICS: tuple[Metric, ...] = (
    Metric("dsc", "DSC", "voxel", report=1, headline=True, tested=True, curve=True, tuned=True,
           definition='2TP / (2TP + FP + FN); 1 when reference and prediction are both empty'),
    Metric("f2", "F2", "voxel", report=2, headline=True, tested=True, curve=True, tuned=True,
           definition='5TP / (5TP + 4FN + FP): recall counts 4× as much as precision; 1 when both are empty'),
    Metric("sensitivity", "sensitivity", "voxel", report=3, headline=True, tested=True, curve=True,
           definition='TP / (TP + FN) (recall); undefined for an empty reference'),
    Metric("precision", "precision", "voxel", report=4, headline=True, curve=True,
           definition='TP / (TP + FP) (positive predictive value); undefined for an empty prediction'),
    Metric("specificity", "specificity", "voxel",
           definition='TN / (TN + FP): always ≈ 1 on lesions; reported, not to be trusted'),
    Metric("apr", "APR", "voxel", report=5, headline=True,
           definition=('average precision of the voxel probabilities, Σₙ (Rₙ − Rₙ₋₁) Pₙ over the distinct '
                       "probability values (scikit-learn's average_precision_score); undefined for an empty "
                       'reference')),
    Metric("iou", "IoU", "voxel",
           definition='TP / (TP + FP + FN) = DSC / (2 − DSC) (Jaccard)'),
    Metric("tp", "TP", "counts",
           definition='voxels at p ≥ threshold that are lesion in the reference'),
    Metric("fp", "FP", "counts", lower_is_better=True,
           definition='voxels at p ≥ threshold that are not lesion in the reference'),
    Metric("fn", "FN", "counts", lower_is_better=True,
           definition='reference lesion voxels at p < threshold'),
    Metric("tn", "TN", "counts",
           definition='voxels that are lesion in neither'),
    Metric("vol_ref_ml", "reference volume (mL)", "volume",
           definition='reference lesion volume, from the header spacing'),
    Metric("vol_pred_ml", "predicted volume (mL)", "volume",
           definition='predicted lesion volume (p ≥ threshold), from the header spacing'),
    Metric("avd_ml", "absolute volume difference (mL)", "volume", lower_is_better=True,
           definition='|V_pred − V_ref|'),
    Metric("rvd", "relative volume difference", "volume",
           definition='(V_pred − V_ref) / V_ref; undefined for an empty reference'),
    Metric("hd95_mm", "HD95 (mm)", "surface", lower_is_better=True, pooled=False, decimals=2, report=10,
           definition=('the larger of the two directed 95th percentiles of the surface-to-surface distances '
                       "(MONAI's definition; MedPy pools both directions); 0 when both masks are empty, undefined"
                       ' when one is')),
    Metric("assd_mm", "ASSD (mm)", "surface", lower_is_better=True, pooled=False, decimals=2,
           definition=("the mean of both directions' surface-to-surface distances; 0 when both are empty, "
                       'undefined when one is')),
    Metric("n_ref_lesions", "reference lesions", "lesion",
           definition='26-connected components of the reference of at least eval.lesion_min_voxels voxels'),
    Metric("n_pred_lesions", "predicted lesions", "lesion",
           definition='26-connected components of the prediction of at least eval.lesion_min_voxels voxels'),
    Metric("n_detected", "detected lesions", "lesion",
           definition=('reference lesions covered by predicted voxels on at least max(1 voxel, '
                       'eval.lesion_min_overlap × their size) (ISBI 2015)')),
    Metric("n_pred_tp", "true predicted lesions", "lesion",
           definition='predicted lesions covered by reference voxels by the same rule'),
    Metric("ltpr", "LTPR", "lesion", report=7,
           definition='n_detected / n_ref_lesions: lesion-wise sensitivity'),
    Metric("lfdr", "LFDR", "lesion", lower_is_better=True, report=8,
           definition=('(n_pred_lesions − n_pred_tp) / n_pred_lesions: the share of predicted lesions that are '
                       "false (ISBI's LFPR)")),
    Metric("lesion_f1", "lesion F1", "lesion", report=6,
           definition='2 · LTPR · (1 − LFDR) / (LTPR + 1 − LFDR)'),
    Metric("cpm", "CPM", "froc", report=9, tested=True,
           definition=("the lesion sensitivity averaged over 1/8, 1/4, 1/2, 1, 2, 4 and 8 false-positive lesions per "
                       "scan (LUNA16's competition performance metric), each read at the curve threshold of the "
                       "evaluated cases' FROC with the most sensitivity within that many (froc.csv); per case, the "
                       "case's sensitivity at those seven thresholds")),
    Metric("ltpr_1fp", "LTPR at 1 FP/scan", "froc", tested=True,
           definition=("lesion sensitivity at the curve threshold with the most sensitivity among those with at most "
                       "one false-positive lesion per scan over the evaluated cases")),
    Metric("ece", "ECE", "calibration", lower_is_better=True, report=11,
           definition=('Σ_b (n_b / N) |observed_b − mean probability_b| over eval.calibration_bins equal-width '
                       'probability bins of the brain voxels')),
    # the SD of the case's probabilities over its brain voxels: near 0 on every case, a collapsed run (`collapse`)
    Metric("prob_sd", "probability SD", "calibration", pooled=False,
           definition=('the SD of the probabilities over the brain voxels; under 0.01 on every case with lesion: '
                       'a collapsed run')),
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
