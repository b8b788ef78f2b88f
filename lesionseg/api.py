"""The public functions: what each `lesionseg` command does, callable from Python (a notebook, a script,
a benchmark) with the same checks, refusals and `force` semantics. `cli.py` only parses arguments and
calls these; `import lesionseg` exports them.

A config is a `Config` or the path of a YAML file, plus `key=value` overrides as on the command line:

    import lesionseg
    lesionseg.demo_data("data/demo")
    report = lesionseg.sweep("configs/sweep_beta.yaml", ["train.iterations=40"])  # the report/ folder
    print((report / "summary.md").read_text())

A problem the user can fix is a `LesionsegError` naming the file or key and the fix, raised before
anything is written; `force=True` moves an earlier output folder aside (never deleted) where the command
line's `--force` would. Heavy imports wait until a function is called: `import lesionseg` stays quick.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lesionseg.config import Config
    from lesionseg.data.checks import DatasetReport

def load(config: Config | str | Path, overrides: Sequence[str] = ()) -> Config:
    """`config` as a validated `Config`: a YAML file read with its `extends:` chain, or a `Config` (a copy
    when there are overrides), with `key=value` `overrides` applied."""
    from lesionseg.config import Config, deep_merge, load_config, parse_overrides, validate

    if not isinstance(config, Config):
        return load_config(config, list(overrides))
    if not overrides:
        return config
    tree = parse_overrides(list(overrides))
    return validate(deep_merge(config.model_dump(mode="json"), tree), source="the config with its overrides",
                    overrides=tree)


def demo_data(out_dir: str | Path, cases: int = 40, size: int = 64, seed: int = 0, spacing: float = 2.0,
              lesions: str = "ms", force: bool = False) -> Path:
    """`lesionseg demo-data`: synthetic multi-modal phantoms and their `datalist.json` (returned) in `out_dir`."""
    from lesionseg.data.demo_data import check_demo_arguments, write_demo_dataset
    from lesionseg.runs import claim_output

    check_demo_arguments(cases, size, seed, spacing, lesions=lesions)  # before any move
    if aside := claim_output(Path(out_dir), force, "write the phantoms to another folder"):
        print(f"--force: moved the earlier dataset to {aside}")
    return write_demo_dataset(out_dir, cases=cases, size=size, seed=seed, spacing=spacing, lesions=lesions)


def check(config: Config | str | Path, overrides: Sequence[str] = (),
          show: Callable[[DatasetReport], None] | None = None) -> list[str]:
    """`lesionseg check`: validate the config and read every file of its dataset — of every run of its
    `sweep:` block, with the checks of `sweep` (which also evaluates), else those of `train`. Every problem
    found is listed in one `LesionsegError`. `show` is handed each dataset's report (the command line prints
    its table). Returns notes: what `sweep` would refuse of a config that `train` and `predict` accept."""
    from lesionseg.config import expand_sweep
    from lesionseg.data.preprocessing import load_datalist
    from lesionseg.experiment.preflight import evaluation_problems, preflight

    cfg = load(config, overrides)
    runs = expand_sweep(cfg) if cfg.sweep else [(cfg.name, cfg)]
    preflight(runs, evaluates=bool(cfg.sweep), show=show)
    return [] if cfg.sweep else evaluation_problems(cfg, load_datalist(cfg))


def store(config: Config | str | Path, overrides: Sequence[str] = (), progress: bool = True) -> list[Path]:
    """`lesionseg check --store`: the preprocessed store of the training cases of every run of the config
    (or of its sweep), built ahead of training where it is missing (`data.store`); the entries, returned."""
    from lesionseg.config import expand_sweep
    from lesionseg.data.cache import build_store
    from lesionseg.data.preprocessing import load_datalist

    cfg = load(config, overrides)
    entries: dict[Path, None] = {}
    for _, run_cfg in (expand_sweep(cfg) if cfg.sweep else [(cfg.name, cfg)]):
        entries.update(dict.fromkeys(build_store(load_datalist(run_cfg)["training"], run_cfg, progress)))
    return list(entries)


def train(config: Config | str | Path, overrides: Sequence[str] = (), force: bool = False,
          progress: bool = True) -> Path:
    """`lesionseg train`: one run into `<output_dir>/<name>/` (returned), checked first; an interrupted run
    there with the same config is resumed, a finished one refused; `force` moves the folder aside first."""
    from lesionseg.experiment.preflight import preflight
    from lesionseg.experiment.run import run_one
    from lesionseg.runs import move_aside

    cfg = load(config, overrides)
    preflight([(cfg.name, cfg)], evaluates=False)  # every file read, every setting tried: before any folder exists
    if force and (aside := move_aside(cfg.output_dir / cfg.name)):
        print(f"--force: moved the earlier run to {aside}")
    run_dir = cfg.output_dir / cfg.name
    run_one(cfg, run_dir, progress=progress, evaluate=False)
    return run_dir


def predict(run_dir: str | Path, images: Sequence[str | Path] | None = None, out: str | Path | None = None,
            force: bool = False, progress: bool = True) -> list[Path]:
    """`lesionseg predict`: lesion probability maps of a run's test cases, or of one case given as `images`
    (one file per modality, in the run's order), into `out` (default `<run_dir>/predictions/`)."""
    from lesionseg.inference import predict_run

    return predict_run(Path(run_dir), images=[str(p) for p in images] if images else None,
                       out_dir=Path(out) if out is not None else None, progress=progress, force=force)


def default_metrics_dir(pred: Path) -> Path:
    """`evaluate`'s default `out`: `metrics/` beside a run's `predictions/`, `metrics-<name>/` beside any
    other prediction folder (two prediction folders with one parent get two metrics folders)."""
    from lesionseg.runs import RunPaths

    run = RunPaths(pred.parent)
    return run.metrics if pred.name == run.predictions.name else pred.parent / f"{run.metrics.name}-{pred.name}"


def evaluate(pred: str | Path, ref: str | Path, out: str | Path | None = None, *, force: bool = False,
             threshold: float | None = None, device: str = "cpu", lesion_min_voxels: int | None = None,
             lesion_min_overlap: float | None = None, lesion_matching: str | None = None,
             size_bins_ml: Sequence[float] | None = None,
             ref_label: int | None = None, mask_dir: str | Path | None = None, brain_dir: str | Path | None = None,
             calibration_bins: int | None = None, min_component_ml: float | None = None,
             progress: bool = True) -> dict:
    """`lesionseg evaluate`: score `<case>.nii.gz` predictions (probabilities or masks) against references of
    the same names, any model's; options left at None take the config's evaluation defaults. Writes
    `out` (default `default_metrics_dir(pred)`) and returns the summary. A finished run's own metrics folder
    is refused (its report reads it at the run's settings); an earlier evaluation in `out` too, unless `force`."""
    from lesionseg.config import EVAL_DEFAULTS, check_device_name
    from lesionseg.devices import resolve_device
    from lesionseg.errors import LesionsegError
    from lesionseg.evaluation.evaluate import evaluate_dirs
    from lesionseg.evaluation.options import check_evaluator_options
    from lesionseg.evaluation.volumes import match_folders, require_label
    from lesionseg.runs import claim_output, is_done

    pred, ref = Path(pred), Path(ref)
    mask_dir, brain_dir = (Path(p) if p is not None else None for p in (mask_dir, brain_dir))
    try:
        check_device_name(device)
    except ValueError as err:
        raise LesionsegError(f"--device: {err}") from None
    resolve_device(device, "--device")
    # What can be checked before an earlier evaluation is moved aside: the folders, the options, the label.
    cases, _ = match_folders(pred, ref, mask_dir, brain_dir)
    given = {"threshold": threshold, "lesion_min_voxels": lesion_min_voxels, "lesion_min_overlap": lesion_min_overlap,
             "lesion_matching": lesion_matching, "size_bins_ml": size_bins_ml, "calibration_bins": calibration_bins, "min_component_ml": min_component_ml}
    given = {key: value for key, value in given.items() if value is not None}  # the others: the config's defaults
    options = check_evaluator_options(EVAL_DEFAULTS.model_copy(update=given))
    if ref_label is not None:
        require_label([(p, r) for _, p, r in cases], ref_label)
    out = Path(out) if out is not None else default_metrics_dir(pred)
    if is_done(out.parent) and out.name.startswith("metrics"):
        raise LesionsegError(
            f"{out} belongs to the finished run {out.parent}: its report reads it as that run's results at its "
            "own settings; write this evaluation elsewhere with --out DIR")
    if aside := claim_output(out, force, "write this evaluation elsewhere with --out DIR"):
        print(f"--force: moved the earlier evaluation to {aside}")
    return evaluate_dirs(pred, ref, out, threshold=options.threshold, device=device, options=options,
                         ref_label=ref_label, mask_dir=mask_dir, brain_dir=brain_dir, progress=progress)


def sweep(config: Config | str | Path, overrides: Sequence[str] = (), force: bool = False,
          progress: bool = True) -> Path:
    """`lesionseg sweep`: train, predict and evaluate every configuration of the `sweep:` block into
    `<output_dir>/<name>/`, then write the report; returns the report folder. Calling it again continues
    where it stopped; `force` moves the earlier sweep aside first."""
    from lesionseg.errors import LesionsegError
    from lesionseg.experiment.sweep import failures, run_sweep
    from lesionseg.reporting.report import write_report

    sweep_dir, failed = run_sweep(load(config, overrides), progress=progress, force=force)
    report_dir = write_report(sweep_dir)
    if failed:
        raise LesionsegError(f"{failures(failed, sweep_dir)}\nThe report of the finished runs is in {report_dir}.")
    return report_dir


def report(sweep_dir: str | Path, n_boot: int | None = None) -> Path:
    """`lesionseg report`: rebuild a sweep's report from its finished runs (merging the folds of each
    cross-validated configuration finished since); returns the report folder. `n_boot`: bootstrap
    resamples of the confidence intervals (default `reporting.stats.N_BOOT`)."""
    from lesionseg.config import expand_sweep
    from lesionseg.experiment.cv import merge_finished
    from lesionseg.reporting import stats
    from lesionseg.reporting.report import write_report
    from lesionseg.reporting.results import sweep_config

    sweep_dir = Path(sweep_dir)
    cfg = sweep_config(sweep_dir)
    merge_finished(sweep_dir, expand_sweep(cfg) if cfg.sweep else [], cfg.sweep, progress=False)
    return write_report(sweep_dir, stats.N_BOOT if n_boot is None else n_boot)
