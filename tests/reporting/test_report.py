"""The sweep report, on small hand-made sweep folders (no training): numbers against the runs' own files."""

from __future__ import annotations

import base64
import csv
import json
import math
from html.parser import HTMLParser
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from helpers import BINS, make_sweep, write_run
from scipy import stats as sps

from lesionseg.config import Config, dump_yaml, expand_sweep
from lesionseg.errors import LesionsegError
from lesionseg.evaluation.evaluate import evaluate_cases
from lesionseg.evaluation.registry import lower_is_better
from lesionseg.reporting import stats
from lesionseg.reporting.aggregate import POOLED_METRICS, TABLE_METRICS
from lesionseg.reporting.report import CASES_FIGURE, FIGURES, write_report
from lesionseg.reporting.tables import LABELS, fmt
from lesionseg.runs import mark_done


def read_csv(path: Path) -> list[dict]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def read_rows(sweep_dir: Path) -> list[dict]:
    return read_csv(sweep_dir / "report" / "summary.csv")


def run_summary(sweep_dir: Path, rid: str) -> dict:
    return json.loads((sweep_dir / "runs" / rid / "metrics" / "summary.json").read_text())


def test_table_equals_the_runs_summary_json(tmp_path):
    sweep_dir = make_sweep(tmp_path, [0.5, 0.7, 0.9])
    write_report(sweep_dir, n_boot=200)
    rows = read_rows(sweep_dir)
    assert list(rows[0])[:10] == ["beta", "alpha", "dsc", "f2", "sensitivity", "precision", "apr", "apr_pooled",
                                  "n_cases", "n_seeds"]
    assert [(float(r["beta"]), float(r["alpha"])) for r in rows] == [(0.5, 0.5), (0.7, 0.3), (0.9, 0.1)]
    for row in rows:
        summary = run_summary(sweep_dir, f"beta={float(row['beta']):g}")
        for m in TABLE_METRICS:
            pc = summary["per_case"][m]
            assert float(row[m]) == pytest.approx(pc["mean"])
            assert float(row[f"{m}_sd_cases"]) == pytest.approx(pc["sd"])
            assert int(row[f"{m}_n"]) == pc["n"]
            assert math.isnan(float(row[f"{m}_sd_seeds"]))  # one seed: no spread over seeds
        for m in POOLED_METRICS:
            assert float(row[f"{m}_pooled"]) == pytest.approx(summary["pooled"][m])
        assert float(row["apr_pooled"]) == pytest.approx(summary["pooled"]["apr"])
        assert (int(row["n_cases"]), int(row["n_seeds"])) == (8, 1)
        assert int(row["sensitivity_n"]) == 7  # the lesion-free case leaves sensitivity undefined
        for b in BINS[:3]:
            assert float(row[f"ltpr_{b}_pooled"]) == pytest.approx(summary["pooled"][f"ltpr_{b}"])
        assert math.isnan(float(row["ltpr_1ml+_pooled"])) and row["n_ref_1ml+"] == "0"


def test_seeds_are_averaged_and_their_spread_reported(tmp_path):
    sweep_dir = make_sweep(tmp_path, [0.5, 0.8], seeds=[0, 1, 2])
    write_report(sweep_dir, n_boot=200)
    for row in read_rows(sweep_dir):
        beta = f"{float(row['beta']):g}"
        means = [run_summary(sweep_dir, f"beta={beta}_seed={s}")["per_case"]["dsc"]["mean"] for s in range(3)]
        sds = [run_summary(sweep_dir, f"beta={beta}_seed={s}")["per_case"]["dsc"]["sd"] for s in range(3)]
        assert float(row["dsc"]) == pytest.approx(np.mean(means))
        assert float(row["dsc_sd_seeds"]) == pytest.approx(np.std(means, ddof=1))
        assert float(row["dsc_sd_cases"]) == pytest.approx(np.mean(sds))
        assert row["n_seeds"] == "3"
    md = (sweep_dir / "report" / "summary.md").read_text()
    assert "Repeats: mean ± SD over seeds" in md and "3 / 3" in md


