"""Signing upload manifests at the party, right after an encode.

Stage: audit, department side. The encoder calls :func:`write_manifest` once the encoded
file exists (or :func:`write_manifest_for_file`, which takes the facts from the file's
header). The party's Ed25519 signing key is its own (``create_party_signing_key``, 0600),
distinct from the linkage secret: it proves authorship, it encodes nothing. The format and
verification live in ``protocol/manifest.py``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from protocol.clk_file import read_clks
from protocol.manifest import (
    SignedManifest,
    UploadManifest,
    read_manifest,
    sign_manifest,
    verify_manifest,
    write_signed_manifest,
)
from protocol.signing import create_signing_key, load_signing_key, public_key_pem

__all__ = [
    "create_party_signing_key",
    "load_party_signing_key",
    "party_public_key_pem",
    "read_manifest",
    "verify_manifest",
    "write_manifest",
    "write_manifest_for_file",
]

create_party_signing_key = create_signing_key
load_party_signing_key = load_signing_key
party_public_key_pem = public_key_pem


def _utc_now() -> datetime:
    return datetime.now(UTC)


def write_manifest(
    path: Path | str,
    *,
    signing_key: Ed25519PrivateKey,
    project_id: str,
    party: str,
    record_count: int,
    clk_bits: int,
    payload_sha256: bytes,
    schema_fingerprint: bytes,
    kcv: bytes,
    software_version: str,
    clock: Callable[[], datetime] = _utc_now,
    nonce: Callable[[int], bytes] = os.urandom,
) -> SignedManifest:
    """Build, sign and atomically write the manifest of one encode; return it.

    Byte fields are raw bytes (``payload_sha256`` and ``schema_fingerprint`` 32, ``kcv`` 16).
    The nonce makes two encodes of the same data distinguishable (replays are refused).
    """
    manifest = UploadManifest(
        project_id=project_id,
        party=party,
        record_count=record_count,
        clk_bits=clk_bits,
        payload_sha256=payload_sha256,
        schema_fingerprint=schema_fingerprint,
        kcv=kcv,
        software_version=software_version,
        created_at=clock().astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        nonce=nonce(16),
    )
    signed = sign_manifest(manifest, signing_key)
    write_signed_manifest(signed, path)
    return signed


def write_manifest_for_file(
    encoded_path: Path | str,
    manifest_path: Path | str,
    *,
    signing_key: Ed25519PrivateKey,
    party: str,
    software_version: str,
) -> SignedManifest:
    """The manifest of an existing encoded file, from its header, after checking the payload
    digest (a manifest must never vouch for bytes nobody hashed)."""
    header, _ = read_clks(encoded_path, verify=True)
    return write_manifest(
        manifest_path,
        signing_key=signing_key,
        project_id=header.project_id,
        party=party,
        record_count=header.record_count,
        clk_bits=header.clk_bits,
        payload_sha256=header.payload_sha256,
        schema_fingerprint=header.schema_fingerprint,
        kcv=header.kcv,
        software_version=software_version,
    )
