"""`jade train --log tensorboard|mlflow`: the experiment logs hold, epoch by epoch, the numbers
metrics.csv holds; a resume continues the same logs; a failed run is FAILED in MLflow; a missing
extra or a bad value is one line, before anything is written.

    OMP_NUM_THREADS=1 python -m pytest -q tests/test_logs.py
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image
from test_failures import poison_step

from jadecli.cli import app
from jadecli.logs import metric_name
from tests.helpers import fingerprint, tiny_synth_args

pytest.importorskip("tensorboard")
pytest.importorskip("mlflow")


@pytest.fixture(autouse=True)
def _mlflow_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No user MLflow settings leak in, and what `--log mlflow` sets is undone after each test
    (setenv then delenv: undo restores the variable's absence)."""
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_ALLOW_FILE_STORE"):
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)


def read_manifest(run: Path) -> dict:
    return yaml.safe_load((run / "manifest.yaml").read_text())


def expected(run: Path) -> dict[str, dict[int, float]]:
    """metrics.csv as {logged name: {epoch: value}}, the empty cells left out."""
    out: dict[str, dict[int, float]] = {}
    with open(run / "metrics.csv", newline="") as fh:
        for row in csv.DictReader(fh):
            for column, value in row.items():
                if column != "epoch" and value != "":
                    out.setdefault(metric_name(column), {})[int(row["epoch"])] = float(value)
    return out


def tensorboard(run: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run / "logs" / "tensorboard"), size_guidance={"scalars": 0})
    acc.Reload()
    scalars = {t: {e.step: e.value for e in acc.Scalars(t)} for t in acc.Tags()["scalars"]}
    return scalars, acc


def mlflow_client(uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def assert_same_numbers(logged: dict[str, dict[int, float]], run: Path) -> None:
    want = expected(run)
    assert set(logged) == set(want)
    for name, by_epoch in want.items():
        assert logged[name] == pytest.approx(by_epoch, rel=1e-5), name  # the CSV keeps 6 digits


def mlflow_history(client, run_id: str, names) -> dict[str, dict[int, float]]:
    out = {}
    for name in names:
        history = client.get_metric_history(run_id, name)
        steps = [m.step for m in history]
        assert len(steps) == len(set(steps)), f"{name} logged twice at a step: {steps}"
        out[name] = {m.step: m.value for m in history}
    return out


@pytest.mark.slow
def test_both_logs_hold_every_epoch_and_a_resume_continues_them(
    runner, synth_dir, tmp_path, monkeypatch
):
    out = tmp_path / "run"
    args = tiny_synth_args(synth_dir, out, "jade", ("--log", "tensorboard", "--log", "mlflow"))
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert f"tensorboard --logdir {out / 'logs' / 'tensorboard'}" in result.output
    m = read_manifest(out)
    assert m["config"]["log"] == "tensorboard,mlflow"
    run_id = m["logs"]["mlflow"]["run_id"]
    assert m["logs"]["mlflow"]["tracking_uri"] == "logs/mlruns"

    # TensorBoard: every metrics.csv number at its epoch; test accuracy and the reconstruction
    # image only where the test split was evaluated (--eval-every 0: after the last epoch)
    scalars, acc = tensorboard(out)
    assert_same_numbers(scalars, out)
    assert {"loss/total", "loss/kl_match", "optim/lr", "speed/examples_per_s"} <= set(scalars)
    assert sorted(scalars["loss/total"]) == [1, 2]
    assert sorted(scalars["accuracy/test_acc_primary"]) == [2]
    # JADE's decoders, scored where the test split was evaluated (jadecli.generative)
    assert sorted(scalars["decoders/class_kept_primary"]) == [2]
    assert sorted(scalars["decoders/swap_kept_aux_to_primary"]) == [2]
    (image,) = acc.Images("reconstructions")
    png = out / "logs" / "reconstructions" / "epoch-0002.png"
    assert image.step == 2 and (image.width, image.height) == Image.open(png).size

    # MLflow: the run-folder store, the config as params, the same history, the artifacts
    uri = (out / "logs" / "mlruns").as_uri()
    client = mlflow_client(uri)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "run"
    assert run.data.params == {k: str(v) for k, v in m["config"].items()}
    assert_same_numbers(mlflow_history(client, run_id, run.data.metrics), out)
    files = {f.path for f in client.list_artifacts(run_id)}
    assert {"manifest.yaml", "metrics.csv", "reconstructions"} <= files
    assert [f.path for f in client.list_artifacts(run_id, "reconstructions")] == [
        "reconstructions/epoch-0002.png"
    ]

    # a resume without the package: one line, and the run folder as it was
    before = fingerprint(out)
    monkeypatch.setitem(sys.modules, "mlflow", None)
    missing = runner.invoke(app, ["train", "--out", str(out), "--resume", "--epochs", "3"])
    assert missing.exit_code == 1 and "pip install 'jadecli[mlflow]'" in missing.output
    assert fingerprint(out) == before
    monkeypatch.delitem(sys.modules, "mlflow")

    # the resume continues both logs: same folder and steps, same MLflow run
    more = ["train", "--out", str(out), "--resume", "--epochs", "3", "--no-progress"]
    result = runner.invoke(app, more)
    assert result.exit_code == 0, result.output
    assert read_manifest(out)["logs"]["mlflow"]["run_id"] == run_id
    scalars, acc = tensorboard(out)
    assert_same_numbers(scalars, out)
    assert sorted(scalars["loss/total"]) == [1, 2, 3]
    assert [e.step for e in acc.Images("reconstructions")] == [2, 3]
    (only,) = client.search_runs([run.info.experiment_id])
    assert only.info.run_id == run_id and only.info.status == "FINISHED"
    assert only.data.tags["resumed.epochs"] == "3"  # params are immutable in MLflow
    assert_same_numbers(mlflow_history(client, run_id, only.data.metrics), out)
    saved = yaml.safe_load(Path(client.download_artifacts(run_id, "manifest.yaml")).read_text())
    assert saved["epochs_completed"] == 3 and saved["status"] == "completed"


@pytest.mark.slow
def test_a_resume_can_start_logging_a_run_saved_before_log_existed(runner, synth_dir, tmp_path):
    out = tmp_path / "run"
    assert runner.invoke(app, tiny_synth_args(synth_dir, out, "single")).exit_code == 0
    # what an older jadecli wrote: no `log` in the manifest's config nor the checkpoint's
    m = read_manifest(out)
    del m["config"]["log"]
    (out / "manifest.yaml").write_text(yaml.safe_dump(m, sort_keys=False))
    ckpt = out / "checkpoints" / "last.pt"
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    del state["config"]["log"]
    torch.save(state, ckpt)
    more = ["train", "--out", str(out), "--resume", "--epochs", "3", "--log", "tensorboard"]
    result = runner.invoke(app, [*more, "--no-progress"])
    assert result.exit_code == 0, result.output
    assert read_manifest(out)["config"]["log"] == "tensorboard"
    scalars, acc = tensorboard(out)
    assert sorted(scalars["loss/total"]) == [3]  # logged from the resume on
    assert scalars["loss/total"][3] == pytest.approx(expected(out)["loss/total"][3], rel=1e-5)
    assert acc.Tags()["images"] == []  # a single classifier has nothing to reconstruct
    assert not (out / "logs" / "mlruns").exists()


@pytest.mark.slow
def test_a_diverged_run_is_failed_in_mlflow_at_the_tracking_uri_of_the_environment(
    runner, synth_dir, tmp_path, monkeypatch
):
    store = (tmp_path / "shared-store").as_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "lab")
    poison_step(monkeypatch, at_call=7, term="kl_match")  # 4 steps per epoch: in epoch 2
    out = tmp_path / "run"
    result = runner.invoke(app, tiny_synth_args(synth_dir, out, "jade", ("--log", "mlflow")))
    assert result.exit_code == 1 and "diverged at epoch 2" in result.output
    m = read_manifest(out)
    assert m["status"] == "failed" and m["logs"]["mlflow"]["tracking_uri"] == store
    assert not (out / "logs" / "mlruns").exists()
    client = mlflow_client(store)
    (run,) = client.search_runs([client.get_experiment_by_name("lab").experiment_id])
    assert run.info.run_id == m["logs"]["mlflow"]["run_id"]
    assert run.info.status == "FAILED"
    assert [h.step for h in client.get_metric_history(run.info.run_id, "loss/total")] == [1]
    saved = yaml.safe_load(
        Path(client.download_artifacts(run.info.run_id, "manifest.yaml")).read_text()
    )
    assert saved["status"] == "failed" and "kl_match" in saved["error"]


