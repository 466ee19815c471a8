"""JADE's generative half: the style encoders, the decoder scores `jade train` records and
`jade reconstruct` prints, and runs written before the style encoders existed."""

from __future__ import annotations

import csv
import json
import math
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import yaml

from jadecli.cli import app
from jadecli.config import TrainConfig
from jadecli.generative import balanced_sample, swap_scores
from jadecli.metrics import DECODER_COLUMNS
from jadecli.model import build_model
from jadecli.objective import jade_terms
from jadecli.outputs import StepRequest
from jadecli.spec import ModelSpec
from tests.helpers import tiny_synth_args


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _spec(style_encoder: str, shape=(3, 32, 32)) -> ModelSpec:
    return ModelSpec("jade", "shared", shape, shape, 10, 4, 4, 16, 0.0, style_encoder=style_encoder)


def test_own_style_encoders_learn_from_the_images_only():
    """With --style-encoder own, the classifier's cross-entropies never reach the style CNNs
    (they learn from reconstruction and KL alone), and the content path is the trunk's."""
    torch.manual_seed(0)
    model = build_model(_spec("own"))
    x_a, x_p, y = torch.rand(6, 3, 32, 32), torch.rand(6, 3, 32, 32), torch.arange(6) % 10
    out = model.forward_train(x_a, x_p)
    terms = jade_terms(out, x_a, x_p, y, ("ce_aux", "ce_primary", "recon_primary"))
    (terms["ce_aux"] + terms["ce_primary"]).backward(retain_graph=True)
    for enc in (model.primary_encoder, model.aux_encoder):
        assert enc.style_cnn is not None
        assert all(p.grad is None or p.grad.abs().sum() == 0 for p in enc.style_cnn.parameters())
    assert model.primary_encoder.style_cnn is not model.aux_encoder.style_cnn
    model.zero_grad()
    terms["recon_primary"].backward()
    grads = [p.grad for p in model.primary_encoder.style_cnn.parameters()]
    assert all(g is not None and g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize("shape", [(1, 16, 16), (3, 28, 28), (3, 64, 64), (1, 100, 60)])
def test_style_encoders_fit_every_image_size(shape):
    model = build_model(_spec("own", shape))
    out = model.forward_train(torch.rand(2, *shape), torch.rand(2, *shape))
    assert out.recon_primary.shape == (2, *shape)
    assert out.q_primary.mu_s.shape == (2, 4)


def test_balanced_sample_and_swap_scores():
    labels = torch.tensor([2, 0, 1, 0, 2, 1, 0])
    index = balanced_sample(labels, 5, 3, seed=0, role="primary")
    assert labels[index].tolist() == [0, 1, 2, 0, 1]
    assert len(set(index.tolist())) == 5
    assert balanced_sample(labels, 5, 3, seed=0, role="primary").tolist() == index.tolist()
    # 2 style rows x 3 content columns: kept where the prediction is the column's class
    content, style = torch.tensor([0, 1, 2]), torch.tensor([1, 2])
    predicted = torch.tensor([[0, 1, 1], [2, 1, 2]])
    kept, leak = swap_scores(content, style, predicted)
    assert kept == pytest.approx(4 / 6)
    assert leak == pytest.approx(2 / 4)  # style and content differ in 4 cells; 2 took the style


def test_training_records_what_reconstruct_prints(trained_runs, runner, tmp_path):
    """A JADE run's metrics.csv and final metrics hold its decoders' scores on 16 test images
    of each dataset: the very numbers `jade reconstruct --n 16` prints for that sample."""
    run = tmp_path / "jade"
    shutil.copytree(trained_runs["jade"], run)
    manifest = yaml.safe_load((run / "manifest.yaml").read_text())
    final = manifest["final_metrics"]
    rows = read_csv(run / "metrics.csv")
    for key in DECODER_COLUMNS:
        assert 0 <= final[key] <= 1
        assert float(rows[-1][key]) == pytest.approx(final[key], abs=1e-6)  # csv: 6 digits
    r = runner.invoke(app, ["reconstruct", str(run), "--n", "16", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    summary = json.loads((run / "analysis" / "reconstruct-test-seed0" / "summary.json").read_text())
    assert summary["reconstruction"]["primary"]["class_kept"] == final["class_kept_primary"]
    assert summary["reconstruction"]["auxiliary"]["class_kept"] == final["class_kept_aux"]
    swaps = summary["swaps"]
    assert swaps["auxiliary_content_in_primary_style"]["content_kept"] == pytest.approx(
        final["swap_kept_aux_to_primary"]
    )
    assert swaps["primary_content_in_auxiliary_style"]["content_kept"] == pytest.approx(
        final["swap_kept_primary_to_aux"]
    )
    assert "class kept" in (trained_runs["jade"].parent / "jade-output.txt").read_text()
    paired = read_csv(trained_runs["paired"] / "metrics.csv")
    assert not set(DECODER_COLUMNS) & set(paired[0])


@pytest.mark.parametrize("content", ["mean", "sample"])
def test_decoder_content_mean_keeps_content_noise_out_of_reconstructions(content):
    spec = ModelSpec("jade", "shared", (3, 16, 16), (3, 16, 16), 10, 4, 4, 16, 0.0)
    model = build_model(replace(spec, style_encoder="own", decoder_content=content))
    x = torch.rand(4, 3, 16, 16)
    out = model.forward_train(x, x)
    recon = jade_terms(out, x, x, torch.arange(4), ("recon_primary",))["recon_primary"]
    (grad,) = torch.autograd.grad(recon, out.q_primary.logvar_c, allow_unused=True)
    noisy = grad is not None and grad.abs().sum() > 0
    assert noisy == (content == "sample")


def test_the_style_critic_learns_the_class_and_the_encoders_learn_to_hide_it():
    """--style-adversary-weight: the critic's cross-entropy trains the critic alone; the
    confusion term (cross-entropy to uniform through a frozen copy) trains the encoders alone,
    and is smallest (log K) when the critic cannot tell the classes apart."""
    spec = replace(_spec("own"), style_critic=True)
    model = build_model(spec)
    x, y = torch.rand(4, 3, 32, 32), torch.arange(4)
    out = model.forward_train(x, x)
    terms = jade_terms(out, x, x, y, ("style_critic", "style_confusion"))
    assert set(terms) == {"style_critic", "style_confusion"}
    assert model.style_critic is not None
    critic = list(model.style_critic.parameters())
    style = list(model.primary_encoder.style_cnn.parameters())
    g_critic = torch.autograd.grad(terms["style_critic"], critic + style, allow_unused=True)
    assert all(g is not None for g in g_critic[: len(critic)])
    assert all(g is None for g in g_critic[len(critic) :])
    g_conf = torch.autograd.grad(terms["style_confusion"], critic + style, allow_unused=True)
    assert all(g is None for g in g_conf[: len(critic)])
    assert all(g is not None and g.abs().sum() > 0 for g in g_conf[len(critic) :])
    uniform = torch.zeros(8, 10)
    confusion = -torch.log_softmax(uniform, 1).mean()
    assert confusion == pytest.approx(math.log(10))
    assert terms["style_confusion"] >= confusion - 1e-6


@pytest.mark.parametrize("style_encoder", ["own", "trunk"])
def test_the_swap_term_trains_the_decoders_alone(style_encoder):
    """--swap-weight: each decoder draws its styles with contents of the other images, the
    model as it predicts (eval mode, frozen) classifies them, and the cross-entropy to the
    contents' labels reaches the decoders' weights only. BatchNorm's running statistics are
    those of the plain step: judging the drawings moves nothing."""
    torch.manual_seed(0)
    model = build_model(_spec(style_encoder))
    x_a, x_p, y = torch.rand(6, 3, 32, 32), torch.rand(6, 3, 32, 32), torch.arange(6) % 3
    torch.manual_seed(1)
    model.forward_train(x_a, x_p)
    plain = {k: v.clone() for k, v in model.state_dict().items()}
    torch.manual_seed(0)
    fresh = build_model(_spec(style_encoder))
    torch.manual_seed(1)
    out = fresh.forward_train(x_a, x_p, StepRequest(swaps=True))
    assert out.swap_logits is not None and out.swap_index is not None
    assert out.swap_logits.shape == (12, 10)
    assert sorted(out.swap_index.tolist()) == list(range(12))  # every content drawn once
    for key, value in fresh.state_dict().items():
        assert torch.equal(value, plain[key]), key
    assert fresh.training and fresh.classifier.training  # modes restored
    # --swap-target prediction (default): each drawing's target is the classifier's class of
    # the content code it was drawn from (here the samples, which the logits also come from)
    predicted = torch.cat([out.logits_aux, out.logits_primary]).argmax(1)  # (12,) the pool's
    assert out.swap_content_class is not None
    assert torch.equal(out.swap_content_class, predicted)
    assert not torch.equal(predicted, y.repeat(2))  # an untrained classifier: the two differ
    ce = torch.nn.functional.cross_entropy
    for target, pool in (("prediction", predicted), ("label", y.repeat(2))):
        term = jade_terms(out, x_a, x_p, y, ("swap_class",), target)["swap_class"]
        assert term.item() == pytest.approx(ce(out.swap_logits, pool[out.swap_index]).item())
    term.backward()
    for name, p in fresh.named_parameters():
        moved = p.grad is not None and p.grad.abs().sum() > 0
        assert moved == ("decoder" in name), name


def test_the_swap_term_is_on_by_default_off_at_0_and_refused_by_paired(
    synth_dir, runner, trained_runs, tmp_path
):
    """The default JADE recipe trains the swap term with the content gradient stopped (metrics.csv
    `swap_class`, the run's config); `--swap-weight 0` is the paper's objective; a paired model
    has no decoders, so a weight for it is refused in one line."""
    default = trained_runs["jade"]
    assert all(0 < float(row["swap_class"]) < 10 for row in read_csv(default / "metrics.csv"))
    config = yaml.safe_load((default / "manifest.yaml").read_text())["config"]
    assert config["swap_weight"] == 1.0 and config["decoder_content_grad"] is False
    assert config["swap_target"] == "prediction"
    # a run saved before --swap-target existed judged its swaps against labels, and still does
    old = {k: v for k, v in config.items() if k != "swap_target"}
    assert TrainConfig.from_dict(old).swap_target == "label"
    out = tmp_path / "noswap"
    r = runner.invoke(app, tiny_synth_args(synth_dir, out, extra=("--swap-weight", "0")))
    assert r.exit_code == 0, r.output
    assert "swap_class" not in read_csv(out / "metrics.csv")[0]
    r = runner.invoke(
        app, tiny_synth_args(synth_dir, tmp_path / "p", "paired", ("--swap-weight", "0.5"))
    )
    assert r.exit_code == 2
    assert "--swap-weight" in r.output and "--model paired" in r.output
    assert not (tmp_path / "p").exists()
    idle = ("--swap-weight", "0", "--swap-target", "label")  # no swaps to judge
    r = runner.invoke(app, tiny_synth_args(synth_dir, tmp_path / "q", extra=idle))
    assert r.exit_code == 2
    assert "--swap-target" in r.output and "--swap-weight 0" in r.output
    assert not (tmp_path / "q").exists()


@pytest.mark.parametrize("content_grad", [True, False])
def test_no_decoder_content_grad_keeps_the_reconstruction_out_of_the_content_codes(content_grad):
    """--no-decoder-content-grad: the decoders still read the content codes (the reconstruction
    changes with them), but its gradient reaches only the style codes."""
    model = build_model(_spec("trunk", (3, 16, 16)))
    x = torch.rand(4, 3, 16, 16)
    torch.manual_seed(0)
    out = model.forward_train(x, x, StepRequest(content_grad=content_grad))
    recon = jade_terms(out, x, x, torch.arange(4), ("recon_primary",))["recon_primary"]
    q = out.q_primary
    g_c, g_s = torch.autograd.grad(recon, [q.mu_c, q.mu_s], allow_unused=True)
    assert g_s is not None and g_s.abs().sum() > 0
    assert (g_c is not None and g_c.abs().sum() > 0) == content_grad
    decoded = model.decode("primary", q.mu_s, q.mu_c)
    assert not torch.allclose(decoded, model.decode("primary", q.mu_s, torch.zeros_like(q.mu_c)))
