"""`lesionseg check`: every data problem found in one pass, each naming its case and file; the summary table."""

import gzip
import json

import nibabel as nib
import numpy as np
import pytest
from helpers import AFFINE, REPO, SHAPE, config, lesionseg, save

from lesionseg.data.checks import check_dataset, inspect_dataset
from lesionseg.data.preprocessing import load_datalist
from lesionseg.errors import LesionsegError
from lesionseg.evaluation.evaluate import evaluate_cases
from lesionseg.experiment.preflight import preflight

MODALITIES = ("flair", "t1", "t2")


def write_dataset(root, cases=("a", "b", "c"), test=("t",)):
    """Three training cases and one test case, 8 × 8 × 6 voxels; case 'a' has two lesions, 'b' none."""
    rng = np.random.default_rng(0)
    entries = {"training": [], "test": []}
    for split, names in (("training", cases), ("test", test)):
        for case in names:
            for m in MODALITIES:
                image = rng.uniform(1, 100, SHAPE).astype(np.float32)
                image[0] = 0  # background
                save(root / case / f"{m}.nii.gz", image)
            label = np.zeros(SHAPE, np.uint8)
            if case != "b":
                label[2, 2, 2] = label[3, 3, 3] = 1  # touch at a corner: one 26-connected lesion
                label[6, 6, 4] = 1
            save(root / case / "label.nii.gz", label)
            save(root / case / "mask.nii.gz", (np.arange(8) > 0)[:, None, None] * np.ones(SHAPE, np.uint8))
            entries[split].append({"case": case, "image": [f"{case}/{m}.nii.gz" for m in MODALITIES],
                                   "label": f"{case}/label.nii.gz", "mask": f"{case}/mask.nii.gz"})
    return write_datalist(root, entries)


def write_datalist(root, entries):
    path = root / "datalist.json"
    path.write_text(json.dumps({"modalities": list(MODALITIES), **entries}))
    return path


def test_a_clean_dataset_passes_and_is_summarised(tmp_path):
    report = check_dataset(config(write_dataset(tmp_path)))
    assert report.problems == [] and report.layout == "decathlon"
    rows = {c.case: c for c in report.cases}
    assert rows["a"].lesions == 2 and rows["a"].lesion_ml == pytest.approx(3 * 2 / 1000)
    assert rows["b"].lesions == 0 and rows["a"].orientation == "LAS" and rows["a"].spacing == (1.0, 1.0, 2.0)
    table = report.table()
    assert "3 training, 1 test" in table and "8×8×6 voxels" in table and "1.00×1.00×2.00 mm" in table
    assert "LAS (4 cases)" in table and "| a | training | 8×8×6 | 1.00×1.00×2.00 | LAS | 2 | 0.01 |" in table


def test_every_problem_is_reported_at_once(tmp_path):
    datalist = write_dataset(tmp_path)
    (tmp_path / "a" / "t1.nii.gz").unlink()
    save(tmp_path / "b" / "t2.nii.gz", np.full(SHAPE, np.nan, np.float32))
    save(tmp_path / "t" / "label.nii.gz", np.full(SHAPE, 2, np.uint8))
    with pytest.raises(LesionsegError, match=r"(?s)problems \(3\).*a: missing file .*a/t1.nii.gz"
                                             r".*b: image .*b/t2.nii.gz has 384 NaN.*t: label .*t/label.nii.gz"):
        check_dataset(config(datalist))


def test_a_truncated_file_is_unreadable(tmp_path):
    datalist = write_dataset(tmp_path)
    path = tmp_path / "c" / "flair.nii.gz"
    path.write_bytes(gzip.compress(gzip.decompress(path.read_bytes())[:400]))  # header, then half a voxel row
    with pytest.raises(LesionsegError, match=r"c: unreadable file .*c/flair.nii.gz \(truncated or corrupt\?\)"):
        check_dataset(config(datalist))
    path.write_text("not a NIfTI file")
    with pytest.raises(LesionsegError, match=r"c: unreadable file .*c/flair.nii.gz"):
        check_dataset(config(datalist))


