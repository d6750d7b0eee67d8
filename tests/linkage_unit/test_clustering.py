"""Clustering: the fast path against its twin, the constraints, invariance to party and pair
order, a party's own partition depending on its own pairs only, resistance to chaining, and
the cluster-size cap."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from linkage_unit.clustering import (
    ClusterSettings,
    PartyRecords,
    cluster_records,
    reference_cluster_records,
)
from linkage_unit.similarity import CandidatePairs
from linkage_unit.solving import PartyPairs, Solution
from protocol.errors import MatchingError
from tests.strategies import CLUSTERING_THRESHOLD, clustering_problems, clustering_worlds

SETTINGS = ClusterSettings(threshold=CLUSTERING_THRESHOLD)


def pairs(left, right, scores) -> CandidatePairs:
    return CandidatePairs(
        left=np.array(left, np.int64), right=np.array(right, np.int64),
        scores=np.array(scores, np.float32), comparisons=0,
    )  # fmt: skip


def partition(parties: list[PartyRecords], solution: Solution) -> set[frozenset[tuple[str, int]]]:
    """The clusters as sets of (party name, record position): independent of numbering."""
    groups: dict[int, set[tuple[str, int]]] = {}
    for party, ids in zip(parties, solution.clusters, strict=True):
        for position, cluster in enumerate(ids.tolist()):
            groups.setdefault(cluster, set()).add((party.name, position))
    return {frozenset(group) for group in groups.values()}


def outcome(parties, items, settings=SETTINGS):
    """A solution's partition and merge count, or the error message (for the cap)."""
    try:
        solution = cluster_records(parties, items, settings)
    except MatchingError as error:
        return ("error", error.message)
    return partition(parties, solution), solution.accepted_pairs


@given(clustering_problems(), st.sampled_from([2, 3, 1000]))
def test_fast_path_agrees_with_the_reference(problem, cap) -> None:
    parties, items = problem
    settings = ClusterSettings(threshold=CLUSTERING_THRESHOLD, max_cluster_size=cap)
    try:
        slow = reference_cluster_records(parties, items, settings)
    except MatchingError as error:
        assert outcome(parties, items, settings) == ("error", error.message)
        return
    fast = cluster_records(parties, items, settings)
    for a, b in zip(fast.clusters, slow.clusters, strict=True):
        np.testing.assert_array_equal(a, b)
    assert (fast.cluster_count, fast.accepted_pairs) == (slow.cluster_count, slow.accepted_pairs)


@given(clustering_problems())
def test_a_cluster_holds_at_most_one_record_of_each_duplicate_free_party(problem) -> None:
    parties, items = problem
    solution = cluster_records(parties, items, SETTINGS)
    for party, ids in zip(parties, solution.clusters, strict=True):
        assert len(ids) == party.size
        if not party.deduplicated:
            assert len(np.unique(ids)) == len(ids)
    every = np.concatenate([*solution.clusters, np.empty(0, np.int64)])
    assert solution.cluster_count == len(np.unique(every))
    if len(every):
        assert sorted(np.unique(every)) == list(range(solution.cluster_count))


@given(clustering_problems(), st.randoms(use_true_random=False))
def test_party_order_and_pair_order_do_not_change_the_clusters(problem, random) -> None:
    parties, items = problem
    order = list(range(len(parties)))
    random.shuffle(order)
    new_index = {old: new for new, old in enumerate(order)}
    shuffled_parties = [parties[old] for old in order]
    shuffled_items = []
    for item in items:
        rows = list(range(len(item.pairs)))
        random.shuffle(rows)
        left, right = item.pairs.left[rows], item.pairs.right[rows]
        left_party, right_party = new_index[item.left_party], new_index[item.right_party]
        if random.random() < 0.5:  # the same pairs, named from the other side
            left, right, left_party, right_party = right, left, right_party, left_party
        shuffled_items.append(
            PartyPairs(
                left_party=left_party,
                right_party=right_party,
                pairs=CandidatePairs(
                    left=left, right=right, scores=item.pairs.scores[rows], comparisons=0
                ),
            )
        )
    random.shuffle(shuffled_items)
    assert outcome(shuffled_parties, shuffled_items) == outcome(parties, items)


def own_partition(ids: np.ndarray) -> set[frozenset[int]]:
    """Which of one party's records share a cluster (so a link key): what the party sees."""
    groups: dict[int, set[int]] = {}
    for position, cluster in enumerate(ids.tolist()):
        groups.setdefault(cluster, set()).add(position)
    return {frozenset(group) for group in groups.values()}


@given(clustering_worlds())
def test_a_partys_own_partition_depends_on_its_own_pairs_only(worlds) -> None:
    # Two worlds share one deduplicated party and its pairs within itself; everything else
    # (other parties, their pairs, every pair across parties) differs. What the party sees
    # of the result, which of its records share a key, must not.
    first_parties, first_pairs, second_parties, second_pairs = worlds
    for solve in (cluster_records, reference_cluster_records):
        seen = [
            own_partition(solve(parties, items, SETTINGS).clusters[0])
            for parties, items in ((first_parties, first_pairs), (second_parties, second_pairs))
        ]
        assert seen[0] == seen[1]
        alone = solve(
            first_parties[:1],
            [i for i in first_pairs if i.left_party == 0 == i.right_party],
            SETTINGS,
        )
        assert own_partition(alone.clusters[0]) == seen[0]


