import torch

from lesionseg.runs import open_run_dir, start_run_dir


def test_a_changed_config_does_not_resume_but_keeps_the_old_folder(tiny_config, tmp_path):
    run = tmp_path / "run"
    start_run_dir(run, tiny_config())
    (run / "checkpoints").mkdir()
    torch.save({"model": {}, "iteration": 3}, run / "checkpoints" / "last.pt")
    assert start_run_dir(run, tiny_config()) == run and (run / "checkpoints" / "last.pt").is_file()  # resumable
    assert open_run_dir(run, tiny_config())["iteration"] == 3  # the state train_run resumes from, read once
    start_run_dir(run, tiny_config("loss.beta=0.9"))
    (old,) = tmp_path.glob("run.old-*")
    assert torch.load(old / "checkpoints" / "last.pt")["iteration"] == 3
    assert not (run / "checkpoints").exists() and "beta: 0.9" in (run / "config.yaml").read_text()


def test_ce_weight_auto_and_the_weight_it_stands_for_are_the_same_run():
    from lesionseg.config import Config, flat_keys
    from lesionseg.runs import config_differences

    saved = Config.model_validate({"loss": {"ce_weight": 1.0}}).model_dump(mode="json")
    assert config_differences(saved, Config()) == []  # tversky: auto → 1
    saved = Config.model_validate({"loss": {"name": "ce", "ce_weight": 0.0}}).model_dump(mode="json")
    assert config_differences(saved, Config.model_validate({"loss": {"name": "ce"}})) == []
    saved = Config.model_validate({"loss": {"ce_weight": 0.0}}).model_dump(mode="json")
    assert config_differences(saved, Config()) == ["loss.ce_weight: 0.0 → 1.0"]
    assert "loss.ce_weight" in flat_keys(saved)


def test_only_sweep_paths_spells_the_names_of_a_sweep_folder():
    import ast

    from helpers import REPO

    from lesionseg.runs import SweepPaths

    paths = SweepPaths(REPO)
    files = {paths.config.name, paths.summary.name, paths.report_csv.name, paths.stats.name, paths.html.name}
    folders = {paths.runs.name, paths.cv.name, paths.report.name}
    spelled = []
    for path in (REPO / "lesionseg").rglob("*.py"):
        if path.name == "runs.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            joined = isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div) and isinstance(
                node.right, ast.Constant) and node.right.value in folders | files  # sweep_dir / "report"
            if joined or (isinstance(node, ast.Constant) and node.value in files):
                spelled.append(f"{path.relative_to(REPO)}:{node.lineno}")
    assert not spelled, spelled
