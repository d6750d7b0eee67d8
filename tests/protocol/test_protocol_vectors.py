"""tests/vectors/protocol_vectors.json: the wire contract's digests and signatures, each
recomputed here through the production path a linkage unit or party takes (the Node.js
conformance client reproduces them from docs/protocol.md alone), and the file is exactly
what tests/reference/make_protocol_vectors.py writes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from linkage_unit.link_keys import keys_digest
from protocol import serde
from protocol.audit import AuditEntry, head_from_json, parse_log, verify_chain
from protocol.clk_file import ClkFileHeader
from protocol.clk_layout import ClkLayout
from protocol.manifest import SignedManifest, UploadManifest, sign_manifest, verify_manifest
from protocol.pb import linkage_pb2 as pb
from tests.reference import make_protocol_vectors

PATH = Path(__file__).resolve().parents[1] / "vectors" / "protocol_vectors.json"
VECTORS: dict[str, Any] = json.loads(PATH.read_text("utf-8"))


def test_the_file_is_what_the_generator_writes() -> None:
    assert PATH.read_text("utf-8") == make_protocol_vectors.render(), (
        "protocol vectors are stale: python -m tests.reference.make_protocol_vectors "
        "(only for a deliberate, versioned change of a canonical form)"
    )


@pytest.mark.parametrize("case", VECTORS["settings_fingerprint"], ids=lambda case: case["name"])
def test_settings_fingerprint(case: dict[str, Any]) -> None:
    request = make_protocol_vectors.request_from_vector(case["request"])
    settings = serde.project_settings_from_proto(
        pb.CreateProjectRequest.FromString(request.SerializeToString())
    )
    assert settings.canonical_json() == case["document"]
    assert settings.fingerprint == case["fingerprint"]
    # GetProjectSettings answers with every default filled in; the fingerprint is the same.
    echoed = serde.project_settings_to_proto(settings)
    assert echoed.HasField("auto_run") and echoed.matching.blocking and echoed.link_key_mode
    assert serde.project_settings_from_proto(echoed).fingerprint == case["fingerprint"]


@pytest.mark.parametrize("case", VECTORS["manifest"], ids=lambda case: case["name"])
def test_manifest_signature_input_and_signature(case: dict[str, Any]) -> None:
    manifest = UploadManifest.from_record(case["record"])
    assert manifest.canonical_bytes() == case["canonical"].encode("ascii")
    assert manifest.sha256 == case["manifest_sha256"]
    key = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(case["signing_seed"]))
    signed = sign_manifest(manifest, key)  # Ed25519 is deterministic
    assert signed.signature.hex() == case["signature"]
    assert signed.public_key.hex() == case["public_key"]
    assert verify_manifest(signed, expected_public_key=key.public_key()) == manifest
    # And as the linkage unit receives it, over the wire.
    header = serde.upload_header_to_proto(
        serde.upload_header_from_proto(
            pb.UploadHeader(
                project_id=manifest.project_id,
                party_id=manifest.party,
                format_version=1 if manifest.layout is None else 2,
                schema_fingerprint=manifest.schema_fingerprint,
                kcv=manifest.kcv,
                clk_bits=manifest.clk_bits,
                record_count=manifest.record_count,
                payload_sha256=manifest.payload_sha256,
                groups=serde.layout_to_proto(manifest.layout),
            )
        ),
        SignedManifest(
            manifest=manifest,
            signature=bytes.fromhex(case["signature"]),
            public_key=bytes.fromhex(case["public_key"]),
        ),
    ).header
    received = serde.manifest_from_proto(header)
    assert received is not None and verify_manifest(received) == manifest


@pytest.mark.parametrize("case", VECTORS["layout_sha256"], ids=lambda case: case["name"])
def test_layout_digest(case: dict[str, Any]) -> None:
    layout = ClkLayout.from_record(case["layout"])
    assert layout.canonical_json() == case["canonical"]
    assert layout.sha256 == case["layout_sha256"]


@pytest.mark.parametrize("case", VECTORS["link_keys_sha256"], ids=lambda case: case["name"])
def test_link_keys_digest(case: dict[str, Any]) -> None:
    positions = [position for position, _ in case["entries"]]
    keys = [key for _, key in case["entries"]]
    assert keys_digest(positions, keys) == case["keys_sha256"]


def test_audit_entries_hash_chain_and_signatures() -> None:
    audit = VECTORS["audit"]
    public_key = Ed25519PublicKey.from_public_bytes(bytes.fromhex(audit["public_key"]))
    parsed = parse_log("".join(line + "\n" for line in audit["lines"]).encode("ascii"))
    assert [entry.entry_hash.hex() for entry in parsed.entries] == audit["entry_hashes"]
    full = [entry for entry in parsed.entries if isinstance(entry, AuditEntry)]
    assert [entry.canonical_bytes().decode("ascii") for entry in full] == audit["canonical"][
        : len(full)
    ]
    report = verify_chain(parsed.entries, public_key, heads=[head_from_json(audit["signed_head"])])
    assert report.intact, report.message
    # A changed byte of the canonical form is an edit.
    edited = audit["lines"][0].replace('"members":"moj,dfe"', '"members":"dfe,moj"')
    assert edited != audit["lines"][0]
    broken = parse_log("".join(line + "\n" for line in [edited, *audit["lines"][1:]]).encode())
    assert verify_chain(broken.entries, public_key).problem == "edited"


@pytest.mark.parametrize("case", VECTORS["clk_file_header"], ids=lambda case: case["name"])
def test_encoded_file_headers(case: dict[str, Any]) -> None:
    raw = bytes.fromhex(case["header"])
    header = ClkFileHeader.from_bytes(raw)
    fields = case["fields"]
    assert len(raw) == header.header_length == fields["header_length"]
    assert int.from_bytes(raw[10:12], "little") == fields["header_length"]
    assert header.format_version == fields["format_version"]
    assert header.project_id == fields["project_id"]
    assert header.clk_bits == fields["clk_bits"]
    assert header.record_count == fields["record_count"]
    assert header.schema_fingerprint.hex() == fields["schema_fingerprint"]
    assert header.kcv.hex() == fields["kcv"]
    assert header.payload_sha256.hex() == fields["payload_sha256"]
    assert header.payload_length == fields["payload_length"]
    if header.format_version == 2:
        assert header.clk_layout.to_record() == fields["groups"]
