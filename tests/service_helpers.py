"""Helpers shared by the linkage-unit unit tests and the integration tests."""

from __future__ import annotations

import csv
import hashlib
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bloomlink.cli import main
from linkage_unit.server import ServerConfig, create_server
from protocol.audit_events import AuditEvent, event_record
from protocol.clk_file import ClkFileWriter
from protocol.schema import default_schema
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
    timeout: int = 5

    def tls(self, role: str, host: str = "127.0.0.1", timeout: int | None = None) -> list[str]:
        certs = self.certs
        return ["--target", f"{host}:{self.port}", "--ca", str(certs / "ca.pem"),
                "--cert", str(certs / f"{role}.pem"), "--key", str(certs / f"{role}.key"),
                "--timeout", str(timeout or self.timeout)]  # fmt: skip


def lu_config(data_dir: Path, certs: Path, **settings: Any) -> ServerConfig:
    """The LU's config on loopback with the certificates ``bloomlink certs init`` made in
    ``certs``; ``settings`` are any other ServerConfig fields (spine_key, party_keys)."""
    return ServerConfig(
        data_dir=data_dir,
        listen="127.0.0.1:0",
        ca_certificate=certs / "ca.pem",
        certificate=certs / "linkage-unit.pem",
        private_key=certs / "linkage-unit.key",
        grace_seconds=0.5,
        **settings,
    )


@contextmanager
def serving(config: ServerConfig, *, timeout: int = 5) -> Iterator[CliLinkageUnit]:
    """Start the LU under ``config``; stop it after (its state stays in the data dir)."""
    server = create_server(config)
    port = server.start()
    try:
        yield CliLinkageUnit(certs=config.ca_certificate.parent, port=port, timeout=timeout)
    finally:
        server.stop(0)


def cli_linkage_unit(data_dir: Path, certs: Path) -> AbstractContextManager[CliLinkageUnit]:
    """Start the LU (state in ``data_dir``) with the certificates in ``certs``; stop it after."""
    return serving(lu_config(data_dir, certs))


@dataclass(frozen=True, slots=True)
class CliSpine:
    """A spine ``bloomlink spine create`` made in a stopped LU's data dir: the LU's config
    (with the spine key), the spine's name and the default schema's fingerprint."""

    config: ServerConfig
    name: str
    fingerprint: str

    @property
    def operator_dir(self) -> list[str]:
        """The flags of an operator command run on the LU's host (LU stopped)."""
        assert self.config.spine_key is not None
        return ["--data-dir", str(self.config.data_dir), "--spine-key", str(self.config.spine_key)]


def create_cli_spine(
    workdir: Path, certs: Path, name: str, parties: str, *create: str, **settings: Any
) -> CliSpine:
    """An LU data dir ``workdir/lu`` with a fresh spine key and a spine of ``parties`` made
    by the command line (``create``: further ``spine create`` flags such as --keep-runs)."""
    lu = workdir / "lu"
    lu.mkdir()
    spine_key = workdir / "spine.key"
    assert main(["spine", "keygen", "--out", str(spine_key)]) == 0
    spine = CliSpine(
        config=lu_config(lu, certs, spine_key=spine_key, **settings),
        name=name,
        fingerprint=default_schema().fingerprint.hex(),
    )
    # The spine is created while the LU is stopped (the command appends to its audit log,
    # which a first start lays down).
    create_server(spine.config).stop(0)
    assert main(["spine", "create", name, "--parties", parties, *create,
                 "--schema-fingerprint", spine.fingerprint, *spine.operator_dir]) == 0  # fmt: skip
    return spine


def cli_encode(
    source: Path, out: Path, *, project: str, party: str, layout: str, secret: Path,
    signing_key: Path, extra: Sequence[str] = (),
) -> Path:  # fmt: skip
    """``bloomlink encode`` of one extract on one worker; ``extra``: --spine, --same-positions."""
    out.parent.mkdir(parents=True, exist_ok=True)
    assert main(["encode", str(source), "--project", project, "--layout", layout,
                 "--party", party, "--secret-file", str(secret), "--signing-key",
                 str(signing_key), "--out", str(out), "--workers", "1", *extra]) == 0  # fmt: skip
    return out


def positions_of(encoded: Path) -> Path:
    """The positions file ``bloomlink encode`` writes beside an encoded file."""
    return encoded.with_name(encoded.name + ".positions.csv")


def audit_verified(lu: CliLinkageUnit, out: Path, capsys: pytest.CaptureFixture[str]) -> str:
    """The auditor fetches the LU's log and verifies it; the verifier's report."""
    assert main(["audit", "fetch", "--out", str(out), *lu.tls("auditor")]) == 0
    capsys.readouterr()
    assert main(["audit", "verify", "--log", str(out / "audit.jsonl"),
                 "--public-key", str(out / "lu-audit-key.pem")]) == 0  # fmt: skip
    report = capsys.readouterr().out
    assert "result: PASSED" in report
    return report


def read_rows(path: Path) -> list[dict[str, str]]:
    """A CSV file the command line wrote (truth, link keys), as one dict a row."""
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))
