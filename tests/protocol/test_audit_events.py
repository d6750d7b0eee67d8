"""The typed audit events and the format's allow-list describe the same events and keys."""

from __future__ import annotations

from dataclasses import fields, replace

import pytest

from protocol.audit import ALLOWED_EVENTS, withheld_from
from protocol.audit_events import (
    EVENTS,
    ChecksFailed,
    EntryRecord,
    RunFinished,
    SpineRunLinked,
    UploadRefused,
    event_record,
)
from protocol.errors import AuditError
from protocol.vocabulary import CheckAspect, UploadRefusal


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


def test_a_model_runs_expected_quality_is_logged_for_the_operator_and_auditors_only() -> None:
    finished = RunFinished(
        project_id="p1",
        run_id="r1",
        cluster_count=3,
        linked_record_count=4,
        comparisons=9,
        threshold_thousandths=500,
        threshold_method="fellegi-sunter",
        estimated_precision_millionths=991_234,
        estimated_recall_millionths=982_000,
        estimated_f1_millionths=986_600,
    )
    details = event_record(finished).details
    assert details["estimated_f1_millionths"] == 986_600
    # Figures from every party's data: withheld from any member party's view of the entry.
    hidden = withheld_from("run_finished", details, "moj")
    assert {
        "estimated_precision_millionths",
        "estimated_recall_millionths",
        "estimated_f1_millionths",
        "threshold_thousandths",
    } <= hidden
    assert withheld_from("run_finished", details, None) == frozenset()
    with pytest.raises(AuditError, match="millionths"):
        RunFinished(
            project_id="p1", run_id="r1", cluster_count=3, linked_record_count=4,
            comparisons=9, estimated_f1_millionths=1_000_001,
        )  # fmt: skip


def test_a_spine_runs_held_apart_count_and_a_key_context_refusal_are_logged() -> None:
    linked = SpineRunLinked(
        project_id="p1", spine="people", run_id="r2", matched_people=70, new_people=5,
        spine_people=75, merges=0, splits=0, held_apart=2,
    )  # fmt: skip
    details = event_record(linked).details
    assert details["held_apart"] == 2
    # A count from every party's data: withheld from a member party, shown to the operator.
    assert "held_apart" in withheld_from("spine_run_linked", details, "moj")
    assert withheld_from("spine_run_linked", details, None) == frozenset()
    # A log from before the count has none: still a valid entry.
    older = replace(linked, held_apart=None)
    assert "held_apart" not in event_record(older).details
    with pytest.raises(AuditError, match="held_apart"):
        replace(linked, held_apart=-1)
    refused = UploadRefused(project_id="p1", party="moj", reason=UploadRefusal.KEY_CONTEXT)
    assert event_record(refused).details == {"party": "moj", "reason": "key_context"}
    # The reason is the refused party's own: private from the other members.
    assert "reason" in withheld_from("upload_refused", event_record(refused).details, "dfe")
    assert "reason" not in withheld_from("upload_refused", event_record(refused).details, "moj")
