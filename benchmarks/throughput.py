"""Training and evaluation throughput of jadecli's engine against a plain PyTorch loop.

For each setup (dataset shapes) and model (single, paired, jade), the same process and the same
threads time, in interleaved repetitions:

- **reference**: the loop a typical PyTorch user writes: torchvision-style datasets that turn
  each stored uint8 image into a PIL image and apply `transforms.ToTensor()` per sample, a
  same-class pair dataset that picks the primary partner per sample in Python, a default
  `DataLoader` (batch 100, shuffle, no workers), float32 NCHW, Adam, the same model and loss;
- **engine fp32** / **engine bf16**: `jadecli.trainer.train_one_epoch` and
  `jadecli.trainer.accuracy` (what `jade train` runs each step and each epoch), with
  `--precision fp32` and, where the hardware has native bf16, `--precision bf16` (what
  `--precision auto` then picks).

Peak resident memory is measured per (setup, model, implementation) in a child process. Then the
time to accuracy of the default recipe (`jade train --primary usps --auxiliary mnist
--n-labeled 100`), and the peak memory of the paper's protocol (SVHN-format primary with
73,257 + 26,032 images, 1,000 labeled; MNIST 4,500 per class) through the real CLI. The report
opens with this machine's ceiling: the matrix-product and convolution peak in fp32 and (where
native) bf16 (`benchmarks.step_speed.peaks`).

    python -m benchmarks.throughput --data-dir DATA_DIR \
        --out benchmarks/results/throughput.md

Runs unchanged on a GPU (`--device auto` picks CUDA); `--quick` for a smoke test.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader
from torch.utils.data import Dataset as TorchDataset
from torchvision import transforms

from benchmarks.step_speed import peaks
from jadecli.compute import EVAL_BATCH, native_bf16, resolve_device, resolve_precision
from jadecli.config import TrainConfig
from jadecli.config.train import JADE_ONLY
from jadecli.data.core import DIGITS, Dataset, ImageSet
from jadecli.data.pair import TrainData, training_data
from jadecli.data.registry import load_dataset
from jadecli.data.sampling import first_per_class
from jadecli.model import build_model
from jadecli.objective import Objective
from jadecli.progress import NullReporter
from jadecli.spec import ModelSpec
from jadecli.trainer import Trainer, accuracy, train_one_epoch

MODELS = ("single", "paired", "jade")
SETUPS = {
    "paper": "paper shapes: 32x32x3 primary (1,000 labeled, random pixels: no SVHN here), "
    "MNIST 4,500 per class (28x28x1)",
    "builtin": "built-in pair: synth-street (1,000 labeled, 32x32x3) + synth-hand (28x28x1)",
    "usps": "USPS (100 labeled, 16x16x1) + MNIST (28x28x1)",
}
BATCH = 100
# The engine side trains what the reference loop trains: the paper's CNNs and summed loss, no
# augmentation (issue 5 made a different recipe the default; time to accuracy measures that).
PAPER_MODEL = {
    "arch": "paper",
    "augment": "none",
    "style_mix": 0.0,
    "loss_scale": "sum",
    "kl_weight": 1.0,
    "match_weight": 1.0,
    "ce_on_mean": False,
    "aux_ce_weight": 1e4,
    "primary_ce_weight": 1e5,
}


# --------------------------------------------------------------------------- data


def make_data(setup: str, data_dir: Path) -> tuple[TrainData, dict[str, Any]]:
    """The setup's TrainData and the TrainConfig fields that go with it."""
    if setup == "paper":
        gen = torch.Generator().manual_seed(0)
        train = torch.randint(0, 256, (1000, 3, 32, 32), dtype=torch.uint8, generator=gen)
        test = torch.randint(0, 256, (5000, 3, 32, 32), dtype=torch.uint8, generator=gen)
        labels = torch.arange(1000) % 10
        primary = Dataset(
            "svhn-shaped",
            list(DIGITS),
            ImageSet(train, labels),
            ImageSet(test, torch.arange(5000) % 10),
            "memory",
        )
        cfg = {"primary": "svhn", "auxiliary": "mnist", "n_labeled": 1000, "aux_per_class": 4500}
        cfg.update(PAPER_MODEL, data_dir=str(data_dir))
        aux = load_dataset("mnist", data_dir, False, None, NullReporter().warn, "--auxiliary")
        keep = first_per_class(aux.train.labels, aux.classes, 4500, "mnist")
        data = TrainData(
            primary=primary,
            auxiliary=aux,
            labeled_index=torch.arange(1000),
            labeled=primary.train,
            val_index=None,
            val=None,
            aux_train=aux.train.subset(keep),
            described={},
        )
        return data, cfg
    if setup == "builtin":
        cfg = {"primary": "synth-street", "auxiliary": "synth-hand", "n_labeled": 1000}
    else:
        cfg = {"primary": "usps", "auxiliary": "mnist", "n_labeled": 100}
    cfg.update(PAPER_MODEL, data_dir=str(data_dir))
    _, data = training_data(TrainConfig(**cfg), NullReporter())
    return data, cfg


