"""`jade train` under torchrun: two CPU processes (gloo) on tiny data, as a user launches them."""

from __future__ import annotations

import itertools
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from jadecli.cli import app
from jadecli.distributed import Dist, from_env, rank_device, share
from jadecli.errors import UsageError
from tests.helpers import TINY, run_example, shell_env

WORKER = Path(__file__).resolve().parent / "torchrun_worker.py"


def torchrun(
    args: list[str], nproc: int = 2, env: dict[str, str] | None = None, timeout: int = 240
) -> subprocess.CompletedProcess:
    """`torchrun --standalone --nproc-per-node N jade ARGS` (with the test hooks of WORKER)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    cmd += ["--nproc-per-node", str(nproc), str(WORKER), *args]
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run(cmd, capture_output=True, text=True, env=full_env, timeout=timeout)


def jade(args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """The same worker as one ordinary process."""
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    cmd = [sys.executable, str(WORKER), *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=full_env, timeout=240)


def train_args(synth_dir: Path, out: Path, epochs: int = 2) -> list[str]:
    args = ["train", "--primary", "synth-street", "--auxiliary", "synth-hand"]
    args += ["--n-labeled", "50", "--model", "jade"]
    args += ["--data-dir", str(synth_dir), "--out", str(out), *TINY]
    i = args.index("--epochs")
    args[i + 1] = str(epochs)
    return args


def manifest(run: Path) -> dict:
    return yaml.safe_load((run / "manifest.yaml").read_text())


def errors(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error: ")]


def checkpoint_hash(path: Path) -> str:
    import importlib.util

    spec = importlib.util.spec_from_file_location("torchrun_worker", WORKER)
    assert spec is not None and spec.loader is not None
    worker = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(worker)
    state = torch.load(path, map_location="cpu", weights_only=True)

    class Holder:
        def state_dict(self):
            return state["model"]

    return worker.weights_hash(Holder())


# --------------------------------------------------------------------------- without processes


def test_one_process_without_torchrun():
    assert from_env({}) == Dist()
    assert from_env({"WORLD_SIZE": "1", "RANK": "0"}) == Dist()
    d = from_env(
        {"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1", "MASTER_ADDR": "h", "MASTER_PORT": "1"}
    )
    assert (d.rank, d.world_size, d.local_rank, d.main, d.enabled) == (3, 4, 1, False, True)


@pytest.mark.parametrize(
    "env, words",
    [
        ({"WORLD_SIZE": "two"}, "WORLD_SIZE"),
        ({"WORLD_SIZE": "2", "MASTER_ADDR": "h", "MASTER_PORT": "1"}, "RANK"),
        ({"WORLD_SIZE": "2", "RANK": "2", "MASTER_ADDR": "h", "MASTER_PORT": "1"}, "RANK"),
        ({"WORLD_SIZE": "2", "RANK": "1"}, "MASTER_ADDR"),
    ],
)
def test_a_broken_launch_environment_is_named(env, words):
    with pytest.raises(UsageError, match=words):
        from_env(env)


def test_every_item_of_a_batch_goes_to_exactly_one_rank():
    for n in (1, 2, 7, 50, 101):
        for world in (1, 2, 3, 8):
            shares = [share(n, Dist(rank=r, world_size=world)) for r in range(world)]
            assert shares[0][0] == 0 and shares[-1][1] == n
            assert all(a[1] == b[0] for a, b in itertools.pairwise(shares))
            sizes = [hi - lo for lo, hi in shares]
            assert max(sizes) - min(sizes) <= 1


def test_each_rank_is_told_its_own_device():
    d = Dist(rank=1, world_size=2, local_rank=1)
    assert rank_device("cpu", d) == "cpu"
    assert rank_device("cuda:3", Dist()) == "cuda:3"  # one process: as given
    with pytest.raises(UsageError, match="--device cuda:0"):
        rank_device("cuda:0", d)
    if not torch.cuda.is_available():
        assert rank_device("auto", d) == "cpu"


# --------------------------------------------------------------------------- two processes


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory, synth_dir) -> tuple[Path, subprocess.CompletedProcess, Path]:
    """A 2-epoch JADE run trained by two gloo processes; each rank's final weights hashed."""
    root = tmp_path_factory.mktemp("ddp")
    spy = root / "weights"
    spy.mkdir()
    out = root / "runs" / "ddp"
    result = torchrun(train_args(synth_dir, out), env={"JADE_TEST_WEIGHTS": str(spy)})
    return out, result, spy


@pytest.mark.slow
def test_two_processes_write_one_run_and_end_with_identical_weights(ddp_run):
    out, result, spy = ddp_run
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("completed 2 epochs") == 1  # rank 0 alone reports
    assert sorted(p.name for p in out.parent.iterdir()) == ["ddp"]
    m = manifest(out)
    assert m["status"] == "completed" and m["epochs_completed"] == 2
    assert m["distributed"] == {"world_size": 2, "backend": "gloo", "devices": ["cpu", "cpu"]}
    assert not list(out.glob("*rank*"))  # nothing but rank 0's files
    rank0, rank1 = ((spy / f"rank{r}.sha256").read_text() for r in (0, 1))
    assert rank0 == rank1
    assert checkpoint_hash(out / "checkpoints" / "last.pt") == rank0


