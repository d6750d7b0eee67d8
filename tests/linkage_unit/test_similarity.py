"""The Dice kernels against their slow obvious twins, on every path this CPU can run, and
their limits."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from linkage_unit.kernels import supported_paths
from linkage_unit.similarity import (
    SimilarityMeasure,
    best_scores,
    candidate_pairs,
    candidate_pairs_within,
    group_bit_counts,
    group_counts,
    reference_best_scores,
    reference_candidate_pairs,
    reference_group_bit_counts,
    reference_group_counts,
    required_shared,
)
from protocol.clk_layout import ClkLayout, GroupLayout
from protocol.errors import MatchingError
from tests.strategies import clk_arrays, noisy_copies, random_clks

# Every kernel variant this machine can run (an AVX-512 machine runs all four); the forced
# AVX2-only, pre-AVX2 and generic CPUs are tested in test_kernels.py.
PATHS = supported_paths()
paths = st.sampled_from(PATHS)
measures = st.sampled_from(list(SimilarityMeasure))

thresholds = st.sampled_from([0.05, 0.3, 0.5, 0.6, 2 / 3, 0.7, 0.8, 0.9, 1.0]) | st.floats(
    0.01, 1.0
)


def assert_same(fast, slow) -> None:
    np.testing.assert_array_equal(fast.left, slow.left)
    np.testing.assert_array_equal(fast.right, slow.right)
    np.testing.assert_array_equal(fast.scores, slow.scores)


@given(
    left=clk_arrays(),
    right=clk_arrays(),
    threshold=thresholds,
    workers=st.sampled_from([1, 2]),
    path=paths,
    measure=measures,
)
def test_kernel_agrees_exactly_with_reference(left, right, threshold, workers, path, measure):
    fast = candidate_pairs(left, right, threshold, workers=workers, path=path, measure=measure)
    assert_same(fast, reference_candidate_pairs(left, right, threshold, measure=measure))


@given(clks=clk_arrays(), threshold=thresholds, path=paths, measure=measures)
def test_within_mode_agrees_exactly_with_reference(clks, threshold, path, measure) -> None:
    fast = candidate_pairs_within(clks, threshold, workers=2, path=path, measure=measure)
    expected = reference_candidate_pairs(clks, clks, threshold, within=True, measure=measure)
    assert_same(fast, expected)
    assert np.all(fast.left < fast.right)


# Word counts around the kernels' widths: under and over the half-way bound (8 words), the
# AVX2 byte counters' 31-word flush, and one word.
word_counts = st.sampled_from([1, 3, 7, 8, 9, 15, 16, 17, 31, 32, 33])


@given(data=st.data(), words=word_counts, threshold=thresholds, path=paths, measure=measures)
def test_kernels_agree_with_reference_at_every_word_count(data, words, threshold, path, measure):
    left = data.draw(clk_arrays(words=words, max_records=13))
    right = data.draw(clk_arrays(words=words, max_records=13))
    assert_same(
        candidate_pairs(left, right, threshold, path=path, measure=measure),
        reference_candidate_pairs(left, right, threshold, measure=measure),
    )
    np.testing.assert_array_equal(
        best_scores(left, right, path=path), reference_best_scores(left, right)
    )


@given(left=clk_arrays(), right=clk_arrays(), data=st.data(), path=paths, measure=measures)
def test_a_threshold_equal_to_a_score_is_a_tie_every_path_breaks_alike(
    left, right, data, path, measure
) -> None:
    # Thresholds exactly at a pair's float64 score: the product rule decides the tie, and
    # every path must decide it as the reference does.
    scored = reference_candidate_pairs(left, right, 1e-9, measure=measure)
    if len(scored) == 0:
        return
    k = data.draw(st.integers(0, len(scored) - 1))
    a, b = left[scored.left[k]], right[scored.right[k]]
    shared = int(np.bitwise_count(a & b).sum())
    total = int(np.bitwise_count(a).sum() + np.bitwise_count(b).sum())
    bits = 64 * left.shape[1]
    tie = 2.0 * shared / total if measure == "dice" else 1.0 - (total - 2.0 * shared) / bits
    if tie <= 0.0:
        return
    assert_same(
        candidate_pairs(left, right, tie, path=path, measure=measure),
        reference_candidate_pairs(left, right, tie, measure=measure),
    )


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("words", [31, 32, 33, 62, 64])
def test_full_clks_do_not_overflow_any_counter(path, words) -> None:
    # Every bit set: each AVX2 byte counter gains 8 a word, so one more word than the
    # 31-word flush would wrap it. All pairs score 1.0 and must all be kept.
    full = np.full((5, words), np.iinfo(np.uint64).max, np.uint64)
    pairs = candidate_pairs(full, full, 1.0, path=path)
    assert len(pairs) == 25
    assert np.all(pairs.scores == 1.0)
    np.testing.assert_array_equal(best_scores(full, full, path=path), np.ones(5))


def brute_force(left, right, threshold) -> tuple[np.ndarray, np.ndarray]:
    """Every pair's Dice test at once (the integer rule, written as a matrix)."""
    shared = np.bitwise_count(left[:, None, :] & right[None, :, :]).sum(axis=2)
    totals = np.bitwise_count(left).sum(axis=1)[:, None] + np.bitwise_count(right).sum(axis=1)
    return np.nonzero((totals > 0) & (2 * shared >= threshold * totals))


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("words", [11, 16])
@pytest.mark.parametrize("threshold", [0.6, 0.75, 0.8, 0.9])
def test_kernel_agrees_across_tiles_and_both_sides_of_the_half_way_test(path, words, threshold):
    # 5001 right records span several column tiles and a last partial vector; 30 rows end on
    # a partial row block. At 0.8 and 0.9 the half-way test prunes nearly every vector; at
    # 0.6 it prunes none and is dropped for the rest of each tile; 0.75 is in between.
    generator = np.random.default_rng(11)
    left = random_clks(generator, 30, words=words)
    right = random_clks(generator, 5001, words=words)
    right[4100:4130] = noisy_copies(generator, left, 0.03)
    right[100:130] = noisy_copies(generator, left, 0.12)
    fast = candidate_pairs(left, right, threshold, path=path)
    expected_left, expected_right = brute_force(left, right, threshold)
    assert len(fast) >= 30
    np.testing.assert_array_equal(fast.left, expected_left)
    np.testing.assert_array_equal(fast.right, expected_right)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("measure", list(SimilarityMeasure))
