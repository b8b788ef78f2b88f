"""The evaluator's arguments checked before any case is read: the options by `config.eval_options`' rules
(the one set of rules of the config, `lesionseg evaluate` and the evaluator), the thresholds and the cases."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from lesionseg.config import EvalConfig, eval_options
from lesionseg.errors import LesionsegError
from lesionseg.evaluation import metrics


def check_options(threshold, f_beta, lesion_min_voxels, lesion_min_overlap, size_bins) -> None:
    """LesionsegError naming the evaluation option that is out of range (`config.eval_options`' rules)."""
    try:
        metrics.overlap_metrics([0, 0, 0, 0], f_beta=f_beta)
        eval_options(threshold=threshold, lesion_min_voxels=lesion_min_voxels, lesion_min_overlap=lesion_min_overlap,
                     size_bins_ml=list(size_bins))
    except ValueError as err:
        raise LesionsegError(f"evaluation option: {err}") from err


def check_arguments(cases, thresholds, f_beta, options: EvalConfig, size_bins) -> None:
    """LesionsegError naming the argument of `evaluate_cases_at` that cannot be evaluated; `options` are
    checked again whole (an `EvalConfig` changed with `model_copy(update=…)` was not)."""
    if not thresholds:
        raise LesionsegError("no threshold to evaluate at: give at least one output folder and threshold.")
    for threshold in thresholds.values():
        check_options(threshold, f_beta, options.lesion_min_voxels, options.lesion_min_overlap, size_bins)
    if not cases:
        raise LesionsegError("no cases to evaluate: the list of (case, prediction, reference) is empty.")
    ids = [c[0] for c in cases]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise LesionsegError(f"case names must be unique; repeated: {', '.join(duplicates)}.")
    check_evaluator_options(options)


def check_evaluator_options(options: EvalConfig) -> EvalConfig:
    """`options` checked whole by `config.eval_options` (again: one changed with `model_copy(update=…)` was
    not) and returned validated, or LesionsegError; the component size must be a volume — a run tunes
    `tune` on its validation cases before it evaluates."""
    if options.min_component_ml == "tune":
        raise LesionsegError("evaluation option: min_component_ml = 'tune': give a volume >= 0 in mL")
    try:
        return eval_options(**options.model_dump())
    except ValueError as err:
        raise LesionsegError(f"evaluation option: {err}") from err


def per_case_paths(paths: Sequence[Path | None] | None, cases: Sequence, name: str, what: str) -> list[Path | None]:
    """One path (or None) per case: `paths` checked against `cases`, or all None."""
    paths = [None] * len(cases) if paths is None else list(paths)
    if len(paths) != len(cases):
        raise LesionsegError(f"{name}: one {what} (or None) per case needed, got {len(paths)} for {len(cases)} cases.")
    return paths
