"""DANN through pytorch-adapt (a public implementation nobody here wrote) on one split that
benchmarks/peers.py wrote: the runner that peers.py starts in the peer virtual environment.

    /work/peers-venv/bin/python benchmarks/peers_dann.py --data split.npz --out result.json

It imports nothing from jadecli (pytorch-adapt pins another torch; it runs in its own venv) and
reads only the .npz: uint8 images (N, C, H, W) and int64 labels of the sets `source` (the
auxiliary, MNIST), `target_labeled` (the labeled primary images trained on), `target_unlabeled`
(the primary's unlabeled images, no labels), `dev` and `test` (the primary's held-out labeled
images and its test split). A grey source beside a colour target is repeated to 3 channels.

The method is the library's: `pytorch_adapt.adapters.DANN` wraps `hooks.DANNHook`, which runs
G on both domains, the discriminator D on G's features behind its gradient reversal layer, the
domain losses (BCE, source = 0, target = 1), the cross entropy of C on the source labels, and
one optimiser step of G, C and D on the mean of those losses (its default `MeanWeighter`). Only
the networks, the optimisers and the batches are given here:

- G (`--net trunk`, default): conv 3x3 32-64-128, ReLU, a 2x2 max-pool after each (32 px ->
  128x4x4 = 2,048 features): the size of jadecli's shared trunk (same filters and pools) without
  its BatchNorm. DANNHook sends the source and the target batch through G one after the other,
  so a BatchNorm would normalise each domain with its own batch statistics while training and
  with running statistics mixed from both at test time; the DANN paper's digit nets had none.
  `--net mnist` is the library's own `models.MNISTFeatures` instead (the DANN paper's MNIST ->
  MNIST-M net: conv 5x5 32-48, 1,200 features).
- C: the library's `models.Classifier` (an MLP: features -> H -> H/2 -> 10, ReLU and dropout
  0.5), H = `--c-hidden` (512; jadecli's classifier MLP has 500 hidden units).
- D: the library's `models.Discriminator` (an MLP: features -> H -> H -> 1), H = `--d-hidden`
  (512), small next to the library's default of 2,048.
- Adam for each of G, C, D at `--lr` 1e-3, jadecli's optimiser and rate (the library's default,
  1e-4, left this net on its initial plateau for the first ~60 steps even without D).
- The gradient reversal weight follows the DANN paper's ramp, `--grl-weight` x (2 / (1 +
  exp(-10 p)) - 1) at training progress p (0 to 1), set each step on the library's own layer
  (`layers.GradientReversal.update_weight`, in the `GradientReversalHook` that DANNHook would
  build by default, passed to it as `gradient_reversal`); DANNHook itself keeps one weight
  throughout, and with 1 from the first step (`--grl-schedule constant`) the classifier did not
  leave chance in 105 steps at lr 1e-3, where with the weight at 0.1 it reached 59% dev (seed 1,
  a 1,000-image sample of the source and of the unlabeled set).
- Each step: `--batch-size` (64) source images and as many unlabeled target images, each drawn
  from shuffled passes over its set. With --semi (the default) the labeled target images are a
  third input, `labeled_imgs`/`labeled_labels`, whose cross entropy the library's `CLossHook`
  (domains=("labeled",)) adds through DANNHook's `post_g` hooks, so the same optimiser step also
  learns the primary's labels; D never sees them (its target side is the unlabeled set only).
  --no-semi is pure unsupervised adaptation.

No augmentation. After every epoch (`--steps-per-epoch` steps, default 500; 0 = one pass over
the source) the dev accuracy is measured; the epoch with the best dev accuracy (the first of
equals) is the selected one. Test images are read only after training: the selected epoch's
weights and the last epoch's are scored once each. The result JSON (rewritten after every epoch,
status "running" until done) holds the per-epoch losses and dev accuracies, both test
accuracies, the settings and the library versions.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

SETS = ("source", "target_labeled", "target_unlabeled", "dev", "test")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, help=".npz written by benchmarks/peers.py")
    ap.add_argument("--out", required=True, help="result JSON to write")
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument(
        "--steps-per-epoch",
        type=int,
        default=500,
        help="steps between dev evaluations (0: one pass over the source, ceil(N / batch))",
    )
    ap.add_argument("--batch-size", type=int, default=64, help="per domain")
    ap.add_argument("--labeled-batch", type=int, default=64, help="--semi: labeled target")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--grl-weight", type=float, default=1.0, help="the reversal weight's end value")
    ap.add_argument(
        "--grl-schedule",
        choices=("dann", "constant"),
        default="dann",
        help="dann: weight x (2 / (1 + exp(-10 p)) - 1) at progress p (the DANN paper's ramp)",
    )
    ap.add_argument("--net", choices=("trunk", "mnist"), default="trunk")
    ap.add_argument("--c-hidden", type=int, default=512)
    ap.add_argument("--d-hidden", type=int, default=512)
    ap.add_argument("--semi", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu", help="cpu, cuda, or auto")
    ap.add_argument("--eval-batch", type=int, default=500)
    args = ap.parse_args(argv)
    for name in ("epochs", "batch_size", "labeled_batch", "threads", "eval_batch"):
        if getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be 1 or more")
    if args.steps_per_epoch < 0:
        ap.error("--steps-per-epoch must be 0 (one source pass) or more")
    return args


# --------------------------------------------------------------------------- data


def load_split(path: Path) -> dict[str, dict[str, torch.Tensor]]:
    """The five sets as uint8 image tensors (N, C, H, W) and int64 labels (none for the
    unlabeled set), grey ones repeated to the colour channel count."""
    with np.load(path, allow_pickle=False) as npz:
        sets: dict[str, dict[str, torch.Tensor]] = {}
        for name in SETS:
            images = torch.from_numpy(np.ascontiguousarray(npz[f"{name}_images"]))
            if images.dtype != torch.uint8 or images.dim() != 4:
                raise ValueError(f"{path}: {name}_images must be uint8 (N, C, H, W)")
            entry = {"images": images}
            if f"{name}_labels" in npz:
                entry["labels"] = torch.from_numpy(npz[f"{name}_labels"]).long()
            sets[name] = entry
    channels = max(int(s["images"].shape[1]) for s in sets.values())
    for s in sets.values():
        if s["images"].shape[1] != channels:
            s["images"] = s["images"].expand(-1, channels, -1, -1).contiguous()
    shapes = {tuple(s["images"].shape[1:]) for s in sets.values()}
    if len(shapes) != 1:
        raise ValueError(f"{path}: the sets have different image shapes {sorted(shapes)}")
    if "labels" in sets["target_unlabeled"]:
        raise ValueError(f"{path}: the unlabeled target set must carry no labels")
    return sets


def to_input(images: torch.Tensor, device: torch.device) -> torch.Tensor:
    """uint8 images -> float in [-1, 1]."""
    return images.to(device).float().div_(127.5).sub_(1.0)


class Stream:
    """Batches of indices from shuffled passes over n items (seeded, endless)."""

    def __init__(self, n: int, batch: int, gen: torch.Generator) -> None:
        if n < 1:
            raise ValueError("an empty set cannot be sampled")
        self.n, self.batch, self.gen = n, batch, gen
        self.order = torch.randperm(n, generator=gen)
        self.pos = 0

    def next(self) -> torch.Tensor:
        parts, need = [], self.batch
        while need:
            if self.pos == self.n:
                self.order, self.pos = torch.randperm(self.n, generator=self.gen), 0
            take = min(need, self.n - self.pos)
            parts.append(self.order[self.pos : self.pos + take])
            self.pos, need = self.pos + take, need - take
        return torch.cat(parts)


# --------------------------------------------------------------------------- models


class Trunk(nn.Module):
    """conv 3x3 32-64-128, ReLU, 2x2 max-pool after each; flattened features."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c = channels
        for filters in (32, 64, 128):
            layers += [
                nn.Conv2d(c, filters, 3, padding=1),
                nn.ReLU(),
                nn.MaxPool2d(2, ceil_mode=True),
            ]
            c = filters
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).flatten(1)


