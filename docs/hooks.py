"""MkDocs hooks: the three reference pages that are generated, at every build, from the code itself.

- `reference/config.md`: every config key from the pydantic schema (`lesionseg/config/`: schema.py, evaluation.py), its type,
  range and default, described by its comment in `configs/base.yaml`;
- `reference/cli.md`: every command of `lesionseg.cli.build_parser()` with its argparse help;
- `reference/metrics.md`: the metric registry (`lesionseg/evaluation/registry.py`).

Nothing is written into docs/: the pages exist only in the build. `tests/test_docs.py` imports this file and
calls `config_reference`, `cli_reference` and `metrics_reference` too.
"""

from __future__ import annotations

import argparse
import functools
import html
import inspect
import json
import re
import types
import typing
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BASE_YAML = REPO / "configs" / "base.yaml"

_KEY_LINE = re.compile(r"^(?P<indent> *)(?P<key>[A-Za-z_][\w.]*):(?P<rest>.*)$")


def yaml_comments(path: Path = BASE_YAML) -> tuple[dict[str, str], dict[str, str]]:
    """The comments of a YAML config: `{dotted key: its trailing comment}` (every key, in order; "" where it
    has none) and `{section: its notes}`.

    A comment-only line whose `#` is in the column of the previous comment continues that comment; any other
    indented comment-only line is a note of the section it is in (column-0 comments, the header, are skipped).
    """
    comments: dict[str, str] = {}
    notes: dict[str, str] = {}
    stack: list[tuple[int, str]] = []  # (indent, key) of the enclosing keys
    target, name, column = None, "", -1  # where a continuation line goes, and the column it must start at
    for line in path.read_text(encoding="utf-8").splitlines():
        stripped = line.lstrip()
        if stripped.startswith("#"):
            col, text = len(line) - len(stripped), stripped[1:].strip()
            if target is not None and col == column:
                target[name] += " " + text
                continue
            section = ".".join(k for indent, k in stack if indent < col)
            if col and section:
                notes[section] = f"{notes[section]} {text}" if section in notes else text
                target, name, column = notes, section, col
            continue
        match = _KEY_LINE.match(line)
        if not match:
            target = None
            continue
        indent = len(match["indent"])
        while stack and stack[-1][0] >= indent:
            stack.pop()
        stack.append((indent, match["key"]))
        key = ".".join(k for _, k in stack)
        _, hashed, comment = match["rest"].partition(" #")
        comments[key], target = comment.strip(), None  # every key, in the file's order ("": no comment)
        if hashed:
            target, name, column = comments, key, line.index(" #", match.start("rest")) + 1
    return comments, notes


def schema_fields(model, prefix: str = "") -> list[tuple[str, typing.Any]]:
    """`(dotted key, FieldInfo)` of every leaf of a pydantic model tree; a field read under another name
    (`sweep_options`, read from `sweep:`) is listed under that name."""
    from pydantic import BaseModel

    rows = []
    for attr, info in model.model_fields.items():
        key = prefix + (info.validation_alias if isinstance(info.validation_alias, str) else attr)
        if isinstance(info.annotation, type) and issubclass(info.annotation, BaseModel):
            rows += schema_fields(info.annotation, key + ".")
        else:
            rows.append((key, info))
    return rows


def _type_name(tp) -> str:
    """A type annotation for people: `zscore` | `median`, float or null, list of int, mapping."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Literal:
        return " \\| ".join(f"`{a}`" for a in args)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in args)
    if origin is list:
        return f"list of {_type_name(args[0])}" if args and args[0] is not typing.Any else "list"
    if origin is dict:
        return "mapping"
    names = {type(None): "null", str: "string", int: "int", float: "float", bool: "bool", Path: "path"}
    return names.get(tp, getattr(tp, "__name__", str(tp)))


def _number(x) -> str:
    """A bound as written in the docs: 4294967296 as 2^32."""
    if isinstance(x, int) and x > 2**16 and x & (x - 1) == 0:
        return f"2^{x.bit_length() - 1}"
    return f"{x:g}" if isinstance(x, float) else str(x)


def _constraints(info) -> str:
    """The Field constraints that can be read off the schema: bounds, lengths, pattern."""
    found = {attr: getattr(meta, attr) for meta in info.metadata for attr in
             ("ge", "gt", "le", "lt", "min_length", "max_length", "pattern") if getattr(meta, attr, None) is not None}
    signs = {"ge": "≥", "gt": ">", "le": "≤", "lt": "<"}
    parts = [f"{sign} {_number(found[attr])}" for attr, sign in signs.items() if attr in found]
    low, high = found.get("min_length"), found.get("max_length")
    if low is not None and low == high:
        parts.append(f"length {low}")
    else:
        parts += [f"length {s} {n}" for s, n in (("≥", low), ("≤", high)) if n is not None]
    if "pattern" in found:
        parts.append(f"matches `{found['pattern']}`")
    return ", ".join(parts)


def _default(info) -> str:
    """The field's default as YAML would spell it, in a code span."""
    value = info.get_default(call_default_factory=True)
    text = str(value) if isinstance(value, (str, Path)) else json.dumps(value)
    return f"`{text}`"


