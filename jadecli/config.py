"""Typed configuration for every command: one declaration per option.

Each field of a config dataclass is declared once with `opt(...)`: its default, its `--help`
text, its help panel, and the rule its values must follow (a list of choices, a range, or a check
function). Everything else is derived from that declaration:

- the command-line options (`jadecli.cli` builds each command's options from these fields, so a
  field cannot lack a flag, nor a flag a field);
- validation (`check_fields`, the one table of choices and ranges, run by `__post_init__`), with
  messages that name the flag;
- the keys of `--config FILE.yaml` and of the saved config in a run's manifest.

`jade train` merges code defaults < `--preset` < `--config FILE.yaml` < flags
(`resolve_train_config`); a bad value that came from the YAML file names the key and the file.

    python -c "from jadecli.config import TrainConfig as C; print(C(primary='mnist', \
n_labeled=100, auxiliary='synth-hand'))"
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable
from dataclasses import MISSING, Field, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from jadecli.errors import UsageError

MODELS = ("single", "paired", "jade")
PRECISIONS = ("auto", "fp32", "bf16")
LR_SCHEDULES = ("constant", "step", "cosine")
LABELED_SELECTIONS = ("random", "first")
ARCHES = ("shared", "paper", "resnet18")  # the trunks of model.encoders()
BATCH_NORMS = ("shared", "per-dataset")
AUGMENTS = ("none", "primary", "all")
LOSS_SCALES = ("mean", "sum")
SELECTIONS = ("last", "best-val")

# Fields a resumed run may change; every other field is fixed by the run's saved config.
RESUME_OVERRIDABLE = frozenset(
    {"epochs", "device", "precision", "data_dir", "download", "eval_every", "test", "memory_budget"}
    | {"log"}  # experiment logs are views of the run, not part of what it computes
)

# Help panels of `jade train --help`, in the order they appear.
DATA, MODEL, AUG, OBJ = "Data", "Model", "Augmentation", "Objective"
OPT, RUN = "Optimisation", "Run"


class ConfigError(UsageError):
    """A bad configuration value; `field` is the config key it belongs to."""

    def __init__(self, field_name: str, problem: str) -> None:
        self.field = field_name
        self.problem = problem
        super().__init__(f"{flag(field_name)} {problem}")


def flag(field_name: str) -> str:
    """The command-line flag of a config field: `batch_size` -> `--batch-size`."""
    return "--" + field_name.replace("_", "-")


# --------------------------------------------------------------------------- declaring options


@dataclass(frozen=True)
class Range:
    """Allowed numbers: lo <= value <= hi (`open_lo`/`open_hi` make that end strict)."""

    lo: float | None = None
    hi: float | None = None
    open_lo: bool = False
    open_hi: bool = False

    def __contains__(self, value: float) -> bool:
        if not math.isfinite(value):
            return False
        if self.lo is not None and (value <= self.lo if self.open_lo else value < self.lo):
            return False
        return self.hi is None or (value < self.hi if self.open_hi else value <= self.hi)

    def describe(self, integer: bool) -> str:
        lo = f"{self.lo:g}" if self.lo is not None else ""
        if self.hi is None:
            if integer:
                return "a positive integer" if self.lo == 1 else f"{lo} or a positive integer"
            return "a positive number" if self.open_lo else f"a finite number >= {lo}"
        hi = f"{self.hi:g}"
        if not (self.open_lo or self.open_hi):
            return f"between {lo} and {hi}"
        return f"in {'(' if self.open_lo else '['}{lo}, {hi}{')' if self.open_hi else ']'}"


POSITIVE = Range(1)  # counts
IMAGE_SIDE = Range(8, 1024)  # --primary-size/--auxiliary-size: what the models take
NON_NEGATIVE = Range(0)  # loss weights, clipping
FRACTION = Range(0, 1)


def opt(
    default: Any,
    help: str,
    *,
    group: str = "Options",
    metavar: str | None = None,
    choices: tuple[str, ...] | None = None,
    range: Range | None = None,
    check: Callable[[Any], str | None] | None = None,
    parse: Callable[[str], Any] | None = None,
    argument: bool = False,
    repeat: bool = False,
) -> Any:
    """A config field and everything its command-line option needs.

    `choices`, `range` and `check` (value -> problem or None) are the rules `check_fields`
    enforces; `parse` turns the option's text into the value (e.g. `85%` -> 0.85); `argument`
    makes it a positional argument instead of an option; `repeat` lets the option be given
    several times (`--log a --log b`), its values joined with commas for `parse`."""
    meta = {
        "help": help,
        "group": group,
        "metavar": metavar,
        "choices": choices,
        "range": range,
        "check": check,
        "parse": parse,
        "argument": argument,
        "repeat": repeat,
    }
    return field(default=default, metadata=meta)


def internal(default_factory: Callable[[], Any]) -> Any:
    """A field set by code, never by a flag (e.g. the command line that ran)."""
    return field(default_factory=default_factory, metadata={"internal": True})


def option_fields(cls: Any) -> list[Field[Any]]:
    """The fields of a config class that are command-line options, in declaration order."""
    return [f for f in fields(cls) if not f.metadata.get("internal")]


def field_names(cls: Any = None) -> list[str]:
    return [f.name for f in option_fields(cls or TrainConfig)]


def help_for(f: Field[Any]) -> str:
    """A field's `--help` text, with its default."""
    text = str(f.metadata["help"])
    default = f.default if f.default is not MISSING else None
    if default not in (None, "") and not isinstance(default, bool):
        text += f" (default: {default})"
    return text


