"""The objective of the three models; JADE's is equation 2 of the paper.

For a same-class pair (x_A auxiliary, x_P primary, label y), with every term averaged over the
batch, each reconstruction summed over pixel values and each KL summed over latent dimensions:

    L = w_rec   * [BCE(x_A, dec_A(z_A)) / D_A + BCE(x_P, dec_P(z_P)) / D_P]
      + w_kl_s  * [KL(q(z_s^A|x_A) || N(0,I)) + KL(q(z_s^P|x_P) || N(0,I))] / d_s
      + w_kl    *  KL(q(z_c^A|x_A) || N(0,I)) / d_c
      + w_match *  KL(q(z_c^P|x_P) || q(z_c^A|x_A)) / d_c
      + w_sep   *  SEP(z_c^A, z_c^P, y)                     (0 unless --separation-weight)
      + w_A * CE(y, f(z_c^A)) + w_P * CE(y, f(z_c^P))
      + w_adv   * [CE(y, g(sg z_s)) + CE(uniform, g'(z_s))]  (0 unless --style-adversary-weight)
      + w_swap  *  CE(t_j, f'(E'_d(dec_d(sg z_s^i, sg z_c^j))))  (0 unless --swap-weight)

with D the number of pixel values of each dataset's images (784 for 28x28 grey, 3072 for 32x32
colour) and d_s, d_c the style and content latent sizes: under `--loss-scale mean` (the default)
every term is a mean over its own elements, so a weight means the same whatever the image and
latent sizes (w_kl_s is `--style-kl-weight`, by default `--kl-weight`). `--loss-scale sum` (the
paper's) sets D = d_s = d_c = 1: nats summed over pixels and latent dimensions. The paired
classifier keeps the two cross-entropies, the single one the primary's.

The primary's content prior is replaced by the paired auxiliary content posterior: this is what
ties ("entangles") the two disentanglements together. Its gradient reaches both posteriors, and
must: with the auxiliary side detached (tried), nothing but the weak prior KL keeps the
auxiliary posterior wide, it narrows, the 1/variance in this KL explodes (42,000 nats on
MNIST-M) and nothing is learned. `--ce-on-mean` adds the classifier's cross-entropy on the
posterior means to that on the samples (each term is then the average of the two). SEP is the
class-separation term of CCSA/d-SNE-style methods: over every different-class (auxiliary i,
primary j) pair of the batch, relu(m - |mu^A_i - mu^P_j|)^2 / d_c with margin m = sqrt(2 d_c),
the typical distance of two draws of the N(0, I) prior.

The style critic g (`--style-adversary-weight`) is a small MLP over both datasets' style
samples: it learns the class from detached codes (sg), and the encoders learn to make a frozen
copy of it (g') guess uniformly, so the class stays out of style and the decoders take it from
content. (A gradient reversal, DANN's form, was tried first: the encoders inflated z_s without
bound to fool the critic, 36,000 nats of style KL in the first epoch, and the decoders died.)

The swap term (`--swap-weight`) asks each decoder d to draw its batch's styles z_s^i with
contents z_c^j of other images of both datasets (a permutation of the 2B contents of the
batch), and the model as it predicts (its encoder E'_d and classifier f', weights frozen,
BatchNorm's running statistics, no dropout) to classify each drawing as j's class t_j. Only the
decoders learn from it (the codes are detached): a decoder that reads the class from style,
where the trunk's features put it, draws the wrong digit in a swap. t_j is the classifier's own
class of the content code z_c^j (`--swap-target prediction`, argmax f(z_c^j), eval mode, no
gradient) or j's label (`label`): against labels, every code the classifier gets wrong (a
quarter of the primary's early on) asks the decoders to draw a class the code does not say,
and they learn to draw ambiguous digits; against predictions they learn to draw what the
encoder read, which is what a reconstruction must show.

With `--unlabeled`, each step also holds U unlabeled primary images in a weak and a strong
view, and the loss gains (`unlabeled_terms`; each a sum over the U images divided by U):

      + w_cons  *  CE(k, f(x_strong)) where p(k|x_weak) >= --confidence   (every model)
      + w_rec   *  BCE(x_weak, dec_P(z_weak)) / D_P                         (JADE, as below)
      + w_kl_s  *  KL(q(z_s|x_weak) || N(0,I)) / d_s
      + w_match *  KL(q(z_c|x_weak) || r_k) / d_c    where confident; r_k: the batch's class-k
                                                     auxiliary posteriors averaged, detached

k being the model's own (detached) prediction of the weak view: FixMatch's consistency, and
JADE's pairing with a pseudo-label standing in for the label. Without `--unlabeled` none of
these terms is computed, and training is what it was.

The KL of two diagonal Gaussians uses the correct closed form (the authors' code had
`(logvar_A - mu_P)^2` in place of `(mu_A - mu_P)^2`).

`Objective` is the one road from a model's outputs to the loss: built from the run's config and
model spec, it owns every weight, the per-element scales and `--ce-on-mean`, and computes only
the terms whose weight is not 0 (those are the loss columns of metrics.csv).

    python -c "from jadecli.config import TrainConfig; from jadecli.spec import ModelSpec; \
from jadecli.objective import Objective; o = Objective(TrainConfig(primary='mnist', \
auxiliary='usps', n_labeled=100), ModelSpec('jade', 'shared', (1, 28, 28), (1, 28, 28), 10, 10, \
10, 500, 0.0)); print(o.weights)"
"""

