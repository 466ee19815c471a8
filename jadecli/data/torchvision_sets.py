"""MNIST, Fashion-MNIST and SVHN through torchvision's dataset classes, decoded to uint8 tensors.

Files live where torchvision expects them under `--data-dir`:

    DIR/MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte
    DIR/FashionMNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte
    DIR/SVHN/{train,test}_32x32.mat

A missing file is a `DataError` naming every file and folder expected; `--download` first tries
torchvision's download. SVHN files are checked against the official MD5 sums: the official files
load through `torchvision.datasets.SVHN`; a file that differs (a subset, a re-export, the tiny
files of our tests) is read the same way with scipy, and the run records `verified: false` and
warns, rather than pretending it is the official data.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from jadecli.data.core import DIGITS, Dataset, ImageSet
from jadecli.errors import DataError

Warn = Callable[[str], None]

_IDX_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
FASHION_CLASSES = (
    "t-shirt",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle-boot",
)


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def load_idx_dataset(name: str, data_dir: Path, download: bool) -> Dataset:
    """`mnist` or `fashion-mnist` via torchvision's MNIST / FashionMNIST classes."""
    from torchvision import datasets

    cls = datasets.MNIST if name == "mnist" else datasets.FashionMNIST
    classes = list(DIGITS) if name == "mnist" else list(FASHION_CLASSES)
    raw = data_dir / cls.__name__ / "raw"
    missing = [f for f in _IDX_FILES if not (raw / f).is_file()]
    if missing and download:
        try:
            cls(str(data_dir), train=True, download=True)
        except Exception as err:  # network errors come in many types
            raise DataError(
                f"{name}: download into {raw} failed ({_first_line(err)}); copy the files "
                f"{', '.join(_IDX_FILES)} there by hand"
            ) from None
        missing = [f for f in _IDX_FILES if not (raw / f).is_file()]
    if missing:
        what = "all four IDX files" if len(missing) == len(_IDX_FILES) else "some IDX files"
        raise DataError(
            f"{name}: {what} are missing in {raw} (missing: {', '.join(missing)}); put the "
            f"uncompressed files there, point --data-dir at the folder that holds "
            f"{cls.__name__}/raw, or pass --download"
        )
    splits = []
    for train in (True, False):
        try:
            ds = cls(str(data_dir), train=train, download=False)
        except Exception as err:
            raise DataError(
                f"{name}: cannot read the IDX files in {raw} ({_first_line(err)}); "
                "replace them with intact copies"
            ) from None
        images = ds.data
        if images.dim() != 3 or images.dtype != torch.uint8 or len(images) != len(ds.targets):
            raise DataError(
                f"{name}: the IDX files in {raw} are malformed (images {tuple(images.shape)}, "
                f"labels {tuple(ds.targets.shape)}); replace them with intact copies"
            )
        labels = ds.targets.long()
        if len(labels) and (labels.min() < 0 or labels.max() >= len(classes)):
            raise DataError(f"{name}: labels outside 0..{len(classes) - 1} in {raw}")
        splits.append(ImageSet(images.unsqueeze(1).contiguous(), labels))  # (N, 1, 28, 28)
    return Dataset(name, classes, splits[0], splits[1], root=str(raw))


def load_svhn(data_dir: Path, download: bool, warn: Warn) -> Dataset:
    """SVHN cropped digits (`train_32x32.mat`, `test_32x32.mat`), label 10 -> class '0'."""
    from torchvision import datasets
    from torchvision.datasets.utils import check_integrity

    root = data_dir / "SVHN"
    splits: list[ImageSet] = []
    verified: dict[str, bool] = {}
    for split in ("train", "test"):
        _url, filename, md5 = datasets.SVHN.split_list[split]
        path = root / filename
        if not path.is_file() and download:
            try:
                datasets.SVHN(str(root), split=split, download=True)
            except Exception as err:
                raise DataError(
                    f"svhn: download of {filename} into {root} failed ({_first_line(err)}); "
                    "get train_32x32.mat and test_32x32.mat from "
                    "http://ufldl.stanford.edu/housenumbers/ and put them there"
                ) from None
        if not path.is_file():
            raise DataError(
                f"svhn: missing {path}; put train_32x32.mat and test_32x32.mat (from "
                f"http://ufldl.stanford.edu/housenumbers/) in {root}, point --data-dir at the "
                "folder that holds SVHN/, or pass --download"
            )
        official = check_integrity(str(path), md5)
        verified[split] = official
        if official:
            ds = datasets.SVHN(str(root), split=split, download=False)
            x, y = ds.data, ds.labels  # (N, 3, 32, 32) uint8, (N,) with 10 already mapped to 0
        else:
            warn(
                f"svhn: {path} is not the official file (MD5 differs from {md5}); using it "
                "anyway, recorded as verified: false in the manifest"
            )
            x, y = _read_svhn_mat(path)
        splits.append(
            ImageSet(torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(y).long())
        )
    return Dataset(
        "svhn",
        list(DIGITS),
        splits[0],
        splits[1],
        root=str(root),
        info={"verified": verified},
    )


def _read_svhn_mat(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Read an SVHN-format .mat exactly as torchvision does: X (32, 32, 3, N), y (N, 1)."""
    import scipy.io

    try:
        mat = scipy.io.loadmat(os.fspath(path))
    except Exception as err:
        raise DataError(
            f"svhn: cannot read {path} as a MATLAB file ({_first_line(err)}); replace it with "
            "the official file"
        ) from None
    if "X" not in mat or "y" not in mat:
        raise DataError(f"svhn: {path} has no 'X' and 'y' arrays; it is not an SVHN .mat file")
    x, y = mat["X"], mat["y"]
    if x.ndim != 4 or x.shape[2] != 3 or x.dtype != np.uint8 or y.size != x.shape[3]:
        raise DataError(
            f"svhn: {path} holds X {x.shape} {x.dtype} and y {y.shape}; expected X (32, 32, 3, N) "
            "uint8 and y with N labels"
        )
    labels = y.astype(np.int64).reshape(-1)
    if labels.size and (labels.min() < 0 or labels.max() > 10):
        raise DataError(f"svhn: {path} has labels outside 0..10")
    labels[labels == 10] = 0  # SVHN stores the digit 0 as label 10
    return np.transpose(x, (3, 2, 0, 1)), labels  # (N, 3, 32, 32) as torchvision orders it
