"""Solving: the last stage of matching (block -> compare -> **solve**).

Turns scored candidate pairs into clusters: one cluster id per record per party, same id =
same person. Every record gets an id; a record with no accepted pair is a cluster of one.

Order of acceptance, everywhere: descending score, ties broken by the smaller global record
position of the pair's first record, then of its second (global position = the record's
position plus the sizes of the parties before it, in the order the parties are given). So a
result never depends on thread count or input order of the pairs.

* :func:`solve_linkage` - two or more parties, at most one record per party per cluster:
  greedy merge of clusters in score order when their party sets are disjoint. For two parties
  this is greedy one-to-one matching. Compiled fast path, with :func:`reference_solve_linkage`
  as its slow obvious twin.

When a party may hold several records of one person (deduplication, alone or with linkage),
the solve is a clustering instead: ``linkage_unit/clustering.py``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numba
import numpy as np
import numpy.typing as npt

from linkage_unit.similarity import CandidatePairs
from protocol.errors import MatchingError

__all__ = [
    "MAX_PARTIES",
    "PartyPairs",
    "Solution",
    "dense_solution",
    "reference_solve_linkage",
    "solve_linkage",
]

MAX_PARTIES = 64
"""The fast path tracks each cluster's parties in one 64-bit mask."""


@dataclass(frozen=True, slots=True, kw_only=True)
class PartyPairs:
    """Candidate pairs between ``left_party`` and ``right_party`` (indices into the list of
    party sizes). ``left_party == right_party`` holds pairs within one party."""

    left_party: int
    right_party: int
    pairs: CandidatePairs

    def __post_init__(self) -> None:
        if self.left_party < 0 or self.right_party < 0:
            raise MatchingError("party indices must be >= 0")


@dataclass(frozen=True, slots=True, kw_only=True)
class Solution:
    """``clusters[p][i]``: cluster id of record i of party p; ids are dense from 0, numbered
    in order of each cluster's first record by global position."""

    clusters: tuple[npt.NDArray[np.int64], ...]
    cluster_count: int
    accepted_pairs: int


def _global_edges(
    party_sizes: Sequence[int], party_pairs: Sequence[PartyPairs]
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.float32]]:
    """All pairs in global positions (first < second), sorted in acceptance order."""
    offsets = np.concatenate([[0], np.cumsum(party_sizes, dtype=np.int64)])
    firsts, seconds, scores = [], [], []
    for item in party_pairs:
        if item.left_party >= len(party_sizes) or item.right_party >= len(party_sizes):
            raise MatchingError("a pair set names a party that is not in the run")
        pairs = item.pairs
        if len(pairs) and (
            pairs.left.min() < 0
            or pairs.right.min() < 0
            or pairs.left.max() >= party_sizes[item.left_party]
            or pairs.right.max() >= party_sizes[item.right_party]
        ):
            raise MatchingError("a candidate pair names a record position outside its party")
        a = pairs.left + offsets[item.left_party]
        b = pairs.right + offsets[item.right_party]
        firsts.append(np.minimum(a, b))
        seconds.append(np.maximum(a, b))
        scores.append(pairs.scores)
    if not firsts:
        return np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.float32)
    first = np.concatenate(firsts).astype(np.int64)
    second = np.concatenate(seconds).astype(np.int64)
    score = np.concatenate(scores).astype(np.float32)
    order = np.lexsort((second, first, -score.astype(np.float64)))
    return first[order], second[order], score[order]


def dense_solution(roots: npt.NDArray[np.int64], party_sizes: Sequence[int]) -> Solution:
    """Records with the same root are one cluster; ids dense from 0 in order of each
    cluster's first record (concatenated party order), whatever the roots were."""
    _, first_seen, dense = np.unique(roots, return_index=True, return_inverse=True)
    # Renumber so ids follow each cluster's first record, independent of root choice.
    rank = np.empty(len(first_seen), np.int64)
    rank[np.argsort(first_seen, kind="stable")] = np.arange(len(first_seen))
    ids = rank[dense] if len(roots) else np.empty(0, np.int64)
    offsets = np.concatenate([[0], np.cumsum(party_sizes, dtype=np.int64)])
    clusters = tuple(
        np.ascontiguousarray(ids[offsets[p] : offsets[p + 1]], dtype=np.int64)
        for p in range(len(party_sizes))
    )
    return Solution(clusters=clusters, cluster_count=len(first_seen), accepted_pairs=0)