def test_modalities_of_a_case_share_shape_and_affine(tmp_path):
    datalist = write_dataset(tmp_path)
    save(tmp_path / "a" / "t1.nii.gz", np.arange(8 * 8 * 5, dtype=np.float32).reshape(8, 8, 5))
    shifted = AFFINE.copy()
    shifted[0, 3] = 0.5
    save(tmp_path / "b" / "t2.nii.gz", np.arange(np.prod(SHAPE), dtype=np.float32).reshape(SHAPE), shifted)
    rounded = AFFINE.copy()
    rounded[1, 3] = 1e-5  # float32 rounding between converters: tolerated
    save(tmp_path / "c" / "t2.nii.gz", np.arange(np.prod(SHAPE), dtype=np.float32).reshape(SHAPE), rounded)
    with pytest.raises(LesionsegError, match=r"problems \(2\)") as err:
        check_dataset(config(datalist))
    assert "a: t1 image " + str(tmp_path / "a" / "t1.nii.gz") + " has shape (8, 8, 5) but flair image" in str(err.value)
    assert "b: t2 image " + str(tmp_path / "b" / "t2.nii.gz") + " has an affine that differs" in str(err.value)
    assert "by up to 0.5 mm" in str(err.value)


def test_a_label_off_the_image_grid(tmp_path):
    datalist = write_dataset(tmp_path)
    label = np.zeros(SHAPE, np.uint8)
    label[4, 4, 4] = 1
    save(tmp_path / "c" / "label.nii.gz", label, np.diag([1.0, 1.0, 2.0, 1.0]))  # RAS, images are LAS
    save(tmp_path / "b" / "mask.nii.gz", np.ones((8, 8, 8), np.uint8))
    with pytest.raises(LesionsegError, match=r"(?s)b: brain mask .*b/mask.nii.gz has shape \(8, 8, 8\).*"
                                             r"c: label .*c/label.nii.gz has an affine that differs .* voxel grid"):
        check_dataset(config(datalist))


@pytest.mark.parametrize("offset", [5e-4, 5e-3])
def test_the_check_and_the_evaluation_agree_on_the_grid(tmp_path, offset):
    """One tolerance (`grid`): a label that passes `lesionseg check` cannot fail evaluation on its geometry
    after hours of training, and one that fails does so in both, in the same words."""
    datalist = write_dataset(tmp_path)
    label = tmp_path / "c" / "label.nii.gz"
    moved = AFFINE.copy()
    moved[0, 3] = offset
    save(label, np.asanyarray(nib.load(str(label)).dataobj), moved)
    pred = save(tmp_path / "pred" / "c.nii.gz", np.zeros(SHAPE, np.float32))  # on the images' grid
    if offset < 1e-3:
        check_dataset(config(datalist))
        assert evaluate_cases([("c", pred, label)], tmp_path / "out", progress=False)["n_cases"] == 1
        return
    with pytest.raises(LesionsegError) as checked:
        check_dataset(config(datalist))
    with pytest.raises(LesionsegError) as evaluated:
        evaluate_cases([("c", pred, label)], tmp_path / "out", progress=False)
    differs = "has an affine that differs from {}'s by up to 0.005 mm (tolerance 0.001 mm); "
    assert f"c: label {label} " + differs.format(f"flair image {tmp_path / 'c' / 'flair.nii.gz'}") in str(checked.value)
    assert f"prediction {pred} " + differs.format(f"reference {label}") in str(evaluated.value)
    assert not (tmp_path / "out").exists()


def test_a_label_that_is_not_binary_says_which_values(tmp_path):
    datalist = write_dataset(tmp_path)
    label = np.zeros(SHAPE, np.float32)
    label[1, 1, 1:4] = 1
    label[5, 5, 1:3] = 2
    label[6, 6, 1] = 0.5
    save(tmp_path / "a" / "label.nii.gz", label)
    with pytest.raises(LesionsegError, match=r"a: label .*a/label.nii.gz is not binary: besides 0 and 1 it "
                                             r"holds 0.5: 1 voxels, 2: 2 voxels"):
        check_dataset(config(datalist))


@pytest.mark.parametrize(
    "value, message",
    [(np.inf, "has 0 NaN and 384 infinite voxels"), (0.0, "is all zero"), (7.0, r"has one value everywhere \(7\)")],
)
def test_bad_intensities(tmp_path, value, message):
    datalist = write_dataset(tmp_path)
    save(tmp_path / "t" / "t1.nii.gz", np.full(SHAPE, value, np.float32))
    with pytest.raises(LesionsegError, match=rf"t: image .*t/t1.nii.gz {message}"):
        check_dataset(config(datalist))


