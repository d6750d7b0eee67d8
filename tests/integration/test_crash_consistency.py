"""Crash consistency: every multi-step write of the linkage unit survives a SIGKILL between
its steps, and an audit append that fails, without releasing anything early, losing an
audit entry, or issuing new keys silently.

The kills are real: ``python -m tests.fault_server`` is the real linkage unit (real mTLS,
storage, signed audit log) with a fault injected through its own parameters; it SIGKILLs
itself at the named point and is restarted as plain ``bloomlink serve`` on the same data.
The failing appends run in-process against the real signed log, refusing one event.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Mapping
from pathlib import Path

import grpc
import pytest

from auditor.verify import verify_audit_log
from linkage_unit.audit_log import AuditLog
from party.client import LinkageClient
from protocol.audit_events import AuditEvent
from protocol.errors import AuditError, PreconditionError, ServiceError
from protocol.messages import ProjectSettings, RunState, UploadState
from protocol.signing import load_public_key
from tests.adversarial.conftest import create_project, partition, upload_messages, wait_until
from tests.service_helpers import SCHEMA_FINGERPRINT, planted_party_clks, write_clk_file

pytestmark = pytest.mark.integration

PARTIES = ("moj", "dfe")


def _client(pki, port: int, who: str) -> LinkageClient:
    pair = {"operator": pki.operator, "auditor": pki.auditor}.get(who) or pki.parties[who]
    return LinkageClient(
        f"127.0.0.1:{port}", tls=pki.tls_files(pair), timeout=5, retries=3, backoff=0.1
    )


def _files(tmp_path: Path, *, seed: int, records: int = 30) -> dict[str, Path]:
    clks = planted_party_clks(list(PARTIES), seed=seed, records=records, shared=10)
    return {
        party: write_clk_file(tmp_path / f"{party}.clk", clks[party], project_id="p1")
        for party in PARTIES
    }


def _upload(pki, port: int, files: Mapping[str, Path]) -> None:
    for party, path in files.items():
        with _client(pki, port, party) as client:
            client.upload_file(path, party_id=party)


def _events(data_dir: Path, event: str) -> list[dict]:
    log = AuditLog.open(
        data_dir / "audit.jsonl", signing_key_path=data_dir / "audit-signing-key.pem"
    )
    with log:
        return [dict(entry.details) for entry in log.entries() if entry.event == event]


def _verify(data_dir: Path, pki, port: int) -> None:
    """The auditor fetches the whole log over mTLS and verifies it."""
    with _client(pki, port, "auditor") as auditor:
        log, head = auditor.fetch_audit_log()
        key = auditor.audit_public_key()
    path = data_dir.parent / f"{data_dir.name}-fetched.jsonl"
    path.write_bytes(log)
    path.with_name(path.name + ".head").write_bytes(head)
    report = verify_audit_log(path, load_public_key(key), check_wire=False)
    assert report.passed, report.to_text()


def _stored_key_digests(data_dir: Path) -> dict[str, str]:
    with sqlite3.connect(f"file:{data_dir / 'state.sqlite3'}?mode=ro", uri=True) as db:
        return dict(db.execute("SELECT party, keys_sha256 FROM key_sets").fetchall())


def _fetch_all(pki, port: int) -> dict[str, dict[int, str]]:
    keys = {}
    for party in PARTIES:
        with _client(pki, port, party) as client:
            fetched = client.fetch_link_keys("p1", party)
        keys[party] = dict(zip(fetched.positions, fetched.link_keys, strict=True))
    return keys


# -- keys are never released from a run whose run_finished is not logged (item 6) -------


def test_a_kill_between_storing_keys_and_logging_run_finished(
    lu_process, pki, tmp_path: Path
) -> None:
    """SIGKILL just before ``run_finished`` is appended (the run's keys are stored). After
    restart the run is finished from the stored keys: the parties get exactly the keys that
    were stored before the crash, ``run_finished`` is logged once, and the auditor's
    verification passes. Before the fix the run was FINISHED with no run_finished entry, so
    its keys were released with nothing in the log saying the run ever finished."""
    lu = lu_process()
    port = lu.start("--kill-before", "run_finished", program="tests.fault_server")
    with _client(pki, port, "operator") as operator:
        create_project(operator, retention_days=1)
    _upload(pki, port, _files(tmp_path, seed=91))
    lu.wait_killed()
    stored = _stored_key_digests(lu.data_dir)
    assert set(stored) == set(PARTIES)
    lu.start()
    with _client(pki, port, "operator") as operator:
        assert operator.wait_for_run("p1", timeout=30).run_state is RunState.FINISHED
    keys = _fetch_all(pki, port)
    released = {event["party"]: event["keys_sha256"] for event in _events_live(pki, port)}
    assert released == stored
    assert len([p for p in partition(keys) if len(p) == 2]) == 10
    lu.stop()
    assert len(_events(lu.data_dir, "run_finished")) == 1
    lu.start()
    _verify(lu.data_dir, pki, port)


def _events_live(pki, port: int) -> list[dict]:
    """keys_released details, read by the auditor over the wire."""
    import json

    with _client(pki, port, "auditor") as auditor:
        log, _ = auditor.fetch_audit_log()
    return [
        json.loads(line)["details"]
        for line in log.splitlines()
        if json.loads(line).get("event") == "keys_released"
    ]


def test_a_kill_after_logging_run_finished_finishes_the_run_once(
    lu_process, pki, tmp_path: Path
) -> None:
    """SIGKILL just after ``run_finished`` is appended, before the run is marked FINISHED:
    after restart the run is FINISHED without a second run_finished, and verification passes."""
    lu = lu_process()
    port = lu.start("--kill-after", "run_finished", program="tests.fault_server")
    with _client(pki, port, "operator") as operator:
        create_project(operator, retention_days=1)
    _upload(pki, port, _files(tmp_path, seed=92))
    lu.wait_killed()
    lu.start()
    with _client(pki, port, "operator") as operator:
        assert operator.wait_for_run("p1", timeout=30).run_state is RunState.FINISHED
    _fetch_all(pki, port)
    lu.stop()
    assert len(_events(lu.data_dir, "run_finished")) == 1
    lu.start()
    _verify(lu.data_dir, pki, port)


class RefusingAuditLog(AuditLog):
    """The real signed log, refusing the events in ``refused`` (a full or failing disk)."""

    refused: set[str]

    def append(self, record: AuditEvent) -> None:
        if record.NAME in self.refused:
            raise AuditError(f"{self.path}: could not write the audit log (test)")
        super().append(record)


def _refusing_log(tmp_path: Path, *refused: str) -> RefusingAuditLog:
    log = RefusingAuditLog.open(
        tmp_path / "audit.jsonl", signing_key_path=tmp_path / "audit-key.pem"
    )
    log.refused = set(refused)
    return log


def test_a_failed_run_finished_append_releases_nothing_and_issues_no_new_keys(
    start_server, connect, tmp_path: Path
) -> None:
    """The ``run_finished`` append fails after the keys are stored. The run is not FINISHED
    and nothing is releasable (FAILED_PRECONDITION); the operator's start is the same run,
    not a new one; once the log takes appends again, the next retention check finishes the
    run with the stored keys, which link as they should. Before the fix the run was FAILED
    with its keys fetchable, and a restart issued new keys that matched nothing a party
    had already fetched."""
    log = _refusing_log(tmp_path, "run_finished")
    server = start_server(audit=log, data_dir=tmp_path / "lu")
    operator = connect(server, "operator")
    create_project(operator, retention_days=1)
    files = _files(tmp_path, seed=93)
    for party, path in files.items():
        connect(server, party).upload_file(path, party_id=party)
    wait_until(lambda: server.storage.latest_run("p1").keys_ready, timeout=20)
    stuck = operator.project_status("p1")
    assert stuck.run_state is RunState.RUNNING
    with pytest.raises(PreconditionError):
        connect(server, "moj").fetch_link_keys("p1", "moj")
    assert operator.start_run("p1").run_id == stuck.run_id
    stored = _stored_key_digests(tmp_path / "lu")
    log.refused.clear()
    server.service.maintain()
    assert operator.project_status("p1").run_state is RunState.FINISHED
    fetched = {party: connect(server, party).fetch_link_keys("p1", party) for party in PARTIES}
    assert {party: keys.keys_sha256 for party, keys in fetched.items()} == stored
    keys = {
        party: dict(zip(keys.positions, keys.link_keys, strict=True))
        for party, keys in fetched.items()
    }
    assert len([group for group in partition(keys) if len(group) == 2]) == 10
    report = verify_audit_log(log.path, log._key.public_key(), check_wire=False)
    assert report.passed, report.to_text()


def test_keys_are_never_replaced_once_any_were_released(tmp_path: Path) -> None:
    """Storage refuses to store a second key set for a project once a party has fetched
    keys: a restarted run can reissue the stored keys or be refused, never swap them."""
    import numpy as np

    from linkage_unit.link_keys import issue_link_keys
    from linkage_unit.storage import RunOutcome, Storage
    from protocol.messages import LinkKeyMode

    store = Storage(tmp_path / "lu")
    store.create_project(
        ProjectSettings(project_id="p1", members=PARTIES, schema_fingerprint=SCHEMA_FINGERPRINT)
    )
    clusters = {party: np.arange(4, dtype=np.int64) for party in PARTIES}
    outcome = RunOutcome(cluster_count=4, linked_record_count=8, comparisons=16)
    store.create_run("p1", "first")
    store.store_keys(
        "first", "p1", outcome=outcome, keys=issue_link_keys(clusters, LinkKeyMode.SHARED)
    )
    assert store.key_set("p1", "moj") is None  # stored, not releasable: not FINISHED
    store.mark_finished("first")
    assert store.key_set("p1", "moj") is not None
    store.record_key_release("p1", "moj")
    store.create_run("p1", "second")
    with pytest.raises(PreconditionError, match="already released"):
        store.store_keys(
            "second", "p1", outcome=outcome, keys=issue_link_keys(clusters, LinkKeyMode.SHARED)
        )
    assert store.key_set("p1", "moj").run_id == "first"
    store.close()


# -- a payload is never deleted without its entry (item 8) -------------------------------


def test_a_kill_between_deleting_a_payload_and_logging_it(lu_process, pki, tmp_path: Path) -> None:
    """Retention delete-after-run: SIGKILL after the first payload file is unlinked and
    before its ``payload_deleted`` is appended. At restart the recorded intent is finished
    (the entry is appended) and the other payload deleted too; the auditor's retention check
    passes for both. Before the fix the database already said DELETED, so after the crash
    nothing ever logged the deletion and verification failed."""
    lu = lu_process()
    port = lu.start("--kill-before", "payload_deleted", program="tests.fault_server")
    with _client(pki, port, "operator") as operator:
        create_project(operator, retention_days=0)
    _upload(pki, port, _files(tmp_path, seed=94))
    lu.wait_killed()
    lu.start()
    payloads = lu.data_dir / "payloads" / "p1"
    wait_until(lambda: not list(payloads.glob("*.clk")), timeout=10)
    _verify(lu.data_dir, pki, port)
    lu.stop()
    assert sorted(event["party"] for event in _events(lu.data_dir, "payload_deleted")) == sorted(
        PARTIES
    )


def test_a_kill_after_recording_a_deletion_intent(lu_process, pki, tmp_path: Path) -> None:
    """SIGKILL after the deletion intent is recorded and before the file is touched: at
    restart the deletion is carried out and logged."""
    lu = lu_process()
    port = lu.start("--kill-at", "retirement_intended", program="tests.fault_server")
    with _client(pki, port, "operator") as operator:
        create_project(operator, retention_days=0)
    _upload(pki, port, _files(tmp_path, seed=95))
    lu.wait_killed()
    assert list((lu.data_dir / "payloads" / "p1").glob("*.clk"))
    lu.start()
    wait_until(lambda: not list((lu.data_dir / "payloads" / "p1").glob("*.clk")), timeout=10)
    _verify(lu.data_dir, pki, port)


def test_a_failed_payload_deleted_append_is_retried_until_logged(
    start_server, connect, tmp_path: Path
) -> None:
    """The ``payload_deleted`` append fails: the deletion stays intended, and the next
    retention check logs it (before the fix the file was gone with no entry, and a retry
    logged nothing)."""
    log = _refusing_log(tmp_path, "payload_deleted")
    server = start_server(audit=log, data_dir=tmp_path / "lu")
    create_project(connect(server, "operator"), retention_days=0)
    for party, path in _files(tmp_path, seed=96).items():
        connect(server, party).upload_file(path, party_id=party)
    assert connect(server, "operator").wait_for_run("p1", timeout=20).run_state is (
        RunState.FINISHED
    )
    assert server.storage.retirements()
    log.refused.clear()
    server.service.maintain()
    assert not server.storage.retirements()
    assert {server.storage.upload("p1", party).state for party in PARTIES} == {UploadState.DELETED}
    report = verify_audit_log(log.path, log._key.public_key(), check_wire=False)
    assert report.passed, report.to_text()


# -- an upload interrupted between rename and commit is recovered (item 7) ---------------


def test_a_kill_between_publishing_an_upload_and_committing_it(
    lu_process, pki, tmp_path: Path
) -> None:
    """SIGKILL after a complete upload's payload is renamed into place and before the
    database marks it COMPLETE. At restart the upload is recovered as COMPLETE (its
    upload_committed was logged before the rename), the party's resend is a no-op, the
    stored file is the party's, and the run goes ahead. Before the fix the upload stayed
    PARTIAL with every byte, its partial file gone, and every resend failed with INTERNAL."""
    lu = lu_process()
    port = lu.start("--kill-at", "upload_renamed", program="tests.fault_server")
    with _client(pki, port, "operator") as operator:
        create_project(operator, retention_days=1)
    files = _files(tmp_path, seed=97)
    with _client(pki, port, "moj") as moj, pytest.raises(ServiceError):
        moj.upload_file(files["moj"], party_id="moj")
    lu.wait_killed()
    lu.start()
    with _client(pki, port, "moj") as moj:
        assert moj.upload_file(files["moj"], party_id="moj").state is UploadState.COMPLETE
    stored = lu.data_dir / "payloads" / "p1" / "moj.clk"
    assert stored.read_bytes() == files["moj"].read_bytes()
    with _client(pki, port, "dfe") as dfe:
        dfe.upload_file(files["dfe"], party_id="dfe")
    with _client(pki, port, "operator") as operator:
        assert operator.wait_for_run("p1", timeout=30).run_state is RunState.FINISHED
    _verify(lu.data_dir, pki, port)


# -- retention applies to every upload (item 5) ---------------------------------------


class _Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def test_every_upload_is_deleted_after_its_hold_whatever_the_run(
    start_server, connect, pki, tmp_path: Path
) -> None:
    """Three projects whose runs never finish: p1 where DfE never uploads, p2 whose run is
    REFUSED (bit density), p3 where MoJ's upload stopped half way. Thirty-one days on (the
    hold under delete-after-run is 30), one retention check deletes every payload, each
    deletion audited, and the auditor's retention check passes. Before the fix only uploads
    of a project with a finished run were ever deleted."""
    clock = _Clock()
    server = start_server(clock=clock, data_dir=tmp_path / "lu")
    operator = connect(server, "operator")
    for project in ("p1", "p2", "p3"):
        create_project(operator, project_id=project)
    clks = planted_party_clks(list(PARTIES), seed=98, records=20, shared=0)
    moj = connect(server, "moj")
    moj.upload_file(
        write_clk_file(tmp_path / "p1-moj.clk", clks["moj"], project_id="p1"), party_id="moj"
    )
    sparse = clks["dfe"] & (clks["dfe"] >> 1) & (clks["dfe"] >> 2)
    moj.upload_file(
        write_clk_file(tmp_path / "p2-moj.clk", clks["moj"], project_id="p2"), party_id="moj"
    )
    connect(server, "dfe").upload_file(
        write_clk_file(tmp_path / "p2-dfe.clk", sparse, project_id="p2"), party_id="dfe"
    )
    assert operator.wait_for_run("p2", timeout=20).run_state is RunState.REFUSED
    half = upload_messages(
        write_clk_file(tmp_path / "p3-moj.clk", clks["moj"], project_id="p3"), "moj", chunk=256
    )
    channel = grpc.secure_channel(
        f"127.0.0.1:{server.port}",
        grpc.ssl_channel_credentials(
            root_certificates=pki.ca_certificate.read_bytes(),
            private_key=pki.parties["moj"].private_key.read_bytes(),
            certificate_chain=pki.parties["moj"].certificate.read_bytes(),
        ),
    )
    from protocol.pb import linkage_pb2_grpc as pb_grpc

    with channel:
        pb_grpc.LinkageUnitStub(channel).Upload(iter(half[:3]), timeout=5)
    assert server.storage.upload("p3", "moj").state is UploadState.PARTIAL
    assert server.service.maintain() == 0  # within the hold, nothing goes
    clock.now += 31 * 86400
    assert server.service.maintain() == 4
    payloads = tmp_path / "lu" / "payloads"
    assert not list(payloads.rglob("*.clk")) and not list(payloads.rglob("*.partial"))
    deleted = [
        (entry.project_id, entry.details["party"], entry.details["reason"])
        for entry in server.audit_log.entries()
        if entry.event == "payload_deleted"
    ]
    assert sorted(deleted) == [
        ("p1", "moj", "retention-expired"),
        ("p2", "dfe", "retention-expired"),
        ("p2", "moj", "retention-expired"),
        ("p3", "moj", "partial-expired"),
    ]
    log = server.audit_log
    report = verify_audit_log(log.path, log._key.public_key(), check_wire=False)
    assert report.passed, report.to_text()


# -- a run interrupted mid-way resumes as itself (issue 16, point 5) ---------------------


@pytest.mark.parametrize("stop", ["sigterm", "sigkill"])
def test_a_run_interrupted_mid_way_resumes_and_the_audit_verifies(
    lu_process, pki, tmp_path: Path, stop: str
) -> None:
    """The LU is stopped (SIGTERM, graceful) or killed (SIGKILL) while a run is RUNNING,
    then restarted: the run carries on under its own id, logged as ``run_resumed`` (one
    ``run_started``), finishes, and the auditor's verification passes. Before the fix the
    resumed run logged a second ``run_started`` and verification failed: "started twice"."""
    lu = lu_process()
    lu.data_dir.mkdir(parents=True)
    (lu.data_dir / "hold").touch()
    port = lu.start("--hold-run", program="tests.fault_server")
    with _client(pki, port, "operator") as operator:
        create_project(operator, retention_days=1)
        _upload(pki, port, _files(tmp_path, seed=99))
        wait_until(lambda: operator.project_status("p1").progress_stage == "held", timeout=20)
        run_id = operator.project_status("p1").run_id
    if stop == "sigterm":
        lu.stop()
    else:
        lu.kill()
    (lu.data_dir / "hold").unlink()
    lu.start()
    with _client(pki, port, "operator") as operator:
        finished = operator.wait_for_run("p1", timeout=30)
    assert (finished.run_state, finished.run_id) == (RunState.FINISHED, run_id)
    _fetch_all(pki, port)
    _verify(lu.data_dir, pki, port)
    lu.stop()
    assert len(_events(lu.data_dir, "run_started")) == 1
    assert _events(lu.data_dir, "run_resumed") == [{"run_id": run_id}]
