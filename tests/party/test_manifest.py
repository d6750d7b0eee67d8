"""Signed manifests: round trip, every tampering refused, matched to the LU's log entry."""

from __future__ import annotations

import json
import stat
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from party.manifest import (
    EncodeCounts,
    check_manifest_for_file,
    create_party_signing_key,
    read_manifest,
    verify_manifest,
    write_manifest,
    write_manifest_for_file,
)
from protocol import serde
from protocol.canonical import canonical_json
from protocol.clk_file import ClkFileWriter
from protocol.clk_layout import ClkLayout, GroupLayout
from protocol.errors import AuditError, ConfigurationError
from protocol.manifest import FieldCount, SignedManifest, manifest_mismatches
from protocol.messages import UploadHeader
from protocol.pb import linkage_pb2 as pb

FINGERPRINT = bytes(range(32))
KCV = bytes(range(16))


def _signed(path: Path, key: Ed25519PrivateKey, **fields: Any) -> SignedManifest:
    """A manifest of MoJ's 4-row, 128-bit encode in project p1, ``fields`` changed."""
    defaults: dict[str, Any] = {
        "project_id": "p1",
        "party": "moj",
        "record_count": 4,
        "clk_bits": 128,
        "payload_sha256": b"\x11" * 32,
        "schema_fingerprint": FINGERPRINT,
        "kcv": KCV,
        "software_version": "0.1.0",
        "leak_scan_strings": 5,
        "leak_scan_rows": 4,
    }
    return write_manifest(path, signing_key=key, **{**defaults, **fields})


def sample(tmp_path: Path) -> tuple[Path, Ed25519PrivateKey]:
    key = create_party_signing_key(tmp_path / "moj-signing.pem")
    path = tmp_path / "moj.manifest.json"
    _signed(
        path,
        key,
        project_id="moj-dfe-2026",
        record_count=1000,
        clk_bits=1024,
        leak_scan_strings=50,
        leak_scan_rows=10,
        clock=lambda: datetime(2026, 1, 5, tzinfo=UTC),
        nonce=lambda size: b"\x07" * size,
    )
    return path, key


def _encoded_file(tmp_path: Path, name: str = "moj.clk", **header: Any) -> Path:
    """Four 128-bit records of project p1 in an encoded file; ``header`` adds a layout or a
    key context."""
    encoded = tmp_path / name
    with ClkFileWriter(
        encoded, project_id="p1", schema_fingerprint=FINGERPRINT, kcv=KCV, clk_bits=128, **header
    ) as writer:
        writer.write(np.arange(8, dtype=np.uint64).reshape(4, 2))
    return encoded


def _signed_file(
    encoded: Path, manifest: Path, key: Ed25519PrivateKey, **fields: Any
) -> SignedManifest:
    """MoJ's manifest of an existing encoded file (its header and payload digest)."""
    return write_manifest_for_file(
        encoded,
        manifest,
        signing_key=key,
        party="moj",
        software_version="0.1.0",
        leak_scan_strings=5,
        leak_scan_rows=4,
        **fields,
    )


def _through_the_wire(header: UploadHeader, signed: SignedManifest) -> tuple[Any, SignedManifest]:
    """The upload header message as the LU parses it off the wire, and the manifest it
    rebuilds from it (the canonical bytes it checks the signature against)."""
    message = serde.upload_header_to_proto(header, signed)
    received = serde.manifest_from_proto(
        pb.UploadRequest.FromString(message.SerializeToString()).header
    )
    assert received is not None
    return message, received


def test_round_trip_and_key_file_is_private(tmp_path: Path) -> None:
    path, key = sample(tmp_path)
    manifest = verify_manifest(read_manifest(path), expected_public_key=key.public_key())
    assert manifest.record_count == 1000 and manifest.kcv == KCV
    assert manifest.created_at == "2026-01-05T00:00:00.000000Z"
    assert stat.S_IMODE((tmp_path / "moj-signing.pem").stat().st_mode) == 0o600
    with pytest.raises(ConfigurationError, match="already exists"):
        create_party_signing_key(tmp_path / "moj-signing.pem")