def test_stats_json_against_scipy_by_hand(tmp_path):
    sweep_dir = make_sweep(tmp_path, [0.5, 0.7], seeds=[0, 1], n_cases=9)
    write_report(sweep_dir, n_boot=500)
    result = json.loads((sweep_dir / "report" / "stats.json").read_text())

    def per_case(rid, metric):
        rows = read_csv(sweep_dir / "runs" / rid / "metrics" / "cases.csv")
        return {r["case"]: float(r[metric]) for r in rows}

    for metric in ("dsc", "f2", "sensitivity"):
        base = {c: np.nanmean([per_case(f"beta=0.5_seed={s}", metric)[c] for s in (0, 1)]) for c in
                per_case("beta=0.5_seed=0", metric) if c != "case_00" or metric != "sensitivity"}
        other = {c: np.mean([per_case(f"beta=0.7_seed={s}", metric)[c] for s in (0, 1)]) for c in base}
        ids = sorted(base)
        diff = np.array([other[c] - base[c] for c in ids])
        (found,) = [c for c in result["comparisons"] if c["metric"] == metric]
        assert found["n"] == len(ids) == (8 if metric == "sensitivity" else 9)
        assert (found["n_seeds"], found["n_seeds_baseline"]) == (2, 2)
        assert found["mean_diff"] == pytest.approx(diff.mean())
        assert found["p"] == pytest.approx(sps.wilcoxon([other[c] for c in ids], [base[c] for c in ids]).pvalue)
        assert found["p_holm"] == found["p"]  # one β against the baseline: nothing to adjust
        assert (found["ci_low"], found["ci_high"]) == pytest.approx(stats.bootstrap_mean_ci(diff, n_boot=500))
        if metric != "dsc":  # recall rises with β by construction; DSC may go either way
            assert found["verdict"] == "higher than baseline"
    assert result["missing"] == [] and result["n_runs"] == 4


def test_collapsed_runs_are_marked_in_the_answer_and_the_statistics(tmp_path):
    sweep_dir = make_sweep(tmp_path, [0.5, 0.7, 0.9], seeds=[0, 1, 2])
    for seed, ratio in ((0, 23.5), (1, 18.2)):  # as the evaluator records them; the other runs predate the check
        path = sweep_dir / "runs" / f"beta=0.9_seed={seed}" / "metrics" / "summary.json"
        summary = json.loads(path.read_text())
        summary["collapse"] = [{"flag": "over-segmented", "value": ratio, "detail": f"predicted {ratio}× …"}]
        path.write_text(json.dumps(summary))
    path = sweep_dir / "runs" / "beta=0.7_seed=0" / "metrics" / "summary.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "collapse": []}))  # checked, not collapsed
    write_report(sweep_dir, n_boot=200)
    result = json.loads((sweep_dir / "report" / "stats.json").read_text())
    rule = ("predicted lesion volume over 5× or under 0.2× the reference, no lesion predicted, or a probability SD "
            "under 0.01 on every case with lesion")
    assert result["answer"][:2] == [
        ("β = 0.9 ⚠ collapsed in 2 of 3 runs on the test cases: over-segmented (predicted 23.5×, 18.2× the "
         "reference lesion volume)."),
        f"Collapsed: {rule}; the tables, figures and tests below include these runs."]
    sensitivity = next(line for line in result["answer"] if line.startswith("sensitivity:"))
    assert "β = 0.9 ⚠" in sensitivity and "β = 0.7 ⚠" not in sensitivity
    assert result["collapsed"] == {"β = 0.9": {"runs": 2, "of": 3, "flags": [
        [{"flag": "over-segmented", "value": 23.5, "detail": "predicted 23.5× …"}],
        [{"flag": "over-segmented", "value": 18.2, "detail": "predicted 18.2× …"}]]}}
    for c in result["comparisons"]:
        assert c["verdict"].endswith("(includes collapsed runs)") == (c["label"] == "β = 0.9")
    assert result["notes"] == [(f"The tests include collapsed runs (β = 0.9: 2 of 3 runs; collapsed: {rule}): a "
                                "difference with them may say only that a run failed.")]
    md = (sweep_dir / "report" / "summary.md").read_text()
    assert f"- {result['answer'][0]}" in md and f"- {result['notes'][0]}" in md
    assert "β = 0.9 ⚠ collapsed in 2 of 3 runs" in (sweep_dir / "report" / "report.html").read_text()


def test_too_few_cases_claim_nothing(tmp_path):
    sweep_dir = make_sweep(tmp_path, [0.5, 0.9], n_cases=5)
    write_report(sweep_dir, n_boot=200)
    result = json.loads((sweep_dir / "report" / "stats.json").read_text())
    assert all(c["p"] is None and c["verdict"].startswith("no test (too few pairs") for c in result["comparisons"])
    md = (sweep_dir / "report" / "summary.md").read_text()
    assert "too few pairs for a test" in md and "than baseline" not in md.split("## Against")[1].split("## Figures")[0]


