"""Does bf16 train JADE as well as fp32? Dev accuracy of the default recipe in both, per seed.

For each pair (default: USPS 10/class + MNIST, MNIST-M 10/class + MNIST) and seed, the same
`jade train` runs twice, `--precision fp32` and `--precision bf16`; each is scored on dev data
(the primary's training images outside its labeled subset, `jade evaluate RUN --split
train-unlabeled`) and, once, on test. The table gives the per-seed bf16 - fp32 differences and
their 95% Student t interval: bf16 is "within noise" of fp32 when the interval holds 0.

On a CPU without native bf16 (AVX2 only) real bf16 is ~13x slower than fp32; `--simulate` then
runs the bf16 arm through `benchmarks.bf16sim` (autocast's bf16 casts, products computed in fp32
on the bf16 values and rounded to bf16: the numerics of native bf16 at fp32 speed).

    python -m benchmarks.bf16_parity --data-dir ../shared/data --parallel 2 --simulate \
        --out benchmarks/results/bf16_parity.md
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from benchmarks.accuracy import PAIRS, Result, parse_args, run_one, run_threads
from benchmarks.stats import format_ci, paired_ci, verdict
from jadecli.compute import cpu_bf16_features

ARMS = ("fp32", "bf16")


def arm_args(base: argparse.Namespace, arm: str, simulate: bool) -> argparse.Namespace:
    args = argparse.Namespace(**vars(base))
    args.runs = str(Path(base.runs) / arm)
    args.extra = [*base.extra, "--precision", arm]
    args.dev = True
    if arm == "bf16" and simulate:
        args.launcher = "benchmarks.bf16sim"
    return args


def cpu_line() -> str:
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    flags = ", ".join(cpu_bf16_features()) or "none"
    return f"{model}, {os.cpu_count()} CPUs, native bf16 features: {flags}"


def render(
    results: dict[tuple[str, int, str], Result],
    pairs: list[str],
    simulate: bool,
    wall: float,
    seeds: list[int],
) -> str:
    how = "simulated (benchmarks.bf16sim)" if simulate else "real autocast"
    lines = [
        "# bf16 vs fp32: dev accuracy of the default JADE recipe",
        "",
        f"CPU: {cpu_line()}; torch {torch.__version__}; bf16 arm: {how}; "
        f"{len(results)} runs in {wall / 60:.0f} min.",
        "",
    ]
    for pair in pairs:
        lines += [
            f"## {PAIRS[pair].title}",
            "",
            "| seed | dev fp32 | dev bf16 | bf16 - fp32 "
            "| test fp32 | test bf16 | train s fp32 | train s bf16 |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        dev_diffs, test_diffs = [], []
        for seed in seeds:
            a, b = results.get((pair, seed, "fp32")), results.get((pair, seed, "bf16"))
            if a is None or b is None:
                continue
            da, db = a.extra.get("dev"), b.extra.get("dev")
            diff = "" if da is None or db is None else f"{db - da:+.2f}"
            if diff:
                dev_diffs.append(db - da)
            if a.primary is not None and b.primary is not None:
                test_diffs.append(b.primary - a.primary)
            cells = [
                _pct(da),
                _pct(db),
                diff,
                _pct(a.primary),
                _pct(b.primary),
                _num(a.extra.get("train_seconds")),
                _num(b.extra.get("train_seconds")),
            ]
            lines.append(f"| {seed} | " + " | ".join(cells) + " |")
        for name, diffs in (("dev", dev_diffs), ("test", test_diffs)):
            if len(diffs) >= 2:
                ci = paired_ci(diffs)
                lines.append(
                    f"\n{name}: bf16 - fp32 = {statistics.mean(diffs):+.2f} points, "
                    f"95% interval {format_ci(ci)} over {len(diffs)} seeds: {verdict(ci)}."
                )
        lines.append("")
    return "\n".join(lines)


def _pct(v: float | None) -> str:
    return "" if v is None else f"{v:.2f}"


def _num(v: object) -> str:
    return "" if v is None else f"{float(v):.0f}"  # type: ignore[arg-type]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--pairs", default="usps10,mnistm10")
    ap.add_argument("--seeds", default="0,1,2,3,4")
    ap.add_argument("--runs", default="runs/bf16_parity")
    ap.add_argument("--parallel", type=int, default=2)
    ap.add_argument("--simulate", action="store_true", help="bf16 through benchmarks.bf16sim")
    ap.add_argument("--reuse", action="store_true", help="read completed runs in --runs")
    ap.add_argument("--out", default=None)
    ap.add_argument("extra", nargs="*", help="more `jade train` flags (after --)")
    ns = ap.parse_args(argv)
    base = parse_args(
        [
            "--runs",
            ns.runs,
            "--models",
            "jade",
            *(["--reuse"] if ns.reuse else []),
            *(["--data-dir", ns.data_dir] if ns.data_dir else []),
            "--",
            *ns.extra,
        ]
    )
    pairs = [p for p in ns.pairs.split(",") if p]
    seeds = [int(s) for s in ns.seeds.split(",") if s]
    env = {**os.environ, "OMP_NUM_THREADS": str(run_threads(ns.parallel))}
    # seed by seed, the two arms of a seed side by side: a matrix cut short has whole pairs
    cells = [(p, s, arm) for p in pairs for s in seeds for arm in ARMS]
    results: dict[tuple[str, int, str], Result] = {}
    t0 = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(max_workers=ns.parallel) as pool:
        futures = {
            pool.submit(run_one, PAIRS[p], "jade", s, arm_args(base, arm, ns.simulate), env): (
                p,
                s,
                arm,
            )
            for p, s, arm in cells
        }
        for future in concurrent.futures.as_completed(futures):
            key = futures[future]
            r = future.result()
            results[key] = r
            print(
                f"{key}: test {r.primary}, dev {r.extra.get('dev')} ({r.wall_s:.0f} s)", flush=True
            )
            text = render(results, pairs, ns.simulate, time.perf_counter() - t0, seeds)
            if ns.out:
                Path(ns.out).write_text(text + "\n", encoding="utf-8")
                Path(ns.out).with_suffix(".json").write_text(
                    json.dumps(
                        {"|".join(map(str, k)): v.__dict__ for k, v in results.items()}, indent=1
                    ),
                    encoding="utf-8",
                )
    print(render(results, pairs, ns.simulate, time.perf_counter() - t0, seeds))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
