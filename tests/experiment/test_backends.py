"""Sweep backends: options in the `sweep:` block, local runs in parallel processes, Ray on a local instance."""

import csv
import signal
import subprocess
import sys
import time

import pytest
from helpers import REPO, TINY

import lesionseg
from lesionseg.config import Config, dump_yaml, expand_sweep, load_config
from lesionseg.errors import LesionsegError
from lesionseg.experiment import local_backend, ray_backend
from lesionseg.experiment.run import summary_line

TWO_BETAS = ["sweep={loss.beta: [0.5, 0.8]}", "deterministic=true"]


def write(path, text):
    path.write_text(text, encoding="utf-8")
    return path


# ------------------------------------------------------------------------------------------ options

@pytest.mark.parametrize(
    "override, message",
    [
        ("sweep.parallel=0", r"sweep\.parallel = 0: .*is not 'auto' or a whole number >= 1"),
        ("sweep.parallel=1.5", r"sweep\.parallel = 1\.5: "),
        ("sweep.parallel=many", r"sweep\.parallel = 'many': "),
        ("sweep.parallel=true", r"sweep\.parallel = True: "),
        ("sweep.parallel=[1, 2]", r"sweep\.parallel = \[1, 2\]: "),
        ("sweep.backend=slurm", r"sweep\.backend = 'slurm': Input should be 'local' or 'ray'"),
        ("sweep.cpus_per_run=0", r"sweep\.cpus_per_run = 0: "),
    ],
)
def test_bad_sweep_options_name_the_key(tmp_path, override, message):
    with pytest.raises(LesionsegError, match=message):
        load_config(write(tmp_path / "c.yaml", "sweep: {loss.beta: [0.5, 0.7]}\n"), [override])


def test_sweep_options_sit_beside_the_grid_and_never_reach_the_runs(tmp_path):
    path = write(tmp_path / "s.yaml", "sweep: {parallel: 2, backend: ray, loss.beta: [0.5, 0.7], seed: [0, 1]}\n")
    cfg = load_config(path, ["sweep.ray_address=auto"])
    assert cfg.sweep == {"loss.beta": [0.5, 0.7], "seed": [0, 1]}
    assert (cfg.sweep_options.parallel, cfg.sweep_options.backend, cfg.sweep_options.ray_address) == (2, "ray", "auto")
    # The resolved sweep config records them (and reloads to the same); a default sweep dumps as `sweep: {}`.
    assert Config.model_validate(cfg.model_dump(mode="json")) == cfg
    assert cfg.model_dump(mode="json")["sweep"] == {"parallel": 2, "backend": "ray", "ray_address": "auto",
                                                     "loss.beta": [0.5, 0.7], "seed": [0, 1]}
    runs = expand_sweep(cfg)
    assert [rid for rid, _ in runs] == ["beta=0.5_seed=0", "beta=0.5_seed=1", "beta=0.7_seed=0", "beta=0.7_seed=1"]
    # How a sweep is executed is not part of a run: a changed `parallel` still resumes the same runs.
    assert all(c.sweep_options == Config().sweep_options and "sweep: {}" in dump_yaml(c) for _, c in runs)


def test_parallel_auto_is_one_per_visible_gpu_and_one_on_cpu(monkeypatch, tiny_config):
    runs = [(f"r{i}", tiny_config()) for i in range(3)]
    monkeypatch.setattr("torch.cuda.device_count", lambda: 0)
    assert local_backend.visible_gpus() == [] and local_backend.resolve_parallel("auto", runs) == 1
    assert local_backend.resolve_parallel(2, runs) == 2 and local_backend.resolve_parallel(8, runs) == 3  # not beyond the runs

    monkeypatch.setattr("torch.cuda.device_count", lambda: 2)  # what torch reports under CUDA_VISIBLE_DEVICES=5,7
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "5,7")
    assert local_backend.visible_gpus() == ["5", "7"] and local_backend.resolve_parallel("auto", runs) == 2
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert local_backend.visible_gpus() == ["0", "1"]
    cpu_runs = [(rid, tiny_config("train.device=cpu")) for rid, _ in runs]
    assert local_backend.resolve_parallel("auto", cpu_runs) == 1  # runs told to use the CPU are not pinned to GPUs


