"""The sweep report's figures, as PNG bytes (matplotlib, Agg canvas; no pyplot state).

- `pr_curves`: the pooled precision-recall curve of each run (all test voxels together), one colour per
  β, with the run's operating point at the threshold (pooled recall and precision) as a dot.
- `metrics_vs_beta`: sensitivity and precision, DSC and F2 (per-case means) against β, with error bars.
- `lesion_size`: lesion-wise sensitivity (LTPR, lesions pooled over the test cases) per size bin per β.
- `metrics_vs_threshold`: DSC, F2, sensitivity and precision against the threshold, per β, with the
  configured and the validation-tuned operating points marked.
- `reliability`: the reliability diagram of each β (brain voxels, pooled over cases and seeds) and the
  number of voxels per probability bin.

Each β has the same colour in every figure (viridis, dark = low β). The figures draw from data, reading no
file: the groups of runs (`lesionseg.reporting.aggregate.group_runs`), each run carrying its tables
(`pr_curve`, `threshold_curves`, `calibration`: `lesionseg.reporting.results`), and the rows of `summary.csv`.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from lesionseg.evaluation import registry
from lesionseg.evaluation.nanstats import mean_over_cases
from lesionseg.evaluation.operating_points import CURVE_METRICS, TUNED_METRICS
from lesionseg.reporting.aggregate import beta_shown, case_kind

RC = {"font.size": 11, "axes.titlesize": 12, "axes.labelsize": 11, "legend.fontsize": 10}
DPI = 130


def colours(n: int) -> list:
    """One colour per configuration; viridis without its pale yellow end, which vanishes on white."""
    cmap = matplotlib.colormaps["viridis"]
    return [cmap(x) for x in (np.linspace(0.0, 0.85, n) if n > 1 else [0.3])]


def _png(fig: Figure) -> bytes:
    FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI)
    return buffer.getvalue()


def _no_data(fig: Figure, text: str) -> bytes:
    """The figure holding only `text`: what there is no data for."""
    ax = fig.add_subplot()
    ax.text(0.5, 0.5, text, ha="center", va="center")
    ax.set_axis_off()
    return _png(fig)


def _nan_to_zero(values) -> np.ndarray:
    return np.nan_to_num(np.asarray(values, dtype=float), nan=0.0)


def cases_text(groups: list[dict], rows: list[dict]) -> str:
    """`10 test cases`, or `40 out-of-fold cases` in a cross-validated sweep (each case scored by the fold
    model that did not train on it)."""
    return f"{rows[0]['n_cases']} {case_kind(groups)} cases"


def seeds_text(groups: list[dict]) -> str:
    seeds = sorted({len(g["runs"]) for g in groups})
    return f"{'/'.join(map(str, seeds))} seed{'s' if max(seeds) > 1 else ''} per {_per(groups)}"


def _per(groups: list[dict]) -> str:
    """What one configuration is called: `β` in a β sweep, else `configuration`."""
    return "β" if beta_shown(groups) else "configuration"


def _iso_dsc(ax) -> None:
    """Faint lines of equal DSC (= F1 of precision and recall) to read the operating points against."""
    for f in (0.2, 0.4, 0.6, 0.8):
        r = np.linspace(f / (2 - f) + 1e-3, 1.0, 200)
        ax.plot(r, f * r / (2 * r - f), color="0.8", lw=0.8, ls=":", zorder=0)
        ax.text(f + 0.01, f - 0.01, f"DSC {f:g}", color="0.5", fontsize=8, ha="left", va="top")


def pr_curves(groups: list[dict], rows: list[dict]) -> bytes:
    with matplotlib.rc_context(RC):
        fig = Figure(figsize=(7.5, 6.2), layout="constrained")
        ax = fig.add_subplot()
        _iso_dsc(ax)
        threshold = groups[0]["runs"][0]["summary"].get("threshold", 0.5)
        several = max(len(g["runs"]) for g in groups) > 1
        for group, row, colour in zip(groups, rows, colours(len(groups))):
            for i, run in enumerate(group["runs"]):
                curve = run["pr_curve"]
                label = f"{group['label']}   APR {row['apr_pooled']:.3f}" if i == 0 else None
                ax.plot(curve["recall"], curve["precision"], color=colour, lw=1.3 if several else 2.0,
                        alpha=0.75 if several else 1.0, label=label)
                pooled = run["summary"].get("pooled", {})
                point = (pooled.get("sensitivity", math.nan), pooled.get("precision", math.nan))
                if not any(math.isnan(v) for v in point):
                    ax.plot(*point, "o", ms=9, mfc=colour, mec="black", mew=1.3, zorder=5)
        handles, _ = ax.get_legend_handles_labels()
        handles.append(Line2D([], [], marker="o", ls="", ms=9, mfc="white", mec="black", mew=1.3,
                              label=f"operating point (p ≥ {threshold:g})"))
        ax.legend(handles=handles, loc="lower left", framealpha=0.95)
        ax.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="recall (sensitivity)", ylabel="precision",
               title=f"Pooled precision-recall over all {case_kind(groups)} voxels\n"
                     f"({cases_text(groups, rows)}, {seeds_text(groups)}; one line per run)")
        ax.grid(alpha=0.3)
        return _png(fig)


SERIES = (("sensitivity", "tab:blue", "^"), ("precision", "tab:orange", "v"), ("dsc", "tab:green", "o"),
          ("f2", "tab:purple", "s"))


def _x_positions(groups: list[dict]) -> tuple[np.ndarray, list[str], str]:
    """β on the x axis when the configurations differ by β only; the swept value when they differ by one
    numeric key only (a learning rate, γ); otherwise one slot per configuration."""
    betas = [g["beta"] for g in groups]
    if len(set(betas)) == len(betas) and not any(g["extra"] for g in groups):
        return np.array(betas, dtype=float), [f"{b:g}" for b in betas], "β (false-negative weight; α = 1 − β)"
    keys = {k for g in groups for k in g["swept"]}
    if len(keys) == 1:
        (key,) = keys
        values = [g["swept"].get(key) for g in groups]
        numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
        if numeric and len(set(values)) == len(values):
            return np.array(values, dtype=float), [f"{v:g}" for v in values], key
    return np.arange(len(groups), dtype=float), [g["label"] for g in groups], "configuration"


def metrics_vs_beta(groups: list[dict], rows: list[dict]) -> bytes:
    x, ticks, xlabel = _x_positions(groups)
    by_seed = max(len(g["runs"]) for g in groups) >= 2
    bars = (f"error bars: ± SD over seeds of the per-case mean ({seeds_text(groups)})" if by_seed else
            f"error bars: ± SD over the {cases_text(groups, rows)} (one seed per {_per(groups)})")
    span = (x.max() - x.min()) if x.size > 1 else 1.0
    with matplotlib.rc_context(RC):
        fig = Figure(figsize=(10, 4.8), layout="constrained")
        axes = fig.subplots(1, 2, sharey=True)
        for ax, series, title in ((axes[0], SERIES[:2], "Sensitivity and precision"),
                                  (axes[1], SERIES[2:], "Overlap: DSC and F2")):
            for j, (metric, colour, marker) in enumerate(series):
                mean = np.array([r[metric] for r in rows], dtype=float)
                err = _nan_to_zero([r[f"{metric}_{'sd_seeds' if by_seed else 'sd_cases'}"] for r in rows])
                shift = (j - 0.5) * 0.012 * span  # keeps the two series' error bars apart
                ax.errorbar(x + shift, mean, yerr=err, color=colour, marker=marker, ms=8, lw=2, capsize=4,
                            label=registry.label(metric))
            ax.set_title(title)
            ax.set_xticks(x, ticks)
            ax.set_xlabel(xlabel)
            ax.grid(alpha=0.3)
            ax.legend(loc="best", framealpha=0.95)
        axes[0].set_ylabel(f"per-case mean over {cases_text(groups, rows)}")
        axes[0].set_ylim(0, 1.05)
        fig.suptitle(f"Test metrics against {'β' if xlabel.startswith('β') else xlabel} — {bars}")
        return _png(fig)


def _bin_label(name: str) -> str:
    unit = " mL" if name.endswith(("ml", "ml+")) else " voxels"
    core = name.rstrip("+").removesuffix("ml").removesuffix("vox")
    if name.endswith("+"):
        return f"≥ {core}{unit}"
    low, high = core.split("-")
    return f"{low}–{high}{unit}"


def lesion_size(groups: list[dict], rows: list[dict], bins: list[str]) -> bytes:
    with matplotlib.rc_context(RC):
        fig = Figure(figsize=(9, 5.2), layout="constrained")
        if not bins:
            return _no_data(fig, "no lesion-size results in the runs' summary.json")
        ax = fig.add_subplot()
        by_seed = max(len(g["runs"]) for g in groups) >= 2
        x = np.arange(len(bins), dtype=float)
        width = 0.8 / len(groups)
        for i, (group, row, colour) in enumerate(zip(groups, rows, colours(len(groups)))):
            heights = np.array([row[f"ltpr_{b}_pooled"] for b in bins], dtype=float)
            err = _nan_to_zero([row[f"ltpr_{b}_pooled_sd_seeds"] for b in bins]) if by_seed else None
            shown = ~np.isnan(heights)  # a bin without reference lesions has no LTPR: no bar, not a zero
            bars = ax.bar((x - 0.4 + (i + 0.5) * width)[shown], heights[shown], width * 0.92,
                          yerr=None if err is None else err[shown], capsize=3, color=colour, edgecolor="black",
                          lw=0.5, label=group["label"])
            # Values on the bars: a true 0 (nothing detected) must not look like a missing bar.
            ax.bar_label(bars, fmt="%.2f", fontsize=8, padding=2, rotation=90 if len(groups) > 3 else 0)
        counts = []
        for b in bins:
            n = sorted({row[f"n_ref_{b}"] for row in rows})
            counts.append(str(n[0]) if len(n) == 1 else f"{n[0]}–{n[-1]}")
            if n[-1] == 0:
                ax.text(x[len(counts) - 1], 0.03, "no reference\nlesions", ha="center", fontsize=9, color="0.4")
        ax.set_xticks(x, [f"{_bin_label(b)}\n{c} reference lesions" for b, c in zip(bins, counts)])
        ax.set(ylim=(0, 1.15), yticks=np.linspace(0, 1, 6), xlabel="reference lesion volume",
               ylabel="LTPR (detected / reference lesions)")
        fig.suptitle(f"Lesion detection by size, lesions pooled over {cases_text(groups, rows)}"
                     + (f" (± SD over seeds, {seeds_text(groups)})" if by_seed else ""))
        ax.grid(axis="y", alpha=0.3)
        ax.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncols=min(len(groups), 6), frameon=False)
        return _png(fig)


def draw_all(groups: list[dict], rows: list[dict], bins: list[str]) -> dict[str, bytes]:
    """File name → PNG bytes of every figure of the report; `bins`: the lesion-size bin names."""
    return {
        "pr_curves.png": pr_curves(groups, rows),
        "metrics_vs_beta.png": metrics_vs_beta(groups, rows),
        "lesion_size.png": lesion_size(groups, rows, bins),
        "metrics_vs_threshold.png": metrics_vs_threshold(groups, rows),
        "reliability.png": reliability(groups, rows),
    }


def of_run_tables(groups: list[dict], rows: list[dict], key: str, figsize: tuple[float, float],
                   draw: Callable[[Figure, list[dict], list[dict], list[list[dict]]], None]) -> bytes:
    """A figure of a table that each run may have (`key`: `threshold_curves`, `calibration`, `froc`; None in a run
    evaluated before lesionseg wrote `metrics/<key>.csv`): `draw(fig, groups, rows, tables)`, `tables`
    holding per group the tables of its runs that have one; a figure saying so when no run has any."""
    with matplotlib.rc_context(RC):
        fig = Figure(figsize=figsize, layout="constrained")
        tables = [[r[key] for r in g["runs"] if r[key] is not None] for g in groups]
        if not any(tables):
            return _no_data(fig, f"no {key}.csv in the runs (evaluated before lesionseg had them)")
        draw(fig, groups, rows, tables)
        return _png(fig)


def metrics_vs_threshold(groups: list[dict], rows: list[dict]) -> bytes:
    """Four panels (DSC, F2, sensitivity, precision) against the threshold; a line per β (mean over seeds)."""
    return of_run_tables(groups, rows, "threshold_curves", (11, 8.2), _threshold_panels)


def _threshold_panels(fig: Figure, groups: list[dict], rows: list[dict], curves: list[list[dict]]) -> None:
    axes = fig.subplots(2, 2, sharex=True, sharey=True).ravel()
    for ax, metric in zip(axes, CURVE_METRICS):
        for group, row, these, colour in zip(groups, rows, curves, colours(len(groups))):
            if not these:
                continue
            mean = mean_over_cases([c[metric] for c in these])  # over seeds; NaN where none defines it
            ax.plot(these[0]["threshold"], mean, color=colour, lw=2, label=group["label"])
            ax.plot(row["threshold"], row[metric], "o", ms=8, mfc=colour, mec="black", zorder=5)
            if metric in TUNED_METRICS and not math.isnan(row[f"threshold_{metric}"]):
                ax.plot(row[f"threshold_{metric}"], row[f"{metric}_at_t{metric}"], "^", ms=10, mfc=colour,
                        mec="black", zorder=6)
        ax.set_title(registry.label(metric))
        ax.grid(alpha=0.3)
    handles, _ = axes[0].get_legend_handles_labels()
    handles += [Line2D([], [], marker="o", ls="", ms=8, mfc="white", mec="black",
                       label=f"configured threshold ({rows[0]['threshold']:g})"),
                Line2D([], [], marker="^", ls="", ms=10, mfc="white", mec="black",
                       label="tuned on validation (DSC / F2 panels)")]
    axes[0].legend(handles=handles, loc="lower left", framealpha=0.95, fontsize=9)
    for ax in axes[2:]:
        ax.set_xlabel("threshold (lesion when p ≥ threshold)")
    for ax in axes[::2]:
        ax.set_ylabel("per-case mean")
    axes[0].set(xlim=(0, 1), ylim=(0, 1.02))
    fig.suptitle(f"Test metrics against the threshold ({cases_text(groups, rows)}, {seeds_text(groups)})")


def reliability(groups: list[dict], rows: list[dict]) -> bytes:
    """Reliability diagram (observed lesion frequency against mean probability per bin) and bin counts."""
    return of_run_tables(groups, rows, "calibration", (11, 5.2), _reliability_panels)


def _reliability_panels(fig: Figure, groups: list[dict], rows: list[dict], tables: list[list[dict]]) -> None:
    diagram, counts = fig.subplots(1, 2, width_ratios=(1.15, 1))
    diagram.plot([0, 1], [0, 1], color="0.5", ls="--", lw=1, label="perfect calibration")
    for group, row, these, colour in zip(groups, rows, tables, colours(len(groups))):
        if not these:
            continue
        n = sum(b["n_voxels"] for b in these)  # bins summed over seeds: pooled voxels
        prob = sum(np.nan_to_num(b["confidence"]) * b["n_voxels"] for b in these)
        pos = sum(np.nan_to_num(b["observed"]) * b["n_voxels"] for b in these)
        filled = n > 0
        diagram.plot(prob[filled] / n[filled], pos[filled] / n[filled], "o-", color=colour, lw=1.8, ms=6,
                     label=f"{group['label']}   ECE {row['ece_pooled']:.4f}")
        edges = np.append(these[0]["bin_low"], these[0]["bin_high"][-1])
        counts.stairs(np.where(filled, n, np.nan), edges, color=colour, lw=1.8)
    diagram.set(xlim=(0, 1), ylim=(0, 1), xlabel="mean predicted lesion probability (bin)",
                ylabel="observed lesion frequency", title="Reliability (brain voxels, pooled)")
    diagram.grid(alpha=0.3)
    diagram.legend(loc="upper left", framealpha=0.95, fontsize=9)
    counts.set(yscale="log", xlim=(0, 1), xlabel="predicted lesion probability",
               ylabel="voxels in the bin", title="How many voxels each bin holds")
    counts.grid(alpha=0.3)
    fig.suptitle(f"Calibration on the {cases_text(groups, rows)} ({seeds_text(groups)}; "
                 "equal-width bins)")
