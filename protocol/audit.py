"""The audit record format: what the linkage unit writes and the auditor verifies.

Stage: audit (shared by the linkage unit, which appends, and the auditor, who verifies).

One entry per event, in a hash chain signed by the linkage unit's Ed25519 key. The format
(``bloomlink-audit-v2``) lets the LU show each reader only what that reader may see while
every reader can still check the whole chain. "JSON" below is always the RFC 8785 canonical
JSON of protocol/canonical.py (docs/protocol.md, "Canonical JSON"); every value hashed is an
ASCII string, a whole number below 2^53 or null, where it is also the compact sorted-key
ASCII ``json.dumps``, so any language reproduces the bytes.

* **Field hashes.** Each detail ``key: value`` is committed to on its own:
  ``SHA-256("bloomlink-audit-field-v2\\0" + field salt + JSON [key, value])``, with a field
  salt of 16 bytes derived from the entry's random 16-byte ``salt`` (HMAC-SHA256, label
  ``field\\0<key>``). A value can be withheld from a reader by showing its field hash
  instead; the salt makes small values (a count, a KCV) impossible to guess from it.
* **Body hash** = SHA-256 of ``"bloomlink-audit-body-v2\\0"`` + the JSON of
  ``{event, timestamp, project_id, fields: {key: field hash}, salt: body salt}`` (body salt
  derived from ``salt``, label ``body\\0``).
* **Project tag**: HMAC-SHA256 under the project's ``view_key`` (16 bytes, in the project's
  ``project_created`` entry) of ``"bloomlink-audit-project-v2\\0" + project id``; null for
  an entry with no project. Only the project's readers know its view key.
* **Entry hash** = SHA-256 of the JSON of ``{format, log_id,
  sequence, previous_hash, project: tag, body: body hash}``; ``previous_hash`` is the
  previous entry's hash (32 zero bytes for sequence 0), so each hash commits to the whole
  past. **Signature** = Ed25519 over ``b"bloomlink-audit-entry-v2\\0" + entry hash``.
* **Signed head**: ``{log_id, sequence, entry_hash, timestamp}`` signed under its own prefix.
  A head proves the log once reached that sequence: a log shorter than a head, or with
  another hash there, was truncated or rewritten.

A log line is one of three forms, each enough to recompute the entry hash:

* a **full entry** (the LU's own log, the auditor's and operator's reads): every detail,
  the entry ``salt`` and the project tag;
* a **partial entry** (a member party's view of its own project): the details the party
  may see with their field salts, the field hashes of those it may not (``withheld``), the
  body salt and the tag (never the entry salt, from which the withheld values' salts follow);
* a **redacted stub** (another project's entry in a project's view): the tag and body hash
  only. Because the stub's hash covers its tag, a stub of the viewer's own project is
  recognisable, so a view cannot hide the viewer's own entries.

Only allow-listed events with allow-listed detail keys can be written, and every value is
checked (hex digests of the right length, labels, counts as ints, comma-joined labels), so
the log can hold no free text: no name, CLK, score, value or key can ever reach it. Which
details a party may see of each event is declared beside it (``private``: only the subject
party, the operator and auditors; ``operator_only``: the operator and auditors) and applied
by :func:`withheld_from`, the one policy both the LU and the verifier use.
"""

from __future__ import annotations

import hashlib
import hmac
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

from protocol.canonical import MAX_SAFE_INTEGER, canonical_json
from protocol.errors import AuditError, ConfigurationError
from protocol.labels import check_label

__all__ = [
    "ALLOWED_EVENTS",
    "ENTRY_FORMAT",
    "GENESIS_HASH",
    "AuditEntry",
    "ChainReport",
    "EntryView",
    "LogLine",
    "ParsedLog",
    "RedactedEntry",
    "SignedHead",
    "TagProblem",
    "build_entry",
    "check_event",
    "check_project_tags",
    "format_timestamp",
    "head_from_json",
    "head_to_json",
    "line_from_json",
    "line_to_json",
    "parse_log",
    "project_tag",
    "sign_head",
    "verify_chain",
    "withheld_from",
]

