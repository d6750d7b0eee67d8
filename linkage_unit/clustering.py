"""Clustering: the solve stage when a party may hold several records of one person
(block -> compare -> **cluster**).

Input: every party's name, record count and whether it is *deduplicated* (its extract may
hold several records of one person), and scored pairs between or within parties (pairs
within a party only for a deduplicated one). Output: one cluster id per record, one cluster
per person. A cluster holds any number of records of a deduplicated party and at most one
of a duplicate-free party.

Method: average-linkage agglomeration with a cut, a greedy form of correlation clustering.
Every pair of records carries evidence ``score - threshold`` (positive: alike enough to be
one person); a pair that was never scored (blocking or the compare stage left it out,
because it scores below the threshold) counts as ``-unscored_margin``. Two clusters may
merge when the summed evidence over every pair of their records is at least zero, i.e.
their mean cross score, unscored pairs counting as ``threshold - unscored_margin``, reaches
the threshold. The pair of clusters with the highest mean merges first, until no allowed
merge is left. A merge that would put two records of one duplicate-free party together is
never made (such a merge stays forbidden, so it is dropped for good).

Why not connected components: one false pair above the threshold joins two people, and a
chain of near neighbours joins many. Here a record joins a cluster only if it is, on
average, as close to all of its records as the threshold asks: a namesake who matches one
of a person's records and none of the others stays apart (measured in docs/quality.md).

Scores are generic: Dice coefficients with the Dice threshold, or match probabilities with a
probability cut; ``unscored_margin`` is in the same units.

Determinism: evidence is turned into integers (``score - threshold`` in units of 2^-24,
exact to float32) so sums never depend on their order; records are numbered with the
parties sorted by name, so another party order or pair order gives the same partition;
ties go to the pair of clusters with the smaller least record number. A run restarted on the
same pairs gives the same clusters.

Fast path (:func:`cluster_records`): only pairs at or above the threshold can start a
merge, so the records split into the connected components of those pairs and each is
solved alone; two-record components merge at once, larger ones go through a heap of
cluster pairs. Its slow, obvious twin (:func:`reference_cluster_records`) recomputes every
cluster pair's evidence from scratch before each merge.

A merge that would make a cluster larger than ``max_cluster_size`` fails the run with
:class:`MatchingError`: a cluster that big is placeholder records ("unknown", 01/01/1900)
or a broken extract chaining people together, not one person, and no key is issued for it.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from dataclasses import dataclass

import numba
import numpy as np
import numpy.typing as npt

from linkage_unit.solving import PartyPairs, Solution, dense_solution
from protocol.errors import MatchingError
from protocol.messages import DEFAULT_MAX_CLUSTER_SIZE

__all__ = [
    "DEFAULT_MAX_CLUSTER_SIZE",
    "DEFAULT_UNSCORED_MARGIN",
    "ClusterSettings",
    "PartyRecords",
    "cluster_records",
    "reference_cluster_records",
]

DEFAULT_UNSCORED_MARGIN = 0.02
"""In Dice units. On synth hard with repeats and FEBRL3, 0.01-0.03 reach the same best F1
(within 0.001); 0.02 holds it over the widest range of thresholds. Larger margins split
people whose records are only weakly alike (0.05 costs 0.002-0.005 F1)."""

_SCALE = float(1 << 24)  # float32 scores are exact in this unit


@dataclass(frozen=True, slots=True, kw_only=True)
class PartyRecords:
    """One party in a clustering: its name, its record count, and whether its extract may
    hold several records of one person."""

    name: str
    size: int
    deduplicated: bool

    def __post_init__(self) -> None:
        if self.size < 0:
            raise MatchingError("a party's record count must be >= 0")


@dataclass(frozen=True, slots=True, kw_only=True)
class ClusterSettings:
    """``threshold``: a pair scoring at least this is evidence for one person.
    ``unscored_margin``: how far below the threshold a pair that was never scored counts.
    ``max_cluster_size``: the largest cluster a run may make before it fails."""

    threshold: float
    unscored_margin: float = DEFAULT_UNSCORED_MARGIN
    max_cluster_size: int = DEFAULT_MAX_CLUSTER_SIZE

    def __post_init__(self) -> None:
        if not np.isfinite(self.threshold):
            raise MatchingError("the clustering threshold must be a finite number")
        if not (0.0 < self.unscored_margin <= 1.0):
            # At 0 two clusters with no scored pair between them would merge: everything would.
            raise MatchingError("unscored_margin must be in (0, 1]")
        if self.max_cluster_size < 2:
            raise MatchingError("max_cluster_size must be at least 2 records")


@dataclass(frozen=True, slots=True, kw_only=True)
class _Problem:
    """Pairs in canonical record numbers (parties by name): ``first < second``, one row per
    pair, integer evidence, sorted by (first, second)."""

    records: int
    first: npt.NDArray[np.int64]
    second: npt.NDArray[np.int64]
    evidence: npt.NDArray[np.int64]
    clean_party: npt.NDArray[np.int64]  # per record: rank of its duplicate-free party, or -1
    penalty: int
    canonical: npt.NDArray[np.int64]  # canonical number -> position in the caller's order
    sizes: tuple[int, ...]


def _problem(
    parties: Sequence[PartyRecords], party_pairs: Sequence[PartyPairs], settings: ClusterSettings
) -> _Problem:
    names = [party.name for party in parties]
    if len(set(names)) != len(names):
        raise MatchingError("party names in a clustering must be distinct")
    sizes = tuple(party.size for party in parties)
    by_name = sorted(range(len(parties)), key=lambda index: names[index])
    canonical_offset = np.zeros(len(parties), np.int64)
    caller_offset = np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)])
    running = 0
    for index in by_name:
        canonical_offset[index] = running
        running += sizes[index]
    records = running
    # canonical[k]: the record's number in the caller's concatenated order.
    canonical = np.empty(records, np.int64)
    clean_party = np.full(records, -1, np.int64)
    for rank, index in enumerate(by_name):
        start = canonical_offset[index]
        canonical[start : start + sizes[index]] = caller_offset[index] + np.arange(sizes[index])
        if not parties[index].deduplicated:
            clean_party[start : start + sizes[index]] = rank
    firsts, seconds, scores = [], [], []
    for item in party_pairs:
        left_party, right_party = item.left_party, item.right_party
        if left_party >= len(parties) or right_party >= len(parties):
            raise MatchingError("a pair set names a party that is not in the clustering")
        if left_party == right_party and not parties[left_party].deduplicated:
            raise MatchingError(
                "pairs within a duplicate-free party cannot be clustered; deduplicate it"
            )
        pairs = item.pairs
        if len(pairs) == 0:
            continue
        if (
            pairs.left.min() < 0
            or pairs.right.min() < 0
            or pairs.left.max() >= sizes[left_party]
            or pairs.right.max() >= sizes[right_party]
        ):
            raise MatchingError("a candidate pair names a record position outside its party")
        a = pairs.left.astype(np.int64) + canonical_offset[left_party]
        b = pairs.right.astype(np.int64) + canonical_offset[right_party]
        keep = a != b  # a record paired with itself says nothing
        firsts.append(np.minimum(a, b)[keep])
        seconds.append(np.maximum(a, b)[keep])
        scores.append(np.asarray(pairs.scores, dtype=np.float64)[keep])
    if firsts:
        first = np.concatenate(firsts)
        second = np.concatenate(seconds)
        score = np.concatenate(scores)
    else:
        first = second = np.empty(0, np.int64)
        score = np.empty(0, np.float64)
    if not np.isfinite(score).all():
        raise MatchingError("pair scores must be finite numbers")
    evidence = np.rint((score - float(settings.threshold)) * _SCALE).astype(np.int64)
    # One row per pair: a pair given twice keeps its higher score.
    order = np.lexsort((-evidence, second, first))
    first, second, evidence = first[order], second[order], evidence[order]
    unique = np.ones(len(first), bool)
    unique[1:] = (first[1:] != first[:-1]) | (second[1:] != second[:-1])
    return _Problem(
        records=records,
        first=first[unique],
        second=second[unique],
        evidence=evidence[unique],
        clean_party=clean_party,
        penalty=int(round(settings.unscored_margin * _SCALE)),
        canonical=canonical,
        sizes=sizes,
    )


def _too_big(settings: ClusterSettings) -> MatchingError:
    return MatchingError(
        f"clustering would put more than {settings.max_cluster_size} records (the project's "
        "cap) into one person's cluster; such a cluster is usually placeholder "
        "records (unknown names, default dates of birth) or a broken extract chaining people "
        "together. No link keys were issued: clean the extract, or create the project with a "
        "higher --max-cluster-size if people really have that many records"
    )


def _solution(problem: _Problem, label: npt.NDArray[np.int64], merges: int) -> Solution:
    """Labels in canonical order -> a Solution in the caller's party order."""
    caller_label = np.empty(problem.records, np.int64)
    caller_label[problem.canonical] = label
    solution = dense_solution(caller_label, problem.sizes)
    return Solution(
        clusters=solution.clusters, cluster_count=solution.cluster_count, accepted_pairs=merges
    )


