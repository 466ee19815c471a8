"""Typed configuration for every command: one declaration per option.

- `options`: the option framework (`opt`, `Range`, validation, flags);
- `train`: `jade train`'s `TrainConfig`, its checks and idle-combination errors;
- `resolve`: defaults < `--preset` < `--config FILE.yaml` < flags, `--print-config`, and the
  options that say how to run (`TrainSession`);
- `commands`: the options of the commands that read a trained run, sharing their bases, and of
  `jade summarize`;
- `reference`: docs/options.md, generated from the declarations.

Everything is torch-free, so `jade --help` stays fast.
"""

from jadecli.config.commands import (
    ANALYSIS_DATASETS,
    DEFAULT_TOP_K,
    MAX_RECONSTRUCT_N,
    SPLITS,
    ComputeOptions,
    DataDirOption,
    EvaluateConfig,
    ExportConfig,
    LatentsConfig,
    PredictConfig,
    ReconstructConfig,
    ReportOptions,
    RunOptions,
    RunSource,
    SummarizeConfig,
)
from jadecli.config.options import (
    DATASETS,
    RUN,
    ConfigError,
    Range,
    check_fields,
    field_names,
    flag,
    help_for,
    metavar,
    opt,
    option_fields,
)
from jadecli.config.resolve import (
    PRESETS,
    TrainSession,
    config_yaml,
    load_yaml_config,
    preset_values,
    requested_changes,
    resolve_train_config,
)
from jadecli.config.train import (
    MODELS,
    RESUME_OVERRIDABLE,
    TrainConfig,
)

__all__ = [
    "ANALYSIS_DATASETS",
    "DATASETS",
    "DEFAULT_TOP_K",
    "MAX_RECONSTRUCT_N",
    "MODELS",
    "PRESETS",
    "RESUME_OVERRIDABLE",
    "RUN",
    "SPLITS",
    "ComputeOptions",
    "ConfigError",
    "DataDirOption",
    "EvaluateConfig",
    "ExportConfig",
    "LatentsConfig",
    "PredictConfig",
    "Range",
    "ReconstructConfig",
    "ReportOptions",
    "RunOptions",
    "RunSource",
    "SummarizeConfig",
    "TrainConfig",
    "TrainSession",
    "check_fields",
    "config_yaml",
    "field_names",
    "flag",
    "help_for",
    "load_yaml_config",
    "metavar",
    "opt",
    "option_fields",
    "preset_values",
    "requested_changes",
    "resolve_train_config",
]
