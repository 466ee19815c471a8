"""`jade predict RUN PATH...`: classify image files with a trained run.

PATH... are image files, folders (searched recursively for the extensions Pillow reads) and glob
patterns (expanded here too, so quoted ones work). Every file is decoded and preprocessed as the
run's training images of the chosen dataset were (size, resampling, padding, channels and
scaling: `jadecli.data.preprocess.ImageRecipe`), then goes through that dataset's encoder and the
shared classifier of the run's selected checkpoint. Each image gets one row: its path, the
predicted class, the confidence (the softmax probability of that class) and the K most likely
classes with their probabilities, as CSV, JSON or JSON lines, on stdout or in `--out FILE`.

Decoding runs in a thread pool (Pillow releases the GIL while it decodes) a few batches ahead
of the model. A file that does not decode is named on stderr and left out; the others are still
predicted and the exit code is 1 at the end, unless `--skip-bad`. The run's datasets are never
loaded, so a run folder copied without its data predicts as well.

    jade predict runs/quickstart 'photos/**/*.png' --top-k 3 --out predictions.csv
"""

from __future__ import annotations

import contextlib
import csv
import glob
import io
import json
import os
import tempfile
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import torch
from PIL import Image

from jadecli.analysis.common import RunModel, open_model
from jadecli.compute import keep_heap_top, to_input
from jadecli.config import DEFAULT_TOP_K, ConfigError, PredictConfig
from jadecli.data.folder import UnreadableImage, image_extensions
from jadecli.data.preprocess import ImageRecipe
from jadecli.errors import RunDirError, UsageError
from jadecli.progress import Reporter
from jadecli.run import atomic_write_text, make_folders, remove_folders
from jadecli.spec import AUXILIARY, ModelSpec

GLOB_CHARS = frozenset("*?[")
MAX_WORKERS = 8


@dataclass
class PredictResult:
    images: int  # predicted
    failed: list[tuple[str, str]] = field(default_factory=list)  # (path, why) not predicted
    seconds: float = 0.0
    out: Path | None = None  # --out, or None for stdout


def predict(cfg: PredictConfig, reporter: Reporter, stream: TextIO) -> PredictResult:
    """Predict the classes of the images PATH... names with RUN's selected checkpoint; write
    the rows to `--out` (atomically; missing folders above it are made, and removed again if
    the command fails) or to `stream`. Bad files are warned about and counted in the result's
    `failed`, never raised."""
    created = make_folders(cfg.out, "--out") if cfg.out is not None else []
    try:
        if cfg.out is not None:
            check_writable(cfg.out)
        return _predict(cfg, reporter, stream)
    except BaseException:
        remove_folders(created)
        raise


def _spec_check(cfg: PredictConfig) -> Callable[[ModelSpec], None]:
    """The flags that depend on the run's model, checked before its weights are loaded."""

    def check(spec: ModelSpec) -> None:
        if cfg.dataset == AUXILIARY and spec.auxiliary_shape is None:
            raise ConfigError(
                "dataset",
                f"auxiliary: {cfg.run} is a {spec.kind} run, which has no auxiliary encoder; "
                "use --dataset primary",
            )
        if cfg.top_k is not None and cfg.top_k > spec.num_classes:
            raise ConfigError(
                "top_k",
                f"{cfg.top_k} is more than the run's {spec.num_classes} classes; use 1 to "
                f"{spec.num_classes}",
            )

    return check


