"""Training that goes wrong: divergence, Ctrl-C, crashes. The run folder must tell the truth and
keep the last good checkpoint; an interrupted run resumes to exactly the uninterrupted result."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from conftest import load_ckpt, make_folder, make_mnist, tiny_synth_args

import jadecli.engine as engine
from jadecli.cli import app
from jadecli.config import TrainConfig
from jadecli.engine import RunOptions, train
from jadecli.errors import Interrupted
from jadecli.progress import NullReporter


def manifest(run: Path) -> dict:
    return yaml.safe_load((run / "manifest.yaml").read_text())


def poison_step(monkeypatch, at_call: int, term: str) -> None:
    """Make the JADE objective return a NaN `term` from its `at_call`-th call on."""
    real = engine.jade_terms
    calls = {"n": 0}

    def patched(*args, **kwargs):
        terms = real(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] >= at_call:
            terms[term] = terms[term] * float("nan")
        return terms

    monkeypatch.setattr(engine, "jade_terms", patched)


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
    assert "last good checkpoint" in line and "(epoch 1)" in line
    m = manifest(out)
    assert m["status"] == "failed"
    assert "kl_match" in m["error"]
    assert m["epochs_completed"] == 1
    ckpt = load_ckpt(out / "checkpoints" / "last.pt")
    assert ckpt["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values())


def test_nan_in_the_first_epoch_says_no_checkpoint(runner, synth_dir, tmp_path, monkeypatch):
    out = tmp_path / "run"
    poison_step(monkeypatch, at_call=1, term="recon_primary")
    result = runner.invoke(app, tiny_synth_args(synth_dir, out, "jade"))
    assert result.exit_code == 1
    assert "epoch 1, step 1" in result.output and "no checkpoint was written" in result.output
    assert manifest(out)["status"] == "failed"


def test_paper_scale_weights_stay_finite(runner, synth_dir, tmp_path):
    """The original recipe (CE x1e4 / x1e5, beta_1 0.1, lr 1e-3) must not go NaN here."""
    out = tmp_path / "run"
    extra = (
        "--adam-beta1",
        "0.1",
        "--aux-ce-weight",
        "1e4",
        "--primary-ce-weight",
        "1e5",
        "--lr",
        "1e-3",
        "--dropout",
        "0.5",
    )
    result = runner.invoke(app, tiny_synth_args(synth_dir, out, "jade", extra))
    assert result.exit_code == 0, result.output
    assert manifest(out)["status"] == "completed"


class InterruptAt(NullReporter):
    """Presses Ctrl-C in the middle of an epoch."""

    def __init__(self, epoch: int, step: int):
        self.epoch, self.step, self.current = epoch, step, 0

    def start_epoch(self, epoch, epochs, steps, unit):
        self.current = epoch

    def update(self, step, loss, rate):
        if self.current == self.epoch and step >= self.step:
            raise KeyboardInterrupt


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
    )
    base.update(kw)
    return TrainConfig(**base)


@pytest.fixture()
def small_data(tmp_path: Path) -> Path:
    data = make_mnist(tmp_path / "data", n_train=300, n_test=50)
    make_folder(
        data / "prim", classes=tuple(str(d) for d in range(10)), n_train=4, n_test=3, size=16
    )
    return data


def test_ctrl_c_marks_the_run_interrupted_and_resume_matches_an_uninterrupted_run(
    small_data, tmp_path
):
    cfg = small_cfg(small_data)  # cosine schedule: the resumed run must follow it exactly
    straight = tmp_path / "straight"
    train(cfg, RunOptions(straight), NullReporter())

    broken = tmp_path / "broken"
    with pytest.raises(Interrupted) as err:
        train(cfg, RunOptions(broken), InterruptAt(epoch=2, step=10))
    assert err.value.exit_code == 130
    assert "--resume" in str(err.value)
    m = manifest(broken)
    assert m["status"] == "interrupted" and m["epochs_completed"] == 1
    assert load_ckpt(broken / "checkpoints" / "last.pt")["epoch"] == 1

    result = train(cfg, RunOptions(broken, resume=True), NullReporter())
    assert result.status == "completed" and result.epochs_completed == 3
    a = load_ckpt(straight / "checkpoints" / "last.pt")
    b = load_ckpt(broken / "checkpoints" / "last.pt")
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    assert manifest(broken)["final_metrics"] == manifest(straight)["final_metrics"]


def test_a_crash_leaves_status_failed_and_a_traceback_file(small_data, tmp_path, monkeypatch):
    def boom(*args, **kwargs):
        raise RuntimeError("simulated bug")

    monkeypatch.setattr(engine, "evaluate_test", boom)
    out = tmp_path / "run"
    with pytest.raises(engine.TrainingFailed, match="simulated bug"):
        train(small_cfg(small_data), RunOptions(out), NullReporter())
    assert manifest(out)["status"] == "failed"
    assert "simulated bug" in (out / "error.log").read_text()


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
