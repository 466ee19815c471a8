"""In-memory datasets: decoded once into uint8 tensors, batches built by indexing.

Every dataset, whatever its source (torchvision files, an image folder, the built-in generator),
ends up as a `Dataset`: class names plus a train and a test `ImageSet` holding all images as one
uint8 tensor `(N, C, H, W)`. Nothing on the training hot path decodes or transforms per sample.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

DIGITS = tuple(str(d) for d in range(10))


@dataclass
class ImageSet:
    """One split of a dataset, fully decoded."""

    images: torch.Tensor  # uint8 (N, C, H, W)
    labels: torch.Tensor  # int64 (N,), indices into Dataset.classes
    factors: dict[str, torch.Tensor] = field(default_factory=dict)  # known style factors, (N,)

    def __post_init__(self) -> None:
        assert self.images.dtype == torch.uint8 and self.images.dim() == 4, self.images.shape
        assert self.labels.shape == (self.images.shape[0],)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def subset(self, index: torch.Tensor) -> ImageSet:
        return ImageSet(
            self.images[index],
            self.labels[index],
            {k: v[index] for k, v in self.factors.items()},
        )

    def class_counts(self, num_classes: int) -> list[int]:
        return torch.bincount(self.labels, minlength=num_classes).tolist()

    def with_channels(self, channels: int) -> ImageSet:
        """Grey images repeated into `channels` identical channels."""
        if self.images.shape[1] == channels:
            return self
        return ImageSet(expand_channels(self.images, channels), self.labels, dict(self.factors))

    def padded(self, pad: int) -> ImageSet:
        """The images with `pad` black pixels added on every side."""
        if pad == 0:
            return self
        return ImageSet(pad_images(self.images, pad), self.labels, dict(self.factors))


def expand_channels(images: torch.Tensor, channels: int) -> torch.Tensor:
    """Grey uint8 (N, 1, H, W) images repeated into (N, channels, H, W) (one shared trunk)."""
    if images.shape[1] == channels:
        return images
    assert images.shape[1] == 1, "only grey images gain channels"
    return images.expand(-1, channels, -1, -1).contiguous()


def pad_images(images: torch.Tensor, pad: int) -> torch.Tensor:
    """(N, C, H, W) images with `pad` black pixels on every side (`--primary-pad`)."""
    if pad == 0:
        return images
    return torch.nn.functional.pad(images, (pad, pad, pad, pad))  # (N, C, H + 2p, W + 2p)


@dataclass
class Dataset:
    """A named dataset: classes, a train split and a test split of the same image shape."""

    name: str  # as the user wrote it: "mnist", "folder:/data/scans", ...
    classes: list[str]
    train: ImageSet
    test: ImageSet
    root: str  # where its files are (or are cached)
    info: dict[str, Any] = field(default_factory=dict)  # provenance for the manifest

    @property
    def image_shape(self) -> tuple[int, int, int]:
        c, h, w = self.train.images.shape[1:]
        return int(c), int(h), int(w)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def padded(self, pad: int) -> Dataset:
        """The dataset with `pad` black pixels around every image (`--primary-pad`)."""
        return self if pad == 0 else self._map(lambda part: part.padded(pad), padded=pad)

    def with_channels(self, channels: int) -> Dataset:
        """The dataset with grey images turned into `channels`-channel ones (one shared CNN)."""
        if self.image_shape[0] == channels:
            return self
        return self._map(
            lambda part: part.with_channels(channels), channels_from=self.image_shape[0]
        )

    def _map(self, fn: Callable[[ImageSet], ImageSet], **info: Any) -> Dataset:
        """Both splits transformed by `fn`, with `info` added to the manifest's record."""
        return Dataset(
            self.name, self.classes, fn(self.train), fn(self.test), self.root, {**self.info, **info}
        )

    def describe(self) -> dict[str, Any]:
        """What the manifest records about this dataset."""
        return {
            "name": self.name,
            "root": self.root,
            "classes": list(self.classes),
            "image_shape": list(self.image_shape),
            "train_size": len(self.train),
            "test_size": len(self.test),
            "train_per_class": self.train.class_counts(self.num_classes),
            **self.info,
        }


def default_data_dir() -> Path:
    """`$JADE_DATA_DIR`, else the per-user cache folder (`$XDG_CACHE_HOME/jadecli`)."""
    env = os.environ.get("JADE_DATA_DIR")
    if env:
        return Path(env).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache) / "jadecli"