def test_ray_backend_without_ray_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    with pytest.raises(LesionsegError, match=r"pip install 'lesionseg\[ray\]'"):
        ray_backend._import_ray()


# ------------------------------------------------------------------------------------- real sweeps

def cases(sweep_dir, rid):
    return (sweep_dir / "runs" / rid / "metrics" / "cases.csv").read_text()


def report_rows(sweep_dir):
    return list(csv.DictReader((sweep_dir / "report" / "summary.csv").read_text().splitlines()))


def done_stamps(sweep_dir):
    return {p.parent.name: p.stat().st_mtime_ns for p in sweep_dir.glob("runs/*/DONE")}


@pytest.fixture(scope="module")
def local_sweeps(tiny_dataset, tmp_path_factory):
    """The same two-β sweep run one at a time and two at once on CPU (shared by the tests that compare)."""
    out = tmp_path_factory.mktemp("local")

    def config(*overrides):
        return load_config(REPO / "configs" / "demo.yaml", [f"data.datalist={tiny_dataset}", f"output_dir={out}",
                                                           *TINY, *TWO_BETAS, *overrides])

    with pytest.MonkeyPatch.context() as mp:
        # CPU results are bitwise-repeatable for a given number of torch threads; `parallel: 2` gives each
        # run half the cores, so the one-at-a-time sweep gets that many too (1 of 2, whatever the machine).
        mp.setattr(local_backend, "cpu_count", lambda: 2)
        mp.setenv("OMP_NUM_THREADS", "1")
        serial = lesionseg.sweep(config("name=serial", "sweep.parallel=1"), progress=False).parent
        parallel = lesionseg.sweep(config("name=parallel", "sweep.parallel=2"), progress=False).parent
    return serial, parallel, config


@pytest.mark.slow
def test_two_runs_at_once_on_cpu_match_one_at_a_time(local_sweeps, capfd):
    serial, parallel, config = local_sweeps
    for rid in ("beta=0.5", "beta=0.8"):
        assert (parallel / "runs" / rid / "DONE").is_file()
        assert cases(parallel, rid) == cases(serial, rid)
    assert [r["beta"] for r in report_rows(parallel)] == ["0.5", "0.8"]
    assert "parallel: 2" in (parallel / "sweep.yaml").read_text()

    # A finished sweep re-run skips every run (whatever `parallel` is now) and rebuilds the report only.
    stamps = done_stamps(parallel)
    capfd.readouterr()
    lesionseg.sweep(config("name=parallel", "sweep.parallel=1"), progress=False)
    assert "2 of 2 runs already finished" in capfd.readouterr().out and done_stamps(parallel) == stamps


@pytest.mark.slow
def test_output_of_runs_at_once_is_prefixed_by_run_id(tiny_config, capfd):
    # Two runs that fail at once, right after starting: enough to see how their output comes back.
    cfg = tiny_config("sweep={loss.beta: [0.5, 0.8]}", "sweep.parallel=2", "data.modalities=[flair, pd]")
    runs = expand_sweep(cfg)
    failed = local_backend.run_local(runs, cfg.output_dir / "prefixed", parallel=2, progress=True)
    out, err = capfd.readouterr()
    assert "running 2 runs, 2 at once (CPU" in out and "run 2/2: beta=0.8" in out
    assert set(failed) == {"beta=0.5", "beta=0.8"} and all("pd" in message for message in failed.values())
    assert "[beta=0.8] failed: " in err
    child_lines = [line for line in out.splitlines() if line and not line.startswith(("running", "run "))]
    assert all(line.startswith(("[beta=0.5] ", "[beta=0.8] ")) for line in child_lines), child_lines