def model_fields(kind: str, cfg_fields: dict[str, Any]) -> dict[str, Any]:
    """The TrainConfig fields of `kind`: the classifiers take none of JADE's options."""
    fields = {k: v for k, v in cfg_fields.items() if kind == "jade" or k not in JADE_ONLY}
    return {**fields, "model": kind}


# --------------------------------------------------------------------------- reference loop


class RefImages(TorchDataset):  # type: ignore[type-arg]
    """Like torchvision's MNIST / SVHN: uint8 arrays, PIL image + transform per sample."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        self.gray = images.shape[1] == 1
        # MNIST keeps (N, H, W); SVHN keeps (N, C, H, W) and transposes in __getitem__
        self.data = images[:, 0].numpy() if self.gray else images.numpy()
        self.targets = labels.tolist()
        self.transform = transforms.ToTensor()

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        if self.gray:
            img = Image.fromarray(self.data[i], mode="L")
        else:
            img = Image.fromarray(np.transpose(self.data[i], (1, 2, 0)))
        return self.transform(img), self.targets[i]


class RefPairs(TorchDataset):  # type: ignore[type-arg]
    """Each auxiliary image with a random labeled primary image of its class."""

    def __init__(self, aux: RefImages, primary: RefImages, seed: int = 0) -> None:
        self.aux, self.primary = aux, primary
        self.by_class: dict[int, list[int]] = {}
        for i, y in enumerate(primary.targets):
            self.by_class.setdefault(y, []).append(i)
        self.rng = random.Random(seed)

    def __len__(self) -> int:
        return len(self.aux)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        xa, y = self.aux[i]
        xp, _ = self.primary[self.rng.choice(self.by_class[y])]
        return xa, xp, y


class Reference:
    """The plain training and evaluation loops."""

    def __init__(self, model_kind: str, data: TrainData, device: torch.device) -> None:
        self.kind, self.device = model_kind, device
        torch.manual_seed(0)
        ptrain = data.primary
        self.model = build_model(_spec(model_kind, data)).to(device)
        fields = model_fields(model_kind, {**PAPER_MODEL, "primary": "mnist", "n_labeled": 10})
        fields["auxiliary"] = None if model_kind == "single" else "mnist"
        self.objective = Objective(TrainConfig(**fields), self.model.spec)
        self.opt = torch.optim.Adam(self.model.parameters(), lr=1e-3)
        primary = RefImages(data.labeled.images, data.labeled.labels)
        if model_kind == "single":
            self.loader: DataLoader[Any] = DataLoader(primary, batch_size=BATCH, shuffle=True)
        else:
            assert data.aux_train is not None
            aux = RefImages(data.aux_train.images, data.aux_train.labels)
            self.loader = DataLoader(RefPairs(aux, primary), batch_size=BATCH, shuffle=True)
        self.it = iter(self.loader)
        self.test = {"primary": ptrain.test}
        if data.auxiliary is not None:
            self.test["auxiliary"] = data.auxiliary.test

    def _next(self) -> Any:
        try:
            return next(self.it)
        except StopIteration:
            self.it = iter(self.loader)
            return next(self.it)

    def train(self, steps: int) -> int:
        self.model.train()
        dev, seen = self.device, 0
        for _ in range(steps):
            batch = self._next()
            if self.kind == "single":
                xa, (xp, y) = None, (t.to(dev) for t in batch)
            else:
                xa, xp, y = (t.to(dev) for t in batch)
            loss, _ = self.objective(self.model.forward_train(xa, xp), xa, xp, y)
            self.opt.zero_grad()
            loss.backward()
            self.opt.step()
            seen += len(y)
        _sync(dev)
        return seen

    def evaluate(self, role: str, n: int) -> int:
        test = self.test[role]
        ds = RefImages(test.images[:n], test.labels[:n])
        self.model.eval()
        correct = 0
        with torch.no_grad():
            for x, y in DataLoader(ds, batch_size=BATCH):
                x, y = x.to(self.device), y.to(self.device)
                correct += int((self.model.classify(role, x).argmax(1) == y).sum())
        return len(ds)


# --------------------------------------------------------------------------- the engine


class Engine:
    """jadecli's own training step and evaluation, as `jade train` runs them."""

    def __init__(
        self,
        model_kind: str,
        data: TrainData,
        cfg_fields: dict[str, Any],
        device: torch.device,
        precision: str,
    ) -> None:
        self.data, self.device, self.precision = data, device, precision
        self.cfg_fields = {**model_fields(model_kind, cfg_fields), "precision": precision}
        self.trainer: Trainer | None = None
        self.steps = 0

    def train(self, steps: int) -> int:
        if self.trainer is None or steps != self.steps:
            cfg = TrainConfig(**self.cfg_fields, epochs=1, epoch_size=steps * BATCH)
            state = self.trainer.model.state_dict() if self.trainer else None
            self.trainer = Trainer(cfg, self.data, self.device, self.precision)
            if state is not None:
                self.trainer.model.load_state_dict(state)
            self.steps = steps
        train_one_epoch(self.trainer, 0, NullReporter())
        _sync(self.device)
        return steps * BATCH

    def evaluate(self, role: str, n: int) -> int:
        assert self.trainer is not None
        ds = self.data.primary if role == "primary" else self.data.auxiliary
        assert ds is not None
        test = ds.test
        accuracy(
            self.trainer.model,
            role,
            test.images[:n],
            test.labels[:n],
            self.device,
            self.precision,
        )
        _sync(self.device)
        return min(n, len(test))