def test_missing_runs_are_listed_not_counted(tmp_path):
    sweep_dir = make_sweep(tmp_path, [0.5, 0.7], seeds=[0, 1], skip=("beta=0.7_seed=1",))
    (sweep_dir / "runs" / "beta=0.5_seed=1" / "DONE").unlink()  # an interrupted run
    write_report(sweep_dir, n_boot=200)
    rows = read_rows(sweep_dir)
    assert [r["n_seeds"] for r in rows] == ["1", "1"]
    assert float(rows[0]["dsc"]) == pytest.approx(run_summary(sweep_dir, "beta=0.5_seed=0")["per_case"]["dsc"]["mean"])
    md = (sweep_dir / "report" / "summary.md").read_text()
    assert ("Missing (not finished, not counted): beta=0.5_seed=1 (started, stopped before its first checkpoint), "
            "beta=0.7_seed=1 (not started)") in md
    result = json.loads((sweep_dir / "report" / "stats.json").read_text())
    assert result["missing"] == ["beta=0.5_seed=1", "beta=0.7_seed=1"] and result["n_runs"] == 2
    # an interrupted run with a checkpoint says after which iteration; a trained one that it awaits evaluation
    run = sweep_dir / "runs" / "beta=0.5_seed=1"
    (run / "checkpoints").mkdir()
    torch.save({"iteration": 120, "model": {}}, run / "checkpoints" / "last.pt")
    write_report(sweep_dir, n_boot=200)
    states = json.loads((sweep_dir / "report" / "stats.json").read_text())["missing_state"]
    assert states == {"beta=0.5_seed=1": "interrupted after iteration 120", "beta=0.7_seed=1": "not started"}
    (run / "train_summary.json").write_text("{}")
    assert "trained, prediction or evaluation unfinished" in write_report(sweep_dir, n_boot=200).joinpath(
        "summary.md").read_text()


def test_best_beta_per_metric_is_bold(tmp_path):
    sweep_dir = make_sweep(tmp_path, [0.5, 0.6, 0.8])
    write_report(sweep_dir, n_boot=200)
    rows = read_rows(sweep_dir)
    md = (sweep_dir / "report" / "summary.md").read_text()
    table = md.split("## Per-case means")[1].split("##")[0]
    lines = [line for line in table.splitlines() if line.startswith("| 0.")]
    header = table.splitlines()[4].split(" | ")
    for m in TABLE_METRICS:
        values = [float(r[m]) for r in rows]
        best = int(np.argmin(values) if lower_is_better(m) else np.argmax(values))
        cells = [line.split(" | ")[header.index(LABELS[m])] for line in lines]
        assert [c.startswith("**") for c in cells] == [j == best for j in range(len(rows))], m
    assert "sensitivity β = 0.8" in md and "precision β = 0.5" in md


def test_no_baseline_is_said(tmp_path):
    sweep_dir = make_sweep(tmp_path, [0.6, 0.7])
    write_report(sweep_dir, n_boot=200)
    result = json.loads((sweep_dir / "report" / "stats.json").read_text())
    assert result["comparisons"] == []
    assert result["notes"] == [f"β = {b}: no finished β = 0.5 baseline to compare with" for b in (0.6, 0.7)]


def test_no_finished_run_is_an_error(tmp_path):
    sweep_dir = make_sweep(tmp_path, [0.5], skip=("beta=0.5",))
    with pytest.raises(LesionsegError, match="no finished runs"):
        write_report(sweep_dir)
    with pytest.raises(LesionsegError, match="not a sweep folder"):
        write_report(tmp_path)


class _Page(HTMLParser):
    def __init__(self):
        super().__init__()
        self.images, self.tables, self.pre, self._cell, self._in_pre = [], [], [], None, False

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.images.append(dict(attrs)["src"])
        elif tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self._cell = ""
        elif tag == "pre":
            self._in_pre = True

    def handle_endtag(self, tag):
        if tag in ("td", "th"):
            self.tables[-1][-1].append(self._cell)
            self._cell = None
        elif tag == "pre":
            self._in_pre = False

    def handle_data(self, data):
        if self._cell is not None:
            self._cell += data
        if self._in_pre:
            self.pre.append(data)


