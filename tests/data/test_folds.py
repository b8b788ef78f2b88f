"""k-fold assignment: every case in exactly one fold, seeded, balanced by lesion load."""

import numpy as np
import pytest

from lesionseg.data.folds import assign_folds
from lesionseg.errors import LesionsegError


def loads(n, seed=0):
    """Lesion volumes spread like real patients' (lognormal, 40-fold range)."""
    rng = np.random.default_rng(seed)
    return {f"p{i:02d}": float(v) for i, v in enumerate(rng.lognormal(0.0, 1.1, n))}


@pytest.mark.parametrize("n, k", [(10, 5), (23, 5), (7, 3), (5, 5), (40, 4)])
def test_every_case_in_exactly_one_fold_and_the_sizes_differ_by_at_most_one(n, k):
    folds = assign_folds(loads(n), k, seed=0)
    assert set(folds) == set(loads(n)) and set(folds.values()) == set(range(k))
    sizes = np.bincount(list(folds.values()), minlength=k)
    assert sizes.max() - sizes.min() <= 1 and sizes.sum() == n


def test_the_folds_are_seeded():
    cases = loads(20)
    assert assign_folds(cases, 5, seed=3) == assign_folds(dict(reversed(list(cases.items()))), 5, seed=3)
    assert assign_folds(cases, 5, seed=3) != assign_folds(cases, 5, seed=4)


def test_each_fold_holds_one_case_of_each_load_stratum():
    cases = loads(25, seed=1)
    folds = assign_folds(cases, 5, seed=0)
    order = sorted(cases, key=cases.get)
    for start in range(0, 25, 5):  # the 5 lightest, the next 5, …: one in each fold
        assert sorted(folds[c] for c in order[start:start + 5]) == [0, 1, 2, 3, 4]
    # so no fold gets all the heavy cases: its load is within the range a stratified deal allows
    per_fold = [sum(v for c, v in cases.items() if folds[c] == f) for f in range(5)]
    strata = [sorted(cases.values())[s:s + 5] for s in range(0, 25, 5)]
    assert max(per_fold) <= sum(max(s) for s in strata) and min(per_fold) >= sum(min(s) for s in strata)


def test_more_folds_than_cases_is_an_error():
    with pytest.raises(LesionsegError, match=r"data.folds = 6: needs 2 <= folds <= the 5 training case"):
        assign_folds(loads(5), 6, seed=0)


def test_each_fold_run_tests_its_fold_and_trains_on_the_others(tiny_config, tiny_dataset):
    from lesionseg.data.preprocessing import load_datalist

    whole = load_datalist(tiny_config())
    training = [e["case"] for e in whole["training"]]
    tested = []
    for fold in range(3):
        lists = load_datalist(tiny_config("data.folds=3", f"data.fold={fold}"))
        test = [e["case"] for e in lists["test"]]
        assert sorted(test + [e["case"] for e in lists["training"]]) == sorted(training)
        assert [e["case"] for e in lists["ensemble"]] == [e["case"] for e in whole["test"]]
        tested += test
    assert sorted(tested) == sorted(training)  # every training case tested once


def test_folds_without_a_fold_fail_before_anything_is_written(tiny_config, tmp_path):
    from lesionseg.experiment.preflight import preflight

    cfg = tiny_config("data.folds=3")
    with pytest.raises(LesionsegError, match=r"data.folds = 3 needs data.fold, .* sweep: \{data.fold: \[0, 1, 2\]\}"):
        preflight([("run", cfg)], evaluates=False)
    with pytest.raises(LesionsegError, match=r"data.folds = 9: needs 2 <= folds <= the 3 training case"):
        preflight([("run", tiny_config("data.folds=9", "data.fold=0"))], evaluates=False)
    with pytest.raises(Exception, match=r"data.fold = 3 needs data.folds above it"):
        tiny_config("data.folds=3", "data.fold=3")
    assert not (tmp_path / "experiments").exists()


def test_a_cross_validated_sweep_reads_each_label_once_for_its_fold_assignment(tmp_path, monkeypatch):
    import nibabel as nib
    from helpers import REPO, TINY

    from lesionseg.config import expand_sweep, load_config
    from lesionseg.data import folds
    from lesionseg.data.demo_data import write_demo_dataset
    from lesionseg.data.preprocessing import load_datalist
    from lesionseg.experiment.preflight import preflight

    read = []

    class CountingNibabel:  # what folds.py sees as `nib`: counts the label files it opens
        @staticmethod
        def load(path):
            read.append(str(path))
            return nib.load(path)

    datalist = write_demo_dataset(tmp_path / "data", cases=5, size=24, seed=3)  # files no other test has read
    monkeypatch.setattr(folds, "nib", CountingNibabel)
    runs = expand_sweep(load_config(REPO / "configs" / "demo.yaml", [
        f"data.datalist={datalist}", f"output_dir={tmp_path}", *TINY, "data.folds=3",
        "sweep={data.fold: [0, 1, 2], loss.beta: [0.5, 0.7]}"]))
    preflight(runs, evaluates=True)  # the sweep checks all 6 runs; the merge reads each fold's lists
    for _, cfg in runs:
        load_datalist(cfg)
    lists = load_datalist(runs[0][1])
    training = sorted(str(e["label"]) for e in lists["training"] + lists["test"])  # the fold's and the others'
    assert len(runs) == 6 and sorted(read) == training  # each training label once
    label = nib.load(training[0])
    nib.save(nib.Nifti1Image(np.zeros(label.shape, np.uint8), label.affine), training[0])
    load_datalist(runs[0][1])
    assert read.count(training[0]) == 2  # a rewritten label is read again
