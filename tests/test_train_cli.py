"""`jade train` end to end through the CLI, on the built-in pair at tiny sizes."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from jadecli.cli import app
from jadecli.objective import TERMS, UNLABELED_TERMS
from jadecli.run import SCHEMA_VERSION
from tests.helpers import TINY, load_ckpt, make_mnist, make_svhn, tiny_synth_args


def read_manifest(run: Path) -> dict:
    return yaml.safe_load((run / "manifest.yaml").read_text())


def read_metrics(run: Path) -> list[dict[str, str]]:
    with open(run / "metrics.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def test_help_lists_all_commands(runner):
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for name in ("train", "evaluate", "inspect-latents", "reconstruct"):
        assert name in result.output


def test_python_dash_m_works():
    proc = subprocess.run(
        [sys.executable, "-m", "jadecli", "--version"], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0
    assert proc.stdout.startswith("jadecli ")


@pytest.mark.parametrize("model", ["single", "paired", "jade"])
def test_train_writes_a_complete_run(trained_runs, model):
    out = trained_runs[model]  # trained by tiny_synth_args (conftest)
    output = (out.parent / f"{model}-output.txt").read_text()
    assert "primary   test accuracy (synth-street)" in output
    assert ("auxiliary test accuracy (synth-hand)" in output) == (model != "single")

    m = read_manifest(out)
    assert m["schema_version"] == SCHEMA_VERSION
    assert m["status"] == "completed"
    assert m["epochs_completed"] == 2
    assert m["config"]["model"] == model
    assert m["config"]["n_labeled"] == 50
    assert m["seed"] == 0 and m["device"] == "cpu"
    assert m["command"].startswith("jade train --primary synth-street")
    for key in ("python", "torch", "torchvision"):
        assert m["versions"][key]
    assert m["datasets"]["primary"]["train_size"] == 10_000
    # single keeps 32x32; --arch shared brings the primary to the auxiliary's 28x28
    shape = [3, 32, 32] if model == "single" else [3, 28, 28]
    assert m["datasets"]["primary"]["image_shape"] == shape
    assert m["datasets"]["primary"]["labeled"]["per_class"] == [5] * 10
    assert m["started_at"] and m["ended_at"]
    assert m["checkpoints"]["last"] == "checkpoints/last.pt"
    if model != "single":
        # grey synth-hand gets 3 channels beside the colour primary (one shared CNN)
        assert m["datasets"]["auxiliary"]["image_shape"] == [3, 28, 28]
    acc = m["final_metrics"]["primary_test_accuracy"]
    assert round(acc * 2000) == pytest.approx(acc * 2000, abs=1e-6)  # a share of 2,000 images
    assert f"{100 * acc:.2f}%" in output

    rows = read_metrics(out)
    assert [r["epoch"] for r in rows] == ["1", "2"]
    # each row's loss is its terms weighted as equation 2 says, with the default weights and
    # --loss-scale mean: reconstructions per pixel value (3 x 28 x 28), KLs per latent
    # dimension (10), the separation term off, the swap term on
    pixels, dims = 3 * 28 * 28, 10
    weight = {
        "recon_aux": 1 / pixels,
        "recon_primary": 1 / pixels,
        "kl_style_aux": 0.003 / dims,
        "kl_content_aux": 0.003 / dims,
        "kl_style_primary": 0.003 / dims,
        "kl_match": 0.3 / dims,
        "separation": 0.0,
        "ce_aux": 1.0,
        "ce_primary": 1.0,
        "style_critic": 0.0,
        "style_confusion": 0.0,
        "swap_class": 1.0,  # on by default (a cross-entropy: per image)
        # --unlabeled's terms: not computed without unlabeled images
        **dict.fromkeys(UNLABELED_TERMS, 0.0),
    }
    for row in rows:
        # a term at weight 0 (separation, by default) is neither computed nor a column
        assert [t for t in TERMS[model] if t in row] == [t for t in TERMS[model] if weight[t]]
        total = sum(weight[t] * float(row[t]) for t in TERMS[model] if t in row)
        assert float(row["loss"]) == pytest.approx(total, rel=2e-5)  # 6 digits in the file
    assert float(rows[-1]["test_acc_primary"]) == pytest.approx(acc, abs=1e-5)
    assert (rows[-1]["test_acc_aux"] == "") == (model == "single")
    assert (rows[0]["test_acc_primary"] == "") == ("--eval-every 0" in m["command"])

    with open(out / "labeled_indices.csv", newline="") as fh:
        labeled = list(csv.DictReader(fh))
    assert len(labeled) == 50
    assert sorted({r["class"] for r in labeled}) == [str(d) for d in range(10)]
    assert len({r["index"] for r in labeled}) == 50

    ckpt = load_ckpt(out / "checkpoints" / "last.pt")  # weights_only=True
    assert ckpt["epoch"] == 2
    assert ckpt["config"]["model"] == model
    assert "torch" in ckpt["rng"]
    assert not list(out.rglob("*.tmp"))


@pytest.mark.slow
def test_same_seed_same_numbers_other_seed_different(runner, synth_dir, trained_runs, tmp_path):
    runs = {}
    # a: the session's JADE run (seed 0); b: the same command again; c: another seed
    for name, seed in (("a", None), ("b", "0"), ("c", "4")):
        out = trained_runs["jade"] if seed is None else tmp_path / name
        if seed is not None:
            args = tiny_synth_args(synth_dir, out, "jade", ("--seed", seed))
            result = runner.invoke(app, args)
            assert result.exit_code == 0, result.output
        runs[name] = (read_metrics(out), load_ckpt(out / "checkpoints" / "last.pt")["model"])

    def strip(rows: list[dict[str, str]]) -> list[dict[str, str]]:
        return [
            {k: v for k, v in r.items() if k not in ("seconds", "examples_per_s")} for r in rows
        ]

    assert strip(runs["a"][0]) == strip(runs["b"][0])
    for key, tensor in runs["a"][1].items():
        assert torch.equal(tensor, runs["b"][1][key]), key
    assert strip(runs["a"][0]) != strip(runs["c"][0])
    indices = {r: (tmp_path / r / "labeled_indices.csv").read_text() for r in "bc"}
    indices["a"] = (trained_runs["jade"] / "labeled_indices.csv").read_text()
    assert indices["a"] == indices["b"] != indices["c"]


@pytest.mark.slow
def test_config_file_precedence(runner, synth_dir, tmp_path):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("epochs: 1\nbatch-size: 40\nlr: 3e-4\nmodel: paired\nseed: 9\n")
    out = tmp_path / "run"
    args = tiny_synth_args(synth_dir, out, "jade")  # the flag --model jade beats the file
    args[args.index("--epochs") + 1] = "2"
    result = runner.invoke(app, [*args, "--config", str(cfg)])
    assert result.exit_code == 0, result.output
    c = read_manifest(out)["config"]
    assert c["model"] == "jade"  # flag
    assert c["epochs"] == 2  # flag
    assert c["batch_size"] == 50  # flag (TINY)
    assert c["seed"] == 9  # file
    assert c["lr"] == 3e-4  # file ("3e-4" is a YAML string; the default is 1e-3)
    assert c["style_dim"] == 10  # code default


@pytest.mark.slow
def test_default_out_is_a_fresh_folder_under_runs(runner, synth_dir, tmp_path):
    args = tiny_synth_args(synth_dir, tmp_path / "x", "single")
    i = args.index("--out")
    del args[i : i + 2]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    made = list((tmp_path / "runs").iterdir())
    assert len(made) == 1 and made[0].name.startswith("single-synth-street-")
    assert read_manifest(made[0])["status"] == "completed"


@pytest.mark.slow
def test_existing_out_is_refused_then_overwritten_on_request(runner, synth_dir, tmp_path):
    out = tmp_path / "run"
    assert runner.invoke(app, tiny_synth_args(synth_dir, out, "single")).exit_code == 0
    before = (out / "manifest.yaml").read_text()
    again = runner.invoke(app, tiny_synth_args(synth_dir, out, "single"))
    assert again.exit_code == 1
    assert "already exists" in again.output and "--overwrite" in again.output
    assert (out / "manifest.yaml").read_text() == before  # untouched
    over = runner.invoke(
        app, [*tiny_synth_args(synth_dir, out, "single", ("--seed", "5")), "--overwrite"]
    )
    assert over.exit_code == 0, over.output
    assert read_manifest(out)["seed"] == 5


def test_overwrite_never_deletes_a_folder_that_is_not_a_run(runner, synth_dir, tmp_path):
    out = tmp_path / "precious"
    out.mkdir()
    (out / "thesis.tex").write_text("do not delete")
    result = runner.invoke(app, [*tiny_synth_args(synth_dir, out, "single"), "--overwrite"])
    assert result.exit_code == 1
    assert "not a jadecli run" in result.output
    assert (out / "thesis.tex").read_text() == "do not delete"


@pytest.mark.slow
def test_resume_extends_a_run_exactly(runner, synth_dir, tmp_path):
    """2 epochs + resume to 4 == 4 epochs straight (constant schedule, so the lr agrees)."""
    extra = ("--lr-schedule", "constant")
    straight, split = tmp_path / "straight", tmp_path / "split"
    args4 = tiny_synth_args(synth_dir, straight, "jade", extra)
    args4[args4.index("--epochs") + 1] = "4"
    assert runner.invoke(app, args4).exit_code == 0
    assert runner.invoke(app, tiny_synth_args(synth_dir, split, "jade", extra)).exit_code == 0
    resumed = runner.invoke(
        app, ["train", "--out", str(split), "--resume", "--epochs", "4", "--no-progress"]
    )
    assert resumed.exit_code == 0, resumed.output
    a = load_ckpt(straight / "checkpoints" / "last.pt")["model"]
    b = load_ckpt(split / "checkpoints" / "last.pt")["model"]
    for key in a:
        assert torch.equal(a[key], b[key]), key
    m = read_manifest(split)
    assert m["status"] == "completed" and m["epochs_completed"] == 4
    assert [e["event"] for e in m["events"]] == ["started", "completed", "resumed", "completed"]
    assert [r["epoch"] for r in read_metrics(split)] == ["1", "2", "3", "4"]


@pytest.mark.slow
def test_resume_refuses_a_changed_recipe_and_reports_a_finished_run(runner, synth_dir, tmp_path):
    out = tmp_path / "run"
    assert runner.invoke(app, tiny_synth_args(synth_dir, out, "single")).exit_code == 0
    changed = runner.invoke(app, ["train", "--out", str(out), "--resume", "--lr", "0.5"])
    assert changed.exit_code == 2
    assert "--lr" in changed.output and "differs" in changed.output
    same = runner.invoke(app, [*tiny_synth_args(synth_dir, out, "single"), "--resume"])
    assert same.exit_code == 0, same.output
    assert "already completed 2 epochs" in same.output
    shorter = runner.invoke(app, ["train", "--out", str(out), "--resume", "--epochs", "1"])
    assert shorter.exit_code == 2 and "already has 2 epochs" in shorter.output
    assert read_manifest(out)["status"] == "completed"


def test_resume_of_a_missing_run_is_a_clear_error(runner, tmp_path):
    result = runner.invoke(app, ["train", "--out", str(tmp_path / "nope"), "--resume"])
    assert result.exit_code == 1
    assert "no such folder" in result.output
    no_out = runner.invoke(app, ["train", "--resume"])
    assert no_out.exit_code == 2 and "--resume needs --out" in no_out.output


@pytest.mark.slow
def test_svhn_and_mnist_files_end_to_end(runner, tmp_path):
    """The paper's pair, on tiny files in the official formats (not the official bytes)."""
    data = make_mnist(make_svhn(tmp_path / "data", n_train=100, n_test=30), 200, 40)
    out = tmp_path / "run"
    args = [
        "train",
        "--primary",
        "svhn",
        "--n-labeled",
        "50",
        "--auxiliary",
        "mnist",
        "--data-dir",
        str(data),
        "--out",
        str(out),
        "--aux-per-class",
        "15",
        "--labeled-selection",
        "first",
        *TINY,
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "warning: svhn:" in result.output and "not the official file" in result.output
    m = read_manifest(out)
    assert m["datasets"]["primary"]["verified"] == {"train": False, "test": False}
    assert m["datasets"]["primary"]["image_shape"] == [3, 28, 28]  # MNIST's size (shared CNN)
    assert m["datasets"]["auxiliary"]["used_per_class"] == [15] * 10
    assert m["datasets"]["primary"]["labeled"]["selection"] == "first"
    with open(out / "labeled_indices.csv", newline="") as fh:
        first = [int(r["index"]) for r in csv.DictReader(fh)]
    assert first == list(range(50))  # labels cycle 0..9, so the first 5 of each class are 0..49


@pytest.mark.slow
def test_resume_with_more_epochs_keeps_the_planned_schedule(runner, synth_dir, tmp_path):
    """The cosine schedule is planned over the 2 epochs the run started with; the 2 epochs a
    resume adds train at the rate it ended with (lr / 100), never jumping back up."""
    out = tmp_path / "run"
    assert runner.invoke(app, tiny_synth_args(synth_dir, out, "single")).exit_code == 0
    steps = read_manifest(out)["training"]["steps_per_epoch"]
    more = ["train", "--out", str(out), "--resume", "--epochs", "4", "--no-progress"]
    result = runner.invoke(app, more)
    assert result.exit_code == 0, result.output
    lrs = [float(r["lr"]) for r in read_metrics(out)]
    assert lrs[0] > lrs[1] > lrs[2] == lrs[3] == pytest.approx(1e-5)
    m = read_manifest(out)
    assert m["training"]["schedule_steps"] == 2 * steps
    assert m["training"]["total_steps"] == 4 * steps and m["config"]["epochs"] == 4
    assert load_ckpt(out / "checkpoints" / "last.pt")["schedule_steps"] == 2 * steps


@pytest.mark.slow
def test_runs_of_another_schema_or_checkpoint_format_get_one_line(runner, synth_dir, tmp_path):
    out = tmp_path / "run"
    assert runner.invoke(app, tiny_synth_args(synth_dir, out, "single")).exit_code == 0
    manifest_path = out / "manifest.yaml"
    good = manifest_path.read_text()
    m = read_manifest(out)
    manifest_path.write_text(yaml.safe_dump({**m, "schema_version": 1, "jadecli_version": "0.0.9"}))
    for args in (
        ["train", "--out", str(out), "--resume"],
        ["evaluate", str(out), "--device", "cpu"],
    ):
        result = runner.invoke(app, args)
        assert result.exit_code == 1 and "Traceback" not in result.output
        (line,) = [x for x in result.output.splitlines() if x.startswith("error: ")]
        assert "run schema 1, written by jadecli 0.0.9" in line and "train the run again" in line
    manifest_path.write_text(good)
    ckpt = out / "checkpoints" / "last.pt"
    state = load_ckpt(ckpt)
    torch.save({**state, "format": 1}, ckpt)
    result = runner.invoke(app, ["train", "--out", str(out), "--resume", "--epochs", "3"])
    assert result.exit_code == 1 and "has format 1" in result.output
    assert "train the run again" in result.output


@pytest.mark.slow
def test_resume_refuses_a_folder_whose_checkpoint_and_manifest_disagree(
    runner, synth_dir, tmp_path
):
    out = tmp_path / "run"
    assert runner.invoke(app, tiny_synth_args(synth_dir, out, "single")).exit_code == 0
    m = read_manifest(out)
    m["config"]["lr"] = 0.5
    (out / "manifest.yaml").write_text(yaml.safe_dump(m))
    result = runner.invoke(app, ["train", "--out", str(out), "--resume", "--epochs", "3"])
    assert result.exit_code == 1
    assert "was trained with lr = 0.001" in result.output and "inconsistent" in result.output


@pytest.mark.slow
def test_resume_of_a_run_that_trained_every_epoch_but_was_stopped_marks_it_completed(
    runner, synth_dir, tmp_path
):
    """A signal between the last checkpoint and the final manifest write leaves every epoch
    trained but the run marked interrupted; resuming it has nothing to train, and says so."""
    out = tmp_path / "run"
    assert runner.invoke(app, tiny_synth_args(synth_dir, out, "single")).exit_code == 0
    m = read_manifest(out)
    final = m["final_metrics"]
    stopped = {**m, "status": "interrupted", "epochs_completed": 1, "final_metrics": None}
    (out / "manifest.yaml").write_text(yaml.safe_dump(stopped, sort_keys=False))
    result = runner.invoke(app, ["train", "--out", str(out), "--resume"])
    assert result.exit_code == 0, result.output
    assert "already completed 2 epochs" in result.output
    m = read_manifest(out)
    assert m["status"] == "completed" and m["events"][-1]["event"] == "completed"
    assert m["epochs_completed"] == 2
    # rebuilt from metrics.csv: the numbers to its 6 digits, the rest (None, names) exactly
    rebuilt = m["final_metrics"]
    numbers = [k for k, v in final.items() if isinstance(v, float)]
    assert set(rebuilt) == set(final) and numbers
    assert [rebuilt[k] for k in numbers] == pytest.approx([final[k] for k in numbers], rel=1e-5)
    assert {k: v for k, v in rebuilt.items() if k not in numbers} == {
        k: v for k, v in final.items() if k not in numbers
    }
