"""A real two-node Ray cluster on this machine (`ray start --head`, `ray start --address`, each node with its
own CPU and temp dir): the worker node is killed mid-run; the sweep finishes, Ray runs the interrupted run
again on the surviving node, it resumes from its checkpoint and ends with the results of a run left alone.

Every process of the cluster is started here (`ray start --block`, one per node) and ended here by its id:
`ray stop` would end every Ray process on the machine, other people's included.
"""

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

pytest.importorskip("ray", reason="the Ray backend needs Ray (pip install 'lesionseg[ray]')")

import torch  # noqa: E402
from helpers import REPO, TINY  # noqa: E402

from lesionseg.config import expand_sweep, load_config  # noqa: E402
from lesionseg.experiment import local_backend, ray_backend  # noqa: E402

RAY = Path(sys.executable).with_name("ray")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not RAY.is_file(), reason=f"no `ray` command beside {sys.executable}"),
    pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="finds the nodes' processes in /proc (Linux)"),
]

ITERATIONS = 100  # a checkpoint every 5: a run is killed well after its first one and well before its end
RUN = [*TINY, "deterministic=true", "sweep={loss.beta: [0.5, 0.8]}", f"train.iterations={ITERATIONS}",
       "train.val_every=5", "train.log_every=5", "train.val_images_every=0"]
# The nodes, the sweep and its workers: a local cluster needs no token (without this the head would use one
# from ~/.ray/auth_token where there is one, and a worker node would not); one thread per run, as in the
# reference run; no folding of alike log lines from different runs.
ENV = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0", "RAY_DEDUP_LOGS": "0",
       "OMP_NUM_THREADS": "1"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _processes() -> dict[int, tuple[int, str]]:
    """Every process: pid → (parent pid, start time), from /proc."""
    table = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            table[int(entry.name)] = (int(fields[1]), fields[19])
    return table


def _tree(root: int) -> dict[int, str]:
    """`root` and its descendants (a node's raylet, agents and Ray workers): pid → start time."""
    table = _processes()
    found, todo = {}, [root]
    while todo:
        pid = todo.pop()
        if pid in table and pid not in found:
            found[pid] = table[pid][1]
            todo += [child for child, (parent, _) in table.items() if parent == pid]
    return found


def _kill(processes: dict[int, str]) -> None:
    """SIGKILL those still running, each checked by its start time (never a pid taken by another process)."""
    now = _processes()
    for pid, started in processes.items():
        if pid in now and now[pid][1] == started:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


class Node:
    """One `ray start --block` process: the node lives as long as it does and ends with it."""

    def __init__(self, name: str, root: Path, *args: str) -> None:
        self.log = root / f"{name}.log"
        cmd = [str(RAY), "start", "--block", "--disable-usage-stats", "--num-cpus=1",
               f"--object-store-memory={100 * 2**20}", f"--temp-dir={root / name}",
               f"--dashboard-agent-listen-port={_free_port()}", *args]
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=ENV, start_new_session=True)
        deadline = time.monotonic() + 90
        while "Ray runtime started" not in self.log.read_text():
            assert self.proc.poll() is None, f"ray start {name} exited:\n{self.log.read_text()}"
            assert time.monotonic() < deadline, f"ray start {name} did not start:\n{self.log.read_text()}"
            time.sleep(0.2)

    def running(self) -> set[str]:
        """The Ray tasks this node's workers are running now: a worker's title is `ray::<task name>` meanwhile,
        and the sweep names each task by its run id."""
        titles = set()
        for pid in _tree(self.proc.pid):
            try:
                titles.add(Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode())
            except OSError:
                continue
        return {title.removeprefix("ray::") for title in titles if title.startswith("ray::")}

    def kill(self) -> None:
        """The node dies at once: its raylet, agents and workers get SIGKILL (twice round: no late fork left)."""
        for _ in range(2):
            _kill(_tree(self.proc.pid))
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        """Shut down: `ray start --block` ends its node's processes on SIGTERM; what is left then, SIGKILL."""
        processes = _tree(self.proc.pid)
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=40)
            except subprocess.TimeoutExpired:
                pass
        _kill({**processes, **_tree(self.proc.pid)})
        self.proc.wait(timeout=30)


