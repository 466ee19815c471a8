"""A recipe search that never reads test data: trials (sets of `jade train` flags) x seeds on a
dataset pair, every run trained with `--no-test` and scored on dev data, the primary training
images outside its labeled subset (`jade evaluate RUN --split train-unlabeled`).

    python -m benchmarks.search --pair mnistm10 --seeds 0,1 --data-dir DATA_DIR \
        --log benchmarks/results/search.jsonl --out benchmarks/results/search.md \
        --trial base= --trial ema='--ema 0.99' --trial ep20='--epochs 20' \
        -- --epochs 5

Pairs are those of benchmarks/accuracy.py (`--pair mnistm10`) or your own
(`--pair tiny='--primary synth-street --n-labeled 100 --auxiliary synth-hand'`). Each trial x
seed is one run, RUNS/<pair>-<trial>-seed<S>, trained with the pair's flags, then the flags after
`--` (shared by all trials), then the trial's flags (so a trial can override a shared flag: the
last value of a flag wins), then `--no-test` and the seed. As each run finishes, one JSON line
goes to --log and --out is rendered again: per trial, dev mean ± sd, per-seed values, and the
per-seed difference to the first trial (the baseline) with a 95% t interval. --reuse reads
completed runs of the same command (and their saved dev scores) instead of training them again;
--parallel K trains K runs at once, each with OMP_NUM_THREADS = CPUs // K (at least 1, at most
an OMP_NUM_THREADS already set).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime
import json
import math
import os
import platform
import re
import shlex
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

# benchmarks/accuracy.py and benchmarks/stats.py, beside this script
from benchmarks.accuracy import (
    DEV_SPLIT,
    PAIRS,
    Pair,
    dev_score,
    read_run,
    run_threads,
    usable_cpus,
)
from benchmarks.stats import format_ci, format_p, paired_ci, verdict
from jadecli.summarize import mean_std

SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]*")  # names become run folder names


@dataclass
class Trial:
    name: str
    flags: list[str]


@dataclass
class Job:
    pair: Pair
    trial: Trial
    seed: int
    run: Path
    command: list[str]  # as shown and as the manifest records it: `jade train ...`


@dataclass
class Outcome:
    """One trial x seed; also one line of --log."""

    finished: str  # ISO time, UTC
    pair: str
    trial: str
    flags: str
    seed: int
    model: str
    dev: float | None  # primary dev accuracy, percent
    train_seconds: float | None  # the manifest's, training only (no data loading)
    wall_s: float | None  # this process's wall time for train + evaluate; None when reused
    status: str  # completed (with a dev score) or failed
    error: str | None
    reused: bool  # trained by an earlier search (--reuse)
    evaluated: bool  # dev scored by this search (not read back from the run folder)
    command: str
    run: str
    torch: str | None = None
    jadecli: str | None = None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--pair",
        action="append",
        default=[],
        required=True,
        metavar="NAME|NAME=FLAGS",
        help=f"a pair of benchmarks/accuracy.py ({', '.join(PAIRS)}) or NAME='jade train flags'"
        " of your own; repeat for several",
    )
    ap.add_argument(
        "--trial",
        action="append",
        default=[],
        metavar="NAME=FLAGS",
        help="a trial: NAME and the `jade train` flags it adds (may be empty: base=); the first "
        "is the baseline the others are compared with. Default: one trial, base=",
    )
    ap.add_argument("--model", default="jade", help="--model of every run (default: jade)")
    ap.add_argument("--seeds", default="0,1,2", help="comma-separated (default: 0,1,2)")
    ap.add_argument("--data-dir", default=None, help="--data-dir of every run")
    ap.add_argument("--runs", default="runs/search", help="folder for the run directories")
    ap.add_argument("--log", default=None, help="JSON-lines file to append each result to")
    ap.add_argument("--out", default=None, help="markdown file to write (default: print only)")
    ap.add_argument("--reuse", action="store_true", help="read completed runs in --runs")
    ap.add_argument("--parallel", type=int, default=1, metavar="K", help="runs at once")
    ap.add_argument("--title", default="Recipe search on dev data")
    ap.add_argument("extra", nargs="*", help="`jade train` flags of every trial (after --)")
    args = ap.parse_args(argv)
    if args.parallel < 1:
        ap.error("--parallel must be 1 or more")
    return args


def parse_pairs(specs: list[str]) -> list[Pair]:
    pairs: list[Pair] = []
    for spec in specs:
        name, sep, flags = spec.partition("=")
        if not sep:
            if name not in PAIRS:
                sys.exit(f"--pair: unknown pair {name!r}; known: {', '.join(PAIRS)}, or NAME=FLAGS")
            pairs.append(PAIRS[name])
        elif not SAFE_NAME.fullmatch(name) or not flags.strip():
            sys.exit(f"--pair {spec!r}: expected NAME='FLAGS' with a plain NAME (letters, -_.+)")
        else:
            pairs.append(Pair(name, name, shlex.split(flags)))
    if len({p.name for p in pairs}) != len(pairs):
        sys.exit("--pair: each pair once")
    return pairs


def parse_trials(specs: list[str]) -> list[Trial]:
    trials = []
    for spec in specs or ["base="]:
        name, _, flags = spec.partition("=")
        if not SAFE_NAME.fullmatch(name):
            sys.exit(f"--trial {spec!r}: expected NAME=FLAGS with a plain NAME (letters, -_.+)")
        trials.append(Trial(name, shlex.split(flags)))
    if len({t.name for t in trials}) != len(trials):
        sys.exit("--trial: each trial name once")
    return trials


def train_command(
    pair: Pair, trial: Trial, seed: int, run: Path, args: argparse.Namespace
) -> list[str]:
    cmd = ["jade", "train", *pair.args, "--model", args.model]
    cmd += ["--data-dir", args.data_dir] if args.data_dir else []
    cmd += [*args.extra, *trial.flags]
    # last, so that no trial can turn the test split back on or change the seed it is paired by
    cmd += ["--no-test", "--eval-every", "0", "--no-progress", "--seed", str(seed)]
    return [*cmd, "--out", str(run), "--overwrite"]


def shown(cmd: list[str]) -> str:
    return " ".join(shlex.quote(c) for c in cmd)


def first_line(text: str, limit: int = 300) -> str:
    line = next((x.strip() for x in text.strip().splitlines() if x.strip()), "?")
    return line if len(line) <= limit else line[: limit - 3] + "..."


def same_command(manifest: dict[str, Any], cmd: list[str]) -> bool:
    try:
        return shlex.split(str(manifest.get("command", "")))[1:] == cmd[1:]
    except ValueError:
        return False


def execute(job: Job, args: argparse.Namespace, env: dict[str, str]) -> Outcome:
    """Train (or, with --reuse, read) one run and score it on dev data; never raises for a run
    that fails: the failure is the outcome."""
    out = Outcome(
        finished="",
        pair=job.pair.name,
        trial=job.trial.name,
        flags=shown(job.trial.flags),
        seed=job.seed,
        model=args.model,
        dev=None,
        train_seconds=None,
        wall_s=None,
        status="failed",  # until a dev score says otherwise
        error=None,
        reused=False,
        evaluated=False,
        command=shown(job.command),
        run=str(job.run),
    )
    manifest: dict[str, Any] = {}
    if args.reuse and (job.run / "manifest.yaml").is_file():
        try:
            manifest = read_run(job.run)
        except (OSError, yaml.YAMLError):
            manifest = {}
        if manifest.get("status") != "completed" or not same_command(manifest, job.command):
            manifest = {}
    out.reused = bool(manifest)
    t0 = time.perf_counter()
    if not manifest:
        cmd = [sys.executable, "-m", "jadecli", *job.command[1:]]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        try:
            manifest = read_run(job.run)
        except (OSError, yaml.YAMLError):
            manifest = {}
        if proc.returncode != 0 or manifest.get("status") != "completed":
            # the manifest's error names the cause, unless jade stopped before writing one (a
            # bad flag): then the manifest may be an older run's, and jade's last line says why
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["?"]
            ours = same_command(manifest, job.command) and manifest.get("error")
            out.error = first_line(str(manifest["error"] if ours else tail[0]))
            out.wall_s = round(time.perf_counter() - t0, 1)
            return out
    out.train_seconds = manifest.get("train_seconds")
    out.torch = (manifest.get("versions") or {}).get("torch")
    out.jadecli = manifest.get("jadecli_version")
    score = dev_score(job.run, args.data_dir, env)
    out.dev = score.get("dev")
    out.evaluated = score.get("dev_source") == "evaluated"
    if out.dev is None:
        out.error = first_line(str(score.get("dev_error") or "no dev score"))
    else:
        out.status = "completed"
    if not out.reused or out.evaluated:
        out.wall_s = round(time.perf_counter() - t0, 1)
    return out


def md_code(text: str) -> str:
    return "`" + text.replace("|", "\\|") + "`" if text else "(none)"


def render(
    outcomes: list[Outcome],
    pairs: list[Pair],
    trials: list[Trial],
    args: argparse.Namespace,
    cli: list[str],
    threads: int,
    elapsed: float,
) -> str:
    base = trials[0].name
    versions = sorted({f"torch {o.torch}, jadecli {o.jadecli}" for o in outcomes if o.torch})
    cpu = platform.processor() or platform.machine()
    lines = [f"# {args.title}", ""]
    lines.append(
        f"Measured {datetime.date.today().isoformat()} on {cpu} ({usable_cpus()} CPUs, "
        f"{args.parallel} run(s) at a time with OMP_NUM_THREADS={threads}), "
        f"{'; '.join(versions) or 'versions unknown'}, --model {args.model}; {len(outcomes)} "
        f"runs in {elapsed / 60:.1f} min of wall time."
    )
    lines.append("")
    lines.append(
        "**Scores are dev accuracy**: primary accuracy (%) on the primary training images "
        "outside the labeled subset (`jade evaluate RUN --split "
        f"{DEV_SPLIT}`), of each run's final model. Every run was trained with `--no-test`: "
        "**the test split was never evaluated in these runs.**"
    )
    lines.append("")
    lines.append(
        f"Differences are per seed (same seed, same labeled subset), trial minus `{base}` (the "
        "first trial): mean, 95% Student t interval, verdict (*significant* when the interval "
        "excludes 0, else *within noise*). Each trial is compared on its own, with no "
        "correction for the number of trials, and the best of several noisy trials is an "
        "optimistic pick: confirm a winner on new seeds before testing it once."
    )
    lines.append("")
    lines.append("Command: `python -m benchmarks.search " + shown(cli) + "`")
    lines.append("")
    for pair in pairs:
        mine = [o for o in outcomes if o.pair == pair.name]
        if not mine:
            continue
        lines += [f"## {pair.title}", "", f"Flags: {md_code(shown(pair.args))}.", ""]
        lines.append(
            f"| trial | flags | dev acc (mean ± std) | per seed | minus {base} | 95% CI | p "
            "| verdict | train s / run |"
        )
        lines.append("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
        by_trial: dict[str, dict[int, float]] = {}
        for trial in trials:
            rows = sorted((o for o in mine if o.trial == trial.name), key=lambda o: o.seed)
            if not rows:
                continue
            by_trial[trial.name] = {o.seed: o.dev for o in rows if o.dev is not None}
            devs = list(by_trial[trial.name].values())
            per_seed = ", ".join(
                f"s{o.seed}: {o.dev:.2f}" if o.dev is not None else f"s{o.seed}: failed"
                for o in rows
            )
            secs = [float(o.train_seconds) for o in rows if o.train_seconds is not None]
            train_s = f"{statistics.mean(secs):.0f}" if secs else "-"
            compare = ["-", "-", "-", "baseline"]
            if not devs:
                compare = ["-", "-", "-", "no score"]
            elif trial.name != base and base in by_trial:
                seeds = sorted(set(by_trial[base]) & set(by_trial[trial.name]))
                diffs = [by_trial[trial.name][s] - by_trial[base][s] for s in seeds]
                if diffs:
                    ci = paired_ci(diffs)
                    compare = [f"{ci.mean:+.2f}", format_ci(ci), format_p(ci.p_value), verdict(ci)]
                else:
                    compare = ["-", "-", "-", "no common seed"]
            lines.append(
                f"| {trial.name} | {md_code(shown(trial.flags))} | **{mean_std(devs)}** | "
                f"{per_seed} | " + " | ".join(compare) + f" | {train_s} |"
            )
        failed = [o for o in mine if o.status != "completed"]
        if failed:
            lines += ["", "Failed:", ""]
            lines += [f"- {o.trial} seed {o.seed}: {o.error}" for o in failed]
        lines.append("")
    lines += ["## Commands", "", "Each run, as `jade train` was called:", ""]
    lines += ["```", *[o.command for o in outcomes], "```", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    pairs = parse_pairs(args.pair)
    trials = parse_trials(args.trial)
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    if not seeds:
        sys.exit("--seeds: give at least one seed")
    threads = run_threads(args.parallel)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    # seed-major: after each seed every trial has a number, so a cut-short search still compares
    jobs = [
        Job(pair, trial, seed, run, train_command(pair, trial, seed, run, args))
        for pair in pairs
        for seed in seeds
        for trial in trials
        for run in [Path(args.runs) / f"{pair.name}-{trial.name}-seed{seed}"]
    ]
    cli = sys.argv[1:] if argv is None else argv
    order = {(j.pair.name, j.trial.name, j.seed): i for i, j in enumerate(jobs)}
    outcomes: list[Outcome] = []
    t0 = time.perf_counter()
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=args.parallel)
    try:
        futures = [pool.submit(execute, job, args, env) for job in jobs]
        for future in concurrent.futures.as_completed(futures):
            o = future.result()
            o.finished = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
            outcomes.append(o)
            outcomes.sort(key=lambda x: order[(x.pair, x.trial, x.seed)])
            got = f"dev {o.dev:.2f}%" if o.dev is not None else f"failed: {o.error}"
            took = f", {o.train_seconds:.0f} s training" if o.train_seconds is not None else ""
            took += ", reused" if o.reused else ""
            print(f"{o.pair} {o.trial} seed {o.seed}: {got}{took}", flush=True)
            if args.log and (o.evaluated or not o.reused):  # else logged when it ran
                Path(args.log).parent.mkdir(parents=True, exist_ok=True)
                with open(args.log, "a", encoding="utf-8") as fh:
                    fh.write(json.dumps(nan_to_none(asdict(o))) + "\n")
            if args.out:
                text = render(outcomes, pairs, trials, args, cli, threads, time.perf_counter() - t0)
                Path(args.out).parent.mkdir(parents=True, exist_ok=True)
                Path(args.out).write_text(text, encoding="utf-8")
    finally:
        # after Ctrl-C, start none of the queued runs (the running ones got the signal too)
        pool.shutdown(wait=True, cancel_futures=True)
    print(render(outcomes, pairs, trials, args, cli, threads, time.perf_counter() - t0))
    return 1 if any(o.status != "completed" for o in outcomes) else 0


def nan_to_none(record: dict[str, Any]) -> dict[str, Any]:
    # JSON has no NaN; a reader in another language would choke on Python's `NaN`
    return {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in record.items()}


if __name__ == "__main__":
    raise SystemExit(main())
