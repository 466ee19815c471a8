"""The options of every command that reads a trained run, and of `jade summarize`.

They share their declarations by inheritance: every such command names a run (`RunOptions`:
RUN, --checkpoint, --batch-size); those that compute on a device add `ComputeOptions`; those
that reload the run's datasets add `DataDirOption`; `evaluate`, `inspect-latents` and
`reconstruct` write their report as a table, JSON or YAML (`ReportOptions`). Torch-free, so
`jade --help` stays fast.
"""

from __future__ import annotations

import difflib
from dataclasses import KW_ONLY, MISSING, dataclass
from pathlib import Path

from jadecli.config.options import (
    FRACTION,
    POSITIVE,
    RUN,
    ConfigError,
    Range,
    check_fields,
    device_problem,
    field_names,
    flag,
    internal,
    opt,
)
from jadecli.config.train import PRECISIONS, TrainConfig

ANALYSIS_DATASETS = ("primary", "auxiliary", "both")
MAX_RECONSTRUCT_N = 32
SPLITS = ("test", "val", "train-labeled", "train-unlabeled", "train")
SPLIT_HELP = (
    "Images to use: test (the test split), val (the primary images --val held out), "
    "train-labeled (the labeled primary images the run trained on, and the auxiliary training "
    "images it used), train-unlabeled (the training images it never saw labels of), or train "
    "(whole training splits)."
)
REPORT_FORMATS = ("table", "json", "yaml")


def parse_fraction(text: str) -> float:
    """`0.85` or `85%` -> 0.85 (the `--min-accuracy` gate)."""
    value = text.strip()
    try:
        number = float(value[:-1]) / 100 if value.endswith("%") else float(value)
    except ValueError:
        raise ConfigError(
            "min_accuracy", f"must be a fraction (0.85) or a percentage (85%) (got {text!r})"
        ) from None
    if not value.endswith("%") and number > 1:
        raise ConfigError(
            "min_accuracy", f"{text} is not a fraction in [0, 1]; for a percentage write {text}%"
        )
    return number


def _not_blank(value: str) -> str | None:
    return None if value.strip() else "needs a value: all, content, style or e.g. content_3"


@dataclass
class RunOptions:
    """The run a command reads, which of its checkpoints, and how many images per pass (RUN
    is the one positional field of every such config; the rest are keywords)."""

    run: Path = opt(MISSING, "A run folder written by 'jade train'.", metavar="RUN", argument=True)
    _: KW_ONLY
    checkpoint: Path | None = opt(
        None,
        "Checkpoint file to use instead of the run's selected one (checkpoints/last.pt, or "
        "best.pt under --select best-val).",
        group=RUN,
        metavar="PATH",
    )
    batch_size: int = opt(
        100,
        "Images per forward pass (speed and memory only; results do not change beyond float "
        "rounding).",
        group=RUN,
        range=POSITIVE,
    )
    command: list[str] = internal(list)  # the command line, for the manifest

    def __post_init__(self) -> None:
        check_fields(self)


@dataclass(kw_only=True)
class ComputeOptions:
    """Where and in which precision a command computes."""

    device: str = opt(
        "auto", "auto, cpu, cuda, cuda:N or mps.", group=RUN, metavar="DEVICE", check=device_problem
    )
    precision: str = opt(
        "auto",
        "fp32, bf16, or auto: the precision the run was trained in (so evaluate repeats the "
        "accuracy training recorded; fp32 where this device cannot compute bf16).",
        group=RUN,
        metavar="auto|fp32|bf16",
        choices=PRECISIONS,
    )


@dataclass(kw_only=True)
class DataDirOption:
    """Where the run's datasets are, for commands that reload them."""

    data_dir: str | None = opt(
        None,
        "Where the run's datasets are now, if they moved (default: the run's own --data-dir; "
        "for folder: datasets, DIR/<folder name> is tried first).",
        group=RUN,
        metavar="DIR",
    )


@dataclass(kw_only=True)
class ReportOptions:
    format: str = opt(
        "table",
        "table: a readable summary; json or yaml: the full result on stdout (messages stay on "
        "stderr), e.g. for jq in CI scripts.",
        metavar="table|json|yaml",
        choices=REPORT_FORMATS,
    )


