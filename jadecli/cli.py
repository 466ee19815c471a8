"""The `jade` command line: thin Typer commands over the engine.

Each command turns its flags into a typed config and calls one engine function. Every problem a
user can fix surfaces as `error: <one line>` on stderr and a non-zero exit code (1, or 2 for a bad
flag value), never a traceback.

    jade train --primary synth-street --auxiliary synth-hand --n-labeled 100 --out runs/demo
"""

from __future__ import annotations

import re
import sys
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from jadecli import __version__
from jadecli.config import EvaluateConfig as EvalCfg
from jadecli.config import LatentsConfig as LatCfg
from jadecli.config import ReconstructConfig as RecCfg
from jadecli.config import RunSource, help_for
from jadecli.errors import JadeError


class JadeGroup(TyperGroup):
    """Turns every error into one line on stderr and remembers the command line."""

    def make_context(self, info_name: Any, args: Any, parent: Any = None, **extra: Any) -> Any:
        argv = [str(info_name or "jade"), *list(args)]
        ctx = super().make_context(info_name, args, parent=parent, **extra)
        ctx.meta["jade.argv"] = argv
        return ctx

    def main(self, *args: Any, standalone_mode: bool = True, **kwargs: Any) -> Any:
        if not standalone_mode:
            return super().main(*args, standalone_mode=False, **kwargs)
        try:
            rv = super().main(*args, standalone_mode=False, **kwargs)
        except JadeError as err:
            typer.echo(f"error: {err}", err=True)
            sys.exit(err.exit_code)
        except typer.Abort:
            typer.echo("aborted", err=True)
            sys.exit(130)
        except Exception as err:
            # Click's usage errors (Typer may vendor Click, so match them by their interface).
            if not (hasattr(err, "format_message") and hasattr(err, "exit_code")):
                raise
            if type(err).__name__ == "NoArgsIsHelpError":
                err.show()  # type: ignore[attr-defined]
                sys.exit(err.exit_code)
            ctx = getattr(err, "ctx", None)
            hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
            typer.echo(f"error: {err.format_message()}{hint}", err=True)
            sys.exit(err.exit_code)
        sys.exit(rv if isinstance(rv, int) else 0)


app = typer.Typer(
    cls=JadeGroup,
    name="jade",
    help="Train and analyse JADE models: a few labeled primary images, helped by a large "
    "labeled auxiliary dataset of the same classes in another style.",
    no_args_is_help=True,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"jadecli {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool | None,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version."),
    ] = None,
) -> None:
    """Train and analyse JADE models."""


DATA, MODEL, AUG, OBJ, OPT, RUN = (
    "Data",
    "Model",
    "Augmentation",
    "Objective",
    "Optimisation",
    "Run",
)


def _o(name: str, panel: str, **kw: Any) -> Any:
    return typer.Option(help=help_for(name), rich_help_panel=panel, show_default=False, **kw)


def _default_out(primary: str, auxiliary: str | None, model: str) -> Path:
    def slug(text: str) -> str:
        text = Path(text[len("folder:") :]).name if text.startswith("folder:") else text
        return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-") or "data"

    parts = [model, slug(primary)] + ([slug(auxiliary)] if auxiliary and model != "single" else [])
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{'-'.join(parts)}-{stamp}"


