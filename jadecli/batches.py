"""The training batches of a run: same-class pairs gathered from resident 8-bit images.

`Batches` holds the training images as the 8-bit tensors they were loaded as and, per epoch,
the indices of its same-class pairs (`PairSampler`; a single classifier's labeled images,
`IndexStream`). Each step gathers its batch by index, converts only that to float on the device,
augments it (`--augment`) and redraws some auxiliary images in the primary's style
(`--style-mix`). Under torchrun each rank gets its contiguous share of every global batch and
the weight that makes DistributedDataParallel's mean of the ranks' gradients the gradient of
the whole batch (`distributed.share`).

    python -c "from jadecli.config import TrainConfig; from jadecli.data.pair import \
training_data; from jadecli.batches import Batches; from jadecli.progress import PlainReporter; \
import torch; c, d = training_data(TrainConfig(primary='synth-street', auxiliary='synth-hand', \
n_labeled=100, data_dir='runs/data'), PlainReporter()); b = Batches(c, d, torch.device('cpu')); \
print(next(b.epoch(0))[1].x_primary.shape)"
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from jadecli.augment import Augment, augment, strong_augment, style_mix
from jadecli.compute import to_input
from jadecli.config import TrainConfig
from jadecli.data.pair import TrainData
from jadecli.data.sampling import IndexStream, PairSampler
from jadecli.data.unlabeled import UnlabeledStream
from jadecli.distributed import Dist, share


@dataclass
class Batch:
    """One step's images, augmented, as float in [0, 1] on the training device."""

    x_aux: torch.Tensor | None  # (B, C, H, W) same-class partners of x_primary; None: single
    x_primary: torch.Tensor  # (B, C, H, W)
    y: torch.Tensor  # (B,) the class of both
    weight: float  # this rank's share of the global batch x the world size (1: one process)
    # --unlabeled: U unlabeled primary images, lightly then strongly augmented (2U, C, H, W)
    x_unl: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.y)


class Batches:
    """The epochs of a run as batches (`epoch(e)`), and their sizes."""

    def __init__(self, cfg: TrainConfig, data: TrainData, device: torch.device, dist: Dist):
        self.cfg, self.device, self.dist = cfg, device, dist
        self.aug = Augment(cfg.aug_shift, cfg.aug_rotate, cfg.aug_scale, cfg.aug_color)
        self.lab_x = resident(data.labeled.images, device)  # (N_p, C, H, W) uint8
        self.lab_y = data.labeled.labels.to(device)
        self.aux_x: torch.Tensor | None = None
        self.sampler: PairSampler | IndexStream
        if data.aux_train is not None:
            self.aux_x = resident(data.aux_train.images, device)  # (N_a, C, H, W) uint8
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
        # --unlabeled: `unlabeled_ratio` unlabeled images per labeled one, in every step
        self.unlabeled = None
        if data.unlabeled is not None:
            self.unlabeled = UnlabeledStream(data.unlabeled, cfg.seed)

    def epoch(self, epoch: int) -> Iterator[tuple[int, Batch]]:
        """(step, batch) of epoch `epoch` (0-based), this rank's share of each. Under torchrun a
        last step with fewer pairs than ranks is skipped (its step number with it)."""
        order = self._order(epoch)
        b, d, r = self.cfg.batch_size, self.dist, self.cfg.unlabeled_ratio
        plan = []  # (step, this rank's indices, its weight, its unlabeled indices)
        unl = None if self.unlabeled is None else self.unlabeled.order(epoch, r * self.epoch_size)
        for step in range(self.steps_per_epoch):
            lo, hi = step * b, min((step + 1) * b, self.epoch_size)
            if hi - lo < d.world_size:
                continue
            s_lo, s_hi = share(hi - lo, d)
            weight = (s_hi - s_lo) * d.world_size / (hi - lo)
            u = None if unl is None else unl[r * (lo + s_lo) : r * (lo + s_hi)]
            plan.append((step, tuple(o[lo + s_lo : lo + s_hi] for o in order), weight, u))
        if self.unlabeled is None:
            for step, idx, weight, _ in plan:
                yield step, self._batch(idx, weight)
            return
        # the unlabeled images of every step, decoded ahead where they are streamed
        images = self.unlabeled.epoch(epoch, [u for *_, u in plan if u is not None])
        for (step, idx, weight, _), x_unl in zip(plan, images, strict=True):
            batch = self._batch(idx, weight)
            batch.x_unl = self._unlabeled(x_unl)
            yield step, batch

    def _order(self, epoch: int) -> tuple[torch.Tensor, ...]:
        """The epoch's indices: (auxiliary, primary) pairs, or primary images alone."""
        if isinstance(self.sampler, PairSampler):
            order: tuple[torch.Tensor, ...] = self.sampler.epoch(epoch)
        else:
            order = (self.sampler.epoch(epoch),)
        return tuple(o.to(self.device) for o in order)

    def _batch(self, idx: tuple[torch.Tensor, ...], weight: float) -> Batch:
        """Gather, convert and augment one step's images (augmentation draws from torch's global
        RNG, which the trainer reseeds every epoch)."""
        aug_p, aug_a = self.cfg.augment != "none", self.cfg.augment == "all"
        pi = idx[-1]
        xp, y = self._gather(self.lab_x, pi), self.lab_y[pi]  # (B, C, H, W) float, (B,)
        xp = augment(xp, self.aug) if aug_p else xp
        if self.aux_x is None:
            return Batch(None, xp, y, weight)
        xa = self._gather(self.aux_x, idx[0])  # same-class partners: its labels equal y
        xa = augment(xa, self.aug) if aug_a else xa
        if self.cfg.style_mix:  # some auxiliary images in the primary's style
            xa = style_mix(xa, self.lab_x, self.cfg.style_mix)
        return Batch(xa, xp, y, weight)

    def _unlabeled(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (U, C, H, W) -> [weak; strong] float views (2U, C, H, W) on the device: the
        weak one augmented as the labeled primary images are, the strong one by
        `augment.strong_augment` (FixMatch's two views)."""
        x = to_input(images, self.device)  # (U, C, H, W)
        weak = augment(x, self.aug) if self.cfg.augment != "none" else x
        return torch.cat([weak, strong_augment(x)])

    def _gather(self, images: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """Float images in [0, 1] on the device, in the model's layout, from 8-bit ones."""
        return to_input(images[index.to(images.device)], self.device)  # (B, C, H, W)


def resident(images: torch.Tensor, device: torch.device) -> torch.Tensor:
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
