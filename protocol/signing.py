"""Ed25519 signing keys: the linkage unit's audit key and each party's manifest key.

Stage: audit. A signing key proves who wrote an audit entry or a manifest; it never touches
identifiers or the linkage secret. Private keys live in a PEM (PKCS#8) file created owner-only
(0600) and refused if group or others can read it; public keys travel as PEM.
"""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from protocol.atomic_file import fsync_directory
from protocol.errors import ConfigurationError

__all__ = [
    "create_signing_key",
    "load_or_create_signing_key",
    "load_public_key",
    "load_signing_key",
    "public_key_fingerprint",
    "public_key_pem",
]


def create_signing_key(path: Path | str) -> Ed25519PrivateKey:
    """Create a new Ed25519 key file at ``path`` (0600, never overwriting) and return the key."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    try:
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise ConfigurationError(
            f"{target}: a signing key already exists; refusing to overwrite it"
        ) from None
    with os.fdopen(fd, "wb") as handle:
        handle.write(pem)
        handle.flush()
        os.fsync(handle.fileno())
    fsync_directory(target.parent)
    return key


def load_signing_key(path: Path | str) -> Ed25519PrivateKey:
    """Load an Ed25519 key file, refusing one that group or others can read or write."""
    target = Path(path)
    try:
        mode = target.stat().st_mode
        data = target.read_bytes()
    except OSError as error:
        raise ConfigurationError(f"{target}: cannot read signing key: {error.strerror}") from None
    if stat.S_IMODE(mode) & 0o077:
        raise ConfigurationError(
            f"{target}: signing key is readable by others; run `chmod 600` on it"
        )
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        raise ConfigurationError(f"{target}: not an unencrypted PEM private key") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigurationError(f"{target}: signing key must be Ed25519")
    return key


def load_or_create_signing_key(path: Path | str) -> Ed25519PrivateKey:
    """The key at ``path``, created on first start."""
    if Path(path).exists():
        return load_signing_key(path)
    return create_signing_key(path)


def public_key_pem(key: Ed25519PrivateKey | Ed25519PublicKey) -> bytes:
    """The public half as PEM (SubjectPublicKeyInfo), for auditors and peers."""
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def load_public_key(source: Path | str | bytes) -> Ed25519PublicKey:
    """An Ed25519 public key from PEM bytes or a PEM file."""
    if isinstance(source, bytes):
        data, where = source, "public key"
    else:
        try:
            data, where = Path(source).read_bytes(), str(source)
        except OSError as error:
            raise ConfigurationError(
                f"{source}: cannot read public key: {error.strerror}"
            ) from None
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError):
        raise ConfigurationError(f"{where}: not a PEM public key") from None
    if not isinstance(key, Ed25519PublicKey):
        raise ConfigurationError(f"{where}: public key must be Ed25519")
    return key


def public_key_fingerprint(key: Ed25519PrivateKey | Ed25519PublicKey) -> str:
    """SHA-256 of the raw 32-byte public key, hex: a short name for a key in reports."""
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()
