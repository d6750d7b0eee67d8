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
