"""The training session behind `jade train`: a config in, a complete run folder out.

`train(cfg, options, reporter)` starts a new run; `resume(options, changes, reporter)` continues
the run in `options.out`. Neither prints (every message goes through the reporter) and both
raise `JadeError`s for everything a user can fix. A session is a few named steps:

1. **open** (`_restore`, resume only): one read of the manifest and the checkpoint, and one
   consistency check of the run folder and of what the command line asks to change;
2. **start** (`_start_new` / `_start_resumed`): load the data, build the trainer, create the
   run folder or mark the resumed one running;
3. **the epoch loop** (`_train_epochs`): train, evaluate, then record metrics, checkpoint and
   manifest, in that order, so that the checkpoint is always the last good state;
4. **the outcome** (`_failure`): the one place that maps an exception to a status
   (`failed` / `interrupted`) and a one-line message.

SIGINT (Ctrl-C) and SIGTERM both end a session as `interrupted`, resumable, with exit codes 130
and 143. Usable without the CLI:

    python -c "from pathlib import Path; from jadecli.config import TrainConfig; \
from jadecli.engine import RunOptions, train; from jadecli.progress import PlainReporter; \
print(train(TrainConfig(primary='synth-street', auxiliary='synth-hand', n_labeled=100, epochs=1, \
epoch_size=1000), RunOptions(Path('runs/api-demo')), PlainReporter()).final)"
"""

from __future__ import annotations

import contextlib
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from jadecli import distributed, logs
from jadecli import manifest as records
from jadecli.compute import (
    configure_allocator,
    configure_threads,
    precision_reason,
    resolve_device,
    resolve_precision,
)
from jadecli.config import RESUME_OVERRIDABLE, TrainConfig, field_names, flag
from jadecli.data.core import default_data_dir
from jadecli.data.pair import TrainData, training_data
from jadecli.distributed import Dist
from jadecli.errors import (
    Interrupted,
    JadeError,
    RunDirError,
    StorageError,
    Terminated,
    TrainingFailed,
    UsageError,
)
from jadecli.metrics import Diverged, metric_columns
from jadecli.progress import NullReporter, Reporter
from jadecli.run import (
    PeerRun,
    RunDir,
    check_new_run_target,
)
from jadecli.run import now as _now
from jadecli.signals import TermSignal, signals_as_interrupts
from jadecli.spec import PRIMARY
from jadecli.trainer import Trainer, accuracy, evaluate_test, train_one_epoch

ERROR_LOG = "error.log"


@dataclass
class RunOptions:
    """Where and how to run, as opposed to what to compute (TrainConfig)."""

    out: Path
    overwrite: bool = False
    command: list[str] = field(default_factory=list)  # the command line, for the manifest


@dataclass
class TrainResult:
    """What a finished session reports; failures raise instead."""

    run_dir: Path
    epochs_completed: int
    seconds: float
    final: dict[str, Any]  # final_metrics of the manifest
    primary: str
    auxiliary: str | None  # None for a single classifier
    already_complete: bool = False  # resumed a run that had nothing left to do
    rank: int = 0  # under torchrun only rank 0 reports


@dataclass
class _Session:
    """One training session of a run: what it trains, where it records, how far it got."""

    cfg: TrainConfig
    options: RunOptions
    run: RunDir
    manifest: dict[str, Any]
    data: TrainData
    trainer: Trainer
    rows: list[dict[str, Any]]  # metrics.csv
    start_epoch: int  # epochs done when the session started
    epoch: int = 0  # the epoch in progress (0-based)
    log: logs.ExperimentLog = field(default_factory=logs.ExperimentLog)  # --log
    dist: Dist = field(default_factory=Dist)  # this process's place under torchrun


@dataclass
class _Restored:
    """A run folder opened for `--resume`."""

    run: RunDir
    manifest: dict[str, Any]
    state: dict[str, Any]  # its checkpoint
    cfg: TrainConfig  # its saved config with the allowed changes applied


# --------------------------------------------------------------------------- entry points


