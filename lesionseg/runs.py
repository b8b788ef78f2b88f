"""Run folders: what makes one, what marks it finished, and what it records to be reproducible."""

from __future__ import annotations

import hashlib
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

from lesionseg.config import Config, dump_yaml
from lesionseg.errors import LesionsegError
from lesionseg.files import disk_error, write_json, write_text

DONE = "DONE"


def is_done(run_dir: Path) -> bool:
    return (run_dir / DONE).is_file()


def mark_done(run_dir: Path, summary: dict | None = None) -> None:
    """Written last: its presence means every output of the run is complete."""
    write_json(run_dir / DONE, {"finished": time.strftime("%Y-%m-%dT%H:%M:%S"), **(summary or {})})


def start_run_dir(run_dir: Path, cfg: Config) -> Path:
    """Create `run_dir` for a new run, saving the resolved config and the environment.

    A finished run is never touched: that is an error naming the folder. An interrupted run of the same
    config with a checkpoint is kept as it is, for `train_run` to resume. Any other unfinished folder is
    moved aside to `<name>.old-<timestamp>` (nothing is deleted), so the run starts clean and the partial
    output stays inspectable.
    """
    if is_done(run_dir):
        raise LesionsegError(
            f"{run_dir} holds a finished run; choose another name (name=...) or start over with --force "
            "(it moves that folder aside)"
        )
    if (run_dir / "checkpoints" / "last.pt").is_file() and _saved_config(run_dir) == dump_yaml(cfg):
        return run_dir  # an interrupted run of the same config: train_run resumes it
    move_aside(run_dir)
    try:
        run_dir.mkdir(parents=True)
    except OSError as err:
        raise disk_error(run_dir, err, action="create run folder") from None
    write_text(run_dir / "config.yaml", dump_yaml(cfg))
    write_json(run_dir / "env.json", environment())
    return run_dir


def _saved_config(run_dir: Path) -> str | None:
    try:
        return (run_dir / "config.yaml").read_text(encoding="utf-8")
    except OSError:
        return None


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
