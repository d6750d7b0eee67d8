"""The events the linkage unit records, one frozen dataclass each.

Stage: audit. A writer builds an event (``UploadCommitted(project_id=..., party=...,
record_count=...)``); :func:`event_record` is the one place an event becomes the name,
project and details of an audit entry, and every event is checked against the format's
allow-list (``protocol/audit.py``) when it is made, so a misspelt key or a value of the wrong
shape fails where it is written. Readers (the auditor) read entries, not these classes: a
log may hold another version's events, and a party's view withholds some details.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from enum import StrEnum
from types import MappingProxyType
from typing import ClassVar

from protocol.audit import check_event
from protocol.vocabulary import (
    CheckAspect,
    DeletionReason,
    LinkModel,
    RetentionPolicy,
    UploadRefusal,
)

__all__ = [
    "AccessRefused",
    "AuditEvent",
    "ChecksFailed",
    "ChecksPassed",
    "CrosswalkReleased",
    "EVENTS",
    "EntryRecord",
    "KeysReleased",
    "PartyAuthenticated",
    "PayloadDeleted",
    "ProjectCreated",
    "RunFinished",
    "RunResumed",
    "RunStarted",
    "SpineCreated",
    "SpineRunLinked",
    "UploadCommitted",
    "UploadRefused",
    "event_record",
]

Details = dict[str, str | int]


@dataclass(frozen=True, slots=True, kw_only=True)
class EntryRecord:
    """What an event becomes in the log: its entry name, project and details."""

    event: str
    project_id: str | None
    details: Details


@dataclass(frozen=True, slots=True, kw_only=True)
class AuditEvent:
    """Base of every event: the project it belongs to (None for none)."""

    NAME: ClassVar[str] = ""
    project_id: str | None

    def __post_init__(self) -> None:
        record = event_record(self)
        check_event(
            record.event,
            project_id=record.project_id,
            details=record.details,
            withheld=self.pending(),
        )

    def pending(self) -> tuple[str, ...]:
        """Details the log itself fills in when it appends the event (none by default)."""
        return ()


def event_record(event: AuditEvent) -> EntryRecord:
    """The entry an event becomes: (event name, project id, details). Bytes become
    lower-case hex, label tuples comma-joined, enums their value; unset optionals vanish."""
    details: Details = {}
    for item in fields(event):
        if item.name == "project_id":
            continue
        value = getattr(event, item.name)
        if value is None:
            continue
        if isinstance(value, bytes):
            details[item.name] = value.hex()
        elif isinstance(value, tuple):
            details[item.name] = ",".join(value)
        elif isinstance(value, StrEnum):
            details[item.name] = str(value)
        else:
            details[item.name] = value
    return EntryRecord(event=event.NAME, project_id=event.project_id, details=details)


@dataclass(frozen=True, slots=True, kw_only=True)
class ProjectCreated(AuditEvent):
    NAME: ClassVar[str] = "project_created"
    project_id: str
    settings_fingerprint: str
    members: tuple[str, ...]
    schema_fingerprint: bytes
    retention: RetentionPolicy
    hold_days: int
    link_model: LinkModel = LinkModel.ONE_TO_ONE
    # A grouped project's expected layout and hardening (ClkLayout.sha256); None: one CLK.
    layout_sha256: str | None = None
    # Only in a project that deduplicates: who, and the cluster-size cap.
    deduplicated: tuple[str, ...] | None = None
    max_cluster_size: int | None = None
    # Filled in by the log itself (linkage_unit/audit_log.py), which owns the view keys.
    view_key: bytes | None = None

    def pending(self) -> tuple[str, ...]:
        return ("view_key",) if self.view_key is None else ()


@dataclass(frozen=True, slots=True, kw_only=True)
class PartyAuthenticated(AuditEvent):
    NAME: ClassVar[str] = "party_authenticated"
    party: str
    role: str
    certificate_fingerprint: str


@dataclass(frozen=True, slots=True, kw_only=True)
class UploadCommitted(AuditEvent):
    NAME: ClassVar[str] = "upload_committed"
    project_id: str
    party: str
    record_count: int
    clk_bits: int
    payload_sha256: bytes
    schema_fingerprint: bytes
    kcv: bytes
    manifest_sha256: str | None = None
    # A grouped upload's layout and hardening (ClkLayout.sha256); None: one CLK.
    layout_sha256: str | None = None
    # The spine the upload's keys were derived for (its key context spine:NAME, in its
    # header and its signed manifest); None: the project's own context.
    spine: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class ChecksPassed(AuditEvent):
    NAME: ClassVar[str] = "checks_passed"
    project_id: str
    parties: tuple[str, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class ChecksFailed(AuditEvent):
    NAME: ClassVar[str] = "checks_failed"
    project_id: str
    party: str
    aspect: CheckAspect


@dataclass(frozen=True, slots=True, kw_only=True)
class RunStarted(AuditEvent):
    NAME: ClassVar[str] = "run_started"
    project_id: str
    run_id: str
    parties: tuple[str, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class RunResumed(AuditEvent):
    NAME: ClassVar[str] = "run_resumed"
    project_id: str
    run_id: str


@dataclass(frozen=True, slots=True, kw_only=True)
class RunFinished(AuditEvent):
    NAME: ClassVar[str] = "run_finished"
    project_id: str
    run_id: str
    cluster_count: int
    linked_record_count: int
    comparisons: int
    threshold_thousandths: int | None = None
    threshold_method: str | None = None
    estimated_precision_millionths: int | None = None
    estimated_recall_millionths: int | None = None
    estimated_f1_millionths: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class KeysReleased(AuditEvent):
    NAME: ClassVar[str] = "keys_released"
    project_id: str
    party: str
    run_id: str
    key_count: int
    keys_sha256: str


@dataclass(frozen=True, slots=True, kw_only=True)
class PayloadDeleted(AuditEvent):
    NAME: ClassVar[str] = "payload_deleted"
    project_id: str
    party: str
    payload_sha256: bytes
    reason: DeletionReason


@dataclass(frozen=True, slots=True, kw_only=True)
class UploadRefused(AuditEvent):
    NAME: ClassVar[str] = "upload_refused"
    project_id: str
    party: str
    reason: UploadRefusal
    manifest_sha256: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class AccessRefused(AuditEvent):
    """A party asked for something of a project it is not in, or another party's keys:
    ``project_id`` is the requested project if it exists, None if it does not."""

    NAME: ClassVar[str] = "access_refused"
    party: str
    requested_project: str
    certificate_fingerprint: str
    call: str | None = None
    requested_party: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class SpineCreated(AuditEvent):
    NAME: ClassVar[str] = "spine_created"
    project_id: None = None
    spine: str
    parties: tuple[str, ...]
    schema_fingerprint: bytes
    max_merge_share_millionths: int


@dataclass(frozen=True, slots=True, kw_only=True)
class SpineRunLinked(AuditEvent):
    NAME: ClassVar[str] = "spine_run_linked"
    project_id: str
    spine: str
    run_id: str
    matched_people: int
    new_people: int
    spine_people: int
    merges: int
    splits: int
    # Clusters of the run's own records the spine's evidence held apart (None: a log from
    # before the count).
    held_apart: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class CrosswalkReleased(AuditEvent):
    NAME: ClassVar[str] = "crosswalk_released"
    project_id: None = None
    spine: str
    row_count: int
    crosswalk_sha256: str


@dataclass(frozen=True, slots=True, kw_only=True)
class SpineRotated(AuditEvent):
    """The operator moved a spine to a new linkage secret (``spine rotate``): its KCV binding
    from ``old_kcv`` to ``new_kcv``, ``records`` re-encodings taken from ``uploads`` files."""

    NAME: ClassVar[str] = "spine_rotated"
    project_id: None = None
    spine: str
    old_kcv: bytes
    new_kcv: bytes
    records: int
    uploads: int


@dataclass(frozen=True, slots=True, kw_only=True)
class SpinePruned(AuditEvent):
    """Retention removed ``records_removed`` records' encodings from a spine (a run into a
    spine with a policy, as it completed, or ``spine prune``), keeping the last ``keep_runs``
    runs' records; every person keeps its keys."""

    NAME: ClassVar[str] = "spine_pruned"
    project_id: None = None
    spine: str
    keep_runs: int
    records_removed: int
    records_kept: int
    people_without_records: int


EVENTS: Mapping[str, type[AuditEvent]] = MappingProxyType(
    {
        kind.NAME: kind
        for kind in (
            ProjectCreated,
            PartyAuthenticated,
            UploadCommitted,
            ChecksPassed,
            ChecksFailed,
            RunStarted,
            RunResumed,
            RunFinished,
            KeysReleased,
            PayloadDeleted,
            UploadRefused,
            AccessRefused,
            SpineCreated,
            SpineRunLinked,
            CrosswalkReleased,
            SpineRotated,
            SpinePruned,
        )
    }
)
"""Every event type by its entry name; a test holds it equal to the format's allow-list."""
