"""Clustering: the solve stage when a party may hold several records of one person
(block -> compare -> **cluster**).

Input: every party's name, record count and whether it is *deduplicated* (its extract may
hold several records of one person), and scored pairs between or within parties (pairs
within a party only for a deduplicated one). Output: one cluster id per record, one cluster
per person. A cluster holds any number of records of a deduplicated party and at most one
of a duplicate-free party.

Two stages, "deduplicate, then link":

1. **Deduplicate.** Each deduplicated party is clustered alone, from the pairs within it
   and nothing else, at its own cut (``PartyRecords.own_threshold``, else the settings'
   threshold). Which of a party's records share a link key is fixed here.
2. **Link.** The party clusters (a duplicate-free party's records are clusters of one) are
   joined across parties from the pairs between parties, at most one cluster of each party
   per person. Stage 2 never splits a party cluster and never joins two clusters of one
   party.

Why two stages: a party is told which of its records share a key. If cross-party evidence
could join two of MoJ's records (a DfE record matching both while their own pair is too
weak), MoJ could submit two deliberately half-matching probes of one person (name right and
date wrong, date right and name wrong) and learn from their keys whether that person is in
DfE's extract: a membership oracle. Here a party's partition of its own records is a
function of its own pairs and its own cut only; nothing another party uploads can change it
(a Hypothesis property checks exactly that). The cost in accuracy is measured in
docs/quality.md.

Both stages are average-linkage agglomeration with a cut, a greedy form of correlation
clustering. Every pair of records carries evidence ``score - cut`` (positive: alike enough
to be one person); a pair that was never scored (blocking or the compare stage left it out,
because it scores below the cut) counts as ``-unscored_margin``. Two clusters may merge when
the summed evidence over every pair of their records is at least zero, i.e. their mean cross
score, unscored pairs counting as ``cut - unscored_margin``, reaches the cut. The pair of
clusters with the highest mean merges first, until no allowed merge is left. In stage 2 a
merge that would put two clusters of one party together is never made (such a merge stays
forbidden, so it is dropped for good).

Why average linkage: one false pair above the cut joins two people under connected
components, and a chain of near neighbours joins many. Here a record joins a cluster only
if it is, on average, as close to all of its records as the cut asks: a namesake who matches
one of a person's records and none of the others stays apart. In stage 2 the same rule
scores a pair of party clusters from every record pair between them, so a person's other
records count too (measured against the best single pair in docs/quality.md).

Scores are generic: Dice coefficients with the Dice threshold, or match probabilities with a
probability cut; ``unscored_margin`` is in the same units.

Determinism: evidence is turned into integers (``score - cut`` in units of 2^-24, exact to
float32) so sums never depend on their order; records are numbered with the parties sorted
by name, so another party order or pair order gives the same partition; ties go to the pair
of clusters with the smaller least record number. A party's own records keep their relative
numbers whatever the other parties are, so stage 1's ties do not depend on them either. A
run restarted on the same pairs gives the same clusters.

Fast path (:func:`cluster_records`): only a pair at or above its cut can start a merge, so
the clusters split into the connected components of such pairs and each is solved alone;
in a component of two, the one merge is decided at once, larger ones go through a heap of
cluster pairs. Its slow, obvious twin (:func:`reference_cluster_records`) runs the stages
literally, one party at a time, recomputing every cluster pair's evidence from the record
pairs before each merge.

A stage-1 merge that would give one party more than ``max_cluster_size`` records of one
person fails the run with :class:`MatchingError`: a cluster that big is placeholder records
("unknown", 01/01/1900) or a broken extract chaining people together, not one person, and
no key is issued for it. The cap counts one party's records, so whether a run fails depends
only on each party's own records (a cap on whole clusters would be an oracle again: fill a
cluster to the cap and see whether a match from another party tips it over). Stage 2 adds at
most one cluster of each other party, so a person holds at most ``parties x cap`` records.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Sequence
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
    hold several records of one person. ``own_threshold``: the cut for pairs within this
    (deduplicated) party, its stage-1 clustering; None: the settings' threshold. For the
    party's partition to depend on its own records only, choose it from them alone."""

    name: str
    size: int
    deduplicated: bool
    own_threshold: float | None = None

    def __post_init__(self) -> None:
        if self.size < 0:
            raise MatchingError("a party's record count must be >= 0")
        if self.own_threshold is not None:
            if not self.deduplicated:
                raise MatchingError("only a deduplicated party has a cut for its own pairs")
            if not np.isfinite(self.own_threshold):
                raise MatchingError("a party's own clustering cut must be a finite number")