from __future__ import annotations

import math
from collections.abc import Collection

import torch
import torch.nn.functional as F

from jadecli.config import TrainConfig
from jadecli.outputs import JADEOutput, StepOutput, TestOutput
from jadecli.spec import ModelSpec

# The style critic's terms (--style-adversary-weight), computed only for a model that has one
CRITIC_TERMS = ("style_critic", "style_confusion")
# Every term of each model's objective, in the order of metrics.csv and divergence messages.
# --unlabeled's terms (none without it): FixMatch's consistency for every model, JADE's ELBO of
# the unlabeled primary images, and a number to watch at weight 0: the share of unlabeled
# images confident enough for their pseudo-label to be used
CONFIDENT = "confident_unlabeled"
UNLABELED_TERMS = (
    "recon_unlabeled", "kl_style_unlabeled", "kl_match_unlabeled", "consistency", CONFIDENT
)  # fmt: skip
TERMS = {
    "single": ("ce_primary", "consistency", CONFIDENT),
    "paired": ("ce_aux", "ce_primary", "consistency", CONFIDENT),
    "jade": (
        "recon_aux",
        "recon_primary",
        "kl_style_aux",
        "kl_content_aux",
        "kl_style_primary",
        "kl_match",
        "separation",
        "ce_aux",
        "ce_primary",
        *CRITIC_TERMS,
        "swap_class",
        *UNLABELED_TERMS,
    ),
}


