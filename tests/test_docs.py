"""The documentation site: `mkdocs build --strict` passes, and the reference pages that docs/hooks.py
generates list every config key of configs/base.yaml, every command of the CLI and every registry metric."""

from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys

import pytest
import yaml
from helpers import REPO

from lesionseg.cli import build_parser
from lesionseg.config.schema import Config
from lesionseg.evaluation import registry

_spec = importlib.util.spec_from_file_location("docs_hooks", REPO / "docs" / "hooks.py")
hooks = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(hooks)


def base_yaml_keys() -> list[str]:
    """Every key of configs/base.yaml, dotted: the top-level keys and those of each section. The config is
    two levels deep, so a mapping below a section (`report.baseline: {loss.beta: 0.5}`) is a value."""
    raw = yaml.safe_load((REPO / "configs" / "base.yaml").read_text(encoding="utf-8"))
    keys = []
    for key, value in raw.items():
        keys += [f"{key}.{sub}" for sub in value] if isinstance(value, dict) else [key]
    return keys


def command_names() -> list[str]:
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return list(action.choices)


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """The site, built as `make docs` builds it, into a temporary folder."""
    out = tmp_path_factory.mktemp("site")
    result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
                            cwd=REPO, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert result.returncode == 0, f"mkdocs build --strict failed:\n{result.stdout}\n{result.stderr}"
    return out


def test_base_yaml_lists_every_schema_key():
    keys = base_yaml_keys()
    assert {"sweep.parallel", "sweep.backend", "sweep.ray_address", "sweep.cpus_per_run"} <= set(keys)
    # `sweep` itself is the grid (dotted key → values), empty in base.yaml
    assert set(keys) == {key for key, _ in hooks.schema_fields(Config)} - {"sweep"}


def test_every_comment_of_base_yaml_is_parsed():
    """Each comment line of base.yaml below the header ends up in a key's description or a section's note
    (continuation lines joined to the comment above them)."""
    comments, notes = hooks.yaml_comments()
    parsed = " ".join([*comments.values(), *notes.values()])
    lines = (REPO / "configs" / "base.yaml").read_text(encoding="utf-8").splitlines()
    first_key = next(i for i, line in enumerate(lines) if line and not line.startswith("#"))
    for line in lines[first_key:]:
        if "#" in line:
            assert line.split("#", 1)[1].strip() in parsed, line
    assert comments["data.cache_device"].endswith("else CPU (pinned copies)")


REFERENCES = {  # page: (its generator, the names it must hold, how a name appears in the Markdown, in the HTML)
    "config": (hooks.config_reference, base_yaml_keys, "| `{}` |", "<code>{}</code>"),
    "cli": (hooks.cli_reference, command_names, "## `lesionseg {}`", "usage: lesionseg {}"),
    "metrics": (hooks.metrics_reference, lambda: [m.name for m in registry.METRICS], "| `{}` |",
                "<code>{}</code>"),
}


@pytest.mark.parametrize("page", REFERENCES)
def test_generated_reference_lists_every_name(site, page):
    """Every config key of base.yaml, every command of the CLI and every metric of the registry is on its
    generated page, in the Markdown and in the built site."""
    generate, names, in_markdown, in_html = REFERENCES[page]
    markdown = generate()
    built = (site / "reference" / page / "index.html").read_text(encoding="utf-8")
    for name in names():
        assert in_markdown.format(name) in markdown, name
        assert in_html.format(name) in built, name


def test_results_page_includes_bench_results_without_its_title(site):
    """docs/results.md includes bench/RESULTS.md from its second line: the first must be the title it replaces."""
    results = (REPO / "bench" / "RESULTS.md").read_text(encoding="utf-8").splitlines()
    assert results[0].startswith("# ")
    built = (site / "results" / "index.html").read_text(encoding="utf-8")
    assert "bench_evaluate.py" in built