def _predict(cfg: PredictConfig, reporter: Reporter, stream: TextIO) -> PredictResult:
    t0 = time.perf_counter()
    m = open_model(cfg, reporter, check_spec=_spec_check(cfg))
    classes = _classes(m)
    recipe = run_recipe(m, cfg.dataset)
    files, failed = find_images(cfg.paths, reporter.warn)
    k = cfg.top_k or min(DEFAULT_TOP_K, len(classes))
    cpus = _cpus()
    workers = cfg.workers if cfg.workers is not None else min(MAX_WORKERS, cpus)
    _, h, w = recipe.input_shape  # keep a batch's activations (~5 maps of 32 float channels)
    keep_heap_top(min(1 << 30, max(64 << 20, cfg.batch_size * h * w * 5 * 32 * 4)))

    chunks: list[str] = []  # --out: written whole at the end, so a failure leaves no half file
    sink: Callable[[str], None] = chunks.append if cfg.out is not None else stream.write
    meta = {
        "run": str(cfg.run),
        "checkpoint": str(m.checkpoint_path),
        "epoch": m.epoch,
        "dataset": cfg.dataset,
        "dataset_name": recipe.dataset,
        "classes": classes,
        "top_k": k,
    }
    writer = _Writer(cfg.format, k, sink, meta)
    n = 0
    with _torch_threads(cpus - 1 if workers and m.device.type == "cpu" else None) as threads:
        reporter.info(
            f"predicting {len(files)} images with {cfg.run} ({m.spec.kind}, epoch {m.epoch}, "
            f"{cfg.dataset} encoder: {recipe.dataset}, "
            f"{'x'.join(map(str, recipe.input_shape))}; {workers} decoding threads, "
            f"{threads} torch thread{'s' if threads != 1 else ''})"
        )
        for paths, images, bad in decoded_batches(files, recipe, cfg.batch_size, workers):
            for path, reason in bad:
                reporter.warn(f"cannot decode image {path} ({reason}); skipped")
                failed.append((str(path), reason))
            if not paths:
                continue
            probs, index = classify(m, cfg.dataset, recipe.finish(images), k)
            writer.rows(paths, probs, [[classes[i] for i in row] for row in index])
            n += len(paths)
            if cfg.out is None:
                stream.flush()
    writer.end(failed, n)
    if cfg.out is not None:
        atomic_write_text(cfg.out, "".join(chunks))
    seconds = time.perf_counter() - t0
    where = f" -> {cfg.out}" if cfg.out is not None else ""
    bad_note = f"; {len(failed)} could not be read" if failed else ""
    reporter.info(
        f"predicted {n} images in {seconds:.1f} s ({n / max(seconds, 1e-9):.0f} images/s)"
        f"{bad_note}{where}"
    )
    return PredictResult(n, failed, seconds, cfg.out)


@torch.inference_mode()
def classify(
    m: RunModel, role: str, images: torch.Tensor, k: int
) -> tuple[np.ndarray, list[list[int]]]:
    """The k most likely classes of uint8 (B, C, H, W) model inputs, as training scaled them
    and in the run's precision: probabilities (B, k), high to low, and class indices."""
    x = to_input(images, m.device)  # (B, C, H, W) in [0, 1]
    with m.autocast():
        logits = m.model.classify(role, x)  # (B, K)
    top_p, top_i = torch.softmax(logits.float(), 1).topk(k, 1)  # (B, k) each
    return top_p.cpu().numpy(), top_i.tolist()


