"""The report's sentences: the answer that opens it (the configurations whose runs collapsed, then per
headline metric the best configuration and what the paired tests found) and the threshold verdict ("is a
larger β more than a lower threshold?").
"""

from __future__ import annotations

import math

from lesionseg.evaluation.collapse import RULE
from lesionseg.evaluation.froc import VERDICT_FP_RATE
from lesionseg.evaluation.nanstats import defined
from lesionseg.evaluation.operating_points import TUNED_METRICS
from lesionseg.reporting.aggregate import (
    METRICS,
    TABLE_METRICS,
    collapsed_runs,
)
from lesionseg.reporting.stats import MIN_PAIRS
from lesionseg.reporting.tables import LABELS, best_value, fmt

ANSWER_TITLE = "The answer"
VERDICT_TITLE = "Is a larger β more than a lower threshold?"
VERDICT_TITLE_OTHER = "Is a different configuration more than a different threshold?"


LOSS_NAMES = {"tversky": "the Tversky index", "dice": "the soft Dice loss", "jaccard": "the soft Jaccard loss",
              "focal_tversky": "the focal Tversky loss", "ce": "binary cross-entropy",
              "wce": "weighted binary cross-entropy", "focal": "the focal loss", "dice_ce": "Dice + cross-entropy"}


def training_loss(cfg, swept: dict) -> str:
    """What the sweep's runs were trained with, for the report's captions: the loss (`loss.name`, with α and
    how the overlap is summed), any cross-entropy term beside it (`loss.ce_weight`, `loss.ce_warmup`) and deep
    supervision (`model.deep_supervision`), which every β shares and which a reader of a β study must know
    about. `swept`: the sweep's keys."""
    loss = cfg.loss
    if "loss.name" in swept:
        text = "the loss of each configuration (loss.name)"
    else:
        text = LOSS_NAMES[loss.name]
        if loss.name in ("tversky", "focal_tversky"):
            text += " (α = 1 − β" if loss.alpha is None and "loss.alpha" not in swept else " (α as configured"
            text += {True: ", summed over the batch)", "case": ", summed over each training case's patches)",
                     False: ", per patch)"}[loss.batch]
    if "loss.ce_weight" in swept:
        text += " + binary cross-entropy at each configuration's weight (loss.ce_weight)"
    elif "loss.name" in swept and loss.ce_weight == "auto":
        text += (" + 1 × binary cross-entropy for the losses without cross-entropy in them "
                 "(loss.ce_weight: auto)")
    elif loss.resolved_ce_weight > 0:
        text += f" + {loss.resolved_ce_weight:g} × binary cross-entropy (loss.ce_weight)"
    if loss.ce_warmup > 0:
        text += (f", with a cross-entropy warm-up over the first {loss.ce_warmup:.0%} of the iterations "
                 "(loss.ce_warmup)")
    if "model.deep_supervision" in swept:
        text += ", with or without deep supervision per configuration (model.deep_supervision)"
    elif cfg.model.deep_supervision:
        text += ", at the output and every lower decoder level (deep supervision, model.deep_supervision)"
    return f"Trained with {text}."


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


def collapse_text(group: dict, kind: str = "test") -> str:
    """`collapsed in 2 of 3 runs on the test cases: over-segmented (predicted 18.2×, 23.5× the reference
    lesion volume)`; empty when no run of the group collapsed (`aggregate.collapsed_runs`)."""
    flagged = collapsed_runs(group)
    if not flagged:
        return ""
    values: dict[str, list[float]] = {}
    for flags in flagged:
        for flag in flags:
            values.setdefault(flag["flag"], []).append(flag["value"])
    parts = []
    for name, these in values.items():
        text = name if len(these) == len(flagged) else f"{name} in {len(these)}"
        if name in ("over-segmented", "under-segmented"):
            text += f" (predicted {', '.join(f'{v:.3g}×' for v in these)} the reference lesion volume)"
        elif name == "near-constant probabilities":
            text += f" (probability SD at most {max(these):.2g})"
        parts.append(text)
    n = len(group["runs"])
    return f"collapsed {f'in {len(flagged)} of {n} runs ' if n > 1 else ''}on the {kind} cases: {'; '.join(parts)}"


