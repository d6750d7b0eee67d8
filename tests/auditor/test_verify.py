"""`bloomlink audit verify` and `bloomlink scan`: clean history passes, each broken rule fails."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from auditor.verify import AuditReport, AuditView, verify_audit_log
from bloomlink.cli import main
from bloomlink.exit_codes import ExitCode
from linkage_unit.audit_log import AuditLog
from party.manifest import (
    create_party_signing_key,
    load_party_signing_key,
    party_public_key_pem,
    write_manifest,
)
from protocol.audit import AuditEntry, line_to_json, parse_log
from protocol.clk_file import ClkFileWriter
from protocol.manifest import SignedManifest, read_manifest
from protocol.signing import load_public_key, public_key_pem
from tests.audit_fixtures import KCV, SCHEMA, append, make_log, payload_digest, write_project

PROJECT = "moj-dfe-2026"


def manifest_for(
    tmp_path: Path,
    party: str,
    count: int,
    *,
    record_count: int | None = None,
    key_context: str | None = None,
) -> Path:
    key_path = tmp_path / f"{party}-signing.pem"
    key = create_party_signing_key(key_path)
    path = tmp_path / f"{party}.manifest.json"
    write_manifest(
        path,
        signing_key=key,
        project_id=PROJECT,
        party=party,
        record_count=count if record_count is None else record_count,
        clk_bits=1024,
        payload_sha256=bytes.fromhex(payload_digest(party)),
        schema_fingerprint=bytes.fromhex(SCHEMA),
        kcv=bytes.fromhex(KCV),
        software_version="0.1.0",
        leak_scan_strings=50,
        leak_scan_rows=10,
        key_context=key_context,
    )
    return path


def export_public_key(tmp_path: Path, log: AuditLog) -> Path:
    path = tmp_path / "lu-public.pem"
    path.write_bytes(log.public_key_pem())
    return path


def verify(tmp_path: Path, **kwargs: object) -> AuditReport:
    key = load_public_key(tmp_path / "lu-public.pem")
    return verify_audit_log(tmp_path / "audit.jsonl", key, **kwargs)  # type: ignore[arg-type]


def failures(report: AuditReport) -> list[tuple[str, int | None]]:
    return [(check.name, check.entry) for check in report.failures]


def test_clean_history_passes_on_the_command_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    moj = manifest_for(tmp_path, "moj", 1000)
    dfe = manifest_for(tmp_path, "dfe", 5000)
    manifest_sha = {
        party: read_manifest(path).manifest.sha256 for party, path in (("moj", moj), ("dfe", dfe))
    }
    with make_log(tmp_path) as log:
        write_project(log, PROJECT, manifest_sha256=manifest_sha)
        public = export_public_key(tmp_path, log)
    code = main(
        [
            "audit",
            "verify",
            "--log",
            str(tmp_path / "audit.jsonl"),
            "--public-key",
            str(public),
            "--manifest",
            str(moj),
            "--manifest",
            str(dfe),
            "--party-key",
            f"moj={write_pub(tmp_path, 'moj')}",
            "--json",
            str(tmp_path / "report.json"),
        ]
    )
    out = capsys.readouterr().out
    assert code == ExitCode.OK, out
    assert "result: PASSED" in out
    record = json.loads((tmp_path / "report.json").read_text())
    assert record["passed"] is True and record["entry_count"] == 12
    names = {(check["name"], check["status"]) for check in record["checks"]}
    assert {
        ("chain", "pass"),
        ("rules", "pass"),
        ("retention", "pass"),
        ("manifest", "pass"),
    } <= names


def write_pub(tmp_path: Path, party: str) -> Path:
    path = tmp_path / f"{party}.pub"
    path.write_bytes(
        party_public_key_pem(load_party_signing_key(tmp_path / f"{party}-signing.pem"))
    )
    return path


def test_tampered_log_fails_on_the_command_line_naming_the_entry(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with make_log(tmp_path) as log:
        write_project(log, PROJECT)
        public = export_public_key(tmp_path, log)
    path = tmp_path / "audit.jsonl"
    lines = path.read_bytes().splitlines(keepends=True)
    lines[8] = lines[8].replace(b'"key_count":1000', b'"key_count":999')
    path.write_bytes(b"".join(lines))
    code = main(
        [
            "audit",
            "verify",
            "--log",
            str(path),
            "--public-key",
            str(public),
            "--json",
            str(tmp_path / "r.json"),
        ]
    )
    assert code == ExitCode.AUDIT_FAILED
    record = json.loads((tmp_path / "r.json").read_text())
    assert [
        (check["name"], check["entry"]) for check in record["checks"] if check["status"] == "fail"
    ] == [("chain", 8)]
    assert "edited" in capsys.readouterr().out


def test_manifest_that_disagrees_with_the_log_fails(tmp_path: Path) -> None:
    moj = manifest_for(tmp_path, "moj", 1000, record_count=1001)
    with make_log(tmp_path) as log:
        write_project(log, PROJECT)
        export_public_key(tmp_path, log)
    report = verify(tmp_path, manifests=[read_manifest(moj)])
    assert [check.name for check in report.failures] == ["manifest"]
    assert report.failures[0].message.endswith("on record_count") and report.failures[0].entry == 2


def test_a_manifests_key_context_is_checked_against_the_logged_spine(tmp_path: Path) -> None:
    """The auditor sees what context each upload was made for (``spine`` in
    ``upload_committed``) and that the party's signed manifest says the same."""
    moj = read_manifest(manifest_for(tmp_path, "moj", 1000, key_context="spine:people"))
    cases = (({"moj": "people"}, False), (None, True), ({"moj": "other"}, True))
    for number, (spines, wrong) in enumerate(cases):
        directory = tmp_path / f"log{number}"
        directory.mkdir()
        with make_log(directory) as log:
            write_project(log, PROJECT, spines=spines)
            export_public_key(directory, log)
        report = verify(directory, manifests=[moj])
        if wrong:
            assert [check.name for check in report.failures] == ["manifest"]
            assert report.failures[0].message.endswith("on key_context")
            assert "people" not in report.failures[0].message
        else:
            assert not report.failures


