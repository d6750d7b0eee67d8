"""Upload failures, caps, duplicates, incompatible parties and restarts, over real mTLS."""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from party.client import error_from_rpc
from protocol import serde
from protocol.clk_file import HEADER_LENGTH, read_header
from protocol.errors import (
    AlreadyExistsError,
    CompatibilityError,
    InvalidRequestError,
    ResourceLimitError,
)
from protocol.messages import ProjectSettings, RunState, UploadChunk, UploadHeader, UploadState
from protocol.pb import linkage_pb2 as pb
from protocol.pb import linkage_pb2_grpc as pb_grpc
from protocol.tls import certificate_fingerprint
from tests.service_helpers import (
    SCHEMA_FINGERPRINT,
    MemoryAuditSink,
    planted_party_clks,
    write_clk_file,
)

pytestmark = pytest.mark.integration


def _project(operator, members=("moj", "dfe"), project_id="p1", **options) -> None:
    operator.create_project(
        ProjectSettings(
            project_id=project_id, members=members, schema_fingerprint=SCHEMA_FINGERPRINT, **options
        )
    )


def _stub(server, pki, party: str) -> tuple[grpc.Channel, pb_grpc.LinkageUnitStub]:
    pair = pki.parties[party]
    credentials = grpc.ssl_channel_credentials(
        root_certificates=pki.ca_certificate.read_bytes(),
        private_key=pair.private_key.read_bytes(),
        certificate_chain=pair.certificate.read_bytes(),
    )
    channel = grpc.secure_channel(f"127.0.0.1:{server.port}", credentials)
    return channel, pb_grpc.LinkageUnitStub(channel)


def _messages(
    path: Path,
    party: str,
    *,
    chunk: int = 100,
    corrupt_at: int | None = None,
    header_digest: bytes | None = None,
) -> list[pb.UploadRequest]:
    header = UploadHeader.from_clk_file_header(read_header(path), party_id=party)
    if header_digest is not None:
        header = UploadHeader(
            **{**{f: getattr(header, f) for f in header.__slots__}, "payload_sha256": header_digest}
        )
    payload = path.read_bytes()[HEADER_LENGTH:]
    messages = [serde.upload_header_to_proto(header)]
    for offset in range(0, len(payload), chunk):
        data = payload[offset : offset + chunk]
        message = serde.upload_chunk_to_proto(UploadChunk.of(offset, data))
        if corrupt_at == offset:
            message.chunk.data = bytes([data[0] ^ 1]) + data[1:]
        messages.append(message)
    return messages


def _send(stub, messages) -> pb.UploadResponse:
    try:
        return stub.Upload(iter(messages), timeout=5)
    except grpc.RpcError as error:
        raise error_from_rpc(error) from None


@pytest.fixture
def uploaded(start_server, connect, tmp_path: Path):
    audit = MemoryAuditSink()
    server = start_server(audit=audit, max_message_bytes=64 * 1024, max_upload_bytes=32 * 1024)
    _project(connect(server, "operator"))
    clks = planted_party_clks(["moj", "dfe"], seed=7, records=40, shared=10)
    paths = {p: write_clk_file(tmp_path / f"{p}.clk", clks[p], project_id="p1") for p in clks}
    return server, audit, paths


def test_corrupted_chunk_is_refused_and_committed_data_kept(uploaded, pki) -> None:
    server, _, paths = uploaded
    channel, stub = _stub(server, pki, "moj")
    with channel, pytest.raises(InvalidRequestError, match="offset 300"):
        _send(stub, _messages(paths["moj"], "moj", corrupt_at=300))
    header = pb.GetUploadOffsetRequest(
        project_id="p1", party_id="moj", payload_sha256=read_header(paths["moj"]).payload_sha256
    )
    with _stub(server, pki, "moj")[0] as channel2:
        held = pb_grpc.LinkageUnitStub(channel2).GetUploadOffset(header, timeout=5)
    assert held.committed_bytes == 300 and held.upload_state == pb.UPLOAD_STATE_PARTIAL


def test_gap_and_truncated_stream(uploaded, pki) -> None:
    server, _, paths = uploaded
    channel, stub = _stub(server, pki, "moj")
    messages = _messages(paths["moj"], "moj")
    with channel:
        with pytest.raises(InvalidRequestError, match="expected offset is 0"):
            _send(stub, [messages[0], messages[3]])
        partial = _send(stub, messages[:4])  # a stream that ends early: progress, not done
        assert partial.upload_state == pb.UPLOAD_STATE_PARTIAL and partial.committed_bytes == 300
        done = _send(stub, [messages[0], *messages[2:]])  # resends a committed chunk: harmless
    assert done.upload_state == pb.UPLOAD_STATE_COMPLETE


