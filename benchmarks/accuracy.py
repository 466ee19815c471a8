"""The real-data accuracy matrix: dataset pairs x models (single, paired, jade) x seeds, each a
real `jade train` run through the CLI, rendered as one markdown table.

    python -m benchmarks.accuracy --data-dir DATA_DIR --out benchmarks/results/accuracy.md

Every number is read back from the run's manifest.yaml (its last epoch: nothing is selected on
test data). Runs go to --runs (default runs/accuracy/<pair>-<model>-seed<S>); with --reuse, a
completed run there is read instead of trained again, so an interrupted matrix can continue.
The table is re-rendered after every run; its per-model rows group the seeds as `jade summarize`
does (jadecli.summarize: mean ± sample std over the completed runs only, a failed run is named
with its status). Extra arguments after `--` go to every `jade train` (e.g. `-- --preset paper`);
`--pair NAME='FLAGS'` adds a pair of your own, e.g. `--pair svhn='--config
examples/svhn_mnist.yaml'` (see examples/reproduce_table1.sh).

Margins between models are per-seed differences with a 95% Student t interval (benchmarks/
stats.py): "within noise" when the interval holds 0. With --dev, every completed run is also
scored on dev data, the primary training images outside its labeled subset (`jade evaluate RUN
--split train-unlabeled`), shown beside the test number; a reused run's saved dev score is read
instead of evaluated again.

--parallel K trains K runs at once, each with OMP_NUM_THREADS = CPUs // K (at least 1, at most
an OMP_NUM_THREADS already set). Pairs run one after another, so a matrix cut short has whole
rows to compare; within a pair the longest cells (jade, then paired, then single) start first.
On 2 CPUs two 1-thread runs train 1.0-1.4x as many pairs per second as one 2-thread run (about
1.05x on a 2-core AMD EPYC Zen 3, about 1.4x on a 2-core Xeon; docs/speed.md).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from benchmarks.stats import format_ci, format_p, paired_ci, verdict
from jadecli.summarize import RunRecord, group_runs

MODELS = ("single", "paired", "jade")
DEV_SPLIT = "train-unlabeled"  # primary training images outside the labeled subset


@dataclass
class Pair:
    name: str
    title: str
    args: list[str]
    target: str = ""  # what the issue asks for, shown beside the result
    target_min: float | None = None  # jade's mean must reach this (percent)


# Digit geometry: MNIST digits sit in a 20x20 box centred in 28x28, USPS digits fill their 16x16
# frame, MNIST-M is MNIST padded by 2 pixels to 32x32 (as its makers built it). The pads line
# them up.
USPS = ["--primary-size", "20", "--primary-pad", "4"]
MNISTM = ["--aux-per-class", "4500", "--auxiliary-pad", "2"]
# 1,000 of the 1,100 drawn are held out (100 per class): 10 per class train, with --unlabeled rest
UNLABELED = ["--val", "1000", "--unlabeled", "rest"]

PAIRS = {
    "usps10": Pair(
        "usps10",
        "USPS, 10 labeled per class (100) + MNIST (all 60,000)",
        ["--primary", "usps", "--n-labeled", "100", "--auxiliary", "mnist", *USPS],
        "jade >= 97.5 (aim 99); d-SNE 99.00 test-selected, 96.6 re-run honestly",
        97.5,
    ),
    "mnistm10": Pair(
        "mnistm10",
        "MNIST-M, 10 labeled per class (100) + MNIST (first 4,500 per class)",
        ["--primary", "mnist-m", "--n-labeled", "100", "--auxiliary", "mnist", *MNISTM],
        "jade >= 80 (aim 88); d-SNE 87.80 test-selected, 67.2 re-run",
        80.0,
    ),
    "mnistm100": Pair(
        "mnistm100",
        "MNIST-M, 100 labeled per class (1,000) + MNIST (first 4,500 per class)",
        ["--primary", "mnist-m", "--n-labeled", "1000", "--auxiliary", "mnist", *MNISTM],
        "none published; beat single by a wide margin",
    ),
    # --unlabeled rows (issue 27): 10 labeled per class are trained on, 100 per class more are
    # held out as --val (the dev split every default was chosen on, disjoint from the unlabeled
    # images), and every other primary training image is an unlabeled image (`rest`)
    "mnistm10-unl": Pair(
        "mnistm10-unl",
        "MNIST-M, 10 labeled per class + the other 7,901 unlabeled + MNIST (first 4,500 per class)",
        [
            "--primary",
            "mnist-m",
            "--n-labeled",
            "1100",
            *UNLABELED,
            "--auxiliary",
            "mnist",
            *MNISTM,
        ],
        "jade >= 95 (aim 98); DANN 76.7 and DSN 83.2 without target labels",
        95.0,
    ),
    "usps10-unl": Pair(
        "usps10-unl",
        "USPS, 10 labeled per class + the other 6,191 unlabeled + MNIST (all 60,000)",
        ["--primary", "usps", "--n-labeled", "1100", *UNLABELED, "--auxiliary", "mnist", *USPS],
        "jade >= 98.5",
        98.5,
    ),
}


@dataclass
class Result:
    pair: str
    model: str
    seed: int
    primary: float | None
    auxiliary: float | None
    wall_s: float
    status: str
    command: str
    run_dir: str
    extra: dict[str, Any] = field(default_factory=dict)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pairs", default="usps10,mnistm10,mnistm100", help="comma-separated")
    ap.add_argument(
        "--pair",
        action="append",
        default=[],
        metavar="NAME=FLAGS",
        help="a pair of your own: NAME and the `jade train` flags that define its data",
    )
    ap.add_argument("--models", default=",".join(MODELS), help="comma-separated")
    # 5 seeds: with 3, a t interval is so wide (t = 4.30) that only huge margins clear noise
    ap.add_argument("--seeds", default="0,1,2,3,4", help="comma-separated")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--runs", default="runs/accuracy", help="folder for the run directories")
    ap.add_argument("--out", default=None, help="markdown file to write (default: print only)")
    ap.add_argument("--reuse", action="store_true", help="read completed runs in --runs")
    ap.add_argument(
        "--dev",
        action="store_true",
        help=f"also score each run on dev data (`jade evaluate RUN --split {DEV_SPLIT}`)",
    )
    ap.add_argument("--parallel", type=int, default=1, metavar="K", help="runs at once")
    ap.add_argument("--title", default="Real-data accuracy: single vs paired vs JADE")
    ap.add_argument(
        "--launcher",
        default="jadecli",
        help="the module run as `python -m MODULE train|evaluate ...` (benchmarks.bf16sim: bf16 "
        "products simulated at fp32 speed, for CPUs without native bf16)",
    )
    ap.add_argument("extra", nargs="*", help="more `jade train` flags (after --)")
    args = ap.parse_args(argv)
    if args.parallel < 1:
        ap.error("--parallel must be 1 or more")
    return args


def usable_cpus() -> int:
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))  # what this process may run on, not the machine
    return os.cpu_count() or 1


def run_threads(parallel: int) -> int:
    """Threads per run when `parallel` runs share the CPUs (a caller's OMP_NUM_THREADS caps it)."""
    threads = max(1, usable_cpus() // parallel)
    cap = os.environ.get("OMP_NUM_THREADS", "")
    if cap.isdigit() and int(cap) > 0:  # a cap the caller set (other jobs running) is kept
        threads = min(threads, int(cap))
    return threads


def pairs_from(args: argparse.Namespace) -> list[Pair]:
    pairs: list[Pair] = []
    for name in [n for n in args.pairs.split(",") if n]:
        if name not in PAIRS:
            sys.exit(f"--pairs: unknown pair {name!r}; known: {', '.join(PAIRS)}")
        pairs.append(PAIRS[name])
    for spec in args.pair:
        name, sep, flags = spec.partition("=")
        if not sep or not name or not flags.strip():
            sys.exit(f"--pair {spec!r}: expected NAME='FLAGS', e.g. svhn='--config FILE.yaml'")
        pairs.append(Pair(name, name, shlex.split(flags)))
    if not pairs:
        sys.exit("no pairs to run: give --pairs or --pair")
    return pairs


def train_command(
    pair: Pair, model: str, seed: int, run: Path, args: argparse.Namespace
) -> list[str]:
    cmd = ["jade", "train", *pair.args, "--model", model, "--seed", str(seed)]
    if args.data_dir:
        cmd += ["--data-dir", args.data_dir]
    cmd += ["--eval-every", "0", "--no-progress", *args.extra, "--out", str(run)]
    return cmd


def read_run(run: Path) -> dict[str, Any]:
    manifest = yaml.safe_load((run / "manifest.yaml").read_text(encoding="utf-8"))
    return manifest if isinstance(manifest, dict) else {}


def saved_dev(run: Path) -> float | None:
    """Primary dev accuracy (%) saved by an earlier `jade evaluate RUN --split train-unlabeled`
    of this completed run's own checkpoint, else None."""
    # evaluate-<split>/ without a suffix is where evaluate writes for the checkpoint the run
    # selected (another --checkpoint gets a -<stem> suffix, --test-limit a -first<N>)
    summary = run / "analysis" / f"evaluate-{DEV_SPLIT}" / "summary.json"
    try:
        report = json.loads(summary.read_text(encoding="utf-8"))
        acc = report["primary"]["accuracy"]
        checkpoint = run / str(report["checkpoint"])
        # an evaluation while training, or before a --resume, scored older weights
        fresh = (
            report.get("split") == DEV_SPLIT
            and report.get("status") == "completed"
            and report.get("limit") is None
            and checkpoint.stat().st_mtime <= summary.stat().st_mtime
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return 100.0 * float(acc) if fresh and acc is not None else None


def evaluate_dev(
    run: Path,
    data_dir: str | None,
    env: Mapping[str, str] | None = None,
    launcher: str = "jadecli",
) -> tuple[float | None, str]:
    """(primary dev accuracy in %, "") from `jade evaluate`, or (None, its error line)."""
    cmd = [sys.executable, "-m", launcher, "evaluate", str(run), "--split", DEV_SPLIT]
    cmd += ["--format", "json"] + (["--data-dir", data_dir] if data_dir else [])
    proc = subprocess.run(
        cmd, capture_output=True, text=True, env=None if env is None else dict(env)
    )
    if proc.returncode == 0:
        try:
            return 100.0 * float(json.loads(proc.stdout)["primary"]["accuracy"]), ""
        except (ValueError, KeyError, TypeError) as err:
            return None, f"evaluate printed no report ({err})"
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["?"]
    return None, f"evaluate: {tail[0]}"


def dev_score(
    run: Path,
    data_dir: str | None,
    env: Mapping[str, str] | None = None,
    launcher: str = "jadecli",
) -> dict[str, Any]:
    """The run's dev accuracy as Result.extra entries: read back if saved, else evaluated."""
    saved = saved_dev(run)
    if saved is not None:
        return {"dev": saved, "dev_source": "saved"}
    t0 = time.perf_counter()
    dev, error = evaluate_dev(run, data_dir, env, launcher)
    out: dict[str, Any] = {"dev": dev, "dev_source": "evaluated"}
    out["dev_seconds"] = round(time.perf_counter() - t0, 1)
    if error:
        out["dev_error"] = error
    return out


def run_one(
    pair: Pair,
    model: str,
    seed: int,
    args: argparse.Namespace,
    env: Mapping[str, str] | None = None,
) -> Result:
    run = Path(args.runs) / f"{pair.name}-{model}-seed{seed}"
    cmd = train_command(pair, model, seed, run, args)
    shown = " ".join(shlex.quote(c) for c in cmd)
    wall = float("nan")
    manifest: dict[str, Any] = {}
    if args.reuse and (run / "manifest.yaml").is_file():
        manifest = read_run(run)
        flags = " ".join(shlex.quote(c) for c in cmd[2:-2])  # without `jade train` and --out
        if manifest.get("status") == "completed" and flags in str(manifest.get("command", "")):
            wall = float(manifest.get("train_seconds") or 0.0)  # training only, not loading
        else:
            manifest = {}
    if not manifest:
        t0 = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, "-m", args.launcher, *cmd[1:-2], "--out", str(run), "--overwrite"],
            capture_output=True,
            text=True,
            env=None if env is None else dict(env),
        )
        wall = time.perf_counter() - t0
        if proc.returncode != 0 and not (run / "manifest.yaml").is_file():
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["?"]
            return Result(
                pair.name, model, seed, None, None, wall, f"error: {tail[0]}", shown, str(run)
            )
        manifest = read_run(run)
    final = manifest.get("final_metrics") or {}

    def pct(key: str) -> float | None:
        value = final.get(key)
        return None if value is None else 100.0 * float(value)

    extra = {"train_seconds": manifest.get("train_seconds"), "precision": manifest.get("precision")}
    status = str(manifest.get("status", "?"))
    if args.dev and status == "completed":
        extra.update(dev_score(run, args.data_dir, env, args.launcher))
    return Result(
        pair.name,
        model,
        seed,
        pct("primary_test_accuracy"),
        pct("auxiliary_test_accuracy"),
        wall,
        status,
        shown,
        str(run),
        extra,
    )


def run_record(r: Result) -> RunRecord:
    """A result as `jade summarize` groups runs: its model and seed, status and numbers (%)."""
    metrics = {"primary": r.primary, "auxiliary": r.auxiliary, "wall": r.wall_s}
    metrics["dev"] = r.extra.get("dev")
    return RunRecord(r.run_dir, {"model": r.model, "seed": r.seed}, r.status, metrics)


DIFFERENCE_HEADER = [
    "| difference | mean (points) | 95% CI | seeds | ahead | p | verdict |",
    "| --- | --- | --- | --- | --- | --- | --- |",
]


def difference_row(label: str, diffs: list[float]) -> str:
    """A DIFFERENCE_HEADER row: per-seed differences, their mean and t interval, a verdict."""
    ci = paired_ci(diffs)
    wins = sum(d > 0 for d in diffs)
    return (
        f"| {label} | {ci.mean:+.2f} | {format_ci(ci)} | {ci.n} | {wins}/{ci.n} | "
        f"{format_p(ci.p_value)} | {verdict(ci)} |"
    )


def render(
    results: list[Result], pairs: list[Pair], args: argparse.Namespace, elapsed: float
) -> str:
    import torch

    lines = [f"# {args.title}", ""]
    cpu = platform.processor() or platform.machine()
    lines.append(
        f"Measured {datetime.date.today().isoformat()} on {cpu}"
        f" ({os.cpu_count()} CPUs), torch {torch.__version__}, jadecli "
        f"{_version()}; {len(results)} runs in {elapsed / 60:.1f} min of wall time, "
        f"{args.parallel} at a time with {run_threads(args.parallel)} thread(s) each."
    )
    lines.append(
        "Accuracy is primary **test** accuracy (%) of the model after its last epoch: no model "
        "or epoch was chosen with test data. ± is the sample "
        "standard deviation over seeds. Differences are per seed (same seed, same labeled "
        "subset): their mean, a 95% Student t interval over the seeds both models ran, and a "
        "verdict, *significant* when the interval excludes 0, else *within noise* (each "
        "comparison on its own, no correction for the three per pair)."
    )
    if args.dev:
        lines.append(
            "Dev is primary accuracy (%) on the training images outside the labeled subset "
            f"(`jade evaluate RUN --split {DEV_SPLIT}`), same final model: a recipe can be "
            "chosen on it without reading test data."
        )
    lines.append("")
    lines.append(
        "Command: `python -m benchmarks.accuracy " + " ".join(shlex.quote(a) for a in _argv()) + "`"
    )
    lines.append("")
    for pair in pairs:
        rows = [r for r in results if r.pair == pair.name]
        if not rows:
            continue
        lines += [f"## {pair.title}", ""]
        if pair.target:
            lines += [f"Target: {pair.target}.", ""]
        dev_head, dev_rule = (" dev acc (mean ± std) |", " --- |") if args.dev else ("", "")
        lines.append(
            f"| model | primary acc (mean ± std) | per seed |{dev_head} aux acc | wall s / run |"
        )
        lines.append(f"| --- | --- | --- |{dev_rule} --- | --- |")
        # grouped over seeds as `jade summarize` groups runs: means over completed runs only
        groups = {g.key["model"]: g for g in group_runs([run_record(r) for r in rows])}
        by_model: dict[str, dict[int, float]] = {}
        for model in [m for m in MODELS if m in groups]:
            group = groups[model]
            by_model[model] = {
                int(r.config["seed"]): float(r.metrics["primary"])
                for r in group.counted
                if r.metrics["primary"] is not None
            }
            per_seed = ", ".join(
                f"s{r.config['seed']}: {r.metrics['primary']:.2f}"
                if r.completed and r.metrics["primary"] is not None
                else f"s{r.config['seed']}: {r.status}"
                for r in group.runs
            )
            walls = group.stat("wall")
            wall = f"{walls.mean:.0f}" if walls.mean is not None else "-"
            dev = f" {group.stat('dev').text()} |" if args.dev else ""
            lines.append(
                f"| {model} | **{group.stat('primary').text()}** | {per_seed} |{dev} "
                f"{group.stat('auxiliary').text()} | {wall} |"
            )
        margins = []
        for hi, lo in (("jade", "paired"), ("paired", "single"), ("jade", "single")):
            if hi in by_model and lo in by_model:
                seeds = sorted(set(by_model[hi]) & set(by_model[lo]))
                diffs = [by_model[hi][s] - by_model[lo][s] for s in seeds]
                if diffs:
                    margins.append(difference_row(f"{hi} - {lo}", diffs))
        if margins:
            lines += ["", "Primary test accuracy, model minus model, per seed:", ""]
            lines += DIFFERENCE_HEADER + margins
        if pair.target_min is not None and "jade" in by_model and by_model["jade"]:
            mean = statistics.mean(by_model["jade"].values())
            verdict = "met" if mean >= pair.target_min else "NOT met"
            lines += ["", f"Target jade >= {pair.target_min}: **{verdict}** ({mean:.2f})."]
        lines.append("")
    lines += ["## Commands", "", "Each run, as `jade train` was called (then `--overwrite`):", ""]
    lines += ["```"] + [r.command for r in results] + ["```", ""]
    return "\n".join(lines)


def _argv() -> list[str]:
    return sys.argv[1:]


def _version() -> str:
    from jadecli import __version__

    return __version__


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    pairs = pairs_from(args)
    models = [m for m in args.models.split(",") if m]
    seeds = [int(s) for s in args.seeds.split(",") if s]
    threads = run_threads(args.parallel)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)} if args.parallel > 1 else None
    cells = [(pair, model, seed) for pair in pairs for model in models for seed in seeds]
    order = {(p.name, m, s): i for i, (p, m, s) in enumerate(cells)}
    # pair by pair, so a matrix cut short has whole rows to compare; within a pair the slowest
    # models first, so the last runs to finish are short ones
    cost = {"jade": 0, "paired": 1, "single": 2}
    rank = {p.name: i for i, p in enumerate(pairs)}
    queue = sorted(cells, key=lambda c: (rank[c[0].name], cost.get(c[1], 0), c[2]))
    results: list[Result] = []
    t0 = time.perf_counter()
    failed = 0
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=args.parallel)
    try:
        futures = [pool.submit(run_one, p, m, s, args, env) for p, m, s in queue]
        for future in concurrent.futures.as_completed(futures):
            r = future.result()
            results.append(r)
            results.sort(key=lambda x: order[(x.pair, x.model, x.seed)])
            acc = f"{r.primary:.2f}%" if r.primary is not None else r.status
            if args.dev:
                dev = r.extra.get("dev")
                acc += f", dev {dev:.2f}%" if dev is not None else ""
                acc += f" ({r.extra['dev_error']})" if r.extra.get("dev_error") else ""
            print(f"{r.pair:10s} {r.model:6s} seed {r.seed}: {acc}  ({r.wall_s:.0f} s)", flush=True)
            failed += r.status != "completed"
            text = render(results, pairs, args, time.perf_counter() - t0)
            if args.out:
                Path(args.out).parent.mkdir(parents=True, exist_ok=True)
                Path(args.out).write_text(text, encoding="utf-8")
                Path(args.out).with_suffix(".json").write_text(
                    json.dumps([r.__dict__ for r in results], indent=1), encoding="utf-8"
                )
    finally:
        # after Ctrl-C, start none of the queued runs (the running ones got the signal too)
        pool.shutdown(wait=True, cancel_futures=True)
    print(render(results, pairs, args, time.perf_counter() - t0))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
