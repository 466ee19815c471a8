"""Known answers for the whole objective of each model (equation 2 of the paper).

Every term is checked against an independent float64 computation from hand-built encoder
outputs: its value, the weight and sign it enters the total with, the per-pixel scale of its own
dataset, the direction of the matching KL, and the gradient that term sends to both encoders. The
classifier is checked to see the content latents only. Finally the trainer is checked to wire
the right images and weights into all of it on a real batch.
"""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
import torch

from jadecli.cli import app
from jadecli.config import TrainConfig
from jadecli.data.pair import training_data
from jadecli.model import build_model
from jadecli.objective import TERMS, UNLABELED_TERMS, Objective, jade_terms, unlabeled_terms
from jadecli.outputs import JADEOutput, Posterior, StepOutput, StepRequest
from jadecli.progress import NullReporter
from jadecli.spec import AUXILIARY, PRIMARY, ModelSpec
from jadecli.trainer import Trainer
from tests.helpers import make_mnist, make_svhn, tiny_synth_args

AUX_SHAPE, PRIMARY_SHAPE = (1, 4, 4), (3, 4, 4)  # different pixel counts: 16 vs 48
B, S, C, K = 3, 2, 3, 4  # batch, style dim, content dim, classes (S != C: their scales)


def spec(kind: str, arch: str = "paper", **shapes) -> ModelSpec:
    return ModelSpec(
        kind=kind,
        arch=arch,
        primary_shape=shapes.get("primary", PRIMARY_SHAPE),
        auxiliary_shape=None if kind == "single" else shapes.get("auxiliary", AUX_SHAPE),
        num_classes=K,
        content_dim=C,
        style_dim=S,
        hidden_dim=8,
        dropout=0.0,
    )


# distinct weights, so that a term given another term's weight is caught
WEIGHTS = dict(
    recon=0.7,
    kl=1.3,
    style_kl=0.23,
    match=2.9,
    separation=0.11,
    style_adversary=0.19,
    swap=0.43,
    aux_ce=0.37,
    primary_ce=5.0,
)
WEIGHT_FIELDS = {f"{name}_weight": value for name, value in WEIGHTS.items()}  # TrainConfig's


def objective_for(kind: str, loss_scale: str = "mean", **options) -> Objective:
    """The objective of a `kind` run with the WEIGHTS its model uses (and, for JADE,
    `loss_scale`): the jade-only options are refused for the classifiers."""
    fields = {k: v for k, v in WEIGHT_FIELDS.items() if kind == "jade" or "ce" in k}
    if kind == "jade":
        fields["loss_scale"] = loss_scale
    auxiliary = None if kind == "single" else "usps"
    cfg = TrainConfig(
        primary="mnist", auxiliary=auxiliary, n_labeled=4, model=kind, **{**fields, **options}
    )
    return Objective(cfg, spec(kind))


def leaf(rng: np.random.Generator, *shape: int, scale: float = 1.0) -> torch.Tensor:
    return torch.tensor(rng.normal(size=shape) * scale, dtype=torch.float32, requires_grad=True)


def hand_built_batch(seed: int = 0) -> dict:
    """Encoder outputs, reconstructions and logits of a batch of B pairs, chosen by hand: the
    primary's content posterior is narrow and the auxiliary's wide, so that KL(q_P || q_A) and
    KL(q_A || q_P) differ several-fold."""
    rng = np.random.default_rng(seed)
    wide, narrow = torch.full((B, C), 1.5), torch.full((B, C), -1.0)  # content log-variances
    q_aux = Posterior(
        leaf(rng, B, S), leaf(rng, B, S, scale=0.5), leaf(rng, B, C), wide.requires_grad_()
    )
    q_primary = Posterior(
        leaf(rng, B, S), leaf(rng, B, S, scale=0.5), leaf(rng, B, C), narrow.requires_grad_()
    )
    return {
        "q_aux": q_aux,
        "q_primary": q_primary,
        "recon_aux": leaf(rng, B, *AUX_SHAPE, scale=2),  # decoder logits
        "recon_primary": leaf(rng, B, *PRIMARY_SHAPE, scale=2),
        "logits_aux": leaf(rng, B, K, scale=2),
        "logits_primary": leaf(rng, B, K, scale=2),
        "x_aux": torch.tensor(rng.uniform(size=(B, *AUX_SHAPE)), dtype=torch.float32),
        "x_primary": torch.tensor(rng.uniform(size=(B, *PRIMARY_SHAPE)), dtype=torch.float32),
        "y": torch.tensor([0, 3, 1]),
        # the style critic's logits of [z_s^A; z_s^P] (2B, K): its own and its frozen copy's
        "critic_logits": leaf(rng, 2 * B, K, scale=2),
        "judged_logits": leaf(rng, 2 * B, K, scale=2),
        # the swap term: the frozen model's logits of 2B drawings, and the content each drew
        "swap_logits": leaf(rng, 2 * B, K, scale=2),
        "swap_index": torch.tensor([4, 0, 2, 5, 1, 3]),
        # ... and the classifier's class of each pool content (--swap-target prediction): not
        # the labels [0, 3, 1, 0, 3, 1], so a term judged against labels would differ
        "swap_content_class": torch.tensor([2, 3, 1, 0, 2, 2]),
    }


