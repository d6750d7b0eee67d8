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
    AuditEntry,
    LogLine,
    body_salt,
    build_entry,
    field_salt,
    head_to_json,
    line_to_json,
    project_tag,
    sign_head,
)
from protocol.canonical import canonical_json
from protocol.clk_file import ClkFileHeader
from protocol.clk_layout import ClkLayout, GroupLayout
from protocol.manifest import FieldCount, UploadManifest, sign_manifest
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
    (
        "dedupe-and-link: moj deduplicated, cluster cap unset (1000)",
        {
            "project_id": "p5",
            "member_party_ids": ["moj", "dfe"],
            "schema_fingerprint": SCHEMA.hex(),
            "matching": {"deduplicated_party_ids": ["moj"]},
        },
    ),
    (
        "dedupe-only: one member, deduplicated, cluster cap 50, a grouped layout",
        {
            "project_id": "p6",
            "member_party_ids": ["moj"],
            "schema_fingerprint": SCHEMA.hex(),
            "matching": {
                "threshold": 0.9,
                "deduplicated_party_ids": ["moj"],
                "max_cluster_size": 50,
            },
            "groups": LAYOUT.to_record(),
        },
    ),
    (
        "both deduplicated, listed out of order",
        {
            "project_id": "p7",
            "member_party_ids": ["moj", "dfe"],
            "schema_fingerprint": SCHEMA.hex(),
            "matching": {"deduplicated_party_ids": ["moj", "dfe"], "max_cluster_size": 2},
        },
    ),
    (
        "a grouped project with a match-probability cut and automatic blocking",
        {
            "project_id": "p8",
            "member_party_ids": ["moj", "dfe"],
            "schema_fingerprint": SCHEMA.hex(),
            "matching": {"blocking": "BLOCKING_AUTO", "match_probability": 0.75},
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
    message.matching.deduplicated_party_ids.extend(matching.get("deduplicated_party_ids", []))
    if "max_cluster_size" in matching:
        message.matching.max_cluster_size = matching["max_cluster_size"]
    if "match_probability" in matching:
        message.matching.match_probability = matching["match_probability"]
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
        "unkeyed_check": True,
        "rows_read": 1003,
        "rows_skipped": 3,
        "field_counts": (
            FieldCount(field="surname", missing=0, blanked=2),
            FieldCount(field="date_of_birth", missing=17, blanked=0),
        ),
    }
    vectors = []
    for name, layout, context in (
        ("one record-level CLK (file format 1, layout null)", None, None),
        ("grouped (file format 2)", LAYOUT, None),
        # The key "key_context" is written only when set, so the first two are unchanged.
        ("encoded for spine people (key_context spine:people)", None, "spine:people"),
    ):
        manifest = UploadManifest(**common, layout=layout, key_context=context)
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
        # Written out here rather than calling protocol.messages.link_keys_digest, so the
        # test that compares the two checks something.
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


# Two projects' view keys (in the log, the LU derives them from a secret of its own).
VIEW_KEYS = {"p1": bytes(range(100, 116)), "p2": bytes(range(116, 132))}
AUDIT_EVENTS: list[tuple[str | None, str, dict[str, str | int]]] = [
    (
        "p1",
        "project_created",
        {
            "settings_fingerprint": hashlib.sha256(b"settings").hexdigest(),
            "members": "moj,dfe",
            "schema_fingerprint": SCHEMA.hex(),
            "retention": "delete-after-run",
            "hold_days": 30,
            "view_key": VIEW_KEYS["p1"].hex(),
            "link_model": "dedupe-and-link",
            "deduplicated": "moj",
            "max_cluster_size": 1000,
        },
    ),
    (
        None,
        "party_authenticated",
        {
            "party": "moj",
            "role": "party",
            "certificate_fingerprint": hashlib.sha256(b"c").hexdigest(),
        },
    ),
    (
        "p1",
        "upload_committed",
        {
            "party": "moj",
            "record_count": 9007199254740991,
            "clk_bits": 1024,
            "payload_sha256": PAYLOAD.hex(),
            "schema_fingerprint": SCHEMA.hex(),
            "kcv": KCV.hex(),
        },
    ),
    (
        "p2",
        "project_created",
        {
            "settings_fingerprint": hashlib.sha256(b"settings 2").hexdigest(),
            "members": "dfe,hmrc",
            "schema_fingerprint": SCHEMA.hex(),
            "retention": "delete-after-release",
            "hold_days": 7,
            "view_key": VIEW_KEYS["p2"].hex(),
            "link_model": "one-to-one",
        },
    ),
    (
        "p1",
        "upload_committed",
        {
            "party": "dfe",
            "record_count": 40,
            "clk_bits": 1024,
            "payload_sha256": hashlib.sha256(b"dfe payload").hexdigest(),
            "schema_fingerprint": SCHEMA.hex(),
            "kcv": KCV.hex(),
            "manifest_sha256": hashlib.sha256(b"dfe manifest").hexdigest(),
        },
    ),
    ("p2", "checks_failed", {"party": "dfe", "aspect": "kcv"}),
    (
        "p1",
        "run_finished",
        {
            "run_id": "r1",
            "cluster_count": 12,
            "linked_record_count": 30,
            "comparisons": 400,
            "threshold_thousandths": 875,
            "threshold_method": "operator",
        },
    ),
]
VIEW_PROJECT, VIEW_PARTY = "p1", "moj"


def _intermediates(entry: AuditEntry) -> dict[str, Any]:
    """What an implementer recomputes on the way to an entry's hash, written out with the
    plain canonical form (not the audit module's own functions) so both are checked."""
    fields = {
        key: {
            "field_salt": field_salt(entry.salt, key).hex(),
            "field_hash": digest.hex(),
        }
        for key, digest in entry.field_hashes().items()
    }
    body = canonical_json(
        {
            "event": entry.event,
            "timestamp": entry.timestamp,
            "project_id": entry.project_id,
            "fields": {key: digest.hex() for key, digest in entry.field_hashes().items()},
            "salt": body_salt(entry.salt).hex(),
        }
    ).decode("ascii")
    hashed = canonical_json(
        {
            "format": "bloomlink-audit-v2",
            "log_id": entry.log_id,
            "sequence": entry.sequence,
            "previous_hash": entry.previous_hash.hex(),
            "project": None if entry.project_tag is None else entry.project_tag.hex(),
            "body": entry.body_hash().hex(),
        }
    ).decode("ascii")
    return {
        "fields": fields,
        "body_salt": body_salt(entry.salt).hex(),
        "body_canonical": body,
        "body_hash": entry.body_hash().hex(),
        "entry_canonical": hashed,
        "entry_hash": entry.entry_hash.hex(),
    }


def audit_vectors() -> dict[str, Any]:
    key = Ed25519PrivateKey.from_private_bytes(LU_SEED)
    start = datetime(2026, 1, 31, 12, 0, tzinfo=UTC)
    log_id = "0123456789abcdef0123456789abcdef"
    previous = GENESIS_HASH
    entries: list[AuditEntry] = []
    for sequence, (project, event, details) in enumerate(AUDIT_EVENTS):
        entry = build_entry(
            signing_key=key,
            log_id=log_id,
            sequence=sequence,
            previous_hash=previous,
            moment=start + timedelta(seconds=sequence, microseconds=sequence * 7),
            event=event,
            project_id=project,
            details=details,
            salt=hashlib.sha256(b"entry salt %d" % sequence).digest()[:16],
            view_key=None if project is None else VIEW_KEYS[project],
        )
        entries.append(entry)
        previous = entry.entry_hash
    # Member moj's view of p1, as FetchAuditLog{project_id: "p1"} gives it to moj.
    view: list[LogLine] = [
        entry.view_for(VIEW_PARTY) if entry.project_id == VIEW_PROJECT else entry.stub()
        for entry in entries
    ]
    head = sign_head(entries[-1], signing_key=key, moment=start + timedelta(minutes=1))
    return {
        "signing_seed": LU_SEED.hex(),
        "public_key": _raw_public(key),
        "prefixes_hex": {
            "entry_signature": b"bloomlink-audit-entry-v2\0".hex(),
            "head_signature": b"bloomlink-audit-head-v2\0".hex(),
            "field_hash": b"bloomlink-audit-field-v2\0".hex(),
            "body_hash": b"bloomlink-audit-body-v2\0".hex(),
            "project_tag": b"bloomlink-audit-project-v2\0".hex(),
        },
        "project_tags": [
            {
                "project_id": project,
                "view_key": view_key.hex(),
                "project_tag": project_tag(view_key, project).hex(),
            }
            for project, view_key in VIEW_KEYS.items()
        ],
        "lines": [line_to_json(entry) for entry in entries],
        "intermediates": [_intermediates(entry) for entry in entries],
        "entry_hashes": [entry.entry_hash.hex() for entry in entries],
        "view": {
            "project_id": VIEW_PROJECT,
            "party": VIEW_PARTY,
            "lines": [line_to_json(line) for line in view],
        },
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
        (
            "format 1, key context",
            ClkFileHeader(
                project_id="release-2",
                schema_fingerprint=SCHEMA,
                kcv=KCV,
                clk_bits=1024,
                record_count=1000,
                payload_sha256=PAYLOAD,
                key_context="spine:people",
            ),
        ),
        (
            "format 2, three groups, key context",
            ClkFileHeader(
                project_id="probation-2026",
                schema_fingerprint=SCHEMA,
                kcv=KCV,
                clk_bits=LAYOUT.total_bits,
                record_count=3,
                payload_sha256=PAYLOAD,
                format_version=2,
                layout=LAYOUT,
                key_context="spine:people",
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
                    "key_context": header.key_context,
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
