import ast
import subprocess
import sys

import pytest
from helpers import REPO

import lesionseg
from lesionseg.config import Config, load_config
from lesionseg.errors import LesionsegError

NOTEBOOK = REPO / "docs" / "examples" / "notebook.py"


def test_the_package_exports_one_function_per_command():
    for name in ("demo_data", "check", "train", "predict", "evaluate", "sweep", "report", "load"):
        assert callable(getattr(lesionseg, name)) and name in lesionseg.__all__
    # importing lesionseg stays quick: torch, MONAI and pydantic wait until a function is called
    code = "import sys, lesionseg; print(sorted(m for m in ('torch', 'monai', 'pydantic') if m in sys.modules))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True).stdout.strip() == "[]"


def test_load_takes_a_path_or_a_config_and_applies_overrides_to_a_copy():
    path = REPO / "configs" / "demo.yaml"
    cfg = lesionseg.load(path, ["loss.beta=0.9"])
    assert cfg == load_config(path, ["loss.beta=0.9"])
    assert lesionseg.load(cfg) is cfg
    other = lesionseg.load(cfg, ["loss.beta=0.6", "train.iterations=7"])
    assert (other.loss.beta, other.train.iterations, cfg.loss.beta) == (0.6, 7, 0.9)
    assert isinstance(other, Config) and other.data == cfg.data
    with pytest.raises(LesionsegError, match=r"loss.bta"):
        lesionseg.load(cfg, ["loss.bta=0.6"])
    with pytest.raises(LesionsegError, match=r"loss.beta"):
        lesionseg.load(cfg, ["loss.beta=1.5"])


@pytest.mark.slow
def test_train_refuses_a_finished_run_and_force_moves_it_aside(tiny_config):
    cfg = tiny_config("name=api-run")
    run_dir = lesionseg.train(cfg, progress=False)
    assert run_dir == cfg.output_dir / "api-run" and (run_dir / "DONE").is_file()
    done = (run_dir / "DONE").read_bytes()
    with pytest.raises(LesionsegError, match="holds a finished run"):
        lesionseg.train(cfg, progress=False)
    assert (run_dir / "DONE").read_bytes() == done
    lesionseg.train(cfg, ["train.iterations=2"], force=True, progress=False)
    (aside,) = cfg.output_dir.glob("api-run.old-*")
    assert (aside / "DONE").read_bytes() == done and (run_dir / "DONE").is_file()


def test_evaluate_refuses_a_finished_runs_own_metrics_folder_before_writing(tmp_path):
    run = tmp_path / "run"
    (run / "predictions").mkdir(parents=True)
    (tmp_path / "refs").mkdir()
    (run / "DONE").write_text("{}")
    lesionseg.demo_data(tmp_path / "data", cases=2, size=24)
    for name in ("case_000.nii.gz", "case_001.nii.gz"):
        (run / "predictions" / name).write_bytes((tmp_path / "data" / "labels" / name).read_bytes())
        (tmp_path / "refs" / name).write_bytes((tmp_path / "data" / "labels" / name).read_bytes())
    with pytest.raises(LesionsegError, match="belongs to the finished run"):
        lesionseg.evaluate(run / "predictions", tmp_path / "refs", progress=False)
    assert not (run / "metrics").exists()
    summary = lesionseg.evaluate(run / "predictions", tmp_path / "refs", out=tmp_path / "scores", progress=False)
    assert summary["n_cases"] == 2 and summary["per_case"]["dsc"]["mean"] == 1.0


def test_the_notebook_example_uses_nothing_but_import_lesionseg():
    tree = ast.parse(NOTEBOOK.read_text())
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names} | {node.module.split(".")[0] for node in ast.walk(tree)
                                            if isinstance(node, ast.ImportFrom)}
    assert imported == {"lesionseg", "pathlib", "shutil", "sys"}
    assert not any(isinstance(node, ast.ImportFrom) and node.module.startswith("lesionseg") for node in ast.walk(tree))


@pytest.mark.slow
def test_the_notebook_example_trains_predicts_evaluates_sweeps_and_reports(tmp_path):
    result = subprocess.run([sys.executable, str(NOTEBOOK), str(tmp_path)], capture_output=True, text=True,
                            timeout=900)
    assert result.returncode == 0, result.stderr
    assert "notes: []" in result.stdout and "# Sweep report: beta-sweep" in result.stdout
    assert (tmp_path / "scores" / "summary.json").is_file()
    assert sorted(p.name for p in (tmp_path / "experiments" / "beta-sweep" / "runs").iterdir()) == [
        "beta=0.5", "beta=0.9"]