def shim_pkg_resources() -> bool:
    """pytorch-adapt 0.0.83 imports torchmetrics 0.9.3, which imports `pkg_resources` (for
    `get_distribution` and `DistributionNotFound`); setuptools 81+ no longer ships that module.
    Where it is missing, a stand-in backed by importlib.metadata is registered (True), instead of
    changing the peer venv."""
    try:
        import pkg_resources  # noqa: F401
    except ImportError:
        import importlib.metadata as metadata
        import types

        class Distribution:
            def __init__(self, name: str) -> None:
                self.project_name, self.version = name, metadata.version(name)

        shim = types.ModuleType("pkg_resources")
        shim.DistributionNotFound = metadata.PackageNotFoundError  # type: ignore[attr-defined]
        shim.get_distribution = Distribution  # type: ignore[attr-defined]
        sys.modules["pkg_resources"] = shim
        return True
    return False


def build_adapter(
    args: argparse.Namespace, shape: tuple[int, ...], num_classes: int
) -> tuple[Any, Any]:
    """pytorch-adapt's DANN adapter with G, C, D and their Adam optimisers, and the gradient
    reversal layer (`layers.GradientReversal`) its hook runs D's input through."""
    from pytorch_adapt.adapters import DANN
    from pytorch_adapt.containers import Models, Optimizers
    from pytorch_adapt.hooks import CLossHook, FeaturesForDomainLossHook
    from pytorch_adapt.hooks.dann import GradientReversalHook
    from pytorch_adapt.models import Classifier, Discriminator, MNISTFeatures

    if args.net == "mnist":
        if shape[0] != 3:
            raise ValueError("--net mnist (models.MNISTFeatures) takes 3-channel images")
        g: nn.Module = MNISTFeatures()
    else:
        g = Trunk(shape[0])
    with torch.no_grad():
        features = int(g(torch.zeros(2, *shape)).shape[1])
    models = Models(
        {
            "G": g,
            "C": Classifier(num_classes=num_classes, in_size=features, h=args.c_hidden),
            "D": Discriminator(in_size=features, h=args.d_hidden),
        }
    )
    optimizers = Optimizers((torch.optim.Adam, {"lr": args.lr}))
    # DANNHook's own default reversal hook, built here so that its layer's weight can follow
    # the schedule (GradientReversal.update_weight); applied to the default features' keys
    reversal = GradientReversalHook(
        weight=grl_weight(args, 0.0), apply_to=FeaturesForDomainLossHook().out_keys
    )
    hook_kwargs: dict[str, Any] = {"gradient_reversal": reversal}
    if args.semi:  # the labeled target images' cross entropy, in the same step
        hook_kwargs["post_g"] = [CLossHook(domains=("labeled",))]
    adapter = DANN(models=models, optimizers=optimizers, hook_kwargs=hook_kwargs)
    return adapter, reversal.fn


