"""The run directory: everything a run decided and produced, written so it is never half-true.

    RUN/
      manifest.yaml          schema version, command, resolved config, versions, datasets,
                             status (running | completed | failed | interrupted), final metrics
      metrics.csv            one row per epoch
      labeled_indices.csv    the labeled primary subset (index into the training split, class,
                             part: train, or val when --val held it out)
      checkpoints/last.pt    model, optimiser, epoch, config, RNG states (weights_only loadable)
      checkpoints/best.pt    --select best-val: the same, of the best validation epoch

Every file is written to a temporary file in the same folder and `os.replace`d into place, so a
crash, a full disk or a kill leaves the previous version intact; a write that fails raises
`StorageError`, one line naming the file and the reason. An existing non-empty folder is never
reused unless the user asked for `--resume` or `--overwrite`, and `--overwrite` only ever
deletes a folder that is itself a jadecli run.
"""

from __future__ import annotations

import csv
import functools
import io
import os
import shutil
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
import yaml

from jadecli import __version__
from jadecli.errors import RunDirError, StorageError, UsageError

# The run folder's formats. A folder or checkpoint of another version gets one line naming the
# version that wrote it; there are no compatibility layers for unreleased versions.
SCHEMA_VERSION = 6  # manifest.yaml
CHECKPOINT_FORMAT = 6  # checkpoints/*.pt
MANIFEST = "manifest.yaml"
METRICS = "metrics.csv"
LABELED = "labeled_indices.csv"
CHECKPOINT_DIR = "checkpoints"
LAST = "last.pt"
BEST = "best.pt"  # --select best-val: the weights of the epoch with the best validation accuracy


