"""Unlabeled primary images (`--unlabeled`): where they come from, and how a run reads them.

A source is one of
- `rest`: the primary's training images outside the labeled subset and `--val` (already in
  memory: the primary was loaded whole);
- `folder:PATH` or a plain PATH: every image file under PATH, recursively (sub-folder names
  are not classes);
- a registered dataset's name: its training split, labels dropped.

Every image gets the primary's preprocessing as `jade predict` reads a file (`ImageRecipe`):
decoded grey or colour as the primary was, resized to its size, padded, given the model's
channels. A folder that fits what is left of the run's memory budget is decoded once into memory
beside the others; a larger one stays on disk and is **streamed**: worker processes decode each
step's images while the model trains on the last step's (`UnlabeledStream`).

Files that do not decode are skipped with one warning (their count and the first name); a source
with no images left is an error. Images of another size are resized, with one warning per source.

    python -c "from pathlib import Path; from jadecli.data.unlabeled import list_images; \
print(len(list_images(Path('docs'))))"
"""

from __future__ import annotations

import hashlib
import os
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from jadecli.config.data_options import folder_source
from jadecli.data.core import Dataset
from jadecli.data.folder import UnreadableImage, probe, walk_images
from jadecli.data.memory import MemoryBudget
from jadecli.data.preprocess import ImageRecipe
from jadecli.data.registry import load_dataset, resize_images
from jadecli.data.sampling import derive_seed
from jadecli.errors import DataError

Warn = Callable[[str], None]
FLAG = "--unlabeled"
# ITU-R 601 luma, as Pillow's convert("L"): colour images of a dataset source for a grey primary
LUMA = (0.299, 0.587, 0.114)


@dataclass
class SourceRecord:
    """What the manifest records about one source."""

    source: str  # as the user wrote it
    kind: str  # rest | folder | dataset
    images: int
    streamed: bool
    files_sha256: str  # of the sorted relative file names (folder), the indices (rest), ...
    skipped: int = 0  # files that did not decode

    def describe(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "kind": self.kind,
            "images": self.images,
            "streamed": self.streamed,
            "files_sha256": self.files_sha256,
            "skipped_files": self.skipped,
        }


@dataclass
class UnlabeledImages:
    """A run's unlabeled images: those held in memory (uint8, the model's input shape) and the
    files streamed from disk, indexed as one set (resident first)."""

    resident: torch.Tensor  # (N_r, C, H, W) uint8
    files: list[Path]  # streamed, read by `recipe`
    recipe: ImageRecipe
    sources: list[SourceRecord] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.resident.shape[0]) + len(self.files)

    @property
    def streamed(self) -> bool:
        return bool(self.files)

    def describe(self) -> dict[str, Any]:
        return {"images": len(self), "sources": [s.describe() for s in self.sources]}


def _digest(items: Sequence[str]) -> str:
    h = hashlib.sha256()
    for item in items:
        h.update(item.encode("utf-8", "surrogateescape") + b"\n")
    return h.hexdigest()


# --------------------------------------------------------------------------- loading


def load_unlabeled(
    sources: Sequence[str],
    primary: Dataset,
    rest: torch.Tensor,
    recipe: ImageRecipe,
    data_dir: Path,
    budget: MemoryBudget,
    warn: Warn,
) -> UnlabeledImages:
    """Every source as the model's input. `primary` is the whole primary dataset as the model
    sees it and `rest` the indices of its training images outside the labeled subset and --val;
    `recipe` its preprocessing; `budget` what decides whether a folder is decoded or streamed."""
    shape = recipe.input_shape
    parts: list[torch.Tensor] = []
    files: list[Path] = []
    records: list[SourceRecord] = []
    for source in sources:
        if source == "rest":
            if len(rest) == 0:
                raise DataError(
                    f"{FLAG} rest: every primary training image is labeled or in --val; give "
                    "a folder of unlabeled images instead"
                )
            parts.append(primary.train.images[rest])
            digest = _digest([str(i) for i in rest.tolist()])
            records.append(SourceRecord(source, "rest", len(rest), False, digest))
        elif (root := folder_source(source)) is not None:
            images, streamed, record = _folder(source, root, recipe, budget, warn)
            (files.extend if streamed else parts.append)(images)  # type: ignore[operator]
            records.append(record)
        else:
            images = _dataset(source, recipe, data_dir, budget, warn)
            parts.append(images)
            digest = _digest([source, str(len(images))])
            records.append(SourceRecord(source, "dataset", len(images), False, digest))
    resident = torch.cat(parts) if parts else torch.empty((0, *shape), dtype=torch.uint8)
    return UnlabeledImages(resident, files, recipe, records)


