"""Run folders: what makes one, what marks it finished, and what it records to be reproducible."""

from __future__ import annotations

import hashlib
import json
import platform
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml
from tqdm import tqdm

from lesionseg.config import Config, dump_yaml, flat_keys, resolve_ce_weight
from lesionseg.errors import LesionsegError
from lesionseg.files import disk_error, write_json, write_text


@dataclass(frozen=True)
class RunPaths:
    """The files of one run folder: the only place their names are written. Training, inference,
    cross-validation, the backends and the report all reach a run's files through this."""

    root: Path

    config = property(lambda self: self.root / "config.yaml")  # the resolved config, written first
    env = property(lambda self: self.root / "env.json")  # versions, device, git revision
    inputs = property(lambda self: self.root / "inputs.json")  # checksums of every input file
    split = property(lambda self: self.root / "split.json")  # the case ids of train/validation/test
    checkpoints = property(lambda self: self.root / "checkpoints")
    last = property(lambda self: self.root / "checkpoints" / "last.pt")  # the latest state: resume from here
    best = property(lambda self: self.root / "checkpoints" / "best.pt")  # the best validation DSC
    train_summary = property(lambda self: self.root / "train_summary.json")
    thresholds = property(lambda self: self.root / "thresholds.json")  # tuned on the validation cases
    predictions = property(lambda self: self.root / "predictions")  # the test cases' probabilities
    metrics = property(lambda self: self.root / "metrics")  # the test cases at eval.threshold
    summary = property(lambda self: self.root / "metrics" / "summary.json")
    ensemble = property(lambda self: self.root / "ensemble")  # cross-validation: the fold models together
    done = property(lambda self: self.root / "DONE")  # written last

    def tuned(self, metric: str) -> Path:
        """The test cases again at the threshold tuned for `metric` (dsc, f2)."""
        return self.root / f"metrics-tuned-{metric}"

@dataclass(frozen=True)
class SweepPaths:
    """The files of one sweep folder (`<output_dir>/<name>/`): the only place their names are written."""

    root: Path

    config = property(lambda self: self.root / "sweep.yaml")  # the resolved sweep config, written first
    runs = property(lambda self: self.root / "runs")  # one run folder per configuration (RunPaths)
    cv = property(lambda self: self.root / "cv")  # cross-validation: each configuration's folds merged
    report = property(lambda self: self.root / "report")
    summary = property(lambda self: self.root / "report" / "summary.md")  # the report, as Markdown
    report_csv = property(lambda self: self.root / "report" / "summary.csv")  # its per-configuration rows
    stats = property(lambda self: self.root / "report" / "stats.json")  # its comparisons and answer
    html = property(lambda self: self.root / "report" / "report.html")  # self-contained, figures embedded

    def run(self, rid: str) -> Path:
        """The folder of run `rid`, e.g. `beta=0.7_seed=0`."""
        return self.runs / rid

    def merged(self, cid: str) -> Path:
        """The folds of configuration `cid` (the run id without its fold) merged into one run folder."""
        return self.cv / cid


# Where and how a run executes, never what it computes: a run is the same run whatever these say.
# (`report` too: how the runs are compared, not what they computed.) A key counts with everything below it.
EXECUTION_KEYS = frozenset({"name", "output_dir", "sweep", "train.device", "data.cache_device", "data.cache",
                            "data.store", "data.prefetch", "train.log_every", "train.val_images_every", "report"})


def is_done(run_dir: Path) -> bool:
    return RunPaths(run_dir).done.is_file()


def mark_done(run_dir: Path, summary: dict | None = None) -> None:
    """Written last: its presence means every output of the run is complete."""
    write_json(RunPaths(run_dir).done, {"finished": time.strftime("%Y-%m-%dT%H:%M:%S"), **(summary or {})})


def start_run_dir(run_dir: Path, cfg: Config) -> Path:
    """`open_run_dir`, for a caller that wants the folder only: returns `run_dir`."""
    open_run_dir(run_dir, cfg)
    return run_dir


def open_run_dir(run_dir: Path, cfg: Config) -> dict | None:
    """Create `run_dir` for a new run, saving the resolved config and the environment; return None.

    A finished run is never touched: that is an error naming the folder. An interrupted run of the same
    config (`config_differences` finds none) with a readable checkpoint is kept as it is, and the state of
    its `last.pt` (read on the CPU, `read_checkpoint`) returned for `train_run` to resume from without
    reading it again. Any other unfinished folder — an unreadable checkpoint too, said aloud — is moved
    aside to `<name>.old-<timestamp>` (nothing is deleted), so the run starts clean and the partial output
    stays inspectable.
    """
    if is_done(run_dir):
        raise LesionsegError(
            f"{run_dir} holds a finished run; choose another name (name=...) or start over with --force "
            "(it moves that folder aside)"
        )
    paths = RunPaths(run_dir)
    checkpoint = paths.last
    if checkpoint.is_file() and not config_differences(saved_config(run_dir), cfg):
        try:
            return read_checkpoint(checkpoint)  # an interrupted run of the same config: train_run resumes it
        except LesionsegError as err:
            aside = move_aside(run_dir)
            tqdm.write(f"[{run_dir.name}] {err}; moved the interrupted run to {aside} and starting it over")
    move_aside(run_dir)
    try:
        run_dir.mkdir(parents=True)
    except OSError as err:
        raise disk_error(run_dir, err, action="create run folder") from None
    write_text(paths.config, dump_yaml(cfg))
    write_json(paths.env, environment())
    return None


