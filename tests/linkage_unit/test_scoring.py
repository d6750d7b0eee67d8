"""link() with Fellegi-Sunter scoring on encodings of several field groups: planted matches,
missing groups, estimated quality against the truth, and the ways the model is chosen."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from linkage_unit import scoring
from linkage_unit.fellegi_sunter import (
    GroupLevels,
    ModelSettings,
    comparison_levels,
    probability_of_weight,
)
from linkage_unit.matching import LinkResult, MatchSettings, Scoring, link
from linkage_unit.scoring import (
    ScoredPairs,
    Scorer,
    estimate_quality,
    unseen_matches,
    unseen_matches_reference,
)
from linkage_unit.similarity import CandidatePairs
from linkage_unit.solving import PartyPairs
from protocol.clk_layout import ClkLayout, GroupLayout
from protocol.errors import MatchingError
from tests.strategies import grouped_parties, noisy_copies

LAYOUT = ClkLayout(
    groups=(
        GroupLayout(name="name", bits=256),
        GroupLayout(name="birth", bits=128),
        GroupLayout(name="postcode", bits=128),
    )
)
SETTINGS = MatchSettings(blocking_seed=5, model=ModelSettings(random_pairs=200_000))


def pair_f1(result: LinkResult, shared: int) -> tuple[float, float, float]:
    """Pairwise precision, recall and F1 when the first ``shared`` records of a and b match."""
    a, b = result.clusters["a"], result.clusters["b"]
    linked = {(int(i), int(j)) for i, j in zip(*np.nonzero(a[:, None] == b[None, :]), strict=True)}
    true = {(k, k) for k in range(shared)}
    correct = len(linked & true)
    precision = correct / len(linked) if linked else 1.0
    recall = correct / len(true)
    return precision, recall, 2 * precision * recall / (precision + recall)


@pytest.fixture(scope="module")
def planted() -> tuple[np.ndarray, np.ndarray]:
    return grouped_parties(
        np.random.default_rng(1), LAYOUT, left=1500, right=1200, shared=600, changed=0.03
    )


def test_the_model_links_planted_matches_and_estimates_its_own_quality(
    planted: tuple[np.ndarray, np.ndarray],
) -> None:
    left, right = planted
    result = link({"a": left, "b": right}, SETTINGS, layout=LAYOUT)
    assert result.threshold_method == "fellegi-sunter" and result.threshold == 0.5
    precision, recall, f1 = pair_f1(result, 600)
    assert f1 > 0.97
    estimated = result.statistics.estimated
    assert estimated is not None
    assert abs(estimated.f1 - f1) < 0.02
    assert abs(estimated.precision - precision) < 0.02 and abs(estimated.recall - recall) < 0.02
    model = result.statistics.model
    assert model is not None and model.converged
    assert [group.name for group in model.groups] == ["name", "birth", "postcode"]
    cut = result.statistics.candidate_cut
    assert cut is not None and not cut.at_boundary
    assert result.candidate_pair_count == result.statistics.candidate_pairs > 0


def test_a_missing_group_costs_nothing_where_dice_pays_for_it() -> None:
    generator = np.random.default_rng(2)
    left, right = grouped_parties(
        generator, LAYOUT, left=1500, right=1200, shared=600, missing=0.0, changed=0.0
    )
    start, stop = LAYOUT.word_range(1)
    right[:100, start:stop] = 0  # the birth group missing on one side, every other one exact
    model = link({"a": left, "b": right}, SETTINGS, layout=LAYOUT)
    assert (model.clusters["a"][:100] == model.clusters["b"][:100]).mean() > 0.97


def test_one_group_matches_by_dice_as_before_and_refuses_the_model(
    planted: tuple[np.ndarray, np.ndarray],
) -> None:
    left, right = planted
    dice = link({"a": left, "b": right}, SETTINGS)
    assert dice.threshold_method == "null-model"
    # No model; the estimate is the null model's, at the threshold the run used.
    assert dice.statistics.model is None and dice.statistics.estimated is not None
    assert dice.statistics.dice_curve and dice.statistics.estimated.f1 > 0.97
    single = ClkLayout.single(LAYOUT.total_bits)
    assert link({"a": left, "b": right}, SETTINGS, layout=single).threshold == dice.threshold
    with pytest.raises(MatchingError, match="at least two field groups"):
        link(
            {"a": left, "b": right},
            MatchSettings(blocking_seed=5, scoring=Scoring.FELLEGI_SUNTER),
            layout=single,
        )
    forced_dice = link(
        {"a": left, "b": right}, MatchSettings(blocking_seed=5, scoring="dice"), layout=LAYOUT
    )
    assert forced_dice.statistics.model is None


def test_the_operator_threshold_sets_the_candidate_cut(
    planted: tuple[np.ndarray, np.ndarray],
) -> None:
    left, right = planted
    result = link(
        {"a": left, "b": right},
        MatchSettings(threshold=0.6, blocking_seed=5, model=ModelSettings(random_pairs=200_000)),
        layout=LAYOUT,
    )
    assert result.statistics.candidate_cut is not None
    assert result.statistics.candidate_cut.threshold == 0.6
    assert result.threshold == 0.5


def test_a_higher_match_probability_links_no_more() -> None:
    left, right = grouped_parties(
        np.random.default_rng(3), LAYOUT, left=800, right=800, shared=400, changed=0.3
    )
    counts = []
    for probability in (0.1, 0.5, 0.99):
        settings = MatchSettings(
            blocking_seed=5,
            model=ModelSettings(random_pairs=200_000, match_probability=probability),
        )
        result = link({"a": left, "b": right}, settings, layout=LAYOUT)
        assert result.threshold == probability
        counts.append(result.statistics.accepted_pairs)
    assert counts[0] >= counts[1] >= counts[2] and counts[0] > counts[2]


def test_three_parties_and_deduplication_with_the_model() -> None:
    generator = np.random.default_rng(4)
    a, b = grouped_parties(generator, LAYOUT, left=600, right=600, shared=300, changed=0.0)
    _, c = grouped_parties(generator, LAYOUT, left=600, right=600, shared=0)
    c[:200] = noisy_copies(generator, a[:200], 0.01)
    three = link({"a": a, "b": b, "c": c}, SETTINGS, layout=LAYOUT)
    assert (three.clusters["a"][:200] == three.clusters["c"][:200]).mean() > 0.97
    assert (three.clusters["a"][:300] == three.clusters["b"][:300]).mean() > 0.95
    assert three.statistics.estimated is not None and three.statistics.estimated.f1 > 0.9
    one = np.concatenate([a[:300], b[:300], b[300:]])
    deduplicated = link(
        {"a": one},
        MatchSettings(
            deduplicated=frozenset({"a"}),
            blocking_seed=5,
            model=ModelSettings(random_pairs=200_000),
        ),
        layout=LAYOUT,
    )
    ids = deduplicated.clusters["a"]
    assert (ids[:300] == ids[300:600]).mean() > 0.95
    assert len(set(ids[600:].tolist())) == 300


def test_the_model_deduplicates_one_party_and_links_it_to_a_duplicate_free_one() -> None:
    # Party a holds people 0-299 twice (records 0-299 and 300-599) and 300 others; b holds
    # people 0-149 once and 450 others. The clustering takes the model's probabilities.
    generator = np.random.default_rng(7)
    first, b = grouped_parties(generator, LAYOUT, left=600, right=600, shared=150, changed=0.0)
    a = np.concatenate([first[:300], noisy_copies(generator, first[:300], 0.01), first[300:]])
    result = link(
        {"a": a, "b": b},
        MatchSettings(
            deduplicated=frozenset({"a"}),
            blocking_seed=5,
            model=ModelSettings(random_pairs=200_000),
        ),
        layout=LAYOUT,
    )
    assert result.threshold_method == "fellegi-sunter" and result.scored is not None
    ids_a, ids_b = result.clusters["a"], result.clusters["b"]
    assert (ids_a[:300] == ids_a[300:600]).mean() > 0.95  # repeats together
    assert (ids_a[:150] == ids_b[:150]).mean() > 0.9  # with their record in b
    assert not set(ids_b[150:].tolist()) & set(ids_a.tolist())  # b's others alone
    assert len(set(ids_a[600:].tolist())) == 300  # a's others alone
    assert result.statistics.largest_cluster == 3
    assert result.statistics.estimated is not None
    assert result.statistics.estimated.f1 > 0.9
    # No cluster holds two of b's records: b is duplicate-free.
    assert len(set(ids_b.tolist())) == len(ids_b)
    # Between the deduplicated a and the duplicate-free b the weights condition on a
    # record's rivals in b only: the scores say so.
    assert result.scored.exclusive and result.scored.deduplicated == (True, False)


def test_a_layout_that_does_not_fit_the_clks_is_refused(
    planted: tuple[np.ndarray, np.ndarray],
) -> None:
    left, right = planted
    with pytest.raises(MatchingError, match="layout"):
        link({"a": left, "b": right}, SETTINGS, layout=ClkLayout.single(1024))


def test_empty_parties_with_a_layout_link_nothing() -> None:
    empty = np.empty((0, LAYOUT.total_words), np.uint64)
    result = link({"a": empty, "b": empty.copy()}, SETTINGS, layout=LAYOUT)
    assert result.cluster_count == 0 and result.linked_record_count == 0


def test_estimated_quality_counts_links_made_and_matches_missed() -> None:
    groups = (GroupLevels(name="g", cuts=()),)
    from linkage_unit.fellegi_sunter import FellegiSunterModel

    model = FellegiSunterModel(
        groups=groups, m=((0.5, 0.5),), u=((0.5, 0.5),), prior=(0.1,), iterations=1,
        converged=True,
    )  # fmt: skip
    # Candidates: (0,0) p=0.9 linked; (1,1) p=0.5 linked; (0,1) p=0.3 not linked (both of
    # its records have links); (2,2) p=0.8 not linked (neither has one).
    probabilities = np.array([0.9, 0.5, 0.3, 0.8])
    weights = np.log2(probabilities / (1 - probabilities)).astype(np.float32)
    pairs = CandidatePairs(
        left=np.array([0, 1, 0, 2]), right=np.array([0, 1, 1, 2]), scores=weights, comparisons=4
    )
    scored = ScoredPairs(
        party_pairs=(PartyPairs(left_party=0, right_party=1, pairs=pairs),),
        match_probability=0.5,
        model=model,
    )
    clusters = [np.array([0, 1, 2]), np.array([0, 1, 3])]

    def never(job: int, left: np.ndarray, right: np.ndarray) -> np.ndarray:
        raise AssertionError("every joined pair is a candidate here")

    quality = estimate_quality(scored, clusters, [(0, 1)], never)
    assert quality.expected_true_links == pytest.approx(1.4)
    assert quality.expected_false_links == pytest.approx(0.6)
    missed = 0.3 * (1 - 0.9) * (1 - 0.5) + 0.8
    assert quality.expected_missed_matches == pytest.approx(missed, rel=1e-6)
    assert quality.precision == pytest.approx(0.7)
    assert quality.recall == pytest.approx(1.4 / (1.4 + missed), rel=1e-6)
    # Probabilities that already condition on rivals are not discounted again.
    exclusive = estimate_quality(replace(scored, exclusive=True), clusters, [(0, 1)], never)
    assert exclusive.expected_missed_matches == pytest.approx(0.3 + 0.8, rel=1e-6)
    # Left party deduplicated: right record 1 may match several left records, so only left
    # record 0's own link (in the duplicate-free right party) rules the pair out.
    one_sided = estimate_quality(
        replace(scored, deduplicated=(True, False)), clusters, [(0, 1)], never
    )
    assert one_sided.expected_missed_matches == pytest.approx(0.3 * (1 - 0.9) + 0.8, rel=1e-6)
    accepted = scored.accepted()[0].pairs
    assert probability_of_weight(accepted.scores.astype(np.float64)).min() >= 0.5 - 1e-6
    assert accepted.left.tolist() == [0, 1, 2]


def test_term_frequencies_weigh_agreement_on_a_common_encoding_less() -> None:
    generator = np.random.default_rng(6)
    left, right = grouped_parties(
        generator, LAYOUT, left=1000, right=1000, shared=500, missing=0.0, changed=0.0
    )
    start, stop = LAYOUT.word_range(1)
    common = left[0, start:stop].copy()
    left[:150, start:stop] = common  # 150 people on each side share one birth encoding
    right[:150, start:stop] = common
    scorer = Scorer(
        [left, right],
        LAYOUT,
        [(0, 1)],
        ModelSettings(random_pairs=100_000, term_frequencies=True),
        seed=3,
    )
    same = np.flatnonzero((left[150:500, start:stop] == right[150:500, start:stop]).all(axis=1))
    rare = 150 + int(same[0])
    pairs = CandidatePairs(
        left=np.array([0, rare]), right=np.array([0, rare]), scores=np.zeros(2, np.float32),
        comparisons=2,
    )  # fmt: skip
    # A common and a rare birth encoding, each identical across the pair.
    scorer.score([pairs])
    adjustments = scorer._adjustments([pairs], comparison_levels(
        scorer.similarities(0, pairs), scorer.model.groups), scorer.model)  # fmt: skip
    assert adjustments is not None
    assert adjustments[0, 1] < 0 < adjustments[1, 1]


def _geometric_matches(cut: float, ratio: float, top: float) -> tuple[np.ndarray, np.ndarray]:
    """Candidate scores above ``cut`` whose match mass falls by ``ratio`` per 0.05 towards
    the cut: ``top`` in the highest of three bins (probability 1 each, at bin centres)."""
    scores, probabilities = [], []
    for k in range(3):
        mass = top * ratio ** (2 - k)
        scores.append(np.full(round(mass), cut + 0.05 * k + 0.025))
        probabilities.append(np.ones(round(mass)))
    return np.concatenate(scores), np.concatenate(probabilities)


def test_unseen_matches_continue_the_matches_density_below_the_cut() -> None:
    scores, probabilities = _geometric_matches(0.5, 0.5, 400.0)
    # 100 in the bin at the cut; below it 50 + 25 + ... over ten bins down to 0.
    expected = sum(100.0 * 0.5**k for k in range(1, 11))
    assert unseen_matches(scores, probabilities, 0.5) == pytest.approx(expected, rel=1e-6)
    # A density falling slowly towards the cut is continued at the largest ratio; one that
    # does not fall is the floor of non-matches' small probabilities, not a tail.
    gentle = np.repeat([0.52, 0.57, 0.62], [10, 11, 12])
    slow = unseen_matches(gentle, np.ones(len(gentle)), 0.5)
    line = np.polyfit([0, 1, 2], np.log([10.0, 11.0, 12.0]), 1)
    level = float(np.exp(line[1]))
    assert slow == pytest.approx(level * sum(0.9**k for k in range(1, 11)), rel=1e-6)
    assert unseen_matches(np.array([0.52, 0.57, 0.62]), np.ones(3), 0.5) == 0.0
    assert unseen_matches(np.array([0.52, 0.52, 0.57]), np.ones(3), 0.5) == 0.0
    # No matches near the cut, or one bin only: nothing is claimed.
    assert unseen_matches(np.array([0.66]), np.array([1.0]), 0.5) == 0.0
    assert unseen_matches(np.array([0.97]), np.array([1.0]), 0.96) == 0.0
    assert unseen_matches(np.empty(0), np.empty(0), 0.5) == 0.0


def test_the_floor_of_many_tiny_probabilities_is_no_tail_of_matches() -> None:
    """20,000 non-matches at the cut, each with probability 0.005, add 100 to the bin at the
    cut: counted, they would double its mass and flatten the fall; below the minimum
    probability they are left out and the matches' own tail is continued."""
    scores, probabilities = _geometric_matches(0.5, 0.5, 400.0)
    matches_only = unseen_matches(scores, probabilities, 0.5)
    floor_scores = np.concatenate([scores, np.full(20_000, 0.51)])
    floor_probabilities = np.concatenate([probabilities, np.full(20_000, 0.005)])
    assert unseen_matches(floor_scores, floor_probabilities, 0.5) == pytest.approx(matches_only)
    assert unseen_matches_reference(
        floor_scores.tolist(), floor_probabilities.tolist(), 0.5
    ) == pytest.approx(matches_only)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(st.floats(0.0, 1.0, allow_nan=False), st.floats(0.0, 1.0, allow_nan=False)),
        max_size=60,
    ),
    st.floats(0.05, 0.95, allow_nan=False),
)
def test_unseen_matches_agree_with_their_reference(
    pairs: list[tuple[float, float]], cut: float
) -> None:
    kept = [(score, p) for score, p in pairs if score >= cut]
    scores = np.array([score for score, _ in kept], np.float64)
    probabilities = np.array([p for _, p in kept], np.float64)
    fast = unseen_matches(scores, probabilities, cut)
    slow = unseen_matches_reference(scores.tolist(), probabilities.tolist(), cut)
    assert fast == pytest.approx(slow, rel=1e-6, abs=1e-9)


