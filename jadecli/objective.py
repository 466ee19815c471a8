"""The loss terms of the three models; JADE's is equation 2 of the paper.

For a same-class pair (x_A auxiliary, x_P primary, label y), with every term averaged over the
batch, each reconstruction summed over pixel values and each KL summed over latent dimensions:

    L = w_rec   * [BCE(x_A, dec_A(z_A)) / D_A + BCE(x_P, dec_P(z_P)) / D_P]
      + w_kl    * [KL(q(z_s^A|x_A) || N(0,I)) / d_s + KL(q(z_c^A|x_A) || N(0,I)) / d_c
                   + KL(q(z_s^P|x_P) || N(0,I)) / d_s]
      + w_match *  KL(q(z_c^P|x_P) || q(z_c^A|x_A)) / d_c
      + w_sep   *  SEP(z_c^A, z_c^P, y)                     (0 unless --separation-weight)
      + w_A * CE(y, f(z_c^A)) + w_P * CE(y, f(z_c^P))

with D the number of pixel values of each dataset's images (784 for 28x28 grey, 3072 for 32x32
colour) and d_s, d_c the style and content latent sizes: under `--loss-scale mean` (the default)
every term is a mean over its own elements, so a weight means the same whatever the image and
latent sizes. `--loss-scale sum` (the paper's) sets D = d_s = d_c = 1: nats summed over pixels
and latent dimensions.

The primary's content prior is replaced by the paired auxiliary content posterior: this is what
ties ("entangles") the two disentanglements together. Its gradient reaches both posteriors, and
must: with the auxiliary side detached (tried), nothing but the weak prior KL keeps the
auxiliary posterior wide, it narrows, the 1/variance in this KL explodes (42,000 nats on
MNIST-M) and nothing is learned. `--ce-on-mean` adds the
classifier's cross-entropy on the posterior means to that on the samples (each term is then the
average of the two). SEP is the class-separation term of CCSA/d-SNE-style methods: over every
different-class (auxiliary i, primary j) pair of the batch, relu(m - |mu^A_i - mu^P_j|)^2 / d_c
with margin m = sqrt(2 d_c), the typical distance of two draws of the N(0, I) prior.

The KL of two diagonal Gaussians uses the correct closed form (the authors' code had
`(logvar_A - mu_P)^2` in place of `(mu_A - mu_P)^2`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from jadecli.model import JADEOutput


@dataclass(frozen=True, kw_only=True)
class LossWeights:
    """The weight of each term of the objective (`--recon-weight`, ...), and the scale that makes
    each term a mean over its elements (`--loss-scale mean`; all 1 for `sum`)."""

    recon: float = 1.0
    kl: float = 1.0
    match: float = 1.0
    separation: float = 0.0
    aux_ce: float = 1.0
    primary_ce: float = 1.0
    # --loss-scale mean: 1 / pixel values of each dataset's images (1/784 for MNIST, 1/3072 for
    # 32x32 RGB) for the reconstructions, 1 / latent size for the KLs; sum (the paper): 1
    aux_scale: float = 1.0
    primary_scale: float = 1.0
    style_scale: float = 1.0
    content_scale: float = 1.0


# The order of the terms in metrics.csv and in divergence messages.
TERMS = {
    "single": ("ce_primary",),
    "paired": ("ce_aux", "ce_primary"),
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
    ),
}


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


def classifier_terms(
    logits_aux: torch.Tensor | None, logits_primary: torch.Tensor, y: torch.Tensor
) -> dict[str, torch.Tensor]:
    """The classification terms (single: the primary's only; paired: both), in fp32."""
    terms = {} if logits_aux is None else {"ce_aux": F.cross_entropy(logits_aux.float(), y)}
    terms["ce_primary"] = F.cross_entropy(logits_primary.float(), y)
    return terms


def separation(mu_aux: torch.Tensor, mu_primary: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean over different-class (auxiliary i, primary j) pairs of relu(m - |mu_a_i - mu_p_j|)^2
    / d, with m = sqrt(2 d) (d: the content size): pushes content codes of different classes at
    least as far apart as two draws of the prior. 0 when the batch has one class only."""
    d = mu_aux.shape[1]
    dist = torch.cdist(mu_aux, mu_primary)  # (B, B) euclidean
    differ = (y[:, None] != y[None, :]).to(dist.dtype)  # (B, B)
    hinge = torch.relu(math.sqrt(2 * d) - dist).pow(2) / d
    return (hinge * differ).sum() / differ.sum().clamp_min(1.0)


def jade_terms(
    out: JADEOutput,
    x_aux: torch.Tensor,
    x_primary: torch.Tensor,
    y: torch.Tensor,
) -> dict[str, torch.Tensor]:
    """Unweighted batch means of every JADE loss term (keys as in TERMS["jade"]), in fp32
    whatever precision the forward pass ran in."""
    qa, qp = out.q_aux.float(), out.q_primary.float()
    terms = {
        "recon_aux": reconstruction_bce(out.recon_aux.float(), x_aux).mean(),
        "recon_primary": reconstruction_bce(out.recon_primary.float(), x_primary).mean(),
        "kl_style_aux": kl_standard_normal(qa.mu_s, qa.logvar_s).mean(),
        "kl_content_aux": kl_standard_normal(qa.mu_c, qa.logvar_c).mean(),
        "kl_style_primary": kl_standard_normal(qp.mu_s, qp.logvar_s).mean(),
        "kl_match": kl_normal(qp.mu_c, qp.logvar_c, qa.mu_c, qa.logvar_c).mean(),
        "separation": separation(qa.mu_c, qp.mu_c, y),
        "ce_aux": F.cross_entropy(out.logits_aux.float(), y),
        "ce_primary": F.cross_entropy(out.logits_primary.float(), y),
    }
    if out.mean_logits_aux is not None and out.mean_logits_primary is not None:  # --ce-on-mean
        terms["ce_aux"] = 0.5 * (terms["ce_aux"] + F.cross_entropy(out.mean_logits_aux.float(), y))
        ce_mean_p = F.cross_entropy(out.mean_logits_primary.float(), y)
        terms["ce_primary"] = 0.5 * (terms["ce_primary"] + ce_mean_p)
    return terms


def weighted_total(terms: dict[str, torch.Tensor], w: LossWeights) -> torch.Tensor:
    """Equation 2 with the configured weights; works for all three models' term sets."""
    weight = {
        "recon_aux": w.recon * w.aux_scale,
        "recon_primary": w.recon * w.primary_scale,
        "kl_style_aux": w.kl * w.style_scale,
        "kl_content_aux": w.kl * w.content_scale,
        "kl_style_primary": w.kl * w.style_scale,
        "kl_match": w.match * w.content_scale,
        "separation": w.separation,
        "ce_aux": w.aux_ce,
        "ce_primary": w.primary_ce,
    }
    total = sum(weight[name] * value for name, value in terms.items())
    assert isinstance(total, torch.Tensor)
    return total
