"""Dataset names -> in-memory `Dataset`s, and the primary/auxiliary pair with aligned classes.

| name | source |
| --- | --- |
| `mnist`, `fashion-mnist` | torchvision IDX files in `DIR/MNIST/raw`, `DIR/FashionMNIST/raw` |
| `svhn` | `DIR/SVHN/{train,test}_32x32.mat` |
| `usps` | image folders `DIR/USPS/{train,test}/<digit>/`, or torchvision's `DIR/USPS/usps.bz2` |
| `mnist-m` | image folders `DIR/MNIST-M/{train,test}/<digit>/`, or the unpacked release |
| `synth-street`, `synth-hand` | generated from a fixed seed, cached in `DIR/synth/` |
| `folder:PATH` | your own image folders, `PATH/{train,test}/<class>/*` |
"""

from __future__ import annotations

import io
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from jadecli.config.options import DATASETS
from jadecli.data.core import DIGITS, Dataset, ImageSet
from jadecli.data.folder import load_image_folder
from jadecli.data.memory import MemoryBudget
from jadecli.errors import DataError

Warn = Callable[[str], None]

# name -> (train size, test size, train seed, test seed); the data are fixed, runs vary by --seed.
SYNTH = {
    "synth-street": (10_000, 2_000, 1001, 1002),
    "synth-hand": (12_000, 2_000, 2001, 2002),
}
FOLDER_BUILTINS = {"usps": "USPS", "mnist-m": "MNIST-M"}
BUILTIN_NAMES = DATASETS  # the names the config accepts


def known_names() -> str:
    return ", ".join(BUILTIN_NAMES) + ", folder:PATH"


def reads_image_files(spec: str, info: dict[str, Any]) -> bool:
    """Whether dataset `spec` was decoded from image files, each resized by Pillow as it is
    decoded (`folder.read_image`), rather than loaded as tensors resized as a whole
    (`resize_images`). `info` is what the run recorded about it: USPS comes either way."""
    if spec.startswith("folder:"):
        return True
    return spec in FOLDER_BUILTINS and info.get("format") != "torchvision"


def load_dataset(
    spec: str,
    data_dir: Path,
    download: bool,
    size: int | None,
    warn: Warn,
    flag: str = "--primary",
    budget: MemoryBudget | None = None,
) -> Dataset:
    """Load one dataset by name; `flag` names the option in error messages. `budget` is asked
    for the bytes of the images before they are decoded or resized."""
    if spec.startswith("folder:"):
        path = spec[len("folder:") :]
        if not path:
            raise DataError(f"{flag} folder: needs a path, e.g. {flag} folder:data/scans")
        return load_image_folder(spec, Path(path).expanduser(), size, warn, flag, budget)
    if spec in ("mnist", "fashion-mnist"):
        from jadecli.data.torchvision_sets import load_idx_dataset

        ds = load_idx_dataset(spec, data_dir, download)
    elif spec == "svhn":
        from jadecli.data.torchvision_sets import load_svhn

        ds = load_svhn(data_dir, download, warn)
    elif spec in FOLDER_BUILTINS and (data_dir / FOLDER_BUILTINS[spec] / "train").is_dir():
        ds = load_image_folder(spec, data_dir / FOLDER_BUILTINS[spec], size, warn, flag, budget)
        ds.name = spec
        return ds
    elif spec == "usps":  # torchvision's usps.bz2 / usps.t.bz2, fetched with --download
        from jadecli.data.published import load_usps_files

        ds = load_usps_files(data_dir / "USPS", download, warn)
    elif spec == "mnist-m":
        from jadecli.data.published import load_mnistm_release, mnistm_release_dir

        root = data_dir / "MNIST-M"
        if mnistm_release_dir(root) is None:
            raise DataError(
                f"mnist-m: expected the image folders {root}/train/<digit>/ and "
                f"{root}/test/<digit>/, or the unpacked MNIST-M release ({root}/mnist_m_train/ "
                "and mnist_m_train_labels.txt, the same for test); point --data-dir at the "
                f"folder that holds MNIST-M/, or use {flag} folder:PATH"
            )
        return load_mnistm_release(root, size, flag, budget)
    elif spec in SYNTH:
        ds = load_synth(spec, data_dir, warn)
    else:
        raise DataError(f"{flag} {spec!r}: unknown dataset; use one of {known_names()}")
    if budget is not None:  # the files' own images are small (digits); resizing may not be
        c, h, w = ds.image_shape
        side = (size, size) if size is not None else (h, w)
        budget.claim(len(ds.train) + len(ds.test), (c, *side), f"{flag} {spec}", f"{flag}-size")
    if size is not None:
        ds.train.images = resize_images(ds.train.images, size)
        ds.test.images = resize_images(ds.test.images, size)
    return ds


