"""Group blocking: candidate generation for encodings of several field groups
(**block** -> compare -> score -> solve), an alternative to record-level LSH alone.

Under the shipped schema (three diffused groups) the model's record-level candidate cut sits
where a random pair passes about ten times a record; at 1M x 1M that is Dice 0.695, which is
where pairs sharing a whole field group sit, and an LSH shape that keeps recall 0.999 there
costs about 1e11 comparisons (docs/benchmarks.md). Nearly every pair above that cut shares an
identical group encoding, and the linkage unit can see which records do without learning a
value (the same fact term frequencies already use). So the candidates here are:

1. among pairs of records whose encodings of at least one field group are identical and not
   empty (a sort-based join per group), those at or above the run's record-level cut, or,
   in a model run, those its :class:`JoinRule` keeps: Dice over the groups both records
   hold, each weighed by how rare agreeing on it is, cut at the same random-pair pass rate
   (at 1M x 1M it holds 0.9927 of the true matches where the record-level cut held 0.9841).
   A block (one encoding, its records on each side) of more than ``max_group_block_pairs``
   pairs is a degenerate encoding many records share; it is skipped and counted
   (:class:`GroupJoinPlan`), never dropped silently;
2. the pairs at or above the record-level cut that record-level LSH (``blocking.py``, its
   shape fitted to ``lsh_threshold``, Dice 0.9 by default) finds, which catch the matches
   whose every group differs a little.

A pair of several identical groups is scored once, from its first group whose block was
compared; the LSH part skips the pairs the join compared (:func:`lsh_beyond_join`, whose twin
is ``BlockingIndex``). Each pair's score is the record-level Dice of ``similarity.py``'s
integer rule, so a pair found here has the score the exhaustive compare gives it.

What is lost against comparing every pair depends on the cut: nearly nothing above the Dice
of pairs sharing a whole group, much below it. So the join's recall is measured on a sample
before it is used (:func:`estimate_recall`): below ``min_recall``, or below the blocking
target (``BlockingSettings.target_recall``) where the compare without group blocking is
affordable (:func:`falls_back`), the party pair is compared as without it. So group blocking changes a
run only where the join meets the target, or where the alternative would take hours (1M x
1M). The estimate goes into the run's report;
``benchmarks/end_to_end.py`` measures the blocking recall again on its own sample.

Group encodings are joined by a 64-bit hash of their words: a collision could only add a
pair to compare (which the Dice cut then judges), never hide one, since identical encodings
always hash alike. :func:`group_join_reference` is the slow obvious twin of the join, on the
encodings themselves. Nothing here sees a value or a secret.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numba
import numpy as np
import numpy.typing as npt

from linkage_unit.blocking import (
    BLOCK_COMPARISONS_PER_SECOND,
    BlockingMode,
    BlockingPlan,
    BlockingSettings,
    _build_band,
    _keys,
    blocking_cost,
    blocking_settings_for,
    generate_candidates,
    sample_band_positions,
)
from linkage_unit.similarity import (
    DEFAULT_MAX_CANDIDATE_PAIRS,
    CandidatePairs,
    _popcount,
    _scores,
    candidate_pairs,
    check_clks,
    check_threshold,
    default_workers,
    group_bit_counts,
    group_counts,
    popcounts,
    required_shared,
)
from protocol.errors import MatchingError

__all__ = [
    "DEFAULT_GROUP_LSH_THRESHOLD",
    "DEFAULT_MAX_GROUP_BLOCK_PAIRS",
    "FallbackRoute",
    "GroupBlockingSettings",
    "GroupCandidates",
    "GroupJoin",
    "GroupJoinPlan",
    "GroupKeys",
    "GroupRoute",
    "JoinRoute",
    "JoinRule",
    "estimate_recall",
    "falls_back",
    "generate_group_candidates",
    "group_join",
    "group_join_reference",
    "group_keys",
    "lsh_beyond_join",
    "merge_candidates",
    "merge_candidates_reference",
    "route_group_blocking",
]

DEFAULT_GROUP_LSH_THRESHOLD = 0.9
DEFAULT_MAX_GROUP_BLOCK_PAIRS = 1_000_000

LSH_RECORD_COST = 0.5
LSH_MAX_BITS_PER_BAND = 20
"""The LSH part's shape (:func:`lsh_beyond_join`) is fitted with these: its blocks are
compared where the records lie, a pair costing a few cache misses (about 100-250 ns at 1M x
1M, AMD EPYC Zen 4, 2 shared cores), while a record's key and place in its band cost about
60 ns, so a band is worth about half a comparison a record (``BlockingIndex``'s gathered
blocks make comparisons cheap and records dear: 8); and keys of up to 20 bits are grouped by
a counting sort, wider ones by an argsort several times slower. At 1M x 1M and Dice 0.9 the
shape went from 44 x 18 (1.9e8 block comparisons) to SHAPE_FILL."""

_CHUNK_PAIRS = 1 << 22
"""Block pairs a thread compares into one output buffer (at most 20 bytes each)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class GroupBlockingSettings:
    """``lsh_threshold``: the record-level Dice the LSH part is fitted to (the run's cut when
    that is higher). ``max_group_block_pairs``: a group block with more pairs is skipped."""

    lsh_threshold: float = DEFAULT_GROUP_LSH_THRESHOLD
    max_group_block_pairs: int = DEFAULT_MAX_GROUP_BLOCK_PAIRS
    recall_sample: int = 1000
    """Left records whose pairs with every right record check the join's recall before it
    is used (:func:`estimate_recall`): 1e9 comparisons at 1M x 1M, 2-9 s on 2 shared cores."""
    min_recall: float = 0.99
    """Below this measured recall the party pair is always compared without group blocking:
    a cut where the join is plainly the wrong tool (200k x 200k: 0.56, recall 0.36). Below
    the blocking target (``BlockingSettings.target_recall``, the operator's
    ``lsh_target_recall``, 0.999) it is too, wherever that costs at most
    ``max_fallback_cost``. At 1M x 1M under the shipped schema the model's cut falls at Dice
    0.69-0.695, where the join holds 0.998-0.999 of the pairs, and the compare without it
    would be LSH fitted to that cut, about 1.1e11 comparisons (hours): there the join is
    used. The measured recall is in the run's report either way."""
    max_fallback_cost: float = 2e10
    """Block comparisons (``blocking.LshShape.cost``) the compare without group blocking may
    cost for a join short of the blocking target to be set aside: every pair of 200k x 200k
    is 8e9 (about two minutes on 2 cores), LSH fitted to 1M x 1M's cut 1.1e11."""

    def __post_init__(self) -> None:
        if not (0.0 < self.lsh_threshold <= 1.0):
            raise MatchingError("group_lsh_threshold must be in (0, 1]")
        if self.max_group_block_pairs < 1:
            raise MatchingError("max_group_block_pairs must be >= 1")
        if self.recall_sample < 1:
            raise MatchingError("the group blocking recall sample must be >= 1 record")
        if not (0.0 <= self.min_recall <= 1.0):
            raise MatchingError("the group blocking min_recall must be in [0, 1]")
        if self.max_fallback_cost < 0:
            raise MatchingError("max_fallback_cost must be >= 0")