class Objective:
    """Equation 2 with the run's weights: `objective(out, x_aux, x_primary, y)` -> (the weighted
    loss, its unweighted terms), every term in fp32 whatever precision the forward ran in."""

    def __init__(self, cfg: TrainConfig, spec: ModelSpec):
        # the classifier also sees the content codes it predicts from (a forward-pass output
        # the model computes when asked: `wants_mean_logits`)
        self.ce_on_mean = spec.generative and cfg.ce_on_mean
        self.weights = term_weights(cfg, spec)
        # a term at weight 0 is not computed at all (the separation term is a B x B matrix)
        # (the share of confident unlabeled images is listed at weight 0: it is only watched)
        watched = {CONFIDENT} if cfg.unlabeled else set()
        self.terms = tuple(t for t in TERMS[spec.kind] if self.weights[t] != 0 or t in watched)
        self.confidence = cfg.confidence  # --unlabeled: what a pseudo-label needs
        self.swap_target = cfg.swap_target  # what each swap drawing must be recognised as

    @property
    def wants_mean_logits(self) -> bool:
        return self.ce_on_mean

    @property
    def wants_unlabeled_elbo(self) -> bool:
        """Whether JADE must reconstruct its unlabeled images (--unlabeled-elbo)."""
        return "recon_unlabeled" in self.terms

    @property
    def wants_swaps(self) -> bool:
        """Whether the model must draw and judge swaps (the swap term's weight is not 0)."""
        return "swap_class" in self.terms

    def __call__(
        self,
        out: StepOutput,
        x_aux: torch.Tensor | None,
        x_primary: torch.Tensor,
        y: torch.Tensor,
        x_unl: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if isinstance(out, JADEOutput):
            assert x_aux is not None
            terms = jade_terms(out, x_aux, x_primary, y, self.terms, self.swap_target)
        else:
            terms = classifier_terms(out.logits_aux, out.logits_primary, y, self.terms)
        if x_unl is not None:
            terms.update(unlabeled_terms(out, x_unl, y, self.confidence, self.terms))
        total = sum(self.weights[name] * value for name, value in terms.items())
        assert isinstance(total, torch.Tensor)
        return total, terms


def term_weights(cfg: TrainConfig, spec: ModelSpec) -> dict[str, float]:
    """The weight of each term: its flag's value times, under `--loss-scale mean`, 1 / its
    number of elements (pixel values of that dataset's images; latent dimensions)."""
    aux = primary = style = content = 1.0
    style_kl = cfg.kl_weight if cfg.style_kl_weight is None else cfg.style_kl_weight
    if cfg.loss_scale == "mean" and spec.auxiliary_shape is not None:
        aux, primary = 1.0 / math.prod(spec.auxiliary_shape), 1.0 / math.prod(spec.primary_shape)
        style, content = 1.0 / spec.style_dim, 1.0 / spec.content_dim
    weights = {
        "recon_aux": cfg.recon_weight * aux,
        "recon_primary": cfg.recon_weight * primary,
        "kl_style_aux": style_kl * style,
        "kl_content_aux": cfg.kl_weight * content,
        "kl_style_primary": style_kl * style,
        "kl_match": cfg.match_weight * content,
        "separation": cfg.separation_weight,
        "ce_aux": cfg.aux_ce_weight,
        "ce_primary": cfg.primary_ce_weight,
        "style_critic": cfg.style_adversary_weight,
        "style_confusion": cfg.style_adversary_weight,
        "swap_class": cfg.swap_weight,
        # --unlabeled: the unlabeled images' ELBO at the labeled primary images' weights
        "recon_unlabeled": cfg.recon_weight * primary,
        "kl_style_unlabeled": style_kl * style,
        "kl_match_unlabeled": cfg.match_weight * content,
        "consistency": cfg.consistency_weight,
        CONFIDENT: 0.0,  # not a loss: the share of confident unlabeled images, watched
    }
    for name in UNLABELED_TERMS:  # nothing unlabeled, or (JADE) --no-unlabeled-elbo
        elbo = name != "consistency" and not cfg.unlabeled_elbo
        if not cfg.unlabeled or elbo:
            weights[name] = 0.0
    return {t: weights[t] for t in TERMS[spec.kind]}


# --------------------------------------------------------------------------- the terms


def kl_normal(
    mu_q: torch.Tensor, logvar_q: torch.Tensor, mu_p: torch.Tensor, logvar_p: torch.Tensor
) -> torch.Tensor:
    """KL(N(mu_q, exp(logvar_q)) || N(mu_p, exp(logvar_p))) for diagonal Gaussians, summed over
    the last dimension:

        0.5 * sum(logvar_p - logvar_q + (exp(logvar_q) + (mu_q - mu_p)^2) / exp(logvar_p) - 1)
    """
    return 0.5 * torch.sum(
        logvar_p
        - logvar_q
        + torch.exp(logvar_q - logvar_p)
        + (mu_q - mu_p).pow(2) * torch.exp(-logvar_p)
        - 1.0,
        dim=-1,
    )


def kl_standard_normal(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, exp(logvar)) || N(0, I)), summed over the last dimension."""
    return 0.5 * torch.sum(mu.pow(2) + torch.exp(logvar) - logvar - 1.0, dim=-1)


def reconstruction_bce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Bernoulli cross-entropy of targets in [0, 1], summed over pixels: (B, C, H, W) -> (B,)."""
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    return bce.flatten(1).sum(1)


