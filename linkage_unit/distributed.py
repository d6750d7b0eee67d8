"""Distributed compare: the compare stage of matching run as tasks on a Dask cluster
(block -> **compare** -> solve, for linkages too large for one machine).

The linkage unit stays the coordinator. It scatters each party's CLKs to every worker once
(``broadcast``), cuts the work into tasks - groups of LSH bands when blocking, row tiles of the
left party when comparing exhaustively; at least ``tasks_per_thread`` per worker thread, and
small enough for ``worker_memory_bytes`` - and folds compact candidate pairs back into one
union as they arrive (int32 record positions and float32 scores, 12 bytes a pair). Each task runs the same kernels as the
in-process path (:class:`linkage_unit.blocking.BlockingIndex` restricted to its bands,
:func:`linkage_unit.similarity.candidate_pairs` on its rows), and the union over tasks is the
in-process union, so the link structure is identical. Solving stays at the linkage unit, on
the gathered pairs, so nothing about it depends on task boundaries.

Failures: when a worker dies, the Dask scheduler reschedules its tasks on the others (the
scattered CLKs are on every worker); if every copy of a scattered input was lost, the linkage
unit scatters it again. A task that raises, or that Dask gives up on (``KilledWorker``), is
resubmitted up to ``task_retries`` times. Lost workers, retries and finished tasks are
reported through the run's progress callback, so the project's status shows them. A task that
keeps failing, a cluster that cannot be reached, or a compare that exceeds
``timeout_seconds`` (for example: no worker ever joins) ends the run with a MatchingError that
says which; nothing waits forever.

Trust: the Dask workers see CLKs, exactly as the linkage unit does, and Dask moves tasks and
results with pickle. The cluster is therefore part of the linkage unit (same operator, same
network zone), and its comms use mutual TLS (``tls://`` with CA, certificate and key) unless
the scheduler is on loopback.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import numpy as np
import numpy.typing as npt

from linkage_unit.blocking import (
    BlockingIndex,
    BlockingMode,
    BlockingSettings,
    blocking_settings_for,
    sample_band_positions,
    uses_lsh,
)
from linkage_unit.comparison import (
    CompareSettings,
    CompareStatistics,
    Comparison,
    ProgressCallback,
    rules_of_jobs,
)
from linkage_unit.group_blocking import (
    FallbackRoute,
    GroupBlockingSettings,
    JoinRule,
    merge_candidates,
    route_group_blocking,
)
from linkage_unit.similarity import CandidatePairs, candidate_pairs
from protocol.addresses import is_loopback
from protocol.errors import MatchingError

if TYPE_CHECKING:  # pragma: no cover - typing only
    from distributed import Client

__all__ = ["ClusterSettings", "DaskExecutor", "TaskFailure"]

logger = logging.getLogger("bloomlink.linkage_unit.distributed")


_PAIR_BYTES = 12
_BAND_BYTES_PER_RECORD = 64
"""One band's working set per record and thread: block key, sort order, group bookkeeping
(benchmarks/scale.py measured ~60 bytes at 400k records a party, beyond the CLKs)."""
_PLAN_BYTES_PER_RECORD = 8
"""A band's plan (record order by block) kept for the whole task, per record (~5.4 measured)."""
_GATHER_BYTES = 2 * (1 << 18) * 128
"""Each thread gathers block members in runs of at most 2^18 CLKs a side."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ClusterSettings:
    """Where the Dask scheduler is and how to talk to it.

    ``ca_certificate``/``certificate``/``private_key``: mutual TLS for Dask's own comms
    (required unless the scheduler is on loopback). ``worker_memory_bytes``: what one worker
    may use: bands are cut into smaller tasks until one fits, and a compare that does not fit
    even at one band a task is refused before anything is sent.
    ``timeout_seconds`` bounds one compare from submission to the last result.
    ``tasks_per_thread``: the work is cut into at least this many tasks per worker thread in
    the cluster (more when a task's bands would not fit a worker's memory), so a slow or lost
    worker delays little of it.
    """

    scheduler_address: str
    ca_certificate: Path | None = None
    certificate: Path | None = None
    private_key: Path | None = None
    task_retries: int = 2
    timeout_seconds: float = 3600.0
    connect_timeout_seconds: float = 30.0
    worker_memory_bytes: int = 8 << 30
    tasks_per_thread: int = 2

    def __post_init__(self) -> None:
        tls = (self.ca_certificate, self.certificate, self.private_key)
        if any(path is not None for path in tls) and any(path is None for path in tls):
            raise MatchingError(
                "Dask TLS needs all three of ca_certificate, certificate and private_key"
            )
        scheme = urlsplit(self.scheduler_address).scheme
        if not scheme or not urlsplit(self.scheduler_address).hostname:
            raise MatchingError(
                "the Dask scheduler address must look like tls://host:port (or tcp://127.0.0.1:port)"
            )
        if self.tls and scheme != "tls":
            raise MatchingError("with Dask TLS files set, the scheduler address must be tls://")
        if not self.tls and not is_loopback(self.scheduler_address):
            raise MatchingError(
                "a Dask scheduler off this machine needs mutual TLS: set the Dask ca_certificate, "
                "certificate and private_key and use a tls:// address"
            )
        if self.task_retries < 0:
            raise MatchingError("task_retries must be >= 0")
        if self.timeout_seconds <= 0 or self.connect_timeout_seconds <= 0:
            raise MatchingError("Dask timeouts must be > 0 seconds")
        if self.worker_memory_bytes < 1 << 20:
            raise MatchingError("worker_memory_bytes must be at least 1 MiB")
        if self.tasks_per_thread < 1:
            raise MatchingError("tasks_per_thread must be >= 1")

    @property
    def tls(self) -> bool:
        return self.ca_certificate is not None


class TaskFailure(MatchingError):
    """A Dask task kept failing after its retries (the message names the task, not data)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class _TaskResult:
    """What one task sends back: compact pairs plus counts."""

    left: npt.NDArray[np.int32]
    right: npt.NDArray[np.int32]
    scores: npt.NDArray[np.float32]
    comparisons: int
    block_comparisons: int = 0
    oversized_blocks: int = 0
    oversized_comparisons: int = 0


