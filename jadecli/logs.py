"""Experiment logs of `jade train --log`: TensorBoard and MLflow views of a run, kept in its folder.

The run folder stays the record of a run (manifest.yaml, metrics.csv, checkpoints); `--log` adds
the same numbers in the form the usual dashboards read:

- tensorboard: RUN/logs/tensorboard/, every metrics.csv number per epoch (step = epoch), and for
  jade runs an image of test images over their reconstructions at each test evaluation;
- mlflow: the resolved config as params, the same metrics per epoch (step = epoch), the images,
  manifest.yaml and metrics.csv as artifacts, and the session's end as the run's status
  (FINISHED, FAILED, or KILLED for an interrupted run). The store is RUN/logs/mlruns (a `file:`
  store) unless $MLFLOW_TRACKING_URI names another; the experiment is "jadecli" unless
  $MLFLOW_EXPERIMENT_NAME names another.

A resumed run continues the same logs: TensorBoard's steps go on from the checkpoint's epoch,
MLflow continues the run whose id the manifest records (`logs: mlflow: run_id`). The packages are
optional extras, imported only when asked for; `check_available` says which one is missing
before anything is written. A logger that fails mid-run is dropped with a warning: the run
folder still records everything, so training goes on.

    jade train --primary synth-street --auxiliary synth-hand --n-labeled 100 --epochs 2 \
--log tensorboard,mlflow --out runs/logged && tensorboard --logdir runs/logged/logs/tensorboard
"""

from __future__ import annotations

import importlib
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

import numpy as np
import torch

from jadecli import __version__
from jadecli.compute import autocast, to_input
from jadecli.config import TrainConfig
from jadecli.errors import JadeError
from jadecli.metrics import DECODER_COLUMNS
from jadecli.progress import Reporter
from jadecli.run import MANIFEST, METRICS

if TYPE_CHECKING:
    from jadecli.data.pair import TrainData
    from jadecli.model import RoleModel
    from jadecli.trainer import Trainer

TENSORBOARD_DIR = "logs/tensorboard"
MLFLOW_DIR = "logs/mlruns"
IMAGES_DIR = "logs/reconstructions"  # the PNGs both loggers log, one per test evaluation
RECON_IMAGES = 8  # test images per dataset in the reconstruction image
EXPERIMENT = "jadecli"
# --log NAME: the modules it imports, the package that provides them, the extra that installs it
EXTRAS = {
    "tensorboard": (("tensorboard", "torch.utils.tensorboard"), "tensorboard", "tensorboard"),
    "mlflow": (("mlflow",), "mlflow-skinny", "mlflow"),
}
MLFLOW_STATUS = {"completed": "FINISHED", "failed": "FAILED", "interrupted": "KILLED"}
# metrics.csv columns whose logged name is not `loss/<column>` or `accuracy/<column>`
NAMES = {
    "loss": "loss/total",
    "lr": "optim/lr",
    "seconds": "speed/epoch_seconds",
    "examples_per_s": "speed/examples_per_s",  # pairs/s (labeled images/s for --model single)
}


class LogError(JadeError):
    """An experiment log cannot be used: its package is missing, or its store refuses."""


def requested(spec: str) -> list[str]:
    """The loggers of a `--log` value (already validated by TrainConfig)."""
    return [] if spec == "none" else spec.split(",")


def check_available(spec: str) -> None:
    """Import what `--log spec` needs now, before a run folder exists: one line if it can't."""
    for name in requested(spec):
        modules, package, extra = EXTRAS[name]
        for module in modules:
            try:
                importlib.import_module(module)
            except Exception as err:  # ImportError, or a broken install of the package
                why = (
                    "which is not installed"
                    if isinstance(err, ModuleNotFoundError)
                    else f"which cannot be imported ({_one_line(err)})"
                )
                raise LogError(
                    f"--log {name} needs the {package} package, {why}: "
                    f"pip install 'jadecli[{extra}]'"
                ) from None


def metric_name(column: str) -> str:
    """The logged name of a metrics.csv column: loss/total, loss/<term>, accuracy/test_acc_aux,
    optim/lr, speed/examples_per_s, ..."""
    if column in NAMES:
        return NAMES[column]
    if column in DECODER_COLUMNS:
        return f"decoders/{column}"
    return f"accuracy/{column}" if "_acc_" in column else f"loss/{column}"


def scalars(row: dict[str, Any]) -> dict[str, float]:
    """A metrics row as logged metrics; the empty ones (not measured that epoch) left out."""
    return {
        metric_name(k): float(v) for k, v in row.items() if k != "epoch" and v not in (None, "")
    }


# --------------------------------------------------------------------------- what the engine uses


class ExperimentLog:
    """What a training session records into: each epoch's metrics row, the reconstruction image
    of each test evaluation, and the session's end. This one records nothing (`--log none`)."""

    def epoch(self, row: dict[str, Any]) -> None:
        """One metrics row (step = its epoch); a repeated epoch adds to what it logged."""

    def images(self, epoch: int, trainer: Trainer, data: TrainData) -> None:
        """The reconstruction image of `trainer`'s evaluated weights (jade runs only)."""

    def close(self, status: str) -> None:
        """The session ended as `status` (completed, failed, interrupted); idempotent."""


