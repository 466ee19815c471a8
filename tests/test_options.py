"""Every option is declared once, as a config field: each field has its flag and each flag its
field, every value given reaches the config, and one table of rules validates them."""

from __future__ import annotations

import ast
from dataclasses import fields
from pathlib import Path

import pytest
import typer
import yaml

import jadecli.engine as engine
from jadecli.cli import app
from jadecli.config import (
    EvaluateConfig,
    ExportConfig,
    LatentsConfig,
    PredictConfig,
    ReconstructConfig,
    SummarizeConfig,
    TrainConfig,
    TrainSession,
    field_names,
    flag,
)

PACKAGE = Path(__file__).resolve().parent.parent / "jadecli"


def command(name: str):
    return typer.main.get_command(app).commands[name]  # type: ignore[attr-defined]


COMMANDS = {
    "train": (TrainConfig, TrainSession),
    "evaluate": (EvaluateConfig,),
    "inspect-latents": (LatentsConfig,),
    "reconstruct": (ReconstructConfig,),
    "export": (ExportConfig,),
    "predict": (PredictConfig,),
    "summarize": (SummarizeConfig,),
}


def test_every_command_is_covered():
    assert set(COMMANDS) == set(typer.main.get_command(app).commands)  # type: ignore[attr-defined]


@pytest.mark.parametrize(("name", "classes"), COMMANDS.items())
def test_every_option_of_every_command_is_a_declared_field(name, classes):
    """No option is declared by hand in the CLI: each is a field of a config class, and every
    field is an option whose flag is its name."""
    params = {p.name: p for p in command(name).params if p.name != "help"}
    declared = [n for cls in classes for n in field_names(cls)]
    assert len(declared) == len(set(declared))  # no option declared twice for one command
    assert set(params) == set(declared)
    for cls in classes:
        for f in fields(cls):
            if f.name in params and not f.metadata.get("argument"):
                assert flag(f.name) in params[f.name].opts  # the flag is the field's name


# A value for every TrainConfig field, none of them its default (an ignored flag shows).
SAMPLE = {
    "primary": "mnist",
    "auxiliary": "usps",
    "n_labeled": 40,
    "labeled_selection": "first",
    "val": 0.25,
    "select": "best-val",
    "aux_per_class": 7,
    "data_dir": "/data/elsewhere",
    "download": True,
    "primary_size": 20,
    "auxiliary_size": 24,
    "primary_pad": 2,
    "auxiliary_pad": 3,
    "unlabeled": "rest,folder:/data/unlabeled",
    "unlabeled_ratio": 2,
    "model": "jade",  # the default, but the one model every option means something to
    "arch": "resnet18",
    "batch_norm": "per-dataset",
    "stem": "conv",
    "init_weights": "/weights/resnet18.pth",
    "content_dim": 12,
    "style_dim": 6,
    "style_encoder": "own",
    "decoder_content": "mean",
    "hidden_dim": 64,
    "dropout": 0.25,
    "augment": "primary",
    "aug_shift": 0.05,
    "aug_rotate": 5.0,
    "aug_scale": 0.2,
    "aug_color": 0.1,
    "style_mix": 0.25,
    "loss_scale": "sum",
    "recon_weight": 2.0,
    "kl_weight": 0.5,
    "style_kl_weight": 0.25,
    "match_weight": 10.0,
    "ce_on_mean": False,
    "separation_weight": 0.5,
    "style_adversary_weight": 0.5,
    "swap_weight": 0.25,
    "swap_target": "label",
    "decoder_content_grad": True,
    "aux_ce_weight": 3.0,
    "primary_ce_weight": 4.0,
    "consistency_weight": 0.5,
    "confidence": 0.8,
    "unlabeled_elbo": False,
    "epochs": 3,
    "epoch_size": "all",
    "batch_size": 32,
    "lr": 0.002,
    "lr_schedule": "step",
    "adam_beta1": 0.5,
    "ema": 0.5,
    "grad_clip": 5.0,
    "seed": 11,
    "device": "cpu",
    "precision": "fp32",
    "compile": True,
    "memory_budget": 6.5,
    "eval_every": 2,
    "test": False,
    "log": "tensorboard,mlflow",
}


def test_the_sample_covers_every_field_with_a_value_that_is_not_the_default():
    assert set(SAMPLE) == set(field_names(TrainConfig))
    defaults = {f.name: f.default for f in fields(TrainConfig)}
    assert [k for k, v in SAMPLE.items() if v == defaults[k]] == ["model"]


def _capture(monkeypatch) -> dict:
    seen: dict = {}

    def fake_train(cfg, options, reporter):
        seen["cfg"] = cfg
        raise engine.UsageError("captured")  # stop before any work

    monkeypatch.setattr(engine, "train", fake_train)
    return seen


def test_every_flag_reaches_the_config(runner, monkeypatch, tmp_path):
    seen = _capture(monkeypatch)
    args = ["train", "--out", str(tmp_path / "run")]
    for name, value in SAMPLE.items():
        if isinstance(value, bool):
            args.append(flag(name) if value else "--no-" + flag(name)[2:])
        else:
            args += [flag(name), str(value)]
    result = runner.invoke(app, args)
    assert "captured" in result.output, result.output
    assert seen["cfg"].to_dict() == SAMPLE


def test_every_config_file_key_reaches_the_config(runner, monkeypatch, tmp_path):
    seen = _capture(monkeypatch)
    path = tmp_path / "all.yaml"
    path.write_text(yaml.safe_dump({k.replace("_", "-"): v for k, v in SAMPLE.items()}))
    result = runner.invoke(app, ["train", "--config", str(path), "--out", str(tmp_path / "r")])
    assert "captured" in result.output, result.output
    assert seen["cfg"].to_dict() == SAMPLE


