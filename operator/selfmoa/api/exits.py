"""How a command or a stage ended, in the classes a script (or the operator) can act on.

One table for every entry point: `selfmoa run`, `selfmoa stage` in a Job's Pod, the other CLIs,
and the run's condition reason the operator writes when a stage Job fails. A Job's exit code and
the run's condition therefore always agree:

| code | class | retry? |
|---|---|---|
| 0 | done | - |
| 1 | a stage failed (its own error: a judge below coverage, a bug) | no, not unchanged |
| 2 | bad input: a field, a file, a bucket that doesn't exist, credentials refused | no: fix it |
| 75 | the environment failed: a store, a serving endpoint or the API server not answering | yes |
| 130 | interrupted (Ctrl-C) | run it again to resume |

75 is `EX_TEMPFAIL` of sysexits.h, the code mail systems and schedulers already read as "try
again later".
"""

from __future__ import annotations

import argparse
import time
from enum import IntEnum
from typing import Final, NoReturn


class Exit(IntEnum):
    OK = 0
    FAILED = 1
    BAD_INPUT = 2
    UNAVAILABLE = 75
    INTERRUPTED = 130


class BadInput(Exception):
    """Mixed into the errors that mean "the input is wrong": a spec field, a run file, a store
    that can't be used as named (no such bucket, credentials refused, an unwritable path)."""


class Unavailable(RuntimeError):
    """The environment failed (a store, an endpoint, the API server), not the input or the stage:
    the same command may succeed later. Subclassed by each backend's own error; it wins over
    `BadInput` where an error is both (a store error raised by an outage)."""


#: The run's condition reason for a stage that ended with each code (the planner's words).
REASONS: Final[dict[int, str]] = {
    Exit.FAILED: "StageFailed",
    Exit.BAD_INPUT: "InvalidInput",
    Exit.UNAVAILABLE: "EnvironmentUnavailable",
}
#: What the reason tells the reader to do, appended to the run's message.
ADVICE: Final[dict[int, str]] = {
    Exit.BAD_INPUT: "fix the input; retrying unchanged can't help",
    Exit.UNAVAILABLE: (
        "the environment failed, not the run: retryable; run the command again, or delete the "
        "failed Job and the run goes on"
    ),
}


def reason_for(code: int | None) -> str:
    """The condition reason of a stage that exited with `code` (None or unknown: failed)."""
    return REASONS.get(code if code is not None else Exit.FAILED, REASONS[Exit.FAILED])


def exit_for(e: BaseException) -> Exit:
    """The exit code of a run or stage that ended with `e` (classes by type, not by text). An
    outage anywhere in the chain of causes is an outage: a stage that wraps a dead server's
    error in its own words still failed because the server was down."""
    cause: BaseException | None = e
    while cause is not None:
        if isinstance(cause, Unavailable):
            return Exit.UNAVAILABLE
        cause = cause.__cause__
    if isinstance(e, BadInput):
        return Exit.BAD_INPUT
    if isinstance(e, KeyboardInterrupt):
        return Exit.INTERRUPTED
    return Exit.FAILED


class Parser(argparse.ArgumentParser):
    """Every command's argument parser: a bad flag is one line and exit code 2, never argparse's
    usage block (the usage is one `--help` away)."""

    def error(self, message: str) -> NoReturn:
        self.exit(Exit.BAD_INPUT, f"{self.prog}: error: {message} (see --help)\n")


class OutageWindow:
    """What a client remembers of an outage: once a call has waited out its timeout on a dead
    server, later calls fail with the same cause at once for `seconds`, then try again (it may
    have come back). So a failure path (writing the failure down, the next item) never waits on
    the same dead server a second time. Used by the S3 store and the endpoint client."""

    def __init__(self) -> None:
        self._message: str | None = None
        self._until = 0.0

    def open(self, message: str, seconds: float) -> None:
        self._message, self._until = message, time.monotonic() + seconds

    def current(self) -> str | None:
        """The outage's message while the window is open; None once it has closed."""
        if self._message is not None and time.monotonic() >= self._until:
            self._message = None
        return self._message

    def close(self) -> None:
        self._message = None
