"""Group C, authentication and authorisation (security.md section 6, cases 14-19), against
a real mutual-TLS server on 127.0.0.1:0 with certificates made by ``cryptography.x509``.

Not applicable to this design: case 14 "revoked". bloomlink has no CRL or OCSP; it issues
short-lived certificates from a per-deployment CA and revokes by re-issuing from a new CA
(docs/adversarial.md says so). Expiry is tested instead.
"""

from __future__ import annotations

import datetime
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from linkage_unit.pki import create_authority, issue_server_certificate
from linkage_unit.server import (
    LinkageUnitServer,
    ServerConfig,
    require_client_certificates,
    serves_without_client_certificate,
)
from party.client import LinkageClient
from protocol.errors import (
    ConfigurationError,
    NotFoundError,
    UnauthenticatedError,
    UnavailableError,
)
from protocol.identity import Identity, Role
from protocol.pb import linkage_pb2 as pb
from protocol.pb import linkage_pb2_grpc as pb_grpc
from protocol.tls import TlsFiles
from tests.adversarial.conftest import create_project, upload_all
from tests.service_helpers import MemoryAuditSink, planted_party_clks

pytestmark = pytest.mark.integration

_NOW = datetime.datetime.now(datetime.UTC)
_DAY = datetime.timedelta(days=1)


@pytest.fixture(scope="module")
def authority(tmp_path_factory):
    directory = tmp_path_factory.mktemp("own-ca")
    ca = create_authority(common_name="adversarial CA")
    ca_pair = ca.issued().write(directory, "ca")
    server_pair = issue_server_certificate(ca).write(directory, "lu")
    return ca, ca_pair.certificate, server_pair, directory


def _client_files(
    authority,
    name: str,
    *,
    san=None,
    usage=ExtendedKeyUsageOID.CLIENT_AUTH,
    start=None,
    end=None,
    common_name="bloomlink party:moj",
    signer=None,
) -> TlsFiles:
    ca, ca_file, _, directory = authority
    signer = signer or ca
    key = ec.generate_private_key(ec.SECP256R1())
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(signer.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start or _NOW - _DAY)
        .not_valid_after(end or _NOW + _DAY)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    )
    names = (
        [x509.UniformResourceIdentifier(Identity(role=Role.PARTY, party="moj").uri)]
        if san is None
        else san
    )
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    certificate = builder.sign(signer.private_key, hashes.SHA256())
    (directory / f"{name}.pem").write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    (directory / f"{name}-key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return TlsFiles(
        ca_certificate=ca_file,
        certificate=directory / f"{name}.pem",
        private_key=directory / f"{name}-key.pem",
    )


@pytest.fixture
def own_server(start_server, authority) -> LinkageUnitServer:
    _, ca_file, server_pair, _ = authority
    return start_server(
        ca_certificate=ca_file,
        certificate=server_pair.certificate,
        private_key=server_pair.private_key,
    )


def _status(server, files: TlsFiles) -> None:
    with LinkageClient(f"127.0.0.1:{server.port}", tls=files, timeout=3, retries=0) as client:
        client.project_status("p1")


def test_case_14_no_client_certificate_fails_the_handshake(own_server, authority) -> None:
    """Case 14: no client certificate -> the TLS handshake fails (UNAVAILABLE), no RPC runs."""
    credentials = grpc.ssl_channel_credentials(root_certificates=authority[1].read_bytes())
    with grpc.secure_channel(f"127.0.0.1:{own_server.port}", credentials) as channel:
        with pytest.raises(grpc.RpcError) as caught:
            pb_grpc.LinkageUnitStub(channel).GetProjectStatus(
                pb.GetProjectStatusRequest(project_id="p1"), timeout=3
            )
    assert caught.value.code() is grpc.StatusCode.UNAVAILABLE


@pytest.mark.parametrize(
    "kind",
    ["other-ca", "expired", "not-yet-valid"],
)
def test_case_14_untrusted_or_out_of_date_certificates_fail_the_handshake(
    own_server, authority, kind
) -> None:
    """Case 14: a certificate from another CA, an expired one or a not-yet-valid one is
    refused at the handshake (UNAVAILABLE on the wire). The client, seeing its own
    certificate was not issued by the CA it was given, reports another CA's as the refusal
    it is (UnauthenticatedError naming the file), not as "unavailable, retry later"."""
    options = {
        "other-ca": {"signer": create_authority(common_name="rogue CA")},
        "expired": {"start": _NOW - 10 * _DAY, "end": _NOW - _DAY},
        "not-yet-valid": {"start": _NOW + _DAY, "end": _NOW + 10 * _DAY},
    }[kind]
    expected = UnauthenticatedError if kind == "other-ca" else UnavailableError
    with pytest.raises(expected) as caught:
        _status(own_server, _client_files(authority, kind, **options))
    if kind == "other-ca":
        assert "other-ca.pem was not issued by the CA in" in caught.value.message


@pytest.mark.parametrize("kind", ["dns-san", "no-san", "two-identities"])
def test_case_14_right_common_name_wrong_san_is_unauthenticated(
    own_server, authority, kind
) -> None:
    """Case 14: the CN says "party:moj" but the SAN carries no bloomlink identity (a DNS
    name, no SAN at all) or two of them -> UNAUTHENTICATED; the CN is never trusted."""
    sans = {
        "dns-san": [x509.DNSName("moj.example")],
        "no-san": [],
        "two-identities": [
            x509.UniformResourceIdentifier(Identity(role=Role.PARTY, party="moj").uri),
            x509.UniformResourceIdentifier(Identity(role=Role.OPERATOR).uri),
        ],
    }[kind]
    with pytest.raises(UnauthenticatedError):
        _status(own_server, _client_files(authority, kind, san=sans))


