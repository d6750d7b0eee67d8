"""Signing upload manifests at the party, right after an encode.

Stage: audit, department side. ``bloomlink encode`` calls :func:`vouch_for_encoded_file`
once the encoded file exists: it leak-scans the file for the extract's own sensitive strings
and, only if the scan is clean, signs a manifest recording the scan beside the file
(``<encoded>.manifest.json``). ``bloomlink submit`` sends that manifest with the upload and
refuses a file whose manifest does not vouch for exactly its payload. The party's Ed25519 signing key is its own (``create_party_signing_key``, 0600),
distinct from the linkage secret: it proves authorship, it encodes nothing. The format and
verification live in ``protocol/manifest.py``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import numpy.typing as npt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from party.leak_scan import LeakScanReport, ScanProgress, UnkeyedReencoder, scan_encoded_file
from party.sensitive_strings import SensitiveStrings
from protocol.clk_file import GROUPED_FORMAT_VERSION, read_clks, read_header
from protocol.clk_layout import ClkLayout
from protocol.errors import AuditError, ConfigurationError
from protocol.labels import spine_of_key_context
from protocol.manifest import (
    FieldCount,
    SignedManifest,
    UploadManifest,
    manifest_mismatches,
    read_manifest,
    sign_manifest,
    verify_manifest,
    write_signed_manifest,
)
from protocol.signing import create_signing_key, load_signing_key, public_key_pem

__all__ = [
    "SIGNING_KEY_ENV_VAR",
    "EncodeCounts",
    "check_manifest_for_file",
    "create_party_signing_key",
    "manifest_path_for",
    "vouch_for_encoded_file",
    "load_party_signing_key",
    "party_public_key_pem",
    "read_manifest",
    "verify_manifest",
    "write_manifest",
    "write_manifest_for_file",
]

SIGNING_KEY_ENV_VAR = "BLOOMLINK_SIGNING_KEY"

create_party_signing_key = create_signing_key
load_party_signing_key = load_signing_key
party_public_key_pem = public_key_pem


@dataclass(frozen=True, slots=True, kw_only=True)
class EncodeCounts:
    """What an encode counted, for its manifest: rows, and per field missing and blanked."""

    rows_read: int
    rows_skipped: int
    field_counts: tuple[FieldCount, ...]


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
    leak_scan_strings: int,
    leak_scan_rows: int,
    unkeyed_check: bool = False,
    counts: EncodeCounts | None = None,
    layout: ClkLayout | None = None,
    key_context: str | None = None,
    clock: Callable[[], datetime] = _utc_now,
    nonce: Callable[[int], bytes] = os.urandom,
) -> SignedManifest:
    """Build, sign and atomically write the manifest of one encode; return it.

    Byte fields are raw bytes (``payload_sha256`` and ``schema_fingerprint`` 32, ``kcv`` 16).
    ``layout``: a grouped encoding's groups and the hardening applied to each (None for a
    single record-level CLK). ``key_context``: what the keys and KCV were derived for, as
    the encoded file's header says (``spine:NAME`` for ``encode --spine``; None for the
    project's own), signed so that nobody can change the header's without the party's key.
    The nonce makes two encodes of the same data distinguishable
    (replays are refused).
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
        leak_scan_strings=leak_scan_strings,
        leak_scan_rows=leak_scan_rows,
        unkeyed_check=unkeyed_check,
        rows_read=counts.rows_read if counts else 0,
        rows_skipped=counts.rows_skipped if counts else 0,
        field_counts=counts.field_counts if counts else (),
        layout=layout,
        key_context=key_context,
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
    leak_scan_strings: int,
    leak_scan_rows: int,
    unkeyed_check: bool = False,
    counts: EncodeCounts | None = None,
) -> SignedManifest:
    """The manifest of an existing encoded file, from its header, after checking the payload
    digest (a manifest must never vouch for bytes nobody hashed). A format 2 file's layout
    and hardening go into the manifest, and so does the file's key context (an encoding
    made with ``--spine``)."""
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
        leak_scan_strings=leak_scan_strings,
        leak_scan_rows=leak_scan_rows,
        unkeyed_check=unkeyed_check,
        counts=counts,
        layout=header.layout if header.format_version == GROUPED_FORMAT_VERSION else None,
        key_context=header.key_context,
    )