def _compact(pairs: CandidatePairs, **counts: int) -> _TaskResult:
    return _TaskResult(
        left=pairs.left.astype(np.int32),
        right=pairs.right.astype(np.int32),
        scores=pairs.scores,
        comparisons=pairs.comparisons,
        **counts,
    )


def _band_task(
    left: npt.NDArray[np.uint64],
    right: npt.NDArray[np.uint64] | None,
    positions: npt.NDArray[np.int64],
    blocking: BlockingSettings,
    threshold: float,
    max_pairs: int,
    threads: int,
) -> _TaskResult:
    """Runs on a worker: the blocked compare restricted to one group of bands."""
    index = BlockingIndex(left, right, settings=blocking, positions=positions, workers=threads)
    plan = index.plan
    return _compact(
        index.candidate_pairs(threshold, max_pairs=max_pairs),
        block_comparisons=plan.block_comparisons,
        oversized_blocks=plan.oversized_blocks,
        oversized_comparisons=plan.oversized_comparisons,
    )


def _tile_task(
    left: npt.NDArray[np.uint64],
    right: npt.NDArray[np.uint64] | None,
    start: int,
    stop: int,
    threshold: float,
    max_pairs: int,
    threads: int,
) -> _TaskResult:
    """Runs on a worker: rows [start, stop) of the left side against all of the right (or,
    within one party, against the records after them)."""
    if right is None:
        # Rows [start, stop) against columns [start, n): keep column > row only.
        pairs = candidate_pairs(
            left[start:stop], left[start:], threshold, workers=threads, max_pairs=max_pairs
        )
        keep = pairs.right > pairs.left
        return _TaskResult(
            left=(pairs.left[keep] + start).astype(np.int32),
            right=(pairs.right[keep] + start).astype(np.int32),
            scores=pairs.scores[keep],
            comparisons=pairs.comparisons,
        )
    pairs = candidate_pairs(
        left[start:stop], right, threshold, workers=threads, max_pairs=max_pairs
    )
    return _TaskResult(
        left=(pairs.left + start).astype(np.int32),
        right=pairs.right.astype(np.int32),
        scores=pairs.scores,
        comparisons=pairs.comparisons,
    )


