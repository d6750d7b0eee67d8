"""Per-group similarities of candidate pairs: what missing and identical groups look like.
The per-pair kernel itself is ``similarity.group_counts``, property-tested against its
reference twin in test_similarity.py."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from linkage_unit.group_similarity import (
    agreement_bits,
    group_popcounts,
    group_similarities,
    reference_scores,
)
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


@given(
    layout=clk_layouts(hardened=True),
    seed=st.integers(0, 2**32 - 1),
    sizes=st.tuples(st.integers(1, 20), st.integers(1, 20)),
    pairs=st.integers(0, 40),
    density=st.sampled_from([0.0, 0.05, 0.5, 0.95]),
)
def test_group_scores_agree_with_the_bit_by_bit_reference(
    layout: ClkLayout, seed: int, sizes: tuple[int, int], pairs: int, density: float
) -> None:
    """Dice for plain groups, the share of agreeing bits for diffused ones: the vectorised
    scores against the plain-Python twin, on layouts of every hardening."""
    generator = np.random.default_rng(seed)
    left = random_clks(generator, sizes[0], words=layout.total_words, density=density)
    right = random_clks(generator, sizes[1], words=layout.total_words, density=density)
    if sizes[0] > 1 and len(layout.groups) > 1:  # a group missing on one side
        start, stop = layout.word_range(0)
        left[0, start:stop] = 0
    rows = generator.integers(0, sizes[0], pairs)
    cols = generator.integers(0, sizes[1], pairs)
    fast = group_similarities(left, right, rows, cols, layout, workers=1).scores(
        agreement_bits(layout)
    )
    slow = reference_scores(left, right, rows.tolist(), cols.tolist(), layout)
    np.testing.assert_allclose(fast, np.array(slow).reshape(fast.shape), rtol=0, atol=1e-12)


def test_diffused_groups_are_compared_by_agreement_plain_ones_by_dice() -> None:
    layout = ClkLayout(
        groups=(
            GroupLayout(name="plain", bits=64),
            GroupLayout(name="folded", bits=64, hardening="xor-fold"),
            GroupLayout(name="diffused", bits=128, hardening="nonlinear-diffusion:width=3,output_bits=128"),
            GroupLayout(name="rule", bits=64, hardening="rule90"),
        )
    )  # fmt: skip
    assert agreement_bits(layout) == (0, 0, 128, 64)
    # Two records that differ in one bit of each group: 32 of 64 (or 64 of 128) bits set.
    left = np.array([[0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF]], np.uint64)
    right = left.copy()
    right[0, [0, 1, 2, 4]] ^= np.uint64(1)
    scores = group_similarities(left, right, [0], [0], layout).scores(agreement_bits(layout))
    assert scores[0, 0] == pytest.approx(2 * 31 / 63)  # Dice
    assert scores[0, 1] == pytest.approx(2 * 31 / 63)  # xor-fold keeps Dice
    assert scores[0, 2] == pytest.approx(1 - 1 / 128) and scores[0, 3] == pytest.approx(1 - 1 / 64)
    with pytest.raises(MatchingError):
        group_similarities(left, right, [0], [0], layout).scores([0, 0])
