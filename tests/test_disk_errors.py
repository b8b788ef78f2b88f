"""A full or read-only disk, for real: the kernel refuses the write, and the command says so in one line.

No failure is mocked. A full disk is the file-size limit (RLIMIT_FSIZE: a write past it fails with
EFBIG, root or not) or, where mounting is permitted, a genuinely full tmpfs (ENOSPC). A read-only folder
is a read-only bind mount (EROFS), or a folder the command may not write (EACCES): as root the command
runs without the privilege to ignore folder permissions. Each time: status 1, one line naming the file,
the reason and the fix, no traceback, the earlier results byte for byte, no temporary file left.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from helpers import REPO, TINY, lesionseg

from lesionseg.config import dump_yaml
from lesionseg.evaluation.evaluate import evaluate_dirs
from lesionseg.runs import start_run_dir
from lesionseg.training.loop import train_run

def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` (temporary ones included) and its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def assert_clear_failure(result: subprocess.CompletedProcess, command: str, folder: Path, reason: str) -> Path:
    """Status 1, no traceback, and one line `cannot write <a file in folder>: <reason>…; <fix>`; the file."""
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    fix = "write the results elsewhere (output_dir=... for train and sweep, --out DIR for predict and evaluate)"
    named = rf"cannot write ({re.escape(str(folder))}/[^/:]+): {reason}"
    pattern = rf"lesionseg {command}: error: {named}.*; .*{re.escape(fix)}"
    match = re.search(pattern, result.stderr)
    assert match, result.stderr
    return Path(match[1])


@pytest.fixture
def earlier_metrics(tiny_dataset):
    """An `evaluate` writer: the perfect prediction (the labels) scored into `out`, as a first result.

    `evaluate` never writes over an earlier evaluation (it refuses, or moves it aside with --force): the
    tests below evaluate into a new folder beside the earlier one, on the same disk, and check that the
    earlier one is untouched and the new one holds no half-written file."""
    data = tiny_dataset.parent

    def write(out: Path) -> dict[str, bytes]:
        evaluate_dirs(data / "labels", data / "labels", out)
        files = snapshot(out)
        assert {"cases.csv", "summary.json"} <= set(files)
        return files

    return write


def test_evaluate_past_the_file_size_limit_writes_no_half_file(tiny_dataset, earlier_metrics, tmp_path):
    data, out = tiny_dataset.parent, tmp_path / "metrics"
    before = earlier_metrics(tmp_path / "earlier")
    result = lesionseg("evaluate", "--pred", data / "masks", "--ref", data / "labels", "--out", out,
                       cwd=tmp_path, check=False, fsize=64)
    failed = assert_clear_failure(result, "evaluate", out, "file too large")
    assert failed.name in before and "raise the limit (ulimit -f unlimited)" in result.stderr
    assert snapshot(out) == {} and snapshot(tmp_path / "earlier") == before


@contextmanager
def mounted(folder: Path, *options: str):
    """`mount *options folder` for the block, or skip the test where mounting is not permitted."""
    folder.mkdir(exist_ok=True)
    done = subprocess.run(["mount", *options, str(folder)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount {options} here (needs root with CAP_SYS_ADMIN): {done.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=True)


def test_evaluate_on_a_full_disk_writes_no_half_file(tiny_dataset, earlier_metrics, tmp_path):
    with mounted(tmp_path / "disk", "-t", "tmpfs", "-o", "size=1m", "tmpfs") as disk:
        out = disk / "metrics"
        before = earlier_metrics(disk / "earlier")
        with open(disk / "filler", "wb", buffering=0) as f, pytest.raises(OSError, match="No space left"):
            while True:
                f.write(bytes(4096))
        data = tiny_dataset.parent
        result = lesionseg("evaluate", "--pred", data / "masks", "--ref", data / "labels", "--out", out,
                           cwd=tmp_path, check=False)
        failed = assert_clear_failure(result, "evaluate", out, "no space left on the device")
        assert failed.name in before and "free space on that disk" in result.stderr
        assert snapshot(out) == {} and snapshot(disk / "earlier") == before


def test_evaluate_on_a_read_only_file_system_writes_nothing(tiny_dataset, earlier_metrics, tmp_path):
    disk = tmp_path / "disk"
    before = earlier_metrics(disk / "earlier")
    with mounted(disk, "--bind", str(disk)):
        subprocess.run(["mount", "-o", "remount,ro,bind", str(disk)], check=True)
        data = tiny_dataset.parent
        result = lesionseg("evaluate", "--pred", data / "masks", "--ref", data / "labels", "--out", disk / "metrics",
                           cwd=tmp_path, check=False)
        assert_clear_failure(result, "evaluate", disk / "metrics", "read-only file system")
    assert not (disk / "metrics").exists() and snapshot(disk) == {f"earlier/{k}": v for k, v in before.items()}


@pytest.fixture
def unwritable(tmp_path):
    """(command prefix, subprocess options) to run a command that cannot write a folder made read-only with
    `chmod 0o555`. Root ignores folder permissions, so as root the command runs without the capabilities
    that let it (setpriv drops CAP_DAC_OVERRIDE: root is then held to the folder's mode like anyone)."""
    drop = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--"]
    if os.geteuid() != 0:
        prefix = []
    elif shutil.which("setpriv") and subprocess.run([*drop, "true"], capture_output=True).returncode == 0:
        prefix = drop
    else:
        pytest.skip("running as root, which ignores folder permissions, and setpriv cannot drop that privilege")
    yield prefix
    for path in tmp_path.rglob("*"):  # let pytest clean up
        if path.is_dir():
            path.chmod(0o755)


def test_evaluate_into_a_folder_it_may_not_write_writes_nothing(tiny_dataset, earlier_metrics, unwritable,
                                                               tmp_path):
    data, parent = tiny_dataset.parent, tmp_path / "shared"
    before = earlier_metrics(parent / "earlier")
    parent.chmod(0o555)
    result = lesionseg("evaluate", "--pred", data / "masks", "--ref", data / "labels", "--out", parent / "metrics",
                       cwd=tmp_path, check=False, prefix=unwritable)
    assert_clear_failure(result, "evaluate", parent / "metrics", "permission denied")
    assert "make the folder writable for this user" in result.stderr
    assert not (parent / "metrics").exists() and snapshot(parent / "earlier") == before


@pytest.mark.slow
def test_a_checkpoint_that_does_not_fit_stops_training_and_keeps_the_last_one(tiny_config, tmp_path):
    """torch.save reports a failed write as a bare RuntimeError; the message must still say why."""
    cfg = tiny_config()
    run_dir = start_run_dir(cfg.output_dir / cfg.name, cfg)
    train_run(cfg, run_dir, progress=False)
    # As if the run had been stopped after its checkpoint at iteration 2: the command resumes it.
    last = run_dir / "checkpoints" / "last.pt"
    state = torch.load(last)
    torch.save({**state, "iteration": 2}, last)
    checkpoints = snapshot(run_dir / "checkpoints")
    # the run's config as written (model.prior: auto adds a comment line after it): the command resumes it
    assert (run_dir / "config.yaml").read_text().startswith(dump_yaml(cfg))

    limit = min(len(b) for b in checkpoints.values()) // 2  # room for the config, JSON and event files
    overrides = [f"data.datalist={cfg.data.datalist}", f"output_dir={cfg.output_dir}", *TINY]
    result = lesionseg("train", REPO / "configs" / "demo.yaml", *overrides, "-q", cwd=tmp_path, check=False,
                       fsize=limit)
    failed = assert_clear_failure(result, "train", run_dir / "checkpoints", "file too large")
    assert failed.name in checkpoints and "(the earlier file is unchanged)" in result.stderr
    assert "resuming after iteration 2" in result.stdout + result.stderr
    assert snapshot(run_dir / "checkpoints") == checkpoints
    assert not (run_dir / "DONE").exists() and not list(run_dir.rglob(".*.tmp*"))


def test_a_tensorboard_writer_on_a_full_disk_fails_in_one_line_without_hanging(tmp_path):
    """The event file is written by TensorBoard's own thread: its error must not end as a bare traceback,
    and the command must see it and stop (not hang on the writer's queue)."""
    driver = """\
import resource, signal, sys, time
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (2000, 2000))
from torch.utils.tensorboard import SummaryWriter
from lesionseg import cli

def _train(args):
    writer = SummaryWriter(log_dir=sys.argv[1])
    for it in range(100_000):
        writer.add_scalar("train/loss", 1.0 / (it + 1), it)
        time.sleep(0.001)

cli._train = _train
sys.exit(cli.main(["train", "config.yaml"]))
"""
    result = subprocess.run([sys.executable, "-c", driver, str(tmp_path / "run")], cwd=tmp_path,
                            capture_output=True, text=True, timeout=300)
    events = list((tmp_path / "run").glob("events.out.tfevents.*"))
    assert len(events) == 1
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert result.stderr.count("lesionseg train: error:") == 1, result.stderr
    assert f"cannot write {events[0]}: file too large" in result.stderr
