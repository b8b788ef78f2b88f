"""The report's tables, the same in Markdown and HTML (`lesionseg.reporting.render`): per-case means,
operating points, pooled figures, repeats, the fold ensemble and the statistics; `fmt`, how every number
of the report is shown.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from lesionseg.evaluation import matching, registry
from lesionseg.evaluation.nanstats import defined, nan_mean, nan_sd
from lesionseg.evaluation.operating_points import CURVE_METRICS, TUNED_METRICS
from lesionseg.reporting import stats
from lesionseg.reporting.aggregate import (
    LESION_METRICS,
    METRICS,
    POOLED_METRICS,
    TABLE_METRICS,
)
from lesionseg.reporting.compare import TESTED_METRICS
from lesionseg.reporting.render import Table

LABELS = {m: registry.label(m) for m in (*TABLE_METRICS, *TESTED_METRICS)}
OUT_OF_FOLD = ", each scored once by the fold model that did not train on it"


def fmt(value, metric: str = "") -> str:
    """How every number of the report is shown (Markdown, HTML and the tests use this)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, (int, np.integer)):
        return str(value)
    return f"{value:.{registry.decimals(metric)}f}"


def best_value(rows: list[dict], column: str, metric: str) -> float | None:
    values = defined(r[column] for r in rows)
    if not values:
        return None
    return min(values) if registry.lower_is_better(metric) else max(values)


@dataclass
class _Cells:
    """How the rows' values become cells: the configuration's key cells first, then values (bold where the
    best of their column), `± spread` and `(n=k)` where a metric is defined on fewer cases."""

    rows: list[dict]
    keys: list[str]  # β and α (where shown), then the other swept keys
    extra_keys: list[str]

    def key_cells(self, row: dict) -> list[tuple[str, bool]]:
        numeric = self.keys[:len(self.keys) - len(self.extra_keys)]
        return [*((f"{row[k]:g}", False) for k in numeric), *((str(row[k]), False) for k in self.extra_keys)]

    def __call__(self, row: dict, metric: str, column: str, spread: str | None = None, n: str | None = None,
                 mark_best: bool = True) -> tuple[str, bool]:
        value = row[column]
        text = fmt(value, metric)
        if spread is not None and not math.isnan(row[spread]):
            text += f" ± {fmt(row[spread], metric)}"
        if n is not None and row[n] < row["n_cases"]:
            text += f" (n={row[n]})"
        best = best_value(self.rows, column, metric) if mark_best else None
        return text, best is not None and value == best


def tables(rows: list[dict], extra_keys: list[str], shows_beta: bool = True, kind: str = "test",
           lesions: str = "") -> list[Table]:
    """The report's tables, the same in Markdown and HTML; the best value per column in bold. The first
    columns tell the configurations apart: β and α (`shows_beta`), then the other swept keys. `kind`: the
    scored cases are `test` cases, or `out-of-fold` cases of a cross-validated sweep; `lesions`: how the
    lesion figures were matched (`lesion_definition`), said in the notes of the tables that show them."""
    cells = _Cells(rows, [*(["beta", "alpha"] if shows_beta else []), *extra_keys], extra_keys)
    out = [_per_case_table(cells, kind, lesions), _operating_table(cells, kind), _pooled_table(cells, kind, lesions)]
    if max(r["n_seeds"] for r in rows) >= 2:
        out.append(_repeats_table(cells))
    return out


def lesion_definition(runs: list[dict]) -> str:
    """How the runs' lesion figures were matched (`eval.lesion_matching`, recorded in each `summary.json`; runs
    evaluated before it was recorded matched as ISBI 2015)."""
    names = {run["summary"].get("lesion_matching", "isbi2015") for run in runs}
    if len(names) > 1:
        return "lesions matched per configuration (eval.lesion_matching: " + ", ".join(sorted(names)) + ")"
    return matching.DESCRIPTIONS[names.pop()]


def _per_case_table(cells: _Cells, kind: str, lesions: str) -> Table:
    rows = cells.rows
    seeds_text = "/".join(map(str, sorted({r["n_seeds"] for r in rows})))
    return Table(
        title=f"Per-case means over the {kind} cases ± SD over cases",
        note=(f"Each patient counts once ({min(r['n_cases'] for r in rows)} {kind} cases"
              f"{OUT_OF_FOLD if kind != 'test' else ''}; {seeds_text} seed(s) per configuration, averaged over). "
              "`(n=k)`: the metric is defined on k cases only. 'at tuned t': at each run's threshold tuned on "
              "its validation cases (next table). Lower is better for LFDR, HD95 and ECE; best in bold."
              + (f" Lesion F1, LTPR and LFDR: {lesions}." if lesions else "")),
        columns=[*cells.keys, *(LABELS[m] for m in METRICS), *(LABELS[f"{m}_tuned"] for m in TUNED_METRICS),
                 *(LABELS[m] for m in LESION_METRICS), "n cases", "n seeds"],
        rows=[[*cells.key_cells(r), *(cells(r, m, m, f"{m}_sd_cases", f"{m}_n") for m in METRICS),
               *(cells(r, m, f"{m}_at_t{m}", f"{m}_at_t{m}_sd_cases") for m in TUNED_METRICS),
               *(cells(r, m, m, f"{m}_sd_cases", f"{m}_n") for m in LESION_METRICS),
               (str(r["n_cases"]), False), (str(r["n_seeds"]), False)] for r in rows],
    )


