"""Group E, crash and durability (security.md section 6, cases 25-29). The linkage unit is
killed with SIGKILL as a real ``python -m bloomlink serve`` subprocess (no shutdown handler
runs) mid-upload and mid-run, then restarted on the same port and data directory. A full
disk is a real kernel error: RLIMIT_FSIZE makes the next write fail with EFBIG, exactly the
path ENOSPC takes.

Case 27's audit half runs the real signed audit log: the append of ``upload_committed`` hits
the full disk, the chain still verifies, and the retry commits once. Case 29 covers manifest
creation times against the LU's clock, runs ordered by insertion, and the audit log ordered
by sequence number when the wall clock jumps back.
"""

from __future__ import annotations

import json
import resource
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from auditor.verify import verify_audit_log
from linkage_unit.audit_log import AuditLog
from party.client import LinkageClient
from protocol.clk_file import HEADER_LENGTH, read_header
from protocol.errors import InvalidRequestError, PreconditionError, ResourceLimitError
from protocol.messages import RunState, UploadHeader, UploadState
from tests.adversarial.conftest import (
    audit_events,
    create_project,
    partition,
    raw_stub,
    send,
    signed_manifest,
    upload_all,
    upload_messages,
    wait_until,
)
from tests.audit_fixtures import append
from tests.service_helpers import MemoryAuditSink, planted_party_clks, write_clk_file

pytestmark = pytest.mark.integration


def _client(pki, port: int, who: str) -> LinkageClient:
    pair = pki.operator if who == "operator" else pki.parties[who]
    return LinkageClient(
        f"127.0.0.1:{port}", tls=pki.tls_files(pair), timeout=5, retries=3, backoff=0.1
    )


def test_case_25_sigkill_mid_upload_resumes_to_identical_bytes(
    lu_process, pki, tmp_path: Path
) -> None:
    """Case 25: SIGKILL while a stream is half-way; after restart the LU reports exactly the
    offset it had committed, the client resumes from there (no duplicate chunks) and the
    stored file is byte-identical to the party's."""
    lu = lu_process()
    port = lu.start()
    with _client(pki, port, "operator") as operator:
        create_project(operator)
    path = write_clk_file(
        tmp_path / "m.clk", planted_party_clks(["moj"], seed=51, records=64)["moj"], project_id="p1"
    )
    messages = upload_messages(path, "moj", chunk=256)
    release = threading.Event()

    def stalled():
        yield from messages[:4]
        release.wait(10)

    header = UploadHeader.from_clk_file_header(read_header(path), party_id="moj")
    channel, stub = raw_stub(port, pki, "moj")
    future = stub.Upload.future(stalled(), timeout=15)
    with _client(pki, port, "moj") as moj:
        wait_until(lambda: moj.upload_offset(header).committed_bytes == 768)
    lu.kill()
    release.set()
    with pytest.raises(grpc.RpcError):
        future.result()
    channel.close()
    lu.start()
    with _client(pki, port, "moj") as moj:
        assert moj.upload_offset(header).committed_bytes == 768
        assert moj.upload_file(path, party_id="moj").state is UploadState.COMPLETE
    assert (lu.data_dir / "payloads" / "p1" / "moj.clk").read_bytes() == path.read_bytes()


def _keys(pki, port: int, parties) -> dict[str, dict[int, str]]:
    result = {}
    for party in parties:
        with _client(pki, port, party) as client:
            fetched = client.fetch_link_keys("p1", party)
            again = client.fetch_link_keys("p1", party)
        assert fetched == again  # idempotent: the same keys every time, never re-issued
        result[party] = dict(zip(fetched.positions, fetched.link_keys, strict=True))
    return result