@dataclass(frozen=True, slots=True, kw_only=True)
class ClusterSettings:
    """``threshold``: a pair scoring at least this is evidence for one person.
    ``unscored_margin``: how far below the cut a pair that was never scored counts.
    ``max_cluster_size``: the most records of one party one person's cluster may hold
    before the run fails."""

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
    pair, integer evidence (against the pair's cut), sorted by (first, second)."""

    records: int
    first: npt.NDArray[np.int64]
    second: npt.NDArray[np.int64]
    evidence: npt.NDArray[np.int64]
    party: npt.NDArray[np.int64]  # per record: its party's rank (parties sorted by name)
    deduplicated: tuple[bool, ...]  # per rank
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
    party = np.empty(records, np.int64)
    for rank, index in enumerate(by_name):
        start = canonical_offset[index]
        canonical[start : start + sizes[index]] = caller_offset[index] + np.arange(sizes[index])
        party[start : start + sizes[index]] = rank
    firsts, seconds, evidences = [], [], []
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
        score = np.asarray(pairs.scores, dtype=np.float64)
        if not np.isfinite(score).all():
            raise MatchingError("pair scores must be finite numbers")
        own = parties[left_party].own_threshold if left_party == right_party else None
        cut = float(settings.threshold if own is None else own)
        a = pairs.left.astype(np.int64) + canonical_offset[left_party]
        b = pairs.right.astype(np.int64) + canonical_offset[right_party]
        keep = a != b  # a record paired with itself says nothing
        firsts.append(np.minimum(a, b)[keep])
        seconds.append(np.maximum(a, b)[keep])
        evidences.append(np.rint((score[keep] - cut) * _SCALE).astype(np.int64))
    if firsts:
        first = np.concatenate(firsts)
        second = np.concatenate(seconds)
        evidence = np.concatenate(evidences)
    else:
        first = second = evidence = np.empty(0, np.int64)
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
        party=party,
        deduplicated=tuple(parties[index].deduplicated for index in by_name),
        penalty=int(round(settings.unscored_margin * _SCALE)),
        canonical=canonical,
        sizes=sizes,
    )


def _too_big(settings: ClusterSettings) -> MatchingError:
    return MatchingError(
        f"clustering would put more than {settings.max_cluster_size} records (the project's "
        "cap) of one party into one person's cluster; such a cluster is usually placeholder "
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


@dataclass(frozen=True, slots=True, kw_only=True)
class _Links:
    """Evidence between nodes (records in stage 1, party clusters named by their least
    record number in stage 2): one row per pair of nodes, ``first < second``, with the
    evidence summed over their record pairs, how many of those pairs were scored, and
    whether any of them is at or above its cut (only such a pair can start a merge)."""

    first: npt.NDArray[np.int64]
    second: npt.NDArray[np.int64]
    total: npt.NDArray[np.int64]
    scored: npt.NDArray[np.int64]
    positive: npt.NDArray[np.bool_]


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
    links: _Links,
    rows: npt.NDArray[np.int64],
    size_of: npt.NDArray[np.int64],
    mask_of: Callable[[int], int],
    penalty: int,
    cap: int | None,
    settings: ClusterSettings,
    root: npt.NDArray[np.int64],
) -> int:
    """Average linkage over one component's nodes; writes ``root``; returns merges."""
    size = {node: int(size_of[node]) for node in members}
    clean = {node: mask_of(node) for node in members}
    content = {node: [node] for node in members}
    # table[c][d] is table[d][c], one shared list: [summed evidence, number of scored pairs]
    table: dict[int, dict[int, list[int]]] = {node: {} for node in members}
    for a, b, total, scored in zip(
        links.first[rows].tolist(), links.second[rows].tolist(), links.total[rows].tolist(),
        links.scored[rows].tolist(), strict=True,
    ):  # fmt: skip
        table[a][b] = table[b][a] = [total, scored]

    def mean(a: int, b: int, stats: list[int]) -> float:
        pairs = size[a] * size[b]
        return (stats[0] - penalty * (pairs - stats[1])) / pairs

    heap = [(-mean(a, b, stats), a, b) for a in members for b, stats in table[a].items() if a < b]
    heapq.heapify(heap)
    merges = 0
    while heap:
        negative, a, b = heapq.heappop(heap)
        if a not in size or b not in size:
            continue  # one side was merged away since this entry was pushed
        stats = table[a].get(b)
        if stats is None:
            continue  # dropped: both hold a cluster of one party
        value = mean(a, b, stats)
        if value != -negative:
            continue  # stale: a fresher entry for this pair is in the heap
        if value < 0:
            break
        if clean[a] & clean[b]:
            del table[a][b], table[b][a]  # both hold a cluster of one party: never
            continue
        if cap is not None and size[a] + size[b] > cap:
            raise _too_big(settings)
        keep, gone = a, b  # a < b: the cluster keeps its least record number
        size[keep] += size.pop(gone)
        clean[keep] |= clean.pop(gone)
        content[keep].extend(content.pop(gone))
        gone_links = table.pop(gone)
        keep_links = table[keep]
        del keep_links[gone], gone_links[keep]
        for other, other_stats in gone_links.items():
            merged = keep_links.get(other)
            if merged is None:
                keep_links[other] = merged = [0, 0]
                table[other][keep] = merged
            merged[0] += other_stats[0]
            merged[1] += other_stats[1]
            del table[other][gone]
        for other, other_stats in keep_links.items():
            low, high = (keep, other) if keep < other else (other, keep)
            heapq.heappush(heap, (-mean(keep, other, other_stats), low, high))
        merges += 1
    for node, nodes in content.items():
        root[nodes] = node
    return merges


