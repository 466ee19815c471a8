"""`jade evaluate`, `inspect-latents` and `reconstruct` end to end on tiny trained runs."""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from jadecli.cli import app
from tests.helpers import run_example, shell_env


@pytest.fixture()
def run_copy(trained_runs, tmp_path):
    """A copy of the session's tiny run of a model, free to change."""

    def make(model: str) -> Path:
        dst = tmp_path / f"copy-{model}"
        shutil.copytree(trained_runs[model], dst)
        return dst

    return make


def read_manifest(run: Path) -> dict:
    return yaml.safe_load((run / "manifest.yaml").read_text())


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def fingerprint(run: Path) -> dict[str, str]:
    """Hashes of everything `jade train` wrote (analysis outputs excluded)."""
    return {
        str(p.relative_to(run)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(run.rglob("*"))
        if p.is_file() and "analysis" not in p.relative_to(run).parts
    }


def assert_png(path: Path, min_side: int = 60) -> np.ndarray:
    assert path.is_file(), path
    with Image.open(path) as img:
        assert img.format == "PNG"
        arr = np.asarray(img.convert("RGB")).astype(float)
    assert min(arr.shape[:2]) >= min_side
    assert arr.std() > 5, f"{path} looks blank"
    return arr


# --------------------------------------------------------------------------- evaluate


@pytest.mark.slow
def test_evaluate_jade_writes_tables_and_matches_training(runner, run_copy):
    run = run_copy("jade")
    before = read_manifest(run)
    result = runner.invoke(app, ["evaluate", str(run), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "confusion matrix" in result.stdout and "ELBO" in result.stdout
    out = run / "analysis" / "evaluate-test"
    summary = json.loads((out / "summary.json").read_text())
    prim, aux = summary["primary"], summary["auxiliary"]
    # the same checkpoint scored the same way as the training run's final evaluation
    assert prim["accuracy"] == pytest.approx(before["final_metrics"]["primary_test_accuracy"])
    assert aux["accuracy"] == pytest.approx(before["final_metrics"]["auxiliary_test_accuracy"])
    assert prim["images"] == 2000 and aux["images"] == 2000
    for role, res in (("primary", prim), ("auxiliary", aux)):
        with open(out / f"confusion_{role}.csv", newline="") as fh:
            rows = list(csv.reader(fh))
        assert rows[0][1:] == [str(d) for d in range(10)]
        matrix = np.array([[int(v) for v in r[1:]] for r in rows[1:]])
        assert matrix.sum() == res["images"]
        assert np.trace(matrix) / matrix.sum() == pytest.approx(res["accuracy"])
        assert matrix.tolist() == res["confusion"]
        assert_png(out / f"confusion_{role}.png", 200)
        elbo = res["elbo"]
        assert all(math.isfinite(elbo[k]) for k in ("recon", "kl_style", "kl_content"))
        assert elbo["elbo"] == pytest.approx(
            -(elbo["recon"] + elbo["kl_style"] + elbo["kl_content"])
        )
        assert res["nll"] > 0
    per_class = read_csv(out / "per_class.csv")
    assert len(per_class) == 20
    prim_rows = [r for r in per_class if r["role"] == "primary"]
    assert sum(int(r["correct"]) for r in prim_rows) == round(prim["accuracy"] * 2000)
    assert math.isfinite(summary["kl_match"]) and summary["kl_match"] >= 0

    after = read_manifest(run)
    assert after["events"] == before["events"]  # history untouched
    assert len(after["analyses"]) == 1
    entry = after["analyses"][0]
    assert entry["analysis"] == "evaluate" and entry["split"] == "test"
    assert entry["primary_accuracy"] == pytest.approx(prim["accuracy"])
    assert entry["command"].startswith("jade evaluate")


@pytest.mark.slow
def test_evaluate_is_deterministic_and_appends(runner, run_copy):
    run = run_copy("jade")
    r1 = runner.invoke(app, ["evaluate", str(run), "--device", "cpu", "--format", "json"])
    r2 = runner.invoke(app, ["evaluate", str(run), "--device", "cpu", "--format", "json"])
    assert r1.exit_code == r2.exit_code == 0
    a, b = json.loads(r1.stdout), json.loads(r2.stdout)
    assert a["primary"]["elbo"] == b["primary"]["elbo"]
    assert a["kl_match"] == b["kl_match"]
    assert len(read_manifest(run)["analyses"]) == 2


@pytest.mark.slow
def test_evaluate_json_pipes_through_a_real_shell(run_copy, tmp_path):
    run = run_copy("paired")
    command = [sys.executable, "-m", "jadecli", "evaluate", str(run), "--device", "cpu"]
    proc = subprocess.run([*command, "--format", "json"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)  # stdout is pure JSON; messages went to stderr
    final = read_manifest(run)["final_metrics"]
    assert report["primary"]["accuracy"] == final["primary_test_accuracy"]
    assert report["primary"]["elbo"] is None  # a paired model has no ELBO
    assert report["kl_match"] is None
    proc = subprocess.run([*command, "--format", "yaml"], capture_output=True, text=True)
    assert yaml.safe_load(proc.stdout)["primary"]["accuracy"] == report["primary"]["accuracy"]


@pytest.mark.slow
def test_min_accuracy_gate(runner, run_copy):
    run = run_copy("single")
    ok = runner.invoke(
        app, ["evaluate", str(run), "--device", "cpu", "--min-accuracy", "0", "--format", "json"]
    )
    assert ok.exit_code == 0, ok.output
    assert json.loads(ok.stdout)["passed"] is True
    bad = runner.invoke(app, ["evaluate", str(run), "--device", "cpu", "--min-accuracy", "100%"])
    assert bad.exit_code == 3
    assert "below --min-accuracy 100.00%" in bad.stderr
    assert "Traceback" not in bad.output
    assert read_manifest(run)["analyses"][-1]["passed"] is False
    wrong = runner.invoke(app, ["evaluate", str(run), "--device", "cpu", "--min-accuracy", "85"])
    assert wrong.exit_code == 2
    assert "85%" in wrong.stderr


@pytest.mark.slow
def test_evaluate_splits_and_limit(runner, run_copy):
    run = run_copy("paired")
    m = read_manifest(run)
    n_lab = m["datasets"]["primary"]["labeled"]["size"]
    n_train = m["datasets"]["primary"]["train_size"]
    for split, expected in (
        ("train-labeled", n_lab),
        ("train-unlabeled", n_train - n_lab),
        ("train", n_train),
    ):
        r = runner.invoke(
            app, ["evaluate", str(run), "--device", "cpu", "--split", split, "--format", "json"]
        )
        assert r.exit_code == 0, r.output
        assert json.loads(r.stdout)["primary"]["images"] == expected
    r = runner.invoke(
        app, ["evaluate", str(run), "--device", "cpu", "--test-limit", "100", "--format", "json"]
    )
    rep = json.loads(r.stdout)
    assert rep["primary"]["images"] == 100 and rep["auxiliary"]["images"] == 100
    assert (run / "analysis" / "evaluate-test-first100" / "summary.json").is_file()


@pytest.mark.slow
def test_evaluate_out_and_checkpoint_flags(runner, run_copy, tmp_path):
    run = run_copy("jade")
    # another checkpoint of this model, whose classifier answers class 3 whatever it sees
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    biases = [k for k in state["model"] if k.startswith("classifier.") and k.endswith(".bias")]
    last = max(biases, key=lambda k: int(k.split(".")[-2]))  # the output layer's bias
    state["model"][last.replace("bias", "weight")].zero_()
    state["model"][last].copy_(torch.nn.functional.one_hot(torch.tensor(3), 10) * 5.0)
    ckpt = tmp_path / "elsewhere.pt"
    torch.save(state, ckpt)
    out = tmp_path / "eval-out"
    r = runner.invoke(
        app, ["evaluate", str(run), "--device", "cpu", "--checkpoint", str(ckpt), "--out", str(out)]
    )
    assert r.exit_code == 0, r.output
    assert (out / "confusion_primary.png").is_file()
    summary = json.loads((out / "summary.json").read_text())
    for role in ("primary", "auxiliary"):
        confusion = np.array(summary[role]["confusion"])  # rows: true class, columns: predicted
        assert confusion[:, 3].sum() == confusion.sum() == 2000
        assert summary[role]["accuracy"] == confusion[3, 3] / 2000
    assert not (run / "analysis").exists()
    entry = read_manifest(run)["analyses"][0]
    assert entry["checkpoint"] == str(ckpt.resolve())


# --------------------------------------------------------------------------- inspect-latents


@pytest.mark.slow
def test_inspect_latents_jade(runner, run_copy):
    run = run_copy("jade")
    r = runner.invoke(app, ["inspect-latents", str(run), "--device", "cpu", "--dataset", "both"])
    assert r.exit_code == 0, r.output
    assert "disentanglement ratio" in r.stdout
    out = run / "analysis" / "latents-test"
    summary = json.loads((out / "summary.json").read_text())
    for role in ("primary", "auxiliary"):
        rows = read_csv(out / f"{role}_variance.csv")
        assert [row["class"] for row in rows] == [*map(str, range(10)), "random"]
        dims = read_csv(out / f"{role}_dimensions.csv")
        assert [d["dim"] for d in dims] == [f"content_{i}" for i in range(10)] + [
            f"style_{i}" for i in range(10)
        ]
        # the CSV twins agree with each other and with the summary
        content, style = [], []
        for d in dims:
            col = [float(row[d["dim"]]) for row in rows[:10] if row[d["dim"]] != ""]
            if d["active"] == "1":
                assert float(d["mean_within_class"]) == pytest.approx(np.mean(col), rel=1e-4)
                (content if d["group"] == "content" else style).extend(col)
            else:
                assert col == []  # inactive dims carry no normalised variance
        res = summary[role]
        if content and style:
            ratio = np.mean(style) / np.mean(content)
            assert res["disentanglement_ratio"] == pytest.approx(ratio, rel=1e-3)
        assert_png(out / f"{role}_latents.png", 200)
        probe = read_csv(out / f"{role}_probe.csv")
        factors = {p["factor"] for p in probe}
        assert "class" in factors and len(factors) > 3  # synth data know their style factors
        for p in probe:
            if p["metric"] == "accuracy":
                assert 0 <= float(p["content"]) <= 1 and 0 <= float(p["style"]) <= 1
        assert_png(out / f"{role}_probe.png", 200)
    entry = read_manifest(run)["analyses"][-1]
    assert entry["analysis"] == "inspect-latents"
    assert entry["primary"]["disentanglement_ratio"] == summary["primary"]["disentanglement_ratio"]


@pytest.mark.slow
def test_inspect_latents_paired_and_single_say_what_they_cannot_show(runner, run_copy):
    run = run_copy("paired")
    r = runner.invoke(app, ["inspect-latents", str(run), "--device", "cpu", "--format", "json"])
    assert r.exit_code == 0, r.output
    rep = json.loads(r.stdout)["primary"]
    assert rep["disentanglement_ratio"] is None
    assert any("no style latents" in n for n in rep["notes"])
    assert rep["feature_within"] is not None
    single = run_copy("single")
    r = runner.invoke(
        app, ["inspect-latents", str(single), "--device", "cpu", "--dataset", "auxiliary"]
    )
    assert r.exit_code == 2
    assert "no auxiliary dataset" in r.stderr


def test_variance_profile_known_answer():
    """Dims that are a function of the class have v ~ 0; pure-noise dims have v ~ 1."""
    from jadecli.analysis.latents import variance_profile

    gen = torch.Generator().manual_seed(0)
    labels = torch.arange(2000) % 10
    content = torch.nn.functional.one_hot(labels, 10).double()[:, :4] * 3
    content += 0.01 * torch.randn(2000, 4, generator=gen, dtype=torch.float64)
    style = torch.randn(2000, 3, generator=gen, dtype=torch.float64)
    dead = torch.zeros(2000, 1, dtype=torch.float64)
    z = torch.cat([content, style, dead], 1)
    prof = variance_profile(z, labels, 10, threshold=0.01, seed=0)
    assert prof.active.tolist() == [True] * 7 + [False]
    # class c's images sit at one value of each content dim: ~0 within-class variance
    assert float(np.nanmax(prof.within[:, :4].numpy())) < 0.01
    assert np.nanmean(prof.within[:, 4:7].numpy()) == pytest.approx(1.0, abs=0.1)
    assert torch.isnan(prof.within[:, 7]).all()
    assert prof.random_groups[:7].numpy() == pytest.approx(np.ones(7), abs=0.15)


def test_probe_known_answer():
    from jadecli.analysis.latents import probe_score

    gen = torch.Generator().manual_seed(0)
    y = torch.arange(400) % 4
    informative = torch.nn.functional.one_hot(y, 4).float() + 0.1 * torch.randn(
        400, 4, generator=gen
    )
    noise = torch.randn(400, 4, generator=gen)
    train, test = torch.arange(200), torch.arange(200, 400)
    assert probe_score(informative, y, train, test, True) > 0.95
    assert probe_score(noise, y, train, test, True) < 0.45
    t = informative[:, 0] * 2 + 1
    assert probe_score(informative, t, train, test, False) > 0.95
    assert abs(probe_score(noise, t, train, test, False)) < 0.2


# --------------------------------------------------------------------------- reconstruct


@pytest.mark.slow
def test_reconstruct_jade_grids_and_numbers(runner, run_copy):
    run = run_copy("jade")
    r = runner.invoke(
        app,
        [
            "reconstruct",
            str(run),
            "--device",
            "cpu",
            "--n",
            "5",
            "--traverse",
            "c0,style_1",
            "--traverse-steps",
            "4",
        ],
    )
    assert r.exit_code == 0, r.output
    out = run / "analysis" / "reconstruct-test-seed0"
    small = assert_png(out / "reconstructions.png", 100)
    recon = read_csv(out / "reconstructions.csv")
    assert len(recon) == 10
    assert [row["class"] for row in recon if row["role"] == "primary"] == list("01234")
    assert all(float(row["bce"]) > 0 and 0 <= float(row["mse"]) <= 1 for row in recon)
    swaps = read_csv(out / "swaps.csv")
    assert len(swaps) == 4 * 5 * 5
    summary = json.loads((out / "summary.json").read_text())
    for name in (
        "primary",
        "auxiliary",
        "auxiliary_content_in_primary_style",
        "primary_content_in_auxiliary_style",
    ):
        assert_png(out / f"swap_{name}.png", 150)
        grid = [s for s in swaps if s["grid"] == name]
        kept = np.mean([int(s["content_kept"]) for s in grid])
        assert summary["swaps"][name]["content_kept"] == pytest.approx(kept)
    for role in ("primary", "auxiliary"):
        trav = read_csv(out / f"traverse_{role}.csv")
        assert [t["dim"] for t in trav] == ["content_0"] * 4 + ["style_1"] * 4
        offsets = [float(t["offset_sd"]) for t in trav[:4]]
        assert offsets == pytest.approx([-3, -1, 1, 3])
        assert_png(out / f"traverse_{role}.png", 60)
    # more images, bigger grid
    r = runner.invoke(app, ["reconstruct", str(run), "--device", "cpu", "--n", "10", "--seed", "1"])
    assert r.exit_code == 0, r.output
    big = assert_png(run / "analysis" / "reconstruct-test-seed1" / "reconstructions.png")
    assert big.shape[1] > small.shape[1]
    assert read_manifest(run)["analyses"][-1]["analysis"] == "reconstruct"


@pytest.mark.parametrize("model", ["single", "paired"])
def test_reconstruct_needs_a_decoder(runner, run_copy, model):
    run = run_copy(model)
    before = fingerprint(run)
    r = runner.invoke(app, ["reconstruct", str(run), "--device", "cpu"])
    assert r.exit_code == 2
    assert "no decoder" in r.stderr and "Traceback" not in r.output
    assert fingerprint(run) == before
    assert not (run / "analysis").exists()


# --------------------------------------------------------------------------- bad input

COMMANDS = ["evaluate", "inspect-latents", "reconstruct"]


@pytest.mark.parametrize("command", COMMANDS)
def test_not_a_run(runner, tmp_path, command):
    r = runner.invoke(app, [command, str(tmp_path / "nope")])
    assert r.exit_code == 1 and "no such folder" in r.stderr
    (tmp_path / "empty").mkdir()
    r = runner.invoke(app, [command, str(tmp_path / "empty")])
    assert r.exit_code == 1 and "not a jadecli run folder" in r.stderr
    assert r.stderr.count("\n") == 1


@pytest.mark.parametrize("command", COMMANDS)
def test_damaged_runs_fail_cleanly_and_stay_intact(runner, run_copy, command):
    run = run_copy("jade")
    m = read_manifest(run)
    # corrupted checkpoint
    ckpt = run / "checkpoints" / "last.pt"
    good = ckpt.read_bytes()
    ckpt.write_bytes(good[: len(good) // 3])
    before = fingerprint(run)
    r = runner.invoke(app, [command, str(run)])
    assert r.exit_code == 1 and "corrupted" in r.stderr, r.output
    assert fingerprint(run) == before
    # missing checkpoint of a failed run
    ckpt.unlink()
    m_failed = {**m, "status": "failed", "error": "training diverged at epoch 1"}
    (run / "manifest.yaml").write_text(yaml.safe_dump(m_failed))
    r = runner.invoke(app, [command, str(run)])
    assert r.exit_code == 1 and "no checkpoint" in r.stderr and "diverged" in r.stderr
    # a manifest from the future
    ckpt.write_bytes(good)
    (run / "manifest.yaml").write_text(yaml.safe_dump({**m, "schema_version": 99}))
    before = fingerprint(run)
    r = runner.invoke(app, [command, str(run)])
    assert r.exit_code == 1 and "newer, upgrade jadecli" in r.stderr
    assert fingerprint(run) == before
    assert "Traceback" not in r.output


@pytest.mark.slow
def test_failed_and_running_runs_are_analysed_with_a_warning(runner, run_copy):
    run = run_copy("jade")
    m = read_manifest(run)
    (run / "manifest.yaml").write_text(yaml.safe_dump({**m, "status": "failed", "error": "x"}))
    r = runner.invoke(app, ["evaluate", str(run), "--device", "cpu", "--test-limit", "50"])
    assert r.exit_code == 0, r.output
    assert "failed; analysing its last good checkpoint" in r.stderr
    assert len(read_manifest(run)["analyses"]) == 1
    (run / "manifest.yaml").write_text(yaml.safe_dump({**m, "status": "running"}))
    before = fingerprint(run)
    r = runner.invoke(app, ["evaluate", str(run), "--device", "cpu", "--test-limit", "50"])
    assert r.exit_code == 0, r.output
    assert "marked running" in r.stderr and "not recorded" in r.stderr
    assert fingerprint(run) == before  # the trainer owns the manifest while running


@pytest.mark.slow
def test_moved_data_is_found_with_data_dir(runner, tmp_path):
    from tests.helpers import TINY, make_mnist

    data = make_mnist(tmp_path / "data")
    run = tmp_path / "run"
    r = runner.invoke(
        app,
        ["train", "--primary", "mnist", "--n-labeled", "20", "--model", "single",
         "--data-dir", str(data), "--out", str(run), *TINY],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    moved = tmp_path / "moved"
    shutil.move(str(data), moved)
    before = fingerprint(run)
    r = runner.invoke(app, ["evaluate", str(run), "--device", "cpu"])
    assert r.exit_code == 1
    assert "--data-dir" in r.stderr and r.stderr.count("error:") == 1
    assert fingerprint(run) == before
    r = runner.invoke(
        app, ["evaluate", str(run), "--device", "cpu", "--data-dir", str(moved), "--format", "json"]
    )
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["primary"]["images"] == 50


@pytest.mark.slow
def test_moved_folder_dataset_is_found(runner, tmp_path):
    from tests.helpers import TINY, make_folder

    data = make_folder(tmp_path / "work" / "scans", n_train=10, n_test=4)
    work = tmp_path / "work"
    run = work / "run"
    os.chdir(work)
    r = runner.invoke(
        app,
        ["train", "--primary", "folder:scans", "--n-labeled", "6", "--model", "single",
         "--out", "run", *TINY],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    os.chdir(tmp_path)  # the relative path no longer resolves; the recorded root does
    r = runner.invoke(app, ["evaluate", str(run), "--device", "cpu", "--format", "json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["primary"]["images"] == 12
    moved = tmp_path / "new-home"
    moved.mkdir()
    shutil.move(str(data), moved / "scans")
    r = runner.invoke(app, ["evaluate", str(run), "--device", "cpu"])
    assert r.exit_code == 1 and "--data-dir" in r.stderr
    r = runner.invoke(
        app, ["evaluate", str(run), "--device", "cpu", "--data-dir", str(moved), "--format", "json"]
    )
    assert r.exit_code == 0, r.output


@pytest.mark.parametrize(
    "args, flag",
    [
        (["evaluate", "{run}", "--device", "cpu", "--split", "validation"], "--split"),
        (["evaluate", "{run}", "--device", "cpu", "--test-limit", "0"], "--test-limit"),
        (["evaluate", "{run}", "--device", "cpu", "--format", "xml"], "--format"),
        (["evaluate", "{run}", "--device", "cpu", "--batch-size", "0"], "--batch-size"),
        (["evaluate", "{run}", "--device", "gpu"], "--device"),
        (["inspect-latents", "{run}", "--device", "cpu", "--dataset", "mnist"], "--dataset"),
        (["reconstruct", "{run}", "--device", "cpu", "--n", "0"], "--n"),
        (["reconstruct", "{run}", "--device", "cpu", "--traverse", "x9"], "--traverse"),
        (["reconstruct", "{run}", "--device", "cpu", "--traverse", "content_10"], "--traverse"),
        (["reconstruct", "{run}", "--device", "cpu", "--traverse-steps", "1"], "--traverse-steps"),
    ],
)
def test_bad_flags_name_the_flag(runner, run_copy, args, flag):
    run = run_copy("jade")
    before = fingerprint(run)
    r = runner.invoke(app, [a.replace("{run}", str(run)) for a in args])
    assert r.exit_code == 2, r.output
    assert r.stderr.startswith(f"error: {flag}")
    assert fingerprint(run) == before


def test_reconstruct_split_without_images_says_what_to_use(runner, trained_runs):
    # the tiny run's auxiliary trained on all its images: it has no unused ones to draw
    run = trained_runs["jade"]
    r = runner.invoke(
        app, ["reconstruct", str(run), "--device", "cpu", "--split", "train-unlabeled"]
    )
    assert r.exit_code == 2, r.output
    last = r.stderr.strip().splitlines()[-1]
    assert (
        last.startswith("error: --split train-unlabeled: the auxiliary") and "--split test" in last
    )
    assert not (run / "analysis" / "reconstruct-train-unlabeled-seed0").exists()


@pytest.mark.slow
def test_example_analysis_script_runs_and_gates(run_copy, tmp_path):
    """examples/analyse_run.sh end to end on a tiny run, through the installed `jade`."""
    env = shell_env(MIN_ACCURACY="0%")
    run = run_copy("jade")
    proc = run_example("analyse_run.sh", str(run), env=env)
    assert proc.returncode == 0, proc.stderr
    assert "primary accuracy: " in proc.stdout
    assert (run / "analysis" / "reconstruct-test-seed0" / "traverse_primary.png").is_file()
    env["MIN_ACCURACY"] = "100%"
    proc = run_example("analyse_run.sh", str(run), env=env)
    assert proc.returncode == 3
    assert "below --min-accuracy" in proc.stderr
