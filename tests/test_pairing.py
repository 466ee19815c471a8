"""Same-class pairs inside real training batches, the labeled subset across models, and the
manifest's shape.

The pairing test reads each image's class and identity from its pixels (a bar whose row encodes
the class, two pixels that encode the image's index), so it checks what the model is really fed,
not the sampler's bookkeeping: the primary is an image folder whose class folders sort in another
order than Fashion-MNIST's classes, so the auxiliary's labels must be remapped by name.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

import jadecli.batches
from jadecli.cli import app
from jadecli.config import TrainConfig, field_names
from jadecli.data.torchvision_sets import FASHION_CLASSES
from tests.helpers import TINY, write_idx_images, write_idx_labels

SIZE = 28
BAR_ROW = {k * (SIZE - 2) // 10: k for k in range(10)}  # bar row -> index in FASHION_CLASSES
SORTED = sorted(FASHION_CLASSES)  # the folder dataset's class order
assert list(FASHION_CLASSES) != SORTED


def coded_images(kinds: np.ndarray, ids: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(N, 28, 28) uint8: a bright bar at the row of the class (by its Fashion-MNIST index), and
    the image's id in the last row's first two pixels."""
    out = rng.integers(0, 40, size=(len(kinds), SIZE, SIZE)).astype(np.uint8)
    for i, (k, ident) in enumerate(zip(kinds, ids, strict=True)):
        r = int(k) * (SIZE - 2) // 10
        out[i, r : r + 2, 2 : SIZE - 2] = 255
        out[i, SIZE - 1, :2] = (int(ident) // 256, int(ident) % 256)
    return out


def decode(x: torch.Tensor) -> tuple[list[str], list[int]]:
    """Class names and ids of a batch (B, C, 28, 28) in [0, 1]."""
    px = (x[:, 0] * 255).round().long()  # (B, 28, 28)
    bright = px[:, : SIZE - 2].float().mean(2) > 150  # (B, 26): the bar's two rows
    rows = bright.int().argmax(1)  # its first row
    names = [FASHION_CLASSES[BAR_ROW[int(r)]] for r in rows]
    ids = (px[:, SIZE - 1, 0] * 256 + px[:, SIZE - 1, 1]).tolist()
    return names, ids


@pytest.fixture()
def fashion_pair(tmp_path: Path) -> Path:
    """DATA/FashionMNIST/raw: 8 train images per class in a random order (ids: positions in the
    file; labels in Fashion-MNIST's class order); DATA/primary/{train,test}/<class>/NNN.png: 6
    per class (ids: dataset indices, class folders sorted by name)."""
    rng = np.random.default_rng(0)
    raw = tmp_path / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for prefix, n in (("train", 8), ("t10k", 2)):
        kinds = rng.permutation(np.repeat(np.arange(10), n))  # classes in a random order
        images = coded_images(kinds, np.arange(len(kinds)), rng)  # id = position in the file
        write_idx_images(raw / f"{prefix}-images-idx3-ubyte", images)
        write_idx_labels(raw / f"{prefix}-labels-idx1-ubyte", kinds)
    for split, n in (("train", 6), ("test", 2)):
        for pos, name in enumerate(SORTED):
            folder = tmp_path / "primary" / split / name
            folder.mkdir(parents=True)
            k = FASHION_CLASSES.index(name)
            images = coded_images(np.full(n, k), pos * n + np.arange(n), rng)
            for i, img in enumerate(images):
                Image.fromarray(img).save(folder / f"{i:03d}.png")
    return tmp_path


@pytest.mark.parametrize("aux_per_class", [None, 3])
def test_every_training_pair_is_one_class_under_remapping(
    runner, fashion_pair, tmp_path, monkeypatch, aux_per_class
):
    seen: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
    real_batch = jadecli.batches.Batches._batch

    def recording(self, idx, weight):
        b = real_batch(self, idx, weight)
        seen.append((b.x_aux.clone(), b.x_primary.clone(), b.y.clone()))
        return b

    monkeypatch.setattr(jadecli.batches.Batches, "_batch", recording)
    out = tmp_path / "run"
    args = ["train", "--primary", f"folder:{fashion_pair / 'primary'}"]
    args += ["--auxiliary", "fashion-mnist", "--data-dir", str(fashion_pair), "--out", str(out)]
    args += ["--n-labeled", "40", "--augment", "none", *TINY]  # 4 of 6 primary images per class
    args += ["--epoch-size", "60", "--batch-size", "20"]
    if aux_per_class:
        args += ["--aux-per-class", str(aux_per_class)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert len(seen) == 6  # 2 epochs x 3 steps

    aux_ids: set[int] = set()
    primary_ids: set[int] = set()
    for xa, xp, y in seen:
        aux_names, a_ids = decode(xa)
        primary_names, p_ids = decode(xp)
        assert aux_names == primary_names  # the same class, by what the images show
        assert [SORTED[int(c)] for c in y] == primary_names  # and the label says so too
        aux_ids.update(a_ids)
        primary_ids.update(p_ids)

    # the auxiliary images trained on: all 80, or the first K of each class in file order
    labels = np.frombuffer(
        (fashion_pair / "FashionMNIST/raw/train-labels-idx1-ubyte").read_bytes()[8:], np.uint8
    )
    first = {i for k in range(10) for i in np.flatnonzero(labels == k)[: aux_per_class or 8]}
    assert aux_ids == first
    with open(out / "labeled_indices.csv", newline="") as fh:
        labeled = {int(r["index"]) for r in csv.DictReader(fh)}
    assert primary_ids == labeled and len(labeled) == 40


def test_single_paired_and_jade_share_the_labeled_subset_at_one_seed(trained_runs):
    texts = {m: (run / "labeled_indices.csv").read_text() for m, run in trained_runs.items()}
    assert texts["single"] == texts["paired"] == texts["jade"]
    assert len(texts["jade"].splitlines()) == 1 + 50


# --------------------------------------------------------------------------- the manifest

# Every key of a finished JADE run's manifest.yaml and the type of its value (nested mappings
# by their own keys, list items of `events` as `events.[].key`). Scripts read this file: a renamed
# key or a changed type breaks them, so it changes here on purpose or not at all. `config` is
# checked against TrainConfig, and a dataset's own description of itself (here the synthetic
# generator's factors) may vary by dataset.
MANIFEST = {
    "schema_version": "int",
    "jadecli_version": "str",
    "command": "str",
    "status": "str",
    "started_at": "str",
    "ended_at": "str",
    "seed": "int",
    "device": "str",
    "precision": "str",
    "precision_reason": "str",  # e.g. "native on this CPU (avx512_bf16)"
    "compile": "str",  # "on", "off", or why it is off
    "threads": "int",
    "versions.python": "str",
    "versions.torch": "str",
    "versions.torchvision": "str",
    "versions.numpy": "str",
    "versions.platform": "str",
    "datasets.primary.name": "str",
    "datasets.primary.root": "str",
    "datasets.primary.classes": "list",
    "datasets.primary.image_shape": "list",
    "datasets.primary.train_size": "int",
    "datasets.primary.test_size": "int",
    "datasets.primary.train_per_class": "list",
    "datasets.primary.labeled.size": "int",
    "datasets.primary.labeled.per_class": "list",
    "datasets.primary.labeled.selection": "str",
    "datasets.primary.labeled.file": "str",
    "datasets.auxiliary.name": "str",
    "datasets.auxiliary.root": "str",
    "datasets.auxiliary.classes": "list",
    "datasets.auxiliary.image_shape": "list",
    "datasets.auxiliary.train_size": "int",
    "datasets.auxiliary.test_size": "int",
    "datasets.auxiliary.train_per_class": "list",
    "datasets.auxiliary.channels_from": "int",
    "datasets.auxiliary.used_train_size": "int",
    "datasets.auxiliary.used_per_class": "list",
    "training.epoch_size": "int",
    "training.steps_per_epoch": "int",
    "training.total_steps": "int",
    "training.schedule_steps": "int",
    "training.parameters": "int",
    "epochs_completed": "int",
    "final_metrics.primary_test_accuracy": "float",
    "final_metrics.auxiliary_test_accuracy": "float",
    "final_metrics.primary_train_accuracy": "float",
    "final_metrics.primary_val_accuracy": "NoneType",  # a float with --val
    "final_metrics.loss": "float",
    "final_metrics.class_kept_primary": "float",  # JADE: its decoders (jadecli.generative)
    "final_metrics.class_kept_aux": "float",
    "final_metrics.swap_kept_aux_to_primary": "float",
    "final_metrics.swap_kept_primary_to_aux": "float",
    "final_metrics.selection": "str",
    "final_metrics.selected_epoch": "int",
    "checkpoints.last": "str",
    "checkpoints.selected": "str",
    "metrics_file": "str",
    "error": "NoneType",
    "events.[].time": "str",
    "events.[].event": "str",
    "events.[].command": "str",
    "train_seconds": "float",
    "distributed.world_size": "int",  # 1 without torchrun
    "distributed.backend": "NoneType",  # "gloo", "cpu:gloo,cuda:nccl" under torchrun
    "distributed.devices": "list",
}
SYNTH_INFO = {"generator_version", "style_factors", "categorical_factors", "factor_levels"}


def structure(value: object, prefix: str = "") -> dict[str, str]:
    if isinstance(value, dict):
        out: dict[str, str] = {}
        for key, sub in value.items():
            if key not in SYNTH_INFO:
                out.update(structure(sub, f"{prefix}{key}."))
        return out
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        items: dict[str, str] = {}
        for sub in value:
            items.update(structure(sub, f"{prefix}[]."))
        return items
    return {prefix[:-1]: type(value).__name__}


def test_the_manifest_keys_and_types_are_stable(trained_runs):
    manifest = yaml.safe_load((trained_runs["jade"] / "manifest.yaml").read_text())
    config = manifest.pop("config")
    assert structure(manifest) == MANIFEST
    assert list(config) == field_names(TrainConfig)
    assert TrainConfig.from_dict(config).to_dict() == config
