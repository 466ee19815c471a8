"""What the models hand to the objective: plain containers of tensors, one per kind of pass.

They live here, apart from both `jadecli.model` (which fills them) and `jadecli.objective`
(which reads them), so neither of those two modules imports the other.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class Posterior:
    """A diagonal Gaussian q(z | x) split into style and content parts."""

    mu_s: torch.Tensor  # (B, style_dim)
    logvar_s: torch.Tensor
    mu_c: torch.Tensor  # (B, content_dim)
    logvar_c: torch.Tensor

    def rows(self, lo: int, hi: int | None = None) -> Posterior:
        """Rows lo..hi of every part (a batch's share of a joint encoder pass)."""
        return Posterior(
            self.mu_s[lo:hi], self.logvar_s[lo:hi], self.mu_c[lo:hi], self.logvar_c[lo:hi]
        )

    def float(self) -> Posterior:
        """The same posterior in fp32 (a no-op for fp32 tensors; bf16 forward passes)."""
        return Posterior(
            self.mu_s.float(), self.logvar_s.float(), self.mu_c.float(), self.logvar_c.float()
        )


@dataclass(frozen=True)
class StepRequest:
    """What a training forward computes beyond the logits: decided once per run, from the
    objective's weights and the config (`Trainer.request`), and handed to every step."""

    mean_logits: bool = False  # JADE: also classify the content means (--ce-on-mean)
    swaps: bool = False  # JADE: draw and judge swaps (--swap-weight)
    content_grad: bool = True  # JADE: False stops the reconstruction's gradient at content
    # codes (--no-decoder-content-grad)
    unlabeled_elbo: bool = False  # JADE, --unlabeled: reconstruct the unlabeled images too


PLAIN_STEP = StepRequest()  # the logits and what the paper's objective needs, nothing more


@dataclass
class StepOutput:
    """One training forward pass over a batch of pairs: the shared classifier's logits."""

    logits_primary: torch.Tensor  # (B, K)
    logits_aux: torch.Tensor | None  # (B, K); None for a single classifier
    # --unlabeled: logits (2U, K) of the unlabeled images' weak then strong views
    logits_unlabeled: torch.Tensor | None = field(default=None, kw_only=True)


@dataclass
class JADEOutput(StepOutput):
    """Everything the JADE objective needs from one batch of pairs (logits from sampled z_c)."""

    q_aux: Posterior
    q_primary: Posterior
    recon_aux: torch.Tensor  # (B, C_a, H_a, W_a) logits
    recon_primary: torch.Tensor  # (B, C_p, H_p, W_p) logits
    mean_logits_aux: torch.Tensor | None = None  # (B, K) from mu_c, when the objective asks
    mean_logits_primary: torch.Tensor | None = None
    # the style critic's logits of [z_s^A; z_s^P] (2B, K): its own (from detached codes), and
    # those of a frozen copy of it (through which the encoders learn to hide the class)
    critic_logits: torch.Tensor | None = None
    judged_logits: torch.Tensor | None = None
    # the swap term: the frozen model's logits (2B, K) of each decoder's drawings of its own
    # batch's styles with contents `swap_index` (2B,) of the pool [auxiliary; primary] batch
    swap_logits: torch.Tensor | None = None
    swap_index: torch.Tensor | None = None
    # ... and the classifier's class (2B,) of each content of that pool (eval mode, no gradient)
    swap_content_class: torch.Tensor | None = None
    # --unlabeled: the posterior of the weak views (U rows) and, with the unlabeled ELBO, their
    # reconstruction logits (U, C_p, H_p, W_p)
    q_unlabeled: Posterior | None = None
    recon_unlabeled: torch.Tensor | None = None


@dataclass
class TestOutput:
    """One evaluation pass over images of one dataset: logits from the posterior mean and, for
    JADE, the posterior and the reconstruction of one z ~ q(z | x)."""

    logits: torch.Tensor  # (B, K)
    q: Posterior | None = None
    recon: torch.Tensor | None = None  # (B, C, H, W) logits