@dataclass(frozen=True, slots=True, kw_only=True)
class JoinRule:
    """How the join judges the pairs it finds, instead of the record-level Dice cut.

    A pair's score is Dice over the groups both records hold, each group's bits weighed by
    ``weights`` (the scorer's: how rare an identical encoding of the group is among random
    pairs, ``-ln`` of its rate, as a Fellegi-Sunter agreement weight is): ``2 * sum(w * shared)
    / sum(w * (left + right))`` over the groups present on both sides, kept at or above
    ``cut``. A group missing on one side is no evidence either way, but the record-level
    Dice counts its bits against the pair; and agreeing on a common encoding (the same year
    and sex) says less than on a rare one (the same postcode). On the 1M x 1M synth files,
    at the same random-pair pass rate (ten a record), this rule keeps 0.9927 of the true
    matches against the record-level cut's 0.9841 (docs/benchmarks.md).

    The sums run over the groups in order, in float64, and a pair passes when
    ``2 * numerator >= cut * denominator`` (and the denominator is positive): the kernel,
    :meth:`scores`' callers and :func:`group_join_reference` do the same operations in the
    same order, so they agree to the last bit."""

    weights: tuple[float, ...]
    cut: float

    def __post_init__(self) -> None:
        if len(self.weights) < 2:
            raise MatchingError("a join rule needs a weight for each of two groups or more")
        if not all(np.isfinite(w) and w > 0 for w in self.weights):
            raise MatchingError("join rule weights must be finite and > 0")
        check_threshold(self.cut)

    def terms(
        self,
        shared: npt.NDArray[np.integer[Any]],
        left_counts: npt.NDArray[np.integer[Any]],
        right_counts: npt.NDArray[np.integer[Any]],
    ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
        """Per pair (rows of ``(pairs, groups)`` counts): the rule's numerator and
        denominator, summed group by group in order."""
        if shared.ndim != 2 or shared.shape[1] != len(self.weights):
            raise MatchingError("the join rule has a weight per group; the counts do not match")
        numerator = np.empty(len(shared))
        denominator = np.empty(len(shared))
        _rule_terms(
            shared, left_counts, right_counts, np.asarray(self.weights, np.float64),
            numerator, denominator,
        )  # fmt: skip
        return numerator, denominator

    def scores(
        self,
        shared: npt.NDArray[np.integer[Any]],
        left_counts: npt.NDArray[np.integer[Any]],
        right_counts: npt.NDArray[np.integer[Any]],
    ) -> npt.NDArray[np.float64]:
        """The rule's score of each pair (0 where the two records share no present group)."""
        numerator, denominator = self.terms(shared, left_counts, right_counts)
        return np.divide(
            2.0 * numerator, denominator, out=np.zeros(len(shared)), where=denominator > 0
        )

    def keeps(
        self,
        shared: npt.NDArray[np.integer[Any]],
        left_counts: npt.NDArray[np.integer[Any]],
        right_counts: npt.NDArray[np.integer[Any]],
    ) -> npt.NDArray[np.bool_]:
        """Which pairs the rule keeps."""
        numerator, denominator = self.terms(shared, left_counts, right_counts)
        result: npt.NDArray[np.bool_] = (denominator > 0) & (
            2.0 * numerator >= self.cut * denominator
        )
        return result


@numba.njit(nogil=True, cache=True)
def _rule_terms(  # pragma: no cover - compiled
    shared: npt.NDArray[np.integer[Any]],
    left_counts: npt.NDArray[np.integer[Any]],
    right_counts: npt.NDArray[np.integer[Any]],
    weights: npt.NDArray[np.float64],
    numerator: npt.NDArray[np.float64],
    denominator: npt.NDArray[np.float64],
) -> None:
    """:meth:`JoinRule.terms` a pair at a time, as :func:`_join_blocks` sums them (numpy's
    column-by-column version cost 1.2 s on the 10M random pairs of a 1M x 1M run)."""
    for k in range(shared.shape[0]):
        top = 0.0
        bottom = 0.0
        for g in range(weights.shape[0]):
            top += weights[g] * np.float64(shared[k, g])
            left_bits = np.int64(left_counts[k, g])
            right_bits = np.int64(right_counts[k, g])
            if left_bits > 0 and right_bits > 0:
                bottom += weights[g] * np.float64(left_bits + right_bits)
        numerator[k] = top
        denominator[k] = bottom


@dataclass(frozen=True, slots=True, kw_only=True)
class GroupJoinPlan:
    """What the join compared and skipped: ``block_pairs`` pairs in compared blocks summed
    over groups (a pair of two identical groups counts twice, is scored once),
    ``oversized_blocks`` blocks of more than ``max_group_block_pairs`` pairs and their
    ``oversized_pairs`` (not compared by the join; LSH may still find them)."""

    block_pairs: int
    oversized_blocks: int
    oversized_pairs: int


@dataclass(frozen=True, slots=True, kw_only=True)
class GroupKeys:
    """Per record and group (``(records, groups)``): the 64-bit hash of its encoding, and
    whether its block was compared (``active``: not empty, on both sides, not oversized).
    ``right`` is ``left`` within one party."""

    left_hashes: npt.NDArray[np.uint64]
    right_hashes: npt.NDArray[np.uint64]
    left_active: npt.NDArray[np.bool_]
    right_active: npt.NDArray[np.bool_]

    def joined(
        self, left: npt.NDArray[np.int64], right: npt.NDArray[np.int64]
    ) -> npt.NDArray[np.bool_]:
        """Which of these pairs the join compared (some group of theirs was)."""
        found = np.zeros(len(left), bool)
        for g in range(self.left_hashes.shape[1]):
            found |= (
                self.left_active[left, g]
                & self.right_active[right, g]
                & (self.left_hashes[left, g] == self.right_hashes[right, g])
            )
        return found


@dataclass(frozen=True, slots=True, kw_only=True)
class GroupJoin:
    """The join's pairs at or above the cut (sorted by (left, right)), its plan and keys."""

    pairs: CandidatePairs
    plan: GroupJoinPlan
    keys: GroupKeys


@numba.njit(nogil=True, cache=True)
def _hash_groups(  # pragma: no cover - compiled
    clks: npt.NDArray[np.uint64], offsets: npt.NDArray[np.int64], out: npt.NDArray[np.uint64]
) -> npt.NDArray[np.bool_]:
    """``out[r, g]``: a hash of record r's group g words; returns where the group has bits."""
    groups = offsets.shape[0] - 1
    present = np.zeros((clks.shape[0], groups), np.bool_)
    multiplier = np.uint64(0x9E3779B97F4A7C15)
    for record in range(clks.shape[0]):
        for g in range(groups):
            value = np.uint64(0)
            bits = np.uint64(0)
            for w in range(offsets[g], offsets[g + 1]):
                word = clks[record, w]
                bits |= word
                value = (value ^ word) * multiplier
                value ^= value >> np.uint64(29)
            out[record, g] = value
            present[record, g] = bits != np.uint64(0)
    return present


def _check_offsets(offsets: tuple[int, ...], words: int) -> npt.NDArray[np.int64]:
    array = np.asarray(offsets, dtype=np.int64)
    if (
        array.ndim != 1
        or len(array) < 2
        or array[0] != 0
        or array[-1] != words
        or np.any(np.diff(array) < 1)
    ):
        raise MatchingError(
            "group word offsets must start at 0, increase and end at the CLK's word count"
        )
    return array


def group_keys_of(
    clks: npt.NDArray[np.uint64], offsets: tuple[int, ...]
) -> tuple[npt.NDArray[np.uint64], npt.NDArray[np.bool_]]:
    """``(hashes, present)``, both ``(records, groups)``: each group's hash and whether it
    has any bit set."""
    array = _check_offsets(offsets, clks.shape[1])
    hashes = np.empty((clks.shape[0], len(array) - 1), np.uint64)
    if clks.shape[0] == 0:
        return hashes, np.zeros(hashes.shape, bool)
    return hashes, _hash_groups(clks, array, hashes)


def group_keys(
    left: npt.NDArray[np.uint64], right: npt.NDArray[np.uint64] | None, offsets: tuple[int, ...]
) -> GroupKeys:
    """Every record's group hashes, with no block marked compared yet (see :func:`group_join`)."""
    left_hashes, left_present = group_keys_of(left, offsets)
    if right is None:
        return GroupKeys(
            left_hashes=left_hashes,
            right_hashes=left_hashes,
            left_active=left_present,
            right_active=left_present,
        )
    right_hashes, right_present = group_keys_of(right, offsets)
    return GroupKeys(
        left_hashes=left_hashes,
        right_hashes=right_hashes,
        left_active=left_present,
        right_active=right_present,
    )


@numba.njit(nogil=True, cache=True)
def _join_blocks(  # pragma: no cover - compiled
    left: npt.NDArray[np.uint64],
    right: npt.NDArray[np.uint64],
    left_counts: npt.NDArray[np.int32],
    right_counts: npt.NDArray[np.int32],
    required: npt.NDArray[np.int32],
    word_offsets: npt.NDArray[np.int64],
    weights: npt.NDArray[np.float64] | None,
    cut: float,
    left_group_counts: npt.NDArray[np.int32],
    right_group_counts: npt.NDArray[np.int32],
    left_hashes: npt.NDArray[np.uint64],
    right_hashes: npt.NDArray[np.uint64],
    left_active: npt.NDArray[np.bool_],
    right_active: npt.NDArray[np.bool_],
    group: int,
    left_members: npt.NDArray[np.int64],
    left_starts: npt.NDArray[np.int64],
    left_stops: npt.NDArray[np.int64],
    right_members: npt.NDArray[np.int64],
    right_starts: npt.NDArray[np.int64],
    right_stops: npt.NDArray[np.int64],
    within: bool,
    out_rows: npt.NDArray[np.int64],
    out_cols: npt.NDArray[np.int64],
    out_shared: npt.NDArray[np.int32],
) -> tuple[int, int]:
    """Every pair of each block (within one party: each unordered pair once), skipping a pair
    an earlier group's compared block holds; keeps those at or above ``required``, or, with
    ``weights``, those :class:`JoinRule` ``(weights, cut)`` keeps (its sums in the same order;
    groups by ``word_offsets``, their counts per record in ``*_group_counts``). Returns
    (kept, compared); the buffers hold at least the blocks' pairs. ``weights`` None is typed
    apart: numba prunes the rule's branch from that compile, so the record-level loop stays
    as it was (one kernel with both branches was about 10 % slower at it)."""
    words = left.shape[1]
    kept = 0
    compared = 0
    for block in range(left_starts.shape[0]):
        for a in range(left_starts[block], left_stops[block]):
            row = left_members[a]
            first = a + 1 if within else right_starts[block]
            for b in range(first, right_stops[block]):
                col = right_members[b]
                earlier = False
                for h in range(group):
                    if (
                        left_active[row, h]
                        and right_active[col, h]
                        and left_hashes[row, h] == right_hashes[col, h]
                    ):
                        earlier = True
                        break
                if earlier:
                    continue
                compared += 1
                shared = np.uint64(0)
                if weights is not None:
                    numerator = 0.0
                    denominator = 0.0
                    for g in range(weights.shape[0]):
                        part = np.uint64(0)
                        for w in range(word_offsets[g], word_offsets[g + 1]):
                            part += _popcount(left[row, w] & right[col, w])
                        shared += part
                        numerator += weights[g] * np.float64(part)
                        left_bits = np.int64(left_group_counts[row, g])
                        right_bits = np.int64(right_group_counts[col, g])
                        if left_bits > 0 and right_bits > 0:
                            denominator += weights[g] * np.float64(left_bits + right_bits)
                    keep = denominator > 0.0 and 2.0 * numerator >= cut * denominator
                else:
                    for w in range(words):
                        shared += _popcount(left[row, w] & right[col, w])
                    keep = bool(shared >= np.uint64(required[left_counts[row] + right_counts[col]]))
                if keep:
                    if within and col < row:
                        out_rows[kept] = col
                        out_cols[kept] = row
                    else:
                        out_rows[kept] = row
                        out_cols[kept] = col
                    out_shared[kept] = np.int32(shared)
                    kept += 1
    return kept, compared


_NO_OFFSETS = np.zeros(1, np.int64)
_NO_COUNTS = np.empty((0, 0), np.int32)
"""What :func:`_join_blocks` gets where no :class:`JoinRule` applies (the record-level cut)."""


@dataclass(frozen=True, slots=True)
class _GroupBlocks:
    left_members: npt.NDArray[np.int64]
    left_starts: npt.NDArray[np.int64]
    left_stops: npt.NDArray[np.int64]
    right_members: npt.NDArray[np.int64]
    right_starts: npt.NDArray[np.int64]
    right_stops: npt.NDArray[np.int64]
    sizes: npt.NDArray[np.int64]


def _sorted_runs(
    hashes: npt.NDArray[np.uint64], present: npt.NDArray[np.bool_]
) -> tuple[
    npt.NDArray[np.int64], npt.NDArray[np.uint64], npt.NDArray[np.int64], npt.NDArray[np.int64]
]:
    """(members by hash, distinct hashes, their starts and counts) of the non-empty records."""
    records = np.flatnonzero(present).astype(np.int64)
    order = records[np.argsort(hashes[records], kind="stable")]
    ordered = hashes[order]
    if len(ordered) == 0:
        empty = np.empty(0, np.int64)
        return order, np.empty(0, np.uint64), empty, empty
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]]).astype(np.int64)
    counts = np.diff(np.r_[starts, len(ordered)]).astype(np.int64)
    return order, ordered[starts], starts, counts


