"""The default training step's speed: this checkout against old main, compiled or not, against
a plain loop, and as a share of this machine's arithmetic peak.

For each setup (a default `jade train` on real data: USPS + MNIST at 28 px, MNIST-M + MNIST at
32 px, both upscaled to 64 and 128 px) every arm trains in a process of its own, one at a time,
in alternating repetitions of `--steps` steps (arm order reversed every other repetition):

- **main**: `train_one_epoch` of the checkout at `--baseline` (e.g. a git worktree of old main);
- **new**: `train_one_epoch` of this checkout (`--compile off`);
- **new compiled**: the same under torch.compile (`--compile on`), its start-up (the compilation,
  in the warm-up epoch) reported beside;
- **plain loop**: the same model, objective and batches in the loop a PyTorch user writes
  (forward, loss, backward, Adam): no clipping, finite check, metric sums or schedule, so
  new / plain is the engine's own overhead;
- in **bf16** too (`--precision bf16`) where this CPU computes bf16 natively.

The peak: matrix product (2048 x 2048) and convolution (the trunk's widest, 64 -> 128 3x3 at
batch 100) in fp32 and bf16, on the same threads; the step's share of it counts the step's
floating-point operations (torch.utils.flop_counter: convolutions and matrix products, forward
and backward) over its time.

    python -m benchmarks.step_speed --data-dir ../shared/data --baseline ../base \
        --out benchmarks/results/step_speed.md
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

SETUPS: dict[str, dict[str, Any]] = {
    "usps 28px": {"primary": "usps", "auxiliary": "mnist", "n_labeled": 100},
    "mnist-m 32px": {"primary": "mnist-m", "auxiliary": "mnist", "n_labeled": 100},
    "mnist-m 64px": {
        "primary": "mnist-m",
        "auxiliary": "mnist",
        "n_labeled": 100,
        "primary_size": 64,
        "auxiliary_size": 64,
        "aux_per_class": 500,
    },
    "mnist-m 128px": {
        "primary": "mnist-m",
        "auxiliary": "mnist",
        "n_labeled": 100,
        "primary_size": 128,
        "auxiliary_size": 128,
        "aux_per_class": 300,
    },
}


# --------------------------------------------------------------------------- one arm (child)


def child(spec: dict[str, Any]) -> None:
    """Train one arm: a warm-up epoch, then one timed epoch per line read from stdin; prints a
    JSON line per epoch. Runs under the checkout on PYTHONPATH (this one or --baseline)."""
    import torch

    from jadecli.config import TrainConfig
    from jadecli.data.pair import training_data
    from jadecli.progress import NullReporter
    from jadecli.trainer import Trainer, train_one_epoch

    torch.set_num_threads(spec["threads"])
    fields = {**SETUPS[spec["setup"]], "data_dir": spec["data_dir"], "epochs": 1}
    fields["epoch_size"] = spec["steps"] * 100
    fields["precision"] = spec["precision"]
    if "compile" in TrainConfig.__dataclass_fields__:  # old main has no --compile
        fields["compile"] = spec["arm"] == "new compiled"
    cfg, data = training_data(TrainConfig(**fields), NullReporter())
    t = Trainer(cfg, data, torch.device("cpu"), spec["precision"])
    run = plain_epoch if spec["arm"] == "plain loop" else train_one_epoch
    start = time.perf_counter()
    run(t, 0, NullReporter())  # warm-up: kernels chosen and cached, the step compiled
    print(json.dumps({"warmup": time.perf_counter() - start, "flops": step_flops(t)}), flush=True)
    for line in sys.stdin:
        if not line.strip():
            break
        start = time.perf_counter()
        run(t, 1, NullReporter())
        print(json.dumps({"seconds": time.perf_counter() - start}), flush=True)


def plain_epoch(t: Any, epoch: int, reporter: Any) -> None:
    """The loop a PyTorch user writes around the same model, objective and batches."""
    import torch

    from jadecli.compute import autocast

    torch.manual_seed(epoch)
    t.model.train()
    for _, b in t.batches.epoch(epoch):
        with autocast(t.device, t.precision):
            out = t.model.forward_train(b.x_aux, b.x_primary, t.request)
        loss, _ = t.objective(out, b.x_aux, b.x_primary, b.y)
        t.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        t.optimizer.step()


def step_flops(t: Any) -> float:
    """Floating-point operations of one training step (forward and backward)."""
    from torch.utils.flop_counter import FlopCounterMode

    from jadecli.compute import autocast

    _, b = next(t.batches.epoch(0))
    with FlopCounterMode(display=False) as counter:
        with autocast(t.device, t.precision):
            out = t.model.forward_train(b.x_aux, b.x_primary, t.request)
        loss, _ = t.objective(out, b.x_aux, b.x_primary, b.y)
        loss.backward()
    t.model.zero_grad(set_to_none=True)
    return float(counter.get_total_flops())


# --------------------------------------------------------------------------- peaks


def peaks(threads: int, bf16: bool) -> dict[str, float]:
    """GFLOP/s of a 2048 x 2048 matrix product and of a convolution of the trunk's (64 -> 128,
    3x3, on a 16x16 map, batch 100, channels-last), forward, fp32 and (if native) bf16."""
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(threads)
    out = {}
    for dtype in [torch.float32] + ([torch.bfloat16] if bf16 else []):
        name = "fp32" if dtype == torch.float32 else "bf16"
        a, b = torch.randn(2048, 2048, dtype=dtype), torch.randn(2048, 2048, dtype=dtype)
        out[f"matmul {name}"] = _gflops(lambda a=a, b=b: a @ b, 2 * 2048**3)
        x = torch.randn(100, 64, 16, 16, dtype=dtype).contiguous(memory_format=torch.channels_last)
        w = torch.randn(128, 64, 3, 3, dtype=dtype).contiguous(memory_format=torch.channels_last)
        flops = 2 * 100 * 16 * 16 * 128 * 64 * 9
        out[f"conv {name}"] = _gflops(lambda x=x, w=w: F.conv2d(x, w, padding=1), flops)
    return out


def _gflops(fn: Any, flops: float, reps: int = 5) -> float:
    fn()
    best = float("inf")
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return flops / best / 1e9


# --------------------------------------------------------------------------- the parent


class Arm:
    def __init__(self, name: str, precision: str, setup: str, args: argparse.Namespace):
        self.name, self.precision = name, precision
        root = Path(args.baseline if name == "main" else Path(__file__).parent.parent).resolve()
        spec = {"arm": name, "precision": precision, "setup": setup, "threads": args.threads,
                "steps": args.steps, "data_dir": args.data_dir}  # fmt: skip
        # the child runs this file as a script, so it imports jadecli from `root` alone
        env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": str(args.threads)}
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--child", json.dumps(spec)], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, text=True, env=env, cwd=root,
        )  # fmt: skip
        first = self._read()
        self.warmup, self.flops = first["warmup"], first["flops"]
        self.seconds: list[float] = []

    def _read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise SystemExit(f"{self.name}: the child process ended (exit {self.proc.wait()})")
        return json.loads(line)

    def epoch(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()
        self.seconds.append(self._read()["seconds"])

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write("\n")
        self.proc.stdin.close()
        self.proc.wait()


def cpu_description() -> str:
    from jadecli.compute import cpu_bf16_features

    model = platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
        flags = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        flags = set()
    isa = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in flags]
    native = ", ".join(cpu_bf16_features()) or "none"
    return f"{model}; {', '.join(isa) or 'no AVX'}; native bf16: {native}"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        child(json.loads(argv[1]))
        return 0
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--baseline", default=None, help="a checkout of old main (the 'main' arm)")
    ap.add_argument("--setups", default=",".join(SETUPS), help="comma-separated")
    ap.add_argument("--arms", default="main,new,new compiled,plain loop", help="comma-separated")
    ap.add_argument("--steps", type=int, default=20, help="steps per timed repetition")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    from jadecli.compute import cpu_bf16_features

    native = bool(cpu_bf16_features())
    names = [a for a in args.arms.split(",") if a and (a != "main" or args.baseline)]
    precisions = ["fp32"] + (["bf16"] if native else [])
    peak = peaks(args.threads, native)
    lines = [
        "# The default training step: speed and share of the machine's peak",
        "",
        f"CPU: {cpu_description()}; {args.threads} thread(s); torch "
        f"{__import__('torch').__version__}; {args.steps} steps x {args.reps} alternating "
        f"repetitions per arm (batch 100 pairs); command: `python -m benchmarks.step_speed "
        f"{' '.join(argv)}`",
        "",
        "Peak (forward, GFLOP/s): " + ", ".join(f"{k} {v:.0f}" for k, v in peak.items()),
        "",
        "| setup | precision | arm | pairs/s (median) | repetitions | vs main | GFLOP/s | share "
        "of conv peak | start-up s |",
        "|---|---|---|---:|---|---:|---:|---:|---:|",
    ]
    for setup in [s for s in args.setups.split(",") if s]:
        for precision in precisions:
            arms = [Arm(n, precision, setup, args) for n in names]
            for rep in range(args.reps):
                for arm in arms if rep % 2 == 0 else reversed(arms):
                    arm.epoch()
            for arm in arms:
                arm.close()
            pairs = {a.name: [args.steps * 100 / s for s in a.seconds] for a in arms}
            base = statistics.median(pairs["main"]) if "main" in pairs else None
            for a in arms:
                med = statistics.median(pairs[a.name])
                gflops = a.flops * args.steps / statistics.median(a.seconds) / 1e9
                share = gflops / peak[f"conv {precision}"]
                vs = f"{med / base:.2f}x" if base else ""
                reps = " / ".join(f"{p:.0f}" for p in pairs[a.name])
                lines.append(
                    f"| {setup} | {precision} | {a.name} | {med:.0f} | {reps} | {vs} | "
                    f"{gflops:.0f} | {share:.0%} | {a.warmup:.0f} |"
                )
                print(lines[-1], file=sys.stderr, flush=True)
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        Path(args.out).write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
