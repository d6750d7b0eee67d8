"""The audit hook: where the linkage unit reports every event an auditor must be able to see.

The tamper-evident log is built separately; the service depends only on :class:`AuditSink`.
Until it lands, :class:`JsonLinesAuditSink` is the default: one JSON object per line,
fsync'd before ``append`` returns. Details are ids, counts and hex digests only.

Events and their detail keys (the contract with the audit log):
    project_created   settings_fingerprint, members, schema_fingerprint, retention
    party_authenticated  party, role, certificate_fingerprint   (upload start and fetch)
    upload_committed  party, record_count, clk_bits, payload_sha256, schema_fingerprint, kcv
    checks_passed     parties
    checks_failed     party, aspect
    run_started       run_id, parties
    run_finished      run_id, cluster_count, linked_record_count, comparisons
    keys_released     party, key_count, keys_sha256
    payload_deleted   party, payload_sha256, reason
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Protocol

__all__ = ["AUDIT_EVENTS", "AuditSink", "JsonLinesAuditSink"]

AUDIT_EVENTS: Mapping[str, frozenset[str]] = {
    "project_created": frozenset(
        {"settings_fingerprint", "members", "schema_fingerprint", "retention"}
    ),
    "party_authenticated": frozenset({"party", "role", "certificate_fingerprint"}),
    "upload_committed": frozenset(
        {"party", "record_count", "clk_bits", "payload_sha256", "schema_fingerprint", "kcv"}
    ),
    "checks_passed": frozenset({"parties"}),
    "checks_failed": frozenset({"party", "aspect"}),
    "run_started": frozenset({"run_id", "parties"}),
    "run_finished": frozenset({"run_id", "cluster_count", "linked_record_count", "comparisons"}),
    "keys_released": frozenset({"party", "key_count", "keys_sha256"}),
    "payload_deleted": frozenset({"party", "payload_sha256", "reason"}),
}


class AuditSink(Protocol):
    """Receives audit events; ``append`` returns only once the event is durable."""

    def append(
        self, event: str, *, project_id: str | None, details: Mapping[str, str | int]
    ) -> None: ...


class JsonLinesAuditSink:
    """Appends one JSON line per event to a file, fsync'd per event (the interim default)."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()

    def append(
        self, event: str, *, project_id: str | None, details: Mapping[str, str | int]
    ) -> None:
        line = json.dumps(
            {
                "time": time.time(),
                "event": event,
                "project_id": project_id,
                "details": dict(details),
            },
            sort_keys=True,
            separators=(",", ":"),
        )
        with self._lock:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(fd, (line + "\n").encode("utf-8"))
                os.fsync(fd)
            finally:
                os.close(fd)
