"""Benchmark: a robustness matrix — is lesionseg's default recipe close to the best setting everywhere, and
does any setting collapse? (issue 24)

One *cell* is (dataset, learning-rate schedule, budget, β, seed); each recipe in a cell is one training, scored
at threshold 0.5 on the dataset's test cases inside their brain masks (DSC, F2, sensitivity, precision, APR,
predicted / reference lesion volume). Datasets (`--datasets`):

  hemispheres  real MS scans (`../shared/data/open_ms_data`, as bench/bench_real.py): train on the left halves
               of patient07 and patient19, test on their right halves (07L+19L → 07R+19R)
  07to19       cross-patient: train on patient07, test on patient19;  19to07 the other way round
               (all three: configs/examples/open_ms_patient.yaml as bench_real runs it — 2 mm, 48³ patches,
               no validation case, scored on the test scan's 1 mm grid inside its non-zero FLAIR voxels;
               skipped, with the reason printed, when the scans are absent)
  ms-small     phantoms (`lesionseg.data.demo_data`, the demo's 40 cases, size 64, 2 mm, written once into
  large        `--data-dir`/<kind>) trained with configs/demo.yaml: validation cases pick the checkpoint;
               scored on the datalist's test cases inside their "mask"

Axes: `--schedules` (train.lr_schedule), `--budgets` (short: the dataset's base iterations — phantoms
demo.yaml's 400, real scans 900; long: `--long-factor` (3) × that), `--betas` (loss.beta, α = 1 − β),
`--seeds`, and `--recipes`, named override sets `NAME=key=value,key=value` (`default=`: the configs as they
are). The schedule is set on top of each recipe, so every recipe is measured under every schedule.

Every training appends one JSON line to `--results`; a (cell, recipe) already there is skipped (`--rerun`:
train it again), so the matrix fills over several sessions, cheap cells first (seed, then budget, outermost).
The table (also `--table-only`, without training) has one row per cell (seeds averaged, n shown), one DSC
column per recipe (✗: collapsed, below half the cell's best), the best, the `--default` recipe's gap to it and
the flags "within 0.03" / "collapsed", then the counts over the cells and what of the matrix is still missing.

Time, rough and for one training on a 2-core CPU with nothing else running (slower while other work shares
it): phantoms, 400 iterations ≈ 2–3 min; hemispheres, 900 ≈ 4–8 min incl. prediction with test-time flips;
cross-patient, 900 ≈ 2–4 min; long budgets ≈ 3× that. The default matrix (5 datasets × 3 schedules × 2
budgets × 2 β × 1 seed = 60 cells, × 2 recipes = 120 trainings, ≈ 15–20 h) is more than one session: run
it in parts.

    .venv/bin/python bench/bench_robust.py --datasets ms-small large --budgets short      # a first part
    .venv/bin/python bench/bench_robust.py --datasets hemispheres --betas 0.5 --seeds 0 1 \\
        --recipes default= old=model.prior=0.01 auto=model.prior=auto --no-tta
    .venv/bin/python bench/bench_robust.py --table-only                                   # the table so far
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import re
import shutil
import statistics
import tempfile
import time
from itertools import product
from pathlib import Path
from typing import NamedTuple

import torch

from lesionseg.config import load_config
from lesionseg.data.demo_data import write_demo_dataset
from lesionseg.data.preprocessing import load_datalist
from lesionseg.inference import load_model, predict_cases
from lesionseg.runs import start_run_dir
from lesionseg.training.loop import train_run


def _sibling(name: str):
    # bench/ is not a package: bench_real.py is loaded from this script's folder by path, sys.path untouched.
    spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name(f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


bench_real = _sibling("bench_real")

REPO = bench_real.REPO
DEMO = REPO / "configs" / "demo.yaml"
REAL = ("hemispheres", "07to19", "19to07")
PHANTOMS = ("ms-small", "large")
REAL_ITERATIONS = 900  # the short budget on real scans (phantoms: demo.yaml's train.iterations)
AXIS_KEYS = ("loss.beta", "loss.alpha", "seed", "train.iterations")  # set by the matrix, not by a recipe
WITHIN = 0.03  # the bound on the default's gap to a cell's best DSC
LOW = 0.05  # a cell whose best DSC is below this has nothing to rank: flagged (half of ~0 is no bound)
SCORES = ("dsc", "f2", "sensitivity", "precision", "apr", "detected", "lesions", "predicted_lesions")


class Cell(NamedTuple):
    dataset: str
    schedule: str
    budget: str
    iterations: int
    beta: float
    seed: int


class Data(NamedTuple):
    """Real scans: training and test cases with the tests' brain masks; phantoms: a datalist."""
    name: str
    train: list[dict] | None = None
    tests: list[dict] | None = None
    masks: list[Path] | None = None
    datalist: Path | None = None