def check_fields(obj: Any) -> None:
    """Coerce every field of `obj` to its type and enforce its declared rule (None = unset)."""
    for f in option_fields(obj):
        value = _coerce(f, getattr(obj, f.name))
        setattr(obj, f.name, value)
        if value is None:
            continue
        problem = _problem(f, value)
        if problem:
            raise ConfigError(f.name, problem)


def _problem(f: Field[Any], value: Any) -> str | None:
    meta = f.metadata
    if meta["choices"] is not None and value not in meta["choices"]:
        return f"must be one of {', '.join(meta['choices'])} (got {value!r})"
    rng: Range | None = meta["range"]
    if rng is not None and value != "all" and value not in rng:
        integer = str(f.type).startswith("int")
        what = rng.describe(integer) + (" or 'all'" if _is_count_or_all(f) else "")
        return f"must be {what} (got {value})"
    check = meta["check"]
    return check(value) if check is not None else None


def _is_count_or_all(f: Field[Any]) -> bool:
    return str(f.type).startswith("int | str")


def _coerce(f: Field[Any], value: Any) -> Any:
    """Turn a flag or YAML value into the field's type, or raise a ConfigError naming it.

    Values come from YAML as strings ("1e-3" is a string in YAML 1.1) or from flags."""
    name, kind = f.name, str(f.type)
    if value is None:
        if "None" in kind:
            return None
        raise ConfigError(name, "needs a value (got nothing)")
    if f.metadata.get("repeat") and isinstance(value, (list, tuple)):
        value = ",".join(str(v) for v in value)  # a repeated flag, or a list in the YAML file
    if f.metadata.get("parse") is not None and not isinstance(value, bool):
        if isinstance(value, str):
            return f.metadata["parse"](value)
        if isinstance(value, (int, float)):  # a number from YAML or from code
            return f.metadata["parse"](repr(value))
    if _is_count_or_all(f):
        if isinstance(value, str):
            text = value.strip().lower()
            if text == "all":
                return "all"
            if text.lstrip("-").isdigit():
                return int(text)
            raise ConfigError(name, f"must be a positive integer or 'all' (got {value!r})")
        return _as_int(name, value)
    if kind.startswith("int"):
        return _as_int(name, value)
    if kind.startswith("float"):
        if isinstance(value, bool):
            raise ConfigError(name, f"must be a number (got {value!r})")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(name, f"must be a number (got {value!r})") from None
    if kind.startswith("bool"):
        if isinstance(value, bool):
            return value
        raise ConfigError(name, f"must be true or false (got {value!r})")
    if kind.startswith("str"):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        if not isinstance(value, str):
            raise ConfigError(name, f"must be a string (got {value!r})")
    return value


