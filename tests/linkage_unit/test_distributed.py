"""The compare stage on a real Dask LocalCluster (two worker processes): the same link
structure as in-process, retries of failed and killed tasks, timeouts, and failures in the
project's status."""

from __future__ import annotations

import functools
import os
import socket
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from distributed import Client, LocalCluster

from linkage_unit import matching
from linkage_unit.blocking import BlockingSettings, fit_blocking_settings
from linkage_unit.comparison import LocalComparer
from linkage_unit.distributed import (
    ClusterSettings,
    DaskExecutor,
    TaskFailure,
    _PairUnion,
    _TaskResult,
)
from linkage_unit.fellegi_sunter import ModelSettings
from linkage_unit.group_blocking import GroupBlockingSettings, JoinRule
from linkage_unit.report import RunReport
from linkage_unit.server import ServerConfig, create_server
from protocol.clk_layout import ClkLayout, GroupLayout
from protocol.errors import ConfigurationError, MatchingError
from protocol.messages import ProjectSettings, RunState
from tests.dask_helpers import CompareTaskFaults, local_cluster
from tests.linkage_unit.test_service import OPERATOR, build, upload
from tests.service_helpers import (
    SCHEMA_FINGERPRINT,
    MemoryAuditSink,
    planted_party_clks,
    write_clk_file,
)
from tests.strategies import grouped_parties

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    with local_cluster(2) as local:
        yield local


@pytest.fixture(scope="module")
def client(cluster: LocalCluster) -> Iterator[Client]:
    with Client(cluster, set_as_default=False) as connected:
        yield connected


def executor(client: Client, **options: float) -> DaskExecutor:
    settings = ClusterSettings(scheduler_address=client.scheduler.address, **options)
    return DaskExecutor(settings, client=client)


def noisy_parties(seed: int, records: int, parties: int = 2) -> dict[str, np.ndarray]:
    """Random CLKs (density 0.4); half of each other party's records are noisy copies of
    party 0's first half (a few flipped bits each, so scores spread and ties are rare). One
    party alone holds noisy duplicates of its own first half instead."""
    generator = np.random.default_rng(seed)
    half = records // 2

    def clks(count: int) -> np.ndarray:
        bits = generator.random((count, 1024)) < 0.4
        return np.packbits(bits, axis=1, bitorder="little").view(np.uint64).reshape(count, 16)

    def noisy(source: np.ndarray) -> np.ndarray:
        flips = generator.random((len(source), 1024)) < generator.uniform(0, 0.06, (len(source), 1))
        return source ^ np.packbits(flips, axis=1, bitorder="little").view(np.uint64).reshape(
            -1, 16
        )

    base = clks(records)
    if parties == 1:
        base[half:] = noisy(base[:half])
        return {"p0": base[generator.permutation(records)]}
    result = {"p0": base}
    for number in range(1, parties):
        other = clks(records)
        other[:half] = noisy(base[:half])
        result[f"p{number}"] = other[generator.permutation(records)]
    return result


@pytest.mark.parametrize(
    ("blocking", "deduplicate", "parties"),
    [("lsh", False, 2), ("none", False, 2), ("lsh", True, 2), ("none", True, 1), ("lsh", False, 3)],
)
def test_dask_gives_the_in_process_link_structure(
    client: Client, blocking: str, deduplicate: bool, parties: int
) -> None:
    clks = noisy_parties(seed=11 + parties, records=1500, parties=parties)
    settings = matching.MatchSettings(
        threshold=0.8,
        blocking=blocking,
        deduplicated=frozenset(clks) if deduplicate else frozenset(),
        blocking_seed=5,
        blocking_settings=BlockingSettings(fit_to_data=False, bands=24, bits_per_band=10),
    )
    stages: list[tuple[str, int, int]] = []
    local = matching.link(clks, settings)
    remote = matching.link(
        clks,
        settings,
        executor=executor(client),
        progress=lambda stage, done, total: stages.append((stage, done, total)),
    )
    assert local.linked_record_count > 0
    for party in clks:
        np.testing.assert_array_equal(local.clusters[party], remote.clusters[party])
    assert remote.candidate_pair_count == local.candidate_pair_count
    if blocking == "lsh":
        # Band groups partition the bands, so even the work counts agree.
        assert remote.comparisons == local.comparisons
        assert remote.statistics.compare == local.statistics.compare
    dask_stages = [item for item in stages if item[0].startswith("compare on Dask")]
    assert dask_stages and all(done == total for _, done, total in dask_stages[-1:])
    assert dask_stages[-1][2] > 1  # the work was cut into several tasks