# --- the datasets -------------------------------------------------------------------------------------------

def real_data(name: str, root: Path, cache: Path) -> Data | None:
    missing = [p for p in ("patient07", "patient19") if not (root / p).is_dir()]
    if missing:
        print(f"skipped {name}: {', '.join(missing)} not in {root} (the open MS data of Lesjak et al. 2018)")
        return None
    if name == "hemispheres":
        folder = split_hemispheres(root, cache)
        train = [bench_real.case(f"patient{p}L", folder) for p in ("07", "19")]
        tests = [bench_real.case(f"patient{p}R", folder) for p in ("07", "19")]
    else:
        source, target = name.split("to")
        train, tests = [bench_real.case(f"patient{source}", root)], [bench_real.case(f"patient{target}", root)]
    mask_dir = cache / "masks" / name
    mask_dir.mkdir(parents=True, exist_ok=True)
    return Data(name, train, tests, [bench_real.brain_mask(t, mask_dir) for t in tests])


def split_hemispheres(root: Path, cache: Path) -> Path:
    """bench_real's left and right halves of both patients, written once (complete when the folder exists)."""
    folder, partial = cache / "hemispheres", cache / "hemispheres.partial"
    if not folder.is_dir():
        shutil.rmtree(partial, ignore_errors=True)
        bench_real.hemispheres(root, ["patient07", "patient19"], partial)
        partial.rename(folder)
    return folder


def phantom_data(kind: str, cache: Path, size: int, cases: int) -> Data:
    """The demo's phantoms of one lesion kind, written once (the datalist is written last)."""
    folder = cache / (kind if (size, cases) == (64, 40) else f"{kind}-size{size}-cases{cases}")
    datalist = folder / "datalist.json"
    if not datalist.is_file():
        print(f"writing {cases} {kind} phantoms of {size}³ into {folder}", flush=True)
        write_demo_dataset(folder, cases=cases, size=size, seed=0, spacing=2.0, lesions=kind)
    return Data(kind, datalist=datalist)


# --- one training -------------------------------------------------------------------------------------------

def phantom_run(datalist: Path, cell: Cell, overrides: list[str], work: Path, out_dir: Path) -> tuple[dict, list]:
    """configs/demo.yaml on the phantoms: train, predict the test cases; (timings, test cases)."""
    cfg = load_config(DEMO, [
        f"data.datalist={datalist}", f"output_dir={work}", f"seed={cell.seed}", f"loss.beta={cell.beta}",
        "loss.alpha=null", f"train.iterations={cell.iterations}", "train.device=cpu", *overrides])
    lists = load_datalist(cfg)
    run_dir = start_run_dir(cfg.output_dir / cfg.name, cfg)
    start, cpu_start = time.perf_counter(), time.process_time()
    train_run(cfg, run_dir, progress=False, lists=lists)
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    device = torch.device("cpu")
    predict_cases(load_model(run_dir, cfg, device), cfg, lists["test"], out_dir, device, progress=False)
    return {"iterations": cell.iterations, "seconds": seconds, "cpu_seconds": cpu_seconds}, lists["test"]