def _as_int(name: str, value: Any) -> int:
    if isinstance(value, bool):
        raise ConfigError(name, f"must be an integer (got {value!r})")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value.strip())
    raise ConfigError(name, f"must be an integer (got {value!r})")


def parse_val(text: str) -> int | float:
    """`--val`: `20` -> 20 images, `0.2` or `20%` -> the fraction 0.2."""
    value = text.strip()
    try:
        if value.endswith("%"):
            return float(value[:-1]) / 100
        number = float(value)
    except ValueError:
        raise ConfigError(
            "val", f"must be a number of images (20) or a fraction (0.2 or 20%) (got {text!r})"
        ) from None
    return int(number) if number.is_integer() else number


LOGGERS = ("tensorboard", "mlflow")  # `--log`: experiment logs (jadecli.logs)


def parse_log(text: str) -> str:
    """`--log`: `tensorboard`, `mlflow`, both (`tensorboard,mlflow`, or the flag twice), or
    `none` -> the same, canonical (no spaces, no repeats, in the order given)."""
    names = [n.strip().lower() for n in text.split(",")]
    if names == ["none"]:
        return "none"
    if not all(n in LOGGERS for n in names):
        raise ConfigError(
            "log",
            f"must be tensorboard, mlflow, both (tensorboard,mlflow) or none (got {text!r})",
        )
    return ",".join(dict.fromkeys(names))


def _val_problem(value: int | float) -> str | None:
    if isinstance(value, int):
        return None if value >= 1 else f"must be at least 1 image, or a fraction (got {value})"
    if 0 < value < 1:
        return None
    return f"must be a whole number of images or a fraction in (0, 1) (got {value})"


def _device_problem(dev: str) -> str | None:
    prefix, _, index = dev.partition(":")
    if dev in ("auto", "cpu", "cuda", "mps") or (prefix == "cuda" and index.isdigit()):
        return None
    return f"must be auto, cpu, cuda, cuda:N or mps (got {dev!r})"


# --------------------------------------------------------------------------- jade train