def _blocks(keys: GroupKeys, group: int, within: bool, cap: int) -> tuple[_GroupBlocks, int, int]:
    """One group's compared blocks, and the oversized ones' count and pairs; marks the
    records of blocks not compared inactive in ``keys`` for this group."""
    left_order, left_unique, left_starts, left_counts = _sorted_runs(
        keys.left_hashes[:, group], keys.left_active[:, group]
    )
    if within:
        keep = left_counts >= 2
        unique = left_unique[keep]
        left_starts, left_counts = left_starts[keep], left_counts[keep]
        right_order, right_starts, right_counts = left_order, left_starts, left_counts
        sizes = left_counts * (left_counts - 1) // 2
    else:
        right_order, right_unique, right_starts_all, right_counts_all = _sorted_runs(
            keys.right_hashes[:, group], keys.right_active[:, group]
        )
        unique, left_index, right_index = np.intersect1d(
            left_unique, right_unique, assume_unique=True, return_indices=True
        )
        left_starts, left_counts = left_starts[left_index], left_counts[left_index]
        right_starts = right_starts_all[right_index]
        right_counts = right_counts_all[right_index]
        sizes = left_counts * right_counts
    oversized = sizes > cap
    compared = unique[~oversized]
    # A record is active in this group only if its block is compared: the join's rule for
    # scoring a pair once (its first compared group) and the merge's for the LSH pairs.
    for hashes, active in (
        (keys.left_hashes, keys.left_active),
        (keys.right_hashes, keys.right_active),
    ):
        column = hashes[:, group]
        position = np.minimum(np.searchsorted(compared, column), max(len(compared) - 1, 0))
        hit = (compared[position] == column) if len(compared) else np.zeros(len(column), bool)
        active[:, group] &= hit
        if within:
            break
    keep = ~oversized
    blocks = _GroupBlocks(
        left_members=left_order,
        left_starts=left_starts[keep],
        left_stops=left_starts[keep] + left_counts[keep],
        right_members=right_order,
        right_starts=right_starts[keep],
        right_stops=right_starts[keep] + right_counts[keep],
        sizes=sizes[keep],
    )
    return blocks, int(oversized.sum()), int(sizes[oversized].sum())