@pytest.mark.parametrize(
    ("field", "value"),
    [("record_count", 999), ("party", "dfe"), ("kcv", "ff" * 16), ("clk_bits", 2048)],
)
def test_tampered_manifest_is_refused(tmp_path: Path, field: str, value: object) -> None:
    path, _ = sample(tmp_path)
    record = json.loads(path.read_text())
    record["manifest"][field] = value
    path.write_text(json.dumps(record))
    with pytest.raises(AuditError, match="invalid signature"):
        verify_manifest(read_manifest(path))


def test_manifest_signed_by_another_key_is_refused(tmp_path: Path) -> None:
    path, _ = sample(tmp_path)
    with pytest.raises(AuditError, match="not the party's"):
        verify_manifest(
            read_manifest(path), expected_public_key=Ed25519PrivateKey.generate().public_key()
        )


def test_manifest_matches_its_upload_entry(tmp_path: Path) -> None:
    path, _ = sample(tmp_path)
    manifest = read_manifest(path).manifest
    details: dict[str, object] = {
        "party": "moj",
        "record_count": 1000,
        "clk_bits": 1024,
        "payload_sha256": "11" * 32,
        "schema_fingerprint": FINGERPRINT.hex(),
        "kcv": KCV.hex(),
        "manifest_sha256": manifest.sha256,
    }
    assert manifest_mismatches(manifest, project_id="moj-dfe-2026", details=details) == ()
    details["record_count"] = 1001
    details["manifest_sha256"] = "00" * 32
    assert manifest_mismatches(manifest, project_id="other", details=details) == (
        "project_id",
        "record_count",
        "manifest_sha256",
    )


def test_manifest_for_file_checks_the_payload(tmp_path: Path) -> None:
    key = create_party_signing_key(tmp_path / "key.pem")
    signed = _signed_file(_encoded_file(tmp_path), tmp_path / "m.json", key)
    assert signed.manifest.record_count == 4 and signed.manifest.clk_bits == 128
    assert verify_manifest(read_manifest(tmp_path / "m.json")) == signed.manifest


LAYOUT = ClkLayout(
    groups=(
        GroupLayout(name="name", bits=64, hardening="diffusion:width=3,output_bits=64"),
        GroupLayout(name="birth", bits=64, hardening="blip:flip_per_65536=1311"),
    )
)


def test_a_grouped_file_gets_a_version_2_manifest_recording_its_hardening(
    tmp_path: Path,
) -> None:
    key = create_party_signing_key(tmp_path / "key.pem")
    encoded = _encoded_file(tmp_path, layout=LAYOUT)
    signed = _signed_file(
        encoded,
        tmp_path / "m.json",
        key,
        unkeyed_check=True,
        counts=EncodeCounts(
            rows_read=5,
            rows_skipped=1,
            field_counts=(FieldCount(field="surname", missing=1, blanked=0),),
        ),
    )
    record = json.loads((tmp_path / "m.json").read_text())["manifest"]
    assert record["format"] == "bloomlink-manifest-v2"
    assert record["layout"][1] == {
        "name": "birth",
        "bits": 64,
        "hardening": "blip:flip_per_65536=1311",
    }
    # One manifest format: the layout sits beside the encode's counts and the known-key check.
    assert record["unkeyed_check"] is True and record["rows_skipped"] == 1
    assert record["field_counts"] == [{"field": "surname", "missing": 1, "blanked": 0}]
    manifest = verify_manifest(read_manifest(tmp_path / "m.json"))
    assert manifest == signed.manifest and manifest.layout == LAYOUT
    assert check_manifest_for_file(encoded, tmp_path / "m.json", party="moj") == signed
    details: dict[str, object] = {
        "party": "moj",
        "record_count": 4,
        "clk_bits": 128,
        "payload_sha256": manifest.payload_sha256.hex(),
        "schema_fingerprint": FINGERPRINT.hex(),
        "kcv": KCV.hex(),
        "layout_sha256": LAYOUT.sha256,
    }
    assert manifest_mismatches(manifest, project_id="p1", details=details) == ()
    del details["layout_sha256"]
    assert manifest_mismatches(manifest, project_id="p1", details=details) == ("layout_sha256",)


