"""TLS files and certificate fingerprints: what both ends of a mutual-TLS connection use.

Stage: transport. Issuing certificates is operator tooling (``linkage_unit/pki.py``); reading
an identity from a certificate is ``protocol/identity.py``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization

from protocol.errors import ConfigurationError

__all__ = ["TlsFiles", "certificate_fingerprint", "check_key_pair", "issued_by_ca"]


@dataclass(frozen=True, slots=True, kw_only=True)
class TlsFiles:
    """The three files one side of a mutual-TLS connection needs."""

    ca_certificate: Path
    certificate: Path
    private_key: Path

    def read(self) -> tuple[bytes, bytes, bytes]:
        """(CA certificate, certificate chain, private key) as PEM bytes, checked to be
        usable: the certificates parse and the private key is the certificate's."""
        try:
            files = (
                self.ca_certificate.read_bytes(),
                self.certificate.read_bytes(),
                self.private_key.read_bytes(),
            )
        except OSError as error:
            raise ConfigurationError(
                f"cannot read TLS file {error.filename}: {error.strerror}"
            ) from None
        try:
            x509.load_pem_x509_certificates(files[0])
        except ValueError:
            raise ConfigurationError(
                f"{self.ca_certificate} is not a PEM CA certificate: give the deployment's "
                "ca.pem from certs init"
            ) from None
        check_key_pair(
            files[1], files[2], certificate_path=self.certificate, key_path=self.private_key
        )
        return files


def check_key_pair(
    certificate_pem: bytes, private_key_pem: bytes, *, certificate_path: Path, key_path: Path
) -> None:
    """Refuse a private key that is not the certificate's (the first in the chain).

    gRPC would only fail later, at the handshake, as "unavailable" or "Invalid private key"
    in C-core logs; a swapped --key is the caller's setup, so say so here. Never echoes the
    key."""
    try:
        certificate = x509.load_pem_x509_certificate(certificate_pem)
    except ValueError:
        raise ConfigurationError(
            f"{certificate_path} is not a PEM certificate: give the .pem that certs init wrote"
        ) from None
    try:
        key = serialization.load_pem_private_key(private_key_pem, password=None)
    except (ValueError, TypeError):
        raise ConfigurationError(
            f"{key_path} is not an unencrypted PEM private key: give the .key that certs init "
            "wrote beside the certificate"
        ) from None
    public = serialization.PublicFormat.SubjectPublicKeyInfo
    if key.public_key().public_bytes(serialization.Encoding.DER, public) != (
        certificate.public_key().public_bytes(serialization.Encoding.DER, public)
    ):
        raise ConfigurationError(
            f"{key_path} is not the private key of {certificate_path}: give the certificate "
            "and key that were issued together (NAME.pem with NAME.key from certs init)"
        )


def certificate_fingerprint(certificate_pem_or_der: bytes) -> str:
    """Hex SHA-256 of a certificate's DER encoding (what the audit log records)."""
    if certificate_pem_or_der.lstrip().startswith(b"-----BEGIN"):
        certificate = x509.load_pem_x509_certificate(certificate_pem_or_der)
        der = certificate.public_bytes(serialization.Encoding.DER)
    else:
        der = certificate_pem_or_der
    return hashlib.sha256(der).hexdigest()


def issued_by_ca(certificate_chain_pem: bytes, ca_pem: bytes) -> bool:
    """Whether the chain's first certificate was signed by a certificate in the CA file or
    further along its own chain: the linkage unit, trusting only the deployment's CA, refuses
    a client certificate from another CA during the handshake, where the client sees only a
    closed connection. Lenient: anything it cannot parse counts as issued (gRPC decides)."""
    try:
        chain = x509.load_pem_x509_certificates(certificate_chain_pem)
        issuers = [*x509.load_pem_x509_certificates(ca_pem), *chain[1:]]
    except ValueError:
        return True
    leaf = chain[0]
    for issuer in issuers:
        if issuer.subject != leaf.issuer:
            continue
        try:
            leaf.verify_directly_issued_by(issuer)
        except (ValueError, TypeError, InvalidSignature):
            continue
        return True
    return False