def train(cfg: TrainConfig, options: RunOptions, reporter: Reporter) -> TrainResult:
    """Train a new run as `cfg` says and leave a complete run folder at `options.out`. Under
    torchrun (WORLD_SIZE > 1) every rank calls this; rank 0 writes the run folder."""
    with _group(cfg.device) as d:
        reporter = reporter if d.main else NullReporter()

        def check() -> None:
            _check_world(cfg, d)
            check_new_run_target(options.out, options.overwrite)  # fail before the slow part
            logs.check_available(cfg.log)  # a missing extra, before anything is written

        distributed.agree(check, d)
        return _session(reporter, lambda: _start_new(cfg, options, reporter, d), d)


def resume(options: RunOptions, changes: dict[str, Any], reporter: Reporter) -> TrainResult:
    """Continue the run in `options.out` from its last checkpoint, with its saved config.

    `changes` holds the values the command line gave (field name -> value); only
    RESUME_OVERRIDABLE fields may differ from the saved ones. The learning-rate schedule stays
    the one the run was planned with: epochs added by a larger `epochs` train at the rate the
    schedule ended with."""
    if options.overwrite:
        raise UsageError("--resume and --overwrite contradict each other; pass one of them")
    device = str(changes.get("device") or "auto")
    with _group(device) as d:
        reporter = reporter if d.main else NullReporter()

        def check() -> tuple[_Restored, TrainResult | None]:
            restored = _restore(options.out, changes)
            _check_world(restored.cfg, d)
            done = int(restored.state["epoch"])
            if done == restored.cfg.epochs:
                return restored, _already_complete(restored)
            if done > restored.cfg.epochs:
                raise UsageError(
                    f"--epochs {restored.cfg.epochs}: the run in {options.out} already has "
                    f"{done} epochs; pass a larger --epochs to continue it"
                )
            logs.check_available(restored.cfg.log)
            return restored, None

        # rank 0 reads the run folder; every rank gets its config and checkpoint from it
        restored, complete = distributed.agree(check, d)
        if complete is not None:
            return replace(complete, rank=d.rank)
        if not d.main:
            restored = replace(restored, run=PeerRun(restored.run.path, d.rank))
        return _session(reporter, lambda: _start_resumed(restored, options, reporter, d), d)


@contextlib.contextmanager
def _group(device: str) -> Iterator[Dist]:
    """This process's place under torchrun: joins the process group for the session (NCCL on
    GPUs, gloo on CPUs) and leaves it afterwards; rank 0 of 1 without torchrun."""
    d = distributed.from_env()
    if d.enabled:
        d = distributed.join(d, resolve_device(distributed.rank_device(device, d)))
    try:
        yield d
    except BaseException as err:
        if not distributed.is_comm_error(err):
            raise
        # a peer stopped while rank 0 was checking the run folder (the session maps later ones)
        error = distributed.PeerFailed(
            f"another torchrun process stopped before training started ({_one_line(err)}); "
            "its own message, if any, is above; nothing was written"
        )
        raise distributed.quiet(error, 1, loud=d.main) from None
    finally:
        distributed.leave(d)


def _check_world(cfg: TrainConfig, d: Dist) -> None:
    if cfg.batch_size < d.world_size:
        raise UsageError(
            f"--batch-size {cfg.batch_size} is the global batch, shared by the {d.world_size} "
            f"torchrun processes; use at least --batch-size {d.world_size}"
        )


def _already_complete(restored: _Restored) -> TrainResult:
    """A resumed run whose checkpoint holds every epoch: nothing to train. If its session ended
    before it could say so (a signal or a failed write after the last checkpoint), say it now."""
    run, manifest, cfg = restored.run, restored.manifest, restored.cfg
    if manifest.get("status") != "completed":
        if manifest.get("epochs_completed") != cfg.epochs:  # its last manifest write failed
            rows = [r for r in run.read_metrics() if int(r["epoch"]) <= cfg.epochs]
            final = records.final_from_rows(rows, cfg.select)
            manifest.update(epochs_completed=cfg.epochs, final_metrics=final)
        records.mark(manifest, "completed", None)
        run.write_manifest(manifest)
    final = manifest.get("final_metrics") or {}
    return _result(cfg, run.path, cfg.epochs, 0.0, final, already_complete=True)


