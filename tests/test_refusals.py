"""Nothing overwritten, nothing mislabelled: every command checks what it can before it writes or moves
anything, and refuses to replace finished output unless told (`--force`, which moves it aside).

Each test drives the command line in a subprocess on real files."""

import json

import pytest
import torch
import yaml
from helpers import REPO, TINY, lesionseg

from lesionseg.config import load_config
from lesionseg.runs import start_run_dir

pytestmark = pytest.mark.slow
SWEEP = REPO / "configs" / "sweep_beta.yaml"


def refused(result, *phrases):
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    for phrase in phrases:
        assert phrase in result.stderr, result.stderr
    return result


def tree(folder):
    """Every file under `folder` with its bytes: what must stay as it was."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished one-run sweep on tiny phantoms: (work folder, sweep arguments, sweep folder)."""
    work = tmp_path_factory.mktemp("refusals")
    lesionseg("demo-data", work / "data", "--cases", 5, "--size", 24, cwd=work)
    args = [SWEEP, f"data.datalist={work / 'data' / 'datalist.json'}", "output_dir=experiments", "name=done",
            "sweep={loss.beta: [0.5]}", *TINY, "-q"]
    lesionseg("sweep", *args, cwd=work)
    (work / "test_labels").mkdir()
    for case in ("case_003", "case_004"):
        (work / "test_labels" / f"{case}.nii.gz").write_bytes((work / "data" / "labels" / f"{case}.nii.gz").read_bytes())
    return work, args, work / "experiments" / "done"


def test_evaluate_refuses_existing_output_and_force_moves_it_aside(finished, tmp_path):
    work, _, sweep = finished
    pred, ref = sweep / "runs" / "beta=0.5" / "predictions", work / "test_labels"
    out = tmp_path / "eval"
    lesionseg("evaluate", "--pred", pred, "--ref", ref, "--out", out, cwd=work)
    first = tree(out)
    refused(lesionseg("evaluate", "--pred", pred, "--ref", ref, "--out", out, "--threshold", 0.3, cwd=work,
                      check=False), f"{out} already holds output", "--force")
    assert tree(out) == first
    lesionseg("evaluate", "--pred", pred, "--ref", ref, "--out", out, "--threshold", 0.3, "--force", cwd=work)
    (aside,) = tmp_path.glob("eval.old-*")
    assert tree(aside) == first and json.loads((out / "summary.json").read_text())["threshold"] == 0.3


def test_evaluate_never_writes_into_a_finished_runs_metrics(finished):
    work, _, sweep = finished
    run = sweep / "runs" / "beta=0.5"
    before = tree(run)
    for force in ([], ["--force"]):
        refused(lesionseg("evaluate", "--pred", run / "predictions", "--ref", work / "test_labels",
                          "--threshold", 0.3, *force, cwd=work, check=False),
                f"{run / 'metrics'} belongs to the finished run", "--out DIR")
    assert tree(run) == before


def test_two_prediction_folders_of_one_parent_get_their_own_default_metrics(finished, tmp_path):
    work, _, sweep = finished
    for name in ("pred-a", "pred-b"):
        lesionseg("predict", sweep / "runs" / "beta=0.5", "--out", tmp_path / name, "-q", cwd=work)
        lesionseg("evaluate", "--pred", tmp_path / name, "--ref", work / "test_labels", cwd=work)
    assert (tmp_path / "metrics-pred-a" / "summary.json").is_file()
    assert (tmp_path / "metrics-pred-b" / "summary.json").is_file()


def test_predict_refuses_existing_predictions_and_force_moves_them_aside(finished, tmp_path):
    work, _, sweep = finished
    run = sweep / "runs" / "beta=0.5"
    out = tmp_path / "pred"
    lesionseg("predict", run, "--out", out, "-q", cwd=work)
    first = tree(out)
    refused(lesionseg("predict", run, "--out", out, "-q", cwd=work, check=False), "already holds output", "--force")
    assert tree(out) == first
    lesionseg("predict", run, "--out", out, "--force", "-q", cwd=work)
    (aside,) = tmp_path.glob("pred.old-*")
    assert tree(aside) == first == tree(out)  # the same model predicts the same maps


def test_demo_data_refuses_an_existing_dataset(tmp_path):
    lesionseg("demo-data", tmp_path / "d", "--cases", 3, "--size", 16, cwd=tmp_path)
    first = tree(tmp_path / "d")
    refused(lesionseg("demo-data", tmp_path / "d", "--cases", 2, "--size", 16, cwd=tmp_path, check=False),
            "already holds output", "--force")
    assert tree(tmp_path / "d") == first
    lesionseg("demo-data", tmp_path / "d", "--cases", 2, "--size", 16, "--force", cwd=tmp_path)
    (aside,) = tmp_path.glob("d.old-*")
    assert tree(aside) == first and len(json.loads((tmp_path / "d" / "datalist.json").read_text())["test"]) == 1


