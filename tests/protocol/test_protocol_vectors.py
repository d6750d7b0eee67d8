"""tests/vectors/protocol_vectors.json: the wire contract's digests and signatures, each
recomputed here through the production path a linkage unit or party takes (the Node.js
conformance client reproduces them from docs/protocol.md alone), and the file is exactly
what tests/reference/make_protocol_vectors.py writes."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from auditor.verify import AuditView, verify_audit_log
from protocol import serde
from protocol.audit import (
    AuditEntry,
    EntryView,
    RedactedEntry,
    check_project_tags,
    head_from_json,
    parse_log,
    project_tag,
    verify_chain,
    withheld_from,
)
from protocol.clk_file import ClkFileHeader
from protocol.clk_layout import ClkLayout
from protocol.manifest import SignedManifest, UploadManifest, sign_manifest, verify_manifest
from protocol.messages import link_keys_digest
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
    assert link_keys_digest(positions, keys) == case["keys_sha256"]


def _parsed(lines: list[str]) -> tuple[AuditEntry | EntryView | RedactedEntry, ...]:
    return parse_log("".join(line + "\n" for line in lines).encode("ascii")).entries


def test_audit_log_hashes_signatures_and_head() -> None:
    audit = VECTORS["audit"]
    public_key = Ed25519PublicKey.from_public_bytes(bytes.fromhex(audit["public_key"]))
    entries = _parsed(audit["lines"])
    assert all(isinstance(entry, AuditEntry) for entry in entries)
    assert [entry.entry_hash.hex() for entry in entries] == audit["entry_hashes"]
    head = head_from_json(audit["signed_head"])
    report = verify_chain(entries, public_key, heads=[head])
    assert report.intact, report.message
    assert check_project_tags(entries) is None
    # A changed byte of a detail is an edit.
    edited = audit["lines"][0].replace('"members":"moj,dfe"', '"members":"dfe,moj"')
    assert edited != audit["lines"][0]
    assert verify_chain(_parsed([edited, *audit["lines"][1:]]), public_key).problem == "edited"


def test_audit_intermediate_values_are_the_production_ones() -> None:
    audit = VECTORS["audit"]
    for entry, steps in zip(_parsed(audit["lines"]), audit["intermediates"], strict=True):
        assert isinstance(entry, AuditEntry)
        assert {key: digest.hex() for key, digest in entry.field_hashes().items()} == {
            key: field["field_hash"] for key, field in steps["fields"].items()
        }
        assert (
            hashlib.sha256(
                bytes.fromhex(audit["prefixes_hex"]["body_hash"]) + steps["body_canonical"].encode()
            ).hexdigest()
            == steps["body_hash"]
            == entry.body_hash().hex()
        )
        assert hashlib.sha256(steps["entry_canonical"].encode()).hexdigest() == steps["entry_hash"]
    for tag in audit["project_tags"]:
        assert (
            project_tag(bytes.fromhex(tag["view_key"]), tag["project_id"]).hex()
            == (tag["project_tag"])
        )


def test_a_members_view_withholds_what_the_policy_says_and_still_verifies(tmp_path: Path) -> None:
    audit = VECTORS["audit"]
    view = audit["view"]
    public_key = Ed25519PublicKey.from_public_bytes(bytes.fromhex(audit["public_key"]))
    full = _parsed(audit["lines"])
    shown = _parsed(view["lines"])
    assert [line.entry_hash for line in shown] == [entry.entry_hash for entry in full]
    for entry, line in zip(full, shown, strict=True):
        assert isinstance(entry, AuditEntry)
        if entry.project_id == view["project_id"]:
            assert isinstance(line, EntryView)
            hidden = withheld_from(entry.event, entry.details, view["party"]) & set(entry.details)
            assert set(line.withheld) == hidden and set(line.details) == set(entry.details) - hidden
        else:
            assert isinstance(line, RedactedEntry)
    assert any(isinstance(line, EntryView) and line.withheld for line in shown)
    head = head_from_json(audit["signed_head"])
    assert verify_chain(shown, public_key, heads=[head]).intact
    # The auditor's verifier takes it as moj's view of p1.
    path = tmp_path / "view.jsonl"
    path.write_text("".join(line + "\n" for line in view["lines"]), "ascii")
    report = verify_audit_log(
        path,
        public_key,
        heads=[head],
        check_wire=False,
        view=AuditView(project_id=view["project_id"], party=view["party"]),
    )
    assert not [check for check in report.checks if check.status == "FAIL"], report.to_text()


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
    assert header.key_context == fields["key_context"]
    if header.format_version == 2:
        assert header.clk_layout.to_record() == fields["groups"]