def _session(reporter: Reporter, start: Callable[[], _Session], d: Dist) -> TrainResult:
    """Start a session and train it to the end; any way out is mapped by `_failure`."""
    session: _Session | None = None
    with signals_as_interrupts() as signals:
        try:
            session = start()
            seconds = _train_epochs(session, reporter)
            signals.armed = False  # from here on a signal would only cost the record of it
            return _complete(session, seconds)
        except BaseException as err:
            signals.armed = False
            error = _failure(session, err, d)
            if session is not None:  # after _failure: the manifest the log keeps is the final one
                session.log.close(str(session.manifest.get("status")))
            if error is None:
                raise
            if not d.main:  # rank 0 reports what every rank saw; a rank its own failure
                error.quiet = not _own_failure(err)
            raise error from None
        finally:
            reporter.close()


def _own_failure(err: BaseException) -> bool:
    """Whether a rank other than 0 must report `err` itself: an error only it met (a crash, an
    unexpected error). Signals, divergence (checked on all ranks at once), lost peers and errors
    rank 0 already reported are said by rank 0."""
    shared = (KeyboardInterrupt, TermSignal, Diverged, UsageError)
    if isinstance(err, shared) or distributed.is_comm_error(err):
        return False
    return not (isinstance(err, JadeError) and err.quiet)


# --------------------------------------------------------------------------- 1. open


def _restore(out: Path, changes: dict[str, Any]) -> _Restored:
    """Open the run in `out` for resuming: one read of its manifest and checkpoint."""
    run, manifest = RunDir.open(out, flag="--out")
    state = run.load_checkpoint()
    configs = []
    for where, data in ((run.manifest_path, manifest), (run.checkpoint_path, state)):
        try:
            configs.append(TrainConfig.from_dict(dict(data["config"])))
        except (KeyError, TypeError, ValueError, JadeError) as err:
            raise RunDirError(f"{where} holds no usable config ({err})") from None
    cfg = _resumed_config(run, *configs, changes)
    return _Restored(run, manifest, state, cfg)


def _resumed_config(
    run: RunDir, saved: TrainConfig, trained: TrainConfig, changes: dict[str, Any]
) -> TrainConfig:
    """The one consistency check of a resume. `saved` is the manifest's config (as last
    requested), `trained` the checkpoint's: they may differ only where a resume may change
    something (a resumed session that ended before its first checkpoint leaves that), and the
    command line may change nothing else."""
    for name in field_names(TrainConfig):
        if name not in RESUME_OVERRIDABLE and getattr(saved, name) != getattr(trained, name):
            raise RunDirError(
                f"{run.checkpoint_path} was trained with {name} = {getattr(trained, name)!r} but "
                f"{run.manifest_path} says {getattr(saved, name)!r}; the run folder is "
                "inconsistent and cannot be resumed"
            )
    requested = TrainConfig(**{**saved.to_dict(), **changes})  # validates the new values
    for name in changes:
        if name not in RESUME_OVERRIDABLE and getattr(requested, name) != getattr(saved, name):
            raise UsageError(
                f"{flag(name)} {getattr(requested, name)} differs from the run's saved value "
                f"{getattr(saved, name)}; a resumed run keeps its config (only "
                f"{', '.join(flag(n) for n in sorted(RESUME_OVERRIDABLE))} may change)"
            )
    return requested


# --------------------------------------------------------------------------- 2. start


def _prepare(
    cfg: TrainConfig, reporter: Reporter, d: Dist, resumed: bool = False
) -> tuple[TrainConfig, TrainData, Trainer]:
    """Device, precision, data and trainer of a session (the slow part of starting). Under
    torchrun every rank prepares its own and they compare notes before going on (`check_all`)."""
    try:
        prepared = _prepare_rank(cfg, reporter, d, resumed)
    except JadeError as err:
        distributed.check_all(err, d)
        raise
    distributed.check_all(None, d)
    return prepared