@numba.njit(nogil=True, cache=True)
def _find(parent: npt.NDArray[np.int64], node: int) -> int:  # pragma: no cover - compiled
    root = node
    while parent[root] != root:
        root = parent[root]
    while parent[node] != root:  # path compression
        following = parent[node]
        parent[node] = root
        node = following
    return root


@numba.njit(nogil=True, cache=True)
def _greedy_merge(  # pragma: no cover - compiled
    first: npt.NDArray[np.int64],
    second: npt.NDArray[np.int64],
    party_of: npt.NDArray[np.int64],
) -> tuple[npt.NDArray[np.int64], int]:
    records = party_of.shape[0]
    parent = np.arange(records)
    mask = np.empty(records, np.uint64)
    for record in range(records):
        mask[record] = np.uint64(1) << np.uint64(party_of[record])
    accepted = 0
    for k in range(first.shape[0]):
        root_a = _find(parent, first[k])
        root_b = _find(parent, second[k])
        if root_a == root_b or (mask[root_a] & mask[root_b]) != np.uint64(0):
            continue
        if root_b < root_a:
            root_a, root_b = root_b, root_a
        parent[root_b] = root_a
        mask[root_a] |= mask[root_b]
        accepted += 1
    for record in range(records):
        parent[record] = _find(parent, record)
    return parent, accepted


def _check_sizes(party_sizes: Sequence[int]) -> list[int]:
    sizes = [int(size) for size in party_sizes]
    if any(size < 0 for size in sizes):
        raise MatchingError("party sizes must be >= 0")
    return sizes


def solve_linkage(party_sizes: Sequence[int], party_pairs: Sequence[PartyPairs]) -> Solution:
    """At most one record per party per cluster; greedy merge in acceptance order."""
    sizes = _check_sizes(party_sizes)
    if len(sizes) > MAX_PARTIES:
        raise MatchingError(f"at most {MAX_PARTIES} parties can be linked in one run")
    if any(item.left_party == item.right_party for item in party_pairs):
        raise MatchingError("pairs within one party need the clustering (clustering.py)")
    first, second, _ = _global_edges(sizes, party_pairs)
    party_of = np.repeat(np.arange(len(sizes), dtype=np.int64), sizes)
    roots, accepted = _greedy_merge(first, second, party_of)
    solution = dense_solution(roots, sizes)
    return Solution(
        clusters=solution.clusters, cluster_count=solution.cluster_count, accepted_pairs=accepted
    )


def reference_solve_linkage(
    party_sizes: Sequence[int], party_pairs: Sequence[PartyPairs]
) -> Solution:
    """The slow obvious twin of :func:`solve_linkage`: explicit sets, one pair at a time."""
    sizes = _check_sizes(party_sizes)
    offsets = [sum(sizes[:p]) for p in range(len(sizes))]
    pairs: list[tuple[float, int, int]] = []
    for item in party_pairs:
        for left, right, score in zip(
            item.pairs.left.tolist(), item.pairs.right.tolist(), item.pairs.scores.tolist(),
            strict=True,
        ):  # fmt: skip
            a, b = offsets[item.left_party] + left, offsets[item.right_party] + right
            pairs.append((score, min(a, b), max(a, b)))
    pairs.sort(key=lambda pair: (-pair[0], pair[1], pair[2]))
    party_of = [p for p, size in enumerate(sizes) for _ in range(size)]
    cluster_of = list(range(len(party_of)))
    members: dict[int, list[int]] = {record: [record] for record in range(len(party_of))}
    accepted = 0
    for _, a, b in pairs:
        ca, cb = cluster_of[a], cluster_of[b]
        if ca == cb:
            continue
        if {party_of[r] for r in members[ca]} & {party_of[r] for r in members[cb]}:
            continue
        keep, gone = min(ca, cb), max(ca, cb)
        for record in members[gone]:
            cluster_of[record] = keep
        members[keep].extend(members.pop(gone))
        accepted += 1
    solution = dense_solution(np.array(cluster_of, dtype=np.int64), sizes)
    return Solution(
        clusters=solution.clusters, cluster_count=solution.cluster_count, accepted_pairs=accepted
    )


def clusters_by_party(
    parties: Sequence[str], solution: Solution
) -> Mapping[str, npt.NDArray[np.int64]]:
    """Name the solution's per-party arrays."""
    return dict(zip(parties, solution.clusters, strict=True))