def test_manifest_signed_by_an_unregistered_key_fails(tmp_path: Path) -> None:
    moj = manifest_for(tmp_path, "moj", 1000)
    other = create_party_signing_key(tmp_path / "other.pem")
    with make_log(tmp_path) as log:
        write_project(log, PROJECT)
        export_public_key(tmp_path, log)
    signed: SignedManifest = read_manifest(moj)
    report = verify(tmp_path, manifests=[signed], party_keys={"moj": other.public_key()})
    assert [check.name for check in report.failures] == ["manifest"]


def details_upload(party: str, count: int, kcv: str = KCV) -> dict[str, str | int]:
    return {
        "party": party,
        "record_count": count,
        "clk_bits": 1024,
        "payload_sha256": payload_digest(party),
        "schema_fingerprint": SCHEMA,
        "kcv": kcv,
    }


def start_project(log: AuditLog, retention: str = "delete-after-release") -> None:
    append(
        log,
        "project_created",
        project_id=PROJECT,
        details={
            "settings_fingerprint": SCHEMA,
            "members": "moj,dfe",
            "schema_fingerprint": SCHEMA,
            "retention": retention,
            "hold_days": 30,
        },
    )


def keys(party: str, count: int) -> dict[str, str | int]:
    return {
        "party": party,
        "run_id": "run-1",
        "key_count": count,
        "keys_sha256": hashlib.sha256(party.encode()).hexdigest(),
    }


RUN = {"run_id": "run-1", "parties": "moj,dfe"}
FINISHED = {"run_id": "run-1", "cluster_count": 1, "linked_record_count": 2, "comparisons": 3}


def history(
    tmp_path: Path,
    steps: list[tuple[str, dict[str, str | int]]],
    retention: str = "delete-after-release",
) -> AuditReport:
    with make_log(tmp_path) as log:
        start_project(log, retention)
        for event, details in steps:
            append(log, event, project_id=PROJECT, details=details)
        export_public_key(tmp_path, log)
    return verify(tmp_path)


