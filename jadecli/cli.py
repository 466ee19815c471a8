"""The `jade` command line: thin Typer commands over the engine.

Each command's options are the fields of its config dataclass (`jadecli.config`): Typer parses
them, their values reach the config by field name, and the command calls one engine function.
Every problem a user can fix surfaces as `error: <one line>` on stderr and a non-zero exit code
(1, or 2 for a bad flag value), never a traceback.

    jade train --primary synth-street --auxiliary synth-hand --n-labeled 100 --out runs/demo
"""

from __future__ import annotations

import inspect
import os
import re
import sys
from collections.abc import Callable
from dataclasses import Field
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, get_type_hints

import typer
from typer.core import TyperCommand, TyperGroup

from jadecli import __version__
from jadecli.config import (
    RUN,
    EvaluateConfig,
    ExportConfig,
    LatentsConfig,
    PredictConfig,
    ReconstructConfig,
    SummarizeConfig,
    TrainConfig,
    TrainSession,
    help_for,
    metavar,
    option_fields,
)
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
            if err.quiet is False or (err.quiet is None and not _secondary_rank()):
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
            if not _secondary_rank():
                typer.echo(f"error: {err.format_message()}{hint}", err=True)
            sys.exit(err.exit_code)
        sys.exit(rv if isinstance(rv, int) else 0)


class JadeCommand(TyperCommand):
    """Plain, compact `--help`: the options in their panels (Data, Model, ..., Run), each a
    two-column list whose descriptions wrap to the terminal's width."""

    def format_help(self, ctx: Any, formatter: Any) -> None:
        self.format_usage(ctx, formatter)
        self.format_help_text(ctx, formatter)
        panels: dict[str, list[tuple[str, str]]] = {}
        for param in self.get_params(ctx):
            record = param.get_help_record(ctx)
            if record is None:
                continue
            default = "Arguments" if param.param_type_name == "argument" else "Options"
            panel = getattr(param, "rich_help_panel", None) or default
            panels.setdefault(panel, []).append(record)
        for panel, rows in sorted(panels.items(), key=lambda p: p[0] in ("Options", RUN)):
            with formatter.section(panel):
                formatter.write_dl(rows, col_max=28)
        self.format_epilog(ctx, formatter)


