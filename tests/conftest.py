"""Shared fixtures: the generated built-in pair, tiny trained runs, a CLI runner, and the
isolation every test gets. Helpers live in tests/helpers.py."""

from __future__ import annotations

import fcntl
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from jadecli.cli import app
from tests.helpers import fingerprint, tiny_synth_args

# One thread per test, in this process and in the `jade` processes tests start: the suite runs
# in parallel (pytest -n auto), one test per core, and timings stay stable on small machines.
torch.set_num_threads(1)
os.environ.setdefault("OMP_NUM_THREADS", "1")


def _shared(factory: pytest.TempPathFactory, name: str, build: Callable[[Path], None]) -> Path:
    """A folder built once per test session and shared by the parallel workers (pytest-xdist):
    the first worker to ask builds it under a file lock, the others wait and reuse it."""
    base = factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent  # the temporary folder all workers of this session share
    root = base / name
    with open(base / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (base / f"{name}.done").exists():
            shutil.rmtree(root, ignore_errors=True)
            root.mkdir()
            build(root)
            (base / f"{name}.done").touch()
    return root


@pytest.fixture(scope="session")
def synth_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data dir holding the generated built-in pair (generated once per test session)."""
    from jadecli.data.registry import load_synth

    def build(root: Path) -> None:
        for name in ("synth-street", "synth-hand"):
            load_synth(name, root, lambda msg: None)

    return _shared(tmp_path_factory, "synth-data", build)


@pytest.fixture(scope="session")
def trained_runs(
    tmp_path_factory: pytest.TempPathFactory, synth_dir: Path
) -> Iterator[dict[str, Path]]:
    """One tiny finished run per model, trained once per test session, and what `jade train`
    printed (`<run>/../<model>-output.txt`). Read only: copy a run before changing it (the
    session ends with an error if a test changed one)."""
    models = ("single", "paired", "jade")

    def build(root: Path) -> None:
        for model in models:
            result = CliRunner().invoke(app, tiny_synth_args(synth_dir, root / model, model))
            assert result.exit_code == 0, result.output
            (root / f"{model}-output.txt").write_text(result.output)

    root = _shared(tmp_path_factory, "trained", build)
    runs = {model: root / model for model in models}
    before = {model: fingerprint(run) for model, run in runs.items()}
    yield runs
    changed = [model for model, run in runs.items() if fingerprint(run) != before[model]]
    assert not changed, f"a test changed the shared trained runs {changed}: copy them first"


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
