"""The training loop of one run: model, optimiser, schedule, batches and epochs.

A `Trainer` owns the model and optimiser of a run and trains it one epoch at a time
(`run_epoch`); `state()`/`load_state()` are its checkpoint. It knows nothing about run folders:
`jadecli.engine` opens the run, drives the epochs and records them.

Every step: gather a batch of same-class pairs by index from the resident training images,
augment it, run the model's forward pass in the run's precision, weight its loss terms, clip and
step. A non-finite loss or gradient raises `Diverged` naming the step and the term.

    python -c "from jadecli.config import TrainConfig; from jadecli.data.pair import \
training_data; from jadecli.trainer import Trainer; from jadecli.progress import PlainReporter; \
import torch; c = TrainConfig(primary='synth-street', auxiliary='synth-hand', n_labeled=100, \
data_dir='runs/data', epoch_size=500); t = Trainer(c, training_data(c, PlainReporter()), \
torch.device('cpu')); print(t.run_epoch(0, PlainReporter()))"
"""

from __future__ import annotations

import copy
import inspect
import math
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from jadecli.augment import Augment, augment, style_mix
from jadecli.compute import (
    EVAL_BATCH,
    autocast,
    make_optimizer,
    place_model,
    to_input,
)
from jadecli.config import TrainConfig
from jadecli.data.pair import TrainData
from jadecli.data.sampling import IndexStream, PairSampler, derive_seed
from jadecli.distributed import Dist, all_sum, average_buffers, share
from jadecli.errors import UsageError
from jadecli.model import (
    AUXILIARY,
    JADE,
    PRIMARY,
    ModelSpec,
    ResNetTrunk,
    RoleModel,
    build_model,
)
from jadecli.objective import LossWeights, weighted_total
from jadecli.progress import Reporter


def lr_at(cfg: TrainConfig, step: int, schedule_steps: int) -> float:
    """Learning rate at a global step (0-based): a pure function, so resume needs no state.

    The schedule is planned over `schedule_steps` (the epochs a run started with); steps beyond
    it, added by resuming with a larger --epochs, keep the rate the schedule ended at."""
    frac = min(step / max(schedule_steps, 1), 1.0)
    if cfg.lr_schedule == "constant":
        return cfg.lr
    if cfg.lr_schedule == "step":  # the paper: 1e-3 / 3e-4 / 1e-4 over thirds of training
        return cfg.lr * (1.0 if frac < 1 / 3 else 0.3 if frac < 2 / 3 else 0.1)
    lo = cfg.lr / 100
    return lo + 0.5 * (cfg.lr - lo) * (1 + math.cos(math.pi * frac))


def model_spec(cfg: TrainConfig, data: TrainData) -> ModelSpec:
    """The model a run trains, from its config and its data's shapes."""
    return ModelSpec(
        kind=cfg.model,
        arch=cfg.arch,
        primary_shape=data.primary.image_shape,
        auxiliary_shape=data.auxiliary.image_shape if data.auxiliary else None,
        num_classes=data.primary.num_classes,
        content_dim=cfg.content_dim,
        style_dim=cfg.style_dim,
        hidden_dim=cfg.hidden_dim,
        dropout=cfg.dropout,
        batch_norm=cfg.batch_norm,
    )


def loss_weights(cfg: TrainConfig, spec: ModelSpec) -> LossWeights:
    """The configured weights; `--loss-scale mean` makes each term a mean over its elements:
    reconstructions per pixel value, KLs per latent dimension."""
    scales = {}
    if cfg.loss_scale == "mean" and spec.auxiliary_shape is not None:
        scales = {
            "aux_scale": 1.0 / math.prod(spec.auxiliary_shape),
            "primary_scale": 1.0 / math.prod(spec.primary_shape),
            "style_scale": 1.0 / spec.style_dim,
            "content_scale": 1.0 / spec.content_dim,
        }
    return LossWeights(
        recon=cfg.recon_weight,
        kl=cfg.kl_weight,
        match=cfg.match_weight,
        separation=cfg.separation_weight,
        aux_ce=cfg.aux_ce_weight,
        primary_ce=cfg.primary_ce_weight,
        **scales,
    )


# --------------------------------------------------------------------------- evaluation


