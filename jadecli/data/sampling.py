"""Labeled subsets and the same-class pairing of auxiliary and primary images.

All sampling is vectorised index arithmetic on label tensors, seeded per purpose and per epoch
(`derive_seed`), so an epoch's batches depend only on (--seed, epoch): a resumed run sees exactly
the batches an uninterrupted run would.
"""

from __future__ import annotations

import hashlib

import torch

from jadecli.errors import UsageError


def derive_seed(seed: int, *parts: object) -> int:
    """A 63-bit seed for one purpose (e.g. `derive_seed(0, "pairs", 3)`), stable across runs."""
    text = ":".join(str(p) for p in (seed, *parts))
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") >> 1


def _generator(seed: int, *parts: object) -> torch.Generator:
    return torch.Generator().manual_seed(derive_seed(seed, *parts))


def labeled_subset(
    labels: torch.Tensor,
    classes: list[str],
    n: int | str,
    selection: str,
    seed: int,
    dataset_name: str,
) -> torch.Tensor:
    """Indices (sorted) of a class-balanced labeled subset of a training split.

    `n` must be a multiple of the number of classes; `selection` is "random" (seeded) or
    "first" (the first n / C images of each class, as in the paper). "all" keeps everything.
    """
    total = int(labels.shape[0])
    if n == "all":
        return torch.arange(total)
    assert isinstance(n, int)
    num_classes = len(classes)
    if n > total:
        raise UsageError(
            f"--n-labeled {n} is more than the {total} training images of {dataset_name}"
        )
    if n % num_classes:
        lo = n // num_classes * num_classes
        options = " or ".join(str(v) for v in (lo, lo + num_classes) if 0 < v <= total)
        raise UsageError(
            f"--n-labeled {n} cannot be split evenly over the {num_classes} classes of "
            f"{dataset_name}; use a multiple of {num_classes} (e.g. {options}) or 'all'"
        )
    per_class = n // num_classes
    counts = torch.bincount(labels, minlength=num_classes)
    short = [(classes[c], int(counts[c])) for c in range(num_classes) if counts[c] < per_class]
    if short:
        name, have = min(short, key=lambda t: t[1])
        raise UsageError(
            f"--n-labeled {n} needs {per_class} images of each class, but class {name!r} of "
            f"{dataset_name} has only {have} training images; use at most "
            f"--n-labeled {have * num_classes}"
        )
    gen = _generator(seed, "labeled")
    picked = []
    for c in range(num_classes):
        members = torch.nonzero(labels == c).flatten()  # ascending
        if selection == "random":
            members = members[torch.randperm(len(members), generator=gen)]
        picked.append(members[:per_class])
    return torch.sort(torch.cat(picked)).values


def first_per_class(
    labels: torch.Tensor, classes: list[str], k: int, dataset_name: str
) -> torch.Tensor:
    """Indices (sorted) of the first k images of each class (the paper's "MNIST 45K")."""
    counts = torch.bincount(labels, minlength=len(classes))
    short = [(classes[c], int(counts[c])) for c in range(len(classes)) if counts[c] < k]
    if short:
        name, have = min(short, key=lambda t: t[1])
        raise UsageError(
            f"--aux-per-class {k} is more than the {have} training images of class {name!r} in "
            f"{dataset_name}; use at most --aux-per-class {have}"
        )
    picked = [torch.nonzero(labels == c).flatten()[:k] for c in range(len(classes))]
    return torch.sort(torch.cat(picked)).values