@pytest.mark.slow
def test_sharded_evaluation_gives_one_process_accuracy(ddp_run, runner):
    out, result, _ = ddp_run
    assert result.returncode == 0, result.stderr[-3000:]
    final = manifest(out)["final_metrics"]
    report = runner.invoke(app, ["evaluate", str(out), "--device", "cpu", "--format", "json"])
    assert report.exit_code == 0, report.output
    roles = json.loads(report.stdout)
    assert roles["primary"]["accuracy"] == pytest.approx(final["primary_test_accuracy"], abs=1e-9)
    assert roles["auxiliary"]["accuracy"] == pytest.approx(
        final["auxiliary_test_accuracy"], abs=1e-9
    )


@pytest.mark.slow
def test_resume_with_another_world_size(ddp_run, tmp_path):
    out, result, _ = ddp_run
    assert result.returncode == 0, result.stderr[-3000:]
    run = tmp_path / "run"
    shutil.copytree(out, run)
    one = jade(["train", "--out", str(run), "--resume", "--epochs", "3", "--no-progress"])
    assert one.returncode == 0, one.stderr[-3000:]
    assert manifest(run)["distributed"]["world_size"] == 1
    two = torchrun(["train", "--out", str(run), "--resume", "--epochs", "4", "--no-progress"])
    assert two.returncode == 0, two.stderr[-3000:]
    m = manifest(run)
    assert m["status"] == "completed" and m["epochs_completed"] == 4
    assert m["distributed"]["world_size"] == 2
    rows = (run / "metrics.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["1", "2", "3", "4"]
    assert [e["event"] for e in m["events"]].count("resumed") == 2


def failed_in_epoch_2(result: subprocess.CompletedProcess, out: Path) -> tuple[str, dict]:
    """The one error line of a torchrun run that failed in epoch 2, and its kept checkpoint."""
    assert result.returncode != 0
    lines = errors(result.stderr)
    assert len(lines) == 1, result.stderr[-3000:]
    m = manifest(out)
    assert m["status"] == "failed" and m["epochs_completed"] == 1
    state = torch.load(out / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)
    assert state["epoch"] == 1
    return lines[0], state


@pytest.mark.slow
def test_a_killed_rank_ends_the_run_cleanly(synth_dir, tmp_path):
    out = tmp_path / "run"
    result = torchrun(train_args(synth_dir, out, epochs=3), env={"JADE_TEST_KILL": "1:2"})
    line, _ = failed_in_epoch_2(result, out)
    # torchrun stops the other rank with SIGTERM; a collective may notice the loss first
    assert "torchrun stops every process" in line or "another torchrun process" in line
    assert "kept the last good checkpoint" in line and "(epoch 1)" in line
    # and it resumes, here as one process
    again = jade(["train", "--out", str(out), "--resume", "--no-progress"])
    assert again.returncode == 0, again.stderr[-3000:]
    assert manifest(out)["status"] == "completed"


@pytest.mark.slow
def test_a_diverging_rank_stops_every_rank_with_one_message(synth_dir, tmp_path):
    out = tmp_path / "run"
    # 4 steps per epoch: rank 1's 6th step is epoch 2, step 2
    result = torchrun(train_args(synth_dir, out, epochs=3), env={"JADE_TEST_NAN": "1:6"})
    line, state = failed_in_epoch_2(result, out)
    assert "diverged at epoch 2, step 2" in line and "kl_match = nan" in line
    assert all(torch.isfinite(v).all() for v in state["model"].values())


@pytest.mark.slow
def test_a_global_batch_smaller_than_the_world_is_refused(synth_dir, tmp_path):
    out = tmp_path / "run"
    args = train_args(synth_dir, out)
    args[args.index("--batch-size") + 1] = "1"
    result = torchrun(args)
    assert result.returncode != 0  # torchrun exits 1 whatever its processes' codes
    lines = errors(result.stderr)
    assert len(lines) == 1 and "--batch-size 1" in lines[0], result.stderr[-3000:]
    assert not out.exists()


@pytest.mark.slow
def test_data_missing_on_one_rank_is_named_once_and_nothing_is_written(synth_dir, tmp_path):
    out = tmp_path / "run"
    result = torchrun(train_args(synth_dir, out), env={"JADE_TEST_NO_DATA": "1"})
    assert result.returncode != 0
    lines = errors(result.stderr)
    assert len(lines) == 1, result.stderr[-3000:]
    assert lines[0].startswith("error: rank 1 of 2: ") and "no such folder" in lines[0]
    assert not out.exists()


@pytest.mark.slow
def test_the_torchrun_example_script(synth_dir, tmp_path):
    env = shell_env(JADE_DATA_DIR=str(synth_dir), OMP_NUM_THREADS="1")
    flags = ["--n-labeled", "50", *TINY, "--epochs", "1"]
    proc = run_example("torchrun.sh", *flags, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    assert proc.stdout.count("primary   test accuracy (synth-street)") == 1
    m = manifest(tmp_path / "runs" / "torchrun")
    assert m["status"] == "completed" and m["distributed"]["world_size"] == 2