def _agglomerate(
    records: int,
    links: _Links,
    size_of: npt.NDArray[np.int64],
    mask_of: Callable[[int], int],
    penalty: int,
    cap: int | None,
    settings: ClusterSettings,
) -> tuple[npt.NDArray[np.int64], int]:
    """Average linkage over nodes numbered below ``records`` (any number not in ``links``
    stays alone): each node's final root (the least node of its cluster), and the merges."""
    root = np.arange(records, dtype=np.int64)
    component = _components(records, links.first[links.positive], links.second[links.positive])
    counts = np.bincount(component, minlength=records)
    of_row = component[links.first]
    inside = component[links.second] == of_row
    merges = 0
    # Components of two nodes: one pair of clusters, one decision.
    two = np.flatnonzero(inside & (counts[of_row] == 2))
    if len(two):
        a, b = links.first[two], links.second[two]
        pairs = size_of[a] * size_of[b]
        agree = links.total[two] - penalty * (pairs - links.scored[two]) >= 0
        allowed = np.array(
            [mask_of(x) & mask_of(y) == 0 for x, y in zip(a.tolist(), b.tolist(), strict=True)],
            dtype=bool,
        )
        chosen = agree & allowed
        if cap is not None and bool((size_of[a] + size_of[b] > cap)[chosen].any()):
            raise _too_big(settings)
        root[b[chosen]] = a[chosen]
        merges += int(chosen.sum())
    # Larger components: every link inside them (negative ones too), grouped by component.
    rows = np.flatnonzero(inside & (counts[of_row] >= 3))
    if len(rows):
        order = np.argsort(of_row[rows], kind="stable")
        rows = rows[order]
        grouped = of_row[rows]
        starts = np.flatnonzero(np.r_[True, grouped[1:] != grouped[:-1]])
        ends = np.r_[starts[1:], len(rows)]
        big_roots = np.flatnonzero(counts >= 3)
        member_order = np.argsort(component, kind="stable")
        member_starts = np.searchsorted(component[member_order], big_roots)
        member_of = {
            int(component_root): member_order[start : start + counts[component_root]].tolist()
            for component_root, start in zip(big_roots.tolist(), member_starts.tolist(), strict=True)
        }  # fmt: skip
        for start, end in zip(starts.tolist(), ends.tolist(), strict=True):
            merges += _merge_component(
                member_of[int(grouped[start])], links, rows[start:end], size_of, mask_of,
                penalty, cap, settings, root,
            )  # fmt: skip
    return root, merges


def _record_links(
    first: npt.NDArray[np.int64], second: npt.NDArray[np.int64], evidence: npt.NDArray[np.int64]
) -> _Links:
    return _Links(
        first=first,
        second=second,
        total=evidence,
        scored=np.ones(len(first), np.int64),
        positive=evidence >= 0,
    )


def _cluster_links(
    stage_one: npt.NDArray[np.int64],
    first: npt.NDArray[np.int64],
    second: npt.NDArray[np.int64],
    evidence: npt.NDArray[np.int64],
) -> _Links:
    """Record pairs between parties -> links between party clusters (named by roots)."""
    a, b = stage_one[first], stage_one[second]
    low, high = np.minimum(a, b), np.maximum(a, b)
    order = np.lexsort((high, low))
    low, high, value = low[order], high[order], evidence[order]
    if len(low) == 0:
        return _record_links(low, high, value)
    starts = np.flatnonzero(np.r_[True, (low[1:] != low[:-1]) | (high[1:] != high[:-1])])
    return _Links(
        first=low[starts],
        second=high[starts],
        total=np.add.reduceat(value, starts),
        scored=np.diff(np.r_[starts, len(low)]).astype(np.int64),
        positive=np.maximum.reduceat(value, starts) >= 0,
    )