def test_a_changed_hardening_breaks_the_signature(tmp_path: Path) -> None:
    key = create_party_signing_key(tmp_path / "key.pem")
    path = tmp_path / "m.json"
    _signed(path, key, layout=LAYOUT)
    record = json.loads(path.read_text())
    record["manifest"]["layout"][1]["hardening"] = "none"
    path.write_text(json.dumps(record))
    with pytest.raises(AuditError, match="invalid signature"):
        verify_manifest(read_manifest(path))
    record["manifest"]["layout"][1]["hardening"] = "blip with care"
    path.write_text(json.dumps(record))
    with pytest.raises(ConfigurationError):
        read_manifest(path)


def test_a_single_clk_manifest_has_the_same_format_with_no_layout(tmp_path: Path) -> None:
    path, _ = sample(tmp_path)
    record = json.loads(path.read_text())["manifest"]
    assert record["format"] == "bloomlink-manifest-v2" and record["layout"] is None
    assert read_manifest(path).manifest.layout is None
    del record["layout"]  # the field is required, not optional: the signed bytes are fixed
    path.write_text(json.dumps({**json.loads(path.read_text()), "manifest": record}))
    with pytest.raises(ConfigurationError, match="exactly the manifest fields"):
        read_manifest(path)


def test_a_manifest_from_an_earlier_build_is_refused_with_re_encode(tmp_path: Path) -> None:
    path, _ = sample(tmp_path)
    signed = json.loads(path.read_text())
    old = {
        key: value
        for key, value in signed["manifest"].items()
        if key not in {"unkeyed_check", "rows_read", "rows_skipped", "field_counts", "layout"}
    }
    old["format"] = "bloomlink-manifest-v1"
    path.write_text(json.dumps({**signed, "manifest": old}))
    with pytest.raises(ConfigurationError, match="re-encode with this version") as caught:
        read_manifest(path)
    assert "exactly the manifest fields" not in caught.value.message


def test_both_sides_fields_survive_the_wire_and_the_signature_still_holds(tmp_path: Path) -> None:
    # The LU rebuilds the canonical bytes from the proto: layout (field 15) and the counts
    # (20..23) must come back exactly, or a genuine manifest would fail its signature.
    key = create_party_signing_key(tmp_path / "key.pem")
    signed = _signed(
        tmp_path / "m.json",
        key,
        unkeyed_check=True,
        counts=EncodeCounts(
            rows_read=6,
            rows_skipped=2,
            field_counts=(
                FieldCount(field="surname", missing=1, blanked=1),
                FieldCount(field="date_of_birth", missing=0, blanked=0),
            ),
        ),
        layout=LAYOUT,
    )
    header = UploadHeader(
        project_id="p1",
        party_id="moj",
        schema_fingerprint=FINGERPRINT,
        kcv=KCV,
        clk_bits=128,
        record_count=4,
        payload_sha256=b"\x11" * 32,
        format_version=2,
        layout=LAYOUT,
    )
    _, received = _through_the_wire(header, signed)
    assert received == signed
    assert verify_manifest(received, expected_public_key=key.public_key()) == signed.manifest


def test_a_spine_encodings_manifest_signs_its_key_context(tmp_path: Path) -> None:
    key = create_party_signing_key(tmp_path / "key.pem")
    encoded = _encoded_file(tmp_path, key_context="spine:people")
    signed = _signed_file(encoded, tmp_path / "m.json", key, unkeyed_check=True)
    record = json.loads((tmp_path / "m.json").read_text())
    assert record["manifest"]["key_context"] == "spine:people"
    manifest = verify_manifest(
        read_manifest(tmp_path / "m.json"), expected_public_key=key.public_key()
    )
    assert manifest == signed.manifest and manifest.key_context == "spine:people"
    assert b'"key_context":"spine:people"' in manifest.canonical_bytes()
    assert check_manifest_for_file(encoded, tmp_path / "m.json", party="moj") == signed
    # The context is signed: changed, or removed, the signature no longer holds.
    for edit in ("spine:other", None):
        changed = json.loads(json.dumps(record))
        if edit is None:
            del changed["manifest"]["key_context"]
        else:
            changed["manifest"]["key_context"] = edit
        (tmp_path / "edited.json").write_text(json.dumps(changed))
        with pytest.raises(AuditError, match="manifest of party moj has an invalid signature"):
            verify_manifest(read_manifest(tmp_path / "edited.json"))
    # One spelling: absent, never null; and only a spine's context.
    for bad in (None, "people", "spine:Jane Smith"):
        changed = json.loads(json.dumps(record))
        changed["manifest"]["key_context"] = bad
        (tmp_path / "bad.json").write_text(json.dumps(changed))
        with pytest.raises(ConfigurationError) as caught:
            read_manifest(tmp_path / "bad.json")
        assert "Jane" not in caught.value.message


