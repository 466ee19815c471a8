"""The training engine behind `jade train`: data -> model -> epochs -> a complete run directory.

`train(config, options, reporter)` is the one entry point; it never prints (all messages go
through the reporter) and raises `JadeError`s for everything a user can fix. Usable without the
CLI:

    python -c "from pathlib import Path; from jadecli.config import TrainConfig; \
from jadecli.engine import RunOptions, train; from jadecli.progress import PlainReporter; \
print(train(TrainConfig(primary='synth-street', auxiliary='synth-hand', n_labeled=100, epochs=1, \
epoch_size=1000), RunOptions(Path('runs/api-demo')), PlainReporter()).final)"
"""

from __future__ import annotations

import contextlib
import math
import platform
import shlex
import time
import traceback
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from jadecli import __version__
from jadecli.augment import Augment, augment, style_mix
from jadecli.compute import (
    EVAL_BATCH,
    autocast,
    configure_threads,
    input_batches,
    make_optimizer,
    memory_format,
    place_model,
    resolve_precision,
    to_input,
)
from jadecli.config import (
    RESUME_OVERRIDABLE,
    TrainConfig,
    flag,
    load_yaml_config,
    resolve_train_config,
)
from jadecli.data.core import Dataset, ImageSet, default_data_dir
from jadecli.data.registry import align_classes, load_dataset
from jadecli.data.sampling import (
    IndexStream,
    PairSampler,
    derive_seed,
    first_per_class,
    labeled_subset,
)
from jadecli.errors import Interrupted, JadeError, RunDirError, TrainingFailed, UsageError
from jadecli.model import JADE, ModelSpec, build_model
from jadecli.objective import TERMS, LossWeights, jade_terms, weighted_total
from jadecli.progress import Reporter
from jadecli.run import CHECKPOINT_DIR, LABELED, LAST, SCHEMA_VERSION, RunDir, check_new_run_target

CHECKPOINT_FORMAT = 1
# Config fields whose default (None) is resolved when a run starts and saved resolved.
CHOSEN_AT_START = ("primary_size", "style_mix")


@dataclass
class RunOptions:
    """How to run, as opposed to what to compute (TrainConfig)."""

    out: Path
    resume: bool = False
    overwrite: bool = False
    command: list[str] = field(default_factory=list)


@dataclass
class TrainResult:
    run_dir: Path
    status: str
    epochs_completed: int
    seconds: float
    final: dict[str, Any]
    primary: str
    auxiliary: str | None
    already_complete: bool = False


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


# --------------------------------------------------------------------------- configuration


def resolve_config(
    flags: dict[str, Any], config_file: Path | None, options: RunOptions, preset: str | None = None
) -> TrainConfig:
    """The run's config: defaults < preset < YAML < flags; for --resume, the saved config plus
    the few fields a resumed run may change (and an error for any other value that differs)."""
    if not options.resume:
        return resolve_train_config(flags, config_file, preset=preset)
    if preset is not None:
        raise UsageError(
            f"--preset {preset} applies to new runs; a resumed run keeps its saved config"
        )
    if options.overwrite:
        raise UsageError("--resume and --overwrite contradict each other; pass one of them")
    run = RunDir.open(options.out, flag="--out")
    saved = run.read_manifest().get("config")
    if not isinstance(saved, dict):
        raise RunDirError(f"{run.manifest_path} holds no config; the run cannot be resumed")
    requested = dict(load_yaml_config(config_file)) if config_file is not None else {}
    requested.update({k: v for k, v in flags.items() if v is not None})
    saved_cfg = TrainConfig.from_dict(saved)
    # validates and normalises the request
    probe = TrainConfig(**{**saved_cfg.to_dict(), **requested})
    for name in requested:
        if name in RESUME_OVERRIDABLE:
            continue
        if getattr(probe, name) != getattr(saved_cfg, name):
            raise UsageError(
                f"{flag(name)} {getattr(probe, name)} differs from the run's saved value "
                f"{getattr(saved_cfg, name)}; a resumed run keeps its config (only "
                f"{', '.join(flag(n) for n in sorted(RESUME_OVERRIDABLE))} may change)"
            )
    return probe


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise JadeError(
                f"--device {name}: CUDA is not available on this machine (torch "
                f"{torch.__version__}, no usable GPU); use --device cpu or --device auto"
            )
        index = int(name.split(":")[1]) if ":" in name else 0
        if index >= torch.cuda.device_count():
            raise JadeError(
                f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)"
            )
        return torch.device(name)
    if name == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise JadeError("--device mps: Apple's MPS is not available here; use --device cpu")
        return torch.device("mps")
    return torch.device("cpu")