UPLOADS: list[tuple[str, dict[str, str | int]]] = [
    ("upload_committed", details_upload("moj", 10)),
    ("upload_committed", details_upload("dfe", 20)),
]


def test_run_without_checks_fails(tmp_path: Path) -> None:
    report = history(tmp_path, [*UPLOADS, ("run_started", RUN)])
    assert failures(report) == [("rules", 3)]


def test_run_after_an_unchecked_upload_fails(tmp_path: Path) -> None:
    steps = [*UPLOADS, ("checks_passed", {"parties": "moj,dfe"}), UPLOADS[0], ("run_started", RUN)]
    assert failures(history(tmp_path, steps)) == [("rules", 5)]


def test_checks_passed_despite_different_keys_fails(tmp_path: Path) -> None:
    steps = [
        UPLOADS[0],
        ("upload_committed", details_upload("dfe", 20, kcv="ff" * 16)),
        ("checks_passed", {"parties": "moj,dfe"}),
    ]
    report = history(tmp_path, steps)
    assert failures(report) == [("rules", 3)] and "kcv" in report.failures[0].message


def test_an_upload_without_its_projects_layout_fails(tmp_path: Path) -> None:
    """A grouped project's uploads carry its layout digest; a single-CLK project's none."""
    layout, other = (hashlib.sha256(name).hexdigest() for name in (b"layout", b"other"))
    with make_log(tmp_path) as log:
        start_project(log)  # entry 0: single CLK, no layout
        grouped = {"settings_fingerprint": SCHEMA, "members": "moj,dfe",
                   "schema_fingerprint": SCHEMA, "retention": "delete-after-release",
                   "hold_days": 30, "layout_sha256": layout}  # fmt: skip
        append(log, "project_created", project_id="grouped", details=grouped)
        for project, party, digest in [
            (PROJECT, "moj", None),  # 2: passes
            (PROJECT, "dfe", layout),  # 3: a grouped upload in a single-CLK project
            ("grouped", "moj", layout),  # 4: passes
            ("grouped", "dfe", other),  # 5: another layout or hardening
            ("grouped", "hmrc", None),  # 6: not a member, and a single CLK: one failure each
        ]:
            details = details_upload(party, 10)
            if digest is not None:
                details["layout_sha256"] = digest
            append(log, "upload_committed", project_id=project, details=details)
        export_public_key(tmp_path, log)
    report = verify(tmp_path)
    assert failures(report) == [("rules", 3), ("rules", 5), ("rules", 6), ("rules", 6)]
    assert "does not have the project's layout" in report.failures[0].message


def test_keys_to_a_non_member_twice_and_short_all_fail(tmp_path: Path) -> None:
    steps = [
        *UPLOADS,
        ("checks_passed", {"parties": "moj,dfe"}),
        ("run_started", RUN),
        ("run_finished", FINISHED),
        ("keys_released", keys("hmrc", 10)),
        ("keys_released", keys("moj", 9)),
        ("keys_released", keys("moj", 10)),
    ]
    report = history(tmp_path, steps)
    assert [(name, entry) for name, entry in failures(report) if name == "keys"] == [
        ("keys", 6),
        ("keys", 7),
        ("keys", 8),
    ]


def test_payload_not_deleted_after_release_fails_and_pending_is_a_note(tmp_path: Path) -> None:
    released = [
        *UPLOADS,
        ("checks_passed", {"parties": "moj,dfe"}),
        ("run_started", RUN),
        ("run_finished", FINISHED),
        ("keys_released", keys("moj", 10)),
    ]
    report = history(tmp_path, released)
    assert report.passed and any(
        check.status == "note" and check.name == "retention" for check in report.checks
    )
    deleted_one = [
        *released,
        ("keys_released", keys("dfe", 20)),
        (
            "payload_deleted",
            {"party": "moj", "payload_sha256": payload_digest("moj"), "reason": "retention"},
        ),
    ]
    other = tmp_path / "second"
    other.mkdir()
    report = history(other, deleted_one)
    assert failures(report) == [("retention", 7)]
    assert "dfe" in report.failures[0].message


