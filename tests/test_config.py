from pathlib import Path

import pytest

from lesionseg.config import Config, expand_sweep, load_config, parse_overrides, run_id
from lesionseg.errors import LesionsegError

REPO = Path(__file__).resolve().parents[1]


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize("path", sorted((REPO / "configs").rglob("*.yaml")), ids=lambda p: p.name)
def test_every_config_in_the_repository_loads(path):
    assert isinstance(load_config(path), Config)


def test_base_yaml_lists_every_default():
    base = load_config(REPO / "configs" / "base.yaml").model_dump(mode="json")
    defaults = Config().model_dump(mode="json")
    base.pop("output_dir"), defaults.pop("output_dir")
    assert base == defaults


def test_extends_merges_deeply_and_child_wins(tmp_path):
    write(tmp_path / "parent.yaml", "seed: 3\nloss: {beta: 0.6, batch: true}\ntrain: {lr: 0.01}\n")
    child = write(tmp_path / "child.yaml", "extends: parent.yaml\nloss: {beta: 0.8}\n")
    cfg = load_config(child)
    assert (cfg.seed, cfg.loss.beta, cfg.loss.batch, cfg.train.lr) == (3, 0.8, True, 0.01)


def test_overrides_are_yaml_and_win_over_files(tmp_path):
    path = write(tmp_path / "c.yaml", "loss: {beta: 0.6}\n")
    cfg = load_config(path, ["loss.beta=0.9", "model.channels=[8,16,32]", "model.strides=[2,2]", "name=x"])
    assert cfg.loss.beta == 0.9 and cfg.model.channels == [8, 16, 32] and cfg.name == "x"