@dataclass(kw_only=True)
class RunSource(RunOptions, ComputeOptions, DataDirOption):
    """Which run to analyse, where its data are, where to compute and write (evaluate,
    inspect-latents, reconstruct)."""

    out: Path | None = opt(
        None,
        "Folder for the output files (default: RUN/analysis/<name>/, e.g. evaluate-test/, "
        "latents-test/, reconstruct-test-seed0/; files of the same name there are replaced).",
        group=RUN,
        metavar="DIR",
    )


@dataclass(kw_only=True)
class EvaluateConfig(RunSource, ReportOptions):
    """Options of `jade evaluate`."""

    split: str = opt("test", SPLIT_HELP, metavar="SPLIT", choices=SPLITS)
    test_limit: int | None = opt(
        None,
        "Use only the first N images of the split, for each dataset (the paper scored the "
        "first 10,000 SVHN test images).",
        metavar="N",
        range=POSITIVE,
    )
    min_accuracy: float | None = opt(
        None,
        "Quality gate: exit with code 3 when the primary accuracy is below this; a fraction "
        "(0.85) or a percentage (85%).",
        metavar="X",
        range=FRACTION,
        parse=parse_fraction,
    )
    seed: int = opt(0, "Seed of the latent samples in the test ELBO and of the test pairs.")


@dataclass(kw_only=True)
class LatentsConfig(RunSource, ReportOptions):
    """Options of `jade inspect-latents`."""

    dataset: str = opt(
        "primary",
        "Which dataset's images to encode: primary, auxiliary or both.",
        metavar="primary|auxiliary|both",
        choices=ANALYSIS_DATASETS,
    )
    split: str = opt("test", SPLIT_HELP, metavar="SPLIT", choices=SPLITS)
    test_limit: int | None = opt(
        None, "Use only the first N images of the split.", metavar="N", range=POSITIVE
    )
    seed: int = opt(0, "Seed of the random-groups view and of the probes' half/half split.")
    probe: bool = opt(
        True,
        "Fit held-out linear probes: class (and, for synth-* data, each known style factor) "
        "from content vs style latents.",
    )


@dataclass(kw_only=True)
class ReconstructConfig(RunSource, ReportOptions):
    """Options of `jade reconstruct`."""

    n: int = opt(
        8,
        f"Images per dataset (1-{MAX_RECONSTRUCT_N}), one class after another.",
        range=Range(1, MAX_RECONSTRUCT_N),
    )
    seed: int = opt(0, "Seed that picks the images.")
    split: str = opt("test", SPLIT_HELP, metavar="SPLIT", choices=SPLITS)
    traverse: str | None = opt(
        None,
        "Also vary latent dimensions one at a time: all, content, style, or a list such as "
        "content_3,style_0 (short: c3,s0).",
        metavar="DIMS",
        check=_not_blank,
    )
    traverse_range: float = opt(
        3.0,
        "Traversal offsets span +-this many standard deviations of the dimension.",
        metavar="R",
        range=Range(0, open_lo=True),
    )
    traverse_steps: int = opt(7, "Images per traversed dimension (2-25).", range=Range(2, 25))


EXPORT_FORMATS = ("torchscript", "onnx")
EXPORT_DATASETS = ("primary", "auxiliary")


