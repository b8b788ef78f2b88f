"""The sweep report: which β, and is the difference real?

`write_report(sweep_dir)` reads the finished runs (`lesionseg.reporting.results`; the others are listed as missing,
with where each stands: not started, interrupted after iteration N, …)
and writes `report/`:

- `summary.csv` — one row per configuration (per β; seeds are repeats, averaged over). First `beta,
  alpha` (and any other swept key), then `dsc, f2, sensitivity, precision, apr` — each the mean over seeds
  of the run's per-case mean (each patient counts once) — `apr_pooled` (all test voxels as one
  precision-recall curve), `n_cases`, `n_seeds`, `lesion_f1, ltpr, lfdr, hd95_mm` (per-case means too);
  then per metric `<m>_sd_cases` (the runs' SD over cases, averaged over seeds), `<m>_sd_seeds` (SD over
  seeds of the per-case mean; NaN with one seed) and `<m>_n` (cases where the metric is defined, the
  fewest over seeds); then pooled figures `<m>_pooled` (summed counts over all test cases), their SD over
  seeds, and the lesion-wise sensitivity per lesion-size bin, pooled (`ltpr_<bin>_pooled`, `n_ref_<bin>`).
  Operating points (`lesionseg.evaluation.operating_points`): `threshold_dsc`, `threshold_f2` (each run's threshold
  tuned on its validation cases, mean over seeds) and the test metrics at them, `<m>_at_tdsc` and
  `<m>_at_tf2` (per-case means, with `_sd_cases`); `ece` (per-case mean) and `ece_pooled` (calibration);
  last, `dsc_best_on_test`, `f2_best_on_test`: the maximum of the test curve over the threshold grid
  (chosen on the test cases: an optimistic bound, never a result).
- `stats.json` — each β against the Dice baseline β = 0.5 (`lesionseg.reporting.stats`): Wilcoxon signed-rank and
  bootstrap 95 % CI of the mean paired difference in DSC, F2 and sensitivity at the configured threshold,
  and in DSC and F2 at the tuned thresholds (`dsc_tuned`, `f2_tuned`), per case averaged over seeds.
- `summary.md`, `report.html` (self-contained, figures embedded), and the figures of `lesionseg.reporting.figures`.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

import numpy as np

from lesionseg.config import expand_sweep
from lesionseg.errors import LesionsegError
from lesionseg.evaluation import registry
from lesionseg.evaluation.nanstats import defined, mean_over_cases, nan_mean, nan_sd
from lesionseg.evaluation.operating_points import CURVE_METRICS, TUNED_METRICS
from lesionseg.files import write_atomic, write_json, write_text
from lesionseg.reporting import figures, stats
from lesionseg.reporting.render import Table, render_html, render_markdown_table
from lesionseg.reporting.results import (
    collect_runs,
    read_calibration,
    read_cases,
    read_pr_curve,
    read_threshold_curves,
    run_state,
    sweep_config,
)
from lesionseg.runs import sweep_run

TABLE_METRICS = registry.names(report=True)  # the per-case table's metric columns, in order
METRICS = tuple(m for m in TABLE_METRICS if registry.BY_NAME[m].headline)  # dsc, f2, sensitivity, precision, apr
LESION_METRICS = tuple(m for m in TABLE_METRICS if m not in METRICS)
POOLED_METRICS = tuple(m for m in TABLE_METRICS if registry.BY_NAME[m].pooled)
# tested metric → (the tuned threshold it is read at, None: eval.threshold; column of the run's cases.csv)
TESTED = {**{m: (None, m) for m in registry.names(tested=True)},
          **{f"{m}_tuned": (m, m) for m in registry.names(tuned=True)}}
TESTED_METRICS = tuple(TESTED)
REPEAT_KEYS = ("seed",)  # swept keys that are repeats, averaged over, not rows of their own
DEFAULT_BASELINE = {"loss.beta": 0.5}  # report.baseline's default: the soft Dice loss of the β sweep
LABELS = {m: registry.label(m) for m in (*TABLE_METRICS, *TESTED_METRICS)}
OUT_OF_FOLD = ", each scored once by the fold model that did not train on it"
HEADLINE_FIGURE = "metrics_vs_beta.png"  # shown with the answer, at the top of report.html
# captions; {kind}: "test", or "out-of-fold" in a cross-validated sweep; {per}: "β" or "configuration"
FIGURES = {
    "pr_curves.png": "Pooled precision-recall curves, one per {per}; the dot on each is the operating point at "
                     "the threshold.",
    "metrics_vs_beta.png": "Sensitivity, precision, DSC and F2 (per-case means over the {kind} cases) per {per}, "
                           "with error bars.",
    "lesion_size.png": "Lesion-wise sensitivity (LTPR, pooled over the {kind} cases) per reference lesion size, "
                       "per {per}.",
    "metrics_vs_threshold.png": "DSC, F2, sensitivity and precision (per-case means over the {kind} cases) "
                                "against the threshold, per {per}; circles: the configured threshold, triangles: "
                                "the thresholds tuned on validation (DSC panel: DSC's, F2 panel: F2's).",
    "reliability.png": "Reliability diagram per {per} over the brain voxels of the {kind} cases (equal-width bins; "
                       "observed lesion frequency against mean predicted probability), ECE in the legend.",
}


# ----------------------------------------------------------------------------------------- aggregation
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


def summarise(runs: list[dict]) -> list[dict]:
    """`summary.csv` rows, one per configuration (β), sorted by β."""
    return [summary_row(g) for g in group_runs(runs)]


# ---------------------------------------------------------------------------------------- statistics
def compare_to_baseline(groups: list[dict], n_boot: int = stats.N_BOOT, seed: int = 0,
                        baseline: dict | None = None) -> dict:
    """Each group against its baseline group (`report.baseline`, default β = 0.5: the soft Dice loss), the
    one holding the baseline's values with the same other swept values: `stats.json`."""
    baseline = DEFAULT_BASELINE if baseline is None else baseline
    name = setting_text(baseline)
    method = {
        "baseline": "beta = 0.5, alpha = 0.5 (soft Dice loss)" if baseline == DEFAULT_BASELINE else
                    ", ".join(f"{k} = {v}" for k, v in baseline.items()) + " (report.baseline)",
        "pairing": "per test case, each case's value averaged over the seeds first; pairs where both are defined",
        "test": "Wilcoxon signed-rank, two-sided, zero differences dropped (scipy.stats.wilcoxon)",
        "min_pairs": stats.MIN_PAIRS,
        "multiple_comparisons": "Holm-Bonferroni over the betas, per metric" if baseline == DEFAULT_BASELINE
                                else "Holm-Bonferroni over the configurations, per metric",
        "ci": f"{stats.LEVEL:.0%} percentile bootstrap of the mean difference (beta - baseline), "
              f"B = {n_boot}, numpy Generator seed {seed}",
        "claim": f"a difference only when the Holm-adjusted p < {stats.ALPHA} and the CI excludes 0",
    }
    comparisons: list[dict] = []
    notes: list[str] = []
    values = {id(g): {m: stats.case_means([{c: v.get(column, math.nan) for c, v in read_cases(r["dir"], tuned).items()}
                                           for r in g["runs"]]) for m, (tuned, column) in TESTED.items()}
              for g in groups}
    for group in groups:
        base = baseline_of(group, groups, baseline)
        if base is group:
            continue
        if base is None:
            notes.append(f"{group['label']}: no finished {name} baseline to compare with")
            continue
        for m in TESTED_METRICS:
            result = stats.compare(values[id(base)][m], values[id(group)][m], n_boot=n_boot, seed=seed)
            comparisons.append({"label": group["label"], "beta": group["beta"], "alpha": group["alpha"],
                                **{k.split(".")[-1]: v for k, v in group["extra"].items()},
                                "metric": m, "baseline": base["label"], "n_seeds": len(group["runs"]),
                                "n_seeds_baseline": len(base["runs"]), **result})
    for m in TESTED_METRICS:
        these = [c for c in comparisons if c["metric"] == m]
        for c, p in zip(these, stats.holm([c["p"] for c in these])):
            c["p_holm"] = p
            c["verdict"] = stats.verdict(c, p)
            if c["p"] is not None and min(c["n_seeds"], c["n_seeds_baseline"]) < 2:
                c["verdict"] += " (one seed: training noise not assessed)"
    return {"method": method, "baseline": name, "comparisons": comparisons, "notes": notes}


