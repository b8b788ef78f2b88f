"""Typed, validated configuration: YAML files with `extends:`, dotted `key=value` overrides, sweeps.

A config is a tree of pydantic models with `extra="forbid"` (`schema`), so an unknown key or a bad value
is an error that names the full dotted path, the value and what is allowed (`loss.beta: 1.3 is not in
(0, 1)`). Relative paths (`data.datalist`, `output_dir`) are taken relative to the current working
directory and stored absolute in the resolved config that every run saves (`loading`). Everything public
of both is importable from `lesionseg.config`.
"""

from lesionseg.config.loading import (
    REPLACED_MAPPINGS,
    deep_merge,
    dump_yaml,
    expand_sweep,
    flat_keys,
    load_config,
    load_raw,
    parse_overrides,
    run_id,
    validate,
)
from lesionseg.config.evaluation import EVAL_DEFAULTS, EvalConfig, eval_options
from lesionseg.config.schema import (
    SWEEP_OPTIONS,
    Config,
    DataConfig,
    LossConfig,
    ModelConfig,
    ReportConfig,
    SweepOptions,
    TrainConfig,
    resolve_ce_weight,
)
from lesionseg.config.section import check_device_name

__all__ = [
    "Config",
    "DataConfig",
    "EVAL_DEFAULTS",
    "EvalConfig",
    "LossConfig",
    "ModelConfig",
    "REPLACED_MAPPINGS",
    "ReportConfig",
    "SWEEP_OPTIONS",
    "SweepOptions",
    "TrainConfig",
    "check_device_name",
    "deep_merge",
    "eval_options",
    "dump_yaml",
    "expand_sweep",
    "flat_keys",
    "load_config",
    "load_raw",
    "parse_overrides",
    "resolve_ce_weight",
    "run_id",
    "validate",
]
