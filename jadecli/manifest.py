"""What a training run writes about itself: its manifest's content, its final metrics, and how
a session's outcome is recorded. Plain data in, plain data out; `jadecli.run` writes it.
"""

from __future__ import annotations

import platform
import shlex
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from jadecli import __version__
from jadecli.config import TrainConfig
from jadecli.data.pair import TrainData
from jadecli.errors import StorageError
from jadecli.metrics import DECODER_COLUMNS
from jadecli.run import BEST, CHECKPOINT_DIR, LABELED, LAST, SCHEMA_VERSION, RunDir
from jadecli.run import now as _now

if TYPE_CHECKING:
    from jadecli.trainer import Trainer


def num(v: Any) -> float | None:
    return None if v in (None, "") else float(v)


def selected_row(rows: list[dict[str, Any]], select: str) -> dict[str, Any] | None:
    """The epoch a run ends with: the last, or (--select best-val) the one with the best
    validation accuracy, the later on a tie (same score, more training)."""
    if select != "best-val":
        return rows[-1] if rows else None
    scored = [r for r in rows if num(r.get("val_acc_primary")) is not None]
    if not scored:
        return rows[-1] if rows else None
    return max(reversed(scored), key=lambda r: num(r.get("val_acc_primary")) or 0.0)


def final_from_rows(rows: list[dict[str, Any]], select: str = "last") -> dict[str, Any]:
    """The manifest's final_metrics: those of the selected epoch (its test accuracy is None when
    it was not evaluated)."""
    row = selected_row(rows, select) or {}
    # JADE: how well the decoders keep class and content (jadecli.generative)
    decoders = {k: num(row.get(k)) for k in DECODER_COLUMNS if k in row}
    return {
        "primary_test_accuracy": num(row.get("test_acc_primary")),
        "auxiliary_test_accuracy": num(row.get("test_acc_aux")),
        "primary_train_accuracy": num(row.get("train_acc_primary")),
        "primary_val_accuracy": num(row.get("val_acc_primary")),
        "loss": num(row.get("loss")),
        **decoders,
        "selection": select,
        "selected_epoch": int(row["epoch"]) if row else None,
    }


def mark(manifest: dict[str, Any], status: str, error: str | None) -> None:
    """A session's outcome, in the manifest's data: status, end time, error, event."""
    manifest["status"] = status
    manifest["ended_at"] = _now()
    manifest["error"] = error
    manifest.setdefault("events", []).append({"time": manifest["ended_at"], "event": status})


def finish(run: RunDir, manifest: dict[str, Any], status: str, error: str | None) -> str:
    """Record the session's outcome in the manifest; '' or a note saying it could not be."""
    mark(manifest, status, error)
    try:
        run.write_manifest(manifest)
    except StorageError as err:  # the original error matters more than this write
        return f"; {run.manifest_path} could not be updated ({err.reason})"
    return ""


# --------------------------------------------------------------------------- the manifest


def command_text(command: list[str]) -> str:
    """The command line that ran, as one shell-quoted string ('' when not known)."""
    return " ".join(shlex.quote(a) for a in command)


def versions() -> dict[str, str]:
    import torchvision

    return {
        "python": platform.python_version(),
        "torch": str(torch.__version__),
        "torchvision": str(torchvision.__version__),
        "numpy": str(np.__version__),
        "platform": platform.platform(),
    }


def datasets(cfg: TrainConfig, data: TrainData) -> dict[str, Any]:
    """What the manifest records about the datasets and the parts of them used."""
    primary = dict(data.described["primary"])
    primary["labeled"] = {
        "size": len(data.labeled),
        "per_class": data.labeled.class_counts(data.primary.num_classes),
        "selection": cfg.labeled_selection if cfg.n_labeled != "all" else "all",
        "file": LABELED,
    }
    if data.val is not None:  # held out of --n-labeled: scored every epoch, never trained on
        primary["validation"] = {
            "size": len(data.val),
            "per_class": data.val.class_counts(data.primary.num_classes),
            "select": cfg.select,
        }
    if data.unlabeled is not None:  # --unlabeled: each source, its image count, its files' hash
        primary["unlabeled"] = data.unlabeled.describe()
    out = {"primary": primary}
    if data.auxiliary is not None and data.aux_train is not None:
        aux = dict(data.described["auxiliary"])
        aux["used_train_size"] = len(data.aux_train)
        aux["used_per_class"] = data.aux_train.class_counts(data.auxiliary.num_classes)
        out["auxiliary"] = aux
    return out


def checkpoints(cfg: TrainConfig) -> dict[str, str]:
    """The manifest's checkpoints: last (what --resume continues) and the selected one."""
    last = f"{CHECKPOINT_DIR}/{LAST}"
    if cfg.select == "best-val":
        best = f"{CHECKPOINT_DIR}/{BEST}"
        return {"last": last, "best": best, "selected": best}
    return {"last": last, "selected": last}


def new_manifest(
    cfg: TrainConfig, command: list[str], data: TrainData, trainer: Trainer
) -> dict[str, Any]:
    started = _now()
    return {
        "schema_version": SCHEMA_VERSION,
        "jadecli_version": __version__,
        "command": command_text(command),
        "status": "running",
        "started_at": started,
        "ended_at": None,
        "seed": cfg.seed,
        "device": str(trainer.device),
        "precision": trainer.precision,
        "precision_reason": trainer.precision_reason,
        "compile": trainer.compile_reason,
        "threads": torch.get_num_threads(),
        "versions": versions(),
        "config": cfg.to_dict(),
        "datasets": datasets(cfg, data),
        "training": {
            "epoch_size": trainer.batches.epoch_size,
            "steps_per_epoch": trainer.steps_per_epoch,
            "total_steps": trainer.steps_per_epoch * cfg.epochs,
            "schedule_steps": trainer.schedule_steps,
            "parameters": sum(p.numel() for p in trainer.model.parameters()),
        },
        "epochs_completed": 0,
        "final_metrics": None,
        "checkpoints": checkpoints(cfg),
        "metrics_file": "metrics.csv",
        "error": None,
        "events": [{"time": started, "event": "started", "command": command_text(command)}],
    }
