"""Shared pieces of the adversarial suite (security.md section 6): the real mutual-TLS
server fixtures of tests/integration, raw stubs for hand-built hostile messages, and a
linkage unit run as a real ``python -m bloomlink serve`` subprocess for SIGKILL tests."""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Iterable
from pathlib import Path

import grpc
import numpy as np

from linkage_unit.pki import CertificateSet
from party.client import error_from_rpc
from protocol import serde
from protocol.clk_file import HEADER_LENGTH, read_header
from protocol.manifest import SignedManifest, UploadManifest, sign_manifest
from protocol.messages import ProjectSettings, UploadChunk, UploadHeader
from protocol.pb import linkage_pb2 as pb
from protocol.pb import linkage_pb2_grpc as pb_grpc
from tests.integration.conftest import connect, lu_process, pki, start_server  # noqa: F401
from tests.processes import LinkageUnitProcess  # noqa: F401 - used by the crash tests
from tests.service_helpers import SCHEMA_FINGERPRINT, write_clk_file

REPOSITORY = Path(__file__).resolve().parents[2]


def create_project(client, members=("moj", "dfe"), project_id="p1", **options) -> None:
    client.create_project(
        ProjectSettings(
            project_id=project_id,
            members=tuple(members),
            schema_fingerprint=SCHEMA_FINGERPRINT,
            **options,
        )
    )


def raw_stub(
    port: int,
    pki: CertificateSet,  # noqa: F811 - same name as the fixture
    who: str,
) -> tuple[grpc.Channel, pb_grpc.LinkageUnitStub]:
    """A bare stub with ``who``'s certificate, for messages the real client never sends."""
    pair = pki.operator if who == "operator" else pki.parties[who]
    credentials = grpc.ssl_channel_credentials(
        root_certificates=pki.ca_certificate.read_bytes(),
        private_key=pair.private_key.read_bytes(),
        certificate_chain=pair.certificate.read_bytes(),
    )
    channel = grpc.secure_channel(f"127.0.0.1:{port}", credentials)
    return channel, pb_grpc.LinkageUnitStub(channel)


def upload_messages(
    path: Path, party: str, *, chunk: int = 256, manifest: SignedManifest | None = None
) -> list[pb.UploadRequest]:
    header = UploadHeader.from_clk_file_header(read_header(path), party_id=party)
    payload = path.read_bytes()[HEADER_LENGTH:]
    messages = [serde.upload_header_to_proto(header, manifest)]
    for offset in range(0, len(payload), chunk):
        messages.append(
            serde.upload_chunk_to_proto(UploadChunk.of(offset, payload[offset : offset + chunk]))
        )
    return messages


def send(stub: pb_grpc.LinkageUnitStub, messages: Iterable[pb.UploadRequest]) -> pb.UploadResponse:
    """One Upload call; a refusal comes back as the protocol.errors class the LU raised."""
    try:
        return stub.Upload(iter(messages), timeout=10)
    except grpc.RpcError as error:
        raise error_from_rpc(error) from None


def upload_all(
    server,
    connect,  # noqa: F811 - same name as the fixture
    tmp_path: Path,
    clks: dict[str, np.ndarray],
    project_id="p1",
    **file_options,  # noqa: F811
) -> dict[str, Path]:
    paths = {}
    for party, party_clks in clks.items():
        options = file_options.get(party, {})
        paths[party] = write_clk_file(
            tmp_path / f"{party}.clk", party_clks, project_id=project_id, **options
        )
        connect(server, party).upload_file(paths[party], party_id=party)
    return paths


def partition(
    clusters_by_party: dict[str, dict[int, str]],
) -> frozenset[frozenset[tuple[str, int]]]:
    """Records grouped by link key: the link structure, independent of the key strings."""
    groups: dict[str, set[tuple[str, int]]] = {}
    for party, keys in clusters_by_party.items():
        for position, key in keys.items():
            groups.setdefault(key, set()).add((party, position))
    return frozenset(frozenset(group) for group in groups.values())


def signed_manifest(path: Path, party: str, signing_key, **changes: object) -> SignedManifest:
    """A manifest for the encoded file at ``path`` signed by ``signing_key``, created now with
    a fresh nonce; ``changes`` replace fields (nonce, created_at, party...) before signing,
    as a forger holding some key could."""
    from datetime import UTC, datetime

    header = read_header(path)
    manifest = UploadManifest(
        project_id=header.project_id,
        party=party,
        record_count=header.record_count,
        clk_bits=header.clk_bits,
        payload_sha256=header.payload_sha256,
        schema_fingerprint=header.schema_fingerprint,
        kcv=header.kcv,
        software_version="0.1.0",
        created_at=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        nonce=os.urandom(16),
        leak_scan_strings=3,
        leak_scan_rows=3,
        key_context=header.key_context,
    )
    return sign_manifest(dataclasses.replace(manifest, **changes), signing_key)


def audit_events(server, event: str) -> list[dict[str, object]]:
    """Details of every ``event`` in the server's real signed audit log, in log order."""
    return [dict(entry.details) for entry in server.audit_log.entries() if entry.event == event]


def wait_until(predicate, timeout: float = 10.0, interval: float = 0.02) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(interval)


MOJ_HEADER = ("person_id", "forename", "surname", "date_of_birth", "gender", "postcode")
DFE_HEADER = ("pupil_id", "legal_forename", "legal_surname", "dob", "sex", "home_postcode")
TEST_SECRET = bytes(range(32))


def encode_rows(
    directory: Path,
    layout: str,
    rows: list[tuple[str, ...]],
    *,
    project_id: str = "p1",
    secret: bytes = TEST_SECRET,
    bad_rows: str = "fail",
    schema=None,
):
    """Write ``rows`` as a ``layout`` (moj/dfe) CSV extract, run the real ``encode_extract``
    (under ``schema``, default the shipped one) and return ({record id: CLK as bytes},
    summary)."""
    import csv

    from party.encoder_run import BadRowLimit, encode_extract
    from party.mapping import shipped_mapping
    from party.positions_file import read_positions
    from protocol.clk_file import read_clks
    from protocol.schema import default_schema
    from protocol.secret import LinkageSecret

    directory.mkdir(parents=True, exist_ok=True)
    extract = directory / f"{layout}.csv"
    with extract.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(MOJ_HEADER if layout == "moj" else DFE_HEADER)
        writer.writerows(rows)
    summary = encode_extract(
        extract_path=extract,
        mapping=shipped_mapping(layout),
        schema=schema or default_schema(),
        secret=LinkageSecret(secret),
        project_id=project_id,
        encoded_path=directory / f"{layout}.clk",
        positions_path=directory / f"{layout}.positions.csv",
        bad_rows=bad_rows,
        # These cases feed hostile values on purpose: no share of bad rows stops them.
        max_bad_rows=BadRowLimit(percent=100),
        workers=1,
    )
    _, clks = read_clks(directory / f"{layout}.clk")
    by_id = {
        record_id: clks[position].tobytes()
        for _, record_id, position in read_positions(directory / f"{layout}.positions.csv")
    }
    return by_id, summary
