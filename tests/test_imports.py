"""The package's layers: every import inside `lesionseg/` runs from a higher layer to a lower one (or
within one subpackage or module), never back up — at module level or inside a function. The order is
DESIGN's: cli → api → reporting → experiment → training → inference → … → errors."""

import ast
from collections import defaultdict
from pathlib import Path

from helpers import REPO

# Lowest first; the parts of one entry may not import each other.
LAYERS = [
    ("errors",),
    ("config", "devices", "files", "grid", "memory"),
    ("evaluation",),
    ("data",),
    ("model", "runs"),
    ("inference",),
    ("training",),
    ("experiment",),
    ("reporting",),
    ("api",),
    ("__init__",),
    ("cli",),
    ("__main__",),
]
RANK = {part: rank for rank, parts in enumerate(LAYERS) for part in parts}


def _part(module: str) -> str:
    """`lesionseg.experiment.cv` → `experiment`; `lesionseg` → `__init__`."""
    names = module.split(".")
    return names[1] if len(names) > 1 else "__init__"


def imports() -> dict[tuple[str, str], list[str]]:
    """(importing part, imported part) → the files where it happens, for every lesionseg import of lesionseg/."""
    found = defaultdict(list)
    for path in sorted((REPO / "lesionseg").rglob("*.py")):
        relative = path.relative_to(REPO).with_suffix("")
        module = ".".join(relative.parts[:-1] if relative.name == "__init__" else relative.parts)
        here = _part(module)
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                targets = [node.module]
            elif isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                continue
            for target in targets:
                if target.split(".")[0] == "lesionseg" and _part(target) != here:
                    found[(here, _part(target))].append(str(Path(*relative.parts)))
    return found


def test_every_part_of_the_package_has_a_layer():
    parts = {p.stem if p.is_file() else p.name for p in (REPO / "lesionseg").iterdir()
             if (p.suffix == ".py" or (p / "__init__.py").is_file())}
    assert parts == set(RANK)


def test_no_import_runs_back_up():
    upward = {f"{a} → {b} ({', '.join(sorted(set(files)))})" for (a, b), files in imports().items()
              if RANK[b] >= RANK[a]}
    assert not upward, "imports from a lower layer to a higher one (or across one layer):\n" + "\n".join(upward)


def test_the_rule_sees_imports_inside_functions():
    # api.py imports every stage inside its functions (import lesionseg stays quick): those count too
    assert ("api", "reporting") in imports() and ("api", "experiment") in imports()
