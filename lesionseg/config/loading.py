"""Reading a config: YAML files with `extends:`, dotted `key=value` overrides, validation with errors that
name the key, and sweeps expanded into runs."""

from __future__ import annotations

import copy
import itertools
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from lesionseg.config.schema import Config
from lesionseg.errors import LesionsegError


def _format_errors(err: ValidationError, source: str, overrides: dict | None = None) -> str:
    """One line per error, naming the dotted key; a key set by a command-line override says so."""
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "(top level)"
        origin = " (given on the command line)" if _in_tree(overrides or {}, e["loc"]) else ""
        if e["type"] == "extra_forbidden":
            lines.append(f"  {key}: unknown key{origin} (check the spelling; see configs/base.yaml for every key)")
        else:
            value = e.get("input")
            shown = "" if isinstance(value, dict) else f" = {value!r}"
            lines.append(f"  {key}{shown}: {e['msg']}{origin}")
    return f"invalid config {source}:\n" + "\n".join(lines)


def _in_tree(tree: dict, loc: tuple) -> bool:
    """Whether the override tree sets the key at `loc` (or a mapping above it: `sweep=...`)."""
    node: Any = tree
    for part in loc:
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
        if not isinstance(node, dict):
            return True
    return True


# Mappings that are values, not sections: a child config (or an override) replaces them whole. A baseline
# `{loss.name: dice}` merged into base.yaml's `{loss.beta: 0.5}` would ask for both.
REPLACED_MAPPINGS = (("report", "baseline"),)


