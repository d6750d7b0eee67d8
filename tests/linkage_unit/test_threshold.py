"""Automatic threshold from the best-score distribution."""

from __future__ import annotations

import numpy as np
import pytest

from linkage_unit.threshold import (
    DEFAULT_THRESHOLD,
    SearchBoundary,
    ThresholdChoice,
    ThresholdMethod,
    choose_threshold,
    choose_threshold_with_null,
)
from protocol.errors import MatchingError


def test_valley_between_non_match_and_match_modes() -> None:
    generator = np.random.default_rng(1)
    scores = np.concatenate([generator.normal(0.55, 0.02, 4000), generator.normal(0.93, 0.02, 400)])
    choice = choose_threshold(scores)
    assert choice.method == "valley"
    assert 0.62 < choice.threshold < 0.87
    assert abs(choice.non_match_mode - 0.55) < 0.03 and abs(choice.match_mode - 0.93) < 0.03


# Best scores per 0.01 bin from 0.53 up, of 5,000 sampled records of a deduplicated synth
# hard extract with 5 % repeats (single CLK, seed 2; benchmarks/quality.py's hard-repeats
# set) against its own records: the non-match mode about 0.64, the repeats' mode about 0.90
# and 113 exact copies at 1.0.
OWN_BEST_COUNTS = (
    1, 1, 7, 16, 10, 19, 24, 51, 141, 487, 771, 739, 585, 469, 432, 359, 208, 82, 34, 25, 12,
    16, 9, 13, 8, 6, 19, 13, 8, 15, 14, 19, 27, 20, 16, 24, 24, 31, 24, 25, 23, 24, 11, 11, 2,
    12, 113,
)  # fmt: skip


def test_a_spike_of_exact_copies_does_not_pull_the_valley_above_the_match_mode() -> None:
    # The dip between the repeats' mode and the spike of exact copies (0.96) is lower than
    # the valley below the repeats' mode (0.77), which is where the threshold belongs.
    scores = np.concatenate(
        [np.full(count, min(0.535 + 0.01 * k, 1.0)) for k, count in enumerate(OWN_BEST_COUNTS)]
    )
    choice = choose_threshold(scores)
    assert choice.method == "valley" and choice.boundary is None
    assert 0.74 < choice.threshold < 0.80


def test_valley_moves_with_the_modes() -> None:
    generator = np.random.default_rng(2)
    low = choose_threshold(
        np.concatenate([generator.normal(0.4, 0.02, 3000), generator.normal(0.7, 0.02, 3000)])
    )
    high = choose_threshold(
        np.concatenate([generator.normal(0.6, 0.02, 3000), generator.normal(0.95, 0.01, 3000)])
    )
    assert low.threshold < high.threshold


@pytest.mark.parametrize(
    "scores",
    [np.empty(0), np.full(10, 0.9), np.random.default_rng(3).normal(0.6, 0.03, 5000)],
    ids=["empty", "too-few", "one-mode"],
)
def test_falls_back_to_the_default_without_a_valley(scores) -> None:
    choice = choose_threshold(scores)
    assert choice == ThresholdChoice(threshold=DEFAULT_THRESHOLD, method="default")


def test_choice_is_clamped() -> None:
    generator = np.random.default_rng(4)
    scores = np.concatenate([generator.normal(0.1, 0.01, 3000), generator.normal(0.3, 0.01, 3000)])
    assert choose_threshold(scores).threshold == 0.5


def test_invalid_choice_is_refused() -> None:
    with pytest.raises(MatchingError):
        ThresholdChoice(threshold=0.0, method="valley")


def _mixture(seed: int, matched: int, unmatched: int) -> tuple[np.ndarray, np.ndarray]:
    """Best scores of matched (around 0.9) and unmatched (best non-match around 0.6)
    records, and a second-best (non-match) sample drawn like the unmatched bests."""
    generator = np.random.default_rng(seed)
    best = np.concatenate(
        [generator.normal(0.9, 0.05, matched), generator.normal(0.6, 0.03, unmatched)]
    )
    return np.clip(best, 0, 1), np.clip(generator.normal(0.6, 0.03, 3000), 0, 1)


def test_null_model_puts_the_threshold_between_the_two_distributions() -> None:
    best, null = _mixture(5, 2000, 3000)
    choice = choose_threshold_with_null(best, null)
    assert choice.method == "null-model"
    assert 0.66 < choice.threshold < 0.8


def test_null_model_keeps_weak_matches_when_every_record_has_one() -> None:
    # With no unmatched records a low threshold costs no false positives, so the chosen
    # threshold keeps the weak matches; the valley method sees one mode and falls back.
    all_matched, null = _mixture(6, 5000, 0)
    chosen = choose_threshold_with_null(all_matched, null).threshold
    assert chosen < np.quantile(all_matched, 0.005)
    assert choose_threshold(all_matched).threshold > np.quantile(all_matched, 0.01)


def test_null_model_without_enough_scores_uses_the_valley_method() -> None:
    best, _ = _mixture(7, 400, 4000)
    assert choose_threshold_with_null(best, np.empty(0)) == choose_threshold(best)


def test_a_null_model_threshold_on_its_floor_says_so() -> None:
    # Every record matched, matches scoring around 0.6 and non-matches around 0.3: the best
    # threshold lies below the search range, so the choice is its floor, labelled as such.
    generator = np.random.default_rng(8)
    best = np.clip(generator.normal(0.62, 0.04, 4000), 0, 1)
    null = np.clip(generator.normal(0.3, 0.03, 3000), 0, 1)
    choice = choose_threshold_with_null(best, null)
    assert choice.threshold == 0.5
    assert choice.boundary is SearchBoundary.FLOOR
    assert choice.label == "null-model-at-floor"
    inside = choose_threshold_with_null(*_mixture(5, 2000, 3000))
    assert inside.boundary is None and inside.label == "null-model"


def test_a_clamped_valley_is_labelled_as_on_its_boundary() -> None:
    generator = np.random.default_rng(4)
    scores = np.concatenate([generator.normal(0.1, 0.01, 3000), generator.normal(0.3, 0.01, 3000)])
    choice = choose_threshold(scores)
    assert choice.label == "valley-at-floor"
    assert ThresholdChoice(threshold=0.8, method=ThresholdMethod.OPERATOR).label == "operator"


def test_null_model_for_a_clustering_run_pays_every_false_link() -> None:
    # Overlapping match and non-match scores: in a one-to-one run a false link needs a free
    # partner (about U/n of them), in a deduplicating one it does not, so its F1 estimate
    # charges more false positives and the threshold goes up.
    generator = np.random.default_rng(8)
    best = np.clip(
        np.concatenate([generator.normal(0.85, 0.06, 2000), generator.normal(0.66, 0.04, 3000)]),
        0, 1,
    )  # fmt: skip
    null = np.clip(generator.normal(0.66, 0.04, 3000), 0, 1)
    one_to_one = choose_threshold_with_null(best, null)
    clustering = choose_threshold_with_null(best, null, one_to_one=False)
    assert clustering.method == one_to_one.method == "null-model"
    assert clustering.threshold > one_to_one.threshold
    # Fewer unmatched records above it, as the estimate asks.
    unmatched = best[2000:]
    assert (unmatched >= clustering.threshold).sum() < (unmatched >= one_to_one.threshold).sum()