def test_alpha_defaults_to_one_minus_beta():
    assert Config.model_validate({"loss": {"beta": 0.7}}).loss.resolved_alpha == pytest.approx(0.3)
    assert Config.model_validate({"loss": {"beta": 0.7, "alpha": 0.5}}).loss.resolved_alpha == 0.5


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["loss.beta=1.3"], r"loss\.beta = 1\.3: Input should be less than 1"),
        (["loss.betta=0.7"], r"loss\.betta: unknown key"),
        (["loss.name=hinge"], r"loss\.name = 'hinge'"),
        (["train.device=tpu"], r"train\.device = 'tpu'"),
        (["data.patch_size=[30,32,32]"], r"divisible by 8"),
        (["model.strides=[2,2]"], r"model\.strides has 2 entries"),
        (["sweep={loss.gammma: [1, 2]}"], r"sweep key 'loss\.gammma' is not a config key"),
        (["loss.beta"], r"must look like dotted\.key=value"),
        (["data.orientation=XYZ"], r"data\.orientation = 'XYZ': .*one of each of L/R, P/A, I/S"),
        (["data.orientation=RRS"], r"not three axis codes"),
        (["seed=4294967296"], r"seed = 4294967296: Input should be less than 4294967296"),
    ],
)
def test_bad_values_name_the_key(tmp_path, overrides, message):
    path = write(tmp_path / "c.yaml", "name: x\n")
    with pytest.raises(LesionsegError, match=message):
        load_config(path, overrides)


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(LesionsegError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(LesionsegError, match="not valid YAML"):
        load_config(write(tmp_path / "bad.yaml", "loss: {beta: [\n"))
    with pytest.raises(LesionsegError, match="extend each other in a loop"):
        load_config(write(tmp_path / "loop.yaml", "extends: loop.yaml\n"))


def test_relative_paths_are_resolved(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = load_config(write(tmp_path / "c.yaml", "data: {datalist: d/list.json}\n"))
    assert cfg.data.datalist == tmp_path / "d" / "list.json" and cfg.output_dir == tmp_path / "experiments"


def test_sweep_is_a_cartesian_product_in_order(tmp_path):
    path = write(tmp_path / "s.yaml", "sweep: {loss.beta: [0.5, 0.7], seed: [0, 1]}\n")
    runs = expand_sweep(load_config(path))
    assert [rid for rid, _ in runs] == ["beta=0.5_seed=0", "beta=0.5_seed=1", "beta=0.7_seed=0", "beta=0.7_seed=1"]
    assert [(c.loss.beta, c.seed) for _, c in runs] == [(0.5, 0), (0.5, 1), (0.7, 0), (0.7, 1)]
    assert all(c.sweep == {} for _, c in runs)


def test_sweep_values_are_validated(tmp_path):
    path = write(tmp_path / "s.yaml", "sweep: {loss.beta: [0.5, 1.5]}\n")
    with pytest.raises(LesionsegError, match=r"(?s)sweep run beta=1\.5.*loss\.beta = 1\.5"):
        expand_sweep(load_config(path))


def test_parse_overrides_nests_and_run_id():
    assert parse_overrides(["a.b=1", "a.c=[1, 2]", "d=x"]) == {"a": {"b": 1, "c": [1, 2]}, "d": "x"}
    assert run_id({"loss.beta": 0.7, "seed": 0}) == "beta=0.7_seed=0"


def test_a_key_given_twice_is_an_error(tmp_path):
    path = tmp_path / "dup.yaml"
    path.write_text("name: a\ntrain:\n  lr: 0.1\n  iterations: 3\n  lr: 0.2\n")
    with pytest.raises(LesionsegError, match=r"key 'lr' is given twice \(lines 3 and 5\); keep one"):
        load_config(path)


def test_a_binary_file_as_config_or_extends_is_one_clear_error(tmp_path):
    binary = tmp_path / "model.pt"
    binary.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(LesionsegError, match=r"model.pt is not a text file"):
        load_config(binary)
    child = tmp_path / "child.yaml"
    child.write_text("extends: model.pt\n")
    with pytest.raises(LesionsegError, match=r"model.pt is not a text file"):
        load_config(child)


def test_a_baseline_replaces_the_parents_not_merges_with_it(tmp_path):
    child = write(tmp_path / "c.yaml", f"extends: {REPO / 'configs' / 'base.yaml'}\nreport:\n  baseline: {{loss.name: dice}}\n")
    assert load_config(child).report.baseline == {"loss.name": "dice"}
    assert load_config(REPO / "configs" / "base.yaml", ["report.baseline={train.lr: 0.001}"]).report.baseline == {
        "train.lr": 0.001}
    with pytest.raises(LesionsegError, match=r"report.baseline key 'loss.nam' is not a config key"):
        load_config(child, ["report.baseline={loss.nam: dice}"])


def test_the_beta_sweeps_train_with_a_cross_entropy_term_and_the_loss_comparison_without():
    # base.yaml: Tversky + 1 × CE (issue 24); sweep_losses.yaml compares each loss of the literature alone
    assert load_config(REPO / "configs" / "sweep_beta.yaml").loss.resolved_ce_weight == 1.0
    assert load_config(REPO / "configs" / "examples" / "open_ms_patient.yaml").loss.resolved_ce_weight == 1.0
    assert load_config(REPO / "configs" / "sweep_losses.yaml").loss.resolved_ce_weight == 0.0


@pytest.mark.parametrize("name, weight", [("tversky", 1.0), ("dice", 1.0), ("jaccard", 1.0), ("focal_tversky", 1.0),
                                          ("ce", 0.0), ("wce", 0.0), ("focal", 0.0), ("dice_ce", 0.0)])
def test_ce_weight_auto_adds_cross_entropy_only_to_the_losses_without_it(name, weight):
    loss = load_config(REPO / "configs" / "base.yaml", [f"loss.name={name}", "loss.pos_weight=10"]).loss
    assert loss.ce_weight == "auto" and loss.resolved_ce_weight == weight
    assert Config.model_validate({"loss": {"name": name, "pos_weight": 10, "ce_weight": 0}}).loss.resolved_ce_weight == 0
    assert Config.model_validate({"loss": {"name": "dice", "ce_weight": 0.5}}).loss.resolved_ce_weight == 0.5


def test_a_cross_entropy_term_on_a_cross_entropy_loss_is_a_config_error_naming_the_fix(tmp_path):
    with pytest.raises(LesionsegError, match=r"loss.ce_weight 1 would add cross-entropy to loss.name dice_ce.*auto"):
        load_config(REPO / "configs" / "base.yaml", ["loss.name=dice_ce", "loss.ce_weight=1"])
    for bad in (-0.5, "often"):
        with pytest.raises(LesionsegError, match="ce_weight"):
            load_config(REPO / "configs" / "base.yaml", [f"loss.ce_weight={bad}"])
    # a sweep over the losses fails before any run starts, naming the run
    cfg = write(tmp_path / "s.yaml", f"extends: {REPO / 'configs' / 'base.yaml'}\nloss:\n  ce_weight: 1\n"
                "sweep:\n  loss.name: [dice, ce]\n")
    with pytest.raises(LesionsegError, match=r"name=ce"):
        expand_sweep(load_config(cfg))
    # with auto every loss of the sweep gets its own weight
    weights = {rid: c.loss.resolved_ce_weight for rid, c in expand_sweep(load_config(cfg, ["loss.ce_weight=auto"]))}
    assert weights == {"name=dice": 1.0, "name=ce": 0.0}


@pytest.mark.parametrize("key, value, ok", [
    ("threshold", 1.0, True),  # a binary mask as it is; a threshold tuned on validation can be 1
    ("threshold", 0.0, False), ("threshold", 1.5, False),
    ("calibration_bins", 2, True), ("calibration_bins", 1, False),  # one bin is no reliability diagram
    ("size_bins_ml", [0.01, 0.1], True), ("size_bins_ml", [0.1, 0.01], False), ("size_bins_ml", [0, 1], False),
    ("lesion_min_overlap", 1.0, True), ("lesion_min_voxels", 0, False), ("min_component_ml", -1, False),
])
def test_the_config_and_the_evaluator_apply_one_set_of_evaluation_rules(key, value, ok):
    from lesionseg.config import eval_options
    from lesionseg.evaluation.options import check_options

    def accepted(check) -> bool:
        try:
            check()
            return True
        except (LesionsegError, ValueError):
            return False

    assert accepted(lambda: load_config(REPO / "configs" / "base.yaml", [f"eval.{key}={value}"])) == ok
    assert accepted(lambda: eval_options(**{key: value})) == ok
    if key in ("threshold", "size_bins_ml", "lesion_min_overlap", "lesion_min_voxels"):  # the evaluator's own check
        options = {"threshold": 0.5, "lesion_min_voxels": 1, "lesion_min_overlap": 0.0, "size_bins": [0.01],
                   **{("size_bins" if key == "size_bins_ml" else key): value}}
        assert accepted(lambda: check_options(options["threshold"], 2.0, options["lesion_min_voxels"],
                                              options["lesion_min_overlap"], options["size_bins"])) == ok