def crash_once(marker: str, value: int) -> int:
    """Kills its own worker process the first time it runs anywhere (a lost worker mid-run).

    The marker is claimed atomically: two workers starting at once must not both die."""
    try:
        os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return value * 2
    os._exit(1)


def fail_once(marker: str, value: int) -> int:
    try:  # claimed atomically, as in crash_once: exactly one task fails
        os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return value * 2
    raise RuntimeError("transient failure")


def always_fail(value: int) -> int:
    raise RuntimeError("permanent failure")


def test_a_killed_worker_does_not_lose_the_run(client: Client, tmp_path: Path) -> None:
    stages: list[str] = []
    with executor(client).session() as session:
        results = session.map(
            crash_once,
            [(str(tmp_path / "crashed"), value) for value in range(4)],
            stage="compare",
            progress=lambda stage, done, total: stages.append(stage),
        )
    assert results == [0, 2, 4, 6]
    assert (tmp_path / "crashed").exists()
    assert "compare (lost 1 Dask worker(s), tasks rescheduled)" in stages
    client.wait_for_workers(2, timeout=60)  # the nanny restarts the killed worker


def test_a_worker_killed_mid_link_leaves_the_link_structure_unchanged(
    client: Client, tmp_path: Path
) -> None:
    clks = noisy_parties(seed=21, records=1500)
    settings = matching.MatchSettings(
        threshold=0.8,
        blocking="lsh",
        blocking_seed=9,
        blocking_settings=BlockingSettings(fit_to_data=False, bands=24, bits_per_band=10),
    )
    local = matching.link(clks, settings)
    marker = tmp_path / "killed"
    client.register_plugin(CompareTaskFaults(kill_marker=str(marker)), name="kill-once")
    stages: list[str] = []
    try:
        remote = matching.link(
            clks,
            settings,
            executor=executor(client),
            progress=lambda stage, done, total: stages.append(stage),
        )
    finally:
        client.unregister_worker_plugin("kill-once")
        client.wait_for_workers(2, timeout=60)
    assert marker.exists()  # a worker really died during a compare task
    assert any("lost 1 Dask worker(s), tasks rescheduled" in stage for stage in stages)
    assert local.linked_record_count > 0
    for party in clks:
        np.testing.assert_array_equal(local.clusters[party], remote.clusters[party])
    assert remote.comparisons == local.comparisons


def crash_holding(marker: str, array: np.ndarray) -> int:
    """Kills its worker the first time it runs; with one worker, every copy of ``array``
    (scattered) dies with it."""
    crash_once(marker, 0)
    return int(array.sum())


def test_inputs_lost_with_every_worker_are_scattered_again(tmp_path: Path) -> None:
    stages: list[str] = []
    with (
        local_cluster(1) as single,
        Client(single, set_as_default=False) as connected,
    ):
        with executor(connected, connect_timeout_seconds=60).session() as session:
            array = session.scatter(np.arange(10, dtype=np.uint64))
            results = session.map(
                crash_holding,
                [(str(tmp_path / "crashed"), array)],
                stage="compare",
                progress=lambda stage, done, total: stages.append(stage),
            )
    assert results == [45]
    assert any("retried 1 failed Dask task(s)" in stage for stage in stages)


def test_a_failed_task_is_retried_and_the_retry_shows_in_progress(
    client: Client, tmp_path: Path
) -> None:
    stages: list[str] = []
    with executor(client).session() as session:
        results = session.map(
            fail_once,
            [(str(tmp_path / "failed"), value) for value in range(3)],
            stage="compare",
            progress=lambda stage, done, total: stages.append(stage),
        )
    assert results == [0, 2, 4]
    assert "compare (retried 1 failed Dask task(s))" in stages