@dataclass
class TrainConfig:
    """Everything that decides what `jade train` computes (saved in the run's manifest)."""

    # --- data ---
    primary: str = opt(
        "",
        "Primary (few-label) dataset: mnist, fashion-mnist, svhn, usps, mnist-m, synth-street, "
        "synth-hand, or folder:PATH with PATH/train/<class>/* and PATH/test/<class>/*.",
        group=DATA,
    )
    auxiliary: str | None = opt(
        None,
        "Auxiliary (many-label) dataset with the same classes, same names as --primary. "
        "Required for --model paired and jade.",
        group=DATA,
    )
    n_labeled: int | str | None = opt(
        None,
        "Labeled primary training images to use: a multiple of the number of classes, drawn "
        "class-balanced with --seed, or 'all' for the whole primary training split. Required.",
        group=DATA,
        metavar="N|all",
        range=POSITIVE,
    )
    labeled_selection: str = opt(
        "random",
        "How the labeled subset is drawn from each class: 'random' (with --seed) or 'first' "
        "(the first images of each class, as in the paper).",
        group=DATA,
        choices=LABELED_SELECTIONS,
    )
    val: int | float | None = opt(
        None,
        "Hold out this many of the --n-labeled images (class-balanced, drawn with --seed), or "
        "this fraction of them (0.2 or 20%), as a validation split: never trained on, scored "
        "after every epoch, and what --select best-val chooses by. Default: none.",
        group=DATA,
        metavar="N|FRACTION",
        parse=parse_val,
        check=_val_problem,
    )
    select: str = opt(
        "last",
        "Which epoch's weights the run ends with: last, or best-val (the epoch with the best "
        "validation accuracy; needs --val). The final metrics, `jade evaluate` and the other "
        "commands use the selected checkpoint.",
        group=DATA,
        metavar="last|best-val",
        choices=SELECTIONS,
    )
    aux_per_class: int | None = opt(
        None,
        "Use only the first K auxiliary training images of each class (the paper: 4500). "
        "Default: all of them.",
        group=DATA,
        metavar="K",
        range=POSITIVE,
    )
    data_dir: str | None = opt(
        None,
        "Folder holding the datasets (MNIST/raw/..., SVHN/*.mat, ...). Default: $JADE_DATA_DIR, "
        "else ~/.cache/jadecli. Built-in synth-* datasets are cached here too.",
        group=DATA,
        metavar="DIR",
    )
    download: bool = opt(
        False,
        "Try torchvision's download when dataset files are missing (default: off; without it a "
        "missing file is an error that says where to put it).",
        group=DATA,
    )
    primary_size: int | None = opt(
        None,
        "Resize primary images to SIZE x SIZE (8 to 1024). Default: keep their size (image "
        "folders whose training images differ in size are resized to the most common size).",
        group=DATA,
        metavar="SIZE",
        range=IMAGE_SIDE,
    )
    auxiliary_size: int | None = opt(
        None,
        "Resize auxiliary images to SIZE x SIZE (8 to 1024). Default: as for --primary-size.",
        group=DATA,
        metavar="SIZE",
        range=IMAGE_SIDE,
    )
    primary_pad: int = opt(
        0,
        "Add P black pixels on every side of each primary image, after resizing: lets digits "
        "sit where the auxiliary's do (USPS fills its frame, MNIST keeps a 4-pixel margin: "
        "--primary-size 20 --primary-pad 4).",
        group=DATA,
        metavar="P",
        range=Range(0, 64),
    )
    auxiliary_pad: int = opt(
        0,
        "The same for auxiliary images (MNIST into MNIST-M's 32x32 frame: --auxiliary-pad 2).",
        group=DATA,
        metavar="P",
        range=Range(0, 64),
    )
    # --- model ---
    model: str = opt(
        "jade",
        "single: primary CNN + classifier. paired: both datasets' CNN features (one CNN with "
        "--arch shared) into one shared classifier. jade: a VAE per dataset whose content "
        "latents share the classifier.",
        group=MODEL,
        metavar="single|paired|jade",
        choices=MODELS,
    )
    arch: str = opt(
        "shared",
        "Encoders. shared: one CNN (conv 32-64-128 with BatchNorm, plus 16-filter stages for "
        "images over 32 px) for both datasets, so the auxiliary's labels train the convolutions "
        "the primary uses; the primary is resized to the auxiliary's size and a grey dataset "
        "beside a colour one gets 3 channels. resnet18: the same with torchvision's ResNet-18 "
        "as the one trunk (see --init-weights). paper: the paper's two separate CNNs, as in the "
        "authors' 2017 code.",
        group=MODEL,
        metavar="shared|paper|resnet18",
        choices=ARCHES,
    )
    batch_norm: str = opt(
        "shared",
        "BatchNorm in the one trunk of --arch shared/resnet18: shared (one set of running "
        "statistics for both datasets) or per-dataset (each dataset its own statistics and "
        "scale, in training and evaluation; the convolutions stay shared). Measured on digits: "
        "per-dataset +0.6 points on the auxiliary, -0.4 to -0.6 on the primary (within noise).",
        group=MODEL,
        metavar="shared|per-dataset",
        choices=BATCH_NORMS,
    )
    init_weights: str | None = opt(
        None,
        "A torchvision ResNet-18 checkpoint file (a state dict, e.g. resnet18-f37072fd.pth) to "
        "start the --arch resnet18 trunk from; nothing is downloaded. Default: random init.",
        group=MODEL,
        metavar="PATH",
    )
    content_dim: int = opt(
        10,
        "Size of the content latent (jade), which alone feeds the classifier; also the size of "
        "the single/paired bottleneck.",
        group=MODEL,
        range=POSITIVE,
    )
    style_dim: int = opt(
        10,
        "Size of the style latent of each jade VAE (decoder input only).",
        group=MODEL,
        range=POSITIVE,
    )
    hidden_dim: int = opt(
        500, "Width of the shared classifier's three hidden layers.", group=MODEL, range=POSITIVE
    )
    dropout: float = opt(
        0.0,
        "Dropout after each hidden layer of the classifier (the paper: 0.5, which slows "
        "learning a lot in short schedules).",
        group=MODEL,
        range=Range(0, 1, open_hi=True),
    )
    # --- augmentation (training batches only) ---
    augment: str = opt(
        "all",
        "Which training images get random shifts, rotations, zooms (and colour jitter for "
        "colour images): none, primary (the labeled set) or all.",
        group=AUG,
        metavar="none|primary|all",
        choices=AUGMENTS,
    )
    aug_shift: float = opt(
        0.1,
        "Largest random shift, as a fraction of the image side.",
        group=AUG,
        range=Range(0, 0.5),
    )
    aug_rotate: float = opt(
        10.0, "Largest random rotation, in degrees.", group=AUG, range=Range(0, 180)
    )
    aug_scale: float = opt(
        0.1, "Largest random zoom in or out (0.1: 90% to 110%).", group=AUG, range=Range(0, 0.5)
    )
    aug_color: float = opt(
        0.3,
        "Colour jitter strength for 3-channel images (saturation, per-channel gain, contrast; "
        "half the images also get their channels permuted); 0 disables it.",
        group=AUG,
        range=Range(0, 0.5),
    )
    style_mix: float | None = opt(
        None,
        "Fraction of auxiliary training images redrawn in the primary's style: |T - x| with T "
        "a labeled primary image whose tiles are shuffled (its colours and texture, not its "
        "digit), as MNIST-M was made from MNIST. Default: 0.5 when the primary is colour and "
        "the auxiliary grey (grey auxiliary images then get 3 channels), else 0.",
        group=AUG,
        metavar="P",
        range=FRACTION,
    )
    # --- objective (the paper's equation 2) ---
    loss_scale: str = opt(
        "mean",
        "mean: every term of the objective is a mean over its own elements (reconstruction per "
        "pixel value, each KL per latent dimension), so each weight below means the same for "
        "16x16 grey and 128x128 colour images and any latent sizes; sum: nats summed over pixels "
        "and latent dimensions, as in the paper (whose CE weights were 1e4/1e5).",
        group=OBJ,
        metavar="mean|sum",
        choices=LOSS_SCALES,
    )
    recon_weight: float = opt(
        1.0,
        "Weight of each image's reconstruction cross-entropy (per pixel value).",
        group=OBJ,
        range=NON_NEGATIVE,
    )
    kl_weight: float = opt(
        0.003,
        "Weight of the KL terms to the N(0, I) prior (style of both datasets, content of the "
        "auxiliary), each per latent dimension.",
        group=OBJ,
        range=NON_NEGATIVE,
    )
    match_weight: float = opt(
        0.3,
        "Weight of KL(q(z_c | primary) || q(z_c | paired auxiliary)), the content matching, per "
        "content dimension.",
        group=OBJ,
        range=NON_NEGATIVE,
    )
    ce_on_mean: bool = opt(
        True,
        "jade: train the classifier on the content posterior means (what it predicts from) as "
        "well as on samples; each cross-entropy is then the average of the two. Chosen on a dev "
        "split (MNIST-M 10/class, 5 seeds); --no-ce-on-mean: samples only, as in the paper.",
        group=OBJ,
    )
    separation_weight: float = opt(
        0.0,
        "jade: weight of a class-separation term (as in CCSA and d-SNE): content means of "
        "different-class auxiliary/primary pairs in a batch are pushed at least sqrt(2 x "
        "--content-dim) apart (squared hinge, per content dimension). 0: off, as in the paper.",
        group=OBJ,
        range=NON_NEGATIVE,
    )
    aux_ce_weight: float = opt(
        1.0,
        "Weight of the auxiliary classification cross-entropy.",
        group=OBJ,
        range=NON_NEGATIVE,
    )
    primary_ce_weight: float = opt(
        1.0,
        "Weight of the primary classification cross-entropy.",
        group=OBJ,
        range=NON_NEGATIVE,
    )
    # --- optimisation ---
    epochs: int = opt(
        10,
        "Training epochs. A resumed run may raise it: the added epochs train at the learning "
        "rate the schedule ended with.",
        group=OPT,
        range=POSITIVE,
    )
    epoch_size: int | str = opt(
        10000,
        "Training examples per epoch: pairs for paired/jade, labeled images for single (drawn by "
        "cycling through shuffled data), or 'all' for one pass over the auxiliary set (single: "
        "over the labeled set), as in the paper.",
        group=OPT,
        metavar="N|all",
        range=POSITIVE,
    )
    batch_size: int = opt(
        100,
        "Pairs (or labeled images for single) per optimisation step.",
        group=OPT,
        range=POSITIVE,
    )
    lr: float = opt(1e-3, "Peak learning rate of Adam.", group=OPT, range=Range(0, open_lo=True))
    lr_schedule: str = opt(
        "cosine",
        "constant; step (x0.3 after 1/3 and x0.1 after 2/3 of training, as in the paper); or "
        "cosine (decay to 1/100 of --lr). Planned over the --epochs the run starts with.",
        group=OPT,
        metavar="constant|step|cosine",
        choices=LR_SCHEDULES,
    )
    adam_beta1: float = opt(
        0.9, "Adam's beta_1 (the paper used 0.1).", group=OPT, range=Range(0, 1, open_hi=True)
    )
    ema: float = opt(
        0.0,
        "Evaluate, select and save an exponential moving average of the weights with this "
        "decay per step (e.g. 0.99: about the last 100 steps; warmed up as min(decay, (1 + t) / "
        "(10 + t)) at step t); 0: off, the weights as trained.",
        group=OPT,
        metavar="DECAY",
        range=Range(0, 1, open_hi=True),
    )
    grad_clip: float = opt(
        100.0,
        "Clip the gradient's global norm to this value (0 disables clipping).",
        group=OPT,
        range=NON_NEGATIVE,
    )
    seed: int = opt(
        0, "Seed for the labeled subset, pairing, initialisation and dropout.", group=OPT
    )
    device: str = opt(
        "auto",
        "auto (cuda, then mps, then cpu), cpu, cuda, cuda:N or mps.",
        group=RUN,
        check=_device_problem,
    )
    precision: str = opt(
        "auto",
        "Arithmetic of the forward pass: fp32; bf16 (autocast; weights, optimiser and losses "
        "stay fp32; 2-3x faster on CPUs with AMX and on CUDA); or auto (bf16 where the device "
        "computes it natively, else fp32).",
        group=RUN,
        metavar="auto|fp32|bf16",
        choices=PRECISIONS,
    )
    memory_budget: float | None = opt(
        None,
        "GB of memory the datasets may take, held as 8-bit images (a 128x128 colour image is "
        "48 KiB). Data that would need more stops the run before loading, naming the size. "
        "Default: 80% of the memory available when the run starts.",
        group=RUN,
        metavar="GB",
        range=Range(0, open_lo=True),
    )
    eval_every: int = opt(
        1,
        "Evaluate test accuracy every N epochs (0: only after the last epoch). Never used to "
        "choose a model.",
        group=RUN,
        range=Range(0),
    )
    test: bool = opt(
        True,
        "Evaluate the test split (every --eval-every epochs and after the last). --no-test "
        "never touches it: for recipe searches, which must choose without test data.",
        group=RUN,
    )
    log: str = opt(
        "none",
        "Experiment logs, besides the run folder: tensorboard (RUN/logs/tensorboard), mlflow "
        "(RUN/logs/mlruns, or $MLFLOW_TRACKING_URI when set), both (tensorboard,mlflow or the "
        "flag twice), or none. Per epoch: every metrics.csv number; jade runs also get an image "
        "of test reconstructions at each test evaluation. Needs pip install "
        "'jadecli[tensorboard]' / 'jadecli[mlflow]'. A resumed run continues the same logs.",
        group=RUN,
        metavar="tensorboard|mlflow|none",
        parse=parse_log,
        repeat=True,
    )

    def __post_init__(self) -> None:
        if not self.primary:
            raise ConfigError("primary", "is required: the few-label dataset, e.g. --primary svhn")
        check_fields(self)
        if self.n_labeled is None:
            raise ConfigError("n_labeled", "is required: e.g. --n-labeled 1000, or --n-labeled all")
        if self.uses_auxiliary and not self.auxiliary:
            raise ConfigError(
                "auxiliary", f"is required for --model {self.model}, e.g. --auxiliary mnist"
            )
        if self.init_weights is not None and self.arch != "resnet18":
            raise ConfigError(
                "init_weights",
                f"loads a ResNet-18 trunk, so it needs --arch resnet18 (got {self.arch})",
            )
        if self.select == "best-val" and self.val is None:
            raise ConfigError(
                "select", "best-val needs a validation split: add --val N (e.g. --val 20%)"
            )
        if self.val is not None and self.n_labeled != "all" and isinstance(self.val, int):
            assert isinstance(self.n_labeled, int)
            if self.val >= self.n_labeled:
                raise ConfigError(
                    "val",
                    f"{self.val} leaves nothing to train on: it must be smaller than "
                    f"--n-labeled {self.n_labeled}",
                )
        if self.primary_ce_weight == 0 and self.aux_ce_weight == 0:
            raise ConfigError(
                "primary_ce_weight",
                "and --aux-ce-weight are both 0: the classifier would not train",
            )

    @property
    def uses_auxiliary(self) -> bool:
        """Whether the model trains on the auxiliary dataset (paired and JADE do)."""
        return self.model != "single"

    def to_dict(self) -> dict[str, Any]:
        """Plain data (str/int/float/bool/None) for the manifest and checkpoints."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """A saved config (manifest, checkpoint): every key must be a field of this version."""
        unknown = set(data) - set(field_names(cls))
        if unknown:
            raise UsageError(f"unknown config keys: {', '.join(sorted(unknown))}")
        return cls(**data)


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
    known = field_names()
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
    """The config values of `--preset NAME` for `--model MODEL`."""
    if name not in PRESETS:
        raise UsageError(f"--preset must be one of {', '.join(PRESETS)} (got {name!r})")
    table = PRESETS[name]
    if model not in table:
        raise ConfigError("model", f"must be one of {', '.join(MODELS)} (got {model!r})")
    return dict(table[model])


def resolve_train_config(
    flags: dict[str, Any], config_file: Path | None = None, preset: str | None = None
) -> TrainConfig:
    """Merge code defaults < preset < YAML file < flags into a TrainConfig.

    `flags` holds the options by field name; None means "not given"."""
    from_file = load_yaml_config(config_file) if config_file is not None else {}
    given = {k: v for k, v in flags.items() if v is not None}
    merged: dict[str, Any] = {}
    if preset is not None:
        model = given.get("model", from_file.get("model", "jade"))
        merged.update(preset_values(preset, str(model)))
    merged.update(from_file)
    merged.update(given)
    try:
        return TrainConfig(**merged)
    except ConfigError as err:
        if err.field not in given and err.field in from_file:
            raise UsageError(f"{err.field} in {config_file}: {err.problem}") from None
        raise


def requested_changes(flags: dict[str, Any], config_file: Path | None = None) -> dict[str, Any]:
    """What a `--resume` command line asks for: the YAML file's values < the given flags."""
    requested = load_yaml_config(config_file) if config_file is not None else {}
    requested.update({k: v for k, v in flags.items() if v is not None})
    return requested