@app.command(no_args_is_help=True)
def train(
    ctx: typer.Context,
    primary: Annotated[str | None, _o("primary", DATA)] = None,
    auxiliary: Annotated[str | None, _o("auxiliary", DATA)] = None,
    n_labeled: Annotated[str | None, _o("n_labeled", DATA, metavar="N|all")] = None,
    labeled_selection: Annotated[str | None, _o("labeled_selection", DATA)] = None,
    aux_per_class: Annotated[int | None, _o("aux_per_class", DATA, metavar="K")] = None,
    data_dir: Annotated[str | None, _o("data_dir", DATA, metavar="DIR")] = None,
    download: Annotated[bool | None, _o("download", DATA)] = None,
    primary_size: Annotated[int | None, _o("primary_size", DATA, metavar="SIZE")] = None,
    auxiliary_size: Annotated[int | None, _o("auxiliary_size", DATA, metavar="SIZE")] = None,
    primary_pad: Annotated[int | None, _o("primary_pad", DATA, metavar="P")] = None,
    auxiliary_pad: Annotated[int | None, _o("auxiliary_pad", DATA, metavar="P")] = None,
    model: Annotated[str | None, _o("model", MODEL, metavar="single|paired|jade")] = None,
    arch: Annotated[str | None, _o("arch", MODEL, metavar="shared|paper")] = None,
    content_dim: Annotated[int | None, _o("content_dim", MODEL)] = None,
    style_dim: Annotated[int | None, _o("style_dim", MODEL)] = None,
    hidden_dim: Annotated[int | None, _o("hidden_dim", MODEL)] = None,
    dropout: Annotated[float | None, _o("dropout", MODEL)] = None,
    augment: Annotated[str | None, _o("augment", AUG, metavar="none|primary|all")] = None,
    aug_shift: Annotated[float | None, _o("aug_shift", AUG)] = None,
    aug_rotate: Annotated[float | None, _o("aug_rotate", AUG)] = None,
    aug_scale: Annotated[float | None, _o("aug_scale", AUG)] = None,
    aug_color: Annotated[float | None, _o("aug_color", AUG)] = None,
    style_mix: Annotated[float | None, _o("style_mix", AUG, metavar="P")] = None,
    loss_scale: Annotated[str | None, _o("loss_scale", OBJ, metavar="per-pixel|sum")] = None,
    recon_weight: Annotated[float | None, _o("recon_weight", OBJ)] = None,
    kl_weight: Annotated[float | None, _o("kl_weight", OBJ)] = None,
    match_weight: Annotated[float | None, _o("match_weight", OBJ)] = None,
    aux_ce_weight: Annotated[float | None, _o("aux_ce_weight", OBJ)] = None,
    primary_ce_weight: Annotated[float | None, _o("primary_ce_weight", OBJ)] = None,
    epochs: Annotated[int | None, _o("epochs", OPT)] = None,
    epoch_size: Annotated[str | None, _o("epoch_size", OPT, metavar="N|all")] = None,
    batch_size: Annotated[int | None, _o("batch_size", OPT)] = None,
    lr: Annotated[float | None, _o("lr", OPT)] = None,
    lr_schedule: Annotated[
        str | None, _o("lr_schedule", OPT, metavar="constant|step|cosine")
    ] = None,
    adam_beta1: Annotated[float | None, _o("adam_beta1", OPT)] = None,
    grad_clip: Annotated[float | None, _o("grad_clip", OPT)] = None,
    seed: Annotated[int | None, _o("seed", OPT)] = None,
    device: Annotated[str | None, _o("device", RUN)] = None,
    precision: Annotated[str | None, _o("precision", RUN, metavar="auto|fp32|bf16")] = None,
    eval_every: Annotated[int | None, _o("eval_every", RUN)] = None,
    preset: Annotated[
        str | None,
        typer.Option(
            metavar="paper",
            rich_help_panel=RUN,
            help="Start from a named set of defaults: 'paper' is the 2017 recipe of reference.md "
            "(paper CNNs, no augmentation, summed ELBO, CE weights 1e4/1e5 for jade and 10/100 "
            "for paired and single, Adam beta_1 0.1, lr x0.3/x0.1 steps, 300 epochs of the whole "
            "auxiliary set, dropout 0.5). Precedence: defaults < preset < --config < flags.",
        ),
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option(
            metavar="FILE.yaml",
            rich_help_panel=RUN,
            help="YAML file of option values (keys as the flags, without '--'). Precedence: "
            "code defaults < this file < flags.",
        ),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(
            metavar="DIR",
            rich_help_panel=RUN,
            help="Run folder to create. Default: runs/<model>-<primary>-<auxiliary>-<time>. An "
            "existing non-empty folder is refused unless --resume or --overwrite.",
        ),
    ] = None,
    resume: Annotated[
        bool,
        typer.Option(
            "--resume",
            rich_help_panel=RUN,
            help="Continue the run in --out from checkpoints/last.pt, with its saved config "
            "(--epochs may be raised to train longer).",
        ),
    ] = False,
    overwrite: Annotated[
        bool,
        typer.Option(
            "--overwrite",
            rich_help_panel=RUN,
            help="Delete the jadecli run already in --out and start afresh.",
        ),
    ] = False,
    progress: Annotated[
        bool,
        typer.Option(
            "--progress/--no-progress",
            rich_help_panel=RUN,
            help="Live progress bars in a terminal (plain per-epoch lines otherwise).",
        ),
    ] = True,
) -> None:
    """Train a single classifier, a paired classifier or a JADE model; writes a run folder."""
    from jadecli.engine import RunOptions, resolve_config
    from jadecli.engine import train as run_training
    from jadecli.errors import UsageError
    from jadecli.progress import make_reporter

    flags = {
        "primary": primary,
        "auxiliary": auxiliary,
        "n_labeled": n_labeled,
        "labeled_selection": labeled_selection,
        "aux_per_class": aux_per_class,
        "data_dir": data_dir,
        "download": download,
        "primary_size": primary_size,
        "auxiliary_size": auxiliary_size,
        "primary_pad": primary_pad,
        "auxiliary_pad": auxiliary_pad,
        "model": model,
        "arch": arch,
        "content_dim": content_dim,
        "style_dim": style_dim,
        "hidden_dim": hidden_dim,
        "dropout": dropout,
        "augment": augment,
        "aug_shift": aug_shift,
        "aug_rotate": aug_rotate,
        "aug_scale": aug_scale,
        "aug_color": aug_color,
        "style_mix": style_mix,
        "loss_scale": loss_scale,
        "recon_weight": recon_weight,
        "kl_weight": kl_weight,
        "match_weight": match_weight,
        "aux_ce_weight": aux_ce_weight,
        "primary_ce_weight": primary_ce_weight,
        "epochs": epochs,
        "epoch_size": epoch_size,
        "batch_size": batch_size,
        "lr": lr,
        "lr_schedule": lr_schedule,
        "adam_beta1": adam_beta1,
        "grad_clip": grad_clip,
        "seed": seed,
        "device": device,
        "precision": precision,
        "eval_every": eval_every,
    }
    argv = ctx.meta.get("jade.argv", [])
    if resume and out is None:
        raise UsageError("--resume needs --out: the run folder to continue")
    options = RunOptions(out=out or Path("."), resume=resume, overwrite=overwrite, command=argv)
    cfg = resolve_config(flags, config, options, preset)
    if out is None:
        options.out = _default_out(cfg.primary, cfg.auxiliary, cfg.model)
    reporter = make_reporter(progress)
    try:
        result = run_training(cfg, options, reporter)
    finally:
        reporter.close()
    if result.already_complete:
        typer.echo(
            f"{result.run_dir} already completed {result.epochs_completed} epochs; nothing to "
            "do (pass a larger --epochs to train longer)"
        )
    else:
        typer.echo(
            f"completed {result.epochs_completed} epochs in {result.seconds:.1f} s: "
            f"{result.run_dir}"
        )
    acc_p = result.final.get("primary_test_accuracy")
    acc_a = result.final.get("auxiliary_test_accuracy")
    if acc_p is not None:
        typer.echo(f"primary   test accuracy ({result.primary}): {100 * acc_p:.2f}%")
    if acc_a is not None:
        typer.echo(f"auxiliary test accuracy ({result.auxiliary}): {100 * acc_a:.2f}%")


