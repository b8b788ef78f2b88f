"""Cross-validated configurations (`lesionseg.experiment.cv`): hand-made fold runs merged, the ensemble of the fold
models, and the report that treats the folds as one configuration."""

import json

import nibabel as nib
import numpy as np
import pytest
import torch
from helpers import REPO, TINY

import lesionseg
from lesionseg.config import dump_yaml, expand_sweep, load_config
from lesionseg.data.preprocessing import load_datalist
from lesionseg.evaluation.evaluate import evaluate_cases, evaluate_cases_at
from lesionseg.experiment.cv import configurations, merge_configuration
from lesionseg.inference import predict_cases
from lesionseg.model import build_model
from lesionseg.runs import mark_done


def sweep_config(tiny_dataset, tmp_path, *extra):
    return load_config(REPO / "configs" / "demo.yaml", [
        f"data.datalist={tiny_dataset}", f"output_dir={tmp_path}", "name=cv", *TINY, "data.folds=3",
        "sweep={data.fold: [0, 1, 2], loss.beta: [0.5, 0.7]}", "eval.overlap=0", *extra])  # fewer windows


def hand_made_fold_run(run_dir, cfg, seed):
    """A finished fold run as `run.run_one` leaves it, without training: a seeded random model, a
    prediction of each of its fold's cases (the label blurred with noise), tuned thresholds and the test
    cases evaluated at them."""
    rng = np.random.default_rng(seed)
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(dump_yaml(cfg))
    (run_dir / "checkpoints").mkdir()
    torch.manual_seed(seed)
    torch.save({"model": build_model(cfg).state_dict()}, run_dir / "checkpoints" / "best.pt")
    cases = []
    for entry in load_datalist(cfg)["test"]:
        label = nib.load(entry["label"])
        prob = np.clip(0.7 * np.asanyarray(label.dataobj) + rng.uniform(0, 0.45, label.shape), 0, 1)
        path = run_dir / "predictions" / f"{entry['case']}.nii.gz"
        path.parent.mkdir(exist_ok=True)
        nib.save(nib.Nifti1Image(prob.astype(np.float32), label.affine), str(path))
        cases.append((entry["case"], path, entry["label"]))
    thresholds = {"dsc": float(rng.uniform(0.4, 0.6)), "f2": float(rng.uniform(0.3, 0.5))}
    froc_threshold = [0.3, 0.6, 0.9][seed % 3]  # where the fold's validation found 1 false lesion per scan
    (run_dir / "thresholds.json").write_text(json.dumps({**{m: {"threshold": t} for m, t in thresholds.items()},
                                                         "froc": {"threshold": froc_threshold}}))
    evaluate_cases_at(cases, {run_dir / "metrics": 0.5,
                              **{run_dir / f"metrics-tuned-{m}": t for m, t in thresholds.items()}}, progress=False)
    mark_done(run_dir)
    return cases, thresholds


@pytest.fixture
def cv_sweep(tiny_dataset, tmp_path):
    cfg = sweep_config(tiny_dataset, tmp_path)
    sweep_dir = tmp_path / "cv"
    sweep_dir.mkdir()
    (sweep_dir / "sweep.yaml").write_text(dump_yaml(cfg))
    made = {rid: hand_made_fold_run(sweep_dir / "runs" / rid, run_cfg, i)
            for i, (rid, run_cfg) in enumerate(expand_sweep(cfg))}
    return cfg, sweep_dir, made