def grl_weight(args: argparse.Namespace, progress: float) -> float:
    """The gradient reversal weight at training progress 0..1."""
    if args.grl_schedule == "constant":
        return args.grl_weight
    return args.grl_weight * (2.0 / (1.0 + math.exp(-10.0 * progress)) - 1.0)


@torch.no_grad()
def accuracy(adapter: Any, s: dict[str, torch.Tensor], device: torch.device, batch: int) -> float:
    adapter.models.eval()
    correct = 0
    for lo in range(0, len(s["labels"]), batch):
        x = to_input(s["images"][lo : lo + batch], device)
        logits = adapter.inference(x)["logits"]
        correct += int((logits.argmax(1).cpu() == s["labels"][lo : lo + batch]).sum())
    adapter.models.train()
    return correct / len(s["labels"])


# --------------------------------------------------------------------------- training


def write(path: Path, result: dict[str, Any]) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(result, indent=1), encoding="utf-8")
    os.replace(tmp, path)


def versions() -> dict[str, str]:
    import pytorch_adapt
    import torchvision

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "pytorch_adapt": pytorch_adapt.__version__,
        "numpy": np.__version__,
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    shimmed = shim_pkg_resources()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    want = args.device
    if want == "auto":
        want = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(want)
    out = Path(args.out)
    sets = load_split(Path(args.data))
    shape = tuple(sets["source"]["images"].shape[1:])
    with np.load(args.data, allow_pickle=False) as npz:
        classes = [str(c) for c in npz["classes"]]
    if args.semi and len(sets["target_labeled"]["images"]) == 0:
        raise SystemExit("--semi needs labeled target images; the split has none")
    adapter, reversal = build_adapter(args, shape, len(classes))
    adapter.models.to(device)
    adapter.models.train()
    gen = torch.Generator().manual_seed(args.seed)
    n_src = len(sets["source"]["images"])
    streams = {
        "src": Stream(n_src, args.batch_size, gen),
        "target": Stream(len(sets["target_unlabeled"]["images"]), args.batch_size, gen),
    }
    if args.semi:
        streams["labeled"] = Stream(len(sets["target_labeled"]["images"]), args.labeled_batch, gen)
    steps = args.steps_per_epoch or math.ceil(n_src / args.batch_size)
    total = steps * args.epochs
    domain = {
        "src_domain": torch.zeros(args.batch_size, dtype=torch.long, device=device),
        "target_domain": torch.ones(args.batch_size, dtype=torch.long, device=device),
    }
    params = {k: sum(p.numel() for p in m.parameters()) for k, m in adapter.models.items()}
    result: dict[str, Any] = {
        "status": "running",
        "method": "DANN (pytorch_adapt.adapters.DANN / hooks.DANNHook)",
        "settings": {**vars(args), "steps_per_epoch": steps, "device": str(device)},
        "sizes": {n: len(sets[n]["images"]) for n in SETS},
        "image_shape": list(shape),
        "parameters": params,
        "versions": versions(),
        "pkg_resources_shim": shimmed,
        "classes": classes,
        "epochs": [],
    }
    write(out, result)
    best: tuple[float, int, dict[str, Any]] | None = None
    start = time.perf_counter()
    for epoch in range(1, args.epochs + 1):
        t0 = time.perf_counter()
        sums: dict[str, float] = {}
        for step in range(steps):
            reversal.update_weight(grl_weight(args, ((epoch - 1) * steps + step) / total))
            batch: dict[str, torch.Tensor] = dict(domain)
            for name, stream in streams.items():
                idx = stream.next()
                part = sets[
                    {"src": "source", "target": "target_unlabeled"}.get(name, "target_labeled")
                ]
                batch[f"{name}_imgs"] = to_input(part["images"][idx], device)
                if name != "target":
                    batch[f"{name}_labels"] = part["labels"][idx].to(device)
            losses = adapter.training_step(batch)
            for k, v in losses["total_loss"].items():
                sums[k] = sums.get(k, 0.0) + float(v)
        dev = accuracy(adapter, sets["dev"], device, args.eval_batch)
        row = {"epoch": epoch, "dev_acc": dev, "seconds": time.perf_counter() - t0}
        row["grl_weight"] = float(reversal.weight[0])
        row.update({k: v / steps for k, v in sums.items()})
        result["epochs"].append(row)
        if best is None or dev > best[0]:
            state = {k: copy.deepcopy(adapter.models[k].state_dict()) for k in ("G", "C")}
            best = (dev, epoch, state)
        losses_text = "  ".join(f"{k} {v / steps:.3f}" for k, v in sums.items())
        print(
            f"epoch {epoch}/{args.epochs}  dev {100 * dev:.2f}%  {losses_text}  "
            f"{row['seconds']:.1f}s",
            flush=True,
        )
        write(out, result)
    assert best is not None
    last_test = accuracy(adapter, sets["test"], device, args.eval_batch)
    for k, state in best[2].items():
        adapter.models[k].load_state_dict(state)
    test = accuracy(adapter, sets["test"], device, args.eval_batch)
    result.update(
        status="completed",
        selected_epoch=best[1],
        dev_acc=best[0],
        test_acc=test,
        last_epoch=args.epochs,
        last_dev_acc=result["epochs"][-1]["dev_acc"],
        last_test_acc=last_test,
        train_seconds=time.perf_counter() - start,
    )
    write(out, result)
    print(
        f"selected epoch {best[1]} (best dev {100 * best[0]:.2f}%): test {100 * test:.2f}%; "
        f"last epoch test {100 * last_test:.2f}%",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