@pytest.mark.parametrize(
    ("log", "module", "package"),
    [("tensorboard", "tensorboard", "tensorboard"), ("mlflow", "mlflow", "mlflow-skinny")],
)
def test_a_missing_package_is_one_line_before_a_run_folder_exists(
    runner, synth_dir, tmp_path, monkeypatch, log, module, package
):
    monkeypatch.setitem(sys.modules, module, None)  # as if it were not installed
    out = tmp_path / "run"
    result = runner.invoke(app, tiny_synth_args(synth_dir, out, "jade", ("--log", log)))
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [
        f"error: --log {log} needs the {package} package, which is not installed: "
        f"pip install 'jadecli[{log}]'"
    ]
    assert not out.exists()


def test_log_values_one_flag_or_many_and_bad_ones_name_the_flag(runner, monkeypatch, tmp_path):
    import jadecli.engine as engine

    seen = {}

    def fake_train(cfg, options, reporter):
        seen["log"] = cfg.log
        raise engine.UsageError("captured")

    monkeypatch.setattr(engine, "train", fake_train)
    base = ["train", "--primary", "synth-street", "--n-labeled", "50", "--model", "single"]
    base += ["--out", str(tmp_path / "run")]
    for flags, value in (
        ([], "none"),
        (["--log", "tensorboard", "--log", "mlflow"], "tensorboard,mlflow"),
        (["--log", "mlflow, tensorboard,mlflow"], "mlflow,tensorboard"),
        (["--log", "none"], "none"),
    ):
        result = runner.invoke(app, [*base, *flags])
        assert "captured" in result.output and seen.pop("log") == value, flags
    bad = runner.invoke(app, [*base, "--log", "tensorboard", "--log", "wandb"])
    assert bad.exit_code == 2
    assert bad.output.strip() == (
        "error: --log must be tensorboard, mlflow, both (tensorboard,mlflow) or none "
        "(got 'tensorboard,wandb')"
    )
    config = tmp_path / "c.yaml"
    config.write_text("log: [mlflow, none]\n")
    from_file = runner.invoke(app, [*base, "--config", str(config)])
    assert from_file.exit_code == 2 and f"error: log in {config}: must be" in from_file.output
    assert not (tmp_path / "run").exists()
