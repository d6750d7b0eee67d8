"""Authentication and authorisation against a real mutual-TLS linkage unit."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from linkage_unit.pki import create_authority, issue_client_certificate
from linkage_unit.server import ServerConfig, create_server
from party.client import LinkageClient
from protocol.errors import (
    ConfigurationError,
    NotFoundError,
    PermissionDeniedError,
    UnauthenticatedError,
)
from protocol.identity import Identity, Role
from protocol.messages import ProjectSettings, RunState
from protocol.pb import linkage_pb2 as pb
from protocol.pb import linkage_pb2_grpc as pb_grpc
from protocol.tls import TlsFiles
from tests.service_helpers import SCHEMA_FINGERPRINT, planted_party_clks, write_clk_file

pytestmark = pytest.mark.integration


def _settings(project_id: str = "p1", members: tuple[str, ...] = ("moj", "dfe")) -> ProjectSettings:
    return ProjectSettings(
        project_id=project_id, members=members, schema_fingerprint=SCHEMA_FINGERPRINT
    )


def test_client_without_certificate_is_refused_at_the_handshake(start_server, pki) -> None:
    server = start_server()
    credentials = grpc.ssl_channel_credentials(root_certificates=pki.ca_certificate.read_bytes())
    with grpc.secure_channel(f"127.0.0.1:{server.port}", credentials) as channel:
        stub = pb_grpc.LinkageUnitStub(channel)
        with pytest.raises(grpc.RpcError) as caught:
            stub.GetProjectStatus(pb.GetProjectStatusRequest(project_id="p1"), timeout=3)
    assert caught.value.code() is grpc.StatusCode.UNAVAILABLE


def test_certificate_from_another_ca_is_refused(start_server, pki, tmp_path: Path) -> None:
    server = start_server()
    rogue = create_authority(common_name="rogue CA")
    pair = issue_client_certificate(rogue, Identity(role=Role.OPERATOR)).write(tmp_path, "rogue")
    files = TlsFiles(
        ca_certificate=pki.ca_certificate,
        certificate=pair.certificate,
        private_key=pair.private_key,
    )
    with LinkageClient(f"127.0.0.1:{server.port}", tls=files, timeout=3, retries=0) as client:
        # Cut at the handshake (UNAVAILABLE on the wire); the client knows its certificate is
        # not the deployment CA's and says so instead of "retry later".
        with pytest.raises(UnauthenticatedError, match="was not issued by the CA"):
            client.create_project(_settings())


def test_server_refuses_to_start_without_tls(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="mutual TLS"):
        ServerConfig(data_dir=tmp_path, listen="127.0.0.1:0")


def test_insecure_mode_binds_loopback_only(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="loopback"):
        ServerConfig(data_dir=tmp_path, listen="0.0.0.0:0", insecure=True)


def test_second_server_on_the_same_port_fails_to_bind(start_server, pki, tmp_path: Path) -> None:
    server = start_server()
    config = ServerConfig(
        data_dir=tmp_path / "other",
        listen=f"127.0.0.1:{server.port}",
        ca_certificate=pki.ca_certificate,
        certificate=pki.linkage_unit.certificate,
        private_key=pki.linkage_unit.private_key,
    )
    second = create_server(config)
    with pytest.raises(ConfigurationError, match="in use"):
        second.start()


def test_party_cannot_act_as_operator_or_as_another_party(
    start_server, connect, tmp_path: Path
) -> None:
    server = start_server()
    moj = connect(server, "moj")
    with pytest.raises(PermissionDeniedError):
        moj.create_project(_settings())
    connect(server, "operator").create_project(_settings())
    path = write_clk_file(
        tmp_path / "dfe.clk", planted_party_clks(["dfe"], seed=1)["dfe"], project_id="p1"
    )
    with pytest.raises(PermissionDeniedError):
        moj.upload_file(path, party_id="dfe")
    with pytest.raises(PermissionDeniedError):
        moj.start_run("p1")


def test_non_members_and_unknown_projects_look_the_same(
    start_server, connect, tmp_path: Path
) -> None:
    server = start_server()
    connect(server, "operator").create_project(_settings())
    hmrc = connect(server, "hmrc")
    with pytest.raises(NotFoundError) as not_member:
        hmrc.project_status("p1")
    with pytest.raises(NotFoundError) as absent:
        hmrc.project_status("nope")
    assert not_member.value.message == absent.value.message
    path = write_clk_file(
        tmp_path / "h.clk", planted_party_clks(["hmrc"], seed=2)["hmrc"], project_id="zz"
    )
    with pytest.raises(NotFoundError):
        hmrc.upload_file(path, party_id="hmrc")
    # Auditors and members see status.
    assert connect(server, "auditor").project_status("p1").run_state is RunState.WAITING_FOR_UPLOADS
    assert connect(server, "moj").project_status("p1").project_id == "p1"


def test_fetching_another_partys_or_projects_keys_is_not_found(
    start_server, connect, tmp_path: Path
) -> None:
    server = start_server()
    operator = connect(server, "operator")
    operator.create_project(_settings("p1"))
    operator.create_project(_settings("p2", ("dfe", "hmrc")))
    clks = planted_party_clks(["moj", "dfe"], seed=3, records=12, shared=4)
    for party in ("moj", "dfe"):
        path = write_clk_file(tmp_path / f"{party}.clk", clks[party], project_id="p1")
        connect(server, party).upload_file(path, party_id=party)
    assert operator.wait_for_run("p1", timeout=20).run_state is RunState.FINISHED
    moj = connect(server, "moj")
    messages = set()
    for project, party in (("p1", "dfe"), ("p2", "dfe"), ("p2", "moj"), ("absent", "moj")):
        with pytest.raises(NotFoundError) as caught:
            moj.fetch_link_keys(project, party)
        messages.add(caught.value.message)
    assert len(messages) == 1
    assert len(moj.fetch_link_keys("p1", "moj").link_keys) == 12