class _Logs(ExperimentLog):
    """The loggers `--log` asked for; one that fails is dropped with a warning."""

    def __init__(self, backends: list[Any], run: Path, warn: Callable[[str], None]) -> None:
        self.backends, self.run, self.warn = backends, run, warn

    def _each(self, call: Callable[[Any], None]) -> None:
        for backend in list(self.backends):
            try:
                call(backend)
            except Exception as err:
                self.backends.remove(backend)
                self.warn(
                    f"--log {backend.name}: {_one_line(err)}; stopped logging to it (the run "
                    "folder still records everything)"
                )

    def epoch(self, row: dict[str, Any]) -> None:
        values, step = scalars(row), int(row["epoch"])
        self._each(lambda b: b.scalars(step, values))

    def images(self, epoch: int, trainer: Trainer, data: TrainData) -> None:
        if not self.backends:
            return
        path = self.run / IMAGES_DIR / f"epoch-{epoch:04d}.png"
        try:
            png = reconstruction_png(trainer, data, path, f"epoch {epoch}")
        except Exception as err:  # an image is not worth the run: say so, train on
            self.warn(f"--log: the reconstruction image of epoch {epoch} failed ({err})")
            return
        if png is not None:
            self._each(lambda b: b.image(epoch, "reconstructions", png))

    def close(self, status: str) -> None:
        self._each(lambda b: b.close(status))
        self.backends = []


def open_log(
    cfg: TrainConfig, run: Path, manifest: dict[str, Any], start_epoch: int, reporter: Reporter
) -> ExperimentLog:
    """The loggers of `cfg.log` for a session of the run in `run` that starts after
    `start_epoch` epochs; records where they write in `manifest["logs"]` (read back on resume)."""
    names = requested(cfg.log)
    if not names:
        return ExperimentLog()
    record = manifest.setdefault("logs", {})
    backends: list[Any] = []
    for name in names:
        try:
            if name == "tensorboard":
                backends.append(_TensorBoard(run, start_epoch, record, reporter))
            else:
                backends.append(_MLflow(cfg, run, record, reporter))
        except Exception as err:
            for opened in backends:
                opened.close("failed")
            raise LogError(f"--log {name}: cannot start logging ({_one_line(err)})") from None
    return _Logs(backends, run, reporter.warn)


# --------------------------------------------------------------------------- TensorBoard


class _TensorBoard:
    name = "tensorboard"

    def __init__(self, run: Path, start_epoch: int, record: dict[str, Any], reporter: Reporter):
        from torch.utils.tensorboard import SummaryWriter

        # a resumed session hides whatever an earlier one logged after the checkpoint's epoch
        purge = start_epoch + 1 if start_epoch else None
        self.writer = SummaryWriter(str(run / TENSORBOARD_DIR), purge_step=purge)
        record["tensorboard"] = {"dir": TENSORBOARD_DIR}
        reporter.info(f"tensorboard logs: tensorboard --logdir {run / TENSORBOARD_DIR}")

    def scalars(self, epoch: int, values: dict[str, float]) -> None:
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, epoch)
        self.writer.flush()  # a dashboard open during training shows each epoch as it ends

    def image(self, epoch: int, tag: str, png: Path) -> None:
        from PIL import Image

        with Image.open(png) as im:
            pixels = np.asarray(im.convert("RGB"))  # (H, W, 3) uint8
        self.writer.add_image(tag, pixels, epoch, dataformats="HWC")
        self.writer.flush()

    def close(self, status: str) -> None:
        self.writer.close()


# --------------------------------------------------------------------------- MLflow


