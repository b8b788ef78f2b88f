"""Dataset layouts read as they are: nnU-Net raw folders, patient folders, Decathlon datalists."""

import json

import numpy as np
import pytest
from helpers import AFFINE, SHAPE, config, save

from lesionseg.data.cache import volume_dataset
from lesionseg.data.checks import check_dataset
from lesionseg.data.preprocessing import load_datalist, read_datalist
from lesionseg.errors import LesionsegError


def volume(seed, lesion=False):
    image = np.random.default_rng(seed).uniform(1, 100, SHAPE).astype(np.float32)
    if lesion:
        image = np.zeros(SHAPE, np.uint8)
        image[3:5, 3:5, 2:4] = 1
    return image


BRAIN = np.zeros(SHAPE, bool)
BRAIN[1:5, 1:7, 1:5] = True  # not symmetric: reorientation must move the mask with the images


def write_nnunet(root, channels=("FLAIR", "T1", "T2")):
    """Two training cases (one with a brain mask), one test case with a label, one without."""
    for split, cases in (("Tr", ("ms_001", "ms_002")), ("Ts", ("ms_101", "ms_102"))):
        for i, case in enumerate(cases):
            for c in range(len(channels)):
                save(root / f"images{split}" / f"{case}_{c:04d}.nii.gz", volume(10 * i + c))
            if split == "Tr" or case == "ms_101":
                save(root / f"labels{split}" / f"{case}.nii.gz", volume(0, lesion=True))
    save(root / "masksTr" / "ms_001.nii.gz", BRAIN.astype(np.uint8))
    (root / "dataset.json").write_text(json.dumps({
        "channel_names": {str(c): name for c, name in enumerate(channels)},
        "labels": {"background": 0, "lesion": 1}, "numTraining": 2, "file_ending": ".nii.gz"}))
    return root


def test_an_nnunet_folder_is_read_as_it_is(tmp_path):
    root = write_nnunet(tmp_path / "Dataset501_MS")
    for target in (root, root / "dataset.json"):
        lists = load_datalist(config(target, "data.modalities=[t2,flair]"))
        assert [e["case"] for e in lists["training"]] == ["ms_001", "ms_002"]
        assert [e["case"] for e in lists["test"]] == ["ms_101", "ms_102"]
        first = lists["training"][0]
        assert first["image"] == [str(root / "imagesTr" / f"ms_001_{c}.nii.gz") for c in ("0002", "0000")]
        assert first["label"] == str(root / "labelsTr" / "ms_001.nii.gz")
        assert first["mask"] == str(root / "masksTr" / "ms_001.nii.gz") and lists["training"][1]["mask"] is None
        assert lists["test"][0]["label"] == str(root / "labelsTs" / "ms_101.nii.gz")
        assert lists["test"][1]["label"] is None
    report = check_dataset(config(root))
    assert report.layout == "nnunet" and [c.lesions for c in report.cases] == [1, 1, 1, None]


def test_nnunet_problems_name_the_files(tmp_path):
    root = write_nnunet(tmp_path / "Dataset501_MS")
    save(root / "labelsTr" / "ms_003.nii.gz", volume(0, lesion=True))  # a label without images
    (root / "imagesTr" / "ms_002_0001.nii.gz").unlink()
    with pytest.raises(LesionsegError, match=r"(?s)ms_002: missing file .*imagesTr/ms_002_0001.nii.gz.*"
                                             r"ms_003: missing file .*imagesTr/ms_003_0000.nii.gz"):
        check_dataset(config(root))
    with pytest.raises(LesionsegError, match=r"asks for \['pd'\], which nnU-Net .* has \['FLAIR', 'T1', 'T2'\]"):
        read_datalist(root, ["flair", "pd"])


def test_patient_folders(tmp_path):
    for case in ("patient01", "patient02"):
        for m in ("FLAIR", "t1", "t2"):
            save(tmp_path / case / f"{m}.nii.gz", volume(len(m)))
        save(tmp_path / case / "label.nii.gz", volume(0, lesion=True))
    save(tmp_path / "patient01" / "brainmask.nii.gz", np.ones(SHAPE, np.uint8))
    (tmp_path / "README.md").write_text("not a case")
    (tmp_path / "notes").mkdir()  # a folder without NIfTI files is not a case
    lists = load_datalist(config(tmp_path))
    assert [e["case"] for e in lists["training"]] == ["patient01", "patient02"] and lists["test"] == []
    assert lists["training"][0]["image"][0] == str(tmp_path / "patient01" / "FLAIR.nii.gz")
    assert lists["training"][0]["mask"] == str(tmp_path / "patient01" / "brainmask.nii.gz")
    assert lists["training"][1]["mask"] is None
    (tmp_path / "patient02" / "t2.nii.gz").unlink()
    with pytest.raises(LesionsegError, match=r"patient02: missing file .*patient02/t2.nii.gz"):
        check_dataset(config(tmp_path))
    with pytest.raises(LesionsegError, match=r"no dataset.json and no patient folders"):
        read_datalist(tmp_path / "notes", ["flair"])


