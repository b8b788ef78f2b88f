"""From finished runs to the rows of `summary.csv`: runs grouped into configurations (seeds are repeats,
averaged over), one row per configuration.

Each row: first `beta, alpha` (and any other swept key), then `dsc, f2, sensitivity, precision, apr` —
each the mean over seeds of the run's per-case mean (each patient counts once) — `apr_pooled` (all test
voxels as one precision-recall curve), `n_cases`, `n_seeds`, `lesion_f1, ltpr, lfdr, hd95_mm, ece`
(per-case means too); then per metric `<m>_sd_cases` (the runs' SD over cases, averaged over seeds),
`<m>_sd_seeds` (SD over seeds of the per-case mean; NaN with one seed) and `<m>_n` (cases where the metric
is defined, the fewest over seeds); then pooled figures `<m>_pooled` (summed counts over all test cases),
their SD over seeds, and the lesion-wise sensitivity per lesion-size bin, pooled (`ltpr_<bin>_pooled`,
`n_ref_<bin>`). Operating points (`lesionseg.evaluation.operating_points`): `threshold_dsc`,
`threshold_f2` (each run's threshold tuned on its validation cases, mean over seeds) and the test metrics
at them, `<m>_at_tdsc` and `<m>_at_tf2` (per-case means, with `_sd_cases`); last, `dsc_best_on_test`,
`f2_best_on_test`: the maximum of the test curve (the runs' `threshold_curves`, mean over seeds) over the
threshold grid (chosen on the test cases: an optimistic bound, never a result). The metrics and their order
come from `lesionseg.evaluation.registry`. The runs arrive read (`lesionseg.reporting.results`): no file is
read here.
"""

from __future__ import annotations

import math

from lesionseg.evaluation import registry
from lesionseg.evaluation.nanstats import defined, mean_over_cases, nan_mean, nan_sd
from lesionseg.evaluation.operating_points import CURVE_METRICS, TUNED_METRICS

TABLE_METRICS = registry.names(report=True)  # the per-case table's metric columns, in order
METRICS = tuple(m for m in TABLE_METRICS if registry.BY_NAME[m].headline)  # dsc, f2, sensitivity, precision, apr
LESION_METRICS = tuple(m for m in TABLE_METRICS if m not in METRICS)
POOLED_METRICS = tuple(m for m in TABLE_METRICS if registry.BY_NAME[m].pooled)
REPEAT_KEYS = ("seed",)  # swept keys that are repeats, averaged over, not rows of their own


def group_runs(runs: list[dict]) -> list[dict]:
    """Runs grouped by their swept values other than repeats: `{"beta", "alpha", "extra", "swept", "values",
    "label", "runs"}` (`swept`: the group's swept values; `values`: its first run's whole config, dotted
    keys), sorted by β, α, then the other values. Labels name β where β (or α) is swept, or where nothing
    else is (the β sweep); otherwise the swept keys only (`name = dice`)."""
    groups: dict[tuple, dict] = {}
    for run in runs:
        swept = {k: v for k, v in run["assignment"].items() if k not in REPEAT_KEYS}
        extra = {k: v for k, v in swept.items() if k not in ("loss.beta", "loss.alpha")}
        key = (run["beta"], round(run["alpha"], 6), tuple(extra.items()))
        group = groups.setdefault(key, {"beta": run["beta"], "alpha": round(run["alpha"], 6), "extra": extra,
                                        "swept": swept, "values": run["values"], "runs": []})
        group["runs"].append(run)
    ordered = [groups[k] for k in sorted(groups, key=lambda k: (k[0], k[1], str(k[2])))]
    shows_beta = beta_shown(ordered)
    for group in ordered:
        parts = []
        if shows_beta:
            parts.append(f"β = {group['beta']:g}")
            if not math.isclose(group["beta"] + group["alpha"], 1.0):
                parts.append(f"α = {group['alpha']:g}")
        parts += [f"{k.split('.')[-1]} = {v}" for k, v in group["extra"].items()]
        group["label"] = ", ".join(parts)
    return ordered


def beta_shown(groups: list[dict]) -> bool:
    """Whether the configurations are told apart by β (and α): β or α swept, or nothing else swept."""
    return any(k in ("loss.beta", "loss.alpha") for g in groups for k in g["swept"]) or not any(
        g["extra"] for g in groups)


def case_kind(groups: list[dict]) -> str:
    """What the scored cases are: `test`, or `out-of-fold` in a cross-validated sweep."""
    return "out-of-fold" if any(r.get("cross_validated") for g in groups for r in g["runs"]) else "test"


def setting_text(setting: dict) -> str:
    """`{"loss.beta": 0.5}` → `β = 0.5`, `{"loss.name": "dice"}` → `name = dice`."""
    return ", ".join("β = " + f"{v:g}" if k == "loss.beta" and isinstance(v, (int, float)) else
                     f"{k.split('.')[-1]} = {v}" for k, v in setting.items())


