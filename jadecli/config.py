"""Typed configuration for `jade train`: code defaults < `--config FILE.yaml` < flags.

Each field's `help` metadata is the `--help` text of its flag, so the documentation and the code
cannot drift apart. `TrainConfig.__post_init__` rejects bad values with a message that names the
flag; `resolve_train_config` merges the three layers and, when a bad value came from the YAML
file, names the key and the file instead.

    python -c "from jadecli.config import TrainConfig as C; print(C(primary='mnist', \
n_labeled=100, auxiliary='synth-hand'))"
"""

from __future__ import annotations

import difflib
import math
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from jadecli.errors import UsageError

MODELS = ("single", "paired", "jade")
PRECISIONS = ("auto", "fp32", "bf16")
LR_SCHEDULES = ("constant", "step", "cosine")
LABELED_SELECTIONS = ("random", "first")
ARCHES = ("paper", "shared")  # the encoders of model.encoders()
AUGMENTS = ("none", "primary", "all")
LOSS_SCALES = ("per-pixel", "sum")

# Fields a resumed run may change; every other field is fixed by the run's saved config.
RESUME_OVERRIDABLE = frozenset(
    {"epochs", "device", "precision", "data_dir", "download", "eval_every"}
)


class ConfigError(UsageError):
    """A bad configuration value; `field` is the config key it belongs to."""

    def __init__(self, field_name: str, problem: str) -> None:
        self.field = field_name
        self.problem = problem
        super().__init__(f"{flag(field_name)} {problem}")


def flag(field_name: str) -> str:
    """The command-line flag of a config field: `batch_size` -> `--batch-size`."""
    return "--" + field_name.replace("_", "-")


def opt(default: Any, help: str) -> Any:
    """A dataclass field whose `help` metadata is its flag's --help text."""
    return field(default=default, metadata={"help": help})


