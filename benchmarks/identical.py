"""Bit-identity check: train a set of tiny configurations and fingerprint what they produced.

A refactoring that must not change training runs this before and after (old code in a git
worktree, new code in this checkout) and compares the two fingerprints. Per configuration it
records the sha256 of every tensor of the final checkpoint's weights, the metrics.csv values
(timing columns left out) and `jade evaluate --format json` (its timing fields left out).

    python -m benchmarks.identical --code ../base --out runs/identical-before.json
    python -m benchmarks.identical --code . --out runs/identical-after.json
    python -m benchmarks.identical --compare runs/identical-before.json runs/identical-after.json

`--code DIR` is the source tree whose `jadecli` package is imported (put first on PYTHONPATH);
runs use one thread each, two at a time (`--parallel`). `--quickstart` adds the README's
quickstart at two threads (about 3 minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

PAIR = ["--primary", "synth-street", "--auxiliary", "synth-hand"]
TINY = ["--n-labeled", "100", "--epochs", "2", "--epoch-size", "400", "--batch-size", "50"]

# name -> the flags after `jade train` (issue 11's wider check, and the options added since)
CONFIGS: dict[str, list[str]] = {
    "jade": [*PAIR, *TINY],
    "paired": [*PAIR, *TINY, "--model", "paired"],
    "single": ["--primary", "synth-street", *TINY, "--model", "single"],
    "jade-paper": [*PAIR, *TINY, "--preset", "paper", "--epochs", "2", "--epoch-size", "400"],
    "paired-paper-constant": [
        *PAIR,
        *TINY,
        "--model",
        "paired",
        "--arch",
        "paper",
        "--lr-schedule",
        "constant",
        "--eval-every",
        "0",
    ],
    "jade-sum-dropout-step": [
        *PAIR,
        *TINY,
        "--loss-scale",
        "sum",
        "--aux-ce-weight",
        "1e4",
        "--primary-ce-weight",
        "1e5",
        "--dropout",
        "0.5",
        "--lr-schedule",
        "step",
        "--style-mix",
        "0.3",
    ],
    "jade-bf16": [*PAIR, *TINY, "--precision", "bf16"],
    "paired-bf16": [*PAIR, *TINY, "--model", "paired", "--precision", "bf16"],
    "jade-val-ema-sep": [
        *PAIR,
        *TINY,
        "--val",
        "20",
        "--select",
        "best-val",
        "--ema",
        "0.9",
        "--separation-weight",
        "0.1",
        "--no-ce-on-mean",
        "--batch-norm",
        "per-dataset",
    ],
    "single-paper-noaug": [
        "--primary",
        "synth-street",
        *TINY,
        "--model",
        "single",
        "--arch",
        "paper",
        "--augment",
        "none",
    ],
    "jade-resnet18-16px": [
        *PAIR,
        *TINY,
        "--arch",
        "resnet18",
        "--primary-size",
        "16",
        "--auxiliary-size",
        "16",
        "--epoch-size",
        "200",
    ],
    # issue 26's swap term with the content gradient stopped, and --ce-on-mean's extra logits
    "jade-swap-nocontentgrad": [*PAIR, *TINY, "--swap-weight", "1", "--no-decoder-content-grad"],
    "jade-swap-own-mean": [
        *PAIR,
        *TINY,
        "--swap-weight",
        "0.5",
        "--style-encoder",
        "own",
        "--decoder-content",
        "mean",
    ],
}
QUICKSTART = [*PAIR, "--n-labeled", "1000", "--epochs", "5"]
TIMING = {"seconds", "examples_per_s"}


def _env(code: Path, threads: int) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(code.resolve()) + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = str(threads)
    return env


def _sha(t: Any) -> str:
    import torch

    t = t.detach().cpu().contiguous()
    if t.dtype == torch.bfloat16:
        t = t.view(torch.int16)
    return hashlib.sha256(t.numpy().tobytes()).hexdigest()[:16]


def _strip(obj: Any) -> Any:
    """`jade evaluate` JSON without what legitimately changes between runs (times, paths)."""
    if isinstance(obj, dict):
        return {
            k: _strip(v)
            for k, v in obj.items()
            if k not in ("run", "command")
            and not any(s in k for s in ("seconds", "time", "path", "files", "out"))
        }
    if isinstance(obj, list):
        return [_strip(v) for v in obj]
    return obj


def fingerprint(name: str, flags: list[str], code: Path, data_dir: Path, threads: int) -> dict:
    import torch

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / name
        cmd = [
            sys.executable,
            "-m",
            "jadecli",
            "train",
            *flags,
            "--data-dir",
            str(data_dir.resolve()),
        ]
        cmd += ["--out", str(out), "--no-progress"]
        done = subprocess.run(
            cmd, env=_env(code, threads), capture_output=True, text=True, cwd=tmp
        )  # cwd: `python -m` puts it first on sys.path, before --code
        if done.returncode != 0:
            return {"error": done.stderr.strip().splitlines()[-1:], "command": cmd}
        state = torch.load(out / "checkpoints" / "last.pt", map_location="cpu")
        weights = {k: _sha(v) for k, v in state["model"].items()}
        with open(out / "metrics.csv", newline="") as f:
            rows = [{k: v for k, v in r.items() if k not in TIMING} for r in csv.DictReader(f)]
        ev = subprocess.run(
            [sys.executable, "-m", "jadecli", "evaluate", str(out), "--format", "json"],
            env=_env(code, threads),
            capture_output=True,
            text=True,
            cwd=tmp,
        )
        evaluation = _strip(json.loads(ev.stdout)) if ev.returncode == 0 else ev.stderr
        lines = [ln for ln in done.stdout.splitlines() if "accuracy" in ln]
        return {
            "command": " ".join(flags),
            "weights": weights,
            "metrics": rows,
            "evaluate": evaluation,
            "printed": lines,
            "jadecli": _origin(code, tmp),
        }


def _origin(code: Path, cwd: str) -> str:
    """Where the runs' `jadecli` was imported from (to be sure it was `--code`)."""
    probe = [sys.executable, "-c", "import jadecli; print(jadecli.__file__)"]
    done = subprocess.run(probe, env=_env(code, 1), capture_output=True, text=True, cwd=cwd)
    return done.stdout.strip()


