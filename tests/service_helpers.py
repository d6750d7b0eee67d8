"""Helpers shared by the linkage-unit unit tests and the integration tests."""

from __future__ import annotations

import csv
import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from linkage_unit.server import ServerConfig, create_server
from protocol.audit_events import AuditEvent, event_record
from protocol.clk_file import ClkFileWriter
from tests.strategies import random_clks

SCHEMA_FINGERPRINT = hashlib.sha256(b"test schema").digest()
KCV = bytes(range(16))
CLK_BITS = 256
CLK_WORDS = CLK_BITS // 64


@dataclass
class MemoryAuditSink:
    """In-memory audit sink for tests: keeps (event, project_id, details) in order."""

    events: list[tuple[str, str | None, dict[str, str | int]]] = field(default_factory=list)

    def append(self, event: AuditEvent) -> None:
        record = event_record(event)
        self.events.append((record.event, record.project_id, record.details))

    def recorded(
        self, kind: type[AuditEvent], *, project_id: str | None, **match: str | int
    ) -> bool:
        return any(
            name == kind.NAME
            and project == project_id
            and all(logged.get(key) == value for key, value in match.items())
            for name, project, logged in self.events
        )

    def named(self, event: str) -> list[dict[str, str | int]]:
        return [details for name, _, details in self.events if name == event]


def write_clk_file(
    path: Path,
    clks: np.ndarray,
    *,
    project_id: str,
    schema_fingerprint: bytes = SCHEMA_FINGERPRINT,
    kcv: bytes = KCV,
    clk_bits: int = CLK_BITS,
    key_context: str | None = None,
) -> Path:
    with ClkFileWriter(
        path,
        project_id=project_id,
        schema_fingerprint=schema_fingerprint,
        kcv=kcv,
        clk_bits=clk_bits,
        key_context=key_context,
    ) as writer:
        writer.write(clks)
    return path


def planted_party_clks(
    parties: list[str], *, seed: int, records: int = 40, shared: int = 10
) -> dict[str, np.ndarray]:
    """Random CLKs per party; the first ``shared`` rows (in shuffled positions) are identical
    across every party, so links exist."""
    generator = np.random.default_rng(seed)
    common = random_clks(generator, shared, words=CLK_WORDS, density=0.5)
    result = {}
    for party in parties:
        clks = np.concatenate(
            [common, random_clks(generator, records - shared, words=CLK_WORDS, density=0.5)]
        )
        result[party] = clks[generator.permutation(records)]
    return result


@dataclass(frozen=True, slots=True)
class CliLinkageUnit:
    """A real mutual-TLS linkage unit on loopback, certificates from ``bloomlink certs init``
    in ``certs``; ``tls(role)`` is the connection flags a CLI command of that role takes."""

    certs: Path
    port: int

    def tls(self, role: str, host: str = "127.0.0.1", timeout: int = 5) -> list[str]:
        certs = self.certs
        return ["--target", f"{host}:{self.port}", "--ca", str(certs / "ca.pem"),
                "--cert", str(certs / f"{role}.pem"), "--key", str(certs / f"{role}.key"),
                "--timeout", str(timeout)]  # fmt: skip


@contextmanager
def cli_linkage_unit(data_dir: Path, certs: Path) -> Iterator[CliLinkageUnit]:
    """Start the LU (state in ``data_dir``) with the certificates in ``certs``; stop it after."""
    server = create_server(
        ServerConfig(
            data_dir=data_dir,
            listen="127.0.0.1:0",
            ca_certificate=certs / "ca.pem",
            certificate=certs / "linkage-unit.pem",
            private_key=certs / "linkage-unit.key",
            grace_seconds=0.5,
        )
    )
    port = server.start()
    try:
        yield CliLinkageUnit(certs=certs, port=port)
    finally:
        server.stop(0)


def read_rows(path: Path) -> list[dict[str, str]]:
    """A CSV file the command line wrote (truth, link keys), as one dict a row."""
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))
