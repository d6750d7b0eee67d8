"""The audit record format: what the linkage unit writes and the auditor verifies.

Stage: audit (shared by the linkage unit, which appends, and the auditor, who verifies).

One entry per event, in a hash chain signed by the linkage unit's Ed25519 key:

* **Canonical bytes** of an entry are the compact JSON (sorted keys, ``","``/``":"``
  separators, ASCII only) of ``{"format", "log_id", "sequence", "timestamp", "event",
  "project_id", "details", "previous_hash"}``; byte strings are lower-case hex. Everything a
  verifier needs is in those bytes, so any edit changes them.
* **Entry hash** = SHA-256 of the canonical bytes. They include the previous entry's hash
  (32 zero bytes for the first entry, sequence 0), so each hash commits to the whole past.
* **Signature** = Ed25519 over ``b"bloomlink-audit-entry-v1\\0" + entry hash``.
* **Signed head**: ``{log_id, sequence, entry_hash, timestamp}`` signed the same way under its
  own prefix. A head held by anyone proves the log once reached that sequence: a log shorter
  than a head, or with another hash there, was truncated or rewritten.
* **log_id**: 16 random bytes (hex) chosen when a log is created and carried in every entry,
  so an entry copied from another log is named as such instead of as a generic break.

Only allow-listed events with allow-listed detail keys can be written, and every value is
checked (hex digests of the right length, labels, counts as ints, comma-joined labels), so
the log can hold no free text: no name, CLK, score, value or key can ever reach it.
"""

from __future__ import annotations

import hashlib
import json
import operator
import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from protocol.errors import AuditError, ConfigurationError
from protocol.labels import check_label

__all__ = [
    "ALLOWED_EVENTS",
    "ENTRY_FORMAT",
    "GENESIS_HASH",
    "RETENTION_POLICIES",
    "AuditEntry",
    "ChainReport",
    "ParsedLog",
    "RedactedEntry",
    "SignedHead",
    "build_entry",
    "check_event",
    "entry_from_json",
    "entry_to_json",
    "format_timestamp",
    "head_from_json",
    "head_to_json",
    "parse_log",
    "redacted_to_json",
    "sign_head",
    "verify_chain",
]

ENTRY_FORMAT = "bloomlink-audit-v1"
GENESIS_HASH = bytes(32)
_ENTRY_PREFIX = b"bloomlink-audit-entry-v1\0"
_HEAD_PREFIX = b"bloomlink-audit-head-v1\0"
_MAX_COUNT = 2**63 - 1

# Retention values the verifier understands (project_created.retention).
RETENTION_KEEP = "keep"
RETENTION_DELETE_AFTER_RUN = "delete-after-run"
RETENTION_DELETE_AFTER_RELEASE = "delete-after-release"
RETENTION_POLICIES = frozenset(
    {RETENTION_KEEP, RETENTION_DELETE_AFTER_RUN, RETENTION_DELETE_AFTER_RELEASE}
)

_HEX_LOWER = re.compile(r"^[0-9a-f]*$")
# Identifiers the service invents (run ids, reasons, aspects, roles): short lower-case tokens.
_TOKEN = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
_TIMESTAMP = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z$")

_Value = str | int
_Checker = Callable[[object, str], _Value]


def _hex(length_bytes: int) -> _Checker:
    def check(value: object, where: str) -> str:
        if (
            not isinstance(value, str)
            or len(value) != 2 * length_bytes
            or not _HEX_LOWER.fullmatch(value)
        ):
            raise AuditError(f"{where} must be {2 * length_bytes} lower-case hex digits")
        return value

    return check


def _count(value: object, where: str) -> int:
    if isinstance(value, bool | str | bytes | float):
        raise AuditError(f"{where} must be a whole number")
    try:
        number = operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        raise AuditError(f"{where} must be a whole number") from None
    if not 0 <= number <= _MAX_COUNT:
        raise AuditError(f"{where} must be between 0 and 2**63 - 1")
    return number


def _label(value: object, where: str) -> str:
    try:
        return check_label(value, what=where)  # type: ignore[arg-type]
    except ConfigurationError as error:
        raise AuditError(error.message) from None