def lr_at(cfg: TrainConfig, step: int, total_steps: int) -> float:
    """Learning rate at a global step (0-based): a pure function, so resume needs no state."""
    frac = step / max(total_steps, 1)
    if cfg.lr_schedule == "constant":
        return cfg.lr
    if cfg.lr_schedule == "step":  # the paper: 1e-3 / 3e-4 / 1e-4 over thirds of training
        return cfg.lr * (1.0 if frac < 1 / 3 else 0.3 if frac < 2 / 3 else 0.1)
    lo = cfg.lr / 100
    return lo + 0.5 * (cfg.lr - lo) * (1 + math.cos(math.pi * frac))


# --------------------------------------------------------------------------- data


@dataclass
class TrainData:
    primary: Dataset
    auxiliary: Dataset | None
    labeled_index: torch.Tensor  # indices into primary.train
    labeled: ImageSet
    aux_train: ImageSet | None  # the auxiliary training images used (all, or first K per class)
    primary_size: int | None = None  # the --primary-size used (--arch shared may choose it)
    style_mix: float = 0.0  # the --style-mix used


def load_data(cfg: TrainConfig, reporter: Reporter) -> TrainData:
    """Load, align and subset the datasets; `cfg.data_dir` is already resolved by `train`."""
    assert cfg.data_dir is not None
    data_dir = Path(cfg.data_dir).expanduser()
    auxiliary = None
    if cfg.model == "single":
        if cfg.auxiliary:
            reporter.warn(f"--auxiliary {cfg.auxiliary} is not used by --model single")
    else:
        assert cfg.auxiliary
        reporter.info(f"loading {cfg.auxiliary} (auxiliary)")
        auxiliary = load_dataset(
            cfg.auxiliary,
            data_dir,
            cfg.download,
            cfg.auxiliary_size,
            reporter.warn,
            "--auxiliary",
        ).padded(cfg.auxiliary_pad)
    primary_size = cfg.primary_size
    if cfg.arch == "shared" and auxiliary is not None and primary_size is None:
        _, h, w = auxiliary.image_shape  # one trunk: the primary takes the auxiliary's size
        primary_size = h - 2 * cfg.primary_pad
        if h != w or primary_size < 1:
            raise UsageError(
                f"--arch shared needs both datasets at one square size, but --auxiliary "
                f"{cfg.auxiliary} is {h}x{w} (--primary-pad {cfg.primary_pad}); pass "
                "--primary-size and --auxiliary-size"
            )
    reporter.info(f"loading {cfg.primary} (primary)")
    primary = load_dataset(
        cfg.primary, data_dir, cfg.download, primary_size, reporter.warn, "--primary"
    ).padded(cfg.primary_pad)
    mix = 0.0
    if auxiliary is not None:
        align_classes(primary, auxiliary)
        primary, auxiliary, mix = prepare_pair(primary, auxiliary, cfg.arch, cfg.style_mix)
    index = labeled_subset(
        primary.train.labels,
        primary.classes,
        cfg.n_labeled,
        cfg.labeled_selection,
        cfg.seed,
        primary.name,
    )
    aux_train = None
    if auxiliary is not None:
        aux_train = auxiliary.train
        if cfg.aux_per_class is not None:
            keep = first_per_class(
                auxiliary.train.labels, auxiliary.classes, cfg.aux_per_class, auxiliary.name
            )
            aux_train = auxiliary.train.subset(keep)
    return TrainData(
        primary, auxiliary, index, primary.train.subset(index), aux_train, primary_size, mix
    )