def test_html_page_holds_every_figure_and_number(tmp_path):
    sweep_dir = make_sweep(tmp_path, [0.5, 0.6, 0.7], seeds=[0, 1], n_cases=7)
    report = write_report(sweep_dir, n_boot=200)
    page = _Page()
    page.feed((report / "report.html").read_text(encoding="utf-8"))
    assert "http" not in (report / "report.html").read_text().replace("http-equiv", "")  # self-contained

    figures = {"pr_curves.png", "metrics_vs_beta.png", "lesion_size.png", "metrics_vs_threshold.png",
               "froc.png", "reliability.png"}
    assert len(page.images) == len(figures)
    embedded = {base64.b64decode(src.removeprefix("data:image/png;base64,")) for src in page.images}
    assert all(src.startswith("data:image/png;base64,") for src in page.images)
    assert embedded == {(report / f).read_bytes() for f in figures}
    assert all(png.startswith(b"\x89PNG") and len(png) > 10_000 for png in embedded)

    per_case, operating, pooled, seeds, compared = page.tables
    rows = read_rows(sweep_dir)
    for row, cells, pooled_cells, seed_cells in zip(rows, per_case[1:], pooled[1:], seeds[1:]):
        assert cells[:2] == [f"{float(row['beta']):g}", f"{float(row['alpha']):g}"]
        for i, m in enumerate(TABLE_METRICS):
            cell = cells[per_case[0].index(LABELS[m])]
            assert cell.startswith(f"{fmt(float(row[m]), m)} ± {fmt(float(row[m + '_sd_cases']), m)}")
            assert seed_cells[2 + i] == f"{fmt(float(row[m]), m)} ± {fmt(float(row[m + '_sd_seeds']), m)}"
        for m in ("dsc", "f2"):
            assert cells[per_case[0].index(LABELS[f"{m}_tuned"])].startswith(fmt(float(row[f"{m}_at_t{m}"])))
        assert cells[-2:] == [row["n_cases"], row["n_seeds"]]
        for i, m in enumerate(POOLED_METRICS):
            assert pooled_cells[2 + i].startswith(fmt(float(row[f"{m}_pooled"]), m))
    assert "(n=6)" in per_case[1][per_case[0].index("sensitivity")]  # defined on 6 of 7 cases
    assert operating[0][2:] == ["DSC @0.5", "F2 @0.5", "sens. @0.5", "prec. @0.5", "t_DSC", "DSC @t_DSC",
                                "sens. @t_DSC", "prec. @t_DSC", "t_F2", "F2 @t_F2", "sens. @t_F2", "prec. @t_F2"]
    for row, cells in zip(rows, operating[1:]):
        assert cells[6] == f"{fmt(float(row['threshold_dsc']))} ± {fmt(float(row['threshold_dsc_sd_seeds']))}"
        assert cells[7].startswith(fmt(float(row["dsc_at_tdsc"]))) and cells[11].startswith(fmt(float(row["f2_at_tf2"])))

    result = json.loads((report / "stats.json").read_text())
    assert len(compared) - 1 == len(result["comparisons"]) == 14  # 2 βs × (5 fixed + 2 tuned metrics)
    for c, cells in zip(result["comparisons"], compared[1:]):
        assert cells[0] == c["label"] and cells[2] == c["verdict"] and cells[3] == str(c["n"])
        assert cells[7] == f"{c['mean_diff']:+.3f} [{c['ci_low']:+.3f}, {c['ci_high']:+.3f}]"
        assert cells[8] == f"{c['p']:.3g}"
    assert "loss.beta" in "".join(page.pre) and "seed" in "".join(page.pre)


def test_real_evaluator_output_reports(tmp_path):
    """The report reads what `evaluate_cases` writes (not only the hand-made files above)."""
    cfg = Config.model_validate({"name": "real", "sweep": {"loss.beta": [0.5, 0.7]}})
    sweep_dir = tmp_path / "real"
    sweep_dir.mkdir()
    (sweep_dir / "sweep.yaml").write_text(dump_yaml(cfg))
    rng = np.random.default_rng(0)
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    refs = []
    for i in range(3):
        ref = np.zeros((12, 12, 12), np.uint8)
        if i:  # case 0 has no lesion
            ref[3:6, 3:6, 3:6] = 1
            ref[8, 8, 8 - i] = 1
        nib.save(nib.Nifti1Image(ref, affine), tmp_path / f"ref{i}.nii.gz")
        refs.append(ref)
    for rid, run_cfg in expand_sweep(cfg):
        run = sweep_dir / "runs" / rid
        cases = []
        for i, ref in enumerate(refs):
            prob = np.clip(ref * run_cfg.loss.beta + rng.uniform(0, 0.45, ref.shape), 0, 1).astype(np.float32)
            nib.save(nib.Nifti1Image(prob, affine), tmp_path / f"{rid}_{i}.nii.gz")
            cases.append((f"case{i}", tmp_path / f"{rid}_{i}.nii.gz", tmp_path / f"ref{i}.nii.gz"))
        evaluate_cases(cases, run / "metrics", progress=False)
        mark_done(run)
    report = write_report(sweep_dir, n_boot=200)
    rows = read_rows(sweep_dir)
    for row, rid in zip(rows, ("beta=0.5", "beta=0.7")):
        summary = run_summary(sweep_dir, rid)
        for m in TABLE_METRICS:
            assert float(row[m]) == pytest.approx(summary["per_case"][m]["mean"], nan_ok=True)
    assert {p.name for p in report.iterdir()} >= {"summary.md", "summary.csv", "stats.json", "report.html",
                                                   "pr_curves.png", "metrics_vs_beta.png", "lesion_size.png"}


