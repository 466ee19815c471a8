"""Image size: MNIST-M 10 labeled per class + MNIST (first 4,500 per class) at 32, 64 and 128 px,
each a real `jade train` run through the CLI, plus the peak memory of a 45,000-image 128 px colour
auxiliary set.

    python -m benchmarks.image_size --data-dir DATA_DIR --out benchmarks/results/image_size.md

The script first writes the image folders it trains on under --work (default runs/image_size),
from the MNIST IDX files and the MNIST-M image folders in --data-dir, and keeps them (a folder
whose `.complete` marker matches is not written again):

- `data/mnistm-S/{train,test}/<digit>/*.png`: MNIST-M (32x32 RGB) upscaled to SxS (bicubic;
  copied unchanged at 32);
- `data/mnist-S/{train,test}/<digit>/<index>.png`: MNIST's first 4,500 training images per class
  (file order) and its whole test set, padded by 2 px to 32x32 as MNIST-M frames the digit, then
  upscaled to SxS, grey;
- `data/mnist-colour-128/...`: the same 45,000 training images and 100 test images per class at
  128x128 RGB, each digit in a random foreground colour on a random background colour.

Each run's peak resident memory (ru_maxrss of that child alone, from os.wait4) and wall time are
measured here; accuracy and pairs/s are read back from the run's metrics.csv (its last epoch:
nothing is selected on test data) and manifest.yaml. The markdown and a JSON of the raw records
(same stem) are rewritten after every run. With --reuse, a completed run in --work is read
instead of trained again (its memory and wall time then come from the previous JSON, if any).
Extra arguments after `--` go to every `jade train`. `--quick` is a smoke test of the whole
pipeline (sizes 32,64, one seed, 1 epoch of 200 pairs, a 2,000-image colour auxiliary):

    python -m benchmarks.image_size --quick --threads 1 --work /tmp/imgsize-quick \\
        --out /tmp/imgsize-quick/image_size.md
"""

from __future__ import annotations

import argparse
import csv
import datetime
import gzip
import importlib.metadata
import json
import multiprocessing
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from PIL import Image

from jadecli.summarize import mean_std

REPO = Path(__file__).resolve().parent.parent
MARKER = ".complete"
AUX_PER_CLASS = 4500  # the paper's auxiliary set: the first 4,500 MNIST training images per class
PAD = 2  # MNIST-M is MNIST padded by 2 px to 32x32 (MNIST-M/README.md)
COLOUR_SEED = 20240
COLOUR_TEST_PER_CLASS = 100
RSS_TARGET_BYTES = 4 * 10**9  # the "within 4 GB"
ACC_TOLERANCE = 3.0  # points below the 32 px result the larger sizes may fall
CHUNK = 500  # images per task of the writing pool


# --------------------------------------------------------------------------- arguments


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--data-dir", default="../shared/data", help="holds MNIST/raw and MNIST-M")
    ap.add_argument(
        "--work", default="runs/image_size", help="folder for the generated data and the runs"
    )
    ap.add_argument("--sizes", default="32,64,128", help="comma-separated image sides (px)")
    ap.add_argument("--seeds", default="0,1,2", help="comma-separated")
    ap.add_argument("--models", default="jade", help="comma-separated: single, paired, jade")
    ap.add_argument("--out", default="benchmarks/results/image_size.md", help="markdown to write")
    ap.add_argument(
        "--big-aux",
        type=int,
        default=None,
        metavar="N",
        help="training images of the 128 px colour auxiliary whose memory is measured "
        "(default 45000; --quick: 2000; 0 skips the measurement)",
    )
    ap.add_argument(
        "--quick",
        action="store_true",
        help="smoke test: sizes 32,64, one seed, --epochs 1 --epoch-size 200, 2,000-image "
        "colour auxiliary",
    )
    ap.add_argument("--reuse", action="store_true", help="read completed runs in --work")
    ap.add_argument(
        "--threads",
        type=int,
        default=None,
        metavar="N",
        help="OMP_NUM_THREADS for every `jade train` (default: unset, jade decides)",
    )
    ap.add_argument(
        "--workers",
        type=int,
        default=None,
        metavar="N",
        help="processes that write the image folders (default: 2, or --threads when given)",
    )
    ap.add_argument("extra", nargs="*", help="more `jade train` flags (after --)")
    args = ap.parse_args(argv)
    if args.quick:
        args.sizes = "32,64"
        args.seeds = args.seeds.split(",")[0]
    if args.big_aux is None:
        args.big_aux = 2000 if args.quick else 10 * AUX_PER_CLASS
    if args.workers is None:
        args.workers = args.threads if args.threads else 2
    if args.workers < 1:
        ap.error("--workers must be at least 1")
    if args.big_aux and (args.big_aux % 10 or args.big_aux > 10 * AUX_PER_CLASS):
        ap.error(f"--big-aux must be a multiple of 10, at most {10 * AUX_PER_CLASS}")
    return args