def _token(value: object, where: str) -> str:
    if not isinstance(value, str) or not _TOKEN.fullmatch(value):
        raise AuditError(f"{where} must be 1-64 characters of a-z, 0-9, '_' and '-'")
    return value


def _label_list(value: object, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise AuditError(f"{where} must be comma-joined party names")
    names = value.split(",")
    for name in names:
        _label(name, where)
    if len(set(names)) != len(names) or len(names) > 64:
        raise AuditError(f"{where} must list at most 64 distinct party names")
    return value


def _clk_bits(value: object, where: str) -> int:
    bits = _count(value, where)
    if not 64 <= bits <= 65536 or bits % 64:
        raise AuditError(f"{where} must be a multiple of 64 between 64 and 65536")
    return bits


_SHA256 = _hex(32)
_KCV = _hex(16)


@dataclass(frozen=True, slots=True, kw_only=True)
class _EventRule:
    required: Mapping[str, _Checker]
    optional: Mapping[str, _Checker] = field(default_factory=dict)
    project_required: bool = True


# The allow-list. Adding an event or key is a format change: update docs/audit.md too.
ALLOWED_EVENTS: Mapping[str, _EventRule] = MappingProxyType(
    {
        "project_created": _EventRule(
            required={
                "settings_fingerprint": _SHA256,
                "members": _label_list,
                "schema_fingerprint": _SHA256,
                "retention": _token,
            }
        ),
        "party_authenticated": _EventRule(
            required={"party": _label, "role": _token, "certificate_fingerprint": _SHA256},
            project_required=False,
        ),
        "upload_committed": _EventRule(
            required={
                "party": _label,
                "record_count": _count,
                "clk_bits": _clk_bits,
                "payload_sha256": _SHA256,
                "schema_fingerprint": _SHA256,
                "kcv": _KCV,
            },
            optional={"manifest_sha256": _SHA256},
        ),
        "checks_passed": _EventRule(required={"parties": _label_list}),
        "checks_failed": _EventRule(required={"party": _label, "aspect": _token}),
        "run_started": _EventRule(required={"run_id": _token, "parties": _label_list}),
        "run_finished": _EventRule(
            required={
                "run_id": _token,
                "cluster_count": _count,
                "linked_record_count": _count,
                "comparisons": _count,
            },
            # The Dice threshold the run used, in thousandths, and how it was chosen.
            optional={"threshold_thousandths": _count, "threshold_method": _token},
        ),
        "keys_released": _EventRule(
            required={"party": _label, "key_count": _count, "keys_sha256": _SHA256},
            optional={"run_id": _token},
        ),
        "payload_deleted": _EventRule(
            required={"party": _label, "payload_sha256": _SHA256, "reason": _token}
        ),
        # An upload the LU refused for its manifest (missing, another party's, bad signature,
        # disagreeing, stale or a reused nonce): the reason code, never a value.
        "upload_refused": _EventRule(
            required={"party": _label, "reason": _token},
            optional={"manifest_sha256": _SHA256},
        ),
        # A party asked for keys that are not its own, or for anything of a project it is not
        # in: the caller sees only "not found", the auditor sees who asked for what.
        "access_refused": _EventRule(
            required={
                "party": _label,
                "requested_project": _label,
                "certificate_fingerprint": _SHA256,
            },
            # Which call (a token such as fetch_link_keys, get_project_status) and, for
            # keys, whose were asked for.
            optional={"requested_party": _label, "call": _token},
            project_required=False,
        ),
    }
)


def _shown(name: object) -> str:
    """A name for an error message: echoed only if it looks like an identifier, since a
    tampered log line (or a careless caller) could put anything there."""
    if isinstance(name, str) and _TOKEN.fullmatch(name):
        return repr(name)
    return "(not shown: not a plain name)"


def check_event(
    event: str, *, project_id: str | None, details: Mapping[str, object]
) -> dict[str, _Value]:
    """Return the details, normalised, if ``event`` may be logged with them; else raise.

    Raises :class:`AuditError` naming the event and key (never the value) when the event is
    not allow-listed, a key is missing or unknown, or a value has the wrong shape.
    """
    rule = ALLOWED_EVENTS.get(event) if isinstance(event, str) else None
    if rule is None:
        raise AuditError(f"event {_shown(event)} is not on the audit allow-list")
    if project_id is None:
        if rule.project_required:
            raise AuditError(f"{event} needs a project id")
    else:
        _label(project_id, f"{event} project id")
    if not isinstance(details, Mapping):
        raise AuditError(f"{event} details must be a mapping")
    unknown = sorted(
        _shown(key) for key in details if key not in rule.required and key not in rule.optional
    )
    if unknown:
        raise AuditError(f"{event} does not allow detail key(s) {', '.join(unknown)}")
    missing = sorted(key for key in rule.required if key not in details)
    if missing:
        raise AuditError(f"{event} is missing detail key(s) {', '.join(missing)}")
    checked: dict[str, _Value] = {}
    for key, value in details.items():
        checker = rule.required.get(key) or rule.optional[key]
        checked[key] = checker(value, f"{event}.{key}")
    return checked


def format_timestamp(moment: datetime) -> str:
    """UTC, microseconds, ``Z`` suffix: the one timestamp spelling in audit records."""
    if moment.tzinfo is None:
        raise AuditError("audit timestamps must be timezone-aware")
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _check_hash(value: bytes, what: str) -> None:
    if not isinstance(value, bytes) or len(value) != 32:
        raise AuditError(f"{what} must be 32 bytes")


@dataclass(frozen=True, slots=True, kw_only=True)
class AuditEntry:
    """One signed, chained audit record. Build new ones with :func:`build_entry`."""

    log_id: str
    sequence: int
    timestamp: str
    event: str
    project_id: str | None
    details: Mapping[str, _Value]
    previous_hash: bytes
    entry_hash: bytes
    signature: bytes

    def __post_init__(self) -> None:
        _hex(16)(self.log_id, "log id")
        _count(self.sequence, "sequence")
        if not isinstance(self.timestamp, str) or not _TIMESTAMP.fullmatch(self.timestamp):
            raise AuditError("timestamp must be UTC like 2026-01-31T12:00:00.000000Z")
        checked = check_event(self.event, project_id=self.project_id, details=self.details)
        object.__setattr__(self, "details", MappingProxyType(dict(sorted(checked.items()))))
        _check_hash(self.previous_hash, "previous hash")
        _check_hash(self.entry_hash, "entry hash")
        if not isinstance(self.signature, bytes) or len(self.signature) != 64:
            raise AuditError("signature must be 64 bytes (Ed25519)")

    def canonical_bytes(self) -> bytes:
        """The bytes the entry hash covers (see the module docstring)."""
        return _canonical_bytes(
            log_id=self.log_id,
            sequence=self.sequence,
            timestamp=self.timestamp,
            event=self.event,
            project_id=self.project_id,
            details=self.details,
            previous_hash=self.previous_hash,
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class RedactedEntry:
    """An entry of another project in a per-project export: its hash, link and signature only.

    It keeps the chain verifiable (signature over the hash, hash linked to its neighbours)
    without showing another project's details to this project's auditor.
    """

    log_id: str
    sequence: int
    previous_hash: bytes
    entry_hash: bytes
    signature: bytes

    def __post_init__(self) -> None:
        _hex(16)(self.log_id, "log id")
        _count(self.sequence, "sequence")
        _check_hash(self.previous_hash, "previous hash")
        _check_hash(self.entry_hash, "entry hash")
        if not isinstance(self.signature, bytes) or len(self.signature) != 64:
            raise AuditError("signature must be 64 bytes (Ed25519)")

    @classmethod
    def of(cls, entry: AuditEntry) -> RedactedEntry:
        return cls(
            log_id=entry.log_id,
            sequence=entry.sequence,
            previous_hash=entry.previous_hash,
            entry_hash=entry.entry_hash,
            signature=entry.signature,
        )


def _canonical_json(value: Mapping[str, Any]) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode(
        "ascii"
    )


def _canonical_bytes(
    *,
    log_id: str,
    sequence: int,
    timestamp: str,
    event: str,
    project_id: str | None,
    details: Mapping[str, _Value],
    previous_hash: bytes,
) -> bytes:
    return _canonical_json(
        {
            "format": ENTRY_FORMAT,
            "log_id": log_id,
            "sequence": sequence,
            "timestamp": timestamp,
            "event": event,
            "project_id": project_id,
            "details": dict(details),
            "previous_hash": previous_hash.hex(),
        }
    )


def build_entry(
    *,
    signing_key: Ed25519PrivateKey,
    log_id: str,
    sequence: int,
    previous_hash: bytes,
    moment: datetime,
    event: str,
    project_id: str | None,
    details: Mapping[str, object],
) -> AuditEntry:
    """Check, hash and sign a new entry that follows ``previous_hash``."""
    checked = check_event(event, project_id=project_id, details=details)
    timestamp = format_timestamp(moment)
    canonical = _canonical_bytes(
        log_id=log_id,
        sequence=sequence,
        timestamp=timestamp,
        event=event,
        project_id=project_id,
        details=checked,
        previous_hash=previous_hash,
    )
    entry_hash = hashlib.sha256(canonical).digest()
    return AuditEntry(
        log_id=log_id,
        sequence=sequence,
        timestamp=timestamp,
        event=event,
        project_id=project_id,
        details=checked,
        previous_hash=previous_hash,
        entry_hash=entry_hash,
        signature=signing_key.sign(_ENTRY_PREFIX + entry_hash),
    )


def entry_to_json(entry: AuditEntry) -> str:
    """One JSON line (no newline) for the log file: the canonical fields plus hash and signature."""
    record = json.loads(entry.canonical_bytes())
    record["entry_hash"] = entry.entry_hash.hex()
    record["signature"] = entry.signature.hex()
    return _canonical_json(record).decode("ascii")


def _hex_bytes(record: Mapping[str, Any], key: str, length: int) -> bytes:
    value = record.get(key)
    _hex(length)(value, key)
    return bytes.fromhex(str(value))


def redacted_to_json(entry: RedactedEntry) -> str:
    """One JSON line for a redacted entry in a per-project export."""
    return _canonical_json(
        {
            "format": ENTRY_FORMAT,
            "redacted": True,
            "log_id": entry.log_id,
            "sequence": entry.sequence,
            "previous_hash": entry.previous_hash.hex(),
            "entry_hash": entry.entry_hash.hex(),
            "signature": entry.signature.hex(),
        }
    ).decode("ascii")


def entry_from_json(line: str | bytes) -> AuditEntry | RedactedEntry:
    """Parse one log line; anything malformed is an :class:`AuditError` (never echoes it)."""
    try:
        record = json.loads(line)
    except (ValueError, UnicodeDecodeError):
        raise AuditError("line is not valid JSON (torn or edited)") from None
    if not isinstance(record, dict):
        raise AuditError("line is not a JSON object")
    if record.get("redacted") is True:
        if set(record) != {
            "format",
            "redacted",
            "log_id",
            "sequence",
            "previous_hash",
            "entry_hash",
            "signature",
        } or isinstance(record["sequence"], bool):
            raise AuditError("redacted line does not have exactly the redacted entry fields")
        return RedactedEntry(
            log_id=record["log_id"],
            sequence=record["sequence"],
            previous_hash=_hex_bytes(record, "previous_hash", 32),
            entry_hash=_hex_bytes(record, "entry_hash", 32),
            signature=_hex_bytes(record, "signature", 64),
        )
    expected = {
        "format",
        "log_id",
        "sequence",
        "timestamp",
        "event",
        "project_id",
        "details",
        "previous_hash",
        "entry_hash",
        "signature",
    }
    if set(record) != expected:
        raise AuditError("line does not have exactly the audit entry fields")
    if record["format"] != ENTRY_FORMAT:
        raise AuditError(f"unknown entry format; this build reads {ENTRY_FORMAT}")
    if not isinstance(record["details"], dict) or isinstance(record["sequence"], bool):
        raise AuditError("line has malformed details or sequence")
    return AuditEntry(
        log_id=record["log_id"],
        sequence=record["sequence"],
        timestamp=record["timestamp"],
        event=record["event"],
        project_id=record["project_id"],
        details=record["details"],
        previous_hash=_hex_bytes(record, "previous_hash", 32),
        entry_hash=_hex_bytes(record, "entry_hash", 32),
        signature=_hex_bytes(record, "signature", 64),
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class ParsedLog:
    """The entries of a log file and, if its last line was cut short, where."""

    entries: tuple[AuditEntry | RedactedEntry, ...]
    torn_line: int | None = None


def parse_log(data: bytes) -> ParsedLog:
    """Parse a JSON-lines log. A malformed complete line raises naming its entry index; an
    incomplete last line (no newline: a crash during an append that was never acknowledged)
    is reported in ``torn_line`` rather than parsed."""
    lines = data.split(b"\n")
    tail = lines.pop()  # b"" when the file ends with a newline
    entries: list[AuditEntry | RedactedEntry] = []
    for index, line in enumerate(lines):
        try:
            entries.append(entry_from_json(line))
        except AuditError as error:
            raise AuditError(error.message, entry=index) from None
    return ParsedLog(entries=tuple(entries), torn_line=len(entries) if tail else None)


@dataclass(frozen=True, slots=True, kw_only=True)
class SignedHead:
    """The latest sequence and entry hash of a log, signed: proof of how far the log went."""

    log_id: str
    sequence: int
    entry_hash: bytes
    timestamp: str
    signature: bytes

    def __post_init__(self) -> None:
        _hex(16)(self.log_id, "log id")
        _count(self.sequence, "head sequence")
        _check_hash(self.entry_hash, "head entry hash")
        if not isinstance(self.timestamp, str) or not _TIMESTAMP.fullmatch(self.timestamp):
            raise AuditError("head timestamp must be UTC like 2026-01-31T12:00:00.000000Z")
        if not isinstance(self.signature, bytes) or len(self.signature) != 64:
            raise AuditError("head signature must be 64 bytes (Ed25519)")

    def signed_bytes(self) -> bytes:
        return _HEAD_PREFIX + _head_body(
            self.log_id, self.sequence, self.entry_hash, self.timestamp
        )

    def verify(self, public_key: Ed25519PublicKey) -> bool:
        try:
            public_key.verify(self.signature, self.signed_bytes())
        except InvalidSignature:
            return False
        return True


def _head_body(log_id: str, sequence: int, entry_hash: bytes, timestamp: str) -> bytes:
    return _canonical_json(
        {
            "format": ENTRY_FORMAT,
            "log_id": log_id,
            "sequence": sequence,
            "entry_hash": entry_hash.hex(),
            "timestamp": timestamp,
        }
    )


def sign_head(entry: AuditEntry, *, signing_key: Ed25519PrivateKey, moment: datetime) -> SignedHead:
    """A signed head pointing at ``entry`` (normally the last one)."""
    timestamp = format_timestamp(moment)
    body = _head_body(entry.log_id, entry.sequence, entry.entry_hash, timestamp)
    return SignedHead(
        log_id=entry.log_id,
        sequence=entry.sequence,
        entry_hash=entry.entry_hash,
        timestamp=timestamp,
        signature=signing_key.sign(_HEAD_PREFIX + body),
    )


def head_to_json(head: SignedHead) -> str:
    record = json.loads(_head_body(head.log_id, head.sequence, head.entry_hash, head.timestamp))
    record["signature"] = head.signature.hex()
    return _canonical_json(record).decode("ascii")


def head_from_json(text: str | bytes) -> SignedHead:
    try:
        record = json.loads(text)
    except (ValueError, UnicodeDecodeError):
        raise AuditError("signed head is not valid JSON") from None
    if not isinstance(record, dict) or set(record) != {
        "format",
        "log_id",
        "sequence",
        "entry_hash",
        "timestamp",
        "signature",
    }:
        raise AuditError("signed head does not have exactly the head fields")
    if record["format"] != ENTRY_FORMAT or isinstance(record["sequence"], bool):
        raise AuditError("signed head has an unknown format or a malformed sequence")
    return SignedHead(
        log_id=record["log_id"],
        sequence=record["sequence"],
        entry_hash=_hex_bytes(record, "entry_hash", 32),
        timestamp=record["timestamp"],
        signature=_hex_bytes(record, "signature", 64),
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class ChainReport:
    """The outcome of :func:`verify_chain`: either intact, or the first bad entry and why.

    ``problem`` is one of: ``edited`` (content no longer matches its hash), ``forged`` (hash
    fine, signature not by the LU key), ``deleted`` (a sequence number is missing),
    ``reordered`` (an entry is out of sequence), ``foreign`` (an entry of another log),
    ``broken-link`` (previous hash does not match), ``truncated`` (a signed head is past the
    end), ``head-mismatch`` (a signed head disagrees with the entry at its sequence),
    ``bad-head`` (a head's own signature fails), ``empty``.
    """

    intact: bool
    entry_count: int
    log_id: str | None = None
    last_sequence: int | None = None
    last_hash: bytes | None = None
    bad_index: int | None = None
    problem: str | None = None
    message: str = "intact"

    def raise_if_broken(self) -> None:
        if not self.intact:
            raise AuditError(self.message, entry=self.bad_index)


def _broken(
    count: int, index: int | None, problem: str, message: str, log_id: str | None
) -> ChainReport:
    return ChainReport(
        intact=False,
        entry_count=count,
        log_id=log_id,
        bad_index=index,
        problem=problem,
        message=message,
    )


def verify_chain(
    entries: Sequence[AuditEntry | RedactedEntry],
    public_key: Ed25519PublicKey,
    *,
    heads: Iterable[SignedHead] = (),
    expected_log_id: str | None = None,
    verify_signatures: Sequence[int] | None = None,
) -> ChainReport:
    """Check a whole log, in file order, against the LU public key and any signed heads.

    Every entry's hash is recomputed and every signature checked (``verify_signatures`` may
    name a subset of indices, used when the LU re-opens its own log: the chain then binds the
    rest). Stops at the first bad entry, since nothing after it can be trusted.
    """
    count = len(entries)
    heads = list(heads)
    log_id = expected_log_id or (
        entries[0].log_id if entries else (heads[0].log_id if heads else None)
    )
    if not entries and not heads:
        return _broken(0, None, "empty", "the log has no entries", log_id)
    sequences = Counter(entry.sequence for entry in entries)
    to_verify = set(range(count)) if verify_signatures is None else set(verify_signatures)
    previous = GENESIS_HASH
    for index, entry in enumerate(entries):
        if entry.log_id != log_id:
            return _broken(
                count, index, "foreign", f"entry {index} belongs to another audit log", log_id
            )
        if entry.sequence != index:
            if entry.sequence < index or index in sequences or sequences[entry.sequence] > 1:
                problem, what = (
                    "reordered",
                    f"has sequence {entry.sequence}; entries were reordered",
                )
            else:
                problem, what = "deleted", f"should have sequence {index}; entries were deleted"
            return _broken(count, index, problem, f"entry {index} {what}", log_id)
        if (
            isinstance(entry, AuditEntry)
            and hashlib.sha256(entry.canonical_bytes()).digest() != entry.entry_hash
        ):
            return _broken(
                count, index, "edited", f"entry {index} was edited after it was signed", log_id
            )
        if index in to_verify or isinstance(entry, RedactedEntry):
            try:
                public_key.verify(entry.signature, _ENTRY_PREFIX + entry.entry_hash)
            except InvalidSignature:
                return _broken(
                    count,
                    index,
                    "forged",
                    f"entry {index} is not signed by this linkage unit's key",
                    log_id,
                )
        if entry.previous_hash != previous:
            return _broken(
                count,
                index,
                "broken-link",
                f"entry {index} does not follow entry {index - 1} "
                "(an entry was replaced or spliced in)",
                log_id,
            )
        previous = entry.entry_hash
    for head in heads:
        if not head.verify(public_key):
            return _broken(
                count, None, "bad-head", "a signed head is not signed by this linkage unit", log_id
            )
        if head.log_id != log_id:
            return _broken(
                count, None, "foreign", "a signed head belongs to another audit log", log_id
            )
        if head.sequence >= count:
            return _broken(
                count,
                count,
                "truncated",
                f"a signed head says the log reached entry {head.sequence} but it ends at entry "
                f"{count - 1}; entries were removed from the end",
                log_id,
            )
        if entries[head.sequence].entry_hash != head.entry_hash:
            return _broken(
                count,
                head.sequence,
                "head-mismatch",
                f"entry {head.sequence} differs from the one a signed head vouches for",
                log_id,
            )
    last = entries[-1] if entries else None
    return ChainReport(
        intact=True,
        entry_count=count,
        log_id=log_id,
        last_sequence=last.sequence if last else None,
        last_hash=last.entry_hash if last else None,
    )