def separation(mu_aux: torch.Tensor, mu_primary: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean over different-class (auxiliary i, primary j) pairs of relu(m - |mu_a_i - mu_p_j|)^2
    / d, with m = sqrt(2 d) (d: the content size): pushes content codes of different classes at
    least as far apart as two draws of the prior. 0 when the batch has one class only."""
    d = mu_aux.shape[1]
    dist = torch.cdist(mu_aux, mu_primary)  # (B, B) euclidean
    differ = (y[:, None] != y[None, :]).to(dist.dtype)  # (B, B)
    hinge = torch.relu(math.sqrt(2 * d) - dist).pow(2) / d
    return (hinge * differ).sum() / differ.sum().clamp_min(1.0)


def swap_class(out: JADEOutput, y: torch.Tensor, target: str = "prediction") -> torch.Tensor:
    """Cross-entropy of the frozen model's class of each swap against its content's class:
    the classifier's own class of the content code (`target` "prediction") or the content
    image's label ("label")."""
    assert out.swap_logits is not None and out.swap_index is not None, "no swaps were drawn"
    pool = y.repeat(2)  # (2B,) the labels of [auxiliary; primary] contents
    if target == "prediction":
        assert out.swap_content_class is not None, "the contents were not classified"
        pool = out.swap_content_class
    return F.cross_entropy(out.swap_logits.float(), pool[out.swap_index])


def _given(logits: torch.Tensor | None) -> torch.Tensor:
    assert logits is not None, "the model has no style critic"
    return logits.float()


def classifier_terms(
    logits_aux: torch.Tensor | None,
    logits_primary: torch.Tensor,
    y: torch.Tensor,
    wanted: Collection[str] = TERMS["paired"],
) -> dict[str, torch.Tensor]:
    """The classification terms (single: the primary's only; paired: both), in fp32."""
    terms = {}
    if logits_aux is not None and "ce_aux" in wanted:
        terms["ce_aux"] = F.cross_entropy(logits_aux.float(), y)
    if "ce_primary" in wanted:
        terms["ce_primary"] = F.cross_entropy(logits_primary.float(), y)
    return terms


def jade_terms(
    out: JADEOutput,
    x_aux: torch.Tensor,
    x_primary: torch.Tensor,
    y: torch.Tensor,
    wanted: Collection[str] = TERMS["jade"],
    swap_target: str = "prediction",
) -> dict[str, torch.Tensor]:
    """Unweighted batch means of the JADE terms in `wanted` (keys in TERMS["jade"] order), in
    fp32 whatever precision the forward pass ran in (`swap_target`: --swap-target)."""
    qa, qp = out.q_aux.float(), out.q_primary.float()
    compute = {
        "recon_aux": lambda: reconstruction_bce(out.recon_aux.float(), x_aux).mean(),
        "recon_primary": lambda: reconstruction_bce(out.recon_primary.float(), x_primary).mean(),
        "kl_style_aux": lambda: kl_standard_normal(qa.mu_s, qa.logvar_s).mean(),
        "kl_content_aux": lambda: kl_standard_normal(qa.mu_c, qa.logvar_c).mean(),
        "kl_style_primary": lambda: kl_standard_normal(qp.mu_s, qp.logvar_s).mean(),
        "kl_match": lambda: kl_normal(qp.mu_c, qp.logvar_c, qa.mu_c, qa.logvar_c).mean(),
        "separation": lambda: separation(qa.mu_c, qp.mu_c, y),
        "ce_aux": lambda: F.cross_entropy(out.logits_aux.float(), y),
        "ce_primary": lambda: F.cross_entropy(out.logits_primary.float(), y),
        "style_critic": lambda: F.cross_entropy(_given(out.critic_logits), y.repeat(2)),
        "style_confusion": lambda: -F.log_softmax(_given(out.judged_logits), 1).mean(),
        "swap_class": lambda: swap_class(out, y, swap_target),
    }
    # the style critic's terms exist only for a model that has one, the swap term only for a
    # forward pass that drew swaps
    drawn = {"swap_class": out.swap_logits is not None}
    drawn.update({n: out.critic_logits is not None for n in CRITIC_TERMS})
    wanted = [n for n in wanted if n in compute and drawn.get(n, True)]
    terms = {name: compute[name]() for name in TERMS["jade"] if name in wanted}
    # --ce-on-mean: each cross-entropy is the average of those on samples and on means
    for name, mean_logits in (
        ("ce_aux", out.mean_logits_aux),
        ("ce_primary", out.mean_logits_primary),
    ):
        if mean_logits is not None and name in terms:
            terms[name] = 0.5 * (terms[name] + F.cross_entropy(mean_logits.float(), y))
    return terms


def unlabeled_terms(
    out: StepOutput,
    x_unl: torch.Tensor,
    y: torch.Tensor,
    confidence: float,
    wanted: Collection[str] = UNLABELED_TERMS,
) -> dict[str, torch.Tensor]:
    """--unlabeled's terms over U unlabeled images (x_unl: weak views, then strong), each a sum
    over the images divided by U (FixMatch's normalisation: an image below the confidence
    threshold counts as 0), in fp32:

        consistency        = CE(k, f(x_strong)) if max p(.|x_weak) >= confidence, k its argmax
        recon_unlabeled    = BCE(x_weak, dec_P(z_weak))
        kl_style_unlabeled = KL(q(z_s|x_weak) || N(0, I))
        kl_match_unlabeled = KL(q(z_c|x_weak) || r_k) where confident and class k is in the
                             batch; r_k the mean of the batch's class-k auxiliary posteriors
                             (means and variances averaged), detached

    The pseudo-label k comes from the model's own prediction of the weak view, detached.
    `confident_unlabeled` (weight 0, watched in metrics.csv) is the share of the U images whose
    pseudo-label is used."""
    assert out.logits_unlabeled is not None, "the model drew no unlabeled logits"
    u = x_unl.shape[0] // 2
    n = max(u, 1)
    logits = out.logits_unlabeled.float()  # (2U, K)
    conf, pseudo = logits[:u].detach().softmax(1).max(1)  # (U,)
    sure = (conf >= confidence).float()
    terms: dict[str, torch.Tensor] = {}
    if isinstance(out, JADEOutput) and out.q_unlabeled is not None:
        q, qa = out.q_unlabeled.float(), out.q_aux.float()
        assert out.recon_unlabeled is not None
        if "recon_unlabeled" in wanted:
            terms["recon_unlabeled"] = (
                reconstruction_bce(out.recon_unlabeled.float(), x_unl[:u]).sum() / n
            )
        if "kl_style_unlabeled" in wanted:
            terms["kl_style_unlabeled"] = kl_standard_normal(q.mu_s, q.logvar_s).sum() / n
        if "kl_match_unlabeled" in wanted:
            one_hot = F.one_hot(y, logits.shape[1]).float()  # (B, K) the auxiliary's classes
            count = one_hot.sum(0)  # (K,)
            mu_k = (one_hot.T @ qa.mu_c.detach()) / count.clamp_min(1)[:, None]  # (K, d_c)
            var_k = (one_hot.T @ qa.logvar_c.detach().exp()) / count.clamp_min(1)[:, None]
            lv_k = var_k.clamp_min(1e-12).log()
            kl = kl_normal(q.mu_c, q.logvar_c, mu_k[pseudo], lv_k[pseudo])  # (U,)
            present = (count[pseudo] > 0).float()
            terms["kl_match_unlabeled"] = (kl * sure * present).sum() / n
    if "consistency" in wanted:
        ce = F.cross_entropy(logits[u:], pseudo, reduction="none")  # (U,)
        terms["consistency"] = (ce * sure).sum() / n
    if CONFIDENT in wanted:
        terms[CONFIDENT] = sure.sum() / n
    return terms


def elbo_terms(out: TestOutput, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per image (B,), the test ELBO's terms in nats (one z ~ q(z | x); the content prior is
    N(0, I) for both datasets): reconstruction, style KL, content KL."""
    assert out.q is not None and out.recon is not None
    q = out.q
    return {
        "recon": reconstruction_bce(out.recon.float(), x),
        "kl_style": kl_standard_normal(q.mu_s, q.logvar_s),
        "kl_content": kl_standard_normal(q.mu_c, q.logvar_c),
    }