def test_the_folds_of_a_configuration_are_merged_and_every_case_scored_once(cv_sweep, tmp_path):
    cfg, sweep_dir, made = cv_sweep
    groups = configurations(expand_sweep(cfg), cfg.sweep)
    assert {cid: [rid for rid, _ in m] for cid, m in groups.items()} == {
        "beta=0.5": ["fold=0_beta=0.5", "fold=1_beta=0.5", "fold=2_beta=0.5"],
        "beta=0.7": ["fold=0_beta=0.7", "fold=1_beta=0.7", "fold=2_beta=0.7"]}
    out = merge_configuration(sweep_dir, "beta=0.7", groups["beta=0.7"], progress=False)
    training = [e["case"] for e in load_datalist(load_config(REPO / "configs" / "demo.yaml", [
        f"data.datalist={cfg.data.datalist}"]))["training"]]
    # metrics/: the out-of-fold predictions evaluated together — what the evaluator gives on the same pairs
    pairs = [c for rid, _ in groups["beta=0.7"] for c in made[rid][0]]
    assert sorted(case for case, _, _ in pairs) == sorted(training)
    at_1fp = [json.loads((sweep_dir / "runs" / rid / "thresholds.json").read_text())["froc"]["threshold"]
              for rid, _ in groups["beta=0.7"] for _ in made[rid][0]]  # each case at its own fold's choice
    by_hand = evaluate_cases(pairs, tmp_path / "by-hand", threshold=0.5, progress=False, froc_thresholds=at_1fp,
                             brains=[cfg.data.datalist.parent / "masks" / f"{c}.nii.gz" for c, _, _ in pairs])
    assert (out / "metrics" / "cases.csv").read_text() == (tmp_path / "by-hand" / "cases.csv").read_text()
    summary = json.loads((out / "metrics" / "summary.json").read_text())
    assert summary["pooled"]["apr"] == pytest.approx(by_hand["pooled"]["apr"])  # one curve over all voxels
    assert summary["froc"]["verdict"]["chosen_on"] == "validation" and summary["froc"]["verdict"]["thresholds"] == [
        0.3, 0.6, 0.9]
    # metrics-tuned-dsc/: each case at its own fold's threshold; the thresholds and their mean
    rows = []
    for rid, _ in groups["beta=0.7"]:
        rows += (sweep_dir / "runs" / rid / "metrics-tuned-dsc" / "cases.csv").read_text().splitlines()[1:]
    assert (out / "metrics-tuned-dsc" / "cases.csv").read_text().splitlines()[1:] == rows
    per_fold = [made[rid][1]["dsc"] for rid, _ in groups["beta=0.7"]]
    thresholds = json.loads((out / "thresholds.json").read_text())
    assert thresholds["dsc"]["per_fold"] == per_fold
    assert thresholds["dsc"]["threshold"] == pytest.approx(np.mean(per_fold))
    tuned = json.loads((out / "metrics-tuned-dsc" / "summary.json").read_text())
    dsc = [float(r.split(",")[1]) for r in rows]
    assert tuned["n_cases"] == len(training) and tuned["per_case"]["dsc"]["mean"] == pytest.approx(np.mean(dsc))
    assert (out / "DONE").is_file()


@pytest.mark.parametrize("tta", [False, True], ids=["plain", "flips"])
def test_the_ensemble_is_the_mean_of_the_fold_models_probabilities(cv_sweep, tmp_path, tta):
    """With `eval.tta` each model's probability is itself the mean of its flipped-back predictions
    (`infer_volume`, tested against a hand computation in tests/data/test_augment.py); the ensemble averages those."""
    cfg, sweep_dir, _ = cv_sweep
    with_tta = lambda c: c.model_copy(update={"eval": c.eval.model_copy(update={"tta": tta})})
    members = [(rid, with_tta(c)) for rid, c in configurations(expand_sweep(cfg), cfg.sweep)["beta=0.5"]]
    out = merge_configuration(sweep_dir, "beta=0.5", members, progress=False)
    test = load_datalist(members[0][1])["ensemble"]
    models = []
    for rid, run_cfg in members:
        model = build_model(run_cfg)
        model.load_state_dict(torch.load(sweep_dir / "runs" / rid / "checkpoints" / "best.pt")["model"])
        models.append(model.eval())
    alone = [predict_cases(m, with_tta(cfg), test, tmp_path / f"alone-{i}", torch.device("cpu"), progress=False)
             for i, m in enumerate(models)]
    unflipped = predict_cases(models[0], cfg.model_copy(update={"eval": cfg.eval.model_copy(update={"tta": False})}),
                              test, tmp_path / "unflipped", torch.device("cpu"), progress=False)
    read = lambda path: np.asanyarray(nib.load(str(path)).dataobj)
    for j, entry in enumerate(test):
        mean = np.mean([read(paths[j]) for paths in alone], axis=0)
        ensemble = read(out / "ensemble" / "predictions" / f"{entry['case']}.nii.gz")
        assert ensemble.shape == read(entry["image"][0]).shape and np.allclose(ensemble, mean, atol=1e-6)
        # a random model is not flip-equivariant: the flips must have changed its map
        assert np.allclose(read(alone[0][j]), read(unflipped[j]), atol=1e-6) != tta
    summary = json.loads((out / "ensemble" / "metrics" / "summary.json").read_text())
    assert summary["n_cases"] == len(test)


