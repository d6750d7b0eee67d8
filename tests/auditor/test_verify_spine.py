"""audit verify replays spine events: a run's spine events must fall within that run."""

from __future__ import annotations

from pathlib import Path

from auditor.verify import verify_audit_log
from protocol.signing import load_public_key
from tests.audit_fixtures import SCHEMA, append, make_log, write_project

PROJECT = "moj-dfe-2026"


def _verify(tmp_path: Path, *, run_id: str) -> list[tuple[str, int | None]]:
    tmp_path.mkdir()
    with make_log(tmp_path) as log:
        append(
            log,
            "spine_created",
            project_id=None,
            details={
                "spine": "people",
                "parties": "moj,dfe",
                "schema_fingerprint": SCHEMA,
                "max_merge_share_millionths": 50_000,
            },
        )
        write_project(log, PROJECT)
        # After the run finished: a spine_run_linked is only honest inside its run.
        append(
            log,
            "spine_run_linked",
            project_id=PROJECT,
            details={
                "spine": "people",
                "run_id": run_id,
                "matched_people": 10,
                "new_people": 5,
                "spine_people": 15,
                "merges": 0,
                "splits": 0,
            },
        )
        (tmp_path / "lu-public.pem").write_bytes(log.public_key_pem())
    report = verify_audit_log(
        tmp_path / "audit.jsonl", load_public_key(tmp_path / "lu-public.pem"), check_wire=False
    )
    return [(check.name, check.entry) for check in report.failures]


def test_a_spine_event_outside_its_run_fails_verification(tmp_path: Path) -> None:
    assert _verify(tmp_path / "after", run_id="run-1")
    assert _verify(tmp_path / "unknown", run_id="run-9")


KCV_A, KCV_B, KCV_C = "aa" * 16, "bb" * 16, "cc" * 16


def _spine_log(tmp_path: Path, entries: list[tuple[str, dict[str, str | int]]]) -> list[str]:
    tmp_path.mkdir()
    with make_log(tmp_path) as log:
        for event, details in entries:
            append(log, event, project_id=None, details={"spine": "people", **details})
        (tmp_path / "lu-public.pem").write_bytes(log.public_key_pem())
    report = verify_audit_log(
        tmp_path / "audit.jsonl", load_public_key(tmp_path / "lu-public.pem"), check_wire=False
    )
    return [check.message for check in report.failures]


CREATED: tuple[str, dict[str, str | int]] = (
    "spine_created",
    {"parties": "moj,dfe", "schema_fingerprint": SCHEMA, "max_merge_share_millionths": 50_000},
)


def _rotated(old: str, new: str) -> tuple[str, dict[str, str | int]]:
    return ("spine_rotated", {"old_kcv": old, "new_kcv": new, "records": 10, "uploads": 2})


def _pruned(removed: int) -> tuple[str, dict[str, str | int]]:
    return (
        "spine_pruned",
        {
            "keep_runs": 1,
            "records_removed": removed,
            "records_kept": 5,
            "people_without_records": 1,
        },
    )


def test_rotations_and_retention_deletions_of_a_spine_verify(tmp_path: Path) -> None:
    entries = [CREATED, _rotated(KCV_A, KCV_B), _pruned(3), _rotated(KCV_B, KCV_C)]
    assert _spine_log(tmp_path / "good", entries) == []


def test_a_broken_rotation_chain_or_an_empty_deletion_fails_verification(tmp_path: Path) -> None:
    assert any(
        "before it was created" in message
        for message in _spine_log(tmp_path / "early", [_rotated(KCV_A, KCV_B), CREATED])
    )
    assert any(
        "did not bind it to" in message
        for message in _spine_log(
            tmp_path / "chain", [CREATED, _rotated(KCV_A, KCV_B), _rotated(KCV_A, KCV_C)]
        )
    )
    assert any(
        "already had" in message
        for message in _spine_log(tmp_path / "same", [CREATED, _rotated(KCV_A, KCV_A)])
    )
    assert any(
        "no record" in message for message in _spine_log(tmp_path / "empty", [CREATED, _pruned(0)])
    )
    assert any(
        "created twice" in message for message in _spine_log(tmp_path / "twice", [CREATED, CREATED])
    )