def test_threshold_rule_is_inclusive_and_exact(path, measure) -> None:
    # |a| = |b| = 5, shared 4: Dice exactly 0.8, Hamming 1 - 2/64; each kept at its own value
    # and dropped just above.
    left = np.array([[0b11111]], np.uint64)
    right = np.array([[0b101111]], np.uint64)
    exact = 0.8 if measure == "dice" else 1.0 - 2.0 / 64.0
    assert len(candidate_pairs(left, right, exact, path=path, measure=measure)) == 1
    above = np.nextafter(exact, 1.0)
    assert len(candidate_pairs(left, right, above, path=path, measure=measure)) == 0
    assert required_shared(0.8, 64)[10] == 4
    # Hamming at 62/64: at most 2 differing bits, so with |a| + |b| = 10, 4 shared at least.
    assert required_shared(62 / 64, 64, SimilarityMeasure.HAMMING)[10] == 4


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("measure", list(SimilarityMeasure))
def test_two_empty_clks_never_match(path, measure) -> None:
    empty = np.zeros((2, 2), np.uint64)
    assert len(candidate_pairs(empty, empty, 0.01, path=path, measure=measure)) == 0
    # Under Hamming an empty CLK may still match a nearly empty one.
    one_bit = np.array([[1, 0]], np.uint64)
    found = candidate_pairs(empty, one_bit, 0.99, path=path, measure=measure)
    assert len(found) == (2 if measure == "hamming" else 0)


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


@given(left=clk_arrays(words=9), right=clk_arrays(words=9), data=st.data(), path=paths)
def test_best_scores_agree_with_reference(left, right, data, path) -> None:
    excluded = np.array(
        [data.draw(st.integers(-1, len(right) - 1)) for _ in range(len(left))], np.int64
    )
    np.testing.assert_array_equal(
        best_scores(left, right, excluded=excluded, path=path, workers=2),
        reference_best_scores(left, right, excluded=excluded),
    )


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


