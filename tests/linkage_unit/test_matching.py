"""link(): the whole engine on planted matches, and every degenerate input."""

from __future__ import annotations

import numpy as np
import pytest

from linkage_unit.blocking import BlockingSettings
from linkage_unit.matching import LinkResult, MatchSettings, link
from protocol.errors import MatchingError
from tests.strategies import noisy_copies, random_clks


def planted(seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    generator = np.random.default_rng(seed)
    left = random_clks(generator, 1200)
    right = random_clks(generator, 900)
    right[:400] = noisy_copies(generator, left[:400], 0.04)
    return left, right


@pytest.mark.parametrize("blocking", ["none", "lsh", "auto"])
def test_planted_matches_are_linked_and_nothing_else(blocking: str) -> None:
    left, right = planted()
    result = link(
        {"a": left, "b": right}, MatchSettings(threshold=0.8, blocking=blocking, blocking_seed=3)
    )
    assert np.array_equal(result.clusters["a"][:400], result.clusters["b"][:400])
    assert result.linked_record_count == 800
    assert result.cluster_count == 1200 + 900 - 400
    assert result.threshold_method == "operator"


def test_automatic_threshold_from_the_null_model_links() -> None:
    left, right = planted(2)
    result = link({"a": left, "b": right}, MatchSettings(blocking_seed=1))
    assert result.threshold_method == "null-model"
    assert 0.6 < result.threshold < 0.9
    assert result.linked_record_count == 800


def test_three_parties_and_deduplication() -> None:
    generator = np.random.default_rng(4)
    a = random_clks(generator, 300)
    b = noisy_copies(generator, a[:100], 0.03)
    c = np.concatenate([noisy_copies(generator, a[:50], 0.03), random_clks(generator, 50)])
    result = link({"a": a, "b": b, "c": c}, MatchSettings(threshold=0.8))
    assert np.array_equal(result.clusters["a"][:50], result.clusters["c"][:50])
    assert np.array_equal(result.clusters["a"][:100], result.clusters["b"])
    one = np.concatenate([a[:100], noisy_copies(generator, a[:100], 0.03)])
    deduplicated = link({"a": one}, MatchSettings(threshold=0.8, deduplicated=frozenset({"a"})))
    assert np.array_equal(deduplicated.clusters["a"][:100], deduplicated.clusters["a"][100:])
    assert deduplicated.cluster_count == 100


def test_empty_uploads_and_single_records() -> None:
    empty = np.empty((0, 16), np.uint64)
    one = random_clks(np.random.default_rng(5), 1)
    result = link({"a": empty, "b": one}, MatchSettings())
    assert len(result.clusters["a"]) == 0 and list(result.clusters["b"]) == [0]
    assert result.cluster_count == 1 and result.threshold_method == "default"
    both_one = link({"a": one, "b": one.copy()}, MatchSettings(threshold=0.9))
    assert both_one.cluster_count == 1 and both_one.linked_record_count == 2


def test_all_records_identical() -> None:
    same = np.tile(random_clks(np.random.default_rng(6), 1), (40, 1))
    result = link({"a": same, "b": same.copy()}, MatchSettings(threshold=0.8))
    assert result.cluster_count == 40 and result.linked_record_count == 80
    deduplicated = link({"a": same}, MatchSettings(threshold=0.8, deduplicated=frozenset({"a"})))
    assert deduplicated.cluster_count == 1


def test_a_block_over_budget_is_reported_not_hidden() -> None:
    same = np.tile(random_clks(np.random.default_rng(7), 1), (40, 1))
    settings = MatchSettings(
        threshold=0.8, blocking="lsh",
        blocking_settings=BlockingSettings(fit_to_data=False, bands=2, bits_per_band=4, max_block_comparisons=100),
    )  # fmt: skip
    result = link({"a": same, "b": same.copy()}, settings)
    assert result.statistics.compare.oversized_blocks_skipped == 2
    assert result.statistics.compare.oversized_block_comparisons_skipped == 2 * 1600


def test_candidate_pairs_over_the_limit_raise() -> None:
    same = np.tile(random_clks(np.random.default_rng(8), 1), (60, 1))
    with pytest.raises(MatchingError, match="candidate pairs"):
        link({"a": same, "b": same}, MatchSettings(threshold=0.8, max_candidate_pairs=100))


@pytest.mark.parametrize("threshold", [0.0, -1.0, 1.5])
def test_threshold_outside_unit_interval(threshold: float) -> None:
    with pytest.raises(MatchingError, match="threshold"):
        MatchSettings(threshold=threshold)


def test_unusable_inputs_are_refused() -> None:
    clks = random_clks(np.random.default_rng(9), 3)
    with pytest.raises(MatchingError, match="at least one party"):
        link({}, MatchSettings())
    with pytest.raises(MatchingError, match="two parties"):
        link({"a": clks}, MatchSettings())
    with pytest.raises(MatchingError, match="different lengths"):
        link({"a": clks, "b": clks[:, :8].copy()}, MatchSettings())
    with pytest.raises(MatchingError, match="blocking"):
        MatchSettings(blocking="magic")


def test_result_is_a_link_result_with_one_id_per_record() -> None:
    left, right = planted(3)
    result = link({"a": left, "b": right}, MatchSettings(threshold=0.85))
    assert isinstance(result, LinkResult)
    assert len(result.clusters["a"]) == 1200 and len(result.clusters["b"]) == 900
    assert result.comparisons == 1200 * 900


def planted_repeats(seed: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Party a: 600 people, 200 of them with a second and 100 with a third noisy record;
    party b (duplicate-free): noisy copies of a's first 300 people and 300 others."""
    generator = np.random.default_rng(seed)
    people = random_clks(generator, 600)
    a = np.concatenate(
        [
            people,
            noisy_copies(generator, people[:200], 0.04),
            noisy_copies(generator, people[:100], 0.04),
        ]
    )
    b = np.concatenate([noisy_copies(generator, people[:300], 0.04), random_clks(generator, 300)])
    return a, b


def test_deduplicate_and_link_clusters_people_across_and_within_parties() -> None:
    a, b = planted_repeats()
    result = link({"a": a, "b": b}, MatchSettings(deduplicated=frozenset({"a"}), blocking_seed=2))
    ids_a, ids_b = result.clusters["a"], result.clusters["b"]
    # Each person's records in a share one cluster, with its record in b (first 300 people).
    np.testing.assert_array_equal(ids_a[:200], ids_a[600:800])
    np.testing.assert_array_equal(ids_a[:100], ids_a[800:])
    np.testing.assert_array_equal(ids_a[:300], ids_b[:300])
    assert len(np.unique(ids_a[:600])) == 600 and not set(ids_b[300:]) & set(ids_a)
    assert result.cluster_count == 600 + 300
    assert result.statistics.largest_cluster == 4  # three records in a, one in b
    # b is duplicate-free, so each a record's second-best in b is a non-match: the null
    # model applies; with every party deduplicated there is no such party.
    assert result.threshold_method == "null-model"
    both = link(
        {"a": a, "b": b}, MatchSettings(deduplicated=frozenset({"a", "b"}), blocking_seed=2)
    )
    assert both.threshold_method != "null-model"
    np.testing.assert_array_equal(both.clusters["a"][:300], both.clusters["b"][:300])


def test_deduplicate_only_a_party_not_in_the_run_is_refused() -> None:
    a, _ = planted_repeats()
    with pytest.raises(MatchingError, match="cannot deduplicate c: not a party"):
        link({"a": a}, MatchSettings(deduplicated=frozenset({"c"})))
    with pytest.raises(MatchingError, match="at least two parties"):
        link({"a": a}, MatchSettings())


def test_a_giant_cluster_fails_the_run() -> None:
    same = np.tile(random_clks(np.random.default_rng(9), 1), (30, 1))
    settings = MatchSettings(threshold=0.8, deduplicated=frozenset({"a"}), max_cluster_size=20)
    with pytest.raises(MatchingError, match="more than 20 records"):
        link({"a": same}, settings)