def test_a_cluster_of_three_parties_lends_its_pairs_the_third_records_evidence() -> None:
    from linkage_unit.fellegi_sunter import FellegiSunterModel

    model = FellegiSunterModel(
        groups=(GroupLevels(name="g", cuts=()),), m=((0.5, 0.5),), u=((0.5, 0.5),),
        prior=(0.1, 0.1, 0.1), iterations=1, converged=True,
    )  # fmt: skip

    def one(p: float) -> CandidatePairs:
        weight = np.float32(np.log2(p / (1 - p)))
        return CandidatePairs(
            left=np.array([0]), right=np.array([0]), scores=np.array([weight]), comparisons=1
        )

    # One cluster of a (party 0), b (party 1), c (party 2): a-b weak, a-c and b-c strong.
    jobs = [(0, 1), (0, 2), (1, 2)]
    scored = ScoredPairs(
        party_pairs=tuple(
            PartyPairs(left_party=i, right_party=j, pairs=one(p))
            for (i, j), p in zip(jobs, (0.4, 0.9, 0.8), strict=True)
        ),
        match_probability=0.5,
        model=model,
        exclusive=True,
    )
    clusters = [np.array([7]), np.array([7]), np.array([7])]

    def never(job: int, left: np.ndarray, right: np.ndarray) -> np.ndarray:
        raise AssertionError("every joined pair is a candidate here")

    quality = estimate_quality(scored, clusters, jobs, never)
    through = {0: 0.9 * 0.8, 1: 0.4 * 0.8, 2: 0.4 * 0.9}
    expected = [1 - (1 - p) * (1 - through[n]) for n, p in enumerate((0.4, 0.9, 0.8))]
    assert quality.expected_true_links == pytest.approx(sum(expected), rel=1e-6)
    # Two parties only: no third record, each pair on its own evidence.
    alone = estimate_quality(
        replace(scored, party_pairs=scored.party_pairs[:1]), clusters[:2], jobs[:1], never
    )
    assert alone.expected_true_links == pytest.approx(0.4, rel=1e-6)
    # The third record in another cluster lends nothing.
    apart = estimate_quality(
        scored, [np.array([7]), np.array([7]), np.array([8])], jobs, lambda *_: np.zeros(1)
    )
    assert apart.expected_true_links == pytest.approx(0.4, rel=1e-6)


