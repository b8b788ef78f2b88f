"""The pictures of the cases (`lesionseg.reporting.case_pictures`): which cases, which slice, which colours."""

from __future__ import annotations

import itertools

import nibabel as nib
import numpy as np
from matplotlib.colors import to_rgb, to_rgba

from lesionseg.config import Config
from lesionseg.reporting import case_pictures


def group(*seeds: dict[str, float]) -> dict:
    return {"runs": [{"cases": {case: {"dsc": v} for case, v in seed.items()}} for seed in seeds]}


def test_the_lowest_median_and_highest_dsc_of_the_seed_means():
    chosen = case_pictures.chosen_cases(group({"a": 0.9, "b": 0.1, "c": 0.5, "d": 0.7, "e": float("nan")},
                                              {"a": 0.5, "b": 0.3, "c": 0.5, "d": 0.6}))
    # means: a 0.7, b 0.2, c 0.5, d 0.65 (e undefined): median of four, the lower middle (c)
    assert [(role, case) for role, case, _ in chosen] == [("lowest", "b"), ("median", "c"), ("highest", "a")]
    assert chosen[0][2] == 0.2
    assert [case for _, case, _ in case_pictures.chosen_cases(group({"a": 0.2, "b": 0.4}))] == ["a", "b"]


def save(path, array, affine=np.diag([-2.0, 2.0, 2.0, 1.0])):
    nib.save(nib.Nifti1Image(array, affine), str(path))
    return path


def test_the_slice_through_the_largest_lesion_with_true_and_false_voxels_coloured(tmp_path):
    """A LAS volume (x flipped): the largest lesion centred at z = 6, a small one at z = 2; the prediction hits
    half the large lesion and adds a false positive beside it."""
    shape = (12, 10, 9)
    label = np.zeros(shape, np.uint8)
    label[3:7, 4:6, 5:8] = 1  # 24 voxels, centre z = 6
    label[9, 1, 2] = 1
    prob = np.zeros(shape, np.float32)
    prob[3:5, 4:6, 5:8] = 0.9  # true positive
    prob[8, 8, 6] = 0.7  # false positive
    image = np.ones(shape, np.float32)
    source = {"image": save(tmp_path / "flair.nii.gz", image), "label": save(tmp_path / "label.nii.gz", label),
              "prediction": save(tmp_path / "pred.nii.gz", prob), "mask": None, "cfg": Config()}
    assert case_pictures.lesion_slice(str(source["label"])) == 6
    grey, overlay = case_pictures._panel(source, 0.0)
    colour = {name: np.array(to_rgba(c, 0.75)) for name, c in case_pictures.COLOURS.items()}
    counts = {name: int(np.all(np.isclose(overlay, c), axis=-1).sum()) for name, c in colour.items()}
    assert counts == {"true positive": 4, "false negative": 4, "false positive": 1}
    # canonical RAS: file x 8 is RAS x 3 (x flipped); rows run from anterior (y = 9) down: y = 8 is row 1
    assert np.all(np.isclose(overlay[1, 3], colour["false positive"]))
    assert grey.shape == (10, 12)


def _simulate(rgb: np.ndarray, matrix: list[list[float]]) -> np.ndarray:
    linear = np.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    return np.clip(np.asarray(matrix) @ linear, 0, 1)


# Machado, Oliveira & Fernandes 2009, severity 1.0, on linear RGB
DEFICIENCIES = {
    "protanopia": [[0.152286, 1.052583, -0.204868], [0.114503, 0.786281, 0.099216], [-0.003882, -0.048116, 1.051998]],
    "deuteranopia": [[0.367322, 0.860646, -0.227968], [0.280085, 0.672501, 0.047413],
                     [-0.011820, 0.042940, 0.968881]],
    "tritanopia": [[1.255528, -0.076749, -0.178779], [-0.078411, 0.930809, 0.147602], [0.004733, 0.691367, 0.303900]],
}


def test_the_three_colours_stay_apart_in_colour_vision_deficiencies():
    colours = [np.array(to_rgb(c)) for c in case_pictures.COLOURS.values()]
    for name, matrix in [("typical", np.eye(3).tolist()), *DEFICIENCIES.items()]:
        seen = [_simulate(c, matrix) for c in colours]
        for a, b in itertools.combinations(seen, 2):
            assert np.linalg.norm(a - b) > 0.25, name
