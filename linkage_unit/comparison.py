"""Comparison: the compare stage of a run, behind one protocol (block -> **compare** -> solve).

A :class:`Comparer` takes the run's parties and the party pairs to compare and returns, per
party pair, the candidate pairs at or above that party pair's record-level Dice threshold
(a deduplicated party's own pairs may have their own) with what finding them cost
(:class:`CompareStatistics`). :class:`LocalComparer` compares in this process
through ``blocking.generate_candidates`` (blocking owns candidate generation and calls
similarity.py to score), or, for an encoding of several field groups with group blocking
on, ``group_blocking.generate_group_candidates``; ``distributed.DaskExecutor`` does the same
on a Dask cluster. Both give
the same pairs for the same settings and seed, so the link structure never depends on where
the compare ran.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt

from linkage_unit.blocking import (
    BlockingMode,
    BlockingPlan,
    BlockingSettings,
    generate_candidates,
    uses_lsh,
)
from linkage_unit.group_blocking import (
    GroupBlockingSettings,
    GroupCandidates,
    JoinRule,
    generate_group_candidates,
)
from linkage_unit.similarity import CandidatePairs
from protocol.errors import MatchingError

__all__ = [
    "CompareSettings",
    "CompareStatistics",
    "Comparer",
    "Comparison",
    "LocalComparer",
    "ProgressCallback",
    "rules_of_jobs",
]

ProgressCallback = Callable[[str, int, int], None]
"""Called as ``progress(stage, done, total)``; counts only, never data."""


@dataclass(frozen=True, slots=True, kw_only=True)
class CompareSettings:
    """How to compare: the blocking mode and LSH shape, the linkage unit's blocking seed, the
    candidate-pair limit and the threads to use (None: every CPU this process may use).
    ``group_blocking`` with ``group_offsets`` (each field group's first word, then the total;
    two groups or more): where the mode blocks, block by group encodings plus LSH at a high
    cut (``group_blocking.py``) instead of LSH alone."""

    blocking: BlockingMode
    blocking_settings: BlockingSettings
    seed: int
    max_pairs: int
    workers: int | None = None
    group_blocking: GroupBlockingSettings | None = None
    group_offsets: tuple[int, ...] | None = None

    def group_blocking_for(
        self, left_size: int, right_size: int | None
    ) -> tuple[GroupBlockingSettings, tuple[int, ...]] | None:
        """The group blocking settings and offsets a compare of these sizes uses
        (``right_size`` None: one party with itself), or None: it does not block by group."""
        if self.group_blocking is None or self.group_offsets is None:
            return None
        if len(self.group_offsets) <= 2 or not uses_lsh(self.blocking, left_size, right_size):
            return None
        return self.group_blocking, self.group_offsets


@dataclass(frozen=True, slots=True, kw_only=True)
class CompareStatistics:
    """What a compare cost: pairs scored, and with LSH the planned block comparisons and what
    oversized blocks skipped (nothing is dropped silently)."""

    comparisons: int = 0
    blocked_comparisons_planned: int = 0
    oversized_blocks_skipped: int = 0
    oversized_block_comparisons_skipped: int = 0
    lsh_shapes: tuple[tuple[int, int], ...] = ()
    """(bands, bits per band) of each party pair compared with LSH, in job order (the shape
    fitted to that pair's data, or the fixed one)."""
    group_lsh_thresholds: tuple[float, ...] = ()
    """With group blocking, the record-level Dice each party pair's LSH part was fitted to,
    in job order (its shape is in ``lsh_shapes``), for the party pairs that used it."""
    group_recall_estimates: tuple[float, ...] = ()
    """With group blocking, each party pair's blocking recall as checked on a sample before
    the join was used (below the target recall the pair was compared without it)."""
    group_block_pairs: int = 0
    oversized_group_blocks: int = 0
    oversized_group_block_pairs: int = 0
    """Group blocking: pairs in the compared group blocks (summed over groups), and the
    blocks skipped as larger than ``max_group_block_pairs`` with their pairs."""

    def __add__(self, other: CompareStatistics) -> CompareStatistics:
        return CompareStatistics(
            comparisons=self.comparisons + other.comparisons,
            blocked_comparisons_planned=self.blocked_comparisons_planned
            + other.blocked_comparisons_planned,
            oversized_blocks_skipped=self.oversized_blocks_skipped + other.oversized_blocks_skipped,
            oversized_block_comparisons_skipped=self.oversized_block_comparisons_skipped
            + other.oversized_block_comparisons_skipped,
            lsh_shapes=self.lsh_shapes + other.lsh_shapes,
            group_lsh_thresholds=self.group_lsh_thresholds + other.group_lsh_thresholds,
            group_recall_estimates=self.group_recall_estimates + other.group_recall_estimates,
            group_block_pairs=self.group_block_pairs + other.group_block_pairs,
            oversized_group_blocks=self.oversized_group_blocks + other.oversized_group_blocks,
            oversized_group_block_pairs=self.oversized_group_block_pairs
            + other.oversized_group_block_pairs,
        )

    @classmethod
    def of(cls, pairs: CandidatePairs, plan: BlockingPlan | None) -> CompareStatistics:
        if plan is None:
            return cls(comparisons=pairs.comparisons)
        return cls(
            comparisons=pairs.comparisons,
            blocked_comparisons_planned=plan.block_comparisons,
            oversized_blocks_skipped=plan.oversized_blocks,
            oversized_block_comparisons_skipped=plan.oversized_comparisons,
            lsh_shapes=((plan.bands, plan.bits_per_band),),
        )

    @classmethod
    def of_groups(cls, result: GroupCandidates) -> CompareStatistics:
        """The figures of one party pair's group blocking (or of the compare it fell back to)."""
        join = result.join
        return cls.of(result.pairs, result.plan) + cls(
            group_recall_estimates=()
            if result.recall_estimate is None
            else (result.recall_estimate,),
            group_lsh_thresholds=() if result.lsh_threshold is None else (result.lsh_threshold,),
            group_block_pairs=0 if join is None else join.block_pairs,
            oversized_group_blocks=0 if join is None else join.oversized_blocks,
            oversized_group_block_pairs=0 if join is None else join.oversized_pairs,
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class Comparison:
    """The candidate pairs of one party pair (``left_party == right_party``: one party with
    itself, pairs with left < right)."""

    left_party: int
    right_party: int
    pairs: CandidatePairs
    statistics: CompareStatistics


def rules_of_jobs(join_rules: Sequence[JoinRule | None], jobs: int) -> list[JoinRule | None]:
    """One join rule (or None) per job: ``join_rules`` as given, or None for every job."""
    if not join_rules:
        return [None] * jobs
    if len(join_rules) != jobs:
        raise MatchingError("one join rule (or None) per party pair is needed")
    return list(join_rules)


class Comparer(Protocol):
    """Runs the compare stage of one run."""

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
        """Candidate pairs at or above ``thresholds[k]`` for each (left, right) party pair
        ``jobs[k]`` (indices into ``arrays``), in job order. ``join_rules[k]``: how group
        blocking's join judges that party pair's pairs (``group_blocking.JoinRule``; empty or
        None: by the threshold, as every other compare)."""
        ...


class LocalComparer:
    """The compare stage in this process, on a thread pool."""

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
        rules = rules_of_jobs(join_rules, len(jobs))
        results = []
        for number, ((i, j), threshold) in enumerate(zip(jobs, thresholds, strict=True)):
            if progress is not None:
                progress("compare", number, len(jobs))
            right = None if i == j else arrays[j]
            grouped = settings.group_blocking_for(
                len(arrays[i]), None if right is None else len(right)
            )
            if grouped is not None:
                group_blocking, offsets = grouped
                result = generate_group_candidates(
                    arrays[i],
                    right,
                    threshold,
                    offsets=offsets,
                    settings=group_blocking,
                    blocking=settings.blocking_settings,
                    seed=settings.seed,
                    rule=rules[number],
                    workers=settings.workers,
                    max_pairs=settings.max_pairs,
                )
                pairs, statistics = result.pairs, CompareStatistics.of_groups(result)
            else:
                pairs, plan = generate_candidates(
                    arrays[i],
                    right,
                    threshold,
                    mode=settings.blocking,
                    settings=settings.blocking_settings,
                    seed=settings.seed,
                    workers=settings.workers,
                    max_pairs=settings.max_pairs,
                )
                statistics = CompareStatistics.of(pairs, plan)
            results.append(
                Comparison(left_party=i, right_party=j, pairs=pairs, statistics=statistics)
            )
        if progress is not None:
            progress("compare", len(jobs), len(jobs))
        return tuple(results)