def test_tuned_thresholds_and_their_statistics_come_from_the_runs_files(tmp_path):
    sweep_dir = make_sweep(tmp_path, [0.5, 0.7, 0.9], seeds=[0, 1], n_cases=9)
    report = write_report(sweep_dir, n_boot=300)
    rows = read_rows(sweep_dir)
    for row in rows:
        rids = [f"beta={float(row['beta']):g}_seed={s}" for s in (0, 1)]
        for m in ("dsc", "f2"):
            chosen = [json.loads((sweep_dir / "runs" / r / "thresholds.json").read_text())[m]["threshold"] for r in rids]
            assert float(row[f"threshold_{m}"]) == pytest.approx(np.mean(chosen))
            assert float(row[f"threshold_{m}_sd_seeds"]) == pytest.approx(np.std(chosen, ddof=1))
            tuned = [json.loads((sweep_dir / "runs" / r / f"metrics-tuned-{m}" / "summary.json").read_text())
                     for r in rids]
            for k in ("dsc", "f2", "sensitivity", "precision"):
                assert float(row[f"{k}_at_t{m}"]) == pytest.approx(np.mean([t["per_case"][k]["mean"] for t in tuned]))
        assert float(row["ece_pooled"]) == pytest.approx(0.004 * (1 + float(row["beta"])))

    result = json.loads((report / "stats.json").read_text())
    for m in ("dsc", "f2"):
        def per_case(rid, folder):
            return {r["case"]: float(r[m]) for r in read_csv(sweep_dir / "runs" / rid / folder / "cases.csv")}
        base = {c: np.mean([per_case(f"beta=0.5_seed={s}", f"metrics-tuned-{m}")[c] for s in (0, 1)])
                for c in per_case("beta=0.5_seed=0", "metrics")}
        other = {c: np.mean([per_case(f"beta=0.9_seed={s}", f"metrics-tuned-{m}")[c] for s in (0, 1)]) for c in base}
        (found,) = [c for c in result["comparisons"] if c["metric"] == f"{m}_tuned" and c["beta"] == 0.9]
        ids = sorted(base)
        assert found["mean_diff"] == pytest.approx(np.mean([other[c] - base[c] for c in ids]))
        assert found["p"] == pytest.approx(sps.wilcoxon([other[c] for c in ids], [base[c] for c in ids]).pvalue)
        fixed = [c for c in result["comparisons"] if c["metric"] == m and c["beta"] == 0.9]
        assert len(fixed) == 1 and fixed[0]["mean_diff"] != found["mean_diff"]

    md = (report / "summary.md").read_text()
    verdict = md.split("## Is a larger β more than a lower threshold?")[1].split("##")[0]
    assert verdict.count("- ") == 2 and "at the tuned thresholds the best is" in verdict
    assert "significant difference(s) at the fixed threshold" in verdict
    assert result["threshold_tuning"] == [line[2:] for line in verdict.strip().splitlines()]
    for name in ("metrics_vs_threshold.png", "reliability.png"):
        png = (report / name).read_bytes()
        assert png.startswith(b"\x89PNG") and len(png) > 20_000


def test_runs_without_tuned_thresholds_still_report(tmp_path):
    """Runs without validation cases (or evaluated before tuning existed) give n/a, and the report says why."""
    sweep_dir = make_sweep(tmp_path, [0.5, 0.7], tuned=False)
    report = write_report(sweep_dir, n_boot=200)
    rows = read_rows(sweep_dir)
    assert all(math.isnan(float(r["threshold_dsc"])) and math.isnan(float(r["dsc_at_tdsc"])) for r in rows)
    result = json.loads((report / "stats.json").read_text())
    assert [c["n"] for c in result["comparisons"] if c["metric"].endswith("_tuned")] == [0, 0]
    assert result["threshold_tuning"][0].startswith("No run has thresholds tuned on validation cases")
    assert "n/a" in (report / "summary.md").read_text().split("## Operating points")[1].split("##")[0]