def prepare_pair(
    primary: Dataset, auxiliary: Dataset, arch: str, style_mix: float | None
) -> tuple[Dataset, Dataset, float]:
    """The two datasets as the model sees them, and the `--style-mix` to train with.

    `--arch shared` feeds both through one CNN: a grey dataset beside a colour one gets 3
    (identical) channels, and both must have one size. Style mixing needs the auxiliary in the
    primary's channels too. `jade train` and the analysis commands both call this."""
    (cp, hp, wp), (ca, ha, wa) = primary.image_shape, auxiliary.image_shape
    if style_mix is None:  # default: on for a colour primary helped by a grey auxiliary
        style_mix = 0.5 if (cp, ca) == (3, 1) and (hp, wp) == (ha, wa) else 0.0
    if arch == "shared" or style_mix > 0:
        what = "--arch shared" if arch == "shared" else f"--style-mix {style_mix}"
        if (hp, wp) != (ha, wa):
            raise UsageError(
                f"{what} needs both datasets at one size, but the primary is {hp}x{wp} and the "
                f"auxiliary {ha}x{wa}: pass --primary-size/--auxiliary-size (and the pads)"
            )
        if cp != ca and 1 not in (cp, ca):
            raise UsageError(
                f"{what} needs one channel count, but the primary has {cp} and the auxiliary {ca}"
            )
        if cp == 1 and ca > 1 and style_mix > 0:
            raise UsageError(
                f"--style-mix {style_mix}: the primary is grey and the auxiliary in colour; "
                "pass --style-mix 0"
            )
        channels = max(cp, ca)
        primary, auxiliary = primary.with_channels(channels), auxiliary.with_channels(channels)
    return primary, auxiliary, style_mix


# --------------------------------------------------------------------------- evaluation


@torch.inference_mode()
def accuracy(
    model: nn.Module,
    which: str,
    images: torch.Tensor,
    labels: torch.Tensor,
    device: torch.device,
    precision: str = "fp32",
) -> float:
    """Accuracy of `model.classify_<which>` (posterior means for JADE), in eval mode, on the
    same input path, batch size and precision as `jade evaluate`."""
    was_training = model.training
    model.eval()
    classify = getattr(model, f"classify_{which}")
    correct = torch.zeros((), dtype=torch.long, device=device)
    with autocast(device, precision):
        for start, x in input_batches(images, device, EVAL_BATCH):  # (B, C, H, W)
            y = labels[start : start + EVAL_BATCH].to(device, non_blocking=True)
            correct += (classify(x).argmax(1) == y).sum()
    model.train(was_training)
    return int(correct) / max(len(images), 1)


def evaluate_test(
    model: nn.Module, data: TrainData, device: torch.device, precision: str
) -> dict[str, float | None]:
    test = data.primary.test
    out: dict[str, float | None] = {
        "test_acc_primary": accuracy(model, "primary", test.images, test.labels, device, precision),
        "test_acc_aux": None,
    }
    if data.auxiliary is not None:
        at = data.auxiliary.test
        out["test_acc_aux"] = accuracy(model, "aux", at.images, at.labels, device, precision)
    return out


# --------------------------------------------------------------------------- training


def metric_columns(kind: str) -> list[str]:
    return [
        "epoch",
        "lr",
        "loss",
        *TERMS[kind],
        "train_acc_primary",
        "train_acc_aux",
        "test_acc_primary",
        "test_acc_aux",
        "seconds",
        "examples_per_s",
    ]


class Diverged(Exception):
    def __init__(self, step: int, terms: dict[str, float], what: str):
        self.step, self.terms, self.what = step, terms, what
        super().__init__(what)


def _resident(images: torch.Tensor, device: torch.device) -> torch.Tensor:
    """The training images, normalised to float [0, 1] once, on the device, in the model's
    layout (converted in chunks to bound the temporary memory): every step is then a single
    index lookup, with nothing decoded, converted or copied to the device per step."""
    out = torch.empty(
        images.shape, dtype=torch.float32, device=device, memory_format=memory_format(device)
    )  # (N, C, H, W)
    for i in range(0, len(images), 4096):
        out[i : i + 4096] = to_input(images[i : i + 4096], device)
    return out


def _elbo_scales(cfg: TrainConfig, spec: ModelSpec) -> tuple[float, float]:
    """(auxiliary, primary) multipliers of the ELBO terms: 1 / pixel values for per-pixel."""
    if cfg.loss_scale == "sum" or spec.auxiliary_shape is None:
        return 1.0, 1.0
    return 1.0 / math.prod(spec.auxiliary_shape), 1.0 / math.prod(spec.primary_shape)