# --------------------------------------------------------------------------- analysis

RunArg = Annotated[
    Path,
    typer.Argument(
        metavar="RUN",
        help="A run folder written by 'jade train'.",
        show_default=False,
    ),
]
FORMATS = ("table", "json", "yaml")


def _a(cls: Any, name: str, panel: str = "Options", **kw: Any) -> Any:
    return typer.Option(help=help_for(name, cls), rich_help_panel=panel, show_default=False, **kw)


def _check_format(value: str) -> str:
    from jadecli.config import ConfigError

    if value not in FORMATS:
        raise ConfigError("format", f"must be one of {', '.join(FORMATS)} (got {value!r})")
    return value


FORMAT_HELP = (
    "table: a readable summary; json or yaml: the full result on stdout (messages stay on "
    "stderr), e.g. for jq in CI scripts."
)


def _emit(report: dict[str, Any], fmt: str) -> bool:
    """Print `report` as json/yaml; False for table format (the caller prints tables)."""
    if fmt == "json":
        import json

        typer.echo(json.dumps(report, indent=2))
        return True
    if fmt == "yaml":
        import yaml

        typer.echo(yaml.safe_dump(report, sort_keys=False, width=100).rstrip())
        return True
    return False


def _parse_fraction(value: str | None) -> float | None:
    """`0.85` or `85%` -> 0.85; anything else names the flag."""
    from jadecli.config import ConfigError

    if value is None:
        return None
    text = value.strip()
    try:
        number = float(text[:-1]) / 100 if text.endswith("%") else float(text)
    except ValueError:
        raise ConfigError(
            "min_accuracy", f"must be a fraction (0.85) or a percentage (85%) (got {value!r})"
        ) from None
    if not text.endswith("%") and number > 1:
        raise ConfigError(
            "min_accuracy",
            f"{value} is not a fraction in [0, 1]; for a percentage write {value}%",
        )
    return number


