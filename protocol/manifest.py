"""Upload manifests: a party's signed statement of what one encode produced.

Stage: audit (written by the party after encoding, checked by the linkage unit on upload and
by the auditor against the LU's ``upload_committed`` entry). The format lives in
``protocol`` because both sides read it; signing lives in ``party/manifest.py``.

A manifest binds project, party, record count, CLK length, payload SHA-256, schema
fingerprint, KCV, software version, creation time, a random nonce, and the clean leak scan
the party ran on exactly this payload (how many sensitive strings, from how many rows, and
whether the CLKs were checked against a re-encoding under a known key): the party writes a
manifest only for a payload its scan found clean. It also carries the encode's counts - rows
read and skipped, and per schema field how many records have no value and how many values
were blanked - so the linkage unit and the auditor see each party's field completeness.
Counts only: never a value, and nothing the linkage unit could not estimate from the CLKs.
A grouped encoding (file format 2) also records its layout: each group's name, bits and the
hardening applied with its parameters (``layout``, protocol/clk_layout.py; ``null`` for a
single record-level CLK, file format 1). An encoding made for a spine (``encode --spine``)
also records its **key context** (``key_context``, ``spine:NAME``: what its keys and KCV were
derived for, as its file header says; protocol/labels.py), so the context is signed and the
linkage unit refuses a header whose context the manifest does not state. The key is written
only when set: a manifest without a key context has exactly the bytes it had before the
field, and its signature still holds.

There is one manifest format, ``bloomlink-manifest-v2``, for both file formats. A
``bloomlink-manifest-v1`` manifest (from an earlier build) is refused with a message to
re-encode: it lacks the fields above, and nothing here re-signs a party's statement. Its
**canonical bytes** are the RFC 8785 canonical JSON (protocol/canonical.py) of the record with
its ``format`` field; the party signs exactly those bytes with its Ed25519 key. Every value is
an ASCII string, a whole number below 2^53, a boolean or null, where RFC 8785 gives the same
bytes as compact sorted-key ASCII ``json.dumps``. The manifest file is JSON:
``{"manifest": {...}, "public_key": <raw key hex>, "signature": <hex>}``. The embedded public
key only says which key signed; trust comes from comparing it with the party's registered
key (``expected_public_key``).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from protocol.atomic_file import atomic_output
from protocol.canonical import MAX_SAFE_INTEGER, canonical_json
from protocol.clk_file import check_clk_bits
from protocol.clk_layout import ClkLayout
from protocol.errors import AuditError, ConfigurationError
from protocol.labels import check_key_context, check_label, spine_of_key_context

__all__ = [
    "MANIFEST_FORMAT",
    "FieldCount",
    "SignedManifest",
    "UploadManifest",
    "manifest_mismatches",
    "read_manifest",
    "sign_manifest",
    "verify_manifest",
    "write_signed_manifest",
]

MANIFEST_FORMAT = "bloomlink-manifest-v2"
_FIELD_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")
_VERSION = re.compile(r"^[0-9A-Za-z][0-9A-Za-z.+_-]{0,63}$")
_TIMESTAMP = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{6})?Z$")
_FIELDS = (
    "format",
    "project_id",
    "party",
    "record_count",
    "clk_bits",
    "payload_sha256",
    "schema_fingerprint",
    "kcv",
    "software_version",
    "created_at",
    "nonce",
    "leak_scan_strings",
    "leak_scan_rows",
    "unkeyed_check",
    "rows_read",
    "rows_skipped",
    "field_counts",
    "layout",
)
# Written into the record only when set (old signatures and vectors stay valid).
_OPTIONAL_FIELDS = ("key_context",)


def _count(value: object, what: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_SAFE_INTEGER:
        raise ConfigurationError(f"manifest {what} must be a whole number below 2**53")


@dataclass(frozen=True, slots=True, kw_only=True)
class FieldCount:
    """One schema field's counts over an encode: records with no value, values blanked."""

    field: str
    missing: int
    blanked: int

    def __post_init__(self) -> None:
        if not isinstance(self.field, str) or not _FIELD_NAME.fullmatch(self.field):
            raise ConfigurationError("manifest field counts must name a schema field")
        _count(self.missing, "missing count")
        _count(self.blanked, "blanked count")


