"""The join's rule (``group_blocking.JoinRule``): missing-aware, rarity-weighted Dice over the
groups both records hold. The kernel agrees with the nested-loop twin and the numpy terms to
the last bit; the recall check wants only the joined pairs the rule keeps; the scorer picks
the rule's weights from the identical rates and its cut at the record cut's pass rate."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from linkage_unit.blocking import BlockingMode, BlockingSettings
from linkage_unit.comparison import CompareSettings, LocalComparer, rules_of_jobs
from linkage_unit.fellegi_sunter import ModelSettings
from linkage_unit.group_blocking import (
    GroupBlockingSettings,
    JoinRule,
    _rule_keeps_reference,
    estimate_recall,
    group_join,
    group_join_reference,
)
from linkage_unit.matching import MatchSettings, link
from linkage_unit.report import RunReport, build_report
from linkage_unit.scoring import Scorer
from linkage_unit.similarity import candidate_pairs, group_counts
from protocol.clk_layout import ClkLayout, GroupLayout
from protocol.errors import MatchingError
from tests.linkage_unit.test_group_blocking import pooled_parties, triples


def rules(groups: int) -> st.SearchStrategy[JoinRule]:
    weight = st.floats(0.1, 5.0, allow_nan=False, allow_infinity=False)
    return st.builds(
        JoinRule,
        weights=st.tuples(*[weight] * groups),
        cut=st.sampled_from([0.2, 0.5, 0.62, 0.8, 1.0]),
    )


@settings(max_examples=60, deadline=None)
@given(
    data=pooled_parties(),
    cap=st.integers(1, 40),
    within=st.booleans(),
    workers=st.integers(1, 2),
    chosen=st.data(),
)
def test_the_ruled_join_agrees_with_its_nested_loop_twin(
    data, cap, within, workers, chosen
) -> None:
    offsets, left, right = data
    rule = chosen.draw(rules(len(offsets) - 1))
    other = None if within else right
    joined = group_join(
        left, other, offsets, 0.5, rule=rule, max_group_block_pairs=cap, workers=workers
    )
    expected, plan = group_join_reference(
        left, other, offsets, 0.5, rule=rule, max_group_block_pairs=cap
    )
    assert triples(joined.pairs) == expected
    assert joined.plan == plan


@settings(max_examples=60, deadline=None)
@given(data=pooled_parties(), chosen=st.data())
def test_the_rules_numpy_terms_keep_what_the_scalar_twin_keeps(data, chosen) -> None:
    offsets, left, right = data
    if len(left) == 0 or len(right) == 0:
        return
    rule = chosen.draw(rules(len(offsets) - 1))
    rows, cols = (np.ravel(axis) for axis in np.indices((len(left), len(right))))
    counts = group_counts(left, right, rows, cols, offsets, dtype=np.int32)
    kept = rule.keeps(counts.shared, counts.left, counts.right)
    expected = [
        _rule_keeps_reference(rule, left[a], right[b], offsets)
        for a, b in zip(rows.tolist(), cols.tolist(), strict=True)
    ]
    assert kept.tolist() == expected
    scores = rule.scores(counts.shared, counts.left, counts.right)
    assert np.all((scores > 0) | ~kept)


def test_a_missing_group_counts_for_nothing_and_a_rare_one_for_more() -> None:
    # Two groups of one word: the pair agrees fully on group 0; group 1 is missing on the
    # left. Record-level Dice counts the right side's group-1 bits against the pair.
    left = np.array([[0b1111, 0]], np.uint64)
    right = np.array([[0b1111, 0b1111]], np.uint64)
    offsets = (0, 1, 2)
    counts = group_counts(left, right, [0], [0], offsets, dtype=np.int32)
    rule = JoinRule(weights=(1.0, 1.0), cut=0.9)
    assert rule.scores(counts.shared, counts.left, counts.right).tolist() == [1.0]
    assert candidate_pairs(left, right, 0.9).left.tolist() == []  # 8 / 12 at record level
    # Half agreement on a group weighed 3, full on one weighed 1: 2 * (3 * 2 + 1 * 4) /
    # (3 * (2 + 4) + 1 * (4 + 4)) = 20 / 26.
    left = np.array([[0b0011, 0b1111]], np.uint64)
    right = np.array([[0b1111, 0b1111]], np.uint64)
    counts = group_counts(left, right, [0], [0], offsets, dtype=np.int32)
    weighed = JoinRule(weights=(3.0, 1.0), cut=0.5).scores(counts.shared, counts.left, counts.right)
    assert weighed.tolist() == [20 / 26]


def test_a_join_rule_refuses_nonsense() -> None:
    with pytest.raises(MatchingError, match="two groups"):
        JoinRule(weights=(1.0,), cut=0.5)
    with pytest.raises(MatchingError, match="finite and > 0"):
        JoinRule(weights=(1.0, 0.0), cut=0.5)
    with pytest.raises(MatchingError, match="finite and > 0"):
        JoinRule(weights=(1.0, float("nan")), cut=0.5)
    with pytest.raises(MatchingError):
        JoinRule(weights=(1.0, 1.0), cut=1.5)
    with pytest.raises(MatchingError, match="weight per group"):
        group_join(
            np.zeros((2, 3), np.uint64), None, (0, 1, 2, 3), 0.5,
            rule=JoinRule(weights=(1.0, 1.0), cut=0.5),
        )  # fmt: skip
    with pytest.raises(MatchingError, match="one join rule"):
        rules_of_jobs([None], 2)
    assert rules_of_jobs((), 2) == [None, None]


@settings(max_examples=40, deadline=None)
@given(data=pooled_parties(), within=st.booleans(), chosen=st.data())
def test_the_recall_check_wants_only_the_joined_pairs_the_rule_keeps(data, within, chosen) -> None:
    offsets, left, right = data
    other = None if within else right
    if len(left) == 0 or (other is not None and len(other) == 0):
        return
    rule = chosen.draw(rules(len(offsets) - 1))
    threshold = 0.5
    joined = group_join(left, other, offsets, threshold, rule=rule, max_group_block_pairs=10)
    estimate = estimate_recall(
        left,
        other,
        joined,
        threshold,
        0.9,
        sample=len(left),
        seed=1,
        rule=rule,
        offsets=offsets,
    )  # fmt: skip  (every record sampled: exact)
    others = left if other is None else other
    exhaustive = triples(candidate_pairs(left, others, threshold))
    if other is None:
        exhaustive = [(a, b, score) for a, b, score in exhaustive if a != b]
    compared = joined.keys.joined(
        np.array([a for a, _, _ in exhaustive], np.int64),
        np.array([b for _, b, _ in exhaustive], np.int64),
    )
    outcomes = []
    for (a, b, score), was_compared in zip(exhaustive, compared.tolist(), strict=True):
        if was_compared:
            if _rule_keeps_reference(rule, left[a], others[b], offsets):
                outcomes.append(True)  # the join holds what its rule keeps
        else:
            outcomes.append(bool(score >= np.float32(0.9)))
    assert estimate == (float(np.mean(outcomes)) if outcomes else 1.0)


LAYOUT = ClkLayout(
    groups=(
        GroupLayout(name="name", bits=128),
        GroupLayout(name="birth", bits=128),
        GroupLayout(name="postcode", bits=64),
    )
)


def _records(generator: np.random.Generator, size: int, pools: list[np.ndarray]) -> np.ndarray:
    out = np.zeros((size, 5), np.uint64)
    starts = (0, 2, 4, 5)
    for g, pool in enumerate(pools):
        out[:, starts[g] : starts[g + 1]] = pool[generator.integers(0, len(pool), size)]
    out[generator.random(size) < 0.1, 4] = 0  # a tenth without a postcode
    return out


def test_the_scorers_rule_weighs_rare_agreement_more_at_the_record_cuts_pass_rate() -> None:
    generator = np.random.default_rng(5)
    # Few distinct birth encodings (common agreement), many postcodes (rare agreement).
    pools = [
        generator.integers(0, 2**63, (400, 2), dtype=np.uint64),
        generator.integers(0, 2**63, (20, 2), dtype=np.uint64),
        generator.integers(0, 2**63, (300, 1), dtype=np.uint64),
    ]
    left, right = _records(generator, 600, pools), _records(generator, 600, pools)
    scorer = Scorer([left, right], LAYOUT, [(0, 1)], ModelSettings(), seed=2)
    cut = scorer.candidate_cut()
    rule = cut.join_rule
    assert rule is not None
    rates = scorer.identical_rates
    raw = [-np.log(rate) for rate in rates]
    assert rule.weights == pytest.approx([w / np.mean(raw) for w in raw])
    assert rule.weights[1] < rule.weights[0] and rule.weights[1] < rule.weights[2]
    random = scorer.random
    passed = rule.keeps(random.shared, random.left_counts, random.right_counts).mean()
    # The same quantile as the record cut (its rounding to 4 places aside).
    assert passed == pytest.approx(scorer.tail, rel=0.5, abs=5.0 / len(random))


def test_one_group_has_no_rule_and_a_fixed_threshold_none() -> None:
    layout = ClkLayout(groups=(GroupLayout(name="all", bits=128),))
    generator = np.random.default_rng(1)
    left = generator.integers(0, 2**63, (50, 2), dtype=np.uint64)
    right = generator.integers(0, 2**63, (50, 2), dtype=np.uint64)
    scorer = Scorer([left, right], layout, [(0, 1)], ModelSettings(), seed=2)
    assert scorer.candidate_cut().join_rule is None


def test_the_local_comparer_hands_each_party_pair_its_rule() -> None:
    generator = np.random.default_rng(9)
    pools = [
        generator.integers(0, 2**63, (30, 2), dtype=np.uint64),
        generator.integers(0, 2**63, (30, 2), dtype=np.uint64),
        generator.integers(0, 2**63, (30, 1), dtype=np.uint64),
    ]
    left, right = _records(generator, 300, pools), _records(generator, 300, pools)
    offsets = LAYOUT.word_offsets()
    compare = CompareSettings(
        blocking=BlockingMode.LSH,
        blocking_settings=BlockingSettings(
            fit_to_data=False, bands=8, bits_per_band=8, target_recall=1e-6
        ),
        seed=4,
        max_pairs=10**7,
        group_blocking=GroupBlockingSettings(min_recall=0.0, max_fallback_cost=0.0),
        group_offsets=offsets,
    )
    strict = JoinRule(weights=(1.0, 1.0, 1.0), cut=1.0)
    (plain,) = LocalComparer().compare([left, right], [(0, 1)], [0.5], compare)
    (ruled,) = LocalComparer().compare([left, right], [(0, 1)], [0.5], compare, join_rules=[strict])
    joined = group_join(left, right, offsets, 0.5, rule=strict)
    assert ruled.statistics.group_block_pairs > 0  # the join was used, not set aside
    assert len(ruled.pairs) < len(plain.pairs)
    found = set(zip(ruled.pairs.left.tolist(), ruled.pairs.right.tolist(), strict=True))
    assert set(zip(joined.pairs.left.tolist(), joined.pairs.right.tolist(), strict=True)) <= found


def test_a_model_runs_join_uses_its_scorers_rule_and_the_report_names_it() -> None:
    generator = np.random.default_rng(11)
    pools = [
        generator.integers(0, 2**63, (500, 2), dtype=np.uint64),
        generator.integers(0, 2**63, (40, 2), dtype=np.uint64),
        generator.integers(0, 2**63, (400, 1), dtype=np.uint64),
    ]
    people = _records(generator, 700, pools)
    moj, dfe = people[:500].copy(), people[200:].copy()
    dfe[::5, 0] ^= np.uint64(0xF0F0)  # a fifth of dfe's names differ a little
    settings = MatchSettings(
        blocking=BlockingMode.LSH,
        blocking_seed=3,
        blocking_settings=BlockingSettings(
            fit_to_data=False, bands=8, bits_per_band=12, target_recall=1e-6
        ),
        # The join is used whatever its recall here: this checks the rule reaches it.
        group_blocking=GroupBlockingSettings(min_recall=0.0, max_fallback_cost=0.0),
        model=ModelSettings(random_pairs=50_000),
    )
    result = link({"moj": moj, "dfe": dfe}, settings, layout=LAYOUT)
    cut = result.statistics.candidate_cut
    assert cut is not None and cut.join_rule is not None
    assert result.statistics.compare.group_lsh_thresholds  # the join was used
    report = build_report(result)
    assert report.join_cut == cut.join_rule.cut
    assert report.join_weights == cut.join_rule.weights
    assert RunReport.from_json(report.to_json()) == report
    # Without the join the report names no rule.
    plain = link({"moj": moj, "dfe": dfe}, replace(settings, group_blocking=None), layout=LAYOUT)
    assert build_report(plain).join_cut is None and build_report(plain).join_weights == ()