# --------------------------------------------------------------------------- float64 reference


def f64(t: torch.Tensor) -> np.ndarray:
    return t.detach().double().numpy()


def bce(logits: torch.Tensor, x: torch.Tensor) -> float:
    """-log Bernoulli(x | sigmoid(logits)), summed over pixels, averaged over the batch."""
    p = 1 / (1 + np.exp(-f64(logits)))
    xs = f64(x)
    return float(np.mean(np.sum(-(xs * np.log(p) + (1 - xs) * np.log(1 - p)), axis=(1, 2, 3))))


def kl_prior(mu: torch.Tensor, logvar: torch.Tensor) -> float:
    m, lv = f64(mu), f64(logvar)
    return float(np.mean(np.sum(0.5 * (m**2 + np.exp(lv) - lv - 1), axis=1)))


def kl_gauss(q: tuple[torch.Tensor, torch.Tensor], p: tuple[torch.Tensor, torch.Tensor]) -> float:
    """KL(q || p) of diagonal Gaussians, from the textbook form with standard deviations."""
    mq, sq = f64(q[0]), np.exp(0.5 * f64(q[1]))
    mp, sp = f64(p[0]), np.exp(0.5 * f64(p[1]))
    per = np.log(sp / sq) + (sq**2 + (mq - mp) ** 2) / (2 * sp**2) - 0.5
    return float(np.mean(np.sum(per, axis=1)))


def separation(mu_a: torch.Tensor, mu_p: torch.Tensor, y: torch.Tensor) -> float:
    """Mean over different-class (aux i, primary j) pairs of relu(sqrt(2 C) - |mu_a_i - mu_p_j|)^2
    / C, by explicit loops."""
    a, p, labels = f64(mu_a), f64(mu_p), y.tolist()
    values = [
        max(math.sqrt(2 * C) - float(np.linalg.norm(a[i] - p[j])), 0.0) ** 2 / C
        for i in range(len(labels))
        for j in range(len(labels))
        if labels[i] != labels[j]
    ]
    return float(np.mean(values))


def ce(logits: torch.Tensor, y: torch.Tensor) -> float:
    z = f64(logits)
    log_softmax = z - np.log(np.sum(np.exp(z), axis=1, keepdims=True))
    return float(-np.mean(log_softmax[np.arange(len(y)), y.numpy()]))


def reference_terms(b: dict) -> dict[str, float]:
    qa, qp = b["q_aux"], b["q_primary"]
    return {
        "recon_aux": bce(b["recon_aux"], b["x_aux"]),
        "recon_primary": bce(b["recon_primary"], b["x_primary"]),
        "kl_style_aux": kl_prior(qa.mu_s, qa.logvar_s),
        "kl_content_aux": kl_prior(qa.mu_c, qa.logvar_c),
        "kl_style_primary": kl_prior(qp.mu_s, qp.logvar_s),
        # the primary's content prior is the paired auxiliary content posterior
        "kl_match": kl_gauss((qp.mu_c, qp.logvar_c), (qa.mu_c, qa.logvar_c)),
        "separation": separation(qa.mu_c, qp.mu_c, b["y"]),
        "ce_aux": ce(b["logits_aux"], b["y"]),
        "ce_primary": ce(b["logits_primary"], b["y"]),
        "style_critic": ce(b["critic_logits"], b["y"].repeat(2)),
        # cross-entropy to the uniform distribution: -log p averaged over rows and classes
        "style_confusion": float(
            -np.mean(f64(b["judged_logits"]) - logsumexp(f64(b["judged_logits"])))
        ),
        # drawing i shows the content of pool image swap_index[i], pool = [auxiliary; primary],
        # judged against the classifier's class of that content (--swap-target prediction)
        "swap_class": ce(b["swap_logits"], b["swap_content_class"][b["swap_index"]]),
    }


