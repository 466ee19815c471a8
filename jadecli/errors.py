"""The project's one exception family.

Engine code raises a `JadeError` with a one-line, user-facing message; the CLI turns it into
`error: <message>` on stderr and exits with the error's `exit_code`. Nothing else in the package
prints or exits.
"""

from __future__ import annotations

from pathlib import Path


class JadeError(Exception):
    """A problem the user can fix: one line that says what is wrong and what to do."""

    exit_code: int = 1
    # Under torchrun one rank reports each failure, the others exit with its code, silently:
    # True never prints, False always prints, None (the default) prints on rank 0 only (every
    # rank parses the same command line and meets the same bad flag).
    quiet: bool | None = None


class UsageError(JadeError):
    """A bad flag or config value (exit code 2, like any other bad command line)."""

    exit_code = 2


class DataError(JadeError):
    """A dataset is missing, malformed or does not fit the other dataset."""


class RunDirError(JadeError):
    """The run directory cannot be created, resumed or overwritten as asked."""


class StorageError(RunDirError):
    """A file could not be written: no space left, no permission, a read-only filesystem."""

    def __init__(self, path: Path, reason: str) -> None:
        self.path, self.reason = path, reason
        super().__init__(f"cannot write {path} ({reason})")


class TrainingFailed(JadeError):
    """Training stopped: a non-finite loss or an error during the run."""


class Interrupted(JadeError):
    """The user pressed Ctrl-C (SIGINT); the run is marked interrupted and can be resumed."""

    exit_code = 130


class Terminated(Interrupted):
    """The process was sent SIGTERM (CI runners, Slurm, Kubernetes before a kill); the run is
    marked interrupted and can be resumed. Exit code 143 = 128 + SIGTERM, as the shell reports
    a process killed by it."""

    exit_code = 143


class GateFailed(JadeError):
    """A quality gate (`jade evaluate --min-accuracy`) was not met: exit code 3 for CI scripts."""

    exit_code = 3
