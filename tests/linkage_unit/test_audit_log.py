"""The audit log: every tampering is named at its entry; only allow-listed facts get in."""

from __future__ import annotations

import json
import os
import resource
import stat
import threading
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from linkage_unit.audit_log import (
    head_path_for,
    read_entries,
    read_head,
    repair_missing_head,
    repair_torn_tail,
)
from protocol.audit import (
    AuditEntry,
    RedactedEntry,
    build_entry,
    line_to_json,
    parse_log,
    verify_chain,
)
from protocol.errors import AuditError, ConfigurationError, InUseError, ResourceLimitError
from protocol.signing import load_public_key, load_signing_key
from tests.audit_fixtures import (
    SCHEMA,
    append,
    make_log,
    stepping_clock,
    write_project,
)


def written_log(tmp_path: Path) -> tuple[Path, list[bytes]]:
    with make_log(tmp_path) as log:
        write_project(log)
    path = tmp_path / "audit.jsonl"
    return path, path.read_bytes().splitlines(keepends=True)


def verify_file(path: Path, *, with_head: bool = True) -> tuple[bool, int | None, str | None]:
    key = load_public_key(public_pem(path.parent))
    entries = list(parse_log(path.read_bytes()).entries)
    head = read_head(path) if with_head else None
    report = verify_chain(entries, key, heads=[head] if head else [])
    return report.intact, report.bad_index, report.problem


def public_pem(directory: Path) -> bytes:
    from protocol.signing import public_key_pem

    return public_key_pem(load_signing_key(directory / "lu-signing.pem"))


def test_clean_log_verifies_and_has_a_head(tmp_path: Path) -> None:
    path, lines = written_log(tmp_path)
    assert len(lines) == 12
    assert verify_file(path) == (True, None, None)
    head = read_head(path)
    assert head is not None and head.sequence == 11


def test_signing_key_is_owner_only(tmp_path: Path) -> None:
    written_log(tmp_path)
    mode = stat.S_IMODE((tmp_path / "lu-signing.pem").stat().st_mode)
    assert mode == 0o600
    os.chmod(tmp_path / "lu-signing.pem", 0o644)
    with pytest.raises(ConfigurationError, match="chmod 600"):
        load_signing_key(tmp_path / "lu-signing.pem")


def test_edited_entry_is_named(tmp_path: Path) -> None:
    path, lines = written_log(tmp_path)
    record = json.loads(lines[4])
    record["details"]["record_count"] += 1
    lines[4] = (json.dumps(record, sort_keys=True, separators=(",", ":")) + "\n").encode()
    path.write_bytes(b"".join(lines))
    assert verify_file(path) == (False, 4, "edited")


def test_deleted_entry_is_named(tmp_path: Path) -> None:
    path, lines = written_log(tmp_path)
    del lines[6]
    path.write_bytes(b"".join(lines))
    assert verify_file(path) == (False, 6, "deleted")


def test_reordered_entries_are_named(tmp_path: Path) -> None:
    path, lines = written_log(tmp_path)
    lines[7], lines[8] = lines[8], lines[7]
    path.write_bytes(b"".join(lines))
    assert verify_file(path) == (False, 7, "reordered")


def test_truncation_is_caught_by_the_signed_head(tmp_path: Path) -> None:
    path, lines = written_log(tmp_path)
    path.write_bytes(b"".join(lines[:-2]))
    assert verify_file(path, with_head=False) == (True, None, None)  # the chain alone cannot tell
    assert verify_file(path) == (False, 10, "truncated")


def test_forged_entry_is_named(tmp_path: Path) -> None:
    path, lines = written_log(tmp_path)
    last = parse_log(lines[-1]).entries[-1]
    assert isinstance(last, AuditEntry)
    forged = build_entry(
        signing_key=Ed25519PrivateKey.generate(),
        log_id=last.log_id,
        sequence=last.sequence + 1,
        previous_hash=last.entry_hash,
        moment=stepping_clock()(),
        event="keys_released",
        project_id="moj-dfe-2026",
        details={"party": "moj", "key_count": 1, "keys_sha256": SCHEMA},
        salt=bytes(16),
        view_key=bytes(16),
    )
    path.write_bytes(b"".join(lines) + (line_to_json(forged) + "\n").encode())
    assert verify_file(path, with_head=False) == (False, 12, "forged")


