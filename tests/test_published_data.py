"""USPS from torchvision's files (read, and fetched with --download) and MNIST-M from its
unpacked release, each written here in the published format at a tiny size."""

from __future__ import annotations

import bz2
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from jadecli.cli import app
from jadecli.data.registry import load_dataset
from jadecli.errors import DataError
from tests.helpers import TINY, make_mnist


def usps_bytes(n: int, seed: int) -> tuple[bytes, np.ndarray, np.ndarray]:
    """A libsvm-format USPS file as torchvision reads it: `label i:v ...`, label 1..10 for the
    digits 0..9, 256 values in [-1, 1]; returns (bz2 bytes, labels 0..9, expected uint8 images)."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 10
    values = rng.uniform(-1, 1, size=(n, 256)).astype(np.float32)
    for i, y in enumerate(labels):  # a learnable bar, as in the other tiny datasets
        values[i, y * 16 : y * 16 + 32] = 1.0
    lines = [
        f"{y + 1} " + " ".join(f"{j + 1}:{v:.6f}" for j, v in enumerate(row))
        for y, row in zip(labels, values, strict=True)
    ]
    parsed = np.asarray([[f"{v:.6f}" for v in row] for row in values], dtype=np.float32)
    expected = ((parsed + 1) / 2 * 255).astype(np.uint8).reshape(n, 16, 16)
    return bz2.compress(("\n".join(lines) + "\n").encode()), labels, expected


def write_usps(root: Path, n_train: int = 60, n_test: int = 30) -> dict[str, np.ndarray]:
    root.mkdir(parents=True, exist_ok=True)
    expected = {}
    for name, n, seed in (("usps.bz2", n_train, 0), ("usps.t.bz2", n_test, 1)):
        data, _labels, images = usps_bytes(n, seed)
        (root / name).write_bytes(data)
        expected[name] = images
    return expected


def test_usps_reads_torchvisions_files_and_says_they_are_not_the_published_ones(tmp_path):
    expected = write_usps(tmp_path / "USPS")
    warnings: list[str] = []
    ds = load_dataset("usps", tmp_path, False, None, warnings.append)
    assert ds.classes == [str(d) for d in range(10)]
    assert tuple(ds.train.images.shape) == (60, 1, 16, 16)
    assert tuple(ds.test.images.shape) == (30, 1, 16, 16)
    assert ds.train.labels.tolist() == [i % 10 for i in range(60)]  # labels 1..10 -> 0..9
    assert np.array_equal(ds.train.images[:, 0].numpy(), expected["usps.bz2"])
    assert ds.info["verified"] is False and ds.info["format"] == "torchvision"
    assert len(warnings) == 2 and all("MD5 differs" in w for w in warnings)


def test_usps_download_goes_through_torchvision(tmp_path, monkeypatch):
    import torchvision.datasets.usps as tv_usps

    fetched: list[tuple[str, str]] = []

    def fake_download(url, root, filename=None, md5=None, **_):
        fetched.append((url, filename))
        data, _, _ = usps_bytes(40 if filename == "usps.bz2" else 20, 2)
        Path(root).mkdir(parents=True, exist_ok=True)  # as torchvision's download_url does
        Path(root, filename).write_bytes(data)
        assert md5 and len(md5) == 32  # torchvision checks the release's MD5 on download

    monkeypatch.setattr(tv_usps, "download_url", fake_download)
    with pytest.raises(DataError, match=r"usps\.bz2 and usps\.t\.bz2 in .*--download"):
        load_dataset("usps", tmp_path, False, None, lambda m: None)
    assert not fetched  # never without --download
    ds = load_dataset("usps", tmp_path, True, None, lambda m: None)
    assert [f for _, f in fetched] == ["usps.bz2", "usps.t.bz2"]
    assert all("libsvmtools" in url for url, _ in fetched)
    assert (len(ds.train), len(ds.test)) == (40, 20)

    def failing(*args, **kwargs):
        raise OSError("network unreachable")

    monkeypatch.setattr(tv_usps, "download_url", failing)
    with pytest.raises(DataError, match=r"download of usps\.bz2 into .* failed"):
        load_dataset("usps", tmp_path / "elsewhere", True, None, lambda m: None)


def test_damaged_usps_file_is_one_line_naming_it(tmp_path):
    write_usps(tmp_path / "USPS")
    (tmp_path / "USPS" / "usps.t.bz2").write_bytes(b"not bz2 at all")
    with pytest.raises(DataError, match=r"usps: cannot read .*usps\.t\.bz2"):
        load_dataset("usps", tmp_path, False, None, lambda m: None)


def write_mnistm_release(root: Path, n_train: int = 30, n_test: int = 20) -> None:
    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("test", n_test)):
        folder = root / f"mnist_m_{split}"
        folder.mkdir(parents=True, exist_ok=True)
        lines = []
        for i in range(n):
            digit = i % 10
            arr = rng.integers(0, 80, size=(32, 32, 3)).astype(np.uint8)
            arr[digit * 3 : digit * 3 + 3, :, :] = 250
            Image.fromarray(arr, "RGB").save(folder / f"{i:08d}.png")
            lines.append(f"{i:08d}.png {digit}")
        (root / f"mnist_m_{split}_labels.txt").write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize("nested", [False, True])
def test_mnistm_release_layout_loads(tmp_path, nested):
    root = tmp_path / "MNIST-M"
    write_mnistm_release(root / "mnist_m" if nested else root)
    ds = load_dataset("mnist-m", tmp_path, False, None, lambda m: None)
    assert tuple(ds.train.images.shape) == (30, 3, 32, 32) and len(ds.test) == 20
    assert ds.train.labels.tolist() == [i % 10 for i in range(30)]
    first = np.asarray(Image.open(Path(ds.root) / "mnist_m_train" / "00000000.png"))
    assert np.array_equal(ds.train.images[0].permute(1, 2, 0).numpy(), first)
    assert ds.info["format"] == "mnist_m release"
    resized = load_dataset("mnist-m", tmp_path, False, 16, lambda m: None)
    assert tuple(resized.test.images.shape) == (20, 3, 16, 16)


def test_mnistm_release_problems_name_the_file_and_line(tmp_path):
    root = tmp_path / "MNIST-M"
    with pytest.raises(DataError, match=r"image folders .* or the unpacked MNIST-M release"):
        load_dataset("mnist-m", tmp_path, False, None, lambda m: None)
    write_mnistm_release(root)
    labels = root / "mnist_m_test_labels.txt"
    labels.write_text(labels.read_text() + "00000099.png seven\n")
    with pytest.raises(DataError, match=r"mnist_m_test_labels\.txt line 21 is not"):
        load_dataset("mnist-m", tmp_path, False, None, lambda m: None)
    labels.write_text("00000099.png 7\n")
    with pytest.raises(DataError, match=r"1 image\(s\) listed .* are missing"):
        load_dataset("mnist-m", tmp_path, False, None, lambda m: None)


@pytest.mark.slow
def test_train_on_usps_files_end_to_end(tmp_path, runner):
    write_usps(tmp_path / "USPS", n_train=100, n_test=40)
    make_mnist(tmp_path)
    out = tmp_path / "run"
    args = ["train", "--primary", "usps", "--n-labeled", "50", "--auxiliary", "mnist"]
    args += ["--data-dir", str(tmp_path), "--out", str(out), *TINY]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "not the published file" in result.output
    import yaml

    manifest = yaml.safe_load((out / "manifest.yaml").read_text())
    primary = manifest["datasets"]["primary"]
    assert primary["verified"] is False and primary["format"] == "torchvision"
    bare = make_mnist(tmp_path / "no-usps")  # the auxiliary is there, USPS is not
    again = [*args[: args.index("--data-dir")], "--data-dir", str(bare)]
    missing = runner.invoke(app, [*again, "--out", str(tmp_path / "r2"), *TINY])
    assert missing.exit_code == 1 and "Traceback" not in missing.output
    assert "usps: found neither the image folders" in missing.output
    assert not (tmp_path / "r2").exists()
