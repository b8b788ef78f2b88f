import json

import pytest

from lesionseg.errors import LesionsegError
from lesionseg.experiment.run import run_one


def test_restricting_evaluation_to_masks_needs_a_mask_for_every_test_case(tiny_config, tiny_dataset, tmp_path):
    raw = json.loads(tiny_dataset.read_text())
    for entry in raw["test"]:
        entry.pop("mask")
    datalist = tiny_dataset.parent / "datalist_nomask.json"
    datalist.write_text(json.dumps(raw))
    cfg = tiny_config(f"data.datalist={datalist}", "eval.restrict_to_mask=true")
    with pytest.raises(LesionsegError, match=r"needs a brain mask for every test case; without one: case_003, case_004"):
        run_one(cfg, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()
