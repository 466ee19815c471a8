"""Choosing without test data: `--val` holds out labeled primary images, `--select best-val`
keeps the epoch that scores best on them, and `--no-test` never evaluates the test split.

What a user sees is checked: which images were held out (labeled_indices.csv), the per-epoch
validation accuracy (metrics.csv), the selected epoch and its checkpoint (manifest.yaml,
checkpoints/best.pt), and that `jade evaluate` analyses the selected weights by default."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
import yaml

import jadecli.engine as engine
from jadecli.cli import app
from tests.helpers import load_ckpt, tiny_synth_args


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def manifest(run: Path) -> dict:
    return yaml.safe_load((run / "manifest.yaml").read_text())


def evaluate(runner, run: Path, *extra: str) -> dict:
    result = runner.invoke(
        app, ["evaluate", str(run), "--device", "cpu", "--format", "json", *extra]
    )
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


@pytest.mark.slow
def test_val_holds_out_class_balanced_labeled_images_and_scores_them_every_epoch(
    runner, synth_dir, tmp_path
):
    run = tmp_path / "run"
    args = tiny_synth_args(synth_dir, run, "jade", ("--val", "20%", "--epochs", "3"))
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output

    rows = read_rows(run / "labeled_indices.csv")
    train = [r for r in rows if r["part"] == "train"]
    val = [r for r in rows if r["part"] == "val"]
    assert (len(train), len(val)) == (40, 10)  # 20% of 5 per class = 1 per class held out
    assert sorted(r["class"] for r in val) == sorted({r["class"] for r in rows})
    assert not {r["index"] for r in train} & {r["index"] for r in val}

    m = manifest(run)
    assert m["datasets"]["primary"]["labeled"]["size"] == 40  # what was trained on
    assert m["datasets"]["primary"]["validation"]["size"] == 10
    metrics = read_rows(run / "metrics.csv")
    assert len(metrics) == 3 and all(r["val_acc_primary"] != "" for r in metrics)
    # --select last (the default): the run ends with its last epoch, whatever validation says
    assert m["final_metrics"]["selection"] == "last"
    assert m["final_metrics"]["selected_epoch"] == 3
    assert m["final_metrics"]["primary_val_accuracy"] == pytest.approx(
        float(metrics[-1]["val_acc_primary"])
    )
    assert "val acc" in result.output

    # the analysis splits know the held-out images: val is them, train-unlabeled excludes them
    report = evaluate(runner, run, "--split", "val")
    assert report["primary"]["images"] == 10
    assert report["primary"]["accuracy"] == pytest.approx(float(metrics[-1]["val_acc_primary"]))
    unlabeled = evaluate(runner, run, "--split", "train-unlabeled")
    whole = evaluate(runner, run, "--split", "train")
    assert unlabeled["primary"]["images"] == whole["primary"]["images"] - 50


@pytest.mark.slow
def test_best_val_keeps_the_best_epoch_and_every_command_uses_it(
    runner, synth_dir, tmp_path, monkeypatch
):
    """Validation scores are scripted (epoch 1 best) so that the selected epoch is not the last;
    with --eval-every 0 its test accuracy is measured from best.pt at the end."""
    scores = iter([0.9, 0.5, 0.7])
    real = engine.accuracy
    monkeypatch.setattr(engine, "accuracy", lambda *a, **k: (real(*a, **k), next(scores))[1])
    run = tmp_path / "run"
    extra = ("--val", "10", "--select", "best-val", "--epochs", "3")
    result = runner.invoke(app, tiny_synth_args(synth_dir, run, "jade", extra))
    assert result.exit_code == 0, result.output
    assert "selected epoch 1 of 3 (best validation accuracy, 90.00%)" in result.output

    m = manifest(run)
    final = m["final_metrics"]
    assert (final["selection"], final["selected_epoch"]) == ("best-val", 1)
    assert final["primary_val_accuracy"] == pytest.approx(0.9)
    assert m["checkpoints"]["selected"] == "checkpoints/best.pt"
    assert load_ckpt(run / "checkpoints" / "best.pt")["epoch"] == 1
    assert load_ckpt(run / "checkpoints" / "last.pt")["epoch"] == 3  # what --resume continues
    metrics = read_rows(run / "metrics.csv")
    assert [r["test_acc_primary"] != "" for r in metrics] == [True, False, True]
    assert final["primary_test_accuracy"] == pytest.approx(float(metrics[0]["test_acc_primary"]))

    # jade evaluate analyses the selected weights unless told otherwise
    report = evaluate(runner, run)
    assert report["checkpoint"].endswith("best.pt")
    assert report["primary"]["accuracy"] == pytest.approx(final["primary_test_accuracy"])
    last = evaluate(runner, run, "--checkpoint", str(run / "checkpoints" / "last.pt"))
    assert last["primary"]["accuracy"] == pytest.approx(float(metrics[-1]["test_acc_primary"]))

    # without its selected checkpoint the run is not silently analysed at another epoch
    (run / "checkpoints" / "best.pt").unlink()
    result = runner.invoke(app, ["evaluate", str(run), "--device", "cpu"])
    assert result.exit_code != 0
    assert "best.pt (--select best-val), which is missing" in result.output


@pytest.mark.slow
def test_no_test_never_evaluates_the_test_split(runner, synth_dir, tmp_path, monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("the test split was evaluated")

    monkeypatch.setattr(engine, "evaluate_test", forbidden)
    run = tmp_path / "run"
    extra = ("--no-test", "--eval-every", "1", "--val", "10")
    result = runner.invoke(app, tiny_synth_args(synth_dir, run, "paired", extra))
    assert result.exit_code == 0, result.output
    assert "test accuracy" not in result.output
    final = manifest(run)["final_metrics"]
    assert final["primary_test_accuracy"] is None and final["primary_val_accuracy"] is not None
    assert all(r["test_acc_primary"] == "" for r in read_rows(run / "metrics.csv"))


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (("--val", "15"), "--val 15 cannot be split evenly over the 10 classes"),
        (("--val", "0.95"), "at least one per class must stay for training"),
        (("--select", "best-val"), "--select best-val needs a validation split: add --val N"),
        (("--val", "50"), "--val 50 leaves nothing to train on"),
    ],
)
def test_bad_validation_requests_stop_with_one_line(runner, synth_dir, tmp_path, extra, message):
    run = tmp_path / "run"
    result = runner.invoke(app, tiny_synth_args(synth_dir, run, "single", extra))
    assert result.exit_code != 0
    assert message in result.output
    assert "Traceback" not in result.output
    assert not (run / "manifest.yaml").exists()


@pytest.mark.slow
def test_ema_weights_are_what_is_evaluated_and_a_resume_continues_them_exactly(
    runner, synth_dir, tmp_path
):
    """--ema: the checkpoint's "model" is the moving average (what evaluate scores) and
    "train_model" the trained weights; 2 epochs + resume to 3 == 3 epochs straight, both."""
    extra = ("--ema", "0.9", "--lr-schedule", "constant", "--eval-every", "1")
    straight, split = tmp_path / "straight", tmp_path / "split"
    args = tiny_synth_args(synth_dir, straight, "jade", (*extra, "--epochs", "3"))
    assert runner.invoke(app, args).exit_code == 0
    assert runner.invoke(app, tiny_synth_args(synth_dir, split, "jade", extra)).exit_code == 0
    resumed = runner.invoke(
        app, ["train", "--out", str(split), "--resume", "--epochs", "3", "--no-progress"]
    )
    assert resumed.exit_code == 0, resumed.output
    a = load_ckpt(straight / "checkpoints" / "last.pt")
    b = load_ckpt(split / "checkpoints" / "last.pt")
    for part in ("model", "train_model"):
        for key in a[part]:
            assert torch.equal(a[part][key], b[part][key]), (part, key)
    moved = [k for k in a["model"] if not torch.equal(a["model"][k], a["train_model"][k])]
    assert moved  # the average is not the last weights
    final = manifest(straight)["final_metrics"]["primary_test_accuracy"]
    assert evaluate(runner, straight)["primary"]["accuracy"] == pytest.approx(final)


def test_split_val_of_a_run_without_val_says_so(runner, trained_runs):
    result = runner.invoke(
        app, ["evaluate", str(trained_runs["jade"]), "--split", "val", "--device", "cpu"]
    )
    assert result.exit_code == 2
    assert "was trained without --val, so it has no validation images" in result.output
    assert "Traceback" not in result.output
