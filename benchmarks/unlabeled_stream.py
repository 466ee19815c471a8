"""Does an unlabeled folder larger than the memory budget train? (`--unlabeled`, streamed)

Writes N unlabeled JPEG images of S x S px (a bright stroke on a smooth random texture; default
100,000 at 128 px: 4.9 GB as 8-bit images, far beyond the --memory-budget given) into a folder,
then trains a short JADE run on the built-in pair resized to S px with `--unlabeled
folder:THAT`, and records from the run's manifest whether the folder was streamed, and from
/proc the memory the run's processes took (sampled every 0.2 s: the main process's peak RSS, and
the peak of the proportional set size summed over it and its data-loading workers, which counts
the pages they share once).
A second arm trains the same run on the first `--resident` images of the folder, which fit the
budget and are decoded into memory, for the speed beside it.

    python -m benchmarks.unlabeled_stream --work runs/stream --n 100000 --size 128 \
        --out benchmarks/results/unlabeled_stream.md
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import yaml
from PIL import Image


def write_folder(folder: Path, n: int, size: int, seed: int = 0) -> None:
    """n JPEG images in sub-folders of 1,000 (skipped if the folder already holds n)."""
    if folder.is_dir() and sum(1 for _ in folder.rglob("*.jpg")) == n:
        return
    rng = np.random.default_rng(seed)
    for i in range(n):
        d = folder / f"{i // 1000:03d}"
        if i % 1000 == 0:
            d.mkdir(parents=True, exist_ok=True)
        coarse = rng.integers(0, 90, size=(16, 16, 3), dtype=np.uint8)  # a smooth texture
        arr = np.array(Image.fromarray(coarse).resize((size, size), Image.Resampling.BILINEAR))
        r = int(rng.integers(size // 8, size - size // 8))
        arr[r : r + max(2, size // 16), size // 8 : size - size // 8] = rng.integers(150, 256, 3)
        Image.fromarray(arr).save(d / f"{i}.jpg", quality=85)


def _proc_kib(path: str, key: str) -> int:
    """The `key:` line of a /proc file, in KiB (0 when the process is gone)."""
    try:
        with open(path, encoding="ascii") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def rss_kib(pid: int) -> int:
    return _proc_kib(f"/proc/{pid}/status", "VmRSS")


def pss_kib(pid: int) -> int:
    """Proportional set size: pages shared with other processes (a forked worker shares the
    parent's datasets) counted once in all, split between those sharing them."""
    return _proc_kib(f"/proc/{pid}/smaps_rollup", "Pss")


def cpu_name() -> str:
    """The CPU's model name and whether it computes bf16 natively."""
    name, flags = platform.processor() or platform.machine(), ""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("model name") and name in ("", "x86_64"):
                    name = line.split(":", 1)[1].strip()
                elif line.startswith("flags"):
                    flags = line
                    break
    except OSError:
        pass
    bf16 = "native bf16" if ("avx512_bf16" in flags or "amx_bf16" in flags) else "no native bf16"
    return f"{name} ({bf16})"


def children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children", encoding="ascii") as fh:
            return [int(c) for c in fh.read().split()]
    except OSError:
        return []


def run(cmd: list[str], threads: int) -> tuple[float, int, int]:
    """(seconds, main peak RSS KiB, peak PSS KiB of it and its workers) of one command."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    main = tree = 0
    while proc.poll() is None:
        m = rss_kib(proc.pid)
        main = max(main, m)
        tree = max(tree, pss_kib(proc.pid) + sum(pss_kib(c) for c in children(proc.pid)))
        time.sleep(0.2)
    if proc.returncode:
        err = proc.stderr.read().decode() if proc.stderr else ""
        sys.exit(f"failed ({proc.returncode}): {shlex.join(cmd)}\n{err[-2000:]}")
    return time.perf_counter() - start, main, tree


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=Path("runs/stream"))
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--resident", type=int, default=2_000, help="images of the resident arm")
    ap.add_argument("--budget", type=float, default=2.0, help="--memory-budget, GB")
    ap.add_argument("--epoch-size", type=int, default=1_280)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    folder = args.work / f"unlabeled-{args.n}-{args.size}"
    small = args.work / f"unlabeled-{args.resident}-{args.size}"
    t0 = time.perf_counter()
    write_folder(folder, args.n, args.size)
    write_folder(small, args.resident, args.size)
    made = time.perf_counter() - t0
    rows = []
    for arm, source in (("streamed", folder), ("resident", small)):
        out = args.work / f"run-{arm}"
        cmd = [
            sys.executable, "-m", "jadecli", "train", "--primary", "synth-street",
            "--auxiliary", "synth-hand", "--n-labeled", "100", "--primary-size", str(args.size),
            "--auxiliary-size", str(args.size), "--unlabeled", f"folder:{source}",
            "--memory-budget", str(args.budget), "--epochs", "1", "--epoch-size",
            str(args.epoch_size), "--data-dir", str(args.work / "data"), "--no-test",
            "--no-progress", "--out", str(out), "--overwrite",
        ]  # fmt: skip
        seconds, main_kib, tree_kib = run(cmd, args.threads)
        m = yaml.safe_load((out / "manifest.yaml").read_text())
        record = m["datasets"]["primary"]["unlabeled"]["sources"][0]
        train_s = float(m.get("train_seconds") or 0)
        rows.append((arm, record, seconds, train_s, main_kib, tree_kib, shlex.join(cmd)))
    cpu = cpu_name()
    lines = [
        "# Streaming unlabeled images beyond the memory budget",
        "",
        f"Measured {time.strftime('%Y-%m-%d')} on {cpu} ({os.cpu_count()} CPUs), "
        f"{args.threads} threads per run. Folder: {args.n:,} JPEGs of {args.size} px "
        f"({args.n * 3 * args.size**2 / 1e9:.1f} GB as 8-bit images; written in {made:.0f} s), "
        f"--memory-budget {args.budget:g} GB; the resident arm: {args.resident:,} images of the "
        f"same kind. One epoch of {args.epoch_size:,} pairs of the built-in pair at "
        f"{args.size} px, JADE, --unlabeled-ratio 1.",
        "",
        "| arm | images | streamed | wall s (load + train) | train s | peak RSS main (MB) | "
        "peak PSS main + workers (MB) |",
        "| --- | ---: | --- | ---: | ---: | ---: | ---: |",
    ]
    for arm, rec, seconds, train_s, main_kib, tree_kib, _ in rows:
        lines.append(
            f"| {arm} | {rec['images']:,} | {rec['streamed']} | {seconds:.0f} | {train_s:.0f} | "
            f"{main_kib / 1024:.0f} | {tree_kib / 1024:.0f} |"
        )
    lines += ["", "Commands:", ""] + [f"    {r[-1]}" for r in rows]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
