"""The values the wire protocol carries, as plain Python (protocol/serde.py converts them).

The linkage unit's logic and the party client speak these; neither touches protobuf.
Every value is validated on construction, so a malformed request never reaches the logic.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum

from protocol.canonical import canonical_json
from protocol.clk_file import FORMAT_VERSION, GROUPED_FORMAT_VERSION, ClkFileHeader
from protocol.clk_layout import ClkLayout
from protocol.errors import ConfigurationError
from protocol.labels import check_label
from protocol.vocabulary import LinkModel, RetentionPolicy

__all__ = [
    "DEFAULT_MAX_CLUSTER_SIZE",
    "SETTINGS_FORMAT",
    "BlockingMode",
    "LinkKeyBatch",
    "LinkKeysDigest",
    "LinkKeyMode",
    "LinkModel",
    "PartyStatus",
    "ProjectSettings",
    "ProjectStatus",
    "RunState",
    "RunTicket",
    "UploadChunk",
    "UploadHeader",
    "UploadProgress",
    "UploadState",
    "UNRUN_HOLD_DAYS",
    "link_keys_digest",
]


SETTINGS_FORMAT = "bloomlink-settings-v2"
"""The settings document's format (docs/protocol.md, "Settings fingerprint"). Version 1 was
Python's ``json.dumps`` of the same fields without this one, whose float spelling no other
language reproduces."""


class BlockingMode(StrEnum):
    """How a run finds candidate pairs (linkage_unit/blocking.py): ``lsh`` always blocks,
    ``none`` compares every pair, ``auto`` compares every pair up to 20,000 x 20,000 and
    blocks above. One vocabulary for the project settings, the wire and the engine."""

    AUTO = "auto"
    LSH = "lsh"
    NONE = "none"


UNRUN_HOLD_DAYS = 30
"""How long an upload of a ``delete-after-run`` project (``retention_days`` 0) waits for a
run that finishes before it is deleted anyway."""


class LinkKeyMode(StrEnum):
    SHARED = "shared"
    PER_PARTY = "per_party"


DEFAULT_MAX_CLUSTER_SIZE = 1000
"""Records of one party one person's cluster may hold before the run fails (deduplicating
projects)."""
MAX_CLUSTER_SIZE_LIMIT = 10_000_000


class UploadState(StrEnum):
    NOT_STARTED = "not_started"
    PARTIAL = "partial"
    COMPLETE = "complete"
    DELETED = "deleted"


class RunState(StrEnum):
    WAITING_FOR_UPLOADS = "waiting_for_uploads"
    # Every member has uploaded; a project created without auto-run waits for the operator.
    READY = "ready"
    QUEUED = "queued"
    RUNNING = "running"
    FINISHED = "finished"
    REFUSED = "refused"
    FAILED = "failed"


@dataclass(frozen=True, slots=True, kw_only=True)
class ProjectSettings:
    """What the operator fixes when creating a project; its fingerprint goes to the audit log.

    ``deduplicated``: the members whose extracts may hold several records of one person
    (``--dedupe``); see :class:`LinkModel`. ``max_cluster_size``: with any, the most records
    of one party a person's cluster may hold before the run fails instead of issuing keys.
    """

    project_id: str
    members: tuple[str, ...]
    schema_fingerprint: bytes
    threshold: float | None = None
    blocking: BlockingMode = BlockingMode.LSH
    link_key_mode: LinkKeyMode = LinkKeyMode.SHARED
    retention_days: int = 0
    auto_run: bool = True
    layout: ClkLayout | None = None
    """The grouped layout (and each group's hardening) every upload must have, from a
    schema v2; None for a single record-level CLK (schema v1: uploads are format 1)."""
    deduplicated: tuple[str, ...] = ()
    max_cluster_size: int = DEFAULT_MAX_CLUSTER_SIZE
    match_probability: float | None = None
    """The operator's cut on the Fellegi-Sunter model's posterior match probability (a
    grouped layout's runs link pairs at or above it); None: the model's default, 0.5."""
    spine: str | None = None
    """The spine the run links into (docs/spine.md); None: a one-off project."""

    def __post_init__(self) -> None:
        check_label(self.project_id, what="project id")
        if self.spine is not None:
            check_label(self.spine, what="spine name")
        for member in self.members:
            check_label(member, what="member party name")
        if len(set(self.members)) != len(self.members):
            raise ConfigurationError("member parties must be distinct")
        strangers = [party for party in self.deduplicated if party not in self.members]
        if strangers:
            raise ConfigurationError(
                f"--dedupe names {', '.join(repr(party) for party in strangers)}, not a member "
                "party of this project; deduplicate only members (--parties)"
            )
        if len(set(self.deduplicated)) != len(self.deduplicated):
            raise ConfigurationError("--dedupe names a party twice")
        if len(self.members) < 2 and not self.deduplicated:
            raise ConfigurationError(
                "a project needs at least two member parties, or one that is deduplicated "
                "(--dedupe)"
            )
        if not 2 <= self.max_cluster_size <= MAX_CLUSTER_SIZE_LIMIT:
            raise ConfigurationError(
                f"the cluster-size cap must be between 2 and {MAX_CLUSTER_SIZE_LIMIT} records"
            )
        if not self.deduplicated and self.max_cluster_size != DEFAULT_MAX_CLUSTER_SIZE:
            raise ConfigurationError(
                "a cluster-size cap applies only to a project that deduplicates (--dedupe)"
            )
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
        if self.layout is not None and not isinstance(self.layout, ClkLayout):
            raise ConfigurationError("a project's layout must be a ClkLayout")
        if self.match_probability is not None:
            if not (0.0 < self.match_probability < 1.0):
                raise ConfigurationError("the match probability must be in (0, 1)")
            if self.layout is None or len(self.layout.groups) < 2:
                # A single record-level CLK is scored by Dice: the cut would do nothing.
                raise ConfigurationError(
                    "a match probability applies only to a project whose schema has several "
                    "field groups (scored by the Fellegi-Sunter model); a single-CLK project "
                    "is cut by its Dice threshold (--threshold)"
                )

    @property
    def link_model(self) -> LinkModel:
        if not self.deduplicated:
            return LinkModel.ONE_TO_ONE
        if len(self.members) == 1:
            return LinkModel.DEDUPE_ONLY
        return LinkModel.DEDUPE_AND_LINK

    def describe_link_model(self) -> str:
        """One line for status and logs: the model and who is deduplicated."""
        if self.link_model is LinkModel.ONE_TO_ONE:
            return f"{self.link_model}: at most one record per person from each party"
        clean = [party for party in self.members if party not in self.deduplicated]
        line = f"{self.link_model}: deduplicating {', '.join(sorted(self.deduplicated))}"
        if clean:
            line += f"; at most one record per person from {', '.join(clean)}"
        return (
            line + f"; over {self.max_cluster_size} records of one party in a cluster fail the run"
        )

    def canonical_json(self) -> str:
        """The settings document in RFC 8785 canonical JSON (protocol/canonical.py): what the
        settings fingerprint covers. The layout and the match-probability cut are there only
        when set and the deduplication settings only in a project that deduplicates, so a
        document has no key that means nothing for its project."""
        values: dict[str, object] = {
            "format": SETTINGS_FORMAT,
            "project_id": self.project_id,
            "members": sorted(self.members),
            "schema_fingerprint": self.schema_fingerprint.hex(),
            "threshold": self.threshold,
            "blocking": str(self.blocking),
            "link_key_mode": str(self.link_key_mode),
            "retention_days": self.retention_days,
            "auto_run": self.auto_run,
        }
        if self.layout is not None:
            values["layout"] = self.layout.to_record()
        if self.deduplicated:
            values["deduplicated"] = sorted(self.deduplicated)
            values["max_cluster_size"] = self.max_cluster_size
        if self.match_probability is not None:
            values["match_probability"] = self.match_probability
        if self.spine is not None:
            values["spine"] = self.spine
        return canonical_json(values).decode("utf-8")

    @property
    def retention_policy(self) -> RetentionPolicy:
        """The audit log's name for how long CLKs are kept (docs/audit.md).

        ``retention_days == 0``: deleted as soon as the run finishes (``delete-after-run``).
        Otherwise deleted once every member has fetched its link keys, or ``retention_days``
        after the upload completed if a party never fetches (``delete-after-release``; the
        verifier requires the deletion once every party's keys were released).
        """
        if self.retention_days == 0:
            return RetentionPolicy.DELETE_AFTER_RUN
        return RetentionPolicy.DELETE_AFTER_RELEASE

    @property
    def hold_days(self) -> int:
        """The most days the LU keeps any upload of this project, whatever becomes of the
        run (one party never uploads, the run is refused or fails): ``retention_days``, or
        :data:`UNRUN_HOLD_DAYS` under ``delete-after-run``, whose CLKs wait for a run."""
        return self.retention_days or UNRUN_HOLD_DAYS

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
    format_version: int = FORMAT_VERSION
    layout: ClkLayout | None = None
    """Format 2: the record's groups and their hardening, as the file header lists them."""
    key_context: str | None = None
    """What the keys and KCV were derived for in place of the project id, as the file header
    says (a spine's ``spine:NAME``; None: the project id, or a file from before the field)."""

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
            layout=self.layout,
            key_context=self.key_context,
        )

    @property
    def clk_layout(self) -> ClkLayout:
        """The record's layout (``ClkLayout.single`` for format 1)."""
        return self.layout or ClkLayout.single(self.clk_bits)

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
            layout=header.layout if header.format_version == GROUPED_FORMAT_VERSION else None,
            key_context=header.key_context,
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
    # A run scored by the Fellegi-Sunter model: the precision, recall and F1 it expects of its
    # links (no ground truth). Derived from every party's data: operator and auditors only.
    estimated_precision: float | None = None
    estimated_recall: float | None = None
    estimated_f1: float | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class RunTicket:
    run_id: str
    state: RunState


class LinkKeysDigest:
    """The digest both sides compute over a party's released keys: hex SHA-256 of the lines
    ``f"{position},{link_key}\\n"`` in release order. The LU logs it in ``keys_released``
    and sends it with the last batch; the party checks what it received against it."""

    def __init__(self) -> None:
        self._hash = hashlib.sha256()

    def update(self, positions: Iterable[int], link_keys: Iterable[str]) -> None:
        # One update of the joined lines: SHA-256 of a concatenation is the same, and a
        # million small updates cost more than the hashing.
        lines = "".join(
            f"{position},{key}\n" for position, key in zip(positions, link_keys, strict=True)
        )
        self._hash.update(lines.encode("ascii"))

    def hexdigest(self) -> str:
        return self._hash.hexdigest()


def link_keys_digest(positions: Iterable[int], link_keys: Iterable[str]) -> str:
    """:class:`LinkKeysDigest` of one whole key set."""
    digest = LinkKeysDigest()
    digest.update(positions, link_keys)
    return digest.hexdigest()


@dataclass(frozen=True, slots=True, kw_only=True)
class LinkKeyBatch:
    """Part of one party's link keys: ``positions[i]`` has ``link_keys[i]``.

    ``keys_sha256`` is set on the last batch only: :class:`LinkKeysDigest` over every batch
    in order.
    """

    positions: tuple[int, ...]
    link_keys: tuple[str, ...]
    total_count: int
    keys_sha256: str = ""

    def __post_init__(self) -> None:
        if len(self.positions) != len(self.link_keys):
            raise ConfigurationError("each position needs exactly one link key")