def test_a_changed_config_does_not_relabel_finished_runs(finished):
    work, args, sweep = finished
    before = tree(sweep)
    result = refused(lesionseg("sweep", *args, "train.lr=0.5", cwd=work, check=False),
                     "beta=0.5: train.lr: 0.001 → 0.5", "name=", "--force")
    assert "another config" in result.stderr
    assert tree(sweep) == before  # sweep.yaml not rewritten, no run touched
    # Execution keys (where and how a run executes) are not a different config.
    again = lesionseg("sweep", *args, "train.log_every=1", "data.cache=false", cwd=work)
    assert "1 of 1 runs already finished" in again.stdout + again.stderr


@pytest.mark.parametrize("setting, phrase", [
    ("train.amp=fp16", "train.amp: fp16 needs a CUDA device"),
    ("data.val_cases=9", "leave none to train on after 9 for validation"),
    ("seed=-1", "seed = -1: Input should be greater than or equal to 0"),
    ("train.device=cuda", "train.device: 'cuda' asked for, but PyTorch sees no CUDA device"),
])
def test_settings_that_cannot_run_fail_before_anything_is_written(finished, tmp_path, setting, phrase):
    if "cuda" in setting and torch.cuda.is_available():
        pytest.skip("this machine has CUDA: train.device=cuda can run")
    work, args, sweep = finished
    datalist = work / "data" / "datalist.json"
    train = [REPO / "configs" / "demo.yaml", f"data.datalist={datalist}", f"output_dir={tmp_path}", "name=bad",
             *TINY, setting]
    refused(lesionseg("train", *train, cwd=tmp_path, check=False), phrase)
    assert list(tmp_path.iterdir()) == []  # no run folder, no config.yaml, no env.json
    before = tree(sweep)
    refused(lesionseg("sweep", *args, setting, "--force", cwd=work, check=False), phrase)
    assert tree(sweep) == before and not list(sweep.parent.glob("done.old-*"))  # --force moved nothing
    refused(lesionseg("check", *train, cwd=tmp_path, check=False), phrase)  # check runs the same checks


def test_a_sweep_with_an_unlabelled_test_case_writes_nothing_and_check_says_so(finished, tmp_path):
    work = finished[0]
    raw = json.loads((work / "data" / "datalist.json").read_text())
    raw["test"][0].pop("label")
    datalist = work / "data" / "unlabelled.json"
    datalist.write_text(json.dumps(raw))
    args = [SWEEP, f"data.datalist={datalist}", f"output_dir={tmp_path}", "sweep={loss.beta: [0.5, 0.7]}", *TINY]
    result = refused(lesionseg("sweep", *args, cwd=tmp_path, check=False), "unlabelled: case_003")
    assert result.stderr.count("unlabelled: case_003") == 1  # once, not once per run
    assert list(tmp_path.iterdir()) == []
    refused(lesionseg("check", *args, cwd=tmp_path, check=False), "unlabelled: case_003")
    # Without a sweep block the config trains and predicts, which need no test label: check passes, with a note.
    note = lesionseg("check", REPO / "configs" / "demo.yaml", f"data.datalist={datalist}", *TINY, cwd=tmp_path)
    assert "note" in note.stdout and "unlabelled: case_003" in note.stdout


def test_an_unreadable_checkpoint_is_moved_aside_and_the_run_starts_over(finished, tmp_path):
    work = finished[0]
    train = [REPO / "configs" / "demo.yaml", f"data.datalist={work / 'data' / 'datalist.json'}",
             f"output_dir={tmp_path}", "name=cut", *TINY]
    run = start_run_dir(tmp_path / "cut", load_config(train[0], train[1:]))  # an interrupted run of this config
    (run / "checkpoints").mkdir()
    (run / "checkpoints" / "last.pt").write_bytes(b"PK\x03\x04 cut short by a full disk")
    result = lesionseg("train", *train, "-q", cwd=tmp_path)
    assert "cannot be read" in result.stdout and "last.pt" in result.stdout and "starting it over" in result.stdout
    (aside,) = tmp_path.glob("cut.old-*")
    assert (aside / "checkpoints" / "last.pt").read_bytes().startswith(b"PK\x03\x04 cut")
    assert (run / "DONE").is_file() and torch.load(run / "checkpoints" / "last.pt")["iteration"] == 4


