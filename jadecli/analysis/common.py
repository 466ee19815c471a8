"""Open a trained run for analysis: its checkpoint, model and datasets, and where to write.

`open_run` is the one way in for `evaluate`, `inspect-latents` and `reconstruct`; `open_model`
is its first half (the model without the datasets, for `predict`). Neither writes to the run
folder; `record` appends one entry to the manifest's `analyses` list (history is never
rewritten), and `output_dir` names the folder a command writes its files into.

    python -c "from pathlib import Path; from jadecli.analysis.common import RunSource, open_run; \
from jadecli.progress import PlainReporter; r = open_run(RunSource(Path('runs/quickstart')), \
PlainReporter()); print(r.spec, r.epoch)"
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import shlex
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch

from jadecli.compute import (
    analysis_precision,
    autocast,
    place_model,
    resolve_device,
    to_input,
)
from jadecli.config import ConfigError, RunSource, TrainConfig
from jadecli.data.core import Dataset, ImageSet, default_data_dir
from jadecli.data.pair import (
    aux_used_index,
    labeled_index,
    load_pair,
    rest_index,
    split_labeled,
)
from jadecli.errors import DataError, JadeError, RunDirError, StorageError, UsageError
from jadecli.model import RoleModel, build_model
from jadecli.progress import Reporter
from jadecli.run import LABELED, RunDir, atomic_write_text, now
from jadecli.spec import AUXILIARY, PRIMARY, ModelSpec

ANALYSIS_DIR = "analysis"


@dataclass
class LoadedRun:
    """A run ready to analyse: its model in eval mode on the device, and its datasets."""

    source: RunSource
    run: RunDir
    manifest: dict[str, Any]
    status: str
    cfg: TrainConfig
    spec: ModelSpec
    model: RoleModel
    epoch: int  # epochs trained into the checkpoint
    checkpoint_path: Path
    device: torch.device
    datasets: dict[str, Dataset]  # "primary" and, for paired/JADE runs, "auxiliary"
    # per role, the training images the run used (indices; None = all): the labeled subset of
    # the primary, the --aux-per-class images of the auxiliary
    used_index: dict[str, torch.Tensor | None]
    val_index: torch.Tensor | None = None  # the primary images --val held out (never trained)
    precision: str = "fp32"  # fp32 | bf16, resolved for this device

    def autocast(self) -> contextlib.AbstractContextManager[None]:
        """The run's forward-pass precision (bf16 autocast, or nothing for fp32)."""
        return autocast(self.device, self.precision)

    @property
    def kind(self) -> str:
        return self.spec.kind

    @property
    def classes(self) -> list[str]:
        return self.datasets[PRIMARY].classes

    def images(self, role: str, split: str, limit: int | None = None) -> ImageSet | None:
        """One split of one dataset (None if that part is empty), the first `limit` images."""
        ds = self.datasets[role]
        used = self.used_index[role]
        if split == "test":
            part = ds.test
        elif split == "train":
            part = ds.train
        elif split == "train-labeled":
            part = ds.train if used is None else ds.train.subset(used)
        elif split == "val":
            if self.val_index is None:
                raise ConfigError(
                    "split",
                    f"val: {self.source.run} was trained without --val, so it has no validation "
                    "images; use --split test or train-unlabeled",
                )
            if role != PRIMARY:
                return None  # only the primary has a validation split
            part = ds.train.subset(self.val_index)
        else:  # train-unlabeled: neither trained on nor held out as validation
            if used is None:
                return None
            val = self.val_index if role == PRIMARY else None
            part = ds.train.subset(rest_index(len(ds.train), used, val))
        if limit is not None and len(part) > limit:
            part = part.subset(torch.arange(limit))
        return part if len(part) else None

    def checkpoint_tag(self) -> str:
        """'' for the run's own (selected) checkpoint, else '-<file stem>' for output names."""
        if self.checkpoint_path.resolve() == self.run.selected_checkpoint(self.manifest).resolve():
            return ""
        return f"-{self.checkpoint_path.stem}"


