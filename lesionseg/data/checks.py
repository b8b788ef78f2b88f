"""Dataset checks: every file read once, every problem reported at once, and a summary table.

`check_dataset(cfg)` opens each image, label and brain mask of every case and lists, each line naming the
case and the file: missing or unreadable files (a truncated .nii.gz too), modalities of one case whose
shapes or affines differ, labels or masks off the images' grid, labels that are not binary, NaN or
infinite intensities, all-zero or constant images, duplicate case ids, cases in both the training and
the test list, and training data without a single lesion. It raises `LesionsegError` with the whole list
when anything is wrong; otherwise it returns a `DatasetReport` whose `table()` summarises the dataset
(cases, shape and spacing ranges, orientation, lesions per case). `load_datalist` runs the cheap part
(headers only) every time; `check_dataset` runs before training, `check_prediction_inputs` before
prediction. What "on the same grid" means (shape, and affines within one tolerance) is `grid.grid_problem`'s,
as in evaluation.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from lesionseg.config import Config
from lesionseg.data.layouts import Lists, duplicate_problems, read_layout
from lesionseg.errors import LesionsegError
from lesionseg.evaluation.lesionwise import label_lesions
from lesionseg.grid import grid_problem, spatial_shape, volume_problem

_READ_ERRORS = (OSError, EOFError, ValueError, zlib.error, nib.filebasedimages.ImageFileError)


@dataclass
class CaseSummary:
    case: str
    split: str
    shape: tuple[int, ...] | None = None
    spacing: tuple[float, ...] | None = None
    orientation: str | None = None
    lesions: int | None = None  # None: no label read
    lesion_ml: float | None = None


@dataclass
class DatasetReport:
    source: str
    layout: str
    modalities: list[str]
    cases: list[CaseSummary] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def table(self) -> str:
        """The dataset in a few lines and one row per case, as pasted into a paper's methods."""
        read = [c for c in self.cases if c.shape is not None]
        counts = {s: sum(c.split == s for c in self.cases) for s in ("training", "test")}
        labelled = [c for c in self.cases if c.lesions is not None]
        lines = [
            f"dataset      {self.source} ({self.layout})",
            f"modalities   {', '.join(self.modalities)}",
            f"cases        {counts['training']} training, {counts['test']} test; "
            f"{len(labelled)} labelled, {sum(bool(c.lesions) for c in labelled)} with lesions",
        ]
        if read:
            orient: dict[str, int] = {}
            for c in read:
                orient[c.orientation] = orient.get(c.orientation, 0) + 1
            lines += [
                f"shape        {_range([c.shape for c in read], '{:d}')} voxels",
                f"spacing      {_range([c.spacing for c in read], '{:.2f}')} mm",
                "orientation  " + ", ".join(f"{k} ({v} case{'s' * (v > 1)})" for k, v in sorted(orient.items())),
            ]
        if labelled:
            n = np.array([c.lesions for c in labelled])
            ml = np.array([c.lesion_ml for c in labelled])
            lines.append(f"lesions      per case: {np.median(n):g} (median), {n.min()}–{n.max()} lesions; "
                         f"{np.median(ml):.2f} mL (median), {ml.min():.2f}–{ml.max():.2f} mL")
        lines += ["", "| case | split | shape | spacing (mm) | orientation | lesions | lesion volume (mL) |",
                  "|---|---|---|---|---|---:|---:|"]
        for c in self.cases:
            shape = "×".join(map(str, c.shape)) if c.shape else "?"
            spacing = "×".join(f"{s:.2f}" for s in c.spacing) if c.spacing else "?"
            lesions = "–" if c.lesions is None else str(c.lesions)
            ml = "–" if c.lesion_ml is None else f"{c.lesion_ml:.2f}"
            lines.append(f"| {c.case} | {c.split} | {shape} | {spacing} | {c.orientation or '?'} | {lesions} | {ml} |")
        lines.append("lesions: 26-connected components of the label; volume: lesion voxels × voxel volume.")
        return "\n".join(lines)