def answer(rows: list[dict], labels: list[str], stats_result: dict, kind: str = "test",
           collapsed: list[str] | None = None, froc_chosen_on: set[str] | None = None) -> list[str]:
    """The report's opening: first the configurations whose runs collapsed (`collapsed`: `collapse_text`
    per row, empty where none did), then one sentence per headline metric: the best configuration, with its
    SD over cases, and what the paired tests against the baseline found (where the metric is tested). A
    configuration with collapsed runs is marked ⚠ wherever it is named."""
    n_cases = min(r["n_cases"] for r in rows)
    collapsed = collapsed or [""] * len(rows)
    mark = {lab: f"{lab} ⚠" if c else lab for lab, c in zip(labels, collapsed)}
    lines = [f"{lab} ⚠ {c}." for lab, c in zip(labels, collapsed) if c]
    if lines:
        lines.append(f"Every configuration collapsed ({RULE}): the best below is the best of failed runs."
                     if all(collapsed) else
                     f"Collapsed: {RULE}; the tables, figures and tests below include these runs.")
    for m in METRICS:  # the headline metrics
        best = best_value(rows, m, m)
        if best is None:
            lines.append(f"{LABELS[m]}: defined on no case.")
            continue
        winners = [i for i, r in enumerate(rows) if r[m] == best]
        text = (f"{LABELS[m]}: best with {' and '.join(mark[labels[i]] for i in winners)} ({fmt(best, m)} ± "
                f"{fmt(rows[winners[0]][f'{m}_sd_cases'], m)} SD over {n_cases} {kind} "
                f"case{'s' if n_cases != 1 else ''})")
        text += _tests_said([c for c in stats_result["comparisons"] if c["metric"] == m], mark, kind)
        lines.append(text + ".")
    lines += lesion_sentence(rows, labels, stats_result, kind, mark, froc_chosen_on)
    lines += planning_sentence(stats_result, kind)
    if len(rows) > 1 and min(r["n_seeds"] for r in rows) < 2:
        lines.append("One seed per configuration: a difference may be training noise, which one seed cannot "
                     "measure (sweep `seed` to measure it).")
    return lines


def _tests_said(tested: list[dict], mark: dict[str, str], kind: str) -> str:
    """`; against β = 0.5 (paired by case, Holm-adjusted): higher with …; no significant difference with …`:
    what the paired tests of one metric found (empty without tests)."""
    if not tested:
        return ""
    bases = sorted({mark.get(c["baseline"], c["baseline"]) for c in tested})
    said = []
    for word in ("higher", "lower"):
        who = [mark.get(c["label"], c["label"]) for c in tested if c["verdict"].startswith(word)]
        if who:
            said.append(f"{word} with {', '.join(who)}")
    rest = [mark.get(c["label"], c["label"]) for c in tested
            if not c["verdict"].startswith(("higher", "lower", "no test"))]
    if rest:
        said.append(f"no significant difference with {', '.join(rest)}")
    same = [c for c in tested if c["verdict"].startswith("no test") and c["n"] >= MIN_PAIRS
            and c.get("ci_low") == c.get("ci_high") == 0]  # identical on enough cases to say so
    if same:
        said.append(f"the same on every {kind} case with {', '.join(mark.get(c['label'], c['label']) for c in same)}")
    untested = [mark.get(c["label"], c["label"]) for c in tested if c["verdict"].startswith("no test") and c not in same]
    if untested:
        said.append(f"no test possible with {', '.join(untested)} ({tested[0]['n']} paired {kind} "
                    f"case{'s' if tested[0]['n'] != 1 else ''}; a test needs at least {MIN_PAIRS} with "
                    "differing values)")
    return (f"; against {bases[0] if len(bases) == 1 else 'their baselines'} (paired by case, "
            f"Holm-adjusted): {'; '.join(said)}")