class Trainer:
    """One training session of a run (a fresh run, or a resumed one)."""

    def __init__(
        self, cfg: TrainConfig, data: TrainData, device: torch.device, precision: str = "fp32"
    ):
        self.cfg, self.data, self.device, self.precision = cfg, data, device, precision
        p = data.primary
        self.spec = ModelSpec(
            kind=cfg.model,
            primary_shape=p.image_shape,
            auxiliary_shape=data.auxiliary.image_shape if data.auxiliary else None,
            num_classes=p.num_classes,
            content_dim=cfg.content_dim,
            style_dim=cfg.style_dim,
            hidden_dim=cfg.hidden_dim,
            dropout=cfg.dropout,
            arch=cfg.arch,
        )
        torch.manual_seed(derive_seed(cfg.seed, "init"))
        self.model = place_model(build_model(self.spec), device)
        self.optimizer = make_optimizer(
            list(self.model.parameters()), device, cfg.lr, cfg.adam_beta1
        )
        self.weights = LossWeights(
            cfg.recon_weight,
            cfg.kl_weight,
            cfg.match_weight,
            cfg.aux_ce_weight,
            cfg.primary_ce_weight,
            *_elbo_scales(cfg, self.spec),
        )
        self.aug = Augment(cfg.aug_shift, cfg.aug_rotate, cfg.aug_scale, cfg.aug_color)
        self.terms = TERMS[cfg.model]
        # Normalised float images live on the training device once; batches are index lookups.
        self.lab_x = _resident(data.labeled.images, device)  # (N_p, C, H, W) float, NHWC
        self.lab_y = data.labeled.labels.to(device)
        if data.aux_train is not None:
            self.aux_x = _resident(data.aux_train.images, device)  # (N_a, C, H, W)
            self.aux_y = data.aux_train.labels.to(device)
            n = len(data.aux_train)
            self.epoch_size = n if cfg.epoch_size == "all" else int(cfg.epoch_size)
            self.sampler: PairSampler | IndexStream = PairSampler(
                data.aux_train.labels, data.labeled.labels, p.num_classes, self.epoch_size, cfg.seed
            )
        else:
            n = len(data.labeled)
            self.epoch_size = n if cfg.epoch_size == "all" else int(cfg.epoch_size)
            self.sampler = IndexStream(n, self.epoch_size, cfg.seed, "labeled")
        self.steps_per_epoch = math.ceil(self.epoch_size / cfg.batch_size)
        self.total_steps = self.steps_per_epoch * cfg.epochs
        # CPU: check every step for a non-finite loss (free); GPU: batch the checks to avoid a
        # host sync per step; a divergence is still pinned to its exact step.
        self.check_every = 1 if device.type == "cpu" else 25

    # --- checkpoints -------------------------------------------------------------------
    def state(self, epoch: int) -> dict[str, Any]:
        rng: dict[str, Any] = {"torch": torch.get_rng_state()}
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        spec = asdict(self.spec)
        spec["primary_shape"] = list(self.spec.primary_shape)
        if self.spec.auxiliary_shape is not None:
            spec["auxiliary_shape"] = list(self.spec.auxiliary_shape)
        return {
            "format": CHECKPOINT_FORMAT,
            "jadecli_version": __version__,
            "epoch": epoch,
            "global_step": epoch * self.steps_per_epoch,
            "model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            "optimizer": self.optimizer.state_dict(),
            "config": self.cfg.to_dict(),
            "model_spec": spec,
            "classes": list(self.data.primary.classes),
            "rng": rng,
        }

    def load_state(self, state: dict[str, Any]) -> int:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["rng"]["torch"])
        return int(state["epoch"])

    # --- one epoch ---------------------------------------------------------------------
    def batch_loss(
        self, idx: Any
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor, torch.Tensor | None]:
        """Weighted loss, its unweighted terms, and the number of correct predictions."""
        kind = self.cfg.model
        # Forward in the run's precision (bf16 autocast: convs and matmuls only); every loss
        # term is computed from fp32 casts of the outputs.
        cast = autocast(self.device, self.precision)
        aug_p, aug_a = self.cfg.augment != "none", self.cfg.augment == "all"
        if kind == "single":
            (pi,) = idx
            xp, y = self.lab_x[pi], self.lab_y[pi]  # (B, C, H, W) float, (B,)
            xp = augment(xp, self.aug) if aug_p else xp
            with cast:
                logits_p = self.model.classify_primary(xp).float()
            terms = {"ce_primary": nn.functional.cross_entropy(logits_p, y)}
            return weighted_total(terms, self.weights), terms, (logits_p.argmax(1) == y).sum(), None
        ai, pi = idx
        xa, xp = self.aux_x[ai], self.lab_x[pi]
        y = self.lab_y[pi]  # == the auxiliary labels: same-class pairs
        xp = augment(xp, self.aug) if aug_p else xp
        xa = augment(xa, self.aug) if aug_a else xa
        if self.data.style_mix > 0:  # some auxiliary images in the primary's style
            xa = style_mix(xa, self.lab_x, self.data.style_mix)
        if kind == "paired":
            with cast:
                logits_a = self.model.classify_aux(xa).float()
                logits_p = self.model.classify_primary(xp).float()
            terms = {
                "ce_aux": nn.functional.cross_entropy(logits_a, y),
                "ce_primary": nn.functional.cross_entropy(logits_p, y),
            }
        else:
            assert isinstance(self.model, JADE)
            with cast:
                out = self.model(xa, xp)
            terms = jade_terms(out, xa, xp, y)
            logits_a, logits_p = out.logits_aux, out.logits_primary
        total = weighted_total(terms, self.weights)
        return total, terms, (logits_p.argmax(1) == y).sum(), (logits_a.argmax(1) == y).sum()

    def run_epoch(self, epoch: int, reporter: Reporter) -> dict[str, Any]:
        """Train epoch `epoch` (0-based); returns its metrics row (without test accuracy)."""
        cfg = self.cfg
        # Reseed per epoch: dropout and latent noise then depend only on (seed, epoch), so a
        # resumed run repeats exactly what the uninterrupted run would have done.
        torch.manual_seed(derive_seed(cfg.seed, "epoch", epoch))
        if isinstance(self.sampler, PairSampler):
            aux_idx, prim_idx = self.sampler.epoch(epoch)
            order: tuple[torch.Tensor, ...] = (aux_idx, prim_idx)
        else:
            order = (self.sampler.epoch(epoch),)
        order = tuple(o.to(self.device) for o in order)
        unit = "images" if cfg.model == "single" else "pairs"
        reporter.start_epoch(epoch + 1, cfg.epochs, self.steps_per_epoch, unit)
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
        for step in range(self.steps_per_epoch):
            global_step = epoch * self.steps_per_epoch + step
            lr = lr_at(cfg, global_step, self.total_steps)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            lo, hi = step * cfg.batch_size, min((step + 1) * cfg.batch_size, self.epoch_size)
            total, terms, ok_p, ok_a = self.batch_loss(tuple(o[lo:hi] for o in order))
            self.optimizer.zero_grad(set_to_none=True)
            total.backward()
            max_norm = cfg.grad_clip if cfg.grad_clip > 0 else float("inf")
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
            b = hi - lo
            seen += b
            sums += record[: n_terms + 1].double() * b
            correct_p += ok_p
            if ok_a is not None:
                correct_a += ok_a
            if step % 10 == 9 or step == self.steps_per_epoch - 1:
                elapsed = time.perf_counter() - t0
                reporter.update(step + 1, float(sums[n_terms]) / seen, seen / max(elapsed, 1e-9))
        seconds = time.perf_counter() - t0
        means = (sums / max(seen, 1)).tolist()
        row: dict[str, Any] = {"epoch": epoch + 1, "lr": lr, "loss": means[n_terms]}
        row.update({t: means[i] for i, t in enumerate(self.terms)})
        row["train_acc_primary"] = int(correct_p) / max(seen, 1)
        row["train_acc_aux"] = int(correct_a) / max(seen, 1) if cfg.model != "single" else None
        row["seconds"] = seconds
        row["examples_per_s"] = seen / max(seconds, 1e-9)
        return row

    def _check_finite(self, pending: list[torch.Tensor], first_step: int) -> None:
        block = torch.stack(pending)  # (steps, n_terms + 2)
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