@given(clustering_problems(), st.sampled_from([2, 3]))
def test_whether_the_cap_fails_a_run_depends_on_each_partys_own_pairs(problem, cap) -> None:
    # The cap counts one party's records: a run fails exactly when some party, clustered
    # alone from its own pairs, fails; records of other parties never tip a cluster over.
    parties, items = problem
    settings = ClusterSettings(threshold=CLUSTERING_THRESHOLD, max_cluster_size=cap)

    def fails(solve, chosen, chosen_items) -> bool:
        try:
            solve(chosen, chosen_items, settings)
        except MatchingError:
            return True
        return False

    alone = [
        fails(
            cluster_records,
            [party],
            [
                PartyPairs(left_party=0, right_party=0, pairs=item.pairs)
                for item in items
                if item.left_party == index == item.right_party
            ],
        )
        for index, party in enumerate(parties)
    ]
    assert fails(cluster_records, parties, items) == any(alone)
    assert fails(reference_cluster_records, parties, items) == any(alone)


def test_a_bridging_record_never_joins_two_records_of_a_deduplicated_party() -> None:
    # The membership probe: MoJ 0 (name right, date wrong) and MoJ 1 (date right, name
    # wrong) are too unlike to be one person (their pair was not scored). DfE 0, the person
    # herself, matches both. Joined through her, MoJ would learn from its own keys that she
    # is in DfE's extract. She links to the better probe only; the probes stay apart.
    parties = [
        PartyRecords(name="moj", size=2, deduplicated=True),
        PartyRecords(name="dfe", size=1, deduplicated=False),
    ]
    items = [PartyPairs(left_party=0, right_party=1, pairs=pairs([0, 1], [0, 0], [0.84, 0.83]))]
    for solve in (cluster_records, reference_cluster_records):
        moj, dfe = solve(parties, items, SETTINGS).clusters
        assert moj[0] == dfe[0] != moj[1]
        (alone,) = solve(parties[:1], [], SETTINGS).clusters
        assert own_partition(moj) == own_partition(alone) == {frozenset({0}), frozenset({1})}


def test_a_partys_own_pairs_are_cut_at_its_own_threshold() -> None:
    # MoJ's own pair (0.78) is below MoJ's own cut (0.8) though above the cut across parties
    # (0.75); its records stay apart, while its pair with DfE (0.78) links.
    parties = [
        PartyRecords(name="moj", size=2, deduplicated=True, own_threshold=0.8),
        PartyRecords(name="dfe", size=1, deduplicated=False),
    ]
    items = [
        PartyPairs(left_party=0, right_party=0, pairs=pairs([0], [1], [0.78])),
        PartyPairs(left_party=0, right_party=1, pairs=pairs([0], [0], [0.78])),
    ]
    for solve in (cluster_records, reference_cluster_records):
        moj, dfe = solve(parties, items, SETTINGS).clusters
        assert moj[0] == dfe[0] != moj[1]
    lower = [PartyRecords(name="moj", size=2, deduplicated=True, own_threshold=0.7), parties[1]]
    moj, dfe = cluster_records(lower, items, SETTINGS).clusters
    assert moj[0] == moj[1] == dfe[0]


def test_a_person_with_three_records_is_one_cluster_but_a_chain_is_not() -> None:
    # 0-1-2 all alike (one person, three records); 3-4-5-6 only neighbours alike, and only
    # just (a chain of look-alikes, each pair above the threshold).
    one = [PartyRecords(name="moj", size=7, deduplicated=True)]
    items = [
        PartyPairs(left_party=0, right_party=0, pairs=pairs([0, 0, 1], [1, 2, 2], [0.95] * 3)),
        PartyPairs(left_party=0, right_party=0, pairs=pairs([3, 4, 5], [4, 5, 6], [0.76] * 3)),
    ]
    (ids,) = cluster_records(one, items, SETTINGS).clusters
    assert ids[0] == ids[1] == ids[2]
    assert ids[3] != ids[5] and ids[4] != ids[6] and ids[3] != ids[6]


def test_a_namesake_who_matches_one_of_a_persons_records_stays_apart() -> None:
    # moj 0 and 1 are one person (0.95); moj 2 scores 0.76 against moj 0 only: connected
    # components would join all three.
    one = [PartyRecords(name="moj", size=3, deduplicated=True)]
    items = [PartyPairs(left_party=0, right_party=0, pairs=pairs([0, 0], [1, 2], [0.95, 0.76]))]
    (ids,) = cluster_records(one, items, SETTINGS).clusters
    assert ids[0] == ids[1] != ids[2]
    # ...but joins when it is as close to both (mean cross score above the threshold).
    items = [
        PartyPairs(
            left_party=0, right_party=0, pairs=pairs([0, 0, 1], [1, 2, 2], [0.95, 0.8, 0.78])
        )
    ]
    (ids,) = cluster_records(one, items, SETTINGS).clusters
    assert ids[0] == ids[1] == ids[2]