def logsumexp(z: np.ndarray) -> np.ndarray:
    return np.log(np.sum(np.exp(z), axis=1, keepdims=True))


def expected_weights(
    kind: str, mean: bool, aux_pixels: int, primary_pixels: int
) -> dict[str, float]:
    """Equation 2: with --loss-scale mean each reconstruction per pixel value of its own images
    and each KL per dimension of its own latent; with sum, nats as they are."""
    w = WEIGHTS
    a, p = (1 / aux_pixels, 1 / primary_pixels) if mean else (1.0, 1.0)
    s, c = (1 / S, 1 / C) if mean else (1.0, 1.0)
    every = {
        "recon_aux": w["recon"] * a,
        "recon_primary": w["recon"] * p,
        "kl_style_aux": w["style_kl"] * s,
        "kl_content_aux": w["kl"] * c,
        "kl_style_primary": w["style_kl"] * s,
        "kl_match": w["match"] * c,
        "separation": w["separation"],
        "ce_aux": w["aux_ce"],
        "ce_primary": w["primary_ce"],
        "style_critic": w["style_adversary"],
        "style_confusion": w["style_adversary"],
        "swap_class": w["swap"],
    }
    return {name: every[name] for name in labeled_terms(kind)}


def labeled_terms(kind: str) -> tuple[str, ...]:
    """The terms of a run without --unlabeled."""
    return tuple(t for t in TERMS[kind] if t not in UNLABELED_TERMS)


def weighted(weights: dict[str, float], reference: dict[str, float]) -> float:
    """The reference total: each of the model's terms times its expected weight."""
    return sum(weights[name] * reference[name] for name in weights)


def step_output(kind: str, b: dict) -> StepOutput:
    if kind == "jade":
        return JADEOutput(
            logits_primary=b["logits_primary"],
            logits_aux=b["logits_aux"],
            q_aux=b["q_aux"],
            q_primary=b["q_primary"],
            recon_aux=b["recon_aux"],
            recon_primary=b["recon_primary"],
            critic_logits=b.get("critic_logits"),
            judged_logits=b.get("judged_logits"),
            swap_logits=b.get("swap_logits"),
            swap_index=b.get("swap_index"),
            swap_content_class=b.get("swap_content_class"),
        )
    return StepOutput(b["logits_primary"], None if kind == "single" else b["logits_aux"])


# --------------------------------------------------------------------------- the objective


@pytest.mark.parametrize("loss_scale", ["mean", "sum"])
@pytest.mark.parametrize("kind", ["single", "paired", "jade"])
def test_every_term_has_its_value_weight_sign_and_scale(kind, loss_scale):
    b = hand_built_batch()
    x_aux = None if kind == "single" else b["x_aux"]
    objective = objective_for(kind, loss_scale)
    total, terms = objective(step_output(kind, b), x_aux, b["x_primary"], b["y"])
    assert tuple(terms) == objective.terms == labeled_terms(kind)  # no weight is 0 here
    reference = reference_terms(b)
    for name, value in terms.items():
        assert value.dtype == torch.float32 and value.shape == ()
        assert float(value.detach()) == pytest.approx(reference[name], rel=1e-5), name

    mean = loss_scale == "mean" and kind != "single"
    # the total is linear in the terms: its derivative by each term is that term's weight
    grads = torch.autograd.grad(total, list(terms.values()), retain_graph=True)
    want = expected_weights(kind, mean, 16, 48)  # (aux, primary) pixels: 1x4x4, 3x4x4
    got = {name: float(g) for name, g in zip(terms, grads, strict=True)}
    assert got == pytest.approx(want, rel=1e-6)
    assert float(total.detach()) == pytest.approx(weighted(want, reference), rel=1e-5)