SRC = "Run"
# Options every analysis command shares (fields of RunSource), declared once.
FormatOpt = Annotated[str, typer.Option("--format", metavar="table|json|yaml", help=FORMAT_HELP)]
CheckpointOpt = Annotated[Path | None, _a(RunSource, "checkpoint", SRC, metavar="PATH")]
DataDirOpt = Annotated[str | None, _a(RunSource, "data_dir", SRC, metavar="DIR")]
DeviceOpt = Annotated[str, _a(RunSource, "device", SRC)]
PrecisionOpt = Annotated[str, _a(RunSource, "precision", SRC, metavar="auto|fp32|bf16")]
BatchSizeOpt = Annotated[int, _a(RunSource, "batch_size", SRC)]
OutOpt = Annotated[Path | None, _a(RunSource, "out", SRC, metavar="DIR")]


def _source(
    ctx: typer.Context,
    run: Path,
    checkpoint: Path | None,
    data_dir: str | None,
    device: str,
    precision: str,
    batch_size: int,
    out: Path | None,
) -> dict[str, Any]:
    """The run-source options every analysis command shares (fields of RunSource)."""
    return {
        "run": run,
        "checkpoint": checkpoint,
        "data_dir": data_dir,
        "device": device,
        "precision": precision,
        "batch_size": batch_size,
        "out": out,
        "command": ctx.meta.get("jade.argv", []),
    }


@app.command(no_args_is_help=True)
def evaluate(
    ctx: typer.Context,
    run: RunArg,
    split: Annotated[str, _a(EvalCfg, "split", metavar="SPLIT")] = "test",
    test_limit: Annotated[int | None, _a(EvalCfg, "test_limit", metavar="N")] = None,
    min_accuracy: Annotated[str | None, _a(EvalCfg, "min_accuracy", metavar="X")] = None,
    fmt: FormatOpt = "table",
    seed: Annotated[int, _a(EvalCfg, "seed")] = 0,
    checkpoint: CheckpointOpt = None,
    data_dir: DataDirOpt = None,
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = "auto",
    batch_size: BatchSizeOpt = 100,
    out: OutOpt = None,
) -> None:
    """Accuracy, per-class accuracy, confusion matrices, NLL and (JADE) the test ELBO of a run."""
    from jadecli.analysis.evaluate import evaluate as run_eval
    from jadecli.cli_output import print_evaluation
    from jadecli.errors import GateFailed
    from jadecli.progress import PlainReporter

    _check_format(fmt)
    cfg = EvalCfg(
        **_source(ctx, run, checkpoint, data_dir, device, precision, batch_size, out),
        split=split,
        test_limit=test_limit,
        min_accuracy=_parse_fraction(min_accuracy),
        seed=seed,
    )
    result = run_eval(cfg, PlainReporter())
    if not _emit(result.report, fmt):
        print_evaluation(result.report)
    if result.passed is False:
        acc = result.report["primary"]["accuracy"]
        raise GateFailed(
            f"primary accuracy {100 * acc:.2f}% is below --min-accuracy "
            f"{100 * (cfg.min_accuracy or 0):.2f}%"
        )


