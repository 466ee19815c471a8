"""The compute path: precision, layout, resident training data, and the CUDA path."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from conftest import tiny_synth_args

from jadecli import compute
from jadecli.cli import app
from jadecli.config import TrainConfig
from jadecli.data.pair import training_data
from jadecli.errors import UsageError
from jadecli.progress import NullReporter
from jadecli.trainer import Trainer

CUDA = torch.cuda.is_available()
CPU = torch.device("cpu")


def manifest(run: Path) -> dict:
    return yaml.safe_load((run / "manifest.yaml").read_text())


def test_precision_resolution(monkeypatch):
    assert compute.resolve_precision("fp32", CPU) == "fp32"
    monkeypatch.setattr(compute, "AUTO_BF16", False)
    assert compute.resolve_precision("auto", CPU) == "fp32"
    monkeypatch.setattr(compute, "AUTO_BF16", True)
    expected = "bf16" if compute.native_bf16(CPU) else "fp32"
    assert compute.resolve_precision("auto", CPU) == expected
    monkeypatch.setattr(compute, "native_bf16", lambda device: False)
    assert compute.resolve_precision("auto", CPU) == "fp32"
    warnings: list[str] = []
    assert compute.resolve_precision("bf16", CPU, warnings.append) == "bf16"
    assert warnings and "emulated" in warnings[0]
    with pytest.raises(UsageError, match="--precision bf16"):
        compute.resolve_precision("bf16", torch.device("mps"))


def test_bad_precision_names_the_flag(runner, synth_dir, tmp_path):
    out = tmp_path / "run"
    result = runner.invoke(app, tiny_synth_args(synth_dir, out, extra=("--precision", "fp16")))
    assert result.exit_code == 2
    assert "--precision must be one of auto, fp32, bf16 (got 'fp16')" in result.output
    assert not out.exists()


def _trainer(synth_dir: Path, model: str, precision: str) -> Trainer:
    cfg = TrainConfig(
        primary="synth-street",
        auxiliary="synth-hand",
        n_labeled=50,
        model=model,
        data_dir=str(synth_dir),
        epoch_size=200,
        batch_size=50,
        hidden_dim=32,
        precision=precision,
    )
    return Trainer(cfg, training_data(cfg, NullReporter()), CPU, precision)


def test_training_images_are_normalised_once(synth_dir):
    trainer = _trainer(synth_dir, "jade", "fp32")
    for resident, source in (
        (trainer.lab_x, trainer.data.labeled.images),
        (trainer.aux_x, trainer.data.aux_train.images),
    ):
        assert resident.dtype == torch.float32
        assert resident.is_contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(resident, source.float() / 255, rtol=0, atol=1e-7)
    # an epoch's batches are index lookups into these tensors
    row = trainer.run_epoch(0, NullReporter())
    assert row["loss"] > 0 and 0 <= row["train_acc_primary"] <= 1


@pytest.mark.skipif(not compute.native_bf16(CPU), reason="this CPU has no native bf16")
@pytest.mark.parametrize("model", ["single", "paired", "jade"])
def test_bf16_step_matches_fp32(synth_dir, model):
    """Same init, same batches: the bf16 epoch's loss terms stay close to fp32's and finite
    (within 10%: 4 steps of a fresh model, where bf16 rounding moves the trajectory a little)."""
    rows = {p: _trainer(synth_dir, model, p).run_epoch(0, NullReporter()) for p in ("fp32", "bf16")}
    for term in ("loss", "ce_primary"):
        a, b = rows["fp32"][term], rows["bf16"][term]
        assert torch.isfinite(torch.tensor(b))
        assert abs(a - b) <= 0.10 * abs(a), (term, a, b)


def test_precision_is_recorded_and_evaluate_repeats_training(runner, synth_dir, tmp_path):
    for precision in ("fp32", "auto", "bf16"):
        out = tmp_path / precision
        args = tiny_synth_args(synth_dir, out, extra=("--precision", precision))
        result = runner.invoke(app, args)
        assert result.exit_code == 0, result.output
        m = manifest(out)
        resolved = compute.resolve_precision(precision, CPU)
        assert m["precision"] == resolved and m["config"]["precision"] == precision
        result = runner.invoke(app, ["evaluate", str(out), "--format", "json"])
        assert result.exit_code == 0, result.output
        report = json.loads(result.stdout)
        assert report["precision"] == resolved
        assert report["primary"]["accuracy"] == m["final_metrics"]["primary_test_accuracy"]
        assert report["auxiliary"]["accuracy"] == m["final_metrics"]["auxiliary_test_accuracy"]
    # an fp32 evaluation of the auto run is available on request
    result = runner.invoke(
        app, ["evaluate", str(tmp_path / "auto"), "--precision", "fp32", "--format", "json"]
    )
    assert result.exit_code == 0 and json.loads(result.stdout)["precision"] == "fp32"


def test_configure_threads_never_raises_the_count(monkeypatch):
    before = torch.get_num_threads()
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    try:
        assert compute.configure_threads() <= before
    finally:
        torch.set_num_threads(before)


@pytest.mark.skipif(not CUDA, reason="CUDA is not available on this machine")
def test_cuda_training_and_evaluation(runner, synth_dir, tmp_path):
    out = tmp_path / "cuda"
    result = runner.invoke(app, tiny_synth_args(synth_dir, out, extra=("--device", "cuda")))
    assert result.exit_code == 0, result.output
    m = manifest(out)
    assert m["device"].startswith("cuda") and m["status"] == "completed"
    assert m["precision"] == "fp32"
    result = runner.invoke(app, ["evaluate", str(out), "--device", "cuda", "--format", "json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["primary"]["accuracy"] == m["final_metrics"]["primary_test_accuracy"]
    # the checkpoint is device-independent: a CPU evaluation in fp32 loads and runs it
    result = runner.invoke(
        app, ["evaluate", str(out), "--device", "cpu", "--precision", "fp32", "--format", "json"]
    )
    assert result.exit_code == 0, result.output


@pytest.mark.skipif(not CUDA, reason="CUDA is not available on this machine")
def test_cuda_trainer_keeps_data_on_the_gpu_and_fuses_adam(synth_dir):
    cfg = TrainConfig(
        primary="synth-street",
        auxiliary="synth-hand",
        n_labeled=50,
        data_dir=str(synth_dir),
        epoch_size=200,
        batch_size=50,
        hidden_dim=32,
        device="cuda",
    )
    dev = torch.device("cuda")
    trainer = Trainer(cfg, training_data(cfg, NullReporter()), dev, "bf16")
    assert trainer.lab_x.is_cuda and trainer.aux_x.is_cuda and trainer.lab_y.is_cuda
    assert trainer.optimizer.defaults.get("fused") is True
    row = trainer.run_epoch(0, NullReporter())
    assert row["loss"] > 0
