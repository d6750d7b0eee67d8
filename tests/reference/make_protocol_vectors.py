"""Write tests/vectors/protocol_vectors.json: the wire contract's digests and signatures
(docs/protocol.md) on fixed inputs, for any implementation of the protocol to reproduce.

Run from the repository root: python -m tests.reference.make_protocol_vectors
The keys are fixed test keys (seed bytes 1..32 and 33..64), never used for anything real.
The outputs come from the production Python code; the Node.js conformance client
(tests/interop/vectors.mjs) reproduces every one from the specification alone, and
tests/protocol/test_protocol_vectors.py checks that this script still writes the same file.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from protocol import serde
from protocol.audit import (
    GENESIS_HASH,
    RedactedEntry,
    build_entry,
    entry_to_json,
    head_to_json,
    redacted_to_json,
    sign_head,
)
from protocol.clk_file import ClkFileHeader
from protocol.clk_layout import ClkLayout, GroupLayout
from protocol.manifest import UploadManifest, sign_manifest
from protocol.pb import linkage_pb2 as pb

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "tests" / "vectors" / "protocol_vectors.json"

PARTY_SEED = bytes(range(1, 33))
LU_SEED = bytes(range(33, 65))
SCHEMA = hashlib.sha256(b"protocol vectors schema").digest()
KCV = bytes.fromhex("00112233445566778899aabbccddeeff")
PAYLOAD = hashlib.sha256(b"protocol vectors payload").digest()
LAYOUT = ClkLayout(
    groups=(
        GroupLayout(name="name", bits=512, hardening="diffusion:width=3,output_bits=512"),
        GroupLayout(name="birth", bits=256, hardening="blip:flip_per_65536=3277"),
        GroupLayout(name="postcode", bits=256, hardening="none"),
    )
)

# CreateProjectRequest fields (bytes in hex, enums by name; a field left out is not set).
SETTINGS_REQUESTS: list[tuple[str, dict[str, Any]]] = [
    (
        "threshold 1.0 (canonical 1), everything explicit, auto_run false",
        {
            "project_id": "p1",
            "member_party_ids": ["moj", "dfe"],
            "schema_fingerprint": SCHEMA.hex(),
            "matching": {"threshold": 1.0, "blocking": "BLOCKING_LSH"},
            "link_key_mode": "LINK_KEY_MODE_SHARED",
            "retention_days": 0,
            "auto_run": False,
        },
    ),
    (
        "defaults: no threshold, blocking and link_key_mode UNSPECIFIED, auto_run not set",
        {
            "project_id": "p2",
            "member_party_ids": ["moj", "dfe"],
            "schema_fingerprint": SCHEMA.hex(),
        },
    ),
    (
        "threshold 0.1, three members out of order, per-party keys, no blocking, 30 days",
        {
            "project_id": "probation-2026",
            "member_party_ids": ["moj", "hmrc", "dfe"],
            "schema_fingerprint": SCHEMA.hex(),
            "matching": {"threshold": 0.1, "blocking": "BLOCKING_NONE"},
            "link_key_mode": "LINK_KEY_MODE_PER_PARTY",
            "retention_days": 30,
            "auto_run": True,
        },
    ),
    (
        "threshold 1e-7 (exponent form)",
        {
            "project_id": "p3",
            "member_party_ids": ["moj", "dfe"],
            "schema_fingerprint": SCHEMA.hex(),
            "matching": {"threshold": 1e-7},
        },
    ),
    (
        "a grouped project (layout)",
        {
            "project_id": "p4",
            "member_party_ids": ["moj", "dfe"],
            "schema_fingerprint": SCHEMA.hex(),
            "matching": {"threshold": 0.875},
            "groups": LAYOUT.to_record(),
        },
    ),
]


def request_from_vector(fields: dict[str, Any]) -> pb.CreateProjectRequest:
    """The CreateProjectRequest a settings vector describes."""
    message = pb.CreateProjectRequest(
        project_id=fields["project_id"],
        member_party_ids=fields["member_party_ids"],
        schema_fingerprint=bytes.fromhex(fields["schema_fingerprint"]),
        retention_days=fields.get("retention_days", 0),
        groups=[pb.ClkGroup(**group) for group in fields.get("groups", [])],
    )
    matching = fields.get("matching", {})
    if "threshold" in matching:
        message.matching.threshold = matching["threshold"]
    if "blocking" in matching:
        message.matching.blocking = pb.Blocking.Value(matching["blocking"])
    if "link_key_mode" in fields:
        message.link_key_mode = pb.LinkKeyMode.Value(fields["link_key_mode"])
    if "auto_run" in fields:
        message.auto_run = fields["auto_run"]
    return message


def settings_vectors() -> list[dict[str, Any]]:
    vectors = []
    for name, fields in SETTINGS_REQUESTS:
        settings = serde.project_settings_from_proto(request_from_vector(fields))
        vectors.append(
            {
                "name": name,
                "request": fields,
                "document": settings.canonical_json(),
                "fingerprint": settings.fingerprint,
            }
        )
    return vectors


def _raw_public(key: Ed25519PrivateKey) -> str:
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        .hex()
    )


def manifest_vectors() -> list[dict[str, Any]]:
    key = Ed25519PrivateKey.from_private_bytes(PARTY_SEED)
    common: dict[str, Any] = {
        "project_id": "p1",
        "party": "moj",
        "record_count": 1000,
        "clk_bits": 1024,
        "payload_sha256": PAYLOAD,
        "schema_fingerprint": SCHEMA,
        "kcv": KCV,
        "software_version": "0.1.0",
        "created_at": "2026-01-31T12:00:00.000000Z",
        "nonce": bytes(range(200, 216)),
        "leak_scan_strings": 500,
        "leak_scan_rows": 100,
    }
    vectors = []
    for name, layout in (("format v1: one record-level CLK", None), ("format v2: grouped", LAYOUT)):
        manifest = UploadManifest(**common, layout=layout)
        signed = sign_manifest(manifest, key)
        canonical = manifest.canonical_bytes()
        vectors.append(
            {
                "name": name,
                "record": manifest.to_record(),
                "canonical": canonical.decode("ascii"),
                "manifest_sha256": manifest.sha256,
                "signing_seed": PARTY_SEED.hex(),
                "public_key": signed.public_key.hex(),
                "signature": signed.signature.hex(),
            }
        )
    return vectors


def layout_vectors() -> list[dict[str, Any]]:
    single = ClkLayout.single(1024)
    return [
        {
            "name": name,
            "layout": layout.to_record(),
            "canonical": layout.canonical_json(),
            "layout_sha256": layout.sha256,
        }
        for name, layout in (("three groups", LAYOUT), ("a format 1 file's one group", single))
    ]


def link_key_vectors() -> list[dict[str, Any]]:
    cases: list[tuple[str, list[tuple[int, str]]]] = [
        ("no keys", []),
        (
            "three keys in release order",
            [
                (2, "mfrggzdfmztwq2lknnwg23tpoa"),
                (0, "onswg4tfoqqgk3tdn5sgk4tfmq"),
                (10, "mfrggzdfmztwq2lknnwg23tpoa"),
            ],
        ),
    ]
    vectors = []
    for name, entries in cases:
        digest = hashlib.sha256()
        for position, key in entries:
            digest.update(f"{position},{key}\n".encode("ascii"))
        vectors.append(
            {
                "name": name,
                "entries": [[position, key] for position, key in entries],
                "keys_sha256": digest.hexdigest(),
            }
        )
    return vectors


def audit_vectors() -> dict[str, Any]:
    key = Ed25519PrivateKey.from_private_bytes(LU_SEED)
    start = datetime(2026, 1, 31, 12, 0, tzinfo=UTC)
    log_id = "0123456789abcdef0123456789abcdef"
    events: list[tuple[str, str | None, dict[str, str | int]]] = [
        (
            "project_created",
            "p1",
            {
                "settings_fingerprint": hashlib.sha256(b"settings").hexdigest(),
                "members": "moj,dfe",
                "schema_fingerprint": SCHEMA.hex(),
                "retention": "delete-after-run",
            },
        ),
        (
            "party_authenticated",
            None,
            {
                "party": "moj",
                "role": "party",
                "certificate_fingerprint": hashlib.sha256(b"cert").hexdigest(),
            },
        ),
        (
            "upload_committed",
            "p1",
            {
                "party": "moj",
                "record_count": 9007199254740991,
                "clk_bits": 1024,
                "payload_sha256": PAYLOAD.hex(),
                "schema_fingerprint": SCHEMA.hex(),
                "kcv": KCV.hex(),
            },
        ),
        ("checks_failed", "p2", {"party": "dfe", "aspect": "kcv"}),
    ]
    previous = GENESIS_HASH
    lines: list[str] = []
    hashes: list[str] = []
    canonical: list[str] = []
    entries = []
    for sequence, (event, project, details) in enumerate(events):
        entry = build_entry(
            signing_key=key,
            log_id=log_id,
            sequence=sequence,
            previous_hash=previous,
            moment=start + timedelta(seconds=sequence, microseconds=sequence * 7),
            event=event,
            project_id=project,
            details=details,
        )
        entries.append(entry)
        canonical.append(entry.canonical_bytes().decode("ascii"))
        hashes.append(entry.entry_hash.hex())
        # The last entry as another project's view shows it: a redacted stub.
        last = sequence == len(events) - 1
        lines.append(redacted_to_json(RedactedEntry.of(entry)) if last else entry_to_json(entry))
        previous = entry.entry_hash
    head = sign_head(entries[-1], signing_key=key, moment=start + timedelta(minutes=1))
    return {
        "signing_seed": LU_SEED.hex(),
        "public_key": _raw_public(key),
        "entry_signature_prefix_hex": b"bloomlink-audit-entry-v1\0".hex(),
        "head_signature_prefix_hex": b"bloomlink-audit-head-v1\0".hex(),
        "lines": lines,
        "canonical": canonical,
        "entry_hashes": hashes,
        "signed_head": head_to_json(head),
    }


def header_vectors() -> list[dict[str, Any]]:
    vectors = []
    for name, header in (
        (
            "format 1",
            ClkFileHeader(
                project_id="p1",
                schema_fingerprint=SCHEMA,
                kcv=KCV,
                clk_bits=1024,
                record_count=1000,
                payload_sha256=PAYLOAD,
            ),
        ),
        (
            "format 2, three groups",
            ClkFileHeader(
                project_id="probation-2026",
                schema_fingerprint=SCHEMA,
                kcv=KCV,
                clk_bits=LAYOUT.total_bits,
                record_count=3,
                payload_sha256=PAYLOAD,
                format_version=2,
                layout=LAYOUT,
            ),
        ),
    ):
        vectors.append(
            {
                "name": name,
                "header": header.to_bytes().hex(),
                "fields": {
                    "format_version": header.format_version,
                    "header_length": header.header_length,
                    "clk_bits": header.clk_bits,
                    "record_count": header.record_count,
                    "schema_fingerprint": header.schema_fingerprint.hex(),
                    "kcv": header.kcv.hex(),
                    "payload_sha256": header.payload_sha256.hex(),
                    "project_id": header.project_id,
                    "groups": (header.clk_layout.to_record() if header.format_version == 2 else []),
                    "payload_length": header.payload_length,
                },
            }
        )
    return vectors


def vectors() -> dict[str, Any]:
    return {
        "about": (
            "Digests and signatures of the bloomlink.v1 wire contract (docs/protocol.md) on "
            "fixed inputs. Provenance: tests/vectors/README.md."
        ),
        "settings_fingerprint": settings_vectors(),
        "manifest": manifest_vectors(),
        "layout_sha256": layout_vectors(),
        "link_keys_sha256": link_key_vectors(),
        "audit": audit_vectors(),
        "clk_file_header": header_vectors(),
    }


def render() -> str:
    return json.dumps(vectors(), indent=1, ensure_ascii=False) + "\n"


def main() -> None:
    OUT.write_text(render(), encoding="utf-8")
    print(f"wrote {OUT.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