def _operating_table(cells: _Cells, kind: str) -> Table:
    threshold = cells.rows[0].get("threshold", 0.5)
    return Table(
        title="Operating points: the configured threshold against thresholds tuned on validation",
        note=(f"Per-case means over the {kind} cases. Left: every run at p ≥ {threshold:g}. Then each run's "
              "threshold maximising the mean DSC (t_DSC) or F2 (t_F2) over its own validation cases — chosen "
              f"without the {kind} cases; ± SD over seeds — and the {kind} metrics at it. If a larger β only "
              "moved the operating point, the tuned columns of all β would agree."),
        columns=[*cells.keys, f"DSC @{threshold:g}", f"F2 @{threshold:g}", f"sens. @{threshold:g}",
                 f"prec. @{threshold:g}", "t_DSC", "DSC @t_DSC", "sens. @t_DSC", "prec. @t_DSC",
                 "t_F2", "F2 @t_F2", "sens. @t_F2", "prec. @t_F2"],
        rows=[[*cells.key_cells(r), *(cells(r, m, m) for m in CURVE_METRICS),
               *(c for tuned in TUNED_METRICS for c in (
                   cells(r, "", f"threshold_{tuned}", f"threshold_{tuned}_sd_seeds", mark_best=False),
                   *(cells(r, m, f"{m}_at_t{tuned}") for m in (tuned, "sensitivity", "precision"))))]
              for r in cells.rows],
    )


def _pooled_table(cells: _Cells, kind: str, lesions: str) -> Table:
    return Table(
        title=f"Pooled over all {kind} voxels and lesions",
        note=f"Counts summed over the {kind} cases, then each metric computed once (APR: one precision-recall "
             "curve over every voxel); mean over seeds (± SD over seeds when there are several)."
             + (f" Lesions: {lesions}." if lesions else ""),
        columns=[*cells.keys, *(LABELS[m] for m in POOLED_METRICS)],
        rows=[[*cells.key_cells(r), *(cells(r, m, f"{m}_pooled", f"{m}_pooled_sd_seeds") for m in POOLED_METRICS)]
              for r in cells.rows],
    )


def _repeats_table(cells: _Cells) -> Table:
    return Table(
        title="Repeats: mean ± SD over seeds of each run's per-case mean",
        note="How much the figure moves when only the seed (initialisation, patches, split) changes.",
        columns=[*cells.keys, *(LABELS[m] for m in TABLE_METRICS), "n seeds"],
        rows=[[*cells.key_cells(r), *(cells(r, m, m, f"{m}_sd_seeds") for m in TABLE_METRICS),
               (str(r["n_seeds"]), False)] for r in cells.rows],
    )


def ensemble_table(groups: list[dict], rows: list[dict], extra_keys: list[str], shows_beta: bool) -> Table:
    """The datalist's test cases predicted by each configuration's ensemble of fold models
    (`lesionseg.experiment.cv`)."""
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
                     ("n/a" if c["p_holm"] is None else f"{c['p_holm']:.3g}", False), *_planning_cells(c)])
    beta_story = result.get("baseline", "β = 0.5") == "β = 0.5"
    other = "β" if beta_story else "configuration"
    difference = next((c["planning"]["difference"] for c in result["comparisons"] if "planning" in c), 0.01)
    return Table(
        title="Against the Dice baseline (β = 0.5)" if beta_story else f"Against the baseline ({result['baseline']})",
        note=(f"Paired by {kind} case (each case's value averaged over seeds first). Difference = {other} − baseline, "
              f"mean with {stats.LEVEL:.0%} bootstrap CI; Wilcoxon signed-rank p, Holm-adjusted over the "
              f"{'βs' if beta_story else 'configurations'}. "
              f"No test with fewer than {stats.MIN_PAIRS} non-zero differences; a difference is claimed only "
              f"when the adjusted p < {stats.ALPHA} and the CI excludes 0. Planning (80 % power at α / m, m the "
              f"comparisons of the metric): the smallest difference these {kind} cases could detect, and the "
              f"{kind} cases needed to detect {difference:g} (report.planning_difference) with the spread of the "
              "differences seen here."),
        columns=["configuration", "metric", "verdict", "n cases", f"seeds (base / {other})", "baseline", other,
                 "difference [95% CI]", "p (Wilcoxon)", "p (Holm)", "detectable (80 %)",
                 f"cases for {difference:g}"],
        rows=rows,
    )


def _planning_cells(comparison: dict) -> list[tuple[str, bool]]:
    """The smallest detectable difference and the cases needed (`reporting.planning`), or n/a."""
    plan = comparison.get("planning", {})
    if "sd_diff" not in plan:
        return [("n/a", False), ("n/a", False)]
    detectable = "none" if math.isinf(plan["min_detectable"]) else f"{plan['min_detectable']:.3f}"
    needed = "> 1,000,000" if plan["cases_needed"] is None else f"{plan['cases_needed']:,}"
    return [(detectable, False), (needed, False)]
