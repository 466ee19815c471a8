"""Shared fixtures: tiny datasets written in the real on-disk formats, and a CLI runner."""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from jadecli.cli import app

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

# Keep the suite's timings stable on small CI machines.
torch.set_num_threads(1)


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


@pytest.fixture(scope="session")
def synth_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data dir holding the generated built-in pair (generated once per test session)."""
    from jadecli.data.registry import load_synth

    root = tmp_path_factory.mktemp("synth-data")
    for name in ("synth-street", "synth-hand"):
        load_synth(name, root, lambda msg: None)
    return root


@pytest.fixture(scope="session")
def trained_runs(
    tmp_path_factory: pytest.TempPathFactory, synth_dir: Path
) -> Iterator[dict[str, Path]]:
    """One tiny finished run per model, trained once per test session, and what `jade train`
    printed (`<run>/../<model>-output.txt`). Read only: copy a run before changing it (the
    session ends with an error if a test changed one)."""
    root = tmp_path_factory.mktemp("trained")
    runs = {}
    for model in ("single", "paired", "jade"):
        out = root / model
        result = CliRunner().invoke(app, tiny_synth_args(synth_dir, out, model))
        assert result.exit_code == 0, result.output
        (root / f"{model}-output.txt").write_text(result.output)
        runs[model] = out
    before = {model: fingerprint(run) for model, run in runs.items()}
    yield runs
    changed = [model for model, run in runs.items() if fingerprint(run) != before[model]]
    assert not changed, f"a test changed the shared trained runs {changed}: copy them first"


def fingerprint(run: Path) -> dict[str, bytes]:
    """Every file of a run folder, by relative path, with its bytes."""
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}


@pytest.fixture()
def runner() -> CliRunner:
    return CliRunner()


@pytest.fixture(autouse=True)
def _device_pinned(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch):
    """On a machine with a GPU, `--device auto` means CUDA: a test that relies on CPU results
    (bit-exact repeats, `device: cpu` in the manifest) must say `--device cpu`. This makes a
    test that leaves the device to `auto` fail on any machine, unless it is marked
    `device_auto` (it then asserts what auto means wherever it runs)."""
    if request.node.get_closest_marker("device_auto"):
        yield
        return
    import jadecli.analysis.common
    import jadecli.engine

    unpinned: list[str] = []
    for module in (jadecli.engine, jadecli.analysis.common):
        real = module.resolve_device

        def pinned(name: str, real=real) -> torch.device:
            if name == "auto":
                unpinned.append(name)
            return real(name)

        monkeypatch.setattr(module, "resolve_device", pinned)
    yield
    assert not unpinned, "this test leaves --device to auto: pass --device cpu"


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No test reads the user's cache or data dir by accident."""
    monkeypatch.setenv("JADE_DATA_DIR", str(tmp_path / "default-data-dir"))
    monkeypatch.chdir(tmp_path)


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
