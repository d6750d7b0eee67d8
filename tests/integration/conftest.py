"""Real linkage-unit servers on 127.0.0.1:0 with real mutual-TLS certificates."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from linkage_unit.pki import CertificateSet, init_certificates
from linkage_unit.server import LinkageUnitServer, ServerConfig, create_server
from party.client import LinkageClient
from tests.processes import lu_process  # noqa: F401 - a fixture for the tests here


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> CertificateSet:
    return init_certificates(
        tmp_path_factory.mktemp("pki") / "certs", parties=("moj", "dfe", "hmrc"), auditor=True
    )


StartServer = Callable[..., LinkageUnitServer]


@pytest.fixture
def start_server(pki: CertificateSet, tmp_path: Path) -> Iterator[StartServer]:
    started: list[LinkageUnitServer] = []

    def start(
        data_dir: Path | None = None,
        audit: Any = None,
        clock: Any = None,
        **overrides: Any,
    ) -> LinkageUnitServer:
        values: dict[str, Any] = {
            "data_dir": data_dir or tmp_path / "lu",
            "listen": "127.0.0.1:0",
            "ca_certificate": pki.ca_certificate,
            "certificate": pki.linkage_unit.certificate,
            "private_key": pki.linkage_unit.private_key,
            "max_workers": 8,
            "grace_seconds": 0.5,
            # Most tests upload bare CLK files; tests/integration/test_audit_wiring.py covers
            # the manifest requirement (the production default).
            "require_manifest": False,
        }
        values.update(overrides)
        options = {} if clock is None else {"clock": clock}
        server = create_server(ServerConfig(**values), audit=audit, **options)
        started.append(server)
        server.start()
        return server

    yield start
    for server in started:
        try:
            server.stop(0)
        except Exception:  # already stopped by the test
            pass


@pytest.fixture
def connect(pki: CertificateSet) -> Iterator[Callable[..., LinkageClient]]:
    clients: list[LinkageClient] = []

    def client_for(server: LinkageUnitServer, who: str, **options: Any) -> LinkageClient:
        if who == "operator":
            pair = pki.operator
        elif who == "auditor":
            assert pki.auditor
            pair = pki.auditor
        else:
            pair = pki.parties[who]
        options.setdefault("timeout", 5.0)
        options.setdefault("retries", 1)
        options.setdefault("backoff", 0.05)
        client = LinkageClient(f"127.0.0.1:{server.port}", tls=pki.tls_files(pair), **options)
        clients.append(client)
        return client

    yield client_for
    for client in clients:
        client.close()
