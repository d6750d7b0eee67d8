"""Key derivation: per-field keys and the key check value (KCV), from the linkage secret.

Schema version 1 (one record-level CLK):

Field key  = HKDF-SHA256(IKM = secret, salt = "bloomlink/v1/field-key",
                         info = lp(project id) || schema fingerprint || lp(key group))
Hardening  = HKDF-SHA256(IKM = secret, salt = "bloomlink/v1/hardening",
                         info = lp(project id) || schema fingerprint || lp(method))

Schema version 2 (field groups): every key also names its group, so no two groups' bits are
comparable, and a hardening key names its step, so two keyed steps of one chain differ:

Field key  = HKDF-SHA256(IKM = secret, salt = "bloomlink/v2/field-key",
                         info = lp(project id) || schema fingerprint || lp(group) || lp(key group))
Hardening  = HKDF-SHA256(IKM = secret, salt = "bloomlink/v2/hardening",
                         info = lp(project id) || schema fingerprint || lp(group)
                                || lp(step index as decimal ":" method))

KCV        = HMAC-SHA256(secret, "bloomlink/v1/kcv" || lp(project id))[:16]

``lp(x)`` is a 2-byte big-endian length then the UTF-8 bytes, so no two inputs collide. Mixing
in the schema fingerprint means two parties with different schemas can never produce
comparable encodings by accident; mixing in the project id makes keys project-specific. Only
the KCV ever leaves a party: it tells the linkage unit whether keys agree, and nothing else.
"""

from __future__ import annotations

import hashlib
import hmac

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from protocol.labels import spine_key_context  # re-exported: where encode has always found it
from protocol.secret import LinkageSecret

__all__ = [
    "FIELD_KEY_BYTES",
    "KCV_BYTES",
    "derive_field_key",
    "derive_group_field_key",
    "derive_group_hardening_key",
    "derive_hardening_key",
    "key_check_value",
    "spine_key_context",
]

FIELD_KEY_BYTES = 32
KCV_BYTES = 16


def length_prefixed(text: str) -> bytes:
    """2-byte big-endian length, then UTF-8 bytes."""
    data = text.encode("utf-8")
    if len(data) > 0xFFFF:
        raise ValueError("label too long to length-prefix")
    return len(data).to_bytes(2, "big") + data


def _hkdf(secret: LinkageSecret, *, salt: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=FIELD_KEY_BYTES, salt=salt, info=info).derive(
        secret.material()
    )


def derive_field_key(
    secret: LinkageSecret, *, project_id: str, schema_fingerprint: bytes, key_group: str
) -> bytes:
    """The key for one field (or for a group of fields that deliberately share one)."""
    info = length_prefixed(project_id) + schema_fingerprint + length_prefixed(key_group)
    return _hkdf(secret, salt=b"bloomlink/v1/field-key", info=info)


def derive_hardening_key(
    secret: LinkageSecret, *, project_id: str, schema_fingerprint: bytes, method: str
) -> bytes:
    """The key a keyed hardening step (e.g. the balancing permutation) uses."""
    info = length_prefixed(project_id) + schema_fingerprint + length_prefixed(method)
    return _hkdf(secret, salt=b"bloomlink/v1/hardening", info=info)


def derive_group_field_key(
    secret: LinkageSecret,
    *,
    project_id: str,
    schema_fingerprint: bytes,
    group: str,
    key_group: str,
) -> bytes:
    """Schema v2: the key for one field (or key group) in one field group."""
    info = (
        length_prefixed(project_id)
        + schema_fingerprint
        + length_prefixed(group)
        + length_prefixed(key_group)
    )
    return _hkdf(secret, salt=b"bloomlink/v2/field-key", info=info)


def derive_group_hardening_key(
    secret: LinkageSecret,
    *,
    project_id: str,
    schema_fingerprint: bytes,
    group: str,
    step: int,
    method: str,
) -> bytes:
    """Schema v2: the key of keyed hardening step ``step`` (0-based) of one group's chain."""
    info = (
        length_prefixed(project_id)
        + schema_fingerprint
        + length_prefixed(group)
        + length_prefixed(f"{step}:{method}")
    )
    return _hkdf(secret, salt=b"bloomlink/v2/hardening", info=info)


def key_check_value(secret: LinkageSecret, *, project_id: str) -> bytes:
    """16 bytes that match across parties exactly when their secrets match."""
    message = b"bloomlink/v1/kcv" + length_prefixed(project_id)
    return hmac.new(secret.material(), message, hashlib.sha256).digest()[:KCV_BYTES]
