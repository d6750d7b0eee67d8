"""LSH blocking: a subset of exhaustive, complete enough, planned before it runs."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from linkage_unit.blocking import (
    EXHAUSTIVE_PAIR_COST,
    RECORD_COST_IN_COMPARISONS,
    BlockingIndex,
    BlockingMode,
    BlockingPlan,
    BlockingSettings,
    _common_keys,
    _fitted_shape,
    _keys,
    blocking_settings_for,
    choose_lsh_shape,
    choose_lsh_shape_reference,
    fit_blocking_settings,
    generate_candidates,
    pair_completeness,
    sample_band_positions,
)
from linkage_unit.similarity import candidate_pairs, candidate_pairs_within
from protocol.errors import MatchingError
from tests.strategies import clk_arrays, noisy_copies, random_clks


def as_set(pairs) -> set[tuple[int, int]]:
    return set(zip(pairs.left.tolist(), pairs.right.tolist(), strict=True))


@given(left=clk_arrays(), right=clk_arrays(), threshold=st.sampled_from([0.3, 0.6, 0.8]))
def test_blocked_pairs_are_exhaustive_pairs_with_the_same_scores(left, right, threshold) -> None:
    settings = BlockingSettings(fit_to_data=False, bands=8, bits_per_band=4)
    blocked = BlockingIndex(left, right, settings=settings, seed=1).candidate_pairs(threshold)
    exhaustive = candidate_pairs(left, right, threshold)
    assert as_set(blocked) <= as_set(exhaustive)
    lookup = dict(
        zip(
            zip(exhaustive.left.tolist(), exhaustive.right.tolist(), strict=False),
            exhaustive.scores,
            strict=False,
        )
    )
    for pair, score in zip(
        zip(blocked.left.tolist(), blocked.right.tolist(), strict=False),
        blocked.scores,
        strict=False,
    ):
        assert lookup[pair] == score
    assert len(as_set(blocked)) == len(blocked)  # the union holds each pair once


def test_every_pair_is_found_when_every_band_is_one_block() -> None:
    generator = np.random.default_rng(5)
    clks = random_clks(generator, 60, words=2)
    # Zero sampled bits are impossible, so sample a bit no record sets: one block per band.
    clks[:, 0] &= ~np.uint64(1)
    positions = np.zeros((2, 1), np.int64)
    index = BlockingIndex(clks, None, positions=positions)
    assert index.plan.block_comparisons == 2 * 60 * 59 // 2
    assert as_set(index.candidate_pairs(0.4)) == as_set(candidate_pairs_within(clks, 0.4))


def test_default_settings_keep_pair_completeness_at_dice_0_8() -> None:
    generator = np.random.default_rng(6)
    left = random_clks(generator, 3000)
    right = random_clks(generator, 3000)
    right[:1500] = noisy_copies(generator, left[:1500], 0.07)  # Dice around 0.85
    exhaustive = candidate_pairs(left, right, 0.8)
    index = BlockingIndex(left, right, seed=7)
    blocked = index.candidate_pairs(0.8)
    assert len(exhaustive) >= 1400
    assert pair_completeness(blocked, exhaustive) >= 0.995
    assert index.plan.reduction_ratio > 0.9


def test_oversized_blocks_are_skipped_and_counted_never_silently() -> None:
    same = np.tile(random_clks(np.random.default_rng(8), 1), (50, 1))
    settings = BlockingSettings(
        fit_to_data=False, bands=4, bits_per_band=8, max_block_comparisons=100
    )
    index = BlockingIndex(same, same, settings=settings, seed=9)
    assert index.plan.oversized_blocks == 4
    assert index.plan.oversized_comparisons == 4 * 50 * 50
    assert index.plan.block_comparisons == 0
    assert len(index.candidate_pairs(0.9)) == 0


def test_plan_estimates_are_positive_and_consistent() -> None:
    generator = np.random.default_rng(10)
    index = BlockingIndex(random_clks(generator, 500), random_clks(generator, 400), seed=1)
    plan = index.plan
    assert plan.exhaustive_comparisons == 200_000
    assert 0 <= plan.block_comparisons <= plan.bands * plan.exhaustive_comparisons
    assert plan.estimated_memory_bytes > 0 and plan.estimated_seconds >= 0
    assert index.candidate_pairs(0.8).comparisons == plan.block_comparisons


def test_band_positions_depend_on_the_seed_only() -> None:
    settings = BlockingSettings(fit_to_data=False, bands=3, bits_per_band=5)
    one = sample_band_positions(1024, settings, seed=1)
    assert np.array_equal(one, sample_band_positions(1024, settings, seed=1))
    assert not np.array_equal(one, sample_band_positions(1024, settings, seed=2))
    assert all(len(set(band)) == 5 for band in one.tolist())


def test_bad_settings_are_refused() -> None:
    with pytest.raises(MatchingError):
        BlockingSettings(fit_to_data=False, bands=0)
    with pytest.raises(MatchingError):
        BlockingSettings(fit_to_data=False, bits_per_band=65)
    with pytest.raises(MatchingError, match="threshold"):
        BlockingIndex(random_clks(np.random.default_rng(1), 3), None).candidate_pairs(1.5)


def test_pair_completeness_counts_shared_pairs() -> None:
    clks = random_clks(np.random.default_rng(12), 40, words=2)
    everything = candidate_pairs(clks, clks, 0.01)
    assert pair_completeness(everything, everything) == 1.0
    half = type(everything)(
        left=everything.left[::2],
        right=everything.right[::2],
        scores=everything.scores[::2],
        comparisons=0,
    )
    assert pair_completeness(half, everything) == pytest.approx(0.5, abs=0.01)


@pytest.mark.parametrize("within", [False, True])
def test_gathering_blocks_in_small_runs_finds_the_same_pairs(
    within: bool,
) -> None:
    # Parties larger than the gather budget are compared a run of blocks at a time; the
    # pairs, scores and counts must not depend on where the runs are cut.
    generator = np.random.default_rng(21)
    left = random_clks(generator, 600, words=4)
    right = (
        None if within else np.concatenate([noisy_copies(generator, left[:300], 0.05), left[300:]])
    )
    settings = BlockingSettings(fit_to_data=False, bands=6, bits_per_band=4)
    whole = BlockingIndex(left, right, settings=settings, seed=2).candidate_pairs(0.6)
    pieces = BlockingIndex(
        left, right, settings=settings, seed=2, gather_records=7
    ).candidate_pairs(0.6)
    assert len(whole) > 0
    np.testing.assert_array_equal(whole.left, pieces.left)
    np.testing.assert_array_equal(whole.right, pieces.right)
    np.testing.assert_array_equal(whole.scores, pieces.scores)
    assert whole.comparisons == pieces.comparisons


def test_a_gather_budget_below_one_record_is_refused() -> None:
    clks = random_clks(np.random.default_rng(3), 4, words=2)
    with pytest.raises(MatchingError, match="gather_records must be >= 1"):
        BlockingIndex(clks, None, gather_records=0)


@settings(max_examples=25, deadline=None)
@given(
    bit_density=st.floats(0.05, 0.95),
    threshold=st.floats(0.5, 1.0),
    records=st.integers(2, 4_000_000),
    clk_bits=st.sampled_from([16, 64, 128]),
    target_recall=st.sampled_from([0.9, 0.99, 0.999]),
)
def test_closed_form_shape_choice_agrees_with_the_grid_search(
    bit_density, threshold, records, clk_bits, target_recall
) -> None:
    arguments = dict(
        bit_density=bit_density,
        threshold=threshold,
        pairs=records * records // 4,
        records=records,
        clk_bits=clk_bits,
        target_recall=target_recall,
    )
    try:
        expected = choose_lsh_shape_reference(**arguments)
    except MatchingError:
        with pytest.raises(MatchingError):
            choose_lsh_shape(**arguments)
        return
    chosen = choose_lsh_shape(**arguments)
    assert (chosen.bands, chosen.bits_per_band) == (expected.bands, expected.bits_per_band)
    assert chosen.miss_probability <= 1 - target_recall


def test_fitted_shape_keeps_recall_0_999_at_less_work_than_the_default() -> None:
    """At this size key building dominates, so the fitted shape has fewer bands and more
    comparisons; the work (comparisons plus per-record key building) must be smaller."""
    generator = np.random.default_rng(11)
    left = random_clks(generator, 4000)
    right = random_clks(generator, 4000)
    right[:2000] = noisy_copies(generator, left[:2000], 0.07)  # Dice around 0.85
    threshold = 0.8
    exhaustive = candidate_pairs(left, right, threshold)
    fitted_settings = fit_blocking_settings(
        left, right, threshold, BlockingSettings(fit_to_data=True)
    )
    index = BlockingIndex(left, right, settings=fitted_settings, seed=5)
    fitted, plan = index.candidate_pairs(threshold), index.plan
    default = BlockingIndex(left, right, seed=5)
    assert (plan.bands, plan.bits_per_band) == (
        fitted_settings.bands,
        fitted_settings.bits_per_band,
    )
    assert len(exhaustive) >= 1900
    assert pair_completeness(fitted, exhaustive) >= 0.999

    def work(measured: BlockingPlan) -> float:
        return measured.block_comparisons + measured.bands * RECORD_COST_IN_COMPARISONS * 8000

    assert work(plan) < work(default.plan)


def test_unreachable_recall_is_refused() -> None:
    with pytest.raises(MatchingError, match="no LSH shape"):
        choose_lsh_shape(
            bit_density=0.9, threshold=0.4, pairs=100, records=20, clk_bits=16,
            target_recall=0.999,
        )  # fmt: skip
    with pytest.raises(MatchingError, match="target_recall"):
        BlockingSettings(target_recall=1.0)


def test_the_fitted_shape_gives_way_to_comparing_every_pair_where_that_costs_less() -> None:
    """On few records or at a low threshold the fitted shape would do more work than the
    exhaustive kernel: the compare then scores every pair (recall 1, no plan); on more
    records at a high threshold it blocks with the fitted shape."""
    generator = np.random.default_rng(12)
    left = random_clks(generator, 3000)
    right = random_clks(generator, 3000)
    right[:1000] = noisy_copies(generator, left[:1000], 0.03)
    settings = BlockingSettings()
    small = blocking_settings_for(left[:300], right[:300], 0.9, settings)
    assert small is None
    pairs, plan = generate_candidates(
        left[:300], right[:300], 0.9, mode=BlockingMode.LSH, settings=settings, seed=5
    )
    exhaustive = candidate_pairs(left[:300], right[:300], 0.9)
    assert plan is None and pairs.comparisons == 300 * 300
    assert pair_completeness(pairs, exhaustive) == 1.0 and len(pairs) == len(exhaustive)
    shape, work = _fitted_shape(left, right, 0.9, settings)
    assert shape.cost < EXHAUSTIVE_PAIR_COST * work
    large = blocking_settings_for(left, right, 0.9, settings)
    assert large == fit_blocking_settings(left, right, 0.9, settings)
    pairs, plan = generate_candidates(
        left, right, 0.9, mode=BlockingMode.LSH, settings=settings, seed=5
    )
    assert plan is not None and (plan.bands, plan.bits_per_band) == (
        shape.bands,
        shape.bits_per_band,
    )
    assert pair_completeness(pairs, candidate_pairs(left, right, 0.9)) >= 0.999
    # No shape reaches the target at all: compare every pair rather than fail the run.
    assert blocking_settings_for(left[:50], right[:50], 0.05, settings) is None


@given(
    left=st.sets(st.integers(0, (1 << 12) - 1), max_size=60),
    right=st.sets(st.integers(0, (1 << 12) - 1), max_size=60),
    key_bits=st.sampled_from([12, 40]),
)
def test_common_keys_agree_with_intersect1d(left: set[int], right: set[int], key_bits: int) -> None:
    # The dense table (12-bit keys) and the sorted path (40-bit) against numpy's intersection.
    left_unique = np.array(sorted(left), np.uint64)
    right_unique = np.array(sorted(right), np.uint64)
    _, left_expected, right_expected = np.intersect1d(
        left_unique, right_unique, assume_unique=True, return_indices=True
    )
    left_index, right_index = _common_keys(left_unique, right_unique, key_bits)
    assert left_index.tolist() == left_expected.tolist()
    assert right_index.tolist() == right_expected.tolist()
    assert (left_unique[left_index] == right_unique[right_index]).all()


@pytest.mark.parametrize("parts", [1, 2, 3, 7])
def test_keys_in_parallel_slices_are_the_keys(parts: int) -> None:
    clks = random_clks(np.random.default_rng(5), 101, words=8)
    positions = sample_band_positions(
        512, BlockingSettings(bands=6, bits_per_band=9, fit_to_data=False), 3
    )
    with ThreadPoolExecutor(max_workers=2) as pool:
        assert (_keys(clks, positions, pool, parts) == _keys(clks, positions)).all()