def test_unlabeled_terms_against_a_float64_reference():
    """--unlabeled: U = 4 images; the weak views' logits make images 0 and 2 confident (> 0.95)
    of classes 3 and 1, image 1 unsure, image 3 confident of class 2, which no auxiliary image
    of the batch has (y = 0, 3, 1): it gets consistency but no matching."""
    b = hand_built_batch()
    rng = np.random.default_rng(7)
    u = 4
    weak = torch.tensor(
        [[0, 0, 0, 9.0], [0.1, 0.2, 0, 0], [0, 8.0, 0, 0], [0, 0, 7.0, 0]], requires_grad=True
    )
    strong = leaf(rng, u, K, scale=2)
    q_unl = Posterior(
        leaf(rng, u, S), leaf(rng, u, S, scale=0.5), leaf(rng, u, C), leaf(rng, u, C, scale=0.5)
    )
    x_unl = torch.tensor(rng.uniform(size=(2 * u, *PRIMARY_SHAPE)), dtype=torch.float32)
    out = step_output("jade", b)
    assert isinstance(out, JADEOutput)
    out.logits_unlabeled = torch.cat([weak, strong])
    out.q_unlabeled = q_unl
    out.recon_unlabeled = leaf(rng, u, *PRIMARY_SHAPE, scale=2)
    terms = unlabeled_terms(out, x_unl, b["y"], 0.95)
    value = {k: float(v.detach()) for k, v in terms.items()}
    assert value["confident_unlabeled"] == 0.75  # 3 of the 4 images are sure
    sure, pseudo = np.array([1, 0, 1, 1.0]), np.array([3, 0, 1, 2])
    z = f64(strong)
    log_p = z - np.log(np.sum(np.exp(z), axis=1, keepdims=True))
    want_cons = float(np.sum(-log_p[np.arange(u), pseudo] * sure) / u)
    assert value["consistency"] == pytest.approx(want_cons, rel=1e-5)
    # targets: the batch's auxiliary posterior of the pseudo-label's class (one image each)
    qa = b["q_aux"]
    kl = 0.0
    for i, aux_row in ((0, 1), (2, 2)):  # class 3 is aux row 1, class 1 aux row 2
        kl += kl_gauss(
            (q_unl.mu_c[i : i + 1], q_unl.logvar_c[i : i + 1]),
            (qa.mu_c[aux_row : aux_row + 1], qa.logvar_c[aux_row : aux_row + 1]),
        )
    assert value["kl_match_unlabeled"] == pytest.approx(kl / u, rel=1e-5)
    want_recon = bce(out.recon_unlabeled, x_unl[:u])  # a mean over the weak views
    assert value["recon_unlabeled"] == pytest.approx(want_recon, rel=1e-5)
    assert value["kl_style_unlabeled"] == pytest.approx(
        kl_prior(q_unl.mu_s, q_unl.logvar_s), rel=1e-5
    )
    # the pseudo-labels and the matching targets carry no gradient
    g_weak, g_qa = torch.autograd.grad(
        terms["consistency"] + terms["kl_match_unlabeled"], [weak, qa.mu_c], allow_unused=True
    )
    assert g_qa is None and not g_weak.any()


def test_the_matching_kl_is_primary_given_auxiliary_and_trains_both_encoders():
    b = hand_built_batch()
    qa, qp = b["q_aux"], b["q_primary"]
    forward = kl_gauss((qp.mu_c, qp.logvar_c), (qa.mu_c, qa.logvar_c))
    backward = kl_gauss((qa.mu_c, qa.logvar_c), (qp.mu_c, qp.logvar_c))
    assert backward > 3 * forward  # the two directions are far apart on this batch
    terms = jade_terms(step_output("jade", b), b["x_aux"], b["x_primary"], b["y"])  # type: ignore[arg-type]
    assert float(terms["kl_match"].detach()) == pytest.approx(forward, rel=1e-5)
    # d KL(P || A) / d mu_P = (mu_P - mu_A) / var_A and d / d mu_A is its negative (per pair,
    # averaged over the batch): the term pulls both content posteriors towards each other.
    g_p, g_a = torch.autograd.grad(terms["kl_match"], [qp.mu_c, qa.mu_c])
    pull = (f64(qp.mu_c) - f64(qa.mu_c)) / np.exp(f64(qa.logvar_c)) / B
    np.testing.assert_allclose(f64(g_p), pull, rtol=1e-5)
    np.testing.assert_allclose(f64(g_a), -pull, rtol=1e-5)


def test_ce_on_mean_averages_the_cross_entropies_of_samples_and_means():
    b = hand_built_batch()
    rng = np.random.default_rng(5)
    out = step_output("jade", b)
    assert isinstance(out, JADEOutput)
    out.mean_logits_aux, out.mean_logits_primary = leaf(rng, B, K), leaf(rng, B, K)
    terms = jade_terms(out, b["x_aux"], b["x_primary"], b["y"])
    for role in ("aux", "primary"):
        want = 0.5 * (
            ce(b[f"logits_{role}"], b["y"]) + ce(getattr(out, f"mean_logits_{role}"), b["y"])
        )
        assert float(terms[f"ce_{role}"].detach()) == pytest.approx(want, rel=1e-5)


