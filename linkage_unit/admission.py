"""Admission: which role may start which call, and how much of the linkage unit one
identity may hold.

Stage: the service's front door, before any request message is read. The servicer knows
the caller from its verified certificate when a call starts, so a role that may not make a
call is refused then (a stream is never left waiting for a first message it will refuse).
Each identity may hold at most ``max_streams`` streams at once, so one certificate cannot
occupy every worker thread; and every call that writes audit entries takes a token from the
identity's bucket, so no caller can grow the audit log without bound.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType

from protocol.errors import PermissionDeniedError, ResourceLimitError
from protocol.identity import Identity, Role

__all__ = ["ALLOWED_ROLES", "Admission", "AdmissionLimits", "Operation", "require_role"]


class Operation(StrEnum):
    """The linkage unit's calls, one per RPC."""

    CREATE_PROJECT = "create_project"
    GET_PROJECT_STATUS = "get_project_status"
    GET_PROJECT_SETTINGS = "get_project_settings"
    UPLOAD = "upload"
    GET_UPLOAD_OFFSET = "get_upload_offset"
    START_RUN = "start_run"
    FETCH_LINK_KEYS = "fetch_link_keys"
    FETCH_AUDIT_LOG = "fetch_audit_log"
    GET_AUDIT_PUBLIC_KEY = "get_audit_public_key"
    GET_PROJECT_REPORT = "get_project_report"


_EVERYONE = frozenset(Role)
ALLOWED_ROLES: Mapping[Operation, frozenset[Role]] = MappingProxyType(
    {
        Operation.CREATE_PROJECT: frozenset({Role.OPERATOR}),
        Operation.GET_PROJECT_STATUS: _EVERYONE,
        Operation.GET_PROJECT_SETTINGS: _EVERYONE,
        Operation.UPLOAD: frozenset({Role.PARTY}),
        Operation.GET_UPLOAD_OFFSET: frozenset({Role.PARTY}),
        Operation.START_RUN: frozenset({Role.OPERATOR}),
        Operation.FETCH_LINK_KEYS: frozenset({Role.PARTY}),
        Operation.FETCH_AUDIT_LOG: _EVERYONE,
        Operation.GET_AUDIT_PUBLIC_KEY: _EVERYONE,
        Operation.GET_PROJECT_REPORT: frozenset({Role.OPERATOR}),
    }
)
"""Who may start each call. Membership of a project is checked later, by the service."""

# Calls that always write audit entries (a status, settings or audit-log call writes one only
# when it is refused, and the service charges it then).
AUDITED = frozenset(
    {Operation.CREATE_PROJECT, Operation.UPLOAD, Operation.START_RUN, Operation.FETCH_LINK_KEYS}
)


def require_role(identity: Identity, operation: Operation) -> None:
    """PermissionDeniedError unless ``identity``'s role may make ``operation``."""
    allowed = ALLOWED_ROLES[operation]
    if identity.role not in allowed:
        names = " or ".join(sorted(str(role) for role in allowed))
        raise PermissionDeniedError(f"only the {names} may do this")


@dataclass(frozen=True, slots=True, kw_only=True)
class AdmissionLimits:
    """``max_streams``: streams one identity may hold at once (keep it below the server's
    worker threads). ``audited_calls_per_minute`` and ``audited_call_burst``: the token
    bucket each identity's audit-writing calls draw from."""

    max_streams: int = 8
    audited_calls_per_minute: float = 60.0
    audited_call_burst: int = 30

    def __post_init__(self) -> None:
        if self.max_streams < 1 or self.audited_call_burst < 1:
            raise ValueError("max_streams and audited_call_burst must be at least 1")
        if not self.audited_calls_per_minute > 0:
            raise ValueError("audited_calls_per_minute must be positive")


@dataclass(slots=True)
class _Bucket:
    tokens: float
    updated: float


class Admission:
    """Role checks, per-identity stream slots and audit-call buckets (thread-safe)."""

    def __init__(
        self,
        limits: AdmissionLimits | None = None,
        *,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limits = limits or AdmissionLimits()
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._streams: dict[str, int] = {}
        self._buckets: dict[str, _Bucket] = {}

    @contextmanager
    def admit(self, identity: Identity, operation: Operation, *, stream: bool) -> Iterator[None]:
        """Hold the call's admission for the ``with`` block: the role may make the call, a
        stream slot is free (``stream``), and an audited call has a token."""
        require_role(identity, operation)
        key = identity.text
        if stream:
            with self._lock:
                held = self._streams.get(key, 0)
                if held >= self.limits.max_streams:
                    raise ResourceLimitError(
                        f"this identity already holds {held} streams, the linkage unit's limit; "
                        "finish or cancel one, then retry"
                    )
                self._streams[key] = held + 1
        try:
            if operation in AUDITED:
                self.charge_audited(identity)
            yield
        finally:
            if stream:
                with self._lock:
                    left = self._streams[key] - 1
                    if left:
                        self._streams[key] = left
                    else:
                        del self._streams[key]

    def charge_audited(self, identity: Identity) -> None:
        """Take one token from ``identity``'s bucket or refuse: every call that writes audit
        entries does this before writing, so the log grows at most at the bucket's rate."""
        limits = self.limits
        now = self._monotonic()
        with self._lock:
            bucket = self._buckets.setdefault(
                identity.text, _Bucket(tokens=float(limits.audited_call_burst), updated=now)
            )
            rate = limits.audited_calls_per_minute / 60.0
            bucket.tokens = min(
                float(limits.audited_call_burst),
                bucket.tokens + max(0.0, now - bucket.updated) * rate,
            )
            bucket.updated = now
            if bucket.tokens < 1.0:
                wait = (1.0 - bucket.tokens) / rate
                raise ResourceLimitError(
                    "too many audited calls from this identity (each writes audit entries); "
                    f"retry in {wait:.0f} s"
                )
            bucket.tokens -= 1.0