# -- fast path ----------------------------------------------------------------------------


@numba.njit(nogil=True, cache=True)
def _components(  # pragma: no cover - compiled
    records: int, first: npt.NDArray[np.int64], second: npt.NDArray[np.int64]
) -> npt.NDArray[np.int64]:
    """Each record's component root (its least record number) under the given pairs."""
    parent = np.arange(records)
    for k in range(first.shape[0]):
        a = first[k]
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        b = second[k]
        while parent[b] != b:
            parent[b] = parent[parent[b]]
            b = parent[b]
        if a != b:
            if a < b:
                parent[b] = a
            else:
                parent[a] = b
    for record in range(records):
        root = record
        while parent[root] != root:
            root = parent[root]
        parent[record] = root
    return parent


def _merge_component(
    members: list[int],
    first: npt.NDArray[np.int64],
    second: npt.NDArray[np.int64],
    evidence: npt.NDArray[np.int64],
    clean_party: npt.NDArray[np.int64],
    penalty: int,
    settings: ClusterSettings,
    label: npt.NDArray[np.int64],
) -> int:
    """Average linkage over one component's records; writes ``label``; returns merges."""
    size = {record: 1 for record in members}
    clean = {record: (1 << int(clean_party[record])) if clean_party[record] >= 0 else 0
             for record in members}  # fmt: skip
    content = {record: [record] for record in members}
    # links[c][d] is links[d][c], one shared list: [summed evidence, number of scored pairs]
    links: dict[int, dict[int, list[int]]] = {record: {} for record in members}
    for a, b, value in zip(first.tolist(), second.tolist(), evidence.tolist(), strict=True):
        links[a][b] = links[b][a] = [value, 1]

    def mean(a: int, b: int, stats: list[int]) -> float:
        pairs = size[a] * size[b]
        return (stats[0] - penalty * (pairs - stats[1])) / pairs

    heap = [(-mean(a, b, stats), a, b) for a in members for b, stats in links[a].items() if a < b]
    heapq.heapify(heap)
    merges = 0
    while heap:
        negative, a, b = heapq.heappop(heap)
        if a not in size or b not in size:
            continue  # one side was merged away since this entry was pushed
        stats = links[a].get(b)
        if stats is None:
            continue  # dropped: the two clusters hold records of one duplicate-free party
        value = mean(a, b, stats)
        if value != -negative:
            continue  # stale: a fresher entry for this pair is in the heap
        if value < 0:
            break
        if clean[a] & clean[b]:
            del links[a][b], links[b][a]  # two records of one duplicate-free party: never
            continue
        if size[a] + size[b] > settings.max_cluster_size:
            raise _too_big(settings)
        keep, gone = a, b  # a < b: the cluster keeps its least record number
        size[keep] += size.pop(gone)
        clean[keep] |= clean.pop(gone)
        content[keep].extend(content.pop(gone))
        gone_links = links.pop(gone)
        keep_links = links[keep]
        del keep_links[gone], gone_links[keep]
        for other, other_stats in gone_links.items():
            merged = keep_links.get(other)
            if merged is None:
                keep_links[other] = merged = [0, 0]
                links[other][keep] = merged
            merged[0] += other_stats[0]
            merged[1] += other_stats[1]
            del links[other][gone]
        for other, other_stats in keep_links.items():
            low, high = (keep, other) if keep < other else (other, keep)
            heapq.heappush(heap, (-mean(keep, other, other_stats), low, high))
        merges += 1
    for root, records in content.items():
        label[records] = root
    return merges