@pytest.mark.slow
def test_a_failing_run_leaves_the_others_finished_and_the_sweep_fails_naming_it(tmp_path, tiny_dataset):
    # An absurd learning rate makes the weights overflow: the loss becomes NaN and training stops with an error.
    args = [sys.executable, "-m", "lesionseg", "sweep", REPO / "configs" / "demo.yaml",
            f"data.datalist={tiny_dataset}", "output_dir=experiments", "name=bad", *TINY,
            "sweep={train.lr: [0.001, 1.0e+30]}", "--parallel", "2", "-q"]
    result = subprocess.run(list(map(str, args)), cwd=tmp_path, capture_output=True, text=True, timeout=600)
    sweep = tmp_path / "experiments" / "bad"
    assert result.returncode == 1, result.stderr
    assert "1 run(s) of" in result.stderr and "lr=1e+30: training loss became nan" in result.stderr
    assert "run the same command again" in result.stderr and "Traceback" not in result.stderr
    assert (sweep / "runs" / "lr=0.001" / "DONE").is_file() and not (sweep / "runs" / "lr=1e+30" / "DONE").exists()
    assert len(report_rows(sweep)) == 1  # the report of the finished run is written all the same


@pytest.mark.slow
def test_sigterm_reaches_every_run_and_the_same_command_resumes_them(tmp_path, tiny_dataset):
    args = [sys.executable, "-m", "lesionseg", "sweep", REPO / "configs" / "demo.yaml",
            f"data.datalist={tiny_dataset}", "output_dir=experiments", "name=long", *TINY,
            "sweep={loss.beta: [0.5, 0.8]}", "train.iterations=60", "train.val_every=3", "--parallel", "2", "-q"]
    args = list(map(str, args))
    runs = tmp_path / "experiments" / "long" / "runs"
    proc = subprocess.Popen(args, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not all((runs / rid / "checkpoints" / "last.pt").is_file() for rid in ("beta=0.5", "beta=0.8")):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "no checkpoints appeared"
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 1 and "sweep stopped by SIGTERM" in err and "Run the same command again" in err
    assert "[beta=0.5] stopped by SIGTERM" not in err  # the children's own stop is not reported as a failure
    assert not list(runs.glob("*/DONE"))

    again = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr
    for rid in ("beta=0.5", "beta=0.8"):
        assert f"[{rid}] resuming after iteration" in again.stdout + again.stderr
        assert (runs / rid / "DONE").is_file()


@pytest.mark.slow
def test_sigterm_with_runs_still_waiting_returns_at_once(tmp_path, tiny_dataset):
    """One run at a time, three waiting: the stop must not wait for runs that will never start."""
    args = [sys.executable, "-m", "lesionseg", "sweep", REPO / "configs" / "demo.yaml",
            f"data.datalist={tiny_dataset}", "output_dir=experiments", "name=queue", *TINY,
            "sweep={loss.beta: [0.5, 0.6, 0.7, 0.8]}", "train.iterations=60", "train.val_every=3",
            "--parallel", "1", "-q"]
    runs = tmp_path / "experiments" / "queue" / "runs"
    proc = subprocess.Popen(list(map(str, args)), cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.monotonic() + 300
    while not (runs / "beta=0.5" / "checkpoints" / "last.pt").is_file():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)  # it hung here for ever before
    assert proc.returncode == 1 and "sweep stopped by SIGTERM" in err
    assert not (runs / "beta=0.6").exists() and not list(runs.glob("*/DONE"))


# --------------------------------------------------------------------------------------------- ray

@pytest.fixture
def local_ray():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, configure_logging=False)
    yield ray
    ray.shutdown()


@pytest.mark.slow
def test_ray_backend_on_a_local_instance_matches_the_local_backend(local_sweeps, local_ray, capfd):
    _, local, config = local_sweeps
    capfd.readouterr()
    on_ray = lesionseg.sweep(config("name=ray", "sweep.backend=ray"), progress=False).parent
    assert "Ray: 2 runs on 2 CPUs, 0 GPUs; each 1 CPU" in capfd.readouterr().out
    for rid in ("beta=0.5", "beta=0.8"):
        assert (on_ray / "runs" / rid / "DONE").is_file()
        assert cases(on_ray, rid) == cases(local, rid)  # each run had one CPU thread in both
    assert [r["beta"] for r in report_rows(on_ray)] == ["0.5", "0.8"]

    stamps = done_stamps(on_ray)
    lesionseg.sweep(config("name=ray", "sweep.backend=ray"), progress=False)
    assert "2 of 2 runs already finished" in capfd.readouterr().out and done_stamps(on_ray) == stamps