def test_case_14_server_auth_only_certificate_is_refused(own_server, authority) -> None:
    """Case 14: a certificate whose extended key usage is serverAuth only (a server's
    certificate reused as a client's) is refused at the handshake."""
    with pytest.raises(UnavailableError):
        _status(
            own_server,
            _client_files(authority, "server-eku", usage=ExtendedKeyUsageOID.SERVER_AUTH),
        )


def test_case_15_server_answering_clients_without_a_certificate_fails_the_self_test(
    authority,
) -> None:
    """Case 15: a real gRPC server whose credentials were built with
    require_client_auth=False (grpcio's default) answers a client without a certificate;
    the self-test LinkageUnitServer.start() runs on its own port finds that and raises
    ConfigurationError, so such a linkage unit refuses to start."""
    _, ca_file, server_pair, _ = authority
    credentials = grpc.ssl_server_credentials(
        [(server_pair.private_key.read_bytes(), server_pair.certificate.read_bytes())],
        root_certificates=ca_file.read_bytes(),
        require_client_auth=False,
    )
    misconfigured = grpc.server(ThreadPoolExecutor(max_workers=1))
    port = misconfigured.add_secure_port("127.0.0.1:0", credentials)
    misconfigured.start()
    try:
        assert serves_without_client_certificate(port) is True
        with pytest.raises(ConfigurationError, match="self-test failed"):
            require_client_certificates(port)
    finally:
        misconfigured.stop(0)


def test_case_15_the_self_test_passes_on_a_properly_configured_server(own_server) -> None:
    """Case 15 (the control): a real LU with client auth is not answered without a cert."""
    assert serves_without_client_certificate(own_server.port) is False
    require_client_certificates(own_server.port)


def test_case_16_other_partys_or_projects_keys_look_like_not_found(
    start_server, connect, tmp_path
) -> None:
    """Case 16: DfE asking for MoJ's keys, and a party asking about a project it is not in or
    one that does not exist, all get NOT_FOUND with one identical message; the refusal is
    audited (access_refused) without releasing anything."""
    audit = MemoryAuditSink()
    server = start_server(audit=audit)
    operator = connect(server, "operator")
    create_project(operator)
    create_project(operator, members=("moj", "hmrc"), project_id="p2")
    upload_all(
        server, connect, tmp_path, planted_party_clks(["moj", "dfe"], seed=31, records=8, shared=3)
    )
    operator.wait_for_run("p1", timeout=20)
    dfe = connect(server, "dfe")
    messages = set()
    for project, party in (("p1", "moj"), ("p2", "moj"), ("p2", "dfe"), ("absent", "dfe")):
        with pytest.raises(NotFoundError) as caught:
            dfe.fetch_link_keys(project, party)
        messages.add(caught.value.message)
    assert len(messages) == 1
    assert not audit.named("keys_released")
    assert len(audit.named("access_refused")) == 4


def test_case_17_and_18_results_carry_only_positions_and_keys_for_every_record(
    start_server, connect, tmp_path
) -> None:
    """Case 17: the results message type has no field for CLKs, scores, cluster sizes or other
    parties' keys (checked on the descriptor), and a party's keys are opaque random strings.
    Case 18: every submitted record gets a key (positions are exactly 0..n-1, so membership in
    the other dataset is not revealed by absence), released in a random order."""
    entry_fields = {field.name for field in pb.LinkKeyEntry.DESCRIPTOR.fields}
    response_fields = {field.name for field in pb.FetchLinkKeysResponse.DESCRIPTOR.fields}
    assert entry_fields == {"position", "link_key"}
    assert response_fields == {"entries", "total_count", "keys_sha256"}
    server = start_server()
    create_project(connect(server, "operator"))
    clks = planted_party_clks(["moj", "dfe"], seed=32, records=60, shared=5)
    upload_all(server, connect, tmp_path, clks)
    connect(server, "operator").wait_for_run("p1", timeout=20)
    fetched = connect(server, "moj").fetch_link_keys("p1", "moj")
    assert sorted(fetched.positions) == list(range(60))
    assert list(fetched.positions) != sorted(fetched.positions)
    clk_hex = {row.tobytes().hex() for row in clks["moj"]}
    assert all(len(key) == 26 and key not in clk_hex for key in fetched.link_keys)


def test_case_19_a_second_linkage_unit_cannot_bind_the_same_port(
    own_server, authority, tmp_path
) -> None:
    """Case 19: a second LU on the same port fails to bind (so_reuseport=0) with a
    ConfigurationError, instead of silently sharing the first one's traffic."""
    _, ca_file, server_pair, _ = authority
    second = LinkageUnitServer(
        ServerConfig(
            data_dir=tmp_path / "second",
            listen=f"127.0.0.1:{own_server.port}",
            ca_certificate=ca_file,
            certificate=server_pair.certificate,
            private_key=server_pair.private_key,
        )
    )
    with pytest.raises(ConfigurationError, match="in use"):
        second.start()
