"""The shipped examples run: every YAML config and every script trains (or analyses) on tiny data
in the formats it names, through the installed `jade` where it is a script."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from jadecli.cli import app
from jadecli.config import TrainConfig, load_yaml_config
from tests.helpers import EXAMPLES, TINY, make_folder, make_mnist, make_svhn, run_example, shell_env

DIGITS = tuple(str(d) for d in range(10))
# The configs' labeled and auxiliary sizes shrink to fit the tiny files; everything else is theirs.
SMALL = ["--n-labeled", "20", *TINY, "--epochs", "1", "--epoch-size", "40", "--eval-every", "0"]


def tiny_data(root: Path) -> Path:
    """MNIST and SVHN files, and USPS / MNIST-M image folders, at their real image sizes."""
    make_mnist(root, n_train=60, n_test=20)
    make_svhn(root, n_train=40, n_test=20)
    make_folder(root / "USPS", DIGITS, n_train=3, n_test=2, size=16)
    make_folder(root / "MNIST-M", DIGITS, n_train=3, n_test=2, size=32, mode="RGB")
    return root


def manifest(run: Path) -> dict:
    return yaml.safe_load((run / "manifest.yaml").read_text())


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.name)
def test_example_configs_train_on_tiny_data(runner, tmp_path, path):
    data = tiny_data(tmp_path / "data")
    values = load_yaml_config(path)
    out = tmp_path / "run"
    args = ["train", "--config", str(path), "--data-dir", str(data), "--out", str(out), *SMALL]
    if values.get("aux_per_class"):
        args += ["--aux-per-class", "4"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    m = manifest(out)
    assert m["status"] == "completed"
    shrunk = {"n_labeled", "aux_per_class", "epochs", "epoch_size", "batch_size", "hidden_dim"}
    for key, value in values.items():  # the file's values reach the run, but for the sizes
        if key not in shrunk and key != "data_dir":
            assert m["config"][key] == value, key
    assert TrainConfig(**values).primary == m["datasets"]["primary"]["name"]


@pytest.mark.slow
def test_quickstart_script_trains_the_builtin_pair(synth_dir, tmp_path):
    env = shell_env(JADE_DATA_DIR=str(synth_dir))
    flags = ["--n-labeled", "50", *TINY, "--epochs", "1", "--eval-every", "0"]
    proc = run_example("quickstart.sh", *flags, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "primary   test accuracy (synth-street)" in proc.stdout
    m = manifest(tmp_path / "runs" / "quickstart")
    assert m["status"] == "completed" and m["config"]["auxiliary"] == "synth-hand"
    assert m["config"]["n_labeled"] == 50 and m["device"] == "cpu"


@pytest.mark.slow
def test_compare_models_script_trains_all_three_and_gates_on_failure(tmp_path):
    env = shell_env()
    data = tiny_data(tmp_path / "data")
    small = [*SMALL, "--n-labeled", "20"]
    proc = run_example("compare_models.sh", str(data), *small, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for model in ("single", "paired", "jade"):
        m = manifest(tmp_path / "runs" / f"compare-{model}")
        assert m["status"] == "completed" and m["config"]["model"] == model
        assert m["config"]["primary_size"] == 20 and m["device"] == "cpu"
        acc = m["final_metrics"]["primary_test_accuracy"]
        assert f"primary_test_accuracy: {acc}" in proc.stdout
    # a run that fails stops the script with its exit code
    missing = str(tmp_path / "no-data")
    proc = run_example("compare_models.sh", missing, *small, env=env, cwd=tmp_path)
    assert proc.returncode == 1 and "error: " in proc.stderr
    assert "compare-paired" not in proc.stdout


def test_every_example_script_is_run_by_a_test():
    sources = "".join(p.read_text() for p in Path(__file__).parent.glob("test_*.py"))
    for script in EXAMPLES.glob("*.sh"):
        assert f'"{script.name}"' in sources, f"no test runs examples/{script.name}"