def test_case_26_sigkill_mid_run_gives_the_same_link_structure(
    lu_process, start_server, connect, pki, tmp_path: Path
) -> None:
    """Case 26: SIGKILL while the run is RUNNING (no keys can be fetched before FINISHED);
    after restart the run resumes and its partition of records into clusters equals an
    uninterrupted run's; each party gets only its own positions; fetching twice returns
    the same keys, and the audit log shows one release per fetch, per party."""
    parties = ("moj", "dfe", "hmrc")
    clks = planted_party_clks(list(parties), seed=52, records=1500, shared=400)
    reference = start_server(data_dir=tmp_path / "reference")
    create_project(connect(reference, "operator"), members=parties, retention_days=1)
    (tmp_path / "ref-files").mkdir()
    upload_all(reference, connect, tmp_path / "ref-files", clks)
    assert (
        connect(reference, "operator").wait_for_run("p1", timeout=60).run_state is RunState.FINISHED
    )
    expected = partition(_keys(pki, reference.port, parties))

    lu = lu_process()
    port = lu.start()
    with _client(pki, port, "operator") as operator:
        create_project(operator, members=parties, retention_days=1)
        for party in parties:
            with _client(pki, port, party) as client:
                client.upload_file(tmp_path / "ref-files" / f"{party}.clk", party_id=party)
        wait_until(
            lambda: (
                operator.project_status("p1").run_state in (RunState.RUNNING, RunState.FINISHED)
            ),
            timeout=20,
            interval=0.005,
        )
        state_at_kill = operator.project_status("p1").run_state
    if state_at_kill is RunState.RUNNING:
        with _client(pki, port, "moj") as moj, pytest.raises(PreconditionError):
            moj.fetch_link_keys("p1", "moj")
    lu.kill()
    lu.start()
    with _client(pki, port, "operator") as operator:
        assert operator.wait_for_run("p1", timeout=60).run_state is RunState.FINISHED
    keys = _keys(pki, port, parties)
    assert partition(keys) == expected
    for party in parties:
        assert sorted(keys[party]) == list(range(1500))
    events = [json.loads(line) for line in (lu.data_dir / "audit.jsonl").read_text().splitlines()]
    released = [e for e in events if e.get("event") == "keys_released"]
    assert sorted(e["details"]["party"] for e in released) == sorted(2 * parties)
    assert state_at_kill is RunState.RUNNING, "the kill must land mid-run"


class _FileSizeLimit:
    """RLIMIT_FSIZE on this process: a write past ``limit`` bytes fails with EFBIG (Python
    ignores SIGXFSZ), the same error path as a full disk."""

    def __init__(self, limit: int) -> None:
        self.limit = limit

    def __enter__(self) -> None:
        self.previous = resource.getrlimit(resource.RLIMIT_FSIZE)
        resource.setrlimit(resource.RLIMIT_FSIZE, (self.limit, self.previous[1]))

    def __exit__(self, *exc_info: object) -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, self.previous)


def test_case_27_full_disk_during_upload_is_a_clean_error_and_a_retry_succeeds(
    start_server, connect, pki, tmp_path: Path
) -> None:
    """Case 27 (upload): the disk fills after some chunks are committed -> RESOURCE_EXHAUSTED
    naming disk space; the partial file holds exactly the committed bytes (no torn tail);
    once space is back, the party's retry resumes and completes byte-identically."""
    server = start_server(audit=MemoryAuditSink())
    create_project(connect(server, "operator"))
    path = write_clk_file(
        tmp_path / "m.clk",
        planted_party_clks(["moj"], seed=53, records=512)["moj"],
        project_id="p1",
    )
    messages = upload_messages(path, "moj", chunk=4096)
    partial = server.config.data_dir / "payloads" / "p1" / "moj.partial"
    channel, stub = raw_stub(server.port, pki, "moj")
    with channel:
        assert send(stub, messages[:3]).committed_bytes == 8192
        with (
            _FileSizeLimit(HEADER_LENGTH + 8192 + 100),
            pytest.raises(ResourceLimitError, match="disk space"),
        ):
            send(stub, [messages[0], *messages[3:]])
    assert partial.stat().st_size == HEADER_LENGTH + 8192
    assert server.storage.upload("p1", "moj").committed_bytes == 8192
    assert connect(server, "moj").upload_file(path, party_id="moj").state is UploadState.COMPLETE
    assert (
        server.config.data_dir / "payloads" / "p1" / "moj.clk"
    ).read_bytes() == path.read_bytes()