def baseline_of(group: dict, groups: list[dict], baseline: dict) -> dict | None:
    """The group `group` is compared with: the one whose config holds `baseline`'s values and agrees with
    `group` on every other swept key (None if no finished run is that)."""
    def holds(g: dict) -> bool:
        return all(g["values"].get(k) == v for k, v in baseline.items())

    others = {k: v for k, v in group["swept"].items() if k not in baseline and k != "loss.alpha"}
    return next((g for g in groups if holds(g) and
                 {k: g["swept"].get(k) for k in others} == others), None)


def collapsed_runs(group: dict) -> list[list[dict]]:
    """The flags of each run of the group that collapsed on its scored cases (`summary.json`'s `collapse`,
    `lesionseg.evaluation.collapse`); a run evaluated before the check (no `collapse`) counts as not flagged."""
    return [flags for run in group["runs"] if (flags := run["summary"].get("collapse"))]


def size_bins(summary: dict) -> list[str]:
    """Lesion-size bin names in the evaluator's order (from the pooled `n_ref_<bin>` keys)."""
    return [k[len("n_ref_"):] for k in summary.get("pooled", {}) if k.startswith("n_ref_") and k != "n_ref_lesions"]


def summary_row(group: dict) -> dict:
    """One row of `summary.csv` for a group of runs (the repeats of one configuration)."""
    members = [r["summary"] for r in group["runs"]]
    nan = {"mean": math.nan, "sd": math.nan, "n": 0}
    per_case = [{m: s["per_case"].get(m, nan) for m in TABLE_METRICS} for s in members]
    pooled = [s.get("pooled", {}) for s in members]
    row: dict = {"beta": group["beta"], "alpha": group["alpha"]}
    row.update({k.split(".")[-1]: v for k, v in group["extra"].items()})
    for m in METRICS:
        row[m] = nan_mean(pc[m]["mean"] for pc in per_case)
    row["apr_pooled"] = nan_mean(p.get("apr", math.nan) for p in pooled)
    row["n_cases"] = min(s["n_cases"] for s in members)
    row["n_seeds"] = len(members)
    for m in LESION_METRICS:
        row[m] = nan_mean(pc[m]["mean"] for pc in per_case)
    for m in TABLE_METRICS:
        row[f"{m}_sd_cases"] = nan_mean(pc[m]["sd"] for pc in per_case)
        row[f"{m}_sd_seeds"] = nan_sd(pc[m]["mean"] for pc in per_case)
        row[f"{m}_n"] = min(pc[m]["n"] for pc in per_case)
    for m in POOLED_METRICS:
        row[f"{m}_pooled"] = nan_mean(p.get(m, math.nan) for p in pooled)
        row[f"{m}_pooled_sd_seeds"] = nan_sd(p.get(m, math.nan) for p in pooled)
    row.update(operating_point_columns(group))
    for name in size_bins(members[0]):
        ltpr = [p[f"n_detected_{name}"] / p[f"n_ref_{name}"] if p.get(f"n_ref_{name}") else math.nan
                for p in pooled]
        row[f"ltpr_{name}_pooled"] = nan_mean(ltpr)
        row[f"ltpr_{name}_pooled_sd_seeds"] = nan_sd(ltpr)
        row[f"n_ref_{name}"] = pooled[0][f"n_ref_{name}"]
    row.update(best_on_test_columns(group))
    return row


def operating_point_columns(group: dict) -> dict:
    """Tuned thresholds (mean and SD over seeds) and the per-case means of the test metrics at them."""
    out: dict = {"threshold": group["runs"][0]["summary"].get("threshold", 0.5)}
    for tuned in TUNED_METRICS:
        thresholds = [r["thresholds"].get(tuned, {}).get("threshold", math.nan) for r in group["runs"]]
        out[f"threshold_{tuned}"] = nan_mean(thresholds)
        out[f"threshold_{tuned}_sd_seeds"] = nan_sd(thresholds)
        summaries = [r["tuned"][tuned] for r in group["runs"] if tuned in r["tuned"]]
        for m in CURVE_METRICS:
            cells = [s["per_case"].get(m, {}) for s in summaries]
            out[f"{m}_at_t{tuned}"] = nan_mean(c.get("mean", math.nan) for c in cells)
            out[f"{m}_at_t{tuned}_sd_cases"] = nan_mean(c.get("sd", math.nan) for c in cells)
    return out


def best_on_test_columns(group: dict) -> dict:
    """`<m>_best_on_test` per tuned metric: the best a configuration reaches on its test curve (mean over
    seeds) at any threshold of the grid — optimistic, the threshold chosen on the test cases; NaN where no
    run has `threshold_curves`."""
    curves = [r["threshold_curves"] for r in group["runs"] if r["threshold_curves"] is not None]
    out = {}
    for m in TUNED_METRICS:
        finite = defined(mean_over_cases([c[m] for c in curves])) if curves else []
        out[f"{m}_best_on_test"] = max(finite) if finite else math.nan
    return out