ENTRY_FORMAT = "bloomlink-audit-v2"
GENESIS_HASH = bytes(32)
_ENTRY_PREFIX = b"bloomlink-audit-entry-v2\0"
_HEAD_PREFIX = b"bloomlink-audit-head-v2\0"
_FIELD_PREFIX = b"bloomlink-audit-field-v2\0"
_BODY_PREFIX = b"bloomlink-audit-body-v2\0"
_PROJECT_PREFIX = b"bloomlink-audit-project-v2\0"
_MAX_COUNT = MAX_SAFE_INTEGER  # exact in every language's JSON (docs/protocol.md)
SALT_BYTES = 16
VIEW_KEY_BYTES = 16

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
        raise AuditError(f"{where} must be between 0 and 2**53 - 1")
    return number


def _millionths(value: object, where: str) -> int:
    number = _count(value, where)
    if number > 1_000_000:
        raise AuditError(f"{where} must be a share in millionths, 0 to 1000000")
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
_VIEW_KEY = _hex(16)


@dataclass(frozen=True, slots=True, kw_only=True)
class _EventRule:
    required: Mapping[str, _Checker]
    optional: Mapping[str, _Checker] = field(default_factory=dict)
    project_required: bool = True
    # Who may read which detail in a project's view: ``private`` details only the party the
    # entry is about (its ``party`` detail), the operator and auditors; ``operator_only``
    # details only the operator and auditors. Everything else every member may read.
    private: frozenset[str] = frozenset()
    operator_only: frozenset[str] = frozenset()

    @property
    def keys(self) -> frozenset[str]:
        return frozenset(self.required) | frozenset(self.optional)


