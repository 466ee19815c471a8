"""USPS and MNIST-M as their authors publish them, besides the image-folder layout.

    DIR/USPS/usps.bz2, DIR/USPS/usps.t.bz2          torchvision's USPS files (libsvm text, bz2)
    DIR/MNIST-M/mnist_m_train/*.png                 the MNIST-M release (Ganin et al.), unpacked
    DIR/MNIST-M/mnist_m_train_labels.txt            "<file name> <digit>" per line
    DIR/MNIST-M/mnist_m_test/*.png, mnist_m_test_labels.txt

`jade train --primary usps --download` fetches the two USPS files through torchvision (the
release's MD5 sums are checked then; files already on disk that differ are read with a warning
and recorded as `verified: false`). MNIST-M has no official download URL that torchvision
knows, so it is never downloaded: unpack `mnist_m.tar.gz` into DIR/MNIST-M/.

    python -c "from pathlib import Path; from jadecli.data.published import mnistm_release_dir; \
print(mnistm_release_dir(Path('data/MNIST-M')))"
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from jadecli.data.core import DIGITS, Dataset, ImageSet
from jadecli.data.memory import MemoryBudget
from jadecli.errors import DataError

Warn = Callable[[str], None]

USPS_FILES = {"train": "usps.bz2", "test": "usps.t.bz2"}
MNISTM_SPLITS = {"train": "mnist_m_train", "test": "mnist_m_test"}


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def load_usps_files(root: Path, download: bool, warn: Warn) -> Dataset:
    """USPS from torchvision's files in `root` (16x16 grey, labels 1..10 -> digits 0..9)."""
    from torchvision import datasets
    from torchvision.datasets.utils import check_integrity

    splits: list[ImageSet] = []
    verified: dict[str, bool] = {}
    for split, filename in USPS_FILES.items():
        path = root / filename
        md5 = datasets.USPS.split_list[split][2]
        if not path.is_file() and download:
            try:
                datasets.USPS(str(root), train=split == "train", download=True)
            except Exception as err:  # network errors come in many types
                raise DataError(
                    f"usps: download of {filename} into {root} failed ({_first_line(err)}); get "
                    "usps.bz2 and usps.t.bz2 from "
                    "https://www.csie.ntu.edu.tw/~cjlin/libsvmtools/datasets/multiclass.html#usps "
                    "and put them there"
                ) from None
        if not path.is_file():
            raise DataError(
                f"usps: found neither the image folders {root}/train/<digit>/ nor torchvision's "
                f"file {path}; put usps.bz2 and usps.t.bz2 in {root}, point --data-dir at the "
                "folder that holds USPS/, or pass --download"
            )
        verified[split] = check_integrity(str(path), md5)
        if not verified[split]:
            warn(
                f"usps: {path} is not the published file (MD5 differs from {md5}); using it "
                "anyway, recorded as verified: false in the manifest"
            )
        try:
            ds = datasets.USPS(str(root), train=split == "train", download=False)
            images = torch.from_numpy(np.ascontiguousarray(ds.data)).unsqueeze(1)  # (N, 1, 16, 16)
            labels = torch.tensor(ds.targets, dtype=torch.long)
        except Exception as err:  # bz2, parse and reshape errors of a damaged file
            raise DataError(
                f"usps: cannot read {path} ({_first_line(err)}); replace it with an intact copy"
            ) from None
        if images.shape[1:] != (1, 16, 16) or len(labels) != len(images):
            raise DataError(f"usps: {path} does not hold 16x16 images; replace it")
        if len(labels) and (labels.min() < 0 or labels.max() > 9):
            raise DataError(f"usps: labels outside 1..10 in {path}; replace it")
        splits.append(ImageSet(images.contiguous(), labels))
    info = {"format": "torchvision", "verified": verified["train"] and verified["test"]}
    return Dataset("usps", list(DIGITS), splits[0], splits[1], root=str(root), info=info)


def mnistm_release_dir(root: Path) -> Path | None:
    """The folder holding the unpacked MNIST-M release under `root` (itself, or a `mnist_m/`
    inside it, as the archive unpacks), else None."""
    for where in (root, root / "mnist_m"):
        if all((where / f"{d}_labels.txt").is_file() for d in MNISTM_SPLITS.values()):
            return where
    return None


def _release_split(where: Path, split: str) -> tuple[list[Path], list[int]]:
    folder = where / MNISTM_SPLITS[split]
    listing = where / f"{MNISTM_SPLITS[split]}_labels.txt"
    paths: list[Path] = []
    labels: list[int] = []
    try:
        lines = listing.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"mnist-m: cannot read {listing} ({_first_line(err)})") from None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2 or not parts[1].isdigit() or int(parts[1]) > 9:
            raise DataError(
                f"mnist-m: {listing} line {number} is not '<file name> <digit 0-9>': {line!r}"
            )
        paths.append(folder / parts[0])
        labels.append(int(parts[1]))
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise DataError(
            f"mnist-m: {len(missing)} image(s) listed in {listing} are missing, e.g. {missing[0]}; "
            "unpack the whole archive again"
        )
    if not paths:
        raise DataError(f"mnist-m: {listing} lists no images")
    return paths, labels


def load_mnistm_release(
    root: Path, size: int | None, flag: str, budget: MemoryBudget | None = None
) -> Dataset:
    """MNIST-M from its unpacked release (32x32 colour PNGs and label lists), decoded with the
    same function as image folders (`jade predict` reads files the same way)."""
    from jadecli.data.folder import _decode_all

    where = mnistm_release_dir(root)
    if where is None:
        raise DataError(f"mnist-m: no MNIST-M release in {root}")
    listed = {split: _release_split(where, split) for split in MNISTM_SPLITS}
    side = size if size is not None else 32
    shape = (3, side, side)
    if budget is not None:
        n = sum(len(paths) for paths, _ in listed.values())
        budget.claim(n, shape, f"{flag} mnist-m", f"{flag}-size")
    workers = min(8, os.cpu_count() or 1)
    splits = [
        ImageSet(_decode_all(paths, shape, workers), torch.tensor(labels, dtype=torch.long))
        for paths, labels in listed.values()
    ]
    info = {"format": "mnist_m release"}
    return Dataset("mnist-m", list(DIGITS), splits[0], splits[1], root=str(where), info=info)