def make_loss_sweep(root: Path, names, baseline=None, seeds=None) -> Path:
    sweep = {"loss.name": list(names), **({"seed": list(seeds)} if seeds else {})}
    cfg = Config.model_validate({"name": "losses", "sweep": sweep, "loss": {"pos_weight": 10.0},
                                 **({"report": {"baseline": baseline}} if baseline else {})})
    sweep_dir = root / "losses"
    sweep_dir.mkdir(parents=True)
    (sweep_dir / "sweep.yaml").write_text(dump_yaml(cfg))
    for i, (rid, run_cfg) in enumerate(expand_sweep(cfg)):
        write_run(sweep_dir / "runs" / rid, run_cfg, 8, np.random.default_rng(i))
    return sweep_dir


def test_any_setting_can_be_the_baseline(tmp_path):
    sweep_dir = make_loss_sweep(tmp_path, ["dice", "tversky", "wce"], baseline={"loss.name": "dice"}, seeds=[0, 1])
    write_report(sweep_dir, n_boot=200)
    result = json.loads((sweep_dir / "report" / "stats.json").read_text())
    assert result["baseline"] == "name = dice" and result["notes"] == []
    assert {(c["label"], c["baseline"]) for c in result["comparisons"]} == {("name = tversky", "name = dice"),
                                                                             ("name = wce", "name = dice")}
    # The paired test by hand: each case's DSC averaged over the two seeds, then against dice's.
    def case_dsc(name):
        folders = [sweep_dir / "runs" / f"name={name}_seed={s}" / "metrics" for s in (0, 1)]
        rows = [r for folder in folders for r in read_csv(folder / "cases.csv")]
        return {c: float(np.mean([float(r["dsc"]) for r in rows if r["case"] == c])) for c in {r["case"] for r in rows}}
    base, other = case_dsc("dice"), case_dsc("wce")
    diffs = [other[c] - base[c] for c in sorted(base)]
    wilcoxon = sps.wilcoxon(diffs, zero_method="wilcox")
    (mine,) = [c for c in result["comparisons"] if c["label"] == "name = wce" and c["metric"] == "dsc"]
    assert mine["p"] == pytest.approx(wilcoxon.pvalue) and mine["mean_diff"] == pytest.approx(np.mean(diffs))
    md = (sweep_dir / "report" / "summary.md").read_text()
    assert "## Is a different configuration more than a different threshold?" in md
    assert "| name |" in md and "| beta |" not in md  # the configurations are told apart by the loss alone
    assert "## Against the baseline (name = dice)" in md and "against name = dice" in md
    assert [r["name"] for r in read_rows(sweep_dir)] == ["dice", "tversky", "wce"]


def test_the_default_baseline_matches_no_loss_sweep_and_says_so(tmp_path):
    sweep_dir = make_loss_sweep(tmp_path, ["dice", "ce"])  # β = 0.7 throughout: no run holds loss.beta = 0.5
    write_report(sweep_dir, n_boot=200)
    result = json.loads((sweep_dir / "report" / "stats.json").read_text())
    assert result["comparisons"] == []
    assert result["notes"] == [f"name = {n}: no finished β = 0.5 baseline to compare with" for n in ("ce", "dice")]


def test_figures_put_a_numeric_swept_key_on_the_x_axis():
    from lesionseg.reporting.figures import _x_positions

    groups = [{"beta": 0.7, "extra": {"train.lr": lr}, "swept": {"train.lr": lr}, "label": f"lr = {lr}"}
              for lr in (1e-4, 1e-3)]
    x, ticks, label = _x_positions(groups)
    assert list(x) == [1e-4, 1e-3] and ticks == ["0.0001", "0.001"] and label == "train.lr"
    named = [{"beta": 0.7, "extra": {"loss.name": n}, "swept": {"loss.name": n}, "label": f"name = {n}"}
             for n in ("dice", "ce")]
    x, ticks, label = _x_positions(named)
    assert list(x) == [0, 1] and ticks == ["name = dice", "name = ce"] and label == "configuration"