def _range(values: list[tuple], fmt: str) -> str:
    """`182×218×182`, or per axis `min–max` where the cases differ."""
    axes = []
    for axis in zip(*values):
        lo, hi = min(axis), max(axis)
        axes.append(fmt.format(lo) if fmt.format(lo) == fmt.format(hi) else f"{fmt.format(lo)}–{fmt.format(hi)}")
    return "×".join(axes)


def missing_files(entries: list[dict[str, Any]]) -> list[str]:
    """Every file the entries name that does not exist, as 'case: missing file path' lines."""
    problems = []
    for e in entries:
        for p in [*e["image"], e.get("label"), e.get("mask")]:
            if p is not None and not Path(p).is_file():
                problems.append(f"{e['case']}: missing file {p}")
    return problems


def _open(path: str) -> tuple[nib.Nifti1Image | None, str | None]:
    if not Path(path).is_file():
        return None, f"missing file {path}"
    try:
        img = nib.load(path)
    except _READ_ERRORS as err:
        return None, f"unreadable file {path}: {err}"
    problem = volume_problem(path, img)
    return (None, problem) if problem else (img, None)


def _voxels(img: nib.Nifti1Image, path: str) -> tuple[np.ndarray | None, str | None]:
    try:
        return np.asanyarray(img.dataobj).reshape(img.shape[:3]), None
    except _READ_ERRORS as err:
        return None, f"unreadable file {path} (truncated or corrupt?): {type(err).__name__}: {err}"


def _image_problems(data: np.ndarray, path: str) -> list[str]:
    problems = []
    if np.issubdtype(data.dtype, np.floating):
        finite = np.isfinite(data)
        if not finite.all():
            n_nan = int(np.isnan(data).sum())
            problems.append(f"image {path} has {n_nan} NaN and {int((~finite).sum()) - n_nan} infinite voxels")
            data = data[finite]
            if data.size == 0:
                return problems
    if not np.any(data):
        problems.append(f"image {path} is all zero")
    elif data.min() == data.max():
        problems.append(f"image {path} has one value everywhere ({data.min():g}); it cannot be normalised")
    return problems


def _label_problems(data: np.ndarray, path: str) -> list[str]:
    binary = (data == 0) | (data == 1)
    if binary.all():
        return []
    values, counts = np.unique(data[~binary], return_counts=True)
    listed = ", ".join(f"{v:g}: {n} voxels" for v, n in zip(values[:5], counts[:5]))
    more = f" and {len(values) - 5} other values" if len(values) > 5 else ""
    return [f"label {path} is not binary: besides 0 and 1 it holds {listed}{more}"]


def inspect_case(entry: dict[str, Any], split: str, modalities: list[str],
                 read_voxels: bool) -> tuple[CaseSummary, list[str]]:
    """Open every file of one case once; its summary row and its problems (each 'case: ...')."""
    summary = CaseSummary(entry["case"], split)
    problems: list[str] = []
    ref: tuple[str, nib.Nifti1Image] | None = None
    for modality, path in zip(modalities, entry["image"]):
        img, problem = _open(path)
        if img is None:
            problems.append(problem)
            continue
        if ref is None:
            ref = (f"{modality} image {path}", img)
            summary.shape = spatial_shape(img)
            summary.spacing = tuple(float(z) for z in img.header.get_zooms()[:3])
            summary.orientation = "".join(nib.aff2axcodes(img.affine))
        elif problem := grid_problem(f"{modality} image {path}", img, *ref):
            problems.append(f"{problem}; resample or re-register it onto the same grid")
        if read_voxels:
            data, problem = _voxels(img, path)
            problems += [problem] if data is None else _image_problems(data, path)
    for role in ("label", "mask"):
        path = entry.get(role)
        if path is None:
            continue
        img, problem = _open(path)
        if img is None:
            problems.append(problem)
            continue
        what = "label" if role == "label" else "brain mask"
        if ref is not None and (problem := grid_problem(f"{what} {path}", img, *ref)):
            problems.append(f"{problem}; it must lie on its images' voxel grid (resample or re-register it)")
        if not read_voxels:
            continue
        data, problem = _voxels(img, path)
        if data is None:
            problems.append(problem)
        elif role == "mask":
            if not np.any(data):
                problems.append(f"brain mask {path} is empty")
        else:
            problems += _label_problems(data, path)
            lesion = data > 0
            summary.lesions = int(label_lesions(lesion)[1])
            summary.lesion_ml = float(lesion.sum() * np.prod(img.header.get_zooms()[:3]) / 1000.0)
    return summary, [f"{entry['case']}: {p}" for p in problems]


