"""The sweep report: which β, and is the difference real?

`write_report(sweep_dir)` reads each finished run once, every file of it the report needs
(`lesionseg.reporting.results`; the others are listed as missing, with where each stands: not started,
interrupted after iteration N, …), builds the rows (`aggregate`), compares each configuration with the
baseline (`compare`), words the answer (`answer`), lays out the tables (`tables`), draws the figures from the
runs and the rows (`figures`) and writes `report/`; the other reporting modules touch no file. `report/` holds:

- `summary.csv` — one row per configuration (`lesionseg.reporting.aggregate` lists the columns).
- `stats.json` — the paired statistics (`lesionseg.reporting.compare`), the answer, the threshold verdict and
  the configurations whose runs collapsed (`collapsed`: label → runs flagged, of how many, their flags).
- `summary.md`, `report.html` (self-contained, figures embedded; `lesionseg.reporting.render`), and the
  figures of `lesionseg.reporting.figures` and `froc_figure`.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

from lesionseg.errors import LesionsegError
from lesionseg.files import write_atomic, write_json, write_text
from lesionseg.reporting import figures, stats
from lesionseg.reporting.aggregate import (
    beta_shown,
    case_kind,
    collapsed_runs,
    group_runs,
    size_bins,
    summary_row,
)
from lesionseg.reporting.answer import (
    ANSWER_TITLE,
    VERDICT_TITLE,
    VERDICT_TITLE_OTHER,
    answer,
    best_betas,
    collapse_text,
    training_loss,
    tuning_verdict,
)
from lesionseg.reporting.case_pictures import cases_figure
from lesionseg.reporting.compare import compare_to_baseline
from lesionseg.reporting.froc_figure import froc_curves
from lesionseg.reporting.render import Table, render_html, render_markdown_table
from lesionseg.reporting.results import (
    collect_runs,
    run_state,
    sweep_config,
)
from lesionseg.reporting.tables import LABELS, ensemble_table, lesion_definition, stats_table, tables
from lesionseg.runs import SweepPaths

HEADLINE_FIGURE = "metrics_vs_beta.png"  # shown with the answer, at the top of report.html
FROC_FIGURE = "froc.png"  # after the lesion-size figure (froc_figure)
CASES_FIGURE = "cases.png"  # right after the answer (case_pictures; absent when the images are not at hand)
# captions; {kind}: "test", or "out-of-fold" in a cross-validated sweep; {per}: "β" or "configuration"
FIGURES = {
    "pr_curves.png": "Pooled precision-recall curves, one per {per}; the dot on each is the operating point at "
                     "the threshold.",
    "metrics_vs_beta.png": "Sensitivity, precision, DSC and F2 (per-case means over the {kind} cases) per {per}, "
                           "with error bars.",
    "lesion_size.png": "Lesion-wise sensitivity (LTPR, pooled over the {kind} cases) per reference lesion size, "
                       "per {per}; {lesions}.",
    "metrics_vs_threshold.png": "DSC, F2, sensitivity and precision (per-case means over the {kind} cases) "
                                "against the threshold, per {per}; circles: the configured threshold, triangles: "
                                "the thresholds tuned on validation (DSC panel: DSC's, F2 panel: F2's).",
    FROC_FIGURE: "FROC per {per}: lesion sensitivity (mean over the {kind} cases with lesions) against the mean "
                 "number of false-positive lesions per scan at the thresholds 0.01 … 0.99 and 0.995, 0.999, 0.9999, 1, averaged over seeds "
                 "at each threshold; {lesions}, the prediction post-processed as at the threshold. CPM: the "
                 "mean sensitivity at 1/8 … 8 false positives per scan (LUNA16's), each read at the curve "
                 "threshold with the most sensitivity within that many (froc.csv, summary.json's froc).",
    "reliability.png": "Reliability diagram per {per} over the brain voxels of the {kind} cases (equal-width bins; "
                       "observed lesion frequency against mean predicted probability), ECE in the legend.",
    CASES_FIGURE: "The {kind} cases with the lowest, median and highest DSC of each {per} (per-case means over the "
                  "seeds; the first seed's prediction), each cut through its largest reference lesion: yellow true "
                  "positive, blue false negative, vermillion false positive voxels on FLAIR.",
}


def to_csv(rows: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def to_markdown(name: str, all_tables: list[Table], best: dict[str, str], stats_result: dict,
                missing: list[str], verdict: list[str], verdict_title: str = "", opening: list[str] = (),
                captions: dict[str, str] | None = None, kind: str = "test", loss: str = "") -> str:
    captions = captions or FIGURES
    lines = [f"# Sweep report: {name}", "", *([loss, ""] if loss else [])]
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


def write_report(sweep_dir: Path, n_boot: int = stats.N_BOOT) -> Path:
    """Write the report of the finished runs of a sweep into `<sweep_dir>/report/`; return that folder. It
    only reads: the folds of a cross-validated configuration are merged before (`experiment.cv`)."""
    sweep_dir = Path(sweep_dir)
    cfg = sweep_config(sweep_dir)
    runs, missing_ids = collect_runs(sweep_dir, cfg)
    paths = SweepPaths(sweep_dir)
    states = {rid: run_state(paths.run(rid)) for rid in missing_ids}
    missing = [f"{rid} ({state})" for rid, state in states.items()]
    if not runs:
        raise LesionsegError(f"no finished runs in {paths.runs}; nothing to report")
    baseline = cfg.report.baseline
    groups = group_runs(runs)
    rows = [summary_row(g) for g in groups]
    labels = [g["label"] for g in groups]
    extra_keys = [k.split(".")[-1] for k in groups[0]["extra"]]
    shows_beta = beta_shown(groups)
    stats_result = compare_to_baseline(groups, n_boot=n_boot, baseline=baseline,
                                       planning_difference=cfg.report.planning_difference)
    kind = case_kind(groups)
    lesions = lesion_definition(runs)
    all_tables = tables(rows, extra_keys, shows_beta, kind, lesions)
    if any(r.get("ensemble") for r in runs):
        all_tables.append(ensemble_table(groups, rows, extra_keys, shows_beta))
    title = VERDICT_TITLE if shows_beta else VERDICT_TITLE_OTHER
    best = best_betas(rows, labels)
    verdict = tuning_verdict(rows, labels, stats_result, kind)
    froc_chosen_on = {r["summary"]["froc"]["verdict"]["chosen_on"] for r in runs if "froc" in r["summary"]}
    opening = answer(rows, labels, stats_result, kind, [collapse_text(g, kind) for g in groups], froc_chosen_on)
    collapsed = {g["label"]: {"runs": len(flagged), "of": len(g["runs"]), "flags": flagged}
                 for g in groups if (flagged := collapsed_runs(g))}
    loss = training_loss(cfg, cfg.sweep)
    pngs = figures.draw_all(groups, rows, size_bins(runs[0]["summary"]))
    pngs[FROC_FIGURE] = froc_curves(groups, rows)
    if (cases := cases_figure(groups, kind)) is not None:
        pngs[CASES_FIGURE] = cases
    captions = {f: text.format(kind=kind, per="β" if shows_beta else "configuration", lesions=lesions) + " " + loss
                for f, text in FIGURES.items() if f in pngs}

    out = paths.report
    write_text(paths.report_csv, to_csv(rows))
    write_json(paths.stats, {**stats_result, "best": best, "missing": missing_ids, "missing_state": states,
                                    "n_runs": len(runs), "answer": opening, "threshold_tuning": verdict,
                                    "collapsed": collapsed, "training_loss": loss})
    for fname, png in pngs.items():
        write_atomic(out / fname, lambda tmp, png=png: tmp.write_bytes(png))
    write_text(paths.summary, to_markdown(sweep_dir.name, all_tables, best, stats_result, missing, verdict,
                                               title, opening, captions, kind, loss))
    config = paths.config.read_text(encoding="utf-8")
    page = render_html(f"Sweep report: {sweep_dir.name}", [*all_tables, stats_table(stats_result, kind)], best,
                       {f: (pngs[f], text) for f, text in captions.items()}, config, missing,
                       stats_result["notes"], LABELS, verdict=(title, verdict),
                       opening=(ANSWER_TITLE, opening, HEADLINE_FIGURE), after_opening=CASES_FIGURE)
    write_text(paths.html, page)
    return out
