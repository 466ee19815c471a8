"""Several processes, one run: `jade train` under `torchrun` (torch.distributed).

torchrun starts one process per device and tells each its place through the environment
(RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT). When WORLD_SIZE > 1, `jade train`
joins that group (NCCL between GPUs, gloo on CPUs) and trains one model with
DistributedDataParallel:

- every step's global batch (`--batch-size`) is the one a single process would train on, cut
  into one contiguous share per rank; gradients are averaged so that the update is that of the
  whole batch (each rank's loss is weighted by its share), so the schedule, the number of steps
  and the learning rate stay those of one process;
- BatchNorm normalises each rank's share with that share's own statistics (per dataset with
  `--batch-norm per-dataset`); the running statistics are averaged over the ranks after every
  epoch, before the model is evaluated or saved;
- rank 0 alone writes the run folder; evaluation is split over the ranks batch by batch and the
  counts are summed, so it gives the accuracy one process would.

    torchrun --standalone --nproc-per-node 2 -m jadecli train --primary synth-street \
        --auxiliary synth-hand --n-labeled 100 --epochs 2 --out runs/ddp-demo
"""

from __future__ import annotations

import contextlib
import datetime
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as torch_dist
from torch import nn

from jadecli.errors import JadeError, UsageError

T = TypeVar("T")

# How long a rank waits for the others in one collective before giving up. Evaluation and
# checkpoint writes happen between collectives, so this bounds a hung peer, not a slow epoch.
TIMEOUT = datetime.timedelta(minutes=30)


@dataclass(frozen=True)
class Dist:
    """This process's place in the group (one process: rank 0 of 1)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str = ""  # e.g. "gloo" once the group is joined; "" for one process

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def main(self) -> bool:
        """Rank 0: the process that writes the run folder and speaks to the user."""
        return self.rank == 0

    def describe(self, devices: list[str]) -> dict[str, Any]:
        """The manifest's `distributed:` entry."""
        return {
            "world_size": self.world_size,
            "backend": self.backend or None,
            "devices": devices,  # rank i trained on devices[i]
        }


class PeerFailed(JadeError):
    """Another rank stopped (an error, a kill, a lost machine): this rank stops too."""


def from_env(environ: dict[str, str] | None = None) -> Dist:
    """The group torchrun (or any launcher that sets RANK, WORLD_SIZE and LOCAL_RANK) placed this
    process in; one process when WORLD_SIZE is unset or 1."""
    env = os.environ if environ is None else environ

    def number(name: str, default: int) -> int:
        raw = env.get(name)
        if raw is None or raw == "":
            return default
        try:
            value = int(raw)
        except ValueError:
            raise UsageError(f"environment variable {name}={raw!r} is not a number") from None
        if value < 0:
            raise UsageError(f"environment variable {name}={raw!r} must not be negative")
        return value

    world = number("WORLD_SIZE", 1)
    if world <= 1:
        return Dist()
    rank, local = number("RANK", -1), number("LOCAL_RANK", 0)
    if not 0 <= rank < world:
        raise UsageError(
            f"WORLD_SIZE={world} but RANK is {env.get('RANK')!r}; start several processes with "
            "torchrun, which sets both"
        )
    if not env.get("MASTER_ADDR") or not env.get("MASTER_PORT"):
        raise UsageError(
            "WORLD_SIZE > 1 but MASTER_ADDR/MASTER_PORT are not set; start several processes "
            "with torchrun, which sets them"
        )
    return Dist(rank=rank, world_size=world, local_rank=local)


def rank_device(name: str, d: Dist) -> str:
    """The `--device` a rank trains on: under torchrun, `auto` and `cuda` mean this rank's GPU
    (`cuda:LOCAL_RANK`), or the CPU on a machine without CUDA."""
    if not d.enabled:
        return name
    if name.startswith("cuda:"):
        raise UsageError(
            f"--device {name}: under torchrun each rank trains on cuda:LOCAL_RANK; pass "
            "--device cuda or --device auto (choose GPUs with CUDA_VISIBLE_DEVICES)"
        )
    if name == "mps":
        raise UsageError("--device mps cannot be used by several processes; use --device cpu")
    if name in ("auto", "cuda") and torch.cuda.is_available():
        if d.local_rank >= torch.cuda.device_count():
            raise UsageError(
                f"LOCAL_RANK {d.local_rank} has no GPU: this machine has "
                f"{torch.cuda.device_count()}; pass at most --nproc-per-node "
                f"{torch.cuda.device_count()} to torchrun"
            )
        return f"cuda:{d.local_rank}"
    return "cpu" if name == "auto" else name