# The allow-list. Adding an event or key is a format change: update docs/audit.md too.
ALLOWED_EVENTS: Mapping[str, _EventRule] = MappingProxyType(
    {
        "project_created": _EventRule(
            required={
                "settings_fingerprint": _SHA256,
                "members": _label_list,
                "schema_fingerprint": _SHA256,
                "retention": _token,
                # The most days any upload is kept, whatever becomes of the run.
                "hold_days": _count,
                # The key of this project's tags: its readers can tell its stubs from others'.
                "view_key": _VIEW_KEY,
            },
            # A grouped project's expected layout and hardening (ClkLayout.sha256); the link
            # model (protocol.vocabulary.LinkModel), the members it deduplicates and its
            # cluster-size cap (a log written before link models is one-to-one). Project
            # settings every member agreed to: every member may read them.
            optional={
                "layout_sha256": _SHA256,
                "link_model": _token,
                "deduplicated": _label_list,
                "max_cluster_size": _count,
            },
        ),
        "party_authenticated": _EventRule(
            required={"party": _label, "role": _token, "certificate_fingerprint": _SHA256},
            project_required=False,
            private=frozenset({"certificate_fingerprint"}),
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
            # layout_sha256: a grouped upload's layout and hardening (ClkLayout.sha256);
            # spine: the spine its keys were derived for (key context spine:NAME), a name the
            # project's settings already give, never identifier data.
            optional={"manifest_sha256": _SHA256, "layout_sha256": _SHA256, "spine": _label},
            private=frozenset(
                {
                    "record_count",
                    "clk_bits",
                    "payload_sha256",
                    "schema_fingerprint",
                    "kcv",
                    "manifest_sha256",
                    "layout_sha256",
                    "spine",
                }
            ),
        ),
        "checks_passed": _EventRule(required={"parties": _label_list}),
        "checks_failed": _EventRule(
            required={"party": _label, "aspect": _token}, private=frozenset({"aspect"})
        ),
        "run_started": _EventRule(required={"run_id": _token, "parties": _label_list}),
        # A run interrupted by a stop or a crash carries on under the same run id.
        "run_resumed": _EventRule(required={"run_id": _token}),
        "run_finished": _EventRule(
            required={
                "run_id": _token,
                "cluster_count": _count,
                "linked_record_count": _count,
                "comparisons": _count,
            },
            # The threshold the run used, in thousandths (a Dice threshold, or the model's
            # match-probability cut), and how it was chosen; a model-scored run's expected
            # precision, recall and F1 in millionths (the model's own estimate, no truth).
            # Every figure comes from all parties' data: operator (and auditor) only.
            optional={
                "threshold_thousandths": _count,
                "threshold_method": _token,
                "estimated_precision_millionths": _millionths,
                "estimated_recall_millionths": _millionths,
                "estimated_f1_millionths": _millionths,
            },
            operator_only=frozenset(
                {
                    "cluster_count",
                    "linked_record_count",
                    "comparisons",
                    "threshold_thousandths",
                    "threshold_method",
                    "estimated_precision_millionths",
                    "estimated_recall_millionths",
                    "estimated_f1_millionths",
                }
            ),
        ),
        "keys_released": _EventRule(
            required={"party": _label, "key_count": _count, "keys_sha256": _SHA256},
            optional={"run_id": _token},
            private=frozenset({"key_count", "keys_sha256"}),
        ),
        "payload_deleted": _EventRule(
            required={"party": _label, "payload_sha256": _SHA256, "reason": _token},
            private=frozenset({"payload_sha256"}),
        ),
        # An upload the LU refused (its manifest, or a header that cannot match the project
        # or the other parties): the reason code, never a value.
        "upload_refused": _EventRule(
            required={"party": _label, "reason": _token},
            optional={"manifest_sha256": _SHA256},
            private=frozenset({"reason", "manifest_sha256"}),
        ),
        # Spines (docs/spine.md). The operator created a spine: its parties and binding.
        "spine_created": _EventRule(
            required={
                "spine": _label,
                "parties": _label_list,
                "schema_fingerprint": _SHA256,
                "max_merge_share_millionths": _millionths,
            },
            project_required=False,
        ),
        # A project's run linked into a spine: how many people it matched and added. The
        # figures come from every party's data: operator (and auditor) only.
        "spine_run_linked": _EventRule(
            required={
                "spine": _label,
                "run_id": _token,
                "matched_people": _count,
                "new_people": _count,
                "spine_people": _count,
                # Merges (spine people found to be one) and splits in this run: counts on this
                # event, never an event each, whose number every member could see.
                "merges": _count,
                "splits": _count,
            },
            # Clusters of the run's own records held apart along spine people (the spine's
            # evidence over a within-release link; no key changed). Absent before the count.
            optional={"held_apart": _count},
            operator_only=frozenset(
                {"matched_people", "new_people", "spine_people", "merges", "splits", "held_apart"}
            ),
        ),
        # The operator released a spine's crosswalk (old key -> current key).
        "crosswalk_released": _EventRule(
            required={"spine": _label, "row_count": _count, "crosswalk_sha256": _SHA256},
            project_required=False,
        ),
        # The operator moved a spine to a new linkage secret: its KCV binding, old and new
        # (KCVs only; the LU never holds a secret), and how many records were re-encoded.
        "spine_rotated": _EventRule(
            required={
                "spine": _label,
                "old_kcv": _KCV,
                "new_kcv": _KCV,
                "records": _count,
                "uploads": _count,
            },
            project_required=False,
        ),
        # Retention removed records' encodings from a spine; people and keys stay.
        "spine_pruned": _EventRule(
            required={
                "spine": _label,
                "keep_runs": _count,
                "records_removed": _count,
                "records_kept": _count,
                "people_without_records": _count,
            },
            project_required=False,
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
            private=frozenset({"certificate_fingerprint"}),
        ),
    }
)


def withheld_from(event: str, details: Mapping[str, object], viewer: str | None) -> frozenset[str]:
    """The detail keys of an ``event`` entry a reader may not see: none for the operator or
    an auditor (``viewer`` None); for member party ``viewer``, the event's operator-only
    details, and its private details unless the entry is about ``viewer`` itself."""
    rule = ALLOWED_EVENTS.get(event)
    if rule is None or viewer is None:
        return frozenset()
    hidden = set(rule.operator_only)
    if details.get("party") != viewer:
        hidden |= rule.private
    return frozenset(hidden)


def _shown(name: object) -> str:
    """A name for an error message: echoed only if it looks like an identifier, since a
    tampered log line (or a careless caller) could put anything there."""
    if isinstance(name, str) and _TOKEN.fullmatch(name):
        return repr(name)
    return "(not shown: not a plain name)"