def _spec(kind: str, data: TrainData) -> ModelSpec:
    """The paper's model, as the engine side trains it (PAPER_MODEL; code-default sizes)."""
    aux = data.auxiliary
    return ModelSpec(
        kind=kind,
        arch="paper",
        primary_shape=data.primary.image_shape,
        auxiliary_shape=aux.image_shape if aux else None,
        num_classes=data.primary.num_classes,
        content_dim=10,
        style_dim=10,
        hidden_dim=500,
        dropout=0.0,
    )


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _rate(fn: Callable[[], int]) -> float:
    t0 = time.perf_counter()
    n = fn()
    return n / (time.perf_counter() - t0)


# --------------------------------------------------------------------------- measurements


@dataclass
class Row:
    setup: str
    model: str
    train: dict[str, list[float]]  # impl -> pairs/s per repetition
    evals: dict[str, dict[str, list[float]]]  # role -> impl -> images/s per repetition
    rss: dict[str, float]  # impl -> peak MiB (child process)


def impls(device: torch.device) -> list[tuple[str, str | None]]:
    """(name, precision) of each implementation timed; reference has no precision."""
    out: list[tuple[str, str | None]] = [("reference", None), ("engine fp32", "fp32")]
    if native_bf16(device):
        out.append(("engine bf16", "bf16"))
    return out


def build(
    name: str, precision: str | None, kind: str, data: TrainData, cfg: dict[str, Any], dev: Any
) -> Reference | Engine:
    if precision is None:
        return Reference(kind, data, dev)
    if kind == "single":  # as `jade train --model single` loads it: no auxiliary data
        data = replace(data, auxiliary=None, aux_train=None)
    return Engine(kind, data, cfg, dev, resolve_precision(precision, dev))


def measure(
    setup: str, data: TrainData, cfg: dict[str, Any], device: torch.device, args: Any
) -> list[Row]:
    rows = []
    for kind in MODELS:
        runners = {n: build(n, p, kind, data, cfg, device) for n, p in impls(device)}
        roles = ["primary"] + (["auxiliary"] if kind != "single" else [])
        for r in runners.values():  # warm-up: oneDNN/cuDNN pick and cache their kernels
            r.train(3)
            for role in roles:
                r.evaluate(role, 2 * BATCH)
        train: dict[str, list[float]] = {n: [] for n in runners}
        evals: dict[str, dict[str, list[float]]] = {r: {n: [] for n in runners} for r in roles}
        for rep in range(args.reps):
            order = list(runners) if rep % 2 == 0 else list(reversed(runners))
            for n in order:
                train[n].append(_rate(lambda r=runners[n]: r.train(args.steps)))
                for role in roles:
                    evals[role][n].append(
                        _rate(lambda r=runners[n], ro=role: r.evaluate(ro, args.eval_images))
                    )
        print(f"  {setup}/{kind}: " + _brief(train), file=sys.stderr, flush=True)
        rows.append(Row(setup, kind, train, evals, {}))
    return rows


