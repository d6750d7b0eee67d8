"""Admitting a spine rotation's re-encodings: each is judged as a fresh upload would be.

Stage: spine key rotation (``bloomlink spine rotate``, docs/spine.md). A rotation replaces
every encoding a spine holds with the parties' re-encodings under a new linkage secret, so a
re-encoding must carry the same proof of authorship as an upload: its party's signed
manifest, signed by the party's registered key, vouching for exactly this payload (project,
party, record count, width, digest, schema, KCV) with a clean leak scan, created recently and
with a nonce that has vouched for nothing else. The checks are the upload path's own
(``linkage_unit/manifest_policy.py``) on the header the file would be uploaded under; the
only differences are that a manifest is always required and that a registered key is too
(the upload path, with no keys registered, leaves the key to the auditor; a rotation is
applied at once and has no later check).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from linkage_unit.manifest_policy import (
    ManifestPolicy,
    Refusal,
    freshness_refusal,
    manifest_refusal,
    nonce_refusal,
)
from linkage_unit.service import upload_committed
from protocol.audit_events import event_record
from protocol.errors import CompatibilityError, ConfigurationError, ServiceError
from protocol.labels import spine_key_context
from protocol.manifest import SignedManifest
from protocol.messages import UploadHeader
from protocol.vocabulary import CheckAspect, UploadRefusal

__all__ = ["ReencodedUpload", "RotationRefusal", "reencoding_refusal"]


@dataclass(frozen=True, slots=True, kw_only=True)
class ReencodedUpload:
    """One re-encoded file as the operator handed it over: the party it is for, the file's
    name (for messages), its header as an upload of it would carry, and its manifest (None:
    none beside the file)."""

    party: str
    source: str
    header: UploadHeader
    manifest: SignedManifest | None


@dataclass(frozen=True, slots=True, kw_only=True)
class RotationRefusal:
    """Why a rotation is refused: the re-encoding at fault and the upload path's refusal."""

    upload: ReencodedUpload
    refusal: Refusal

    @property
    def error(self) -> ServiceError:
        """The refusal's error, naming the party and the file (never a value)."""
        cause = self.refusal.error
        return type(cause)(
            f"spine rotation refused, nothing changed: party {self.upload.party}'s re-encoded "
            f"file {self.upload.source}: {cause.message}"
        )


def reencoding_refusal(
    policy: ManifestPolicy,
    uploads: Sequence[ReencodedUpload],
    *,
    now: float,
    vouched_for: Callable[[bytes], str | None],
    spine: str,
) -> RotationRefusal | None:
    """The first re-encoding whose manifest may not vouch for it, or that was not made for
    ``spine`` (its file's key context), or None if all may.

    ``vouched_for(nonce)``: the digest of the committed upload manifest that used the nonce,
    if any (the LU's storage); a nonce used twice within the rotation is refused too. A
    re-encoding made without ``--spine`` would bind the spine to a KCV no later upload made
    for the spine has: refused as the upload path refuses it (``key_context_error``).
    """
    if not policy.party_keys:
        raise ConfigurationError(
            "a spine rotation checks each re-encoding's signed manifest against its party's "
            "registered manifest key: give --party-key PARTY=PEM for each party (or --config "
            "with the linkage unit's [party_keys])"
        )
    strict = replace(policy, require_manifest=True)
    seen: dict[bytes, str] = {}
    for upload in uploads:
        if upload.header.key_context != spine_key_context(spine):
            made = upload.header.key_context or "the project, without --spine"
            return RotationRefusal(
                upload=upload,
                refusal=Refusal(
                    reason=UploadRefusal.KEY_CONTEXT,
                    error=CompatibilityError(
                        f"it was encoded for {made}, not for spine {spine}: re-encode it "
                        f"with --spine {spine} and the new secret",
                        party=upload.party,
                        aspect=CheckAspect.KEY_CONTEXT,
                    ),
                ),
            )
        details = event_record(upload_committed(upload.header, upload.manifest)).details
        refusal = manifest_refusal(strict, upload.header, upload.manifest, upload_details=details)
        if refusal is None and upload.manifest is not None:
            nonce = upload.manifest.manifest.nonce
            refusal = freshness_refusal(strict, upload.manifest, now=now) or nonce_refusal(
                seen.get(nonce) or vouched_for(nonce)
            )
            seen[nonce] = upload.manifest.manifest.sha256
        if refusal is not None:
            return RotationRefusal(upload=upload, refusal=refusal)
    return None
