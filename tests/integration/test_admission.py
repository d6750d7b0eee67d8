"""Who may hold the linkage unit's threads, and for how long: the role is checked when a call
starts (before a stream's first message is read), each identity holds a bounded number of
streams, every stream is cut when it stops making progress in either direction, and calls
that write audit entries are rate-limited per identity. Real streams over real mutual TLS."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import grpc
import pytest

from protocol import serde
from protocol.errors import ResourceLimitError
from protocol.messages import ProjectSettings, RunState, UploadChunk
from protocol.pb import linkage_pb2 as pb
from protocol.pb import linkage_pb2_grpc as pb_grpc
from tests.adversarial.conftest import create_project, upload_messages
from tests.service_helpers import SCHEMA_FINGERPRINT, planted_party_clks, write_clk_file

pytestmark = pytest.mark.integration


def _stub(server, pki, who: str, **options: int) -> tuple[grpc.Channel, pb_grpc.LinkageUnitStub]:
    pair = {"operator": pki.operator, "auditor": pki.auditor}.get(who) or pki.parties[who]
    credentials = grpc.ssl_channel_credentials(
        root_certificates=pki.ca_certificate.read_bytes(),
        private_key=pair.private_key.read_bytes(),
        certificate_chain=pair.certificate.read_bytes(),
    )
    channel = grpc.secure_channel(
        f"127.0.0.1:{server.port}", credentials, options=list(options.items())
    )
    return channel, pb_grpc.LinkageUnitStub(channel)


def _silent_upload(stub: pb_grpc.LinkageUnitStub, release: threading.Event, first=None):
    """An Upload stream that sends ``first`` (or nothing) and then nothing until released."""

    def requests():
        if first is not None:
            yield first
        release.wait(30)

    return stub.Upload.future(requests(), timeout=30)


def test_a_stream_flood_from_one_certificate_does_not_delay_another_roles_call(
    start_server, connect, pki, tmp_path: Path
) -> None:
    """The auditor certificate and MoJ's each open 12 Upload streams that never send a
    message, against 8 worker threads. The auditor's are refused at once (PERMISSION_DENIED,
    no message read); MoJ's party role may upload, so it holds at most its per-identity share
    (the rest RESOURCE_EXHAUSTED at once); and the operator's status call answers in well
    under a second throughout. Before the fix the 24 silent streams held every worker until
    the idle cut, and the operator waited for it."""
    server = start_server(stream_idle_seconds=20)
    create_project(connect(server, "operator"))
    release = threading.Event()
    channels, floods = [], {"auditor": [], "moj": []}
    try:
        for who in ("auditor", "moj"):
            channel, stub = _stub(server, pki, who)
            channels.append(channel)
            for _ in range(12):
                floods[who].append(_silent_upload(stub, release))
        time.sleep(0.5)  # every stream is open and, before the fix, holding a worker
        operator_channel, operator = _stub(server, pki, "operator")
        channels.append(operator_channel)
        for _ in range(5):
            started = time.monotonic()
            operator.GetProjectStatus(pb.GetProjectStatusRequest(project_id="p1"), timeout=10)
            assert time.monotonic() - started < 1.0
        auditor_codes = set()
        for future in floods["auditor"]:
            with pytest.raises(grpc.RpcError) as caught:
                future.result(timeout=2)
            auditor_codes.add(caught.value.code())
        assert auditor_codes == {grpc.StatusCode.PERMISSION_DENIED}
        refused = [future for future in floods["moj"] if future.done()]
        assert len(refused) >= 12 - server.config.stream_limit_per_identity
        for future in refused:
            assert future.exception().code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    finally:
        release.set()
        for channel in channels:
            channel.close()


def test_a_party_creating_a_bad_project_is_denied_before_validation(
    start_server, connect, pki
) -> None:
    """A party's CreateProject is PERMISSION_DENIED whatever it contains: the role is
    checked before the request is read as settings."""
    server = start_server()
    channel, stub = _stub(server, pki, "moj")
    with channel, pytest.raises(grpc.RpcError) as caught:
        stub.CreateProject(pb.CreateProjectRequest(project_id="NOT A LABEL"), timeout=5)
    assert caught.value.code() is grpc.StatusCode.PERMISSION_DENIED


def test_an_upload_trickling_empty_chunks_is_cut_as_idle(
    start_server, connect, pki, tmp_path: Path
) -> None:
    """After a valid header, an empty chunk every 0.2 s carries no bytes: it is not progress,
    so the 0.5 s idle cut applies (before the fix each message reset it, and one empty
    chunk every idle period held a thread for the stream's whole maximum)."""
    server = start_server(stream_idle_seconds=0.5, max_stream_seconds=60)
    create_project(connect(server, "operator"))
    path = write_clk_file(
        tmp_path / "m.clk", planted_party_clks(["moj"], seed=82, records=40)["moj"], project_id="p1"
    )
    header = upload_messages(path, "moj")[0]
    empty = serde.upload_chunk_to_proto(UploadChunk.of(0, b""))
    stop = threading.Event()

    def requests():
        yield header
        while not stop.wait(0.2):
            yield empty

    channel, stub = _stub(server, pki, "moj")
    started = time.monotonic()
    with channel:
        with pytest.raises(grpc.RpcError) as caught:
            stub.Upload(requests(), timeout=20)
        stop.set()
    assert caught.value.code() is grpc.StatusCode.CANCELLED
    assert time.monotonic() - started < 5


def test_a_link_key_download_the_client_stops_reading_is_cut(
    start_server, connect, pki, tmp_path: Path
) -> None:
    """A party reads the first batch of its 20,000 link keys and then stops reading: the
    server's sends stall on flow control, and the idle cut (0.5 s) cancels the stream and
    frees its thread instead of letting the reader hold it (before the fix downloads had
    no watchdog, and the reader got every key whenever it resumed)."""
    server = start_server(stream_idle_seconds=0.5, max_stream_seconds=60)
    operator = connect(server, "operator")
    operator.create_project(
        ProjectSettings(
            project_id="p1",
            members=("moj", "dfe"),
            schema_fingerprint=SCHEMA_FINGERPRINT,
            threshold=0.95,
        )
    )
    clks = planted_party_clks(["moj", "dfe"], seed=83, records=20_000, shared=10)
    for party in ("moj", "dfe"):
        path = write_clk_file(tmp_path / f"{party}.clk", clks[party], project_id="p1")
        connect(server, party, timeout=60).upload_file(path, party_id=party)
    assert operator.wait_for_run("p1", timeout=120).run_state is RunState.FINISHED
    # A small receive window (no BDP growth): what the server may send unread is bounded.
    channel, stub = _stub(
        server, pki, "moj", **{"grpc.http2.bdp_probe": 0, "grpc.http2.lookahead_bytes": 16384}
    )
    with channel:
        responses = stub.FetchLinkKeys(
            pb.FetchLinkKeysRequest(project_id="p1", party_id="moj"), timeout=30
        )
        received = len(next(responses).entries)
        time.sleep(3)
        with pytest.raises(grpc.RpcError) as caught:
            for message in responses:
                received += len(message.entries)
    assert caught.value.code() is grpc.StatusCode.CANCELLED
    assert received < 20_000


def test_audited_calls_are_rate_limited_per_identity(start_server, connect, tmp_path) -> None:
    """Every FetchLinkKeys writes audit entries, so one identity may make only a bounded
    number in a burst: past it RESOURCE_EXHAUSTED (and no entry is written), while another
    party's fetch is served. The log cannot be grown without bound by one caller."""
    server = start_server(audited_call_burst=5, audited_calls_per_minute=6)
    create_project(connect(server, "operator"))
    clks = planted_party_clks(["moj", "dfe"], seed=84, records=8, shared=2)
    for party in ("moj", "dfe"):
        path = write_clk_file(tmp_path / f"{party}.clk", clks[party], project_id="p1")
        connect(server, party).upload_file(path, party_id=party)
    assert connect(server, "operator").wait_for_run("p1", timeout=20).run_state is (
        RunState.FINISHED
    )
    moj = connect(server, "moj")
    # One token went on the upload; four fetches are left in moj's burst.
    for _ in range(4):
        moj.fetch_link_keys("p1", "moj")
    entries = len(server.audit_log.entries())
    for _ in range(20):
        with pytest.raises(ResourceLimitError, match="audited"):
            moj.fetch_link_keys("p1", "moj")
    assert len(server.audit_log.entries()) == entries
    assert len(connect(server, "dfe").fetch_link_keys("p1", "dfe").link_keys) == 8


def test_a_non_members_probes_are_audited(start_server, connect) -> None:
    """HMRC asking for the status, settings or audit view of a project it is not in (or of
    one that does not exist) sees NOT_FOUND each time, and each probe is in the log."""
    from protocol.errors import NotFoundError

    server = start_server()
    create_project(connect(server, "operator"))
    hmrc = connect(server, "hmrc")
    for project in ("p1", "absent"):
        for call in (hmrc.project_status, hmrc.project_settings, hmrc.fetch_audit_log):
            with pytest.raises(NotFoundError):
                call(project)
    refused = [entry for entry in server.audit_log.entries() if entry.event == "access_refused"]
    assert len(refused) == 6
    assert {entry.details["requested_project"] for entry in refused} == {"p1", "absent"}


def test_the_auditor_cannot_open_an_upload_even_silently(start_server, connect, pki) -> None:
    """An Upload from the auditor is refused before the LU waits for its first message."""
    server = start_server(stream_idle_seconds=30)
    release = threading.Event()
    channel, stub = _stub(server, pki, "auditor")
    with channel:
        future = _silent_upload(stub, release)
        with pytest.raises(grpc.RpcError) as caught:
            future.result(timeout=3)
        release.set()
    assert caught.value.code() is grpc.StatusCode.PERMISSION_DENIED