def test_the_training_loss_is_named_in_the_report_and_every_caption(tmp_path):
    sweep_dir = make_sweep(tmp_path, [0.5, 0.9])
    write_report(sweep_dir, n_boot=200)
    result = json.loads((sweep_dir / "report" / "stats.json").read_text())
    said = ("Trained with the Tversky index (α = 1 − β, summed over the batch) + 1 × binary cross-entropy "
            "(loss.ce_weight).")  # base.yaml's default loss
    assert result["training_loss"] == said
    md = (sweep_dir / "report" / "summary.md").read_text()
    assert md.splitlines()[2] == said
    # under the title, in every figure's caption, and in the headline figure's shown with the answer (a
    # hand-made sweep has no images or predictions: no pictures of the cases, the one figure it lacks)
    assert not (sweep_dir / "report" / CASES_FIGURE).exists()
    assert md.count(said) == 1 + len(FIGURES) - 1 + 1


def test_the_training_loss_names_a_cross_entropy_term_and_a_swept_loss():
    from lesionseg.reporting.answer import training_loss

    cfg = Config.model_validate({"loss": {"ce_weight": 1.0, "batch": False}})
    assert training_loss(cfg, {"loss.beta": [0.5, 0.9]}) == (
        "Trained with the Tversky index (α = 1 − β, per patch) + 1 × binary cross-entropy (loss.ce_weight).")
    cfg = Config.model_validate({"loss": {"name": "dice_ce"}})  # auto: no cross-entropy added to it
    assert training_loss(cfg, {"loss.beta": [0.5, 0.9]}) == "Trained with Dice + cross-entropy."
    assert training_loss(Config(), {"loss.name": ["dice", "ce"]}) == (
        "Trained with the loss of each configuration (loss.name) + 1 × binary cross-entropy for the losses "
        "without cross-entropy in them (loss.ce_weight: auto).")
    cfg = Config.model_validate({"loss": {"ce_warmup": 0.25, "ce_weight": 0.0}})
    assert training_loss(cfg, {"loss.name": ["dice", "tversky"]}) == (
        "Trained with the loss of each configuration (loss.name), with a cross-entropy warm-up over the first "
        "25% of the iterations (loss.ce_warmup).")
    cfg = Config.model_validate({"model": {"deep_supervision": True}})
    assert training_loss(cfg, {"loss.beta": [0.5, 0.9]}) == (
        "Trained with the Tversky index (α = 1 − β, summed over the batch) + 1 × binary cross-entropy "
        "(loss.ce_weight), at the output and every lower decoder level (deep supervision, model.deep_supervision).")
    assert training_loss(Config(), {"model.deep_supervision": [False, True]}).endswith(
        ", with or without deep supervision per configuration (model.deep_supervision).")


def test_every_comparison_carries_its_planning_and_the_answer_says_the_study_size(tmp_path):
    """stats.json's planning is `planning.plan` of the paired case means; the answer's study-size sentence
    quotes its cases needed for every β and the sweep's own number of cases."""
    from lesionseg.reporting import planning

    sweep_dir = make_sweep(tmp_path, [0.5, 0.7, 0.9], seeds=[0, 1], n_cases=8)
    write_report(sweep_dir, n_boot=200)
    result = json.loads((sweep_dir / "report" / "stats.json").read_text())
    dsc = [c for c in result["comparisons"] if c["metric"] == "dsc"]
    for c in dsc:
        means = {}
        for beta in (0.5, c["beta"]):
            runs = [read_csv(sweep_dir / "runs" / f"beta={beta}_seed={s}" / "metrics" / "cases.csv") for s in (0, 1)]
            means[beta] = stats.case_means([{r["case"]: float(r["dsc"]) for r in rows} for rows in runs])
        _, base, other = stats.paired(means[0.5], means[c["beta"]])
        plan = c["planning"]
        assert plan["alpha"] == 0.025 and plan["n"] == 8 and plan["difference"] == 0.01
        assert plan["sd_diff"] == pytest.approx(np.std(other - base, ddof=1))
        assert plan["cases_needed"] == planning.cases_needed(0.01, plan["sd_diff"], 0.025)
    sentence = next(line for line in result["answer"] if line.startswith("Study size"))
    for c in dsc:
        assert f"≈ {c['planning']['cases_needed']:,} for {c['label']} against β = 0.5" in sentence
    assert "this sweep had 8" in sentence and "training noise (seeds)" in sentence
    summary = (sweep_dir / "report" / "summary.md").read_text()
    assert "detectable (80 %)" in summary and "cases for 0.01" in summary