class ModelSource(Protocol):
    """Which run and checkpoint to load, and where to compute (RunSource and PredictConfig)."""

    run: Path
    checkpoint: Path | None
    device: str
    precision: str


@dataclass
class RunModel:
    """A run's selected checkpoint, its model in eval mode on the device, without its data."""

    run: RunDir
    manifest: dict[str, Any]
    status: str
    cfg: TrainConfig
    spec: ModelSpec
    model: RoleModel
    epoch: int
    checkpoint_path: Path
    device: torch.device
    precision: str
    classes: list[str] | None  # the primary's classes, as the checkpoint recorded them

    def autocast(self) -> contextlib.AbstractContextManager[None]:
        """The run's forward-pass precision (bf16 autocast, or nothing for fp32)."""
        return autocast(self.device, self.precision)


def open_run(
    source: RunSource,
    reporter: Reporter,
    need_decoder: str | None = None,
    check_spec: Callable[[ModelSpec], None] | None = None,
) -> LoadedRun:
    """Read RUN's manifest and checkpoint, rebuild its model and reload its datasets.

    `need_decoder` names a command that only works on JADE runs; `check_spec` validates flags
    that depend on the model (both run before any data is loaded)."""
    m = open_model(source, reporter, need_decoder, check_spec)
    datasets = _load_datasets(m.cfg, m.manifest, source, reporter)
    _check_datasets(datasets, m.classes, m.spec, m.manifest, m.checkpoint_path, reporter)
    labeled, val_index = _labeled_index(m.run, m.cfg, datasets, reporter)
    used: dict[str, torch.Tensor | None] = {PRIMARY: labeled}
    if AUXILIARY in datasets:
        used[AUXILIARY] = aux_used_index(m.cfg, datasets[AUXILIARY])
    return LoadedRun(
        source=source,
        run=m.run,
        manifest=m.manifest,
        status=m.status,
        cfg=m.cfg,
        spec=m.spec,
        model=m.model,
        epoch=m.epoch,
        checkpoint_path=m.checkpoint_path,
        device=m.device,
        datasets=datasets,
        used_index=used,
        val_index=val_index,
        precision=m.precision,
    )


def open_model(
    source: ModelSource,
    reporter: Reporter,
    need_decoder: str | None = None,
    check_spec: Callable[[ModelSpec], None] | None = None,
) -> RunModel:
    """Read RUN's manifest and selected checkpoint (or `--checkpoint`) and rebuild its model on
    the device, in the precision to compute in; the datasets are not touched (`jade predict`).
    `need_decoder` and `check_spec` run before the weights are loaded, as in `open_run`."""
    run, manifest = RunDir.open(source.run, flag="RUN")
    status = str(manifest.get("status", "unknown"))
    ckpt_path = _checkpoint_path(source, run, manifest, status)
    state = run.load_checkpoint(ckpt_path)
    cfg, spec = _config_and_spec(state, ckpt_path)
    epoch = int(state["epoch"])
    if need_decoder and not spec.generative:
        raise UsageError(
            f"jade {need_decoder}: {source.run} is a {spec.kind} run, which has no decoder; "
            f"{need_decoder} needs a run trained with --model jade"
        )
    if check_spec is not None:
        check_spec(spec)
    if status == "running":
        reporter.warn(
            f"{source.run} is marked running (still training, or its process was killed); "
            f"analysing its latest checkpoint (epoch {epoch} of {cfg.epochs})"
        )
    elif status in ("failed", "interrupted"):
        reporter.warn(
            f"{source.run} {status}; analysing its last good checkpoint (epoch {epoch} of "
            f"{cfg.epochs})"
        )
    saved = manifest.get("config")
    if isinstance(saved, dict) and saved.get("model") != cfg.model:
        reporter.warn(
            f"{ckpt_path} holds a {cfg.model} model but {source.run} is a {saved.get('model')} "
            "run; analysing the checkpoint with its own config"
        )
    model = _load_model(spec, state, ckpt_path)
    device = resolve_device(source.device)
    trained = str(manifest.get("precision", "fp32"))
    precision = analysis_precision(source.precision, trained, device, reporter.warn)
    place_model(model, device).eval()  # channels-last: 2-4x faster convolutions on CPU
    classes = state.get("classes")
    return RunModel(
        run=run,
        manifest=manifest,
        status=status,
        cfg=cfg,
        spec=spec,
        model=model,
        epoch=epoch,
        checkpoint_path=ckpt_path,
        device=device,
        precision=precision,
        classes=list(map(str, classes)) if isinstance(classes, list) else None,
    )


