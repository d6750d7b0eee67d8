"""The one error tree of bloomlink, shared by the party, the linkage unit and the CLI.

    BloomlinkError
    ├── ConfigurationError           a file a person wrote is wrong
    │   ├── InUseError               a data directory, log or port another process holds
    │   ├── SchemaError              every problem in a linkage schema, raised once
    │   ├── MappingError             a department mapping does not fit the schema or extract
    │   └── SecretError              the linkage secret file is missing, short or readable by others
    ├── InputError                   the extract cannot be used
    │   ├── ExtractError             the file as a whole: unreadable, empty, wrong columns
    │   ├── RecordError              one row: names the row and field, never the value
    │   └── ValueRejectedError       one value cannot be normalised (the caller adds row, field)
    ├── ClkFileError                 an encoded file is malformed or fails its digest
    ├── ServiceError                 raised by the linkage unit's logic; each maps to one gRPC
    │   │                            status (linkage_unit/servicer.py, party/client.py)
    │   ├── InvalidRequestError      INVALID_ARGUMENT
    │   ├── UnauthenticatedError     UNAUTHENTICATED
    │   ├── PermissionDeniedError    PERMISSION_DENIED
    │   ├── NotFoundError            NOT_FOUND: also "exists but is not yours", by design
    │   ├── AlreadyExistsError       ALREADY_EXISTS
    │   ├── PreconditionError        FAILED_PRECONDITION
    │   │   └── CompatibilityError   parties' schema, key context, key (KCV) or CLK length differ
    │   ├── ResourceLimitError       RESOURCE_EXHAUSTED
    │   └── UnavailableError         UNAVAILABLE
    ├── MatchingError                a matching setting or input the engine cannot honour
    ├── AuditError                   an audit log or manifest fails verification
    └── InvariantError               our own code broke a rule of its own (a bug); INTERNAL

Rules every raise follows: the message says what was expected and what to do; it never
contains a record value, a token, a CLK, a key or a block key. Context goes in keyword-only
arguments and is fixed at construction (exceptions are never mutated afterwards).
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = [
    "AlreadyExistsError",
    "AuditError",
    "BloomlinkError",
    "ClkFileError",
    "CompatibilityError",
    "ConfigurationError",
    "ExtractError",
    "InUseError",
    "InputError",
    "InvalidRequestError",
    "InvariantError",
    "MappingError",
    "MatchingError",
    "NotFoundError",
    "PermissionDeniedError",
    "PreconditionError",
    "RecordError",
    "ResourceLimitError",
    "SchemaError",
    "SecretError",
    "ServiceError",
    "UnauthenticatedError",
    "UnavailableError",
    "ValueRejectedError",
]


class BloomlinkError(Exception):
    """Base of every error bloomlink raises on purpose."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ConfigurationError(BloomlinkError):
    """A configuration file a person wrote is wrong."""


class InUseError(ConfigurationError):
    """Another process holds what this one needs alone: a linkage unit's data directory, its
    audit log or its port (a second linkage unit started on the same ones)."""


class SchemaError(ConfigurationError):
    """A linkage schema is invalid. Carries every problem found, not just the first."""

    def __init__(self, problems: Sequence[str], *, source: str | None = None) -> None:
        self.problems = tuple(problems)
        self.source = source
        where = f" in {source}" if source else ""
        count = len(self.problems)
        listed = "; ".join(self.problems)
        super().__init__(
            f"{count} problem{'s' if count != 1 else ''} in linkage schema{where}: {listed}"
        )


class MappingError(ConfigurationError):
    """A department mapping does not fit its schema or its extract. Lists every problem."""

    def __init__(self, problems: Sequence[str], *, source: str | None = None) -> None:
        self.problems = tuple(problems)
        self.source = source
        where = f" in {source}" if source else ""
        count = len(self.problems)
        listed = "; ".join(self.problems)
        super().__init__(f"{count} problem{'s' if count != 1 else ''} in mapping{where}: {listed}")


class SecretError(ConfigurationError):
    """The linkage secret file cannot be used (never includes any secret bytes)."""

    def __init__(self, message: str, *, path: str | None = None) -> None:
        self.path = path
        super().__init__(f"{path}: {message}" if path else message)


class InputError(BloomlinkError):
    """The department's extract cannot be used."""


class ExtractError(InputError):
    """The extract as a whole is unusable (unreadable, empty, missing or extra columns)."""

    def __init__(self, message: str, *, path: str | None = None) -> None:
        self.path = path
        super().__init__(f"{path}: {message}" if path else message)


class RecordError(InputError):
    """One row of the extract is unusable. Names the row (1-based data row) and field only."""

    def __init__(self, message: str, *, row: int, field: str | None = None) -> None:
        self.row = row
        self.field = field
        where = f"row {row}" + (f", field {field!r}" if field else "")
        super().__init__(f"{where}: {message}")


class ValueRejectedError(InputError):
    """One value cannot be normalised. Says why (too long, not a date), never what it was;
    the extract reader turns it into a :class:`RecordError` naming the row and field."""


class ClkFileError(BloomlinkError):
    """An encoded (CLK) file is malformed, truncated, or fails its payload digest."""

    def __init__(self, message: str, *, path: str | None = None) -> None:
        self.path = path
        super().__init__(f"{path}: {message}" if path else message)


class ServiceError(BloomlinkError):
    """Raised by the linkage unit's service logic; the servicer maps each subclass to a status."""


class InvalidRequestError(ServiceError):
    """The request is malformed (bad chunk, wrong offset, digest mismatch, bad setting)."""


class UnauthenticatedError(ServiceError):
    """The caller presented no usable identity."""


class PermissionDeniedError(ServiceError):
    """The caller's role may not do this (e.g. a party acting as the operator)."""


class NotFoundError(ServiceError):
    """No such thing, or not yours: the two are deliberately indistinguishable."""


class AlreadyExistsError(ServiceError):
    """The thing exists already (e.g. a project id, a completed upload)."""


class PreconditionError(ServiceError):
    """The system is not in a state that allows this (e.g. run before all uploads)."""


class CompatibilityError(PreconditionError):
    """Parties' encodings cannot be compared. Names the party and the aspect, never a key."""

    def __init__(
        self, message: str, *, party: str | None = None, aspect: str | None = None
    ) -> None:
        self.party = party
        self.aspect = aspect
        super().__init__(message)


class ResourceLimitError(ServiceError):
    """A size or rate cap was exceeded."""


class UnavailableError(ServiceError):
    """The service cannot answer now; retrying later may succeed."""


class MatchingError(BloomlinkError):
    """A matching setting or input the engine cannot honour (e.g. threshold outside (0, 1])."""


class AuditError(BloomlinkError):
    """An audit log, manifest or report fails verification. Names the entry when there is one."""

    def __init__(self, message: str, *, entry: int | None = None) -> None:
        self.entry = entry
        super().__init__(f"audit entry {entry}: {message}" if entry is not None else message)


class InvariantError(BloomlinkError):
    """bloomlink's own code broke a rule it relies on (a bug, never the caller's
    input). Checked explicitly, not by ``assert``, so it holds under ``python -O``; a caller
    sees INTERNAL and the operator's log has the traceback."""
