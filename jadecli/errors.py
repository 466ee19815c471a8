"""The project's one exception family.

Engine code raises a `JadeError` with a one-line, user-facing message; the CLI turns it into
`error: <message>` on stderr and exits with the error's `exit_code`. Nothing else in the package
prints or exits.
"""

from __future__ import annotations


class JadeError(Exception):
    """A problem the user can fix: one line that says what is wrong and what to do."""

    exit_code: int = 1


class UsageError(JadeError):
    """A bad flag or config value (exit code 2, like any other bad command line)."""

    exit_code = 2


class DataError(JadeError):
    """A dataset is missing, malformed or does not fit the other dataset."""


class RunDirError(JadeError):
    """The run directory cannot be created, resumed or overwritten as asked."""


class TrainingFailed(JadeError):
    """Training stopped: a non-finite loss or an error during the run."""


class Interrupted(JadeError):
    """The user pressed Ctrl-C; the run is marked interrupted and can be resumed."""

    exit_code = 130


class GateFailed(JadeError):
    """A quality gate (`jade evaluate --min-accuracy`) was not met: exit code 3 for CI scripts."""

    exit_code = 3
