"""The Fellegi-Sunter model: the vectorised EM against its plain-Python twin, recovery of a
known model, data-derived levels, and probabilities."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from linkage_unit.fellegi_sunter import (
    FellegiSunterModel,
    GroupLevels,
    ModelSettings,
    comparison_levels,
    derive_levels,
    exclusive_weights,
    fit,
    probability_of_weight,
    reference_exclusive_weights,
    reference_fit,
    weight_of_probability,
)
from linkage_unit.group_similarity import GroupSimilarities
from protocol.errors import MatchingError
from tests.strategies import level_problems


@given(problem=level_problems())
def test_fast_em_agrees_with_the_reference(problem: dict[str, Any]) -> None:
    groups = [GroupLevels(name=f"g{g}", cuts=tuple(0.1 * (k + 1) for k in range(cuts)))
              for g, cuts in enumerate(problem["cuts"])]  # fmt: skip
    settings = ModelSettings(max_iterations=15, tolerance=1e-12)
    options = {
        key: problem[key]
        for key in ("random_counts", "identical_rates", "comparable_pairs", "max_matches")
    }
    fast = fit(problem["levels"], problem["jobs"], groups, settings=settings, **options)
    slow = reference_fit(problem["levels"], problem["jobs"], groups, settings=settings, **options)
    assert fast.iterations == slow.iterations
    for a, b in zip(fast.m + fast.u, slow.m + slow.u, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-7, atol=1e-12)
    np.testing.assert_allclose(fast.prior, slow.prior, rtol=1e-7)
    for model in (fast, slow):
        for m, u in zip(model.m, model.u, strict=True):
            assert abs(sum(m) - 1) < 1e-9 and abs(sum(u) - 1) < 1e-9


def _simulate(
    generator: np.random.Generator, m: list[np.ndarray], u: list[np.ndarray], matches: int,
    non_matches: int,
) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """Levels 1.. of matches and non-matches drawn from known m and u, and the truth."""
    columns = []
    for m_g, u_g in zip(m, u, strict=True):
        columns.append(
            np.concatenate(
                [
                    generator.choice(len(m_g), matches, p=m_g) + 1,
                    generator.choice(len(u_g), non_matches, p=u_g) + 1,
                ]
            )
        )
    truth = np.r_[np.ones(matches, bool), np.zeros(non_matches, bool)]
    return np.stack(columns, axis=1).astype(np.uint8), truth


def test_em_recovers_a_known_model() -> None:
    generator = np.random.default_rng(11)
    m = [np.array([0.02, 0.08, 0.2, 0.7]), np.array([0.05, 0.15, 0.8]), np.array([0.2, 0.8]),
         np.array([0.1, 0.9])]  # fmt: skip
    u = [np.array([0.9, 0.09, 0.0099, 0.0001]), np.array([0.97, 0.0299, 0.0001]),
         np.array([0.99, 0.01]), np.array([0.999, 0.001])]  # fmt: skip
    groups = [GroupLevels(name="a", cuts=(0.3, 0.6)), GroupLevels(name="b", cuts=(0.5,)),
              GroupLevels(name="c", cuts=()), GroupLevels(name="d", cuts=())]  # fmt: skip
    matches, non_matches = 2_000, 60_000
    levels, truth = _simulate(generator, m, u, matches, non_matches)
    # The random sample: non-matches plus true matches in proportion to the prior.
    comparable = 4_000_000
    sample, _ = _simulate(generator, m, u, 100, 400_000)
    counts = [
        np.bincount(sample[:, g], minlength=group.count).astype(np.float64)
        for g, group in enumerate(groups)
    ]
    model = fit(
        levels,
        np.zeros(len(levels), np.int64),
        groups,
        random_counts=counts,
        identical_rates=[None, None, None, None],
        comparable_pairs=[comparable],
        max_matches=[3000.0],
        settings=ModelSettings(),
    )
    assert model.converged
    for fitted, true in zip(model.m, m, strict=True):
        np.testing.assert_allclose(fitted, true, atol=0.03)
    # Pairs outside the candidates count as non-matches: the prior is matches / all pairs.
    assert model.prior[0] == pytest.approx(matches / comparable, rel=0.1)
    # The model's own probabilities are calibrated against the truth it never saw.
    probability = probability_of_weight(
        model.match_weights(levels, np.zeros(len(levels), np.int64))
    )
    confident = probability > 0.9
    assert truth[confident].mean() > 0.95
    assert truth[probability < 0.1].mean() < 0.02


def _similarities(shared: np.ndarray, left: np.ndarray, right: np.ndarray) -> GroupSimilarities:
    return GroupSimilarities(
        shared=shared.astype(np.int32),
        left_counts=left.astype(np.int32),
        right_counts=right.astype(np.int32),
    )


def test_levels_are_missing_binned_and_identical() -> None:
    groups = [GroupLevels(name="a", cuts=(0.4, 0.8))]
    similarities = _similarities(
        np.array([[10], [3], [5], [9], [0]]),
        np.array([[10], [10], [10], [10], [0]]),
        np.array([[10], [10], [10], [10], [10]]),
    )
    levels = comparison_levels(similarities, groups)
    # identical, Dice 0.3 (below the first cut), 0.5, 0.9 (at or above the last), missing
    assert levels[:, 0].tolist() == [4, 1, 2, 3, 0]


def test_derived_levels_follow_the_data_not_fixed_cut_points() -> None:
    """The same pairs with Dice raised towards 1 (as hardening maps similarity) get cuts at
    the same ranks: levels depend on where random pairs lie, not on fixed Dice values."""
    generator = np.random.default_rng(2)
    total = np.full((20_000, 1), 200)

    def pairs(shift: int) -> GroupSimilarities:
        shared = np.minimum(generator.binomial(100, 0.3, (20_000, 1)) + shift, 99)
        return _similarities(shared, total // 2, total // 2)

    settings = ModelSettings(upper_levels=0, level_tails=(0.3, 0.1, 0.01))
    plain = derive_levels(["a"], pairs(0), pairs(0), settings)[0]
    shifted = derive_levels(["a"], pairs(40), pairs(40), settings)[0]
    assert len(plain.cuts) == len(shifted.cuts) == 3
    assert all(b > a + 0.3 for a, b in zip(plain.cuts, shifted.cuts, strict=True))


def test_probabilities_and_weights() -> None:
    assert weight_of_probability(0.5) == 0.0
    assert probability_of_weight([weight_of_probability(0.9)])[0] == pytest.approx(0.9)
    assert probability_of_weight([2000.0])[0] == 1.0
    with pytest.raises(MatchingError, match="probability"):
        weight_of_probability(1.0)


def test_a_missing_group_weighs_nothing() -> None:
    groups = (GroupLevels(name="a", cuts=()), GroupLevels(name="b", cuts=()))
    model = FellegiSunterModel(
        groups=groups,
        m=((0.1, 0.9), (0.2, 0.8)),
        u=((0.9, 0.1), (0.99, 0.01)),
        prior=(0.001,),
        iterations=1,
        converged=True,
    )
    levels = np.array([[2, 0], [2, 1], [2, 2]], np.uint8)
    weights = model.match_weights(levels, np.zeros(3, np.int64))
    prior = np.log2(0.001 / 0.999)
    assert weights[0] == pytest.approx(prior + np.log2(9))
    assert weights[1] < weights[0] < weights[2]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"match_probability": 1.0}, "match_probability"),
        ({"candidates_per_record": 0}, "candidates_per_record"),
        ({"random_pairs": 10}, "random_pairs"),
        ({"level_tails": (0.01, 0.1)}, "level_tails"),
        ({"upper_levels": 40}, "upper_levels"),
    ],
)
def test_settings_are_checked(options: dict[str, Any], message: str) -> None:
    with pytest.raises(MatchingError, match=message):
        ModelSettings(**options)


def test_models_are_checked() -> None:
    groups = (GroupLevels(name="a", cuts=(0.5,)),)
    with pytest.raises(MatchingError, match="one probability per non-missing level"):
        FellegiSunterModel(
            groups=groups, m=((0.5, 0.5),), u=((0.5, 0.5),), prior=(0.1,), iterations=1,
            converged=True,
        )  # fmt: skip
    with pytest.raises(MatchingError, match="increasing"):
        GroupLevels(name="a", cuts=(0.5, 0.2))


@given(
    seed=st.integers(0, 2**32 - 1),
    pairs=st.integers(0, 40),
    sizes=st.tuples(st.integers(1, 12), st.integers(1, 12)),
    # None: that side's records may match several of the other party's (deduplicated).
    matched=st.tuples(st.none() | st.floats(0.001, 0.999), st.none() | st.floats(0.001, 0.999)),
)
def test_exclusive_weights_agree_with_the_reference(
    seed: int, pairs: int, sizes: tuple[int, int], matched: tuple[float | None, float | None]
) -> None:
    generator = np.random.default_rng(seed)
    codes = generator.choice(sizes[0] * sizes[1], min(pairs, sizes[0] * sizes[1]), replace=False)
    left, right = np.divmod(codes.astype(np.int64), sizes[1])
    # Up to 2^150 odds: a record's largest must not swamp its others in rounding.
    weights = generator.uniform(-30, 150, len(left))
    options = {
        "left_size": sizes[0],
        "right_size": sizes[1],
        "left_matched": matched[0],
        "right_matched": matched[1],
    }
    fast = exclusive_weights(left, right, weights, **options)
    slow = reference_exclusive_weights(left, right, weights, **options)
    np.testing.assert_allclose(fast, slow, rtol=1e-9, atol=1e-9)


def test_a_pair_without_rivals_gains_and_one_with_a_stronger_rival_loses() -> None:
    # Records 0-0 alone; record 1 has two partners, 1-1 weaker than 1-2.
    left = np.array([0, 1, 1])
    right = np.array([0, 1, 2])
    pairwise = np.array([-1.0, -1.0, 5.0])
    adjusted = exclusive_weights(
        left, right, pairwise, left_size=2, right_size=3, left_matched=0.5, right_matched=0.5
    )
    assert adjusted[0] == pytest.approx(-1.0 + 2.0)  # both records free: odds x 1 / 0.5**2
    assert adjusted[1] < pairwise[1]
    assert adjusted[2] > pairwise[2] - 0.1


def test_only_the_side_whose_party_is_duplicate_free_has_rivals() -> None:
    # Right record 0 has two left candidates; left record 0 has one right candidate. With the
    # left party deduplicated (right_matched None), right 0's two partners may both be right:
    # only each left record's own rivals (none here) and its matched share count.
    left = np.array([0, 1])
    right = np.array([0, 0])
    pairwise = np.array([3.0, 3.0])
    one_sided = exclusive_weights(
        left, right, pairwise, left_size=2, right_size=1, left_matched=0.5, right_matched=None
    )
    np.testing.assert_allclose(one_sided, pairwise + 1.0)  # odds x 1 / (1 - 0.5)
    both = exclusive_weights(
        left, right, pairwise, left_size=2, right_size=1, left_matched=0.5, right_matched=0.5
    )
    assert (both < one_sided).all()  # the rival on the right side costs each pair
    neither = exclusive_weights(
        left, right, pairwise, left_size=2, right_size=1, left_matched=None, right_matched=None
    )
    np.testing.assert_allclose(neither, pairwise)


def test_a_diffused_group_is_levelled_by_agreement_not_dice() -> None:
    """Two pairs with the same Dice (0.5) but different shares of agreeing bits (0.5 and 0.8
    of 100): a Dice group puts them on one level, an agreement group tells them apart."""
    similarities = _similarities(
        np.array([[25], [10]]), np.array([[50], [20]]), np.array([[50], [20]])
    )
    assert similarities.dice()[:, 0].tolist() == [0.5, 0.5]
    cuts = (0.45, 0.55, 0.7)
    dice = comparison_levels(similarities, [GroupLevels(name="a", cuts=cuts)])
    agreement = comparison_levels(
        similarities, [GroupLevels(name="a", cuts=cuts, agreement_bits=100)]
    )
    assert dice[:, 0].tolist() == [2, 2]
    assert agreement[:, 0].tolist() == [2, 4]
    with pytest.raises(MatchingError):
        GroupLevels(name="a", cuts=(), agreement_bits=-1)
    derived = derive_levels(
        ["a"], similarities, similarities, ModelSettings(upper_levels=0), agreement_bits=[100]
    )
    assert derived[0].agreement_bits == 100


def test_levels_of_many_pairs_are_computed_in_chunks_with_the_same_result() -> None:
    """Past a million pairs the levels and the derived cuts are taken a chunk at a time (for
    memory); they are those of the whole computed at once, the obvious way."""
    generator = np.random.default_rng(4)
    count = 2_500_000
    left = generator.integers(0, 60, (count, 2)).astype(np.int32)
    right = generator.integers(0, 60, (count, 2)).astype(np.int32)
    shared = np.minimum(left, right) - generator.integers(0, 5, (count, 2)).astype(np.int32)
    candidates = _similarities(np.maximum(shared, 0), left, right)
    random = _similarities(np.maximum(shared[:200_000] - 10, 0), left[:200_000], right[:200_000])
    settings = ModelSettings()
    groups = derive_levels(["a", "b"], random, candidates, settings, agreement_bits=[0, 64])
    # The obvious way: every candidate's similarity at once.
    candidate_scores = candidates.scores([0, 64])
    usable = ~candidates.missing & ~candidates.identical
    random_scores = random.scores([0, 64])
    random_usable = ~random.missing & ~random.identical
    for g, group in enumerate(groups):
        values = random_scores[random_usable[:, g], g]
        tails = [
            float(np.quantile(values, 1.0 - tail))
            for tail in settings.level_tails
            if tail * len(values) >= settings.min_tail_samples
        ]
        upper = candidate_scores[usable[:, g], g]
        upper = upper[upper > tails[-1]] if tails else upper
        inner = np.linspace(0.0, 1.0, settings.upper_levels + 1)[1:-1]
        expected = sorted({round(c, 12) for c in [*tails, *np.quantile(upper, inner)]})
        assert group.cuts == tuple(c for c in expected if 0.0 <= c < 1.0)
        level = np.searchsorted(np.array(group.cuts), candidate_scores[:, g], side="right") + 1
        level[candidates.identical[:, g]] = group.identical
        level[candidates.missing[:, g]] = 0
        np.testing.assert_array_equal(comparison_levels(candidates, groups)[:, g], level)


def _model(m: list[list[float]], u: list[list[float]]) -> FellegiSunterModel:
    return FellegiSunterModel(
        groups=tuple(GroupLevels(name=f"g{g}", cuts=(0.5,)) for g in range(len(m))),
        m=tuple(tuple(row) for row in m),
        u=tuple(tuple(row) for row in u),
        prior=(1e-4,),
        iterations=1,
        converged=True,
    )


def test_a_model_is_trusted_when_two_groups_separate_its_matches() -> None:
    random = [0.9, 0.09, 0.01]
    separated = [0.01, 0.09, 0.9]
    trusted = _model([separated, separated, random], [random, random, random])
    assert trusted.separation() == pytest.approx((0.89, 0.89, 0.0))
    assert trusted.trusted
    # Matches that differ from non-matches on one group only: look-alikes on that group.
    one_group = _model([random, separated, random], [random, random, random])
    assert one_group.separation() == pytest.approx((0.0, 0.89, 0.0))
    assert not one_group.trusted
    # A group just short of the distance does not count.
    near = [0.41, 0.09, 0.5]  # distance 0.49 from random
    assert not _model([near, separated, random], [random, random, random]).trusted


@given(
    seed=st.integers(0, 2**32 - 1),
    pairs=st.integers(0, 60),
    size=st.integers(1, 10),
    ties=st.booleans(),
)
def test_others_kernel_is_its_numpy_twin_bit_for_bit(
    seed: int, pairs: int, size: int, ties: bool
) -> None:
    from linkage_unit.fellegi_sunter import _others, _others_numpy

    generator = np.random.default_rng(seed)
    records = generator.integers(0, size, pairs).astype(np.int64)
    # Whole weights tie often (a record's largest twice); wide ones swamp the rest in rounding.
    weights = (
        np.round(generator.uniform(-3, 3, pairs)) if ties else generator.uniform(-30, 150, pairs)
    )
    odds = np.exp2(weights)
    fast = _others(records, odds, size)
    slow = _others_numpy(records, odds, size)
    assert fast.tobytes() == slow.tobytes()


def _random_counts(
    generator: np.random.Generator, pairs: int, bits: list[int], dtype: type = np.int32
) -> GroupSimilarities:
    """Counts of ``pairs`` made-up pairs per group: some sides empty, some pairs identical."""
    columns = []
    for width in bits:
        left = generator.integers(0, width // 2 + 1, pairs)
        right = generator.integers(0, width // 2 + 1, pairs)
        shared = np.minimum(generator.integers(0, width // 2 + 1, pairs), np.minimum(left, right))
        same = generator.random(pairs) < 0.1
        right[same] = left[same]
        shared[same] = left[same]
        left[generator.random(pairs) < 0.05] = 0
        shared[left == 0] = 0
        columns.append((shared, left, right))
    return GroupSimilarities(
        shared=np.stack([c[0] for c in columns], axis=1).astype(dtype),
        left_counts=np.stack([c[1] for c in columns], axis=1).astype(dtype),
        right_counts=np.stack([c[2] for c in columns], axis=1).astype(dtype),
    )


@hypothesis_settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    random_pairs=st.integers(0, 3000),
    candidate_pairs=st.integers(0, 2000),
    min_tail=st.integers(1, 30),
    upper=st.integers(0, 6),
    dtype=st.sampled_from([np.int32, np.uint16]),
)
def test_derive_and_comparison_levels_are_their_numpy_twins(
    seed: int, random_pairs: int, candidate_pairs: int, min_tail: int, upper: int, dtype: type
) -> None:
    from linkage_unit.fellegi_sunter import comparison_levels_numpy, derive_levels_numpy

    generator = np.random.default_rng(seed)
    bits = [64, 24, 128]  # Dice, agreement over 24 bits, agreement over 128
    lengths = [0, 24, 128]
    random = _random_counts(generator, random_pairs, bits, dtype)
    candidates = _random_counts(generator, candidate_pairs, bits, dtype)
    options = ModelSettings(min_tail_samples=min_tail, upper_levels=upper)
    names = ["a", "b", "c"]
    fast = derive_levels(names, random, candidates, options, agreement_bits=lengths)
    slow = derive_levels_numpy(names, random, candidates, options, agreement_bits=lengths)
    assert fast == slow
    if dtype is np.uint16:  # the narrow counts read as the int32 ones do

        def wide(counts: GroupSimilarities) -> GroupSimilarities:
            return GroupSimilarities(
                shared=counts.shared.astype(np.int32),
                left_counts=counts.left_counts.astype(np.int32),
                right_counts=counts.right_counts.astype(np.int32),
            )

        assert slow == derive_levels_numpy(
            names, wide(random), wide(candidates), options, agreement_bits=lengths
        )
        assert candidates.scores(lengths).tobytes() == wide(candidates).scores(lengths).tobytes()
    for similarities in (random, candidates):
        assert comparison_levels(similarities, fast).tobytes() == (
            comparison_levels_numpy(similarities, slow).tobytes()
        )
    # Rows in several chunks on the thread pool: the same cuts and levels.
    from linkage_unit import fellegi_sunter

    saved, fellegi_sunter._KERNEL_ROWS = fellegi_sunter._KERNEL_ROWS, 97
    try:
        assert derive_levels(names, random, candidates, options, agreement_bits=lengths) == slow
        assert comparison_levels(candidates, fast).tobytes() == (
            comparison_levels_numpy(candidates, slow).tobytes()
        )
    finally:
        fellegi_sunter._KERNEL_ROWS = saved
    # The candidates handed over in chunks of any sizes (the score stage's way): the same cuts.
    edges = np.sort(generator.integers(0, candidate_pairs + 1, generator.integers(0, 5)))
    bounds = [0, *edges.tolist(), candidate_pairs]
    chunks = [
        GroupSimilarities(
            shared=candidates.shared[a:b],
            left_counts=candidates.left_counts[a:b],
            right_counts=candidates.right_counts[a:b],
        )
        for a, b in zip(bounds, bounds[1:], strict=False)
    ]
    assert (
        fellegi_sunter.derive_levels_of_chunks(
            names, random, iter(chunks), options, agreement_bits=lengths
        )
        == slow
    )
    # And in one pass, each chunk's levels taken as it goes: the flagged pairs counted again
    # under the final cuts, every pair ends at the whole arrays' levels.
    groups, levels, recount = fellegi_sunter.levels_of_chunks(
        names, random, iter(chunks), candidate_pairs, options, agreement_bits=lengths
    )
    assert groups == slow
    rows = np.flatnonzero(recount)
    levels[rows] = comparison_levels(
        GroupSimilarities(
            shared=candidates.shared[rows],
            left_counts=candidates.left_counts[rows],
            right_counts=candidates.right_counts[rows],
        ),
        groups,
    )
    assert levels.tobytes() == comparison_levels_numpy(candidates, slow).tobytes()


@given(seed=st.integers(0, 2**32 - 1), pairs=st.integers(0, 60), chunk=st.integers(1, 9))
def test_exclusive_weights_in_chunks_are_the_whole_array_formula_bit_for_bit(
    seed: int, pairs: int, chunk: int
) -> None:
    from linkage_unit import fellegi_sunter

    generator = np.random.default_rng(seed)
    left = generator.integers(0, 8, pairs).astype(np.int64)
    right = generator.integers(0, 5, pairs).astype(np.int64)
    weights = generator.uniform(-30, 150, pairs)
    odds = np.exp2(np.clip(weights, -200.0, 200.0))
    expected = (
        np.log2(odds)
        - np.log2((1.0 - 0.3) + fellegi_sunter._others_numpy(left, odds, 8))
        - np.log2((1.0 - 0.6) + fellegi_sunter._others_numpy(right, odds, 5))
    )
    saved = fellegi_sunter._RIVAL_CHUNK
    fellegi_sunter._RIVAL_CHUNK = chunk
    try:
        found = exclusive_weights(
            left, right, weights, left_size=8, right_size=5, left_matched=0.3, right_matched=0.6
        )
    finally:
        fellegi_sunter._RIVAL_CHUNK = saved
    assert found.tobytes() == expected.tobytes()
    overwritten = weights.copy()
    fellegi_sunter._RIVAL_CHUNK = chunk
    try:
        exclusive_weights(
            left, right, overwritten, left_size=8, right_size=5, left_matched=0.3,
            right_matched=0.6, out=overwritten,
        )  # fmt: skip
    finally:
        fellegi_sunter._RIVAL_CHUNK = saved
    assert overwritten.tobytes() == expected.tobytes()


@given(problem=level_problems())
def test_patterns_counted_in_a_table_are_those_sorted(problem: dict[str, Any]) -> None:
    from linkage_unit.fellegi_sunter import _patterns

    groups = [GroupLevels(name=f"g{g}", cuts=tuple(0.1 * (k + 1) for k in range(cuts)))
              for g, cuts in enumerate(problem["cuts"])]  # fmt: skip
    jobs = len(problem["comparable_pairs"])
    table = _patterns(problem["levels"], problem["jobs"], groups, jobs)
    sorted_ = _patterns(problem["levels"], problem["jobs"], groups, jobs, table_limit=0)
    for a, b in zip(table, sorted_, strict=True):
        assert a.dtype == b.dtype and a.tolist() == b.tolist()
