"""The one place that names svcdoctor's exit codes (see CONTRACT.md, Exit codes)."""

from __future__ import annotations

from enum import IntEnum


class ExitStatus(IntEnum):
    OK = 0  # done; for `check`: nothing at or above --fail-on
    FINDINGS = 1  # `check` found problems at or above --fail-on
    USAGE = 2  # bad flag, unreadable/malformed bundle, unknown service
    UNREACHABLE = 3  # no docker daemon, no such kind cluster, API unreachable when needed
    PARTIAL = 4  # some nodes could not be read; the rest is reported
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