class _PairUnion:
    """The union of the tasks' pairs, each pair once, sorted by (left, right) - exactly what the
    in-process union gives (a pair found by two band groups has the same score in both).

    Results are folded in as they arrive, so the linkage unit holds the distinct pairs plus a
    backlog no larger than them, not every task's copy: a true match comes back from each band
    group it collides in. Past ``max_pairs`` distinct pairs it fails at once."""

    def __init__(
        self, *, width: int, max_pairs: int, threshold: float, backlog: int = 1 << 20
    ) -> None:
        self.width = max(width, 1)
        self.backlog = backlog
        self.max_pairs = max_pairs
        self.threshold = threshold
        self.codes = np.empty(0, np.int64)
        self.scores = np.empty(0, np.float32)
        self.pending: list[tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]] = []
        self.pending_count = 0
        self.comparisons = 0
        self.block_comparisons = 0
        self.oversized_blocks = 0
        self.oversized_comparisons = 0

    def add(self, result: _TaskResult) -> None:
        self.comparisons += result.comparisons
        self.block_comparisons += result.block_comparisons
        self.oversized_blocks += result.oversized_blocks
        self.oversized_comparisons += result.oversized_comparisons
        self.pending.append(
            (result.left.astype(np.int64) * self.width + result.right, result.scores)
        )
        self.pending_count += len(result.left)
        if self.pending_count > max(len(self.codes), self.backlog):
            self._fold()

    def _fold(self) -> None:
        if not self.pending:
            return
        codes = np.concatenate([self.codes, *(codes for codes, _ in self.pending)])
        scores = np.concatenate([self.scores, *(scores for _, scores in self.pending)])
        self.pending, self.pending_count = [], 0
        self.codes, first = np.unique(codes, return_index=True)
        self.scores = scores[first]
        if len(self.codes) > self.max_pairs:
            raise MatchingError(
                f"more than {self.max_pairs} candidate pairs at threshold {self.threshold}: "
                "raise the threshold or the candidate-pair limit"
            )

    def pairs(self) -> CandidatePairs:
        self._fold()
        rows, cols = np.divmod(self.codes, self.width)
        return CandidatePairs(
            left=rows.astype(np.int64),
            right=cols.astype(np.int64),
            scores=self.scores,
            comparisons=self.comparisons,
        )


def _groups(count: int, parts: int) -> list[tuple[int, int]]:
    parts = max(1, min(count, parts))
    edges = np.linspace(0, count, parts + 1).round().astype(int)
    return [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:], strict=True) if b > a]