def test_duplicate_ids_and_cases_in_both_lists(tmp_path):
    write_dataset(tmp_path)
    raw = json.loads((tmp_path / "datalist.json").read_text())
    a, b, c = raw["training"]
    t = raw["test"][0]
    datalist = write_datalist(tmp_path, {"training": [a, b, {**c, "case": "a"}], "test": [t, {**b, "case": "b2"}]})
    with pytest.raises(LesionsegError, match=r"(?s)a: duplicate case ids \(training\[0\], training\[2\]\).*"
                                             r"b2: image .*b/flair.nii.gz is also an image of case b"):
        check_dataset(config(datalist))
    datalist = write_datalist(tmp_path, {"training": [a, b, c], "test": [t, c]})
    with pytest.raises(LesionsegError, match=r"c: the case is in both the training and the test list"):
        load_datalist(config(datalist))  # the cheap check before every command sees it too


def test_training_data_without_any_lesion(tmp_path):
    datalist = write_dataset(tmp_path, cases=("b",), test=())
    with pytest.raises(LesionsegError, match=r"no training case has a lesion \(all 1 readable training labels"):
        check_dataset(config(datalist))


def test_load_datalist_reads_headers_only(tmp_path):
    """Geometry is caught in every command; voxel problems (here NaN) are left to the full check."""
    datalist = write_dataset(tmp_path)
    save(tmp_path / "a" / "t1.nii.gz", np.full(SHAPE, np.nan, np.float32))
    assert len(load_datalist(config(datalist))["training"]) == 3
    save(tmp_path / "b" / "label.nii.gz", np.zeros((8, 8, 8), np.uint8))
    with pytest.raises(LesionsegError, match=r"b: label .*b/label.nii.gz has shape \(8, 8, 8\)"):
        load_datalist(config(datalist))
    _, report = inspect_dataset(datalist, list(MODALITIES))
    assert [p.split(" ")[:3] for p in report.problems] == [["a:", "image", str(tmp_path / "a" / "t1.nii.gz")],
                                                          ["b:", "label", str(tmp_path / "b" / "label.nii.gz")]]


def test_preflight_reads_each_dataset_once_and_reports_each_problem_once(tmp_path):
    good = write_dataset(tmp_path / "good")
    bad = write_dataset(tmp_path / "bad")
    (tmp_path / "bad" / "a" / "label.nii.gz").unlink()
    shown = []
    preflight([("x", config(good)), ("y", config(good, "loss.beta=0.5"))], evaluates=True, show=shown.append)
    assert len(shown) == 1  # one dataset, read once for both runs
    with pytest.raises(LesionsegError, match="a: missing file"):
        preflight([("x", config(good)), ("y", config(bad))], evaluates=True)
    with pytest.raises(LesionsegError) as err:  # a setting of some runs only: said once, naming them
        preflight([("x", config(good, "data.val_cases=3")), ("y", config(good, "data.val_cases=3")),
                   ("z", config(good))], evaluates=False)
    assert str(err.value).count("leave none to train on") == 1 and "(runs x, y)" in str(err.value)


def test_check_command(tmp_path):
    datalist = write_dataset(tmp_path / "data")
    ok = lesionseg("check", REPO / "configs" / "base.yaml", f"data.datalist={datalist}", cwd=tmp_path,
                   check=False)
    assert ok.returncode == 0, ok.stderr
    assert "| a | training |" in ok.stdout and "no problem found" in ok.stdout

    save(tmp_path / "data" / "c" / "label.nii.gz", np.full(SHAPE, 3, np.uint8))
    (tmp_path / "data" / "t" / "t2.nii.gz").unlink()
    bad = lesionseg("check", REPO / "configs" / "base.yaml", f"data.datalist={datalist}", cwd=tmp_path,
                    check=False)
    assert bad.returncode == 1
    assert "lesionseg check: error: dataset" in bad.stderr and "problems (2)" in bad.stderr
    assert "c: label" in bad.stderr and "t: missing file" in bad.stderr and "Traceback" not in bad.stderr
    assert "| c | training |" in bad.stdout  # the summary is still printed
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]  # nothing written


def test_train_refuses_data_off_the_grid_and_writes_nothing(tmp_path):
    datalist = write_dataset(tmp_path / "data")
    save(tmp_path / "data" / "b" / "t1.nii.gz", np.ones((8, 8, 7), np.float32))
    bad = lesionseg("train", REPO / "configs" / "demo.yaml", f"data.datalist={datalist}", "output_dir=experiments",
                    cwd=tmp_path, check=False)
    assert bad.returncode == 1 and "b: t1 image" in bad.stderr and "Traceback" not in bad.stderr
    assert not (tmp_path / "experiments").exists()