# One table of rules: each rule's message names the flag, in the config and from the command line.
@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("model", "vae", "--model must be one of single, paired, jade (got 'vae')"),
        ("precision", "fp16", "--precision must be one of auto, fp32, bf16 (got 'fp16')"),
        ("epochs", 0, "--epochs must be a positive integer (got 0)"),
        ("n_labeled", 0, "--n-labeled must be a positive integer or 'all' (got 0)"),
        ("eval_every", -1, "--eval-every must be 0 or a positive integer (got -1)"),
        ("lr", 0.0, "--lr must be a positive number (got 0.0)"),
        ("lr", float("nan"), "--lr must be a positive number (got nan)"),
        ("grad_clip", -1.0, "--grad-clip must be a finite number >= 0 (got -1.0)"),
        ("dropout", 1.0, "--dropout must be in [0, 1) (got 1.0)"),
        ("aug_rotate", 200.0, "--aug-rotate must be between 0 and 180 (got 200.0)"),
        ("device", "tpu", "--device must be auto, cpu, cuda, cuda:N or mps (got 'tpu')"),
        ("val", 0, "--val must be at least 1 image, or a fraction (got 0)"),
        ("val", 1.5, "--val must be a whole number of images or a fraction in (0, 1) (got 1.5)"),
        (
            "val",
            "ten",
            "--val must be a number of images (20) or a fraction (0.2 or 20%) (got 'ten')",
        ),
        ("val", 10, "--val 10 leaves nothing to train on: it must be smaller than --n-labeled 10"),
        (
            "select",
            "best-val",
            "--select best-val needs a validation split: add --val N (e.g. --val 20%)",
        ),
        ("loss_scale", "per-pixel", "--loss-scale must be one of mean, sum (got 'per-pixel')"),
    ],
)
def test_one_rule_table_validates_every_field(name, value, message):
    with pytest.raises(engine.UsageError) as err:
        TrainConfig(**{"primary": "mnist", "auxiliary": "mnist", "n_labeled": 10, name: value})
    assert str(err.value) == message


def test_the_analysis_commands_share_the_device_rule(runner, tmp_path):
    result = runner.invoke(app, ["evaluate", str(tmp_path), "--device", "tpu"])
    assert result.exit_code == 2
    assert "error: --device must be auto, cpu, cuda, cuda:N or mps (got 'tpu')" in result.output


# --------------------------------------------------------------------------- the code's shape


def _functions(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node


def test_no_function_in_the_package_is_longer_than_90_lines():
    long = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in _functions(ast.parse(path.read_text())):
            lines = node.end_lineno - node.lineno + 1
            if lines > 90:
                long.append(f"{path.relative_to(PACKAGE)}:{node.lineno} {node.name} ({lines})")
    assert long == []


def test_the_analysis_package_does_not_import_the_training_engine():
    for path in sorted((PACKAGE / "analysis").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                assert node.module not in ("jadecli.engine", "jadecli.trainer"), path
            elif isinstance(node, ast.Import):
                names = {a.name for a in node.names}
                assert not names & {"jadecli.engine", "jadecli.trainer"}, path


def test_print_config_is_a_config_file_that_reads_back_to_the_same_config(tmp_path):
    from typer.testing import CliRunner

    from jadecli.config import resolve_train_config

    runner = CliRunner()
    base = ["train", "--primary", "usps", "--n-labeled", "100", "--auxiliary", "mnist"]
    own = tmp_path / "own.yaml"
    own.write_text("epochs: 7\nmatch-weight: 2.5\n")
    argv = [*base, "--preset", "paper", "--config", str(own), "--epochs", "5", "--print-config"]
    argv += ["--out", str(tmp_path / "never")]
    result = runner.invoke(app, argv)
    assert result.exit_code == 0, result.output
    assert not (tmp_path / "never").exists()  # nothing trained, no run folder
    printed = yaml.safe_load(result.output)
    # precedence: defaults < preset < file < flags
    assert printed["arch"] == "paper" and printed["adam-beta1"] == 0.1  # the preset
    assert printed["match-weight"] == 2.5  # the file over the preset's 1.0
    assert printed["epochs"] == 5  # the flag over the file
    assert list(printed) == [flag(f)[2:] for f in field_names(TrainConfig)]
    saved = tmp_path / "printed.yaml"
    saved.write_text(result.output)
    again = resolve_train_config({}, saved)
    flags = {"primary": "usps", "n_labeled": 100, "auxiliary": "mnist", "epochs": 5}
    direct = resolve_train_config(flags, own, "paper")
    assert (
        again.to_dict()
        == direct.to_dict()
        == {
            **direct.to_dict(),
            **{k.replace("-", "_"): v for k, v in printed.items()},
        }
    )
    refused = runner.invoke(app, [*base, "--resume", "--out", str(tmp_path), "--print-config"])
    assert refused.exit_code == 2
    assert "--print-config" in refused.output and "Traceback" not in refused.output


def test_the_option_reference_in_docs_is_generated_from_the_declarations():
    from jadecli.config.reference import options_markdown

    path = Path(__file__).resolve().parent.parent / "docs" / "options.md"
    assert path.read_text(encoding="utf-8") == options_markdown(), (
        "docs/options.md is stale: python -m jadecli.config.reference > docs/options.md"
    )