class _MLflow:
    name = "mlflow"

    def __init__(self, cfg: TrainConfig, run: Path, record: dict[str, Any], reporter: Reporter):
        from mlflow.tracking import MlflowClient

        self.run = run
        saved = record.get("mlflow") or {}
        uri = _tracking_uri(saved.get("tracking_uri"))
        if uri == MLFLOW_DIR or uri.startswith("file:"):
            # MLflow 3 refuses file stores unless asked; a local file store is what --log mlflow
            # promises (RUN/logs/mlruns, nothing to install or serve)
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        where = (run / MLFLOW_DIR).resolve().as_uri() if uri == MLFLOW_DIR else uri
        self.client = MlflowClient(tracking_uri=where)
        self.run_id = self._continue(saved.get("run_id"), cfg, reporter)
        if self.run_id is None:
            self.run_id = self._start(cfg)
        experiment = self.client.get_run(self.run_id).info.experiment_id
        record["mlflow"] = {
            "tracking_uri": _without_password(uri),
            "experiment_id": experiment,
            "run_id": self.run_id,
        }
        shown = f"mlflow ui --backend-store-uri {run / MLFLOW_DIR}" if uri == MLFLOW_DIR else uri
        reporter.info(f"mlflow run {self.run_id}: {_without_password(shown)}")

    def _start(self, cfg: TrainConfig) -> str:
        from mlflow.entities import Param

        name = os.environ.get("MLFLOW_EXPERIMENT_NAME") or EXPERIMENT
        found = self.client.get_experiment_by_name(name)
        experiment = found.experiment_id if found else self.client.create_experiment(name)
        tags = {"jadecli.run_dir": str(self.run.resolve()), "jadecli.version": __version__}
        run_id = str(
            self.client.create_run(experiment, tags=tags, run_name=self.run.name).info.run_id
        )
        params = [Param(k, str(v)) for k, v in cfg.to_dict().items()]
        self.client.log_batch(run_id, params=params)
        return run_id

    def _continue(self, run_id: str | None, cfg: TrainConfig, reporter: Reporter) -> str | None:
        """Reopen the run an earlier session logged to; None if there is none to reopen."""
        if not run_id:
            return None
        try:
            logged = self.client.get_run(run_id).data.params
        except Exception as err:
            reporter.warn(
                f"--log mlflow: cannot reopen run {run_id} ({_one_line(err)}); "
                "logging to a new MLflow run"
            )
            return None
        self.client.update_run(run_id, status="RUNNING")
        # params cannot change in MLflow: a value a resume changed (--epochs) becomes a tag
        for key, value in cfg.to_dict().items():
            if key not in logged:
                self.client.log_param(run_id, key, str(value))
            elif logged[key] != str(value):
                self.client.set_tag(run_id, f"resumed.{key}", str(value))
        return run_id

    def scalars(self, epoch: int, values: dict[str, float]) -> None:
        from mlflow.entities import Metric

        stamp = int(time.time() * 1000)
        metrics = [Metric(key, value, stamp, epoch) for key, value in values.items()]
        self.client.log_batch(self.run_id, metrics=metrics)

    def image(self, epoch: int, tag: str, png: Path) -> None:
        self.client.log_artifact(self.run_id, str(png), tag)

    def close(self, status: str) -> None:
        try:
            for name in (MANIFEST, METRICS):
                if (self.run / name).is_file():
                    self.client.log_artifact(self.run_id, str(self.run / name))
        finally:
            self.client.set_terminated(self.run_id, MLFLOW_STATUS.get(status, "FAILED"))


def _tracking_uri(saved: str | None) -> str:
    """Where MLflow logs: the run folder's own store stays there; another store is
    $MLFLOW_TRACKING_URI if set (credentials may have changed), else the one the run used."""
    if saved == MLFLOW_DIR:
        return MLFLOW_DIR
    return os.environ.get("MLFLOW_TRACKING_URI") or saved or MLFLOW_DIR


def _without_password(uri: str) -> str:
    """A tracking URI fit for the manifest: no user:password@."""
    parts = urlsplit(uri)
    if "@" not in parts.netloc:
        return uri
    return urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]))


# --------------------------------------------------------------------------- the image


@torch.inference_mode()
def reconstruction_png(trainer: Trainer, data: TrainData, path: Path, title: str) -> Path | None:
    """The first test images of each class of both datasets, each over its reconstruction from
    the posterior means, as `jade reconstruct` draws them; None for a model without decoders."""
    from jadecli import plots
    from jadecli.model import JADE
    from jadecli.spec import AUXILIARY, PRIMARY

    model: RoleModel = trainer.eval_model
    if not isinstance(model, JADE) or data.auxiliary is None:
        return None
    datasets = {PRIMARY: data.primary, AUXILIARY: data.auxiliary}
    size = (
        max(d.image_shape[1] for d in datasets.values()),
        max(d.image_shape[2] for d in datasets.values()),
    )
    rows, labels, names = [], [], []
    was_training = model.training
    model.eval()
    try:
        for role, dataset in datasets.items():
            index = _by_class(dataset.test.labels, RECON_IMAGES)
            x = to_input(dataset.test.images[index], trainer.device)  # (n, C, H, W)
            with autocast(trainer.device, trainer.precision):
                q = model.encoder(role)(x).float()
                recon = model.decode(role, q.mu_s, q.mu_c)  # (n, C, H, W) in [0, 1]
            rows += [plots.to_display(x, size), plots.to_display(recon, size)]
            labels += [f"{role} ({dataset.name})", "reconstruction"]
            names.append([dataset.classes[int(y)] for y in dataset.test.labels[index]])
    finally:
        model.train(was_training)
    n = min(len(r) for r in rows)
    columns = [p if p == a else f"{p}/{a}" for p, a in zip(names[0][:n], names[1][:n], strict=True)]
    grid = np.stack([r[:n] for r in rows])  # (4, n, H, W, 3)
    plots.save_image_grid(
        path, grid, f"{title}: test images and their reconstructions", labels, columns
    )
    return path


def _by_class(labels: torch.Tensor, n: int) -> torch.Tensor:
    """Up to n indices: the first image of each class in class order, then the second, ..."""
    rank = torch.zeros_like(labels)
    for c in labels.unique():
        members = labels == c
        rank[members] = torch.arange(int(members.sum()))
    order = torch.argsort(rank * (int(labels.max()) + 1) + labels)  # (rank, class) order
    return order[:n]


def _one_line(err: BaseException) -> str:
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0]}" if text else type(err).__name__