@dataclass
class TrainConfig:
    """Everything that decides what `jade train` computes (saved in the run's manifest)."""

    # --- data ---
    primary: str = opt(
        "",
        "Primary (few-label) dataset: mnist, fashion-mnist, svhn, usps, mnist-m, synth-street, "
        "synth-hand, or folder:PATH with PATH/train/<class>/* and PATH/test/<class>/*.",
    )
    auxiliary: str | None = opt(
        None,
        "Auxiliary (many-label) dataset with the same classes, same names as --primary. "
        "Required for --model paired and jade.",
    )
    n_labeled: int | str | None = opt(
        None,
        "Labeled primary training images to use: a multiple of the number of classes, drawn "
        "class-balanced with --seed, or 'all' for the whole primary training split. Required.",
    )
    labeled_selection: str = opt(
        "random",
        "How the labeled subset is drawn from each class: 'random' (with --seed) or 'first' "
        "(the first images of each class, as in the paper).",
    )
    aux_per_class: int | None = opt(
        None,
        "Use only the first K auxiliary training images of each class (the paper: 4500). "
        "Default: all of them.",
    )
    data_dir: str | None = opt(
        None,
        "Folder holding the datasets (MNIST/raw/..., SVHN/*.mat, ...). Default: $JADE_DATA_DIR, "
        "else ~/.cache/jadecli. Built-in synth-* datasets are cached here too.",
    )
    download: bool = opt(
        False,
        "Try torchvision's download when dataset files are missing (default: off; without it a "
        "missing file is an error that says where to put it).",
    )
    primary_size: int | None = opt(
        None,
        "Resize primary images to SIZE x SIZE. Default: keep their size (image folders whose "
        "images differ in size are resized to the most common size).",
    )
    auxiliary_size: int | None = opt(
        None, "Resize auxiliary images to SIZE x SIZE. Default: as for --primary-size."
    )
    primary_pad: int = opt(
        0,
        "Add P black pixels on every side of each primary image, after resizing: lets digits "
        "sit where the auxiliary's do (USPS fills its frame, MNIST keeps a 4-pixel margin: "
        "--primary-size 20 --primary-pad 4).",
    )
    auxiliary_pad: int = opt(
        0,
        "The same for auxiliary images (MNIST into MNIST-M's 32x32 frame: --auxiliary-pad 2).",
    )
    # --- model ---
    arch: str = opt(
        "shared",
        "Encoders. shared: one CNN (conv 32-64-128 with BatchNorm) for both datasets, so the "
        "auxiliary's labels train the convolutions the primary uses; the primary is resized "
        "to the auxiliary's size and a grey dataset beside a colour one gets 3 channels. "
        "paper: the paper's two separate CNNs (reference.md).",
    )
    model: str = opt(
        "jade",
        "single: primary CNN + classifier. paired: both datasets' CNN features (one CNN with "
        "--arch shared) into one shared classifier. jade: a VAE per dataset whose content "
        "latents share the classifier.",
    )
    content_dim: int = opt(
        10,
        "Size of the content latent (jade), which alone feeds the classifier; also the size of "
        "the single/paired bottleneck.",
    )
    style_dim: int = opt(10, "Size of the style latent of each jade VAE (decoder input only).")
    hidden_dim: int = opt(500, "Width of the shared classifier's three hidden layers.")
    dropout: float = opt(
        0.0,
        "Dropout after each hidden layer of the classifier (the paper: 0.5, which slows "
        "learning a lot in short schedules).",
    )
    # --- augmentation (training batches only) ---
    augment: str = opt(
        "all",
        "Which training images get random shifts, rotations, zooms (and colour jitter for "
        "colour images): none, primary (the labeled set) or all.",
    )
    aug_shift: float = opt(0.1, "Largest random shift, as a fraction of the image side.")
    aug_rotate: float = opt(10.0, "Largest random rotation, in degrees.")
    aug_scale: float = opt(0.1, "Largest random zoom in or out (0.1: 90% to 110%).")
    aug_color: float = opt(
        0.3,
        "Colour jitter strength for 3-channel images (saturation, per-channel gain, contrast; "
        "half the images also get their channels permuted); 0 disables it.",
    )
    style_mix: float | None = opt(
        None,
        "Fraction of auxiliary training images redrawn in the primary's style: |T - x| with T "
        "a labeled primary image whose tiles are shuffled (its colours and texture, not its "
        "digit), as MNIST-M was made from MNIST. Default: 0.5 when the primary is colour and "
        "the auxiliary grey (grey auxiliary images then get 3 channels), else 0.",
    )
    # --- objective (reference.md, equation 2) ---
    loss_scale: str = opt(
        "per-pixel",
        "per-pixel: divide each dataset's ELBO terms (reconstruction, KL, matching) by its number "
        "of pixel values, so the weights below mean the same for 16x16 grey and 32x32 colour "
        "images; sum: nats summed over pixels, as in the paper (whose CE weights were 1e4/1e5).",
    )
    recon_weight: float = opt(
        1.0, "Weight of each image's reconstruction cross-entropy (summed over pixels)."
    )
    kl_weight: float = opt(1.0, "Weight of the KL terms to the N(0, I) prior (style; aux content).")
    match_weight: float = opt(
        100.0,
        "Weight of KL(q(z_c | primary) || q(z_c | paired auxiliary)), the content matching "
        "(with --loss-scale per-pixel it is divided by the primary's pixel values too).",
    )
    aux_ce_weight: float = opt(1.0, "Weight of the auxiliary classification cross-entropy.")
    primary_ce_weight: float = opt(1.0, "Weight of the primary classification cross-entropy.")
    # --- optimisation ---
    epochs: int = opt(10, "Training epochs.")
    epoch_size: int | str = opt(
        10000,
        "Training examples per epoch: pairs for paired/jade, labeled images for single (drawn by "
        "cycling through shuffled data), or 'all' for one pass over the auxiliary set (single: "
        "over the labeled set), as in the paper.",
    )
    batch_size: int = opt(100, "Pairs (or labeled images for single) per optimisation step.")
    lr: float = opt(1e-3, "Peak learning rate of Adam.")
    lr_schedule: str = opt(
        "cosine",
        "constant; step (x0.3 after 1/3 and x0.1 after 2/3 of training, as in the paper); or "
        "cosine (decay to 1/100 of --lr).",
    )
    adam_beta1: float = opt(0.9, "Adam's beta_1 (the paper used 0.1).")
    grad_clip: float = opt(
        100.0, "Clip the gradient's global norm to this value (0 disables clipping)."
    )
    seed: int = opt(0, "Seed for the labeled subset, pairing, initialisation and dropout.")
    device: str = opt("auto", "auto (cuda, then mps, then cpu), cpu, cuda, cuda:N or mps.")
    precision: str = opt(
        "auto",
        "Arithmetic of the forward pass: fp32; bf16 (autocast; weights, optimiser and losses "
        "stay fp32; 2-3x faster on CPUs with AMX and on CUDA); or auto (bf16 where the device "
        "computes it natively, else fp32).",
    )
    eval_every: int = opt(
        1,
        "Evaluate test accuracy every N epochs (0: only after the last epoch). Never used to "
        "choose a model.",
    )

    def __post_init__(self) -> None:
        self._normalise()
        self._validate()

    # Values may come from YAML as strings ("1e-3" is a string in YAML 1.1) or from flags.
    def _normalise(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            setattr(self, f.name, _coerce(f.name, f.type, value))

    def _validate(self) -> None:
        if not self.primary:
            raise ConfigError("primary", "is required: the few-label dataset, e.g. --primary svhn")
        if self.model not in MODELS:
            raise ConfigError("model", f"must be one of {', '.join(MODELS)} (got {self.model!r})")
        if self.n_labeled is None:
            raise ConfigError("n_labeled", "is required: e.g. --n-labeled 1000, or --n-labeled all")
        if self.model != "single" and not self.auxiliary:
            raise ConfigError(
                "auxiliary", f"is required for --model {self.model}, e.g. --auxiliary mnist"
            )
        _positive_or_all("n_labeled", self.n_labeled)
        _positive_or_all("epoch_size", self.epoch_size)
        for name, allowed in (
            ("labeled_selection", LABELED_SELECTIONS),
            ("lr_schedule", LR_SCHEDULES),
            ("arch", ARCHES),
            ("augment", AUGMENTS),
            ("loss_scale", LOSS_SCALES),
        ):
            value = getattr(self, name)
            if value not in allowed:
                raise ConfigError(name, f"must be one of {', '.join(allowed)} (got {value!r})")
        if self.style_mix is not None and not (
            math.isfinite(self.style_mix) and 0 <= self.style_mix <= 1
        ):
            raise ConfigError("style_mix", f"must be between 0 and 1 (got {self.style_mix})")
        for name in ("aug_shift", "aug_scale", "aug_color"):
            value = getattr(self, name)
            if not (math.isfinite(value) and 0 <= value <= 0.5):
                raise ConfigError(name, f"must be between 0 and 0.5 (got {value})")
        if not (math.isfinite(self.aug_rotate) and 0 <= self.aug_rotate <= 180):
            raise ConfigError(
                "aug_rotate", f"must be between 0 and 180 degrees (got {self.aug_rotate})"
            )
        for name in ("primary_pad", "auxiliary_pad"):
            value = getattr(self, name)
            if not 0 <= value <= 64:
                raise ConfigError(name, f"must be between 0 and 64 pixels (got {value})")
        for name in ("aux_per_class", "primary_size", "auxiliary_size"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(name, f"must be a positive integer (got {value})")
        for name in ("content_dim", "style_dim", "hidden_dim", "epochs", "batch_size"):
            value = getattr(self, name)
            if value < 1:
                raise ConfigError(name, f"must be a positive integer (got {value})")
        if self.eval_every < 0:
            raise ConfigError(
                "eval_every", f"must be 0 or a positive integer (got {self.eval_every})"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError("dropout", f"must be in [0, 1) (got {self.dropout})")
        if not 0.0 <= self.adam_beta1 < 1.0:
            raise ConfigError("adam_beta1", f"must be in [0, 1) (got {self.adam_beta1})")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ConfigError("lr", f"must be a positive number (got {self.lr})")
        for name in (
            "recon_weight",
            "kl_weight",
            "match_weight",
            "aux_ce_weight",
            "primary_ce_weight",
            "grad_clip",
        ):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ConfigError(name, f"must be a finite number >= 0 (got {value})")
        if self.primary_ce_weight == 0 and self.aux_ce_weight == 0:
            raise ConfigError(
                "primary_ce_weight",
                "and --aux-ce-weight are both 0: the classifier would not train",
            )
        _check_precision(self.precision)
        dev = self.device
        if not (dev in ("auto", "cpu", "cuda", "mps") or _is_cuda_index(dev)):
            raise ConfigError("device", f"must be auto, cpu, cuda, cuda:N or mps (got {dev!r})")

    def to_dict(self) -> dict[str, Any]:
        """Plain data (str/int/float/bool/None) for the manifest and checkpoints."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        unknown = set(data) - {f.name for f in fields(cls)}
        if unknown:
            raise UsageError(f"unknown config keys: {', '.join(sorted(unknown))}")
        return cls(**{**LEGACY_DEFAULTS, **data})


def _check_precision(value: str) -> None:
    """`--precision` of `jade train` and of the analysis commands."""
    if value not in PRECISIONS:
        raise ConfigError("precision", f"must be one of {', '.join(PRECISIONS)} (got {value!r})")


def _is_cuda_index(dev: str) -> bool:
    prefix, _, index = dev.partition(":")
    return prefix == "cuda" and index.isdigit()


def _positive_or_all(name: str, value: int | str) -> None:
    if isinstance(value, str):
        if value != "all":
            raise ConfigError(name, f"must be a positive integer or 'all' (got {value!r})")
    elif value < 1:
        raise ConfigError(name, f"must be a positive integer or 'all' (got {value})")


def _coerce(name: str, annotation: Any, value: Any) -> Any:
    """Turn a flag or YAML value into the field's type, or raise a ConfigError naming it."""
    kind = str(annotation)
    if value is None:
        if "None" in kind:
            return None
        raise ConfigError(name, "needs a value (got nothing)")
    if kind.startswith("int | str"):  # a count or "all"
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
        if isinstance(value, (int, float)):
            return float(value)
        try:
            return float(str(value))
        except ValueError:
            raise ConfigError(name, f"must be a number (got {value!r})") from None
    if kind.startswith("bool"):
        if isinstance(value, bool):
            return value
        raise ConfigError(name, f"must be true or false (got {value!r})")
    if kind.startswith("str"):
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
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


def field_names() -> list[str]:
    return [f.name for f in fields(TrainConfig)]


def help_for(name: str, cls: Any = None) -> str:
    """The `--help` text of a field of `cls` (default TrainConfig), with its default."""
    for f in fields(cls or TrainConfig):
        if f.name == name:
            text = f.metadata["help"]
            default = f.default if f.default is not MISSING else None
            if default not in (None, "") and not isinstance(default, bool):
                text += f" (default: {default})"
            return text
    raise KeyError(name)


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


# --preset paper: the 2017 recipe of reference.md ("Original hyper-parameters"), per model.
_PAPER_COMMON: dict[str, Any] = {
    "arch": "paper",
    "augment": "none",
    "style_mix": 0.0,
    "loss_scale": "sum",
    "content_dim": 10,
    "style_dim": 10,
    "hidden_dim": 500,
    "dropout": 0.5,
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

# Keys a run saved before they existed gets on reload: what that version always did.
LEGACY_DEFAULTS: dict[str, Any] = {
    "arch": "paper",
    "augment": "none",
    "aug_shift": 0.0,
    "aug_rotate": 0.0,
    "aug_scale": 0.0,
    "aug_color": 0.0,
    "loss_scale": "sum",
    "style_mix": 0.0,
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
    flags: dict[str, Any],
    config_file: Path | None = None,
    base: dict[str, Any] | None = None,
    preset: str | None = None,
) -> TrainConfig:
    """Merge code defaults < `base` (a saved config) < preset < YAML file < flags into a
    TrainConfig.

    `flags` holds only the options the user gave (None means "not given").
    """
    merged: dict[str, Any] = dict(base or {})
    from_file = load_yaml_config(config_file) if config_file is not None else {}
    given = {k: v for k, v in flags.items() if v is not None}
    if preset is not None:
        model = given.get("model", from_file.get("model", merged.get("model", "jade")))
        merged.update(preset_values(preset, str(model)))
    merged.update(from_file)
    merged.update(given)
    try:
        return TrainConfig(**merged)
    except ConfigError as err:
        if err.field not in given and err.field in from_file:
            raise UsageError(f"{err.field} in {config_file}: {err.problem}") from None
        raise


# --------------------------------------------------------------------------- analysis commands
# `jade evaluate`, `inspect-latents` and `reconstruct` read a run folder instead of training
# flags; their options live here too (torch-free, so `jade --help` stays fast).

ANALYSIS_DATASETS = ("primary", "auxiliary", "both")
MAX_RECONSTRUCT_N = 32

SPLITS = ("test", "train-labeled", "train-unlabeled", "train")
SPLIT_HELP = (
    "Images to use: test (the test split), train-labeled (the labeled primary images the run "
    "trained on, and the auxiliary training images it used), train-unlabeled (the training "
    "images it never saw labels of), or train (whole training splits)."
)


@dataclass
class RunSource:
    """Which run and checkpoint to analyse, where the data are, and where to compute."""

    run: Path
    checkpoint: Path | None = opt(
        None, "Checkpoint file to analyse instead of RUN/checkpoints/last.pt."
    )
    data_dir: str | None = opt(
        None,
        "Where the run's datasets are now, if they moved (default: the run's own --data-dir; "
        "for folder: datasets, DIR/<folder name> is tried first).",
    )
    device: str = opt("auto", "auto, cpu, cuda, cuda:N or mps.")
    precision: str = opt(
        "auto",
        "fp32, bf16, or auto: the precision the run was trained in where this device computes "
        "it natively, else fp32 (so evaluate repeats the accuracy training recorded).",
    )
    batch_size: int = opt(
        100,
        "Images per forward pass (speed and memory only; results do not change beyond float "
        "rounding).",
    )
    out: Path | None = opt(
        None,
        "Folder for the output files (default: RUN/analysis/<command>-<split>/; files of the "
        "same name there are replaced).",
    )
    command: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ConfigError("batch_size", f"must be a positive integer (got {self.batch_size})")
        _check_precision(self.precision)
        dev = self.device
        if not (dev in ("auto", "cpu", "cuda", "mps") or _is_cuda_index(dev)):
            raise ConfigError("device", f"must be auto, cpu, cuda, cuda:N or mps (got {dev!r})")


def check_split(split: str) -> None:
    if split not in SPLITS:
        raise ConfigError("split", f"must be one of {', '.join(SPLITS)} (got {split!r})")


def check_limit(limit: int | None) -> None:
    if limit is not None and limit < 1:
        raise ConfigError("test_limit", f"must be a positive integer (got {limit})")


@dataclass
class EvaluateConfig(RunSource):
    """Options of `jade evaluate` (the run-source options are shared by every command)."""

    split: str = opt("test", SPLIT_HELP)
    test_limit: int | None = opt(
        None,
        "Use only the first N images of the split, for each dataset (the paper scored the "
        "first 10,000 SVHN test images).",
    )
    min_accuracy: float | None = opt(
        None,
        "Quality gate: exit with code 3 when the primary accuracy is below this; a fraction "
        "(0.85) or a percentage (85%).",
    )
    seed: int = opt(0, "Seed of the latent samples in the test ELBO and of the test pairs.")

    def __post_init__(self) -> None:
        super().__post_init__()
        check_split(self.split)
        check_limit(self.test_limit)
        if self.min_accuracy is not None and not 0.0 <= self.min_accuracy <= 1.0:
            raise ConfigError(
                "min_accuracy", f"must be a fraction in [0, 1] (got {self.min_accuracy})"
            )


@dataclass
class LatentsConfig(RunSource):
    """Options of `jade inspect-latents`."""

    dataset: str = opt("primary", "Which dataset's images to encode: primary, auxiliary or both.")
    split: str = opt("test", SPLIT_HELP)
    test_limit: int | None = opt(None, "Use only the first N images of the split.")
    seed: int = opt(0, "Seed of the random-groups view and of the probes' half/half split.")
    probe: bool = opt(
        True,
        "Fit held-out linear probes: class (and, for synth-* data, each known style factor) "
        "from content vs style latents.",
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.dataset not in ANALYSIS_DATASETS:
            raise ConfigError(
                "dataset", f"must be one of {', '.join(ANALYSIS_DATASETS)} (got {self.dataset!r})"
            )
        check_split(self.split)
        check_limit(self.test_limit)


@dataclass
class ReconstructConfig(RunSource):
    """Options of `jade reconstruct`."""

    n: int = opt(8, f"Images per dataset (1-{MAX_RECONSTRUCT_N}), one class after another.")
    seed: int = opt(0, "Seed that picks the images.")
    split: str = opt("test", SPLIT_HELP)
    traverse: str | None = opt(
        None,
        "Also vary latent dimensions one at a time: all, content, style, or a list such as "
        "content_3,style_0 (short: c3,s0).",
    )
    traverse_range: float = opt(
        3.0, "Traversal offsets span +-this many standard deviations of the dimension."
    )
    traverse_steps: int = opt(7, "Images per traversed dimension (2-25).")

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 1 <= self.n <= MAX_RECONSTRUCT_N:
            raise ConfigError("n", f"must be between 1 and {MAX_RECONSTRUCT_N} (got {self.n})")
        check_split(self.split)
        if not self.traverse_range > 0:
            raise ConfigError("traverse_range", f"must be positive (got {self.traverse_range})")
        if not 2 <= self.traverse_steps <= 25:
            raise ConfigError(
                "traverse_steps", f"must be between 2 and 25 (got {self.traverse_steps})"
            )
        if self.traverse is not None and not self.traverse.strip():
            raise ConfigError("traverse", "needs a value: all, content, style or e.g. content_3")
