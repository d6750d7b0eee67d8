"""Who a caller is comes from exactly one URI SAN ``bloomlink:<role>[:<name>]`` of a client
certificate with the clientAuth usage that is not a CA; nothing else in a certificate names
a role. Every certificate here is made with ``cryptography`` and signed by the deployment's
real CA, so the TLS handshake succeeds and only the linkage unit's own reading of the
certificate stands between it and the role it claims."""

from __future__ import annotations

import datetime
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from linkage_unit.pki import CertificateSet
from party.client import LinkageClient
from protocol.errors import UnauthenticatedError, UnavailableError
from protocol.messages import ProjectSettings, RunState
from protocol.tls import TlsFiles
from tests.service_helpers import SCHEMA_FINGERPRINT, planted_party_clks, write_clk_file

pytestmark = pytest.mark.integration

_NOW = datetime.datetime.now(datetime.UTC)


def _ca(pki: CertificateSet) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    certificate = x509.load_pem_x509_certificate(pki.ca_certificate.read_bytes())
    key = serialization.load_pem_private_key((pki.directory / "ca.key").read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return certificate, key


def _certificate(
    pki: CertificateSet,
    directory: Path,
    name: str,
    *,
    common_name: str = "someone",
    sans: list[x509.GeneralName] | None = None,
    usages: list[x509.ObjectIdentifier] | None = None,
    ca: bool = False,
) -> TlsFiles:
    """A certificate signed by the deployment's own CA, shaped as the test asks."""
    ca_certificate, ca_key = _ca(pki)
    key = ec.generate_private_key(ec.SECP256R1())
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca_certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_NOW - datetime.timedelta(days=1))
        .not_valid_after(_NOW + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=0 if ca else None), critical=True)
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    if usages is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage(usages), critical=False)
    certificate = builder.sign(ca_key, hashes.SHA256())
    cert_path, key_path = directory / f"{name}.pem", directory / f"{name}.key"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return TlsFiles(ca_certificate=pki.ca_certificate, certificate=cert_path, private_key=key_path)


CLIENT = [ExtendedKeyUsageOID.CLIENT_AUTH]


def _uri(value: str) -> x509.GeneralName:
    return x509.UniformResourceIdentifier(value)


# name -> (certificate shape, what it tries)
BAD_CERTIFICATES: dict[str, dict[str, object]] = {
    "operator-in-common-name-only": {"common_name": "bloomlink:operator", "usages": CLIENT},
    "operator-as-dns-name": {
        "sans": [x509.DNSName("bloomlink:operator")],
        "usages": CLIENT,
    },
    "operator-as-email": {
        "sans": [x509.RFC822Name("bloomlink:operator")],
        "usages": CLIENT,
    },
    "party-in-common-name-only": {"common_name": "bloomlink:party:moj", "usages": CLIENT},
    "party-in-common-name-with-a-dns-name": {
        "common_name": "bloomlink:party:moj",
        "sans": [x509.DNSName("moj.example")],
        "usages": CLIENT,
    },
    "no-extended-key-usage": {"sans": [_uri("bloomlink:operator")], "usages": None},
    "ca-certificate": {"sans": [_uri("bloomlink:operator")], "usages": CLIENT, "ca": True},
    "two-bloomlink-uris": {
        "sans": [_uri("bloomlink:party:moj"), _uri("bloomlink:party:dfe")],
        "usages": CLIENT,
    },
    "bloomlink-uri-with-a-trailing-part": {
        "sans": [_uri("bloomlink:operator:extra")],
        "usages": CLIENT,
    },
    "bloomlink-uri-in-another-case": {"sans": [_uri("BLOOMLINK:operator")], "usages": CLIENT},
    "party-uri-without-a-name": {"sans": [_uri("bloomlink:party")], "usages": CLIENT},
}


@pytest.fixture
def project(start_server, connect, tmp_path: Path):
    """A finished two-party project whose keys a forged identity would want."""
    server = start_server()
    operator = connect(server, "operator")
    operator.create_project(
        ProjectSettings(
            project_id="p1", members=("moj", "dfe"), schema_fingerprint=SCHEMA_FINGERPRINT
        )
    )
    clks = planted_party_clks(["moj", "dfe"], seed=71, records=10, shared=3)
    for party in ("moj", "dfe"):
        path = write_clk_file(tmp_path / f"{party}.clk", clks[party], project_id="p1")
        connect(server, party).upload_file(path, party_id=party)
    assert operator.wait_for_run("p1", timeout=20).run_state is RunState.FINISHED
    return server


@pytest.mark.parametrize("kind", sorted(BAD_CERTIFICATES))
def test_no_role_without_exactly_one_bloomlink_uri_on_a_client_certificate(
    project, pki, tmp_path: Path, kind: str
) -> None:
    """Each certificate is from the right CA, so only the LU's reading of it can refuse it:
    status (any role), creating a project (operator) and MoJ's keys (party moj) are all
    refused, and the refusal never says which part of the certificate was looked at."""
    files = _certificate(pki, tmp_path, kind, **BAD_CERTIFICATES[kind])  # type: ignore[arg-type]
    with LinkageClient(f"127.0.0.1:{project.port}", tls=files, timeout=5, retries=0) as client:
        for call in (
            lambda: client.project_status("p1"),
            lambda: client.create_project(
                ProjectSettings(
                    project_id="p9", members=("moj", "dfe"), schema_fingerprint=SCHEMA_FINGERPRINT
                )
            ),
            lambda: client.fetch_link_keys("p1", "moj"),
        ):
            # The TLS stack may refuse some shapes (UNAVAILABLE) before the LU sees them.
            with pytest.raises((UnauthenticatedError, UnavailableError)):
                call()
    assert project.storage.project("p9") is None


def test_the_one_well_formed_identity_is_accepted(project, pki, tmp_path: Path) -> None:
    """The control: the same builder, with one ``bloomlink:party:moj`` URI, clientAuth and
    no CA flag, is MoJ (and an unrelated extra URI and DNS name change nothing)."""
    files = _certificate(
        pki,
        tmp_path,
        "good",
        common_name="bloomlink:operator",  # ignored
        sans=[
            _uri("bloomlink:party:moj"),
            _uri("https://moj.example/linkage"),
            x509.DNSName("bloomlink.operator.example"),
        ],
        usages=CLIENT,
    )
    with LinkageClient(f"127.0.0.1:{project.port}", tls=files, timeout=5, retries=0) as client:
        assert len(client.fetch_link_keys("p1", "moj").link_keys) == 10
