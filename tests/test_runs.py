from lesionseg.runs import start_run_dir


def test_a_changed_config_does_not_resume_but_keeps_the_old_folder(tiny_config, tmp_path):
    run = tmp_path / "run"
    start_run_dir(run, tiny_config())
    (run / "checkpoints").mkdir()
    (run / "checkpoints" / "last.pt").write_bytes(b"partial")
    assert start_run_dir(run, tiny_config()) == run and (run / "checkpoints" / "last.pt").is_file()  # resumable
    start_run_dir(run, tiny_config("loss.beta=0.9"))
    (old,) = tmp_path.glob("run.old-*")
    assert (old / "checkpoints" / "last.pt").read_bytes() == b"partial"
    assert not (run / "checkpoints").exists() and "beta: 0.9" in (run / "config.yaml").read_text()