def test_the_report_counts_each_patient_once_per_configuration(cv_sweep):
    cfg, sweep_dir, _ = cv_sweep
    lesionseg.report(sweep_dir, n_boot=200)  # merges the finished configurations first
    rows = (sweep_dir / "report" / "summary.csv").read_text().splitlines()
    header = rows[0].split(",")
    assert len(rows) == 3 and "fold" not in header  # one row per β, the folds together
    n_training = len(load_datalist(load_config(REPO / "configs" / "demo.yaml", [
        f"data.datalist={cfg.data.datalist}"]))["training"])
    assert {r.split(",")[header.index("n_cases")] for r in rows[1:]} == {str(n_training)}
    stats = json.loads((sweep_dir / "report" / "stats.json").read_text())
    assert {c["n"] for c in stats["comparisons"] if c["metric"] == "dsc"} <= {n_training}
    md = (sweep_dir / "report" / "summary.md").read_text()
    assert "## Test cases, predicted by the ensemble of the fold models" in md
    assert "## Per-case means over the out-of-fold cases" in md and f"over {n_training} out-of-fold cases" in md
    assert "Paired by out-of-fold case" in md


@pytest.mark.slow
def test_a_cross_validated_sweep_through_the_cli(tmp_path):
    from helpers import lesionseg

    lesionseg("demo-data", tmp_path / "data", "--cases", 8, "--size", 24, cwd=tmp_path)  # 6 training, 2 test
    out = lesionseg("sweep", REPO / "configs" / "sweep_beta_cv.yaml",
                    f"data.datalist={tmp_path / 'data' / 'datalist.json'}", "output_dir=experiments", *TINY,
                    "data.folds=3", "sweep={data.fold: [0, 1, 2], loss.beta: [0.5]}", "-q", cwd=tmp_path)
    sweep = tmp_path / "experiments" / "sweep-beta-cv"
    assert "merged the folds of beta=0.5" in out.stdout + out.stderr
    cases = (sweep / "cv" / "beta=0.5" / "metrics" / "cases.csv").read_text().splitlines()[1:]
    assert sorted(line.split(",")[0] for line in cases) == [f"case_{i:03d}" for i in range(6)]  # each once
    tested = [json.loads((sweep / "runs" / f"beta=0.5_fold={f}" / "split.json").read_text())["test"] for f in range(3)]
    assert sorted(c for t in tested for c in t) == [f"case_{i:03d}" for i in range(6)]
    assert json.loads((sweep / "cv" / "beta=0.5" / "ensemble" / "metrics" / "summary.json").read_text())["n_cases"] == 2
    import csv

    (row,) = list(csv.DictReader((sweep / "report" / "summary.csv").read_text().splitlines()))
    assert row["n_cases"] == "6" and "fold" not in row  # one row: the six out-of-fold cases
