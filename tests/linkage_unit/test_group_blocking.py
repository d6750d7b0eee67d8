"""Group blocking: the join agrees with its nested-loop twin, the union with LSH holds each
pair once with its exhaustive score, and a run can turn it on."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from linkage_unit.blocking import BlockingIndex, BlockingMode, BlockingSettings
from linkage_unit.comparison import CompareSettings, LocalComparer
from linkage_unit.group_blocking import (
    GroupBlockingSettings,
    generate_group_candidates,
    group_join,
    group_join_reference,
)
from linkage_unit.matching import MatchSettings, link
from linkage_unit.similarity import candidate_pairs, candidate_pairs_within
from protocol.clk_layout import ClkLayout, GroupLayout
from protocol.errors import MatchingError


@st.composite
def grouped_parties(draw: st.DrawFn) -> tuple[tuple[int, ...], np.ndarray, np.ndarray]:
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
    data=grouped_parties(),
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
@given(data=grouped_parties(), threshold=st.sampled_from([0.3, 0.6, 0.9]), within=st.booleans())
def test_group_candidates_are_the_join_and_lsh_pairs_once_with_exhaustive_scores(
    data, threshold, within
) -> None:
    offsets, left, right = data
    other = None if within else right
    if len(left) == 0 or (other is not None and len(other) == 0):
        return
    blocking = BlockingSettings(fit_to_data=False, bands=4, bits_per_band=6)
    group = GroupBlockingSettings(lsh_threshold=0.9, max_group_block_pairs=10)
    pairs, plan, join = generate_group_candidates(
        left, other, threshold, offsets=offsets, settings=group, blocking=blocking, seed=3
    )
    assert plan is not None and join is not None
    expected, _ = group_join_reference(left, other, offsets, threshold, max_group_block_pairs=10)
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
    union = {(a, b) for a, b, _ in expected} | set(
        zip(lsh.left.tolist(), lsh.right.tolist(), strict=False)
    )
    found = list(zip(pairs.left.tolist(), pairs.right.tolist(), strict=False))
    assert found == sorted(union)
    assert [scores[pair] for pair in found] == pairs.scores.tolist()


def test_a_pair_sharing_a_group_is_found_where_lsh_alone_misses_it() -> None:
    generator = np.random.default_rng(1)
    left = generator.integers(0, 2**63, (50, 4), dtype=np.uint64)
    right = generator.integers(0, 2**63, (50, 4), dtype=np.uint64)
    right[7, :2] = left[3, :2]  # one group identical, the other unrelated: Dice about 0.75
    pairs, _, join = generate_group_candidates(
        left, right, 0.7, offsets=(0, 2, 4), settings=GroupBlockingSettings(),
        blocking=BlockingSettings(fit_to_data=False, bands=1, bits_per_band=64), seed=1,
    )  # fmt: skip
    assert (3, 7) in set(zip(pairs.left.tolist(), pairs.right.tolist(), strict=False))
    assert join is not None and join.oversized_blocks == 0


def test_an_oversized_block_is_skipped_and_counted() -> None:
    clks = np.zeros((30, 2), np.uint64)
    clks[:, 0] = 5  # one encoding all 30 records share: 435 pairs
    clks[:, 1] = np.arange(1, 31, dtype=np.uint64) << np.uint64(20)
    joined = group_join(clks, None, (0, 1, 2), 0.1, max_group_block_pairs=100)
    assert len(joined.pairs) == 0
    assert (joined.plan.oversized_blocks, joined.plan.oversized_pairs) == (1, 435)


def test_settings_refuse_nonsense() -> None:
    with pytest.raises(MatchingError):
        GroupBlockingSettings(lsh_threshold=0.0)
    with pytest.raises(MatchingError):
        GroupBlockingSettings(max_group_block_pairs=0)
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
    blocked = LocalComparer().compare(
        [left, right], [(0, 1)], [0.6], CompareSettings(blocking=BlockingMode.LSH, **common)
    )[0]
    assert blocked.statistics.group_lsh_thresholds == (0.9,)
    assert blocked.statistics.group_block_pairs >= 40
    assert len(blocked.pairs) >= 40
    exhaustive = LocalComparer().compare(
        [left, right], [(0, 1)], [0.6], CompareSettings(blocking=BlockingMode.NONE, **common)
    )[0]
    assert exhaustive.statistics.group_lsh_thresholds == ()


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
    }
    plain = link({"moj": moj, "dfe": dfe}, MatchSettings(**common), layout=layout)
    grouped = link(
        {"moj": moj, "dfe": dfe},
        MatchSettings(**common, group_blocking=GroupBlockingSettings()),
        layout=layout,
    )
    assert grouped.statistics.compare.group_lsh_thresholds
    linked = grouped.clusters["moj"][100:]
    assert len(set(linked.tolist()) & set(grouped.clusters["dfe"][:100].tolist())) == 100
    assert grouped.linked_record_count == plain.linked_record_count
