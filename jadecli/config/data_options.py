"""`jade train`'s data options: `DataOptions`, the first fields of `TrainConfig`.

They live in a module of their own because `TrainConfig` is long; `TrainConfig` inherits them,
so they come first in its fields, its `--help` panel and its saved config, as before.
`--unlabeled` is parsed here (`parse_unlabeled`); what each source means is decided where it is
loaded (`jadecli.data.unlabeled`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from jadecli.config.options import (
    DATA,
    DATASETS,
    IMAGE_SIDE,
    POSITIVE,
    ConfigError,
    Range,
    dataset_problem,
    opt,
    parse_val,
    val_problem,
)

LABELED_SELECTIONS = ("random", "first")
SELECTIONS = ("last", "best-val")


def parse_unlabeled(text: str) -> str:
    """`--unlabeled`: comma-separated sources -> the same, canonical (no spaces, no repeats);
    `none` or nothing -> ''. A name that is neither rest, a dataset nor folder:PATH is taken as
    a folder path (checked when it is loaded)."""
    sources = [s.strip() for s in text.split(",") if s.strip()]
    if [s.lower() for s in sources] in ([], ["none"]):
        return ""
    out = []
    for source in sources:
        if source.lower() == "rest":
            source = "rest"
        elif source.startswith("folder:") and not source[len("folder:") :].strip():
            raise ConfigError("unlabeled", "folder: needs a path, e.g. folder:scans/unlabeled")
        out.append(source)
    return ",".join(dict.fromkeys(out))


def unlabeled_sources(value: str) -> list[str]:
    """The sources of a config's `unlabeled` field, in order ([] when none)."""
    return [s for s in value.split(",") if s] if value else []


def folder_source(source: str) -> Path | None:
    """The folder an `--unlabeled` source names (`folder:PATH`, or a PATH that is not `rest` or
    a dataset's name), as given with ~ expanded; None for `rest` and dataset names."""
    if source.startswith("folder:"):
        return Path(source[len("folder:") :]).expanduser()
    return None if source == "rest" or source in DATASETS else Path(source).expanduser()


def primary_overlap(primary: str, value: str) -> str | None:
    """Why an `--unlabeled` source would give the model the primary's own labeled, --val or
    test images as unlabeled ones (the dataset itself; a folder inside or around the primary's
    folder), or None. `rest` is the way to its other training images."""
    home = folder_source(primary) if primary.startswith("folder:") else None
    for source in unlabeled_sources(value):
        if source == primary and source in DATASETS:
            return (
                f"{source} is the primary itself: its labeled and --val images would be "
                "trained on again as unlabeled ones"
            )
        folder = folder_source(source)
        if home is None or folder is None:
            continue
        where, root = folder.resolve(), home.resolve()
        if where == root or root in where.parents or where in root.parents:
            return (
                f"{source} holds images of the primary's folder ({primary}): labeled, --val "
                "or test images would be trained on as unlabeled ones"
            )
    return None


@dataclass
class DataOptions:
    """What a run trains on (the first fields of `TrainConfig`)."""

    primary: str = opt(
        "",
        "Primary (few-label) dataset: mnist, fashion-mnist, svhn, usps, mnist-m, synth-street, "
        "synth-hand, or folder:PATH with PATH/train/<class>/* and PATH/test/<class>/*.",
        group=DATA,
        metavar="NAME",
        check=dataset_problem,
    )
    auxiliary: str | None = opt(
        None,
        "Auxiliary (many-label) dataset with the same classes, same names as --primary. "
        "Required for --model paired and jade.",
        group=DATA,
        metavar="NAME",
        check=dataset_problem,
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
        check=val_problem,
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
    unlabeled: str = opt(
        "",
        "Unlabeled primary images to learn from as well (semi-supervised). SOURCE: rest (the "
        "primary's training images outside --n-labeled and --val), folder:PATH or a plain PATH "
        "(a folder of images, searched recursively; sub-folder names are ignored), or a dataset "
        "name (its training split, labels ignored). Repeat the flag or separate sources with "
        "commas. The images get the primary's size, padding and channels; a source too large "
        "for --memory-budget is streamed from disk. The primary itself, or a folder holding "
        "its images, is refused (its labeled, --val or test images would come back unlabeled): "
        "use rest. Default: none (the paper's setting).",
        group=DATA,
        metavar="SOURCE",
        parse=parse_unlabeled,
        repeat=True,
    )
    unlabeled_ratio: int = opt(
        1,
        "--unlabeled: unlabeled images per labeled primary image in each batch. Each is seen in "
        "two augmentations, so a step handles about 1 + RATIO times the primary images.",
        group=DATA,
        metavar="RATIO",
        range=Range(1, 16),
    )