def cluster_records(
    parties: Sequence[PartyRecords],
    party_pairs: Sequence[PartyPairs],
    settings: ClusterSettings,
) -> Solution:
    """Clusters of people from scored pairs (see the module docstring). ``party_pairs`` index
    into ``parties``; the solution's arrays follow ``parties``' order."""
    problem = _problem(parties, party_pairs, settings)
    records = problem.records
    label = np.arange(records, dtype=np.int64)
    positive = problem.evidence >= 0
    root = _components(records, problem.first[positive], problem.second[positive])
    counts = np.bincount(root, minlength=records)
    merges = 0
    # Two-record components: their one pair is positive, so they merge.
    pair_rows = positive & (counts[root[problem.first]] == 2)
    label[problem.second[pair_rows]] = problem.first[pair_rows]
    merges += int(pair_rows.sum())
    # Larger components: every pair inside them (negative ones too), grouped by component.
    big = counts[root[problem.first]] >= 3
    big &= root[problem.first] == root[problem.second]
    rows = np.flatnonzero(big)
    if len(rows):
        component = root[problem.first[rows]]
        order = np.argsort(component, kind="stable")
        rows, component = rows[order], component[order]
        starts = np.flatnonzero(np.r_[True, component[1:] != component[:-1]])
        ends = np.r_[starts[1:], len(rows)]
        big_roots = np.flatnonzero(counts >= 3)
        member_order = np.argsort(root, kind="stable")
        member_starts = np.searchsorted(root[member_order], big_roots)
        member_of = {
            int(component_root): member_order[start : start + counts[component_root]].tolist()
            for component_root, start in zip(big_roots.tolist(), member_starts.tolist(), strict=True)
        }  # fmt: skip
        for start, end in zip(starts.tolist(), ends.tolist(), strict=True):
            chosen = rows[start:end]
            merges += _merge_component(
                member_of[int(component[start])],
                problem.first[chosen],
                problem.second[chosen],
                problem.evidence[chosen],
                problem.clean_party,
                problem.penalty,
                settings,
                label,
            )
    return _solution(problem, label, merges)