# --------------------------------------------------------------------------- the run


def _versions() -> dict[str, str]:
    import torchvision

    return {
        "python": platform.python_version(),
        "torch": str(torch.__version__),
        "torchvision": str(torchvision.__version__),
        "numpy": str(np.__version__),
        "platform": platform.platform(),
    }


def _final_from_rows(rows: list[dict[str, Any]]) -> dict[str, Any]:
    last = rows[-1] if rows else {}

    def num(v: Any) -> float | None:
        return None if v in (None, "") else float(v)

    return {
        "primary_test_accuracy": num(last.get("test_acc_primary")),
        "auxiliary_test_accuracy": num(last.get("test_acc_aux")),
        "primary_train_accuracy": num(last.get("train_acc_primary")),
        "loss": num(last.get("loss")),
    }


def train(cfg: TrainConfig, options: RunOptions, reporter: Reporter) -> TrainResult:
    """Train a model as `cfg` says and leave a complete run directory at `options.out`."""
    out = options.out
    if not options.resume:
        check_new_run_target(out, options.overwrite)  # fail before the slow part
    device = resolve_device(cfg.device)
    precision = resolve_precision(cfg.precision, device, reporter.warn)
    configure_threads()
    if cfg.data_dir is None:  # record where the data really came from
        cfg = replace(cfg, data_dir=str(default_data_dir()))
    resume_state: dict[str, Any] | None = None
    if options.resume:
        run = RunDir.open(out, flag="--out")
        manifest = run.read_manifest()
        resume_state = run.load_checkpoint()
        saved = TrainConfig.from_dict(resume_state["config"])
        # values the defaults chose when the run started (None = "choose") are the run's own
        chosen = {f: getattr(saved, f) for f in CHOSEN_AT_START if getattr(cfg, f) is None}
        cfg = replace(cfg, **chosen)
        for f in TrainConfig.__dataclass_fields__:
            if f not in RESUME_OVERRIDABLE and getattr(saved, f) != getattr(cfg, f):
                raise RunDirError(
                    f"{run.checkpoint_path} was written with {f} = {getattr(saved, f)!r} but the "
                    f"manifest says {getattr(cfg, f)!r}; the run folder is inconsistent"
                )
        if int(resume_state["epoch"]) >= cfg.epochs:
            done = int(resume_state["epoch"])
            if manifest.get("status") == "completed" and done == cfg.epochs:
                return TrainResult(
                    out,
                    "completed",
                    done,
                    0.0,
                    manifest.get("final_metrics") or {},
                    cfg.primary,
                    cfg.auxiliary if cfg.model != "single" else None,
                    already_complete=True,
                )
            raise UsageError(
                f"--epochs {cfg.epochs}: the run in {out} already has {done} epochs; pass a "
                f"larger --epochs to continue it"
            )

    data = load_data(cfg, reporter)
    if (data.primary_size, data.style_mix) != (cfg.primary_size, cfg.style_mix):
        # record what the defaults chose: the size for --arch shared, the style mixing
        cfg = replace(cfg, primary_size=data.primary_size, style_mix=data.style_mix)
    trainer = Trainer(cfg, data, device, precision)
    columns = metric_columns(cfg.model)
    start_epoch = 0
    rows: list[dict[str, Any]] = []
    if resume_state is not None:
        run = RunDir(out)
        start_epoch = trainer.load_state(resume_state)
        rows = [r for r in run.read_metrics() if int(r["epoch"]) <= start_epoch]
        manifest = run.read_manifest()
        manifest["status"] = "running"
        manifest["config"] = cfg.to_dict()
        manifest["device"] = str(device)
        manifest["precision"] = precision
        manifest["threads"] = torch.get_num_threads()
        manifest["ended_at"] = None
        manifest["error"] = None
        manifest.setdefault("events", []).append(
            {
                "time": now(),
                "event": "resumed",
                "from_epoch": start_epoch,
                "command": _command(options),
            }
        )
        reporter.info(f"resuming {out} from epoch {start_epoch} of {cfg.epochs}")
        run.write_manifest(manifest)
    else:
        manifest = _new_manifest(cfg, options, device, data, trainer)
        run = RunDir.create(out, options.overwrite)
        try:
            run.write_manifest(manifest)
            run.write_labeled_indices(data.labeled_index, data.labeled.labels, data.primary.classes)
        except BaseException:
            run.discard()  # nothing was trained yet: leave no half-made run behind
            raise
    if cfg.device == "auto" or cfg.precision == "auto":
        threads = f", {torch.get_num_threads()} threads" if device.type == "cpu" else ""
        reporter.info(f"device: {device}, precision {precision}{threads}")

    t_start = time.perf_counter()
    epoch = start_epoch
    try:
        for epoch in range(start_epoch, cfg.epochs):
            row = trainer.run_epoch(epoch, reporter)
            last = epoch == cfg.epochs - 1
            if last or (cfg.eval_every and (epoch + 1) % cfg.eval_every == 0):
                row.update(evaluate_test(trainer.model, data, device, precision))
            # checkpoint first, then the metrics and manifest that point at it
            run.save_checkpoint(trainer.state(epoch + 1))
            rows.append(row)
            run.write_metrics(columns, rows)
            manifest["epochs_completed"] = epoch + 1
            manifest["final_metrics"] = _final_from_rows(rows)
            run.write_manifest(manifest)
            reporter.end_epoch(epoch + 1, cfg.epochs, row)
    except Diverged as err:
        reporter.close()
        step_in_epoch = err.step - epoch * trainer.steps_per_epoch + 1
        kept = (
            f"kept the last good checkpoint {run.checkpoint_path} (epoch {epoch})"
            if epoch > 0
            else "no checkpoint was written (it diverged in the first epoch)"
        )
        message = (
            f"training diverged at epoch {epoch + 1}, step {step_in_epoch} (step {err.step + 1} "
            f"overall): {err.what}; {kept}; try a lower --lr or --grad-clip"
        )
        _finish(run, manifest, "failed", message)
        raise TrainingFailed(message) from None
    except KeyboardInterrupt:
        reporter.close()
        message = (
            f"interrupted during epoch {epoch + 1}; {epoch} epoch(s) are saved in "
            f"{run.checkpoint_path}; continue with: jade train --out {out} --resume"
        )
        _finish(run, manifest, "interrupted", message)
        raise Interrupted(message) from None
    except JadeError as err:
        reporter.close()
        _finish(run, manifest, "failed", str(err))
        raise
    except Exception as err:
        reporter.close()
        log = run.path / "error.log"
        log.write_text(traceback.format_exc(), encoding="utf-8")
        message = (
            f"training crashed in epoch {epoch + 1} ({type(err).__name__}: "
            f"{str(err).splitlines()[0] if str(err) else ''}); details in {log}"
        )
        _finish(run, manifest, "failed", message)
        raise TrainingFailed(message) from None

    seconds = time.perf_counter() - t_start
    manifest["final_metrics"] = _final_from_rows(rows)
    manifest["train_seconds"] = round(float(manifest.get("train_seconds") or 0) + seconds, 2)
    _finish(run, manifest, "completed", None)
    return TrainResult(
        out,
        "completed",
        cfg.epochs,
        seconds,
        manifest["final_metrics"],
        cfg.primary,
        cfg.auxiliary if cfg.model != "single" else None,
    )