def int_list(text: str) -> list[int]:
    return [int(s) for s in text.split(",") if s.strip()]


# --------------------------------------------------------------------------- source data


def read_idx(path: Path) -> np.ndarray:
    """An MNIST IDX file (big-endian header: magic 2051 images with rows and columns, 2049
    labels), uncompressed or, if only that exists, `.gz`."""
    if not path.is_file() and path.with_name(path.name + ".gz").is_file():
        raw = gzip.decompress(path.with_name(path.name + ".gz").read_bytes())
    else:
        raw = path.read_bytes()
    magic, count = np.frombuffer(raw, dtype=">u4", count=2)
    if magic == 2051:
        rows, cols = np.frombuffer(raw, dtype=">u4", count=2, offset=8)
        data = np.frombuffer(raw, dtype=np.uint8, offset=16)
        return data.reshape(int(count), int(rows), int(cols))
    if magic == 2049:
        return np.frombuffer(raw, dtype=np.uint8, offset=8)[: int(count)]
    raise SystemExit(f"{path}: not an MNIST IDX file (magic {int(magic)})")


def load_mnist(data_dir: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    stem = "train" if split == "train" else "t10k"
    raw = data_dir / "MNIST" / "raw"
    images = read_idx(raw / f"{stem}-images-idx3-ubyte")
    labels = read_idx(raw / f"{stem}-labels-idx1-ubyte")
    if len(images) != len(labels):
        raise SystemExit(f"{raw}: {len(images)} {split} images but {len(labels)} labels")
    return images, labels


def first_per_class(labels: np.ndarray, k: int) -> np.ndarray:
    """Indices of the first k images of each class, in file order."""
    keep = np.concatenate([np.flatnonzero(labels == c)[:k] for c in range(10)])
    return np.sort(keep)


# --------------------------------------------------------------------------- writing folders


def _pad_resize_grey(digit: np.ndarray, size: int) -> Image.Image:
    img = Image.fromarray(np.pad(digit, PAD))  # 28x28 -> 32x32, mode L
    return img if size == img.width else img.resize((size, size), Image.Resampling.BICUBIC)


def _write_mnistm(task: tuple[list[tuple[str, str]], int]) -> int:
    pairs, size = task
    for src, dst in pairs:
        if size == 32:
            shutil.copyfile(src, dst)
            continue
        with Image.open(src) as img:
            img.convert("RGB").resize((size, size), Image.Resampling.BICUBIC).save(
                dst, compress_level=1
            )
    return len(pairs)


def _write_mnist(task: tuple[np.ndarray, list[str], int]) -> int:
    digits, paths, size = task
    for digit, dst in zip(digits, paths, strict=True):
        _pad_resize_grey(digit, size).save(dst, compress_level=1)
    return len(paths)


def _write_colour(task: tuple[np.ndarray, np.ndarray, np.ndarray, list[str], int]) -> int:
    digits, fgs, bgs, paths, size = task
    for digit, fg, bg, dst in zip(digits, fgs, bgs, paths, strict=True):
        a = np.asarray(_pad_resize_grey(digit, size), dtype=np.float32)[..., None] / 255.0
        rgb = bg[None, None, :] * (1.0 - a) + fg[None, None, :] * a
        Image.fromarray(np.clip(np.rint(rgb), 0, 255).astype(np.uint8), "RGB").save(
            dst, compress_level=1
        )
    return len(paths)


def make_folder(
    root: Path,
    description: dict[str, Any],
    worker: Callable[[Any], int],
    tasks: Iterable[Any],
    total: int,
    processes: int,
) -> None:
    """Write one image-folder dataset with a pool, unless its marker says it is already there
    as described. The marker is written last, so a half-written folder is written again."""
    marker = root / MARKER
    if marker.is_file():
        try:
            done = json.loads(marker.read_text(encoding="utf-8"))
        except ValueError:
            done = None
        if done == description:
            print(f"data: {root} is there ({total:,} images)", flush=True)
            return
    if root.exists():
        shutil.rmtree(root)
    for split in ("train", "test"):
        for c in range(10):
            (root / split / str(c)).mkdir(parents=True, exist_ok=True)
    many = "processes" if processes != 1 else "process"
    print(f"data: writing {root} ({total:,} images, {processes} {many})", flush=True)
    t0 = time.perf_counter()
    written, shown = 0, 0
    with multiprocessing.Pool(processes) as pool:
        for n in pool.imap_unordered(worker, tasks):
            written += n
            if written - shown >= total / 10 or written == total:
                shown = written
                rate = written / max(time.perf_counter() - t0, 1e-9)
                print(f"  {root.name}: {written:,}/{total:,} ({rate:.0f} images/s)", flush=True)
    if written != total:
        raise SystemExit(f"{root}: wrote {written} images, expected {total}")
    marker.write_text(json.dumps(description, indent=1), encoding="utf-8")


def chunks(n: int) -> list[slice]:
    return [slice(i, min(i + CHUNK, n)) for i in range(0, n, CHUNK)]


def make_mnistm(data_dir: Path, root: Path, size: int, processes: int) -> None:
    src_root = data_dir / "MNIST-M"
    pairs: list[tuple[str, str]] = []
    for split in ("train", "test"):
        for c in range(10):
            folder = src_root / split / str(c)
            if not folder.is_dir():
                raise SystemExit(f"missing {folder}: expected MNIST-M/{{train,test}}/<digit>/")
            for src in sorted(folder.glob("*.png")):
                pairs.append((str(src), str(root / split / str(c) / src.name)))
    description = {"source": str(src_root.resolve()), "size": size, "images": len(pairs)}
    tasks = [(pairs[s], size) for s in chunks(len(pairs))]
    make_folder(root, description, _write_mnistm, tasks, len(pairs), processes)


def mnist_selection(
    data_dir: Path, train_per_class: int, test_per_class: int | None
) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """split -> (digits, labels, MNIST indices) of the chosen images."""
    out = {}
    for split, k in (("train", train_per_class), ("test", test_per_class)):
        images, labels = load_mnist(data_dir, split)
        idx = np.arange(len(labels)) if k is None else first_per_class(labels, k)
        out[split] = (images[idx], labels[idx], idx)
    return out


def _paths(root: Path, split: str, labels: np.ndarray, idx: np.ndarray) -> list[str]:
    return [
        str(root / split / str(int(y)) / f"{int(i)}.png") for y, i in zip(labels, idx, strict=True)
    ]


def make_mnist(data_dir: Path, root: Path, size: int, processes: int) -> None:
    chosen = mnist_selection(data_dir, AUX_PER_CLASS, None)
    total = sum(len(v[1]) for v in chosen.values())
    description = {
        "source": str((data_dir / "MNIST" / "raw").resolve()),
        "train": f"first {AUX_PER_CLASS} per class",
        "test": "all",
        "pad": PAD,
        "size": size,
        "images": total,
    }
    tasks = []
    for split, (digits, labels, idx) in chosen.items():
        paths = _paths(root, split, labels, idx)
        tasks += [(digits[s], paths[s], size) for s in chunks(len(paths))]
    make_folder(root, description, _write_mnist, tasks, total, processes)


def make_colour(data_dir: Path, root: Path, n_train: int, processes: int) -> None:
    size = 128
    chosen = mnist_selection(data_dir, n_train // 10, COLOUR_TEST_PER_CLASS)
    total = sum(len(v[1]) for v in chosen.values())
    description = {
        "source": str((data_dir / "MNIST" / "raw").resolve()),
        "train": f"first {n_train // 10} per class",
        "test": f"first {COLOUR_TEST_PER_CLASS} per class",
        "pad": PAD,
        "size": size,
        "colour_seed": COLOUR_SEED,
        "images": total,
    }
    rng = np.random.default_rng(COLOUR_SEED)
    tasks = []
    for split, (digits, labels, idx) in chosen.items():
        n = len(labels)
        fg = rng.integers(0, 256, size=(n, 3)).astype(np.float32)
        # background at least 64 levels away from the foreground in every channel
        bg = ((fg + rng.integers(64, 193, size=(n, 3))) % 256).astype(np.float32)
        paths = _paths(root, split, labels, idx)
        tasks += [(digits[s], fg[s], bg[s], paths[s], size) for s in chunks(n)]
    make_folder(root, description, _write_colour, tasks, total, processes)


# --------------------------------------------------------------------------- runs


@dataclass
class Record:
    kind: str  # "size" or "big-aux"
    size: int
    model: str
    seed: int
    status: str
    command: str
    run_dir: str
    primary: float | None = None  # test accuracy, percent
    auxiliary: float | None = None
    pairs_per_s: float | None = None  # mean of examples_per_s over epochs
    peak_rss_mib: float | None = None
    wall_s: float | None = None
    exit_code: int | None = None
    reused: bool = False
    images: int | None = None  # big-aux: auxiliary training images
    extra: dict[str, Any] = field(default_factory=dict)


def child_env(threads: int | None) -> dict[str, str]:
    env = dict(os.environ)
    # this checkout's jadecli, whatever the installed `jade` points at
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    return env


def run_child(cmd: list[str], log: Path, env: dict[str, str]) -> tuple[int, float, float]:
    """Run `jade ...` as `python -m jadecli ...`; returns (exit code, wall s, peak RSS MiB) of
    that child alone (os.wait4: RUSAGE_CHILDREN would be the max over all children so far)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w", encoding="utf-8") as fh:
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            [sys.executable, "-m", "jadecli", *cmd[1:]],
            stdout=fh,
            stderr=subprocess.STDOUT,
            env=env,
        )
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        except KeyboardInterrupt:
            proc.terminate()
            proc.wait()
            raise
        wall = time.perf_counter() - t0
    code = os.waitstatus_to_exitcode(status)
    proc.returncode = code  # reaped here; tell Popen so it does not wait again
    return code, wall, usage.ru_maxrss / 1024.0  # KiB on Linux


def read_manifest(run: Path) -> dict[str, Any]:
    try:
        manifest = yaml.safe_load((run / "manifest.yaml").read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return {}
    return manifest if isinstance(manifest, dict) else {}


def read_metrics(run: Path) -> list[dict[str, str]]:
    try:
        with (run / "metrics.csv").open(newline="", encoding="utf-8") as fh:
            return list(csv.DictReader(fh))
    except OSError:
        return []


def _num(value: str | None) -> float | None:
    try:
        return float(value) if value not in (None, "") else None
    except ValueError:
        return None


def fill_from_run(rec: Record, run: Path) -> None:
    manifest = read_manifest(run)
    rows = read_metrics(run)
    rec.status = str(manifest.get("status", rec.status))
    if rows:
        last = rows[-1]
        for key, attr in (("test_acc_primary", "primary"), ("test_acc_aux", "auxiliary")):
            value = _num(last.get(key))
            setattr(rec, attr, None if value is None else 100.0 * value)
        speeds = [v for v in (_num(r.get("examples_per_s")) for r in rows) if v is not None]
        rec.pairs_per_s = statistics.mean(speeds) if speeds else None
    versions = manifest.get("versions") or {}
    rec.extra = {
        "epochs": len(rows),
        "train_seconds": manifest.get("train_seconds"),
        "precision": manifest.get("precision"),
        "threads": manifest.get("threads"),
        "jadecli": manifest.get("jadecli_version"),
        "torch": versions.get("torch") if isinstance(versions, dict) else None,
        "error": manifest.get("error"),
    }


def reusable(run: Path, cmd: list[str]) -> bool:
    manifest = read_manifest(run)
    flags = " ".join(shlex.quote(c) for c in cmd[2:-2])  # without `jade train` and --out
    return manifest.get("status") == "completed" and flags in str(manifest.get("command", ""))


def execute(
    rec: Record, cmd: list[str], args: argparse.Namespace, previous: dict[str, dict[str, Any]]
) -> Record:
    run = Path(rec.run_dir)
    if args.reuse and reusable(run, cmd):
        rec.reused = True
        old = previous.get(rec.run_dir, {})
        if old.get("command") == rec.command:
            rec.peak_rss_mib, rec.wall_s = old.get("peak_rss_mib"), old.get("wall_s")
        fill_from_run(rec, run)
        return rec
    if run.exists():
        cmd = [*cmd, "--overwrite"]
    log = Path(args.work) / "logs" / f"{run.name}.log"
    started = time.time()
    code, wall, rss = run_child(cmd, log, child_env(args.threads))
    rec.exit_code, rec.wall_s, rec.peak_rss_mib = code, wall, rss
    rec.status = "completed" if code == 0 else "failed"
    manifest = run / "manifest.yaml"
    if manifest.is_file() and manifest.stat().st_mtime >= started - 1:
        fill_from_run(rec, run)  # the manifest's status; an older run's files are not read
    if code != 0:
        tail = log.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-1:] or ["?"]
        rec.status = f"{rec.status} (exit {code}, log {log}): {tail[0]}"
    return rec


def size_command(size: int, model: str, seed: int, args: argparse.Namespace) -> list[str]:
    data = Path(args.work) / "data"
    cmd = [
        "jade", "train",
        "--primary", f"folder:{data / f'mnistm-{size}'}",
        "--n-labeled", "100",
        "--auxiliary", f"folder:{data / f'mnist-{size}'}",
        "--model", model,
        "--seed", str(seed),
        "--eval-every", "0",
        "--no-progress",
        "--device", "cpu",
    ]  # fmt: skip
    if args.quick:
        cmd += ["--epochs", "1", "--epoch-size", "200"]
    run = Path(args.work) / "runs" / f"size{size}-{model}-seed{seed}"
    return [*cmd, *args.extra, "--out", str(run)]


def big_aux_command(args: argparse.Namespace) -> list[str]:
    data = Path(args.work) / "data"
    cmd = [
        "jade", "train",
        "--primary", f"folder:{data / 'mnistm-128'}",
        "--n-labeled", "100",
        "--auxiliary", f"folder:{data / 'mnist-colour-128'}",
        "--model", "jade",
        "--epochs", "1",
        "--epoch-size", "2000",
        "--eval-every", "0",
        "--device", "cpu",
        "--no-progress",
    ]  # fmt: skip
    return [*cmd, *args.extra, "--out", str(Path(args.work) / "runs" / "big-aux-128")]


def shown(cmd: list[str]) -> str:
    return " ".join(shlex.quote(c) for c in cmd)


# --------------------------------------------------------------------------- report


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    ram = ""
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("MemTotal:"):
                ram = f", {int(line.split()[1]) / 2**20:.1f} GiB RAM"
                break
    except OSError:
        pass
    return f"{cpu} ({os.cpu_count()} CPUs{ram})"


def torch_version(records: list[Record]) -> str:
    for r in records:
        if r.extra.get("torch"):
            return str(r.extra["torch"])
    try:
        return importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        return "?"


def fmt(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def verdict(diffs: list[float]) -> str:
    mean = statistics.mean(diffs)
    met = mean >= -ACC_TOLERANCE
    text = f"**{'met' if met else 'NOT met'}**"
    if len(diffs) < 2:
        return text + " (one seed: no spread measured, so no noise estimate)"
    std = statistics.stdev(diffs)
    if std > abs(mean):
        text += f"; within noise (std {std:.2f} > |mean difference| {abs(mean):.2f})"
    else:
        text += f" (std {std:.2f} <= |mean difference| {abs(mean):.2f}: a real difference)"
    return text


def size_section(model: str, records: list[Record], sizes: list[int]) -> list[str]:
    mine = [r for r in records if r.kind == "size" and r.model == model]
    lines = [f"## {model}", ""]
    lines.append(
        "| size | primary acc (mean ± std) | per seed | aux acc | pairs/s | peak RSS MiB (max) "
        "| wall s / run |"
    )
    lines.append("| --- | --- | --- | --- | --- | --- | --- |")
    acc: dict[int, dict[int, float]] = {}
    for size in sizes:
        rows = sorted((r for r in mine if r.size == size), key=lambda r: r.seed)
        if not rows:
            continue
        acc[size] = {r.seed: r.primary for r in rows if r.primary is not None}
        ok = [r for r in rows if r.primary is not None]
        per_seed = ", ".join(
            f"s{r.seed}: {r.primary:.2f}"
            if r.primary is not None
            else f"s{r.seed}: {r.status.split(' (')[0]}"
            for r in rows
        )
        auxs = [r.auxiliary for r in ok if r.auxiliary is not None]
        speeds = [r.pairs_per_s for r in ok if r.pairs_per_s is not None]
        done = [r for r in rows if r.status == "completed"]  # failures are listed below
        rss = [r.peak_rss_mib for r in done if r.peak_rss_mib is not None]
        walls = [r.wall_s for r in done if r.wall_s is not None]
        lines.append(
            f"| {size} | **{mean_std(list(acc[size].values()))}** | {per_seed} | "
            f"{mean_std(auxs)} | {mean_std(speeds, 0)} | {fmt(max(rss) if rss else None, 0)} | "
            f"{fmt(statistics.mean(walls) if walls else None, 0)} |"
        )
    base = acc.get(32, {})
    others = [s for s in sizes if s != 32 and s in acc]
    if base and others:
        lines += [
            "",
            f"Accuracy minus the 32 px result (per-seed differences, same seed and labeled "
            f"subset; target: no more than {ACC_TOLERANCE:g} points below):",
            "",
            "| size | difference (mean ± std) | per seed | target |",
            "| --- | --- | --- | --- |",
        ]
        for size in others:
            seeds = sorted(set(base) & set(acc[size]))
            diffs = [acc[size][s] - base[s] for s in seeds]
            if not diffs:
                lines.append(f"| {size} | - | no seed with both results | - |")
                continue
            per_seed = ", ".join(f"s{s}: {d:+.2f}" for s, d in zip(seeds, diffs, strict=True))
            lines.append(f"| {size} | {mean_std(diffs)} | {per_seed} | {verdict(diffs)} |")
    elif others:
        lines += ["", "No 32 px result to compare with."]
    lines.append("")
    return lines


def big_aux_section(rec: Record) -> list[str]:
    n = rec.images or 0
    raw = n * 3 * 128 * 128
    lines = [f"## Peak memory of a {n:,}-image 128 px colour auxiliary", ""]
    lines.append(
        f"`mnist-colour-128`: {n:,} training images (MNIST's first {n // 10:,} per class, padded "
        f"to 32 px, upscaled to 128 px, each digit in a random RGB colour on a random RGB "
        f"background) and {10 * COLOUR_TEST_PER_CLASS:,} test images; primary `mnistm-128`, "
        "jade, one epoch of 2,000 pairs. Peak RSS is that process's ru_maxrss: the Python "
        "interpreter, torch, the decoded datasets and training together."
    )
    lines += ["", "| aux images | raw uint8 (N x 3 x 128 x 128) | peak RSS | wall s | target |"]
    lines.append("| --- | --- | --- | --- | --- |")
    if rec.peak_rss_mib is None:
        rss, target = "-", "-"
    else:
        rss_bytes = rec.peak_rss_mib * 2**20
        rss = f"{rec.peak_rss_mib:,.0f} MiB = {rss_bytes / 1e9:.2f} GB"
        target = "PASS" if rss_bytes <= RSS_TARGET_BYTES else "FAIL"
        if rec.status != "completed":
            target += f" (run {rec.status})"
        target = f"**{target}** (<= {RSS_TARGET_BYTES / 1e9:g} GB)"
    lines.append(
        f"| {n:,} | {raw:,} B = {raw / 1e9:.2f} GB (float32: {4 * raw / 1e9:.2f} GB) | {rss} | "
        f"{fmt(rec.wall_s, 0)} | {target} |"
    )
    if n != 10 * AUX_PER_CLASS:
        lines += ["", f"(Not the issue's 45,000 images: {n:,}, so the target check is indicative.)"]
    lines.append("")
    return lines


def render(
    records: list[Record], args: argparse.Namespace, sizes: list[int], elapsed: float
) -> str:
    title = "Image size: MNIST-M 10 labeled per class + MNIST at " + ", ".join(
        f"{s}" for s in sizes
    )
    lines = [f"# {title} px", ""]
    precisions = sorted(
        {str(r.extra.get("precision")) for r in records if r.extra.get("precision")}
    )
    threads = sorted({str(r.extra.get("threads")) for r in records if r.extra.get("threads")})
    versions = sorted({str(r.extra.get("jadecli")) for r in records if r.extra.get("jadecli")})
    lines.append(
        f"Measured {datetime.date.today().isoformat()} on {machine()}, torch "
        f"{torch_version(records)}, jadecli {', '.join(versions) or '?'}, precision "
        f"{', '.join(precisions) or '?'}, torch threads: {', '.join(threads) or '?'} "
        f"(OMP_NUM_THREADS={args.threads if args.threads else 'unset'}); {len(records)} runs in "
        f"{elapsed / 60:.1f} min of wall time."
    )
    lines += [
        "",
        "Command: `python -m benchmarks.image_size "
        + " ".join(shlex.quote(a) for a in sys.argv[1:])
        + "`",
        "",
        "Primary: MNIST-M (9,001 train / 9,001 test, 32x32 RGB) upscaled bicubic to each size, "
        "100 labeled images (10 per class, drawn with the seed). Auxiliary: MNIST's first 4,500 "
        "training images per class and its 10,000 test images, padded by 2 px to 32x32 (as "
        "MNIST-M frames the digit), upscaled bicubic, grey. Default `jade train` recipe"
        + (" (--quick: 1 epoch of 200 pairs)" if args.quick else "")
        + ". Accuracy is **test** accuracy (%) after the last epoch; ± is the sample standard "
        "deviation over seeds; pairs/s is the mean of metrics.csv's examples_per_s over epochs; "
        "peak RSS is ru_maxrss of each `jade train` process (os.wait4); wall time includes "
        "loading the image folders.",
        "",
    ]
    models = list(dict.fromkeys(r.model for r in records if r.kind == "size"))
    for model in models:
        lines += size_section(model, records, sizes)
    for rec in records:
        if rec.kind == "big-aux":
            lines += big_aux_section(rec)
    failed = [r for r in records if r.status != "completed"]
    if failed:
        lines += ["## Failed runs", ""]
        lines += [f"- `{r.run_dir}`: {r.status}" for r in failed]
        lines.append("")
    lines += ["## Commands", "", "Each run, as `jade train` was called:", "", "```"]
    lines += [r.command + ("  # reused" if r.reused else "") for r in records]
    lines += ["```", ""]
    return "\n".join(lines)


def write_outputs(
    records: list[Record], args: argparse.Namespace, sizes: list[int], elapsed: float
) -> str:
    text = render(records, args, sizes, elapsed)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")
    out.with_suffix(".json").write_text(
        json.dumps([asdict(r) for r in records], indent=1), encoding="utf-8"
    )
    return text


def load_previous(out: Path) -> dict[str, dict[str, Any]]:
    try:
        data = json.loads(out.with_suffix(".json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return {d["run_dir"]: d for d in data if isinstance(d, dict) and "run_dir" in d}


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sizes = int_list(args.sizes)
    seeds = int_list(args.seeds)
    models = [m for m in args.models.split(",") if m]
    data_dir = Path(args.data_dir)
    data = Path(args.work) / "data"
    previous = load_previous(Path(args.out)) if args.reuse else {}
    t0 = time.perf_counter()

    for size in sizes:
        make_mnistm(data_dir, data / f"mnistm-{size}", size, args.workers)
        make_mnist(data_dir, data / f"mnist-{size}", size, args.workers)
    if args.big_aux:
        make_mnistm(data_dir, data / "mnistm-128", 128, args.workers)
        make_colour(data_dir, data / "mnist-colour-128", args.big_aux, args.workers)

    records: list[Record] = []
    if args.big_aux:
        cmd = big_aux_command(args)
        rec = Record("big-aux", 128, "jade", 0, "?", shown(cmd), cmd[-1], images=args.big_aux)
        execute(rec, cmd, args, previous)
        records.append(rec)
        print(
            f"big auxiliary ({args.big_aux:,} x 128 px RGB): {rec.status}, peak RSS "
            f"{fmt(rec.peak_rss_mib, 0)} MiB, {fmt(rec.wall_s, 0)} s",
            flush=True,
        )
    for size in sizes:
        for model in models:
            for seed in seeds:
                cmd = size_command(size, model, seed, args)
                rec = Record("size", size, model, seed, "?", shown(cmd), cmd[-1])
                execute(rec, cmd, args, previous)
                records.append(rec)
                acc = f"{rec.primary:.2f}%" if rec.primary is not None else rec.status
                print(
                    f"size {size:3d} {model:6s} seed {seed}: {acc}  aux {fmt(rec.auxiliary)}%  "
                    f"{fmt(rec.pairs_per_s, 0)} pairs/s  {fmt(rec.peak_rss_mib, 0)} MiB  "
                    f"{fmt(rec.wall_s, 0)} s",
                    flush=True,
                )
                write_outputs(records, args, sizes, time.perf_counter() - t0)
    text = write_outputs(records, args, sizes, time.perf_counter() - t0)
    print(text)
    print(f"wrote {args.out} and {Path(args.out).with_suffix('.json')}")
    return 1 if any(r.status != "completed" for r in records) else 0


if __name__ == "__main__":
    raise SystemExit(main())