@dataclass(kw_only=True)
class ExportConfig(RunOptions, DataDirOption):
    """Options of `jade export`: which run's classifier, into which file format."""

    format: str | None = opt(
        None,
        "torchscript (a file for torch.jit.load) or onnx (for onnxruntime and other ONNX "
        "runtimes; needs the packages onnx and onnxruntime: jadecli's 'export' extra). Required.",
        metavar="torchscript|onnx",
        choices=EXPORT_FORMATS,
    )
    out: Path | None = opt(
        None,
        "File to write, e.g. model.pt or model.onnx; its preprocessing, classes, source and check "
        "go to FILE.json beside it. Required.",
        metavar="FILE",
    )
    dataset: str = opt(
        "primary",
        "Whose images the exported classifier takes: primary, or auxiliary (paired and JADE runs: "
        "the auxiliary encoder into the shared classifier).",
        metavar="primary|auxiliary",
        choices=EXPORT_DATASETS,
    )
    overwrite: bool = opt(False, "Replace FILE and FILE.json if they exist (refused otherwise).")
    verify_images: int = opt(
        500,
        "Check the exported file against PyTorch on the first N test images of the dataset; a "
        "difference beyond the tolerance fails the export and writes nothing.",
        metavar="N",
        range=POSITIVE,
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.format is None:
            raise ConfigError("format", "is required: torchscript or onnx, e.g. --format onnx")
        if self.out is None:
            raise ConfigError("out", "is required: the file to write, e.g. --out model.onnx")


SUMMARY_FORMATS = ("markdown", "csv", "json")


def _show_names(value: str) -> list[str]:
    return [n.strip().replace("-", "_") for n in value.split(",") if n.strip()]


def _show_problem(value: str) -> str | None:
    names = _show_names(value)
    if not names:
        return "needs option names, e.g. --show model,n-labeled"
    known = field_names(TrainConfig)
    for name in names:
        if name not in known:
            close = difflib.get_close_matches(name, known, n=1)
            hint = f"; did you mean {flag(close[0])[2:]}?" if close else ""
            return f"has {name.replace('_', '-')!r}, which is no 'jade train' option{hint}"
    return None


@dataclass(kw_only=True)
class SummarizeConfig:
    """Options of `jade summarize`."""

    runs: list[str] = opt(
        MISSING,
        "Run folders written by 'jade train', folders holding run folders (searched at any "
        "depth), or glob patterns of them (quoted: 'runs/sweep/*'; ** searches deeper).",
        metavar="RUNS",
        argument=True,
    )
    format: str = opt(
        "markdown",
        "markdown: a table to read or paste (accuracies in %); csv or json: every row and "
        "number unrounded (accuracies as fractions, as in the manifests), for scripts.",
        metavar="markdown|csv|json",
        choices=SUMMARY_FORMATS,
    )
    out: Path | None = opt(
        None,
        "Write the table to FILE (written whole, then renamed into place) instead of stdout.",
        metavar="FILE",
    )
    by_seed: bool = opt(
        False,
        "One row per run, instead of one per group of runs that differ only in --seed.",
    )
    show: str | None = opt(
        None,
        "Options to show as columns even where every run has the same value, comma-separated "
        "(e.g. model,n-labeled). Columns otherwise: the options whose values differ.",
        metavar="OPTIONS",
        check=_show_problem,
    )

    def __post_init__(self) -> None:
        check_fields(self)
        self.runs = [str(r) for r in self.runs]

    @property
    def show_fields(self) -> list[str]:
        """`--show`'s options as config field names."""
        return _show_names(self.show) if self.show else []


PREDICT_FORMATS = ("csv", "json", "jsonl")
PREDICT_DATASETS = ("primary", "auxiliary")
DEFAULT_TOP_K = 3


@dataclass(kw_only=True)
class PredictConfig(RunOptions, ComputeOptions):
    """Options of `jade predict`: it reads image files, not the run's datasets, and writes one
    file."""

    paths: list[Path] = opt(
        MISSING,
        "Image files, folders (searched recursively for image files) and glob patterns "
        "(e.g. 'scans/*.png' or 'scans/**/*.tif', quoted or not).",
        metavar="PATH",
        argument=True,
    )
    dataset: str = opt(
        "primary",
        "Whose encoder the images go through: primary (the few-label dataset's) or auxiliary "
        "(paired and JADE runs). The images are preprocessed as that dataset was in training.",
        metavar="primary|auxiliary",
        choices=PREDICT_DATASETS,
    )
    top_k: int | None = opt(
        None,
        f"Classes listed per image with their probabilities, most likely first (default: "
        f"{DEFAULT_TOP_K}, or every class if the run has fewer).",
        metavar="K",
        range=POSITIVE,
    )
    format: str = opt(
        "csv",
        "csv: a header, then per image path, predicted, confidence, class_1, prob_1, ...; json: "
        "one document (run, classes, predictions, failed); jsonl: one prediction per line.",
        metavar="csv|json|jsonl",
        choices=PREDICT_FORMATS,
    )
    out: Path | None = opt(
        None,
        "Write the predictions to FILE (written whole, then renamed into place; missing parent "
        "folders are created) instead of stdout.",
        metavar="FILE",
    )
    skip_bad: bool = opt(
        False,
        "Exit 0 even when some files could not be read as images (each is still named on "
        "stderr; without this the exit code is 1, after predicting the others).",
    )
    workers: int | None = opt(
        None,
        "Threads decoding images while the model runs (default: one per CPU core, at most 8); "
        "0 decodes in the main thread, between forward passes.",
        group=RUN,
        metavar="N",
        range=Range(0, 64),
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        self.paths = [Path(p) for p in self.paths]
