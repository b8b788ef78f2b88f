"""Command line: argument parsing only; each command calls its function in `api.py` and prints what it returns."""

from __future__ import annotations

import argparse
import json
import sys
import threading
from pathlib import Path

from lesionseg import __version__
from lesionseg.errors import LesionsegError
from lesionseg.files import describe_os_error, is_disk_error


def _demo_data(args: argparse.Namespace) -> None:
    from lesionseg import api

    path = api.demo_data(args.out_dir, cases=args.cases, size=args.size, seed=args.seed, spacing=args.spacing,
                         lesions=args.lesions, force=args.force)
    print(f"wrote {_count(args.cases, 'phantom case')} and {path}")


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _check(args: argparse.Namespace) -> None:
    from lesionseg import api
    from lesionseg.config import expand_sweep, load_config
    from lesionseg.data.preprocessing import load_datalist
    from lesionseg.data.store import cohort_text, store_root

    cfg = load_config(args.config, args.overrides)
    # A config with a sweep: block is run by `lesionseg sweep`, which also evaluates: its checks; else train's.
    if notes := api.check(cfg, show=lambda report: print(report.table())):
        print("\nnote (train and predict are fine; `lesionseg sweep`, which evaluates, would refuse):\n  "
              + "\n  ".join(notes))
    what = f"{_count(len(expand_sweep(cfg)), 'sweep run')} checked" if cfg.sweep else "the run checked"
    print(f"\nconfig {args.config}: valid, {what}; dataset {cfg.data.datalist}: every file read, no problem found")
    print(cohort_text(load_datalist(cfg)["training"], cfg))
    if args.store:
        entries = api.store(cfg, progress=_bars(args))
        print(f"the preprocessed store {store_root(cfg)}: {_count(len(entries), 'entry')} for this config's "
              "training cases, each built where it was missing".replace("entrys", "entries"))


def _bars(args: argparse.Namespace) -> bool:
    """Progress bars only on a terminal: in a log (nohup, a SLURM job) their carriage-return frames would
    be most of the file; the lines of each validation and finished step are written either way."""
    return not getattr(args, "quiet", False) and sys.stderr.isatty()


def _train(args: argparse.Namespace) -> None:
    from lesionseg import api

    run_dir = api.train(args.config, args.overrides, force=args.force, progress=_bars(args))
    print(f"finished {run_dir}")


def _predict(args: argparse.Namespace) -> None:
    from lesionseg import api

    paths = api.predict(args.run_dir, images=args.images, out=args.out, progress=_bars(args), force=args.force)
    print(f"wrote {_count(len(paths), 'prediction')} to {paths[0].parent}")


def _evaluate(args: argparse.Namespace) -> None:
    from lesionseg import api
    from lesionseg.evaluation import collapse, registry

    summary = api.evaluate(
        args.pred, args.ref, args.out, force=args.force, threshold=args.threshold, device=args.device,
        lesion_min_voxels=args.lesion_min_voxels, lesion_min_overlap=args.lesion_min_overlap,
        lesion_matching=args.lesion_matching, size_bins_ml=args.size_bins_ml, ref_label=args.ref_label, mask_dir=args.mask_dir,
        brain_dir=args.brain_dir, calibration_bins=args.calibration_bins, min_component_ml=args.min_component_ml,
        progress=_bars(args),
    )
    out = args.out or api.default_metrics_dir(args.pred)
    pc = summary["per_case"]
    print(f"{_count(summary['n_cases'], 'case')}: " + ", ".join(f"{m} {pc[m]['mean']:.4f}" for m in
          registry.names(headline=True)) + f" (per-case means); wrote {out}")
    if summary["collapse"]:
        print(f"warning: the predictions have collapsed: {collapse.describe(summary['collapse'])}")


def _sweep(args: argparse.Namespace) -> None:
    from lesionseg import api
    from lesionseg.runs import SweepPaths

    # The options are sugar for the config keys sweep.parallel, sweep.backend and sweep.ray_address.
    # (The address is quoted: YAML would read some host:port strings as numbers.)
    options = [f"sweep.{key}={value}" for key, value in
               (("parallel", args.parallel), ("backend", args.backend),
                ("ray_address", args.ray_address and json.dumps(args.ray_address))) if value is not None]
    report = api.sweep(args.config, [*args.overrides, *options], progress=_bars(args), force=args.force)
    print(SweepPaths(report.parent).summary.read_text(encoding="utf-8"))
    print(f"report: {report}")