def test_ce_on_mean_makes_the_model_classify_the_posterior_means_in_training():
    shape = (1, 8, 8)
    model = build_model(spec("jade", primary=shape, auxiliary=shape))
    x = torch.rand(4, *shape)
    assert model.forward_train(x, x).mean_logits_primary is None  # computed only when asked
    assert objective_for("jade").wants_mean_logits  # --ce-on-mean (the default) asks
    assert not objective_for("jade", ce_on_mean=False).wants_mean_logits
    model.eval()  # no dropout: the mean logits are the classifier's prediction
    out = model.forward_train(x, x, StepRequest(mean_logits=True))
    torch.testing.assert_close(out.mean_logits_primary, model.classify(PRIMARY, x))
    torch.testing.assert_close(out.mean_logits_aux, model.classify(AUXILIARY, x))


@pytest.mark.parametrize("arch", ["paper", "shared"])
def test_the_classifier_sees_content_only_and_the_decoders_see_both(arch):
    shape = (3, 12, 12)
    model = build_model(spec("jade", arch, primary=shape, auxiliary=shape))
    x_aux, x_primary = torch.rand(5, *shape), torch.rand(5, *shape)

    def run() -> tuple[JADEOutput, torch.Tensor, torch.Tensor]:
        torch.manual_seed(0)  # the same latent noise on every call
        out = model.forward_train(x_aux, x_primary)
        assert isinstance(out, JADEOutput)
        return out, model.classify(AUXILIARY, x_aux), model.classify(PRIMARY, x_primary)

    with torch.no_grad():
        before, aux_before, primary_before = run()
        for enc in (model.aux_encoder, model.primary_encoder):  # move every style latent
            enc.style_head.bias += 3.0
        styled, aux_styled, primary_styled = run()
        model.primary_encoder.content_head.bias += 3.0  # then the content latents
        contented, _, primary_contented = run()
    assert torch.equal(styled.logits_aux, before.logits_aux)
    assert torch.equal(styled.logits_primary, before.logits_primary)
    assert torch.equal(aux_styled, aux_before) and torch.equal(primary_styled, primary_before)
    assert not torch.allclose(styled.recon_aux, before.recon_aux)  # [z_s, z_c] -> decoder
    assert not torch.allclose(styled.recon_primary, before.recon_primary)
    # the check can see a change: moving the content moves the logits
    assert not torch.allclose(contented.logits_primary, styled.logits_primary)
    assert not torch.allclose(primary_contented, primary_styled)


def test_extreme_encoder_outputs_keep_every_term_and_gradient_finite():
    """What keeps the paper's recipe (no clipping, CE x1e4 / x1e5) finite where the authors'
    code went NaN: log-variances are bounded, so exp() of their difference in the matching KL
    cannot overflow, and reconstructions are scored from logits, never log(sigmoid)."""
    shape = (1, 8, 8)
    model = build_model(spec("jade", "paper", primary=shape, auxiliary=shape))
    with torch.no_grad():  # the posteriors' log-variances at +-300 before bounding
        model.primary_encoder.content_head.bias[C:] = 300.0
        model.aux_encoder.content_head.bias[C:] = -300.0
        model.aux_decoder.net[-1].bias.fill_(-1e4)  # reconstructions saturated at 0
    x = torch.rand(4, *shape)
    cfg = TrainConfig(
        primary="mnist", auxiliary="usps", n_labeled=4, loss_scale="sum", aux_ce_weight=1e4
    )
    objective = Objective(cfg, model.spec)
    total, terms = objective(model.forward_train(x, x), x, x, torch.tensor([0, 1, 2, 3]))
    assert all(torch.isfinite(t) for t in terms.values()), terms
    total.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


# --------------------------------------------------------------------------- the trainer