def measure(data: Data, cell: Cell, overrides: list[str]) -> dict:
    """Train one recipe in one cell and score it: the results row without its key."""
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        work, preds = Path(tmp), Path(tmp) / "predictions"
        if data.datalist is None:
            run = bench_real.lesionseg_run(data.train, data.tests, cell.beta, cell.iterations, overrides,
                                           work / "run", preds, cell.seed)
            tests, masks = data.tests, data.masks
        else:
            run, tests = phantom_run(data.datalist, cell, overrides, work / "run", preds)
            masks = [Path(t["mask"]) for t in tests]
        scores = bench_real.score(tests, preds, masks, work / "metrics")
        summary = json.loads((work / "metrics" / "summary.json").read_text())
    pooled = summary["pooled"]
    return {**{key: scores[key] for key in SCORES}, "vol_pred_ml": pooled["vol_pred_ml"],
            "vol_ref_ml": pooled["vol_ref_ml"], "collapse_flags": summary.get("collapse"),
            "case_dsc": {case: values["dsc"] for case, values in scores["cases"].items()},
            "seconds": run["seconds"], "cpu_seconds": run["cpu_seconds"],
            "total_seconds": time.perf_counter() - start}


# --- the matrix ---------------------------------------------------------------------------------------------

def parse_recipes(items: list[str]) -> dict[str, list[str]]:
    """`NAME=key=value,key=value` → {NAME: [key=value, …]}; a comma splits only before another `key=`."""
    recipes = {}
    for item in items:
        name, _, rest = item.partition("=")
        overrides = [o for o in re.split(r",(?=[A-Za-z_][\w.]*=)", rest) if o]
        axis = [o for o in overrides if o.split("=")[0] in AXIS_KEYS]
        if not name or axis:
            raise SystemExit(f"--recipes {item!r}: " + (f"{', '.join(axis)} is an axis of the matrix, not part of "
                                                       "a recipe" if name else "no NAME before '='"))
        if any(o.startswith("train.lr_schedule=") for o in overrides):
            print(f"note: recipe {name}: train.lr_schedule is replaced by each schedule of --schedules")
        recipes[name] = overrides
    return recipes


def budgets(args: argparse.Namespace) -> dict[str, dict[str, int]]:
    """{dataset: {budget name: iterations}}."""
    base = {name: REAL_ITERATIONS for name in REAL}
    base.update(dict.fromkeys(PHANTOMS, load_config(DEMO).train.iterations))
    for item in args.short_iterations:
        name, _, value = item.partition("=")
        if name not in base or not value.isdigit():
            raise SystemExit(f"--short-iterations {item!r}: expected DATASET=N, DATASET one of {', '.join(base)}")
        base[name] = int(value)
    factor = {"short": 1, "long": args.long_factor}
    return {name: {b: args.iterations_override or n * factor[b] for b in args.budgets} for name, n in base.items()}


def planned(args: argparse.Namespace, recipes: dict) -> list[tuple[Cell, str]]:
    """Every (cell, recipe) the axes ask for, cheap ones first: seed, then budget, outermost."""
    iterations = budgets(args)
    return [(Cell(dataset, schedule, budget, iterations[dataset][budget], beta, seed), recipe)
            for seed, budget, dataset, beta, schedule, recipe in product(
                args.seeds, args.budgets, args.datasets, args.betas, args.schedules, recipes)]


def key(cell: Cell, recipe: str) -> tuple:
    return (*cell, recipe)


def row_key(row: dict) -> tuple:
    return (*Cell(*(row[field] for field in Cell._fields)), row["recipe"])


