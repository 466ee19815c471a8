"""Run single, paired and JADE on one dataset pair through the real `jade train` CLI, and print
one markdown table: primary/auxiliary test accuracy and wall time per run, with the commands.

    python -m benchmarks.compare_models --primary folder:DATA_DIR/USPS --auxiliary mnist \
        --data-dir DATA_DIR --n-labeled 100 --seeds 0 --out runs/compare

Every number is read back from the runs' manifest.yaml files; models are never selected on test
data (each run reports its last epoch). Extra arguments after `--` go to every `jade train`.
"""

from __future__ import annotations

import argparse
import platform
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import yaml

from jadecli.summarize import mean_std


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--primary", required=True)
    ap.add_argument("--auxiliary", required=True)
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--n-labeled", default="100")
    ap.add_argument("--models", default="single,paired,jade")
    ap.add_argument("--seeds", default="0", help="comma-separated seeds")
    ap.add_argument("--out", default="runs/compare", help="folder for the run directories")
    ap.add_argument("extra", nargs="*", help="more `jade train` flags (after --)")
    args = ap.parse_args()

    out = Path(args.out)
    results: dict[str, list[tuple[int, float, float | None, float]]] = {}
    commands: list[str] = []
    for model in args.models.split(","):
        for seed in [int(s) for s in args.seeds.split(",")]:
            run = out / f"{model}-seed{seed}"
            cmd = [
                "jade",
                "train",
                "--primary",
                args.primary,
                "--n-labeled",
                args.n_labeled,
                "--model",
                model,
                "--seed",
                str(seed),
                "--out",
                str(run),
                "--overwrite",
                "--no-progress",
            ]
            if model != "single":
                cmd += ["--auxiliary", args.auxiliary]
            if args.data_dir:
                cmd += ["--data-dir", args.data_dir]
            cmd += args.extra
            commands.append(shlex.join(cmd))
            t0 = time.perf_counter()
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
            wall = time.perf_counter() - t0
            if proc.returncode != 0:
                sys.stderr.write(proc.stdout + proc.stderr)
                return proc.returncode
            final = yaml.safe_load((run / "manifest.yaml").read_text())["final_metrics"]
            acc_a = final["auxiliary_test_accuracy"]
            results.setdefault(model, []).append(
                (seed, 100 * final["primary_test_accuracy"], acc_a and 100 * acc_a, wall)
            )
            print(
                f"{model} seed {seed}: primary {results[model][-1][1]:.2f}%  {wall:.0f} s",
                file=sys.stderr,
                flush=True,
            )

    print(f"## {args.primary} ({args.n_labeled} labeled) + {args.auxiliary}\n")
    print(
        f"Machine: {platform.processor() or platform.machine()}, "
        f"{torch.get_num_threads()} torch threads, torch {torch.__version__}.\n"
    )
    print("| model | primary test acc (%) | per seed | auxiliary test acc (%) | wall s / run |")
    print("| --- | --- | --- | --- | --- |")
    for model, rows in results.items():
        prim = [r[1] for r in rows]
        aux = [r[2] for r in rows if r[2] is not None]
        per_seed = ", ".join(f"{r[1]:.2f}" for r in rows)
        print(
            f"| {model} | {mean_std(prim)} | {per_seed} | {mean_std(aux) if aux else '-'} | "
            f"{statistics.mean(r[3] for r in rows):.0f} |"
        )
    print("\nCommands:\n")
    for c in commands:
        print(f"    {c}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