def hold_out(lists: Lists, test_cases: list[str]) -> tuple[Lists, list[str]]:
    """`lists` with the training cases named in `test_cases` moved to the end of the test list (in the
    order given), and a problem for each name that is not a training case."""
    training = {e["case"]: e for e in lists["training"]}
    problems = [f"data.test_cases names {name!r}, which is not a training case of the dataset "
                f"(its training cases: {', '.join(training) or 'none'})" for name in test_cases if name not in training]
    held = [training[name] for name in test_cases if name in training]
    moved = {e["case"] for e in held}
    return {"training": [e for e in lists["training"] if e["case"] not in moved],
            "test": [*lists["test"], *held]}, problems


def inspect_dataset(
    datalist: str | Path, modalities: list[str], read_voxels: bool = True, test_cases: list[str] = ()
) -> tuple[Lists, DatasetReport]:
    """The dataset's cases and a report of every problem in them; raises only if the datalist is unreadable.

    `test_cases` (`data.test_cases`): training cases held out as test cases."""
    lists, layout = read_layout(datalist, modalities)
    lists, held_problems = hold_out(lists, list(test_cases))
    report = DatasetReport(str(datalist), layout, list(modalities))
    report.problems += held_problems + duplicate_problems(lists)
    if not lists["training"]:
        report.problems.append(f"{datalist}: no training cases")
    for split in ("training", "test"):
        for entry in lists[split]:
            summary, problems = inspect_case(entry, split, modalities, read_voxels)
            report.cases.append(summary)
            report.problems += problems
    labelled = [c for c in report.cases if c.split == "training" and c.lesions is not None]
    if read_voxels and labelled and not any(c.lesions for c in labelled):
        report.problems.append(
            f"{datalist}: no training case has a lesion (all {len(labelled)} readable training labels are empty)")
    return lists, report


def raise_problems(report: DatasetReport, what: str = "has problems", subject: str | None = None) -> None:
    """LesionsegError listing every problem of `report`, headed `<subject> <what> (n):` (default subject:
    `dataset <source>`)."""
    if report.problems:
        raise LesionsegError(f"{subject or f'dataset {report.source}'} {what} ({len(report.problems)}):\n  "
                             + "\n  ".join(report.problems))


def check_prediction_inputs(entries: list[dict[str, Any]], modalities: list[str], source: str) -> None:
    """The checks training runs (`inspect_case`, voxels read) on the cases about to be predicted, every
    problem at once. Labels are left out: prediction does not read them, and test cases may have none.
    `source` names where the cases come from (`--images`, `the test cases of dataset <datalist>`)."""
    report = DatasetReport(source, "", list(modalities))
    for entry in entries:
        report.problems += inspect_case({**entry, "label": None}, "test", modalities, read_voxels=True)[1]
    raise_problems(report, "cannot be predicted; fix or replace these files first", subject=source)


def require_datalist(cfg: Config) -> None:
    """A dataset is configured, and the data settings are consistent."""
    if cfg.data.datalist is None:
        raise LesionsegError("data.datalist is not set: point it at a dataset (see README, 'Data')")
    check_data_settings(cfg)


def check_data_settings(cfg: Config) -> None:
    """What the config schema cannot check about `data:` (percentiles in order)."""
    clip = cfg.data.clip_percentiles
    if clip is not None and not 0 <= clip[0] < clip[1] <= 100:
        raise LesionsegError(f"data.clip_percentiles: {clip} must be [low, high] with 0 <= low < high <= 100")


def check_dataset(cfg: Config) -> DatasetReport:
    """Read every file of the configured dataset once; raise `LesionsegError` listing every problem."""
    require_datalist(cfg)
    _, report = inspect_dataset(cfg.data.datalist, cfg.data.modalities, test_cases=cfg.data.test_cases)
    raise_problems(report)
    return report