def _folder(
    source: str, root: Path, recipe: ImageRecipe, budget: MemoryBudget, warn: Warn
) -> tuple[torch.Tensor | list[Path], bool, SourceRecord]:
    """The images of folder `root` (source `source`): decoded into memory when they fit the
    budget, else their files."""
    where = f"{FLAG} {source}"
    if not root.is_dir():
        raise DataError(f"{where}: no such folder {root}")
    paths = list_images(root)
    if not paths:
        raise DataError(f"{where}: {root} holds no image files")
    workers = min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:  # headers only
        probed = list(pool.map(_size_of, paths, chunksize=64))
    bad = [p for p, hw in zip(paths, probed, strict=True) if hw is None]
    good = [p for p, hw in zip(paths, probed, strict=True) if hw is not None]
    sizes = Counter(hw for hw in probed if hw is not None)
    shape = recipe.input_shape
    streamed = bool(good) and not budget.fits(len(good), shape)
    images: torch.Tensor | list[Path] = good
    if good and not streamed:
        budget.claim(len(good), shape, where, "--primary-size")
        decoded = _decode_many(good, recipe, workers)
        bad += [p for p, img in zip(good, decoded, strict=True) if img is None]
        kept = [img for img in decoded if img is not None]
        good = [p for p, img in zip(good, decoded, strict=True) if img is not None]
        images = torch.stack(kept) if kept else torch.empty((0, *shape), dtype=torch.uint8)
    if bad:
        warn(f"{where}: skipped {len(bad)} file(s) that do not decode (e.g. {bad[0]})")
    if not good:
        raise DataError(f"{where}: none of the {len(paths)} image files in {root} decode")
    other = sum(n for hw, n in sizes.items() if hw != recipe.size)
    if other:
        th, tw = recipe.size
        warn(f"{where}: resizing {other} image(s) of other sizes to the primary's {th}x{tw}")
    digest = _digest([str(p.relative_to(root)) for p in good])
    return images, streamed, SourceRecord(source, "folder", len(good), streamed, digest, len(bad))


def list_images(root: Path) -> list[Path]:
    """Image files under `root`, recursively, sorted; hidden files and folders skipped."""
    return walk_images(root)[0]


def _size_of(path: Path) -> tuple[int, int] | None:
    """(H, W) from the header, or None for a file Pillow cannot open."""
    try:
        return probe(path)[1]
    except UnreadableImage:
        return None


def read_one(recipe: ImageRecipe, path: Path) -> torch.Tensor | None:
    """One file as the model's uint8 (C, H, W) input, or None if it does not decode."""
    try:
        arr = recipe.read(path)
    except DataError:
        return None
    return recipe.finish(torch.from_numpy(np.ascontiguousarray(arr))[None])[0]


def _decode_many(paths: list[Path], recipe: ImageRecipe, workers: int) -> list[torch.Tensor | None]:
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(lambda p: read_one(recipe, p), paths, chunksize=64))


def _dataset(
    source: str,
    recipe: ImageRecipe,
    data_dir: Path,
    budget: MemoryBudget,
    warn: Warn,
) -> torch.Tensor:
    """A registered dataset's training images, labels dropped, as the primary's."""
    ds = load_dataset(source, data_dir, False, None, warn, FLAG, budget)
    images = ds.train.images  # (N, c, h, w) uint8
    c = images.shape[1]
    if c == 3 and recipe.channels == 1:
        luma = torch.tensor(LUMA).view(1, 3, 1, 1)
        images = (images.float() * luma).sum(1, keepdim=True).round().clamp(0, 255)
        images = images.to(torch.uint8)
    elif c == 1 and recipe.channels == 3:
        images = images.expand(-1, 3, -1, -1)
    if tuple(images.shape[-2:]) != recipe.size:
        warn(
            f"{FLAG} {source}: resizing its {images.shape[-2]}x{images.shape[-1]} images to "
            f"the primary's {recipe.size[0]}x{recipe.size[1]}"
        )
        images = resize_images(images.contiguous(), recipe.size)
    return recipe.finish(images.contiguous())


# --------------------------------------------------------------------------- batches


class _Files(torch.utils.data.Dataset):
    """Streamed images by index (resident ones first), each with whether it decoded."""

    def __init__(self, images: UnlabeledImages):
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, bool]:
        n = self.images.resident.shape[0]
        if i < n:
            return self.images.resident[i], True
        img = read_one(self.images.recipe, self.images.files[i - n])
        if img is None:
            return torch.zeros(self.images.recipe.input_shape, dtype=torch.uint8), False
        return img, True


def _collate(items: list[tuple[torch.Tensor, bool]]) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.stack([x for x, _ in items]), torch.tensor([ok for _, ok in items])


class UnlabeledStream:
    """Each step's unlabeled images, drawn without replacement from a fresh permutation of all
    of them every pass (seeded by the run's seed and the epoch, so a resumed run draws the same),
    as uint8 (U, C, H, W) on the CPU. Streamed sources are decoded by `workers` processes, a few
    steps ahead; a file that fails to decode is dropped from its step and counted (`failed`)."""

    def __init__(self, images: UnlabeledImages, seed: int, workers: int | None = None):
        self.images, self.seed = images, seed
        self.workers = workers if workers is not None else min(4, max(1, (os.cpu_count() or 2)))
        self.failed = 0

    def order(self, epoch: int, count: int) -> torch.Tensor:
        """`count` indices for epoch `epoch`: whole permutations, the last one cut."""
        n = len(self.images)
        gen = torch.Generator().manual_seed(derive_seed(self.seed, "unlabeled", epoch))
        perms = [torch.randperm(n, generator=gen) for _ in range(-(-count // n))]
        return torch.cat(perms)[:count]

    def epoch(self, epoch: int, steps: Sequence[torch.Tensor]) -> Iterator[torch.Tensor]:
        """The images of each step, whose indices `steps` gives (from `order`)."""
        if not self.images.streamed:
            for index in steps:
                yield self.images.resident[index]
            return
        loader = torch.utils.data.DataLoader(
            _Files(self.images),
            batch_sampler=[s.tolist() for s in steps],
            num_workers=self.workers,
            collate_fn=_collate,
            prefetch_factor=4 if self.workers else None,
            persistent_workers=False,
        )
        for x, ok in loader:
            if not bool(ok.all()):
                self.failed += int((~ok).sum())
                x = x[ok]
            yield x