def lesion_sentence(rows: list[dict], labels: list[str], stats_result: dict, kind: str = "test",
                    mark: dict[str, str] | None = None, chosen_on: set[str] | None = None) -> list[str]:
    """*The answer*'s lesion-level verdict beside the voxel one (`evaluation.froc`): the best CPM, and whether
    lesion sensitivity still differs from the baseline at the same number of false-positive lesions per scan
    (one), each run at the threshold chosen for it — `chosen_on`: the runs' `froc.verdict.chosen_on`."""
    best = best_value(rows, "cpm", "cpm")
    if best is None:
        return []
    mark = mark or {}
    who = " and ".join(mark.get(lab, lab) for r, lab in zip(rows, labels) if r["cpm"] == best)
    text = (f"Lesions (FROC: lesion sensitivity against false-positive lesions per scan): {LABELS['cpm']} best "
            f"with {who} ({fmt(best, 'cpm')})")
    tested = [c for c in stats_result["comparisons"] if c["metric"] == "ltpr_1fp"]
    if tested:
        if chosen_on == {"validation"}:
            where = "the threshold where its validation cases have at most that many"
        elif not chosen_on or chosen_on == {"these cases' curve"}:
            where = f"the threshold where its {kind} cases have at most that many"
        else:
            where = f"the threshold chosen on validation where it had validation cases, else on its {kind} cases"
        text += (f"; at {VERDICT_FP_RATE:g} false-positive lesion per scan (each run at {where}), lesion sensitivity"
                 + _tests_said(tested, mark, kind).replace("; against", " against", 1))
    return [text + "."]


def best_betas(rows: list[dict], labels: list[str]) -> dict[str, str]:
    """The configuration with the best per-case mean of each metric (ties: all of them)."""
    out = {}
    for m in TABLE_METRICS:
        best = best_value(rows, m, m)
        if best is not None:
            out[m] = ", ".join(lab for r, lab in zip(rows, labels) if r[m] == best)
    return out


def planning_sentence(stats_result: dict, kind: str = "test") -> list[str]:
    """*The answer*'s study size, for the first tested metric (DSC): the cases each comparison would need to
    detect `report.planning_difference` with 80 % power, the cases the sweep had and the smallest difference
    they could detect, and with several seeds how much of the noise is training noise (`reporting.planning`)."""
    tested = [c for c in stats_result["comparisons"] if c.get("planning")]
    if not tested:
        return []
    metric = tested[0]["metric"]
    these = [c for c in tested if c["metric"] == metric]
    plan = these[0]["planning"]
    if planned := [c for c in these if "sd_diff" in c["planning"]]:  # comparisons without spread are left out
        these, plan = planned, planned[0]["planning"]
    n = plan["n"]
    head = (f"Study size ({LABELS[metric]}, {plan['power_target']:.0%} power, Holm level α / m = "
            f"{plan['alpha']:.3g}): ")
    if "sd_diff" not in plan:
        return [head + f"{plan['note']}, so no plan is possible; add {kind} cases (or cross-validate: every "
                "training case becomes a test case)."]
    needed = [f"≈ {_count(c['planning']['cases_needed'])} for {c['label']} against {c['baseline']}" for c in these]
    detectable = [c["planning"]["min_detectable"] for c in these]
    shown = [fmt(d, metric) for d in detectable if math.isfinite(d)]
    text = (head + f"to detect a difference of {plan['difference']:g} you would need {', '.join(needed)} "
            f"({kind} cases, by the spread of the paired differences seen here); this sweep had {n}")
    text += (f", enough to detect differences of {min(shown)}–{max(shown)}" if len(set(shown)) > 1 else
             f", enough to detect a difference of {shown[0]}" if shown else
             ", too few for the test to detect any difference at this level")
    shares = [c["planning"]["seed_share"] for c in these if math.isfinite(c["planning"].get("seed_share", math.nan))]
    seeds = [c["planning"]["seeds_needed"] for c in these if c["planning"].get("seeds_needed")]
    if shares:
        text += (f"; training noise (seeds) is {min(shares):.0%}–{max(shares):.0%} of the variance of the "
                 "differences" + (f", and {max(seeds)} seeds would bring the cases needed within 10 % of what "
                                  "any number would" if seeds else ""))
    return [text + "."]


def _count(n: int | None) -> str:
    return "more than a million" if n is None else f"{n:,}"
