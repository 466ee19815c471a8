"""Training that goes wrong: divergence, Ctrl-C, SIGTERM, a full disk, crashes. The run folder
must tell the truth and keep the last good checkpoint; an interrupted run resumes to exactly the
uninterrupted result; the user gets one `error:` line, never a traceback."""

from __future__ import annotations

import csv
import errno
import itertools
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

import jadecli.engine as engine
import jadecli.objective
import jadecli.run
from jadecli.cli import app
from jadecli.config import TrainConfig
from jadecli.engine import RunOptions, resume, train
from jadecli.errors import Interrupted, Terminated
from jadecli.optim import lr_at
from jadecli.progress import NullReporter
from tests.helpers import load_ckpt, make_folder, make_mnist, tiny_synth_args


def manifest(run: Path) -> dict:
    return yaml.safe_load((run / "manifest.yaml").read_text())


def poison_step(monkeypatch, at_call: int, term: str) -> None:
    """Make the JADE objective return a NaN `term` from its `at_call`-th call on."""
    real = jadecli.objective.jade_terms
    calls = {"n": 0}

    def patched(*args, **kwargs):
        terms = real(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] >= at_call:
            terms[term] = terms[term] * float("nan")
        return terms

    monkeypatch.setattr(jadecli.objective, "jade_terms", patched)


@pytest.mark.slow
def test_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(
    runner, synth_dir, tmp_path, monkeypatch
):
    out = tmp_path / "run"
    poison_step(monkeypatch, at_call=7, term="kl_match")  # 4 steps per epoch: epoch 2, step 3
    result = runner.invoke(app, tiny_synth_args(synth_dir, out, "jade"))
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    line = next(x for x in result.output.splitlines() if x.startswith("error: "))
    assert "diverged at epoch 2, step 3 (step 7 overall)" in line
    assert "kl_match = nan" in line
    assert "kept the last good checkpoint" in line and "(epoch 1)" in line
    m = manifest(out)
    assert m["status"] == "failed"
    assert "kl_match" in m["error"]
    assert m["epochs_completed"] == 1
    ckpt = load_ckpt(out / "checkpoints" / "last.pt")
    assert ckpt["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values())


@pytest.mark.slow
def test_nan_in_the_first_epoch_says_no_checkpoint(runner, synth_dir, tmp_path, monkeypatch):
    out = tmp_path / "run"
    poison_step(monkeypatch, at_call=1, term="recon_primary")
    result = runner.invoke(app, tiny_synth_args(synth_dir, out, "jade"))
    assert result.exit_code == 1
    assert "epoch 1, step 1" in result.output and "no checkpoint was written" in result.output
    assert manifest(out)["status"] == "failed"


class SignalAt(NullReporter):
    """Sends this process a real signal in the middle of epoch `epoch`, or (epoch None) while
    the data are loading."""

    def __init__(self, signum: int, epoch: int | None = None, step: int = 0):
        self.signum, self.epoch, self.step, self.current = signum, epoch, step, 0

    def info(self, message):
        if self.epoch is None and message.startswith("loading"):
            os.kill(os.getpid(), self.signum)

    def start_epoch(self, epoch, epochs, steps, unit):
        self.current = epoch

    def update(self, step, loss, rate):
        if self.current == self.epoch and step >= self.step:
            os.kill(os.getpid(), self.signum)


def small_cfg(data: Path, **kw) -> TrainConfig:
    base = dict(
        primary=f"folder:{data / 'prim'}",
        auxiliary="mnist",
        n_labeled=20,
        data_dir=str(data),
        epochs=3,
        epoch_size=400,
        batch_size=20,
        hidden_dim=32,
        device="cpu",
    )
    base.update(kw)
    return TrainConfig(**base)


def small_args(data: Path, out: Path, epochs: int = 3) -> list[str]:
    """`small_cfg` as a command line."""
    return [
        "train",
        *("--primary", f"folder:{data / 'prim'}", "--auxiliary", "mnist", "--n-labeled", "20"),
        *("--data-dir", str(data), "--epochs", str(epochs), "--epoch-size", "400"),
        *("--batch-size", "20", "--hidden-dim", "32", "--device", "cpu", "--no-progress"),
        *("--out", str(out)),
    ]


@pytest.fixture()
def small_data(tmp_path: Path) -> Path:
    data = make_mnist(tmp_path / "data", n_train=300, n_test=50)
    make_folder(
        data / "prim", classes=tuple(str(d) for d in range(10)), n_train=4, n_test=3, size=16
    )
    return data


def error_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("error: ")]