def cluster_records(
    parties: Sequence[PartyRecords],
    party_pairs: Sequence[PartyPairs],
    settings: ClusterSettings,
) -> Solution:
    """Clusters of people from scored pairs (see the module docstring). ``party_pairs`` index
    into ``parties``; the solution's arrays follow ``parties``' order."""
    problem = _problem(parties, party_pairs, settings)
    records = problem.records
    within = problem.party[problem.first] == problem.party[problem.second]
    # Stage 1: pairs within a party never reach another party's records, so one pass over
    # all of them clusters each deduplicated party alone.
    stage_one, merges = _agglomerate(
        records,
        _record_links(problem.first[within], problem.second[within], problem.evidence[within]),
        np.ones(records, np.int64),
        lambda node: 0,
        problem.penalty,
        settings.max_cluster_size,
        settings,
    )
    # Stage 2: party clusters, sized in records, at most one of each party per person.
    party = problem.party.tolist()
    across = ~within
    label, linked = _agglomerate(
        records,
        _cluster_links(
            stage_one, problem.first[across], problem.second[across], problem.evidence[across]
        ),
        np.bincount(stage_one, minlength=records).astype(np.int64),
        lambda node: 1 << party[node],
        problem.penalty,
        None,
        settings,
    )
    return _solution(problem, label[stage_one], merges + linked)


# -- reference ----------------------------------------------------------------------------


def _reference_average_linkage(
    clusters: list[list[int]],
    evidence: dict[tuple[int, int], int],
    penalty: int,
    party_of: Callable[[int], int] | None,
    cap: int | None,
    settings: ClusterSettings,
) -> tuple[list[list[int]], int]:
    """Before every merge, sum the evidence of every pair of clusters again from the record
    pairs; the allowed pair with the highest mean (ties: least record numbers) merges if its
    sum is at least zero. ``party_of``: two clusters holding one party's records may not
    merge (None: no such rule)."""
    clusters = [list(members) for members in clusters]
    merges = 0
    while True:
        best: tuple[float, int, int, int, int] | None = None  # (-mean, ids..., indices)
        for i in range(len(clusters)):
            for j in range(i + 1, len(clusters)):
                one, other = clusters[i], clusters[j]
                total = 0
                for a in one:
                    for b in other:
                        total += evidence.get((min(a, b), max(a, b)), -penalty)
                if total < 0:
                    continue
                if party_of is not None and {party_of(r) for r in one} & {
                    party_of(r) for r in other
                }:
                    continue
                low, high = sorted((min(one), min(other)))
                candidate = (-total / (len(one) * len(other)), low, high, i, j)
                if best is None or candidate[:3] < best[:3]:
                    best = candidate
        if best is None:
            return clusters, merges
        _, _, _, i, j = best
        if cap is not None and len(clusters[i]) + len(clusters[j]) > cap:
            raise _too_big(settings)
        clusters[i] = clusters[i] + clusters[j]
        del clusters[j]
        merges += 1


def reference_cluster_records(
    parties: Sequence[PartyRecords],
    party_pairs: Sequence[PartyPairs],
    settings: ClusterSettings,
) -> Solution:
    """The slow, obvious twin of :func:`cluster_records`: stage 1 party by party, each from
    its own pairs only, then stage 2 over all party clusters from the pairs between parties,
    both re-summing every cluster pair's evidence before each merge."""
    problem = _problem(parties, party_pairs, settings)
    party = problem.party.tolist()
    evidence = {
        (a, b): value
        for a, b, value in zip(
            problem.first.tolist(), problem.second.tolist(), problem.evidence.tolist(),
            strict=True,
        )
    }  # fmt: skip
    merges = 0
    party_clusters: list[list[int]] = []
    for rank, deduplicated in enumerate(problem.deduplicated):
        own_records = [record for record in range(problem.records) if party[record] == rank]
        singletons = [[record] for record in own_records]
        if not deduplicated:
            party_clusters += singletons
            continue
        own_pairs = {
            pair: value
            for pair, value in evidence.items()
            if party[pair[0]] == rank and party[pair[1]] == rank
        }
        clusters, made = _reference_average_linkage(
            singletons, own_pairs, problem.penalty, None, settings.max_cluster_size, settings
        )
        party_clusters += clusters
        merges += made
    across = {pair: value for pair, value in evidence.items() if party[pair[0]] != party[pair[1]]}
    people, made = _reference_average_linkage(
        party_clusters, across, problem.penalty, party.__getitem__, None, settings
    )
    label = np.empty(problem.records, np.int64)
    for members in people:
        label[members] = min(members)
    return _solution(problem, label, merges + made)
