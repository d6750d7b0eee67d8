"""Solving: the compiled one-to-one greedy against its twin (clustering: test_clustering.py)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from linkage_unit.similarity import CandidatePairs
from linkage_unit.solving import (
    PartyPairs,
    reference_solve_linkage,
    solve_linkage,
)
from protocol.errors import MatchingError


def pairs(left, right, scores) -> CandidatePairs:
    return CandidatePairs(
        left=np.array(left, np.int64), right=np.array(right, np.int64),
        scores=np.array(scores, np.float32), comparisons=0,
    )  # fmt: skip


@st.composite
def problems(draw):
    sizes = draw(st.lists(st.integers(0, 6), min_size=2, max_size=4))
    items = []
    for i in range(len(sizes)):
        for j in range(i + 1, len(sizes)):
            if sizes[i] and sizes[j]:
                edges = draw(
                    st.lists(
                        st.tuples(
                            st.integers(0, sizes[i] - 1), st.integers(0, sizes[j] - 1),
                            st.sampled_from([0.8, 0.85, 0.9, 1.0]),  # ties are common
                        ),
                        unique_by=lambda e: (e[0], e[1]), max_size=12,
                    )
                )  # fmt: skip
                items.append(
                    PartyPairs(
                        left_party=i,
                        right_party=j,
                        pairs=pairs(*zip(*edges, strict=False))
                        if edges
                        else CandidatePairs.empty(),
                    )
                )
    return sizes, items


@given(problems())
def test_fast_greedy_equals_reference(problem) -> None:
    sizes, items = problem
    fast, slow = solve_linkage(sizes, items), reference_solve_linkage(sizes, items)
    for a, b in zip(fast.clusters, slow.clusters, strict=True):
        np.testing.assert_array_equal(a, b)
    assert fast.accepted_pairs == slow.accepted_pairs


@given(problems())
def test_at_most_one_record_per_party_per_cluster(problem) -> None:
    sizes, items = problem
    solution = solve_linkage(sizes, items)
    for ids in solution.clusters:
        assert len(np.unique(ids)) == len(ids)
    assert solution.cluster_count == len(np.unique(np.concatenate(solution.clusters)))


def test_two_party_greedy_takes_the_best_pair_first_and_breaks_ties_by_position() -> None:
    # Left 0 prefers right 1 (0.95); left 1 then only gets right 0. Tie at 0.9: left 2 wins.
    items = [PartyPairs(left_party=0, right_party=1, pairs=pairs(
        [0, 0, 1, 1, 2, 3], [0, 1, 1, 0, 2, 2], [0.9, 0.95, 0.94, 0.85, 0.9, 0.9]))]  # fmt: skip
    solution = solve_linkage([4, 3], items)
    left, right = solution.clusters
    assert left[0] == right[1] and left[1] == right[0] and left[2] == right[2]
    assert left[3] not in right


def test_multi_party_merge_refuses_a_second_record_of_a_party() -> None:
    items = [
        PartyPairs(left_party=0, right_party=1, pairs=pairs([0], [0], [0.99])),
        PartyPairs(left_party=1, right_party=2, pairs=pairs([0], [0], [0.98])),
        PartyPairs(left_party=0, right_party=2, pairs=pairs([1], [0], [0.97])),
    ]
    a, b, c = solve_linkage([2, 1, 1], items).clusters
    assert a[0] == b[0] == c[0] and a[1] != a[0]


def test_records_without_pairs_get_their_own_cluster_and_empty_parties_work() -> None:
    solution = solve_linkage([3, 0], [])
    assert solution.cluster_count == 3
    assert list(solution.clusters[0]) == [0, 1, 2] and len(solution.clusters[1]) == 0


def test_bad_inputs_are_refused() -> None:
    with pytest.raises(MatchingError, match="outside its party"):
        solve_linkage(
            [1, 1], [PartyPairs(left_party=0, right_party=1, pairs=pairs([0], [5], [0.9]))]
        )
    with pytest.raises(MatchingError, match="within one party"):
        solve_linkage([2], [PartyPairs(left_party=0, right_party=0, pairs=pairs([0], [1], [0.9]))])
