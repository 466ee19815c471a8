"""Image-folder datasets: `PATH/train/<class>/*` and `PATH/test/<class>/*`.

This is how users bring their own data (scans of a rare disease, a lab's own digits). Any image
format Pillow reads is accepted, in any mode and size:

- grayscale modes stay one channel; if any training image is in colour the whole dataset
  becomes RGB (else colour test images are read as grey);
- 16-bit and float images (common for scans) are scaled per image from their min..max to 0..255,
  because a plain conversion would clip them to white;
- images of different sizes are resized (bilinear, antialiased) to `size` x `size` when given,
  else to the most common size among the training images, with a warning.

Only the training split decides the channels and the size, so adding test images never changes
what the model is trained on.

Files without an image extension (notes, .DS_Store, ...) are skipped with a warning; a file
with an image extension that does not decode is an error naming it. A first pass reads only the
headers (size, mode); then the run's memory budget is asked for the bytes, and the images are
decoded, in a thread pool, straight into one preallocated uint8 tensor per split.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from jadecli.data.core import Dataset, ImageSet
from jadecli.data.memory import MemoryBudget
from jadecli.errors import DataError

Warn = Callable[[str], None]

MAX_SIDE = 1024  # the largest image side the models take (--primary-size's range)
_GRAY_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F", "La"}


def image_extensions() -> set[str]:
    """Every file extension Pillow can open (lower case, with the dot)."""
    return {ext.lower() for ext in Image.registered_extensions()}


def list_class_files(split_dir: Path) -> tuple[list[str], dict[str, list[Path]], list[Path]]:
    """Classes (sorted sub-folders), their image files (recursive, sorted) and skipped files."""
    classes = sorted(
        entry.name
        for entry in os.scandir(split_dir)
        if entry.is_dir() and not entry.name.startswith(".")
    )
    files: dict[str, list[Path]] = {}
    skipped: list[Path] = []
    for cls in classes:
        files[cls], not_images = walk_images(split_dir / cls)
        skipped += not_images
    return classes, files, skipped


def walk_images(folder: Path) -> tuple[list[Path], list[Path]]:
    """(image files, other files) under `folder`, recursively and sorted; hidden folders are
    not entered, hidden files count as other files."""
    exts = image_extensions()
    found: list[Path] = []
    skipped: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for fname in sorted(filenames):
            path = Path(dirpath) / fname
            if fname.startswith(".") or path.suffix.lower() not in exts:
                skipped.append(path)
            else:
                found.append(path)
    return found, skipped


class UnreadableImage(DataError):
    """A file with an image extension that does not decode; `reason` is Pillow's, one line."""

    def __init__(self, path: Path, reason: str) -> None:
        self.path, self.reason = path, reason
        super().__init__(f"cannot decode image {path} ({reason}); fix or remove the file")


def _unreadable(path: Path, err: BaseException) -> DataError:
    reason = str(err).splitlines()[0] if str(err) else type(err).__name__
    return UnreadableImage(path, reason)


def probe(path: Path) -> tuple[bool, tuple[int, int]]:
    """(is colour, (H, W)) of an image from its header alone, without decoding its pixels; a
    file Pillow cannot open raises `UnreadableImage`."""
    try:
        with Image.open(path) as img:
            return img.mode not in _GRAY_MODES, (img.height, img.width)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as err:
        raise _unreadable(path, err) from None