def validation_split(
    labels: torch.Tensor, classes: list[str], val: int | float, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Split a labeled set (its labels) into (train, val) positions, both sorted, class by class:
    `val` images in all (an int, a multiple of the number of classes) or that fraction of each
    class (a float, at least one image per class). Every class keeps at least one training
    image. Drawn with (seed, "val"), independent of how the labeled set itself was drawn."""
    num_classes = len(classes)
    counts = torch.bincount(labels, minlength=num_classes).tolist()
    if isinstance(val, int):
        if val % num_classes:
            lo = val // num_classes * num_classes
            options = " or ".join(str(v) for v in (lo, lo + num_classes) if v > 0)
            raise UsageError(
                f"--val {val} cannot be split evenly over the {num_classes} classes; use a "
                f"multiple of {num_classes} (e.g. {options}) or a fraction such as 20%"
            )
        per_class = [val // num_classes] * num_classes
    else:
        per_class = [max(1, round(val * n)) for n in counts]
    short = [(classes[c], counts[c]) for c in range(num_classes) if per_class[c] >= counts[c]]
    if short:
        name, have = short[0]
        raise UsageError(
            f"--val {val} takes {per_class[classes.index(name)]} images of class {name!r}, which "
            f"has only {have} labeled image(s); at least one per class must stay for training "
            "(use a smaller --val or a larger --n-labeled)"
        )
    gen = _generator(seed, "val")
    train, held = [], []
    for c in range(num_classes):
        members = torch.nonzero(labels == c).flatten()
        members = members[torch.randperm(len(members), generator=gen)]
        held.append(members[: per_class[c]])
        train.append(members[per_class[c] :])
    return torch.sort(torch.cat(train)).values, torch.sort(torch.cat(held)).values


class IndexStream:
    """An endless stream of shuffled passes over `n` items, cut into epochs of `epoch_size`.

    Pass k is a permutation seeded by (seed, tag, k); epoch e covers stream positions
    [e * epoch_size, (e + 1) * epoch_size). Every item is seen equally often over whole passes.
    """

    def __init__(self, n: int, epoch_size: int, seed: int, tag: str) -> None:
        self.n, self.epoch_size, self.seed, self.tag = n, epoch_size, seed, tag

    def epoch(self, epoch: int) -> torch.Tensor:
        start = epoch * self.epoch_size
        stop = start + self.epoch_size
        chunks = []
        for k in range(start // self.n, (stop - 1) // self.n + 1):
            perm = torch.randperm(self.n, generator=_generator(self.seed, self.tag, k))
            lo = max(start - k * self.n, 0)
            hi = min(stop - k * self.n, self.n)
            chunks.append(perm[lo:hi])
        return torch.cat(chunks)


class PairSampler:
    """Joins each auxiliary image with a labeled primary image **of the same class**.

    The auxiliary side cycles through shuffled passes (`IndexStream`). Within an epoch, the
    auxiliary images of class c take their primary partners in turn from a fresh permutation of
    the primary images of class c, so every primary image is used equally often: with 45,000
    auxiliary and 1,000 primary images each primary image appears 45 times per epoch, as in the
    paper.
    """

    def __init__(
        self,
        aux_labels: torch.Tensor,
        primary_labels: torch.Tensor,
        num_classes: int,
        epoch_size: int,
        seed: int,
    ) -> None:
        counts = torch.bincount(primary_labels, minlength=num_classes)
        needed = torch.bincount(aux_labels, minlength=num_classes) > 0
        missing = torch.nonzero(needed & (counts == 0)).flatten().tolist()
        if missing:
            raise UsageError(
                f"classes {missing} have auxiliary images but no labeled primary image to pair "
                "with; use a larger --n-labeled"
            )
        self.aux_labels = aux_labels
        self.primary_labels = primary_labels
        self.num_classes = num_classes
        self.seed = seed
        self.counts = counts
        self.offsets = torch.cumsum(counts, 0) - counts
        self.by_class = torch.argsort(primary_labels, stable=True)  # primary idx grouped by class
        self.aux_stream = IndexStream(len(aux_labels), epoch_size, seed, "aux")

    def epoch(self, epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(aux indices, primary indices), each (epoch_size,), pairs of the same class."""
        aux_idx = self.aux_stream.epoch(epoch)
        y = self.aux_labels[aux_idx]  # (E,)
        gen = _generator(self.seed, "pairs", epoch)
        # A per-class shuffle of the primary images: a random key sorted within class blocks.
        keys = (
            self.primary_labels[self.by_class].double()
            + torch.rand(len(self.by_class), generator=gen, dtype=torch.float64) * 0.5
        )
        shuffled = self.by_class[torch.argsort(keys, stable=True)]  # still grouped by class
        # rank of each auxiliary position among the epoch's positions of the same class
        order = torch.argsort(y, stable=True)
        ones = torch.ones_like(y)
        class_start = torch.cumsum(torch.bincount(y, minlength=self.num_classes), 0)
        class_start = class_start - torch.bincount(y, minlength=self.num_classes)
        rank = torch.empty_like(y)
        rank[order] = torch.cumsum(ones[order], 0) - 1 - class_start[y[order]]
        # a random starting point per class, so that with few pairs per class the partners vary
        start = torch.randint(0, 1 << 30, (self.num_classes,), generator=gen)
        pick = self.offsets[y] + (rank + start[y]) % self.counts[y].clamp_min(1)
        return aux_idx, shuffled[pick]