def test_entry_from_another_log_is_named(tmp_path: Path) -> None:
    path, lines = written_log(tmp_path)
    other = tmp_path / "other"
    other.mkdir()
    # Same LU key, another log: the swapped-in entry is validly signed but foreign.
    (other / "lu-signing.pem").write_bytes((tmp_path / "lu-signing.pem").read_bytes())
    os.chmod(other / "lu-signing.pem", 0o600)
    with make_log(other) as log:
        write_project(log, "other-project")
    other_lines = (other / "audit.jsonl").read_bytes().splitlines(keepends=True)
    lines[5] = other_lines[5]
    path.write_bytes(b"".join(lines))
    assert verify_file(path) == (False, 5, "foreign")


def test_entry_of_another_project_in_the_same_log_is_named(tmp_path: Path) -> None:
    with make_log(tmp_path) as log:
        write_project(log, "first-project")
        write_project(log, "second-project")
    path = tmp_path / "audit.jsonl"
    lines = path.read_bytes().splitlines(keepends=True)
    lines[4] = lines[16]  # same event type, other project, moved to another position
    path.write_bytes(b"".join(lines))
    intact, index, problem = verify_file(path)
    assert (intact, index) == (False, 4) and problem == "reordered"


def test_disallowed_events_and_details_are_refused(tmp_path: Path) -> None:
    with make_log(tmp_path) as log:
        with pytest.raises(AuditError, match="allow-list"):
            append(log, "note", project_id="p", details={})
        with pytest.raises(AuditError, match="does not allow detail key"):
            append(
                log, "checks_passed", project_id="p", details={"parties": "moj", "surname": "Smith"}
            )
        with pytest.raises(AuditError, match="lower-case hex"):
            append(
                log,
                "keys_released",
                project_id="p",
                details={
                    "party": "moj",
                    "run_id": "r1",
                    "key_count": 3,
                    "keys_sha256": "Jane Smith 1970-01-01",
                },
            )
        with pytest.raises(AuditError, match="whole number"):
            append(
                log,
                "run_finished",
                project_id="p",
                details={
                    "run_id": "r1",
                    "cluster_count": "0.93",
                    "linked_record_count": 1,
                    "comparisons": 1,
                },
            )
        with pytest.raises(AuditError, match="party"):
            append(
                log, "checks_failed", project_id="p", details={"party": "O'Brien", "aspect": "kcv"}
            )
        with pytest.raises(AuditError, match="missing"):
            append(log, "upload_committed", project_id="p", details={"party": "moj"})
        with pytest.raises(AuditError, match="project id"):
            append(log, "checks_passed", project_id=None, details={"parties": "moj"})
        assert log.last_entry is None
    assert (tmp_path / "audit.jsonl").read_bytes() == b""


def test_append_is_durable_and_reopen_continues_the_chain(tmp_path: Path) -> None:
    with make_log(tmp_path) as log:
        write_project(log, "first-project")
    # A fresh process sees every acknowledged entry and continues the same chain.
    with make_log(tmp_path) as log:
        write_project(log, "second-project")
    path = tmp_path / "audit.jsonl"
    assert verify_file(path) == (True, None, None)
    assert len(read_entries(path)) == 24


def test_torn_last_line_is_refused_and_repairable(tmp_path: Path) -> None:
    path, lines = written_log(tmp_path)
    path.write_bytes(b"".join(lines) + lines[0][:40])  # crash mid-append
    with pytest.raises(AuditError, match="incomplete") as caught:
        make_log(tmp_path)
    assert caught.value.entry == 12
    with pytest.raises(AuditError, match="incomplete"):
        read_entries(path)
    assert repair_torn_tail(path) == 40
    with make_log(tmp_path) as log:
        append(log, "checks_passed", project_id="moj-dfe-2026", details={"parties": "moj,dfe"})
    assert verify_file(path) == (True, None, None)


def test_corrupted_log_is_never_appended_to(tmp_path: Path) -> None:
    path, lines = written_log(tmp_path)
    lines[1] = lines[1].replace(b'"role":"party"', b'"role":"admin"')
    path.write_bytes(b"".join(lines))
    with pytest.raises(AuditError, match="refusing to append") as caught:
        make_log(tmp_path)
    assert caught.value.entry == 1
    assert path.read_bytes() == b"".join(lines)


def test_truncated_log_is_refused_on_open(tmp_path: Path) -> None:
    path, lines = written_log(tmp_path)
    path.write_bytes(b"".join(lines[:-1]))
    with pytest.raises(AuditError, match="removed from the end"):
        make_log(tmp_path)