@torch.inference_mode()
def accuracy(
    model: RoleModel,
    role: str,
    images: torch.Tensor,
    labels: torch.Tensor,
    device: torch.device,
    precision: str = "fp32",
    dist: Dist | None = None,
) -> float:
    """Accuracy of `model.classify(role, .)` in eval mode, on the same input path, batch size
    and precision as `jade evaluate`. Under torchrun (`dist`) rank r scores batches r, r + W,
    ... and the counts are summed: the same batches, so the same accuracy, as one process."""
    d = dist or Dist()
    was_training = model.training
    model.eval()
    correct = torch.zeros((), dtype=torch.long, device=device)
    with autocast(device, precision):
        for start in range(d.rank * EVAL_BATCH, len(images), d.world_size * EVAL_BATCH):
            x = to_input(images[start : start + EVAL_BATCH], device)  # (B, C, H, W)
            y = labels[start : start + EVAL_BATCH].to(device, non_blocking=True)
            correct += (model.classify(role, x).argmax(1) == y).sum()
    model.train(was_training)
    return int(all_sum(correct, d)) / max(len(images), 1)


def evaluate_test(
    model: RoleModel,
    data: TrainData,
    device: torch.device,
    precision: str,
    dist: Dist | None = None,
) -> dict[str, float | None]:
    """Test accuracy of both datasets (the auxiliary's None without one)."""
    test = data.primary.test
    out: dict[str, float | None] = {
        "test_acc_primary": accuracy(
            model, PRIMARY, test.images, test.labels, device, precision, dist
        ),
        "test_acc_aux": None,
    }
    if data.auxiliary is not None:
        at = data.auxiliary.test
        out["test_acc_aux"] = accuracy(
            model, AUXILIARY, at.images, at.labels, device, precision, dist
        )
    return out


# --------------------------------------------------------------------------- training


def metric_columns(terms: tuple[str, ...]) -> list[str]:
    """metrics.csv's columns for a model with these loss terms."""
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
        "seconds",
        "examples_per_s",
    ]


class Diverged(Exception):
    """A non-finite loss term or gradient at global step `step` (0-based)."""

    def __init__(self, step: int, terms: dict[str, float], what: str):
        self.step, self.terms, self.what = step, terms, what
        super().__init__(what)