def test_a_manifest_without_a_key_context_signs_the_bytes_it_always_did(tmp_path: Path) -> None:
    path, key = sample(tmp_path)
    record = json.loads(path.read_text())["manifest"]
    assert "key_context" not in record
    manifest = verify_manifest(read_manifest(path), expected_public_key=key.public_key())
    assert manifest.key_context is None
    # The canonical bytes are the record's without the key (the format before the field).
    assert manifest.canonical_bytes() == canonical_json(record)


def test_a_key_context_is_checked_against_the_file_and_the_upload_entry(tmp_path: Path) -> None:
    key = create_party_signing_key(tmp_path / "key.pem")
    encoded = _encoded_file(tmp_path, key_context="spine:people")
    signed = _signed_file(encoded, tmp_path / "m.json", key, unkeyed_check=True)
    details: dict[str, object] = {
        "party": "moj",
        "record_count": 4,
        "clk_bits": 128,
        "payload_sha256": signed.manifest.payload_sha256.hex(),
        "schema_fingerprint": FINGERPRINT.hex(),
        "kcv": KCV.hex(),
        "spine": "people",
    }
    assert manifest_mismatches(signed.manifest, project_id="p1", details=details) == ()
    for spine in ("other", None):
        changed = {**details, "spine": spine}
        assert manifest_mismatches(signed.manifest, project_id="p1", details=changed) == (
            "key_context",
        )
    # The same payload under a header whose context was edited (the header digest is
    # unkeyed, anyone can recompute it): the manifest does not vouch for it.
    for name, edited in (("plain.clk", None), ("other.clk", "spine:other")):
        _encoded_file(tmp_path, name, key_context=edited)
        with pytest.raises(AuditError, match="differs on key_context") as caught:
            check_manifest_for_file(tmp_path / name, tmp_path / "m.json", party="moj")
        assert "people" not in caught.value.message.replace(str(tmp_path), "")


def test_a_key_context_survives_the_wire_and_its_signature_still_holds(tmp_path: Path) -> None:
    key = create_party_signing_key(tmp_path / "key.pem")
    encoded = _encoded_file(tmp_path, key_context="spine:people")
    signed = _signed_file(encoded, tmp_path / "m.json", key)
    header = UploadHeader(
        project_id="p1",
        party_id="moj",
        schema_fingerprint=FINGERPRINT,
        kcv=KCV,
        clk_bits=128,
        record_count=4,
        payload_sha256=signed.manifest.payload_sha256,
        key_context="spine:people",
    )
    message, received = _through_the_wire(header, signed)
    assert message.header.manifest.key_context == "spine:people"
    assert received == signed
    assert verify_manifest(received, expected_public_key=key.public_key()) == signed.manifest
    # Without a context the field stays empty on the wire and comes back as None.
    (tmp_path / "plain").mkdir()
    old = read_manifest(sample(tmp_path / "plain")[0])
    wire = serde.upload_header_to_proto(
        UploadHeader(
            project_id="moj-dfe-2026",
            party_id="moj",
            schema_fingerprint=FINGERPRINT,
            kcv=KCV,
            clk_bits=1024,
            record_count=1000,
            payload_sha256=b"\x11" * 32,
        ),
        old,
    )
    assert wire.header.manifest.key_context == ""
    assert serde.manifest_from_proto(wire.header) == old
