"""`stats.json`: each configuration against its baseline (`report.baseline`, default β = 0.5, the soft Dice
loss) — Wilcoxon signed-rank and a bootstrap 95 % CI of the mean paired difference (`lesionseg.reporting.stats`)
in the registry's tested metrics (DSC, F2, sensitivity) at the configured threshold, and in DSC and F2 at
the tuned thresholds (`dsc_tuned`, `f2_tuned`), per case averaged over seeds, Holm-adjusted per metric.
A comparison with a configuration whose runs collapsed (`lesionseg.evaluation.collapse`) says so in its
verdict, and a note names those configurations. Each comparison carries its `planning` (`reporting.planning`):
the smallest difference its cases could detect, and the cases (and seeds) `report.planning_difference` needs.
The per-case values come with the runs (`cases`, `tuned_cases`: `lesionseg.reporting.results`); no file is read here.
"""

from __future__ import annotations

import math

from lesionseg.evaluation import registry
from lesionseg.evaluation.collapse import RULE
from lesionseg.reporting import planning, stats
from lesionseg.reporting.aggregate import (
    baseline_of,
    collapsed_runs,
    setting_text,
)

# tested metric → (the tuned threshold it is read at, None: eval.threshold; column of the run's cases.csv)
TESTED = {**{m: (None, m) for m in registry.names(tested=True)},
          **{f"{m}_tuned": (m, m) for m in registry.names(tuned=True)}}
TESTED_METRICS = tuple(TESTED)
DEFAULT_BASELINE = {"loss.beta": 0.5}  # report.baseline's default: the soft Dice loss of the β sweep


def seed_values(group: dict, tuned: str | None, column: str) -> list[dict[str, float]]:
    """One `{case: value}` of a `cases.csv` column per seed of the group: at the configured threshold (`tuned`
    None, the runs' `cases`) or at the one tuned for metric `tuned` (their `tuned_cases`)."""
    tables = [r["cases"] if tuned is None else r["tuned_cases"][tuned] for r in group["runs"]]
    return [{c: v.get(column, math.nan) for c, v in table.items()} for table in tables]


def compare_to_baseline(groups: list[dict], n_boot: int = stats.N_BOOT, seed: int = 0,
                        baseline: dict | None = None, planning_difference: float = 0.01) -> dict:
    """Each group against its baseline group (`report.baseline`, default β = 0.5: the soft Dice loss), the
    one holding the baseline's values with the same other swept values: `stats.json`."""
    baseline = DEFAULT_BASELINE if baseline is None else baseline
    name = setting_text(baseline)
    method = _method(baseline, n_boot, seed, planning_difference)
    comparisons: list[dict] = []
    notes: list[str] = []
    collapsed = {g["label"]: (len(flagged), len(g["runs"])) for g in groups if (flagged := collapsed_runs(g))}
    per_seed = {id(g): {m: seed_values(g, tuned, column) for m, (tuned, column) in TESTED.items()} for g in groups}
    values = {key: {m: stats.case_means(tables) for m, tables in by_metric.items()}
              for key, by_metric in per_seed.items()}
    pairs = {}  # id(comparison) → (the baseline group, the group): for its planning
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
            pairs[id(comparisons[-1])] = (base, group)
    for m in TESTED_METRICS:
        these = [c for c in comparisons if c["metric"] == m]
        for c, p in zip(these, stats.holm([c["p"] for c in these])):
            c["p_holm"] = p
            c["verdict"] = stats.verdict(c, p)
            if c["p"] is not None and min(c["n_seeds"], c["n_seeds_baseline"]) < 2:
                c["verdict"] += " (one seed: training noise not assessed)"
            if {c["label"], c["baseline"]} & collapsed.keys():
                c["verdict"] += " (includes collapsed runs)"
            base, group = pairs[id(c)]
            _, before, after = stats.paired(values[id(base)][m], values[id(group)][m])
            c["planning"] = planning.plan(after - before, len(these), planning_difference,
                                          (per_seed[id(base)][m], per_seed[id(group)][m]))
    tested = {label for c in comparisons for label in (c["label"], c["baseline"])}
    if involved := [(label, k, n) for label, (k, n) in collapsed.items() if label in tested]:
        runs = "; ".join(f"{label}: {k} of {n} run{'s' if n > 1 else ''}" for label, k, n in involved)
        notes.append(f"The tests include collapsed runs ({runs}; collapsed: {RULE}): a difference with them may "
                     "say only that a run failed.")
    return {"method": method, "baseline": name, "comparisons": comparisons, "notes": notes}


def _method(baseline: dict, n_boot: int, seed: int, planning_difference: float) -> dict:
    """`stats.json`'s account of how the comparisons were made."""
    return {
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
        "planning": f"{planning.POWER:.0%} power of the Wilcoxon test at level alpha / m (m: the comparisons of "
                    "the metric, Holm's strictest step) for normal differences with the observed SD: simulated "
                    f"against the exact test up to {planning.EXACT_MAX} cases, the paired t-test at n x 3/pi "
                    f"cases above (reporting/planning.py); difference planned for: {planning_difference} "
                    "(report.planning_difference)",
    }
