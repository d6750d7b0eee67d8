"""The manifest policy: whether an upload's signed manifest may vouch for it.

Stage: upload admission. Pure functions of the header, the manifest, the policy and the
time: each returns the refusal (the audit reason and the error for the party) or None, and
never touches storage or the log. The service audits a refusal and raises its error
(``linkage_unit/service.py``); whether a nonce was used before is the one question that needs
storage, and the service asks it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from protocol.errors import (
    AlreadyExistsError,
    AuditError,
    InvalidRequestError,
    PermissionDeniedError,
    ServiceError,
)
from protocol.manifest import SignedManifest, manifest_mismatches, verify_manifest
from protocol.messages import UploadHeader
from protocol.vocabulary import UploadRefusal

__all__ = [
    "ManifestPolicy",
    "Refusal",
    "freshness_refusal",
    "manifest_refusal",
    "nonce_refusal",
]


@dataclass(frozen=True, slots=True, kw_only=True)
class ManifestPolicy:
    """How the LU judges an upload's signed manifest beyond its signature.

    ``require_manifest``: an upload without one is refused. ``party_keys`` are the parties'
    registered manifest keys: with any registered, a manifest must be signed by its own
    party's key (a party with none registered is refused); with none, only the signature is
    checked here and the auditor checks the key. A manifest created more than
    ``max_future_seconds`` ahead of the LU's clock, or more than ``max_age_seconds`` before
    it, is refused (a wrong clock, or a manifest kept for replay).
    """

    require_manifest: bool = False
    party_keys: Mapping[str, Ed25519PublicKey] | None = None
    max_future_seconds: float = 600.0
    max_age_seconds: float = 30 * 86400.0

    def __post_init__(self) -> None:
        if not (self.max_future_seconds >= 0 and self.max_age_seconds > 0):
            raise ValueError("max_future_seconds must be >= 0 and max_age_seconds positive")


@dataclass(frozen=True, slots=True, kw_only=True)
class Refusal:
    """Why an upload is refused: the audit reason (a code, never a value) and the error."""

    reason: UploadRefusal
    error: ServiceError


def manifest_refusal(
    policy: ManifestPolicy,
    header: UploadHeader,
    manifest: SignedManifest | None,
    *,
    upload_details: Mapping[str, object],
) -> Refusal | None:
    """Signature, signer, party and agreement with the header (case 12).
    ``upload_details``: what the upload's ``upload_committed`` would record."""
    if manifest is None:
        if not policy.require_manifest:
            return None
        return Refusal(
            reason=UploadRefusal.MANIFEST_MISSING,
            error=InvalidRequestError(
                "this linkage unit takes an upload only with the party's signed manifest; "
                "encode with a signing key, then submit the file with its manifest"
            ),
        )
    if manifest.manifest.party != header.party_id:
        # The header's party is already the caller's mTLS identity.
        return Refusal(
            reason=UploadRefusal.MANIFEST_PARTY,
            error=PermissionDeniedError(
                "the upload's manifest is another party's; a party may send only a manifest "
                "it signed for itself"
            ),
        )
    keys = policy.party_keys
    expected = keys.get(header.party_id) if keys else None
    if keys and expected is None:
        return Refusal(
            reason=UploadRefusal.MANIFEST_KEY,
            error=PermissionDeniedError(
                "no manifest key is registered for this party at the linkage unit; ask the "
                "operator to register the party's public key"
            ),
        )
    try:
        verify_manifest(manifest, expected_public_key=expected)
    except AuditError:
        return Refusal(
            reason=UploadRefusal.MANIFEST_SIGNATURE,
            error=PermissionDeniedError(
                "the upload's manifest has an invalid signature or is not signed by this "
                "party's registered key; send the manifest written with this encoded file"
            ),
        )
    wrong = manifest_mismatches(
        manifest.manifest, project_id=header.project_id, details=upload_details
    )
    if wrong:
        return Refusal(
            reason=UploadRefusal.MANIFEST_MISMATCH,
            error=InvalidRequestError(
                f"party {header.party_id}'s upload manifest disagrees with its header on "
                f"{', '.join(wrong)}; send the manifest written with this encoded file"
            ),
        )
    if manifest.manifest.leak_scan_strings == 0:
        return Refusal(
            reason=UploadRefusal.MANIFEST_NO_SCAN,
            error=InvalidRequestError("the upload's manifest records no leak scan"),
        )
    return None


def _created_at(manifest: SignedManifest) -> float:
    # Validated by UploadManifest as UTC "YYYY-MM-DDTHH:MM:SS[.ffffff]Z".
    return datetime.fromisoformat(manifest.manifest.created_at.replace("Z", "+00:00")).timestamp()


def freshness_refusal(
    policy: ManifestPolicy, manifest: SignedManifest, *, now: float
) -> Refusal | None:
    """For an upload not yet committed: the manifest's time is plausible (case 29)."""
    lead = _created_at(manifest) - now
    if lead > policy.max_future_seconds:
        return Refusal(
            reason=UploadRefusal.MANIFEST_TIME,
            error=InvalidRequestError(
                f"the upload's manifest was created {lead / 60:.0f} minutes ahead of the "
                "linkage unit's clock; check the party's clock (NTP), then encode again"
            ),
        )
    if -lead > policy.max_age_seconds:
        return Refusal(
            reason=UploadRefusal.MANIFEST_TIME,
            error=InvalidRequestError(
                f"the upload's manifest is {-lead / 86400:.0f} days old, more than the "
                f"linkage unit accepts ({policy.max_age_seconds / 86400:.0f}); encode again "
                "for a fresh manifest"
            ),
        )
    return None


def nonce_refusal(vouched_for: str | None) -> Refusal | None:
    """A manifest's nonce vouches for one committed upload only (case 10); ``vouched_for``
    is the digest of the manifest that already used it, if any."""
    if vouched_for is None:
        return None
    return Refusal(
        reason=UploadRefusal.MANIFEST_NONCE,
        error=AlreadyExistsError(
            "the upload's manifest nonce has already vouched for a committed upload; a "
            "manifest vouches for one upload only: encode again for a fresh manifest"
        ),
    )