def _prepare_rank(
    cfg: TrainConfig, reporter: Reporter, d: Dist, resumed: bool
) -> tuple[TrainConfig, TrainData, Trainer]:
    device = resolve_device(distributed.rank_device(cfg.device, d))
    precision = resolve_precision(cfg.precision, device, reporter.warn)
    _, why = precision_reason(cfg.precision, device)
    threads = configure_threads()
    configure_allocator()
    # the first line a run prints: where it computes and why, before the data loads
    on = f" ({threads} thread{'s' if threads != 1 else ''})" if device.type == "cpu" else ""
    reporter.info(f"device: {device}{on}; {precision}: {why}")
    if cfg.data_dir is None:  # record where the data really came from
        cfg = replace(cfg, data_dir=str(default_data_dir()))
    cfg, data = training_data(cfg, reporter)  # with what the data decided, for the manifest
    trainer = Trainer(cfg, data, device, precision, resumed, d)
    trainer.precision_reason = why
    if trainer.compiled:
        reporter.info("--compile: the first steps wait for the compilation (about a minute)")
    elif cfg.compile:
        reporter.warn(f"--compile: {trainer.compile_reason}; training uncompiled")
    return cfg, data, trainer


def _start_new(cfg: TrainConfig, options: RunOptions, reporter: Reporter, d: Dist) -> _Session:
    cfg, data, trainer = _prepare(cfg, reporter, d)
    trainer.distribute()
    manifest = records.new_manifest(cfg, options.command, data, trainer)
    manifest["distributed"] = d.describe(distributed.gather(str(trainer.device), d))
    if not d.main:
        run: RunDir = PeerRun(options.out, d.rank)
        return _Session(cfg, options, run, manifest, data, trainer, [], start_epoch=0, dist=d)
    run = RunDir.create(options.out, options.overwrite)
    log = logs.ExperimentLog()
    try:
        log = logs.open_log(cfg, run.path, manifest, 0, reporter)  # records itself in manifest
        run.write_manifest(manifest)
        val = (
            None
            if data.val is None or data.val_index is None
            else (data.val_index, data.val.labels)
        )
        labeled = data.labeled_index, data.labeled.labels
        run.write_labeled_indices(*labeled, data.primary.classes, val)
    except BaseException:
        log.close("failed")
        run.discard()  # nothing was trained yet: leave no half-made run behind
        raise
    return _Session(cfg, options, run, manifest, data, trainer, [], 0, log=log, dist=d)


def _start_resumed(
    restored: _Restored, options: RunOptions, reporter: Reporter, d: Dist
) -> _Session:
    cfg, data, trainer = _prepare(restored.cfg, reporter, d, resumed=True)
    start = trainer.load_state(restored.state)
    trainer.distribute()
    devices = distributed.gather(str(trainer.device), d)
    run, manifest = restored.run, restored.manifest
    rows = [r for r in run.read_metrics() if int(r["epoch"]) <= start]
    manifest.update(
        epochs_completed=start,
        status="running",
        config=cfg.to_dict(),
        device=str(trainer.device),
        precision=trainer.precision,
        precision_reason=trainer.precision_reason,
        compile=trainer.compile_reason,
        threads=torch.get_num_threads(),
        ended_at=None,
        error=None,
        distributed=d.describe(devices),
    )
    manifest.setdefault("training", {})["total_steps"] = trainer.steps_per_epoch * cfg.epochs
    event = {
        "time": _now(),
        "event": "resumed",
        "from_epoch": start,
        "command": records.command_text(options.command),
    }
    manifest.setdefault("events", []).append(event)
    reporter.info(f"resuming {options.out} from epoch {start} of {cfg.epochs}")
    if not d.main:
        return _Session(cfg, options, run, manifest, data, trainer, rows, start, dist=d)
    log = logs.open_log(cfg, run.path, manifest, start, reporter)  # continues the run's logs
    try:
        run.write_manifest(manifest)
    except BaseException:
        log.close("failed")
        raise
    return _Session(cfg, options, run, manifest, data, trainer, rows, start, log=log, dist=d)