def _rule(event: object) -> _EventRule:
    rule = ALLOWED_EVENTS.get(event) if isinstance(event, str) else None
    if rule is None:
        raise AuditError(f"event {_shown(event)} is not on the audit allow-list")
    return rule


def _check_project(event: str, rule: _EventRule, project_id: object) -> None:
    if project_id is None:
        if rule.project_required:
            raise AuditError(f"{event} needs a project id")
    else:
        _label(project_id, f"{event} project id")


def check_event(
    event: str,
    *,
    project_id: str | None,
    details: Mapping[str, object],
    withheld: Iterable[str] = (),
) -> dict[str, _Value]:
    """Return the details, normalised, if ``event`` may be logged with them; else raise.

    ``withheld`` names keys shown only as field hashes (a party's view): they count as
    present. Raises :class:`AuditError` naming the event and key (never the value) when the
    event is not allow-listed, a key is missing or unknown, or a value has the wrong shape.
    """
    rule = _rule(event)
    _check_project(event, rule, project_id)
    if not isinstance(details, Mapping):
        raise AuditError(f"{event} details must be a mapping")
    hidden = set(withheld)
    unknown = sorted(_shown(key) for key in (set(details) | hidden) if key not in rule.keys)
    if unknown:
        raise AuditError(f"{event} does not allow detail key(s) {', '.join(unknown)}")
    if hidden & set(details):
        raise AuditError(f"{event} shows a detail and withholds it too")
    missing = sorted(key for key in rule.required if key not in details and key not in hidden)
    if missing:
        raise AuditError(f"{event} is missing detail key(s) {', '.join(missing)}")
    checked: dict[str, _Value] = {}
    for key, value in details.items():
        checker = rule.required.get(key) or rule.optional[key]
        checked[key] = checker(value, f"{event}.{key}")
    return dict(sorted(checked.items()))


def format_timestamp(moment: datetime) -> str:
    """UTC, microseconds, ``Z`` suffix: the one timestamp spelling in audit records."""
    if moment.tzinfo is None:
        raise AuditError("audit timestamps must be timezone-aware")
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _check_bytes(value: object, length: int, what: str) -> None:
    if not isinstance(value, bytes) or len(value) != length:
        raise AuditError(f"{what} must be {length} bytes")


def _check_common(
    log_id: object, sequence: object, previous_hash: object, entry_hash: object, signature: object
) -> None:
    _hex(16)(log_id, "log id")
    _count(sequence, "sequence")
    _check_bytes(previous_hash, 32, "previous hash")
    _check_bytes(entry_hash, 32, "entry hash")
    _check_bytes(signature, 64, "signature (Ed25519)")


def _check_timestamp(value: object) -> None:
    if not isinstance(value, str) or not _TIMESTAMP.fullmatch(value):
        raise AuditError("timestamp must be UTC like 2026-01-31T12:00:00.000000Z")


# -- the commitments -------------------------------------------------------------------


def _canonical_json(value: Any) -> bytes:
    return canonical_json(value)


def _derived_salt(salt: bytes, label: bytes) -> bytes:
    return hmac.new(salt, label, hashlib.sha256).digest()[:SALT_BYTES]


def field_salt(salt: bytes, key: str) -> bytes:
    """The salt of one detail's field hash, derived from the entry salt."""
    return _derived_salt(salt, b"field\0" + key.encode("ascii"))


def body_salt(salt: bytes) -> bytes:
    """The salt of an entry's body hash, derived from the entry salt."""
    return _derived_salt(salt, b"body\0")


def field_hash(key: str, value: _Value, salt: bytes) -> bytes:
    """The commitment to one detail under its field salt."""
    return hashlib.sha256(_FIELD_PREFIX + salt + _canonical_json([key, value])).digest()


def project_tag(view_key: bytes, project_id: str) -> bytes:
    """The tag a project's entries carry: only holders of its view key can compute it."""
    return hmac.new(view_key, _PROJECT_PREFIX + project_id.encode("ascii"), hashlib.sha256).digest()