def _checkpoint_path(
    source: ModelSource, run: RunDir, manifest: dict[str, Any], status: str
) -> Path:
    """`--checkpoint`, else the checkpoint the run selected (best.pt under --select best-val,
    else last.pt); a clear error when there is none."""
    if source.checkpoint is not None:
        if not source.checkpoint.is_file():
            raise RunDirError(f"--checkpoint {source.checkpoint}: no such file")
        return source.checkpoint
    if not run.checkpoint_path.is_file():
        error = manifest.get("error")
        why = f"status {status}" + (f": {error}" if error else "")
        raise RunDirError(
            f"RUN {source.run} has no checkpoint ({run.checkpoint_path} is missing; {why}); "
            "there is nothing to analyse"
        )
    selected = run.selected_checkpoint(manifest)
    if not selected.is_file():  # never analyse another epoch than the one the run chose, silently
        raise RunDirError(
            f"RUN {source.run} selected {selected} (--select best-val), which is missing; pass "
            f"--checkpoint {run.checkpoint_path} to analyse the last epoch instead"
        )
    return selected


def _config_and_spec(state: dict[str, Any], path: Path) -> tuple[TrainConfig, ModelSpec]:
    try:
        cfg = TrainConfig.from_dict(dict(state["config"]))
        spec = ModelSpec.from_dict(dict(state["model_spec"]))
    except (KeyError, TypeError, ValueError, JadeError) as err:
        raise RunDirError(
            f"checkpoint {path} lacks a readable config or model description ({err}); it was not "
            "written by this version of jade train"
        ) from None
    if spec.kind != cfg.model:
        raise RunDirError(
            f"checkpoint {path} is inconsistent: a {spec.kind} model with a {cfg.model} config"
        )
    return cfg, spec


def _load_model(spec: ModelSpec, state: dict[str, Any], path: Path) -> RoleModel:
    model = build_model(spec)
    try:
        model.load_state_dict(state["model"])
    except (RuntimeError, TypeError, KeyError) as err:
        first = str(err).strip().splitlines()[0][:200] if str(err).strip() else ""
        raise RunDirError(
            f"checkpoint {path} does not match the model it describes ({first})"
        ) from None
    return model


def _load_datasets(
    cfg: TrainConfig, manifest: dict[str, Any], source: RunSource, reporter: Reporter
) -> dict[str, Dataset]:
    """The run's datasets, as training saw them (size, padding, channels)."""
    data_dir = Path(source.data_dir or cfg.data_dir or default_data_dir()).expanduser()
    recorded = manifest.get("datasets") or {}

    def locate(role: str, name: str) -> str:
        return _locate_folder(name, (recorded.get(role) or {}).get("root"), source.data_dir)

    try:
        _, pair = load_pair(cfg, data_dir, reporter, locate=locate)
    except DataError as err:
        raise DataError(
            f"cannot reload the run's datasets: {err} (pass --data-dir DIR if the data moved)"
        ) from None
    out = {PRIMARY: pair.primary}
    if pair.auxiliary is not None:
        out[AUXILIARY] = pair.auxiliary
    return out


def _locate_folder(spec: str, recorded_root: Any, data_dir: str | None) -> str:
    """`folder:PATH` as trained may be relative to another working directory, or moved: try the
    folder under --data-dir first (when given), then PATH as written, then the recorded root."""
    if not spec.startswith("folder:"):
        return spec
    path = Path(spec[len("folder:") :]).expanduser()
    candidates = []
    if data_dir:
        candidates.append(Path(data_dir).expanduser() / path.name)
    candidates.append(path)
    if isinstance(recorded_root, str):
        candidates.append(Path(recorded_root))
    for candidate in candidates:
        if (candidate / "train").is_dir():
            return f"folder:{candidate}"
    return spec