def test_a_task_that_keeps_failing_ends_the_compare_with_the_reason(client: Client) -> None:
    with executor(client, task_retries=1).session() as session:
        with pytest.raises(TaskFailure, match=r"failed 2 times \(last: RuntimeError\)"):
            session.map(always_fail, [(1,)], stage="compare", progress=None)


def test_a_compare_that_overruns_its_timeout_fails_instead_of_hanging(client: Client) -> None:
    started = time.monotonic()
    with executor(client, timeout_seconds=0.5).session() as session:
        with pytest.raises(MatchingError, match="unfinished after 0.5 s"):
            session.map(time.sleep, [(1.5,)], stage="compare", progress=None)
    assert time.monotonic() - started < 1.4


def test_inputs_beyond_a_workers_memory_are_refused_before_any_task(client: Client) -> None:
    clks = noisy_parties(seed=3, records=5000)
    settings = matching.MatchSettings(threshold=0.8, blocking="lsh", blocking_seed=1)
    with pytest.raises(MatchingError, match="each Dask worker needs about"):
        matching.link(clks, settings, executor=executor(client, worker_memory_bytes=1 << 20))


def test_a_run_on_the_cluster_finishes_through_the_run_manager(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    settings = ClusterSettings(scheduler_address=cluster.scheduler_address)
    service = build(
        tmp_path, link_function=functools.partial(matching.link, executor=DaskExecutor(settings))
    )
    clks = planted_party_clks(["moj", "dfe"], seed=4, records=30, shared=10)
    _run_project(service, tmp_path, clks)
    status = service.project_status(OPERATOR, "p1")
    assert status.run_state is RunState.FINISHED and status.linked_record_count == 20
    service.runs.shutdown()
    service.storage.close()


def test_an_unreachable_scheduler_fails_the_run_and_the_status_says_why(tmp_path: Path) -> None:
    # A loopback port held (bound, never listening) for the whole run, so no other process
    # can take it between the choice and the connect: connecting is refused.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
        settings = ClusterSettings(
            scheduler_address=f"tcp://127.0.0.1:{port}", connect_timeout_seconds=1.0
        )
        service = build(
            tmp_path,
            link_function=functools.partial(matching.link, executor=DaskExecutor(settings)),
        )
        clks = planted_party_clks(["moj", "dfe"], seed=5, records=8, shared=4)
        _run_project(service, tmp_path, clks)
    status = service.project_status(OPERATOR, "p1")
    assert status.run_state is RunState.FAILED
    assert status.progress_stage.startswith("failed: cannot reach the Dask scheduler")
    service.runs.shutdown()
    service.storage.close()


def _run_project(service, tmp_path: Path, clks: dict[str, np.ndarray]) -> None:
    service.create_project(
        OPERATOR,
        ProjectSettings(
            project_id="p1", members=("moj", "dfe"), schema_fingerprint=SCHEMA_FINGERPRINT
        ),
    )
    for name in ("moj", "dfe"):
        upload(service, write_clk_file(tmp_path / f"{name}.clk", clks[name], project_id="p1"), name)
    service.runs.wait_idle(60)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"scheduler_address": "tcp://10.1.2.3:8786"}, "needs mutual TLS"),
        ({"scheduler_address": "scheduler:8786"}, "must look like"),
        (
            {"scheduler_address": "tls://10.1.2.3:8786", "ca_certificate": Path("ca.pem")},
            "all three",
        ),
        (
            {
                "scheduler_address": "tcp://10.1.2.3:8786",
                "ca_certificate": Path("ca.pem"),
                "certificate": Path("c.pem"),
                "private_key": Path("k.pem"),
            },
            "must be tls://",
        ),
        ({"scheduler_address": "tcp://127.0.0.1:8786", "timeout_seconds": 0}, "timeouts"),
    ],
)
def test_cluster_settings_refuse_plaintext_off_loopback_and_partial_tls(
    options: dict[str, object], message: str
) -> None:
    with pytest.raises(MatchingError, match=message):
        ClusterSettings(**options)  # type: ignore[arg-type]