# -------------------------------------------------------------------------------------------- tables
def fmt(value, metric: str = "") -> str:
    """How every number of the report is shown (Markdown, HTML and the tests use this)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, (int, np.integer)):
        return str(value)
    return f"{value:.{registry.decimals(metric)}f}"


def _best(rows: list[dict], column: str, metric: str) -> float | None:
    values = defined(r[column] for r in rows)
    if not values:
        return None
    return min(values) if registry.lower_is_better(metric) else max(values)


def tables(rows: list[dict], extra_keys: list[str], shows_beta: bool = True, kind: str = "test") -> list[Table]:
    """The report's tables, the same in Markdown and HTML; the best value per column in bold. The first
    columns tell the configurations apart: β and α (`shows_beta`), then the other swept keys. `kind`: the
    scored cases are `test` cases, or `out-of-fold` cases of a cross-validated sweep."""
    keys = [*(["beta", "alpha"] if shows_beta else []), *extra_keys]

    def _key_cells(row: dict, extra_keys: list[str]) -> list[tuple[str, bool]]:
        return [*((f"{row[k]:g}", False) for k in keys[:len(keys) - len(extra_keys)]),
                *((str(row[k]), False) for k in extra_keys)]

    n_cases = min(r["n_cases"] for r in rows)
    seeds = sorted({r["n_seeds"] for r in rows})
    seeds_text = "/".join(map(str, seeds))

    def cells(row, metric, column, spread=None, n=None, mark_best=True):
        value = row[column]
        text = fmt(value, metric)
        if spread is not None and not math.isnan(row[spread]):
            text += f" ± {fmt(row[spread], metric)}"
        if n is not None and row[n] < row["n_cases"]:
            text += f" (n={row[n]})"
        best = _best(rows, column, metric) if mark_best else None
        return text, best is not None and value == best

    def tuned_cells(row, m):
        return [cells(row, m, f"{m}_at_t{m}", f"{m}_at_t{m}_sd_cases")]

    per_case = Table(
        title=f"Per-case means over the {kind} cases ± SD over cases",
        note=(f"Each patient counts once ({n_cases} {kind} cases{OUT_OF_FOLD if kind != 'test' else ''}; {seeds_text} seed(s) per configuration, averaged "
              "over). "
              "`(n=k)`: the metric is defined on k cases only. 'at tuned t': at each run's threshold tuned on "
              "its validation cases (next table). Lower is better for LFDR, HD95 and ECE; best in bold."),
        columns=[*keys, *(LABELS[m] for m in METRICS), *(LABELS[f"{m}_tuned"] for m in TUNED_METRICS),
                 *(LABELS[m] for m in LESION_METRICS), "n cases", "n seeds"],
        rows=[[*_key_cells(r, extra_keys), *(cells(r, m, m, f"{m}_sd_cases", f"{m}_n") for m in METRICS),
               *(c for m in TUNED_METRICS for c in tuned_cells(r, m)),
               *(cells(r, m, m, f"{m}_sd_cases", f"{m}_n") for m in LESION_METRICS),
               (str(r["n_cases"]), False), (str(r["n_seeds"]), False)] for r in rows],
    )
    threshold = rows[0].get("threshold", 0.5)

    operating = Table(
        title="Operating points: the configured threshold against thresholds tuned on validation",
        note=(f"Per-case means over the {kind} cases. Left: every run at p ≥ {threshold:g}. Then each run's "
              "threshold maximising the mean DSC (t_DSC) or F2 (t_F2) over its own validation cases — chosen "
              f"without the {kind} cases; ± SD over seeds — and the {kind} metrics at it. If a larger β only moved "
              "the operating point, the tuned columns of all β would agree."),
        columns=[*keys, f"DSC @{threshold:g}", f"F2 @{threshold:g}", f"sens. @{threshold:g}",
                 f"prec. @{threshold:g}", "t_DSC", "DSC @t_DSC", "sens. @t_DSC", "prec. @t_DSC",
                 "t_F2", "F2 @t_F2", "sens. @t_F2", "prec. @t_F2"],
        rows=[[*_key_cells(r, extra_keys), *(cells(r, m, m) for m in CURVE_METRICS),
               *(c for tuned in TUNED_METRICS for c in (
                   cells(r, "", f"threshold_{tuned}", f"threshold_{tuned}_sd_seeds", mark_best=False),
                   *(cells(r, m, f"{m}_at_t{tuned}") for m in (tuned, "sensitivity", "precision"))))]
              for r in rows],
    )
    pooled = Table(
        title=f"Pooled over all {kind} voxels and lesions",
        note=f"Counts summed over the {kind} cases, then each metric computed once (APR: one precision-recall curve "
             "over every voxel); mean over seeds (± SD over seeds when there are several).",
        columns=[*keys, *(LABELS[m] for m in POOLED_METRICS)],
        rows=[[*_key_cells(r, extra_keys),
               *(cells(r, m, f"{m}_pooled", f"{m}_pooled_sd_seeds") for m in POOLED_METRICS)] for r in rows],
    )
    out = [per_case, operating, pooled]
    if max(seeds) >= 2:
        out.append(Table(
            title="Repeats: mean ± SD over seeds of each run's per-case mean",
            note="How much the figure moves when only the seed (initialisation, patches, split) changes.",
            columns=[*keys, *(LABELS[m] for m in TABLE_METRICS), "n seeds"],
            rows=[[*_key_cells(r, extra_keys), *(cells(r, m, m, f"{m}_sd_seeds") for m in TABLE_METRICS),
                   (str(r["n_seeds"]), False)] for r in rows],
        ))
    return out


def ensemble_table(groups: list[dict], rows: list[dict], extra_keys: list[str], shows_beta: bool) -> Table:
    """The datalist's test cases predicted by each configuration's ensemble of fold models (`lesionseg.experiment.cv`)."""
    keys = [*(["beta", "alpha"] if shows_beta else []), *extra_keys]
    body = []
    for group, row in zip(groups, rows):
        summaries = [r["ensemble"] for r in group["runs"] if r.get("ensemble")]
        if not summaries:
            continue
        cells = [(f"{row[k]:g}" if k in ("beta", "alpha") else str(row[k]), False) for k in keys]
        for m in METRICS:
            values = [s["per_case"][m]["mean"] for s in summaries]
            sd = nan_sd(values)
            cells.append((fmt(nan_mean(values), m) + ("" if math.isnan(sd) else f" ± {fmt(sd, m)}"), False))
        cells += [(str(summaries[0]["n_cases"]), False), (str(len(summaries)), False)]
        body.append(cells)
    return Table(
        title="Test cases, predicted by the ensemble of the fold models",
        note=("The datalist's test cases (none of them in any fold), each predicted by the mean probability of "
              "the configuration's fold models (with test-time flips when eval.tta), at the configured "
              "threshold; per-case means, ± SD over seeds when there are several. The rows above score the "
              "training cases out of fold."),
        columns=[*keys, *(LABELS[m] for m in METRICS), "n cases", "n seeds"], rows=body)


def stats_table(result: dict, kind: str = "test") -> Table:
    rows = []
    for c in result["comparisons"]:
        diff = f"{c['mean_diff']:+.3f} [{c['ci_low']:+.3f}, {c['ci_high']:+.3f}]" if c["n"] else "n/a"
        rows.append([(c["label"], False), (LABELS[c["metric"]], False),
                     (c["verdict"], "than baseline" in c["verdict"]), (str(c["n"]), False),
                     (f"{c['n_seeds_baseline']} / {c['n_seeds']}", False), (fmt(c["mean_baseline"]), False),
                     (fmt(c["mean_other"]), False), (diff, False),
                     ("n/a" if c["p"] is None else f"{c['p']:.3g}", False),
                     ("n/a" if c["p_holm"] is None else f"{c['p_holm']:.3g}", False)])
    beta_story = result.get("baseline", "β = 0.5") == "β = 0.5"
    other = "β" if beta_story else "configuration"
    return Table(
        title="Against the Dice baseline (β = 0.5)" if beta_story else f"Against the baseline ({result['baseline']})",
        note=(f"Paired by {kind} case (each case's value averaged over seeds first). Difference = {other} − baseline, "
              f"mean with {stats.LEVEL:.0%} bootstrap CI; Wilcoxon signed-rank p, Holm-adjusted over the "
              f"{'βs' if beta_story else 'configurations'}. "
              f"No test with fewer than {stats.MIN_PAIRS} non-zero differences; a difference is claimed only "
              f"when the adjusted p < {stats.ALPHA} and the CI excludes 0."),
        columns=["configuration", "metric", "verdict", "n cases", f"seeds (base / {other})", "baseline", other,
                 "difference [95% CI]", "p (Wilcoxon)", "p (Holm)"],
        rows=rows,
    )


def tuning_verdict(rows: list[dict], labels: list[str], stats_result: dict, kind: str = "test") -> list[str]:
    """Sentences answering "is a larger β more than a lower threshold?" from the table and the tests.

    Each row may carry `<m>_best_on_test`: the maximum of its test curve over the threshold grid, an
    optimistic bound (the threshold is chosen on the test cases) that shows what tuning could reach."""
    if all(math.isnan(r[f"{m}_at_t{m}"]) for r in rows for m in TUNED_METRICS):
        return ["No run has thresholds tuned on validation cases (no validation cases?): the question cannot "
                "be answered by this sweep."]
    lines = []
    for m in TUNED_METRICS:
        fixed, tuned = [r[m] for r in rows], [r[f"{m}_at_t{m}"] for r in rows]
        parts = []
        for name, values in ((f"at p ≥ {rows[0]['threshold']:g}", fixed), ("at the tuned thresholds", tuned)):
            finite = defined(values)
            if not finite:
                continue
            best = max(finite)
            who = ", ".join(lab for lab, v in zip(labels, values) if v == best)
            parts.append(f"{name} the best is {who} ({fmt(best)}), range over the configurations "
                         f"{fmt(max(finite) - min(finite))}")
        oracle = defined(r.get(f"{m}_best_on_test", math.nan) for r in rows)
        if len(oracle) == len(rows) > 1:
            parts.append(f"at each configuration's best threshold for the {kind} cases themselves (optimistic) "
                         f"{fmt(min(oracle))}–{fmt(max(oracle))}, range {fmt(max(oracle) - min(oracle))}")
        claims = {key: [c["label"] + ": " + c["verdict"] for c in stats_result["comparisons"]
                        if c["metric"] == key and "than baseline" in c["verdict"]] for key in (m, f"{m}_tuned")}
        if len(rows) > 1:
            parts.append(f"against {stats_result.get('baseline', 'β = 0.5')}, {len(claims[m])} significant "
                         "difference(s) at the fixed threshold "
                         f"and {len(claims[f'{m}_tuned'])} at the tuned thresholds"
                         + (f" ({'; '.join(claims[f'{m}_tuned'])})" if claims[f"{m}_tuned"] else ""))
        lines.append(f"{LABELS[m]}: " + "; ".join(parts) + ".")
    return lines


def answer(rows: list[dict], labels: list[str], stats_result: dict, kind: str = "test") -> list[str]:
    """The report's opening, one sentence per headline metric: the best configuration, with its SD over
    cases, and what the paired tests against the baseline found (where the metric is tested)."""
    n_cases = min(r["n_cases"] for r in rows)
    lines = []
    for m in METRICS:  # the headline metrics
        values = [r[m] for r in rows]
        finite = defined(values)
        if not finite:
            lines.append(f"{LABELS[m]}: defined on no case.")
            continue
        best = min(finite) if registry.lower_is_better(m) else max(finite)
        winners = [i for i, v in enumerate(values) if v == best]
        text = (f"{LABELS[m]}: best with {' and '.join(labels[i] for i in winners)} ({fmt(best, m)} ± "
                f"{fmt(rows[winners[0]][f'{m}_sd_cases'], m)} SD over {n_cases} {kind} cases)")
        tested = [c for c in stats_result["comparisons"] if c["metric"] == m]
        if tested:
            bases = sorted({c["baseline"] for c in tested})
            said = []
            for word in ("higher", "lower"):
                who = [c["label"] for c in tested if c["verdict"].startswith(word)]
                if who:
                    said.append(f"{word} with {', '.join(who)}")
            rest = [c["label"] for c in tested if not c["verdict"].startswith(("higher", "lower"))]
            if rest:
                said.append(f"no significant difference with {', '.join(rest)}")
            text += (f"; against {bases[0] if len(bases) == 1 else 'their baselines'} (paired by case, "
                     f"Holm-adjusted): {'; '.join(said)}")
        lines.append(text + ".")
    if len(rows) > 1 and min(r["n_seeds"] for r in rows) < 2:
        lines.append("One seed per configuration: a difference may be training noise, which one seed cannot "
                     "measure (sweep `seed` to measure it).")
    return lines


def to_csv(rows: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def best_betas(rows: list[dict], labels: list[str]) -> dict[str, str]:
    """The configuration with the best per-case mean of each metric (ties: all of them)."""
    out = {}
    for m in TABLE_METRICS:
        best = _best(rows, m, m)
        if best is not None:
            out[m] = ", ".join(lab for r, lab in zip(rows, labels) if r[m] == best)
    return out


def to_markdown(name: str, all_tables: list[Table], best: dict[str, str], stats_result: dict,
                missing: list[str], verdict: list[str], verdict_title: str = "", opening: list[str] = (),
                captions: dict[str, str] | None = None, kind: str = "test") -> str:
    captions = captions or FIGURES
    lines = [f"# Sweep report: {name}", ""]
    if opening:
        lines += [f"## {ANSWER_TITLE}", "", *(f"- {v}" for v in opening), "",
                  f"![{captions[HEADLINE_FIGURE]}]({HEADLINE_FIGURE})", ""]
    lines += [f"## {verdict_title or VERDICT_TITLE}", "", *(f"- {v}" for v in verdict), ""]
    for table in all_tables:
        lines += [f"## {table.title}", "", table.note, "", render_markdown_table(table), ""]
    lines += ["Best per-case mean: " + "; ".join(f"{LABELS[m]} {b}" for m, b in best.items()) + ".", ""]
    st = stats_table(stats_result, kind)
    lines += [f"## {st.title}", "", st.note, ""]
    base = stats_result.get("baseline", "β = 0.5")
    lines += [render_markdown_table(st) if st.rows else f"No comparison (no configuration besides a {base} baseline).",
              ""]
    lines += [f"- {note}" for note in stats_result["notes"]]
    lines += ["## Figures", "", *(f"- `{f}`: {text}" for f, text in captions.items()), ""]
    if missing:
        lines += [f"Missing (not finished, not counted): {', '.join(missing)}", ""]
    return "\n".join(lines).rstrip("\n") + "\n"


ANSWER_TITLE = "The answer"
VERDICT_TITLE = "Is a larger β more than a lower threshold?"
VERDICT_TITLE_OTHER = "Is a different configuration more than a different threshold?"


def write_report(sweep_dir: Path, n_boot: int = stats.N_BOOT) -> Path:
    """Write the report of the finished runs of a sweep into `<sweep_dir>/report/`; return that folder."""
    from lesionseg.experiment.cv import merge_finished

    sweep_dir = Path(sweep_dir)
    cfg = sweep_config(sweep_dir)
    merge_finished(sweep_dir, expand_sweep(cfg) if cfg.sweep else [], cfg.sweep, progress=False)  # CV folds
    runs, missing_ids = collect_runs(sweep_dir)
    states = {rid: run_state(sweep_run(sweep_dir, rid)) for rid in missing_ids}
    missing = [f"{rid} ({state})" for rid, state in states.items()]
    if not runs:
        raise LesionsegError(f"no finished runs in {sweep_dir / 'runs'}; nothing to report")
    baseline = cfg.report.baseline
    groups = group_runs(runs)
    rows = [summary_row(g) for g in groups]
    labels = [g["label"] for g in groups]
    extra_keys = [k.split(".")[-1] for k in groups[0]["extra"]]
    shows_beta = beta_shown(groups)
    stats_result = compare_to_baseline(groups, n_boot=n_boot, baseline=baseline)
    kind = figures.case_kind(groups)
    all_tables = tables(rows, extra_keys, shows_beta, kind)
    if any(r.get("ensemble") for r in runs):
        all_tables.append(ensemble_table(groups, rows, extra_keys, shows_beta))
    title = VERDICT_TITLE if shows_beta else VERDICT_TITLE_OTHER
    best = best_betas(rows, labels)
    for group, row in zip(groups, rows):  # the best each configuration reaches on its test curve (optimistic)
        curves = [c for c in (read_threshold_curves(r["dir"]) for r in group["runs"]) if c is not None]
        for m in TUNED_METRICS:
            finite = defined(mean_over_cases([c[m] for c in curves])) if curves else []
            row[f"{m}_best_on_test"] = max(finite) if finite else math.nan
    verdict = tuning_verdict(rows, labels, stats_result, kind)
    opening = answer(rows, labels, stats_result, kind)
    captions = {f: text.format(kind=kind, per="β" if shows_beta else "configuration") for f, text in FIGURES.items()}
    pngs = figures.draw_all(groups, rows, lambda r: read_pr_curve(r["dir"]), size_bins(runs[0]["summary"]))
    pngs["metrics_vs_threshold.png"] = figures.metrics_vs_threshold(groups, rows,
                                                                    lambda r: read_threshold_curves(r["dir"]))
    pngs["reliability.png"] = figures.reliability(groups, rows, lambda r: read_calibration(r["dir"]))

    out = sweep_dir / "report"
    write_text(out / "summary.csv", to_csv(rows))
    write_json(out / "stats.json", {**stats_result, "best": best, "missing": missing_ids, "missing_state": states,
                                    "n_runs": len(runs), "answer": opening, "threshold_tuning": verdict})
    for fname, png in pngs.items():
        write_atomic(out / fname, lambda tmp, png=png: tmp.write_bytes(png))
    write_text(out / "summary.md", to_markdown(sweep_dir.name, all_tables, best, stats_result, missing, verdict,
                                               title, opening, captions, kind))
    config = (sweep_dir / "sweep.yaml").read_text(encoding="utf-8")
    page = render_html(f"Sweep report: {sweep_dir.name}", [*all_tables, stats_table(stats_result, kind)], best,
                       {f: (pngs[f], text) for f, text in captions.items()}, config, missing,
                       stats_result["notes"], LABELS, verdict=(title, verdict),
                       opening=(ANSWER_TITLE, opening, HEADLINE_FIGURE))
    write_text(out / "report.html", page)
    return out