def resize_images(images: torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    """Bilinear, antialiased resize of uint8 (N, C, H, W) images to (N, C, size, size), or to
    (N, C, H', W') for `size` = (H', W')."""
    sh, sw = (size, size) if isinstance(size, int) else size
    if images.shape[-2:] == (sh, sw):
        return images
    n, c, h, w = images.shape
    out = torch.empty((n, c, sh, sw), dtype=torch.uint8)  # the result, allocated once
    step = max(1, 2**24 // (c * max(h * w, sh * sw)))  # float temporaries of ~64 MB
    for i in range(0, n, step):
        chunk = images[i : i + step].float()
        x = F.interpolate(chunk, size=(sh, sw), mode="bilinear", antialias=True)
        out[i : i + step] = x.round().clamp(0, 255).to(torch.uint8)
    return out


def load_synth(name: str, data_dir: Path, warn: Warn) -> Dataset:
    """The built-in pair, generated once and cached under `DIR/synth/`."""
    from jadecli.data import synthetic

    n_train, n_test, seed_train, seed_test = SYNTH[name]
    cache = data_dir / "synth" / f"{name}-v{synthetic.SYNTH_VERSION}.pt"
    payload = None
    if cache.is_file():
        try:
            payload = torch.load(cache, map_location="cpu", weights_only=True)
            _check_synth_payload(payload, n_train, n_test)
        except Exception:
            warn(f"{name}: the cache {cache} is unreadable; generating the data again")
            payload = None
    if payload is None:
        gen = synthetic.generate_street if name == "synth-street" else synthetic.generate_hand
        payload = {}
        for split, n, seed in (("train", n_train, seed_train), ("test", n_test, seed_test)):
            s = gen(n, seed)
            payload[split] = {
                "images": s.images,
                "labels": s.labels,
                "factors": dict(s.factors),
                "categorical": list(s.categorical),
                "factor_levels": {k: list(v) for k, v in s.factor_levels.items()},
            }
        _save_cache(cache, payload, warn)
    splits = [
        ImageSet(payload[s]["images"], payload[s]["labels"].long(), dict(payload[s]["factors"]))
        for s in ("train", "test")
    ]
    info = {
        "generator_version": synthetic.SYNTH_VERSION,
        "style_factors": sorted(payload["train"]["factors"]),
        "categorical_factors": list(payload["train"]["categorical"]),
        "factor_levels": payload["train"]["factor_levels"],
    }
    return Dataset(name, list(DIGITS), splits[0], splits[1], root=str(cache.parent), info=info)


def _check_synth_payload(payload: dict, n_train: int, n_test: int) -> None:
    for split, n in (("train", n_train), ("test", n_test)):
        part = payload[split]
        if part["images"].dtype != torch.uint8 or part["images"].shape[0] != n:
            raise ValueError("stale cache")
        if part["labels"].shape != (n,):
            raise ValueError("stale cache")


def _save_cache(path: Path, payload: dict, warn: Warn) -> None:
    """Cache generated data (written whole, then renamed); a failure only costs a warning."""
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        buf = io.BytesIO()
        torch.save(payload, buf)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
        with open(fd, "wb") as fh:
            fh.write(buf.getbuffer())
        os.replace(tmp, path)
    except OSError as err:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        warn(f"could not cache the generated data in {path.parent} ({err.strerror}); continuing")


def align_classes(primary: Dataset, auxiliary: Dataset) -> None:
    """Make the auxiliary's label indices follow the primary's class order (matched by name)."""
    p, a = set(primary.classes), set(auxiliary.classes)
    if p != a:
        only_p = ", ".join(sorted(p - a)) or "-"
        only_a = ", ".join(sorted(a - p)) or "-"
        raise DataError(
            f"the primary ({primary.name}) and auxiliary ({auxiliary.name}) datasets must have "
            f"the same class names; primary classes: {', '.join(primary.classes)}; auxiliary "
            f"classes: {', '.join(auxiliary.classes)} (only in primary: {only_p}; only in "
            f"auxiliary: {only_a})"
        )
    if primary.classes == auxiliary.classes:
        return
    remap = torch.tensor([primary.classes.index(c) for c in auxiliary.classes], dtype=torch.long)
    auxiliary.train.labels = remap[auxiliary.train.labels]
    auxiliary.test.labels = remap[auxiliary.test.labels]
    auxiliary.classes = list(primary.classes)
