"""The typed audit events and the format's allow-list describe the same events and keys."""

from __future__ import annotations

from dataclasses import fields

import pytest

from protocol.audit import ALLOWED_EVENTS
from protocol.audit_events import EVENTS, ChecksFailed, EntryRecord, RunFinished, event_record
from protocol.errors import AuditError
from protocol.vocabulary import CheckAspect


def test_every_allowed_event_has_exactly_one_type_with_its_keys() -> None:
    assert set(EVENTS) == set(ALLOWED_EVENTS)
    for name, kind in EVENTS.items():
        keys = {item.name for item in fields(kind)} - {"project_id"}
        assert keys == set(ALLOWED_EVENTS[name].keys), name


def test_an_event_is_checked_where_it_is_made_and_serialised_in_one_place() -> None:
    finished = RunFinished(
        project_id="p1", run_id="r1", cluster_count=3, linked_record_count=4, comparisons=9
    )
    assert event_record(finished) == EntryRecord(
        event="run_finished",
        project_id="p1",
        details={"run_id": "r1", "cluster_count": 3, "linked_record_count": 4, "comparisons": 9},
    )
    failed = ChecksFailed(project_id="p1", party="dfe", aspect=CheckAspect.KCV)
    assert event_record(failed).details == {"party": "dfe", "aspect": "kcv"}
    with pytest.raises(AuditError, match="party"):
        ChecksFailed(project_id="p1", party="O'Brien", aspect=CheckAspect.KCV)