def test_second_process_cannot_open_the_same_log(tmp_path: Path) -> None:
    with make_log(tmp_path), pytest.raises(InUseError, match="another process"):
        make_log(tmp_path)


def test_concurrent_appends_keep_one_chain(tmp_path: Path) -> None:
    with make_log(tmp_path) as log:

        def worker(number: int) -> None:
            for _ in range(10):
                append(log, "checks_passed", project_id=f"p{number}", details={"parties": "moj"})

        threads = [threading.Thread(target=worker, args=(number,)) for number in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    path = tmp_path / "audit.jsonl"
    assert verify_file(path) == (True, None, None)
    assert len(read_entries(path)) == 40


def test_failed_write_leaves_the_log_verifiable(tmp_path: Path) -> None:
    """The disk fills mid-append (RLIMIT_FSIZE: a real EFBIG from the kernel, the path a
    full disk takes): RESOURCE_EXHAUSTED for the caller, nothing partial in the file, and
    the next append continues the chain."""
    with make_log(tmp_path) as log:
        write_project(log)
        size = (tmp_path / "audit.jsonl").stat().st_size
        previous = resource.getrlimit(resource.RLIMIT_FSIZE)
        resource.setrlimit(resource.RLIMIT_FSIZE, (size + 100, previous[1]))
        try:
            # A full disk is RESOURCE_EXHAUSTED for the caller, who may retry once space is back.
            with pytest.raises(ResourceLimitError, match="was not recorded"):
                append(log, "checks_passed", project_id="moj-dfe-2026", details={"parties": "moj"})
        finally:
            resource.setrlimit(resource.RLIMIT_FSIZE, previous)
        assert (tmp_path / "audit.jsonl").stat().st_size == size
        append(log, "checks_passed", project_id="moj-dfe-2026", details={"parties": "dfe"})
    path = tmp_path / "audit.jsonl"
    assert verify_file(path) == (True, None, None)
    assert len(read_entries(path)) == 13


def test_a_log_whose_head_is_missing_is_refused_and_repairable(tmp_path: Path) -> None:
    """Cutting entries off the end and deleting the head leaves a log that chains: the LU
    will not open it; after the operator has checked it against heads held elsewhere,
    repair_missing_head signs a head for it."""
    path, lines = written_log(tmp_path)
    path.write_bytes(b"".join(lines[:-3]))
    head_path_for(path).unlink()
    with pytest.raises(AuditError, match="head is missing"):
        make_log(tmp_path)
    assert repair_missing_head(path, signing_key_path=tmp_path / "lu-signing.pem") == 8
    with make_log(tmp_path) as log:
        assert log.last_entry is not None and log.last_entry.sequence == 8


def test_project_export_verifies_and_hides_other_projects(tmp_path: Path) -> None:
    with make_log(tmp_path) as log:
        write_project(log, "first-project")
        write_project(log, "second-project")
        count = log.export_project("second-project", tmp_path / "export.jsonl")
    assert count == 24  # every entry: the other project's as stubs
    text = (tmp_path / "export.jsonl").read_text()
    assert "first-project" not in text
    entries = parse_log(text.encode()).entries
    stubs = [entry for entry in entries if isinstance(entry, RedactedEntry)]
    assert len(stubs) == 14  # the first project's 12, and the 2 entries with no project
    export = tmp_path / "export.jsonl"
    assert head_path_for(export).exists()
    assert verify_file(export) == (True, None, None)


def test_a_read_streams_to_the_head_it_was_signed_for(tmp_path: Path) -> None:
    """A read (FetchAuditLog) is streamed from disk, not loaded whole: entries appended while
    it is read are left for the next read, and the lines end exactly at the head the read
    came with, so the reader's copy verifies."""
    with make_log(tmp_path) as log:
        write_project(log)
        export = log.export(None)
        first = next(export.lines)
        append(log, "checks_passed", project_id="moj-dfe-2026", details={"parties": "moj"})
        lines = [first, *export.lines]
        assert len(lines) == 12 and log.last_entry.sequence == 12
    (tmp_path / "read.jsonl").write_bytes(b"".join(lines))
    (tmp_path / "read.jsonl.head").write_bytes(export.head)
    assert verify_file(tmp_path / "read.jsonl") == (True, None, None)