def _brief(train: dict[str, list[float]]) -> str:
    return ", ".join(f"{n} {statistics.median(v):.0f}" for n, v in train.items()) + " pairs/s"


def child_rss(setup: str, kind: str, impl: str, args: Any) -> float:
    """Peak RSS (MiB) of a fresh process that loads the setup and trains + evaluates once."""
    cmd = [
        sys.executable,
        __file__,
        "--child",
        f"{setup},{kind},{impl}",
        "--data-dir",
        str(args.data_dir),
        "--device",
        args.device,
        "--steps",
        str(args.steps),
        "--eval-images",
        str(args.eval_images),
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return float(json.loads(out.strip().splitlines()[-1])["rss_mib"])


def run_child(spec: str, args: Any) -> None:
    setup, kind, impl = spec.split(",")
    device = resolve_device(args.device)
    data, cfg = make_data(setup, args.data_dir)
    precision = dict(impls(device)).get(impl)
    runner = build(impl, precision, kind, data, cfg, device)
    runner.train(args.steps)
    for role in ["primary"] + (["auxiliary"] if kind != "single" else []):
        runner.evaluate(role, args.eval_images)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"rss_mib": round(rss, 1)}))


def time_to_accuracy(args: Any) -> list[dict[str, Any]]:
    """The default recipe on USPS + MNIST through the CLI, default precision and fp32."""
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.tta_seeds:
            for precision in ("auto", "bf16"):
                out = Path(tmp) / f"{precision}-{seed}"
                cmd = [
                    "jade",
                    "train",
                    "--primary",
                    "usps",
                    "--auxiliary",
                    "mnist",
                    "--n-labeled",
                    "100",
                    "--data-dir",
                    str(args.data_dir),
                    "--seed",
                    str(seed),
                    "--device",
                    args.device,
                    "--out",
                    str(out),
                    "--no-progress",
                ]
                if precision != "auto":
                    cmd[-1:-1] = ["--precision", precision]
                t0 = time.perf_counter()
                subprocess.run(cmd, check=True, capture_output=True)
                wall = time.perf_counter() - t0
                manifest = _manifest(out)
                results.append(
                    {
                        "seed": seed,
                        "precision": manifest.get("precision"),
                        "requested": precision,
                        "wall_s": wall,
                        "train_s": manifest.get("train_seconds"),
                        "acc_primary": manifest["final_metrics"]["primary_test_accuracy"],
                        "acc_aux": manifest["final_metrics"]["auxiliary_test_accuracy"],
                        "command": " ".join(shlex.quote(c) for c in cmd),
                    }
                )
                print(f"  time to accuracy: {results[-1]}", file=sys.stderr, flush=True)
    return results


def _manifest(run: Path) -> dict[str, Any]:
    import yaml

    return dict(yaml.safe_load((run / "manifest.yaml").read_text()))


def paper_memory(args: Any) -> dict[str, Any]:
    """Peak RSS of `jade train` on the paper's protocol with full-size SVHN-format files."""
    from scipy.io import savemat

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "SVHN").mkdir()
        gen = np.random.default_rng(0)
        for split, n in (("train", 73_257), ("test", 26_032)):
            x = gen.integers(0, 256, (32, 32, 3, n), dtype=np.uint8)  # the .mat layout
            y = (np.arange(n) % 10 + 1).reshape(n, 1).astype(np.uint8)  # labels 1..10
            savemat(root / "SVHN" / f"{split}_32x32.mat", {"X": x, "y": y})
        (root / "MNIST").symlink_to(Path(args.data_dir).resolve() / "MNIST")
        cmd = [
            "jade",
            "train",
            "--primary",
            "svhn",
            "--n-labeled",
            "1000",
            "--auxiliary",
            "mnist",
            "--aux-per-class",
            "4500",
            "--data-dir",
            str(root),
            "--epochs",
            "2",
            "--epoch-size",
            "5000",
            "--device",
            args.device,
            "--out",
            str(root / "run"),
            "--no-progress",
        ]
        before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True)
        wall = time.perf_counter() - t0
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        shown = " ".join(shlex.quote(c) for c in cmd).replace(str(root), "$TMP")
        return {"rss_mib": peak / 1024, "grew": peak > before, "wall_s": wall, "command": shown}


