"""How an image file becomes what a run's model takes: one recipe per dataset role.

Training never decodes files one by one on its hot path: it loads whole datasets into uint8
tensors (`folder.read_image` per file for image folders, `registry.resize_images` for tensor
datasets), then pads them and gives grey data 3 channels beside a colour dataset
(`core.pad_images`, `core.expand_channels`, through `Dataset.padded`/`with_channels` in
`pair.load_pair`), and scales them to [0, 1] per batch (`compute.to_input`). An `ImageRecipe`
composes exactly those functions for single files, so `jade predict` sees a file as training saw
the images of its dataset: same decoding (grey or colour, 16-bit scaling), same resampling, same
size, padding and channels.

    python -c "from jadecli.data.preprocess import ImageRecipe; \
print(ImageRecipe('folder:x', 1, (20, 20), 6, 3, True).input_shape)"
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from jadecli.data.core import expand_channels, pad_images
from jadecli.data.folder import read_image
from jadecli.data.registry import reads_image_files, resize_images


@dataclass(frozen=True)
class ImageRecipe:
    """The preprocessing of one dataset of a run, from its name and the model's input shape."""

    dataset: str  # the dataset's name as trained
    channels: int  # channels the dataset is decoded in: 1 (grey) or 3 (colour)
    size: tuple[int, int]  # (H, W) images are resized to, before padding
    pad: int  # black pixels on every side (--primary-pad / --auxiliary-pad)
    model_channels: int  # channels the model takes (3 for grey beside colour in one trunk)
    from_files: bool  # resized by Pillow as decoded (image folders), else by resize_images

    @classmethod
    def for_model(
        cls, dataset: str, shape: tuple[int, int, int], pad: int, record: dict[str, Any]
    ) -> ImageRecipe:
        """The recipe of a dataset the model takes as `shape` = (C, H, W), padded by `pad`;
        `record` is what the run's manifest says about the dataset (`Dataset.describe()`):
        `channels_from` there means grey images were given `C` channels."""
        c, h, w = shape
        decoded = record.get("channels_from")
        channels = int(decoded) if isinstance(decoded, int) else c
        size = (h - 2 * pad, w - 2 * pad)
        return cls(dataset, channels, size, pad, c, reads_image_files(dataset, record))

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of the model's input."""
        h, w = self.size
        return self.model_channels, h + 2 * self.pad, w + 2 * self.pad

    def read(self, path: Path) -> np.ndarray:
        """One file as its dataset holds it: uint8 (channels, H, W), before padding. A file that
        does not decode raises `folder.UnreadableImage` (a DataError) naming it."""
        if self.from_files:  # image folders are resized by Pillow as each file is decoded
            return read_image(path, self.channels, self.size)
        arr = read_image(path, self.channels)  # tensor datasets: resized after loading
        if arr.shape[1:] == self.size:
            return arr
        images = torch.from_numpy(arr.copy())[None]  # (1, c, h, w), a writable copy
        return resize_images(images, self.size)[0].numpy()

    def finish(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (N, channels, H, W) from `read` -> the model's uint8 (N, C, H', W')."""
        return expand_channels(pad_images(images, self.pad), self.model_channels)

    def load(self, paths: Sequence[Path]) -> torch.Tensor:
        """Files as the model's uint8 (N, C, H, W) input (scale with `compute.to_input`)."""
        h, w = self.size
        out = np.empty((len(paths), self.channels, h, w), dtype=np.uint8)  # (N, c, H, W)
        for i, path in enumerate(paths):
            out[i] = self.read(path)
        return self.finish(torch.from_numpy(out))