def _body_hash(
    *,
    event: str,
    timestamp: str,
    project_id: str | None,
    fields: Mapping[str, bytes],
    salt: bytes,
) -> bytes:
    body = {
        "event": event,
        "timestamp": timestamp,
        "project_id": project_id,
        "fields": {key: digest.hex() for key, digest in fields.items()},
        "salt": salt.hex(),
    }
    return hashlib.sha256(_BODY_PREFIX + _canonical_json(body)).digest()


def _entry_hash(
    *, log_id: str, sequence: int, previous_hash: bytes, tag: bytes | None, body: bytes
) -> bytes:
    return hashlib.sha256(
        _canonical_json(
            {
                "format": ENTRY_FORMAT,
                "log_id": log_id,
                "sequence": sequence,
                "previous_hash": previous_hash.hex(),
                "project": None if tag is None else tag.hex(),
                "body": body.hex(),
            }
        )
    ).digest()


# -- the three forms of a log line -----------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class AuditEntry:
    """One full, signed, chained audit record. Build new ones with :func:`build_entry`."""

    log_id: str
    sequence: int
    timestamp: str
    event: str
    project_id: str | None
    details: Mapping[str, _Value]
    salt: bytes
    project_tag: bytes | None
    previous_hash: bytes
    entry_hash: bytes
    signature: bytes

    def __post_init__(self) -> None:
        _check_common(
            self.log_id, self.sequence, self.previous_hash, self.entry_hash, self.signature
        )
        _check_timestamp(self.timestamp)
        checked = check_event(self.event, project_id=self.project_id, details=self.details)
        object.__setattr__(self, "details", MappingProxyType(checked))
        _check_bytes(self.salt, SALT_BYTES, "entry salt")
        _check_tag(self.project_tag, self.project_id)

    @property
    def withheld(self) -> Mapping[str, bytes]:
        return MappingProxyType({})

    def field_hashes(self) -> dict[str, bytes]:
        return {
            key: field_hash(key, value, field_salt(self.salt, key))
            for key, value in self.details.items()
        }

    def body_hash(self) -> bytes:
        return _body_hash(
            event=self.event,
            timestamp=self.timestamp,
            project_id=self.project_id,
            fields=self.field_hashes(),
            salt=body_salt(self.salt),
        )

    def computed_hash(self) -> bytes:
        """The entry hash recomputed from what this line shows."""
        return _entry_hash(
            log_id=self.log_id,
            sequence=self.sequence,
            previous_hash=self.previous_hash,
            tag=self.project_tag,
            body=self.body_hash(),
        )

    def view_for(self, viewer: str | None) -> AuditEntry | EntryView:
        """This entry as ``viewer`` (a member party; None: the operator or an auditor) may
        see it: whole for the operator and auditors, partial for a party."""
        if viewer is None:
            return self
        hidden = withheld_from(self.event, self.details, viewer)
        hashes = self.field_hashes()
        return EntryView(
            log_id=self.log_id,
            sequence=self.sequence,
            timestamp=self.timestamp,
            event=self.event,
            project_id=self.project_id,
            details={key: value for key, value in self.details.items() if key not in hidden},
            field_salts={
                key: field_salt(self.salt, key) for key in self.details if key not in hidden
            },
            withheld={key: hashes[key] for key in self.details if key in hidden},
            body_salt=body_salt(self.salt),
            project_tag=self.project_tag,
            previous_hash=self.previous_hash,
            entry_hash=self.entry_hash,
            signature=self.signature,
        )

    def stub(self) -> RedactedEntry:
        """This entry as another project's reader sees it: tag and body hash only."""
        return RedactedEntry(
            log_id=self.log_id,
            sequence=self.sequence,
            project_tag=self.project_tag,
            body_hash=self.body_hash(),
            previous_hash=self.previous_hash,
            entry_hash=self.entry_hash,
            signature=self.signature,
        )


def _check_tag(tag: object, project_id: object) -> None:
    if project_id is None:
        if tag is not None:
            raise AuditError("an entry without a project carries no project tag")
    else:
        _check_bytes(tag, 32, "project tag")


