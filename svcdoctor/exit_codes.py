"""Kept so modules not yet moved to `svcdoctor.errors` still import; new code imports from `svcdoctor.errors`."""

from svcdoctor.errors import (  # noqa: F401
    ExitStatus,
    InputError,
    SvcdoctorError,
    UnknownServiceError,
    UnreachableError,
    UsageError,
)
