"""BatchNorm per dataset against one BatchNorm for both, on real data, same seeds.

Trains (or, with --reuse, reads) `jade train` runs through `benchmarks/accuracy.py` with
`--batch-norm per-dataset` and `--batch-norm shared`, then renders both arms side by side:
primary and auxiliary test accuracy after the last epoch, and the per-seed differences
(same seed, same labeled subset).

    python -m benchmarks.batch_norm --data-dir DATA_DIR --pairs mnistm10,usps10 \
        --models paired,jade --seeds 0,1,2 --out benchmarks/results/batch_norm.md

Nothing is chosen on test data: both arms run the default recipe to its last epoch.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import os
import platform
import subprocess
import sys
from pathlib import Path

from jadecli.summarize import mean_std

ARMS = ("shared", "per-dataset")  # before, after
HERE = Path(__file__).resolve().parent


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pairs", default="mnistm10,usps10", help="pairs of benchmarks/accuracy.py")
    ap.add_argument("--models", default="paired,jade", help="comma-separated")
    ap.add_argument("--seeds", default="0,1,2", help="comma-separated")
    ap.add_argument("--data-dir", default="../shared/data")
    ap.add_argument("--runs", default="runs", help="arms go to RUNS/bn-<arm>/")
    ap.add_argument("--reuse", action="store_true", help="read completed runs, train the rest")
    ap.add_argument("--render-only", action="store_true", help="train nothing; render what exists")
    ap.add_argument("--out", default=None, help="markdown file to write (default: print only)")
    return ap.parse_args(argv)


def train_arm(arm: str, args: argparse.Namespace) -> None:
    cmd = [sys.executable, str(HERE / "accuracy.py"), "--pairs", args.pairs]
    cmd += ["--models", args.models, "--seeds", args.seeds, "--data-dir", args.data_dir]
    cmd += ["--runs", str(Path(args.runs) / f"bn-{arm}")]
    cmd += ["--reuse"] if args.reuse else []
    cmd += ["--", "--batch-norm", arm]
    subprocess.run(cmd, check=False)


def final_row(run: Path) -> dict[str, str] | None:
    """The last metrics.csv row of a completed run, else None."""
    manifest = run / "manifest.yaml"
    metrics = run / "metrics.csv"
    if not manifest.is_file() or "status: completed" not in manifest.read_text():
        return None
    rows = list(csv.DictReader(metrics.open()))
    return rows[-1] if rows else None


def pct(value: str | None) -> float | None:
    return 100 * float(value) if value not in (None, "") else None


def render(args: argparse.Namespace) -> str:
    lines = [
        "# BatchNorm per dataset vs one BatchNorm for both",
        "",
        f"Measured {datetime.date.today()} on {platform.machine()} ({os.cpu_count()} CPUs), "
        "default recipe otherwise, `--device cpu`, fp32 (no native bf16 on this CPU), one "
        "thread per run. Accuracy is **test** accuracy (%) after the last epoch; nothing was "
        "chosen on test data. Differences are per seed (same seed, same labeled subset): "
        "per-dataset minus shared.",
        "",
        f"Command: `python -m benchmarks.batch_norm --pairs {args.pairs} --models "
        f"{args.models} --seeds {args.seeds} --data-dir {args.data_dir}`",
        "",
    ]
    seeds = [int(s) for s in args.seeds.split(",") if s]
    for pair in [p for p in args.pairs.split(",") if p]:
        lines += [f"## {pair}", ""]
        lines.append(
            "| model | dataset | shared (before) | per-dataset (after) | difference | seeds |"
        )
        lines.append("| --- | --- | --- | --- | --- | --- |")
        for model in [m for m in args.models.split(",") if m]:
            got: dict[str, dict[int, dict[str, float | None]]] = {a: {} for a in ARMS}
            for arm in ARMS:
                for seed in seeds:
                    row = final_row(Path(args.runs) / f"bn-{arm}" / f"{pair}-{model}-seed{seed}")
                    if row is not None:
                        got[arm][seed] = {
                            "primary": pct(row.get("test_acc_primary")),
                            "auxiliary": pct(row.get("test_acc_aux")),
                        }
            both = sorted(set(got["shared"]) & set(got["per-dataset"]))
            for dataset in ("primary", "auxiliary"):
                pairs = [(got["shared"][s][dataset], got["per-dataset"][s][dataset]) for s in both]
                before = [a for a, b in pairs if a is not None and b is not None]
                after = [b for a, b in pairs if a is not None and b is not None]
                if not before or len(before) != len(both):
                    continue
                diffs = [b - a for a, b in zip(before, after, strict=True)]
                per_seed = ", ".join(f"s{s}: {d:+.2f}" for s, d in zip(both, diffs, strict=True))
                lines.append(
                    f"| {model} | {dataset} | {mean_std(before)} | {mean_std(after)} | "
                    f"**{mean_std(diffs)}** ({per_seed}) | {len(both)} |"
                )
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not args.render_only:
        for arm in ARMS:
            train_arm(arm, args)
    text = render(args)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