@functools.cache
def _file_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def now() -> str:
    """The time for manifests and events: UTC, ISO 8601, to the second."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def atomic_write(path: Path, data: bytes | memoryview) -> None:
    """Write `data` to a temporary file beside `path`, fsync it, then rename it over `path`.

    A failure (no space, no permission, a signal) leaves `path` as it was and no temporary file;
    an OSError becomes a `StorageError` naming `path`."""
    tmp: Path | None = None
    try:
        fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        tmp = Path(tmp_name)
        with open(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, _file_mode())  # mkstemp makes 0600 files; give the usual permissions
        os.replace(tmp, path)
    except BaseException as err:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
        if isinstance(err, OSError):
            raise StorageError(path, err.strerror or str(err)) from None
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, text.encode("utf-8"))


def _nearest_existing(path: Path) -> Path:
    p = path.absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def make_folders(out: Path, flag: str) -> list[Path]:
    """Create the missing folders above file `out` (`--out` of export and predict, as train's
    run folder); returns those it made, outermost first, for `remove_folders` on failure."""
    missing = []
    folder = out.parent
    while not folder.exists() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    if not folder.is_dir():
        raise UsageError(f"{flag} {out}: {folder} is a file, not a folder; choose another {flag}")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UsageError(
            f"{flag} {out}: cannot create the folder {out.parent} ({err.strerror}); choose "
            f"another {flag}"
        ) from None
    return list(reversed(missing))


def remove_folders(created: list[Path]) -> None:
    """Remove the folders `make_folders` made, innermost first, while they are empty."""
    for folder in reversed(created):
        try:
            folder.rmdir()
        except OSError:
            break


def is_run_dir(path: Path) -> bool:
    manifest = path / MANIFEST
    if not manifest.is_file():
        return False
    try:
        data = yaml.safe_load(manifest.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError, UnicodeDecodeError):
        return False
    return isinstance(data, dict) and "schema_version" in data and "status" in data


def check_new_run_target(out: Path, overwrite: bool) -> None:
    """Fail early (before any data is loaded) if `--out` cannot hold a new run."""
    if out.exists() and not out.is_dir():
        raise RunDirError(f"--out {out} is a file, not a folder; choose another --out")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise RunDirError(
                f"--out {out} already exists and is not empty; pass --resume to continue that "
                "run, --overwrite to replace it, or choose another --out"
            )
        if not is_run_dir(out):
            raise RunDirError(
                f"--out {out} is not a jadecli run (no manifest.yaml); --overwrite only replaces "
                "run folders, so choose another --out"
            )
    base = _nearest_existing(out)
    if not base.is_dir() or not os.access(base, os.W_OK | os.X_OK):
        raise RunDirError(f"--out {out}: cannot write in {base}; choose a writable --out")


class RunDir:
    """A run folder on disk; see the module docstring for its layout."""

    def __init__(self, path: Path):
        self.path = path

    @property
    def manifest_path(self) -> Path:
        return self.path / MANIFEST

    @property
    def metrics_path(self) -> Path:
        return self.path / METRICS

    @property
    def checkpoint_path(self) -> Path:
        return self.path / CHECKPOINT_DIR / LAST

    @property
    def best_path(self) -> Path:
        return self.path / CHECKPOINT_DIR / BEST

    def selected_checkpoint(self, manifest: dict[str, Any]) -> Path:
        """The checkpoint the run ended with: best.pt under --select best-val, else last.pt."""
        checkpoints = manifest.get("checkpoints")
        selected = checkpoints.get("selected") if isinstance(checkpoints, dict) else None
        return self.path / selected if isinstance(selected, str) else self.checkpoint_path

    @classmethod
    def create(cls, out: Path, overwrite: bool) -> RunDir:
        check_new_run_target(out, overwrite)
        if out.is_dir() and any(out.iterdir()):
            shutil.rmtree(out)  # a jadecli run, checked above; the user asked for --overwrite
        try:
            (out / CHECKPOINT_DIR).mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise StorageError(out, err.strerror or str(err)) from None
        return cls(out)

    def discard(self) -> None:
        """Remove a run folder this process created before anything was trained in it."""
        shutil.rmtree(self.path, ignore_errors=True)

    @classmethod
    def open(cls, path: Path, flag: str = "RUN") -> tuple[RunDir, dict[str, Any]]:
        """An existing run and its manifest, which must be readable and of this schema."""
        if not path.is_dir():
            raise RunDirError(f"{flag} {path}: no such folder")
        run = cls(path)
        if not run.manifest_path.is_file():
            raise RunDirError(f"{flag} {path} is not a jadecli run folder (no {MANIFEST})")
        return run, run.read_manifest()

    # --- manifest ---
    def read_manifest(self) -> dict[str, Any]:
        try:
            data = yaml.safe_load(self.manifest_path.read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError, UnicodeDecodeError) as err:
            raise RunDirError(
                f"{self.manifest_path} is unreadable ({type(err).__name__}); the run folder is "
                "damaged"
            ) from None
        if not isinstance(data, dict) or "schema_version" not in data:
            raise RunDirError(f"{self.manifest_path} is not a jadecli manifest")
        version = data["schema_version"]
        if version != SCHEMA_VERSION:
            wrote = f"jadecli {data.get('jadecli_version', '(unknown version)')}"
            newer = isinstance(version, int) and version > SCHEMA_VERSION
            raise RunDirError(
                f"{self.manifest_path} has run schema {version}, written by {wrote}; this "
                f"jadecli {__version__} reads schema {SCHEMA_VERSION}: "
                + (
                    "the run is newer, upgrade jadecli"
                    if newer
                    else "train the run again, or use the version that wrote it"
                )
            )
        return data

    def write_manifest(self, data: dict[str, Any]) -> None:
        text = yaml.dump(data, Dumper=_ManifestDumper, sort_keys=False, width=100)
        atomic_write_text(self.manifest_path, text)

    # --- metrics ---
    def write_metrics(self, columns: list[str], rows: list[dict[str, Any]]) -> None:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _csv_value(row.get(k)) for k in columns})
        atomic_write_text(self.metrics_path, buf.getvalue())

    def read_metrics(self) -> list[dict[str, str]]:
        if not self.metrics_path.is_file():
            return []
        with open(self.metrics_path, newline="", encoding="utf-8") as fh:
            return list(csv.DictReader(fh))

    def write_labeled_indices(
        self,
        indices: torch.Tensor,
        labels: torch.Tensor,
        classes: list[str],
        val: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> None:
        """The labeled primary images: `part` is train (trained on) or val (held out by --val;
        `val` is their (indices, labels))."""
        parts = [(indices, labels, "train")] + ([(*val, "val")] if val is not None else [])
        lines = ["index,class,part"] + [
            f"{int(i)},{classes[int(y)]},{part}"
            for index, ys, part in parts
            for i, y in zip(index, ys, strict=True)
        ]
        atomic_write_text(self.path / LABELED, "\n".join(lines) + "\n")

    def write_text(self, name: str, text: str) -> Path:
        """A text file in the run folder (e.g. error.log), written atomically."""
        path = self.path / name
        atomic_write_text(path, text)
        return path

    # --- checkpoints ---
    def save_checkpoint(self, state: dict[str, Any], path: Path | None = None) -> None:
        """`state` (plain tensors and data) as checkpoints/last.pt (or `path`), stamped with its
        format."""
        # Serialised in memory, then written by Python: torch's own file writer reports a full
        # disk as an opaque RuntimeError, Python's write as the OSError it is.
        buf = io.BytesIO()
        torch.save({"format": CHECKPOINT_FORMAT, "jadecli_version": __version__, **state}, buf)
        atomic_write(path or self.checkpoint_path, buf.getbuffer())

    def load_checkpoint(self, path: Path | None = None) -> dict[str, Any]:
        path = path or self.checkpoint_path
        if not path.is_file():
            raise RunDirError(f"no checkpoint at {path}")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise RunDirError(
                f"checkpoint {path} is corrupted or unreadable ({first[:200]})"
            ) from None
        if not isinstance(state, dict) or "model" not in state or "epoch" not in state:
            raise RunDirError(f"checkpoint {path} is not a jadecli checkpoint")
        if state.get("format") != CHECKPOINT_FORMAT:
            raise RunDirError(
                f"checkpoint {path} has format {state.get('format')}, written by jadecli "
                f"{state.get('jadecli_version', '(unknown)')}; this jadecli {__version__} reads "
                f"format {CHECKPOINT_FORMAT} only: train the run again"
            )
        return state


class PeerRun(RunDir):
    """The run folder as a rank other than 0 sees it under torchrun: rank 0 writes the run, this
    rank writes nothing to it and reads no metrics from it (the folder may be on another
    machine). An unexpected error's details go to `error-rank<k>.log` when the folder is here."""

    def __init__(self, path: Path, rank: int):
        super().__init__(path)
        self.rank = rank

    def discard(self) -> None:
        pass

    def write_manifest(self, data: dict[str, Any]) -> None:
        pass

    def write_metrics(self, columns: list[str], rows: list[dict[str, Any]]) -> None:
        pass

    def read_metrics(self) -> list[dict[str, str]]:
        return []

    def write_labeled_indices(self, *args: Any, **kwargs: Any) -> None:
        pass

    def save_checkpoint(self, state: dict[str, Any], path: Path | None = None) -> None:
        pass

    def write_text(self, name: str, text: str) -> Path:
        stem, dot, suffix = name.partition(".")
        return super().write_text(f"{stem}-rank{self.rank}{dot}{suffix}", text)


class _ManifestDumper(yaml.SafeDumper):
    """Block style, except short lists of plain values ([1, 28, 28]) which stay on one line."""


def _represent_list(dumper: yaml.SafeDumper, data: list[Any]) -> yaml.Node:
    flow = (
        all(isinstance(v, (int, float, str, bool)) or v is None for v in data) and len(data) <= 64
    )
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flow)


_ManifestDumper.add_representer(list, _represent_list)


def _csv_value(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return value
