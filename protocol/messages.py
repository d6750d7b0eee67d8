"""The values the wire protocol carries, as plain Python (protocol/serde.py converts them).

The linkage unit's logic and the party client speak these; neither touches protobuf.
Every value is validated on construction, so a malformed request never reaches the logic.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from enum import StrEnum

from protocol.audit import RETENTION_DELETE_AFTER_RELEASE, RETENTION_DELETE_AFTER_RUN
from protocol.clk_file import ClkFileHeader
from protocol.errors import ConfigurationError
from protocol.labels import check_label

__all__ = [
    "BlockingMode",
    "LinkKeyBatch",
    "LinkKeyMode",
    "PartyStatus",
    "ProjectSettings",
    "ProjectStatus",
    "RunState",
    "RunTicket",
    "UploadChunk",
    "UploadHeader",
    "UploadProgress",
    "UploadState",
]


class BlockingMode(StrEnum):
    """How a run finds candidate pairs (linkage_unit/blocking.py): ``lsh`` always blocks,
    ``none`` compares every pair, ``auto`` compares every pair up to 20,000 x 20,000 and
    blocks above. One vocabulary for the project settings, the wire and the engine."""

    AUTO = "auto"
    LSH = "lsh"
    NONE = "none"


class LinkKeyMode(StrEnum):
    SHARED = "shared"
    PER_PARTY = "per_party"


class UploadState(StrEnum):
    NOT_STARTED = "not_started"
    PARTIAL = "partial"
    COMPLETE = "complete"
    DELETED = "deleted"


class RunState(StrEnum):
    WAITING_FOR_UPLOADS = "waiting_for_uploads"
    QUEUED = "queued"
    RUNNING = "running"
    FINISHED = "finished"
    REFUSED = "refused"
    FAILED = "failed"


@dataclass(frozen=True, slots=True, kw_only=True)
class ProjectSettings:
    """What the operator fixes when creating a project; its fingerprint goes to the audit log."""

    project_id: str
    members: tuple[str, ...]
    schema_fingerprint: bytes
    threshold: float | None = None
    blocking: BlockingMode = BlockingMode.LSH
    link_key_mode: LinkKeyMode = LinkKeyMode.SHARED
    retention_days: int = 0
    auto_run: bool = True

    def __post_init__(self) -> None:
        check_label(self.project_id, what="project id")
        for member in self.members:
            check_label(member, what="member party name")
        if len(self.members) < 2:
            raise ConfigurationError("a project needs at least two member parties")
        if len(set(self.members)) != len(self.members):
            raise ConfigurationError("member parties must be distinct")
        if len(self.schema_fingerprint) != 32:
            raise ConfigurationError("schema fingerprint must be 32 bytes (SHA-256)")
        if self.threshold is not None and not (0.0 < self.threshold <= 1.0):
            raise ConfigurationError("threshold must be in (0, 1], or unset for automatic")
        try:
            object.__setattr__(self, "blocking", BlockingMode(self.blocking))
        except ValueError:
            choices = ", ".join(repr(str(mode)) for mode in BlockingMode)
            raise ConfigurationError(f"blocking must be one of {choices}") from None
        if not (0 <= self.retention_days <= 3650):
            raise ConfigurationError("retention must be 0..3650 days")

    def canonical_json(self) -> str:
        """Sorted-keys JSON of every setting: what the settings fingerprint covers."""
        return json.dumps(
            {
                "project_id": self.project_id,
                "members": sorted(self.members),
                "schema_fingerprint": self.schema_fingerprint.hex(),
                "threshold": self.threshold,
                "blocking": str(self.blocking),
                "link_key_mode": str(self.link_key_mode),
                "retention_days": self.retention_days,
                "auto_run": self.auto_run,
            },
            sort_keys=True,
            separators=(",", ":"),
        )

    @property
    def retention_policy(self) -> str:
        """The audit log's name for how long CLKs are kept (docs/audit.md).

        ``retention_days == 0``: deleted as soon as the run finishes (``delete-after-run``).
        Otherwise deleted once every member has fetched its link keys, or ``retention_days``
        after the upload completed if a party never fetches (``delete-after-release``; the
        verifier requires the deletion once every party's keys were released).
        """
        if self.retention_days == 0:
            return RETENTION_DELETE_AFTER_RUN
        return RETENTION_DELETE_AFTER_RELEASE

    @property
    def fingerprint(self) -> str:
        """Hex SHA-256 of :meth:`canonical_json`."""
        return hashlib.sha256(self.canonical_json().encode("utf-8")).hexdigest()


@dataclass(frozen=True, slots=True, kw_only=True)
class UploadHeader:
    """The first message of an upload: who sends what, as the encoded file's header says."""

    project_id: str
    party_id: str
    schema_fingerprint: bytes
    kcv: bytes
    clk_bits: int
    record_count: int
    payload_sha256: bytes
    format_version: int = 1

    def __post_init__(self) -> None:
        check_label(self.party_id, what="party id")
        self.clk_file_header  # noqa: B018 - validates every file header field

    @property
    def clk_file_header(self) -> ClkFileHeader:
        return ClkFileHeader(
            project_id=self.project_id,
            schema_fingerprint=self.schema_fingerprint,
            kcv=self.kcv,
            clk_bits=self.clk_bits,
            record_count=self.record_count,
            payload_sha256=self.payload_sha256,
            format_version=self.format_version,
        )

    @property
    def payload_bytes(self) -> int:
        return self.record_count * self.clk_bits // 8

    @classmethod
    def from_clk_file_header(cls, header: ClkFileHeader, *, party_id: str) -> UploadHeader:
        return cls(
            project_id=header.project_id,
            party_id=party_id,
            schema_fingerprint=header.schema_fingerprint,
            kcv=header.kcv,
            clk_bits=header.clk_bits,
            record_count=header.record_count,
            payload_sha256=header.payload_sha256,
            format_version=header.format_version,
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class UploadChunk:
    """CLK bytes at a payload offset, with their own SHA-256."""

    offset: int
    data: bytes
    chunk_sha256: bytes

    def __post_init__(self) -> None:
        if self.offset < 0:
            raise ConfigurationError("chunk offset cannot be negative")
        if len(self.chunk_sha256) != 32:
            raise ConfigurationError("chunk digest must be 32 bytes (SHA-256)")

    @classmethod
    def of(cls, offset: int, data: bytes) -> UploadChunk:
        """A chunk with its digest computed."""
        return cls(offset=offset, data=data, chunk_sha256=hashlib.sha256(data).digest())


@dataclass(frozen=True, slots=True, kw_only=True)
class UploadProgress:
    """How much of an upload the linkage unit holds durably."""

    committed_bytes: int
    payload_bytes: int
    state: UploadState

    def __post_init__(self) -> None:
        if not (0 <= self.committed_bytes) or self.payload_bytes < 0:
            raise ConfigurationError("byte counts cannot be negative")


@dataclass(frozen=True, slots=True, kw_only=True)
class PartyStatus:
    party_id: str
    upload_state: UploadState
    committed_bytes: int = 0
    record_count: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class ProjectStatus:
    """What the operator, an auditor or a member may see: states and counts, never data."""

    project_id: str
    parties: tuple[PartyStatus, ...]
    run_state: RunState
    schema_fingerprint: bytes
    settings_fingerprint: str
    run_id: str = ""
    progress_stage: str = ""
    progress_done: int = 0
    progress_total: int = 0
    check_party_id: str = ""
    check_aspect: str = ""
    cluster_count: int = 0
    linked_record_count: int = 0
    comparisons: int = 0
    # The Dice threshold the finished run used, and how it was set ("operator" or the
    # automatic method's name): the operator must be able to see what the engine chose.
    threshold: float | None = None
    threshold_method: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class RunTicket:
    run_id: str
    state: RunState


@dataclass(frozen=True, slots=True, kw_only=True)
class LinkKeyBatch:
    """Part of one party's link keys: ``positions[i]`` has ``link_keys[i]``.

    ``keys_sha256`` is set on the last batch only: the hex SHA-256 of the lines
    ``f"{position},{link_key}\\n"`` over every batch in order.
    """

    positions: tuple[int, ...]
    link_keys: tuple[str, ...]
    total_count: int
    keys_sha256: str = ""

    def __post_init__(self) -> None:
        if len(self.positions) != len(self.link_keys):
            raise ConfigurationError("each position needs exactly one link key")