def _cell(text: str) -> str:
    """Prose for a Markdown table cell: no raw HTML (`<name>`), no column breaks."""
    return html.escape(text, quote=False).replace("|", "\\|")


def config_reference() -> str:
    """The configuration reference page: one table per section of the config, one row per key."""
    from lesionseg.config.schema import Config

    comments, notes = yaml_comments()
    order = {key: i for i, key in enumerate(comments)}
    fields = sorted(schema_fields(Config), key=lambda row: order.get(row[0], len(order)))  # base.yaml's order
    sections = list(dict.fromkeys(key.split(".")[0] for key, _ in fields if "." in key))
    section_of = lambda key: key.split(".")[0] if key.split(".")[0] in sections else ""  # noqa: E731
    lines = ["# Configuration reference", "",
             "Generated at build time from the schema (`lesionseg/config/schema.py` and `evaluation.py`: types, ranges, defaults) "
             "and the comments of `configs/base.yaml` (descriptions), which lists every key with its default. "
             "A config `extends: base.yaml` and sets only what it changes; any key can also be given on the "
             "command line as a dotted override, e.g. `loss.beta=0.7`.", ""]
    for section in ["", *sections]:
        rows = [(key, info) for key, info in fields if section_of(key) == section]
        lines += [f"## `{section}`" if section else "## Top level", ""]
        # The section's own comment (unless the section is also a key, `sweep`), then its notes
        intro = [comments.get(section, "") if section not in dict(rows) else "", notes.get(section, "")]
        lines += [_cell(" ".join(filter(None, intro))), ""] if any(intro) else []
        lines += ["| Key | Type | Range | Default | Description |", "|---|---|---|---|---|"]
        for key, info in rows:
            text = comments.get(key) or info.description or ""
            lines.append(f"| `{key}` | {_type_name(info.annotation)} | {_constraints(info)} | {_default(info)} "
                         f"| {_cell(text)} |")
        lines.append("")
    return "\n".join(lines)


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, tuple[argparse.ArgumentParser, str]]:
    """`{name: (sub-parser, its one-line help)}` of a parser's sub-commands, in `--help` order."""
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    helps = {choice.dest: choice.help or "" for choice in action._choices_actions}
    return {name: (sub, helps.get(name, "")) for name, sub in action.choices.items()}


def _help(parser: argparse.ArgumentParser) -> str:
    """The parser's `--help`, 100 columns wide whatever the terminal."""
    parser.formatter_class = functools.partial(argparse.HelpFormatter, width=100)
    return parser.format_help().rstrip()


def cli_reference() -> str:
    """The command-line reference page: `lesionseg --help`, then each command's help."""
    from lesionseg.cli import build_parser

    parser = build_parser()
    lines = ["# Command-line reference", "",
             "Generated at build time from the argument parser (`lesionseg.cli.build_parser`): the output of "
             "`lesionseg --help` and of `lesionseg COMMAND --help` for each command.", "",
             "```text", _help(parser), "```", ""]
    for name, (sub, summary) in _subcommands(parser).items():
        lines += [f"## `lesionseg {name}`", "", _cell(sub.description or summary), "",
                  "```text", _help(sub), "```", ""]
    return "\n".join(lines)


def _roles(m) -> str:
    """A metric's flags in the registry, as words."""
    roles = ["lower is better" if m.lower_is_better else "", "" if m.pooled else "no pooled value",
             f"report column {m.report}" if m.report else ""]
    return ", ".join(filter(None, roles + [r for r in ("headline", "tested", "curve", "tuned") if getattr(m, r)]))


def metrics_reference() -> str:
    """The metrics page: the registry's own description, then one table per group of `cases.csv`."""
    from lesionseg.evaluation import registry

    lines = ["# Metrics", "",
             "Generated at build time from the metric registry (`lesionseg/evaluation/registry.py`), whose "
             "description follows.", "", inspect.getdoc(registry), "",
             "`<name>_tuned` is a metric at the threshold tuned on the validation cases (e.g. "
             f"{registry.label('dsc_tuned')}); tuned: " + ", ".join(f"`{n}`" for n in registry.names(tuned=True)),
             ""]
    for group in dict.fromkeys(m.group for m in registry.METRICS):
        lines += [f"## {group.capitalize()}", "", "| Name | Label | Definition | Roles |", "|---|---|---|---|"]
        lines += [f"| `{m.name}` | {_cell(m.label)} | {_cell(getattr(m, 'definition', ''))} | {_roles(m)} |"
                  for m in registry.METRICS if m.group == group]
        lines.append("")
    return "\n".join(lines)


PAGES = {"reference/config.md": config_reference, "reference/cli.md": cli_reference,
         "reference/metrics.md": metrics_reference}


def on_files(files, config):
    """Add the generated reference pages to the site (they exist only in the build)."""
    from mkdocs.structure.files import File

    for uri, generate in PAGES.items():
        files.append(File.generated(config, uri, content=generate()))
    return files