# --------------------------------------------------------------------------- analysis commands
# `jade evaluate`, `inspect-latents` and `reconstruct` read a run folder instead of training
# flags; their options live here too (torch-free, so `jade --help` stays fast).

SRC = RUN  # help panel of the options every analysis command shares
ANALYSIS_DATASETS = ("primary", "auxiliary", "both")
MAX_RECONSTRUCT_N = 32
SPLITS = ("test", "val", "train-labeled", "train-unlabeled", "train")
SPLIT_HELP = (
    "Images to use: test (the test split), val (the primary images --val held out), "
    "train-labeled (the labeled primary images the run trained on, and the auxiliary training "
    "images it used), train-unlabeled (the training images it never saw labels of), or train "
    "(whole training splits)."
)


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
class RunSource:
    """Which run and checkpoint to analyse, where the data are, and where to compute."""

    run: Path = opt(MISSING, "A run folder written by 'jade train'.", metavar="RUN", argument=True)
    checkpoint: Path | None = opt(
        None,
        "Checkpoint file to analyse instead of RUN/checkpoints/last.pt.",
        group=SRC,
        metavar="PATH",
    )
    data_dir: str | None = opt(
        None,
        "Where the run's datasets are now, if they moved (default: the run's own --data-dir; "
        "for folder: datasets, DIR/<folder name> is tried first).",
        group=SRC,
        metavar="DIR",
    )
    device: str = opt("auto", "auto, cpu, cuda, cuda:N or mps.", group=SRC, check=_device_problem)
    precision: str = opt(
        "auto",
        "fp32, bf16, or auto: the precision the run was trained in (so evaluate repeats the "
        "accuracy training recorded; fp32 where this device cannot compute bf16).",
        group=SRC,
        metavar="auto|fp32|bf16",
        choices=PRECISIONS,
    )
    batch_size: int = opt(
        100,
        "Images per forward pass (speed and memory only; results do not change beyond float "
        "rounding).",
        group=SRC,
        range=POSITIVE,
    )
    out: Path | None = opt(
        None,
        "Folder for the output files (default: RUN/analysis/<command>-<split>/; files of the "
        "same name there are replaced).",
        group=SRC,
        metavar="DIR",
    )
    command: list[str] = internal(list)

    def __post_init__(self) -> None:
        check_fields(self)


