"""Labeled subsets, same-class pairing, the objective's closed forms and the models' shapes."""

from __future__ import annotations

import io

import pytest
import torch
from torch.distributions import Normal, kl_divergence

from jadecli.data.sampling import IndexStream, PairSampler, first_per_class, labeled_subset
from jadecli.errors import UsageError
from jadecli.model import JADE, build_model
from jadecli.objective import (
    jade_terms,
    kl_normal,
    kl_standard_normal,
    reconstruction_bce,
)
from jadecli.outputs import StepRequest
from jadecli.spec import ModelSpec

CLASSES = [str(d) for d in range(10)]


def labels_with_counts(counts: list[int]) -> torch.Tensor:
    y = torch.cat([torch.full((c,), i) for i, c in enumerate(counts)])
    return y[torch.randperm(len(y), generator=torch.Generator().manual_seed(0))]


def test_labeled_subset_is_class_balanced_seeded_and_sorted():
    y = labels_with_counts([50] * 10)
    a = labeled_subset(y, CLASSES, 100, "random", seed=1, dataset_name="d")
    b = labeled_subset(y, CLASSES, 100, "random", seed=1, dataset_name="d")
    c = labeled_subset(y, CLASSES, 100, "random", seed=2, dataset_name="d")
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.bincount(y[a], minlength=10).tolist() == [10] * 10
    assert torch.equal(a, torch.sort(a).values) and len(set(a.tolist())) == 100
    first = labeled_subset(y, CLASSES, 20, "first", seed=7, dataset_name="d")
    for cls in range(10):
        members = torch.nonzero(y == cls).flatten()[:2]
        assert set(members.tolist()) <= set(first.tolist())
    assert len(labeled_subset(y, CLASSES, "all", "random", 0, "d")) == 500


@pytest.mark.parametrize(
    "n, message",
    [
        (105, r"cannot be split evenly over the 10 classes .* \(e.g. 100 or 110\)"),
        (600, "more than the 500 training images"),
        (300, "class '3' of d has only 20 training images; use at most --n-labeled 200"),
    ],
)
def test_labeled_subset_errors(n, message):
    y = labels_with_counts([50, 50, 50, 20, 50, 50, 50, 50, 50, 80])
    with pytest.raises(UsageError, match=message):
        labeled_subset(y, CLASSES, n, "random", 0, "d")


def test_first_per_class_takes_the_first_k_of_each_class():
    y = labels_with_counts([30] * 10)
    idx = first_per_class(y, CLASSES, 4, "aux")
    assert torch.bincount(y[idx], minlength=10).tolist() == [4] * 10
    for cls in range(10):
        assert torch.equal(idx[y[idx] == cls], torch.nonzero(y == cls).flatten()[:4])
    with pytest.raises(UsageError, match="--aux-per-class 31 is more than the 30"):
        first_per_class(y, CLASSES, 31, "aux")


def test_index_stream_covers_each_item_equally_and_is_resumable():
    stream = IndexStream(n=30, epoch_size=12, seed=0, tag="t")
    seen = torch.cat([stream.epoch(e) for e in range(5)])  # 60 = two whole passes
    assert torch.bincount(seen, minlength=30).tolist() == [2] * 30
    again = IndexStream(n=30, epoch_size=12, seed=0, tag="t")
    assert torch.equal(again.epoch(3), stream.epoch(3))


def test_pairs_are_same_class_and_use_primary_images_evenly():
    aux_y = labels_with_counts([450] * 10)  # 4,500 auxiliary
    prim_y = labels_with_counts([10] * 10)  # 100 labeled primary
    sampler = PairSampler(aux_y, prim_y, 10, epoch_size=4500, seed=0)
    ai, pi = sampler.epoch(0)
    assert torch.equal(aux_y[ai], prim_y[pi])  # every pair shares its class
    assert torch.bincount(ai, minlength=4500).tolist() == [1] * 4500  # each aux image once
    assert torch.bincount(pi, minlength=100).tolist() == [45] * 100  # each primary 45 times
    ai2, pi2 = PairSampler(aux_y, prim_y, 10, 4500, seed=0).epoch(0)
    assert torch.equal(ai, ai2) and torch.equal(pi, pi2)
    _, pi_next = sampler.epoch(1)
    assert not torch.equal(pi, pi_next)  # reshuffled every epoch


def test_pairing_refuses_a_class_without_primary_images():
    aux_y = torch.tensor([0, 1, 2])
    with pytest.raises(UsageError, match="no labeled primary image"):
        PairSampler(aux_y, torch.tensor([0, 1]), 3, 3, 0)