@dataclass(frozen=True, slots=True, kw_only=True)
class EntryView:
    """An entry of the viewer's own project with some details withheld (a party's view):
    the shown details with their field salts, the withheld ones as field hashes only."""

    log_id: str
    sequence: int
    timestamp: str
    event: str
    project_id: str | None
    details: Mapping[str, _Value]
    field_salts: Mapping[str, bytes]
    withheld: Mapping[str, bytes]
    body_salt: bytes
    project_tag: bytes | None
    previous_hash: bytes
    entry_hash: bytes
    signature: bytes

    def __post_init__(self) -> None:
        _check_common(
            self.log_id, self.sequence, self.previous_hash, self.entry_hash, self.signature
        )
        _check_timestamp(self.timestamp)
        checked = check_event(
            self.event, project_id=self.project_id, details=self.details, withheld=self.withheld
        )
        object.__setattr__(self, "details", MappingProxyType(checked))
        if set(self.field_salts) != set(checked):
            raise AuditError(f"{self.event}: a shown detail has no field salt, or a salt no detail")
        for salt in self.field_salts.values():
            _check_bytes(salt, SALT_BYTES, "field salt")
        for digest in self.withheld.values():
            _check_bytes(digest, 32, "withheld field hash")
        _check_bytes(self.body_salt, SALT_BYTES, "body salt")
        _check_tag(self.project_tag, self.project_id)
        object.__setattr__(self, "field_salts", MappingProxyType(dict(self.field_salts)))
        object.__setattr__(self, "withheld", MappingProxyType(dict(self.withheld)))

    def computed_hash(self) -> bytes:
        fields = {
            key: field_hash(key, value, self.field_salts[key])
            for key, value in self.details.items()
        }
        fields.update(self.withheld)
        body = _body_hash(
            event=self.event,
            timestamp=self.timestamp,
            project_id=self.project_id,
            fields=fields,
            salt=self.body_salt,
        )
        return _entry_hash(
            log_id=self.log_id,
            sequence=self.sequence,
            previous_hash=self.previous_hash,
            tag=self.project_tag,
            body=body,
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class RedactedEntry:
    """Another project's entry in a project's view: tag, body hash, link and signature.

    It keeps the chain verifiable without showing anything of the other project; its hash
    covers the tag, so whether it is of the viewer's own project can be told.
    """

    log_id: str
    sequence: int
    project_tag: bytes | None
    body_hash: bytes
    previous_hash: bytes
    entry_hash: bytes
    signature: bytes

    def __post_init__(self) -> None:
        _check_common(
            self.log_id, self.sequence, self.previous_hash, self.entry_hash, self.signature
        )
        if self.project_tag is not None:
            _check_bytes(self.project_tag, 32, "project tag")
        _check_bytes(self.body_hash, 32, "body hash")

    def computed_hash(self) -> bytes:
        return _entry_hash(
            log_id=self.log_id,
            sequence=self.sequence,
            previous_hash=self.previous_hash,
            tag=self.project_tag,
            body=self.body_hash,
        )


LogLine = AuditEntry | EntryView | RedactedEntry
"""Any line of a log or of a view of one."""


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
    salt: bytes,
    view_key: bytes | None,
) -> AuditEntry:
    """Check, commit to, hash and sign a new entry that follows ``previous_hash``.
    ``salt``: 16 fresh random bytes; ``view_key``: the project's (None without a project)."""
    checked = check_event(event, project_id=project_id, details=details)
    _check_bytes(salt, SALT_BYTES, "entry salt")
    tag = None
    if project_id is not None:
        if view_key is None:
            raise AuditError(f"{event}: an entry of a project needs the project's view key")
        tag = project_tag(view_key, project_id)
    timestamp = format_timestamp(moment)
    draft = AuditEntry(
        log_id=log_id,
        sequence=sequence,
        timestamp=timestamp,
        event=event,
        project_id=project_id,
        details=checked,
        salt=salt,
        project_tag=tag,
        previous_hash=previous_hash,
        entry_hash=bytes(32),
        signature=bytes(64),
    )
    entry_hash = draft.computed_hash()
    return AuditEntry(
        log_id=log_id,
        sequence=sequence,
        timestamp=timestamp,
        event=event,
        project_id=project_id,
        details=checked,
        salt=salt,
        project_tag=tag,
        previous_hash=previous_hash,
        entry_hash=entry_hash,
        signature=signing_key.sign(_ENTRY_PREFIX + entry_hash),
    )


