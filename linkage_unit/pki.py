"""Certificate issuance for mutual TLS: a local certificate authority and one certificate per
role (operator tooling; the linkage unit's deployment owns its CA).

Used by ``bloomlink certs init``, the demo and tests. What both ends share - the TLS files,
fingerprints and reading an identity from a certificate - is in ``protocol/tls.py`` and
``protocol/identity.py``. The linkage unit's certificate names
``localhost`` and ``127.0.0.1`` (serverAuth); each client certificate carries exactly one
identity URI SAN (``bloomlink:party:moj``, ``bloomlink:operator``, ``bloomlink:auditor``)
and the clientAuth usage. Keys are EC P-256, written owner-only (0600).
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from protocol.atomic_file import atomic_output
from protocol.errors import ConfigurationError
from protocol.identity import Identity, Role
from protocol.labels import check_label
from protocol.tls import TlsFiles

__all__ = [
    "CertificateAuthority",
    "CertificateSet",
    "IssuedCertificate",
    "TlsPair",
    "create_authority",
    "init_certificates",
    "issue_client_certificate",
    "issue_server_certificate",
    "utc_now",
]

_DEFAULT_DAYS = 365


@dataclass(frozen=True, slots=True, kw_only=True)
class IssuedCertificate:
    """A PEM certificate and its PEM (PKCS#8, unencrypted) private key."""

    certificate_pem: bytes
    private_key_pem: bytes

    def __repr__(self) -> str:  # never print a private key
        return "IssuedCertificate(<redacted key>)"

    def write(self, directory: Path, name: str) -> TlsPair:
        cert_path, key_path = directory / f"{name}.pem", directory / f"{name}.key"
        with atomic_output(cert_path, mode=0o644) as handle:
            handle.write(self.certificate_pem)
        with atomic_output(key_path, mode=0o600) as handle:
            handle.write(self.private_key_pem)
        return TlsPair(certificate=cert_path, private_key=key_path)


@dataclass(frozen=True, slots=True, kw_only=True)
class TlsPair:
    certificate: Path
    private_key: Path


@dataclass(frozen=True, slots=True)
class CertificateAuthority:
    """A local CA (for one deployment) that issues the linkage unit's and the clients' certs."""

    private_key: ec.EllipticCurvePrivateKey
    certificate: x509.Certificate

    def __repr__(self) -> str:
        return "CertificateAuthority(<redacted key>)"

    @property
    def certificate_pem(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    def issued(self) -> IssuedCertificate:
        return IssuedCertificate(
            certificate_pem=self.certificate_pem, private_key_pem=_key_pem(self.private_key)
        )


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def utc_now() -> datetime.datetime:
    """The default clock of every issuing call (tests pass their own)."""
    return datetime.datetime.now(datetime.UTC)


Clock = Callable[[], datetime.datetime]


def create_authority(
    *, common_name: str = "bloomlink local CA", days: int = 3650, clock: Clock = utc_now
) -> CertificateAuthority:
    """A new self-signed CA (path length 0: it issues only end-entity certificates)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = clock()
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return CertificateAuthority(key, certificate)


def _issue(
    authority: CertificateAuthority,
    *,
    common_name: str,
    names: list[x509.GeneralName],
    usage: x509.ObjectIdentifier,
    days: int,
    clock: Clock,
) -> IssuedCertificate:
    key = ec.generate_private_key(ec.SECP256R1())
    now = clock()
    certificate = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(authority.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=True,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(authority.private_key.public_key()),
            critical=False,
        )
        .sign(authority.private_key, hashes.SHA256())
    )
    return IssuedCertificate(
        certificate_pem=certificate.public_bytes(serialization.Encoding.PEM),
        private_key_pem=_key_pem(key),
    )


def issue_server_certificate(
    authority: CertificateAuthority,
    *,
    hosts: tuple[str, ...] = ("localhost",),
    addresses: tuple[str, ...] = ("127.0.0.1",),
    days: int = _DEFAULT_DAYS,
    clock: Clock = utc_now,
) -> IssuedCertificate:
    """The linkage unit's certificate (serverAuth), valid for ``hosts`` and ``addresses``."""
    names: list[x509.GeneralName] = [x509.DNSName(host) for host in hosts]
    names += [x509.IPAddress(ipaddress.ip_address(address)) for address in addresses]
    return _issue(
        authority,
        common_name="bloomlink linkage unit",
        names=names,
        usage=ExtendedKeyUsageOID.SERVER_AUTH,
        days=days,
        clock=clock,
    )


def issue_client_certificate(
    authority: CertificateAuthority,
    identity: Identity,
    *,
    days: int = _DEFAULT_DAYS,
    clock: Clock = utc_now,
) -> IssuedCertificate:
    """A client certificate (clientAuth) carrying ``identity`` as its one URI SAN."""
    return _issue(
        authority,
        common_name=f"bloomlink {identity.text}",
        names=[x509.UniformResourceIdentifier(identity.uri)],
        usage=ExtendedKeyUsageOID.CLIENT_AUTH,
        days=days,
        clock=clock,
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class CertificateSet:
    """Where ``init_certificates`` wrote everything."""

    directory: Path
    ca_certificate: Path
    linkage_unit: TlsPair
    operator: TlsPair
    parties: dict[str, TlsPair]
    auditor: TlsPair | None

    def tls_files(self, pair: TlsPair) -> TlsFiles:
        return TlsFiles(
            ca_certificate=self.ca_certificate,
            certificate=pair.certificate,
            private_key=pair.private_key,
        )


def init_certificates(
    directory: Path | str,
    *,
    parties: tuple[str, ...],
    auditor: bool = True,
    hosts: tuple[str, ...] = ("localhost",),
    addresses: tuple[str, ...] = ("127.0.0.1",),
    days: int = _DEFAULT_DAYS,
    clock: Clock = utc_now,
) -> CertificateSet:
    """Create a CA and certificates for the linkage unit, the operator, each party and an
    auditor under ``directory`` (refuses to overwrite an existing CA)."""
    for party in parties:
        check_label(party, what="party name")
    if not parties:
        raise ConfigurationError("name at least one party (--parties moj,dfe)")
    root = Path(directory)
    if (root / "ca.pem").exists():
        raise ConfigurationError(f"{root} already holds a CA; choose an empty directory")
    root.mkdir(parents=True, exist_ok=True)
    os.chmod(root, 0o700)
    authority = create_authority(days=max(days, 30), clock=clock)
    ca_pair = authority.issued().write(root, "ca")
    linkage_unit = issue_server_certificate(
        authority, hosts=hosts, addresses=addresses, days=days, clock=clock
    ).write(root, "linkage-unit")
    operator = issue_client_certificate(
        authority, Identity(role=Role.OPERATOR), days=days, clock=clock
    ).write(root, "operator")
    party_pairs = {
        party: issue_client_certificate(
            authority, Identity(role=Role.PARTY, party=party), days=days, clock=clock
        ).write(root, f"party-{party}")
        for party in parties
    }
    auditor_pair = (
        issue_client_certificate(
            authority, Identity(role=Role.AUDITOR), days=days, clock=clock
        ).write(root, "auditor")
        if auditor
        else None
    )
    return CertificateSet(
        directory=root,
        ca_certificate=ca_pair.certificate,
        linkage_unit=linkage_unit,
        operator=operator,
        parties=party_pairs,
        auditor=auditor_pair,
    )