def test_case_27_full_disk_while_writing_results_fails_the_run_and_a_restart_finishes(
    start_server, connect, tmp_path: Path
) -> None:
    """Case 27 (results): the disk is full when link keys are written -> the run is FAILED
    (one SQLite transaction: no partial key set, nothing fetchable), shown as such in status
    even if the disk refuses to record the failure; after space is freed the operator's
    restart finishes with a key for every record."""
    server = start_server()
    operator = connect(server, "operator")
    create_project(operator, auto_run=False)
    upload_all(
        server,
        connect,
        tmp_path,
        planted_party_clks(["moj", "dfe"], seed=54, records=3000, shared=100),
    )
    largest = max(p.stat().st_size for p in server.config.data_dir.glob("state.sqlite3*"))
    with _FileSizeLimit(largest + 32 * 1024):
        operator.start_run("p1")
        failed = operator.wait_for_run("p1", timeout=60)
        # Even when the disk refuses to record the failure itself, status shows it and why.
        assert failed.run_state is RunState.FAILED
        assert "disk is full" in failed.progress_stage
    with pytest.raises(PreconditionError):
        connect(server, "moj").fetch_link_keys("p1", "moj")
    operator.start_run("p1")
    assert operator.wait_for_run("p1", timeout=60).run_state is RunState.FINISHED
    assert len(connect(server, "moj").fetch_link_keys("p1", "moj").link_keys) == 3000


def _verify(server) -> None:
    log = server.audit_log
    report = verify_audit_log(log.path, log._key.public_key(), check_wire=False)
    assert report.passed, [check.message for check in report.failures]


def test_case_27_full_disk_during_the_audit_append_keeps_the_chain_and_the_retry_commits(
    start_server, connect, tmp_path: Path
) -> None:
    """Case 27 (audit): the disk fills exactly when ``upload_committed`` is appended ->
    RESOURCE_EXHAUSTED naming disk space; the log gains no partial line and its hash chain and
    signed head still verify; the upload is not counted (PARTIAL, every byte kept, no run).
    Once space is back the party's retry commits it, with exactly one upload_committed."""
    server = start_server()  # the real signed audit log
    create_project(connect(server, "operator"))
    path = write_clk_file(
        tmp_path / "m.clk", planted_party_clks(["moj"], seed=56, records=16)["moj"], project_id="p1"
    )
    log_path = server.audit_log.path
    # Grow the log with real entries until it is the largest file the LU writes, so a file
    # size limit just past its next line fails the audit append and nothing else.
    largest = max(p.stat().st_size for p in server.config.data_dir.glob("state.sqlite3*"))
    while log_path.stat().st_size < largest + 256 * 1024:
        append(
            server.audit_log,
            "party_authenticated",
            project_id=None,
            details={"party": "moj", "role": "party", "certificate_fingerprint": "ab" * 32},
        )
    line = len(log_path.read_bytes().splitlines()[-1]) + 1  # party_authenticated fits, the
    before = log_path.stat().st_size  # longer upload_committed does not
    full = pytest.raises(ResourceLimitError, match="disk space for its audit log")
    with _FileSizeLimit(before + line + 64), full:
        connect(server, "moj").upload_file(path, party_id="moj")
    assert log_path.read_bytes().endswith(b"\n") and not audit_events(server, "upload_committed")
    _verify(server)
    record = server.storage.upload("p1", "moj")
    assert record.state is UploadState.PARTIAL
    assert record.committed_bytes == record.header.payload_bytes
    assert connect(server, "moj").upload_file(path, party_id="moj").state is UploadState.COMPLETE
    assert len(audit_events(server, "upload_committed")) == 1
    _verify(server)