# -- JSON lines ------------------------------------------------------------------------


def _hex_or_none(value: bytes | None) -> str | None:
    return None if value is None else value.hex()


def line_to_json(line: LogLine) -> str:
    """One JSON line (no newline) for any form of entry."""
    record: dict[str, Any] = {
        "format": ENTRY_FORMAT,
        "log_id": line.log_id,
        "sequence": line.sequence,
        "project_tag": _hex_or_none(line.project_tag),
        "previous_hash": line.previous_hash.hex(),
        "entry_hash": line.entry_hash.hex(),
        "signature": line.signature.hex(),
    }
    if isinstance(line, RedactedEntry):
        record.update(redacted=True, body_hash=line.body_hash.hex())
        return _canonical_json(record).decode("ascii")
    record.update(
        timestamp=line.timestamp,
        event=line.event,
        project_id=line.project_id,
        details=dict(line.details),
    )
    if isinstance(line, AuditEntry):
        record["salt"] = line.salt.hex()
    else:
        record.update(
            view=True,
            field_salts={key: salt.hex() for key, salt in line.field_salts.items()},
            withheld={key: digest.hex() for key, digest in line.withheld.items()},
            body_salt=line.body_salt.hex(),
        )
    return _canonical_json(record).decode("ascii")


def _bytes_of(record: Mapping[str, Any], key: str, length: int) -> bytes:
    value = record.get(key)
    _hex(length)(value, key)
    return bytes.fromhex(str(value))


def _optional_bytes(record: Mapping[str, Any], key: str, length: int) -> bytes | None:
    return None if record.get(key) is None else _bytes_of(record, key, length)


def _hex_map(value: object, length: int, what: str) -> dict[str, bytes]:
    if not isinstance(value, dict):
        raise AuditError(f"{what} must be a mapping")
    result = {}
    for key, item in value.items():
        _hex(length)(item, what)
        result[str(key)] = bytes.fromhex(item)
    return result


_COMMON_FIELDS = frozenset(
    {"format", "log_id", "sequence", "project_tag", "previous_hash", "entry_hash", "signature"}
)
_STUB_FIELDS = _COMMON_FIELDS | {"redacted", "body_hash"}
_BODY_FIELDS = _COMMON_FIELDS | {"timestamp", "event", "project_id", "details"}
_FULL_FIELDS = _BODY_FIELDS | {"salt"}
_VIEW_FIELDS = _BODY_FIELDS | {"view", "field_salts", "withheld", "body_salt"}


def line_from_json(text: str | bytes) -> LogLine:
    """Parse one log line, whichever its form; anything malformed is an
    :class:`AuditError` (never echoing the line)."""
    try:
        record = json.loads(text)
    except (ValueError, UnicodeDecodeError):
        raise AuditError("line is not valid JSON (torn or edited)") from None
    if not isinstance(record, dict):
        raise AuditError("line is not a JSON object")
    if record.get("format") != ENTRY_FORMAT:
        raise AuditError(f"unknown entry format; this build reads {ENTRY_FORMAT}")
    if isinstance(record.get("sequence"), bool):
        raise AuditError("line has a malformed sequence")
    common: dict[str, Any] = {
        "log_id": record.get("log_id"),
        "sequence": record.get("sequence"),
        "project_tag": _optional_bytes(record, "project_tag", 32),
        "previous_hash": _bytes_of(record, "previous_hash", 32),
        "entry_hash": _bytes_of(record, "entry_hash", 32),
        "signature": _bytes_of(record, "signature", 64),
    }
    if record.get("redacted") is True:
        if set(record) != _STUB_FIELDS:
            raise AuditError("redacted line does not have exactly the redacted entry fields")
        return RedactedEntry(body_hash=_bytes_of(record, "body_hash", 32), **common)
    if not isinstance(record.get("details"), dict):
        raise AuditError("line has malformed details")
    body: dict[str, Any] = {
        "timestamp": record.get("timestamp"),
        "event": record.get("event"),
        "project_id": record.get("project_id"),
        "details": record["details"],
    }
    if record.get("view") is True:
        if set(record) != _VIEW_FIELDS:
            raise AuditError("partial line does not have exactly the partial entry fields")
        return EntryView(
            field_salts=_hex_map(record["field_salts"], SALT_BYTES, "field salts"),
            withheld=_hex_map(record["withheld"], 32, "withheld field hashes"),
            body_salt=_bytes_of(record, "body_salt", SALT_BYTES),
            **body,
            **common,
        )
    if set(record) != _FULL_FIELDS:
        raise AuditError("line does not have exactly the audit entry fields")
    return AuditEntry(salt=_bytes_of(record, "salt", SALT_BYTES), **body, **common)