def _decode(path: Path, grey: bool) -> np.ndarray:
    """One image as uint8 (H, W) if `grey` (colour images converted), else (H, W, 3)."""
    try:
        with Image.open(path) as img:
            img.load()
            mode = img.mode
            if mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
                arr = np.asarray(img, dtype=np.float64)
                lo, hi = float(arr.min()), float(arr.max())
                scaled = (arr - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(arr)
                return np.rint(scaled).astype(np.uint8)
            if grey or mode in _GRAY_MODES:
                return np.asarray(img.convert("L"), dtype=np.uint8)
            return np.asarray(img.convert("RGB"), dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as err:
        raise _unreadable(path, err) from None


def _resize(arr: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    h, w = size
    if arr.shape[:2] == (h, w):
        return arr
    img = Image.fromarray(arr)
    return np.asarray(img.resize((w, h), Image.Resampling.BILINEAR, reducing_gap=None))


def read_image(path: Path, channels: int, size: tuple[int, int] | None = None) -> np.ndarray:
    """One image file as an image-folder dataset holds it: uint8 (channels, H, W), resized to
    `size` = (H, W) when given (else its own size). Training (`_fill`) and `jade predict` both
    read files through this. A file that does not decode raises a DataError naming it."""
    arr = _decode(path, grey=channels == 1)
    if size is not None:
        arr = _resize(arr, size)
    h, w = arr.shape[:2]
    if arr.ndim == 2:
        return arr[None] if channels == 1 else np.broadcast_to(arr, (3, h, w))
    return arr.transpose(2, 0, 1)  # (3, H, W), a view


def _fill(out: np.ndarray, i: int, path: Path) -> None:
    """Decode image `i` straight into its slot of the preallocated (N, C, H, W) array."""
    channels, h, w = out.shape[1:]
    out[i] = read_image(path, channels, (h, w))


def _decode_all(paths: list[Path], shape: tuple[int, int, int], workers: int) -> torch.Tensor:
    """All images of one split as one uint8 (N, C, H, W) tensor, allocated once: peak memory is
    the result, not a list of decoded images beside it."""
    out = np.empty((len(paths), *shape), dtype=np.uint8)  # (N, C, H, W)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for _ in pool.map(lambda item: _fill(out, *item), enumerate(paths), chunksize=64):
            pass
    return torch.from_numpy(out)


Listing = tuple[list[str], dict[str, list[Path]], dict[str, list[int]], list[Path]]


def _list_splits(root: Path, where: str, spec: str, warn: Warn) -> Listing:
    """Classes, each split's image paths and labels (class indices), and the skipped files."""
    if not root.exists():
        raise DataError(f"{where}: no such folder {root}")
    if not root.is_dir():
        raise DataError(f"{where}: {root} is not a folder")
    for split in ("train", "test"):
        if not (root / split).is_dir():
            raise DataError(
                f"{where}: missing {root / split}; an image folder dataset needs "
                f"{root}/train/<class>/ and {root}/test/<class>/ sub-folders"
            )
    listing: dict[str, tuple[list[str], dict[str, list[Path]]]] = {}
    skipped_all: list[Path] = []
    for split in ("train", "test"):
        classes, files, skipped = list_class_files(root / split)
        skipped_all += skipped
        if not classes:
            raise DataError(
                f"{where}: {root / split} has no class folders; put each class's images in "
                f"{root / split}/<class name>/"
            )
        empty = [c for c in classes if not files[c]]
        if empty and split == "train":
            raise DataError(
                f"{where}: class folder(s) {', '.join(empty)} in {root / split} hold no images"
            )
        listing[split] = ([c for c in classes if files[c]], files)
    classes = listing["train"][0]
    extra = sorted(set(listing["test"][0]) - set(classes))
    if extra:
        raise DataError(
            f"{where}: {root / 'test'} has classes that {root / 'train'} lacks: {', '.join(extra)}"
        )
    if skipped_all:
        example = skipped_all[0]
        warn(
            f"{spec}: skipped {len(skipped_all)} file(s) that are not images Pillow reads "
            f"(e.g. {example})"
        )

    paths: dict[str, list[Path]] = {}
    labels: dict[str, list[int]] = {}
    for split in ("train", "test"):
        files = listing[split][1]
        paths[split] = [p for c in classes for p in files.get(c, [])]
        labels[split] = [i for i, c in enumerate(classes) for _ in files.get(c, [])]
    return classes, paths, labels, skipped_all


def load_image_folder(
    spec: str,
    root: Path,
    size: int | None,
    warn: Warn,
    flag: str = "--primary",
    budget: MemoryBudget | None = None,
) -> Dataset:
    """Load `folder:PATH` into memory; `flag` names the option in error messages; `budget`
    is asked for the bytes before any image is decoded."""
    where = f"{flag} {spec}"
    classes, paths, labels, skipped_all = _list_splits(root, where, spec, warn)
    workers = min(8, os.cpu_count() or 1)
    # Pass 1, headers only: the common size and grey-vs-colour are decided by the training
    # split alone (test images follow it), and the bytes needed are known before allocating.
    with ThreadPoolExecutor(max_workers=workers) as pool:
        probed = {s: list(pool.map(probe, paths[s], chunksize=64)) for s in ("train", "test")}
    channels = 3 if any(colour for colour, _ in probed["train"]) else 1
    sizes = Counter(hw for _, hw in probed["train"])
    if size is not None:
        target = (size, size)
    else:
        target = sizes.most_common(1)[0][0]
        if len(sizes) > 1:
            warn(
                f"{spec}: training images come in {len(sizes)} sizes; resizing all to the most "
                f"common, {target[0]}x{target[1]} (set {flag}-size to choose)"
            )
        if max(target) > MAX_SIDE:
            raise DataError(
                f"{where}: the images are {target[0]}x{target[1]}, larger than the {MAX_SIDE} px "
                f"the models take; pass {flag}-size N (e.g. 224)"
            )
    if channels == 1 and any(colour for colour, _ in probed["test"]):
        warn(f"{spec}: the training images are grey; colour test images are read as grey")
    shape = (channels, target[0], target[1])
    if budget is not None:
        budget.claim(len(paths["train"]) + len(paths["test"]), shape, where, f"{flag}-size")
    splits = [
        ImageSet(_decode_all(paths[s], shape, workers), torch.tensor(labels[s], dtype=torch.long))
        for s in ("train", "test")
    ]
    all_sizes = sizes + Counter(hw for _, hw in probed["test"])
    info = {
        "source_sizes": sorted(f"{h}x{w}" for h, w in all_sizes),
        "skipped_files": len(skipped_all),
    }
    return Dataset(spec, classes, splits[0], splits[1], root=str(root.resolve()), info=info)
