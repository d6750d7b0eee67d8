"""Wire defaults (proto/protocol/pb/linkage.proto): a field left at its proto3 default means
the documented default, never a refusal, and ``auto_run`` means the same in Python and on
the wire; numbers in canonical documents stay below 2**53."""

from __future__ import annotations

import hashlib

import pytest

from protocol import serde
from protocol.audit import check_event
from protocol.errors import AuditError, ConfigurationError, InvalidRequestError
from protocol.manifest import UploadManifest
from protocol.messages import LinkKeyMode, ProjectSettings
from protocol.pb import linkage_pb2 as pb

SCHEMA = hashlib.sha256(b"schema").digest()


def request(**fields: object) -> pb.CreateProjectRequest:
    return pb.CreateProjectRequest(
        project_id="p1", member_party_ids=["moj", "dfe"], schema_fingerprint=SCHEMA, **fields
    )


def test_unset_settings_mean_the_python_defaults() -> None:
    settings = serde.project_settings_from_proto(request())
    assert settings == ProjectSettings(
        project_id="p1", members=("moj", "dfe"), schema_fingerprint=SCHEMA
    )
    assert settings.blocking == "lsh"
    assert settings.link_key_mode is LinkKeyMode.SHARED
    assert settings.auto_run is True and settings.threshold is None


def test_auto_run_false_travels_and_unset_is_true() -> None:
    off = serde.project_settings_from_proto(request(auto_run=False))
    assert off.auto_run is False
    wire = serde.project_settings_to_proto(off)
    assert wire.HasField("auto_run") and wire.auto_run is False
    parsed = pb.CreateProjectRequest.FromString(wire.SerializeToString())
    assert serde.project_settings_from_proto(parsed).auto_run is False
    assert serde.project_settings_from_proto(request(auto_run=True)).auto_run is True


def test_explicit_enum_values_are_kept() -> None:
    settings = serde.project_settings_from_proto(
        request(
            matching=pb.MatchingSettings(blocking=pb.BLOCKING_NONE),
            link_key_mode=pb.LINK_KEY_MODE_PER_PARTY,
        )
    )
    assert settings.blocking == "none" and settings.link_key_mode is LinkKeyMode.PER_PARTY


@pytest.mark.parametrize("field", ["blocking", "link_key_mode"])
def test_an_enum_value_this_version_does_not_know_is_refused(field: str) -> None:
    message = request()
    if field == "blocking":
        message.matching.blocking = 7  # type: ignore[assignment]
    else:
        message.link_key_mode = 7  # type: ignore[assignment]
    with pytest.raises(InvalidRequestError, match="unknown to this linkage unit"):
        serde.project_settings_from_proto(message)


def test_audit_counts_stop_at_the_largest_exact_json_integer() -> None:
    details = {"party": "moj", "aspect": "kcv"}
    check_event("checks_failed", project_id="p1", details=details)
    released = {"party": "moj", "key_count": 2**53 - 1, "keys_sha256": "ab" * 32}
    check_event("keys_released", project_id="p1", details=released)
    with pytest.raises(AuditError, match=r"2\*\*53 - 1"):
        check_event("keys_released", project_id="p1", details={**released, "key_count": 2**53})


def test_manifest_counts_stop_at_the_largest_exact_json_integer() -> None:
    fields: dict[str, object] = {
        "project_id": "p1",
        "party": "moj",
        "record_count": 2**53 - 1,
        "clk_bits": 1024,
        "payload_sha256": bytes(32),
        "schema_fingerprint": SCHEMA,
        "kcv": bytes(16),
        "software_version": "0.1.0",
        "created_at": "2026-01-31T12:00:00Z",
        "nonce": bytes(16),
        "leak_scan_strings": 1,
        "leak_scan_rows": 1,
    }
    UploadManifest(**fields)  # type: ignore[arg-type]
    for name in ("record_count", "leak_scan_strings", "leak_scan_rows"):
        with pytest.raises(ConfigurationError, match="2\\*\\*53"):
            UploadManifest(**{**fields, name: 2**53})  # type: ignore[arg-type]