@pytest.mark.slow
def test_ctrl_c_and_sigterm_leave_a_resumable_run_that_ends_as_if_uninterrupted(
    small_data, tmp_path
):
    cfg = small_cfg(small_data)  # cosine schedule: the resumed run must follow it exactly
    straight = tmp_path / "straight"
    train(cfg, RunOptions(straight), NullReporter())
    expected = load_ckpt(straight / "checkpoints" / "last.pt")["model"]
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    for signum, cls, code, how in (
        (signal.SIGINT, Interrupted, 130, "interrupted during epoch 2"),
        (signal.SIGTERM, Terminated, 143, "terminated (SIGTERM) during epoch 2"),
    ):
        broken = tmp_path / f"broken-{signum}"
        with pytest.raises(cls) as err:
            train(cfg, RunOptions(broken), SignalAt(signum, epoch=2, step=10))
        assert type(err.value) is cls and err.value.exit_code == code
        assert how in str(err.value) and f"jade train --out {broken} --resume" in str(err.value)
        m = manifest(broken)
        assert m["status"] == "interrupted" and m["epochs_completed"] == 1
        assert m["events"][-1]["event"] == "interrupted" and how in m["error"]
        assert load_ckpt(broken / "checkpoints" / "last.pt")["epoch"] == 1
        # the process's own handlers are back once the session is over
        assert {s: signal.getsignal(s) for s in handlers} == handlers

        result = resume(RunOptions(broken), {}, NullReporter())
        assert result.epochs_completed == 3 and manifest(broken)["status"] == "completed"
        got = load_ckpt(broken / "checkpoints" / "last.pt")["model"]
        for key in expected:
            assert torch.equal(expected[key], got[key]), (signum, key)
        assert manifest(broken)["final_metrics"] == manifest(straight)["final_metrics"]


def test_sigterm_while_loading_writes_nothing(small_data, tmp_path):
    out = tmp_path / "run"
    with pytest.raises(Terminated, match="before training started; nothing was written"):
        train(small_cfg(small_data), RunOptions(out), SignalAt(signal.SIGTERM))
    assert not out.exists()