@pytest.fixture
def two_nodes():
    """A head and a worker node of one CPU each; yields (address, head, worker)."""
    root = Path(tempfile.mkdtemp(prefix="ray", dir="/tmp"))  # short: Ray's socket paths must fit in 107 bytes
    port = _free_port()
    nodes = []
    try:
        nodes.append(Node("head", root, "--head", f"--port={port}", "--include-dashboard=false",
                          f"--dashboard-port={_free_port()}", f"--ray-client-server-port={_free_port()}"))
        nodes.append(Node("worker", root, f"--address=127.0.0.1:{port}"))
        yield f"127.0.0.1:{port}", *nodes
    finally:
        for node in reversed(nodes):
            node.stop()
        shutil.rmtree(root, ignore_errors=True)


def test_a_run_whose_worker_node_dies_resumes_on_the_surviving_node(two_nodes, tiny_dataset, tmp_path,
                                                                   monkeypatch):
    address, _, worker = two_nodes
    args = [sys.executable, "-m", "lesionseg", "sweep", REPO / "configs" / "demo.yaml",
            f"data.datalist={tiny_dataset}", "output_dir=experiments", "name=lost", *RUN,
            "--backend", "ray", "--ray-address", address, "-q"]
    runs = tmp_path / "experiments" / "lost" / "runs"
    log = tmp_path / "sweep.log"
    with open(log, "w") as out:
        sweep = subprocess.Popen(list(map(str, args)), cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT, env=ENV)
    try:
        # Two runs of one CPU on two nodes of one CPU: one on each. Once the worker node's run has written a
        # checkpoint, the worker node dies.
        deadline = time.monotonic() + 120
        while not (on_worker := [rid for rid in ("beta=0.5", "beta=0.8") if (runs / rid / "checkpoints" / "last.pt")
                                 .is_file() and rid in worker.running()]):
            assert sweep.poll() is None, log.read_text()
            assert time.monotonic() < deadline, f"no checkpoint on the worker node:\n{log.read_text()}"
            time.sleep(0.02)
        worker.kill()
        rid = on_worker[0]
        # Read before a retry can have moved on: that needs a new worker on the head, and the head free.
        stopped_at = torch.load(runs / rid / "checkpoints" / "last.pt")["iteration"]
        assert 0 < stopped_at < ITERATIONS and not (runs / rid / "DONE").exists()
        sweep.wait(timeout=240)
    finally:
        if sweep.poll() is None:
            sweep.kill()
            sweep.wait()
    text = log.read_text()
    assert sweep.returncode == 0, text
    assert "Ray: 2 runs on 2 CPUs, 0 GPUs; each 1 CPU" in text

    # Ray ran the run of the dead node again, on the head, where it resumed mid-training; the other run ran once.
    assert re.findall(r"^\[(beta=0\.[58])\] finished after 1 Ray retry: ", text, re.MULTILINE) == [rid], text
    assert f"[{rid}] Ray retry 1 of at most {ray_backend.RAY_RETRIES}: the worker or node of the previous attempt " \
           f"died; resuming from {runs / rid / 'checkpoints' / 'last.pt'}" in text
    assert re.findall(rf"\[{re.escape(rid)}\] resuming after iteration (\d+) ", text) == [str(stopped_at)], text
    assert "resuming after iteration" not in text.replace(f"[{rid}] resuming", ""), "the other run resumed too"
    assert all((runs / r / "DONE").is_file() for r in ("beta=0.5", "beta=0.8"))
    assert not list(runs.parent.glob("runs/*.old-*")), "the retry started over instead of resuming"

    # The resumed run ends where the same run left alone ends (one CPU thread, deterministic).
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    cfg = load_config(REPO / "configs" / "demo.yaml",
                      [f"data.datalist={tiny_dataset}", f"output_dir={tmp_path / 'alone'}", "name=alone", *RUN])
    alone = tmp_path / "alone"
    assert local_backend.run_local([r for r in expand_sweep(cfg) if r[0] == rid], alone, parallel=1,
                              progress=False) == {}
    lost, left = runs / rid, alone / "runs" / rid
    for name in ("metrics/cases.csv", "metrics/summary.json", "thresholds.json", "metrics-tuned-dsc/summary.json"):
        assert (lost / name).read_text() == (left / name).read_text(), name
    summaries = [json.loads((run / "train_summary.json").read_text()) for run in (lost, left)]
    assert summaries[0]["best"] == summaries[1]["best"] and summaries[0]["last"] == summaries[1]["last"]
    models = [torch.load(run / "checkpoints" / "last.pt")["model"] for run in (lost, left)]
    assert models[0].keys() == models[1].keys()
    assert all(torch.equal(models[0][k], models[1][k]) for k in models[0])