def _cpus() -> int:
    """The CPUs this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


@contextlib.contextmanager
def _torch_threads(wanted: int | None) -> Iterator[int]:
    """Torch's CPU threads capped at `wanted` (at least 1) for the duration, unless
    OMP_NUM_THREADS is set: the decoding threads need a core of their own, because an OpenMP
    team that shares its cores with other busy threads stalls at every barrier (on 2 loaded
    cores, 2 torch threads beside the decoders predicted 2.5x slower than 1)."""
    before = torch.get_num_threads()
    if wanted is not None and "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(max(1, min(before, wanted)))
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(before)


# --------------------------------------------------------------------------- the run


def _classes(m: RunModel) -> list[str]:
    """The class names the classifier's outputs stand for (the primary's order)."""
    if m.classes is not None:
        return m.classes
    recorded = ((m.manifest.get("datasets") or {}).get("primary") or {}).get("classes")
    if isinstance(recorded, list) and len(recorded) == m.spec.num_classes:
        return [str(c) for c in recorded]
    raise RunDirError(
        f"{m.checkpoint_path} records no class names (nor does {m.run.manifest_path}); "
        "it was not written by this version of jade train"
    )


def run_recipe(m: RunModel, role: str) -> ImageRecipe:
    """How the run preprocessed dataset `role`'s images, from its config, its model's input
    shape and the manifest's record of the dataset (grey data given 3 channels)."""
    cfg, spec = m.cfg, m.spec
    name = cfg.primary if role != AUXILIARY else cfg.auxiliary
    shape = spec.primary_shape if role != AUXILIARY else spec.auxiliary_shape
    pad = cfg.primary_pad if role != AUXILIARY else cfg.auxiliary_pad
    assert name and shape is not None
    record = (m.manifest.get("datasets") or {}).get(role) or {}
    if not isinstance(record, dict) or record.get("image_shape") != list(shape):
        record = {}  # a --checkpoint of another run: its own shape is all we know
    return ImageRecipe.for_model(name, shape, pad, record)


# --------------------------------------------------------------------------- the files


def check_writable(out: Path) -> None:
    """`--out FILE` can be created (a probe file beside it, removed again), before any work."""
    if out.is_dir():
        raise UsageError(f"--out {out} is a folder; give a file name, e.g. {out / 'pred.csv'}")
    parent = out.parent
    try:
        fd, probe = tempfile.mkstemp(dir=parent, prefix=f".{out.name}.", suffix=".tmp")
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise UsageError(
            f"--out {out}: cannot write in {parent} ({err.strerror}); choose another file"
        ) from None


def find_images(
    paths: list[Path], warn: Callable[[str], None]
) -> tuple[list[Path], list[tuple[str, str]]]:
    """The image files PATH... name, in the order given (folders and glob matches sorted, each
    file once), and the named files that do not exist as (path, why) failures. Raises a
    UsageError when nothing at all matched."""
    exts = image_extensions()
    files: list[Path] = []
    seen: set[str] = set()
    missing: list[tuple[str, str]] = []
    empty: list[str] = []
    skipped: list[Path] = []
    for given in paths:
        path = given.expanduser()
        text = str(path)
        if path.is_dir():
            found = _walk(path, exts, skipped)
        elif path.is_file():
            found = [path]  # named explicitly: tried whatever its extension
        elif GLOB_CHARS & set(text):
            found = []
            for match in sorted(glob.glob(text, recursive=True)):
                mp = Path(match)
                if mp.is_dir():
                    found += _walk(mp, exts, skipped)
                elif mp.suffix.lower() in exts:
                    found.append(mp)
                else:
                    skipped.append(mp)
        else:
            missing.append((text, "no such file or folder"))
            continue
        if not found:
            empty.append(text)
        for f in found:
            key = os.path.abspath(f)
            if key not in seen:
                seen.add(key)
                files.append(f)
    if not files:
        names = ", ".join(str(p) for p in paths)
        raise UsageError(
            f"PATH {names}: matched no image files (folders are searched recursively for "
            "the extensions Pillow reads, e.g. .png, .jpg, .tif)"
        )
    for text in empty:
        warn(f"{text}: matched no image files")
    for text, why in missing:
        warn(f"{text}: {why}; skipped")
    if skipped:
        warn(
            f"skipped {len(skipped)} file(s) without an image extension Pillow reads "
            f"(e.g. {skipped[0]})"
        )
    return files, missing


def _walk(root: Path, exts: set[str], skipped: list[Path]) -> list[Path]:
    """Image files under `root`, recursively, sorted; hidden files and folders left out."""
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for fname in sorted(filenames):
            if fname.startswith("."):
                continue
            path = Path(dirpath) / fname
            (found if path.suffix.lower() in exts else skipped).append(path)
    return found


Decoded = tuple[list[Path], torch.Tensor, list[tuple[Path, str]]]


