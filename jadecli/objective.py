"""The loss terms of the three models; JADE's is equation 2 of the paper.

For a same-class pair (x_A auxiliary, x_P primary, label y), with every term averaged over the
batch and each reconstruction summed over pixels (`--loss-scale per-pixel`, the default, then
divides each dataset's ELBO terms, the first four lines, by its number of pixel values, so that
the classification weights mean the same whatever the image size):

    L = w_rec   * [BCE(x_A, dec_A(z_A)) + BCE(x_P, dec_P(z_P))]
      + w_kl    * [KL(q(z_s^A|x_A) || N(0,I)) + KL(q(z_c^A|x_A) || N(0,I))
                   + KL(q(z_s^P|x_P) || N(0,I))]
      + w_match *  KL(q(z_c^P|x_P) || q(z_c^A|x_A))
      + w_A * CE(y, f(z_c^A)) + w_P * CE(y, f(z_c^P))

The primary's content prior is replaced by the paired auxiliary content posterior: this is what
ties ("entangles") the two disentanglements together. The KL of two diagonal Gaussians uses the
correct closed form (the authors' code had `(logvar_A - mu_P)^2` in place of `(mu_A - mu_P)^2`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from jadecli.model import JADEOutput


@dataclass(frozen=True, kw_only=True)
class LossWeights:
    """The weight of each term of the objective (`--recon-weight`, ...), and the per-dataset
    scale of the ELBO terms (`--loss-scale`)."""

    recon: float = 1.0
    kl: float = 1.0
    match: float = 1.0
    aux_ce: float = 1.0
    primary_ce: float = 1.0
    # --loss-scale per-pixel: each dataset's ELBO terms are divided by its number of pixel
    # values (1/784 for MNIST, 1/3072 for 32x32 RGB); sum (the paper): 1
    aux_scale: float = 1.0
    primary_scale: float = 1.0


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


def jade_terms(
    out: JADEOutput, x_aux: torch.Tensor, x_primary: torch.Tensor, y: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Unweighted batch means of every JADE loss term (keys as in TERMS["jade"]), in fp32
    whatever precision the forward pass ran in."""
    qa, qp = out.q_aux.float(), out.q_primary.float()
    return {
        "recon_aux": reconstruction_bce(out.recon_aux.float(), x_aux).mean(),
        "recon_primary": reconstruction_bce(out.recon_primary.float(), x_primary).mean(),
        "kl_style_aux": kl_standard_normal(qa.mu_s, qa.logvar_s).mean(),
        "kl_content_aux": kl_standard_normal(qa.mu_c, qa.logvar_c).mean(),
        "kl_style_primary": kl_standard_normal(qp.mu_s, qp.logvar_s).mean(),
        "kl_match": kl_normal(qp.mu_c, qp.logvar_c, qa.mu_c, qa.logvar_c).mean(),
        "ce_aux": F.cross_entropy(out.logits_aux.float(), y),
        "ce_primary": F.cross_entropy(out.logits_primary.float(), y),
    }


def weighted_total(terms: dict[str, torch.Tensor], w: LossWeights) -> torch.Tensor:
    """Equation 2 with the configured weights; works for all three models' term sets."""
    a, p = w.aux_scale, w.primary_scale
    weight = {
        "recon_aux": w.recon * a,
        "recon_primary": w.recon * p,
        "kl_style_aux": w.kl * a,
        "kl_content_aux": w.kl * a,
        "kl_style_primary": w.kl * p,
        "kl_match": w.match * p,
        "ce_aux": w.aux_ce,
        "ce_primary": w.primary_ce,
    }
    total = sum(weight[name] * value for name, value in terms.items())
    assert isinstance(total, torch.Tensor)
    return total