def compare(a_path: Path, b_path: Path) -> int:
    a, b = json.loads(a_path.read_text()), json.loads(b_path.read_text())
    bad = 0
    for name in sorted(set(a) | set(b)):
        x, y = a.get(name), b.get(name)
        if x is None or y is None:
            print(f"{name}: only in {'the first' if y is None else 'the second'}")
            bad += 1
            continue
        problems = []
        if x.get("error") or y.get("error"):
            problems.append(f"errors: {x.get('error')} / {y.get('error')}")
        else:
            if x["weights"] != y["weights"]:
                diff = [k for k in x["weights"] if x["weights"][k] != y["weights"].get(k)]
                problems.append(f"{len(diff)} weight tensors differ, e.g. {diff[:3]}")
            cols_x = set(x["metrics"][0]) if x["metrics"] else set()
            cols_y = set(y["metrics"][0]) if y["metrics"] else set()
            shared = cols_x & cols_y
            for rx, ry in zip(x["metrics"], y["metrics"], strict=True):
                for k in sorted(shared):
                    if rx[k] != ry[k]:
                        problems.append(f"metrics epoch {rx['epoch']} {k}: {rx[k]} vs {ry[k]}")
            if cols_x != cols_y:
                print(
                    f"{name}: metrics columns only before {sorted(cols_x - cols_y)}, only "
                    f"after {sorted(cols_y - cols_x)} (values of shared columns compared)"
                )
            if _strip(x["evaluate"]) != _strip(y["evaluate"]):
                problems.append("jade evaluate JSON differs")
            if x["printed"] != y["printed"]:
                problems.append(f"printed {x['printed']} vs {y['printed']}")
        n = len(x.get("weights", {}))
        verdict = "IDENTICAL" if not problems else "DIFFERENT"
        print(f"{name}: {verdict} ({n} weight tensors, {len(x.get('metrics', []))} epochs)")
        for p in problems[:8]:
            print(f"    {p}")
        bad += bool(problems)
    print(f"{len(set(a) | set(b)) - bad} identical, {bad} different")
    return 1 if bad else 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--code", type=Path, default=Path("."), help="source tree to import jadecli from"
    )
    p.add_argument("--data-dir", type=Path, default=Path("runs/data"))
    p.add_argument("--out", type=Path, help="fingerprints JSON to write")
    p.add_argument("--only", nargs="*", help="configuration names (default: all)")
    p.add_argument("--parallel", type=int, default=2, help="runs at once, 1 thread each")
    p.add_argument("--quickstart", action="store_true", help="also the README quickstart")
    p.add_argument("--compare", nargs=2, type=Path, metavar=("BEFORE", "AFTER"))
    args = p.parse_args()
    if args.compare:
        return compare(*args.compare)
    if args.out is None:
        p.error("--out is required (or --compare)")
    jobs = [(n, f, 1) for n, f in CONFIGS.items() if not args.only or n in args.only]
    if args.quickstart:
        jobs.insert(0, ("quickstart", QUICKSTART, 2))
    args.data_dir.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {}
    # the two-thread quickstart alone first, then the one-thread runs `--parallel` at a time
    for group in ([j for j in jobs if j[2] > 1], [j for j in jobs if j[2] == 1]):
        with ThreadPoolExecutor(max_workers=max(args.parallel, 1)) as pool:
            futures = {
                n: pool.submit(fingerprint, n, f, args.code, args.data_dir, t) for n, f, t in group
            }
            for n, fut in futures.items():
                results[n] = fut.result()
                print(f"{n}: {'error' if results[n].get('error') else 'done'}", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
