"""Every bad input gets one line naming the problem, the right exit code, no traceback, and
leaves no run folder that looks complete."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from jadecli.cli import app
from tests.helpers import TINY, make_folder, make_mnist

DIGITS = tuple(str(d) for d in range(10))


def mnist_args(data: Path, out: Path, *extra: str) -> list[str]:
    return [
        "train",
        "--primary",
        "mnist",
        "--auxiliary",
        "mnist",
        "--n-labeled",
        "100",
        "--data-dir",
        str(data),
        "--out",
        str(out),
        *TINY,
        *extra,
    ]


def assert_clean_error(result, code: int, *needles: str) -> str:
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1, result.output
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


@pytest.fixture()
def data(tmp_path: Path) -> Path:
    return make_mnist(tmp_path / "data", n_train=200, n_test=50)


@pytest.mark.parametrize(
    "extra, code, needles",
    [
        (["--model", "vae"], 2, ["--model", "single, paired, jade"]),
        (["--n-labeled", "0"], 2, ["--n-labeled", "positive"]),
        (["--n-labeled", "-5"], 2, ["--n-labeled"]),
        (["--n-labeled", "lots"], 2, ["--n-labeled", "'all'"]),
        (["--n-labeled", "5000"], 2, ["--n-labeled 5000", "more than the 200"]),
        (["--n-labeled", "105"], 2, ["multiple of 10"]),
        (["--epochs", "0"], 2, ["--epochs"]),
        (["--epochs", "two"], 2, ["--epochs", "integer"]),
        (["--batch-size", "-1"], 2, ["--batch-size"]),
        (["--lr", "-0.1"], 2, ["--lr"]),
        (["--dropout", "1.5"], 2, ["--dropout"]),
        (["--lr-schedule", "linear"], 2, ["--lr-schedule"]),
        (["--device", "tpu"], 2, ["--device"]),
        (["--no-such-flag"], 2, ["--no-such-flag"]),
        (["--aux-per-class", "999"], 2, ["--aux-per-class 999"]),
    ],
)
def test_bad_flag_values(runner, data, tmp_path, extra, code, needles):
    out = tmp_path / "run"
    result = runner.invoke(app, mnist_args(data, out, *extra))
    assert_clean_error(result, code, *needles)
    assert not out.exists()


@pytest.mark.parametrize(
    "args, code, needles",
    [
        # a name that is no dataset is a bad flag value, said before anything loads
        (["--primary", "cifar"], 2, ["--primary must be one of", "(got 'cifar')"]),
        (["--auxiliary", "kmnist"], 2, ["--auxiliary must be one of", "(got 'kmnist')"]),
        (["--primary", "mnistm"], 2, ["(got 'mnistm'); did you mean mnist-m?"]),
        (["--primary", "folder:"], 2, ["folder: needs a path"]),
        # a known dataset whose files are not there is a data error
        (["--primary", "svhn"], 1, ["svhn: missing", "train_32x32.mat"]),
        (["--primary", "folder:does/not/exist"], 1, ["no such folder"]),
    ],
)
def test_bad_datasets(runner, data, tmp_path, args, code, needles):
    out = tmp_path / "run"
    full = mnist_args(data, out)
    for flag, value in zip(args[::2], args[1::2], strict=True):
        full[full.index(flag) + 1] = value
    result = runner.invoke(app, full)
    assert_clean_error(result, code, *needles)
    assert not out.exists()
    if code == 2:
        assert "loading" not in result.output  # refused before any dataset was read


def test_a_folder_given_without_folder_prefix_is_pointed_at_it(runner, data, tmp_path):
    (tmp_path / "scans").mkdir()
    full = mnist_args(data, tmp_path / "run")
    full[full.index("--primary") + 1] = str(tmp_path / "scans")
    assert_clean_error(runner.invoke(app, full), 2, f"write folder:{tmp_path / 'scans'}")


def test_missing_required_flags(runner, tmp_path):
    assert_clean_error(runner.invoke(app, ["train", "--n-labeled", "10"]), 2, "--primary")
    assert_clean_error(runner.invoke(app, ["train", "--primary", "mnist"]), 2, "--n-labeled")
    assert_clean_error(
        runner.invoke(app, ["train", "--primary", "mnist", "--n-labeled", "10"]),
        2,
        "--auxiliary is required for --model jade",
    )


def test_mismatched_classes_list_both_sets(runner, data, tmp_path):
    make_folder(tmp_path / "scans", classes=("benign", "malignant"), n_train=10, n_test=2)
    out = tmp_path / "run"
    args = mnist_args(data, out)
    args[args.index("--primary") + 1] = f"folder:{tmp_path / 'scans'}"
    args[args.index("--n-labeled") + 1] = "10"
    line = assert_clean_error(runner.invoke(app, args), 1, "same class names")
    assert "benign, malignant" in line and "0, 1, 2" in line
    assert not out.exists()


def test_undecodable_image_in_a_folder(runner, data, tmp_path):
    root = make_folder(tmp_path / "usps", classes=DIGITS, n_train=10, n_test=2, size=16)
    (root / "train" / "3" / "bad.png").write_bytes(b"definitely not a png")
    args = mnist_args(data, tmp_path / "run")
    args[args.index("--primary") + 1] = f"folder:{root}"
    assert_clean_error(runner.invoke(app, args), 1, "cannot decode image", "bad.png")


@pytest.mark.parametrize(
    "content, needles",
    [
        ("epochs: [1, 2\n", ["not valid YAML"]),
        ("- just\n- a list\n", ["expected a mapping"]),
        ("learning_rate: 0.1\n", ["unknown key 'learning_rate'"]),
        ("batchsize: 10\n", ["did you mean 'batch_size'"]),
        ("epochs: -3\n", ["epochs in", "cfg.yaml", "positive"]),
        ("download: maybe\n", ["download in", "true or false"]),
    ],
)
def test_bad_config_files(runner, data, tmp_path, content, needles):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(content)
    args = mnist_args(data, tmp_path / "run", "--config", str(cfg))
    if "epochs" in content:
        i = args.index("--epochs")
        del args[i : i + 2]
    assert_clean_error(runner.invoke(app, args), 2, *needles)


def test_missing_config_file(runner, data, tmp_path):
    args = mnist_args(data, tmp_path / "run", "--config", str(tmp_path / "nope.yaml"))
    assert_clean_error(runner.invoke(app, args), 2, "nope.yaml", "no such file")


def test_unwritable_out(runner, data, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    result = runner.invoke(app, mnist_args(data, blocker / "run"))
    assert_clean_error(result, 1, "--out", "cannot write")
    result = runner.invoke(app, mnist_args(data, blocker))
    assert_clean_error(result, 1, "is a file")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_requested_without_cuda(runner, data, tmp_path):
    out = tmp_path / "run"
    result = runner.invoke(app, mnist_args(data, out, "--device", "cuda"))
    assert_clean_error(result, 1, "--device cuda", "CUDA is not available", "--device cpu")
    assert not out.exists()
