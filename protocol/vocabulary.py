"""Vocabularies the linkage unit, its audit log and the auditor share: one StrEnum each, so
a misspelt value fails at import time, not in an audit a year later.

Stage: shared. ``protocol/messages.py`` (project settings), ``protocol/audit.py`` and
``protocol/audit_events.py`` (the log), ``linkage_unit`` (which writes them) and ``auditor``
(which checks them) all import from here, and this module imports nothing of theirs.
"""

from __future__ import annotations

from enum import StrEnum

__all__ = ["CheckAspect", "DeletionReason", "LinkModel", "RetentionPolicy", "UploadRefusal"]


class RetentionPolicy(StrEnum):
    """When a project's CLKs are deleted (``project_created.retention``)."""

    KEEP = "keep"
    DELETE_AFTER_RUN = "delete-after-run"
    DELETE_AFTER_RELEASE = "delete-after-release"


class LinkModel(StrEnum):
    """What a project's run makes of the records (fixed when the project is created).

    ``one-to-one``: no party holds two records of one person; each cluster has at most one
    record per party. ``dedupe-and-link``: some parties (``deduplicated``) may hold several
    records of one person; a cluster holds all of them and at most one record of each other
    party. ``dedupe-only``: one party, deduplicated.
    """

    ONE_TO_ONE = "one-to-one"
    DEDUPE_AND_LINK = "dedupe-and-link"
    DEDUPE_ONLY = "dedupe-only"


class CheckAspect(StrEnum):
    """What a check before any comparison found differing or implausible."""

    SCHEMA_FINGERPRINT = "schema_fingerprint"
    # A grouped encoding's groups (names, order, lengths), then each group's hardening.
    LAYOUT = "layout"
    HARDENING = "hardening"
    # What the keys were derived for: a spine project's encodings are made for its spine.
    KEY_CONTEXT = "key_context"
    KCV = "kcv"
    CLK_BITS = "clk_bits"
    RECORD_COUNT = "record_count"
    DEGENERATE_CLKS = "degenerate_clks"
    BIT_DENSITY = "bit_density"


class UploadRefusal(StrEnum):
    """Why the LU refused an upload and stored nothing (``upload_refused.reason``)."""

    MANIFEST_MISSING = "manifest_missing"
    MANIFEST_PARTY = "manifest_party"
    MANIFEST_KEY = "manifest_key"
    MANIFEST_SIGNATURE = "manifest_signature"
    MANIFEST_MISMATCH = "manifest_mismatch"
    MANIFEST_NO_SCAN = "manifest_no_scan"
    MANIFEST_TIME = "manifest_time"
    MANIFEST_NONCE = "manifest_nonce"
    # A header that can never be compared (the check aspects of the same names).
    SCHEMA_FINGERPRINT = "schema_fingerprint"
    LAYOUT = "layout"
    HARDENING = "hardening"
    KEY_CONTEXT = "key_context"
    KCV = "kcv"
    CLK_BITS = "clk_bits"


class DeletionReason(StrEnum):
    """Why a payload was deleted (``payload_deleted.reason``)."""

    # A committed upload's CLKs:
    RUN_FINISHED = "run-finished"
    KEYS_RELEASED = "keys-released"
    RETENTION_EXPIRED = "retention-expired"
    REPLACED = "replaced"
    # The bytes of an upload that was never committed:
    SUPERSEDED = "superseded"
    STREAM_CAP = "stream_cap"
    DIGEST_MISMATCH = "digest_mismatch"
    PARTIAL_EXPIRED = "partial-expired"

    @property
    def partial(self) -> bool:
        """Whether this reason deletes an uncommitted upload's bytes."""
        return self in _PARTIAL


_PARTIAL = frozenset(
    {
        DeletionReason.SUPERSEDED,
        DeletionReason.STREAM_CAP,
        DeletionReason.DIGEST_MISMATCH,
        DeletionReason.PARTIAL_EXPIRED,
    }
)