def test_deduplicate_and_link_gives_one_cluster_per_person_across_parties() -> None:
    # MoJ 0 and 1 are one person who is DfE 0; DfE 1 also resembles MoJ 0, but DfE is
    # duplicate-free, so only the better one joins.
    parties = [
        PartyRecords(name="moj", size=3, deduplicated=True),
        PartyRecords(name="dfe", size=2, deduplicated=False),
    ]
    items = [
        PartyPairs(left_party=0, right_party=0, pairs=pairs([0], [1], [0.93])),
        PartyPairs(
            left_party=0, right_party=1, pairs=pairs([0, 1, 0], [0, 0, 1], [0.96, 0.94, 0.95])
        ),
    ]
    moj, dfe = cluster_records(parties, items, SETTINGS).clusters
    assert moj[0] == moj[1] == dfe[0]
    assert dfe[1] != dfe[0] and moj[2] not in (moj[0], dfe[1])


def test_scores_are_generic_probabilities_work_with_their_cut() -> None:
    one = [PartyRecords(name="a", size=4, deduplicated=True)]
    items = [PartyPairs(left_party=0, right_party=0, pairs=pairs([0, 2], [1, 3], [0.97, 0.2]))]
    (ids,) = cluster_records(one, items, ClusterSettings(threshold=0.5)).clusters
    assert ids[0] == ids[1] and ids[2] != ids[3]


def test_a_cluster_over_the_cap_fails_the_run_naming_the_cap_and_no_value() -> None:
    size = 12
    left, right = np.triu_indices(size, 1)
    one = [PartyRecords(name="moj", size=size, deduplicated=True)]
    items = [PartyPairs(left_party=0, right_party=0, pairs=pairs(left, right, [1.0] * len(left)))]
    settings = ClusterSettings(threshold=0.8, max_cluster_size=10)
    with pytest.raises(
        MatchingError, match="more than 10 records \\(the project's cap\\)"
    ) as caught:
        cluster_records(one, items, settings)
    assert "max-cluster-size" in caught.value.message
    with pytest.raises(MatchingError, match="more than 10 records"):
        reference_cluster_records(one, items, settings)
    (ids,) = cluster_records(
        one, items, ClusterSettings(threshold=0.8, max_cluster_size=12)
    ).clusters
    assert len(set(ids.tolist())) == 1
    # The cap counts one party's records: two of MoJ's and one of DfE's make a person of
    # three records under a cap of two.
    two = [
        PartyRecords(name="moj", size=2, deduplicated=True),
        PartyRecords(name="dfe", size=1, deduplicated=False),
    ]
    items = [
        PartyPairs(left_party=0, right_party=0, pairs=pairs([0], [1], [0.9])),
        PartyPairs(left_party=0, right_party=1, pairs=pairs([0, 1], [0, 0], [0.9, 0.9])),
    ]
    settings = ClusterSettings(threshold=0.8, max_cluster_size=2)
    for solve in (cluster_records, reference_cluster_records):
        moj, dfe = solve(two, items, settings).clusters
        assert moj[0] == moj[1] == dfe[0]


def test_bad_inputs_are_refused() -> None:
    clean = [PartyRecords(name="dfe", size=2, deduplicated=False)]
    within = [PartyPairs(left_party=0, right_party=0, pairs=pairs([0], [1], [0.9]))]
    with pytest.raises(MatchingError, match="duplicate-free party"):
        cluster_records(clean, within, SETTINGS)
    dedup = [PartyRecords(name="moj", size=2, deduplicated=True)]
    outside = [PartyPairs(left_party=0, right_party=0, pairs=pairs([0], [5], [0.9]))]
    with pytest.raises(MatchingError, match="outside its party"):
        cluster_records(dedup, outside, SETTINGS)
    twice = [dedup[0], PartyRecords(name="moj", size=1, deduplicated=False)]
    with pytest.raises(MatchingError, match="distinct"):
        cluster_records(twice, [], SETTINGS)
    with pytest.raises(MatchingError, match="unscored_margin"):
        ClusterSettings(threshold=0.8, unscored_margin=0.0)
    with pytest.raises(MatchingError, match="max_cluster_size"):
        ClusterSettings(threshold=0.8, max_cluster_size=1)
    with pytest.raises(MatchingError, match="finite"):
        cluster_records(
            dedup,
            [PartyPairs(left_party=0, right_party=0, pairs=pairs([0], [1], [np.nan]))],
            SETTINGS,
        )
    with pytest.raises(MatchingError, match="only a deduplicated party"):
        PartyRecords(name="dfe", size=2, deduplicated=False, own_threshold=0.8)
    with pytest.raises(MatchingError, match="finite"):
        PartyRecords(name="moj", size=2, deduplicated=True, own_threshold=float("inf"))
