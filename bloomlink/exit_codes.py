"""Exit codes of the ``bloomlink`` command. Every code has help text; a test checks each
error class maps to one of these."""

from __future__ import annotations

from enum import IntEnum

from protocol import errors

__all__ = ["EXIT_CODE_HELP", "ExitCode", "exit_code_for"]


class ExitCode(IntEnum):
    OK = 0
    INTERNAL = 1
    USAGE = 2
    CONFIGURATION = 3
    INPUT = 4
    ENCODED_FILE = 5
    SERVICE = 6
    INCOMPATIBLE = 7
    MATCHING = 8
    AUDIT_FAILED = 9
    UNAVAILABLE = 10
    IN_USE = 11
    INTERRUPTED = 130


EXIT_CODE_HELP: dict[ExitCode, str] = {
    ExitCode.OK: "success",
    ExitCode.INTERNAL: "an unexpected error; the message says what to report",
    ExitCode.USAGE: "the command line is wrong (argparse)",
    ExitCode.CONFIGURATION: (
        "a schema, mapping, secret, certificate or config file, or another path given, is wrong"
    ),
    ExitCode.INPUT: "the extract cannot be used; the message names the row and field",
    ExitCode.ENCODED_FILE: "an encoded (CLK) file is malformed or corrupted",
    ExitCode.SERVICE: "the linkage unit refused the request (not found, not allowed, too big)",
    ExitCode.INCOMPATIBLE: "parties used a different schema, key or CLK length",
    ExitCode.MATCHING: "a matching setting or input the engine cannot honour",
    ExitCode.AUDIT_FAILED: "audit verification found a problem",
    ExitCode.UNAVAILABLE: "the linkage unit could not be reached; retrying may help",
    ExitCode.IN_USE: "another linkage unit holds this data directory, audit log or port",
    ExitCode.INTERRUPTED: "interrupted by the user (Ctrl-C)",
}

# Most specific first: the first class an error is an instance of decides its code.
_TABLE: tuple[tuple[type[errors.BloomlinkError], ExitCode], ...] = (
    (errors.CompatibilityError, ExitCode.INCOMPATIBLE),
    (errors.UnavailableError, ExitCode.UNAVAILABLE),
    (errors.InUseError, ExitCode.IN_USE),
    (errors.ConfigurationError, ExitCode.CONFIGURATION),
    (errors.InputError, ExitCode.INPUT),
    (errors.ClkFileError, ExitCode.ENCODED_FILE),
    (errors.ServiceError, ExitCode.SERVICE),
    (errors.MatchingError, ExitCode.MATCHING),
    (errors.AuditError, ExitCode.AUDIT_FAILED),
    (errors.InvariantError, ExitCode.INTERNAL),  # a bug: the message says what to report
)


def exit_code_for(error: BaseException) -> ExitCode:
    """The documented exit code for ``error``."""
    for error_type, code in _TABLE:
        if isinstance(error, error_type):
            return code
    return ExitCode.INTERNAL
