"""What an epoch measures while it trains: loss sums, accuracy counts, speed, and the check that
every loss term stays finite.

`EpochMeter` keeps its sums on the training device (no host sync per step) and turns them into
the epoch's metrics.csv row; `FiniteCheck` collects each step's terms and gradient norm and
raises `Diverged`, naming the step and the term, before a non-finite step updates the weights.
Under torchrun both sum over the ranks.
"""

from __future__ import annotations

import math
import time
from typing import Any

import torch

from jadecli.distributed import Dist, all_sum

# JADE's decoders, scored on a fixed sample of test images (jadecli.generative.decoder_metrics)
DECODER_COLUMNS = (
    "class_kept_primary",
    "class_kept_aux",
    "swap_kept_aux_to_primary",
    "swap_kept_primary_to_aux",
)


def metric_columns(terms: tuple[str, ...], generative: bool = False) -> list[str]:
    """metrics.csv's columns for an objective with these loss terms (`generative`: JADE's)."""
    return [
        "epoch",
        "lr",
        "loss",
        *terms,
        "train_acc_primary",
        "train_acc_aux",
        "val_acc_primary",
        "test_acc_primary",
        "test_acc_aux",
        *(DECODER_COLUMNS if generative else ()),
        "seconds",
        "examples_per_s",
    ]


class EpochMeter:
    """Per-epoch sums of the loss terms (weighted by batch size) and of correct predictions."""

    def __init__(self, terms: tuple[str, ...], device: torch.device, paired: bool):
        self.terms, self.paired = terms, paired
        self.sums = torch.zeros(len(terms) + 1, dtype=torch.float64, device=device)
        self.correct_p = torch.zeros((), dtype=torch.long, device=device)
        self.correct_a = torch.zeros((), dtype=torch.long, device=device)
        self.seen = 0
        self.t0 = time.perf_counter()

    def add(self, record: torch.Tensor, n: int, ok_p: torch.Tensor, ok_a: torch.Tensor | None):
        """One step: `record` holds [terms..., total, ...] of a batch of `n` examples."""
        self.seen += n
        self.sums += record[: len(self.terms) + 1].double() * n
        self.correct_p += ok_p
        if ok_a is not None:
            self.correct_a += ok_a

    @property
    def loss(self) -> float:
        """The epoch's mean loss so far (a host sync: for progress reports only)."""
        return float(self.sums[len(self.terms)]) / max(self.seen, 1)

    @property
    def rate(self) -> float:
        return self.seen / max(time.perf_counter() - self.t0, 1e-9)

    def all_sum(self, dist: Dist) -> None:
        """Under torchrun: the sums and counts over all ranks."""
        if not dist.enabled:
            return
        device = self.sums.device
        counts = torch.tensor([self.seen, int(self.correct_p), int(self.correct_a)], device=device)
        all_sum(self.sums, dist)
        self.seen, n_p, n_a = (int(v) for v in all_sum(counts, dist).tolist())
        self.correct_p.fill_(n_p)
        self.correct_a.fill_(n_a)

    def row(self, epoch: int, lr: float) -> dict[str, Any]:
        """The epoch's metrics.csv row, without validation and test accuracy."""
        seconds = time.perf_counter() - self.t0
        n = max(self.seen, 1)
        means = (self.sums / n).tolist()
        row: dict[str, Any] = {"epoch": epoch + 1, "lr": lr, "loss": means[len(self.terms)]}
        row.update({t: means[i] for i, t in enumerate(self.terms)})
        row["train_acc_primary"] = int(self.correct_p) / n
        row["train_acc_aux"] = int(self.correct_a) / n if self.paired else None
        row["seconds"] = seconds
        row["examples_per_s"] = self.seen / max(seconds, 1e-9)
        return row


class Diverged(Exception):
    """A non-finite loss term or gradient at global step `step` (0-based)."""

    def __init__(self, step: int, terms: dict[str, float], what: str):
        self.step, self.terms, self.what = step, terms, what
        super().__init__(what)


class FiniteCheck:
    """Raises `Diverged` at the first step whose loss terms or gradient norm are not finite.

    On the CPU every step is checked (free); on a GPU the checks are batched every `every` steps
    to avoid a host sync per step, and a divergence is still pinned to its exact step. Call
    `add` after the backward pass and before the optimiser step, and `flush` at the epoch's end.
    """

    def __init__(self, terms: tuple[str, ...], every: int, dist: Dist):
        self.names = [*terms, "loss", "grad_norm"]
        self.terms, self.every, self.dist = terms, every, dist
        self.pending: list[torch.Tensor] = []  # per step [terms..., total, grad norm]
        self.first = 0  # the global step of pending[0]

    def record(
        self, terms: dict[str, torch.Tensor], total: torch.Tensor, grad_norm: torch.Tensor
    ) -> torch.Tensor:
        """A step's values as one tensor: [terms..., total, grad norm]."""
        values = [*(terms[t].detach() for t in self.terms), total.detach()]
        return torch.stack([*values, grad_norm.detach().to(total.dtype)])

    def add(self, step: int, record: torch.Tensor, last: bool) -> None:
        """Global step `step`'s record; checks what is pending every `every` steps and at the
        epoch's `last` step."""
        if not self.pending:
            self.first = step
        self.pending.append(record)
        if len(self.pending) >= self.every or last:
            self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        # under torchrun summed over the ranks: a non-finite term on any rank stops every rank
        # at the same step, before its update, and each names the same term
        block = all_sum(torch.stack(self.pending), self.dist)  # (steps, n_terms + 2)
        first, self.pending = self.first, []
        finite = torch.isfinite(block)
        if bool(finite.all()):
            return
        bad_row = int(torch.nonzero(~finite.all(1)).flatten()[0])
        named = dict(zip(self.names, block[bad_row].tolist(), strict=True))
        bad = [k for k in (*self.terms, "loss") if not math.isfinite(named[k])]
        if bad:
            what = ", ".join(f"{k} = {named[k]}" for k in bad if k != "loss") or "loss"
            what = f"non-finite loss term ({what})"
        else:
            what = f"non-finite gradient (norm {named['grad_norm']})"
        raise Diverged(first + bad_row, named, what)
