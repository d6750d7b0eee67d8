"""Two- and three-party runs through a real mutual-TLS linkage unit."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from protocol.messages import ProjectSettings, RunState, UploadState
from tests.service_helpers import (
    SCHEMA_FINGERPRINT,
    MemoryAuditSink,
    planted_party_clks,
    write_clk_file,
)

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("parties", [["moj", "dfe"], ["moj", "dfe", "hmrc"]], ids=["two", "three"])
def test_parties_upload_run_and_fetch_their_keys(
    start_server, connect, tmp_path: Path, parties
) -> None:
    audit = MemoryAuditSink()
    server = start_server(audit=audit)
    operator = connect(server, "operator")
    operator.create_project(
        ProjectSettings(
            project_id="p1",
            members=tuple(parties),
            schema_fingerprint=SCHEMA_FINGERPRINT,
            threshold=0.9,
        )
    )
    clks = planted_party_clks(parties, seed=len(parties), records=30, shared=8)
    for party in parties:
        path = write_clk_file(tmp_path / f"{party}.clk", clks[party], project_id="p1")
        result = connect(server, party, chunk_bytes=256).upload_file(path, party_id=party)
        assert result.state is UploadState.COMPLETE
    status = operator.wait_for_run("p1", timeout=20)
    assert status.run_state is RunState.FINISHED, status
    assert status.linked_record_count == 8 * len(parties)
    assert (status.threshold, status.threshold_method) == (0.9, "operator")
    keys = {}
    for party in parties:
        fetched = connect(server, party).fetch_link_keys("p1", party)
        assert sorted(fetched.positions) == list(range(30))
        keys[party] = dict(zip(fetched.positions, fetched.link_keys, strict=True))
    # Identical CLKs got the same key in every party; every other record a key of its own.
    first = parties[0]
    for position, key in keys[first].items():
        clk = clks[first][position]
        for other in parties[1:]:
            matches = np.flatnonzero((clks[other] == clk).all(axis=1))
            other_keys = {keys[other][int(index)] for index in matches}
            if len(matches):
                assert other_keys == {key}
            else:
                assert key not in keys[other].values()
    events = [name for name, _, _ in audit.events]
    for event in (
        "project_created",
        "party_authenticated",
        "upload_committed",
        "checks_passed",
        "run_started",
        "run_finished",
        "keys_released",
        "payload_deleted",
    ):
        assert event in events
    assert audit.named("keys_released")[0]["key_count"] == 30
    # Retention 0: CLKs are deleted once the run has finished.
    assert not list((server.config.data_dir / "payloads" / "p1").glob("*.clk"))


def test_status_reports_the_threshold_the_engine_chose(
    start_server, connect, tmp_path: Path
) -> None:
    """With no operator threshold the run chooses one from its own scores; status shows it."""
    server = start_server()
    operator = connect(server, "operator")
    operator.create_project(
        ProjectSettings(
            project_id="p1", members=("moj", "dfe"), schema_fingerprint=SCHEMA_FINGERPRINT
        )
    )
    assert operator.project_status("p1").threshold is None
    clks = planted_party_clks(["moj", "dfe"], seed=11, records=400, shared=150)
    for party in ("moj", "dfe"):
        path = write_clk_file(tmp_path / f"{party}.clk", clks[party], project_id="p1")
        connect(server, party).upload_file(path, party_id=party)
    status = operator.wait_for_run("p1", timeout=30)
    assert status.run_state is RunState.FINISHED, status
    assert status.threshold is not None and 0.0 < status.threshold <= 1.0
    assert status.threshold_method not in ("", "operator")
