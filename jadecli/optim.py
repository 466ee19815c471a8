"""The optimiser side of a run: Adam, the learning-rate schedule and the weights' moving average.

    python -c "from jadecli.optim import lr_at; print([lr_at('cosine', 1e-3, s, 100) for s in \
(0, 50, 100)])"
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn


def make_optimizer(
    params: list[nn.Parameter], device: torch.device, lr: float, beta1: float
) -> torch.optim.Adam:
    """Adam; on CUDA the fused kernel (one launch per step instead of one per tensor)."""
    fused = device.type == "cuda"
    return torch.optim.Adam(params, lr=lr, betas=(beta1, 0.999), fused=fused or None)


def lr_at(schedule: str, lr: float, step: int, schedule_steps: int) -> float:
    """`--lr-schedule` at a global step (0-based): a pure function, so resume needs no state.

    The schedule is planned over `schedule_steps` (the epochs a run started with); steps beyond
    it, added by resuming with a larger --epochs, keep the rate the schedule ended at."""
    frac = min(step / max(schedule_steps, 1), 1.0)
    if schedule == "constant":
        return lr
    if schedule == "step":  # the paper: 1e-3 / 3e-4 / 1e-4 over thirds of training
        return lr * (1.0 if frac < 1 / 3 else 0.3 if frac < 2 / 3 else 0.1)
    lo = lr / 100  # cosine, down to 1/100 of the peak
    return lo + 0.5 * (lr - lo) * (1 + math.cos(math.pi * frac))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> float:
    for group in optimizer.param_groups:
        group["lr"] = lr
    return lr


class EMA:
    """`--ema`: a moving average of the weights, what is evaluated and saved as the run's model.

    ema <- d * ema + (1 - d) * weights with d = min(--ema, (1 + t) / (10 + t)) at step t;
    buffers (BatchNorm statistics) are copied."""

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.model = copy.deepcopy(model).requires_grad_(False)

    def update(self, model: nn.Module, step: int) -> None:
        decay = min(self.decay, (1 + step) / (10 + step))
        with torch.no_grad():
            ema_p = list(self.model.parameters())
            torch._foreach_lerp_(ema_p, list(model.parameters()), 1.0 - decay)
            for e, b in zip(self.model.buffers(), model.buffers(), strict=True):
                e.copy_(b)
