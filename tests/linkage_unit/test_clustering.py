"""Clustering: the fast path against its twin, the constraints, invariance to party and pair
order, resistance to chaining, and the cluster-size cap."""

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
from tests.strategies import CLUSTERING_THRESHOLD, clustering_problems

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