def test_server_config_names_a_cluster_or_matches_in_process(tmp_path: Path) -> None:
    assert ServerConfig(data_dir=tmp_path, insecure=True).cluster_settings is None
    config = ServerConfig(
        data_dir=tmp_path, insecure=True, dask_scheduler="tcp://127.0.0.1:8786", dask_task_retries=5
    )
    assert config.cluster_settings is not None and config.cluster_settings.task_retries == 5
    with pytest.raises(ConfigurationError, match="Dask settings: a Dask scheduler off this"):
        ServerConfig(data_dir=tmp_path, insecure=True, dask_scheduler="tcp://10.0.0.9:8786")


def test_the_pair_union_folds_duplicates_as_results_arrive() -> None:
    generator = np.random.default_rng(4)
    width = 50
    truth: dict[tuple[int, int], float] = {}
    union = _PairUnion(width=width, max_pairs=10_000, threshold=0.8, backlog=20)
    folds = 0
    for _ in range(30):  # tasks whose pairs overlap, as band groups' do
        left = generator.integers(0, 40, 25).astype(np.int32)
        right = generator.integers(0, width, 25).astype(np.int32)
        scores = ((left * 7 + right * 3) % 20 / 100 + 0.8).astype(np.float32)
        truth.update(
            {(int(a), int(b)): float(c) for a, b, c in zip(left, right, scores, strict=True)}
        )
        before = len(union.pending)
        union.add(_TaskResult(left=left, right=right, scores=scores, comparisons=25))
        folds += len(union.pending) < before + 1
    pairs = union.pairs()
    assert folds > 0  # the backlog was folded while results arrived, not only at the end
    expected = sorted(truth)
    assert list(zip(pairs.left.tolist(), pairs.right.tolist(), strict=True)) == expected
    np.testing.assert_allclose(pairs.scores, [truth[key] for key in expected], rtol=1e-6)
    assert pairs.comparisons == 30 * 25
    small = _PairUnion(width=width, max_pairs=10, threshold=0.8, backlog=5)
    with pytest.raises(MatchingError, match="more than 10 candidate pairs at threshold 0.8"):
        for start in range(0, 40, 8):
            rows = np.arange(start, start + 8, dtype=np.int32)
            small.add(
                _TaskResult(left=rows, right=rows, scores=np.ones(8, np.float32), comparisons=8)
            )


def _report(server) -> RunReport:  # type: ignore[no-untyped-def]
    _, text = server.service.project_report(OPERATOR, "p1")
    return RunReport.from_json(text)


@pytest.mark.parametrize(("records", "blocked"), [(2000, True), (300, False)])
def test_a_run_through_the_service_blocks_with_the_shape_fitted_to_its_data(
    tmp_path: Path, records: int, blocked: bool
) -> None:
    """The default config fits the LSH shape per run: the shape the run's report names is the
    one fitted to these CLKs at the run's record-level threshold, not the fixed 128 x 14; on
    few records, where the fitted shape would cost more than comparing every pair, the run
    compares every pair and names no shape."""
    config = ServerConfig(data_dir=tmp_path, insecure=True, require_manifest=False)
    assert config.blocking_settings == BlockingSettings(fit_to_data=True)
    assert BlockingSettings() == BlockingSettings(fit_to_data=True)
    server = create_server(config, audit=MemoryAuditSink())
    shared = records // 4
    clks = planted_party_clks(["moj", "dfe"], seed=6, records=records, shared=shared)
    try:
        server.service.create_project(
            OPERATOR,
            ProjectSettings(
                project_id="p1",
                members=("moj", "dfe"),
                schema_fingerprint=SCHEMA_FINGERPRINT,
                threshold=0.9,
            ),
        )
        for name in ("moj", "dfe"):
            path = write_clk_file(tmp_path / f"{name}.clk", clks[name], project_id="p1")
            upload(server.service, path, name)
        server.service.runs.wait_idle(120)
        status = server.service.project_status(OPERATOR, "p1")
        assert status.run_state is RunState.FINISHED
        assert status.linked_record_count == 2 * shared
        report = _report(server)
    finally:
        server.stop(0)
    assert report.record_threshold == 0.9
    assert report.comparisons == status.comparisons > 0
    if not blocked:
        assert report.lsh_shapes == ()
        assert report.comparisons == records * records
        return
    fitted = fit_blocking_settings(clks["moj"], clks["dfe"], 0.9, BlockingSettings())
    assert report.lsh_shapes == ((fitted.bands, fitted.bits_per_band),)
    assert report.lsh_shapes != ((128, 14),)
    assert report.comparisons < records * records // 10