def _chunks(sizes: npt.NDArray[np.int64]) -> list[tuple[int, int]]:
    """Runs of consecutive blocks of at most ``_CHUNK_PAIRS`` pairs (a larger block alone)."""
    if len(sizes) == 0:
        return []
    ends = np.cumsum(sizes)
    out, start, base = [], 0, 0
    while start < len(sizes):
        stop = int(np.searchsorted(ends, base + _CHUNK_PAIRS, "right"))
        stop = max(stop, start + 1)
        out.append((start, stop))
        base = int(ends[stop - 1])
        start = stop
    return out


def group_join(
    left: npt.NDArray[np.uint64],
    right: npt.NDArray[np.uint64] | None,
    offsets: tuple[int, ...],
    threshold: float,
    *,
    rule: JoinRule | None = None,
    max_group_block_pairs: int = DEFAULT_MAX_GROUP_BLOCK_PAIRS,
    workers: int | None = None,
) -> GroupJoin:
    """The pairs at or above ``threshold`` (record-level Dice), or that ``rule`` keeps, among
    those sharing an identical non-empty encoding of some group (``offsets``: each group's
    first word, then the total), blocks of more than ``max_group_block_pairs`` pairs skipped;
    ``right`` None: one party with itself (pairs left < right). The pairs' scores are their
    record-level Dice either way."""
    threshold = check_threshold(threshold)
    if max_group_block_pairs < 1:
        raise MatchingError("max_group_block_pairs must be >= 1")
    left = check_clks(left, name="left")
    within = right is None
    other = left if right is None else check_clks(right, name="right")
    if len(left) and len(other) and left.shape[1] != other.shape[1]:
        raise MatchingError("the two sides' CLKs have different lengths; they cannot be compared")
    keys = group_keys(left, None if within else other, offsets)
    groups = keys.left_hashes.shape[1]
    workers = default_workers() if workers is None else workers
    required = required_shared(threshold, 64 * left.shape[1])
    left_counts = popcounts(left)
    right_counts = left_counts if within else popcounts(other)
    word_offsets = _check_offsets(offsets, left.shape[1])
    if rule is not None and len(rule.weights) != groups:
        raise MatchingError("the join rule has a weight per group; the layout's groups differ")
    weights = None if rule is None else np.asarray(rule.weights, np.float64)
    cut = 0.0 if rule is None else float(rule.cut)
    left_group_counts = group_bit_counts(left, word_offsets) if rule is not None else _NO_COUNTS
    right_group_counts = (
        left_group_counts if within or rule is None else group_bit_counts(other, word_offsets)
    )
    width = max(len(other), 1)
    parts: list[tuple[npt.NDArray[np.int64], npt.NDArray[np.int32]]] = []
    block_pairs = oversized_blocks = oversized_pairs = compared = 0
    # Groups in turn (each pair is scored in its first compared group, which needs the
    # earlier groups' active flags final), the blocks of one group across threads.
    for group in range(groups):
        blocks, skipped, skipped_pairs = _blocks(keys, group, within, max_group_block_pairs)
        oversized_blocks += skipped
        oversized_pairs += skipped_pairs
        block_pairs += int(blocks.sizes.sum())

        def task(
            chunk: tuple[int, int], blocks: _GroupBlocks = blocks, group: int = group
        ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int32], int]:
            start, stop = chunk
            capacity = int(blocks.sizes[start:stop].sum())
            out_rows = np.empty(capacity, np.int64)
            out_cols = np.empty(capacity, np.int64)
            out_shared = np.empty(capacity, np.int32)
            kept, count = _join_blocks(
                left, other, left_counts, right_counts, required,
                word_offsets, weights, cut, left_group_counts, right_group_counts,
                keys.left_hashes, keys.right_hashes, keys.left_active, keys.right_active, group,
                blocks.left_members, blocks.left_starts[start:stop], blocks.left_stops[start:stop],
                blocks.right_members, blocks.right_starts[start:stop],
                blocks.right_stops[start:stop], within, out_rows, out_cols, out_shared,
            )  # fmt: skip
            return out_rows[:kept] * width + out_cols[:kept], out_shared[:kept].copy(), count

        with ThreadPoolExecutor(max_workers=workers) as pool:
            for codes, shared, count in pool.map(task, _chunks(blocks.sizes)):
                parts.append((codes, shared))
                compared += count
    # Memory: at 1M x 1M there are 19M pairs, 12 bytes each here, and the result's 20; the
    # chunks and every temporary go as soon as they can (this stage was the run's peak).
    codes, shared = _sorted_pairs(parts)
    rows = np.empty_like(codes)
    np.divmod(codes, width, out=(rows, codes))
    cols = codes
    scores = _dice_of(shared, rows, cols, left_counts, right_counts)
    del shared
    return GroupJoin(
        pairs=CandidatePairs(left=rows, right=cols, scores=scores, comparisons=compared),
        plan=GroupJoinPlan(
            block_pairs=block_pairs,
            oversized_blocks=oversized_blocks,
            oversized_pairs=oversized_pairs,
        ),
        keys=keys,
    )


