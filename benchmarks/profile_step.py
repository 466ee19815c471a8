"""Where the time of one default training step goes, by torch.profiler.

Builds what `jade train` builds for a setup (its default recipe, the real `Trainer`), runs
`train_one_epoch` for a few warm-up steps, then profiles `--steps` more and splits the wall time
two ways:

- **by phase** of the step: batch (gather, 8-bit -> float, augmentation, style mix), forward,
  objective, backward, optimiser (clip, finite check, Adam), and the rest of the loop;
- **by kind of arithmetic** (each aten op's own time): convolutions, BatchNorm, matrix products,
  element-wise and reductions, grid sampling (augmentation), memory (copies, gathers), and the
  time in no op at all (Python and dispatch overhead).

    python -m benchmarks.profile_step --data-dir ../shared/data --setup usps \
        --precision fp32 [--compile] [--threads 1]

Against another checkout (e.g. old main), run the file with that checkout first on the path:

    PYTHONPATH=../base python benchmarks/profile_step.py --data-dir ../shared/data

The table printed is markdown (for `benchmarks/results/profile.md`).
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch.autograd.profiler_util import FunctionEvent
from torch.profiler import ProfilerActivity, profile, record_function

import jadecli
from jadecli.compute import configure_allocator, resolve_device
from jadecli.config import TrainConfig
from jadecli.data.pair import training_data
from jadecli.progress import NullReporter
from jadecli.trainer import Trainer, train_one_epoch

# The setups: a default `jade train` on real data, as its flags.
SETUPS: dict[str, dict[str, Any]] = {
    "usps": {"primary": "usps", "auxiliary": "mnist", "n_labeled": 100},  # 28 px, grey
    "mnistm": {"primary": "mnist-m", "auxiliary": "mnist", "n_labeled": 100},  # 32 px, colour
    "mnistm128": {  # 128 px colour: MNIST-M and MNIST upscaled
        "primary": "mnist-m",
        "auxiliary": "mnist",
        "n_labeled": 100,
        "primary_size": 128,
        "auxiliary_size": 128,
        "aux_per_class": 300,
    },
}
PHASES = ("batch", "forward", "objective", "backward", "optimiser")
KINDS = {
    "convolution": ("conv",),
    "batchnorm": ("batch_norm",),
    "matrix product": ("addmm", "aten::mm", "bmm", "linear", "matmul"),
    "pooling, up-sampling": ("pool", "upsample", "pixel_shuffle"),
    "grid sample": ("grid_sampler", "affine_grid"),
}
# ops that only move, copy or allocate memory (exact names)
MEMORY = {
    f"aten::{name}"
    for name in (
        "copy_", "index", "index_select", "gather", "clone", "contiguous", "cat", "_to_copy",
        "to", "empty", "empty_strided", "empty_like", "zeros_like", "zero_", "fill_", "stack",
        "as_strided", "t", "transpose", "permute", "view", "reshape", "expand", "expand_as",
        "slice", "select", "detach", "narrow", "unsqueeze", "squeeze", "flatten", "resize_",
        "split", "chunk", "unbind", "set_", "lift_fresh", "alias", "new_empty", "new_zeros",
    )
}  # fmt: skip


def kind_of(name: str) -> str:
    """The kind of arithmetic an aten op is (KINDS, MEMORY), else element-wise and reductions."""
    if name in MEMORY:
        return "memory (copies, layout, allocation)"
    for kind, keys in KINDS.items():
        if any(k in name for k in keys):
            return kind
    return "element-wise"


def build(setup: str, data_dir: str, precision: str, compile_: bool, steps: int) -> Trainer:
    cfg = TrainConfig(**SETUPS[setup], data_dir=data_dir, precision=precision, epochs=1)
    cfg = replace(cfg, epoch_size=steps * cfg.batch_size)
    if hasattr(cfg, "compile"):  # an older checkout (PYTHONPATH=...) has no --compile
        cfg = replace(cfg, compile=compile_)
    cfg, data = training_data(cfg, NullReporter())
    device = resolve_device("cpu")
    return Trainer(cfg, data, device, cfg.precision if precision != "auto" else "fp32")


def scoped(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with record_function(f"phase:{name}"):
            return fn(*args, **kwargs)

    return wrapper


def instrument(t: Trainer) -> None:
    """Mark the phases of the real step for the profiler (wrapping, not changing, its parts)."""
    t.batches._batch = scoped("batch", t.batches._batch)  # type: ignore[method-assign]
    t.objective.__class__ = type(  # the objective is called as an object
        "ProfiledObjective",
        (t.objective.__class__,),
        {"__call__": scoped("objective", t.objective.__class__.__call__)},
    )
    t.optimizer.step = scoped("optimiser", t.optimizer.step)  # type: ignore[method-assign]
    import torch.nn.utils as nn_utils

    nn_utils.clip_grad_norm_ = scoped("optimiser", nn_utils.clip_grad_norm_)  # type: ignore


def phase_of(ev: FunctionEvent) -> str:
    node: FunctionEvent | None = ev
    while node is not None:
        if node.name.startswith("phase:"):
            return node.name[len("phase:") :]
        if node.name.startswith("autograd::engine::evaluate_function"):
            return "backward"
        node = node.cpu_parent
    return "forward"  # what is left of the step: the model's forward (and the loop's glue)


def breakdown(prof: Any, wall_us: float) -> tuple[dict[str, float], dict[str, float]]:
    """(phase -> us, kind -> us) over the profiled steps, from each aten op's own time."""
    phases: dict[str, float] = defaultdict(float)
    kinds: dict[str, float] = defaultdict(float)
    for ev in prof.events():
        if not ev.name.startswith("aten::"):
            continue
        own = ev.self_cpu_time_total
        kinds[kind_of(ev.name)] += own
        phases[phase_of(ev)] += own
    in_ops = sum(kinds.values())
    kinds["no op (Python, dispatch)"] = max(wall_us - in_ops, 0.0)
    return dict(phases), dict(kinds)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--setup", choices=sorted(SETUPS), default="usps")
    ap.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    ap.add_argument("--compile", action="store_true", help="the step under torch.compile")
    ap.add_argument("--steps", type=int, default=20, help="steps profiled (after as many warm-up)")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    configure_allocator()
    t = build(args.setup, args.data_dir, args.precision, args.compile, args.steps)
    start = time.perf_counter()
    train_one_epoch(t, 0, NullReporter())  # warm-up (and compilation)
    warm = time.perf_counter() - start
    instrument(t)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        start = time.perf_counter()
        train_one_epoch(t, 1, NullReporter())
        wall = (time.perf_counter() - start) * 1e6
    phases, kinds = breakdown(prof, wall)
    per_step = wall / args.steps / 1000
    flags = " ".join(f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in _flags())
    print(
        f"## {args.setup}, {args.precision}{', compiled' if args.compile else ''}: "
        f"{per_step:.1f} ms/step ({args.threads} thread(s), batch {t.cfg.batch_size})\n"
    )
    print(
        f"CPU: {_cpu_model() or platform.machine()}; flags: {flags}; jadecli from "
        f"{Path(jadecli.__file__).parent.parent}; torch {torch.__version__}; "
        f"warm-up epoch {warm:.1f} s\n"
    )
    for title, table in (("phase", phases), ("kind", kinds)):
        print(f"| {title} | ms/step | share |\n|---|---:|---:|")
        for name, us in sorted(table.items(), key=lambda kv: -kv[1]):
            print(f"| {name} | {us / args.steps / 1000:.1f} | {us / wall:.0%} |")
        print()


def _flags() -> set[str]:
    try:
        return set(open("/proc/cpuinfo").read().split())
    except OSError:
        return set()


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return os.environ.get("PROCESSOR_IDENTIFIER", "")


if __name__ == "__main__":
    main()
