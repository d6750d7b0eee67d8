"""Group D, resource limits and denial of service (security.md section 6, cases 20-24), plus
a short bounded load test; against real mutual-TLS servers on 127.0.0.1 (the load test runs
the linkage unit as a subprocess so its memory is measured alone). benchmarks/load.py is the
longer form."""

from __future__ import annotations

import hashlib
import socket
import ssl
import struct
import threading
import time
from pathlib import Path

import grpc
import pytest

from protocol.errors import ResourceLimitError
from protocol.messages import UploadState
from protocol.pb import linkage_pb2 as pb
from tests.adversarial.conftest import create_project, raw_stub, send, upload_messages
from tests.adversarial.load import run_load
from tests.service_helpers import MemoryAuditSink, planted_party_clks, write_clk_file

pytestmark = pytest.mark.integration


@pytest.fixture
def capped(start_server, connect, tmp_path: Path):
    audit = MemoryAuditSink()
    server = start_server(audit=audit, max_message_bytes=64 * 1024, max_upload_bytes=32 * 1024)
    create_project(connect(server, "operator"))
    path = write_clk_file(
        tmp_path / "m.clk", planted_party_clks(["moj"], seed=41, records=40)["moj"], project_id="p1"
    )
    return server, audit, path


def test_case_20_one_message_over_the_cap_is_resource_exhausted(capped, pki) -> None:
    """Case 20: a single 100 KiB message against a 64 KiB cap -> RESOURCE_EXHAUSTED."""
    server, _, path = capped
    messages = upload_messages(path, "moj")
    big = pb.UploadRequest(
        chunk=pb.UploadChunk(
            offset=0,
            data=bytes(100 * 1024),
            chunk_sha256=hashlib.sha256(bytes(100 * 1024)).digest(),
        )
    )
    channel, stub = raw_stub(server.port, pki, "moj")
    with channel, pytest.raises(ResourceLimitError):
        send(stub, [messages[0], big])


def test_case_20_a_stream_of_small_messages_over_the_total_cap_is_cut_and_deleted(
    capped, pki
) -> None:
    """Case 20: many small messages (each under the per-message cap) adding up past the
    per-upload cap -> RESOURCE_EXHAUSTED, partial data deleted and the deletion audited."""
    server, audit, path = capped
    messages = upload_messages(path, "moj")
    channel, stub = raw_stub(server.port, pki, "moj")
    with channel, pytest.raises(ResourceLimitError, match="deleted"):
        send(stub, [messages[0], messages[1], *[messages[1]] * 40])
    assert [d["reason"] for d in audit.named("payload_deleted")] == ["stream_cap"]
    assert not list((server.config.data_dir / "payloads" / "p1").iterdir())


def _stalled_upload(
    server, pki, party: str, path: Path, release: threading.Event, pace: float | None = None
):
    messages = upload_messages(path, party, chunk=64)

    def requests():
        yield messages[0]
        if pace is None:
            release.wait(20)
            return
        for message in messages[1:]:  # a trickle: one small chunk every ``pace`` seconds
            if release.wait(pace):
                return
            yield message

    channel, stub = raw_stub(server.port, pki, party)
    return channel, stub.Upload.future(requests(), timeout=20)


@pytest.mark.parametrize("kind", ["idle", "trickle"])
def test_case_21_slow_loris_streams_are_cut_by_the_server(
    start_server, connect, pki, tmp_path, kind
) -> None:
    """Case 21: an upload stream that goes silent (idle timeout 0.5 s), or trickles bytes past
    the maximum stream duration (1.5 s), is cancelled by the server well before the client's
    own 20 s deadline; the worker is freed and the party can resume at once."""
    server = start_server(stream_idle_seconds=0.5, max_stream_seconds=1.5)
    create_project(connect(server, "operator"))
    path = write_clk_file(
        tmp_path / "m.clk", planted_party_clks(["moj"], seed=42, records=40)["moj"], project_id="p1"
    )
    release = threading.Event()
    started = time.monotonic()
    channel, future = _stalled_upload(
        server, pki, "moj", path, release, pace=None if kind == "idle" else 0.2
    )
    with channel:
        with pytest.raises(grpc.RpcError) as caught:
            future.result(timeout=10)
        release.set()
    assert caught.value.code() is grpc.StatusCode.CANCELLED
    assert time.monotonic() - started < 5
    assert connect(server, "moj").upload_file(path, party_id="moj").state is UploadState.COMPLETE


