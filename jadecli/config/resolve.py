"""How `jade train` arrives at its config: code defaults < `--preset` < `--config FILE.yaml` <
flags, and the options that say how to run rather than what to compute (`TrainSession`).

A bad value that came from the YAML file names the key and the file; `--print-config` writes
the merged result as a YAML file `--config` reads back.

    python -c "from jadecli.config import resolve_train_config as r; print(r({'primary': \
'usps', 'auxiliary': 'mnist', 'n_labeled': 100, 'model': 'paired'}, preset='paper'))"
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from jadecli.config.options import RUN, ConfigError, opt, option_fields
from jadecli.config.train import (
    AUXILIARY_ONLY,
    JADE_ONLY,
    MODELS,
    TrainConfig,
    field_names,
)
from jadecli.errors import UsageError


def load_yaml_config(path: Path) -> dict[str, Any]:
    """Read a `--config` file: a mapping of TrainConfig keys (dashes or underscores)."""
    if not path.is_file():
        raise UsageError(f"--config {path}: no such file")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UsageError(f"--config {path}: not valid YAML ({first})") from None
    except OSError as err:
        raise UsageError(f"--config {path}: cannot read it ({err.strerror})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UsageError(
            f"--config {path}: expected a mapping of option names to values, "
            f"got a {type(data).__name__}"
        )
    known = field_names(TrainConfig)
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = str(key).replace("-", "_")
        if name not in known:
            close = difflib.get_close_matches(name, known, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; known keys: {', '.join(known)}"
            raise UsageError(f"--config {path}: unknown key {key!r}{hint}")
        out[name] = value
    return out


# --preset paper: the recipe of the authors' 2017 code, per model.
_PAPER_COMMON: dict[str, Any] = {
    "arch": "paper",
    "augment": "none",
    "style_mix": 0.0,
    "loss_scale": "sum",
    "content_dim": 10,
    "style_dim": 10,
    "hidden_dim": 500,
    "dropout": 0.5,
    "ce_on_mean": False,  # the paper's classifier sees sampled content latents only
    "swap_weight": 0.0,  # the paper's decoders learn from the reconstruction alone
    "decoder_content_grad": True,  # ... which also trains the content codes
    "recon_weight": 1.0,  # BCE summed over pixels: "x784 (MNIST), x3072 (SVHN)" of a mean
    "kl_weight": 1.0,
    "match_weight": 1.0,
    "epochs": 300,
    "epoch_size": "all",
    "batch_size": 100,
    "lr_schedule": "step",  # x1 / x0.3 / x0.1 over thirds of training
    "adam_beta1": 0.1,  # sic
    "grad_clip": 0.0,  # the paper did not clip
}
PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "paper": {
        "single": {**_PAPER_COMMON, "lr": 1e-4, "aux_ce_weight": 10.0, "primary_ce_weight": 100.0},
        "paired": {**_PAPER_COMMON, "lr": 1e-3, "aux_ce_weight": 10.0, "primary_ce_weight": 100.0},
        "jade": {**_PAPER_COMMON, "lr": 1e-3, "aux_ce_weight": 1e4, "primary_ce_weight": 1e5},
    }
}


def preset_values(name: str, model: str) -> dict[str, Any]:
    """The config values of `--preset NAME` for `--model MODEL`: only the options that model
    uses (the paper's jade weights mean nothing to a paired classifier)."""
    if model not in MODELS:
        raise ConfigError("model", f"must be one of {', '.join(MODELS)} (got {model!r})")
    unused = set() if model == "jade" else set(JADE_ONLY)
    unused |= set(AUXILIARY_ONLY) if model == "single" else set()
    return {k: v for k, v in PRESETS[name][model].items() if k not in unused}


@dataclass(kw_only=True)
class TrainSession:
    """`jade train`'s options that say how to run, not what to compute (not in the manifest's
    config)."""

    preset: str | None = opt(
        None,
        "Start from a named set of defaults: 'paper' is the recipe of the authors' 2017 code "
        "(paper CNNs, no augmentation, summed ELBO, CE weights 1e4/1e5 for jade and 10/100 for "
        "paired and single, Adam beta_1 0.1, lr x0.3/x0.1 steps, 300 epochs of the whole "
        "auxiliary set, dropout 0.5). Precedence: defaults < preset < --config < flags.",
        group=RUN,
        metavar="paper",
        choices=tuple(PRESETS),
    )
    config: Path | None = opt(
        None,
        "YAML file of option values (keys as the flags, without '--'). Precedence: code "
        "defaults < --preset < this file < flags.",
        group=RUN,
        metavar="FILE.yaml",
    )
    out: Path | None = opt(
        None,
        "Run folder to create (missing parent folders are created). Default: "
        "runs/<model>-<primary>-<auxiliary>-<time>. An existing non-empty folder is refused "
        "unless --resume or --overwrite.",
        group=RUN,
        metavar="DIR",
    )
    resume: bool = opt(
        False,
        "Continue the run in --out from checkpoints/last.pt, with its saved config (--epochs "
        "may be raised to train longer, at the learning rate the schedule ended with).",
        group=RUN,
        switch=True,
    )
    overwrite: bool = opt(
        False, "Delete the jadecli run already in --out and start afresh.", group=RUN, switch=True
    )
    progress: bool = opt(
        True, "Live progress bars in a terminal (plain per-epoch lines otherwise).", group=RUN
    )
    print_config: bool = opt(
        False,
        "Print the resolved configuration (defaults < --preset < --config < flags) as YAML that "
        "--config reads back, and exit without training. Works without --primary: required "
        "options not given print as null.",
        group=RUN,
        switch=True,
    )

    def __post_init__(self) -> None:
        from jadecli.config.options import check_fields

        check_fields(self)
        if self.resume and self.overwrite:
            raise UsageError("--resume and --overwrite contradict each other; pass one of them")
        if self.resume and self.preset is not None:
            raise UsageError(
                f"--preset {self.preset} applies to new runs; a resumed run keeps its saved config"
            )
        if self.resume and self.print_config:
            raise UsageError(
                "--print-config shows a new run's configuration; a run's own is the config: "
                "section of RUN/manifest.yaml"
            )
        if self.resume and self.out is None:
            raise UsageError("--resume needs --out: the run folder to continue")


def merged_values(
    flags: dict[str, Any], config_file: Path | None = None, preset: str | None = None
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """(merged, from the file, from the flags): defaults < preset < YAML file < flags, by field
    name; a flag of None was not given."""
    from_file = load_yaml_config(config_file) if config_file is not None else {}
    given = {k: v for k, v in flags.items() if v is not None}
    merged: dict[str, Any] = {}
    if preset is not None:
        merged.update(
            preset_values(preset, str(given.get("model", from_file.get("model", "jade"))))
        )
    merged.update(from_file)
    merged.update(given)
    return merged, from_file, given


def resolve_train_config(
    flags: dict[str, Any], config_file: Path | None = None, preset: str | None = None
) -> TrainConfig:
    """Merge code defaults < preset < YAML file < flags into a TrainConfig."""
    merged, from_file, given = merged_values(flags, config_file, preset)
    return _build(merged, from_file, given, config_file)


def _build(
    merged: dict[str, Any], from_file: dict[str, Any], given: dict[str, Any], path: Path | None
) -> TrainConfig:
    try:
        return TrainConfig(**merged)
    except ConfigError as err:
        if err.field not in given and err.field in from_file:
            raise UsageError(f"{err.field} in {path}: {err.problem}") from None
        raise


# `--print-config` without the options a run cannot do without: checked with these stand-ins,
# printed as null
_REQUIRED_STAND_INS = {"primary": "mnist", "auxiliary": "mnist", "n_labeled": 10**9}


def config_yaml(
    flags: dict[str, Any], config_file: Path | None = None, preset: str | None = None
) -> str:
    """`--print-config`: the resolved config as a --config file, every option under its flag
    name in --help order; required options not given are null."""
    merged, from_file, given = merged_values(flags, config_file, preset)
    missing = [k for k in _REQUIRED_STAND_INS if merged.get(k) in (None, "")]
    if merged.get("model") == "single" and "auxiliary" in missing:
        missing.remove("auxiliary")  # not required, and must stay unset
    cfg = _build(
        {**merged, **{k: _REQUIRED_STAND_INS[k] for k in missing}}, from_file, given, config_file
    )
    values = {f.name: getattr(cfg, f.name) for f in option_fields(TrainConfig)}
    values.update({k: None for k in missing})
    head = (
        "# jade train configuration, resolved: code defaults < --preset < --config < flags.\n"
        "# Train it with: jade train --config THIS_FILE [--out DIR]; null: not given, or chosen\n"
        "# from the data when the run starts (recorded in the run's manifest.yaml).\n"
    )
    body = {k.replace("_", "-"): v for k, v in values.items()}
    return head + yaml.safe_dump(body, sort_keys=False, width=100)


def requested_changes(flags: dict[str, Any], config_file: Path | None = None) -> dict[str, Any]:
    """What a `--resume` command line asks for: the YAML file's values < the given flags."""
    requested = load_yaml_config(config_file) if config_file is not None else {}
    requested.update({k: v for k, v in flags.items() if v is not None})
    return requested