def _bytes_field(value: object, length: int, what: str) -> None:
    if not isinstance(value, bytes) or len(value) != length:
        raise ConfigurationError(f"manifest {what} must be {length} bytes")


@dataclass(frozen=True, slots=True, kw_only=True)
class UploadManifest:
    """What one encode produced. Byte fields are raw bytes; the file spells them in hex."""

    project_id: str
    party: str
    record_count: int
    clk_bits: int
    payload_sha256: bytes
    schema_fingerprint: bytes
    kcv: bytes
    software_version: str
    created_at: str
    nonce: bytes
    leak_scan_strings: int
    leak_scan_rows: int
    unkeyed_check: bool = False
    """Whether the scan compared the CLKs with a re-encoding under a publicly known key (a
    file made without the linkage secret fails it)."""
    rows_read: int = 0
    """Rows of the extract the encode read (0: not recorded, e.g. a re-scan at submit)."""
    rows_skipped: int = 0
    field_counts: tuple[FieldCount, ...] = ()
    layout: ClkLayout | None = None
    """A grouped encoding's groups and hardening (file format 2); None for one CLK."""
    key_context: str | None = None
    """What the keys and the KCV were derived for in place of the project id, as the encoded
    file's header says (``spine:NAME`` for ``encode --spine``); None for the project's own."""

    def __post_init__(self) -> None:
        check_label(self.project_id, what="manifest project id")
        check_label(self.party, what="manifest party")
        if isinstance(self.record_count, bool) or not isinstance(self.record_count, int):
            raise ConfigurationError("manifest record count must be a whole number")
        if not 0 <= self.record_count <= MAX_SAFE_INTEGER:
            raise ConfigurationError("manifest record count must be between 0 and 2**53 - 1")
        check_clk_bits(self.clk_bits)
        _bytes_field(self.payload_sha256, 32, "payload digest")
        _bytes_field(self.schema_fingerprint, 32, "schema fingerprint")
        _bytes_field(self.kcv, 16, "key check value")
        _bytes_field(self.nonce, 16, "nonce")
        if not isinstance(self.software_version, str) or not _VERSION.fullmatch(
            self.software_version
        ):
            raise ConfigurationError("manifest software version must be a short version string")
        if not isinstance(self.created_at, str) or not _TIMESTAMP.fullmatch(self.created_at):
            raise ConfigurationError("manifest creation time must be UTC like 2026-01-31T12:00:00Z")
        for name in ("leak_scan_strings", "leak_scan_rows", "rows_read", "rows_skipped"):
            _count(getattr(self, name), name)
        if not isinstance(self.unkeyed_check, bool):
            raise ConfigurationError("manifest unkeyed_check must be true or false")
        if not all(isinstance(item, FieldCount) for item in self.field_counts):
            raise ConfigurationError("manifest field counts must be FieldCount values")
        names = [item.field for item in self.field_counts]
        if len(set(names)) != len(names):
            raise ConfigurationError("manifest field counts name a field twice")
        if any(item.missing > self.record_count for item in self.field_counts):
            raise ConfigurationError("manifest field counts exceed the record count")
        if self.layout is not None:
            if not isinstance(self.layout, ClkLayout):
                raise ConfigurationError("manifest layout must be a layout")
            if self.layout.total_bits != self.clk_bits:
                raise ConfigurationError("manifest layout must add up to its CLK bits")
        if self.key_context is not None:
            if not isinstance(self.key_context, str):
                raise ConfigurationError("manifest key context must be spine: and a spine name")
            check_key_context(self.key_context)

    def to_record(self) -> dict[str, Any]:
        record: dict[str, Any] = {
            "format": MANIFEST_FORMAT,
            "project_id": self.project_id,
            "party": self.party,
            "record_count": self.record_count,
            "clk_bits": self.clk_bits,
            "payload_sha256": self.payload_sha256.hex(),
            "schema_fingerprint": self.schema_fingerprint.hex(),
            "kcv": self.kcv.hex(),
            "software_version": self.software_version,
            "created_at": self.created_at,
            "nonce": self.nonce.hex(),
            "leak_scan_strings": self.leak_scan_strings,
            "leak_scan_rows": self.leak_scan_rows,
            "unkeyed_check": self.unkeyed_check,
            "rows_read": self.rows_read,
            "rows_skipped": self.rows_skipped,
            "field_counts": [
                {"field": item.field, "missing": item.missing, "blanked": item.blanked}
                for item in self.field_counts
            ],
            "layout": None if self.layout is None else self.layout.to_record(),
        }
        if self.key_context is not None:
            record["key_context"] = self.key_context
        return record

    def canonical_bytes(self) -> bytes:
        """The bytes the party signs: RFC 8785 canonical JSON of :meth:`to_record`."""
        return canonical_json(self.to_record())

    @property
    def sha256(self) -> str:
        """Hex SHA-256 of the canonical bytes: the ``manifest_sha256`` in the LU's log."""
        return hashlib.sha256(self.canonical_bytes()).hexdigest()

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> UploadManifest:
        # The format is checked first so that a manifest from an earlier build (v1, fewer
        # fields) is told to re-encode rather than that its fields are wrong.
        if record.get("format") != MANIFEST_FORMAT:
            raise ConfigurationError(
                f"unknown manifest format; this build reads {MANIFEST_FORMAT} only (re-encode "
                "with this version of bloomlink to sign a new one)"
            )
        if not set(_FIELDS) <= set(record) <= set(_FIELDS) | set(_OPTIONAL_FIELDS):
            raise ConfigurationError("manifest does not have exactly the manifest fields")
        if "key_context" in record and record["key_context"] is None:
            # Absent, never null: one manifest has one spelling, so one canonical form.
            raise ConfigurationError("manifest key context is absent or a spine's, never null")
        layout = record["layout"]
        try:
            return cls(
                project_id=record["project_id"],
                party=record["party"],
                record_count=record["record_count"],
                clk_bits=record["clk_bits"],
                payload_sha256=bytes.fromhex(record["payload_sha256"]),
                schema_fingerprint=bytes.fromhex(record["schema_fingerprint"]),
                kcv=bytes.fromhex(record["kcv"]),
                software_version=record["software_version"],
                created_at=record["created_at"],
                nonce=bytes.fromhex(record["nonce"]),
                leak_scan_strings=record["leak_scan_strings"],
                leak_scan_rows=record["leak_scan_rows"],
                unkeyed_check=record["unkeyed_check"],
                rows_read=record["rows_read"],
                rows_skipped=record["rows_skipped"],
                field_counts=tuple(
                    FieldCount(
                        field=item["field"], missing=item["missing"], blanked=item["blanked"]
                    )
                    for item in record["field_counts"]
                ),
                layout=None if layout is None else ClkLayout.from_record(layout),
                key_context=record.get("key_context"),
            )
        except (TypeError, ValueError, KeyError):
            raise ConfigurationError("manifest has a malformed hex field") from None


