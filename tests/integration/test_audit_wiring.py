"""Auditability end to end against a real mutual-TLS linkage unit with its real signed log:
who may read the log, manifests checked at upload, retention deletes the files, and submit
refuses a file its leak scan flags."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from auditor.verify import AuditView, verify_audit_log
from bloomlink.cli import main
from bloomlink.exit_codes import ExitCode
from party.manifest import create_party_signing_key, manifest_path_for, write_manifest_for_file
from protocol.errors import InvalidRequestError, NotFoundError, PermissionDeniedError
from protocol.manifest import read_manifest, sign_manifest
from protocol.messages import ProjectSettings, RunState
from protocol.schema import default_schema
from protocol.signing import load_public_key
from tests.service_helpers import SCHEMA_FINGERPRINT, planted_party_clks, write_clk_file

pytestmark = pytest.mark.integration


def vouched_file(tmp_path: Path, party: str, clks: np.ndarray, project: str) -> Path:
    tmp_path.mkdir(exist_ok=True)
    path = write_clk_file(tmp_path / f"{project}-{party}.clk", clks, project_id=project)
    write_manifest_for_file(
        path,
        manifest_path_for(path),
        signing_key=create_party_signing_key(tmp_path / f"{project}-{party}.pem"),
        party=party,
        software_version="0.1.0",
        leak_scan_strings=3,
        leak_scan_rows=3,
    )
    return path


def create(operator, project: str, members: tuple[str, ...], retention_days: int = 0) -> None:
    operator.create_project(
        ProjectSettings(
            project_id=project,
            members=members,
            schema_fingerprint=SCHEMA_FINGERPRINT,
            threshold=0.9,
            retention_days=retention_days,
        )
    )


def upload_all(connect, server, tmp_path: Path, project: str, parties: list[str]) -> None:
    clks = planted_party_clks(parties, seed=3, records=12, shared=4)
    for party in parties:
        path = vouched_file(tmp_path, party, clks[party], project)
        connect(server, party).upload_file(
            path, party_id=party, manifest=read_manifest(manifest_path_for(path))
        )


def test_auditor_reads_the_log_but_cannot_upload_or_fetch_keys(
    start_server, connect, tmp_path: Path
) -> None:
    server = start_server(require_manifest=True)
    create(connect(server, "operator"), "p1", ("moj", "dfe"))
    upload_all(connect, server, tmp_path, "p1", ["moj", "dfe"])
    assert connect(server, "operator").wait_for_run("p1", timeout=20).run_state is RunState.FINISHED
    auditor = connect(server, "auditor")
    path = vouched_file(tmp_path / "again", "moj", planted_party_clks(["moj"], seed=9)["moj"], "p1")
    with pytest.raises(PermissionDeniedError):
        auditor.upload_file(path, party_id="moj", manifest=read_manifest(manifest_path_for(path)))
    with pytest.raises(PermissionDeniedError):
        auditor.fetch_link_keys("p1", "moj")
    log, head = auditor.fetch_audit_log()
    assert head and auditor.project_settings("p1").members == ("moj", "dfe")
    (tmp_path / "audit.jsonl").write_bytes(log)
    (tmp_path / "audit.jsonl.head").write_bytes(head)
    (tmp_path / "lu.pem").write_bytes(auditor.audit_public_key())
    report = verify_audit_log(tmp_path / "audit.jsonl", load_public_key(tmp_path / "lu.pem"))
    assert report.passed, report.to_text()
    assert b'"manifest_sha256"' in log and b'"event":"upload_committed"' in log


def test_a_party_reads_only_its_own_projects_log(start_server, connect, tmp_path: Path) -> None:
    server = start_server()
    operator = connect(server, "operator")
    create(operator, "p1", ("moj", "dfe"))
    create(operator, "p2", ("dfe", "hmrc"))
    moj = connect(server, "moj")
    with pytest.raises(NotFoundError):
        moj.fetch_audit_log("p2")
    with pytest.raises(PermissionDeniedError):
        moj.fetch_audit_log()
    own, _ = moj.fetch_audit_log("p1")
    # p2's entry is there only as a redacted stub: hash and signature, no details
    assert b'"project_id":"p1"' in own and b"p2" not in own and b"hmrc" not in own


def test_an_upload_whose_manifest_disagrees_is_refused(
    start_server, connect, tmp_path: Path
) -> None:
    server = start_server(require_manifest=True)
    create(connect(server, "operator"), "p1", ("moj", "dfe"))
    clks = planted_party_clks(["moj"], seed=4)["moj"]
    path = vouched_file(tmp_path, "moj", clks, "p1")
    signed = read_manifest(manifest_path_for(path))
    other = write_clk_file(tmp_path / "other.clk", clks[::-1].copy(), project_id="p1")
    moj = connect(server, "moj")
    with pytest.raises(InvalidRequestError, match="payload_sha256"):
        moj.upload_file(other, party_id="moj", manifest=signed)
    forged = type(signed)(
        manifest=signed.manifest,
        signature=sign_manifest(
            signed.manifest, create_party_signing_key(tmp_path / "x")
        ).signature,
        public_key=signed.public_key,
    )
    with pytest.raises(PermissionDeniedError, match="invalid signature"):
        moj.upload_file(path, party_id="moj", manifest=forged)
    with pytest.raises(InvalidRequestError, match="manifest"):
        moj.upload_file(path, party_id="moj")


def test_payloads_are_deleted_once_every_party_fetched_its_keys(
    start_server, connect, tmp_path: Path
) -> None:
    server = start_server(require_manifest=True, data_dir=tmp_path / "lu")
    create(connect(server, "operator"), "p1", ("moj", "dfe"), retention_days=30)
    upload_all(connect, server, tmp_path, "p1", ["moj", "dfe"])
    assert connect(server, "operator").wait_for_run("p1", timeout=20).run_state is RunState.FINISHED
    payloads = server.storage.payload_path("p1", "moj"), server.storage.payload_path("p1", "dfe")
    connect(server, "moj").fetch_link_keys("p1", "moj")
    assert all(path.exists() for path in payloads)  # dfe has not fetched yet
    connect(server, "dfe").fetch_link_keys("p1", "dfe")
    assert not any(path.exists() for path in payloads)
    log, head = connect(server, "auditor").fetch_audit_log("p1")
    assert log.count(b'"reason":"keys-released"') == 2
    (tmp_path / "a.jsonl").write_bytes(log)
    (tmp_path / "a.jsonl.head").write_bytes(head)
    key = load_public_key(connect(server, "auditor").audit_public_key())
    report = verify_audit_log(tmp_path / "a.jsonl", key, view=AuditView(project_id="p1"))
    assert report.passed and any(
        check.name == "retention" and check.status == "pass" for check in report.checks
    ), report.to_text()


def test_submit_refuses_a_file_its_leak_scan_flags(tmp_path: Path, capsys) -> None:
    extract = tmp_path / "moj.csv"
    main(["synth", "--out", str(tmp_path / "synth"), "--departments", "moj", "--records", "50",
          "--seed", "1"])  # fmt: skip
    extract = tmp_path / "synth" / "moj.csv"
    surname = extract.read_text().splitlines()[1].split(",")
    # An "encoded" file that carries a raw value of the extract in its CLK bytes.
    # As wide as the shipped schema's CLKs, so the known-key check can compare them too.
    width = default_schema().encoded_bits // 8
    raw = max(surname, key=len).encode().ljust(width, b" ")[:width] * 40
    clks = np.frombuffer(raw, dtype="<u8").reshape(40, width // 8).copy()
    path = write_clk_file(tmp_path / "moj.clk", clks, project_id="p1", clk_bits=8 * width)
    # The rescan's known-key check finds records through the private positions file.
    (tmp_path / "moj.clk.positions.csv").write_text(
        "record_id,position\n" + "".join(f"r{i},{i}\n" for i in range(40)), encoding="utf-8"
    )
    main(["keygen", "--signing", "--out", str(tmp_path / "sign.pem")])
    capsys.readouterr()
    code = main(
        [
            "submit",
            str(path),
            "--party",
            "moj",
            "--extract",
            str(extract),
            "--layout",
            "moj",
            "--signing-key",
            str(tmp_path / "sign.pem"),
            "--insecure-identity",
            "party:moj",
            "--target",
            "127.0.0.1:9",
        ]  # fmt: skip
    )
    assert code == ExitCode.AUDIT_FAILED, capsys.readouterr()
    assert "leak scan found" in capsys.readouterr().err
    assert not manifest_path_for(path).exists()
    assert hashlib.sha256(path.read_bytes()).digest()  # the file is left for inspection