def manifest_path_for(encoded_path: Path | str) -> Path:
    """Where the manifest of an encoded file lives: beside it, ``<file>.manifest.json``."""
    path = Path(encoded_path)
    return path.with_name(path.name + ".manifest.json")


def vouch_for_encoded_file(
    encoded_path: Path | str,
    *,
    signing_key: Ed25519PrivateKey,
    party: str,
    strings: SensitiveStrings,
    software_version: str,
    manifest_path: Path | str | None = None,
    unkeyed_reencoder: UnkeyedReencoder | None = None,
    unkeyed_positions: npt.NDArray[np.int64] | None = None,
    counts: EncodeCounts | None = None,
    progress: ScanProgress | None = None,
) -> tuple[SignedManifest, LeakScanReport]:
    """Leak-scan an encoded file for ``strings``; if clean, sign and write its manifest.

    A finding raises :class:`AuditError` and leaves no manifest (a stale one is removed), so
    ``bloomlink submit`` will not send the file. The manifest records whether the scan ran
    the known-key check (``unkeyed_reencoder`` given); a department runs
    :func:`party.prepare.prepare_upload`, which always does.
    """
    target = Path(manifest_path) if manifest_path else manifest_path_for(encoded_path)
    target.unlink(missing_ok=True)
    report = scan_encoded_file(
        encoded_path,
        strings.strings,
        unkeyed_reencoder=unkeyed_reencoder,
        unkeyed_positions=unkeyed_positions,
        progress=progress,
    )
    if not report.clean:
        kinds = sorted({finding.kind for finding in report.findings})
        raise AuditError(
            f"the leak scan found {len(report.findings)} problem(s) in {encoded_path} "
            f"({', '.join(kinds)}); no manifest written, the file must not be sent. Run "
            "bloomlink scan on it for the byte offsets"
        )
    signed = write_manifest_for_file(
        encoded_path,
        target,
        signing_key=signing_key,
        party=party,
        software_version=software_version,
        leak_scan_strings=report.strings_checked,
        leak_scan_rows=strings.rows_sampled,
        unkeyed_check=unkeyed_reencoder is not None,
        counts=counts,
    )
    return signed, report


def check_manifest_for_file(
    encoded_path: Path | str, manifest_path: Path | str, *, party: str
) -> SignedManifest:
    """The manifest to send with an encoded file, after checking it vouches for exactly this
    file: valid signature, same party and header fields, and a recorded clean leak scan."""
    signed = read_manifest(manifest_path)
    manifest = verify_manifest(signed)
    header = read_header(encoded_path)
    details: dict[str, object] = {
        "party": party,
        "record_count": header.record_count,
        "clk_bits": header.clk_bits,
        "payload_sha256": header.payload_sha256.hex(),
        "schema_fingerprint": header.schema_fingerprint.hex(),
        "kcv": header.kcv.hex(),
    }
    if header.format_version == GROUPED_FORMAT_VERSION:
        details["layout_sha256"] = header.clk_layout.sha256
    if header.key_context is not None:
        details["spine"] = spine_of_key_context(header.key_context)
    wrong = manifest_mismatches(manifest, project_id=header.project_id, details=details)
    if wrong == ("party",):
        # The manifest vouches for exactly this file, for another party: the file is theirs.
        raise ConfigurationError(
            f"{encoded_path} is party {manifest.party}'s encoded file (its signed manifest "
            f"says so), not party {party}'s: submit the file you encoded with --party {party}; "
            "nothing was sent"
        )
    if wrong:
        raise AuditError(
            f"the manifest {manifest_path} does not vouch for {encoded_path}: it differs on "
            f"{', '.join(wrong)}; re-run bloomlink encode (or give --extract to scan now)"
        )
    if manifest.leak_scan_strings == 0:
        raise AuditError(
            f"the manifest {manifest_path} records a leak scan of no strings; give --extract "
            "to scan the file now"
        )
    if not manifest.unkeyed_check:
        raise AuditError(
            f"the manifest {manifest_path} does not record the check that the CLKs were made "
            "with the linkage secret; re-run bloomlink encode, or give --extract (with the "
            "positions file beside the encoded file) to scan the file now"
        )
    return signed
