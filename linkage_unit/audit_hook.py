"""The audit hook: where the linkage unit reports every event an auditor must be able to see.

The service depends only on these protocols; the real implementation of both is the signed,
hash-chained :class:`linkage_unit.audit_log.AuditLog` (the server's default). Events are the
frozen dataclasses of ``protocol/audit_events.py``, checked against the format's allow-list
when they are made, and documented in docs/audit.md.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from protocol.audit_events import AuditEvent

__all__ = ["AuditExport", "AuditReader", "AuditSink"]


class AuditSink(Protocol):
    """Receives audit events; ``append`` returns only once the event is durable."""

    def append(self, event: AuditEvent) -> None: ...

    def recorded(
        self, kind: type[AuditEvent], *, project_id: str | None, **match: str | int
    ) -> bool:
        """Whether an event of ``kind`` of ``project_id`` whose details include ``match`` is
        in the log: how start-up reconciliation knows a step before a crash was logged."""
        ...


@runtime_checkable
class AuditReader(Protocol):
    """Reads the log back for auditors (the RPCs ``FetchAuditLog``, ``GetAuditPublicKey``)."""

    def public_key_pem(self) -> bytes: ...

    def export(self, project_id: str | None, *, viewer: str | None = None) -> AuditExport: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class AuditExport:
    """A read of the log: its lines, streamed from disk, and a head signed for the last."""

    lines: Iterator[bytes]
    head: bytes
