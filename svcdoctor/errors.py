"""svcdoctor's exceptions and exit statuses, in one module (as kr8s keeps its exceptions in `kr8s/_exceptions.py`).

Every way out of the command line has a name here; the table users read is `docs/reference/commands.md`
("Exit codes"). An error raised anywhere becomes one line on stderr and its exit status (`svcdoctor/cli.py`, `main`).
"""

from __future__ import annotations

from enum import IntEnum


class ExitStatus(IntEnum):
    OK = 0  # done; for `check`: nothing at or above --fail-on
    FINDINGS = 1  # `check` found problems at or above --fail-on
    USAGE = 2  # bad flag, unreadable/malformed bundle, unknown service
    UNREACHABLE = 3  # no docker daemon, no such kind cluster, API unreachable when needed
    PARTIAL = 4  # some nodes could not be read; the rest is reported
    INTERNAL = 70  # a bug: sysexits.h's EX_SOFTWARE; --debug shows the traceback
    INTERRUPTED = 130  # Ctrl-C


class SvcdoctorError(Exception):
    """An error the user should see as one line, with an exit status; never a traceback."""

    exit_status: ExitStatus = ExitStatus.USAGE

    def __init__(self, message: str, *, exit_status: ExitStatus | None = None):
        super().__init__(message)
        if exit_status is not None:
            self.exit_status = exit_status


class UsageError(SvcdoctorError):
    """Bad flags or arguments."""

    exit_status = ExitStatus.USAGE


class InputError(SvcdoctorError):
    """Unreadable or malformed input (bundle, rules file, API object)."""

    exit_status = ExitStatus.USAGE


class UnknownServiceError(SvcdoctorError):
    exit_status = ExitStatus.USAGE


class UnreachableError(SvcdoctorError):
    """What the command needs cannot be reached: docker daemon, kind cluster, API server."""

    exit_status = ExitStatus.UNREACHABLE


def first_line(exc: BaseException) -> str:
    """An exception as one line for an error message: its text (or its type), first line, at most 300 characters."""
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:300]


def is_timeout(exc: BaseException | None) -> bool:
    """Whether an exception, or one it was raised from, is a timeout (requests.ReadTimeout, urllib3's
    ReadTimeoutError, socket.timeout, websocket's, any of them wrapped in a ConnectionError)."""
    while exc is not None:
        if "timeout" in type(exc).__name__.lower() or "timed out" in str(exc).lower():
            return True
        exc = exc.__cause__ or exc.__context__
    return False