@dataclass(frozen=True, slots=True, kw_only=True)
class ParsedLog:
    """The entries of a log file and, if its last line was cut short, where."""

    entries: tuple[LogLine, ...]
    torn_line: int | None = None


def parse_log(data: bytes) -> ParsedLog:
    """Parse a JSON-lines log. A malformed complete line raises naming its entry index; an
    incomplete last line (no newline: a crash during an append that was never acknowledged)
    is reported in ``torn_line`` rather than parsed."""
    lines = data.split(b"\n")
    tail = lines.pop()  # b"" when the file ends with a newline
    entries: list[LogLine] = []
    for index, line in enumerate(lines):
        try:
            entries.append(line_from_json(line))
        except AuditError as error:
            raise AuditError(error.message, entry=index) from None
    return ParsedLog(entries=tuple(entries), torn_line=len(entries) if tail else None)


# -- signed heads ----------------------------------------------------------------------


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
        _check_bytes(self.entry_hash, 32, "head entry hash")
        _check_timestamp(self.timestamp)
        _check_bytes(self.signature, 64, "head signature (Ed25519)")

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


def sign_head(entry: LogLine, *, signing_key: Ed25519PrivateKey, moment: datetime) -> SignedHead:
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
        entry_hash=_bytes_of(record, "entry_hash", 32),
        timestamp=record["timestamp"],
        signature=_bytes_of(record, "signature", 64),
    )


# -- verification ----------------------------------------------------------------------


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
    entries: Sequence[LogLine],
    public_key: Ed25519PublicKey,
    *,
    heads: Iterable[SignedHead] = (),
    expected_log_id: str | None = None,
    verify_signatures: Sequence[int] | None = None,
) -> ChainReport:
    """Check a whole log (or view), in file order, against the LU public key and any heads.

    Every entry's hash is recomputed from what its line shows and every signature checked
    (``verify_signatures`` may name a subset of indices, used when the LU re-opens its own
    log: the chain then binds the rest). Stops at the first bad entry, since nothing after
    it can be trusted.
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
        if entry.computed_hash() != entry.entry_hash:
            return _broken(
                count, index, "edited", f"entry {index} was edited after it was signed", log_id
            )
        if index in to_verify or not isinstance(entry, AuditEntry):
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


@dataclass(frozen=True, slots=True, kw_only=True)
class TagProblem:
    """An entry whose project tag is not its project's."""

    index: int
    message: str


def check_project_tags(entries: Iterable[LogLine]) -> TagProblem | None:
    """The first entry whose project tag is not its project's, or None. A project's view key is read from its ``project_created`` entry; an entry that
    comes before it is left to the project rules (which fail it)."""
    view_keys: dict[str, bytes] = {}
    for index, entry in enumerate(entries):
        if isinstance(entry, RedactedEntry) or entry.project_id is None:
            continue
        if entry.event == "project_created" and "view_key" in entry.details:
            view_keys.setdefault(entry.project_id, bytes.fromhex(str(entry.details["view_key"])))
        key = view_keys.get(entry.project_id)
        if key is not None and entry.project_tag != project_tag(key, entry.project_id):
            return TagProblem(
                index=index,
                message=f"entry {index}'s project tag is not its project's: it would hide as "
                "another project's entry in the project's view",
            )
    return None
