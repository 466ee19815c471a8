"""A public peer on jadecli's `mnistm10-unl` split: pytorch-adapt's DANN (Ganin et al., JMLR
2016, as implemented by pytorch-adapt 0.0.83, code nobody here wrote), seed by seed, beside the
jadecli runs of the same split.

    python -m benchmarks.peers --seeds 0,1,2 --data-dir DATA_DIR --jade-runs runs/accuracy \
        --out benchmarks/results/peers.md

The split is the one `jade train --primary mnist-m --n-labeled 1100 --val 1000 --unlabeled rest
--auxiliary mnist --aux-per-class 4500 --auxiliary-pad 2 --data-dir DIR --seed S` trains on
(benchmarks/accuracy.py's row `mnistm10-unl`), made by jadecli's own code: the flags are
resolved by `jade train --print-config` and the images selected by jadecli.data.pair.
training_data (labeled_index, split_labeled, rest_index, aux_used_index), so nothing of the
sampling is re-implemented here. Per seed S:

- source: MNIST, the first 4,500 training images per class, padded by 2 to 32x32 (45,000; grey,
  stored with one channel, repeated to 3 by the runner as jadecli's shared trunk does);
- target_labeled: the 100 MNIST-M images (10 per class) jadecli trains on with labels;
- dev: the 1,000 held out by --val (100 per class): the only data an epoch is chosen on;
- target_unlabeled: every other MNIST-M training image (7,901), written without labels;
- test: MNIST-M's test split.

They go to WORK/seedS/split.npz (uint8 images, int64 labels, and the training-split indices of
each primary set), and `PEER_PYTHON benchmarks/peers_dann.py --data ... --out ...` trains DANN
on them in pytorch-adapt's own virtual environment (its pins clash with jadecli's; the runner
imports nothing from jadecli). Its network, optimiser and batches are described in
benchmarks/peers_dann.py: G = a conv 32-64-128 trunk (jadecli's shared trunk's size), C and D
pytorch-adapt's MLPs, Adam 1e-3, the DANN paper's ramp of the reversal weight, 64 source + 64
unlabeled target images a step and, with --semi (the default), 64 of the 100 labeled MNIST-M
images a step through the classifier too: the labels jadecli has. --no-semi is DANN as
published, with no target labels. Arguments after `--` go to the runner (e.g. `-- --lr 3e-4
--net mnist`).

DANN's reported epoch is the one with the best dev accuracy; test accuracy is read only for that
epoch's weights and for the last epoch's. jadecli's numbers are read from the run folders under
--jade-runs whose manifest config defines the same split (same data flags and seed): their
final_metrics (the epoch their --select chose: the last, or best-val), and their
labeled_indices.csv is compared with the split written here, index by index.

CPU time: with --threads 1, one DANN step (64 source + 64 unlabeled + 64 labeled images) of the
default network took about 0.3 s on a 2-core x86 machine whose cores were busy with two other
training runs, so the default 20 epochs of 500 steps (10,000 steps, about 14 passes over the
45,000 MNIST images) take about 50 minutes per seed, plus about 15 s to write each split.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import hashlib
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from benchmarks.accuracy import DIFFERENCE_HEADER, PAIRS, difference_row
from benchmarks.step_speed import cpu_description
from jadecli.summarize import mean_std

PAIR = PAIRS["mnistm10-unl"]
RUNNER = Path(__file__).resolve().parent / "peers_dann.py"
DEFAULT_PEER_PYTHON = "/work/peers-venv/bin/python"
# TrainConfig fields that decide which images a run sees (primary_size is filled from the data)
SPLIT_KEYS = (
    "primary",
    "auxiliary",
    "n_labeled",
    "labeled_selection",
    "val",
    "aux_per_class",
    "primary_size",
    "auxiliary_size",
    "primary_pad",
    "auxiliary_pad",
    "unlabeled",
    "seed",
)


@dataclass
class PeerResult:
    seed: int
    status: str  # completed, or why not
    dev: float | None = None  # percent
    test: float | None = None
    last_test: float | None = None
    selected_epoch: int | None = None
    epochs: int | None = None
    seconds: float | None = None
    command: str = ""
    result_file: str = ""
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class JadeRun:
    path: str
    seed: int
    model: str
    status: str
    dev: float | None
    test: float | None
    selection: str
    selected_epoch: int | None
    epochs: int | None
    same_split: bool | None  # labeled_indices.csv equals the split written here; None: unknown
    seconds: float | None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", default="0", help="comma-separated")
    ap.add_argument("--data-dir", default=None, help="default: $JADE_DATA_DIR, else jadecli's")
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument(
        "--steps-per-epoch",
        type=int,
        default=500,
        help="DANN steps between dev evaluations (0: one pass over the 45,000 source images)",
    )
    ap.add_argument("--threads", type=int, default=1, help="torch threads of the runner")
    ap.add_argument("--work", default="runs/peers", help="folder for splits and results")
    ap.add_argument("--out", default=None, help="markdown file to write (default: print only)")
    ap.add_argument("--peer-python", default=DEFAULT_PEER_PYTHON)
    ap.add_argument(
        "--semi",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="train DANN's classifier on the 100 labeled MNIST-M images too (--no-semi: none)",
    )
    ap.add_argument("--jade-runs", default=None, help="folder of jadecli run folders to compare")
    ap.add_argument(
        "--reuse",
        action="store_true",
        help="read a completed DANN result again (same runner command and runner file)",
    )
    ap.add_argument(
        "--smoke",
        type=int,
        default=0,
        metavar="N",
        help="plumbing test only: keep N evenly spaced images of each set but the 100 labeled",
    )
    ap.add_argument("extra", nargs="*", help="more runner flags (after --)")
    args = ap.parse_args(argv)
    if args.epochs < 1 or args.threads < 1 or args.steps_per_epoch < 0 or args.smoke < 0:
        ap.error("--epochs and --threads must be 1 or more, --steps-per-epoch and --smoke 0+")
    try:
        args.seed_list = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        ap.error(f"--seeds {args.seeds!r}: expected comma-separated integers")
    if not args.seed_list:
        ap.error("--seeds: give at least one seed")
    return args


# --------------------------------------------------------------------------- the split


def jade_command(seed: int, data_dir: str) -> list[str]:
    """The `jade train` flags that define the split (accuracy.py's row), for this seed."""
    return ["jade", "train", *PAIR.args, "--data-dir", data_dir, "--seed", str(seed)]


def resolved_config(seed: int, data_dir: str) -> Any:
    """The TrainConfig `jade train` resolves from those flags (via `--print-config`)."""
    from jadecli.config import resolve_train_config

    cmd = [sys.executable, "-m", "jadecli", *jade_command(seed, data_dir)[1:], "--print-config"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["?"]
        sys.exit(f"jade train --print-config failed: {tail[0]}")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "config.yaml"
        path.write_text(proc.stdout, encoding="utf-8")
        return resolve_train_config({}, path)


def build_split(seed: int, data_dir: str, npz: Path, smoke: int) -> dict[str, Any]:
    """Write the seed's split (jadecli's own selection) to `npz`; returns what it holds."""
    import torch

    from jadecli.data.pair import rest_index, training_data
    from jadecli.progress import NullReporter

    cfg, data = training_data(resolved_config(seed, data_dir), NullReporter())
    assert data.val is not None and data.val_index is not None and data.unlabeled is not None
    assert data.aux_train is not None and data.auxiliary is not None
    if data.unlabeled.streamed:  # `rest` is always held in memory; a folder source is not
        sys.exit("the unlabeled images are streamed from disk; peers.py needs them in memory")
    n_train = int(data.described["primary"]["train_size"])
    rest = rest_index(n_train, data.labeled_index, data.val_index)
    unlabeled = data.unlabeled.resident
    if len(rest) != len(unlabeled):
        sys.exit(f"rest has {len(rest)} indices but the run holds {len(unlabeled)} images")
    source = data.aux_train.images
    grey = bool(torch.equal(source[:, :1].expand_as(source), source))
    sets: dict[str, tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]] = {
        "source": (source[:, :1] if grey else source, data.aux_train.labels, None),
        "target_labeled": (data.labeled.images, data.labeled.labels, data.labeled_index),
        "target_unlabeled": (unlabeled, None, rest),
        "dev": (data.val.images, data.val.labels, data.val_index),
        "test": (data.primary.test.images, data.primary.test.labels, None),
    }
    arrays: dict[str, np.ndarray] = {"classes": np.array(data.primary.classes)}
    sizes: dict[str, int] = {}
    for name, (images, labels, index) in sets.items():
        keep: Any = slice(None)
        if smoke and name != "target_labeled" and len(images) > smoke:  # spread over classes
            keep = torch.linspace(0, len(images) - 1, smoke).round().long()
        arrays[f"{name}_images"] = images[keep].numpy()
        if labels is not None:
            arrays[f"{name}_labels"] = labels[keep].numpy()
        if index is not None:  # into MNIST-M's training split
            arrays[f"{name}_index"] = index[keep].numpy()
        sizes[name] = int(arrays[f"{name}_images"].shape[0])
    npz.parent.mkdir(parents=True, exist_ok=True)
    tmp = npz.with_name(npz.name + ".tmp.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, npz)
    return {
        "config": {k: getattr(cfg, k) for k in SPLIT_KEYS},
        "sizes": sizes,
        "source_channels": f"1 (grey, of {source.shape[1]} identical)" if grey else "3",
        "labeled_index": data.labeled_index.tolist(),
        "val_index": data.val_index.tolist(),
        "classes": list(data.primary.classes),
    }


# --------------------------------------------------------------------------- DANN


def runner_command(args: argparse.Namespace, seed: int, npz: Path, out: Path) -> list[str]:
    cmd = [args.peer_python, str(RUNNER), "--data", str(npz), "--out", str(out)]
    cmd += ["--epochs", str(args.epochs), "--steps-per-epoch", str(args.steps_per_epoch)]
    cmd += ["--seed", str(seed), "--threads", str(args.threads)]
    cmd += ["--semi" if args.semi else "--no-semi", *args.extra]
    return cmd


def read_result(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def run_dann(args: argparse.Namespace, seed: int, npz: Path, folder: Path) -> PeerResult:
    """Train DANN on the seed's split in the peer venv; exits with the runner's stderr tail if
    it fails."""
    out = folder / "result.json"
    cmd = runner_command(args, seed, npz, out)
    shown = " ".join(shlex.quote(c) for c in cmd)
    runner_sha = hashlib.sha256(RUNNER.read_bytes()).hexdigest()
    result = read_result(out) if args.reuse else {}
    same = result.get("command") == shown and result.get("runner_sha256") == runner_sha
    if result.get("status") != "completed" or not same:  # --reuse: the same command and runner
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
        env.update(OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
        env["PYTHONNOUSERSITE"] = "1"
        log = folder / "runner.stderr"
        out.unlink(missing_ok=True)  # a result read after the run is this run's
        with open(log, "w", encoding="utf-8") as err:
            proc = subprocess.run(cmd, stdout=None, stderr=err, env=env)
        result = read_result(out)
        if proc.returncode != 0 or result.get("status") != "completed":
            text = log.read_text(encoding="utf-8", errors="replace").rstrip().splitlines()
            why = "\n".join(text[-25:]) or "(no stderr)"
            sys.exit(
                f"the DANN runner failed for seed {seed} (exit code {proc.returncode}):\n"
                f"  {shown}\n--- its stderr, last lines ({log}):\n{why}"
            )
        result.update(command=shown, runner_sha256=runner_sha)
        out.write_text(json.dumps(result, indent=1), encoding="utf-8")
    return PeerResult(
        seed,
        "completed",
        100.0 * result["dev_acc"],
        100.0 * result["test_acc"],
        100.0 * result["last_test_acc"],
        int(result["selected_epoch"]),
        int(result["last_epoch"]),
        float(result["train_seconds"]),
        shown,
        str(out),
        {k: result.get(k) for k in ("settings", "sizes", "parameters", "versions")},
    )


# --------------------------------------------------------------------------- jadecli runs


def manifests(root: Path) -> list[Path]:
    """manifest.yaml of `root` itself and of the run folders below it (two levels at most)."""
    found = [root / "manifest.yaml", *sorted(root.glob("*/manifest.yaml"))]
    found += sorted(root.glob("*/*/manifest.yaml"))
    return [p for p in found if p.is_file()]


def read_labeled(run: Path) -> tuple[list[int], list[int]] | None:
    """(train, val) indices of the run's labeled_indices.csv, each sorted; None if unreadable."""
    try:
        with open(run / "labeled_indices.csv", newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
        train = sorted(int(r["index"]) for r in rows if r.get("part", "train") != "val")
        val = sorted(int(r["index"]) for r in rows if r.get("part") == "val")
    except (OSError, KeyError, ValueError):
        return None
    return train, val


def jade_runs(root: Path, splits: dict[int, dict[str, Any]]) -> list[JadeRun]:
    """The runs under `root` whose config defines one of the seeds' splits."""
    runs: list[JadeRun] = []
    for path in manifests(root):
        try:
            manifest = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError):
            continue
        if not isinstance(manifest, dict) or not isinstance(manifest.get("config"), dict):
            continue
        config = manifest["config"]
        seed = config.get("seed")
        split = splits.get(seed) if isinstance(seed, int) else None
        if split is None or any(config.get(k) != v for k, v in split["config"].items()):
            continue
        labeled = read_labeled(path.parent)
        same = None
        if labeled is not None:
            same = labeled == (sorted(split["labeled_index"]), sorted(split["val_index"]))
        final = manifest.get("final_metrics") or {}

        def pct(key: str, metrics: dict[str, Any] = final) -> float | None:
            value = metrics.get(key)
            return None if value is None else 100.0 * float(value)

        epochs = manifest.get("epochs_completed")
        runs.append(
            JadeRun(
                str(path.parent),
                int(seed),
                str(config.get("model", "?")),
                str(manifest.get("status", "?")),
                pct("primary_val_accuracy"),
                pct("primary_test_accuracy"),
                str(final.get("selection", "?")),
                final.get("selected_epoch"),
                int(epochs) if isinstance(epochs, int) else None,
                same,
                manifest.get("train_seconds"),
            )
        )
    return sorted(runs, key=lambda r: (r.seed, r.model, r.path))


# --------------------------------------------------------------------------- report


def fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def render(
    args: argparse.Namespace,
    peers: list[PeerResult],
    jade: list[JadeRun],
    splits: dict[int, dict[str, Any]],
    elapsed: float,
) -> str:
    from jadecli import __version__

    mode = "semi-supervised: + the 100 labeled MNIST-M images" if args.semi else "unsupervised"
    lines = [f"# DANN (pytorch-adapt) on jadecli's `{PAIR.name}` split, {mode}", ""]
    if args.smoke:
        lines += [f"**SMOKE TEST** (--smoke {args.smoke}): not a benchmark.", ""]
    versions = (peers[0].info.get("versions") or {}) if peers else {}
    lines.append(
        f"Measured {datetime.date.today().isoformat()} on "
        f"{cpu_description()} ({os.cpu_count()} CPUs), "
        f"{args.threads} thread(s) per DANN run; {len(peers)} seed(s) in {elapsed / 60:.1f} min. "
        f"DANN: pytorch-adapt {versions.get('pytorch_adapt', '?')}, torch "
        f"{versions.get('torch', '?')} (its own venv, {args.peer_python}); split made by "
        f"jadecli {__version__}."
    )
    first = splits[peers[0].seed] if peers else splits[args.seed_list[0]]
    sizes = ", ".join(f"{k} {v:,}" for k, v in first["sizes"].items())
    lines.append(
        f"Split ({PAIR.title}), from jadecli's own code: {sizes}; source channels "
        f"{first['source_channels']}."
    )
    if peers:
        s = peers[0].info.get("settings") or {}
        params = peers[0].info.get("parameters") or {}
        lines.append(
            f"DANN settings: net {s.get('net')}, {s.get('epochs')} epochs of "
            f"{s.get('steps_per_epoch')} steps, batch {s.get('batch_size')} source + "
            f"{s.get('batch_size')} target"
            + (f" + {s.get('labeled_batch')} labeled" if s.get("semi") else "")
            + f", Adam lr {s.get('lr')}, gradient reversal weight {s.get('grl_weight')} "
            + f"({s.get('grl_schedule')} schedule); parameters "
            + ", ".join(f"{k} {v:,}" for k, v in params.items())
            + "."
        )
    lines += [
        "DANN's epoch is chosen by dev accuracy (the 1,000 --val images), never by test; its "
        "test accuracy is that epoch's, with the last epoch's beside it. jadecli's numbers are "
        "its runs' final metrics (the epoch its --select chose: accuracy.py's rows take the last "
        "one, so DANN's dev-chosen epoch can only favour DANN). Accuracies in %.",
        "",
        "| seed | method | epoch reported | dev acc | test acc | test, last epoch | same split | "
        "train s |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for p in peers:
        lines.append(
            f"| {p.seed} | DANN (pytorch-adapt) | best dev: {p.selected_epoch}/{p.epochs} | "
            f"{fmt(p.dev)} | **{fmt(p.test)}** | {fmt(p.last_test)} | (written here) | "
            f"{p.seconds:.0f} |"
        )
        for r in (r for r in jade if r.seed == p.seed):
            same = {True: "yes", False: "**NO**", None: "unknown"}[r.same_split]
            epoch = f"{r.selection}: {r.selected_epoch}/{r.epochs}"
            status = "" if r.status == "completed" else f" ({r.status})"
            secs = "-" if r.seconds is None else f"{float(r.seconds):.0f}"
            lines.append(
                f"| {r.seed} | jadecli {r.model}{status} (`{r.path}`) | {epoch} | {fmt(r.dev)} | "
                f"**{fmt(r.test)}** | - | {same} | {secs} |"
            )
    lines.append("")
    done = [p for p in peers if p.test is not None and p.dev is not None]
    # jadecli runs compared: completed, of this split (a labeled_indices.csv that differs is out)
    usable = [r for r in jade if r.status == "completed" and r.same_split is not False]
    models = sorted({r.model for r in usable})
    if len(done) > 1:
        lines += ["| method | seeds | dev acc (mean ± sd) | test acc (mean ± sd) |"]
        lines += ["| --- | --- | --- | --- |"]
        dev = mean_std([p.dev for p in done if p.dev is not None])
        test = mean_std([p.test for p in done if p.test is not None])
        lines.append(f"| DANN (pytorch-adapt) | {len(done)} | {dev} | {test} |")
        for model in models:
            rows = [r for r in usable if r.model == model]
            lines.append(
                f"| jadecli {model} | {len(rows)} | "
                f"{mean_std([r.dev for r in rows if r.dev is not None])} | "
                f"{mean_std([r.test for r in rows if r.test is not None])} |"
            )
        lines.append("")
    diffs, notes = [], []
    for model in models:
        rows = [r for r in usable if r.model == model and r.test is not None]
        if len({r.seed for r in rows}) < len(rows):
            notes.append(f"jadecli {model}: several runs of one seed, not paired with DANN.")
            continue
        by_seed = {r.seed: float(r.test) for r in rows if r.test is not None}
        d = [
            by_seed[p.seed] - float(p.test)
            for p in done
            if p.test is not None and p.seed in by_seed
        ]
        if d:
            diffs.append(difference_row(f"jadecli {model} - DANN", d))
    if diffs:
        lines += ["Test accuracy, model minus DANN, per seed (same split):", ""]
        lines += [*DIFFERENCE_HEADER, *diffs, ""]
    if notes:
        lines += [*notes, ""]
    lines += ["## Commands", "", "This benchmark:", "", "```"]
    lines.append("python -m benchmarks.peers " + " ".join(shlex.quote(a) for a in sys.argv[1:]))
    lines += ["```", "", "The split of each seed is the one this `jade train` trains on:", ""]
    lines += ["```", *(shlex.join(jade_command(s, args.data_dir_resolved)) for s in args.seed_list)]
    lines += ["```", "", "DANN, in the peer venv (OMP_NUM_THREADS = --threads):", "", "```"]
    lines += [p.command for p in peers] + ["```", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not (os.path.isfile(args.peer_python) and os.access(args.peer_python, os.X_OK)):
        sys.exit(f"--peer-python {args.peer_python}: not an executable file")
    from jadecli.data.core import default_data_dir

    args.data_dir_resolved = str(Path(args.data_dir or default_data_dir()).expanduser())
    work = Path(args.work)
    splits: dict[int, dict[str, Any]] = {}
    peers: list[PeerResult] = []
    t0 = time.perf_counter()
    for seed in args.seed_list:
        folder = work / f"seed{seed}"
        npz = folder / "split.npz"
        t = time.perf_counter()
        splits[seed] = build_split(seed, args.data_dir_resolved, npz, args.smoke)
        print(
            f"seed {seed}: split written to {npz} ("
            + ", ".join(f"{k} {v}" for k, v in splits[seed]["sizes"].items())
            + f") in {time.perf_counter() - t:.0f} s",
            flush=True,
        )
        p = run_dann(args, seed, npz, folder)
        peers.append(p)
        print(
            f"seed {seed}: DANN dev {fmt(p.dev)}% (epoch {p.selected_epoch}/{p.epochs}), test "
            f"{fmt(p.test)}% (last epoch {fmt(p.last_test)}%), {p.seconds:.0f} s",
            flush=True,
        )
    jade = jade_runs(Path(args.jade_runs), splits) if args.jade_runs else []
    if args.jade_runs and not jade:
        print(f"no jadecli run of this split (seeds {args.seeds}) under {args.jade_runs}")
    text = render(args, peers, jade, splits, time.perf_counter() - t0)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text, encoding="utf-8")
        payload = {
            "dann": [p.__dict__ for p in peers],
            "jadecli": [r.__dict__ for r in jade],
            "splits": {
                s: {k: v for k, v in d.items() if not k.endswith("_index")}
                for s, d in splits.items()
            },
        }
        Path(args.out).with_suffix(".json").write_text(
            json.dumps(payload, indent=1), encoding="utf-8"
        )
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