def test_case_22_rpcs_beyond_maximum_concurrent_rpcs_are_resource_exhausted(
    start_server, connect, pki, tmp_path
) -> None:
    """Case 22: with maximum_concurrent_rpcs=2 and two streams held open, a third call is
    RESOURCE_EXHAUSTED at once; the server keeps serving when they end (no crash)."""
    server = start_server(max_concurrent_rpcs=2, stream_idle_seconds=30)
    create_project(connect(server, "operator"))
    clks = planted_party_clks(["moj", "dfe"], seed=43, records=40)
    release = threading.Event()
    held = []
    for party in ("moj", "dfe"):
        path = write_clk_file(tmp_path / f"{party}.clk", clks[party], project_id="p1")
        held.append(_stalled_upload(server, pki, party, path, release))
    time.sleep(0.3)
    channel, stub = raw_stub(server.port, pki, "moj")
    with channel:
        with pytest.raises(grpc.RpcError) as caught:
            stub.GetProjectStatus(pb.GetProjectStatusRequest(project_id="p1"), timeout=5)
        assert caught.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        release.set()
        for held_channel, future in held:
            future.result(timeout=10)
            held_channel.close()
        assert (
            stub.GetProjectStatus(pb.GetProjectStatusRequest(project_id="p1"), timeout=5).project_id
            == "p1"
        )


def _frame(kind: int, payload: bytes, flags: int = 0, stream: int = 0) -> bytes:
    return (
        struct.pack(">I", len(payload))[1:]
        + bytes([kind, flags])
        + struct.pack(">I", stream)
        + payload
    )


def test_case_23_ping_flood_gets_goaway_and_others_are_unaffected(
    start_server, connect, pki
) -> None:
    """Case 23: a mutually authenticated client flooding HTTP/2 PINGs (no data) gets GOAWAY
    ENHANCE_YOUR_CALM "too_many_pings"; a well-behaved client is served meanwhile."""
    server = start_server(min_ping_interval_seconds=1)
    create_project(connect(server, "operator"))
    context = ssl.create_default_context(cafile=str(pki.ca_certificate))
    context.load_cert_chain(
        str(pki.parties["moj"].certificate), str(pki.parties["moj"].private_key)
    )
    context.set_alpn_protocols(["h2"])
    received = b""
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as raw:
        with context.wrap_socket(raw, server_hostname="localhost") as connection:
            connection.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + _frame(4, b""))
            try:
                for number in range(20):
                    connection.sendall(_frame(6, number.to_bytes(8, "big")))
                    time.sleep(0.01)
            except OSError:
                pass  # the server closed the connection after its GOAWAY
            deadline = time.monotonic() + 3
            while time.monotonic() < deadline:
                try:
                    data = connection.recv(65536)
                except (OSError, ssl.SSLError):
                    break
                if not data:
                    break
                received += data
    goaway = None
    index = 0
    while index + 9 <= len(received):
        length, kind = int.from_bytes(received[index : index + 3], "big"), received[index + 3]
        if kind == 7:
            payload = received[index + 9 : index + 9 + length]
            goaway = (int.from_bytes(payload[4:8], "big"), payload[8:])
        index += 9 + length
    assert goaway == (0xB, b"too_many_pings")
    assert connect(server, "dfe").project_status("p1").project_id == "p1"


def test_case_24_compressed_message_inflating_past_the_cap_is_refused(capped, pki) -> None:
    """Case 24: a gzip-compressed chunk (a few hundred bytes on the wire) that inflates to
    200 KiB against a 64 KiB cap is RESOURCE_EXHAUSTED: the cap applies after decompression
    (verified on grpcio 1.85)."""
    server, _, path = capped
    messages = upload_messages(path, "moj")
    bomb = pb.UploadRequest(
        chunk=pb.UploadChunk(
            offset=0,
            data=bytes(200 * 1024),
            chunk_sha256=hashlib.sha256(bytes(200 * 1024)).digest(),
        )
    )
    channel, stub = raw_stub(server.port, pki, "moj")
    with channel, pytest.raises(grpc.RpcError) as caught:
        stub.Upload(iter([messages[0], bomb]), timeout=5, compression=grpc.Compression.Gzip)
    assert caught.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED


def test_bounded_load_many_parties_upload_and_poll(lu_process, pki, tmp_path) -> None:
    """Load (short form of benchmarks/load.py): 8 projects x 2 parties upload concurrently
    while 8 pollers call status for 3 s against a subprocess LU; every upload completes, no
    status call fails, p99 status latency stays under 1 s and the server's RSS grows by less
    than 128 MiB over its idle size (auto_run off: matching memory is not measured here). The
    idle size depends on what the installed libraries load, so growth is what is bounded."""
    result = run_load(lu_process(), pki, tmp_path, projects=8, pollers=8, seconds=3.0, records=2000)
    assert result["uploads_completed"] == 16 and result["status_errors"] == 0
    assert result["status_calls"] > 50
    assert result["status_p99_ms"] < 1000
    assert result["server_rss_mib"] - result["server_rss_start_mib"] < 128, result
