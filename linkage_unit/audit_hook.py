"""The audit hook: where the linkage unit reports every event an auditor must be able to see.

The service depends only on these protocols; the real implementation of both is the signed,
hash-chained :class:`linkage_unit.audit_log.AuditLog` (the server's default). The events and
their detail keys are allow-listed in ``protocol/audit.py`` (``ALLOWED_EVENTS``) and
documented in docs/audit.md; ``append`` refuses anything else.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Protocol

__all__ = ["AuditReader", "AuditSink"]


class AuditSink(Protocol):
    """Receives audit events; ``append`` returns only once the event is durable."""

    def append(
        self, event: str, *, project_id: str | None, details: Mapping[str, str | int]
    ) -> None: ...

    def recorded(
        self, event: str, *, project_id: str | None, details: Mapping[str, str | int]
    ) -> bool:
        """Whether an ``event`` entry of ``project_id`` with (at least) these details is in
        the log: how start-up reconciliation knows a step before a crash was logged."""
        ...


class AuditReader(Protocol):
    """Reads the log back for auditors (the RPCs ``FetchAuditLog``, ``GetAuditPublicKey``)."""

    def public_key_pem(self) -> bytes: ...

    def export(
        self, project_id: str | None, *, viewer: str | None = None
    ) -> tuple[Iterator[bytes], bytes]: ...