def read_results(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def cell_overrides(args: argparse.Namespace, recipe: list[str], cell: Cell) -> list[str]:
    """The recipe, the cell's schedule on top, then `--set` and `--no-tta`."""
    tta = ["eval.tta=false"] if args.no_tta else []
    return [*recipe, f"train.lr_schedule={cell.schedule}", *args.overrides, *tta]


def run_matrix(args: argparse.Namespace, recipes: dict[str, list[str]]) -> None:
    done = {row_key(row): row for row in read_results(args.results)}
    wanted = planned(args, recipes)
    todo = [(c, r) for c, r in wanted if args.rerun or key(c, r) not in done]
    stale = {r for c, r in wanted if key(c, r) in done and not args.rerun
             and done[key(c, r)]["recipe_overrides"] != recipes[r]}
    for name in sorted(stale):
        print(f"note: recipe {name} is in {args.results} with other overrides; those cells are kept (--rerun)")
    print(f"{len(todo)} training(s) to run, {len(wanted) - len(todo)} already in {args.results}")
    data = {}
    for i, (cell, recipe) in enumerate(todo, 1):
        if cell.dataset not in data:
            data[cell.dataset] = load_data(cell.dataset, args)
        if data[cell.dataset] is None:
            continue
        overrides = cell_overrides(args, recipes[recipe], cell)
        row = {**cell._asdict(), "recipe": recipe, "recipe_overrides": recipes[recipe], "overrides": overrides,
               **measure(data[cell.dataset], cell, overrides)}
        args.results.parent.mkdir(parents=True, exist_ok=True)
        with open(args.results, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(row) + "\n")
        print(f"[{i}/{len(todo)}] {cell.dataset} {cell.schedule} {cell.budget} ({cell.iterations}) β {cell.beta:g} "
              f"seed {cell.seed} {recipe}: DSC {row['dsc']:.3f}, train {row['seconds']:.0f} s "
              f"({row['cpu_seconds']:.0f} CPU s), all {row['total_seconds']:.0f} s", flush=True)


def load_data(name: str, args: argparse.Namespace) -> Data | None:
    if name in REAL:
        return real_data(name, args.open_ms, args.data_dir)
    return phantom_data(name, args.data_dir, args.phantom_size, args.phantom_cases)


# --- the table ----------------------------------------------------------------------------------------------

def cells_of(rows: list[dict]) -> dict[tuple, dict[str, dict[int, float]]]:
    """{(dataset, schedule, budget, iterations, β): {recipe: {seed: DSC}}}, the last row of each key winning."""
    cells: dict[tuple, dict[str, dict[int, float]]] = {}
    for row in rows:
        cell = (row["dataset"], row["schedule"], row["budget"], row["iterations"], row["beta"])
        cells.setdefault(cell, {}).setdefault(row["recipe"], {})[row["seed"]] = row["dsc"]
    return cells


def nan_mean(values) -> float:
    values = [v for v in values if not math.isnan(v)]
    return statistics.fmean(values) if values else math.nan


def table_row(cell: tuple, by_recipe: dict[str, dict[int, float]], recipes: list[str], default: str) -> tuple:
    """The markdown row of one cell; (row, default within WITHIN or None, default collapsed, any collapsed,
    best below LOW)."""
    means = {r: nan_mean(by_recipe[r].values()) for r in recipes if r in by_recipe}
    best_recipe = max(means, key=lambda r: -1.0 if math.isnan(means[r]) else means[r])
    best, n = means[best_recipe], max(len(seeds) for seeds in by_recipe.values())
    collapsed = [r for r, m in means.items() if not math.isnan(best) and (math.isnan(m) or m < best / 2)]
    texts = []
    for r in recipes:
        if r not in means:
            texts.append("—")
            continue
        fewer = f" (n={len(by_recipe[r])})" if len(by_recipe[r]) < n else ""
        texts.append(f"{means[r]:.3f}{fewer}" + (" ✗" if r in collapsed else ""))
    spreads = [max(s.values()) - min(s.values()) for s in by_recipe.values() if len(s) > 1]
    gap = best - means[default] if default in means else math.nan
    within = None if math.isnan(gap) else gap <= WITHIN
    flags = ["no default" if within is None else f"within {WITHIN:g}" if within else f"off by {gap:.3f}"]
    flags += [f"collapsed: {', '.join(collapsed)}"] if collapsed else []
    flags += [f"best below {LOW:g}"] if best < LOW else []
    dataset, schedule, budget, iterations, beta = cell
    line = (f"| {dataset} | {schedule} | {budget} ({iterations}) | {beta:g} | {n} | " + " | ".join(texts)
            + f" | {best:.3f} ({best_recipe}) | {'—' if math.isnan(gap) else f'{gap:.3f}'} | "
            + (f"{max(spreads):.3f}" if spreads else "—") + f" | {'; '.join(flags)} |")
    return line, within, default in collapsed, bool(collapsed), best < LOW


def print_table(rows: list[dict], default: str) -> None:
    if not rows:
        print("no results yet")
        return
    cells = cells_of(rows)
    recipes = sorted({row["recipe"] for row in rows}, key=lambda r: (r != default, r))
    print("| dataset | schedule | budget (iterations) | β | n | " + " | ".join(recipes)
          + " | best | default's gap | seed spread | flags |")
    print("|---" * (len(recipes) + 9) + "|")
    order = {name: i for i, name in enumerate((*REAL, *PHANTOMS))}
    counted = [table_row(cell, cells[cell], recipes, default)
               for cell in sorted(cells, key=lambda c: (order.get(c[0], len(order)), c))]
    for line, *_ in counted:
        print(line)
    with_default = [c for c in counted if c[1] is not None]
    print(f"\nDSC: mean over the seeds present (n; a recipe with fewer seeds says so); ✗: collapsed, below half "
          f"of the cell's best; seed spread: the largest max − min over seeds of one recipe.\n"
          f"The default ({default}) is within {WITHIN:g} DSC of the cell's best in {sum(c[1] for c in with_default)} "
          f"of {len(with_default)} cells, collapsed in {sum(c[2] for c in counted)}; some recipe collapsed in "
          f"{sum(c[3] for c in counted)} of {len(counted)} cells; the best DSC is below {LOW:g} in "
          f"{sum(c[4] for c in counted)}.")


def print_missing(args: argparse.Namespace, recipes: dict, rows: list[dict]) -> None:
    """What of the matrix the axes ask for is not in the results yet, per dataset."""
    done = {row_key(row) for row in rows}
    wanted = planned(args, recipes)
    missing = [cell.dataset for cell, recipe in wanted if key(cell, recipe) not in done]
    per_dataset = ", ".join(f"{d} {missing.count(d)}" for d in args.datasets if missing.count(d))
    print(f"Not measured yet: {len(missing)} of the {len(wanted)} trainings asked for"
          + (f" ({per_dataset})." if missing else "."))


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", nargs="+", default=[*REAL, *PHANTOMS], choices=[*REAL, *PHANTOMS])
    parser.add_argument("--schedules", nargs="+", default=["constant", "cosine", "poly"],
                        choices=["constant", "cosine", "poly"])
    parser.add_argument("--budgets", nargs="+", default=["short", "long"], choices=["short", "long"])
    parser.add_argument("--betas", type=float, nargs="+", default=[0.5, 0.9])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--recipes", nargs="+", default=["default=", "old=model.prior=0.01"],
                        help="NAME=key=value,key=value (NAME=: the configs as they are)")
    parser.add_argument("--default", default="default", help="the recipe whose gap to each cell's best is judged")
    parser.add_argument("--short-iterations", nargs="*", default=[], metavar="DATASET=N",
                        help=f"short budgets other than demo.yaml's (phantoms) and {REAL_ITERATIONS} (real scans)")
    parser.add_argument("--long-factor", type=int, default=3, help="long budget = this × the short one")
    parser.add_argument("--no-tta", action="store_true", help="eval.tta=false in every run (faster prediction)")
    parser.add_argument("--set", dest="overrides", nargs="*", default=[], help="key=value for every run, last")
    parser.add_argument("--results", type=Path, default=REPO / "experiments" / "bench_robust.jsonl")
    parser.add_argument("--rerun", action="store_true", help="train (cell, recipe)s already in --results again")
    parser.add_argument("--table-only", action="store_true", help="print the table of --results; train nothing")
    parser.add_argument("--open-ms", type=Path, default=bench_real.OPEN_MS, help="the open MS patient folders")
    parser.add_argument("--data-dir", type=Path, default=REPO / "experiments" / "bench_robust" / "data",
                        help="where phantoms and hemisphere halves are written once")
    # smoke tests only: tiny phantoms and a few iterations (a cell name keeps its budget name, e.g. short (2))
    parser.add_argument("--phantom-size", type=int, default=64, help=argparse.SUPPRESS)
    parser.add_argument("--phantom-cases", type=int, default=40, help=argparse.SUPPRESS)
    parser.add_argument("--iterations-override", type=int, default=None, help=argparse.SUPPRESS)
    return parser.parse_args()


def main() -> None:
    args = arguments()
    recipes = parse_recipes(args.recipes)
    if not args.table_only:
        run_matrix(args, recipes)
        print()
    rows = read_results(args.results)
    print_table(rows, args.default)
    print_missing(args, recipes, rows)


if __name__ == "__main__":
    main()