@pytest.mark.slow
def test_ray_backend_reports_a_failed_task_after_the_others(tiny_config, local_ray, capfd):
    cfg = tiny_config("sweep={train.lr: [0.001, 1.0e+30]}", "name=raybad", "sweep.backend=ray")
    with pytest.raises(LesionsegError, match=r"(?s)1 run\(s\) of .*lr=1e\+30: training loss became nan"):
        lesionseg.sweep(cfg, progress=False)
    runs = cfg.output_dir / "raybad" / "runs"
    assert (runs / "lr=0.001" / "DONE").is_file()
    # An error of the run itself is not retried: a second attempt would have set the folder (no checkpoint
    # yet) aside as lr=1e+30.old-<time> and started over.
    assert sorted(p.name for p in runs.iterdir()) == ["lr=0.001", "lr=1e+30"]
    assert "Ray retry" not in capfd.readouterr().out


# A retried Ray task (its worker or node died) without a cluster: `_ray_attempt` is what Ray's core worker says.

def test_a_ray_retry_says_so_and_resumes_through_run_one(tmp_path, monkeypatch, capsys):
    run_dir = tmp_path / "runs" / "beta=0.7"
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "checkpoints" / "last.pt").write_bytes(b"")
    calls = []
    monkeypatch.setattr(ray_backend, "run_from_yaml", lambda text, folder, progress: calls.append(folder) or "line")
    monkeypatch.setattr(ray_backend, "_ray_attempt", lambda: 0)
    assert ray_backend._ray_run("{}", str(run_dir)) == {"line": "line", "attempt": 0}
    assert capsys.readouterr().out == ""
    monkeypatch.setattr(ray_backend, "_ray_attempt", lambda: 1)
    assert ray_backend._ray_run("{}", str(run_dir)) == {"line": "line", "attempt": 1}
    assert calls == [run_dir, run_dir]  # the retry goes through run_one, which resumes from the checkpoint
    assert capsys.readouterr().out == (f"[beta=0.7] Ray retry 1 of at most {ray_backend.RAY_RETRIES}: the worker or "
                                       f"node of the previous attempt died; resuming from "
                                       f"{run_dir / 'checkpoints' / 'last.pt'}\n")
    (run_dir / "checkpoints" / "last.pt").unlink()  # it died before its first checkpoint: run_one starts over
    monkeypatch.setattr(ray_backend, "_ray_attempt", lambda: 2)
    assert ray_backend._ray_run("{}", str(run_dir)) == {"line": "line", "attempt": 2}
    assert capsys.readouterr().out.endswith(f"Ray retry 2 of at most {ray_backend.RAY_RETRIES}: the worker or node of the "
                                            "previous attempt died; no checkpoint yet: starting over\n")


def test_a_ray_retry_of_a_run_finished_before_its_worker_died_returns_its_result(tmp_path, monkeypatch):
    from lesionseg.files import write_json
    from lesionseg.runs import mark_done

    run_dir = tmp_path / "runs" / "beta=0.7"
    per_case = {m: {"mean": 0.5} for m in ("dsc", "f2", "sensitivity", "precision", "apr")}
    write_json(run_dir / "metrics" / "summary.json", {"per_case": per_case})
    mark_done(run_dir)
    stamp = (run_dir / "DONE").stat().st_mtime_ns
    monkeypatch.setattr(ray_backend, "run_from_yaml", lambda *args: pytest.fail("ran a finished run again"))
    monkeypatch.setattr(ray_backend, "_ray_attempt", lambda: 1)
    assert ray_backend._ray_run("{}", str(run_dir)) == {
        "line": summary_line("beta=0.7", {"per_case": per_case}), "attempt": 1}
    assert (run_dir / "DONE").stat().st_mtime_ns == stamp


def test_a_run_whose_ray_worker_died_on_every_attempt_says_so():
    exceptions = pytest.importorskip("ray.exceptions")
    message = ray_backend._ray_error(exceptions.WorkerCrashedError())
    assert message.startswith(f"its Ray worker or node died on every attempt ({1 + ray_backend.RAY_RETRIES}: Ray "
                              f"retried it {ray_backend.RAY_RETRIES} times): WorkerCrashedError: The worker died")
    message = ray_backend._ray_error(exceptions.NodeDiedError("node 12ab is dead"))
    assert message.startswith("its Ray worker or node died on every attempt") and message.endswith(
        ": NodeDiedError: node 12ab is dead")
