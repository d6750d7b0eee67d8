"""Per-group similarities of candidate pairs: what missing and identical groups look like.
The per-pair kernel itself is ``similarity.group_counts``, property-tested against its
reference twin in test_similarity.py."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from linkage_unit.group_similarity import group_popcounts, group_similarities
from protocol.clk_layout import ClkLayout, GroupLayout
from protocol.errors import MatchingError
from tests.strategies import clk_layouts, random_clks


@given(
    layout=clk_layouts(),
    seed=st.integers(0, 2**32 - 1),
    sizes=st.tuples(st.integers(1, 30), st.integers(1, 30)),
    pairs=st.integers(0, 80),
    density=st.sampled_from([0.0, 0.05, 0.4, 0.95]),
)
def test_groups_partition_each_pair_and_record(
    layout: ClkLayout, seed: int, sizes: tuple[int, int], pairs: int, density: float
) -> None:
    generator = np.random.default_rng(seed)
    left = random_clks(generator, sizes[0], words=layout.total_words, density=density)
    right = random_clks(generator, sizes[1], words=layout.total_words, density=density)
    rows = generator.integers(0, sizes[0], pairs)
    cols = generator.integers(0, sizes[1], pairs)
    similarities = group_similarities(left, right, rows, cols, layout, workers=1)
    # The groups partition the record: their counts add up to the record's.
    whole = np.bitwise_count(left[rows] & right[cols]).sum(axis=1)
    np.testing.assert_array_equal(similarities.shared.sum(axis=1), whole)
    np.testing.assert_array_equal(similarities.left_counts, group_popcounts(left, layout)[rows])
    np.testing.assert_array_equal(
        similarities.right_counts.sum(axis=1), np.bitwise_count(right[cols]).sum(axis=1)
    )


def test_missing_identical_and_dice() -> None:
    layout = ClkLayout(
        groups=(GroupLayout(name="name", bits=128), GroupLayout(name="dob", bits=64))
    )
    generator = np.random.default_rng(5)
    left = random_clks(generator, 3, words=3, density=0.3)
    right = left.copy()
    right[1, 2] = 0  # record 1: the date group missing on the right
    right[2, 0] ^= np.uint64(1)  # record 2: one name bit differs
    similarities = group_similarities(left, right, [0, 1, 2], [0, 1, 2], layout)
    assert similarities.identical.tolist() == [[True, True], [True, False], [False, True]]
    assert similarities.missing.tolist() == [[False, False], [False, True], [False, False]]
    dice = similarities.dice()
    assert dice[0].tolist() == [1.0, 1.0] and dice[1, 1] == 0.0 and 0.95 < dice[2, 0] < 1.0
    counts = group_popcounts(right, layout)
    assert counts[1, 1] == 0 and counts.sum() == np.bitwise_count(right).sum()


def test_bad_inputs_are_refused() -> None:
    layout = ClkLayout(groups=(GroupLayout(name="a", bits=64), GroupLayout(name="b", bits=64)))
    clks = random_clks(np.random.default_rng(1), 4, words=2)
    with pytest.raises(MatchingError, match="layout"):
        group_similarities(clks[:, :1].copy(), clks, [0], [0], layout)
    with pytest.raises(MatchingError, match="outside"):
        group_similarities(clks, clks, [4], [0], layout)
    with pytest.raises(MatchingError, match="same length"):
        group_similarities(clks, clks, [0, 1], [0], layout)
    empty = np.empty((0, 2), np.uint64)
    assert len(group_similarities(empty, clks, [], [], layout)) == 0
    with pytest.raises(MatchingError, match="outside"):
        group_similarities(empty, clks, [0], [0], layout)