def profile_steps(data: TrainData, cfg: dict[str, Any], device: torch.device) -> str:
    """Top operators (self time) of 10 JADE training steps, reference vs the fastest engine."""
    from torch.profiler import ProfilerActivity, profile

    parts = []
    act = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    best = impls(device)[-1]
    for name, precision in (("reference", None), best):
        runner = build(name, precision, "jade", data, cfg, device)
        runner.train(3)
        with profile(activities=act) as prof:
            runner.train(10)
        key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
        table = prof.key_averages().table(sort_by=key, row_limit=10, max_name_column_width=40)
        total = sum(e.self_cpu_time_total for e in prof.key_averages()) / 1e6
        parts.append(f"**{name}** (10 steps, {total:.2f} s of operator CPU time)\n\n```\n")
        parts[-1] += _trim_table(table) + "\n```\n"
    return "\n".join(parts)


def _trim_table(table: str) -> str:
    keep = []
    for line in table.splitlines():
        cols = re.split(r"\s{2,}", line.strip())
        keep.append("  ".join(cols[:4]) if len(cols) > 3 else line.strip())
    return "\n".join(keep)


# --------------------------------------------------------------------------- report


def machine(device: torch.device) -> str:
    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f", {kb / 2**20:.0f} GiB RAM"
    except (OSError, ValueError, IndexError):
        pass
    text = f"{cpu}, {os.cpu_count()} logical CPUs{mem}; torch {torch.__version__}, "
    text += f"{torch.get_num_threads()} threads"
    if device.type == "cuda":
        text += f"; GPU: {torch.cuda.get_device_name(device)}"
    text += f"; native bf16 on {device.type}: {'yes' if native_bf16(device) else 'no'}"
    return text


def _med(values: list[float]) -> float:
    return statistics.median(values)


def _spread(values: list[float]) -> str:
    return f"{_med(values):,.0f} ({min(values):,.0f}-{max(values):,.0f})"