def test_case_28_out_of_order_duplicate_and_missing_offsets(
    start_server, connect, pki, tmp_path: Path
) -> None:
    """Case 28: a gap is INVALID_ARGUMENT naming the expected offset; a duplicate of a
    committed chunk is harmless; a stream that stops early stays PARTIAL at its offset."""
    server = start_server()
    create_project(connect(server, "operator"))
    path = write_clk_file(
        tmp_path / "m.clk", planted_party_clks(["moj"], seed=55, records=40)["moj"], project_id="p1"
    )
    messages = upload_messages(path, "moj", chunk=100)
    channel, stub = raw_stub(server.port, pki, "moj")
    with channel:
        with pytest.raises(InvalidRequestError, match="expected offset is 0"):
            send(stub, [messages[0], messages[3]])
        assert send(stub, messages[:4]).committed_bytes == 300
        with pytest.raises(InvalidRequestError, match="expected offset is 300"):
            send(stub, [messages[0], messages[2], messages[6]])
        assert send(stub, [messages[0], messages[1], *messages[1:]]).upload_state == 3


def test_case_29_a_clock_jump_back_does_not_reorder_runs(tmp_path: Path) -> None:
    """Case 29: runs are ordered by insertion sequence, not wall clock: after the LU's clock
    jumps back a day, the newest run is still the latest, and unfinished runs resume in
    order."""
    from linkage_unit.storage import Storage
    from protocol.messages import ProjectSettings
    from tests.service_helpers import SCHEMA_FINGERPRINT

    now = [1_800_000_000.0]
    store = Storage(tmp_path / "lu", clock=lambda: now[0])
    store.create_project(
        ProjectSettings(
            project_id="p1", members=("moj", "dfe"), schema_fingerprint=SCHEMA_FINGERPRINT
        )
    )
    store.create_run("p1", "first")
    now[0] -= 86400  # the clock jumps back a day
    store.create_run("p1", "second")
    assert store.latest_run("p1").run_id == "second"
    assert [run.run_id for run in store.unfinished_runs()] == ["first", "second"]
    store.close()


def _at(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def test_case_29_manifest_times_are_checked_against_the_lu_clock(
    start_server, connect, tmp_path: Path
) -> None:
    """Case 29: a manifest created a day ahead of the LU's clock, or 31 days before it ->
    INVALID_ARGUMENT (reason manifest_time, nothing stored); 5 minutes ahead is within the
    10-minute tolerance and is accepted."""
    server = start_server(require_manifest=True)
    create_project(connect(server, "operator"))
    path = write_clk_file(
        tmp_path / "m.clk", planted_party_clks(["moj"], seed=57)["moj"], project_id="p1"
    )
    key, now, moj = Ed25519PrivateKey.generate(), datetime.now(UTC), connect(server, "moj")
    for moment, message in ((now + timedelta(days=1), "ahead"), (now - timedelta(31), "old")):
        manifest = signed_manifest(path, "moj", key, created_at=_at(moment))
        with pytest.raises(InvalidRequestError, match=message):
            moj.upload_file(path, party_id="moj", manifest=manifest)
    assert server.storage.upload("p1", "moj") is None
    assert [e["reason"] for e in audit_events(server, "upload_refused")] == ["manifest_time"] * 2
    manifest = signed_manifest(path, "moj", key, created_at=_at(now + timedelta(minutes=5)))
    assert moj.upload_file(path, party_id="moj", manifest=manifest).state is UploadState.COMPLETE


def test_case_29_the_audit_log_is_ordered_by_sequence_not_clock(tmp_path: Path) -> None:
    """Case 29: the LU's clock jumps back a day between audit entries -> the log still
    verifies, in sequence order, and the entry written after the jump is the later one."""
    moments = iter(
        [datetime(2026, 3, 2, 12, tzinfo=UTC)] * 2 + [datetime(2026, 3, 1, 12, tzinfo=UTC)] * 9
    )
    key = Ed25519PrivateKey.generate()
    with AuditLog(tmp_path / "audit.jsonl", signing_key=key, clock=lambda: next(moments)) as log:
        for party in ("moj", "dfe"):
            append(
                log,
                "party_authenticated",
                project_id=None,
                details={"party": party, "role": "party", "certificate_fingerprint": "cd" * 32},
            )
        entries = log.entries()
    assert [entry.sequence for entry in entries] == [0, 1]
    assert entries[1].timestamp < entries[0].timestamp and entries[1].details["party"] == "dfe"
    report = verify_audit_log(tmp_path / "audit.jsonl", key.public_key(), check_wire=False)
    assert report.passed, [check.message for check in report.failures]