def _command(options: RunOptions) -> str:
    return " ".join(shlex.quote(a) for a in options.command) if options.command else ""


def _new_manifest(
    cfg: TrainConfig, options: RunOptions, device: torch.device, data: TrainData, trainer: Trainer
) -> dict[str, Any]:
    datasets: dict[str, Any] = {"primary": data.primary.describe()}
    datasets["primary"]["labeled"] = {
        "size": len(data.labeled),
        "per_class": data.labeled.class_counts(data.primary.num_classes),
        "selection": cfg.labeled_selection if cfg.n_labeled != "all" else "all",
        "file": LABELED,
    }
    if data.auxiliary is not None and data.aux_train is not None:
        datasets["auxiliary"] = data.auxiliary.describe()
        datasets["auxiliary"]["used_train_size"] = len(data.aux_train)
        datasets["auxiliary"]["used_per_class"] = data.aux_train.class_counts(
            data.auxiliary.num_classes
        )
    started = now()
    return {
        "schema_version": SCHEMA_VERSION,
        "jadecli_version": __version__,
        "command": _command(options),
        "status": "running",
        "started_at": started,
        "ended_at": None,
        "seed": cfg.seed,
        "device": str(device),
        "precision": trainer.precision,
        "threads": torch.get_num_threads(),
        "versions": _versions(),
        "config": cfg.to_dict(),
        "datasets": datasets,
        "training": {
            "epoch_size": trainer.epoch_size,
            "steps_per_epoch": trainer.steps_per_epoch,
            "total_steps": trainer.total_steps,
            "parameters": sum(p.numel() for p in trainer.model.parameters()),
        },
        "epochs_completed": 0,
        "final_metrics": None,
        "checkpoints": {"last": f"{CHECKPOINT_DIR}/{LAST}"},
        "metrics_file": "metrics.csv",
        "error": None,
        "events": [{"time": started, "event": "started", "command": _command(options)}],
    }


def _finish(run: RunDir, manifest: dict[str, Any], status: str, error: str | None) -> None:
    manifest["status"] = status
    manifest["ended_at"] = now()
    manifest["error"] = error
    manifest.setdefault("events", []).append({"time": manifest["ended_at"], "event": status})
    with contextlib.suppress(OSError):  # the original error matters more than this write
        run.write_manifest(manifest)
