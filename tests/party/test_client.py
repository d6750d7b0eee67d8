"""The client's own pieces that need no server: gRPC's retry policy as configured, and the
identity it reads from its certificate (tests/integration covers them against a real LU)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from linkage_unit.pki import init_certificates
from party.client import SERVICE_NAME, LinkageClient, certificate_identity, retry_service_config
from protocol.errors import ConfigurationError
from protocol.identity import Identity, Role


@pytest.mark.parametrize(("retries", "attempts"), [(1, 2), (4, 5), (9, 5)])
def test_unary_calls_retry_unavailable_by_grpc_policy(retries: int, attempts: int) -> None:
    config = json.loads(retry_service_config(retries, 0.1))
    (method,) = config["methodConfig"]
    assert (
        method["name"] == [{"service": SERVICE_NAME}] and SERVICE_NAME == "bloomlink.v1.LinkageUnit"
    )
    policy = method["retryPolicy"]
    assert policy["maxAttempts"] == attempts  # gRPC allows at most five
    assert policy["retryableStatusCodes"] == ["UNAVAILABLE"]
    assert policy["initialBackoff"] == "0.100s" and policy["backoffMultiplier"] == 2


def test_the_client_knows_its_own_party_from_its_certificate(tmp_path: Path) -> None:
    pki = init_certificates(tmp_path / "pki", parties=("moj", "dfe"), auditor=False)
    assert certificate_identity(pki.parties["moj"].certificate.read_bytes()) == Identity(
        role=Role.PARTY, party="moj"
    )
    assert certificate_identity(pki.ca_certificate.read_bytes()) is None
    with LinkageClient("127.0.0.1:9", tls=pki.tls_files(pki.parties["moj"])) as client:
        client.check_party("moj")
        with pytest.raises(ConfigurationError, match="--party dfe does not match"):
            client.check_party("dfe")
    with LinkageClient("127.0.0.1:9", tls=pki.tls_files(pki.operator)) as client:
        with pytest.raises(ConfigurationError, match="the operator's, not a party's"):
            client.check_party("moj")