def test_unknown_retention_fails(tmp_path: Path) -> None:
    assert failures(history(tmp_path, [], retention="forever")) == [("retention", 0)]


def test_scan_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    clks = np.random.default_rng(5).integers(0, 256, size=(500, 128), dtype=np.uint8)
    strings = tmp_path / "sensitive.txt"
    strings.write_text("Thornton\nMargaret\n", encoding="utf-8")
    clean = tmp_path / "clean.clk"
    with ClkFileWriter(
        clean, project_id=PROJECT, schema_fingerprint=bytes(32), kcv=bytes(16), clk_bits=1024
    ) as writer:
        writer.write(clks)
    assert (
        main(["scan", "--encoded", str(clean), "--sensitive-strings", str(strings)]) == ExitCode.OK
    )
    clks[10, :8] = np.frombuffer(b"Thornton", dtype=np.uint8)
    leaky = tmp_path / "leaky.clk"
    with ClkFileWriter(
        leaky, project_id=PROJECT, schema_fingerprint=bytes(32), kcv=bytes(16), clk_bits=1024
    ) as writer:
        writer.write(clks)
    code = main(
        [
            "scan",
            "--encoded",
            str(leaky),
            "--sensitive-strings",
            str(strings),
            "--json",
            str(tmp_path / "s.json"),
        ]
    )
    captured = capsys.readouterr()
    assert code == ExitCode.AUDIT_FAILED
    assert "raw-utf-8 at byte 1480" in captured.out
    assert "Thornton" not in captured.out + captured.err + (tmp_path / "s.json").read_text()


def test_a_refused_key_request_is_noted_not_failed(tmp_path: Path) -> None:
    refused = {
        "party": "dfe",
        "requested_project": PROJECT,
        "requested_party": "moj",
        "certificate_fingerprint": "ab" * 32,
    }
    report = history(tmp_path, [*UPLOADS, ("access_refused", refused)])
    assert failures(report) == []
    assert any(check.name == "access" and check.status == "note" for check in report.checks)


def _lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


def _as_stub(line: bytes) -> bytes:
    entry = parse_log(line).entries[0]
    assert isinstance(entry, AuditEntry)
    return (line_to_json(entry.stub()) + "\n").encode()


def test_a_full_log_admits_no_stubs(tmp_path: Path) -> None:
    """Replacing the keys_released entries of the whole log with their redacted stubs keeps
    every hash, link and signature intact, but a full log admits no stub: FAIL at the first.
    (Before, the stubs passed and the releases vanished from the auditor's sight.)"""
    with make_log(tmp_path) as log:
        write_project(log, PROJECT)
        export_public_key(tmp_path, log)
    path = tmp_path / "audit.jsonl"
    lines = _lines(path)
    hidden = [number for number, line in enumerate(lines) if b'"keys_released"' in line]
    for number in hidden:
        lines[number] = _as_stub(lines[number])
    path.write_bytes(b"".join(lines))
    report = verify(tmp_path)
    assert failures(report) == [("chain", hidden[0])]
    assert "full log admits none" in report.failures[0].message


def test_a_view_cannot_hide_the_viewers_own_entries(tmp_path: Path) -> None:
    """A project's view shows other projects' entries as stubs. A stub commits to its
    project's tag, so one of the viewed project's own entries passed off as a stub fails,
    naming it; the honest view passes."""
    with make_log(tmp_path) as log:
        write_project(log, "other-project")
        write_project(log, PROJECT)
        export_public_key(tmp_path, log)
        log.export_project(PROJECT, tmp_path / "view.jsonl")
    key = load_public_key(tmp_path / "lu-public.pem")
    view = AuditView(project_id=PROJECT)
    honest = verify_audit_log(tmp_path / "view.jsonl", key, view=view, check_wire=False)
    assert honest.passed, honest.to_text()
    lines = _lines(tmp_path / "view.jsonl")
    target = next(
        n
        for n, line in enumerate(lines)
        if b'"keys_released"' in line and b"stub" not in line and PROJECT.encode() in line
    )
    lines[target] = _as_stub(lines[target])
    (tmp_path / "view.jsonl").write_bytes(b"".join(lines))
    report = verify_audit_log(tmp_path / "view.jsonl", key, view=view, check_wire=False)
    assert failures(report) == [("chain", target)]
    assert "shown only as a stub" in report.failures[0].message
    # The same file claimed as the whole log fails too: it holds stubs.
    assert not verify_audit_log(tmp_path / "view.jsonl", key, check_wire=False).passed