def test_wrong_total_digest_is_refused_and_deleted(uploaded, pki) -> None:
    server, audit, paths = uploaded
    channel, stub = _stub(server, pki, "moj")
    with channel, pytest.raises(InvalidRequestError, match="digest"):
        _send(stub, _messages(paths["moj"], "moj", header_digest=hashlib.sha256(b"x").digest()))
    assert [d["reason"] for d in audit.named("payload_deleted")] == ["digest_mismatch"]
    assert not list((server.config.data_dir / "payloads" / "p1").iterdir())


def test_oversized_message_is_resource_exhausted(uploaded, pki) -> None:
    server, _, paths = uploaded
    channel, stub = _stub(server, pki, "moj")
    messages = _messages(paths["moj"], "moj")
    big = serde.upload_chunk_to_proto(UploadChunk.of(0, bytes(100 * 1024)))
    with channel, pytest.raises(ResourceLimitError):
        _send(stub, [messages[0], big])


def test_stream_of_small_messages_cannot_pass_the_total_cap(uploaded, pki) -> None:
    server, audit, paths = uploaded
    channel, stub = _stub(server, pki, "moj")
    messages = _messages(paths["moj"], "moj")
    replays = [messages[0], messages[1], messages[2]] + [messages[1]] * 40  # 40 KiB charged
    with channel, pytest.raises(ResourceLimitError, match="deleted"):
        _send(stub, replays)
    assert [d["reason"] for d in audit.named("payload_deleted")] == ["stream_cap"]
    assert not list((server.config.data_dir / "payloads" / "p1").iterdir())


def test_payload_over_the_cap_is_refused_at_the_header(
    start_server, connect, tmp_path: Path
) -> None:
    server = start_server(max_upload_bytes=1024)
    _project(connect(server, "operator"))
    path = write_clk_file(
        tmp_path / "m.clk", planted_party_clks(["moj"], seed=1)["moj"], project_id="p1"
    )
    with pytest.raises(ResourceLimitError):
        connect(server, "moj").upload_file(path, party_id="moj")


def test_duplicate_upload(uploaded, connect, pki, tmp_path: Path) -> None:
    server, audit, paths = uploaded
    moj = connect(server, "moj")
    assert moj.upload_file(paths["moj"], party_id="moj").state is UploadState.COMPLETE
    assert moj.upload_file(paths["moj"], party_id="moj").state is UploadState.COMPLETE  # no-op
    other = write_clk_file(
        tmp_path / "other.clk", planted_party_clks(["moj"], seed=99)["moj"], project_id="p1"
    )
    with pytest.raises(AlreadyExistsError):
        moj.upload_file(other, party_id="moj")
    assert len(audit.named("upload_committed")) == 1
    authenticated = audit.named("party_authenticated")[0]
    assert authenticated["certificate_fingerprint"] == certificate_fingerprint(
        pki.parties["moj"].certificate.read_bytes()
    )


@pytest.mark.parametrize(
    ("aspect", "options", "words"),
    [
        ("kcv", {"kcv": bytes(16)}, "a different linkage secret?"),
        ("schema_fingerprint", {"schema_fingerprint": bytes(32)}, "different schema"),
        ("clk_bits", {"clk_bits": 512}, "bits long"),
    ],
)
def test_an_incompatible_upload_is_refused_when_its_header_arrives(
    start_server, connect, pki, tmp_path: Path, aspect, options, words
) -> None:
    """Once MoJ has uploaded, DfE's header with another KCV or CLK length (or, from the
    first upload on, another schema than the project's) is refused at once with
    CompatibilityError naming DfE and the aspect in plain words: no byte is stored, the
    refusal is audited, and no run starts. Before, the whole file was accepted and only the
    run was refused."""
    audit = MemoryAuditSink()
    server = start_server(audit=audit)
    operator = connect(server, "operator")
    _project(operator)
    clks = planted_party_clks(["moj", "dfe"], seed=5, records=10, shared=3)
    connect(server, "moj").upload_file(
        write_clk_file(tmp_path / "m.clk", clks["moj"], project_id="p1"), party_id="moj"
    )
    dfe_clks = clks["dfe"] if aspect != "clk_bits" else np.hstack([clks["dfe"], clks["dfe"]])
    dfe_file = write_clk_file(tmp_path / "d.clk", dfe_clks, project_id="p1", **options)
    channel, stub = _stub(server, pki, "dfe")
    with channel, pytest.raises(CompatibilityError) as caught:
        _send(stub, _messages(dfe_file, "dfe"))
    assert (caught.value.party, caught.value.aspect) == ("dfe", aspect)
    assert words in caught.value.message
    assert server.storage.upload("p1", "dfe") is None
    assert not (server.config.data_dir / "payloads" / "p1" / "dfe.partial").exists()
    assert audit.named("upload_refused") == [{"party": "dfe", "reason": aspect}]
    assert operator.project_status("p1").run_state is RunState.WAITING_FOR_UPLOADS
    assert not audit.named("run_started")


