"""TLS files and certificate fingerprints: what both ends of a mutual-TLS connection use.

Stage: transport. Issuing certificates is operator tooling (``linkage_unit/pki.py``); reading
an identity from a certificate is ``protocol/identity.py``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from protocol.errors import ConfigurationError

__all__ = ["TlsFiles", "certificate_fingerprint"]


@dataclass(frozen=True, slots=True, kw_only=True)
class TlsFiles:
    """The three files one side of a mutual-TLS connection needs."""

    ca_certificate: Path
    certificate: Path
    private_key: Path

    def read(self) -> tuple[bytes, bytes, bytes]:
        """(CA certificate, certificate chain, private key) as PEM bytes."""
        try:
            return (
                self.ca_certificate.read_bytes(),
                self.certificate.read_bytes(),
                self.private_key.read_bytes(),
            )
        except OSError as error:
            raise ConfigurationError(
                f"cannot read TLS file {error.filename}: {error.strerror}"
            ) from None


def certificate_fingerprint(certificate_pem_or_der: bytes) -> str:
    """Hex SHA-256 of a certificate's DER encoding (what the audit log records)."""
    if certificate_pem_or_der.lstrip().startswith(b"-----BEGIN"):
        certificate = x509.load_pem_x509_certificate(certificate_pem_or_der)
        der = certificate.public_bytes(serialization.Encoding.DER)
    else:
        der = certificate_pem_or_der
    return hashlib.sha256(der).hexdigest()