# -- reference ----------------------------------------------------------------------------


def reference_cluster_records(
    parties: Sequence[PartyRecords],
    party_pairs: Sequence[PartyPairs],
    settings: ClusterSettings,
) -> Solution:
    """The slow, obvious twin of :func:`cluster_records`: before every merge, the evidence
    of every pair of clusters is summed again from the pairs, and the allowed pair with the
    highest mean (ties: least record numbers) merges if its sum is at least zero."""
    problem = _problem(parties, party_pairs, settings)
    evidence = {
        (a, b): value
        for a, b, value in zip(
            problem.first.tolist(), problem.second.tolist(), problem.evidence.tolist(),
            strict=True,
        )
    }  # fmt: skip
    clusters: list[list[int]] = [[record] for record in range(problem.records)]
    merges = 0
    while True:
        best: tuple[float, int, int, int, int] | None = None  # (-mean, ids..., indices)
        for i in range(len(clusters)):
            for j in range(i + 1, len(clusters)):
                one, other = clusters[i], clusters[j]
                total = 0
                for a in one:
                    for b in other:
                        pair = (min(a, b), max(a, b))
                        total += evidence.get(pair, -problem.penalty)
                if total < 0:
                    continue
                one_clean = {int(problem.clean_party[r]) for r in one} - {-1}
                other_clean = {int(problem.clean_party[r]) for r in other} - {-1}
                if one_clean & other_clean:
                    continue
                low, high = sorted((min(one), min(other)))
                candidate = (-total / (len(one) * len(other)), low, high, i, j)
                if best is None or candidate[:3] < best[:3]:
                    best = candidate
        if best is None:
            break
        _, _, _, i, j = best
        if len(clusters[i]) + len(clusters[j]) > settings.max_cluster_size:
            raise _too_big(settings)
        clusters[i] = clusters[i] + clusters[j]
        del clusters[j]
        merges += 1
    label = np.empty(problem.records, np.int64)
    for members in clusters:
        label[members] = min(members)
    return _solution(problem, label, merges)