@settings(max_examples=60, deadline=None)
@given(
    st.integers(1, 12),
    st.integers(1, 12),
    st.booleans(),
    st.data(),
)
def test_joined_candidates_agree_with_their_reference(
    left_size: int, right_size: int, within: bool, data: st.DataObject
) -> None:
    from linkage_unit.scoring import _joined_candidates, _joined_candidates_reference

    right_size = left_size if within else right_size
    ids = st.integers(0, 4)
    left_ids = np.array(data.draw(st.lists(ids, min_size=left_size, max_size=left_size)))
    right_ids = (
        left_ids
        if within
        else np.array(data.draw(st.lists(ids, min_size=right_size, max_size=right_size)))
    )
    pairs = data.draw(
        st.lists(st.tuples(st.integers(0, left_size - 1), st.integers(0, right_size - 1)))
    )
    candidates = CandidatePairs(
        left=np.array([a for a, _ in pairs], np.int64),
        right=np.array([b for _, b in pairs], np.int64),
        scores=np.zeros(len(pairs), np.float32),
        comparisons=0,
    )
    from linkage_unit import scoring

    fast = _joined_candidates(candidates, left_ids, right_ids, within=within)
    slow = _joined_candidates_reference(candidates, left_ids, right_ids, within=within)
    assert fast.tolist() == slow.tolist()
    saved, scoring._JOIN_CHUNK = scoring._JOIN_CHUNK, 3
    try:
        chunked = _joined_candidates(candidates, left_ids, right_ids, within=within)
    finally:
        scoring._JOIN_CHUNK = saved
    assert chunked.tolist() == slow.tolist()


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 2**32 - 1), st.lists(st.integers(0, 40), min_size=0, max_size=3))
def test_random_pairs_compared_in_place_equal_those_gathered_after(
    seed: int, counts: list[int]
) -> None:
    from linkage_unit.group_similarity import group_similarities
    from linkage_unit.scoring import _concatenate, _select, _similarities_in_order

    generator = np.random.default_rng(seed)
    arrays = [
        generator.integers(0, 2**64, (size, LAYOUT.total_words), np.uint64, endpoint=False)
        for size in (5, 7, 3)
    ]
    arrays[1][2] = 0  # an empty record: every group missing
    jobs = [(0, 1), (1, 1), (2, 0)]
    samples = [
        (
            i,
            j,
            generator.integers(0, len(arrays[i]), count),
            generator.integers(0, len(arrays[j]), count),
        )
        for (i, j), count in zip(jobs, counts, strict=False)
    ]
    rows = generator.permutation(sum(counts))
    fast = _similarities_in_order(arrays, LAYOUT, samples, rows, 1)
    parts = [group_similarities(arrays[i], arrays[j], a, b, LAYOUT) for i, j, a, b in samples]
    slow = _select(_concatenate(parts, len(LAYOUT.groups)), rows)
    for name in ("shared", "left_counts", "right_counts"):
        assert getattr(fast, name).tolist() == getattr(slow, name).tolist()


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(0, 20))
def test_group_hashes_are_their_numpy_twin(seed: int, records: int) -> None:
    from linkage_unit.scoring import _group_hashes, _group_hashes_numpy

    generator = np.random.default_rng(seed)
    clks = generator.integers(0, 2**64, (records, LAYOUT.total_words), np.uint64, endpoint=False)
    if records:
        clks[0] = 0  # an empty record hashes to 0 in every group
    fast = _group_hashes(clks, LAYOUT)
    slow = _group_hashes_numpy(clks, LAYOUT)
    assert fast.dtype == slow.dtype and fast.tobytes() == slow.tobytes()