@pytest.mark.slow
def test_sigterm_to_jade_train_exits_143_and_the_run_resumes(runner, synth_dir, tmp_path):
    """What CI runners, Slurm and Kubernetes do: SIGTERM to the process, then wait."""
    out = tmp_path / "run"
    args = tiny_synth_args(synth_dir, out, "jade", ("--device", "cpu"))
    args[args.index("--epochs") + 1] = "50"
    proc = subprocess.Popen(
        [sys.executable, "-m", "jadecli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if (out / "manifest.yaml").is_file() and (manifest(out).get("epochs_completed") or 0):
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 143, stderr
    assert "Traceback" not in stderr
    (line,) = error_lines(stderr)
    assert "terminated (SIGTERM) during epoch" in line and "--resume" in line
    m = manifest(out)
    done = m["epochs_completed"]
    assert m["status"] == "interrupted" and 1 <= done < 50
    again = ["train", "--out", str(out), "--resume", "--epochs", str(done + 1), "--no-progress"]
    result = runner.invoke(app, again)
    assert result.exit_code == 0, result.output
    m = manifest(out)
    assert m["status"] == "completed" and m["epochs_completed"] == done + 1
    assert [e["event"] for e in m["events"]][-3:] == ["interrupted", "resumed", "completed"]


# --------------------------------------------------------------------------- a full disk


class TinyDisk:
    """A filesystem of `capacity` bytes at `root`, full when a file is synced (as ext4, XFS and
    NFS report it with delayed allocation): os.fsync raises ENOSPC when the files under `root`
    (the one being written included) exceed the capacity."""

    def __init__(self, root: Path, capacity: int, real=os.fsync):
        self.root, self.capacity, self.real = root.resolve(), capacity, real

    def used(self) -> int:
        return sum(p.stat().st_size for p in self.root.rglob("*") if p.is_file())

    def fsync(self, fd: int) -> None:
        path = Path(os.readlink(f"/proc/self/fd/{fd}"))
        if self.root in path.parents and self.used() > self.capacity:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.real(fd)


linux_only = pytest.mark.skipif(
    not Path("/proc/self/fd").is_dir(), reason="needs /proc/self/fd (Linux)"
)


@pytest.fixture()
def checkpoint_bytes(small_data, tmp_path) -> int:
    """The size of one checkpoint of `small_cfg`'s model."""
    out = tmp_path / "sizing"
    train(small_cfg(small_data, epochs=1, epoch_size=20), RunOptions(out), NullReporter())
    return (out / "checkpoints" / "last.pt").stat().st_size


@pytest.mark.slow
@linux_only
def test_a_full_disk_fails_the_run_in_one_line_and_keeps_the_last_checkpoint(
    runner, small_data, tmp_path, monkeypatch, checkpoint_bytes
):
    out = tmp_path / "run"
    out.mkdir()
    # room for one checkpoint and the small files, not for the second one written beside it
    disk = TinyDisk(out, int(1.5 * checkpoint_bytes))
    monkeypatch.setattr(os, "fsync", disk.fsync)
    result = runner.invoke(app, small_args(small_data, out))
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    (line,) = error_lines(result.output)
    assert f"cannot write {out / 'checkpoints' / 'last.pt'} (No space left on device)" in line
    assert "training stopped in epoch 2" in line and "(epoch 1) is" not in line
    assert "kept the last good checkpoint" in line and "(epoch 1)" in line
    assert f"jade train --out {out} --resume" in line
    m = manifest(out)  # written once the failed checkpoint's space was given back
    assert m["status"] == "failed" and "No space left on device" in m["error"]
    assert m["epochs_completed"] == 1
    assert load_ckpt(out / "checkpoints" / "last.pt")["epoch"] == 1
    assert not list(out.rglob("*.tmp"))
    # space freed: the run continues from its last good checkpoint
    monkeypatch.setattr(os, "fsync", disk.real)
    result = runner.invoke(app, ["train", "--out", str(out), "--resume", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert manifest(out)["status"] == "completed"
    with open(out / "metrics.csv", newline="") as fh:
        assert [r["epoch"] for r in csv.DictReader(fh)] == ["1", "2", "3"]


@pytest.mark.slow
@linux_only
def test_a_disk_too_small_for_one_checkpoint_says_to_start_again(
    runner, small_data, tmp_path, monkeypatch, checkpoint_bytes
):
    out = tmp_path / "run"
    out.mkdir()
    disk = TinyDisk(out, checkpoint_bytes // 2)
    monkeypatch.setattr(os, "fsync", disk.fsync)
    result = runner.invoke(app, small_args(small_data, out, epochs=1))
    assert result.exit_code == 1 and "Traceback" not in result.output
    (line,) = error_lines(result.output)
    assert "(No space left on device)" in line and "no checkpoint was written yet" in line
    assert "start it again with the same command and --overwrite" in line
    assert manifest(out)["status"] == "failed"
    assert not (out / "checkpoints" / "last.pt").exists() and not list(out.rglob("*.tmp"))


@pytest.mark.slow
@linux_only
def test_a_crash_on_a_full_disk_still_ends_in_one_line(runner, small_data, tmp_path, monkeypatch):
    """The error handler itself must not crash when neither error.log nor the manifest can be
    written."""
    out = tmp_path / "run"
    out.mkdir()
    disk = TinyDisk(out, 10**9)
    monkeypatch.setattr(os, "fsync", disk.fsync)
    real = engine.evaluate_test

    def boom(*args, **kwargs):
        if manifest(out)["epochs_completed"] == 1:
            disk.capacity = 0  # the disk fills up, then the code hits a bug
            raise RuntimeError("simulated bug")
        return real(*args, **kwargs)

    monkeypatch.setattr(engine, "evaluate_test", boom)
    result = runner.invoke(app, small_args(small_data, out))
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    (line,) = error_lines(result.output)
    assert "training crashed in epoch 2 (RuntimeError: simulated bug)" in line
    assert "the details could not be saved (No space left on device)" in line
    assert "manifest.yaml could not be updated (No space left on device)" in line
    assert not (out / "error.log").exists() and not list(out.rglob("*.tmp"))
    assert load_ckpt(out / "checkpoints" / "last.pt")["epoch"] == 1


@pytest.mark.slow
def test_a_run_folder_on_a_real_tiny_filesystem(runner, small_data, tmp_path, checkpoint_bytes):
    """The same on a real tmpfs (needs root and permission to mount; skipped otherwise)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    size_kb = (int(1.5 * checkpoint_bytes) + 64 * 1024) // 1024
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_kb}k", "tmpfs", str(disk)],
        capture_output=True,
    )
    if mounted.returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        out = disk / "run"
        result = runner.invoke(app, small_args(small_data, out))
        assert result.exit_code == 1, result.output
        assert "Traceback" not in result.output
        (line,) = error_lines(result.output)
        assert "No space left on device" in line and "kept the last good checkpoint" in line
        assert manifest(out)["status"] == "failed"
        assert load_ckpt(out / "checkpoints" / "last.pt")["epoch"] >= 1
    finally:
        subprocess.run(["umount", str(disk)], check=False)


@pytest.mark.slow
def test_a_crash_leaves_status_failed_and_a_traceback_file(small_data, tmp_path, monkeypatch):
    def boom(*args, **kwargs):
        raise RuntimeError("simulated bug")

    monkeypatch.setattr(engine, "evaluate_test", boom)
    out = tmp_path / "run"
    with pytest.raises(engine.TrainingFailed, match="simulated bug") as err:
        train(small_cfg(small_data), RunOptions(out), NullReporter())
    assert f"details in {out / 'error.log'}" in str(err.value)
    assert manifest(out)["status"] == "failed"
    log = (out / "error.log").read_text()
    assert "simulated bug" in log and "Traceback" in log


# --------------------------------------------------------------------------- the schedule


@pytest.mark.parametrize(
    ("schedule", "end"), [("cosine", 1e-5), ("step", 1e-4), ("constant", 1e-3)]
)
def test_the_lr_schedule_is_planned_once_and_holds_its_final_rate_beyond(schedule, end):
    def rate(step: int, steps: int) -> float:
        return lr_at(schedule, 1e-3, step, steps)

    assert rate(0, 100) == pytest.approx(1e-3)
    assert rate(100, 100) == pytest.approx(end)
    for step in (101, 150, 10_000):  # epochs added by a resume with a larger --epochs
        assert rate(step, 100) == rate(100, 100)
    rates = [rate(step, 100) for step in range(201)]
    assert all(a >= b for a, b in itertools.pairwise(rates))  # never goes back up


@pytest.mark.slow
def test_learns_an_easy_pair_end_to_end(tmp_path):
    """A sanity check that the whole path learns: bars whose position is the class."""
    data = make_mnist(tmp_path / "easy", n_train=1000, n_test=200)
    make_folder(
        data / "prim", classes=tuple(str(d) for d in range(10)), n_train=20, n_test=10, size=16
    )
    for model in ("single", "paired", "jade"):
        # the class is the bar's absolute position, which augmentation's shifts would blur
        cfg = small_cfg(
            data,
            model=model,
            n_labeled=100,
            epochs=5,
            epoch_size=1000,
            batch_size=50,
            augment="none",
        )
        result = train(cfg, RunOptions(tmp_path / model), NullReporter())
        assert result.final["primary_test_accuracy"] >= 0.9, (model, result.final)
        if model != "single":
            assert result.final["auxiliary_test_accuracy"] >= 0.9, (model, result.final)
