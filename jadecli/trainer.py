"""The training of one run: its model, objective, optimiser and batches, an epoch at a time.

`Trainer` builds what a run trains from its config and data; `train_one_epoch` is the loop, one
screen long: batch -> augment -> forward -> objective -> backward -> clip -> step. Everything
around it is a named helper in the module that owns it: the batches (`jadecli.batches`), the
loss (`jadecli.objective`), the schedule and the moving average (`jadecli.optim`), the sums and
the finite check (`jadecli.metrics`), the share of each rank under torchrun
(`jadecli.distributed`). `state()`/`load_state()` are its checkpoint; it knows nothing about
run folders (`jadecli.engine` drives the epochs and records them).

    python -c "from jadecli.config import TrainConfig; from jadecli.data.pair import \
training_data; from jadecli.trainer import Trainer, train_one_epoch; from jadecli.progress \
import PlainReporter; import torch; c, d = training_data(TrainConfig(primary='synth-street', \
auxiliary='synth-hand', n_labeled=100, data_dir='runs/data', epoch_size=500), PlainReporter()); \
print(train_one_epoch(Trainer(c, d, torch.device('cpu')), 0, PlainReporter()))"
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import torch
from torch import nn

from jadecli.batches import Batches
from jadecli.compute import EVAL_BATCH, autocast, cxx_compiler, place_model, to_input
from jadecli.config import TrainConfig
from jadecli.data.pair import TrainData
from jadecli.data.sampling import derive_seed
from jadecli.distributed import Dist, all_sum, average_buffers, scaled
from jadecli.errors import UsageError
from jadecli.generative import decoder_metrics
from jadecli.metrics import EpochMeter, FiniteCheck
from jadecli.model import JADE, RoleModel, build_model
from jadecli.nets import ResNetTrunk
from jadecli.objective import Objective
from jadecli.optim import EMA, lr_at, make_optimizer, set_lr
from jadecli.outputs import StepOutput, StepRequest
from jadecli.progress import Reporter
from jadecli.spec import AUXILIARY, PRIMARY, ModelSpec


def train_one_epoch(t: Trainer, epoch: int, reporter: Reporter) -> dict[str, Any]:
    """Train epoch `epoch` (0-based); returns its metrics row (without val and test accuracy)."""
    # Reseed per epoch: dropout, latent noise and augmentation then depend only on (seed, epoch)
    # (and the rank under torchrun), so a resumed run repeats what the uninterrupted one did.
    torch.manual_seed(t.epoch_seed(epoch))
    reporter.start_epoch(epoch + 1, t.cfg.epochs, t.batches.steps_per_epoch, t.batches.unit)
    t.model.train()
    meter = EpochMeter(t.objective.terms, t.device, paired=t.batches.aux_x is not None)
    finite = FiniteCheck(t.objective.terms, t.check_every, t.dist)
    last, lr = t.batches.steps_per_epoch - 1, t.cfg.lr
    for step, b in t.batches.epoch(epoch):  # this rank's share of each global batch
        global_step = epoch * t.batches.steps_per_epoch + step
        lr = set_lr(t.optimizer, lr_at(t.cfg.lr_schedule, t.cfg.lr, global_step, t.schedule_steps))
        # forward in the run's precision (bf16 autocast: convs and matmuls only); the objective
        # computes every term from fp32 casts of the outputs
        with autocast(t.device, t.precision):
            out: StepOutput = t.step_module(b.x_aux, b.x_primary, b.x_unl)
        total, terms = t.objective(out, b.x_aux, b.x_primary, b.y, b.x_unl)
        t.optimizer.zero_grad(set_to_none=True)
        scaled(total, b.weight, t.dist).backward()  # DDP's mean over ranks = the whole batch's
        grad_norm = torch.nn.utils.clip_grad_norm_(t.params, t.max_norm)
        record = finite.record(terms, total, grad_norm)
        finite.add(global_step, record, step == last)  # raises Diverged before the update
        t.optimizer.step()
        if t.ema is not None:
            t.ema.update(t.model, global_step)
        ok_a = None if out.logits_aux is None else (out.logits_aux.argmax(1) == b.y).sum()
        meter.add(record, len(b), (out.logits_primary.argmax(1) == b.y).sum(), ok_a)
        if step % 10 == 9 or step == last:
            reporter.update(step + 1, meter.loss, meter.rate)
    finite.flush()  # under torchrun the last step may have been too small to share
    meter.all_sum(t.dist)
    t.sync_buffers()
    return meter.row(epoch, lr)


class _TrainStep(nn.Module):
    """The model's training forward as a module's forward: DistributedDataParallel synchronises
    gradients only for what goes through the forward of the module it wraps."""

    def __init__(self, model: RoleModel, request: StepRequest):
        super().__init__()
        self.model, self.request = model, request

    def forward(
        self,
        x_aux: torch.Tensor | None,
        x_primary: torch.Tensor,
        x_unl: torch.Tensor | None = None,
    ) -> StepOutput:
        return self.model.forward_train(x_aux, x_primary, self.request, x_unl)


class Trainer:
    """The model, objective, optimiser and batches of one run."""

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
        self.precision_reason = ""  # why this precision (engine: `precision_reason`)
        self.dist = dist or Dist()
        self.spec = model_spec(cfg, data)
        torch.manual_seed(derive_seed(cfg.seed, "init"))
        self.model = build_model(self.spec)
        if not resumed and cfg.init_weights is not None:
            load_init_weights(self.model, cfg.init_weights)
        place_model(self.model, device)
        self.objective = Objective(cfg, self.spec)
        # what each step's forward computes beyond the logits, decided here once
        self.request = StepRequest(
            mean_logits=self.objective.wants_mean_logits,
            swaps=self.objective.wants_swaps,
            content_grad=cfg.decoder_content_grad,
            unlabeled_elbo=self.objective.wants_unlabeled_elbo,
        )
        self.batches = Batches(cfg, data, device, self.dist)
        self.steps_per_epoch = self.batches.steps_per_epoch
        self.compiled, self.compile_reason = compile_plan(cfg, device)
        # the module a step runs: the model, or its DistributedDataParallel wrapper (distribute),
        # compiled or not
        self.step_module = self._compiled(_TrainStep(self.model, self.request))
        self.ema = EMA(self.model, cfg.ema) if cfg.ema > 0 else None
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = make_optimizer(
            list(self.model.parameters()), device, cfg.lr, cfg.adam_beta1
        )
        self.max_norm = cfg.grad_clip if cfg.grad_clip > 0 else float("inf")
        # The learning-rate schedule is planned over the epochs the run starts with; a resumed
        # run keeps its plan (load_state).
        self.schedule_steps = self.steps_per_epoch * cfg.epochs
        # CPU: check every step for a non-finite loss (free); GPU: every 25 steps (a host sync)
        self.check_every = 1 if device.type == "cpu" else 25

    def epoch_seed(self, epoch: int) -> int:
        """The seed of an epoch's noise: (seed, epoch), and the rank under torchrun."""
        rank = ("rank", self.dist.rank) if self.dist.enabled else ()
        return derive_seed(self.cfg.seed, "epoch", epoch, *rank)

    def distribute(self) -> None:
        """Wrap the step in DistributedDataParallel (a collective: every rank calls it, after
        loading any checkpoint; rank 0's weights are broadcast to the others). Buffers are not
        broadcast each step: BatchNorm normalises each rank's share with its own statistics and
        `sync_buffers` averages the running statistics at the end of every epoch."""
        if not self.dist.enabled:
            return
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.device.index] if self.device.type == "cuda" else None
        # buffers are not synchronised at each forward (the deprecated flag on older torch)
        params = inspect.signature(DistributedDataParallel.__init__).parameters
        sync = "forward_sync_buffers" if "forward_sync_buffers" in params else "broadcast_buffers"
        step = _TrainStep(self.model, self.request)
        ddp = DistributedDataParallel(step, device_ids=ids, **{sync: False})
        self.step_module = self._compiled(ddp)

    def _compiled(self, step: nn.Module) -> nn.Module:
        """`step` under torch.compile when the run compiles (`--compile`), else itself."""
        if not self.compiled:
            return step
        # a step that fails to compile runs uncompiled (dynamo warns) rather than stop the run;
        # random draws (the latent noise) from torch's own generator, as the plain step draws
        # them, so a compiled run trains what the plain one does, seeds included
        torch._dynamo.config.suppress_errors = True
        torch._inductor.config.fallback_random = True
        return torch.compile(step)  # type: ignore[return-value]

    def sync_buffers(self) -> None:
        """Under torchrun: one set of BatchNorm statistics, the mean of the ranks'."""
        if self.dist.enabled:
            average_buffers(self.model, self.dist)
            if self.ema is not None:
                average_buffers(self.ema.model, self.dist)

    @property
    def eval_model(self) -> RoleModel:
        """The weights that are evaluated and saved as the run's model: the --ema average, or
        the trained weights."""
        return self.ema.model if self.ema is not None else self.model  # type: ignore[return-value]

    # --- checkpoints -------------------------------------------------------------------
    def state(self, epoch: int) -> dict[str, Any]:
        """Everything a resumed run needs, as plain tensors and data (weights_only loadable).
        "model" is what is evaluated (the --ema average when on; "train_model" then holds the
        trained weights a resume continues from)."""
        rng: dict[str, Any] = {"torch": torch.get_rng_state()}
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.device)

        def weights(model: nn.Module) -> dict[str, torch.Tensor]:
            return {k: v.detach().cpu() for k, v in model.state_dict().items()}

        extra = {} if self.ema is None else {"train_model": weights(self.model)}
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
        if self.ema is not None:
            self.ema.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["rng"]["torch"])
        self.schedule_steps = int(state["schedule_steps"])
        return int(state["epoch"])


def compile_plan(cfg: TrainConfig, device: torch.device) -> tuple[bool, str]:
    """`--compile` -> (compile the step?, what the manifest records)."""
    if not cfg.compile:
        return False, "off"
    if device.type == "cpu" and cxx_compiler() is None:
        return False, "off: no C++ compiler (g++, clang++ or $CXX) on this machine"
    return True, "on"


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
        stem=cfg.stem,
        # JADE's own options (the config refuses them where they would do nothing)
        style_encoder=cfg.style_encoder,
        style_critic=cfg.model == "jade" and cfg.style_adversary_weight > 0,
        decoder_content=cfg.decoder_content,
    )


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
    """Test accuracy of both datasets (the auxiliary's None without one) and, for JADE, how
    well its decoders keep class and content (`jadecli.generative.decoder_metrics`)."""
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
        if isinstance(model, JADE):  # 2 x 16 images, 2 x 256 swaps: every rank alike, unsharded
            with autocast(device, precision):
                out.update(decoder_metrics(model, test, at, device))
    return out