def render(
    rows: list[Row],
    names: list[str],
    tta: list[dict[str, Any]],
    paper: dict[str, Any] | None,
    prof: str,
    args: Any,
    device: torch.device,
    seconds: float,
) -> str:
    engines = [n for n in names if n != "reference"]
    lines = [
        "# Throughput: jadecli engine vs a plain PyTorch loop",
        "",
        f"- Machine: {machine(device)}; device `{device}`.",
        f"- This machine's ceiling, {torch.get_num_threads()} threads (forward GFLOP/s): "
        + (
            ", ".join(f"{k} {v:.0f}" for k, v in args.peak.items())
            if args.peak
            else "not measured on a GPU"
        )
        + ". The default JADE step as a share of it, against old main and compiled: "
        "`python -m benchmarks.step_speed` (benchmarks/results/step_speed.md).",
        f"- Command: `{' '.join(shlex.quote(a) for a in sys.argv)}` ({seconds / 60:.1f} min).",
        f"- {args.reps} interleaved repetitions of {args.steps} training steps (batch {BATCH}) "
        f"and of evaluating the first {args.eval_images:,} test images of each dataset; median "
        "(min-max) shown. Same process, same threads; peak RSS from a fresh child process per "
        "cell (data loading included).",
        "- reference: torchvision-style datasets (PIL + `ToTensor()` per sample), per-sample "
        "same-class pairing in Python, default `DataLoader` (batch 100, shuffle, no workers), "
        "float32 NCHW, Adam, the same model and loss. engine: `train_one_epoch` and "
        "`trainer.accuracy` as `jade train` runs them (gradient clipping, finite checks and "
        f"metrics included), eval batch {EVAL_BATCH}; 'engine fp32' is `--precision fp32`, "
        "'engine bf16' is `--precision bf16` (autocast; what `--precision auto` picks where "
        "bf16 is native).",
        "",
        "Setups: " + "; ".join(f"**{k}**: {v}" for k, v in SETUPS.items() if k in args.setups),
        "",
        "## Training (pairs/s; single: labeled images/s)",
        "",
        "| setup | model | "
        + " | ".join(names)
        + " | "
        + " | ".join(f"{e} / ref" for e in engines)
        + " | "
        + " | ".join(f"peak RSS {n} (MiB)" for n in names)
        + " |",
        "|" + " --- |" * (2 + 2 * len(names) + len(engines)),
    ]
    for r in rows:
        ref = _med(r.train["reference"])
        cells = [_spread(r.train[n]) for n in names]
        ratios = [f"**{_med(r.train[e]) / ref:.2f}x**" for e in engines]
        rss = [f"{r.rss[n]:,.0f}" if n in r.rss else "-" for n in names]
        lines.append(f"| {r.setup} | {r.model} | " + " | ".join(cells + ratios + rss) + " |")
    lines += [
        "",
        "## Evaluation (test images/s: classify, posterior mean for jade)",
        "",
        "| setup | model | dataset | "
        + " | ".join(names)
        + " | "
        + " | ".join(f"{e} / ref" for e in engines)
        + " |",
        "|" + " --- |" * (3 + len(names) + len(engines)),
    ]
    for r in rows:
        for role, per in r.evals.items():
            ref = _med(per["reference"])
            cells = [_spread(per[n]) for n in names]
            ratios = [f"**{_med(per[e]) / ref:.2f}x**" for e in engines]
            lines.append(f"| {r.setup} | {r.model} | {role} | " + " | ".join(cells + ratios) + " |")
    if tta:
        lines += [
            "",
            "## Time to accuracy: default `jade train` recipe, USPS (10 per class) + MNIST",
            "",
            "| seed | precision | wall time (s) | training (s) | USPS test acc | MNIST test acc |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        for t in tta:
            lines.append(
                f"| {t['seed']} | {t['precision']} ({t['requested']}) | {t['wall_s']:.1f} | "
                f"{t['train_s']} | {100 * t['acc_primary']:.2f}% | {100 * t['acc_aux']:.2f}% |"
            )
        for req in ("auto", "bf16"):
            sel = [t for t in tta if t["requested"] == req]
            if sel:
                acc = [100 * t["acc_primary"] for t in sel]
                sd = statistics.stdev(acc) if len(acc) > 1 else 0.0
                lines.append(
                    f"| mean | {req} | {statistics.mean(t['wall_s'] for t in sel):.1f} | | "
                    f"{statistics.mean(acc):.2f} ± {sd:.2f}% | |"
                )
        lines += ["", f"Command (per seed): `{tta[0]['command']}`"]
    if paper:
        lines += [
            "",
            "## Peak memory of the paper's protocol",
            "",
            f"`{paper['command']}` (SVHN-format files of the official sizes, 73,257 train + "
            "26,032 test, random pixels; MNIST, first 4,500 per class): peak RSS "
            f"**{paper['rss_mib']:,.0f} MiB**, {paper['wall_s']:.0f} s wall.",
        ]
    if prof:
        lines += ["", "## Where the time goes: 10 JADE steps, paper shapes", "", prof]
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir", type=Path, default=Path("../shared/data"))
    ap.add_argument("--device", default="auto")
    ap.add_argument("--setups", default="paper,builtin,usps")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--steps", type=int, default=30, help="training steps per repetition")
    ap.add_argument("--eval-images", type=int, default=5000)
    ap.add_argument("--tta-seeds", default="0,1,2", help="seeds of the time-to-accuracy runs")
    ap.add_argument("--no-memory", action="store_true", help="skip the child-process RSS")
    ap.add_argument("--no-paper-memory", action="store_true")
    ap.add_argument("--quick", action="store_true", help="tiny smoke run (numbers meaningless)")
    ap.add_argument("--out", type=Path, default=None, help="write the markdown report here")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        run_child(args.child, args)
        return 0
    args.setups = [s for s in args.setups.split(",") if s]
    args.tta_seeds = [int(s) for s in args.tta_seeds.split(",") if s]
    if args.quick:
        args.reps, args.steps, args.eval_images, args.tta_seeds = 1, 2, 200, []
        args.no_paper_memory = True
    device = resolve_device(args.device)
    t0 = time.perf_counter()
    cpu = device.type == "cpu"
    args.peak = peaks(torch.get_num_threads(), native_bf16(device)) if cpu else {}
    names = [n for n, _ in impls(device)]
    rows: list[Row] = []
    prof = ""
    for setup in args.setups:
        print(f"{setup}: {SETUPS[setup]}", file=sys.stderr, flush=True)
        data, cfg = make_data(setup, args.data_dir)
        rows += measure(setup, data, cfg, device, args)
        if setup == "paper" and not args.quick:
            prof = profile_steps(data, cfg, device)
        del data
    if not args.no_memory:
        for r in rows:
            r.rss = {n: child_rss(r.setup, r.model, n, args) for n in names}
    tta = time_to_accuracy(args) if args.tta_seeds else []
    paper = None if args.no_paper_memory else paper_memory(args)
    report = render(rows, names, tta, paper, prof, args, device, time.perf_counter() - t0)
    print(report)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(report, encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