def _check_datasets(
    datasets: dict[str, Dataset],
    classes: list[str] | None,
    spec: ModelSpec,
    manifest: dict[str, Any],
    ckpt_path: Path,
    reporter: Reporter,
) -> None:
    primary = datasets[PRIMARY]
    if classes is not None and classes != primary.classes:
        raise DataError(
            f"the primary dataset's classes ({', '.join(primary.classes)}) are not the classes "
            f"the checkpoint was trained on ({', '.join(map(str, classes))}); was the data "
            "changed? pass --data-dir DIR to point at the original data"
        )
    shapes = {PRIMARY: spec.primary_shape, AUXILIARY: spec.auxiliary_shape}
    recorded = manifest.get("datasets") or {}
    for role, ds in datasets.items():
        if ds.image_shape != shapes[role]:
            raise DataError(
                f"the {role} images are now {_fmt_shape(ds.image_shape)} but the model was "
                f"trained on {_fmt_shape(shapes[role])} ({ckpt_path}); point --data-dir at the "
                "original data"
            )
        rec = recorded.get(role) or {}
        for split, n in (("train", len(ds.train)), ("test", len(ds.test))):
            want = rec.get(f"{split}_size")
            if isinstance(want, int) and want != n:
                reporter.warn(
                    f"the {role} dataset {ds.name} now has {n} {split} images, the run recorded "
                    f"{want}; the data changed since training"
                )


def _fmt_shape(shape: tuple[int, int, int] | None) -> str:
    return "x".join(map(str, shape)) if shape else "-"