# --------------------------------------------------------------------------- 3. the epochs


def _train_epochs(s: _Session, reporter: Reporter) -> float:
    """Train the remaining epochs; returns the seconds spent."""
    cfg, trainer, data = s.cfg, s.trainer, s.data
    columns = metric_columns(trainer.objective.terms, trainer.spec.generative)
    t_start = time.perf_counter()
    for epoch in range(s.start_epoch, cfg.epochs):
        s.epoch = epoch
        row = train_one_epoch(trainer, epoch, reporter)
        if data.val is not None:  # every epoch: it is what --select best-val chooses by
            val = data.val
            row["val_acc_primary"] = accuracy(
                trainer.eval_model,
                PRIMARY,
                val.images,
                val.labels,
                trainer.device,
                trainer.precision,
                s.dist,
            )
        last = epoch == cfg.epochs - 1
        tested = cfg.test and (last or (cfg.eval_every and (epoch + 1) % cfg.eval_every == 0))
        if tested:
            model, device, precision = trainer.eval_model, trainer.device, trainer.precision
            row.update(evaluate_test(model, data, device, precision, s.dist))
        s.rows.append(row)
        # metrics, then the checkpoints, then the manifest that points at them: a resume keeps
        # the metrics rows up to the checkpoint's epoch, so a failed write never desyncs them
        s.run.write_metrics(columns, s.rows)
        state = trainer.state(epoch + 1)
        if cfg.select == "best-val" and records.selected_row(s.rows, cfg.select) is row:
            s.run.save_checkpoint(state, s.run.best_path)
        s.run.save_checkpoint(state)
        s.manifest["epochs_completed"] = epoch + 1
        s.manifest["final_metrics"] = records.final_from_rows(s.rows, cfg.select)
        s.run.write_manifest(s.manifest)
        reporter.end_epoch(epoch + 1, cfg.epochs, row)
        # --log last: experiment logs only ever hold epochs the run folder has committed
        s.log.epoch(row)
        if tested:
            s.log.images(epoch + 1, trainer, data)
    return time.perf_counter() - t_start


def _complete(s: _Session, seconds: float) -> TrainResult:
    chosen = records.selected_row(s.rows, s.cfg.select)
    measure = (
        s.cfg.test and chosen is not None and records.num(chosen.get("test_acc_primary")) is None
    )
    if measure and s.dist.main and chosen is not None:
        # --select best-val with --eval-every != 1: the chosen epoch's test accuracy is measured
        # now, from its checkpoint, and filled into its own row
        trainer = s.trainer
        model = trainer.eval_model
        model.load_state_dict(s.run.load_checkpoint(s.run.best_path)["model"])
        measured = evaluate_test(model, s.data, trainer.device, trainer.precision)
        chosen.update(measured)
        s.log.epoch({"epoch": chosen["epoch"], **measured})  # at the chosen epoch's step
        columns = metric_columns(trainer.objective.terms, trainer.spec.generative)
        s.run.write_metrics(columns, s.rows)
        s.manifest["final_metrics"] = records.final_from_rows(s.rows, s.cfg.select)
    s.manifest["train_seconds"] = round(float(s.manifest.get("train_seconds") or 0) + seconds, 2)
    records.finish(s.run, s.manifest, "completed", None)
    s.log.close("completed")  # never raises: a failing logger only warns
    final = s.manifest["final_metrics"]
    return replace(_result(s.cfg, s.run.path, s.cfg.epochs, seconds, final), rank=s.dist.rank)


def _result(
    cfg: TrainConfig,
    out: Path,
    epochs: int,
    seconds: float,
    final: dict[str, Any],
    already_complete: bool = False,
) -> TrainResult:
    return TrainResult(
        run_dir=out,
        epochs_completed=epochs,
        seconds=seconds,
        final=final,
        primary=cfg.primary,
        auxiliary=cfg.auxiliary if cfg.uses_auxiliary else None,
        already_complete=already_complete,
    )


# --------------------------------------------------------------------------- 4. the outcome


