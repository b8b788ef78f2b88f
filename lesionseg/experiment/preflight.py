"""Everything a command can check before it writes or moves anything; `lesionseg check` runs exactly this.

`train` and `sweep` call `preflight` first, so that a setting that passes the schema but cannot run here
(`train.device: cuda` on a machine without CUDA, `train.amp: fp16` on the CPU, more validation cases than
cases), a dataset problem (`checks.check_dataset` reads every file) or, for a sweep, a test case without a
label fails before a run folder exists, before `--force` moves anything aside and before `sweep.yaml` is
written. Every problem of every run is reported at once, each message once.
"""

from __future__ import annotations

from collections.abc import Callable

from lesionseg.config import Config
from lesionseg.data.checks import DatasetReport, inspect_dataset, raise_problems, require_datalist
from lesionseg.data.folds import with_fold
from lesionseg.data.layouts import Lists
from lesionseg.data.preprocessing import split_train_val
from lesionseg.devices import resolve_device
from lesionseg.errors import LesionsegError


def evaluation_problems(cfg: Config, lists: Lists) -> list[str]:
    """What evaluating the test cases needs (a sweep evaluates every run): test cases, each labelled, and a
    brain mask for each with `eval.restrict_to_mask`."""
    test = lists["test"]
    where = f"datalist {cfg.data.datalist}"
    if not test:
        return [f"{where}: a sweep evaluates on the 'test' cases and there are none; add a 'test' list or "
                "hold training cases out with data.test_cases"]
    problems = []
    unlabelled = [e["case"] for e in test if not e["label"]]
    if unlabelled:
        problems.append(f"{where}: a sweep evaluates on the 'test' cases, which need labels; unlabelled: "
                        f"{', '.join(unlabelled)}")
    unmasked = [e["case"] for e in test if e.get("mask") is None]
    if cfg.eval.restrict_to_mask and unmasked:
        problems.append(f"{where}: eval.restrict_to_mask needs a brain mask for every test case; without one: "
                        f"{', '.join(unmasked)}")
    return problems


def setting_problems(cfg: Config, lists: Lists) -> list[str]:
    """The settings that pass the schema but may not run on this machine or this dataset."""
    from lesionseg.devices import amp_dtype  # training's own rule for the dtype; imported late (torch)

    problems = []
    if cfg.data.folds is not None and cfg.eval.min_component_ml == "tune":
        problems.append("eval.min_component_ml: tune chooses a size per run, which the folds of a cross-validated "
                        "configuration would not share; with data.folds give a size (mL)")
    for check in (lambda: amp_dtype(resolve_device(cfg.train.device), cfg.train.amp),
                  lambda: cfg.data.cache_device == "auto" or resolve_device(cfg.data.cache_device, "data.cache_device"),
                  lambda: split_train_val(lists["training"], cfg) if lists["training"] else None):
        try:
            check()
        except LesionsegError as err:
            problems.append(str(err))
    return problems


def preflight(cfgs: list[tuple[str, Config]], evaluates: bool,
              show: Callable[[DatasetReport], None] | None = None) -> list[DatasetReport]:
    """Check every run `(run id, config)` as far as it can be checked without training; raise one
    `LesionsegError` with every problem, else return the report of each distinct dataset.

    Each dataset is read once (every file, `checks.inspect_dataset`) however many runs share it.
    `evaluates`: the runs will also predict and evaluate their test cases (`lesionseg sweep`). `show` is
    given each dataset's report as soon as it is read, problems or not (`lesionseg check` prints its table).
    """
    reports: dict[tuple, tuple[Lists, DatasetReport]] = {}
    problems: dict[str, list[str]] = {}  # message → the runs it concerns, in order
    for rid, cfg in cfgs:
        require_datalist(cfg)
        key = (cfg.data.datalist, tuple(cfg.data.modalities), tuple(cfg.data.test_cases))
        if key not in reports:
            reports[key] = inspect_dataset(cfg.data.datalist, cfg.data.modalities, test_cases=cfg.data.test_cases)
            if show is not None:
                show(reports[key][1])
            raise_problems(reports[key][1])  # the dataset's own problems first: every file, every case
        try:
            lists = with_fold(reports[key][0], cfg)
        except LesionsegError as err:
            problems.setdefault(str(err), []).append(rid)
            continue
        for message in setting_problems(cfg, lists) + (evaluation_problems(cfg, lists) if evaluates else []):
            problems.setdefault(message, []).append(rid)
    if problems:
        lines = [message if len(runs) == len(cfgs) or len(cfgs) == 1 else f"{message} (runs {', '.join(runs)})"
                 for message, runs in problems.items()]
        raise LesionsegError(f"{len(lines)} problem(s); nothing was written or moved:\n  " + "\n  ".join(lines))
    return [report for _, report in reports.values()]