def read_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict:
    """A checkpoint's state dict; `LesionsegError` naming the file when it is truncated or not a checkpoint."""
    try:
        state = torch.load(path, map_location=map_location)
    except FileNotFoundError:
        raise LesionsegError(f"missing checkpoint {path}") from None
    except Exception as err:  # truncated zip, pickle garbage, a file of another program: torch says which
        text = str(err).strip()
        reason = text.splitlines()[0].split(". ")[0] if text else type(err).__name__
        raise LesionsegError(f"checkpoint {path} cannot be read ({reason})") from None
    if not isinstance(state, dict) or "model" not in state:
        raise LesionsegError(f"checkpoint {path} cannot be read (not a lesionseg checkpoint: no model weights)")
    return state


def saved_config(run_dir: Path) -> dict | None:
    try:
        return yaml.safe_load(RunPaths(run_dir).config.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return None


def config_differences(saved: dict | None, cfg: Config) -> list[str]:
    """How a run's saved config (`config.yaml`, parsed) differs from `cfg`, one `key: run → now` line each.

    `EXECUTION_KEYS` (where and how a run executes) are ignored. A key the saved config lacks — one added
    to lesionseg after the run started — counts only where `cfg` sets it to something else than its
    default (the default reproduces the old behaviour). An unreadable or missing config differs.
    """
    if not isinstance(saved, dict):
        return ["config.yaml: missing or unreadable"]
    old, new = flat_keys(saved), flat_keys(cfg.model_dump(mode="json"))
    defaults = flat_keys(Config().model_dump(mode="json"))
    for flat in (old, new):  # `auto` and the weight it stands for train the same run
        if "loss.ce_weight" in flat:
            flat["loss.ce_weight"] = resolve_ce_weight(flat.get("loss.name", "tversky"), flat["loss.ce_weight"])
    lines = []
    for key in [*new, *(k for k in old if k not in new)]:
        if any(key == k or key.startswith(f"{k}.") for k in EXECUTION_KEYS):
            continue
        if key not in old:
            if new[key] != defaults.get(key):
                lines.append(f"{key}: (not set; the run predates it) → {new[key]!r}")
        elif key not in new:
            lines.append(f"{key}: {old[key]!r} → (no longer a key)")
        elif old[key] != new[key]:
            lines.append(f"{key}: {old[key]!r} → {new[key]!r}")
    return lines


def claim_output(folder: Path, force: bool, elsewhere: str) -> Path | None:
    """An output folder that must not be overwritten (predict, evaluate, demo-data): absent or empty, it is
    used; else `LesionsegError` naming `elsewhere` and `--force`, which moves it aside (returned; never
    deleted)."""
    if not folder.exists() or (folder.is_dir() and not any(folder.iterdir())):
        return None
    if not force:
        raise LesionsegError(
            f"{folder} already holds output; {elsewhere}, or pass --force to move it aside to "
            f"{folder.name}.old-<timestamp> (nothing is deleted)")
    return move_aside(folder)


def move_aside(folder: Path) -> Path | None:
    """`--force`: rename an existing folder to `<name>.old-<timestamp>` (never delete results)."""
    if not folder.exists():
        return None
    stamp = time.strftime("%Y%m%d-%H%M%S")
    aside = folder.with_name(f"{folder.name}.old-{stamp}")
    n = 1
    while aside.exists():
        n += 1
        aside = folder.with_name(f"{folder.name}.old-{stamp}-{n}")
    try:
        folder.rename(aside)
    except OSError as err:
        raise disk_error(aside, err, action=f"move {folder} aside to") from None
    return aside


def record_split(paths: RunPaths, lists: dict, train_cases: list[dict], val_cases: list[dict]) -> None:
    """`inputs.json` (every input file's checksum) and `split.json` (the case ids of each list)."""
    write_json(paths.inputs, file_checksums(lists))
    write_json(
        paths.split,
        {key: [e["case"] for e in cases] for key, cases in
         (("train", train_cases), ("validation", val_cases), ("test", lists["test"]),
          *((("ensemble", lists["ensemble"]),) if "ensemble" in lists else ()))},
    )


def file_checksums(entries: dict[str, list[dict]]) -> dict:
    """SHA-256 of every input file of every case, by split: what a reproduction must find again."""

    def sha256(path: str) -> str:
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        return digest.hexdigest()

    return {
        split: {
            e["case"]: {Path(p).name: sha256(p) for p in [*e["image"], e.get("label"), e.get("mask")] if p}
            for e in cases
        }
        for split, cases in entries.items()
    }


def _git_revision() -> dict:
    here = Path(__file__).resolve().parent
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=here, capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return {"revision": None, "dirty": None}
    return {"revision": rev, "dirty": bool(dirty)}


def environment() -> dict:
    """Versions, device and source revision: what it takes to reproduce a run's numbers."""
    import monai

    cuda = torch.cuda.is_available()
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "monai": monai.__version__,
        "cuda": torch.version.cuda if cuda else None,
        "cudnn": torch.backends.cudnn.version() if cuda else None,
        "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if cuda else [],
        "cpu_threads": torch.get_num_threads(),
        "git": _git_revision(),
        "command": sys.argv,
    }


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise LesionsegError(f"missing file {path}") from None
    except (OSError, json.JSONDecodeError) as err:
        raise LesionsegError(f"cannot read {path}: {err}") from None