def test_a_partys_view_withholds_only_what_the_policy_says(tmp_path: Path) -> None:
    """DfE's view of its project hides MoJ's counts, KCV and digests and the run's figures
    (field hashes in their place), still verifies for DfE, and fails for a reader who may
    see everything (an auditor's view withholds nothing)."""
    with make_log(tmp_path) as log:
        write_project(log, PROJECT)
        export_public_key(tmp_path, log)
        log.export_project(PROJECT, tmp_path / "dfe.jsonl", viewer="dfe")
    text = (tmp_path / "dfe.jsonl").read_text()
    assert (
        '"record_count":1000' not in text
        and '"linked_record_count"' not in text.split('"withheld"')[0]
    )
    assert '"record_count":5000' in text  # DfE's own upload
    key = load_public_key(tmp_path / "lu-public.pem")
    as_dfe = verify_audit_log(
        tmp_path / "dfe.jsonl", key, view=AuditView(project_id=PROJECT, party="dfe"),
        check_wire=False,
    )  # fmt: skip
    assert as_dfe.passed, as_dfe.to_text()
    as_auditor = verify_audit_log(
        tmp_path / "dfe.jsonl", key, view=AuditView(project_id=PROJECT), check_wire=False
    )
    assert [check.message for check in as_auditor.failures][0].endswith("this reader may see")


def test_a_log_without_any_signed_head_fails(tmp_path: Path) -> None:
    """The last entry cut off and the head file deleted: the chain still links, but with no
    head nothing shows the cut, so verification fails (it passed with a note before)."""
    with make_log(tmp_path) as log:
        write_project(log, PROJECT)
        append(
            log,
            "party_authenticated",
            project_id=None,
            details={"party": "moj", "role": "party", "certificate_fingerprint": "ab" * 32},
        )
        export_public_key(tmp_path, log)
    path = tmp_path / "audit.jsonl"
    path.write_bytes(b"".join(_lines(path)[:-1]))
    path.with_name("audit.jsonl.head").unlink()
    report = verify(tmp_path)
    assert failures(report) == [("chain", None)] and "no signed head" in report.failures[0].message


def test_retention_is_reported_for_an_upload_whose_run_never_came(tmp_path: Path) -> None:
    """MoJ uploads and DfE never does. While the 30-day hold lasts the upload is a NOTE
    saying when it is due; once the log's signed head is later than that (plus a day's
    grace) and no payload_deleted came, the verifier fails it. Before, a project without a
    finished run got no retention verdict at all."""
    moments = iter([datetime(2026, 1, 5, tzinfo=UTC)] * 4 + [datetime(2026, 2, 10, tzinfo=UTC)] * 4)
    key = Ed25519PrivateKey.generate()
    with AuditLog(tmp_path / "audit.jsonl", signing_key=key, clock=lambda: next(moments)) as log:
        start_project(log)
        append(log, "upload_committed", project_id=PROJECT, details=details_upload("moj", 10))
    (tmp_path / "lu-public.pem").write_bytes(public_key_pem(key))
    early = verify(tmp_path)
    assert early.passed and any(
        check.name == "retention" and check.status == "note" and "2026-02-04" in check.message
        for check in early.checks
    ), early.to_text()
    with AuditLog(tmp_path / "audit.jsonl", signing_key=key, clock=lambda: next(moments)) as log:
        append(
            log,
            "party_authenticated",
            project_id=None,
            details={"party": "moj", "role": "party", "certificate_fingerprint": "ab" * 32},
        )
    late = verify(tmp_path)
    assert failures(late) == [("retention", 1)] and "hold" in late.failures[0].message