def _failure(s: _Session | None, err: BaseException, d: Dist) -> JadeError | None:
    """The one place a session's exception becomes the run's status (`failed` or
    `interrupted`) and the one-line error the user sees; None: re-raise `err` as it is."""
    lost = distributed.is_comm_error(err)
    if lost and s is None:
        return distributed.PeerFailed(
            f"another torchrun process stopped before training started ({_one_line(err)}); "
            "its own message, if any, is above; nothing was written"
        )
    if isinstance(err, (KeyboardInterrupt, TermSignal)):
        ctrl_c = isinstance(err, KeyboardInterrupt)
        cls, how = (Interrupted, "interrupted") if ctrl_c else (Terminated, "terminated (SIGTERM)")
        if s is None:
            return cls(f"{how} before training started; nothing was written")
        if d.enabled and not ctrl_c:  # under torchrun, SIGTERM is how a peer's exit reaches us
            message = (
                f"stopped by SIGTERM during epoch {s.epoch + 1}: torchrun stops every process "
                "this way when one of them exits (or when torchrun itself is stopped); that "
                f"process's own message, if any, is above; {_kept(s)}; {_again(s)}"
            )
            return cls(message + records.finish(s.run, s.manifest, "failed", message))
        message = f"{how} during epoch {s.epoch + 1}; {_saved(s)}; {_again(s)}"
        return cls(message + records.finish(s.run, s.manifest, "interrupted", message))
    if s is None:
        return None  # before the run folder exists the error speaks for itself (or is a bug)
    where = f"epoch {s.epoch + 1}"
    if isinstance(err, Diverged):
        step = err.step - s.epoch * s.trainer.steps_per_epoch + 1
        message = (
            f"training diverged at {where}, step {step} (step {err.step + 1} overall): "
            f"{err.what}; {_kept(s)}; try a lower --lr or --grad-clip"
        )
    elif lost:
        message = (
            f"another torchrun process stopped or lost contact in {where} ({_one_line(err)}); "
            f"its own message, if any, is above; {_kept(s)}; {_again(s)}"
        )
    elif isinstance(err, StorageError):
        message = (
            f"{err}: training stopped in {where}; {_kept(s)}; free some space or fix the "
            f"permissions, then {_again(s)}"
        )
    elif isinstance(err, JadeError):
        note = records.finish(s.run, s.manifest, "failed", str(err))
        return TrainingFailed(f"{err}{note}") if note else err
    elif isinstance(err, Exception):
        rank = f"rank {d.rank} of {d.world_size}: " if d.enabled else ""
        message = f"{rank}training crashed in {where} ({_one_line(err)}); {_log(s.run, err)}"
    else:  # SystemExit and the like: record it, let it through
        records.finish(s.run, s.manifest, "failed", _one_line(err))
        return None
    return TrainingFailed(message + records.finish(s.run, s.manifest, "failed", message))


def _done(s: _Session) -> int:
    return int(s.manifest.get("epochs_completed") or 0)


def _saved(s: _Session) -> str:
    if _done(s) == 0:
        return "no epoch was saved yet"
    return f"{_done(s)} epoch(s) are saved in {s.run.checkpoint_path}"


def _kept(s: _Session) -> str:
    if _done(s) == 0:
        return "no checkpoint was written yet"
    return f"kept the last good checkpoint {s.run.checkpoint_path} (epoch {_done(s)})"


def _again(s: _Session) -> str:
    if _done(s) == 0:  # nothing to resume from
        return "start it again with the same command and --overwrite"
    return f"continue with: jade train --out {s.run.path} --resume"


def _one_line(err: BaseException) -> str:
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0]}" if text else type(err).__name__


def _log(run: RunDir, err: BaseException) -> str:
    """Write the traceback of an unexpected error to RUN/error.log; says where it went."""
    text = "".join(traceback.format_exception(type(err), err, err.__traceback__))
    try:
        return f"details in {run.write_text(ERROR_LOG, text)}"
    except StorageError as failed:
        return f"the details could not be saved ({failed.reason})"