def _sorted_pairs(
    parts: list[tuple[npt.NDArray[np.int64], npt.NDArray[np.int32]]],
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int32]]:
    """The chunks' (code, shared count) pairs as two arrays in ascending code order; empties
    ``parts`` as it goes (each chunk is dropped once copied). Codes are distinct; when code
    and shared count fit one int64 they are sorted packed, in place (a plain sort, several
    times an argsort's speed, and no copy of the codes)."""
    codes = np.concatenate([codes for codes, _ in parts] or [np.empty(0, np.int64)])
    counts = [shared for _, shared in parts]
    parts.clear()
    most = max((int(shared.max()) for shared in counts if len(shared)), default=0)
    shift = max(most, 1).bit_length()
    if len(codes) == 0 or int(codes.max()) >= (1 << (62 - shift)):
        shared = np.concatenate(counts or [np.empty(0, np.int32)])
        del counts
        order = np.argsort(codes)
        return codes[order], shared[order]
    codes <<= shift
    start = 0
    while counts:
        part = counts.pop(0)
        codes[start : start + len(part)] |= part
        start += len(part)
    codes.sort()
    shared = np.empty(len(codes), np.int32)
    np.bitwise_and(codes, (1 << shift) - 1, out=shared, casting="unsafe")
    codes >>= shift
    return codes, shared


_SCORE_CHUNK = 1 << 20
"""Pairs whose Dice is taken at once: the float64 temporaries stay a few MiB, not 230 MiB at
19M pairs."""


def _dice_of(
    shared: npt.NDArray[np.int32],
    rows: npt.NDArray[np.int64],
    cols: npt.NDArray[np.int64],
    left_counts: npt.NDArray[np.int32],
    right_counts: npt.NDArray[np.int32],
) -> npt.NDArray[np.float32]:
    """Record-level Dice of pairs ``(rows[k], cols[k])`` sharing ``shared[k]`` bits, a chunk at
    a time: the same floats as :func:`linkage_unit.similarity._scores` of the whole."""
    out = np.empty(len(shared), np.float32)
    for start in range(0, len(shared), _SCORE_CHUNK):
        part = slice(start, start + _SCORE_CHUNK)
        totals = left_counts[rows[part]].astype(np.int64)
        totals += right_counts[cols[part]]
        out[part] = _scores(shared[part], totals)
    return out


def group_join_reference(
    left: npt.NDArray[np.uint64],
    right: npt.NDArray[np.uint64] | None,
    offsets: tuple[int, ...],
    threshold: float,
    *,
    rule: JoinRule | None = None,
    max_group_block_pairs: int = DEFAULT_MAX_GROUP_BLOCK_PAIRS,
) -> tuple[list[tuple[int, int, float]], GroupJoinPlan]:
    """The slow obvious twin of :func:`group_join`: blocks by the encodings' own words (no
    hash), every pair by nested loops, Dice by the rule ``2 shared >= threshold * total``
    (or ``rule``'s sums, group by group in plain Python floats). Returns ``(left, right,
    score)`` triples in (left, right) order, and the plan."""
    within = right is None
    other = left if right is None else right
    groups = len(offsets) - 1

    def encoding(clks: npt.NDArray[np.uint64], record: int, g: int) -> tuple[int, ...] | None:
        words = tuple(int(x) for x in clks[record, offsets[g] : offsets[g + 1]])
        return words if any(words) else None

    block_pairs = oversized_blocks = oversized_pairs = 0
    compared_blocks: list[set[tuple[int, ...]]] = []
    for g in range(groups):
        left_count: dict[tuple[int, ...], int] = {}
        right_count: dict[tuple[int, ...], int] = {}
        for record in range(len(left)):
            value = encoding(left, record, g)
            if value is not None:
                left_count[value] = left_count.get(value, 0) + 1
        if not within:
            for record in range(len(other)):
                value = encoding(other, record, g)
                if value is not None:
                    right_count[value] = right_count.get(value, 0) + 1
        kept: set[tuple[int, ...]] = set()
        for value, count in left_count.items():
            size = count * (count - 1) // 2 if within else count * right_count.get(value, 0)
            if size == 0:
                continue
            if size > max_group_block_pairs:
                oversized_blocks += 1
                oversized_pairs += size
            else:
                kept.add(value)
                block_pairs += size
        compared_blocks.append(kept)
    out = []
    for row in range(len(left)):
        for col in range(row + 1 if within else 0, len(other)):
            joined = False
            for g in range(groups):
                value = encoding(left, row, g)
                if value is not None and value == encoding(other, col, g):
                    joined = joined or value in compared_blocks[g]
            if not joined:
                continue
            a = sum(int(x).bit_count() for x in left[row])
            b = sum(int(x).bit_count() for x in other[col])
            shared = sum(
                (int(x) & int(y)).bit_count() for x, y in zip(left[row], other[col], strict=True)
            )
            if rule is None:
                keep = 2 * shared >= float(threshold) * (a + b) and a + b > 0
            else:
                keep = _rule_keeps_reference(rule, left[row], other[col], offsets)
            if keep:
                out.append((row, col, float(np.float32(2.0 * shared / (a + b)))))
    plan = GroupJoinPlan(
        block_pairs=block_pairs, oversized_blocks=oversized_blocks, oversized_pairs=oversized_pairs
    )
    return out, plan


