"""The manifest policy as pure functions: a refusal (reason and error) or None, decided from
the header, the manifest, the policy and the time alone."""

from __future__ import annotations

import os
from dataclasses import replace
from datetime import UTC, datetime, timedelta

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from linkage_unit.manifest_policy import (
    ManifestPolicy,
    freshness_refusal,
    manifest_refusal,
    nonce_refusal,
)
from linkage_unit.service import upload_committed
from protocol.audit_events import event_record
from protocol.errors import AlreadyExistsError, InvalidRequestError, PermissionDeniedError
from protocol.manifest import UploadManifest, sign_manifest
from protocol.messages import UploadHeader
from protocol.vocabulary import UploadRefusal
from tests.service_helpers import KCV, SCHEMA_FINGERPRINT

HEADER = UploadHeader(
    project_id="p1",
    party_id="moj",
    schema_fingerprint=SCHEMA_FINGERPRINT,
    kcv=KCV,
    clk_bits=256,
    record_count=10,
    payload_sha256=bytes(range(32)),
)
NOW = datetime(2026, 3, 1, 12, tzinfo=UTC)


def _manifest(key, **changes):
    manifest = UploadManifest(
        project_id="p1",
        party="moj",
        record_count=10,
        clk_bits=256,
        payload_sha256=HEADER.payload_sha256,
        schema_fingerprint=SCHEMA_FINGERPRINT,
        kcv=KCV,
        software_version="0.1.0",
        created_at=NOW.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        nonce=os.urandom(16),
        leak_scan_strings=3,
        leak_scan_rows=3,
    )
    return sign_manifest(replace(manifest, **changes), key)


def _refusal(policy, manifest):
    details = event_record(upload_committed(HEADER, manifest)).details
    return manifest_refusal(policy, HEADER, manifest, upload_details=details)


def test_a_good_manifest_passes_and_each_fault_has_its_reason() -> None:
    key, other = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    assert _refusal(ManifestPolicy(), _manifest(key)) is None
    assert _refusal(ManifestPolicy(), None) is None
    cases = [
        (ManifestPolicy(require_manifest=True), None, UploadRefusal.MANIFEST_MISSING),
        (ManifestPolicy(), _manifest(key, party="dfe"), UploadRefusal.MANIFEST_PARTY),
        (
            ManifestPolicy(party_keys={"dfe": other.public_key()}),
            _manifest(key),
            UploadRefusal.MANIFEST_KEY,
        ),
        (
            ManifestPolicy(party_keys={"moj": other.public_key()}),
            _manifest(key),
            UploadRefusal.MANIFEST_SIGNATURE,
        ),
        (ManifestPolicy(), _manifest(key, record_count=11), UploadRefusal.MANIFEST_MISMATCH),
        (ManifestPolicy(), _manifest(key, leak_scan_strings=0), UploadRefusal.MANIFEST_NO_SCAN),
    ]
    for policy, manifest, reason in cases:
        refusal = _refusal(policy, manifest)
        assert refusal is not None and refusal.reason is reason
        assert isinstance(refusal.error, InvalidRequestError | PermissionDeniedError)


def test_time_and_nonce_refusals() -> None:
    manifest = _manifest(Ed25519PrivateKey.generate())
    policy = ManifestPolicy()
    assert freshness_refusal(policy, manifest, now=NOW.timestamp()) is None
    ahead = freshness_refusal(policy, manifest, now=(NOW - timedelta(hours=1)).timestamp())
    old = freshness_refusal(policy, manifest, now=(NOW + timedelta(days=31)).timestamp())
    assert ahead is not None and "ahead" in ahead.error.message
    assert old is not None and "days old" in old.error.message
    assert nonce_refusal(None) is None
    used = nonce_refusal("ab" * 32)
    assert used is not None and isinstance(used.error, AlreadyExistsError)


def test_a_header_whose_key_context_the_manifest_does_not_state_is_refused() -> None:
    """The key context is signed: a header edited to another context (or to none, or to one
    the manifest never stated) under the party's genuine manifest is a mismatch, named by
    aspect and party, never by value."""
    key = Ed25519PrivateKey.generate()
    spined = replace(HEADER, key_context="spine:people")
    manifest = _manifest(key, key_context="spine:people")

    def refusal(header, signed):
        details = event_record(upload_committed(header, signed)).details
        return manifest_refusal(ManifestPolicy(), header, signed, upload_details=details)

    assert refusal(spined, manifest) is None
    assert event_record(upload_committed(spined, manifest)).details["spine"] == "people"
    assert "spine" not in event_record(upload_committed(HEADER, manifest)).details
    for header, signed in (
        (HEADER, manifest),
        (replace(HEADER, key_context="spine:other"), manifest),
        (spined, _manifest(key)),
    ):
        refused = refusal(header, signed)
        assert refused is not None and refused.reason is UploadRefusal.MANIFEST_MISMATCH
        assert isinstance(refused.error, InvalidRequestError)
        message = refused.error.message
        assert "party moj's upload manifest" in message and "on key_context;" in message
        assert "people" not in message and "other" not in message and "spine:" not in message
