"""The report's FROC figure: lesion sensitivity against false-positive lesions per scan, one line per
configuration (`evaluation.froc`; the runs' `metrics/froc.csv`, averaged over seeds at each threshold)."""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

from lesionseg.evaluation.froc import FP_RATES, VERDICT_FP_RATE
from lesionseg.evaluation.nanstats import mean_over_cases
from lesionseg.reporting.figures import cases_text, colours, of_run_tables, seeds_text

X_LIMITS = (1 / 16, 32)  # LUNA16's rates 1/8 … 8 with room either side; the curve runs on beyond


def froc_curves(groups: list[dict], rows: list[dict]) -> bytes:
    """One panel: each configuration's FROC (mean over seeds of the mean sensitivity and of the false
    positives per scan at each threshold, drawn as its `frontier`), the CPM in the legend, the CPM's rates as
    dotted lines."""
    return of_run_tables(groups, rows, "froc", (7.5, 5.6), _panel)


def frontier(fp: np.ndarray, sensitivity: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The curve as the operating points read it: at each number of false positives per scan, the most
    sensitivity of any threshold with at most that many (a step that never falls; the false positives need
    not fall as the threshold rises, so the thresholds' own order would zig-zag)."""
    known = ~np.isnan(sensitivity)
    order = np.argsort(fp[known], kind="stable")
    return fp[known][order], np.maximum.accumulate(sensitivity[known][order])


def _panel(fig: Figure, groups: list[dict], rows: list[dict], curves: list[list[dict]]) -> None:
    ax = fig.add_subplot()
    for rate in FP_RATES:
        ax.axvline(rate, color="0.75" if rate != VERDICT_FP_RATE else "0.45", lw=0.9, ls=":", zorder=0)
    for group, row, these, colour in zip(groups, rows, curves, colours(len(groups))):
        if not these:
            continue
        fp = np.mean([c["fp_per_scan"] for c in these], axis=0)
        sensitivity = mean_over_cases([c["sensitivity"] for c in these])
        fp, best = frontier(fp, sensitivity)
        ax.step(fp, best, where="post", color=colour, lw=2, marker=".", ms=5,
                label=f"{group['label']}   CPM {row['cpm']:.3f}")
    ax.set_xscale("log", base=2)
    ax.set_xticks(FP_RATES, ["1/8", "1/4", "1/2", "1", "2", "4", "8"])
    ax.set(xlim=X_LIMITS, ylim=(0, 1.02), xlabel="false-positive lesions per scan (mean over cases)",
           ylabel="lesion sensitivity (mean over cases with lesions)",
           title=f"FROC on the {cases_text(groups, rows)} ({seeds_text(groups)})\n"
                 "thresholds 0.01 … 0.99, 0.995 … 1; dotted: the CPM's rates (darker: 1 per scan)")
    ax.grid(alpha=0.3, which="both", axis="y")
    ax.legend(loc="lower right", framealpha=0.95)