def _rule_keeps_reference(
    rule: JoinRule,
    a: npt.NDArray[np.uint64],
    b: npt.NDArray[np.uint64],
    offsets: tuple[int, ...],
) -> bool:
    numerator = denominator = 0.0
    for g, weight in enumerate(rule.weights):
        words = range(offsets[g], offsets[g + 1])
        shared = sum((int(a[w]) & int(b[w])).bit_count() for w in words)
        left = sum(int(a[w]).bit_count() for w in words)
        right = sum(int(b[w]).bit_count() for w in words)
        numerator += weight * float(shared)
        if left > 0 and right > 0:
            denominator += weight * float(left + right)
    return denominator > 0.0 and 2.0 * numerator >= rule.cut * denominator


def merge_candidates(
    joined: GroupJoin, lsh: CandidatePairs, width: int, *, max_pairs: int, threshold: float
) -> CandidatePairs:
    """The union of the join's pairs and the LSH pairs, each pair once, sorted by (left,
    right): an LSH pair the join compared (it holds it exactly when it passed the cut) is
    dropped; ``comparisons`` adds both. More than ``max_pairs`` pairs is refused.

    The join's pairs are sorted already and the LSH adds few (about 1,800 to 19M at 1M x
    1M), so those are sorted alone and inserted: sorting the union again took 2.7 s there.
    :func:`merge_candidates_reference` is the plain concatenate-and-sort twin."""
    return _merge_taken([joined], lsh, width, max_pairs=max_pairs, threshold=threshold)


def _merge_taken(
    held: list[GroupJoin], lsh: CandidatePairs, width: int, *, max_pairs: int, threshold: float
) -> CandidatePairs:
    """:func:`merge_candidates` of the one join in ``held``, taken out of it: where the
    caller holds no other reference, each of the join's columns goes as soon as its merged
    copy is made (at 1M x 1M the join's and the merged pairs were 725 MiB side by side)."""
    joined = held.pop()
    extra = ~joined.keys.joined(lsh.left, lsh.right)
    _check_pair_count(len(joined.pairs) + int(extra.sum()), max_pairs, threshold)
    width = max(width, 1)
    order = np.argsort(lsh.left[extra] * width + lsh.right[extra], kind="stable")
    new_left, new_right = lsh.left[extra][order], lsh.right[extra][order]
    inserted: list[npt.NDArray[Any]] = [new_left, new_right, lsh.scores[extra][order]]
    at = _insertion_points(joined.pairs.left, joined.pairs.right, new_left, new_right)
    columns: list[npt.NDArray[Any]] = [joined.pairs.left, joined.pairs.right, joined.pairs.scores]
    comparisons = joined.pairs.comparisons + lsh.comparisons
    del joined
    merged: list[npt.NDArray[Any]] = []
    while columns:
        merged.append(np.insert(columns.pop(0), at, inserted.pop(0)))
    left, right, scores = merged
    return CandidatePairs(left=left, right=right, scores=scores, comparisons=comparisons)


def _insertion_points(
    left: npt.NDArray[np.int64],
    right: npt.NDArray[np.int64],
    new_left: npt.NDArray[np.int64],
    new_right: npt.NDArray[np.int64],
) -> npt.NDArray[np.int64]:
    """Where each new pair goes among pairs sorted by (left, right) (``np.searchsorted`` of
    their codes, without making every pair's code: 152 MiB at 1M x 1M)."""
    low = np.searchsorted(left, new_left, "left")
    high = np.searchsorted(left, new_left, "right")
    at = low.astype(np.int64)
    for k in np.flatnonzero(high > low).tolist():
        at[k] += int(np.searchsorted(right[low[k] : high[k]], new_right[k]))
    return at


def merge_candidates_reference(
    joined: GroupJoin, lsh: CandidatePairs, width: int, *, max_pairs: int, threshold: float
) -> CandidatePairs:
    """The slow obvious twin of :func:`merge_candidates`: concatenate, then sort it all."""
    extra = ~joined.keys.joined(lsh.left, lsh.right)
    left = np.concatenate([joined.pairs.left, lsh.left[extra]])
    right = np.concatenate([joined.pairs.right, lsh.right[extra]])
    scores = np.concatenate([joined.pairs.scores, lsh.scores[extra]])
    _check_pair_count(len(left), max_pairs, threshold)
    order = np.argsort(left * max(width, 1) + right, kind="stable")
    return CandidatePairs(
        left=left[order],
        right=right[order],
        scores=scores[order],
        comparisons=joined.pairs.comparisons + lsh.comparisons,
    )


def group_lsh_settings(
    left: npt.NDArray[np.uint64],
    right: npt.NDArray[np.uint64] | None,
    threshold: float,
    settings: GroupBlockingSettings,
    blocking: BlockingSettings,
) -> tuple[float, BlockingSettings | None]:
    """The record-level Dice the LSH part is fitted to (``lsh_threshold``, or the run's cut
    when higher) and its shape (None: comparing every pair costs less; see
    :func:`linkage_unit.blocking.blocking_settings_for`)."""
    fitted_at = max(check_threshold(threshold), settings.lsh_threshold)
    return fitted_at, blocking_settings_for(
        left, right, fitted_at, blocking,
        record_cost=LSH_RECORD_COST, max_bits_per_band=LSH_MAX_BITS_PER_BAND,
    )  # fmt: skip


@dataclass(frozen=True, slots=True, kw_only=True)
class GroupCandidates:
    """What group blocking gave one party pair: the candidate pairs, the LSH plan (None:
    every pair was compared), the join's plan and the record-level Dice the LSH part was
    fitted to (None: the join was not used), and the blocking recall the join was checked
    at before it was used (:func:`estimate_recall`; None: not checked, every pair compared)."""

    pairs: CandidatePairs
    plan: BlockingPlan | None
    join: GroupJoinPlan | None
    lsh_threshold: float | None
    recall_estimate: float | None


