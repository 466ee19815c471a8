"""Training throughput of one `jade train` process against `torchrun` with N processes.

Each arm trains the same JADE run (same config, same seed) from the command line, as a user
would, and the pairs/s of its epochs after the first (the first includes warm-up) are read back
from its metrics.csv. The arms are interleaved over repetitions, so a busy machine slows all of
them alike.

- **one process**: `jade train ...` with torch's default thread count (all usable CPUs);
- **torchrun N**: `torchrun --standalone --nproc-per-node N -m jadecli train ...` (torchrun gives
  each process OMP_NUM_THREADS=1 unless it is set). The global batch stays `--batch-size`.

    python -m benchmarks.distributed --data-dir DATA_DIR --nproc 2 \
        --out benchmarks/results/distributed.md

On a machine with GPUs, `--device auto` gives each process its own (cuda:LOCAL_RANK).
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

DEFAULT_TRAIN = (
    "--primary mnist-m --auxiliary mnist --n-labeled 100 --aux-per-class 4500 "
    "--auxiliary-pad 2 --model jade --epochs 3 --epoch-size 3000 --seed 0 --eval-every 0"
)


def arm_command(nproc: int, train: list[str], out: Path) -> list[str]:
    jade = [*train, "--out", str(out), "--no-progress"]
    if nproc == 0:
        return [sys.executable, "-m", "jadecli", "train", *jade]
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    return [*launcher, "--nproc-per-node", str(nproc), "-m", "jadecli", "train", *jade]


def run_arm(nproc: int, train: list[str], out: Path) -> dict[str, float]:
    env = dict(os.environ)
    if nproc == 0:
        env.pop("OMP_NUM_THREADS", None)
    t0 = time.perf_counter()
    proc = subprocess.run(arm_command(nproc, train, out), capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"arm nproc={nproc} failed:\n{proc.stderr[-2000:]}")
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    rates = [float(r["examples_per_s"]) for r in rows[1:]] or [float(rows[0]["examples_per_s"])]
    manifest = yaml.safe_load((out / "manifest.yaml").read_text())
    acc = manifest["final_metrics"]["primary_test_accuracy"]
    return {
        "rate": statistics.median(rates),
        "wall": wall,
        "train_seconds": float(manifest.get("train_seconds") or 0),
        "acc": float("nan") if acc is None else float(acc),
    }


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--nproc", default="2", help="comma-separated process counts for torchrun")
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--train", default=DEFAULT_TRAIN, help="the jade train flags of every arm")
    ap.add_argument("--out", type=Path, default=None, help="markdown file (default: stdout)")
    args = ap.parse_args()
    train = [*shlex.split(args.train), "--data-dir", args.data_dir]
    arms = [0, *(int(n) for n in args.nproc.split(","))]
    results: dict[int, list[dict[str, float]]] = {a: [] for a in arms}
    t_start = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(args.reps):
            for arm in arms:
                out = Path(tmp) / f"arm{arm}-rep{rep}"
                results[arm].append(run_arm(arm, train, out))
                r = results[arm][-1]
                print(f"rep {rep} arm {arm}: {r['rate']:.0f} pairs/s", file=sys.stderr)
    minutes = (time.time() - t_start) / 60

    def name(arm: int) -> str:
        return "one process" if arm == 0 else f"torchrun, {arm} processes"

    base = statistics.median(r["rate"] for r in results[0])
    cpu = cpu_name()
    lines = [
        "# Training throughput: one process against torchrun",
        "",
        f"- Machine: {cpu}, {os.cpu_count()} logical CPUs; {platform.platform()}.",
        f"- Command: `python {' '.join(shlex.quote(a) for a in sys.argv)}` ({minutes:.1f} min).",
        f"- Every arm: `jade train {args.train} --data-dir {args.data_dir}`; one process with "
        "torch's default threads, torchrun processes with OMP_NUM_THREADS=1 (torchrun's "
        "default). The global batch is `--batch-size` in every arm.",
        f"- pairs/s: median over epochs 2+ of each run's metrics.csv, then median (min-max) over "
        f"{args.reps} interleaved repetitions.",
        "",
        "| arm | pairs/s | vs one process | wall s per run (start-up included) | test acc |",
        "| --- | --- | --- | --- | --- |",
    ]
    for arm in arms:
        rates = [r["rate"] for r in results[arm]]
        med = statistics.median(rates)
        walls = statistics.median(r["wall"] for r in results[arm])
        accs = ", ".join(f"{100 * r['acc']:.2f}" for r in results[arm])
        lines.append(
            f"| {name(arm)} | {med:,.0f} ({min(rates):,.0f}-{max(rates):,.0f}) | "
            f"{med / base:.2f}x | {walls:.0f} | {accs} |"
        )
    text = "\n".join(lines) + "\n"
    if args.out:
        args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
