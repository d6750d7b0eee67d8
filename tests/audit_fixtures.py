"""A realistic audit event sequence, written through the real AuditLog, shared by tests."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import fields
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from linkage_unit.audit_log import AuditLog
from protocol.audit import check_event
from protocol.audit_events import EVENTS, AuditEvent

SCHEMA = hashlib.sha256(b"schema").hexdigest()
SETTINGS = hashlib.sha256(b"settings").hexdigest()
KCV = "00112233445566778899aabbccddeeff"


def payload_digest(party: str) -> str:
    return hashlib.sha256(f"payload-{party}".encode()).hexdigest()


def event(name: str, project_id: str | None, details: Mapping[str, object]) -> AuditEvent:
    """The typed event for an entry written as name and details (hex digests, comma-joined
    labels), so histories read like the log; an event or detail the format does not allow
    is refused as the log refuses it."""
    pending = ("view_key",) if name == "project_created" and "view_key" not in details else ()
    check_event(name, project_id=project_id, details=details, withheld=pending)
    kind = EVENTS[name]
    values: dict[str, object] = {}
    for item in fields(kind):
        if item.name not in details:
            continue
        value = details[item.name]
        if "bytes" in str(item.type) and isinstance(value, str):
            value = bytes.fromhex(value)
        elif "tuple" in str(item.type) and isinstance(value, str):
            value = tuple(value.split(","))
        values[item.name] = value
    return kind(project_id=project_id, **values)  # type: ignore[arg-type]


def append(log: Any, name: str, *, project_id: str | None, details: Mapping[str, object]) -> None:
    """``log.append`` of :func:`event`."""
    log.append(event(name, project_id, details))


def stepping_clock(start: datetime | None = None) -> Callable[[], datetime]:
    moment = [start or datetime(2026, 1, 5, 9, 0, tzinfo=UTC)]

    def clock() -> datetime:
        moment[0] += timedelta(seconds=1)
        return moment[0]

    return clock


def write_project(
    log: AuditLog,
    project_id: str = "moj-dfe-2026",
    *,
    parties: tuple[str, ...] = ("moj", "dfe"),
    counts: tuple[int, ...] = (1000, 5000),
    retention: str = "delete-after-release",
    manifest_sha256: dict[str, str] | None = None,
    spines: dict[str, str] | None = None,
) -> None:
    """project -> authenticate -> uploads -> checks -> run -> keys -> deletions. ``spines``:
    per party, the spine its upload's keys were made for (``upload_committed``'s ``spine``)."""
    append(
        log,
        "project_created",
        project_id=project_id,
        details={
            "settings_fingerprint": SETTINGS,
            "members": ",".join(parties),
            "schema_fingerprint": SCHEMA,
            "retention": retention,
            "hold_days": 30,
        },
    )
    for party, count in zip(parties, counts, strict=True):
        append(
            log,
            "party_authenticated",
            project_id=None,
            details={
                "party": party,
                "role": "party",
                "certificate_fingerprint": hashlib.sha256(party.encode()).hexdigest(),
            },
        )
        details: dict[str, str | int] = {
            "party": party,
            "record_count": count,
            "clk_bits": 1024,
            "payload_sha256": payload_digest(party),
            "schema_fingerprint": SCHEMA,
            "kcv": KCV,
        }
        if manifest_sha256 and party in manifest_sha256:
            details["manifest_sha256"] = manifest_sha256[party]
        if spines and party in spines:
            details["spine"] = spines[party]
        append(log, "upload_committed", project_id=project_id, details=details)
    append(log, "checks_passed", project_id=project_id, details={"parties": ",".join(parties)})
    append(
        log,
        "run_started",
        project_id=project_id,
        details={"run_id": "run-1", "parties": ",".join(parties)},
    )
    append(
        log,
        "run_finished",
        project_id=project_id,
        details={
            "run_id": "run-1",
            "cluster_count": 5200,
            "linked_record_count": 1600,
            "comparisons": 123456,
        },
    )
    for party, count in zip(parties, counts, strict=True):
        append(
            log,
            "keys_released",
            project_id=project_id,
            details={
                "party": party,
                "run_id": "run-1",
                "key_count": count,
                "keys_sha256": hashlib.sha256(f"keys-{party}".encode()).hexdigest(),
            },
        )
    for party in parties:
        append(
            log,
            "payload_deleted",
            project_id=project_id,
            details={
                "party": party,
                "payload_sha256": payload_digest(party),
                "reason": "retention",
            },
        )


def make_log(directory: Path, name: str = "audit.jsonl") -> AuditLog:
    return AuditLog.open(
        directory / name, signing_key_path=directory / "lu-signing.pem", clock=stepping_clock()
    )