def test_the_run_still_checks_what_a_header_cannot_show(
    start_server, connect, tmp_path: Path
) -> None:
    """Headers that agree pass the early check; the CLKs themselves (here DfE's bit density
    far from MoJ's) are still checked before any comparison, and the run is refused."""
    audit = MemoryAuditSink()
    server = start_server(audit=audit)
    operator = connect(server, "operator")
    _project(operator)
    clks = planted_party_clks(["moj", "dfe"], seed=6, records=20, shared=0)
    clks["dfe"] = clks["dfe"] & (clks["dfe"] >> 1) & (clks["dfe"] >> 2)
    for party in ("moj", "dfe"):
        path = write_clk_file(tmp_path / f"{party}.clk", clks[party], project_id="p1")
        connect(server, party).upload_file(path, party_id=party)
    status = operator.wait_for_run("p1", timeout=20)
    assert status.run_state is RunState.REFUSED
    # With two parties both sit the same distance from their median density, so which one
    # the check names is a floating-point tie; the aspect and the refusal are what matter.
    named = status.check_party_id
    assert named in {"moj", "dfe"} and status.check_aspect == "bit_density"
    assert audit.named("checks_failed") == [{"party": named, "aspect": "bit_density"}]
    assert not audit.named("run_started")
    again = operator.start_run("p1")  # the operator's retry is checked, and refused, again
    retried = operator.wait_for_run("p1", timeout=20)
    assert retried.run_id == again.run_id != status.run_id
    assert retried.run_state is RunState.REFUSED and retried.check_party_id == named


def test_server_stopped_mid_upload_resumes_on_restart(
    start_server, connect, pki, tmp_path: Path
) -> None:
    data_dir = tmp_path / "lu"
    server = start_server(data_dir=data_dir)
    _project(connect(server, "operator"))
    clks = planted_party_clks(["moj", "dfe"], seed=11, records=40, shared=10)
    path = write_clk_file(tmp_path / "m.clk", clks["moj"], project_id="p1")
    messages = _messages(path, "moj", chunk=256)
    release = threading.Event()

    def stalled() -> Iterator[pb.UploadRequest]:
        yield from messages[:3]
        release.wait(5)

    channel, stub = _stub(server, pki, "moj")
    future = stub.Upload.future(stalled(), timeout=10)
    moj = connect(server, "moj")
    header = UploadHeader.from_clk_file_header(read_header(path), party_id="moj")
    deadline = time.monotonic() + 5
    while moj.upload_offset(header).committed_bytes < 512 and time.monotonic() < deadline:
        time.sleep(0.02)
    server.stop(0)
    release.set()
    with pytest.raises(grpc.RpcError):
        future.result()
    channel.close()
    restarted = start_server(data_dir=data_dir)
    moj = connect(restarted, "moj")
    assert moj.upload_offset(header).committed_bytes == 512
    assert moj.upload_file(path, party_id="moj").state is UploadState.COMPLETE
    stored = (data_dir / "payloads" / "p1" / "moj.clk").read_bytes()
    assert stored == path.read_bytes()


def test_server_stopped_mid_run_finishes_the_run_after_restart(
    start_server, connect, tmp_path: Path
) -> None:
    data_dir = tmp_path / "lu"
    # run_workers=0 holds runs QUEUED, so the server can be stopped with a run persisted but
    # not executed, exactly the state a crash mid-run leaves behind.
    server = start_server(data_dir=data_dir, run_workers=0)
    _project(connect(server, "operator"))
    clks = planted_party_clks(["moj", "dfe"], seed=13, records=20, shared=5)
    for party in ("moj", "dfe"):
        path = write_clk_file(tmp_path / f"{party}.clk", clks[party], project_id="p1")
        connect(server, party).upload_file(path, party_id=party)
    assert connect(server, "operator").project_status("p1").run_state is RunState.QUEUED
    server.stop(0)
    restarted = start_server(data_dir=data_dir)
    status = connect(restarted, "operator").wait_for_run("p1", timeout=20)
    assert status.run_state is RunState.FINISHED and status.linked_record_count == 10
    assert len(connect(restarted, "dfe").fetch_link_keys("p1", "dfe").link_keys) == 20
