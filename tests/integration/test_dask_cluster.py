"""A real mutual-TLS linkage unit whose runs compare on a Dask LocalCluster (two worker
processes on loopback): progress and a lost worker show in the project status, the run still
finishes with the right link keys, and runs that cannot finish end FAILED saying why."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from distributed import Client, LocalCluster

from bloomlink.cli import main
from bloomlink.exit_codes import ExitCode
from protocol.messages import ProjectSettings, ProjectStatus, RunState, UploadState
from tests.dask_helpers import CompareTaskFaults, local_cluster
from tests.service_helpers import SCHEMA_FINGERPRINT, planted_party_clks, write_clk_file

pytestmark = pytest.mark.integration

PARTIES = ["moj", "dfe"]


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    with local_cluster(2) as local:
        yield local


@pytest.fixture
def faults(cluster: LocalCluster) -> Iterator[Client]:
    """A client to register fault plugins with; they are removed, and both workers back,
    before the next test."""
    with Client(cluster, set_as_default=False) as client:
        yield client
        for name in list(
            client.run_on_scheduler(lambda dask_scheduler: dask_scheduler.worker_plugins)
        ):
            client.unregister_worker_plugin(name)
        client.wait_for_workers(2, timeout=60)


def submit_project(start_server, connect, tmp_path: Path, clks, **server_options):  # type: ignore[no-untyped-def]
    server = start_server(**server_options)
    operator = connect(server, "operator")
    operator.create_project(
        ProjectSettings(
            project_id="p1",
            members=tuple(PARTIES),
            schema_fingerprint=SCHEMA_FINGERPRINT,
            threshold=0.9,
        )
    )
    for party in PARTIES:
        path = write_clk_file(tmp_path / f"{party}.clk", clks[party], project_id="p1")
        assert (
            connect(server, party).upload_file(path, party_id=party).state is UploadState.COMPLETE
        )
    return server, operator


def test_status_shows_dask_progress_and_a_lost_worker_and_the_run_issues_the_right_keys(
    start_server, connect, cluster: LocalCluster, faults: Client, tmp_path: Path
) -> None:
    gate, killed = tmp_path / "gate", tmp_path / "killed"
    faults.register_plugin(
        CompareTaskFaults(kill_marker=str(killed), gate=str(gate)), name="kill-once-then-hold"
    )
    clks = planted_party_clks(PARTIES, seed=8, records=200, shared=60)
    server, operator = submit_project(
        start_server,
        connect,
        tmp_path,
        clks,
        dask_scheduler=cluster.scheduler_address,
        dask_timeout_seconds=180.0,
    )
    # The tasks are held at the gate, so the status can be read while the compare is in flight.
    seen: list[ProjectStatus] = []
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        seen.append(operator.project_status("p1"))
        if "lost 1 Dask worker(s)" in seen[-1].progress_stage:
            break
        time.sleep(0.1)
    in_flight = seen[-1]
    assert in_flight.run_state is RunState.RUNNING, [item.progress_stage for item in seen]
    assert in_flight.progress_stage == (
        "compare on Dask (party pair 1 of 1) (lost 1 Dask worker(s), tasks rescheduled)"
    )
    assert in_flight.progress_total > 1 and in_flight.progress_done < in_flight.progress_total
    assert killed.exists()
    gate.touch()
    status = operator.wait_for_run("p1", timeout=120)
    assert status.run_state is RunState.FINISHED, status
    assert status.linked_record_count == 2 * 60
    keys = {}
    for party in PARTIES:
        fetched = connect(server, party).fetch_link_keys("p1", party)
        keys[party] = dict(zip(fetched.positions, fetched.link_keys, strict=True))
    # Identical CLKs share a key; every other record has a key of its own.
    for position, key in keys["moj"].items():
        matches = np.flatnonzero((clks["dfe"] == clks["moj"][position]).all(axis=1))
        if len(matches):
            assert {keys["dfe"][int(index)] for index in matches} == {key}
        else:
            assert key not in keys["dfe"].values()


def test_a_run_whose_dask_tasks_keep_failing_ends_failed_and_says_why(
    start_server, connect, cluster: LocalCluster, faults: Client, tmp_path: Path
) -> None:
    faults.register_plugin(CompareTaskFaults(fail=True), name="always-fail")
    _, operator = submit_project(
        start_server,
        connect,
        tmp_path,
        planted_party_clks(PARTIES, seed=9, records=40, shared=10),
        dask_scheduler=cluster.scheduler_address,
        dask_task_retries=1,
        dask_timeout_seconds=120.0,
    )
    status = operator.wait_for_run("p1", timeout=120)
    assert status.run_state is RunState.FAILED, status
    assert status.progress_stage.startswith(
        "failed: compare on Dask (party pair 1 of 1): Dask task"
    )
    assert status.progress_stage.endswith(
        "failed 2 times (last: RuntimeError); see the Dask worker logs"
    )


def test_a_run_on_a_cluster_without_workers_ends_failed_and_says_why(
    start_server, connect, tmp_path: Path
) -> None:
    with local_cluster(0) as empty:
        _, operator = submit_project(
            start_server,
            connect,
            tmp_path,
            planted_party_clks(PARTIES, seed=10, records=40, shared=10),
            dask_scheduler=empty.scheduler_address,
            dask_timeout_seconds=2.0,
        )
        status = operator.wait_for_run("p1", timeout=60)
    assert status.run_state is RunState.FAILED, status
    assert status.progress_stage == "failed: no Dask worker joined the scheduler within 2 s"


def test_serve_refuses_plaintext_dask_comms_to_another_machine(
    pki, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(
        [
            "serve",
            "--data-dir",
            str(tmp_path / "lu"),
            "--ca-certificate",
            str(pki.ca_certificate),
            "--certificate",
            str(pki.linkage_unit.certificate),
            "--private-key",
            str(pki.linkage_unit.private_key),
            "--dask-scheduler",
            "tcp://10.20.30.40:8786",
        ]
    )
    assert code == ExitCode.CONFIGURATION
    error = capsys.readouterr().err
    assert "a Dask scheduler off this machine needs mutual TLS" in error