def _resident(images: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Where the training images live during training: as the 8-bit tensor they were loaded as
    (a quarter of float32), on the training device when they take at most half of its free
    memory, else in (pinned) host memory. Each step gathers its batch by index and converts only
    that to float on the device (`to_input`); on the CPU nothing is copied at all."""
    if device.type == "cpu":
        return images  # (N, C, H, W) uint8
    free = torch.cuda.mem_get_info(device)[0] if device.type == "cuda" else None
    if free is not None and images.numel() > free // 2:
        return images.pin_memory()
    return images.to(device)


def load_init_weights(model: RoleModel, path: str) -> None:
    """`--init-weights PATH`: a torchvision ResNet-18 state dict into the model's trunk (read
    with weights_only=True: tensors, never code)."""
    where = f"--init-weights {path}"
    if not Path(path).expanduser().is_file():
        raise UsageError(f"{where}: no such file")
    try:
        state = torch.load(Path(path).expanduser(), map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many kinds for a file that is not a checkpoint
        raise UsageError(
            f"{where}: not a readable PyTorch checkpoint of tensors ({type(err).__name__})"
        ) from None
    for key in ("state_dict", "model"):  # training scripts often wrap the weights
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UsageError(
            f"{where}: expected a state dict of tensors (torch.save(model.state_dict()))"
        )
    trunks = {id(m): m for m in model.modules() if isinstance(m, ResNetTrunk)}
    try:
        for trunk in trunks.values():
            trunk.load_torchvision(state, where)
    except ValueError as err:
        raise UsageError(str(err)) from None


class _TrainStep(nn.Module):
    """`forward_train` as a module's forward: DistributedDataParallel synchronises gradients
    only for what goes through the forward of the module it wraps."""

    def __init__(self, model: RoleModel):
        super().__init__()
        self.model = model

    def forward(self, x_aux: torch.Tensor | None, x_primary: torch.Tensor) -> Any:
        return self.model.forward_train(x_aux, x_primary)


class Trainer:
    """The model, optimiser and batches of one run; trains it an epoch at a time."""

    def __init__(
        self,
        cfg: TrainConfig,
        data: TrainData,
        device: torch.device,
        precision: str = "fp32",
        resumed: bool = False,
        dist: Dist | None = None,
    ):
        """`resumed`: the weights will come from the run's checkpoint, so `--init-weights` is
        not read (the file may be gone). `dist`: this process's place under torchrun; call
        `distribute()` once every rank has built its trainer."""
        self.cfg, self.data, self.device, self.precision = cfg, data, device, precision
        self.dist = dist or Dist()
        # the module a step runs: the model, or its DistributedDataParallel wrapper (distribute)
        self.spec = model_spec(cfg, data)
        torch.manual_seed(derive_seed(cfg.seed, "init"))
        self.model = build_model(self.spec)
        if isinstance(self.model, JADE):
            self.model.set_objective(cfg.ce_on_mean)
        if not resumed and cfg.init_weights is not None:
            load_init_weights(self.model, cfg.init_weights)
        place_model(self.model, device)
        self.step_module: nn.Module = _TrainStep(self.model)  # DDP-wrapped by distribute()
        # --ema: a moving average of the weights, what is evaluated and saved as "model"
        self.ema_model: RoleModel | None = None
        if cfg.ema > 0:
            self.ema_model = copy.deepcopy(self.model).requires_grad_(False)
        self.optimizer = make_optimizer(
            list(self.model.parameters()), device, cfg.lr, cfg.adam_beta1
        )
        self.weights = loss_weights(cfg, self.spec)
        self.aug = Augment(cfg.aug_shift, cfg.aug_rotate, cfg.aug_scale, cfg.aug_color)
        self.terms = self.model.terms
        # 8-bit images stay resident; each batch is an index lookup converted to float.
        self.lab_x = _resident(data.labeled.images, device)  # (N_p, C, H, W) uint8
        self.lab_y = data.labeled.labels.to(device)
        self.aux_x: torch.Tensor | None = None
        self.sampler: PairSampler | IndexStream
        if data.aux_train is not None:
            self.aux_x = _resident(data.aux_train.images, device)  # (N_a, C, H, W) uint8
            n = len(data.aux_train)
            self.epoch_size = n if cfg.epoch_size == "all" else int(cfg.epoch_size)
            self.sampler = PairSampler(
                data.aux_train.labels,
                data.labeled.labels,
                data.primary.num_classes,
                self.epoch_size,
                cfg.seed,
            )
        else:
            n = len(data.labeled)
            self.epoch_size = n if cfg.epoch_size == "all" else int(cfg.epoch_size)
            self.sampler = IndexStream(n, self.epoch_size, cfg.seed, "labeled")
        self.unit = "pairs" if self.aux_x is not None else "images"
        self.steps_per_epoch = math.ceil(self.epoch_size / cfg.batch_size)
        # The learning-rate schedule is planned over the epochs the run starts with; a resumed
        # run keeps its plan (load_state).
        self.schedule_steps = self.steps_per_epoch * cfg.epochs
        # CPU: check every step for a non-finite loss (free); GPU: batch the checks to avoid a
        # host sync per step; a divergence is still pinned to its exact step.
        self.check_every = 1 if device.type == "cpu" else 25

    def distribute(self) -> None:
        """Wrap the step in DistributedDataParallel (a collective: every rank calls it, after
        loading any checkpoint; rank 0's weights are broadcast to the others). Buffers are not
        broadcast each step: BatchNorm normalises each rank's share with its own statistics and
        `run_epoch` averages the running statistics at the end of the epoch."""
        if not self.dist.enabled:
            return
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.device.index] if self.device.type == "cuda" else None
        # buffers are not synchronised at each forward (the deprecated flag on older torch)
        params = inspect.signature(DistributedDataParallel.__init__).parameters
        sync = "forward_sync_buffers" if "forward_sync_buffers" in params else "broadcast_buffers"
        self.step_module = DistributedDataParallel(
            _TrainStep(self.model), device_ids=ids, **{sync: False}
        )

    @property
    def eval_model(self) -> RoleModel:
        """The weights that are evaluated and saved as the run's model: the --ema average, or
        the trained weights."""
        return self.ema_model if self.ema_model is not None else self.model

    def _update_ema(self, step: int) -> None:
        """ema <- d * ema + (1 - d) * weights, d = min(--ema, (1 + t) / (10 + t)); buffers
        (BatchNorm statistics) are copied."""
        if self.ema_model is None:
            return
        decay = min(self.cfg.ema, (1 + step) / (10 + step))
        with torch.no_grad():
            ema_p = list(self.ema_model.parameters())
            torch._foreach_lerp_(ema_p, list(self.model.parameters()), 1.0 - decay)
            for e, b in zip(self.ema_model.buffers(), self.model.buffers(), strict=True):
                e.copy_(b)

    # --- checkpoints -------------------------------------------------------------------
    def state(self, epoch: int) -> dict[str, Any]:
        """Everything a resumed run needs, as plain tensors and data (weights_only loadable).
        "model" is what is evaluated (the --ema average when on; "train_model" then holds the
        trained weights a resume continues from)."""
        rng: dict[str, Any] = {"torch": torch.get_rng_state()}
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.device)

        def weights(model: RoleModel) -> dict[str, torch.Tensor]:
            return {k: v.detach().cpu() for k, v in model.state_dict().items()}

        extra = {} if self.ema_model is None else {"train_model": weights(self.model)}
        return {
            "epoch": epoch,
            "global_step": epoch * self.steps_per_epoch,
            "schedule_steps": self.schedule_steps,
            "model": weights(self.eval_model),
            **extra,
            "optimizer": self.optimizer.state_dict(),
            "config": self.cfg.to_dict(),
            "model_spec": self.spec.to_dict(),
            "classes": list(self.data.primary.classes),
            "rng": rng,
        }

    def load_state(self, state: dict[str, Any]) -> int:
        """Restore a checkpoint's weights, optimiser, RNG and schedule; returns its epoch."""
        self.model.load_state_dict(state.get("train_model", state["model"]))
        if self.ema_model is not None:
            self.ema_model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["rng"]["torch"])
        self.schedule_steps = int(state["schedule_steps"])
        return int(state["epoch"])

    # --- one epoch ---------------------------------------------------------------------
    def batch(self, idx: tuple[torch.Tensor, ...]) -> tuple[Any, torch.Tensor, torch.Tensor]:
        """(auxiliary images or None, primary images, labels) of one step, augmented."""
        aug_p, aug_a = self.cfg.augment != "none", self.cfg.augment == "all"
        pi = idx[-1]
        xp, y = self._gather(self.lab_x, pi), self.lab_y[pi]  # (B, C, H, W) float, (B,)
        xp = augment(xp, self.aug) if aug_p else xp
        if self.aux_x is None:
            return None, xp, y
        xa = self._gather(self.aux_x, idx[0])  # same-class partners: its labels equal y
        xa = augment(xa, self.aug) if aug_a else xa
        if self.data.style_mix > 0:  # some auxiliary images in the primary's style
            xa = style_mix(xa, self.lab_x, self.data.style_mix)
        return xa, xp, y

    def _gather(self, images: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """Float images in [0, 1] on the device, in the model's layout, from 8-bit ones."""
        return to_input(images[index.to(images.device)], self.device)  # (B, C, H, W)

    def batch_loss(
        self, idx: tuple[torch.Tensor, ...]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor, torch.Tensor | None]:
        """Weighted loss, its unweighted terms, and the number of correct predictions."""
        xa, xp, y = self.batch(idx)
        # Forward in the run's precision (bf16 autocast: convs and matmuls only); every loss
        # term is computed from fp32 casts of the outputs.
        with autocast(self.device, self.precision):
            out = self.step_module(xa, xp)
        terms = self.model.loss_terms(out, xa, xp, y)
        total = weighted_total(terms, self.weights)
        ok_a = None if out.logits_aux is None else (out.logits_aux.argmax(1) == y).sum()
        return total, terms, (out.logits_primary.argmax(1) == y).sum(), ok_a

    def _order(self, epoch: int) -> tuple[torch.Tensor, ...]:
        """The epoch's indices: (auxiliary, primary) pairs, or primary images alone."""
        if isinstance(self.sampler, PairSampler):
            order: tuple[torch.Tensor, ...] = self.sampler.epoch(epoch)
        else:
            order = (self.sampler.epoch(epoch),)
        return tuple(o.to(self.device) for o in order)

    def run_epoch(self, epoch: int, reporter: Reporter) -> dict[str, Any]:
        """Train epoch `epoch` (0-based); returns its metrics row (without test accuracy)."""
        cfg = self.cfg
        # Reseed per epoch: dropout and latent noise then depend only on (seed, epoch), so a
        # resumed run repeats exactly what the uninterrupted run would have done. Under torchrun
        # each rank draws its own noise, from (seed, epoch, rank).
        d = self.dist
        rank_part = ("rank", d.rank) if d.enabled else ()
        torch.manual_seed(derive_seed(cfg.seed, "epoch", epoch, *rank_part))
        order = self._order(epoch)
        reporter.start_epoch(epoch + 1, cfg.epochs, self.steps_per_epoch, self.unit)
        self.model.train()
        n_terms = len(self.terms)
        sums = torch.zeros(n_terms + 1, dtype=torch.float64, device=self.device)
        correct_p = torch.zeros((), dtype=torch.long, device=self.device)
        correct_a = torch.zeros((), dtype=torch.long, device=self.device)
        pending: list[torch.Tensor] = []  # per-step [terms..., total] awaiting the finite check
        t0 = time.perf_counter()
        seen = 0
        lr = cfg.lr
        params = [p for p in self.model.parameters() if p.requires_grad]
        max_norm = cfg.grad_clip if cfg.grad_clip > 0 else float("inf")
        for step in range(self.steps_per_epoch):
            global_step = epoch * self.steps_per_epoch + step
            lr = lr_at(cfg, global_step, self.schedule_steps)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            lo, hi = step * cfg.batch_size, min((step + 1) * cfg.batch_size, self.epoch_size)
            if hi - lo < d.world_size:  # under torchrun a last step too small to share: skipped
                continue
            # this rank's share of the global batch; its loss weighted by its share, so that
            # DDP's average of the ranks' gradients is the gradient of the whole batch's mean
            s_lo, s_hi = share(hi - lo, d)
            scale = (s_hi - s_lo) * d.world_size / (hi - lo)
            lo, hi = lo + s_lo, lo + s_hi
            total, terms, ok_p, ok_a = self.batch_loss(tuple(o[lo:hi] for o in order))
            self.optimizer.zero_grad(set_to_none=True)
            (total * scale if d.enabled else total).backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
            record = torch.stack(
                [
                    *(terms[t].detach() for t in self.terms),
                    total.detach(),
                    grad_norm.detach().to(total.dtype),
                ]
            )
            pending.append(record)
            if len(pending) >= self.check_every or step == self.steps_per_epoch - 1:
                self._check_finite(pending, global_step - len(pending) + 1)
                pending = []
            self.optimizer.step()
            self._update_ema(global_step)
            b = hi - lo
            seen += b
            sums += record[: n_terms + 1].double() * b
            correct_p += ok_p
            if ok_a is not None:
                correct_a += ok_a
            if step % 10 == 9 or step == self.steps_per_epoch - 1:
                elapsed = time.perf_counter() - t0
                reporter.update(step + 1, float(sums[n_terms]) / seen, seen / max(elapsed, 1e-9))
        if pending:  # the last step was too small to share: check the steps before it
            self._check_finite(pending, (epoch + 1) * self.steps_per_epoch - 1 - len(pending))
        if d.enabled:  # the epoch's sums over all ranks; one set of BatchNorm statistics
            counts = torch.tensor([seen, int(correct_p), int(correct_a)], device=self.device)
            all_sum(sums, d)
            seen, n_p, n_a = (int(v) for v in all_sum(counts, d).tolist())
            correct_p.fill_(n_p)
            correct_a.fill_(n_a)
            average_buffers(self.model, d)
            if self.ema_model is not None:
                average_buffers(self.ema_model, d)
        seconds = time.perf_counter() - t0
        means = (sums / max(seen, 1)).tolist()
        row: dict[str, Any] = {"epoch": epoch + 1, "lr": lr, "loss": means[n_terms]}
        row.update({t: means[i] for i, t in enumerate(self.terms)})
        row["train_acc_primary"] = int(correct_p) / max(seen, 1)
        row["train_acc_aux"] = int(correct_a) / max(seen, 1) if self.aux_x is not None else None
        row["seconds"] = seconds
        row["examples_per_s"] = seen / max(seconds, 1e-9)
        return row

    def _check_finite(self, pending: list[torch.Tensor], first_step: int) -> None:
        # under torchrun summed over the ranks: a non-finite term on any rank stops every rank
        # at the same step, before its update, and each names the same term
        block = all_sum(torch.stack(pending), self.dist)  # (steps, n_terms + 2)
        finite = torch.isfinite(block)
        if bool(finite.all()):
            return
        bad_row = int(torch.nonzero(~finite.all(1)).flatten()[0])
        values = block[bad_row].tolist()
        named = dict(zip([*self.terms, "loss", "grad_norm"], values, strict=True))
        bad = [k for k in (*self.terms, "loss") if not math.isfinite(named[k])]
        if bad:
            what = ", ".join(f"{k} = {named[k]}" for k in bad if k != "loss") or "loss"
            what = f"non-finite loss term ({what})"
        else:
            what = f"non-finite gradient (norm {named['grad_norm']})"
        raise Diverged(first_step + bad_row, named, what)