def test_server_config_can_fix_the_lsh_shape_of_every_run(tmp_path: Path) -> None:
    config = ServerConfig(
        data_dir=tmp_path,
        insecure=True,
        require_manifest=False,
        lsh_bands=256,
        lsh_bits_per_band=20,
    )
    assert config.blocking_settings == BlockingSettings(
        bands=256, bits_per_band=20, fit_to_data=False
    )
    server = create_server(config, audit=MemoryAuditSink())
    try:
        clks = planted_party_clks(["moj", "dfe"], seed=6, records=20, shared=5)
        _run_project(server.service, tmp_path, clks)
        status = server.service.project_status(OPERATOR, "p1")
        assert status.run_state is RunState.FINISHED and status.linked_record_count == 10
        assert _report(server).lsh_shapes == ((256, 20),)
    finally:
        server.stop(0)
    with pytest.raises(ConfigurationError, match="LSH settings: bits_per_band must be"):
        ServerConfig(data_dir=tmp_path, insecure=True, lsh_bands=8, lsh_bits_per_band=65)
    with pytest.raises(ConfigurationError, match="set both lsh_bands and lsh_bits_per_band"):
        ServerConfig(data_dir=tmp_path, insecure=True, lsh_bands=256)
    with pytest.raises(ConfigurationError, match="applies to the fitted shape only"):
        ServerConfig(
            data_dir=tmp_path, insecure=True, lsh_bands=8, lsh_bits_per_band=8,
            lsh_target_recall=0.99,
        )  # fmt: skip
    with pytest.raises(ConfigurationError, match="LSH settings: target_recall"):
        ServerConfig(data_dir=tmp_path, insecure=True, lsh_target_recall=1.0)


def test_a_tight_worker_memory_budget_cuts_the_bands_into_more_tasks(client: Client) -> None:
    clks = noisy_parties(seed=31, records=1500)
    settings = matching.MatchSettings(
        threshold=0.8,
        blocking="lsh",
        blocking_seed=3,
        blocking_settings=BlockingSettings(fit_to_data=False, bands=24, bits_per_band=10),
    )
    records = 3000
    # CLKs + one band's working set and gather buffers + the plans of two bands, per thread.
    budget = records * 128 + 64 * records + 2 * (1 << 18) * 128 + 2 * 8 * records
    totals: list[int] = []
    remote = matching.link(
        clks,
        settings,
        executor=executor(client, worker_memory_bytes=budget),
        progress=lambda stage, done, total: (
            totals.append(total) if stage.startswith("compare on Dask") else None
        ),
    )
    assert totals[-1] == 12  # 24 bands, 2 a task; without the budget, 4 tasks of 6
    local = matching.link(clks, settings)
    for party in clks:
        np.testing.assert_array_equal(local.clusters[party], remote.clusters[party])