def _labeled_index(
    run: RunDir, cfg: TrainConfig, datasets: dict[str, Dataset], reporter: Reporter
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The labeled subset as `labeled_indices.csv` recorded it (recomputed if that is missing):
    (the images trained on, the --val images or None)."""
    primary = datasets[PRIMARY]
    path = run.path / LABELED
    n_train = len(primary.train)
    if path.is_file():
        try:
            with open(path, newline="", encoding="utf-8") as fh:
                rows = list(csv.DictReader(fh))
            index = torch.tensor([int(r["index"]) for r in rows], dtype=torch.long)
            names = [r["class"] for r in rows]
            is_val = torch.tensor([r.get("part") == "val" for r in rows], dtype=torch.bool)
        except (OSError, KeyError, ValueError, TypeError):
            reporter.warn(f"{path} is unreadable; recomputing the labeled subset from the seed")
        else:
            if len(index) and (int(index.max()) >= n_train or int(index.min()) < 0):
                raise DataError(
                    f"{path} names training images beyond the {n_train} of {primary.name}; the "
                    "data changed since training"
                )
            got = [primary.classes[int(y)] for y in primary.train.labels[index]]
            if got != names:
                reporter.warn(
                    f"the classes in {path} no longer match {primary.name}'s labels; the data "
                    "changed since training"
                )
            return index[~is_val], (index[is_val] if bool(is_val.any()) else None)
    try:
        return split_labeled(cfg, primary, labeled_index(cfg, primary))
    except UsageError as err:
        raise DataError(f"cannot rebuild the labeled subset: {err}") from None


# --------------------------------------------------------------------------- encoding


@torch.inference_mode()
def encode(
    loaded: LoadedRun, role: str, images: torch.Tensor, batch_size: int | None = None
) -> dict[str, torch.Tensor]:
    """`model.codes` of uint8 images (JADE: mu_c, logvar_c, mu_s, logvar_s; single/paired:
    features), on the CPU, in batches."""
    batch = batch_size or loaded.source.batch_size
    parts: dict[str, list[torch.Tensor]] = {}
    for start in range(0, len(images), batch):
        x = to_input(images[start : start + batch], loaded.device)  # (B, C, H, W)
        with loaded.autocast():
            out = loaded.model.codes(role, x)
        for k, v in out.items():
            parts.setdefault(k, []).append(v.float().cpu())
    return {k: torch.cat(v) for k, v in parts.items()}


# --------------------------------------------------------------------------- outputs


def output_dir(
    loaded: LoadedRun, command: str, split: str, limit: int | None = None, suffix: str = ""
) -> Path:
    """`--out`, else RUN/analysis/<command>-<split>[-first<N>][suffix][-<checkpoint>]; created."""
    name = f"{command}-{split}" + (f"-first{limit}" if limit else "") + suffix
    out = loaded.source.out or loaded.run.path / ANALYSIS_DIR / (name + loaded.checkpoint_tag())
    flag = "--out" if loaded.source.out else "RUN"
    if out.exists() and not out.is_dir():
        raise RunDirError(f"{flag} {out} is a file, not a folder; choose another --out")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise RunDirError(f"{flag}: cannot create {out} ({err.strerror}); use --out DIR") from None
    return out


def display_path(loaded: LoadedRun, path: Path) -> str:
    """A path relative to the run folder when inside it (as the manifest records it)."""
    try:
        return str(path.resolve().relative_to(loaded.run.path.resolve()))
    except ValueError:
        return str(path.resolve())


def publish(
    loaded: LoadedRun,
    analysis: str,
    split: str,
    out: Path,
    body: dict[str, Any],
    files: list[Path],
    entry: dict[str, Any],
    reporter: Reporter,
) -> tuple[dict[str, Any], list[Path]]:
    """The finished report (what `--format json` prints): written to `out/summary.json`, and a
    short `entry` appended to the manifest. Returns the report and all files written."""
    summary = out / "summary.json"
    files = [*files, summary]
    report = finite(
        {
            "run": str(loaded.run.path),
            "model": loaded.kind,
            "status": loaded.status,
            "checkpoint": display_path(loaded, loaded.checkpoint_path),
            "epoch": loaded.epoch,
            "split": split,
            "device": str(loaded.device),
            "precision": loaded.precision,
            **body,
            "output_dir": str(out),
            "files": [display_path(loaded, f) for f in files],
        }
    )
    write_json(summary, report)
    record(
        loaded,
        {
            "analysis": analysis,
            "checkpoint": report["checkpoint"],
            "epoch": loaded.epoch,
            "split": split,
            **entry,
            "output_dir": display_path(loaded, out),
        },
        reporter,
    )
    return report, files


def record(loaded: LoadedRun, entry: dict[str, Any], reporter: Reporter) -> bool:
    """Append `entry` to the manifest's `analyses` list; skipped (with a warning) while the run
    is marked running, because the training process rewrites the manifest every epoch."""
    if loaded.status == "running":
        reporter.warn(
            f"not recorded in {loaded.run.manifest_path}: the run is marked running and its "
            "trainer rewrites that file"
        )
        return False
    manifest = loaded.run.read_manifest()  # re-read: append to what is on disk now
    stamp = now()
    command = loaded.source.command
    full = {"time": stamp, "command": " ".join(shlex.quote(a) for a in command), **entry}
    analyses = manifest.get("analyses")
    if not isinstance(analyses, list):
        analyses = []
    analyses.append(full)
    manifest["analyses"] = analyses
    try:
        loaded.run.write_manifest(manifest)
    except StorageError as err:
        reporter.warn(f"could not record this in {loaded.run.manifest_path} ({err.reason})")
        return False
    return True


def write_csv(path: Path, header: list[str], rows: list[list[Any]]) -> None:
    """A CSV file written atomically; floats with 6 significant digits, None as empty."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    for row in rows:
        writer.writerow([_cell(v) for v in row])
    atomic_write_text(path, buf.getvalue())


def finite(obj: Any) -> Any:
    """The report with every NaN or infinite float replaced by None (valid JSON for jq)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    return obj


def write_json(path: Path, data: dict[str, Any]) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, allow_nan=False) + "\n")


def _cell(value: Any) -> Any:
    if value is None:
        return ""
    return f"{value:.6g}" if isinstance(value, float) else value