def estimate_recall(
    left: npt.NDArray[np.uint64],
    right: npt.NDArray[np.uint64] | None,
    joined: GroupJoin,
    threshold: float,
    lsh_threshold: float,
    *,
    sample: int,
    seed: int,
    rule: JoinRule | None = None,
    offsets: tuple[int, ...] = (),
    workers: int | None = None,
) -> float:
    """The share of the pairs at or above ``threshold`` that group blocking holds, measured
    on ``sample`` left records against every right record: a pair counts as held when the
    join compared it or its Dice reaches ``lsh_threshold`` (the LSH part is fitted to find
    those with the target recall). 1.0 when the sample has no such pair.

    With ``rule`` (the join's, its groups at ``offsets``), a pair the join compares is
    wanted only if the rule keeps it, and then always held. The pairs the rule keeps below
    ``threshold`` are not enumerated here (the sample is compared at ``threshold``): they
    are all held, so leaving them out can only make the estimate lower, never higher."""
    generator = np.random.default_rng((seed, 0x6B))
    rows = np.sort(generator.choice(len(left), size=min(sample, len(left)), replace=False))
    other = left if right is None else right
    chosen = left[rows]
    # The sample is the kernel's cached side and the other party's records stream past it a
    # slice at a time. The other way round, every thread's slice of the small sample re-read
    # a sorted, transposed copy of all 1M records (1.8 GiB, the run's peak): 9 s at 1M x 1M.
    lefts, rights = [np.empty(0, np.int64)], [np.empty(0, np.int64)]
    scores = [np.empty(0, np.float32)]
    for start in range(0, len(other), _RECALL_COLUMNS):
        found = candidate_pairs(
            other[start : start + _RECALL_COLUMNS], chosen, threshold, workers=workers
        )
        lefts.append(rows[found.right])
        rights.append(found.left + start)
        scores.append(found.scores)
    left_rows, right_rows = np.concatenate(lefts), np.concatenate(rights)
    found_scores = np.concatenate(scores)
    if right is None:
        distinct = left_rows != right_rows
        left_rows, right_rows = left_rows[distinct], right_rows[distinct]
        found_scores = found_scores[distinct]
    compared = joined.keys.joined(left_rows, right_rows)
    wanted = np.ones(len(left_rows), bool)
    if rule is not None and compared.any():
        counts = group_counts(
            left, other, left_rows[compared], right_rows[compared], offsets,
            workers=workers, dtype=np.int32,
        )  # fmt: skip
        wanted[compared] = rule.keeps(counts.shared, counts.left, counts.right)
    if not wanted.any():
        return 1.0
    held = compared | (found_scores >= np.float32(lsh_threshold))
    return float(held[wanted].mean())


_RECALL_COLUMNS = 1 << 17
"""Records the recall check streams past its sample at once (about 80 MiB of kernel layout
at the shipped 2560 bits)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class JoinRoute:
    """Group blocking is used for the party pair: the join's pairs (``joined``, its recall
    measured at ``recall_estimate``) plus an LSH part of ``shape``, fitted to the
    record-level Dice ``lsh_threshold``."""

    joined: GroupJoin
    shape: BlockingSettings
    lsh_threshold: float
    recall_estimate: float


@dataclass(frozen=True, slots=True, kw_only=True)
class FallbackRoute:
    """The party pair is compared as without group blocking, in ``mode``: ``none`` (every
    pair) where that costs less than the LSH part (the join is not run: ``recall_estimate``
    None), ``lsh`` fitted to the run's cut where the join's measured recall
    ``recall_estimate`` is below ``min_recall``."""

    mode: BlockingMode
    recall_estimate: float | None


GroupRoute = JoinRoute | FallbackRoute
"""How group blocking compares one party pair (:func:`route_group_blocking`): the one
decision the in-process compare (:func:`generate_group_candidates`) and the Dask compare
(``distributed.py``) both follow, so they give the same pairs."""


def falls_back(
    recall: float,
    settings: GroupBlockingSettings,
    target_recall: float,
    fallback_cost: Callable[[], float | None],
) -> bool:
    """Whether a party pair whose join held ``recall`` of the pairs above the cut is compared
    without group blocking: below ``min_recall`` always; below the blocking target
    ``target_recall`` when that compare costs at most ``max_fallback_cost``
    (``fallback_cost``, asked only then; None: an operator-fixed shape, taken as
    affordable)."""
    if recall < settings.min_recall:
        return True
    if recall >= target_recall:
        return False
    cost = fallback_cost()
    return cost is None or cost <= settings.max_fallback_cost


def route_group_blocking(
    left: npt.NDArray[np.uint64],
    right: npt.NDArray[np.uint64] | None,
    threshold: float,
    *,
    offsets: tuple[int, ...],
    settings: GroupBlockingSettings,
    blocking: BlockingSettings,
    seed: int,
    rule: JoinRule | None = None,
    workers: int | None = None,
    max_pairs: int = DEFAULT_MAX_CANDIDATE_PAIRS,
) -> GroupRoute:
    """Group blocking's decision for one party pair (``right`` None: one party with itself).

    The join runs first (cheap); its recall is measured on a sample before it is used
    (:func:`estimate_recall`). Below ``settings.min_recall`` - a record-level cut low enough
    that many pairs above it share no group, as at 200k x 200k under the shipped schema (cut
    0.56: the join held 0.36 of them) - the party pair is compared as without group
    blocking (LSH fitted to the cut, or every pair). When the LSH part's shape would cost
    more than comparing every pair, every pair is compared (recall 1) and the join is not
    run. ``rule``: how the join judges its pairs (None: the record-level cut, as every
    other compare)."""
    lsh_threshold, shape = group_lsh_settings(left, right, threshold, settings, blocking)
    if shape is None:
        return FallbackRoute(mode=BlockingMode.NONE, recall_estimate=None)
    joined = group_join(
        left, right, offsets, threshold, rule=rule,
        max_group_block_pairs=settings.max_group_block_pairs, workers=workers,
    )  # fmt: skip
    recall = estimate_recall(
        left, right, joined, threshold, lsh_threshold,
        sample=settings.recall_sample, seed=seed, rule=rule, offsets=offsets, workers=workers,
    )  # fmt: skip
    cost = lambda: blocking_cost(left, right, threshold, blocking)  # noqa: E731 - asked lazily
    if falls_back(recall, settings, blocking.target_recall, cost):
        return FallbackRoute(mode=BlockingMode.LSH, recall_estimate=recall)
    _check_pair_count(len(joined.pairs), max_pairs, threshold)
    return JoinRoute(
        joined=joined, shape=shape, lsh_threshold=lsh_threshold, recall_estimate=recall
    )


def generate_group_candidates(
    left: npt.NDArray[np.uint64],
    right: npt.NDArray[np.uint64] | None,
    threshold: float,
    *,
    offsets: tuple[int, ...],
    settings: GroupBlockingSettings,
    blocking: BlockingSettings,
    seed: int,
    rule: JoinRule | None = None,
    workers: int | None = None,
    max_pairs: int = DEFAULT_MAX_CANDIDATE_PAIRS,
) -> GroupCandidates:
    """Group blocking for one party pair in this process (``right`` None: one party with
    itself), along the route :func:`route_group_blocking` decides: the join's pairs plus the
    LSH part's, or the compare without group blocking it falls back to."""
    route = route_group_blocking(
        left, right, threshold, offsets=offsets, settings=settings, blocking=blocking,
        seed=seed, rule=rule, workers=workers, max_pairs=max_pairs,
    )  # fmt: skip
    if isinstance(route, FallbackRoute):
        pairs, plan = generate_candidates(
            left, right, threshold, mode=route.mode, settings=blocking, seed=seed,
            workers=workers, max_pairs=max_pairs,
        )  # fmt: skip
        return GroupCandidates(
            pairs=pairs, plan=plan, join=None, lsh_threshold=None,
            recall_estimate=route.recall_estimate,
        )  # fmt: skip
    joined, shape = route.joined, route.shape
    lsh_threshold, recall_estimate = route.lsh_threshold, route.recall_estimate
    del route
    positions = sample_band_positions(64 * left.shape[1], shape, seed)
    lsh, plan = lsh_beyond_join(
        left, right, positions, threshold, joined.keys,
        max_block_comparisons=shape.max_block_comparisons, workers=workers,
    )  # fmt: skip
    join_plan = joined.plan
    # Handed over, not kept: the merge frees the join's columns one by one as it copies them.
    held = [joined]
    del joined
    merged = _merge_taken(
        held, lsh, len(left) if right is None else len(right),
        max_pairs=max_pairs, threshold=threshold,
    )  # fmt: skip
    return GroupCandidates(
        pairs=merged,
        plan=plan,
        join=join_plan,
        lsh_threshold=lsh_threshold,
        recall_estimate=recall_estimate,
    )