def test_bad_device_names_and_usage_errors_exit_1(finished):
    work, _, sweep = finished
    pred = sweep / "runs" / "beta=0.5" / "predictions"
    refused(lesionseg("evaluate", "--pred", pred, "--ref", work / "test_labels", "--out", work / "x",
                      "--device", "gpu", cwd=work, check=False), "--device: 'gpu' is not one of auto, cpu, cuda")
    if not torch.cuda.is_available():
        refused(lesionseg("evaluate", "--pred", pred, "--ref", work / "test_labels", "--out", work / "x",
                          "--device", "cuda", cwd=work, check=False), "--device: 'cuda' asked for")
    assert not (work / "x").exists()
    usage = lesionseg("evaluate", "--pred", pred, cwd=work, check=False)
    assert usage.returncode == 1 and "the following arguments are required: --ref" in usage.stderr


def test_datalist_paths_that_are_not_text(tmp_path):
    for image in (None, 3, [None], []):
        datalist = tmp_path / "d.json"
        datalist.write_text(json.dumps({"training": [{"image": image, "label": "l.nii.gz"}]}))
        refused(lesionseg("check", REPO / "configs" / "base.yaml", f"data.datalist={datalist}",
                          "data.modalities=[flair]", cwd=tmp_path, check=False),
                "training[0]: 'image' is", "give a path or a list of paths")


def test_command_line_messages(finished, tmp_path):
    work, args, _ = finished
    unknown = refused(lesionseg("check", *args, "train.lrr=1", cwd=work, check=False))
    assert "train.lrr: unknown key (given on the command line)" in unknown.stderr
    repeated = refused(lesionseg("check", *args[:4], "sweep={loss.beta: [0.5, 0.5]}", cwd=work, check=False))
    assert "sweep.loss.beta lists 0.5 more than once" in repeated.stderr and "last parts" not in repeated.stderr
    # A string key takes the text as written, where YAML would read a boolean or a number.
    datalist = work / "data" / "datalist.json"
    named = lesionseg("train", REPO / "configs" / "demo.yaml", f"data.datalist={datalist}", f"output_dir={tmp_path}",
                      "name=off", *TINY, "-q", cwd=tmp_path)
    assert (tmp_path / "off" / "DONE").is_file(), named.stdout
    assert yaml.safe_load((tmp_path / "off" / "config.yaml").read_text())["name"] == "off"
    one = tmp_path / "one"
    one.mkdir()
    for folder in ("pred", "ref"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "case_003.nii.gz").write_bytes((work / "test_labels" / "case_003.nii.gz").read_bytes())
    single = lesionseg("evaluate", "--pred", tmp_path / "pred", "--ref", tmp_path / "ref", "--out", one / "m",
                       cwd=tmp_path)
    assert single.stdout.startswith("1 case: ")


def test_output_folders_that_cannot_be_created_and_folders_that_are_not_runs(finished, tmp_path):
    work, args, _ = finished
    (tmp_path / "afile").write_text("not a folder")
    refused(lesionseg("sweep", *args, f"output_dir={tmp_path / 'afile' / 'x'}", cwd=work, check=False),
            f"cannot create the sweep folder {tmp_path / 'afile' / 'x' / 'done'}: Not a directory")
    train = [REPO / "configs" / "demo.yaml", f"data.datalist={work / 'data' / 'datalist.json'}", *TINY]
    refused(lesionseg("train", *train, f"output_dir={tmp_path / 'afile' / 'x'}", cwd=work, check=False),
            "cannot create run folder", "Not a directory")
    refused(lesionseg("predict", tmp_path, cwd=work, check=False), f"{tmp_path} is not a run folder (no config.yaml)")


def test_force_moves_nothing_aside_when_the_command_would_fail(finished, tmp_path):
    work, _, sweep = finished
    pred, ref = sweep / "runs" / "beta=0.5" / "predictions", work / "test_labels"
    out = tmp_path / "eval"
    lesionseg("evaluate", "--pred", pred, "--ref", ref, "--out", out, cwd=work)
    first = tree(out)
    for bad in (["--threshold", 2], ["--ref-label", 3], ["--ref", work / "data" / "labels"]):
        refused(lesionseg("evaluate", "--pred", pred, "--ref", ref, "--out", out, "--force", *bad, cwd=work,
                          check=False))
        assert tree(out) == first and not list(tmp_path.glob("eval.old-*")), bad
    lesionseg("demo-data", tmp_path / "d", "--cases", 2, "--size", 16, cwd=tmp_path)
    refused(lesionseg("demo-data", tmp_path / "d", "--cases", 1, "--force", cwd=tmp_path, check=False), "too few")
    assert not list(tmp_path.glob("d.old-*"))
