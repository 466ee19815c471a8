"""The primary/auxiliary pair as a run sees it: loaded, aligned, shaped for the model, subset.

`load_pair` is the one way both `jade train` and the analysis commands load a run's datasets,
so the analysis sees exactly the images (size, padding, channels) training saw;
`training_data` adds what only training needs: the labeled subset and the auxiliary images used.
What the data decide (`--primary-size` under a one-trunk arch, `--style-mix` by default) is
decided here, once, and written into the config they return: the run records it in its
manifest and everything after reads it from there.

    python -c "from jadecli.config import TrainConfig; from jadecli.data.pair import \
training_data; from jadecli.progress import PlainReporter; c, d = training_data(TrainConfig(\
primary='synth-street', auxiliary='synth-hand', n_labeled=100, data_dir='runs/data'), \
PlainReporter()); print(c.primary_size, c.style_mix, len(d.labeled), len(d.aux_train))"
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from jadecli.config import TrainConfig
from jadecli.config.data_options import unlabeled_sources
from jadecli.data.core import Dataset, ImageSet
from jadecli.data.memory import MemoryBudget
from jadecli.data.preprocess import ImageRecipe
from jadecli.data.registry import align_classes, load_dataset
from jadecli.data.sampling import first_per_class, labeled_subset, validation_split
from jadecli.data.unlabeled import UnlabeledImages, load_unlabeled
from jadecli.errors import UsageError
from jadecli.progress import Reporter
from jadecli.spec import MIN_SIDE, one_trunk


@dataclass
class Pair:
    """The datasets as the model sees them (the auxiliary is None for a single classifier)."""

    primary: Dataset
    auxiliary: Dataset | None


@dataclass
class TrainData(Pair):
    """What a training run holds. `primary.train` is only the labeled images and
    `auxiliary.train` only the ones used: a run never keeps images it does not train on (with
    100 of 9,001 labeled, the rest were 99% of the primary's training memory); `described` is
    what the manifest records about the whole datasets."""

    labeled_index: torch.Tensor  # indices into the whole primary training split: trained on
    labeled: ImageSet
    val_index: torch.Tensor | None  # the --val images held out of --n-labeled (same indexing)
    val: ImageSet | None
    aux_train: ImageSet | None  # the auxiliary training images used (all, or first K per class)
    described: dict[str, dict[str, Any]]  # role -> Dataset.describe() of the whole dataset
    unlabeled: UnlabeledImages | None = None  # --unlabeled: the primary's unlabeled images


def load_pair(
    cfg: TrainConfig,
    data_dir: Path,
    reporter: Reporter,
    download: bool = False,
    locate: Callable[[str, str], str] | None = None,
    budget: MemoryBudget | None = None,
) -> tuple[TrainConfig, Pair]:
    """Load the run's datasets, align their classes and shape them for the model; returns the
    config with what the data decided filled in (`primary_size`, `style_mix`).

    `locate(role, name)` may point a `folder:` dataset somewhere else (data that moved);
    `budget` is the run's memory budget when the caller loads more (default: a new one)."""

    budget = budget or MemoryBudget.resolve(cfg.memory_budget)

    def load(role: str, size: int | None, pad: int) -> Dataset:
        name = cfg.primary if role == "primary" else cfg.auxiliary
        assert name
        name = locate(role, name) if locate else name
        reporter.info(f"loading {name} ({role})")
        ds = load_dataset(name, data_dir, download, size, reporter.warn, f"--{role}", budget)
        if pad:
            c, h, w = ds.image_shape
            budget.claim(
                len(ds.train) + len(ds.test),
                (c, h + 2 * pad, w + 2 * pad),
                f"--{role}-pad {pad}",
                f"--{role}-size",
            )
        ds = ds.padded(pad)
        _check_side(ds, role, name)
        return ds

    auxiliary = None
    if cfg.uses_auxiliary:
        auxiliary = load("auxiliary", cfg.auxiliary_size, cfg.auxiliary_pad)
    primary_size = cfg.primary_size
    if one_trunk(cfg.arch) and auxiliary is not None and primary_size is None:
        _, h, w = auxiliary.image_shape  # one trunk: the primary takes the auxiliary's size
        primary_size = h - 2 * cfg.primary_pad
        if h != w or primary_size < 1:
            raise UsageError(
                f"--arch {cfg.arch} needs both datasets at one square size, but --auxiliary "
                f"{cfg.auxiliary} is {h}x{w} (--primary-pad {cfg.primary_pad}); pass "
                "--primary-size and --auxiliary-size"
            )
    primary = load("primary", primary_size, cfg.primary_pad)
    mix = 0.0
    if auxiliary is not None:
        align_classes(primary, auxiliary)
        primary, auxiliary, mix = prepare_pair(primary, auxiliary, cfg.arch, cfg.style_mix, budget)
    return replace(cfg, primary_size=primary_size, style_mix=mix), Pair(primary, auxiliary)


def training_data(cfg: TrainConfig, reporter: Reporter) -> tuple[TrainConfig, TrainData]:
    """The pair plus the labeled subset and the auxiliary images used, and the config with what
    the data decided; `cfg.data_dir` must be resolved (the run records where its data came
    from)."""
    assert cfg.data_dir is not None
    unused = cfg.unused_auxiliary_options()
    if unused:
        reporter.warn(f"{', '.join(unused)}: not used by --model {cfg.model}")
    data_dir = Path(cfg.data_dir).expanduser()
    budget = MemoryBudget.resolve(cfg.memory_budget)
    cfg, pair = load_pair(cfg, data_dir, reporter, cfg.download, budget=budget)
    primary, auxiliary = pair.primary, pair.auxiliary
    index, val_index = split_labeled(cfg, primary, labeled_index(cfg, primary))
    described = {"primary": primary.describe()}
    unlabeled = None
    if cfg.unlabeled:
        unlabeled = load_unlabeled(
            unlabeled_sources(cfg.unlabeled),
            primary,
            rest_index(len(primary.train), index, val_index),
            ImageRecipe.for_model(
                primary.name, primary.image_shape, cfg.primary_pad, described["primary"]
            ),
            data_dir,
            budget,
            reporter.warn,
        )
    labeled = primary.train.subset(index)
    val = None if val_index is None else primary.train.subset(val_index)
    primary = replace(primary, train=labeled)  # the unlabeled images are freed
    aux_train = None
    if auxiliary is not None:
        described["auxiliary"] = auxiliary.describe()
        used = aux_used_index(cfg, auxiliary)
        aux_train = auxiliary.train if used is None else auxiliary.train.subset(used)
        auxiliary = replace(auxiliary, train=aux_train)
    return cfg, TrainData(
        primary=primary,
        auxiliary=auxiliary,
        labeled_index=index,
        labeled=labeled,
        val_index=val_index,
        val=val,
        aux_train=aux_train,
        described=described,
        unlabeled=unlabeled,
    )


def rest_index(n: int, labeled: torch.Tensor, val: torch.Tensor | None) -> torch.Tensor:
    """`--unlabeled rest`: the primary training images outside the labeled subset and --val."""
    keep = torch.ones(n, dtype=torch.bool)
    keep[labeled] = False
    if val is not None:
        keep[val] = False
    return torch.nonzero(keep).flatten()


def labeled_index(cfg: TrainConfig, primary: Dataset) -> torch.Tensor:
    """The labeled primary subset `--n-labeled`, `--labeled-selection` and `--seed` draw."""
    train = primary.train
    return labeled_subset(
        train.labels, primary.classes, cfg.n_labeled, cfg.labeled_selection, cfg.seed, primary.name
    )


def split_labeled(
    cfg: TrainConfig, primary: Dataset, index: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The labeled subset `index` as (trained on, --val held out), both indices into the whole
    primary training split; without --val, (index, None)."""
    if cfg.val is None:
        return index, None
    train_pos, val_pos = validation_split(
        primary.train.labels[index], primary.classes, cfg.val, cfg.seed
    )
    return index[train_pos], index[val_pos]


def aux_used_index(cfg: TrainConfig, auxiliary: Dataset) -> torch.Tensor | None:
    """The auxiliary training images a run trains on (`--aux-per-class`); None = all."""
    if cfg.aux_per_class is None:
        return None
    train = auxiliary.train
    return first_per_class(train.labels, auxiliary.classes, cfg.aux_per_class, auxiliary.name)


def _check_side(ds: Dataset, role: str, name: str) -> None:
    _, h, w = ds.image_shape
    if min(h, w) < MIN_SIDE:
        raise UsageError(
            f"--{role} {name}: the images are {h}x{w}, smaller than the {MIN_SIDE}x{MIN_SIDE} the "
            f"models need; pass --{role}-size {MIN_SIDE} (or larger)"
        )


def prepare_pair(
    primary: Dataset,
    auxiliary: Dataset,
    arch: str,
    style_mix: float | None,
    budget: MemoryBudget | None = None,
) -> tuple[Dataset, Dataset, float]:
    """The two datasets as the model sees them, and the `--style-mix` to train with.

    `--arch shared` (and resnet18) feeds both through one trunk: a grey dataset beside a colour
    one gets 3 (identical) channels, and both must have one size. Style mixing needs the
    auxiliary in the primary's channels too."""
    (cp, hp, wp), (ca, ha, wa) = primary.image_shape, auxiliary.image_shape
    if style_mix is None:  # default: on for a colour primary helped by a grey auxiliary
        style_mix = 0.5 if (cp, ca) == (3, 1) and (hp, wp) == (ha, wa) else 0.0
    if one_trunk(arch) or style_mix > 0:
        what = f"--arch {arch}" if one_trunk(arch) else f"--style-mix {style_mix}"
        if (hp, wp) != (ha, wa):
            raise UsageError(
                f"{what} needs both datasets at one size, but the primary is {hp}x{wp} and the "
                f"auxiliary {ha}x{wa}: pass --primary-size/--auxiliary-size (and the pads)"
            )
        if cp != ca and 1 not in (cp, ca):
            raise UsageError(
                f"{what} needs one channel count, but the primary has {cp} and the auxiliary {ca}"
            )
        if cp == 1 and ca > 1 and style_mix > 0:
            raise UsageError(
                f"--style-mix {style_mix}: the primary is grey and the auxiliary in colour; "
                "pass --style-mix 0"
            )
        channels = max(cp, ca)
        for ds, role in ((primary, "primary"), (auxiliary, "auxiliary")):
            if budget is not None and ds.image_shape[0] != channels:  # grey -> 3 channels
                extra = (channels - ds.image_shape[0], *ds.image_shape[1:])
                what = f"--{role} {ds.name} as {channels} channels (beside a colour dataset)"
                budget.claim(len(ds.train) + len(ds.test), extra, what, f"--{role}-size")
        primary, auxiliary = primary.with_channels(channels), auxiliary.with_channels(channels)
    return primary, auxiliary, style_mix
