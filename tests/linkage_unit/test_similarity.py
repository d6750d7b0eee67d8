"""The Dice kernel against its slow obvious twin, and its limits."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from linkage_unit.similarity import (
    best_scores,
    candidate_pairs,
    candidate_pairs_within,
    reference_candidate_pairs,
    required_shared,
)
from protocol.errors import MatchingError
from tests.linkage_unit.clk_strategies import clk_arrays, noisy_copies, random_clks

thresholds = st.sampled_from([0.05, 0.3, 0.5, 0.6, 2 / 3, 0.7, 0.8, 0.9, 1.0]) | st.floats(
    0.01, 1.0
)


def assert_same(fast, slow) -> None:
    np.testing.assert_array_equal(fast.left, slow.left)
    np.testing.assert_array_equal(fast.right, slow.right)
    np.testing.assert_array_equal(fast.scores, slow.scores)


@given(left=clk_arrays(), right=clk_arrays(), threshold=thresholds, workers=st.sampled_from([1, 2]))
def test_kernel_agrees_exactly_with_reference(left, right, threshold, workers) -> None:
    fast = candidate_pairs(left, right, threshold, workers=workers)
    assert_same(fast, reference_candidate_pairs(left, right, threshold))


@given(clks=clk_arrays(), threshold=thresholds)
def test_within_mode_agrees_exactly_with_reference(clks, threshold) -> None:
    fast = candidate_pairs_within(clks, threshold, workers=2)
    assert_same(fast, reference_candidate_pairs(clks, clks, threshold, within=True))
    assert np.all(fast.left < fast.right)


# Word counts around the kernels' 8-word passes: tail only, exact passes, passes plus tail.
word_counts = st.sampled_from([1, 3, 7, 8, 9, 16, 17])


@given(data=st.data(), words=word_counts, threshold=thresholds)
def test_kernels_agree_with_reference_at_every_word_count(data, words, threshold) -> None:
    left = data.draw(clk_arrays(words=words, max_records=25))
    right = data.draw(clk_arrays(words=words, max_records=25))
    assert_same(
        candidate_pairs(left, right, threshold), reference_candidate_pairs(left, right, threshold)
    )
    if len(left) and len(right):
        pairs = reference_candidate_pairs(left, right, 1e-12)
        expected = np.zeros(len(left))
        np.maximum.at(expected, pairs.left, pairs.scores.astype(np.float64))
        np.testing.assert_allclose(best_scores(left, right), expected, rtol=1e-6)


def test_kernel_agrees_across_tiles_and_odd_word_counts() -> None:
    generator = np.random.default_rng(11)
    # 5000 right records span two column tiles; 11 words exercise one 8-word pass and the
    # 3-word tail.
    left = random_clks(generator, 30, words=11)
    right = random_clks(generator, 5000, words=11)
    right[4100:4130] = noisy_copies(generator, left, 0.03)
    fast = candidate_pairs(left, right, 0.7)
    assert len(fast) >= 30
    assert_same(fast, reference_candidate_pairs(left, right, 0.7))


def test_threshold_rule_is_inclusive_and_exact() -> None:
    # |a| = |b| = 5, shared 4: Dice exactly 0.8 is kept at 0.8 and dropped just above.
    left = np.array([[0b11111]], np.uint64)
    right = np.array([[0b101111]], np.uint64)
    assert len(candidate_pairs(left, right, 0.8)) == 1
    assert len(candidate_pairs(left, right, np.nextafter(0.8, 1.0))) == 0
    assert required_shared(0.8, 64)[10] == 4


def test_two_empty_clks_never_match() -> None:
    empty = np.zeros((2, 2), np.uint64)
    assert len(candidate_pairs(empty, empty, 0.01)) == 0


def test_empty_inputs_give_no_pairs() -> None:
    some = random_clks(np.random.default_rng(1), 3)
    assert len(candidate_pairs(some[:0], some, 0.5)) == 0
    assert len(candidate_pairs_within(some[:1], 0.5)) == 0


@pytest.mark.parametrize("threshold", [0.0, -0.1, 1.01, float("nan")])
def test_threshold_outside_unit_interval_is_refused(threshold) -> None:
    some = random_clks(np.random.default_rng(1), 3)
    with pytest.raises(MatchingError, match="threshold"):
        candidate_pairs(some, some, threshold)


def test_too_many_pairs_stop_with_a_clear_error_not_a_truncation() -> None:
    same = np.tile(random_clks(np.random.default_rng(2), 1), (300, 1))
    with pytest.raises(MatchingError, match="more than 1000 candidate pairs"):
        candidate_pairs(same, same, 0.5, max_pairs=1000)
    assert len(candidate_pairs(same, same, 0.5)) == 300 * 300


def test_mismatched_shapes_and_types_are_refused() -> None:
    generator = np.random.default_rng(3)
    with pytest.raises(MatchingError, match="different lengths"):
        candidate_pairs(random_clks(generator, 2, words=2), random_clks(generator, 2, words=3), 0.5)
    with pytest.raises(MatchingError, match="uint64"):
        candidate_pairs(np.zeros((2, 2), np.int64), np.zeros((2, 2), np.uint64), 0.5)


def test_best_scores_match_the_brute_force_maximum() -> None:
    generator = np.random.default_rng(4)
    left = random_clks(generator, 20, words=3)
    right = np.concatenate(
        [random_clks(generator, 50, words=3), noisy_copies(generator, left, 0.1)]
    )
    pairs = reference_candidate_pairs(left, right, 1e-9)
    expected = np.zeros(20)
    np.maximum.at(expected, pairs.left, pairs.scores.astype(np.float64))
    np.testing.assert_allclose(best_scores(left, right), expected, rtol=1e-6)
    excluded = np.arange(50, 70)
    assert np.all(best_scores(left, right, excluded=excluded) < best_scores(left, right))


def test_best_scores_skip_no_winning_tile_across_many_popcount_tiles() -> None:
    # Over 4096 right records of widely spread density, so several popcount tiles exist and
    # the tile bound prunes; the result must still be the exact brute-force maximum.
    generator = np.random.default_rng(8)
    density = generator.uniform(0.05, 0.6, (9000, 1))
    bits = generator.random((9000, 256)) < density
    right = np.packbits(bits, axis=1, bitorder="little").view(np.uint64).reshape(9000, 4)
    left = np.concatenate([right[:30] ^ np.uint64(0b1011), right[4000:4030]])
    shared = np.bitwise_count(left[:, None, :] & right[None, :, :]).sum(axis=2)
    counts = np.bitwise_count(right).sum(axis=1)
    totals = np.bitwise_count(left).sum(axis=1)[:, None] + counts[None, :]
    scores = 2.0 * shared / totals
    np.testing.assert_array_equal(best_scores(left, right, workers=2), scores.max(axis=1))
    excluded = np.concatenate([np.arange(30), np.arange(4000, 4030)])
    scores[np.arange(60), excluded] = -1.0
    np.testing.assert_array_equal(
        best_scores(left, right, excluded=excluded, workers=2), scores.max(axis=1)
    )