def test_closed_form_kl_matches_torch_distributions():
    g = torch.Generator().manual_seed(0)
    mu_q, mu_p = torch.randn(64, 10, generator=g), torch.randn(64, 10, generator=g) * 2
    lv_q, lv_p = torch.randn(64, 10, generator=g), torch.randn(64, 10, generator=g)
    ref = kl_divergence(Normal(mu_q, (0.5 * lv_q).exp()), Normal(mu_p, (0.5 * lv_p).exp())).sum(-1)
    assert torch.allclose(kl_normal(mu_q, lv_q, mu_p, lv_p), ref, atol=1e-5, rtol=1e-5)
    prior = kl_divergence(Normal(mu_q, (0.5 * lv_q).exp()), Normal(0.0, 1.0)).sum(-1)
    assert torch.allclose(kl_standard_normal(mu_q, lv_q), prior, atol=1e-5, rtol=1e-5)
    # the original code's bug used (logvar_p - mu_q)^2: make sure we do not
    assert torch.allclose(kl_normal(mu_q, lv_q, mu_q, lv_q), torch.zeros(64), atol=1e-6)


def test_reconstruction_bce_sums_over_pixels_and_is_stable():
    target = torch.rand(4, 3, 8, 8)
    logits = torch.randn(4, 3, 8, 8)
    p = torch.sigmoid(logits)
    manual = -(target * p.log() + (1 - target) * (1 - p).log()).flatten(1).sum(1)
    assert torch.allclose(reconstruction_bce(logits, target), manual, atol=1e-4)
    extreme = torch.full((1, 1, 2, 2), 1e4)
    assert torch.isfinite(reconstruction_bce(extreme, torch.zeros(1, 1, 2, 2))).all()


def spec_of(kind, primary, auxiliary, num_classes=4, hidden_dim=16, arch="paper"):
    return ModelSpec(
        kind=kind,
        arch=arch,
        primary_shape=primary,
        auxiliary_shape=auxiliary,
        num_classes=num_classes,
        content_dim=10,
        style_dim=10,
        hidden_dim=hidden_dim,
        dropout=0.5,
    )


@pytest.mark.parametrize(
    "primary, auxiliary",
    [
        ((3, 32, 32), (1, 28, 28)),
        ((1, 16, 16), (1, 28, 28)),
        ((3, 37, 23), (3, 9, 9)),
        ((1, 64, 64), (1, 28, 28)),
    ],
)
def test_models_build_for_any_image_shapes(primary, auxiliary):
    model = JADE(spec_of("jade", primary, auxiliary))
    xa, xp = torch.rand(2, *auxiliary), torch.rand(2, *primary)
    out = model(xa, xp, StepRequest(swaps=True))
    assert out.recon_aux.shape == xa.shape and out.recon_primary.shape == xp.shape
    assert out.logits_primary.shape == (2, 4)
    terms = jade_terms(out, xa, xp, torch.tensor([0, 3]))
    assert "swap_class" in terms and all(torch.isfinite(v) for v in terms.values())
    for kind in ("single", "paired"):
        m = build_model(spec_of(kind, primary, auxiliary))
        assert m.classify("primary", xp).shape == (2, 4)
        if kind == "paired":
            assert m.classify("auxiliary", xa).shape == (2, 4)


def test_paper_architecture_sizes():
    model = JADE(spec_of("jade", (3, 32, 32), (1, 28, 28), num_classes=10, hidden_dim=500))
    assert model.primary_encoder.cnn.out_shape == (8, 4, 4)  # 128 features, as in the paper
    assert model.aux_encoder.cnn.out_shape == (16, 4, 4)  # 28 -> 14 -> 7 -> 4
    assert model.primary_encoder.content_dim == 10 and model.primary_encoder.style_dim == 10
    widths = [m.out_channels for m in model.primary_encoder.cnn.net if hasattr(m, "out_channels")]
    assert widths == [64, 96, 64, 8]
    # prediction uses the posterior mean: deterministic in eval mode
    model.eval()
    x = torch.rand(3, 3, 32, 32)
    assert torch.equal(model.classify("primary", x), model.classify("primary", x))


def test_a_closed_progress_pipe_does_not_stop_training():
    """`jade train ... | head -3`: once the reader is gone, progress lines are dropped instead
    of crashing the run (the run folder still records every epoch)."""
    from jadecli.progress import PlainReporter

    class ClosedPipe(io.StringIO):
        def write(self, text: str) -> int:
            raise BrokenPipeError(32, "Broken pipe")

    reporter = PlainReporter(ClosedPipe())
    reporter.info("loading")
    row = {"loss": 1.0, "examples_per_s": 10.0, "seconds": 1.0}
    reporter.end_epoch(1, 2, row)
    assert reporter.gone