def _report(args: argparse.Namespace) -> None:
    from lesionseg import api
    from lesionseg.runs import SweepPaths

    report = api.report(args.sweep_dir)
    print(SweepPaths(report.parent).summary.read_text(encoding="utf-8"))


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error exits with status 1 like every other error (argparse's own is 2)."""

    def error(self, message: str):
        self.print_usage(sys.stderr)
        self.exit(1, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    """The `lesionseg` parser: one sub-parser per command, in the order `--help` lists them."""
    parser = _Parser(
        prog="lesionseg",
        description="3D lesion segmentation in MRI: Tversky-loss β sweeps, evaluation, reports.")
    parser.add_argument("--version", action="version", version=f"lesionseg {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_demo_data(sub)
    _add_with_config(sub, "check", "validate the config and read every data file: all problems, then a dataset summary",
                     _check)
    _add_with_config(sub, "train", "train one run into <output_dir>/<name>/", _train)
    _add_sweep(sub)
    _add_predict(sub)
    _add_evaluate(sub)
    p = sub.add_parser("report", help="rebuild a sweep's report from its finished runs")
    p.add_argument("sweep_dir", type=Path)
    p.set_defaults(func=_report)
    return parser


def _add_with_config(sub, name: str, help_text: str, func) -> argparse.ArgumentParser:
    """A command that reads a config and its dotted overrides (check, train, sweep)."""
    p = sub.add_parser(name, help=help_text, description=help_text)
    p.add_argument("config", type=Path, help="YAML config file")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides, e.g. loss.beta=0.7")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars (shown only on a terminal anyway)")
    if name == "check":
        p.add_argument("--store", action="store_true",
                       help="also build the preprocessed store of the training cases (data.store) ahead of training")
    if name in ("train", "sweep"):
        p.add_argument("--force", action="store_true",
                       help="start over: move an existing folder of that name aside (never deleted)")
    p.set_defaults(func=func)
    return p


def _add_demo_data(sub) -> None:
    p = sub.add_parser("demo-data", help="write synthetic multi-modal MS-like phantoms and a datalist")
    p.add_argument("out_dir", type=Path)
    p.add_argument("--cases", type=int, default=40, help="number of cases; the last quarter are test cases")
    p.add_argument("--size", type=int, default=64, help="voxels along the first axis (shape S × 1.2S × S)")
    p.add_argument("--spacing", type=float, default=2.0, help="voxel size in mm")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--lesions", choices=["ms", "ms-small", "large"], default="ms",
                   help="ms: small MS-like white-matter lesions; ms-small: MS lesions at the sizes of real scans "
                        "(most a voxel or two at 2 mm; light loads small, heavy ones confluent); large: "
                        "tumour-like masses of tens of mL")
    p.add_argument("--force", action="store_true", help="move an existing OUT_DIR aside first (never deleted)")
    p.set_defaults(func=_demo_data)


def _add_sweep(sub) -> None:
    p = _add_with_config(sub, "sweep", "train, predict and evaluate every configuration of the sweep: block, then "
                         "report", _sweep)
    p.add_argument("--parallel", metavar="auto|N",
                   help="runs at once, each its own process (sweep.parallel; auto: one per visible GPU, 1 on CPU)")
    p.add_argument("--backend", choices=["local", "ray"], help="where the runs go (sweep.backend; default local)")
    p.add_argument("--ray-address", metavar="ADDRESS",
                   help="Ray cluster to join, e.g. auto or HEAD:6379 (sweep.ray_address; default $RAY_ADDRESS, "
                        "else a local Ray instance)")


def _add_predict(sub) -> None:
    p = sub.add_parser("predict", help="lesion probability maps for a run's test cases (or --images)")
    p.add_argument("run_dir", type=Path)
    p.add_argument("--images", nargs="+", help="one case: one file per modality, in the run's modality order")
    p.add_argument("--out", type=Path, help="output folder (default RUN_DIR/predictions)")
    p.add_argument("--force", action="store_true", help="move an existing output folder aside first (never deleted)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars (shown only on a terminal anyway)")
    p.set_defaults(func=_predict)


def _add_evaluate(sub) -> None:
    from lesionseg.config import EVAL_DEFAULTS as d  # evaluate's defaults are the config's

    p = sub.add_parser("evaluate", help="metrics of <case>.nii.gz predictions against <case>.nii.gz references")
    p.add_argument("--pred", type=Path, required=True, help="folder of predictions (probabilities or masks)")
    p.add_argument("--ref", type=Path, required=True, help="folder of reference lesion masks")
    p.add_argument("--out", type=Path, help="output folder (default: metrics/ beside a run's predictions/, "
                   "metrics-<name>/ beside any other PRED folder)")
    p.add_argument("--force", action="store_true", help="move an existing output folder aside first (never deleted)")
    p.add_argument("--threshold", type=float, default=d.threshold)
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--lesion-min-voxels", type=int, default=d.lesion_min_voxels,
                   help="ignore components smaller than this")
    p.add_argument("--lesion-min-overlap", type=float, default=d.lesion_min_overlap,
                   help="share of a lesion overlapped to detect it")
    p.add_argument("--lesion-matching", choices=("isbi2015", "msseg", "panoptica"), default=d.lesion_matching,
                   help="lesion-wise definition: ISBI 2015 (with the two options above), MSSEG (Anima's rules) or "
                        "panoptica (one-to-one at IoU >= 0.5)")
    p.add_argument("--size-bins-ml", type=float, nargs="+", default=d.size_bins_ml, help="lesion-size bin edges")
    p.add_argument("--ref-label", type=int, help="reference label value to score when references hold several")
    p.add_argument("--mask-dir", type=Path, metavar="DIR",
                   help="brain masks <case>.nii.gz: score only the voxels inside each case's mask")
    p.add_argument("--brain-dir", type=Path, metavar="DIR",
                   help="<case>.nii.gz whose non-zero voxels are the brain (masks or skull-stripped images): the "
                        "voxels of the calibration figures (default: --mask-dir, else every voxel)")
    p.add_argument("--calibration-bins", type=int, default=d.calibration_bins, help="equal-width bins of the ECE")
    p.add_argument("--min-component-ml", type=float, default=d.min_component_ml, metavar="ML",
                   help="post-processing: remove predicted lesions smaller than this volume before scoring")
    p.set_defaults(func=_evaluate)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    # Overrides may come before or after options (`sweep c.yaml -q seed=1`), which argparse alone refuses.
    args, extra = parser.parse_known_args(argv)
    if extra and (not hasattr(args, "overrides") or any(a.startswith("-") or "=" not in a for a in extra)):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if extra:
        args.overrides += extra
    reported: list[BaseException] = []
    previous_hook = threading.excepthook
    threading.excepthook = _background_write_hook(args.command, reported, previous_hook)
    try:
        args.func(args)
    except LesionsegError as err:
        print(f"lesionseg {args.command}: error: {err}", file=sys.stderr)
        return 1
    except OSError as err:
        # A disk error from a write that does not go through files.py (TensorBoard, a library's own file).
        if not is_disk_error(err):
            raise
        if not any(err is seen for seen in reported):  # already printed by the background thread's hook
            print(f"lesionseg {args.command}: error: {describe_os_error(err)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"lesionseg {args.command}: interrupted", file=sys.stderr)
        return 130
    finally:
        threading.excepthook = previous_hook
    return 0


def _background_write_hook(command: str, reported: list[BaseException], previous_hook):
    """TensorBoard writes its event file from a thread; a full disk there would print a bare traceback.
    Print the one-line error instead (the writer raises the same error in the command at its next call,
    which then stops with status 1); anything else goes to the usual hook."""

    def hook(args: threading.ExceptHookArgs) -> None:
        if args.exc_value is None or not is_disk_error(args.exc_value):
            previous_hook(args)
            return
        reported.append(args.exc_value)
        print(f"lesionseg {command}: error: {describe_os_error(args.exc_value)}", file=sys.stderr)

    return hook