def deep_merge(base: dict, child: dict, _path: tuple = ()) -> dict:
    """Merge `child` into a copy of `base`; mappings merge recursively (except `REPLACED_MAPPINGS`),
    anything else the child wins."""
    merged = copy.deepcopy(base)
    for key, value in child.items():
        path = (*_path, key)
        if isinstance(value, dict) and isinstance(merged.get(key), dict) and path not in REPLACED_MAPPINGS:
            merged[key] = deep_merge(merged[key], value, path)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, but a key given twice in one mapping is an error (YAML would keep the last)."""

    def construct_mapping(self, node, deep=False):
        seen: dict = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} is given twice (lines {seen[key] + 1} and {key_node.start_mark.line + 1}); "
                    "keep one", key_node.start_mark)
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


def _read_yaml(path: Path) -> dict:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise LesionsegError(f"config file not found: {path}") from None
    except OSError as err:
        raise LesionsegError(f"cannot read config file {path}: {err.strerror}") from None
    except UnicodeDecodeError:
        raise LesionsegError(f"config file {path} is not a text file (not UTF-8); give a YAML config") from None
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.YAMLError as err:
        raise LesionsegError(f"config file {path} is not valid YAML: {err}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise LesionsegError(f"config file {path} must hold a mapping of keys, not a {type(data).__name__}")
    return data


def load_raw(path: str | Path, _seen: tuple[Path, ...] = ()) -> dict:
    """Read a YAML config and everything it `extends:` (relative to the file), merged, child winning."""
    path = Path(path).resolve()
    if path in _seen:
        chain = " → ".join(str(p) for p in (*_seen, path))
        raise LesionsegError(f"config files extend each other in a loop: {chain}")
    data = _read_yaml(path)
    parents = data.pop("extends", None)
    if parents is None:
        return data
    merged: dict = {}
    for parent in [parents] if isinstance(parents, str) else parents:
        merged = deep_merge(merged, load_raw(path.parent / parent, (*_seen, path)))
    return deep_merge(merged, data)


def parse_overrides(items: list[str]) -> dict:
    """`["loss.beta=0.7", "model.channels=[8,16]"]` → nested dict; values are parsed as YAML."""
    tree: dict = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key or any(not part for part in key.split(".")):
            raise LesionsegError(f"override {item!r} must look like dotted.key=value (e.g. loss.beta=0.7)")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError as err:
            raise LesionsegError(f"override {item!r}: the value is not valid YAML: {err}") from None
        if not isinstance(value, str) and value is not None and _holds_text(key):
            value = text  # name=off, name=1e3: YAML would read a boolean or a number where text belongs
        node = tree
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise LesionsegError(f"override {item!r} conflicts with another override of {part}")
        node[leaf] = value
    return tree


def _holds_text(key: str) -> bool:
    """Whether the dotted config key holds a string (`name`, `train.device`, `data.orientation` …)."""
    model: type[BaseModel] = Config
    *parents, leaf = key.split(".")
    for part in parents:
        field = model.model_fields.get(part)
        if field is None or not (isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)):
            return False
        model = field.annotation
    field = model.model_fields.get(leaf)
    return field is not None and field.annotation in (str, str | None)


def validate(raw: dict, source: str = "", overrides: dict | None = None) -> Config:
    try:
        cfg = Config.model_validate(raw)
    except ValidationError as err:
        raise LesionsegError(_format_errors(err, source, overrides)) from None
    # Resolve paths now so that the saved config works from any directory.
    cfg.output_dir = cfg.output_dir.expanduser().resolve()
    if cfg.data.datalist is not None:
        cfg.data.datalist = cfg.data.datalist.expanduser().resolve()
    for key in cfg.report.baseline:
        try:
            _set_dotted(cfg.model_dump(mode="json"), key, None)
        except KeyError:
            raise LesionsegError(f"invalid config {source}: report.baseline key {key!r} is not a config key") from None
    for key in cfg.sweep:
        try:
            _set_dotted(cfg.model_dump(mode="json"), key, None)
        except KeyError:
            origin = " (given on the command line)" if _in_tree(overrides or {}, ("sweep", key)) else ""
            raise LesionsegError(f"invalid config {source}: sweep key {key!r} is not a config key{origin}") from None
    return cfg


def load_config(path: str | Path, overrides: list[str] | None = None) -> Config:
    """The whole path from a YAML file (plus `key=value` overrides) to a validated `Config`."""
    tree = parse_overrides(overrides or [])
    raw = deep_merge(load_raw(path), tree)
    return validate(raw, source=str(path) + (" with its command-line overrides" if tree else ""), overrides=tree)


def _set_dotted(tree: dict, key: str, value: Any) -> None:
    node = tree
    *parents, leaf = key.split(".")
    for part in parents:
        if not isinstance(node.get(part), dict):
            raise KeyError(key)
        node = node[part]
    if leaf not in node:
        raise KeyError(key)
    node[leaf] = value


def flat_keys(tree: dict, prefix: str = "") -> dict[str, Any]:
    """A config tree as `{"loss.beta": 0.7, …}`; lists and the `sweep` block are values, not subtrees."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value and key != "sweep":
            flat.update(flat_keys(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def run_id(assignment: dict[str, Any]) -> str:
    """`{"loss.beta": 0.7, "seed": 0}` → `beta=0.7_seed=0` (the last part of each key)."""
    return "_".join(f"{key.split('.')[-1]}={value}" for key, value in assignment.items()) or "run"


def expand_sweep(cfg: Config) -> list[tuple[str, Config]]:
    """Every configuration of the `sweep:` block (cartesian product, in the order written) as (run id, config)."""
    keys = list(cfg.sweep)
    base = cfg.model_dump(mode="json")
    base["sweep"] = {}
    runs = []
    for values in itertools.product(*(cfg.sweep[k] for k in keys)):
        assignment = dict(zip(keys, values))
        tree = copy.deepcopy(base)
        for key, value in assignment.items():
            _set_dotted(tree, key, value)
        rid = run_id(assignment)
        runs.append((rid, validate(tree, source=f"(sweep run {rid})")))
    ids = [rid for rid, _ in runs]
    if len(set(ids)) != len(ids):
        raise LesionsegError(f"sweep keys give duplicate run ids {ids}; make the last parts of the keys distinct")
    return runs


def dump_yaml(cfg: Config) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