def _raw_public(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


@dataclass(frozen=True, slots=True, kw_only=True)
class SignedManifest:
    """A manifest, its Ed25519 signature and the public key that made it."""

    manifest: UploadManifest
    signature: bytes
    public_key: bytes

    def __post_init__(self) -> None:
        _bytes_field(self.signature, 64, "signature")
        _bytes_field(self.public_key, 32, "public key")

    def to_json(self) -> str:
        return json.dumps(
            {
                "manifest": self.manifest.to_record(),
                "public_key": self.public_key.hex(),
                "signature": self.signature.hex(),
            },
            sort_keys=True,
            indent=2,
        )


def sign_manifest(manifest: UploadManifest, signing_key: Ed25519PrivateKey) -> SignedManifest:
    """Sign ``manifest`` with the party's key."""
    return SignedManifest(
        manifest=manifest,
        signature=signing_key.sign(manifest.canonical_bytes()),
        public_key=_raw_public(signing_key.public_key()),
    )


def write_signed_manifest(signed: SignedManifest, path: Path | str) -> Path:
    """Write a signed manifest file atomically (world-readable: it holds no secret)."""
    target = Path(path)
    with atomic_output(target, mode=0o644) as handle:
        handle.write((signed.to_json() + "\n").encode("ascii"))
    return target


def read_manifest(path: Path | str) -> SignedManifest:
    """Parse a manifest file (does not verify it: see :func:`verify_manifest`)."""
    try:
        record = json.loads(Path(path).read_bytes())
    except OSError as error:
        raise ConfigurationError(f"{path}: cannot read manifest: {error.strerror}") from None
    except (ValueError, UnicodeDecodeError):
        raise ConfigurationError(f"{path}: manifest is not valid JSON") from None
    if not isinstance(record, dict) or set(record) != {"manifest", "public_key", "signature"}:
        raise ConfigurationError(f"{path}: manifest file does not have the expected fields")
    try:
        return SignedManifest(
            manifest=UploadManifest.from_record(record["manifest"]),
            signature=bytes.fromhex(record["signature"]),
            public_key=bytes.fromhex(record["public_key"]),
        )
    except (TypeError, ValueError, AttributeError):
        raise ConfigurationError(f"{path}: manifest has malformed fields") from None


def verify_manifest(
    signed: SignedManifest, *, expected_public_key: Ed25519PublicKey | None = None
) -> UploadManifest:
    """Return the manifest if its signature holds (and, if given, it is the party's key).

    Raises :class:`AuditError` otherwise; the message names the party, never a value.
    """
    party = signed.manifest.party
    if expected_public_key is not None and _raw_public(expected_public_key) != signed.public_key:
        raise AuditError(f"manifest of party {party} is signed by a key that is not the party's")
    try:
        Ed25519PublicKey.from_public_bytes(signed.public_key).verify(
            signed.signature, signed.manifest.canonical_bytes()
        )
    except InvalidSignature:
        raise AuditError(f"manifest of party {party} has an invalid signature") from None
    return signed.manifest


def manifest_mismatches(
    manifest: UploadManifest, *, project_id: str | None, details: Mapping[str, object]
) -> tuple[str, ...]:
    """Which aspects of an ``upload_committed`` entry disagree with the manifest (empty if
    none). Aspects are field names; values are never returned. A grouped encoding's layout
    is compared by its digest (``layout_sha256``, absent for a single CLK); the key context
    by the spine it names (``spine``, absent for the project's own context), reported as
    ``key_context``."""
    expected: dict[str, object] = {
        "party": manifest.party,
        "record_count": manifest.record_count,
        "clk_bits": manifest.clk_bits,
        "payload_sha256": manifest.payload_sha256.hex(),
        "schema_fingerprint": manifest.schema_fingerprint.hex(),
        "kcv": manifest.kcv.hex(),
        "layout_sha256": None if manifest.layout is None else manifest.layout.sha256,
    }
    wrong = [key for key, value in expected.items() if details.get(key) != value]
    spine = None if manifest.key_context is None else spine_of_key_context(manifest.key_context)
    if details.get("spine") != spine:
        wrong.append("key_context")
    if project_id != manifest.project_id:
        wrong.insert(0, "project_id")
    if "manifest_sha256" in details and details["manifest_sha256"] != manifest.sha256:
        wrong.append("manifest_sha256")
    return tuple(wrong)