def test_the_trainer_feeds_each_dataset_to_its_own_terms_with_its_own_scale(tmp_path):
    """A real batch of SVHN-format (3x32x32) and MNIST-format (1x28x28) pairs: the trainer's
    loss is the reference objective of the very images and labels of the batch."""
    make_mnist(tmp_path, n_train=40, n_test=10)
    make_svhn(tmp_path, n_train=40, n_test=10)
    cfg = TrainConfig(
        primary="svhn",
        auxiliary="mnist",
        n_labeled=20,
        arch="paper",
        augment="none",
        data_dir=str(tmp_path),
        device="cpu",
        batch_size=B,
        style_dim=S,
        content_dim=C,
        **WEIGHT_FIELDS,
    )
    cfg, data = training_data(cfg, NullReporter())
    trainer = Trainer(cfg, data, torch.device("cpu"))
    idx = tuple(o[:B] for o in trainer.batches._order(0))
    _, batch = next(trainer.batches.epoch(0))
    x_aux, x_primary, y = batch.x_aux, batch.x_primary, batch.y
    assert x_aux is not None and batch.weight == 1.0
    assert x_aux.shape == (B, 1, 28, 28) and x_primary.shape == (B, 3, 32, 32)
    torch.testing.assert_close(x_primary, data.labeled.images[idx[1]].float() / 255)
    torch.testing.assert_close(x_aux, data.aux_train.images[idx[0]].float() / 255)
    assert torch.equal(y, data.labeled.labels[idx[1]])

    rng = np.random.default_rng(1)
    b = hand_built_batch()
    b.update(
        x_aux=x_aux,
        x_primary=x_primary,
        y=y,
        recon_aux=leaf(rng, B, 1, 28, 28),
        recon_primary=leaf(rng, B, 3, 32, 32),
        logits_aux=leaf(rng, B, 10),
        logits_primary=leaf(rng, B, 10),
        critic_logits=leaf(rng, 2 * B, 10),
        judged_logits=leaf(rng, 2 * B, 10),
        swap_logits=leaf(rng, 2 * B, 10),
        swap_index=torch.randperm(2 * B),
        swap_content_class=torch.randint(
            0, 10, (2 * B,), generator=torch.Generator().manual_seed(0)
        ),
    )
    total, terms = trainer.objective(step_output("jade", b), x_aux, x_primary, y)
    reference = reference_terms(b)
    for name, value in terms.items():  # each reconstruction scored against its own images
        assert float(value.detach()) == pytest.approx(reference[name], rel=1e-5), name
    want = expected_weights("jade", True, 784, 3072)
    assert float(total.detach()) == pytest.approx(weighted(want, reference), rel=1e-5)
    assert math.isclose(trainer.objective.weights["recon_primary"], WEIGHTS["recon"] / 3072)


def test_a_term_at_weight_0_is_not_computed_nor_listed(monkeypatch):
    """The separation term (a B x B distance matrix) at its default weight 0 costs nothing: it
    is never called, and metrics.csv has no column for it."""
    import jadecli.objective

    def never(*args):
        raise AssertionError("the separation term was computed at weight 0")

    monkeypatch.setattr(jadecli.objective, "separation", never)
    cfg = TrainConfig(primary="mnist", auxiliary="usps", n_labeled=4, swap_weight=0.0)
    objective = Objective(cfg, spec("jade"))
    assert "separation" not in objective.terms
    b = hand_built_batch()
    _, terms = objective(step_output("jade", b), b["x_aux"], b["x_primary"], b["y"])
    # nor are the style critic's (--style-adversary-weight 0 by default), nor the swap term's
    # at --swap-weight 0, nor --unlabeled's without unlabeled images
    off = {"separation", "style_critic", "style_confusion", "swap_class", *UNLABELED_TERMS}
    assert set(terms) == set(TERMS["jade"]) - off
    assert not objective.wants_swaps
    paired = objective_for("paired", aux_ce_weight=0.0)
    assert paired.terms == ("ce_primary",)


# --------------------------------------------------------------------------- behaviour


@pytest.mark.slow
def test_the_matching_term_pulls_same_class_contents_together(
    runner, synth_dir, trained_runs, tmp_path
):
    """The same tiny run with --match-weight 100 (the default: the session's JADE run) and 0:
    on same-class test pairs, the content KL that `jade evaluate` reports is far lower with the
    matching term. Classification alone does not bring the two posteriors together."""
    unmatched = tmp_path / "unmatched"
    result = runner.invoke(
        app, tiny_synth_args(synth_dir, unmatched, "jade", ("--match-weight", "0"))
    )
    assert result.exit_code == 0, result.output
    matched = tmp_path / "matched"
    shutil.copytree(trained_runs["jade"], matched)  # evaluate appends to the run's manifest
    kl = {}
    for name, run in (("matched", matched), ("unmatched", unmatched)):
        result = runner.invoke(app, ["evaluate", str(run), "--device", "cpu", "--format", "json"])
        assert result.exit_code == 0, result.output
        kl[name] = json.loads(result.stdout)["kl_match"]
    assert kl["matched"] < 0.1 * kl["unmatched"], kl