def test_decathlon_modalities_match_without_regard_to_case(tmp_path):
    path = tmp_path / "datalist.json"
    path.write_text(json.dumps({"modalities": ["FLAIR", "T1"], "training": [
        {"image": ["x_flair.nii.gz", "x_t1.nii.gz"], "label": "x_label.nii.gz"}]}))
    (entry,) = read_datalist(path, ["t1"])["training"]
    assert entry["case"] == "x_flair" and entry["image"] == [str(tmp_path / "x_t1.nii.gz")]


def test_a_brain_mask_sets_the_normalisation_region(tmp_path):
    root = write_nnunet(tmp_path / "Dataset501_MS")
    cfg = config(root, "data.cache=false")
    masked, unmasked = (volume_dataset([e], cfg, with_label=True)[0]["image"] for e in load_datalist(cfg)["training"])
    assert AFFINE[0, 0] < 0
    brain = BRAIN[::-1]  # the mask reoriented from LAS to RAS, as the images are
    for c in range(3):
        inside = masked[c].numpy()[brain]
        assert abs(inside.mean()) < 1e-5 and inside.std() == pytest.approx(1.0, abs=1e-4)
        assert (masked[c].numpy()[~brain] == 0).all()
        # Without a mask, every non-zero voxel (here all of them) is the brain.
        everywhere = unmasked[c].numpy()
        assert abs(everywhere.mean()) < 1e-5 and everywhere.std() == pytest.approx(1.0, abs=1e-4)


def test_decathlon_ids_of_per_patient_folders_are_the_folders(tmp_path):
    """`p07/flair.nii.gz`, `p19/flair.nii.gz` without 'case' keys are p07 and p19, not three `flair`s."""
    def entry(folder):
        return {"image": [f"{folder}/flair.nii.gz", f"{folder}/t1.nii.gz", f"{folder}/t2.nii.gz"],
                "label": f"{folder}/label.nii.gz"}

    path = tmp_path / "datalist.json"
    path.write_text(json.dumps({"modalities": ["flair", "t1", "t2"],
                                "training": [entry("p07"), entry("site2/p19"), entry("site1/p19")],
                                "test": [entry("p21"), {**entry("p22"), "case": "named"}]}))
    lists = read_datalist(path, ["flair", "t1", "t2"])
    assert [e["case"] for e in lists["training"]] == ["p07", "site2_p19", "site1_p19"]
    assert [e["case"] for e in lists["test"]] == ["p21", "named"]
    # unique file names keep the file-name ids, as before
    path.write_text(json.dumps({"modalities": ["flair"], "training": [{"image": "a/x1.nii.gz", "label": "l1"},
                                                                     {"image": "a/x2.nii.gz", "label": "l2"}]}))
    assert [e["case"] for e in read_datalist(path, ["flair"])["training"]] == ["x1", "x2"]


def test_a_real_id_collision_says_where_ids_come_from(tmp_path):
    path = tmp_path / "datalist.json"
    path.write_text(json.dumps({"modalities": ["flair"],
                                "training": [{"case": "p1", "image": "a.nii.gz", "label": "la"},
                                             {"case": "p1", "image": "b.nii.gz", "label": "lb"}]}))
    with pytest.raises(LesionsegError, match=r"p1: duplicate case ids \(training\[0\], training\[1\]\); a case's id "
                                             r"is its 'case' key .* give each case a unique 'case'"):
        read_datalist(path, ["flair"])


def test_test_cases_are_held_out_of_the_training_list(tmp_path):
    for case in ("patient01", "patient02", "patient03"):
        for m in ("flair", "t1", "t2"):
            save(tmp_path / case / f"{m}.nii.gz", volume(len(m)))
        save(tmp_path / case / "label.nii.gz", volume(0, lesion=True))
    lists = load_datalist(config(tmp_path, "data.test_cases=[patient03, patient01]"))
    assert [e["case"] for e in lists["training"]] == ["patient02"]
    assert [e["case"] for e in lists["test"]] == ["patient03", "patient01"]
    report = check_dataset(config(tmp_path, "data.test_cases=[patient03]"))
    assert [(c.case, c.split) for c in report.cases][-1] == ("patient03", "test")
    with pytest.raises(LesionsegError, match=r"data.test_cases names 'patient9', which is not a training case of "
                                             r"the dataset \(its training cases: patient01, patient02, patient03\)"):
        load_datalist(config(tmp_path, "data.test_cases=[patient9]"))