@app.command("inspect-latents", no_args_is_help=True)
def inspect_latents(
    ctx: typer.Context,
    run: RunArg,
    dataset: Annotated[str, _a(LatCfg, "dataset", metavar="primary|auxiliary|both")] = "primary",
    split: Annotated[str, _a(LatCfg, "split", metavar="SPLIT")] = "test",
    test_limit: Annotated[int | None, _a(LatCfg, "test_limit", metavar="N")] = None,
    probe: Annotated[
        bool, typer.Option("--probe/--no-probe", help=help_for("probe", LatCfg))
    ] = True,
    fmt: FormatOpt = "table",
    seed: Annotated[int, _a(LatCfg, "seed")] = 0,
    checkpoint: CheckpointOpt = None,
    data_dir: DataDirOpt = None,
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = "auto",
    batch_size: BatchSizeOpt = 100,
    out: OutOpt = None,
) -> None:
    """Variance of each latent dimension within a class vs over all classes (the paper's
    Figure 2, measured), the disentanglement ratio, and held-out probes.

    v[class, dim] = Var(posterior mean of dim over images of that class) / Var(over all images of
    the split). Disentanglement ratio = mean v of active style dims / mean v of active content
    dims (higher = more disentangled; active = variance of the posterior mean >= 0.01)."""
    from jadecli.analysis.latents import inspect_latents as run_latents
    from jadecli.cli_output import print_latents
    from jadecli.progress import PlainReporter

    _check_format(fmt)
    cfg = LatCfg(
        **_source(ctx, run, checkpoint, data_dir, device, precision, batch_size, out),
        dataset=dataset,
        split=split,
        test_limit=test_limit,
        seed=seed,
        probe=probe,
    )
    result = run_latents(cfg, PlainReporter())
    if not _emit(result.report, fmt):
        print_latents(result.report)


@app.command(no_args_is_help=True)
def reconstruct(
    ctx: typer.Context,
    run: RunArg,
    n: Annotated[int, _a(RecCfg, "n")] = 8,
    seed: Annotated[int, _a(RecCfg, "seed")] = 0,
    split: Annotated[str, _a(RecCfg, "split", metavar="SPLIT")] = "test",
    traverse: Annotated[str | None, _a(RecCfg, "traverse", metavar="DIMS")] = None,
    traverse_range: Annotated[float, _a(RecCfg, "traverse_range", metavar="R")] = 3.0,
    traverse_steps: Annotated[int, _a(RecCfg, "traverse_steps")] = 7,
    fmt: FormatOpt = "table",
    checkpoint: CheckpointOpt = None,
    data_dir: DataDirOpt = None,
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = "auto",
    batch_size: BatchSizeOpt = 100,
    out: OutOpt = None,
) -> None:
    """Image grids from a JADE run: reconstructions, style/content swaps within and across
    datasets, and (--traverse) one latent dimension varied at a time."""
    from jadecli.analysis.reconstruct import reconstruct as run_recon
    from jadecli.cli_output import print_reconstruct
    from jadecli.progress import PlainReporter

    _check_format(fmt)
    cfg = RecCfg(
        **_source(ctx, run, checkpoint, data_dir, device, precision, batch_size, out),
        n=n,
        seed=seed,
        split=split,
        traverse=traverse,
        traverse_range=traverse_range,
        traverse_steps=traverse_steps,
    )
    result = run_recon(cfg, PlainReporter())
    if not _emit(result.report, fmt):
        print_reconstruct(result.report)


def main() -> None:
    """Console-script entry point (`jade`)."""
    command = typer.main.get_command(app)
    command.main(prog_name="jade")
