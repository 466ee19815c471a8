"""Helpers the tests share: tiny datasets written in the real on-disk formats, the tiny
training settings of end-to-end tests, and ways to run the example scripts as a shell would."""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def write_idx_images(path: Path, images: np.ndarray) -> None:
    """IDX3 (big-endian) as in the official MNIST files: magic 0x00000803, N, H, W, bytes."""
    n, h, w = images.shape
    path.write_bytes(struct.pack(">IIII", 0x803, n, h, w) + images.astype(np.uint8).tobytes())


def write_idx_labels(path: Path, labels: np.ndarray) -> None:
    path.write_bytes(struct.pack(">II", 0x801, len(labels)) + labels.astype(np.uint8).tobytes())


def digit_like(labels: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """Images whose class is learnable: a bright bar whose position encodes the label."""
    n = len(labels)
    out = rng.integers(0, 40, size=(n, size, size)).astype(np.uint8)
    for i, y in enumerate(labels):
        r = int(y) * (size - 2) // 10
        out[i, r : r + 2, 2 : size - 2] = 255
    return out


def make_mnist(root: Path, n_train: int = 200, n_test: int = 50, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = np.arange(n) % 10
        write_idx_images(raw / f"{prefix}-images-idx3-ubyte", digit_like(labels, 28, rng))
        write_idx_labels(raw / f"{prefix}-labels-idx1-ubyte", labels)
    return root


def make_svhn(root: Path, n_train: int = 120, n_test: int = 40, seed: int = 0) -> Path:
    """SVHN-format .mat files: X (32, 32, 3, N) uint8, y (N, 1) with the digit 0 stored as 10."""
    import scipy.io

    rng = np.random.default_rng(seed)
    folder = root / "SVHN"
    folder.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("test", n_test)):
        digits = np.arange(n) % 10
        gray = digit_like(digits, 32, rng)  # (N, 32, 32)
        x = np.stack([gray, 255 - gray, gray // 2], axis=-1)  # (N, 32, 32, 3)
        y = np.where(digits == 0, 10, digits).reshape(-1, 1).astype(np.uint8)
        scipy.io.savemat(folder / f"{split}_32x32.mat", {"X": x.transpose(1, 2, 3, 0), "y": y})
    return root


def make_folder(
    root: Path,
    classes: tuple[str, ...] = ("a", "b", "c"),
    n_train: int = 12,
    n_test: int = 4,
    size: int = 20,
    mode: str = "L",
    seed: int = 0,
) -> Path:
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("test", n_test)):
        for ci, cls in enumerate(classes):
            d = root / split / cls
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                arr = rng.integers(0, 60, size=(size, size)).astype(np.uint8)
                arr[:, ci * size // len(classes) : (ci + 1) * size // len(classes)] = 230
                img = Image.fromarray(arr)
                if mode != "L":
                    img = img.convert(mode)
                img.save(d / f"{i}.png")
    return root


def fingerprint(run: Path) -> dict[str, bytes]:
    """Every file of a run folder, by relative path, with its bytes."""
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}


# Small but real training settings for end-to-end tests: CPU semantics (bit-exact repeats) on
# any machine, and test accuracy only after the last epoch (tests that check per-epoch
# evaluation ask for it with --eval-every 1).
TINY = [
    "--epochs",
    "2",
    "--epoch-size",
    "200",
    "--batch-size",
    "50",
    "--hidden-dim",
    "32",
    "--device",
    "cpu",
    "--eval-every",
    "0",
    "--no-progress",
]


def tiny_synth_args(synth_dir: Path, out: Path, model: str = "jade", extra: tuple = ()) -> list:
    args = [
        "train",
        "--primary",
        "synth-street",
        "--n-labeled",
        "50",
        "--model",
        model,
        "--data-dir",
        str(synth_dir),
        "--out",
        str(out),
        *TINY,
        *extra,
    ]
    if model != "single":
        args[3:3] = ["--auxiliary", "synth-hand"]
    return args


def shell_env(**extra: str) -> dict[str, str]:
    """The environment of a user's shell running an example script: this Python's `jade` first
    on PATH, plus `extra`. Skips the test where the console script is not installed."""
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    if shutil.which("jade", path=path) is None:
        pytest.skip("the jade console script is not installed")
    return {**os.environ, "PATH": path, **extra}


def run_example(
    script: str, *args: str, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """`bash examples/SCRIPT ARGS...` as a user's shell runs it, its output captured."""
    command = ["bash", str(EXAMPLES / script), *args]
    return subprocess.run(command, capture_output=True, text=True, env=env, cwd=cwd, timeout=600)


def load_ckpt(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)