class DaskExecutor:
    """Runs the compare stage of :func:`linkage_unit.matching.link` on a Dask cluster: a
    :class:`linkage_unit.comparison.Comparer`.

    Pass one to ``link(..., executor=...)``. It connects for each run and disconnects after,
    so a cluster restarted between runs is simply found again. ``client`` (tests, benchmarks)
    uses an existing connection instead and leaves it open.
    """

    def __init__(
        self,
        settings: ClusterSettings,
        *,
        client: Client | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.settings = settings
        self._client = client
        self._monotonic = monotonic
        self._sleep = sleep

    def compare(
        self,
        arrays: Sequence[npt.NDArray[np.uint64]],
        jobs: Sequence[tuple[int, int]],
        thresholds: Sequence[float],
        settings: CompareSettings,
        *,
        join_rules: Sequence[JoinRule | None] = (),
        progress: ProgressCallback | None = None,
    ) -> tuple[Comparison, ...]:
        """Every party pair's compare on the cluster, in job order: each party's CLKs are
        sent once and dropped when no later party pair needs them."""
        rules = rules_of_jobs(join_rules, len(jobs))
        results = []
        with self.session() as session:
            for number, ((i, j), threshold) in enumerate(
                zip(jobs, thresholds, strict=True), start=1
            ):
                right = None if i == j else arrays[j]
                stage = f"compare on Dask (party pair {number} of {len(jobs)})"
                grouped = settings.group_blocking_for(
                    len(arrays[i]), None if right is None else len(right)
                )
                if grouped is not None:
                    pairs, statistics = _group_compare_on_cluster(
                        session, arrays[i], right, threshold, grouped, settings, progress, stage,
                        rule=rules[number - 1],
                    )  # fmt: skip
                else:
                    pairs, statistics = _plain_compare_on_cluster(
                        session, arrays[i], right, threshold, settings.blocking, settings,
                        progress, stage,
                    )  # fmt: skip
                results.append(
                    Comparison(left_party=i, right_party=j, pairs=pairs, statistics=statistics)
                )
                later = {party for job in jobs[number:] for party in job}
                for party in {i, j} - later:
                    session.forget(arrays[party])
        return tuple(results)

    # -- connection -----------------------------------------------------------------------

    @contextmanager
    def session(self) -> Iterator[_Session]:
        """One connection for one run; everything scattered in it is released at the end."""
        if self._client is not None:
            session = _Session(
                self._client, self.settings, monotonic=self._monotonic, sleep=self._sleep
            )
            try:
                yield session
            finally:
                session.release()
            return
        try:
            from distributed import Client
            from distributed.security import Security
        except ImportError:  # pragma: no cover - the optional extra is missing
            raise MatchingError(
                "a Dask scheduler is configured but dask[distributed] is not installed: "
                "install bloomlink[dask]"
            ) from None
        security: Security | None = None
        if self.settings.tls:
            security = Security(
                tls_ca_file=str(self.settings.ca_certificate),
                tls_client_cert=str(self.settings.certificate),
                tls_client_key=str(self.settings.private_key),
                require_encryption=True,
            )
        try:
            client = Client(
                self.settings.scheduler_address,
                security=security,
                timeout=self.settings.connect_timeout_seconds,
                set_as_default=False,
            )
        except (OSError, TimeoutError) as error:
            raise MatchingError(
                f"cannot reach the Dask scheduler within {self.settings.connect_timeout_seconds:g} s "
                f"({type(error).__name__}): check its address, that it runs, and the Dask TLS files"
            ) from None
        session = _Session(client, self.settings, monotonic=self._monotonic, sleep=self._sleep)
        try:
            yield session
        finally:
            session.release()
            client.close()


class _Session:
    """A connection in use by one run: scattered inputs and the task loop."""

    def __init__(
        self,
        client: Client,
        settings: ClusterSettings,
        *,
        monotonic: Callable[[], float],
        sleep: Callable[[float], None],
    ) -> None:
        self.client = client
        self.settings = settings
        self.monotonic = monotonic
        self.sleep = sleep
        # Scattered future key -> (its future, the linkage unit's copy to scatter again).
        self._scattered: dict[str, tuple[Any, npt.NDArray[np.uint64]]] = {}

    def release(self) -> None:
        if self._scattered:
            self.client.cancel([future for future, _ in self._scattered.values()])
            self._scattered = {}

    def _held(self, array: npt.NDArray[np.uint64]) -> Any | None:
        for future, held in self._scattered.values():
            if held is array:
                return future
        return None

    def held_bytes(self, *arrays: npt.NDArray[np.uint64] | None) -> int:
        """What the workers hold for this run once ``arrays`` are there too."""
        held = {id(array): array.nbytes for _, array in self._scattered.values()}
        held.update({id(array): array.nbytes for array in arrays if array is not None})
        return sum(held.values())

    def forget(self, array: npt.NDArray[np.uint64]) -> None:
        """Let the workers drop ``array`` (no later party pair of the run needs it)."""
        future = self._held(array)
        if future is not None:
            del self._scattered[future.key]
            self.client.cancel([future])

    def workers(self) -> dict[str, dict[str, Any]]:
        info = self.client.scheduler_info(n_workers=-1)
        workers: dict[str, dict[str, Any]] = info.get("workers", {})
        return workers

    def worker_addresses(self) -> set[str]:
        """The workers the scheduler knows now (a cheap call: addresses and thread counts)."""
        return set(self.client.nthreads())

    def wait_for_workers(self, progress: ProgressCallback | None) -> int:
        deadline = self.monotonic() + self.settings.timeout_seconds
        while True:
            count = len(self.workers())
            if count:
                return count
            if progress is not None:
                progress("compare (waiting for Dask workers)", 0, 1)
            if self.monotonic() >= deadline:
                raise MatchingError(
                    f"no Dask worker joined the scheduler within {self.settings.timeout_seconds:g} s"
                )
            self.sleep(0.5)

    def scatter(self, array: npt.NDArray[np.uint64]) -> Any:
        """Send one array to every worker, once per run (a party in several party pairs is
        sent once): to one worker straight from the linkage unit (not through the scheduler,
        which would hold a copy), then worker to worker."""
        held = self._held(array)
        if held is not None:
            return held
        try:
            future = self.client.scatter(
                array,
                broadcast=True,
                hash=False,
                direct=True,
                timeout=self.settings.connect_timeout_seconds,
            )
        except (OSError, TimeoutError) as error:
            raise MatchingError(
                f"could not send the CLKs to the Dask workers within "
                f"{self.settings.connect_timeout_seconds:g} s ({type(error).__name__}): "
                "check that workers are running and that the linkage unit can reach them"
            ) from None
        self._scattered[future.key] = (future, array)
        return future

    def _with_live_inputs(self, argument: tuple[Any, ...]) -> tuple[Any, ...]:
        """``argument`` with every scattered input whose copies were all lost (every worker
        holding it died) scattered again from the linkage unit's copy."""
        refreshed = []
        for item in argument:
            key = getattr(item, "key", None)
            entry = self._scattered.get(key) if isinstance(key, str) else None
            if entry is not None and entry[0].status != "finished":
                del self._scattered[entry[0].key]
                logger.warning("every copy of a scattered CLK array was lost; scattering it again")
                item = self.scatter(entry[1])
            refreshed.append(item)
        return tuple(refreshed)

    def map(
        self,
        function: Callable[..., Any],
        arguments: Sequence[tuple[Any, ...]],
        *,
        stage: str,
        progress: ProgressCallback | None,
        collect: Callable[[Any], None] | None = None,
    ) -> list[Any]:
        """Run ``function(*arguments[k])`` for every k on the cluster and return the results
        in order (or, with ``collect``, hand each to it as it arrives and keep none). A failed task (error, lost worker Dask gave up on, or lost input) is
        resubmitted up to ``task_retries`` times. Lost workers and retries show in the stage
        label: ``"<stage> (lost 1 Dask worker(s), tasks rescheduled; retried 2 failed Dask
        task(s))"``."""
        total = len(arguments)
        results: list[Any] = [None] * total
        attempts = [0] * total
        current = list(arguments)
        changed = threading.Event()

        def submit(argument: tuple[Any, ...]) -> Any:
            future = self.client.submit(function, *argument, pure=False)
            future.add_done_callback(lambda _: changed.set())
            return future

        futures = {submit(argument): k for k, argument in enumerate(current)}
        deadline = self.monotonic() + self.settings.timeout_seconds
        done_count = 0
        retries = 0
        lost_workers = 0
        known_workers = self.worker_addresses()
        next_worker_check = self.monotonic() + 1.0

        def label() -> str:
            notes = []
            if lost_workers:
                notes.append(f"lost {lost_workers} Dask worker(s), tasks rescheduled")
            if retries:
                notes.append(f"retried {retries} failed Dask task(s)")
            return f"{stage} ({'; '.join(notes)})" if notes else stage

        def check_workers() -> None:
            nonlocal known_workers, lost_workers
            now_known = self.worker_addresses()
            gone = len(known_workers - now_known)
            if gone:
                lost_workers += gone
                logger.warning(
                    "%s: lost %d Dask worker(s); the scheduler reschedules their tasks", stage, gone
                )
            known_workers = now_known

        try:
            while futures:
                remaining = deadline - self.monotonic()
                if remaining <= 0:
                    raise MatchingError(
                        f"{stage}: {len(futures)} of {total} Dask tasks unfinished after "
                        f"{self.settings.timeout_seconds:g} s; check the cluster's workers and "
                        "memory, or raise the Dask timeout"
                    )
                changed.wait(min(1.0, remaining))
                changed.clear()
                if self.monotonic() >= next_worker_check:
                    check_workers()
                    next_worker_check = self.monotonic() + 1.0
                for future in [future for future in futures if future.done()]:
                    k = futures.pop(future)
                    if future.status == "finished":
                        if collect is None:
                            results[k] = future.result()
                        else:
                            collect(future.result())
                        future.release()  # the worker may drop its copy now
                        done_count += 1
                        continue
                    # "error", or "cancelled"/"lost" when an input's every copy was lost.
                    reason = (
                        type(future.exception()).__name__
                        if future.status == "error"
                        else f"input lost ({future.status})"
                    )
                    attempts[k] += 1
                    if attempts[k] > self.settings.task_retries:
                        raise TaskFailure(
                            f"{stage}: Dask task {k + 1} of {total} failed {attempts[k]} times "
                            f"(last: {reason}); see the Dask worker logs"
                        ) from None
                    retries += 1
                    logger.warning(
                        "%s: Dask task %d of %d failed (%s); retrying", stage, k + 1, total, reason
                    )
                    if progress is not None:
                        progress(label(), done_count, total)
                    current[k] = self._with_live_inputs(current[k])
                    futures[submit(current[k])] = k
                if progress is not None:
                    progress(label(), done_count, total)
            previous = lost_workers
            check_workers()  # a loss in the last second still shows
            if progress is not None and lost_workers != previous:
                progress(label(), done_count, total)
        finally:
            if futures:
                self.client.cancel(list(futures))
        return results


def _plain_compare_on_cluster(
    session: _Session,
    left: npt.NDArray[np.uint64],
    right: npt.NDArray[np.uint64] | None,
    threshold: float,
    mode: BlockingMode,
    settings: CompareSettings,
    progress: ProgressCallback | None,
    stage: str,
) -> tuple[CandidatePairs, CompareStatistics]:
    """One party pair compared without group blocking, in ``mode``: as
    ``blocking.generate_candidates`` in process (its shape from the same
    ``blocking_settings_for``), as cluster tasks."""
    shape = (
        blocking_settings_for(left, right, threshold, settings.blocking_settings)
        if uses_lsh(mode, len(left), None if right is None else len(right))
        else None
    )
    return compare_on_cluster(
        session, left, right, threshold, use_lsh=shape is not None,
        blocking=shape or settings.blocking_settings, seed=settings.seed,
        max_pairs=settings.max_pairs, progress=progress, stage=stage,
    )  # fmt: skip


def _group_compare_on_cluster(
    session: _Session,
    left: npt.NDArray[np.uint64],
    right: npt.NDArray[np.uint64] | None,
    threshold: float,
    grouped: tuple[GroupBlockingSettings, tuple[int, ...]],
    settings: CompareSettings,
    progress: ProgressCallback | None,
    stage: str,
    *,
    rule: JoinRule | None = None,
) -> tuple[CandidatePairs, CompareStatistics]:
    """Group blocking with its bands on the cluster, along the route the in-process compare
    takes (``group_blocking.route_group_blocking``: the join, a sort per group, and its
    recall check run at the linkage unit): the LSH part as :func:`compare_on_cluster` tasks
    and the union the in-process one (``group_blocking.merge_candidates``), so the pairs are
    the same; or the party pair compared without group blocking, on the cluster."""
    group_settings, offsets = grouped
    route = route_group_blocking(
        left, right, threshold, offsets=offsets, settings=group_settings,
        blocking=settings.blocking_settings, seed=settings.seed, rule=rule,
        workers=settings.workers, max_pairs=settings.max_pairs,
    )  # fmt: skip
    if isinstance(route, FallbackRoute):
        pairs, statistics = _plain_compare_on_cluster(
            session, left, right, threshold, route.mode, settings, progress, stage
        )
        if route.recall_estimate is None:
            return pairs, statistics
        return pairs, replace(statistics, group_recall_estimates=(route.recall_estimate,))
    joined = route.joined
    lsh, statistics = compare_on_cluster(
        session, left, right, threshold, use_lsh=True, blocking=route.shape,
        seed=settings.seed, max_pairs=settings.max_pairs, progress=progress, stage=stage,
    )  # fmt: skip
    pairs = merge_candidates(
        joined, lsh, len(left) if right is None else len(right),
        max_pairs=settings.max_pairs, threshold=threshold,
    )  # fmt: skip
    return pairs, replace(
        statistics,
        comparisons=pairs.comparisons,
        group_recall_estimates=(route.recall_estimate,),
        group_lsh_thresholds=(route.lsh_threshold,),
        group_block_pairs=joined.plan.block_pairs,
        oversized_group_blocks=joined.plan.oversized_blocks,
        oversized_group_block_pairs=joined.plan.oversized_pairs,
    )


def compare_on_cluster(
    session: _Session,
    left: npt.NDArray[np.uint64],
    right: npt.NDArray[np.uint64] | None,
    threshold: float,
    *,
    use_lsh: bool,
    blocking: BlockingSettings,
    seed: int,
    max_pairs: int,
    progress: ProgressCallback | None,
    stage: str = "compare",
) -> tuple[CandidatePairs, CompareStatistics]:
    """The compare of one party pair (or one party with itself) as cluster tasks; returns the
    same candidate pairs (and work counts) as the in-process path with the same settings and
    seed."""
    n_left = len(left)
    n_right = n_left if right is None else len(right)
    if n_left == 0 or n_right == 0:
        return CandidatePairs.empty(), CompareStatistics()
    session.wait_for_workers(progress)
    nthreads = session.client.nthreads()
    # A worker runs one task per thread at once; each holds one band's working set while it
    # compares and its bands' plans (block boundaries) for the whole task.
    threads = max(nthreads.values(), default=1)
    parts = max(1, sum(nthreads.values())) * session.settings.tasks_per_thread
    records = n_left + n_right
    clk_bytes = session.held_bytes(left, right)  # every party the workers hold for the run
    band_count = blocking.bands if use_lsh else 1
    bands_per_task = -(-band_count // parts)

    def need(bands_in_task: int) -> int:
        per_thread = _BAND_BYTES_PER_RECORD * records + _GATHER_BYTES
        if use_lsh:
            per_thread += _PLAN_BYTES_PER_RECORD * records * bands_in_task
        return clk_bytes + threads * per_thread

    budget = session.settings.worker_memory_bytes
    while bands_per_task > 1 and need(bands_per_task) > budget:
        bands_per_task -= 1
    if need(bands_per_task) > budget:
        raise MatchingError(
            f"{stage}: each Dask worker needs about {need(bands_per_task) / 2**30:.1f} GiB (the "
            f"CLKs of the parties it holds plus one band's working set per thread, {threads} "
            f"threads) but worker_memory_bytes allows {budget / 2**30:.1f} GiB: use workers "
            "with more memory or fewer threads"
        )
    if use_lsh:
        parts = max(parts, -(-band_count // bands_per_task))
    left_future = session.scatter(left)
    right_future = None if right is None else session.scatter(right)
    union = _PairUnion(width=n_right, max_pairs=max_pairs, threshold=threshold)
    arguments: list[tuple[Any, ...]]
    if use_lsh:
        clk_bits = 64 * left.shape[1]
        positions = sample_band_positions(clk_bits, blocking, seed)
        arguments = [
            (left_future, right_future, positions[a:b], blocking, threshold, max_pairs, 1)
            for a, b in _groups(blocking.bands, parts)
        ]
        session.map(_band_task, arguments, stage=stage, progress=progress, collect=union.add)
    else:
        arguments = [
            (left_future, right_future, a, b, threshold, max_pairs, 1)
            for a, b in _groups(n_left, parts)
        ]
        session.map(_tile_task, arguments, stage=stage, progress=progress, collect=union.add)
    pairs = union.pairs()
    return pairs, CompareStatistics(
        comparisons=pairs.comparisons,
        blocked_comparisons_planned=union.block_comparisons,
        oversized_blocks_skipped=union.oversized_blocks,
        oversized_block_comparisons_skipped=union.oversized_comparisons,
        lsh_shapes=((blocking.bands, blocking.bits_per_band),) if use_lsh else (),
    )