def join(d: Dist, device: torch.device) -> Dist:
    """Join the process group; returns `d` with its backend. A no-op for one process. CPU
    tensors go through gloo; on a GPU rank, CUDA tensors through NCCL (one group serves both:
    a resumed run may train on the CPU although the group was joined for a GPU)."""
    if not d.enabled:
        return d
    backend = "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
        backend = "cpu:gloo,cuda:nccl"
    try:
        torch_dist.init_process_group(
            backend=backend, rank=d.rank, world_size=d.world_size, timeout=TIMEOUT
        )
    except (RuntimeError, ValueError) as err:
        raise PeerFailed(f"could not join the torchrun group ({_first_line(err)})") from None
    return Dist(d.rank, d.world_size, d.local_rank, backend)


def leave(d: Dist) -> None:
    """Leave the process group (after the run, whatever its outcome)."""
    if d.enabled and torch_dist.is_available() and torch_dist.is_initialized():
        # a broken group cannot always be torn down cleanly; the process ends anyway
        with contextlib.suppress(Exception):
            torch_dist.destroy_process_group()


def scaled(loss: torch.Tensor, weight: float, d: Dist) -> torch.Tensor:
    """A rank's loss weighted by its share of the global batch (`weight`: share x world / batch),
    so that DistributedDataParallel's mean of the ranks' gradients is the gradient of the whole
    batch's mean loss, uneven shares included; the loss itself for one process."""
    return loss * weight if d.enabled else loss


def share(n: int, d: Dist) -> tuple[int, int]:
    """[lo, hi) of this rank's contiguous share of `n` items: the first n % world ranks get one
    more."""
    base, extra = divmod(n, d.world_size)
    lo = d.rank * base + min(d.rank, extra)
    return lo, lo + base + (1 if d.rank < extra else 0)


def all_sum(t: torch.Tensor, d: Dist) -> torch.Tensor:
    """`t` summed over the ranks, in place (unchanged for one process)."""
    if d.enabled:
        torch_dist.all_reduce(t, op=torch_dist.ReduceOp.SUM)
    return t


def average_buffers(model: nn.Module, d: Dist) -> None:
    """Average the floating-point buffers (BatchNorm running statistics) over the ranks, so
    every rank evaluates and saves the same model."""
    if not d.enabled:
        return
    for buf in model.buffers():
        if buf.is_floating_point():
            torch_dist.all_reduce(buf, op=torch_dist.ReduceOp.SUM)
            buf.div_(d.world_size)


def broadcast(value: T, d: Dist) -> T:
    """Rank 0's `value`, on every rank (pickled in memory: never read from a file)."""
    if not d.enabled:
        return value
    box: list[Any] = [value if d.main else None]
    torch_dist.broadcast_object_list(box, src=0)
    return box[0]


def gather(value: T, d: Dist) -> list[T]:
    """Every rank's `value`, in rank order, on every rank."""
    if not d.enabled:
        return [value]
    out: list[Any] = [None] * d.world_size
    torch_dist.all_gather_object(out, value)
    return out


def agree(step: Callable[[], T], d: Dist) -> T:
    """Run `step` on rank 0 only and give its result (or its JadeError) to every rank; the other
    ranks raise the same error quietly (rank 0 says it)."""
    outcome: tuple[str, Any]
    if d.main:
        try:
            outcome = ("ok", step())
        except JadeError as err:
            outcome = ("error", err)
            broadcast(("error", (str(err), err.exit_code)), d)
            raise
    else:
        outcome = ("ok", None)
    outcome = broadcast(outcome, d)
    if outcome[0] == "error":
        message, code = outcome[1]
        raise quiet(JadeError(message), code)
    return outcome[1]


def check_all(error: JadeError | None, d: Dist) -> None:
    """After a step every rank did on its own (loading data, building the model): if any rank
    failed, every rank stops; rank 0 says why (naming the rank when it was another one)."""
    if not d.enabled:
        if error is not None:
            raise error
        return
    reports = gather(None if error is None else (str(error), error.exit_code), d)
    failed = [(r, rep) for r, rep in enumerate(reports) if rep is not None]
    if not failed:
        return
    rank, (message, code) = failed[0]
    if d.main:
        if error is not None and rank == 0:
            raise error
        raise quiet(PeerFailed(f"rank {rank} of {d.world_size}: {message}"), code, loud=True)
    raise quiet(PeerFailed(message), code)


def quiet(err: JadeError, exit_code: int, loud: bool = False) -> JadeError:
    """`err` with this exit code, marked to be printed (`loud`) or not: under torchrun only one
    rank reports each failure."""
    err.exit_code = exit_code
    err.quiet = not loud
    return err


def is_comm_error(err: BaseException) -> bool:
    """An error from a collective: a peer died, hung past the timeout or was stopped."""
    dist_error = getattr(torch_dist, "DistError", None)
    if dist_error is not None and isinstance(err, dist_error):
        return True
    if not isinstance(err, RuntimeError):
        return False
    text = str(err)
    return any(k in text for k in ("Gloo", "gloo", "NCCL", "Connection closed", "Broken pipe"))


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0]}" if text else type(err).__name__