def decode_batch(recipe: ImageRecipe, paths: list[Path]) -> Decoded:
    """(the files that decoded, their images as uint8 (N, c, H, W) before padding, the others
    with Pillow's reason)."""
    h, w = recipe.size
    out = np.empty((len(paths), recipe.channels, h, w), dtype=np.uint8)  # (N, c, H, W)
    ok: list[Path] = []
    bad: list[tuple[Path, str]] = []
    for path in paths:
        try:
            out[len(ok)] = recipe.read(path)
        except UnreadableImage as err:
            bad.append((path, err.reason))
            continue
        except Image.DecompressionBombError as err:  # not an OSError; training would stop too
            bad.append((path, str(err).splitlines()[0]))
            continue
        ok.append(path)
    return ok, torch.from_numpy(out[: len(ok)]), bad


def decoded_batches(
    files: list[Path], recipe: ImageRecipe, batch_size: int, workers: int
) -> Iterator[Decoded]:
    """`decode_batch` of each run of `batch_size` files, in order, decoded by `workers` threads
    up to `workers + 1` batches ahead of the caller (0: in the calling thread)."""
    chunks = (files[i : i + batch_size] for i in range(0, len(files), batch_size))
    if workers == 0:
        for chunk in chunks:
            yield decode_batch(recipe, chunk)
        return
    with ThreadPoolExecutor(max_workers=workers) as pool:
        pending: deque[Future[Decoded]] = deque(
            pool.submit(decode_batch, recipe, c) for c in islice(chunks, workers + 1)
        )
        while pending:
            done = pending.popleft().result()
            nxt = next(chunks, None)
            if nxt is not None:
                pending.append(pool.submit(decode_batch, recipe, nxt))
            yield done


# --------------------------------------------------------------------------- the output


def _prob(p: float) -> float:
    return float(f"{p:.6g}")


class _Writer:
    """Rows as CSV, one JSON document, or JSON lines, streamed to `sink` batch by batch."""

    def __init__(self, fmt: str, k: int, sink: Callable[[str], None], meta: dict[str, Any]):
        self.fmt, self.k, self.sink, self.meta = fmt, k, sink, meta
        self.first = True
        if fmt == "csv":
            header = ["path", "predicted", "confidence"]
            for j in range(1, k + 1):
                header += [f"class_{j}", f"prob_{j}"]
            self._csv([header])
        elif fmt == "json":
            head = json.dumps(meta)  # '{..., "top_k": k}': the predictions go in before "}"
            sink(head[:-1] + ', "predictions": [\n')

    def _csv(self, rows: list[list[Any]]) -> None:
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerows(rows)
        self.sink(buf.getvalue())

    def rows(self, paths: list[Path], probs: np.ndarray, names: list[list[str]]) -> None:
        """One row per image: `probs` (B, k) sorted high to low, `names` their classes."""
        if self.fmt == "csv":
            rows = []
            for path, p, c in zip(paths, probs, names, strict=True):
                row: list[Any] = [str(path), c[0], f"{p[0]:.6g}"]
                for j in range(self.k):
                    row += [c[j], f"{p[j]:.6g}"]
                rows.append(row)
            self._csv(rows)
            return
        lines = []
        for path, p, c in zip(paths, probs, names, strict=True):
            top = [{"class": c[j], "probability": _prob(p[j])} for j in range(self.k)]
            item = {"path": str(path), "predicted": c[0], "confidence": _prob(p[0]), "top": top}
            lines.append(json.dumps(item))
        if self.fmt == "jsonl":
            self.sink("".join(line + "\n" for line in lines))
        else:
            self.sink(("" if self.first else ",\n") + ",\n".join(lines))
            self.first = False

    def end(self, failed: list[tuple[str, str]], n: int) -> None:
        if self.fmt == "json":
            bad = [{"path": p, "error": why} for p, why in failed]
            self.sink(f'\n], "images": {n}, "failed": {json.dumps(bad)}}}\n')