@dataclass
class EvaluateConfig(RunSource):
    """Options of `jade evaluate` (the run-source options are shared by every command)."""

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


@dataclass
class LatentsConfig(RunSource):
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


@dataclass
class ReconstructConfig(RunSource):
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


@dataclass
class ExportConfig:
    """Options of `jade export`: which run's classifier, into which file format."""

    run: Path = opt(MISSING, "A run folder written by 'jade train'.", metavar="RUN", argument=True)
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
    checkpoint: Path | None = opt(
        None,
        "Checkpoint file to export instead of the run's selected one (checkpoints/last.pt, or "
        "best.pt under --select best-val).",
        group=SRC,
        metavar="PATH",
    )
    data_dir: str | None = opt(
        None,
        "Where the run's datasets are now, if they moved (the check reads test images).",
        group=SRC,
        metavar="DIR",
    )
    batch_size: int = opt(100, "Images per forward pass of the check.", group=SRC, range=POSITIVE)
    command: list[str] = internal(list)

    def __post_init__(self) -> None:
        check_fields(self)
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


@dataclass
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


@dataclass
class PredictConfig:
    """Options of `jade predict`: the run-source options minus --data-dir and --out DIR (it
    reads image files, not the run's datasets, and writes one file)."""

    run: Path = opt(MISSING, "A run folder written by 'jade train'.", metavar="RUN", argument=True)
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
        "Write the predictions to FILE (written whole, then renamed into place) instead of stdout.",
        metavar="FILE",
    )
    skip_bad: bool = opt(
        False,
        "Exit 0 even when some files could not be read as images (each is still named on "
        "stderr; without this the exit code is 1, after predicting the others).",
    )
    checkpoint: Path | None = opt(
        None,
        "Checkpoint file to use instead of the run's selected one (checkpoints/last.pt, or "
        "best.pt under --select best-val).",
        group=SRC,
        metavar="PATH",
    )
    device: str = opt("auto", "auto, cpu, cuda, cuda:N or mps.", group=SRC, check=_device_problem)
    precision: str = opt(
        "auto",
        "fp32, bf16, or auto: the precision the run was trained in (as jade evaluate).",
        group=SRC,
        metavar="auto|fp32|bf16",
        choices=PRECISIONS,
    )
    batch_size: int = opt(
        100,
        "Images per forward pass (speed and memory only; results do not change beyond float "
        "rounding).",
        group=SRC,
        range=POSITIVE,
    )
    workers: int | None = opt(
        None,
        "Threads decoding images while the model runs (default: one per CPU core, at most 8); "
        "0 decodes in the main thread, between forward passes.",
        group=SRC,
        metavar="N",
        range=Range(0, 64),
    )

    def __post_init__(self) -> None:
        check_fields(self)
        self.paths = [Path(p) for p in self.paths]
