"""lesionseg from Python, as in a notebook: phantoms, a check, one run, its predictions scored, a β sweep
and its report — through `import lesionseg` alone. Sized to finish in a minute on a laptop CPU (a U-Net
of two levels, a few iterations: the numbers mean nothing; `configs/sweep_beta.yaml` as it is gives a
real demo sweep). The tests run it: `python docs/examples/notebook.py WORK_DIR`.
"""

import shutil
import sys
from pathlib import Path

import lesionseg

work = Path(sys.argv[1] if len(sys.argv) > 1 else "notebook-example")
repo = Path(__file__).resolve().parents[2]  # configs/ of this checkout

# Synthetic multi-modal phantoms (FLAIR, T1, T2) and their datalist.json
datalist = lesionseg.demo_data(work / "data", cases=8, size=24, seed=3)

# A config is a YAML file (or a lesionseg.load()-ed object) plus key=value overrides, as on the command line
small = [f"data.datalist={datalist}", f"output_dir={work / 'experiments'}", "data.patch_size=[16,16,16]",
         "data.val_cases=1", "model.channels=[4,8]", "model.strides=[2]", "model.res_units=1",
         "train.iterations=4", "train.val_every=2", "eval.sw_batch_size=2"]
cfg = lesionseg.load(repo / "configs" / "demo.yaml", small)
print("notes:", lesionseg.check(cfg))  # every file read; a LesionsegError lists every problem

# One run, its test cases predicted and scored
run_dir = lesionseg.train(cfg, ["name=one-run"], progress=False)
predictions = lesionseg.predict(run_dir, progress=False)
references = work / "test-labels"  # evaluate matches <case>.nii.gz by name: any model's predictions
references.mkdir(parents=True, exist_ok=True)
for prediction in predictions:
    shutil.copy(work / "data" / "labels" / prediction.name, references)
summary = lesionseg.evaluate(predictions[0].parent, references, out=work / "scores", progress=False)
print(f"{summary['n_cases']} test cases, DSC {summary['per_case']['dsc']['mean']:.3f}")

# A β sweep (train → predict → evaluate every configuration, then the report); calling it again continues
report = lesionseg.sweep(repo / "configs" / "sweep_beta.yaml", [*small, "name=beta-sweep",
                                                               "sweep={loss.beta: [0.5, 0.9]}"], progress=False)
print((report / "summary.md").read_text().splitlines()[0])
assert lesionseg.report(report.parent) == report  # the report again, from the finished runs
