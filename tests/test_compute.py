"""The compute path: precision, layout, resident training data, and the CUDA path."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
import yaml

from jadecli import compute
from jadecli.cli import app
from jadecli.config import TrainConfig
from jadecli.data.pair import training_data
from jadecli.errors import UsageError
from jadecli.progress import NullReporter
from jadecli.trainer import Trainer, train_one_epoch
from tests.helpers import TINY, make_mnist, tiny_synth_args

CUDA = torch.cuda.is_available()
CPU = torch.device("cpu")
_REAL_FEATURES = compute.cpu_bf16_features  # the parser, before any test patches it


def manifest(run: Path) -> dict:
    return yaml.safe_load((run / "manifest.yaml").read_text())


def test_precision_resolution(monkeypatch):
    assert compute.resolve_precision("fp32", CPU) == "fp32"
    expected = "bf16" if compute.native_bf16(CPU) else "fp32"
    assert compute.resolve_precision("auto", CPU) == expected
    monkeypatch.setattr(compute, "cpu_bf16_features", lambda cpuinfo=None: ())  # no native bf16
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
    cfg, data = training_data(cfg, NullReporter())
    return Trainer(cfg, data, CPU, precision)


def test_training_images_stay_8_bit_and_each_batch_is_converted_on_the_device(synth_dir):
    trainer = _trainer(synth_dir, "jade", "fp32")
    for resident, source in (
        (trainer.batches.lab_x, trainer.data.labeled.images),
        (trainer.batches.aux_x, trainer.data.aux_train.images),
    ):
        # on the CPU the loaded uint8 tensor itself, not a float copy (4x the memory)
        assert resident.dtype == torch.uint8
        assert resident.data_ptr() == source.data_ptr()
    index = torch.tensor([3, 0, 7])
    batch = trainer.batches._gather(trainer.batches.aux_x, index)  # (3, C, H, W)
    assert batch.dtype == torch.float32
    assert batch.is_contiguous(memory_format=torch.channels_last)
    source = trainer.data.aux_train.images[index]
    torch.testing.assert_close(batch, source.float() / 255, rtol=0, atol=1e-7)
    torch.manual_seed(0)
    b = trainer.batches._batch((index, torch.tensor([1, 2, 4])), 1.0)
    xa, xp = b.x_aux, b.x_primary
    assert xa is not None and xa.dtype == xp.dtype == torch.float32
    assert 0 <= float(xa.min()) <= float(xa.max()) <= 1


@pytest.mark.slow
@pytest.mark.parametrize("model", ["single", "paired", "jade"])
def test_a_bf16_forward_pass_is_bf16_and_within_its_rounding_of_fp32(synth_dir, model):
    """One model, one batch, forward in fp32 and under the bf16 autocast training uses (emulated
    where the CPU has no bf16: the arithmetic is the same). The bf16 pass must really run in bf16
    (bf16 outputs that differ from fp32's) and agree with fp32 to within bf16's rounding, output
    by output: logits, latent posteriors and decoded images. (The training pass's sampled latents
    are left out: torch draws bf16 noise differently from fp32 noise.)"""
    trainer = _trainer(synth_dir, model, "fp32")
    torch.manual_seed(0)
    _, b = next(trainer.batches.epoch(0))
    x_aux, x_primary, y = b.x_aux, b.x_primary, b.y
    net = trainer.model.eval()
    z = torch.randn(50, 20)  # (B, style + content) for the decoders
    outputs: dict[str, dict[str, torch.Tensor]] = {}
    for precision in ("fp32", "bf16"):
        with torch.no_grad(), compute.autocast(CPU, precision):
            out = {"primary": net.classify("primary", x_primary)}
            if model != "single":
                out["auxiliary"] = net.classify("auxiliary", x_aux)
            if model == "jade":
                for role, x in (("primary", x_primary), ("auxiliary", x_aux)):
                    out.update({f"{role} {k}": v for k, v in net.codes(role, x).items()})
                    out[f"{role} decoded"] = net.decode(role, z[:, :10], z[:, 10:])
            outputs[precision] = out
            train_out = net.forward_train(x_aux, x_primary, trainer.request)
            _, terms = trainer.objective(train_out, x_aux, x_primary, y)
        assert all(t.dtype == torch.float32 for t in terms.values())  # loss terms stay fp32
    assert outputs["bf16"]["primary"].dtype == torch.bfloat16
    for name, a in outputs["fp32"].items():
        b = outputs["bf16"][name]
        assert a.dtype == torch.float32
        error = float((b.float() - a).norm() / a.norm())
        assert 0 < error < 0.02, (name, error)  # bf16 keeps 8 bits of mantissa: ~0.4% per op


@pytest.mark.slow
def test_precision_is_recorded_and_evaluate_repeats_training(runner, tmp_path):
    # MNIST-format files (500 test images) and a paired model (no decoders) keep emulated bf16
    # affordable on CPUs without it
    data = make_mnist(tmp_path / "data", n_train=300, n_test=500)
    for precision in ("fp32", "auto", "bf16"):
        out = tmp_path / precision
        args = [
            "train",
            *("--primary", "mnist", "--auxiliary", "mnist", "--n-labeled", "100"),
            *("--model", "paired"),
            *("--data-dir", str(data), "--out", str(out), "--precision", precision),
            *TINY,
            *("--epochs", "1", "--epoch-size", "100"),
        ]
        result = runner.invoke(app, args)
        assert result.exit_code == 0, result.output
        m = manifest(out)
        resolved = compute.resolve_precision(precision, CPU)
        assert m["precision"] == resolved and m["config"]["precision"] == precision
        result = runner.invoke(app, ["evaluate", str(out), "--device", "cpu", "--format", "json"])
        assert result.exit_code == 0, result.output
        report = json.loads(result.stdout)
        assert report["precision"] == resolved
        assert report["primary"]["accuracy"] == m["final_metrics"]["primary_test_accuracy"]
        assert report["auxiliary"]["accuracy"] == m["final_metrics"]["auxiliary_test_accuracy"]
    # an fp32 evaluation of the auto run is available on request
    args = ["evaluate", str(tmp_path / "auto"), "--device", "cpu", "--precision", "fp32"]
    result = runner.invoke(app, [*args, "--format", "json"])
    assert result.exit_code == 0 and json.loads(result.stdout)["precision"] == "fp32"


@pytest.mark.device_auto
def test_device_auto_is_the_best_device_here_and_its_precision(runner, tmp_path):
    """Without --device, a run trains where `auto` points on this machine (CUDA where there is
    a GPU), in the precision `auto` means there."""
    data = make_mnist(tmp_path / "data", n_train=100, n_test=20)
    out = tmp_path / "run"
    tiny = [a for a in TINY if a not in ("--device", "cpu")]
    args = ["train", "--primary", "mnist", "--n-labeled", "20", "--model", "single"]
    args += ["--data-dir", str(data), "--out", str(out), *tiny, "--epochs", "1"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    device = compute.resolve_device("auto")
    m = manifest(out)
    assert m["device"].split(":")[0] == device.type
    assert m["precision"] == compute.resolve_precision("auto", device)
    assert m["config"]["device"] == "auto"


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity"), reason="no CPU affinity here")
def test_configure_threads_caps_torch_at_the_cpus_this_process_may_use(monkeypatch):
    allowed = len(os.sched_getaffinity(0))
    before = torch.get_num_threads()
    try:
        # torch's default counts the host's cores, more than a container may use
        torch.set_num_threads(allowed + 3)
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
        assert compute.configure_threads() == allowed == torch.get_num_threads()
        # already at or below the cap: left alone, never raised
        torch.set_num_threads(1)
        assert compute.configure_threads() == 1
        # the user's OMP_NUM_THREADS wins
        torch.set_num_threads(allowed + 3)
        monkeypatch.setenv("OMP_NUM_THREADS", str(allowed + 3))
        assert compute.configure_threads() == allowed + 3
    finally:
        torch.set_num_threads(before)


@pytest.mark.skipif(not CUDA, reason="CUDA is not available on this machine")
def test_cuda_training_and_evaluation(runner, synth_dir, tmp_path):
    out = tmp_path / "cuda"
    result = runner.invoke(app, tiny_synth_args(synth_dir, out, extra=("--device", "cuda")))
    assert result.exit_code == 0, result.output
    m = manifest(out)
    assert m["device"].startswith("cuda") and m["status"] == "completed"
    # auto: bf16 on GPUs that compute it natively (every GPU since Ampere), else fp32
    assert m["precision"] == compute.resolve_precision("auto", torch.device("cuda"))
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
    cfg, data = training_data(cfg, NullReporter())
    trainer = Trainer(cfg, data, dev, "bf16")
    b = trainer.batches
    assert b.lab_x.is_cuda and b.aux_x is not None and b.aux_x.is_cuda and b.lab_y.is_cuda
    assert trainer.optimizer.defaults.get("fused") is True
    row = train_one_epoch(trainer, 0, NullReporter())
    assert row["loss"] > 0


# /proc/cpuinfo as the three kinds of machine this project trains on report it (abridged)
XEON_AMX = "processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16 amx_bf16 amx_tile\n"
EPYC_BF16 = "processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512bw avx512_bf16 avx512_vnni\n"
EPYC_AVX2 = "processor\t: 0\nflags\t\t: fpu fma avx avx2\n"
ARM_BF16 = "processor\t: 0\nFeatures\t: fp asimd sve bf16 i8mm\n"


def test_native_bf16_is_read_from_the_cpus_feature_flags():
    assert compute.cpu_bf16_features(XEON_AMX) == ("amx_bf16", "avx512_bf16")
    assert compute.cpu_bf16_features(EPYC_BF16) == ("avx512_bf16",)
    assert compute.cpu_bf16_features(EPYC_AVX2) == ()
    assert compute.cpu_bf16_features(ARM_BF16) == ()  # not measured to pay: fp32 under auto
    assert compute.cpu_bf16_features("processor\t: 0\n") == ()  # no flags line: not native


@pytest.mark.parametrize(
    "cpuinfo, requested, expected, why",
    [
        (EPYC_BF16, "auto", "bf16", "native on this CPU (avx512_bf16)"),
        (XEON_AMX, "auto", "bf16", "native on this CPU (amx_bf16, avx512_bf16)"),
        (EPYC_AVX2, "auto", "fp32", "this CPU has no native bf16"),
        (EPYC_BF16, "fp32", "fp32", "requested"),
        (EPYC_AVX2, "bf16", "bf16", "requested; emulated: this CPU has no native bf16"),
    ],
)
def test_auto_precision_is_bf16_on_cpus_that_compute_it_and_says_why(
    monkeypatch, cpuinfo, requested, expected, why
):
    monkeypatch.setattr(compute, "cpu_bf16_features", lambda: _REAL_FEATURES(cpuinfo))
    precision, reason = compute.precision_reason(requested, CPU)
    assert precision == expected and reason.startswith(why)
    assert compute.resolve_precision(requested, CPU) == expected


def test_a_runs_first_line_and_manifest_give_its_precision_and_why(monkeypatch, runner, tmp_path):
    data = make_mnist(tmp_path / "data", n_train=100, n_test=20)
    for cpuinfo, precision, why in (
        (EPYC_AVX2, "fp32", "this CPU has no native bf16"),
        (EPYC_BF16, "bf16", "native on this CPU (avx512_bf16)"),
    ):
        monkeypatch.setattr(compute, "cpu_bf16_features", lambda c=cpuinfo: _REAL_FEATURES(c))
        out = tmp_path / precision
        args = ["train", "--primary", "mnist", "--n-labeled", "20", "--model", "single"]
        args += ["--data-dir", str(data), "--out", str(out), *TINY, "--epochs", "1"]
        args += ["--epoch-size", "40", "--no-progress"]
        result = runner.invoke(app, args)
        assert result.exit_code == 0, result.output
        first = result.output.splitlines()[0]
        assert first.startswith("device: cpu (") and f"{precision}: {why}" in first, first
        m = manifest(out)
        assert m["precision"] == precision and m["precision_reason"].startswith(why)


def test_compile_without_a_compiler_warns_once_and_trains_uncompiled(
    monkeypatch, runner, synth_dir, tmp_path
):
    monkeypatch.setattr("jadecli.trainer.cxx_compiler", lambda: None)
    out = tmp_path / "run"
    result = runner.invoke(app, tiny_synth_args(synth_dir, out, extra=("--compile",)))
    assert result.exit_code == 0, result.output
    assert result.output.count("--compile: off: no C++ compiler") == 1
    m = manifest(out)
    assert m["status"] == "completed" and m["compile"].startswith("off: no C++ compiler")


@pytest.mark.slow
def test_a_compiled_step_trains_what_the_plain_step_trains(synth_dir):
    """--compile: the same losses as the plain step, to float rounding (inductor fuses the
    element-wise ops, so the sums run in another order). Without the swap term: with it the two
    steps differ by more than rounding (0.4% of recon_primary after two steps), which is not
    explained yet."""
    rows = []
    for compile_ in (False, True):
        cfg = TrainConfig(
            primary="synth-street",
            auxiliary="synth-hand",
            n_labeled=50,
            data_dir=str(synth_dir),
            epoch_size=100,
            batch_size=50,
            hidden_dim=32,
            compile=compile_,
            augment="none",
            swap_weight=0.0,
        )
        cfg, data = training_data(cfg, NullReporter())
        t = Trainer(cfg, data, CPU, "fp32")
        assert t.compiled == compile_
        rows.append(train_one_epoch(t, 0, NullReporter()))
    plain, compiled = rows
    for term in ("loss", "recon_primary", "kl_match", "ce_primary"):
        assert compiled[term] == pytest.approx(plain[term], rel=1e-3), term
