"""Progress reporters: the only way engine code talks to the user.

`RichReporter` draws a live bar per epoch (loss, examples/s) in a terminal; `PlainReporter`
writes one line per epoch, for CI logs and pipes; `NullReporter` is silent (tests, library use).
`make_reporter` picks Rich only when the stream is a terminal and progress is wanted.
"""

from __future__ import annotations

import sys
from typing import Any, Protocol, TextIO


class Reporter(Protocol):
    def info(self, message: str) -> None: ...
    def warn(self, message: str) -> None: ...
    def start_epoch(self, epoch: int, epochs: int, steps: int, unit: str) -> None: ...
    def update(self, step: int, loss: float, rate: float) -> None: ...
    def end_epoch(self, epoch: int, epochs: int, row: dict[str, Any]) -> None: ...
    def close(self) -> None: ...


def format_epoch(epoch: int, epochs: int, row: dict[str, Any], unit: str = "pairs") -> str:
    """`epoch 3/10  loss 812.4  train 91.2%/99.0%  test 90.8%/98.9%  1520 pairs/s  6.6s`."""
    parts = [f"epoch {epoch}/{epochs}", f"loss {row['loss']:.4g}"]

    def pct(key: str) -> str | None:
        v = row.get(key)
        return None if v is None or v == "" else f"{100 * float(v):.1f}%"

    for label, p_key, a_key in (
        ("train", "train_acc_primary", "train_acc_aux"),
        ("val", "val_acc_primary", ""),
        ("test", "test_acc_primary", "test_acc_aux"),
    ):
        p, a = pct(p_key), pct(a_key)
        if p is not None:
            parts.append(f"{label} acc {p}" + (f" (aux {a})" if a is not None else ""))
    parts.append(f"{row['examples_per_s']:.0f} {unit}/s")
    parts.append(f"{row['seconds']:.1f}s")
    return "  ".join(parts)


class NullReporter:
    def info(self, message: str) -> None:
        pass

    def warn(self, message: str) -> None:
        pass

    def start_epoch(self, epoch: int, epochs: int, steps: int, unit: str) -> None:
        pass

    def update(self, step: int, loss: float, rate: float) -> None:
        pass

    def end_epoch(self, epoch: int, epochs: int, row: dict[str, Any]) -> None:
        pass

    def close(self) -> None:
        pass


class PlainReporter(NullReporter):
    """One line per message and per epoch, flushed at once (readable in CI logs)."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream
        self.unit = "pairs"
        self.gone = False  # the reader of the stream went away (a closed pipe)

    def _write(self, text: str) -> None:
        if self.gone:
            return
        stream = self.stream or sys.stderr
        try:
            stream.write(text + "\n")
            stream.flush()
        except BrokenPipeError:
            # `jade train ... | head` or a killed `tee`: the progress lines have no reader any
            # more, but the run folder records everything, so training goes on silently
            self.gone = True

    def info(self, message: str) -> None:
        self._write(message)

    def warn(self, message: str) -> None:
        self._write(f"warning: {message}")

    def start_epoch(self, epoch: int, epochs: int, steps: int, unit: str) -> None:
        self.unit = unit

    def end_epoch(self, epoch: int, epochs: int, row: dict[str, Any]) -> None:
        self._write(format_epoch(epoch, epochs, row, self.unit))


class RichReporter(PlainReporter):
    """A live progress bar per epoch; the finished epoch stays as one summary line."""

    def __init__(self, stream: TextIO | None = None) -> None:
        super().__init__(stream)
        from rich.console import Console

        self.console = Console(file=stream or sys.stderr)
        self.progress: Any = None
        self.task: Any = None

    def _write(self, text: str) -> None:
        self.console.print(text, markup=False, highlight=False, soft_wrap=True)

    def warn(self, message: str) -> None:
        from rich.markup import escape

        self.console.print(
            f"[yellow]warning:[/yellow] {escape(message)}", highlight=False, soft_wrap=True
        )

    def start_epoch(self, epoch: int, epochs: int, steps: int, unit: str) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.unit = unit
        self.progress = Progress(
            TextColumn(f"epoch {epoch}/{epochs}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}"),
            TextColumn("{task.fields[rate]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=self.console,
            transient=True,
        )
        self.progress.start()
        self.task = self.progress.add_task("train", total=steps, loss="-", rate="")

    def update(self, step: int, loss: float, rate: float) -> None:
        if self.progress is not None:
            self.progress.update(
                self.task, completed=step, loss=f"{loss:.4g}", rate=f"{rate:.0f} {self.unit}/s"
            )

    def end_epoch(self, epoch: int, epochs: int, row: dict[str, Any]) -> None:
        self.close()
        super().end_epoch(epoch, epochs, row)

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None


def make_reporter(progress: bool, stream: TextIO | None = None) -> Reporter:
    """Rich bars when `progress` and the stream is a terminal, plain lines otherwise."""
    stream = stream or sys.stderr
    if progress and stream.isatty():
        return RichReporter(stream)
    return PlainReporter(stream)