@settings(max_examples=40, deadline=None)
@given(
    st.integers(0, 2**32 - 1),
    st.lists(st.integers(0, 30), min_size=1, max_size=3),
    st.integers(1, 6),
)
def test_identical_rates_are_their_numpy_twin(seed: int, sizes: list[int], distinct: int) -> None:
    from linkage_unit.scoring import _identical_rates, _identical_rates_numpy

    generator = np.random.default_rng(seed)
    # Few distinct hashes, so parties share encodings; a popcount of 0 is a missing group.
    popcounts = [generator.integers(0, 3, (size, 2)).astype(np.int32) for size in sizes]
    hashes = [generator.integers(0, distinct, (size, 2)).astype(np.uint64) for size in sizes]
    parties = range(len(sizes))
    jobs = [(i, j) for i in parties for j in parties if i <= j]
    assert _identical_rates(popcounts, hashes, jobs) == _identical_rates_numpy(
        popcounts, hashes, jobs
    )


@settings(max_examples=40, deadline=None)
@given(size=st.integers(0, 400), chunk=st.integers(1, 50), seed=st.integers(0, 2**32 - 1))
def test_a_masked_sum_in_chunks_is_the_masked_copys_sum(size: int, chunk: int, seed: int) -> None:
    generator = np.random.default_rng(seed)
    values = generator.random(size)
    mask = generator.random(size) < 0.7
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(scoring, "_JOIN_CHUNK", chunk)
        got = scoring._sum_where(values, mask)
    assert got == pytest.approx(float(values[mask].sum()), rel=1e-12, abs=1e-12)


def test_the_score_stage_counts_its_candidates_in_chunks_to_the_same_scores(
    planted: tuple[np.ndarray, np.ndarray], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The candidates' group counts taken a chunk at a time, twice (level cuts, then levels),
    score every pair as the whole counts at once do, bit for bit."""
    left, right = planted
    whole = link({"a": left, "b": right}, SETTINGS, layout=LAYOUT)
    monkeypatch.setattr(scoring, "_SIMILARITY_CHUNK", 97)
    chunked = link({"a": left, "b": right}, SETTINGS, layout=LAYOUT)
    assert whole.scored is not None and chunked.scored is not None
    assert whole.statistics.candidate_pairs > 97 * 3  # several chunks
    assert chunked.statistics.model == whole.statistics.model
    for mine, theirs in zip(whole.scored.party_pairs, chunked.scored.party_pairs, strict=True):
        assert mine.pairs.scores.tobytes() == theirs.pairs.scores.tobytes()
    np.testing.assert_array_equal(whole.clusters["a"], chunked.clusters["a"])