def _check_pair_count(count: int, max_pairs: int, threshold: float) -> None:
    if count > max_pairs:
        raise MatchingError(
            f"more than {max_pairs} candidate pairs at threshold {threshold}: raise the "
            "threshold or the candidate-pair limit"
        )


_BANDS_PER_PASS = 8
"""LSH bands whose keys are taken in one pass over the records (8 bytes a record a band)."""


def lsh_beyond_join(
    left: npt.NDArray[np.uint64],
    right: npt.NDArray[np.uint64] | None,
    positions: npt.NDArray[np.int64],
    threshold: float,
    keys: GroupKeys,
    *,
    max_block_comparisons: int,
    workers: int | None = None,
) -> tuple[CandidatePairs, BlockingPlan]:
    """The LSH part of group blocking: the pairs ``BlockingIndex(left, right, positions=...)``
    finds at or above ``threshold`` that the join did not compare, each once, sorted, and
    the LSH plan. A fast path for this one use: keys of several bands per pass over the
    records, blocks compared where the records lie (a block here holds a few records, so
    gathering them first only copied them), pairs the join holds skipped unscored.
    ``BlockingIndex`` is its twin (the property test in tests/linkage_unit)."""
    threshold = check_threshold(threshold)
    within = right is None
    other = left if right is None else right
    workers = default_workers() if workers is None else workers
    required = required_shared(threshold, 64 * left.shape[1])
    left_counts = popcounts(left)
    right_counts = left_counts if within else popcounts(other)
    width = max(len(other), 1)
    groups = keys.left_hashes.shape[1]
    bits = int(positions.shape[1])
    # Block comparisons, the largest block, oversized blocks and their pairs, pairs scored.
    totals = [0, 0, 0, 0, 0]
    parts: list[npt.NDArray[np.int64]] = []
    shared_parts: list[npt.NDArray[np.int32]] = []

    def band_task(
        columns: tuple[npt.NDArray[np.uint64], npt.NDArray[np.uint64] | None],
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int32], tuple[int, int, int, int, int]]:
        left_keys, right_keys = columns
        band = _build_band(left_keys, right_keys, max_block_comparisons, bits)
        left_starts, right_starts = band.left_starts, band.right_starts
        left_sizes = band.left_stops - left_starts
        right_sizes = band.right_stops - right_starts
        kept_sizes = left_sizes * (left_sizes - 1) // 2 if within else left_sizes * right_sizes
        codes, shared, compared = [np.empty(0, np.int64)], [np.empty(0, np.int32)], 0
        for start, stop in _chunks(kept_sizes):
            capacity = int(kept_sizes[start:stop].sum())
            out_rows = np.empty(capacity, np.int64)
            out_cols = np.empty(capacity, np.int64)
            out_shared = np.empty(capacity, np.int32)
            kept, count = _join_blocks(
                left, other, left_counts, right_counts, required,
                _NO_OFFSETS, None, 0.0, _NO_COUNTS, _NO_COUNTS,
                keys.left_hashes, keys.right_hashes, keys.left_active, keys.right_active, groups,
                band.left_members, left_starts[start:stop], band.left_stops[start:stop],
                band.right_members, right_starts[start:stop], band.right_stops[start:stop],
                within,
                out_rows, out_cols, out_shared,
            )  # fmt: skip
            codes.append(out_rows[:kept] * width + out_cols[:kept])
            shared.append(out_shared[:kept].copy())
            compared += count
        figures = (
            band.comparisons, band.largest, band.oversized_blocks, band.oversized_comparisons,
            compared,
        )  # fmt: skip
        return np.concatenate(codes), np.concatenate(shared), figures

    with ThreadPoolExecutor(max_workers=workers) as pool:
        for band_start in range(0, positions.shape[0], _BANDS_PER_PASS):
            batch = positions[band_start : band_start + _BANDS_PER_PASS]
            # Keys take a second a pass at 1M x 1M: every worker takes a slice of the records.
            left_keys = _keys(left, batch, pool, workers)
            right_keys = None if within else _keys(other, batch, pool, workers)
            # Each band's keys are a contiguous column already (``_keys``): views, no copies.
            columns = [
                (left_keys[:, b], None if right_keys is None else right_keys[:, b])
                for b in range(batch.shape[0])
            ]
            for band_codes, band_shared, figures in pool.map(band_task, columns):
                parts.append(band_codes)
                shared_parts.append(band_shared)
                totals[0] += figures[0]
                totals[1] = max(totals[1], figures[1])
                totals[2] += figures[2]
                totals[3] += figures[3]
                totals[4] += figures[4]
            del columns, left_keys, right_keys  # before the next pass's keys are made
    # A pair colliding in several bands was kept once per band: the union keeps it once.
    codes, first = np.unique(np.concatenate(parts or [np.empty(0, np.int64)]), return_index=True)
    shared = np.concatenate(shared_parts or [np.empty(0, np.int32)])[first]
    rows, cols = np.divmod(codes, width)
    scores = _dice_of(shared, rows, cols, left_counts, right_counts)
    n_left, n_right = len(left), len(other)
    plan = BlockingPlan(
        bands=int(positions.shape[0]),
        bits_per_band=bits,
        exhaustive_comparisons=n_left * (n_left - 1) // 2 if within else n_left * n_right,
        block_comparisons=totals[0],
        largest_block_comparisons=totals[1],
        oversized_blocks=totals[2],
        oversized_comparisons=totals[3],
        estimated_seconds=totals[0] / (BLOCK_COMPARISONS_PER_SECOND * workers),
        estimated_memory_bytes=workers * 32 * (n_left + n_right)
        + _BANDS_PER_PASS * 8 * (n_left + n_right),
    )
    return CandidatePairs(left=rows, right=cols, scores=scores, comparisons=totals[4]), plan