def test_one_test_case_reads_as_no_test_possible_not_as_no_difference(tmp_path):
    sweep_dir = make_sweep(tmp_path, [0.5, 0.9], n_cases=1)
    write_report(sweep_dir, n_boot=200)
    answer = json.loads((sweep_dir / "report" / "stats.json").read_text())["answer"]
    dsc = next(line for line in answer if line.startswith("DSC:"))
    assert "no test possible with β = 0.9 (1 paired test case; a test needs at least 6" in dsc
    assert "no significant difference" not in dsc
    assert any(line.startswith("Study size") and "the spread of the differences cannot be estimated from 1 case, "
               "so no plan is possible" in line for line in answer)


def test_the_tables_and_the_lesion_figure_name_the_lesion_matching(tmp_path):
    sweep_dir = make_sweep(tmp_path, [0.5, 0.9])
    path = sweep_dir / "runs" / "beta=0.9" / "metrics" / "summary.json"  # the other run predates the record
    path.write_text(json.dumps({**json.loads(path.read_text()), "lesion_matching": "isbi2015"}))
    write_report(sweep_dir, n_boot=200)
    summary = (sweep_dir / "report" / "summary.md").read_text()
    said = "lesions matched as in ISBI 2015 (26-connected; detected by overlapping voxels, eval.lesion_min_overlap)"
    assert summary.count(said) == 4  # the per-case and pooled tables' notes, the lesion-size and FROC captions
    path.write_text(json.dumps({**json.loads(path.read_text()), "lesion_matching": "msseg"}))
    write_report(sweep_dir, n_boot=200)
    summary = (sweep_dir / "report" / "summary.md").read_text()
    assert "lesions matched per configuration (eval.lesion_matching: isbi2015, msseg)" in summary


def test_the_answer_gives_the_lesion_level_verdict_and_the_froc_figure(tmp_path):
    """CPM rises with β in the hand-made runs (0.8 × sensitivity), and so does the sensitivity at 1 FP per
    scan: the answer names the best CPM and the paired tests' verdict at the same false-positive rate."""
    sweep_dir = make_sweep(tmp_path, [0.5, 0.7, 0.9], n_cases=10)
    write_report(sweep_dir, n_boot=200)
    result = json.loads((sweep_dir / "report" / "stats.json").read_text())
    lesions = [line for line in result["answer"] if line.startswith("Lesions (FROC")]
    best = max(read_rows(sweep_dir), key=lambda r: float(r["cpm"]))
    assert len(lesions) == 1 and f"CPM best with β = 0.9 ({fmt(float(best['cpm']))})" in lesions[0]
    at_1fp = [c for c in result["comparisons"] if c["metric"] == "ltpr_1fp"]
    assert [c["verdict"].split()[0] for c in at_1fp] == ["higher", "higher"]
    assert "at 1 false-positive lesion per scan" in lesions[0] and "higher with β = 0.7, β = 0.9" in lesions[0]
    assert (sweep_dir / "report" / "froc.png").read_bytes().startswith(b"\x89PNG")
    for run in (sweep_dir / "runs").iterdir():  # runs evaluated before froc.csv: a figure that says so
        (run / "metrics" / "froc.csv").unlink()
    write_report(sweep_dir, n_boot=200)
    assert (sweep_dir / "report" / "froc.png").read_bytes().startswith(b"\x89PNG")


def test_the_lesion_sentence_says_when_every_case_is_the_same():
    """Comparisons no test can be run on: identical on every case (all differences 0) is said as such; too few
    differing cases otherwise."""
    from lesionseg.reporting.answer import lesion_sentence

    rows = [{"cpm": 0.8}, {"cpm": 0.82}, {"cpm": 0.81}]
    comparisons = [
        {"metric": "ltpr_1fp", "label": "β = 0.7", "baseline": "β = 0.5", "n": 10, "ci_low": 0.0, "ci_high": 0.0,
         "verdict": "no test (too few pairs for a test: 0 non-zero differences of 10 cases (at least 6 needed))"},
        {"metric": "ltpr_1fp", "label": "β = 0.9", "baseline": "β = 0.5", "n": 10, "ci_low": -0.02, "ci_high": 0.05,
         "verdict": "no test (too few pairs for a test: 3 non-zero differences of 10 cases (at least 6 needed))"}]
    [text] = lesion_sentence(rows, ["β = 0.5", "β = 0.7", "β = 0.9"], {"comparisons": comparisons},
                             chosen_on={"validation"})
    assert "CPM best with β = 0.7 (0.820)" in text and "where its validation cases have at most that many" in text
    assert "the same on every test case with β = 0.7; no test possible with β = 0.9 (10 paired test cases" in text