def _secondary_rank() -> bool:
    """A torchrun process other than rank 0: it leaves reporting to rank 0."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1")) > 1 and int(os.environ.get("RANK", "0")) > 0
    except ValueError:
        return False


app = typer.Typer(
    cls=JadeGroup,
    name="jade",
    help="Train and analyse JADE models: a few labeled primary images, helped by a large "
    "labeled auxiliary dataset of the same classes in another style.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,  # plain help: compact at 80 columns (JadeCommand)
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


# --------------------------------------------------------------------------- options from configs


def _cli_type(f: Field[Any]) -> Any:
    """The type Typer parses an option of config field `f` as (None = not given)."""
    kind = str(f.type)
    if f.metadata["argument"]:
        return list[Path] if kind.startswith("list") else Path  # PATH... takes one or more
    if f.metadata.get("switch"):
        return bool  # --resume: on, or not given
    if kind.startswith("bool"):
        return bool | None
    if kind.startswith("Path"):
        return Path | None
    if f.metadata.get("repeat"):
        return list[str] | None  # --log a --log b: the config joins them with commas
    if kind.startswith("int | str") or f.metadata["parse"] is not None:
        return str | None  # "all" or a count; a value with its own parser (85%)
    if kind.startswith("int"):
        return int | None
    if kind.startswith("float"):
        return float | None
    return str | None


def _is_run(f: Field[Any]) -> bool:
    return bool(f.metadata["group"] == RUN)


def _option_parameters(*classes: Any) -> list[inspect.Parameter]:
    """One keyword parameter per option field of the config classes, for Typer."""
    params = []
    every = [f for cls in classes for f in option_fields(cls)]
    # the argument first, then the command's own options, then the shared "Run" panel
    order = sorted(every, key=lambda f: (not f.metadata["argument"], _is_run(f)))
    for f in order:
        meta = f.metadata
        if meta["argument"]:
            info: Any = typer.Argument(
                metavar=meta["metavar"], help=meta["help"], show_default=False
            )
        else:
            names = ["--" + f.name.replace("_", "-")] if meta.get("switch") else []
            info = typer.Option(
                *names,
                help=help_for(f),
                rich_help_panel=meta["group"],
                metavar=metavar(f),
                show_default=False,
            )
        default = inspect.Parameter.empty if meta["argument"] else None
        default = False if meta.get("switch") else default
        annotation = Annotated[_cli_type(f), info]
        params.append(
            inspect.Parameter(
                f.name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation
            )
        )
    return params


def config_command(*classes: Any, **command: Any) -> Callable[[Callable[..., None]], Any]:
    """Register a command whose options are the option fields of the config `classes`; their
    values reach the function's `**values` by field name, None for an option not given (False
    for a switch)."""

    def register(func: Callable[..., None]) -> Any:
        hints = get_type_hints(func, include_extras=True)
        own = [
            p.replace(annotation=hints.get(p.name, p.annotation))
            for p in inspect.signature(func).parameters.values()
            if p.kind is not inspect.Parameter.VAR_KEYWORD
        ]
        lead = [p for p in own if p.kind is not inspect.Parameter.KEYWORD_ONLY]  # ctx
        tail = [p for p in own if p.kind is inspect.Parameter.KEYWORD_ONLY]
        params = [*lead, *_option_parameters(*classes), *tail]
        func.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
        return app.command(cls=JadeCommand, **command)(func)

    return register


def _given(values: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v is not None}


def _argv(ctx: typer.Context) -> list[str]:
    return list(ctx.meta.get("jade.argv", []))


# --------------------------------------------------------------------------- jade train


def _default_out(cfg: TrainConfig) -> Path:
    def slug(text: str) -> str:
        text = Path(text[len("folder:") :]).name if text.startswith("folder:") else text
        return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-") or "data"

    parts = [cfg.model, slug(cfg.primary)]
    if cfg.auxiliary and cfg.uses_auxiliary:
        parts.append(slug(cfg.auxiliary))
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{'-'.join(parts)}-{stamp}"


@config_command(TrainConfig, TrainSession, no_args_is_help=True)
def train(ctx: typer.Context, **values: Any) -> None:
    """Train a single classifier, a paired classifier or a JADE model; writes a run folder."""
    from jadecli import engine
    from jadecli.config import config_yaml, requested_changes, resolve_train_config
    from jadecli.progress import make_reporter

    names = {f.name for f in option_fields(TrainSession)}
    session = TrainSession(**{k: v for k, v in values.items() if k in names and v is not None})
    flags = {k: v for k, v in values.items() if k not in names}
    if session.print_config:
        typer.echo(config_yaml(flags, session.config, session.preset), nl=False)
        return
    reporter = make_reporter(session.progress)
    if session.resume:
        assert session.out is not None
        options = engine.RunOptions(session.out, session.overwrite, _argv(ctx))
        result = engine.resume(options, requested_changes(flags, session.config), reporter)
    else:
        cfg = resolve_train_config(flags, session.config, session.preset)
        out = session.out or _default_out(cfg)
        options = engine.RunOptions(out, session.overwrite, _argv(ctx))
        result = engine.train(cfg, options, reporter)
    if result.rank != 0:  # under torchrun rank 0 reports
        return
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
    acc_v = result.final.get("primary_val_accuracy")
    if result.final.get("selection") == "best-val":
        typer.echo(
            f"selected epoch {result.final.get('selected_epoch')} of {result.epochs_completed} "
            f"(best validation accuracy, {100 * (acc_v or 0):.2f}%): checkpoints/best.pt"
        )
    elif acc_v is not None:
        typer.echo(f"primary   validation accuracy: {100 * acc_v:.2f}%")
    if acc_p is not None:
        typer.echo(f"primary   test accuracy ({result.primary}): {100 * acc_p:.2f}%")
    if acc_a is not None:
        typer.echo(f"auxiliary test accuracy ({result.auxiliary}): {100 * acc_a:.2f}%")
    from jadecli.generative import SAMPLE  # torch is loaded by now
    from jadecli.metrics import DECODER_COLUMNS

    kept = [result.final.get(k) for k in DECODER_COLUMNS]
    if None not in kept:  # JADE, tested: do its decoders keep what they are given?
        typer.echo(
            f"decoders ({SAMPLE} test images each): class kept {100 * kept[0]:.0f}% / "
            f"{100 * kept[1]:.0f}% (primary / auxiliary); swaps keep content {100 * kept[2]:.0f}% "
            f"(auxiliary content, primary style) / {100 * kept[3]:.0f}% (the reverse)"
        )


# --------------------------------------------------------------------------- analysis


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


@config_command(EvaluateConfig, no_args_is_help=True)
def evaluate(ctx: typer.Context, **values: Any) -> None:
    """Accuracy, per-class accuracy, confusion matrices, NLL and (JADE) the test ELBO of a run."""
    from jadecli.analysis.evaluate import evaluate as run_eval
    from jadecli.cli_output import print_evaluation
    from jadecli.errors import GateFailed
    from jadecli.progress import PlainReporter

    cfg = EvaluateConfig(**_given(values), command=_argv(ctx))
    result = run_eval(cfg, PlainReporter())
    if not _emit(result.report, cfg.format):
        print_evaluation(result.report)
    if result.passed is False:
        acc = result.report["primary"]["accuracy"]
        raise GateFailed(
            f"primary accuracy {100 * acc:.2f}% is below --min-accuracy "
            f"{100 * (cfg.min_accuracy or 0):.2f}%"
        )


@config_command(LatentsConfig, name="inspect-latents", no_args_is_help=True)
def inspect_latents(ctx: typer.Context, **values: Any) -> None:
    """Variance of each latent dimension within a class vs over all classes (the paper's
    Figure 2, measured), the disentanglement ratio, and held-out probes.

    v[class, dim] = Var(posterior mean of dim over images of that class) / Var(over all images of
    the split). Disentanglement ratio = mean v of active style dims / mean v of active content
    dims (higher = more disentangled; active = variance of the posterior mean >= 0.01)."""
    from jadecli.analysis.latents import inspect_latents as run_latents
    from jadecli.cli_output import print_latents
    from jadecli.progress import PlainReporter

    cfg = LatentsConfig(**_given(values), command=_argv(ctx))
    result = run_latents(cfg, PlainReporter())
    if not _emit(result.report, cfg.format):
        print_latents(result.report)


@config_command(ReconstructConfig, no_args_is_help=True)
def reconstruct(ctx: typer.Context, **values: Any) -> None:
    """Image grids from a JADE run: reconstructions, style/content swaps within and across
    datasets, and (--traverse) one latent dimension varied at a time."""
    from jadecli.analysis.reconstruct import reconstruct as run_recon
    from jadecli.cli_output import print_reconstruct
    from jadecli.progress import PlainReporter

    cfg = ReconstructConfig(**_given(values), command=_argv(ctx))
    result = run_recon(cfg, PlainReporter())
    if not _emit(result.report, cfg.format):
        print_reconstruct(result.report)


@config_command(SummarizeConfig, no_args_is_help=True)
def summarize(**values: Any) -> None:
    """One table of many runs: the options that differ, final metrics, mean ± std over seeds.

    Runs whose options differ only in --seed share one row: mean ± sample standard deviation
    over them, and their number n. Runs that did not complete (failed, interrupted, running)
    get rows of their own with their status and are left out of every mean."""
    from jadecli.progress import PlainReporter
    from jadecli.summarize import summarize as run_summary

    cfg = SummarizeConfig(**_given(values))
    result = run_summary(cfg, PlainReporter())
    if cfg.out is None:
        typer.echo(result.text, nl=False)
    else:
        rows, runs = len(result.summary.rows), len(result.records)
        typer.echo(f"{rows} row(s) of {runs} run(s): {cfg.out}")


@config_command(PredictConfig, no_args_is_help=True)
def predict(**values: Any) -> None:
    """Classify image files, folders and globs with a trained run.

    Per image: the predicted class, its probability and the top K classes, as CSV (or JSON) on
    stdout or in --out FILE. Images are preprocessed exactly as the run's training images were
    (size, padding, channels)."""
    import os

    from jadecli.analysis.predict import predict as run_predict
    from jadecli.errors import DataError
    from jadecli.progress import PlainReporter

    cfg = PredictConfig(**_given(values))
    try:
        result = run_predict(cfg, PlainReporter(), sys.stdout)
    except BrokenPipeError:  # `jade predict ... | head`: the reader has all it wanted
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # no second error when Python flushes stdout
        return
    if result.failed and not cfg.skip_bad:
        raise DataError(
            f"{len(result.failed)} of {result.images + len(result.failed)} files could not be "
            "read as images (named above); the others were predicted (--skip-bad: exit 0)"
        )


@config_command(ExportConfig, name="export", no_args_is_help=True)
def export_classifier(ctx: typer.Context, **values: Any) -> None:
    """Save a run's classifier as one TorchScript or ONNX file, checked against PyTorch.

    The file takes float images in [0, 1] and returns logits; it is checked on test images
    before it is written, with its preprocessing and class names in FILE.json beside it."""
    from jadecli.analysis.export import export as run_export
    from jadecli.progress import PlainReporter

    cfg = ExportConfig(**_given(values), command=_argv(ctx))
    result = run_export(cfg, PlainReporter())
    src, check = result.report["source"], result.report["verification"]
    typer.echo(
        f"exported the {cfg.dataset} classifier of {cfg.run} ({src['model']}, epoch "
        f"{src['epoch']}) as {cfg.format}: {result.out}"
    )
    typer.echo(
        f"checked on {check['images']} test images with {check['runtime']}: max |logit "
        f"difference| {check['max_abs_diff']:.2g} (tolerance {check['tolerance']:.2g}), argmax "
        f"agrees on {check['images'] - check['argmax_disagreements']}/{check['images']}, "
        f"accuracy {100 * check['accuracy']:.2f}%"
    )
    typer.echo(f"preprocessing, classes and provenance: {result.metadata}")


def main() -> None:
    """Console-script entry point (`jade`)."""
    command = typer.main.get_command(app)
    command.main(prog_name="jade")
