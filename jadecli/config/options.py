"""The option framework: one declaration per option, everything else derived from it.

Each field of a config dataclass is declared once with `opt(...)`: its default, its `--help`
text, its help panel, and the rule its values must follow (a list of choices, a range, or a check
function). Everything else is derived from that declaration:

- the command-line options (`jadecli.cli` builds each command's options from these fields, so a
  field cannot lack a flag, nor a flag a field);
- validation (`check_fields`, the one table of choices and ranges, run by `__post_init__`), with
  messages that name the flag;
- the keys of `--config FILE.yaml` and of the saved config in a run's manifest;
- the option reference, docs/options.md (`jadecli.config.reference`).
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable
from dataclasses import MISSING, Field, dataclass, field, fields
from pathlib import Path
from typing import Any

from jadecli.errors import UsageError
from jadecli.spec import MIN_SIDE

# Help panels of `--help`, in the order they appear.
DATA, MODEL, AUG, OBJ = "Data", "Model", "Augmentation", "Objective"
OPT, RUN = "Optimisation", "Run"


class ConfigError(UsageError):
    """A bad configuration value; `field` is the config key it belongs to."""

    def __init__(self, field_name: str, problem: str, given: str | None = None) -> None:
        """`given`: how the value was written (`--arch paper`), else just the flag."""
        self.field = field_name
        self.problem = problem
        super().__init__(f"{given or flag(field_name)} {problem}")


def flag(field_name: str) -> str:
    """The command-line flag of a config field: `batch_size` -> `--batch-size`."""
    return "--" + field_name.replace("_", "-")


def given(cfg: Any, name: str) -> str:
    """How option `name`'s value is written on the command line: `--arch paper`, `--no-test`."""
    value = getattr(cfg, name)
    if isinstance(value, bool):
        return flag(name) if value else "--no-" + name.replace("_", "-")
    return f"{flag(name)} {value}"


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
IMAGE_SIDE = Range(MIN_SIDE, 1024)  # --primary-size/--auxiliary-size: what the models take
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
    switch: bool = False,
) -> Any:
    """A config field and everything its command-line option needs.

    `choices`, `range` and `check` (value -> problem or None) are the rules `check_fields`
    enforces; `parse` turns the option's text into the value (e.g. `85%` -> 0.85); `argument`
    makes it a positional argument instead of an option; `repeat` lets the option be given
    several times (`--log a --log b`), its values joined with commas for `parse`; `switch` makes a
    bool option a plain on-switch (`--resume`) without a `--no-` form."""
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
        "switch": switch,
    }
    return field(default=default, metadata=meta)


def internal(default_factory: Callable[[], Any]) -> Any:
    """A field set by code, never by a flag (e.g. the command line that ran)."""
    return field(default_factory=default_factory, metadata={"internal": True})


def option_fields(cls: Any) -> list[Field[Any]]:
    """The fields of a config class that are command-line options, in declaration order."""
    return [f for f in fields(cls) if not f.metadata.get("internal")]


def field_names(cls: Any) -> list[str]:
    return [f.name for f in option_fields(cls)]


def help_for(f: Field[Any]) -> str:
    """A field's `--help` text, with its default."""
    text = str(f.metadata["help"])
    default = f.default if f.default is not MISSING else None
    if default not in (None, "") and not isinstance(default, bool):
        text += f" (default: {default})"
    return text


def metavar(f: Field[Any]) -> str | None:
    """The placeholder of an option's value in help texts: the declared one, else one from its
    type (choices joined by |, N, X, PATH, TEXT); bool flags take none."""
    if f.metadata["metavar"]:
        return str(f.metadata["metavar"])
    kind, choices = str(f.type), f.metadata["choices"]
    if choices:
        return "|".join(choices)
    if kind.startswith("int"):
        return "N"
    if kind.startswith("float"):
        return "X"
    if kind.startswith("Path"):
        return "PATH"
    return None if kind.startswith("bool") else "TEXT"


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


def device_problem(dev: str) -> str | None:
    """`--device`'s rule, for every command that computes."""
    prefix, _, index = dev.partition(":")
    if dev in ("auto", "cpu", "cuda", "mps") or (prefix == "cuda" and index.isdigit()):
        return None
    return f"must be auto, cpu, cuda, cuda:N or mps (got {dev!r})"


# ------------------------------------------------------------- checks of `jade train`'s own options

# The datasets `--primary`/`--auxiliary` know by name (jadecli.data.registry loads them).
DATASETS = ("mnist", "fashion-mnist", "svhn", "usps", "mnist-m", "synth-street", "synth-hand")


def dataset_problem(name: str) -> str | None:
    """`--primary`/`--auxiliary`: a known name or folder:PATH, checked before anything loads."""
    if name.startswith("folder:"):
        return None if name[len("folder:") :].strip() else "folder: needs a path, e.g. folder:scans"
    if name in DATASETS or not name:
        return None
    close = difflib.get_close_matches(name.lower(), DATASETS, n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]}?" if close else ""
    if not close and Path(name).expanduser().is_dir():
        hint = f"; for a folder of your own images write folder:{name}"
    return f"must be one of {', '.join(DATASETS)} or folder:PATH (got {name!r}){hint}"


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


def val_problem(value: int | float) -> str | None:
    if isinstance(value, int):
        return None if value >= 1 else f"must be at least 1 image, or a fraction (got {value})"
    if 0 < value < 1:
        return None
    return f"must be a whole number of images or a fraction in (0, 1) (got {value})"
