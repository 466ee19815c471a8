"""SIGINT (Ctrl-C) and SIGTERM as exceptions in the main thread, so that a training session
ends through one handler that records the run's status (`jadecli.engine`)."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from typing import Any


class TermSignal(BaseException):
    """Raised in the main thread when SIGTERM arrives (like KeyboardInterrupt for SIGINT)."""


class Signals:
    """SIGINT and SIGTERM as exceptions in the main thread while `armed`: the first one ends the
    session through `_failure`, later ones are ignored so the run folder gets written."""

    def __init__(self) -> None:
        self.armed = True

    def handle(self, signum: int, frame: Any) -> None:
        if not self.armed:
            return
        self.armed = False
        raise KeyboardInterrupt if signum == signal.SIGINT else TermSignal


@contextlib.contextmanager
def signals_as_interrupts() -> Iterator[Signals]:
    signals = Signals()
    if threading.current_thread() is not threading.main_thread():
        yield signals  # handlers can only be set from the main thread; Python's defaults stay
        return
    previous = {s: signal.signal(s, signals.handle) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield signals
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
