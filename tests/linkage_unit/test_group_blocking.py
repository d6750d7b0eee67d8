"""Group blocking: the join agrees with its nested-loop twin, the union with LSH holds each
pair once with its exhaustive score, and a run can turn it on."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from linkage_unit import group_blocking
from linkage_unit.blocking import (
    EXHAUSTIVE_PAIR_COST,
    BlockingIndex,
    BlockingMode,
    BlockingSettings,
    blocking_cost,
    blocking_settings_for,
    sample_band_positions,
)
from linkage_unit.comparison import CompareSettings, LocalComparer
from linkage_unit.group_blocking import (
    GroupBlockingSettings,
    estimate_recall,
    falls_back,
    generate_group_candidates,
    group_join,
    group_join_reference,
    lsh_beyond_join,
    merge_candidates,
    merge_candidates_reference,
)
from linkage_unit.matching import MatchSettings, link
from linkage_unit.server import LinkageUnitServer, ServerConfig
from linkage_unit.similarity import (
    CandidatePairs,
    _scores,
    candidate_pairs,
    candidate_pairs_within,
)
from protocol.clk_layout import ClkLayout, GroupLayout
from protocol.errors import ConfigurationError, MatchingError
from protocol.messages import RunState
from tests.linkage_unit.test_grouped_projects import grouped_file, planted, upload
from tests.linkage_unit.test_grouped_projects import settings as project_settings
from tests.linkage_unit.test_service import OPERATOR
from tests.service_helpers import MemoryAuditSink


@st.composite
def pooled_parties(draw: st.DrawFn) -> tuple[tuple[int, ...], np.ndarray, np.ndarray]:
    """Group word offsets and two parties whose group encodings come from small shared
    pools (so identical encodings, and blocks of several records, are common); a pool
    entry may be empty (all zero bits)."""
    widths = draw(st.lists(st.integers(1, 2), min_size=2, max_size=3))
    offsets = tuple(int(x) for x in np.concatenate([[0], np.cumsum(widths)]))
    seed = draw(st.integers(0, 2**32 - 1))
    generator = np.random.default_rng(seed)
    pools = []
    for width in widths:
        pool = generator.integers(0, 2**63, (draw(st.integers(1, 5)), width), dtype=np.uint64)
        pool[0] = 0 if draw(st.booleans()) else pool[0]
        pools.append(pool)

    def party(size: int) -> np.ndarray:
        out = np.zeros((size, offsets[-1]), np.uint64)
        for g, pool in enumerate(pools):
            out[:, offsets[g] : offsets[g + 1]] = pool[generator.integers(0, len(pool), size)]
        return out

    return offsets, party(draw(st.integers(0, 25))), party(draw(st.integers(0, 25)))


def triples(pairs) -> list[tuple[int, int, float]]:
    return list(zip(pairs.left.tolist(), pairs.right.tolist(), pairs.scores.tolist(), strict=True))


@settings(max_examples=60, deadline=None)
@given(
    data=pooled_parties(),
    threshold=st.sampled_from([0.1, 0.5, 0.7, 0.9]),
    cap=st.integers(1, 40),
    within=st.booleans(),
    workers=st.integers(1, 2),
)
def test_the_join_agrees_with_its_nested_loop_twin(data, threshold, cap, within, workers) -> None:
    offsets, left, right = data
    other = None if within else right
    joined = group_join(left, other, offsets, threshold, max_group_block_pairs=cap, workers=workers)
    expected, plan = group_join_reference(
        left, other, offsets, threshold, max_group_block_pairs=cap
    )
    assert triples(joined.pairs) == expected
    assert joined.plan == plan
    # Each pair is scored once, from its first compared group.
    assert joined.pairs.comparisons <= plan.block_pairs


@settings(max_examples=40, deadline=None)
@given(data=pooled_parties(), threshold=st.sampled_from([0.3, 0.6, 0.9]), within=st.booleans())
def test_group_candidates_are_the_join_and_lsh_pairs_once_with_exhaustive_scores(
    data, threshold, within
) -> None:
    offsets, left, right = data
    other = None if within else right
    if len(left) == 0 or (other is not None and len(other) == 0):
        return
    # The fixed shape makes the fallback affordable, so the join is used from the blocking
    # target on (0.9 here, as min_recall).
    blocking = BlockingSettings(fit_to_data=False, bands=4, bits_per_band=6, target_recall=0.9)
    group = GroupBlockingSettings(
        lsh_threshold=0.9, max_group_block_pairs=10, recall_sample=7, min_recall=0.9
    )
    result = generate_group_candidates(
        left, other, threshold, offsets=offsets, settings=group, blocking=blocking, seed=3
    )
    pairs = result.pairs
    lsh = BlockingIndex(left, other, settings=blocking, seed=3).candidate_pairs(threshold)
    exhaustive = (
        candidate_pairs_within(left, threshold)
        if other is None
        else candidate_pairs(left, other, threshold)
    )
    scores = dict(
        zip(
            zip(exhaustive.left.tolist(), exhaustive.right.tolist(), strict=False),
            exhaustive.scores,
            strict=False,
        )
    )
    found = list(zip(pairs.left.tolist(), pairs.right.tolist(), strict=False))
    assert result.recall_estimate is not None and result.plan is not None
    if result.recall_estimate < group.min_recall:
        # The join held too few pairs of the sample: compared as without group blocking.
        assert result.join is None and result.lsh_threshold is None
        assert triples(pairs) == triples(lsh)
        return
    assert result.join is not None and result.lsh_threshold == 0.9
    expected, _ = group_join_reference(left, other, offsets, threshold, max_group_block_pairs=10)
    union = {(a, b) for a, b, _ in expected} | set(
        zip(lsh.left.tolist(), lsh.right.tolist(), strict=False)
    )
    assert found == sorted(union)
    assert [scores[pair] for pair in found] == pairs.scores.tolist()


@settings(max_examples=40, deadline=None)
@given(data=pooled_parties(), threshold=st.sampled_from([0.3, 0.6, 0.9]), within=st.booleans())
def test_the_recall_check_counts_the_sampled_pairs_the_join_or_lsh_threshold_holds(
    data, threshold, within
) -> None:
    offsets, left, right = data
    other = None if within else right
    if len(left) == 0 or (other is not None and len(other) == 0):
        return
    joined = group_join(left, other, offsets, threshold, max_group_block_pairs=10)
    estimate = estimate_recall(
        left, other, joined, threshold, 0.9, sample=len(left), seed=1
    )  # every record sampled: exact
    exhaustive = (
        candidate_pairs_within(left, threshold)
        if other is None
        else candidate_pairs(left, other, threshold)
    )
    held = {(a, b) for a, b, _ in triples(joined.pairs)}
    wanted = [(a, b) in held or score >= np.float32(0.9) for a, b, score in triples(exhaustive)]
    assert estimate == (float(np.mean(wanted)) if wanted else 1.0)


def test_a_pair_sharing_a_group_is_found_where_lsh_alone_misses_it() -> None:
    generator = np.random.default_rng(1)
    left = generator.integers(0, 2**63, (50, 4), dtype=np.uint64)
    right = generator.integers(0, 2**63, (50, 4), dtype=np.uint64)
    right[7, :2] = left[3, :2]  # one group identical, the other unrelated: Dice about 0.75
    result = generate_group_candidates(
        left, right, 0.7, offsets=(0, 2, 4), settings=GroupBlockingSettings(),
        blocking=BlockingSettings(fit_to_data=False, bands=1, bits_per_band=64), seed=1,
    )  # fmt: skip
    pairs = result.pairs
    assert (3, 7) in set(zip(pairs.left.tolist(), pairs.right.tolist(), strict=False))
    assert result.join is not None and result.join.oversized_blocks == 0
    assert result.recall_estimate == 1.0


def test_an_oversized_block_is_skipped_and_counted() -> None:
    clks = np.zeros((30, 2), np.uint64)
    clks[:, 0] = 5  # one encoding all 30 records share: 435 pairs
    clks[:, 1] = np.arange(1, 31, dtype=np.uint64) << np.uint64(20)
    joined = group_join(clks, None, (0, 1, 2), 0.1, max_group_block_pairs=100)
    assert len(joined.pairs) == 0
    assert (joined.plan.oversized_blocks, joined.plan.oversized_pairs) == (1, 435)


@pytest.mark.parametrize(
    ("recall", "cost", "falls"),
    [
        (0.5, 0.0, True),  # under min_recall: whatever the alternative costs
        (0.5, 1e12, True),
        (0.995, 1e9, True),  # short of the target and the alternative affordable
        (0.995, None, True),  # an operator-fixed shape: affordable
        (0.995, 1e11, False),  # short of the target, but the alternative takes hours
        (0.999, 1e9, False),  # the join meets the target
        (1.0, None, False),
    ],
)
def test_a_join_short_of_the_target_is_set_aside_only_where_the_alternative_is_affordable(
    recall: float, cost: float | None, falls: bool
) -> None:
    asked: list[bool] = []

    def fallback_cost() -> float | None:
        asked.append(True)
        return cost

    assert falls_back(recall, GroupBlockingSettings(), 0.999, fallback_cost) is falls
    # The cost (a fit over both parties) is asked only where it decides.
    assert bool(asked) is (0.99 <= recall < 0.999)


def test_the_cost_of_comparing_without_group_blocking_follows_blocking_settings_for() -> None:
    generator = np.random.default_rng(4)
    left = generator.integers(0, 2**63, (300, 4), dtype=np.uint64)
    right = generator.integers(0, 2**63, (200, 4), dtype=np.uint64)
    assert blocking_cost(left, right, 0.8, BlockingSettings(fit_to_data=False)) is None
    # Small parties: every pair is cheaper than any shape's key building.
    every_pair = EXHAUSTIVE_PAIR_COST * 300 * 200
    assert blocking_settings_for(left, right, 0.8, BlockingSettings()) is None
    assert blocking_cost(left, right, 0.8, BlockingSettings()) == every_pair
    assert (
        blocking_cost(left, None, 0.8, BlockingSettings()) == EXHAUSTIVE_PAIR_COST * 300 * 299 // 2
    )


def test_settings_refuse_nonsense() -> None:
    with pytest.raises(MatchingError):
        GroupBlockingSettings(lsh_threshold=0.0)
    with pytest.raises(MatchingError):
        GroupBlockingSettings(max_group_block_pairs=0)
    with pytest.raises(MatchingError):
        GroupBlockingSettings(min_recall=1.5)
    with pytest.raises(MatchingError):
        GroupBlockingSettings(recall_sample=0)
    with pytest.raises(MatchingError):
        GroupBlockingSettings(max_fallback_cost=-1)
    with pytest.raises(MatchingError):
        group_join(np.zeros((2, 2), np.uint64), None, (0, 3), 0.5)


def _layout() -> ClkLayout:
    return ClkLayout(
        groups=(
            GroupLayout(name="name", bits=128),
            GroupLayout(name="birth", bits=64),
            GroupLayout(name="postcode", bits=64),
        )
    )


def test_the_local_comparer_blocks_by_group_only_where_the_mode_blocks() -> None:
    generator = np.random.default_rng(2)
    left = generator.integers(0, 2**63, (40, 4), dtype=np.uint64)
    right = left.copy()
    right[:, 3] = generator.integers(0, 2**63, 40, dtype=np.uint64)
    common = {
        "blocking_settings": BlockingSettings(fit_to_data=False, bands=2, bits_per_band=30),
        "seed": 4,
        "max_pairs": 10_000,
        "group_blocking": GroupBlockingSettings(),
        "group_offsets": _layout().word_offsets(),
    }
    # At Dice 0.75 only the 40 pairs sharing their first groups pass: the join holds them all.
    blocked = LocalComparer().compare(
        [left, right], [(0, 1)], [0.75], CompareSettings(blocking=BlockingMode.LSH, **common)
    )[0]
    assert blocked.statistics.group_lsh_thresholds == (0.9,)
    assert blocked.statistics.group_recall_estimates == (1.0,)
    assert blocked.statistics.group_block_pairs >= 40
    assert len(blocked.pairs) == 40
    exhaustive = LocalComparer().compare(
        [left, right], [(0, 1)], [0.75], CompareSettings(blocking=BlockingMode.NONE, **common)
    )[0]
    assert exhaustive.statistics.group_lsh_thresholds == ()
    assert exhaustive.statistics.group_recall_estimates == ()
    # At Dice 0.5 about half of all pairs pass and the join holds few: the recall check
    # sends the party pair to the compare without group blocking.
    low = LocalComparer().compare(
        [left, right], [(0, 1)], [0.5], CompareSettings(blocking=BlockingMode.LSH, **common)
    )[0]
    assert low.statistics.group_lsh_thresholds == ()
    assert low.statistics.group_recall_estimates[0] < 0.5
    assert low.statistics.lsh_shapes == ((2, 30),)


def test_a_model_run_with_group_blocking_links_the_same_people() -> None:
    generator = np.random.default_rng(3)
    layout = _layout()
    people = generator.integers(0, 2**63, (300, 4), dtype=np.uint64)
    moj = people[:200].copy()
    dfe = people[100:].copy()
    dfe[::7, 3] ^= np.uint64(0xFF)  # a seventh of dfe moved house: the postcode differs
    common = {
        "blocking": BlockingMode.LSH,
        "blocking_seed": 9,
        # A fixed shape: at this size a fitted one would compare every pair instead.
        "blocking_settings": BlockingSettings(fit_to_data=False, bands=4, bits_per_band=20),
        # The record-level cut (the model's own would sit at random pairs' Dice on so few
        # records, where the join holds few pairs and the recall check turns it away).
        "threshold": 0.75,
    }
    plain = link({"moj": moj, "dfe": dfe}, MatchSettings(**common), layout=layout)
    grouped = link(
        {"moj": moj, "dfe": dfe},
        MatchSettings(**common, group_blocking=GroupBlockingSettings()),
        layout=layout,
    )
    assert grouped.statistics.compare.group_lsh_thresholds == (0.9,)
    assert grouped.statistics.compare.group_recall_estimates == (1.0,)
    linked = grouped.clusters["moj"][100:]
    assert len(set(linked.tolist()) & set(grouped.clusters["dfe"][:100].tolist())) == 100
    assert grouped.linked_record_count == plain.linked_record_count


@settings(max_examples=40, deadline=None)
@given(
    data=pooled_parties(),
    threshold=st.sampled_from([0.3, 0.6, 0.9]),
    within=st.booleans(),
    cap=st.integers(1, 30),
    bits=st.integers(1, 8),
)
def test_the_lsh_part_is_blocking_index_less_the_joined_pairs(
    data, threshold, within, cap, bits
) -> None:
    offsets, left, right = data
    other = None if within else right
    if len(left) == 0 or (other is not None and len(other) == 0):
        return
    shape = BlockingSettings(
        fit_to_data=False, bands=11, bits_per_band=bits, max_block_comparisons=cap
    )
    positions = sample_band_positions(64 * left.shape[1], shape, 8)
    joined = group_join(left, other, offsets, threshold, max_group_block_pairs=4)
    fast, plan = lsh_beyond_join(
        left, other, positions, threshold, joined.keys, max_block_comparisons=cap
    )
    index = BlockingIndex(left, other, settings=shape, positions=positions)
    slow = index.candidate_pairs(threshold)
    keep = ~joined.keys.joined(slow.left, slow.right)
    assert triples(fast) == [t for t, k in zip(triples(slow), keep.tolist(), strict=True) if k]
    assert (plan.block_comparisons, plan.oversized_blocks, plan.oversized_comparisons) == (
        index.plan.block_comparisons,
        index.plan.oversized_blocks,
        index.plan.oversized_comparisons,
    )
    assert fast.comparisons <= slow.comparisons


def test_group_blocking_is_on_by_default_and_the_operator_sets_it_in_the_config(
    tmp_path: Path,
) -> None:
    seen: list[Any] = []

    def spying_link(clks: Any, match_settings: Any, **options: Any) -> Any:
        seen.append(match_settings.group_blocking)
        return link(clks, match_settings, **options)

    default = ServerConfig(data_dir=tmp_path, insecure=True).group_blocking_settings
    assert default == GroupBlockingSettings()
    off = ServerConfig(data_dir=tmp_path, insecure=True, group_blocking=False)
    assert off.group_blocking_settings is None
    config = ServerConfig(
        data_dir=tmp_path,
        insecure=True,
        require_manifest=False,
        group_lsh_threshold=0.92,
        max_group_block_pairs=5000,
    )
    server = LinkageUnitServer(config, audit=MemoryAuditSink(), link_function=spying_link)
    try:
        server.service.create_project(OPERATOR, project_settings())
        clks = planted(1)
        for name in ("moj", "dfe"):
            upload(server.service, grouped_file(tmp_path / f"{name}.clk", clks[name]), name)
        server.service.runs.wait_idle(20)
        status = server.service.project_status(OPERATOR, "p1")
        assert status.run_state is RunState.FINISHED and status.linked_record_count >= 12
    finally:
        server.stop(0)
    assert seen == [GroupBlockingSettings(lsh_threshold=0.92, max_group_block_pairs=5000)]
    with pytest.raises(ConfigurationError, match="group_lsh_threshold"):
        ServerConfig(data_dir=tmp_path, insecure=True, group_blocking=True, group_lsh_threshold=0)


@pytest.mark.parametrize("within", [False, True])
def test_the_recall_check_in_slices_counts_what_it_counts_whole(
    monkeypatch: pytest.MonkeyPatch, within: bool
) -> None:
    import linkage_unit.group_blocking as group_blocking

    generator = np.random.default_rng(4)
    left = generator.integers(0, 2**63, (60, 4), dtype=np.uint64)
    right = left[generator.permutation(60)].copy()
    right[::3, 2:] ^= generator.integers(0, 2**63, (20, 2), dtype=np.uint64)  # group 2 differs
    right[1::3, :2] &= generator.integers(0, 2**63, (20, 2), dtype=np.uint64)  # group 1 thinner
    if within:  # one party holding both copies
        left, other = np.vstack([left, right]), None
    else:
        other = right
    joined = group_join(left, other, (0, 2, 4), 0.5, max_group_block_pairs=10)
    whole = estimate_recall(left, other, joined, 0.5, 0.9, sample=30, seed=2)
    monkeypatch.setattr(group_blocking, "_RECALL_COLUMNS", 7)
    sliced = estimate_recall(left, other, joined, 0.5, 0.9, sample=30, seed=2)
    assert sliced == whole and 0.0 < whole < 1.0


@settings(max_examples=60, deadline=None)
@given(data=pooled_parties(), threshold=st.sampled_from([0.3, 0.6]), seed=st.integers(0, 99))
def test_the_merge_agrees_with_concatenate_and_sort(data, threshold, seed) -> None:
    offsets, left, right = data
    joined = group_join(left, right, offsets, threshold, max_group_block_pairs=10)
    # LSH pairs in any order, some of them pairs the join holds (as the Dask LSH gives).
    exhaustive = candidate_pairs(left, right, threshold)
    order = np.random.default_rng(seed).permutation(len(exhaustive))[: len(exhaustive) // 2 + 1]
    lsh = CandidatePairs(
        left=exhaustive.left[order],
        right=exhaustive.right[order],
        scores=exhaustive.scores[order],
        comparisons=len(order),
    )
    width = max(len(right), 1)
    fast = merge_candidates(joined, lsh, width, max_pairs=10**6, threshold=threshold)
    slow = merge_candidates_reference(joined, lsh, width, max_pairs=10**6, threshold=threshold)
    assert triples(fast) == triples(slow) and fast.comparisons == slow.comparisons


@settings(max_examples=60, deadline=None)
@given(
    sizes=st.lists(st.integers(0, 40), min_size=0, max_size=6),
    most=st.sampled_from([1, 7, 300, 2**20]),
    wide=st.booleans(),
    seed=st.integers(0, 2**32 - 1),
)
def test_sorted_pairs_match_a_sort_of_the_concatenation(
    sizes: list[int], most: int, wide: bool, seed: int
) -> None:
    # Chunks of distinct codes in any order; ``wide`` codes leave no room to pack the shared
    # count, so the argsort path runs.
    generator = np.random.default_rng(seed)
    top = 2**61 if wide else 10**6
    codes = generator.choice(top, size=sum(sizes), replace=False).astype(np.int64)
    shared = generator.integers(0, most + 1, sum(sizes)).astype(np.int32)
    bounds = np.cumsum([0, *sizes])
    parts = [
        (codes[a:b].copy(), shared[a:b].copy())
        for a, b in zip(bounds[:-1], bounds[1:], strict=True)
    ]
    got_codes, got_shared = group_blocking._sorted_pairs(parts)
    order = np.argsort(codes)
    assert parts == []
    assert np.array_equal(got_codes, codes[order]) and got_codes.dtype == np.int64
    assert np.array_equal(got_shared, shared[order]) and got_shared.dtype == np.int32


@settings(max_examples=40, deadline=None)
@given(pairs=st.integers(0, 300), chunk=st.integers(1, 64), seed=st.integers(0, 2**32 - 1))
def test_dice_in_chunks_is_the_whole_arrays_dice(pairs: int, chunk: int, seed: int) -> None:
    generator = np.random.default_rng(seed)
    left_counts = generator.integers(1, 500, 50).astype(np.int32)
    right_counts = generator.integers(1, 500, 60).astype(np.int32)
    rows, cols = generator.integers(0, 50, pairs), generator.integers(0, 60, pairs)
    limit = np.minimum(left_counts[rows], right_counts[cols])
    shared = (generator.random(pairs) * (limit + 1)).astype(np.int32)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(group_blocking, "_SCORE_CHUNK", chunk)
        got = group_blocking._dice_of(shared, rows, cols, left_counts, right_counts)
    whole = _scores(shared, left_counts[rows].astype(np.int64) + right_counts[cols])
    assert got.dtype == np.float32 and np.array_equal(got, whole)