@pytest.mark.parametrize("path", PATHS)
def test_best_scores_skip_no_winning_tile_across_many_popcount_tiles(path) -> None:
    # 9000 right records of widely spread density, so several popcount tiles exist and the
    # tile and half-way bounds prune; the result must still be the exact brute-force maximum.
    generator = np.random.default_rng(8)
    density = generator.uniform(0.05, 0.6, (9000, 1))
    bits = generator.random((9000, 512)) < density
    right = np.packbits(bits, axis=1, bitorder="little").view(np.uint64).reshape(9000, 8)
    left = np.concatenate([right[:30] ^ np.uint64(0b1011), right[4000:4030]])
    shared = np.bitwise_count(left[:, None, :] & right[None, :, :]).sum(axis=2)
    counts = np.bitwise_count(right).sum(axis=1)
    totals = np.bitwise_count(left).sum(axis=1)[:, None] + counts[None, :]
    scores = 2.0 * shared / totals
    np.testing.assert_array_equal(
        best_scores(left, right, workers=2, path=path), scores.max(axis=1)
    )
    excluded = np.concatenate([np.arange(30), np.arange(4000, 4030)])
    scores[np.arange(60), excluded] = -1.0
    np.testing.assert_array_equal(
        best_scores(left, right, excluded=excluded, workers=2, path=path), scores.max(axis=1)
    )


@st.composite
def layouts(draw: st.DrawFn) -> ClkLayout:
    sizes = draw(st.lists(st.sampled_from([1, 2, 3, 7, 16]), min_size=1, max_size=5))
    return ClkLayout(
        groups=tuple(GroupLayout(name=f"g{k}", bits=64 * size) for k, size in enumerate(sizes))
    )


@given(layout=layouts(), data=st.data(), workers=st.sampled_from([1, 2]))
def test_group_counts_agree_with_reference(layout, data, workers) -> None:
    words = layout.total_words
    left = data.draw(clk_arrays(words=words, max_records=12))
    right = data.draw(clk_arrays(words=words, max_records=12))
    pairs = data.draw(st.integers(0, 30)) if len(left) and len(right) else 0
    left_index = np.array(
        data.draw(st.lists(st.integers(0, max(0, len(left) - 1)), min_size=pairs, max_size=pairs)),
        np.int64,
    )
    right_index = np.array(
        data.draw(st.lists(st.integers(0, max(0, len(right) - 1)), min_size=pairs, max_size=pairs)),
        np.int64,
    )
    offsets = layout.word_offsets()
    fast = group_counts(left, right, left_index, right_index, offsets, workers=workers)
    slow = reference_group_counts(left, right, left_index, right_index, offsets)
    wide = group_counts(left, right, left_index, right_index, offsets, dtype=np.int32)
    for name in ("shared", "left", "right"):
        np.testing.assert_array_equal(getattr(fast, name), getattr(slow, name))
        assert getattr(fast, name).dtype == np.uint16
        assert getattr(fast, name).shape == (pairs, len(layout.groups))
        # Asked for int32, the kernel writes the same counts straight into it.
        np.testing.assert_array_equal(getattr(wide, name), getattr(slow, name))
        assert getattr(wide, name).dtype == np.int32


@given(layout=layouts(), data=st.data())
def test_group_bit_counts_agree_with_reference(layout, data) -> None:
    clks = data.draw(clk_arrays(words=layout.total_words, max_records=12))
    offsets = layout.word_offsets()
    fast = group_bit_counts(clks, offsets)
    slow = reference_group_bit_counts(clks, offsets)
    np.testing.assert_array_equal(fast, slow)
    assert fast.dtype == np.int32 and fast.shape == (len(clks), len(layout.groups))


def test_group_counts_widen_to_uint32_for_a_full_65536_bit_group() -> None:
    full = np.full((1, 1025), np.iinfo(np.uint64).max, np.uint64)
    counts = group_counts(full, full, [0], [0], [0, 1, 1025])
    assert counts.shared.dtype == np.uint32
    assert counts.shared.tolist() == counts.left.tolist() == [[64, 65536]]
    # One word less and every count fits 16 bits.
    shorter = full[:, :1024]
    assert group_counts(shorter, shorter, [0], [0], [0, 1, 1024]).shared.dtype == np.uint16
    with pytest.raises(MatchingError, match="cannot hold"):
        group_counts(full, full, [0], [0], [0, 1, 1025], dtype=np.int16)


def test_group_counts_refuse_bad_offsets_and_positions() -> None:
    clks = random_clks(np.random.default_rng(5), 3, words=4)
    with pytest.raises(MatchingError, match="word_offsets"):
        group_counts(clks, clks, [0], [0], [0, 2, 2, 4])
    with pytest.raises(MatchingError, match="word_offsets"):
        group_counts(clks, clks, [0], [0], [0, 3])
    with pytest.raises(MatchingError, match="outside"):
        group_counts(clks, clks, [3], [0], [0, 4])
    with pytest.raises(MatchingError, match="same length"):
        group_counts(clks, clks, [0, 1], [0], [0, 4])