def test_each_party_is_sent_once_per_run_and_dropped_when_no_pair_needs_it(
    client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    clks = noisy_parties(seed=41, records=600, parties=3)
    sent: list[int] = []
    scatter = client.scatter

    def counting_scatter(data, **options):  # type: ignore[no-untyped-def]
        sent.append(len(data))
        return scatter(data, **options)

    monkeypatch.setattr(client, "scatter", counting_scatter)
    cancelled: list[int] = []
    cancel = client.cancel

    def counting_cancel(futures, **options):  # type: ignore[no-untyped-def]
        cancelled.append(len(futures))
        return cancel(futures, **options)

    monkeypatch.setattr(client, "cancel", counting_cancel)
    settings = matching.MatchSettings(
        threshold=0.8,
        blocking="lsh",
        blocking_seed=2,
        blocking_settings=BlockingSettings(fit_to_data=False, bands=8),
    )
    remote = matching.link(clks, settings, executor=executor(client))
    local = matching.link(clks, settings)
    # Three party pairs, three parties: each sent once, each dropped after its last pair.
    assert sent == [600, 600, 600]
    assert sum(cancelled) == 3
    for party in clks:
        np.testing.assert_array_equal(local.clusters[party], remote.clusters[party])


NAME_BIRTH = ClkLayout(
    groups=(GroupLayout(name="name", bits=256), GroupLayout(name="birth", bits=128))
)


def grouped_model_settings(**options: Any) -> matching.MatchSettings:
    """A run of NAME_BIRTH encodings scored by the model: LSH of a fixed shape, seed 4."""
    return matching.MatchSettings(
        blocking="lsh",
        blocking_seed=4,
        blocking_settings=BlockingSettings(fit_to_data=False, bands=24, bits_per_band=10),
        model=ModelSettings(random_pairs=100_000),
        **options,
    )


def link_here_and_on_dask(
    client: Client, clks: dict[str, np.ndarray], settings: matching.MatchSettings
) -> tuple[matching.LinkResult, matching.LinkResult]:
    """The same NAME_BIRTH run in this process and on the cluster."""
    local = matching.link(clks, settings, layout=NAME_BIRTH)
    return local, matching.link(clks, settings, layout=NAME_BIRTH, executor=executor(client))


def test_dask_gives_the_in_process_result_with_the_fellegi_sunter_model(client: Client) -> None:
    left, right = grouped_parties(
        np.random.default_rng(8), NAME_BIRTH, left=900, right=800, shared=400
    )
    settings = grouped_model_settings()
    clks = {"a": left, "b": right}
    local, remote = link_here_and_on_dask(client, clks, settings)
    assert local.threshold_method == remote.threshold_method == "fellegi-sunter"
    assert local.linked_record_count > 600
    for party in clks:
        np.testing.assert_array_equal(local.clusters[party], remote.clusters[party])
    assert remote.statistics == local.statistics


def test_waiting_for_workers_reads_the_injected_clock() -> None:
    """No worker ever joins: the wait ends at the settings' timeout on the clock it was given,
    sleeping half a second between looks, with no real time passing."""
    now = [0.0]
    sleeps: list[float] = []

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        now[0] += seconds

    with (
        LocalCluster(
            n_workers=0,
            processes=False,
            protocol="tcp://",
            host="127.0.0.1",
            dashboard_address=None,
        ) as empty,
        Client(empty, set_as_default=False) as client,
    ):
        settings = ClusterSettings(scheduler_address=empty.scheduler_address, timeout_seconds=3)
        waiting = DaskExecutor(settings, client=client, monotonic=lambda: now[0], sleep=sleep)
        with waiting.session() as session:
            with pytest.raises(
                MatchingError, match="no Dask worker joined the scheduler within 3 s"
            ):
                session.wait_for_workers(None)
    assert sleeps == [0.5] * 6


def test_dask_blocks_with_the_same_fitted_shape_as_in_process(client: Client) -> None:
    clks = noisy_parties(seed=21, records=1500, parties=2)
    settings = matching.MatchSettings(
        threshold=0.8,
        blocking="lsh",
        blocking_seed=5,
        blocking_settings=BlockingSettings(fit_to_data=True),
    )
    fixed = matching.link(
        clks, replace(settings, blocking_settings=BlockingSettings(fit_to_data=False))
    )
    local = matching.link(clks, settings)
    remote = matching.link(clks, settings, executor=executor(client))
    assert local.linked_record_count > 0
    for party in clks:
        np.testing.assert_array_equal(local.clusters[party], remote.clusters[party])
    # Same fitted shape on both paths: the same work; a different one from the fixed shape.
    assert remote.comparisons == local.comparisons
    assert local.comparisons != fixed.comparisons


def test_dask_gives_the_in_process_result_with_group_blocking(client: Client) -> None:
    left, right = grouped_parties(
        np.random.default_rng(9), NAME_BIRTH, left=900, right=800, shared=400, exact=0.9, flip=0.01
    )
    settings = grouped_model_settings(
        group_blocking=GroupBlockingSettings(max_group_block_pairs=500),
        deduplicated=frozenset({"a"}),
        threshold=0.7,  # the record-level cut, where the join holds the pairs above it
    )
    clks = {"a": left, "b": right}
    local, remote = link_here_and_on_dask(client, clks, settings)
    assert local.statistics.compare.group_recall_estimates == (1.0, 1.0), local.statistics
    assert local.statistics.compare.group_lsh_thresholds == (0.9, 0.9)
    assert local.linked_record_count > 600
    for party in clks:
        np.testing.assert_array_equal(local.clusters[party], remote.clusters[party])
    assert local.scored is not None and remote.scored is not None
    for mine, theirs in zip(local.scored.party_pairs, remote.scored.party_pairs, strict=True):
        np.testing.assert_array_equal(mine.pairs.left, theirs.pairs.left)
        np.testing.assert_array_equal(mine.pairs.right, theirs.pairs.right)
        np.testing.assert_array_equal(mine.pairs.scores, theirs.pairs.scores)
    # The same blocks planned; in process the LSH part skips the pairs the join compared, on
    # Dask the bands score them again (then the union drops them), so only the count differs.
    ours, theirs = local.statistics.compare, remote.statistics.compare
    assert replace(ours, comparisons=0) == replace(theirs, comparisons=0)
    assert ours.comparisons <= theirs.comparisons


def test_dask_hands_the_join_its_rule_as_in_process(client: Client) -> None:
    """A model run's join judges its pairs by the scorer's rule (``JoinRule``): on Dask the
    route is taken at the linkage unit with the same rule, so the pairs are the same."""
    left, right = grouped_parties(
        np.random.default_rng(9), NAME_BIRTH, left=900, right=800, shared=400, exact=0.9, flip=0.01
    )
    compare = grouped_model_settings(
        group_blocking=GroupBlockingSettings(max_group_block_pairs=500)
    ).compare_settings(4, NAME_BIRTH)
    rule = JoinRule(weights=(1.3, 0.7), cut=0.8)
    arrays, jobs = [left, right], [(0, 1)]
    (local,) = LocalComparer().compare(arrays, jobs, [0.7], compare, join_rules=[rule])
    (remote,) = executor(client).compare(arrays, jobs, [0.7], compare, join_rules=[rule])
    (plain,) = LocalComparer().compare(arrays, jobs, [0.7], compare)
    assert local.statistics.group_lsh_thresholds == (0.9,)  # the join was used
    for column in ("left", "right", "scores"):
        np.testing.assert_array_equal(getattr(local.pairs, column), getattr(remote.pairs, column))
    assert len(local.pairs) != len(plain.pairs)  # the rule, not the record cut, judged


def test_dask_falls_back_as_in_process_where_the_group_join_misses_pairs(client: Client) -> None:
    """Group blocking's other route: an LSH part fitted at Dice 1 holds no pair the join
    missed, so the join's measured recall is below the 1.0 asked for and both paths compare
    the party pair as without group blocking (LSH at the run's cut), to the same pairs."""
    left, right = grouped_parties(
        np.random.default_rng(9), NAME_BIRTH, left=900, right=800, shared=400
    )
    settings = grouped_model_settings(
        group_blocking=GroupBlockingSettings(lsh_threshold=1.0, min_recall=1.0),
        threshold=0.7,
    )
    clks = {"a": left, "b": right}
    local, remote = link_here_and_on_dask(client, clks, settings)
    recalls = local.statistics.compare.group_recall_estimates
    assert len(recalls) == 1 and 0.5 < recalls[0] < 0.95, recalls
    assert local.statistics.compare.group_lsh_thresholds == ()  # the join was not used
    assert local.statistics.compare.lsh_shapes == ((24, 10),)
    assert local.linked_record_count > 500  # most of the 400 shared people
    for party in clks:
        np.testing.assert_array_equal(local.clusters[party], remote.clusters[party])
    # Without the join both paths block with the same bands: even the work counts agree.
    assert remote.statistics.compare == local.statistics.compare
